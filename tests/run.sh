#!/usr/bin/env bash
# Runs the whole podvault test suite: starts a real S3-compatible server (moto) on
# 127.0.0.1, creates the test bucket, then runs `cargo test --workspace`.
# Extra arguments are passed to cargo test.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${PODVAULT_VENV:-$HOME/.cache/podvault-venv}
if [ ! -x "$VENV/bin/moto_server" ]; then
  if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    echo "installing python3-venv (needed for the S3 test server)" >&2
    ${SUDO:-$( [ "$(id -u)" = 0 ] || echo sudo )} apt-get install -y python3 python3-venv >&2
  fi
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet 'moto[server]'
fi

# promtool and prometheus for the alert tests (the binaries only; the package's service is
# stopped where systemd runs it).
if ! command -v promtool >/dev/null; then
  echo "installing prometheus (promtool and a real Prometheus for the alert tests)" >&2
  SUDO=${SUDO:-$( [ "$(id -u)" = 0 ] || echo sudo )}
  $SUDO apt-get update -qq >&2 && $SUDO apt-get install -y -qq --no-install-recommends prometheus >&2
  if command -v systemctl >/dev/null; then systemctl disable --now prometheus >/dev/null 2>&1 || true; fi
fi

PORT=$("$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
LOG=$(mktemp -t podvault-moto.XXXXXX.log)
"$VENV/bin/moto_server" -H 127.0.0.1 -p "$PORT" >"$LOG" 2>&1 &
MOTO=$!
trap 'kill $MOTO 2>/dev/null || true' EXIT

export PODVAULT_TEST_S3_ENDPOINT="http://127.0.0.1:$PORT"
export PODVAULT_TEST_S3_BUCKET=podvault-test
export AWS_ACCESS_KEY_ID=podvault-test AWS_SECRET_ACCESS_KEY=podvault-test AWS_REGION=us-east-1
"$VENV/bin/python" - <<PY
import time, boto3
for _ in range(100):
    try:
        boto3.client("s3", endpoint_url="$PODVAULT_TEST_S3_ENDPOINT", region_name="us-east-1").create_bucket(Bucket="podvault-test")
        break
    except Exception as e:
        time.sleep(0.1)
else:
    raise SystemExit("S3 test server did not start; see $LOG")
PY

# moto accepts any credentials, so the wrong-credentials test needs a server that checks
# signatures: s3s-fs (installed once with cargo), with known keys and a bucket directory.
S3S=$(command -v s3s-fs || echo "$HOME/.cargo/bin/s3s-fs")
if [ ! -x "$S3S" ]; then
  echo "installing s3s-fs 0.14.1 (signature-checking S3 server for the credential tests)" >&2
  cargo install s3s-fs --version 0.14.1 --features binary --locked >&2
  S3S="$HOME/.cargo/bin/s3s-fs"
fi
S3S_PORT=$("$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
S3S_ROOT=$(mktemp -d -t podvault-s3s.XXXXXX)
S3S_LOG=$(mktemp -t podvault-s3s.XXXXXX.log)
mkdir "$S3S_ROOT/podvault-test"
export PODVAULT_TEST_S3S_ENDPOINT="http://127.0.0.1:$S3S_PORT"
export PODVAULT_TEST_S3S_BUCKET=podvault-test
export PODVAULT_TEST_S3S_ACCESS_KEY=podvault-s3s PODVAULT_TEST_S3S_SECRET_KEY=podvault-s3s-secret
"$S3S" --host 127.0.0.1 --port "$S3S_PORT" --access-key "$PODVAULT_TEST_S3S_ACCESS_KEY" \
  --secret-key "$PODVAULT_TEST_S3S_SECRET_KEY" "$S3S_ROOT" >"$S3S_LOG" 2>&1 &
S3S_PID=$!
trap 'kill $MOTO $S3S_PID 2>/dev/null || true; rm -rf "$S3S_ROOT"' EXIT
"$VENV/bin/python" - <<PY
import socket, time
for _ in range(100):
    try:
        socket.create_connection(("127.0.0.1", $S3S_PORT), timeout=1).close()
        break
    except OSError:
        time.sleep(0.1)
else:
    raise SystemExit("s3s-fs did not start; see $S3S_LOG")
PY

# The black-box tests insist on the S3 servers being there.
export CI=${CI:-true}
# With arguments (e.g. `-p podvault-tests --test kill`) only what they select is built and run.
if [ $# -eq 0 ]; then
  cargo test --workspace
else
  cargo test "$@"
fi

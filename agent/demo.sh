#!/usr/bin/env bash
# Backs up a directory (default: this source tree, without build output) into a local
# podvault repository, creating the repository on first use, and lists its snapshots.
#   agent/demo.sh [DIR]
# Repository and password come from PODVAULT_REPOSITORY / PODVAULT_PASSWORD when set.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=${1:-$PWD}
export PODVAULT_REPOSITORY=${PODVAULT_REPOSITORY:-$HOME/.local/share/podvault-demo}
export PODVAULT_PASSWORD=${PODVAULT_PASSWORD:-podvault-demo}
cargo build --release --quiet -p podvault
podvault() { cargo run --release --quiet -p podvault -- "$@"; }
[ -e "$PODVAULT_REPOSITORY/config" ] || podvault init
podvault backup "$SRC" --exclude target --exclude .git
podvault snapshots

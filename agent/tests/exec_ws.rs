//! The `pods/exec` runner against a local stand-in for the exec endpoint: a WebSocket server
//! on 127.0.0.1 speaking the Kubernetes channel protocol (`v4.channel.k8s.io`: each binary
//! message starts with its channel byte — 1 stdout, 2 stderr, 3 the status JSON). There is no
//! kubelet here; this is the thin seam, and everything above it is tested with pure functions.
//! The stand-in picks its behaviour from the first word of the command.

use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use kube::Client;
use podvault::worker::dump::dump_with;
use podvault::worker::exec::{exec, run_streamed, ExecSpec, Exit, Stdout, STDERR_TAIL};
use podvault::worker::hooks::DumpCommand;
use podvault::worker::outcome::{Failure, Reason};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;

const SUCCESS: &str = r#"{"metadata":{},"status":"Success"}"#;
const EXIT_3: &str = r#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: exit status 3","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#;
/// Bytes the `big` command writes.
const BIG: u64 = 48 << 20;
/// Size of one stdout message of the `big` command.
const PIECE: usize = 32 << 10;

/// What the stand-in saw and did.
#[derive(Default)]
struct Seen {
    /// Request paths (with query).
    paths: Mutex<Vec<String>>,
    /// Set when the client closed a connection of the `hang` command.
    hang_closed: AtomicBool,
    /// Stdout bytes the `big` command has handed to the socket so far.
    big_sent: AtomicU64,
    /// Standard input the `count*` commands received: bytes, whether every byte matched the
    /// `big` pattern, and how it ended (`Some(true)`: the v5 close of stdin, `Some(false)`:
    /// the connection went away first).
    stdin: Mutex<(u64, bool, Option<bool>)>,
}

fn frame(channel: u8, data: &[u8]) -> Message {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(channel);
    v.extend_from_slice(data);
    Message::binary(v)
}

/// The byte at offset `i` of the `big` output (not periodic in the piece size).
fn big_byte(i: u64) -> u8 {
    (i % 251) as u8
}

async fn serve(listener: TcpListener, seen: Arc<Seen>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        let seen = seen.clone();
        tokio::spawn(async move {
            let path = Arc::new(Mutex::new(String::new()));
            let p = path.clone();
            // The handshake callback's signature is tungstenite's.
            #[allow(clippy::result_large_err)]
            let callback = move |req: &Request, mut resp: Response| {
                let uri = req.uri().to_string();
                if uri.contains("command=refuse") {
                    // As an API server refusing the exec (RBAC, no such container, …).
                    let mut r =
                        tokio_tungstenite::tungstenite::handshake::server::ErrorResponse::new(
                            Some("forbidden".into()),
                        );
                    *r.status_mut() = tokio_tungstenite::tungstenite::http::StatusCode::FORBIDDEN;
                    *p.lock().unwrap() = uri;
                    return Err(r);
                }
                // Commands reading stdin need v5, the version that can close stdin alone.
                let protocol = if uri.contains("command=count") {
                    "v5.channel.k8s.io"
                } else {
                    "v4.channel.k8s.io"
                };
                *p.lock().unwrap() = uri;
                resp.headers_mut()
                    .insert("Sec-WebSocket-Protocol", protocol.parse().unwrap());
                Ok(resp)
            };
            let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await else {
                return;
            };
            let path = path.lock().unwrap().clone();
            seen.paths.lock().unwrap().push(path.clone());
            let command = path
                .split(['?', '&'])
                .find_map(|kv| kv.strip_prefix("command="))
                .unwrap_or_default()
                .to_string();
            match command.as_str() {
                "echo" => {
                    ws.send(frame(1, b"hello from the pod\n")).await.unwrap();
                    ws.send(frame(3, SUCCESS.as_bytes())).await.unwrap();
                }
                "fail" => {
                    for i in 0..200 {
                        let line = format!("noise line {i:04} of a chatty failing command\n");
                        ws.send(frame(2, line.as_bytes())).await.unwrap();
                    }
                    ws.send(frame(2, b"FATAL: could not freeze /data\n"))
                        .await
                        .unwrap();
                    ws.send(frame(3, EXIT_3.as_bytes())).await.unwrap();
                }
                "nostatus" => {
                    ws.send(frame(1, b"half a dump")).await.unwrap();
                }
                "hang" => {
                    ws.send(frame(2, b"freezing...\n")).await.unwrap();
                    // Never exits; wait for the client to go away.
                    while let Some(Ok(_)) = ws.next().await {}
                    seen.hang_closed.store(true, Ordering::SeqCst);
                    return;
                }
                "big" => {
                    let mut off = 0u64;
                    while off < BIG {
                        let piece: Vec<u8> = (off..off + PIECE as u64).map(big_byte).collect();
                        if ws.send(frame(1, &piece)).await.is_err() {
                            return;
                        }
                        off += PIECE as u64;
                        seen.big_sent.store(off, Ordering::SeqCst);
                    }
                    ws.send(frame(3, SUCCESS.as_bytes())).await.unwrap();
                }
                "count" | "count-fail" => {
                    *seen.stdin.lock().unwrap() = (0, true, None);
                    let mut clean = false;
                    while let Some(Ok(msg)) = ws.next().await {
                        let Message::Binary(data) = msg else { continue };
                        match data.first() {
                            Some(0) => {
                                let mut st = seen.stdin.lock().unwrap();
                                for b in &data[1..] {
                                    st.1 &= *b == big_byte(st.0);
                                    st.0 += 1;
                                }
                            }
                            Some(255) if data.get(1) == Some(&0) => {
                                clean = true;
                                break;
                            }
                            _ => {}
                        }
                    }
                    seen.stdin.lock().unwrap().2 = Some(clean);
                    if !clean {
                        return;
                    }
                    if command == "count" {
                        let n = seen.stdin.lock().unwrap().0;
                        ws.send(frame(1, format!("got {n}\n").as_bytes()))
                            .await
                            .unwrap();
                        ws.send(frame(3, SUCCESS.as_bytes())).await.unwrap();
                    } else {
                        ws.send(frame(2, b"ERROR: relation \"t\" already exists\n"))
                            .await
                            .unwrap();
                        ws.send(frame(3, EXIT_3.as_bytes())).await.unwrap();
                    }
                }
                "count-early" => {
                    ws.send(frame(2, b"psql: error: connection refused\n"))
                        .await
                        .unwrap();
                    ws.send(frame(3, EXIT_3.as_bytes())).await.unwrap();
                }
                other => panic!("the stand-in has no command {other:?}"),
            }
            let _ = ws.close(None).await;
        });
    }
}

async fn stand_in() -> (Client, Arc<Seen>) {
    podvault::tls::install_provider();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Seen::default());
    tokio::spawn(serve(listener, seen.clone()));
    let config = kube::Config::new(url.parse().unwrap());
    (Client::try_from(config).unwrap(), seen)
}

fn spec(word: &str, timeout: Duration) -> ExecSpec {
    ExecSpec {
        namespace: "shop".into(),
        pod: "pg-0".into(),
        container: "db".into(),
        command: vec![word.into()],
        timeout,
    }
}

#[tokio::test]
async fn success_returns_exit_zero_and_stdout() {
    let (client, seen) = stand_in().await;
    let out = exec(
        &client,
        &spec("echo", Duration::from_secs(30)),
        Stdout::Tail,
    )
    .await;
    assert_eq!(out.exit, Exit::Code(0));
    assert_eq!(out.stdout_tail, b"hello from the pod\n");
    assert_eq!(out.stdout_bytes, 19);
    let paths = seen.paths.lock().unwrap();
    let path = &paths[0];
    assert!(
        path.starts_with("/api/v1/namespaces/shop/pods/pg-0/exec?"),
        "{path}"
    );
    for q in ["container=db", "command=echo", "stdout=true", "stderr=true"] {
        assert!(path.contains(q), "{path}");
    }
    assert!(!path.contains("stdin=true"), "{path}");
}

#[tokio::test]
async fn non_zero_exit_keeps_the_stderr_tail() {
    let (client, _) = stand_in().await;
    let out = exec(
        &client,
        &spec("fail", Duration::from_secs(30)),
        Stdout::Tail,
    )
    .await;
    assert_eq!(out.exit, Exit::Code(3));
    assert_eq!(out.stderr_tail.len(), STDERR_TAIL);
    let text = out.stderr_text();
    assert!(text.ends_with("FATAL: could not freeze /data"), "{text}");
    assert!(!text.contains("noise line 0000"), "the head is dropped");
}

#[tokio::test]
async fn a_connection_without_status_is_an_unknown_exit() {
    let (client, _) = stand_in().await;
    let out = exec(
        &client,
        &spec("nostatus", Duration::from_secs(30)),
        Stdout::Tail,
    )
    .await;
    assert!(
        matches!(&out.exit, Exit::Unknown(m) if m.contains("without an exit status")),
        "{:?}",
        out.exit
    );
    assert!(!out.exit.success());
}

#[tokio::test]
async fn a_hung_command_times_out_and_its_connection_is_closed() {
    let (client, seen) = stand_in().await;
    let timeout = Duration::from_millis(300);
    let out = exec(&client, &spec("hang", timeout), Stdout::Tail).await;
    assert_eq!(out.exit, Exit::TimedOut(timeout));
    assert_eq!(out.stderr_text(), "freezing...");
    // The stand-in sees the connection go away.
    for _ in 0..200 {
        if seen.hang_closed.load(Ordering::SeqCst) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the exec connection of the timed-out command was not closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_stdout_streams_with_bounded_memory() {
    let (client, seen) = stand_in().await;
    let (paused_tx, paused_rx) = std::sync::mpsc::channel::<()>();
    let (resume_tx, resume_rx) = std::sync::mpsc::channel::<()>();
    let consume = move |mut r: podvault::worker::exec::StreamReader| {
        let mut buf = vec![0u8; 100_000];
        let n = r.read(&mut buf).unwrap();
        assert!(n > 0);
        // Stop reading: the producer must stall with little in flight.
        paused_tx.send(()).unwrap();
        resume_rx.recv().unwrap();
        let mut total = n as u64;
        let mut bad = None;
        for (i, b) in buf[..n].iter().enumerate() {
            if *b != big_byte(i as u64) && bad.is_none() {
                bad = Some(i as u64);
            }
        }
        loop {
            let n = r.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            for (i, b) in buf[..n].iter().enumerate() {
                let at = total + i as u64;
                if *b != big_byte(at) && bad.is_none() {
                    bad = Some(at);
                }
            }
            total += n as u64;
        }
        (total, bad)
    };
    let run = tokio::spawn(run_streamed(
        client,
        spec("big", Duration::from_secs(600)),
        consume,
    ));
    tokio::task::spawn_blocking(move || paused_rx.recv().unwrap())
        .await
        .unwrap();
    // Wait until the stand-in cannot hand more to the socket.
    let mut last = u64::MAX;
    let mut still = 0;
    while still < 8 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = seen.big_sent.load(Ordering::SeqCst);
        still = if now == last { still + 1 } else { 0 };
        last = now;
    }
    // In flight while paused: socket buffers + WebSocket buffers + the kube pipe + the
    // stream channel. Far less than the output: nothing holds it all.
    assert!(
        last < BIG / 2,
        "{last} of {BIG} bytes were sent while the reader was paused"
    );
    eprintln!("in flight while paused: {last} bytes");
    resume_tx.send(()).unwrap();
    let (consumed, out) = run.await.unwrap();
    let (total, bad) = consumed.unwrap();
    assert_eq!(out.exit, Exit::Code(0));
    assert_eq!(total, BIG);
    assert_eq!(bad, None, "first wrong byte");
    assert_eq!(out.stdout_bytes, BIG);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_command_makes_the_stream_reader_fail() {
    let (client, _) = stand_in().await;
    let (consumed, out) = run_streamed(
        client,
        spec("nostatus", Duration::from_secs(30)),
        |mut r| {
            let mut all = Vec::new();
            let res = r.read_to_end(&mut all);
            (all, res.map_err(|e| e.to_string()))
        },
    )
    .await;
    let (all, res) = consumed.unwrap();
    assert_eq!(all, b"half a dump");
    let err = res.unwrap_err();
    assert!(err.contains("exit status unknown"), "{err}");
    assert!(!out.exit.success());
}

fn dump(word: &str) -> DumpCommand {
    DumpCommand {
        container: "db".into(),
        command: vec![word.into()],
        filename: "pg-0.dump".into(),
        timeout: Duration::from_secs(600),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dump_is_saved_only_when_the_command_succeeds() {
    let (client, _) = stand_in().await;
    // The `save` stands in for archiver::backup_stream: it "writes a snapshot" only after
    // reading to a clean EOF.
    let save = |mut r: podvault::worker::exec::StreamReader| {
        let mut n = 0u64;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match r.read(&mut buf) {
                Ok(0) => return Ok(format!("snapshot of {n} bytes")),
                Ok(k) => n += k as u64,
                Err(e) => return Err(Failure::new(Reason::Io, format!("reading the dump: {e}"))),
            }
        }
    };
    let ok = dump_with(client.clone(), "shop", "pg-0", &dump("big"), save).await;
    assert_eq!(ok.unwrap(), format!("snapshot of {BIG} bytes"));
    let f = dump_with(client.clone(), "shop", "pg-0", &dump("fail"), save)
        .await
        .unwrap_err();
    assert_eq!(f.reason, Reason::DumpFailed);
    for part in [
        "[\"fail\"]",
        "exit code 3",
        "FATAL: could not freeze",
        "no snapshot",
    ] {
        assert!(f.message.contains(part), "{}", f.message);
    }
    let f = dump_with(client, "shop", "pg-0", &dump("nostatus"), save)
        .await
        .unwrap_err();
    assert_eq!(f.reason, Reason::DumpFailed);
    assert!(f.message.contains("exit status unknown"), "{}", f.message);
}

/// A pod on node `node-a` whose backup command is the stand-in's `word`.
fn dump_pod(word: &str) -> k8s_openapi::api::core::v1::Pod {
    dump_pod_restoring_with(word, "count")
}

/// The dump pod, declaring `restore` as its restore command.
fn dump_pod_restoring_with(word: &str, restore: &str) -> k8s_openapi::api::core::v1::Pod {
    serde_yaml::from_str(&format!(
        r#"
metadata:
  name: pg-0
  namespace: shop
  uid: uid-pg-0
  annotations:
    backup.podvault.dev/backup-command: '["{word}"]'
    backup.podvault.dev/backup-command-filename: all.sql
    backup.podvault.dev/restore-command: '["{restore}"]'
spec:
  nodeName: node-a
  containers: [{{name: db}}]
status: {{phase: Running}}
"#
    ))
    .unwrap()
}

/// Settings of a BackupRepository in `dir/repo` (created on first backup).
fn fs_repo(dir: &std::path::Path) -> podvault::worker::repo::RepoSettings {
    let spec = serde_yaml::from_str(&format!(
        "backend: {{fs: {{path: {}}}}}\npasswordSecret: {{name: pw, key: password}}\n",
        dir.join("repo").display()
    ))
    .unwrap();
    let pw = [("password".to_string(), b"dump-pass".to_vec())].into();
    podvault::worker::repo::settings("default", &spec, &pw, None).unwrap()
}

fn dump_spec(volume: &str) -> podvault_proto::crd::PodVolumeBackupSpec {
    serde_yaml::from_str(&format!(
        "{{pod: pg-0, volume: {volume}, dump: true, retention: 'last=1'}}"
    ))
    .unwrap()
}

/// The agent's dump path end to end below the API server: the stand-in's output becomes a
/// snapshot of the repository with the dump's series tags; a failing, canceled or
/// misnamed dump leaves the repository as it was and fails with a reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execute_dump_writes_a_snapshot_only_for_a_complete_dump() {
    use podvault::progress::Progress;
    use podvault::worker::dump::execute_dump;
    use podvault::worker::prepare::Prepared;
    use podvault_proto::crd::{OperationStatus, Phase};

    let (client, _) = stand_in().await;
    let dir = tempfile::tempdir().unwrap();
    let repo = fs_repo(dir.path());
    // Each run is another PodVolumeBackup (its own uid: the same one would adopt).
    let runs = std::sync::atomic::AtomicU32::new(0);
    let run = |word: &'static str, volume: &'static str, cancel: bool| {
        let (client, repo) = (client.clone(), repo.clone());
        let uid = format!("pvb-uid-{}", runs.fetch_add(1, Ordering::Relaxed));
        async move {
            let prepared = Prepared {
                pod: dump_pod(word),
                pv: None,
                repo,
            };
            let target = podvault::worker::dump::DumpTarget {
                node: "node-a",
                uid: &uid,
            };
            execute_dump(
                client,
                target,
                &dump_spec(volume),
                prepared,
                &OperationStatus::default(),
                Arc::new(Progress::default()),
                Arc::new(AtomicBool::new(cancel)),
            )
            .await
        }
    };
    // The engine blocks: read the repository off the async threads.
    let snapshots = || {
        let repo = repo.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let r =
                    podvault::repository::Repository::open(&repo.location, &repo.password).unwrap();
                let snaps = r.snapshots().unwrap();
                let mut first = Vec::new();
                if let Some((_, snap)) = snaps.first() {
                    podvault::dump::dump(&r, snap, "all.sql", &mut first, &AtomicBool::new(false))
                        .unwrap();
                }
                (snaps, first)
            })
            .await
            .unwrap()
        }
    };

    let ok = run("big", "all.sql", false).await;
    assert_eq!(ok.status.phase, Some(Phase::Completed), "{:?}", ok.status);
    let message = ok.status.message.clone().unwrap();
    assert!(message.contains(&format!("of {BIG} bytes")), "{message}");
    assert!(message.contains("retention removed 0"), "{message}");
    assert_eq!(
        ok.status.series.as_deref(),
        Some("shop/pod/pg-0/all.sql"),
        "the dump's own series"
    );
    let (snaps, out) = snapshots().await;
    assert_eq!(snaps.len(), 1);
    let (id, snap) = &snaps[0];
    assert_eq!(ok.status.snapshot_id.as_deref(), Some(id.to_hex().as_str()));
    let identity = snap
        .identity()
        .expect("the agent records the dump's identity");
    assert_eq!(identity.series, "shop/pod/pg-0/all.sql");
    assert_eq!(identity.dump.as_deref(), Some("all.sql"));
    assert_eq!(identity.pod, "pg-0");
    assert_eq!(identity.pod_uid, "uid-pg-0");
    assert_eq!(identity.node, "node-a");
    assert_eq!(identity.operation_uid.as_deref(), Some("pvb-uid-0"));
    assert!(
        snap.tags.is_empty(),
        "identity is not in the tags: {:?}",
        snap.tags
    );
    assert_eq!(out.len() as u64, BIG);
    assert!(
        out.iter()
            .enumerate()
            .all(|(i, b)| *b == big_byte(i as u64)),
        "the stored dump differs from the command's output"
    );

    let failed = run("fail", "all.sql", false).await;
    assert_eq!(failed.status.phase, Some(Phase::Failed));
    assert_eq!(failed.status.reason.as_deref(), Some("dump_failed"));
    let m = failed.status.message.unwrap();
    assert!(
        m.contains("exit code 3") && m.contains("no snapshot"),
        "{m}"
    );
    let cut = run("nostatus", "all.sql", false).await;
    assert_eq!(cut.status.phase, Some(Phase::Failed));
    let canceled = run("big", "all.sql", true).await;
    assert_eq!(
        canceled.status.phase,
        Some(Phase::Canceled),
        "{:?}",
        canceled.status
    );
    let misnamed = run("big", "other.sql", false).await;
    assert_eq!(misnamed.status.phase, Some(Phase::Failed));
    assert!(
        misnamed.status.message.unwrap().contains("other.sql"),
        "names the wrong name"
    );
    assert_eq!(
        snapshots().await.0.len(),
        1,
        "only the complete dump was stored"
    );
}

fn restore_spec(volume: &str) -> podvault_proto::crd::PodVolumeRestoreSpec {
    serde_yaml::from_str(&format!(
        "{{pod: pg-0, volume: {volume}, snapshot: {{latest: {{}}}}, dump: {{timeout: 10m}}}}"
    ))
    .unwrap()
}

/// The way back: a PodVolumeRestore with `spec.dump` streams the stored dump into the
/// restore command's standard input and closes it (EOF) only after the whole dump; a failing
/// command, one that quits early, a cancel, and a name the snapshot does not have each fail
/// with a reason, and a cut-off input is never closed as if it were complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execute_dump_restore_streams_the_whole_dump_then_closes_stdin() {
    use podvault::progress::Progress;
    use podvault::worker::dump::{execute_dump, execute_dump_restore};
    use podvault::worker::prepare::Prepared;
    use podvault_proto::crd::{OperationStatus, Phase};

    let (client, seen) = stand_in().await;
    let dir = tempfile::tempdir().unwrap();
    let repo = fs_repo(dir.path());
    let prepared = || Prepared {
        pod: dump_pod("big"),
        pv: None,
        repo: repo.clone(),
    };
    let target = podvault::worker::dump::DumpTarget {
        node: "node-a",
        uid: "pvb-uid-2",
    };
    let stored = execute_dump(
        client.clone(),
        target,
        &dump_spec("all.sql"),
        prepared(),
        &OperationStatus::default(),
        Arc::new(Progress::default()),
        Arc::new(AtomicBool::new(false)),
    )
    .await;
    assert_eq!(
        stored.status.phase,
        Some(Phase::Completed),
        "{:?}",
        stored.status
    );
    // The command is the one the pod declares (`word`), never the restore's.
    let restore = |volume: &'static str, word: &'static str, cancel: bool| {
        let client = client.clone();
        let mut p = prepared();
        p.pod = dump_pod_restoring_with("big", word);
        async move {
            execute_dump_restore(
                client,
                "shop",
                &restore_spec(volume),
                p,
                &OperationStatus::default(),
                Arc::new(Progress::default()),
                Arc::new(AtomicBool::new(cancel)),
            )
            .await
        }
    };

    let ok = restore("all.sql", "count", false).await;
    assert_eq!(ok.status.phase, Some(Phase::Completed), "{:?}", ok.status);
    assert_eq!(ok.status.snapshot_id, stored.status.snapshot_id);
    let m = ok.status.message.clone().unwrap();
    assert!(
        m.contains(&format!("({BIG} bytes)")) && m.contains("exit code 0"),
        "{m}"
    );
    assert_eq!(
        *seen.stdin.lock().unwrap(),
        (BIG, true, Some(true)),
        "the whole dump, byte for byte, then the close of stdin"
    );

    let failed = restore("all.sql", "count-fail", false).await;
    assert_eq!(failed.status.phase, Some(Phase::Failed));
    assert_eq!(
        failed.status.reason.as_deref(),
        Some("restore_command_failed")
    );
    let m = failed.status.message.unwrap();
    assert!(
        m.contains("exit code 3") && m.contains("already exists"),
        "{m}"
    );

    let early = restore("all.sql", "count-early", false).await;
    assert_eq!(early.status.phase, Some(Phase::Failed));
    assert_eq!(
        early.status.reason.as_deref(),
        Some("restore_command_failed")
    );
    let m = early.status.message.unwrap();
    assert!(m.contains("connection refused"), "{m}");

    let canceled = restore("all.sql", "count", true).await;
    assert_eq!(
        canceled.status.phase,
        Some(Phase::Canceled),
        "{:?}",
        canceled.status
    );
    // The stand-in notices the closed connection on its own time.
    let mut end = None;
    for _ in 0..100 {
        end = seen.stdin.lock().unwrap().2;
        if end.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        end,
        Some(false),
        "a canceled restore closes the connection, never stdin alone"
    );

    let refused = restore("all.sql", "refuse", false).await;
    assert_eq!(refused.status.phase, Some(Phase::Failed));
    assert_eq!(
        refused.status.reason.as_deref(),
        Some("restore_command_failed")
    );
    let m = refused.status.message.unwrap();
    assert!(
        m.contains("could not be started") && m.contains("nothing was sent"),
        "{m}"
    );

    let calls = seen.paths.lock().unwrap().len();
    let missing = restore("nope.sql", "count", false).await;
    assert_eq!(missing.status.phase, Some(Phase::Failed));
    assert!(
        missing.status.message.unwrap().contains("nope.sql"),
        "names the missing dump"
    );
    assert_eq!(
        seen.paths.lock().unwrap().len(),
        calls,
        "the command is not started for a dump the snapshot does not have"
    );

    // A restore cannot choose the command or the container, and a pod that declares no
    // restore command gets none: each fails as invalid_spec before anything runs.
    let run_spec = |spec: podvault_proto::crd::PodVolumeRestoreSpec, pod| {
        let client = client.clone();
        let mut p = prepared();
        p.pod = pod;
        async move {
            execute_dump_restore(
                client,
                "shop",
                &spec,
                p,
                &OperationStatus::default(),
                Arc::new(Progress::default()),
                Arc::new(AtomicBool::new(false)),
            )
            .await
        }
    };
    let forged: podvault_proto::crd::PodVolumeRestoreSpec = serde_yaml::from_str(
        "{pod: pg-0, volume: all.sql, snapshot: {latest: {}}, dump: {command: [sh, -c, 'echo pwned > /data/pwned']}}",
    )
    .unwrap();
    let r = run_spec(forged, dump_pod("big")).await;
    assert_eq!(r.status.reason.as_deref(), Some("invalid_spec"));
    let m = r.status.message.unwrap();
    assert!(
        m.contains("spec.dump.command is not accepted") && m.contains("restore-command"),
        "{m}"
    );
    let container: podvault_proto::crd::PodVolumeRestoreSpec = serde_yaml::from_str(
        "{pod: pg-0, volume: all.sql, snapshot: {latest: {}}, dump: {container: db}}",
    )
    .unwrap();
    let r = run_spec(container, dump_pod("big")).await;
    assert_eq!(r.status.reason.as_deref(), Some("invalid_spec"));
    let mut undeclared = dump_pod("big");
    undeclared
        .metadata
        .annotations
        .as_mut()
        .unwrap()
        .remove("backup.podvault.dev/restore-command");
    let r = run_spec(restore_spec("all.sql"), undeclared).await;
    assert_eq!(r.status.reason.as_deref(), Some("invalid_spec"));
    assert!(
        r.status
            .message
            .unwrap()
            .contains("declares no restore command"),
        "names the missing declaration"
    );
    assert_eq!(
        seen.paths.lock().unwrap().len(),
        calls,
        "no command ran for any of the refused restores"
    );
}

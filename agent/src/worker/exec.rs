//! Running a command in a pod's container through the API server's `pods/exec` subresource.
//!
//! This is the thin seam between hooks / dumps and Kubernetes: [`exec`] opens the exec
//! WebSocket (kube's `ws` feature; the `v5.channel.k8s.io` or `v4.channel.k8s.io`
//! subprotocol), reads stdout and stderr concurrently, and turns the status message of
//! channel 3 into an [`Exit`]. It keeps the last [`STDERR_TAIL`] bytes of stderr for failure
//! messages, and either the last [`STDOUT_TAIL`] bytes of stdout or hands every stdout chunk
//! to a bounded channel ([`stream_exec`] wraps that channel as a blocking [`std::io::Read`]).
//!
//! Invariants:
//! - memory is bounded: kube's pipe buffers (64 KiB each), the tails, and at most
//!   [`STREAM_CHUNKS`] chunks of at most 64 KiB in the stream channel. A slow consumer slows
//!   the reader of the WebSocket, which pushes back on the API server through TCP.
//! - a command that outlives its timeout has its connection closed and is reported as
//!   [`Exit::TimedOut`]. Closing the connection is all the API server offers: the process in
//!   the container may keep running unless the command bounds itself (`timeout 20 …`).
//! - the exit code is known only from a status message; a connection that ends without one
//!   is [`Exit::Unknown`], never success. A stream reader ends in an error, not EOF, unless the
//!   exit code is 0, so a consumer never mistakes a truncated dump for a complete one.

use std::collections::VecDeque;
use std::io::Read;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use kube::api::{Api, AttachParams};
use kube::Client;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

/// Bytes of stderr kept for failure messages.
pub const STDERR_TAIL: usize = 4096;
/// Bytes of stdout kept when stdout is not streamed.
pub const STDOUT_TAIL: usize = 4096;
/// Capacity, in chunks, of the stdout stream channel.
pub const STREAM_CHUNKS: usize = 16;
/// Size of one read from kube's stdout pipe (and so the largest stream chunk).
const READ_SIZE: usize = 64 * 1024;

/// One command to run in a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecSpec {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod.
    pub pod: String,
    /// The container.
    pub container: String,
    /// argv.
    pub command: Vec<String>,
    /// How long it may run, connection set-up included.
    pub timeout: Duration,
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this code (0: success).
    Code(i32),
    /// It ran longer than its timeout; the connection was closed.
    TimedOut(Duration),
    /// The exit code is unknown: it could not be started, the connection broke, the API
    /// server refused (e.g. RBAC, no such container), or the consumer of its output stopped.
    Unknown(String),
}

impl Exit {
    /// True only for exit code 0.
    pub fn success(&self) -> bool {
        *self == Exit::Code(0)
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit code {c}"),
            Exit::TimedOut(d) => write!(f, "timed out after {}", humantime::format_duration(*d)),
            Exit::Unknown(why) => write!(f, "exit status unknown ({why})"),
        }
    }
}

/// What a command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// How it ended.
    pub exit: Exit,
    /// The last [`STDOUT_TAIL`] bytes of stdout (empty when stdout was streamed).
    pub stdout_tail: Vec<u8>,
    /// The last [`STDERR_TAIL`] bytes of stderr.
    pub stderr_tail: Vec<u8>,
    /// Bytes of stdout received in all.
    pub stdout_bytes: u64,
    /// True once the API server accepted the exec: the command may have run (false: it was
    /// refused or unreachable, so the command never saw any input).
    pub started: bool,
}

impl ExecOutput {
    /// The stderr tail as text (lossy, trimmed).
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr_tail)
            .trim()
            .to_string()
    }

    /// `; stderr: <its last MESSAGE_STDERR bytes>` for a status message, or nothing when
    /// stderr was empty.
    pub fn stderr_note(&self) -> String {
        let stderr = self.stderr_text();
        if stderr.is_empty() {
            return String::new();
        }
        let mut cut = stderr.len().saturating_sub(super::hooks::MESSAGE_STDERR);
        while !stderr.is_char_boundary(cut) {
            cut += 1;
        }
        format!("; stderr: {}", &stderr[cut..])
    }
}

/// One message of a stdout stream: a chunk, or the end with the command's verdict.
#[derive(Debug)]
pub enum Chunk {
    /// Output bytes.
    Data(Bytes),
    /// The command ended: `Ok` for exit code 0, else why the output must not be trusted.
    End(Result<(), String>),
}

/// One piece of a command's standard input.
#[derive(Debug)]
pub enum Stdin {
    /// Input bytes.
    Data(Bytes),
    /// The input is complete: close the command's standard input (it reads EOF).
    End,
}

/// Where stdout goes.
pub enum Stdout {
    /// Keep its last [`STDOUT_TAIL`] bytes.
    Tail,
    /// Send every chunk here (bounded; a full channel pauses the reading).
    Stream(mpsc::Sender<Chunk>),
}

/// A byte ring keeping the last `cap` bytes written.
#[derive(Debug)]
struct TailBuf {
    cap: usize,
    buf: VecDeque<u8>,
}

impl TailBuf {
    fn new(cap: usize) -> Self {
        TailBuf {
            cap,
            buf: VecDeque::with_capacity(cap),
        }
    }

    fn push(&mut self, data: &[u8]) {
        let data = &data[data.len().saturating_sub(self.cap)..];
        let over = (self.buf.len() + data.len()).saturating_sub(self.cap);
        self.buf.drain(..over);
        self.buf.extend(data);
    }

    fn take(&mut self) -> Vec<u8> {
        self.buf.drain(..).collect()
    }
}

/// The exit of a status message (channel 3), `None` when the connection ended without one.
pub fn exit_of(status: Option<&Status>) -> Exit {
    let Some(s) = status else {
        return Exit::Unknown("the connection ended without an exit status".into());
    };
    if s.status.as_deref() == Some("Success") {
        return Exit::Code(0);
    }
    if s.reason.as_deref() == Some("NonZeroExitCode") {
        let code = s
            .details
            .as_ref()
            .and_then(|d| d.causes.as_ref())
            .and_then(|c| c.iter().find(|c| c.reason.as_deref() == Some("ExitCode")))
            .and_then(|c| c.message.as_deref())
            .and_then(|m| m.trim().parse::<i32>().ok());
        if let Some(code) = code {
            return Exit::Code(code);
        }
    }
    Exit::Unknown(
        s.message
            .clone()
            .or_else(|| s.reason.clone())
            .unwrap_or_else(|| "failure without a message".into()),
    )
}

/// Reads `r` to its end into `tail`.
async fn drain_tail(mut r: impl AsyncRead + Unpin, tail: &Mutex<TailBuf>) {
    let mut buf = vec![0u8; 8192];
    while let Ok(n) = r.read(&mut buf).await {
        if n == 0 {
            break;
        }
        if let Ok(mut t) = tail.lock() {
            t.push(&buf[..n]);
        }
    }
}

/// Reads stdout to its end into `tail` or the stream; `Err` when the stream's consumer went
/// away (the command's output is then unwanted and the connection should close).
async fn drain_stdout(
    mut r: impl AsyncRead + Unpin,
    out: &Stdout,
    tail: &Mutex<TailBuf>,
    count: &Mutex<u64>,
) -> Result<(), ()> {
    loop {
        let mut buf = vec![0u8; READ_SIZE];
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => return Ok(()),
            Ok(n) => n,
        };
        if let Ok(mut c) = count.lock() {
            *c += n as u64;
        }
        match out {
            Stdout::Tail => {
                if let Ok(mut t) = tail.lock() {
                    t.push(&buf[..n]);
                }
            }
            Stdout::Stream(tx) => {
                buf.truncate(n);
                tx.send(Chunk::Data(Bytes::from(buf)))
                    .await
                    .map_err(|_| ())?;
            }
        }
    }
}

/// Feeds `rx` into the command's standard input. `Ok(None)`: all of it, then EOF;
/// `Ok(Some(why))`: the command stopped taking input (it exited or closed its stdin; its exit
/// status tells the rest); `Err`: the input ended without [`Stdin::End`] — it is incomplete,
/// so the connection must close without giving the command an EOF that looks like the end.
async fn feed_stdin(
    mut w: impl tokio::io::AsyncWrite + Unpin,
    mut rx: mpsc::Receiver<Stdin>,
) -> Result<Option<String>, String> {
    use tokio::io::AsyncWriteExt;
    while let Some(piece) = rx.recv().await {
        match piece {
            Stdin::Data(b) => {
                if let Err(e) = w.write_all(&b).await {
                    return Ok(Some(format!("it stopped reading its input: {e}")));
                }
            }
            Stdin::End => {
                // Dropping the writer closes the stream: EOF for the command.
                let _ = w.shutdown().await;
                return Ok(None);
            }
        }
    }
    Err("its input could not be produced completely; the connection was closed".into())
}

/// Runs `spec` through `pods/exec` and reports how it ended. Never returns early on a hung
/// command: after `spec.timeout` the connection is closed and [`Exit::TimedOut`] returned.
pub async fn exec(client: &Client, spec: &ExecSpec, stdout: Stdout) -> ExecOutput {
    exec_io(client, spec, stdout, None).await
}

/// [`exec`] with `stdin` fed to the command's standard input. An input that ends without
/// [`Stdin::End`] closes the connection at once (the exit is then unknown).
pub async fn exec_io(
    client: &Client,
    spec: &ExecSpec,
    stdout: Stdout,
    stdin: Option<mpsc::Receiver<Stdin>>,
) -> ExecOutput {
    let api: Api<Pod> = Api::namespaced(client.clone(), &spec.namespace);
    let params = AttachParams::default()
        .container(spec.container.clone())
        .stdin(stdin.is_some())
        .stdout(true)
        .stderr(true)
        .max_stdout_buf_size(READ_SIZE)
        .max_stderr_buf_size(READ_SIZE);
    let out_tail = Mutex::new(TailBuf::new(STDOUT_TAIL));
    let err_tail = Mutex::new(TailBuf::new(STDERR_TAIL));
    let count = Mutex::new(0u64);
    let started = std::sync::atomic::AtomicBool::new(false);
    let run = async {
        let mut proc = api
            .exec(&spec.pod, spec.command.clone(), &params)
            .await
            .map_err(|e| match e {
                // The API server's own words, without the debug dump of its Status.
                kube::Error::Api(s) => {
                    format!(
                        "pods/exec refused by the API server ({}): {}",
                        s.code, s.message
                    )
                }
                e => format!("pods/exec failed: {e}"),
            })?;
        started.store(true, std::sync::atomic::Ordering::Relaxed);
        let status = proc.take_status();
        let (Some(o), Some(e), Some(status)) = (proc.stdout(), proc.stderr(), status) else {
            return Err("the exec connection has no stdout, stderr or status".to_string());
        };
        let writer = match stdin.is_some() {
            true => Some(
                proc.stdin()
                    .ok_or("the exec connection has no stdin".to_string())?,
            ),
            false => None,
        };
        let feed = async move {
            match (writer, stdin) {
                (Some(w), Some(rx)) => feed_stdin(w, rx).await,
                _ => Ok(None),
            }
        };
        // Both pipes at once: the message loop blocks on whichever is full. When the
        // consumer of stdout goes away, stop at once: nobody reads stdout any more, so
        // stderr would never end either.
        let out = drain_stdout(o, &stdout, &out_tail, &count);
        let err = drain_tail(e, &err_tail);
        tokio::pin!(out, err, feed);
        let (mut err_done, mut fed) = (false, false);
        let o = loop {
            tokio::select! {
                o = &mut out => break o,
                () = &mut err, if !err_done => err_done = true,
                f = &mut feed, if !fed => {
                    fed = true;
                    // Incomplete input: close now (dropping `proc`), no EOF.
                    f?;
                }
            }
        };
        if o.is_err() {
            // Dropping `proc` closes the connection.
            return Err("the consumer of its output stopped reading".to_string());
        }
        if !err_done {
            err.await;
        }
        let status = status.await;
        drop(proc);
        Ok(exit_of(status.as_ref()))
    };
    let exit = match tokio::time::timeout(spec.timeout, run).await {
        Ok(Ok(exit)) => exit,
        Ok(Err(why)) => Exit::Unknown(why),
        // The future (and with it the connection) is dropped here.
        Err(_) => Exit::TimedOut(spec.timeout),
    };
    let take = |t: &Mutex<TailBuf>| t.lock().map(|mut t| t.take()).unwrap_or_default();
    ExecOutput {
        exit,
        stdout_tail: take(&out_tail),
        stderr_tail: take(&err_tail),
        stdout_bytes: count.lock().map(|c| *c).unwrap_or_default(),
        started: started.load(std::sync::atomic::Ordering::Relaxed),
    }
}

/// A command's stdout as a blocking [`Read`] (use it on a blocking thread, never on an async
/// one). It returns EOF only after the command exited with code 0; a non-zero or unknown
/// exit, a timeout, or a connection that ended without a status is a read error, so a
/// consumer that turns a complete read into a snapshot writes none for a failed command.
pub struct StreamReader {
    rx: mpsc::Receiver<Chunk>,
    current: Bytes,
    end: Option<Result<(), String>>,
}

impl StreamReader {
    /// A reader of the chunks `rx` receives.
    pub fn new(rx: mpsc::Receiver<Chunk>) -> Self {
        StreamReader {
            rx,
            current: Bytes::new(),
            end: None,
        }
    }
}

impl Read for StreamReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if !self.current.is_empty() {
                let n = buf.len().min(self.current.len());
                buf[..n].copy_from_slice(&self.current.split_to(n));
                return Ok(n);
            }
            match &self.end {
                Some(Ok(())) => return Ok(0),
                Some(Err(why)) => return Err(std::io::Error::other(why.clone())),
                None => {}
            }
            self.end = match self.rx.blocking_recv() {
                Some(Chunk::Data(b)) => {
                    self.current = b;
                    None
                }
                Some(Chunk::End(r)) => Some(r),
                None => Some(Err(
                    "the command's output ended without an exit status".into()
                )),
            };
        }
    }
}

/// Starts `spec` with its stdout streamed: returns the reader (for a blocking thread) and
/// the task that ends with the command's [`ExecOutput`]. Dropping the reader early closes the
/// connection.
pub fn stream_exec(
    client: Client,
    spec: ExecSpec,
) -> (StreamReader, tokio::task::JoinHandle<ExecOutput>) {
    let (tx, rx) = mpsc::channel(STREAM_CHUNKS);
    let task = tokio::spawn(async move {
        let out = exec(&client, &spec, Stdout::Stream(tx.clone())).await;
        let verdict = if out.exit.success() {
            Ok(())
        } else {
            let stderr = out.stderr_text();
            Err(if stderr.is_empty() {
                format!("{:?} failed: {}", spec.command, out.exit)
            } else {
                format!("{:?} failed: {}: {stderr}", spec.command, out.exit)
            })
        };
        // The reader may be gone already; then nobody needs the verdict.
        let _ = tx.send(Chunk::End(verdict)).await;
        out
    });
    (StreamReader::new(rx), task)
}

/// Runs `spec` and hands its stdout, as a [`StreamReader`], to `consume` on a blocking
/// thread; returns what `consume` returned and how the command ended. This is the glue a
/// dump uses: `consume` reads the dump into a one-file snapshot and, because the reader fails
/// unless the command exited 0, writes none for a failed dump.
pub async fn run_streamed<T: Send + 'static>(
    client: Client,
    spec: ExecSpec,
    consume: impl FnOnce(StreamReader) -> T + Send + 'static,
) -> (Result<T, String>, ExecOutput) {
    let (reader, task) = stream_exec(client, spec);
    let consumer = tokio::task::spawn_blocking(move || consume(reader));
    let (consumed, out) = tokio::join!(consumer, task);
    let consumed = consumed.map_err(|e| format!("the consumer of the output failed: {e}"));
    let out = out.unwrap_or_else(|e| ExecOutput {
        exit: Exit::Unknown(format!("the exec task failed: {e}")),
        stdout_tail: Vec::new(),
        stderr_tail: Vec::new(),
        stdout_bytes: 0,
        started: false,
    });
    (consumed, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(json: &str) -> Status {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn exit_codes_come_from_the_status_message() {
        assert_eq!(
            exit_of(Some(&status(r#"{"status":"Success"}"#))),
            Exit::Code(0)
        );
        let nonzero = r#"{"status":"Failure","reason":"NonZeroExitCode","message":"command terminated with non-zero exit code: error executing command [false], exit code 3","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#;
        assert_eq!(exit_of(Some(&status(nonzero))), Exit::Code(3));
        let other = r#"{"status":"Failure","reason":"InternalError","message":"container not found (\"db\")"}"#;
        assert!(
            matches!(exit_of(Some(&status(other))), Exit::Unknown(m) if m.contains("container not found"))
        );
        assert!(matches!(exit_of(None), Exit::Unknown(_)));
        assert!(!Exit::Code(1).success() && Exit::Code(0).success());
    }

    #[test]
    fn tail_keeps_the_last_bytes() {
        let mut t = TailBuf::new(4);
        t.push(b"ab");
        t.push(b"cdef");
        assert_eq!(t.take(), b"cdef");
        t.push(b"0123456789");
        assert_eq!(t.take(), b"6789");
        t.push(b"xyz");
        t.push(b"w");
        assert_eq!(t.take(), b"xyzw");
    }

    #[test]
    fn the_reader_ends_cleanly_only_after_a_successful_exit() {
        let (tx, rx) = mpsc::channel(4);
        tx.try_send(Chunk::Data(Bytes::from_static(b"hello ")))
            .unwrap();
        tx.try_send(Chunk::Data(Bytes::from_static(b"world")))
            .unwrap();
        tx.try_send(Chunk::End(Ok(()))).unwrap();
        let mut s = String::new();
        StreamReader::new(rx).read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello world");

        let (tx, rx) = mpsc::channel(4);
        tx.try_send(Chunk::Data(Bytes::from_static(b"partial")))
            .unwrap();
        tx.try_send(Chunk::End(Err("exit code 2".into()))).unwrap();
        let err = StreamReader::new(rx)
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert!(err.to_string().contains("exit code 2"), "{err}");

        let (tx, rx) = mpsc::channel(4);
        tx.try_send(Chunk::Data(Bytes::from_static(b"partial")))
            .unwrap();
        drop(tx);
        let err = StreamReader::new(rx)
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert!(err.to_string().contains("without an exit status"), "{err}");
    }
}

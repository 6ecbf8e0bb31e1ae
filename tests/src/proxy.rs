//! A loopback HTTP/1.1 proxy that injects faults between podvault and a real S3 server.
//!
//! [`FaultProxy`] listens on `127.0.0.1:0` and forwards each request byte for byte (request
//! line, `Host` header, signature headers and body untouched) to the upstream server over
//! a fresh connection, then relays the response. With probability [`FaultConfig::rate`] a
//! request gets one [`FaultKind`] instead: an S3 error response, a connection reset before
//! or in the middle of the response, a stall, a truncated response body, or an upload that
//! is only partly forwarded before both connections are dropped. What was injected is
//! counted per kind ([`FaultProxy::counts`]) so a test can prove the faults really happened.
//!
//! Choices are drawn from one seeded RNG. The order in which concurrent requests reach it
//! is up to the scheduler, so a run is reproducible in distribution, not request by request.
//! So that a short run cannot pass vacuously, a kind that has not been injected yet is
//! forced on the next request it applies to once [`FORCE_GAP`] requests have gone through
//! unharmed; among the kinds that apply, the least injected one is chosen.
//!
//! Every request can also be held back for [`FaultConfig::delay`] before it is forwarded,
//! which puts a round trip's worth of latency in front of a loopback server; with
//! [`FaultConfig::clean`] the proxy injects nothing else. Whatever the configuration, the
//! proxy counts the requests it receives by [`RequestKind`] and the body bytes in each
//! direction ([`FaultProxy::traffic`]); the benchmark harness uses that to report what each
//! tool asks of object storage.
//!
//! One thread per client connection (plain blocking I/O): this is test scaffolding for a
//! few concurrent connections, and simple beats clever here. Requests are forwarded whole
//! (read, then sent upstream on a fresh connection; the response likewise), so the proxy
//! adds a copy of every message but never reorders bytes. Concurrent requests are delayed
//! concurrently, as latency on a real network would. Dropping the proxy stops it.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Clean requests after a fault before a not-yet-seen kind is forced (see the module docs).
pub const FORCE_GAP: u64 = 4;

/// Longest request or response head accepted.
const MAX_HEAD: usize = 64 << 10;

/// One kind of injected fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// `500 Internal Server Error` with an S3 `InternalError` XML body; not forwarded.
    Http500,
    /// `503 Service Unavailable` with a plain-text body, as a load balancer sends; not
    /// forwarded.
    Http503,
    /// `503` with an S3 `SlowDown` XML body (throttling); not forwarded.
    SlowDown,
    /// The request reaches S3, then the client connection is reset without any response.
    Reset,
    /// The response head and part of the body are sent, then the connection is reset.
    ResetMidBody,
    /// The response is held back for [`FaultConfig::stall`] before it is sent.
    Stall,
    /// `Content-Length` announces the whole body, part is sent, then a clean close (FIN).
    TruncatedBody,
    /// Only part of an upload's body is forwarded to S3, then both connections are dropped.
    TruncatedRequest,
}

impl FaultKind {
    /// Every kind, in a fixed order.
    pub const ALL: [FaultKind; 8] = [
        FaultKind::Http500,
        FaultKind::Http503,
        FaultKind::SlowDown,
        FaultKind::Reset,
        FaultKind::ResetMidBody,
        FaultKind::Stall,
        FaultKind::TruncatedBody,
        FaultKind::TruncatedRequest,
    ];

    fn index(self) -> usize {
        self as usize
    }

    /// Whether this kind can be injected into a request (by method and request body).
    fn applies(self, method: &str, has_body: bool) -> bool {
        match self {
            FaultKind::TruncatedRequest => has_body,
            // Only GET responses (objects, listings) carry a body worth cutting.
            FaultKind::ResetMidBody | FaultKind::TruncatedBody => method == "GET",
            _ => true,
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// What to inject and how often.
#[derive(Debug, Clone)]
pub struct FaultConfig {
    /// Probability (0 to 1) that a request gets a fault.
    pub rate: f64,
    /// The kinds that may be injected.
    pub kinds: Vec<FaultKind>,
    /// How long a [`FaultKind::Stall`] holds the response; `Duration::MAX` never sends it.
    pub stall: Duration,
    /// RNG seed.
    pub seed: u64,
    /// Only requests whose request line contains this text may get a fault (e.g. `"PUT "`
    /// for uploads, `"/data/"` for packs); `None`: every request.
    pub only: Option<String>,
    /// How long every request is held after it has been read and before it is forwarded (or
    /// faulted); zero for none.
    pub delay: Duration,
}

impl FaultConfig {
    /// All kinds at `rate`, with `stall` and `seed`.
    pub fn all(rate: f64, stall: Duration, seed: u64) -> Self {
        FaultConfig {
            rate,
            kinds: FaultKind::ALL.to_vec(),
            stall,
            seed,
            only: None,
            delay: Duration::ZERO,
        }
    }

    /// No faults: every request is forwarded after `delay` (zero for a pure counting proxy).
    pub fn clean(delay: Duration) -> Self {
        FaultConfig {
            rate: 0.0,
            kinds: Vec::new(),
            stall: Duration::ZERO,
            seed: 0,
            only: None,
            delay,
        }
    }

    /// A black hole: every request is forwarded but its response never comes back.
    pub fn stall_forever() -> Self {
        FaultConfig {
            rate: 1.0,
            kinds: vec![FaultKind::Stall],
            stall: Duration::MAX,
            seed: 0,
            only: None,
            delay: Duration::ZERO,
        }
    }
}

/// What the proxy has done so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Requests received (faulted or not).
    pub requests: u64,
    /// Faults injected, by kind (every kind present, zero when never injected).
    pub injected: BTreeMap<FaultKind, u64>,
}

impl FaultCounts {
    /// Total faults injected.
    pub fn total(&self) -> u64 {
        self.injected.values().sum()
    }
}

impl fmt::Display for FaultCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} requests, {} faults:", self.requests, self.total())?;
        for (k, n) in &self.injected {
            write!(f, " {k}={n}")?;
        }
        Ok(())
    }
}

/// What an S3 request does, told from its method and query string alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RequestKind {
    /// A `GET` that is not a listing: an object (whole or a range) or a bucket sub-resource
    /// such as `?location`.
    Get,
    /// A `GET` whose query has a listing parameter (`list-type`, `prefix`, `delimiter`,
    /// `marker`, `continuation-token` or `start-after`): ListObjects(V2).
    List,
    /// `HEAD`: an object's or a bucket's metadata.
    Head,
    /// `PUT`: an object, a multipart part, or a bucket.
    Put,
    /// `POST`: multipart create/complete, multi-object delete.
    Post,
    /// `DELETE`.
    Delete,
    /// Any other method.
    Other,
}

impl RequestKind {
    /// Every kind, in a fixed order.
    pub const ALL: [RequestKind; 7] = [
        RequestKind::Get,
        RequestKind::List,
        RequestKind::Head,
        RequestKind::Put,
        RequestKind::Post,
        RequestKind::Delete,
        RequestKind::Other,
    ];

    /// Classifies a request by its method and request target (`/bucket/key?query`).
    pub fn of(method: &str, target: &str) -> RequestKind {
        match method {
            "GET" => {
                let query = target.split_once('?').map_or("", |(_, q)| q);
                let listing = query.split('&').any(|pair| {
                    let key = pair.split_once('=').map_or(pair, |(k, _)| k);
                    matches!(
                        key,
                        "list-type"
                            | "prefix"
                            | "delimiter"
                            | "marker"
                            | "continuation-token"
                            | "start-after"
                    )
                });
                if listing {
                    RequestKind::List
                } else {
                    RequestKind::Get
                }
            }
            "HEAD" => RequestKind::Head,
            "PUT" => RequestKind::Put,
            "POST" => RequestKind::Post,
            "DELETE" => RequestKind::Delete,
            _ => RequestKind::Other,
        }
    }

    /// Upper-case name (`GET`, `LIST`, …).
    pub fn label(self) -> &'static str {
        match self {
            RequestKind::Get => "GET",
            RequestKind::List => "LIST",
            RequestKind::Head => "HEAD",
            RequestKind::Put => "PUT",
            RequestKind::Post => "POST",
            RequestKind::Delete => "DELETE",
            RequestKind::Other => "other",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for RequestKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Requests received and body bytes relayed by a proxy, from its start or between two
/// readings ([`Traffic::since`]).
///
/// Bytes are HTTP message bodies as they crossed the proxy (object data, listings, error
/// documents; chunked framing and `aws-chunked` signatures included, heads not): `up` from
/// the client to the server, `down` back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Requests by [`RequestKind`] (indexed in [`RequestKind::ALL`] order).
    pub requests: [u64; RequestKind::ALL.len()],
    /// Request body bytes, client to server.
    pub bytes_up: u64,
    /// Response body bytes, server to client.
    pub bytes_down: u64,
}

impl Traffic {
    /// Requests of one kind.
    pub fn requests(&self, kind: RequestKind) -> u64 {
        self.requests[kind.index()]
    }

    /// Requests of every kind.
    pub fn total_requests(&self) -> u64 {
        self.requests.iter().sum()
    }

    /// What happened after `earlier` (a reading of the same proxy) up to `self`.
    pub fn since(&self, earlier: &Traffic) -> Traffic {
        Traffic {
            requests: std::array::from_fn(|i| self.requests[i].saturating_sub(earlier.requests[i])),
            bytes_up: self.bytes_up.saturating_sub(earlier.bytes_up),
            bytes_down: self.bytes_down.saturating_sub(earlier.bytes_down),
        }
    }
}

impl fmt::Display for Traffic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} requests:", self.total_requests())?;
        for k in RequestKind::ALL {
            write!(f, " {k}={}", self.requests(k))?;
        }
        write!(f, "; {} B up, {} B down", self.bytes_up, self.bytes_down)
    }
}

struct Shared {
    upstream: SocketAddr,
    config: Mutex<FaultConfig>,
    rng: Mutex<StdRng>,
    counts: [AtomicU64; FaultKind::ALL.len()],
    requests: AtomicU64,
    by_kind: [AtomicU64; RequestKind::ALL.len()],
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    since_fault: AtomicU64,
    stop: AtomicBool,
}

/// A running fault-injecting proxy; stops when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultProxy({} -> {})", self.addr, self.shared.upstream)
    }
}

impl FaultProxy {
    /// Starts a proxy in front of `upstream` (`http://host:port`, as the S3 endpoint URL).
    pub fn start(upstream: &str, config: FaultConfig) -> io::Result<Self> {
        let hostport = upstream
            .strip_prefix("http://")
            .ok_or_else(|| invalid(format!("upstream {upstream:?} is not an http:// URL")))?
            .trim_end_matches('/');
        let upstream = hostport
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| invalid(format!("upstream {hostport:?} does not resolve")))?;
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            rng: Mutex::new(StdRng::seed_from_u64(config.seed)),
            config: Mutex::new(config),
            counts: Default::default(),
            requests: AtomicU64::new(0),
            by_kind: Default::default(),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            since_fault: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        let acceptor = std::thread::Builder::new()
            .name("fault-proxy".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if s.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let s = s.clone();
                    let _ = std::thread::Builder::new()
                        .name("fault-proxy-conn".into())
                        .spawn(move || {
                            // Errors only end this connection; the client sees them as such.
                            let _ = serve(&s, conn);
                        });
                }
            })?;
        Ok(FaultProxy {
            addr,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The proxy as an S3 endpoint URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Changes the fault rate from now on (0 turns faults off).
    pub fn set_rate(&self, rate: f64) {
        lock(&self.shared.config).rate = rate;
    }

    /// Changes which requests may get faults from now on (see [`FaultConfig::only`]).
    pub fn set_only(&self, only: Option<&str>) {
        lock(&self.shared.config).only = only.map(str::to_owned);
    }

    /// Changes the per-request delay from now on (see [`FaultConfig::delay`]).
    pub fn set_delay(&self, delay: Duration) {
        lock(&self.shared.config).delay = delay;
    }

    /// Requests by kind and body bytes relayed so far. A response's bytes are counted
    /// before it is relayed, so once a client has its answer the reading includes it.
    pub fn traffic(&self) -> Traffic {
        let s = &self.shared;
        Traffic {
            requests: std::array::from_fn(|i| s.by_kind[i].load(Ordering::SeqCst)),
            bytes_up: s.bytes_up.load(Ordering::SeqCst),
            bytes_down: s.bytes_down.load(Ordering::SeqCst),
        }
    }

    /// Requests seen and faults injected so far.
    pub fn counts(&self) -> FaultCounts {
        FaultCounts {
            requests: self.shared.requests.load(Ordering::SeqCst),
            injected: FaultKind::ALL
                .iter()
                .map(|k| (*k, self.shared.counts[k.index()].load(Ordering::SeqCst)))
                .collect(),
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the acceptor; connection threads notice `stop` at their next request or
        // stall tick and end on their own.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(h) = self.acceptor.take() {
            let _ = h.join();
        }
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One HTTP message as read off the wire: the raw head, the raw body (framing included for
/// chunked bodies) and what the proxy needs to know about it.
struct Message {
    head: Vec<u8>,
    body: Vec<u8>,
    /// First line's first word: the method of a request.
    method: String,
    /// First line's second word: the target of a request (empty for responses).
    target: String,
    /// Status code of a response (0 for requests).
    status: u16,
    /// The peer asked to close the connection after this message.
    close: bool,
}

/// Serves one client connection: requests in turn until the client goes away.
fn serve(s: &Shared, client: TcpStream) -> io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(300)))?;
    client.set_nodelay(true)?;
    let mut reader = BufReader::new(client.try_clone()?);
    let mut client = client;
    loop {
        let Some(req) = read_message(&mut reader, None)? else {
            return Ok(());
        };
        if s.stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        s.requests.fetch_add(1, Ordering::SeqCst);
        s.by_kind[RequestKind::of(&req.method, &req.target).index()].fetch_add(1, Ordering::SeqCst);
        s.bytes_up
            .fetch_add(req.body.len() as u64, Ordering::SeqCst);
        let delay = lock(&s.config).delay;
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let keep_alive = match choose(s, &req) {
            None => forward(s, &req, &mut client, None)?,
            Some(kind) => inject(s, kind, &req, &mut client)?,
        };
        if !keep_alive || req.close {
            return Ok(());
        }
    }
}

/// Decides whether this request gets a fault, and which.
fn choose(s: &Shared, req: &Message) -> Option<FaultKind> {
    let config = lock(&s.config).clone();
    let request_line = req.head.split(|b| *b == b'\n').next().unwrap_or_default();
    let selected = config
        .only
        .as_ref()
        .is_none_or(|text| String::from_utf8_lossy(request_line).contains(text.as_str()));
    let applicable: Vec<FaultKind> = config
        .kinds
        .iter()
        .copied()
        .filter(|k| selected && k.applies(&req.method, !req.body.is_empty()))
        .collect();
    let count = |k: &FaultKind| s.counts[k.index()].load(Ordering::SeqCst);
    let mut rng = lock(&s.rng);
    let roll = rng.random::<f64>() < config.rate;
    let unseen = applicable.iter().any(|k| count(k) == 0);
    let forced = config.rate > 0.0 && unseen && s.since_fault.load(Ordering::SeqCst) >= FORCE_GAP;
    if applicable.is_empty() || !(roll || forced) {
        s.since_fault.fetch_add(1, Ordering::SeqCst);
        return None;
    }
    let least = applicable.iter().map(count).min().unwrap_or(0);
    let candidates: Vec<FaultKind> = applicable
        .into_iter()
        .filter(|k| count(k) == least)
        .collect();
    let kind = candidates[rng.random_range(0..candidates.len())];
    s.since_fault.store(0, Ordering::SeqCst);
    Some(kind)
}

fn record(s: &Shared, kind: FaultKind) {
    s.counts[kind.index()].fetch_add(1, Ordering::SeqCst);
}

/// Injects `kind` for `req`. Returns whether the client connection stays usable.
fn inject(s: &Shared, kind: FaultKind, req: &Message, client: &mut TcpStream) -> io::Result<bool> {
    match kind {
        FaultKind::Http500 | FaultKind::Http503 | FaultKind::SlowDown => {
            record(s, kind);
            let (status, content_type, body) = match kind {
                FaultKind::Http500 => (
                    "500 Internal Server Error",
                    "application/xml",
                    s3_error(
                        "InternalError",
                        "We encountered an internal error. Please try again.",
                    ),
                ),
                FaultKind::SlowDown => (
                    "503 Slow Down",
                    "application/xml",
                    s3_error("SlowDown", "Please reduce your request rate."),
                ),
                _ => (
                    "503 Service Unavailable",
                    "text/plain",
                    "upstream temporarily unavailable\n".to_owned(),
                ),
            };
            let mut out = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
                 x-amz-request-id: podvault-fault-proxy\r\n\r\n",
                body.len()
            )
            .into_bytes();
            if req.method != "HEAD" {
                out.extend_from_slice(body.as_bytes());
                down(s, body.len());
            }
            client.write_all(&out)?;
            Ok(true)
        }
        FaultKind::TruncatedRequest => {
            let mut up = connect(s)?;
            let part = {
                let mut rng = lock(&s.rng);
                rng.random_range(0..req.body.len())
            };
            up.write_all(&req.head)?;
            up.write_all(&req.body[..part])?;
            up.flush()?;
            record(s, kind);
            reset(up);
            reset(client.try_clone()?);
            Ok(false)
        }
        FaultKind::Stall
        | FaultKind::Reset
        | FaultKind::ResetMidBody
        | FaultKind::TruncatedBody => forward(s, req, client, Some(kind)),
    }
}

/// Forwards `req` upstream and relays the response, applying a response-side fault.
/// Returns whether the client connection stays usable.
fn forward(
    s: &Shared,
    req: &Message,
    client: &mut TcpStream,
    fault: Option<FaultKind>,
) -> io::Result<bool> {
    let mut up = connect(s)?;
    up.write_all(&req.head)?;
    up.write_all(&req.body)?;
    up.flush()?;
    let mut reader = BufReader::new(up.try_clone()?);
    // Interim 1xx responses are relayed as they come.
    let resp = loop {
        let Some(resp) = read_message(&mut reader, Some(&req.method))? else {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "upstream closed without a response",
            ));
        };
        if (100..200).contains(&resp.status) && resp.status != 101 {
            client.write_all(&resp.head)?;
            continue;
        }
        break resp;
    };
    drop(reader);
    drop(up);
    match fault {
        None => {}
        Some(FaultKind::Reset) => {
            record(s, FaultKind::Reset);
            reset(client.try_clone()?);
            return Ok(false);
        }
        Some(FaultKind::Stall) => {
            record(s, FaultKind::Stall);
            let stall = lock(&s.config).stall;
            let until = Instant::now().checked_add(stall);
            while until.is_none_or(|t| Instant::now() < t) {
                if s.stop.load(Ordering::SeqCst) {
                    return Ok(false);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Some(kind @ (FaultKind::ResetMidBody | FaultKind::TruncatedBody)) => {
            if resp.body.len() < 2 {
                // Nothing to cut: a reset is the closest fault.
                record(s, FaultKind::Reset);
                reset(client.try_clone()?);
                return Ok(false);
            }
            let part = {
                let mut rng = lock(&s.rng);
                rng.random_range(1..resp.body.len())
            };
            down(s, part);
            client.write_all(&resp.head)?;
            client.write_all(&resp.body[..part])?;
            client.flush()?;
            record(s, kind);
            if kind == FaultKind::ResetMidBody {
                reset(client.try_clone()?);
            } else {
                client.shutdown(Shutdown::Both)?;
            }
            return Ok(false);
        }
        Some(other) => unreachable!("{other} is not a response-side fault"),
    }
    down(s, resp.body.len());
    client.write_all(&resp.head)?;
    client.write_all(&resp.body)?;
    client.flush()?;
    Ok(!resp.close)
}

/// Counts response body bytes on their way to the client.
fn down(s: &Shared, bytes: usize) {
    s.bytes_down.fetch_add(bytes as u64, Ordering::SeqCst);
}

fn connect(s: &Shared) -> io::Result<TcpStream> {
    let up = TcpStream::connect_timeout(&s.upstream, Duration::from_secs(10))?;
    up.set_read_timeout(Some(Duration::from_secs(120)))?;
    up.set_nodelay(true)?;
    Ok(up)
}

/// Closes with a TCP RST (linger 0) rather than a FIN.
fn reset(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

fn s3_error(code: &str, message: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
         <Message>{message}</Message><RequestId>podvault-fault-proxy</RequestId></Error>"
    )
}

/// Reads one message. `request_method` is `None` when reading a request, else the method of
/// the request this is the response to. `Ok(None)` on a clean end of stream before a head.
fn read_message(
    r: &mut BufReader<TcpStream>,
    request_method: Option<&str>,
) -> io::Result<Option<Message>> {
    let mut head = Vec::new();
    loop {
        let n = r.read_until(b'\n', &mut head)?;
        if n == 0 {
            if head.is_empty() {
                return Ok(None);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "truncated head",
            ));
        }
        if head.len() > MAX_HEAD {
            return Err(invalid("message head too large".into()));
        }
        if head == b"\r\n" {
            // A stray empty line between messages (RFC 9112 §2.2) is skipped.
            head.clear();
        } else if head.ends_with(b"\r\n\r\n") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let first = lines.next().unwrap_or_default();
    let mut words = first.split(' ');
    let (method, target, status, version) = match request_method {
        None => {
            let method = words.next().unwrap_or_default().to_owned();
            let target = words.next().unwrap_or_default().to_owned();
            let version = first.rsplit(' ').next().unwrap_or_default().to_owned();
            (method, target, 0, version)
        }
        Some(_) => {
            let version = words.next().unwrap_or_default().to_owned();
            let status = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
            (String::new(), String::new(), status, version)
        }
    };
    let mut length = None;
    let mut chunked = false;
    let mut close = version == "HTTP/1.0";
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                length = Some(
                    value
                        .parse::<usize>()
                        .map_err(|_| invalid(format!("bad Content-Length {value:?}")))?,
                )
            }
            "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
            "connection" => {
                let v = value.to_ascii_lowercase();
                close = v.contains("close") || (close && !v.contains("keep-alive"));
            }
            _ => {}
        }
    }
    let no_body = match request_method {
        None => false,
        Some(m) => m == "HEAD" || status == 204 || status == 304 || (100..200).contains(&status),
    };
    let mut body = Vec::new();
    match (no_body, chunked, length) {
        (true, _, _) => {}
        (false, true, _) => read_chunked(r, &mut body)?,
        (false, false, Some(n)) => {
            body.resize(n, 0);
            r.read_exact(&mut body)?;
        }
        (false, false, None) => {
            if request_method.is_some() {
                // A response without framing ends when the server closes.
                r.read_to_end(&mut body)?;
                close = true;
            }
        }
    }
    Ok(Some(Message {
        head,
        body,
        method,
        target,
        status,
        close,
    }))
}

/// Reads a chunked body, keeping its framing (it is relayed as is).
fn read_chunked(r: &mut BufReader<TcpStream>, out: &mut Vec<u8>) -> io::Result<()> {
    loop {
        let start = out.len();
        if r.read_until(b'\n', out)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "truncated chunk",
            ));
        }
        let line = String::from_utf8_lossy(&out[start..]).into_owned();
        let size_text = line.trim().split(';').next().unwrap_or_default();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| invalid(format!("bad chunk size {size_text:?}")))?;
        if size == 0 {
            // Trailers, then the empty line.
            loop {
                let start = out.len();
                if r.read_until(b'\n', out)? == 0 || &out[start..] == b"\r\n" {
                    return Ok(());
                }
            }
        }
        let start = out.len();
        out.resize(start + size + 2, 0);
        r.read_exact(&mut out[start..])?;
    }
}

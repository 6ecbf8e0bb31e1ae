//! Smoke test of the comparison harness at a tiny scale: seeded datasets are deterministic,
//! the change is the requested fraction and undoes exactly, the statistics and table are
//! right, and the S3 mode's proxy counts requests and bytes exactly and delays each request.
//! No restic, no podvault binary, no S3 server (a tiny HTTP server stands in for it).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use podvault_benches::dataset::{Cached, Content, Dataset, Plan};
use podvault_benches::measure;
use podvault_benches::stats::{median, ratio, Metric, Phase, RequestKind, Results, Sample};
use podvault_tests::proxy::{FaultConfig, FaultProxy};

/// Every file under `root` with its content.
fn snapshot(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                let rel = e.path().strip_prefix(root).unwrap().display().to_string();
                out.insert(rel, std::fs::read(e.path()).unwrap());
            }
        }
    }
    out
}

#[test]
fn datasets_are_seeded_and_deterministic_across_thread_counts() {
    let tmp = tempfile::tempdir().unwrap();
    for (dataset, scale) in [
        (Dataset::Mixed, 0.004),
        (Dataset::SmallFiles, 0.003),
        (Dataset::BigFile, 0.04),
    ] {
        let plan = Plan::new(dataset, scale, 7);
        assert_eq!(plan, Plan::new(dataset, scale, 7));
        assert_ne!(plan.files, Plan::new(dataset, scale, 8).files);
        let a = tmp.path().join(format!("{dataset}-a"));
        let b = tmp.path().join(format!("{dataset}-b"));
        plan.generate(&a, 1).unwrap();
        plan.generate(&b, 3).unwrap();
        let (sa, sb) = (snapshot(&a), snapshot(&b));
        assert_eq!(sa.len(), plan.files.len(), "{dataset}");
        assert!(
            sa == sb,
            "{dataset}: generation depends on the thread count"
        );
        let total: u64 = sa.values().map(|v| v.len() as u64).sum();
        assert_eq!(total, plan.total_bytes(), "{dataset}");
        assert_eq!(measure::dir_usage(&a).unwrap(), (total, sa.len() as u64));
    }
    // Sizes follow the scale: 0.004 of 1.5 GiB, in every category of the mixed dataset.
    let mixed = Plan::new(Dataset::Mixed, 0.004, 7);
    let want = (1.5 * 0.004 * (1u64 << 30) as f64) as u64;
    assert!(mixed.total_bytes().abs_diff(want) < want / 50);
    for kind in [
        Content::Source,
        Content::Binary,
        Content::Log,
        Content::Random,
    ] {
        assert!(mixed.files.iter().any(|f| f.content == kind), "{kind:?}");
    }
    let random: u64 = mixed
        .files
        .iter()
        .filter(|f| f.content == Content::Random)
        .map(|f| f.size)
        .sum();
    assert!((0.13..0.17).contains(&(random as f64 / mixed.total_bytes() as f64)));
    assert_eq!(Plan::new(Dataset::SmallFiles, 0.003, 7).files.len(), 300);
    assert!(Plan::new(Dataset::SmallFiles, 0.003, 7)
        .files
        .iter()
        .all(|f| f.size <= 16 * 1024));
}

#[test]
fn change_rewrites_the_fraction_and_reverts_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    for (dataset, scale) in [(Dataset::Mixed, 0.002), (Dataset::BigFile, 0.02)] {
        let (cached, generated) =
            Cached::ensure(Plan::new(dataset, scale, 3), tmp.path(), 2).unwrap();
        assert!(generated);
        let original = snapshot(&cached.tree());
        let m = cached.mutate(0.05, 11).unwrap();
        let total = cached.plan.total_bytes();
        assert!(m.bytes_changed >= total / 20, "{dataset}");
        assert!(m.bytes_changed < total / 10, "{dataset}");
        let changed = snapshot(&cached.tree());
        let differing: u64 = original
            .iter()
            .map(|(k, v)| v.iter().zip(&changed[k]).filter(|(a, b)| a != b).count() as u64)
            .sum();
        assert!(differing > m.bytes_changed / 2, "{dataset}: {differing}");
        // An interrupted run (marker still present) must not reuse the changed data.
        let (_, regenerated) = Cached::ensure(cached.plan.clone(), tmp.path(), 2).unwrap();
        assert!(regenerated);
        assert_eq!(snapshot(&cached.tree()), original);
        let m = cached.mutate(0.05, 11).unwrap();
        assert!(m.regions() > 0);
        cached.revert(m).unwrap();
        assert_eq!(snapshot(&cached.tree()), original);
        let (_, regenerated) = Cached::ensure(cached.plan.clone(), tmp.path(), 2).unwrap();
        assert!(!regenerated, "a reverted dataset is reused from the cache");
    }
}

#[test]
fn text_like_content_compresses_and_random_does_not() {
    use podvault_benches::dataset::fill;
    use podvault_benches::rng::FastRng;
    let ratio_of = |c: Content| {
        let mut v = Vec::new();
        fill(c, &mut FastRng::new(1), 1 << 20, &mut v);
        assert_eq!(v.len(), 1 << 20);
        distinct_4grams(&v) as f64 / v.len() as f64
    };
    // A cheap compressibility proxy: text repeats its 4-byte sequences, random data does not.
    assert!(ratio_of(Content::Source) < 0.2);
    assert!(ratio_of(Content::Log) < 0.3);
    assert!(ratio_of(Content::Random) > 0.9);
}

fn distinct_4grams(v: &[u8]) -> usize {
    let mut set = std::collections::HashSet::new();
    for w in v.windows(4) {
        set.insert(u32::from_le_bytes([w[0], w[1], w[2], w[3]]));
    }
    set.len()
}

#[test]
fn median_and_ratio_math() {
    assert_eq!(median(&[]), None);
    assert_eq!(median(&[3.0]), Some(3.0));
    assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
    assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    assert_eq!(median(&[f64::NAN, 2.0]), Some(2.0));
    assert_eq!(ratio(Some(1.0), Some(4.0)), Some(0.25));
    assert_eq!(ratio(Some(1.0), Some(0.0)), None);
    assert_eq!(ratio(None, Some(1.0)), None);

    let mut r = Results::new("tiny", vec!["podvault".into(), "restic".into()]);
    r.source_bytes = 100_000_000;
    r.source_files = 10;
    let s = |wall_s: f64, rss_mib: u64| Sample {
        wall_s,
        cpu_s: wall_s * 1.5,
        max_rss: rss_mib << 20,
        repo_bytes: 50_000_000,
        repo_objects: 4,
        traffic: None,
    };
    for (p, q) in [(1.0, 4.0), (3.0, 2.0), (2.0, 6.0)] {
        r.add("podvault", Phase::FirstBackup, s(p, 50));
        r.add("restic", Phase::FirstBackup, s(q, 150));
    }
    assert_eq!(r.runs(), 3);
    assert_eq!(
        r.median("podvault", Phase::FirstBackup, Metric::Wall),
        Some(2.0)
    );
    assert_eq!(
        r.median("restic", Phase::FirstBackup, Metric::Wall),
        Some(4.0)
    );
    // Throughput medians are taken per run: 100 MB / {1,3,2} s and / {4,2,6} s.
    assert_eq!(
        r.median("podvault", Phase::FirstBackup, Metric::Throughput),
        Some(50.0)
    );
    assert_eq!(
        r.median("restic", Phase::FirstBackup, Metric::Throughput),
        Some(25.0)
    );
    assert_eq!(
        r.median("podvault", Phase::FirstBackup, Metric::CpuPercent),
        Some(150.0)
    );
    assert_eq!(
        r.median("podvault", Phase::FirstBackup, Metric::SizeRatio),
        Some(0.5)
    );
    assert_eq!(r.median("podvault", Phase::Restore, Metric::Wall), None);
    // Local samples have no traffic: no S3 rows.
    assert!(!r.has_traffic());
    assert!(!r.to_markdown().contains("S3 GET"));
    let md = r.to_markdown();
    assert!(
        md.contains("| phase | metric | podvault | restic | podvault/restic |"),
        "{md}"
    );
    assert!(
        md.contains("| first backup | wall s (lower better) | 2.00 | 4.00 | 0.50× |"),
        "{md}"
    );
    assert!(
        md.contains("| first backup | MB/s of source (higher better) | 50.0 | 25.0 | 2.00× |"),
        "{md}"
    );
    assert!(
        md.contains("| first backup | peak RSS MiB (lower better) | 50.0 | 150 | 0.33× |"),
        "{md}"
    );
    assert!(
        md.contains("| full restore | wall s (lower better) | – | – | – |"),
        "{md}"
    );
    let json = r.to_json();
    assert_eq!(
        json["tools"]["restic"]["first"].as_array().unwrap().len(),
        3
    );

    let chart = tempfile::tempdir().unwrap();
    let png = chart.path().join("tiny.png");
    podvault_benches::chart::draw(&r, &png).unwrap();
    assert!(std::fs::metadata(&png).unwrap().len() > 1000);
}

/// A stand-in for an S3 server: answers every request with `200` and a body of
/// `RESPONSE_BODY` bytes (none for `HEAD`), one request per connection.
const RESPONSE_BODY: usize = 300;

fn tiny_http_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut head = String::new();
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap() == 0 {
                        return;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap();
                    }
                    head.push_str(&line);
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0; length];
                r.read_exact(&mut body).unwrap();
                let mut out = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {RESPONSE_BODY}\r\nConnection: close\r\n\r\n"
                )
                .into_bytes();
                if !head.starts_with("HEAD ") {
                    out.extend(std::iter::repeat_n(b'x', RESPONSE_BODY));
                }
                let mut conn = conn;
                conn.write_all(&out).unwrap();
            });
        }
    });
    format!("http://{addr}")
}

/// Sends one request through `proxy` and reads the whole response.
fn request(proxy: &FaultProxy, method: &str, target: &str, body: usize) -> Vec<u8> {
    let mut c = TcpStream::connect(proxy.addr()).unwrap();
    let mut req = format!(
        "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {body}\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    req.extend(std::iter::repeat_n(b'b', body));
    c.write_all(&req).unwrap();
    let mut resp = Vec::new();
    c.read_to_end(&mut resp).unwrap();
    assert!(resp.starts_with(b"HTTP/1.1 200 OK"), "{method} {target}");
    resp
}

#[test]
fn proxy_counts_requests_by_kind_and_body_bytes_and_delays_each_request() {
    let upstream = tiny_http_server();
    let proxy = FaultProxy::start(&upstream, FaultConfig::clean(Duration::ZERO)).unwrap();
    let requests = [
        ("GET", "/bucket/prefix/data/ab/cd", 0),
        ("GET", "/bucket/prefix/config", 0),
        ("GET", "/bucket/?location", 0),
        ("GET", "/bucket?list-type=2&prefix=prefix%2Fsnapshots%2F", 0),
        ("GET", "/bucket/?prefix=prefix%2Findex%2F&delimiter=%2F", 0),
        ("HEAD", "/bucket/prefix/config", 0),
        ("PUT", "/bucket/prefix/data/ab/cd", 1000),
        ("PUT", "/bucket/prefix/index/ef", 24),
        ("POST", "/bucket/prefix/data/ab/cd?uploads", 0),
        ("DELETE", "/bucket/prefix/locks/1", 0),
    ];
    let start = proxy.traffic();
    assert_eq!(start.total_requests(), 0);
    for (method, target, body) in requests {
        request(&proxy, method, target, body);
    }
    let t = proxy.traffic().since(&start);
    let want = [
        (RequestKind::Get, 3),
        (RequestKind::List, 2),
        (RequestKind::Head, 1),
        (RequestKind::Put, 2),
        (RequestKind::Post, 1),
        (RequestKind::Delete, 1),
        (RequestKind::Other, 0),
    ];
    for (kind, n) in want {
        assert_eq!(t.requests(kind), n, "{kind}: {t}");
    }
    assert_eq!(t.total_requests(), 10);
    assert_eq!(t.bytes_up, 1024);
    // Every response but HEAD's carries a body.
    assert_eq!(t.bytes_down, 9 * RESPONSE_BODY as u64);

    // A delaying proxy holds each request at least as long as asked (no upper bound: the
    // machine may be busy).
    let delay = Duration::from_millis(150);
    let slow = FaultProxy::start(&upstream, FaultConfig::clean(delay)).unwrap();
    for _ in 0..2 {
        let t0 = Instant::now();
        request(&slow, "GET", "/bucket/prefix/config", 0);
        assert!(t0.elapsed() >= delay, "{:?} < {delay:?}", t0.elapsed());
    }
    assert_eq!(slow.traffic().requests(RequestKind::Get), 2);

    // Samples with traffic put the S3 rows in the table.
    let mut r = Results::new("tiny", vec!["podvault".into(), "restic".into()]);
    r.source_bytes = 1 << 20;
    for tool in ["podvault", "restic"] {
        r.add(
            tool,
            Phase::Restore,
            Sample {
                wall_s: 1.0,
                cpu_s: 1.0,
                max_rss: 1 << 20,
                repo_bytes: 0,
                repo_objects: 0,
                traffic: Some(t),
            },
        );
    }
    assert!(r.has_traffic());
    let md = r.to_markdown();
    assert!(
        md.contains("| full restore | S3 LIST | 2.00 | 2.00 | 1.00× |"),
        "{md}"
    );
    assert!(
        md.contains(
            "| full restore | S3 requests, all kinds (lower better) | 10.0 | 10.0 | 1.00× |"
        ),
        "{md}"
    );
    let json = r.to_json();
    assert_eq!(json["tools"]["restic"]["restore"][0]["requests"]["PUT"], 2);
    assert_eq!(json["tools"]["restic"]["restore"][0]["bytes_up"], 1024);
}

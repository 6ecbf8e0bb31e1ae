//! Samples of the comparison, their medians, the podvault/other ratios and the Markdown table.

use std::collections::BTreeMap;
use std::fmt::Write;

pub use podvault_tests::proxy::{RequestKind, Traffic};

/// One measured step of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// First backup into an empty repository.
    FirstBackup,
    /// Second backup with nothing changed.
    NoChange,
    /// Third backup after changing a fraction of the data.
    Changed,
    /// Full restore of the latest snapshot into an empty directory.
    Restore,
}

impl Phase {
    /// Every phase, in run order.
    pub const ALL: [Phase; 4] = [
        Phase::FirstBackup,
        Phase::NoChange,
        Phase::Changed,
        Phase::Restore,
    ];

    /// Human name.
    pub fn label(self) -> &'static str {
        match self {
            Phase::FirstBackup => "first backup",
            Phase::NoChange => "no-change backup",
            Phase::Changed => "backup after change",
            Phase::Restore => "full restore",
        }
    }

    /// Short name for charts.
    pub fn short(self) -> &'static str {
        match self {
            Phase::FirstBackup => "first",
            Phase::NoChange => "no-change",
            Phase::Changed => "changed",
            Phase::Restore => "restore",
        }
    }

    /// True for phases that write to the repository.
    pub fn writes_repository(self) -> bool {
        self != Phase::Restore
    }
}

/// What one tool did in one phase of one run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Wall time, seconds.
    pub wall_s: f64,
    /// User + system CPU time, seconds.
    pub cpu_s: f64,
    /// Peak RSS, bytes.
    pub max_rss: u64,
    /// Bytes the phase added to the repository directory.
    pub repo_bytes: u64,
    /// Files the phase added to the repository directory.
    pub repo_objects: u64,
    /// Requests and bytes between the tool and object storage, as counted by the proxy in
    /// front of the S3 server; `None` for a local-directory repository.
    pub traffic: Option<Traffic>,
}

/// A row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Wall seconds.
    Wall,
    /// Source MB (10^6 bytes) per wall second.
    Throughput,
    /// CPU seconds.
    Cpu,
    /// CPU time / wall time, percent.
    CpuPercent,
    /// Peak RSS, MiB.
    Rss,
    /// MiB added to the repository.
    RepoMib,
    /// Objects (files) added to the repository.
    Objects,
    /// Objects added per GiB of source.
    ObjectsPerGib,
    /// Repository bytes added / source bytes.
    SizeRatio,
    /// Requests of one kind sent to object storage.
    Requests(RequestKind),
    /// Requests of every kind sent to object storage.
    RequestsTotal,
    /// MiB of request bodies sent to object storage.
    MibUp,
    /// MiB of response bodies received from object storage.
    MibDown,
}

impl Metric {
    /// Metrics shown for `phase`.
    pub fn for_phase(phase: Phase) -> &'static [Metric] {
        use Metric::*;
        match phase {
            Phase::FirstBackup => &[
                Wall,
                Throughput,
                Cpu,
                CpuPercent,
                Rss,
                RepoMib,
                Objects,
                ObjectsPerGib,
                SizeRatio,
            ],
            Phase::NoChange | Phase::Changed => {
                &[Wall, Throughput, Cpu, CpuPercent, Rss, RepoMib, Objects]
            }
            Phase::Restore => &[Wall, Throughput, Cpu, CpuPercent, Rss],
        }
    }

    /// Rows about object-storage traffic, shown for every phase when samples carry
    /// [`Sample::traffic`].
    pub const TRAFFIC: [Metric; 8] = [
        Metric::RequestsTotal,
        Metric::Requests(RequestKind::Get),
        Metric::Requests(RequestKind::List),
        Metric::Requests(RequestKind::Head),
        Metric::Requests(RequestKind::Put),
        Metric::Requests(RequestKind::Delete),
        Metric::MibUp,
        Metric::MibDown,
    ];

    /// Row label, with whether lower or higher is better.
    pub fn label(self) -> &'static str {
        match self {
            Metric::Wall => "wall s (lower better)",
            Metric::Throughput => "MB/s of source (higher better)",
            Metric::Cpu => "CPU s, user+sys (lower better)",
            Metric::CpuPercent => "CPU % of one core",
            Metric::Rss => "peak RSS MiB (lower better)",
            Metric::RepoMib => "repo MiB added",
            Metric::Objects => "repo objects added",
            Metric::ObjectsPerGib => "objects per GiB of source",
            Metric::SizeRatio => "repo size / source size",
            Metric::RequestsTotal => "S3 requests, all kinds (lower better)",
            Metric::Requests(RequestKind::Get) => "S3 GET (objects, ranges)",
            Metric::Requests(RequestKind::List) => "S3 LIST",
            Metric::Requests(RequestKind::Head) => "S3 HEAD",
            Metric::Requests(RequestKind::Put) => "S3 PUT",
            Metric::Requests(RequestKind::Post) => "S3 POST",
            Metric::Requests(RequestKind::Delete) => "S3 DELETE",
            Metric::Requests(RequestKind::Other) => "S3 other requests",
            Metric::MibUp => "MiB uploaded (request bodies)",
            Metric::MibDown => "MiB downloaded (response bodies)",
        }
    }

    /// The metric of one sample, given the source size in bytes.
    pub fn of(self, s: &Sample, source_bytes: u64) -> f64 {
        const MIB: f64 = 1048576.0;
        match self {
            Metric::Wall => s.wall_s,
            Metric::Throughput => source_bytes as f64 / 1e6 / s.wall_s.max(1e-9),
            Metric::Cpu => s.cpu_s,
            Metric::CpuPercent => 100.0 * s.cpu_s / s.wall_s.max(1e-9),
            Metric::Rss => s.max_rss as f64 / MIB,
            Metric::RepoMib => s.repo_bytes as f64 / MIB,
            Metric::Objects => s.repo_objects as f64,
            Metric::ObjectsPerGib => {
                s.repo_objects as f64 / (source_bytes as f64 / (1u64 << 30) as f64).max(1e-12)
            }
            Metric::SizeRatio => s.repo_bytes as f64 / (source_bytes as f64).max(1.0),
            // No traffic (a local repository): NaN, which medians skip.
            Metric::RequestsTotal => s.traffic.map_or(f64::NAN, |t| t.total_requests() as f64),
            Metric::Requests(k) => s.traffic.map_or(f64::NAN, |t| t.requests(k) as f64),
            Metric::MibUp => s.traffic.map_or(f64::NAN, |t| t.bytes_up as f64 / MIB),
            Metric::MibDown => s.traffic.map_or(f64::NAN, |t| t.bytes_down as f64 / MIB),
        }
    }
}

/// Median of `values` (mean of the middle two for an even count); `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// `a / b`, or `None` when `b` is zero or either is missing.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => Some(a / b),
        _ => None,
    }
}

/// Formats a value with a precision suited to its size.
pub fn fmt_value(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 0.1 || a == 0.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// All samples of one dataset's comparison.
#[derive(Debug, Clone, Default)]
pub struct Results {
    /// Dataset name.
    pub dataset: String,
    /// Source bytes.
    pub source_bytes: u64,
    /// Source files.
    pub source_files: u64,
    /// Bytes rewritten before the "after change" backup.
    pub changed_bytes: u64,
    /// Where the repositories were, e.g. `local directory` or `S3 (s3s-fs, +20 ms per
    /// request)`; empty when not said.
    pub backend: String,
    /// Tool names in column order; the first is the one ratios are taken of.
    pub tools: Vec<String>,
    /// Free-form lines printed above the table (versions, machine, scale).
    pub notes: Vec<String>,
    samples: BTreeMap<(usize, Phase), Vec<Sample>>,
}

impl Results {
    /// Empty results for `tools` (the first one is compared with the others).
    pub fn new(dataset: &str, tools: Vec<String>) -> Results {
        Results {
            dataset: dataset.to_string(),
            tools,
            ..Results::default()
        }
    }

    /// Records a sample of `tool` (must be one of `tools`).
    pub fn add(&mut self, tool: &str, phase: Phase, sample: Sample) {
        let t = self
            .tools
            .iter()
            .position(|x| x == tool)
            .unwrap_or_else(|| panic!("unknown tool {tool}"));
        self.samples.entry((t, phase)).or_default().push(sample);
    }

    /// Samples of a tool in a phase.
    pub fn samples(&self, tool: &str, phase: Phase) -> &[Sample] {
        self.tools
            .iter()
            .position(|x| x == tool)
            .and_then(|t| self.samples.get(&(t, phase)))
            .map_or(&[], Vec::as_slice)
    }

    /// Number of runs recorded for the first tool's first backup.
    pub fn runs(&self) -> usize {
        self.tools
            .first()
            .map_or(0, |t| self.samples(t, Phase::FirstBackup).len())
    }

    /// Whether any sample carries object-storage traffic (the S3 rows are shown).
    pub fn has_traffic(&self) -> bool {
        self.samples.values().flatten().any(|s| s.traffic.is_some())
    }

    /// The rows shown for `phase`: [`Metric::for_phase`], then [`Metric::TRAFFIC`] when
    /// there is traffic.
    pub fn metrics(&self, phase: Phase) -> Vec<Metric> {
        let mut m = Metric::for_phase(phase).to_vec();
        if self.has_traffic() {
            m.extend(Metric::TRAFFIC);
        }
        m
    }

    /// Median of a metric over a tool's samples in a phase.
    pub fn median(&self, tool: &str, phase: Phase, metric: Metric) -> Option<f64> {
        let v: Vec<f64> = self
            .samples(tool, phase)
            .iter()
            .map(|s| metric.of(s, self.source_bytes))
            .collect();
        median(&v)
    }

    /// The Markdown report: notes, then one row per (phase, metric) with each tool's median and
    /// the ratio of the first tool to each other tool.
    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        let on = if self.backend.is_empty() {
            String::new()
        } else {
            format!(" on {}", self.backend)
        };
        let _ = writeln!(
            out,
            "## {}{on}: {} files, {:.1} MiB; {:.1} MiB changed before the third backup; medians of {} run(s)\n",
            self.dataset,
            self.source_files,
            self.source_bytes as f64 / 1048576.0,
            self.changed_bytes as f64 / 1048576.0,
            self.runs()
        );
        for n in &self.notes {
            let _ = writeln!(out, "- {n}");
        }
        if !self.notes.is_empty() {
            out.push('\n');
        }
        let Some((first, others)) = self.tools.split_first() else {
            return out;
        };
        out.push_str("| phase | metric |");
        for t in &self.tools {
            let _ = write!(out, " {t} |");
        }
        for o in others {
            let _ = write!(out, " {first}/{o} |");
        }
        out.push_str("\n|---|---|");
        for _ in 0..self.tools.len() + others.len() {
            out.push_str("---:|");
        }
        out.push('\n');
        for phase in Phase::ALL {
            for metric in self.metrics(phase) {
                let _ = write!(out, "| {} | {} |", phase.label(), metric.label());
                for t in &self.tools {
                    let v = self.median(t, phase, metric);
                    let _ = write!(out, " {} |", v.map_or("–".into(), fmt_value));
                }
                let mine = self.median(first, phase, metric);
                for o in others {
                    let r = ratio(mine, self.median(o, phase, metric));
                    let _ = write!(out, " {} |", r.map_or("–".into(), |r| format!("{r:.2}×")));
                }
                out.push('\n');
            }
        }
        out
    }

    /// Every sample as JSON, for later analysis.
    pub fn to_json(&self) -> serde_json::Value {
        let mut tools = serde_json::Map::new();
        for t in &self.tools {
            let mut phases = serde_json::Map::new();
            for phase in Phase::ALL {
                let runs: Vec<_> = self
                    .samples(t, phase)
                    .iter()
                    .map(|s| {
                        let mut v = serde_json::json!({
                            "wall_s": s.wall_s,
                            "cpu_s": s.cpu_s,
                            "max_rss": s.max_rss,
                            "repo_bytes": s.repo_bytes,
                            "repo_objects": s.repo_objects,
                        });
                        if let Some(t) = s.traffic {
                            let requests: serde_json::Map<_, _> = RequestKind::ALL
                                .iter()
                                .map(|k| (k.label().to_string(), t.requests(*k).into()))
                                .collect();
                            v["requests"] = requests.into();
                            v["bytes_up"] = t.bytes_up.into();
                            v["bytes_down"] = t.bytes_down.into();
                        }
                        v
                    })
                    .collect();
                phases.insert(phase.short().to_string(), runs.into());
            }
            tools.insert(t.clone(), phases.into());
        }
        serde_json::json!({
            "dataset": self.dataset,
            "backend": self.backend,
            "source_bytes": self.source_bytes,
            "source_files": self.source_files,
            "changed_bytes": self.changed_bytes,
            "notes": self.notes,
            "tools": tools,
        })
    }
}

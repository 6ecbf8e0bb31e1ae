//! `forget`: remove snapshots a retention policy does not keep.
//!
//! Snapshots are grouped into series (by host, paths and tags unless told otherwise) and
//! the policy (see `podvault_proto::retention`) is applied to each series separately. Only
//! snapshot objects are deleted; the data they referenced stays until `prune` reclaims it.

use std::collections::BTreeMap;

use podvault_proto::retention::{Reason, RetentionPolicy};
use podvault_proto::snapshot::Snapshot;
use podvault_proto::SnapshotId;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::repository::{object_path, Repository};

/// Retention rules and scope.
#[derive(Debug, Clone, clap::Args)]
pub struct ForgetOptions {
    /// Keep the N newest snapshots.
    #[arg(long, default_value_t = 0)]
    pub keep_last: u32,
    /// Keep the newest snapshot of each of the last N hours.
    #[arg(long, default_value_t = 0)]
    pub keep_hourly: u32,
    /// Keep the newest snapshot of each of the last N days.
    #[arg(long, default_value_t = 0)]
    pub keep_daily: u32,
    /// Keep the newest snapshot of each of the last N weeks.
    #[arg(long, default_value_t = 0)]
    pub keep_weekly: u32,
    /// Keep the newest snapshot of each of the last N months.
    #[arg(long, default_value_t = 0)]
    pub keep_monthly: u32,
    /// Keep the newest snapshot of each of the last N years.
    #[arg(long, default_value_t = 0)]
    pub keep_yearly: u32,
    /// Keep every snapshot with this tag; repeatable.
    #[arg(long = "keep-tag", value_name = "TAG")]
    pub keep_tags: Vec<String>,
    /// Only consider snapshots carrying all of these tags; repeatable.
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Only consider snapshots whose agent-recorded identity is this series
    /// (`<namespace>/pvc/<claim>` or `<namespace>/pod/<pod>/<volume>`); tags never match it.
    #[arg(long, value_name = "SERIES")]
    pub series: Option<String>,
    /// Series grouping: a comma list of `host`, `paths`, `tags` (empty for one series).
    #[arg(long, default_value = DEFAULT_GROUP_BY)]
    pub group_by: String,
    /// Only print what would be removed.
    #[arg(long)]
    pub dry_run: bool,
}

/// Grouping of `forget` unless told otherwise, for the CLI and library callers alike: a
/// policy keeps its snapshots per host, paths and tags, never across the whole repository.
pub const DEFAULT_GROUP_BY: &str = "host,paths,tags";

impl Default for ForgetOptions {
    /// Keeps everything (no rule set), grouped by [`DEFAULT_GROUP_BY`]: the same defaults as
    /// `podvault forget` with no options.
    fn default() -> Self {
        ForgetOptions {
            keep_last: 0,
            keep_hourly: 0,
            keep_daily: 0,
            keep_weekly: 0,
            keep_monthly: 0,
            keep_yearly: 0,
            keep_tags: Vec::new(),
            tags: Vec::new(),
            series: None,
            group_by: DEFAULT_GROUP_BY.to_string(),
            dry_run: false,
        }
    }
}

impl ForgetOptions {
    /// The retention policy these options describe.
    pub fn policy(&self) -> RetentionPolicy {
        RetentionPolicy {
            last: self.keep_last,
            hourly: self.keep_hourly,
            daily: self.keep_daily,
            weekly: self.keep_weekly,
            monthly: self.keep_monthly,
            yearly: self.keep_yearly,
            tags: self.keep_tags.clone(),
        }
    }
}

/// The decisions for one series.
#[derive(Debug, Clone, Serialize)]
pub struct SeriesDecision {
    /// Series key (`host=…, paths=…, tags=…`).
    pub series: String,
    /// Kept snapshots with the rules keeping them, newest first.
    pub keep: Vec<(SnapshotId, Vec<Reason>)>,
    /// Removed (or, in a dry run, to-be-removed) snapshots.
    pub remove: Vec<SnapshotId>,
}

/// Applies the policy; deletes unless `dry_run`. Returns the decisions per series.
pub fn forget(repo: &Repository, opts: &ForgetOptions) -> Result<Vec<SeriesDecision>> {
    let policy = opts.policy();
    if policy.is_empty() {
        return Err(Error::InvalidInput(
            "no retention rule given (e.g. --keep-daily 7); refusing to remove every snapshot"
                .into(),
        ));
    }
    let fields: Vec<&str> = opts
        .group_by
        .split(',')
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .collect();
    if let Some(bad) = fields
        .iter()
        .find(|f| !matches!(**f, "host" | "paths" | "tags"))
    {
        return Err(Error::InvalidInput(format!(
            "--group-by: unknown field {bad:?} (use host, paths, tags)"
        )));
    }
    let mut series: BTreeMap<String, Vec<(SnapshotId, Snapshot)>> = BTreeMap::new();
    for (id, s) in repo.snapshots()? {
        let in_series = opts.series.as_deref().is_none_or(|k| s.series() == Some(k));
        if in_series && opts.tags.iter().all(|t| s.has_tag(t)) {
            series
                .entry(series_key(&s, &fields))
                .or_default()
                .push((id, s));
        }
    }
    let mut out = Vec::new();
    for (key, snaps) in series {
        let decisions = policy.apply(snaps.iter().map(|(_, s)| (s.time(), s.tags.as_slice())));
        let mut d = SeriesDecision {
            series: key,
            keep: Vec::new(),
            remove: Vec::new(),
        };
        for ((id, _), dec) in snaps.iter().zip(decisions).rev() {
            if dec.keep {
                d.keep.push((*id, dec.reasons));
            } else {
                d.remove.push(*id);
            }
        }
        if !opts.dry_run {
            for id in &d.remove {
                repo.backend().delete(&object_path::<Snapshot>(id))?;
            }
        }
        out.push(d);
    }
    Ok(out)
}

/// The series a snapshot belongs to under `fields`.
pub fn series_key(s: &Snapshot, fields: &[&str]) -> String {
    fields
        .iter()
        .map(|f| match *f {
            "host" => format!("host={}", s.hostname),
            "paths" => format!("paths=[{}]", s.paths.join(",")),
            _ => format!("tags=[{}]", s.tags.join(",")),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod defaults {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        forget: ForgetOptions,
    }

    #[test]
    fn library_and_cli_defaults_agree_and_never_group_the_whole_repository() {
        let cli = Cli::parse_from(["forget"]).forget;
        let lib = ForgetOptions::default();
        assert_eq!(format!("{cli:?}"), format!("{lib:?}"));
        assert_eq!(lib.group_by, "host,paths,tags");
    }
}

//! Retention policies: which snapshots of a series to keep.
//!
//! The policy has restic's semantics: snapshots are visited newest first; `last` keeps the N
//! newest; each time bucket (hourly … yearly) keeps the newest snapshot of each of the N most
//! recent buckets that contain one; `tags` keeps every snapshot carrying one of the tags. A
//! snapshot kept for any reason is kept. Buckets are computed in UTC so every node agrees.
//! Evaluation is a pure function so the CLI, the agent and the controller share it.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::{Deserialize, Serialize};

/// How many snapshots to keep per rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionPolicy {
    /// Keep the N most recent snapshots.
    pub last: u32,
    /// Keep the newest snapshot of each of the last N hours that have one.
    pub hourly: u32,
    /// Same, per day.
    pub daily: u32,
    /// Same, per ISO week.
    pub weekly: u32,
    /// Same, per month.
    pub monthly: u32,
    /// Same, per year.
    pub yearly: u32,
    /// Keep every snapshot carrying any of these tags.
    pub tags: Vec<String>,
}

/// A malformed retention specification.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid retention {spec:?}: {reason}")]
pub struct ParseRetentionError {
    /// The text given.
    pub spec: String,
    /// What is wrong with it.
    pub reason: String,
}

impl RetentionPolicy {
    /// True when no rule is set (such a policy would remove everything, so callers refuse it).
    pub fn is_empty(&self) -> bool {
        *self == RetentionPolicy::default()
    }

    /// Decides, for snapshots given as `(time, tags)`, which to keep. Returns one decision
    /// per input, in input order.
    pub fn apply<'a, I>(&self, snapshots: I) -> Vec<Decision>
    where
        I: IntoIterator<Item = (DateTime<Utc>, &'a [String])>,
    {
        let items: Vec<_> = snapshots.into_iter().collect();
        let mut order: Vec<usize> = (0..items.len()).collect();
        // Newest first; ties broken by input position for determinism.
        order.sort_by(|&a, &b| items[b].0.cmp(&items[a].0).then(a.cmp(&b)));

        let bucket_fns: [(Reason, BucketFn, u32); 5] = [
            (
                Reason::Hourly,
                |t| bucket_day(t) * 24 + t.hour() as i64,
                self.hourly,
            ),
            (Reason::Daily, bucket_day, self.daily),
            (
                Reason::Weekly,
                |t| {
                    let w = t.iso_week();
                    w.year() as i64 * 100 + w.week() as i64
                },
                self.weekly,
            ),
            (
                Reason::Monthly,
                |t| t.year() as i64 * 12 + t.month0() as i64,
                self.monthly,
            ),
            (Reason::Yearly, |t| t.year() as i64, self.yearly),
        ];
        let mut remaining: Vec<u32> = bucket_fns.iter().map(|b| b.2).collect();
        let mut last_bucket: Vec<Option<i64>> = vec![None; bucket_fns.len()];
        let mut last_left = self.last;

        let mut decisions = vec![Decision::default(); items.len()];
        for i in order {
            let (time, tags) = &items[i];
            let d = &mut decisions[i];
            if last_left > 0 {
                last_left -= 1;
                d.reasons.push(Reason::Last);
            }
            for (k, (reason, bucket, _)) in bucket_fns.iter().enumerate() {
                let value = bucket(time);
                if remaining[k] > 0 && last_bucket[k] != Some(value) {
                    remaining[k] -= 1;
                    last_bucket[k] = Some(value);
                    d.reasons.push(*reason);
                }
            }
            if tags.iter().any(|t| self.tags.contains(t)) {
                d.reasons.push(Reason::Tag);
            }
            d.keep = !d.reasons.is_empty();
        }
        decisions
    }
}

/// Maps a time to its bucket number for one rule.
type BucketFn = fn(&DateTime<Utc>) -> i64;

fn bucket_day(t: &DateTime<Utc>) -> i64 {
    t.date_naive().num_days_from_ce() as i64
}

/// Why a snapshot is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reason {
    /// Among the `last` newest.
    Last,
    /// Newest of its hour.
    Hourly,
    /// Newest of its day.
    Daily,
    /// Newest of its ISO week.
    Weekly,
    /// Newest of its month.
    Monthly,
    /// Newest of its year.
    Yearly,
    /// Carries a kept tag.
    Tag,
}

/// The verdict for one snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Whether to keep it.
    pub keep: bool,
    /// Every rule that keeps it.
    pub reasons: Vec<Reason>,
}

impl FromStr for RetentionPolicy {
    type Err = ParseRetentionError;

    /// Parses the annotation form `last=3,hourly=24,daily=7,weekly=4,monthly=6,yearly=1,tag=x`.
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let err = |reason: String| ParseRetentionError {
            spec: spec.to_owned(),
            reason,
        };
        let mut p = RetentionPolicy::default();
        for part in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| err(format!("{part:?} is not key=value")))?;
            let (k, v) = (k.trim(), v.trim());
            if k == "tag" {
                p.tags.push(v.to_owned());
                continue;
            }
            let n: u32 = v
                .parse()
                .map_err(|_| err(format!("{v:?} is not a count for {k}")))?;
            let slot = match k {
                "last" => &mut p.last,
                "hourly" => &mut p.hourly,
                "daily" => &mut p.daily,
                "weekly" => &mut p.weekly,
                "monthly" => &mut p.monthly,
                "yearly" => &mut p.yearly,
                other => return Err(err(format!("unknown rule {other:?}"))),
            };
            *slot = n;
        }
        if p.is_empty() {
            return Err(err("no rule given".into()));
        }
        Ok(p)
    }
}

impl fmt::Display for RetentionPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        for (k, v) in [
            ("last", self.last),
            ("hourly", self.hourly),
            ("daily", self.daily),
            ("weekly", self.weekly),
            ("monthly", self.monthly),
            ("yearly", self.yearly),
        ] {
            if v > 0 {
                parts.push(format!("{k}={v}"));
            }
        }
        parts.extend(self.tags.iter().map(|t| format!("tag={t}")));
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};

    /// A seeded pseudo-random timeline: one snapshot every 1–11 hours for about a year.
    fn timeline(seed: u64, n: usize) -> Vec<DateTime<Utc>> {
        let mut t = Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap();
        let mut x = seed;
        (0..n)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                t += Duration::minutes(60 + (x >> 33) as i64 % 600);
                t
            })
            .collect()
    }

    fn kept(policy: &RetentionPolicy, times: &[DateTime<Utc>]) -> Vec<usize> {
        let empty: Vec<String> = Vec::new();
        policy
            .apply(times.iter().map(|t| (*t, empty.as_slice())))
            .iter()
            .enumerate()
            .filter(|(_, d)| d.keep)
            .map(|(i, _)| i)
            .collect()
    }

    #[test]
    fn parse_and_display() {
        let p: RetentionPolicy = "last=3,hourly=24,daily=7,weekly=4,monthly=6,yearly=1"
            .parse()
            .unwrap();
        assert_eq!((p.last, p.hourly, p.yearly), (3, 24, 1));
        assert_eq!(
            p.to_string(),
            "last=3,hourly=24,daily=7,weekly=4,monthly=6,yearly=1"
        );
        assert!("".parse::<RetentionPolicy>().is_err());
        assert!("daily=x".parse::<RetentionPolicy>().is_err());
        assert!("fortnightly=2".parse::<RetentionPolicy>().is_err());
        assert!("daily".parse::<RetentionPolicy>().is_err());
    }

    #[test]
    fn last_keeps_exactly_the_newest() {
        let times = timeline(1, 50);
        let p = RetentionPolicy {
            last: 5,
            ..Default::default()
        };
        assert_eq!(kept(&p, &times), (45..50).collect::<Vec<_>>());
    }

    #[test]
    fn daily_keeps_newest_per_day_for_n_days() {
        for seed in 0..20 {
            let times = timeline(seed, 400);
            let p = RetentionPolicy {
                daily: 7,
                ..Default::default()
            };
            let k = kept(&p, &times);
            assert_eq!(k.len(), 7, "seed {seed}");
            // Each kept snapshot is the newest of its day, and the days are the 7 newest days.
            let mut days: Vec<_> = times.iter().map(|t| t.date_naive()).collect();
            days.dedup();
            let newest_days = &days[days.len() - 7..];
            for &i in &k {
                let d = times[i].date_naive();
                assert!(newest_days.contains(&d), "seed {seed}");
                assert!(times.get(i + 1).is_none_or(|n| n.date_naive() != d));
            }
        }
    }

    #[test]
    fn combined_rules_are_a_union_and_input_order_does_not_matter() {
        for seed in 0..10 {
            let times = timeline(seed, 300);
            let p: RetentionPolicy = "last=3,daily=5,weekly=4,monthly=3".parse().unwrap();
            let mut expected: Vec<usize> = Vec::new();
            for single in ["last=3", "daily=5", "weekly=4", "monthly=3"] {
                expected.extend(kept(&single.parse().unwrap(), &times));
            }
            expected.sort();
            expected.dedup();
            assert_eq!(kept(&p, &times), expected, "seed {seed}");

            let mut shuffled: Vec<usize> = (0..times.len()).collect();
            shuffled.reverse();
            let shuffled_times: Vec<_> = shuffled.iter().map(|&i| times[i]).collect();
            let mut back: Vec<usize> = kept(&p, &shuffled_times)
                .into_iter()
                .map(|i| shuffled[i])
                .collect();
            back.sort();
            assert_eq!(back, expected);
        }
    }

    #[test]
    fn tags_keep_regardless_of_age() {
        let times = timeline(3, 10);
        let tags: Vec<Vec<String>> = (0..10)
            .map(|i| if i == 0 { vec!["keep".into()] } else { vec![] })
            .collect();
        let p = RetentionPolicy {
            last: 1,
            tags: vec!["keep".into()],
            ..Default::default()
        };
        let d = p.apply(times.iter().zip(&tags).map(|(t, g)| (*t, g.as_slice())));
        assert!(d[0].keep && d[0].reasons == vec![Reason::Tag]);
        assert!(d[9].keep);
        assert_eq!(d.iter().filter(|d| d.keep).count(), 2);
    }
}

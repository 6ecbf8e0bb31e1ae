//! Leader election with a `coordination.k8s.io/v1` Lease.
//!
//! Only the replica holding the Lease schedules backups and sweeps history. The holder renews
//! every third of the lease duration; another replica takes over only after the holder has
//! missed renewals for a whole lease duration. Every write carries the `resourceVersion` it was
//! based on, so of two replicas racing for an expired lease exactly one wins (the other gets a
//! Conflict). A replica that fails to renew stops acting: the binary exits and is restarted as
//! a follower. Even if two replicas did act at once, deterministic PodVolumeBackup names make
//! the duplicate creates no-ops; the lease only saves the work.

use chrono::{DateTime, Duration, Utc};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};

use crate::plan::MANAGER;

/// What a replica should do with the Lease it just read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseDecision {
    /// It holds the lease: renew it.
    Renew,
    /// Nobody holds it, or the holder's lease has expired: take it.
    Acquire,
    /// Someone else holds a live lease.
    Wait,
}

fn to_chrono(t: &MicroTime) -> Option<DateTime<Utc>> {
    DateTime::<Utc>::from_timestamp(t.0.as_second(), t.0.subsec_nanosecond() as u32)
}

fn to_micro(t: DateTime<Utc>) -> MicroTime {
    MicroTime(Timestamp::new(t.timestamp(), t.timestamp_subsec_nanos() as i32).unwrap_or_default())
}

/// Decides from the Lease's spec (None: no Lease yet) what `me` should do at `now`.
pub fn decide(spec: Option<&LeaseSpec>, me: &str, now: DateTime<Utc>) -> LeaseDecision {
    let Some(spec) = spec else {
        return LeaseDecision::Acquire;
    };
    match spec.holder_identity.as_deref() {
        None | Some("") => LeaseDecision::Acquire,
        Some(holder) if holder == me => LeaseDecision::Renew,
        Some(_) => {
            let duration = Duration::seconds(i64::from(spec.lease_duration_seconds.unwrap_or(15)));
            let renewed = spec
                .renew_time
                .as_ref()
                .or(spec.acquire_time.as_ref())
                .and_then(to_chrono);
            match renewed {
                Some(at) if at + duration > now => LeaseDecision::Wait,
                _ => LeaseDecision::Acquire,
            }
        }
    }
}

/// The spec to write after deciding to acquire or renew.
pub fn next_spec(
    old: Option<&LeaseSpec>,
    me: &str,
    now: DateTime<Utc>,
    duration: Duration,
) -> LeaseSpec {
    let renewing = old.and_then(|s| s.holder_identity.as_deref()) == Some(me);
    let transitions = old.and_then(|s| s.lease_transitions).unwrap_or(0);
    LeaseSpec {
        holder_identity: Some(me.to_string()),
        lease_duration_seconds: Some(duration.num_seconds() as i32),
        acquire_time: if renewing {
            old.and_then(|s| s.acquire_time.clone())
                .or_else(|| Some(to_micro(now)))
        } else {
            Some(to_micro(now))
        },
        renew_time: Some(to_micro(now)),
        lease_transitions: Some(if renewing || old.is_none() {
            transitions
        } else {
            transitions + 1
        }),
        ..Default::default()
    }
}

/// One round: reads the Lease and acquires or renews it when allowed. Returns whether `me`
/// holds the lease afterwards.
pub async fn try_acquire_or_renew(
    api: &Api<Lease>,
    name: &str,
    me: &str,
    now: DateTime<Utc>,
    duration: Duration,
) -> Result<bool, kube::Error> {
    let pp = PostParams {
        field_manager: Some(MANAGER.to_string()),
        ..Default::default()
    };
    match api.get_opt(name).await? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.to_string()),
                    ..Default::default()
                },
                spec: Some(next_spec(None, me, now, duration)),
            };
            match api.create(&pp, &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.is_already_exists() || s.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
        Some(mut lease) => match decide(lease.spec.as_ref(), me, now) {
            LeaseDecision::Wait => Ok(false),
            LeaseDecision::Acquire | LeaseDecision::Renew => {
                lease.spec = Some(next_spec(lease.spec.as_ref(), me, now, duration));
                // `lease.metadata.resource_version` is the precondition.
                match api.replace(name, &pp, &lease).await {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(s)) if s.is_conflict() => Ok(false),
                    Err(e) => Err(e),
                }
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn held_by(holder: &str, renewed: &str) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(to_micro(t(renewed))),
            acquire_time: Some(to_micro(t("2025-01-01T00:00:00Z"))),
            lease_transitions: Some(3),
            ..Default::default()
        }
    }

    #[test]
    fn decisions() {
        let now = t("2025-01-01T12:00:00Z");
        assert_eq!(decide(None, "a", now), LeaseDecision::Acquire);
        assert_eq!(
            decide(Some(&LeaseSpec::default()), "a", now),
            LeaseDecision::Acquire
        );
        let live = held_by("b", "2025-01-01T11:59:50Z");
        assert_eq!(decide(Some(&live), "a", now), LeaseDecision::Wait);
        assert_eq!(decide(Some(&live), "b", now), LeaseDecision::Renew);
        let expired = held_by("b", "2025-01-01T11:59:44Z");
        assert_eq!(decide(Some(&expired), "a", now), LeaseDecision::Acquire);
        // Exactly at expiry the lease is free.
        let edge = held_by("b", "2025-01-01T11:59:45Z");
        assert_eq!(decide(Some(&edge), "a", now), LeaseDecision::Acquire);
    }

    #[test]
    fn next_spec_counts_transitions_and_keeps_acquire_time_on_renew() {
        let now = t("2025-01-01T12:00:00Z");
        let old = held_by("b", "2025-01-01T11:00:00Z");
        let taken = next_spec(Some(&old), "a", now, Duration::seconds(15));
        assert_eq!(taken.holder_identity.as_deref(), Some("a"));
        assert_eq!(taken.lease_transitions, Some(4));
        assert_eq!(taken.acquire_time, Some(to_micro(now)));
        let renewed = next_spec(Some(&old), "b", now, Duration::seconds(15));
        assert_eq!(renewed.lease_transitions, Some(3));
        assert_eq!(renewed.acquire_time, old.acquire_time);
        assert_eq!(renewed.renew_time, Some(to_micro(now)));
        let first = next_spec(None, "a", now, Duration::seconds(15));
        assert_eq!(first.lease_transitions, Some(0));
    }
}

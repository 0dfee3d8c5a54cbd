//! Leader election on a `coordination.k8s.io/v1` Lease: only the holder runs the controllers.
//!
//! The decision is pure ([`decide`]); the I/O around it takes the Lease with an optimistic
//! `replace` (a conflict means another replica won the race), renews it at a third of its
//! duration, and reports the loss when a renewal has not succeeded for a whole duration. A
//! replica that loses leadership exits: its successor rebuilds the IPAM state from the API,
//! which is the only state that matters.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use tracing::{info, warn};

/// What to do with the Lease as it is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Ours already: renew.
    Renew,
    /// Free or expired: take it.
    Take,
    /// Another replica holds it; look again after this long.
    Wait(Duration),
}

/// Decides from the Lease's spec (`None`: there is no Lease yet).
pub fn decide(spec: Option<&LeaseSpec>, me: &str, now: Timestamp) -> Decision {
    let Some(spec) = spec else {
        return Decision::Take;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or("");
    if holder == me {
        return Decision::Renew;
    }
    if holder.is_empty() {
        return Decision::Take;
    }
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(15)));
    let Some(renewed) = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) else {
        return Decision::Take;
    };
    let expires = renewed.0.checked_add(duration).unwrap_or(renewed.0);
    if expires <= now {
        Decision::Take
    } else {
        let left = now.duration_until(expires).unsigned_abs();
        Decision::Wait(left.min(Duration::from_secs(5)))
    }
}

/// A Lease held by this replica.
pub struct Leadership {
    api: Api<Lease>,
    name: String,
    me: String,
    duration: Duration,
}

fn spec_for(
    me: &str,
    duration: Duration,
    previous: Option<&LeaseSpec>,
    now: Timestamp,
) -> LeaseSpec {
    let taking = previous.and_then(|s| s.holder_identity.as_deref()) != Some(me);
    LeaseSpec {
        holder_identity: Some(me.to_owned()),
        lease_duration_seconds: i32::try_from(duration.as_secs()).ok(),
        acquire_time: if taking {
            Some(MicroTime(now))
        } else {
            previous.and_then(|s| s.acquire_time.clone())
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(
            previous
                .and_then(|s| s.lease_transitions)
                .unwrap_or(0)
                .saturating_add(i32::from(taking && previous.is_some())),
        ),
        ..Default::default()
    }
}

impl Leadership {
    /// Waits until this replica holds Lease `name` in `api`'s namespace.
    pub async fn acquire(api: Api<Lease>, name: &str, me: &str, duration: Duration) -> Self {
        let mut logged = false;
        loop {
            match Self::try_once(&api, name, me, duration).await {
                Ok(Decision::Take | Decision::Renew) => {
                    info!(
                        lease = name,
                        "leader: this replica now runs the controllers"
                    );
                    return Leadership {
                        api,
                        name: name.to_owned(),
                        me: me.to_owned(),
                        duration,
                    };
                }
                Ok(Decision::Wait(d)) => {
                    if !logged {
                        info!(lease = name, "standing by: another replica leads");
                        logged = true;
                    }
                    tokio::time::sleep(d).await;
                }
                Err(e) => {
                    warn!(lease = name, %e, "Lease not taken; retrying");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        }
    }

    /// One look at the Lease; takes or renews it when [`decide`] says so.
    async fn try_once(
        api: &Api<Lease>,
        name: &str,
        me: &str,
        duration: Duration,
    ) -> Result<Decision, kube::Error> {
        let now = Timestamp::now();
        let current = api.get_opt(name).await?;
        let decision = decide(current.as_ref().and_then(|l| l.spec.as_ref()), me, now);
        match (&decision, current) {
            (Decision::Wait(_), _) => {}
            (_, None) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(name.to_owned()),
                        ..Default::default()
                    },
                    spec: Some(spec_for(me, duration, None, now)),
                };
                api.create(&PostParams::default(), &lease).await?;
            }
            (_, Some(mut lease)) => {
                // The resourceVersion we read makes this a compare-and-swap.
                lease.spec = Some(spec_for(me, duration, lease.spec.as_ref(), now));
                api.replace(name, &PostParams::default(), &lease).await?;
            }
        }
        Ok(decision)
    }

    /// Renews until a renewal has failed for a whole Lease duration or another replica took
    /// the Lease; then returns, and the caller must stop writing.
    pub async fn hold(self) -> String {
        let mut last_ok = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.duration / 3).await;
            match Self::try_once(&self.api, &self.name, &self.me, self.duration).await {
                Ok(Decision::Renew | Decision::Take) => last_ok = tokio::time::Instant::now(),
                Ok(Decision::Wait(_)) => {
                    return format!("Lease {} was taken by another replica", self.name);
                }
                Err(e) => {
                    warn!(lease = %self.name, %e, "Lease renewal failed");
                    if last_ok.elapsed() >= self.duration {
                        return format!(
                            "Lease {} not renewed for {:?}: {e}",
                            self.name, self.duration
                        );
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    fn held(by: &str, renewed: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(by.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(at(renewed))),
            ..Default::default()
        }
    }

    #[test]
    fn a_missing_free_or_expired_lease_is_taken() {
        assert_eq!(decide(None, "a", at(100)), Decision::Take);
        assert_eq!(
            decide(Some(&LeaseSpec::default()), "a", at(100)),
            Decision::Take
        );
        assert_eq!(decide(Some(&held("b", 80)), "a", at(100)), Decision::Take);
    }

    #[test]
    fn a_live_lease_of_another_is_waited_for_and_ours_is_renewed() {
        assert_eq!(
            decide(Some(&held("b", 95)), "a", at(100)),
            Decision::Wait(Duration::from_secs(5))
        );
        assert_eq!(
            decide(Some(&held("b", 86)), "a", at(100)),
            Decision::Wait(Duration::from_secs(1))
        );
        assert_eq!(decide(Some(&held("a", 10)), "a", at(100)), Decision::Renew);
    }

    #[test]
    fn taking_over_counts_a_transition_and_renewing_does_not() {
        let prev = held("b", 80);
        let taken = spec_for("a", Duration::from_secs(15), Some(&prev), at(100));
        assert_eq!(taken.lease_transitions, Some(1));
        assert_eq!(taken.acquire_time, Some(MicroTime(at(100))));
        let renewed = spec_for("a", Duration::from_secs(15), Some(&taken), at(105));
        assert_eq!(renewed.lease_transitions, Some(1));
        assert_eq!(renewed.acquire_time, Some(MicroTime(at(100))));
        assert_eq!(renewed.renew_time, Some(MicroTime(at(105))));
    }
}

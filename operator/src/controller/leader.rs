//! Leader election on a `coordination.k8s.io/v1` Lease: only the holder runs the controllers.
//!
//! The decision is pure ([`decide`]); the I/O around it takes the Lease with an optimistic
//! `replace` (a conflict means another replica won the race), renews it every fifth of its
//! duration with every call bounded in time, and reports the loss when no renewal has
//! succeeded for the renew deadline (two thirds of the duration, so the leader stops before a
//! standby may take over). Expiry is judged on the standby's own clock. On SIGTERM the
//! leader releases the Lease so a standby takes over at once. A replica that loses
//! leadership exits: its successor rebuilds the IPAM state from the API, which is the only
//! state that matters.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
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

/// Decides from the Lease's spec (`None`: there is no Lease yet). `unchanged_for` is how long
/// this replica has seen the Lease's record (holder, renew time) stay the same, on its own
/// monotonic clock: another holder's lease counts as expired only after a whole duration
/// without a renewal *seen here*, so a holder whose clock runs ahead cannot keep it, and one
/// whose clock runs behind cannot lose it early (client-go's rule).
pub fn decide(spec: Option<&LeaseSpec>, me: &str, unchanged_for: Duration) -> Decision {
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
    let duration =
        Duration::from_secs(u64::try_from(spec.lease_duration_seconds.unwrap_or(15)).unwrap_or(15));
    if unchanged_for >= duration {
        Decision::Take
    } else {
        Decision::Wait((duration - unchanged_for).min(Duration::from_secs(1)))
    }
}

/// The part of a Lease whose change shows its holder is alive.
fn record(spec: Option<&LeaseSpec>) -> Option<(Option<String>, Option<MicroTime>)> {
    spec.map(|s| (s.holder_identity.clone(), s.renew_time.clone()))
}

/// This replica's identity: the Pod name when given, else the host name with this process's
/// id and start time, so two replicas never share one (two replicas both called
/// `berth-operator` would both renew "their" Lease and both lead).
pub fn identity(pod_name: Option<&str>) -> String {
    if let Some(p) = pod_name.map(str::trim).filter(|p| !p.is_empty()) {
        return p.to_owned();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "berth-operator".to_owned());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{host}-{}-{nanos:08x}", std::process::id())
}

/// A Lease held by this replica.
pub struct Leadership {
    api: Api<Lease>,
    name: String,
    me: String,
    duration: Duration,
}

/// What a replica last saw of the Lease, and since when (its own clock).
struct Observed {
    record: Option<(Option<String>, Option<MicroTime>)>,
    since: tokio::time::Instant,
}

impl Observed {
    fn new() -> Self {
        Observed {
            record: None,
            since: tokio::time::Instant::now(),
        }
    }

    /// Notes the record just read; returns how long it has been unchanged.
    fn see(&mut self, spec: Option<&LeaseSpec>) -> Duration {
        let r = record(spec);
        if r != self.record {
            self.record = r;
            self.since = tokio::time::Instant::now();
        }
        self.since.elapsed()
    }
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

/// How long one Lease call may take: well inside the renew deadline.
fn call_timeout(duration: Duration) -> Duration {
    (duration / 5).max(Duration::from_millis(500))
}

/// The leader stops leading when it has not renewed for this long: before the Lease can
/// expire for a standby (a whole duration), so there is never a moment with two leaders.
pub fn renew_deadline(duration: Duration) -> Duration {
    duration * 2 / 3
}

/// Lease renewals running on their own thread ([`Leadership::hold_apart`]).
pub struct Renewals {
    /// Resolves with why leadership ended (an error: the renewal thread stopped).
    pub lost: tokio::sync::oneshot::Receiver<String>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    stopped: tokio::sync::oneshot::Receiver<()>,
}

impl Renewals {
    /// Ends the renewals and waits (at most 1 s) for the thread to end, so no renewal runs
    /// while or after the Lease is released.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.stopped).await;
    }
}

impl Leadership {
    /// Waits until this replica holds Lease `name` in `api`'s namespace.
    pub async fn acquire(api: Api<Lease>, name: &str, me: &str, duration: Duration) -> Self {
        let mut logged = false;
        let mut observed = Observed::new();
        loop {
            match Self::try_once(&api, name, me, duration, &mut observed).await {
                Ok(Decision::Take | Decision::Renew) => {
                    info!(
                        lease = name,
                        identity = me,
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
                        info!(
                            lease = name,
                            identity = me,
                            "standing by: another replica leads"
                        );
                        logged = true;
                    }
                    tokio::time::sleep(d).await;
                }
                Err(e) => {
                    warn!(lease = name, %e, "Lease not taken; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// One look at the Lease, bounded in time; takes or renews it when [`decide`] says so.
    async fn try_once(
        api: &Api<Lease>,
        name: &str,
        me: &str,
        duration: Duration,
        observed: &mut Observed,
    ) -> Result<Decision, String> {
        let call = async {
            let current = api.get_opt(name).await?;
            let spec = current.as_ref().and_then(|l| l.spec.as_ref());
            let decision = decide(spec, me, observed.see(spec));
            let now = Timestamp::now();
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
            Ok::<_, kube::Error>(decision)
        };
        match tokio::time::timeout(call_timeout(duration), call).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err(format!(
                "no answer from the API server within {:?}",
                call_timeout(duration)
            )),
        }
    }

    /// Renews until no renewal has succeeded for the renew deadline or another replica took
    /// the Lease; then returns, and the caller must stop writing. The deadline counts from
    /// the *start* of the last successful call (the earliest the API server can have stored
    /// it), and no call or sleep runs past it, so the leader has stopped a third of a Lease
    /// duration before a standby, which waits a whole duration from when it saw that
    /// renewal, can take over.
    pub async fn hold(&self) -> String {
        self.hold_since(tokio::time::Instant::now()).await
    }

    /// [`Leadership::hold`], the last successful renewal having started at `last_ok`.
    async fn hold_since(&self, last_ok: tokio::time::Instant) -> String {
        let mut last_ok = last_ok;
        let mut observed = Observed::new();
        let deadline = renew_deadline(self.duration);
        loop {
            let until_deadline = deadline.saturating_sub(last_ok.elapsed());
            tokio::time::sleep((self.duration / 5).min(until_deadline)).await;
            let remaining = deadline.saturating_sub(last_ok.elapsed());
            if remaining.is_zero() {
                return format!(
                    "Lease {} not renewed for {deadline:?} (the renew deadline)",
                    self.name
                );
            }
            let started = tokio::time::Instant::now();
            let attempt = tokio::time::timeout(
                remaining,
                Self::try_once(
                    &self.api,
                    &self.name,
                    &self.me,
                    self.duration,
                    &mut observed,
                ),
            )
            .await
            .unwrap_or_else(|_| Err("no answer before the renew deadline".to_owned()));
            match attempt {
                Ok(Decision::Renew | Decision::Take) => last_ok = started,
                Ok(Decision::Wait(_)) => {
                    return format!("Lease {} was taken by another replica", self.name);
                }
                Err(e) => warn!(lease = %self.name, %e, "Lease renewal failed"),
            }
        }
    }

    /// [`Leadership::hold`] on a thread of its own, with its own runtime and its own API
    /// connection (from `connect`): controllers that keep every async worker busy (a rebuild
    /// of 10,000 Services) or fill the shared client's connections cannot delay a renewal
    /// past the deadline. Otherwise load would end leadership, the standby would inherit the
    /// same load and lose it too: a crash loop at scale. The renew deadline counts from now
    /// (just after [`Leadership::acquire`]), not from when the thread got its connection.
    pub fn hold_apart<F, Fut>(&self, connect: F) -> Renewals
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<Api<Lease>, String>>,
    {
        let (lost_tx, lost) = tokio::sync::oneshot::channel();
        let (stop_tx, stop) = tokio::sync::oneshot::channel::<()>();
        let (stopped_tx, stopped) = tokio::sync::oneshot::channel::<()>();
        let name = self.name.clone();
        let me = self.me.clone();
        let duration = self.duration;
        let since = tokio::time::Instant::now();
        let spawned = std::thread::Builder::new()
            .name("lease".into())
            .spawn(move || {
                // Dropped when this thread ends: Renewals::stop waits for that.
                let _stopped = stopped_tx;
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = lost_tx.send(format!("cannot start the Lease renewal thread: {e}"));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let renew = async {
                        match connect().await {
                            Ok(api) => {
                                let lead = Leadership {
                                    api,
                                    name,
                                    me,
                                    duration,
                                };
                                lead.hold_since(since).await
                            }
                            Err(e) => format!("no API connection to renew the Lease with: {e}"),
                        }
                    };
                    tokio::select! {
                        why = renew => {
                            let _ = lost_tx.send(why);
                        }
                        _ = stop => {}
                    }
                });
            });
        if let Err(e) = spawned {
            // The senders went with the closure: `lost` reads as closed, which the caller
            // treats as lost leadership.
            warn!(%e, "cannot start the Lease renewal thread");
        }
        Renewals {
            lost,
            stop: Some(stop_tx),
            stopped,
        }
    }

    /// Gives the Lease up (on SIGTERM), so a standby takes over at once instead of after
    /// the Lease's duration. Best effort, bounded in time.
    pub async fn release(&self) {
        let once = || async {
            let Some(mut lease) = self.api.get_opt(&self.name).await? else {
                return Ok(());
            };
            let ours = lease
                .spec
                .as_ref()
                .and_then(|s| s.holder_identity.as_deref())
                == Some(self.me.as_str());
            if !ours {
                return Ok(());
            }
            if let Some(spec) = lease.spec.as_mut() {
                spec.holder_identity = None;
                spec.lease_duration_seconds = Some(1);
                spec.renew_time = Some(MicroTime(Timestamp::now()));
            }
            self.api
                .replace(&self.name, &PostParams::default(), &lease)
                .await
                .map(|_| ())
        };
        // A renewal that was in flight when renewals stopped may land between the read and
        // the write: the write is then refused (409) and is tried once more on a fresh read.
        let call = async {
            match once().await {
                Err(kube::Error::Api(e)) if e.code == 409 => once().await,
                r => r,
            }
        };
        match tokio::time::timeout(Duration::from_secs(2), call).await {
            Ok(Ok(())) => info!(lease = %self.name, "Lease released for a standby"),
            Ok(Err(e)) => {
                warn!(lease = %self.name, %e, "could not release the Lease; a standby takes over when it expires")
            }
            Err(_) => {
                warn!(lease = %self.name, "releasing the Lease timed out; a standby takes over when it expires")
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

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn a_missing_or_free_lease_is_taken() {
        assert_eq!(decide(None, "a", S(0)), Decision::Take);
        assert_eq!(
            decide(Some(&LeaseSpec::default()), "a", S(0)),
            Decision::Take
        );
    }

    #[test]
    fn another_holders_lease_expires_only_after_a_duration_unchanged_here() {
        // The holder's renew time says nothing: only how long this replica saw it unchanged.
        // A holder whose clock is an hour behind is not taken over while it renews...
        assert_eq!(
            decide(Some(&held("b", -3600)), "a", S(2)),
            Decision::Wait(S(1))
        );
        // ...and one whose clock is ahead does not keep a lease it stopped renewing.
        assert_eq!(
            decide(Some(&held("b", 1 << 33)), "a", S(15)),
            Decision::Take
        );
        assert_eq!(
            decide(Some(&held("b", 95)), "a", Duration::from_millis(14_500)),
            Decision::Wait(Duration::from_millis(500))
        );
        assert_eq!(decide(Some(&held("a", 10)), "a", S(100)), Decision::Renew);
    }

    #[test]
    fn the_renew_deadline_ends_before_a_standby_may_take_over() {
        for d in [3, 5, 15, 60] {
            assert!(renew_deadline(S(d)) < S(d));
            assert!(call_timeout(S(d)) < renew_deadline(S(d)) / 2);
        }
    }

    /// An API server that takes requests and never answers (a partition): the leader gives
    /// up by the renew deadline, never later, whatever the calls do.
    #[tokio::test(start_paused = true)]
    async fn a_leader_cut_off_from_the_api_stops_by_the_renew_deadline() {
        let (svc, _handle) = tower_test::mock::pair::<
            http::Request<kube::client::Body>,
            http::Response<kube::client::Body>,
        >();
        let client = kube::Client::new(svc, "berth-system");
        let lead = Leadership {
            api: Api::namespaced(client, "berth-system"),
            name: "berth-operator".into(),
            me: "a".into(),
            duration: S(15),
        };
        let start = tokio::time::Instant::now();
        let why = lead.hold().await;
        let took = start.elapsed();
        assert!(took <= renew_deadline(S(15)), "{took:?}: {why}");
        assert!(took >= renew_deadline(S(15)) - S(1), "{took:?}: {why}");
        assert!(why.contains("renew deadline"), "{why}");
    }

    /// The controllers' runtime blocked for longer than the renew deadline (a thread held in a
    /// synchronous rebuild): the Lease is still renewed, from its own thread and connection.
    #[test]
    fn renewals_go_on_while_the_controllers_runtime_is_blocked() {
        let (svc, mut handle) = tower_test::mock::pair::<
            http::Request<kube::client::Body>,
            http::Response<kube::client::Body>,
        >();
        let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = served.clone();
        // The API server: every GET and PUT answered with a Lease this replica holds.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                while let Some((_request, send)) = handle.next_request().await {
                    count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let lease = serde_json::json!({
                        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                        "metadata": {"name": "berth-operator", "namespace": "berth-system",
                            "resourceVersion": "1"},
                        "spec": {"holderIdentity": "a", "leaseDurationSeconds": 3,
                            "renewTime": Timestamp::now().to_string()}});
                    send.send_response(
                        http::Response::builder()
                            .status(200)
                            .header("content-type", "application/json")
                            .body(kube::client::Body::from(
                                serde_json::to_vec(&lease).unwrap(),
                            ))
                            .unwrap(),
                    );
                }
            });
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (svc2, _unused) = tower_test::mock::pair::<
                http::Request<kube::client::Body>,
                http::Response<kube::client::Body>,
            >();
            let lead = Leadership {
                api: Api::namespaced(kube::Client::new(svc2, "berth-system"), "berth-system"),
                name: "berth-operator".into(),
                me: "a".into(),
                duration: S(3),
            };
            let mut held = lead.hold_apart(move || async move {
                Ok(Api::namespaced(
                    kube::Client::new(svc, "berth-system"),
                    "berth-system",
                ))
            });
            // Blocks this runtime's only thread for twice the renew deadline.
            std::thread::sleep(renew_deadline(S(3)) * 2);
            assert!(
                held.lost.try_recv().is_err(),
                "leadership ended while the controllers' runtime was blocked"
            );
            // A renewal every duration/5 = 0.6 s: a GET and a PUT each.
            let n = served.load(std::sync::atomic::Ordering::SeqCst);
            assert!(n >= 6, "only {n} Lease calls in 4 s");
            // Stopped: the thread ends, and no Lease call follows.
            held.stop().await;
            let after = served.load(std::sync::atomic::Ordering::SeqCst);
            std::thread::sleep(S(1));
            assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), after);
        });
    }

    #[test]
    fn identities_are_unique_without_a_pod_name() {
        assert_eq!(identity(Some("berth-operator-7d9f")), "berth-operator-7d9f");
        let a = identity(None);
        assert!(a.contains(&std::process::id().to_string()), "{a}");
        assert_ne!(identity(Some("  ")), "");
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
    }
}

//! The operator's Prometheus metrics (`berth_ipam_*`, `berth_reconcile_*`, `berth_speaker_*`)
//! and the `/metrics`, `/healthz`, `/readyz` endpoints.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::health::Totals;
use crate::ipam::{AllocError, Ipam};

/// Labels naming a pool.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    /// The Eip's name.
    pub pool: String,
}

/// Labels naming a controller.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    /// service, eip, bgppeer.
    pub controller: String,
}

/// Labels naming a speaker replica.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SpeakerLabels {
    /// The replica's Pod name.
    pub speaker: String,
}

/// Labels naming why a Service waits for an IP.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PendingLabels {
    /// [`crate::ipam::AllocError::reason`] or [`crate::plan::INVALID_SERVICE`].
    pub reason: String,
}

/// Every metric the operator exports.
pub struct Metrics {
    registry: Registry,
    addresses_total: Family<PoolLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    addresses_in_use: Family<PoolLabels, Gauge>,
    reconcile_duration: Family<ControllerLabels, Histogram>,
    reconcile_errors: Family<ControllerLabels, Counter>,
    endpoint_updates: Counter,
    speaker_sync_errors: Family<SpeakerLabels, Counter>,
    leader: Gauge,
    without_next_hop: Gauge,
    pending: Family<PendingLabels, Gauge>,
    layer2_ips: Gauge,
    speaker_in_sync: Family<SpeakerLabels, Gauge>,
    apply_bytes: Gauge,
    ready: AtomicBool,
}

impl Metrics {
    /// A registry with every metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let addresses_total = Family::default();
        let addresses_in_use = Family::default();
        let reconcile_duration =
            Family::<ControllerLabels, Histogram>::new_with_constructor(|| {
                Histogram::new([0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0])
            });
        let reconcile_errors = Family::default();
        let endpoint_updates = Counter::default();
        let speaker_sync_errors = Family::default();
        let leader = Gauge::default();
        let without_next_hop = Gauge::default();
        let pending = Family::<PendingLabels, Gauge>::default();
        // Every reason shows from the start (at 0), so an alert's `for:` sees one series.
        for reason in AllocError::REASONS
            .iter()
            .chain(std::iter::once(&crate::plan::INVALID_SERVICE))
        {
            pending
                .get_or_create(&PendingLabels {
                    reason: (*reason).to_owned(),
                })
                .set(0);
        }
        let layer2_ips = Gauge::default();
        let speaker_in_sync = Family::default();
        let apply_bytes = Gauge::default();
        registry.register(
            "berth_speaker_apply_bytes",
            "Encoded size of the last full desired state built for a bgp-server replica (the control API takes at most 64 MiB)",
            apply_bytes.clone(),
        );
        registry.register(
            "berth_services_pending",
            "Berth's Services waiting for an IP of a family they ask for, by reason (the AllocationFailed Event says more)",
            pending.clone(),
        );
        registry.register(
            "berth_layer2_ips",
            "Layer2 IPs with at least one candidate node: each should be answered by exactly one agent (compare berth_agent_owned_ips)",
            layer2_ips.clone(),
        );
        registry.register(
            "berth_speaker_in_sync",
            "1 while a bgp-server replica holds the operator's current desired state (its last push succeeded), 0 while it is behind",
            speaker_in_sync.clone(),
        );
        registry.register(
            "berth_services_without_next_hop",
            "Berth's Services holding IPs that nothing announces: no eligible node (NoNextHop Event on each)",
            without_next_hop.clone(),
        );
        registry.register(
            "berth_ipam_addresses_total",
            "Addresses a pool can hand out (a float: exact up to 2^53, a /64 is approximate)",
            addresses_total.clone(),
        );
        registry.register(
            "berth_ipam_addresses_in_use",
            "Addresses of a pool assigned to Services",
            addresses_in_use.clone(),
        );
        registry.register(
            "berth_reconcile_duration_seconds",
            "Time to reconcile one object",
            reconcile_duration.clone(),
        );
        registry.register(
            "berth_reconcile_errors",
            "Reconciles that failed (retried with back-off)",
            reconcile_errors.clone(),
        );
        registry.register(
            "berth_endpoint_updates",
            "EndpointSlice changes of settled Services carried out without a reconcile (their next hops computed again)",
            endpoint_updates.clone(),
        );
        registry.register(
            "berth_speaker_sync_errors",
            "Pushes of desired state to a bgp-server replica that failed",
            speaker_sync_errors.clone(),
        );
        registry.register(
            "berth_operator_leader",
            "1 while this replica holds the leader Lease",
            leader.clone(),
        );
        Metrics {
            registry,
            addresses_total,
            addresses_in_use,
            reconcile_duration,
            reconcile_errors,
            endpoint_updates,
            speaker_sync_errors,
            leader,
            without_next_hop,
            pending,
            layer2_ips,
            speaker_in_sync,
            apply_bytes,
            ready: AtomicBool::new(false),
        }
    }

    /// Sets the pool gauges from the engine; pools gone since are removed.
    pub fn pools(&self, ipam: &Ipam) {
        self.addresses_total.clear();
        self.addresses_in_use.clear();
        for pool in ipam.pools() {
            let labels = PoolLabels {
                pool: pool.name().to_owned(),
            };
            if let Some(u) = ipam.usage(pool.name()) {
                // A pool's size is exact in status; as a gauge, f64 is plenty for alerting.
                let size = u.size.as_u128().map_or(f64::MAX, |n| n as f64);
                self.addresses_total.get_or_create(&labels).set(size);
                self.addresses_in_use
                    .get_or_create(&labels)
                    .set(i64::try_from(u.used).unwrap_or(i64::MAX));
            }
        }
    }

    /// Counts an endpoint change carried out without a reconcile.
    pub fn endpoint_update(&self) {
        self.endpoint_updates.inc();
    }

    /// Records one reconcile's duration, and whether it failed.
    pub fn reconciled(&self, controller: &str, seconds: f64, failed: bool) {
        let labels = ControllerLabels {
            controller: controller.to_owned(),
        };
        self.reconcile_duration
            .get_or_create(&labels)
            .observe(seconds);
        // The error counter exists from the first reconcile on (at 0), so a rate sees the
        // first failure.
        self.reconcile_errors
            .get_or_create(&labels)
            .inc_by(u64::from(failed));
    }

    /// Counts a failed push to a speaker.
    pub fn speaker_sync_error(&self, speaker: &str) {
        self.speaker_sync_errors
            .get_or_create(&SpeakerLabels {
                speaker: speaker.to_owned(),
            })
            .inc();
    }

    /// Sets the Service gauges from the per-Service health totals.
    pub fn services(&self, t: &Totals) {
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.without_next_hop.set(count(t.without_next_hop));
        self.layer2_ips.set(count(t.layer2_ips));
        // Reasons no longer seen go back to 0 rather than vanish.
        for reason in AllocError::REASONS
            .iter()
            .chain(std::iter::once(&crate::plan::INVALID_SERVICE))
        {
            let n = t.pending.get(reason).copied().unwrap_or(0);
            self.pending
                .get_or_create(&PendingLabels {
                    reason: (*reason).to_owned(),
                })
                .set(count(n));
        }
    }

    /// Records the encoded size of a full desired state just built.
    pub fn set_apply_bytes(&self, bytes: usize) {
        self.apply_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// Whether a speaker replica holds the current desired state.
    pub fn set_speaker_in_sync(&self, speaker: &str, in_sync: bool) {
        self.speaker_in_sync
            .get_or_create(&SpeakerLabels {
                speaker: speaker.to_owned(),
            })
            .set(i64::from(in_sync));
    }

    /// A speaker replica is gone (or this replica stopped syncing): no series for it.
    pub fn speaker_gone(&self, speaker: &str) {
        let labels = SpeakerLabels {
            speaker: speaker.to_owned(),
        };
        self.speaker_in_sync.remove(&labels);
        self.speaker_sync_errors.remove(&labels);
    }

    /// A speaker replica to sync: its error counter exists (at 0) from now on.
    pub fn speaker_known(&self, speaker: &str) {
        self.speaker_sync_errors
            .get_or_create(&SpeakerLabels {
                speaker: speaker.to_owned(),
            })
            .inc_by(0);
    }

    /// Whether this replica leads.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// Marks the operator ready (state rebuilt, controllers running) or not.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Serves `/metrics`, `/healthz` (the process runs) and `/readyz` (a standby replica, or a
/// leader whose state is rebuilt) until the task is dropped. A deliberately small HTTP/1.0
/// responder: these three GETs are all it is for.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let n = match tokio::time::timeout(
                std::time::Duration::from_secs(5),
                stream.read(&mut buf),
            )
            .await
            {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let request = String::from_utf8_lossy(buf.get(..n).unwrap_or_default());
            let path = request.split_whitespace().nth(1).unwrap_or("");
            let ready = metrics.ready.load(Ordering::Relaxed);
            let (status, content_type, body) = match path {
                "/metrics" => (
                    "200 OK",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    metrics.render(),
                ),
                "/healthz" => ("200 OK", "text/plain", "ok\n".to_owned()),
                "/readyz" if ready => ("200 OK", "text/plain", "ready\n".to_owned()),
                "/readyz" => (
                    "503 Service Unavailable",
                    "text/plain",
                    "not ready: rebuilding state from the API\n".to_owned(),
                ),
                _ => (
                    "404 Not Found",
                    "text/plain",
                    "try /metrics, /healthz or /readyz\n".to_owned(),
                ),
            };
            let head = format!(
                "HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(body.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::PoolSpec;

    #[test]
    fn exposition_has_the_documented_names() {
        let m = Metrics::new();
        let (ipam, _) = Ipam::rebuild(
            [PoolSpec {
                name: "blue".into(),
                address: "10.0.0.0/24".into(),
                ..Default::default()
            }],
            [],
        );
        m.pools(&ipam);
        m.reconciled("service", 0.002, true);
        m.speaker_sync_error("berth-bgp-server-0");
        m.set_leader(true);
        let text = m.render();
        for needle in [
            "berth_ipam_addresses_total{pool=\"blue\"} 254.0",
            "berth_ipam_addresses_in_use{pool=\"blue\"} 0",
            "berth_reconcile_duration_seconds_count{controller=\"service\"} 1",
            "berth_reconcile_errors_total{controller=\"service\"} 1",
            "berth_speaker_sync_errors_total{speaker=\"berth-bgp-server-0\"} 1",
            "berth_operator_leader 1",
        ] {
            assert!(text.contains(needle), "{needle} missing in\n{text}");
        }
    }
}

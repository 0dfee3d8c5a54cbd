//! Prometheus metrics (`berth_bgp_*`) and the `/metrics`, `/healthz`, `/readyz` endpoints.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::fsm::State;

/// Labels naming a peer.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    /// Neighbour address.
    pub peer: String,
}

/// Labels of a session-state series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// Neighbour address.
    pub peer: String,
    /// RFC 4271 state name.
    pub state: String,
}

/// Labels of a message counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MessageLabels {
    /// Neighbour address.
    pub peer: String,
    /// open, update, notification, keepalive, route_refresh.
    pub kind: String,
}

/// Labels of a NOTIFICATION counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NotificationLabels {
    /// Neighbour address.
    pub peer: String,
    /// sent or received.
    pub direction: String,
    /// Error code.
    pub code: String,
    /// Error subcode.
    pub subcode: String,
}

/// Labels of a control API call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// apply or update_routes.
    pub call: String,
    /// ok or error.
    pub result: String,
}

/// Labels of a refused control API call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    /// apply or update_routes.
    pub call: String,
    /// invalid_argument, stale_generation, cannot_apply or persist_failed.
    pub reason: String,
}

/// Labels naming a control API call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallName {
    /// apply or update_routes.
    pub call: String,
}

fn latency_histogram() -> Histogram {
    // 50 µs to about 3 s.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.000_05, 2.0, 16,
    ))
}

/// Every metric of the speaker.
pub struct Metrics {
    registry: Registry,
    /// 1 for the session's current state, 0 for the others.
    pub session_state: Family<StateLabels, Gauge>,
    /// Messages sent.
    pub messages_sent: Family<MessageLabels, Counter>,
    /// Messages received.
    pub messages_received: Family<MessageLabels, Counter>,
    /// Prefixes announced to the peer.
    pub prefixes_announced: Family<PeerLabels, Gauge>,
    /// Paths announced to the peer (more than prefixes with ADD-PATH).
    pub paths_announced: Family<PeerLabels, Gauge>,
    /// NOTIFICATIONs sent and received.
    pub notifications: Family<NotificationLabels, Counter>,
    /// Control API calls that change state, by result.
    pub api_calls: Family<CallLabels, Counter>,
    /// How long those calls took.
    pub api_duration: Family<CallName, Histogram, fn() -> Histogram>,
    /// Refused calls, by reason.
    pub api_rejected: Family<RejectLabels, Counter>,
    /// Sessions closed because the peer took no data for the send-hold time (RFC 9687).
    pub send_hold_expired: Family<PeerLabels, Counter>,
    /// Paths never sent because their attributes leave no room for them in one UPDATE.
    pub paths_unsendable: Family<PeerLabels, Counter>,
    /// 1 while the settings in force could not be applied (the listener cannot be bound, an
    /// MD5 key cannot be set): `/readyz` says why.
    pub settings_unapplied: Gauge,
    /// 1 from a start whose persisted state could not be used (damaged, or invalid) until a
    /// state is accepted.
    pub persisted_state_unused: Gauge,
}

const STATES: [State; 6] = [
    State::Idle,
    State::Connect,
    State::Active,
    State::OpenSent,
    State::OpenConfirm,
    State::Established,
];

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A registry with every metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("berth_bgp");
        let m = Metrics {
            registry: Registry::default(),
            session_state: Family::default(),
            messages_sent: Family::default(),
            messages_received: Family::default(),
            prefixes_announced: Family::default(),
            paths_announced: Family::default(),
            notifications: Family::default(),
            api_calls: Family::default(),
            api_duration: Family::new_with_constructor(latency_histogram),
            api_rejected: Family::default(),
            send_hold_expired: Family::default(),
            paths_unsendable: Family::default(),
            settings_unapplied: Gauge::default(),
            persisted_state_unused: Gauge::default(),
        };
        registry.register(
            "session_state",
            "1 for the BGP session's current RFC 4271 state",
            m.session_state.clone(),
        );
        registry.register(
            "messages_sent",
            "BGP messages sent, by type",
            m.messages_sent.clone(),
        );
        registry.register(
            "messages_received",
            "BGP messages received, by type",
            m.messages_received.clone(),
        );
        registry.register(
            "prefixes_announced",
            "Prefixes announced to the peer",
            m.prefixes_announced.clone(),
        );
        registry.register(
            "paths_announced",
            "Paths announced to the peer (one per next hop with ADD-PATH)",
            m.paths_announced.clone(),
        );
        registry.register(
            "notifications",
            "NOTIFICATION messages, by direction, code and subcode",
            m.notifications.clone(),
        );
        registry.register(
            "api_calls",
            "Control API calls that change state (apply, update_routes), by result",
            m.api_calls.clone(),
        );
        registry.register(
            "api_duration_seconds",
            "Time to validate, persist and publish a control API call",
            m.api_duration.clone(),
        );
        registry.register(
            "api_rejected",
            "Control API calls refused, by reason",
            m.api_rejected.clone(),
        );
        registry.register(
            "paths_unsendable",
            "Paths not sent because their attributes leave no room for them in one UPDATE \
             (paths_announced still counts them)",
            m.paths_unsendable.clone(),
        );
        registry.register(
            "send_hold_expired",
            "Sessions closed because the peer took no data for the send-hold time (RFC 9687)",
            m.send_hold_expired.clone(),
        );
        registry.register(
            "settings_unapplied",
            "1 while the settings in force cannot be applied (see /readyz for why)",
            m.settings_unapplied.clone(),
        );
        registry.register(
            "persisted_state_unused",
            "1 when the persisted state could not be used at start, until a state is accepted",
            m.persisted_state_unused.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Records the session's state: 1 on the current one, 0 on the others.
    pub fn set_state(&self, peer: &str, state: State) {
        for s in STATES {
            let labels = StateLabels {
                peer: peer.to_owned(),
                state: format!("{s:?}"),
            };
            self.session_state
                .get_or_create(&labels)
                .set(i64::from(s == state));
        }
    }

    /// Counts a message by kind.
    pub fn message(&self, peer: &str, kind: &str, sent: bool) {
        let labels = MessageLabels {
            peer: peer.to_owned(),
            kind: kind.to_owned(),
        };
        let family = if sent {
            &self.messages_sent
        } else {
            &self.messages_received
        };
        family.get_or_create(&labels).inc();
    }

    /// Counts a NOTIFICATION.
    pub fn notification(&self, peer: &str, sent: bool, code: u8, subcode: u8) {
        let labels = NotificationLabels {
            peer: peer.to_owned(),
            direction: if sent { "sent" } else { "received" }.to_owned(),
            code: code.to_string(),
            subcode: subcode.to_string(),
        };
        self.notifications.get_or_create(&labels).inc();
    }

    /// Records a state-changing API call.
    pub fn applied(&self, call: &str, ok: bool, seconds: f64) {
        let labels = CallLabels {
            call: call.to_owned(),
            result: if ok { "ok" } else { "error" }.to_owned(),
        };
        self.api_calls.get_or_create(&labels).inc();
        self.api_duration
            .get_or_create(&CallName {
                call: call.to_owned(),
            })
            .observe(seconds);
    }

    /// Counts a session closed by its send-hold timer.
    pub fn send_hold_expired(&self, peer: &str) {
        let labels = PeerLabels {
            peer: peer.to_owned(),
        };
        self.send_hold_expired.get_or_create(&labels).inc();
    }

    /// Records a refused API call.
    pub fn rejected(&self, call: &str, reason: &str) {
        let labels = RejectLabels {
            call: call.to_owned(),
            reason: reason.to_owned(),
        };
        self.api_rejected.get_or_create(&labels).inc();
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Serves `/metrics`, `/healthz` (the process runs) and `/readyz` (`ready` is `Ok`: the
/// desired state is loaded and applied; otherwise 503 with the reason) until `shutdown` turns
/// true. A deliberately small HTTP/1.0
/// responder: these three GETs are all it is for.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    ready: watch::Receiver<Result<(), String>>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => return,
            a = listener.accept() => a,
        };
        let Ok((mut stream, _)) = accepted else {
            continue;
        };
        let metrics = metrics.clone();
        let ready = ready.borrow().clone();
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
            let (status, content_type, body) = match path {
                "/metrics" => (
                    "200 OK",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    metrics.render(),
                ),
                "/healthz" => ("200 OK", "text/plain", "ok\n".to_owned()),
                "/readyz" => match ready {
                    Ok(()) => ("200 OK", "text/plain", "ready\n".to_owned()),
                    Err(why) => (
                        "503 Service Unavailable",
                        "text/plain",
                        format!("not ready: {why}\n"),
                    ),
                },
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

    #[test]
    fn exposition_has_the_documented_names() {
        let m = Metrics::new();
        m.set_state("10.0.0.1", State::Established);
        m.message("10.0.0.1", "update", true);
        m.notification("10.0.0.1", false, 6, 2);
        m.paths_announced
            .get_or_create(&PeerLabels {
                peer: "10.0.0.1".into(),
            })
            .set(3);
        let text = m.render();
        assert!(
            text.contains(r#"berth_bgp_session_state{peer="10.0.0.1",state="Established"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"berth_bgp_session_state{peer="10.0.0.1",state="Idle"} 0"#));
        assert!(text.contains(r#"berth_bgp_messages_sent_total{peer="10.0.0.1",kind="update"} 1"#));
        assert!(text.contains(r#"berth_bgp_notifications_total{peer="10.0.0.1",direction="received",code="6",subcode="2"} 1"#));
        assert!(text.contains(r#"berth_bgp_paths_announced{peer="10.0.0.1"} 3"#));
    }

    #[tokio::test]
    async fn endpoints_answer_over_http() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (ready_tx, ready) = watch::channel(Err("sessions not started".to_owned()));
        let (_stop_tx, stop) = watch::channel(false);
        let metrics = Arc::new(Metrics::new());
        metrics.set_state("10.0.0.1", State::Active);
        tokio::spawn(serve(listener, metrics, ready, stop));
        let get = |path: &'static str| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        assert!(get("/healthz").await.starts_with("HTTP/1.0 200"));
        let not_ready = get("/readyz").await;
        assert!(not_ready.starts_with("HTTP/1.0 503"), "{not_ready}");
        assert!(
            not_ready.ends_with("not ready: sessions not started\n"),
            "{not_ready}"
        );
        ready_tx.send(Ok(())).unwrap();
        assert!(get("/readyz").await.starts_with("HTTP/1.0 200"));
        let body = get("/metrics").await;
        assert!(
            body.contains(r#"berth_bgp_session_state{peer="10.0.0.1",state="Active"} 1"#),
            "{body}"
        );
        assert!(get("/nope").await.starts_with("HTTP/1.0 404"));
    }
}

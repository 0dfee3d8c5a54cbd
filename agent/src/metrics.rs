//! Prometheus metrics (`berth_agent_*`) and the `/metrics`, `/healthz`, `/readyz` endpoints.

use std::net::IpAddr;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Labels of a per-IP Layer2 counter. Only IPs this node owned when the packet came are
/// labelled, so the series stay bounded by the Layer2 IPs, not by what the segment asks.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IpLabels {
    /// The Layer2 IP.
    pub ip: String,
    /// arp or ndp.
    pub protocol: String,
}

/// Labels naming one IP.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OwnerLabels {
    /// The Layer2 IP.
    pub ip: String,
}

/// Every metric of the agent.
pub struct Metrics {
    registry: Registry,
    /// ARP requests / Neighbor Solicitations received for an owned IP.
    pub requests: Family<IpLabels, Counter>,
    /// Replies / solicited advertisements sent.
    pub replies: Family<IpLabels, Counter>,
    /// Gratuitous ARP / unsolicited advertisements sent.
    pub gratuitous: Family<IpLabels, Counter>,
    /// Another MAC announced an IP this node owns (two nodes answering, or a foreign host).
    pub conflicts: Family<IpLabels, Counter>,
    /// This node stopped answering an IP because a higher-ranked MAC claimed it on the segment.
    pub yields: Family<IpLabels, Counter>,
    /// Re-announcements of an owned IP after a lower-ranked MAC claimed it.
    pub defences: Family<IpLabels, Counter>,
    /// A yielded IP answered again (the winner stopped answering probes, or the view healed).
    pub reclaims: Family<IpLabels, Counter>,
    /// Elected IPs this node does not answer because it yielded them on the segment.
    pub yielded_ips: Gauge,
    /// Times the elected owner of an IP changed, as this agent sees it.
    pub ownership_changes: Family<OwnerLabels, Counter>,
    /// Layer2 IPs this node answers for now.
    pub owned_ips: Gauge,
    /// Nodes alive in the membership (this one included).
    pub membership_size: Gauge,
    /// Frames that could not be sent.
    pub send_errors: Counter,
    /// Announcing interfaces this node cannot answer on now (down, missing, or held down).
    pub unable_interfaces: Gauge,
    /// Announcers reopened because their interface changed index or MAC.
    pub interface_reopens: Counter,
    /// Live members not yet Layer2 candidates (within the failback hold-down), this node
    /// included while it is.
    pub held_down_members: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// `arp` or `ndp` for an IP's family.
pub fn protocol(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() { "arp" } else { "ndp" }
}

impl Metrics {
    /// A registry with every metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("berth_agent");
        let m = Metrics {
            registry: Registry::default(),
            requests: Family::default(),
            replies: Family::default(),
            gratuitous: Family::default(),
            conflicts: Family::default(),
            yields: Family::default(),
            defences: Family::default(),
            reclaims: Family::default(),
            yielded_ips: Gauge::default(),
            ownership_changes: Family::default(),
            owned_ips: Gauge::default(),
            membership_size: Gauge::default(),
            send_errors: Counter::default(),
            unable_interfaces: Gauge::default(),
            interface_reopens: Counter::default(),
            held_down_members: Gauge::default(),
        };
        registry.register(
            "held_down_members",
            "Nodes alive in the membership that are not Layer2 candidates yet: new in the membership (a restart, a heal) and within the failback hold-down",
            m.held_down_members.clone(),
        );
        registry.register(
            "unable_interfaces",
            "Layer2 interfaces this node cannot answer on now (down, missing, or within the link hold-down); its IPs there are left to other candidates",
            m.unable_interfaces.clone(),
        );
        registry.register(
            "interface_reopens",
            "Layer2 announcers reopened because their interface was recreated or changed MAC",
            m.interface_reopens.clone(),
        );
        registry.register(
            "requests_received",
            "ARP requests and Neighbor Solicitations received for an IP this node owns",
            m.requests.clone(),
        );
        registry.register(
            "replies_sent",
            "ARP replies and solicited Neighbor Advertisements sent",
            m.replies.clone(),
        );
        registry.register(
            "gratuitous_sent",
            "Gratuitous ARP and unsolicited Neighbor Advertisements sent (takeover)",
            m.gratuitous.clone(),
        );
        registry.register(
            "conflicts",
            "Announcements from another MAC for an IP this node owns",
            m.conflicts.clone(),
        );
        registry.register(
            "yields",
            "Owned IPs given up because a higher-ranked MAC claimed them on the segment",
            m.yields.clone(),
        );
        registry.register(
            "defences",
            "Re-announcements of an owned IP after a lower-ranked MAC claimed it",
            m.defences.clone(),
        );
        registry.register(
            "reclaims",
            "Yielded IPs answered again (winner silent to probes, or the membership healed)",
            m.reclaims.clone(),
        );
        registry.register(
            "yielded_ips",
            "Elected Layer2 IPs not answered because another node outranks this one on the segment",
            m.yielded_ips.clone(),
        );
        registry.register(
            "ownership_changes",
            "Times the elected owner of a Layer2 IP changed",
            m.ownership_changes.clone(),
        );
        registry.register(
            "owned_ips",
            "Layer2 IPs this node answers for",
            m.owned_ips.clone(),
        );
        registry.register(
            "membership_size",
            "Nodes alive in the membership, this one included",
            m.membership_size.clone(),
        );
        registry.register(
            "send_errors",
            "Layer2 frames that could not be sent",
            m.send_errors.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The registry, to register other components' metrics (membership) under `berth_agent_`.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// The label set of `ip`.
    pub fn ip(ip: IpAddr) -> IpLabels {
        IpLabels {
            ip: ip.to_string(),
            protocol: protocol(ip).to_owned(),
        }
    }

    /// An IP this node owns: its counters exist from now on (at 0), so the first conflict or
    /// yield is a rate, and dashboards and alerts see the series before anything happens.
    pub fn owned(&self, ip: IpAddr) {
        let labels = Metrics::ip(ip);
        for family in [
            &self.requests,
            &self.replies,
            &self.gratuitous,
            &self.conflicts,
            &self.yields,
            &self.defences,
            &self.reclaims,
        ] {
            family.get_or_create(&labels).inc_by(0);
        }
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Serves `/metrics`, `/healthz` (the process runs) and `/readyz` (membership joined and the
/// desired state applied once) until `shutdown` turns true. A deliberately small HTTP/1.0
/// responder: these three GETs are all it is for.
pub async fn serve(
    listener: TcpListener,
    metrics: std::sync::Arc<Metrics>,
    ready: watch::Receiver<bool>,
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
        let ready = *ready.borrow();
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
                "/readyz" if ready => ("200 OK", "text/plain", "ready\n".to_owned()),
                "/readyz" => (
                    "503 Service Unavailable",
                    "text/plain",
                    "not ready: membership not settled or desired state not applied yet\n"
                        .to_owned(),
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
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn an_owned_ip_has_its_counters_before_anything_happens() {
        let m = Metrics::new();
        m.owned("10.0.0.240".parse().unwrap());
        let text = m.render();
        for name in [
            "conflicts",
            "yields",
            "defences",
            "reclaims",
            "replies_sent",
        ] {
            let line = format!(r#"berth_agent_{name}_total{{ip="10.0.0.240",protocol="arp"}} 0"#);
            assert!(text.contains(&line), "{line} missing:\n{text}");
        }
    }

    #[test]
    fn exposition_has_the_documented_names() {
        let m = Metrics::new();
        let ip: IpAddr = "fd00::240".parse().unwrap();
        m.requests.get_or_create(&Metrics::ip(ip)).inc();
        m.gratuitous
            .get_or_create(&Metrics::ip("10.0.0.240".parse().unwrap()))
            .inc();
        m.membership_size.set(3);
        let text = m.render();
        assert!(
            text.contains(
                r#"berth_agent_requests_received_total{ip="fd00::240",protocol="ndp"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"berth_agent_gratuitous_sent_total{ip="10.0.0.240",protocol="arp"} 1"#),
            "{text}"
        );
        assert!(text.contains("berth_agent_membership_size 3"), "{text}");
    }
}

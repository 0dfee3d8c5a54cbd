//! Counters the agent exposes for the membership protocol.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Membership metrics; cheap to clone (every field shares its value with its clones).
#[derive(Clone, Debug, Default)]
pub struct MembershipMetrics {
    /// Members this agent sees alive, itself included.
    pub members: Gauge,
    /// Datagrams sent.
    pub datagrams_sent: Counter,
    /// Bytes sent (UDP payloads, authentication included).
    pub bytes_sent: Counter,
    /// Datagrams received that passed authentication.
    pub datagrams_received: Counter,
    /// Datagrams dropped: too short, not ours, another key, or a bad tag.
    pub auth_failures: Counter,
    /// Authenticated datagrams the SWIM layer could not use (malformed, stale, from ourselves).
    pub protocol_errors: Counter,
    /// Datagrams that could not be sent (socket errors).
    pub send_errors: Counter,
    /// Times the cluster declared this agent down while it was running (it then rejoined with
    /// a renewed identity): each one moved this node's Layer2 IPs away and back.
    pub rejoins: Counter,
    /// Protocol timers that fired later than `probe_rtt` after their time: the agent is starved
    /// of CPU, and false suspicions (IPs moving away) follow.
    pub late_timers: Counter,
}

impl MembershipMetrics {
    /// Registers every metric under `registry` (names start with `membership_`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "membership_members",
            "Agents this agent sees alive, itself included",
            self.members.clone(),
        );
        registry.register(
            "membership_datagrams_sent",
            "Membership datagrams sent",
            self.datagrams_sent.clone(),
        );
        registry.register(
            "membership_sent_bytes",
            "Membership bytes sent (UDP payloads, authentication included)",
            self.bytes_sent.clone(),
        );
        registry.register(
            "membership_datagrams_received",
            "Authenticated membership datagrams received",
            self.datagrams_received.clone(),
        );
        registry.register(
            "membership_auth_failures",
            "Membership datagrams dropped for failing authentication (wrong key, tampered, not ours)",
            self.auth_failures.clone(),
        );
        registry.register(
            "membership_protocol_errors",
            "Authenticated membership datagrams the SWIM layer rejected",
            self.protocol_errors.clone(),
        );
        registry.register(
            "membership_rejoins",
            "Times the cluster declared this running agent down (false suspicion or cut link) and it rejoined",
            self.rejoins.clone(),
        );
        registry.register(
            "membership_late_timers",
            "Membership timers that fired more than probe_rtt late (agent starved of CPU; false downs follow)",
            self.late_timers.clone(),
        );
        registry.register(
            "membership_send_errors",
            "Membership datagrams that could not be sent",
            self.send_errors.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn registered_metrics_appear_in_the_exposition() {
        let m = MembershipMetrics::default();
        m.members.set(3);
        m.auth_failures.inc();
        let mut r = Registry::with_prefix("berth_agent");
        m.register(&mut r);
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &r).unwrap();
        assert!(s.contains("berth_agent_membership_members 3"), "{s}");
        assert!(
            s.contains("berth_agent_membership_auth_failures_total 1"),
            "{s}"
        );
    }
}

//! The Layer2 contract between the operator and the agents.
//!
//! For every Service holding IPs from a `layer2` Eip, the operator writes a ConfigMap in
//! Berth's own namespace (named by [`configmap_name`], labelled [`LABEL_LAYER2_ASSIGNMENT`]):
//! its [`DATA_SERVICE`] key names the Service, its [`DATA_ASSIGNMENT`] key holds a JSON
//! [`Layer2Assignment`] with the IPs, the interface and the candidate nodes (the same
//! eligibility as BGP next hops: Ready, not excluded, matched by BgpConf's node selector; with
//! `externalTrafficPolicy: Local` only nodes with a ready endpoint).
//!
//! Why a ConfigMap in Berth's namespace and not an annotation on the Service: whoever may edit
//! a Service may edit its annotations, and an agent that believed them would answer ARP for
//! any IP a tenant names (the subnet's gateway, say). RBAC keeps tenants out of Berth's
//! namespace. The agents still trust nothing they can check: an IP is answered only while the
//! Service is `type: LoadBalancer`, the IP is in its `status.loadBalancer.ingress` (written
//! through the status subresource, which tenants cannot write) and inside a `layer2` Eip
//! (cluster-scoped), and the interface is the Eip's, not the ConfigMap's.
//!
//! The operator decides *who may* answer; it does not pick the owner. Every agent intersects
//! the candidates with the nodes its membership protocol currently sees alive and elects the
//! owner of each IP by the same stable hash (rendezvous hashing over `node` and `ip`), so a
//! failover needs no write to the API server and no operator. An agent answers ARP/NDP for an
//! IP only while it is the elected owner. An empty `nodes` list means nobody answers (and the
//! operator records an Event saying the Service has no eligible node).

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::EipSpec;

/// Label on the operator's Layer2 assignment ConfigMaps (value `"true"`): what the agents
/// watch in Berth's namespace.
pub const LABEL_LAYER2_ASSIGNMENT: &str = "berth.dev/layer2-assignment";
/// ConfigMap data key: the Service, as `namespace/name`.
pub const DATA_SERVICE: &str = "service";
/// ConfigMap data key: the [`Layer2Assignment`] as JSON.
pub const DATA_ASSIGNMENT: &str = "assignment";

/// The name of the assignment ConfigMap of Service `namespace/name`: `berth-l2.<ns>.<name>`,
/// a valid object name for any valid Service (both parts are DNS labels).
pub fn configmap_name(namespace: &str, name: &str) -> String {
    format!("berth-l2.{namespace}.{name}")
}

/// What the agents need to elect the owner of a Service's Layer2 IPs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Layer2Assignment {
    /// The Layer2 IPs of the Service (one per family at most), as strings.
    pub ips: Vec<String>,
    /// The Eip's `spec.interface`: a name, or `can_reach:<ip>`.
    pub interface: String,
    /// Candidate node names, sorted.
    pub nodes: Vec<String>,
}

impl Layer2Assignment {
    /// The JSON value stored under [`DATA_ASSIGNMENT`].
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads the stored value; errors say what was expected.
    pub fn from_json(value: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(value)
    }
}

impl EipSpec {
    /// Whether `ip` lies inside `spec.address` (an IP, a CIDR or a range `a-b`); `None` when
    /// the address does not parse (admission refuses such pools, so only a pool written
    /// around admission gets here, and it contains nothing).
    pub fn contains(&self, ip: IpAddr) -> Option<bool> {
        let a = self.address.trim();
        if let Ok(single) = a.parse::<IpAddr>() {
            return Some(single == ip);
        }
        if let Ok(net) = a.parse::<IpNet>() {
            return Some(net.contains(&ip));
        }
        let (first, last) = a.split_once('-')?;
        let first: IpAddr = first.trim().parse().ok()?;
        let last: IpAddr = last.trim().parse().ok()?;
        Some(match (first, last, ip) {
            (IpAddr::V4(f), IpAddr::V4(l), IpAddr::V4(x)) => f <= x && x <= l,
            (IpAddr::V6(f), IpAddr::V6(l), IpAddr::V6(x)) => f <= x && x <= l,
            _ => false,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_assignment_round_trips_in_the_documented_shape() {
        let a = Layer2Assignment {
            ips: vec!["192.168.1.240".into()],
            interface: "eth0".into(),
            nodes: vec!["node1".into(), "node2".into()],
        };
        let v = a.to_json();
        assert_eq!(
            v,
            r#"{"ips":["192.168.1.240"],"interface":"eth0","nodes":["node1","node2"]}"#
        );
        assert_eq!(Layer2Assignment::from_json(&v).unwrap(), a);
        assert!(Layer2Assignment::from_json("eth0").is_err());
    }

    #[test]
    fn configmap_names_are_valid_object_names() {
        let n = configmap_name("tenant-a", "web");
        assert_eq!(n, "berth-l2.tenant-a.web");
        let long = configmap_name(&"a".repeat(63), &"b".repeat(63));
        assert!(long.len() <= 253);
    }

    fn spec(address: &str) -> EipSpec {
        serde_json::from_value(serde_json::json!({ "address": address })).unwrap()
    }

    #[test]
    fn pools_contain_exactly_their_addresses() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let r = spec("10.0.0.240-10.0.0.247");
        assert_eq!(r.contains(ip("10.0.0.240")), Some(true));
        assert_eq!(r.contains(ip("10.0.0.247")), Some(true));
        assert_eq!(r.contains(ip("10.0.0.248")), Some(false));
        assert_eq!(r.contains(ip("10.0.0.1")), Some(false));
        assert_eq!(r.contains(ip("::ffff:10.0.0.241")), Some(false));
        let c = spec("fd00::/120");
        assert_eq!(c.contains(ip("fd00::ff")), Some(true));
        assert_eq!(c.contains(ip("fd00::100")), Some(false));
        assert_eq!(spec("10.0.0.5").contains(ip("10.0.0.5")), Some(true));
        assert_eq!(spec("10.0.0.5").contains(ip("10.0.0.6")), Some(false));
        assert_eq!(
            spec("10.0.0.9-fd00::1").contains(ip("10.0.0.9")),
            Some(false)
        );
        assert_eq!(spec("garbage").contains(ip("10.0.0.5")), None);
    }
}

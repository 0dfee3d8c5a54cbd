//! The Layer2 contract between the operator and the agents.
//!
//! For every Service holding IPs from a `layer2` Eip, the operator writes the annotation
//! [`ANNOTATION_LAYER2`](crate::names::ANNOTATION_LAYER2) on the Service: a JSON
//! [`Layer2Assignment`] naming the IPs, the interface to answer on, and the candidate nodes
//! (the same eligibility as BGP next hops: Ready, not excluded, matched by BgpConf's node
//! selector; with `externalTrafficPolicy: Local` only nodes with a ready endpoint).
//!
//! The operator decides *who may* answer; it does not pick the owner. Every agent intersects
//! the candidates with the nodes its membership protocol currently sees alive and elects the
//! owner of each IP by the same stable hash (rendezvous hashing over `node` and `ip`), so a
//! failover needs no write to the API server and no operator. An agent answers ARP/NDP for an
//! IP only while it is the elected owner. An empty `nodes` list means nobody answers (and the
//! operator records an Event saying the Service has no eligible node).

use serde::{Deserialize, Serialize};

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
    /// The annotation value.
    pub fn to_annotation(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads the annotation value; errors say what was expected.
    pub fn from_annotation(value: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(value)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_annotation_round_trips_in_the_documented_shape() {
        let a = Layer2Assignment {
            ips: vec!["192.168.1.240".into()],
            interface: "eth0".into(),
            nodes: vec!["node1".into(), "node2".into()],
        };
        let v = a.to_annotation();
        assert_eq!(
            v,
            r#"{"ips":["192.168.1.240"],"interface":"eth0","nodes":["node1","node2"]}"#
        );
        assert_eq!(Layer2Assignment::from_annotation(&v).unwrap(), a);
        assert!(Layer2Assignment::from_annotation("eth0").is_err());
    }
}

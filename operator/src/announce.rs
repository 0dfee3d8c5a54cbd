//! What one Service's IPs announce: for BGP-mode IPs the next hops, for Layer2 IPs the
//! candidate nodes of the [`Layer2Assignment`]. Pure: the controller passes the Service, its
//! IPs, BgpConf, the Node views and only this Service's EndpointSlices.

use std::net::IpAddr;

use berth_api::{BgpConfSpec, Layer2Assignment, names};
use k8s_openapi::api::core::v1::Service;

use crate::convert;
use crate::nexthops::{self, NextHop, NodeView, Rules, SliceView, TrafficPolicy};

/// What a Service's IPs need: BGP routes, the Layer2 candidates, and what to warn about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Computed {
    /// BGP-mode IPs with their next hops (possibly none).
    pub bgp: Vec<(IpAddr, Vec<NextHop>)>,
    /// The Layer2 assignment, when the Service holds Layer2 IPs.
    pub layer2: Option<Layer2Assignment>,
    /// Eligible nodes without an address of the IP's family.
    pub missing: Vec<String>,
    /// The Service's traffic policy.
    pub policy: TrafficPolicy,
}

/// Computes the announcements of `held` IPs. `layer2_interface(ip)` is the interface of the
/// Layer2 pool the IP came from, `None` for a BGP pool.
pub fn compute(
    svc: &Service,
    held: &[IpAddr],
    conf: Option<&BgpConfSpec>,
    nodes: &[NodeView],
    slices: &[SliceView],
    layer2_interface: impl Fn(IpAddr) -> Option<String>,
) -> Computed {
    let selector = conf
        .and_then(|c| c.next_hop_node_selector.as_ref())
        .and_then(|s| convert::selector(s, "spec.nextHopNodeSelector").ok());
    let annotated = svc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(names::ANNOTATION_WEIGHTED_ECMP))
        .map(|v| v.trim() == "true");
    let weighted = annotated.unwrap_or(conf.is_some_and(|c| c.weighted_ecmp));
    let policy = match svc
        .spec
        .as_ref()
        .and_then(|s| s.external_traffic_policy.as_deref())
    {
        Some("Local") => TrafficPolicy::Local,
        _ => TrafficPolicy::Cluster,
    };
    let mut out = Computed {
        bgp: Vec::new(),
        layer2: None,
        missing: Vec::new(),
        policy,
    };
    for ip in held {
        let rules = Rules {
            policy,
            weighted,
            node_selector: selector.as_ref(),
            ipv4: ip.is_ipv4(),
        };
        let endpoints = nexthops::endpoints(slices, ip.is_ipv4());
        let outcome = nexthops::next_hops(nodes, &endpoints, &rules);
        out.missing.extend(outcome.no_address.iter().cloned());
        match layer2_interface(*ip) {
            Some(interface) => {
                let entry = out.layer2.get_or_insert_with(|| Layer2Assignment {
                    interface,
                    ..Default::default()
                });
                entry.ips.push(ip.to_string());
                for hop in outcome.next_hops {
                    if !entry.nodes.contains(&hop.node) {
                        entry.nodes.push(hop.node);
                    }
                }
                entry.nodes.sort();
            }
            None => out.bgp.push((*ip, outcome.next_hops)),
        }
    }
    out.missing.sort();
    out.missing.dedup();
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::nexthops::from_node;
    use k8s_openapi::api::core::v1::Node;

    fn node(name: &str, ip: &str, ready: bool) -> NodeView {
        let n: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "status": {
                "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}],
                "addresses": [{"type": "InternalIP", "address": ip}],
            }
        }))
        .unwrap();
        from_node(&n)
    }

    fn slice(nodes: &[&str]) -> SliceView {
        let eps: Vec<_> = nodes
            .iter()
            .map(|n| serde_json::json!({"addresses": ["10.244.0.1"], "nodeName": n, "conditions": {"ready": true}}))
            .collect();
        let slice: k8s_openapi::api::discovery::v1::EndpointSlice =
            serde_json::from_value(serde_json::json!({
                "metadata": {"namespace": "shop", "name": "web-x", "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4",
                "endpoints": eps,
            }))
            .unwrap();
        SliceView::from(&slice)
    }

    fn svc(policy: &str, weighted: bool) -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "shop", "name": "web",
                "annotations": {"berth.dev/weighted-ecmp": weighted.to_string()}},
            "spec": {"type": "LoadBalancer", "externalTrafficPolicy": policy},
        }))
        .unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_endpoint_move_moves_the_next_hop_and_weights_follow_pods() {
        let nodes = vec![
            node("n1", "192.168.0.1", true),
            node("n2", "192.168.0.2", true),
            node("n3", "192.168.0.3", true),
        ];
        let vip = [ip("198.51.100.10")];
        let before = compute(
            &svc("Local", true),
            &vip,
            None,
            &nodes,
            &[slice(&["n1", "n1", "n2"])],
            |_| None,
        );
        let hops: Vec<_> = before.bgp[0]
            .1
            .iter()
            .map(|h| (h.node.as_str(), h.weight))
            .collect();
        assert_eq!(hops, [("n1", Some(2)), ("n2", Some(1))]);
        let after = compute(
            &svc("Local", true),
            &vip,
            None,
            &nodes,
            &[slice(&["n1", "n3", "n2"])],
            |_| None,
        );
        let hops: Vec<_> = after.bgp[0]
            .1
            .iter()
            .map(|h| (h.node.as_str(), h.weight))
            .collect();
        assert_eq!(hops, [("n1", Some(1)), ("n2", Some(1)), ("n3", Some(1))]);
    }

    #[test]
    fn a_node_becoming_not_ready_leaves_the_next_hops() {
        let mut nodes = vec![
            node("n1", "192.168.0.1", true),
            node("n2", "192.168.0.2", true),
        ];
        let vip = [ip("198.51.100.10")];
        let c = compute(&svc("Cluster", false), &vip, None, &nodes, &[], |_| None);
        assert_eq!(c.bgp[0].1.len(), 2);
        nodes[1] = node("n2", "192.168.0.2", false);
        let c = compute(&svc("Cluster", false), &vip, None, &nodes, &[], |_| None);
        let left: Vec<_> = c.bgp[0].1.iter().map(|h| h.node.as_str()).collect();
        assert_eq!(left, ["n1"]);
    }

    #[test]
    fn layer2_ips_name_candidates_instead_of_routes() {
        let nodes = vec![
            node("n1", "192.168.0.1", true),
            node("n2", "192.168.0.2", true),
        ];
        let c = compute(
            &svc("Local", false),
            &[ip("192.168.0.240")],
            None,
            &nodes,
            &[slice(&["n2"])],
            |_| Some("eth0".into()),
        );
        assert!(c.bgp.is_empty());
        assert_eq!(
            c.layer2,
            Some(Layer2Assignment {
                ips: vec!["192.168.0.240".into()],
                interface: "eth0".into(),
                nodes: vec!["n2".into()],
            })
        );
    }
}

//! Next hops of a Service: which nodes may receive its traffic, at which address, and with
//! which weight. Pure: the controller turns Nodes and EndpointSlices into [`NodeView`]s and
//! [`Endpoint`]s ([`from_node`], [`endpoints`]) and calls [`next_hops`] for the one Service
//! whose inputs changed.
//!
//! Rules:
//! - `Cluster`: every node that is Ready, schedulable, not labelled
//!   `node.kubernetes.io/exclude-from-external-load-balancers` and matched by the BgpConf node
//!   selector (if any). kube-proxy forwards from there to any Pod.
//! - `Local`: the nodes that hold at least one ready endpoint of the Service and are Ready, not
//!   excluded and matched by the selector; a cordoned node still serves its own Pods, so
//!   schedulability does not matter here. With weighted ECMP, each next hop's weight is its
//!   number of ready endpoints, so traffic follows Pods, not nodes.
//! - The address is the node's first InternalIP of the IP's family; a node without one is
//!   left out and reported, so the controller can say so in an Event.
//! - The result is sorted by address: the same inputs give the same list on every replica.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::discovery::v1::EndpointSlice;

pub use crate::ipam::TrafficPolicy;
use crate::ipam::{Labels, Selector};

/// The label that keeps a node out of every load balancer.
pub use berth_api::names::LABEL_EXCLUDE_FROM_LB as EXCLUDE_LABEL;

/// What the next-hop rules need to know about a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    /// The node's name.
    pub name: String,
    /// Its Ready condition is True.
    pub ready: bool,
    /// `spec.unschedulable` is not set.
    pub schedulable: bool,
    /// Its labels.
    pub labels: Labels,
    /// Its InternalIP addresses, in the order the node reports them.
    pub internal_ips: Vec<IpAddr>,
}

/// One endpoint of the Service: where it runs and whether it is ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The node it runs on (`nodeName`); endpoints without one cannot be placed.
    pub node: Option<String>,
    /// `conditions.ready` (unset counts as ready, as the API says).
    pub ready: bool,
}

/// One next hop.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct NextHop {
    /// The node's address of the IP's family.
    pub address: IpAddr,
    /// Weight for weighted ECMP; `None`: unweighted.
    pub weight: Option<u32>,
    /// The node.
    pub node: String,
}

/// The next hops of one Service IP, and the nodes left out for want of an address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Sorted by address.
    pub next_hops: Vec<NextHop>,
    /// Eligible nodes without an InternalIP of the family.
    pub no_address: Vec<String>,
}

/// How to compute one Service IP's next hops.
#[derive(Debug, Clone, Copy)]
pub struct Rules<'a> {
    /// The Service's traffic policy.
    pub policy: TrafficPolicy,
    /// Whether next hops carry weights (used with `Local`).
    pub weighted: bool,
    /// BgpConf's node selector.
    pub node_selector: Option<&'a Selector>,
    /// The family of the IP (true: IPv4).
    pub ipv4: bool,
}

fn eligible(node: &NodeView, rules: &Rules<'_>) -> bool {
    node.ready
        && !node.labels.contains_key(EXCLUDE_LABEL)
        && rules.node_selector.is_none_or(|s| s.matches(&node.labels))
}

/// The next hops of one Service IP. `nodes` are sorted by name, as the node index and
/// [`crate::index::node_views`] give them: a `Local` Service looks up only its endpoints'
/// nodes (a walk of every node was most of the operator's CPU per endpoint change at 1,000
/// nodes).
pub fn next_hops(nodes: &[NodeView], endpoints: &[Endpoint], rules: &Rules<'_>) -> Outcome {
    debug_assert!(nodes.is_sorted_by(|a, b| a.name <= b.name));
    let mut out = Outcome::default();
    let mut add = |node: &NodeView, weight: Option<u32>| match node
        .internal_ips
        .iter()
        .find(|a| a.is_ipv4() == rules.ipv4)
    {
        Some(address) => out.next_hops.push(NextHop {
            address: *address,
            weight,
            node: node.name.clone(),
        }),
        None => out.no_address.push(node.name.clone()),
    };
    match rules.policy {
        TrafficPolicy::Cluster => {
            for node in nodes.iter().filter(|n| n.schedulable && eligible(n, rules)) {
                add(node, None);
            }
        }
        TrafficPolicy::Local => {
            let mut ready_per_node: BTreeMap<&str, u32> = BTreeMap::new();
            for e in endpoints.iter().filter(|e| e.ready) {
                if let Some(n) = &e.node {
                    *ready_per_node.entry(n.as_str()).or_default() += 1;
                }
            }
            for (name, count) in ready_per_node {
                let Ok(i) = nodes.binary_search_by(|n| n.name.as_str().cmp(name)) else {
                    continue;
                };
                if eligible(&nodes[i], rules) {
                    add(&nodes[i], rules.weighted.then_some(count));
                }
            }
        }
    }
    out.next_hops.sort();
    // Two nodes reporting one address would be one next hop: keep the first by name.
    out.next_hops.dedup_by(|b, a| a.address == b.address);
    out.no_address.sort();
    out
}

/// A Node as the rules see it.
pub fn from_node(node: &Node) -> NodeView {
    let status = node.status.as_ref();
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True");
    let internal_ips = status
        .and_then(|s| s.addresses.as_ref())
        .map(|addrs| {
            addrs
                .iter()
                .filter(|a| a.type_ == "InternalIP")
                .filter_map(|a| a.address.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    NodeView {
        name: node.metadata.name.clone().unwrap_or_default(),
        ready,
        schedulable: !node
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false),
        labels: node.metadata.labels.clone().unwrap_or_default(),
        internal_ips,
    }
}

/// What the next-hop rules read of one EndpointSlice: its address type and its endpoints'
/// nodes and readiness. The slice index keeps these instead of whole slices: at 10,000
/// Services the whole slices were the operator's largest index (heaptrack, scale bench).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceView {
    /// `addressType`: `IPv4`, `IPv6` or `FQDN`.
    pub address_type: String,
    /// The endpoints, in the slice's order.
    pub endpoints: Vec<Endpoint>,
}

impl From<&EndpointSlice> for SliceView {
    fn from(s: &EndpointSlice) -> Self {
        Self {
            address_type: s.address_type.clone(),
            endpoints: s
                .endpoints
                .iter()
                .map(|e| Endpoint {
                    node: e.node_name.clone(),
                    ready: e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true),
                })
                .collect(),
        }
    }
}

/// The endpoints of a Service from its EndpointSlices of one family (a dual-stack Service
/// has a slice per family listing the same Pods: counting both would double the weights).
pub fn endpoints(slices: &[SliceView], ipv4: bool) -> Vec<Endpoint> {
    let family = if ipv4 { "IPv4" } else { "IPv6" };
    slices
        .iter()
        .filter(|s| s.address_type == family)
        .flat_map(|s| s.endpoints.iter().cloned())
        .collect()
}

#[cfg(test)]
mod tests;

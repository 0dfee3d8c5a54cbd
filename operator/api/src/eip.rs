//! `Eip`: an address pool Services draw their external IPs from.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::crd::{ADDRESS_RULE, ADDRESS_RULE_MESSAGE, CIDR_MASKED_MESSAGE, CIDR_MASKED_RULE};

/// Desired state of an address pool.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "berth.dev",
    version = "v1alpha1",
    kind = "Eip",
    plural = "eips",
    shortname = "beip",
    category = "berth",
    status = "EipStatus",
    doc = "An address pool: the external IPs Berth may give to Services of type LoadBalancer.",
    printcolumn(name = "Address", type_ = "string", json_path = ".spec.address"),
    printcolumn(name = "Protocol", type_ = "string", json_path = ".spec.protocol"),
    printcolumn(name = "Usage", type_ = "string", json_path = ".status.usage"),
    printcolumn(name = "Total", type_ = "string", json_path = ".status.poolSize"),
    printcolumn(name = "Ready", type_ = "boolean", json_path = ".status.ready"),
    printcolumn(name = "Disabled", type_ = "boolean", json_path = ".spec.disable", priority = "1"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("!has(self.spec.interface) || self.spec.protocol == 'layer2'")
        .message("spec.interface only applies to layer2 pools: remove it, or set spec.protocol: layer2")
        .field_path(".spec.interface"),
    validation = Rule::new("self.spec.protocol != 'layer2' || has(self.spec.interface)")
        .message("a layer2 pool needs spec.interface: the interface name (e.g. eth0) or can_reach:<ip>")
        .field_path(".spec.interface"),
    validation = Rule::new("!(has(self.spec.namespaces) && has(self.spec.namespaceSelector))")
        .message("set at most one of spec.namespaces and spec.namespaceSelector")
        .field_path(".spec.namespaceSelector"),
)]
#[serde(rename_all = "camelCase")]
pub struct EipSpec {
    /// The addresses of the pool: one IP (`10.0.0.5`), a CIDR (`10.0.0.0/24`, `fd00::/120`) or
    /// an inclusive range (`10.0.0.10-10.0.0.20`), IPv4 or IPv6.
    #[schemars(length(min = 2, max = 100))]
    #[x_kube(
        validation = Rule::new(ADDRESS_RULE).message(ADDRESS_RULE_MESSAGE),
        validation = Rule::new(CIDR_MASKED_RULE).message(CIDR_MASKED_MESSAGE)
    )]
    pub address: String,

    /// How the addresses reach the network: `bgp` (announced to BgpPeers, ECMP over nodes) or
    /// `layer2` (one node answers ARP/NDP for each IP).
    #[serde(default)]
    pub protocol: EipProtocol,

    /// Layer2 only: the interface to answer ARP/NDP on, as a name (`eth0`) or
    /// `can_reach:<ip>` (the interface holding the route to that IP, on each node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(validation = Rule::new(
        "self.startsWith('can_reach:') ? isIP(self.substring(10)) : self.matches('^[A-Za-z0-9_.-]{1,15}$')"
    ).message("spec.interface must be an interface name of at most 15 characters (e.g. eth0) or can_reach:<ip> (e.g. can_reach:192.168.1.1)"))]
    pub interface: Option<String>,

    /// Stop giving out new IPs from this pool. IPs already assigned stay with their Services.
    #[serde(default)]
    pub disable: bool,

    /// Use this pool for Services that match no other pool. At most one pool may be default;
    /// if several are, the operator marks them not ready and uses none as default.
    #[serde(default)]
    pub default: bool,

    /// Order among pools whose selectors match a Service: lower numbers are tried first; pools
    /// of equal priority are tried by name.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000000))]
    pub priority: i32,

    /// Only Services in these namespaces may draw from the pool. Mutually exclusive with
    /// `namespaceSelector`. Unset: every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256), inner(length(max = 253)))]
    pub namespaces: Option<Vec<String>>,

    /// Only Services in namespaces whose labels match may draw from the pool. Unset: every
    /// namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,

    /// Only Services whose labels match may draw from the pool. Unset: every Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_selector: Option<LabelSelector>,

    /// Addresses inside `address` that are never handed out (gateways, reserved hosts), each
    /// an IP, a CIDR or a range like `address`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(max = 100)))]
    #[x_kube(validation = Rule::new(
        "self.all(x, size(x) <= 100 && (isIP(x) || isCIDR(x) || (x.split('-').size() == 2 && isIP(x.split('-')[0]) && isIP(x.split('-')[1]))))"
    ).message("every entry of spec.excludes must be an IP, a CIDR or a range a-b"))]
    pub excludes: Vec<String>,

    /// Hand out the network and broadcast addresses of an IPv4 CIDR too (e.g. `.0` and `.255`
    /// of a /24). Off by default because many clients and routers drop traffic to them.
    #[serde(default)]
    pub use_network_and_broadcast: bool,
}

/// How a pool's addresses are made reachable.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EipProtocol {
    /// Announced over BGP by the bgp-server replicas, one path per eligible node.
    #[default]
    Bgp,
    /// Answered for by one node's agent with ARP (IPv4) or NDP (IPv6).
    Layer2,
}

/// Observed state of an address pool, written by the operator. Small whatever the pool size:
/// the allocation of record is each Service's own status.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EipStatus {
    /// Number of addresses the pool can hand out (excludes and skipped network/broadcast
    /// addresses not counted), in decimal: exact even for an IPv6 /64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_size: Option<String>,
    /// Number of addresses assigned to Services, in decimal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<String>,
    /// First address of the pool.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "firstIP")]
    pub first_ip: Option<String>,
    /// Last address of the pool.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "lastIP")]
    pub last_ip: Option<String>,
    /// Whether the pool is valid and can hand out addresses (see conditions when not).
    #[serde(default)]
    pub ready: bool,
    /// The `.metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Why the pool is or is not ready: overlap with another pool or a node address, a layer2
    /// address outside the interface's subnet, an edit refused because it strands IPs in use.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

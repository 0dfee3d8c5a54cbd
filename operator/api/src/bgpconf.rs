//! `BgpConf`: the cluster's BGP identity and how ECMP is announced. A singleton named `default`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Global BGP settings shared by every bgp-server replica.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "berth.dev",
    version = "v1alpha1",
    kind = "BgpConf",
    plural = "bgpconfs",
    shortname = "bgpc",
    category = "berth",
    status = "BgpConfStatus",
    doc = "Berth's global BGP settings: local ASN, router ID, listen port, graceful restart, ECMP mode. Only the object named default is used.",
    printcolumn(name = "ASN", type_ = "integer", json_path = ".spec.asn"),
    printcolumn(name = "Router-ID", type_ = "string", json_path = ".spec.routerId"),
    printcolumn(name = "Port", type_ = "integer", json_path = ".spec.listenPort"),
    printcolumn(name = "ECMP", type_ = "string", json_path = ".spec.ecmpMode"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name == 'default'")
        .message("BgpConf is a singleton: name it default")
        .field_path(".metadata.name"),
)]
#[serde(rename_all = "camelCase")]
pub struct BgpConfSpec {
    /// Local autonomous system number (4-byte, 1-4294967295; 23456 is AS_TRANS and reserved).
    #[schemars(range(min = 1, max = 4294967295u32))]
    #[x_kube(validation = Rule::new("self != 23456").message("spec.asn 23456 is AS_TRANS, reserved by RFC 6793: choose another ASN"))]
    pub asn: u32,

    /// BGP router ID (an IPv4 address). Unset: each replica uses its node's IPv4 InternalIP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 15))]
    #[x_kube(validation = Rule::new("isIP(self) && ip(self).family() == 4 && self != '0.0.0.0'")
        .message("spec.routerId must be a non-zero IPv4 address such as 10.0.0.1"))]
    pub router_id: Option<String>,

    /// TCP port the speakers listen on for incoming BGP sessions; 0 means never listen and
    /// only connect out (coexists with Calico or kube-router already bound to 179).
    #[serde(default = "default_listen_port")]
    #[schemars(range(min = 0, max = 65535))]
    pub listen_port: i32,

    /// Graceful restart (RFC 4724): peers keep forwarding on Berth's routes while a speaker
    /// restarts.
    #[serde(default)]
    pub graceful_restart: GracefulRestart,

    /// How ECMP is announced: `addPath` (every replica announces every next hop with ADD-PATH)
    /// or `self` (each replica announces itself as the only next hop, for routers without
    /// ADD-PATH; ECMP then comes from peering with several replicas).
    #[serde(default)]
    pub ecmp_mode: EcmpMode,

    /// Only nodes matching this selector are next hops for `externalTrafficPolicy: Cluster`
    /// Services. Unset: every ready, schedulable node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_hop_node_selector: Option<LabelSelector>,

    /// Weight each next hop by its number of ready endpoints (link-bandwidth community) for
    /// `externalTrafficPolicy: Local` Services. A Service may override it with the
    /// `berth.dev/weighted-ecmp` annotation.
    #[serde(default)]
    pub weighted_ecmp: bool,
}

fn default_listen_port() -> i32 {
    179
}

/// Graceful restart settings (RFC 4724).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GracefulRestart {
    /// Advertise the graceful restart capability.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Seconds a peer keeps Berth's routes after the session drops (1-4095).
    #[serde(default = "default_restart_time")]
    #[schemars(range(min = 1, max = 4095))]
    pub restart_time: u16,
}

impl Default for GracefulRestart {
    fn default() -> Self {
        Self {
            enabled: true,
            restart_time: default_restart_time(),
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_restart_time() -> u16 {
    120
}

/// How ECMP across nodes is announced.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EcmpMode {
    /// One path per next hop, distinguished by ADD-PATH path IDs (RFC 7911).
    #[default]
    #[serde(rename = "addPath")]
    AddPath,
    /// Each replica announces only its own node as next hop.
    #[serde(rename = "self")]
    SelfNextHop,
}

/// Observed state of the BgpConf.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BgpConfStatus {
    /// The `.metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Whether the settings were accepted and pushed to the speakers, and why not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

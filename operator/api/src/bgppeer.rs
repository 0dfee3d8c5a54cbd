//! `BgpPeer`: a router the bgp-server replicas peer with.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A BGP neighbour (switch or router) that learns Service IPs from Berth.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "berth.dev",
    version = "v1alpha1",
    kind = "BgpPeer",
    plural = "bgppeers",
    shortname = "bgpp",
    category = "berth",
    status = "BgpPeerStatus",
    doc = "A BGP neighbour that Berth's speakers announce Service IPs to.",
    printcolumn(name = "Peer", type_ = "string", json_path = ".spec.address"),
    printcolumn(name = "ASN", type_ = "integer", json_path = ".spec.peerAsn"),
    printcolumn(name = "Sessions", type_ = "string", json_path = ".status.sessionSummary", description = "sessions established / sessions configured"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("!has(self.spec.keepaliveTime) || (self.spec.holdTime == 0 ? self.spec.keepaliveTime == 0 : self.spec.keepaliveTime < self.spec.holdTime)")
        .message("spec.keepaliveTime must be less than spec.holdTime (and 0 when holdTime is 0); a third of holdTime is usual")
        .field_path(".spec.keepaliveTime"),
    validation = Rule::new("!(has(self.spec.passive) && self.spec.passive && has(self.spec.ebgpMultihop))")
        .message("spec.ebgpMultihop sets the TTL of connections Berth opens; a passive peer opens none: remove one of them")
        .field_path(".spec.ebgpMultihop"),
)]
#[serde(rename_all = "camelCase")]
pub struct BgpPeerSpec {
    /// The neighbour's IP address (IPv4 or IPv6).
    #[schemars(length(min = 2, max = 45))]
    #[x_kube(validation = Rule::new("isIP(self)").message("spec.address must be the neighbour's IP address, e.g. 192.168.0.1 or fd00::1"))]
    pub address: String,

    /// The neighbour's autonomous system number (4-byte, 1-4294967295). Equal to BgpConf's
    /// `asn` makes the session iBGP.
    #[schemars(range(min = 1, max = 4294967295u32))]
    #[x_kube(validation = Rule::new("self != 23456").message("spec.peerAsn 23456 is AS_TRANS, reserved by RFC 6793: use the peer's real 4-byte ASN"))]
    pub peer_asn: u32,

    /// The neighbour's TCP port.
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,

    /// TCP MD5 password (RFC 2385), read from a Secret; never written in this object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,

    /// Proposed hold time in seconds: 0 (no keepalives, session never times out) or 3-65535.
    #[serde(default = "default_hold_time")]
    #[schemars(range(min = 0, max = 65535))]
    #[x_kube(validation = Rule::new("self == 0 || self >= 3").message("spec.holdTime must be 0 or at least 3 seconds (RFC 4271)"))]
    pub hold_time: i32,

    /// Seconds between keepalives. Unset: a third of the negotiated hold time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 21845))]
    pub keepalive_time: Option<i32>,

    /// TTL of outgoing packets for eBGP peers more than one hop away (2-255). Unset: 1 for
    /// eBGP, 255 for iBGP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 255))]
    pub ebgp_multihop: Option<i32>,

    /// Never connect out; wait for the neighbour to connect (needs BgpConf `listenPort` > 0).
    #[serde(default)]
    pub passive: bool,

    /// Address families to negotiate. Unset: both IPv4 and IPv6 unicast.
    #[serde(default = "default_families")]
    #[schemars(length(min = 1, max = 2))]
    #[x_kube(validation = Rule::new("self.all(f, self.exists_one(g, g == f))").message("spec.families lists a family twice"))]
    pub families: Vec<AddressFamily>,

    /// At most this many paths per prefix with ADD-PATH (match the switch's ECMP width).
    /// Unset: one path per eligible node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 255))]
    pub add_path_send_max: Option<i32>,

    /// BGP communities attached to every route sent to this peer: `65000:100` or a well-known
    /// name (`no-export`, `no-advertise`, `no-export-subconfed`, `blackhole`,
    /// `graceful-shutdown`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 32)))]
    #[x_kube(validation = Rule::new(
        "self.all(c, size(c) <= 32 && (c.matches('^[0-9]{1,5}:[0-9]{1,5}$') ? (int(c.split(':')[0]) <= 65535 && int(c.split(':')[1]) <= 65535) : c in ['no-export', 'no-advertise', 'no-export-subconfed', 'blackhole', 'graceful-shutdown']))"
    ).message("spec.communities entries must be ASN:value with both parts 0-65535 (e.g. 65000:100) or a well-known name such as no-export"))]
    pub communities: Vec<String>,

    /// Large communities (RFC 8092) attached to every route: `global:local1:local2`, each part
    /// 0-4294967295.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 40)))]
    #[x_kube(validation = Rule::new(
        "self.all(c, size(c) <= 40 && c.matches('^[0-9]{1,10}:[0-9]{1,10}:[0-9]{1,10}$') && c.split(':').all(p, int(p) <= 4294967295))"
    ).message("spec.largeCommunities entries must be global:local1:local2, each 0-4294967295 (e.g. 65000:1:2)"))]
    pub large_communities: Vec<String>,

    /// LOCAL_PREF attached to routes sent to this peer; only sent on iBGP sessions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 4294967295u32))]
    pub local_pref: Option<u32>,

    /// Only bgp-server replicas on nodes matching this selector peer with this neighbour.
    /// Unset: every replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
}

fn default_port() -> i32 {
    179
}

fn default_hold_time() -> i32 {
    90
}

fn default_families() -> Vec<AddressFamily> {
    vec![AddressFamily::Ipv4Unicast, AddressFamily::Ipv6Unicast]
}

/// Where a TCP MD5 password is stored.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace of the Secret. Unset: the namespace Berth is installed in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
    /// Key in the Secret's data holding the password.
    #[serde(default = "default_password_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_password_key() -> String {
    "password".to_owned()
}

/// A BGP address family (AFI/SAFI).
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
pub enum AddressFamily {
    /// IPv4 unicast (AFI 1, SAFI 1).
    #[serde(rename = "ipv4-unicast")]
    Ipv4Unicast,
    /// IPv6 unicast (AFI 2, SAFI 1).
    #[serde(rename = "ipv6-unicast")]
    Ipv6Unicast,
}

/// Observed state of a BgpPeer: one entry per bgp-server replica that should peer with it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BgpPeerStatus {
    /// `established/total`, e.g. `2/3`, for `kubectl get bgppeer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_summary: Option<String>,
    /// One entry per replica that should peer with this neighbour.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sessions: Vec<PeerSession>,
    /// The `.metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Whether the peer's configuration was accepted (e.g. its Secret exists), and why not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// One replica's session with the neighbour.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeerSession {
    /// The bgp-server replica (Pod name).
    pub speaker: String,
    /// The node the replica runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// RFC 4271 session state.
    pub state: SessionState,
    /// When the session last reached Established.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub established_since: Option<Time>,
    /// Prefixes announced to the neighbour over this session, as last read from the speaker:
    /// every 60 s while its Watch stream is open (session state changes are written as they
    /// happen), every 10 s from a speaker without one.
    #[serde(default)]
    pub prefixes_announced: i64,
    /// Whether ADD-PATH send was negotiated; without it ECMP through this session is degraded
    /// to one path per prefix.
    #[serde(default)]
    pub add_path: bool,
    /// The last error (NOTIFICATION sent or received, connection failure), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// RFC 4271 session states.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SessionState {
    /// Not trying to connect (disabled, or waiting after an error).
    Idle,
    /// Opening a TCP connection.
    Connect,
    /// Waiting for the neighbour to connect, or to retry.
    Active,
    /// OPEN sent, waiting for the neighbour's.
    OpenSent,
    /// OPENs exchanged, waiting for a KEEPALIVE.
    OpenConfirm,
    /// Up: routes are being exchanged.
    Established,
}

//! What the agent must do on this node: placeholder shape agreed with the Layer2 branch
//! (replaced by that branch's module on merge).

use std::collections::BTreeSet;
use std::net::IpAddr;

/// The agent's input.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// IPs this node accepts traffic for (local routes).
    pub local_ips: BTreeSet<IpAddr>,
    /// Services with Layer2 IPs.
    pub layer2: Vec<Layer2Service>,
}

/// One Service's Layer2 IPs and who may answer for them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layer2Service {
    /// `namespace/name`.
    pub service: String,
    /// The Layer2 IPs.
    pub ips: Vec<IpAddr>,
    /// Interface name or `can_reach:<ip>`.
    pub interface: String,
    /// Candidate nodes.
    pub candidates: BTreeSet<String>,
}

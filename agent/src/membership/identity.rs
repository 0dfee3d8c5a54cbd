//! Who a member is: node name, gossip address and a boot number that makes a restart win.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// One agent's identity in the SWIM cluster.
///
/// foca keys members by [`foca::Identity::addr`] (the gossip address): a restarted agent on the
/// same address comes back with a larger `boot` (its start time in milliseconds) and replaces its
/// old, dead identity at once. When the cluster declares a live agent down (a false suspicion, a
/// cut link), foca calls [`foca::Identity::renew`], which bumps `boot`, and the agent rejoins
/// without a restart.
///
/// `unable` lists the Layer2 interface specs this agent cannot answer on now (link down or
/// missing, or within its hold-down): the others leave it out of the candidates of the IPs
/// announced there. It changes through foca's `change_identity` with a bumped `boot`, which
/// the others apply as a rename of the same member (it never looks down to them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeId {
    /// The Kubernetes node name (what the Layer2 election hashes).
    pub name: String,
    /// Where other agents send this agent's datagrams.
    pub addr: SocketAddr,
    /// Start time in ms since the epoch, bumped on each rejoin and each change of `unable`.
    pub boot: u64,
    /// Interface specs this agent cannot answer ARP/NDP on now.
    pub unable: BTreeSet<String>,
}

impl NodeId {
    /// A placeholder for an agent known only by address (a seed): announcements to it are
    /// accepted by whoever listens there, whatever its name.
    pub fn seed(addr: SocketAddr) -> Self {
        Self {
            name: String::new(),
            addr,
            boot: 0,
            unable: BTreeSet::new(),
        }
    }
}

impl foca::Identity for NodeId {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(Self {
            name: self.name.clone(),
            addr: self.addr,
            boot: self.boot.wrapping_add(1),
            unable: self.unable.clone(),
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.boot > adversary.boot
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use foca::Identity;

    #[test]
    fn a_renewed_or_restarted_identity_wins_over_the_old_one() {
        let old = NodeId {
            name: "n1".into(),
            addr: "127.0.0.1:7946".parse().unwrap(),
            boot: 1000,
            unable: BTreeSet::from(["eth0".to_owned()]),
        };
        let renewed = old.renew().unwrap();
        assert_eq!(renewed.addr(), old.addr());
        assert_eq!(renewed.name, old.name);
        assert_eq!(
            renewed.unable, old.unable,
            "a renewal keeps what it cannot serve"
        );
        assert!(renewed.win_addr_conflict(&old));
        assert!(!old.win_addr_conflict(&renewed));
    }
}

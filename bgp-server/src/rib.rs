//! RIB-out: what each peer should hold, and the smallest change that gets it there.
//!
//! The desired state is a set of prefixes, each with a set of next hops and the attributes of
//! each path. One [`AdjRibOut`] per peer remembers what was sent to that peer and turns a new
//! desired state (whole, or one prefix) into the [`Change`]s to send: nothing when nothing
//! changed. Pure logic: the session task owns one per peer and hands changes to the encoder.
//!
//! With ADD-PATH, every next hop is its own path with a path ID that stays the same for as long
//! as that next hop stays, capped at the peer's send-max (next hops already sent are kept
//! first, so a cap never causes churn). Without ADD-PATH, one deterministic path per prefix is
//! sent (the highest weight, then the lowest next hop) and the peer is marked ECMP-degraded.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

/// An ADD-PATH path identifier (RFC 7911). 0 is used on sessions without ADD-PATH.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PathId(pub u32);

/// Attributes of one path that Berth controls.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PathAttrs {
    /// Relative weight for weighted ECMP (link-bandwidth community); `None`: unweighted.
    pub weight: Option<u32>,
    /// Standard communities.
    pub communities: Vec<u32>,
    /// Large communities.
    pub large_communities: Vec<(u32, u32, u32)>,
    /// LOCAL_PREF (iBGP only; the encoder drops it on eBGP).
    pub local_pref: Option<u32>,
}

/// Next hops of one prefix, with each path's attributes.
pub type Paths = BTreeMap<IpAddr, PathAttrs>;

/// The whole desired state: every prefix to announce.
pub type Desired = BTreeMap<IpNet, Paths>;

/// One thing to tell a peer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Change {
    /// Announce (or replace) a path.
    Announce {
        /// The prefix.
        prefix: IpNet,
        /// Its path ID (0 without ADD-PATH).
        path_id: PathId,
        /// The next hop.
        next_hop: IpAddr,
        /// The attributes.
        attrs: PathAttrs,
    },
    /// Withdraw a path.
    Withdraw {
        /// The prefix.
        prefix: IpNet,
        /// Its path ID (0 without ADD-PATH).
        path_id: PathId,
    },
}

/// What was sent to one peer, and how to send the next state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdjRibOut {
    add_path: bool,
    send_max: Option<usize>,
    sent: BTreeMap<IpNet, BTreeMap<PathId, (IpAddr, PathAttrs)>>,
    /// Prefixes that had more next hops than this peer could be sent.
    degraded: BTreeSet<IpNet>,
}

impl AdjRibOut {
    /// An empty RIB-out for a peer, given whether ADD-PATH send was negotiated and the cap on
    /// paths per prefix.
    pub fn new(add_path: bool, send_max: Option<usize>) -> Self {
        AdjRibOut {
            add_path,
            send_max: send_max.map(|m| m.max(1)),
            ..Default::default()
        }
    }

    /// Whether some prefix has more next hops than reach this peer: without ADD-PATH, "ECMP
    /// degraded: peer did not negotiate ADD-PATH"; with it, the send-max cap is biting.
    pub fn ecmp_degraded(&self) -> bool {
        !self.degraded.is_empty()
    }

    /// Whether ADD-PATH is in use towards this peer.
    pub fn add_path(&self) -> bool {
        self.add_path
    }

    /// Number of prefixes announced.
    pub fn prefixes(&self) -> usize {
        self.sent.len()
    }

    /// Number of paths announced.
    pub fn paths(&self) -> usize {
        self.sent.values().map(BTreeMap::len).sum()
    }

    /// What was sent for a prefix: path ID → next hop.
    pub fn sent(&self, prefix: &IpNet) -> BTreeMap<PathId, IpAddr> {
        self.sent
            .get(prefix)
            .map(|m| m.iter().map(|(id, (nh, _))| (*id, *nh)).collect())
            .unwrap_or_default()
    }

    /// Brings the peer to `desired`: withdraws what is gone, announces what is new or changed.
    pub fn sync(&mut self, desired: &Desired) -> Vec<Change> {
        let mut out = Vec::new();
        let gone: Vec<IpNet> = self
            .sent
            .keys()
            .filter(|p| !desired.contains_key(p))
            .copied()
            .collect();
        for prefix in gone {
            self.set_prefix(prefix, None, &mut out);
        }
        for (prefix, paths) in desired {
            self.set_prefix(*prefix, Some(paths), &mut out);
        }
        out
    }

    /// Brings one prefix to `paths` (`None` or empty: withdraw it); the incremental path.
    pub fn update(&mut self, prefix: IpNet, paths: Option<&Paths>) -> Vec<Change> {
        let mut out = Vec::new();
        self.set_prefix(prefix, paths, &mut out);
        out
    }

    fn set_prefix(&mut self, prefix: IpNet, paths: Option<&Paths>, out: &mut Vec<Change>) {
        let paths = paths.filter(|p| !p.is_empty());
        let current = self.sent.remove(&prefix).unwrap_or_default();
        let Some(paths) = paths else {
            self.degraded.remove(&prefix);
            out.extend(
                current
                    .into_keys()
                    .map(|path_id| Change::Withdraw { prefix, path_id }),
            );
            return;
        };
        let chosen = self.choose(paths, &current);
        if chosen.len() < paths.len() {
            self.degraded.insert(prefix);
        } else {
            self.degraded.remove(&prefix);
        }
        let mut next: BTreeMap<PathId, (IpAddr, PathAttrs)> = BTreeMap::new();
        if self.add_path {
            // Keep the ID of every next hop that stays; give new ones the lowest free IDs.
            let mut free_ids = (1u32..).map(PathId);
            let mut used: BTreeSet<PathId> = BTreeSet::new();
            for (id, (nh, _)) in &current {
                if chosen.contains(nh) {
                    used.insert(*id);
                    next.insert(*id, (*nh, paths.get(nh).cloned().unwrap_or_default()));
                }
            }
            let kept: BTreeSet<IpAddr> = next.values().map(|(nh, _)| *nh).collect();
            for nh in chosen.iter().filter(|nh| !kept.contains(nh)) {
                let Some(id) = free_ids.find(|id| !used.contains(id)) else {
                    break;
                };
                used.insert(id);
                next.insert(id, (*nh, paths.get(nh).cloned().unwrap_or_default()));
            }
        } else if let Some(nh) = chosen.first() {
            next.insert(PathId(0), (*nh, paths.get(nh).cloned().unwrap_or_default()));
        }
        for (id, _) in current.iter().filter(|(id, _)| !next.contains_key(id)) {
            out.push(Change::Withdraw {
                prefix,
                path_id: *id,
            });
        }
        for (id, (nh, attrs)) in &next {
            if current.get(id) != Some(&(*nh, attrs.clone())) {
                out.push(Change::Announce {
                    prefix,
                    path_id: *id,
                    next_hop: *nh,
                    attrs: attrs.clone(),
                });
            }
        }
        self.sent.insert(prefix, next);
    }

    /// The next hops that reach this peer, in a deterministic order.
    fn choose(
        &self,
        paths: &Paths,
        current: &BTreeMap<PathId, (IpAddr, PathAttrs)>,
    ) -> Vec<IpAddr> {
        let sent: BTreeSet<IpAddr> = current.values().map(|(nh, _)| *nh).collect();
        let mut all: Vec<IpAddr> = paths.keys().copied().collect();
        if !self.add_path {
            // Highest weight, then lowest address: the same answer on every replica.
            all.sort_by_key(|nh| {
                (
                    std::cmp::Reverse(paths.get(nh).and_then(|a| a.weight).unwrap_or(0)),
                    *nh,
                )
            });
            all.truncate(1);
            return all;
        }
        let cap = self.send_max.unwrap_or(usize::MAX);
        // Already-sent next hops first, so a cap never swaps one announced path for another.
        all.sort_by_key(|nh| (!sent.contains(nh), *nh));
        all.truncate(cap);
        all.sort();
        all
    }
}

#[cfg(test)]
mod tests;

//! RIB-out: what each peer should hold, and the smallest change that gets it there.
//!
//! The desired state is a set of prefixes, each with a set of next hops and the attributes of
//! each path. It is published as an immutable snapshot (`Arc<Desired>`) shared by every
//! session; one [`AdjRibOut`] per peer and family remembers which snapshot that peer holds and
//! turns a new one into the [`Change`]s to send, in bounded batches, and nothing when nothing
//! changed. Pure logic: the session task owns one per family and hands changes to the encoder.
//!
//! Memory is the point of this shape: a peer's RIB-out is the snapshot it was last brought to
//! (shared, not copied), plus the few prefixes where a send-max cap chose a subset. Path
//! attributes are shared (`Arc`) between the paths that carry the same set.
//!
//! With ADD-PATH, every next hop is its own path whose ID is derived from the next hop alone
//! (the IPv4 address, or the low 32 bits of the IPv6 one), so it stays the same for as long as
//! that next hop stays, across restarts and on every replica. Two IPv6 next hops of one prefix
//! with the same low 32 bits take the next free ID in address order. Paths are capped at the
//! peer's send-max, keeping next hops already sent first, so a cap never causes churn. Without
//! ADD-PATH, one deterministic path per prefix is sent (the highest weight, then the lowest
//! next hop) and the peer is marked ECMP-degraded.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

mod desired;
pub use desired::{CHUNK, Desired};

/// An ADD-PATH path identifier (RFC 7911). 0 is used on sessions without ADD-PATH.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PathId(pub u32);

impl PathId {
    /// The ID a next hop asks for: its IPv4 address, or the low 32 bits of its IPv6 address;
    /// never 0.
    fn preferred(nh: IpAddr) -> PathId {
        let raw = match nh {
            IpAddr::V4(a) => u32::from(a),
            IpAddr::V6(a) => (u128::from(a) & 0xffff_ffff) as u32,
        };
        PathId(raw.max(1))
    }
}

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

/// Next hops of one prefix, each with its (shared) attributes: a small sorted list, because
/// most prefixes have a handful of next hops and a tree per prefix would cost ten times more.
/// The list itself is shared: routes built through one [`Interner`] with the same next hops
/// and attributes hold one list between them (a table entry is then 32 bytes), and an edit
/// copies the list first if it is shared.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Paths(Arc<Vec<(IpAddr, Arc<PathAttrs>)>>);

impl Default for Paths {
    fn default() -> Self {
        Paths::new()
    }
}

impl Paths {
    /// No paths.
    pub fn new() -> Paths {
        Paths(Arc::new(Vec::new()))
    }

    fn list(&mut self) -> &mut Vec<(IpAddr, Arc<PathAttrs>)> {
        Arc::make_mut(&mut self.0)
    }

    /// Adds or replaces the path through `next_hop`.
    pub fn insert(&mut self, next_hop: IpAddr, attrs: impl Into<Arc<PathAttrs>>) {
        let attrs = attrs.into();
        match self.0.binary_search_by_key(&next_hop, |(nh, _)| *nh) {
            Ok(i) => {
                if let Some(slot) = self.list().get_mut(i) {
                    slot.1 = attrs;
                }
            }
            Err(i) => self.list().insert(i, (next_hop, attrs)),
        }
    }

    /// Removes the path through `next_hop`.
    pub fn remove(&mut self, next_hop: &IpAddr) -> Option<Arc<PathAttrs>> {
        let i = self.0.binary_search_by_key(next_hop, |(nh, _)| *nh).ok()?;
        Some(self.list().remove(i).1)
    }

    /// The attributes of the path through `next_hop`.
    pub fn get(&self, next_hop: &IpAddr) -> Option<&Arc<PathAttrs>> {
        let i = self.0.binary_search_by_key(next_hop, |(nh, _)| *nh).ok()?;
        self.0.get(i).map(|(_, a)| a)
    }

    /// Whether there is a path through `next_hop`.
    pub fn contains_key(&self, next_hop: &IpAddr) -> bool {
        self.get(next_hop).is_some()
    }

    /// Paths in next-hop order.
    pub fn iter(&self) -> impl Iterator<Item = (IpAddr, &Arc<PathAttrs>)> {
        self.0.iter().map(|(nh, a)| (*nh, a))
    }

    /// Next hops in order.
    pub fn keys(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.0.iter().map(|(nh, _)| *nh)
    }

    /// Attributes in next-hop order.
    pub fn values(&self) -> impl Iterator<Item = &Arc<PathAttrs>> {
        self.0.iter().map(|(_, a)| a)
    }

    /// Number of paths.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Frees spare capacity (after building a large state).
    pub fn shrink_to_fit(&mut self) {
        if self.0.capacity() > self.0.len() {
            self.list().shrink_to_fit();
        }
    }
}

impl<A: Into<Arc<PathAttrs>>> FromIterator<(IpAddr, A)> for Paths {
    fn from_iter<I: IntoIterator<Item = (IpAddr, A)>>(iter: I) -> Self {
        let mut p = Paths::new();
        for (nh, a) in iter {
            p.insert(nh, a);
        }
        p
    }
}

/// Shares equal attributes, and equal lists of paths, between the routes of a state while it
/// is built: 100,000 routes over the same nodes hold one list, not 100,000.
#[derive(Debug, Default)]
pub struct Interner {
    attrs: HashMap<PathAttrs, Arc<PathAttrs>>,
    paths: HashSet<Paths>,
}

impl Interner {
    /// The shared copy of `attrs`.
    pub fn attrs(&mut self, attrs: PathAttrs) -> Arc<PathAttrs> {
        if let Some(a) = self.attrs.get(&attrs) {
            return a.clone();
        }
        let shared = Arc::new(attrs.clone());
        self.attrs.insert(attrs, shared.clone());
        shared
    }

    /// The shared copy of `paths` (spare capacity freed first).
    pub fn paths(&mut self, mut paths: Paths) -> Paths {
        if let Some(p) = self.paths.get(&paths) {
            return p.clone();
        }
        paths.shrink_to_fit();
        self.paths.insert(paths.clone());
        paths
    }
}

/// A published desired state: what every session brings its peer to.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Every prefix to announce.
    pub routes: Arc<Desired>,
    /// Increases with every publication.
    pub version: u64,
    /// Set when these routes differ from those of version `delta.from` only in
    /// `delta.prefixes`: a session at that version syncs just those, not the whole table.
    pub delta: Option<Delta>,
}

/// The prefixes that changed since an earlier version.
#[derive(Debug, Clone)]
pub struct Delta {
    /// The version the change was made on.
    pub from: u64,
    /// The prefixes added, changed or removed.
    pub prefixes: Arc<[IpNet]>,
}

impl Snapshot {
    /// The next snapshot: `routes` with everything possibly changed.
    pub fn next(&self, routes: Arc<Desired>) -> Snapshot {
        Snapshot {
            routes,
            version: self.version + 1,
            delta: None,
        }
    }

    /// The next snapshot, which differs from this one only in `prefixes`.
    pub fn next_delta(&self, routes: Arc<Desired>, prefixes: Vec<IpNet>) -> Snapshot {
        Snapshot {
            routes,
            version: self.version + 1,
            delta: Some(Delta {
                from: self.version,
                prefixes: prefixes.into(),
            }),
        }
    }
}

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
        attrs: Arc<PathAttrs>,
    },
    /// Withdraw a path.
    Withdraw {
        /// The prefix.
        prefix: IpNet,
        /// Its path ID (0 without ADD-PATH).
        path_id: PathId,
    },
}

/// Which prefixes a RIB-out carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// IPv4 prefixes only.
    Ipv4,
    /// IPv6 prefixes only.
    Ipv6,
    /// Every prefix (tests, single-family tools).
    All,
}

impl Scope {
    fn covers(self, prefix: &IpNet) -> bool {
        matches!(
            (self, prefix),
            (Scope::All, _) | (Scope::Ipv4, IpNet::V4(_)) | (Scope::Ipv6, IpNet::V6(_))
        )
    }
}

/// A sync in progress: the snapshot being moved to and the last prefix already moved.
#[derive(Debug, Clone)]
struct Progress {
    goal: Arc<Desired>,
    done_up_to: Option<IpNet>,
    /// Every path is announced again, changed or not (a ROUTE-REFRESH, new export attributes).
    resend: bool,
}

/// What one peer holds for one family, and how to bring it to the next snapshot.
#[derive(Debug, Clone)]
pub struct AdjRibOut {
    scope: Scope,
    add_path: bool,
    send_max: Option<usize>,
    /// The snapshot the peer holds (for prefixes after `progress.done_up_to`, if any).
    last: Arc<Desired>,
    progress: Option<Progress>,
    /// Everything is to be announced again once the sync under way (if any) is done.
    resend_due: bool,
    /// Next hops sent for prefixes where the send-max cap chose a subset.
    capped: BTreeMap<IpNet, Vec<IpAddr>>,
    prefixes: usize,
    paths: usize,
    /// Prefixes that have more next hops than reach this peer.
    degraded: usize,
}

impl AdjRibOut {
    /// An empty RIB-out for a peer, given the prefixes it carries, whether ADD-PATH send was
    /// negotiated and the cap on paths per prefix.
    pub fn new(scope: Scope, add_path: bool, send_max: Option<usize>) -> Self {
        AdjRibOut {
            scope,
            add_path,
            send_max: send_max.map(|m| m.max(1)),
            last: Arc::new(Desired::new()),
            progress: None,
            resend_due: false,
            capped: BTreeMap::new(),
            prefixes: 0,
            paths: 0,
            degraded: 0,
        }
    }

    /// Whether some prefix has more next hops than reach this peer: without ADD-PATH, "ECMP
    /// degraded: peer did not negotiate ADD-PATH"; with it, the send-max cap is biting.
    pub fn ecmp_degraded(&self) -> bool {
        self.degraded > 0
    }

    /// Whether ADD-PATH is in use towards this peer.
    pub fn add_path(&self) -> bool {
        self.add_path
    }

    /// Number of prefixes announced.
    pub fn prefixes(&self) -> usize {
        self.prefixes
    }

    /// Number of paths announced.
    pub fn paths(&self) -> usize {
        self.paths
    }

    /// The paths the peer holds for `prefix` in this RIB's view.
    fn held(&self, prefix: &IpNet) -> Option<&Paths> {
        let snapshot = match &self.progress {
            Some(p) if p.done_up_to.is_some_and(|d| *prefix <= d) => &p.goal,
            _ => &self.last,
        };
        snapshot.get(prefix).filter(|_| self.scope.covers(prefix))
    }

    /// What was sent for a prefix: path ID → next hop.
    pub fn sent(&self, prefix: &IpNet) -> BTreeMap<PathId, IpAddr> {
        match self.held(prefix) {
            Some(paths) => self
                .with_ids(&self.chosen_held(prefix, paths))
                .into_iter()
                .collect(),
            None => BTreeMap::new(),
        }
    }

    /// Brings the peer towards `target`: returns the next batch of changes (about `budget`;
    /// one prefix's changes are never split), or nothing once the peer holds `target`. Call
    /// again until it returns nothing; a sync already under way is finished first.
    pub fn sync(&mut self, target: &Arc<Desired>, budget: usize) -> Vec<Change> {
        let mut out = Vec::new();
        loop {
            let progress = match self.progress.take() {
                Some(p) => p,
                None if Arc::ptr_eq(&self.last, target) && !self.resend_due => return out,
                None => Progress {
                    goal: target.clone(),
                    done_up_to: None,
                    resend: std::mem::take(&mut self.resend_due),
                },
            };
            let finished = self.walk(progress, budget, &mut out);
            if !finished || !out.is_empty() {
                return out;
            }
        }
    }

    /// Brings the peer from the snapshot it holds to `target`, which differs from it only in
    /// `prefixes`: O(changed prefixes), not O(table). `None` when a batched sync is under way
    /// (finish that with [`AdjRibOut::sync`] instead).
    pub fn sync_delta(&mut self, target: &Arc<Desired>, prefixes: &[IpNet]) -> Option<Vec<Change>> {
        if self.progress.is_some() || self.resend_due {
            return None;
        }
        let old = self.last.clone();
        let mut out = Vec::new();
        for prefix in prefixes {
            if !self.scope.covers(prefix) {
                continue;
            }
            let (before, after) = (old.get(prefix), target.get(prefix));
            // Equal paths send nothing, capped or not (the cap keeps what was sent).
            if before == after {
                continue;
            }
            self.move_prefix(*prefix, before, after, false, &mut out);
        }
        self.last = target.clone();
        Some(out)
    }

    /// Announces every path again with the next [`AdjRibOut::sync`], changed or not, once a
    /// sync under way is done: for a ROUTE-REFRESH, or when what a path carries for this peer
    /// changed. What the peer holds is kept, so a path it holds that is no longer wanted is
    /// still withdrawn (forgetting it, as a fresh RIB-out would, left it at the peer).
    pub fn resend_all(&mut self) {
        self.resend_due = true;
    }

    /// Moves prefixes after the cursor from `last` to the goal until the budget is spent.
    /// Returns whether the goal is reached.
    fn walk(&mut self, mut progress: Progress, budget: usize, out: &mut Vec<Change>) -> bool {
        let old = self.last.clone();
        let goal = progress.goal.clone();
        // Only prefixes whose paths differ: a prefix with equal paths sends nothing, capped or
        // not (the cap keeps what was sent), and chunks both snapshots share are not read.
        // A resend visits every prefix of either.
        let after = progress.done_up_to;
        let prefixes: Box<dyn Iterator<Item = _>> = if progress.resend {
            Box::new(old.merged(&goal, after.as_ref()))
        } else {
            Box::new(old.diff(&goal, after.as_ref()))
        };
        for (prefix, before, after) in prefixes {
            if out.len() >= budget {
                self.progress = Some(progress);
                return false;
            }
            progress.done_up_to = Some(prefix);
            if self.scope.covers(&prefix) {
                self.move_prefix(prefix, before, after, progress.resend, out);
            }
        }
        self.last = progress.goal;
        true
    }

    /// The next hops sent for a prefix the peer holds with `paths`.
    fn chosen_held(&self, prefix: &IpNet, paths: &Paths) -> Vec<IpAddr> {
        match self.capped.get(prefix) {
            Some(c) => c.clone(),
            None => self.choose(paths, &[]),
        }
    }

    /// Moves one prefix from `before` to `after`: withdrawals for path IDs no longer chosen,
    /// announcements for new or changed ones (every chosen one with `resend`).
    fn move_prefix(
        &mut self,
        prefix: IpNet,
        before: Option<&Paths>,
        after: Option<&Paths>,
        resend: bool,
        out: &mut Vec<Change>,
    ) {
        let before = before.filter(|p| !p.is_empty());
        let after = after.filter(|p| !p.is_empty());
        let old_chosen = before
            .map(|b| self.chosen_held(&prefix, b))
            .unwrap_or_default();
        let old_ids = self.with_ids(&old_chosen);
        if let Some(b) = before {
            self.prefixes -= 1;
            self.paths -= old_ids.len();
            if old_chosen.len() < b.len() {
                self.degraded -= 1;
            }
        }
        self.capped.remove(&prefix);
        let new_chosen = after
            .map(|a| self.choose(a, &old_chosen))
            .unwrap_or_default();
        let new_ids = self.with_ids(&new_chosen);
        if let Some(a) = after {
            self.prefixes += 1;
            self.paths += new_ids.len();
            if new_chosen.len() < a.len() {
                self.degraded += 1;
                if self.add_path {
                    self.capped.insert(prefix, new_chosen.clone());
                }
            }
        }
        let new_by_id: BTreeMap<PathId, IpAddr> = new_ids.iter().copied().collect();
        for (id, _) in old_ids.iter().filter(|(id, _)| !new_by_id.contains_key(id)) {
            out.push(Change::Withdraw {
                prefix,
                path_id: *id,
            });
        }
        let old_by_id: BTreeMap<PathId, IpAddr> = old_ids.into_iter().collect();
        for (id, nh) in new_ids {
            let Some(attrs) = after.and_then(|a| a.get(&nh)) else {
                continue;
            };
            let same = !resend
                && old_by_id.get(&id) == Some(&nh)
                && before.and_then(|b| b.get(&nh)) == Some(attrs);
            if !same {
                out.push(Change::Announce {
                    prefix,
                    path_id: id,
                    next_hop: nh,
                    attrs: attrs.clone(),
                });
            }
        }
    }

    /// Path IDs for the chosen next hops (in address order): each its preferred ID, or the
    /// next free one when an earlier next hop of the prefix took it.
    fn with_ids(&self, chosen: &[IpAddr]) -> Vec<(PathId, IpAddr)> {
        if !self.add_path {
            return chosen
                .first()
                .map(|nh| (PathId(0), *nh))
                .into_iter()
                .collect();
        }
        let mut used = BTreeSet::new();
        chosen
            .iter()
            .map(|nh| {
                let mut id = PathId::preferred(*nh);
                while !used.insert(id) {
                    id = PathId(id.0.checked_add(1).unwrap_or(1));
                }
                (id, *nh)
            })
            .collect()
    }

    /// The next hops that reach this peer, in address order; `sent` are kept first under a cap.
    fn choose(&self, paths: &Paths, sent: &[IpAddr]) -> Vec<IpAddr> {
        if !self.add_path {
            // Highest weight, then lowest address: the same answer on every replica.
            return paths
                .iter()
                .min_by_key(|(nh, a)| (std::cmp::Reverse(a.weight.unwrap_or(0)), *nh))
                .map(|(nh, _)| nh)
                .into_iter()
                .collect();
        }
        let cap = self.send_max.unwrap_or(usize::MAX);
        let mut all: Vec<IpAddr> = paths.keys().collect();
        if all.len() <= cap {
            return all;
        }
        // Already-sent next hops first, so a cap never swaps one announced path for another.
        all.sort_by_key(|nh| (!sent.contains(nh), *nh));
        all.truncate(cap);
        all.sort();
        all
    }
}

#[cfg(test)]
mod tests;

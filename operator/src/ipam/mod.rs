//! IP address management: which Service holds which IP, from which pool.
//!
//! Pure logic: no I/O, no Kubernetes types, no clock. The operator translates Eips into
//! [`PoolSpec`]s and Services into [`Request`]s and [`Claim`]s.
//!
//! The rules users rely on:
//! - the lowest free address is handed out, or the one requested;
//! - an IP is held by several Services only under MetalLB's sharing rules ([`Holder::can_share`]);
//! - pool choice: explicit pool > the pool containing a requested IP > pools whose selectors
//!   admit the Service, by priority (lower first) then name > the default pool;
//! - disabled pools give nothing new but keep what they gave;
//! - [`Ipam::rebuild`] from the Services' status ends in the same state whatever the order of
//!   the claims; of two claims that cannot share, the older one wins and the later one is
//!   reported, never merged;
//! - an edit that would take an in-use IP out of its pool is reported, naming the Services:
//!   they keep their IPs, and nothing new is handed out from the part the edit removed;
//! - a holder's sharing constraints (ports, key, policy) are re-checked at each allocation
//!   call: an edit that makes two holders collide is refused and nothing moves;
//! - a holder is a Service *instance* (its uid): one deleted and created again under the
//!   same name is a new holder;
//! - memory grows with the number of allocations, never with pool sizes; allocation and
//!   release cost O(log n) in allocations (times the number of excludes of the pool).

mod addr;
mod error;
mod holder;
mod pool;
mod selector;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

pub use addr::{AddressSpec, Count, Family, Range};
pub use error::{AllocError, Conflict, ConflictReason, ParseError, PoolEditError, ShareError};
pub use holder::{Holder, Port, Protocol, ServiceKey, TrafficPolicy};
pub use pool::{Pool, PoolSpec};
pub use selector::{Labels, Requirement, Selector};

use addr::to_int;

/// A Service asking for one IP of one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Who asks, with what sharing constraints.
    pub holder: Holder,
    /// The family wanted.
    pub family: Family,
    /// The `berth.dev/pool` annotation.
    pub pool: Option<String>,
    /// A specific IP (annotation or `spec.loadBalancerIP`), of `family`.
    pub requested: Option<IpAddr>,
    /// Labels of the Service's namespace.
    pub namespace_labels: Labels,
    /// Labels of the Service.
    pub service_labels: Labels,
}

impl Request {
    /// A request with no pool, no requested IP and no labels.
    pub fn new(holder: Holder, family: Family) -> Self {
        Request {
            holder,
            family,
            pool: None,
            requested: None,
            namespace_labels: Labels::new(),
            service_labels: Labels::new(),
        }
    }
}

/// An IP a Service's status says it holds, fed to [`Ipam::rebuild`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The Service and its sharing constraints.
    pub holder: Holder,
    /// The IP in its status.
    pub ip: IpAddr,
    /// The pool recorded on the Service when it was allocated, if any.
    pub pool: Option<String>,
}

/// A successful allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// The IP.
    pub ip: IpAddr,
    /// The pool it counts against.
    pub pool: String,
}

/// A pool's counts, exact for any size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Addresses it can hand out.
    pub size: Count,
    /// Addresses held by Services.
    pub used: u128,
    /// `size - used`.
    pub free: Count,
    /// First usable address.
    pub first: Option<IpAddr>,
    /// Last usable address.
    pub last: Option<IpAddr>,
}

/// What [`Ipam::rebuild`] could not take as it was.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RebuildReport {
    /// Claims refused because an older claim holds the IP (or the Service already holds one
    /// of that family).
    pub conflicts: Vec<Conflict>,
    /// Claims kept although no pool may hand out their IP (pool deleted or edited while the
    /// operator was away): they stay held, so the IP is never given twice.
    pub unpooled: Vec<(ServiceKey, IpAddr)>,
    /// Pools that failed to parse, and were left out.
    pub invalid_pools: Vec<PoolEditError>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    holders: Vec<Holder>,
    /// The pool the IP counts against; `None` when no pool may hand it out any more.
    pool: Option<String>,
}

/// The allocation state. See the module docs for the rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ipam {
    pools: BTreeMap<String, Pool>,
    ips: BTreeMap<IpAddr, Entry>,
    /// Maximal runs of held addresses per family (start → end, inclusive): the lowest free
    /// address of a range is one lookup away however many addresses are held.
    runs: [BTreeMap<u128, u128>; 2],
    by_service: BTreeMap<ServiceKey, Vec<IpAddr>>,
    by_key: BTreeMap<String, BTreeSet<IpAddr>>,
    used: BTreeMap<String, u128>,
}

/// [`AllocError::SharingEdit`] for `new` colliding on `ip` with one of `holders` (`e`),
/// phrased for the newer of the two: the Event goes there, the older keeps the IP.
fn collision(ip: IpAddr, new: &Holder, holders: &[Holder], e: ShareError) -> AllocError {
    match holders.iter().find(|h| &h.service == e.holder()) {
        Some(other) if other.is_newer_than(new) => AllocError::SharingEdit {
            error: Box::new(
                other
                    .can_share(ip, std::slice::from_ref(new))
                    .err()
                    .unwrap_or(e),
            ),
            newer: other.service.clone(),
        },
        _ => AllocError::SharingEdit {
            error: Box::new(e),
            newer: new.service.clone(),
        },
    }
}

fn fam_index(f: Family) -> usize {
    match f {
        Family::V4 => 0,
        Family::V6 => 1,
    }
}

impl Ipam {
    /// An engine with no pools.
    pub fn new() -> Self {
        Ipam::default()
    }

    /// Builds the state from the pools and every IP the Services' status claim, in any order.
    pub fn rebuild(
        pools: impl IntoIterator<Item = PoolSpec>,
        claims: impl IntoIterator<Item = Claim>,
    ) -> (Ipam, RebuildReport) {
        let mut ipam = Ipam::new();
        let mut report = RebuildReport::default();
        let mut specs: Vec<PoolSpec> = pools.into_iter().collect();
        // Names are unique in Kubernetes; sorting keeps even a duplicate deterministic.
        specs.sort_by(|a, b| (&a.name, &a.address).cmp(&(&b.name, &b.address)));
        specs.dedup_by(|b, a| a.name == b.name);
        for spec in specs {
            match Pool::parse(spec) {
                Ok(p) => {
                    ipam.used.insert(p.name().to_owned(), 0);
                    ipam.pools.insert(p.name().to_owned(), p);
                }
                Err(e) => report.invalid_pools.push(e),
            }
        }
        let mut claims: Vec<Claim> = claims.into_iter().collect();
        // Oldest first, and a total order on everything else, so the outcome cannot depend on
        // the order the API server listed the Services in.
        claims.sort_by(|a, b| {
            (a.holder.created, &a.holder, a.ip, &a.pool).cmp(&(
                b.holder.created,
                &b.holder,
                b.ip,
                &b.pool,
            ))
        });
        for claim in claims {
            let family = Family::of(claim.ip);
            let held = ipam.held_of_family(&claim.holder.service, family);
            if held == Some(claim.ip) {
                continue;
            }
            if let Some(other) = held {
                report.conflicts.push(Conflict {
                    service: claim.holder.service,
                    ip: claim.ip,
                    reason: ConflictReason::SecondOfFamily(other),
                });
                continue;
            }
            if let Some(entry) = ipam.ips.get(&claim.ip)
                && let Err(e) = claim.holder.can_share(claim.ip, &entry.holders)
            {
                report.conflicts.push(Conflict {
                    service: claim.holder.service,
                    ip: claim.ip,
                    reason: ConflictReason::Share(e),
                });
                continue;
            }
            let pool = ipam.attribute(claim.ip, claim.pool.as_deref());
            if pool.is_none() {
                report
                    .unpooled
                    .push((claim.holder.service.clone(), claim.ip));
            }
            ipam.hold(claim.ip, claim.holder, pool);
        }
        (ipam, report)
    }

    /// The pool an existing IP counts against: the recorded one if it may hand it out, else
    /// the first by priority and name that may.
    fn attribute(&self, ip: IpAddr, recorded: Option<&str>) -> Option<String> {
        if let Some(entry) = self.ips.get(&ip) {
            return entry.pool.clone();
        }
        if let Some(p) = recorded.and_then(|name| self.pools.get(name))
            && p.is_usable(ip)
        {
            return Some(p.name().to_owned());
        }
        self.by_priority()
            .into_iter()
            .find(|p| p.is_usable(ip))
            .map(|p| p.name().to_owned())
            // An IP its pool's edit removed while in use (see `upsert_pool`) still counts
            // against that pool after a restart, so its status keeps naming the Services.
            .or_else(|| {
                recorded
                    .filter(|name| self.pools.contains_key(*name))
                    .map(str::to_owned)
            })
    }

    fn by_priority(&self) -> Vec<&Pool> {
        let mut pools: Vec<&Pool> = self.pools.values().collect();
        pools.sort_by(|a, b| (a.spec().priority, a.name()).cmp(&(b.spec().priority, b.name())));
        pools
    }

    fn held_of_family(&self, service: &ServiceKey, family: Family) -> Option<IpAddr> {
        self.by_service
            .get(service)?
            .iter()
            .copied()
            .find(|ip| Family::of(*ip) == family)
    }

    /// Adds a pool or changes one. Growing always works. An edit that takes in-use IPs out
    /// of the pool is applied to new allocations (nothing is handed out from the removed
    /// part any more), while the Services holding those IPs keep them, still counted against
    /// this pool ([`Ipam::stranded`]); the error names them, so the user can move them.
    pub fn upsert_pool(&mut self, spec: PoolSpec) -> Result<(), PoolEditError> {
        let pool = Pool::parse(spec)?;
        let name = pool.name().to_owned();
        // IPs held without a pool (their pool was deleted) are adopted by a pool that may hand
        // them out again, so they count where users look.
        for (ip, e) in self.ips.iter_mut() {
            if e.pool.is_none() && pool.is_usable(*ip) {
                e.pool = Some(name.clone());
            }
        }
        self.pools.insert(name.clone(), pool);
        self.recount();
        let affected = self.stranded(&name);
        if !affected.is_empty() {
            return Err(PoolEditError::WouldStrand {
                pool: name,
                affected,
            });
        }
        Ok(())
    }

    /// The Services holding IPs that count against pool `name` but that it no longer hands
    /// out (an edit removed them while in use), with those IPs; sorted by IP.
    pub fn stranded(&self, name: &str) -> Vec<(ServiceKey, IpAddr)> {
        let Some(pool) = self.pools.get(name) else {
            return Vec::new();
        };
        // Only the gaps around the usable ranges are walked: the status writer asks every
        // minute, and a walk of every held IP (10,000) took milliseconds of the runtime.
        use std::ops::Bound::{Excluded, Included, Unbounded};
        let usable = pool.usable();
        // Within the pool's family (IPv4 sorts before IPv6): a dual-stack cluster's other
        // family is not walked.
        let (low, high) = match pool.family() {
            Family::V4 => (
                Included(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
                Included(IpAddr::V4(std::net::Ipv4Addr::BROADCAST)),
            ),
            Family::V6 => (
                Included(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)),
                Unbounded,
            ),
        };
        let mut gaps: Vec<(std::ops::Bound<IpAddr>, std::ops::Bound<IpAddr>)> = Vec::new();
        match (usable.first(), usable.last()) {
            (Some(first), Some(last)) => {
                gaps.push((low, Excluded(first.first())));
                // Sorted and disjoint; a pair that were not would make `range` panic.
                for w in usable.windows(2) {
                    if w[0].last() < w[1].first() {
                        gaps.push((Excluded(w[0].last()), Excluded(w[1].first())));
                    }
                }
                gaps.push((Excluded(last.last()), high));
            }
            _ => gaps.push((low, high)),
        }
        gaps.into_iter()
            .flat_map(|gap| self.ips.range(gap))
            .filter(|(ip, e)| e.pool.as_deref() == Some(name) && !pool.is_usable(**ip))
            .flat_map(|(ip, e)| e.holders.iter().map(move |h| (h.service.clone(), *ip)))
            .collect()
    }

    /// Removes a pool. The IPs it gave stay held (nothing assigned is lost) but count against
    /// no pool; the Services holding them are returned so the operator can say so.
    pub fn remove_pool(&mut self, name: &str) -> Vec<(ServiceKey, IpAddr)> {
        self.pools.remove(name);
        self.used.remove(name);
        let mut affected = Vec::new();
        for (ip, e) in self.ips.iter_mut() {
            if e.pool.as_deref() == Some(name) {
                e.pool = None;
                affected.extend(e.holders.iter().map(|h| (h.service.clone(), *ip)));
            }
        }
        affected
    }

    fn recount(&mut self) {
        let mut used = BTreeMap::new();
        for (name, pool) in &self.pools {
            let span = pool.span();
            let (lo, hi) = (span.first(), span.last());
            let n = self
                .ips
                .range(lo..=hi)
                .filter(|(ip, _)| pool.is_usable(**ip))
                .count();
            used.insert(name.clone(), n as u128);
        }
        self.used = used;
    }

    /// Pairs of pools whose addresses overlap, each pair once, sorted.
    pub fn overlaps(&self) -> Vec<(String, String)> {
        let pools: Vec<&Pool> = self.pools.values().collect();
        let mut out = Vec::new();
        for (i, a) in pools.iter().enumerate() {
            for b in &pools[i + 1..] {
                if a.span().overlaps(&b.span()) {
                    out.push((a.name().to_owned(), b.name().to_owned()));
                }
            }
        }
        out
    }

    fn overlap_of(&self, pool: &Pool) -> Option<String> {
        self.pools
            .values()
            .find(|p| p.name() != pool.name() && p.span().overlaps(&pool.span()))
            .map(|p| p.name().to_owned())
    }

    /// Finds an IP for the request and records it. Idempotent: a Service that already holds an
    /// IP of the family gets it back.
    pub fn allocate(&mut self, req: &Request) -> Result<Allocation, AllocError> {
        if let Some(held) = self.held_of_family(&req.holder.service, req.family) {
            if let Some(requested) = req.requested
                && requested != held
            {
                return Err(AllocError::AlreadyAssigned { held, requested });
            }
            self.recheck(held, &req.holder)?;
            let pool = self
                .ips
                .get(&held)
                .and_then(|e| e.pool.clone())
                .unwrap_or_default();
            return Ok(Allocation { ip: held, pool });
        }
        let candidates = self.candidates(req)?;
        let mut exhausted = Vec::new();
        let mut first_err = None;
        let pinned = req.pool.is_some() || req.requested.is_some();
        for name in candidates {
            let Some(pool) = self.pools.get(&name) else {
                continue;
            };
            if let Some(other) = self.overlap_of(pool) {
                first_err.get_or_insert(AllocError::PoolOverlaps {
                    pool: name.clone(),
                    other,
                });
                continue;
            }
            let found = match req.requested {
                Some(ip) => {
                    let holders = self
                        .ips
                        .get(&ip)
                        .map(|e| e.holders.as_slice())
                        .unwrap_or_default();
                    req.holder.can_share(ip, holders)?;
                    Some(ip)
                }
                None => self
                    .shared_ip(pool, &req.holder)
                    .or_else(|| self.lowest_free(pool)),
            };
            match found {
                Some(ip) => {
                    let pool_name = self.attribute(ip, Some(&name)).unwrap_or(name);
                    self.hold(ip, req.holder.clone(), Some(pool_name.clone()));
                    return Ok(Allocation {
                        ip,
                        pool: pool_name,
                    });
                }
                None => exhausted.push((name, pool.size())),
            }
            if pinned {
                break;
            }
        }
        if !exhausted.is_empty() {
            return Err(AllocError::Exhausted(exhausted));
        }
        Err(first_err.unwrap_or(AllocError::NoPool))
    }

    /// Takes in the holder's current sharing constraints for `ip`, which it holds, when they
    /// still allow sharing with every other holder; otherwise keeps the ones in force and says
    /// which two collide, phrased for the newer of them (where the Event goes).
    fn recheck(&mut self, ip: IpAddr, new: &Holder) -> Result<(), AllocError> {
        let Some(entry) = self.ips.get_mut(&ip) else {
            return Ok(());
        };
        if let Err(e) = new.can_share(ip, &entry.holders) {
            return Err(collision(ip, new, &entry.holders, e));
        }
        let Some(slot) = entry.holders.iter_mut().find(|h| h.service == new.service) else {
            return Ok(());
        };
        if *slot == *new {
            return Ok(());
        }
        let old = std::mem::replace(slot, new.clone());
        let still_keyed = |key: &str| entry.holders.iter().any(|h| h.key() == Some(key));
        if let Some(k) = old.key().filter(|k| !still_keyed(k))
            && let Some(set) = self.by_key.get_mut(k)
        {
            set.remove(&ip);
            if set.is_empty() {
                self.by_key.remove(k);
            }
        }
        if let Some(k) = new.key() {
            self.by_key.entry(k.to_owned()).or_default().insert(ip);
        }
        Ok(())
    }

    /// Why `holder` may not take `ip`, which others hold and whose status says `holder` had
    /// it (a sharing edit seen only after a restart): [`AllocError::SharingEdit`], phrased
    /// for the newer of the two. `Ok` when it may share after all.
    pub fn collision_at(&self, ip: IpAddr, holder: &Holder) -> Result<(), AllocError> {
        let holders = self.holders(ip);
        holder
            .can_share(ip, holders)
            .map_err(|e| collision(ip, holder, holders, e))
    }

    /// The uid of the Service instance holding `service`'s IPs (empty: unknown).
    pub fn uid_of(&self, service: &ServiceKey) -> Option<&str> {
        let ip = self.by_service.get(service)?.first()?;
        self.ips
            .get(ip)?
            .holders
            .iter()
            .find(|h| &h.service == service)
            .map(|h| h.uid.as_str())
    }

    /// The pools to try, in order; refusals that leave nothing to try are errors.
    fn candidates(&self, req: &Request) -> Result<Vec<String>, AllocError> {
        let admits = |p: &Pool| -> Result<(), AllocError> {
            if p.family() != req.family {
                return Err(AllocError::FamilyMismatch {
                    pool: p.name().to_owned(),
                    has: p.family(),
                    wants: req.family,
                });
            }
            if p.spec().disabled {
                return Err(AllocError::PoolDisabled(p.name().to_owned()));
            }
            p.admits(
                &req.holder.service.namespace,
                &req.namespace_labels,
                &req.service_labels,
            )
            .map_err(|why| AllocError::NotAllowed {
                pool: p.name().to_owned(),
                why,
            })
        };
        if let Some(name) = &req.pool {
            let p = self
                .pools
                .get(name)
                .ok_or_else(|| AllocError::UnknownPool(name.clone()))?;
            admits(p)?;
            if let Some(ip) = req.requested {
                if !p.spans(ip) {
                    return Err(AllocError::RequestedOutsidePool {
                        ip,
                        pool: name.clone(),
                    });
                }
                if !p.is_usable(ip) {
                    return Err(AllocError::RequestedNotUsable {
                        ip,
                        pool: name.clone(),
                    });
                }
            }
            return Ok(vec![name.clone()]);
        }
        if let Some(ip) = req.requested {
            let spanning: Vec<&Pool> = self
                .by_priority()
                .into_iter()
                .filter(|p| p.spans(ip))
                .collect();
            let first = spanning.first().ok_or(AllocError::RequestedNotInPool(ip))?;
            let p = spanning.iter().find(|p| p.is_usable(ip)).ok_or_else(|| {
                AllocError::RequestedNotUsable {
                    ip,
                    pool: first.name().to_owned(),
                }
            })?;
            admits(p)?;
            return Ok(vec![p.name().to_owned()]);
        }
        let mut out: Vec<String> = self
            .by_priority()
            .into_iter()
            .filter(|p| !p.spec().default && p.has_selectors() && admits(p).is_ok())
            .map(|p| p.name().to_owned())
            .collect();
        let defaults: Vec<&Pool> = self.pools.values().filter(|p| p.spec().default).collect();
        match defaults.as_slice() {
            [] => {}
            [d] => match admits(d) {
                Ok(()) => out.push(d.name().to_owned()),
                // A default pool of the other family is simply not a candidate.
                Err(AllocError::FamilyMismatch { .. }) => {}
                Err(e) if out.is_empty() => return Err(e),
                Err(_) => {}
            },
            // Several defaults is a misconfiguration the Eip status reports; using none of them
            // beats picking one arbitrarily.
            _ => {}
        }
        Ok(out)
    }

    /// An IP of `pool` already held under the holder's sharing key that it may join.
    fn shared_ip(&self, pool: &Pool, holder: &Holder) -> Option<IpAddr> {
        let key = holder.key()?;
        self.by_key.get(key)?.iter().copied().find(|ip| {
            pool.is_usable(*ip)
                && self
                    .ips
                    .get(ip)
                    .is_some_and(|e| holder.can_share(*ip, &e.holders).is_ok())
        })
    }

    /// The lowest address of `pool` nobody holds: one run lookup per usable range.
    fn lowest_free(&self, pool: &Pool) -> Option<IpAddr> {
        let runs = &self.runs[fam_index(pool.family())];
        for r in pool.usable() {
            let mut candidate = r.start;
            if let Some((_, &end)) = runs.range(..=candidate).next_back()
                && end >= candidate
            {
                // Runs are maximal, so the address after one is free, unless past this range.
                match end.checked_add(1) {
                    Some(next) => candidate = next,
                    None => continue,
                }
            }
            if candidate <= r.end {
                return Some(pool.family().addr(candidate));
            }
        }
        None
    }

    fn hold(&mut self, ip: IpAddr, holder: Holder, pool: Option<String>) {
        let family = Family::of(ip);
        if !self.ips.contains_key(&ip) {
            self.insert_run(family, to_int(ip));
            for (name, p) in &self.pools {
                if p.is_usable(ip) {
                    *self.used.entry(name.clone()).or_default() += 1;
                }
            }
        }
        if let Some(key) = holder.key() {
            self.by_key.entry(key.to_owned()).or_default().insert(ip);
        }
        // Most Services hold one IP and most IPs one holder: start at capacity one, not Vec's
        // default of four, which would quadruple the memory per allocation.
        self.by_service
            .entry(holder.service.clone())
            .or_insert_with(|| Vec::with_capacity(1))
            .push(ip);
        self.ips
            .entry(ip)
            .or_insert_with(|| Entry {
                holders: Vec::with_capacity(1),
                pool,
            })
            .holders
            .push(holder);
    }

    /// Releases every IP the Service holds; returns them. Addresses nobody holds any more are
    /// free again at once.
    pub fn release(&mut self, service: &ServiceKey) -> Vec<IpAddr> {
        let ips = self.by_service.remove(service).unwrap_or_default();
        for ip in &ips {
            self.unhold(service, *ip);
        }
        ips
    }

    /// Releases one IP of a Service (a family it no longer asks for); false when it did not
    /// hold it.
    pub fn release_ip(&mut self, service: &ServiceKey, ip: IpAddr) -> bool {
        let Some(held) = self.by_service.get_mut(service) else {
            return false;
        };
        let before = held.len();
        held.retain(|h| *h != ip);
        if held.len() == before {
            return false;
        }
        if held.is_empty() {
            self.by_service.remove(service);
        }
        self.unhold(service, ip);
        true
    }

    fn unhold(&mut self, service: &ServiceKey, ip: IpAddr) {
        let Some(entry) = self.ips.get_mut(&ip) else {
            return;
        };
        let mut keys: Vec<String> = Vec::new();
        entry.holders.retain(|h| {
            if &h.service == service {
                keys.extend(h.key().map(str::to_owned));
                false
            } else {
                true
            }
        });
        for key in keys {
            if !entry.holders.iter().any(|h| h.key() == Some(key.as_str()))
                && let Some(set) = self.by_key.get_mut(&key)
            {
                set.remove(&ip);
                if set.is_empty() {
                    self.by_key.remove(&key);
                }
            }
        }
        if entry.holders.is_empty() {
            self.ips.remove(&ip);
            self.remove_run(Family::of(ip), to_int(ip));
            for (name, p) in &self.pools {
                if p.is_usable(ip)
                    && let Some(n) = self.used.get_mut(name)
                {
                    *n = n.saturating_sub(1);
                }
            }
        }
    }

    fn insert_run(&mut self, family: Family, v: u128) {
        let runs = &mut self.runs[fam_index(family)];
        let mut start = v;
        let mut end = v;
        if let Some(prev) = v.checked_sub(1)
            && let Some((&s, &e)) = runs.range(..=prev).next_back()
            && e == prev
        {
            start = s;
        }
        if let Some(next) = v.checked_add(1)
            && let Some(e) = runs.remove(&next)
        {
            end = e;
        }
        runs.insert(start, end);
    }

    fn remove_run(&mut self, family: Family, v: u128) {
        let runs = &mut self.runs[fam_index(family)];
        let Some((&s, &e)) = runs.range(..=v).next_back() else {
            return;
        };
        if e < v {
            return;
        }
        runs.remove(&s);
        if s < v {
            runs.insert(s, v - 1);
        }
        if v < e {
            runs.insert(v + 1, e);
        }
    }

    /// Every Service holding at least one IP, sorted.
    pub fn services(&self) -> impl Iterator<Item = &ServiceKey> {
        self.by_service.keys()
    }

    /// A pool by name.
    pub fn pool(&self, name: &str) -> Option<&Pool> {
        self.pools.get(name)
    }

    /// Every pool, by name.
    pub fn pools(&self) -> impl Iterator<Item = &Pool> {
        self.pools.values()
    }

    /// Exact counts of a pool.
    pub fn usage(&self, name: &str) -> Option<Usage> {
        let pool = self.pools.get(name)?;
        let used = self.used.get(name).copied().unwrap_or(0);
        Some(Usage {
            size: pool.size(),
            used,
            free: pool.size().saturating_sub(used),
            first: pool.first(),
            last: pool.last(),
        })
    }

    /// The Services holding `ip`.
    pub fn holders(&self, ip: IpAddr) -> &[Holder] {
        self.ips
            .get(&ip)
            .map(|e| e.holders.as_slice())
            .unwrap_or_default()
    }

    /// The pool `ip` counts against, if it is held and any pool may hand it out.
    pub fn pool_of(&self, ip: IpAddr) -> Option<&str> {
        self.ips.get(&ip)?.pool.as_deref()
    }

    /// The IPs a Service holds (at most one per family).
    pub fn ips_of(&self, service: &ServiceKey) -> &[IpAddr] {
        self.by_service
            .get(service)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// Number of IPs held.
    pub fn held(&self) -> usize {
        self.ips.len()
    }
}

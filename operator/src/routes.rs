//! The routes the speakers announce: every BGP-mode Service IP with its next hops. Services
//! sharing an IP each contribute their next hops; the IP's route is the union. Setting one
//! Service's contribution reports the IPs whose route changed, so an endpoint change of one
//! Service becomes one route update, never a resync of everything.
//!
//! Next-hop lists are interned: every `Cluster` Service of a family has the same list (all
//! eligible nodes), so 5,000 such Services on 1,000 nodes hold one list of 1,000 hops, not five
//! million hops (the endpoint-change bench measured 932 MiB before interning).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use crate::ipam::ServiceKey;
use crate::nexthops::NextHop;

/// A shared, immutable next-hop list.
pub type Hops = Arc<[NextHop]>;

/// What each Service contributes to one IP, sorted by Service. A Vec, not a map: nearly
/// every IP has one contributor and a map's node per IP cost the scale bench 7 MB.
type Contributions = Vec<(ServiceKey, Hops)>;

/// Every announced IP, and which Service contributes what.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    by_ip: BTreeMap<IpAddr, Contributions>,
    /// The IPs of each Service, sorted (one or two: a Vec for the same reason).
    by_service: BTreeMap<ServiceKey, Vec<IpAddr>>,
    merged: BTreeMap<IpAddr, Hops>,
    /// One copy of each distinct list in use; a list leaves when nothing else holds it.
    interned: BTreeSet<Hops>,
}

impl RouteTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    fn intern(&mut self, hops: Vec<NextHop>) -> Hops {
        if let Some(existing) = self.interned.get(hops.as_slice()) {
            return existing.clone();
        }
        let hops: Hops = Arc::from(hops);
        self.interned.insert(hops.clone());
        hops
    }

    /// Drops interned lists that only the interner still holds.
    fn release(&mut self, dropped: Vec<Hops>) {
        for hops in dropped {
            // Two references left: `hops` here and the interner's.
            if Arc::strong_count(&hops) == 2 {
                self.interned.remove(&*hops);
            }
        }
    }

    /// Every Service contributing a route, sorted.
    pub fn services(&self) -> impl Iterator<Item = &ServiceKey> {
        self.by_service.keys()
    }

    /// Replaces what `service` contributes (its IPs and their next hops; an IP with no next
    /// hop is not announced). Returns the IPs whose merged route changed, sorted.
    pub fn set(
        &mut self,
        service: &ServiceKey,
        routes: Vec<(IpAddr, Vec<NextHop>)>,
    ) -> Vec<IpAddr> {
        let mut dropped = Vec::new();
        let mut touched: BTreeSet<IpAddr> = self
            .by_service
            .remove(service)
            .unwrap_or_default()
            .into_iter()
            .collect();
        for ip in &touched {
            if let Some(contrib) = self.by_ip.get_mut(ip) {
                if let Ok(i) = contrib.binary_search_by(|(k, _)| k.cmp(service)) {
                    dropped.push(contrib.remove(i).1);
                }
                if contrib.is_empty() {
                    self.by_ip.remove(ip);
                }
            }
        }
        let mut mine = BTreeSet::new();
        for (ip, hops) in routes {
            if hops.is_empty() {
                continue;
            }
            touched.insert(ip);
            mine.insert(ip);
            let hops = self.intern(hops);
            let contrib = self.by_ip.entry(ip).or_default();
            match contrib.binary_search_by(|(k, _)| k.cmp(service)) {
                // The same IP twice in `routes`: the last one counts, as a map would do.
                Ok(i) => dropped.push(std::mem::replace(&mut contrib[i].1, hops)),
                Err(i) => contrib.insert(i, (service.clone(), hops)),
            }
        }
        if !mine.is_empty() {
            self.by_service
                .insert(service.clone(), mine.into_iter().collect());
        }
        let mut changed = Vec::new();
        for ip in touched {
            let merged = match self.by_ip.get(&ip).map(merge) {
                Some(Merged::Shared(hops)) => Some(hops),
                Some(Merged::New(hops)) => Some(self.intern(hops)),
                None => None,
            };
            let old = match merged {
                Some(m) => self.merged.insert(ip, m),
                None => self.merged.remove(&ip),
            };
            if old.as_ref() != self.merged.get(&ip) {
                changed.push(ip);
            }
            dropped.extend(old);
        }
        self.release(dropped);
        changed
    }

    /// Forgets a Service; returns the IPs whose route changed.
    pub fn remove(&mut self, service: &ServiceKey) -> Vec<IpAddr> {
        self.set(service, Vec::new())
    }

    /// The route of one IP, if announced.
    pub fn get(&self, ip: IpAddr) -> Option<&[NextHop]> {
        self.merged.get(&ip).map(|h| &**h)
    }

    /// Every announced IP with its next hops, sorted.
    pub fn all(&self) -> &BTreeMap<IpAddr, Hops> {
        &self.merged
    }

    /// The Services contributing to an IP.
    pub fn services_of(&self, ip: IpAddr) -> impl Iterator<Item = &ServiceKey> {
        self.by_ip
            .get(&ip)
            .into_iter()
            .flat_map(|m| m.iter().map(|(k, _)| k))
    }

    /// How many distinct next-hop lists are held (for tests and the bench).
    pub fn distinct_lists(&self) -> usize {
        self.interned.len()
    }
}

enum Merged {
    /// One contributor: its list as it is.
    Shared(Hops),
    /// Several: a new union.
    New(Vec<NextHop>),
}

/// The union of the contributions, one next hop per address, weights added (two Services
/// with pods on one node send it the traffic of both).
fn merge(contrib: &Contributions) -> Merged {
    if let [(_, only)] = contrib.as_slice() {
        return Merged::Shared(only.clone());
    }
    let mut by_addr: BTreeMap<IpAddr, NextHop> = BTreeMap::new();
    for hop in contrib.iter().flat_map(|(_, h)| h.iter()) {
        by_addr
            .entry(hop.address)
            .and_modify(|h| {
                h.weight = match (h.weight, hop.weight) {
                    (Some(a), Some(b)) => Some(a.saturating_add(b)),
                    (a, b) => a.or(b),
                }
            })
            .or_insert_with(|| hop.clone());
    }
    Merged::New(by_addr.into_values().collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn hop(a: &str, w: Option<u32>) -> NextHop {
        NextHop {
            address: a.parse().unwrap(),
            weight: w,
            node: format!("n{a}"),
        }
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_ip_given_twice_by_one_service_counts_once_and_its_list_is_released() {
        let mut t = RouteTable::new();
        let a = ServiceKey::new("ns", "a");
        let first = vec![hop("192.168.0.1", None)];
        let last = vec![hop("192.168.0.2", None)];
        t.set(
            &a,
            vec![
                (ip("10.0.0.1"), first.clone()),
                (ip("10.0.0.1"), last.clone()),
            ],
        );
        assert_eq!(
            t.get(ip("10.0.0.1")),
            Some(last.as_slice()),
            "the last one counts"
        );
        assert_eq!(t.services_of(ip("10.0.0.1")).count(), 1);
        assert_eq!(t.distinct_lists(), 1, "the replaced list is not held");
        t.remove(&a);
        assert_eq!(t.distinct_lists(), 0);
        assert!(t.all().is_empty());
    }

    #[test]
    fn only_changed_ips_are_reported() {
        let mut t = RouteTable::new();
        let a = ServiceKey::new("ns", "a");
        let b = ServiceKey::new("ns", "b");
        assert_eq!(
            t.set(&a, vec![(ip("10.0.0.1"), vec![hop("192.168.0.1", None)])]),
            [ip("10.0.0.1")]
        );
        assert_eq!(
            t.set(&b, vec![(ip("10.0.0.2"), vec![hop("192.168.0.2", None)])]),
            [ip("10.0.0.2")]
        );
        // Same again: nothing.
        assert!(
            t.set(&a, vec![(ip("10.0.0.1"), vec![hop("192.168.0.1", None)])])
                .is_empty()
        );
        // No next hop: withdrawn.
        assert_eq!(t.set(&a, vec![(ip("10.0.0.1"), vec![])]), [ip("10.0.0.1")]);
        assert_eq!(t.get(ip("10.0.0.1")), None);
        assert_eq!(t.remove(&b), [ip("10.0.0.2")]);
        assert!(t.all().is_empty());
    }

    #[test]
    fn a_shared_ip_is_the_union_and_survives_one_service_leaving() {
        let mut t = RouteTable::new();
        let a = ServiceKey::new("ns", "a");
        let b = ServiceKey::new("ns", "b");
        let shared = ip("10.0.0.7");
        t.set(&a, vec![(shared, vec![hop("192.168.0.1", Some(2))])]);
        t.set(
            &b,
            vec![(
                shared,
                vec![hop("192.168.0.1", Some(1)), hop("192.168.0.2", Some(3))],
            )],
        );
        assert_eq!(
            t.get(shared).unwrap(),
            [hop("192.168.0.1", Some(3)), hop("192.168.0.2", Some(3))]
        );
        assert_eq!(t.services_of(shared).count(), 2);
        assert_eq!(t.remove(&b), [shared]);
        assert_eq!(t.get(shared).unwrap(), [hop("192.168.0.1", Some(2))]);
    }

    #[test]
    fn equal_lists_are_held_once_and_released_when_unused() {
        let mut t = RouteTable::new();
        let all = || vec![hop("192.168.0.1", None), hop("192.168.0.2", None)];
        for i in 0..100 {
            t.set(
                &ServiceKey::new("ns", format!("s{i}")),
                vec![(ip(&format!("10.0.1.{i}")), all())],
            );
        }
        assert_eq!(t.distinct_lists(), 1);
        t.set(
            &ServiceKey::new("ns", "s0"),
            vec![(ip("10.0.1.0"), vec![hop("192.168.0.3", None)])],
        );
        assert_eq!(t.distinct_lists(), 2);
        t.remove(&ServiceKey::new("ns", "s0"));
        assert_eq!(t.distinct_lists(), 1);
        for i in 1..100 {
            t.remove(&ServiceKey::new("ns", format!("s{i}")));
        }
        assert_eq!(t.distinct_lists(), 0);
        assert!(t.all().is_empty());
    }
}

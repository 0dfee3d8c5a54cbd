//! The routes the speakers announce: every BGP-mode Service IP with its next hops. Services
//! sharing an IP each contribute their next hops; the IP's route is the union. Setting one
//! Service's contribution reports the IPs whose route changed, so an endpoint change of one
//! Service becomes one route update, never a resync of everything.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::ipam::ServiceKey;
use crate::nexthops::NextHop;

/// Every announced IP, and which Service contributes what.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    by_ip: BTreeMap<IpAddr, BTreeMap<ServiceKey, Vec<NextHop>>>,
    by_service: BTreeMap<ServiceKey, BTreeSet<IpAddr>>,
    merged: BTreeMap<IpAddr, Vec<NextHop>>,
}

impl RouteTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces what `service` contributes (its IPs and their next hops; an IP with no next
    /// hop is not announced). Returns the IPs whose merged route changed, sorted.
    pub fn set(
        &mut self,
        service: &ServiceKey,
        routes: Vec<(IpAddr, Vec<NextHop>)>,
    ) -> Vec<IpAddr> {
        let mut touched: BTreeSet<IpAddr> = self.by_service.remove(service).unwrap_or_default();
        for ip in &touched {
            if let Some(contrib) = self.by_ip.get_mut(ip) {
                contrib.remove(service);
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
            self.by_ip
                .entry(ip)
                .or_default()
                .insert(service.clone(), hops);
        }
        if !mine.is_empty() {
            self.by_service.insert(service.clone(), mine);
        }
        touched
            .into_iter()
            .filter(|ip| {
                let merged = self.by_ip.get(ip).map(merge);
                let changed = merged.as_ref() != self.merged.get(ip);
                match merged {
                    Some(m) => self.merged.insert(*ip, m),
                    None => self.merged.remove(ip),
                };
                changed
            })
            .collect()
    }

    /// Forgets a Service; returns the IPs whose route changed.
    pub fn remove(&mut self, service: &ServiceKey) -> Vec<IpAddr> {
        self.set(service, Vec::new())
    }

    /// The route of one IP, if announced.
    pub fn get(&self, ip: IpAddr) -> Option<&[NextHop]> {
        self.merged.get(&ip).map(Vec::as_slice)
    }

    /// Every announced IP with its next hops, sorted.
    pub fn all(&self) -> &BTreeMap<IpAddr, Vec<NextHop>> {
        &self.merged
    }

    /// The Services contributing to an IP.
    pub fn services_of(&self, ip: IpAddr) -> impl Iterator<Item = &ServiceKey> {
        self.by_ip.get(&ip).into_iter().flat_map(|m| m.keys())
    }
}

/// The union of the contributions, one next hop per address, weights added (two Services
/// with pods on one node send it the traffic of both).
fn merge(contrib: &BTreeMap<ServiceKey, Vec<NextHop>>) -> Vec<NextHop> {
    let mut by_addr: BTreeMap<IpAddr, NextHop> = BTreeMap::new();
    for hop in contrib.values().flatten() {
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
    by_addr.into_values().collect()
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
}

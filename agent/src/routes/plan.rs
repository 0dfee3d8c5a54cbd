//! The pure part of reconciling: from what the kernel has and what is wanted, which rules and
//! routes to add and remove. No I/O here, so every case is a unit test.

use std::collections::BTreeSet;
use std::net::IpAddr;

/// What to change in the kernel to go from the current Berth rules and routes to the wanted
/// IPs. Applied in the order: add routes, add rules, remove rules, remove routes, so a rule
/// never points at a table that is missing its route (a rule without a route would only fall
/// through to the next rule, but this order also keeps the window short).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// IPs that need their `local <ip> dev lo table <table>` route.
    pub add_routes: BTreeSet<IpAddr>,
    /// IPs that need their `to <ip> lookup <table>` rule.
    pub add_rules: BTreeSet<IpAddr>,
    /// IPs whose rule must go (no longer wanted).
    pub remove_rules: BTreeSet<IpAddr>,
    /// IPs whose route must go (no longer wanted).
    pub remove_routes: BTreeSet<IpAddr>,
}

impl Plan {
    /// True when the kernel already matches the wanted state.
    pub fn is_empty(&self) -> bool {
        self.add_routes.is_empty()
            && self.add_rules.is_empty()
            && self.remove_rules.is_empty()
            && self.remove_routes.is_empty()
    }

    /// The rules and routes the kernel has once the plan is applied to `rules` and `routes`
    /// (the pure model of [`crate::routes::LocalRoutes::reconcile`], used by the tests).
    pub fn apply(
        &self,
        rules: &BTreeSet<IpAddr>,
        routes: &BTreeSet<IpAddr>,
    ) -> (BTreeSet<IpAddr>, BTreeSet<IpAddr>) {
        let rules = rules
            .union(&self.add_rules)
            .filter(|ip| !self.remove_rules.contains(ip))
            .copied()
            .collect();
        let routes = routes
            .union(&self.add_routes)
            .filter(|ip| !self.remove_routes.contains(ip))
            .copied()
            .collect();
        (rules, routes)
    }

    /// IPs the plan starts delivering: anything added for them (a half-present IP, say a
    /// route whose rule was deleted by hand, counts as added once repaired).
    pub fn added(&self) -> Vec<IpAddr> {
        self.add_routes.union(&self.add_rules).copied().collect()
    }

    /// IPs the plan stops delivering: anything removed for them.
    pub fn removed(&self) -> Vec<IpAddr> {
        self.remove_rules
            .union(&self.remove_routes)
            .copied()
            .collect()
    }
}

/// Computes the changes that turn the current Berth rules and routes (by destination IP) into
/// exactly one route per wanted IP, one rule per wanted IPv6 IP, and nothing else.
pub fn plan(
    current_rules: &BTreeSet<IpAddr>,
    current_routes: &BTreeSet<IpAddr>,
    wanted: &BTreeSet<IpAddr>,
) -> Plan {
    let wanted_rules: BTreeSet<IpAddr> = wanted
        .iter()
        .copied()
        .filter(|ip| super::kernel::needs_rule(*ip))
        .collect();
    Plan {
        add_routes: wanted.difference(current_routes).copied().collect(),
        add_rules: wanted_rules.difference(current_rules).copied().collect(),
        remove_rules: current_rules.difference(&wanted_rules).copied().collect(),
        remove_routes: current_routes.difference(wanted).copied().collect(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn ips(list: &[&str]) -> BTreeSet<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn v6(set: &BTreeSet<IpAddr>) -> BTreeSet<IpAddr> {
        set.iter().copied().filter(IpAddr::is_ipv6).collect()
    }

    #[test]
    fn empty_kernel_gets_a_route_per_wanted_ip_and_a_rule_per_ipv6_one() {
        let wanted = ips(&["192.0.2.1", "2001:db8::1"]);
        let p = plan(&BTreeSet::new(), &BTreeSet::new(), &wanted);
        assert_eq!(p.add_routes, wanted);
        assert_eq!(p.add_rules, ips(&["2001:db8::1"]));
        assert!(p.remove_rules.is_empty() && p.remove_routes.is_empty());
        assert_eq!(p.added(), wanted.iter().copied().collect::<Vec<_>>());
        assert!(p.removed().is_empty());
    }

    #[test]
    fn unwanted_ips_lose_both_rule_and_route() {
        let current = ips(&["2001:db8::1", "2001:db8::2"]);
        let p = plan(&current, &current, &ips(&["2001:db8::2"]));
        assert_eq!(p.remove_rules, ips(&["2001:db8::1"]));
        assert_eq!(p.remove_routes, ips(&["2001:db8::1"]));
        assert!(p.add_rules.is_empty() && p.add_routes.is_empty());
        assert_eq!(p.removed(), vec!["2001:db8::1".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn an_ipv4_rule_is_a_leftover_even_for_a_wanted_ip() {
        // Earlier builds kept IPv4 behind a rule too; IPv4 now lives in table local.
        let p = plan(
            &ips(&["192.0.2.1"]),
            &ips(&["192.0.2.1"]),
            &ips(&["192.0.2.1"]),
        );
        assert_eq!(p.remove_rules, ips(&["192.0.2.1"]));
        assert!(p.add_routes.is_empty() && p.remove_routes.is_empty());
    }

    #[test]
    fn half_present_ip_is_repaired_not_recreated() {
        // A rule whose route was deleted by hand: only the route is added back.
        let p = plan(
            &ips(&["2001:db8::1"]),
            &BTreeSet::new(),
            &ips(&["2001:db8::1"]),
        );
        assert_eq!(p.add_routes, ips(&["2001:db8::1"]));
        assert!(p.add_rules.is_empty());
        // A leftover route without rule, no longer wanted: only the route is removed.
        let p = plan(&BTreeSet::new(), &ips(&["192.0.2.9"]), &BTreeSet::new());
        assert_eq!(p.remove_routes, ips(&["192.0.2.9"]));
        assert!(p.remove_rules.is_empty());
    }

    #[test]
    fn wanted_nothing_removes_everything() {
        let current = ips(&["192.0.2.1", "2001:db8::7"]);
        let p = plan(&current, &current, &BTreeSet::new());
        assert_eq!(
            p.apply(&current, &current),
            (BTreeSet::new(), BTreeSet::new())
        );
    }

    fn ip() -> impl Strategy<Value = IpAddr> {
        // A small space so current and wanted overlap often.
        prop_oneof![
            (0u8..8).prop_map(|b| IpAddr::V4(Ipv4Addr::new(192, 0, 2, b))),
            (0u16..8).prop_map(|b| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, b))),
        ]
    }

    fn set() -> impl Strategy<Value = BTreeSet<IpAddr>> {
        proptest::collection::btree_set(ip(), 0..10)
    }

    proptest! {
        #[test]
        fn applying_the_plan_yields_exactly_wanted(rules in set(), routes in set(), wanted in set()) {
            let p = plan(&rules, &routes, &wanted);
            let (r, t) = p.apply(&rules, &routes);
            prop_assert_eq!(&r, &v6(&wanted));
            prop_assert_eq!(&t, &wanted);
            // And once applied, there is nothing left to do.
            prop_assert!(plan(&r, &t, &wanted).is_empty());
        }

        #[test]
        fn plan_of_wanted_against_itself_is_empty(wanted in set()) {
            prop_assert!(plan(&v6(&wanted), &wanted, &wanted).is_empty());
        }

        #[test]
        fn plan_never_adds_unwanted_nor_removes_wanted(rules in set(), routes in set(), wanted in set()) {
            let p = plan(&rules, &routes, &wanted);
            prop_assert!(p.add_rules.is_subset(&wanted) && p.add_routes.is_subset(&wanted));
            prop_assert!(p.remove_rules.is_disjoint(&v6(&wanted)) && p.remove_routes.is_disjoint(&wanted));
            // Never adds what is there nor removes what is not.
            prop_assert!(p.add_rules.is_disjoint(&rules) && p.remove_rules.is_subset(&rules));
            prop_assert!(p.add_routes.is_disjoint(&routes) && p.remove_routes.is_subset(&routes));
        }
    }
}

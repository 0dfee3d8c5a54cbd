//! What Berth's alerts need to know of each Service (pending, without a next hop, Layer2
//! IPs), kept per Service so the counts follow every change and never drift: a Service
//! counted twice or forgotten after its deletion would page someone for nothing.

use std::collections::BTreeMap;

use crate::ipam::ServiceKey;

/// One Service's state as the alerts see it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    /// Why a family it asks for got no IP (`None`: it holds every IP it asks for).
    pub pending: Option<&'static str>,
    /// It holds IPs that nothing announces (no eligible node).
    pub without_next_hop: bool,
    /// Its Layer2 IPs that have at least one candidate node (each must be answered by one).
    pub layer2_ips: usize,
}

/// Totals over every Service, as the gauges show them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    /// Services pending, by reason.
    pub pending: BTreeMap<&'static str, usize>,
    /// Services without a next hop.
    pub without_next_hop: usize,
    /// Layer2 IPs with candidates.
    pub layer2_ips: usize,
}

/// Every Service's [`Health`]; Services with nothing to report are not kept.
#[derive(Debug, Default)]
pub struct ServiceHealth {
    by_service: BTreeMap<ServiceKey, Health>,
    /// Kept with every change (a reconcile reads them; summing 10,000 Services each time
    /// would cost more than the reconcile), and checked against a recount in the tests.
    totals: Totals,
}

impl Totals {
    fn add(&mut self, h: &Health) {
        if let Some(reason) = h.pending {
            *self.pending.entry(reason).or_default() += 1;
        }
        self.without_next_hop += usize::from(h.without_next_hop);
        self.layer2_ips += h.layer2_ips;
    }

    fn subtract(&mut self, h: &Health) {
        if let Some(reason) = h.pending
            && let Some(n) = self.pending.get_mut(reason)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.pending.remove(reason);
            }
        }
        self.without_next_hop = self
            .without_next_hop
            .saturating_sub(usize::from(h.without_next_hop));
        self.layer2_ips = self.layer2_ips.saturating_sub(h.layer2_ips);
    }
}

impl ServiceHealth {
    /// Changes one Service's health with `f` and returns what it was before.
    pub fn update(&mut self, key: &ServiceKey, f: impl FnOnce(&mut Health)) -> Health {
        let before = self.by_service.get(key).cloned().unwrap_or_default();
        let mut now = before.clone();
        f(&mut now);
        if now == before {
            return before;
        }
        self.totals.subtract(&before);
        self.totals.add(&now);
        if now == Health::default() {
            self.by_service.remove(key);
        } else {
            self.by_service.insert(key.clone(), now);
        }
        before
    }

    /// One Service's health (the default when it has nothing to report).
    pub fn of(&self, key: &ServiceKey) -> Health {
        self.by_service.get(key).cloned().unwrap_or_default()
    }

    /// Forgets a Service (deleted, or not Berth's).
    pub fn remove(&mut self, key: &ServiceKey) {
        if let Some(h) = self.by_service.remove(key) {
            self.totals.subtract(&h);
        }
    }

    /// The Services with something to report: the sweep forgets deleted ones among them,
    /// also those that held no IP (a pending Service leaves no trace in the engine).
    pub fn services(&self) -> impl Iterator<Item = &ServiceKey> {
        self.by_service.keys()
    }

    /// The totals the gauges show.
    pub fn totals(&self) -> &Totals {
        &self.totals
    }

    /// The totals counted again from every Service (what [`ServiceHealth::totals`] must
    /// always equal).
    #[cfg(test)]
    fn recount(&self) -> Totals {
        let mut t = Totals::default();
        for h in self.by_service.values() {
            t.add(h);
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: &str) -> ServiceKey {
        ServiceKey::new("default", n)
    }

    #[test]
    fn totals_follow_each_change_and_forget_removed_services() {
        let mut h = ServiceHealth::default();
        h.update(&key("a"), |s| s.pending = Some("Exhausted"));
        h.update(&key("b"), |s| s.pending = Some("Exhausted"));
        h.update(&key("c"), |s| {
            s.without_next_hop = true;
            s.layer2_ips = 2;
        });
        let t = h.totals();
        assert_eq!(t.pending.get("Exhausted"), Some(&2));
        assert_eq!((t.without_next_hop, t.layer2_ips), (1, 2));

        // a gets its IP; c's next hop comes back; b is deleted.
        let before = h.update(&key("a"), |s| s.pending = None);
        assert_eq!(before.pending, Some("Exhausted"));
        let before = h.update(&key("c"), |s| s.without_next_hop = false);
        assert!(before.without_next_hop);
        h.remove(&key("b"));
        assert_eq!(h.services().collect::<Vec<_>>(), [&key("c")]);
        let t = h.totals();
        assert!(t.pending.is_empty());
        assert_eq!((t.without_next_hop, t.layer2_ips), (0, 2));
        assert_eq!(
            h.by_service.len(),
            1,
            "a Service with nothing to say is not kept"
        );
    }

    proptest::proptest! {
        /// Whatever the sequence of changes and removals, the kept totals are the recount.
        #[test]
        fn kept_totals_equal_a_recount(
            ops in proptest::collection::vec(
                (0..4usize, proptest::option::of(0..3usize), proptest::bool::ANY, 0..3usize, proptest::bool::ANY),
                0..60,
            )
        ) {
            const REASONS: [&str; 3] = ["Exhausted", "NoPool", "Conflict"];
            let mut h = ServiceHealth::default();
            for (k, pending, none, l2, remove) in ops {
                let k = key(&format!("s{k}"));
                if remove {
                    h.remove(&k);
                } else {
                    h.update(&k, |s| {
                        s.pending = pending.map(|r| REASONS[r]);
                        s.without_next_hop = none;
                        s.layer2_ips = l2;
                    });
                }
                proptest::prop_assert_eq!(h.totals(), &h.recount());
            }
        }
    }

    #[test]
    fn updating_the_same_state_twice_counts_it_once() {
        let mut h = ServiceHealth::default();
        for _ in 0..3 {
            h.update(&key("a"), |s| s.pending = Some("NoPool"));
        }
        assert_eq!(h.totals().pending.get("NoPool"), Some(&1));
    }
}

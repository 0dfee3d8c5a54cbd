//! Whether an announcing interface can answer: "alive" for a Layer2 owner means its
//! client-facing link is up, not only that its agent gossips.
//!
//! Pure: [`LinkHealth`] is fed what the node sees of each interface (from sysfs, re-read on
//! every netlink link/address event, see [`super::link_watch`]) and decides which interface
//! specs this node cannot serve now. The membership spreads that set, and every agent's
//! election leaves this node out of the candidates of IPs on those interfaces, so another
//! node takes them over while the link is down; they come back only after the link has been
//! up for a hold-down, so a flapping link does not move IPs on every flap.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::time::Instant;

use super::interface::Interface;

/// What the node sees of one interface spec now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observed {
    /// It does not resolve (deleted, renamed, no connected subnet for `can_reach:`).
    Missing,
    /// It resolves to `interface`; `usable` when its operational state lets frames through.
    Seen {
        /// The interface it resolves to now (index and MAC as of now).
        interface: Interface,
        /// Operationally up (see [`usable`]).
        usable: bool,
    },
}

/// Whether an interface with this `/sys/class/net/<if>/operstate` passes frames: `up`, or
/// `unknown` (drivers that report no carrier state, such as dummy or some tunnels).
/// `down`, `lowerlayerdown` (a veth whose peer is down, a bond without slaves), `dormant`,
/// `notpresent` and `testing` do not.
pub fn usable(operstate: &str) -> bool {
    matches!(operstate.trim(), "up" | "unknown")
}

/// What changed for one spec with an observation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Change {
    /// It now resolves to another interface (new index: deleted and recreated) or another
    /// MAC (changed address, bond failover): the announcer must be reopened on it, so
    /// replies and announcements carry the new MAC at once.
    pub replaced: bool,
    /// Its serving state changed (see [`LinkHealth::unable`]).
    pub serving_changed: bool,
}

#[derive(Clone, Debug)]
struct Link {
    /// The interface as last seen (`None`: missing).
    interface: Option<Interface>,
    state: State,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Answering.
    Serving,
    /// Down or missing.
    Unable,
    /// Up again, but not serving before this instant.
    HeldUntil(Instant),
}

/// The serving state of this node's announcing interfaces, by spec.
#[derive(Clone, Debug)]
pub struct LinkHealth {
    hold_down: Duration,
    links: BTreeMap<String, Link>,
}

impl LinkHealth {
    /// An interface that comes back up serves again after `hold_down`.
    pub fn new(hold_down: Duration) -> LinkHealth {
        LinkHealth {
            hold_down,
            links: BTreeMap::new(),
        }
    }

    /// Records what `spec` looks like at `now`. The first observation of a spec decides
    /// without a hold-down (at start the join timeout already waited); later, a link that
    /// comes back up waits for the hold-down, and going down or missing is immediate.
    pub fn observe(&mut self, spec: &str, seen: Observed, now: Instant) -> Change {
        let (interface, up) = match seen {
            Observed::Missing => (None, false),
            Observed::Seen { interface, usable } => (Some(interface), usable),
        };
        let Some(link) = self.links.get_mut(spec) else {
            let state = if up { State::Serving } else { State::Unable };
            self.links
                .insert(spec.to_owned(), Link { interface, state });
            return Change {
                replaced: false,
                serving_changed: state != State::Serving,
            };
        };
        let was_serving = link.state == State::Serving;
        let replaced = match (&link.interface, &interface) {
            (Some(old), Some(new)) => old.index != new.index || old.mac != new.mac,
            _ => false,
        };
        if interface.is_some() {
            link.interface = interface;
        }
        link.state = match (link.state, up) {
            (_, false) => State::Unable,
            (State::Unable, true) => State::HeldUntil(now + self.hold_down),
            (State::HeldUntil(t), true) if now >= t => State::Serving,
            (s, true) => s,
        };
        Change {
            replaced,
            serving_changed: was_serving != (link.state == State::Serving),
        }
    }

    /// Ends the hold-downs due at `now`; true when one ended (the unable set shrank).
    pub fn tick(&mut self, now: Instant) -> bool {
        let mut ended = false;
        for link in self.links.values_mut() {
            if let State::HeldUntil(t) = link.state
                && now >= t
            {
                link.state = State::Serving;
                ended = true;
            }
        }
        ended
    }

    /// The specs this node cannot serve now: down, missing, or within the hold-down.
    pub fn unable(&self) -> BTreeSet<String> {
        self.links
            .iter()
            .filter(|(_, l)| l.state != State::Serving)
            .map(|(s, _)| s.clone())
            .collect()
    }

    /// When the next hold-down ends.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.links
            .values()
            .filter_map(|l| match l.state {
                State::HeldUntil(t) => Some(t),
                _ => None,
            })
            .min()
    }

    /// Forgets the specs not in `keep` (no longer announced on this node).
    pub fn retain(&mut self, keep: &BTreeSet<String>) {
        self.links.retain(|s, _| keep.contains(s));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::layer2::Mac;

    const HOLD: Duration = Duration::from_secs(2);

    fn eth0(index: u32, last: u8) -> Interface {
        Interface {
            name: "eth0".into(),
            index,
            mac: Mac([2, 0, 0, 0, 0, last]),
        }
    }

    fn seen(index: u32, last: u8, usable: bool) -> Observed {
        Observed::Seen {
            interface: eth0(index, last),
            usable,
        }
    }

    #[test]
    fn operstates() {
        assert!(usable("up\n"));
        assert!(usable("unknown"));
        for s in [
            "down",
            "lowerlayerdown",
            "dormant",
            "notpresent",
            "testing",
            "",
        ] {
            assert!(!usable(s), "{s}");
        }
    }

    #[test]
    fn down_is_immediate_and_up_waits_for_the_hold_down() {
        let t0 = Instant::now();
        let mut h = LinkHealth::new(HOLD);
        // Up at start: serving at once, no hold-down.
        assert_eq!(h.observe("eth0", seen(4, 1, true), t0), Change::default());
        assert!(h.unable().is_empty());
        // Down: unable at once.
        let c = h.observe("eth0", seen(4, 1, false), t0 + Duration::from_secs(1));
        assert!(c.serving_changed && !c.replaced);
        assert_eq!(h.unable(), BTreeSet::from(["eth0".to_owned()]));
        // Up again: still unable for the hold-down.
        let up = t0 + Duration::from_secs(5);
        let c = h.observe("eth0", seen(4, 1, true), up);
        assert!(!c.serving_changed);
        assert_eq!(h.next_deadline(), Some(up + HOLD));
        assert!(!h.tick(up + HOLD - Duration::from_millis(1)));
        assert_eq!(h.unable().len(), 1);
        // Repeated "up" events during the hold-down do not restart or end it.
        h.observe("eth0", seen(4, 1, true), up + Duration::from_secs(1));
        assert_eq!(h.next_deadline(), Some(up + HOLD));
        assert!(h.tick(up + HOLD));
        assert!(h.unable().is_empty());
        assert_eq!(h.next_deadline(), None);
    }

    #[test]
    fn a_flap_during_the_hold_down_starts_it_again() {
        let t0 = Instant::now();
        let mut h = LinkHealth::new(HOLD);
        h.observe("eth0", seen(4, 1, true), t0);
        h.observe("eth0", seen(4, 1, false), t0);
        h.observe("eth0", seen(4, 1, true), t0 + Duration::from_secs(1));
        h.observe("eth0", seen(4, 1, false), t0 + Duration::from_millis(1500));
        assert_eq!(h.next_deadline(), None);
        let back = t0 + Duration::from_secs(2);
        h.observe("eth0", seen(4, 1, true), back);
        assert!(
            !h.tick(t0 + Duration::from_secs(3)),
            "the first hold-down no longer counts"
        );
        assert!(h.tick(back + HOLD));
    }

    #[test]
    fn a_deleted_interface_is_unable_and_its_successor_is_reopened() {
        let t0 = Instant::now();
        let mut h = LinkHealth::new(HOLD);
        h.observe("eth0", seen(4, 1, true), t0);
        let c = h.observe("eth0", Observed::Missing, t0);
        assert!(c.serving_changed && !c.replaced);
        assert_eq!(h.unable().len(), 1);
        // Recreated with a new index (and MAC): reopened, and held down like a link coming up.
        let c = h.observe("eth0", seen(9, 7, true), t0 + Duration::from_secs(1));
        assert!(c.replaced);
        assert_eq!(h.unable().len(), 1);
        assert!(h.tick(t0 + Duration::from_secs(1) + HOLD));
        assert!(h.unable().is_empty());
    }

    #[test]
    fn a_changed_mac_or_index_while_up_reopens_without_stopping() {
        let t0 = Instant::now();
        let mut h = LinkHealth::new(HOLD);
        h.observe("eth0", seen(4, 1, true), t0);
        let c = h.observe("eth0", seen(4, 2, true), t0);
        assert_eq!(
            c,
            Change {
                replaced: true,
                serving_changed: false
            }
        );
        assert!(h.unable().is_empty());
        // Seen again unchanged: nothing to do.
        assert_eq!(h.observe("eth0", seen(4, 2, true), t0), Change::default());
        // Deleted and recreated between two looks (the events coalesced): a new index.
        assert!(h.observe("eth0", seen(5, 2, true), t0).replaced);
        assert!(h.unable().is_empty());
    }

    #[test]
    fn missing_at_start_is_unable_and_forgotten_specs_are_dropped() {
        let t0 = Instant::now();
        let mut h = LinkHealth::new(HOLD);
        let c = h.observe("can_reach:10.0.0.1", Observed::Missing, t0);
        assert!(c.serving_changed);
        h.observe("eth0", seen(4, 1, true), t0);
        assert_eq!(
            h.unable(),
            BTreeSet::from(["can_reach:10.0.0.1".to_owned()])
        );
        h.retain(&BTreeSet::from(["eth0".to_owned()]));
        assert!(h.unable().is_empty());
    }
}

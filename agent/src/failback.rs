//! The failback hold-down: a member freshly (back) in the membership is not a Layer2
//! candidate until it has been alive for a while, so a node that restarts or rejoins after a
//! partition does not take its IPs back at once, and an IP does not move twice while the
//! views of a healing cluster converge.
//!
//! Pure: [`FailbackHoldDown`] is fed the membership as this agent sees it (name and start
//! generation of every live member) and says which members the election may use now.
//!
//! How the agents agree without a round of messages: every agent applies the same rule to
//! what it sees, and what they see differs only by the gossip's spread (tens of ms):
//!
//! - A member *appears* when its name enters the view, or comes back with another start
//!   generation (an agent restarted faster than the others noticed its death). It is held
//!   down from then on; a member that leaves and comes back starts again ("continuously
//!   alive").
//! - Held-down members are admitted **together, once the view has not grown for the
//!   hold-down** (a *quiet* hold-down): a heal is not atomic (each agent sees the others
//!   come back one after the other), and admitting each one a hold-down after its own
//!   appearance would replay that staggering as a series of elections, each moving some IPs.
//!   Admitting them all at once makes each agent's view jump from the partition's view to
//!   the whole one in one step, as the others' views do within the gossip's spread. So that
//!   steady churn elsewhere cannot hold a member back forever, one held for
//!   [`MAX_HOLD_FACTOR`] times the hold-down is admitted anyway.
//! - This agent itself counts from the end of its join, and the members it sees while
//!   joining count from then too: a restarted agent takes nothing until the hold-down after
//!   its join (the others, who saw it appear a little earlier, hold it down as long and drop
//!   its IPs a few ms before it takes them: a gap, never two answering), and never elects
//!   itself in a view where the others are still held down (it would take every IP).
//! - A member once admitted stays admitted until it leaves: what appears later does not hold
//!   it back.
//! - A member back within [`FLAP`] (1 s) with the same start generation is taken back as it
//!   was, not held: it was declared down without having failed (a false suspicion on a
//!   loaded machine, a short stall), and the agent itself never saw anything (it holds
//!   nothing); holding it would leave the views apart for a whole hold-down. Observers that
//!   measure the absence on either side of 1 s disagree for a hold-down: the segment's
//!   arbitration keeps one answer per question meanwhile.
//!
//! During a partition each side's view holds only itself; at the heal every agent holds
//! the other side down for the hold-down, so the elections stay those of the partition (and
//! the segment's arbitration, `layer2::arbiter`, keeps one answering node per IP as during
//! the partition), then every view jumps to the whole membership within the gossip's spread:
//! each IP moves at most once, to its owner in the whole view (usually the node that kept it
//! through the partition: then not at all).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::time::Instant;

/// A member held down this many hold-downs after it appeared is admitted even if the view
/// keeps growing (steady churn elsewhere in a large cluster).
pub const MAX_HOLD_FACTOR: u32 = 3;

/// Which live members the Layer2 election may use (see the module documentation).
#[derive(Clone, Debug)]
pub struct FailbackHoldDown {
    hold_down: Duration,
    me: String,
    /// By live member: its start generation (`None` until known) and when it appeared.
    seen: BTreeMap<String, (Option<u32>, Instant)>,
    /// The live members admitted so far: they stay admitted until they leave, whatever
    /// appears later.
    admitted: BTreeSet<String>,
    /// Members that left lately: their generation, when they appeared, whether they were
    /// admitted, and when they left (a quick return is a false down, not a failure).
    gone: BTreeMap<String, (Option<u32>, Instant, bool, Instant)>,
    /// When the view last grew.
    last_growth: Instant,
}

/// A member back within this long with the same start generation is not held down: it
/// was declared down without having failed (a false suspicion on a loaded machine, a stall
/// of a fraction of a second) and is elected again at once, as before the hold-down, so a
/// flap does not leave the agents' views apart for a whole hold-down. A restart (another
/// generation) or a longer absence (a partition, a cut link) is held down.
pub const FLAP: Duration = Duration::from_secs(1);

impl FailbackHoldDown {
    /// This agent (`me`) started at `start`, and `initial` is its view after joining: those
    /// members, itself included, count from `start` (`generations`: see
    /// [`FailbackHoldDown::observe`]). A zero `hold_down` admits every live member at once.
    pub fn new(
        me: &str,
        hold_down: Duration,
        start: Instant,
        initial: &BTreeSet<String>,
        generations: &BTreeMap<String, u32>,
    ) -> FailbackHoldDown {
        let mut seen: BTreeMap<String, (Option<u32>, Instant)> = initial
            .iter()
            .map(|n| (n.clone(), (generations.get(n).copied(), start)))
            .collect();
        seen.entry(me.to_owned()).or_insert((None, start));
        FailbackHoldDown {
            hold_down,
            me: me.to_owned(),
            seen,
            admitted: BTreeSet::new(),
            gone: BTreeMap::new(),
            last_growth: start,
        }
    }

    /// Records the view at `now`: the live members' names (this agent is always taken as
    /// live) and their start generations. A member missing from `generations` keeps the one
    /// recorded, and a generation learnt for a member recorded without one is filled in, not
    /// taken as a restart (the two are published one after the other). True when a member
    /// appeared or left.
    pub fn observe(
        &mut self,
        alive: &BTreeSet<String>,
        generations: &BTreeMap<String, u32>,
        now: Instant,
    ) -> bool {
        // Admissions due before this view count first: a member once admitted stays so.
        let due: Vec<String> = self
            .seen
            .keys()
            .filter(|n| self.admitted_at(n).is_some_and(|t| now >= t))
            .cloned()
            .collect();
        self.admitted.extend(due);
        self.gone
            .retain(|_, (_, _, _, left)| now.duration_since(*left) < FLAP);
        let left: Vec<String> = self
            .seen
            .keys()
            .filter(|n| !alive.contains(*n) && **n != self.me)
            .cloned()
            .collect();
        let mut changed = !left.is_empty();
        for name in left {
            if let Some((g, since)) = self.seen.remove(&name) {
                let was = self.admitted.remove(&name);
                self.gone.insert(name, (g, since, was, now));
            }
        }
        for name in alive {
            if *name == self.me {
                continue;
            }
            let generation = generations.get(name).copied();
            match self.seen.get_mut(name) {
                Some((Some(g), _)) if generation.is_none_or(|now_g| now_g == *g) => {}
                Some((known @ None, _)) if generation.is_some() => *known = generation,
                Some((None, _)) => {}
                _ => {
                    changed = true;
                    // Back quickly with the same generation: a flap, taken back as it was.
                    if let Some((g, since, was, _)) = self.gone.remove(name)
                        && !self.seen.contains_key(name)
                        && (g.is_none() || generation.is_none() || g == generation)
                    {
                        self.seen.insert(name.clone(), (g.or(generation), since));
                        if was {
                            self.admitted.insert(name.clone());
                        }
                        continue;
                    }
                    self.seen.insert(name.clone(), (generation, now));
                    self.admitted.remove(name);
                    self.last_growth = now;
                }
            }
        }
        changed
    }

    /// When `name` (as seen now) is admitted; `None` if it is not live.
    fn admitted_at(&self, name: &str) -> Option<Instant> {
        let (_, since) = self.seen.get(name)?;
        if self.admitted.contains(name) {
            return Some(*since);
        }
        let quiet = self.last_growth + self.hold_down;
        let cap = *since + self.hold_down * MAX_HOLD_FACTOR;
        Some((*since + self.hold_down).max(quiet.min(cap)))
    }

    /// The live members the election may use at `now`.
    pub fn admitted(&self, now: Instant) -> BTreeSet<String> {
        self.seen
            .keys()
            .filter(|n| self.admitted_at(n).is_some_and(|t| now >= t))
            .cloned()
            .collect()
    }

    /// The live members still held down at `now`, with when each is admitted.
    pub fn held(&self, now: Instant) -> BTreeMap<String, Instant> {
        self.seen
            .keys()
            .filter_map(|n| Some((n.clone(), self.admitted_at(n)?)))
            .filter(|(_, t)| now < *t)
            .collect()
    }

    /// When the next held-down member is admitted, if any is held at `now`.
    pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
        self.held(now).into_values().min()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const H: Duration = Duration::from_secs(3);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn view(members: &[(&str, u32)]) -> (BTreeSet<String>, BTreeMap<String, u32>) {
        (
            members.iter().map(|(n, _)| n.to_string()).collect(),
            members.iter().map(|(n, g)| (n.to_string(), *g)).collect(),
        )
    }

    fn start(me: &str, t: Instant, members: &[(&str, u32)]) -> FailbackHoldDown {
        let (a, g) = view(members);
        FailbackHoldDown::new(me, H, t, &a, &g)
    }

    fn see(h: &mut FailbackHoldDown, members: &[(&str, u32)], t: Instant) -> bool {
        let (a, g) = view(members);
        h.observe(&a, &g, t)
    }

    fn names(n: &[&str]) -> BTreeSet<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_restarted_agent_waits_the_hold_down_on_every_side() {
        let t0 = Instant::now();
        // n2 has run for a long time with n1 and n3.
        let mut n2 = start("n2", t0, &[("n1", 7), ("n2", 1), ("n3", 4)]);
        let t1 = t0 + Duration::from_secs(60);
        assert_eq!(n2.admitted(t1), names(&["n1", "n2", "n3"]));
        // n1 dies, then comes back (new generation) 1 s later.
        assert!(see(&mut n2, &[("n2", 1), ("n3", 4)], t1));
        assert_eq!(n2.admitted(t1), names(&["n2", "n3"]));
        let back = t1 + Duration::from_secs(1);
        assert!(see(&mut n2, &[("n1", 8), ("n2", 1), ("n3", 4)], back));
        assert_eq!(n2.admitted(back + H - ms(1)), names(&["n2", "n3"]));
        assert_eq!(n2.next_deadline(back), Some(back + H));
        assert_eq!(n2.admitted(back + H), names(&["n1", "n2", "n3"]));
        assert_eq!(n2.next_deadline(back + H), None);
        // The restarted n1 itself: its view after joining counts from its start, itself too,
        // so it elects nobody (itself included) before the hold-down: it takes no IP early.
        let began = back - ms(50);
        let n1 = start("n1", began, &[("n1", 8), ("n2", 1), ("n3", 4)]);
        assert!(n1.admitted(began + H - ms(1)).is_empty());
        assert_eq!(n1.admitted(began + H), names(&["n1", "n2", "n3"]));
    }

    #[test]
    fn a_restart_faster_than_detection_is_an_appearance() {
        let t0 = Instant::now();
        let mut h = start("n2", t0, &[("n1", 7), ("n2", 1)]);
        let t1 = t0 + Duration::from_secs(60);
        // n1's name never left the view, but its generation changed: it restarted.
        assert!(see(&mut h, &[("n1", 8), ("n2", 1)], t1));
        assert_eq!(h.admitted(t1), names(&["n2"]));
        assert_eq!(h.admitted(t1 + H), names(&["n1", "n2"]));
        // The same view again changes nothing, nor does a view whose generations lag behind
        // the names (published one after the other).
        assert!(!see(&mut h, &[("n1", 8), ("n2", 1)], t1 + ms(10)));
        let lagging = names(&["n1", "n2"]);
        assert!(!h.observe(&lagging, &BTreeMap::new(), t1 + ms(20)));
        assert_eq!(h.admitted(t1 + H), names(&["n1", "n2"]));
        // A member first seen without its generation: learning it later is no restart.
        let t2 = t1 + Duration::from_secs(60);
        assert!(h.observe(&names(&["n1", "n2", "n3"]), &BTreeMap::new(), t2));
        assert!(!see(
            &mut h,
            &[("n1", 8), ("n2", 1), ("n3", 5)],
            t2 + ms(30)
        ));
        assert_eq!(h.admitted(t2 + H), names(&["n1", "n2", "n3"]));
        assert!(see(&mut h, &[("n1", 8), ("n2", 1), ("n3", 6)], t2 + H));
        assert_eq!(h.admitted(t2 + H), names(&["n1", "n2"]));
    }

    #[test]
    fn a_member_that_leaves_during_its_hold_down_starts_again() {
        let t0 = Instant::now();
        let mut h = start("n2", t0, &[("n2", 1)]);
        let t1 = t0 + Duration::from_secs(60);
        see(&mut h, &[("n1", 8), ("n2", 1)], t1);
        see(&mut h, &[("n2", 1)], t1 + Duration::from_secs(1));
        let again = t1 + Duration::from_millis(2500);
        see(&mut h, &[("n1", 8), ("n2", 1)], again);
        assert_eq!(h.admitted(t1 + H), names(&["n2"]), "continuously alive");
        assert_eq!(h.admitted(again + H), names(&["n1", "n2"]));
    }

    /// A heal seen member by member: each agent's view jumps to the whole membership once,
    /// a hold-down after the last appearance, and never passes through a partial view in
    /// which some held member is admitted and another not.
    #[test]
    fn a_staggered_heal_is_admitted_in_one_step() {
        let t0 = Instant::now();
        let mut h = start("n1", t0, &[("n1", 1)]);
        let heal = t0 + Duration::from_secs(60);
        see(&mut h, &[("n1", 1), ("n2", 1)], heal);
        see(&mut h, &[("n1", 1), ("n2", 1), ("n3", 1)], heal + ms(300));
        assert_eq!(h.admitted(heal + H), names(&["n1"]), "n2 waits for quiet");
        assert_eq!(h.next_deadline(heal + H), Some(heal + ms(300) + H));
        assert_eq!(h.admitted(heal + ms(300) + H), names(&["n1", "n2", "n3"]));
        // Every admitted set over time is either the partition's or the whole one.
        let mut t = heal;
        while t < heal + Duration::from_secs(5) {
            let a = h.admitted(t);
            assert!(
                a == names(&["n1"]) || a == names(&["n1", "n2", "n3"]),
                "{a:?}"
            );
            t += ms(50);
        }
    }

    /// A member that appears does not hold back those already admitted, however recently
    /// (a false down of one member shortly after a cold start must not silence everyone).
    #[test]
    fn an_appearance_never_holds_back_an_admitted_member() {
        let t0 = Instant::now();
        let mut h = start("n1", t0, &[("n1", 1), ("n2", 1), ("n3", 1)]);
        assert_eq!(h.admitted(t0 + H), names(&["n1", "n2", "n3"]));
        // n3 is cut off and comes back 1.5 s after everyone was admitted.
        see(&mut h, &[("n1", 1), ("n2", 1)], t0 + H + ms(500));
        let back = t0 + H + ms(500) + FLAP;
        see(&mut h, &[("n1", 1), ("n2", 1), ("n3", 1)], back);
        assert_eq!(h.admitted(back), names(&["n1", "n2"]));
        assert_eq!(h.admitted(back + H), names(&["n1", "n2", "n3"]));
    }

    /// A member back within [`FLAP`] with the same generation was a false down: taken back
    /// as it was; back later, or restarted, it is held down.
    #[test]
    fn a_flap_is_not_held_down_but_a_longer_absence_is() {
        let t0 = Instant::now();
        let mut h = start("n1", t0, &[("n1", 0), ("n2", 1), ("n3", 1)]);
        let t1 = t0 + Duration::from_secs(60);
        assert_eq!(h.admitted(t1), names(&["n1", "n2", "n3"]));
        assert!(see(&mut h, &[("n1", 0), ("n3", 1)], t1));
        assert!(see(
            &mut h,
            &[("n1", 0), ("n2", 1), ("n3", 1)],
            t1 + ms(300)
        ));
        assert_eq!(h.admitted(t1 + ms(300)), names(&["n1", "n2", "n3"]));
        // Gone for longer than a flap: held.
        see(&mut h, &[("n1", 0), ("n3", 1)], t1 + ms(1000));
        let back = t1 + ms(1000) + FLAP;
        see(&mut h, &[("n1", 0), ("n2", 1), ("n3", 1)], back);
        assert_eq!(h.admitted(back), names(&["n1", "n3"]));
        assert_eq!(h.admitted(back + H), names(&["n1", "n2", "n3"]));
        // Back quickly but restarted: held.
        let t2 = back + H + ms(10);
        see(&mut h, &[("n1", 0), ("n3", 1)], t2);
        see(&mut h, &[("n1", 0), ("n2", 2), ("n3", 1)], t2 + ms(100));
        assert_eq!(h.admitted(t2 + ms(100)), names(&["n1", "n3"]));
    }

    #[test]
    fn steady_churn_cannot_hold_a_member_back_forever() {
        let t0 = Instant::now();
        let mut h = start("n0", t0, &[("n0", 1)]);
        let t1 = t0 + Duration::from_secs(60);
        let mut members: BTreeSet<String> = names(&["n0", "n1"]);
        h.observe(&members, &BTreeMap::new(), t1);
        // A new member every second from then on: n1 waits for the cap, then stays admitted.
        let cap = t1 + H * MAX_HOLD_FACTOR;
        for k in 1..=20u64 {
            let now = t1 + Duration::from_secs(k);
            members.insert(format!("m{k}"));
            h.observe(&members, &BTreeMap::new(), now);
            assert_eq!(h.admitted(now).contains("n1"), now >= cap, "+{k}s");
        }
    }

    #[test]
    fn zero_admits_at_once_and_this_agent_is_always_live() {
        let t0 = Instant::now();
        let mut h =
            FailbackHoldDown::new("n1", Duration::ZERO, t0, &BTreeSet::new(), &BTreeMap::new());
        assert_eq!(h.admitted(t0), names(&["n1"]));
        see(&mut h, &[("n2", 3)], t0 + ms(5));
        assert_eq!(h.admitted(t0 + ms(5)), names(&["n1", "n2"]));
        assert_eq!(h.next_deadline(t0 + ms(5)), None);
    }
}

//! The client segment as arbiter between nodes that both believe they own an IP (a gossip
//! partition: each side elects itself). Pure: events in, [`Action`]s out; the announcer does
//! the I/O.
//!
//! Every owner watches the segment for claims of its IPs by other MACs (ARP replies,
//! gratuitous ARP, Neighbor Advertisements) and resolves them so that the node already
//! answering keeps the IP (the IP does not move during a partition, so it moves at most once
//! when the partition heals):
//!
//! - a **fresh** owner (it took the IP less than [`FRESH`] ago: a takeover, or the end of a
//!   yield when the membership healed) yields at once to any claim: someone was answering
//!   already;
//! - an **established** owner ranks both MACs with [`rank`]`(ip, mac)`, which both sides
//!   compute from what is on the wire. The higher one defends (RFC 5227 §2.4: re-announces,
//!   at most once per [`DEFEND_INTERVAL`]). The lower one cannot tell a fresh claimant (which
//!   will yield) from an established one, so it *challenges*: it defends once, probes after
//!   [`CHALLENGE_GRACE`] (claims sent before our defence arrived are ignored meanwhile), and
//!   yields if a claim still comes after that.
//!
//! A yielded node stays silent until its membership view grows (a heal: the election decides
//! again) or the winner leaves [`MAX_UNANSWERED`] probes, sent every [`PROBE_INTERVAL`],
//! unanswered (the winner died during the partition); it then answers again as an
//! established owner.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use tokio::time::Instant;

use super::Mac;
use crate::owner;

/// Least time between two defences of one IP against one MAC (RFC 5227 `DEFEND_INTERVAL`),
/// so a host that announces in a loop does not make us flood the segment.
pub const DEFEND_INTERVAL: Duration = Duration::from_secs(1);
/// How long an owner counts as fresh after taking an IP.
pub const FRESH: Duration = Duration::from_secs(2);
/// How long an owner that took an IP because the membership grew defends it against any
/// claim: the previous owner's view catches up within SWIM's propagation (tens of ms).
pub const ASSERTIVE: Duration = Duration::from_secs(1);
/// After a challenge, how long claims are ignored (they may have left before our defence
/// arrived) before the probe that decides.
pub const CHALLENGE_GRACE: Duration = Duration::from_millis(50);
/// How long a challenge lasts: a claim after it starts a new one.
pub const CHALLENGE_WINDOW: Duration = Duration::from_secs(2);
/// How often a yielded node asks whether the winner still answers.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// Probes left unanswered in a row after which a yielded node takes its IP back.
pub const MAX_UNANSWERED: u32 = 3;

/// The rank of `mac` for `ip` on the wire: the rendezvous weight of the MAC's text form
/// (same hash as the election), ties broken by the MAC itself, so any two distinct MACs are
/// ordered and both sides compute the same order.
pub fn rank(ip: IpAddr, mac: Mac) -> (u64, Mac) {
    (owner::weight(&mac.to_string(), ip), mac)
}

/// What the announcer must do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Stop answering `ip` (another MAC answers it); its local route goes.
    Yield {
        /// The IP given up.
        ip: IpAddr,
        /// Who claimed it.
        winner: Mac,
    },
    /// Announce `ip` again: another MAC claimed it.
    Defend(IpAddr),
    /// Ask the segment who has `ip` (whoever answers it replies).
    Probe(IpAddr),
    /// Answer `ip` again (and announce it): the winner is gone or the view healed.
    Reclaim(IpAddr),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Answering {
        /// Fresh until then (see [`FRESH`]); `None`: established.
        fresh_until: Option<Instant>,
        /// Taken because the membership grew (a node joined or came back): the previous owner
        /// is alive and drops the IP as soon as its view catches up, so claims are defended,
        /// never yielded to, until then (see [`ASSERTIVE`]).
        assertive_until: Option<Instant>,
        /// The last defence, and against whom: the rate limit is per claimant, so a second
        /// claimant right after the first still hears us.
        defended: Option<(Instant, Mac)>,
        /// A challenge of that MAC running since then, and whether its probe went out.
        challenge: Option<(Instant, Mac, bool)>,
    },
    /// Silent; `heard` is set when someone claimed the IP since the last probe.
    Yielded {
        heard: bool,
        unanswered: u32,
        next_probe: Instant,
    },
}

impl State {
    fn assertive(now: Instant) -> State {
        State::Answering {
            fresh_until: None,
            assertive_until: Some(now + ASSERTIVE),
            defended: None,
            challenge: None,
        }
    }

    fn fresh(now: Instant) -> State {
        State::Answering {
            fresh_until: Some(now + FRESH),
            assertive_until: None,
            defended: None,
            challenge: None,
        }
    }

    fn established() -> State {
        State::Answering {
            fresh_until: None,
            assertive_until: None,
            defended: None,
            challenge: None,
        }
    }
}

/// The arbitration state of one interface's owned IPs.
#[derive(Debug)]
pub struct Arbiter {
    me: Mac,
    ips: BTreeMap<IpAddr, State>,
}

impl Arbiter {
    /// Nothing owned yet; `me` is this node's MAC on the interface.
    pub fn new(me: Mac) -> Arbiter {
        Arbiter {
            me,
            ips: BTreeMap::new(),
        }
    }

    /// Follows the elected set: IPs no longer elected are forgotten (a later takeover starts
    /// anew). New IPs are answered: fresh when the membership shrank (a failover, or a
    /// partition: someone may still answer), assertive when it `grew` (a join or failback:
    /// the previous owner is alive and about to drop the IP).
    pub fn set_owned(&mut self, owned: &BTreeSet<IpAddr>, grew: bool, now: Instant) {
        self.ips.retain(|ip, _| owned.contains(ip));
        for ip in owned {
            self.ips.entry(*ip).or_insert_with(|| {
                if grew {
                    State::assertive(now)
                } else {
                    State::fresh(now)
                }
            });
        }
    }

    /// Whether this node answers `ip` now (elected and not yielded).
    pub fn answers(&self, ip: IpAddr) -> bool {
        matches!(self.ips.get(&ip), Some(State::Answering { .. }))
    }

    /// Whether this node yielded `ip` to another MAC.
    pub fn is_yielded(&self, ip: IpAddr) -> bool {
        matches!(self.ips.get(&ip), Some(State::Yielded { .. }))
    }

    /// The elected IPs this node yielded.
    pub fn yielded(&self) -> BTreeSet<IpAddr> {
        self.ips
            .iter()
            .filter(|(_, s)| matches!(s, State::Yielded { .. }))
            .map(|(ip, _)| *ip)
            .collect()
    }

    /// `mac` claims `ip` on the segment (ARP reply, gratuitous ARP, Neighbor Advertisement).
    pub fn claimed(&mut self, ip: IpAddr, mac: Mac, now: Instant) -> Option<Action> {
        if mac == self.me {
            return None;
        }
        let outranks = rank(ip, self.me) > rank(ip, mac);
        let state = self.ips.get_mut(&ip)?;
        let yielded = State::Yielded {
            // The claim that made us yield counts as the first interval's answer.
            heard: true,
            unanswered: 0,
            next_probe: now + PROBE_INTERVAL,
        };
        match state {
            State::Answering {
                fresh_until,
                assertive_until,
                defended,
                challenge,
            } => {
                if assertive_until.is_some_and(|t| now < t) {
                    if defended.is_none_or(|(t, who)| {
                        who != mac || now.duration_since(t) >= DEFEND_INTERVAL
                    }) {
                        *defended = Some((now, mac));
                        return Some(Action::Defend(ip));
                    }
                    return None;
                }
                if fresh_until.is_some_and(|t| now < t) {
                    *state = yielded;
                    return Some(Action::Yield { ip, winner: mac });
                }
                if outranks {
                    if defended.is_none_or(|(t, who)| {
                        who != mac || now.duration_since(t) >= DEFEND_INTERVAL
                    }) {
                        *defended = Some((now, mac));
                        return Some(Action::Defend(ip));
                    }
                    return None;
                }
                match *challenge {
                    // Only the MAC challenged can make us yield: another fresh claimant that
                    // shows up meanwhile gets a challenge of its own (and yields to it).
                    Some((since, who, _)) if who == mac => {
                        let age = now.duration_since(since);
                        if age < CHALLENGE_GRACE {
                            None
                        } else if age < CHALLENGE_WINDOW {
                            *state = yielded;
                            Some(Action::Yield { ip, winner: mac })
                        } else {
                            *challenge = Some((now, mac, false));
                            *defended = Some((now, mac));
                            Some(Action::Defend(ip))
                        }
                    }
                    _ => {
                        *challenge = Some((now, mac, false));
                        *defended = Some((now, mac));
                        Some(Action::Defend(ip))
                    }
                }
            }
            State::Yielded { heard, .. } => {
                // Someone answers: stay silent.
                *heard = true;
                None
            }
        }
    }

    /// The membership view grew (a heal): the election decides again, every yield ends; the
    /// IPs taken back are fresh, so a node still answering from before keeps them until its
    /// own view catches up.
    pub fn view_grew(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        for (ip, state) in &mut self.ips {
            if matches!(state, State::Yielded { .. }) {
                *state = State::fresh(now);
                out.push(Action::Reclaim(*ip));
            }
        }
        out
    }

    /// When [`Arbiter::tick`] has something to do next, if ever.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.ips
            .values()
            .filter_map(|s| match s {
                State::Yielded { next_probe, .. } => Some(*next_probe),
                State::Answering {
                    challenge: Some((since, _, false)),
                    ..
                } => Some(*since + CHALLENGE_GRACE),
                State::Answering { .. } => None,
            })
            .min()
    }

    /// Probes due at `now` (challenges, yielded IPs), and reclaims of IPs whose winner left
    /// [`MAX_UNANSWERED`] probes unanswered.
    pub fn tick(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        for (ip, state) in &mut self.ips {
            match state {
                State::Answering {
                    challenge: Some((since, _, sent)),
                    ..
                } => {
                    if !*sent && now >= *since + CHALLENGE_GRACE {
                        *sent = true;
                        out.push(Action::Probe(*ip));
                    }
                }
                State::Answering { .. } => {}
                State::Yielded {
                    heard,
                    unanswered,
                    next_probe,
                } => {
                    if *next_probe > now {
                        continue;
                    }
                    // The interval since the last probe is over: was anyone heard in it?
                    if *heard {
                        *unanswered = 0;
                    } else {
                        *unanswered += 1;
                    }
                    if *unanswered >= MAX_UNANSWERED {
                        *state = State::established();
                        out.push(Action::Reclaim(*ip));
                        continue;
                    }
                    *heard = false;
                    *next_probe = now + PROBE_INTERVAL;
                    out.push(Action::Probe(*ip));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn ip() -> IpAddr {
        "10.0.0.240".parse().unwrap()
    }

    fn mac(i: u8) -> Mac {
        Mac([2, 0, 0, 0, 0, i])
    }

    /// A segment of arbiters: every announcement reaches every other node after `delay`, a
    /// probe is answered by every node answering the IP. Returns who answers at each
    /// millisecond.
    struct Sim {
        nodes: Vec<(Mac, Arbiter)>,
        /// (when, from, is a claim (else a probe)).
        wire: Vec<(Instant, usize, bool)>,
        delay: Duration,
    }

    impl Sim {
        fn new(macs: &[Mac], delay: Duration) -> Sim {
            Sim {
                nodes: macs.iter().map(|m| (*m, Arbiter::new(*m))).collect(),
                wire: Vec::new(),
                delay,
            }
        }

        fn act(&mut self, from: usize, actions: Vec<Action>, now: Instant) {
            for a in actions {
                match a {
                    Action::Defend(_) | Action::Reclaim(_) => {
                        self.wire.push((now + self.delay, from, true))
                    }
                    Action::Probe(_) => self.wire.push((now + self.delay, from, false)),
                    Action::Yield { .. } => {}
                }
            }
        }

        /// Node `i` is elected at `now` (it announces at once).
        fn elect(&mut self, i: usize, now: Instant) {
            self.nodes[i].1.set_owned(&[ip()].into(), false, now);
            self.wire.push((now + self.delay, i, true));
        }

        fn answering(&self) -> Vec<usize> {
            (0..self.nodes.len())
                .filter(|i| self.nodes[*i].1.answers(ip()))
                .collect()
        }

        /// Runs `ms` milliseconds; returns the answering set at every millisecond.
        fn run(&mut self, start: Instant, ms: u64) -> Vec<Vec<usize>> {
            let mut seen = Vec::new();
            for t in 0..ms {
                let now = start + Duration::from_millis(t);
                let due: Vec<(Instant, usize, bool)> =
                    self.wire.iter().filter(|w| w.0 <= now).copied().collect();
                self.wire.retain(|w| w.0 > now);
                for (_, from, claim) in due {
                    if claim {
                        for i in 0..self.nodes.len() {
                            if i != from {
                                let sender = self.nodes[from].0;
                                let a = self.nodes[i].1.claimed(ip(), sender, now);
                                self.act(i, a.into_iter().collect(), now);
                            }
                        }
                    } else {
                        // The prober hears an answer from everyone answering.
                        for i in self.answering() {
                            if i != from {
                                let sender = self.nodes[i].0;
                                let a = self.nodes[from].1.claimed(ip(), sender, now);
                                self.act(from, a.into_iter().collect(), now);
                            }
                        }
                    }
                }
                for i in 0..self.nodes.len() {
                    let a = self.nodes[i].1.tick(now);
                    self.act(i, a, now);
                }
                seen.push(self.answering());
            }
            seen
        }
    }

    fn by_rank(ip: IpAddr, macs: &mut [Mac]) {
        macs.sort_by_key(|m| rank(ip, *m));
    }

    #[test]
    fn rank_is_pinned() {
        // Part of the agents' protocol: two versions must agree on who yields.
        assert_eq!(
            rank(ip(), mac(0x11)).0,
            owner::weight("02:00:00:00:00:11", ip())
        );
    }

    proptest! {
        /// Two established owners that hear each other: for any two MACs and any IP exactly
        /// one answers 100 ms later, the same one whichever side hears first.
        #[test]
        fn two_established_owners_leave_exactly_one(a in any::<[u8; 6]>(), b in any::<[u8; 6]>(), v4 in any::<u32>(), v6 in any::<u128>(), six in any::<bool>(), first in 0usize..2) {
            prop_assume!(a != b);
            let ip = if six { IpAddr::from(std::net::Ipv6Addr::from(v6)) } else { IpAddr::from(std::net::Ipv4Addr::from(v4)) };
            let (a, b) = (Mac(a), Mac(b));
            let now = Instant::now();
            let mut x = Arbiter::new(a);
            let mut y = Arbiter::new(b);
            x.set_owned(&[ip].into(), false, now);
            y.set_owned(&[ip].into(), false, now);
            // Established: past FRESH. Each announces; each answers every probe it gets.
            let mut t = now + FRESH;
            let mut queue: Vec<(usize, Action)> = if first == 0 { vec![(0, Action::Defend(ip)), (1, Action::Defend(ip))] } else { vec![(1, Action::Defend(ip)), (0, Action::Defend(ip))] };
            for _ in 0..200 {
                t += Duration::from_millis(1);
                let mut next = Vec::new();
                for (from, act) in queue.drain(..) {
                    let (src, dst, dst_mac) = if from == 0 { (a, &mut y, b) } else { (b, &mut x, a) };
                    let _ = dst_mac;
                    match act {
                        Action::Defend(_) | Action::Reclaim(_) => {
                            if let Some(r) = dst.claimed(ip, src, t) { next.push((1 - from, r)); }
                        }
                        Action::Probe(_) => {
                            if dst.answers(ip) {
                                let back = if from == 0 { &mut x } else { &mut y };
                                if let Some(r) = back.claimed(ip, if from == 0 { b } else { a }, t) { next.push((from, r)); }
                            }
                        }
                        Action::Yield { .. } => {}
                    }
                }
                for a2 in x.tick(t) { next.push((0, a2)); }
                for a2 in y.tick(t) { next.push((1, a2)); }
                queue = next;
            }
            prop_assert_eq!(u8::from(x.answers(ip)) + u8::from(y.answers(ip)), 1);
            // The higher rank keeps it.
            prop_assert_eq!(x.answers(ip), rank(ip, a) > rank(ip, b));
        }
    }

    #[test]
    fn a_partition_leaves_the_incumbent_answering_whatever_the_ranks() {
        // n0 owned the IP for long; a partition makes n1 and n2 take it at once too.
        for perm in [
            [1u8, 2, 3],
            [1, 3, 2],
            [2, 1, 3],
            [2, 3, 1],
            [3, 1, 2],
            [3, 2, 1],
        ] {
            let macs: Vec<Mac> = perm.iter().map(|i| mac(*i)).collect();
            let t0 = Instant::now();
            let mut sim = Sim::new(&macs, Duration::from_millis(1));
            sim.nodes[0].1.set_owned(&[ip()].into(), false, t0);
            let t1 = t0 + FRESH + Duration::from_secs(1);
            sim.elect(1, t1);
            sim.elect(2, t1);
            let seen = sim.run(t1, 5000);
            // One answers within 10 ms and to the end: the incumbent.
            for (ms, who) in seen.iter().enumerate().skip(10) {
                assert_eq!(who, &vec![0], "{perm:?} at {ms} ms");
            }
        }
    }

    #[test]
    fn a_late_fresh_claimant_does_not_make_a_challenging_incumbent_yield() {
        // Seen in the namespace test: the incumbent challenges n1's claim, then n2's view
        // drops too and n2 claims 50 ms later. The incumbent must not yield to n2.
        for perm in [
            [1u8, 2, 3],
            [1, 3, 2],
            [2, 1, 3],
            [2, 3, 1],
            [3, 1, 2],
            [3, 2, 1],
        ] {
            let macs: Vec<Mac> = perm.iter().map(|i| mac(*i)).collect();
            let t0 = Instant::now();
            let mut sim = Sim::new(&macs, Duration::from_millis(1));
            sim.nodes[0].1.set_owned(&[ip()].into(), false, t0);
            let t1 = t0 + FRESH + Duration::from_secs(1);
            sim.elect(1, t1);
            let mut seen = sim.run(t1, 50);
            sim.elect(2, t1 + Duration::from_millis(50));
            seen.extend(sim.run(t1 + Duration::from_millis(50), 5000));
            for (ms, who) in seen.iter().enumerate().skip(10) {
                if !(50..60).contains(&ms) {
                    assert_eq!(who, &vec![0], "{perm:?} at {ms} ms");
                }
            }
        }
    }

    #[test]
    fn established_owners_keep_the_higher_rank_within_a_challenge() {
        // A link comes back: two owners established for long hear each other.
        let mut macs = [mac(1), mac(2)];
        by_rank(ip(), &mut macs);
        let [low, high] = macs;
        let t0 = Instant::now();
        let mut sim = Sim::new(&[low, high], Duration::from_millis(1));
        sim.nodes[0].1.set_owned(&[ip()].into(), false, t0);
        sim.nodes[1].1.set_owned(&[ip()].into(), false, t0);
        let t1 = t0 + FRESH;
        sim.wire.push((t1, 0, true));
        let seen = sim.run(t1, 3000);
        let settle = CHALLENGE_GRACE.as_millis() as usize + 5;
        for (ms, who) in seen.iter().enumerate().skip(settle) {
            assert_eq!(who, &vec![1], "at {ms} ms");
        }
    }

    #[test]
    fn all_fresh_falls_back_to_probes_then_rank() {
        // The incumbent died during the partition too: every claimant is fresh, all yield,
        // the probes go unanswered, all come back established, the rank decides.
        let mut macs = [mac(1), mac(2), mac(3)];
        by_rank(ip(), &mut macs);
        let t0 = Instant::now();
        let mut sim = Sim::new(&macs, Duration::from_millis(1));
        for i in 0..3 {
            sim.elect(i, t0);
        }
        let seen = sim.run(t0, 6000);
        let bound =
            (PROBE_INTERVAL * (MAX_UNANSWERED + 1) + CHALLENGE_GRACE).as_millis() as usize + 20;
        // Coming back together, the lower ones answer until their challenge decides.
        let doubled = seen.iter().filter(|w| w.len() > 1).count();
        assert!(
            doubled <= CHALLENGE_GRACE.as_millis() as usize + 5,
            "{doubled} ms with two"
        );
        for (ms, who) in seen.iter().enumerate().skip(bound) {
            assert_eq!(who, &vec![2], "at {ms} ms");
        }
    }

    #[test]
    fn a_join_takes_over_from_a_live_owner_without_yielding() {
        // n1 comes back and is elected; n0 (established, still answering until its view
        // catches up) defends or challenges: n1 must not yield, n0 drops it 30 ms later.
        for perm in [[1u8, 2], [2, 1]] {
            let macs: Vec<Mac> = perm.iter().map(|i| mac(*i)).collect();
            let t0 = Instant::now();
            let mut sim = Sim::new(&macs, Duration::from_millis(1));
            sim.nodes[0].1.set_owned(&[ip()].into(), false, t0);
            let t1 = t0 + FRESH + Duration::from_secs(1);
            sim.nodes[1].1.set_owned(&[ip()].into(), true, t1);
            sim.wire.push((t1 + Duration::from_millis(1), 1, true));
            let _ = sim.run(t1, 30);
            sim.nodes[0].1.set_owned(&BTreeSet::new(), false, t1);
            let seen = sim.run(t1 + Duration::from_millis(30), 3000);
            assert!(seen.iter().all(|w| w == &vec![1]), "{perm:?}: {seen:?}");
        }
    }

    #[test]
    fn defends_at_most_once_per_interval() {
        let ip = ip();
        let mut macs = [mac(1), mac(2)];
        by_rank(ip, &mut macs);
        let [low, high] = macs;
        let t0 = Instant::now();
        let mut a = Arbiter::new(high);
        a.set_owned(&[ip].into(), false, t0);
        let t = t0 + FRESH;
        assert_eq!(a.claimed(ip, low, t), Some(Action::Defend(ip)));
        assert_eq!(a.claimed(ip, low, t + Duration::from_millis(10)), None);
        assert_eq!(a.claimed(ip, low, t + Duration::from_millis(999)), None);
        assert_eq!(
            a.claimed(ip, low, t + DEFEND_INTERVAL),
            Some(Action::Defend(ip))
        );
        assert!(a.answers(ip));
        // Per claimant: another MAC right after still hears a defence (or a challenge).
        let third = mac(3);
        assert_eq!(
            a.claimed(ip, third, t + DEFEND_INTERVAL + Duration::from_millis(1)),
            Some(Action::Defend(ip))
        );
        // Our own frames and IPs we do not own are no conflict.
        assert_eq!(a.claimed(ip, high, t), None);
        assert_eq!(a.claimed("10.0.0.1".parse().unwrap(), low, t), None);
    }

    #[test]
    fn a_fresh_owner_yields_then_probes_and_reclaims_after_three_unanswered_probes() {
        let ip = ip();
        let t0 = Instant::now();
        let mut a = Arbiter::new(mac(1));
        a.set_owned(&[ip].into(), false, t0);
        assert_eq!(
            a.claimed(ip, mac(2), t0),
            Some(Action::Yield { ip, winner: mac(2) })
        );
        assert!(!a.answers(ip) && a.is_yielded(ip));
        assert_eq!(a.yielded(), [ip].into());
        assert_eq!(a.next_deadline(), Some(t0 + PROBE_INTERVAL));
        assert!(a.tick(t0 + PROBE_INTERVAL / 2).is_empty());
        let at = |n: u32| t0 + PROBE_INTERVAL * n;
        // The winner answers the first two probes.
        assert_eq!(a.tick(at(1)), vec![Action::Probe(ip)]);
        a.claimed(ip, mac(2), at(1) + Duration::from_millis(1));
        assert_eq!(a.tick(at(2)), vec![Action::Probe(ip)]);
        a.claimed(ip, mac(2), at(2) + Duration::from_millis(1));
        // Then it dies: three probes unanswered, then the IP comes back.
        assert_eq!(a.tick(at(3)), vec![Action::Probe(ip)]);
        assert_eq!(a.tick(at(4)), vec![Action::Probe(ip)]);
        assert_eq!(a.tick(at(5)), vec![Action::Probe(ip)]);
        assert!(!a.answers(ip));
        assert_eq!(a.tick(at(6)), vec![Action::Reclaim(ip)]);
        assert!(a.answers(ip));
        assert_eq!(a.next_deadline(), None);
    }

    #[test]
    fn a_heal_ends_every_yield_and_a_lost_election_forgets_the_ip() {
        let ip = ip();
        let t0 = Instant::now();
        let mut a = Arbiter::new(mac(1));
        a.set_owned(&[ip].into(), false, t0);
        a.claimed(ip, mac(2), t0);
        assert_eq!(a.view_grew(t0), vec![Action::Reclaim(ip)]);
        assert!(a.answers(ip));
        assert!(a.view_grew(t0).is_empty());
        // Fresh again after a heal: a node still answering from before keeps the IP.
        assert!(matches!(
            a.claimed(ip, mac(2), t0),
            Some(Action::Yield { .. })
        ));
        a.set_owned(&BTreeSet::new(), false, t0);
        assert!(!a.answers(ip) && a.yielded().is_empty());
        a.set_owned(&[ip].into(), false, t0);
        assert!(a.answers(ip));
    }
}

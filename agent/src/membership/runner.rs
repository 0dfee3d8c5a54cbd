//! The membership task: one tokio task owns the socket, the foca state machine and its timers.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use foca::{Foca, NoCustomBroadcast, Notification, PostcardCodec, Timer};
use rand::rngs::SmallRng;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::auth::{AuthError, AuthKey};
use super::identity::NodeId;
use super::metrics::MembershipMetrics;

/// The SWIM state machine with our identity, codec and RNG.
pub(crate) type Swim = Foca<NodeId, PostcardCodec, SmallRng, NoCustomBroadcast>;

/// Requests from the [`super::Membership`] handle.
pub(crate) enum Command {
    /// Announce our departure, then stop; the sender is told when the datagrams are out.
    Leave(oneshot::Sender<()>),
    /// Replace the seed list (announced to at once if we are alone).
    SetSeeds(Vec<SocketAddr>),
    /// Announce the interface specs this agent cannot answer on (a renamed identity).
    SetUnable(BTreeSet<String>),
}

/// At most this many seeds are announced to per round, so a long seed list stays cheap.
const SEEDS_PER_ROUND: usize = 8;
/// While not alone, one seed is still announced to every this many rejoin periods, so two
/// groups that formed apart (started during a partition) merge.
const SEED_ROUNDS_WHEN_JOINED: u32 = 10;
/// Do not repeat an authentication-failure warning more often than this (the counter counts all).
const AUTH_WARN_EVERY: Duration = Duration::from_secs(10);

/// What foca asked for while handling one input.
#[derive(Default)]
pub(crate) struct Effects {
    send: Vec<(SocketAddr, Vec<u8>)>,
    timers: Vec<(Duration, Timer<NodeId>)>,
    membership_changed: bool,
    rejoined: bool,
}

impl foca::Runtime<NodeId> for Effects {
    fn notify(&mut self, notification: Notification<'_, NodeId>) {
        match notification {
            Notification::MemberUp(id) => {
                tracing::info!(node = %id.name, addr = %id.addr, boot = id.boot, "membership: node up");
                self.membership_changed = true;
            }
            Notification::MemberDown(id) => {
                tracing::info!(node = %id.name, addr = %id.addr, boot = id.boot, "membership: node down");
                self.membership_changed = true;
            }
            Notification::Rename(old, new) => {
                tracing::info!(node = %new.name, addr = %new.addr, old_boot = old.boot,
                    new_boot = new.boot, "membership: node restarted or renewed");
                self.membership_changed = true;
            }
            Notification::Rejoin(id) => {
                tracing::warn!(
                    boot = id.boot,
                    "membership: the cluster declared this agent \
                    down (false suspicion or a cut link); rejoined with a new identity"
                );
                self.membership_changed = true;
                self.rejoined = true;
            }
            Notification::Idle => {
                tracing::info!("membership: no other agent is reachable");
                self.membership_changed = true;
            }
            Notification::Defunct => {
                tracing::warn!("membership: this agent is declared down");
                self.membership_changed = true;
            }
            Notification::Active => tracing::debug!("membership: joined"),
        }
    }

    fn send_to(&mut self, to: NodeId, data: &[u8]) {
        self.send.push((to.addr, data.to_vec()));
    }

    fn submit_after(&mut self, event: Timer<NodeId>, after: Duration) {
        self.timers.push((after, event));
    }
}

/// A timer due at `at`; `seq` keeps insertion order among equal instants.
struct Scheduled {
    at: Instant,
    seq: u64,
    timer: Timer<NodeId>,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// Everything the task owns.
pub(crate) struct Runner {
    pub(crate) swim: Swim,
    pub(crate) socket: Arc<UdpSocket>,
    pub(crate) key: AuthKey,
    pub(crate) own_name: String,
    pub(crate) own_addrs: Vec<SocketAddr>,
    pub(crate) seeds: Vec<SocketAddr>,
    pub(crate) rejoin_period: Duration,
    pub(crate) timing: super::Timing,
    /// The configuration foca runs with (foca has no getter).
    config: foca::Config,
    pub(crate) alive: watch::Sender<BTreeSet<String>>,
    pub(crate) unable: watch::Sender<super::Unable>,
    pub(crate) generations: watch::Sender<super::Generations>,
    pub(crate) metrics: MembershipMetrics,
    timers: BinaryHeap<Reverse<Scheduled>>,
    seq: u64,
    seed_cursor: usize,
    last_auth_warning: Option<Instant>,
}

impl Runner {
    /// A runner around an already configured foca and bound socket.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        swim: Swim,
        socket: Arc<UdpSocket>,
        key: AuthKey,
        own_name: String,
        own_addrs: Vec<SocketAddr>,
        seeds: Vec<SocketAddr>,
        timing: super::Timing,
        config: foca::Config,
        alive: watch::Sender<BTreeSet<String>>,
        unable: watch::Sender<super::Unable>,
        generations: watch::Sender<super::Generations>,
        metrics: MembershipMetrics,
    ) -> Self {
        Self {
            swim,
            socket,
            key,
            own_name,
            own_addrs,
            seeds,
            rejoin_period: timing.rejoin_period,
            timing,
            config,
            alive,
            unable,
            generations,
            metrics,
            timers: BinaryHeap::new(),
            seq: 0,
            seed_cursor: 0,
            last_auth_warning: None,
        }
    }

    /// Announces to the seeds (the first join), then runs until told to leave or dropped.
    pub(crate) async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut fx = Effects::default();
        self.announce_to_seeds(SEEDS_PER_ROUND, &mut fx);
        self.apply(fx).await;

        let mut buf = vec![0u8; 65_536];
        let mut rejoin = tokio::time::interval(self.rejoin_period);
        rejoin.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        rejoin.tick().await; // the first tick is immediate; we just announced
        let mut rounds: u32 = 0;
        loop {
            let mut fx = Effects::default();
            let next_timer = self.timers.peek().map(|Reverse(s)| s.at);
            tokio::select! {
                biased;
                command = commands.recv() => match command {
                    Some(Command::SetSeeds(seeds)) => {
                        self.seeds = seeds;
                        self.seed_cursor = 0;
                        if self.swim.num_members() == 0 {
                            self.announce_to_seeds(SEEDS_PER_ROUND, &mut fx);
                        }
                    }
                    Some(Command::SetUnable(unable)) => self.set_unable(unable, &mut fx),
                    Some(Command::Leave(done)) => {
                        self.leave().await;
                        let _ = done.send(());
                        return;
                    }
                    None => return,
                },
                () = sleep_until(next_timer) => self.fire_due_timers(&mut fx),
                // Before the socket, so a flood of datagrams cannot starve it.
                _ = rejoin.tick() => {
                    rounds = rounds.wrapping_add(1);
                    if self.swim.num_members() == 0 {
                        self.announce_to_seeds(SEEDS_PER_ROUND, &mut fx);
                    } else if rounds.is_multiple_of(SEED_ROUNDS_WHEN_JOINED) {
                        self.announce_to_seeds(1, &mut fx);
                    }
                }
                received = self.socket.recv_from(&mut buf) => match received {
                    Ok((len, from)) => {
                        let datagram = buf.get(..len).unwrap_or_default();
                        self.on_datagram(datagram, from, &mut fx);
                    }
                    Err(e) => tracing::debug!(error = %e, "membership: receive failed"),
                },
            }
            self.apply(fx).await;
        }
    }

    /// Declares ourselves down to a few members (each passes it on), so the cluster drops us at
    /// once instead of after a suspicion timeout.
    async fn leave(&mut self) {
        let mut fx = Effects::default();
        if let Err(e) = self.swim.leave_cluster(&mut fx) {
            tracing::warn!(error = %e, "membership: leaving failed");
        }
        // Two more rounds carry the same "down" update to more members (and survive a loss).
        for _ in 0..2 {
            if let Err(e) = self.swim.gossip(&mut fx) {
                tracing::debug!(error = %e, "membership: leave gossip failed");
            }
        }
        fx.timers.clear();
        self.apply(fx).await;
        tracing::info!("membership: left the cluster");
    }

    /// Renames our identity to carry `unable`. foca keeps its member list and gossips the new
    /// identity at once; the others see a rename of the same member (same address, larger
    /// boot number), never a departure, so the IPs this node owns elsewhere do not move.
    fn set_unable(&mut self, unable: BTreeSet<String>, fx: &mut Effects) {
        let current = self.swim.identity().clone();
        if current.unable == unable {
            return;
        }
        let next = NodeId {
            boot: current.boot.wrapping_add(1),
            unable,
            ..current
        };
        tracing::info!(unable = ?next.unable, boot = next.boot, "membership: announcing the interfaces this agent cannot answer on");
        if let Err(e) = self.swim.change_identity(next, &mut *fx) {
            tracing::warn!(error = %e, "membership: cannot announce the interfaces this agent cannot answer on");
        }
        // Gossip reaches a few members per round: two more rounds spread it faster.
        for _ in 0..2 {
            if let Err(e) = self.swim.gossip(&mut *fx) {
                tracing::debug!(error = %e, "membership: gossip failed");
            }
        }
    }

    fn announce_to_seeds(&mut self, count: usize, fx: &mut Effects) {
        let candidates: Vec<SocketAddr> = self
            .seeds
            .iter()
            .copied()
            .filter(|s| !self.own_addrs.contains(s))
            .collect();
        if candidates.is_empty() {
            return;
        }
        for i in 0..count.min(candidates.len()) {
            let index = (self.seed_cursor + i) % candidates.len();
            if let Some(seed) = candidates.get(index)
                && let Err(e) = self.swim.announce(NodeId::seed(*seed), &mut *fx)
            {
                tracing::debug!(seed = %seed, error = %e, "membership: announce failed");
            }
        }
        self.seed_cursor = self.seed_cursor.wrapping_add(count);
    }

    fn fire_due_timers(&mut self, fx: &mut Effects) {
        let now = Instant::now();
        let mut due = Vec::new();
        while let Some(Reverse(s)) = self.timers.peek() {
            if s.at > now {
                break;
            }
            if let Some(Reverse(s)) = self.timers.pop() {
                let lag = now.duration_since(s.at);
                if lag > self.timing.probe_rtt {
                    // Late timers mean late probes and late acks: false suspicions follow.
                    self.metrics.late_timers.inc();
                    tracing::debug!(lag = ?lag, "membership: timer late (agent starved of CPU?)");
                }
                due.push(s.timer);
            }
        }
        // foca's order among timers due together (indirect probes before the next probe).
        due.sort();
        for timer in due {
            if let Err(e) = self.swim.handle_timer(timer, &mut *fx) {
                tracing::debug!(error = %e, "membership: timer failed");
            }
        }
    }

    fn on_datagram(&mut self, datagram: &[u8], from: SocketAddr, fx: &mut Effects) {
        let payload = match self.key.open(datagram) {
            Ok(p) => p,
            Err(e) => {
                self.metrics.auth_failures.inc();
                self.warn_auth(e, from);
                return;
            }
        };
        self.metrics.datagrams_received.inc();
        if let Err(e) = self.swim.handle_data(payload, &mut *fx) {
            self.metrics.protocol_errors.inc();
            tracing::debug!(from = %from, error = %e, "membership: datagram rejected");
        }
    }

    fn warn_auth(&mut self, error: AuthError, from: SocketAddr) {
        let now = Instant::now();
        let quiet = self
            .last_auth_warning
            .is_some_and(|t| now.duration_since(t) < AUTH_WARN_EVERY);
        if quiet {
            tracing::debug!(from = %from, error = %error, "membership: datagram dropped");
        } else {
            self.last_auth_warning = Some(now);
            tracing::warn!(from = %from, error = %error, own_key_id = format!("{:08x}", self.key.id()),
                "membership: datagram dropped: authentication failed (do all agents mount the \
                 same membership key?)");
        }
    }

    /// Sends, schedules, and publishes the alive set if it changed.
    async fn apply(&mut self, fx: Effects) {
        let now = Instant::now();
        for (after, timer) in fx.timers {
            self.seq = self.seq.wrapping_add(1);
            self.timers.push(Reverse(Scheduled {
                at: now + after,
                seq: self.seq,
                timer,
            }));
        }
        for (to, data) in fx.send {
            let sealed = self.key.seal(&data);
            match self.socket.send_to(&sealed, to).await {
                Ok(n) => {
                    self.metrics.datagrams_sent.inc();
                    self.metrics
                        .bytes_sent
                        .inc_by(u64::try_from(n).unwrap_or(u64::MAX));
                }
                Err(e) => {
                    self.metrics.send_errors.inc();
                    tracing::debug!(to = %to, error = %e, "membership: send failed");
                }
            };
        }
        if fx.rejoined {
            self.metrics.rejoins.inc();
        }
        if fx.membership_changed {
            self.publish();
        }
    }

    /// The names of the active members plus our own, what the others cannot answer on and
    /// their start generations (published first, so a reader woken by the alive set sees all).
    fn publish(&mut self) {
        let mut unable = super::Unable::new();
        for m in self.swim.iter_members() {
            let id = m.id();
            if !id.unable.is_empty() && id.name != self.own_name {
                unable
                    .entry(id.name.clone())
                    .or_default()
                    .extend(id.unable.iter().cloned());
            }
        }
        self.unable.send_if_modified(|current| {
            let changed = *current != unable;
            *current = unable;
            changed
        });
        // Each member's start generation: a restart faster than the others noticed the death
        // keeps the name in the alive set, and the failback hold-down must still see it.
        let mut generations: super::Generations = self
            .swim
            .iter_members()
            .filter(|m| m.id().name != self.own_name)
            .map(|m| {
                (
                    m.id().name.clone(),
                    super::identity::start_generation(m.id().boot),
                )
            })
            .collect();
        generations.insert(self.own_name.clone(), 0);
        self.generations.send_if_modified(|current| {
            let changed = *current != generations;
            *current = generations;
            changed
        });
        let mut alive: BTreeSet<String> = self
            .swim
            .iter_members()
            .map(|m| m.id().name.clone())
            .collect();
        alive.insert(self.own_name.clone());
        self.metrics
            .members
            .set(i64::try_from(alive.len()).unwrap_or(i64::MAX));
        self.retune(self.swim.num_members().saturating_add(1));
        self.alive.send_if_modified(|current| {
            if *current == alive {
                false
            } else {
                *current = alive;
                true
            }
        });
    }
}

impl Runner {
    /// Keeps the suspicion timeout in step with the cluster size (foca allows changing it live).
    fn retune(&mut self, members: usize) {
        let wanted = self.timing.suspicion_for(members);
        if wanted == self.config.suspect_to_down_after {
            return;
        }
        let mut config = self.config.clone();
        config.suspect_to_down_after = wanted;
        match self.swim.set_config(config.clone()) {
            Ok(()) => {
                self.config = config;
                tracing::debug!(members, suspect_to_down = ?wanted, "membership: retuned");
            }
            Err(e) => tracing::debug!(error = %e, "membership: cannot retune"),
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

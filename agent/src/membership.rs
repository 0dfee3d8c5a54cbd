//! Which agents are alive: SWIM membership over authenticated UDP, for the Layer2 owner election.
//!
//! Every agent runs [`Membership`]; the watch it returns holds the names of the nodes whose
//! agents this agent currently sees alive (its own always included). The Layer2 election
//! intersects the operator's candidate nodes with this set, so a dead node stops owning its IPs
//! as soon as the others stop seeing it, with no write to the API server on the way.
//!
//! See "Why SWIM (foca) and not Kubernetes Leases" below for the choice and its numbers.
//!
//! # Protocol
//!
//! [`foca`] implements SWIM: each agent probes one member per `probe_period` (round robin over a
//! shuffled list); a missing ack within `probe_rtt` triggers indirect probes through
//! `indirect_probes` other members; no answer by the end of the period makes the member
//! *suspect*; a suspect that does not refute within `suspect_to_down` is *down*. Updates travel
//! piggybacked on probes and by periodic gossip to `gossip_fanout` members every
//! `gossip_period`. Suspect members still count as alive (a slow agent gets its chance to refute
//! before its IPs move).
//!
//! Joining and rejoining: an agent announces to its seeds at start, again every
//! `rejoin_period` while it sees nobody, and to one seed every ten periods otherwise (two groups
//! formed apart merge). Identities are (node name, gossip address, boot number): a restarted
//! agent on the same address has a larger boot number and replaces its dead identity at once;
//! an agent wrongly declared down is told so (it keeps talking to us) and renews its identity.
//!
//! Every datagram carries an HMAC-SHA256 tag under a shared key (see [`auth`]); datagrams that
//! fail are dropped before decoding and counted (`membership_auth_failures_total`).
//!
//! # Why SWIM (foca) and not Kubernetes Leases
//!
//! Budget: a Layer2 failover (node dies -> the new owner's gratuitous ARP / unsolicited NA)
//! of at most 0.3 s median. Detection is most of it; the election and the ARP take
//! milliseconds once the alive set changes.
//!
//! **Leases** (one Lease per node renewed by its agent, or one per IP as kube-vip does, the
//! others watching): a death is noticed only when the lease expires, so the lease duration
//! *is* the detection time, and each renewal is an API-server write that etcd persists and
//! fans out to every watcher. At 1,000 nodes or 1,000 IPs that is 1,000 renewals per renewal
//! period: with the usual 10-15 s leases renewed every ~2 s, ~500 writes/s, for a 10-15 s
//! failover; for 0.3 s (a ~0.2 s lease renewed every ~0.05-0.1 s) it is 10,000-20,000
//! writes/s, plus 1,000 watch events per write, beyond what an API server and etcd sustain,
//! and every failover would stall whenever the control plane is slow or down.
//!
//! **SWIM between agents over UDP** (chosen): **zero API-server writes and reads on the
//! failover path**; the operator writes a Service's candidate nodes only when Services or
//! nodes change, unrelated to liveness, and each agent elects owners locally. Per-node cost
//! is O(1) in cluster size: one probe and one ack per `probe_period` in steady state, plus
//! gossip (`gossip_fanout` datagrams per `gossip_period`) only while there are fresh updates
//! to spread. The expected time until some live member probes a dead one is also independent
//! of the cluster size (each period, each of the N-1 others picks it with probability
//! ~1/(N-1)).
//!
//! With [`Timing::fast`] (probe every 40 ms, 15 ms direct-probe timeout, 3 indirect probes,
//! 60 ms suspect-to-down up to 10 members then x log10(N), 20 ms gossip to 3 members), measured
//! on loopback with `cargo run --release -p berth-agent --example membership_failover --
//! <members> 10` (10 kills without a goodbye; all members in one process on a busy 2-core
//! machine). "New owner" is the median survivor (the owner of an IP is a random survivor),
//! "all" the last one:
//!
//! | members | new owner knows: median (min-max) | all know: median (min-max) | false downs while idle |
//! |---|---|---|---|
//! | 3 | 141 ms (121-172) | 141 ms (121-172) | 0 |
//! | 10 | 161 ms (105-243) | 165 ms (123-247) | 0 |
//! | 50 | 194 ms (175-281) | 230 ms (194-302) | 0 |
//!
//! (A debug build with 50 agents in one process starves them of CPU: timers fire >100 ms
//! late and false downs follow, which `membership_late_timers_total` shows.)
//!
//! Detection = wait until the dead node is probed (0-1 `probe_period`) + one `probe_period`
//! (direct, then indirect probes) + the suspicion timeout + spreading the verdict (~log3(N)
//! gossip rounds of 20 ms). Extrapolated to 1,000 nodes: ~20-40 + 40 + 180 + ~120 ms, about
//! 0.35-0.4 s until the *last* agent knows, ~0.3 s for the median one. Sub-0.3 s median
//! failover therefore holds comfortably up to a few hundred agents and is about at the limit
//! at 1,000 (where lowering the suspicion timeout trades false downs for speed); Leases
//! cannot approach either.
//!
//! Steady-state traffic per agent, measured: **50 datagrams/s sent (25 pings + 25 acks), ~90
//! bytes each (39 of them authentication), ~4.4 KB/s**, the same at 3, 10 and 50 members and,
//! by construction, at 1,000 (cluster-wide 50,000 small datagrams/s, ~4.4 MB/s, spread evenly:
//! each agent also receives ~50/s). Gossip is sent only while there are fresh updates, so a
//! membership change adds at most 150 datagrams/s per agent for the few hundred ms it takes to
//! spread. A graceful leave ([`Membership::leave`]) removes the node at once (one round
//! trip), a restarted agent rejoins on its first announce, and an agent that was cut off
//! rejoins within `rejoin_period` (500 ms) of its link coming back.
//!
//! Caveats for operators:
//! - An agent that cannot answer for ~100 ms (CPU-starved, CFS-throttled, paused) is declared
//!   down and its IPs move; it rejoins as soon as it answers again and (rendezvous hashing) its
//!   IPs move back. So: no CPU *limit* on the agent DaemonSet (a request only), and a high
//!   priority class. `membership_late_timers_total` rising is the warning sign,
//!   `membership_rejoins_total` counts the false downs that followed.
//! - The suspicion timeout grows by itself with the cluster (x log10(N) above 10 members),
//!   since a suspicion takes ~log(N) gossip rounds to reach the suspect so it can refute.
//! - The gossip port (UDP) must be open between all nodes; agents with different keys ignore
//!   each other (the `membership_auth_failures_total` counter and a warning naming both key
//!   ids show it). One key at a time: changing it splits old and new agents until all restart.
//! - Authentication, not encryption: node names and gossip addresses travel in clear.

pub mod auth;
pub mod identity;
pub mod metrics;
mod runner;
pub mod timing;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use foca::{Foca, PostcardCodec};
use prometheus_client::registry::Registry;
use rand::SeedableRng;
use rand::rngs::{SmallRng, SysRng};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};

pub use auth::{AuthError, AuthKey, KeyError};
pub use identity::{Generation, NodeId};
pub use metrics::MembershipMetrics;
pub use timing::Timing;

/// Largest datagram sent or accepted (RFC 8085: stay under a 1500-byte MTU with room to spare).
pub const MAX_DATAGRAM: usize = 1400;

/// How long [`Membership::leave`] waits for its goodbye datagrams to be sent.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(1);

/// How to run this agent's membership.
#[derive(Clone, Debug)]
pub struct MembershipConfig {
    /// This node's name (what the Layer2 election hashes); must not be empty.
    pub node: String,
    /// UDP address to bind (port 0 picks a free port, for tests).
    pub listen: SocketAddr,
    /// Address other agents reach us at (often == `listen`); port 0 means the bound port.
    pub advertise: SocketAddr,
    /// Other agents to join through; may be empty or include ourselves (skipped).
    pub seeds: Vec<SocketAddr>,
    /// Shared HMAC key, at least [`auth::MIN_KEY_LEN`] bytes (see [`AuthKey::read_file`]).
    pub key: Vec<u8>,
    /// Protocol timing.
    pub timing: Timing,
    /// File keeping this agent's [`Generation`] across restarts (`None`: the boot number
    /// counts from the host's uptime, see [`identity::uptime_boot`]).
    pub generation_file: Option<std::path::PathBuf>,
    /// Counters to update; pass clones already registered, or register later with
    /// [`Membership::register_metrics`].
    pub metrics: MembershipMetrics,
}

/// Why membership could not start.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// The key is unusable.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The timing is inconsistent.
    #[error("invalid membership timing: {0}")]
    Timing(String),
    /// The node name is empty.
    #[error("the membership node name is empty: pass this node's Kubernetes name")]
    EmptyName,
    /// The advertised address cannot be reached by others.
    #[error(
        "the membership advertise address {0} is unspecified (0.0.0.0 or ::): set it to this \
         node's IP that other nodes can reach"
    )]
    UnspecifiedAdvertise(SocketAddr),
    /// The UDP socket could not be bound.
    #[error("cannot bind the membership UDP socket on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The OS random number generator failed.
    #[error("cannot seed the membership RNG from the OS: {0}")]
    Random(String),
}

/// Replaces a running membership's seeds (see [`Membership::seeds`]).
#[derive(Clone)]
pub struct SeedsHandle(mpsc::Sender<runner::Command>);

impl SeedsHandle {
    /// Replaces the seed list; announced to at once while this agent is alone.
    pub async fn set(&self, seeds: Vec<SocketAddr>) {
        let _ = self.0.send(runner::Command::SetSeeds(seeds)).await;
    }
}

/// A running membership; dropping it stops the protocol abruptly (like a crash: the others
/// notice after the detection time). Call [`Membership::leave`] to stop gracefully.
#[derive(Debug)]
pub struct Membership {
    commands: mpsc::Sender<runner::Command>,
    task: tokio::task::JoinHandle<()>,
    metrics: MembershipMetrics,
    identity: NodeId,
    local_addr: SocketAddr,
    unable: watch::Receiver<Unable>,
    generations: watch::Receiver<Generations>,
}

/// By node name, the interface specs that the other live members cannot answer on now
/// (members with none are absent).
pub type Unable = BTreeMap<String, BTreeSet<String>>;

/// By node name, the start generation of every live member (the high 32 bits of its boot
/// number, see [`Generation`]; this agent's own is 0): a change means the agent restarted.
pub type Generations = BTreeMap<String, u32>;

/// Tells the others which interface specs this agent cannot answer on (see
/// [`Membership::unable_handle`]).
#[derive(Clone)]
pub struct UnableHandle(mpsc::Sender<runner::Command>);

impl UnableHandle {
    /// Replaces the set this agent announces; spread at once (a renamed identity).
    pub async fn set(&self, unable: BTreeSet<String>) {
        let _ = self.0.send(runner::Command::SetUnable(unable)).await;
    }
}

impl Membership {
    /// Binds the socket, joins through the seeds and returns the alive set (own name included).
    ///
    /// The watch closes (`changed()` errs) once the membership has stopped (after
    /// [`Membership::leave`] or when the handle is dropped).
    pub async fn start(
        cfg: MembershipConfig,
    ) -> Result<(Membership, watch::Receiver<BTreeSet<String>>), MembershipError> {
        if cfg.node.is_empty() {
            return Err(MembershipError::EmptyName);
        }
        let key = AuthKey::new(&cfg.key)?;
        let key_id = key.id();
        let max_payload = NonZeroUsize::new(MAX_DATAGRAM - auth::OVERHEAD)
            .ok_or_else(|| MembershipError::Timing("packet size".into()))?;
        let config = cfg
            .timing
            .to_foca(max_payload)
            .map_err(MembershipError::Timing)?;
        let socket = UdpSocket::bind(cfg.listen)
            .await
            .map_err(|source| MembershipError::Bind {
                addr: cfg.listen,
                source,
            })?;
        let bound = socket
            .local_addr()
            .map_err(|source| MembershipError::Bind {
                addr: cfg.listen,
                source,
            })?;
        let mut advertise = cfg.advertise;
        if advertise.port() == 0 {
            advertise.set_port(bound.port());
        }
        if advertise.ip().is_unspecified() {
            return Err(MembershipError::UnspecifiedAdvertise(advertise));
        }
        let mut rng = SmallRng::try_from_rng(&mut SysRng)
            .map_err(|e| MembershipError::Random(e.to_string()))?;
        let random: u32 = rand::RngExt::random(&mut rng);
        let boot = match &cfg.generation_file {
            Some(path) => match Generation::advance(path, Generation::fresh(random)) {
                Ok(g) => g.boot(),
                Err(e) => {
                    tracing::warn!(error = %e, "membership: no generation file: the identity counts from the host's uptime instead (a restart within this boot may stay unseen by the others for up to an hour; make --state-dir writable)");
                    identity::uptime_boot(random)
                }
            },
            None => identity::uptime_boot(random),
        };
        let identity = NodeId {
            name: cfg.node.clone(),
            addr: advertise,
            boot,
            unable: BTreeSet::new(),
        };
        let swim = Foca::new(identity.clone(), config.clone(), rng, PostcardCodec);
        let (alive_tx, alive_rx) = watch::channel(BTreeSet::from([cfg.node.clone()]));
        let (unable_tx, unable_rx) = watch::channel(Unable::new());
        let (generations_tx, generations_rx) =
            watch::channel(Generations::from([(cfg.node.clone(), 0)]));
        cfg.metrics.members.set(1);
        let (commands, command_rx) = mpsc::channel(8);
        let runner = runner::Runner::new(
            swim,
            Arc::new(socket),
            key,
            cfg.node.clone(),
            vec![advertise, bound],
            cfg.seeds,
            cfg.timing.clone(),
            config,
            alive_tx,
            unable_tx,
            generations_tx,
            cfg.metrics.clone(),
        );
        let task = tokio::spawn(runner.run(command_rx));
        tracing::info!(node = %cfg.node, listen = %bound, advertise = %advertise,
            key_id = format!("{key_id:08x}"), "membership: started");
        Ok((
            Membership {
                commands,
                task,
                metrics: cfg.metrics,
                identity,
                local_addr: bound,
                unable: unable_rx,
                generations: generations_rx,
            },
            alive_rx,
        ))
    }

    /// Leaves gracefully (on SIGTERM): the others drop this node at once instead of after the
    /// detection time.
    pub async fn leave(self) {
        let (done, wait) = oneshot::channel();
        if self
            .commands
            .send(runner::Command::Leave(done))
            .await
            .is_ok()
        {
            let _ = tokio::time::timeout(LEAVE_TIMEOUT, wait).await;
        }
    }

    /// Replaces the seeds (for example the nodes' addresses as the Node list changes); if this
    /// agent sees nobody, it announces to them at once.
    pub async fn set_seeds(&self, seeds: Vec<SocketAddr>) {
        let _ = self.commands.send(runner::Command::SetSeeds(seeds)).await;
    }

    /// A handle that replaces the seed list from another task (the Node watch).
    pub fn seeds(&self) -> SeedsHandle {
        SeedsHandle(self.commands.clone())
    }

    /// A handle that announces the interface specs this agent cannot answer on.
    pub fn unable_handle(&self) -> UnableHandle {
        UnableHandle(self.commands.clone())
    }

    /// What the other members announce they cannot answer on; updated before the alive set
    /// when both change.
    pub fn unable(&self) -> watch::Receiver<Unable> {
        self.unable.clone()
    }

    /// Every live member's start generation (this agent's own as 0); updated before the alive
    /// set when both change.
    pub fn generations(&self) -> watch::Receiver<Generations> {
        self.generations.clone()
    }

    /// Registers this membership's metrics (names start with `membership_`).
    pub fn register_metrics(&self, registry: &mut Registry) {
        self.metrics.register(registry);
    }

    /// The metrics this membership updates.
    pub fn metrics(&self) -> &MembershipMetrics {
        &self.metrics
    }

    /// Our identity as announced (the advertise address has the bound port filled in).
    pub fn identity(&self) -> &NodeId {
        &self.identity
    }
}

impl Membership {
    /// The address the UDP socket is bound to (differs from `listen` when its port was 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.task.abort();
    }
}

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
//! Failover budget: <= 0.3 s median from a node's death to the new owner's gratuitous ARP.
//!
//! - **Leases** (one per node, renewed by its agent; others watch): detection time is the lease
//!   duration, and the API server's own minimum practical renewal is about 1 s (kube-apiserver
//!   and etcd write latency are tens of ms, watch delivery adds more). To detect a death in
//!   0.2 s, 1,000 nodes would renew every ~0.1 s: **10,000 writes/s** to etcd, permanently, plus
//!   fanning every renewal out to 1,000 watchers (10 M watch events/s). Even with 10 s leases
//!   (the kubelet's Node lease default is 40 s) that is 100 writes/s for a 10-40 s failover. A
//!   failover also depends on the API server being up: a control-plane outage would freeze
//!   Layer2 ownership.
//! - **SWIM over UDP between agents**: **zero API-server writes** on the failover path (the
//!   operator writes the candidate list only when Services or nodes change, at 1,000 IPs that
//!   is one annotation per Service, unrelated to liveness). Per-node load is O(1) in cluster
//!   size: one probe (+ ack) per `probe_period` plus one gossip round per `gossip_period`. With
//!   [`Timing::fast`] (40 ms probe period, 20 ms gossip to 3 members): 25 pings + 25 acks +
//!   150 gossip datagrams sent per second per node, each under ~300 bytes in steady state
//!   (header + a few piggybacked updates, + 39 bytes of authentication), i.e. about
//!   **200 datagrams/s and ~40 KB/s out per node** whether the cluster has 3 or 1,000 nodes
//!   (cluster-wide 200 k datagrams/s on the LAN at 1,000 nodes, spread evenly). The expected
//!   time until some live member probes a dead one is also independent of cluster size (each
//!   period, each of the N-1 others probes it with probability ~1/(N-1)).
//!
//! Detection time with [`Timing::fast`] = wait for a probe of the dead node (~0.5-1 period) +
//! one probe period (direct + indirect) + `suspect_to_down` + gossip (one `gossip_period`):
//! about 0.1-0.2 s on a LAN. Measured on loopback (3 agents, 10 kills, no leave):
//! see `examples/membership_failover.rs` and the figures below.
//!
//! MEASURED: (filled in below by the measurement)
//!
//! Caveats for operators: the agent must not be CPU-throttled (no CPU *limit* on the DaemonSet,
//! or a CFS throttle of ~100 ms can look like a death and move IPs); `suspect_to_down` should
//! grow with cluster size (roughly x log10(N) beyond a few hundred nodes) because a suspicion
//! takes ~log(N) gossip rounds to reach the suspect so it can refute.

pub mod auth;
pub mod identity;
pub mod metrics;
mod runner;
pub mod timing;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use foca::{Foca, PostcardCodec};
use prometheus_client::registry::Registry;
use rand::SeedableRng;
use rand::rngs::{SmallRng, SysRng};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};

pub use auth::{AuthError, AuthKey, KeyError};
pub use identity::NodeId;
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

/// A running membership; dropping it stops the protocol abruptly (like a crash: the others
/// notice after the detection time). Call [`Membership::leave`] to stop gracefully.
#[derive(Debug)]
pub struct Membership {
    commands: mpsc::Sender<runner::Command>,
    task: tokio::task::JoinHandle<()>,
    metrics: MembershipMetrics,
    identity: NodeId,
}

impl Membership {
    /// Binds the socket, joins through the seeds and returns the alive set (own name included).
    pub async fn start(
        cfg: MembershipConfig,
    ) -> Result<(Membership, watch::Receiver<BTreeSet<String>>), MembershipError> {
        if cfg.node.is_empty() {
            return Err(MembershipError::EmptyName);
        }
        let key = AuthKey::new(&cfg.key)?;
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
        let rng = SmallRng::try_from_rng(&mut SysRng)
            .map_err(|e| MembershipError::Random(e.to_string()))?;
        let identity = NodeId {
            name: cfg.node.clone(),
            addr: advertise,
            boot: boot_number(),
        };
        let swim = Foca::new(identity.clone(), config, rng, PostcardCodec);
        let (alive_tx, alive_rx) = watch::channel(BTreeSet::from([cfg.node.clone()]));
        cfg.metrics.members.set(1);
        let (commands, command_rx) = mpsc::channel(1);
        let runner = runner::Runner::new(
            swim,
            Arc::new(socket),
            key,
            cfg.node.clone(),
            vec![advertise, bound],
            cfg.seeds,
            cfg.timing.rejoin_period,
            alive_tx,
            cfg.metrics.clone(),
        );
        let task = tokio::spawn(runner.run(command_rx));
        tracing::info!(node = %cfg.node, listen = %bound, advertise = %advertise,
            key_id = format!("{:08x}", AuthKey::new(&cfg.key)?.id()), "membership: started");
        Ok((
            Membership {
                commands,
                task,
                metrics: cfg.metrics,
                identity,
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

impl Drop for Membership {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Milliseconds since the epoch: a restarted agent's identity beats its previous one.
fn boot_number() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(1)
}

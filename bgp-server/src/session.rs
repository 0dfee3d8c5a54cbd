//! One peer's session: the I/O around the [`Fsm`], the codec and the per-family RIB-out.
//!
//! One task per peer owns the TCP connection's read side, the timers and what was sent to that
//! peer; the desired state arrives on a watch channel, inbound connections on an mpsc channel.
//! Writes go through the connection's [`writer`]: the session only ever puts bytes on a
//! bounded queue when it has room and never awaits a write, so a peer that stops reading
//! cannot hold up its reads, its timers, a settings change or shutdown. The RIB-out, not the
//! queue, remembers what is still to send: the session produces the next batch only when the
//! queue has room.

mod writer;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use berth_bgp_wire::{
    AddPathMode, AsPath, AsSegment, Attribute, Capability, DecodeContext, DecodeError,
    EncodeContext, ExtCommunity, Family, GracefulRestartFamily, Message, NextHop, Nlri, Open,
    Origin, RouteRefresh, pack_updates,
};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::config::{GracefulRestartConfig, PeerConfig};
use crate::fsm::{
    self, Action, Config as FsmConfig, Event, Fsm, Inbound, PeerOpen, State, StopReason, Timer,
};
use crate::metrics::{Metrics, PeerLabels};
use crate::rib::{AdjRibOut, Change, Desired, PathAttrs, Scope, Snapshot};
pub use writer::{LINGER, default_send_hold, send_hold_time};
use writer::{WriteFailure, Writer};

/// What a session needs to know about the speaker.
#[derive(Debug, Clone)]
pub struct Local {
    /// Our ASN.
    pub asn: u32,
    /// Our identifier.
    pub router_id: std::net::Ipv4Addr,
    /// Graceful restart settings.
    pub graceful_restart: GracefulRestartConfig,
    /// We are restarting (state was restored): set the R bit in our OPEN.
    pub restarting: bool,
    /// The RFC 9687 send-hold time; `None`: 8 minutes or twice the hold time.
    pub send_hold: Option<Duration>,
}

/// A snapshot of the session for status and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// FSM state.
    pub state: State,
    /// ADD-PATH send negotiated per family (IPv4, IPv6).
    pub add_path: [bool; 2],
    /// Paths announced.
    pub paths: usize,
    /// Prefixes announced.
    pub prefixes: usize,
    /// Some prefix reaches this peer with fewer paths than next hops (no ADD-PATH, or the
    /// send-max cap).
    pub degraded: bool,
    /// When the session was established; `None` when it is not.
    pub established_at: Option<Instant>,
    /// Last error.
    pub last_error: Option<String>,
}

/// Where a session publishes its status: the latest value (for GetState) and each state
/// change as it happens (for Watch).
pub struct StatusSender {
    /// The peer's address.
    pub peer: IpAddr,
    /// The latest status.
    pub status: watch::Sender<Status>,
    /// Every state change, for every session of the speaker.
    pub events: tokio::sync::broadcast::Sender<SessionEvent>,
}

/// A session changed state, or its peer was removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionEvent {
    /// The peer's address.
    pub peer: IpAddr,
    /// The new state; `None`: the peer was removed.
    pub state: Option<State>,
    /// The state before; `None` for a peer's first report.
    pub previous: Option<State>,
    /// The session's last error.
    pub last_error: Option<String>,
}

impl Status {
    /// A session that has not started.
    pub fn idle() -> Status {
        Status {
            state: State::Idle,
            add_path: [false; 2],
            paths: 0,
            prefixes: 0,
            degraded: false,
            established_at: None,
            last_error: None,
        }
    }
}

type Connecting = Pin<Box<dyn std::future::Future<Output = std::io::Result<TcpStream>> + Send>>;

struct Io {
    read: Option<OwnedReadHalf>,
    write: Option<Writer>,
    /// Closed connections still flushing (each ends within [`LINGER`]).
    closing: Vec<JoinHandle<()>>,
    connecting: Option<Connecting>,
    buf: Vec<u8>,
    /// Whether the current connection is the one we opened.
    outbound: bool,
    /// A connection the peer opened, waiting for collision detection.
    pending: Option<TcpStream>,
    /// What was read from it so far (its OPEN, while ours is in OpenSent).
    pending_buf: Vec<u8>,
    /// The BGP identifier in its OPEN, once read.
    pending_id: Option<std::net::Ipv4Addr>,
}

const FAMILIES: [Family; 2] = [Family::Ipv4Unicast, Family::Ipv6Unicast];

/// Changes computed and encoded at a time when bringing a peer to a new state.
const SYNC_BATCH: usize = 16_384;

/// Fresh RIB-outs, IPv4 then IPv6, given ADD-PATH per family.
/// How long a timer the FSM starts runs. RFC 4271 §10: ConnectRetry and Keepalive (and here
/// IdleHold too) are jittered to 75-100 % of their value, so that sessions that failed
/// together (a router reboot, a link flap) do not retry in lockstep; the hold timer is not.
/// `r` is uniform in [0, 1).
fn timer_duration(t: Timer, secs: u32, r: f64) -> Duration {
    let full = Duration::from_secs(u64::from(secs));
    match t {
        Timer::Hold => full,
        Timer::ConnectRetry | Timer::Keepalive | Timer::IdleHold => {
            full.mul_f64(0.75 + 0.25 * r.clamp(0.0, 1.0))
        }
    }
}

/// A number uniform in [0, 1) from the standard library's per-process random hash keys (no
/// RNG crate for jitter).
fn random_unit() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let bits = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    // 53 random bits make an f64 in [0, 1) exactly.
    #[allow(clippy::cast_precision_loss)]
    let unit = (bits >> 11) as f64 / (1u64 << 53) as f64;
    unit
}

/// Which family's RIB-out a ROUTE-REFRESH asks to resend (its index in [`FAMILIES`]): only a
/// plain request (subtype 0; 1 and 2 mark the peer's own refresh, RFC 7313) for a family this
/// session negotiated. RFC 2918 §4: a request for a family not negotiated is ignored.
fn refresh_target(rr: &RouteRefresh, negotiated: &[Family]) -> Option<usize> {
    let family = Family::from_afi_safi(rr.afi, rr.safi)?;
    if rr.subtype != 0 || !negotiated.contains(&family) {
        return None;
    }
    FAMILIES.iter().position(|f| *f == family)
}

fn ribs(add_path: [bool; 2], send_max: Option<usize>) -> [AdjRibOut; 2] {
    [
        AdjRibOut::new(Scope::Ipv4, add_path[0], send_max),
        AdjRibOut::new(Scope::Ipv6, add_path[1], send_max),
    ]
}

/// Runs the session until `shutdown` names a reason; then says goodbye as that reason says (a
/// Cease with its subcode, or for a restart under negotiated graceful restart no NOTIFICATION
/// at all, so the peer keeps our routes) and returns within [`LINGER`] whatever the peer does.
pub async fn run(
    local: Local,
    peer: PeerConfig,
    mut desired: watch::Receiver<Snapshot>,
    mut inbound: mpsc::Receiver<TcpStream>,
    mut shutdown: watch::Receiver<Option<StopReason>>,
    status: StatusSender,
    metrics: Arc<Metrics>,
) {
    let mut fsm = Fsm::new(FsmConfig {
        hold_time: peer.hold_time,
        keepalive: peer.keepalive_time,
        connect_retry: peer.connect_retry,
        // Back-off relative to the configured retry: at most 8 times it, and 120 s.
        connect_retry_max: peer
            .connect_retry
            .saturating_mul(8)
            .clamp(peer.connect_retry, peer.connect_retry.max(120)),
        passive: peer.passive,
        ..FsmConfig::new(local.asn, local.router_id, peer.asn)
    });
    let mut s = Session {
        label: peer.address.to_string(),
        metrics,
        local,
        peer,
        io: Io {
            read: None,
            write: None,
            closing: Vec::new(),
            connecting: None,
            buf: Vec::with_capacity(8192),
            outbound: false,
            pending: None,
            pending_buf: Vec::new(),
            pending_id: None,
        },
        deadlines: BTreeMap::new(),
        enc: EncodeContext::default(),
        dec: DecodeContext::default(),
        ribs: ribs([false; 2], None),
        synced: [None; 2],
        nothing: Arc::new(Desired::new()),
        established: false,
        eor_due: false,
        established_at: None,
        last_error: None,
        peer_open: None,
    };
    s.apply(&mut fsm, Event::ManualStart);
    let mut read_buf = vec![0u8; 65536];
    loop {
        s.settle_inbound(&mut fsm);
        let want = snapshot(&desired);
        s.pump(&want);
        s.publish(&fsm, &status);
        let next_deadline = s.deadlines.values().min().copied();
        // Wait for room on the queue only when there is something to put there: a full
        // queue is a slow peer, and waiting on it goes on beside reads and timers.
        let room =
            s.io.write
                .as_ref()
                .filter(|_| s.has_work(&want))
                .map(Writer::room);
        drop(want);
        tokio::select! {
            changed = shutdown.changed() => {
                // A speaker that went away without a word (its sender dropped) is a shutdown.
                let reason = match changed {
                    Ok(()) => *shutdown.borrow_and_update(),
                    Err(_) => Some(StopReason::Shutdown),
                };
                let Some(mut reason) = reason else {
                    continue;
                };
                if reason == StopReason::Restart && !s.graceful_restart_negotiated() {
                    reason = StopReason::Shutdown;
                }
                let n_bit = s.graceful_notification_negotiated();
                fsm.set_graceful_notification(n_bit);
                info!(?reason, n_bit, "stopping the session");
                s.apply(&mut fsm, Event::Stop(reason));
                s.publish(&fsm, &status);
                s.finish().await;
                return;
            }
            res = async { match s.io.connecting.as_mut() { Some(c) => c.await, None => std::future::pending().await } } => {
                s.io.connecting = None;
                let ev = match res {
                    Ok(stream) => {
                        s.attach(stream, true);
                        Event::TcpCrAcked
                    }
                    Err(e) => {
                        debug!(error = %e, "connect failed");
                        s.last_error = Some(format!("connect to {}:{}: {e}", s.peer.address, s.peer.port));
                        Event::TcpConnectionFails
                    }
                };
                s.apply(&mut fsm, ev);
            }
            n = async { match s.io.read.as_mut() { Some(r) => r.read(&mut read_buf).await, None => std::future::pending().await } } => {
                match n {
                    Ok(0) | Err(_) => {
                        s.last_error.get_or_insert_with(|| "connection closed by peer".to_owned());
                        s.apply(&mut fsm, Event::TcpConnectionFails);
                    }
                    Ok(n) => {
                        s.io.buf.extend_from_slice(read_buf.get(..n).unwrap_or_default());
                        s.drain_messages(&mut fsm);
                    }
                }
            }
            failure = async { match s.io.write.as_mut() { Some(w) => w.failed().await, None => std::future::pending().await } } => {
                let ev = match failure {
                    WriteFailure::Io(e) => {
                        s.last_error = Some(format!("write to {}: {e}", s.peer.address));
                        Event::TcpConnectionFails
                    }
                    WriteFailure::SendHoldExpired(d) => {
                        warn!(seconds = d.as_secs_f64(), "send hold timer expired: the peer takes no data");
                        s.metrics.send_hold_expired(&s.label);
                        s.last_error = Some(format!(
                            "send hold timer expired: the peer took no data for {} s",
                            d.as_secs()
                        ));
                        Event::SendHoldTimerExpires
                    }
                };
                s.apply(&mut fsm, ev);
            }
            () = async { match room { Some(r) => r.await, None => std::future::pending().await } } => {
                // Room on the queue: the next turn fills it.
            }
            _ = async { match next_deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => {
                let now = Instant::now();
                let due: Vec<Timer> = s.deadlines.iter().filter(|(_, d)| **d <= now).map(|(t, _)| *t).collect();
                for t in due {
                    s.deadlines.remove(&t);
                    let ev = match t {
                        Timer::ConnectRetry => Event::ConnectRetryTimerExpires,
                        Timer::Hold => {
                            // Said here too: with a full queue the NOTIFICATION may not go out.
                            s.last_error = Some("hold timer expired: nothing from the peer".to_owned());
                            Event::HoldTimerExpires
                        }
                        Timer::Keepalive => Event::KeepaliveTimerExpires,
                        Timer::IdleHold => Event::IdleHoldTimerExpires,
                    };
                    s.apply(&mut fsm, ev);
                }
            }
            Some(stream) = inbound.recv() => {
                // Judged at the top of the loop, now and after every later event.
                if s.io.pending.replace(stream).is_some() {
                    debug!("a newer inbound connection replaces one still waiting");
                }
                s.io.pending_buf.clear();
                s.io.pending_id = None;
            }
            // A connection parked while ours is in OpenSent: its OPEN names the peer's
            // identifier, which settles the collision now (RFC 4271 §6.8 allows it) instead of
            // when, if ever, the peer answers on ours.
            _ = async { match s.io.pending.as_ref() { Some(p) if s.io.pending_id.is_none() => p.readable().await, _ => std::future::pending().await } } => {
                s.read_pending();
            }
            Ok(()) = desired.changed() => {
                // Produced at the top of the loop, as the queue has room.
                let d = desired.borrow_and_update();
                debug!(version = d.version, delta = ?d.delta.as_ref().map(|x| x.prefixes.len()), "desired state changed");
            }
        }
    }
}

struct Session {
    label: String,
    metrics: Arc<Metrics>,
    local: Local,
    peer: PeerConfig,
    io: Io,
    deadlines: BTreeMap<Timer, Instant>,
    enc: EncodeContext,
    dec: DecodeContext,
    ribs: [AdjRibOut; 2],
    /// The snapshot version each RIB-out was last brought to.
    synced: [Option<u64>; 2],
    /// The empty state, for a family the peer did not negotiate.
    nothing: Arc<Desired>,
    established: bool,
    /// End-of-RIB is still to follow the initial sync.
    eor_due: bool,
    established_at: Option<Instant>,
    last_error: Option<String>,
    peer_open: Option<Open>,
}

impl Session {
    fn publish(&self, fsm: &Fsm, status: &StatusSender) {
        let st = Status {
            state: fsm.state(),
            add_path: [self.ribs[0].add_path(), self.ribs[1].add_path()],
            paths: self.ribs.iter().map(AdjRibOut::paths).sum(),
            prefixes: self.ribs.iter().map(AdjRibOut::prefixes).sum(),
            degraded: self.ribs.iter().any(AdjRibOut::ecmp_degraded),
            established_at: self.established_at,
            last_error: self.last_error.clone(),
        };
        self.metrics.set_state(&self.label, st.state);
        let peer = PeerLabels {
            peer: self.label.clone(),
        };
        let prefixes = st.prefixes;
        self.metrics
            .prefixes_announced
            .get_or_create(&peer)
            .set(i64::try_from(prefixes).unwrap_or(i64::MAX));
        self.metrics
            .paths_announced
            .get_or_create(&peer)
            .set(i64::try_from(st.paths).unwrap_or(i64::MAX));
        let mut moved = None;
        status.status.send_if_modified(|old| {
            let changed = *old != st;
            if old.state != st.state {
                moved = Some(SessionEvent {
                    peer: status.peer,
                    state: Some(st.state),
                    previous: Some(old.state),
                    last_error: st.last_error.clone(),
                });
            }
            if changed {
                *old = st;
            }
            changed
        });
        // Pushed as it happens; no receiver (no Watch client) is not an error.
        if let Some(e) = moved {
            let _ = status.events.send(e);
        }
    }

    /// Reads what the parked inbound connection has sent, up to its OPEN; a connection that
    /// closes or sends anything else is dropped.
    fn read_pending(&mut self) {
        let Some(stream) = self.io.pending.as_ref() else {
            return;
        };
        let mut chunk = [0u8; 4096];
        let outcome = match stream.try_read(&mut chunk) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Ok(0) | Err(_) => None,
            Ok(n) => {
                self.io
                    .pending_buf
                    .extend_from_slice(chunk.get(..n).unwrap_or_default());
                match Message::decode(&self.io.pending_buf, &DecodeContext::default()) {
                    Ok(None) if self.io.pending_buf.len() < 4096 => return,
                    Ok(Some((Message::Open(o), _))) => Some(o.router_id),
                    _ => None,
                }
            }
        };
        match outcome {
            Some(id) => {
                debug!(router_id = %id, "the parked inbound connection's OPEN arrived");
                self.io.pending_id = Some(id);
            }
            None => {
                debug!("the parked inbound connection closed or sent no OPEN: dropped");
                self.io.pending = None;
                self.io.pending_buf.clear();
            }
        }
    }

    /// Connection collision detection (RFC 4271 §6.8) for a connection the peer opened.
    fn settle_inbound(&mut self, fsm: &mut Fsm) {
        let Some(stream) = self.io.pending.take() else {
            return;
        };
        let remote = self
            .peer_open
            .as_ref()
            .map(|o| o.router_id)
            .or(self.io.pending_id);
        let local = (self.local.router_id, self.local.asn);
        match fsm::on_inbound(fsm.state(), local, remote, self.peer.asn, self.io.outbound) {
            Inbound::Wait => self.io.pending = Some(stream),
            Inbound::Refuse => {
                // In Idle there is nothing to collide with: Connection Rejected (6/5); else
                // Connection Collision Resolution (6/7), RFC 4486.
                let n = if fsm.state() == State::Idle {
                    fsm::Notification::bare(6, 5)
                } else {
                    fsm::Notification::collision()
                };
                debug!(state = ?fsm.state(), code = n.code, subcode = n.subcode, "refusing an inbound connection");
                refuse(&stream, n);
            }
            Inbound::Adopt => {
                self.io.connecting = None;
                self.attach(stream, false);
                self.apply(fsm, Event::TcpConnectionConfirmed);
                self.resume_pending(fsm);
            }
            Inbound::Replace => {
                info!("connection collision: continuing on the connection the peer opened");
                self.apply(fsm, Event::OpenCollisionDump);
                self.apply(fsm, Event::AutomaticStart);
                self.io.connecting = None;
                self.attach(stream, false);
                self.apply(fsm, Event::TcpConnectionConfirmed);
                self.resume_pending(fsm);
            }
        }
        if self.io.pending.is_none() {
            self.io.pending_buf.clear();
            self.io.pending_id = None;
        }
    }

    /// Feeds what was read from an adopted parked connection (its OPEN) to the session.
    fn resume_pending(&mut self, fsm: &mut Fsm) {
        self.io.pending_id = None;
        if !self.io.pending_buf.is_empty() {
            self.io.buf = std::mem::take(&mut self.io.pending_buf);
            self.drain_messages(fsm);
        }
    }

    fn attach(&mut self, stream: TcpStream, outbound: bool) {
        self.io.outbound = outbound;
        let _ = stream.set_nodelay(true);
        if let Some(ttl) = self.ttl()
            && let Err(e) = set_hop_limit(socket2::SockRef::from(&stream), ttl)
        {
            warn!(error = %e, ttl, "cannot set the TTL / hop limit on the BGP connection");
        }
        let send_hold = send_hold_time(self.local.send_hold, self.peer.hold_time);
        // The kernel's own bound on unacknowledged data (a peer that vanished); the
        // send-hold timer covers the peer that acknowledges but takes nothing (zero window).
        if let Err(e) = socket2::SockRef::from(&stream).set_tcp_user_timeout(Some(send_hold)) {
            debug!(error = %e, "TCP_USER_TIMEOUT not set");
        }
        let (r, w) = stream.into_split();
        self.io.read = Some(r);
        if let Some(old) = self.io.write.replace(Writer::spawn(w, send_hold)) {
            self.io.closing.push(old.close());
        }
        self.io.buf.clear();
    }

    /// Whether both sides advertised graceful restart: the peer then keeps our routes when
    /// the connection closes without a NOTIFICATION (RFC 4724 §4.2).
    fn graceful_restart_negotiated(&self) -> bool {
        self.local.graceful_restart.enabled
            && self.peer_open.as_ref().is_some_and(|o| {
                o.capabilities
                    .iter()
                    .any(|c| matches!(c, Capability::GracefulRestart { .. }))
            })
    }

    /// Whether both sides set the N bit in graceful restart (RFC 8538): a NOTIFICATION then
    /// keeps our routes at the peer, and only a Hard Reset withdraws them.
    fn graceful_notification_negotiated(&self) -> bool {
        self.local.graceful_restart.enabled
            && self.peer_open.as_ref().is_some_and(|o| {
                o.capabilities.iter().any(|c| {
                    matches!(
                        c,
                        Capability::GracefulRestart {
                            notification: true,
                            ..
                        }
                    )
                })
            })
    }

    /// Waits for closed connections to flush (each within [`LINGER`]).
    async fn finish(&mut self) {
        for h in std::mem::take(&mut self.io.closing) {
            let _ = h.await;
        }
    }

    /// Whether there is something to queue for the peer: a sync to the desired state under
    /// way or due, or the End-of-RIB that follows the first one.
    fn has_work(&self, desired: &Snapshot) -> bool {
        self.established
            && (self.eor_due || self.synced.iter().any(|v| *v != Some(desired.version)))
    }

    /// Fills the queue from the RIB-out while it has room; never waits.
    fn pump(&mut self, desired: &Snapshot) {
        while self.has_work(desired) && self.io.write.as_ref().is_some_and(Writer::has_room) {
            let Some(bytes) = self.next_item(desired) else {
                return;
            };
            // One producer: the room checked above is still there.
            if !self.io.write.as_ref().is_some_and(|w| w.try_send(bytes)) {
                return;
            }
        }
    }

    /// The next batch towards `desired` (about [`SYNC_BATCH`] changes), encoded; then the
    /// End-of-RIB after the first sync; `None` when the peer holds `desired`.
    fn next_item(&mut self, desired: &Snapshot) -> Option<Vec<u8>> {
        let negotiated = self.families_negotiated();
        for (i, fam) in FAMILIES.iter().enumerate() {
            if self.synced[i] == Some(desired.version) {
                continue;
            }
            let target = if negotiated.contains(fam) {
                desired.routes.clone()
            } else {
                self.nothing.clone()
            };
            // A small change on top of the version this peer holds: only its prefixes.
            let delta = desired
                .delta
                .as_ref()
                .filter(|d| self.synced[i] == Some(d.from))
                .and_then(|d| self.ribs[i].sync_delta(&target, &d.prefixes));
            let changes = match delta {
                Some(changes) => {
                    debug!(family = i, changes = changes.len(), "delta sync");
                    self.synced[i] = Some(desired.version);
                    changes
                }
                None => {
                    // Bounded batches: a large table never exists as one list of changes.
                    let changes = self.ribs[i].sync(&target, SYNC_BATCH);
                    if changes.is_empty() {
                        self.synced[i] = Some(desired.version);
                    }
                    changes
                }
            };
            if changes.is_empty() {
                continue;
            }
            let mut bytes = Vec::new();
            for msg in self.encode_changes(*fam, &changes) {
                self.metrics.message(&self.label, "update", true);
                bytes.extend_from_slice(&msg);
            }
            return Some(bytes);
        }
        if std::mem::take(&mut self.eor_due) {
            let mut bytes = Vec::new();
            for fam in self.families_negotiated() {
                let eor = Message::Update(berth_bgp_wire::Update::end_of_rib(fam));
                self.metrics.message(&self.label, "update", true);
                bytes.extend_from_slice(&eor.to_bytes(&self.enc));
            }
            return Some(bytes);
        }
        None
    }

    fn ttl(&self) -> Option<u32> {
        let ebgp = self.local.asn != self.peer.asn;
        match (ebgp, self.peer.ebgp_multihop) {
            (true, Some(t)) => Some(u32::from(t)),
            (true, None) => Some(1),
            (false, _) => None,
        }
    }

    /// Feeds one event and carries out the actions, feeding back events they cause.
    /// Feeds one event and carries out the actions. Never waits: writes only queue bytes.
    fn apply(&mut self, fsm: &mut Fsm, event: Event) {
        debug!(state = ?fsm.state(), event = ?event, "fsm");
        for action in fsm.handle(event) {
            self.act(action);
        }
    }

    fn act(&mut self, action: Action) {
        match action {
            Action::Connect => {
                let addr = SocketAddr::new(self.peer.address, self.peer.port);
                let source = self.peer.source_address;
                let key = self.peer.password.clone();
                let ttl = self.ttl();
                self.io.connecting = Some(Box::pin(connect(addr, source, key, ttl)));
            }
            Action::Disconnect => {
                self.io.connecting = None;
                self.io.read = None;
                self.io.closing.retain(|h| !h.is_finished());
                if let Some(w) = self.io.write.take() {
                    self.io.closing.push(w.close());
                }
                self.io.buf.clear();
            }
            Action::SendOpen => {
                let open = Message::Open(self.our_open());
                self.send(&open);
            }
            Action::SendKeepalive => {
                // A full queue holds messages that reach the peer before a KEEPALIVE would,
                // and any message restarts its hold timer: skipping one loses nothing.
                if !self.send(&Message::Keepalive) {
                    debug!("queue full: KEEPALIVE skipped");
                }
            }
            Action::SendNotification(n) => {
                warn!(code = n.code, subcode = n.subcode, "sending NOTIFICATION");
                let (code, subcode) = (n.code, n.subcode);
                // Best effort: a peer whose queue is full (or whose writer gave up) does not
                // take it either, and the close that follows must not wait for it.
                if self.send(&Message::Notification(n)) {
                    self.last_error = Some(format!("sent NOTIFICATION {code}/{subcode}"));
                }
            }
            Action::StartTimer(t, secs) => {
                let d = timer_duration(t, secs, random_unit());
                self.deadlines.insert(t, Instant::now() + d);
            }
            Action::StopTimer(t) => {
                self.deadlines.remove(&t);
            }
            Action::Established {
                hold_time,
                keepalive,
            } => {
                self.negotiate();
                info!(
                    hold_time,
                    keepalive,
                    add_path_v4 = self.enc.add_path[0],
                    add_path_v6 = self.enc.add_path[1],
                    "session established"
                );
                if let Some(w) = &self.io.write {
                    w.set_send_hold(send_hold_time(self.local.send_hold, hold_time));
                }
                self.established = true;
                // The R bit belongs to the first session after our restart only.
                self.local.restarting = false;
                self.eor_due = true;
                self.established_at = Some(Instant::now());
                self.last_error = None;
            }
            Action::Down(reason) => {
                info!(?reason, "session down");
                self.established = false;
                self.eor_due = false;
                self.established_at = None;
                self.ribs = ribs([false; 2], None);
                self.synced = [None; 2];
            }
        }
    }

    /// The families this peer is configured for (`families`; empty: both).
    fn offered(&self) -> Vec<Family> {
        FAMILIES
            .into_iter()
            .zip(crate::config::FAMILY_NAMES)
            .filter(|(_, name)| {
                self.peer.families.is_empty() || self.peer.families.iter().any(|f| f == name)
            })
            .map(|(fam, _)| fam)
            .collect()
    }

    fn our_open(&self) -> Open {
        let offered = self.offered();
        let mut caps: Vec<Capability> = offered
            .iter()
            .map(|f| {
                let (afi, safi) = f.afi_safi();
                Capability::Multiprotocol { afi, safi }
            })
            .collect();
        caps.push(Capability::RouteRefresh);
        caps.push(Capability::FourOctetAs(self.local.asn));
        if self.peer.add_path {
            caps.push(Capability::AddPath(
                offered
                    .iter()
                    .map(|f| {
                        let (afi, safi) = f.afi_safi();
                        (afi, safi, AddPathMode::Send)
                    })
                    .collect(),
            ));
        }
        let gr = self.local.graceful_restart;
        if gr.enabled {
            // The nodes, not the speaker, forward the traffic, and they keep doing so while the
            // speaker restarts: forwarding state is always preserved (F bit), so the peer keeps
            // the stale paths until our End-of-RIB instead of flushing them on our new OPEN.
            let families = offered
                .iter()
                .map(|f| {
                    let (afi, safi) = f.afi_safi();
                    GracefulRestartFamily {
                        afi,
                        safi,
                        forwarding_preserved: true,
                    }
                })
                .collect();
            caps.push(Capability::GracefulRestart {
                restarting: self.local.restarting,
                // RFC 8538: our planned restart sends a Cease the peer answers as a restart.
                notification: true,
                restart_time: gr.restart_time,
                families,
            });
        }
        Open {
            asn: self.local.asn,
            hold_time: self.peer.hold_time,
            router_id: self.local.router_id,
            capabilities: caps,
        }
    }

    fn negotiate(&mut self) {
        let ours = self.our_open();
        let Some(theirs) = &self.peer_open else {
            return;
        };
        let four = ours.four_octet_as() && theirs.four_octet_as();
        let mut add_path = [false; 2];
        for (i, fam) in FAMILIES.iter().enumerate() {
            let (afi, safi) = fam.afi_safi();
            let we_send = ours
                .add_path()
                .any(|(a, s, m)| (*a, *s) == (afi, safi) && m.sends());
            let they_receive = theirs
                .add_path()
                .any(|(a, s, m)| (*a, *s) == (afi, safi) && m.receives());
            add_path[i] = we_send && they_receive;
        }
        self.enc = EncodeContext {
            four_octet_as: four,
            add_path,
            extended_message: false,
        };
        // We never advertise ADD-PATH receive, so their NLRI carry no path IDs.
        self.dec = DecodeContext {
            four_octet_as: four,
            add_path: [false; 2],
            extended_message: false,
        };
        self.ribs = ribs(add_path, self.peer.send_max);
        self.synced = [None; 2];
    }

    fn families_negotiated(&self) -> Vec<Family> {
        let Some(theirs) = &self.peer_open else {
            return vec![Family::Ipv4Unicast];
        };
        let mp: Vec<Family> = theirs
            .capabilities
            .iter()
            .filter_map(|c| match c {
                Capability::Multiprotocol { afi, safi } => Family::from_afi_safi(*afi, *safi),
                _ => None,
            })
            .collect();
        // RFC 4760: a peer without the MP capability speaks IPv4 unicast only.
        let theirs = if mp.is_empty() {
            vec![Family::Ipv4Unicast]
        } else {
            mp
        };
        // Only what both offered is exchanged.
        let ours = self.offered();
        theirs.into_iter().filter(|f| ours.contains(f)).collect()
    }

    /// Groups changes by attribute set and next hop, and packs them.
    fn encode_changes(&self, fam: Family, changes: &[Change]) -> Vec<Vec<u8>> {
        let ap = self.enc.add_path(fam);
        let path_id = |id: crate::rib::PathId| ap.then_some(id.0);
        let mut withdrawn = Vec::new();
        // Paths with the same next hop and attributes share UPDATEs.
        let mut groups: BTreeMap<(IpAddr, &Arc<PathAttrs>), Vec<Nlri>> = BTreeMap::new();
        for c in changes {
            match c {
                Change::Withdraw {
                    prefix,
                    path_id: id,
                } => withdrawn.push(Nlri {
                    path_id: path_id(*id),
                    prefix: *prefix,
                }),
                Change::Announce {
                    prefix,
                    path_id: id,
                    next_hop,
                    attrs,
                } => groups.entry((*next_hop, attrs)).or_default().push(Nlri {
                    path_id: path_id(*id),
                    prefix: *prefix,
                }),
            }
        }
        let groups: Vec<_> = groups
            .into_iter()
            .map(|((next_hop, attrs), nlri)| {
                let nh = match next_hop {
                    IpAddr::V4(a) => NextHop::V4(a),
                    IpAddr::V6(a) => NextHop::V6 {
                        global: a,
                        link_local: None,
                    },
                };
                (self.attributes(attrs), nh, nlri)
            })
            .collect();
        let packed = pack_updates(&self.enc, fam, &withdrawn, &groups);
        if packed.unsendable > 0 {
            // Too many communities for one message: say so rather than pretend they were sent.
            warn!(
                family = ?fam,
                paths = packed.unsendable,
                "paths not sent: their attributes do not fit in one UPDATE (fewer communities)"
            );
            self.metrics
                .paths_unsendable
                .get_or_create(&PeerLabels {
                    peer: self.label.clone(),
                })
                .inc_by(u64::try_from(packed.unsendable).unwrap_or(u64::MAX));
        }
        packed.messages
    }

    /// The attributes of one path for this peer: iBGP/eBGP rules applied here.
    fn attributes(&self, attrs: &PathAttrs) -> Vec<Attribute> {
        let ebgp = self.local.asn != self.peer.asn;
        let path = if ebgp {
            vec![AsSegment::Sequence(vec![self.local.asn])]
        } else {
            vec![]
        };
        let mut out = vec![
            Attribute::Origin(Origin::Igp),
            Attribute::AsPath(AsPath(path)),
        ];
        if !ebgp {
            // The peer's LOCAL_PREF (BgpPeer localPref) wins over the route's.
            let pref = self.peer.local_pref.or(attrs.local_pref).unwrap_or(100);
            out.push(Attribute::LocalPref(pref));
        }
        // The route's communities, then the peer's (BgpPeer communities), each once.
        let mut communities = attrs.communities.clone();
        for c in self
            .peer
            .communities
            .iter()
            .filter_map(|c| crate::config::parse_community(c))
        {
            if !communities.contains(&c) {
                communities.push(c);
            }
        }
        if !communities.is_empty() {
            out.push(Attribute::Communities(communities));
        }
        if let Some(w) = attrs.weight {
            let asn = u16::try_from(self.local.asn).unwrap_or(berth_bgp_wire::AS_TRANS);
            // Weight w is sent as w Mbit/s (in bytes per second): receivers such as FRR round
            // the bandwidth down to whole Mbit/s, so a raw small number would read as zero.
            #[allow(clippy::cast_precision_loss)]
            let bw = (w as f32 * 125_000.0).to_bits();
            out.push(Attribute::ExtendedCommunities(vec![
                ExtCommunity::LinkBandwidth { asn, bandwidth: bw },
            ]));
        }
        let mut large: Vec<[u32; 3]> = attrs
            .large_communities
            .iter()
            .map(|(a, b, c)| [*a, *b, *c])
            .collect();
        for c in &self.peer.large_communities {
            if !large.contains(c) {
                large.push(*c);
            }
        }
        if !large.is_empty() {
            out.push(Attribute::LargeCommunities(large));
        }
        out
    }

    fn drain_messages(&mut self, fsm: &mut Fsm) {
        loop {
            let decoded = Message::decode(&self.io.buf, &self.dec);
            let ev = match decoded {
                Ok(None) => return,
                Ok(Some((msg, n))) => {
                    self.io.buf.drain(..n);
                    self.metrics.message(&self.label, kind(&msg), false);
                    match msg {
                        Message::Open(o) => {
                            let ev = Event::BgpOpen(PeerOpen {
                                asn: o.asn,
                                hold_time: o.hold_time,
                                router_id: o.router_id,
                            });
                            self.peer_open = Some(o);
                            ev
                        }
                        Message::Keepalive => Event::KeepAliveMsg,
                        Message::Update(_) => Event::UpdateMsg,
                        Message::Notification(n) => {
                            warn!(code = n.code, subcode = n.subcode, "received NOTIFICATION");
                            self.metrics
                                .notification(&self.label, false, n.code, n.subcode);
                            self.last_error =
                                Some(format!("received NOTIFICATION {}/{}", n.code, n.subcode));
                            Event::NotifMsg(n)
                        }
                        Message::RouteRefresh(rr) => {
                            match refresh_target(&rr, &self.families_negotiated()) {
                                // Resend that family: forget what was sent; the loop syncs it.
                                Some(i) if self.established => {
                                    let scope = if i == 0 { Scope::Ipv4 } else { Scope::Ipv6 };
                                    self.ribs[i] = AdjRibOut::new(
                                        scope,
                                        self.enc.add_path[i],
                                        self.peer.send_max,
                                    );
                                    self.synced[i] = None;
                                }
                                Some(_) => {}
                                None => debug!(
                                    afi = rr.afi,
                                    safi = rr.safi,
                                    subtype = rr.subtype,
                                    "ROUTE-REFRESH ignored: not a request for a negotiated family"
                                ),
                            }
                            continue;
                        }
                    }
                }
                Err(e) => {
                    self.io.buf.clear();
                    let n = e.notification();
                    match e {
                        DecodeError::Open { .. } => Event::BgpOpenMsgErr(n),
                        DecodeError::Update { .. } => Event::UpdateMsgErr(n),
                        _ => Event::BgpHeaderErr(n),
                    }
                }
            };
            self.apply(fsm, ev);
            if self.io.read.is_none() {
                return;
            }
        }
    }

    /// Queues one message without waiting; `false` when it could not be queued (no
    /// connection, or the queue is full).
    fn send(&mut self, msg: &Message) -> bool {
        let Some(w) = &self.io.write else {
            return false;
        };
        if !w.try_send(msg.to_bytes(&self.enc)) {
            return false;
        }
        self.metrics.message(&self.label, kind(msg), true);
        if let Message::Notification(n) = msg {
            self.metrics
                .notification(&self.label, true, n.code, n.subcode);
        }
        true
    }
}

async fn connect(
    addr: SocketAddr,
    source: Option<IpAddr>,
    md5: Option<String>,
    ttl: Option<u32>,
) -> std::io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // Before the SYN, so every packet of the connection carries it.
    if let Some(ttl) = ttl {
        set_hop_limit(socket2::SockRef::from(&socket), ttl)?;
    }
    if let Some(src) = source {
        socket.bind(SocketAddr::new(src, 0))?;
    }
    if let Some(key) = md5 {
        use std::os::fd::AsFd;
        berth_tcp_md5::set_md5_key(socket.as_fd(), addr.ip(), key.as_bytes())?;
    }
    tokio::time::timeout(Duration::from_secs(10), socket.connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))?
}

/// Sets the TTL (IPv4) or the hop limit (IPv6) of a BGP connection's packets: `IP_TTL` does
/// nothing for IPv6 packets, which need `IPV6_UNICAST_HOPS`.
fn set_hop_limit(socket: socket2::SockRef<'_>, ttl: u32) -> std::io::Result<()> {
    match socket.domain()? {
        d if d == socket2::Domain::IPV6 => socket.set_unicast_hops_v6(ttl),
        _ => socket.set_ttl_v4(ttl),
    }
}

/// Closes a connection we will not use with a Cease.
fn refuse(stream: &TcpStream, n: fsm::Notification) {
    let n = Message::Notification(n);
    // Best effort on a fresh socket: a NOTIFICATION fits its send buffer.
    let _ = stream.try_write(&n.to_bytes(&EncodeContext::default()));
}

/// The current desired state, without holding the channel's lock across an await.
fn snapshot(rx: &watch::Receiver<Snapshot>) -> Snapshot {
    rx.borrow().clone()
}

fn kind(msg: &Message) -> &'static str {
    match msg {
        Message::Open(_) => "open",
        Message::Update(_) => "update",
        Message::Notification(_) => "notification",
        Message::Keepalive => "keepalive",
        Message::RouteRefresh(_) => "route_refresh",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rr(afi: u16, safi: u8, subtype: u8) -> RouteRefresh {
        RouteRefresh { afi, subtype, safi }
    }

    #[test]
    fn retry_keepalive_and_idle_hold_are_jittered_the_hold_timer_is_not() {
        for t in [Timer::ConnectRetry, Timer::Keepalive, Timer::IdleHold] {
            assert_eq!(timer_duration(t, 40, 0.0), Duration::from_secs(30));
            assert_eq!(timer_duration(t, 40, 0.5), Duration::from_secs(35));
            assert!(timer_duration(t, 40, 0.999_999) <= Duration::from_secs(40));
        }
        assert_eq!(
            timer_duration(Timer::Hold, 90, 0.0),
            Duration::from_secs(90)
        );
        // The source spreads: 64 draws are not all equal and all lie in [0, 1).
        let draws: Vec<f64> = (0..64).map(|_| random_unit()).collect();
        assert!(draws.iter().all(|r| (0.0..1.0).contains(r)));
        assert!(draws.iter().any(|r| *r != draws[0]));
    }

    #[test]
    fn route_refresh_resends_only_a_negotiated_family() {
        let v4_only = [Family::Ipv4Unicast];
        let both = [Family::Ipv4Unicast, Family::Ipv6Unicast];
        assert_eq!(refresh_target(&rr(1, 1, 0), &v4_only), Some(0));
        assert_eq!(refresh_target(&rr(2, 1, 0), &both), Some(1));
        // IPv6 was not negotiated: ignored.
        assert_eq!(refresh_target(&rr(2, 1, 0), &v4_only), None);
        // Unknown families and the peer's own BoRR/EoRR markers: ignored.
        assert_eq!(refresh_target(&rr(1, 128, 0), &both), None);
        assert_eq!(refresh_target(&rr(1, 1, 1), &both), None);
        assert_eq!(refresh_target(&rr(1, 1, 2), &both), None);
    }
}

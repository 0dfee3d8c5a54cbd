//! One peer's session: the I/O around the [`Fsm`], the codec and the per-family RIB-out.
//!
//! One task per peer owns the TCP connection's read side, the timers and what was sent to that
//! peer; the desired state arrives on a watch channel, inbound connections on an mpsc channel.
//! Writes go through the connection's [`writer`]: the session only ever puts bytes on a
//! bounded queue when it has room and never awaits a write, so a peer that stops reading
//! cannot hold up its reads, its timers, a settings change or shutdown. The RIB-out, not the
//! queue, remembers what is still to send: the session produces the next batch only when the
//! queue has room.

//!
//! The parts: [`driver`] feeds the FSM and carries out its actions; [`writer`] owns the
//! connection's write side; [`sync`] brings the peer's RIB-out to the desired state;
//! [`export`] is the export policy (what a path carries for this peer, pure); [`open`] builds
//! our OPEN and reads what was negotiated; [`collision`] parks inbound connections and settles
//! collisions.

mod collision;
mod driver;
mod export;
mod open;
mod sync;
mod writer;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use berth_bgp_wire::{DecodeContext, EncodeContext, Family, Open};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::config::{GracefulRestartConfig, PeerConfig};
use crate::fsm::{Config as FsmConfig, Event, Fsm, State, StopReason, Timer};
use crate::metrics::{Metrics, PeerLabels};
use crate::rib::{AdjRibOut, Desired, Snapshot};
use collision::Parked;
use export::Export;
use sync::ribs;
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
    parked: Parked,
}

const FAMILIES: [Family; 2] = [Family::Ipv4Unicast, Family::Ipv6Unicast];

/// Runs the session until `shutdown` names a reason; then says goodbye as that reason says (a
/// Cease with its subcode, or for a restart under negotiated graceful restart no NOTIFICATION
/// at all, so the peer keeps our routes) and returns within [`LINGER`] whatever the peer does.
pub async fn run(
    local: Local,
    mut peer_rx: watch::Receiver<PeerConfig>,
    mut desired: watch::Receiver<Snapshot>,
    mut inbound: mpsc::Receiver<TcpStream>,
    mut shutdown: watch::Receiver<Option<StopReason>>,
    status: StatusSender,
    metrics: Arc<Metrics>,
) {
    let peer = peer_rx.borrow_and_update().clone();
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
        export: Export::new(local.asn, &peer),
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
            parked: Parked::default(),
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
            Some(stream) = inbound.recv() => s.io.parked.park(stream),
            // A connection parked while ours is in OpenSent: its OPEN names the peer's
            // identifier, which settles the collision now (RFC 4271 §6.8 allows it) instead of
            // when, if ever, the peer answers on ours.
            () = s.io.parked.readable() => {
                s.read_pending();
            }
            Ok(()) = peer_rx.changed() => {
                // Only what paths carry changed (the speaker restarts a session for anything
                // else): announced again, with the new attributes, on the same session.
                let peer = peer_rx.borrow_and_update().clone();
                s.reexport(peer);
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
    /// What a path carries for this peer.
    export: Export,
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
}

/// The current desired state, without holding the channel's lock across an await.
fn snapshot(rx: &watch::Receiver<Snapshot>) -> Snapshot {
    rx.borrow().clone()
}

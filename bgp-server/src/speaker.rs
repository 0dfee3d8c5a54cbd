//! The speaker: one session task per peer, an optional listener that hands inbound
//! connections to the right session, and the shared desired state.
//!
//! The settings (global values and peers) arrive on a watch channel, from the standalone file
//! or from the control API; the speaker follows them: a new peer gets a session, a removed one
//! is closed with a Cease, one whose communities or LOCAL_PREF changed keeps its session and
//! gets every path again, another changed one is restarted, and a change of ASN, router ID,
//! listen port or graceful restart restarts everything. Routes never pass through here: sessions read
//! the desired-state channel themselves.
//!
//! Nothing here can make the process exit: settings that cannot be applied (a listen port
//! another process holds, an MD5 key the kernel refuses) are reported (log, the
//! `settings_unapplied` metric, `/readyz` with the reason) while the sessions that can run do.
//! The control service checks the same with [`Listeners::prepare`] before it accepts a state,
//! so only a persisted state or the standalone file can get this far.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, error, info, warn};

use crate::config::{PeerConfig, SpeakerConfig};
use crate::fsm::{State, StopReason};
use crate::metrics::Metrics;
use crate::rib::Snapshot;
use crate::session::{self, Local, SessionEvent, Status, StatusSender};

/// Each peer's live status, by address, and every session state change as it happens, for the
/// control API.
#[derive(Clone)]
pub struct StatusBoard {
    peers: Arc<Mutex<Peers>>,
    events: broadcast::Sender<SessionEvent>,
}

/// Each peer's configuration and live status, by address.
pub type Peers = BTreeMap<IpAddr, (PeerConfig, watch::Receiver<Status>)>;

/// State changes kept for a Watch client that reads slowly before it is told it missed some.
const EVENTS_KEPT: usize = 1024;

impl Default for StatusBoard {
    fn default() -> Self {
        StatusBoard {
            peers: Arc::default(),
            events: broadcast::channel(EVENTS_KEPT).0,
        }
    }
}

impl StatusBoard {
    /// Each peer's configuration and live status.
    pub fn peers(&self) -> std::sync::MutexGuard<'_, Peers> {
        lock(&self.peers)
    }

    /// Every state change from now on (a receiver that falls behind by more than
    /// [`EVENTS_KEPT`] learns how many it missed).
    pub fn subscribe(&self) -> broadcast::Receiver<SessionEvent> {
        self.events.subscribe()
    }

    fn remove(&self, peer: IpAddr) {
        if let Some((_, st)) = lock(&self.peers).remove(&peer) {
            let previous = st.borrow().state;
            let _ = self.events.send(SessionEvent {
                peer,
                state: None,
                previous: Some(previous),
                last_error: None,
            });
        }
    }
}

/// Where inbound connections go, by peer address.
type Routing = Arc<Mutex<BTreeMap<IpAddr, mpsc::Sender<tokio::net::TcpStream>>>>;

struct Running {
    peer: PeerConfig,
    /// The peer's settings as the session follows them (only export settings change here).
    settings: watch::Sender<PeerConfig>,
    stop: watch::Sender<Option<StopReason>>,
    task: JoinHandle<()>,
}

struct Listening {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// Settings that cannot be applied, with the field to change (the control API's name).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {why}")]
pub struct Unapplicable {
    /// The field, e.g. `global.listen_port`.
    pub field: String,
    /// Why, and what to do.
    pub why: String,
}

/// The BGP listener's socket, bound before it is needed: the control service binds it (and
/// sets the MD5 keys on it) while it validates an Apply, so a port that cannot be bound is
/// refused before the state is accepted and persisted; the speaker then listens on the same
/// socket.
#[derive(Clone, Default)]
pub struct Listeners(Arc<Mutex<Option<Bound>>>);

struct Bound {
    port: u16,
    socket: std::net::TcpListener,
    /// Bound to `::` (IPv4 peers appear as ::ffff:a.b.c.d).
    dual_stack: bool,
    /// The addresses (as the listener sees them) whose MD5 key is set on the socket.
    keyed: BTreeSet<IpAddr>,
}

impl Listeners {
    /// Makes sure `cfg` can be run here: binds its listen port unless already bound, and sets
    /// every peer's MD5 key on that socket. Nothing changes until [`Prepared::commit`]: a
    /// state refused later (its persisting failed) leaves the listener as it was.
    pub fn prepare(&self, cfg: &SpeakerConfig) -> Result<Prepared, Unapplicable> {
        let port = cfg.listen_port;
        let prepared = |fresh, keyed| Prepared {
            listeners: self.clone(),
            port,
            fresh,
            keyed,
        };
        if port == 0 {
            return Ok(prepared(None, BTreeSet::new()));
        }
        let slot = lock(&self.0);
        let fresh = match slot.as_ref() {
            Some(b) if b.port == port => None,
            _ => Some(bind(port)?),
        };
        let Some(bound) = fresh.as_ref().or(slot.as_ref()) else {
            return Ok(prepared(None, BTreeSet::new()));
        };
        let mut keyed = BTreeSet::new();
        for (i, peer) in cfg.peers.iter().enumerate() {
            let Some(addr) = md5_on_listener(bound, peer).map_err(|e| Unapplicable {
                field: format!("peers[{i}].password"),
                why: format!("the TCP MD5 key cannot be set on the listener: {e}"),
            })?
            else {
                continue;
            };
            keyed.insert(addr);
        }
        drop(slot);
        Ok(prepared(fresh, keyed))
    }

    /// A handle on the bound socket for `port`, for the accept loop.
    fn socket(&self, port: u16) -> Option<std::io::Result<(TcpListener, bool)>> {
        let slot = lock(&self.0);
        let b = slot.as_ref().filter(|b| b.port == port)?;
        Some(
            b.socket
                .try_clone()
                .and_then(TcpListener::from_std)
                .map(|l| (l, b.dual_stack)),
        )
    }
}

/// A checked listener, not yet in use: dropping it closes a socket bound for it.
pub struct Prepared {
    listeners: Listeners,
    port: u16,
    fresh: Option<Bound>,
    /// The addresses keyed for this state.
    keyed: BTreeSet<IpAddr>,
}

impl Prepared {
    /// Makes it the listener the speaker uses (a port of 0 releases the socket); returns
    /// whether a new socket was bound, which the speaker must be told to pick up.
    pub fn commit(self) -> bool {
        let mut slot = lock(&self.listeners.0);
        if self.port == 0 {
            *slot = None;
            return false;
        }
        let new = self.fresh.is_some();
        if let Some(mut b) = self.fresh {
            b.keyed = self.keyed;
            *slot = Some(b);
        } else if let Some(b) = slot.as_mut() {
            // The same socket: a key left for a peer that is gone or has no password any more
            // would keep refusing that address's unsigned connections.
            for addr in stale_keys(&b.keyed, &self.keyed) {
                use std::os::fd::AsFd;
                match berth_tcp_md5::set_md5_key(b.socket.as_fd(), addr, b"") {
                    Ok(()) => debug!(%addr, "MD5 key removed from the listener"),
                    Err(e) => {
                        warn!(%addr, error = %e, "cannot remove the MD5 key from the listener")
                    }
                }
            }
            b.keyed = self.keyed;
        }
        new
    }
}

fn bind(port: u16) -> Result<Bound, Unapplicable> {
    use std::net::{Ipv4Addr, Ipv6Addr};
    let (socket, dual_stack) = match std::net::TcpListener::bind((Ipv6Addr::UNSPECIFIED, port)) {
        Ok(l) => (l, true),
        // No IPv6 on this host: IPv4 only.
        Err(_) => match std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)) {
            Ok(l) => (l, false),
            Err(e) => {
                let why = match e.kind() {
                    std::io::ErrorKind::AddrInUse => "address in use".to_owned(),
                    std::io::ErrorKind::PermissionDenied => {
                        "permission denied (ports below 1024 need CAP_NET_BIND_SERVICE)".to_owned()
                    }
                    _ => e.to_string(),
                };
                return Err(Unapplicable {
                    field: "global.listen_port".into(),
                    why: format!(
                        "{port} cannot be bound: {why}; choose another port or 0 to only \
                         connect out"
                    ),
                });
            }
        },
    };
    socket.set_nonblocking(true).map_err(|e| Unapplicable {
        field: "global.listen_port".into(),
        why: format!("{port}: {e}"),
    })?;
    Ok(Bound {
        keyed: BTreeSet::new(),
        port,
        socket,
        dual_stack,
    })
}

/// How the speaker runs its sessions.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// The RFC 9687 send-hold time; `None`: 8 minutes or twice the hold time.
    pub send_hold: Option<Duration>,
    /// On shutdown, close every session with a Cease (the peers withdraw our routes) even
    /// where graceful restart would let them keep the routes: for decommissioning.
    pub withdraw_on_shutdown: bool,
    /// The settings were restored from disk: the first sessions set the graceful restart R
    /// bit (RFC 4724).
    pub restarting: bool,
}

/// Readiness, from several sources: `/readyz` is `Ok` when none of them has a problem, and
/// otherwise names every problem.
#[derive(Clone)]
pub struct Health {
    ready: Arc<watch::Sender<Result<(), String>>>,
    problems: Arc<Mutex<BTreeMap<&'static str, String>>>,
}

impl Health {
    /// Ready, with the receiver `/readyz` reads.
    pub fn new() -> (Health, watch::Receiver<Result<(), String>>) {
        let (tx, rx) = watch::channel(Ok(()));
        let health = Health {
            ready: Arc::new(tx),
            problems: Arc::default(),
        };
        (health, rx)
    }

    /// Records `source`'s problem, or that it has none.
    pub fn set(&self, source: &'static str, problem: Option<String>) {
        let mut problems = lock(&self.problems);
        match problem {
            Some(p) => problems.insert(source, p),
            None => problems.remove(source),
        };
        let state = if problems.is_empty() {
            Ok(())
        } else {
            Err(problems
                .iter()
                .map(|(s, p)| format!("{s}: {p}"))
                .collect::<Vec<_>>()
                .join("; "))
        };
        let _ = self.ready.send_replace(state);
    }
}

/// Runs sessions as `settings` says (its `routes` are ignored) until `shutdown` turns true,
/// then closes each (without a NOTIFICATION where graceful restart lets the peer keep our
/// routes, unless `options.withdraw_on_shutdown`); returns within about
/// [`session::LINGER`] of `shutdown` whatever the peers do.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    mut settings: watch::Receiver<Arc<SpeakerConfig>>,
    desired: watch::Receiver<Snapshot>,
    mut shutdown: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    board: StatusBoard,
    listeners: Listeners,
    health: Health,
    options: Options,
) {
    let routing: Routing = Arc::default();
    let mut sessions: BTreeMap<IpAddr, Running> = BTreeMap::new();
    let mut listener: Option<Listening> = None;
    let mut applied: Option<Arc<SpeakerConfig>> = None;
    loop {
        let want = settings.borrow_and_update().clone();
        if applied.as_ref().is_none_or(|a| !Arc::ptr_eq(a, &want)) {
            let global_changed = applied.as_ref().is_none_or(|a| {
                a.asn != want.asn
                    || a.router_id != want.router_id
                    || a.listen_port != want.listen_port
                    || a.graceful_restart != want.graceful_restart
            });
            if global_changed {
                if applied.is_some() {
                    info!("global settings changed: restarting every session");
                }
                stop_all(
                    std::mem::take(&mut sessions).into_values(),
                    StopReason::ConfigChanged,
                )
                .await;
                if let Some(l) = listener.take() {
                    let _ = l.stop.send(true);
                    let _ = l.task.await;
                }
            }
            let local = Local {
                asn: want.asn,
                router_id: want.router_id,
                graceful_restart: want.graceful_restart,
                // Only the sessions of the restored settings: later ones follow a change.
                restarting: options.restarting && applied.is_none(),
                send_hold: options.send_hold,
            };
            let keep: BTreeMap<IpAddr, &PeerConfig> =
                want.peers.iter().map(|p| (p.address, p)).collect();
            let gone: Vec<IpAddr> = sessions
                .iter()
                .filter(|(a, r)| {
                    keep.get(a)
                        .is_none_or(|p| **p != r.peer && !export_only(&r.peer, p))
                })
                .map(|(a, _)| *a)
                .collect();
            let (mut removed, mut changed) = (Vec::new(), Vec::new());
            for a in &gone {
                if let Some(r) = sessions.remove(a) {
                    if keep.contains_key(a) {
                        info!(peer = %a, "peer changed: restarting its session");
                        changed.push(r);
                    } else {
                        info!(peer = %a, "peer removed: closing its session");
                        removed.push(r);
                    }
                }
            }
            // All at once: each ends within the linger time whatever its peer does.
            tokio::join!(
                stop_all(removed, StopReason::Deconfigured),
                stop_all(changed, StopReason::ConfigChanged)
            );
            for a in gone {
                lock(&routing).remove(&a);
                board.remove(a);
            }
            // What is left changed at most in what its paths carry: the session stays up and
            // announces every path again.
            for (a, r) in sessions.iter_mut() {
                let Some(p) = keep.get(a).filter(|p| ***p != r.peer) else {
                    continue;
                };
                info!(peer = %a, "peer's communities or LOCAL_PREF changed: announcing again, session kept");
                r.peer = (*p).clone();
                r.settings.send_replace((*p).clone());
                if let Some(entry) = board.peers().get_mut(a) {
                    entry.0 = (*p).clone();
                }
            }
            // Listen before connecting out: a peer answering our connection with its own must
            // find the port open. What cannot be applied is reported, never fatal.
            let problem = match listeners.prepare(&want).map(Prepared::commit) {
                Err(e) => Some(e),
                Ok(_) if want.listen_port > 0 && listener.is_none() => {
                    match listeners.socket(want.listen_port) {
                        Some(Ok((l, dual_stack))) => {
                            listener =
                                Some(listen(l, dual_stack, want.listen_port, routing.clone()));
                            None
                        }
                        Some(Err(e)) => Some(Unapplicable {
                            field: "global.listen_port".into(),
                            why: format!("{}: {e}", want.listen_port),
                        }),
                        None => None,
                    }
                }
                Ok(_) => None,
            };
            match &problem {
                Some(e) => {
                    error!(error = %e, "settings not fully applied: sessions that need no listener run; send a corrected state");
                    metrics.settings_unapplied.set(1);
                    health.set("settings", Some(e.to_string()));
                }
                None => {
                    metrics.settings_unapplied.set(0);
                    health.set("settings", None);
                }
            }
            for peer in &want.peers {
                if sessions.contains_key(&peer.address) {
                    continue;
                }
                sessions.insert(
                    peer.address,
                    start(&local, peer, &desired, &routing, &board, &metrics),
                );
            }
            applied = Some(want);
        }
        tokio::select! {
            _ = shutdown.changed() => break,
            changed = settings.changed() => if changed.is_err() { break },
        }
    }
    let reason = if options.withdraw_on_shutdown {
        StopReason::Shutdown
    } else {
        StopReason::Restart
    };
    stop_all(sessions.into_values(), reason).await;
    if let Some(l) = listener {
        let _ = l.stop.send(true);
        let _ = l.task.await;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn start(
    local: &Local,
    peer: &PeerConfig,
    desired: &watch::Receiver<Snapshot>,
    routing: &Routing,
    board: &StatusBoard,
    metrics: &Arc<Metrics>,
) -> Running {
    let (tx, rx) = mpsc::channel(4);
    lock(routing).insert(peer.address, tx);
    let (status_tx, status_rx) = watch::channel(Status::idle());
    board
        .peers()
        .insert(peer.address, (peer.clone(), status_rx));
    let _ = board.events.send(SessionEvent {
        peer: peer.address,
        state: Some(State::Idle),
        previous: None,
        last_error: None,
    });
    let status_tx = StatusSender {
        peer: peer.address,
        status: status_tx,
        events: board.events.clone(),
    };
    let (stop_tx, stop_rx) = watch::channel(None);
    let (settings_tx, settings_rx) = watch::channel(peer.clone());
    let span = tracing::info_span!("session", peer = %peer.address, asn = peer.asn);
    let task = tokio::spawn(
        session::run(
            local.clone(),
            settings_rx,
            desired.clone(),
            rx,
            stop_rx,
            status_tx,
            metrics.clone(),
        )
        .instrument(span),
    );
    Running {
        peer: peer.clone(),
        settings: settings_tx,
        stop: stop_tx,
        task,
    }
}

/// Whether `new` differs from `old` only in what the peer's paths carry (communities, large
/// communities, LOCAL_PREF): such an edit needs no new session.
fn export_only(old: &PeerConfig, new: &PeerConfig) -> bool {
    let mut same = new.clone();
    same.communities.clone_from(&old.communities);
    same.large_communities.clone_from(&old.large_communities);
    same.local_pref = old.local_pref;
    same == *old
}

/// Stops sessions for `reason`, all at once, and waits for them (each ends within the
/// linger time, whatever its peer does).
async fn stop_all(running: impl IntoIterator<Item = Running>, reason: StopReason) {
    let running: Vec<Running> = running.into_iter().collect();
    for r in &running {
        let _ = r.stop.send(Some(reason));
    }
    for r in running {
        let _ = r.task.await;
    }
}

fn listen(listener: TcpListener, dual_stack: bool, port: u16, routing: Routing) -> Listening {
    info!(port, dual_stack, "listening for BGP connections");
    let (stop_tx, mut stop) = watch::channel(false);
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, from)) => {
                        let ip = canonical(from.ip());
                        let tx = lock(&routing).get(&ip).cloned();
                        match tx {
                            Some(tx) => { let _ = tx.try_send(stream); }
                            None => warn!(%ip, "refused a BGP connection from an address that is not a configured peer"),
                        }
                    }
                    Err(e) => warn!(error = %e, "accept failed"),
                }
            }
        }
    });
    Listening {
        stop: stop_tx,
        task,
    }
}

/// The keyed addresses of `old` that `new` does not key.
fn stale_keys(old: &BTreeSet<IpAddr>, new: &BTreeSet<IpAddr>) -> Vec<IpAddr> {
    old.difference(new).copied().collect()
}

/// Sets `peer`'s MD5 key on the listener; returns the address keyed (as the listener sees
/// it), or `None` when the peer has no password.
fn md5_on_listener(l: &Bound, peer: &PeerConfig) -> std::io::Result<Option<IpAddr>> {
    use std::os::fd::AsFd;
    let Some(key) = &peer.password else {
        return Ok(None);
    };
    let fd = &l.socket;
    // An IPv4 peer reaches a dual-stack listener as ::ffff:a.b.c.d.
    let addr = match peer.address {
        IpAddr::V4(v4) if l.dual_stack => IpAddr::V6(v4.to_ipv6_mapped()),
        other => other,
    };
    berth_tcp_md5::set_md5_key(fd.as_fd(), addr, key.as_bytes())?;
    Ok(Some(addr))
}

/// An IPv4 peer connecting to an IPv6 socket shows up as ::ffff:a.b.c.d.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_communities_and_local_pref_are_export_only_edits() {
        let peer: PeerConfig =
            serde_json::from_str(r#"{"address": "192.0.2.1", "asn": 64513}"#).unwrap();
        let with = |f: &dyn Fn(&mut PeerConfig)| {
            let mut p = peer.clone();
            f(&mut p);
            p
        };
        assert!(export_only(
            &peer,
            &with(&|p| p.communities = vec!["65000:1".into()])
        ));
        assert!(export_only(
            &peer,
            &with(&|p| p.large_communities = vec![[1, 2, 3]])
        ));
        assert!(export_only(&peer, &with(&|p| p.local_pref = Some(200))));
        assert!(!export_only(&peer, &with(&|p| p.hold_time = 30)));
        assert!(!export_only(
            &peer,
            &with(&|p| {
                p.communities = vec!["65000:1".into()];
                p.password = Some("x".into());
            })
        ));
    }

    #[test]
    fn keys_of_peers_gone_or_without_password_are_stale() {
        let set =
            |a: &[&str]| -> BTreeSet<IpAddr> { a.iter().filter_map(|s| s.parse().ok()).collect() };
        let old = set(&["10.0.0.1", "10.0.0.2", "fd00::1"]);
        let new = set(&["10.0.0.2", "10.0.0.3"]);
        assert_eq!(
            stale_keys(&old, &new),
            set(&["10.0.0.1", "fd00::1"])
                .into_iter()
                .collect::<Vec<_>>()
        );
        assert!(stale_keys(&new, &new).is_empty());
    }
}

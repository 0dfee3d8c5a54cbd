//! The speaker: one session task per peer, an optional listener that hands inbound
//! connections to the right session, and the shared desired state.
//!
//! The settings (global values and peers) arrive on a watch channel, from the standalone file
//! or from the control API; the speaker follows them: a new peer gets a session, a removed one
//! is closed with a Cease, a changed one is restarted, and a change of ASN, router ID, listen
//! port or graceful restart restarts everything. Routes never pass through here: sessions read
//! the desired-state channel themselves.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{Instrument, info, warn};

use crate::config::{PeerConfig, SpeakerConfig};
use crate::metrics::Metrics;
use crate::rib::Snapshot;
use crate::session::{self, Local, Status};

/// Each peer's live status, by address, for the control API.
pub type StatusBoard = Arc<Mutex<BTreeMap<IpAddr, (PeerConfig, watch::Receiver<Status>)>>>;

/// Where inbound connections go, by peer address.
type Routing = Arc<Mutex<BTreeMap<IpAddr, mpsc::Sender<tokio::net::TcpStream>>>>;

struct Running {
    peer: PeerConfig,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

struct Listening {
    /// Bound to `::` (IPv4 peers appear as ::ffff:a.b.c.d).
    dual_stack: bool,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    fd: Option<std::os::fd::OwnedFd>,
}

/// Runs sessions as `settings` says (its `routes` are ignored) until `shutdown` turns true,
/// then closes each with a Cease.
pub async fn run(
    mut settings: watch::Receiver<Arc<SpeakerConfig>>,
    desired: watch::Receiver<Snapshot>,
    mut shutdown: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    board: StatusBoard,
) -> std::io::Result<()> {
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
                for (_, r) in std::mem::take(&mut sessions) {
                    stop(r).await;
                }
                if let Some(l) = listener.take() {
                    let _ = l.stop.send(true);
                    let _ = l.task.await;
                }
            }
            let local = Local {
                asn: want.asn,
                router_id: want.router_id,
                graceful_restart: want.graceful_restart,
                restarting: false,
            };
            let keep: BTreeMap<IpAddr, &PeerConfig> =
                want.peers.iter().map(|p| (p.address, p)).collect();
            let gone: Vec<IpAddr> = sessions
                .iter()
                .filter(|(a, r)| keep.get(a).is_none_or(|p| **p != r.peer))
                .map(|(a, _)| *a)
                .collect();
            for a in gone {
                if let Some(r) = sessions.remove(&a) {
                    info!(peer = %a, "peer removed or changed: closing its session");
                    stop(r).await;
                }
                lock(&routing).remove(&a);
                lock(&board).remove(&a);
            }
            // Listen before connecting out: a peer answering our connection with its own must
            // find the port open.
            if want.listen_port > 0 && listener.is_none() {
                listener = Some(listen(want.listen_port, routing.clone()).await?);
            }
            if let Some(l) = &listener {
                for peer in want.peers.iter().filter(|p| p.password.is_some()) {
                    md5_on_listener(l, peer)?;
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
    for (_, r) in sessions {
        stop(r).await;
    }
    if let Some(l) = listener {
        let _ = l.stop.send(true);
        let _ = l.task.await;
    }
    Ok(())
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
    lock(board).insert(peer.address, (peer.clone(), status_rx));
    let (stop_tx, stop_rx) = watch::channel(false);
    let span = tracing::info_span!("session", peer = %peer.address, asn = peer.asn);
    let task = tokio::spawn(
        session::run(
            local.clone(),
            peer.clone(),
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
        stop: stop_tx,
        task,
    }
}

/// Closes a session with a Cease and waits for it to finish.
async fn stop(r: Running) {
    let _ = r.stop.send(true);
    let _ = r.task.await;
}

async fn listen(port: u16, routing: Routing) -> std::io::Result<Listening> {
    let listener = match TcpListener::bind(SocketAddr::new(
        IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        port,
    ))
    .await
    {
        Ok(l) => l,
        Err(_) => {
            TcpListener::bind(SocketAddr::new(
                IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                port,
            ))
            .await?
        }
    };
    info!(port, "listening for BGP connections");
    let dual_stack = listener.local_addr().is_ok_and(|a| a.is_ipv6());
    // A duplicate of the socket, so MD5 keys can be added for peers configured later.
    let fd = {
        use std::os::fd::AsFd;
        listener.as_fd().try_clone_to_owned().ok()
    };
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
    Ok(Listening {
        dual_stack,
        stop: stop_tx,
        task,
        fd,
    })
}

fn md5_on_listener(l: &Listening, peer: &PeerConfig) -> std::io::Result<()> {
    use std::os::fd::AsFd;
    let (Some(fd), Some(key)) = (&l.fd, &peer.password) else {
        return Ok(());
    };
    // An IPv4 peer reaches a dual-stack listener as ::ffff:a.b.c.d.
    let addr = match peer.address {
        IpAddr::V4(v4) if l.dual_stack => IpAddr::V6(v4.to_ipv6_mapped()),
        other => other,
    };
    berth_tcp_md5::set_md5_key(fd.as_fd(), addr, key.as_bytes())
}

/// An IPv4 peer connecting to an IPv6 socket shows up as ::ffff:a.b.c.d.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

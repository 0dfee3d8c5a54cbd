//! The speaker: one session task per peer, an optional listener that hands inbound
//! connections to the right session, and the shared desired state.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{Instrument, info, warn};

use crate::config::SpeakerConfig;
use crate::metrics::Metrics;
use crate::rib::Desired;
use crate::session::{self, Local, Status};

/// Runs the configured sessions until `shutdown` turns true, then closes each with a Cease.
pub async fn run(
    cfg: SpeakerConfig,
    desired: watch::Receiver<Arc<Desired>>,
    shutdown: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
) -> std::io::Result<()> {
    let local = Local {
        asn: cfg.asn,
        router_id: cfg.router_id,
        graceful_restart: cfg.graceful_restart,
        restarting: false,
    };
    let mut inbound: BTreeMap<IpAddr, mpsc::Sender<tokio::net::TcpStream>> = BTreeMap::new();
    let mut tasks = JoinSet::new();
    for peer in cfg.peers.clone() {
        let (tx, rx) = mpsc::channel(4);
        inbound.insert(peer.address, tx);
        let (status_tx, _) = watch::channel(Status {
            state: crate::fsm::State::Idle,
            add_path: [false; 2],
            paths: 0,
            last_error: None,
        });
        let span = tracing::info_span!("session", peer = %peer.address, asn = peer.asn);
        tasks.spawn(
            session::run(
                local.clone(),
                peer,
                desired.clone(),
                rx,
                shutdown.clone(),
                status_tx,
                metrics.clone(),
            )
            .instrument(span),
        );
    }
    if cfg.listen_port > 0 {
        let listener = TcpListener::bind(SocketAddr::new(
            IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
            cfg.listen_port,
        ))
        .await
        .or(TcpListener::bind(SocketAddr::new(
            IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            cfg.listen_port,
        ))
        .await)?;
        info!(port = cfg.listen_port, "listening for BGP connections");
        for peer in &cfg.peers {
            if let Some(key) = &peer.password {
                use std::os::fd::AsFd;
                // An IPv4 peer reaches a dual-stack listener as ::ffff:a.b.c.d.
                let addr = match peer.address {
                    IpAddr::V4(v4) if listener.local_addr().is_ok_and(|a| a.is_ipv6()) => {
                        IpAddr::V6(v4.to_ipv6_mapped())
                    }
                    other => other,
                };
                berth_tcp_md5::set_md5_key(listener.as_fd(), addr, key.as_bytes())?;
            }
        }
        let mut stop = shutdown.clone();
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.changed() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, from)) => {
                            let ip = canonical(from.ip());
                            match inbound.get(&ip) {
                                Some(tx) => { let _ = tx.try_send(stream); }
                                None => warn!(%ip, "refused a BGP connection from an address that is not a configured peer"),
                            }
                        }
                        Err(e) => warn!(error = %e, "accept failed"),
                    }
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// An IPv4 peer connecting to an IPv6 socket shows up as ::ffff:a.b.c.d.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

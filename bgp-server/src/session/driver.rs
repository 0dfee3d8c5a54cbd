//! The FSM driver: feeds the [`Fsm`] events from the connection, the timers and the peer's
//! messages, and carries out the actions it returns (connect, queue a message, start a timer,
//! set up or tear down the session). It never waits: messages go on the writer's queue.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use berth_bgp_wire::{Capability, DecodeError, Family, Message, RouteRefresh};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::sync::ribs;
use super::writer::{Writer, send_hold_time};
use super::{FAMILIES, Session};
use crate::fsm::{Action, Event, Fsm, PeerOpen, Timer};

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

impl Session {
    pub(super) fn attach(&mut self, stream: TcpStream, outbound: bool) {
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
    pub(super) fn graceful_restart_negotiated(&self) -> bool {
        self.local.graceful_restart.enabled
            && self.peer_open.as_ref().is_some_and(|o| {
                o.capabilities
                    .iter()
                    .any(|c| matches!(c, Capability::GracefulRestart { .. }))
            })
    }

    /// Whether both sides set the N bit in graceful restart (RFC 8538): a NOTIFICATION then
    /// keeps our routes at the peer, and only a Hard Reset withdraws them.
    pub(super) fn graceful_notification_negotiated(&self) -> bool {
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
    pub(super) async fn finish(&mut self) {
        for h in std::mem::take(&mut self.io.closing) {
            let _ = h.await;
        }
    }

    pub(super) fn ttl(&self) -> Option<u32> {
        let ebgp = self.local.asn != self.peer.asn;
        match (ebgp, self.peer.ebgp_multihop) {
            (true, Some(t)) => Some(u32::from(t)),
            (true, None) => Some(1),
            (false, _) => None,
        }
    }

    /// Feeds one event and carries out the actions. Never waits: writes only queue bytes.
    pub(super) fn apply(&mut self, fsm: &mut Fsm, event: Event) {
        debug!(state = ?fsm.state(), event = ?event, "fsm");
        for action in fsm.handle(event) {
            self.act(action);
        }
    }

    pub(super) fn act(&mut self, action: Action) {
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

    pub(super) fn drain_messages(&mut self, fsm: &mut Fsm) {
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
                                // Resend that family; the loop syncs it.
                                Some(i) if self.established => self.resend(i),
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
    pub(super) fn send(&mut self, msg: &Message) -> bool {
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

pub(super) async fn connect(
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
pub(super) fn set_hop_limit(socket: socket2::SockRef<'_>, ttl: u32) -> std::io::Result<()> {
    match socket.domain()? {
        d if d == socket2::Domain::IPV6 => socket.set_unicast_hops_v6(ttl),
        _ => socket.set_ttl_v4(ttl),
    }
}

pub(super) fn kind(msg: &Message) -> &'static str {
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

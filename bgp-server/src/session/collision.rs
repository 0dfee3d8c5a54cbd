//! Connection collisions (RFC 4271 §6.8), in one place: a connection the peer opens is parked
//! here, its OPEN read as it arrives (so its BGP identifier can settle a collision while ours
//! is still in OpenSent), and [`crate::fsm::on_inbound`] says whether to wait, refuse it, adopt
//! it, or drop ours for it.

use berth_bgp_wire::{DecodeContext, EncodeContext, Message};
use tokio::net::TcpStream;
use tracing::{debug, info};

use super::Session;
use crate::fsm::{self, Event, Fsm, Inbound, State};

/// A connection the peer opened, waiting for collision detection.
#[derive(Default)]
pub(super) struct Parked {
    /// The connection.
    pub(super) stream: Option<TcpStream>,
    /// What was read from it so far (its OPEN, while ours is in OpenSent).
    pub(super) buf: Vec<u8>,
    /// The BGP identifier in its OPEN, once read.
    pub(super) id: Option<std::net::Ipv4Addr>,
}

impl Parked {
    /// Parks a new inbound connection; a newer one replaces one still waiting.
    pub(super) fn park(&mut self, stream: TcpStream) {
        // Judged at the top of the session's loop, now and after every later event.
        if self.stream.replace(stream).is_some() {
            debug!("a newer inbound connection replaces one still waiting");
        }
        self.buf.clear();
        self.id = None;
    }

    /// Resolves when the parked connection has data and its OPEN is still to be read; never
    /// otherwise.
    pub(super) async fn readable(&self) {
        match self.stream.as_ref() {
            Some(p) if self.id.is_none() => {
                let _ = p.readable().await;
            }
            _ => std::future::pending().await,
        }
    }
}

impl Session {
    /// Reads what the parked inbound connection has sent, up to its OPEN; a connection that
    /// closes or sends anything else is dropped.
    pub(super) fn read_pending(&mut self) {
        let Some(stream) = self.io.parked.stream.as_ref() else {
            return;
        };
        let mut chunk = [0u8; 4096];
        let outcome = match stream.try_read(&mut chunk) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Ok(0) | Err(_) => None,
            Ok(n) => {
                self.io
                    .parked
                    .buf
                    .extend_from_slice(chunk.get(..n).unwrap_or_default());
                match Message::decode(&self.io.parked.buf, &DecodeContext::default()) {
                    Ok(None) if self.io.parked.buf.len() < 4096 => return,
                    Ok(Some((Message::Open(o), _))) => Some(o.router_id),
                    _ => None,
                }
            }
        };
        match outcome {
            Some(id) => {
                debug!(router_id = %id, "the parked inbound connection's OPEN arrived");
                self.io.parked.id = Some(id);
            }
            None => {
                debug!("the parked inbound connection closed or sent no OPEN: dropped");
                self.io.parked.stream = None;
                self.io.parked.buf.clear();
            }
        }
    }

    /// Connection collision detection (RFC 4271 §6.8) for a connection the peer opened.
    pub(super) fn settle_inbound(&mut self, fsm: &mut Fsm) {
        let Some(stream) = self.io.parked.stream.take() else {
            return;
        };
        let remote = self
            .peer_open
            .as_ref()
            .map(|o| o.router_id)
            .or(self.io.parked.id);
        let local = (self.local.router_id, self.local.asn);
        match fsm::on_inbound(fsm.state(), local, remote, self.peer.asn, self.io.outbound) {
            Inbound::Wait => self.io.parked.stream = Some(stream),
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
        if self.io.parked.stream.is_none() {
            self.io.parked.buf.clear();
            self.io.parked.id = None;
        }
    }

    /// Feeds what was read from an adopted parked connection (its OPEN) to the session.
    pub(super) fn resume_pending(&mut self, fsm: &mut Fsm) {
        self.io.parked.id = None;
        if !self.io.parked.buf.is_empty() {
            self.io.buf = std::mem::take(&mut self.io.parked.buf);
            self.drain_messages(fsm);
        }
    }
}

/// Closes a connection we will not use with a Cease.
fn refuse(stream: &TcpStream, n: fsm::Notification) {
    let n = Message::Notification(n);
    // Best effort on a fresh socket: a NOTIFICATION fits its send buffer.
    let _ = stream.try_write(&n.to_bytes(&EncodeContext::default()));
}

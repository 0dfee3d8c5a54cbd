//! The BGP session state machine of RFC 4271 §8, as pure logic.
//!
//! [`Fsm::handle`] takes one [`Event`] (named as in RFC 4271 §8.1) and returns the
//! [`Action`]s the I/O layer must carry out, in order. The FSM never touches a socket, a clock
//! or a task: timers are actions ([`Action::StartTimer`]) and their expiry is an event.
//!
//! Choices where the RFC leaves room:
//! - after an error the session waits in Idle for an idle-hold time that doubles with each
//!   consecutive failure (capped), then starts again by itself; a session that reaches
//!   Established resets the back-off. A manual stop stays stopped.
//! - a failed connection attempt (refused, unreachable, closed before the OPENs) waits a
//!   ConnectRetry time that doubles with each consecutive failure, up to
//!   [`Config::connect_retry_max`]; Established and a manual start reset it. The I/O layer
//!   adds the RFC 4271 §10 jitter to the timers it arms.
//! - no DelayOpen: an OPEN is sent as soon as the TCP connection is up.
//! - a timer event for a timer that is not running (a late expiry after a stop) is ignored.

use std::net::Ipv4Addr;

/// RFC 4271 session states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Not connecting; waiting for a start (or for the idle-hold time after an error).
    Idle,
    /// Opening a TCP connection.
    Connect,
    /// Waiting for the peer to connect, or for the retry time.
    Active,
    /// OPEN sent, waiting for the peer's.
    OpenSent,
    /// OPENs exchanged, waiting for a KEEPALIVE.
    OpenConfirm,
    /// Up.
    Established,
}

/// The FSM's timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Timer {
    /// Time between connection attempts.
    ConnectRetry,
    /// Time without a message from the peer before the session is declared dead.
    Hold,
    /// Time between our KEEPALIVEs.
    Keepalive,
    /// Back-off in Idle after an error, before starting again.
    IdleHold,
}

/// A NOTIFICATION to send or that was received: the codec's own type.
pub use berth_bgp_wire::Notification;

/// Finite State Machine Error (5) with the RFC 6608 subcode for `state`.
pub fn fsm_error(state: State) -> Notification {
    let subcode = match state {
        State::OpenSent => 1,
        State::OpenConfirm => 2,
        State::Established => 3,
        _ => 0,
    };
    Notification::bare(5, subcode)
}

/// What the FSM needs from a received OPEN (the codec has already checked its syntax).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerOpen {
    /// The peer's ASN (the 4-octet capability's value when present).
    pub asn: u32,
    /// The hold time it proposes.
    pub hold_time: u16,
    /// Its BGP identifier.
    pub router_id: Ipv4Addr,
}

/// Inputs, named after RFC 4271 §8.1.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Event {
    /// Event 1: the operator configured the peer.
    ManualStart,
    /// Event 2: the operator stopped the session (Cease, Administrative Shutdown).
    ManualStop,
    /// Event 2 with the reason, which decides the Cease subcode (RFC 4486) or none.
    Stop(StopReason),
    /// Event 3: restart after an idle hold.
    AutomaticStart,
    /// Event 9.
    ConnectRetryTimerExpires,
    /// Event 10.
    HoldTimerExpires,
    /// Event 11.
    KeepaliveTimerExpires,
    /// Event 13.
    IdleHoldTimerExpires,
    /// Event 16: our outgoing connection is up.
    TcpCrAcked,
    /// Event 17: an incoming connection from the peer was accepted.
    TcpConnectionConfirmed,
    /// Event 18: the connection failed or closed.
    TcpConnectionFails,
    /// Event 19: a well-formed OPEN arrived.
    BgpOpen(PeerOpen),
    /// Event 21: a message header was bad; the notification says why.
    BgpHeaderErr(Notification),
    /// Event 22: an OPEN was bad; the notification says why.
    BgpOpenMsgErr(Notification),
    /// Event 23: collision detection chose to close this connection.
    OpenCollisionDump,
    /// Event 24: the peer sent a NOTIFICATION with a version error.
    NotifMsgVerErr,
    /// Event 25: the peer sent a NOTIFICATION.
    NotifMsg(Notification),
    /// Event 26.
    KeepAliveMsg,
    /// Event 27.
    UpdateMsg,
    /// Event 28: an UPDATE error that requires a session reset (RFC 7606 leaves few).
    UpdateMsgErr(Notification),
    /// RFC 9687: the peer took no data for the send-hold time while some was waiting.
    SendHoldTimerExpires,
}

/// Why the operator stops a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StopReason {
    /// The speaker shuts down and withdraws: Cease, Administrative Shutdown (6/2).
    Shutdown,
    /// The peer was removed from the settings: Cease, Peer De-configured (6/3).
    Deconfigured,
    /// The session restarts with other settings: Cease, Other Configuration Change (6/6).
    ConfigChanged,
    /// A planned restart with graceful restart negotiated: close without a NOTIFICATION, so
    /// the peer keeps our routes until we are back (RFC 4724 §4); with the N bit negotiated
    /// (RFC 8538), with a Cease (6/2) that the peer answers the same way.
    Restart,
}

impl StopReason {
    /// The NOTIFICATION this stop sends, if any.
    pub fn notification(self) -> Option<Notification> {
        self.notification_with(false)
    }

    /// The NOTIFICATION this stop sends when the N bit of graceful restart is (or is not)
    /// negotiated (RFC 8538): then a restart says so with a Cease the peer keeps our routes
    /// through, and every stop meant to withdraw wraps its Cease in a Hard Reset (6/9).
    pub fn notification_with(self, n_bit: bool) -> Option<Notification> {
        let cease = match self {
            StopReason::Shutdown => Notification::admin_shutdown(),
            StopReason::Deconfigured => Notification::bare(6, 3),
            StopReason::ConfigChanged => Notification::bare(6, 6),
            StopReason::Restart if n_bit => return Some(Notification::admin_shutdown()),
            StopReason::Restart => return None,
        };
        Some(if n_bit {
            Notification::hard_reset(&cease)
        } else {
            cease
        })
    }
}

/// Why a session went down, for status and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DownReason {
    /// Stopped by configuration.
    Stopped,
    /// The peer's hold timer ran out.
    HoldTimerExpired,
    /// The peer took no data for the send-hold time (RFC 9687).
    SendHoldTimerExpired,
    /// The TCP connection failed.
    ConnectionFailed,
    /// We sent a NOTIFICATION.
    NotificationSent(Notification),
    /// The peer sent a NOTIFICATION.
    NotificationReceived(Notification),
}

/// Outputs, in the order they must be carried out.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Action {
    /// Open a TCP connection to the peer.
    Connect,
    /// Close the TCP connection (if any).
    Disconnect,
    /// Send our OPEN.
    SendOpen,
    /// Send a KEEPALIVE.
    SendKeepalive,
    /// Send a NOTIFICATION (before the Disconnect that follows).
    SendNotification(Notification),
    /// (Re)start a timer for this many seconds.
    StartTimer(Timer, u32),
    /// Stop a timer.
    StopTimer(Timer),
    /// The session is up with these negotiated timers: send the table and End-of-RIB.
    Established {
        /// Negotiated hold time (0: none).
        hold_time: u16,
        /// Keepalive interval in use (0: none).
        keepalive: u16,
    },
    /// The session left Established: forget what was sent to the peer.
    Down(DownReason),
}

/// Per-peer settings the FSM needs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Config {
    /// Our ASN.
    pub local_asn: u32,
    /// Our BGP identifier.
    pub router_id: Ipv4Addr,
    /// The ASN the peer must announce.
    pub peer_asn: u32,
    /// Hold time we propose: 0 or >= 3.
    pub hold_time: u16,
    /// Keepalive interval; `None`: a third of the negotiated hold time.
    pub keepalive: Option<u16>,
    /// Seconds between connection attempts.
    pub connect_retry: u32,
    /// Longest ConnectRetry time after consecutive connection failures, in seconds (never
    /// below `connect_retry`).
    pub connect_retry_max: u32,
    /// Wait for the peer to connect; never connect out.
    pub passive: bool,
    /// First idle-hold after an error, in seconds.
    pub idle_hold_base: u32,
    /// Longest idle-hold, in seconds.
    pub idle_hold_max: u32,
}

impl Config {
    /// Defaults for a peer: hold 90 s, retry 30 s, idle-hold 1 s doubling up to 120 s.
    pub fn new(local_asn: u32, router_id: Ipv4Addr, peer_asn: u32) -> Self {
        Config {
            local_asn,
            router_id,
            peer_asn,
            hold_time: 90,
            keepalive: None,
            connect_retry: 30,
            connect_retry_max: 120,
            passive: false,
            idle_hold_base: 1,
            idle_hold_max: 120,
        }
    }
}

/// RFC 4271 suggests a "large value" for the hold timer while waiting for the peer's OPEN.
const OPEN_HOLD_TIME: u32 = 240;

/// One BGP session's state machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fsm {
    cfg: Config,
    state: State,
    /// Consecutive failures since the last Established: drives the idle-hold back-off.
    failures: u32,
    /// Consecutive failed connection attempts since the last Established or manual start:
    /// drives the ConnectRetry back-off.
    connect_failures: u32,
    /// Whether the last stop was manual (then no automatic restart).
    stopped: bool,
    running: [bool; 4],
    negotiated: Option<(u16, u16)>,
    /// The N bit of graceful restart is negotiated (RFC 8538): stops say so.
    graceful_notification: bool,
}

fn timer_index(t: Timer) -> usize {
    match t {
        Timer::ConnectRetry => 0,
        Timer::Hold => 1,
        Timer::Keepalive => 2,
        Timer::IdleHold => 3,
    }
}

impl Fsm {
    /// A session in Idle, not started.
    pub fn new(cfg: Config) -> Self {
        Fsm {
            cfg,
            state: State::Idle,
            failures: 0,
            connect_failures: 0,
            stopped: true,
            running: [false; 4],
            negotiated: None,
            graceful_notification: false,
        }
    }

    /// Whether the session negotiated the N bit of graceful restart (RFC 8538), which decides
    /// the NOTIFICATION a stop sends; the I/O layer knows it from the OPENs.
    pub fn set_graceful_notification(&mut self, on: bool) {
        self.graceful_notification = on;
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Negotiated (hold time, keepalive) while Established or OpenConfirm.
    pub fn negotiated(&self) -> Option<(u16, u16)> {
        self.negotiated
    }

    /// Whether a timer is running, as far as the FSM knows.
    pub fn timer_running(&self, t: Timer) -> bool {
        self.running[timer_index(t)]
    }

    /// Feeds one event; returns what to do.
    pub fn handle(&mut self, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        // A late expiry of a timer we stopped must not act.
        let stale = match &event {
            Event::ConnectRetryTimerExpires => !self.timer_running(Timer::ConnectRetry),
            Event::HoldTimerExpires => !self.timer_running(Timer::Hold),
            Event::KeepaliveTimerExpires => !self.timer_running(Timer::Keepalive),
            Event::IdleHoldTimerExpires => !self.timer_running(Timer::IdleHold),
            _ => false,
        };
        if stale {
            return out;
        }
        if let Some(t) = expired_timer(&event) {
            self.running[timer_index(t)] = false;
        }
        use Event as E;
        use State as S;
        match (self.state, event) {
            // ---- Idle ----
            (S::Idle, E::ManualStart) => {
                self.stopped = false;
                self.failures = 0;
                self.connect_failures = 0;
                self.start(&mut out);
            }
            (S::Idle, E::AutomaticStart | E::IdleHoldTimerExpires) if !self.stopped => {
                self.start(&mut out)
            }
            // Idle refuses connections (RFC 4271 §8.2.2).
            (S::Idle, E::TcpConnectionConfirmed | E::TcpCrAcked) => out.push(Action::Disconnect),
            (S::Idle, _) => {}
            // Starting a session that is already starting or up changes nothing.
            (_, E::ManualStart | E::AutomaticStart) => {}

            // ---- any state: stop ----
            (S::Connect | S::Active, E::ManualStop | E::Stop(_)) => {
                self.stop(&mut out, None, DownReason::Stopped)
            }
            (S::OpenSent | S::OpenConfirm | S::Established, E::ManualStop) => self.stop(
                &mut out,
                Some(Notification::admin_shutdown()),
                DownReason::Stopped,
            ),
            (S::OpenSent | S::OpenConfirm | S::Established, E::Stop(reason)) => {
                let n = reason.notification_with(self.graceful_notification);
                self.stop(&mut out, n, DownReason::Stopped)
            }

            // ---- Connect and Active ----
            (S::Connect | S::Active, E::ConnectRetryTimerExpires) => {
                self.start_timer(&mut out, Timer::ConnectRetry, self.connect_retry());
                if self.cfg.passive {
                    self.state = S::Active;
                } else {
                    out.push(Action::Disconnect);
                    out.push(Action::Connect);
                    self.state = S::Connect;
                }
            }
            (S::Connect | S::Active, E::TcpCrAcked | E::TcpConnectionConfirmed) => {
                self.stop_timer(&mut out, Timer::ConnectRetry);
                out.push(Action::SendOpen);
                self.start_timer(&mut out, Timer::Hold, OPEN_HOLD_TIME);
                self.state = S::OpenSent;
            }
            (S::Connect | S::Active, E::TcpConnectionFails) => {
                self.connect_failures = self.connect_failures.saturating_add(1);
                self.start_timer(&mut out, Timer::ConnectRetry, self.connect_retry());
                self.state = S::Active;
            }
            // No connection to be stuck on: a late report of a closed one.
            (S::Connect | S::Active, E::SendHoldTimerExpires) => {}
            (S::Connect | S::Active, _) => self.fail(&mut out, None, DownReason::ConnectionFailed),

            // ---- OpenSent ----
            (S::OpenSent, E::BgpOpen(open)) => match self.check_open(&open) {
                Err(n) => self.fail(&mut out, Some(n.clone()), DownReason::NotificationSent(n)),
                Ok((hold, keepalive)) => {
                    self.stop_timer(&mut out, Timer::ConnectRetry);
                    out.push(Action::SendKeepalive);
                    self.negotiated = Some((hold, keepalive));
                    if hold > 0 {
                        self.start_timer(&mut out, Timer::Keepalive, u32::from(keepalive));
                        self.start_timer(&mut out, Timer::Hold, u32::from(hold));
                    } else {
                        self.stop_timer(&mut out, Timer::Hold);
                    }
                    self.state = S::OpenConfirm;
                }
            },
            (S::OpenSent, E::TcpConnectionFails) => {
                out.push(Action::Disconnect);
                self.stop_timer(&mut out, Timer::Hold);
                self.connect_failures = self.connect_failures.saturating_add(1);
                self.start_timer(&mut out, Timer::ConnectRetry, self.connect_retry());
                self.state = S::Active;
            }

            // ---- OpenConfirm ----
            (S::OpenConfirm, E::KeepAliveMsg) => {
                self.restart_hold(&mut out);
                self.failures = 0;
                self.connect_failures = 0;
                let (hold_time, keepalive) = self.negotiated.unwrap_or((0, 0));
                out.push(Action::Established {
                    hold_time,
                    keepalive,
                });
                self.state = S::Established;
            }

            // ---- OpenConfirm and Established ----
            (S::OpenConfirm | S::Established, E::KeepaliveTimerExpires) => {
                out.push(Action::SendKeepalive);
                let keepalive = self.negotiated.map_or(0, |(_, k)| k);
                if keepalive > 0 {
                    self.start_timer(&mut out, Timer::Keepalive, u32::from(keepalive));
                }
            }
            (S::Established, E::KeepAliveMsg | E::UpdateMsg) => self.restart_hold(&mut out),

            // ---- errors common to OpenSent, OpenConfirm, Established ----
            // RFC 9687 §4: Send Hold Timer Expired (8), sent best effort, then close.
            (_, E::SendHoldTimerExpires) => {
                let n = Notification::bare(8, 0);
                self.fail(&mut out, Some(n), DownReason::SendHoldTimerExpired);
            }
            (_, E::HoldTimerExpires) => {
                let n = Notification::hold_timer_expired();
                self.fail(&mut out, Some(n), DownReason::HoldTimerExpired);
            }
            (_, E::BgpHeaderErr(n) | E::BgpOpenMsgErr(n) | E::UpdateMsgErr(n)) => {
                self.fail(&mut out, Some(n.clone()), DownReason::NotificationSent(n))
            }
            (_, E::OpenCollisionDump) => {
                let n = Notification::collision();
                self.fail(&mut out, Some(n.clone()), DownReason::NotificationSent(n));
            }
            (_, E::NotifMsgVerErr) => {
                let n = Notification::bare(2, 1);
                self.fail(&mut out, None, DownReason::NotificationReceived(n));
            }
            (_, E::NotifMsg(n)) => self.fail(&mut out, None, DownReason::NotificationReceived(n)),
            (_, E::TcpConnectionFails) => self.fail(&mut out, None, DownReason::ConnectionFailed),
            // Anything else is out of order for this state (RFC 6608 names which).
            (state, _) => {
                let n = fsm_error(state);
                self.fail(&mut out, Some(n.clone()), DownReason::NotificationSent(n));
            }
        }
        out
    }

    /// The ConnectRetry time: `connect_retry`, doubled per consecutive connection failure,
    /// capped at `connect_retry_max`.
    fn connect_retry(&self) -> u32 {
        let base = self.cfg.connect_retry.max(1);
        let shift = self.connect_failures.saturating_sub(1).min(16);
        base.saturating_mul(1u32 << shift)
            .min(self.cfg.connect_retry_max.max(base))
    }

    fn start(&mut self, out: &mut Vec<Action>) {
        self.stop_timer(out, Timer::IdleHold);
        self.start_timer(out, Timer::ConnectRetry, self.connect_retry());
        if self.cfg.passive {
            self.state = State::Active;
        } else {
            out.push(Action::Connect);
            self.state = State::Connect;
        }
    }

    /// Validates the peer's OPEN against our configuration; returns (hold, keepalive).
    fn check_open(&self, open: &PeerOpen) -> Result<(u16, u16), Notification> {
        if open.asn != self.cfg.peer_asn {
            // Bad Peer AS; the data is the AS we expected, as FRR and BIRD send it.
            let mut n = Notification::bare(2, 2);
            if let Ok(asn) = u16::try_from(self.cfg.peer_asn) {
                n.data = asn.to_be_bytes().to_vec();
            }
            return Err(n);
        }
        if open.router_id.is_unspecified()
            || (open.router_id == self.cfg.router_id && self.cfg.local_asn == self.cfg.peer_asn)
        {
            // RFC 6286: identifiers must differ within an AS.
            return Err(Notification::bare(2, 3));
        }
        if open.hold_time == 1 || open.hold_time == 2 {
            return Err(Notification::bare(2, 6));
        }
        let hold = self.cfg.hold_time.min(open.hold_time);
        let keepalive = match (hold, self.cfg.keepalive) {
            (0, _) => 0,
            (h, Some(k)) if k > 0 && k < h => k,
            (h, _) => (h / 3).max(1),
        };
        Ok((hold, keepalive))
    }

    fn restart_hold(&mut self, out: &mut Vec<Action>) {
        if let Some((hold, _)) = self.negotiated
            && hold > 0
        {
            self.start_timer(out, Timer::Hold, u32::from(hold));
        }
    }

    /// Manual stop: tell the peer (when a session exists), close, stay in Idle.
    fn stop(&mut self, out: &mut Vec<Action>, notify: Option<Notification>, reason: DownReason) {
        self.teardown(out, notify, reason);
        self.stopped = true;
    }

    /// An error: tell the peer (when there is something to say), close, and wait an idle-hold
    /// that doubles with each consecutive failure before starting again.
    fn fail(&mut self, out: &mut Vec<Action>, notify: Option<Notification>, reason: DownReason) {
        self.teardown(out, notify, reason);
        let shift = self.failures.min(16);
        let hold = self
            .cfg
            .idle_hold_base
            .saturating_mul(1u32 << shift)
            .min(self.cfg.idle_hold_max)
            .max(1);
        self.failures = self.failures.saturating_add(1);
        self.start_timer(out, Timer::IdleHold, hold);
    }

    fn teardown(
        &mut self,
        out: &mut Vec<Action>,
        notify: Option<Notification>,
        reason: DownReason,
    ) {
        if let Some(n) = notify {
            out.push(Action::SendNotification(n));
        }
        out.push(Action::Disconnect);
        for t in [
            Timer::ConnectRetry,
            Timer::Hold,
            Timer::Keepalive,
            Timer::IdleHold,
        ] {
            self.stop_timer(out, t);
        }
        if self.state == State::Established {
            out.push(Action::Down(reason));
        }
        self.negotiated = None;
        self.state = State::Idle;
    }

    fn start_timer(&mut self, out: &mut Vec<Action>, t: Timer, secs: u32) {
        self.running[timer_index(t)] = true;
        out.push(Action::StartTimer(t, secs));
    }

    fn stop_timer(&mut self, out: &mut Vec<Action>, t: Timer) {
        if std::mem::replace(&mut self.running[timer_index(t)], false) {
            out.push(Action::StopTimer(t));
        }
    }
}

fn expired_timer(e: &Event) -> Option<Timer> {
    match e {
        Event::ConnectRetryTimerExpires => Some(Timer::ConnectRetry),
        Event::HoldTimerExpires => Some(Timer::Hold),
        Event::KeepaliveTimerExpires => Some(Timer::Keepalive),
        Event::IdleHoldTimerExpires => Some(Timer::IdleHold),
        _ => None,
    }
}

/// Which of two simultaneous connections to keep (RFC 4271 §6.8): the one opened by the
/// speaker with the higher BGP identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Keep the connection we opened.
    Outbound,
    /// Keep the connection the peer opened.
    Inbound,
}

/// What to do with a connection the peer opened while this session may already have one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inbound {
    /// No connection is up: use this one (an outbound attempt under way is abandoned).
    Adopt,
    /// Ours is in OpenSent and the peer's identifier is not known yet (from its OPEN on
    /// either connection): keep both until it is.
    Wait,
    /// Close the new connection with a Cease (collision): ours wins, we are Idle, or the
    /// session is Established (RFC 4271 §6.8).
    Refuse,
    /// Dump ours with a Cease (collision) and continue on the new one.
    Replace,
}

/// Connection collision detection (RFC 4271 §6.8), given the session's state, both BGP
/// identifiers (the peer's once its OPEN arrived), both ASNs (for the RFC 6286 tie-break) and
/// whether the current connection is ours.
pub fn on_inbound(
    state: State,
    local: (Ipv4Addr, u32),
    remote_id: Option<Ipv4Addr>,
    remote_asn: u32,
    current_is_outbound: bool,
) -> Inbound {
    match state {
        State::Idle | State::Established => Inbound::Refuse,
        State::Connect | State::Active => Inbound::Adopt,
        // The identifier from the new connection's OPEN settles it before ours gets one
        // (RFC 4271 §6.8 allows examining OpenSent when the identifier is known).
        State::OpenSent => match remote_id {
            Some(remote) if current_is_outbound => {
                match resolve_collision(local, (remote, remote_asn)) {
                    Keep::Outbound => Inbound::Refuse,
                    Keep::Inbound => Inbound::Replace,
                }
            }
            _ => Inbound::Wait,
        },
        State::OpenConfirm => match remote_id {
            None => Inbound::Wait,
            // Two connections the peer opened: it gave up on the first; ours is not at stake.
            Some(_) if !current_is_outbound => Inbound::Replace,
            Some(remote) => match resolve_collision(local, (remote, remote_asn)) {
                Keep::Outbound => Inbound::Refuse,
                Keep::Inbound => Inbound::Replace,
            },
        },
    }
}

/// Resolves a connection collision between (BGP identifier, ASN) pairs: the higher
/// identifier, compared as an unsigned integer, keeps the connection it opened; with equal
/// identifiers (possible between ASes, RFC 6286 §2.3) the larger ASN does.
pub fn resolve_collision(local: (Ipv4Addr, u32), remote: (Ipv4Addr, u32)) -> Keep {
    let (l, r) = (u32::from(local.0), u32::from(remote.0));
    if l > r || (l == r && local.1 > remote.1) {
        Keep::Outbound
    } else {
        Keep::Inbound
    }
}

#[cfg(test)]
mod tests;

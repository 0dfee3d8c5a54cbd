//! Transitions of RFC 4271 §8.2.2 and invariants under random event sequences.

use std::net::Ipv4Addr;

use proptest::prelude::*;

use super::*;

const LOCAL_ID: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 11);
const PEER_ID: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

fn cfg() -> Config {
    Config::new(64512, LOCAL_ID, 64513)
}

fn open(hold_time: u16) -> PeerOpen {
    PeerOpen {
        asn: 64513,
        hold_time,
        router_id: PEER_ID,
    }
}

/// Drives a session to Established and returns it.
fn established(cfg: Config) -> Fsm {
    let mut fsm = Fsm::new(cfg);
    fsm.handle(Event::ManualStart);
    fsm.handle(Event::TcpCrAcked);
    fsm.handle(Event::BgpOpen(open(90)));
    fsm.handle(Event::KeepAliveMsg);
    assert_eq!(fsm.state(), State::Established);
    fsm
}

#[test]
fn active_start_connects_and_passive_start_waits() {
    let mut fsm = Fsm::new(cfg());
    let a = fsm.handle(Event::ManualStart);
    assert_eq!(fsm.state(), State::Connect);
    assert_eq!(
        a,
        [Action::StartTimer(Timer::ConnectRetry, 30), Action::Connect]
    );

    let mut fsm = Fsm::new(Config {
        passive: true,
        ..cfg()
    });
    let a = fsm.handle(Event::ManualStart);
    assert_eq!(fsm.state(), State::Active);
    assert!(
        !a.contains(&Action::Connect),
        "a passive peer never connects out: {a:?}"
    );
    let a = fsm.handle(Event::ConnectRetryTimerExpires);
    assert!(!a.contains(&Action::Connect));
    assert_eq!(fsm.state(), State::Active);
}

#[test]
fn full_handshake_negotiates_the_smaller_hold_time() {
    let mut fsm = Fsm::new(cfg());
    fsm.handle(Event::ManualStart);
    let a = fsm.handle(Event::TcpCrAcked);
    assert_eq!(
        a,
        [
            Action::StopTimer(Timer::ConnectRetry),
            Action::SendOpen,
            Action::StartTimer(Timer::Hold, 240)
        ]
    );
    assert_eq!(fsm.state(), State::OpenSent);
    let a = fsm.handle(Event::BgpOpen(open(9)));
    assert_eq!(
        a,
        [
            Action::SendKeepalive,
            Action::StartTimer(Timer::Keepalive, 3),
            Action::StartTimer(Timer::Hold, 9)
        ]
    );
    assert_eq!(fsm.state(), State::OpenConfirm);
    let a = fsm.handle(Event::KeepAliveMsg);
    assert_eq!(
        a,
        [
            Action::StartTimer(Timer::Hold, 9),
            Action::Established {
                hold_time: 9,
                keepalive: 3
            }
        ]
    );
    assert_eq!(fsm.state(), State::Established);
}

#[test]
fn zero_hold_time_means_no_keepalives_and_no_hold_timer() {
    let mut fsm = Fsm::new(cfg());
    fsm.handle(Event::ManualStart);
    fsm.handle(Event::TcpConnectionConfirmed);
    let a = fsm.handle(Event::BgpOpen(open(0)));
    assert_eq!(a, [Action::SendKeepalive, Action::StopTimer(Timer::Hold)]);
    let a = fsm.handle(Event::KeepAliveMsg);
    assert_eq!(
        a,
        [Action::Established {
            hold_time: 0,
            keepalive: 0
        }]
    );
    assert!(!fsm.timer_running(Timer::Hold) && !fsm.timer_running(Timer::Keepalive));
}

#[test]
fn configured_keepalive_is_used_when_below_the_hold_time() {
    let mut fsm = established(Config {
        keepalive: Some(10),
        ..cfg()
    });
    assert_eq!(fsm.negotiated(), Some((90, 10)));
    assert_eq!(
        fsm.handle(Event::KeepaliveTimerExpires),
        [
            Action::SendKeepalive,
            Action::StartTimer(Timer::Keepalive, 10)
        ]
    );
}

#[test]
fn open_from_the_wrong_as_is_refused_with_bad_peer_as() {
    let mut fsm = Fsm::new(cfg());
    fsm.handle(Event::ManualStart);
    fsm.handle(Event::TcpCrAcked);
    let a = fsm.handle(Event::BgpOpen(PeerOpen {
        asn: 65000,
        ..open(90)
    }));
    assert_eq!(
        a[0],
        Action::SendNotification(Notification {
            code: 2,
            subcode: 2,
            data: vec![0xfc, 0x01]
        })
    );
    assert!(a.contains(&Action::Disconnect));
    assert_eq!(fsm.state(), State::Idle);
    assert!(a.contains(&Action::StartTimer(Timer::IdleHold, 1)), "{a:?}");
}

#[test]
fn open_with_hold_time_one_or_our_identifier_on_ibgp_is_refused() {
    let mut fsm = Fsm::new(cfg());
    fsm.handle(Event::ManualStart);
    fsm.handle(Event::TcpCrAcked);
    let a = fsm.handle(Event::BgpOpen(open(2)));
    assert_eq!(a[0], Action::SendNotification(Notification::bare(2, 6)));

    let ibgp = Config::new(64512, LOCAL_ID, 64512);
    let mut fsm = Fsm::new(ibgp);
    fsm.handle(Event::ManualStart);
    fsm.handle(Event::TcpCrAcked);
    let a = fsm.handle(Event::BgpOpen(PeerOpen {
        asn: 64512,
        hold_time: 90,
        router_id: LOCAL_ID,
    }));
    assert_eq!(a[0], Action::SendNotification(Notification::bare(2, 3)));
}

#[test]
fn hold_timer_expiry_sends_notification_and_reports_down() {
    let mut fsm = established(cfg());
    let a = fsm.handle(Event::HoldTimerExpires);
    assert_eq!(
        a[0],
        Action::SendNotification(Notification::hold_timer_expired())
    );
    assert!(a.contains(&Action::Down(DownReason::HoldTimerExpired)));
    assert_eq!(fsm.state(), State::Idle);
}

#[test]
fn updates_and_keepalives_refresh_the_hold_timer() {
    let mut fsm = established(cfg());
    assert_eq!(
        fsm.handle(Event::UpdateMsg),
        [Action::StartTimer(Timer::Hold, 90)]
    );
    assert_eq!(
        fsm.handle(Event::KeepAliveMsg),
        [Action::StartTimer(Timer::Hold, 90)]
    );
}

#[test]
fn manual_stop_sends_cease_and_stays_down() {
    let mut fsm = established(cfg());
    let a = fsm.handle(Event::ManualStop);
    assert_eq!(
        a[0],
        Action::SendNotification(Notification::admin_shutdown())
    );
    assert!(a.contains(&Action::Down(DownReason::Stopped)));
    assert!(
        !a.iter().any(|x| matches!(x, Action::StartTimer(..))),
        "no restart after a manual stop: {a:?}"
    );
    assert!(fsm.handle(Event::AutomaticStart).is_empty());
    assert_eq!(fsm.state(), State::Idle);
}

#[test]
fn errors_back_off_exponentially_and_established_resets_it() {
    let mut fsm = Fsm::new(Config {
        idle_hold_base: 2,
        idle_hold_max: 10,
        ..cfg()
    });
    fsm.handle(Event::ManualStart);
    let mut holds = Vec::new();
    for _ in 0..5 {
        fsm.handle(Event::TcpCrAcked);
        let a = fsm.handle(Event::NotifMsg(Notification::bare(6, 4)));
        holds.extend(a.iter().filter_map(|x| match x {
            Action::StartTimer(Timer::IdleHold, s) => Some(*s),
            _ => None,
        }));
        assert_eq!(fsm.state(), State::Idle);
        let a = fsm.handle(Event::IdleHoldTimerExpires);
        assert!(
            a.contains(&Action::Connect),
            "restarts by itself after the idle hold"
        );
    }
    assert_eq!(holds, [2, 4, 8, 10, 10]);
    fsm.handle(Event::TcpCrAcked);
    fsm.handle(Event::BgpOpen(open(90)));
    fsm.handle(Event::KeepAliveMsg);
    let a = fsm.handle(Event::TcpConnectionFails);
    assert!(
        a.contains(&Action::StartTimer(Timer::IdleHold, 2)),
        "back-off reset: {a:?}"
    );
    assert!(a.contains(&Action::Down(DownReason::ConnectionFailed)));
}

#[test]
fn connection_failure_before_open_retries_after_connect_retry() {
    let mut fsm = Fsm::new(cfg());
    fsm.handle(Event::ManualStart);
    let a = fsm.handle(Event::TcpConnectionFails);
    assert_eq!(a, [Action::StartTimer(Timer::ConnectRetry, 30)]);
    assert_eq!(fsm.state(), State::Active);
    let a = fsm.handle(Event::ConnectRetryTimerExpires);
    assert_eq!(
        a,
        [
            Action::StartTimer(Timer::ConnectRetry, 30),
            Action::Disconnect,
            Action::Connect
        ]
    );
    assert_eq!(fsm.state(), State::Connect);
}

#[test]
fn out_of_order_messages_get_the_rfc_6608_subcode() {
    let mut fsm = Fsm::new(cfg());
    fsm.handle(Event::ManualStart);
    fsm.handle(Event::TcpCrAcked);
    assert_eq!(
        fsm.handle(Event::UpdateMsg)[0],
        Action::SendNotification(Notification::bare(5, 1))
    );
    let mut fsm = established(cfg());
    assert_eq!(
        fsm.handle(Event::BgpOpen(open(90)))[0],
        Action::SendNotification(Notification::bare(5, 3))
    );
}

#[test]
fn idle_refuses_connections_and_late_timers_are_ignored() {
    let mut fsm = Fsm::new(cfg());
    assert_eq!(
        fsm.handle(Event::TcpConnectionConfirmed),
        [Action::Disconnect]
    );
    assert!(fsm.handle(Event::HoldTimerExpires).is_empty());
    let mut fsm = established(cfg());
    fsm.handle(Event::ManualStop);
    assert!(fsm.handle(Event::KeepaliveTimerExpires).is_empty());
}

#[test]
fn an_inbound_connection_is_judged_by_state_and_identifiers() {
    let me = (Ipv4Addr::new(10, 0, 0, 11), 64512);
    let higher = Some(Ipv4Addr::new(10, 255, 0, 1));
    let lower = Some(Ipv4Addr::new(1, 1, 1, 1));
    let on = |state, remote, outbound| on_inbound(state, me, remote, 64513, outbound);
    assert_eq!(on(State::Idle, None, false), Inbound::Refuse);
    assert_eq!(on(State::Connect, None, false), Inbound::Adopt);
    assert_eq!(on(State::Active, None, false), Inbound::Adopt);
    assert_eq!(on(State::OpenSent, None, true), Inbound::Wait);
    // OpenSent with the identifier from the inbound connection's OPEN: settled at once.
    assert_eq!(on(State::OpenSent, higher, true), Inbound::Replace);
    assert_eq!(on(State::OpenSent, lower, true), Inbound::Refuse);
    assert_eq!(on(State::OpenSent, higher, false), Inbound::Wait);
    assert_eq!(on(State::OpenConfirm, higher, true), Inbound::Replace);
    assert_eq!(on(State::OpenConfirm, lower, true), Inbound::Refuse);
    assert_eq!(on(State::OpenConfirm, lower, false), Inbound::Replace);
    assert_eq!(on(State::Established, higher, true), Inbound::Refuse);
    // RFC 6286 §2.3: equal identifiers (eBGP) are settled by the ASNs: the peer's is larger.
    assert_eq!(on(State::OpenConfirm, Some(me.0), true), Inbound::Replace);
    assert_eq!(
        on_inbound(State::OpenConfirm, me, Some(me.0), 64500, true),
        Inbound::Refuse
    );
}

#[test]
fn collision_keeps_the_connection_of_the_higher_identifier_then_the_larger_asn() {
    let id = |a, b, c, d| Ipv4Addr::new(a, b, c, d);
    assert_eq!(
        resolve_collision((id(10, 0, 0, 2), 1), (id(10, 0, 0, 1), 2)),
        Keep::Outbound
    );
    assert_eq!(
        resolve_collision((id(9, 255, 255, 255), 2), (id(10, 0, 0, 1), 1)),
        Keep::Inbound
    );
    // Same identifier: the larger ASN keeps the connection it opened (RFC 6286 §2.3).
    assert_eq!(
        resolve_collision((id(10, 0, 0, 1), 4_200_000_001), (id(10, 0, 0, 1), 64513)),
        Keep::Outbound
    );
    assert_eq!(
        resolve_collision((id(10, 0, 0, 1), 64512), (id(10, 0, 0, 1), 64513)),
        Keep::Inbound
    );
    let mut fsm = Fsm::new(cfg());
    fsm.handle(Event::ManualStart);
    fsm.handle(Event::TcpCrAcked);
    let a = fsm.handle(Event::OpenCollisionDump);
    assert_eq!(a[0], Action::SendNotification(Notification::collision()));
    assert_eq!(fsm.state(), State::Idle);
}

#[test]
fn failed_connection_attempts_back_off_exponentially_until_established() {
    let mut fsm = Fsm::new(Config {
        connect_retry: 5,
        connect_retry_max: 60,
        ..cfg()
    });
    fsm.handle(Event::ManualStart);
    let mut retries = Vec::new();
    for _ in 0..6 {
        let a = fsm.handle(Event::TcpConnectionFails);
        assert_eq!(fsm.state(), State::Active);
        let Some(Action::StartTimer(Timer::ConnectRetry, secs)) = a.first() else {
            panic!("no ConnectRetry timer: {a:?}")
        };
        retries.push(*secs);
        // The next attempt waits as long again.
        let a = fsm.handle(Event::ConnectRetryTimerExpires);
        assert_eq!(a[0], Action::StartTimer(Timer::ConnectRetry, *secs));
        assert!(a.contains(&Action::Connect));
    }
    assert_eq!(retries, [5, 10, 20, 40, 60, 60]);
    // A session that comes up resets it: the next failure waits the base time again.
    fsm.handle(Event::TcpCrAcked);
    fsm.handle(Event::BgpOpen(open(90)));
    fsm.handle(Event::KeepAliveMsg);
    assert_eq!(fsm.state(), State::Established);
    fsm.handle(Event::TcpConnectionFails);
    fsm.handle(Event::IdleHoldTimerExpires);
    let a = fsm.handle(Event::TcpConnectionFails);
    assert_eq!(a, [Action::StartTimer(Timer::ConnectRetry, 5)]);
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        Just(Event::ManualStart),
        Just(Event::ManualStop),
        Just(Event::AutomaticStart),
        Just(Event::ConnectRetryTimerExpires),
        Just(Event::HoldTimerExpires),
        Just(Event::KeepaliveTimerExpires),
        Just(Event::IdleHoldTimerExpires),
        Just(Event::TcpCrAcked),
        Just(Event::TcpConnectionConfirmed),
        Just(Event::TcpConnectionFails),
        (0u16..200, prop_oneof![Just(64513u32), Just(1u32)]).prop_map(
            |(hold, asn)| Event::BgpOpen(PeerOpen {
                asn,
                hold_time: hold,
                router_id: PEER_ID
            })
        ),
        Just(Event::BgpHeaderErr(Notification::bare(1, 2))),
        Just(Event::OpenCollisionDump),
        Just(Event::NotifMsg(Notification::bare(6, 2))),
        Just(Event::KeepAliveMsg),
        Just(Event::UpdateMsg),
        Just(Event::UpdateMsgErr(Notification::bare(3, 1))),
    ]
}

proptest! {
    /// Whatever the peer and the timers do: Down is reported exactly when Established is left,
    /// keepalives and OPENs are only sent on a connection, a passive session never connects,
    /// and a manually stopped session stays silent until started.
    #[test]
    fn invariants_hold_for_any_event_sequence(events in proptest::collection::vec(event(), 0..80), passive in any::<bool>()) {
        let mut fsm = Fsm::new(Config { passive, ..cfg() });
        let mut up = false;
        for e in events {
            let before = fsm.state();
            let was_stopped_idle = before == State::Idle && fsm.stopped;
            let is_start = matches!(e, Event::ManualStart);
            let actions = fsm.handle(e);
            let downs = actions.iter().filter(|a| matches!(a, Action::Down(_))).count();
            let after = fsm.state();
            prop_assert_eq!(downs, usize::from(before == State::Established && after != State::Established));
            if actions.iter().any(|a| matches!(a, Action::Established { .. })) {
                prop_assert!(!up);
                up = true;
            }
            if downs > 0 {
                up = false;
            }
            prop_assert_eq!(up, after == State::Established);
            if passive {
                prop_assert!(!actions.contains(&Action::Connect));
            }
            if matches!(before, State::Idle | State::Connect | State::Active) {
                prop_assert!(!actions.contains(&Action::SendKeepalive));
            }
            if was_stopped_idle && !is_start {
                prop_assert!(actions.iter().all(|a| *a == Action::Disconnect), "{actions:?}");
            }
            if after == State::Idle {
                prop_assert!(fsm.negotiated().is_none());
                prop_assert!(!fsm.timer_running(Timer::Hold) && !fsm.timer_running(Timer::Keepalive));
            }
        }
    }
}

#[test]
fn send_hold_expiry_sends_code_8_and_closes_only_a_connected_session() {
    let mut fsm = established(cfg());
    let a = fsm.handle(Event::SendHoldTimerExpires);
    assert_eq!(
        a.first(),
        Some(&Action::SendNotification(Notification::bare(8, 0)))
    );
    assert!(a.contains(&Action::Disconnect), "{a:?}");
    assert!(
        a.contains(&Action::Down(DownReason::SendHoldTimerExpired)),
        "{a:?}"
    );
    assert_eq!(fsm.state(), State::Idle);

    // A late report after the connection is gone changes nothing.
    let mut fsm = Fsm::new(cfg());
    fsm.handle(Event::ManualStart);
    assert_eq!(fsm.state(), State::Connect);
    assert!(fsm.handle(Event::SendHoldTimerExpires).is_empty());
    assert_eq!(fsm.state(), State::Connect);
}

#[test]
fn stops_send_the_cease_subcode_of_their_reason_or_none_for_a_restart() {
    for (reason, sent) in [
        (StopReason::Shutdown, Some(Notification::bare(6, 2))),
        (StopReason::Deconfigured, Some(Notification::bare(6, 3))),
        (StopReason::ConfigChanged, Some(Notification::bare(6, 6))),
        (StopReason::Restart, None),
    ] {
        let mut fsm = established(cfg());
        let a = fsm.handle(Event::Stop(reason));
        let notifications: Vec<_> = a
            .iter()
            .filter_map(|a| match a {
                Action::SendNotification(n) => Some(n.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(
            notifications,
            sent.into_iter().collect::<Vec<_>>(),
            "{reason:?}"
        );
        assert!(a.contains(&Action::Disconnect), "{reason:?}: {a:?}");
        assert!(
            a.contains(&Action::Down(DownReason::Stopped)),
            "{reason:?}: {a:?}"
        );
        assert_eq!(fsm.state(), State::Idle);
        // A stop stays stopped.
        assert!(fsm.handle(Event::IdleHoldTimerExpires).is_empty());
    }
}

#[test]
fn with_the_n_bit_a_restart_sends_a_cease_and_withdrawing_stops_a_hard_reset() {
    let hard = |sub: u8| Notification::new(6, 9, vec![6, sub]);
    for (reason, sent) in [
        (StopReason::Shutdown, hard(2)),
        (StopReason::Deconfigured, hard(3)),
        (StopReason::ConfigChanged, hard(6)),
        (StopReason::Restart, Notification::bare(6, 2)),
    ] {
        let mut fsm = established(cfg());
        fsm.set_graceful_notification(true);
        let a = fsm.handle(Event::Stop(reason));
        assert_eq!(a[0], Action::SendNotification(sent), "{reason:?}");
    }
}

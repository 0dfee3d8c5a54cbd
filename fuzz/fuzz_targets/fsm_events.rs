//! Arbitrary event sequences into the session FSM: no panic, and Down is reported exactly when
//! Established is left.
#![no_main]

use std::net::Ipv4Addr;

use berth_bgp_fsm::{Action, Config, Event, Fsm, Notification, PeerOpen, State, StopReason};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&passive, rest)) = data.split_first() else {
        return;
    };
    let mut cfg = Config::new(64512, Ipv4Addr::new(10, 0, 0, 11), 64513);
    cfg.passive = passive & 1 != 0;
    let mut fsm = Fsm::new(cfg);
    for chunk in rest.chunks(3) {
        let (a, b, c) = (
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        );
        let event = match a % 21 {
            0 => Event::ManualStart,
            1 => Event::ManualStop,
            2 => Event::AutomaticStart,
            3 => Event::ConnectRetryTimerExpires,
            4 => Event::HoldTimerExpires,
            5 => Event::KeepaliveTimerExpires,
            6 => Event::IdleHoldTimerExpires,
            7 => Event::TcpCrAcked,
            8 => Event::TcpConnectionConfirmed,
            9 => Event::TcpConnectionFails,
            10 => Event::BgpOpen(PeerOpen {
                asn: if b & 1 == 0 { 64513 } else { u32::from(b) },
                hold_time: u16::from(c),
                router_id: Ipv4Addr::new(10, 0, 0, b),
            }),
            11 => Event::BgpHeaderErr(Notification::bare(1, b)),
            12 => Event::BgpOpenMsgErr(Notification::bare(2, b)),
            13 => Event::OpenCollisionDump,
            14 => Event::NotifMsgVerErr,
            15 => Event::NotifMsg(Notification::bare(b, c)),
            16 => Event::KeepAliveMsg,
            17 => Event::UpdateMsg,
            18 => Event::SendHoldTimerExpires,
            19 => Event::Stop(match b % 4 {
                0 => StopReason::Shutdown,
                1 => StopReason::Deconfigured,
                2 => StopReason::ConfigChanged,
                _ => StopReason::Restart,
            }),
            _ => Event::UpdateMsgErr(Notification::bare(3, b)),
        };
        let before = fsm.state();
        let actions = fsm.handle(event);
        let downs = actions
            .iter()
            .filter(|x| matches!(x, Action::Down(_)))
            .count();
        let left = before == State::Established && fsm.state() != State::Established;
        assert_eq!(downs, usize::from(left));
    }
});

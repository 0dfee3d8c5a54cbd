//! ROUTE-REFRESH at a hand-driven peer on loopback (no root needed): a request for the
//! session's family resends that family's table; a request for a family the session did not
//! negotiate (RFC 2918 §4) is ignored, where the speaker used to resend everything.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::net::{Ipv4Addr, TcpStream};
use std::time::{Duration, Instant};

use berth_bgp_wire::{EncodeContext, Message, RouteRefresh};
use common::{enc, open, read_until};

fn establish(port: u16) -> TcpStream {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        assert!(Instant::now() < deadline, "no session on port {port}");
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        if s.write_all(&open(Ipv4Addr::new(127, 0, 0, 1))).is_err()
            || read_until(&mut s, |m| matches!(m, Message::Open(_))).is_none()
        {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        s.write_all(&Message::Keepalive.to_bytes(&enc())).unwrap();
        return s;
    }
}

/// A port nobody listens on now (the OS's choice; fixed formulas collide between tests).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn refresh(afi: u16) -> Vec<u8> {
    Message::RouteRefresh(RouteRefresh {
        afi,
        subtype: 0,
        safi: 1,
    })
    .to_bytes(&EncodeContext::default())
}

fn announces(m: &Message) -> bool {
    matches!(m, Message::Update(u) if !u.nlri.is_empty())
}

#[test]
fn route_refresh_for_a_family_not_negotiated_is_ignored() {
    let dir = common::tempdir("refresh");
    let port = free_port();
    let conf = format!(
        "asn: 64512
routerId: 10.0.0.11
listenPort: {port}
peers:
  - address: 127.0.0.1
    asn: 64513
    passive: true
    holdTime: 30
routes:
  - prefix: 198.51.100.10/32
    nextHops: [10.0.0.11]
  - prefix: 2001:db8::10/128
    nextHops: [fd00::11]
"
    );
    let _speaker = common::start_speaker(&dir, &conf, free_port());
    let log = || std::fs::read_to_string(dir.join("speaker.log")).unwrap_or_default();

    // The peer's OPEN offers IPv4 unicast only: IPv6 is not negotiated.
    let mut s = establish(port);
    // Everything the first sync sends, up to the End-of-RIB, in one read: the announcement
    // and the End-of-RIB can arrive in one segment, and read_until keeps no bytes between
    // calls (two calls lost the End-of-RIB under load).
    let mut announced = false;
    let eor = read_until(&mut s, |m| {
        announced |= announces(m);
        matches!(m, Message::Update(u) if u.is_end_of_rib().is_some())
    });
    assert!(announced, "no announcement: {}", log());
    assert!(eor.is_some(), "no End-of-RIB: {}", log());

    // IPv6 unicast was not negotiated: nothing may come back.
    s.write_all(&refresh(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let resent = read_until(&mut s, announces);
    assert!(
        resent.is_none(),
        "a ROUTE-REFRESH for IPv6 (not negotiated) resent the table: {resent:?}"
    );

    // IPv4 unicast was: its table comes again, and only IPv4.
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&refresh(1)).unwrap();
    let Some(Message::Update(u)) = read_until(&mut s, announces) else {
        panic!("a ROUTE-REFRESH for IPv4 resent nothing: {}", log())
    };
    assert_eq!(
        u.nlri
            .iter()
            .map(|n| n.prefix.to_string())
            .collect::<Vec<_>>(),
        ["198.51.100.10/32"]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

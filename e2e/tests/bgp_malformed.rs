//! A peer that sends malformed UPDATEs (crafted bytes) cannot crash the speaker, and each is
//! handled as RFC 7606 says: treat-as-withdraw keeps the session, a reset case gets its
//! NOTIFICATION. Runs on loopback; no root needed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::net::{Ipv4Addr, TcpStream};
use std::time::{Duration, Instant};

use berth_bgp_wire::{EncodeContext, Message, Notification};
use common::{Speaker, enc, open, read_until};

fn start(dir: &std::path::Path, port: u16, metrics: u16) -> Speaker {
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
"
    );
    common::start_speaker(dir, &conf, metrics)
}

/// Connects as the peer and completes OPEN/KEEPALIVE; returns the stream. After an error
/// the speaker waits out its idle-hold back-off and drops connections meanwhile: retry.
fn establish(port: u16) -> TcpStream {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        assert!(
            Instant::now() < deadline,
            "the speaker never accepted a session on port {port}"
        );
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        if s.write_all(&open(Ipv4Addr::new(127, 0, 0, 1))).is_err() {
            continue;
        }
        if read_until(&mut s, |m| matches!(m, Message::Open(_))).is_none() {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        s.write_all(&Message::Keepalive.to_bytes(&enc())).unwrap();
        return s;
    }
}

fn update(attrs: &[u8], nlri: &[u8]) -> Vec<u8> {
    let mut m = vec![0xff; 16];
    m.extend_from_slice(&((19 + 4 + attrs.len() + nlri.len()) as u16).to_be_bytes());
    m.push(2);
    m.extend_from_slice(&[0, 0]);
    m.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    m.extend_from_slice(attrs);
    m.extend_from_slice(nlri);
    m
}

#[test]
fn malformed_updates_are_handled_as_rfc_7606_says() {
    let dir = common::tempdir("malformed");
    let port = 20000 + (std::process::id() % 20000) as u16;
    let _speaker = start(&dir, port, port + 1);
    let log = || std::fs::read_to_string(dir.join("speaker.log")).unwrap_or_default();

    let mut s = establish(port);
    // Our table arrives: the session is up.
    assert!(
        read_until(
            &mut s,
            |m| matches!(m, Message::Update(u) if !u.nlri.is_empty())
        )
        .is_some(),
        "{}",
        log()
    );

    // Treat-as-withdraw: ORIGIN with value 7. The session must stay up.
    let nlri = [24, 192, 0, 2];
    s.write_all(&update(
        &[0x40, 1, 1, 7, 0x40, 2, 0, 0x40, 3, 4, 10, 0, 0, 1],
        &nlri,
    ))
    .unwrap();
    s.write_all(&Message::Keepalive.to_bytes(&EncodeContext::default()))
        .unwrap();
    // A ROUTE-REFRESH proves the speaker still serves this session: it resends the table.
    let rr = berth_bgp_wire::RouteRefresh {
        afi: 1,
        subtype: 0,
        safi: 1,
    };
    s.write_all(&Message::RouteRefresh(rr).to_bytes(&EncodeContext::default()))
        .unwrap();
    let again = read_until(&mut s, |m| {
        matches!(m, Message::Update(u) if !u.nlri.is_empty())
            || matches!(m, Message::Notification(_))
    });
    assert!(
        matches!(again, Some(Message::Update(_))),
        "session did not survive a treat-as-withdraw UPDATE: {again:?}\n{}",
        log()
    );

    // Session reset: an unrecognized well-known attribute gets NOTIFICATION 3/2.
    s.write_all(&update(&[0x40, 1, 1, 0, 0x40, 99, 1, 0], &nlri))
        .unwrap();
    let n = read_until(&mut s, |m| matches!(m, Message::Notification(_)));
    let Some(Message::Notification(Notification { code, subcode, .. })) = n else {
        panic!(
            "no NOTIFICATION for an unrecognized well-known attribute: {n:?}\n{}",
            log()
        )
    };
    assert_eq!((code, subcode), (3, 2));

    // Garbage in the header: 1/1. Then the speaker still accepts a new session.
    let mut s = establish(port);
    s.write_all(&[0u8; 19]).unwrap();
    let n = read_until(&mut s, |m| matches!(m, Message::Notification(_)));
    assert!(
        matches!(
            n,
            Some(Message::Notification(Notification {
                code: 1,
                subcode: 1,
                ..
            }))
        ),
        "{n:?}"
    );
    let mut s = establish(port);
    assert!(
        read_until(
            &mut s,
            |m| matches!(m, Message::Update(u) if !u.nlri.is_empty())
        )
        .is_some(),
        "speaker gone after malformed input:\n{}",
        log()
    );
}

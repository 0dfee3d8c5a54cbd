//! Connection collisions (RFC 4271 §6.8) against a hand-driven peer on loopback: when both
//! sides open a connection, the one opened by the speaker with the higher BGP identifier
//! survives and the other is closed with a Cease (Connection Collision Resolution), also when
//! the speaker's own connection is still in OpenSent. No root.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::time::Duration;

use berth_bgp_wire::{Message, Notification};
use common::{enc, open, read_until};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Brings the speaker's own connection to OpenConfirm, then connects to it as the same peer.
/// Returns (the speaker's connection, ours).
fn collide(
    name: &str,
    peer_id: Ipv4Addr,
) -> (TcpStream, TcpStream, common::Speaker, std::path::PathBuf) {
    let dir = common::tempdir(name);
    let peer = TcpListener::bind("127.0.0.1:0").unwrap();
    let peer_port = peer.local_addr().unwrap().port();
    let listen = free_port();
    let conf = format!(
        "asn: 64512
routerId: 10.0.0.11
listenPort: {listen}
peers:
  - address: 127.0.0.1
    port: {peer_port}
    asn: 64513
    holdTime: 30
    connectRetry: 1
routes:
  - prefix: 198.51.100.10/32
    nextHops: [10.0.0.11]
"
    );
    let speaker = common::start_speaker(&dir, &conf, free_port());
    let (mut theirs, _) = peer.accept().unwrap();
    theirs
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert!(read_until(&mut theirs, |m| matches!(m, Message::Open(_))).is_some());
    theirs.write_all(&open(peer_id)).unwrap();
    // Its KEEPALIVE: the speaker is in OpenConfirm and knows our identifier.
    assert!(read_until(&mut theirs, |m| matches!(m, Message::Keepalive)).is_some());
    let mut ours = (0..50)
        .find_map(|_| {
            TcpStream::connect(("127.0.0.1", listen))
                .map_err(|_| std::thread::sleep(Duration::from_millis(50)))
                .ok()
        })
        .expect("the speaker's listen port never opened");
    ours.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    ours.write_all(&open(peer_id)).unwrap();
    (theirs, ours, speaker, dir)
}

fn is_collision_cease(m: &Option<Message>) -> bool {
    matches!(
        m,
        Some(Message::Notification(Notification {
            code: 6,
            subcode: 7,
            ..
        }))
    )
}

#[test]
fn a_peer_with_the_higher_identifier_keeps_the_connection_it_opened() {
    let (mut theirs, mut ours, _speaker, dir) =
        collide("collision-hi", Ipv4Addr::new(10, 255, 0, 1));
    let log = || std::fs::read_to_string(dir.join("speaker.log")).unwrap_or_default();
    let dumped = read_until(&mut theirs, |m| matches!(m, Message::Notification(_)));
    assert!(
        is_collision_cease(&dumped),
        "speaker's connection: {dumped:?}\n{}",
        log()
    );
    // The speaker goes on with ours: its OPEN, then the table once we confirm.
    assert!(
        read_until(&mut ours, |m| matches!(m, Message::Open(_))).is_some(),
        "{}",
        log()
    );
    ours.write_all(&Message::Keepalive.to_bytes(&enc()))
        .unwrap();
    assert!(
        read_until(
            &mut ours,
            |m| matches!(m, Message::Update(u) if !u.nlri.is_empty())
        )
        .is_some(),
        "no table on the surviving connection:\n{}",
        log()
    );
}

#[test]
fn a_peer_with_the_lower_identifier_loses_the_connection_it_opened() {
    let (mut theirs, mut ours, _speaker, dir) = collide("collision-lo", Ipv4Addr::new(1, 1, 1, 1));
    let log = || std::fs::read_to_string(dir.join("speaker.log")).unwrap_or_default();
    let refused = read_until(&mut ours, |m| matches!(m, Message::Notification(_)));
    assert!(
        is_collision_cease(&refused),
        "our connection: {refused:?}\n{}",
        log()
    );
    // The speaker's own connection goes on.
    theirs
        .write_all(&Message::Keepalive.to_bytes(&enc()))
        .unwrap();
    assert!(
        read_until(
            &mut theirs,
            |m| matches!(m, Message::Update(u) if !u.nlri.is_empty())
        )
        .is_some(),
        "no table on the surviving connection:\n{}",
        log()
    );
}

/// The speaker's own connection in OpenSent (the peer has not answered its OPEN on it) when
/// the peer connects in and sends its OPEN: the identifier in that OPEN settles the collision
/// at once (RFC 4271 §6.8 allows examining OpenSent when the identifier is known). Before, the
/// inbound connection stayed parked, unread, until the peer answered on the speaker's
/// connection, which a peer waiting for its own connection never does: the session hung until
/// the 240 s OpenSent hold timer.
fn collide_in_open_sent(
    name: &str,
    peer_id: Ipv4Addr,
) -> (TcpStream, TcpStream, std::path::PathBuf, common::Speaker) {
    let dir = common::tempdir(name);
    let peer = TcpListener::bind("127.0.0.1:0").unwrap();
    let peer_port = peer.local_addr().unwrap().port();
    let listen = free_port();
    let conf = format!(
        "asn: 64512
routerId: 10.0.0.11
listenPort: {listen}
peers:
  - address: 127.0.0.1
    port: {peer_port}
    asn: 64513
    holdTime: 30
    connectRetry: 1
routes:
  - prefix: 198.51.100.10/32
    nextHops: [10.0.0.11]
"
    );
    let speaker = common::start_speaker(&dir, &conf, free_port());
    let (mut theirs, _) = peer.accept().unwrap();
    theirs
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // The speaker's OPEN; no answer on this connection: it stays in OpenSent.
    assert!(read_until(&mut theirs, |m| matches!(m, Message::Open(_))).is_some());
    let mut ours = (0..50)
        .find_map(|_| {
            TcpStream::connect(("127.0.0.1", listen))
                .map_err(|_| std::thread::sleep(Duration::from_millis(50)))
                .ok()
        })
        .expect("the speaker's listen port never opened");
    ours.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    ours.write_all(&open(peer_id)).unwrap();
    (theirs, ours, dir, speaker)
}

#[test]
fn in_open_sent_the_inbound_open_settles_a_collision_for_the_higher_peer() {
    let (mut theirs, mut ours, dir, _speaker) =
        collide_in_open_sent("collision-os-hi", Ipv4Addr::new(10, 255, 0, 1));
    let log = || std::fs::read_to_string(dir.join("speaker.log")).unwrap_or_default();
    // The peer's identifier is higher: the speaker dumps its own connection and answers ours.
    let dumped = read_until(&mut theirs, |m| matches!(m, Message::Notification(_)));
    assert!(
        is_collision_cease(&dumped),
        "speaker's connection: {dumped:?}\n{}",
        log()
    );
    assert!(
        read_until(&mut ours, |m| matches!(m, Message::Open(_))).is_some(),
        "no OPEN on the peer's connection:\n{}",
        log()
    );
    ours.write_all(&Message::Keepalive.to_bytes(&enc()))
        .unwrap();
    assert!(
        read_until(
            &mut ours,
            |m| matches!(m, Message::Update(u) if !u.nlri.is_empty())
        )
        .is_some(),
        "no table on the surviving connection:\n{}",
        log()
    );
}

#[test]
fn in_open_sent_the_inbound_open_settles_a_collision_for_the_lower_peer() {
    let (mut theirs, mut ours, dir, _speaker) =
        collide_in_open_sent("collision-os-lo", Ipv4Addr::new(1, 1, 1, 1));
    let log = || std::fs::read_to_string(dir.join("speaker.log")).unwrap_or_default();
    // The speaker's identifier is higher: the peer's connection is refused at once, and the
    // speaker's own goes on when the peer answers there.
    let refused = read_until(&mut ours, |m| matches!(m, Message::Notification(_)));
    assert!(
        is_collision_cease(&refused),
        "peer's connection: {refused:?}\n{}",
        log()
    );
    theirs.write_all(&open(Ipv4Addr::new(1, 1, 1, 1))).unwrap();
    theirs
        .write_all(&Message::Keepalive.to_bytes(&enc()))
        .unwrap();
    assert!(
        read_until(
            &mut theirs,
            |m| matches!(m, Message::Update(u) if !u.nlri.is_empty())
        )
        .is_some(),
        "no table on the speaker's connection:\n{}",
        log()
    );
}

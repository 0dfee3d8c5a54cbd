//! Connection collisions (RFC 4271 §6.8) against a hand-driven peer on loopback: when both
//! sides open a connection, the one opened by the speaker with the higher BGP identifier
//! survives and the other is closed with a Cease (Connection Collision Resolution). No root.

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

//! A hand-driven BGP peer on loopback, for suites that need exact bytes (no root needed).

#![allow(dead_code)]

use std::io::Read;
use std::net::{Ipv4Addr, TcpStream};
use std::process::{Child, Command, Stdio};

use berth_bgp_wire::{Capability, DecodeContext, EncodeContext, Message, Open};

/// The speaker binary built by this workspace.
pub static SPEAKER: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| berth_e2e::binary("berth-bgp-server"));

/// A speaker process, killed on drop.
pub struct Speaker(pub Child);

impl Drop for Speaker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the speaker with `conf` (YAML) written into `dir`; its log is `dir/speaker.log`.
pub fn start_speaker(dir: &std::path::Path, conf: &str, metrics_port: u16) -> Speaker {
    std::fs::write(dir.join("speaker.yaml"), conf).unwrap();
    let log = std::fs::File::create(dir.join("speaker.log")).unwrap();
    Speaker(
        Command::new(&*SPEAKER)
            .args(["--config", &dir.join("speaker.yaml").display().to_string()])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

/// A fresh, empty directory for one test ([`berth_e2e::test_dir`]: earlier runs' removed).
pub fn tempdir(name: &str) -> std::path::PathBuf {
    berth_e2e::test_dir(name).unwrap()
}

/// The peer's encoding context (4-octet ASN).
pub fn enc() -> EncodeContext {
    EncodeContext {
        four_octet_as: true,
        ..Default::default()
    }
}

/// The peer's OPEN: AS 64513, IPv4 unicast, 4-octet ASN.
pub fn open(router_id: Ipv4Addr) -> Vec<u8> {
    Message::Open(Open {
        asn: 64513,
        hold_time: 30,
        router_id,
        capabilities: vec![
            Capability::Multiprotocol { afi: 1, safi: 1 },
            Capability::FourOctetAs(64513),
        ],
    })
    .to_bytes(&enc())
}

/// Reads messages until `pred` matches one or the stream ends; returns the match.
pub fn read_until(s: &mut TcpStream, mut pred: impl FnMut(&Message) -> bool) -> Option<Message> {
    let ctx = DecodeContext {
        four_octet_as: true,
        ..Default::default()
    };
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while let Ok(Some((m, n))) = Message::decode(&buf, &ctx) {
            buf.drain(..n);
            if pred(&m) {
                return Some(m);
            }
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

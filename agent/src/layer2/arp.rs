//! ARP (RFC 826) over Ethernet: parsing requests, building replies and gratuitous ARP.

use std::net::Ipv4Addr;

use super::{Mac, array, be16};

/// EtherType of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;
const OP_REQUEST: u16 = 1;
const OP_REPLY: u16 = 2;
/// Ethernet header (14) + ARP for IPv4 over Ethernet (28), padded to Ethernet's minimum 60.
const FRAME_LEN: usize = 60;

/// An ARP request asking who has `target`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// The asker's MAC (ARP sender hardware address).
    pub sender_mac: Mac,
    /// The asker's IP; 0.0.0.0 for an RFC 5227 probe.
    pub sender_ip: Ipv4Addr,
    /// The IP asked about.
    pub target: Ipv4Addr,
}

impl Request {
    /// A gratuitous ARP (sender IP = target IP): another host announcing the address, not a
    /// question to answer.
    pub fn is_gratuitous(&self) -> bool {
        self.sender_ip == self.target
    }
}

/// Parses an Ethernet frame holding an ARP request for IPv4 over Ethernet; `None` for anything
/// else (replies, other hardware or protocol types, truncated frames).
pub fn parse_request(frame: &[u8]) -> Option<Request> {
    if be16(frame, 12)? != ETHERTYPE_ARP {
        return None;
    }
    let arp = frame.get(14..)?;
    // htype Ethernet, ptype IPv4, hlen 6, plen 4, op request.
    if be16(arp, 0)? != 1 || be16(arp, 2)? != 0x0800 || *arp.get(4)? != 6 || *arp.get(5)? != 4 {
        return None;
    }
    if be16(arp, 6)? != OP_REQUEST {
        return None;
    }
    Some(Request {
        sender_mac: Mac(array(arp, 8)?),
        sender_ip: Ipv4Addr::from(array::<4>(arp, 14)?),
        target: Ipv4Addr::from(array::<4>(arp, 24)?),
    })
}

fn frame(dst: Mac, src: Mac, op: u16, sha: Mac, spa: Ipv4Addr, tha: Mac, tpa: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(FRAME_LEN);
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&ETHERTYPE_ARP.to_be_bytes());
    f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4]);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&sha.0);
    f.extend_from_slice(&spa.octets());
    f.extend_from_slice(&tha.0);
    f.extend_from_slice(&tpa.octets());
    f.resize(FRAME_LEN, 0);
    f
}

/// The reply to `req` saying `req.target` is at `mac`, sent to the asker only.
pub fn reply(req: &Request, mac: Mac) -> Vec<u8> {
    frame(
        req.sender_mac,
        mac,
        OP_REPLY,
        mac,
        req.target,
        req.sender_mac,
        req.sender_ip,
    )
}

/// A gratuitous ARP announcing `ip` at `mac`: the request form (sender IP = target IP,
/// broadcast), which Linux, switches and routers all use to update an existing entry.
pub fn gratuitous(ip: Ipv4Addr, mac: Mac) -> Vec<u8> {
    frame(Mac::BROADCAST, mac, OP_REQUEST, mac, ip, Mac::default(), ip)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    // Who has 192.168.1.240? Tell 192.168.1.10 (02:00:00:00:00:0a), broadcast.
    const REQUEST: &str = "ffffffffffff 02000000000a 0806
        0001 0800 06 04 0001 02000000000a c0a8010a 000000000000 c0a801f0";

    #[test]
    fn parses_a_request() {
        let req = parse_request(&hex(REQUEST)).unwrap();
        assert_eq!(
            req,
            Request {
                sender_mac: Mac([2, 0, 0, 0, 0, 0x0a]),
                sender_ip: Ipv4Addr::new(192, 168, 1, 10),
                target: Ipv4Addr::new(192, 168, 1, 240),
            }
        );
        assert!(!req.is_gratuitous());
    }

    #[test]
    fn builds_the_reply_byte_for_byte() {
        let req = parse_request(&hex(REQUEST)).unwrap();
        let me = Mac([2, 0, 0, 0, 0, 0x11]);
        let mut want = hex("02000000000a 020000000011 0806
             0001 0800 06 04 0002 020000000011 c0a801f0 02000000000a c0a8010a");
        want.resize(60, 0);
        assert_eq!(reply(&req, me), want);
        // A reply is not a request: the announcer never answers its own replies.
        assert_eq!(parse_request(&reply(&req, me)), None);
    }

    #[test]
    fn builds_gratuitous_arp_byte_for_byte() {
        let mut want = hex("ffffffffffff 020000000011 0806
             0001 0800 06 04 0001 020000000011 c0a801f0 000000000000 c0a801f0");
        want.resize(60, 0);
        let g = gratuitous(Ipv4Addr::new(192, 168, 1, 240), Mac([2, 0, 0, 0, 0, 0x11]));
        assert_eq!(g, want);
        assert!(parse_request(&g).unwrap().is_gratuitous());
    }

    #[test]
    fn refuses_other_frames() {
        let good = hex(REQUEST);
        for cut in 0..good.len() {
            assert_eq!(parse_request(&good[..cut]), None, "truncated at {cut}");
        }
        let mut ipv6 = good.clone();
        ipv6[12..14].copy_from_slice(&[0x86, 0xdd]);
        assert_eq!(parse_request(&ipv6), None);
        let mut token_ring = good.clone();
        token_ring[15] = 6;
        assert_eq!(parse_request(&token_ring), None);
        let mut reply = good;
        reply[21] = 2;
        assert_eq!(parse_request(&reply), None);
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..128)) {
            let _ = parse_request(&bytes);
        }
    }
}

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

/// A claim seen on the segment: `mac` says it has `ip` (an ARP reply, or a gratuitous ARP
/// in request form), as [`parse_claim`] reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claim {
    /// The IP claimed (ARP sender protocol address).
    pub ip: Ipv4Addr,
    /// The MAC claiming it (ARP sender hardware address).
    pub mac: Mac,
}

/// Parses an Ethernet frame holding an ARP reply, or a gratuitous ARP request (sender IP =
/// target IP), for IPv4 over Ethernet: the sender claims its sender IP. `None` for anything
/// else, including ordinary requests and RFC 5227 probes (sender IP 0.0.0.0).
pub fn parse_claim(frame: &[u8]) -> Option<Claim> {
    if be16(frame, 12)? != ETHERTYPE_ARP {
        return None;
    }
    let arp = frame.get(14..)?;
    if be16(arp, 0)? != 1 || be16(arp, 2)? != 0x0800 || *arp.get(4)? != 6 || *arp.get(5)? != 4 {
        return None;
    }
    let ip = Ipv4Addr::from(array::<4>(arp, 14)?);
    let claim = Claim {
        ip,
        mac: Mac(array(arp, 8)?),
    };
    match be16(arp, 6)? {
        OP_REPLY if !ip.is_unspecified() => Some(claim),
        OP_REQUEST if ip == Ipv4Addr::from(array::<4>(arp, 24)?) => Some(claim),
        _ => None,
    }
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
/// broadcast, target MAC zero: an RFC 5227 ARP Announcement), which Linux, switches and
/// routers all use to update an existing entry.
pub fn gratuitous(ip: Ipv4Addr, mac: Mac) -> Vec<u8> {
    frame(Mac::BROADCAST, mac, OP_REQUEST, mac, ip, Mac::default(), ip)
}

/// The reply form of the same announcement (RFC 2002 4.6: an ARP reply, broadcast, sender and
/// target IP `ip`, both MACs `mac`): some routers and firewalls update their entries only
/// from replies, so takeovers send both forms, as keepalived and MetalLB do.
pub fn gratuitous_reply(ip: Ipv4Addr, mac: Mac) -> Vec<u8> {
    frame(Mac::BROADCAST, mac, OP_REPLY, mac, ip, mac, ip)
}

/// Every frame of a gratuitous announcement of `ip` at `mac`: request form, then reply form.
pub fn announcement(ip: Ipv4Addr, mac: Mac) -> [Vec<u8>; 2] {
    [gratuitous(ip, mac), gratuitous_reply(ip, mac)]
}

/// An RFC 5227 probe for `ip` from `mac` (request, sender IP 0.0.0.0, broadcast): whoever
/// has `ip` answers it, and no neighbour cache learns anything from it.
pub fn probe(ip: Ipv4Addr, mac: Mac) -> Vec<u8> {
    frame(
        Mac::BROADCAST,
        mac,
        OP_REQUEST,
        mac,
        Ipv4Addr::UNSPECIFIED,
        Mac::default(),
        ip,
    )
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
    fn builds_the_reply_form_byte_for_byte_and_announces_both() {
        let ip = Ipv4Addr::new(192, 168, 1, 240);
        let me = Mac([2, 0, 0, 0, 0, 0x11]);
        let mut want = hex("ffffffffffff 020000000011 0806
             0001 0800 06 04 0002 020000000011 c0a801f0 020000000011 c0a801f0");
        want.resize(60, 0);
        assert_eq!(gratuitous_reply(ip, me), want);
        // Not a question: nobody answers it; other nodes' arbiters read it as a claim.
        assert_eq!(parse_request(&want), None);
        assert_eq!(parse_claim(&want), Some(Claim { ip, mac: me }));
        let [request, reply] = announcement(ip, me);
        assert_eq!(request, gratuitous(ip, me));
        assert_eq!(reply, want);
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

    #[test]
    fn claims_are_replies_and_gratuitous_arp_not_questions() {
        let me = Mac([2, 0, 0, 0, 0, 0x11]);
        let ip = Ipv4Addr::new(192, 168, 1, 240);
        let want = Some(Claim { ip, mac: me });
        let req = parse_request(&hex(REQUEST)).unwrap();
        assert_eq!(parse_claim(&reply(&req, me)), want);
        assert_eq!(parse_claim(&gratuitous(ip, me)), want);
        assert_eq!(parse_claim(&hex(REQUEST)), None);
        let p = probe(ip, me);
        assert_eq!(parse_claim(&p), None);
        // A probe is a request the owner answers (not a gratuitous one), and the answer goes
        // back to the prober as a claim.
        let asked = parse_request(&p).unwrap();
        assert!(!asked.is_gratuitous());
        assert_eq!(asked.target, ip);
        let other = Mac([2, 0, 0, 0, 0, 0x22]);
        assert_eq!(
            parse_claim(&reply(&asked, other)),
            Some(Claim { ip, mac: other })
        );
        let g = gratuitous(ip, me);
        for cut in 0..42 {
            assert_eq!(parse_claim(&g[..cut]), None, "truncated at {cut}");
        }
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..128)) {
            let _ = parse_request(&bytes);
            let _ = parse_claim(&bytes);
        }
    }
}

//! IPv6 Neighbor Discovery (RFC 4861) over Ethernet: parsing Neighbor Solicitations, building
//! Neighbor Advertisements.

use std::net::Ipv6Addr;

use super::{Mac, array, be16};

/// EtherType of IPv6.
pub const ETHERTYPE_IPV6: u16 = 0x86DD;
const NEXT_HEADER_ICMPV6: u8 = 58;
const NEIGHBOR_SOLICITATION: u8 = 135;
const NEIGHBOR_ADVERTISEMENT: u8 = 136;
const OPTION_SOURCE_LLA: u8 = 1;
const OPTION_TARGET_LLA: u8 = 2;
/// Neighbor Discovery packets must arrive with hop limit 255 (proof they were not routed).
const HOP_LIMIT: u8 = 255;
const ETH: usize = 14;
const IP: usize = 40;

/// The all-nodes multicast address, where DAD answers and unsolicited advertisements go.
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// A valid Neighbor Solicitation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Solicitation {
    /// The IPv6 source; unspecified (`::`) for Duplicate Address Detection.
    pub source: Ipv6Addr,
    /// The Ethernet source of the frame.
    pub source_mac: Mac,
    /// The Source Link-Layer Address option, if present.
    pub source_lla: Option<Mac>,
    /// The address asked about.
    pub target: Ipv6Addr,
}

impl Solicitation {
    /// Duplicate Address Detection: someone wants to use `target` and asks if it is taken.
    pub fn is_dad(&self) -> bool {
        self.source.is_unspecified()
    }
}

/// The solicited-node multicast group of `ip` (ff02::1:ffXX:XXXX).
pub fn solicited_node(ip: Ipv6Addr) -> Ipv6Addr {
    let o = ip.octets();
    Ipv6Addr::from([
        0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, o[13], o[14], o[15],
    ])
}

/// The ICMPv6 checksum (RFC 4443 2.3) of `icmp` (with its checksum field zero or not: a
/// correct packet sums to zero) between `src` and `dst`.
fn checksum(src: Ipv6Addr, dst: Ipv6Addr, icmp: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks(2) {
            let hi = u64::from(pair.first().copied().unwrap_or(0));
            let lo = u64::from(pair.get(1).copied().unwrap_or(0));
            sum += (hi << 8) | lo;
        }
    };
    add(&src.octets());
    add(&dst.octets());
    // Upper-layer length (32 bits) and next header: ICMP messages here are far below 2^32.
    add(&(icmp.len() as u32).to_be_bytes());
    add(&[0, 0, 0, NEXT_HEADER_ICMPV6]);
    add(icmp);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // The loop leaves at most 16 bits.
    !(sum as u16)
}

/// Parses an Ethernet frame holding a Neighbor Solicitation that passes RFC 4861 7.1.1's
/// validity checks (hop limit 255, code 0, correct checksum, length, target not multicast,
/// no zero-length option, DAD only to a solicited-node group and without a source link-layer
/// option); `None` for anything else.
pub fn parse_solicitation(frame: &[u8]) -> Option<Solicitation> {
    if be16(frame, 12)? != ETHERTYPE_IPV6 {
        return None;
    }
    let ip = frame.get(ETH..)?;
    if ip.first()? >> 4 != 6 || *ip.get(6)? != NEXT_HEADER_ICMPV6 || *ip.get(7)? != HOP_LIMIT {
        return None;
    }
    let payload = usize::from(be16(ip, 4)?);
    let source = Ipv6Addr::from(array::<16>(ip, 8)?);
    let destination = Ipv6Addr::from(array::<16>(ip, 24)?);
    let icmp = ip.get(IP..IP.checked_add(payload)?)?;
    if icmp.len() < 24 || *icmp.first()? != NEIGHBOR_SOLICITATION || *icmp.get(1)? != 0 {
        return None;
    }
    if checksum(source, destination, icmp) != 0 {
        return None;
    }
    let target = Ipv6Addr::from(array::<16>(icmp, 8)?);
    if target.is_multicast() {
        return None;
    }
    let mut source_lla = None;
    let mut options = icmp.get(24..)?;
    while !options.is_empty() {
        let kind = *options.first()?;
        let len = usize::from(*options.get(1)?) * 8;
        if len == 0 {
            return None;
        }
        let option = options.get(..len)?;
        if kind == OPTION_SOURCE_LLA {
            source_lla = Some(Mac(array(option, 2)?));
        }
        options = options.get(len..)?;
    }
    if source.is_unspecified() && (destination != solicited_node(target) || source_lla.is_some()) {
        return None;
    }
    Some(Solicitation {
        source,
        source_mac: Mac(array(frame, 6)?),
        source_lla,
        target,
    })
}

/// A Neighbor Advertisement for `target` at `mac`, from `target` itself, with the Override
/// flag, the Router flag clear, a Target Link-Layer Address option and hop limit 255.
pub fn advertisement(
    target: Ipv6Addr,
    mac: Mac,
    to: Ipv6Addr,
    to_mac: Mac,
    solicited: bool,
) -> Vec<u8> {
    let mut icmp = Vec::with_capacity(32);
    icmp.extend_from_slice(&[NEIGHBOR_ADVERTISEMENT, 0, 0, 0]);
    // R = 0x80 (never: we are not announcing a router), S = 0x40, O = 0x20.
    let flags = if solicited { 0x40 | 0x20 } else { 0x20 };
    icmp.extend_from_slice(&[flags, 0, 0, 0]);
    icmp.extend_from_slice(&target.octets());
    icmp.extend_from_slice(&[OPTION_TARGET_LLA, 1]);
    icmp.extend_from_slice(&mac.0);
    let sum = checksum(target, to, &icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());

    let mut f = Vec::with_capacity(ETH + IP + icmp.len());
    f.extend_from_slice(&to_mac.0);
    f.extend_from_slice(&mac.0);
    f.extend_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    // 32 bytes of ICMPv6.
    f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    f.extend_from_slice(&[NEXT_HEADER_ICMPV6, HOP_LIMIT]);
    f.extend_from_slice(&target.octets());
    f.extend_from_slice(&to.octets());
    f.extend_from_slice(&icmp);
    f
}

/// The answer to `ns` saying its target is at `mac`. To the asker with the Solicited flag; for
/// Duplicate Address Detection (no source address to answer) to all nodes without it, as RFC
/// 4861 7.2.4 requires.
pub fn answer(ns: &Solicitation, mac: Mac) -> Vec<u8> {
    if ns.is_dad() {
        unsolicited(ns.target, mac)
    } else {
        let to_mac = ns.source_lla.unwrap_or(ns.source_mac);
        advertisement(ns.target, mac, ns.source, to_mac, true)
    }
}

/// An unsolicited Neighbor Advertisement to all nodes (Override set, Solicited clear): every
/// neighbour holding an entry for `target` replaces its MAC with `mac`.
pub fn unsolicited(target: Ipv6Addr, mac: Mac) -> Vec<u8> {
    advertisement(
        target,
        mac,
        ALL_NODES,
        Mac::ipv6_multicast(ALL_NODES),
        false,
    )
}

/// A Neighbor Advertisement seen on the segment: `mac` says it has `target`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Advertised {
    /// The address advertised.
    pub target: Ipv6Addr,
    /// Its Target Link-Layer Address option, or else the frame's Ethernet source.
    pub mac: Mac,
}

/// Parses an Ethernet frame holding a Neighbor Advertisement that passes RFC 4861 7.1.2's
/// validity checks (hop limit 255, code 0, correct checksum, length, target not multicast,
/// no zero-length option); `None` for anything else.
pub fn parse_advertisement(frame: &[u8]) -> Option<Advertised> {
    if be16(frame, 12)? != ETHERTYPE_IPV6 {
        return None;
    }
    let ip = frame.get(ETH..)?;
    if ip.first()? >> 4 != 6 || *ip.get(6)? != NEXT_HEADER_ICMPV6 || *ip.get(7)? != HOP_LIMIT {
        return None;
    }
    let payload = usize::from(be16(ip, 4)?);
    let source = Ipv6Addr::from(array::<16>(ip, 8)?);
    let destination = Ipv6Addr::from(array::<16>(ip, 24)?);
    let icmp = ip.get(IP..IP.checked_add(payload)?)?;
    if icmp.len() < 24 || *icmp.first()? != NEIGHBOR_ADVERTISEMENT || *icmp.get(1)? != 0 {
        return None;
    }
    if checksum(source, destination, icmp) != 0 {
        return None;
    }
    let target = Ipv6Addr::from(array::<16>(icmp, 8)?);
    if target.is_multicast() {
        return None;
    }
    let mut mac = Mac(array(frame, 6)?);
    let mut options = icmp.get(24..)?;
    while !options.is_empty() {
        let kind = *options.first()?;
        let len = usize::from(*options.get(1)?) * 8;
        if len == 0 {
            return None;
        }
        let option = options.get(..len)?;
        if kind == OPTION_TARGET_LLA {
            mac = Mac(array(option, 2)?);
        }
        options = options.get(len..)?;
    }
    Some(Advertised { target, mac })
}

/// A Duplicate Address Detection solicitation for `target` from `mac` (source `::`, to the
/// target's solicited-node group, no source link-layer option): whoever has `target` answers
/// to all nodes, and no neighbour cache learns anything from it.
pub fn probe(target: Ipv6Addr, mac: Mac) -> Vec<u8> {
    let group = solicited_node(target);
    let mut icmp = Vec::with_capacity(24);
    icmp.extend_from_slice(&[NEIGHBOR_SOLICITATION, 0, 0, 0, 0, 0, 0, 0]);
    icmp.extend_from_slice(&target.octets());
    let sum = checksum(Ipv6Addr::UNSPECIFIED, group, &icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let mut f = Vec::with_capacity(ETH + IP + icmp.len());
    f.extend_from_slice(&Mac::ipv6_multicast(group).0);
    f.extend_from_slice(&mac.0);
    f.extend_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    // 24 bytes of ICMPv6.
    f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    f.extend_from_slice(&[NEXT_HEADER_ICMPV6, HOP_LIMIT]);
    f.extend_from_slice(&Ipv6Addr::UNSPECIFIED.octets());
    f.extend_from_slice(&group.octets());
    f.extend_from_slice(&icmp);
    f
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

    // Captured from Linux 6.x in a namespace: fd00::a (02:00:00:00:00:0a) resolving fd00::b.
    const NS: &str = "3333ff00000b 02000000000a 86dd
        6000000000203aff fd00000000000000000000000000000a ff0200000000000000000001ff00000b
        87007d7300000000 fd00000000000000000000000000000b 010102000000000a";
    // And the kernel's answer from fd00::b (02:00:00:00:00:0b).
    const NA: &str = "02000000000a 02000000000b 86dd
        6000000000203aff fd00000000000000000000000000000b fd00000000000000000000000000000a
        88001c7660000000 fd00000000000000000000000000000b 020102000000000b";

    fn a() -> Mac {
        Mac([2, 0, 0, 0, 0, 0x0a])
    }
    fn b() -> Mac {
        Mac([2, 0, 0, 0, 0, 0x0b])
    }

    #[test]
    fn parses_a_solicitation_captured_from_linux() {
        let ns = parse_solicitation(&hex(NS)).unwrap();
        assert_eq!(
            ns,
            Solicitation {
                source: "fd00::a".parse().unwrap(),
                source_mac: a(),
                source_lla: Some(a()),
                target: "fd00::b".parse().unwrap(),
            }
        );
        assert!(!ns.is_dad());
    }

    #[test]
    fn answers_exactly_as_the_linux_kernel_does() {
        let ns = parse_solicitation(&hex(NS)).unwrap();
        assert_eq!(answer(&ns, b()), hex(NA));
    }

    #[test]
    fn answers_dad_to_all_nodes_without_the_solicited_flag() {
        // DAD for fd00::b: from ::, to its solicited-node group, no source link-layer option.
        let mut icmp = hex("87000000 00000000 fd00000000000000000000000000000b");
        let group = solicited_node("fd00::b".parse().unwrap());
        assert_eq!(group, "ff02::1:ff00:b".parse::<Ipv6Addr>().unwrap());
        let sum = checksum(Ipv6Addr::UNSPECIFIED, group, &icmp);
        icmp[2..4].copy_from_slice(&sum.to_be_bytes());
        let mut frame = hex("3333ff00000b 02000000000a 86dd 6000000000183aff");
        frame.extend_from_slice(&[0; 16]);
        frame.extend_from_slice(&group.octets());
        frame.extend_from_slice(&icmp);
        let ns = parse_solicitation(&frame).unwrap();
        assert!(ns.is_dad());
        let na = answer(&ns, b());
        assert_eq!(&na[0..6], &[0x33, 0x33, 0, 0, 0, 1]);
        assert_eq!(&na[38..54], &ALL_NODES.octets());
        assert_eq!(na[21], 255, "hop limit");
        assert_eq!(na[58], 0x20, "override only: not solicited, not a router");
        assert_eq!(
            checksum("fd00::b".parse().unwrap(), ALL_NODES, &na[54..]),
            0
        );
        // A DAD probe carrying a source link-layer option is invalid (RFC 4861 7.1.1).
        let mut with_lla = frame.clone();
        with_lla[19] = 0x20;
        let mut icmp2 = with_lla[54..].to_vec();
        icmp2.extend_from_slice(&hex("010102000000000a"));
        icmp2[2..4].copy_from_slice(&[0, 0]);
        let sum = checksum(Ipv6Addr::UNSPECIFIED, group, &icmp2);
        icmp2[2..4].copy_from_slice(&sum.to_be_bytes());
        with_lla.truncate(54);
        with_lla.extend_from_slice(&icmp2);
        assert_eq!(parse_solicitation(&with_lla), None);
    }

    #[test]
    fn unsolicited_advertisement_to_all_nodes() {
        let na = unsolicited("fd00::b".parse().unwrap(), b());
        let want = {
            let mut icmp =
                hex("88000000 20000000 fd00000000000000000000000000000b 020102000000000b");
            let sum = checksum("fd00::b".parse().unwrap(), ALL_NODES, &icmp);
            icmp[2..4].copy_from_slice(&sum.to_be_bytes());
            let mut f = hex(
                "333300000001 02000000000b 86dd 6000000000203aff fd00000000000000000000000000000b ff020000000000000000000000000001",
            );
            f.extend_from_slice(&icmp);
            f
        };
        assert_eq!(na, want);
        assert_eq!(na.len(), 86);
        // Not a solicitation: the announcer never answers advertisements.
        assert_eq!(parse_solicitation(&na), None);
    }

    #[test]
    fn refuses_invalid_solicitations() {
        let good = hex(NS);
        for cut in 0..good.len() {
            assert_eq!(parse_solicitation(&good[..cut]), None, "truncated at {cut}");
        }
        let mutate = |at: usize, v: u8| {
            let mut f = good.clone();
            f[at] = v;
            parse_solicitation(&f)
        };
        assert_eq!(
            mutate(21, 64),
            None,
            "hop limit not 255: routed from elsewhere"
        );
        assert_eq!(mutate(55, 1), None, "code not 0");
        assert_eq!(mutate(57, 0x74), None, "bad checksum");
        assert_eq!(mutate(20, 17), None, "not ICMPv6");
        assert_eq!(mutate(79, 0), None, "zero-length option");
        // A multicast target, with a correct checksum so only the target check can refuse it.
        let mut f = good.clone();
        f[62] = 0xff;
        f[56..58].copy_from_slice(&[0, 0]);
        let sum = checksum(
            Ipv6Addr::from(<[u8; 16]>::try_from(&f[22..38]).unwrap()),
            Ipv6Addr::from(<[u8; 16]>::try_from(&f[38..54]).unwrap()),
            &f[54..],
        );
        f[56..58].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(parse_solicitation(&f), None, "multicast target");
        f[62] = 0xfd;
        f[56..58].copy_from_slice(&[0, 0]);
        let sum = checksum(
            Ipv6Addr::from(<[u8; 16]>::try_from(&f[22..38]).unwrap()),
            Ipv6Addr::from(<[u8; 16]>::try_from(&f[38..54]).unwrap()),
            &f[54..],
        );
        f[56..58].copy_from_slice(&sum.to_be_bytes());
        assert!(
            parse_solicitation(&f).is_some(),
            "the same frame with its target restored"
        );
    }

    #[test]
    fn advertisements_are_claims_and_probes_are_dad() {
        let target: Ipv6Addr = "fd00::240".parse().unwrap();
        let me = Mac([2, 0, 0, 0, 0, 0x11]);
        let want = Some(Advertised { target, mac: me });
        assert_eq!(parse_advertisement(&unsolicited(target, me)), want);
        let p = probe(target, me);
        // A valid DAD solicitation: the owner answers it to all nodes, which is a claim.
        let ns = parse_solicitation(&p).unwrap();
        assert!(ns.is_dad());
        assert_eq!(ns.target, target);
        assert_eq!(ns.source_mac, me);
        let other = Mac([2, 0, 0, 0, 0, 0x22]);
        assert_eq!(
            parse_advertisement(&answer(&ns, other)),
            Some(Advertised { target, mac: other })
        );
        assert_eq!(parse_advertisement(&p), None);
        let mut bad = unsolicited(target, me);
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(parse_advertisement(&bad), None, "checksum");
        let good = unsolicited(target, me);
        for cut in 0..good.len() {
            assert_eq!(
                parse_advertisement(&good[..cut]),
                None,
                "truncated at {cut}"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn advertisement_parser_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..160)) {
            let _ = parse_advertisement(&bytes);
        }

        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..160)) {
            let _ = parse_solicitation(&bytes);
        }

        #[test]
        fn never_panics_on_arbitrary_solicitation_bodies(tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..100), plen in 0u16..200) {
            // A valid Ethernet + IPv6 header so the fuzzing reaches the ICMPv6 and options code.
            let mut f = hex("3333ff00000b 02000000000a 86dd 60000000");
            f.extend_from_slice(&plen.to_be_bytes());
            f.extend_from_slice(&[58, 255]);
            f.extend_from_slice(&[0; 32]);
            f.push(135);
            f.extend_from_slice(&tail);
            let _ = parse_solicitation(&f);
        }
    }
}

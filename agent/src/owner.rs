//! Who answers for a Layer2 IP: rendezvous (highest random weight) hashing.
//!
//! Every agent computes `owner(ip) = argmax over (candidates ∩ alive) of weight(node, ip)`
//! from the same inputs and gets the same answer, so no central write is on the failover
//! path. Rendezvous hashing moves the fewest IPs possible: a node that leaves takes away only
//! the IPs it owned (each goes to its own runner-up), and a node that is not the owner of an
//! IP can come or go without moving it.
//!
//! The weight must be the same in every process and every version of Berth, or two agents of
//! different versions would elect different owners during a rolling upgrade and both answer.
//! It is therefore defined here, byte for byte, not taken from a library whose algorithm may
//! change (std's `DefaultHasher` explicitly may):
//!
//! - input: the node name's UTF-8 bytes, one 0xff byte (never in UTF-8, so `("ab", x)` and
//!   `("a", "b"...)` cannot collide), then the IP: 4 bytes for IPv4, 16 for IPv6, then one byte
//!   4 or 6;
//! - hash: 64-bit FNV-1a over that input, then the 64-bit finaliser of MurmurHash3 (`fmix64`)
//!   so that names differing in one character give unrelated weights;
//! - ties (astronomically rare) go to the greater node name.
//!
//! Changing any of this is a breaking change of the agents' protocol.

use std::collections::BTreeSet;
use std::net::IpAddr;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

/// The weight of `node` for `ip` (see the module documentation for the exact definition).
pub fn weight(node: &str, ip: IpAddr) -> u64 {
    let mut h = fnv1a(FNV_OFFSET, node.as_bytes());
    h = fnv1a(h, &[0xff]);
    h = match ip {
        IpAddr::V4(a) => fnv1a(fnv1a(h, &a.octets()), &[4]),
        IpAddr::V6(a) => fnv1a(fnv1a(h, &a.octets()), &[6]),
    };
    fmix64(h)
}

/// The owner of `ip`: the candidate that is alive with the greatest weight; `None` when no
/// candidate is alive (then nobody answers).
pub fn owner<'a>(
    ip: IpAddr,
    candidates: &'a BTreeSet<String>,
    alive: &BTreeSet<String>,
) -> Option<&'a str> {
    candidates
        .iter()
        .filter(|n| alive.contains(*n))
        .max_by_key(|n| (weight(n, ip), n.as_str()))
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn ips(n: u32) -> Vec<IpAddr> {
        (0..n)
            .map(|i| {
                if i % 2 == 0 {
                    IpAddr::from(std::net::Ipv4Addr::from(0xc0a8_0100 + i))
                } else {
                    IpAddr::from(std::net::Ipv6Addr::from(0xfd00_u128 << 112 | u128::from(i)))
                }
            })
            .collect()
    }

    #[test]
    fn weights_are_pinned_across_versions() {
        // If these change, agents of two versions elect different owners: see the module doc.
        // (Values computed independently with a 10-line Python version of the definition.)
        assert_eq!(
            weight("node1", "192.168.1.240".parse().unwrap()),
            0xa4c6_6b4a_997d_89a1
        );
        assert_eq!(
            weight("node2", "fd00::240".parse().unwrap()),
            0x439f_49ff_a528_4a93
        );
        assert_ne!(
            weight("ab", "10.0.0.1".parse().unwrap()),
            weight("a", "10.0.0.1".parse().unwrap())
        );
    }

    #[test]
    fn only_alive_candidates_own() {
        let c = set(&["n1", "n2", "n3"]);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(owner(ip, &c, &set(&[])), None);
        assert_eq!(owner(ip, &c, &set(&["n9"])), None);
        assert_eq!(owner(ip, &c, &set(&["n2", "n9"])), Some("n2"));
        assert_eq!(owner(ip, &set(&[]), &set(&["n1"])), None);
    }

    #[test]
    fn agents_agree_whatever_order_they_learn_names_in() {
        let names = ["n1", "n2", "n3", "n4", "n5"];
        let a: BTreeSet<String> = names.iter().map(|s| s.to_string()).collect();
        let b: BTreeSet<String> = names.iter().rev().map(|s| s.to_string()).collect();
        for ip in ips(200) {
            assert_eq!(owner(ip, &a, &a), owner(ip, &b, &b));
        }
    }

    #[test]
    fn removing_a_non_owner_moves_nothing_and_removing_the_owner_moves_only_its_ips() {
        let all = set(&["n1", "n2", "n3", "n4", "n5"]);
        let addrs = ips(500);
        let before: Vec<String> = addrs
            .iter()
            .map(|ip| owner(*ip, &all, &all).unwrap().to_owned())
            .collect();
        for gone in ["n1", "n3", "n5"] {
            let mut alive = all.clone();
            alive.remove(gone);
            for (ip, was) in addrs.iter().zip(&before) {
                let now = owner(*ip, &all, &alive).unwrap();
                if was == gone {
                    assert_ne!(now, gone);
                } else {
                    assert_eq!(now, was, "{ip} moved although its owner {was} stayed");
                }
            }
        }
    }

    #[test]
    fn spreads_ips_over_nodes() {
        let all = set(&["n1", "n2", "n3"]);
        let mut count = std::collections::BTreeMap::<&str, usize>::new();
        for ip in ips(3000) {
            *count.entry(owner(ip, &all, &all).unwrap()).or_default() += 1;
        }
        for (node, n) in &count {
            assert!(
                (800..1200).contains(n),
                "{node} owns {n} of 3000: {count:?}"
            );
        }
    }
}

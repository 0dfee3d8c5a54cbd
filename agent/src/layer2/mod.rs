//! Layer2 announcement: answering ARP (IPv4) and Neighbor Solicitations (IPv6) for the IPs this
//! node owns, and announcing them on takeover.
//!
//! [`arp`] and [`ndp`] are pure: bytes in, bytes out. [`interface`] finds the interface and its
//! MAC; [`link`] decides whether it can serve (fed by [`link_watch`]); [`announcer`] does the
//! socket I/O.

pub mod announcer;
pub mod arbiter;
pub mod arp;
pub mod arp_ignore;
pub mod interface;
pub mod link;
pub mod link_watch;
pub mod ndp;
pub mod stall;

use std::fmt;
use std::str::FromStr;

/// An Ethernet MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// ff:ff:ff:ff:ff:ff.
    pub const BROADCAST: Mac = Mac([0xff; 6]);

    /// The Ethernet multicast MAC of an IPv6 multicast group (RFC 2464: 33:33 + last 4 bytes).
    pub fn ipv6_multicast(group: std::net::Ipv6Addr) -> Mac {
        let o = group.octets();
        Mac([0x33, 0x33, o[12], o[13], o[14], o[15]])
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// A MAC address that is not six colon-separated hex bytes.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a MAC address (expected six hex bytes separated by colons)")]
pub struct BadMac(String);

impl FromStr for Mac {
    type Err = BadMac;

    fn from_str(s: &str) -> Result<Mac, BadMac> {
        let mut out = [0u8; 6];
        let mut parts = s.trim().split(':');
        for byte in &mut out {
            let p = parts.next().ok_or_else(|| BadMac(s.to_owned()))?;
            if p.is_empty() || p.len() > 2 {
                return Err(BadMac(s.to_owned()));
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| BadMac(s.to_owned()))?;
        }
        if parts.next().is_some() {
            return Err(BadMac(s.to_owned()));
        }
        Ok(Mac(out))
    }
}

/// Bytes `at..at+N` of `b`, or `None` when `b` is shorter.
fn array<const N: usize>(b: &[u8], at: usize) -> Option<[u8; N]> {
    b.get(at..at.checked_add(N)?)?.try_into().ok()
}

/// The big-endian u16 at `at`.
fn be16(b: &[u8], at: usize) -> Option<u16> {
    array::<2>(b, at).map(u16::from_be_bytes)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn macs_parse_and_print() {
        let m: Mac = "02:00:0a:0B:0c:ff\n".parse().unwrap();
        assert_eq!(m, Mac([2, 0, 0x0a, 0x0b, 0x0c, 0xff]));
        assert_eq!(m.to_string(), "02:00:0a:0b:0c:ff");
        for bad in [
            "",
            "02:00:0a:0b:0c",
            "02:00:0a:0b:0c:ff:00",
            "02:00:0a:0b:0c:fff",
            "zz:00:0a:0b:0c:ff",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
        assert_eq!(
            Mac::ipv6_multicast("ff02::1:ff00:5".parse().unwrap()),
            Mac([0x33, 0x33, 0xff, 0, 0, 5])
        );
    }
}

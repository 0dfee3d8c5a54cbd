//! Finding the interface to answer on: by name, or `can_reach:<ip>` (the interface whose
//! connected subnet holds the IP), with its index and MAC.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use super::Mac;

/// An interface that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum InterfaceError {
    /// No such interface.
    #[error(
        "interface {0:?} does not exist on this node (see `ip link`); fix the Eip's spec.interface"
    )]
    Missing(String),
    /// No connected subnet holds the IP.
    #[error(
        "no interface of this node has a connected subnet holding {0} (see `ip route`); fix the Eip's spec.interface (can_reach:<ip>)"
    )]
    Unreachable(IpAddr),
    /// The spec is neither a name nor `can_reach:<ip>`.
    #[error("{0:?} is neither an interface name nor can_reach:<ip>")]
    BadSpec(String),
    /// Reading sysfs or procfs failed.
    #[error("reading {path}: {why}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        why: String,
    },
}

/// A resolved interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    /// Its name.
    pub name: String,
    /// Its index.
    pub index: u32,
    /// Its MAC: the one every answer carries (never another node's).
    pub mac: Mac,
}

fn read(path: &Path) -> Result<String, InterfaceError> {
    std::fs::read_to_string(path).map_err(|e| InterfaceError::Read {
        path: path.display().to_string(),
        why: e.to_string(),
    })
}

/// Resolves `spec` (a name or `can_reach:<ip>`) against this node's interfaces.
pub fn resolve(spec: &str) -> Result<Interface, InterfaceError> {
    let name = match spec.strip_prefix("can_reach:") {
        Some(ip) => {
            let ip: IpAddr = ip
                .parse()
                .map_err(|_| InterfaceError::BadSpec(spec.to_owned()))?;
            let table = match ip {
                IpAddr::V4(_) => read(Path::new("/proc/net/route"))?,
                IpAddr::V6(_) => read(Path::new("/proc/net/ipv6_route"))?,
            };
            let found = match ip {
                IpAddr::V4(a) => connected_v4(&table, a),
                IpAddr::V6(a) => connected_v6(&table, a),
            };
            found.ok_or(InterfaceError::Unreachable(ip))?
        }
        None => spec.to_owned(),
    };
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(InterfaceError::BadSpec(spec.to_owned()));
    }
    let dir = Path::new("/sys/class/net").join(&name);
    if !dir.exists() {
        return Err(InterfaceError::Missing(name));
    }
    let index_path = dir.join("ifindex");
    let index = read(&index_path)?
        .trim()
        .parse()
        .map_err(|e: std::num::ParseIntError| InterfaceError::Read {
            path: index_path.display().to_string(),
            why: e.to_string(),
        })?;
    let mac_path = dir.join("address");
    let mac = read(&mac_path)?
        .parse()
        .map_err(|e: super::BadMac| InterfaceError::Read {
            path: mac_path.display().to_string(),
            why: e.to_string(),
        })?;
    Ok(Interface { name, index, mac })
}

/// The interface of the longest connected (gateway-less) IPv4 route holding `ip`, from the
/// text of `/proc/net/route` (addresses in host byte order hex).
pub fn connected_v4(table: &str, ip: Ipv4Addr) -> Option<String> {
    let ip = u32::from_ne_bytes(ip.octets());
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let dest = u32::from_str_radix(f.get(1)?, 16).ok()?;
            let gateway = u32::from_str_radix(f.get(2)?, 16).ok()?;
            let mask = u32::from_str_radix(f.get(7)?, 16).ok()?;
            let name = (*f.first()?).to_owned();
            (gateway == 0 && mask != 0 && ip & mask == dest & mask)
                .then(|| (mask.count_ones(), name))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, name)| name)
}

/// The same for IPv6, from `/proc/net/ipv6_route` (destination, prefix length, ..., next hop,
/// ..., interface); link-local, loopback and multicast routes are skipped.
pub fn connected_v6(table: &str, ip: Ipv6Addr) -> Option<String> {
    let ip = u128::from(ip);
    table
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let dest = u128::from_str_radix(f.first()?, 16).ok()?;
            let len = u32::from_str_radix(f.get(1)?, 16).ok()?;
            let next_hop = u128::from_str_radix(f.get(4)?, 16).ok()?;
            let name = *f.get(9)?;
            if len == 0 || len > 128 || next_hop != 0 || name == "lo" {
                return None;
            }
            let mask = u128::MAX << (128 - len);
            let d = Ipv6Addr::from(dest);
            if d.is_multicast() || (d.segments()[0] & 0xffc0) == 0xfe80 {
                return None;
            }
            (ip & mask == dest & mask).then(|| (len, name.to_owned()))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, name)| name)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    // 10.0.0.0/24 on eth0, 10.0.0.0/16 on eth1, default via 10.0.0.1 on eth0 (little-endian).
    const ROUTE: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t0100000A\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth1\t0000000A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0
eth0\t0000000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
";
    const ROUTE6: &str = "\
fd000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0
fe800000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth1
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd000000000000000000000000000001 00000400 00000001 00000000 00000003     eth0
fd000000000000000000000000000001 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000002 00000000 80200001       lo
";

    #[test]
    fn can_reach_picks_the_longest_connected_subnet() {
        // Host byte order as the kernel prints it: this test runs on little-endian machines.
        if cfg!(target_endian = "little") {
            assert_eq!(
                connected_v4(ROUTE, "10.0.0.7".parse().unwrap()).as_deref(),
                Some("eth0")
            );
            assert_eq!(
                connected_v4(ROUTE, "10.0.9.7".parse().unwrap()).as_deref(),
                Some("eth1")
            );
            assert_eq!(
                connected_v4(ROUTE, "192.0.2.1".parse().unwrap()),
                None,
                "only via the default gateway"
            );
        }
        assert_eq!(
            connected_v6(ROUTE6, "fd00::99".parse().unwrap()).as_deref(),
            Some("eth0")
        );
        assert_eq!(connected_v6(ROUTE6, "fe80::1".parse().unwrap()), None);
        assert_eq!(connected_v6(ROUTE6, "2001:db8::1".parse().unwrap()), None);
    }

    #[test]
    fn resolves_loopback_and_refuses_what_is_not_there() {
        let lo = resolve("lo").unwrap();
        assert_eq!(lo.mac, Mac::default());
        assert!(lo.index >= 1);
        assert!(matches!(
            resolve("no-such-if0"),
            Err(InterfaceError::Missing(_))
        ));
        assert!(matches!(resolve("../x"), Err(InterfaceError::BadSpec(_))));
        assert!(matches!(
            resolve("can_reach:nope"),
            Err(InterfaceError::BadSpec(_))
        ));
        assert!(matches!(
            resolve("can_reach:203.0.113.254"),
            Err(InterfaceError::Unreachable(_))
        ));
    }
}

//! Addresses as integers: families, inclusive ranges, the pool address syntax, exact counts.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::IpNet;

use super::error::ParseError;

/// An IP family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// The family of an address.
    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// Turns the integer form back into an address of this family.
    pub fn addr(self, v: u128) -> IpAddr {
        match self {
            // Values of a V4 range never exceed u32::MAX: they are built from Ipv4Addr.
            Family::V4 => IpAddr::V4(Ipv4Addr::from(u32::try_from(v).unwrap_or(u32::MAX))),
            Family::V6 => IpAddr::V6(Ipv6Addr::from(v)),
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// The integer form of an address, ordered within its family.
pub fn to_int(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// An inclusive range of addresses of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Range {
    /// The family of both ends.
    pub family: Family,
    /// First address (integer form).
    pub start: u128,
    /// Last address (integer form), `>= start`.
    pub end: u128,
}

impl Range {
    /// A one-address range.
    pub fn single(ip: IpAddr) -> Range {
        let v = to_int(ip);
        Range {
            family: Family::of(ip),
            start: v,
            end: v,
        }
    }

    /// Whether `ip` lies in the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        Family::of(ip) == self.family && (self.start..=self.end).contains(&to_int(ip))
    }

    /// Whether two ranges share an address.
    pub fn overlaps(&self, other: &Range) -> bool {
        self.family == other.family && self.start <= other.end && other.start <= self.end
    }

    /// Number of addresses in the range.
    pub fn len(&self) -> Count {
        Count::range_len(self.start, self.end)
    }

    /// Always false: a range holds at least one address. Present for clippy's `len` rule.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// First address.
    pub fn first(&self) -> IpAddr {
        self.family.addr(self.start)
    }

    /// Last address.
    pub fn last(&self) -> IpAddr {
        self.family.addr(self.end)
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.first())
        } else {
            write!(f, "{}-{}", self.first(), self.last())
        }
    }
}

/// A pool's `address` or one of its `excludes`, as the user wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressSpec {
    /// One address.
    Single(IpAddr),
    /// A CIDR block, always at its network address.
    Cidr(IpNet),
    /// An inclusive range `a-b`.
    Range(IpAddr, IpAddr),
}

const FORMS: &str =
    "expected an IP (10.0.0.5), a CIDR (10.0.0.0/24) or a range (10.0.0.10-10.0.0.20)";

impl FromStr for AddressSpec {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let input = s.trim();
        let bad = |why: String| ParseError {
            input: s.to_owned(),
            why,
        };
        if let Some((a, b)) = input.split_once('-') {
            let a: IpAddr = a
                .trim()
                .parse()
                .map_err(|_| bad(format!("{:?} is not an IP address; {FORMS}", a.trim())))?;
            let b: IpAddr = b
                .trim()
                .parse()
                .map_err(|_| bad(format!("{:?} is not an IP address; {FORMS}", b.trim())))?;
            if Family::of(a) != Family::of(b) {
                return Err(bad(format!(
                    "the range mixes {} and {}: both ends must be of one family",
                    Family::of(a),
                    Family::of(b)
                )));
            }
            if to_int(b) < to_int(a) {
                return Err(bad(format!(
                    "the range ends ({b}) before it starts ({a}): write it as {b}-{a}"
                )));
            }
            return Ok(AddressSpec::Range(a, b));
        }
        if input.contains('/') {
            let net: IpNet = input
                .parse()
                .map_err(|_| bad(format!("not a valid CIDR; {FORMS}")))?;
            if net.trunc() != net {
                return Err(bad(format!(
                    "the CIDR has host bits set: did you mean {}?",
                    net.trunc()
                )));
            }
            return Ok(AddressSpec::Cidr(net));
        }
        let ip: IpAddr = input.parse().map_err(|_| bad(FORMS.to_owned()))?;
        Ok(AddressSpec::Single(ip))
    }
}

impl AddressSpec {
    /// The family of the addresses.
    pub fn family(&self) -> Family {
        match self {
            AddressSpec::Single(ip) | AddressSpec::Range(ip, _) => Family::of(*ip),
            AddressSpec::Cidr(net) => Family::of(net.addr()),
        }
    }

    /// Every address the spec names, as one range.
    pub fn range(&self) -> Range {
        match *self {
            AddressSpec::Single(ip) => Range::single(ip),
            AddressSpec::Range(a, b) => Range {
                family: Family::of(a),
                start: to_int(a),
                end: to_int(b),
            },
            AddressSpec::Cidr(net) => Range {
                family: Family::of(net.addr()),
                start: to_int(net.network()),
                end: to_int(net.broadcast()),
            },
        }
    }

    /// The network and broadcast addresses of an IPv4 CIDR of /30 or wider: the ones pools
    /// skip by default. A /31 or /32 has none (RFC 3021), and IPv6 has no broadcast.
    pub fn network_and_broadcast(&self) -> Option<(IpAddr, IpAddr)> {
        match self {
            AddressSpec::Cidr(net @ IpNet::V4(_)) if net.prefix_len() <= 30 => {
                Some((net.network(), net.broadcast()))
            }
            _ => None,
        }
    }
}

impl fmt::Display for AddressSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddressSpec::Single(ip) => write!(f, "{ip}"),
            AddressSpec::Cidr(net) => write!(f, "{net}"),
            AddressSpec::Range(a, b) => write!(f, "{a}-{b}"),
        }
    }
}

/// An exact count of addresses, from 0 to 2^128 inclusive (an IPv6 /0 holds one more address
/// than `u128` can count). Never a float.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Count {
    /// Set only for exactly 2^128, with `low == 0`.
    full: bool,
    low: u128,
}

impl Count {
    /// Zero addresses.
    pub const ZERO: Count = Count {
        full: false,
        low: 0,
    };

    /// A count that fits in `u128`.
    pub fn new(n: u128) -> Count {
        Count {
            full: false,
            low: n,
        }
    }

    /// Number of addresses in `start..=end`.
    pub fn range_len(start: u128, end: u128) -> Count {
        match (end - start).checked_add(1) {
            Some(n) => Count::new(n),
            None => Count { full: true, low: 0 },
        }
    }

    /// The count as `u128`, or `None` for exactly 2^128.
    pub fn as_u128(&self) -> Option<u128> {
        (!self.full).then_some(self.low)
    }

    /// Sum; saturates at 2^128, which disjoint ranges of one family never exceed.
    pub fn saturating_add(self, other: Count) -> Count {
        if self.full || other.full {
            return Count { full: true, low: 0 };
        }
        match self.low.checked_add(other.low) {
            Some(n) => Count::new(n),
            None => Count { full: true, low: 0 },
        }
    }

    /// Difference; saturates at zero.
    pub fn saturating_sub(self, n: u128) -> Count {
        match (self.full, n) {
            (_, 0) => self,
            // 2^128 - n = (2^128 - 1) - (n - 1), which fits.
            (true, n) => Count::new(u128::MAX - (n - 1)),
            (false, n) => Count::new(self.low.saturating_sub(n)),
        }
    }
}

impl fmt::Display for Count {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.full {
            f.write_str("340282366920938463463374607431768211456")
        } else {
            write!(f, "{}", self.low)
        }
    }
}

/// `ranges` minus `cut`, both sorted or not; the result is sorted and disjoint. Costs grow with
/// the number of ranges, never with the number of addresses.
pub fn subtract(ranges: &[Range], cut: &[Range]) -> Vec<Range> {
    let mut out: Vec<Range> = ranges.to_vec();
    for c in cut {
        let mut next = Vec::with_capacity(out.len() + 1);
        for r in out {
            if !r.overlaps(c) {
                next.push(r);
                continue;
            }
            if r.start < c.start {
                next.push(Range {
                    end: c.start - 1,
                    ..r
                });
            }
            if r.end > c.end {
                next.push(Range {
                    start: c.end + 1,
                    ..r
                });
            }
        }
        out = next;
    }
    out.sort();
    out
}

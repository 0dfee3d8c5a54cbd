//! The standalone configuration file (`berth-bgp-server --config speaker.yaml`): global
//! settings, peers and static routes, for running the speaker by hand against a router.
//! YAML, or the same structure as JSON (better for very large route sets).
//!
//! ```yaml
//! asn: 64512
//! routerId: 10.0.0.11
//! listenPort: 0            # 0: never listen, only connect out
//! gracefulRestart: {enabled: true, restartTime: 120}
//! peers:
//!   - address: 10.0.0.1
//!     asn: 64513
//!     holdTime: 9          # optional, default 90
//!     addPath: true        # offer ADD-PATH send (default true)
//!     sendMax: 8           # optional cap on paths per prefix
//!     communities: ["65000:1"]  # optional, added to every route sent to this peer
//!     families: [ipv4-unicast]  # optional, default both
//! routes:
//!   - prefix: 198.51.100.10/32
//!     nextHops: [10.0.0.11, 10.0.0.12, 10.0.0.13]
//!     communities: ["64512:100"]
//!   - prefix: 198.51.100.20/32  # weighted ECMP: link bandwidth of `weight` Mbit/s per path
//!     nextHops: [{address: 10.0.0.11, weight: 3}, {address: 10.0.0.12, weight: 1}]
//! ```

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use serde::Deserialize;
use thiserror::Error;

use crate::rib::{Desired, Interner, PathAttrs, Paths};

/// The whole file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SpeakerConfig {
    /// Local ASN.
    pub asn: u32,
    /// BGP identifier.
    pub router_id: Ipv4Addr,
    /// Port to listen on; 0 never listens.
    #[serde(default)]
    pub listen_port: u16,
    /// Graceful restart.
    #[serde(default)]
    pub graceful_restart: GracefulRestartConfig,
    /// Neighbours.
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
    /// Routes to announce to every peer.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
}

/// Graceful restart settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GracefulRestartConfig {
    /// Advertise the capability.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Seconds the peer keeps our routes while we restart (1-4095).
    #[serde(default = "restart_time")]
    pub restart_time: u16,
}

impl Default for GracefulRestartConfig {
    fn default() -> Self {
        GracefulRestartConfig {
            enabled: true,
            restart_time: restart_time(),
        }
    }
}

fn yes() -> bool {
    true
}

fn restart_time() -> u16 {
    120
}

fn bgp_port() -> u16 {
    179
}

fn hold_time() -> u16 {
    90
}

/// One neighbour.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerConfig {
    /// Neighbour address.
    pub address: IpAddr,
    /// Neighbour ASN.
    pub asn: u32,
    /// Neighbour port.
    #[serde(default = "bgp_port")]
    pub port: u16,
    /// Proposed hold time: 0 or >= 3.
    #[serde(default = "hold_time")]
    pub hold_time: u16,
    /// Keepalive interval; unset: a third of the hold time.
    #[serde(default)]
    pub keepalive_time: Option<u16>,
    /// Seconds between connection attempts.
    #[serde(default = "connect_retry")]
    pub connect_retry: u32,
    /// Wait for the neighbour to connect.
    #[serde(default)]
    pub passive: bool,
    /// Offer ADD-PATH send for every family.
    #[serde(default = "yes")]
    pub add_path: bool,
    /// Cap on paths per prefix with ADD-PATH.
    #[serde(default)]
    pub send_max: Option<usize>,
    /// Source address for the connection.
    #[serde(default)]
    pub source_address: Option<IpAddr>,
    /// TTL for eBGP multihop.
    #[serde(default)]
    pub ebgp_multihop: Option<u8>,
    /// TCP MD5 password (RFC 2385), at most 80 bytes. Keep the file readable by root only.
    #[serde(default)]
    pub password: Option<String>,
    /// Standard communities (`asn:value`) added to every route sent to this peer.
    #[serde(default)]
    pub communities: Vec<String>,
    /// Large communities added to every route sent to this peer.
    #[serde(default)]
    pub large_communities: Vec<[u32; 3]>,
    /// LOCAL_PREF of every route sent to this peer (iBGP only), instead of the route's.
    #[serde(default)]
    pub local_pref: Option<u32>,
    /// Families offered: `ipv4-unicast`, `ipv6-unicast`; empty: both.
    #[serde(default)]
    pub families: Vec<String>,
}

/// The family names a peer may list in `families`.
pub const FAMILY_NAMES: [&str; 2] = ["ipv4-unicast", "ipv6-unicast"];

fn connect_retry() -> u32 {
    5
}

/// One static route.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteConfig {
    /// The prefix.
    pub prefix: IpNet,
    /// Its next hops (one path each with ADD-PATH).
    pub next_hops: Vec<NextHopConfig>,
    /// Communities, `asn:value`.
    #[serde(default)]
    pub communities: Vec<String>,
    /// Large communities (RFC 8092), `[global, local1, local2]`.
    #[serde(default)]
    pub large_communities: Vec<[u32; 3]>,
    /// LOCAL_PREF for iBGP peers.
    #[serde(default)]
    pub local_pref: Option<u32>,
}

/// One next hop: an address, or an address with a weight for weighted ECMP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum NextHopConfig {
    /// Unweighted.
    Plain(IpAddr),
    /// Weighted: sent as a link-bandwidth extended community of `weight` Mbit/s.
    Weighted {
        /// The next hop.
        address: IpAddr,
        /// Relative weight, 1 or more.
        weight: u32,
    },
}

impl NextHopConfig {
    /// The next hop's address.
    pub fn address(&self) -> IpAddr {
        match *self {
            NextHopConfig::Plain(a) | NextHopConfig::Weighted { address: a, .. } => a,
        }
    }

    /// The weight, if one was given.
    pub fn weight(&self) -> Option<u32> {
        match *self {
            NextHopConfig::Plain(_) => None,
            NextHopConfig::Weighted { weight, .. } => Some(weight),
        }
    }
}

/// A configuration that cannot be used, naming the field and the fix.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file does not parse as YAML.
    #[error("cannot parse the configuration: {0}")]
    Parse(#[from] serde_yaml_ng::Error),
    /// The file starts with `{` but does not parse as JSON.
    #[error("cannot parse the configuration as JSON: {0}")]
    ParseJson(#[from] serde_json::Error),
    /// A value is out of range or inconsistent.
    #[error("{field}: {why}")]
    Invalid {
        /// The field, as a path.
        field: String,
        /// What is wrong and what to do.
        why: String,
    },
}

fn invalid(field: impl Into<String>, why: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        why: why.into(),
    }
}

impl SpeakerConfig {
    /// Parses and validates a configuration file's text: YAML, or JSON when it starts with
    /// `{` (JSON parses without YAML's document buffer: a tenth of the memory for 100,000
    /// routes).
    pub fn parse(text: &str) -> Result<SpeakerConfig, ConfigError> {
        let cfg: SpeakerConfig = if text.trim_start().starts_with('{') {
            serde_json::from_str(text)?
        } else {
            serde_yaml_ng::from_str(text)?
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every rule the file format states; errors name the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.asn == 0 || self.asn == 23456 {
            return Err(invalid(
                "asn",
                "must be 1-4294967295 and not 23456 (AS_TRANS)",
            ));
        }
        if self.router_id.is_unspecified() {
            return Err(invalid("routerId", "must not be 0.0.0.0"));
        }
        let gr = self.graceful_restart.restart_time;
        if !(1..=4095).contains(&gr) {
            return Err(invalid(
                "gracefulRestart.restartTime",
                "must be 1-4095 seconds",
            ));
        }
        let mut seen = BTreeSet::new();
        for (i, p) in self.peers.iter().enumerate() {
            let f = |name: &str| format!("peers[{i}].{name}");
            if !seen.insert(p.address) {
                return Err(invalid(
                    f("address"),
                    format!("{} is configured twice", p.address),
                ));
            }
            if p.asn == 0 || p.asn == 23456 {
                return Err(invalid(
                    f("asn"),
                    "must be 1-4294967295 and not 23456 (AS_TRANS)",
                ));
            }
            if p.hold_time == 1 || p.hold_time == 2 {
                return Err(invalid(f("holdTime"), "must be 0 or at least 3 seconds"));
            }
            if let Some(k) = p.keepalive_time
                && (p.hold_time == 0 && k != 0 || p.hold_time > 0 && k >= p.hold_time)
            {
                return Err(invalid(
                    f("keepaliveTime"),
                    "must be less than holdTime (0 when holdTime is 0)",
                ));
            }
            if p.passive && self.listen_port == 0 {
                return Err(invalid(
                    f("passive"),
                    "a passive peer needs listenPort > 0 to connect to",
                ));
            }
            if p.port == 0 {
                return Err(invalid(f("port"), "must be 1-65535"));
            }
            for c in &p.communities {
                parse_community(c).ok_or_else(|| {
                    invalid(
                        f("communities"),
                        format!("{c:?} is not asn:value with both parts 0-65535"),
                    )
                })?;
            }
            for fam in &p.families {
                if !FAMILY_NAMES.contains(&fam.as_str()) {
                    return Err(invalid(
                        f("families"),
                        format!("{fam:?} is not one of {}", FAMILY_NAMES.join(", ")),
                    ));
                }
            }
            if p.password
                .as_ref()
                .is_some_and(|pw| pw.is_empty() || pw.len() > berth_tcp_md5::MAX_KEY_LEN)
            {
                return Err(invalid(f("password"), "must be 1-80 bytes"));
            }
            if p.send_max == Some(0) {
                return Err(invalid(f("sendMax"), "must be at least 1"));
            }
        }
        let mut prefixes = BTreeSet::new();
        for (i, r) in self.routes.iter().enumerate() {
            if !prefixes.insert(r.prefix) {
                return Err(duplicate(i, r.prefix));
            }
            check_route(i, r)?;
        }
        Ok(())
    }

    /// The routes as the desired RIB.
    pub fn desired(&self) -> Desired {
        let mut d = Desired::new();
        let mut interned = Interner::default();
        for r in &self.routes {
            // Validated states list each prefix once; otherwise the last entry wins.
            d.insert(r.prefix, route_paths(r, &mut interned));
        }
        // A file need not list its routes in order.
        d.compact();
        d
    }
}

/// A route listed a second time (`routes[i]` is the second).
pub fn duplicate(i: usize, prefix: IpNet) -> ConfigError {
    invalid(
        format!("routes[{i}].prefix"),
        format!("{prefix} is listed twice: give all its next hops in one entry"),
    )
}

/// The rules for one route (`routes[i]`), all but that its prefix is listed once: shared by a
/// whole state's validation and the Apply that converts one route at a time.
pub fn check_route(i: usize, r: &RouteConfig) -> Result<(), ConfigError> {
    let f = |name: &str| format!("routes[{i}].{name}");
    if r.prefix.trunc() != r.prefix {
        return Err(invalid(
            f("prefix"),
            format!("has host bits set: did you mean {}?", r.prefix.trunc()),
        ));
    }
    if r.next_hops.is_empty() {
        return Err(invalid(f("nextHops"), "needs at least one next hop"));
    }
    let mut addrs = BTreeSet::new();
    for nh in &r.next_hops {
        let a = nh.address();
        if a.is_ipv4() != r.prefix.addr().is_ipv4() {
            return Err(invalid(
                f("nextHops"),
                format!("{a} is not of the prefix's family"),
            ));
        }
        if !addrs.insert(a) {
            return Err(invalid(f("nextHops"), format!("{a} is listed twice")));
        }
        if nh.weight() == Some(0) {
            return Err(invalid(
                f("nextHops"),
                format!("{a}: weight must be at least 1 (leave the next hop out instead)"),
            ));
        }
    }
    for c in &r.communities {
        parse_community(c).ok_or_else(|| {
            invalid(
                f("communities"),
                format!("{c:?} is not asn:value with both parts 0-65535"),
            )
        })?;
    }
    Ok(())
}

/// One route's paths, shared through `intern`: equal attributes share one allocation, and so
/// do equal lists of paths.
pub fn route_paths(r: &RouteConfig, intern: &mut Interner) -> Paths {
    let base = PathAttrs {
        communities: r
            .communities
            .iter()
            .filter_map(|c| parse_community(c))
            .collect(),
        local_pref: r.local_pref,
        large_communities: r
            .large_communities
            .iter()
            .map(|[a, b, c]| (*a, *b, *c))
            .collect(),
        ..PathAttrs::default()
    };
    let mut paths = Paths::new();
    for nh in &r.next_hops {
        let attrs = PathAttrs {
            weight: nh.weight(),
            ..base.clone()
        };
        paths.insert(nh.address(), intern.attrs(attrs));
    }
    intern.paths(paths)
}

/// `asn:value` as the 32-bit community.
pub fn parse_community(c: &str) -> Option<u32> {
    let (a, b) = c.split_once(':')?;
    Some((u32::from(a.parse::<u16>().ok()?) << 16) | u32::from(b.parse::<u16>().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "
asn: 64512
routerId: 10.0.0.11
peers:
  - address: 10.0.0.1
    asn: 64513
    holdTime: 9
routes:
  - prefix: 198.51.100.10/32
    nextHops: [10.0.0.11, 10.0.0.12]
    communities: ['64512:100']
";

    #[test]
    fn parses_the_documented_example() {
        let cfg = SpeakerConfig::parse(GOOD).unwrap();
        assert_eq!(cfg.listen_port, 0);
        assert_eq!(cfg.peers[0].port, 179);
        assert!(cfg.peers[0].add_path);
        let d = cfg.desired();
        let paths = d
            .get(&"198.51.100.10/32".parse::<IpNet>().unwrap())
            .unwrap();
        assert_eq!(paths.len(), 2);
        assert!(
            paths
                .values()
                .all(|a| a.communities == [(64512 << 16) | 100])
        );
    }

    #[test]
    fn next_hops_may_carry_weights() {
        let cfg = SpeakerConfig::parse(&GOOD.replace(
            "[10.0.0.11, 10.0.0.12]",
            "[{address: 10.0.0.11, weight: 3}, 10.0.0.12]",
        ))
        .unwrap();
        let d = cfg.desired();
        let paths = d
            .get(&"198.51.100.10/32".parse::<IpNet>().unwrap())
            .unwrap();
        let w: Vec<_> = paths.values().map(|a| a.weight).collect();
        assert_eq!(w, [Some(3), None]);
    }

    #[test]
    fn json_is_read_too() {
        let cfg = SpeakerConfig::parse(
            r#"{"asn": 64512, "routerId": "10.0.0.11",
                "routes": [{"prefix": "198.51.100.10/32",
                            "nextHops": ["10.0.0.11", {"address": "10.0.0.12", "weight": 2}]}]}"#,
        )
        .unwrap();
        assert_eq!(cfg.routes[0].next_hops[1].weight(), Some(2));
        assert!(
            SpeakerConfig::parse(r#"{"asn": 0, "routerId": "10.0.0.11"}"#)
                .unwrap_err()
                .to_string()
                .starts_with("asn:")
        );
    }

    #[test]
    fn errors_name_the_field() {
        let err = |from: &str, to: &str| {
            SpeakerConfig::parse(&GOOD.replace(from, to))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err("holdTime: 9", "holdTime: 2"),
            "peers[0].holdTime: must be 0 or at least 3 seconds"
        );
        assert!(
            err("198.51.100.10/32", "198.51.100.10/24")
                .starts_with("routes[0].prefix: has host bits set")
        );
        assert!(
            err("10.0.0.12]", "fd00::1]")
                .starts_with("routes[0].nextHops: fd00::1 is not of the prefix's family")
        );
        assert!(
            err("10.0.0.12]", "{address: 10.0.0.12, weight: 0}]")
                .starts_with("routes[0].nextHops: 10.0.0.12: weight must be at least 1")
        );
        assert_eq!(
            err("10.0.0.12]", "10.0.0.11]"),
            "routes[0].nextHops: 10.0.0.11 is listed twice"
        );
        assert!(err("'64512:100'", "'70000:1'").starts_with("routes[0].communities"));
        assert!(err("asn: 64512", "asn: 0").starts_with("asn:"));
        assert!(err("holdTime: 9", "passive: true").starts_with("peers[0].passive"));
        assert!(err("holdTime: 9", "bogus: 1").contains("unknown field `bogus`"));
    }
}

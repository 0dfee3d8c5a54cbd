//! The desired state the operator pushes to one bgp-server replica (`berth.bgp.v1`): global
//! settings from BgpConf, the BgpPeers whose node selector matches the replica's node (with
//! passwords already read from their Secrets), and every BGP-mode Service IP with its next
//! hops. Pure: the controller gathers the inputs and sends the result with `Apply`.
//!
//! In `self` ECMP mode a replica announces only the IPs its own node is a next hop for, with
//! itself as the only next hop: the router then sees ECMP across peers instead of ADD-PATH.
//!
//! A BgpPeer's `communities` (well-known names as their numeric `asn:value`),
//! `largeCommunities`, `localPref` and `families` travel with its `berth.bgp.v1.Peer`; the
//! speaker adds them to every route it sends that peer.

use std::collections::BTreeMap;
use std::net::IpAddr;

use berth_api::{AddressFamily, BgpConfSpec, BgpPeerSpec, EcmpMode};
use berth_proto::v1;

use crate::ipam::{Labels, Selector};
use crate::nexthops::NextHop;

/// A BgpPeer community as the speaker's `asn:value`: the well-known names the CRD accepts
/// become their RFC 1997 / 7999 / 8326 values; anything else is passed as written (the CRD's
/// rule admits only `asn:value` besides the names).
fn community(c: &str) -> String {
    let well_known: u32 = match c {
        "no-export" => 0xFFFF_FF01,
        "no-advertise" => 0xFFFF_FF02,
        "no-export-subconfed" => 0xFFFF_FF03,
        "blackhole" => 0xFFFF_029A,
        "graceful-shutdown" => 0xFFFF_0000,
        _ => return c.to_owned(),
    };
    format!("{}:{}", well_known >> 16, well_known & 0xFFFF)
}

/// `global:local1:local2` as the API's large community (the CRD's rule checked the form).
fn large_community(c: &str) -> Option<v1::LargeCommunity> {
    let mut parts = c.split(':').map(|p| p.parse::<u32>().ok());
    let (Some(Some(global_admin)), Some(Some(local_data_1)), Some(Some(local_data_2)), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    Some(v1::LargeCommunity {
        global_admin,
        local_data_1,
        local_data_2,
    })
}

/// The replica: its node's name, labels and InternalIPs.
#[derive(Debug, Clone)]
pub struct Replica {
    /// The node the replica runs on.
    pub node: String,
    /// The node's labels.
    pub labels: Labels,
    /// The node's InternalIPs.
    pub addresses: Vec<IpAddr>,
}

/// A BgpPeer with its selector converted and its password resolved.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The BgpPeer's name (for errors).
    pub name: String,
    /// Its spec.
    pub spec: BgpPeerSpec,
    /// Its node selector; `None` selects every node.
    pub node_selector: Option<Selector>,
    /// The password from its Secret, if it has one.
    pub password: Option<String>,
}

/// Why a replica cannot be given a state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {why}")]
pub struct SpeakerError {
    /// The object or field.
    pub what: String,
    /// What is wrong and what to do.
    pub why: String,
}

/// The desired state of one replica.
pub fn desired_state(
    generation: u64,
    conf: &BgpConfSpec,
    replica: &Replica,
    peers: &[Peer],
    routes: &BTreeMap<IpAddr, crate::routes::Hops>,
) -> Result<v1::DesiredState, SpeakerError> {
    let router_id = match &conf.router_id {
        Some(id) => id.clone(),
        // Like MetalLB: the node's own IPv4 address identifies its speaker.
        None => replica
            .addresses
            .iter()
            .find(|a| a.is_ipv4())
            .map(ToString::to_string)
            .ok_or_else(|| SpeakerError {
                what: format!("BgpConf default (node {})", replica.node),
                why:
                    "spec.routerId is unset and the node has no IPv4 InternalIP: set spec.routerId"
                        .into(),
            })?,
    };
    let self_mode = conf.ecmp_mode == EcmpMode::SelfNextHop;
    let mine: Vec<IpAddr> = replica.addresses.clone();
    // One session per neighbor address on a replica: when two peers with overlapping node
    // selectors name one address, the first (the caller orders peers oldest first) keeps it,
    // so the speaker never refuses the whole state for it.
    let mut addresses = std::collections::BTreeSet::new();
    let peers = peers
        .iter()
        .filter(|p| {
            p.node_selector
                .as_ref()
                .is_none_or(|s| s.matches(&replica.labels))
        })
        .filter(|p| addresses.insert(p.spec.address.trim().to_owned()))
        .map(|p| v1::Peer {
            address: p.spec.address.clone(),
            asn: p.spec.peer_asn,
            port: u32::try_from(p.spec.port).unwrap_or(179),
            hold_time_seconds: u32::try_from(p.spec.hold_time).ok(),
            keepalive_seconds: p.spec.keepalive_time.and_then(|k| u32::try_from(k).ok()),
            connect_retry_seconds: 0,
            passive: p.spec.passive,
            disable_add_path: self_mode,
            send_max: p
                .spec
                .add_path_send_max
                .and_then(|m| u32::try_from(m).ok())
                .unwrap_or(0),
            source_address: String::new(),
            ebgp_multihop: p
                .spec
                .ebgp_multihop
                .and_then(|t| u32::try_from(t).ok())
                .unwrap_or(0),
            password: p.password.clone().unwrap_or_default(),
            communities: p.spec.communities.iter().map(|c| community(c)).collect(),
            large_communities: p
                .spec
                .large_communities
                .iter()
                .filter_map(|c| large_community(c))
                .collect(),
            local_pref: p.spec.local_pref,
            families: p
                .spec
                .families
                .iter()
                .map(|f| match f {
                    AddressFamily::Ipv4Unicast => "ipv4-unicast".to_owned(),
                    AddressFamily::Ipv6Unicast => "ipv6-unicast".to_owned(),
                })
                .collect(),
        })
        .collect::<Vec<_>>();
    // The stores iterate in no fixed order: one order makes equal states equal messages.
    let mut peers = peers;
    peers.sort_by(|a, b| a.address.cmp(&b.address).then(a.port.cmp(&b.port)));
    let Routes {
        routes,
        groups: next_hop_groups,
        ..
    } = routes_for(
        routes.iter().map(|(ip, hops)| (*ip, &**hops)),
        self_mode,
        &mine,
    );
    Ok(v1::DesiredState {
        generation,
        global: Some(v1::Global {
            asn: conf.asn,
            router_id,
            listen_port: u32::try_from(conf.listen_port).unwrap_or(0),
            graceful_restart: Some(v1::GracefulRestart {
                enabled: conf.graceful_restart.enabled,
                restart_time_seconds: u32::from(conf.graceful_restart.restart_time),
            }),
        }),
        peers,
        routes,
        next_hop_groups,
    })
}

/// The routes a replica announces, the next-hop groups they name, and the IPs it does not
/// announce.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Routes {
    /// One route per announced IP, in the order given.
    pub routes: Vec<v1::Route>,
    /// The next-hop lists two or more of the routes share (`berth_proto::groups`' rule): with
    /// ADD-PATH every `Cluster` Service carries every node, and repeated per route 10,000
    /// Services over 1,000 nodes would not fit one message.
    pub groups: Vec<v1::NextHopGroup>,
    /// IPs without a next hop for this replica (in `self` mode: not one of its own).
    pub without: Vec<IpAddr>,
}

/// The routes of `table` (IP → next hops) as a replica announces them. In `self` mode a
/// replica announces an IP only when its own node (`mine`) is a next hop, with only itself
/// as the next hop.
pub fn routes_for<'a>(
    table: impl Iterator<Item = (IpAddr, &'a [NextHop])> + Clone,
    self_mode: bool,
    mine: &[IpAddr],
) -> Routes {
    let chosen = |hops: &'a [NextHop]| -> Vec<&'a NextHop> {
        hops.iter()
            .filter(|h| !self_mode || mine.contains(&h.address))
            .collect()
    };
    // What the wire carries of a list; lists of one next hop stay inline.
    let key = |hops: &[&NextHop]| -> Option<Vec<(IpAddr, Option<u32>)>> {
        (hops.len() >= 2).then(|| hops.iter().map(|h| (h.address, h.weight)).collect())
    };
    let api = |hops: &[&NextHop]| -> Vec<v1::NextHop> {
        hops.iter()
            .map(|h| v1::NextHop {
                address: h.address.to_string(),
                weight: h.weight.unwrap_or(0),
            })
            .collect()
    };
    let names = berth_proto::groups::shared(table.clone().filter_map(|(_, h)| key(&chosen(h))));
    let mut out = Routes::default();
    let mut defined = std::collections::BTreeSet::new();
    for (ip, hops) in table {
        let hops = chosen(hops);
        if hops.is_empty() {
            out.without.push(ip);
            continue;
        }
        let mut route = v1::Route {
            prefix: prefix_of(ip),
            ..Default::default()
        };
        match key(&hops).and_then(|k| names.get(&k)) {
            Some(name) => {
                if defined.insert(name.as_str()) {
                    out.groups.push(v1::NextHopGroup {
                        name: name.clone(),
                        next_hops: api(&hops),
                    });
                }
                route.next_hop_group = name.clone();
            }
            None => route.next_hops = api(&hops),
        }
        out.routes.push(route);
    }
    out
}

/// How many routes a replica announces from `table` (what its GetState's `route_count`
/// is when it is in step): IPs with a next hop for it.
pub fn announced(
    table: &BTreeMap<IpAddr, crate::routes::Hops>,
    self_mode: bool,
    mine: &[IpAddr],
) -> usize {
    table
        .values()
        .filter(|hops| hops.iter().any(|h| !self_mode || mine.contains(&h.address)))
        .count()
}

/// The UpdateRoutes that brings a replica's routes for the `changed` IPs to `table`: an IP
/// the table no longer has, or one this replica does not announce, is withdrawn.
pub fn update_request(
    generation: u64,
    table: &crate::routes::RouteTable,
    changed: &std::collections::BTreeSet<IpAddr>,
    self_mode: bool,
    mine: &[IpAddr],
) -> v1::UpdateRoutesRequest {
    let present = changed
        .iter()
        .filter_map(|ip| table.get(*ip).map(|hops| (*ip, hops)));
    let routes = routes_for(present, self_mode, mine);
    v1::UpdateRoutesRequest {
        generation,
        upsert: routes.routes,
        next_hop_groups: routes.groups,
        remove: changed
            .iter()
            .filter(|ip| table.get(**ip).is_none())
            .chain(&routes.without)
            .map(|ip| prefix_of(*ip))
            .collect(),
    }
}

/// The host prefix of an IP, as the speaker's API writes it.
pub fn prefix_of(ip: IpAddr) -> String {
    let len = if ip.is_ipv4() { 32 } else { 128 };
    format!("{ip}/{len}")
}

/// The longest TCP MD5 key the kernel takes (RFC 2385 keys; Linux `TCP_MD5SIG_MAXKEYLEN`).
pub const MAX_PASSWORD_BYTES: usize = 80;

/// One peer the speakers would refuse, and why: the condition reason and a message naming
/// the field, the conflicting object and the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// CamelCase reason for the `Configured=False` condition.
    pub reason: &'static str,
    /// What is wrong and what to do.
    pub message: String,
}

/// The rules a speaker applies across peers and settings, checked before anything is sent:
/// a peer that breaks one is left out (its condition says why) instead of making the speaker
/// refuse the whole desired state, which would freeze BGP for every peer. `peers` are
/// `(name, created, spec)`. Two peers naming one address conflict only when they select
/// the same nodes (both no selector, or equal selectors): one BgpPeer per rack with the
/// same ToR address and its own rack selector is fine. Of conflicting peers the oldest
/// (then the first by name) keeps the address; selectors that merely overlap are settled
/// per replica by [`desired_state`] the same way.
pub fn refusals(
    peers: &[(String, Option<String>, BgpPeerSpec)],
    conf: Option<&BgpConfSpec>,
) -> BTreeMap<String, Refusal> {
    let mut out = BTreeMap::new();
    let mut order: Vec<&(String, Option<String>, BgpPeerSpec)> = peers.iter().collect();
    order.sort_by(|a, b| (&a.1, &a.0).cmp(&(&b.1, &b.0)));
    let mut owner: BTreeMap<(IpAddr, String), &str> = BTreeMap::new();
    for (name, _, spec) in order {
        // An address that does not parse is the schema's to refuse; compare it as written.
        let Ok(addr) = spec.address.trim().parse::<IpAddr>() else {
            continue;
        };
        let selects = serde_json::to_string(&spec.node_selector).unwrap_or_default();
        match owner.get(&(addr, selects.clone())) {
            Some(first) => {
                out.insert(
                    name.clone(),
                    Refusal {
                        reason: "DuplicateAddress",
                        message: format!(
                            "spec.address {addr} is already the address of BgpPeer {first}: a speaker has one session per neighbor address; delete one of the two or change its address"
                        ),
                    },
                );
            }
            None => {
                owner.insert((addr, selects), name);
            }
        }
    }
    for (name, _, spec) in peers {
        if out.contains_key(name) {
            continue;
        }
        if spec.passive && conf.is_some_and(|c| c.listen_port == 0) {
            out.insert(
                name.clone(),
                Refusal {
                    reason: "PassiveWithoutListener",
                    message: "spec.passive is true but BgpConf default has listenPort 0 (the speakers never listen), so this session could never come up: set passive to false or give BgpConf a listenPort".into(),
                },
            );
        }
    }
    out
}

/// Whether a password read from a Secret can be a TCP MD5 key; the reason and message when
/// it cannot.
pub fn password_problem(password: &str) -> Option<Refusal> {
    if password.is_empty() || password.len() > MAX_PASSWORD_BYTES {
        return Some(Refusal {
            reason: "SecretKeyInvalid",
            message: format!(
                "the password in spec.passwordSecretRef is {} bytes; a TCP MD5 key is 1-{MAX_PASSWORD_BYTES} bytes: store a shorter one",
                password.len()
            ),
        });
    }
    None
}

#[cfg(test)]
mod tests;

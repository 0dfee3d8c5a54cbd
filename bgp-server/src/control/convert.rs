//! The API's desired state (`berth.bgp.v1.DesiredState`) as the speaker's own model
//! ([`SpeakerConfig`], the same one the standalone file fills), and back.
//!
//! Pure: strings become typed addresses and prefixes here, every rule of the file format is
//! checked by [`SpeakerConfig::validate`], and every error names the API's field.

use std::collections::HashMap;
use std::net::IpAddr;

use berth_proto::v1;
use ipnet::IpNet;

use crate::config::{
    ConfigError, GracefulRestartConfig, NextHopConfig, PeerConfig, RouteConfig, SpeakerConfig,
};

/// An argument the API refuses: the field (as the API names it) and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {why}")]
pub struct InvalidArgument {
    /// The field, as a path (`peers[2].address`).
    pub field: String,
    /// What is wrong and what to do.
    pub why: String,
}

fn invalid(field: impl Into<String>, why: impl Into<String>) -> InvalidArgument {
    InvalidArgument {
        field: field.into(),
        why: why.into(),
    }
}

fn addr(field: String, s: &str) -> Result<IpAddr, InvalidArgument> {
    s.parse()
        .map_err(|_| invalid(field, format!("{s:?} is not an IPv4 or IPv6 address")))
}

fn prefix(field: String, s: &str) -> Result<IpNet, InvalidArgument> {
    s.parse().map_err(|_| {
        invalid(
            field,
            format!("{s:?} is not a prefix: write address/length, e.g. 198.51.100.10/32"),
        )
    })
}

/// Next hops one message may resolve to, over all its routes (each route's own or its
/// group's): 10,000 routes over 1,000 nodes are 10,000,000. Without a bound, a small message
/// naming a large group from many routes would make the speaker hold far more than the
/// message's size (a path per route and next hop).
pub const MAX_PATHS: usize = 20_000_000;

/// Adds the next hops `r` resolves to (its own, or its group's in `groups`) to `total`; past
/// [`MAX_PATHS`], an error on `field`. Counted before any route is converted, so a message
/// over the bound costs nothing but the count.
pub fn count_paths(
    total: &mut usize,
    r: &v1::Route,
    groups: &Groups,
    field: &str,
) -> Result<(), InvalidArgument> {
    let n = if r.next_hop_group.is_empty() {
        r.next_hops.len()
    } else {
        groups.get(&r.next_hop_group).map_or(0, Vec::len)
    };
    *total = total.saturating_add(n);
    if *total > MAX_PATHS {
        return Err(invalid(
            field,
            format!(
                "the message's routes have more than {MAX_PATHS} next hops in all (each route's own or its group's): send fewer routes or fewer next hops per route"
            ),
        ));
    }
    Ok(())
}

/// A message's next-hop groups by name, converted.
pub type Groups = HashMap<String, Vec<NextHopConfig>>;

fn next_hops(field: &str, hops: &[v1::NextHop]) -> Result<Vec<NextHopConfig>, InvalidArgument> {
    hops.iter()
        .enumerate()
        .map(|(j, nh)| {
            let address = addr(format!("{field}[{j}].address"), &nh.address)?;
            Ok(if nh.weight == 0 {
                NextHopConfig::Plain(address)
            } else {
                NextHopConfig::Weighted {
                    address,
                    weight: nh.weight,
                }
            })
        })
        .collect()
}

/// A message's `next_hop_groups` (`base` is the field's name) converted: names unique and
/// not empty, at least one next hop each, each at most once. The family is checked per
/// route, against the route's prefix.
pub fn next_hop_groups(groups: &[v1::NextHopGroup], base: &str) -> Result<Groups, InvalidArgument> {
    let mut out = Groups::with_capacity(groups.len());
    for (k, g) in groups.iter().enumerate() {
        let f = |name: &str| format!("{base}[{k}].{name}");
        if g.name.is_empty() {
            return Err(invalid(f("name"), "is empty: name the group"));
        }
        let hops = next_hops(&f("next_hops"), &g.next_hops)?;
        if hops.is_empty() {
            return Err(invalid(
                f("next_hops"),
                format!("group {:?} has no next hop: give it at least one", g.name),
            ));
        }
        for (j, h) in hops.iter().enumerate() {
            if hops[..j].iter().any(|o| o.address() == h.address()) {
                return Err(invalid(
                    format!("{base}[{k}].next_hops[{j}].address"),
                    format!("{} is listed twice in group {:?}", h.address(), g.name),
                ));
            }
        }
        if out.insert(g.name.clone(), hops).is_some() {
            return Err(invalid(
                f("name"),
                format!("{:?} names two groups: give each its own name", g.name),
            ));
        }
    }
    Ok(out)
}

/// One route of the API as the model's route; a `next_hop_group` is looked up in `groups`
/// (the same message's).
pub fn route(
    i: usize,
    r: &v1::Route,
    base: &str,
    groups: &Groups,
) -> Result<RouteConfig, InvalidArgument> {
    let f = |name: &str| format!("{base}[{i}].{name}");
    let next_hops = if r.next_hop_group.is_empty() {
        next_hops(&f("next_hops"), &r.next_hops)?
    } else if !r.next_hops.is_empty() {
        return Err(invalid(
            f("next_hop_group"),
            "is set and so is next_hops: give the next hops in one of the two",
        ));
    } else {
        groups.get(&r.next_hop_group).cloned().ok_or_else(|| {
            invalid(
                f("next_hop_group"),
                format!(
                    "{:?} is not a group of this message: define it in next_hop_groups",
                    r.next_hop_group
                ),
            )
        })?
    };
    let route = RouteConfig {
        prefix: prefix(f("prefix"), &r.prefix)?,
        next_hops,
        communities: r.communities.clone(),
        large_communities: r
            .large_communities
            .iter()
            .map(|l| [l.global_admin, l.local_data_1, l.local_data_2])
            .collect(),
        local_pref: r.local_pref,
    };
    if !r.next_hop_group.is_empty() {
        // The next hops came from the group: what is wrong with them (an IPv4 group named by
        // an IPv6 route) is said of the field the route set.
        if let Err(ConfigError::Invalid { field, why }) = crate::config::check_route(i, &route)
            && field.ends_with(".nextHops")
        {
            return Err(invalid(
                f("next_hop_group"),
                format!("group {:?}: {why}", r.next_hop_group),
            ));
        }
    }
    Ok(route)
}

fn peer(i: usize, p: &v1::Peer) -> Result<PeerConfig, InvalidArgument> {
    let f = |name: &str| format!("peers[{i}].{name}");
    let small = |name: &str, v: u32, max: u32| -> Result<u32, InvalidArgument> {
        if v > max {
            Err(invalid(f(name), format!("{v} is more than {max}")))
        } else {
            Ok(v)
        }
    };
    let u16_of = |name: &str, v: u32| -> Result<u16, InvalidArgument> {
        u16::try_from(v).map_err(|_| invalid(f(name), format!("{v} is more than 65535")))
    };
    Ok(PeerConfig {
        address: addr(f("address"), &p.address)?,
        asn: p.asn,
        port: if p.port == 0 {
            179
        } else {
            u16_of("port", p.port)?
        },
        hold_time: match p.hold_time_seconds {
            Some(h) => u16_of("hold_time_seconds", h)?,
            None => 90,
        },
        keepalive_time: p
            .keepalive_seconds
            .map(|k| u16_of("keepalive_seconds", k))
            .transpose()?,
        connect_retry: if p.connect_retry_seconds == 0 {
            5
        } else {
            small("connect_retry_seconds", p.connect_retry_seconds, 3600)?
        },
        passive: p.passive,
        add_path: !p.disable_add_path,
        send_max: (p.send_max > 0).then_some(p.send_max as usize),
        source_address: if p.source_address.is_empty() {
            None
        } else {
            Some(addr(f("source_address"), &p.source_address)?)
        },
        ebgp_multihop: match p.ebgp_multihop {
            0 => None,
            t => Some(
                u8::try_from(t)
                    .map_err(|_| invalid(f("ebgp_multihop"), format!("{t} is more than 255")))?,
            ),
        },
        password: (!p.password.is_empty()).then(|| p.password.clone()),
        communities: p.communities.clone(),
        large_communities: p
            .large_communities
            .iter()
            .map(|c| [c.global_admin, c.local_data_1, c.local_data_2])
            .collect(),
        local_pref: p.local_pref,
        families: p.families.clone(),
    })
}

/// The API's desired state as the model; checked by the same rules as the standalone file.
pub fn desired_state(s: &v1::DesiredState) -> Result<SpeakerConfig, InvalidArgument> {
    if s.generation == 0 {
        return Err(invalid(
            "generation",
            "must be at least 1 (0 means nothing was ever applied)",
        ));
    }
    let g = s
        .global
        .as_ref()
        .ok_or_else(|| invalid("global", "is required: asn and router_id at least"))?;
    let router_id = g.router_id.parse().map_err(|_| {
        invalid(
            "global.router_id",
            format!("{:?} is not an IPv4 address", g.router_id),
        )
    })?;
    let listen_port = u16::try_from(g.listen_port).map_err(|_| {
        invalid(
            "global.listen_port",
            format!("{} is more than 65535", g.listen_port),
        )
    })?;
    let graceful_restart = match &g.graceful_restart {
        None => GracefulRestartConfig::default(),
        Some(gr) => GracefulRestartConfig {
            enabled: gr.enabled,
            restart_time: u16::try_from(gr.restart_time_seconds).unwrap_or(u16::MAX),
        },
    };
    let cfg = SpeakerConfig {
        asn: g.asn,
        router_id,
        listen_port,
        graceful_restart,
        peers: s
            .peers
            .iter()
            .enumerate()
            .map(|(i, p)| peer(i, p))
            .collect::<Result<_, _>>()?,
        routes: {
            let groups = next_hop_groups(&s.next_hop_groups, "next_hop_groups")?;
            let mut total = 0usize;
            for (i, r) in s.routes.iter().enumerate() {
                count_paths(&mut total, r, &groups, &format!("routes[{i}]"))?;
            }
            s.routes
                .iter()
                .enumerate()
                .map(|(i, r)| route(i, r, "routes", &groups))
                .collect::<Result<_, _>>()?
        },
    };
    cfg.validate().map_err(|e| api_error(&e))?;
    Ok(cfg)
}

/// A model error with the field renamed to the API's name for it.
pub fn api_error(e: &ConfigError) -> InvalidArgument {
    match e {
        ConfigError::Invalid { field, why } => invalid(api_field(field), why.clone()),
        other => invalid("state", other.to_string()),
    }
}

/// The standalone file's field names (camelCase) as the API's (snake_case, under `global`).
fn api_field(field: &str) -> String {
    const TOP: [(&str, &str); 4] = [
        ("asn", "global.asn"),
        ("routerId", "global.router_id"),
        ("listenPort", "global.listen_port"),
        (
            "gracefulRestart.restartTime",
            "global.graceful_restart.restart_time_seconds",
        ),
    ];
    if let Some((_, api)) = TOP.iter().find(|(file, _)| *file == field) {
        return (*api).to_owned();
    }
    const LEAVES: [(&str, &str); 7] = [
        (".holdTime", ".hold_time_seconds"),
        (".keepaliveTime", ".keepalive_seconds"),
        (".sendMax", ".send_max"),
        (".nextHops", ".next_hops"),
        (".connectRetry", ".connect_retry_seconds"),
        (".sourceAddress", ".source_address"),
        (".ebgpMultihop", ".ebgp_multihop"),
    ];
    let mut out = field.to_owned();
    for (file, api) in LEAVES {
        if let Some(stem) = out.strip_suffix(file) {
            out = format!("{stem}{api}");
        }
    }
    out
}

/// The model as the API's desired state (what GetState and the state file show).
pub fn to_api(generation: u64, cfg: &SpeakerConfig) -> v1::DesiredState {
    let mut routes: Vec<v1::Route> = cfg.routes.iter().map(route_to_api).collect();
    let next_hop_groups = berth_proto::groups::share(&mut routes);
    v1::DesiredState {
        generation,
        global: Some(v1::Global {
            asn: cfg.asn,
            router_id: cfg.router_id.to_string(),
            listen_port: u32::from(cfg.listen_port),
            graceful_restart: Some(v1::GracefulRestart {
                enabled: cfg.graceful_restart.enabled,
                restart_time_seconds: u32::from(cfg.graceful_restart.restart_time),
            }),
        }),
        peers: cfg
            .peers
            .iter()
            .map(|p| v1::Peer {
                address: p.address.to_string(),
                asn: p.asn,
                port: u32::from(p.port),
                hold_time_seconds: Some(u32::from(p.hold_time)),
                keepalive_seconds: p.keepalive_time.map(u32::from),
                connect_retry_seconds: p.connect_retry,
                passive: p.passive,
                disable_add_path: !p.add_path,
                send_max: p
                    .send_max
                    .map_or(0, |m| u32::try_from(m).unwrap_or(u32::MAX)),
                source_address: p.source_address.map(|a| a.to_string()).unwrap_or_default(),
                ebgp_multihop: p.ebgp_multihop.map_or(0, u32::from),
                password: p.password.clone().unwrap_or_default(),
                communities: p.communities.clone(),
                large_communities: p
                    .large_communities
                    .iter()
                    .map(|[a, b, c]| v1::LargeCommunity {
                        global_admin: *a,
                        local_data_1: *b,
                        local_data_2: *c,
                    })
                    .collect(),
                local_pref: p.local_pref,
                families: p.families.clone(),
            })
            .collect(),
        routes,
        next_hop_groups,
    }
}

/// One model route as the API's.
pub fn route_to_api(r: &RouteConfig) -> v1::Route {
    v1::Route {
        prefix: r.prefix.to_string(),
        next_hops: r
            .next_hops
            .iter()
            .map(|nh| v1::NextHop {
                address: nh.address().to_string(),
                weight: nh.weight().unwrap_or(0),
            })
            .collect(),
        communities: r.communities.clone(),
        large_communities: r
            .large_communities
            .iter()
            .map(|[a, b, c]| v1::LargeCommunity {
                global_admin: *a,
                local_data_1: *b,
                local_data_2: *c,
            })
            .collect(),
        local_pref: r.local_pref,
        next_hop_group: String::new(),
    }
}

#[cfg(test)]
mod tests;

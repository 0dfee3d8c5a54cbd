//! An Eip's status, computed from the IPAM engine and what the controller saw: size and
//! usage (exact decimal strings), first and last address, readiness and the conditions that
//! explain it. Pure. The status is a handful of fields whatever the pool's size or usage:
//! the allocation of record is each Service's own status.

use std::net::IpAddr;

use berth_api::EipStatus;
use berth_api::names::CONDITION_READY;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::ipam::{Ipam, PoolEditError};

/// What the Eip controller knows beyond the engine.
#[derive(Debug, Clone, Default)]
pub struct Facts<'a> {
    /// The Eip's `metadata.generation`.
    pub generation: Option<i64>,
    /// The error of the last attempt to take the Eip's spec into the engine (a parse error,
    /// or an edit refused because it would take IPs in use away).
    pub edit_error: Option<&'a PoolEditError>,
    /// Node InternalIPs, with their nodes.
    pub node_addresses: &'a [(String, IpAddr)],
    /// Names of every pool marked `default: true`.
    pub defaults: &'a [String],
    /// The conditions now in the status, to keep `lastTransitionTime` when nothing changed.
    pub previous: &'a [Condition],
    /// The Eip is being deleted: the Services still holding its IPs (empty: none).
    pub deleting_held_by: Option<&'a [String]>,
}

/// The status of pool `name`.
pub fn status(name: &str, ipam: &Ipam, facts: &Facts<'_>, now: Time) -> EipStatus {
    let mut problems: Vec<(&'static str, String)> = Vec::new();
    if let Some(held) = facts.deleting_held_by.filter(|h| !h.is_empty()) {
        const SHOWN: usize = 10;
        let more = held.len().saturating_sub(SHOWN);
        problems.push((
            "DeletionHeld",
            format!(
                "deleted, but {} Service(s) still hold IPs from it ({}{}): the pool and their IPs stay until they are deleted or moved to another pool; no new IP is given",
                held.len(),
                held.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", "),
                if more > 0 { format!(" and {more} more") } else { String::new() }
            ),
        ));
    }
    if let Some(e) = facts.edit_error {
        let reason = match e {
            PoolEditError::WouldStrand { .. } => "ShrinkRefused",
            _ => "InvalidAddress",
        };
        problems.push((reason, e.to_string()));
    }
    let pool = ipam.pool(name);
    if let Some(pool) = pool {
        let others: Vec<String> = ipam
            .overlaps()
            .into_iter()
            .filter_map(|(a, b)| {
                if a == name {
                    Some(b)
                } else if b == name {
                    Some(a)
                } else {
                    None
                }
            })
            .collect();
        if !others.is_empty() {
            problems.push((
                "OverlapsPool",
                format!(
                    "addresses overlap pool {}: no IP is handed out from either until one is changed",
                    others.join(", ")
                ),
            ));
        }
        let nodes: Vec<String> = facts
            .node_addresses
            .iter()
            .filter(|(_, ip)| pool.is_usable(*ip))
            .map(|(n, ip)| format!("{ip} (node {n})"))
            .collect();
        if !nodes.is_empty() {
            problems.push((
                "OverlapsNode",
                format!(
                    "the pool contains node addresses {}: add them to spec.excludes or change spec.address",
                    nodes.join(", ")
                ),
            ));
        }
        if pool.spec().default && facts.defaults.len() > 1 {
            problems.push((
                "SeveralDefaults",
                format!(
                    "pools {} are all default: none is used as default until only one has spec.default: true",
                    facts.defaults.join(", ")
                ),
            ));
        }
    }
    let usage = ipam.usage(name);
    let (ready_status, reason, message) = match (pool, problems.first()) {
        (None, None) => (
            "False",
            "NotLoaded",
            "the operator has not taken this pool in yet".to_owned(),
        ),
        (_, Some(_)) => (
            "False",
            problems.first().map_or("Invalid", |p| p.0),
            problems
                .iter()
                .map(|p| p.1.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        ),
        (Some(p), None) if p.spec().disabled => (
            "False",
            "Disabled",
            "spec.disable is true: IPs already assigned stay, no new ones are given".to_owned(),
        ),
        (Some(_), None) => ("True", "Ready", "the pool hands out addresses".to_owned()),
    };
    let keep_time = facts
        .previous
        .iter()
        .find(|c| c.type_ == CONDITION_READY)
        .filter(|c| c.status == ready_status)
        .map(|c| c.last_transition_time.clone());
    EipStatus {
        pool_size: usage.map(|u| u.size.to_string()),
        usage: usage.map(|u| u.used.to_string()),
        first_ip: usage.and_then(|u| u.first).map(|ip| ip.to_string()),
        last_ip: usage.and_then(|u| u.last).map(|ip| ip.to_string()),
        ready: ready_status == "True",
        observed_generation: facts.generation,
        conditions: vec![Condition {
            type_: CONDITION_READY.to_owned(),
            status: ready_status.to_owned(),
            reason: reason.to_owned(),
            message,
            observed_generation: facts.generation,
            last_transition_time: keep_time.unwrap_or(now),
        }],
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::ipam::{Family, Holder, PoolSpec, Request, ServiceKey};

    fn pool(name: &str, address: &str) -> PoolSpec {
        PoolSpec {
            name: name.into(),
            address: address.into(),
            default: true,
            ..Default::default()
        }
    }

    fn now(s: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(s).unwrap())
    }

    #[test]
    fn a_healthy_pool_reports_exact_counts_even_for_a_slash_64() {
        let (mut ipam, _) = Ipam::rebuild([pool("six", "fd00::/64")], []);
        for i in 0..3 {
            ipam.allocate(&Request::new(
                Holder::new(ServiceKey::new("ns", format!("s{i}"))),
                Family::V6,
            ))
            .unwrap();
        }
        let s = status("six", &ipam, &Facts::default(), now(1));
        assert_eq!(s.pool_size.as_deref(), Some("18446744073709551616"));
        assert_eq!(s.usage.as_deref(), Some("3"));
        assert_eq!(s.first_ip.as_deref(), Some("fd00::"));
        assert_eq!(s.last_ip.as_deref(), Some("fd00::ffff:ffff:ffff:ffff"));
        assert!(s.ready);
        assert_eq!(s.conditions[0].reason, "Ready");
        // Small whatever the usage: one condition, a few strings.
        assert!(serde_json::to_string(&s).unwrap().len() < 400);
    }

    #[test]
    fn overlaps_with_pools_and_nodes_are_explained() {
        let (ipam, _) = Ipam::rebuild(
            [pool("blue", "10.0.0.0/24"), pool("red", "10.0.0.128/25")],
            [],
        );
        let nodes = [("node1".to_owned(), "10.0.0.10".parse().unwrap())];
        let defaults = ["blue".to_owned(), "red".to_owned()];
        let facts = Facts {
            node_addresses: &nodes,
            defaults: &defaults,
            ..Default::default()
        };
        let s = status("blue", &ipam, &facts, now(1));
        assert!(!s.ready);
        let c = &s.conditions[0];
        assert_eq!(c.reason, "OverlapsPool");
        assert!(c.message.contains("overlap pool red"), "{}", c.message);
        assert!(
            c.message.contains("10.0.0.10 (node node1)"),
            "{}",
            c.message
        );
        assert!(
            c.message.contains("pools blue, red are all default"),
            "{}",
            c.message
        );
    }

    #[test]
    fn a_deleted_pool_in_use_names_its_holders() {
        let ipam = Ipam::new();
        let held: Vec<String> = (0..12).map(|i| format!("shop/web{i}")).collect();
        let facts = Facts {
            deleting_held_by: Some(&held),
            ..Default::default()
        };
        let s = status("blue", &ipam, &facts, now(1));
        assert_eq!(s.conditions[0].status, "False");
        assert_eq!(s.conditions[0].reason, "DeletionHeld");
        let m = &s.conditions[0].message;
        assert!(
            m.contains("12 Service(s)") && m.contains("shop/web0") && m.contains("and 2 more"),
            "{m}"
        );
    }

    #[test]
    fn a_refused_shrink_is_a_condition_and_transition_time_is_kept() {
        let (ipam, _) = Ipam::rebuild([pool("blue", "10.0.0.0/24")], []);
        let err = PoolEditError::WouldStrand {
            pool: "blue".into(),
            affected: vec![(
                ServiceKey::new("shop", "web"),
                "10.0.0.200".parse().unwrap(),
            )],
        };
        let facts = Facts {
            edit_error: Some(&err),
            ..Default::default()
        };
        let first = status("blue", &ipam, &facts, now(1));
        assert_eq!(first.conditions[0].reason, "ShrinkRefused");
        assert!(
            first.conditions[0]
                .message
                .contains("shop/web (10.0.0.200)")
        );
        let again = status(
            "blue",
            &ipam,
            &Facts {
                previous: &first.conditions,
                deleting_held_by: None,
                ..facts.clone()
            },
            now(50),
        );
        assert_eq!(again.conditions[0].last_transition_time, now(1));
        let fixed = status(
            "blue",
            &ipam,
            &Facts {
                previous: &first.conditions,
                deleting_held_by: None,
                ..Default::default()
            },
            now(60),
        );
        assert!(fixed.ready);
        assert_eq!(fixed.conditions[0].last_transition_time, now(60));
    }
}

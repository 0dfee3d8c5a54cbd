//! RIB-out diffing: minimal changes, stable path IDs, caps, and the no-ADD-PATH fallback.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn paths(nhs: &[&str]) -> Paths {
    nhs.iter().map(|n| (ip(n), PathAttrs::default())).collect()
}

fn desired(entries: &[(&str, &[&str])]) -> Desired {
    entries
        .iter()
        .map(|(p, nhs)| (net(p), paths(nhs)))
        .collect()
}

#[test]
fn add_path_announces_one_path_per_next_hop() {
    let mut rib = AdjRibOut::new(true, None);
    let changes = rib.sync(&desired(&[(
        "198.51.100.10/32",
        &["10.0.0.11", "10.0.0.12", "10.0.0.13"],
    )]));
    let ids: Vec<(u32, IpAddr)> = changes
        .iter()
        .map(|c| match c {
            Change::Announce {
                path_id, next_hop, ..
            } => (path_id.0, *next_hop),
            Change::Withdraw { .. } => panic!("nothing to withdraw"),
        })
        .collect();
    assert_eq!(
        ids,
        [
            (1, ip("10.0.0.11")),
            (2, ip("10.0.0.12")),
            (3, ip("10.0.0.13"))
        ]
    );
    assert!(!rib.ecmp_degraded());
}

#[test]
fn resending_the_same_state_sends_nothing() {
    let mut rib = AdjRibOut::new(true, None);
    let d = desired(&[
        ("198.51.100.10/32", &["10.0.0.11", "10.0.0.12"]),
        ("2001:db8::10/128", &["fd00::11"]),
    ]);
    assert_eq!(rib.sync(&d).len(), 3);
    assert!(rib.sync(&d).is_empty());
}

#[test]
fn a_next_hop_leaving_withdraws_only_its_path_and_others_keep_their_ids() {
    let mut rib = AdjRibOut::new(true, None);
    let p = net("198.51.100.10/32");
    rib.sync(&desired(&[(
        "198.51.100.10/32",
        &["10.0.0.11", "10.0.0.12", "10.0.0.13"],
    )]));
    let changes = rib.update(p, Some(&paths(&["10.0.0.11", "10.0.0.13"])));
    assert_eq!(
        changes,
        [Change::Withdraw {
            prefix: p,
            path_id: PathId(2)
        }]
    );
    assert_eq!(
        rib.sent(&p),
        BTreeMap::from([(PathId(1), ip("10.0.0.11")), (PathId(3), ip("10.0.0.13"))])
    );
    // A new next hop takes the lowest free ID.
    let changes = rib.update(p, Some(&paths(&["10.0.0.11", "10.0.0.13", "10.0.0.14"])));
    assert_eq!(
        changes,
        [Change::Announce {
            prefix: p,
            path_id: PathId(2),
            next_hop: ip("10.0.0.14"),
            attrs: PathAttrs::default()
        }]
    );
}

#[test]
fn attribute_change_replaces_the_path_in_place() {
    let mut rib = AdjRibOut::new(true, None);
    let p = net("198.51.100.10/32");
    rib.sync(&desired(&[("198.51.100.10/32", &["10.0.0.11"])]));
    let mut weighted = paths(&["10.0.0.11"]);
    weighted.values_mut().for_each(|a| a.weight = Some(3));
    let changes = rib.update(p, Some(&weighted));
    assert!(
        matches!(&changes[..], [Change::Announce { path_id: PathId(1), attrs, .. }] if attrs.weight == Some(3))
    );
}

#[test]
fn removing_a_prefix_withdraws_all_its_paths() {
    let mut rib = AdjRibOut::new(true, None);
    rib.sync(&desired(&[(
        "198.51.100.10/32",
        &["10.0.0.11", "10.0.0.12"],
    )]));
    let changes = rib.sync(&Desired::new());
    assert_eq!(changes.len(), 2);
    assert!(changes.iter().all(|c| matches!(c, Change::Withdraw { .. })));
    assert_eq!(rib.prefixes(), 0);
}

#[test]
fn send_max_caps_paths_without_churn() {
    let mut rib = AdjRibOut::new(true, Some(2));
    let p = net("198.51.100.10/32");
    rib.sync(&desired(&[(
        "198.51.100.10/32",
        &["10.0.0.13", "10.0.0.12"],
    )]));
    assert!(!rib.ecmp_degraded());
    // A lower next hop arriving does not displace one already announced.
    let changes = rib.update(p, Some(&paths(&["10.0.0.11", "10.0.0.12", "10.0.0.13"])));
    assert!(changes.is_empty(), "{changes:?}");
    assert!(rib.ecmp_degraded());
    // When one leaves, the waiting one takes its place and its path ID: one implicit replace.
    let changes = rib.update(p, Some(&paths(&["10.0.0.11", "10.0.0.13"])));
    assert!(
        matches!(&changes[..], [Change::Announce { path_id: PathId(1), next_hop, .. }] if *next_hop == ip("10.0.0.11")),
        "{changes:?}"
    );
    assert_eq!(
        rib.sent(&p).values().copied().collect::<Vec<_>>(),
        [ip("10.0.0.11"), ip("10.0.0.13")]
    );
    assert!(!rib.ecmp_degraded());
}

#[test]
fn without_add_path_one_deterministic_path_and_degraded_state() {
    let mut rib = AdjRibOut::new(false, None);
    let p = net("198.51.100.10/32");
    let changes = rib.sync(&desired(&[(
        "198.51.100.10/32",
        &["10.0.0.13", "10.0.0.11", "10.0.0.12"],
    )]));
    assert_eq!(
        changes,
        [Change::Announce {
            prefix: p,
            path_id: PathId(0),
            next_hop: ip("10.0.0.11"),
            attrs: PathAttrs::default()
        }]
    );
    assert!(rib.ecmp_degraded());
    // The chosen next hop leaving moves the single path (implicit replace, no withdraw).
    let changes = rib.update(p, Some(&paths(&["10.0.0.12", "10.0.0.13"])));
    assert!(
        matches!(&changes[..], [Change::Announce { next_hop, path_id: PathId(0), .. }] if *next_hop == ip("10.0.0.12"))
    );
    // With weights, the heaviest wins.
    let mut w = paths(&["10.0.0.12", "10.0.0.13"]);
    w.get_mut(&ip("10.0.0.13")).unwrap().weight = Some(5);
    let changes = rib.update(p, Some(&w));
    assert!(
        matches!(&changes[..], [Change::Announce { next_hop, .. }] if *next_hop == ip("10.0.0.13"))
    );
    rib.update(p, Some(&paths(&["10.0.0.12"])));
    assert!(!rib.ecmp_degraded());
}

/// The peer's view, built only from the changes sent.
fn apply(peer: &mut BTreeMap<(IpNet, PathId), IpAddr>, changes: &[Change]) {
    for c in changes {
        match c {
            Change::Announce {
                prefix,
                path_id,
                next_hop,
                ..
            } => {
                peer.insert((*prefix, *path_id), *next_hop);
            }
            Change::Withdraw { prefix, path_id } => {
                assert!(
                    peer.remove(&(*prefix, *path_id)).is_some(),
                    "withdrew {prefix} {path_id:?} never sent"
                );
            }
        }
    }
}

fn arb_desired() -> impl Strategy<Value = Desired> {
    let prefix = (0u8..4).prop_map(|i| net(&format!("198.51.100.{i}/32")));
    let nhs = proptest::collection::btree_set(11u8..17, 0..6).prop_map(|s| {
        s.into_iter()
            .map(|o| (ip(&format!("10.0.0.{o}")), PathAttrs::default()))
            .collect::<Paths>()
    });
    proptest::collection::btree_map(prefix, nhs, 0..4)
}

proptest! {
    /// Applying only the changes sent gives the peer exactly the chosen paths, resending sends
    /// nothing, and a next hop that stays keeps its path ID.
    #[test]
    fn changes_converge_and_ids_are_stable(states in proptest::collection::vec(arb_desired(), 1..12), add_path in any::<bool>(), cap in proptest::option::of(1usize..4)) {
        let mut rib = AdjRibOut::new(add_path, cap);
        let mut peer = BTreeMap::new();
        for d in states {
            let before: BTreeMap<(IpNet, IpAddr), PathId> = peer.iter().map(|((p, id), nh)| ((*p, *nh), *id)).collect();
            let changes = rib.sync(&d);
            apply(&mut peer, &changes);
            prop_assert!(rib.sync(&d).is_empty());
            for (prefix, paths) in &d {
                let sent: Vec<(PathId, IpAddr)> = peer.iter().filter(|((p, _), _)| p == prefix).map(|((_, id), nh)| (*id, *nh)).collect();
                let expected = if paths.is_empty() { 0 } else if add_path { paths.len().min(cap.unwrap_or(usize::MAX)) } else { 1 };
                prop_assert_eq!(sent.len(), expected);
                for (id, nh) in sent {
                    prop_assert!(paths.contains_key(&nh));
                    if add_path && let Some(old) = before.get(&(*prefix, nh)) {
                        prop_assert_eq!(*old, id, "path ID of {} changed", nh);
                    }
                }
            }
            prop_assert!(peer.keys().all(|(p, _)| d.get(p).is_some_and(|paths| !paths.is_empty())));
        }
    }
}

//! RIB-out diffing: minimal changes, stable path IDs, caps, batches and the no-ADD-PATH fallback.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn id(nh: &str) -> PathId {
    PathId::preferred(ip(nh))
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

/// Every batch until the peer holds `d`; small batches, so batching is exercised too.
fn sync(rib: &mut AdjRibOut, d: &Desired) -> Vec<Change> {
    let target = Arc::new(d.clone());
    let mut all = Vec::new();
    loop {
        let batch = rib.sync(&target, 2);
        if batch.is_empty() {
            return all;
        }
        all.extend(batch);
    }
}

/// A RIB-out and the state it was last brought to, for one-prefix edits.
struct Peer {
    rib: AdjRibOut,
    state: Desired,
}

impl Peer {
    fn new(add_path: bool, cap: Option<usize>) -> Peer {
        Peer {
            rib: AdjRibOut::new(Scope::All, add_path, cap),
            state: Desired::new(),
        }
    }

    fn set(&mut self, prefix: &str, p: Paths) -> Vec<Change> {
        self.state.insert(net(prefix), p);
        let s = self.state.clone();
        sync(&mut self.rib, &s)
    }
}

#[test]
fn add_path_announces_one_path_per_next_hop_with_ids_from_the_next_hop() {
    let mut rib = AdjRibOut::new(Scope::All, true, None);
    let changes = sync(
        &mut rib,
        &desired(&[("198.51.100.10/32", &["10.0.0.11", "10.0.0.12", "10.0.0.13"])]),
    );
    let ids: Vec<(PathId, IpAddr)> = changes
        .iter()
        .map(|c| match c {
            Change::Announce {
                path_id, next_hop, ..
            } => (*path_id, *next_hop),
            Change::Withdraw { .. } => panic!("nothing to withdraw"),
        })
        .collect();
    assert_eq!(
        ids,
        [
            (PathId(0x0a00_000b), ip("10.0.0.11")),
            (PathId(0x0a00_000c), ip("10.0.0.12")),
            (PathId(0x0a00_000d), ip("10.0.0.13"))
        ]
    );
    assert!(!rib.ecmp_degraded());
    assert_eq!((rib.prefixes(), rib.paths()), (1, 3));
}

#[test]
fn ipv6_next_hops_sharing_low_bits_get_distinct_ids() {
    let mut rib = AdjRibOut::new(Scope::All, true, None);
    let p = net("2001:db8::10/128");
    sync(
        &mut rib,
        &desired(&[("2001:db8::10/128", &["fd00::11", "fd01::11"])]),
    );
    let sent = rib.sent(&p);
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert_eq!(sent.get(&PathId(0x11)), Some(&ip("fd00::11")));
    assert_eq!(sent.get(&PathId(0x12)), Some(&ip("fd01::11")));
}

#[test]
fn resending_the_same_state_sends_nothing() {
    let mut rib = AdjRibOut::new(Scope::All, true, None);
    let d = desired(&[
        ("198.51.100.10/32", &["10.0.0.11", "10.0.0.12"]),
        ("2001:db8::10/128", &["fd00::11"]),
    ]);
    assert_eq!(sync(&mut rib, &d).len(), 3);
    // A new snapshot with equal content: nothing either.
    assert!(sync(&mut rib, &d).is_empty());
}

#[test]
fn scope_keeps_each_family_to_its_own_rib() {
    let d = desired(&[
        ("198.51.100.10/32", &["10.0.0.11", "10.0.0.12"]),
        ("2001:db8::10/128", &["fd00::11"]),
    ]);
    let mut v4 = AdjRibOut::new(Scope::Ipv4, true, None);
    let mut v6 = AdjRibOut::new(Scope::Ipv6, true, None);
    assert_eq!(sync(&mut v4, &d).len(), 2);
    assert_eq!(sync(&mut v6, &d).len(), 1);
    assert_eq!((v4.prefixes(), v6.prefixes()), (1, 1));
}

#[test]
fn batches_respect_the_budget_and_resume_where_they_stopped() {
    let mut rib = AdjRibOut::new(Scope::All, true, None);
    let d: Desired = (0..10u8)
        .map(|i| {
            (
                net(&format!("198.51.100.{i}/32")),
                paths(&["10.0.0.11", "10.0.0.12"]),
            )
        })
        .collect();
    let target = Arc::new(d);
    let first = rib.sync(&target, 5);
    // Budget 5 with two paths per prefix: three prefixes (a prefix is never split).
    assert_eq!(first.len(), 6);
    assert_eq!(rib.prefixes(), 3);
    let mut total = first.len();
    loop {
        let b = rib.sync(&target, 5);
        if b.is_empty() {
            break;
        }
        total += b.len();
    }
    assert_eq!(total, 20);
    assert_eq!(rib.paths(), 20);
}

#[test]
fn a_next_hop_leaving_withdraws_only_its_path_and_others_keep_their_ids() {
    let mut peer = Peer::new(true, None);
    let p = net("198.51.100.10/32");
    peer.set(
        "198.51.100.10/32",
        paths(&["10.0.0.11", "10.0.0.12", "10.0.0.13"]),
    );
    let changes = peer.set("198.51.100.10/32", paths(&["10.0.0.11", "10.0.0.13"]));
    assert_eq!(
        changes,
        [Change::Withdraw {
            prefix: p,
            path_id: id("10.0.0.12")
        }]
    );
    assert_eq!(
        peer.rib.sent(&p),
        BTreeMap::from([
            (id("10.0.0.11"), ip("10.0.0.11")),
            (id("10.0.0.13"), ip("10.0.0.13"))
        ])
    );
    let changes = peer.set(
        "198.51.100.10/32",
        paths(&["10.0.0.11", "10.0.0.13", "10.0.0.14"]),
    );
    assert_eq!(
        changes,
        [Change::Announce {
            prefix: p,
            path_id: id("10.0.0.14"),
            next_hop: ip("10.0.0.14"),
            attrs: Arc::new(PathAttrs::default())
        }]
    );
}

#[test]
fn attribute_change_replaces_the_path_in_place() {
    let mut peer = Peer::new(true, None);
    peer.set("198.51.100.10/32", paths(&["10.0.0.11"]));
    let mut weighted = Paths::new();
    weighted.insert(
        ip("10.0.0.11"),
        PathAttrs {
            weight: Some(3),
            ..PathAttrs::default()
        },
    );
    let changes = peer.set("198.51.100.10/32", weighted);
    assert!(
        matches!(&changes[..], [Change::Announce { path_id, attrs, .. }] if attrs.weight == Some(3) && *path_id == id("10.0.0.11"))
    );
}

#[test]
fn removing_a_prefix_withdraws_all_its_paths() {
    let mut rib = AdjRibOut::new(Scope::All, true, None);
    sync(
        &mut rib,
        &desired(&[("198.51.100.10/32", &["10.0.0.11", "10.0.0.12"])]),
    );
    let changes = sync(&mut rib, &Desired::new());
    assert_eq!(changes.len(), 2);
    assert!(changes.iter().all(|c| matches!(c, Change::Withdraw { .. })));
    assert_eq!((rib.prefixes(), rib.paths()), (0, 0));
}

#[test]
fn send_max_caps_paths_without_churn() {
    let mut peer = Peer::new(true, Some(2));
    let p = net("198.51.100.10/32");
    peer.set("198.51.100.10/32", paths(&["10.0.0.13", "10.0.0.12"]));
    assert!(!peer.rib.ecmp_degraded());
    // A lower next hop arriving does not displace one already announced.
    let changes = peer.set(
        "198.51.100.10/32",
        paths(&["10.0.0.11", "10.0.0.12", "10.0.0.13"]),
    );
    assert!(changes.is_empty(), "{changes:?}");
    assert!(peer.rib.ecmp_degraded());
    // When one leaves, the waiting one takes its place.
    let changes = peer.set("198.51.100.10/32", paths(&["10.0.0.11", "10.0.0.13"]));
    assert_eq!(
        changes,
        [
            Change::Withdraw {
                prefix: p,
                path_id: id("10.0.0.12")
            },
            Change::Announce {
                prefix: p,
                path_id: id("10.0.0.11"),
                next_hop: ip("10.0.0.11"),
                attrs: Arc::new(PathAttrs::default())
            }
        ]
    );
    assert_eq!(
        peer.rib.sent(&p).values().copied().collect::<Vec<_>>(),
        [ip("10.0.0.11"), ip("10.0.0.13")]
    );
    assert!(!peer.rib.ecmp_degraded());
}

#[test]
fn without_add_path_one_deterministic_path_and_degraded_state() {
    let mut peer = Peer::new(false, None);
    let p = net("198.51.100.10/32");
    let changes = peer.set(
        "198.51.100.10/32",
        paths(&["10.0.0.13", "10.0.0.11", "10.0.0.12"]),
    );
    assert_eq!(
        changes,
        [Change::Announce {
            prefix: p,
            path_id: PathId(0),
            next_hop: ip("10.0.0.11"),
            attrs: Arc::new(PathAttrs::default())
        }]
    );
    assert!(peer.rib.ecmp_degraded());
    // The chosen next hop leaving moves the single path (implicit replace, no withdraw).
    let changes = peer.set("198.51.100.10/32", paths(&["10.0.0.12", "10.0.0.13"]));
    assert!(
        matches!(&changes[..], [Change::Announce { next_hop, path_id: PathId(0), .. }] if *next_hop == ip("10.0.0.12"))
    );
    // With weights, the heaviest wins.
    let mut w = paths(&["10.0.0.12"]);
    w.insert(
        ip("10.0.0.13"),
        PathAttrs {
            weight: Some(5),
            ..PathAttrs::default()
        },
    );
    let changes = peer.set("198.51.100.10/32", w);
    assert!(
        matches!(&changes[..], [Change::Announce { next_hop, .. }] if *next_hop == ip("10.0.0.13"))
    );
    peer.set("198.51.100.10/32", paths(&["10.0.0.12"]));
    assert!(!peer.rib.ecmp_degraded());
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
    let prefix = prop_oneof![
        (0u8..4).prop_map(|i| net(&format!("198.51.100.{i}/32"))),
        (0u8..2).prop_map(|i| net(&format!("2001:db8::{i}/128"))),
    ];
    let nhs = (
        proptest::collection::btree_set(11u8..17, 0..6),
        proptest::collection::btree_set(0u8..3, 0..3),
    );
    proptest::collection::btree_map(prefix, nhs, 0..5).prop_map(|m| {
        m.into_iter()
            .map(|(p, (v4, v6))| {
                let paths: Paths = if p.addr().is_ipv4() {
                    v4.into_iter()
                        .map(|o| (ip(&format!("10.0.0.{o}")), PathAttrs::default()))
                        .collect()
                } else {
                    // The same low 32 bits on purpose: colliding preferred IDs.
                    v6.into_iter()
                        .map(|o| (ip(&format!("fd0{o}::11")), PathAttrs::default()))
                        .collect()
                };
                (p, paths)
            })
            .collect()
    })
}

proptest! {
    /// Applying only the changes sent gives the peer exactly the chosen paths, resending sends
    /// nothing, and a next hop that stays keeps its path ID.
    #[test]
    fn changes_converge_and_ids_are_stable(states in proptest::collection::vec(arb_desired(), 1..12), add_path in any::<bool>(), cap in proptest::option::of(1usize..4)) {
        let mut rib = AdjRibOut::new(Scope::All, add_path, cap);
        let mut peer = BTreeMap::new();
        for d in states {
            let before: BTreeMap<(IpNet, IpAddr), PathId> = peer.iter().map(|((p, id), nh)| ((*p, *nh), *id)).collect();
            let changes = sync(&mut rib, &d);
            apply(&mut peer, &changes);
            prop_assert!(sync(&mut rib, &d).is_empty());
            for (prefix, paths) in d.iter() {
                let sent: Vec<(PathId, IpAddr)> = peer.iter().filter(|((p, _), _)| p == prefix).map(|((_, id), nh)| (*id, *nh)).collect();
                let expected = if paths.is_empty() { 0 } else if add_path { paths.len().min(cap.unwrap_or(usize::MAX)) } else { 1 };
                prop_assert_eq!(sent.len(), expected);
                prop_assert_eq!(&rib.sent(prefix), &sent.iter().copied().collect::<BTreeMap<_, _>>());
                for (id, nh) in sent {
                    prop_assert!(paths.contains_key(&nh));
                    // IPv4 IDs never move; IPv6 IDs here collide on purpose and may shift.
                    if add_path && nh.is_ipv4() && let Some(old) = before.get(&(*prefix, nh)) {
                        prop_assert_eq!(*old, id, "path ID of {} changed", nh);
                    }
                }
            }
            prop_assert!(peer.keys().all(|(p, _)| d.get(p).is_some_and(|paths| !paths.is_empty())));
            prop_assert_eq!(rib.paths(), peer.len());
        }
    }
}

#[test]
fn deltas_move_only_their_prefixes_one_after_another() {
    let mut rib = AdjRibOut::new(Scope::Ipv4, true, None);
    let mut d: Desired = (0..10u8)
        .map(|i| {
            (
                net(&format!("198.51.100.{i}/32")),
                paths(&["10.0.0.11", "10.0.0.14"]),
            )
        })
        .collect();
    let v1 = Arc::new(d.clone());
    while !rib.sync(&v1, 4).is_empty() {}
    for (n, i) in [0u8, 9, 3].into_iter().enumerate() {
        let p = net(&format!("198.51.100.{i}/32"));
        d.insert(p, paths(&["10.0.0.11", "10.0.0.15"]));
        let v = Arc::new(d.clone());
        let changes = rib.sync_delta(&v, &[p]).unwrap();
        assert_eq!(changes.len(), 2, "change {n} (prefix {i}): {changes:?}");
    }
}

fn announced(changes: &[Change]) -> Vec<(IpNet, IpAddr)> {
    changes
        .iter()
        .filter_map(|c| match c {
            Change::Announce {
                prefix, next_hop, ..
            } => Some((*prefix, *next_hop)),
            Change::Withdraw { .. } => None,
        })
        .collect()
}

fn withdrawn(changes: &[Change]) -> Vec<IpNet> {
    changes
        .iter()
        .filter_map(|c| match c {
            Change::Withdraw { prefix, .. } => Some(*prefix),
            Change::Announce { .. } => None,
        })
        .collect()
}

#[test]
fn a_resend_announces_every_path_again_and_nothing_else() {
    let d = desired(&[
        ("10.0.0.1/32", &["192.0.2.1", "192.0.2.2"]),
        ("10.0.0.2/32", &["192.0.2.1"]),
    ]);
    let mut rib = AdjRibOut::new(Scope::All, true, Some(1));
    sync(&mut rib, &d);
    rib.resend_all();
    let again = sync(&mut rib, &d);
    // The send-max cap keeps the path already chosen.
    assert_eq!(
        announced(&again),
        vec![
            (net("10.0.0.1/32"), ip("192.0.2.1")),
            (net("10.0.0.2/32"), ip("192.0.2.1"))
        ]
    );
    assert!(withdrawn(&again).is_empty());
    assert!(sync(&mut rib, &d).is_empty(), "once");
    // A delta is not taken while a resend is due.
    rib.resend_all();
    assert!(rib.sync_delta(&Arc::new(d.clone()), &[]).is_none());
}

/// A ROUTE-REFRESH used to replace the RIB-out with a fresh one: a prefix the peer still held
/// from before (its withdrawal not yet sent, a sync being under way) was then never withdrawn.
#[test]
fn a_resend_during_a_sync_still_withdraws_what_the_peer_holds_and_is_gone() {
    let first: Desired = (0..20u8)
        .map(|i| (net(&format!("10.0.0.{i}/32")), paths(&["192.0.2.1"])))
        .collect();
    let mut rib = AdjRibOut::new(Scope::All, true, None);
    sync(&mut rib, &first);
    // Every prefix but the first goes; the sync towards that has begun.
    let mut second = first.clone();
    for i in 1..20u8 {
        second.remove(&net(&format!("10.0.0.{i}/32")));
    }
    let target = Arc::new(second.clone());
    let mut changes = rib.sync(&target, 4);
    assert_eq!(withdrawn(&changes).len(), 4, "a batch of the withdrawals");
    rib.resend_all();
    loop {
        let batch = rib.sync(&target, 4);
        if batch.is_empty() {
            break;
        }
        changes.extend(batch);
    }
    let mut gone = withdrawn(&changes);
    gone.sort();
    gone.dedup();
    assert_eq!(
        gone.len(),
        19,
        "every removed prefix withdrawn: {changes:?}"
    );
    assert!(announced(&changes).contains(&(net("10.0.0.0/32"), ip("192.0.2.1"))));

    // What replacing the RIB-out did: the fresh one knows nothing to withdraw.
    let mut fresh = AdjRibOut::new(Scope::All, true, None);
    assert!(withdrawn(&sync(&mut fresh, &second)).is_empty());
}

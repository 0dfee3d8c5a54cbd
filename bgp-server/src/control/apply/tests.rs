use berth_proto::v1;
use prost::Message;

use super::{DELTA_MAX, convert};
use crate::control::convert as slow;
use crate::rib::Desired;

fn route(prefix: &str, next_hops: &[&str]) -> v1::Route {
    v1::Route {
        prefix: prefix.into(),
        next_hops: next_hops
            .iter()
            .map(|a| v1::NextHop {
                address: (*a).into(),
                weight: 0,
            })
            .collect(),
        communities: vec!["64512:100".into()],
        ..Default::default()
    }
}

fn state(generation: u64, routes: Vec<v1::Route>) -> v1::DesiredState {
    v1::DesiredState {
        next_hop_groups: Vec::new(),
        generation,
        global: Some(v1::Global {
            asn: 64512,
            router_id: "10.0.0.11".into(),
            ..Default::default()
        }),
        peers: vec![v1::Peer {
            address: "10.0.0.1".into(),
            asn: 64513,
            communities: vec!["65000:1".into()],
            ..Default::default()
        }],
        routes,
    }
}

fn many(n: u32, hops: &[&str]) -> Vec<v1::Route> {
    (0..n)
        .map(|i| {
            let a = std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(100, 64, 0, 0)) + i);
            route(&format!("{a}/32"), hops)
        })
        .collect()
}

fn ok(bytes: &[u8], applied: &Desired) -> super::Converted {
    convert(bytes, applied, None).unwrap_or_else(|e| panic!("refused: {e}"))
}

#[test]
fn gives_what_the_whole_message_conversion_gives() {
    let mut s = state(7, many(300, &["10.0.0.11", "10.0.0.12"]));
    s.routes.push(v1::Route {
        local_pref: Some(200),
        large_communities: vec![v1::LargeCommunity {
            global_admin: 1,
            local_data_1: 2,
            local_data_2: 3,
        }],
        ..route("2001:db8::/64", &["fd00::11"])
    });
    s.routes.push(v1::Route {
        next_hops: vec![v1::NextHop {
            address: "10.0.0.13".into(),
            weight: 3,
        }],
        ..route("198.51.100.0/24", &[])
    });
    let mut want = slow::desired_state(&s).unwrap_or_else(|e| panic!("{e}"));
    let want_desired = want.desired();
    want.routes = Vec::new();
    let got = ok(&s.encode_to_vec(), &Desired::new());
    assert_eq!(got.generation, 7);
    assert_eq!(got.settings, want);
    assert_eq!(got.desired, want_desired);
    assert_eq!(got.changed, 302);
    assert_eq!(got.touched.map(|t| t.len()), Some(302));
}

#[test]
fn an_identical_state_changes_nothing_and_a_partial_one_only_its_prefixes() {
    let first = state(1, many(1000, &["10.0.0.11", "10.0.0.12", "10.0.0.13"]));
    let applied = ok(&first.encode_to_vec(), &Desired::new()).desired;
    // The operator's resync: the same routes, a newer generation.
    let same = ok(&state(2, first.routes.clone()).encode_to_vec(), &applied);
    assert_eq!(same.generation, 2);
    assert_eq!(same.changed, 0);
    assert_eq!(same.touched, Some(vec![]));
    assert_eq!(same.desired, applied);
    // In another order: still nothing.
    let mut reversed = first.routes.clone();
    reversed.reverse();
    assert_eq!(ok(&state(3, reversed).encode_to_vec(), &applied).changed, 0);
    // One next hop changed, one prefix gone, one added.
    let mut routes = first.routes.clone();
    routes[10] = route(&routes[10].prefix.clone(), &["10.0.0.11"]);
    let gone = routes.remove(20).prefix;
    routes.push(route("198.51.100.10/32", &["10.0.0.14"]));
    let partial = ok(&state(4, routes).encode_to_vec(), &applied);
    assert_eq!(partial.changed, 3);
    let mut touched: Vec<String> = partial
        .touched
        .unwrap_or_default()
        .iter()
        .map(ToString::to_string)
        .collect();
    touched.sort();
    let mut want = vec![
        first.routes[10].prefix.clone(),
        gone.clone(),
        "198.51.100.10/32".to_owned(),
    ];
    want.sort();
    assert_eq!(touched, want);
    assert_eq!(partial.desired.len(), 1000);
    assert!(
        !partial.desired.contains_key(
            &gone
                .parse::<ipnet::IpNet>()
                .unwrap_or_else(|e| panic!("{e}"))
        )
    );
}

#[test]
fn many_changes_are_counted_but_not_listed() {
    let s = state(1, many(DELTA_MAX as u32 + 1, &["10.0.0.11"]));
    let got = ok(&s.encode_to_vec(), &Desired::new());
    assert_eq!(got.changed, DELTA_MAX + 1);
    assert_eq!(got.touched, None);
    // Everything removed: counted as well.
    let empty = ok(&state(2, vec![]).encode_to_vec(), &got.desired);
    assert_eq!(empty.changed, DELTA_MAX + 1);
    assert!(empty.desired.is_empty());
}

#[test]
fn errors_name_the_apis_fields_as_before() {
    let refused = |s: &v1::DesiredState| {
        let lean = convert(&s.encode_to_vec(), &Desired::new(), None)
            .err()
            .unwrap_or_else(|| panic!("accepted: {s:?}"));
        // The same verdict as converting the whole message.
        let whole = slow::desired_state(s)
            .err()
            .unwrap_or_else(|| panic!("whole conversion accepted: {s:?}"));
        assert_eq!(lean, whole);
        lean.to_string()
    };
    let mut s = state(1, many(5, &["10.0.0.11"]));
    s.routes[3].next_hops[0].address = "fd00::1".into();
    assert!(refused(&s).starts_with("routes[3].next_hops: fd00::1 is not of the prefix's family"));
    let mut s = state(1, many(5, &["10.0.0.11"]));
    s.routes[4].prefix = s.routes[1].prefix.clone();
    assert!(
        refused(&s).starts_with("routes[4].prefix:"),
        "{}",
        refused(&s)
    );
    let mut s = state(1, many(2, &["10.0.0.11"]));
    s.routes[1].prefix = "10.0.0.1/24".into();
    assert!(refused(&s).contains("host bits"));
    let mut s = state(1, many(2, &["10.0.0.11"]));
    s.routes[0].communities = vec!["70000:1".into()];
    assert!(refused(&s).starts_with("routes[0].communities"));
    // Settings are judged first, whatever the routes say.
    let mut s = state(0, many(2, &["nonsense"]));
    s.generation = 0;
    assert!(refused(&s).starts_with("generation"));
}

#[test]
fn bytes_that_are_not_a_state_are_refused_not_a_panic() {
    let good = state(1, many(3, &["10.0.0.11"])).encode_to_vec();
    for cut in [1, 5, good.len() / 2, good.len() - 1] {
        if let Some(head) = good.get(..cut) {
            // Either refused or, where the cut falls between fields, a smaller valid state.
            let _ = convert(head, &Desired::new(), None);
        }
    }
    assert!(
        convert(&[0x0f], &Desired::new(), None).is_err(),
        "wire type 7"
    );
    assert!(
        convert(&[0x22, 0x7f], &Desired::new(), None).is_err(),
        "a route past the end"
    );
    assert!(
        convert(&[0xff; 11], &Desired::new(), None).is_err(),
        "an endless varint"
    );
}

#[test]
fn a_grouped_state_is_the_same_state_as_written_out() {
    let mut routes = many(500, &["10.0.0.11", "10.0.0.12", "10.0.0.13"]);
    routes.extend(many(3, &["10.0.0.14"]).into_iter().map(|mut r| {
        r.prefix = r.prefix.replace("100.64.", "100.65.");
        r
    }));
    let expanded = state(1, routes.clone());
    let applied = ok(&expanded.encode_to_vec(), &Desired::new()).desired;
    let mut grouped = state(2, routes);
    grouped.next_hop_groups = berth_proto::groups::share(&mut grouped.routes);
    assert_eq!(grouped.next_hop_groups.len(), 1);
    // Smaller on the wire (three next hops per route here), and nothing to change for the
    // speaker.
    assert!(grouped.encoded_len() < expanded.encoded_len());
    let got = ok(&grouped.encode_to_vec(), &applied);
    assert_eq!(got.changed, 0);
    assert_eq!(got.desired, applied);
    // From scratch too, by both conversions.
    assert_eq!(
        ok(&grouped.encode_to_vec(), &Desired::new()).desired,
        applied
    );
    assert_eq!(
        slow::desired_state(&grouped)
            .unwrap_or_else(|e| panic!("{e}"))
            .desired(),
        applied
    );
    // A route naming a group the message lacks is refused with its index.
    grouped.routes[7].next_hop_group = "nh2".into();
    let e = convert(&grouped.encode_to_vec(), &applied, None).unwrap_err();
    assert_eq!(e.field, "routes[7].next_hop_group");
}

#[test]
fn a_small_message_naming_a_large_group_from_many_routes_is_refused_before_it_is_held() {
    // 20,001 routes naming one group of 1,000 next hops: 20,001,000 paths from ~0.5 MB.
    let nodes: Vec<String> = (0..1000u32)
        .map(|i| std::net::Ipv4Addr::from(0x0A00_0000 + i).to_string())
        .collect();
    let nodes: Vec<&str> = nodes.iter().map(String::as_str).collect();
    let mut routes = many(20_001, &[]);
    for r in &mut routes {
        r.next_hop_group = "all".into();
    }
    let mut s = state(1, routes);
    s.next_hop_groups = vec![v1::NextHopGroup {
        name: "all".into(),
        next_hops: route("0.0.0.0/0", &nodes).next_hops,
    }];
    let bytes = s.encode_to_vec();
    assert!(bytes.len() < 1 << 20);
    let e = convert(&bytes, &Desired::new(), None).unwrap_err();
    assert_eq!(e.field, "routes[20000]");
    assert!(e.why.contains("more than 20000000 next hops"), "{e}");
    // One route fewer is within the bound (not converted here: it is 20 million paths).
    s.routes.pop();
    let mut total = 0usize;
    let groups = slow::next_hop_groups(&s.next_hop_groups, "next_hop_groups")
        .unwrap_or_else(|e| panic!("{e}"));
    for (i, r) in s.routes.iter().enumerate() {
        slow::count_paths(&mut total, r, &groups, &format!("routes[{i}]"))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    assert_eq!(total, slow::MAX_PATHS);
}

/// The routes `(i, h)` of `many`'s prefixes, in the order given: prefix `i`, next hop `h`.
fn picked(picks: &[(u16, u8)]) -> Vec<v1::Route> {
    let hops = ["10.0.0.11", "10.0.0.12", "10.0.0.13"];
    picks
        .iter()
        .map(|(i, h)| {
            let a = std::net::Ipv4Addr::from(
                u32::from(std::net::Ipv4Addr::new(100, 64, 0, 0)) + u32::from(*i),
            );
            route(&format!("{a}/32"), &[hops[usize::from(*h) % hops.len()]])
        })
        .collect()
}

proptest::proptest! {
    /// In order or not, onto any applied table: the merge gives the whole message's routes,
    /// and says exactly which prefixes changed (added, changed, gone).
    #[test]
    fn a_merge_in_any_order_is_the_whole_conversion(
        before in proptest::collection::btree_map(0u16..400, 0u8..3, 0..300),
        after in proptest::collection::btree_map(0u16..400, 0u8..3, 0..300),
        shuffle in proptest::bool::ANY,
    ) {
        let applied = ok(
            &state(1, picked(&before.clone().into_iter().collect::<Vec<_>>())).encode_to_vec(),
            &Desired::new(),
        )
        .desired;
        let mut picks: Vec<(u16, u8)> = after.clone().into_iter().collect();
        if shuffle {
            picks.reverse();
            let mid = picks.len() / 2;
            picks[..mid].sort();
        }
        let s = state(2, picked(&picks));
        let got = ok(&s.encode_to_vec(), &applied);
        let want = slow::desired_state(&s).unwrap_or_else(|e| panic!("{e}")).desired();
        proptest::prop_assert_eq!(&got.desired, &want);
        let mut changed: Vec<_> = applied
            .diff(&want, None)
            .map(|(p, _, _)| p)
            .collect();
        changed.sort();
        proptest::prop_assert_eq!(got.changed, changed.len());
        let mut touched = got.touched.clone().unwrap_or_default();
        touched.sort();
        proptest::prop_assert_eq!(touched, changed);
    }
}

#[test]
/// A repeated prefix breaks the increasing order, so the set of prefixes seen finds it, wherever
/// it is; the error names the second listing.
fn a_prefix_listed_twice_is_refused_naming_the_second() {
    for (picks, second) in [
        (vec![(1u16, 0u8), (2, 0), (2, 1), (3, 0)], 2),
        (vec![(3u16, 0u8), (2, 0), (1, 0), (2, 1)], 3),
    ] {
        let e = convert(
            &state(1, picked(&picks)).encode_to_vec(),
            &Desired::new(),
            None,
        )
        .expect_err("a duplicate");
        assert_eq!(
            e.field,
            format!("routes[{second}].prefix"),
            "{picks:?}: {e}"
        );
        assert!(e.why.contains("listed twice"), "{e}");
    }
}

#[test]
fn routes_with_the_applied_digest_are_not_converted_again_and_others_are() {
    let first = state(1, many(200, &["10.0.0.11"]));
    let applied = ok(&first.encode_to_vec(), &Desired::new());
    // The same routes under new settings and a new generation: the digest matches.
    let mut same = state(2, many(200, &["10.0.0.11"]));
    same.peers.clear();
    let got = convert(
        &same.encode_to_vec(),
        &applied.desired,
        Some(applied.digest),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got.digest, applied.digest);
    assert_eq!((got.changed, got.generation), (0, 2));
    assert!(
        got.settings.peers.is_empty(),
        "the settings are this state's"
    );
    assert_eq!(got.desired, applied.desired);
    // The known digest is only a shortcut for equal routes: any other routes are converted,
    // even when the caller's table is not what that digest described.
    let other = state(3, many(201, &["10.0.0.11"]));
    let got = convert(
        &other.encode_to_vec(),
        &Desired::new(),
        Some(applied.digest),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(got.digest, applied.digest);
    assert_eq!((got.changed, got.desired.len()), (201, 201));
    // Groups decide routes too: a group's next hop changed changes the digest.
    let grouped = |nh: &str| {
        let mut s = state(
            4,
            vec![v1::Route {
                next_hop_group: "g".into(),
                ..route("100.64.0.0/32", &[])
            }],
        );
        s.next_hop_groups = vec![v1::NextHopGroup {
            name: "g".into(),
            next_hops: vec![v1::NextHop {
                address: nh.into(),
                weight: 0,
            }],
        }];
        s.encode_to_vec()
    };
    let a = ok(&grouped("10.0.0.11"), &Desired::new());
    let b = convert(&grouped("10.0.0.12"), &a.desired, Some(a.digest))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(b.changed, 1, "the group's change is converted");
}

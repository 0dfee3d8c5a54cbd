//! What one replica is told: peers by node selector, routes by ECMP mode.

use super::*;

fn conf(yaml: &str) -> BgpConfSpec {
    serde_yaml_ng::from_str(yaml).unwrap()
}

fn peer(name: &str, yaml: &str, selector: Option<Selector>, password: Option<&str>) -> Peer {
    Peer {
        name: name.into(),
        spec: serde_yaml_ng::from_str(yaml).unwrap(),
        node_selector: selector,
        password: password.map(Into::into),
    }
}

fn replica(node: &str, rack: &str, ip: &str) -> Replica {
    Replica {
        node: node.into(),
        labels: [("rack".to_owned(), rack.to_owned())].into(),
        addresses: vec![ip.parse().unwrap()],
    }
}

fn hop(ip: &str, node: &str) -> NextHop {
    NextHop {
        address: ip.parse().unwrap(),
        weight: None,
        node: node.into(),
    }
}

fn routes() -> BTreeMap<IpAddr, crate::routes::Hops> {
    BTreeMap::from([
        (
            "198.51.100.10".parse().unwrap(),
            vec![hop("10.0.0.11", "n1"), hop("10.0.0.12", "n2")].into(),
        ),
        (
            "2001:db8::10".parse().unwrap(),
            vec![hop("fd00::12", "n2")].into(),
        ),
        ("198.51.100.20".parse().unwrap(), Vec::new().into()),
    ])
}

fn peers() -> Vec<Peer> {
    let rack_a = Selector {
        match_labels: [("rack".to_owned(), "a".to_owned())].into(),
        requirements: vec![],
    };
    vec![
        peer(
            "tor-a",
            "address: 10.0.0.1\npeerAsn: 64513",
            Some(rack_a),
            Some("s3cret"),
        ),
        peer(
            "core",
            "address: 10.9.0.1\npeerAsn: 64514\nebgpMultihop: 3",
            None,
            None,
        ),
    ]
}

#[test]
fn peers_follow_the_node_selector_and_carry_their_passwords() {
    let c = conf("asn: 64512");
    let a = desired_state(7, &c, &replica("n1", "a", "10.0.0.11"), &peers(), &routes()).unwrap();
    let b = desired_state(7, &c, &replica("n2", "b", "10.0.0.12"), &peers(), &routes()).unwrap();
    let names = |s: &v1::DesiredState| {
        s.peers
            .iter()
            .map(|p| p.address.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&a), ["10.0.0.1", "10.9.0.1"]);
    assert_eq!(names(&b), ["10.9.0.1"]);
    assert_eq!(a.peers[0].password, "s3cret");
    assert_eq!(a.peers[1].ebgp_multihop, 3);
    assert_eq!(a.generation, 7);
    let g = a.global.unwrap();
    assert_eq!((g.asn, g.router_id.as_str()), (64512, "10.0.0.11"));
}

#[test]
fn add_path_mode_sends_every_next_hop_and_skips_ips_without_any() {
    let s = desired_state(
        1,
        &conf("asn: 64512"),
        &replica("n1", "a", "10.0.0.11"),
        &peers(),
        &routes(),
    )
    .unwrap();
    let r: Vec<(String, usize)> = s
        .routes
        .iter()
        .map(|r| (r.prefix.clone(), r.next_hops.len()))
        .collect();
    assert_eq!(
        r,
        [
            ("198.51.100.10/32".into(), 2),
            ("2001:db8::10/128".into(), 1)
        ]
    );
    assert!(s.peers.iter().all(|p| !p.disable_add_path));
}

#[test]
fn self_mode_announces_only_the_replicas_own_node() {
    let c = conf("asn: 64512\necmpMode: self");
    let s = desired_state(1, &c, &replica("n1", "a", "10.0.0.11"), &peers(), &routes()).unwrap();
    let r: Vec<(String, Vec<String>)> = s
        .routes
        .iter()
        .map(|r| {
            (
                r.prefix.clone(),
                r.next_hops.iter().map(|h| h.address.clone()).collect(),
            )
        })
        .collect();
    assert_eq!(r, [("198.51.100.10/32".into(), vec!["10.0.0.11".into()])]);
    assert!(s.peers.iter().all(|p| p.disable_add_path));
}

#[test]
fn a_router_id_is_required_somewhere() {
    let mut v6_only = replica("n1", "a", "fd00::11");
    v6_only.labels.clear();
    let e = desired_state(1, &conf("asn: 64512"), &v6_only, &[], &BTreeMap::new()).unwrap_err();
    assert!(e.to_string().contains("set spec.routerId"), "{e}");
    let s = desired_state(
        1,
        &conf("asn: 64512\nrouterId: 10.1.1.1"),
        &v6_only,
        &[],
        &BTreeMap::new(),
    )
    .unwrap();
    assert_eq!(s.global.unwrap().router_id, "10.1.1.1");
}

fn spec(yaml: &str) -> BgpPeerSpec {
    serde_yaml_ng::from_str(yaml).unwrap()
}

#[test]
fn peers_the_speaker_would_refuse_are_named_with_the_conflicting_object() {
    let peers = vec![
        (
            "b-new".to_owned(),
            Some("2026-02-01T00:00:00Z".to_owned()),
            spec("{address: 10.0.0.1, peerAsn: 65001}"),
        ),
        (
            "a-old".to_owned(),
            Some("2026-01-01T00:00:00Z".to_owned()),
            spec("{address: 10.0.0.1, peerAsn: 65002}"),
        ),
        (
            "fine".to_owned(),
            None,
            spec("{address: 10.0.0.2, peerAsn: 65001}"),
        ),
        (
            "waits".to_owned(),
            None,
            spec("{address: 10.0.0.3, peerAsn: 65001, passive: true}"),
        ),
    ];
    let listening = conf("{asn: 64512, listenPort: 179}");
    let r = refusals(&peers, Some(&listening));
    assert_eq!(
        r.keys().collect::<Vec<_>>(),
        ["b-new"],
        "the older peer keeps the address"
    );
    assert_eq!(r["b-new"].reason, "DuplicateAddress");
    assert!(
        r["b-new"].message.contains("BgpPeer a-old"),
        "{}",
        r["b-new"].message
    );

    // One BgpPeer per rack, same ToR address, disjoint selectors: no conflict.
    let racks = vec![
        (
            "rack-a".to_owned(),
            None,
            spec("{address: 169.254.0.1, peerAsn: 65001, nodeSelector: {matchLabels: {rack: a}}}"),
        ),
        (
            "rack-b".to_owned(),
            None,
            spec("{address: 169.254.0.1, peerAsn: 65001, nodeSelector: {matchLabels: {rack: b}}}"),
        ),
    ];
    assert!(refusals(&racks, Some(&listening)).is_empty());

    let connect_only = conf("{asn: 64512, listenPort: 0}");
    let r = refusals(&peers, Some(&connect_only));
    assert_eq!(r.keys().collect::<Vec<_>>(), ["b-new", "waits"]);
    assert_eq!(r["waits"].reason, "PassiveWithoutListener");
    assert!(r["waits"].message.contains("listenPort"));
    // Input order does not matter.
    let mut reversed = peers.clone();
    reversed.reverse();
    assert_eq!(refusals(&reversed, Some(&connect_only)), r);
}

#[test]
fn passwords_must_fit_a_tcp_md5_key() {
    assert_eq!(password_problem("s3cret"), None);
    assert_eq!(password_problem(&"x".repeat(80)), None);
    assert!(
        password_problem(&"x".repeat(81))
            .unwrap()
            .message
            .contains("81 bytes")
    );
    assert!(password_problem("").is_some());
}

#[test]
fn a_replica_gets_one_peer_per_address_when_selectors_overlap() {
    let rack = Selector {
        match_labels: [("rack".to_owned(), "a".to_owned())].into(),
        requirements: vec![],
    };
    let peers = vec![
        peer("older", "{address: 10.0.0.1, peerAsn: 65001}", None, None),
        peer(
            "newer",
            "{address: 10.0.0.1, peerAsn: 65002}",
            Some(rack),
            None,
        ),
    ];
    let state = desired_state(
        1,
        &conf("{asn: 64512}"),
        &replica("n1", "a", "10.0.0.11"),
        &peers,
        &routes(),
    )
    .unwrap();
    assert_eq!(state.peers.len(), 1);
    assert_eq!(
        state.peers[0].asn, 65001,
        "the first (oldest) keeps the address"
    );
}

/// A BgpPeer's export attributes reach the speaker's Peer: well-known community names as
/// their values, large communities parsed, LOCAL_PREF and families as written.
#[test]
fn peers_carry_communities_local_pref_and_families() {
    let p = peer(
        "tor",
        "address: 10.0.0.1\npeerAsn: 64512\ncommunities: ['65000:100', no-export, graceful-shutdown]\nlargeCommunities: ['65000:1:2']\nlocalPref: 200\nfamilies: [ipv4-unicast]",
        None,
        None,
    );
    let s = desired_state(
        1,
        &conf("asn: 64512"),
        &replica("n1", "a", "10.0.0.11"),
        &[p],
        &routes(),
    )
    .unwrap();
    let peer = &s.peers[0];
    assert_eq!(peer.communities, ["65000:100", "65535:65281", "65535:0"]);
    assert_eq!(
        peer.large_communities,
        [v1::LargeCommunity {
            global_admin: 65000,
            local_data_1: 1,
            local_data_2: 2
        }]
    );
    assert_eq!(peer.local_pref, Some(200));
    assert_eq!(peer.families, ["ipv4-unicast"]);
}

/// The scale: 10,000 Services over 1,000 nodes with ADD-PATH, half `Cluster` (every
/// node) and half `Local` (the three nodes with endpoints, a different three per Service).
fn at_scale() -> BTreeMap<IpAddr, crate::routes::Hops> {
    let node = |i: u32| hop(&std::net::Ipv4Addr::from(0x0A00_0000 + i).to_string(), "n");
    let every: crate::routes::Hops = (0..1000).map(node).collect::<Vec<_>>().into();
    (0..10_000u32)
        .map(|i| {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0xC633_0000 + i));
            let hops = if i % 2 == 0 {
                every.clone()
            } else {
                (0..3)
                    .map(|k| node((i + k * 331) % 1000))
                    .collect::<Vec<_>>()
                    .into()
            };
            (ip, hops)
        })
        .collect()
}

#[test]
fn ten_thousand_services_over_a_thousand_nodes_fit_one_message_far_below_the_limit() {
    let table = at_scale();
    let s = desired_state(
        1,
        &conf("asn: 64512"),
        &replica("n1", "a", "10.0.0.11"),
        &[],
        &table,
    )
    .unwrap();
    let size = prost::Message::encoded_len(&v1::ApplyRequest {
        state: Some(s.clone()),
    });
    // Repeated per route this was 73 MB, over the 64 MiB limit.
    assert!(size < 1 << 20, "{size} bytes");
    assert!(size * 64 < berth_proto::MAX_MESSAGE_BYTES);
    // Written out again, every route has exactly its own next hops.
    let mut routes = s.routes.clone();
    berth_proto::groups::resolve(&mut routes, &s.next_hop_groups).unwrap();
    assert_eq!(routes.len(), table.len());
    for (r, (ip, hops)) in routes.iter().zip(&table) {
        assert_eq!(r.prefix, prefix_of(*ip));
        let want: Vec<String> = hops.iter().map(|h| h.address.to_string()).collect();
        let got: Vec<String> = r.next_hops.iter().map(|h| h.address.clone()).collect();
        assert_eq!(got, want, "{ip}");
    }
    // A node going Ready changes every Cluster Service: the UpdateRoutes names the list once.
    let changed: std::collections::BTreeSet<IpAddr> = table.keys().step_by(2).copied().collect();
    let mut t = crate::routes::RouteTable::default();
    for (ip, hops) in &table {
        t.set(
            &crate::ipam::ServiceKey::new("ns", ip.to_string()),
            vec![(*ip, hops.to_vec())],
        );
    }
    let req = update_request(2, &t, &changed, false, &[]);
    assert_eq!((req.upsert.len(), req.next_hop_groups.len()), (5000, 1));
    assert!(prost::Message::encoded_len(&req) < 1 << 18);
}

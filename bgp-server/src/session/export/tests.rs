use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use berth_bgp_wire::{
    AsPath, AsSegment, Attribute, DecodeContext, EncodeContext, ExtCommunity, Family, Message,
    NextHop, Nlri, Update,
};

use super::Export;
use crate::config::PeerConfig;
use crate::rib::{Change, PathAttrs, PathId};

fn peer(json: &str) -> PeerConfig {
    match serde_json::from_str(json) {
        Ok(p) => p,
        Err(e) => panic!("test peer {json}: {e}"),
    }
}

fn ebgp() -> Export {
    Export::new(64512, &peer(r#"{"address": "10.0.0.1", "asn": 64513}"#))
}

fn ibgp(extra: &str) -> Export {
    Export::new(
        64512,
        &peer(&format!(
            r#"{{"address": "10.0.0.1", "asn": 64512{extra}}}"#
        )),
    )
}

fn as_path(attrs: &[Attribute]) -> Option<&AsPath> {
    attrs.iter().find_map(|a| match a {
        Attribute::AsPath(p) => Some(p),
        _ => None,
    })
}

fn local_pref(attrs: &[Attribute]) -> Option<u32> {
    attrs.iter().find_map(|a| match a {
        Attribute::LocalPref(p) => Some(*p),
        _ => None,
    })
}

#[test]
fn ebgp_prepends_our_asn_and_never_sends_local_pref() {
    let attrs = ebgp().attributes(&PathAttrs {
        local_pref: Some(300),
        ..PathAttrs::default()
    });
    assert_eq!(
        as_path(&attrs),
        Some(&AsPath(vec![AsSegment::Sequence(vec![64512])]))
    );
    assert_eq!(local_pref(&attrs), None, "{attrs:?}");
    assert_eq!(
        attrs.first(),
        Some(&Attribute::Origin(berth_bgp_wire::Origin::Igp))
    );
}

#[test]
fn ibgp_sends_an_empty_as_path_and_local_pref_peer_over_route_over_100() {
    let route = PathAttrs {
        local_pref: Some(300),
        ..PathAttrs::default()
    };
    let plain = ibgp("");
    assert_eq!(as_path(&plain.attributes(&route)), Some(&AsPath(vec![])));
    assert_eq!(local_pref(&plain.attributes(&route)), Some(300));
    assert_eq!(
        local_pref(&plain.attributes(&PathAttrs::default())),
        Some(100)
    );
    let peer_pref = ibgp(r#", "localPref": 50"#);
    assert_eq!(local_pref(&peer_pref.attributes(&route)), Some(50));
}

#[test]
fn communities_are_the_routes_then_the_peers_each_once() {
    let export = Export::new(
        64512,
        &peer(
            r#"{"address": "10.0.0.1", "asn": 64513,
                "communities": ["65000:1", "64512:100"],
                "largeCommunities": [[65000, 1, 2], [7, 8, 9]]}"#,
        ),
    );
    let attrs = export.attributes(&PathAttrs {
        communities: vec![(64512 << 16) | 100],
        large_communities: vec![(7, 8, 9)],
        ..PathAttrs::default()
    });
    assert!(
        attrs.contains(&Attribute::Communities(vec![
            (64512 << 16) | 100,
            (65000 << 16) | 1,
        ])),
        "{attrs:?}"
    );
    assert!(
        attrs.contains(&Attribute::LargeCommunities(vec![[7, 8, 9], [65000, 1, 2]])),
        "{attrs:?}"
    );
    // Nothing to add: no empty attributes.
    let bare = ebgp().attributes(&PathAttrs::default());
    assert_eq!(bare.len(), 2, "ORIGIN and AS_PATH only: {bare:?}");
}

#[test]
fn a_weight_is_link_bandwidth_in_mbit_s_with_as_trans_for_a_4_octet_asn() {
    let attrs = Export::new(
        4_200_000_001,
        &peer(r#"{"address": "10.0.0.1", "asn": 64513}"#),
    )
    .attributes(&PathAttrs {
        weight: Some(3),
        ..PathAttrs::default()
    });
    assert!(
        attrs.contains(&Attribute::ExtendedCommunities(vec![
            ExtCommunity::LinkBandwidth {
                asn: berth_bgp_wire::AS_TRANS,
                bandwidth: 375_000f32.to_bits(),
            }
        ])),
        "{attrs:?}"
    );
}

fn decode_all(messages: &[Vec<u8>], ctx: &DecodeContext) -> Vec<Update> {
    messages
        .iter()
        .map(|m| match Message::decode(m, ctx) {
            Ok(Some((Message::Update(u), n))) if n == m.len() => u,
            other => panic!("not one UPDATE: {other:?}"),
        })
        .collect()
}

fn announce(prefix: &str, next_hop: [u8; 4], attrs: &Arc<PathAttrs>) -> Change {
    let next_hop = IpAddr::V4(Ipv4Addr::from(next_hop));
    Change::Announce {
        prefix: prefix.parse().unwrap_or_else(|e| panic!("{prefix}: {e}")),
        path_id: PathId(u32::from(Ipv4Addr::from([10, 0, 0, 11]))),
        next_hop,
        attrs: attrs.clone(),
    }
}

#[test]
fn a_4_octet_asn_toward_a_2_octet_peer_goes_as_as_trans_with_the_real_path_in_as4_path() {
    let export = Export::new(
        4_200_000_001,
        &peer(r#"{"address": "10.0.0.1", "asn": 64513}"#),
    );
    let attrs = Arc::new(PathAttrs::default());
    let changes = [announce("198.51.100.10/32", [10, 0, 0, 11], &attrs)];
    let two_octet = EncodeContext::default();
    let packed = export.encode(&two_octet, Family::Ipv4Unicast, &changes);
    let updates = decode_all(&packed.messages, &DecodeContext::default());
    let [u] = updates.as_slice() else {
        panic!("one UPDATE: {updates:?}")
    };
    assert!(
        u.attributes
            .contains(&Attribute::AsPath(AsPath(vec![AsSegment::Sequence(vec![
                u32::from(berth_bgp_wire::AS_TRANS)
            ])]))),
        "{:?}",
        u.attributes
    );
    assert!(
        u.attributes
            .contains(&Attribute::As4Path(AsPath(vec![AsSegment::Sequence(
                vec![4_200_000_001]
            )]))),
        "{:?}",
        u.attributes
    );
    // A 4-octet peer gets the real ASN in AS_PATH and no AS4_PATH.
    let four = EncodeContext {
        four_octet_as: true,
        ..EncodeContext::default()
    };
    let ctx4 = DecodeContext {
        four_octet_as: true,
        ..DecodeContext::default()
    };
    let updates = decode_all(
        &export.encode(&four, Family::Ipv4Unicast, &changes).messages,
        &ctx4,
    );
    let [u] = updates.as_slice() else {
        panic!("one UPDATE: {updates:?}")
    };
    assert!(
        !u.attributes
            .iter()
            .any(|a| matches!(a, Attribute::As4Path(_)))
    );
    assert_eq!(
        as_path(&u.attributes),
        Some(&AsPath(vec![AsSegment::Sequence(vec![4_200_000_001])]))
    );
}

#[test]
fn paths_sharing_next_hop_and_attributes_share_an_update_path_ids_only_with_add_path() {
    let export = ebgp();
    let attrs = Arc::new(PathAttrs::default());
    let other = Arc::new(PathAttrs {
        communities: vec![1],
        ..PathAttrs::default()
    });
    let changes = [
        announce("198.51.100.1/32", [10, 0, 0, 11], &attrs),
        announce("198.51.100.2/32", [10, 0, 0, 11], &attrs),
        announce("198.51.100.3/32", [10, 0, 0, 12], &attrs),
        announce("198.51.100.4/32", [10, 0, 0, 11], &other),
        Change::Withdraw {
            prefix: "198.51.100.9/32".parse().unwrap_or_else(|e| panic!("{e}")),
            path_id: PathId(7),
        },
    ];
    let plain = EncodeContext {
        four_octet_as: true,
        ..EncodeContext::default()
    };
    let ctx = DecodeContext {
        four_octet_as: true,
        ..DecodeContext::default()
    };
    let updates = decode_all(
        &export
            .encode(&plain, Family::Ipv4Unicast, &changes)
            .messages,
        &ctx,
    );
    let announced: Vec<(Option<NextHop>, Vec<Nlri>)> = updates
        .iter()
        .filter(|u| !u.nlri.is_empty())
        .map(|u| {
            let nh = u.attributes.iter().find_map(|a| match a {
                Attribute::NextHop(n) => Some(NextHop::V4(*n)),
                _ => None,
            });
            (nh, u.nlri.clone())
        })
        .collect();
    // Three groups: (.11, attrs) with two prefixes, (.11, other), (.12, attrs).
    assert_eq!(announced.len(), 3, "{updates:?}");
    assert!(announced.iter().any(|(nh, nlri)| {
        *nh == Some(NextHop::V4(Ipv4Addr::new(10, 0, 0, 11))) && nlri.len() == 2
    }));
    let withdrawn: Vec<&Nlri> = updates.iter().flat_map(|u| &u.withdrawn).collect();
    assert_eq!(withdrawn.len(), 1);
    assert!(
        updates
            .iter()
            .flat_map(|u| &u.nlri)
            .all(|n| n.path_id.is_none()),
        "no path IDs without ADD-PATH"
    );
    // With ADD-PATH for IPv4, every NLRI carries its ID.
    let ap = EncodeContext {
        add_path: [true, false],
        ..plain
    };
    let ctx_ap = DecodeContext {
        add_path: [true, false],
        ..ctx
    };
    let updates = decode_all(
        &export.encode(&ap, Family::Ipv4Unicast, &changes).messages,
        &ctx_ap,
    );
    assert!(
        updates
            .iter()
            .flat_map(|u| u.nlri.iter().chain(&u.withdrawn))
            .all(|n| n.path_id.is_some())
    );
    assert!(
        updates
            .iter()
            .flat_map(|u| &u.withdrawn)
            .any(|n| n.path_id == Some(7))
    );
}

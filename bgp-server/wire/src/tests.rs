//! Hex vectors in both directions, round trips, RFC 7606 outcomes, and no panic on any input.

use std::net::{Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;

use super::*;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn ctx4() -> DecodeContext {
    DecodeContext {
        four_octet_as: true,
        ..Default::default()
    }
}

fn enc4() -> EncodeContext {
    EncodeContext {
        four_octet_as: true,
        ..Default::default()
    }
}

fn decode_one(bytes: &[u8], ctx: &DecodeContext) -> Message {
    let (m, n) = Message::decode(bytes, ctx)
        .unwrap()
        .expect("a whole message");
    assert_eq!(n, bytes.len());
    m
}

const MARK: &str = "ffffffffffffffffffffffffffffffff";

#[test]
fn keepalive_vector() {
    let bytes = hex(&format!("{MARK} 0013 04"));
    assert_eq!(Message::Keepalive.to_bytes(&enc4()), bytes);
    assert_eq!(decode_one(&bytes, &ctx4()), Message::Keepalive);
}

fn berth_open() -> Open {
    Open {
        asn: 4_200_000_000,
        hold_time: 90,
        router_id: Ipv4Addr::new(10, 0, 0, 11),
        capabilities: vec![
            Capability::Multiprotocol { afi: 1, safi: 1 },
            Capability::Multiprotocol { afi: 2, safi: 1 },
            Capability::RouteRefresh,
            Capability::FourOctetAs(4_200_000_000),
            Capability::AddPath(vec![(1, 1, AddPathMode::Send), (2, 1, AddPathMode::Send)]),
            Capability::GracefulRestart {
                restarting: false,
                notification: false,
                restart_time: 120,
                families: vec![GracefulRestartFamily {
                    afi: 1,
                    safi: 1,
                    forwarding_preserved: true,
                }],
            },
        ],
    }
}

#[test]
fn open_vector_with_as_trans_add_path_and_graceful_restart() {
    let bytes = hex(&format!(
        "{MARK} 004f 01 04 5ba0 005a 0a00000b 32
         02 06 01 04 0001 00 01
         02 06 01 04 0002 00 01
         02 02 02 00
         02 06 41 04 fa56ea00
         02 0a 45 08 0001 01 02 0002 01 02
         02 08 40 06 0078 0001 01 80"
    ));
    let open = berth_open();
    assert_eq!(Message::Open(open.clone()).to_bytes(&enc4()), bytes);
    assert_eq!(
        decode_one(&bytes, &DecodeContext::default()),
        Message::Open(open)
    );
}

#[test]
fn open_accepts_several_capabilities_per_parameter_and_the_cisco_route_refresh() {
    // FRR packs capabilities this way; code 128 is the pre-standard route refresh.
    let bytes = hex(&format!(
        "{MARK} 0027 01 04 fde9 00b4 0a000001 0a 02 08 01 04 0001 00 01 80 00"
    ));
    let Message::Open(o) = decode_one(&bytes, &ctx4()) else {
        panic!("an OPEN")
    };
    assert_eq!(o.asn, 65001);
    assert_eq!(
        o.capabilities,
        [
            Capability::Multiprotocol { afi: 1, safi: 1 },
            Capability::RouteRefreshCisco
        ]
    );
}

#[test]
fn an_add_path_capability_with_a_mode_outside_1_to_3_is_ignored() {
    // ADD-PATH (69) for IPv4 unicast with Send/Receive 4, beside a valid MP capability.
    let bytes = hex(&format!(
        "{MARK} 002b 01 04 fde9 00b4 0a000001 0e 02 0c 01 04 0001 00 01 45 04 0001 01 04"
    ));
    let Message::Open(o) = decode_one(&bytes, &ctx4()) else {
        panic!("an OPEN")
    };
    assert_eq!(o.add_path().count(), 0);
    assert_eq!(
        o.capabilities,
        [
            Capability::Multiprotocol { afi: 1, safi: 1 },
            Capability::Unknown {
                code: 69,
                value: vec![0, 1, 1, 4]
            }
        ]
    );
}

#[test]
fn open_errors_carry_the_rfc_4271_notification() {
    let err = |body: &str| {
        let b = hex(body);
        let len = 19 + b.len();
        let mut m = hex(MARK);
        m.extend_from_slice(&(len as u16).to_be_bytes());
        m.push(1);
        m.extend_from_slice(&b);
        Message::decode(&m, &ctx4()).unwrap_err().notification()
    };
    assert_eq!(
        err("03 fde9 005a 0a000001 00"),
        Notification::new(2, 1, vec![0, 4])
    );
    assert_eq!(
        err("04 fde9 0002 0a000001 00"),
        Notification::new(2, 6, vec![])
    );
    assert_eq!(
        err("04 fde9 005a 00000000 00"),
        Notification::new(2, 3, vec![])
    );
    assert_eq!(
        err("04 fde9 005a 0a000001 04 01 02 00 00"),
        Notification::new(2, 4, vec![])
    );
}

#[test]
fn header_errors_carry_the_rfc_4271_notification() {
    let mut bad_marker = hex(&format!("{MARK} 0013 04"));
    bad_marker[0] = 0;
    assert_eq!(
        Message::decode(&bad_marker, &ctx4())
            .unwrap_err()
            .notification(),
        Notification::new(1, 1, vec![])
    );
    let long_keepalive = hex(&format!("{MARK} 0014 04 00"));
    assert_eq!(
        Message::decode(&long_keepalive, &ctx4())
            .unwrap_err()
            .notification(),
        Notification::new(1, 2, vec![0, 0x14])
    );
    let bad_type = hex(&format!("{MARK} 0013 09"));
    assert_eq!(
        Message::decode(&bad_type, &ctx4())
            .unwrap_err()
            .notification(),
        Notification::new(1, 3, vec![9])
    );
}

#[test]
fn partial_input_asks_for_more() {
    let bytes = hex(&format!("{MARK} 0013 04"));
    for n in 0..bytes.len() {
        assert_eq!(
            Message::decode(&bytes[..n], &ctx4()),
            Ok(None),
            "after {n} bytes"
        );
    }
}

fn v4_update() -> Update {
    Update {
        attributes: vec![
            Attribute::Origin(Origin::Igp),
            Attribute::AsPath(AsPath(vec![AsSegment::Sequence(vec![65001])])),
            Attribute::NextHop(Ipv4Addr::new(10, 0, 0, 11)),
        ],
        nlri: vec![
            Nlri {
                path_id: None,
                prefix: "198.51.100.10/32".parse().unwrap(),
            },
            Nlri {
                path_id: None,
                prefix: "198.51.100.11/32".parse().unwrap(),
            },
        ],
        ..Update::default()
    }
}

#[test]
fn ipv4_update_vector() {
    let bytes = hex(&format!(
        "{MARK} 0035 02 0000 0014
         40 01 01 00
         40 02 06 02 01 0000fde9
         40 03 04 0a00000b
         20 c6 33 64 0a  20 c6 33 64 0b"
    ));
    assert_eq!(Message::Update(v4_update()).to_bytes(&enc4()), bytes);
    assert_eq!(decode_one(&bytes, &ctx4()), Message::Update(v4_update()));
}

#[test]
fn ipv6_mp_reach_with_link_local_next_hop_and_path_ids() {
    let global: Ipv6Addr = "fd00::11".parse().unwrap();
    let ll: Ipv6Addr = "fe80::1".parse().unwrap();
    let u = Update {
        attributes: vec![
            Attribute::Origin(Origin::Igp),
            Attribute::AsPath(AsPath(vec![AsSegment::Sequence(vec![65001])])),
            Attribute::MpReach(MpReach {
                family: Family::Ipv6Unicast,
                next_hop: NextHop::V6 {
                    global,
                    link_local: Some(ll),
                },
                nlri: vec![Nlri {
                    path_id: Some(1),
                    prefix: "2001:db8::10/128".parse().unwrap(),
                }],
            }),
        ],
        ..Update::default()
    };
    let bytes = hex(&format!(
        "{MARK} 0062 02 0000 004b
         40 01 01 00
         40 02 06 02 01 0000fde9
         90 0e 003a 0002 01 20 fd000000000000000000000000000011 fe800000000000000000000000000001 00
         00000001 80 20010db8000000000000000000000010"
    ));
    let enc = EncodeContext {
        add_path: [false, true],
        ..enc4()
    };
    let dec = DecodeContext {
        add_path: [false, true],
        ..ctx4()
    };
    assert_eq!(Message::Update(u.clone()).to_bytes(&enc), bytes);
    assert_eq!(decode_one(&bytes, &dec), Message::Update(u));
}

#[test]
fn end_of_rib_markers_for_both_families() {
    let v4 = hex(&format!("{MARK} 0017 02 0000 0000"));
    assert_eq!(
        Message::Update(Update::end_of_rib(Family::Ipv4Unicast)).to_bytes(&enc4()),
        v4
    );
    let v6 = hex(&format!("{MARK} 001e 02 0000 0007 90 0f 0003 0002 01"));
    assert_eq!(
        Message::Update(Update::end_of_rib(Family::Ipv6Unicast)).to_bytes(&enc4()),
        v6
    );
    for (bytes, fam) in [(v4, Family::Ipv4Unicast), (v6, Family::Ipv6Unicast)] {
        let Message::Update(u) = decode_one(&bytes, &ctx4()) else {
            panic!("an UPDATE")
        };
        assert_eq!(u.is_end_of_rib(), Some(fam));
    }
    // The short-length form other speakers send is recognised too.
    let v6_short = hex(&format!("{MARK} 001d 02 0000 0006 80 0f 03 0002 01"));
    let Message::Update(u) = decode_one(&v6_short, &ctx4()) else {
        panic!("an UPDATE")
    };
    assert_eq!(u.is_end_of_rib(), Some(Family::Ipv6Unicast));
    assert_eq!(v4_update().is_end_of_rib(), None);
}

#[test]
fn two_octet_session_uses_as_trans_and_as4_path() {
    let mut u = v4_update();
    u.attributes[1] = Attribute::AsPath(AsPath(vec![AsSegment::Sequence(vec![4_200_000_000])]));
    let bytes = Message::Update(u).to_bytes(&EncodeContext::default());
    let Message::Update(d) = decode_one(&bytes, &DecodeContext::default()) else {
        panic!("an UPDATE")
    };
    assert!(
        d.attributes
            .contains(&Attribute::AsPath(AsPath(vec![AsSegment::Sequence(vec![
                23456
            ])])))
    );
    assert!(
        d.attributes
            .contains(&Attribute::As4Path(AsPath(vec![AsSegment::Sequence(
                vec![4_200_000_000]
            )])))
    );
}

#[test]
fn notification_with_shutdown_communication() {
    let n = Notification::shutdown("maintenance");
    let bytes = hex(&format!("{MARK} 0021 03 06 02 0b 6d61696e74656e616e6365"));
    assert_eq!(Message::Notification(n.clone()).to_bytes(&enc4()), bytes);
    let Message::Notification(d) = decode_one(&bytes, &ctx4()) else {
        panic!("a NOTIFICATION")
    };
    assert_eq!(d.shutdown_message(), Some("maintenance"));
    assert_eq!(
        Notification::shutdown(&"é".repeat(200)).data.len(),
        1 + 254,
        "cut on a character boundary"
    );
}

#[test]
fn route_refresh_vector() {
    let rr = RouteRefresh {
        afi: 2,
        subtype: 0,
        safi: 1,
    };
    let bytes = hex(&format!("{MARK} 0017 05 0002 00 01"));
    assert_eq!(Message::RouteRefresh(rr).to_bytes(&enc4()), bytes);
    assert_eq!(decode_one(&bytes, &ctx4()), Message::RouteRefresh(rr));
}

#[test]
fn link_bandwidth_and_large_communities_round_trip() {
    let mut u = v4_update();
    u.attributes.push(Attribute::ExtendedCommunities(vec![
        ExtCommunity::LinkBandwidth {
            asn: 64512,
            bandwidth: 3.0f32.to_bits(),
        },
        ExtCommunity::Other([0, 2, 0, 1, 0, 0, 0, 7]),
    ]));
    u.attributes
        .push(Attribute::LargeCommunities(vec![[4_200_000_000, 1, 2]]));
    u.attributes.push(Attribute::Communities(vec![0xfde8_0064]));
    let bytes = Message::Update(u.clone()).to_bytes(&enc4());
    assert_eq!(decode_one(&bytes, &ctx4()), Message::Update(u));
}

fn update_with_attrs(attrs: &str, nlri: &str) -> Vec<u8> {
    let a = hex(attrs);
    let n = hex(nlri);
    let mut m = hex(MARK);
    m.extend_from_slice(&((19 + 4 + a.len() + n.len()) as u16).to_be_bytes());
    m.push(2);
    m.extend_from_slice(&[0, 0]);
    m.extend_from_slice(&(a.len() as u16).to_be_bytes());
    m.extend_from_slice(&a);
    m.extend_from_slice(&n);
    m
}

#[test]
fn rfc_7606_treat_as_withdraw_discard_and_reset() {
    let ok_path = "40 02 06 02 01 0000fde9 40 03 04 0a00000b";
    let nlri = "20 c6 33 64 0a";
    let decode = |attrs: &str| Message::decode(&update_with_attrs(attrs, nlri), &ctx4());
    // Bad ORIGIN value: treat-as-withdraw, the session stays up.
    let Ok(Some((Message::Update(u), _))) = decode(&format!("40 01 01 07 {ok_path}")) else {
        panic!()
    };
    assert!(u.treat_as_withdraw);
    // Missing ORIGIN: treat-as-withdraw.
    let Ok(Some((Message::Update(u), _))) = decode(ok_path) else {
        panic!()
    };
    assert!(u.treat_as_withdraw);
    // Malformed ATOMIC_AGGREGATE: discarded, routes kept.
    let Ok(Some((Message::Update(u), _))) = decode(&format!("40 01 01 00 {ok_path} 40 06 01 00"))
    else {
        panic!()
    };
    assert!(!u.treat_as_withdraw);
    assert_eq!(u.discarded, [6]);
    // Unknown optional non-transitive: ignored; unknown optional transitive: kept.
    let Ok(Some((Message::Update(u), _))) =
        decode(&format!("40 01 01 00 {ok_path} 80 63 01 00 c0 64 01 05"))
    else {
        panic!()
    };
    assert_eq!(
        u.attributes.last(),
        Some(&Attribute::Unknown {
            flags: 0xc0,
            code: 100,
            value: vec![5]
        })
    );
    // Unknown well-known attribute: session reset 3/2.
    let err = decode(&format!("40 01 01 00 {ok_path} 40 63 01 00")).unwrap_err();
    assert_eq!(err.notification().code, 3);
    assert_eq!(err.notification().subcode, 2);
    // Malformed MP_REACH: session reset 3/9.
    let err = decode("40 01 01 00 80 0e 03 0002 01").unwrap_err();
    assert_eq!(
        (err.notification().code, err.notification().subcode),
        (3, 9)
    );
    // Prefix longer than 32 bits: session reset 3/10.
    let err = Message::decode(
        &update_with_attrs(&format!("40 01 01 00 {ok_path}"), "21 c6 33 64 0a 00"),
        &ctx4(),
    )
    .unwrap_err();
    assert_eq!(
        (err.notification().code, err.notification().subcode),
        (3, 10)
    );
}

fn group(n: usize, next_hop: Ipv4Addr, med: u32) -> (Vec<Attribute>, NextHop, Vec<Nlri>) {
    let attrs = vec![
        Attribute::Origin(Origin::Igp),
        Attribute::AsPath(AsPath(vec![AsSegment::Sequence(vec![64512])])),
        Attribute::Med(med),
    ];
    let nlri = (0..n)
        .map(|i| Nlri {
            path_id: Some(i as u32 % 4 + 1),
            prefix: IpNet::V4(
                ipnet::Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 + i as u32), 32).unwrap(),
            ),
        })
        .collect();
    (attrs, NextHop::V4(next_hop), nlri)
}

use ipnet::IpNet;

#[test]
fn packing_ten_thousand_prefixes_fits_4096_and_decodes_back() {
    let enc = EncodeContext {
        add_path: [true, false],
        ..enc4()
    };
    let dec = DecodeContext {
        add_path: [true, false],
        ..ctx4()
    };
    let groups = [
        group(10_000, Ipv4Addr::new(10, 0, 0, 11), 0),
        group(3_000, Ipv4Addr::new(10, 0, 0, 12), 7),
    ];
    let withdrawn: Vec<Nlri> = group(500, Ipv4Addr::UNSPECIFIED, 0).2;
    let msgs = pack_updates(&enc, Family::Ipv4Unicast, &withdrawn, &groups).messages;
    let mut got: Vec<(Option<u32>, Vec<Nlri>)> = Vec::new();
    let mut got_withdrawn = Vec::new();
    for m in &msgs {
        assert!(m.len() <= 4096, "{} bytes", m.len());
        let Message::Update(u) = decode_one(m, &dec) else {
            panic!("an UPDATE")
        };
        got_withdrawn.extend(u.withdrawn.clone());
        if !u.nlri.is_empty() {
            let med = u.attributes.iter().find_map(|a| match a {
                Attribute::Med(m) => Some(*m),
                _ => None,
            });
            got.push((med, u.nlri));
        }
    }
    assert_eq!(got_withdrawn, withdrawn);
    let with_med = |m: u32| {
        got.iter()
            .filter(|(x, _)| *x == Some(m))
            .flat_map(|(_, n)| n.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        with_med(0),
        groups[0].2,
        "group 1 intact, never mixed with group 2"
    );
    assert_eq!(with_med(7), groups[1].2);
    // Each message is nearly full: 13,500 prefixes of 9 bytes need at least 30 messages.
    assert!(msgs.len() <= 32, "{} messages", msgs.len());
}

#[test]
fn a_small_change_is_one_update_in_both_families() {
    let enc = EncodeContext {
        add_path: [true, true],
        ..enc4()
    };
    let out = pack_updates(
        &enc,
        Family::Ipv4Unicast,
        &group(1, Ipv4Addr::UNSPECIFIED, 0).2,
        &[group(1, Ipv4Addr::new(10, 0, 0, 13), 0)],
    )
    .messages;
    assert_eq!(out.len(), 1);
    let nh = NextHop::V6 {
        global: "fd00::13".parse().unwrap(),
        link_local: None,
    };
    let p = |id| Nlri {
        path_id: Some(id),
        prefix: "2001:db8::10/128".parse().unwrap(),
    };
    let out = pack_updates(
        &enc,
        Family::Ipv6Unicast,
        &[p(2)],
        &[(vec![Attribute::Origin(Origin::Igp)], nh, vec![p(4)])],
    )
    .messages;
    assert_eq!(out.len(), 1);
    let Message::Update(u) = decode_one(
        &out[0],
        &DecodeContext {
            add_path: [true, true],
            ..ctx4()
        },
    ) else {
        panic!()
    };
    assert!(
        u.attributes
            .iter()
            .any(|a| matches!(a, Attribute::MpUnreach(m) if m.withdrawn == [p(2)]))
    );
    assert!(
        u.attributes
            .iter()
            .any(|a| matches!(a, Attribute::MpReach(m) if m.nlri == [p(4)]))
    );
    // RFC 7606 §5.1: MP_REACH_NLRI is the very first attribute (after the 19-byte header and
    // the two length fields, byte 23 is the first attribute's flags, 24 its type code).
    assert_eq!(out[0][24], 14, "{:02x?}", &out[0][..32]);
    assert!(matches!(u.attributes[0], Attribute::MpReach(_)));
}

#[test]
fn packed_announcements_to_a_two_octet_peer_carry_as_trans_and_as4_path() {
    // The announcing path (pack_updates), a 4-octet local ASN, a session without 4-octet ASNs.
    let attrs = vec![
        Attribute::Origin(Origin::Igp),
        Attribute::AsPath(AsPath(vec![AsSegment::Sequence(vec![4_200_000_001])])),
    ];
    let nlri = group(3, Ipv4Addr::UNSPECIFIED, 0).2;
    let two = EncodeContext {
        four_octet_as: false,
        ..EncodeContext::default()
    };
    let nlri: Vec<Nlri> = nlri
        .into_iter()
        .map(|n| Nlri { path_id: None, ..n })
        .collect();
    for family in [Family::Ipv4Unicast, Family::Ipv6Unicast] {
        let (nh, nlri) = if family == Family::Ipv4Unicast {
            (NextHop::V4(Ipv4Addr::new(10, 0, 0, 11)), nlri.clone())
        } else {
            let p = Nlri {
                path_id: None,
                prefix: "2001:db8::10/128".parse().unwrap(),
            };
            let nh = NextHop::V6 {
                global: "fd00::11".parse().unwrap(),
                link_local: None,
            };
            (nh, vec![p])
        };
        let packed = pack_updates(&two, family, &[], &[(attrs.clone(), nh, nlri)]);
        assert_eq!(packed.messages.len(), 1);
        assert_eq!(packed.unsendable, 0);
        let Message::Update(u) = decode_one(&packed.messages[0], &DecodeContext::default()) else {
            panic!("an UPDATE")
        };
        assert!(
            u.attributes
                .contains(&Attribute::AsPath(AsPath(vec![AsSegment::Sequence(vec![
                    23456
                ])]))),
            "{family:?}: {:?}",
            u.attributes
        );
        assert!(
            u.attributes
                .contains(&Attribute::As4Path(AsPath(vec![AsSegment::Sequence(
                    vec![4_200_000_001]
                )]))),
            "{family:?}: {:?}",
            u.attributes
        );
    }
    // A 4-octet session needs no AS4_PATH.
    let packed = pack_updates(
        &enc4(),
        Family::Ipv4Unicast,
        &[],
        &[(
            attrs,
            NextHop::V4(Ipv4Addr::new(10, 0, 0, 11)),
            group(1, Ipv4Addr::UNSPECIFIED, 0).2,
        )],
    );
    let Message::Update(u) = decode_one(&packed.messages[0], &ctx4()) else {
        panic!("an UPDATE")
    };
    assert!(
        !u.attributes
            .iter()
            .any(|a| matches!(a, Attribute::As4Path(_)))
    );
}

#[test]
fn a_group_too_large_for_one_update_is_reported_not_sent() {
    // 1,100 communities (4,400 bytes) leave no room for a prefix in 4,096 bytes.
    let mut big = group(5, Ipv4Addr::new(10, 0, 0, 11), 0);
    big.0.push(Attribute::Communities(
        (0..1100).map(|i| 0xfde8_0000 + i).collect(),
    ));
    let small = group(2, Ipv4Addr::new(10, 0, 0, 12), 3);
    let packed = pack_updates(&enc4(), Family::Ipv4Unicast, &[], &[big, small.clone()]);
    assert_eq!(packed.unsendable, 5);
    assert_eq!(packed.messages.len(), 1, "only the small group");
    let Message::Update(u) = decode_one(&packed.messages[0], &ctx4()) else {
        panic!("an UPDATE")
    };
    let sent: Vec<_> = u.nlri.iter().map(|n| n.prefix).collect();
    let want: Vec<_> = small.2.iter().map(|n| n.prefix).collect();
    assert_eq!(sent, want);
}

fn arb_nlri(add_path: bool) -> impl Strategy<Value = Nlri> {
    (any::<u32>(), 0u8..=32, any::<u32>()).prop_map(move |(a, len, id)| Nlri {
        path_id: add_path.then_some(id),
        prefix: IpNet::V4(ipnet::Ipv4Net::new(Ipv4Addr::from(a), len).unwrap().trunc()),
    })
}

proptest! {
    #[test]
    fn decoding_arbitrary_bytes_never_panics(body in proptest::collection::vec(any::<u8>(), 0..300), kind in 1u8..=5, ap in any::<bool>(), four in any::<bool>()) {
        let mut m = hex(MARK);
        m.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
        m.push(kind);
        m.extend_from_slice(&body);
        let ctx = DecodeContext { four_octet_as: four, add_path: [ap, ap], extended_message: false };
        let _ = Message::decode(&m, &ctx);
    }

    #[test]
    fn updates_round_trip(
        nlri in proptest::collection::vec(arb_nlri(true), 1..50),
        withdrawn in proptest::collection::vec(arb_nlri(true), 0..20),
        asns in proptest::collection::vec(any::<u32>(), 1..20),
        med in proptest::option::of(any::<u32>()),
        communities in proptest::collection::vec(any::<u32>(), 1..5),
    ) {
        let mut attributes = vec![
            Attribute::Origin(Origin::Incomplete),
            Attribute::AsPath(AsPath(vec![AsSegment::Sequence(asns)])),
            Attribute::NextHop(Ipv4Addr::new(192, 0, 2, 1)),
            Attribute::Communities(communities),
        ];
        if let Some(m) = med {
            attributes.push(Attribute::Med(m));
        }
        let u = Update { withdrawn, attributes, nlri, ..Update::default() };
        let enc = EncodeContext { add_path: [true, false], ..enc4() };
        let dec = DecodeContext { add_path: [true, false], ..ctx4() };
        let bytes = Message::Update(u.clone()).to_bytes(&enc);
        prop_assert_eq!(decode_one(&bytes, &dec), Message::Update(u));
    }
}

#[test]
fn the_graceful_restart_n_bit_and_a_hard_reset_encode_as_rfc_8538_says() {
    let open = Open {
        asn: 64512,
        hold_time: 90,
        router_id: Ipv4Addr::new(10, 0, 0, 11),
        capabilities: vec![Capability::GracefulRestart {
            restarting: true,
            notification: true,
            restart_time: 120,
            families: vec![],
        }],
    };
    let bytes = Message::Open(open.clone()).to_bytes(&enc4());
    // Restart flags and time: R (0x8000) | N (0x4000) | 120 = 0xc078, the last two bytes.
    assert_eq!(&bytes[bytes.len() - 2..], &[0xc0, 0x78]);
    let Message::Open(back) = decode_one(&bytes, &ctx4()) else {
        panic!("an OPEN")
    };
    assert_eq!(back, open);
    let hard = Notification::hard_reset(&Notification::bare(6, 3));
    assert_eq!((hard.code, hard.subcode, hard.data), (6, 9, vec![6, 3]));
}

//! Every invalid-argument path names the API's field.

use super::*;

fn good() -> v1::DesiredState {
    v1::DesiredState {
        next_hop_groups: Vec::new(),
        generation: 1,
        global: Some(v1::Global {
            asn: 64512,
            router_id: "10.0.0.11".into(),
            listen_port: 0,
            graceful_restart: None,
        }),
        peers: vec![v1::Peer {
            address: "10.0.0.1".into(),
            asn: 64513,
            hold_time_seconds: Some(9),
            ..Default::default()
        }],
        routes: vec![v1::Route {
            next_hop_group: String::new(),
            prefix: "198.51.100.10/32".into(),
            next_hops: vec![
                v1::NextHop {
                    address: "10.0.0.11".into(),
                    weight: 0,
                },
                v1::NextHop {
                    address: "10.0.0.12".into(),
                    weight: 2,
                },
            ],
            communities: vec!["64512:100".into()],
            large_communities: vec![v1::LargeCommunity {
                global_admin: 64512,
                local_data_1: 1,
                local_data_2: 2,
            }],
            local_pref: None,
        }],
    }
}

fn err(edit: impl FnOnce(&mut v1::DesiredState)) -> String {
    let mut s = good();
    edit(&mut s);
    desired_state(&s).unwrap_err().to_string()
}

#[test]
fn a_good_state_converts_and_round_trips() {
    let cfg = desired_state(&good()).unwrap();
    assert_eq!(cfg.peers[0].port, 179);
    assert_eq!(cfg.peers[0].hold_time, 9);
    assert!(cfg.peers[0].add_path);
    assert_eq!(cfg.routes[0].next_hops[1].weight(), Some(2));
    let d = cfg.desired();
    let paths = d
        .get(&"198.51.100.10/32".parse::<IpNet>().unwrap())
        .unwrap();
    assert_eq!(paths.len(), 2);
    assert!(
        paths
            .values()
            .all(|a| a.large_communities == [(64512, 1, 2)])
    );
    let back = to_api(1, &cfg);
    assert_eq!(desired_state(&back).unwrap(), cfg);
}

#[test]
fn every_invalid_argument_names_the_field() {
    let cases: Vec<(String, &str)> = vec![
        (err(|s| s.generation = 0), "generation: must be at least 1"),
        (err(|s| s.global = None), "global: is required"),
        (
            err(|s| s.global.as_mut().unwrap().asn = 0),
            "global.asn: must be",
        ),
        (
            err(|s| s.global.as_mut().unwrap().asn = 23456),
            "global.asn: must be",
        ),
        (
            err(|s| s.global.as_mut().unwrap().router_id = "fd00::1".into()),
            "global.router_id: \"fd00::1\" is not an IPv4 address",
        ),
        (
            err(|s| s.global.as_mut().unwrap().router_id = "0.0.0.0".into()),
            "global.router_id: must not be 0.0.0.0",
        ),
        (
            err(|s| s.global.as_mut().unwrap().listen_port = 70000),
            "global.listen_port: 70000 is more than 65535",
        ),
        (
            err(|s| {
                s.global.as_mut().unwrap().graceful_restart = Some(v1::GracefulRestart {
                    enabled: true,
                    restart_time_seconds: 5000,
                })
            }),
            "global.graceful_restart.restart_time_seconds: must be 1-4095",
        ),
        (
            err(|s| s.peers[0].address = "10.0.0".into()),
            "peers[0].address: \"10.0.0\" is not an IPv4 or IPv6 address",
        ),
        (
            err(|s| s.peers.push(s.peers[0].clone())),
            "peers[1].address: 10.0.0.1 is configured twice",
        ),
        (err(|s| s.peers[0].asn = 0), "peers[0].asn: must be"),
        (
            err(|s| s.peers[0].hold_time_seconds = Some(2)),
            "peers[0].hold_time_seconds: must be 0 or at least 3",
        ),
        (
            err(|s| s.peers[0].keepalive_seconds = Some(9)),
            "peers[0].keepalive_seconds: must be less than",
        ),
        (
            err(|s| s.peers[0].port = 70000),
            "peers[0].port: 70000 is more than 65535",
        ),
        (
            err(|s| s.peers[0].passive = true),
            "peers[0].passive: a passive peer needs",
        ),
        (
            err(|s| s.peers[0].password = "x".repeat(81)),
            "peers[0].password: must be 1-80 bytes",
        ),
        (
            err(|s| s.peers[0].source_address = "nope".into()),
            "peers[0].source_address: \"nope\" is not",
        ),
        (
            err(|s| s.peers[0].ebgp_multihop = 300),
            "peers[0].ebgp_multihop: 300 is more than 255",
        ),
        (
            err(|s| s.peers[0].connect_retry_seconds = 7200),
            "peers[0].connect_retry_seconds: 7200 is more than 3600",
        ),
        (
            err(|s| s.routes[0].prefix = "198.51.100.10".into()),
            "routes[0].prefix: \"198.51.100.10\" is not a prefix",
        ),
        (
            err(|s| s.routes[0].prefix = "198.51.100.10/24".into()),
            "routes[0].prefix: has host bits set",
        ),
        (
            err(|s| s.routes.push(s.routes[0].clone())),
            "routes[1].prefix: 198.51.100.10/32 is listed twice",
        ),
        (
            err(|s| s.routes[0].next_hops.clear()),
            "routes[0].next_hops: needs at least one next hop",
        ),
        (
            err(|s| s.routes[0].next_hops[1].address = "fd00::12".into()),
            "routes[0].next_hops: fd00::12 is not of the prefix's family",
        ),
        (
            err(|s| s.routes[0].next_hops[1].address = "10.0.0.11".into()),
            "routes[0].next_hops: 10.0.0.11 is listed twice",
        ),
        (
            err(|s| s.routes[0].next_hops[0].address = "".into()),
            "routes[0].next_hops[0].address: \"\" is not",
        ),
        (
            err(|s| s.routes[0].communities = vec!["64512".into()]),
            "routes[0].communities: \"64512\" is not asn:value",
        ),
    ];
    for (got, want) in cases {
        assert!(
            got.starts_with(want),
            "{got:?} does not start with {want:?}"
        );
    }
}

/// `good()` with its route's next hops moved into a group the route names.
fn grouped() -> v1::DesiredState {
    let mut s = good();
    let next_hops = std::mem::take(&mut s.routes[0].next_hops);
    s.next_hop_groups = vec![v1::NextHopGroup {
        name: "nh1".into(),
        next_hops,
    }];
    s.routes[0].next_hop_group = "nh1".into();
    s
}

#[test]
fn a_route_naming_a_group_gets_the_groups_next_hops() {
    let want = desired_state(&good()).unwrap();
    assert_eq!(desired_state(&grouped()).unwrap(), want);
    // Back to the API with a second route sharing the list: one group, both routes name it.
    let mut two = want.clone();
    let mut other = two.routes[0].clone();
    other.prefix = "198.51.100.11/32".parse().unwrap();
    two.routes.push(other);
    let api = to_api(1, &two);
    assert_eq!(api.next_hop_groups.len(), 1);
    assert!(
        api.routes
            .iter()
            .all(|r| r.next_hop_group == "nh1" && r.next_hops.is_empty())
    );
    assert_eq!(desired_state(&api).unwrap(), two);
}

#[test]
fn every_group_error_names_the_field() {
    type Edit = fn(&mut v1::DesiredState);
    let cases: Vec<(Edit, &str)> = vec![
        (
            |s| s.routes[0].next_hop_group = "nh9".into(),
            "routes[0].next_hop_group: \"nh9\" is not a group of this message",
        ),
        (
            |s| s.routes[0].next_hops = good().routes[0].next_hops.clone(),
            "routes[0].next_hop_group: is set and so is next_hops",
        ),
        (
            |s| s.next_hop_groups[0].name.clear(),
            "next_hop_groups[0].name: is empty",
        ),
        (
            |s| {
                let again = s.next_hop_groups[0].clone();
                s.next_hop_groups.push(again);
            },
            "next_hop_groups[1].name: \"nh1\" names two groups",
        ),
        (
            |s| s.next_hop_groups[0].next_hops.clear(),
            "next_hop_groups[0].next_hops: group \"nh1\" has no next hop",
        ),
        (
            |s| {
                let again = s.next_hop_groups[0].next_hops[0].clone();
                s.next_hop_groups[0].next_hops.push(again);
            },
            "next_hop_groups[0].next_hops[2].address: 10.0.0.11 is listed twice",
        ),
        (
            |s| s.next_hop_groups[0].next_hops[1].address = "ten".into(),
            "next_hop_groups[0].next_hops[1].address: \"ten\" is not an IPv4 or IPv6 address",
        ),
        (
            // The family is the route's to check: an IPv6 prefix naming IPv4 next hops.
            |s| s.routes[0].prefix = "2001:db8::10/128".into(),
            "routes[0].next_hop_group: group \"nh1\": 10.0.0.11 is not of the prefix's family",
        ),
    ];
    for (edit, want) in cases {
        let mut s = grouped();
        edit(&mut s);
        let got = desired_state(&s).unwrap_err().to_string();
        assert!(got.starts_with(want), "{got:?} should start with {want:?}");
    }
}

//! One test per rule of the engine.

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn pool(name: &str, address: &str) -> PoolSpec {
    PoolSpec {
        name: name.into(),
        address: address.into(),
        ..Default::default()
    }
}

fn default_pool(name: &str, address: &str) -> PoolSpec {
    PoolSpec {
        default: true,
        ..pool(name, address)
    }
}

fn holder(name: &str) -> Holder {
    Holder::new(ServiceKey::new("ns", name))
}

fn shared(name: &str, key: &str, ports: &[u16]) -> Holder {
    Holder {
        sharing_key: Some(key.into()),
        ports: ports
            .iter()
            .map(|p| Port {
                port: *p,
                protocol: Protocol::Tcp,
            })
            .collect(),
        ..holder(name)
    }
}

fn v4(h: Holder) -> Request {
    Request::new(h, Family::V4)
}

fn engine(pools: Vec<PoolSpec>) -> Ipam {
    let (ipam, report) = Ipam::rebuild(pools, []);
    assert!(report.invalid_pools.is_empty(), "{report:?}");
    ipam
}

// ---- address syntax ----

#[test]
fn parses_single_cidr_and_range_of_both_families() {
    assert_eq!(
        "10.0.0.5".parse::<AddressSpec>().unwrap().range().len(),
        Count::new(1)
    );
    assert_eq!(
        "10.0.0.0/24".parse::<AddressSpec>().unwrap().range().len(),
        Count::new(256)
    );
    assert_eq!(
        "10.0.0.10-10.0.0.20"
            .parse::<AddressSpec>()
            .unwrap()
            .range()
            .len(),
        Count::new(11)
    );
    assert_eq!(
        "fd00::/120".parse::<AddressSpec>().unwrap().range().len(),
        Count::new(256)
    );
    assert_eq!(
        "fd00::1-fd00::ff"
            .parse::<AddressSpec>()
            .unwrap()
            .range()
            .len(),
        Count::new(255)
    );
}

#[test]
fn bad_addresses_say_what_is_wrong() {
    let err = |s: &str| s.parse::<AddressSpec>().unwrap_err().to_string();
    assert!(err("10.0.0.20-10.0.0.10").contains("ends (10.0.0.10) before it starts"));
    assert!(err("10.0.0.1-fd00::1").contains("mixes IPv4 and IPv6"));
    assert!(err("10.0.0.1/24").contains("did you mean 10.0.0.0/24"));
    assert!(err("pool-a").contains("is not an IP address"));
    assert!(err("10.0.0.0/33").contains("not a valid CIDR"));
}

// ---- pool contents ----

#[test]
fn network_and_broadcast_are_skipped_unless_allowed() {
    let p = Pool::parse(pool("a", "10.0.0.0/24")).unwrap();
    assert_eq!(p.size(), Count::new(254));
    assert!(!p.is_usable(ip("10.0.0.0")) && !p.is_usable(ip("10.0.0.255")));
    assert_eq!(p.first(), Some(ip("10.0.0.1")));
    let p = Pool::parse(PoolSpec {
        use_network_and_broadcast: true,
        ..pool("a", "10.0.0.0/24")
    })
    .unwrap();
    assert_eq!(p.size(), Count::new(256));
    // /31, /32, ranges and IPv6 have nothing to skip.
    assert_eq!(
        Pool::parse(pool("a", "10.0.0.0/31")).unwrap().size(),
        Count::new(2)
    );
    assert_eq!(
        Pool::parse(pool("a", "10.0.0.0-10.0.0.255"))
            .unwrap()
            .size(),
        Count::new(256)
    );
    assert_eq!(
        Pool::parse(pool("a", "fd00::/120")).unwrap().size(),
        Count::new(256)
    );
}

#[test]
fn excludes_are_never_handed_out() {
    let spec = PoolSpec {
        excludes: vec!["10.0.0.1".into(), "10.0.0.4-10.0.0.5".into()],
        ..pool("a", "10.0.0.0/29")
    };
    let mut ipam = engine(vec![PoolSpec {
        default: true,
        ..spec
    }]);
    let got: Vec<IpAddr> = (0..3)
        .map(|i| ipam.allocate(&v4(holder(&format!("s{i}")))).unwrap().ip)
        .collect();
    assert_eq!(got, [ip("10.0.0.2"), ip("10.0.0.3"), ip("10.0.0.6")]);
    assert!(matches!(
        ipam.allocate(&v4(holder("s3"))),
        Err(AllocError::Exhausted(_))
    ));
}

#[test]
fn exclude_of_the_other_family_is_refused() {
    let err = Pool::parse(PoolSpec {
        excludes: vec!["fd00::1".into()],
        ..pool("a", "10.0.0.0/24")
    })
    .unwrap_err();
    assert!(matches!(err, PoolEditError::ExcludeFamily { .. }), "{err}");
}

// ---- allocate / release ----

#[test]
fn allocates_the_lowest_free_address_and_reuses_released_ones() {
    let mut ipam = engine(vec![default_pool("a", "10.0.0.0/24")]);
    assert_eq!(ipam.allocate(&v4(holder("a"))).unwrap().ip, ip("10.0.0.1"));
    assert_eq!(ipam.allocate(&v4(holder("b"))).unwrap().ip, ip("10.0.0.2"));
    assert_eq!(ipam.allocate(&v4(holder("c"))).unwrap().ip, ip("10.0.0.3"));
    assert_eq!(ipam.release(&ServiceKey::new("ns", "b")), [ip("10.0.0.2")]);
    assert_eq!(ipam.allocate(&v4(holder("d"))).unwrap().ip, ip("10.0.0.2"));
    assert_eq!(ipam.allocate(&v4(holder("e"))).unwrap().ip, ip("10.0.0.4"));
}

#[test]
fn allocation_is_idempotent_and_never_moves_an_ip() {
    let mut ipam = engine(vec![default_pool("a", "10.0.0.0/24")]);
    let first = ipam.allocate(&v4(holder("a"))).unwrap();
    assert_eq!(ipam.allocate(&v4(holder("a"))).unwrap(), first);
    let req = Request {
        requested: Some(ip("10.0.0.9")),
        ..v4(holder("a"))
    };
    assert_eq!(
        ipam.allocate(&req),
        Err(AllocError::AlreadyAssigned {
            held: ip("10.0.0.1"),
            requested: ip("10.0.0.9")
        })
    );
}

#[test]
fn releasing_one_family_keeps_the_other_and_frees_the_address() {
    let mut ipam = engine(vec![
        default_pool("a", "10.0.0.0/24"),
        pool("six", "fd00::/120"),
    ]);
    let key = ServiceKey::new("ns", "a");
    let v6 = Request {
        pool: Some("six".into()),
        ..Request::new(holder("a"), Family::V6)
    };
    ipam.allocate(&v4(holder("a"))).unwrap();
    let six = ipam.allocate(&v6).unwrap().ip;
    assert!(ipam.release_ip(&key, six));
    assert!(!ipam.release_ip(&key, six), "already released");
    assert_eq!(ipam.ips_of(&key), [ip("10.0.0.1")]);
    assert_eq!(ipam.usage("six").unwrap().used, 0);
    assert!(ipam.release_ip(&key, ip("10.0.0.1")));
    assert!(ipam.ips_of(&key).is_empty());
    assert_eq!(ipam.allocate(&v4(holder("b"))).unwrap().ip, ip("10.0.0.1"));
}

#[test]
fn another_services_deletion_changes_no_ip() {
    let mut ipam = engine(vec![default_pool("a", "10.0.0.0/24")]);
    for s in ["a", "b", "c"] {
        ipam.allocate(&v4(holder(s))).unwrap();
    }
    ipam.release(&ServiceKey::new("ns", "a"));
    assert_eq!(ipam.ips_of(&ServiceKey::new("ns", "b")), [ip("10.0.0.2")]);
    assert_eq!(ipam.ips_of(&ServiceKey::new("ns", "c")), [ip("10.0.0.3")]);
}

#[test]
fn requested_address_is_honoured_or_refused_with_a_reason() {
    let mut ipam = engine(vec![PoolSpec {
        excludes: vec!["10.0.0.7".into()],
        ..default_pool("a", "10.0.0.0/24")
    }]);
    let req = |name: &str, addr: &str| Request {
        requested: Some(ip(addr)),
        ..v4(holder(name))
    };
    assert_eq!(
        ipam.allocate(&req("a", "10.0.0.50")).unwrap().ip,
        ip("10.0.0.50")
    );
    assert!(matches!(
        ipam.allocate(&req("b", "10.0.0.50")),
        Err(AllocError::Share(ShareError::NotShared { .. }))
    ));
    assert_eq!(
        ipam.allocate(&req("c", "10.9.9.9")),
        Err(AllocError::RequestedNotInPool(ip("10.9.9.9")))
    );
    assert!(matches!(
        ipam.allocate(&req("d", "10.0.0.7")),
        Err(AllocError::RequestedNotUsable { .. })
    ));
    assert!(matches!(
        ipam.allocate(&req("e", "10.0.0.255")),
        Err(AllocError::RequestedNotUsable { .. })
    ));
    // The lowest free skips the requested one that is taken.
    assert_eq!(ipam.allocate(&v4(holder("f"))).unwrap().ip, ip("10.0.0.1"));
}

#[test]
fn exhaustion_names_the_pool_and_its_size() {
    let mut ipam = engine(vec![default_pool("blue", "10.0.0.0/30")]);
    ipam.allocate(&v4(holder("a"))).unwrap();
    ipam.allocate(&v4(holder("b"))).unwrap();
    let err = ipam.allocate(&v4(holder("c"))).unwrap_err();
    assert_eq!(
        err.to_string(),
        "pool blue exhausted: 2 of 2 in use; free an IP or add addresses to a pool"
    );
}

#[test]
fn dual_stack_service_holds_one_ip_per_family_and_releases_both() {
    let mut ipam = engine(vec![
        default_pool("v4", "10.0.0.0/24"),
        pool("v6", "fd00::/120"),
    ]);
    let svc = holder("web");
    assert_eq!(ipam.allocate(&v4(svc.clone())).unwrap().ip, ip("10.0.0.1"));
    let v6 = Request {
        pool: Some("v6".into()),
        ..Request::new(svc.clone(), Family::V6)
    };
    assert_eq!(ipam.allocate(&v6).unwrap().ip, ip("fd00::"));
    assert_eq!(ipam.ips_of(&svc.service).len(), 2);
    assert_eq!(ipam.release(&svc.service).len(), 2);
    assert_eq!(ipam.held(), 0);
}

/// The dual-stack setup docs/install.md shows: the IPv4 pool is the default, the IPv6 pool
/// selects every Service with an empty selector; a dual-stack Service asking for neither
/// gets one IP of each.
#[test]
fn a_default_pool_and_an_empty_selector_serve_both_families() {
    let mut ipam = engine(vec![
        default_pool("public-v4", "198.51.100.0/24"),
        PoolSpec {
            service_selector: Some(Selector::default()),
            ..pool("public-v6", "2001:db8:100::/120")
        },
    ]);
    let svc = holder("web");
    let a = ipam.allocate(&v4(svc.clone())).unwrap();
    let b = ipam
        .allocate(&Request::new(svc.clone(), Family::V6))
        .unwrap();
    assert_eq!(
        (a.pool.as_str(), b.pool.as_str()),
        ("public-v4", "public-v6")
    );
}

// ---- sharing (MetalLB's rules) ----

#[test]
fn services_with_the_same_key_and_distinct_ports_share() {
    let mut ipam = engine(vec![default_pool("a", "10.0.0.0/24")]);
    let a = ipam
        .allocate(&v4(shared("dns-tcp", "dns", &[53])))
        .unwrap()
        .ip;
    let mut udp = shared("dns-udp", "dns", &[]);
    udp.ports.insert(Port {
        port: 53,
        protocol: Protocol::Udp,
    });
    assert_eq!(
        ipam.allocate(&v4(udp)).unwrap().ip,
        a,
        "joins the IP held under the same key"
    );
    assert_eq!(ipam.holders(a).len(), 2);
    assert_eq!(ipam.usage("a").unwrap().used, 1, "a shared IP counts once");
    ipam.release(&ServiceKey::new("ns", "dns-tcp"));
    assert_eq!(ipam.holders(a).len(), 1, "the other holder keeps it");
    assert_eq!(
        ipam.allocate(&v4(holder("other"))).unwrap().ip,
        ip("10.0.0.2")
    );
}

#[test]
fn sharing_refusals_are_typed() {
    let mut ipam = engine(vec![default_pool("a", "10.0.0.0/24")]);
    let at = |h: Holder| Request {
        requested: Some(ip("10.0.0.1")),
        ..v4(h)
    };
    ipam.allocate(&at(shared("a", "k", &[80]))).unwrap();
    let share_err = |ipam: &mut Ipam, h: Holder| match ipam.allocate(&at(h)) {
        Err(AllocError::Share(e)) => e,
        other => panic!("expected a sharing refusal, got {other:?}"),
    };
    assert!(matches!(
        share_err(&mut ipam, holder("nokey")),
        ShareError::NotShared { .. }
    ));
    assert!(matches!(
        share_err(&mut ipam, shared("b", "other", &[81])),
        ShareError::KeyMismatch { .. }
    ));
    let e = share_err(&mut ipam, shared("c", "k", &[80]));
    assert!(matches!(
        e,
        ShareError::PortInUse {
            port: Port { port: 80, .. },
            ..
        }
    ));
    assert_eq!(
        e.to_string(),
        "port 80/TCP is already used on 10.0.0.1 by ns/a: Services sharing an IP need distinct port/protocol pairs"
    );
    let local = Holder {
        policy: TrafficPolicy::Local,
        ..shared("d", "k", &[81])
    };
    assert!(matches!(
        share_err(&mut ipam, local),
        ShareError::PolicyMismatch { .. }
    ));
}

#[test]
fn local_policy_sharing_needs_the_same_backends() {
    let mut ipam = engine(vec![default_pool("a", "10.0.0.0/24")]);
    let local = |name: &str, port: u16, backend: &str| Holder {
        policy: TrafficPolicy::Local,
        backend: backend.into(),
        ..shared(name, "k", &[port])
    };
    let ip1 = ipam.allocate(&v4(local("a", 80, "app=web"))).unwrap().ip;
    assert_eq!(
        ipam.allocate(&v4(local("b", 443, "app=web"))).unwrap().ip,
        ip1
    );
    let at = Request {
        requested: Some(ip1),
        ..v4(local("c", 8080, "app=api"))
    };
    assert!(matches!(
        ipam.allocate(&at),
        Err(AllocError::Share(ShareError::BackendMismatch { .. }))
    ));
    // Without a requested IP it simply gets its own address.
    assert_eq!(
        ipam.allocate(&v4(local("c", 8080, "app=api"))).unwrap().ip,
        ip("10.0.0.2")
    );
}

// ---- pool choice ----

#[test]
fn explicit_pool_wins_over_selectors_and_default() {
    let team = PoolSpec {
        namespaces: Some(BTreeSet::from(["ns".to_owned()])),
        ..pool("team", "10.1.0.0/24")
    };
    let mut ipam = engine(vec![
        default_pool("def", "10.0.0.0/24"),
        team,
        pool("named", "10.2.0.0/24"),
    ]);
    let req = Request {
        pool: Some("named".into()),
        ..v4(holder("a"))
    };
    assert_eq!(
        ipam.allocate(&req).unwrap(),
        Allocation {
            ip: ip("10.2.0.1"),
            pool: "named".into()
        }
    );
    assert_eq!(
        ipam.allocate(&v4(holder("b"))).unwrap().pool,
        "team",
        "selector match beats default"
    );
    let elsewhere = Request::new(Holder::new(ServiceKey::new("other", "c")), Family::V4);
    assert_eq!(
        ipam.allocate(&elsewhere).unwrap().pool,
        "def",
        "default when no selector matches"
    );
}

#[test]
fn requested_ip_chooses_its_pool() {
    let mut ipam = engine(vec![
        default_pool("def", "10.0.0.0/24"),
        pool("other", "10.2.0.0/24"),
    ]);
    let req = Request {
        requested: Some(ip("10.2.0.9")),
        ..v4(holder("a"))
    };
    assert_eq!(ipam.allocate(&req).unwrap().pool, "other");
    let both = Request {
        pool: Some("def".into()),
        requested: Some(ip("10.2.0.10")),
        ..v4(holder("b"))
    };
    assert!(matches!(
        ipam.allocate(&both),
        Err(AllocError::RequestedOutsidePool { .. })
    ));
}

#[test]
fn selector_pools_are_tried_by_priority_then_name_and_overflow_to_the_next() {
    let sel = |name: &str, addr: &str, priority: i32| PoolSpec {
        priority,
        service_selector: Some(Selector {
            match_labels: Labels::from([("tier".into(), "web".into())]),
            ..Default::default()
        }),
        ..pool(name, addr)
    };
    let mut ipam = engine(vec![
        sel("b-low", "10.2.0.1", 5),
        sel("a-low", "10.1.0.1", 5),
        sel("high", "10.0.0.1", 1),
    ]);
    let req = |name: &str| Request {
        service_labels: Labels::from([("tier".into(), "web".into())]),
        ..v4(holder(name))
    };
    assert_eq!(ipam.allocate(&req("s1")).unwrap().pool, "high");
    assert_eq!(
        ipam.allocate(&req("s2")).unwrap().pool,
        "a-low",
        "equal priority: by name"
    );
    assert_eq!(ipam.allocate(&req("s3")).unwrap().pool, "b-low");
    let err = ipam.allocate(&req("s4")).unwrap_err();
    assert!(
        matches!(&err, AllocError::Exhausted(p) if p.len() == 3),
        "{err}"
    );
    // An unlabelled Service matches none of them, and there is no default.
    assert_eq!(ipam.allocate(&v4(holder("plain"))), Err(AllocError::NoPool));
}

#[test]
fn selectors_follow_kubernetes_semantics() {
    let labels = Labels::from([("env".into(), "prod".into()), ("team".into(), "a".into())]);
    let sel = |r: Requirement| Selector {
        requirements: vec![r],
        ..Default::default()
    };
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert!(Selector::default().matches(&labels));
    assert!(sel(Requirement::In("env".into(), set(&["prod", "dev"]))).matches(&labels));
    assert!(!sel(Requirement::In("zone".into(), set(&["x"]))).matches(&labels));
    assert!(sel(Requirement::NotIn("zone".into(), set(&["x"]))).matches(&labels));
    assert!(!sel(Requirement::NotIn("env".into(), set(&["prod"]))).matches(&labels));
    assert!(sel(Requirement::Exists("team".into())).matches(&labels));
    assert!(sel(Requirement::DoesNotExist("zone".into())).matches(&labels));
}

#[test]
fn pool_restrictions_refuse_with_the_reason_even_when_named() {
    let spec = PoolSpec {
        namespaces: Some(BTreeSet::from(["team-a".to_owned()])),
        ..pool("a", "10.0.0.0/24")
    };
    let mut ipam = engine(vec![spec]);
    let req = Request {
        pool: Some("a".into()),
        ..v4(holder("x"))
    };
    let err = ipam.allocate(&req).unwrap_err();
    assert_eq!(
        err.to_string(),
        "pool a does not serve this Service: namespace ns is not in its spec.namespaces"
    );
    let req = Request {
        pool: Some("nope".into()),
        ..v4(holder("x"))
    };
    assert_eq!(
        ipam.allocate(&req),
        Err(AllocError::UnknownPool("nope".into()))
    );
    let req = Request {
        pool: Some("a".into()),
        ..Request::new(holder("x"), Family::V6)
    };
    assert!(matches!(
        ipam.allocate(&req),
        Err(AllocError::FamilyMismatch { .. })
    ));
}

#[test]
fn disabled_pool_gives_nothing_new_but_keeps_what_it_gave() {
    let claim = Claim {
        holder: holder("old"),
        ip: ip("10.0.0.7"),
        pool: Some("a".into()),
    };
    let (mut ipam, report) = Ipam::rebuild(
        [PoolSpec {
            disabled: true,
            ..default_pool("a", "10.0.0.0/24")
        }],
        [claim],
    );
    assert_eq!(report, RebuildReport::default());
    assert_eq!(ipam.ips_of(&ServiceKey::new("ns", "old")), [ip("10.0.0.7")]);
    assert_eq!(ipam.usage("a").unwrap().used, 1);
    assert_eq!(
        ipam.allocate(&v4(holder("new"))),
        Err(AllocError::PoolDisabled("a".into()))
    );
    let named = Request {
        pool: Some("a".into()),
        ..v4(holder("new"))
    };
    assert_eq!(
        ipam.allocate(&named),
        Err(AllocError::PoolDisabled("a".into()))
    );
}

#[test]
fn several_default_pools_mean_no_default() {
    let mut ipam = engine(vec![
        default_pool("a", "10.0.0.0/24"),
        default_pool("b", "10.1.0.0/24"),
    ]);
    assert_eq!(ipam.allocate(&v4(holder("x"))), Err(AllocError::NoPool));
}

#[test]
fn overlapping_pools_are_detected_and_not_allocated_from() {
    let mut ipam = engine(vec![
        default_pool("a", "10.0.0.0/24"),
        pool("b", "10.0.0.128/25"),
        pool("c", "fd00::/64"),
    ]);
    assert_eq!(ipam.overlaps(), [("a".to_owned(), "b".to_owned())]);
    assert_eq!(
        ipam.allocate(&v4(holder("x"))),
        Err(AllocError::PoolOverlaps {
            pool: "a".into(),
            other: "b".into()
        })
    );
}

// ---- rebuild ----

#[test]
fn rebuild_keeps_every_ip_and_reports_the_later_of_two_claims() {
    let older = Claim {
        holder: Holder {
            created: 10,
            ..holder("older")
        },
        ip: ip("10.0.0.5"),
        pool: None,
    };
    let later = Claim {
        holder: Holder {
            created: 20,
            ..holder("later")
        },
        ip: ip("10.0.0.5"),
        pool: None,
    };
    for claims in [
        vec![older.clone(), later.clone()],
        vec![later.clone(), older.clone()],
    ] {
        let (ipam, report) = Ipam::rebuild([default_pool("a", "10.0.0.0/24")], claims);
        assert_eq!(
            ipam.holders(ip("10.0.0.5")),
            std::slice::from_ref(&older.holder)
        );
        assert_eq!(report.conflicts.len(), 1);
        assert_eq!(report.conflicts[0].service, later.holder.service);
        assert!(
            report.conflicts[0]
                .to_string()
                .starts_with("ns/later claims 10.0.0.5, refused: IP 10.0.0.5 is held by ns/older")
        );
    }
}

#[test]
fn rebuild_accepts_valid_sharing_and_refuses_a_second_ip_of_a_family() {
    let a = Claim {
        holder: shared("a", "k", &[80]),
        ip: ip("10.0.0.5"),
        pool: None,
    };
    let b = Claim {
        holder: shared("b", "k", &[443]),
        ip: ip("10.0.0.5"),
        pool: None,
    };
    let a2 = Claim {
        holder: shared("a", "k", &[80]),
        ip: ip("10.0.0.6"),
        pool: None,
    };
    let (ipam, report) = Ipam::rebuild([default_pool("p", "10.0.0.0/24")], [a, b, a2]);
    assert_eq!(ipam.holders(ip("10.0.0.5")).len(), 2);
    assert_eq!(report.conflicts.len(), 1);
    assert_eq!(
        report.conflicts[0].reason,
        ConflictReason::SecondOfFamily(ip("10.0.0.5"))
    );
}

#[test]
fn rebuild_keeps_claims_outside_every_pool_and_a_new_pool_adopts_them() {
    let c = Claim {
        holder: holder("stray"),
        ip: ip("10.9.0.5"),
        pool: Some("gone".into()),
    };
    let (mut ipam, report) = Ipam::rebuild([default_pool("a", "10.0.0.0/24")], [c]);
    assert_eq!(
        report.unpooled,
        [(ServiceKey::new("ns", "stray"), ip("10.9.0.5"))]
    );
    assert_eq!(ipam.pool_of(ip("10.9.0.5")), None);
    ipam.upsert_pool(pool("gone", "10.9.0.0/24")).unwrap();
    assert_eq!(ipam.pool_of(ip("10.9.0.5")), Some("gone"));
    assert_eq!(ipam.usage("gone").unwrap().used, 1);
    // The adopted IP is never handed out again.
    let req = Request {
        pool: Some("gone".into()),
        requested: Some(ip("10.9.0.5")),
        ..v4(holder("thief"))
    };
    assert!(matches!(ipam.allocate(&req), Err(AllocError::Share(_))));
}

#[test]
fn rebuild_reports_invalid_pools() {
    let (ipam, report) = Ipam::rebuild(
        [pool("bad", "10.0.0.1/24"), pool("good", "10.1.0.0/24")],
        [],
    );
    assert_eq!(report.invalid_pools.len(), 1);
    assert!(
        report.invalid_pools[0]
            .to_string()
            .contains("did you mean 10.0.0.0/24")
    );
    assert!(ipam.pool("good").is_some() && ipam.pool("bad").is_none());
}

// ---- pool edits ----

#[test]
fn growing_a_pool_always_works_and_keeps_ips() {
    let mut ipam = engine(vec![default_pool("a", "10.0.0.0/30")]);
    let got = ipam.allocate(&v4(holder("x"))).unwrap().ip;
    ipam.upsert_pool(default_pool("a", "10.0.0.0/24")).unwrap();
    assert_eq!(ipam.ips_of(&ServiceKey::new("ns", "x")), [got]);
    assert_eq!(ipam.usage("a").unwrap().size, Count::new(254));
    assert_eq!(ipam.usage("a").unwrap().used, 1);
}

#[test]
fn shrinking_or_excluding_an_in_use_ip_is_reported_naming_the_services() {
    let mut ipam = engine(vec![default_pool("a", "10.0.0.0/24")]);
    let req = Request {
        requested: Some(ip("10.0.0.200")),
        ..v4(holder("web"))
    };
    ipam.allocate(&req).unwrap();
    let err = ipam
        .upsert_pool(default_pool("a", "10.0.0.0/25"))
        .unwrap_err();
    assert_eq!(
        err,
        PoolEditError::WouldStrand {
            pool: "a".into(),
            affected: vec![(ServiceKey::new("ns", "web"), ip("10.0.0.200"))]
        }
    );
    assert!(err.to_string().contains("in use by ns/web (10.0.0.200)"));
    assert_eq!(
        ipam.stranded("a"),
        [(ServiceKey::new("ns", "web"), ip("10.0.0.200"))]
    );
    let exclude = PoolSpec {
        excludes: vec!["10.0.0.200".into()],
        ..default_pool("a", "10.0.0.0/24")
    };
    assert!(matches!(
        ipam.upsert_pool(exclude),
        Err(PoolEditError::WouldStrand { .. })
    ));
    // Shrinking around the IP in use is fine.
    ipam.upsert_pool(default_pool("a", "10.0.0.128/25"))
        .unwrap();
    assert!(ipam.stranded("a").is_empty());
}

/// The IPs a pool no longer hands out are found between, before and after its usable
/// ranges, in IP order; one still usable, or another pool's, is not among them.
#[test]
fn stranded_ips_are_found_in_every_gap_of_the_pool() {
    let mut ipam = engine(vec![
        default_pool("a", "10.0.0.0/24"),
        default_pool("b", "10.0.1.0/24"),
    ]);
    for (name, at) in [
        ("w5", "10.0.0.5"),
        ("w100", "10.0.0.100"),
        ("w200", "10.0.0.200"),
        ("w250", "10.0.0.250"),
        ("other", "10.0.1.9"),
    ] {
        ipam.allocate(&Request {
            requested: Some(ip(at)),
            ..v4(holder(name))
        })
        .unwrap();
    }
    let edited = PoolSpec {
        excludes: vec!["10.0.0.100".into(), "10.0.0.250".into()],
        ..default_pool("a", "10.0.0.0/25")
    };
    assert!(ipam.upsert_pool(edited).is_err());
    assert_eq!(
        ipam.stranded("a"),
        [
            (ServiceKey::new("ns", "w100"), ip("10.0.0.100")),
            (ServiceKey::new("ns", "w200"), ip("10.0.0.200")),
            (ServiceKey::new("ns", "w250"), ip("10.0.0.250")),
        ]
    );
    assert!(ipam.stranded("b").is_empty());
}

/// A shrink that would take an IP in use away keeps that IP with its Service (it still
/// counts against the pool, and the Service keeps it across reconciles and a restart), but
/// no new IP comes from the removed part any more.
#[test]
fn a_refused_shrink_stops_handing_out_the_removed_range() {
    let mut ipam = engine(vec![default_pool("a", "10.0.0.0/30")]);
    // 10.0.0.1 and .2 usable; .2 held.
    let web = Request {
        requested: Some(ip("10.0.0.2")),
        ..v4(holder("web"))
    };
    ipam.allocate(&web).unwrap();
    // The user removes .2 and .3 (a /31 range of .0-.1, network and broadcast counted).
    let narrowed = PoolSpec {
        use_network_and_broadcast: true,
        ..default_pool("a", "10.0.0.0-10.0.0.1")
    };
    assert!(ipam.upsert_pool(narrowed.clone()).is_err());
    assert_eq!(
        ipam.pool_of(ip("10.0.0.2")),
        Some("a"),
        "still counted there"
    );
    // The Service keeps it (idempotent allocation).
    assert_eq!(ipam.allocate(&web).unwrap().ip, ip("10.0.0.2"));
    // New allocations come only from what is left: .0 and .1, then nothing.
    let got: Vec<IpAddr> = ["x", "y"]
        .iter()
        .map(|n| ipam.allocate(&v4(holder(n))).unwrap().ip)
        .collect();
    assert_eq!(got, [ip("10.0.0.0"), ip("10.0.0.1")]);
    assert!(matches!(
        ipam.allocate(&v4(holder("z"))),
        Err(AllocError::Exhausted(_))
    ));
    // A requested IP in the removed part is refused.
    assert!(
        ipam.allocate(&Request {
            requested: Some(ip("10.0.0.3")),
            ..v4(holder("q"))
        })
        .is_err()
    );
    // After a restart the stranded IP is still its Service's and still named.
    let claims = [Claim {
        holder: holder("web"),
        ip: ip("10.0.0.2"),
        pool: Some("a".into()),
    }];
    let (rebuilt, report) = Ipam::rebuild([narrowed], claims);
    assert!(report.unpooled.is_empty(), "{report:?}");
    assert_eq!(
        rebuilt.stranded("a"),
        [(ServiceKey::new("ns", "web"), ip("10.0.0.2"))]
    );
    // Once released, the edit is complete.
    ipam.release(&ServiceKey::new("ns", "web"));
    assert!(ipam.stranded("a").is_empty());
}

#[test]
fn removing_a_pool_keeps_its_ips_held() {
    let mut ipam = engine(vec![default_pool("a", "10.0.0.0/24")]);
    let got = ipam.allocate(&v4(holder("x"))).unwrap().ip;
    assert_eq!(ipam.remove_pool("a"), [(ServiceKey::new("ns", "x"), got)]);
    assert_eq!(ipam.ips_of(&ServiceKey::new("ns", "x")), [got]);
    assert_eq!(ipam.pool_of(got), None);
}

// ---- counts ----

#[test]
fn counts_are_exact_for_huge_ipv6_pools() {
    let ipam = engine(vec![
        pool("p64", "fd00::/64"),
        pool("all", "::/0"),
        pool("v4all", "0.0.0.0/0"),
    ]);
    assert_eq!(
        ipam.usage("p64").unwrap().size.to_string(),
        "18446744073709551616"
    );
    assert_eq!(
        ipam.usage("all").unwrap().size.to_string(),
        "340282366920938463463374607431768211456"
    );
    assert_eq!(ipam.usage("all").unwrap().size.as_u128(), None);
    assert_eq!(
        ipam.usage("v4all").unwrap().size,
        Count::new((1u128 << 32) - 2)
    );
}

#[test]
fn free_count_of_the_whole_ipv6_space_is_exact() {
    let mut ipam = engine(vec![default_pool("all", "::/0")]);
    assert_eq!(
        ipam.allocate(&Request::new(holder("a"), Family::V6))
            .unwrap()
            .ip,
        ip("::")
    );
    let u = ipam.usage("all").unwrap();
    assert_eq!(u.free, Count::new(u128::MAX));
    assert_eq!(u.last, Some(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")));
}

#[test]
fn memory_does_not_grow_with_pool_size() {
    // A /64 with a few excludes is a handful of ranges, not 2^64 entries.
    let spec = PoolSpec {
        excludes: vec!["fd00::1".into(), "fd00::100-fd00::1ff".into()],
        ..pool("a", "fd00::/64")
    };
    let p = Pool::parse(spec).unwrap();
    assert_eq!(p.usable().len(), 3);
}

// ---- sharing edits, instances ----

#[test]
fn a_sharing_edit_is_taken_in_when_it_still_shares_and_refused_when_it_collides() {
    let mut ipam = engine(vec![default_pool("a", "10.0.0.0/24")]);
    let a = Holder {
        created: 1,
        ..shared("a", "k", &[80])
    };
    let b = Holder {
        created: 2,
        ..shared("b", "k", &[443])
    };
    let got = ipam.allocate(&v4(a.clone())).unwrap().ip;
    assert_eq!(ipam.allocate(&v4(b.clone())).unwrap().ip, got);
    // b moves to 8443: taken in (443 is free for a third).
    let b2 = Holder {
        ports: shared("b", "k", &[8443]).ports,
        ..b.clone()
    };
    assert_eq!(ipam.allocate(&v4(b2.clone())).unwrap().ip, got);
    assert!(ipam.holders(got).contains(&b2));
    // b onto a's port: refused, b's constraints in force stay, nothing moves.
    let b3 = Holder {
        ports: shared("b", "k", &[80]).ports,
        ..b.clone()
    };
    let e = ipam.allocate(&v4(b3)).unwrap_err();
    assert!(
        matches!(&e, AllocError::SharingEdit { newer, .. } if *newer == ServiceKey::new("ns", "b")),
        "{e:?}"
    );
    assert_eq!(e.reason(), "SharingEdit");
    assert!(ipam.holders(got).contains(&b2));
    assert_eq!(ipam.ips_of(&ServiceKey::new("ns", "b")), [got]);
    // b to another key: refused too (a keeps key k), b stays as it was.
    let b4 = Holder {
        sharing_key: Some("other".into()),
        ..b2.clone()
    };
    assert!(
        ipam.allocate(&v4(b4)).is_err(),
        "a keeps key k: they cannot share"
    );
}

#[test]
fn the_uid_of_the_holding_instance_is_known() {
    let mut ipam = engine(vec![default_pool("a", "10.0.0.0/24")]);
    let h = Holder {
        uid: "u1".into(),
        ..holder("web")
    };
    ipam.allocate(&v4(h)).unwrap();
    assert_eq!(ipam.uid_of(&ServiceKey::new("ns", "web")), Some("u1"));
    assert_eq!(ipam.uid_of(&ServiceKey::new("ns", "other")), None);
}

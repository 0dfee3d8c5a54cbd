//! Invariants under random operations, checked against brute force on small pools.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use proptest::prelude::*;

use super::*;

const SERVICES: usize = 12;

fn key(i: usize) -> ServiceKey {
    ServiceKey::new("ns", format!("s{i}"))
}

#[derive(Debug, Clone)]
enum Op {
    Allocate {
        svc: usize,
        sharing: Option<u8>,
        port: u16,
        local: bool,
        backend: u8,
        requested: Option<u8>,
    },
    Release {
        svc: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..SERVICES, proptest::option::of(0u8..2), 0u16..3, any::<bool>(), 0u8..2, proptest::option::of(0u8..20))
            .prop_map(|(svc, sharing, port, local, backend, requested)| Op::Allocate { svc, sharing, port, local, backend, requested }),
        1 => (0..SERVICES).prop_map(|svc| Op::Release { svc }),
    ]
}

fn holder_for(svc: usize, sharing: Option<u8>, port: u16, local: bool, backend: u8) -> Holder {
    Holder {
        sharing_key: sharing.map(|k| format!("key{k}")),
        ports: BTreeSet::from([Port {
            port,
            protocol: Protocol::Tcp,
        }]),
        policy: if local {
            TrafficPolicy::Local
        } else {
            TrafficPolicy::Cluster
        },
        backend: format!("app={backend}"),
        created: svc as i64,
        ..Holder::new(key(svc))
    }
}

/// A small IPv4 pool 10.0.0.0/28 with excludes drawn from `excl` (offsets).
fn small_pool(excl: &BTreeSet<u8>, allow_nb: bool) -> PoolSpec {
    PoolSpec {
        name: "p".into(),
        address: "10.0.0.0/28".into(),
        excludes: excl.iter().map(|o| format!("10.0.0.{o}")).collect(),
        use_network_and_broadcast: allow_nb,
        default: true,
        ..Default::default()
    }
}

fn brute_usable(excl: &BTreeSet<u8>, allow_nb: bool) -> Vec<IpAddr> {
    (0u8..16)
        .filter(|o| !excl.contains(o) && (allow_nb || (*o != 0 && *o != 15)))
        .map(|o| IpAddr::V4(Ipv4Addr::new(10, 0, 0, o)))
        .collect()
}

fn check_invariants(ipam: &Ipam, usable: &[IpAddr]) -> Result<(), TestCaseError> {
    let mut held = 0u128;
    for ip in usable {
        let holders = ipam.holders(*ip);
        if !holders.is_empty() {
            held += 1;
        }
        // No address is held by two owners that may not share.
        for (i, h) in holders.iter().enumerate() {
            let others: Vec<Holder> = holders[i + 1..].to_vec();
            prop_assert!(
                h.can_share(*ip, &others).is_ok(),
                "{ip} held by non-sharing {holders:?}"
            );
        }
        for h in holders {
            prop_assert!(ipam.ips_of(&h.service).contains(ip));
        }
    }
    let u = ipam.usage("p").expect("pool exists");
    prop_assert_eq!(u.used, held);
    prop_assert_eq!(u.size, Count::new(usable.len() as u128));
    prop_assert_eq!(u.free, Count::new(usable.len() as u128 - held));
    Ok(())
}

proptest! {
    #[test]
    fn random_operations_keep_every_invariant(
        excl in proptest::collection::btree_set(0u8..16, 0..4),
        allow_nb in any::<bool>(),
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        let mut ipam = Ipam::new();
        ipam.upsert_pool(small_pool(&excl, allow_nb)).expect("valid pool");
        let usable = brute_usable(&excl, allow_nb);
        for op in ops {
            match op {
                Op::Allocate { svc, sharing, port, local, backend, requested } => {
                    let h = holder_for(svc, sharing, port, local, backend);
                    let before: BTreeSet<IpAddr> = usable.iter().copied().filter(|ip| !ipam.holders(*ip).is_empty()).collect();
                    let already = !ipam.ips_of(&h.service).is_empty();
                    let req = Request {
                        requested: requested.map(|o| IpAddr::V4(Ipv4Addr::new(10, 0, 0, o))),
                        ..Request::new(h.clone(), Family::V4)
                    };
                    if let Ok(a) = ipam.allocate(&req) {
                        prop_assert!(usable.contains(&a.ip), "{} is not usable", a.ip);
                        if !already && requested.is_none() && !before.contains(&a.ip) {
                            // A fresh address is the lowest free one.
                            let lowest = usable.iter().copied().find(|ip| !before.contains(ip));
                            prop_assert_eq!(Some(a.ip), lowest);
                        }
                    } else if !already && requested.is_none() && sharing.is_none() {
                        // Refused without constraints only when full.
                        prop_assert_eq!(before.len(), usable.len());
                    }
                }
                Op::Release { svc } => {
                    let ips = ipam.release(&key(svc));
                    prop_assert!(ipam.ips_of(&key(svc)).is_empty());
                    for ip in ips {
                        prop_assert!(ipam.holders(ip).iter().all(|h| h.service != key(svc)));
                    }
                }
            }
            check_invariants(&ipam, &usable)?;
        }
    }

    #[test]
    fn release_makes_an_address_available_again(
        excl in proptest::collection::btree_set(0u8..16, 0..4),
        n in 1usize..10,
    ) {
        let mut ipam = Ipam::new();
        ipam.upsert_pool(small_pool(&excl, false)).expect("valid pool");
        let mut got = Vec::new();
        for i in 0..n {
            if let Ok(a) = ipam.allocate(&Request::new(Holder::new(key(i)), Family::V4)) {
                got.push((i, a.ip));
            }
        }
        if let Some(&(i, ip)) = got.get(got.len() / 2) {
            ipam.release(&key(i));
            prop_assert!(ipam.holders(ip).is_empty());
            let again = ipam.allocate(&Request::new(Holder::new(key(100)), Family::V4)).expect("an address was freed");
            prop_assert_eq!(again.ip, ip, "the freed address is the lowest free one");
        }
    }

    #[test]
    fn counts_match_a_recount_for_any_prefix(len in 0u8..=32, v6len in 0u8..=128) {
        let v4 = Pool::parse(PoolSpec { name: "a".into(), address: format!("0.0.0.0/{len}"), ..Default::default() }).expect("valid");
        let total = 1u128 << (32 - len);
        let skipped = if len <= 30 { 2 } else { 0 };
        prop_assert_eq!(v4.size(), Count::new(total - skipped));
        let v6 = Pool::parse(PoolSpec { name: "b".into(), address: format!("::/{v6len}"), ..Default::default() }).expect("valid");
        match 1u128.checked_shl(u32::from(128 - v6len)) {
            Some(n) if v6len > 0 => prop_assert_eq!(v6.size(), Count::new(n)),
            _ => prop_assert_eq!(v6.size().to_string(), "340282366920938463463374607431768211456"),
        }
    }

    #[test]
    fn rebuild_is_order_independent(
        claims in proptest::collection::vec((0..SERVICES, proptest::option::of(0u8..2), 0u16..3, any::<bool>(), 0u8..16, 0i64..5), 0..30),
        seed in any::<u64>(),
    ) {
        let claims: Vec<Claim> = claims
            .into_iter()
            .map(|(svc, sharing, port, local, octet, created)| Claim {
                holder: Holder { created, ..holder_for(svc, sharing, port, local, 0) },
                ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, octet)),
                pool: None,
            })
            .collect();
        let mut shuffled = claims.clone();
        // A deterministic shuffle from the seed (Fisher-Yates with an LCG).
        let mut state = seed;
        for i in (1..shuffled.len()).rev() {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let j = (state >> 33) as usize % (i + 1);
            shuffled.swap(i, j);
        }
        let pools = || [small_pool(&BTreeSet::new(), false)];
        let (a, ra) = Ipam::rebuild(pools(), claims);
        let (b, rb) = Ipam::rebuild(pools(), shuffled);
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(ra, rb);
        check_invariants(&a, &brute_usable(&BTreeSet::new(), false)).map_err(|e| TestCaseError::fail(format!("{e}")))?;
    }
}

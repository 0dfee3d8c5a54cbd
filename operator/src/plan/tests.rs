//! The Service controller's decisions, without an API server.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    LoadBalancerIngress, LoadBalancerStatus, ServicePort, ServiceSpec, ServiceStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

use super::*;
use crate::convert::claims;
use crate::ipam::PoolSpec;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn svc(name: &str, edit: impl FnOnce(&mut Service)) -> Service {
    let mut s = Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("shop".into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("LoadBalancer".into()),
            load_balancer_class: Some(names::LOAD_BALANCER_CLASS.into()),
            ip_families: Some(vec!["IPv4".into()]),
            ports: Some(vec![ServicePort {
                port: 443,
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    edit(&mut s);
    s
}

fn spec(s: &mut Service) -> &mut ServiceSpec {
    s.spec.as_mut().unwrap()
}

fn annotate(s: &mut Service, k: &str, v: &str) {
    s.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(k.into(), v.into());
}

/// Writes a plan back onto the Service, as the controller's patches do.
fn apply(s: &mut Service, p: &Plan) {
    match p.finalizer {
        Finalizer::Remove => {
            if let Some(f) = s.metadata.finalizers.as_mut() {
                f.retain(|f| f != names::FINALIZER_SERVICE)
            }
        }
        Finalizer::Keep => {}
    }
    if let Some(ips) = &p.ingress {
        s.status = Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(
                    ips.iter()
                        .map(|ip| LoadBalancerIngress {
                            ip: Some(ip.to_string()),
                            ..Default::default()
                        })
                        .collect(),
                ),
            }),
            ..Default::default()
        });
    }
    match &p.allocated_pool {
        Some(Some(v)) => annotate(s, names::ANNOTATION_ALLOCATED_POOL, v),
        Some(None) => {
            if let Some(a) = s.metadata.annotations.as_mut() {
                a.remove(names::ANNOTATION_ALLOCATED_POOL);
            }
        }
        None => {}
    }
}

fn pool(name: &str, address: &str, default: bool) -> PoolSpec {
    PoolSpec {
        name: name.into(),
        address: address.into(),
        default,
        ..Default::default()
    }
}

fn engine(pools: Vec<PoolSpec>) -> Ipam {
    Ipam::rebuild(pools, []).0
}

fn reasons(p: &Plan) -> Vec<&'static str> {
    p.notes.iter().map(|n| n.reason).collect()
}

#[test]
fn a_new_service_gets_an_ip_and_one_event_and_no_finalizer() {
    let mut ipam = engine(vec![pool("blue", "10.0.0.0/24", true)]);
    let mut s = svc("web", |_| {});
    let p = plan(&s, false, &mut ipam);
    assert_eq!(
        p.finalizer,
        Finalizer::Keep,
        "no finalizer: uninstall must not strand it"
    );
    assert_eq!(p.ingress, Some(vec![ip("10.0.0.1")]));
    assert_eq!(p.allocated_pool, Some(Some("blue".into())));
    assert_eq!(p.notes[0].message, "assigned 10.0.0.1 from pool blue");
    apply(&mut s, &p);
    // Reconciling again writes nothing and says nothing.
    let again = plan(&s, false, &mut ipam);
    assert_eq!(again.finalizer, Finalizer::Keep);
    assert_eq!(again.ingress, None);
    assert_eq!(again.allocated_pool, None);
    assert!(again.notes.is_empty());
    assert_eq!(again.held, [ip("10.0.0.1")]);
}

#[test]
fn a_requested_ip_is_given_or_refused_with_the_reason() {
    let mut ipam = engine(vec![pool("blue", "10.0.0.0/24", true)]);
    let s = svc("web", |s| {
        annotate(s, names::ANNOTATION_REQUESTED_IP, "10.0.0.50")
    });
    assert_eq!(plan(&s, false, &mut ipam).held, [ip("10.0.0.50")]);
    let legacy = svc("old", |s| {
        spec(s).load_balancer_ip = Some("10.0.0.60".into())
    });
    assert_eq!(plan(&legacy, false, &mut ipam).held, [ip("10.0.0.60")]);
    let outside = svc("far", |s| {
        annotate(s, names::ANNOTATION_REQUESTED_IP, "192.0.2.1")
    });
    let p = plan(&outside, false, &mut ipam);
    assert!(p.held.is_empty());
    assert_eq!(p.ingress, None, "nothing to write: no status yet");
    assert_eq!(p.notes[0].severity, Severity::Warning);
    assert_eq!(
        p.notes[0].message,
        "requested IP 192.0.2.1 is in no pool: add an Eip containing it, or request another IP"
    );
}

#[test]
fn sharing_needs_the_same_key_and_distinct_ports() {
    let mut ipam = engine(vec![pool("blue", "10.0.0.0/24", true)]);
    let shared = |name: &str, key: &str, port: i32| {
        svc(name, |s| {
            annotate(s, names::ANNOTATION_REQUESTED_IP, "10.0.0.7");
            annotate(s, names::ANNOTATION_SHARING_KEY, key);
            spec(s).ports = Some(vec![ServicePort {
                port,
                ..Default::default()
            }]);
        })
    };
    assert_eq!(
        plan(&shared("a", "k", 80), false, &mut ipam).held,
        [ip("10.0.0.7")]
    );
    assert_eq!(
        plan(&shared("b", "k", 443), false, &mut ipam).held,
        [ip("10.0.0.7")]
    );
    let clash = plan(&shared("c", "k", 80), false, &mut ipam);
    assert!(clash.held.is_empty());
    assert!(
        clash.notes[0].message.contains("10.0.0.7"),
        "{:?}",
        clash.notes
    );
    let other_key = plan(&shared("d", "other", 8080), false, &mut ipam);
    assert!(other_key.held.is_empty());
    assert!(
        other_key.notes[0].message.contains("shop/a"),
        "{:?}",
        other_key.notes
    );
}

#[test]
fn an_exhausted_pool_says_so_and_a_release_lets_the_next_one_through() {
    let mut ipam = engine(vec![pool("tiny", "10.0.0.1-10.0.0.2", true)]);
    let mut services: Vec<Service> = (0..3).map(|i| svc(&format!("s{i}"), |_| {})).collect();
    for s in &mut services[..2] {
        let p = plan(s, false, &mut ipam);
        apply(s, &p);
    }
    let p = plan(&services[2], false, &mut ipam);
    assert_eq!(reasons(&p), ["AllocationFailed"]);
    assert_eq!(
        p.notes[0].message,
        "pool tiny exhausted: 2 of 2 in use; free an IP or add addresses to a pool"
    );
    // s0 (with the finalizer of an earlier version) deleted: the finalizer comes off after
    // the release, and s2 gets the IP.
    let mut gone = services[0].clone();
    gone.metadata.finalizers = Some(vec![names::FINALIZER_SERVICE.into()]);
    gone.metadata.deletion_timestamp = Some(Time(Default::default()));
    let d = plan(&gone, false, &mut ipam);
    assert_eq!(d.finalizer, Finalizer::Remove);
    assert_eq!(reasons(&d), ["IPReleased"]);
    assert_eq!(plan(&services[2], false, &mut ipam).held, [ip("10.0.0.1")]);
}

#[test]
fn a_disabled_pool_gives_nothing_new_but_keeps_what_it_gave() {
    let mut ipam = engine(vec![pool("blue", "10.0.0.0/24", true)]);
    let mut s = svc("web", |_| {});
    let p = plan(&s, false, &mut ipam);
    apply(&mut s, &p);
    ipam.upsert_pool(PoolSpec {
        disabled: true,
        ..pool("blue", "10.0.0.0/24", true)
    })
    .unwrap();
    assert_eq!(plan(&s, false, &mut ipam).held, [ip("10.0.0.1")]);
    let named = svc("new", |s| annotate(s, names::ANNOTATION_POOL, "blue"));
    let p = plan(&named, false, &mut ipam);
    assert!(p.held.is_empty());
    assert!(
        p.notes[0].message.starts_with("pool blue is disabled"),
        "{:?}",
        p.notes
    );
}

#[test]
fn a_type_change_releases_and_clears_what_berth_wrote() {
    let mut ipam = engine(vec![pool("blue", "10.0.0.0/24", true)]);
    let mut s = svc("web", |_| {});
    let p = plan(&s, false, &mut ipam);
    apply(&mut s, &p);
    spec(&mut s).type_ = Some("ClusterIP".into());
    let p = plan(&s, false, &mut ipam);
    assert_eq!(p.finalizer, Finalizer::Keep, "it never had one");
    assert_eq!(p.ingress, Some(vec![]));
    assert_eq!(p.allocated_pool, Some(None));
    assert_eq!(ipam.held(), 0);
    assert!(p.notes[0].message.contains("no longer Berth's"));
}

#[test]
fn another_class_is_left_alone() {
    let mut ipam = engine(vec![pool("blue", "10.0.0.0/24", true)]);
    let s = svc("web", |s| {
        spec(s).load_balancer_class = Some("metallb.io/metallb".into());
        s.status = Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(vec![LoadBalancerIngress {
                    ip: Some("192.0.2.9".into()),
                    ..Default::default()
                }]),
            }),
            ..Default::default()
        });
    });
    let p = plan(&s, false, &mut ipam);
    assert_eq!(
        (p.finalizer, p.ingress, p.allocated_pool),
        (Finalizer::Keep, None, None)
    );
    assert!(p.notes.is_empty());
}

#[test]
fn berths_annotations_on_a_service_that_is_not_berths_are_reported_and_change_nothing() {
    let mut ipam = engine(vec![pool("blue", "10.0.0.0/28", true)]);
    let forged = svc("forged", |s| {
        spec(s).type_ = Some("ClusterIP".into());
        annotate(s, names::ANNOTATION_ALLOCATED_POOL, "blue");
        annotate(
            s,
            names::ANNOTATION_LAYER2,
            r#"{"ips":["10.0.0.1"],"interface":"eth0","nodes":["n1"]}"#,
        );
    });
    let p = plan(&forged, false, &mut ipam);
    assert!(!p.ours);
    assert_eq!(reasons(&p), ["NotBerths"]);
    assert!(p.notes[0].message.contains(names::ANNOTATION_LAYER2));
    assert_eq!(p.ingress, None);
    assert_eq!(
        p.allocated_pool, None,
        "another's annotation is not ours to remove"
    );
    assert_eq!(p.finalizer, Finalizer::Keep);
    assert!(p.held.is_empty());
    assert!(ipam.services().next().is_none(), "nothing allocated");
    // A plain Service of another kind says nothing.
    let plain = svc("plain", |s| spec(s).type_ = Some("ClusterIP".into()));
    assert!(plan(&plain, false, &mut ipam).notes.is_empty());
}

#[test]
fn the_ip_in_status_is_kept_when_the_engine_does_not_hold_it() {
    // The engine knows nothing of the Service (it was written after the rebuild, or restored
    // with its status): it keeps the IP its status shows, not the pool's first free one.
    let mut ipam = engine(vec![pool("blue", "10.0.0.0/28", true)]);
    let restored = svc("web", |s| {
        s.status = Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(vec![LoadBalancerIngress {
                    ip: Some("10.0.0.9".into()),
                    ..Default::default()
                }]),
            }),
            ..Default::default()
        });
    });
    let p = plan(&restored, false, &mut ipam);
    assert_eq!(p.held, [ip("10.0.0.9")]);
    assert_eq!(p.ingress, None, "the status is already right");
    // Held by another Service meanwhile, which it may not share with: nothing moves (no
    // fresh IP behind the user's back); it keeps the IP in its status, holds nothing in the
    // engine, and the newer of the two is told (same creation time: by name, "web").
    let mut ipam = engine(vec![pool("blue", "10.0.0.0/28", true)]);
    let other = svc("other", |s| {
        spec(s).load_balancer_ip = Some("10.0.0.9".into());
    });
    assert_eq!(plan(&other, false, &mut ipam).held, [ip("10.0.0.9")]);
    let p = plan(&restored, false, &mut ipam);
    assert!(p.held.is_empty(), "{:?}", p.held);
    assert_eq!(p.ingress, None, "its status IP is not taken away");
    assert_eq!(p.pending, Some("SharingEdit"));
    assert_eq!(reasons(&p), ["SharingConflict"]);
    assert!(
        p.notes[0].message.contains("held by shop/other"),
        "{}",
        p.notes[0].message
    );
    // Once the other lets go, it holds its IP again.
    ipam.release(&ServiceKey::new("shop", "other"));
    let p = plan(&restored, false, &mut ipam);
    assert_eq!(p.held, [ip("10.0.0.9")]);
    assert_eq!((reasons(&p), p.ingress), (vec!["IPAllocated"], None));
}

#[test]
fn a_bad_annotation_later_keeps_the_ip() {
    let mut ipam = engine(vec![pool("blue", "10.0.0.0/24", true)]);
    let mut s = svc("web", |_| {});
    let p = plan(&s, false, &mut ipam);
    apply(&mut s, &p);
    annotate(&mut s, names::ANNOTATION_REQUESTED_IP, "not-an-ip");
    let p = plan(&s, false, &mut ipam);
    assert_eq!(p.held, [ip("10.0.0.1")]);
    assert_eq!(p.ingress, None);
    assert_eq!(
        p.notes[0].message,
        "annotation berth.dev/ip: \"not-an-ip\" is not an IP address (write e.g. 10.0.0.5 or 10.0.0.5,fd00::5); the Service keeps the IPs it has"
    );
}

#[test]
fn dual_stack_gets_one_of_each_and_narrowing_releases_one() {
    let mut ipam = engine(vec![
        pool("blue", "10.0.0.0/24", false),
        pool("green", "fd00::/120", false),
    ]);
    let mut s = svc("web", |s| {
        annotate(s, names::ANNOTATION_POOL, "blue");
        spec(s).ip_families = Some(vec!["IPv4".into()]);
    });
    let p = plan(&s, false, &mut ipam);
    apply(&mut s, &p);
    assert_eq!(p.held, [ip("10.0.0.1")]);
    // The pool annotation names one pool; the IPv6 half needs its own: the v6 request
    // reports the family mismatch and the IPv4 IP stays.
    spec(&mut s).ip_families = Some(vec!["IPv4".into(), "IPv6".into()]);
    let p = plan(&s, false, &mut ipam);
    assert_eq!(p.held, [ip("10.0.0.1")]);
    assert!(p.notes[0].message.contains("IPv6"), "{:?}", p.notes);
    // Without the annotation, requested IPs pick the pools.
    if let Some(a) = s.metadata.annotations.as_mut() {
        a.remove(names::ANNOTATION_POOL);
    }
    annotate(&mut s, names::ANNOTATION_REQUESTED_IP, "10.0.0.1,fd00::9");
    let p = plan(&s, false, &mut ipam);
    assert_eq!(p.held, [ip("10.0.0.1"), ip("fd00::9")]);
    assert_eq!(
        p.allocated_pool,
        Some(Some("10.0.0.1=blue,fd00::9=green".into()))
    );
    apply(&mut s, &p);
    spec(&mut s).ip_families = Some(vec!["IPv6".into()]);
    annotate(&mut s, names::ANNOTATION_REQUESTED_IP, "fd00::9");
    let p = plan(&s, false, &mut ipam);
    assert_eq!(p.held, [ip("fd00::9")]);
    assert_eq!(reasons(&p), ["IPReleased"]);
    assert_eq!(ipam.ips_of(&p.key), [ip("fd00::9")]);
}

/// Item 2 of the issue: a restart rebuilds from the Services' status, in whatever order the
/// API lists them, and not one of 1,000 IPs changes.
#[test]
fn restart_rebuild_gives_identical_ips_for_1000_services_in_shuffled_order() {
    let pools = || {
        vec![
            pool("blue", "10.0.0.0/22", true),
            pool("green", "fd00::/112", false),
        ]
    };
    let mut ipam = engine(pools());
    let mut services: Vec<Service> = (0..1000)
        .map(|i| {
            svc(&format!("s{i:04}"), |s| {
                if i % 3 == 0 {
                    spec(s).ip_families = Some(vec!["IPv6".into()]);
                    annotate(s, names::ANNOTATION_POOL, "green");
                }
                if i % 10 == 0 {
                    s.metadata.annotations = None;
                    annotate(s, names::ANNOTATION_SHARING_KEY, "shared");
                    annotate(s, names::ANNOTATION_REQUESTED_IP, "10.0.3.200");
                    spec(s).ip_families = Some(vec!["IPv4".into()]);
                    spec(s).ports = Some(vec![ServicePort {
                        port: 1000 + i,
                        ..Default::default()
                    }]);
                }
                s.metadata.creation_timestamp =
                    Some(Time(jiff_from_secs(1_700_000_000 + i64::from(i))));
            })
        })
        .collect();
    for s in &mut services {
        let p = plan(s, false, &mut ipam);
        apply(s, &p);
    }
    // Free IPs in the middle and fill them with newer Services, so "lowest free address in
    // creation order" cannot explain the outcome.
    services.retain_mut(|s| {
        let n: usize = s.metadata.name.as_deref().unwrap()[1..].parse().unwrap();
        if n % 7 != 3 || n.is_multiple_of(10) {
            return true;
        }
        s.metadata.deletion_timestamp = Some(Time(jiff_from_secs(1_800_000_000)));
        let p = plan(s, false, &mut ipam);
        assert_eq!(reasons(&p), ["IPReleased"]);
        false
    });
    for i in 1000..1100 {
        let mut s = svc(&format!("s{i:04}"), |s| {
            s.metadata.creation_timestamp = Some(Time(jiff_from_secs(1_700_000_000 + i)));
        });
        let p = plan(&s, false, &mut ipam);
        apply(&mut s, &p);
        services.push(s);
    }
    let before: BTreeMap<String, Vec<IpAddr>> = services
        .iter()
        .map(|s| (s.metadata.name.clone().unwrap(), ingress_ips(s)))
        .collect();
    let without: Vec<_> = before.iter().filter(|(_, ips)| ips.len() != 1).collect();
    assert!(without.is_empty(), "{without:?}");

    // A deterministic shuffle (no rand dependency for one test).
    let mut order: Vec<usize> = (0..services.len()).collect();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in (1..order.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    let shuffled: Vec<&Service> = order.iter().map(|&i| &services[i]).collect();
    let claims_list = shuffled.iter().flat_map(|s| claims(s, false));
    let (mut rebuilt, report) = Ipam::rebuild(pools(), claims_list);
    assert!(report.conflicts.is_empty(), "{:?}", report.conflicts);
    for s in shuffled {
        let p = plan(s, false, &mut rebuilt);
        assert_eq!(p.ingress, None, "{} would change", p.key);
        assert!(p.notes.is_empty(), "{:?}", p.notes);
        assert_eq!(
            Some(&p.held),
            before.get(s.metadata.name.as_deref().unwrap())
        );
    }
    assert_eq!(rebuilt.held(), ipam.held());
}

fn jiff_from_secs(s: i64) -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::from_second(s).unwrap()
}

/// The finalizer earlier versions added comes off a Service that carries it, whose IP stays.
#[test]
fn an_old_finalizer_is_removed_and_the_ip_kept() {
    let mut ipam = engine(vec![pool("blue", "10.0.0.0/24", true)]);
    let mut s = svc("web", |_| {});
    let first = plan(&s, false, &mut ipam);
    apply(&mut s, &first);
    s.metadata.finalizers = Some(vec![names::FINALIZER_SERVICE.into()]);
    let p = plan(&s, false, &mut ipam);
    assert_eq!(p.finalizer, Finalizer::Remove);
    assert_eq!(p.held, [ip("10.0.0.1")]);
    assert_eq!(p.ingress, None, "the IP does not move");
}

fn created_at(s: &mut Service, secs: i64) {
    s.metadata.creation_timestamp = Some(Time(jiff_from_secs(secs)));
}

fn sharing(s: &mut Service, key: &str, port: i32) {
    annotate(s, names::ANNOTATION_SHARING_KEY, key);
    spec(s).ports = Some(vec![ServicePort {
        port,
        ..Default::default()
    }]);
}

/// Two Services share an IP; the newer is edited onto the older's port. The edit is
/// re-checked: the newer is told (on itself), nothing moves, and the engine keeps the
/// constraints in force. After a restart (rebuild from status), the older keeps the IP
/// in the engine and the newer keeps it in its status, told again.
#[test]
fn a_sharing_edit_that_collides_moves_nothing_and_tells_the_newer_also_after_a_restart() {
    let mut ipam = engine(vec![pool("blue", "10.0.0.0/24", true)]);
    let mut older = svc("older", |s| {
        created_at(s, 100);
        sharing(s, "k", 80);
    });
    let mut newer = svc("newer", |s| {
        created_at(s, 200);
        sharing(s, "k", 443);
    });
    let p = plan(&older, false, &mut ipam);
    apply(&mut older, &p);
    let p = plan(&newer, false, &mut ipam);
    apply(&mut newer, &p);
    assert_eq!(p.held, [ip("10.0.0.1")], "they share");

    // The newer Service now wants port 80 too.
    spec(&mut newer).ports = Some(vec![ServicePort {
        port: 80,
        ..Default::default()
    }]);
    let p = plan(&newer, false, &mut ipam);
    assert_eq!(p.held, [ip("10.0.0.1")], "nothing moves");
    assert_eq!(p.ingress, None);
    assert_eq!(reasons(&p), ["SharingConflict"]);
    assert!(p.elsewhere.is_empty());
    let m = &p.notes[0].message;
    assert!(
        m.contains("port 80/TCP is already used on 10.0.0.1 by shop/older")
            && m.contains("nothing moved")
            && m.contains("shop/newer is the newer"),
        "{m}"
    );
    // Re-checked at every reconcile, not only at the edit.
    assert_eq!(
        reasons(&plan(&newer, false, &mut ipam)),
        ["SharingConflict"]
    );
    // The older one, reconciled, is not disturbed and says nothing.
    let p = plan(&older, false, &mut ipam);
    assert!(p.notes.is_empty() && p.elsewhere.is_empty(), "{p:?}");
    assert_eq!(p.held, [ip("10.0.0.1")]);

    // Restart: rebuilt from both statuses in either order.
    for services in [[&older, &newer], [&newer, &older]] {
        let (mut rebuilt, report) = Ipam::rebuild(
            [pool("blue", "10.0.0.0/24", true)],
            services.iter().flat_map(|s| claims(s, false)),
        );
        assert_eq!(report.conflicts.len(), 1);
        assert_eq!(
            report.conflicts[0].service,
            ServiceKey::new("shop", "newer")
        );
        let p = plan(&older, false, &mut rebuilt);
        assert_eq!(
            (p.held.as_slice(), &p.ingress),
            (&[ip("10.0.0.1")][..], &None)
        );
        let p = plan(&newer, false, &mut rebuilt);
        assert_eq!(p.ingress, None, "its status IP stays: nothing moves");
        assert!(p.held.is_empty(), "the older holds it in the engine");
        assert_eq!(p.pending, Some("SharingEdit"));
        assert_eq!(reasons(&p), ["SharingConflict"]);
    }

    // Undone: they share again, and the engine takes the current constraints in.
    spec(&mut newer).ports = Some(vec![ServicePort {
        port: 8443,
        ..Default::default()
    }]);
    let p = plan(&newer, false, &mut ipam);
    assert!(p.notes.is_empty(), "{:?}", p.notes);
    let third = svc("third", |s| {
        created_at(s, 300);
        sharing(s, "k", 443);
    });
    assert_eq!(
        plan(&third, false, &mut ipam).held,
        [ip("10.0.0.1")],
        "443 is free on the shared IP once the edit is taken in"
    );
}

/// When the older Service is the one edited onto the newer's port, the Event still goes on
/// the newer one, phrased from its side.
#[test]
fn a_collision_made_by_the_older_is_told_to_the_newer() {
    let mut ipam = engine(vec![pool("blue", "10.0.0.0/24", true)]);
    let mut older = svc("older", |s| {
        created_at(s, 100);
        sharing(s, "k", 80);
    });
    let newer = svc("newer", |s| {
        created_at(s, 200);
        sharing(s, "k", 443);
    });
    let p = plan(&older, false, &mut ipam);
    apply(&mut older, &p);
    plan(&newer, false, &mut ipam);
    spec(&mut older).ports = Some(vec![ServicePort {
        port: 443,
        ..Default::default()
    }]);
    let p = plan(&older, false, &mut ipam);
    assert!(p.notes.is_empty(), "{:?}", p.notes);
    assert_eq!(p.held, [ip("10.0.0.1")]);
    assert_eq!(p.elsewhere.len(), 1);
    let (on, note) = &p.elsewhere[0];
    assert_eq!(on, &ServiceKey::new("shop", "newer"));
    assert_eq!(note.reason, "SharingConflict");
    assert!(
        note.message
            .contains("port 443/TCP is already used on 10.0.0.1 by shop/older"),
        "{}",
        note.message
    );
}

/// A Service deleted and created again under the same name before the sweep saw the
/// deletion is a new holder: the old instance's IP is released and the new one's spec
/// decides (here, another requested IP: no AlreadyAssigned).
#[test]
fn a_service_recreated_under_the_same_name_is_a_new_holder() {
    let mut ipam = engine(vec![pool("blue", "10.0.0.0/24", true)]);
    let first = svc("web", |s| s.metadata.uid = Some("uid-1".into()));
    assert_eq!(plan(&first, false, &mut ipam).held, [ip("10.0.0.1")]);
    // The same instance again: kept.
    assert!(plan(&first, false, &mut ipam).notes.is_empty());
    let second = svc("web", |s| {
        s.metadata.uid = Some("uid-2".into());
        annotate(s, names::ANNOTATION_REQUESTED_IP, "10.0.0.9");
    });
    let p = plan(&second, false, &mut ipam);
    assert_eq!(p.held, [ip("10.0.0.9")]);
    assert_eq!(reasons(&p), ["IPReleased", "IPAllocated"]);
    assert!(
        p.notes[0].message.contains("released 10.0.0.1"),
        "{:?}",
        p.notes
    );
    assert!(
        ipam.holders(ip("10.0.0.1")).is_empty(),
        "the old IP is free"
    );
}

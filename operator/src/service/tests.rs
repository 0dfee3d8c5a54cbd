//! Reading Services: whose they are, and what they ask for.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::*;

fn svc(edit: impl FnOnce(&mut Service)) -> Service {
    let mut s = Service {
        metadata: ObjectMeta {
            name: Some("web".into()),
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
            selector: Some(BTreeMap::from([("app".to_owned(), "web".to_owned())])),
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

fn requests(s: &Service) -> Vec<Request> {
    match intent(s, false).unwrap() {
        Intent::Ours(r) => r,
        Intent::NotOurs => panic!("expected Berth's"),
    }
}

#[test]
fn only_load_balancers_of_our_class_are_ours() {
    assert!(matches!(intent(&svc(|_| {}), false), Ok(Intent::Ours(_))));
    let cluster_ip = svc(|s| spec(s).type_ = Some("ClusterIP".into()));
    assert_eq!(intent(&cluster_ip, true), Ok(Intent::NotOurs));
    let other = svc(|s| spec(s).load_balancer_class = Some("metallb.io/metallb".into()));
    assert_eq!(intent(&other, true), Ok(Intent::NotOurs));
    let unclassed = svc(|s| spec(s).load_balancer_class = None);
    assert_eq!(intent(&unclassed, false), Ok(Intent::NotOurs));
    assert!(matches!(intent(&unclassed, true), Ok(Intent::Ours(_))));
    assert_eq!(intent(&Service::default(), true), Ok(Intent::NotOurs));
}

#[test]
fn a_request_carries_pool_ip_sharing_ports_and_policy() {
    let s = svc(|s| {
        annotate(s, names::ANNOTATION_POOL, "blue");
        annotate(s, names::ANNOTATION_REQUESTED_IP, " 10.0.0.5 ");
        annotate(s, names::ANNOTATION_SHARING_KEY, "web");
        spec(s).external_traffic_policy = Some("Local".into());
    });
    let r = requests(&s);
    assert_eq!(r.len(), 1);
    let r = &r[0];
    assert_eq!(r.family, Family::V4);
    assert_eq!(r.pool.as_deref(), Some("blue"));
    assert_eq!(r.requested, Some("10.0.0.5".parse().unwrap()));
    assert_eq!(r.holder.sharing_key.as_deref(), Some("web"));
    assert_eq!(r.holder.policy, TrafficPolicy::Local);
    assert_eq!(r.holder.backend, "app=web");
    assert_eq!(r.holder.service, ServiceKey::new("shop", "web"));
    assert!(r.holder.ports.contains(&Port {
        port: 443,
        protocol: Protocol::Tcp
    }));
}

#[test]
fn dual_stack_gets_one_request_per_family_with_its_own_ip() {
    let s = svc(|s| {
        spec(s).ip_families = Some(vec!["IPv6".into(), "IPv4".into()]);
        spec(s).ip_family_policy = Some("RequireDualStack".into());
        annotate(s, names::ANNOTATION_REQUESTED_IP, "10.0.0.5,fd00::5");
    });
    let r = requests(&s);
    let got: Vec<_> = r
        .iter()
        .map(|r| (r.family, r.requested.map(|i| i.to_string())))
        .collect();
    assert_eq!(
        got,
        [
            (Family::V6, Some("fd00::5".into())),
            (Family::V4, Some("10.0.0.5".into()))
        ]
    );
}

#[test]
fn the_deprecated_field_is_honoured_when_the_annotation_is_absent() {
    let s = svc(|s| spec(s).load_balancer_ip = Some("10.0.0.9".into()));
    assert_eq!(requests(&s)[0].requested, Some("10.0.0.9".parse().unwrap()));
    let both = svc(|s| {
        spec(s).load_balancer_ip = Some("10.0.0.9".into());
        annotate(s, names::ANNOTATION_REQUESTED_IP, "10.0.0.5");
    });
    assert_eq!(
        requests(&both)[0].requested,
        Some("10.0.0.5".parse().unwrap())
    );
}

#[test]
fn bad_input_names_the_field_and_the_fix() {
    let e = |edit: fn(&mut Service)| intent(&svc(edit), false).unwrap_err().to_string();
    assert_eq!(
        e(|s| annotate(s, names::ANNOTATION_REQUESTED_IP, "10.0.0")),
        "annotation berth.dev/ip: \"10.0.0\" is not an IP address (write e.g. 10.0.0.5 or 10.0.0.5,fd00::5)"
    );
    assert_eq!(
        e(|s| annotate(s, names::ANNOTATION_REQUESTED_IP, "10.0.0.5,10.0.0.6")),
        "annotation berth.dev/ip: two IPv4 addresses: give at most one per family"
    );
    assert_eq!(
        e(|s| annotate(s, names::ANNOTATION_REQUESTED_IP, "fd00::5")),
        "annotation berth.dev/ip: fd00::5 is IPv6 but the Service's ipFamilies do not include it"
    );
    assert_eq!(
        e(|s| spec(s).load_balancer_ip = Some("nope".into())),
        "spec.loadBalancerIP: \"nope\" is not an IP address (write e.g. 10.0.0.5 or 10.0.0.5,fd00::5)"
    );
    assert_eq!(
        e(|s| spec(s).ip_family_policy = Some("RequireDualStack".into())),
        "spec.ipFamilyPolicy: RequireDualStack needs both IPv4 and IPv6 in spec.ipFamilies"
    );
    assert_eq!(
        e(|s| spec(s).ports.as_mut().unwrap()[0].protocol = Some("ICMP".into())),
        "spec.ports[0].protocol: \"ICMP\" is not TCP, UDP or SCTP"
    );
}

/// A Service handed over from MetalLB or OpenELB asks for the same pool, IPs and sharing
/// through their annotations; Berth's own annotation wins when both are set.
#[test]
fn metallb_and_openelb_annotations_are_requests_too() {
    let metallb = svc(|s| {
        annotate(s, "metallb.universe.tf/address-pool", "blue");
        annotate(s, "metallb.universe.tf/loadBalancerIPs", "10.0.0.5");
        annotate(s, "metallb.universe.tf/allow-shared-ip", "web");
    });
    let r = &requests(&metallb)[0];
    assert_eq!(r.pool.as_deref(), Some("blue"));
    assert_eq!(r.requested, Some("10.0.0.5".parse().unwrap()));
    assert_eq!(r.holder.sharing_key.as_deref(), Some("web"));

    let new_spelling = svc(|s| {
        annotate(s, "metallb.io/address-pool", "green");
        annotate(s, "metallb.io/loadBalancerIPs", "10.0.0.6");
        annotate(s, "metallb.io/allow-shared-ip", "k");
    });
    let r = &requests(&new_spelling)[0];
    assert_eq!(r.pool.as_deref(), Some("green"));
    assert_eq!(r.requested, Some("10.0.0.6".parse().unwrap()));
    assert_eq!(r.holder.sharing_key.as_deref(), Some("k"));

    for key in [
        "eip.openelb.kubesphere.io/v1alpha2",
        "eip.porter.kubesphere.io/v1alpha2",
    ] {
        let openelb = svc(|s| {
            annotate(s, "lb.kubesphere.io/v1alpha1", "openelb");
            annotate(s, key, "eip-sample");
        });
        assert_eq!(requests(&openelb)[0].pool.as_deref(), Some("eip-sample"));
    }

    let both = svc(|s| {
        annotate(s, names::ANNOTATION_POOL, "mine");
        annotate(s, "metallb.universe.tf/address-pool", "theirs");
        annotate(s, names::ANNOTATION_REQUESTED_IP, "10.0.0.7");
        annotate(s, "metallb.io/loadBalancerIPs", "10.0.0.8");
    });
    let r = &requests(&both)[0];
    assert_eq!(r.pool.as_deref(), Some("mine"));
    assert_eq!(r.requested, Some("10.0.0.7".parse().unwrap()));

    // A bad foreign value is reported under its own name.
    let bad = svc(|s| annotate(s, "metallb.io/loadBalancerIPs", "ten"));
    let e = intent(&bad, false).unwrap_err();
    assert_eq!(e.field, "annotation metallb.io/loadBalancerIPs");
}

/// What the store keeps of a Service asks for exactly what the whole Service asks for, and
/// the rest is gone: a cluster IP, node ports, the last applied copy, a `Cluster` Service's
/// selector, all but the type of a Service that is not a load balancer.
#[test]
fn the_stored_service_asks_for_what_the_whole_one_asks_for() {
    let full = |edit: fn(&mut Service)| {
        svc(|s| {
            let sp = spec(s);
            sp.cluster_ip = Some("10.96.0.7".into());
            sp.cluster_ips = Some(vec!["10.96.0.7".into()]);
            sp.session_affinity = Some("None".into());
            sp.internal_traffic_policy = Some("Cluster".into());
            sp.ports = Some(vec![ServicePort {
                name: Some("https".into()),
                port: 443,
                node_port: Some(31443),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]);
            annotate(s, LAST_APPLIED, "{\"kind\":\"Service\"}");
            annotate(s, names::ANNOTATION_SHARING_KEY, "shop");
            annotate(s, names::ANNOTATION_REQUESTED_IP, "198.51.100.9");
            edit(s);
        })
    };
    let variants: [fn(&mut Service); 5] = [
        |_| {},
        |s| spec(s).external_traffic_policy = Some("Local".into()),
        |s| {
            spec(s).ip_families = Some(vec!["IPv4".into(), "IPv6".into()]);
            spec(s).ip_family_policy = Some("PreferDualStack".into());
            s.metadata
                .annotations
                .as_mut()
                .unwrap()
                .remove(names::ANNOTATION_REQUESTED_IP);
        },
        |s| spec(s).type_ = Some("ClusterIP".into()),
        |s| spec(s).load_balancer_class = None,
    ];
    for edit in variants {
        let whole = full(edit);
        let mut kept = whole.clone();
        stored(&mut kept);
        assert_eq!(intent(&kept, true), intent(&whole, true), "{whole:?}");
        let sp = kept.spec.as_ref().unwrap();
        assert_eq!((&sp.cluster_ip, &sp.cluster_ips), (&None, &None));
        assert!(
            !kept
                .metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(LAST_APPLIED))
        );
        assert!(sp.ports.iter().flatten().all(|p| p.node_port.is_none()));
        let local = sp.external_traffic_policy.as_deref() == Some("Local");
        assert_eq!(sp.selector.is_some(), local, "{sp:?}");
        if sp.type_.as_deref() != Some("LoadBalancer") {
            assert!(sp.ports.is_none() && sp.ip_families.is_none());
        }
    }
}

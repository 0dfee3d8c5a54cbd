//! Next-hop rules, from Kubernetes objects and as properties.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{NodeAddress, NodeCondition, NodeSpec, NodeStatus};
use k8s_openapi::api::discovery::v1::{Endpoint as K8sEndpoint, EndpointConditions};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use proptest::prelude::*;

use super::*;

fn node(name: &str, v4: &str) -> NodeView {
    NodeView {
        name: name.into(),
        ready: true,
        schedulable: true,
        labels: Labels::new(),
        internal_ips: vec![v4.parse().unwrap()],
    }
}

fn ep(node: &str, ready: bool) -> Endpoint {
    Endpoint {
        node: Some(node.into()),
        ready,
    }
}

fn rules(policy: TrafficPolicy, weighted: bool) -> Rules<'static> {
    Rules {
        policy,
        weighted,
        node_selector: None,
        ipv4: true,
    }
}

fn addrs(o: &Outcome) -> Vec<String> {
    o.next_hops.iter().map(|n| n.address.to_string()).collect()
}

/// Sorted by name, as `next_hops` takes them.
fn three() -> Vec<NodeView> {
    vec![
        node("n1", "10.0.0.11"),
        node("n2", "10.0.0.12"),
        node("n3", "10.0.0.13"),
    ]
}

#[test]
fn cluster_takes_every_eligible_node_sorted() {
    let mut nodes = three();
    let o = next_hops(&nodes, &[], &rules(TrafficPolicy::Cluster, false));
    assert_eq!(addrs(&o), ["10.0.0.11", "10.0.0.12", "10.0.0.13"]);
    // NotReady, cordoned and excluded nodes leave; so does one the selector does not match.
    nodes[0].ready = false;
    nodes[1].schedulable = false;
    nodes[2].labels.insert(EXCLUDE_LABEL.into(), String::new());
    let o = next_hops(&nodes, &[], &rules(TrafficPolicy::Cluster, false));
    assert!(o.next_hops.is_empty());
    let mut nodes = three();
    nodes[0].labels.insert("bgp".into(), "yes".into());
    let sel = Selector {
        match_labels: [("bgp".to_owned(), "yes".to_owned())].into(),
        requirements: vec![],
    };
    let r = Rules {
        node_selector: Some(&sel),
        ..rules(TrafficPolicy::Cluster, false)
    };
    assert_eq!(addrs(&next_hops(&nodes, &[], &r)), ["10.0.0.11"]);
}

#[test]
fn local_takes_nodes_with_ready_endpoints_and_weights_follow_pods() {
    let nodes = three();
    let eps = [
        ep("n1", true),
        ep("n1", true),
        ep("n1", true),
        ep("n2", true),
        ep("n3", false),
    ];
    let o = next_hops(&nodes, &eps, &rules(TrafficPolicy::Local, false));
    assert_eq!(addrs(&o), ["10.0.0.11", "10.0.0.12"]);
    assert!(o.next_hops.iter().all(|n| n.weight.is_none()));
    let o = next_hops(&nodes, &eps, &rules(TrafficPolicy::Local, true));
    let w: Vec<_> = o.next_hops.iter().map(|n| n.weight).collect();
    assert_eq!(w, [Some(3), Some(1)]);
    // An endpoint moving from n1 to n3 moves the weight with it.
    let moved = [
        ep("n1", true),
        ep("n1", true),
        ep("n3", true),
        ep("n2", true),
    ];
    let o = next_hops(&nodes, &moved, &rules(TrafficPolicy::Local, true));
    let w: Vec<_> = o
        .next_hops
        .iter()
        .map(|n| (n.node.as_str(), n.weight))
        .collect();
    assert_eq!(w, [("n1", Some(2)), ("n2", Some(1)), ("n3", Some(1))]);
}

#[test]
fn local_keeps_a_cordoned_node_but_not_a_notready_one() {
    let mut nodes = three();
    nodes[0].schedulable = false; // n1 cordoned
    nodes[1].ready = false; // n2 NotReady
    let eps = [ep("n1", true), ep("n2", true)];
    let o = next_hops(&nodes, &eps, &rules(TrafficPolicy::Local, false));
    assert_eq!(addrs(&o), ["10.0.0.11"]);
}

#[test]
fn a_node_without_an_address_of_the_family_is_reported() {
    let nodes = three();
    let r = Rules {
        ipv4: false,
        ..rules(TrafficPolicy::Cluster, false)
    };
    let o = next_hops(&nodes, &[], &r);
    assert!(o.next_hops.is_empty());
    assert_eq!(o.no_address, ["n1", "n2", "n3"]);
}

#[test]
fn kubernetes_objects_become_views() {
    let n = Node {
        metadata: ObjectMeta {
            name: Some("n1".into()),
            labels: Some([("zone".to_owned(), "a".to_owned())].into()),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            unschedulable: Some(true),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            addresses: Some(vec![
                NodeAddress {
                    type_: "Hostname".into(),
                    address: "n1".into(),
                },
                NodeAddress {
                    type_: "InternalIP".into(),
                    address: "fd00::11".into(),
                },
                NodeAddress {
                    type_: "InternalIP".into(),
                    address: "10.0.0.11".into(),
                },
                NodeAddress {
                    type_: "InternalIP".into(),
                    address: "not an ip".into(),
                },
            ]),
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    };
    let v = from_node(&n);
    assert!(v.ready && !v.schedulable);
    assert_eq!(v.internal_ips.len(), 2);
    assert_eq!(v.labels["zone"], "a");
    // A node with no status at all is simply not ready.
    assert!(!from_node(&Node::default()).ready);

    let slice = |family: &str, eps: Vec<K8sEndpoint>| EndpointSlice {
        address_type: family.into(),
        endpoints: eps,
        ..Default::default()
    };
    let e = |node: &str, ready: Option<bool>| K8sEndpoint {
        node_name: Some(node.into()),
        conditions: Some(EndpointConditions {
            ready,
            ..Default::default()
        }),
        ..Default::default()
    };
    let slices = [
        slice(
            "IPv4",
            vec![e("n1", Some(true)), e("n2", None), e("n3", Some(false))],
        ),
        slice("IPv6", vec![e("n1", Some(true))]),
    ]
    .iter()
    .map(SliceView::from)
    .collect::<Vec<_>>();
    let v4 = endpoints(&slices, true);
    assert_eq!(
        v4,
        [ep("n1", true), ep("n2", true), ep("n3", false)],
        "unset ready counts as ready"
    );
    assert_eq!(endpoints(&slices, false), [ep("n1", true)]);
}

fn arb_nodes() -> impl Strategy<Value = Vec<NodeView>> {
    proptest::collection::vec(
        (
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            proptest::option::of(0u8..2),
        ),
        0..8,
    )
    .prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (ready, schedulable, excluded, v6))| NodeView {
                name: format!("n{i}"),
                ready,
                schedulable,
                labels: if excluded {
                    [(EXCLUDE_LABEL.to_owned(), String::new())].into()
                } else {
                    Labels::new()
                },
                internal_ips: std::iter::once(format!("10.0.0.{i}").parse().unwrap())
                    .chain(v6.map(|_| format!("fd00::{i}").parse().unwrap()))
                    .collect(),
            })
            .collect()
    })
}

fn arb_endpoints() -> impl Strategy<Value = Vec<Endpoint>> {
    proptest::collection::vec((proptest::option::of(0usize..10), any::<bool>()), 0..20).prop_map(
        |v| {
            v.into_iter()
                .map(|(n, ready)| Endpoint {
                    node: n.map(|n| format!("n{n}")),
                    ready,
                })
                .collect()
        },
    )
}

proptest! {
    /// Every next hop is an eligible node with an address of the family; Local is a set of
    /// nodes with ready endpoints, weights count them exactly; the list is sorted, and removing
    /// a node never adds a next hop.
    #[test]
    fn next_hops_obey_the_rules(nodes in arb_nodes(), eps in arb_endpoints(), local in any::<bool>(), weighted in any::<bool>(), ipv4 in any::<bool>()) {
        let policy = if local { TrafficPolicy::Local } else { TrafficPolicy::Cluster };
        let r = Rules { policy, weighted, node_selector: None, ipv4 };
        let o = next_hops(&nodes, &eps, &r);
        let sorted = o.next_hops.windows(2).all(|w| w[0].address < w[1].address);
        prop_assert!(sorted);
        for nh in &o.next_hops {
            let n = nodes.iter().find(|n| n.name == nh.node).unwrap();
            prop_assert!(n.ready && !n.labels.contains_key(EXCLUDE_LABEL));
            prop_assert_eq!(nh.address.is_ipv4(), ipv4);
            let ready_here = eps.iter().filter(|e| e.ready && e.node.as_deref() == Some(n.name.as_str())).count() as u32;
            match policy {
                TrafficPolicy::Cluster => {
                    prop_assert!(n.schedulable);
                    prop_assert_eq!(nh.weight, None);
                }
                TrafficPolicy::Local => {
                    prop_assert!(ready_here > 0);
                    prop_assert_eq!(nh.weight, weighted.then_some(ready_here));
                }
            }
        }
        // And every eligible node that qualifies is one (unless it shares an address).
        for n in &nodes {
            let ready_here = eps.iter().any(|e| e.ready && e.node.as_deref() == Some(n.name.as_str()));
            let qualifies = n.ready && !n.labels.contains_key(EXCLUDE_LABEL)
                && match policy { TrafficPolicy::Cluster => n.schedulable, TrafficPolicy::Local => ready_here };
            let has_address = n.internal_ips.iter().any(|a| a.is_ipv4() == ipv4);
            prop_assert_eq!(
                qualifies && has_address,
                o.next_hops.iter().any(|h| h.node == n.name),
                "node {} qualifies {} with address {}", n.name, qualifies, has_address
            );
            prop_assert_eq!(qualifies && !has_address, o.no_address.contains(&n.name));
        }
        if let Some(first) = nodes.first() {
            let fewer: Vec<NodeView> = nodes.iter().filter(|n| n.name != first.name).cloned().collect();
            let o2 = next_hops(&fewer, &eps, &r);
            let before: BTreeSet<_> = o.next_hops.iter().map(|n| n.node.clone()).collect();
            prop_assert!(o2.next_hops.iter().all(|n| before.contains(&n.node)));
        }
    }
}

//! MetalLB → Berth: names kept, every address kept, the rest said.

use serde_json::json;

use super::*;

fn docs(yaml: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

fn find<'a>(c: &'a Conversion, kind: &str, name: &str) -> &'a Value {
    c.objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name} in {:#?}", c.objects))
}

const SAMPLE: &str = r#"
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: prod, namespace: metallb-system}
spec:
  addresses: [192.168.10.0/24]
---
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: office, namespace: metallb-system}
spec:
  addresses: [10.1.0.10-10.1.0.20]
  autoAssign: false
---
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: team, namespace: metallb-system}
spec:
  addresses: [192.168.20.0/24]
  avoidBuggyIPs: true
  serviceAllocation:
    priority: 10
    namespaces: [team-a]
---
apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata: {name: office-l2, namespace: metallb-system}
spec:
  ipAddressPools: [office]
  interfaces: [eth1]
---
apiVersion: metallb.io/v1beta1
kind: BGPAdvertisement
metadata: {name: bgp, namespace: metallb-system}
spec:
  ipAddressPools: [prod, team]
---
apiVersion: metallb.io/v1beta2
kind: BGPPeer
metadata: {name: tor-1, namespace: metallb-system}
spec:
  myASN: 64512
  peerASN: 64513
  peerAddress: 10.0.0.1
  holdTime: 1m30s
  keepaliveTime: 30s
  ebgpMultiHop: true
  passwordSecret: {name: tor-1-md5, namespace: metallb-system}
  nodeSelectors:
    - matchLabels: {rack: a}
---
apiVersion: metallb.io/v1beta2
kind: BGPPeer
metadata: {name: tor-2, namespace: metallb-system}
spec:
  myASN: 64512
  peerASN: 64513
  peerAddress: 10.0.0.2
  password: secret
"#;

#[test]
fn pools_peers_and_the_conf_keep_names_and_addresses() {
    let c = convert(&docs(SAMPLE), None).unwrap();
    let prod = find(&c, "Eip", "prod");
    assert_eq!(
        prod["spec"],
        json!({"protocol": "bgp", "address": "192.168.10.0/24",
               "useNetworkAndBroadcast": true, "default": true}),
        "MetalLB hands out .0 and .255 unless avoidBuggyIPs; auto-assigned without selection: default"
    );
    let office = find(&c, "Eip", "office");
    assert_eq!(
        office["spec"],
        json!({"protocol": "layer2", "interface": "eth1", "address": "10.1.0.10-10.1.0.20"}),
        "autoAssign: false: reachable by annotation only"
    );
    let team = find(&c, "Eip", "team");
    assert_eq!(
        team["spec"],
        json!({"protocol": "bgp", "address": "192.168.20.0/24", "priority": 10,
               "namespaces": ["team-a"]})
    );
    assert_eq!(
        find(&c, "BgpConf", "default")["spec"],
        json!({"asn": 64512})
    );
    assert_eq!(
        find(&c, "BgpPeer", "tor-1")["spec"],
        json!({"address": "10.0.0.1", "peerAsn": 64513, "holdTime": 90, "keepaliveTime": 30,
               "ebgpMultihop": 255,
               "passwordSecretRef": {"name": "tor-1-md5", "namespace": "metallb-system", "key": "password"},
               "nodeSelector": {"matchLabels": {"rack": "a"}}})
    );
    assert!(
        c.notes
            .iter()
            .any(|n| n.starts_with("BGPPeer/tor-2: spec.password is written in the object")),
        "{:#?}",
        c.notes
    );
    assert!(find(&c, "BgpPeer", "tor-2")["spec"]["passwordSecretRef"].is_null());
}

#[test]
fn several_blocks_become_one_span_without_the_gaps() {
    let c = convert(
        &docs(
            r#"
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: p}
spec:
  addresses: [10.0.0.8/29, 10.0.0.32-10.0.0.40, "10.0.0.16/30", "fd00::/126"]
"#,
        ),
        None,
    )
    .unwrap();
    assert_eq!(
        find(&c, "Eip", "p")["spec"],
        json!({"protocol": "bgp", "address": "10.0.0.8-10.0.0.40",
               "excludes": ["10.0.0.20-10.0.0.31"], "default": true})
    );
    assert_eq!(
        find(&c, "Eip", "p-v6")["spec"]["address"],
        json!("fd00::/126")
    );
    assert!(c.notes.iter().any(|n| n.contains("IPv4 and IPv6 blocks")));
}

#[test]
fn what_berth_cannot_express_is_said_or_refused() {
    let no_interface = r#"
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: l2}
spec: {addresses: [10.0.0.0/28]}
---
apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata: {name: all}
"#;
    let e = convert(&docs(no_interface), None).unwrap_err();
    assert_eq!(e.object, "IPAddressPool/l2");
    assert!(e.why.contains("--interface"), "{e}");
    let c = convert(&docs(no_interface), Some("can_reach:10.0.0.1")).unwrap();
    assert_eq!(
        find(&c, "Eip", "l2")["spec"]["interface"],
        "can_reach:10.0.0.1"
    );

    let two_asns = r#"
apiVersion: metallb.io/v1beta2
kind: BGPPeer
metadata: {name: a}
spec: {myASN: 1, peerASN: 2, peerAddress: 10.0.0.1}
---
apiVersion: metallb.io/v1beta2
kind: BGPPeer
metadata: {name: b}
spec: {myASN: 3, peerASN: 2, peerAddress: 10.0.0.2, bfdProfile: fast}
"#;
    let e = convert(&docs(two_asns), None).unwrap_err();
    assert!(e.why.contains("several local ASNs"), "{e}");

    let bad = r#"
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: x}
spec: {addresses: [10.0.0.300/24]}
"#;
    let e = convert(&docs(bad), None).unwrap_err();
    assert!(e.why.contains("10.0.0.300/24"), "{e}");

    let other = r#"
apiVersion: metallb.io/v1beta1
kind: Community
metadata: {name: c}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: config}
"#;
    let c = convert(&docs(other), None).unwrap();
    assert!(c.objects.is_empty());
    assert_eq!(c.notes.len(), 2, "{:#?}", c.notes);
}

#[test]
fn durations_are_go_durations() {
    assert_eq!(seconds("90s"), Some(90));
    assert_eq!(seconds("1m30s"), Some(90));
    assert_eq!(seconds("2h"), Some(7200));
    assert_eq!(seconds("90"), None);
    assert_eq!(seconds("1.5s"), None);
}

#[test]
fn pool_selectors_host_bits_and_overflows_are_handled() {
    let by_label = r#"
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: lan, labels: {zone: office}}
spec: {addresses: [10.0.0.0/28]}
---
apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata: {name: office}
spec:
  ipAddressPoolSelectors: [{matchLabels: {zone: office}}]
  interfaces: [eth2]
"#;
    let c = convert(&docs(by_label), None).unwrap();
    assert_eq!(
        find(&c, "Eip", "lan")["spec"]["protocol"],
        "layer2",
        "selected by label: {:#?}",
        c.notes
    );
    let expressions = by_label.replace(
        "[{matchLabels: {zone: office}}]",
        "[{matchExpressions: [{key: zone, operator: Exists}]}]",
    );
    let e = convert(&docs(&expressions), None).unwrap_err();
    assert!(e.why.contains("ipAddressPools"), "{e}");

    let host_bits = "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: x}\nspec: {addresses: [10.0.0.5/24]}\n";
    let e = convert(&docs(host_bits), None).unwrap_err();
    assert!(e.why.contains("10.0.0.0/24"), "{e}");

    assert_eq!(seconds("99999999999999999999h"), None);
    assert_eq!(
        seconds("9999999999999999h"),
        None,
        "overflow is refused, not wrapped"
    );

    let mp = "apiVersion: metallb.io/v1beta2\nkind: BGPPeer\nmetadata: {name: p}\nspec: {myASN: 1, peerASN: 2, peerAddress: 10.0.0.1, disableMP: true}\n";
    let c = convert(&docs(mp), None).unwrap();
    assert!(
        c.notes.iter().any(|n| n.contains("spec.disableMP")),
        "{:#?}",
        c.notes
    );
}

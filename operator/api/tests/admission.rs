//! What the apiserver will accept and refuse, checked with the CRDs' own schemas: the CEL
//! rules through kube-cel, and the OpenAPI bounds by reading the generated schema.

// Test helpers outside #[test] fns: a panic here is the test failing, which is the point.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use kube::CustomResourceExt;
use kube::core::cel::{ErrorKind, Validator};
use serde_json::{Value, json};

use berth_api::{BgpConf, BgpPeer, Eip};

fn schema_of<K: CustomResourceExt>() -> Value {
    let crd = K::crd();
    serde_json::to_value(
        crd.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap(),
    )
    .unwrap()
}

/// Runs the CEL rules and returns the messages of the rules that failed.
fn cel_errors<K: CustomResourceExt>(object: Value) -> Vec<String> {
    match Validator::new().validate(&schema_of::<K>(), &object, None) {
        Ok(()) => vec![],
        Err(errs) => errs
            .into_vec()
            .into_iter()
            .map(|e| {
                // A rule that does not compile or evaluate would also "refuse": insist on a real
                // verdict so a typo in a rule cannot pass as a rejection.
                assert!(
                    matches!(e.kind, ErrorKind::ValidationFailure),
                    "rule did not evaluate: {e:?}"
                );
                format!("{}: {}", e.field_path, e.message)
            })
            .collect(),
    }
}

fn eip(spec: Value) -> Value {
    json!({"apiVersion": "berth.dev/v1alpha1", "kind": "Eip", "metadata": {"name": "blue"}, "spec": spec})
}

fn peer(spec: Value) -> Value {
    json!({"apiVersion": "berth.dev/v1alpha1", "kind": "BgpPeer", "metadata": {"name": "tor"}, "spec": spec})
}

fn assert_accepted<K: CustomResourceExt>(object: Value) {
    let errs = cel_errors::<K>(object.clone());
    assert!(errs.is_empty(), "{object} should be accepted, got {errs:?}");
}

fn assert_refused<K: CustomResourceExt>(object: Value, needle: &str) {
    let errs = cel_errors::<K>(object.clone());
    assert!(
        errs.iter().any(|e| e.contains(needle)),
        "{object} should be refused with a message containing {needle:?}, got {errs:?}"
    );
}

#[test]
fn eip_address_forms_are_accepted() {
    for address in [
        "10.0.0.5",
        "10.0.0.0/24",
        "10.0.0.10-10.0.0.20",
        "fd00::/120",
        "fd00::1-fd00::ff",
        "2001:db8::7",
    ] {
        assert_accepted::<Eip>(eip(json!({"address": address})));
    }
}

#[test]
fn eip_bad_addresses_are_refused_naming_the_field() {
    for address in [
        "10.0.0",
        "10.0.0.0/33",
        "10.0.0.1-fd00::1",
        "10.0.0.1-10.0.0.2-10.0.0.3",
        "pool",
        "10.0.0.0/24,10.1.0.0/24",
    ] {
        assert_refused::<Eip>(
            eip(json!({"address": address})),
            "spec.address must be an IP",
        );
    }
}

#[test]
fn eip_cidr_with_host_bits_is_refused() {
    assert_refused::<Eip>(eip(json!({"address": "10.0.0.1/24"})), "network address");
    assert_accepted::<Eip>(eip(json!({"address": "10.0.0.1/32"})));
}

#[test]
fn eip_excludes_must_be_addresses() {
    assert_accepted::<Eip>(eip(
        json!({"address": "10.0.0.0/24", "excludes": ["10.0.0.1", "10.0.0.64/26", "10.0.0.3-10.0.0.9"]}),
    ));
    assert_refused::<Eip>(
        eip(json!({"address": "10.0.0.0/24", "excludes": ["gateway"]})),
        "spec.excludes",
    );
}

#[test]
fn eip_interface_only_for_layer2_and_required_there() {
    assert_accepted::<Eip>(eip(
        json!({"address": "10.0.0.0/24", "protocol": "layer2", "interface": "eth0"}),
    ));
    assert_accepted::<Eip>(eip(
        json!({"address": "10.0.0.0/24", "protocol": "layer2", "interface": "can_reach:192.168.1.1"}),
    ));
    assert_refused::<Eip>(
        eip(json!({"address": "10.0.0.0/24", "interface": "eth0"})),
        "only applies to layer2",
    );
    assert_refused::<Eip>(
        eip(json!({"address": "10.0.0.0/24", "protocol": "layer2"})),
        "needs spec.interface",
    );
    assert_refused::<Eip>(
        eip(
            json!({"address": "10.0.0.0/24", "protocol": "layer2", "interface": "can_reach:router"}),
        ),
        "spec.interface must be",
    );
    assert_refused::<Eip>(
        eip(
            json!({"address": "10.0.0.0/24", "protocol": "layer2", "interface": "a-name-longer-than-15"}),
        ),
        "spec.interface must be",
    );
}

#[test]
fn eip_namespace_restrictions_are_exclusive() {
    assert_refused::<Eip>(
        eip(
            json!({"address": "10.0.0.0/24", "namespaces": ["a"], "namespaceSelector": {"matchLabels": {"team": "a"}}}),
        ),
        "at most one of spec.namespaces and spec.namespaceSelector",
    );
    assert_accepted::<Eip>(eip(json!({"address": "10.0.0.0/24", "namespaces": ["a"]})));
}

#[test]
fn bgpconf_is_a_singleton_with_a_valid_identity() {
    let conf = |name: &str, spec: Value| json!({"apiVersion": "berth.dev/v1alpha1", "kind": "BgpConf", "metadata": {"name": name}, "spec": spec});
    assert_accepted::<BgpConf>(conf(
        "default",
        json!({"asn": 4200000000u32, "routerId": "10.0.0.1"}),
    ));
    assert_refused::<BgpConf>(conf("other", json!({"asn": 65000})), "singleton");
    assert_refused::<BgpConf>(conf("default", json!({"asn": 23456})), "AS_TRANS");
    assert_refused::<BgpConf>(
        conf("default", json!({"asn": 65000, "routerId": "fd00::1"})),
        "IPv4",
    );
    assert_refused::<BgpConf>(
        conf("default", json!({"asn": 65000, "routerId": "0.0.0.0"})),
        "non-zero",
    );
}

#[test]
fn bgppeer_timers_follow_rfc_4271() {
    assert_accepted::<BgpPeer>(peer(json!({"address": "192.168.0.1", "peerAsn": 65001})));
    assert_accepted::<BgpPeer>(peer(
        json!({"address": "192.168.0.1", "peerAsn": 65001, "holdTime": 9, "keepaliveTime": 3}),
    ));
    assert_accepted::<BgpPeer>(peer(
        json!({"address": "192.168.0.1", "peerAsn": 65001, "holdTime": 0, "keepaliveTime": 0}),
    ));
    assert_refused::<BgpPeer>(
        peer(json!({"address": "192.168.0.1", "peerAsn": 65001, "holdTime": 2})),
        "holdTime must be 0 or at least 3",
    );
    assert_refused::<BgpPeer>(
        peer(
            json!({"address": "192.168.0.1", "peerAsn": 65001, "holdTime": 9, "keepaliveTime": 9}),
        ),
        "keepaliveTime must be less than",
    );
    // The default hold time (90 s) applies before the rule runs, as in the apiserver.
    assert_refused::<BgpPeer>(
        peer(json!({"address": "192.168.0.1", "peerAsn": 65001, "keepaliveTime": 90})),
        "keepaliveTime must be less than",
    );
    assert_refused::<BgpPeer>(
        peer(
            json!({"address": "192.168.0.1", "peerAsn": 65001, "holdTime": 0, "keepaliveTime": 3}),
        ),
        "keepaliveTime must be less than",
    );
}

#[test]
fn bgppeer_address_asn_and_exclusive_fields() {
    assert_refused::<BgpPeer>(
        peer(json!({"address": "switch-1", "peerAsn": 65001})),
        "spec.address must be",
    );
    assert_refused::<BgpPeer>(
        peer(json!({"address": "192.168.0.1", "peerAsn": 23456})),
        "AS_TRANS",
    );
    assert_refused::<BgpPeer>(
        peer(
            json!({"address": "192.168.0.1", "peerAsn": 65001, "passive": true, "ebgpMultihop": 2}),
        ),
        "passive peer opens none",
    );
    assert_refused::<BgpPeer>(
        peer(
            json!({"address": "192.168.0.1", "peerAsn": 65001, "families": ["ipv4-unicast", "ipv4-unicast"]}),
        ),
        "twice",
    );
}

#[test]
fn bgppeer_communities_are_checked() {
    assert_accepted::<BgpPeer>(peer(
        json!({"address": "192.168.0.1", "peerAsn": 65001, "communities": ["65000:100", "no-export"], "largeCommunities": ["4200000000:1:2"]}),
    ));
    assert_refused::<BgpPeer>(
        peer(json!({"address": "192.168.0.1", "peerAsn": 65001, "communities": ["65536:1"]})),
        "spec.communities",
    );
    assert_refused::<BgpPeer>(
        peer(json!({"address": "192.168.0.1", "peerAsn": 65001, "communities": ["no-such"]})),
        "spec.communities",
    );
    assert_refused::<BgpPeer>(
        peer(json!({"address": "192.168.0.1", "peerAsn": 65001, "largeCommunities": ["1:2"]})),
        "spec.largeCommunities",
    );
    assert_refused::<BgpPeer>(
        peer(
            json!({"address": "192.168.0.1", "peerAsn": 65001, "largeCommunities": ["4294967296:1:2"]}),
        ),
        "spec.largeCommunities",
    );
}

/// Numeric bounds are plain OpenAPI (not CEL): check they are in the schema the apiserver gets.
#[test]
fn numeric_bounds_are_in_the_schema() {
    let peer = schema_of::<BgpPeer>();
    let spec = &peer["properties"]["spec"]["properties"];
    assert_eq!(spec["peerAsn"]["minimum"], json!(1.0));
    assert_eq!(spec["peerAsn"]["maximum"], json!(4294967295.0));
    assert_eq!(spec["port"]["minimum"], json!(1.0));
    assert_eq!(spec["port"]["maximum"], json!(65535.0));
    assert_eq!(spec["ebgpMultihop"]["maximum"], json!(255.0));
    let conf = schema_of::<BgpConf>();
    let spec = &conf["properties"]["spec"]["properties"];
    assert_eq!(spec["listenPort"]["minimum"], json!(0.0));
    assert_eq!(
        spec["gracefulRestart"]["properties"]["restartTime"]["maximum"],
        json!(4095.0)
    );
}

#[test]
fn printer_columns_show_what_users_expect() {
    let cols = |crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition| {
        crd.spec.versions[0].additional_printer_columns.clone().unwrap_or_default().into_iter().filter(|c| c.priority.unwrap_or(0) == 0).map(|c| c.name).collect::<Vec<_>>()
    };
    assert_eq!(
        cols(Eip::crd()),
        ["Address", "Protocol", "Usage", "Total", "Ready", "Age"]
    );
    assert_eq!(cols(BgpPeer::crd()), ["Peer", "ASN", "Sessions", "Age"]);
    assert_eq!(Eip::crd().spec.scope, "Cluster");
}

/// The shipped examples are what users copy: they must parse into the types and pass the rules.
#[test]
fn examples_are_accepted() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut seen = 0;
    let files = std::fs::read_dir(&dir)
        .unwrap()
        .chain(std::fs::read_dir(dir.join("lab")).unwrap());
    for entry in files {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let value: Value = serde::Deserialize::deserialize(doc).unwrap();
            let name = format!("{} {}", path.display(), value["metadata"]["name"]);
            match value["kind"].as_str() {
                Some("Eip") => {
                    serde_json::from_value::<Eip>(value.clone())
                        .unwrap_or_else(|e| panic!("{name}: {e}"));
                    assert_accepted::<Eip>(value);
                }
                Some("BgpConf") => {
                    serde_json::from_value::<BgpConf>(value.clone())
                        .unwrap_or_else(|e| panic!("{name}: {e}"));
                    assert_accepted::<BgpConf>(value);
                }
                Some("BgpPeer") => {
                    serde_json::from_value::<BgpPeer>(value.clone())
                        .unwrap_or_else(|e| panic!("{name}: {e}"));
                    assert_accepted::<BgpPeer>(value);
                }
                // Other kinds (Services, Secrets) may sit beside ours; they are not ours to check.
                Some(_) => continue,
                None => panic!("{name} has no kind"),
            }
            seen += 1;
        }
    }
    assert!(
        seen >= 9,
        "expected the Eip, BgpConf and BgpPeer examples, checked {seen}"
    );
}

//! The cost of one endpoint change with 10,000 Services, 1,000 nodes and 30,000 endpoints
//! held in memory, and the memory that state takes.
//!
//! One change = what the operator does when one EndpointSlice changes: index the slice,
//! read that Service's slices, compute its next hops over every node, update the route
//! table, and produce the speaker's `UpdateRoutes` request (encoded, as it goes on the wire).
//! The Kubernetes objects are held as the reflector stores hold them (`Arc`s of the full
//! objects), so the memory figure is the operator's, not just the engine's.
//!
//! `cargo bench -p berth-operator --bench endpoint_change` (`-- --test`: a quick run).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Instant;

use berth_operator::announce;
use berth_operator::index::{SliceIndex, node_views};
use berth_operator::ipam::{Ipam, PoolSpec, ServiceKey};
use berth_operator::plan::plan;
use berth_operator::routes::RouteTable;
use berth_operator::speakers::update_request;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::Event;
use prost::Message;
use serde_json::json;

const SERVICES: usize = 10_000;
const NODES: usize = 1_000;
const ENDPOINTS_PER_SERVICE: usize = 3;

fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn node(i: usize) -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": format!("node-{i:04}"), "labels": {
            "kubernetes.io/hostname": format!("node-{i:04}"),
            "topology.kubernetes.io/zone": format!("zone-{}", i % 3),
        }},
        "status": {
            "conditions": [{"type": "Ready", "status": "True"}],
            "addresses": [
                {"type": "InternalIP", "address": Ipv4Addr::from(0x0a01_0000u32 + i as u32).to_string()},
                {"type": "Hostname", "address": format!("node-{i:04}")},
            ],
        }
    }))
    .unwrap_or_default()
}

fn service(i: usize) -> Service {
    serde_json::from_value(json!({
        "metadata": {"namespace": format!("ns-{}", i % 100), "name": format!("svc-{i:05}"),
            "uid": format!("00000000-0000-0000-0000-{i:012}"),
            "labels": {"app": format!("app-{i}")}},
        "spec": {
            "type": "LoadBalancer",
            "loadBalancerClass": "berth.dev/berth",
            "externalTrafficPolicy": if i.is_multiple_of(2) { "Local" } else { "Cluster" },
            "ipFamilies": ["IPv4"],
            "ports": [{"port": 443, "protocol": "TCP", "targetPort": 8443}],
            "selector": {"app": format!("app-{i}")},
        }
    }))
    .unwrap_or_default()
}

fn slice(i: usize, nodes: &[usize]) -> EndpointSlice {
    let eps: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(k, n)| {
            json!({
                "addresses": [Ipv4Addr::from(0x0af4_0000u32 + (i * 4 + k) as u32).to_string()],
                "nodeName": format!("node-{n:04}"),
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "targetRef": {"kind": "Pod", "name": format!("app-{i}-{k}"), "namespace": format!("ns-{}", i % 100)},
            })
        })
        .collect();
    serde_json::from_value(json!({
        "metadata": {"namespace": format!("ns-{}", i % 100), "name": format!("svc-{i:05}-abcde"),
            "labels": {"kubernetes.io/service-name": format!("svc-{i:05}")}},
        "addressType": "IPv4",
        "endpoints": eps,
        "ports": [{"port": 8443, "protocol": "TCP"}],
    }))
    .unwrap_or_else(|_| EndpointSlice {
        address_type: "IPv4".into(),
        ..Default::default()
    })
}

/// A small deterministic generator (no rand dependency for a bench).
struct Xorshift(u64);
impl Xorshift {
    fn next(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

fn main() {
    // Quick unless run by `cargo bench` (which passes `--bench`): as a test (`cargo test
    // --benches`, `cargo bench -- --test`) only "it still runs" is checked.
    let quick =
        !std::env::args().any(|a| a == "--bench") || std::env::args().any(|a| a == "--test");
    let changes = if quick { 50 } else { 20_000 };
    let mut rng = Xorshift(0x9e37_79b9_7f4a_7c15);

    let before = rss_kib("VmRSS:");
    let nodes: Vec<Arc<Node>> = (0..NODES).map(|i| Arc::new(node(i))).collect();
    let views = node_views(nodes.iter().map(|n| &**n));
    let services: Vec<Arc<Service>> = (0..SERVICES).map(|i| Arc::new(service(i))).collect();
    let mut placement: Vec<Vec<usize>> = (0..SERVICES)
        .map(|_| {
            (0..ENDPOINTS_PER_SERVICE)
                .map(|_| rng.next(NODES))
                .collect()
        })
        .collect();
    let mut slices = SliceIndex::default();
    for (i, p) in placement.iter().enumerate() {
        slices.apply(&Event::Apply(slice(i, p)));
    }
    let (mut ipam, _) = Ipam::rebuild(
        [PoolSpec {
            name: "pool".into(),
            address: "198.18.0.0/16".into(),
            default: true,
            ..Default::default()
        }],
        [],
    );
    let mut routes = RouteTable::new();
    let mut held: BTreeMap<usize, Vec<IpAddr>> = BTreeMap::new();
    let build = Instant::now();
    for (i, svc) in services.iter().enumerate() {
        let p = plan(svc, false, &mut ipam);
        let key = p.key.clone();
        let c = announce::compute(svc, &p.held, None, &views, &slices.of(&key), |_| None);
        routes.set(&key, c.bgp);
        held.insert(i, p.held);
    }
    let build_time = build.elapsed();
    let after = rss_kib("VmRSS:");
    let announced = routes.all().len();
    let paths: usize = routes.all().values().map(|h| h.len()).sum();
    let lists = routes.distinct_lists();

    let mut times: Vec<f64> = Vec::with_capacity(changes);
    let mut bytes = 0usize;
    for _ in 0..changes {
        let i = rng.next(SERVICES);
        let k = rng.next(ENDPOINTS_PER_SERVICE);
        placement[i][k] = rng.next(NODES);
        let changed_slice = slice(i, &placement[i]);
        let svc = &services[i];
        let start = Instant::now();
        let Some(key) = slices.apply(&Event::Apply(changed_slice)) else {
            continue;
        };
        let ips = held.get(&i).cloned().unwrap_or_default();
        let c = announce::compute(svc, &ips, None, &views, &slices.of(&key), |_| None);
        let changed = routes.set(&key, c.bgp);
        let req = update_request(1, &routes, &changed.into_iter().collect(), false, &[]);
        let wire = req.encode_to_vec();
        times.push(start.elapsed().as_secs_f64() * 1e6);
        bytes += wire.len();
    }
    times.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        times
            .get(((times.len() as f64 * p) as usize).min(times.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    let _ = ServiceKey::new("", "");
    println!(
        "{SERVICES} Services ({announced} IPs announced, {paths} paths in {lists} distinct lists), {NODES} nodes, {} endpoints; built in {:.2} s",
        SERVICES * ENDPOINTS_PER_SERVICE,
        build_time.as_secs_f64()
    );
    println!(
        "one endpoint change -> UpdateRoutes bytes, {} changes: p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs; {} B per update on average",
        times.len(),
        pct(0.50),
        pct(0.99),
        times.last().copied().unwrap_or(0.0),
        bytes / times.len().max(1)
    );
    println!(
        "memory: {} MiB resident for the state ({} MiB before, {} MiB after; peak {} MiB)",
        (after.saturating_sub(before)) / 1024,
        before / 1024,
        after / 1024,
        rss_kib("VmHWM:") / 1024
    );
}

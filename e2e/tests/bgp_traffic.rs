//! Real traffic: a client behind FRR opens many TCP connections to the announced IP, served on
//! three nodes; with one path per node (ADD-PATH) they land on more than one node. Needs root
//! and frr.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::time::Duration;

use berth_e2e::frr::{BGPD, Frr, ZEBRA, wait_for};
use berth_e2e::lab_unavailable;
use berth_e2e::netns::Lab;

static SPEAKER: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| berth_e2e::binary("berth-bgp-server"));
const VIP: &str = "198.51.100.10";

const FRR_CONF: &str = "frr defaults traditional
hostname r
router bgp 64513
 bgp router-id 10.0.0.1
 no bgp ebgp-requires-policy
 no bgp network import-check
 neighbor 10.0.0.11 remote-as 64512
 neighbor 10.0.0.11 timers 3 9
 neighbor 10.0.0.12 remote-as 64512
 neighbor 10.0.0.12 timers 3 9
 address-family ipv4 unicast
  neighbor 10.0.0.11 activate
  neighbor 10.0.0.12 activate
 exit-address-family
";

/// A one-line server: answers every connection with the node's name.
const SERVER: &str = "import socket,sys
s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('198.51.100.10', 8080)); s.listen(128)
while True:
    c,_=s.accept(); c.sendall(sys.argv[1].encode()); c.close()";

/// Opens N connections, each from its own source port (the kernel's pick: fixed ports can be
/// held by another socket, as the lab's probe found), and counts the answers; a failure's
/// reason goes to standard error.
const CLIENT: &str = "import socket,sys,collections
n=int(sys.argv[1]); seen=collections.Counter()
for i in range(n):
    s=socket.socket(); s.settimeout(2)
    try:
        s.bind(('10.1.0.2', 0)); s.connect(('198.51.100.10', 8080)); seen[s.recv(16).decode()]+=1
    except Exception as e:
        seen['error']+=1; print(f'connection {i}: {e!r}', file=sys.stderr)
    s.close()
print(' '.join(f'{k}={v}' for k,v in sorted(seen.items())))";

struct Topology {
    lab: Lab,
    nodes: Vec<String>,
    client: String,
    frr: Frr,
    dir: std::path::PathBuf,
}

/// Router with a bridge to three nodes (10.0.0.11-13) and a link to a client (10.1.0.2); the
/// VIP is on every node's loopback, with a server answering the node's name.
fn topology(name: &str) -> Topology {
    let dir = berth_e2e::test_dir(name).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut lab = Lab::new(&format!("{name}-"));
    let router = lab.namespace("r").unwrap();
    lab.bridge(&router, "br0", &["10.0.0.1/24"]).unwrap();
    let mut nodes = Vec::new();
    for i in 1..=3 {
        let node = lab.namespace(&format!("n{i}")).unwrap();
        lab.plug(
            &router,
            "br0",
            &format!("p{i}"),
            &node,
            "eth0",
            &[&format!("10.0.0.1{i}/24")],
        )
        .unwrap();
        lab.exec(&node, "ip", &["route", "add", "default", "via", "10.0.0.1"])
            .unwrap();
        lab.exec(
            &node,
            "ip",
            &["addr", "add", &format!("{VIP}/32"), "dev", "lo"],
        )
        .unwrap();
        lab.spawn(
            &node,
            "python3",
            &["-c", SERVER, &format!("node{i}")],
            &dir.join(format!("server{i}.log")),
        )
        .unwrap();
        nodes.push(node);
    }
    let client = lab.namespace("c").unwrap();
    lab.link(
        &router,
        "to-c",
        &["10.1.0.1/30"],
        &client,
        "eth0",
        &["10.1.0.2/30"],
    )
    .unwrap();
    lab.exec(
        &client,
        "ip",
        &["route", "add", "default", "via", "10.1.0.1"],
    )
    .unwrap();
    for sysctl in [
        "net.ipv4.ip_forward=1",
        "net.ipv4.fib_multipath_hash_policy=1",
    ] {
        lab.exec(&router, "sysctl", &["-q", "-w", sysctl]).unwrap();
    }
    let frr = Frr::start(&mut lab, &router, &dir, FRR_CONF).unwrap();
    Topology {
        lab,
        nodes,
        client,
        frr,
        dir,
    }
}

fn speaker_conf(router_id: &str, next_hops: &str) -> String {
    format!(
        "asn: 64512
routerId: {router_id}
peers:
  - address: 10.0.0.1
    asn: 64513
    holdTime: 9
routes:
  - prefix: {VIP}/32
    nextHops: [{next_hops}]
"
    )
}

fn count(t: &Topology, n: usize) -> BTreeMap<String, usize> {
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &t.client,
            "python3",
            "-c",
            CLIENT,
            &n.to_string(),
        ])
        .output()
        .unwrap();
    // Why a connection failed, if one did (the test's assertion shows the count).
    let why = String::from_utf8_lossy(&out.stderr);
    if !why.trim().is_empty() {
        eprintln!("client: {}", why.trim());
    }
    assert!(out.status.success(), "the client failed: {why}");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.parse().unwrap_or(0)))
        .collect()
}

fn nexthops(route: &str) -> usize {
    route
        .lines()
        .filter(|l| l.trim_start().starts_with("nexthop via"))
        .count()
}

#[test]
fn connections_spread_over_the_nodes_with_add_path() {
    if let Some(why) = lab_unavailable(&[ZEBRA, BGPD]) {
        eprintln!("skipped: {why}");
        return;
    }
    let mut t = topology("bt1");
    std::fs::write(
        t.dir.join("speaker.yaml"),
        speaker_conf("10.0.0.11", "10.0.0.11, 10.0.0.12, 10.0.0.13"),
    )
    .unwrap();
    let conf = t.dir.join("speaker.yaml").display().to_string();
    let node1 = t.nodes[0].clone();
    let log = t.dir.join("speaker.log");
    t.lab
        .spawn(&node1, &SPEAKER, &["--config", &conf], &log)
        .unwrap();
    let route = wait_for(Duration::from_secs(30), || {
        t.frr
            .kernel_route(&t.lab, VIP)
            .ok()
            .filter(|r| nexthops(r) == 3)
    });
    assert!(
        route.is_some(),
        "no 3-way route: {:?}",
        t.frr.kernel_route(&t.lab, VIP)
    );
    let seen = count(&t, 60);
    eprintln!("60 connections landed: {seen:?}");
    let nodes: Vec<_> = seen.keys().filter(|k| k.starts_with("node")).collect();
    assert!(!seen.contains_key("error"), "connections failed: {seen:?}");
    assert!(
        nodes.len() >= 2,
        "all connections landed on one node: {seen:?}"
    );
}

/// `self` mode: two speakers each announce only their own node; the router gets ECMP over
/// two peers, without ADD-PATH.
#[test]
fn self_mode_gives_ecmp_over_two_peers() {
    if let Some(why) = lab_unavailable(&[ZEBRA, BGPD]) {
        eprintln!("skipped: {why}");
        return;
    }
    let mut t = topology("bt2");
    for (i, ip) in [(0usize, "10.0.0.11"), (1, "10.0.0.12")] {
        let file = t.dir.join(format!("speaker{i}.yaml"));
        let conf = speaker_conf(ip, ip)
            .replace("    holdTime: 9\n", "    holdTime: 9\n    addPath: false\n");
        std::fs::write(&file, conf).unwrap();
        let node = t.nodes[i].clone();
        let log = t.dir.join(format!("speaker{i}.log"));
        t.lab
            .spawn(
                &node,
                &SPEAKER,
                &["--config", &file.display().to_string()],
                &log,
            )
            .unwrap();
    }
    let route = wait_for(Duration::from_secs(30), || {
        t.frr
            .kernel_route(&t.lab, VIP)
            .ok()
            .filter(|r| nexthops(r) == 2)
    });
    let route =
        route.unwrap_or_else(|| panic!("no 2-way route: {:?}", t.frr.kernel_route(&t.lab, VIP)));
    assert!(
        route.contains("via 10.0.0.11 ") && route.contains("via 10.0.0.12 "),
        "{route}"
    );
    let seen = count(&t, 40);
    eprintln!("40 connections landed: {seen:?}");
    assert!(
        seen.contains_key("node1") && seen.contains_key("node2"),
        "{seen:?}"
    );
    assert!(
        !seen.contains_key("node3"),
        "node3 is announced by nobody: {seen:?}"
    );
}

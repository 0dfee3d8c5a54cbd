//! End-to-end tests on the lab (issue 7): the real operator, speaker and agents against the
//! in-memory API server, a real FRR router and real TCP connections. Needs root.
//!
//! Each test brings up its own lab (namespace names and the API port carry the PID, so the
//! tests may run in parallel) and removes it on drop, also when it fails.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use berth_e2e::frr::wait_for;
use berth_e2e::lab::{self, NODES, RouterKind, Running, SERVICE_PORT, Spec};

fn spec(tag: &str) -> Spec {
    let pid = std::process::id();
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    // berth_e2e::binary finds target/<profile>/<name>; the lab needs the directory.
    let bin_dir = PathBuf::from(berth_e2e::binary("berth-operator"))
        .parent()
        .unwrap()
        .to_path_buf();
    Spec {
        prefix: format!("bl{tag}{}", pid % 100_000),
        // Each run leaves its directory (a failure's logs to read); the next run removes
        // those of runs that are over.
        dir: berth_e2e::test_dir(&format!("lab-{tag}")).unwrap(),
        router: RouterKind::Frr,
        bin_dir,
        repo,
        host_port: free_port(),
        rbac_edit: None,
    }
}

/// A loopback port nobody listens on now (the OS picks it; the tests run in parallel, so
/// ports derived from PIDs could collide).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

fn up(tag: &str) -> Option<Running> {
    if let Some(why) = berth_e2e::lab_unavailable(&["/usr/lib/frr/bgpd", "/usr/bin/kubectl"]) {
        eprintln!("skipped: {why}");
        return None;
    }
    let s = spec(tag);
    let dir = s.dir.clone();
    match lab::up(s) {
        Ok(r) => Some(r),
        Err(e) => panic!("lab up: {e}\n{}", logs(&dir)),
    }
}

/// The tail of every log of a lab, for failure messages.
fn logs(dir: &std::path::Path) -> String {
    let mut out = String::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        let mut files: Vec<_> = rd.filter_map(|f| f.ok().map(|f| f.path())).collect();
        files.sort();
        for f in files
            .iter()
            .filter(|f| f.extension().is_some_and(|x| x == "log"))
        {
            let text = std::fs::read_to_string(f).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            out.push_str(&format!("--- {}\n", f.display()));
            for l in tail.iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
    }
    out
}

fn all_nodes() -> Vec<String> {
    let mut v: Vec<String> = NODES.iter().map(|(_, a)| (*a).to_owned()).collect();
    v.sort();
    v
}

fn hops_become(r: &Running, ip: &str, want: &[String], secs: u64) -> bool {
    wait_for(Duration::from_secs(secs), || {
        (r.router_next_hops(ip) == want).then_some(())
    })
    .is_some()
}

fn apply(r: &Running, name: &str, yaml: &str) {
    let f = r.spec.dir.join(format!("{name}.yaml"));
    std::fs::write(&f, yaml).unwrap();
    r.kubectl(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        &f.display().to_string(),
    ])
    .unwrap_or_else(|e| panic!("kubectl apply {name}: {e}"));
}

/// Sets a Node's Ready condition, as its kubelet (or the node controller) would.
fn set_ready(r: &Running, node: &str, ready: bool) {
    let (status, reason, message) = if ready {
        ("True", "KubeletReady", "lab node")
    } else {
        ("False", "KubeletStopped", "lab: node failed")
    };
    let patch = format!(
        r#"{{"status":{{"conditions":[{{"type":"Ready","status":"{status}","reason":"{reason}","message":"{message}"}}]}}}}"#
    );
    r.kubectl(&[
        "patch",
        "node",
        node,
        "--subresource=status",
        "--type=merge",
        "-p",
        &patch,
    ])
    .unwrap_or_else(|e| panic!("marking {node} Ready={status}: {e}"));
}

/// The chart's RBAC as shipped is enough: the API server refused no request of any component
/// (nor of kubectl) during the whole test.
fn no_refusals(r: &Running) {
    let refused = r.refusals().unwrap();
    assert!(
        refused.is_empty(),
        "the API server refused requests (the chart's RBAC misses a verb?):\n{}\n{}",
        refused.join("\n"),
        logs(&r.spec.dir)
    );
    assert!(
        r.unready.is_empty(),
        "Pods not ready after lab up: {:?}\n{}",
        r.unready,
        logs(&r.spec.dir)
    );
}

/// The lab runs what the chart renders: two operator Pods (one leads, holding the Lease;
/// the other stands by, ready), the bgp-server StatefulSet's Pod and an agent Pod per node,
/// every Pod Ready by its own probes, each process with the user and capabilities its
/// securityContext gives it.
fn installed_from_the_chart(r: &Running) {
    let operators = r.pods_of("operator");
    assert_eq!(operators.len(), 2, "operator Pods: {}", operators.len());
    assert_eq!(r.pods_of("bgp-server").len(), 1);
    assert_eq!(r.pods_of("agent").len(), NODES.len());
    let ready = r
        .kubectl(&[
            "get",
            "pods",
            "-n",
            lab::NAMESPACE,
            "-o",
            r#"jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type=="Ready")].status} {end}"#,
        ])
        .unwrap();
    assert_eq!(
        ready.matches("=True").count(),
        2 + 1 + NODES.len(),
        "not every Pod is Ready: {ready}"
    );
    let holder = wait_for(Duration::from_secs(20), || {
        r.kubectl(&[
            "get",
            "lease",
            "berth-operator",
            "-n",
            lab::NAMESPACE,
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
        .ok()
        .filter(|h| !h.is_empty())
    })
    .unwrap_or_else(|| panic!("no operator holds the Lease\n{}", logs(&r.spec.dir)));
    let mut leading = Vec::new();
    for p in &operators {
        let port = p.port("metrics").unwrap();
        let text = r
            .lab
            .exec(
                &p.netns,
                "curl",
                &[
                    "-sf",
                    "--max-time",
                    "5",
                    &format!("http://{}:{port}/metrics", p.ip),
                ],
            )
            .unwrap();
        if text.lines().any(|l| l == "berth_operator_leader 1") {
            leading.push(p.plan.name.clone());
        }
        // The Deployment's securityContext: uid 65532, no capabilities, no new privileges.
        let status = std::fs::read_to_string(format!("/proc/{}/status", p.pids[0])).unwrap();
        for want in ["Uid:\t65532", "CapEff:\t0000000000000000", "NoNewPrivs:\t1"] {
            assert!(
                status.contains(want),
                "{}: no {want:?} in\n{status}",
                p.plan.name
            );
        }
    }
    assert_eq!(
        leading.join(","),
        holder,
        "the Lease holder is not the one leading"
    );
    // The agent: root with NET_ADMIN and NET_RAW only (bits 12 and 13).
    let agent = r.pods_of("agent")[0];
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pids[0])).unwrap();
    assert!(status.contains("CapEff:\t0000000000003000"), "{status}");
}

fn landed_on_every_node(counts: &str) -> bool {
    NODES.iter().all(|(n, _)| {
        counts
            .split_whitespace()
            .any(|kv| kv.strip_prefix(&format!("{n}=")).is_some_and(|c| c != "0"))
    })
}

/// `kubectl apply` (no flags, as on a real cluster) of an Eip no CEL rule accepts is refused
/// with the rule's message.
fn invalid_eip_is_refused(r: &Running) {
    let f = r.spec.dir.join("bad-eip.yaml");
    std::fs::write(
        &f,
        "apiVersion: berth.dev/v1alpha1\nkind: Eip\nmetadata: {name: bad}\nspec: {address: 300.1.1.1/24}\n",
    )
    .unwrap();
    match r.kubectl(&["apply", "-f", &f.display().to_string()]) {
        Ok(out) => panic!("an Eip with 300.1.1.1/24 was accepted: {out}"),
        Err(e) => assert!(
            e.contains(r#"The Eip "bad" is invalid: spec.address: Invalid value: "string": spec.address must be an IP"#),
            "{e}"
        ),
    }
}

/// A Service gets an IP, the router a multipath route with one next hop per node, and
/// connections land on every node; Local policy follows the endpoints; a NotReady node
/// loses its next hop; an exhausted pool leaves a Service pending with an Event until an IP
/// is freed; deleting the Service withdraws the route.
#[test]
fn bgp_service_lifecycle() {
    let Some(r) = up("a") else { return };
    let dir = r.spec.dir.clone();
    let fail = |what: &str| -> ! { panic!("{what}\n{}\n{}", r.report(), logs(&dir)) };

    // 1. IP and ECMP route.
    let ip = r
        .service_ip("demo", "web", Duration::from_secs(30))
        .unwrap_or_else(|| fail("demo/web got no IP"));
    assert!(
        ip.starts_with("198.51.100."),
        "web got {ip}, not from lab-bgp"
    );
    if !hops_become(&r, &ip, &all_nodes(), 60) {
        fail(&format!(
            "the router has no 3-way route to {ip}: {}",
            r.router_route(&ip)
        ));
    }
    invalid_eip_is_refused(&r);
    installed_from_the_chart(&r);
    // 2. Connections land on every node.
    let counts = r.connect(&ip, SERVICE_PORT, 100);
    assert!(
        landed_on_every_node(&counts),
        "100 connections to {ip}: {counts}"
    );
    assert!(
        !counts.contains("error"),
        "some connections failed: {counts}"
    );

    // 3. Local policy: next hops follow the ready endpoints.
    apply(
        &r,
        "local",
        "apiVersion: v1
kind: Service
metadata: {name: local, namespace: demo}
spec:
  type: LoadBalancer
  loadBalancerClass: berth.dev/berth
  externalTrafficPolicy: Local
  ports: [{port: 8080, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: local-x, namespace: demo, labels: {kubernetes.io/service-name: local}}
addressType: IPv4
endpoints:
- {addresses: [10.244.1.5], nodeName: node1, conditions: {ready: true}}
",
    );
    let lip = r
        .service_ip("demo", "local", Duration::from_secs(30))
        .unwrap_or_else(|| fail("demo/local got no IP"));
    if !hops_become(&r, &lip, &[NODES[0].1.to_owned()], 30) {
        fail(&format!(
            "Local: expected only node1, router has {}",
            r.router_route(&lip)
        ));
    }
    let counts = r.connect(&lip, SERVICE_PORT, 20);
    assert_eq!(
        counts, "node1=20",
        "Local Service with its endpoint on node1"
    );
    r.kubectl(&[
        "patch",
        "endpointslice",
        "local-x",
        "-n",
        "demo",
        "--type=merge",
        "-p",
        r#"{"endpoints":[{"addresses":["10.244.2.5"],"nodeName":"node2","conditions":{"ready":true}},{"addresses":["10.244.3.5"],"nodeName":"node3","conditions":{"ready":true}}]}"#,
    ])
    .unwrap();
    let want = vec![NODES[1].1.to_owned(), NODES[2].1.to_owned()];
    if !hops_become(&r, &lip, &want, 30) {
        fail(&format!(
            "Local: endpoints moved to node2+node3, router has {}",
            r.router_route(&lip)
        ));
    }

    // 4. A node that fails (NotReady) loses its next hop; back Ready, it returns.
    set_ready(&r, "node3", false);
    let two = vec![NODES[0].1.to_owned(), NODES[1].1.to_owned()];
    if !hops_become(&r, &ip, &two, 30) {
        fail(&format!(
            "node3 NotReady: router still has {}",
            r.router_route(&ip)
        ));
    }
    set_ready(&r, "node3", true);
    if !hops_become(&r, &ip, &all_nodes(), 30) {
        fail(&format!(
            "node3 Ready again: router has {}",
            r.router_route(&ip)
        ));
    }

    // 5. Exhaustion: a one-address pool, two Services.
    let svc = |name: &str| {
        format!(
            "apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: demo, annotations: {{berth.dev/pool: tiny}}}}
spec:
  type: LoadBalancer
  loadBalancerClass: berth.dev/berth
  ports: [{{port: 8080, protocol: TCP}}]
"
        )
    };
    apply(
        &r,
        "tiny",
        &format!(
            "apiVersion: berth.dev/v1alpha1
kind: Eip
metadata: {{name: tiny}}
spec: {{address: 203.0.113.7}}
---
{}",
            svc("first")
        ),
    );
    let first = r
        .service_ip("demo", "first", Duration::from_secs(30))
        .unwrap_or_else(|| fail("demo/first got no IP from pool tiny"));
    assert_eq!(first, "203.0.113.7");
    apply(&r, "second", &svc("second"));
    let event = wait_for(Duration::from_secs(30), || {
        let notes = r
            .kubectl(&[
                "get",
                "events.v1.events.k8s.io",
                "-n",
                "demo",
                "-o",
                "jsonpath={range .items[*]}{.regarding.name}: {.note}{\"\\n\"}{end}",
            ])
            .unwrap_or_default();
        notes
            .lines()
            .find(|l| l.starts_with("second: ") && l.contains("pool tiny exhausted: 1 of 1 in use"))
            .map(str::to_owned)
    })
    .unwrap_or_else(|| fail("no exhaustion Event on demo/second"));
    assert!(
        event.contains("free an IP or add addresses to a pool"),
        "{event}"
    );
    assert_eq!(r.service_ip("demo", "second", Duration::from_secs(2)), None);
    r.kubectl(&["delete", "svc", "first", "-n", "demo", "--timeout=30s"])
        .unwrap_or_else(|e| fail(&format!("deleting demo/first: {e}")));
    let second = r
        .service_ip("demo", "second", Duration::from_secs(30))
        .unwrap_or_else(|| fail("demo/second did not get the freed IP"));
    assert_eq!(second, "203.0.113.7");

    // 6. Deleting a Service withdraws its route and frees its IP.
    r.kubectl(&["delete", "svc", "local", "-n", "demo", "--timeout=30s"])
        .unwrap_or_else(|e| fail(&format!("deleting demo/local: {e}")));
    if !hops_become(&r, &lip, &[], 30) {
        fail(&format!(
            "demo/local deleted: router still has {}",
            r.router_route(&lip)
        ));
    }

    // 7. Deleting the pool demo/web draws from, while it holds an IP: held by the pool's
    // finalizer, the IP stays, the router keeps its route, the Eip says who holds it.
    let has_finalizer = wait_for(Duration::from_secs(20), || {
        r.kubectl(&[
            "get",
            "eip",
            "lab-bgp",
            "-o",
            "jsonpath={.metadata.finalizers}",
        ])
        .ok()
        .filter(|f| f.contains("berth.dev/pool-in-use"))
    });
    if has_finalizer.is_none() {
        fail("Eip lab-bgp never got the berth.dev/pool-in-use finalizer");
    }
    r.kubectl(&["delete", "eip", "lab-bgp", "--wait=false"])
        .unwrap_or_else(|e| fail(&format!("deleting Eip lab-bgp: {e}")));
    let held = wait_for(Duration::from_secs(20), || {
        r.kubectl(&[
            "get",
            "eip",
            "lab-bgp",
            "-o",
            "jsonpath={.status.conditions[0].reason}: {.status.conditions[0].message}",
        ])
        .ok()
        .filter(|m| m.starts_with("DeletionHeld") && m.contains("demo/web"))
    });
    if held.is_none() {
        fail("the deleted Eip lab-bgp does not say that demo/web holds it");
    }
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        r.service_ip("demo", "web", Duration::from_secs(5))
            .as_deref(),
        Some(ip.as_str()),
        "demo/web's IP changed when its pool was deleted"
    );
    if !hops_become(&r, &ip, &all_nodes(), 5) {
        fail(&format!(
            "the pool's deletion withdrew demo/web: router has {}",
            r.router_route(&ip)
        ));
    }
    let counts = r.connect(&ip, SERVICE_PORT, 30);
    assert!(
        !counts.contains("error"),
        "connections failed after the pool's deletion: {counts}"
    );
    // Releasing the last holder lets the deletion finish.
    r.kubectl(&["delete", "svc", "web", "-n", "demo", "--timeout=30s"])
        .unwrap_or_else(|e| fail(&format!("deleting demo/web: {e}")));
    let gone = wait_for(Duration::from_secs(20), || {
        r.kubectl(&["get", "eip", "lab-bgp"])
            .err()
            .filter(|e| e.contains("NotFound") || e.contains("not found"))
    });
    if gone.is_none() {
        fail("Eip lab-bgp was not deleted after its last Service went");
    }
    no_refusals(&r);
}

/// Watches the router's route to `ip` every 20 ms in the background; counts the samples in
/// which it did not have `want` next hops.
struct RouteWatch {
    stop: Arc<AtomicBool>,
    bad: Arc<AtomicUsize>,
    samples: Arc<AtomicUsize>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl RouteWatch {
    fn start(router_ns: &str, ip: &str, want: Vec<String>) -> RouteWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let bad = Arc::new(AtomicUsize::new(0));
        let samples = Arc::new(AtomicUsize::new(0));
        let (s, b, n) = (stop.clone(), bad.clone(), samples.clone());
        let (ns, ip) = (router_ns.to_owned(), ip.to_owned());
        let handle = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let out = berth_e2e::netns::run("ip", &["-n", &ns, "route", "show", &ip])
                    .unwrap_or_default();
                let hops = lab::next_hops(&out);
                n.fetch_add(1, Ordering::Relaxed);
                if hops != want {
                    b.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        RouteWatch {
            stop,
            bad,
            samples,
            handle: Some(handle),
        }
    }

    /// (samples taken, samples without the wanted route).
    fn finish(mut self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        (
            self.samples.load(Ordering::Relaxed),
            self.bad.load(Ordering::Relaxed),
        )
    }
}

/// An operator restart changes no IP and withdraws nothing at the router; `kill -9` of the
/// speaker leaves the router forwarding on the stale route (graceful restart) until the
/// restarted speaker re-announces it from its persisted state.
#[test]
fn restarts_do_not_disturb_the_router() {
    let Some(mut r) = up("b") else { return };
    let dir = r.spec.dir.clone();
    let ip = match r.service_ip("demo", "web", Duration::from_secs(30)) {
        Some(ip) => ip,
        None => panic!("demo/web got no IP\n{}", logs(&dir)),
    };
    assert!(
        hops_become(&r, &ip, &all_nodes(), 60),
        "no 3-way route to {ip}: {}\n{}",
        r.router_route(&ip),
        logs(&dir)
    );

    // Operator restart.
    let watch = RouteWatch::start(&r.ns.router, &ip, all_nodes());
    r.restart_operator().unwrap();
    // Long enough for the new operator to win the Lease, rebuild and resync the speaker.
    std::thread::sleep(Duration::from_secs(12));
    let (samples, bad) = watch.finish();
    assert!(samples > 50, "the route watch took only {samples} samples");
    assert_eq!(
        bad,
        0,
        "the route changed during the operator restart ({bad} of {samples} samples)\n{}",
        logs(&dir)
    );
    assert_eq!(
        r.service_ip("demo", "web", Duration::from_secs(5))
            .as_deref(),
        Some(ip.as_str()),
        "the IP changed across the operator restart"
    );

    // Speaker crash: graceful restart keeps the route in the router's kernel meanwhile.
    let streams_opened = |r: &Running| r.log_of("operator").matches("Watch stream open").count();
    let opened = streams_opened(&r);
    let watch = RouteWatch::start(&r.ns.router, &ip, all_nodes());
    r.crash_speaker();
    std::thread::sleep(Duration::from_secs(2));
    let counts = r.connect(&ip, SERVICE_PORT, 30);
    assert!(
        !counts.contains("error"),
        "connections failed while the speaker was down: {counts}"
    );
    r.start_speaker().unwrap();
    // The router shows the route fresh again (not stale) once the speaker re-announced and
    // sent End-of-RIB.
    let mut last = String::new();
    let fresh = wait_for(Duration::from_secs(30), || {
        let lab::Router::Frr(frr) = &r.router else {
            return None;
        };
        let out = frr
            .vtysh(&r.lab, &format!("show bgp ipv4 unicast {ip}/32"))
            .unwrap_or_default();
        last = out.clone();
        let fresh = (out.contains("multipath") || out.contains("best"))
            && !out.to_lowercase().contains("stale");
        fresh.then_some(())
    });
    let (samples, bad) = watch.finish();
    assert!(
        fresh.is_some(),
        "the route to {ip} was not re-announced fresh after the speaker restart; FRR says:\n{last}\n{}",
        logs(&dir)
    );
    assert_eq!(
        bad,
        0,
        "the router's kernel route changed while the speaker restarted ({bad} of {samples} samples)\n{}",
        logs(&dir)
    );

    // The router resets the session and it comes back within seconds: the speaker's Watch
    // stream brings the loss to the BgpPeer as an Event (a poll every 10 s, as before, saw
    // the session Established on both sides of a short reset and said nothing). An Event
    // like an earlier one is folded into its series (same note, new resourceVersion).
    let session_downs = |r: &Running| -> Vec<String> {
        r.kubectl(&[
            "get",
            "events.v1.events.k8s.io",
            "-A",
            "-o",
            "jsonpath={range .items[*]}{.reason}: {.metadata.resourceVersion} {.note}{\"\\n\"}{end}",
        ])
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("SessionDown: "))
        .map(str::to_owned)
        .collect()
    };
    // After the speaker restart the operator reconnects (with back-off) and opens the
    // stream after its full push: wait for that before the reset.
    let watching = wait_for(Duration::from_secs(30), || {
        (streams_opened(&r) > opened).then_some(())
    });
    assert!(
        watching.is_some(),
        "the operator did not open the restarted speaker's Watch stream\n{}",
        logs(&dir)
    );
    let before = session_downs(&r);
    let lab::Router::Frr(frr) = &r.router else {
        panic!("the lab test runs FRR")
    };
    frr.vtysh(&r.lab, "clear bgp *").unwrap();
    let down = wait_for(Duration::from_secs(30), || {
        session_downs(&r)
            .into_iter()
            .find(|l| !before.contains(l) && l.contains("lost its session with"))
    });
    assert!(
        down.is_some(),
        "no SessionDown Event after the router reset the session: {:?}\n{}",
        session_downs(&r),
        logs(&dir)
    );
    assert!(
        hops_become(&r, &ip, &all_nodes(), 60),
        "the session did not come back after the reset: {}\n{}",
        r.router_route(&ip),
        logs(&dir)
    );
    no_refusals(&r);
}

/// A Layer2 Service: the client on the nodes' segment reaches its IP at the owner, and when
/// the owner's link is cut another node takes the IP over.
#[test]
fn layer2_service_fails_over() {
    let Some(r) = up("c") else { return };
    let dir = r.spec.dir.clone();
    if r.pods_of("agent").is_empty() {
        panic!(
            "the lab started no agents: berth-agent is not built with the lab's flags\n{}",
            logs(&dir)
        );
    }
    let ip = r
        .service_ip("demo", "office", Duration::from_secs(30))
        .unwrap_or_else(|| panic!("demo/office got no IP\n{}", logs(&dir)));
    assert!(
        ip.starts_with("10.0.0.24"),
        "office got {ip}, not from lab-l2"
    );
    let owner = wait_for(Duration::from_secs(30), || {
        let c = r.connect(&ip, SERVICE_PORT, 10);
        let mut kv = c.split_whitespace();
        match (kv.next(), kv.next()) {
            (Some(one), None) if one.ends_with("=10") && !one.starts_with("error") => {
                one.split('=').next().map(str::to_owned)
            }
            _ => None,
        }
    })
    .unwrap_or_else(|| {
        panic!(
            "10 connections to {ip} did not all reach one node: {}\n{}",
            r.connect(&ip, SERVICE_PORT, 10),
            logs(&dir)
        )
    });
    let i = NODES.iter().position(|(n, _)| *n == owner).unwrap();
    // Exactly one MAC answers ARP for it: the owner's.
    let owner_mac = r.mac(&r.ns.nodes[i], "eth0").unwrap();
    let answers = r.who_answers_arp(&ip).unwrap();
    assert_eq!(
        answers.iter().map(|(m, _)| m.as_str()).collect::<Vec<_>>(),
        [owner_mac.as_str()],
        "{ip}: not answered by the owner alone\n{}",
        logs(&dir)
    );
    forged_claims_get_nothing(&r);
    the_chart_reads_only_exported_metrics(&r);

    r.lab
        .exec(&r.ns.nodes[i], "ip", &["link", "set", "eth0", "down"])
        .unwrap();
    let new_owner = wait_for(Duration::from_secs(20), || {
        let c = r.connect(&ip, SERVICE_PORT, 5);
        let mut kv = c.split_whitespace();
        match (kv.next(), kv.next()) {
            (Some(one), None)
                if one.ends_with("=5") && !one.starts_with(&owner) && !one.starts_with("error") =>
            {
                one.split('=').next().map(str::to_owned)
            }
            _ => None,
        }
    })
    .unwrap_or_else(|| {
        panic!(
            "after cutting {owner}'s link no other node answered for {ip}\n{}",
            logs(&dir)
        )
    });
    assert_ne!(new_owner, owner);
    // The new owner says so on the Service.
    let want = format!("node {new_owner} now answers ARP/NDP for {ip}");
    let event = wait_for(Duration::from_secs(20), || {
        r.kubectl(&[
            "get",
            "events.v1.events.k8s.io",
            "-n",
            "demo",
            "-o",
            "jsonpath={range .items[*]}{.regarding.name}: {.note}{\"\\n\"}{end}",
        ])
        .ok()
        .filter(|notes| notes.lines().any(|l| l == format!("office: {want}")))
    });
    assert!(
        event.is_some(),
        "no Event \"{want}\" on demo/office\n{}",
        logs(&dir)
    );
    no_refusals(&r);
}

/// Every metric the chart's Grafana dashboard and alert rules read is in a real scrape of
/// the running binaries (operator, speaker, every agent): a renamed metric fails here
/// instead of drawing an empty panel or an alert that never fires.
fn the_chart_reads_only_exported_metrics(r: &Running) {
    use berth_e2e::metric_names;
    // Every Pod's port named `metrics`, as the chart's Services and PodMonitor scrape it.
    let targets: Vec<(String, String)> = r
        .pods
        .iter()
        .filter_map(|p| Some((p.netns.clone(), format!("{}:{}", p.ip, p.port("metrics")?))))
        .collect();
    assert!(
        targets.len() >= 2 + NODES.len(),
        "not every Pod names a metrics port: {targets:?}"
    );
    let mut exported = std::collections::BTreeSet::new();
    for (ns, addr) in &targets {
        let url = format!("http://{addr}/metrics");
        let text = r
            .lab
            .exec(ns, "curl", &["-sf", "--max-time", "5", &url])
            .unwrap_or_else(|e| panic!("scrape {url} in {ns}: {e}"));
        let names = metric_names::exported(&text);
        assert!(
            names.iter().any(|n| n.starts_with("berth_")),
            "{url}: no berth_ metric in\n{text}"
        );
        exported.extend(names);
    }
    let chart = r.spec.repo.join("charts/berth");
    let reads = metric_names::chart_reads(&chart).unwrap();
    let missing = metric_names::unknown(&reads, &exported);
    assert!(
        missing.is_empty(),
        "the chart reads metrics no binary exports:\n{}",
        missing.join("\n")
    );
}

/// A tenant dresses Services up as Berth's: Berth's annotations naming the subnet's gateway
/// (the router, 10.0.0.1) and a free address of the Layer2 pool, on a ClusterIP Service and on
/// a LoadBalancer Service of another class, with a status sent along with the object. No node
/// answers ARP for either IP or routes it locally, at any time; the gateway keeps answering
/// alone; the forged status is dropped by the API server; the operator says why on each.
fn forged_claims_get_nothing(r: &Running) {
    const FREE: &str = "10.0.0.246";
    let gateway = lab::ROUTER;
    let forged = format!(
        r#"{{"ips":["{gateway}","{FREE}"],"interface":"eth0","nodes":["node1","node2","node3"]}}"#
    );
    let mut yaml = String::from("apiVersion: v1\nkind: Namespace\nmetadata: {name: tenant}\n");
    for (name, spec) in [
        ("forged", "type: ClusterIP"),
        (
            "other-class",
            "type: LoadBalancer\n  loadBalancerClass: other.example/lb",
        ),
    ] {
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: tenant\n  \
             annotations:\n    berth.dev/allocated-pool: lab-l2\n    berth.dev/layer2: '{forged}'\n\
             spec:\n  {spec}\n  selector: {{app: x}}\n  ports: [{{port: 8080, protocol: TCP}}]\n\
             status:\n  loadBalancer:\n    ingress: [{{ip: {FREE}}}, {{ip: {gateway}}}]\n"
        ));
    }
    apply(r, "forged", &yaml);
    let status = r
        .kubectl(&[
            "get", "svc", "-n", "tenant", "-o",
            "jsonpath={range .items[*]}{.metadata.name}={.status.loadBalancer.ingress}{\"\\n\"}{end}",
        ])
        .unwrap();
    assert!(
        !status.contains(FREE),
        "the API server kept a status sent with the object: {status}"
    );
    let router_mac = r.mac(&r.ns.router, "br0").unwrap();
    // Several times over a few seconds: the agents had every chance to act on the forgery.
    for round in 0..4 {
        std::thread::sleep(Duration::from_millis(750));
        let free = r.who_answers_arp(FREE).unwrap();
        assert!(
            free.is_empty(),
            "round {round}: ARP for {FREE} (claimed by forged annotations) answered by {free:?}\n{}",
            logs(&r.spec.dir)
        );
        let gw = r.who_answers_arp(gateway).unwrap();
        assert_eq!(
            gw.iter().map(|(m, _)| m.as_str()).collect::<Vec<_>>(),
            [router_mac.as_str()],
            "round {round}: ARP for the gateway {gateway} answered by {gw:?}, not the router ({router_mac}) alone\n{}",
            logs(&r.spec.dir)
        );
    }
    for (k, ns) in r.ns.nodes.iter().enumerate() {
        let local = r
            .lab
            .exec(ns, "ip", &["route", "show", "table", "local"])
            .unwrap();
        assert!(
            !local.contains(&format!("local {FREE} "))
                && !local.contains(&format!("local {gateway} ")),
            "{}: a forged IP is routed locally:\n{local}",
            NODES[k].0
        );
    }
    let notes = wait_for(Duration::from_secs(20), || {
        r.kubectl(&[
            "get",
            "events.v1.events.k8s.io",
            "-n",
            "tenant",
            "-o",
            "jsonpath={range .items[*]}{.regarding.name}: {.reason}{\"\\n\"}{end}",
        ])
        .ok()
        .filter(|n| n.contains("forged: NotBerths") && n.contains("other-class: NotBerths"))
    });
    assert!(
        notes.is_some(),
        "no NotBerths Event on each forged Service\n{}",
        logs(&r.spec.dir)
    );
}

/// Takes `patch` on `services/status` away from the operator's rendered ClusterRole.
// The type of `Spec::rbac_edit`, which other edits use to remove whole objects.
#[allow(clippy::ptr_arg)]
fn without_status_patch(objects: &mut Vec<serde_json::Value>) {
    for o in objects.iter_mut().filter(|o| {
        o["kind"] == "ClusterRole" && o["metadata"]["name"] == format!("{}-operator", lab::RELEASE)
    }) {
        if let Some(rules) = o["rules"].as_array_mut() {
            for rule in rules
                .iter_mut()
                .filter(|r| r["resources"] == serde_json::json!(["services/status"]))
            {
                if let Some(verbs) = rule["verbs"].as_array_mut() {
                    verbs.retain(|v| v != "patch");
                }
            }
        }
    }
}

/// The lab `tag` with its installed RBAC changed by `edit`; and its directory (for logs).
fn up_with_rbac(
    tag: &str,
    edit: fn(&mut Vec<serde_json::Value>),
) -> (lab::Running, std::path::PathBuf) {
    let mut s = spec(tag);
    s.rbac_edit = Some(edit);
    let dir = s.dir.clone();
    let r = lab::up(s).unwrap_or_else(|e| panic!("lab up: {e}\n{}", logs(&dir)));
    (r, dir)
}

/// The lab with the operator's ClusterRole one verb short (`patch` on `services/status`):
/// the Service gets no IP, the API server answers 403 with the real message, and the
/// operator's log names the refusal. Proves the lab holds the chart's RBAC to account.
#[test]
fn a_verb_missing_from_the_chart_fails_with_a_403_in_the_log() {
    if let Some(why) = berth_e2e::lab_unavailable(&["/usr/lib/frr/bgpd", "/usr/bin/kubectl"]) {
        eprintln!("skipped: {why}");
        return;
    }
    let (r, dir) = up_with_rbac("r", without_status_patch);
    let want = r#"services "web" is forbidden: User "system:serviceaccount:berth-system:berth-operator" cannot patch resource "services/status" in API group "" in the namespace "demo""#;
    let refused = wait_for(Duration::from_secs(60), || {
        r.refusals()
            .ok()
            .filter(|all| all.iter().any(|l| l.ends_with(want)))
    });
    assert!(
        refused.is_some(),
        "the API server refused no status patch of demo/web: {:?}\n{}",
        r.refusals(),
        logs(&dir)
    );
    assert_eq!(
        r.service_ip("demo", "web", Duration::from_secs(1)),
        None,
        "demo/web got an IP without the operator being allowed to write its status"
    );
    let log = r.log_of("operator");
    assert!(
        log.contains("is forbidden: User") && log.contains("services/status"),
        "the operator's log does not name the 403:\n{}",
        logs(&dir)
    );
}

/// `helm uninstall` (the real one, through Helm's SDK: `scripts/helm`), then each workload's
/// Pods stopped in Helm's uninstall order (StatefulSet: the speaker; Deployment: the
/// operators; DaemonSet: the agents; SIGTERM, as the kubelet sends). No node keeps a route of Berth's
/// (`proto 66`) or answers ARP for a Layer2 IP; no Service carries a Berth finalizer, so
/// deleting one afterwards is immediate; the router drops the routes when the graceful
/// restart time runs out (set to 5 s for the test).
#[test]
fn uninstall_in_helms_order_leaves_nothing_on_the_nodes() {
    let Some(mut r) = up("u") else { return };
    let dir = r.spec.dir.clone();
    assert!(
        !r.pods_of("agent").is_empty(),
        "the lab started no agents\n{}",
        logs(&dir)
    );
    let bgp_ip = r
        .service_ip("demo", "web", Duration::from_secs(30))
        .unwrap_or_else(|| panic!("demo/web got no IP\n{}", logs(&dir)));
    let l2_ip = r
        .service_ip("demo", "office", Duration::from_secs(30))
        .unwrap_or_else(|| panic!("demo/office got no IP\n{}", logs(&dir)));
    let berth_routes = |r: &Running| -> String {
        r.ns.nodes
            .iter()
            .map(|ns| {
                r.lab
                    .exec(ns, "ip", &["route", "show", "table", "all", "proto", "66"])
                    .unwrap_or_default()
            })
            .collect()
    };
    // Installed: the nodes hold Berth's local routes and the Layer2 IP is answered.
    let installed = wait_for(Duration::from_secs(30), || {
        let routes = berth_routes(&r);
        (routes.contains(&bgp_ip) && routes.contains(&l2_ip)).then_some(())
    });
    assert!(
        installed.is_some(),
        "no local routes for {bgp_ip} and {l2_ip}: {}\n{}",
        berth_routes(&r),
        logs(&dir)
    );
    no_refusals(&r);
    // A short graceful-restart time, so the router's stale routes run out within the test.
    r.kubectl(&[
        "patch",
        "bgpconf",
        "default",
        "--type=merge",
        "-p",
        r#"{"spec":{"gracefulRestart":{"restartTime":5}}}"#,
    ])
    .unwrap();
    assert!(
        hops_become(&r, &bgp_ip, &all_nodes(), 30),
        "no route for {bgp_ip} after the BgpConf change\n{}",
        logs(&dir)
    );

    // Everything the chart rendered, deleted in Helm's order; the workloads' Pods stop.
    r.uninstall().unwrap();

    assert_eq!(
        berth_routes(&r),
        "",
        "routes left on the nodes\n{}",
        logs(&dir)
    );
    assert_eq!(
        r.who_answers_arp(&l2_ip).unwrap(),
        Vec::<(String, usize)>::new(),
        "{l2_ip} is still answered after uninstall"
    );

    // No Service carries a finalizer of Berth's: deleting one after uninstall is immediate.
    let finalizers = r
        .kubectl(&[
            "get",
            "svc",
            "web",
            "-n",
            "demo",
            "-o",
            "jsonpath={.metadata.finalizers}",
        ])
        .unwrap();
    assert!(!finalizers.contains("berth.dev"), "{finalizers}");
    r.kubectl(&["delete", "svc", "web", "-n", "demo", "--wait=false"])
        .unwrap();
    assert!(
        r.kubectl(&["get", "svc", "web", "-n", "demo"]).is_err(),
        "demo/web is stuck after uninstall"
    );
    // The router drops the stale routes when the restart time it was told runs out (5 s
    // here): nothing stays announced.
    let gone = wait_for(Duration::from_secs(30), || {
        r.router_next_hops(&bgp_ip).is_empty().then_some(())
    });
    assert!(
        gone.is_some(),
        "the router still routes {bgp_ip} after uninstall: {}",
        r.router_route(&bgp_ip)
    );
}

/// Takes `watch` on ConfigMaps away from the agent's rendered Role.
// The type of `Spec::rbac_edit`.
#[allow(clippy::ptr_arg)]
fn agent_without_configmap_watch(objects: &mut Vec<serde_json::Value>) {
    for o in objects.iter_mut().filter(|o| {
        o["kind"] == "Role" && o["metadata"]["name"] == format!("{}-agent", lab::RELEASE)
    }) {
        if let Some(rules) = o["rules"].as_array_mut() {
            for rule in rules
                .iter_mut()
                .filter(|r| r["resources"] == serde_json::json!(["configmaps"]))
            {
                if let Some(verbs) = rule["verbs"].as_array_mut() {
                    verbs.retain(|v| v != "watch");
                }
            }
        }
    }
}

/// The agents run with their own ServiceAccount's token: with `watch` on ConfigMaps taken
/// from the agent's Role, the API server refuses the agents' watch of the Layer2 assignments
/// with the real 403 and the agents' log names it.
#[test]
fn the_agents_are_held_to_their_role() {
    if let Some(why) = berth_e2e::lab_unavailable(&["/usr/lib/frr/bgpd", "/usr/bin/kubectl"]) {
        eprintln!("skipped: {why}");
        return;
    }
    let (r, dir) = up_with_rbac("g", agent_without_configmap_watch);
    let want = r#"configmaps is forbidden: User "system:serviceaccount:berth-system:berth-agent" cannot watch resource "configmaps" in API group "" in the namespace "berth-system""#;
    let refused = wait_for(Duration::from_secs(60), || {
        r.refusals()
            .ok()
            .filter(|all| all.iter().any(|l| l.ends_with(want)))
    });
    assert!(
        refused.is_some(),
        "no refused ConfigMap watch of the agents: {:?}\n{}",
        r.refusals(),
        logs(&dir)
    );
    let named = wait_for(Duration::from_secs(30), || {
        NODES
            .iter()
            .any(|(n, _)| {
                std::fs::read_to_string(dir.join(format!("berth-agent-{n}.log")))
                    .unwrap_or_default()
                    .contains("is forbidden: User")
            })
            .then_some(())
    });
    assert!(
        named.is_some(),
        "no agent log names the 403\n{}",
        logs(&dir)
    );
}

/// A BgpPeer's communities and large communities (a well-known name among them) reach the
/// router on every route Berth sends it, and the edit keeps the BGP sessions up.
#[test]
fn bgppeer_communities_reach_the_router() {
    let Some(r) = up("m") else { return };
    let dir = r.spec.dir.clone();
    let ip = r
        .service_ip("demo", "web", Duration::from_secs(30))
        .unwrap_or_else(|| panic!("demo/web got no IP\n{}", logs(&dir)));
    assert!(
        hops_become(&r, &ip, &all_nodes(), 30),
        "no route for {ip}\n{}",
        logs(&dir)
    );
    let lab::Router::Frr(frr) = &r.router else {
        panic!("the lab test runs FRR")
    };
    // Sessions FRR has brought up so far, over every neighbor (the speakers).
    let established = || -> u64 {
        let out = frr
            .vtysh(&r.lab, "show bgp neighbors json")
            .unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        v.as_object()
            .map(|o| {
                o.values()
                    .filter_map(|n| n["connectionsEstablished"].as_u64())
                    .sum()
            })
            .unwrap_or(0)
    };
    let before = established();
    assert!(before > 0, "FRR lists no established session");
    r.kubectl(&[
        "patch",
        "bgppeer",
        "router",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"communities":["65000:100","no-export"],"largeCommunities":["65000:1:2"],"localPref":300}}"#,
    ])
    .unwrap();
    let seen = wait_for(Duration::from_secs(30), || {
        let out = frr
            .vtysh(&r.lab, &format!("show bgp ipv4 unicast {ip}/32 json"))
            .ok()?;
        (out.contains("65000:100 no-export") && out.contains("65000:1:2")).then_some(out)
    });
    assert!(
        seen.is_some(),
        "FRR never saw the BgpPeer's communities on {ip}: {:?}\n{}",
        frr.vtysh(&r.lab, &format!("show bgp ipv4 unicast {ip}/32 json")),
        logs(&dir)
    );
    // eBGP: LOCAL_PREF is not sent (the speaker sends it to iBGP peers only).
    assert!(
        !seen.unwrap_or_default().contains("\"locPrf\":300"),
        "LOCAL_PREF leaked to an eBGP peer"
    );
    // And the route still has every node.
    assert!(hops_become(&r, &ip, &all_nodes(), 30), "{}", logs(&dir));
    // Only what the paths carry changed: the speakers announced again on the same sessions
    // (they used to restart them with a Cease 6/6).
    assert_eq!(
        established(),
        before,
        "a communities edit reset a session\n{}",
        logs(&dir)
    );
    no_refusals(&r);
}

/// A migration: MetalLB's pool converted by `berthctl convert-metallb`, OpenELB's written by
/// hand (docs/migration.md); 100 MetalLB-annotated and 20 OpenELB-annotated Services exist
/// with the IPs the old load balancer gave them (in its own order) while Berth's operator is
/// down, the old load balancer standing in as a static route at the router and local routes
/// on the nodes; once Berth's operator runs, every Service keeps its IP, is Berth's (its pool
/// recorded), the router routes it over every node, and after the old routes go connections
/// still land: a client connecting throughout the hand-over is never refused.
#[test]
fn services_handed_over_from_metallb_and_openelb_keep_their_ips() {
    let Some(mut r) = up("g") else { return };
    let dir = r.spec.dir.clone();
    let write = |name: &str, text: &str| {
        let f = dir.join(name);
        std::fs::write(&f, text).unwrap();
        f.display().to_string()
    };
    let metallb = write(
        "metallb.yaml",
        "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: prod, namespace: metallb-system}\nspec: {addresses: [198.51.101.0/24]}\n---\napiVersion: metallb.io/v1beta1\nkind: BGPAdvertisement\nmetadata: {name: prod, namespace: metallb-system}\nspec: {ipAddressPools: [prod]}\n",
    );
    let out = std::process::Command::new(r.spec.bin_dir.join("berthctl"))
        .args(["convert-metallb", "-f", &metallb])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let converted = write(
        "berth-from-metallb.yaml",
        &String::from_utf8_lossy(&out.stdout),
    );
    r.kubectl(&["apply", "-f", &converted]).unwrap();
    let openelb = write(
        "berth-from-openelb.yaml",
        "apiVersion: berth.dev/v1alpha1\nkind: Eip\nmetadata: {name: eip-sample}\nspec: {address: 198.51.102.0/27, protocol: bgp}\n",
    );
    r.kubectl(&["apply", "-f", &openelb]).unwrap();

    // The old load balancer, as the network sees it: the router sends the pools to every
    // node and the nodes accept them (MetalLB's routes and kube-proxy's rules in a cluster).
    let old_routes = |r: &Running, add: bool| {
        let op = if add { "add" } else { "del" };
        for pool in ["198.51.101.0/24", "198.51.102.0/27"] {
            let mut args = vec!["route", op, pool];
            if add {
                for (_, addr) in NODES {
                    args.extend(["nexthop", "via", addr]);
                }
            }
            r.lab.exec(&r.ns.router, "ip", &args).unwrap();
            for node in &r.ns.nodes {
                r.lab
                    .exec(
                        node,
                        "ip",
                        &["route", op, "local", pool, "dev", "lo", "table", "local"],
                    )
                    .unwrap();
            }
        }
    };
    old_routes(&r, true);
    let sample = [
        "198.51.101.250",
        "198.51.101.151",
        "198.51.102.30",
        "198.51.102.11",
    ];
    for ip in sample {
        let c = r.connect(ip, SERVICE_PORT, 30);
        assert!(
            landed_on_every_node(&c),
            "the old load balancer does not serve {ip}: {c}"
        );
    }
    // Clients keep connecting through the whole hand-over: every connection must be answered.
    let stop = Arc::new(AtomicBool::new(false));
    let probe = {
        let stop = stop.clone();
        let client = r.ns.client.clone();
        std::thread::spawn(move || {
            let (mut tried, mut failed) = (0usize, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                for ip in sample {
                    let out = std::process::Command::new("ip")
                        .args(["netns", "exec", &client, "python3", "-c", lab::CONNECT, ip])
                        .arg(SERVICE_PORT.to_string())
                        .arg("2")
                        .output();
                    let (text, why) = out
                        .map(|o| {
                            (
                                String::from_utf8_lossy(&o.stdout).into_owned(),
                                String::from_utf8_lossy(&o.stderr).into_owned(),
                            )
                        })
                        .unwrap_or_else(|e| (format!("error={e}"), String::new()));
                    tried += 2;
                    if text.contains("error") || text.contains("empty") || text.trim().is_empty() {
                        failed.push(format!("{ip}: {} ({})", text.trim(), why.trim()));
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            (tried, failed)
        })
    };

    // The hand-over: the old load balancer's Services, with its IPs, and Berth not running.
    r.stop("operator");
    let mut services = String::from("apiVersion: v1\nkind: Namespace\nmetadata: {name: legacy}\n");
    let mut want: Vec<(String, String, &str)> = Vec::new();
    for i in 0..120u32 {
        let (name, ip, annotations, pool) = if i < 100 {
            let key = if i % 2 == 0 {
                "metallb.universe.tf/address-pool"
            } else {
                "metallb.io/address-pool"
            };
            // MetalLB's order, not Berth's: from the top of the pool down.
            (
                format!("mlb-{i}"),
                format!("198.51.101.{}", 250 - i),
                format!("{key}: prod"),
                "prod",
            )
        } else {
            let j = i - 100;
            (
                format!("elb-{j}"),
                format!("198.51.102.{}", 30 - j),
                "lb.kubesphere.io/v1alpha1: openelb\n    eip.openelb.kubesphere.io/v1alpha2: eip-sample".to_owned(),
                "eip-sample",
            )
        };
        services.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: legacy\n  annotations:\n    {annotations}\nspec:\n  type: LoadBalancer\n  selector: {{app: demo}}\n  ports: [{{port: {SERVICE_PORT}}}]\n"
        ));
        want.push((name, ip, pool));
    }
    let f = write("legacy.yaml", &services);
    r.kubectl(&["apply", "-f", &f]).unwrap();
    for (name, ip, _) in &want {
        r.kubectl(&[
            "patch",
            "service",
            name,
            "-n",
            "legacy",
            "--subresource=status",
            "--type=merge",
            "-p",
            &format!(r#"{{"status":{{"loadBalancer":{{"ingress":[{{"ip":"{ip}"}}]}}}}}}"#),
        ])
        .unwrap();
    }
    r.restart_operator().unwrap();

    let read = |r: &Running| -> std::collections::BTreeMap<String, (String, String)> {
        let out = r
            .kubectl(&[
                "get",
                "services",
                "-n",
                "legacy",
                "-o",
                r#"jsonpath={range .items[*]}{.metadata.name} {.status.loadBalancer.ingress[0].ip} {.metadata.annotations.berth\.dev/allocated-pool}{"\n"}{end}"#,
            ])
            .unwrap_or_default();
        out.lines()
            .filter_map(|l| {
                let mut p = l.split_whitespace();
                Some((
                    p.next()?.to_owned(),
                    (
                        p.next().unwrap_or_default().to_owned(),
                        p.next().unwrap_or_default().to_owned(),
                    ),
                ))
            })
            .collect()
    };
    let taken = wait_for(Duration::from_secs(60), || {
        let now = read(&r);
        (now.len() == want.len() && now.values().all(|(_, pool)| !pool.is_empty())).then_some(now)
    })
    .unwrap_or_else(|| {
        panic!(
            "not every Service was taken over: {:?}\n{}",
            read(&r),
            logs(&dir)
        )
    });
    for (name, ip, pool) in &want {
        assert_eq!(
            taken.get(name),
            Some(&(ip.clone(), (*pool).to_owned())),
            "{name} did not keep {ip} from pool {pool}"
        );
    }
    // Services created after the switch, still written for MetalLB or OpenELB, get what
    // those annotations ask for (not the default pool lab-bgp).
    let fresh = write(
        "fresh.yaml",
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: new-pool\n  namespace: legacy\n  annotations: {{metallb.io/address-pool: prod}}\nspec: {{type: LoadBalancer, selector: {{app: demo}}, ports: [{{port: {SERVICE_PORT}}}]}}\n\
             ---\napiVersion: v1\nkind: Service\nmetadata:\n  name: new-ip\n  namespace: legacy\n  annotations: {{metallb.universe.tf/loadBalancerIPs: 198.51.101.77}}\nspec: {{type: LoadBalancer, selector: {{app: demo}}, ports: [{{port: {SERVICE_PORT}}}]}}\n\
             ---\napiVersion: v1\nkind: Service\nmetadata:\n  name: new-eip\n  namespace: legacy\n  annotations: {{eip.porter.kubesphere.io/v1alpha2: eip-sample}}\nspec: {{type: LoadBalancer, selector: {{app: demo}}, ports: [{{port: {SERVICE_PORT}}}]}}\n"
        ),
    );
    r.kubectl(&["apply", "-f", &fresh]).unwrap();
    for (name, prefix, pool) in [
        ("new-pool", "198.51.101.", "prod"),
        ("new-ip", "198.51.101.77", "prod"),
        ("new-eip", "198.51.102.", "eip-sample"),
    ] {
        let got = wait_for(Duration::from_secs(30), || {
            read(&r).get(name).filter(|(ip, _)| !ip.is_empty()).cloned()
        });
        let (ip, from) = got.unwrap_or_else(|| panic!("{name} got no IP\n{}", logs(&dir)));
        assert!(
            ip.starts_with(prefix) && from == pool,
            "{name}: {ip} from {from}"
        );
    }

    // Announced over every node: the old load balancer goes (MetalLB uninstalled).
    for (_, ip, _) in [&want[0], &want[99], &want[100], &want[119]] {
        assert!(
            hops_become(&r, ip, &all_nodes(), 30),
            "no route for {ip}\n{}",
            logs(&dir)
        );
    }
    old_routes(&r, false);
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let (tried, failed) = probe.join().unwrap();
    assert!(tried > 40, "the probe made only {tried} connections");
    assert!(
        failed.is_empty(),
        "{} of {tried} connections failed during the hand-over: {failed:?}",
        failed.len()
    );

    // Answered now by Berth alone.
    for (_, ip, _) in [&want[0], &want[99], &want[100], &want[119]] {
        assert!(
            hops_become(&r, ip, &all_nodes(), 30),
            "no route for {ip}\n{}",
            logs(&dir)
        );
        let counts = r.connect(ip, SERVICE_PORT, 30);
        assert!(landed_on_every_node(&counts), "{ip}: {counts}");
    }
    no_refusals(&r);
}

/// Narrows the operator's rendered Role to get the Secret `router-md5` only, as the chart
/// renders it with `operator.bgpPasswordSecrets: [router-md5]`.
// The type of `Spec::rbac_edit`.
#[allow(clippy::ptr_arg)]
fn only_router_md5(objects: &mut Vec<serde_json::Value>) {
    for o in objects.iter_mut().filter(|o| {
        o["kind"] == "Role" && o["metadata"]["name"] == format!("{}-operator", lab::RELEASE)
    }) {
        if let Some(rules) = o["rules"].as_array_mut() {
            for rule in rules
                .iter_mut()
                .filter(|r| r["resources"] == serde_json::json!(["secrets"]))
            {
                rule["resourceNames"] = serde_json::json!(["router-md5"]);
            }
        }
    }
}

/// TCP MD5 end to end with least-privilege Secrets: the operator `get`s the Secret the
/// router's BgpPeer names (its Role narrowed to that name, as `operator.bgpPasswordSecrets`
/// renders it), the speaker signs the session and FRR, set to the same password, routes the
/// Service again; a rotated password reaches the session without a restart (the operator
/// reads the Secret again every 30 s); a BgpPeer naming a Secret outside the Role gets
/// `Configured=False` (`SecretForbidden`) with the API server's 403, and the router's peer
/// stays configured.
#[test]
fn md5_password_from_a_named_secret_reaches_the_router() {
    if let Some(why) = berth_e2e::lab_unavailable(&["/usr/lib/frr/bgpd", "/usr/bin/kubectl"]) {
        eprintln!("skipped: {why}");
        return;
    }
    let (r, dir) = up_with_rbac("p", only_router_md5);
    let ip = r
        .service_ip("demo", "web", Duration::from_secs(30))
        .unwrap_or_else(|| panic!("demo/web got no IP\n{}", logs(&dir)));
    assert!(
        hops_become(&r, &ip, &all_nodes(), 30),
        "no route for {ip}\n{}",
        logs(&dir)
    );
    let lab::Router::Frr(frr) = &r.router else {
        panic!("the lab test runs FRR")
    };
    let secret = |password_b64: &str| {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: router-md5, namespace: berth-system}}\ndata: {{password: {password_b64}}}\n"
        )
    };
    let frr_password = |pw: &str| {
        frr.vtysh(
            &r.lab,
            &format!(
                "configure terminal\nrouter bgp 64513\nneighbor {} password {pw}",
                NODES[0].1
            ),
        )
        .unwrap_or_else(|e| panic!("FRR password: {e}"));
    };
    // lab-s3cret
    apply(&r, "router-md5", &secret("bGFiLXMzY3JldA=="));
    frr_password("lab-s3cret");
    r.kubectl(&[
        "patch",
        "bgppeer",
        "router",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"passwordSecretRef":{"name":"router-md5"}}}"#,
    ])
    .unwrap();
    let session_up = |secs: u64| {
        wait_for(Duration::from_secs(secs), || {
            let out = frr
                .vtysh(&r.lab, &format!("show bgp neighbor {} json", NODES[0].1))
                .ok()?;
            out.contains("\"bgpState\":\"Established\"").then_some(())
        })
        .is_some()
    };
    assert!(
        session_up(60) && hops_become(&r, &ip, &all_nodes(), 30),
        "no signed session with FRR: {:?}\n{}",
        frr.vtysh(&r.lab, &format!("show bgp neighbor {}", NODES[0].1)),
        logs(&dir)
    );
    let configured = || {
        r.kubectl(&[
            "get",
            "bgppeer",
            "router",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Configured\")].status}",
        ])
        .unwrap_or_default()
    };
    assert_eq!(configured(), "True", "{}", logs(&dir));

    // Rotation: both sides get the new password; the operator picks it up by itself.
    apply(&r, "router-md5", &secret("bGFiLXMzY3JldDI="));
    frr_password("lab-s3cret2");
    // The old session may survive the key change for up to its hold time; wait for a new one.
    std::thread::sleep(Duration::from_secs(10));
    assert!(
        session_up(90) && hops_become(&r, &ip, &all_nodes(), 30),
        "the rotated password never reached the session: {:?}\n{}",
        frr.vtysh(&r.lab, &format!("show bgp neighbor {}", NODES[0].1)),
        logs(&dir)
    );

    // A peer naming a Secret the operator may not read: left out, told why; the router's
    // peer stays.
    apply(
        &r,
        "other-md5",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: other-md5, namespace: berth-system}\ndata: {password: b3RoZXI=}\n",
    );
    apply(
        &r,
        "other-peer",
        "apiVersion: berth.dev/v1alpha1\nkind: BgpPeer\nmetadata: {name: other}\nspec: {address: 10.0.0.2, peerAsn: 64514, passwordSecretRef: {name: other-md5}}\n",
    );
    let reason = wait_for(Duration::from_secs(60), || {
        let out = r
            .kubectl(&[
                "get",
                "bgppeer",
                "other",
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Configured\")].reason}: {.status.conditions[?(@.type==\"Configured\")].message}",
            ])
            .ok()?;
        out.starts_with("SecretForbidden").then_some(out)
    });
    let reason =
        reason.unwrap_or_else(|| panic!("BgpPeer other is not SecretForbidden\n{}", logs(&dir)));
    assert!(
        reason.contains("berth-system/other-md5") && reason.contains("operator.bgpPasswordSecrets"),
        "{reason}"
    );
    assert_eq!(configured(), "True", "{}", logs(&dir));
    assert!(hops_become(&r, &ip, &all_nodes(), 30), "{}", logs(&dir));
    // The only refusals: the operator's gets of that one Secret.
    let refused = r.refusals().unwrap();
    assert!(
        !refused.is_empty() && refused.iter().all(|l| l.contains("\"other-md5\"")),
        "{refused:?}"
    );
}

//! Two real `berth-operator` replicas against the in-memory API server, started without
//! `POD_NAME` (the fault: every replica used to call itself `berth-operator`, renew "its"
//! Lease and lead): exactly one leads, the other stands by; SIGTERM of the leader releases
//! the Lease and the standby leads within the Lease's duration; a hand-over moves no IP of
//! 1,000 Services. No root needed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_e2e::apiserver::{Config, Server};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::json;

const LEASE_SECONDS: u64 = 3;
const LEADING: &str = "leader: this replica now runs the controllers";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The replicas, killed when the test ends however it ends.
struct Replicas(Vec<(Child, PathBuf)>);

impl Drop for Replicas {
    fn drop(&mut self) {
        for (c, _) in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Replicas {
    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.0[i].1).unwrap_or_default()
    }
    fn leading(&self) -> Vec<usize> {
        (0..self.0.len())
            .filter(|i| self.log(*i).contains(LEADING))
            .collect()
    }
    fn logs(&self) -> String {
        (0..self.0.len())
            .map(|i| format!("--- replica {i}\n{}", self.log(i)))
            .collect()
    }
}

/// An API server with Berth's CRDs and the `berth-system` namespace, and two operator
/// replicas started without `POD_NAME` against it (killed when dropped).
async fn two_replicas(tag: &str) -> (Client, Replicas, PathBuf) {
    let server = Server::new(Some(&repo().join("config/crd")), Config::default()).unwrap();
    let addr = server.spawn("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let url = format!("http://{addr}");
    let client = Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "berth-system"}})).unwrap(),
        )
        .await
        .unwrap();
    let dir = berth_e2e::test_dir(&format!("leader-{tag}")).unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster: {{server: \"{url}\"}}\n\
             users:\n- name: t\n  user: {{}}\ncontexts:\n- name: t\n  context: {{cluster: t, user: t}}\n\
             current-context: t\n"
        ),
    )
    .unwrap();

    let operator = berth_e2e::binary("berth-operator");
    let mut replicas = Replicas(Vec::new());
    for i in 0..2 {
        let log = dir.join(format!("operator-{i}.log"));
        let child = Command::new(&operator)
            .args([
                "--speaker-plaintext",
                "--lease-seconds",
                &LEASE_SECONDS.to_string(),
                "--metrics-address",
                "127.0.0.1:0",
            ])
            .env("KUBECONFIG", &kubeconfig)
            .env_remove("POD_NAME")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        replicas.0.push((child, log));
    }

    (client, replicas, dir)
}

/// Waits until one replica leads; returns (leader, standby).
async fn leader_and_standby(replicas: &Replicas) -> (usize, usize) {
    let start = Instant::now();
    while replicas.leading().is_empty() && start.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let leading = replicas.leading();
    assert_eq!(
        leading.len(),
        1,
        "not exactly one leader: {leading:?}\n{}",
        replicas.logs()
    );
    (leading[0], 1 - leading[0])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_without_pod_name_never_both_lead_and_sigterm_hands_over() {
    let (client, replicas, dir) = two_replicas("a").await;
    // Long enough for both to have looked at the Lease several times and for a second
    // leader, if any, to have taken it.
    let start = Instant::now();
    while replicas.leading().is_empty() && start.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2 * LEASE_SECONDS)).await;
    let leading = replicas.leading();
    assert_eq!(
        leading.len(),
        1,
        "not exactly one leader: {leading:?}\n{}",
        replicas.logs()
    );
    let leader = leading[0];
    let standby = 1 - leader;
    assert!(
        replicas.log(standby).contains("standing by"),
        "the other replica does not stand by\n{}",
        replicas.logs()
    );
    let leases: Api<Lease> = Api::namespaced(client.clone(), "berth-system");
    let holder = leases
        .get("berth-operator")
        .await
        .unwrap()
        .spec
        .and_then(|s| s.holder_identity)
        .unwrap();
    assert_ne!(holder, "berth-operator", "the identity is not unique");
    assert!(
        replicas.log(leader).contains(&holder),
        "the Lease holder {holder} is not the replica that leads\n{}",
        replicas.logs()
    );

    // SIGTERM of the leader: it releases the Lease, the standby leads well within a Lease
    // duration (it would otherwise wait for the Lease to expire).
    let pid = replicas.0[leader].0.id().to_string();
    let sent = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let mut took = None;
    while sent.elapsed() < Duration::from_secs(20) {
        if replicas.log(standby).contains(LEADING) {
            took = Some(sent.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = took.unwrap_or_else(|| panic!("the standby never led\n{}", replicas.logs()));
    assert!(
        replicas.log(leader).contains("Lease released"),
        "the leader did not release the Lease on SIGTERM\n{}",
        replicas.logs()
    );
    assert!(
        took < Duration::from_secs(LEASE_SECONDS),
        "the standby took {took:?} to lead after SIGTERM, not less than the Lease's {LEASE_SECONDS} s\n{}",
        replicas.logs()
    );
    drop(replicas);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The IP of each of 1,000 Services, by name (Services without one are absent).
async fn ips(client: &Client) -> std::collections::BTreeMap<String, String> {
    let api: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(client.clone(), "shop");
    let list = api.list(&Default::default()).await.unwrap();
    list.items
        .into_iter()
        .filter_map(|s| {
            let ip = s.status?.load_balancer?.ingress?.first()?.ip.clone()?;
            Some((s.metadata.name?, ip))
        })
        .collect()
}

fn service(name: &str) -> k8s_openapi::api::core::v1::Service {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"type": "LoadBalancer", "loadBalancerClass": "berth.dev/berth",
                 "ports": [{"port": 80}], "selector": {"app": name}},
    }))
    .unwrap()
}

/// A leader hand-over changes no IP: 1,000 Services get IPs, every seventh is deleted (holes
/// a new leader could hand out again), the leader gets SIGTERM, the standby leads, rebuilds
/// from the Services' status and reconciles them all; then new Services fill the holes only.
/// Every surviving Service keeps its IP, and no IP has two Services.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_hand_over_moves_no_ip_of_1000_services() {
    let (client, replicas, dir) = two_replicas("h").await;
    let (leader, standby) = leader_and_standby(&replicas).await;
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "shop"}})).unwrap(),
        )
        .await
        .unwrap();
    let eips: Api<berth_api::Eip> = Api::all(client.clone());
    eips.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "Eip",
            "metadata": {"name": "big"},
            "spec": {"address": "10.128.0.0/20", "default": true},
        }))
        .unwrap(),
    )
    .await
    .unwrap();
    let services: Api<k8s_openapi::api::core::v1::Service> =
        Api::namespaced(client.clone(), "shop");
    for i in 0..1000 {
        services
            .create(&PostParams::default(), &service(&format!("s{i:04}")))
            .await
            .unwrap();
    }
    let start = Instant::now();
    let mut before = ips(&client).await;
    while before.len() < 1000 && start.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        before = ips(&client).await;
    }
    assert_eq!(
        before.len(),
        1000,
        "not every Service got an IP\n{}",
        replicas.logs()
    );
    for i in (0..1000).step_by(7) {
        services
            .delete(&format!("s{i:04}"), &Default::default())
            .await
            .unwrap();
        before.remove(&format!("s{i:04}"));
    }
    // The deletions are released (on the watch's delete events) before the hand-over.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let pid = replicas.0[leader].0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let start = Instant::now();
    while !replicas.log(standby).contains(LEADING) && start.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        replicas.log(standby).contains(LEADING),
        "{}",
        replicas.logs()
    );
    // The new leader has rebuilt and looked at every Service; new ones come after.
    let start = Instant::now();
    while !replicas.log(standby).contains("IPAM state rebuilt")
        && start.elapsed() < Duration::from_secs(20)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for i in 0..50 {
        services
            .create(&PostParams::default(), &service(&format!("new{i:02}")))
            .await
            .unwrap();
    }
    let start = Instant::now();
    let mut after = ips(&client).await;
    while after.len() < before.len() + 50 && start.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        after = ips(&client).await;
    }
    let moved: Vec<String> = before
        .iter()
        .filter(|(name, ip)| after.get(*name) != Some(*ip))
        .map(|(name, ip)| format!("{name}: {ip} -> {:?}", after.get(name)))
        .collect();
    assert!(
        moved.is_empty(),
        "{} of {} IPs changed through the hand-over: {:?}\n{}",
        moved.len(),
        before.len(),
        &moved[..moved.len().min(10)],
        replicas.logs()
    );
    assert_eq!(after.len(), before.len() + 50, "{}", replicas.logs());
    let mut seen = std::collections::BTreeSet::new();
    for ip in after.values() {
        assert!(seen.insert(ip), "{ip} is held by two Services");
    }
    drop(replicas);
    let _ = std::fs::remove_dir_all(&dir);
}

//! Two real `berth-operator` replicas against the in-memory API server, started without
//! `POD_NAME` (the fault: every replica used to call itself `berth-operator`, renew "its"
//! Lease and lead): exactly one leads, the other stands by; SIGTERM of the leader releases
//! the Lease and the standby leads within the Lease's duration. No root needed.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_without_pod_name_never_both_lead_and_sigterm_hands_over() {
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
    let dir = std::env::temp_dir().join(format!("berth-leader-{}", std::process::id()));
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

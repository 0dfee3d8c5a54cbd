//! `berthctl` against a running speaker over its Unix socket (no root: the peer is never
//! reached): apply a file, list routes and peers as table, JSON and YAML, add and delete a
//! route, and an error that names the address when nothing listens.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

static SPEAKER: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| berth_e2e::binary("berth-bgp-server"));
static CTL: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| berth_e2e::binary("berthctl"));

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ctl(sock: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(&*CTL)
        .arg("--socket")
        .arg(sock)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn berthctl_applies_lists_and_edits() {
    let dir = berth_e2e::test_dir("ctl").unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("api.sock");
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = std::fs::File::create(dir.join("speaker.log")).unwrap();
    let _speaker = Killed(
        Command::new(&*SPEAKER)
            .arg("--grpc-socket")
            .arg(&sock)
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics}")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while !ctl(&sock, &["state"]).0 {
        assert!(Instant::now() < deadline, "speaker never answered");
        std::thread::sleep(Duration::from_millis(100));
    }

    std::fs::write(
        dir.join("desired.yaml"),
        "asn: 64512
routerId: 10.0.0.11
peers:
  - address: 127.0.0.2
    asn: 64513
    connectRetry: 1
routes:
  - prefix: 198.51.100.10/32
    nextHops: [10.0.0.11, {address: 10.0.0.12, weight: 2}]
    communities: ['64512:100']
",
    )
    .unwrap();
    // A watcher started before the change sees it, and the new peer's session.
    let mut watcher = Killed(
        Command::new(&*CTL)
            .arg("--socket")
            .arg(&sock)
            .args(["watch", "-o", "json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    let stdout = watcher.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let (ok, out, err) = ctl(
        &sock,
        &[
            "apply",
            "-f",
            &dir.join("desired.yaml").display().to_string(),
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(
        out.trim(),
        "applied generation 1: 1 route(s) changed, peers changed"
    );

    let mut seen_applied = false;
    let mut seen_session = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(seen_applied && seen_session) && Instant::now() < deadline {
        let Ok(line) = lines.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        let e: serde_json::Value = serde_json::from_str(&line).unwrap();
        seen_applied |= e["kind"] == "applied" && e["generation"] == 1 && e["call"] == "apply";
        seen_session |= e["kind"] == "session" && e["peer"] == "127.0.0.2";
    }
    assert!(
        seen_applied && seen_session,
        "watch saw applied={seen_applied} session={seen_session}"
    );
    drop(watcher);

    let (ok, out, _) = ctl(&sock, &["routes"]);
    assert!(ok);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("PREFIX"), "{out}");
    assert!(
        lines[1].starts_with("198.51.100.10/32")
            && lines[1].contains("10.0.0.11,10.0.0.12=2")
            && lines[1].contains("64512:100"),
        "{out}"
    );

    let (ok, out, _) = ctl(&sock, &["peers", "-o", "json"]);
    assert!(ok);
    let peers: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(peers[0]["address"], "127.0.0.2");
    assert_eq!(peers[0]["asn"], 64513);
    assert_ne!(peers[0]["state"], "Established");

    let (ok, out, err) = ctl(
        &sock,
        &[
            "route",
            "add",
            "198.51.100.20/32",
            "--next-hop",
            "10.0.0.13",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "applied generation 2");
    let (ok, out, _) = ctl(&sock, &["routes", "-o", "yaml"]);
    assert!(ok);
    assert!(out.contains("prefix: 198.51.100.20/32"), "{out}");
    let (ok, _, err) = ctl(&sock, &["route", "del", "198.51.100.10/32"]);
    assert!(ok, "{err}");
    let (_, out, _) = ctl(&sock, &["state", "-o", "json"]);
    let state: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(state["generation"], 3);
    assert_eq!(state["routes"], 1);

    // The server's refusal reaches the user, naming the field.
    let (ok, _, err) = ctl(
        &sock,
        &[
            "route",
            "add",
            "198.51.100.30/24",
            "--next-hop",
            "10.0.0.13",
        ],
    );
    assert!(!ok);
    assert!(err.contains("upsert[0].prefix: has host bits set"), "{err}");
    assert!(err.contains(&format!("unix:{}", sock.display())), "{err}");

    // Standard gRPC health says the Speaker service is serving.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let status = rt.block_on(async {
        let ch = berth_proto::unix_channel(&sock).await.unwrap();
        tonic_health::pb::health_client::HealthClient::new(ch)
            .check(tonic_health::pb::HealthCheckRequest {
                service: "berth.bgp.v1.Speaker".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status
    });
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // A state on standard input (`-f -`), as over `kubectl exec -i` into the shell-less image:
    // without peers, the decommissioning of docs/operations.md.
    let mut child = Command::new(&*CTL)
        .arg("--socket")
        .arg(&sock)
        .args(["apply", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(b"asn: 64512\nrouterId: 10.0.0.11\n")
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, out, _) = ctl(&sock, &["peers", "-o", "json"]);
    assert_eq!(out.trim(), "[]", "no peer is left");

    // Nothing listening: the error names where it looked.
    let (ok, _, err) = ctl(&dir.join("nowhere.sock"), &["state"]);
    assert!(!ok);
    assert!(err.contains("cannot reach the speaker at unix:"), "{err}");
    assert!(err.contains("nowhere.sock"), "{err}");
}

/// `berthctl convert-metallb` on the sample of docs/migration.md: Berth's objects on stdout
/// that parse as Berth's types, with the pool names kept (Services annotated for MetalLB keep
/// asking for them), the two blocks of `prod` in one Eip, and the notes on stderr; no speaker
/// is needed.
#[test]
fn berthctl_converts_a_metallb_configuration() {
    let sample =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/migration/metallb-sample.yaml");
    let nowhere = Path::new("/nonexistent/berth.sock");
    let (ok, out, err) = ctl(
        nowhere,
        &["convert-metallb", "-f", sample.to_str().unwrap()],
    );
    assert!(ok, "{err}");
    let objects: Vec<serde_json::Value> = serde_yaml_ng::Deserializer::from_str(&out)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &serde_json::Value| !v.is_null())
        .collect();
    let kinds: Vec<String> = objects
        .iter()
        .map(|o| {
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap(),
                o["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        kinds,
        ["Eip/prod", "Eip/office", "BgpConf/default", "BgpPeer/tor-a"]
    );
    for o in &objects {
        match o["kind"].as_str().unwrap() {
            "Eip" => drop(serde_json::from_value::<berth_api::Eip>(o.clone()).unwrap()),
            "BgpConf" => drop(serde_json::from_value::<berth_api::BgpConf>(o.clone()).unwrap()),
            _ => drop(serde_json::from_value::<berth_api::BgpPeer>(o.clone()).unwrap()),
        }
    }
    assert_eq!(objects[0]["spec"]["address"], "192.168.10.0-192.168.11.127");
    assert_eq!(objects[1]["spec"]["interface"], "eth1");
    assert!(
        err.contains("note: IPAddressPool/prod: several blocks became one range"),
        "{err}"
    );

    // A Layer2 pool with no interface anywhere: refused, naming the flag.
    let dir = berth_e2e::test_dir("convert").unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("l2.yaml");
    std::fs::write(
        &f,
        "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: l2}\nspec: {addresses: [10.0.0.0/28]}\n---\napiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata: {name: all}\n",
    )
    .unwrap();
    let (ok, _, err) = ctl(nowhere, &["convert-metallb", "-f", f.to_str().unwrap()]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!ok);
    assert!(
        err.contains("IPAddressPool/l2") && err.contains("--interface"),
        "{err}"
    );
}

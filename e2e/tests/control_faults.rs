//! Input that cannot be applied never makes the speaker exit (no root needed: the speaker runs
//! on the host's loopback with no peers). An Apply whose `listen_port` is held by another
//! listener is refused with the field named, and nothing is persisted; a persisted state that
//! cannot be applied at start (its port taken meanwhile) leaves the process up, serving the
//! API, with `/readyz` false and the reason, until a good state arrives.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use berth_proto::v1;

static SPEAKER: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| berth_e2e::binary("berth-bgp-server"));

/// The speaker, killed on drop (also when an assertion fails).
struct Speaker(Child);

impl Drop for Speaker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Speaker {
    fn start(dir: &Path, metrics_port: u16, log: &str) -> Speaker {
        let log = std::fs::File::create(dir.join(log)).unwrap();
        Speaker(
            Command::new(&*SPEAKER)
                .args(["--grpc-socket", &dir.join("api.sock").display().to_string()])
                .args(["--state-dir", &dir.join("state").display().to_string()])
                .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap(),
        )
    }

    fn running(&mut self) -> bool {
        self.0.try_wait().unwrap().is_none()
    }
}

/// A port nobody listens on now (the OS's choice).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn state(generation: u64, listen_port: u32) -> v1::DesiredState {
    v1::DesiredState {
        generation,
        global: Some(v1::Global {
            asn: 64512,
            router_id: "10.0.0.11".into(),
            listen_port,
            ..Default::default()
        }),
        peers: vec![v1::Peer {
            address: "192.0.2.1".into(),
            asn: 64513,
            passive: listen_port > 0,
            ..Default::default()
        }],
        routes: vec![],
    }
}

async fn client(sock: &Path) -> v1::speaker_client::SpeakerClient<tonic::transport::Channel> {
    for _ in 0..100 {
        if let Ok(c) = berth_proto::connect_unix(sock).await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the control API never answered on {}", sock.display())
}

/// One HTTP GET on the metrics port: (status line, body).
fn get(port: u16, path: &str) -> (String, String) {
    for _ in 0..100 {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
                .unwrap();
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
            return (
                head.lines().next().unwrap_or_default().to_owned(),
                body.to_owned(),
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing answers on 127.0.0.1:{port}")
}

fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("berth-control-faults-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_that_cannot_be_bound_is_refused_and_never_exits_the_process() {
    let dir = tempdir();
    let log = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    let metrics_port = free_port();
    let mut speaker = Speaker::start(&dir, metrics_port, "speaker-1.log");
    let mut api = client(&dir.join("api.sock")).await;

    // Another process holds the port (Calico on 179, say): the Apply is refused, naming it.
    let held = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let e = api
        .apply(v1::ApplyRequest {
            state: Some(state(1, u32::from(port))),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            e.code(),
            tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition
        ),
        "{e:?}"
    );
    assert!(
        e.message()
            .starts_with(&format!("global.listen_port: {port} cannot be bound")),
        "{e:?}"
    );
    assert!(e.message().contains("address in use"), "{e:?}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        speaker.running(),
        "the speaker exited:\n{}",
        log("speaker-1.log")
    );
    let s = api
        .get_state(v1::GetStateRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.generation, 0, "the refused state was applied");
    assert!(
        !dir.join("state/desired-state.pb").exists(),
        "the refused state was persisted"
    );

    // A free port is accepted and persisted.
    let good = free_port();
    api.apply(v1::ApplyRequest {
        state: Some(state(1, u32::from(good))),
    })
    .await
    .unwrap();
    assert!(get(metrics_port, "/readyz").0.contains("200"));
    drop(api);
    drop(speaker);

    // The port is taken while the speaker is down: at start the persisted state cannot be
    // applied. The process stays up, serves the API, and says why it is not ready.
    let _taken = std::net::TcpListener::bind(("0.0.0.0", good)).unwrap();
    let mut speaker = Speaker::start(&dir, metrics_port, "speaker-2.log");
    let mut api = client(&dir.join("api.sock")).await;
    let s = api
        .get_state(v1::GetStateRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.generation, 1, "the persisted state was not loaded");
    let (status, body) = wait_readyz(metrics_port, "503");
    assert!(status.contains("503"), "{status} {body}");
    assert!(
        body.contains(&format!("global.listen_port: {good} cannot be bound")),
        "{body}"
    );
    let (_, m) = get(metrics_port, "/metrics");
    assert!(m.contains("berth_bgp_settings_unapplied 1"), "{m}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        speaker.running(),
        "the speaker exited:\n{}",
        log("speaker-2.log")
    );
    assert!(
        log("speaker-2.log").contains("cannot be bound"),
        "{}",
        log("speaker-2.log")
    );

    // A good state repairs it.
    api.apply(v1::ApplyRequest {
        state: Some(state(2, 0)),
    })
    .await
    .unwrap();
    let (status, body) = wait_readyz(metrics_port, "200");
    assert!(status.contains("200"), "{status} {body}");
    let (_, m) = get(metrics_port, "/metrics");
    assert!(m.contains("berth_bgp_settings_unapplied 0"), "{m}");
    assert!(speaker.running());
}

/// `/readyz` once it answers `want`, or its last answer after 5 s.
fn wait_readyz(port: u16, want: &str) -> (String, String) {
    let mut last = get(port, "/readyz");
    for _ in 0..50 {
        if last.0.contains(want) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        last = get(port, "/readyz");
    }
    last
}

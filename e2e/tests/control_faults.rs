//! Input that cannot be applied never makes the speaker exit (no root needed: the speaker runs
//! on the host's loopback with no peers). An Apply whose `listen_port` is held by another
//! listener is refused with the field named, and nothing is persisted; a persisted state that
//! cannot be applied at start (its port taken meanwhile) leaves the process up, serving the
//! API, with `/readyz` false and the reason, until a good state arrives. MD5 keys leave the
//! listener with their peer.

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
        next_hop_groups: Vec::new(),
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
    let dir = berth_e2e::test_dir("control-faults").unwrap();
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

/// A hand-driven peer on loopback: accepts the speaker's connection and completes the
/// handshake with an OPEN offering graceful restart or not.
fn accept_session(listener: &std::net::TcpListener, graceful_restart: bool) -> std::net::TcpStream {
    use berth_bgp_wire::{Capability, EncodeContext, GracefulRestartFamily, Message, Open};
    let (mut s, _) = listener.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut caps = vec![
        Capability::Multiprotocol { afi: 1, safi: 1 },
        Capability::FourOctetAs(64513),
    ];
    if graceful_restart {
        caps.push(Capability::GracefulRestart {
            restarting: false,
            notification: false,
            restart_time: 120,
            families: vec![GracefulRestartFamily {
                afi: 1,
                safi: 1,
                forwarding_preserved: false,
            }],
        });
    }
    let enc = EncodeContext {
        four_octet_as: true,
        ..Default::default()
    };
    let open = Message::Open(Open {
        asn: 64513,
        hold_time: 30,
        router_id: std::net::Ipv4Addr::new(192, 0, 2, 1),
        capabilities: caps,
    });
    s.write_all(&open.to_bytes(&enc)).unwrap();
    s.write_all(&Message::Keepalive.to_bytes(&enc)).unwrap();
    assert!(
        read_messages(&mut s)
            .iter()
            .any(|m| matches!(m, Message::Keepalive)),
        "no KEEPALIVE from the speaker"
    );
    s
}

/// Messages until the first KEEPALIVE or NOTIFICATION, or the end of the stream.
fn read_messages(s: &mut std::net::TcpStream) -> Vec<berth_bgp_wire::Message> {
    use berth_bgp_wire::{DecodeContext, Message};
    let ctx = DecodeContext {
        four_octet_as: true,
        ..Default::default()
    };
    let (mut buf, mut out, mut chunk) = (Vec::new(), Vec::new(), [0u8; 4096]);
    loop {
        while let Ok(Some((m, n))) = Message::decode(&buf, &ctx) {
            buf.drain(..n);
            let last = matches!(m, Message::Keepalive | Message::Notification(_));
            out.push(m);
            if last {
                return out;
            }
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return out,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The NOTIFICATION's (code, subcode) the peer gets next, or `None` if the connection closes
/// without one.
fn next_notification(s: &mut std::net::TcpStream) -> Option<(u8, u8)> {
    loop {
        let msgs = read_messages(s);
        if msgs.is_empty() {
            return None;
        }
        for m in msgs {
            if let berth_bgp_wire::Message::Notification(n) = m {
                return Some((n.code, n.subcode));
            }
        }
    }
}

/// RFC 4486 Cease subcodes: a changed peer gets Other Configuration Change (6/6), a removed
/// one Peer De-configured (6/3); at SIGTERM a peer that negotiated graceful restart gets no
/// NOTIFICATION at all (it keeps the routes), one that did not gets Administrative Shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cease_subcodes_say_why_and_sigterm_leaves_graceful_restart_peers_alone() {
    let dir = berth_e2e::test_dir("cease").unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let log = || std::fs::read_to_string(dir.join("speaker.log")).unwrap_or_default();
    let peer_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = peer_listener.local_addr().unwrap().port();
    let other_listener = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
    let other_port = other_listener.local_addr().unwrap().port();
    let mut speaker = Speaker::start(&dir, free_port(), "speaker.log");
    let mut api = client(&dir.join("api.sock")).await;
    let peer = |address: &str, port: u16, hold: u32| v1::Peer {
        address: address.into(),
        asn: 64513,
        port: u32::from(port),
        hold_time_seconds: Some(hold),
        connect_retry_seconds: 1,
        ..Default::default()
    };
    let with = |generation, peers: Vec<v1::Peer>| v1::DesiredState {
        next_hop_groups: Vec::new(),
        generation,
        global: Some(v1::Global {
            asn: 64512,
            router_id: "10.0.0.11".into(),
            ..Default::default()
        }),
        peers,
        routes: vec![],
    };
    api.apply(v1::ApplyRequest {
        state: Some(with(1, vec![peer("127.0.0.1", port, 30)])),
    })
    .await
    .unwrap();
    let mut s = accept_session(&peer_listener, false);

    // A changed hold time restarts the session: Other Configuration Change.
    api.apply(v1::ApplyRequest {
        state: Some(with(2, vec![peer("127.0.0.1", port, 60)])),
    })
    .await
    .unwrap();
    assert_eq!(next_notification(&mut s), Some((6, 6)), "{}", log());
    let mut s = accept_session(&peer_listener, false);

    // Removed: Peer De-configured.
    api.apply(v1::ApplyRequest {
        state: Some(with(3, vec![])),
    })
    .await
    .unwrap();
    assert_eq!(next_notification(&mut s), Some((6, 3)), "{}", log());

    // Two peers, one with graceful restart: at SIGTERM it gets no NOTIFICATION, the other
    // an Administrative Shutdown.
    api.apply(v1::ApplyRequest {
        state: Some(with(
            4,
            vec![
                peer("127.0.0.1", port, 60),
                peer("127.0.0.2", other_port, 60),
            ],
        )),
    })
    .await
    .unwrap();
    let mut gr = accept_session(&peer_listener, true);
    let mut plain = accept_session(&other_listener, false);
    drop(api);
    berth_e2e::netns::run("kill", &["-TERM", &speaker.0.id().to_string()]).unwrap();
    assert_eq!(next_notification(&mut gr), None, "{}", log());
    assert_eq!(next_notification(&mut plain), Some((6, 2)), "{}", log());
    let _ = speaker.0.wait();
}

/// A damaged persisted state is not used: the speaker starts empty, serves the API, and says
/// on `/readyz` (and `berth_bgp_persisted_state_unused`) that it waits for a state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_persisted_state_keeps_the_speaker_unready_until_an_apply() {
    let dir = berth_e2e::test_dir("damaged-state").unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("state")).unwrap();
    std::fs::write(dir.join("state/desired-state.pb"), b"not a state").unwrap();
    let metrics_port = free_port();
    let mut speaker = Speaker::start(&dir, metrics_port, "speaker.log");
    let mut api = client(&dir.join("api.sock")).await;
    let (status, body) = wait_readyz(metrics_port, "503");
    assert!(status.contains("503"), "{status} {body}");
    assert!(body.contains("persisted state: not used"), "{body}");
    assert!(
        get(metrics_port, "/metrics")
            .1
            .contains("berth_bgp_persisted_state_unused 1")
    );
    api.apply(v1::ApplyRequest {
        state: Some(state(1, 0)),
    })
    .await
    .unwrap();
    let (status, body) = wait_readyz(metrics_port, "200");
    assert!(status.contains("200"), "{status} {body}");
    assert!(
        get(metrics_port, "/metrics")
            .1
            .contains("berth_bgp_persisted_state_unused 0")
    );
    assert!(speaker.running());
}

/// Whether a TCP connection from 127.0.0.1 without an MD5 signature gets through to the
/// speaker's listener (a key for 127.0.0.1 on it makes the kernel drop the SYN).
fn unsigned_connect(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(1500),
    )
    .is_ok()
}

/// MD5 keys follow the peers on the listener: a key set for a peer is removed when the peer
/// loses its password or is removed, so that address's unsigned connections get through again
/// (before, the key stayed on the socket until the process exited).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_keys_leave_the_listener_with_their_peer() {
    let dir = berth_e2e::test_dir("md5").unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let _speaker = Speaker::start(&dir, free_port(), "speaker.log");
    let mut c = client(&dir.join("api.sock")).await;
    let port = free_port();
    let with = |generation: u64, password: Option<&str>| {
        let mut s = state(generation, u32::from(port));
        s.peers = password
            .map(|p| {
                vec![v1::Peer {
                    address: "127.0.0.1".into(),
                    asn: 64513,
                    passive: true,
                    password: p.into(),
                    ..Default::default()
                }]
            })
            .unwrap_or_default();
        v1::ApplyRequest { state: Some(s) }
    };
    let log = || std::fs::read_to_string(dir.join("speaker.log")).unwrap_or_default();

    c.apply(with(1, Some("s3cret"))).await.unwrap();
    assert!(
        !unsigned_connect(port),
        "the key is not on the listener: {}",
        log()
    );
    // Same peer, no password: its key goes.
    c.apply(with(2, Some(""))).await.unwrap();
    assert!(
        unsigned_connect(port),
        "the key outlived the peer's password: {}",
        log()
    );
    // Keyed again, then the peer removed: the key goes with it.
    c.apply(with(3, Some("s3cret"))).await.unwrap();
    assert!(!unsigned_connect(port), "{}", log());
    c.apply(with(4, None)).await.unwrap();
    assert!(
        unsigned_connect(port),
        "the key outlived the peer: {}",
        log()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Host route `i` from 100.64.0.0, through `nh`.
fn host_route(i: u32, nh: &str) -> v1::Route {
    v1::Route {
        prefix: format!("{}/32", std::net::Ipv4Addr::from(0x6440_0000 + i)),
        next_hops: vec![v1::NextHop {
            address: nh.into(),
            weight: 0,
        }],
        ..Default::default()
    }
}

/// Host routes 0..n from 100.64.0.0, each through `nh`.
fn routes(n: u32, nh: &str) -> Vec<v1::Route> {
    (0..n).map(|i| host_route(i, nh)).collect()
}

/// The speaker's routes as (prefix, next hops).
async fn held(
    api: &mut v1::speaker_client::SpeakerClient<tonic::transport::Channel>,
) -> Vec<(String, Vec<String>)> {
    let st = api
        .get_state(v1::GetStateRequest {
            include_routes: true,
        })
        .await
        .unwrap()
        .into_inner();
    let mut out: Vec<_> = st
        .routes
        .into_iter()
        .map(|r| {
            (
                r.prefix,
                r.next_hops.into_iter().map(|n| n.address).collect(),
            )
        })
        .collect();
    out.sort();
    out
}

/// Applies `state`; the routes it changed.
async fn apply_changed(
    api: &mut v1::speaker_client::SpeakerClient<tonic::transport::Channel>,
    state: v1::DesiredState,
) -> u32 {
    api.apply(v1::ApplyRequest { state: Some(state) })
        .await
        .unwrap()
        .into_inner()
        .routes_changed
}

/// An Apply whose routes are those of the Apply before skips converting them (the speaker
/// keeps a digest of them), so the operator's resync and a peer-only edit cost no conversion.
/// That shortcut must never survive a change made another way: after UpdateRoutes, and after
/// a restart that replayed journaled updates, the same Apply again must put every route back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_after_route_updates_restores_its_routes_also_after_a_restart() {
    let dir = berth_e2e::test_dir("reapply-after-update").unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let with = |generation: u64| v1::DesiredState {
        routes: routes(300, "10.0.0.11"),
        ..state(generation, 0)
    };
    let want = {
        let mut w: Vec<_> = routes(300, "10.0.0.11")
            .into_iter()
            .map(|r| (r.prefix, vec!["10.0.0.11".to_owned()]))
            .collect();
        w.sort();
        w
    };
    let update = |generation: u64, changed: u32, removed: Option<u32>| v1::UpdateRoutesRequest {
        generation,
        upsert: vec![host_route(changed, "10.0.0.99")],
        remove: removed
            .map(|i| host_route(i, "").prefix)
            .into_iter()
            .collect(),
        next_hop_groups: Vec::new(),
    };

    let mut speaker = Speaker::start(&dir, free_port(), "speaker.log");
    let mut api = client(&dir.join("api.sock")).await;
    let changed = apply_changed(&mut api, with(1)).await;
    assert_eq!(changed, 300);
    api.update_routes(update(2, 5, Some(7))).await.unwrap();
    assert_ne!(held(&mut api).await, want);
    let changed = apply_changed(&mut api, with(3)).await;
    assert_eq!(changed, 2, "the updated and the removed route");
    assert_eq!(held(&mut api).await, want);
    let changed = apply_changed(&mut api, with(4)).await;
    assert_eq!(changed, 0);

    // An update journaled, then a restart: the journal is replayed over the state file.
    api.update_routes(update(5, 9, None)).await.unwrap();
    drop(api);
    drop(speaker);
    speaker = Speaker::start(&dir, free_port(), "speaker-restarted.log");
    let mut api = client(&dir.join("api.sock")).await;
    assert_ne!(
        held(&mut api).await,
        want,
        "the journaled update was restored"
    );
    let changed = apply_changed(&mut api, with(6)).await;
    assert_eq!(changed, 1);
    assert_eq!(held(&mut api).await, want);
    assert!(speaker.running());
    drop(speaker);
    let _ = std::fs::remove_dir_all(&dir);
}

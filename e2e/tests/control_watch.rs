//! Watch on the speaker's Unix socket (no root: a peer on loopback that refuses connections).
//! Every session transition is pushed as it happens, so a state held for microseconds
//! (Connect, before a refused connection fails) is reported and each event's previous state
//! is the one reported before it; the speaker used to sample sessions every 100 ms and missed
//! them. A client that stops reading gets a Resync event where events were dropped, then every
//! peer's state, and goes on receiving; it used to lose them without a word.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use berth_proto::v1;
use v1::watch_event::Event;

/// The speaker, killed on drop (also when an assertion fails).
struct Speaker(Child);

impl Drop for Speaker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(dir: &Path) -> Speaker {
    let log = std::fs::File::create(dir.join("speaker.log")).unwrap();
    Speaker(
        Command::new(berth_e2e::binary("berth-bgp-server"))
            .args(["--grpc-socket", &dir.join("api.sock").display().to_string()])
            .args(["--metrics-addr", "127.0.0.1:0"])
            .args(["--log", "debug"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
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

/// A client on its own connection with a 1 KiB HTTP/2 stream window (the stack's default is
/// megabytes): when it stops reading, the server is held after a few events (and h2's own
/// guard against many small unread DATA frames is never reached).
async fn small_window_client(
    sock: &Path,
) -> v1::speaker_client::SpeakerClient<tonic::transport::Channel> {
    let path = sock.to_path_buf();
    let channel = tonic::transport::Endpoint::from_static("http://berth.invalid")
        .initial_stream_window_size(1024)
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let s = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
            }
        }))
        .await
        .unwrap();
    v1::speaker_client::SpeakerClient::new(channel)
}

/// A port with nothing listening on 127.0.0.1: connections to it are refused at once.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn state(generation: u64, port: u16) -> v1::ApplyRequest {
    v1::ApplyRequest {
        state: Some(v1::DesiredState {
            next_hop_groups: Vec::new(),
            generation,
            global: Some(v1::Global {
                asn: 64512,
                router_id: "10.0.0.11".into(),
                ..Default::default()
            }),
            peers: vec![v1::Peer {
                address: "127.0.0.1".into(),
                asn: 64513,
                port: u32::from(port),
                connect_retry_seconds: 1,
                ..Default::default()
            }],
            routes: vec![],
        }),
    }
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = berth_e2e::test_dir(name).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_session_transition_is_pushed_in_order() {
    let dir = tempdir("watch-push");
    let _speaker = start(&dir);
    let mut c = client(&dir.join("api.sock")).await;
    let mut stream = c.watch(v1::WatchRequest {}).await.unwrap().into_inner();
    c.apply(state(1, closed_port())).await.unwrap();
    let applied = std::time::Instant::now();
    let mut first = None;

    // Idle -> Connect -> Active (refused) -> Connect (retry) -> Active ...: Connect lasts as
    // long as a refused connect on loopback, far below any sampling period.
    let mut seen: Vec<(String, String)> = Vec::new();
    let got = tokio::time::timeout(Duration::from_secs(20), async {
        while seen.iter().filter(|(_, s)| s == "Connect").count() < 2 {
            let Some(e) = stream.message().await.unwrap() else {
                break;
            };
            if let Some(Event::Session(s)) = e.event
                && s.peer == "127.0.0.1"
            {
                first.get_or_insert_with(|| applied.elapsed());
                seen.push((s.previous_state, s.state));
            }
        }
    })
    .await;
    let log = std::fs::read_to_string(dir.join("speaker.log")).unwrap_or_default();
    assert!(
        got.is_ok(),
        "Connect was not reported twice: {seen:?}\n{log}"
    );
    // Each event continues from the one before: nothing in between was lost.
    for pair in seen.windows(2) {
        assert_eq!(pair[1].0, pair[0].1, "a transition is missing: {seen:?}");
    }
    assert!(
        seen.iter().any(|(p, s)| p == "Connect" && s == "Active"),
        "{seen:?}"
    );
    // A figure for the record, not a limit: how soon the new peer's first change arrived.
    eprintln!("first session event {first:?} after the Apply returned; events: {seen:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_falls_behind_gets_a_resync_then_the_peers_state() {
    let dir = tempdir("watch-resync");
    let _speaker = start(&dir);
    let sock = dir.join("api.sock");
    let mut c = client(&sock).await;
    c.apply(state(1, closed_port())).await.unwrap();

    // A watcher that reads nothing while thousands of changes are accepted.
    let mut slow = small_window_client(&sock).await;
    let mut stream = slow.watch(v1::WatchRequest {}).await.unwrap().into_inner();
    let route = v1::Route {
        prefix: "198.51.100.10/32".into(),
        next_hops: vec![v1::NextHop {
            address: "10.0.0.11".into(),
            weight: 0,
        }],
        ..Default::default()
    };
    let changes = 2000u64;
    for g in 2..2 + changes {
        let req = if g % 2 == 0 {
            v1::UpdateRoutesRequest {
                next_hop_groups: Vec::new(),
                generation: g,
                upsert: vec![route.clone()],
                remove: vec![],
            }
        } else {
            v1::UpdateRoutesRequest {
                next_hop_groups: Vec::new(),
                generation: g,
                upsert: vec![],
                remove: vec![route.prefix.clone()],
            }
        };
        c.update_routes(req).await.unwrap();
    }

    // Now read: somewhere a Resync, then the peer's state with no previous state, and the
    // stream goes on (a change made now arrives).
    let mut applied = 0u64;
    let mut resync = None;
    let mut after_resync = Vec::new();
    let last = 2 + changes;
    c.update_routes(v1::UpdateRoutesRequest {
        next_hop_groups: Vec::new(),
        generation: last,
        upsert: vec![route.clone()],
        remove: vec![],
    })
    .await
    .unwrap();
    let read = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(e) = stream.message().await.unwrap() {
            match e.event {
                Some(Event::Applied(a)) => {
                    applied += 1;
                    if a.generation == last {
                        return;
                    }
                }
                Some(Event::Resync(r)) => resync = Some(r.missed),
                Some(Event::Session(s)) if resync.is_some() => after_resync.push(s),
                _ => {}
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the last change never arrived: {applied} applied events, resync {resync:?}, \
         {} session events after it",
        after_resync.len()
    );
    let missed = resync.expect("no Resync event though the client fell behind");
    assert!(missed > 0);
    assert!(
        applied + missed >= changes,
        "events lost without being counted: {applied} received + {missed} missed < {changes}"
    );
    assert!(
        after_resync
            .iter()
            .any(|s| s.peer == "127.0.0.1" && s.previous_state.is_empty()),
        "no fresh peer state after the Resync: {after_resync:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

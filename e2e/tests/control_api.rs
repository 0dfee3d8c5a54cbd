//! The speaker's control API (`berth.bgp.v1`) over its Unix socket, checked at a real FRR in
//! network namespaces (needs root and Debian's frr): apply, re-apply (nothing on the wire),
//! partial change (only that prefix touched), stale generation, invalid arguments, a restart
//! that announces the persisted state before any client connects, a corrupt state file.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_e2e::frr::{BGPD, Frr, ZEBRA, wait_for};
use berth_e2e::lab_unavailable;
use berth_e2e::netns::Lab;
use berth_proto::v1;

static SPEAKER: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| berth_e2e::binary("berth-bgp-server"));

const FRR_CONF: &str = "frr defaults traditional
hostname r
router bgp 64513
 bgp router-id 10.0.0.1
 no bgp ebgp-requires-policy
 neighbor 10.0.0.11 remote-as 64512
 neighbor 10.0.0.11 timers 3 9
 neighbor 10.0.0.11 timers connect 1
";

fn route(prefix: &str, nhs: &[&str]) -> v1::Route {
    v1::Route {
        prefix: prefix.into(),
        next_hops: nhs
            .iter()
            .map(|a| v1::NextHop {
                address: (*a).into(),
                weight: 0,
            })
            .collect(),
        ..Default::default()
    }
}

fn state(generation: u64, routes: Vec<v1::Route>) -> v1::DesiredState {
    v1::DesiredState {
        next_hop_groups: Vec::new(),
        generation,
        global: Some(v1::Global {
            asn: 64512,
            router_id: "10.0.0.11".into(),
            ..Default::default()
        }),
        peers: vec![v1::Peer {
            address: "10.0.0.1".into(),
            asn: 64513,
            hold_time_seconds: Some(9),
            connect_retry_seconds: 1,
            ..Default::default()
        }],
        routes,
    }
}

fn nexthops(route: &str) -> usize {
    route
        .lines()
        .filter(|l| l.trim_start().starts_with("nexthop via"))
        .count()
}

/// FRR's count of UPDATEs received from the speaker.
fn updates_received(frr: &Frr, lab: &Lab) -> u64 {
    let json = frr.vtysh(lab, "show bgp neighbors 10.0.0.11 json").unwrap();
    let compact: String = json.split_whitespace().collect();
    compact
        .split("\"updatesRecv\":")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no updatesRecv in {json}"))
}

/// The RIB version FRR gave a prefix: it changes whenever the prefix is updated.
fn rib_version(frr: &Frr, lab: &Lab, prefix: &str) -> String {
    let out = frr
        .vtysh(lab, &format!("show bgp ipv4 unicast {prefix}"))
        .unwrap();
    out.lines()
        .find_map(|l| l.split(", version ").nth(1))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| panic!("no version for {prefix}: {out}"))
}

fn start_speaker(lab: &mut Lab, node: &str, dir: &Path, log: &str) -> (u32, PathBuf) {
    let sock = dir.join("api.sock");
    let state = dir.join("state");
    let pid = lab
        .spawn(
            node,
            &SPEAKER,
            &[
                "--grpc-socket",
                &sock.display().to_string(),
                "--state-dir",
                &state.display().to_string(),
                "--metrics-addr",
                "127.0.0.1:9473",
            ],
            &dir.join(log),
        )
        .unwrap();
    (pid, sock)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_reapply_partial_stale_invalid_restart_and_corrupt_state() {
    if let Some(why) = lab_unavailable(&[ZEBRA, BGPD]) {
        eprintln!("skipped: {why}");
        return;
    }
    let dir = berth_e2e::test_dir("control").unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut lab = Lab::new("bc-");
    let router = lab.namespace("r").unwrap();
    let node = lab.namespace("n").unwrap();
    lab.link(
        &router,
        "veth-r",
        &["10.0.0.1/24"],
        &node,
        "veth-n",
        &["10.0.0.11/24"],
    )
    .unwrap();
    let frr = Frr::start(&mut lab, &router, &dir, FRR_CONF).unwrap();
    let (first, sock) = start_speaker(&mut lab, &node, &dir, "speaker-1.log");
    let log = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    let mut api = client(&sock).await;

    // Apply: the route reaches FRR's kernel with three nexthops.
    let one = route("198.51.100.10/32", &["10.0.0.11", "10.0.0.12", "10.0.0.13"]);
    let r = api
        .apply(v1::ApplyRequest {
            state: Some(state(1, vec![one.clone()])),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (r.generation, r.routes_changed, r.peers_changed),
        (1, 1, true)
    );
    let up = wait_for(Duration::from_secs(30), || {
        frr.kernel_route(&lab, "198.51.100.10")
            .ok()
            .filter(|r| nexthops(r) == 3)
    });
    assert!(
        up.is_some(),
        "route never installed:\n{}",
        log("speaker-1.log")
    );

    // Re-apply: nothing changes and nothing reaches the wire.
    let before = updates_received(&frr, &lab);
    let r = api
        .apply(v1::ApplyRequest {
            state: Some(state(1, vec![one.clone()])),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.routes_changed, r.peers_changed), (0, false));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        updates_received(&frr, &lab),
        before,
        "a re-apply sent UPDATEs"
    );

    // The operator's resync: the same state under a newer generation. Accepted with that
    // generation, and neither the state file (not rewritten: same inode, same mtime) nor the
    // peer sees anything.
    let file = dir.join("state").join("desired-state.pb");
    let stamp = |f: &Path| {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(f).unwrap();
        (
            m.ino(),
            m.mtime(),
            m.mtime_nsec(),
            std::fs::read(f).unwrap(),
        )
    };
    let file_before = stamp(&file);
    let r = api
        .apply(v1::ApplyRequest {
            state: Some(state(2, vec![one.clone()])),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (r.generation, r.routes_changed, r.peers_changed),
        (2, 0, false)
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        updates_received(&frr, &lab),
        before,
        "an identical re-apply with a newer generation sent UPDATEs"
    );
    assert!(
        stamp(&file) == file_before,
        "an identical re-apply rewrote the state file"
    );
    let s = api
        .get_state(v1::GetStateRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.generation, 2);

    // Partial change: a second prefix arrives; the first is not touched at FRR.
    let version = rib_version(&frr, &lab, "198.51.100.10/32");
    let two = route("198.51.100.20/32", &["10.0.0.12"]);
    let r = api
        .apply(v1::ApplyRequest {
            state: Some(state(2, vec![one.clone(), two.clone()])),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.routes_changed, 1);
    let added = wait_for(Duration::from_secs(15), || {
        frr.kernel_route(&lab, "198.51.100.20")
            .ok()
            .filter(|r| !r.is_empty())
    });
    assert!(added.is_some(), "second prefix never arrived");
    assert_eq!(
        updates_received(&frr, &lab),
        before + 1,
        "more than the one UPDATE for the new prefix"
    );
    assert_eq!(rib_version(&frr, &lab, "198.51.100.10/32"), version);

    // A stale generation is refused, and changes nothing.
    let e = api
        .apply(v1::ApplyRequest {
            state: Some(state(1, vec![])),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("older than the applied 2"), "{e:?}");

    // Invalid arguments name the field.
    let mut bad = state(3, vec![route("198.51.100.30/32", &["fd00::1"])]);
    let e = api
        .apply(v1::ApplyRequest {
            state: Some(bad.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(
        e.message()
            .starts_with("routes[0].next_hops: fd00::1 is not of the prefix's family"),
        "{e:?}"
    );
    bad.peers.push(bad.peers[0].clone());
    bad.routes.clear();
    let e = api
        .apply(v1::ApplyRequest { state: Some(bad) })
        .await
        .unwrap_err();
    assert!(
        e.message()
            .starts_with("peers[1].address: 10.0.0.1 is configured twice"),
        "{e:?}"
    );
    let e = api
        .update_routes(v1::UpdateRoutesRequest {
            next_hop_groups: Vec::new(),
            generation: 3,
            upsert: vec![route("198.51.100.40/24", &["10.0.0.11"])],
            remove: vec![],
        })
        .await
        .unwrap_err();
    assert!(
        e.message()
            .starts_with("upsert[0].prefix: has host bits set"),
        "{e:?}"
    );

    // UpdateRoutes: withdraw the second prefix alone.
    api.update_routes(v1::UpdateRoutesRequest {
        next_hop_groups: Vec::new(),
        generation: 3,
        upsert: vec![],
        remove: vec!["198.51.100.20/32".into()],
    })
    .await
    .unwrap();
    let gone = wait_for(Duration::from_secs(15), || {
        frr.kernel_route(&lab, "198.51.100.20")
            .ok()
            .filter(|r| r.is_empty())
    });
    assert!(gone.is_some(), "removed prefix still at FRR");
    drop(api);

    // Restart without any client: the persisted state is announced at once (graceful restart
    // keeps the route meanwhile; it must still be there, and not stale, afterwards).
    lab.kill(first);
    let (_second, sock) = start_speaker(&mut lab, &node, &dir, "speaker-2.log");
    let mut api = client(&sock).await;
    let s = api
        .get_state(v1::GetStateRequest {
            include_routes: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.generation, 3, "persisted generation not restored");
    assert_eq!(s.routes, vec![one.clone()]);
    let fresh = wait_for(Duration::from_secs(30), || {
        frr.vtysh(&lab, "show bgp ipv4 unicast 198.51.100.10/32")
            .ok()
            .filter(|o| o.contains("10.0.0.13") && !o.contains("stale"))
    });
    assert!(
        fresh.is_some(),
        "the restarted speaker did not re-announce the persisted state:\n{}",
        log("speaker-2.log")
    );
    let state_now = api
        .get_state(v1::GetStateRequest::default())
        .await
        .unwrap()
        .into_inner();
    let peer = &state_now.peers[0];
    assert_eq!(peer.state, "Established");
    assert!(peer.add_path_ipv4);
    assert_eq!(peer.paths_announced, 3);
    drop(api);

    // A corrupt state file is reported and ignored: the speaker starts empty.
    lab.kill(_second);
    std::fs::write(dir.join("state/desired-state.pb"), b"not a state").unwrap();
    let (_third, sock) = start_speaker(&mut lab, &node, &dir, "speaker-3.log");
    let mut api = client(&sock).await;
    let s = api
        .get_state(v1::GetStateRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.generation, 0);
    assert!(
        log("speaker-3.log").contains("persisted state not used"),
        "{}",
        log("speaker-3.log")
    );
}

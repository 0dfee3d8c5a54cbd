//! The speaker against a real FRR in network namespaces (needs root and Debian's frr).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use berth_e2e::frr::{BGPD, Frr, ZEBRA, wait_for};
use berth_e2e::lab_unavailable;
use berth_e2e::netns::Lab;

static SPEAKER: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| berth_e2e::binary("berth-bgp-server"));

// The configuration docs/routers.md shows users (dual-stack, ADD-PATH receive and ECMP by
// FRR's defaults).
const FRR_CONF: &str = include_str!("../../docs/routers/frr.conf");

const SPEAKER_CONF: &str = "asn: 64512
routerId: 10.0.0.11
peers:
  - address: 10.0.0.1
    asn: 64513
    holdTime: 9
  - address: fd00::1
    asn: 64513
    holdTime: 9
routes:
  - prefix: 198.51.100.10/32
    nextHops: [10.0.0.11, 10.0.0.12, 10.0.0.13]
  - prefix: 2001:db8::10/128
    nextHops: [fd00::11, fd00::12]
";

fn nexthops(route: &str) -> usize {
    route
        .lines()
        .filter(|l| l.trim_start().starts_with("nexthop via"))
        .count()
}

#[test]
fn frr_installs_one_nexthop_per_node_and_withdraws_on_stop() {
    if let Some(why) = lab_unavailable(&[ZEBRA, BGPD]) {
        eprintln!("skipped: {why}");
        return;
    }
    let dir = tempdir("ecmp");
    let mut lab = Lab::new("bs1-");
    let router = lab.namespace("r").unwrap();
    let node = lab.namespace("n").unwrap();
    lab.link(
        &router,
        "veth-r",
        &["10.0.0.1/24", "fd00::1/64"],
        &node,
        "veth-n",
        &["10.0.0.11/24", "fd00::11/64"],
    )
    .unwrap();
    let frr = Frr::start(&mut lab, &router, &dir, FRR_CONF).unwrap();
    std::fs::write(dir.join("speaker.yaml"), SPEAKER_CONF).unwrap();
    let conf = dir.join("speaker.yaml").display().to_string();
    let speaker = lab
        .spawn(
            &node,
            &SPEAKER,
            // Decommissioning: the routes must go at SIGTERM (the default keeps them at a
            // graceful-restart helper such as FRR).
            &[
                "--config",
                &conf,
                "--log",
                "debug",
                "--withdraw-on-shutdown",
            ],
            &dir.join("speaker.log"),
        )
        .unwrap();

    let v4 = wait_for(Duration::from_secs(30), || {
        frr.kernel_route(&lab, "198.51.100.10")
            .ok()
            .filter(|r| nexthops(r) == 3)
    });
    let log = || std::fs::read_to_string(dir.join("speaker.log")).unwrap_or_default();
    assert!(
        v4.is_some(),
        "FRR never held 198.51.100.10 with 3 nexthops; speaker log:\n{}",
        log()
    );
    let v4 = v4.unwrap();
    for nh in ["10.0.0.11", "10.0.0.12", "10.0.0.13"] {
        assert!(v4.contains(&format!("via {nh} ")), "{nh} missing from {v4}");
    }
    let v6 = wait_for(Duration::from_secs(30), || {
        frr.kernel_route(&lab, "2001:db8::10")
            .ok()
            .filter(|r| nexthops(r) == 2)
    });
    assert!(
        v6.is_some(),
        "FRR never held 2001:db8::10 with 2 nexthops: {:?}\n{}",
        frr.kernel_route(&lab, "2001:db8::10"),
        log()
    );
    let summary = frr
        .vtysh(&lab, "show bgp ipv4 unicast 198.51.100.10/32")
        .unwrap();
    // Path IDs are the next hops' addresses (10.0.0.11 = 167772171): stable across restarts.
    for id in [167_772_171u32, 167_772_172, 167_772_173] {
        assert!(
            summary.contains(&format!("AddPath ID: RX {id},")),
            "FRR did not receive ADD-PATH path {id}:\n{summary}"
        );
    }

    // The speaker's own view, from its metrics endpoint inside the node namespace.
    let metrics = lab
        .exec(&node, "python3", &["-c", "import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:9473/metrics').read().decode())"])
        .unwrap();
    assert!(
        metrics.contains(r#"berth_bgp_session_state{peer="10.0.0.1",state="Established"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"berth_bgp_paths_announced{peer="10.0.0.1"} 3"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"berth_bgp_prefixes_announced{peer="10.0.0.1"} 1"#),
        "{metrics}"
    );

    // Removing one next hop removes exactly that nexthop (SIGHUP reloads the routes).
    std::fs::write(
        dir.join("speaker.yaml"),
        SPEAKER_CONF.replace(", 10.0.0.12, 10.0.0.13]", ", 10.0.0.13]"),
    )
    .unwrap();
    berth_e2e::netns::run("kill", &["-HUP", &speaker.to_string()]).unwrap();
    let two = wait_for(Duration::from_secs(15), || {
        frr.kernel_route(&lab, "198.51.100.10")
            .ok()
            .filter(|r| nexthops(r) == 2)
    });
    let two = two.unwrap_or_else(|| {
        panic!(
            "nexthop not removed: {:?}\n{}",
            frr.kernel_route(&lab, "198.51.100.10"),
            log()
        )
    });
    assert!(
        two.contains("via 10.0.0.11 ")
            && two.contains("via 10.0.0.13 ")
            && !two.contains("10.0.0.12"),
        "{two}"
    );

    lab.terminate(speaker);
    let gone = wait_for(Duration::from_secs(15), || {
        frr.kernel_route(&lab, "198.51.100.10")
            .ok()
            .filter(|r| r.is_empty())
    });
    assert!(
        gone.is_some(),
        "route still installed after the speaker stopped with --withdraw-on-shutdown"
    );
}

fn tempdir(test: &str) -> std::path::PathBuf {
    let d = berth_e2e::test_dir(&format!("bgp-frr-{test}")).unwrap();
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// RFC 4724: a speaker killed with SIGKILL and started again never makes the route leave the
/// router's kernel: FRR keeps the stale paths until our End-of-RIB.
#[test]
fn graceful_restart_keeps_the_route_through_a_crash() {
    if let Some(why) = lab_unavailable(&[ZEBRA, BGPD]) {
        eprintln!("skipped: {why}");
        return;
    }
    let dir = tempdir("gr");
    let mut lab = Lab::new("bs2-");
    let router = lab.namespace("r").unwrap();
    let node = lab.namespace("n").unwrap();
    lab.link(
        &router,
        "veth-r",
        &["10.0.0.1/24", "fd00::1/64"],
        &node,
        "veth-n",
        &["10.0.0.11/24", "fd00::11/64"],
    )
    .unwrap();
    let frr = Frr::start(&mut lab, &router, &dir, FRR_CONF).unwrap();
    std::fs::write(dir.join("speaker.yaml"), SPEAKER_CONF).unwrap();
    let conf = dir.join("speaker.yaml").display().to_string();
    let first = lab
        .spawn(
            &node,
            &SPEAKER,
            &["--config", &conf],
            &dir.join("speaker-1.log"),
        )
        .unwrap();
    let up = wait_for(Duration::from_secs(30), || {
        frr.kernel_route(&lab, "198.51.100.10")
            .ok()
            .filter(|r| nexthops(r) == 3)
    });
    assert!(up.is_some(), "route never installed");

    lab.kill(first);
    let restarted_at = std::time::Instant::now();
    let mut restarted = false;
    // Watch the kernel route for 8 s: 2 s with the speaker dead, then through its restart.
    while restarted_at.elapsed() < Duration::from_secs(8) {
        let route = frr.kernel_route(&lab, "198.51.100.10").unwrap();
        assert_eq!(
            nexthops(&route),
            3,
            "route flapped {:?} after the crash: {route:?}",
            restarted_at.elapsed()
        );
        if !restarted && restarted_at.elapsed() > Duration::from_secs(2) {
            lab.spawn(
                &node,
                &SPEAKER,
                &["--config", &conf],
                &dir.join("speaker-2.log"),
            )
            .unwrap();
            restarted = true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let summary = frr
        .vtysh(&lab, "show bgp ipv4 unicast 198.51.100.10/32")
        .unwrap();
    assert!(
        !summary.contains("stale"),
        "paths still stale after End-of-RIB:\n{summary}"
    );
    let state = frr.vtysh(&lab, "show bgp ipv4 unicast summary").unwrap();
    assert!(
        state.lines().any(|l| l.starts_with("10.0.0.11")
            && l.trim_end().ends_with("N/A")
            && !l.contains("Active")),
        "session not re-established:\n{state}"
    );
}

/// RFC 2385: with the right password the session comes up; with a wrong one it never does.
#[test]
fn md5_password_right_and_wrong() {
    if let Some(why) = lab_unavailable(&[ZEBRA, BGPD]) {
        eprintln!("skipped: {why}");
        return;
    }
    let dir = tempdir("md5");
    let mut lab = Lab::new("bs3-");
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
    let conf = FRR_CONF.replace(
        " neighbor 10.0.0.11 timers 3 9\n",
        " neighbor 10.0.0.11 timers 3 9\n neighbor 10.0.0.11 password s3cret\n",
    );
    let frr = Frr::start(&mut lab, &router, &dir, &conf).unwrap();
    let speaker_conf = |pw: &str| {
        format!(
            "asn: 64512
routerId: 10.0.0.11
peers:
  - address: 10.0.0.1
    asn: 64513
    holdTime: 9
    connectRetry: 1
    password: {pw}
routes:
  - prefix: 198.51.100.10/32
    nextHops: [10.0.0.11]
"
        )
    };
    let established = |frr: &Frr, lab: &Lab| {
        frr.vtysh(lab, "show bgp neighbors 10.0.0.11 json")
            .ok()
            .filter(|s| {
                let compact: String = s.split_whitespace().collect();
                compact.contains(r#""bgpState":"Established""#)
            })
    };

    std::fs::write(dir.join("wrong.yaml"), speaker_conf("wrong")).unwrap();
    let wrong = lab
        .spawn(
            &node,
            &SPEAKER,
            &["--config", &dir.join("wrong.yaml").display().to_string()],
            &dir.join("wrong.log"),
        )
        .unwrap();
    assert!(
        wait_for(Duration::from_secs(6), || established(&frr, &lab)).is_none(),
        "session came up with a wrong password"
    );
    assert!(frr.kernel_route(&lab, "198.51.100.10").unwrap().is_empty());
    lab.terminate(wrong);

    std::fs::write(dir.join("right.yaml"), speaker_conf("s3cret")).unwrap();
    lab.spawn(
        &node,
        &SPEAKER,
        &["--config", &dir.join("right.yaml").display().to_string()],
        &dir.join("right.log"),
    )
    .unwrap();
    let up = wait_for(Duration::from_secs(30), || {
        frr.kernel_route(&lab, "198.51.100.10")
            .ok()
            .filter(|r| !r.is_empty())
    });
    assert!(
        up.is_some(),
        "no session with the right password: {:?}\n{}",
        frr.vtysh(&lab, "show bgp ipv4 unicast summary"),
        std::fs::read_to_string(dir.join("right.log")).unwrap_or_default()
    );
    // The same probe that saw no session above sees this one.
    assert!(established(&frr, &lab).is_some());
}

/// Weighted ECMP: next hops carrying link bandwidth 3:2:1 become kernel nexthop weights in the
/// same proportion at FRR (which maps bandwidths onto weights of up to 100).
#[test]
fn weighted_next_hops_become_kernel_weights() {
    if let Some(why) = lab_unavailable(&[ZEBRA, BGPD]) {
        eprintln!("skipped: {why}");
        return;
    }
    let dir = tempdir("wecmp");
    let mut lab = Lab::new("bs4-");
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
    let conf = "asn: 64512
routerId: 10.0.0.11
peers:
  - address: 10.0.0.1
    asn: 64513
    holdTime: 9
routes:
  - prefix: 198.51.100.20/32
    nextHops:
      - {address: 10.0.0.11, weight: 3}
      - {address: 10.0.0.12, weight: 2}
      - {address: 10.0.0.13, weight: 1}
";
    std::fs::write(dir.join("speaker.yaml"), conf).unwrap();
    let c = dir.join("speaker.yaml").display().to_string();
    lab.spawn(&node, &SPEAKER, &["--config", &c], &dir.join("speaker.log"))
        .unwrap();
    let route = wait_for(Duration::from_secs(30), || {
        frr.kernel_route(&lab, "198.51.100.20")
            .ok()
            .filter(|r| nexthops(r) == 3)
    })
    .unwrap_or_else(|| {
        panic!(
            "no three-nexthop route: {:?}",
            frr.kernel_route(&lab, "198.51.100.20")
        )
    });
    let weight = |nh: &str| -> u32 {
        route
            .lines()
            .find(|l| l.contains(&format!("via {nh} ")))
            .and_then(|l| l.split("weight ").nth(1))
            .and_then(|w| w.split_whitespace().next())
            .and_then(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("no weight for {nh} in:\n{route}"))
    };
    eprintln!("{route}");
    let (a, b, c) = (
        weight("10.0.0.11"),
        weight("10.0.0.12"),
        weight("10.0.0.13"),
    );
    // FRR scales to 1..100 and rounds: allow one unit of rounding per weight.
    assert!(
        a.abs_diff(3 * c) <= 3 && b.abs_diff(2 * c) <= 2 && a > b && b > c,
        "weights not 3:2:1: {a}:{b}:{c}\n{route}"
    );
}

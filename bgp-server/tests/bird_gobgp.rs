//! The speaker against BIRD 2 and GoBGP in network namespaces (needs root, bird2, gobgpd).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use berth_e2e::bird::{BIRD, Bird};
use berth_e2e::frr::wait_for;
use berth_e2e::gobgp::{GOBGPD, GoBgp};
use berth_e2e::lab_unavailable;
use berth_e2e::netns::Lab;

const SPEAKER: &str = env!("CARGO_BIN_EXE_berth-bgp-server");

const SPEAKER_CONF: &str = "asn: 64512
routerId: 10.0.0.11
peers:
  - address: 10.0.0.1
    asn: 64513
    holdTime: 9
routes:
  - prefix: 198.51.100.10/32
    nextHops: [10.0.0.11, 10.0.0.12, 10.0.0.13]
";

fn setup(name: &str) -> (Lab, String, String, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("berth-bgp-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut lab = Lab::new(&format!("{name}-"));
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
    (lab, router, node, dir)
}

fn start_speaker(lab: &mut Lab, node: &str, dir: &std::path::Path) {
    std::fs::write(dir.join("speaker.yaml"), SPEAKER_CONF).unwrap();
    let conf = dir.join("speaker.yaml").display().to_string();
    lab.spawn(
        node,
        SPEAKER,
        &["--config", &conf, "--log", "debug"],
        &dir.join("speaker.log"),
    )
    .unwrap();
}

#[test]
fn bird_merges_the_paths_into_one_multipath_kernel_route() {
    if let Some(why) = lab_unavailable(&[BIRD]) {
        eprintln!("skipped: {why}");
        return;
    }
    let (mut lab, router, node, dir) = setup("bsb");
    let conf = "router id 10.0.0.1;
protocol device {}
protocol kernel { ipv4 { export all; }; merge paths on limit 8; }
protocol bgp berth {
  local 10.0.0.1 as 64513;
  neighbor 10.0.0.11 as 64512;
  hold time 9;
  ipv4 { import all; export none; add paths rx; };
}
";
    let bird = Bird::start(&mut lab, &router, &dir, conf).unwrap();
    start_speaker(&mut lab, &node, &dir);
    let route = wait_for(Duration::from_secs(30), || {
        lab.exec(&router, "ip", &["-4", "route", "show", "198.51.100.10"])
            .ok()
            .filter(|r| {
                r.lines()
                    .filter(|l| l.trim_start().starts_with("nexthop via"))
                    .count()
                    == 3
            })
    });
    let log = std::fs::read_to_string(dir.join("speaker.log")).unwrap_or_default();
    assert!(
        route.is_some(),
        "BIRD never installed three nexthops: {:?}\n{:?}\n{log}",
        lab.exec(&router, "ip", &["route"]),
        bird.birdc(&lab, "show route all")
    );
}

#[test]
fn gobgp_receives_one_path_per_next_hop() {
    if let Some(why) = lab_unavailable(&[GOBGPD]) {
        eprintln!("skipped: {why}");
        return;
    }
    let (mut lab, router, node, dir) = setup("bsg");
    let toml = r#"[global.config]
  as = 64513
  router-id = "10.0.0.1"

[[neighbors]]
  [neighbors.config]
    neighbor-address = "10.0.0.11"
    peer-as = 64512
  [neighbors.timers.config]
    hold-time = 9
    keepalive-interval = 3
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv4-unicast"
    [neighbors.afi-safis.add-paths.config]
      receive = true
"#;
    let gobgp = GoBgp::start(&mut lab, &router, &dir, toml).unwrap();
    start_speaker(&mut lab, &node, &dir);
    let rib = wait_for(Duration::from_secs(30), || {
        gobgp
            .gobgp(&lab, &["global", "rib", "-a", "ipv4"])
            .ok()
            .filter(|r| {
                r.lines().filter(|l| l.contains("198.51.100.10/32")).count() == 3
                    && ["10.0.0.11", "10.0.0.12", "10.0.0.13"]
                        .iter()
                        .all(|nh| r.contains(nh))
            })
    });
    let log = std::fs::read_to_string(dir.join("speaker.log")).unwrap_or_default();
    assert!(
        rib.is_some(),
        "GoBGP never held three paths: {:?}\n{log}",
        gobgp.gobgp(&lab, &["global", "rib", "-a", "ipv4"])
    );
}

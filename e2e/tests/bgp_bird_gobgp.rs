//! The speaker against BIRD 2 and GoBGP in network namespaces (needs root, bird2, gobgpd, nft).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use berth_e2e::bird::{BIRD, Bird};
use berth_e2e::frr::wait_for;
use berth_e2e::gobgp::{GOBGPD, GoBgp};
use berth_e2e::lab_unavailable;
use berth_e2e::netns::Lab;

static SPEAKER: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| berth_e2e::binary("berth-bgp-server"));

/// One transport family: the router's address, the node's, and the route announced over it.
struct Family {
    router: &'static str,
    node: &'static str,
    prefix: &'static str,
    next_hops: [&'static str; 3],
}

const V4: Family = Family {
    router: "10.0.0.1",
    node: "10.0.0.11",
    prefix: "198.51.100.10/32",
    next_hops: ["10.0.0.11", "10.0.0.12", "10.0.0.13"],
};

const V6: Family = Family {
    router: "fd00::1",
    node: "fd00::11",
    prefix: "2001:db8::10/128",
    next_hops: ["fd00::11", "fd00::12", "fd00::13"],
};

impl Family {
    fn speaker_conf(&self) -> String {
        format!(
            "asn: 64512
routerId: 10.0.0.11
peers:
  - address: {}
    asn: 64513
    holdTime: 9
routes:
  - prefix: {}
    nextHops: [{}]
",
            self.router,
            self.prefix,
            self.next_hops.join(", ")
        )
    }

    fn host(&self) -> &'static str {
        self.prefix.split('/').next().unwrap_or_default()
    }

    fn ip_flag(&self) -> &'static str {
        if self.router.contains(':') {
            "-6"
        } else {
            "-4"
        }
    }
}

fn setup(name: &str) -> (Lab, String, String, std::path::PathBuf) {
    let dir = berth_e2e::test_dir(&format!("bgp-{name}")).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut lab = Lab::new(&format!("{name}-"));
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
    (lab, router, node, dir)
}

fn start_speaker(lab: &mut Lab, node: &str, dir: &std::path::Path, family: &Family) {
    std::fs::write(dir.join("speaker.yaml"), family.speaker_conf()).unwrap();
    let conf = dir.join("speaker.yaml").display().to_string();
    lab.spawn(
        node,
        &SPEAKER,
        &["--config", &conf, "--log", "debug"],
        &dir.join("speaker.log"),
    )
    .unwrap();
}

#[test]
fn bird_merges_the_paths_into_one_multipath_kernel_route_v4() {
    bird_merges(&V4, "bb4");
}

#[test]
fn bird_merges_the_paths_into_one_multipath_kernel_route_over_ipv6() {
    bird_merges(&V6, "bb6");
}

fn bird_merges(family: &Family, name: &str) {
    if let Some(why) = lab_unavailable(&[BIRD]) {
        eprintln!("skipped: {why}");
        return;
    }
    let (mut lab, router, node, dir) = setup(name);
    let channel = if family.router.contains(':') {
        "ipv6"
    } else {
        "ipv4"
    };
    let conf = format!(
        "router id 10.0.0.1;
protocol device {{}}
protocol kernel {{ {channel} {{ export all; }}; merge paths on limit 8; }}
protocol bgp berth {{
  local {} as 64513;
  neighbor {} as 64512;
  hold time 9;
  {channel} {{ import all; export none; add paths rx; }};
}}
",
        family.router, family.node
    );
    let bird = Bird::start(&mut lab, &router, &dir, &conf).unwrap();
    start_speaker(&mut lab, &node, &dir, family);
    let route = wait_for(Duration::from_secs(30), || {
        lab.exec(
            &router,
            "ip",
            &[family.ip_flag(), "route", "show", family.host()],
        )
        .ok()
        .filter(|r| {
            r.lines()
                .filter(|l| l.trim_start().starts_with("nexthop via"))
                .count()
                == 3
        })
    });
    let log = std::fs::read_to_string(dir.join("speaker.log")).unwrap_or_default();
    let route = route.unwrap_or_else(|| {
        panic!(
            "BIRD never installed three nexthops: {:?}\n{:?}\n{log}",
            lab.exec(&router, "ip", &[family.ip_flag(), "route"]),
            bird.birdc(&lab, "show route all")
        )
    });
    for nh in family.next_hops {
        assert!(
            route.contains(&format!("via {nh} ")),
            "{nh} missing: {route}"
        );
    }
}

#[test]
fn gobgp_receives_one_path_per_next_hop_v4() {
    gobgp_receives(&V4, "bg4");
}

#[test]
fn gobgp_receives_one_path_per_next_hop_over_ipv6() {
    gobgp_receives(&V6, "bg6");
}

fn gobgp_receives(family: &Family, name: &str) {
    if let Some(why) = lab_unavailable(&[GOBGPD]) {
        eprintln!("skipped: {why}");
        return;
    }
    let (mut lab, router, node, dir) = setup(name);
    let afi = if family.router.contains(':') {
        "ipv6"
    } else {
        "ipv4"
    };
    let toml = format!(
        r#"[global.config]
  as = 64513
  router-id = "10.0.0.1"

[[neighbors]]
  [neighbors.config]
    neighbor-address = "{}"
    peer-as = 64512
  [neighbors.timers.config]
    hold-time = 9
    keepalive-interval = 3
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "{afi}-unicast"
    [neighbors.afi-safis.add-paths.config]
      receive = true
"#,
        family.node
    );
    let gobgp = GoBgp::start(&mut lab, &router, &dir, &toml).unwrap();
    start_speaker(&mut lab, &node, &dir, family);
    let rib = wait_for(Duration::from_secs(30), || {
        gobgp
            .gobgp(&lab, &["global", "rib", "-a", afi])
            .ok()
            .filter(|r| {
                r.lines().filter(|l| l.contains(family.prefix)).count() == 3
                    && family.next_hops.iter().all(|nh| r.contains(nh))
            })
    });
    let log = std::fs::read_to_string(dir.join("speaker.log")).unwrap_or_default();
    assert!(
        rib.is_some(),
        "GoBGP never held three paths: {:?}\n{log}",
        gobgp.gobgp(&lab, &["global", "rib", "-a", afi])
    );
}

/// RFC 6793 toward an old speaker: BIRD with `enable as4 off` (2-octet ASNs only) peers with
/// the speaker at a 4-octet ASN (configured there as AS_TRANS, 23456, which is what a 2-octet
/// speaker sees in the OPEN). The announcements carry AS_TRANS (23456) in AS_PATH and the
/// real ASN in AS4_PATH; BIRD rebuilds the path, so its RIB holds 4200000001, not 23456.
#[test]
fn a_two_octet_bird_sees_the_four_octet_path_through_as4_path() {
    for family in [&V4, &V6] {
        two_octet_bird_sees_as4_path(family);
    }
}

fn two_octet_bird_sees_as4_path(family: &Family) {
    if let Some(why) = lab_unavailable(&[BIRD]) {
        eprintln!("skipped: {why}");
        return;
    }
    let name = if family.router.contains(':') {
        "ba6"
    } else {
        "ba4"
    };
    let (mut lab, router, node, dir) = setup(name);
    let channel = if family.router.contains(':') {
        "ipv6"
    } else {
        "ipv4"
    };
    let conf = format!(
        "router id 10.0.0.1;
protocol device {{}}
protocol bgp berth {{
  local {} as 64513;
  neighbor {} external;
  enable as4 off;
  hold time 9;
  {channel} {{ import all; export none; }};
}}
",
        family.router, family.node
    );
    let bird = Bird::start(&mut lab, &router, &dir, &conf).unwrap();
    let speaker = family
        .speaker_conf()
        .replace("asn: 64512", "asn: 4200000001");
    std::fs::write(dir.join("speaker.yaml"), speaker).unwrap();
    let conf = dir.join("speaker.yaml").display().to_string();
    lab.spawn(
        &node,
        &SPEAKER,
        &["--config", &conf, "--log", "debug"],
        &dir.join("speaker.log"),
    )
    .unwrap();
    let route = wait_for(Duration::from_secs(30), || {
        bird.birdc(&lab, &format!("show route {} all", family.prefix))
            .ok()
            .filter(|r| r.contains("BGP.as_path"))
    });
    let route = route.unwrap_or_else(|| {
        panic!(
            "BIRD never received {}: {:?}\n{}",
            family.prefix,
            bird.birdc(&lab, "show protocols all berth"),
            std::fs::read_to_string(dir.join("speaker.log")).unwrap_or_default()
        )
    });
    // The session really is 2-octet: BIRD did not negotiate AS4.
    let proto = bird.birdc(&lab, "show protocols all berth").unwrap();
    let local_caps = proto
        .split("Local capabilities")
        .nth(1)
        .and_then(|s| s.split("Neighbor capabilities").next())
        .unwrap_or_else(|| panic!("no capabilities in {proto}"));
    assert!(
        !local_caps.contains("4-octet AS numbers"),
        "BIRD offered 4-octet ASNs: {proto}"
    );
    let as_path = route
        .lines()
        .find(|l| l.contains("BGP.as_path"))
        .unwrap_or_default();
    assert!(
        as_path.contains("4200000001") && !as_path.contains("23456"),
        "BIRD's AS path is not the real one: {route}"
    );
    drop(bird);
    drop(lab);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Single-hop eBGP over IPv6 leaves with hop limit 1 (the TTL of IPv4's single-hop eBGP):
/// nft in BIRD's namespace counts the speaker's packets to port 179 by hop limit. `IP_TTL`,
/// which the speaker set before, does nothing for IPv6 packets: they left with 64.
#[test]
fn single_hop_ebgp_over_ipv6_sends_hop_limit_one() {
    if let Some(why) = lab_unavailable(&[BIRD, "/usr/sbin/nft"]) {
        eprintln!("skipped: {why}");
        return;
    }
    let family = &V6;
    let (mut lab, router, node, dir) = setup("bh6");
    let rules = "table inet hops {
  counter one {}
  counter other {}
  chain input {
    type filter hook input priority 0;
    ip6 saddr fd00::11 tcp dport 179 ip6 hoplimit 1 counter name one
    ip6 saddr fd00::11 tcp dport 179 ip6 hoplimit != 1 counter name other
  }
}
";
    let nft_file = dir.join("hops.nft");
    std::fs::write(&nft_file, rules).unwrap();
    lab.exec(&router, "nft", &["-f", &nft_file.display().to_string()])
        .unwrap();
    let conf = format!(
        "router id 10.0.0.1;
protocol device {{}}
protocol bgp berth {{
  local {} as 64513;
  neighbor {} as 64512;
  hold time 9;
  ipv6 {{ import all; export none; }};
}}
",
        family.router, family.node
    );
    let bird = Bird::start(&mut lab, &router, &dir, &conf).unwrap();
    start_speaker(&mut lab, &node, &dir, family);
    let up = wait_for(Duration::from_secs(30), || {
        bird.birdc(&lab, &format!("show route {}", family.prefix))
            .ok()
            .filter(|r| r.contains(family.prefix.split('/').next().unwrap_or_default()))
    });
    assert!(
        up.is_some(),
        "no session: {:?}\n{}",
        bird.birdc(&lab, "show protocols all berth"),
        std::fs::read_to_string(dir.join("speaker.log")).unwrap_or_default()
    );
    let counters = lab
        .exec(&router, "nft", &["list", "table", "inet", "hops"])
        .unwrap();
    let packets = |name: &str| -> u64 {
        counters
            .split(&format!("counter {name} {{"))
            .nth(1)
            .and_then(|s| s.split("packets ").nth(1))
            .and_then(|s| s.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no counter {name} in {counters}"))
    };
    assert!(packets("one") > 0, "no packet with hop limit 1: {counters}");
    assert_eq!(
        packets("other"),
        0,
        "packets with another hop limit: {counters}"
    );
    drop(bird);
    drop(lab);
    let _ = std::fs::remove_dir_all(&dir);
}

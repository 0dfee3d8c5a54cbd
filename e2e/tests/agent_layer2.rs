//! The agent's Layer2 announcement on a real Ethernet segment: three node namespaces and a
//! client on one bridge. The client resolves the EIPs (ARP and NDP) to the owner's MAC only,
//! TCP reaches the owner; SIGKILL of the owner's agent or a cut of its link moves the IPs to
//! another node, whose gratuitous ARP / unsolicited NA repoints the client's neighbour entry.
//! Needs root.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use berth_e2e::lab_unavailable;
use berth_e2e::layer2::{EIP4, EIP6, Gossip, NODES, Sampler, Segment, Window, wait};

/// The agent binary; `BERTH_AGENT_BIN` overrides the one next to this test (a shared target
/// directory may hold another branch's build).
static AGENT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    std::env::var("BERTH_AGENT_BIN").unwrap_or_else(|_| berth_e2e::binary("berth-agent"))
});

/// Exactly one MAC answers who-has `ip`; returns the node it belongs to.
fn single_answer(seg: &Segment, ip: &str) -> usize {
    // Settling: the first answer may come before every agent has applied its first plan.
    let answers = wait(Duration::from_secs(10), || {
        seg.who_answers(ip).ok().filter(|a| a.len() == 1)
    })
    .unwrap_or_else(|| {
        panic!(
            "{ip}: not exactly one MAC answers: {:?}\n{}",
            seg.who_answers(ip),
            seg.logs()
        )
    });
    // And again, with everything settled: still one.
    let again = seg.who_answers(ip).unwrap();
    assert_eq!(
        again.len(),
        1,
        "{ip}: two nodes answer: {again:?}\n{}",
        seg.logs()
    );
    assert_eq!(again[0].0, answers[0].0);
    seg.node_of(&answers[0].0)
        .unwrap_or_else(|| panic!("{ip} answered by {answers:?}, not a node's MAC"))
}

/// The client's neighbour entry for `ip` turns to node `i`'s MAC without the client asking.
fn neighbour_becomes(seg: &Segment, ip: &str, i: usize) {
    let got = wait(Duration::from_secs(10), || {
        seg.client_neighbour(ip)
            .filter(|m| m.eq_ignore_ascii_case(&seg.macs[i]))
    });
    assert!(
        got.is_some(),
        "{ip}: the client's entry is {:?}, not {} ({}): gratuitous announcement missing\n{}",
        seg.client_neighbour(ip),
        NODES[i],
        seg.macs[i],
        seg.logs()
    );
}

fn reaches(seg: &Segment, ip: &str, i: usize) {
    let got = wait(Duration::from_secs(10), || {
        Some(seg.connect(ip, Duration::from_millis(500))).filter(|n| n == NODES[i])
    });
    assert!(
        got.is_some(),
        "TCP to {ip} does not reach {}: {}\n{}",
        NODES[i],
        seg.connect(ip, Duration::from_secs(1)),
        seg.logs()
    );
}

fn elected(ip: &str, alive: &[&str]) -> usize {
    let candidates = NODES.iter().map(|s| s.to_string()).collect();
    let live = alive.iter().map(|s| s.to_string()).collect();
    let name = berth_agent::owner::owner(ip.parse().unwrap(), &candidates, &live).unwrap();
    NODES.iter().position(|n| *n == name).unwrap()
}

/// For each EIP (IPv4, IPv6), checked from the client: ARP or NDP names one node alone, the
/// one rendezvous hashing elects among `alive`; the client's entry holds its MAC; TCP reaches
/// it. Returns the owners.
fn owners_serve(seg: &Segment, alive: &[&str]) -> [usize; 2] {
    [EIP4, EIP6].map(|ip| {
        let by_mac = single_answer(seg, ip);
        let want = elected(ip, alive);
        assert_eq!(
            by_mac, want,
            "{ip}: answered by {} but {} is elected",
            NODES[by_mac], NODES[want]
        );
        reaches(seg, ip, by_mac);
        assert_eq!(
            seg.client_neighbour(ip).map(|m| m.to_lowercase()),
            Some(seg.macs[by_mac].to_lowercase()),
            "{ip}: the client resolved it to another MAC"
        );
        by_mac
    })
}

#[test]
fn one_node_answers_and_only_the_owner() {
    if let Some(why) = lab_unavailable(&[]) {
        eprintln!("skipped: {why}");
        return;
    }
    let mut seg = Segment::start("l2a", &AGENT, false).unwrap();
    let [v4, v6] = owners_serve(&seg, &NODES);
    // Only the owner routes a Layer2 IP (so no other kernel can claim it): one route each.
    for (i, node) in NODES.iter().enumerate() {
        let entries = seg.berth_entries(i);
        let has = |ip: &str| {
            entries
                .iter()
                .filter(|l| l.contains(&format!("{ip} ")))
                .count()
        };
        assert_eq!(has(EIP4), usize::from(i == v4), "{node}: {entries:?}");
        // IPv6: a rule and a route on the owner.
        assert_eq!(
            has(EIP6),
            2 * usize::from(i == v6),
            "{}: {entries:?}",
            NODES[i]
        );
    }
    // The IPv6 owner (alone) joined the solicited-node group of its IP, so the kernel reports
    // it by MLD and snooping switches forward the solicitations (fd00::240 -> ff02::1:ff00:240).
    for (i, node) in seg.nodes.iter().enumerate() {
        let groups = seg
            .lab
            .exec(node, "ip", &["-6", "maddr", "show", "dev", "eth0"])
            .unwrap_or_default();
        assert_eq!(
            groups.contains("ff02::1:ff00:240"),
            i == v6,
            "{}: {groups}",
            NODES[i]
        );
    }
    // SIGKILL and restart of the IPv4 owner's agent: its leftovers are reused, not doubled,
    // and it answers again, alone.
    let before = seg.berth_entries(v4);
    seg.kill_agent(v4);
    seg.start_agent(v4).unwrap();
    assert_eq!(owners_serve(&seg, &NODES), [v4, v6]);
    let mut after = seg.berth_entries(v4);
    let mut before = before;
    before.sort();
    after.sort();
    assert_eq!(before, after, "entries changed across a crash and restart");
    // The agent set arp_ignore=1 on eth0 (the lab leaves Linux's default, 0, as a new
    // namespace's conf/default says).
    let sysctl = |seg: &Segment, what: &str| {
        seg.lab
            .exec(
                &seg.nodes[v4],
                "cat",
                &[&format!("/proc/sys/net/ipv4/conf/{what}/arp_ignore")],
            )
            .unwrap()
            .trim()
            .to_owned()
    };
    assert_eq!(
        sysctl(&seg, "default"),
        "0",
        "the lab's namespaces start with arp_ignore 0"
    );
    assert_eq!(
        sysctl(&seg, "eth0"),
        "1",
        "the agent did not set arp_ignore"
    );
    // SIGTERM removes everything the agent added, puts arp_ignore back, and it stops
    // answering.
    seg.terminate_agent(v4);
    assert_eq!(seg.berth_entries(v4), Vec::<String>::new());
    assert_eq!(
        sysctl(&seg, "eth0"),
        "0",
        "arp_ignore not restored on SIGTERM\n{}",
        seg.logs()
    );
    let answers = seg.who_answers(EIP4).unwrap();
    assert!(
        answers
            .iter()
            .all(|(m, _)| !m.eq_ignore_ascii_case(&seg.macs[v4])),
        "a stopped agent's node still answers: {answers:?}"
    );
}

/// Takes node `gone` away with `cut`, then checks every EIP it owned moved to the node elected
/// among the rest, announced (the client's entry changes with no question asked), alone.
fn fail(seg: &mut Segment, alive: &mut Vec<&str>, gone: usize, cut: impl FnOnce(&mut Segment)) {
    let before = owners_serve(seg, alive);
    cut(seg);
    alive.retain(|n| *n != NODES[gone]);
    for (k, ip) in [EIP4, EIP6].into_iter().enumerate() {
        let next = elected(ip, alive);
        if before[k] == gone {
            assert_ne!(next, gone);
            neighbour_becomes(seg, ip, next);
        } else {
            assert_eq!(next, before[k], "{ip} moved although its owner stayed");
        }
    }
    owners_serve(seg, alive);
}

#[test]
fn failover_on_agent_kill_and_on_link_cut() {
    if let Some(why) = lab_unavailable(&[]) {
        eprintln!("skipped: {why}");
        return;
    }
    let mut seg = Segment::start("l2f", &AGENT, true).unwrap();
    let mut alive: Vec<&str> = NODES.to_vec();
    // SIGKILL of the IPv4 owner's agent.
    let first = owners_serve(&seg, &alive)[0];
    fail(&mut seg, &mut alive, first, |s| s.kill_agent(first));
    // Link cut of the new IPv4 owner.
    let second = owners_serve(&seg, &alive)[0];
    assert_ne!(second, first);
    fail(&mut seg, &mut alive, second, |s| {
        s.set_link(second, false).unwrap()
    });
}

/// Removes the gossip block even when the test fails half-way (the namespaces' removal on
/// drop would too; this keeps the order explicit).
struct Unblock<'a>(&'a Segment);

impl Drop for Unblock<'_> {
    fn drop(&mut self) {
        let _ = self.0.heal_gossip();
    }
}

/// Gossip (UDP 7946) blocked between every node while the client segment stays up: each
/// agent sees itself alone and elects itself for every IP, so before the segment arbitrated
/// all three answered. Now, sampled from the client from 1 s after the block for 8 s, exactly
/// one MAC answers each IP every time; after the heal one node answers (the elected one) and
/// no IP has moved more than once over the whole run.
#[test]
fn gossip_partition_leaves_one_answering_node_per_ip() {
    if let Some(why) = lab_unavailable(&[]) {
        eprintln!("skipped: {why}");
        return;
    }
    let seg = Segment::start("l2p", &AGENT, true).unwrap();
    let before = owners_serve(&seg, &NODES);
    // Every answering MAC seen per IP, in order, to count moves.
    let mut history: [Vec<String>; 2] = before.map(|i| vec![seg.macs[i].to_lowercase()]);
    let ips = [EIP4, EIP6];
    seg.block_gossip().unwrap();
    let _unblock = Unblock(&seg);
    let blocked = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let mut bad = Vec::new();
    let mut samples = 0;
    while blocked.elapsed() < Duration::from_secs(9) {
        for (k, ip) in ips.iter().enumerate() {
            let at = blocked.elapsed().as_secs_f64();
            let who = seg
                .who_answers_within(ip, Duration::from_millis(300))
                .unwrap();
            let names: Vec<&str> = who
                .iter()
                .map(|(m, _)| seg.node_of(m).map_or("?", |i| NODES[i]))
                .collect();
            eprintln!("partition +{at:.2}s {ip}: {names:?}");
            samples += 1;
            if who.len() != 1 {
                bad.push(format!("+{at:.2}s {ip}: {who:?}"));
            }
            if let Some((m, _)) = who.first() {
                let m = m.to_lowercase();
                if history[k].last() != Some(&m) {
                    history[k].push(m);
                }
            }
        }
    }
    // The partition was real: every agent saw itself alone, and the segment decided.
    for (i, node) in NODES.iter().enumerate() {
        assert_eq!(
            seg.metric(i, "berth_agent_membership_size"),
            Some(1.0),
            "{node}: gossip not cut\n{}",
            seg.logs()
        );
    }
    let yields = 0.0
        + (0..NODES.len())
            .filter_map(|i| seg.metric(i, "berth_agent_yields_total"))
            .sum::<f64>();
    eprintln!("partition: {samples} samples, {yields} yields");
    assert!(
        bad.is_empty(),
        "not exactly one MAC during the partition: {bad:#?}\n{}",
        seg.logs()
    );
    assert!(yields >= 1.0, "nobody yielded: the partition was not seen");
    // Heal: the membership comes back; every agent holds the nodes it sees again down for
    // the failback hold-down, then the election decides again on the whole view. Sampled
    // every 50 ms (ARP and NDP) from the heal for the hold-down and 3 s more.
    let sampler = Sampler::start(
        &seg.client,
        &ips,
        Duration::from_millis(50),
        FAILBACK_HOLD_DOWN + Duration::from_secs(3),
    )
    .unwrap();
    let heal = Instant::now();
    seg.heal_gossip().unwrap();
    let healed = wait(Duration::from_secs(15), || {
        (0..NODES.len())
            .all(|i| seg.metric(i, "berth_agent_membership_size") == Some(3.0))
            .then_some(())
    });
    assert!(healed.is_some(), "membership not healed\n{}", seg.logs());
    let windows = sampler.finish().unwrap();
    let (doubles, _, _) = judge(&seg, &ips, &windows, heal, |_, _| None);
    for w in &windows {
        let k = ips.iter().position(|ip| *ip == w.ip).unwrap();
        if let [m] = w.macs.as_slice()
            && history[k].last() != Some(m)
        {
            eprintln!(
                "healed +{:.3}s {}: now {m}",
                w.at.saturating_duration_since(heal).as_secs_f64(),
                w.ip
            );
            history[k].push(m.clone());
        }
    }
    eprintln!("healed: {} windows", windows.len());
    assert!(
        doubles.is_empty(),
        "two MACs after the heal: {doubles:#?}\n{}",
        seg.logs()
    );
    let after = owners_serve(&seg, &NODES);
    for (k, ip) in ips.iter().enumerate() {
        let m = seg.macs[after[k]].to_lowercase();
        if history[k].last() != Some(&m) {
            history[k].push(m);
        }
        eprintln!("{ip}: answering MACs over the run {:?}", history[k]);
        assert!(
            history[k].len() <= 2,
            "{ip} moved more than once: {:?}",
            history[k]
        );
    }
}

/// Samples who answers each EIP from the client for `span` and returns what differs from
/// `want` (the node that must answer each, alone), one line per bad sample.
fn sample_exactly(seg: &Segment, want: [usize; 2], span: Duration, what: &str) -> Vec<String> {
    let start = Instant::now();
    let mut bad = Vec::new();
    let mut samples = 0;
    while start.elapsed() < span {
        for (k, ip) in [EIP4, EIP6].into_iter().enumerate() {
            let who = seg
                .who_answers_within(ip, Duration::from_millis(300))
                .unwrap();
            samples += 1;
            let ok = who.len() == 1 && who[0].0.eq_ignore_ascii_case(&seg.macs[want[k]]);
            eprintln!(
                "{what} +{:.2}s {ip}: {who:?}",
                start.elapsed().as_secs_f64()
            );
            if !ok {
                bad.push(format!(
                    "{what} +{:.2}s {ip}: {who:?}, wanted only {} ({})",
                    start.elapsed().as_secs_f64(),
                    NODES[want[k]],
                    seg.macs[want[k]]
                ));
            }
        }
    }
    assert!(samples >= 2, "{what}: too few samples ({samples})");
    bad
}

/// The IPv4 owner's client-facing link goes down inside its namespace while the agents
/// gossip over another link, so the membership still sees it alive: before the link watch
/// nobody answered its IPs for as long as the link was down. Now the owner tells the others
/// it cannot answer on eth0 and they elect another candidate: from 1 s after the cut every
/// sample has exactly one MAC, the new owner's. When the link comes back the IPs stay where
/// they are for the hold-down (`--link-hold-down`, 2 s), then return to the elected owner
/// (rendezvous hashing: the original one), again exactly one MAC each time.
#[test]
fn an_owner_whose_client_link_goes_down_hands_over_while_gossip_stays_up() {
    if let Some(why) = lab_unavailable(&[]) {
        eprintln!("skipped: {why}");
        return;
    }
    let seg = Segment::start_with("l2l", &AGENT, Gossip::OwnLink).unwrap();
    let before = owners_serve(&seg, &NODES);
    let gone = before[0];
    let rest: Vec<&str> = NODES
        .iter()
        .copied()
        .filter(|n| *n != NODES[gone])
        .collect();
    let during = [EIP4, EIP6].map(|ip| elected(ip, &rest));
    let ns = seg.nodes[gone].clone();
    let (secs, node) = seg
        .failover(
            EIP4,
            NODES[gone],
            &["ip", "-n", &ns, "link", "set", "eth0", "down"],
        )
        .unwrap_or_else(|e| panic!("no other node answered {EIP4}: {e}\n{}", seg.logs()));
    eprintln!("client link down: {EIP4} answered by {node} after {secs:.3} s");
    assert_eq!(node, NODES[during[0]], "{EIP4} went to the wrong node");
    let cut = Instant::now();
    std::thread::sleep(Duration::from_secs(1).saturating_sub(cut.elapsed()));
    let mut bad = sample_exactly(&seg, during, Duration::from_secs(3), "link down");
    // The fault was the one intended: gossip whole, the owner unable on eth0 only.
    for (i, n) in NODES.iter().enumerate() {
        assert_eq!(
            seg.metric(i, "berth_agent_membership_size"),
            Some(3.0),
            "{n}: the membership lost a node, so this was not a client-link-only fault\n{}",
            seg.logs()
        );
    }
    assert_eq!(
        seg.metric(gone, "berth_agent_unable_interfaces"),
        Some(1.0),
        "{}",
        seg.logs()
    );
    seg.set_link(gone, true).unwrap();
    // Within the hold-down nothing moves back.
    bad.extend(sample_exactly(
        &seg,
        during,
        Duration::from_millis(600),
        "link up, held down",
    ));
    assert!(bad.is_empty(), "{bad:#?}\n{}", seg.logs());
    // After it, the elected owner (the original one) answers alone again.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(owners_serve(&seg, &NODES), before);
    assert_eq!(seg.metric(gone, "berth_agent_unable_interfaces"), Some(0.0));
    let after = sample_exactly(&seg, before, Duration::from_secs(1), "back");
    assert!(after.is_empty(), "{after:#?}\n{}", seg.logs());
}

/// The owner's interface changes MAC (a bond failing over to another slave does): the agent
/// reopens its announcer on it, announces its IPs from the new MAC at once (the client's
/// entry changes without the client asking) and answers from the new MAC only.
#[test]
fn a_changed_mac_is_announced_and_answered_at_once() {
    if let Some(why) = lab_unavailable(&[]) {
        eprintln!("skipped: {why}");
        return;
    }
    let mut seg = Segment::start("l2m", &AGENT, false).unwrap();
    let owners = owners_serve(&seg, &NODES);
    let o = owners[0];
    let mac = "02:00:5e:00:be:01";
    seg.lab
        .exec(
            &seg.nodes[o],
            "ip",
            &["link", "set", "eth0", "address", mac],
        )
        .unwrap();
    seg.macs[o] = mac.to_owned();
    for (k, ip) in [EIP4, EIP6].into_iter().enumerate() {
        if owners[k] == o {
            neighbour_becomes(&seg, ip, o);
        }
    }
    let bad = sample_exactly(&seg, owners, Duration::from_secs(2), "new MAC");
    assert!(bad.is_empty(), "{bad:#?}\n{}", seg.logs());
    assert!(
        seg.metric(o, "berth_agent_interface_reopens_total") >= Some(1.0),
        "{}",
        seg.logs()
    );
}

/// The IPv4 owner's agent is stopped for 200 ms (SIGSTOP, then SIGCONT: a CPU stall) with the
/// default SWIM timing, while the client asks who has the IP every 25 ms. Never two MACs
/// answering one question; what the IP does is counted and printed (README-layer2.md,
/// "Stalls", documents it): with the default timing a 200 ms stall is longer than the
/// detection time, so the IP moves to the next candidate, and back once the stalled agent is
/// seen again (~0.3 s after it resumes: back within a second with the same generation, it
/// is a flap, not held down by the failback hold-down).
#[test]
fn a_200ms_stall_of_the_owner_never_leaves_two_answering() {
    if let Some(why) = lab_unavailable(&[]) {
        eprintln!("skipped: {why}");
        return;
    }
    let seg = Segment::start("l2s", &AGENT, true).unwrap();
    let owner = owners_serve(&seg, &NODES)[0];
    let pid = seg.agents[owner].unwrap().to_string();
    let sampler = Sampler::start(
        &seg.client,
        &[EIP4],
        Duration::from_millis(25),
        Duration::from_secs(6),
    )
    .unwrap();
    let origin = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    berth_e2e::netns::run("kill", &["-STOP", &pid]).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    berth_e2e::netns::run("kill", &["-CONT", &pid]).unwrap();
    let windows = sampler.finish().unwrap();
    let (doubles, _, _) = judge(&seg, &[EIP4], &windows, origin, |_, _| None);
    let mut silent = 0;
    let mut seq: Vec<String> = Vec::new();
    for w in &windows {
        let Some(m) = w.macs.first() else {
            silent += 1;
            continue;
        };
        if seq.last() != Some(m) {
            seq.push(m.clone());
            eprintln!(
                "stall: from +{:.3}s answered by {m}",
                w.at.saturating_duration_since(origin).as_secs_f64()
            );
        }
    }
    let names: Vec<&str> = seq
        .iter()
        .map(|m| seg.node_of(m).map_or("?", |i| NODES[i]))
        .collect();
    eprintln!(
        "stall: {} windows, {silent} unanswered, owners over time {names:?}",
        windows.len()
    );
    assert!(
        doubles.is_empty(),
        "two MACs answered: {doubles:#?}\n{}",
        seg.logs()
    );
    assert!(windows.len() > 50, "too few samples: {}", windows.len());
    // At most away to one node and back: never a third owner, never back and forth.
    assert!(
        seq.len() <= 3,
        "the IP moved more than away and back: {names:?}"
    );
    // Settled: the original owner again, alone.
    assert_eq!(owners_serve(&seg, &NODES)[0], owner);
}

/// IPv6 failover timed like IPv4: the IPv6 owner's agent is SIGKILLed and the client, which
/// resolves the EIP by Neighbor Solicitation, reaches the node elected among the rest; then
/// every NDP sample has exactly one MAC, the new owner's. The time is printed (the bench
/// reports medians; no test asserts on speed).
#[test]
fn ipv6_fails_over_on_agent_kill_with_one_answering_mac() {
    if let Some(why) = lab_unavailable(&[]) {
        eprintln!("skipped: {why}");
        return;
    }
    let mut seg = Segment::start("l2six", &AGENT, true).unwrap();
    let before = owners_serve(&seg, &NODES);
    let gone = before[1];
    let rest: Vec<&str> = NODES
        .iter()
        .copied()
        .filter(|n| *n != NODES[gone])
        .collect();
    let after = [EIP4, EIP6].map(|ip| elected(ip, &rest));
    let pid = seg.agents[gone].unwrap().to_string();
    let (secs, node) = seg
        .failover(EIP6, NODES[gone], &["kill", "-KILL", &pid])
        .unwrap_or_else(|e| panic!("no other node answered {EIP6}: {e}\n{}", seg.logs()));
    eprintln!("IPv6 failover on SIGKILL: {node} answered {EIP6} after {secs:.3} s");
    seg.kill_agent(gone); // reaps it
    assert_eq!(node, NODES[after[1]], "{EIP6} went to the wrong node");
    neighbour_becomes(&seg, EIP6, after[1]);
    let bad = sample_exactly(&seg, after, Duration::from_secs(2), "IPv6 owner killed");
    assert!(bad.is_empty(), "{bad:#?}\n{}", seg.logs());
}

/// The agents' default `--failback-hold-down`.
const FAILBACK_HOLD_DOWN: Duration = Duration::from_secs(2);

/// What a run of [`Sampler`] windows got wrong, one line per bad window: two MACs for one
/// IP, or (through `want`, given the window and the IP's index in `ips`) another MAC than the
/// one wanted. `want` returns `None` where anything but two MACs is fine. Windows where the
/// wanted node did not answer at all are not bad but counted (second value, of the third):
/// an agent whose timers fire >100 ms late on a loaded machine stays silent for 250 ms on
/// purpose (README-layer2.md, "Stalls"); callers bound the share.
fn judge(
    seg: &Segment,
    ips: &[&str],
    windows: &[Window],
    origin: Instant,
    want: impl Fn(&Window, usize) -> Option<usize>,
) -> (Vec<String>, usize, usize) {
    let mut bad = Vec::new();
    let (mut silent, mut checked) = (0, 0);
    for w in windows {
        let at = w.at.saturating_duration_since(origin).as_secs_f64();
        let Some(k) = ips.iter().position(|ip| *ip == w.ip) else {
            continue;
        };
        let names: Vec<&str> = w
            .macs
            .iter()
            .map(|m| seg.node_of(m).map_or("?", |i| seg.names[i].as_str()))
            .collect();
        let wanted = want(w, k);
        checked += usize::from(wanted.is_some());
        if w.macs.len() > 1 {
            bad.push(format!("+{at:.3}s {}: two MACs {names:?}", w.ip));
        } else if let Some(i) = wanted {
            if w.macs.is_empty() {
                silent += 1;
            } else if !w.macs[0].eq_ignore_ascii_case(&seg.macs[i]) {
                bad.push(format!(
                    "+{at:.3}s {}: answered by {names:?}, wanted only {}",
                    w.ip, seg.names[i]
                ));
            }
        }
    }
    (bad, silent, checked)
}

/// At most a tenth of the windows that wanted an answer went unanswered.
fn few_silent(what: &str, silent: usize, checked: usize) -> Result<(), String> {
    eprintln!("{what}: {silent} of {checked} windows that wanted an answer got none");
    if silent * 10 > checked {
        return Err(format!("{what}: {silent} of {checked} windows unanswered"));
    }
    Ok(())
}

/// The failback hold-down: the IPv4 owner's agent is SIGKILLed, the next candidates take its
/// IPs, and the agent is started again 0.7 s later. It takes its IPs back only after
/// `--failback-hold-down` (2 s), then alone; sampled from the client (ARP and NDP every
/// 50 ms for the whole run) there is never more than one MAC for an IP, the IPs of the nodes
/// that stayed never move, and from 1 s after the kill until the hold-down ends the interim
/// owners answer alone. Before the hold-down the restarted node took them back as soon as
/// it joined (~0.1 s after its start).
#[test]
fn a_restarted_owner_waits_for_the_failback_hold_down() {
    if let Some(why) = lab_unavailable(&[]) {
        eprintln!("skipped: {why}");
        return;
    }
    let mut seg = Segment::start("l2h", &AGENT, true).unwrap();
    let before = owners_serve(&seg, &NODES);
    let o = before[0];
    let rest: Vec<&str> = NODES.iter().copied().filter(|n| *n != NODES[o]).collect();
    let interim = [EIP4, EIP6].map(|ip| elected(ip, &rest));
    let ips = [EIP4, EIP6];
    let sampler = Sampler::start(
        &seg.client,
        &ips,
        Duration::from_millis(50),
        Duration::from_secs(8),
    )
    .unwrap();
    let origin = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let kill = Instant::now();
    seg.kill_agent(o);
    let killed = Instant::now();
    std::thread::sleep(Duration::from_millis(700));
    let restarted = Instant::now();
    seg.start_agent(o).unwrap();
    let windows = sampler.finish().unwrap();
    let held_until = restarted + FAILBACK_HOLD_DOWN;
    let every = Duration::from_millis(50);
    let (mut bad, silent, checked) = judge(&seg, &ips, &windows, origin, |w, k| {
        if before[k] != o {
            // Owned by a node that stayed: never moves.
            Some(before[k])
        } else if w.at + every <= kill {
            Some(o)
        } else if w.at >= killed + Duration::from_secs(1) && w.at < held_until {
            Some(interim[k])
        } else if w.at >= held_until + Duration::from_millis(1500) {
            Some(o)
        } else {
            None
        }
    });
    // The restarted node answers nothing before the hold-down is over, counted from the
    // start of its process (its membership starts later still).
    let mut back = None;
    for w in &windows {
        if w.at >= killed && w.macs.iter().any(|m| m.eq_ignore_ascii_case(&seg.macs[o])) {
            // Answered somewhere in the window: before the hold-down's end for sure only if
            // the whole window was.
            if w.at + every <= held_until {
                bad.push(format!(
                    "+{:.3}s {}: the restarted {} answered within the hold-down",
                    w.at.duration_since(origin).as_secs_f64(),
                    w.ip,
                    NODES[o]
                ));
            }
            back.get_or_insert(w.at.duration_since(restarted).as_secs_f64());
        }
    }
    eprintln!(
        "failback: {} restarted, answered again {back:?} s after its start (hold-down {:?}), {} windows",
        NODES[o],
        FAILBACK_HOLD_DOWN,
        windows.len()
    );
    assert!(windows.len() >= 200, "too few samples: {}", windows.len());
    assert!(bad.is_empty(), "{bad:#?}\n{}", seg.logs());
    few_silent("failback", silent, checked).unwrap_or_else(|e| panic!("{e}\n{}", seg.logs()));
    assert!(back.is_some(), "{} never took its IPs back", NODES[o]);
    assert_eq!(owners_serve(&seg, &NODES), before);
}

/// `n` agents on one segment, `n` Layer2 IPv4 IPs (every node a candidate of every IP); the
/// agent owning the most restarts (SIGKILL, then started again at once, as a DaemonSet
/// would). Sampled from the client every 100 ms through the restart and the rejoin: never
/// two MACs for an IP, an IP whose elected owner is a live, untouched node is answered by
/// that node only, and the restarting node answers nothing before its failback hold-down
/// is over. Returns how long the test took.
fn agents_one_restarts(n: usize, prefix: &str) -> Duration {
    let began = Instant::now();
    // 10.0.0.200 up (the nodes are .11 up).
    let ips: Vec<String> = (0..n).map(|h| format!("10.0.0.{}", 200 + h)).collect();
    let ip_refs: Vec<&str> = ips.iter().map(String::as_str).collect();
    let mut seg = Segment::start_many(prefix, &AGENT, n, &ips).unwrap();
    let names: std::collections::BTreeSet<String> = seg.names.iter().cloned().collect();
    let owners: Vec<usize> = ips
        .iter()
        .map(|ip| {
            let o = berth_agent::owner::owner(ip.parse().unwrap(), &names, &names).unwrap();
            seg.names.iter().position(|n| n == o).unwrap()
        })
        .collect();
    // Settled first: every IP answered by its elected owner alone in a whole second of
    // samples.
    let settled = |seg: &Segment, what: &str| {
        let ok = wait(Duration::from_secs(30), || {
            let s = Sampler::start(
                &seg.client,
                &ip_refs,
                Duration::from_millis(100),
                Duration::from_secs(1),
            )
            .ok()?;
            let w = s.finish().ok()?;
            let origin = w.first()?.at;
            let (bad, silent, _) = judge(seg, &ip_refs, &w, origin, |_, k| Some(owners[k]));
            (bad.is_empty() && silent == 0).then_some(())
        });
        assert!(
            ok.is_some(),
            "{what}: not every IP answered by its elected owner alone\n{}",
            seg.logs()
        );
    };
    settled(&seg, "before the restart");
    let restarting = (0..seg.names.len())
        .max_by_key(|i| owners.iter().filter(|o| *o == i).count())
        .unwrap();
    let sampler = Sampler::start(
        &seg.client,
        &ip_refs,
        Duration::from_millis(100),
        Duration::from_secs(7),
    )
    .unwrap();
    let origin = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    seg.kill_agent(restarting);
    let restarted = Instant::now();
    seg.start_agent(restarting).unwrap();
    let windows = sampler.finish().unwrap();
    let (mut bad, silent, checked) = judge(&seg, &ip_refs, &windows, origin, |_, k| {
        (owners[k] != restarting).then_some(owners[k])
    });
    let mac = &seg.macs[restarting];
    let mut back = None;
    for w in windows.iter().filter(|w| w.at >= restarted) {
        if w.macs.iter().any(|m| m.eq_ignore_ascii_case(mac)) {
            if w.at + Duration::from_millis(100) <= restarted + FAILBACK_HOLD_DOWN {
                bad.push(format!(
                    "+{:.3}s {}: the restarted node answered within its hold-down",
                    w.at.duration_since(origin).as_secs_f64(),
                    w.ip
                ));
            }
            back.get_or_insert(w.at.duration_since(restarted).as_secs_f64());
        }
    }
    eprintln!(
        "{n} agents: {} restarted (owner of {} of {} IPs), {} samples, answered again {back:?} s after its start",
        seg.names[restarting],
        owners.iter().filter(|o| **o == restarting).count(),
        ips.len(),
        windows.len()
    );
    assert!(
        windows.len() >= 40 * n,
        "too few samples: {}",
        windows.len()
    );
    assert!(bad.is_empty(), "{bad:#?}\n{}", seg.logs());
    few_silent(&format!("{n} agents"), silent, checked)
        .unwrap_or_else(|e| panic!("{e}\n{}", seg.logs()));
    // Settled: every IP with its elected owner again.
    settled(&seg, "after the restart");
    drop(seg);
    began.elapsed()
}

/// Ten agents, the busiest owner restarts: see [`agents_one_restarts`].
#[test]
fn ten_agents_one_restarts_and_no_live_owner_is_overridden() {
    if let Some(why) = lab_unavailable(&[]) {
        eprintln!("skipped: {why}");
        return;
    }
    let took = agents_one_restarts(10, "l2x");
    eprintln!("ten agents: {:.1} s", took.as_secs_f64());
}

/// Thirty agents, the busiest owner restarts: see [`agents_one_restarts`] (issue 15's
/// scale case; a restarted agent used to claim IPs from a partial view of the membership).
#[test]
fn thirty_agents_one_restarts_and_no_live_owner_is_overridden() {
    if let Some(why) = lab_unavailable(&[]) {
        eprintln!("skipped: {why}");
        return;
    }
    let took = agents_one_restarts(30, "l2y");
    eprintln!("thirty agents: {:.1} s", took.as_secs_f64());
}

//! Layer2 failover bench: on the agent test's segment (three nodes, a client, one bridge),
//! cuts the owner of an EIP away (link down, or SIGKILL of its agent; the IPv4 EIP, then the
//! IPv6 one) and measures, from the client, the time from the cut to the first TCP connection
//! answered by another node. After each run settles it checks that exactly one MAC answers
//! ARP / NDP for the EIP and that the client's neighbour entry holds the live owner's MAC;
//! then it restores the node and waits for the IP to come back (after the failback
//! hold-down when the agent was restarted).
//!
//! Then a partition: the agents' gossip blocked between all nodes with nftables while the
//! client segment stays up, for 8 s, then healed; the client asks who has both EIPs every
//! 100 ms throughout, and the bench prints the answering MACs over time (measurements, not
//! assertions).
//!
//! Usage (root): `l2-failover-bench [RUNS] [AGENT_BINARY]` (default 10 runs of each kind; the
//! agent next to this binary).

#![allow(clippy::print_stdout)]

use std::time::Duration;

use anyhow::{Context, bail};
use berth_e2e::layer2::{EIP4, EIP6, NODES, Sampler, Segment, wait};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cut {
    Link,
    Kill,
}

struct Run {
    secs: f64,
    two_answer: bool,
    dead_mac: bool,
}

fn owner(seg: &Segment, ip: &str) -> anyhow::Result<usize> {
    let answers = wait(Duration::from_secs(10), || {
        seg.who_answers(ip).ok().filter(|a| a.len() == 1)
    })
    .with_context(|| format!("not exactly one MAC answers: {:?}", seg.who_answers(ip)))?;
    seg.node_of(&answers[0].0)
        .with_context(|| format!("{ip} answered by a MAC of no node: {answers:?}"))
}

fn one(seg: &mut Segment, cut: Cut, ip: &str) -> anyhow::Result<Run> {
    let old = owner(seg, ip)?;
    seg.wait_reachable(ip, Duration::from_secs(10))
        .context("the EIP is not reachable before the cut")?;
    let pid;
    let args: Vec<String> = match cut {
        Cut::Link => ["ip", "-n", &seg.nodes[old], "link", "set", "eth0", "down"]
            .map(str::to_owned)
            .to_vec(),
        Cut::Kill => {
            pid = seg.agents[old].context("no agent running")?;
            ["kill", "-KILL", &pid.to_string()]
                .map(str::to_owned)
                .to_vec()
        }
    };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (secs, new) = seg
        .failover(ip, NODES[old], &args)
        .map_err(anyhow::Error::msg)?;
    if cut == Cut::Kill {
        // Reap it (already dead).
        seg.kill_agent(old);
    }
    // Settle, then: exactly one MAC answers, and the client holds the live owner's MAC.
    std::thread::sleep(Duration::from_millis(1500));
    let answers = seg.who_answers(ip).map_err(anyhow::Error::msg)?;
    let two_answer = answers.len() != 1;
    let live = NODES
        .iter()
        .position(|n| *n == new)
        .context("unknown node answered")?;
    let dead_mac = seg
        .client_neighbour(ip)
        .is_none_or(|m| !m.eq_ignore_ascii_case(&seg.macs[live]));
    // Restore and wait for the IP to come back to its first owner.
    match cut {
        Cut::Link => seg.set_link(old, true).map_err(anyhow::Error::msg)?,
        Cut::Kill => seg.start_agent(old).map_err(anyhow::Error::msg)?,
    }
    let back = wait(Duration::from_secs(15), || {
        (owner(seg, ip).ok() == Some(old)
            && seg
                .client_neighbour(ip)
                .is_some_and(|m| m.eq_ignore_ascii_case(&seg.macs[old])))
        .then_some(())
    });
    if back.is_none() {
        bail!("{} did not take {ip} back after the restore", NODES[old]);
    }
    Ok(Run {
        secs,
        two_answer,
        dead_mac,
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn main() -> anyhow::Result<()> {
    let mut argv = std::env::args().skip(1);
    let runs: usize = argv.next().map(|s| s.parse()).transpose()?.unwrap_or(10);
    let agent = match argv.next() {
        Some(a) => a,
        None => std::env::current_exe()?
            .with_file_name("berth-agent")
            .display()
            .to_string(),
    };
    if let Some(why) = berth_e2e::lab_unavailable(&[&agent]) {
        bail!("cannot run: {why}");
    }
    let mut seg = Segment::start("l2b", &agent, true).map_err(anyhow::Error::msg)?;
    println!("Layer2 failover, {runs} runs each, EIPs {EIP4} and {EIP6}, 3 nodes, agent {agent}");
    let mut table = Vec::new();
    for (ip, cut) in [
        (EIP4, Cut::Link),
        (EIP4, Cut::Kill),
        (EIP6, Cut::Link),
        (EIP6, Cut::Kill),
    ] {
        let mut results = Vec::new();
        let mut failed = 0;
        for i in 0..runs {
            let r = match one(&mut seg, cut, ip) {
                Ok(r) => r,
                Err(e) => {
                    // Reported and counted, not fatal: put every node back and go on.
                    failed += 1;
                    let first = format!("{e:#}");
                    let first = first.lines().next().unwrap_or_default().to_owned();
                    println!("{ip} {cut:?} run {i}: FAILED: {first}");
                    for n in 0..NODES.len() {
                        let _ = seg.set_link(n, true);
                        if seg.agents[n].is_none() {
                            let _ = seg.start_agent(n);
                        }
                    }
                    std::thread::sleep(Duration::from_secs(4));
                    continue;
                }
            };
            println!(
                "{ip} {cut:?} run {i}: {:.3} s{}{}",
                r.secs,
                if r.two_answer {
                    " TWO NODES ANSWER"
                } else {
                    ""
                },
                if r.dead_mac {
                    " CLIENT ON A DEAD MAC"
                } else {
                    ""
                }
            );
            results.push(r);
        }
        let mut secs: Vec<f64> = results.iter().map(|r| r.secs).collect();
        secs.sort_by(f64::total_cmp);
        if secs.is_empty() {
            table.push(format!("| {ip} | {cut:?} | {runs} | every run failed |"));
            continue;
        }
        table.push(format!(
            "| {} | {} | {} | {} | {:.3} s | {:.3} s | {:.3} s | {:.3} s | {} | {} |",
            if ip.contains(':') {
                "IPv6 (NDP)"
            } else {
                "IPv4 (ARP)"
            },
            match cut {
                Cut::Link => "link cut (ip link set eth0 down)",
                Cut::Kill => "SIGKILL of the owner's agent",
            },
            runs,
            failed,
            percentile(&secs, 50.0),
            secs[0],
            percentile(&secs, 90.0),
            secs[secs.len() - 1],
            results.iter().filter(|r| r.two_answer).count(),
            results.iter().filter(|r| r.dead_mac).count(),
        ));
    }
    println!();
    println!(
        "| EIP | cut | runs | failed (no other node reached in 30 s) | median | min | p90 | max | runs with two nodes answering | runs leaving the client on a dead MAC |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for row in table {
        println!("{row}");
    }
    partition(&seg)?;
    Ok(())
}

/// Gossip blocked between all nodes for 8 s with the client segment up, then healed: who
/// answers each EIP, every 100 ms from 1 s before the block to 6 s after the heal.
fn partition(seg: &Segment) -> anyhow::Result<()> {
    let ips = [EIP4, EIP6];
    for ip in ips {
        owner(seg, ip)?;
    }
    let sampler = Sampler::start(
        &seg.client,
        &ips,
        Duration::from_millis(100),
        Duration::from_secs(15),
    )
    .map_err(anyhow::Error::msg)?;
    let origin = std::time::Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let blocked = std::time::Instant::now();
    let result = seg.block_gossip().map_err(anyhow::Error::msg);
    if result.is_ok() {
        std::thread::sleep(Duration::from_secs(8));
    }
    let healed = std::time::Instant::now();
    seg.heal_gossip().map_err(anyhow::Error::msg)?;
    result?;
    let windows = sampler.finish().map_err(anyhow::Error::msg)?;
    let at = |t: std::time::Instant| t.saturating_duration_since(origin).as_secs_f64();
    println!();
    println!(
        "Partition: gossip blocked on every node at +{:.2} s, healed at +{:.2} s; who answers, every 100 ms:",
        at(blocked),
        at(healed)
    );
    for ip in ips {
        let name = |m: &str| {
            seg.node_of(m)
                .map_or("?".to_owned(), |i| NODES[i].to_owned())
        };
        // Runs of windows with the same answer.
        let mut runs: Vec<(f64, f64, String, usize)> = Vec::new();
        let (mut during, mut after) = ([0usize; 3], [0usize; 3]);
        for w in windows.iter().filter(|w| w.ip == ip) {
            let who = if w.macs.is_empty() {
                "nobody".to_owned()
            } else {
                w.macs.iter().map(|m| name(m)).collect::<Vec<_>>().join("+")
            };
            let bucket = w.macs.len().min(2);
            if w.at >= blocked + Duration::from_secs(1) && w.at < healed {
                during[bucket] += 1;
            } else if w.at >= healed {
                after[bucket] += 1;
            }
            match runs.last_mut() {
                Some(r) if r.2 == who => {
                    r.1 = at(w.at);
                    r.3 += 1;
                }
                _ => runs.push((at(w.at), at(w.at), who, 1)),
            }
        }
        let moves = runs
            .iter()
            .filter(|r| r.2 != "nobody")
            .collect::<Vec<_>>()
            .windows(2)
            .filter(|p| p[0].2 != p[1].2)
            .count();
        println!("{ip}:");
        for (from, to, who, n) in &runs {
            println!("  +{from:.2}..+{to:.2} s ({n} windows): {who}");
        }
        println!(
            "  from 1 s after the block to the heal: {} windows with one MAC, {} with none, {} with two or more",
            during[1], during[0], during[2]
        );
        println!(
            "  after the heal: {} with one MAC, {} with none, {} with two or more; changes of the answering node over the run: {moves}",
            after[1], after[0], after[2]
        );
    }
    Ok(())
}

//! Layer2 failover bench: on the agent test's segment (three nodes, a client, one bridge),
//! cuts the owner of the IPv4 EIP away (link down, or SIGKILL of its agent) and measures, from
//! the client, the time from the cut to the first TCP connection answered by another node.
//! After each run settles it checks that exactly one MAC answers ARP for the EIP and that the
//! client's neighbour entry holds the live owner's MAC; then it restores the node and waits
//! for the IP to come back.
//!
//! Usage (root): `l2-failover-bench [RUNS] [AGENT_BINARY]` (default 10 runs of each kind; the
//! agent next to this binary).

#![allow(clippy::print_stdout)]

use std::time::Duration;

use anyhow::{Context, bail};
use berth_e2e::layer2::{EIP4, NODES, Segment, wait};

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

fn owner(seg: &Segment) -> anyhow::Result<usize> {
    let answers = wait(Duration::from_secs(10), || {
        seg.who_answers(EIP4).ok().filter(|a| a.len() == 1)
    })
    .with_context(|| format!("not exactly one MAC answers: {:?}", seg.who_answers(EIP4)))?;
    seg.node_of(&answers[0].0)
        .with_context(|| format!("{EIP4} answered by a MAC of no node: {answers:?}"))
}

fn one(seg: &mut Segment, cut: Cut) -> anyhow::Result<Run> {
    let old = owner(seg)?;
    seg.wait_reachable(EIP4, Duration::from_secs(10))
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
        .failover(EIP4, NODES[old], &args)
        .map_err(anyhow::Error::msg)?;
    if cut == Cut::Kill {
        // Reap it (already dead).
        seg.kill_agent(old);
    }
    // Settle, then: exactly one MAC answers, and the client holds the live owner's MAC.
    std::thread::sleep(Duration::from_millis(1500));
    let answers = seg.who_answers(EIP4).map_err(anyhow::Error::msg)?;
    let two_answer = answers.len() != 1;
    let live = NODES
        .iter()
        .position(|n| *n == new)
        .context("unknown node answered")?;
    let dead_mac = seg
        .client_neighbour(EIP4)
        .is_none_or(|m| !m.eq_ignore_ascii_case(&seg.macs[live]));
    // Restore and wait for the IP to come back to its first owner.
    match cut {
        Cut::Link => seg.set_link(old, true).map_err(anyhow::Error::msg)?,
        Cut::Kill => seg.start_agent(old).map_err(anyhow::Error::msg)?,
    }
    let back = wait(Duration::from_secs(15), || {
        (owner(seg).ok() == Some(old)
            && seg
                .client_neighbour(EIP4)
                .is_some_and(|m| m.eq_ignore_ascii_case(&seg.macs[old])))
        .then_some(())
    });
    if back.is_none() {
        bail!("{} did not take {EIP4} back after the restore", NODES[old]);
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
    println!("Layer2 failover, {runs} runs each, IPv4 EIP {EIP4}, 3 nodes, agent {agent}");
    let mut table = Vec::new();
    for cut in [Cut::Link, Cut::Kill] {
        let mut results = Vec::new();
        for i in 0..runs {
            let r = one(&mut seg, cut)
                .with_context(|| format!("{cut:?} run {i}; logs:\n{}", seg.logs()))?;
            println!(
                "{cut:?} run {i}: {:.3} s{}{}",
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
        table.push(format!(
            "| {} | {} | {:.3} s | {:.3} s | {:.3} s | {:.3} s | {} | {} |",
            match cut {
                Cut::Link => "link cut (ip link set eth0 down)",
                Cut::Kill => "SIGKILL of the owner's agent",
            },
            runs,
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
        "| cut | runs | median | min | p90 | max | runs with two nodes answering | runs leaving the client on a dead MAC |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for row in table {
        println!("{row}");
    }
    Ok(())
}

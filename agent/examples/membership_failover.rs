//! Measures how fast membership notices a crashed agent, on loopback.
//!
//! `cargo run --release -p berth-agent --example membership_failover -- [members] [kills]`
//! (defaults: 3 members, 10 kills). Each round kills one member without a goodbye (like
//! SIGKILL), times until every survivor's alive set has lost it, then restarts it (same name,
//! same address) and waits for everyone to see it again. Prints each detection time and the
//! median. Only loopback traffic.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use berth_agent::membership::{Membership, MembershipConfig, MembershipMetrics, Timing};
use tokio::sync::watch;

type Alive = watch::Receiver<BTreeSet<String>>;

const KEY: &[u8] = b"berth-example-membership-key-0123456789";
const PATIENCE: Duration = Duration::from_secs(10);

/// `Timing::fast()`, with `PROBE_MS`, `RTT_MS`, `SUSPECT_MS` and `GOSSIP_MS` from the
/// environment if set.
fn timing() -> Timing {
    let ms = |name: &str| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis)
    };
    let fast = Timing::fast();
    Timing {
        probe_period: ms("PROBE_MS").unwrap_or(fast.probe_period),
        probe_rtt: ms("RTT_MS").unwrap_or(fast.probe_rtt),
        suspect_to_down: ms("SUSPECT_MS").unwrap_or(fast.suspect_to_down),
        gossip_period: ms("GOSSIP_MS").unwrap_or(fast.gossip_period),
        ..fast
    }
}

fn config(node: &str, listen: SocketAddr, seeds: Vec<SocketAddr>) -> MembershipConfig {
    MembershipConfig {
        node: node.to_string(),
        listen,
        advertise: listen,
        seeds,
        key: KEY.to_vec(),
        timing: timing(),
        metrics: MembershipMetrics::default(),
        generation_file: None,
    }
}

async fn wait_until(
    rx: &mut Alive,
    pred: impl Fn(&BTreeSet<String>) -> bool,
) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        if pred(&rx.borrow_and_update()) {
            return Ok(());
        }
        let left = PATIENCE.saturating_sub(started.elapsed());
        tokio::time::timeout(left, rx.changed())
            .await
            .context("timed out")?
            .context("membership stopped")?;
    }
}

async fn start_retrying(cfg: MembershipConfig) -> anyhow::Result<(Membership, Alive)> {
    for _ in 0..100 {
        match Membership::start(cfg.clone()).await {
            Ok(m) => return Ok(m),
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    bail!("could not restart {}", cfg.node)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // RUST_LOG=info shows every up/down the members see.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let mut args = std::env::args().skip(1);
    let members: usize = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(3)
        .max(2);
    let kills: usize = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(10)
        .max(1);
    let any: SocketAddr = "127.0.0.1:0".parse()?;

    let names: Vec<String> = (0..members).map(|i| format!("node{i}")).collect();
    let mut nodes: Vec<(Membership, Alive)> = Vec::new();
    let mut seed = Vec::new();
    for name in &names {
        let node = Membership::start(config(name, any, seed.clone())).await?;
        if seed.is_empty() {
            seed.push(node.0.identity().addr);
        }
        nodes.push(node);
    }
    let everyone: BTreeSet<String> = names.iter().cloned().collect();
    for (_, rx) in &mut nodes {
        wait_until(rx, |s| *s == everyone)
            .await
            .context("initial convergence")?;
    }
    let rejoins = |nodes: &[(Membership, Alive)]| -> u64 {
        nodes.iter().map(|(m, _)| m.metrics().rejoins.get()).sum()
    };
    println!(
        "{members} members converged after {} false downs (rejoins); timing {:?}",
        rejoins(&nodes),
        timing()
    );
    let rejoins_before = rejoins(&nodes);

    // Steady-state cost per member (what one node sends, whatever the cluster size).
    let sample = Duration::from_secs(3);
    let before: Vec<(u64, u64)> = nodes
        .iter()
        .map(|(m, _)| {
            (
                m.metrics().datagrams_sent.get(),
                m.metrics().bytes_sent.get(),
            )
        })
        .collect();
    for (_, rx) in &mut nodes {
        rx.mark_unchanged();
    }
    tokio::time::sleep(sample).await;
    let flaps = nodes
        .iter()
        .filter(|(_, rx)| rx.has_changed().unwrap_or(true))
        .count();
    println!(
        "while nothing happened: {flaps} members saw their alive set change, {} false downs (want 0, 0)",
        rejoins(&nodes) - rejoins_before
    );
    let late: u64 = nodes
        .iter()
        .map(|(m, _)| m.metrics().late_timers.get())
        .sum();
    println!("timers late by more than probe_rtt so far (CPU starvation): {late}");
    let (mut datagrams, mut bytes) = (0u64, 0u64);
    for ((m, _), (d0, b0)) in nodes.iter().zip(before) {
        datagrams += m.metrics().datagrams_sent.get() - d0;
        bytes += m.metrics().bytes_sent.get() - b0;
    }
    let per_node_s = (members as f64) * sample.as_secs_f64();
    println!(
        "steady state, per member: {:.0} datagrams/s, {:.0} bytes/s sent ({:.0} bytes each)",
        datagrams as f64 / per_node_s,
        bytes as f64 / per_node_s,
        bytes as f64 / datagrams.max(1) as f64
    );

    let mut times = Vec::new();
    let mut typicals = Vec::new();
    for round in 0..kills {
        // Never the seed, so restarts can join through it.
        let victim = 1 + round % (members - 1);
        let (m, _) = nodes.remove(victim);
        let addr = m.identity().addr;
        let name = names[victim].clone();
        let killed = Instant::now();
        // One watcher per survivor records when that survivor stops seeing the victim.
        let watchers: Vec<_> = nodes
            .iter()
            .map(|(_, rx)| {
                let mut rx = rx.clone();
                let gone = name.clone();
                tokio::spawn(async move {
                    wait_until(&mut rx, |s| !s.contains(&gone)).await?;
                    anyhow::Ok(killed.elapsed())
                })
            })
            .collect();
        drop(m);
        let mut seen = Vec::new();
        for w in watchers {
            seen.push(w.await?.context("detection")?);
        }
        seen.sort();
        let typical = seen[seen.len() / 2];
        let took = seen[seen.len() - 1];
        println!(
            "kill {round:2}: {name} dropped by the median survivor after {typical:?}, by all {} after {took:?}",
            members - 1
        );
        times.push(took);
        typicals.push(typical);
        let node = start_retrying(config(&name, addr, seed.clone())).await?;
        nodes.insert(victim, node);
        for (_, rx) in &mut nodes {
            wait_until(rx, |s| *s == everyone).await.context("rejoin")?;
        }
        // Let the restarted member settle into the probe rotation.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    typicals.sort();
    println!(
        "detection by the median survivor over {kills} kills: median {:?}, min {:?}, max {:?}",
        typicals[typicals.len() / 2],
        typicals[0],
        typicals[typicals.len() - 1]
    );
    times.sort();
    let median = times[times.len() / 2];
    println!(
        "detection by all survivors over {kills} kills: median {median:?}, min {:?}, max {:?}",
        times[0],
        times[times.len() - 1]
    );
    Ok(())
}

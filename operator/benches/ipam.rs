//! IPAM cost: one million allocations, then one million releases, in an IPv4 /8 and an IPv6
//! /64. Reports allocations (releases) per second, and bytes of resident memory per held
//! allocation, each measured in a fresh process.

// A bench binary: a failure to build the fixed inputs is a broken bench, and should stop it.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use berth_operator::ipam::{Family, Holder, Ipam, PoolSpec, Request, ServiceKey};
use criterion::{BatchSize, Criterion, Throughput};

/// Allocations per run: a million under `cargo bench` (which passes `--bench`); a
/// thousand when the bench runs as a test (`cargo test --benches`, as CI does), where only
/// "it still runs" is checked and our code is not optimised.
fn n() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| {
        let full =
            std::env::args().any(|a| a == "--bench") || std::env::var("BERTH_BENCH_FULL").is_ok();
        if full { 1_000_000 } else { 1_000 }
    })
}

fn engine(address: &str) -> Ipam {
    let mut ipam = Ipam::new();
    ipam.upsert_pool(PoolSpec {
        name: "bench".into(),
        address: address.into(),
        default: true,
        ..Default::default()
    })
    .unwrap();
    ipam
}

fn requests(family: Family) -> Vec<Request> {
    (0..n())
        .map(|i| {
            Request::new(
                Holder::new(ServiceKey::new("bench", format!("svc-{i}"))),
                family,
            )
        })
        .collect()
}

fn filled(address: &str, reqs: &[Request]) -> Ipam {
    let mut ipam = engine(address);
    for r in reqs {
        ipam.allocate(r).unwrap();
    }
    ipam
}

/// Resident set size in bytes, from /proc (Linux).
fn rss() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn memory_report(label: &str, address: &str, family: Family) {
    let reqs = requests(family);
    let before = rss();
    let ipam = filled(address, &reqs);
    let after = rss();
    assert_eq!(ipam.held(), n());
    match (before, after) {
        (Some(b), Some(a)) => {
            println!(
                "{label}: {} bytes of resident memory per allocation ({} held)",
                a.saturating_sub(b) / n() as u64,
                n()
            )
        }
        _ => println!("{label}: /proc/self/statm unavailable, memory not measured"),
    }
    drop(black_box(ipam));
}

fn bench(c: &mut Criterion, label: &str, address: &str, family: Family) {
    let reqs = requests(family);
    let mut g = c.benchmark_group(label);
    g.sample_size(10)
        .measurement_time(Duration::from_secs(20))
        .warm_up_time(Duration::from_secs(1));
    g.throughput(Throughput::Elements(n() as u64));
    g.bench_function("allocate 1M", |b| {
        b.iter_batched(
            || engine(address),
            |mut ipam| {
                for r in &reqs {
                    black_box(ipam.allocate(r).unwrap());
                }
                ipam
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("release 1M", |b| {
        b.iter_batched(
            || filled(address, &reqs),
            |mut ipam| {
                for r in &reqs {
                    black_box(ipam.release(&r.holder.service));
                }
                ipam
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

/// Each memory figure comes from a fresh process, so heap freed by one measurement cannot be
/// reused by the next and hide its cost.
fn memory_in_child(which: &str) {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .env("BERTH_BENCH_MEMORY", which)
        .envs((n() == 1_000_000).then_some(("BERTH_BENCH_FULL", "1")))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "memory measurement failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    print!("{}", String::from_utf8_lossy(&out.stdout));
}

fn main() {
    match std::env::var("BERTH_BENCH_MEMORY").as_deref() {
        Ok("v4") => return memory_report("ipv4 /8", "10.0.0.0/8", Family::V4),
        Ok("v6") => return memory_report("ipv6 /64", "fd00::/64", Family::V6),
        _ => {}
    }
    memory_in_child("v4");
    memory_in_child("v6");
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c, "ipv4 /8", "10.0.0.0/8", Family::V4);
    bench(&mut c, "ipv6 /64", "fd00::/64", Family::V6);
    c.final_summary();
}

//! `update-bench`: the latency of one route change through the speaker's control API with
//! 100,000 routes already announced, from the start of the `UpdateRoutes` call to the UPDATE
//! arriving at the peer's socket.
//!
//! The peer is this process, on loopback (no root): it completes the BGP handshake (hold time
//! 0, ADD-PATH receive), takes the whole table, then times each change. The speaker runs as in
//! production, with a state directory, so every change is also journaled (fsync) before it is
//! acknowledged; the next change starts after the acknowledgement.
//!
//! `cargo build --release -p berth-bgp-server -p berth-e2e && target/release/update-bench`

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use berth_bgp_wire::{
    AddPathMode, Capability, DecodeContext, EncodeContext, Family, Message, Open, Update,
};
use berth_proto::v1;
use clap::Parser;

/// One route change at a time with a large table resident; p50/p99 to the wire.
#[derive(Parser, Debug)]
#[command(about, long_about)]
struct Args {
    /// Routes announced before measuring (IPv4 /32s from 100.64.0.0, 4 next hops each).
    #[arg(long, default_value_t = 100_000)]
    routes: u32,
    /// Changes to time.
    #[arg(long, default_value_t = 2000)]
    changes: u32,
    /// The speaker binary (default: next to this one).
    #[arg(long)]
    speaker: Option<PathBuf>,
}

fn prefix(i: u32) -> String {
    format!(
        "{}/32",
        Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 0)) + i)
    )
}

fn route(i: u32, hops: &[u8]) -> v1::Route {
    v1::Route {
        prefix: prefix(i),
        next_hops: hops
            .iter()
            .map(|h| v1::NextHop {
                address: format!("10.0.0.{h}"),
                weight: 0,
            })
            .collect(),
        ..Default::default()
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let speaker = match &args.speaker {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no directory for this binary")?
            .join("berth-bgp-server"),
    };
    let dir = std::env::temp_dir().join(format!("berth-update-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let peer = TcpListener::bind("127.0.0.1:0")?;
    let peer_port = peer.local_addr()?.port();
    let metrics = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let sock = dir.join("api.sock");
    let mut child = Command::new(&speaker)
        .arg("--grpc-socket")
        .arg(&sock)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics}")])
        .args(["--log", "warn"])
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(dir.join("speaker.log"))?)
        .spawn()
        .with_context(|| format!("starting {}", speaker.display()))?;
    let pid = child.id();
    let result = run(&args, &sock, peer, peer_port, pid);
    let _ = child.kill();
    let _ = child.wait();
    if result.is_err() {
        let log = std::fs::read_to_string(dir.join("speaker.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        eprintln!(
            "speaker log (last lines, newest first):\n{}",
            tail.join("\n")
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run(
    args: &Args,
    sock: &std::path::Path,
    peer: TcpListener,
    peer_port: u16,
    pid: u32,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut api = rt.block_on(async {
        for _ in 0..100 {
            if let Ok(c) = berth_proto::connect_unix(sock).await {
                return Ok(c);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("the speaker's API never answered on {}", sock.display())
    })?;
    let all: Vec<v1::Route> = (0..args.routes)
        .map(|i| route(i, &[11, 12, 13, 14]))
        .collect();
    let state = v1::DesiredState {
        next_hop_groups: Vec::new(),
        generation: 1,
        global: Some(v1::Global {
            asn: 64512,
            router_id: "10.0.0.11".into(),
            ..Default::default()
        }),
        peers: vec![v1::Peer {
            address: "127.0.0.1".into(),
            port: u32::from(peer_port),
            asn: 64513,
            hold_time_seconds: Some(0),
            connect_retry_seconds: 1,
            ..Default::default()
        }],
        routes: all,
    };
    let loaded = Instant::now();
    rt.block_on(api.apply(v1::ApplyRequest { state: Some(state) }))
        .context("Apply of the table")?;
    let apply_time = loaded.elapsed();

    // The peer: handshake, then one timestamp per UPDATE, on its own thread.
    let (mut conn, _) = peer.accept()?;
    conn.set_nodelay(true)?;
    let enc = EncodeContext {
        four_octet_as: true,
        ..Default::default()
    };
    let open = Open {
        asn: 64513,
        hold_time: 0,
        router_id: Ipv4Addr::new(10, 0, 0, 1),
        capabilities: vec![
            Capability::Multiprotocol { afi: 1, safi: 1 },
            Capability::FourOctetAs(64513),
            Capability::AddPath(vec![(1, 1, AddPathMode::Receive)]),
        ],
    };
    conn.write_all(&Message::Open(open).to_bytes(&enc))?;
    conn.write_all(&Message::Keepalive.to_bytes(&enc))?;
    let (tx, rx) = mpsc::channel::<(Instant, bool)>();
    let mut reader = conn.try_clone()?;
    std::thread::spawn(move || {
        let ctx = DecodeContext {
            four_octet_as: true,
            add_path: [true, false],
            extended_message: false,
        };
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 1 << 16];
        loop {
            let n = match reader.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let at = Instant::now();
            buf.extend_from_slice(&chunk[..n]);
            loop {
                let (m, used) = match Message::decode(&buf, &ctx) {
                    Ok(Some(x)) => x,
                    Ok(None) => break,
                    Err(e) => {
                        eprintln!("the peer cannot decode the speaker's message: {e}");
                        return;
                    }
                };
                buf.drain(..used);
                if let Message::Update(u) = m {
                    let eor = u == Update::end_of_rib(Family::Ipv4Unicast);
                    if tx.send((at, eor)).is_err() {
                        return;
                    }
                }
            }
        }
    });
    let table_start = Instant::now();
    loop {
        let (_, eor) = rx
            .recv_timeout(Duration::from_secs(120))
            .context("the table never finished (no End-of-RIB)")?;
        if eor {
            break;
        }
    }
    let table_time = table_start.elapsed();

    // One change at a time: swap one next hop of a prefix, wait for its UPDATE.
    let mut samples = Vec::with_capacity(args.changes as usize);
    // Each prefix's fourth next hop, flipped between .14 and .15 by every change to it.
    let mut fourth = vec![14u8; args.routes as usize];
    for k in 0..args.changes {
        let i = (k * 7919) % args.routes;
        let Some(slot) = fourth.get_mut(i as usize) else {
            bail!("prefix {i} out of range");
        };
        *slot = if *slot == 14 { 15 } else { 14 };
        let hops: &[u8] = &[11, 12, 13, *slot];
        let req = v1::UpdateRoutesRequest {
            next_hop_groups: Vec::new(),
            generation: 2 + u64::from(k),
            upsert: vec![route(i, hops)],
            remove: vec![],
        };
        let t0 = Instant::now();
        rt.block_on(api.update_routes(req))
            .context("UpdateRoutes")?;
        let (at, _) = rx
            .recv_timeout(Duration::from_secs(10))
            .with_context(|| format!("no UPDATE on the wire after change {k} (prefix {i})"))?;
        samples.push(at.saturating_duration_since(t0));
        // The change's second message (withdraw of the old path or announce) may follow.
        while rx.recv_timeout(Duration::from_millis(2)).is_ok() {}
    }
    let slowest = samples
        .iter()
        .enumerate()
        .max_by_key(|(_, d)| **d)
        .map_or(0, |(k, _)| k);
    samples.sort_unstable();
    let pick = |q: f64| {
        let idx = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples.get(idx).copied().unwrap_or_default()
    };
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .unwrap_or_default();
    println!(
        "{} routes x 4 next hops resident (Apply {:.2} s, table on the wire {:.2} s), {} single-route changes:",
        args.routes,
        apply_time.as_secs_f64(),
        table_time.as_secs_f64(),
        samples.len()
    );
    println!(
        "call -> UPDATE at the peer: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms (change #{slowest}); speaker peak RSS {} KiB",
        pick(0.5).as_secs_f64() * 1e3,
        pick(0.99).as_secs_f64() * 1e3,
        pick(1.0).as_secs_f64() * 1e3,
        rss
    );
    Ok(())
}

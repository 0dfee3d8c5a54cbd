//! `bgp-bench`: how fast a sender fills a real router with N /32s, and how much memory it
//! takes, for Berth's speaker and GoBGP (the engine inside Porter/OpenELB) in the same run.
//!
//! Two modes. `api` is the production path: the speaker runs with its control API (Unix
//! socket) and a state directory, its peer (a BIRD receiver) is up first, and the routes
//! arrive in one gRPC `Apply`; beside it, in the same run, BIRD as the sender holds the same
//! routes (one static protocol per path, ADD-PATH for more than one) into the same kind of
//! receiver. Both report peak RSS (VmHWM), resident memory (VmRSS) after settling, and the time
//! until the receiver holds every path; for Berth also the peak after an identical re-apply
//! (what the operator sends every resync). `file` is the earlier comparison with GoBGP, routes
//! loaded from a file at start.
//!
//! In `file` mode each run builds a router namespace and a node namespace on one veth link, starts the sender
//! with all routes loaded, then the receiver (FRR or BIRD), and measures from the moment the
//! BGP connection is up until the receiver holds every path (and 99 % of them). The sender's
//! peak RSS is its VmHWM at the end. Needs root, frr, bird2 and gobgpd.
//!
//! `cargo build --release -p berth-bgp-server -p berth-e2e && target/release/bgp-bench --mode api`

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use berth_e2e::bird::Bird;
use berth_e2e::frr::{Frr, wait_for};
use berth_e2e::gobgp::GoBgp;
use berth_e2e::netns::Lab;
use clap::{Parser, ValueEnum};

/// Berth's speaker against GoBGP, into FRR and BIRD, with 1 and 4 paths per prefix.
#[derive(Parser, Debug)]
#[command(about, long_about)]
struct Args {
    /// Prefixes to announce (IPv4 /32s from 100.64.0.0).
    #[arg(long, default_value_t = 100_000)]
    prefixes: u32,
    /// Paths per prefix (next hops; more than one uses ADD-PATH). Repeatable.
    #[arg(long = "paths", default_values_t = [1usize, 4])]
    paths: Vec<usize>,
    /// Receivers to measure.
    #[arg(long = "receiver", value_enum, default_values_t = [Receiver::Frr, Receiver::Bird])]
    receivers: Vec<Receiver>,
    /// Senders to measure.
    #[arg(long = "sender", value_enum, default_values_t = [Sender::Berth, Sender::Gobgp])]
    senders: Vec<Sender>,
    /// Runs of each combination; the table shows medians.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// The speaker binary (default: next to this one).
    #[arg(long)]
    speaker: Option<PathBuf>,
    /// Give up on one run after this many seconds.
    #[arg(long, default_value_t = 180)]
    timeout: u64,
    /// What to measure: `api` (routes over the control API, against BIRD as the sender) and
    /// `file` (routes from a file at start, against GoBGP). Repeatable.
    #[arg(long = "mode", value_enum, default_values_t = [Mode::Api, Mode::File])]
    modes: Vec<Mode>,
    /// Seconds to wait after the receiver holds every path before reading resident memory.
    #[arg(long, default_value_t = 5)]
    settle: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Api,
    File,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Receiver {
    Frr,
    Bird,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Sender {
    Berth,
    Gobgp,
}

/// A running receiver.
enum Rx {
    Frr(Frr),
    Bird(Bird),
}

/// One measured run.
#[derive(Debug, Clone, Copy)]
struct Sample {
    all: Duration,
    p99: Duration,
    rss_kib: u64,
}

const ROUTER: &str = "10.0.0.1";
const NODE: &str = "10.0.0.11";

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let speaker = match &args.speaker {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no directory for this binary")?
            .join("berth-bgp-server"),
    };
    if !speaker.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p berth-bgp-server` or pass --speaker",
            speaker.display()
        );
    }
    let work = std::env::temp_dir().join(format!("berth-bgp-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let mut report = String::new();
    if args.modes.contains(&Mode::Api) {
        api_report(&args, &speaker, &work, &mut report)?;
    }
    if args.modes.contains(&Mode::File) {
        file_report(&args, &speaker, &work, &mut report)?;
    }
    let _ = std::fs::remove_dir_all(&work);
    print!("{report}");
    std::io::stdout().flush()?;
    Ok(())
}

/// One run of the production path (or of BIRD beside it).
#[derive(Debug, Clone, Copy, Default)]
struct ApiSample {
    /// From the start of the Apply call (Berth) or the BGP connection (BIRD) until the receiver
    /// holds every path.
    all: Duration,
    /// Peak RSS until then.
    peak_kib: u64,
    /// Resident after settling.
    resident_kib: u64,
    /// Of that, pages mapped from files (the program's code and its libraries).
    file_kib: u64,
    /// Peak RSS after one identical re-apply (Berth only).
    reapply_peak_kib: u64,
}

/// Which sender an `api` run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ApiSender {
    /// Berth's speaker, routes over gRPC.
    Berth,
    /// BIRD, routes in static protocols.
    Bird,
}

fn api_report(args: &Args, speaker: &Path, work: &Path, report: &mut String) -> anyhow::Result<()> {
    writeln!(
        report,
        "Production path: {} IPv4 /32s applied over the control API (Unix socket, --state-dir) with the peer up, receiver BIRD; BIRD as the sender holding the same routes, same run; median of {} runs.\n",
        args.prefixes, args.runs
    )?;
    writeln!(
        report,
        "| paths/prefix | sender | all received | peak RSS | resident after {} s | peak after identical re-apply | Berth/BIRD peak | Berth/BIRD resident |",
        args.settle
    )?;
    writeln!(report, "|---|---|---|---|---|---|---|---|")?;
    let mib = |kib: u64| kib as f64 / 1024.0;
    for &paths in &args.paths {
        let mut medians = Vec::new();
        for sender in [ApiSender::Berth, ApiSender::Bird] {
            let mut samples = Vec::new();
            for run in 0..args.runs {
                let dir = work.join(format!("api-{paths}-{sender:?}-{run}"));
                std::fs::create_dir_all(&dir)?;
                let s = match sender {
                    ApiSender::Berth => measure_api_berth(args, speaker, paths, &dir),
                    ApiSender::Bird => measure_api_bird(args, paths, &dir),
                }
                .with_context(|| {
                    format!(
                        "{sender:?} (api), {paths} path(s), run {run}: logs in {}",
                        dir.display()
                    )
                })?;
                eprintln!(
                    "{sender:?} (api), {paths} path(s), run {run}: all {:.2} s, peak {:.1} MiB, resident {:.1} MiB ({:.1} MiB of it code and libraries), peak after re-apply {:.1} MiB",
                    s.all.as_secs_f64(),
                    mib(s.peak_kib),
                    mib(s.resident_kib),
                    mib(s.file_kib),
                    mib(s.reapply_peak_kib)
                );
                samples.push(s);
            }
            medians.push((sender, api_median(&samples)));
        }
        let berth = medians.first().map(|(_, m)| *m).unwrap_or_default();
        let bird = medians.get(1).map(|(_, m)| *m).unwrap_or_default();
        for (sender, m) in &medians {
            let (ratio_peak, ratio_res, reapply) = if *sender == ApiSender::Berth {
                (
                    format!("{:.2}", berth.peak_kib as f64 / bird.peak_kib.max(1) as f64),
                    format!(
                        "{:.2}",
                        berth.resident_kib as f64 / bird.resident_kib.max(1) as f64
                    ),
                    format!("{:.1} MiB", mib(m.reapply_peak_kib)),
                )
            } else {
                (String::new(), String::new(), String::new())
            };
            writeln!(
                report,
                "| {paths} | {sender:?} | {:.2} s | {:.1} MiB | {:.1} MiB | {reapply} | {ratio_peak} | {ratio_res} |",
                m.all.as_secs_f64(),
                mib(m.peak_kib),
                mib(m.resident_kib),
            )?;
        }
    }
    writeln!(report)?;
    Ok(())
}

fn api_median(samples: &[ApiSample]) -> ApiSample {
    let pick = |f: fn(&ApiSample) -> u128| {
        let mut v: Vec<u128> = samples.iter().map(f).collect();
        v.sort_unstable();
        v.get(v.len() / 2).copied().unwrap_or(0)
    };
    ApiSample {
        all: Duration::from_nanos(pick(|s| s.all.as_nanos()) as u64),
        peak_kib: pick(|s| u128::from(s.peak_kib)) as u64,
        resident_kib: pick(|s| u128::from(s.resident_kib)) as u64,
        file_kib: pick(|s| u128::from(s.file_kib)) as u64,
        reapply_peak_kib: pick(|s| u128::from(s.reapply_peak_kib)) as u64,
    }
}

/// The router and node namespaces on one link, with BIRD receiving in the router.
fn api_lab(paths: usize, dir: &Path) -> anyhow::Result<(Lab, String, Bird)> {
    let mut lab = Lab::new("bb-");
    let router = lab.namespace("r").map_err(anyhow::Error::msg)?;
    let node = lab.namespace("n").map_err(anyhow::Error::msg)?;
    lab.link(
        &router,
        "veth-r",
        &["10.0.0.1/24"],
        &node,
        "veth-n",
        &["10.0.0.11/24"],
    )
    .map_err(anyhow::Error::msg)?;
    let rx = Bird::start(&mut lab, &router, &dir.join("rx"), &bird_conf(paths))
        .map_err(anyhow::Error::msg)?;
    Ok((lab, node, rx))
}

/// Waits until the receiver holds `expected` paths; the time since `start`.
fn until_received(
    args: &Args,
    lab: &Lab,
    rx: &Bird,
    expected: u64,
    start: Instant,
) -> anyhow::Result<Duration> {
    let deadline = start + Duration::from_secs(args.timeout);
    loop {
        let n = bird_count(rx, lab).unwrap_or(0);
        if n >= expected {
            return Ok(start.elapsed());
        }
        if Instant::now() > deadline {
            bail!(
                "the receiver holds {n} of {expected} paths after {}s",
                args.timeout
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn api_state(
    generation: u64,
    prefixes: u32,
    next_hops: &[String],
) -> berth_proto::v1::DesiredState {
    use berth_proto::v1;
    v1::DesiredState {
        next_hop_groups: Vec::new(),
        generation,
        global: Some(v1::Global {
            asn: 64512,
            router_id: NODE.into(),
            ..Default::default()
        }),
        peers: vec![v1::Peer {
            address: ROUTER.into(),
            asn: 64513,
            connect_retry_seconds: 1,
            ..Default::default()
        }],
        routes: (0..prefixes)
            .map(|i| v1::Route {
                prefix: format!("{}/32", prefix(i)),
                next_hops: next_hops
                    .iter()
                    .map(|a| v1::NextHop {
                        address: a.clone(),
                        weight: 0,
                    })
                    .collect(),
                ..Default::default()
            })
            .collect(),
    }
}

fn measure_api_berth(
    args: &Args,
    speaker: &Path,
    paths: usize,
    dir: &Path,
) -> anyhow::Result<ApiSample> {
    use berth_proto::v1;
    let (mut lab, node, rx) = api_lab(paths, dir)?;
    let sock = dir.join("api.sock");
    let state_dir = dir.join("state");
    let (s, sd) = (sock.display().to_string(), state_dir.display().to_string());
    let pid = lab
        .spawn(
            &node,
            &speaker.display().to_string(),
            &[
                "--grpc-socket",
                &s,
                "--state-dir",
                &sd,
                "--metrics-addr",
                "127.0.0.1:9473",
                "--log",
                "warn",
            ],
            &dir.join("speaker.log"),
        )
        .map_err(anyhow::Error::msg)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut api = rt.block_on(async {
        for _ in 0..200 {
            if let Ok(c) = berth_proto::connect_unix(&sock).await {
                return Ok(c);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("the speaker's API never answered on {}", sock.display())
    })?;
    let next_hops: Vec<String> = (0..paths).map(|i| format!("10.0.0.{}", 11 + i)).collect();
    // Peers first, no routes: the session comes up, then the table arrives as in production.
    rt.block_on(api.apply(v1::ApplyRequest {
        state: Some(api_state(1, 0, &next_hops)),
    }))
    .context("Apply of the peers")?;
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    loop {
        let st = rt
            .block_on(api.get_state(v1::GetStateRequest::default()))?
            .into_inner();
        if st.peers.iter().any(|p| p.state == "Established") {
            break;
        }
        if Instant::now() > deadline {
            bail!("the session never came up: {:?}", st.peers);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let state = api_state(2, args.prefixes, &next_hops);
    let expected = u64::from(args.prefixes) * paths as u64;
    let start = Instant::now();
    let reply = rt.block_on(api.apply(v1::ApplyRequest {
        state: Some(state.clone()),
    }))?;
    if reply.get_ref().routes_changed != args.prefixes {
        bail!("Apply changed {} routes", reply.get_ref().routes_changed);
    }
    let all = until_received(args, &lab, &rx, expected, start)?;
    let peak_kib = vm_kib(pid, "VmHWM:")?;
    std::thread::sleep(Duration::from_secs(args.settle));
    let resident_kib = vm_kib(pid, "VmRSS:")?;
    let file_kib = vm_kib(pid, "RssFile:")?;
    // What the operator does every resync: the same routes under a new generation.
    let again = v1::DesiredState {
        generation: 3,
        ..state
    };
    let reply = rt.block_on(api.apply(v1::ApplyRequest { state: Some(again) }))?;
    if reply.get_ref().routes_changed != 0 {
        bail!(
            "an identical re-apply changed {} routes",
            reply.get_ref().routes_changed
        );
    }
    let reapply_peak_kib = vm_kib(pid, "VmHWM:")?;
    drop(api);
    drop(rt);
    lab.terminate(pid);
    Ok(ApiSample {
        all,
        peak_kib,
        resident_kib,
        file_kib,
        reapply_peak_kib,
    })
}

fn measure_api_bird(args: &Args, paths: usize, dir: &Path) -> anyhow::Result<ApiSample> {
    let (mut lab, node, rx) = api_lab(paths, dir)?;
    // One static protocol per path, each next hop on the link (BIRD resolves gateways only
    // on a connected network): ADD-PATH sends each protocol's route as its own path.
    let mut conf = format!("router id {NODE};\nprotocol device {{}}\n");
    for p in 0..paths {
        writeln!(conf, "protocol static s{p} {{\n  ipv4;")?;
        for i in 0..args.prefixes {
            writeln!(conf, "  route {}/32 via 10.0.0.{};", prefix(i), 101 + p)?;
        }
        writeln!(conf, "}}")?;
    }
    let add_paths = if paths > 1 { " add paths tx;" } else { "" };
    writeln!(
        conf,
        "protocol bgp uplink {{
  local {NODE} as 64512;
  neighbor {ROUTER} as 64513;
  connect retry time 1;
  ipv4 {{ import none; export all;{add_paths} }};
}}"
    )?;
    let probe = lab
        .spawn(&node, "sleep", &["3600"], &dir.join("probe.log"))
        .map_err(anyhow::Error::msg)?;
    let sender =
        Bird::start(&mut lab, &node, &dir.join("tx"), &conf).map_err(anyhow::Error::msg)?;
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let start = loop {
        if bgp_connected(probe) {
            break Instant::now();
        }
        if Instant::now() > deadline {
            bail!("the BGP connection never came up");
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let expected = u64::from(args.prefixes) * paths as u64;
    let all = until_received(args, &lab, &rx, expected, start)?;
    let peak_kib = vm_kib(sender.pid(), "VmHWM:")?;
    std::thread::sleep(Duration::from_secs(args.settle));
    let resident_kib = vm_kib(sender.pid(), "VmRSS:")?;
    let file_kib = vm_kib(sender.pid(), "RssFile:")?;
    drop(lab);
    Ok(ApiSample {
        all,
        peak_kib,
        resident_kib,
        file_kib,
        reapply_peak_kib: 0,
    })
}

fn vm_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("the sender (pid {pid}) is gone"))?;
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

fn file_report(
    args: &Args,
    speaker: &Path,
    work: &Path,
    report: &mut String,
) -> anyhow::Result<()> {
    writeln!(
        report,
        "{} IPv4 /32s, median of {} runs; time from the BGP connection coming up until the receiver holds every path; sender peak RSS.\n",
        args.prefixes, args.runs
    )?;
    writeln!(
        report,
        "| paths/prefix | receiver | sender | all received | 99 % | sender RSS | Berth/GoBGP time | Berth/GoBGP RSS |"
    )?;
    writeln!(report, "|---|---|---|---|---|---|---|---|")?;
    for &paths in &args.paths {
        for &receiver in &args.receivers {
            let mut medians = Vec::new();
            for &sender in &args.senders {
                let mut samples = Vec::new();
                for run in 0..args.runs {
                    let dir = work.join(format!("{paths}-{receiver:?}-{sender:?}-{run}"));
                    std::fs::create_dir_all(&dir)?;
                    let s = measure(args, speaker, paths, receiver, sender, &dir).with_context(
                        || {
                            format!(
                                "{sender:?} → {receiver:?}, {paths} path(s), run {run}: logs in {}",
                                dir.display()
                            )
                        },
                    )?;
                    eprintln!(
                        "{sender:?} → {receiver:?}, {paths} path(s), run {run}: all {:.2} s, 99 % {:.2} s, {} MiB",
                        s.all.as_secs_f64(),
                        s.p99.as_secs_f64(),
                        s.rss_kib / 1024
                    );
                    samples.push(s);
                }
                medians.push((sender, median(&samples)));
            }
            let of = |who: Sender| medians.iter().find(|(s, _)| *s == who).map(|(_, m)| *m);
            let (berth, gobgp) = (of(Sender::Berth), of(Sender::Gobgp));
            for (sender, m) in &medians {
                let ratio = |f: fn(&Sample) -> f64| match (sender, berth, gobgp) {
                    (Sender::Berth, Some(b), Some(g)) => format!("{:.2}", f(&b) / f(&g)),
                    _ => String::new(),
                };
                writeln!(
                    report,
                    "| {paths} | {receiver:?} | {sender:?} | {:.2} s | {:.2} s | {} MiB | {} | {} |",
                    m.all.as_secs_f64(),
                    m.p99.as_secs_f64(),
                    m.rss_kib / 1024,
                    ratio(|s| s.all.as_secs_f64()),
                    ratio(|s| s.rss_kib as f64),
                )?;
            }
        }
    }
    Ok(())
}

fn median(samples: &[Sample]) -> Sample {
    let pick = |f: fn(&Sample) -> u128| {
        let mut v: Vec<u128> = samples.iter().map(f).collect();
        v.sort_unstable();
        v.get(v.len() / 2).copied().unwrap_or(0)
    };
    Sample {
        all: Duration::from_nanos(pick(|s| s.all.as_nanos()) as u64),
        p99: Duration::from_nanos(pick(|s| s.p99.as_nanos()) as u64),
        rss_kib: pick(|s| u128::from(s.rss_kib)) as u64,
    }
}

fn measure(
    args: &Args,
    speaker: &Path,
    paths: usize,
    receiver: Receiver,
    sender: Sender,
    dir: &Path,
) -> anyhow::Result<Sample> {
    let mut lab = Lab::new("bb-");
    let router = lab.namespace("r").map_err(anyhow::Error::msg)?;
    let node = lab.namespace("n").map_err(anyhow::Error::msg)?;
    lab.link(
        &router,
        "veth-r",
        &["10.0.0.1/24"],
        &node,
        "veth-n",
        &["10.0.0.11/24"],
    )
    .map_err(anyhow::Error::msg)?;
    let next_hops: Vec<String> = (0..paths).map(|i| format!("10.0.0.{}", 11 + i)).collect();
    let expected = u64::from(args.prefixes) * paths as u64;

    let sender_pid = match sender {
        Sender::Berth => start_berth(&mut lab, &node, speaker, dir, args.prefixes, &next_hops)?,
        Sender::Gobgp => start_gobgp(&mut lab, &node, dir, args.prefixes, &next_hops)?,
    };
    let rx = match receiver {
        Receiver::Frr => Rx::Frr(
            Frr::start(&mut lab, &router, dir, &frr_conf(paths)).map_err(anyhow::Error::msg)?,
        ),
        Receiver::Bird => Rx::Bird(
            Bird::start(&mut lab, &router, dir, &bird_conf(paths)).map_err(anyhow::Error::msg)?,
        ),
    };
    let count = |lab: &Lab| match &rx {
        Rx::Frr(f) => frr_count(f, lab),
        Rx::Bird(b) => bird_count(b, lab),
    };
    // A process in the router's namespace shows that namespace's sockets in /proc/PID/net/tcp,
    // read without spawning anything: the clock starts when the BGP connection is up (the
    // OPEN exchange, a few milliseconds, counts against both senders alike).
    let probe = lab
        .spawn(&router, "sleep", &["3600"], &dir.join("probe.log"))
        .map_err(anyhow::Error::msg)?;
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let established = loop {
        if bgp_connected(probe) {
            break Instant::now();
        }
        if Instant::now() > deadline {
            bail!("the BGP connection never came up");
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let mut p99 = None;
    let all = loop {
        let n = count(&lab).unwrap_or(0);
        if p99.is_none() && n * 100 >= expected * 99 {
            p99 = Some(established.elapsed());
        }
        if n >= expected {
            break established.elapsed();
        }
        if Instant::now() > deadline {
            bail!(
                "the receiver holds {n} of {expected} paths after {}s",
                args.timeout
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let rss_kib = vm_kib(sender_pid, "VmHWM:")?;
    drop(lab);
    Ok(Sample {
        all,
        p99: p99.unwrap_or(all),
        rss_kib,
    })
}

fn start_berth(
    lab: &mut Lab,
    node: &str,
    speaker: &Path,
    dir: &Path,
    prefixes: u32,
    next_hops: &[String],
) -> anyhow::Result<u32> {
    // JSON (the standalone file's other syntax): YAML's parser buffers the whole document,
    // which would dominate the peak RSS at 100,000 routes; production routes come over gRPC.
    let mut json = format!(
        r#"{{"asn": 64512, "routerId": "{NODE}", "gracefulRestart": {{"enabled": false}},
"peers": [{{"address": "{ROUTER}", "asn": 64513, "connectRetry": 1}}],
"routes": ["#
    );
    let nh: Vec<String> = next_hops.iter().map(|n| format!("\"{n}\"")).collect();
    let nh = nh.join(",");
    for i in 0..prefixes {
        let sep = if i + 1 < prefixes { "," } else { "" };
        writeln!(
            json,
            r#"{{"prefix": "{}/32", "nextHops": [{nh}]}}{sep}"#,
            prefix(i)
        )?;
    }
    json.push_str("]}\n");
    let conf = dir.join("speaker.json");
    std::fs::write(&conf, json)?;
    let c = conf.display().to_string();
    lab.spawn(
        node,
        &speaker.display().to_string(),
        &["--config", &c, "--metrics-addr", "127.0.0.1:9473"],
        &dir.join("speaker.log"),
    )
    .map_err(anyhow::Error::msg)
}

fn start_gobgp(
    lab: &mut Lab,
    node: &str,
    dir: &Path,
    prefixes: u32,
    next_hops: &[String],
) -> anyhow::Result<u32> {
    let add_paths = if next_hops.len() > 1 {
        "    [neighbors.afi-safis.add-paths.config]\n      send-max = 8\n"
    } else {
        ""
    };
    let toml = format!(
        r#"[global.config]
  as = 64512
  router-id = "{NODE}"
  port = -1

[[neighbors]]
  [neighbors.config]
    neighbor-address = "{ROUTER}"
    peer-as = 64513
  [neighbors.timers.config]
    connect-retry = 1
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv4-unicast"
{add_paths}"#
    );
    let gobgp = GoBgp::start(lab, node, dir, &toml).map_err(anyhow::Error::msg)?;
    let pid = gobgp.pid();
    wait_for(Duration::from_secs(10), || {
        gobgp.gobgp(lab, &["global"]).ok()
    })
    .context("gobgpd's API never answered")?;
    let mrt = dir.join("routes.mrt");
    std::fs::write(&mrt, mrt_dump(prefixes, next_hops)?)?;
    let want = format!("Path: {}", u64::from(prefixes) * next_hops.len() as u64);
    let summary = |lab: &Lab| gobgp.gobgp(lab, &["global", "rib", "summary", "-a", "ipv4"]);
    for _ in 0..3 {
        gobgp
            .gobgp(
                lab,
                &["mrt", "inject", "global", &mrt.display().to_string()],
            )
            .map_err(anyhow::Error::msg)?;
        if wait_for(Duration::from_secs(5), || {
            summary(lab).ok().filter(|s| s.contains(&want))
        })
        .is_some()
        {
            return Ok(pid);
        }
    }
    bail!(
        "gobgp did not hold every path after mrt inject: {:?}",
        summary(lab)
    )
}

/// The i-th prefix: 100.64.0.0 + i.
fn prefix(i: u32) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(100, 64, 0, 0)) + i)
}

/// An MRT TABLE_DUMP_V2 file (RFC 6396) holding every prefix once per next hop, each next hop
/// as its own MRT peer, so that `gobgp mrt inject` gives GoBGP distinct paths to send with
/// ADD-PATH.
fn mrt_dump(prefixes: u32, next_hops: &[String]) -> anyhow::Result<Vec<u8>> {
    fn record(out: &mut Vec<u8>, subtype: u16, body: &[u8]) -> anyhow::Result<()> {
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&13u16.to_be_bytes()); // TABLE_DUMP_V2
        out.extend_from_slice(&subtype.to_be_bytes());
        out.extend_from_slice(&u32::try_from(body.len())?.to_be_bytes());
        out.extend_from_slice(body);
        Ok(())
    }
    let nhs: Vec<std::net::Ipv4Addr> = next_hops
        .iter()
        .map(|n| n.parse())
        .collect::<Result<_, _>>()?;
    let mut out = Vec::new();
    let mut peers = Vec::new();
    peers.extend_from_slice(&std::net::Ipv4Addr::new(10, 0, 0, 11).octets());
    peers.extend_from_slice(&0u16.to_be_bytes()); // no view name
    peers.extend_from_slice(&u16::try_from(nhs.len())?.to_be_bytes());
    for nh in &nhs {
        peers.push(0x02); // IPv4 peer address, 4-octet AS
        peers.extend_from_slice(&nh.octets()); // BGP ID
        peers.extend_from_slice(&nh.octets()); // address
        peers.extend_from_slice(&64512u32.to_be_bytes());
    }
    record(&mut out, 1, &peers)?;
    let mut body = Vec::new();
    // `gobgp mrt inject` (3.10) loses a varying tail of the stream (up to ~5 % seen): repeat
    // the last record so that only repeats are lost; re-adding a held path changes nothing.
    let padded = (0..prefixes).chain(std::iter::repeat_n(prefixes.saturating_sub(1), 8192));
    for i in padded {
        body.clear();
        body.extend_from_slice(&i.to_be_bytes());
        body.push(32);
        body.extend_from_slice(&prefix(i).octets());
        body.extend_from_slice(&u16::try_from(nhs.len())?.to_be_bytes());
        for (idx, nh) in nhs.iter().enumerate() {
            body.extend_from_slice(&u16::try_from(idx)?.to_be_bytes());
            body.extend_from_slice(&0u32.to_be_bytes());
            // ORIGIN IGP, empty AS_PATH, NEXT_HOP.
            let attrs = [
                0x40,
                1,
                1,
                0,
                0x40,
                2,
                0,
                0x40,
                3,
                4,
                nh.octets()[0],
                nh.octets()[1],
                nh.octets()[2],
                nh.octets()[3],
            ];
            body.extend_from_slice(&u16::try_from(attrs.len())?.to_be_bytes());
            body.extend_from_slice(&attrs);
        }
        record(&mut out, 2, &body)?;
    }
    Ok(out)
}

fn frr_conf(paths: usize) -> String {
    let _ = paths; // FRR offers ADD-PATH receive on its own.
    format!(
        "frr defaults traditional
hostname r
router bgp 64513
 bgp router-id {ROUTER}
 no bgp ebgp-requires-policy
 no bgp network import-check
 neighbor {NODE} remote-as 64512
 neighbor {NODE} timers connect 1
 address-family ipv4 unicast
  neighbor {NODE} activate
 exit-address-family
"
    )
}

fn bird_conf(paths: usize) -> String {
    let add_paths = if paths > 1 { " add paths rx;" } else { "" };
    format!(
        "router id {ROUTER};
protocol device {{}}
protocol bgp berth {{
  local {ROUTER} as 64513;
  neighbor {NODE} as 64512;
  connect retry time 1;
  ipv4 {{ import all; export none;{add_paths} }};
}}
"
    )
}

/// Paths received at FRR.
fn frr_count(frr: &Frr, lab: &Lab) -> Option<u64> {
    let json = frr.vtysh(lab, "show bgp ipv4 unicast summary json").ok()?;
    let compact: String = json.split_whitespace().collect();
    let peer = compact.split(&format!("\"{NODE}\":{{")).nth(1)?;
    peer.split("\"pfxRcd\":")
        .nth(1)?
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Paths received at BIRD.
fn bird_count(bird: &Bird, lab: &Lab) -> Option<u64> {
    let count = bird.birdc(lab, "show route count").ok()?;
    // "400000 of 400000 routes for 100000 networks in table master4"
    count
        .lines()
        .find(|l| l.contains(" routes for "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// Whether the namespace of `pid` has an established TCP connection to or from port 179.
fn bgp_connected(pid: u32) -> bool {
    let Ok(tcp) = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")) else {
        return false;
    };
    // "sl local_address rem_address st ...": addresses as HEX_IP:HEX_PORT, state 01 =
    // ESTABLISHED, port 179 = 00B3.
    tcp.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        matches!(f.as_slice(), [_, local, remote, "01", ..]
            if local.ends_with(":00B3") || remote.ends_with(":00B3"))
    })
}

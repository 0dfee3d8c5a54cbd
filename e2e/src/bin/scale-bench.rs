//! `scale-bench`: the operator at cluster scale. The in-memory API server (in this process)
//! holds 1,000 Nodes and 10,000 `LoadBalancer` Services (half `Local`) with EndpointSlices;
//! the real `berth-operator` and one real `berth-bgp-server` (mutual TLS, as in production)
//! run against it. Measured, in order:
//!
//! 1. start: every Service has an IP, and the speaker accepted the table;
//! 2. heartbeats: every Node's `lastHeartbeatTime` written every `--heartbeat-seconds` (as
//!    kubelets do) for `--churn-seconds`: Service reconciles, full Applies and API writes by
//!    the operator meanwhile, and its CPU;
//! 3. endpoint changes, one at a time: the time from the EndpointSlice write to the speaker's
//!    next accepted change (its Watch stream), and the operator's CPU per change (the sum of
//!    its threads' `schedstat`, nanoseconds) from the write to 10 ms after the speaker's
//!    acceptance (a change's own work ends about a millisecond after it), all threads and
//!    without the Lease renewal thread (renewals every 3 s on their own timer, thread and
//!    connection; the bench says in how many windows one fell); the share of the operator's
//!    CPU above idle during the phase that the windows hold; and the same CPU to 50 ms
//!    later, without the Lease thread, to compare. `SCALE_BENCH_EACH=1` prints every
//!    change with its start (CLOCK_MONOTONIC, as `perf record -k mono` stamps samples);
//! 4. a BgpConf edit: the whole table's size on the wire, and how long until the speaker
//!    accepted it;
//! 5. the operator's peak RSS (`VmHWM`).
//!
//! No root needed (loopback only). Figures, not assertions: `docs/benchmarks.md` has them.
//!
//! `cargo build --release -p berth-operator -p berth-bgp-server -p berth-e2e && target/release/scale-bench`

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use berth_e2e::apiserver::{self, Server};
use berth_e2e::pki;
use berth_proto::v1;
use clap::Parser;
use serde_json::{Value, json};

/// The operator against 1,000 heart-beating Nodes and 10,000 Services.
#[derive(Parser, Debug)]
#[command(about, long_about)]
struct Args {
    /// Nodes.
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// Services (every second one `externalTrafficPolicy: Local`).
    #[arg(long, default_value_t = 10_000)]
    services: usize,
    /// Seconds between two heartbeats of one Node.
    #[arg(long, default_value_t = 10)]
    heartbeat_seconds: u64,
    /// How long the heartbeat phase lasts.
    #[arg(long, default_value_t = 30)]
    churn_seconds: u64,
    /// Endpoint changes timed one at a time.
    #[arg(long, default_value_t = 200)]
    changes: usize,
}

const NS: &str = "berth-system";

fn repo_root() -> PathBuf {
    let mut p = berth_e2e::lab::own_bin_dir();
    for _ in 0..3 {
        if p.join("config/crd").is_dir() {
            return p;
        }
        if !p.pop() {
            break;
        }
    }
    std::env::current_dir().unwrap_or_default()
}

/// Node `i`'s InternalIP: 254 hosts per /24 (`.1` to `.254`; with 256 every 256th node had
/// `.256`, no address at all, and its Services a NodeWithoutAddress Event at every change).
fn node_ip(i: usize) -> String {
    format!(
        "10.{}.{}.{}",
        20 + i / (254 * 256),
        (i / 254) % 256,
        i % 254 + 1
    )
}

/// Kills the child on drop (the bench never leaves processes behind).
struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The CPU time of every thread of `pid`, in nanoseconds.
fn cpu_ns(pid: u32) -> u64 {
    cpu_split_ns(pid).0
}

/// How long after the speaker accepted a change its CPU window ends.
const CPU_AFTER: Duration = Duration::from_millis(10);

/// The operator's thread that renews its Lease (`Leadership::hold_apart` names it).
const LEASE_THREAD: &str = "lease";

/// The CPU time of every thread of `pid` and of its Lease renewal thread, in nanoseconds.
/// The renewals run on their own timer, thread and connection whatever else happens, so a
/// change's cost is also shown without them.
fn cpu_split_ns(pid: u32) -> (u64, u64) {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return (0, 0);
    };
    let mut all = 0;
    let mut lease = 0;
    for t in tasks.filter_map(|t| t.ok()) {
        let Some(ns) = std::fs::read_to_string(t.path().join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        else {
            continue;
        };
        all += ns;
        if std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == LEASE_THREAD) {
            lease += ns;
        }
    }
    (all, lease)
}

fn status_field(pid: u32, field: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .map(|l| l.trim_start_matches(field).trim().to_owned())
        .unwrap_or_default()
}

/// One metric's value (summed over its label sets) from a Prometheus text scrape.
fn metric(text: &str, name: &str, label: Option<&str>) -> f64 {
    berth_e2e::metric_names::sum(text, name, label).unwrap_or(0.0)
}

fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin = berth_e2e::lab::own_bin_dir();
    let dir = std::env::temp_dir().join(format!("berth-scale-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let result = run(&args, &bin, &dir);
    if result.is_err() {
        for f in ["operator.log", "speaker.log"] {
            let log = std::fs::read_to_string(dir.join(f)).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            eprintln!("{f} (last lines, newest first):\n{}", tail.join("\n"));
        }
    }
    if std::env::var_os("BENCH_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn run(args: &Args, bin: &Path, dir: &Path) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let server = Server::new(
        Some(&repo_root().join("config/crd")),
        apiserver::Config {
            bookmark_every: Duration::from_secs(5),
            ..Default::default()
        },
    )?;
    let addr = rt.block_on(server.spawn("127.0.0.1:0".parse()?))?;
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: b\n  cluster: {{server: \"http://{addr}\"}}\nusers:\n- name: b\n  user: {{}}\ncontexts:\n- name: b\n  context: {{cluster: b, user: b}}\ncurrent-context: b\n"
        ),
    )?;

    let ca = pki::Ca::new("bench-ca").map_err(anyhow::Error::msg)?;
    let s_leaf = ca
        .issue(&["berth-bgp-server"], true)
        .map_err(anyhow::Error::msg)?;
    let o_leaf = ca
        .issue(&["berth-operator"], false)
        .map_err(anyhow::Error::msg)?;
    let pki_dir = dir.join("pki");
    let (s_cert, s_key, ca_pem) =
        pki::write(&pki_dir, "speaker", &ca, &s_leaf).map_err(anyhow::Error::msg)?;
    let (o_cert, o_key, _) =
        pki::write(&pki_dir, "operator", &ca, &o_leaf).map_err(anyhow::Error::msg)?;

    // The cluster.
    let t0 = Instant::now();
    let load = populate(&server, args)?;
    println!(
        "loaded {} Nodes, {} Services, {} EndpointSlices in {:.1} s",
        args.nodes,
        args.services,
        args.services,
        t0.elapsed().as_secs_f64()
    );

    // The speaker, reachable as its Pod says.
    let grpc = free_port()?;
    let s_metrics = free_port()?;
    let sock = dir.join("speaker.sock");
    let path = |p: &Path| p.display().to_string();
    let speaker = Proc(
        Command::new(bin.join("berth-bgp-server"))
            .args(["--grpc-listen", &format!("127.0.0.1:{grpc}")])
            .args(["--tls-ca", &path(&ca_pem)])
            .args(["--tls-cert", &path(&s_cert)])
            .args(["--tls-key", &path(&s_key)])
            .args(["--grpc-socket", &path(&sock)])
            .args(["--state-dir", &path(&dir.join("state"))])
            .args(["--metrics-addr", &format!("127.0.0.1:{s_metrics}")])
            .args(["--log", "warn"])
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(dir.join("speaker.log"))?)
            .spawn()
            .context("starting berth-bgp-server")?,
    );
    let (events_tx, events) = std::sync::mpsc::channel::<(Instant, String, u32)>();
    rt.block_on(async {
        let mut api = None;
        for _ in 0..100 {
            if let Ok(c) = berth_proto::connect_unix(&sock).await {
                api = Some(c);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let Some(mut api) = api else {
            bail!("the speaker's API never answered on {}", sock.display())
        };
        let mut stream = api.watch(v1::WatchRequest {}).await?.into_inner();
        tokio::spawn(async move {
            while let Ok(Some(ev)) = stream.message().await {
                if let Some(v1::watch_event::Event::Applied(a)) = ev.event
                    && events_tx
                        .send((Instant::now(), a.call, a.routes_changed))
                        .is_err()
                {
                    return;
                }
            }
        });
        Ok(())
    })?;

    let o_metrics = free_port()?;
    let operator = Proc(
        Command::new(bin.join("berth-operator"))
            .args(["--speaker-ca", &path(&ca_pem)])
            .args(["--speaker-cert", &path(&o_cert)])
            .args(["--speaker-key", &path(&o_key)])
            .args(["--speaker-port", &grpc.to_string()])
            .args(["--metrics-address", &format!("127.0.0.1:{o_metrics}")])
            .env("KUBECONFIG", &kubeconfig)
            .env("POD_NAME", "berth-operator-0")
            .env("BERTH_NAMESPACE", NS)
            .env(
                "RUST_LOG",
                std::env::var("BENCH_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(dir.join("operator.log"))?)
            .stdout(Stdio::null())
            .spawn()
            .context("starting berth-operator")?,
    );
    let mut operator = operator;
    let op_pid = operator.0.id();

    // 1. Start: every Service has an IP and the speaker holds the table.
    // Watched through the operator's own gauge: listing 10,000 Services from the store
    // here would hold its lock and slow the API server the operator is measured against.
    let started = Instant::now();
    loop {
        let with_ip = metric(&scrape(o_metrics), "berth_ipam_addresses_in_use", None) as usize;
        if with_ip >= args.services {
            break;
        }
        if let Ok(Some(exit)) = operator.0.try_wait() {
            bail!(
                "the operator exited ({exit}) before every Service had an IP ({with_ip} of {})",
                args.services
            );
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!(
                "after 600 s only {with_ip} of {} Services have an IP",
                args.services
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let all_ips = started.elapsed();
    // The table is announced once the speaker's changes settle.
    let mut last_change = Instant::now();
    while last_change.elapsed() < Duration::from_secs(3) {
        if events.recv_timeout(Duration::from_millis(200)).is_ok() {
            last_change = Instant::now();
        }
    }
    let synced = started.elapsed();
    println!(
        "start: every Service has an IP after {:.1} s; the speaker's table settled after {:.1} s",
        all_ips.as_secs_f64(),
        synced.as_secs_f64() - 3.0
    );

    // The tail of the start (status writes, Events, finalizers) ends before the heartbeats
    // begin: at most 2 writes in 2 s (the Lease is renewed every 3 s).
    let tail = Instant::now();
    let rv_start = server.store.current_rv();
    let mut history = std::collections::VecDeque::from([(Instant::now(), rv_start)]);
    let rv = loop {
        std::thread::sleep(Duration::from_millis(250));
        let now = server.store.current_rv();
        history.push_back((Instant::now(), now));
        while history
            .front()
            .is_some_and(|(t, _)| t.elapsed() > Duration::from_secs(2))
        {
            history.pop_front();
        }
        let window = history.front().map_or(now, |(_, r)| *r);
        if (tail.elapsed() > Duration::from_secs(2) && now.saturating_sub(window) <= 2)
            || tail.elapsed() > Duration::from_secs(600)
        {
            break now;
        }
    };
    println!(
        "  the operator's writes after that settled {:.1} s later ({} writes)",
        tail.elapsed().as_secs_f64() - 2.0,
        rv - rv_start
    );
    let om = scrape(o_metrics);
    let sm = scrape(s_metrics);
    println!(
        "  full desired state: {} bytes (berth_speaker_apply_bytes); speaker sync errors so far: {}",
        metric(&om, "berth_speaker_apply_bytes", None),
        metric(&om, "berth_speaker_sync_errors_total", None)
    );
    let reconciles0 = metric(
        &om,
        "berth_reconcile_duration_seconds_count",
        Some("controller=\"service\""),
    );
    let applies0 = metric(&sm, "berth_bgp_api_calls_total", Some("apply"));
    println!(
        "  full Applies so far: {applies0}; operator RSS now {}, peak {}",
        status_field(op_pid, "VmRSS:"),
        status_field(op_pid, "VmHWM:")
    );

    // 2. Heartbeats.
    let node_rt = server
        .registry
        .find("", "v1", "nodes")
        .context("no nodes type")?
        .clone();
    let rv0 = server.store.current_rv();
    let cpu0 = cpu_ns(op_pid);
    let phase = Instant::now();
    let mut beats = 0u64;
    let per_beat = Duration::from_secs_f64(args.heartbeat_seconds as f64 / args.nodes as f64);
    let mut next = Instant::now();
    while phase.elapsed() < Duration::from_secs(args.churn_seconds) {
        let i = (beats as usize) % args.nodes;
        let now = chrono_now();
        let patch = json!({"status": {"conditions": [{"type": "Ready", "status": "True",
            "reason": "KubeletReady", "lastHeartbeatTime": now, "lastTransitionTime": "2026-01-01T00:00:00Z"}],
            "addresses": [{"type": "InternalIP", "address": node_ip(i)}]}});
        server
            .store
            .patch(
                &node_rt,
                "",
                &format!("node-{i}"),
                apiserver::patch::PatchType::Merge,
                &patch,
                apiserver::store::Sub::Status,
            )
            .map_err(|e| anyhow::anyhow!("heartbeat: {e}"))?;
        beats += 1;
        next += per_beat;
        if let Some(d) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    let secs = phase.elapsed().as_secs_f64();
    let writes = server
        .store
        .current_rv()
        .saturating_sub(rv0)
        .saturating_sub(beats);
    let om = scrape(o_metrics);
    let sm = scrape(s_metrics);
    let reconciles = metric(
        &om,
        "berth_reconcile_duration_seconds_count",
        Some("controller=\"service\""),
    ) - reconciles0;
    let applies = metric(&sm, "berth_bgp_api_calls_total", Some("apply")) - applies0;
    let cpu = cpu_ns(op_pid).saturating_sub(cpu0) as f64 / 1e9;
    while events.try_recv().is_ok() {}
    println!(
        "heartbeats: {beats} Node status writes in {secs:.0} s ({:.0}/s): {reconciles} Service reconciles, {applies} full Applies, {writes} API writes by the operator ({:.1}/s), operator CPU {:.2} s ({:.0} % of a core)",
        beats as f64 / secs,
        writes as f64 / secs,
        cpu,
        100.0 * cpu / secs
    );

    // What the operator spends with nothing to do, per second (Lease renewals every 3 s,
    // bookmarks of its watches, the speaker's Watch stream).
    let (idle_cpu0, idle_lease0) = cpu_split_ns(op_pid);
    let idle_at = Instant::now();
    std::thread::sleep(Duration::from_secs(5));
    let (idle_cpu1, idle_lease1) = cpu_split_ns(op_pid);
    let idle_secs = idle_at.elapsed().as_secs_f64();
    let idle_per_s = idle_cpu1.saturating_sub(idle_cpu0) as f64 / 1e6 / idle_secs;
    let idle_lease_per_s = idle_lease1.saturating_sub(idle_lease0) as f64 / 1e6 / idle_secs;
    let idle_rest_per_s = idle_per_s - idle_lease_per_s;
    println!(
        "idle: operator CPU {idle_per_s:.2} ms per second ({idle_lease_per_s:.2} of them renewing the Lease)"
    );

    // 3. Endpoint changes, one at a time.
    let eps_rt = server
        .registry
        .find("discovery.k8s.io", "v1", "endpointslices")
        .context("no endpointslices type")?
        .clone();
    let mut latency = Vec::new();
    let rv_changes = server.store.current_rv();
    let reconciles_changes = metric(
        &scrape(o_metrics),
        "berth_reconcile_duration_seconds_count",
        Some("controller=\"service\""),
    );
    let (phase_all0, phase_lease0) = cpu_split_ns(op_pid);
    let phase_rest0 = phase_all0 - phase_lease0;
    let phase_at = Instant::now();
    let mut cpu_per = Vec::new();
    let mut wide_rest = Vec::new();
    let mut cpu_rest = Vec::new();
    let mut starts = Vec::new();
    let mut cpu_net = Vec::new();
    let mut renewals = 0;
    let mut missed = 0;
    for c in 0..args.changes {
        // A `Local` Service (odd index): its next hops follow its endpoints' nodes (a
        // `Cluster` Service's do not, so moving its endpoints rightly changes nothing).
        let i = ((c * 7919) % (load.services / 2).max(1)) * 2 + 1;
        let shift = c + 1;
        let (cpu_before, lease_before) = cpu_split_ns(op_pid);
        let at = Instant::now();
        let slice = endpoint_slice(i, args.nodes, shift);
        server
            .store
            .update(
                &eps_rt,
                "bench",
                &format!("svc-{i}-1"),
                slice,
                apiserver::store::Sub::Main,
            )
            .map_err(|e| anyhow::anyhow!("endpoint change: {e}"))?;
        let accepted = match events.recv_timeout(Duration::from_secs(5)) {
            Ok((when, _, _)) => {
                latency.push(when.duration_since(at).as_secs_f64() * 1e3);
                Some(when)
            }
            Err(_) => {
                missed += 1;
                None
            }
        };
        if missed >= 5 && latency.is_empty() {
            println!(
                "endpoint changes: the first {missed} reached no speaker change within 5 s; stopped (speaker sync errors: {}; the operator's log says why)",
                metric(&scrape(o_metrics), "berth_speaker_sync_errors_total", None)
            );
            break;
        }
        // The change's own work ends about a millisecond after the speaker accepted it (the
        // UpdateRoutes response, the Watch event): read CPU_AFTER later, so work on timers
        // (Lease renewals every 3 s, status every 10 s, the sweep every minute) falls in
        // few windows; and again 50 ms later, as before.
        let read_at = accepted.map_or_else(Instant::now, |w| w + CPU_AFTER);
        std::thread::sleep(read_at.saturating_duration_since(Instant::now()));
        let (cpu_after, lease_after) = cpu_split_ns(op_pid);
        let secs = at.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_millis(50));
        while events.try_recv().is_ok() {}
        let (wide_after, wide_lease_after) = cpu_split_ns(op_pid);
        let cpu = cpu_after.saturating_sub(cpu_before) as f64 / 1e6;
        let lease = lease_after.saturating_sub(lease_before) as f64 / 1e6;
        cpu_per.push(cpu);
        starts.push(at);
        cpu_rest.push(cpu - lease);
        cpu_net.push(cpu - lease - idle_rest_per_s * secs);
        wide_rest.push(
            (wide_after - wide_lease_after).saturating_sub(cpu_before - lease_before) as f64 / 1e6,
        );
        if lease > 0.0 {
            renewals += 1;
        }
    }
    let (phase_all, phase_lease) = cpu_split_ns(op_pid);
    let phase_secs = phase_at.elapsed().as_secs_f64();
    let above_idle = (phase_all - phase_lease).saturating_sub(phase_rest0) as f64 / 1e6
        - idle_rest_per_s * phase_secs;
    let in_windows: f64 = cpu_net.iter().sum();
    let change_writes = server
        .store
        .current_rv()
        .saturating_sub(rv_changes)
        .saturating_sub(latency.len() as u64 + missed as u64);
    let change_reconciles = metric(
        &scrape(o_metrics),
        "berth_reconcile_duration_seconds_count",
        Some("controller=\"service\""),
    ) - reconciles_changes;
    println!(
        "endpoint changes: {} timed, {change_reconciles} Service reconciles and {change_writes} API writes by the operator meanwhile ({missed} reached no speaker change within 5 s): write -> speaker accepted p50 {:.1} ms, p99 {:.1} ms",
        latency.len(),
        pct(&mut latency.clone(), 0.5),
        pct(&mut latency, 0.99),
    );
    if std::env::var_os("SCALE_BENCH_EACH").is_some() {
        // Each change's cost and start (CLOCK_MONOTONIC, as `perf record -k mono` stamps
        // samples), for finding what the expensive ones had in common.
        for (c, ((all, rest), at)) in cpu_per.iter().zip(&cpu_rest).zip(&starts).enumerate() {
            eprintln!(
                "change {c}: {all:.3} ms, {rest:.3} ms without the Lease thread, from {at:?}"
            );
        }
    }
    println!(
        "  operator CPU per change, from the write to {} ms after the speaker's acceptance: p50 {:.2} ms, p99 {:.2} ms; without the Lease renewal thread (a renewal fell in {renewals} of the {} windows): p50 {:.2} ms, p99 {:.2} ms",
        CPU_AFTER.as_millis(),
        pct(&mut cpu_per.clone(), 0.5),
        pct(&mut cpu_per, 0.99),
        cpu_rest.len(),
        pct(&mut cpu_rest.clone(), 0.5),
        pct(&mut cpu_rest, 0.99),
    );
    println!(
        "  the windows hold {:.0} % of the operator's CPU above idle during the phase (the rest: work on timers); to 50 ms later, without the Lease thread: p50 {:.2} ms, p99 {:.2} ms",
        100.0 * in_windows / above_idle.max(f64::MIN_POSITIVE),
        pct(&mut wide_rest.clone(), 0.5),
        pct(&mut wide_rest, 0.99),
    );
    // A BgpConf edit (graceful-restart time) makes the operator send the whole table: its
    // size on the wire, and how long until the speaker accepted it.
    let applies_before = metric(
        &scrape(s_metrics),
        "berth_bgp_api_calls_total",
        Some("apply"),
    );
    let conf_rt = server
        .registry
        .find("berth.dev", "v1alpha1", "bgpconfs")
        .context("no bgpconfs type")?
        .clone();
    let edit = Instant::now();
    server
        .store
        .patch(
            &conf_rt,
            "",
            "default",
            apiserver::patch::PatchType::Merge,
            &json!({"spec": {"gracefulRestart": {"restartTime": 121}}}),
            apiserver::store::Sub::Main,
        )
        .map_err(|e| anyhow::anyhow!("BgpConf edit: {e}"))?;
    while metric(
        &scrape(s_metrics),
        "berth_bgp_api_calls_total",
        Some("apply"),
    ) <= applies_before
        && edit.elapsed() < Duration::from_secs(60)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "full state after a BgpConf edit: {} bytes (berth_speaker_apply_bytes), accepted {:.0} ms after the edit",
        metric(&scrape(o_metrics), "berth_speaker_apply_bytes", None),
        edit.elapsed().as_secs_f64() * 1e3
    );
    let sm = scrape(s_metrics);
    println!(
        "operator peak RSS {}; full Applies after the first: {}; speaker sync errors: {}",
        status_field(op_pid, "VmHWM:"),
        metric(&sm, "berth_bgp_api_calls_total", Some("apply")) - 1.0,
        metric(&scrape(o_metrics), "berth_speaker_sync_errors_total", None)
    );
    drop(operator);
    drop(speaker);
    Ok(())
}

/// What [`populate`] made.
struct Load {
    services: usize,
}

fn chrono_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // A valid RFC 3339 time that changes every second (the value is what matters, not the
    // calendar): 2026-01-01 plus the seconds of the day.
    let s = secs % 86_400;
    format!(
        "2026-01-01T{:02}:{:02}:{:02}Z",
        s / 3600,
        (s / 60) % 60,
        s % 60
    )
}

fn endpoint_slice(i: usize, nodes: usize, shift: usize) -> Value {
    let endpoints: Vec<Value> = (0..3)
        .map(|k| {
            let n = (i * 3 + k + shift) % nodes;
            json!({"addresses": [format!("10.244.{}.{}", n / 250, n % 250 + 1)],
                "conditions": {"ready": true}, "nodeName": format!("node-{n}")})
        })
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("svc-{i}-1"), "namespace": "bench",
            "labels": {"kubernetes.io/service-name": format!("svc-{i}"),
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
        "addressType": "IPv4", "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]})
}

fn populate(server: &Arc<Server>, args: &Args) -> anyhow::Result<Load> {
    let find = |g: &str, v: &str, p: &str| {
        server
            .registry
            .find(g, v, p)
            .cloned()
            .with_context(|| format!("the API server does not serve {p}"))
    };
    // As on a real API server, a create drops `.status` of types with a status subresource:
    // the status is written after, as the kubelet would.
    let create = |rt: &apiserver::resources::ResourceType, ns: &str, o: Value| {
        let status = o.get("status").cloned();
        let name = o["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        server
            .store
            .create(rt, ns, o)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if let Some(status) = status {
            server
                .store
                .patch(
                    rt,
                    ns,
                    &name,
                    apiserver::patch::PatchType::Merge,
                    &json!({ "status": status }),
                    apiserver::store::Sub::Status,
                )
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        Ok::<(), anyhow::Error>(())
    };
    let ns_rt = find("", "v1", "namespaces")?;
    for n in [NS, "bench"] {
        create(
            &ns_rt,
            "",
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}}),
        )?;
    }
    let node_rt = find("", "v1", "nodes")?;
    for i in 0..args.nodes {
        create(
            &node_rt,
            "",
            json!({"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": format!("node-{i}"), "labels": {"kubernetes.io/hostname": format!("node-{i}")}},
                "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                    "lastHeartbeatTime": "2026-01-01T00:00:00Z", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
                    "addresses": [{"type": "InternalIP", "address": node_ip(i)}]}}),
        )?;
    }
    let pod_rt = find("", "v1", "pods")?;
    create(
        &pod_rt,
        NS,
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "berth-bgp-server-0", "namespace": NS,
                "labels": {"app.kubernetes.io/name": "berth-bgp-server", "app.kubernetes.io/instance": "berth"}},
            "spec": {"nodeName": "node-0", "hostNetwork": true, "containers": [{"name": "bgp-server", "image": "berth"}]},
            "status": {"phase": "Running", "podIP": "127.0.0.1", "hostIP": "127.0.0.1",
                "podIPs": [{"ip": "127.0.0.1"}], "conditions": [{"type": "Ready", "status": "True"}]}}),
    )?;
    let eip_rt = find("berth.dev", "v1alpha1", "eips")?;
    create(
        &eip_rt,
        "",
        json!({"apiVersion": "berth.dev/v1alpha1", "kind": "Eip", "metadata": {"name": "bench"},
            "spec": {"address": "100.64.0.0/16", "protocol": "bgp", "default": true}}),
    )?;
    let conf_rt = find("berth.dev", "v1alpha1", "bgpconfs")?;
    create(
        &conf_rt,
        "",
        json!({"apiVersion": "berth.dev/v1alpha1", "kind": "BgpConf", "metadata": {"name": "default"},
            "spec": {"asn": 64512, "listenPort": 0, "ecmpMode": "addPath"}}),
    )?;
    let svc_rt = find("", "v1", "services")?;
    let eps_rt = find("discovery.k8s.io", "v1", "endpointslices")?;
    for i in 0..args.services {
        let policy = if i % 2 == 0 { "Cluster" } else { "Local" };
        create(
            &svc_rt,
            "bench",
            json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": format!("svc-{i}"), "namespace": "bench"},
                "spec": {"type": "LoadBalancer", "loadBalancerClass": "berth.dev/berth",
                    "externalTrafficPolicy": policy, "selector": {"app": format!("a{i}")},
                    "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}}),
        )?;
        create(&eps_rt, "bench", endpoint_slice(i, args.nodes, 0))?;
    }
    Ok(Load {
        services: args.services,
    })
}

//! `berthctl`: the speaker's control API for people on call.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use berth_bgp_server::config::SpeakerConfig;
use berth_bgp_server::control::convert;
use berth_proto::v1;
use berth_proto::v1::speaker_client::SpeakerClient;
use clap::{Parser, Subcommand, ValueEnum};
use serde::Serialize;
use tonic::transport::Channel;

/// Talk to a Berth BGP speaker (berth-bgp-server): what it announces, to whom, and changes.
///
/// Connects over the speaker's Unix socket (--socket, the default) or over TCP with mutual TLS
/// (--server with --ca, --cert, --key).
#[derive(Parser, Debug)]
#[command(name = "berthctl", version, about, long_about)]
struct Args {
    /// The speaker's Unix socket (its --grpc-socket).
    #[arg(
        long,
        env = "BERTH_SOCKET",
        default_value = "/run/berth/bgp.sock",
        global = true
    )]
    socket: PathBuf,
    /// The speaker's TCP address instead, e.g. https://10.0.0.11:50051 (needs --ca, --cert,
    /// --key), or http://127.0.0.1:50051 for a plaintext loopback listener.
    #[arg(long, env = "BERTH_SERVER", global = true)]
    server: Option<String>,
    /// CA that signed the speaker's certificate (PEM).
    #[arg(long, env = "BERTH_CA", global = true)]
    ca: Option<PathBuf>,
    /// This client's certificate (PEM).
    #[arg(long, env = "BERTH_CERT", global = true)]
    cert: Option<PathBuf>,
    /// This client's key (PEM).
    #[arg(long, env = "BERTH_KEY", global = true)]
    key: Option<PathBuf>,
    /// The name in the speaker's certificate.
    #[arg(long, default_value = "speaker", global = true)]
    server_name: String,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table, global = true)]
    output: Output,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Output {
    /// Aligned columns.
    Table,
    /// JSON.
    Json,
    /// YAML.
    Yaml,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Generation, global settings and counts.
    State,
    /// Each peer's session.
    Peers,
    /// Every route in the desired state.
    Routes,
    /// Replace the whole desired state with a file (the standalone format, YAML or JSON, with
    /// an optional top-level `generation`; default: the applied one plus one).
    Apply {
        /// The file (`-` for stdin).
        #[arg(short = 'f', long)]
        file: PathBuf,
    },
    /// Print session changes and accepted states as they happen (Ctrl-C to stop).
    Watch,
    /// Add, replace or withdraw one route.
    Route {
        #[command(subcommand)]
        action: RouteCmd,
    },
    /// Convert MetalLB's IPAddressPools, L2/BGPAdvertisements and BGPPeers (a YAML file, e.g.
    /// `kubectl get ipaddresspools,l2advertisements,bgpadvertisements,bgppeers -A -o yaml`
    /// items) to Berth's Eips, BgpConf and BgpPeers on standard output; what does not carry
    /// over is said on standard error. Needs no speaker.
    ConvertMetallb {
        /// The MetalLB objects: a multi-document YAML file, or a `List` (`-` for stdin).
        #[arg(short = 'f', long)]
        file: PathBuf,
        /// Interface for Layer2 pools whose L2Advertisement names none (a name, or
        /// `can_reach:<gateway ip>`).
        #[arg(long)]
        interface: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum RouteCmd {
    /// Add or replace a route (all its next hops).
    Add {
        /// The prefix, e.g. 198.51.100.10/32.
        prefix: String,
        /// A next hop; repeat for ECMP. `ADDRESS=WEIGHT` for weighted ECMP.
        #[arg(long = "next-hop", required = true)]
        next_hops: Vec<String>,
        /// A community `asn:value`; repeatable.
        #[arg(long = "community")]
        communities: Vec<String>,
    },
    /// Withdraw a route.
    Del {
        /// The prefix.
        prefix: String,
    },
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PeerView {
    address: String,
    asn: u32,
    state: String,
    uptime_seconds: u64,
    add_path_ipv4: bool,
    add_path_ipv6: bool,
    paths: u64,
    prefixes: u64,
    degraded: String,
    last_error: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RouteView {
    prefix: String,
    next_hops: Vec<String>,
    communities: Vec<String>,
    local_pref: Option<u32>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StateView {
    generation: u64,
    asn: u32,
    router_id: String,
    listen_port: u32,
    routes: u64,
    peers: usize,
    established: usize,
}

fn peer_view(p: &v1::PeerState) -> PeerView {
    PeerView {
        address: p.address.clone(),
        asn: p.asn,
        state: p.state.clone(),
        uptime_seconds: p.uptime_seconds,
        add_path_ipv4: p.add_path_ipv4,
        add_path_ipv6: p.add_path_ipv6,
        paths: p.paths_announced,
        prefixes: p.prefixes_announced,
        degraded: p.degraded.clone(),
        last_error: p.last_error.clone(),
    }
}

fn route_view(r: &v1::Route) -> RouteView {
    RouteView {
        prefix: r.prefix.clone(),
        next_hops: r
            .next_hops
            .iter()
            .map(|n| {
                if n.weight == 0 {
                    n.address.clone()
                } else {
                    format!("{}={}", n.address, n.weight)
                }
            })
            .collect(),
        communities: r.communities.clone(),
        local_pref: r.local_pref,
    }
}

/// Prints `rows` as a table with `header`, or the value as JSON/YAML.
fn print<T: Serialize>(
    out: Output,
    value: &T,
    header: &[&str],
    rows: Vec<Vec<String>>,
) -> anyhow::Result<()> {
    match out {
        Output::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Output::Yaml => print!("{}", serde_yaml_ng::to_string(value)?),
        Output::Table => {
            let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
            for r in &rows {
                for (w, c) in widths.iter_mut().zip(r) {
                    *w = (*w).max(c.len());
                }
            }
            let line = |cells: Vec<String>| {
                let s: Vec<String> = cells
                    .iter()
                    .zip(&widths)
                    .map(|(c, w)| format!("{c:<w$}"))
                    .collect();
                println!("{}", s.join("  ").trim_end());
            };
            line(header.iter().map(|h| (*h).to_owned()).collect());
            for r in rows {
                line(r);
            }
        }
    }
    Ok(())
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EventView {
    unix_millis: u64,
    kind: &'static str,
    peer: Option<String>,
    state: Option<String>,
    previous_state: Option<String>,
    last_error: Option<String>,
    generation: Option<u64>,
    call: Option<String>,
    routes_changed: Option<u32>,
    missed: Option<u64>,
}

fn event_view(e: &v1::WatchEvent) -> EventView {
    let mut v = EventView {
        unix_millis: e.unix_millis,
        kind: "unknown",
        peer: None,
        state: None,
        previous_state: None,
        last_error: None,
        generation: None,
        call: None,
        routes_changed: None,
        missed: None,
    };
    match &e.event {
        Some(v1::watch_event::Event::Session(s)) => {
            v.kind = "session";
            v.peer = Some(s.peer.clone());
            v.state = Some(s.state.clone());
            v.previous_state = Some(s.previous_state.clone());
            v.last_error = Some(s.last_error.clone());
        }
        Some(v1::watch_event::Event::Applied(a)) => {
            v.kind = "applied";
            v.generation = Some(a.generation);
            v.call = Some(a.call.clone());
            v.routes_changed = Some(a.routes_changed);
        }
        Some(v1::watch_event::Event::Resync(r)) => {
            v.kind = "resync";
            v.missed = Some(r.missed);
        }
        None => {}
    }
    v
}

/// A file's text, or standard input's for `-` (read as a stream: `kubectl exec -i` into an
/// image without a shell has no file to point at, and its stdin need not be reopenable).
fn read_input(file: &std::path::Path) -> anyhow::Result<String> {
    use anyhow::Context;
    if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading standard input")
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))
    }
}

/// `berthctl convert-metallb`: MetalLB's objects in, Berth's out (the notes on stderr, as
/// YAML comments too, so a saved file keeps them).
fn convert_metallb(file: &std::path::Path, interface: Option<&str>) -> anyhow::Result<()> {
    use anyhow::Context;
    let text = read_input(file)?;
    let mut docs: Vec<serde_json::Value> = Vec::new();
    for d in serde_yaml_ng::Deserializer::from_str(&text) {
        let v: serde_json::Value = serde::Deserialize::deserialize(d)
            .with_context(|| format!("{}: not YAML", file.display()))?;
        // `kubectl get -o yaml` wraps objects in a List.
        match v["items"].as_array() {
            Some(items)
                if v["kind"] == "List"
                    || v["kind"].as_str().is_some_and(|k| k.ends_with("List")) =>
            {
                docs.extend(items.iter().cloned());
            }
            _ if v.is_null() => {}
            _ => docs.push(v),
        }
    }
    let c = berth_api::metallb::convert(&docs, interface)
        .with_context(|| format!("converting {}", file.display()))?;
    let mut out = String::from("# Converted from MetalLB by `berthctl convert-metallb`.\n");
    for n in &c.notes {
        eprintln!("note: {n}");
        out.push_str(&format!("# note: {n}\n"));
    }
    for o in &c.objects {
        out.push_str("---\n");
        out.push_str(&serde_yaml_ng::to_string(o)?);
    }
    print!("{out}");
    Ok(())
}

fn uptime(s: u64) -> String {
    match s {
        0 => "-".into(),
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

async fn connect(args: &Args) -> anyhow::Result<SpeakerClient<Channel>> {
    match &args.server {
        Some(uri) if uri.starts_with("https://") => {
            let (Some(ca), Some(cert), Some(key)) = (&args.ca, &args.cert, &args.key) else {
                bail!("{uri}: mutual TLS needs --ca, --cert and --key");
            };
            let read =
                |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
            let tls = berth_proto::ClientTls {
                ca: read(ca)?,
                cert: read(cert)?,
                key: read(key)?,
                server_name: args.server_name.clone(),
            };
            berth_proto::connect_tls(uri.clone(), &tls)
                .await
                .with_context(|| format!("cannot reach the speaker at {uri}"))
        }
        Some(uri) => berth_proto::connect_plain(uri.clone())
            .await
            .with_context(|| format!("cannot reach the speaker at {uri}")),
        None => berth_proto::connect_unix(&args.socket)
            .await
            .with_context(|| {
                format!(
                    "cannot reach the speaker at unix:{} (is it running with --grpc-socket there? \
                 --socket or BERTH_SOCKET choose another)",
                    args.socket.display()
                )
            }),
    }
}

fn where_(args: &Args) -> String {
    args.server
        .clone()
        .unwrap_or_else(|| format!("unix:{}", args.socket.display()))
}

/// A call's error as the server said it, naming the server.
fn call_err(args: &Args, what: &str, e: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!(
        "{what} at {}: {} ({:?})",
        where_(args),
        e.message(),
        e.code()
    )
}

async fn get(
    args: &Args,
    c: &mut SpeakerClient<Channel>,
    include_routes: bool,
) -> anyhow::Result<v1::GetStateResponse> {
    let mut state = c
        .get_state(v1::GetStateRequest { include_routes })
        .await
        .map(tonic::Response::into_inner)
        .map_err(|e| call_err(args, "GetState", e))?;
    // Routes that share next hops name a group in the answer: every route is shown whole.
    berth_proto::groups::resolve(&mut state.routes, &state.next_hop_groups)
        .map_err(|e| anyhow::anyhow!("GetState answered a state that does not resolve: {e}"))?;
    state.next_hop_groups.clear();
    Ok(state)
}

fn next_hop(s: &str) -> anyhow::Result<v1::NextHop> {
    let (addr, weight) = match s.split_once('=') {
        Some((a, w)) => (
            a,
            w.parse()
                .with_context(|| format!("--next-hop {s}: the weight must be a whole number"))?,
        ),
        None => (s, 0),
    };
    addr.parse::<IpAddr>()
        .with_context(|| format!("--next-hop {s}: not an IP address"))?;
    Ok(v1::NextHop {
        address: addr.to_owned(),
        weight,
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Cmd::ConvertMetallb { file, interface } = &args.command {
        return convert_metallb(file, interface.as_deref());
    }
    let mut c = connect(&args).await?;
    match &args.command {
        // Answered above, without a speaker.
        Cmd::ConvertMetallb { .. } => {}
        Cmd::State => {
            let s = get(&args, &mut c, false).await?;
            let g = s.global.clone().unwrap_or_default();
            let view = StateView {
                generation: s.generation,
                asn: g.asn,
                router_id: g.router_id,
                listen_port: g.listen_port,
                routes: s.route_count,
                peers: s.peers.len(),
                established: s.peers.iter().filter(|p| p.state == "Established").count(),
            };
            let row = vec![
                view.generation.to_string(),
                view.asn.to_string(),
                view.router_id.clone(),
                view.routes.to_string(),
                format!("{}/{}", view.established, view.peers),
            ];
            print(
                args.output,
                &view,
                &["GENERATION", "ASN", "ROUTER-ID", "ROUTES", "ESTABLISHED"],
                vec![row],
            )?;
        }
        Cmd::Peers => {
            let s = get(&args, &mut c, false).await?;
            let views: Vec<PeerView> = s.peers.iter().map(peer_view).collect();
            let rows = views
                .iter()
                .map(|p| {
                    vec![
                        p.address.clone(),
                        p.asn.to_string(),
                        p.state.clone(),
                        uptime(p.uptime_seconds),
                        format!(
                            "{}/{}",
                            if p.add_path_ipv4 { "v4" } else { "-" },
                            if p.add_path_ipv6 { "v6" } else { "-" }
                        ),
                        p.prefixes.to_string(),
                        p.paths.to_string(),
                        if p.degraded.is_empty() && p.last_error.is_empty() {
                            String::new()
                        } else {
                            [p.degraded.as_str(), p.last_error.as_str()]
                                .iter()
                                .filter(|s| !s.is_empty())
                                .copied()
                                .collect::<Vec<_>>()
                                .join("; ")
                        },
                    ]
                })
                .collect();
            print(
                args.output,
                &views,
                &[
                    "PEER", "ASN", "STATE", "UP", "ADD-PATH", "PREFIXES", "PATHS", "NOTES",
                ],
                rows,
            )?;
        }
        Cmd::Routes => {
            let s = get(&args, &mut c, true).await?;
            let views: Vec<RouteView> = s.routes.iter().map(route_view).collect();
            let rows = views
                .iter()
                .map(|r| {
                    vec![
                        r.prefix.clone(),
                        r.next_hops.join(","),
                        r.communities.join(","),
                    ]
                })
                .collect();
            print(
                args.output,
                &views,
                &["PREFIX", "NEXT-HOPS", "COMMUNITIES"],
                rows,
            )?;
        }
        Cmd::Apply { file } => {
            let text = read_input(file)?;
            let mut doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text)
                .with_context(|| format!("{}: not YAML or JSON", file.display()))?;
            let generation = match doc.as_mapping_mut().and_then(|m| m.remove("generation")) {
                Some(g) => g.as_u64().with_context(|| {
                    format!("{}: generation must be a whole number", file.display())
                })?,
                None => get(&args, &mut c, false).await?.generation + 1,
            };
            let cfg: SpeakerConfig = serde_yaml_ng::from_value(doc)
                .with_context(|| format!("{}: not a desired state", file.display()))?;
            cfg.validate()
                .with_context(|| format!("{}: invalid", file.display()))?;
            let state = convert::to_api(generation, &cfg);
            let r = c
                .apply(v1::ApplyRequest { state: Some(state) })
                .await
                .map_err(|e| call_err(&args, "Apply", e))?
                .into_inner();
            println!(
                "applied generation {}: {} route(s) changed{}",
                r.generation,
                r.routes_changed,
                if r.peers_changed {
                    ", peers changed"
                } else {
                    ""
                }
            );
        }
        Cmd::Watch => {
            let mut stream = c
                .watch(v1::WatchRequest {})
                .await
                .map_err(|e| call_err(&args, "Watch", e))?
                .into_inner();
            while let Some(event) = stream
                .message()
                .await
                .map_err(|e| call_err(&args, "Watch", e))?
            {
                let line = match (&event.event, args.output) {
                    (_, Output::Json) => serde_json::to_string(&event_view(&event))?,
                    (_, Output::Yaml) => {
                        format!("---\n{}", serde_yaml_ng::to_string(&event_view(&event))?)
                    }
                    (Some(v1::watch_event::Event::Session(s)), Output::Table) => format!(
                        "{}  peer {}: {} -> {}{}",
                        event.unix_millis,
                        s.peer,
                        if s.previous_state.is_empty() {
                            "?"
                        } else {
                            &s.previous_state
                        },
                        s.state,
                        if s.last_error.is_empty() {
                            String::new()
                        } else {
                            format!(" ({})", s.last_error)
                        }
                    ),
                    (Some(v1::watch_event::Event::Applied(a)), Output::Table) => format!(
                        "{}  {} accepted: generation {}, {} route(s)",
                        event.unix_millis, a.call, a.generation, a.routes_changed
                    ),
                    (Some(v1::watch_event::Event::Resync(r)), Output::Table) => format!(
                        "{}  missed {} event(s) (reading too slowly); every peer's state follows",
                        event.unix_millis, r.missed
                    ),
                    (None, Output::Table) => continue,
                };
                println!("{line}");
            }
        }
        Cmd::Route { action } => {
            let generation = get(&args, &mut c, false).await?.generation + 1;
            let req = match action {
                RouteCmd::Add {
                    prefix,
                    next_hops,
                    communities,
                } => v1::UpdateRoutesRequest {
                    generation,
                    upsert: vec![v1::Route {
                        prefix: prefix.clone(),
                        next_hops: next_hops
                            .iter()
                            .map(|n| next_hop(n))
                            .collect::<anyhow::Result<_>>()?,
                        communities: communities.clone(),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                RouteCmd::Del { prefix } => v1::UpdateRoutesRequest {
                    generation,
                    remove: vec![prefix.clone()],
                    ..Default::default()
                },
            };
            let r = c
                .update_routes(req)
                .await
                .map_err(|e| call_err(&args, "UpdateRoutes", e))?
                .into_inner();
            println!("applied generation {}", r.generation);
        }
    }
    Ok(())
}

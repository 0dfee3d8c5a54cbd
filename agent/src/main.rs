//! `berth-agent`: Berth's per-node agent.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use tokio::sync::watch;

use berth_agent::desired::{self, Desired};
use berth_agent::failback::FailbackHoldDown;
use berth_agent::layer2::announcer::Announcer;
use berth_agent::layer2::arp_ignore::ArpIgnore;
use berth_agent::layer2::interface;
use berth_agent::layer2::link::LinkHealth;
use berth_agent::layer2::link_watch;
use berth_agent::membership::{
    Generations, Membership, MembershipConfig, MembershipMetrics, Timing, UnableHandle,
};
use berth_agent::metrics::Metrics;
use berth_agent::plan::{Plan, Unable, plan};
use berth_agent::routes::{self, LocalRoutes, RoutesConfig};

/// Berth's node agent: accepts traffic for Service IPs on this node (local routes), and
/// answers ARP/NDP for the Layer2 IPs this node owns.
///
/// Every agent elects the owner of each Layer2 IP by rendezvous hashing over the candidate
/// nodes that its membership (SWIM gossip between the agents) sees alive, so a failover needs
/// no API write. The new owner sends a gratuitous ARP / unsolicited Neighbor Advertisement at
/// once, then at 100 ms, 300 ms and 1 s.
///
/// Input, standalone: `--static FILE`, reloaded on SIGHUP, in this format (YAML or JSON):
///
/// localIps: [198.51.100.10, 2001:db8::10]   # accepted on this node (local routes)
/// layer2:                                     # answered by ARP/NDP by one node each
///   - service: default/web
///     ips: [192.168.1.240, fd00::240]
///     interface: eth0                         # or can_reach:192.168.1.1
///     candidates: [node1, node2, node3]
///
/// Without `--gossip-listen` every candidate is taken as alive (no failover): for a single
/// node or a test. SIGTERM stops answering, removes the routes, leaves the membership and
/// exits 0.
#[derive(Parser, Debug)]
#[command(version, about, long_about, verbatim_doc_comment)]
struct Args {
    /// This node's name, as the candidates lists name it.
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// Standalone input file (format above); reloaded on SIGHUP. Without it the agent
    /// reads the cluster (KUBECONFIG, or the in-cluster service account): the IPs in the
    /// status of LoadBalancer Services that lie in an Eip, and for Layer2 IPs the operator's
    /// assignments in --namespace (never annotations, which tenants can write); it records
    /// an Event on a Service when this node takes over its Layer2 IP.
    #[arg(long = "static", env = "BERTH_AGENT_STATIC")]
    static_file: Option<PathBuf>,
    /// Berth's namespace: where the operator writes the Layer2 assignments this agent
    /// believes (RBAC keeps tenants out of it). Cluster mode only.
    #[arg(long, env = "BERTH_NAMESPACE", default_value = "berth-system")]
    namespace: String,
    /// Address the membership gossip (UDP) listens on, e.g. 0.0.0.0:7946.
    #[arg(long, env = "BERTH_GOSSIP_LISTEN")]
    gossip_listen: Option<SocketAddr>,
    /// Address other agents reach this one at (default: --gossip-listen).
    #[arg(long, env = "BERTH_GOSSIP_ADVERTISE")]
    gossip_advertise: Option<SocketAddr>,
    /// Another agent's gossip address (IP:port) to join through (repeatable).
    #[arg(long, env = "BERTH_GOSSIP_SEEDS", value_delimiter = ',')]
    gossip_seed: Vec<SocketAddr>,
    /// Take gossip seeds from the cluster's Nodes (every other Node's InternalIP of the
    /// advertise address's family, at its port), kept up to date as Nodes come and go; adds
    /// to --gossip-seed. Cluster mode only; needs list/watch on nodes.
    #[arg(
        long,
        env = "BERTH_GOSSIP_SEEDS_FROM_NODES",
        requires = "gossip_listen"
    )]
    gossip_seeds_from_nodes: bool,
    /// File holding the shared key that authenticates gossip (HMAC-SHA256); the same on
    /// every node. Required with --gossip-listen.
    #[arg(long, env = "BERTH_GOSSIP_KEY_FILE", requires = "gossip_listen")]
    gossip_key_file: Option<PathBuf>,
    /// SWIM: how often this agent probes one other agent. Detection of a dead agent takes
    /// about two probe intervals plus --gossip-suspicion; an agent that cannot answer for
    /// about that long (CPU stall, paused) is declared down and its IPs move.
    #[arg(long, default_value = "40ms", value_parser = parse_duration, env = "BERTH_GOSSIP_PROBE_INTERVAL")]
    gossip_probe_interval: Duration,
    /// SWIM: how long a direct probe waits for its ack before asking others to probe
    /// (indirect probes); shorter than --gossip-probe-interval.
    #[arg(long, default_value = "15ms", value_parser = parse_duration, env = "BERTH_GOSSIP_PROBE_TIMEOUT")]
    gossip_probe_timeout: Duration,
    /// SWIM: how long a suspected agent has to refute before it is declared down (up to 10
    /// members; multiplied by log10 of the member count above).
    #[arg(long, default_value = "60ms", value_parser = parse_duration, env = "BERTH_GOSSIP_SUSPICION")]
    gossip_suspicion: Duration,
    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:9474", env = "BERTH_METRICS_LISTEN")]
    metrics_listen: SocketAddr,
    /// Routing table holding Berth's local routes (not 0 or 252-255).
    #[arg(long, default_value_t = routes::DEFAULT_TABLE, env = "BERTH_ROUTE_TABLE")]
    route_table: u32,
    /// Priority of the policy rules sending Service IPs to that table (1-32765).
    #[arg(long, default_value_t = routes::DEFAULT_PRIORITY, env = "BERTH_RULE_PRIORITY")]
    rule_priority: u32,
    /// How long to wait at start for the membership to show another node before taking IPs
    /// (a restarted agent must not claim IPs while it still believes it is alone).
    #[arg(long, default_value = "3s", value_parser = parse_duration, env = "BERTH_JOIN_TIMEOUT")]
    join_timeout: Duration,
    /// How long an announcing interface must stay up again (after being down, deleted or
    /// missing) before this node takes Layer2 IPs on it back: a flapping link does not move
    /// IPs on every flap. While down, the other candidates answer for its IPs.
    #[arg(long, default_value = "2s", value_parser = parse_duration, env = "BERTH_LINK_HOLD_DOWN")]
    link_hold_down: Duration,
    /// How long a node freshly in the membership (an agent restarted, or seen again after a
    /// partition) must stay alive, with no other node appearing meanwhile, before the Layer2
    /// election gives it IPs; this agent itself waits as long after its start. Every agent
    /// applies it to what it sees, so after a partition heals each IP moves at most once.
    /// 0 turns it off. With --gossip-listen only.
    #[arg(long, default_value = "2s", value_parser = parse_duration, env = "BERTH_FAILBACK_HOLD_DOWN")]
    failback_hold_down: Duration,
    /// Where the agent keeps what it must undo after a crash (the arp_ignore values it
    /// found); tmpfs, so it empties at boot like the sysctls. Empty: memory only. Two agents
    /// in one network namespace need one each.
    #[arg(long, default_value = "/run/berth-agent", env = "BERTH_STATE_DIR")]
    state_dir: PathBuf,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "BERTH_LOG_FORMAT")]
    log_format: LogFormat,
    /// Log filter in tracing's syntax (e.g. `info`, `berth_agent=debug`); RUST_LOG also works.
    #[arg(long, default_value = "info", env = "BERTH_LOG")]
    log: String,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The longest timing any flag takes: longer is a typo, and Instant arithmetic with an
/// unbounded value (e.g. `1e20s`) would overflow.
const MAX_DURATION: Duration = Duration::from_secs(3600);

fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration: write e.g. 500ms or 3s (at most 1h)");
    let d = if let Some(ms) = s.strip_suffix("ms") {
        ms.parse().map(Duration::from_millis).map_err(|_| bad())?
    } else if let Some(secs) = s.strip_suffix('s') {
        secs.parse::<f64>()
            .ok()
            .and_then(|v| Duration::try_from_secs_f64(v).ok())
            .ok_or_else(bad)?
    } else {
        return Err(bad());
    };
    if d > MAX_DURATION {
        return Err(bad());
    }
    Ok(d)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&args.log))
        .context("--log is not a valid filter")?;
    // Colours only on a terminal: logs written to files (the lab, kubectl logs) stay plain.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match args.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    let first = match &args.static_file {
        Some(f) => desired::load(f).context("--static")?,
        None => Desired::default(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(args, first))
}

async fn serve(args: Args, first: Desired) -> anyhow::Result<()> {
    let mut metrics = Metrics::new();
    let membership_metrics = MembershipMetrics::default();
    membership_metrics.register(metrics.registry_mut());
    let metrics = Arc::new(metrics);
    let (stop_tx, stop) = watch::channel(false);
    let (ready_tx, ready) = watch::channel(false);
    let listener = tokio::net::TcpListener::bind(args.metrics_listen)
        .await
        .with_context(|| format!("binding --metrics-listen {}", args.metrics_listen))?;
    tokio::spawn(berth_agent::metrics::serve(
        listener,
        metrics.clone(),
        ready,
        stop.clone(),
    ));

    let (desired_tx, desired) = watch::channel(first);
    let mut cluster = None;
    let events = match &args.static_file {
        Some(f) => {
            tokio::spawn(reload_on_sighup(f.clone(), desired_tx));
            None
        }
        None => {
            let client = kube::Client::try_default().await.context(
                "connecting to the Kubernetes API (set KUBECONFIG, or run in a Pod with a service account; or use --static)",
            )?;
            cluster = Some(client.clone());
            let (source_tx, mut source) = watch::channel(None);
            tokio::spawn(berth_agent::kube_source::run(
                client.clone(),
                args.namespace.clone(),
                source_tx,
            ));
            // The first complete list decides what this node keeps: until it arrives nothing
            // is applied, so leftovers of a previous run stay (an API outage at start must not
            // drop every route), the node does not join the membership (it would be elected
            // for IPs it cannot answer yet), and /readyz says not ready.
            let first = loop {
                match tokio::time::timeout(
                    Duration::from_secs(30),
                    source.wait_for(Option::is_some),
                )
                .await
                {
                    Ok(Ok(d)) => break d.clone().unwrap_or_default(),
                    Ok(Err(_)) => anyhow::bail!("the Kubernetes source stopped before listing"),
                    Err(_) => tracing::warn!(
                        "not ready: no complete list of Services, Eips and Layer2 assignments from the API yet; \
                         this node's routes stay as they are (check that the API server is reachable and the agent's RBAC)"
                    ),
                }
            };
            desired_tx.send_replace(first);
            tokio::spawn(async move {
                while source.changed().await.is_ok() {
                    let next = source.borrow_and_update().clone();
                    if let Some(d) = next {
                        desired_tx.send_replace(d);
                    }
                }
            });
            Some(Arc::new(berth_agent::kube_source::OwnershipEvents::new(
                client,
                &args.node_name,
            )))
        }
    };

    let routes = LocalRoutes::connect(RoutesConfig {
        table: args.route_table,
        priority: args.rule_priority,
    })
    .await
    .context("local routes")?;
    let (membership, alive) =
        membership(&args, desired.clone(), membership_metrics, cluster).await?;
    // Without gossip nobody else hears what this node cannot serve: an empty map, kept open.
    let (_no_gossip, mut others_unable) = watch::channel(Unable::new());
    let (_no_generations, mut generations) = watch::channel(Generations::new());
    let mut unable_handle = None;
    let mut failback = None;
    if let Some(m) = &membership {
        others_unable = m.unable();
        unable_handle = Some(m.unable_handle());
        generations = m.generations();
        // Without gossip the alive set never changes: nobody comes back, nothing to hold.
        // This agent's own hold-down counts from the end of its join, a little after the
        // others first saw it: they admit it first and drop its IPs a few ms before it takes
        // them (a gap, never two answering).
        failback = Some(FailbackHoldDown::new(
            &args.node_name,
            args.failback_hold_down,
            tokio::time::Instant::now(),
            &alive.borrow(),
            &generations.borrow(),
        ));
    }
    let link_events = Arc::new(tokio::sync::Notify::new());
    let _link_watch = match link_watch::spawn(link_events.clone()) {
        Ok(task) => Some(AbortOnDrop(task)),
        Err(e) => {
            tracing::error!(error = %e, "no netlink link watch");
            None
        }
    };
    let mut agent = Agent {
        routes,
        me: args.node_name.clone(),
        metrics: metrics.clone(),
        announcers: BTreeMap::new(),
        last: Plan::default(),
        failed_interfaces: BTreeSet::new(),
        events,
        yields_changed: Arc::new(tokio::sync::Notify::new()),
        last_alive: BTreeSet::new(),
        links: LinkHealth::new(args.link_hold_down),
        link_events,
        unable_handle,
        announced_unable: BTreeSet::new(),
        last_unable: Unable::new(),
        failback,
        held: BTreeSet::new(),
        arp_ignore: ArpIgnore::system(
            Some(args.state_dir.clone()).filter(|d| !d.as_os_str().is_empty()),
        ),
    };
    let run = agent.run(
        desired,
        alive,
        others_unable,
        generations,
        ready_tx,
        wait_for_signal(),
    );
    let result = run.await;
    let _ = stop_tx.send(true);
    agent.shutdown().await;
    if let Some(m) = membership {
        m.leave().await;
        tracing::info!("left the membership");
    }
    result
}

/// The live nodes: from the gossip membership, or without it every candidate of the desired
/// state and this node. With seeds, waits (up to --join-timeout) until another node is seen,
/// so a restarted agent does not claim every IP while it still believes it is alone.
async fn membership(
    args: &Args,
    mut desired: watch::Receiver<Desired>,
    metrics: MembershipMetrics,
    cluster: Option<kube::Client>,
) -> anyhow::Result<(Option<Membership>, watch::Receiver<BTreeSet<String>>)> {
    if let Some(listen) = args.gossip_listen {
        let key_file = args.gossip_key_file.as_ref().context(
            "--gossip-listen needs --gossip-key-file: gossip between agents is authenticated",
        )?;
        let key =
            berth_agent::membership::AuthKey::read_file(key_file).context("--gossip-key-file")?;
        let advertise = args.gossip_advertise.unwrap_or(listen);
        let mut seeds = args.gossip_seed.clone();
        let mut node_seeds = None;
        // The Ready Nodes (with --gossip-seeds-from-nodes): a joiner waits to see them all.
        let mut ready_nodes: Option<watch::Receiver<BTreeSet<String>>> = None;
        if args.gossip_seeds_from_nodes {
            let client = cluster.context(
                "--gossip-seeds-from-nodes reads the cluster's Nodes: it cannot be used with --static",
            )?;
            if advertise.ip().is_unspecified() {
                anyhow::bail!(
                    "--gossip-seeds-from-nodes needs --gossip-advertise (this node's address, e.g. from status.hostIP): {advertise} tells the other agents nothing"
                );
            }
            let (tx, mut rx) = watch::channel(None);
            let (ready_tx, ready_rx) = watch::channel(BTreeSet::new());
            tokio::spawn(berth_agent::kube_source::watch_node_seeds(
                client,
                args.node_name.clone(),
                advertise,
                tx,
                ready_tx,
            ));
            ready_nodes = Some(ready_rx);
            let from_nodes = loop {
                match tokio::time::timeout(Duration::from_secs(30), rx.wait_for(Option::is_some))
                    .await
                {
                    Ok(Ok(s)) => break s.clone().unwrap_or_default(),
                    Ok(Err(_)) => anyhow::bail!("the Node watch stopped before listing"),
                    Err(_) => tracing::warn!(
                        "not ready: no Node list from the API yet, so no gossip seeds (check the agent's RBAC: list/watch nodes)"
                    ),
                }
            };
            tracing::info!(
                seeds = from_nodes.len(),
                "gossip seeds from the cluster's Nodes"
            );
            seeds.extend(from_nodes);
            node_seeds = Some(rx);
        }
        if args.gossip_probe_timeout >= args.gossip_probe_interval
            || args.gossip_probe_timeout.is_zero()
            || args.gossip_suspicion.is_zero()
        {
            anyhow::bail!(
                "--gossip-probe-timeout ({:?}) must be above zero and shorter than --gossip-probe-interval ({:?}), and --gossip-suspicion ({:?}) above zero",
                args.gossip_probe_timeout,
                args.gossip_probe_interval,
                args.gossip_suspicion
            );
        }
        let (m, mut alive) = Membership::start(MembershipConfig {
            node: args.node_name.clone(),
            listen,
            advertise,
            seeds: seeds.clone(),
            key,
            timing: Timing {
                probe_period: args.gossip_probe_interval,
                probe_rtt: args.gossip_probe_timeout,
                suspect_to_down: args.gossip_suspicion,
                ..Timing::default()
            },
            generation_file: Some(args.state_dir.join("generation"))
                .filter(|_| !args.state_dir.as_os_str().is_empty()),
            metrics,
        })
        .await
        .context("starting the membership")?;
        if let Some(mut rx) = node_seeds {
            let (handle, fixed) = (m.seeds(), args.gossip_seed.clone());
            tokio::spawn(async move {
                while rx.changed().await.is_ok() {
                    let from_nodes = rx.borrow_and_update().clone().unwrap_or_default();
                    let mut all = fixed.clone();
                    all.extend(from_nodes);
                    handle.set(all).await;
                }
            });
        }
        if let Some(ready) = ready_nodes {
            // A full view before claiming: every Ready Node that is a Layer2 candidate seen
            // alive (a partial view would elect this node for IPs whose owner it cannot see
            // yet). Nodes without an agent make this wait for the whole --join-timeout.
            let candidates: BTreeSet<String> = desired
                .borrow()
                .layer2
                .iter()
                .flat_map(|s| s.candidates.iter().cloned())
                .collect();
            let me = args.node_name.clone();
            let deadline = tokio::time::Instant::now() + args.join_timeout;
            loop {
                let (a, r) = (alive.borrow().clone(), ready.borrow().clone());
                // And at least one other member, as without the Node list (Nodes whose
                // Ready condition is not reported are not waited for by name).
                if berth_agent::kube_source::full_view(&a, &r, &candidates, &me)
                    && (a.len() > 1 || seeds.is_empty())
                {
                    tracing::info!(
                        members = a.len(),
                        "joined the membership: every Ready candidate Node seen"
                    );
                    break;
                }
                let changed = tokio::time::timeout_at(deadline, alive.changed()).await;
                if let Ok(Err(_)) = changed {
                    anyhow::bail!("the membership stopped while joining");
                }
                if changed.is_err() {
                    let missing: Vec<String> = r
                        .iter()
                        .filter(|n| *n != &me && candidates.contains(*n) && !a.contains(*n))
                        .cloned()
                        .collect();
                    tracing::warn!(timeout = ?args.join_timeout, ?missing,
                        "these Ready Nodes' agents are not seen in the membership: going on without them (check that the agent runs there, the key, and UDP reachability)");
                    break;
                }
            }
        } else if !seeds.is_empty() {
            let joined =
                tokio::time::timeout(args.join_timeout, alive.wait_for(|a| a.len() > 1)).await;
            match joined {
                Ok(Ok(a)) => tracing::info!(members = a.len(), "joined the membership"),
                _ => tracing::warn!(
                    timeout = ?args.join_timeout,
                    "no other agent seen yet: going on alone (check --gossip-seed, the key, and UDP reachability)"
                ),
            }
        }
        return Ok((Some(m), alive));
    }
    tracing::warn!("no --gossip-listen: every candidate is taken as alive, so IPs never fail over");
    let me = args.node_name.clone();
    let everyone = move |d: &Desired| -> BTreeSet<String> {
        let mut all: BTreeSet<String> = d
            .layer2
            .iter()
            .flat_map(|s| s.candidates.iter().cloned())
            .collect();
        all.insert(me.clone());
        all
    };
    let (tx, rx) = watch::channel(everyone(&desired.borrow_and_update()));
    tokio::spawn(async move {
        while desired.changed().await.is_ok() {
            let all = everyone(&desired.borrow_and_update());
            tx.send_if_modified(|cur| {
                let changed = *cur != all;
                *cur = all;
                changed
            });
        }
    });
    Ok((None, rx))
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Agent {
    routes: LocalRoutes,
    me: String,
    metrics: Arc<Metrics>,
    /// By interface spec (a name or can_reach:<ip>).
    announcers: BTreeMap<String, Announcer>,
    last: Plan,
    /// Interface specs that could not be opened, reported once until they work.
    failed_interfaces: BTreeSet<String>,
    /// Ownership Events on Services (cluster mode only).
    events: Option<Arc<berth_agent::kube_source::OwnershipEvents>>,
    /// Notified by the announcers when they yield an IP on the segment or take it back.
    yields_changed: Arc<tokio::sync::Notify>,
    /// The membership at the last plan, to tell a heal (a node appears) from a loss.
    last_alive: BTreeSet<String>,
    /// Whether each announcing interface can serve (link up, present, past its hold-down).
    links: LinkHealth,
    /// Notified on every netlink link or address event.
    link_events: Arc<tokio::sync::Notify>,
    /// Tells the other agents what this node cannot serve (`None` without gossip).
    unable_handle: Option<UnableHandle>,
    /// What this node last told them.
    announced_unable: BTreeSet<String>,
    /// Every node's unable specs at the last plan, to tell a candidate coming back from a loss.
    last_unable: Unable,
    /// Which live members the election may use (`None` without gossip).
    failback: Option<FailbackHoldDown>,
    /// The members held down at the last plan (for the log).
    held: BTreeSet<String>,
    /// The `arp_ignore` values changed, put back on exit.
    arp_ignore: ArpIgnore,
}

impl Agent {
    async fn run(
        &mut self,
        mut desired: watch::Receiver<Desired>,
        mut alive: watch::Receiver<BTreeSet<String>>,
        mut others_unable: watch::Receiver<Unable>,
        mut generations: watch::Receiver<Generations>,
        ready: watch::Sender<bool>,
        stop: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        tokio::pin!(stop);
        // Retries interfaces that failed (not there yet, no address yet).
        let mut retry = tokio::time::interval(Duration::from_secs(5));
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let d = desired.borrow_and_update().clone();
            let mut unable = others_unable.borrow_and_update().clone();
            // The alive set first: the generations are published before it, so every name
            // read here has its generation in what is read next.
            let raw = alive.borrow_and_update().clone();
            let gens = generations.borrow_and_update().clone();
            let a = self.admitted(&raw, &gens);
            self.check_links(&d).await;
            let mine = self.links.unable();
            if !mine.is_empty() {
                unable.insert(self.me.clone(), mine);
            }
            let membership_changed =
                raw.len() as i64 != self.metrics.membership_size.get() || a != self.last_alive;
            // A node appeared (a heal, or a restart), or a node can answer on an interface
            // again: the election decides again, every yield made on the segment during a
            // partition ends, and IPs taken now are defended while their previous owner
            // (alive) catches up.
            let regained = self.last_unable.iter().any(|(node, specs)| {
                specs
                    .iter()
                    .any(|s| !unable.get(node).is_some_and(|u| u.contains(s)))
            });
            let grew = a.difference(&self.last_alive).next().is_some() || regained;
            self.last_alive = a.clone();
            self.last_unable = unable.clone();
            self.metrics.membership_size.set(raw.len() as i64);
            let mut next = plan(&self.me, &d, &a, &unable);
            // Yielded IPs lose their route as a lost election would (unless also a local IP).
            let yielded: BTreeSet<IpAddr> =
                self.announcers.values().flat_map(|a| a.yielded()).collect();
            if !grew {
                next.local
                    .retain(|ip| !yielded.contains(ip) || d.local_ips.contains(ip));
            }
            self.metrics.yielded_ips.set(yielded.len() as i64);
            self.apply(next, membership_changed, grew).await;
            let _ = ready.send(true);
            let now = tokio::time::Instant::now();
            let hold_down_ends = [
                self.links.next_deadline(),
                self.failback.as_ref().and_then(|f| f.next_deadline(now)),
            ]
            .into_iter()
            .flatten()
            .min();
            tokio::select! {
                () = &mut stop => return Ok(()),
                () = self.yields_changed.notified() => {}
                () = self.link_events.notified() => {}
                r = others_unable.changed() => r.context("the membership stopped")?,
                () = async {
                    match hold_down_ends {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                } => {}
                r = desired.changed() => r.context("the desired state's source stopped")?,
                r = alive.changed() => r.context("the membership stopped")?,
                // A restart faster than the others noticed the death changes only this.
                r = generations.changed() => r.context("the membership stopped")?,
                _ = retry.tick() => {}
            }
        }
    }

    /// The live members the election may use now: without the ones held down by the failback
    /// hold-down (logged when that set changes).
    fn admitted(&mut self, raw: &BTreeSet<String>, gens: &Generations) -> BTreeSet<String> {
        let Some(f) = &mut self.failback else {
            return raw.clone();
        };
        let now = tokio::time::Instant::now();
        f.observe(raw, gens, now);
        let held = f.held(now);
        let names: BTreeSet<String> = held.keys().cloned().collect();
        if names != self.held {
            let admitted: Vec<&String> = self.held.difference(&names).collect();
            if !admitted.is_empty() {
                tracing::info!(
                    ?admitted,
                    "failback hold-down over: these nodes are Layer2 candidates again"
                );
            }
            if !names.is_empty() {
                let until = held
                    .values()
                    .max()
                    .map(|t| t.saturating_duration_since(now));
                tracing::info!(held = ?names, ?until, "failback hold-down: nodes new in the membership are not Layer2 candidates yet");
            }
            self.held = names;
        }
        self.metrics.held_down_members.set(self.held.len() as i64);
        let admitted = f.admitted(now);
        raw.intersection(&admitted).cloned().collect()
    }

    /// Looks at every interface this node announces on: one that is down or gone makes the
    /// node unable there (the others are told at once, through the membership), one that
    /// changed index or MAC gets its announcer reopened (`apply` starts the new one and
    /// announces its IPs with the new MAC at once).
    async fn check_links(&mut self, d: &Desired) {
        let now = tokio::time::Instant::now();
        let specs: BTreeSet<String> = d
            .layer2
            .iter()
            .filter(|s| s.candidates.contains(&self.me))
            .map(|s| s.interface.clone())
            .collect();
        self.links.retain(&specs);
        for spec in &specs {
            let (seen, why) = link_watch::observe(spec);
            let change = self.links.observe(spec, seen.clone(), now);
            if change.replaced
                && let Some(a) = self.announcers.remove(spec)
            {
                self.metrics.interface_reopens.inc();
                if let berth_agent::layer2::link::Observed::Seen { interface, .. } = &seen {
                    tracing::warn!(spec = %spec, old_index = a.interface().index, old_mac = %a.interface().mac,
                        index = interface.index, mac = %interface.mac,
                        "the interface was recreated or changed MAC: answering from the new one");
                }
                a.stop();
            }
            if change.serving_changed {
                match (&seen, &why) {
                    (_, Some(e)) => {
                        tracing::warn!(spec = %spec, error = %e, "cannot answer on this interface: its Layer2 IPs go to other candidates")
                    }
                    (berth_agent::layer2::link::Observed::Seen { usable: false, .. }, _) => {
                        tracing::warn!(spec = %spec, "the interface is down: its Layer2 IPs go to other candidates")
                    }
                    _ => tracing::info!(spec = %spec, "the interface is up again"),
                }
            }
        }
        self.links.tick(now);
        let mine = self.links.unable();
        self.metrics.unable_interfaces.set(mine.len() as i64);
        if mine != self.announced_unable {
            tracing::info!(unable = ?mine, "interfaces this node cannot answer on changed");
            if let Some(h) = &self.unable_handle {
                h.set(mine.clone()).await;
            }
            self.announced_unable = mine;
        }
    }

    async fn apply(&mut self, next: Plan, membership_changed: bool, grew: bool) {
        for (ip, e) in &next.elections {
            let before = self.last.elections.get(ip).and_then(|e| e.owner.clone());
            if before != e.owner {
                self.metrics
                    .ownership_changes
                    .get_or_create(&berth_agent::metrics::OwnerLabels { ip: ip.to_string() })
                    .inc();
                tracing::info!(
                    %ip,
                    service = %e.service,
                    from = before.as_deref().unwrap_or("-"),
                    to = e.owner.as_deref().unwrap_or("-"),
                    "Layer2 owner changed"
                );
                // The new owner records it; off the failover path (spawned).
                if let Some(events) = &self.events
                    && e.owner.as_deref() == Some(self.me.as_str())
                {
                    let (events, service, ip) = (events.clone(), e.service.clone(), *ip);
                    tokio::spawn(async move { events.took_over(&service, ip).await });
                }
            }
        }
        // Losses first: stop answering for IPs this node no longer owns before anything else.
        for (spec, announcer) in &self.announcers {
            let keep = next.answer.get(spec).cloned().unwrap_or_default();
            let current: BTreeSet<IpAddr> = self.last.answer.get(spec).cloned().unwrap_or_default();
            announcer.set_owned(current.intersection(&keep).copied().collect(), grew);
        }
        let gone: Vec<String> = self
            .announcers
            .keys()
            .filter(|s| !next.answer.contains_key(*s))
            .cloned()
            .collect();
        for spec in gone {
            if let Some(a) = self.announcers.remove(&spec) {
                a.stop();
            }
        }
        // Announcers (and arp_ignore) are ready before routes make the kernel treat the IPs
        // as local; they answer for nothing new yet.
        for spec in next.answer.keys() {
            if self.announcers.contains_key(spec) {
                continue;
            }
            let started = interface::resolve(spec)
                .map_err(anyhow::Error::from)
                .and_then(|i| {
                    self.arp_ignore.ensure(&i.name);
                    Announcer::start(i, self.metrics.clone(), self.yields_changed.clone())
                        .with_context(|| format!("opening packet sockets on {spec}"))
                });
            match started {
                Ok(a) => {
                    tracing::info!(interface = %a.interface().name, mac = %a.interface().mac, spec = %spec, "answering ARP/NDP");
                    self.failed_interfaces.remove(spec);
                    self.announcers.insert(spec.clone(), a);
                }
                Err(e) => {
                    if self.failed_interfaces.insert(spec.clone()) {
                        tracing::error!(spec = %spec, error = format!("{e:#}"), "cannot answer on this interface; retrying every 5 s");
                    }
                }
            }
        }
        // Traffic is accepted before the IP is announced, so the first packets after a
        // takeover are not dropped.
        match self.routes.reconcile(&next.local).await {
            Ok(c) if !c.is_empty() => {
                tracing::info!(added = ?c.added, removed = ?c.removed, "local routes changed")
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "local routes not fully applied"),
        }
        let mut owned_total = 0;
        for (spec, ips) in &next.answer {
            if let Some(a) = self.announcers.get(spec) {
                owned_total += ips.len();
                for ip in ips {
                    self.metrics.owned(*ip);
                }
                a.set_owned(ips.clone(), grew);
                if grew {
                    a.view_grew();
                }
                if membership_changed {
                    a.announce_again();
                }
            }
        }
        self.metrics.owned_ips.set(owned_total as i64);
        self.last = next;
    }

    async fn shutdown(&mut self) {
        for (_, a) in std::mem::take(&mut self.announcers) {
            a.stop();
        }
        tracing::info!("stopped answering ARP/NDP");
        match self.routes.remove_all().await {
            Ok(c) => tracing::info!(removed = c.removed.len(), "local routes removed"),
            Err(e) => tracing::error!(error = %e, "local routes not all removed"),
        }
        // Only now: with a Layer2 IP still routed locally, arp_ignore 0 would let the kernel
        // answer for it.
        self.arp_ignore.restore();
    }
}

/// SIGHUP re-reads the static file; a file that no longer parses is reported and changes
/// nothing.
async fn reload_on_sighup(path: PathBuf, desired: watch::Sender<Desired>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        match desired::load(&path) {
            Ok(d) => {
                tracing::info!(
                    layer2 = d.layer2.len(),
                    local = d.local_ips.len(),
                    "SIGHUP: static file reloaded"
                );
                desired.send_replace(d);
            }
            Err(e) => tracing::error!(error = %e, "SIGHUP: static file not reloaded"),
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        for huge in [
            "6e18s",
            "1e20s",
            "3601s",
            "18446744073709551615ms",
            "-1s",
            "NaNs",
        ] {
            let e = parse_duration(huge).unwrap_err();
            assert!(e.contains("at most 1h"), "{huge}: {e}");
        }
        assert_eq!(parse_duration("3s").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("0.5s").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("3").unwrap_err().contains("500ms"));
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn flags_parse() {
        let a = Args::try_parse_from([
            "berth-agent",
            "--node-name",
            "n1",
            "--static",
            "/x",
            "--gossip-seed",
            "10.0.0.12:7946",
            "--gossip-seed",
            "[fd00::13]:7946",
        ])
        .unwrap();
        assert_eq!(a.gossip_seed.len(), 2);
        // A key without a listen address is refused, not ignored.
        let e = Args::try_parse_from([
            "berth-agent",
            "--node-name",
            "n1",
            "--static",
            "/x",
            "--gossip-key-file",
            "/k",
        ])
        .unwrap_err();
        assert!(e.to_string().contains("--gossip-listen"), "{e}");
        assert_eq!(a.route_table, routes::DEFAULT_TABLE);
        // The SWIM defaults are the timing the failover figures were measured with.
        let t = Timing::default();
        assert_eq!(a.gossip_probe_interval, t.probe_period);
        assert_eq!(a.gossip_probe_timeout, t.probe_rtt);
        assert_eq!(a.gossip_suspicion, t.suspect_to_down);
        assert_eq!(a.link_hold_down, Duration::from_secs(2));
        assert_eq!(a.failback_hold_down, Duration::from_secs(2));
    }
}

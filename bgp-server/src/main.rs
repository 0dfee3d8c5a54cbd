//! `berth-bgp-server`: Berth's BGP-4 speaker.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use tokio::sync::watch;

use berth_bgp_server::config::SpeakerConfig;
use berth_bgp_server::control::authority::AnyAuthority;
use berth_bgp_server::control::service::{self, Applied, Control};
use berth_bgp_server::control::store::{self, Store};
use berth_bgp_server::control::tls;
use berth_bgp_server::rib::Snapshot;
use berth_bgp_server::speaker::{Health, Listeners, Options, StatusBoard};

/// Berth's BGP speaker: announces each Service IP to the configured routers with one path per
/// eligible node (ADD-PATH), exactly as its desired state says.
///
/// Two ways to run it. Driven by the operator: `--grpc-socket` and/or `--grpc-listen` serve
/// the `berth.bgp.v1.Speaker` API, and `--state-dir` keeps the last accepted state so that a
/// restart announces it at once, before any client connects. Standalone: `--config FILE`
/// (global ASN and router ID, peers, static routes; the format is in docs/development.md); SIGHUP
/// reloads the routes from the file. Either way SIGTERM closes every session within a second,
/// whatever the peers do: where graceful restart is negotiated the routers keep the routes
/// until the speaker is back (the session closes with a Cease where both sides set the RFC
/// 8538 N bit, without a NOTIFICATION otherwise); elsewhere, or with --withdraw-on-shutdown,
/// a Cease (a Hard Reset with the N bit) withdraws them.
///
/// Input never makes it exit: an Apply that cannot be run (a listen port held by another
/// process, say) is refused, and a persisted state that cannot be applied at start is reported
/// (log, `berth_bgp_settings_unapplied`, `/readyz` with the reason) while the API serves.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {
    /// Standalone mode: configuration file (YAML or JSON): asn, routerId, listenPort,
    /// gracefulRestart, peers, routes.
    #[arg(long, short = 'c', env = "BERTH_BGP_CONFIG", conflicts_with_all = ["grpc_socket", "grpc_listen", "state_dir"])]
    config: Option<PathBuf>,
    /// Serve the control API, plaintext, on this Unix socket (local clients: berthctl).
    #[arg(long, env = "BERTH_GRPC_SOCKET")]
    grpc_socket: Option<PathBuf>,
    /// Serve the control API on this TCP address: with mutual TLS (--tls-cert, --tls-key,
    /// --tls-ca), or plaintext on loopback only.
    #[arg(long, env = "BERTH_GRPC_LISTEN")]
    grpc_listen: Option<std::net::SocketAddr>,
    /// The control API's server certificate chain (PEM); re-read when it changes.
    #[arg(long, env = "BERTH_TLS_CERT", requires_all = ["tls_key", "tls_ca", "grpc_listen"])]
    tls_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, env = "BERTH_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The CA that signs the clients' certificates (PEM): clients without one are refused.
    #[arg(long, env = "BERTH_TLS_CA", requires = "tls_cert")]
    tls_ca: Option<PathBuf>,
    /// Directory for the last accepted desired state (restored at start).
    #[arg(long, env = "BERTH_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "BERTH_LOG_FORMAT")]
    log_format: LogFormat,
    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:9473", env = "BERTH_METRICS_ADDR")]
    metrics_addr: std::net::SocketAddr,
    /// RFC 9687 send-hold time in seconds: a session whose peer has taken no data for this
    /// long while some was waiting is closed (NOTIFICATION 8). Default: 480 s or twice the
    /// negotiated hold time, whichever is longer.
    #[arg(long, env = "BERTH_SEND_HOLD_TIME", value_parser = clap::value_parser!(u64).range(1..))]
    send_hold_time: Option<u64>,
    /// On SIGTERM, close every session with a Cease (a Hard Reset where the RFC 8538 N bit is
    /// negotiated) so the routers withdraw Berth's routes (decommissioning). Without it, a peer
    /// with graceful restart negotiated keeps the routes (stale) until the speaker is back or
    /// its restart time runs out: a rollout is not an outage.
    #[arg(long, env = "BERTH_WITHDRAW_ON_SHUTDOWN")]
    withdraw_on_shutdown: bool,
    /// Log filter in tracing's syntax (e.g. `info`, `berth_bgp_server=debug`); RUST_LOG also works.
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
    // Restarting from persisted state: the first OPENs carry the graceful restart R bit.
    let mut restored_from_disk = false;
    // Why a persisted state there is not used: reported on /readyz until an Apply.
    let mut unused_state = None;
    let applied = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the configuration file {}", path.display()))?;
            let mut cfg =
                SpeakerConfig::parse(&text).with_context(|| format!("in {}", path.display()))?;
            drop(text);
            let desired = Arc::new(cfg.desired());
            // From here on the routes live only in the desired state, not twice.
            cfg.routes = Vec::new();
            Applied {
                generation: 0,
                settings: Arc::new(cfg),
                desired,
                journaled: 0,
                routes_digest: None,
            }
        }
        None => {
            if args.grpc_socket.is_none() && args.grpc_listen.is_none() {
                anyhow::bail!(
                    "nothing to do: give --config FILE (standalone) or --grpc-socket PATH / \
                     --grpc-listen ADDR (driven by the operator)"
                );
            }
            if let Some(addr) = args.grpc_listen
                && !addr.ip().is_loopback()
                && args.tls_cert.is_none()
            {
                anyhow::bail!(
                    "--grpc-listen {addr}: plaintext gRPC is only allowed on loopback; give \
                     --tls-cert, --tls-key and --tls-ca for mutual TLS, or use --grpc-socket"
                );
            }
            let restored = match &args.state_dir {
                Some(dir) => {
                    store::usable(dir).context("--state-dir")?;
                    service::restore(&Store::new(dir))
                }
                None => Ok(None),
            };
            let restored = restored.unwrap_or_else(|why| {
                unused_state = Some(why);
                None
            });
            restored_from_disk = restored.is_some();
            restored.unwrap_or_else(|| Applied {
                generation: 0,
                settings: Arc::new(SpeakerConfig {
                    asn: 0,
                    router_id: std::net::Ipv4Addr::UNSPECIFIED,
                    listen_port: 0,
                    graceful_restart: Default::default(),
                    peers: Vec::new(),
                    routes: Vec::new(),
                }),
                desired: Arc::new(Default::default()),
                journaled: 0,
                routes_digest: None,
            })
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(args, applied, restored_from_disk, unused_state))
}

async fn serve(
    args: Args,
    applied: Applied,
    restored: bool,
    unused_state: Option<String>,
) -> anyhow::Result<()> {
    let (desired_tx, desired) = watch::channel(Snapshot {
        routes: applied.desired.clone(),
        ..Snapshot::default()
    });
    let (settings_tx, settings) = watch::channel(applied.settings.clone());
    let (stop_tx, stop) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: closing every session");
        let _ = stop_tx.send(true);
    });
    let metrics = Arc::new(berth_bgp_server::metrics::Metrics::new());
    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("binding --metrics-addr {}", args.metrics_addr))?;
    let (readiness, ready) = Health::new();
    if let Some(why) = unused_state {
        metrics.persisted_state_unused.set(1);
        readiness.set(
            service::PERSISTED,
            Some(format!("{why}; send a state (Apply)")),
        );
    }
    tokio::spawn(berth_bgp_server::metrics::serve(
        listener,
        metrics.clone(),
        ready,
        stop.clone(),
    ));
    let board = StatusBoard::default();
    let listeners = Listeners::default();
    if let Some(path) = &args.config {
        tokio::spawn(reload_on_sighup(
            path.clone(),
            (*applied.settings).clone(),
            desired_tx,
        ));
    } else {
        let control = Control::new(
            applied,
            settings_tx,
            desired_tx,
            args.state_dir.as_ref().map(Store::new),
            board.clone(),
            metrics.clone(),
            listeners.clone(),
        )
        .with_health(readiness.clone());
        // Apply's table is converted route by route, never decoded whole (`service::Lean`).
        let svc = service::Lean::new(control);
        let (health_reporter, health) = tonic_health::server::health_reporter();
        health_reporter.set_serving::<service::Lean>().await;
        if let Some(path) = &args.grpc_socket {
            // A socket file left by an earlier run would make bind fail.
            let _ = std::fs::remove_file(path);
            let uds = tokio::net::UnixListener::bind(path)
                .with_context(|| format!("binding --grpc-socket {}", path.display()))?;
            tracing::info!(socket = %path.display(), "serving the control API");
            // gRPC C-core clients send the socket path as `:authority`, which h2 refuses.
            let incoming = tokio_stream::StreamExt::map(
                tokio_stream::wrappers::UnixListenerStream::new(uds),
                |conn| conn.map(AnyAuthority::new),
            );
            let svc = svc.clone();
            let health = health.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let r = tonic::transport::Server::builder()
                    .add_service(health)
                    .add_service(svc)
                    .serve_with_incoming_shutdown(incoming, stopped(stop))
                    .await;
                if let Err(e) = r {
                    tracing::error!(error = %e, "control API on the Unix socket failed");
                }
            });
        }
        if let Some(addr) = args.grpc_listen {
            let tcp = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding --grpc-listen {addr}"))?;
            let server = tonic::transport::Server::builder()
                .add_service(health)
                .add_service(svc);
            let stop2 = stop.clone();
            match (&args.tls_cert, &args.tls_key, &args.tls_ca) {
                (Some(cert), Some(key), Some(ca)) => {
                    let files = tls::TlsFiles {
                        cert: cert.clone(),
                        key: key.clone(),
                        ca: ca.clone(),
                    };
                    let first = tls::load(&files).context("the control API's TLS material")?;
                    tracing::info!(%addr, "serving the control API (mutual TLS)");
                    let incoming = tls::incoming(tcp, files, first, stop.clone());
                    tokio::spawn(async move {
                        if let Err(e) = server
                            .serve_with_incoming_shutdown(incoming, stopped(stop2))
                            .await
                        {
                            tracing::error!(error = %e, "control API on {addr} failed");
                        }
                    });
                }
                _ => {
                    tracing::info!(%addr, "serving the control API (loopback, plaintext)");
                    let incoming = tokio_stream::wrappers::TcpListenerStream::new(tcp);
                    tokio::spawn(async move {
                        if let Err(e) = server
                            .serve_with_incoming_shutdown(incoming, stopped(stop2))
                            .await
                        {
                            tracing::error!(error = %e, "control API on {addr} failed");
                        }
                    });
                }
            }
        }
    }
    berth_bgp_server::speaker::run(
        settings,
        desired,
        stop,
        metrics,
        board,
        listeners,
        readiness,
        Options {
            send_hold: args.send_hold_time.map(std::time::Duration::from_secs),
            withdraw_on_shutdown: args.withdraw_on_shutdown,
            restarting: restored,
        },
    )
    .await;
    Ok(())
}

async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// SIGHUP re-reads the file and applies its routes: only the difference reaches the peers.
/// Peer and global settings need a restart; a file that no longer parses is reported and
/// changes nothing.
async fn reload_on_sighup(path: PathBuf, running: SpeakerConfig, desired: watch::Sender<Snapshot>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        let parsed = std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|t| SpeakerConfig::parse(&t).map_err(|e| e.to_string()));
        match parsed {
            Ok(cfg) => {
                if cfg.peers != running.peers
                    || cfg.asn != running.asn
                    || cfg.router_id != running.router_id
                {
                    tracing::warn!(
                        "SIGHUP: only routes are reloaded; restart to change peers, asn or routerId"
                    );
                }
                tracing::info!(routes = cfg.routes.len(), "SIGHUP: routes reloaded");
                desired.send_modify(|s| *s = s.next(Arc::new(cfg.desired())));
            }
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "SIGHUP: configuration not reloaded")
            }
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

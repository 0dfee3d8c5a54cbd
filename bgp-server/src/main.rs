//! `berth-bgp-server`: Berth's BGP-4 speaker.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use tokio::sync::watch;

use berth_bgp_server::config::SpeakerConfig;

/// Berth's BGP speaker: announces each Service IP to the configured routers with one path per
/// eligible node (ADD-PATH), exactly as its desired state says.
///
/// Today it runs standalone from a configuration file (global ASN and router ID, peers,
/// static routes; the format is in the README and in `bgp-server/src/config.rs`). The gRPC
/// control API that lets the operator drive it comes later. SIGHUP reloads the routes from the
/// file (only the difference is sent); SIGTERM closes every session with a Cease.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {
    /// Configuration file (YAML): asn, routerId, listenPort, gracefulRestart, peers, routes.
    #[arg(long, short = 'c', env = "BERTH_BGP_CONFIG")]
    config: PathBuf,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "BERTH_LOG_FORMAT")]
    log_format: LogFormat,
    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:9473", env = "BERTH_METRICS_ADDR")]
    metrics_addr: std::net::SocketAddr,
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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("reading the configuration file {}", args.config.display()))?;
    let mut cfg =
        SpeakerConfig::parse(&text).with_context(|| format!("in {}", args.config.display()))?;
    drop(text);
    let initial = Arc::new(cfg.desired());
    // From here on the routes live only in the desired state, not twice.
    cfg.routes = Vec::new();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let (desired_tx, desired) = watch::channel(initial);
        tokio::spawn(reload_on_sighup(
            args.config.clone(),
            cfg.clone(),
            desired_tx,
        ));
        let (stop_tx, stop) = watch::channel(false);
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutting down: closing sessions with a Cease");
            let _ = stop_tx.send(true);
        });
        let metrics = Arc::new(berth_bgp_server::metrics::Metrics::new());
        let listener = tokio::net::TcpListener::bind(args.metrics_addr)
            .await
            .with_context(|| format!("binding --metrics-addr {}", args.metrics_addr))?;
        let (_ready_tx, ready) = watch::channel(true);
        tokio::spawn(berth_bgp_server::metrics::serve(
            listener,
            metrics.clone(),
            ready,
            stop.clone(),
        ));
        berth_bgp_server::speaker::run(cfg, desired, stop, metrics)
            .await
            .context("running the speaker")
    })
}

/// SIGHUP re-reads the file and applies its routes: only the difference reaches the peers.
/// Peer and global settings need a restart; a file that no longer parses is reported and
/// changes nothing.
async fn reload_on_sighup(
    path: PathBuf,
    running: SpeakerConfig,
    desired: watch::Sender<Arc<berth_bgp_server::rib::Desired>>,
) {
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
                let _ = desired.send(Arc::new(cfg.desired()));
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

//! `berth-operator`: assigns IPs to Services and drives the speakers and agents.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use berth_operator::controller::{self, Settings, leader::Leadership};
use berth_operator::metrics::{self, Metrics};
use clap::Parser;
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use tracing::{error, info};

/// Berth's operator: reconciles Eip, BgpConf and BgpPeer resources, assigns external IPs to
/// Services of type LoadBalancer, and pushes the routes to announce to every bgp-server
/// replica.
///
/// It reaches the Kubernetes API through the in-cluster service account or `KUBECONFIG`.
/// Run two or more replicas: one leads (a coordination.k8s.io Lease), the others stand by.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {
    /// Take LoadBalancer Services that have no spec.loadBalancerClass (otherwise only those
    /// of class berth.dev/berth).
    #[arg(long, env = "BERTH_TAKE_UNCLASSED")]
    take_unclassed: bool,

    /// The namespace Berth runs in: its Lease, its bgp-server Pods, and the default namespace
    /// of BgpPeer password Secrets.
    #[arg(long, env = "BERTH_NAMESPACE", default_value = "berth-system")]
    namespace: String,

    /// Label selector of the bgp-server Pods (the StatefulSet's Pods).
    #[arg(
        long,
        env = "BERTH_SPEAKER_SELECTOR",
        default_value = "app.kubernetes.io/name=berth-bgp-server"
    )]
    speaker_selector: String,

    /// The bgp-server replicas' gRPC port.
    #[arg(long, env = "BERTH_SPEAKER_PORT", default_value_t = 50051)]
    speaker_port: u16,

    /// CA certificate (PEM) that signed the speakers' server certificates.
    #[arg(long, env = "BERTH_SPEAKER_CA", requires_all = ["speaker_cert", "speaker_key"])]
    speaker_ca: Option<PathBuf>,

    /// This operator's client certificate (PEM) for the speakers' mTLS.
    #[arg(long, env = "BERTH_SPEAKER_CERT")]
    speaker_cert: Option<PathBuf>,

    /// The private key (PEM) of --speaker-cert.
    #[arg(long, env = "BERTH_SPEAKER_KEY")]
    speaker_key: Option<PathBuf>,

    /// The name the speakers' certificates carry (one certificate for every replica).
    #[arg(
        long,
        env = "BERTH_SPEAKER_SERVER_NAME",
        default_value = "berth-bgp-server"
    )]
    speaker_server_name: String,

    /// Talk to the speakers without TLS. Only for labs where they listen on loopback: a
    /// speaker refuses plaintext anywhere else.
    #[arg(long, env = "BERTH_SPEAKER_PLAINTEXT", conflicts_with = "speaker_ca")]
    speaker_plaintext: bool,

    /// Full resync of every speaker without an open Watch stream, and of Eip and BgpPeer
    /// status, at least this often (seconds).
    #[arg(long, env = "BERTH_RESYNC_SECONDS", default_value_t = 60)]
    resync_seconds: u64,

    /// This replica's identity in the Lease and in Events: the Pod name (downward API).
    /// Without it, the host name with the process id and start time: unique per replica.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,

    /// The leader Lease's name.
    #[arg(long, env = "BERTH_LEASE_NAME", default_value = "berth-operator")]
    lease_name: String,

    /// How long the Lease lasts without renewal (seconds); a standby takes over after it.
    #[arg(long, env = "BERTH_LEASE_SECONDS", default_value_t = 15)]
    lease_seconds: u64,

    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, env = "BERTH_METRICS_ADDRESS", default_value = "0.0.0.0:9472")]
    metrics_address: SocketAddr,

    /// Log as JSON lines.
    #[arg(long, env = "BERTH_LOG_JSON")]
    log_json: bool,
}

fn path(path: &Option<PathBuf>, what: &str) -> anyhow::Result<PathBuf> {
    path.clone()
        .ok_or_else(|| anyhow::anyhow!("{what} is required with --speaker-ca"))
}

// One worker thread, and everything on it: the main thread only waits. An endpoint change
// passes through several tasks (its watch, the index, the speaker sync, the gRPC
// connection); with two workers and the controllers on the main thread, each hand-over
// could wake another thread, a fifth of the CPU a change cost (scale bench: p50 1.09 ->
// 0.88 ms). A worker rather than a `current_thread` runtime: allocations then come from a
// thread arena of glibc's malloc, not the main heap, and the peak RSS of the scale bench was
// 105 MB instead of 110 MB (the heap itself peaked at 59 MB under heaptrack). Nothing
// here computes for long, and the Lease is renewed on a thread and runtime of its own
// (`Leadership::hold_apart`), so a busy worker never costs the leadership.
fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async { tokio::spawn(operator_main()).await? })
}

/// The operator, on the runtime's worker.
async fn operator_main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: logs written to files (the lab, kubectl logs) stay plain.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    if args.log_json {
        builder.json().init();
    } else {
        builder.init();
    }

    let speaker_tls = match (&args.speaker_ca, args.speaker_plaintext) {
        (Some(ca), _) => {
            let files = controller::TlsFiles {
                ca: ca.clone(),
                cert: path(&args.speaker_cert, "--speaker-cert")?,
                key: path(&args.speaker_key, "--speaker-key")?,
                server_name: args.speaker_server_name.clone(),
            };
            // Read once now, so a wrong path fails at start rather than at every connection.
            files.load().map_err(anyhow::Error::msg)?;
            Some(files)
        }
        (None, true) => None,
        (None, false) => anyhow::bail!(
            "the speakers need mTLS: give --speaker-ca, --speaker-cert and --speaker-key \
             (or --speaker-plaintext for a loopback lab)"
        ),
    };
    let settings = Settings {
        take_unclassed: args.take_unclassed,
        namespace: args.namespace.clone(),
        speaker_selector: args.speaker_selector.clone(),
        speaker_port: args.speaker_port,
        speaker_tls,
        resync: Duration::from_secs(args.resync_seconds.max(1)),
        identity: controller::leader::identity(args.identity.as_deref()),
        lease_name: args.lease_name.clone(),
        lease_duration: Duration::from_secs(args.lease_seconds.max(3)),
    };

    let metrics = Arc::new(Metrics::new());
    let listener = tokio::net::TcpListener::bind(args.metrics_address)
        .await
        .with_context(|| format!("cannot listen on {} for metrics", args.metrics_address))?;
    tokio::spawn(metrics::serve(listener, metrics.clone()));

    let client = Client::try_default().await.context(
        "cannot reach the Kubernetes API: set KUBECONFIG or run in a Pod with a service account",
    )?;
    // Standing by is a ready state: the Service in front of the operator is for metrics.
    metrics.set_ready(true);
    let leases: Api<Lease> = Api::namespaced(client.clone(), &settings.namespace);
    let lead = tokio::select! {
        l = Leadership::acquire(leases, &settings.lease_name, &settings.identity, settings.lease_duration) => l,
        _ = shutdown() => return Ok(()),
    };
    metrics.set_leader(true);
    metrics.set_ready(false);
    // Renewed on a thread and a connection of its own (Leadership::hold_apart says why).
    let namespace = settings.namespace.clone();
    let mut renewals = lead.hold_apart(move || async move {
        let client = Client::try_default().await.map_err(|e| e.to_string())?;
        Ok(Api::namespaced(client, &namespace))
    });
    let result = tokio::select! {
        r = controller::run(client, settings, metrics.clone()) => {
            if let Err(e) = &r {
                error!(error = %e, "controllers stopped");
            }
            r
        }
        why = &mut renewals.lost => {
            metrics.set_leader(false);
            let why = why.unwrap_or_else(|_| "the Lease renewal thread stopped".to_owned());
            anyhow::bail!("leadership lost, exiting so a fresh leader rebuilds: {why}")
        }
        _ = shutdown() => {
            info!("shutting down");
            Ok(())
        }
    };
    // No renewal may run while or after the Lease is released below.
    renewals.stop().await;
    // Whatever stopped us, a standby need not wait for the Lease to expire.
    lead.release().await;
    result
}

async fn shutdown() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

//! `fake-apiserver`: the in-memory Kubernetes API server (a test double, see
//! `berth_e2e::apiserver`) for the lab: `fake-apiserver --listen 10.0.0.100:6443 --crds config/crd`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use berth_e2e::apiserver::{Config, Server, TlsFiles};
use clap::Parser;

/// An in-memory Kubernetes API server for tests and the lab: plain HTTP, bearer tokens and
/// RBAC with --admin-token-file, state lost on exit. Serves the built-in types Berth uses and the CRDs in --crds.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {
    /// Address to listen on (plain HTTP).
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Directory of CustomResourceDefinition YAML files to serve.
    #[arg(long)]
    crds: Option<PathBuf>,
    /// Changes kept for watches to resume from; older resourceVersions get 410 Gone.
    #[arg(long, default_value_t = 10_000)]
    history: usize,
    /// Seconds between bookmarks on idle watches that asked for them.
    #[arg(long, default_value_t = 30)]
    bookmark_seconds: u64,
    /// Do not log one line per request.
    #[arg(long)]
    quiet: bool,
    /// A file holding the administrator's bearer token (group system:masters). With it every
    /// request is authenticated (ServiceAccount tokens come from `kubectl create token`) and
    /// authorized by RBAC from the stored Roles and bindings; without it nothing is.
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// Serve HTTPS with this certificate (PEM; kubectl sends tokens only over TLS).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let admin_token = match &args.admin_token_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("cannot read --admin-token-file {}", p.display()))?
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    let tls = match (args.tls_cert, args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let config = Config {
        admin_token,
        tls,
        history_limit: args.history,
        bookmark_every: Duration::from_secs(args.bookmark_seconds.max(1)),
        log_requests: !args.quiet,
        ..Config::default()
    };
    let server = Server::new(args.crds.as_deref(), config)
        .context("cannot load the CRDs (pass a directory of CRD YAML files with --crds)")?;
    let kinds: Vec<String> = server
        .registry
        .all()
        .iter()
        .map(|t| t.qualified())
        .collect();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    eprintln!(
        "fake-apiserver (test double) listening on {scheme}://{}; serving {}",
        args.listen,
        kinds.join(", ")
    );
    server
        .serve(listener)
        .await
        .context("cannot serve HTTPS with --tls-cert/--tls-key")?;
    Ok(())
}

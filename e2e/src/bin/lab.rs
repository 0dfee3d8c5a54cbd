//! `lab`: the whole of Berth on one machine (see `berth_e2e::lab`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use berth_e2e::lab::{self, RouterKind, Spec};
use clap::{Parser, Subcommand, ValueEnum};

/// Berth's lab: network namespaces for a router, three nodes, a client and a control plane,
/// running the real Berth binaries against a real FRR (or BIRD 2) router and an in-memory
/// Kubernetes API server (a test double). Needs root.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {
    /// Where configs, logs, certificates and the kubeconfig go.
    #[arg(
        long,
        global = true,
        default_value = "/tmp/berth-lab",
        env = "BERTH_LAB_DIR"
    )]
    dir: PathBuf,
    /// Namespace name prefix.
    #[arg(long, global = true, default_value = "blab")]
    prefix: String,
    /// The host port where kubectl reaches the lab's API server.
    #[arg(long, global = true, default_value_t = 16443)]
    api_port: u16,
    #[command(subcommand)]
    command: Command,
}

/// The router to run.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum RouterArg {
    /// FRR (zebra + bgpd).
    Frr,
    /// BIRD 2.
    Bird,
}

/// What to do with the lab.
#[derive(Subcommand, Debug)]
enum Command {
    /// Build the lab, start Berth in it, apply examples/lab/ and show the result. Removes the
    /// leftovers of an earlier run first; leaves the lab running (`lab down` removes it).
    Up {
        /// The router.
        #[arg(long, value_enum, default_value = "frr")]
        router: RouterArg,
    },
    /// Tear the lab down, including leftovers of an earlier or crashed run.
    Down,
    /// Show pools, Services, peers, the router's routes and where connections land.
    Status,
    /// Measure, in a lab of its own: Service creation -> the router's kernel route, and
    /// endpoint change -> next-hop change, with many Services announced.
    Bench {
        /// Services announced in the background while measuring.
        #[arg(long, default_value_t = 1000)]
        services: usize,
        /// Repetitions of each measurement.
        #[arg(long, default_value_t = 50)]
        reps: usize,
    },
    /// Copy bytes between two endpoints (`host:port` or `unix:/path`); the lab uses it to
    /// let the host reach the API server inside its namespace.
    #[command(hide = true)]
    Forward {
        /// Where to accept connections.
        #[arg(long)]
        listen: String,
        /// Where to send them.
        #[arg(long)]
        to: String,
    },
}

fn repo_root() -> PathBuf {
    // The binary runs from target/<profile>/; the repository is where Cargo.toml is above it,
    // or the current directory.
    let mut p = lab::own_bin_dir();
    for _ in 0..3 {
        if p.join("examples/lab").is_dir() {
            return p;
        }
        if !p.pop() {
            break;
        }
    }
    std::env::current_dir().unwrap_or_default()
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let spec = |router| Spec {
        prefix: args.prefix.clone(),
        dir: args.dir.clone(),
        router,
        bin_dir: lab::own_bin_dir(),
        repo: repo_root(),
        host_port: args.api_port,
        rbac_edit: None,
    };
    match args.command {
        Command::Forward { listen, to } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(lab::forward(&listen, &to))
                .with_context(|| format!("forwarding {listen} to {to}"))?;
            Ok(())
        }
        Command::Down => {
            let removed = lab::down(&spec(RouterKind::Frr));
            if removed.is_empty() {
                println!(
                    "nothing to remove: no lab namespaces named {}-*",
                    args.prefix
                );
            } else {
                println!("removed {}", removed.join(", "));
            }
            Ok(())
        }
        Command::Status => {
            print!("{}", lab::report(&spec(RouterKind::Frr), None));
            Ok(())
        }
        Command::Bench { services, reps } => {
            let spec = spec(RouterKind::Frr);
            lab::down(&spec);
            let running = lab::up(spec.clone()).map_err(anyhow::Error::msg)?;
            let report = running.bench(services, reps).map_err(anyhow::Error::msg);
            drop(running);
            lab::down(&spec);
            print!("{}", report?);
            Ok(())
        }
        Command::Up { router } => {
            let kind = match router {
                RouterArg::Frr => RouterKind::Frr,
                RouterArg::Bird => RouterKind::Bird,
            };
            let spec = spec(kind);
            let left = lab::down(&spec);
            if !left.is_empty() {
                println!("removed leftovers of an earlier run: {}", left.join(", "));
            }
            // Ctrl-C or SIGTERM (a `timeout`, a CI runner) while building: remove
            // everything, then exit.
            {
                let spec = spec.clone();
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build();
                    if let Ok(rt) = rt {
                        rt.block_on(async {
                            use tokio::signal::unix::{SignalKind, signal};
                            match signal(SignalKind::terminate()) {
                                Ok(mut term) => {
                                    tokio::select! {
                                        _ = tokio::signal::ctrl_c() => {}
                                        _ = term.recv() => {}
                                    }
                                }
                                Err(_) => {
                                    let _ = tokio::signal::ctrl_c().await;
                                }
                            }
                        });
                        lab::down(&spec);
                        eprintln!("interrupted: the lab was removed");
                        std::process::exit(130);
                    }
                });
            }
            println!(
                "building the lab in {} (namespaces {}-*) ...",
                spec.dir.display(),
                spec.prefix
            );
            let running = lab::up(spec.clone()).map_err(anyhow::Error::msg)?;
            println!("waiting for the Service web to get an IP and the router its route ...");
            let Some(ip) = running.service_ip("demo", "web", Duration::from_secs(60)) else {
                bail!(
                    "Service demo/web got no IP within 60 s: see {}/berth-operator-*.log",
                    spec.dir.display()
                );
            };
            let _ = berth_e2e::frr::wait_for(Duration::from_secs(60), || {
                (running.router_next_hops(&ip).len() == lab::NODES.len()).then_some(())
            });
            // The Eip status writer runs right after the allocations; show filled columns.
            let _ = berth_e2e::frr::wait_for(Duration::from_secs(10), || {
                running
                    .kubectl(&["get", "eip", "-o", "jsonpath={.items[*].status.usage}"])
                    .ok()
                    .filter(|u| u.split_whitespace().count() >= 2)
            });
            print!("{}", running.report());
            let pids = running.lab.keep();
            lab::save_pids(&spec, &pids).map_err(anyhow::Error::msg)?;
            println!(
                "The lab is up. kubectl --kubeconfig {} get eip,svc -A | lab status | lab down",
                spec.kubeconfig().display()
            );
            Ok(())
        }
    }
}

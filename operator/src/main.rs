//! `berth-operator`: assigns IPs to Services and drives the speakers and agents.

use clap::Parser;

/// Berth's operator: reconciles Eip, BgpConf and BgpPeer resources, assigns external IPs to
/// Services of type LoadBalancer, and pushes the routes to announce to every bgp-server replica.
///
/// This build contains the IP address management engine only; the Kubernetes controllers are
/// not built yet, so running it does nothing but say so.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {}

fn main() -> anyhow::Result<()> {
    let _args = Args::parse();
    anyhow::bail!(
        "berth-operator: the controllers are not implemented in this build (see README, \"Status\")"
    )
}

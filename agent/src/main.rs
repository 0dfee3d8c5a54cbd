//! `berth-agent`: Berth's per-node agent.

use clap::Parser;

/// Berth's node agent: programs the local routes that let this node accept traffic for Service
/// IPs, and answers ARP/NDP for the Layer2 IPs this node owns.
///
/// Not implemented in this build: running it only says so.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {}

fn main() -> anyhow::Result<()> {
    let _args = Args::parse();
    anyhow::bail!(
        "berth-agent: the node agent is not implemented in this build (see README, \"Status\")"
    )
}

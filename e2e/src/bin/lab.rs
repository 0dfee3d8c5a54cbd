//! `lab`: the whole of Berth on one machine.

use clap::{Parser, Subcommand};

/// Berth's lab: network namespaces for a router, three nodes and a client, running the real
/// Berth binaries against a real FRR or BIRD router.
///
/// Not implemented in this build: every subcommand only says so.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

/// What to do with the lab.
#[derive(Subcommand, Debug)]
enum Command {
    /// Build the lab and start Berth in it.
    Up,
    /// Tear the lab down, including leftovers of an earlier run.
    Down,
    /// Show pools, Services, the router's routes and where connections land.
    Status,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::bail!(
        "lab {:?}: the lab is not implemented in this build (see README, \"Status\")",
        args.command
    )
}

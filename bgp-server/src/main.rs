//! `berth-bgp-server`: Berth's BGP-4 speaker.

use clap::Parser;

/// Berth's BGP speaker: announces each Service IP to the configured routers with one path per
/// eligible node (ADD-PATH), exactly as the operator's desired state says.
///
/// Not implemented in this build: running it only says so.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {}

fn main() -> anyhow::Result<()> {
    let _args = Args::parse();
    anyhow::bail!(
        "berth-bgp-server: the BGP speaker is not implemented in this build (see README, \"Status\")"
    )
}

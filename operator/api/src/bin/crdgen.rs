//! Writes Berth's CRDs to `config/crd/` (or prints them) and `docs/reference.md`, generated
//! from the Rust types.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

/// Generate Berth's CustomResourceDefinitions from the Rust types in `berth-api`.
///
/// The committed files under config/crd/ must equal this output; a test fails when they
/// drift, so run this after every change to the types.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {
    /// Directory to write one YAML file per CRD into.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/crd"))]
    out_dir: PathBuf,
    /// Print all CRDs to standard output as one multi-document YAML stream instead of writing
    /// files (e.g. `crdgen --stdout | kubectl apply -f -`).
    #[arg(long)]
    stdout: bool,
    /// Where to write the field and name reference (Markdown).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/reference.md"))]
    reference: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let files = berth_api::crd::all().context("serialising the CRDs to YAML")?;
    if args.stdout {
        for f in &files {
            print!("---\n{}", f.yaml);
        }
        return Ok(());
    }
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("creating output directory {}", args.out_dir.display()))?;
    for f in &files {
        let path = args.out_dir.join(&f.file_name);
        std::fs::write(&path, &f.yaml).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    std::fs::write(&args.reference, berth_api::reference::markdown())
        .with_context(|| format!("writing {}", args.reference.display()))?;
    eprintln!("wrote {}", args.reference.display());
    Ok(())
}

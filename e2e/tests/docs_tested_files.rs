//! The guides show users what the tests run: docs/routers.md carries every router file under
//! docs/routers/ (which the tests include) and docs/install.md the chart's scenario values
//! files, verbatim, in code blocks.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

#[test]
fn the_router_guide_carries_the_tested_configurations_verbatim() {
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
    let guide = std::fs::read_to_string(docs.join("routers.md")).unwrap();
    let blocks: Vec<&str> = guide.split("```").skip(1).step_by(2).collect();
    let mut files: Vec<_> = std::fs::read_dir(docs.join("routers"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "conf"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "{files:?}");
    for f in files {
        let conf = std::fs::read_to_string(&f).unwrap();
        assert!(
            blocks.iter().any(|b| b.trim_start_matches('\n') == conf),
            "docs/routers.md has no code block equal to {} (the file the tests run): copy it in",
            f.display()
        );
    }
}

/// The lab's router files are written for the lab's addresses: the router and the speaker on
/// the first node.
#[test]
fn the_lab_router_files_name_the_lab_addresses() {
    use berth_e2e::lab::{NODES, ROUTER};
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/routers");
    for f in ["frr-lab.conf", "bird-lab.conf"] {
        let conf = std::fs::read_to_string(docs.join(f)).unwrap();
        assert!(
            conf.contains(&format!("router-id {ROUTER}"))
                || conf.contains(&format!("router id {ROUTER};")),
            "{f}"
        );
        assert!(conf.contains(&format!("neighbor {}", NODES[0].1)), "{f}");
    }
}

/// docs/install.md shows the chart's scenario values files (which `scripts/test-chart`
/// renders and validates) verbatim.
#[test]
fn the_install_guide_carries_the_tested_values_files_verbatim() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let guide = std::fs::read_to_string(root.join("docs/install.md")).unwrap();
    let blocks: Vec<&str> = guide.split("```").skip(1).step_by(2).collect();
    for f in [
        "bgp-addpath-values.yaml",
        "bgp-self-values.yaml",
        "layer2-values.yaml",
        "dual-stack-values.yaml",
    ] {
        let values = std::fs::read_to_string(root.join("charts/berth/ci").join(f)).unwrap();
        assert!(
            blocks
                .iter()
                .any(|b| b.strip_prefix("yaml\n").unwrap_or(b) == values),
            "docs/install.md has no code block equal to charts/berth/ci/{f}: copy it in"
        );
    }
}

/// The README's install block is what the lab runs (`lab::up` runs each command): kubectl
/// and helm only, and the helm command installs this repository's chart as release `berth`
/// into the namespace the lab uses.
#[test]
fn the_readme_install_block_is_the_labs() {
    use berth_e2e::lab;
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    let commands = lab::readme_install_commands(&readme).unwrap();
    assert!(
        commands.iter().all(|c| c[0] == "kubectl" || c[0] == "helm"),
        "{commands:?}"
    );
    let helm: Vec<&Vec<String>> = commands.iter().filter(|c| c[0] == "helm").collect();
    assert_eq!(helm.len(), 1, "{commands:?}");
    assert_eq!(
        helm[0][..4],
        ["helm", "install", lab::RELEASE, "charts/berth"].map(String::from),
        "{commands:?}"
    );
    assert!(
        helm[0]
            .windows(2)
            .any(|w| w[0] == "--namespace" && w[1] == lab::NAMESPACE),
        "{commands:?}"
    );
}

//! The committed `config/crd/` must be exactly what the Rust types generate.

// Test helpers outside #[test] fns: a panic here is the test failing, which is the point.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

#[test]
fn committed_crds_match_the_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/crd");
    let generated = berth_api::crd::all().expect("CRDs serialise");
    let mut expected_names: Vec<String> = generated.iter().map(|f| f.file_name.clone()).collect();
    expected_names.sort();
    let mut committed_names: Vec<String> = std::fs::read_dir(&dir)
        .expect("config/crd exists")
        .map(|e| {
            e.expect("readable entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    committed_names.sort();
    assert_eq!(
        committed_names, expected_names,
        "config/crd/ holds other files than the types generate: run `cargo run -p berth-api --bin crdgen`"
    );
    for f in generated {
        let committed = std::fs::read_to_string(dir.join(&f.file_name)).expect("readable CRD file");
        assert!(
            committed == f.yaml,
            "config/crd/{} differs from the Rust types: run `cargo run -p berth-api --bin crdgen` and commit the result",
            f.file_name
        );
    }
}

/// `docs/reference.md` is what the types generate.
#[test]
fn committed_reference_matches_the_types() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/reference.md");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == berth_api::reference::markdown(),
        "docs/reference.md differs from the types: run `cargo run -p berth-api --bin crdgen` and commit the result"
    );
}

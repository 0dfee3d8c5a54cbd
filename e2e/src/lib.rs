//! Berth's lab and end-to-end helpers: network namespaces, real routers, real processes.
//!
//! Everything created here is removed when its guard drops, also when a test fails.

pub mod apiserver;
pub mod bird;
pub mod frr;
pub mod gobgp;
pub mod kubelet;
pub mod lab;
pub mod layer2;
pub mod metric_names;
pub mod netns;
pub mod pki;

/// Why a test that needs the real network cannot run here, or `None` when it can. In CI
/// (`CI` set) a missing prerequisite is a failure, never a skip.
// Test support: failing the calling test is the point.
#[allow(clippy::panic)]
pub fn lab_unavailable(binaries: &[&str]) -> Option<String> {
    let why = if !is_root() {
        Some("needs root (network namespaces)".to_owned())
    } else {
        binaries
            .iter()
            .find(|b| !std::path::Path::new(b).exists())
            .map(|b| format!("needs {b} (apt-get install -y frr bird2 gobgpd)"))
    };
    if let Some(w) = &why
        && std::env::var_os("CI").is_some()
    {
        panic!("this test {w}, and CI must run it");
    }
    why
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// The path of one of the workspace's binaries (`berth-bgp-server`, ...), built by the same
/// `cargo test`/`cargo nextest run --workspace` that runs the calling test.
// Test support: a missing binary fails the calling test with the command that builds it.
#[allow(clippy::panic)]
pub fn binary(name: &str) -> String {
    // Test executables live in target/<profile>/deps; binaries one level up.
    let profile_dir = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.parent().map(std::path::Path::to_path_buf));
    match profile_dir.map(|d| d.join(name)) {
        Some(path) if path.exists() => path.display().to_string(),
        other => panic!(
            "{name} is not built ({other:?}): run `cargo build --workspace` or test with --workspace"
        ),
    }
}

/// A fresh, empty directory `berth-{name}-{pid}` in the temporary directory for one test
/// (or bench) process. The directories of earlier runs of `name` whose process is gone are
/// removed first: a failed run's logs stay for a look until the next run, and runs do not
/// pile up.
pub fn test_dir(name: &str) -> std::io::Result<std::path::PathBuf> {
    let tmp = std::env::temp_dir();
    let prefix = format!("berth-{name}-");
    if let Ok(entries) = std::fs::read_dir(&tmp) {
        for e in entries.flatten() {
            let file = e.file_name();
            let Some(pid) = file.to_str().and_then(|f| f.strip_prefix(&prefix)) else {
                continue;
            };
            // Only `{prefix}{digits}`: `berth-bgp-frr-md5-1` must not match name `bgp-frr`.
            if !pid.is_empty()
                && pid.bytes().all(|b| b.is_ascii_digit())
                && !std::path::Path::new("/proc").join(pid).exists()
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let dir = tmp.join(format!("{prefix}{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

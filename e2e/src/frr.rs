//! FRR (zebra + bgpd) inside a namespace, with its own sockets so several can run at once.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::netns::{Lab, run};

/// zebra's path in Debian's package.
pub const ZEBRA: &str = "/usr/lib/frr/zebra";
/// bgpd's path in Debian's package.
pub const BGPD: &str = "/usr/lib/frr/bgpd";

/// A running FRR.
pub struct Frr {
    ns: String,
    run_dir: PathBuf,
}

impl Frr {
    /// Starts zebra and bgpd in `ns` with `bgpd_conf`; `dir` holds configs, sockets and logs.
    pub fn start(lab: &mut Lab, ns: &str, dir: &Path, bgpd_conf: &str) -> Result<Frr, String> {
        let run_dir = dir.join("frr");
        std::fs::create_dir_all(&run_dir).map_err(|e| e.to_string())?;
        std::fs::write(run_dir.join("zebra.conf"), "hostname r\n").map_err(|e| e.to_string())?;
        std::fs::write(run_dir.join("bgpd.conf"), bgpd_conf).map_err(|e| e.to_string())?;
        let d = run_dir.display().to_string();
        run("chown", &["-R", "frr:frr", &d])?;
        let common = |daemon: &str| {
            vec![
                "-d".to_owned(),
                "-u".into(),
                "frr".into(),
                "-g".into(),
                "frr".into(),
                "-P".into(),
                "0".into(),
                "-f".into(),
                format!("{d}/{daemon}.conf"),
                "-i".into(),
                format!("{d}/{daemon}.pid"),
                "-z".into(),
                format!("{d}/zserv.api"),
                "--vty_socket".into(),
                d.clone(),
                "--log".into(),
                format!("file:{d}/{daemon}.log"),
            ]
        };
        for (daemon, bin) in [("zebra", ZEBRA), ("bgpd", BGPD)] {
            let args = common(daemon);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            lab.exec(ns, bin, &args)?;
            let pid_file = run_dir.join(format!("{daemon}.pid"));
            let pid = wait_for(Duration::from_secs(10), || {
                std::fs::read_to_string(&pid_file)
                    .ok()
                    .and_then(|p| p.trim().parse::<u32>().ok())
            })
            .ok_or_else(|| format!("{daemon} did not start: see {}/{daemon}.log", d))?;
            lab.adopt(pid);
        }
        Ok(Frr {
            ns: ns.to_owned(),
            run_dir,
        })
    }

    /// Runs a vtysh command.
    pub fn vtysh(&self, lab: &Lab, command: &str) -> Result<String, String> {
        lab.exec(
            &self.ns,
            "vtysh",
            &[
                "--vty_socket",
                &self.run_dir.display().to_string(),
                "-c",
                command,
            ],
        )
    }

    /// The kernel's route for `prefix` in FRR's namespace (`ip route show`), trimmed.
    pub fn kernel_route(&self, lab: &Lab, prefix: &str) -> Result<String, String> {
        let family = if prefix.contains(':') { "-6" } else { "-4" };
        lab.exec(&self.ns, "ip", &[family, "route", "show", prefix])
            .map(|s| s.trim().to_owned())
    }
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

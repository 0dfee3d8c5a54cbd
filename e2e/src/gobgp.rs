//! GoBGP inside a namespace (its gRPC API on the namespace's own loopback).

use std::path::Path;

use crate::netns::Lab;

/// gobgpd's path in Debian's package.
pub const GOBGPD: &str = "/usr/bin/gobgpd";

/// A running gobgpd.
pub struct GoBgp {
    ns: String,
    pid: u32,
}

impl GoBgp {
    /// Starts gobgpd in `ns` with a TOML configuration.
    pub fn start(lab: &mut Lab, ns: &str, dir: &Path, toml: &str) -> Result<GoBgp, String> {
        let conf = dir.join("gobgpd.toml");
        std::fs::write(&conf, toml).map_err(|e| e.to_string())?;
        let c = conf.display().to_string();
        let pid = lab.spawn(
            ns,
            GOBGPD,
            &[
                "-f",
                &c,
                "-t",
                "toml",
                "-p",
                "--pprof-disable",
                "--api-hosts",
                "127.0.0.1:50051",
            ],
            &dir.join("gobgpd.log"),
        )?;
        Ok(GoBgp {
            ns: ns.to_owned(),
            pid,
        })
    }

    /// gobgpd's process ID.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Runs a `gobgp` client command against it.
    pub fn gobgp(&self, lab: &Lab, args: &[&str]) -> Result<String, String> {
        lab.exec(&self.ns, "gobgp", args)
    }
}

//! BIRD 2 inside a namespace, with its own control socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::frr::wait_for;
use crate::netns::Lab;

/// BIRD's path in Debian's package.
pub const BIRD: &str = "/usr/sbin/bird";

/// A running BIRD.
pub struct Bird {
    ns: String,
    ctl: PathBuf,
    pid: u32,
}

impl Bird {
    /// Starts BIRD in `ns` with `conf`; `dir` holds the config, socket and pid file.
    pub fn start(lab: &mut Lab, ns: &str, dir: &Path, conf: &str) -> Result<Bird, String> {
        let run_dir = dir.join("bird");
        std::fs::create_dir_all(&run_dir).map_err(|e| e.to_string())?;
        let conf_path = run_dir.join("bird.conf");
        std::fs::write(&conf_path, conf).map_err(|e| e.to_string())?;
        let ctl = run_dir.join("bird.ctl");
        let pid_file = run_dir.join("bird.pid");
        let (c, s, p) = (
            conf_path.display().to_string(),
            ctl.display().to_string(),
            pid_file.display().to_string(),
        );
        lab.exec(ns, BIRD, &["-c", &c, "-s", &s, "-P", &p])?;
        let pid = wait_for(Duration::from_secs(10), || {
            std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|p| p.trim().parse::<u32>().ok())
        })
        .ok_or("bird did not start")?;
        lab.adopt(pid);
        Ok(Bird {
            ns: ns.to_owned(),
            ctl,
            pid,
        })
    }

    /// The daemon's process ID (for its memory figures).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Runs a birdc command.
    pub fn birdc(&self, lab: &Lab, command: &str) -> Result<String, String> {
        let ctl = self.ctl.display().to_string();
        let mut args = vec!["-s", ctl.as_str()];
        args.extend(command.split_whitespace());
        lab.exec(&self.ns, "birdc", &args)
    }
}

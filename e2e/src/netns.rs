//! Network namespaces and veth links, removed on drop.

use std::process::{Child, Command, Stdio};

/// Runs a command and fails with its output if it fails.
pub fn run(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A set of namespaces and the processes started in them; all removed on drop.
pub struct Lab {
    prefix: String,
    namespaces: Vec<String>,
    children: Vec<Child>,
    pids: Vec<u32>,
}

impl Lab {
    /// A lab whose namespace names start with `prefix` plus this process's PID, so parallel
    /// tests never collide.
    pub fn new(prefix: &str) -> Lab {
        Lab {
            prefix: format!("{prefix}{}", std::process::id()),
            namespaces: Vec::new(),
            children: Vec::new(),
            pids: Vec::new(),
        }
    }

    /// A lab with fixed namespace names (`prefix-name`), for the `lab` binary: a later
    /// `lab down` finds them by name.
    pub fn fixed(prefix: &str) -> Lab {
        Lab {
            prefix: prefix.to_owned(),
            namespaces: Vec::new(),
            children: Vec::new(),
            pids: Vec::new(),
        }
    }

    /// Keeps everything running past this guard (the lab was brought up and stays up);
    /// returns the PIDs of the processes it started.
    pub fn keep(mut self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.children.iter().map(Child::id).collect();
        pids.append(&mut self.pids);
        self.children.clear();
        self.namespaces.clear();
        pids
    }

    /// Creates a namespace with loopback up; returns its full name.
    pub fn namespace(&mut self, name: &str) -> Result<String, String> {
        let ns = format!("{}-{name}", self.prefix);
        let _ = run("ip", &["netns", "del", &ns]);
        run("ip", &["netns", "add", &ns])?;
        self.namespaces.push(ns.clone());
        run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Links two namespaces with a veth pair and addresses (CIDR notation) on each end.
    pub fn link(
        &self,
        a: &str,
        a_if: &str,
        a_addrs: &[&str],
        b: &str,
        b_if: &str,
        b_addrs: &[&str],
    ) -> Result<(), String> {
        run(
            "ip",
            &[
                "link", "add", a_if, "netns", a, "type", "veth", "peer", "name", b_if, "netns", b,
            ],
        )?;
        for (ns, ifname, addrs) in [(a, a_if, a_addrs), (b, b_if, b_addrs)] {
            for addr in addrs {
                let family = if addr.contains(':') { "-6" } else { "-4" };
                run(
                    "ip",
                    &[
                        "-n", ns, family, "addr", "add", addr, "dev", ifname, "nodad",
                    ],
                )
                .or_else(|_| run("ip", &["-n", ns, "addr", "add", addr, "dev", ifname]))?;
            }
            run("ip", &["-n", ns, "link", "set", ifname, "up"])?;
        }
        Ok(())
    }

    /// Creates a bridge in `ns` with addresses (CIDR notation), up.
    pub fn bridge(&self, ns: &str, name: &str, addrs: &[&str]) -> Result<(), String> {
        run("ip", &["-n", ns, "link", "add", name, "type", "bridge"])?;
        for addr in addrs {
            run("ip", &["-n", ns, "addr", "add", addr, "dev", name, "nodad"])
                .or_else(|_| run("ip", &["-n", ns, "addr", "add", addr, "dev", name]))?;
        }
        run("ip", &["-n", ns, "link", "set", name, "up"])?;
        Ok(())
    }

    /// Plugs `other` into the bridge `bridge` of `ns` with a veth pair; `other`'s end is
    /// `ifname` with `addrs`.
    pub fn plug(
        &self,
        ns: &str,
        bridge: &str,
        port: &str,
        other: &str,
        ifname: &str,
        addrs: &[&str],
    ) -> Result<(), String> {
        self.link(ns, port, &[], other, ifname, addrs)?;
        run("ip", &["-n", ns, "link", "set", port, "master", bridge])?;
        Ok(())
    }

    /// Starts a process inside a namespace; it is killed on drop.
    pub fn spawn(
        &mut self,
        ns: &str,
        program: &str,
        args: &[&str],
        log: &std::path::Path,
    ) -> Result<u32, String> {
        self.spawn_env(ns, program, args, &[], log)
    }

    /// Starts a process in this (the host's) namespace; it is killed on drop.
    pub fn spawn_here(
        &mut self,
        program: &str,
        args: &[&str],
        log: &std::path::Path,
    ) -> Result<u32, String> {
        let mut cmd = Command::new(program);
        cmd.args(args);
        self.start(cmd, program, log)
    }

    /// Starts a process inside a namespace with extra environment variables.
    pub fn spawn_env(
        &mut self,
        ns: &str,
        program: &str,
        args: &[&str],
        env: &[(&str, &str)],
        log: &std::path::Path,
    ) -> Result<u32, String> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, program])
            .args(args)
            .envs(env.iter().copied());
        self.start(cmd, program, log)
    }

    fn start(
        &mut self,
        mut cmd: Command,
        program: &str,
        log: &std::path::Path,
    ) -> Result<u32, String> {
        let file = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = file.try_clone().map_err(|e| e.to_string())?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("{program}: {e}"))?;
        let pid = child.id();
        self.children.push(child);
        Ok(pid)
    }

    /// Records a daemon's PID (from its pid file) so it is killed on drop.
    pub fn adopt(&mut self, pid: u32) {
        self.pids.push(pid);
    }

    /// Sends SIGTERM to a child started with [`Lab::spawn`] and waits for it.
    pub fn terminate(&mut self, pid: u32) {
        self.signal(pid, "-TERM");
    }

    /// Sends SIGKILL to a child started with [`Lab::spawn`] (a crash) and waits for it.
    pub fn kill(&mut self, pid: u32) {
        self.signal(pid, "-KILL");
    }

    fn signal(&mut self, pid: u32, sig: &str) {
        let _ = run("kill", &[sig, &pid.to_string()]);
        if let Some(c) = self.children.iter_mut().find(|c| c.id() == pid) {
            let _ = c.wait();
        }
    }

    /// Runs a command inside a namespace.
    pub fn exec(&self, ns: &str, program: &str, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["netns", "exec", ns, program];
        all.extend_from_slice(args);
        run("ip", &all)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for pid in &self.pids {
            let _ = run("kill", &["-KILL", &pid.to_string()]);
        }
        for ns in &self.namespaces {
            let _ = run("ip", &["netns", "del", ns]);
        }
    }
}

//! `arp_ignore` on the announcing interfaces: with 0 (Linux's default), the kernel answers ARP
//! for every IP it routes locally, on every interface, so each node holding a local route for
//! a Layer2 IP would answer for it; 1 makes it answer only for addresses configured on the
//! interface asked, leaving Layer2 IPs to the announcer. The agent sets it where it is 0,
//! remembers what it found and puts it back on a clean exit, so a node without Berth is left
//! as it was. What it found is also written to a state directory (`/run/berth-agent` by
//! default: tmpfs, emptied at boot like the sysctls themselves), so an agent restarted after a
//! crash still knows the value to restore rather than taking its own 1 for the original.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The `arp_ignore` values this agent changed, by interface, with the value found.
#[derive(Debug)]
pub struct ArpIgnore {
    /// `/proc/sys/net/ipv4/conf` (a directory of one entry per interface), or a test's.
    conf: PathBuf,
    /// Where the values found are kept across a crash (`None`: in memory only).
    state: Option<PathBuf>,
    changed: BTreeMap<String, String>,
}

impl ArpIgnore {
    /// Works on this network namespace's `/proc/sys/net/ipv4/conf`, keeping the values found
    /// in `state` (one file per interface).
    pub fn system(state: Option<PathBuf>) -> ArpIgnore {
        ArpIgnore::new("/proc/sys/net/ipv4/conf", state)
    }

    /// Works on `conf/<interface>/arp_ignore`.
    pub fn new(conf: impl Into<PathBuf>, state: Option<PathBuf>) -> ArpIgnore {
        ArpIgnore {
            conf: conf.into(),
            state,
            changed: BTreeMap::new(),
        }
    }

    fn path(&self, interface: &str) -> PathBuf {
        self.conf.join(interface).join("arp_ignore")
    }

    fn saved(&self, interface: &str) -> Option<PathBuf> {
        Some(self.state.as_ref()?.join(format!("arp_ignore.{interface}")))
    }

    /// Keeps `value` as the one found on `interface`, for a restart after a crash.
    fn save(&self, interface: &str, value: &str) {
        let Some(path) = self.saved(interface) else {
            return;
        };
        let written = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&path, value));
        if let Err(e) = written {
            tracing::warn!(interface, path = %path.display(), error = %e,
                "cannot keep the original arp_ignore: after a crash it will not be restored (set --state-dir to a writable directory)");
        }
    }

    /// Sets `arp_ignore` to 1 on `interface` if it is 0 (other values, 1 and stricter, already
    /// keep the kernel quiet and are left alone). The first value found is remembered.
    pub fn ensure(&mut self, interface: &str) {
        let path = self.path(interface);
        let known = self.changed.contains_key(interface);
        // A previous run (killed before it could restore) set it: its record is the original.
        if !known
            && let Some(old) = self
                .saved(interface)
                .and_then(|p| std::fs::read_to_string(p).ok())
            && is_ours(&path)
        {
            tracing::info!(
                interface,
                original = old.trim(),
                "arp_ignore was set by a previous run of the agent: restored on exit"
            );
            self.changed
                .insert(interface.to_owned(), old.trim().to_owned());
            return;
        }
        match std::fs::read_to_string(&path) {
            Ok(v) if v.trim() == "0" => match std::fs::write(&path, "1") {
                Ok(()) => {
                    // Set again on a recreated interface: the first value found stays.
                    if !known {
                        self.save(interface, v.trim());
                    }
                    self.changed
                        .entry(interface.to_owned())
                        .or_insert_with(|| v.trim().to_owned());
                    tracing::info!(
                        interface,
                        "set arp_ignore=1 so only the owner answers ARP for Layer2 IPs (restored on exit)"
                    );
                }
                Err(e) => tracing::warn!(interface, error = %e,
                    "could not set arp_ignore=1: this node's kernel may answer ARP for Layer2 IPs it routes locally"),
            },
            Ok(_) => {}
            Err(e) => tracing::debug!(interface, error = %e, "arp_ignore not readable"),
        }
    }

    /// Puts back every value changed (on a clean exit). An interface gone since is skipped;
    /// a value changed by someone else since (no longer 1) is left as they set it.
    pub fn restore(&mut self) {
        for (interface, old) in std::mem::take(&mut self.changed) {
            let path = self.path(&interface);
            if let Some(saved) = self.saved(&interface) {
                let _ = std::fs::remove_file(saved);
            }
            if !is_ours(&path) {
                continue;
            }
            match std::fs::write(&path, &old) {
                Ok(()) => tracing::info!(interface, value = %old, "arp_ignore restored"),
                Err(e) => tracing::warn!(interface, error = %e, "arp_ignore not restored"),
            }
        }
    }

    /// The interfaces whose value this agent changed.
    pub fn changed(&self) -> impl Iterator<Item = &str> {
        self.changed.keys().map(String::as_str)
    }
}

/// Whether `path` still holds the value the agent wrote.
fn is_ours(path: &Path) -> bool {
    std::fs::read_to_string(path).is_ok_and(|v| v.trim() == "1")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn conf(values: &[(&str, &str)]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "berth-arp-ignore-{}-{}",
            std::process::id(),
            values.len()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        for (interface, v) in values {
            std::fs::create_dir_all(dir.join(interface)).unwrap();
            std::fs::write(dir.join(interface).join("arp_ignore"), v).unwrap();
        }
        dir
    }

    fn read(dir: &Path, interface: &str) -> String {
        std::fs::read_to_string(dir.join(interface).join("arp_ignore"))
            .unwrap()
            .trim()
            .to_owned()
    }

    #[test]
    fn sets_only_zero_and_restores_what_it_changed() {
        let dir = conf(&[("eth0", "0\n"), ("eth1", "2\n"), ("eth2", "0\n")]);
        let mut a = ArpIgnore::new(&dir, None);
        a.ensure("eth0");
        a.ensure("eth0");
        // The interface recreated (back to 0): set again.
        std::fs::write(dir.join("eth0").join("arp_ignore"), "0").unwrap();
        a.ensure("eth0");
        assert_eq!(read(&dir, "eth0"), "1");
        a.ensure("eth1");
        a.ensure("missing0");
        a.ensure("eth2");
        assert_eq!(read(&dir, "eth0"), "1");
        assert_eq!(read(&dir, "eth1"), "2", "a stricter value is left alone");
        assert_eq!(a.changed().collect::<Vec<_>>(), ["eth0", "eth2"]);
        // Someone else changed eth2 since: theirs stays.
        std::fs::write(dir.join("eth2").join("arp_ignore"), "8").unwrap();
        a.restore();
        assert_eq!(read(&dir, "eth0"), "0");
        assert_eq!(read(&dir, "eth1"), "2");
        assert_eq!(read(&dir, "eth2"), "8");
        assert_eq!(a.changed().count(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_restart_after_a_crash_restores_the_value_the_first_run_found() {
        let dir = conf(&[("eth0", "0\n")]);
        let state = dir.join("state");
        let mut first = ArpIgnore::new(&dir, Some(state.clone()));
        first.ensure("eth0");
        assert_eq!(read(&dir, "eth0"), "1");
        drop(first); // killed: nothing restored
        let mut second = ArpIgnore::new(&dir, Some(state.clone()));
        second.ensure("eth0");
        assert_eq!(second.changed().collect::<Vec<_>>(), ["eth0"]);
        second.restore();
        assert_eq!(read(&dir, "eth0"), "0");
        assert!(
            !state.join("arp_ignore.eth0").exists(),
            "the record outlived the restore"
        );
        // Without the record (memory only), the restarted run takes 1 as the original.
        std::fs::write(dir.join("eth0").join("arp_ignore"), "1").unwrap();
        let mut third = ArpIgnore::new(&dir, Some(state));
        third.ensure("eth0");
        assert_eq!(third.changed().count(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

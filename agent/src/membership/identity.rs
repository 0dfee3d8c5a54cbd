//! Who a member is: node name, gossip address and a boot number that makes a restart win.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// One agent's identity in the SWIM cluster.
///
/// foca keys members by [`foca::Identity::addr`] (the gossip address): a restarted agent on the
/// same address comes back with a larger `boot` (its generation, see [`Generation`], in the
/// high 32 bits) and replaces its old, dead identity at once. When the cluster declares a live agent down (a false suspicion, a
/// cut link), foca calls [`foca::Identity::renew`], which bumps `boot`, and the agent rejoins
/// without a restart.
///
/// `unable` lists the Layer2 interface specs this agent cannot answer on now (link down or
/// missing, or within its hold-down): the others leave it out of the candidates of the IPs
/// announced there. It changes through foca's `change_identity` with a bumped `boot`, which
/// the others apply as a rename of the same member (it never looks down to them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeId {
    /// The Kubernetes node name (what the Layer2 election hashes).
    pub name: String,
    /// Where other agents send this agent's datagrams.
    pub addr: SocketAddr,
    /// [`Generation::boot`] at start, bumped by one on each rejoin and each change of `unable`.
    pub boot: u64,
    /// Interface specs this agent cannot answer ARP/NDP on now.
    pub unable: BTreeSet<String>,
}

impl NodeId {
    /// A placeholder for an agent known only by address (a seed): announcements to it are
    /// accepted by whoever listens there, whatever its name.
    pub fn seed(addr: SocketAddr) -> Self {
        Self {
            name: String::new(),
            addr,
            boot: 0,
            unable: BTreeSet::new(),
        }
    }
}

/// This agent's start count on this node, kept in a file: every start takes the next one, so
/// a restarted agent's identity outranks every identity of its previous runs, renewals
/// included, whatever the clocks say. (The wall clock decided before: an agent restarted
/// with its clock behind lost to its own dead identity, which the others keep for an hour, and
/// stayed unseen.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Generation(pub u32);

/// Why the generation file could not be kept.
#[derive(Debug, thiserror::Error)]
#[error("cannot keep the membership generation in {path}: {why}")]
pub struct GenerationError {
    /// The file.
    pub path: String,
    /// Why.
    pub why: String,
}

impl Generation {
    /// The generation after `previous`; without one (no file yet: the first start, or a
    /// reboot emptied `/run`) `fresh`, the wall clock in seconds: the identities of the
    /// previous boot (which the others remember for an hour) started from the clock of that
    /// boot and counted up by one per restart, so the new one outranks them unless the clock
    /// went back by more than the time between the two boots. Wraps to 1 after `u32::MAX`
    /// (seconds since 1970 fit until 2106).
    pub fn next(previous: Option<Generation>, fresh: u32) -> Generation {
        match previous {
            Some(Generation(g)) => Generation(g.checked_add(1).unwrap_or(1)),
            None => Generation(fresh.max(1)),
        }
    }

    /// [`Generation::next`]'s `fresh`: the wall clock in whole seconds (`random` if the clock
    /// reads before 1970 or past 2106).
    pub fn fresh(random: u32) -> u32 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .and_then(|d| u32::try_from(d.as_secs()).ok())
            .unwrap_or(random)
    }

    /// The identity's boot number: the generation in the high half, renewals count up in
    /// the low half (2^32 renewals before two generations could meet).
    pub fn boot(self) -> u64 {
        u64::from(self.0) << 32
    }

    /// Reads the previous generation from `path`, takes the next one and writes it back.
    /// A missing or unreadable file counts as none (`fresh` is used, see [`Generation::next`]).
    pub fn advance(path: &std::path::Path, fresh: u32) -> Result<Generation, GenerationError> {
        let previous = std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .map(Generation);
        let next = Generation::next(previous, fresh);
        let err = |e: std::io::Error| GenerationError {
            path: path.display().to_string(),
            why: e.to_string(),
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        // Written aside, then renamed: a crash mid-write never leaves a torn number.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, next.0.to_string()).map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)?;
        Ok(next)
    }
}

/// The start generation in a boot number (its high 32 bits, see [`Generation::boot`]):
/// renewals leave it, a restart changes it. An agent without a generation file (boot from
/// [`uptime_boot`]) keeps the same one for 49 days of uptime, so its restarts are seen only
/// when the others noticed its death first.
pub fn start_generation(boot: u64) -> u32 {
    u32::try_from(boot >> 32).unwrap_or(u32::MAX)
}

/// The boot number without a generation file: milliseconds since the host booted, from
/// `/proc/uptime` (not the wall clock: NTP steps do not move it), so every restart within one
/// host boot outranks the previous ones; below any file-based [`Generation::boot`] for the
/// first 49 days of uptime. Unreadable: `random`, which a restart has an even chance to lose
/// with.
pub fn uptime_boot(random: u32) -> u64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| parse_uptime_ms(&s))
        .unwrap_or(u64::from(random))
}

/// Milliseconds from `/proc/uptime`'s first field (`12345.67 ...`).
fn parse_uptime_ms(text: &str) -> Option<u64> {
    let secs: f64 = text.split_whitespace().next()?.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then_some((secs * 1000.0) as u64)
}

impl foca::Identity for NodeId {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(Self {
            name: self.name.clone(),
            addr: self.addr,
            boot: self.boot.wrapping_add(1),
            unable: self.unable.clone(),
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.boot > adversary.boot
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use foca::Identity;

    #[test]
    fn a_renewed_or_restarted_identity_wins_over_the_old_one() {
        let old = NodeId {
            name: "n1".into(),
            addr: "127.0.0.1:7946".parse().unwrap(),
            boot: 1000,
            unable: BTreeSet::from(["eth0".to_owned()]),
        };
        let renewed = old.renew().unwrap();
        assert_eq!(renewed.addr(), old.addr());
        assert_eq!(renewed.name, old.name);
        assert_eq!(
            renewed.unable, old.unable,
            "a renewal keeps what it cannot serve"
        );
        assert!(renewed.win_addr_conflict(&old));
        assert!(!old.win_addr_conflict(&renewed));
    }

    #[test]
    fn a_restart_outranks_every_earlier_identity_whatever_the_clock() {
        let dir = std::env::temp_dir().join(format!("berth-generation-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let file = dir.join("generation");
        let addr: SocketAddr = "10.0.0.11:7946".parse().unwrap();
        let first = Generation::advance(&file, 12345).unwrap();
        let mut old = NodeId {
            name: "n1".into(),
            addr,
            boot: first.boot(),
            unable: BTreeSet::new(),
        };
        // The first run renewed itself many times (false downs, link changes) before dying.
        for _ in 0..1000 {
            old = old.renew().unwrap();
        }
        // Restarted: no clock is read; the next generation wins over the dead identity even
        // if this node's clock now says an earlier time than at the first start.
        let second = Generation::advance(&file, 0).unwrap();
        assert_eq!(second, Generation(first.0 + 1));
        let new = NodeId {
            boot: second.boot(),
            ..old.clone()
        };
        assert!(new.win_addr_conflict(&old));
        assert!(!old.win_addr_conflict(&new));
        // The failback hold-down tells the restart from the renewals by the start generation.
        assert_eq!(start_generation(old.boot), first.0);
        assert_eq!(start_generation(new.boot), second.0);
        // Without a file (first start, a reboot emptied /run): the clock in seconds, never 0,
        // which outranks the previous boot's generations (its clock, plus one per restart).
        assert_eq!(Generation::next(None, 0), Generation(1));
        let before_reboot = Generation::next(Some(Generation(1_800_000_000 + 40)), 0);
        let after_reboot = Generation::next(None, 1_800_000_000 + 300);
        assert!(after_reboot.boot() > before_reboot.boot());
        assert!(
            Generation::fresh(7) > 1_700_000_000,
            "the clock, not the fallback"
        );
        assert_eq!(
            Generation::next(Some(Generation(u32::MAX)), 7),
            Generation(1)
        );
        // A torn or foreign file counts as none.
        std::fs::write(&file, "garbage").unwrap();
        assert_eq!(Generation::advance(&file, 8).unwrap(), Generation(8));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn without_a_file_the_boot_number_counts_from_the_uptime() {
        assert_eq!(parse_uptime_ms("12345.67 99.00\n"), Some(12_345_670));
        assert_eq!(parse_uptime_ms("garbage"), None);
        assert_eq!(parse_uptime_ms("-1 2"), None);
        let first = uptime_boot(0);
        std::thread::sleep(std::time::Duration::from_millis(30));
        assert!(
            uptime_boot(0) > first,
            "a later start must outrank an earlier one"
        );
        assert!(
            first < Generation(1).boot(),
            "below every file-based generation"
        );
    }
}

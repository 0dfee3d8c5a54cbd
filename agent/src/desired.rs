//! The agent's input: which IPs this node accepts traffic for, and which Layer2 IPs it may
//! answer ARP/NDP for.
//!
//! Sources produce a [`Desired`] and publish it on a `tokio::sync::watch` channel; the main
//! loop only consumes that channel. This module holds the static-file source (standalone and
//! tests); the Kubernetes source builds the same value from Services.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;

use serde::Deserialize;

/// Everything the agent should do on this node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    /// IPs this node accepts traffic for (local routes), whatever the Layer2 ownership.
    pub local_ips: BTreeSet<IpAddr>,
    /// Services with Layer2 IPs: one of their candidates answers for each IP.
    pub layer2: Vec<Layer2Service>,
}

/// The Layer2 IPs of one Service and who may answer for them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Layer2Service {
    /// `namespace/name`, for logs, metrics and Events.
    pub service: String,
    /// The IPs (one per family at most, from the operator).
    pub ips: Vec<IpAddr>,
    /// The interface to answer on: a name, or `can_reach:<ip>`.
    pub interface: String,
    /// Nodes allowed to answer; the live one with the highest rendezvous weight does.
    pub candidates: BTreeSet<String>,
}

/// The static file, as written (YAML or JSON).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct StaticFile {
    #[serde(default)]
    local_ips: BTreeSet<IpAddr>,
    #[serde(default)]
    layer2: Vec<Layer2Service>,
}

/// Documented format of the static file (shown by `--help`).
pub const STATIC_FORMAT: &str = "\
localIps: [198.51.100.10, 2001:db8::10]   # accepted on this node (local routes)
layer2:                                     # answered by ARP/NDP by one node each
  - service: default/web
    ips: [192.168.1.240, fd00::240]
    interface: eth0                         # or can_reach:192.168.1.1
    candidates: [node1, node2, node3]";

/// A static file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StaticError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not in the format.
    #[error("{path} is not a valid static file ({source}); expected:\n{STATIC_FORMAT}")]
    Parse {
        /// The file.
        path: String,
        /// Why.
        source: serde_yaml_ng::Error,
    },
    /// A Layer2 entry that cannot be served.
    #[error("{path}: layer2 service {service:?}: {why}")]
    Invalid {
        /// The file.
        path: String,
        /// The entry.
        service: String,
        /// What is wrong and what to do.
        why: String,
    },
}

/// Parses the static file's text; `path` only names it in errors.
pub fn parse(path: &str, text: &str) -> Result<Desired, StaticError> {
    let file: StaticFile = serde_yaml_ng::from_str(text).map_err(|source| StaticError::Parse {
        path: path.to_owned(),
        source,
    })?;
    for s in &file.layer2 {
        let invalid = |why: &str| StaticError::Invalid {
            path: path.to_owned(),
            service: s.service.clone(),
            why: why.to_owned(),
        };
        if s.interface.trim().is_empty() {
            return Err(invalid("interface is empty: give a name or can_reach:<ip>"));
        }
        if let Some(ip) = s.interface.strip_prefix("can_reach:")
            && ip.parse::<IpAddr>().is_err()
        {
            return Err(invalid(
                "can_reach: needs an IP address, e.g. can_reach:192.168.1.1",
            ));
        }
        if s.ips.is_empty() {
            return Err(invalid("ips is empty"));
        }
    }
    Ok(Desired {
        local_ips: file.local_ips,
        layer2: file.layer2,
    })
}

/// Reads and parses the static file.
pub fn load(path: &Path) -> Result<Desired, StaticError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| StaticError::Read {
        path: name.clone(),
        source,
    })?;
    parse(&name, &text)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_documented_example_parses() {
        let d = parse("x", STATIC_FORMAT).unwrap();
        assert_eq!(d.local_ips.len(), 2);
        assert_eq!(d.layer2.len(), 1);
        let s = &d.layer2[0];
        assert_eq!(s.service, "default/web");
        assert_eq!(
            s.ips,
            vec![
                "192.168.1.240".parse::<IpAddr>().unwrap(),
                "fd00::240".parse().unwrap()
            ]
        );
        assert_eq!(s.interface, "eth0");
        assert_eq!(s.candidates.len(), 3);
    }

    #[test]
    fn empty_file_means_nothing_to_do() {
        assert_eq!(parse("x", "{}").unwrap(), Desired::default());
    }

    #[test]
    fn errors_name_the_problem() {
        let e = parse("f.yaml", "localIps: [nope]").unwrap_err().to_string();
        assert!(e.contains("f.yaml") && e.contains("expected:"), "{e}");
        let e = parse(
            "f.yaml",
            "layer2: [{service: a/b, ips: [10.0.0.1], interface: eth0, candidate: [n1]}]",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("candidate"),
            "a typo is refused, not ignored: {e}"
        );
        let e = parse(
            "f.yaml",
            "layer2: [{service: a/b, ips: [10.0.0.1], interface: 'can_reach:x', candidates: [n1]}]",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("a/b") && e.contains("can_reach:192.168.1.1"),
            "{e}"
        );
        let e = parse(
            "f.yaml",
            "layer2: [{service: a/b, ips: [], interface: eth0, candidates: [n1]}]",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("ips is empty"), "{e}");
    }
}

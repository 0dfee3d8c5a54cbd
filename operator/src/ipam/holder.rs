//! Who holds an IP, and MetalLB's rules for when several Services may share one.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

use super::error::ShareError;

/// A Service, by namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ServiceKey {
    /// A key from its parts.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ServiceKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A transport protocol of a Service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

/// A Service port: number and protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Port {
    /// Port number.
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = match self.protocol {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        };
        write!(f, "{}/{p}", self.port)
    }
}

/// `spec.externalTrafficPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum TrafficPolicy {
    /// Any ready node may receive traffic.
    #[default]
    Cluster,
    /// Only nodes with a ready endpoint.
    Local,
}

impl fmt::Display for TrafficPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TrafficPolicy::Cluster => "Cluster",
            TrafficPolicy::Local => "Local",
        })
    }
}

/// What the engine knows of a Service holding an IP: enough to judge sharing.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Holder {
    /// The Service.
    pub service: ServiceKey,
    /// Its `berth.dev/allow-shared-ip` value, if any.
    pub sharing_key: Option<String>,
    /// Its ports.
    pub ports: BTreeSet<Port>,
    /// Its traffic policy.
    pub policy: TrafficPolicy,
    /// Its Pod selector, rendered canonically; Local-policy Services share only with the same.
    pub backend: String,
    /// Ordering among claims: the older (smaller) claim wins a conflict at rebuild. The
    /// operator uses the Service's creation timestamp (seconds since the epoch).
    pub created: i64,
    /// The Service's `metadata.uid` (empty: unknown). A Service deleted and created again
    /// under the same name has another: it is a new holder, not the old one.
    pub uid: String,
}

impl Holder {
    /// A holder with no ports, no sharing key, `Cluster` policy: adjust fields as needed.
    pub fn new(service: ServiceKey) -> Self {
        Holder {
            service,
            sharing_key: None,
            ports: BTreeSet::new(),
            policy: TrafficPolicy::Cluster,
            backend: String::new(),
            created: 0,
            uid: String::new(),
        }
    }

    /// Whether this holder came after `other` (later creation, then name): of two
    /// Services that collide on an IP, the newer one is told and the older one keeps it.
    pub fn is_newer_than(&self, other: &Holder) -> bool {
        (self.created, &self.service) > (other.created, &other.service)
    }

    /// Whether this holder may join `ip` beside `others`, by MetalLB's rules: the same
    /// non-empty key, no port+protocol in common, and the same policy (for `Local`, the same
    /// backends too).
    pub fn can_share(&self, ip: IpAddr, others: &[Holder]) -> Result<(), ShareError> {
        for other in others.iter().filter(|o| o.service != self.service) {
            let (Some(ours), Some(theirs)) = (self.key(), other.key()) else {
                return Err(ShareError::NotShared {
                    ip,
                    holder: other.service.clone(),
                });
            };
            if ours != theirs {
                return Err(ShareError::KeyMismatch {
                    ip,
                    holder: other.service.clone(),
                    theirs: theirs.to_owned(),
                    ours: ours.to_owned(),
                });
            }
            if let Some(port) = self.ports.intersection(&other.ports).next() {
                return Err(ShareError::PortInUse {
                    ip,
                    port: *port,
                    holder: other.service.clone(),
                });
            }
            if self.policy != other.policy {
                return Err(ShareError::PolicyMismatch {
                    ip,
                    holder: other.service.clone(),
                    theirs: other.policy,
                    ours: self.policy,
                });
            }
            if self.policy == TrafficPolicy::Local && self.backend != other.backend {
                return Err(ShareError::BackendMismatch {
                    ip,
                    holder: other.service.clone(),
                });
            }
        }
        Ok(())
    }

    /// The sharing key, with an empty annotation meaning none.
    pub fn key(&self) -> Option<&str> {
        self.sharing_key.as_deref().filter(|k| !k.is_empty())
    }
}

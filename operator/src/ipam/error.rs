//! Why the engine refused: each variant says what is wrong and what the user can do.

use std::net::IpAddr;

use thiserror::Error;

use super::addr::{Count, Family};
use super::holder::{Port, ServiceKey, TrafficPolicy};

/// A pool address or exclude that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid address {input:?}: {why}")]
pub struct ParseError {
    /// What the user wrote.
    pub input: String,
    /// What is wrong with it and the accepted forms.
    pub why: String,
}

/// Why an IP cannot be shared with the Services already holding it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ShareError {
    /// One side has no sharing key.
    #[error(
        "IP {ip} is held by {holder} without a matching sharing key: set annotation berth.dev/allow-shared-ip to the same value on both Services"
    )]
    NotShared {
        /// The contested IP.
        ip: IpAddr,
        /// A Service holding it.
        holder: ServiceKey,
    },
    /// Both have keys, but different ones.
    #[error(
        "IP {ip} is shared by {holder} under key {theirs:?}, not {ours:?}: use the same berth.dev/allow-shared-ip value"
    )]
    KeyMismatch {
        /// The contested IP.
        ip: IpAddr,
        /// A Service holding it.
        holder: ServiceKey,
        /// Its sharing key.
        theirs: String,
        /// The requester's sharing key.
        ours: String,
    },
    /// The same port and protocol would be served twice on one IP.
    #[error(
        "port {port} is already used on {ip} by {holder}: Services sharing an IP need distinct port/protocol pairs"
    )]
    PortInUse {
        /// The contested IP.
        ip: IpAddr,
        /// The colliding port.
        port: Port,
        /// The Service using it.
        holder: ServiceKey,
    },
    /// Traffic policies differ.
    #[error(
        "{holder} uses externalTrafficPolicy {theirs} and this Service {ours} on {ip}: Services sharing an IP must agree on the policy"
    )]
    PolicyMismatch {
        /// The contested IP.
        ip: IpAddr,
        /// A Service holding it.
        holder: ServiceKey,
        /// Its policy.
        theirs: TrafficPolicy,
        /// The requester's policy.
        ours: TrafficPolicy,
    },
    /// Both `Local`, but backed by different Pods, so next hops would differ.
    #[error(
        "{holder} and this Service select different Pods and use externalTrafficPolicy Local on {ip}: with Local they must have the same selector (or both use Cluster)"
    )]
    BackendMismatch {
        /// The contested IP.
        ip: IpAddr,
        /// A Service holding it.
        holder: ServiceKey,
    },
}

impl ShareError {
    /// The Service already holding the IP that this one may not share it with.
    pub fn holder(&self) -> &ServiceKey {
        match self {
            ShareError::NotShared { holder, .. }
            | ShareError::KeyMismatch { holder, .. }
            | ShareError::PortInUse { holder, .. }
            | ShareError::PolicyMismatch { holder, .. }
            | ShareError::BackendMismatch { holder, .. } => holder,
        }
    }
}

/// Why a Service got no IP.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AllocError {
    /// The pool annotation names no pool.
    #[error(
        "annotation berth.dev/pool names no pool: there is no Eip {0:?} (kubectl get eip lists them)"
    )]
    UnknownPool(String),
    /// The pool exists but gives nothing new.
    #[error(
        "pool {0} is disabled (spec.disable: true): it gives out no new IPs; choose another pool or enable it"
    )]
    PoolDisabled(String),
    /// The pool overlaps another, so it cannot be trusted until fixed.
    #[error(
        "pool {pool} overlaps pool {other}: fix the Eips' addresses before allocating from either"
    )]
    PoolOverlaps {
        /// The pool asked for.
        pool: String,
        /// The pool it overlaps.
        other: String,
    },
    /// The pool holds addresses of the other family.
    #[error("pool {pool} holds {has} addresses, this Service needs {wants}")]
    FamilyMismatch {
        /// The pool.
        pool: String,
        /// Its family.
        has: Family,
        /// The family asked for.
        wants: Family,
    },
    /// The pool's namespace or Service restrictions exclude this Service.
    #[error("pool {pool} does not serve this Service: {why}")]
    NotAllowed {
        /// The pool.
        pool: String,
        /// Which restriction failed.
        why: String,
    },
    /// The requested IP is in no pool.
    #[error("requested IP {0} is in no pool: add an Eip containing it, or request another IP")]
    RequestedNotInPool(IpAddr),
    /// The requested IP is in the pool but never handed out.
    #[error(
        "requested IP {ip} is not usable in pool {pool}: it is excluded or a network/broadcast address"
    )]
    RequestedNotUsable {
        /// The IP.
        ip: IpAddr,
        /// The pool containing it.
        pool: String,
    },
    /// The requested IP is outside the pool the annotation names.
    #[error(
        "requested IP {ip} is not in pool {pool}: drop one of berth.dev/pool and the requested IP, or make them agree"
    )]
    RequestedOutsidePool {
        /// The IP.
        ip: IpAddr,
        /// The pool named.
        pool: String,
    },
    /// Every candidate pool is full.
    #[error("{}", exhausted_message(.0))]
    Exhausted(Vec<(String, Count)>),
    /// No pool selects the Service and there is no default pool.
    #[error(
        "no pool for this Service: no Eip selects it and no Eip has spec.default: true; set annotation berth.dev/pool or mark a pool default"
    )]
    NoPool,
    /// The IP cannot be shared.
    #[error(transparent)]
    Share(#[from] ShareError),
    /// A Service already holding `ip` was edited (ports, sharing key, traffic policy) so
    /// that it may no longer share it with another holder. Nothing moves: both keep the IP,
    /// the edit is not taken in, and the newer of the two is told.
    #[error(
        "{error}; nothing moved: {newer} is the newer of the two and is not given another IP, the edit of ports, sharing key or traffic policy is not taken in until the two can share again (undo the edit, or move one Service with berth.dev/pool or another IP)"
    )]
    SharingEdit {
        /// Why they can no longer share (boxed: the error type stays small).
        error: Box<ShareError>,
        /// The newer of the two Services (where the Event goes).
        newer: ServiceKey,
    },
    /// The Service already holds another IP of this family; IPs never change silently.
    #[error("this Service already holds {held}; release it first to move to {requested}")]
    AlreadyAssigned {
        /// What it holds.
        held: IpAddr,
        /// What it asked for.
        requested: IpAddr,
    },
}

impl AllocError {
    /// Every value [`AllocError::reason`] gives, so a metric can show each one (also at 0).
    pub const REASONS: [&'static str; 13] = [
        "UnknownPool",
        "PoolDisabled",
        "PoolOverlaps",
        "FamilyMismatch",
        "NotAllowed",
        "RequestedNotInPool",
        "RequestedNotUsable",
        "RequestedOutsidePool",
        "Exhausted",
        "NoPool",
        "NotShareable",
        "SharingEdit",
        "AlreadyAssigned",
    ];

    /// A short, stable name of the failure (a metric label: bounded, unlike the message).
    pub fn reason(&self) -> &'static str {
        match self {
            AllocError::UnknownPool(_) => "UnknownPool",
            AllocError::PoolDisabled(_) => "PoolDisabled",
            AllocError::PoolOverlaps { .. } => "PoolOverlaps",
            AllocError::FamilyMismatch { .. } => "FamilyMismatch",
            AllocError::NotAllowed { .. } => "NotAllowed",
            AllocError::RequestedNotInPool(_) => "RequestedNotInPool",
            AllocError::RequestedNotUsable { .. } => "RequestedNotUsable",
            AllocError::RequestedOutsidePool { .. } => "RequestedOutsidePool",
            AllocError::Exhausted(_) => "Exhausted",
            AllocError::NoPool => "NoPool",
            AllocError::Share(_) => "NotShareable",
            AllocError::SharingEdit { .. } => "SharingEdit",
            AllocError::AlreadyAssigned { .. } => "AlreadyAssigned",
        }
    }
}

fn exhausted_message(pools: &[(String, Count)]) -> String {
    let parts: Vec<String> = pools
        .iter()
        .map(|(p, size)| format!("pool {p} exhausted: {size} of {size} in use"))
        .collect();
    format!(
        "{}; free an IP or add addresses to a pool",
        parts.join(", ")
    )
}

/// Why a pool edit was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PoolEditError {
    /// The address or an exclude does not parse.
    #[error("pool {pool}: {source}")]
    Invalid {
        /// The pool.
        pool: String,
        /// The parse error.
        source: ParseError,
    },
    /// An exclude is of the other family than the pool.
    #[error("pool {pool}: exclude {exclude} is not {family}, like the pool's address")]
    ExcludeFamily {
        /// The pool.
        pool: String,
        /// The exclude.
        exclude: String,
        /// The pool's family.
        family: Family,
    },
    /// The edit would leave Services holding IPs the pool no longer contains.
    #[error("{}", strand_message(.pool, .affected))]
    WouldStrand {
        /// The pool.
        pool: String,
        /// Services and the IPs they would lose.
        affected: Vec<(ServiceKey, IpAddr)>,
    },
}

fn strand_message(pool: &str, affected: &[(ServiceKey, IpAddr)]) -> String {
    let list: Vec<String> = affected
        .iter()
        .map(|(s, ip)| format!("{s} ({ip})"))
        .collect();
    format!(
        "pool {pool}: the edit would take away IPs in use by {}; they keep their IPs and no new IP is given from outside the edited range; move or delete those Services to finish the edit, or keep their IPs in the pool",
        list.join(", ")
    )
}

/// A claim from an existing Service status that the rebuild could not accept.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{service} claims {ip}, refused: {reason}")]
pub struct Conflict {
    /// The Service whose claim was refused (the later of the two).
    pub service: ServiceKey,
    /// The IP it claims.
    pub ip: IpAddr,
    /// Why.
    pub reason: ConflictReason,
}

/// Why a claim was refused at rebuild.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConflictReason {
    /// An older claim holds the IP and sharing is not allowed.
    #[error(transparent)]
    Share(ShareError),
    /// The Service already holds an older claim of the same family.
    #[error("it already holds {0} of the same family")]
    SecondOfFamily(IpAddr),
}

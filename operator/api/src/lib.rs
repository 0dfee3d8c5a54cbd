//! Berth's custom resources (`berth.dev/v1alpha1`) and the names users type.
//!
//! Everything a user writes in YAML is defined here, once: the [`Eip`] address pool, the
//! [`BgpConf`] singleton and the [`BgpPeer`] neighbours, plus the annotation, label, finalizer
//! and class names in [`names`]. The schemas reject at admission (OpenAPI and CEL rules) what
//! can be rejected without looking at other objects; what needs the whole cluster (overlapping
//! pools, a second default pool) is reported by the operator in status conditions.

pub mod bgpconf;
pub mod bgppeer;
pub mod crd;
pub mod eip;
pub mod layer2;
pub mod metallb;
pub mod names;
pub mod reference;

pub use bgpconf::{BgpConf, BgpConfSpec, BgpConfStatus, EcmpMode, GracefulRestart};
pub use bgppeer::{
    AddressFamily, BgpPeer, BgpPeerSpec, BgpPeerStatus, PeerSession, SecretKeyRef, SessionState,
};
pub use eip::{Eip, EipProtocol, EipSpec, EipStatus};
pub use layer2::Layer2Assignment;

/// The API group of every Berth resource.
pub const GROUP: &str = "berth.dev";
/// The API version of every Berth resource.
pub const VERSION: &str = "v1alpha1";

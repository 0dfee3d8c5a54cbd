//! Berth's operator: IP address management, next-hop rules, the Service controller's
//! decisions and the speakers' desired state, each pure and tested in memory; the
//! Kubernetes-facing controllers in [`controller`] only carry them out.

pub mod announce;
pub mod controller;
pub mod convert;
pub mod health;
pub mod index;
pub mod ipam;
pub mod metrics;
pub mod nexthops;
pub mod passwords;
pub mod plan;
pub mod pools;
pub mod routes;
pub mod service;
pub mod speakers;

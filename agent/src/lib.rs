//! Berth's node agent: local routes for Service IPs and Layer2 (ARP/NDP) announcement; the
//! building blocks, wired together by `main.rs`.

pub mod desired;
pub mod failback;
pub mod kube_source;
pub mod layer2;
pub mod membership;
pub mod metrics;
pub mod owner;
pub mod plan;
pub mod routes;

//! Berth's operator: IP address management, next-hop rules, and (to come) the controllers
//! that use them.

pub mod ipam;
pub mod nexthops;
pub mod service;
pub mod speakers;

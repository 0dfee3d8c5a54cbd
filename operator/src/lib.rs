//! Berth's operator: IP address management, and (to come) the controllers that use it.

pub mod ipam;

//! Berth's BGP-4 speaker.
//!
//! Pure logic lives in its own modules and is tested without sockets: [`fsm`] is the RFC 4271
//! session state machine (events in, actions out). The I/O tasks around it come later.

pub mod config;
pub mod control;
pub use berth_bgp_fsm as fsm;
pub mod metrics;
pub mod rib;
pub mod session;
pub mod speaker;

//! The gRPC contract (`berth.bgp.v1`) between Berth's operator and its bgp-server replicas.
//!
//! The `.proto` file (`proto/berth/bgp/v1/speaker.proto`) is the documentation; this crate is
//! its generated Rust: messages, the `Speaker` server trait and client.

/// `berth.bgp.v1`: the speaker's control API.
pub mod v1 {
    #![allow(
        missing_docs,
        clippy::all,
        clippy::pedantic,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic
    )]
    tonic::include_proto!("berth.bgp.v1");
}

/// Largest message a server or client accepts: a 100,000-route desired state is about 6 MB.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

//! The gRPC contract (`berth.bgp.v1`) between Berth's operator and its bgp-server replicas.
//!
//! Empty in this build: the contract is defined with the speaker's control API.

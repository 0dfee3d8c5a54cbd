//! The speaker's control API (`berth.bgp.v1`): conversion of the API's desired state into the
//! speaker's model, the applied state with its generation, and its persistence.

pub mod apply;
pub mod authority;
pub mod convert;
pub mod service;
pub mod store;
pub mod tls;

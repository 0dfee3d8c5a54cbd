//! IPAM benchmark (placeholder until the engine lands).
fn main() {}

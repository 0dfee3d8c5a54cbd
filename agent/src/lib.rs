//! `berth-agent` library: the node agent's building blocks.

pub mod membership;

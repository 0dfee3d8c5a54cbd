//! `berth-agent` library: the node agent's building blocks, wired together by `main.rs`.

pub mod routes;

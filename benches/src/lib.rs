//! Shared by the benches: board-scale access records.

pub mod board;

//! builder: runs Google Cloud Build configs on machines its users own.
//!
//! The folders are the layers (ARCHITECTURE.md): [`core`] is pure, [`adapters`] reach the outside
//! world, [`pipeline`] takes a build from recipe to record, [`edges`] face people and programs.
//! A module uses only its own layer and those below; `tests/tidy.rs` checks it.

pub mod adapters;
pub mod core;
pub mod edges;
pub mod pipeline;

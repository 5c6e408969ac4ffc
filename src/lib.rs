//! builder: runs Google Cloud Build configs on machines its users own.
//! See ARCHITECTURE.md for the module map and the invariants.

pub mod cli;
pub mod config;
pub mod diag;
pub mod image;
pub mod plan;
pub mod runtime;
pub mod substitute;

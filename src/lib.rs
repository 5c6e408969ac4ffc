//! builder: runs Google Cloud Build configs on machines its users own.
//! See ARCHITECTURE.md for the module map and the invariants.

pub mod alias;
pub mod api;
pub mod build;
pub mod cli;
pub mod client;
pub mod config;
pub mod diag;
pub mod execute;
pub mod glob;
pub mod image;
pub mod logs;
pub mod pipeline;
pub mod plan;
pub mod registry;
pub mod runtime;
pub mod schedule;
pub mod secrets;
pub mod service;
pub mod source;
pub mod store;
pub mod submit;
pub mod substitute;
pub mod templates;
pub mod triggers;
pub mod webhooks;

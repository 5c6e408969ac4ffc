//! The pure core: configs, substitution, planning, triggers, schedules, webhooks, the words
//! of a build's outcome, the API's JSON and Cloud Build's `Build` resource. Values in, values
//! out: no engine, no network, no process, and no file but the tables a module's row in
//! ARCHITECTURE.md names.

pub mod access;
pub mod alias;
pub mod build;
pub mod build_resource;
pub mod config;
pub mod diag;
pub mod dockerfile;
pub mod github;
pub mod glob;
pub mod image;
pub mod kfp;
pub mod logs;
pub mod notify;
pub mod plan;
pub mod retention;
pub mod schedule;
pub mod substitute;
pub mod templates;
pub mod triggers;
pub mod webhooks;
pub mod wire;

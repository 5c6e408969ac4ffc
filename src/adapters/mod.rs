//! The adapters: the outside world, each engine behind one module (containers, sources, registries,
//! the database, secret files). They speak the core's words and know nothing of the pipeline.

pub mod github;
pub mod notify;
pub mod registry;
pub mod runtime;
pub mod secrets;
pub mod source;
pub mod store;

//! The edges: what people and programs talk to (HTTP, the command line, the API's client). Thin:
//! arguments, status codes and printing around the pipeline's calls.

pub mod api;
pub mod cli;
pub mod client;

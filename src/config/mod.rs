//! Build configs: loading a `cloudbuild.yaml` or `.json` file into a [`BuildConfig`] with every
//! problem reported at its line and column.

pub mod decode;
pub mod duration;
pub mod model;
pub mod tree;
pub mod validate;

pub use model::BuildConfig;

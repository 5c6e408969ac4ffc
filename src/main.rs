//! The `builder` binary: see [`builder::cli`].

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    builder::cli::run(builder::cli::Cli::parse())
}

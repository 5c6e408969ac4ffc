//! The `builder` binary: see [`builder::edges::cli`].

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    builder::edges::cli::run(builder::edges::cli::Cli::parse())
}

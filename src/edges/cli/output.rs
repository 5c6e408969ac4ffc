//! The commands' results on standard output. A reader that stops reading (`builder builds list |
//! head`) closes the pipe, and a write then fails with `BrokenPipe`, which `println!` turns into a
//! panic. Writes here turn it into [`Closed`], which ends the command quietly with exit 0 (as
//! ripgrep does): nobody is left to tell.

use std::fmt;
use std::io::{self, Write as _};

/// Standard output was closed by its reader.
#[derive(Debug)]
pub struct Closed;

impl fmt::Display for Closed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("standard output was closed")
    }
}

impl std::error::Error for Closed {}

/// Writes and flushes, so that a closed reader is noticed at the write that follows it.
pub fn write(bytes: &[u8]) -> anyhow::Result<()> {
    let mut stdout = io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Err(Closed.into()),
        Err(e) => Err(anyhow::Error::new(e).context("writing to standard output")),
    }
}

pub fn write_fmt(args: fmt::Arguments) -> anyhow::Result<()> {
    write(fmt::format(args).as_bytes())
}

/// Whether a command failed only because its output was closed.
pub fn is_closed(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| cause.is::<Closed>())
}

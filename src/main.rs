//! The `builder` binary: see [`builder::edges::cli`].

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    one_malloc_arena();
    builder::edges::cli::run(builder::edges::cli::Cli::parse())
}

/// Keeps glibc's malloc to one arena. A build's log lines are made on one thread and freed on
/// another; with an arena per thread (glibc's default, up to 8 per core) what one arena freed
/// stays with it, and a server that followed a build printing 3 million lines peaked at 87 MB
/// against 59 MB with one arena, at the same speed (`bench/logs.sh`, issue 22). mimalloc was
/// tried too and peaked higher (135 MB).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn one_malloc_arena() {
    // SAFETY: called first in `main`, before any other thread exists to allocate; `mallopt`
    // only sets one of the allocator's tunables.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn one_malloc_arena() {}

//! The one error type of the source module.
//!
//! Each message is complete on its own (it names the path or archive entry and says what is wrong,
//! including the underlying I/O error), so `source()` is left empty: returning the I/O error as
//! well would print it twice in an `anyhow` chain.

use std::{
    error::Error,
    fmt, io,
    path::{Path, PathBuf},
};

/// Which of [`super::Limits`] an archive went past.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Bytes,
    Entries,
}

/// Why listing, packing or unpacking a source failed.
#[derive(Debug)]
pub enum SourceError {
    /// A filesystem operation on `path` failed.
    Io { path: PathBuf, source: io::Error },
    /// An ignore file (given, found, or `#!include`d) is missing or invalid.
    IgnoreFile { path: PathBuf, reason: String },
    /// A file name is not UTF-8, so it cannot be listed as a `String`.
    NonUtf8Name(PathBuf),
    /// A file to pack or an archive entry to unpack could reach outside its root, or has an
    /// unsupported type.
    UnsafeEntry { entry: String, reason: String },
    /// Reading or writing the archive stream failed (not gzip, truncated, corrupt, or the output
    /// failed).
    Archive {
        entry: Option<String>,
        source: io::Error,
    },
    /// The archive unpacks to more than [`super::Limits`] allows.
    LimitExceeded { limit: Limit, max: u64 },
    /// `unpack` needs an empty destination so that it can remove everything it wrote on failure.
    DestinationNotEmpty(PathBuf),
    /// Unpacking failed, and removing what it had written failed too.
    Cleanup {
        cause: Box<SourceError>,
        path: PathBuf,
        source: io::Error,
    },
}

impl SourceError {
    pub(super) fn io(path: &Path, source: io::Error) -> Self {
        SourceError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(super) fn unsafe_entry(entry: &str, reason: impl Into<String>) -> Self {
        SourceError::UnsafeEntry {
            entry: entry.to_owned(),
            reason: reason.into(),
        }
    }

    pub(super) fn archive(entry: Option<&str>, source: io::Error) -> Self {
        SourceError::Archive {
            entry: entry.map(str::to_owned),
            source,
        }
    }
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            SourceError::IgnoreFile { path, reason } => {
                write!(f, "ignore file {}: {reason}", path.display())
            }
            SourceError::NonUtf8Name(path) => {
                write!(f, "{}: file name is not valid UTF-8", path.display())
            }
            SourceError::UnsafeEntry { entry, reason } => {
                write!(f, "unsafe entry `{entry}`: {reason}")
            }
            SourceError::Archive {
                entry: Some(entry),
                source,
            } => write!(f, "archive entry `{entry}`: {source}"),
            SourceError::Archive {
                entry: None,
                source,
            } => write!(f, "archive: {source}"),
            SourceError::LimitExceeded { limit, max } => {
                let (what, setting) = match limit {
                    Limit::Bytes => ("bytes", "maxUploadBytes"),
                    Limit::Entries => ("entries", "maxUploadEntries"),
                };
                write!(
                    f,
                    "the archive unpacks to more than {max} {what}, the server's limit \
                     ({setting})"
                )
            }
            SourceError::DestinationNotEmpty(path) => {
                write!(
                    f,
                    "cannot unpack into {}: directory is not empty",
                    path.display()
                )
            }
            SourceError::Cleanup {
                cause,
                path,
                source,
            } => write!(
                f,
                "{cause}; removing what was unpacked under {} also failed: {source}",
                path.display()
            ),
        }
    }
}

impl Error for SourceError {}

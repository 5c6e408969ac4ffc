//! A `docker build`'s context scanned for its Dockerfile as it passes to the engine
//! ([`relay`](super::relay)), so that the endpoint ([`super`]) can make the Dockerfile's images
//! local before the engine builds.
//!
//! Nothing is held back but the context's last byte (and the framing after it), and that only
//! until the images are resolved: the engine's classic builder unpacks the whole context before
//! it reads the Dockerfile, and cannot finish unpacking without the archive's last byte. The
//! images are resolved as soon as the Dockerfile has passed (meanwhile the rest streams). Where
//! the Dockerfile is in the archive (the CLI puts one from the context's root early, one from
//! elsewhere last) changes nothing.

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::task::JoinHandle;
use tracing::debug;

use super::Denial;
use crate::core::dockerfile;

/// What resolves a found Dockerfile's images (its text in, done or why not out).
pub type Resolve = Box<dyn FnOnce(String) -> BoxFuture<'static, Result<(), Denial>> + Send>;

/// A context's scan for its Dockerfile `dockerfile`, given to `resolve` as soon as it has passed
/// (resolving runs on a task of its own, alongside the upload). A context that is no tar
/// (compressed) or has no such file is settled unresolved.
pub struct ContextScan {
    scan: Option<TarScan>,
    resolve: Option<Resolve>,
    resolving: Option<JoinHandle<Result<(), Denial>>>,
}

impl ContextScan {
    pub fn new(dockerfile: &str, resolve: Resolve) -> Self {
        Self {
            scan: Some(TarScan::new(dockerfile)),
            resolve: Some(resolve),
            resolving: None,
        }
    }

    /// Scans the context's next bytes.
    pub fn feed(&mut self, data: &[u8]) {
        let Some(scan) = &mut self.scan else {
            return;
        };
        match scan.feed(data) {
            Scanned::More => return,
            Scanned::Found(text) => {
                if let Some(resolve) = self.resolve.take() {
                    let text = String::from_utf8_lossy(&text).into_owned();
                    self.resolving = Some(tokio::spawn(resolve(text)));
                }
            }
            Scanned::Absent => {}
        }
        self.scan = None;
    }

    /// How many of the context's next bytes the scan passes over unread (an entry's data that is
    /// not the Dockerfile, and padding): they may go to the engine without being read here.
    pub fn skippable(&self) -> u64 {
        self.scan.as_ref().map_or(0, TarScan::skippable)
    }

    /// Passes over `count` of the context's next bytes, at most [`skippable`](Self::skippable),
    /// unread.
    pub fn skip(&mut self, count: u64) {
        if let Some(scan) = &mut self.scan {
            scan.skip(count);
        }
    }

    /// Whether the engine may have the whole context now: the Dockerfile's images are local,
    /// or there are none to make local. Resolving that failed is its error.
    pub fn settled(&mut self) -> Result<bool, Denial> {
        if self.scan.is_some() {
            return Ok(false);
        }
        let Some(resolving) = &mut self.resolving else {
            return Ok(true);
        };
        match resolving.now_or_never() {
            None => Ok(false),
            Some(resolved) => {
                self.resolving = None;
                resolved.unwrap_or_else(|e| Err(failed(&e))).map(|()| true)
            }
        }
    }

    /// Waits for the Dockerfile's images, if it was found.
    pub async fn resolved(&mut self) -> Result<(), Denial> {
        let Some(resolving) = self.resolving.take() else {
            return Ok(());
        };
        // What the endpoint adds to a build whose Dockerfile comes late in its context.
        let waiting = std::time::Instant::now();
        let resolved = resolving.await.unwrap_or_else(|e| Err(failed(&e)));
        debug!(
            waited_ms = waiting.elapsed().as_millis(),
            "the context's last byte waited for the Dockerfile's images"
        );
        resolved
    }
}

fn failed(error: &tokio::task::JoinError) -> Denial {
    Denial::Engine(format!("resolving the Dockerfile's images failed: {error}"))
}

/// Where a [`TarScan`] is in the archive.
enum TarState {
    /// Reading a 512-byte header.
    Header(Vec<u8>),
    /// Skipping an entry's data and padding.
    Skip(u64),
    /// Reading an entry's data (then skipping `padding`).
    Read {
        what: Wanted,
        size: usize,
        padding: u64,
        data: Vec<u8>,
    },
    Done,
}

#[derive(Clone, Copy)]
enum Wanted {
    /// A GNU long name for the next entry.
    LongName,
    /// PAX extended headers for the next entry (its `path`).
    Pax,
    Dockerfile,
}

/// What a [`TarScan`] found so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Scanned {
    More,
    Found(Vec<u8>),
    Absent,
}

/// Finds one file in a tar stream fed chunk by chunk, keeping only headers, long names and
/// that file; bounded, and never panics on what it is fed.
pub struct TarScan {
    name: String,
    state: TarState,
    next_name: Option<Vec<u8>>,
}

impl TarScan {
    pub fn new(name: &str) -> Self {
        Self {
            name: normal_path(name.as_bytes()),
            state: TarState::Header(Vec::with_capacity(512)),
            next_name: None,
        }
    }

    pub fn feed(&mut self, mut input: &[u8]) -> Scanned {
        while !input.is_empty() {
            match &mut self.state {
                TarState::Done => return Scanned::Absent,
                TarState::Skip(left) => {
                    let skipped = (*left).min(input.len() as u64);
                    input = &input[skipped as usize..];
                    self.skip(skipped);
                }
                TarState::Header(block) => {
                    let taken = (512 - block.len()).min(input.len());
                    block.extend_from_slice(&input[..taken]);
                    input = &input[taken..];
                    if block.len() == 512 {
                        let block = std::mem::take(block);
                        self.state = self.header(&block);
                    }
                }
                TarState::Read {
                    what,
                    size,
                    padding,
                    data,
                } => {
                    let taken = (*size - data.len()).min(input.len());
                    data.extend_from_slice(&input[..taken]);
                    input = &input[taken..];
                    if data.len() == *size {
                        let (what, padding, data) = (*what, *padding, std::mem::take(data));
                        match what {
                            Wanted::Dockerfile => {
                                self.state = TarState::Done;
                                return Scanned::Found(data);
                            }
                            Wanted::LongName => {
                                let end = data.iter().position(|b| *b == 0).unwrap_or(data.len());
                                self.next_name = Some(data[..end].to_vec());
                            }
                            Wanted::Pax => {
                                self.next_name = pax_path(&data).or(self.next_name.take())
                            }
                        }
                        self.state = if padding == 0 {
                            TarState::Header(Vec::with_capacity(512))
                        } else {
                            TarState::Skip(padding)
                        };
                    }
                }
            }
        }
        match self.state {
            TarState::Done => Scanned::Absent,
            _ => Scanned::More,
        }
    }

    /// How many of the next bytes it passes over unread.
    pub fn skippable(&self) -> u64 {
        match self.state {
            TarState::Skip(left) => left,
            _ => 0,
        }
    }

    /// Passes over `count` bytes of what it skips (at most all of them).
    pub fn skip(&mut self, count: u64) {
        if let TarState::Skip(left) = &mut self.state {
            *left -= count.min(*left);
            if *left == 0 {
                self.state = TarState::Header(Vec::with_capacity(512));
            }
        }
    }

    /// What follows the header `block`.
    fn header(&mut self, block: &[u8]) -> TarState {
        if block.iter().all(|b| *b == 0) {
            return TarState::Done;
        }
        let header = tar::Header::from_byte_slice(block);
        let stored = header.cksum().ok();
        let computed = block
            .iter()
            .enumerate()
            .map(|(i, b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u32::from(*b)
                }
            })
            .sum::<u32>();
        let Some(size) = header
            .entry_size()
            .ok()
            .filter(|_| stored == Some(computed))
        else {
            return TarState::Done;
        };
        let padded = size.div_ceil(512).saturating_mul(512);
        let kind = header.entry_type();
        let name = self
            .next_name
            .take()
            .unwrap_or_else(|| header.path_bytes().into_owned());
        let wanted = if kind.is_gnu_longname() {
            Some(Wanted::LongName)
        } else if kind.is_pax_local_extensions() {
            Some(Wanted::Pax)
        } else if kind.is_file() && normal_path(&name) == self.name {
            Some(Wanted::Dockerfile)
        } else {
            None
        };
        match wanted {
            // Long names, headers and Dockerfiles are small; anything larger is no real one.
            Some(what) if size <= dockerfile::LIMIT as u64 => TarState::Read {
                what,
                size: size as usize,
                padding: padded - size,
                data: Vec::new(),
            },
            Some(_) => TarState::Done,
            None if padded == 0 => TarState::Header(Vec::with_capacity(512)),
            None => TarState::Skip(padded),
        }
    }
}

/// A path in an archive as the build's `dockerfile` parameter names it: no `./` or `/` first.
fn normal_path(path: &[u8]) -> String {
    let path = String::from_utf8_lossy(path);
    let mut path = path.as_ref();
    loop {
        let trimmed = path.trim_start_matches('/').trim_start_matches("./");
        if trimmed == path {
            return trimmed.to_string();
        }
        path = trimmed;
    }
}

/// The `path` record of PAX extended headers (`LEN path=VALUE\n` records).
fn pax_path(data: &[u8]) -> Option<Vec<u8>> {
    let mut rest = data;
    while !rest.is_empty() {
        let space = rest.iter().position(|b| *b == b' ')?;
        let length: usize = std::str::from_utf8(&rest[..space]).ok()?.parse().ok()?;
        let record = rest.get(space + 1..length)?;
        if let Some(value) = record.strip_prefix(b"path=") {
            return Some(value.strip_suffix(b"\n").unwrap_or(value).to_vec());
        }
        rest = rest.get(length..)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A context as the CLI sends it: files, a long path (a GNU long name) and a PAX path.
    fn context(dockerfile_path: &str) -> Vec<u8> {
        let mut archive = tar::Builder::new(Vec::new());
        let mut add = |path: &str, data: &[u8]| {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            archive.append_data(&mut header, path, data).unwrap();
        };
        add("a.bin", &[7; 3000]);
        add(&format!("{}/x", "long".repeat(40)), b"x");
        add(dockerfile_path, b"FROM ubuntu:22.04\n");
        add("z.txt", b"after");
        archive.into_inner().unwrap()
    }

    #[test]
    fn the_dockerfile_is_found_in_a_context_fed_in_any_chunks() {
        let long = format!("{}/Dockerfile", "deep".repeat(30));
        for (path, name) in [
            ("Dockerfile", "Dockerfile"),
            ("./sub/Dockerfile.ci", "sub/Dockerfile.ci"),
            (long.as_str(), long.as_str()),
        ] {
            let archive = context(path);
            for chunk in [1, 7, 511, 512, 4096, archive.len()] {
                let mut scan = TarScan::new(name);
                let found = archive
                    .chunks(chunk)
                    .map(|piece| scan.feed(piece))
                    .find(|scanned| *scanned != Scanned::More);
                assert_eq!(
                    found,
                    Some(Scanned::Found(b"FROM ubuntu:22.04\n".to_vec())),
                    "{path} in chunks of {chunk}"
                );
            }
        }
        let mut scan = TarScan::new("Dockerfile");
        assert_eq!(scan.feed(&context("Other")), Scanned::Absent);
        // gzip's magic and anything else that is not a tar header.
        let mut scan = TarScan::new("Dockerfile");
        assert_eq!(scan.feed(&[0x1f, 0x8b, 8, 0].repeat(200)), Scanned::Absent);
    }

    /// What the scan passes over may pass unread, in any pieces: the Dockerfile after it is
    /// still found, and nothing of it is skippable.
    #[test]
    fn what_is_passed_over_may_be_skipped_unread() {
        let archive = context("Dockerfile");
        for piece in [1, 100, 3072] {
            let mut scan = TarScan::new("Dockerfile");
            let mut at = 0;
            let mut found = Scanned::More;
            while found == Scanned::More && at < archive.len() {
                let left = scan.skippable();
                if left > 0 {
                    let skipped = left.min(piece);
                    scan.skip(skipped);
                    at += skipped as usize;
                } else {
                    found = scan.feed(&archive[at..at + 1]);
                    at += 1;
                }
            }
            assert_eq!(
                found,
                Scanned::Found(b"FROM ubuntu:22.04\n".to_vec()),
                "{piece}"
            );
            // a.bin (3000 bytes, padded to 3072) and the long name's one-byte file were skipped.
            assert!(at > 512 + 3072, "{piece}");
        }
        let resolve: Resolve = Box::new(|_| async { Ok(()) }.boxed());
        let mut scan = ContextScan::new("Dockerfile", resolve);
        scan.feed(&archive[..512]);
        assert_eq!(scan.skippable(), 3072);
        scan.skip(72);
        assert_eq!(scan.skippable(), 3000);
    }
}

//! Packing listed files into a deterministic `.tar.gz`, and unpacking an uploaded one without
//! letting it write outside its destination.
//!
//! `tar`'s own `unpack_in` is not used: its checks have let symlinks escape before
//! (RUSTSEC-2026-0067), so every entry is validated here and written with plain `std::fs` calls:
//! * entry paths must be relative, without `..`;
//! * a symlink target must be relative and may climb only with leading `..`s, never above the root.
//!   A `..` after a name is refused because that name may itself be a symlink: `d/up -> ..` then
//!   `x -> d/up/..` would escape;
//! * a hard link must name a regular file extracted earlier, by a path that passes the entry-path
//!   checks;
//! * every parent of an entry must be a real directory, and no entry replaces an existing path, so
//!   nothing is ever written through a symlink;
//! * devices, FIFOs and sparse files are refused;
//! * at most [`Limits::entries`] entries and [`Limits::bytes`] bytes of file contents are
//!   unpacked: a small upload must not fill the disk (a gzip of zeros compresses 1000 to 1).
//!
//! `pack` applies the same symlink rule, so a client hears about a link the server would refuse
//! before uploading.

use std::{
    borrow::Cow,
    ffi::OsStr,
    fs::{self, File, OpenOptions, Permissions},
    io::{self, Read, Write},
    os::unix::{
        ffi::OsStrExt,
        fs::{OpenOptionsExt, PermissionsExt, symlink},
    },
    path::{Path, PathBuf},
};

use flate2::{Compression, read::MultiGzDecoder, write::GzEncoder};
use tar::{Archive, Builder, Entry, EntryType, Header};

use super::{ArchiveSummary, Limit, Limits, PackSummary, SourceError, UnpackSummary};

/// Writes a gzip'd tar of `files` (paths relative to `dir`, as [`super::list_files`] returns them)
/// to `out`.
///
/// Deterministic: entries sorted, mtime 0, uid/gid 0, no user or group names, and a gzip header
/// without time or name. Modes are kept. Symlinks are stored as symlinks, never followed, and
/// refused if [`unpack`] would refuse them. A name ending in `/` is stored as a directory entry.
pub fn pack(dir: &Path, files: &[String], out: impl Write) -> Result<PackSummary, SourceError> {
    let mut names: Vec<&str> = files.iter().map(String::as_str).collect();
    names.sort_unstable();
    names.dedup();
    let mut builder = Builder::new(GzEncoder::new(out, Compression::default()));
    let mut summary = ArchiveSummary::default();
    for name in names {
        append(&mut builder, dir, name, &mut summary)?;
    }
    builder
        .into_inner()
        .and_then(GzEncoder::finish)
        .and_then(|mut out| out.flush())
        .map_err(|err| SourceError::archive(None, err))?;
    Ok(summary)
}

fn append<W: Write>(
    builder: &mut Builder<W>,
    dir: &Path,
    name: &str,
    summary: &mut ArchiveSummary,
) -> Result<(), SourceError> {
    let rel =
        relative_path(name.as_bytes()).map_err(|reason| SourceError::unsafe_entry(name, reason))?;
    if rel.as_os_str().is_empty() {
        return Err(SourceError::unsafe_entry(name, "empty path"));
    }
    let path = dir.join(&rel);
    let metadata = fs::symlink_metadata(&path).map_err(|err| SourceError::io(&path, err))?;
    let mode = metadata.permissions().mode() & 0o7777;
    let file_type = metadata.file_type();
    let appended = if name.ends_with('/') {
        if !file_type.is_dir() {
            return Err(SourceError::unsafe_entry(
                name,
                "listed as a directory but is not one",
            ));
        }
        builder.append_data(
            &mut header(EntryType::Directory, mode, 0),
            &rel,
            io::empty(),
        )
    } else if file_type.is_symlink() {
        let target = fs::read_link(&path).map_err(|err| SourceError::io(&path, err))?;
        check_symlink_target(&rel, target.as_os_str().as_bytes()).map_err(|reason| {
            SourceError::unsafe_entry(
                name,
                format!("{reason}, so the build could not use it; ignore it instead"),
            )
        })?;
        summary.files += 1;
        builder.append_link(&mut header(EntryType::Symlink, 0o777, 0), &rel, &target)
    } else if file_type.is_file() {
        let file = File::open(&path).map_err(|err| SourceError::io(&path, err))?;
        // The size of the opened file, so that it matches what is read.
        let size = file
            .metadata()
            .map_err(|err| SourceError::io(&path, err))?
            .len();
        summary.files += 1;
        summary.bytes += size;
        builder.append_data(
            &mut header(EntryType::Regular, mode, size),
            &rel,
            ExactReader {
                file,
                remaining: size,
            },
        )
    } else {
        let reason = if file_type.is_dir() {
            "a directory must be listed with a trailing `/`"
        } else {
            "not a regular file, directory or symlink"
        };
        return Err(SourceError::unsafe_entry(name, reason));
    };
    appended.map_err(|err| SourceError::archive(Some(name), err))
}

/// A header with nothing that differs between two packs of the same tree.
fn header(kind: EntryType, mode: u32, size: u64) -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header
}

/// Reads exactly `remaining` bytes of a file. tar writes the header's size and trusts the data to
/// match it, so a file that shrinks while being packed must fail instead of shifting every later
/// entry.
struct ExactReader {
    file: File,
    remaining: u64,
}

impl Read for ExactReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let limit =
            usize::try_from(self.remaining).map_or(buf.len(), |remaining| remaining.min(buf.len()));
        let read = self.file.read(&mut buf[..limit])?;
        if read == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shrank while being packed",
            ));
        }
        self.remaining -= read as u64;
        Ok(read)
    }
}

/// Unpacks a `.tar.gz` into `dest`, an existing empty directory, refusing any entry that could
/// write outside it (see the module docs) and stopping at the first entry past `limits`; the
/// error names the entry or the limit. On any error, everything written under `dest` is removed.
/// Blocking: call it off the async threads.
///
/// Permission bits are restored without setuid, setgid and sticky; directories always keep owner
/// `rwx` so that the server can fill and later remove the workspace. Modification times are not
/// restored (`pack` stores 0).
pub fn unpack(
    archive: impl Read,
    dest: &Path,
    limits: &Limits,
) -> Result<UnpackSummary, SourceError> {
    let mut existing = fs::read_dir(dest).map_err(|err| SourceError::io(dest, err))?;
    if existing.next().is_some() {
        return Err(SourceError::DestinationNotEmpty(dest.to_path_buf()));
    }
    extract(archive, dest, limits).map_err(|cause| match clear(dest) {
        Ok(()) => cause,
        Err(source) => SourceError::Cleanup {
            cause: Box::new(cause),
            path: dest.to_path_buf(),
            source,
        },
    })
}

/// Reads a `.tar.gz` through to its end as [`unpack`] would, writing nothing, and stops at the
/// first entry past `limits`: an upload is measured before it is kept, so that one too big is
/// refused when it arrives rather than when its build starts. What it holds is only checked by
/// [`unpack`]. Blocking, and as long as decompressing the archive: call it off the async threads.
pub fn measure(archive: impl Read, limits: &Limits) -> Result<ArchiveSummary, SourceError> {
    let mut summary = ArchiveSummary::default();
    each_entry(archive, limits, |entry, _| {
        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::Regular | EntryType::Continuous) {
            within_bytes(entry.size(), &summary, limits)?;
            summary.bytes += entry.size();
        }
        if !matches!(kind, EntryType::XGlobalHeader | EntryType::Directory) {
            summary.files += 1;
        }
        Ok(())
    })?;
    Ok(summary)
}

fn extract(
    archive: impl Read,
    dest: &Path,
    limits: &Limits,
) -> Result<ArchiveSummary, SourceError> {
    let mut summary = ArchiveSummary::default();
    each_entry(archive, limits, |entry, name| {
        extract_entry(entry, name, dest, &mut summary, limits)
    })?;
    Ok(summary)
}

/// Calls `visit` with each entry of a `.tar.gz` and its name, refusing the entry past
/// [`Limits::entries`] before its visit.
fn each_entry<R: Read>(
    archive: R,
    limits: &Limits,
    mut visit: impl FnMut(&mut Entry<'_, MultiGzDecoder<R>>, &str) -> Result<(), SourceError>,
) -> Result<(), SourceError> {
    let mut archive = Archive::new(MultiGzDecoder::new(archive));
    let mut entries = 0;
    for entry in archive
        .entries()
        .map_err(|err| SourceError::archive(None, err))?
    {
        let mut entry = entry.map_err(|err| SourceError::archive(None, err))?;
        entries += 1;
        if entries > limits.entries {
            return Err(SourceError::LimitExceeded {
                limit: Limit::Entries,
                max: limits.entries,
            });
        }
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        visit(&mut entry, &name)?;
    }
    Ok(())
}

/// Refuses a file of `size` bytes that would take the contents past [`Limits::bytes`].
fn within_bytes(size: u64, summary: &ArchiveSummary, limits: &Limits) -> Result<(), SourceError> {
    if size > limits.bytes - summary.bytes {
        return Err(SourceError::LimitExceeded {
            limit: Limit::Bytes,
            max: limits.bytes,
        });
    }
    Ok(())
}

/// Validates one entry, then writes it.
fn extract_entry<R: Read>(
    entry: &mut Entry<'_, R>,
    name: &str,
    dest: &Path,
    summary: &mut ArchiveSummary,
    limits: &Limits,
) -> Result<(), SourceError> {
    let reject = |reason: String| SourceError::unsafe_entry(name, reason);
    let rel = relative_path(&entry.path_bytes()).map_err(reject)?;
    let kind = entry.header().entry_type();
    if kind == EntryType::XGlobalHeader {
        // pax defaults for later entries; nothing to write.
        return Ok(());
    }
    if rel.as_os_str().is_empty() {
        // `tar -C dir .` starts with a `./` entry for the root itself.
        return if kind.is_dir() {
            Ok(())
        } else {
            Err(reject("empty path".to_owned()))
        };
    }
    let path = dest.join(&rel);
    match kind {
        EntryType::Regular | EntryType::Continuous => {
            let mode = mode_of(entry, name)?;
            check_parents(dest, &rel, name, true)?;
            // Checked before anything is written: `tar` reads exactly `entry.size()` bytes (the
            // header's, or a pax override), never more.
            within_bytes(entry.size(), summary, limits)?;
            summary.bytes += write_file(entry, name, &path, mode)?;
        }
        EntryType::Directory => {
            let mode = mode_of(entry, name)?;
            check_parents(dest, &rel, name, true)?;
            return make_dir(&path, name, mode | 0o700);
        }
        EntryType::Symlink => {
            let target = link_target(entry, name)?;
            check_symlink_target(&rel, &target).map_err(reject)?;
            check_parents(dest, &rel, name, true)?;
            symlink(OsStr::from_bytes(&target), &path)
                .map_err(|err| creation_error(name, &path, err))?;
        }
        EntryType::Link => {
            let original = hard_link_source(dest, &link_target(entry, name)?, name)?;
            check_parents(dest, &rel, name, true)?;
            fs::hard_link(&original, &path).map_err(|err| creation_error(name, &path, err))?;
        }
        other => return Err(reject(format!("unsupported entry type {other:?}"))),
    }
    summary.files += 1;
    Ok(())
}

fn mode_of<R: Read>(entry: &Entry<'_, R>, name: &str) -> Result<u32, SourceError> {
    entry
        .header()
        .mode()
        .map(|mode| mode & 0o777)
        .map_err(|err| SourceError::archive(Some(name), err))
}

fn link_target<R: Read>(entry: &Entry<'_, R>, name: &str) -> Result<Vec<u8>, SourceError> {
    entry
        .link_name_bytes()
        .map(Cow::into_owned)
        .filter(|target| !target.is_empty())
        .ok_or_else(|| SourceError::unsafe_entry(name, "link without a target"))
}

/// Writes a regular file's data and mode; returns its size. A short entry needs no check here:
/// `tar` fails when it skips to the next header.
fn write_file(
    entry: &mut impl Read,
    name: &str,
    path: &Path,
    mode: u32,
) -> Result<u64, SourceError> {
    // `create_new` refuses any existing path, a symlink included, so this never writes through one.
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|err| creation_error(name, path, err))?;
    let mut buf = vec![0; 64 * 1024];
    let mut written = 0;
    loop {
        // Read and write errors are told apart: one is the archive's fault, the other the
        // destination's.
        let read = match entry.read(&mut buf) {
            Ok(0) => break,
            Ok(read) => read,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(SourceError::archive(Some(name), err)),
        };
        file.write_all(&buf[..read])
            .map_err(|err| SourceError::io(path, err))?;
        written += read as u64;
    }
    file.set_permissions(Permissions::from_mode(mode))
        .map_err(|err| SourceError::io(path, err))?;
    Ok(written)
}

fn make_dir(path: &Path, name: &str, mode: u32) -> Result<(), SourceError> {
    match fs::create_dir(path) {
        Ok(()) => {}
        // Entries inside a directory may come before the directory's own entry.
        Err(err)
            if err.kind() == io::ErrorKind::AlreadyExists
                && path.symlink_metadata().is_ok_and(|m| m.is_dir()) => {}
        Err(err) => return Err(creation_error(name, path, err)),
    }
    fs::set_permissions(path, Permissions::from_mode(mode))
        .map_err(|err| SourceError::io(path, err))
}

fn creation_error(name: &str, path: &Path, err: io::Error) -> SourceError {
    if err.kind() == io::ErrorKind::AlreadyExists {
        SourceError::unsafe_entry(name, "duplicate entry: the path already exists")
    } else {
        SourceError::io(path, err)
    }
}

/// The path of the file a hard link names: a regular file extracted earlier, reached through real
/// directories.
fn hard_link_source(dest: &Path, target: &[u8], name: &str) -> Result<PathBuf, SourceError> {
    let shown = String::from_utf8_lossy(target);
    let rel = relative_path(target).map_err(|reason| {
        SourceError::unsafe_entry(name, format!("hard link target `{shown}`: {reason}"))
    })?;
    check_parents(dest, &rel, name, false)?;
    let path = dest.join(&rel);
    match fs::symlink_metadata(&path) {
        Ok(metadata) if metadata.is_file() => Ok(path),
        _ => Err(SourceError::unsafe_entry(
            name,
            format!("hard link target `{shown}` is not a file extracted earlier"),
        )),
    }
}

/// Checks that every parent of `rel` under `dest` is a real directory, not a symlink; creates
/// missing ones if `create`.
fn check_parents(dest: &Path, rel: &Path, name: &str, create: bool) -> Result<(), SourceError> {
    let mut path = dest.to_path_buf();
    let mut parents = rel.components();
    parents.next_back();
    for component in parents {
        path.push(component);
        let problem = match fs::symlink_metadata(&path) {
            Ok(metadata) if metadata.is_dir() => continue,
            Ok(metadata) if metadata.is_symlink() => "is a symlink",
            Ok(_) => "is not a directory",
            Err(err) if err.kind() == io::ErrorKind::NotFound && create => {
                fs::create_dir(&path).map_err(|err| SourceError::io(&path, err))?;
                continue;
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => "does not exist",
            Err(err) => return Err(SourceError::io(&path, err)),
        };
        let shown = path.strip_prefix(dest).unwrap_or(&path).display();
        return Err(SourceError::unsafe_entry(
            name,
            format!("`{shown}` {problem}"),
        ));
    }
    Ok(())
}

/// Removes everything under `dest`, but not `dest`, without following symlinks.
fn clear(dest: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dest)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            fs::remove_dir_all(entry.path())?;
        } else {
            fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// The normalized relative path of an archive entry, or why it could point outside the destination.
fn relative_path(name: &[u8]) -> Result<PathBuf, String> {
    if name.starts_with(b"/") {
        return Err("absolute path".to_owned());
    }
    let mut path = PathBuf::new();
    for component in name.split(|&byte| byte == b'/') {
        match component {
            b"" | b"." => {}
            b".." => return Err("path has a `..` component".to_owned()),
            _ => path.push(OsStr::from_bytes(component)),
        }
    }
    Ok(path)
}

/// Checks that a symlink at `link` (relative to the root) pointing at `target` resolves inside the
/// root.
fn check_symlink_target(link: &Path, target: &[u8]) -> Result<(), String> {
    let shown = String::from_utf8_lossy(target);
    if target.starts_with(b"/") {
        return Err(format!("symlink target `{shown}` is absolute"));
    }
    let mut ups = 0;
    let mut after_name = false;
    for component in target.split(|&byte| byte == b'/') {
        match component {
            b"" | b"." => {}
            b".." if after_name => {
                return Err(format!("symlink target `{shown}` has `..` after a name"));
            }
            b".." => ups += 1,
            _ => after_name = true,
        }
    }
    let depth = link.components().count().saturating_sub(1);
    if ups > depth {
        return Err(format!("symlink target `{shown}` climbs out of the root"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::source::{list_files, tests::tree};
    use proptest::prelude::*;
    use std::{collections::BTreeSet, os::unix::fs::MetadataExt};
    use tempfile::TempDir;

    fn pack_names(dir: &Path, names: &[&str]) -> Result<(Vec<u8>, PackSummary), SourceError> {
        let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let mut out = Vec::new();
        let summary = pack(dir, &names, &mut out)?;
        Ok((out, summary))
    }

    fn names_in(dir: &Path) -> BTreeSet<String> {
        fs::read_dir(dir)
            .expect("readable")
            .map(|entry| {
                entry
                    .expect("entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect()
    }

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).expect("exists").mode() & 0o7777
    }

    #[test]
    fn round_trip_keeps_contents_modes_and_symlinks() {
        let src = tree(&[
            ("bin/run.sh", "#!/bin/sh\necho hi\n"),
            ("bin/up", "-> ../src"),
            ("src/lib.rs", "fn main() {}\n"),
            ("secret", "s"),
            ("empty/", ""),
            ("link", "-> src/lib.rs"),
        ]);
        // (path, mode before packing, mode after unpacking: setuid, setgid and sticky are dropped)
        let modes = [
            ("bin/run.sh", 0o755, 0o755),
            ("src/lib.rs", 0o4750, 0o750),
            ("secret", 0o600, 0o600),
            ("empty", 0o750, 0o750),
        ];
        for (path, before, _) in modes {
            fs::set_permissions(src.path().join(path), Permissions::from_mode(before))
                .expect("chmod");
        }
        let listing = list_files(src.path(), None).expect("lists");
        let names: Vec<&str> = listing.files.iter().map(String::as_str).collect();
        let (archive, packed) = pack_names(src.path(), &names).expect("packs");
        assert_eq!(
            packed,
            ArchiveSummary {
                files: 5,
                bytes: 18 + 13 + 1
            }
        );

        let dest = TempDir::new().expect("temp dir");
        let unpacked =
            unpack(archive.as_slice(), dest.path(), &Limits::default()).expect("unpacks");
        assert_eq!(unpacked, packed);
        assert_eq!(
            list_files(dest.path(), None).expect("lists").files,
            listing.files
        );
        for file in ["bin/run.sh", "src/lib.rs", "secret"] {
            let (before, after) = (src.path().join(file), dest.path().join(file));
            assert_eq!(
                fs::read(&after).expect("read"),
                fs::read(&before).expect("read"),
                "{file}"
            );
        }
        for (path, _, after) in modes {
            assert_eq!(mode(&dest.path().join(path)), after, "{path}");
        }
        assert_eq!(
            fs::read_link(dest.path().join("link")).expect("symlink"),
            Path::new("src/lib.rs")
        );
        assert_eq!(
            fs::read_link(dest.path().join("bin/up")).expect("symlink"),
            Path::new("../src")
        );
    }

    #[test]
    fn pack_is_deterministic() {
        let long = format!("{}/file", "a-rather-long-directory-name".repeat(5));
        let src = tree(&[("a", "1"), ("d/b", "2"), (&long, "3")]);
        let (first, _) = pack_names(src.path(), &["a", "d/b", &long]).expect("packs");
        let file = File::options()
            .write(true)
            .open(src.path().join("a"))
            .expect("open");
        file.set_modified(
            std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000),
        )
        .expect("touch");
        let (second, _) = pack_names(src.path(), &[&long, "d/b", "a", "a"]).expect("packs");
        assert_eq!(first, second);

        let mut archive = Archive::new(MultiGzDecoder::new(first.as_slice()));
        let mut paths = Vec::new();
        for entry in archive.entries().expect("entries") {
            let entry = entry.expect("entry");
            let header = entry.header();
            assert_eq!(
                (header.mtime().ok(), header.uid().ok(), header.gid().ok()),
                (Some(0), Some(0), Some(0))
            );
            paths.push(entry.path().expect("path").display().to_string());
        }
        assert_eq!(paths, ["a", long.as_str(), "d/b"]);
    }

    #[test]
    fn pack_refuses_unsafe_or_mislisted_entries() {
        let src = tree(&[
            ("abs", "-> /usr/bin/python3"),
            ("d/out", "-> ../../x"),
            ("d/sneaky", "-> up/.."),
            ("fine", "-> d"),
            ("d/", ""),
        ]);
        let cases = [
            ("abs", "symlink target `/usr/bin/python3` is absolute"),
            ("d/out", "symlink target `../../x` climbs out of the root"),
            ("d/sneaky", "symlink target `up/..` has `..` after a name"),
            ("../x", "path has a `..` component"),
            ("/etc/passwd", "absolute path"),
            ("fine/", "listed as a directory but is not one"),
            ("d", "a directory must be listed with a trailing `/`"),
        ];
        for (name, reason) in cases {
            let err = pack_names(src.path(), &[name]).expect_err(name).to_string();
            assert!(err.contains(&format!("`{name}`: {reason}")), "{err}");
        }
        assert!(pack_names(src.path(), &["fine", "d/"]).is_ok());
    }

    /// (path, type, link target) of an entry, written into the raw header fields because `set_path`
    /// refuses the very names under test. `{out}` stands for a directory outside the destination.
    type Raw<'a> = (&'a str, EntryType, &'a str);

    const DATA: &[u8] = b"data";

    /// A `.tar.gz` of `entries`; regular files hold [`DATA`].
    fn raw_archive(entries: &[Raw<'_>], outside: &str) -> Vec<u8> {
        let mut builder = Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
        for &(name, kind, link) in entries {
            let (name, link) = (
                name.replace("{out}", outside),
                link.replace("{out}", outside),
            );
            let data = if kind == EntryType::Regular {
                DATA
            } else {
                b""
            };
            let mut header = Header::new_gnu();
            let fields = header.as_old_mut();
            fields.name[..name.len()].copy_from_slice(name.as_bytes());
            fields.linkname[..link.len()].copy_from_slice(link.as_bytes());
            header.set_entry_type(kind);
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append(&header, data).expect("append");
        }
        builder
            .into_inner()
            .and_then(GzEncoder::finish)
            .expect("finish")
    }

    /// A destination next to an `o` directory that stands for "outside".
    struct Sandbox {
        root: TempDir,
    }

    impl Sandbox {
        fn new() -> Sandbox {
            let root = TempDir::new().expect("temp dir");
            fs::create_dir(root.path().join("dest")).expect("mkdir");
            fs::create_dir(root.path().join("o")).expect("mkdir");
            Sandbox { root }
        }

        fn dest(&self) -> PathBuf {
            self.root.path().join("dest")
        }

        fn outside(&self) -> String {
            self.root.path().join("o").display().to_string()
        }

        fn unpack(&self, entries: &[Raw<'_>]) -> Result<UnpackSummary, SourceError> {
            unpack(
                raw_archive(entries, &self.outside()).as_slice(),
                &self.dest(),
                &Limits::default(),
            )
        }

        /// Nothing was written next to `dest` or into `o`.
        fn assert_nothing_outside(&self) {
            let expected = BTreeSet::from(["dest".to_owned(), "o".to_owned()]);
            assert_eq!(names_in(self.root.path()), expected);
            assert!(names_in(&self.root.path().join("o")).is_empty());
        }

        /// As [`Sandbox::assert_nothing_outside`], and `dest` was emptied again.
        fn assert_untouched(&self) {
            self.assert_nothing_outside();
            assert!(
                names_in(&self.dest()).is_empty(),
                "left: {:?}",
                names_in(&self.dest())
            );
        }
    }

    #[test]
    fn unpack_rejects_malicious_archives() {
        use EntryType::{Char, Directory, Fifo, Link, Regular, Symlink};
        // (entries, the entry that fails, the reason)
        let cases: &[(&[Raw<'_>], &str, &str)] = &[
            (
                &[("../evil", Regular, "")],
                "../evil",
                "path has a `..` component",
            ),
            (&[("{out}/abs", Regular, "")], "{out}/abs", "absolute path"),
            (
                &[("a/../../evil", Regular, "")],
                "a/../../evil",
                "`..` component",
            ),
            (
                &[("link", Symlink, "/etc"), ("link/passwd", Regular, "")],
                "link",
                "`/etc` is absolute",
            ),
            (
                &[("link", Symlink, "{out}"), ("link/evil", Regular, "")],
                "link",
                "is absolute",
            ),
            (
                &[("link", Symlink, "../..")],
                "link",
                "`../..` climbs out of the root",
            ),
            (
                &[("d/link", Symlink, "../../x")],
                "d/link",
                "climbs out of the root",
            ),
            (
                &[
                    ("d/up", Symlink, ".."),
                    ("x", Symlink, "d/up/.."),
                    ("x/evil", Regular, ""),
                ],
                "x",
                "`d/up/..` has `..` after a name",
            ),
            (
                &[
                    ("in/", Directory, ""),
                    ("link", Symlink, "in"),
                    ("link/f", Regular, ""),
                ],
                "link/f",
                "`link` is a symlink",
            ),
            (
                &[("hard", Link, "/etc/passwd")],
                "hard",
                "target `/etc/passwd`: absolute path",
            ),
            (
                &[("hard", Link, "../x")],
                "hard",
                "target `../x`: path has a `..` component",
            ),
            (
                &[("hard", Link, "missing")],
                "hard",
                "`missing` is not a file extracted earlier",
            ),
            (&[("hard", Link, "a/b")], "hard", "`a` does not exist"),
            (
                &[("l", Symlink, "x"), ("hard", Link, "l")],
                "hard",
                "`l` is not a file extracted",
            ),
            (&[("fifo", Fifo, "")], "fifo", "unsupported entry type Fifo"),
            (&[("tty", Char, "")], "tty", "unsupported entry type Char"),
            (
                &[("a", Regular, ""), ("a", Regular, "")],
                "a",
                "duplicate entry",
            ),
            (
                &[("l", Symlink, "x"), ("l", Regular, "")],
                "l",
                "duplicate entry",
            ),
            (
                &[("f", Regular, ""), ("f/", Directory, "")],
                "f/",
                "duplicate entry",
            ),
            (
                &[("f", Regular, ""), ("f/x", Regular, "")],
                "f/x",
                "`f` is not a directory",
            ),
            (
                &[
                    ("ok/", Directory, ""),
                    ("ok/a", Regular, ""),
                    ("../late", Regular, ""),
                ],
                "../late",
                "`..` component",
            ),
        ];
        for &(entries, failing, reason) in cases {
            let sandbox = Sandbox::new();
            let err = sandbox.unpack(entries).expect_err(failing).to_string();
            let failing = failing.replace("{out}", &sandbox.outside());
            assert!(
                err.starts_with(&format!("unsafe entry `{failing}`: ")),
                "{err}"
            );
            assert!(err.contains(reason), "{err} should contain {reason:?}");
            sandbox.assert_untouched();
        }
    }

    #[test]
    fn unpack_accepts_common_layouts() {
        use EntryType::{Directory, Link, Regular, Symlink};
        let sandbox = Sandbox::new();
        let summary = sandbox.unpack(&[
            ("./", Directory, ""),
            ("./d/f", Regular, ""),
            ("d/", Directory, ""),
            ("d/up", Symlink, ".."),
            ("d/sibling", Symlink, "../e/x"),
            ("e/hard", Link, "d/f"),
        ]);
        assert_eq!(
            summary.expect("unpacks"),
            ArchiveSummary { files: 4, bytes: 4 }
        );
        let dest = sandbox.dest();
        assert_eq!(fs::read(dest.join("e/hard")).expect("hard link"), DATA);
        assert_eq!(mode(&dest.join("d/f")), 0o644);
        // Directories keep owner rwx whatever the archive says.
        assert_eq!(mode(&dest.join("d")), 0o744);
        assert_eq!(
            fs::read_link(dest.join("d/up")).expect("symlink"),
            Path::new("..")
        );
    }

    #[test]
    fn unpack_needs_an_empty_destination() {
        let dest = tree(&[("already", "")]);
        let err = unpack(
            raw_archive(&[], "").as_slice(),
            dest.path(),
            &Limits::default(),
        )
        .expect_err("not empty");
        assert!(matches!(err, SourceError::DestinationNotEmpty(_)), "{err}");
        assert_eq!(
            names_in(dest.path()),
            BTreeSet::from(["already".to_owned()])
        );
    }

    /// `measure` refuses what `unpack` refuses for its limits, and counts what it unpacks.
    #[test]
    fn measure_and_unpack_stop_at_the_same_limits_and_name_them() {
        let src = tree(&[("a", "12345"), ("b", "67890"), ("c", "x")]);
        let (archive, _) = pack_names(src.path(), &["a", "b", "c"]).expect("packs");
        let cases = [
            (
                Limits {
                    bytes: 11,
                    entries: 3,
                },
                None,
            ),
            (
                Limits {
                    bytes: 10,
                    entries: 3,
                },
                Some("more than 10 bytes, the server's limit (maxUploadBytes)"),
            ),
            (
                Limits {
                    bytes: 11,
                    entries: 2,
                },
                Some("more than 2 entries, the server's limit (maxUploadEntries)"),
            ),
        ];
        for (limits, refused) in cases {
            match (measure(archive.as_slice(), &limits), refused) {
                (Ok(summary), None) => assert_eq!(
                    summary,
                    ArchiveSummary {
                        files: 3,
                        bytes: 11
                    }
                ),
                (Err(err), Some(message)) => assert!(err.to_string().contains(message), "{err}"),
                (result, _) => panic!("measure, {limits:?}: {result:?}"),
            }
            let dest = TempDir::new().expect("temp dir");
            match (unpack(archive.as_slice(), dest.path(), &limits), refused) {
                (Ok(summary), None) => assert_eq!(summary.bytes, 11),
                (Err(err), Some(message)) => {
                    assert!(err.to_string().contains(message), "{err}");
                    assert!(names_in(dest.path()).is_empty());
                }
                (result, _) => panic!("{limits:?}: {result:?}"),
            }
        }
    }

    #[test]
    fn unpack_rejects_truncated_and_garbage_archives() {
        let src = tree(&[("big", &"x".repeat(100_000)), ("small", "y")]);
        let (archive, _) = pack_names(src.path(), &["big", "small"]).expect("packs");
        let mut tar = Vec::new();
        MultiGzDecoder::new(archive.as_slice())
            .read_to_end(&mut tar)
            .expect("gunzip");
        // Cut inside the data of `big`, in the tar stream (a valid gzip of a short tar) and in the
        // gzip stream.
        let short_tar = gzip(&tar[..50_000]);
        let inputs = [
            short_tar.as_slice(),
            &archive[..archive.len() / 2],
            b"not a gzip stream",
            b"",
        ];
        for input in inputs {
            let dest = TempDir::new().expect("temp dir");
            let err = unpack(input, dest.path(), &Limits::default()).expect_err("bad archive");
            assert!(matches!(err, SourceError::Archive { .. }), "{err}");
            assert!(names_in(dest.path()).is_empty());
        }
    }

    #[test]
    fn a_file_that_shrinks_while_packing_fails() {
        let src = tree(&[("f", "abc")]);
        let file = File::open(src.path().join("f")).expect("open");
        let mut reader = ExactReader {
            file,
            remaining: 10,
        };
        let err = reader.read_to_end(&mut Vec::new()).expect_err("shrank");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    /// Links that are fine on their own but climb, for generated entries to build on.
    const CLIMBING_LINKS: &[Raw<'static>] = &[
        ("d/e/", EntryType::Directory, ""),
        ("d/up", EntryType::Symlink, ".."),
        ("d/e/upup", EntryType::Symlink, "../.."),
    ];

    /// Paths made of the names in [`CLIMBING_LINKS`], `..` and `.`, sometimes under `{out}`.
    fn raw_path() -> impl Strategy<Value = String> {
        let component = prop::sample::select(vec!["d", "e", "up", "upup", "x", "..", "."]);
        let components = prop::collection::vec(component, 1..5);
        (prop::bool::weighted(0.1), components).prop_map(|(absolute, parts)| {
            let path = parts.join("/");
            if absolute {
                format!("{{out}}/{path}")
            } else {
                path
            }
        })
    }

    /// Entries likely to be placed next to, or below, [`CLIMBING_LINKS`].
    fn raw_entries() -> impl Strategy<Value = Vec<(String, EntryType, String)>> {
        let name = prop_oneof![
            3 => prop::sample::select(vec!["x", "y", "d/x", "d/e/x"]).prop_map(str::to_owned),
            1 => raw_path(),
        ];
        let kind = prop::sample::select(vec![
            EntryType::Regular,
            EntryType::Directory,
            EntryType::Symlink,
            EntryType::Symlink,
            EntryType::Link,
        ]);
        prop::collection::vec((name, kind, raw_path()), 1..4)
    }

    /// Every symlink under `dir` that resolves at all resolves inside `root`.
    fn assert_links_inside(dir: &Path, root: &Path) {
        for entry in fs::read_dir(dir).expect("readable") {
            let entry = entry.expect("entry");
            let file_type = entry.file_type().expect("type");
            if file_type.is_dir() {
                assert_links_inside(&entry.path(), root);
            } else if file_type.is_symlink()
                && let Ok(resolved) = fs::canonicalize(entry.path())
            {
                let (link, resolved) = (entry.path(), resolved);
                assert!(
                    resolved.starts_with(root),
                    "{} -> {}",
                    link.display(),
                    resolved.display()
                );
            }
        }
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
        encoder.write_all(bytes).expect("write");
        encoder.finish().expect("finish")
    }

    proptest! {
        #[test]
        fn unpack_never_panics_on_arbitrary_bytes(
            bytes in prop::collection::vec(any::<u8>(), 0..4096),
            compress in any::<bool>(),
        ) {
            let input = if compress { gzip(&bytes) } else { bytes };
            let dest = TempDir::new().expect("temp dir");
            if unpack(input.as_slice(), dest.path(), &Limits::default()).is_err() {
                prop_assert!(names_in(dest.path()).is_empty());
            }
        }

        #[test]
        fn unpack_never_writes_outside_dest(entries in raw_entries()) {
            let generated =
                entries.iter().map(|(name, kind, link)| (name.as_str(), *kind, link.as_str()));
            let raw: Vec<Raw<'_>> = CLIMBING_LINKS.iter().copied().chain(generated).collect();
            let sandbox = Sandbox::new();
            if sandbox.unpack(&raw).is_err() {
                sandbox.assert_untouched();
            } else {
                sandbox.assert_nothing_outside();
                let dest = fs::canonicalize(sandbox.dest()).expect("dest exists");
                assert_links_inside(&dest, &dest);
            }
        }
    }
}

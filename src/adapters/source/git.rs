//! The source of a triggered build, from git: URL rewrites (`--git-url-rewrite FROM=TO`), one
//! local bare mirror per repository in a cache directory, the files a push changed, and checking
//! out the pushed commit into a workspace. The only user of `git2`.
//!
//! Everything here blocks (git2 does network and disk I/O on the calling thread): async callers
//! run it in `spawn_blocking`, and watch a fetch through its [`Watch`]: git2 has no safe way to
//! bound a fetch in time (its server timeouts are process-wide `unsafe` settings), so the fetch
//! reports its progress there and stops when asked, at its next report.

use std::{
    fmt, fs,
    fs::File,
    io,
    path::{Path, PathBuf},
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use git2::{
    AutotagOption, ErrorCode, FetchOptions, Oid, ProxyOptions, RemoteCallbacks, Repository,
    build::CheckoutBuilder,
};
use sha2::{Digest, Sha256};

/// Why rewriting a URL, updating a mirror, comparing commits or checking one out failed.
///
/// Each message is complete on its own (it names the URL, commit or path and includes the
/// underlying error), so `source()` is left empty, as for [`super::SourceError`].
#[derive(Debug)]
pub enum GitError {
    /// A URL rewrite is not `FROM=TO` with a non-empty `FROM`.
    Rewrite {
        rewrite: String,
        reason: &'static str,
    },
    /// A commit id is not 40 hexadecimal digits.
    NotACommitId(String),
    /// A commit is not in the mirror of `url`, even after updating it.
    UnknownCommit { commit: String, url: String },
    /// `checkout` needs an empty or new directory.
    DestinationNotEmpty(PathBuf),
    /// A filesystem operation on `path` failed.
    Io { path: PathBuf, source: io::Error },
    /// A git operation failed; `doing` says which, naming its URL, commits and paths.
    Git { doing: String, source: git2::Error },
    /// The fetch of `url` was told to stop (see [`Watch::stop`]).
    Stopped { url: String },
}

impl fmt::Display for GitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GitError::Rewrite { rewrite, reason } => {
                write!(f, "git URL rewrite `{rewrite}`: {reason}")
            }
            GitError::NotACommitId(id) => write!(
                f,
                "`{id}` is not a commit id: expected 40 hexadecimal digits"
            ),
            GitError::UnknownCommit { commit, url } => {
                write!(f, "commit {commit} is not in {url}, even after fetching it")
            }
            GitError::DestinationNotEmpty(path) => write!(
                f,
                "cannot check out into {}: directory is not empty",
                path.display()
            ),
            GitError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            GitError::Git { doing, source } => write!(f, "{doing}: {}", source.message()),
            GitError::Stopped { url } => write!(f, "the fetch of {url} was stopped"),
        }
    }
}

impl std::error::Error for GitError {}

impl GitError {
    fn io(path: &Path, source: io::Error) -> Self {
        GitError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// One `FROM=TO` URL rewrite: a URL starting with `FROM` is fetched from `TO` followed by the
/// rest of the URL, e.g. `https://github.com/=/srv/mirrors/` fetches
/// `https://github.com/acme/app.git` from `/srv/mirrors/acme/app.git`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewrite {
    from: String,
    to: String,
}

impl FromStr for Rewrite {
    type Err = GitError;

    /// Splits at the first `=`, so `TO` may hold `=` but `FROM` may not.
    fn from_str(rewrite: &str) -> Result<Self, Self::Err> {
        let invalid = |reason| GitError::Rewrite {
            rewrite: rewrite.to_owned(),
            reason,
        };
        let (from, to) = rewrite
            .split_once('=')
            .ok_or_else(|| invalid("expected FROM=TO, e.g. https://github.com/=/srv/mirrors/"))?;
        if from.is_empty() {
            return Err(invalid("FROM is empty, so it would rewrite every URL"));
        }
        Ok(Rewrite {
            from: from.to_owned(),
            to: to.to_owned(),
        })
    }
}

/// The URL rewrites applied before fetching, as git's `url.<base>.insteadOf`: the longest
/// matching `FROM` wins, and of equal ones the last given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rewrites(Vec<Rewrite>);

impl Rewrites {
    pub fn new(rewrites: impl IntoIterator<Item = Rewrite>) -> Self {
        Rewrites(rewrites.into_iter().collect())
    }

    /// The URL to fetch `url` from.
    pub fn apply(&self, url: &str) -> String {
        self.0
            .iter()
            .filter_map(|rewrite| Some((rewrite, url.strip_prefix(&rewrite.from)?)))
            .max_by_key(|(rewrite, _)| rewrite.from.len())
            .map_or_else(
                || url.to_owned(),
                |(rewrite, rest)| rewrite.to.clone() + rest,
            )
    }
}

/// A fetch as its watcher sees it: how far it got, whether it is done fetching, and a way to
/// stop it. Cloned into the blocking task that fetches; the watcher keeps the other clone.
#[derive(Debug, Clone, Default)]
pub struct Watch(Arc<WatchState>);

#[derive(Debug, Default)]
struct WatchState {
    /// Bumped by every report the fetch makes: bytes received, objects indexed, a line of the
    /// server's progress.
    progress: AtomicU64,
    /// The fetch is over (whatever its outcome): what follows reads the mirror and waits on no
    /// server.
    fetched: AtomicBool,
    stop: AtomicBool,
    /// The mirror's lock while the fetch holds it: a stop releases it, so that a fetch stuck
    /// on a server that never answers does not keep the next ones of the mirror waiting.
    lock: std::sync::Mutex<Option<File>>,
}

impl Watch {
    /// A number that changes whenever the fetch makes progress.
    pub fn progress(&self) -> u64 {
        self.0.progress.load(Ordering::Relaxed)
    }

    /// Whether the fetch is over.
    pub fn fetched(&self) -> bool {
        self.0.fetched.load(Ordering::Relaxed)
    }

    /// Asks the fetch to stop: it does at its next report (or its next look at the mirror's
    /// lock), failing with [`GitError::Stopped`] or git's "cancelled". A fetch blocked on a
    /// server that never answers makes no report: its thread stays blocked until the connection
    /// ends, and its watcher has to give up on it.
    pub fn stop(&self) {
        self.0.stop.store(true, Ordering::Relaxed);
        self.release();
    }

    /// Releases the mirror's lock, if the fetch holds it (closing the file releases it).
    fn release(&self) {
        if let Ok(mut lock) = self.0.lock.lock() {
            lock.take();
        }
    }

    fn stopped(&self) -> bool {
        self.0.stop.load(Ordering::Relaxed)
    }

    /// Records progress; whether to go on.
    fn report(&self) -> bool {
        self.0.progress.fetch_add(1, Ordering::Relaxed);
        !self.stopped()
    }
}

/// How often a fetch waiting for its mirror's lock looks again.
const LOCK_POLL: Duration = Duration::from_millis(50);

/// Which rule chose a push's changed files, for recording why a trigger did or did not fire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeRule {
    /// The files that differ between the `before` and `after` commits.
    Diff,
    /// Every file of `after`: `before` is the null id, so the push created the branch or tag.
    NewRef,
    /// Every file of `after`: `before` is not in the mirror (a force push replaced commits it
    /// never fetched), so there is nothing to compare with.
    BeforeUnknown,
    /// A pull request's: the files that differ between its head and where it left its base
    /// branch (their merge base), as GitHub's "Files changed" shows them.
    MergeBase,
}

impl fmt::Display for ChangeRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChangeRule::Diff => "the files that differ between the push's before and after commits",
            ChangeRule::NewRef => "a new branch or tag: every file of the commit counts as changed",
            ChangeRule::BeforeUnknown => {
                "the push's before commit was never fetched: every file of the commit counts as changed"
            }
            ChangeRule::MergeBase => {
                "the files that differ between the pull request's head and its merge base with the base branch"
            }
        })
    }
}

/// The files a push changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangedFiles {
    /// Repository-relative, `/`-separated, sorted, without duplicates.
    pub files: Vec<String>,
    pub rule: ChangeRule,
}

/// A bare mirror of one repository in the cache directory, just updated from its URL.
pub struct Mirror {
    repo: Repository,
    /// The URL as the trigger names it, without credentials: for messages and the checkout's
    /// `origin`.
    url: String,
    /// Where it was fetched from (after rewrites), without credentials: for messages.
    fetched_from: String,
}

impl Mirror {
    /// Fetches every branch and tag of `url` (after `rewrites`), and the head of every pull
    /// request (`refs/pull/N/head`, where GitHub keeps a fork's commits too), into its mirror under
    /// `cache_dir`, creating both as needed. `url` may be a local path, a `file://` URL or an
    /// `https://` URL (without authentication beyond what the URL itself carries). Branches and
    /// tags are force-updated and never pruned, and no object is ever removed, so a commit once
    /// fetched stays readable.
    ///
    /// Each URL fetched from has its own bare repository, in a directory named after the URL's
    /// readable part (scheme and credentials dropped, anything but ASCII letters, digits, `.`, `-`
    /// and `_` replaced) plus a hash of the whole URL, so no URL can name a path outside
    /// `cache_dir`.
    ///
    /// Updates of one mirror take turns through an exclusive lock on `<mirror>.lock` next to it:
    /// git itself would fail one of two fetches racing for the same ref, and two creations of the
    /// same repository could clobber each other. A file lock rather than an in-process mutex, so
    /// that separate processes sharing a cache take turns too, and the operating system releases
    /// it however the holder ends. Each update still fetches after waiting, since the push it is
    /// for may have landed after the other fetch began. Reading needs no lock: a fetch only adds
    /// objects and replaces refs atomically, and readers look commits up by id.
    ///
    /// `watch` sees the fetch's progress and can stop it; waiting for the lock is not progress, so
    /// that a fetch stuck behind another that never ends is given up too.
    pub fn update(
        cache_dir: &Path,
        url: &str,
        rewrites: &Rewrites,
        watch: &Watch,
    ) -> Result<Mirror, GitError> {
        let fetch_url = rewrites.apply(url);
        let name = mirror_name(&fetch_url);
        let path = cache_dir.join(&name);
        let url = without_credentials(url).into_owned();
        let fetched_from = without_credentials(&fetch_url).into_owned();
        let git = |source| GitError::Git {
            doing: format!(
                "updating the mirror {} of {}",
                path.display(),
                described(&url, &fetched_from)
            ),
            source,
        };

        fs::create_dir_all(cache_dir).map_err(|err| GitError::io(cache_dir, err))?;
        let lock_path = cache_dir.join(format!("{name}.lock"));
        let lock = File::create(&lock_path).map_err(|err| GitError::io(&lock_path, err))?;
        let stopped = || GitError::Stopped { url: url.clone() };
        // Polled rather than blocking, so that a stopped fetch stops waiting too.
        loop {
            match lock.try_lock() {
                Ok(()) if watch.stopped() => return Err(stopped()),
                Ok(()) => break,
                Err(fs::TryLockError::WouldBlock) if watch.stopped() => return Err(stopped()),
                Err(fs::TryLockError::WouldBlock) => std::thread::sleep(LOCK_POLL),
                Err(fs::TryLockError::Error(err)) => return Err(GitError::io(&lock_path, err)),
            }
        }
        // Initialising an existing repository leaves it as it is, and completes one whose
        // creation was interrupted.
        if let Ok(mut held) = watch.0.lock.lock() {
            *held = Some(lock);
        }
        let fetched = Repository::init_bare(&path).and_then(|repo| {
            fetch(&repo, &fetch_url, watch)?;
            Ok(repo)
        });
        watch.0.fetched.store(true, Ordering::Relaxed);
        watch.release();
        let repo = match fetched {
            Err(_) if watch.stopped() => return Err(stopped()),
            fetched => fetched.map_err(git)?,
        };
        Ok(Mirror {
            repo,
            url,
            fetched_from,
        })
    }

    /// The files a push from `before` to `after` changed (both 40-hex commit ids, or tags that
    /// point to commits), by these rules:
    /// * `before` is the null id (a new branch or tag): every file of `after`;
    /// * `before` is not in the mirror (a force push whose old commit was never fetched): every
    ///   file of `after`;
    /// * otherwise the files that differ between the two commits' trees, whether or not `before`
    ///   is an ancestor of `after`. A renamed file counts as both its old and its new path, so
    ///   a plain tree diff, which sees a rename as a deletion and an addition, gives exactly that
    ///   and rename detection would add nothing.
    ///
    /// A file is a blob or symlink (or a submodule's path), never a directory; a path that is not
    /// UTF-8 is read lossily. `after` must be in the mirror.
    pub fn changed_files(&self, before: &str, after: &str) -> Result<ChangedFiles, GitError> {
        let after_commit = self.commit(after)?;
        let before_id = commit_id(before)?;
        let git = |source| GitError::Git {
            doing: format!("comparing {before}..{after} of {}", self.described()),
            source,
        };
        let new_tree = after_commit.tree().map_err(git)?;
        let (old_tree, rule) = if before_id.is_zero() {
            (None, ChangeRule::NewRef)
        } else {
            match self.repo.find_object(before_id, None) {
                Ok(object) => (Some(object.peel_to_tree().map_err(git)?), ChangeRule::Diff),
                Err(err) if err.code() == ErrorCode::NotFound => (None, ChangeRule::BeforeUnknown),
                Err(err) => return Err(git(err)),
            }
        };
        let files = self.diff(old_tree.as_ref(), &new_tree).map_err(git)?;
        Ok(ChangedFiles { files, rule })
    }

    /// The files a pull request changes: those that differ between `head` (a 40-hex commit id in
    /// the mirror) and its merge base with branch `base` (`merge-base(base, head)..head`).
    /// Without a merge base (unrelated histories), every file of `head`.
    pub fn pull_request_files(&self, base: &str, head: &str) -> Result<ChangedFiles, GitError> {
        let head_commit = self.commit(head)?;
        let git = |source| GitError::Git {
            doing: format!(
                "comparing {head} with branch {base} of {}",
                self.described()
            ),
            source,
        };
        let base_ref = format!("refs/heads/{base}");
        let base_id = self
            .repo
            .refname_to_id(&base_ref)
            .map_err(|source| GitError::Git {
                doing: format!("reading {base_ref} of {}", self.described()),
                source,
            })?;
        let old_tree = match self.repo.merge_base(base_id, head_commit.id()) {
            Ok(merge_base) => Some(
                self.repo
                    .find_commit(merge_base)
                    .and_then(|commit| commit.tree())
                    .map_err(git)?,
            ),
            Err(err) if err.code() == ErrorCode::NotFound => None,
            Err(err) => return Err(git(err)),
        };
        let new_tree = head_commit.tree().map_err(git)?;
        let files = self.diff(old_tree.as_ref(), &new_tree).map_err(git)?;
        Ok(ChangedFiles {
            files,
            rule: ChangeRule::MergeBase,
        })
    }

    /// The paths that differ between two trees (all of `new` without `old`), sorted, once each.
    fn diff(
        &self,
        old: Option<&git2::Tree<'_>>,
        new: &git2::Tree<'_>,
    ) -> Result<Vec<String>, git2::Error> {
        let diff = self.repo.diff_tree_to_tree(old, Some(new), None)?;
        let mut files: Vec<String> = diff
            .deltas()
            .flat_map(|delta| [delta.old_file().path_bytes(), delta.new_file().path_bytes()])
            .flatten()
            .map(|path| String::from_utf8_lossy(path).into_owned())
            .collect();
        files.sort_unstable();
        files.dedup();
        Ok(files)
    }

    /// Creates at `dest` (an empty or new directory) a git repository holding `commit` (a 40-hex
    /// id in the mirror, or a tag that points to one) as a shallow clone of that single commit,
    /// as Cloud Build gives triggered builds: HEAD detached at the commit, its files checked out
    /// with their executable bits and symlinks, and the repository's URL (without credentials)
    /// as `origin`, so `git fetch --unshallow` works where the network allows. `origin` is the
    /// trigger's URL rather than where the mirror fetched from, because steps run in containers
    /// where the host's mirror paths do not exist. Submodules are not checked out.
    ///
    /// On failure, what was written under `dest` is left for the caller to remove.
    pub fn checkout(&self, commit: &str, dest: &Path) -> Result<(), GitError> {
        let commit = self.commit(commit)?.id();
        if !is_empty_or_missing(dest)? {
            return Err(GitError::DestinationNotEmpty(dest.to_path_buf()));
        }
        let workspace = self
            .write_workspace(commit, dest)
            .map_err(|source| GitError::Git {
                doing: format!(
                    "checking out {commit} of {} into {}",
                    self.described(),
                    dest.display()
                ),
                source,
            })?;
        // What `git clone --depth 1` writes: the commit's parents are missing on purpose.
        let shallow = workspace.path().join("shallow");
        fs::write(&shallow, format!("{commit}\n")).map_err(|err| GitError::io(&shallow, err))
    }

    /// The commit a branch or tag (`refs/heads/NAME`, `refs/tags/NAME`) points to, or `None` if
    /// the repository has no such ref; a 40-hex commit id is checked to be in the mirror.
    pub fn resolve(&self, reference: &str) -> Result<Option<String>, GitError> {
        if !reference.starts_with("refs/") {
            return Ok(Some(self.commit(reference)?.id().to_string()));
        }
        let reading = |source| GitError::Git {
            doing: format!("reading {reference} of {}", self.described()),
            source,
        };
        match self.repo.find_reference(reference) {
            Ok(found) => Ok(Some(
                found.peel_to_commit().map_err(reading)?.id().to_string(),
            )),
            Err(err) if err.code() == ErrorCode::NotFound => Ok(None),
            Err(err) => Err(reading(err)),
        }
    }

    fn write_workspace(&self, commit: Oid, dest: &Path) -> Result<Repository, git2::Error> {
        let workspace = Repository::init(dest)?;
        let mut pack = self.repo.packbuilder()?;
        // The commit and its whole tree, none of its history.
        pack.insert_commit(commit)?;
        pack.write(&workspace.path().join("objects/pack"), 0)?;
        workspace.remote("origin", &self.url)?;
        workspace.set_head_detached(commit)?;
        workspace.checkout_head(Some(CheckoutBuilder::new().force()))?;
        Ok(workspace)
    }

    /// The commit `id` names (peeling a tag), which must be in the mirror.
    fn commit(&self, id: &str) -> Result<git2::Commit<'_>, GitError> {
        let oid = commit_id(id)?;
        let reading = |source| GitError::Git {
            doing: format!("reading commit {id} of {}", self.described()),
            source,
        };
        match self.repo.find_object(oid, None) {
            Ok(object) => object.peel_to_commit().map_err(reading),
            Err(err) if err.code() == ErrorCode::NotFound => Err(GitError::UnknownCommit {
                commit: id.to_owned(),
                url: self.described(),
            }),
            Err(err) => Err(reading(err)),
        }
    }

    fn described(&self) -> String {
        described(&self.url, &self.fetched_from)
    }
}

fn is_empty_or_missing(dir: &Path) -> Result<bool, GitError> {
    match fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(err) => Err(GitError::io(dir, err)),
    }
}

/// `url`, and where it was fetched from if a rewrite changed that.
fn described(url: &str, fetched_from: &str) -> String {
    if url == fetched_from {
        url.to_owned()
    } else {
        format!("{url} (fetched from {fetched_from})")
    }
}

/// Fetches every branch and tag of `url`, and every pull request's head, into the bare `repo`,
/// replacing what it had, reporting to `watch` and stopping when it says so.
fn fetch(repo: &Repository, url: &str, watch: &Watch) -> Result<(), git2::Error> {
    let mut proxy = ProxyOptions::new();
    proxy.auto();
    let mut callbacks = RemoteCallbacks::new();
    let (transfer, sideband) = (watch.clone(), watch.clone());
    callbacks
        .transfer_progress(move |_| transfer.report())
        .sideband_progress(move |_| sideband.report());
    let mut options = FetchOptions::new();
    options
        .proxy_options(proxy)
        .remote_callbacks(callbacks)
        .download_tags(AutotagOption::None)
        .update_fetchhead(false);
    repo.remote_anonymous(url)?.fetch(
        &[
            "+refs/heads/*:refs/heads/*",
            "+refs/tags/*:refs/tags/*",
            "+refs/pull/*/head:refs/pull/*/head",
        ],
        Some(&mut options),
        None,
    )
}

/// The id of a commit as GitHub sends it: exactly 40 hexadecimal digits (git2 would read a
/// shorter string as a prefix padded with zeros).
fn commit_id(id: &str) -> Result<Oid, GitError> {
    let not_an_id = || GitError::NotACommitId(id.to_owned());
    if id.len() != 40 || !id.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return Err(not_an_id());
    }
    Oid::from_str(id).map_err(|_| not_an_id())
}

/// `url` without the `user:password@` an `https://` URL may carry, so that credentials reach no
/// directory name, message or workspace.
fn without_credentials(url: &str) -> std::borrow::Cow<'_, str> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.into();
    };
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    match authority.rfind('@') {
        Some(at) => format!("{scheme}://{}", &rest[at + 1..]).into(),
        None => url.into(),
    }
}

/// The name of the directory `url` is mirrored in under `cache_dir`, once `rewrites` apply: how
/// a caller tells the mirrors in use from the others.
pub fn mirror_of(url: &str, rewrites: &Rewrites) -> String {
    mirror_name(&rewrites.apply(url))
}

/// The mirrors in `cache_dir` (none if it does not exist), each with when it was last updated:
/// its lock file's time, which every update rewrites, or else its directory's.
pub fn mirrors(cache_dir: &Path) -> Result<Vec<(String, SystemTime)>, GitError> {
    let entries = match fs::read_dir(cache_dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(GitError::io(cache_dir, err)),
    };
    let mut mirrors = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|err| GitError::io(cache_dir, err))?;
        let path = entry.path();
        let file_name = entry.file_name();
        let (Some(name), true) = (file_name.to_str(), path.is_dir()) else {
            continue;
        };
        let modified = fs::metadata(cache_dir.join(format!("{name}.lock")))
            .or_else(|_| entry.metadata())
            .and_then(|metadata| metadata.modified())
            .map_err(|err| GitError::io(&path, err))?;
        mirrors.push((name.to_string(), modified));
    }
    Ok(mirrors)
}

/// Removes the mirror `name` from `cache_dir` unless an update holds its lock: `false` then (it
/// is in use; a later look may remove it). Its lock file stays: removed, a fetch that opened it
/// before and one that made a new one after would both hold "the" lock of a new mirror.
pub fn remove_mirror(cache_dir: &Path, name: &str) -> Result<bool, GitError> {
    let lock_path = cache_dir.join(format!("{name}.lock"));
    let lock = File::create(&lock_path).map_err(|err| GitError::io(&lock_path, err))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => return Ok(false),
        Err(fs::TryLockError::Error(err)) => return Err(GitError::io(&lock_path, err)),
    }
    let path = cache_dir.join(name);
    fs::remove_dir_all(&path).map_err(|err| GitError::io(&path, err))?;
    Ok(true)
}

/// The longest readable part of a mirror's directory name.
const READABLE_NAME_LEN: usize = 64;

/// The directory name of the mirror of `url`: its readable part (scheme and credentials dropped,
/// anything but ASCII letters, digits, `.`, `-`, `_` replaced by `-`, at most its last
/// [`READABLE_NAME_LEN`] characters, never starting with `.`) and a hash of the whole URL, which
/// keeps different URLs apart and makes every name a plain file name.
fn mirror_name(url: &str) -> String {
    let credential_free = without_credentials(url);
    let readable = credential_free
        .split_once("://")
        .map_or(&*credential_free, |(_, rest)| rest);
    let sanitised: String = readable
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let tail = &sanitised[sanitised.len().saturating_sub(READABLE_NAME_LEN)..];
    let tail = tail.trim_start_matches(['.', '-']);
    let hash: String = Sha256::digest(url.as_bytes())[..8]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    if tail.is_empty() {
        hash
    } else {
        format!("{tail}-{hash}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrites(pairs: &[&str]) -> Rewrites {
        Rewrites::new(
            pairs
                .iter()
                .map(|pair| pair.parse().expect("valid rewrite")),
        )
    }

    #[test]
    fn rewrites_by_longest_prefix() {
        let rewrites = rewrites(&[
            "https://github.com/=/srv/mirrors/",
            "https://github.com/acme/=/srv/acme/",
            "git@github.com:=https://github.com/",
        ]);
        let cases = [
            (
                "https://github.com/other/app.git",
                "/srv/mirrors/other/app.git",
            ),
            ("https://github.com/acme/app.git", "/srv/acme/app.git"),
            ("git@github.com:x/y.git", "https://github.com/x/y.git"),
            ("https://gitlab.com/a/b.git", "https://gitlab.com/a/b.git"),
        ];
        for (url, expected) in cases {
            assert_eq!(rewrites.apply(url), expected, "{url}");
        }
    }

    #[test]
    fn of_equal_prefixes_the_last_rewrite_wins() {
        let rewrites = rewrites(&["https://h/=/first/", "https://h/=/last/"]);
        assert_eq!(rewrites.apply("https://h/r.git"), "/last/r.git");
    }

    #[test]
    fn rewrite_splits_at_the_first_equals_sign() {
        let rewrite: Rewrite = "https://h/=https://m/?a=b&".parse().expect("valid");
        assert_eq!(
            rewrite,
            Rewrite {
                from: "https://h/".into(),
                to: "https://m/?a=b&".into()
            }
        );
    }

    #[test]
    fn bad_rewrites_are_errors() {
        for (rewrite, expected) in [
            ("https://github.com/", "expected FROM=TO"),
            ("=/srv/mirrors/", "FROM is empty"),
        ] {
            let err = rewrite.parse::<Rewrite>().expect_err(rewrite);
            let message = err.to_string();
            assert!(
                message.contains(rewrite) && message.contains(expected),
                "{message}"
            );
        }
    }

    #[test]
    fn commit_ids_are_40_hex_digits() {
        let id = "0123456789abcdefABCDEF0123456789abcdef01";
        assert_eq!(commit_id(id).expect("valid").to_string(), id.to_lowercase());
        for bad in ["abc1234", &format!("{id}0"), &id.replace('0', "g"), ""] {
            let err = commit_id(bad).expect_err(bad);
            assert!(matches!(&err, GitError::NotACommitId(id) if id == bad));
        }
    }

    #[test]
    fn credentials_are_dropped() {
        let cases = [
            (
                "https://user:token@github.com/a/b.git",
                "https://github.com/a/b.git",
            ),
            (
                "https://github.com/a/b@v1.git",
                "https://github.com/a/b@v1.git",
            ),
            ("/srv/mirrors/a@b/c.git", "/srv/mirrors/a@b/c.git"),
        ];
        for (url, expected) in cases {
            assert_eq!(without_credentials(url), expected, "{url}");
        }
    }

    /// A mirror an update holds (its lock taken, as `Mirror::update` takes it) stays; once free
    /// it goes, and its lock file stays for the updates to come.
    #[test]
    fn a_mirror_is_removed_only_while_no_update_holds_it() {
        let cache = tempfile::tempdir().unwrap();
        let name = mirror_of("https://github.com/acme/app.git", &rewrites(&[]));
        Repository::init_bare(cache.path().join(&name)).unwrap();
        std::fs::write(cache.path().join("stray-file"), "").unwrap();
        let listed: Vec<String> = mirrors(cache.path())
            .unwrap()
            .into_iter()
            .map(|m| m.0)
            .collect();
        assert_eq!(listed, std::slice::from_ref(&name));

        let held = File::create(cache.path().join(format!("{name}.lock"))).unwrap();
        held.lock().unwrap();
        assert!(!remove_mirror(cache.path(), &name).unwrap());
        assert!(cache.path().join(&name).is_dir());
        drop(held);
        assert!(remove_mirror(cache.path(), &name).unwrap());
        assert!(!cache.path().join(&name).exists());
        assert!(cache.path().join(format!("{name}.lock")).is_file());
        assert!(mirrors(cache.path()).unwrap().is_empty());
        assert!(mirrors(&cache.path().join("none")).unwrap().is_empty());
    }

    #[test]
    fn mirror_names_are_readable_safe_and_distinct() {
        let name = mirror_name("https://user:token@github.com/acme/app.git");
        assert!(name.starts_with("github.com-acme-app.git-"), "{name}");
        assert!(!name.contains("token"), "{name}");

        let urls = [
            "https://github.com/acme/app.git",
            "https://github.com/acme-app.git",
            "../../etc",
            "/..",
            "..",
            "file:///srv/a b/ü.git",
            &format!("https://h/{}", "x".repeat(300)),
        ];
        let names: Vec<String> = urls.iter().map(|url| mirror_name(url)).collect();
        for (url, name) in urls.iter().zip(&names) {
            assert!(
                !name.starts_with('.')
                    && name.len() <= READABLE_NAME_LEN + 17
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')),
                "{url} → {name}"
            );
        }
        let mut distinct = names.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), names.len(), "{names:?}");
    }
}

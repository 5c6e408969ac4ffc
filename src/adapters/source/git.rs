//! The source of a triggered build, from git: URL rewrites (`--git-url-rewrite FROM=TO`), one
//! local bare mirror per repository in a cache directory, the files a push changed, and checking
//! out the pushed commit into a workspace. The only user of `git2`.
//!
//! Everything here blocks (git2 does network and disk I/O on the calling thread): async callers
//! run it in `spawn_blocking`.

use std::{
    fmt, fs,
    fs::File,
    io,
    path::{Path, PathBuf},
    str::FromStr,
};

use git2::{
    AutotagOption, ErrorCode, FetchOptions, Oid, ProxyOptions, Repository, build::CheckoutBuilder,
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
}

impl fmt::Display for ChangeRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChangeRule::Diff => "the files that differ between the push's before and after commits",
            ChangeRule::NewRef => "a new branch or tag: every file of the commit counts as changed",
            ChangeRule::BeforeUnknown => {
                "the push's before commit was never fetched: every file of the commit counts as changed"
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
    /// Fetches every branch and tag of `url` (after `rewrites`) into its mirror under
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
    pub fn update(cache_dir: &Path, url: &str, rewrites: &Rewrites) -> Result<Mirror, GitError> {
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
        lock.lock().map_err(|err| GitError::io(&lock_path, err))?;
        // Initialising an existing repository leaves it as it is, and completes one whose
        // creation was interrupted.
        let repo = Repository::init_bare(&path).map_err(git)?;
        fetch(&repo, &fetch_url).map_err(git)?;
        drop(lock);
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
        let diff = self
            .repo
            .diff_tree_to_tree(old_tree.as_ref(), Some(&new_tree), None)
            .map_err(git)?;
        let mut files: Vec<String> = diff
            .deltas()
            .flat_map(|delta| [delta.old_file().path_bytes(), delta.new_file().path_bytes()])
            .flatten()
            .map(|path| String::from_utf8_lossy(path).into_owned())
            .collect();
        files.sort_unstable();
        files.dedup();
        Ok(ChangedFiles { files, rule })
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

/// Fetches every branch and tag of `url` into the bare `repo`, replacing what it had.
fn fetch(repo: &Repository, url: &str) -> Result<(), git2::Error> {
    let mut proxy = ProxyOptions::new();
    proxy.auto();
    let mut options = FetchOptions::new();
    options
        .proxy_options(proxy)
        .download_tags(AutotagOption::None)
        .update_fetchhead(false);
    repo.remote_anonymous(url)?.fetch(
        &["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"],
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

//! A triggered build's source from git, against real repositories made with the git CLI: a bare
//! `origin` under a temporary "github.com" reached through a URL rewrite, and a working clone
//! that commits and pushes to it.

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::Barrier;

use builder::adapters::source::git::{ChangeRule, ChangedFiles, GitError, Mirror, Rewrites, Watch};
use common::git;
use tempfile::TempDir;

mod common;

const URL: &str = "https://github.com/acme/app.git";
const NULL_SHA: &str = "0000000000000000000000000000000000000000";

/// A bare origin at `<root>/github/acme/app.git`, a clone of it to push from, and a mirror cache.
struct Repo {
    root: TempDir,
    work: PathBuf,
}

impl Repo {
    /// The origin with one commit on `main`: files in a subdirectory, an executable and a symlink.
    fn new() -> Repo {
        let root = TempDir::new().expect("temp dir");
        let origin = root.path().join("github/acme/app.git");
        std::fs::create_dir_all(&origin).expect("mkdir origin");
        git(&origin, &["init", "--bare"]);
        let work = root.path().join("work");
        git(root.path(), &["clone", "-q", "github/acme/app.git", "work"]);
        let repo = Repo { root, work };
        repo.write("README.md", "hello\n");
        repo.write("src/main.rs", "fn main() {}\n");
        repo.write("old.txt", "to be deleted\n");
        repo.write(
            "moved.txt",
            &"a line long enough to be recognised\n".repeat(20),
        );
        repo.write("run.sh", "#!/bin/sh\necho hi\n");
        std::fs::set_permissions(
            repo.work.join("run.sh"),
            std::fs::Permissions::from_mode(0o755),
        )
        .expect("chmod");
        symlink("README.md", repo.work.join("link")).expect("symlink");
        repo.commit_and_push("first");
        repo
    }

    fn write(&self, path: &str, contents: &str) {
        let path = self.work.join(path);
        std::fs::create_dir_all(path.parent().expect("has a parent")).expect("mkdir");
        std::fs::write(path, contents).expect("write");
    }

    fn git(&self, args: &[&str]) -> String {
        git(&self.work, args)
    }

    /// Commits everything and pushes the current branch; returns the commit.
    fn commit_and_push(&self, message: &str) -> String {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", message]);
        self.git(&["push", "-q", "--force", "origin", "HEAD"]);
        self.git(&["rev-parse", "HEAD"])
    }

    fn cache(&self) -> PathBuf {
        self.root.path().join("cache")
    }

    fn rewrites(&self) -> Rewrites {
        let rewrite = format!(
            "https://github.com/={}/",
            self.root.path().join("github").display()
        );
        Rewrites::new([rewrite.parse().expect("valid rewrite")])
    }

    fn mirror(&self) -> Mirror {
        Mirror::update(&self.cache(), URL, &self.rewrites(), &Watch::default())
            .expect("mirror updates")
    }

    fn tracked_files(&self) -> Vec<String> {
        let mut files: Vec<String> = self.git(&["ls-files"]).lines().map(str::to_owned).collect();
        files.sort();
        files
    }
}

#[test]
fn an_ordinary_push_changes_what_it_modified_added_deleted_and_renamed() {
    let repo = Repo::new();
    let before = repo.git(&["rev-parse", "HEAD"]);
    repo.mirror();

    repo.write("src/main.rs", "fn main() { println!(\"hi\"); }\n");
    repo.write("new.txt", "added\n");
    repo.git(&["rm", "-q", "old.txt"]);
    std::fs::create_dir(repo.work.join("docs")).expect("mkdir");
    repo.git(&["mv", "moved.txt", "docs/moved.txt"]);
    let after = repo.commit_and_push("second");

    let changed = repo.mirror().changed_files(&before, &after).expect("diffs");
    assert_eq!(
        changed,
        ChangedFiles {
            files: [
                "docs/moved.txt",
                "moved.txt",
                "new.txt",
                "old.txt",
                "src/main.rs"
            ]
            .map(String::from)
            .to_vec(),
            rule: ChangeRule::Diff,
        }
    );
}

#[test]
fn a_new_branch_or_tag_changes_every_file() {
    let repo = Repo::new();
    repo.git(&["checkout", "-q", "-b", "feature"]);
    repo.write("feature.txt", "new\n");
    let after = repo.commit_and_push("feature");
    repo.git(&["tag", "-a", "v1.0.0", "-m", "release"]);
    repo.git(&["push", "-q", "origin", "v1.0.0"]);
    let tag = repo.git(&["rev-parse", "v1.0.0"]);
    assert_ne!(tag, after, "an annotated tag is an object of its own");

    let mirror = repo.mirror();
    for pushed in [&after, &tag] {
        let changed = mirror.changed_files(NULL_SHA, pushed).expect("lists");
        assert_eq!(changed.rule, ChangeRule::NewRef);
        assert_eq!(changed.files, repo.tracked_files());
    }
    // What a manual run of a branch or tag builds.
    for reference in ["refs/heads/feature", "refs/tags/v1.0.0", after.as_str()] {
        assert_eq!(
            mirror.resolve(reference).expect("resolves"),
            Some(after.clone())
        );
    }
    assert_eq!(mirror.resolve("refs/heads/nope").expect("looks"), None);
}

#[test]
fn a_force_push_whose_old_commit_was_never_fetched_changes_every_file() {
    let repo = Repo::new();
    let first = repo.git(&["rev-parse", "HEAD"]);
    repo.mirror();
    repo.write("lost.txt", "pushed, never fetched\n");
    let lost = repo.commit_and_push("lost");
    repo.git(&["reset", "-q", "--hard", &first]);
    repo.write("kept.txt", "replaces it\n");
    let after = repo.commit_and_push("rewritten");

    let changed = repo.mirror().changed_files(&lost, &after).expect("lists");
    assert_eq!(changed.rule, ChangeRule::BeforeUnknown);
    assert_eq!(changed.files, repo.tracked_files());
}

#[test]
fn an_unknown_commit_is_an_error_naming_it_and_the_url() {
    let repo = Repo::new();
    let head = repo.git(&["rev-parse", "HEAD"]);
    let mirror = repo.mirror();
    let unknown = "1234567890abcdef1234567890abcdef12345678";

    let err = mirror
        .changed_files(&head, unknown)
        .expect_err("unknown after");
    assert!(matches!(err, GitError::UnknownCommit { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains(unknown) && message.contains(URL),
        "{message}"
    );

    let dest = repo.root.path().join("workspace");
    let err = mirror.checkout(unknown, &dest).expect_err("unknown commit");
    assert!(matches!(err, GitError::UnknownCommit { .. }), "{err}");
    let err = mirror.checkout("main", &dest).expect_err("not an id");
    assert!(matches!(err, GitError::NotACommitId(_)), "{err}");
}

#[test]
fn checkout_writes_a_shallow_clone_of_the_commit() {
    let repo = Repo::new();
    repo.write("README.md", "hello again\n");
    let commit = repo.commit_and_push("second");
    let mirror = repo.mirror();

    let dest = repo.root.path().join("workspace");
    mirror.checkout(&commit, &dest).expect("checks out");

    let read = |path: &str| std::fs::read_to_string(dest.join(path)).expect("readable");
    assert_eq!(read("README.md"), "hello again\n");
    assert_eq!(read("src/main.rs"), "fn main() {}\n");
    let mode = std::fs::metadata(dest.join("run.sh"))
        .expect("exists")
        .permissions()
        .mode();
    assert_ne!(mode & 0o111, 0, "run.sh keeps its executable bit: {mode:o}");
    assert_eq!(
        std::fs::read_link(dest.join("link")).expect("a symlink"),
        Path::new("README.md")
    );

    assert_eq!(git(&dest, &["rev-parse", "HEAD"]), commit);
    assert_eq!(git(&dest, &["status", "--porcelain"]), "");
    assert_eq!(
        git(&dest, &["rev-parse", "--is-shallow-repository"]),
        "true"
    );
    assert_eq!(git(&dest, &["rev-list", "--count", "HEAD"]), "1");
    assert_eq!(git(&dest, &["remote", "get-url", "origin"]), URL);

    let err = mirror.checkout(&commit, &dest).expect_err("not empty");
    assert!(matches!(err, GitError::DestinationNotEmpty(_)), "{err}");
}

#[test]
fn concurrent_updates_of_one_mirror_both_succeed() {
    let repo = Repo::new();
    let head = repo.git(&["rev-parse", "HEAD"]);
    let url = format!(
        "file://{}",
        repo.root.path().join("github/acme/app.git").display()
    );
    let cache = repo.cache();
    let start = Barrier::new(2);
    std::thread::scope(|scope| {
        let updates: Vec<_> = (0..2)
            .map(|_| {
                scope.spawn(|| {
                    start.wait();
                    Mirror::update(&cache, &url, &Rewrites::default(), &Watch::default())
                })
            })
            .collect();
        for update in updates {
            let mirror = update.join().expect("no panic").expect("updates");
            let changed = mirror.changed_files(NULL_SHA, &head).expect("lists");
            assert_eq!(changed.files, repo.tracked_files());
        }
    });
}

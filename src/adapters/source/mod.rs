//! The source of a `builder submit`: which files of a directory are uploaded ([`list_files`]),
//! packing them into a deterministic `.tar.gz` ([`pack`]), and unpacking an uploaded archive
//! without letting it write outside its destination ([`unpack`]).
//!
//! File selection copies `gcloud builds submit`; the archive rules are ours. Unix only: modes and
//! symlinks are stored as such.

mod archive;
mod error;
pub mod git;
mod ignore;

use std::{
    fmt, fs,
    path::{Path, PathBuf},
};

pub use archive::{measure, pack, unpack};
pub use error::{Limit, SourceError};

use ignore::Rules;

/// The files an upload holds, and which ignore rules chose them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// Paths relative to the directory, `/`-separated, sorted. A directory with nothing listed
    /// under it ends in `/`.
    pub files: Vec<String>,
    pub rules: IgnoreRules,
}

/// Which ignore rules applied, for telling the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IgnoreRules {
    /// Patterns read from this file: `--ignore-file`, or the directory's `.gcloudignore`.
    File(PathBuf),
    /// No `.gcloudignore` in a git checkout: gcloud's generated default, which ignores
    /// `.gcloudignore`, `.git` and `.gitignore`, plus the patterns of `.gitignore` when there is
    /// one.
    GeneratedDefault { includes_gitignore: bool },
    /// No ignore file and no git files: everything is uploaded.
    Everything,
}

impl fmt::Display for IgnoreRules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IgnoreRules::File(path) => write!(f, "using {}", path.display()),
            IgnoreRules::GeneratedDefault {
                includes_gitignore: true,
            } => f.write_str("no .gcloudignore: using the default generated from .gitignore"),
            IgnoreRules::GeneratedDefault {
                includes_gitignore: false,
            } => {
                f.write_str("no .gcloudignore: using the default for git checkouts (ignores .git)")
            }
            IgnoreRules::Everything => f.write_str("no ignore file: uploading everything"),
        }
    }
}

/// How much an uploaded archive may unpack to: `builder serve`'s `maxUploadBytes` and
/// `maxUploadEntries`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of regular files' contents, in all.
    pub bytes: u64,
    /// Entries of any kind, directories included.
    pub entries: u64,
}

impl Default for Limits {
    /// 4 GiB in 100,000 entries: more than a source tree needs, less than fills a disk.
    fn default() -> Self {
        Limits {
            bytes: 4 << 30,
            entries: 100_000,
        }
    }
}

/// What an archive holds: `files` counts everything but directories (regular files, symlinks, hard
/// links), `bytes` the regular files' contents before compression (gcloud's "N file(s) totalling
/// X").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArchiveSummary {
    pub files: u64,
    pub bytes: u64,
}

/// What [`pack`] wrote.
pub type PackSummary = ArchiveSummary;
/// What [`unpack`] extracted.
pub type UnpackSummary = ArchiveSummary;

/// Files `builder submit` would upload from `dir`, with the rules `gcloud builds submit` uses:
/// * `ignore_file` if given (relative to `dir`, or absolute); it is an error if it does not exist;
/// * else `dir/.gcloudignore`;
/// * else, if `dir` has `.git` or `.gitignore`, gcloud's generated default (ignores
///   `.gcloudignore`, `.git`, `.gitignore` and `#!include:.gitignore`); it is not written to disk,
///   as `gcloud builds submit` does not;
/// * else everything.
///
/// Patterns use gcloud's gitignore dialect (see the `ignore` module) with negation and
/// `#!include:FILE` (a file next to the ignore file, one level deep). An ignored directory is not
/// entered, so nothing under it can be re-included. Symlinks are listed, never followed: one to a
/// directory matches `dir/` patterns as gcloud does, and a dangling one is skipped as gcloud does.
/// Sockets, FIFOs and devices are skipped. gcloud uploads every directory; only those with nothing
/// listed under them need their own entry, listed with a trailing `/`.
pub fn list_files(dir: &Path, ignore_file: Option<&Path>) -> Result<Listing, SourceError> {
    let (rules, applied) = Rules::for_dir(dir, ignore_file)?;
    let mut files = Vec::new();
    collect(dir, "", &rules, &mut files)?;
    files.sort_unstable();
    Ok(Listing {
        files,
        rules: applied,
    })
}

/// Whether the ignore file `text` ignores each of `paths` (relative, `/`-separated, each with
/// whether it is a directory), its `#!include:` lines checked but not followed: the rules and
/// their matcher without a directory to walk. The fuzzer drives this (through [`list_files`]
/// nearly all the time went to the file system).
pub fn ignored_by(text: &str, paths: &[(&str, bool)]) -> Result<Vec<bool>, SourceError> {
    let rules = Rules::parse(text, Path::new(".gcloudignore"), Path::new(""), false)?;
    Ok(paths
        .iter()
        .map(|&(path, is_dir)| rules.is_ignored(path, is_dir))
        .collect())
}

/// Appends what is uploaded from `root/rel` to `out`; returns whether it appended anything.
fn collect(
    root: &Path,
    rel: &str,
    rules: &Rules,
    out: &mut Vec<String>,
) -> Result<bool, SourceError> {
    let dir = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    };
    let listed_before = out.len();
    for entry in fs::read_dir(&dir).map_err(|err| SourceError::io(&dir, err))? {
        let entry = entry.map_err(|err| SourceError::io(&dir, err))?;
        let path = entry.path();
        let Ok(name) = entry.file_name().into_string() else {
            return Err(SourceError::NonUtf8Name(path));
        };
        let rel_path = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        let file_type = entry
            .file_type()
            .map_err(|err| SourceError::io(&path, err))?;
        if file_type.is_dir() {
            if !rules.is_ignored(&rel_path, true) && !collect(root, &rel_path, rules, out)? {
                out.push(format!("{rel_path}/"));
            }
        } else if file_type.is_symlink() {
            if let Ok(target) = fs::metadata(&path)
                && !rules.is_ignored(&rel_path, target.is_dir())
            {
                out.push(rel_path);
            }
        } else if file_type.is_file() && !rules.is_ignored(&rel_path, false) {
            out.push(rel_path);
        }
    }
    Ok(out.len() > listed_before)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use tempfile::TempDir;

    #[test]
    fn ignored_by_judges_paths_without_a_directory() {
        let text = "*.log\n!keep.log\nbuild/\n#!include:.gitignore\n";
        let paths = [
            ("a.log", false),
            ("keep.log", false),
            ("build", true),
            ("build", false),
        ];
        let ignored = ignored_by(text, &paths).expect("includes are not followed");
        assert_eq!(ignored, [true, false, true, false]);
        assert!(ignored_by("#!include:../x\n", &paths).is_err());
    }

    /// `(path, contents)` pairs for [`tree`].
    pub(crate) type Tree<'a> = &'a [(&'a str, &'a str)];

    /// Creates a tree: a path ending in `/` is a directory, contents `-> target` make a symlink,
    /// anything else a file with those contents. Parents are created as needed.
    pub(crate) fn tree(entries: Tree<'_>) -> TempDir {
        let root = TempDir::new().expect("temp dir");
        for &(path, contents) in entries {
            let full = root.path().join(path);
            if path.ends_with('/') {
                fs::create_dir_all(&full).expect("mkdir");
                continue;
            }
            fs::create_dir_all(full.parent().expect("has a parent")).expect("mkdir parent");
            match contents.strip_prefix("-> ") {
                Some(target) => symlink(target, &full).expect("symlink"),
                None => fs::write(&full, contents).expect("write"),
            }
        }
        root
    }

    struct Case {
        name: &'static str,
        tree: Tree<'static>,
        ignore_file: Option<&'static str>,
        expected: &'static [&'static str],
    }

    const CASES: &[Case] = &[
        Case {
            name: "no ignore file: everything, hidden files included",
            tree: &[
                ("a.txt", ""),
                (".env", ""),
                ("src/main.rs", ""),
                ("src/deep/x.rs", ""),
            ],
            ignore_file: None,
            expected: &[".env", "a.txt", "src/deep/x.rs", "src/main.rs"],
        },
        Case {
            name: "a pattern without a slash matches at any depth",
            tree: &[
                (".gcloudignore", "*.log\n"),
                ("a.log", ""),
                ("src/b.log", ""),
                ("src/c.rs", ""),
            ],
            ignore_file: None,
            expected: &[".gcloudignore", "src/c.rs"],
        },
        Case {
            name: "negation re-includes a file",
            tree: &[
                (".gcloudignore", "*.log\n!keep.log\n"),
                ("a.log", ""),
                ("keep.log", ""),
                ("d/keep.log", ""),
            ],
            ignore_file: None,
            expected: &[".gcloudignore", "d/keep.log", "keep.log"],
        },
        Case {
            name: "#!include:.gitignore adds its patterns",
            tree: &[
                (".gcloudignore", ".gcloudignore\n#!include:.gitignore\n"),
                (".gitignore", "secret\n"),
                ("secret", ""),
                ("d/secret", ""),
                ("ok", ""),
            ],
            ignore_file: None,
            expected: &[".gitignore", "d/", "ok"],
        },
        Case {
            name: "a trailing slash matches directories only, at any depth",
            tree: &[
                (".gcloudignore", "build/\n"),
                ("build/out.o", ""),
                ("src/build", ""),
                ("src/x/build/y", ""),
            ],
            ignore_file: None,
            expected: &[".gcloudignore", "src/build", "src/x/"],
        },
        Case {
            name: "a leading slash anchors to the top",
            tree: &[
                (".gcloudignore", "/out\n"),
                ("out/x", ""),
                ("src/out/y", ""),
            ],
            ignore_file: None,
            expected: &[".gcloudignore", "src/out/y"],
        },
        Case {
            name: "a slash in the middle matches at any depth, as in gcloud",
            tree: &[
                (".gcloudignore", "gen/code\n"),
                ("gen/code/a", ""),
                ("lib/gen/code/b", ""),
                ("gen/other", ""),
            ],
            ignore_file: None,
            expected: &[".gcloudignore", "gen/other", "lib/gen/"],
        },
        Case {
            name: "** patterns",
            tree: &[
                (".gcloudignore", "docs/**\n**/tmp\n"),
                ("docs/a", ""),
                ("docs/b/c", ""),
                ("x/tmp/y", ""),
                ("tmp", ""),
                ("keep", ""),
            ],
            ignore_file: None,
            expected: &[".gcloudignore", "keep", "x/"],
        },
        Case {
            name: "nothing under an ignored directory can be re-included",
            tree: &[
                (".gcloudignore", "vendor/\n!vendor/keep.txt\n"),
                ("vendor/keep.txt", ""),
                ("a", ""),
            ],
            ignore_file: None,
            expected: &[".gcloudignore", "a"],
        },
        Case {
            name: "dir/** ignores dir itself, so no re-include either",
            tree: &[
                (".gcloudignore", "vendor/**\n!vendor/keep.txt\n"),
                ("vendor/keep.txt", ""),
            ],
            ignore_file: None,
            expected: &[".gcloudignore"],
        },
        Case {
            name: "re-include works when only the contents are ignored",
            tree: &[
                (".gcloudignore", "vendor/*\n!vendor/keep.txt\n"),
                ("vendor/keep.txt", ""),
                ("vendor/x", ""),
            ],
            ignore_file: None,
            expected: &[".gcloudignore", "vendor/keep.txt"],
        },
        Case {
            name: ".gitignore only: the generated default includes it and drops git files",
            tree: &[
                (".gitignore", "*.o\n"),
                (".git/HEAD", ""),
                (".git/objects/ab", ""),
                ("a.o", ""),
                ("a.c", ""),
                ("sub/.git", "gitdir: ../.git/modules/sub"),
            ],
            ignore_file: None,
            expected: &["a.c", "sub/"],
        },
        Case {
            name: ".git only: the generated default without .gitignore",
            tree: &[(".git/HEAD", ""), ("a.o", ""), ("a.c", "")],
            ignore_file: None,
            expected: &["a.c", "a.o"],
        },
        Case {
            name: ".gcloudignore wins over the default",
            tree: &[
                (".gcloudignore", "a.o\n"),
                (".gitignore", "*.c\n"),
                (".git/HEAD", ""),
                ("a.o", ""),
                ("a.c", ""),
            ],
            ignore_file: None,
            expected: &[".gcloudignore", ".git/HEAD", ".gitignore", "a.c"],
        },
        Case {
            name: "--ignore-file relative to dir; its includes are next to it",
            tree: &[
                (".gcloudignore", "*\n"),
                ("conf/upload.ignore", "*.tmp\n#!include:extra\n"),
                ("conf/extra", "big/\n"),
                ("a.tmp", ""),
                ("big/blob", ""),
                ("main.go", ""),
            ],
            ignore_file: Some("conf/upload.ignore"),
            expected: &[
                ".gcloudignore",
                "conf/extra",
                "conf/upload.ignore",
                "main.go",
            ],
        },
        Case {
            name: "an included file's own includes are not followed",
            tree: &[
                (".gcloudignore", "#!include:one\n"),
                ("one", "a\n#!include:two\n"),
                ("two", "b\n"),
                ("b", ""),
            ],
            ignore_file: None,
            expected: &[".gcloudignore", "b", "one", "two"],
        },
        Case {
            name: "directories with nothing listed under them get a trailing slash, unless ignored",
            tree: &[
                (".gcloudignore", "ignored_empty/\n*.log\n"),
                ("empty/", ""),
                ("full/a", ""),
                ("ignored_empty/", ""),
                ("only_logs/x.log", ""),
            ],
            ignore_file: None,
            expected: &[".gcloudignore", "empty/", "full/a", "only_logs/"],
        },
        Case {
            name: "comments, blank lines, escapes and trailing spaces",
            tree: &[
                (".gcloudignore", "# comment\n\n\\#hash\nspace  \n\\!bang\n"),
                ("#hash", ""),
                ("space", ""),
                ("!bang", ""),
                ("# comment", ""),
                ("keep", ""),
            ],
            ignore_file: None,
            expected: &["# comment", ".gcloudignore", "keep"],
        },
        Case {
            name: "symlinks are listed, not followed; dangling ones are skipped",
            tree: &[
                ("target/a", ""),
                ("to_dir", "-> target"),
                ("to_file", "-> target/a"),
                ("dangling", "-> nowhere"),
            ],
            ignore_file: None,
            expected: &["target/a", "to_dir", "to_file"],
        },
        Case {
            name: "a symlink to a directory matches a directory pattern",
            tree: &[
                (".gcloudignore", "linked/\n"),
                ("target/a", ""),
                ("linked", "-> target"),
                ("file", "-> target/a"),
            ],
            ignore_file: None,
            expected: &[".gcloudignore", "file", "target/a"],
        },
    ];

    #[test]
    fn lists_files_like_gcloud() {
        for case in CASES {
            let root = tree(case.tree);
            let listing = list_files(root.path(), case.ignore_file.map(Path::new))
                .unwrap_or_else(|err| panic!("{}: {err}", case.name));
            assert_eq!(listing.files, case.expected, "{}", case.name);
        }
    }

    #[test]
    fn reports_which_rules_applied() {
        let cases: [(Tree<'_>, &str); 4] = [
            (&[(".gcloudignore", "")], "using {dir}/.gcloudignore"),
            (
                &[(".gitignore", "")],
                "no .gcloudignore: using the default generated from .gitignore",
            ),
            (
                &[(".git/HEAD", "")],
                "no .gcloudignore: using the default for git checkouts (ignores .git)",
            ),
            (&[("a", "")], "no ignore file: uploading everything"),
        ];
        for (entries, expected) in cases {
            let root = tree(entries);
            let listing = list_files(root.path(), None).expect("lists");
            let expected = expected.replace("{dir}", &root.path().display().to_string());
            assert_eq!(listing.rules.to_string(), expected);
        }
    }

    #[test]
    fn absolute_ignore_file_includes_from_its_own_directory() {
        let rules_dir = tree(&[("upload.ignore", "#!include:more\n"), ("more", "*.bin\n")]);
        let root = tree(&[("a.bin", ""), ("a.txt", "")]);
        let ignore_file = rules_dir.path().join("upload.ignore");
        let listing = list_files(root.path(), Some(&ignore_file)).expect("lists");
        assert_eq!(listing.files, ["a.txt"]);
        assert_eq!(listing.rules, IgnoreRules::File(ignore_file));
    }

    #[test]
    fn a_name_that_is_not_utf8_is_an_error() {
        use std::{ffi::OsStr, os::unix::ffi::OsStrExt};
        let root = tree(&[("ok", "")]);
        let bad = root.path().join(OsStr::from_bytes(b"caf\xe9"));
        fs::write(&bad, "").expect("write");
        let err = list_files(root.path(), None).expect_err("not UTF-8");
        assert!(
            matches!(&err, SourceError::NonUtf8Name(path) if *path == bad),
            "{err}"
        );
    }

    #[test]
    fn bad_ignore_files_are_errors() {
        let cases: [(Tree<'_>, Option<&str>, &str); 3] = [
            (
                &[("a", "")],
                Some("missing.ignore"),
                "missing.ignore: file not found",
            ),
            (
                &[(".gcloudignore", "#!include:sub/x\n")],
                None,
                "only files in the same directory can be included",
            ),
            (
                &[(".gcloudignore", "#!include:.gitignore\n")],
                None,
                ".gitignore: file not found",
            ),
        ];
        for (entries, ignore_file, expected) in cases {
            let root = tree(entries);
            let err = list_files(root.path(), ignore_file.map(Path::new)).expect_err("should fail");
            assert!(
                err.to_string().contains(expected),
                "{err} should contain {expected:?}"
            );
        }
    }
}

//! gcloud's `.gcloudignore` dialect: choosing the rules for a directory, and deciding whether a
//! path is ignored.
//!
//! This reimplements gcloud's own matcher (`command_lib/util/gcloudignore.py` and `glob.py`)
//! instead of using the `ignore` crate, because gcloud's rules are not git's and the differences
//! change what gets uploaded:
//! * a pattern with a slash in the middle (`src/gen`) matches at any depth (git anchors it to the
//!   root);
//! * `dir/**` matches `dir` itself too, so nothing under it can be re-included;
//! * backslash escapes are removed before globbing, so `\*` is still a wildcard (`[*]` is the
//!   literal star);
//! * each path component is matched like Python's `fnmatch` (`*`, `?`, `[a-z]`, `[!a-z]`; a lone
//!   `[` is literal).
//!
//! Lines that gcloud silently drops (blank, or ending in an odd number of backslashes) are dropped
//! here too.

use std::{
    collections::HashMap,
    fs, io,
    path::{Path, PathBuf},
};

use super::{IgnoreRules, SourceError};

const GCLOUDIGNORE: &str = ".gcloudignore";
const INCLUDE_DIRECTIVE: &str = "!include:";
/// The patterns gcloud generates for a git checkout that has no `.gcloudignore`.
const GENERATED_DEFAULT: &str = ".gcloudignore\n.git\n.gitignore\n";

/// An ordered list of patterns; the last one matching a path decides.
pub(super) struct Rules {
    patterns: Vec<Pattern>,
}

impl Rules {
    /// Chooses the rules for `dir` the way `gcloud builds submit` does (see [`super::list_files`]).
    pub(super) fn for_dir(
        dir: &Path,
        ignore_file: Option<&Path>,
    ) -> Result<(Rules, IgnoreRules), SourceError> {
        if let Some(file) = ignore_file {
            // `join` keeps an absolute `file` as is.
            let path = dir.join(file);
            // gcloud quietly falls back to the defaults when `--ignore-file` is missing; a flag
            // that silently does nothing uploads files the user meant to exclude, so it is an error
            // here.
            let rules = Rules::read(&path, true)?.ok_or_else(|| not_found(&path))?;
            return Ok((rules, IgnoreRules::File(path)));
        }
        let path = dir.join(GCLOUDIGNORE);
        if let Some(rules) = Rules::read(&path, true)? {
            return Ok((rules, IgnoreRules::File(path)));
        }
        let has_gitignore = dir.join(".gitignore").exists();
        if !has_gitignore && !dir.join(".git").exists() {
            return Ok((
                Rules {
                    patterns: Vec::new(),
                },
                IgnoreRules::Everything,
            ));
        }
        let mut text = GENERATED_DEFAULT.to_owned();
        if has_gitignore {
            text.push_str("#!include:.gitignore\n");
        }
        let rules = Rules::parse(&text, &path, dir, true)?;
        Ok((
            rules,
            IgnoreRules::GeneratedDefault {
                includes_gitignore: has_gitignore,
            },
        ))
    }

    /// Whether `path` (relative, `/`-separated, its parents already known not to be ignored) is
    /// ignored.
    pub(super) fn is_ignored(&self, path: &str, is_dir: bool) -> bool {
        let components: Vec<&str> = path.split('/').collect();
        self.patterns
            .iter()
            .rev()
            .find(|pattern| pattern.matches(&components, is_dir))
            .is_some_and(|p| !p.negated)
    }

    /// Reads the ignore file at `path`, or `None` if there is none.
    fn read(path: &Path, follow_includes: bool) -> Result<Option<Rules>, SourceError> {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => {
                return Err(SourceError::IgnoreFile {
                    path: path.to_path_buf(),
                    reason: err.to_string(),
                });
            }
        };
        let base = path.parent().unwrap_or(Path::new(""));
        Rules::parse(&text, path, base, follow_includes).map(Some)
    }

    /// Parses ignore-file text; `#!include:NAME` reads `base/NAME`, one level deep as in gcloud.
    pub(super) fn parse(
        text: &str,
        origin: &Path,
        base: &Path,
        follow_includes: bool,
    ) -> Result<Rules, SourceError> {
        let mut patterns = Vec::new();
        // Python's `splitlines` boundaries, so a file with bare `\r` line ends reads as in gcloud.
        for line in text.split(is_line_break) {
            let Some(comment) = line.strip_prefix('#') else {
                patterns.extend(Pattern::parse(line));
                continue;
            };
            let Some(name) = comment.trim_start().strip_prefix(INCLUDE_DIRECTIVE) else {
                continue;
            };
            // gcloud checks this even where it does not follow the include.
            if name.contains('/') {
                return Err(SourceError::IgnoreFile {
                    path: origin.to_path_buf(),
                    reason: format!("`{line}`: only files in the same directory can be included"),
                });
            }
            if follow_includes {
                let included = base.join(name);
                let rules = Rules::read(&included, false)?.ok_or_else(|| not_found(&included))?;
                patterns.extend(rules.patterns);
            }
        }
        Ok(Rules { patterns })
    }
}

fn is_line_break(c: char) -> bool {
    matches!(
        c,
        '\n' | '\r' | '\x0b' | '\x0c' | '\x1c'..='\x1e' | '\u{85}' | '\u{2028}' | '\u{2029}'
    )
}

fn not_found(path: &Path) -> SourceError {
    SourceError::IgnoreFile {
        path: PathBuf::from(path),
        reason: "file not found".to_owned(),
    }
}

/// One pattern line. `anchored` stands for gcloud's empty first component (a leading `/`): whatever
/// the components do not consume must then be the root.
struct Pattern {
    negated: bool,
    dir_only: bool,
    anchored: bool,
    parts: Vec<Part>,
}

enum Part {
    /// `**`: anchors the parts before it and swallows any number of components.
    AnyDepth,
    /// Exactly `*`: as the first component of an unanchored pattern it must not have anything
    /// before it.
    Star,
    Glob(Vec<Token>),
}

impl Pattern {
    /// Parses one non-comment line, in gcloud's order of steps; `None` for a line gcloud skips.
    fn parse(line: &str) -> Option<Pattern> {
        let (negated, line) = line
            .strip_prefix('!')
            .map_or((false, line), |rest| (true, rest));
        // The trailing slash is taken before trailing spaces are trimmed, so `dir/ ` is not a
        // directory pattern.
        let (dir_only, line) = line
            .strip_suffix('/')
            .map_or((false, line), |rest| (true, rest));
        let line = trim_unescaped_trailing_spaces(line).replace("\\ ", " ");
        if line.chars().rev().take_while(|&c| c == '\\').count() % 2 == 1 {
            return None;
        }
        let glob = unescape(&line);
        if glob.is_empty() {
            return None;
        }
        let (anchored, glob) = glob
            .strip_prefix('/')
            .map_or((false, glob.as_str()), |rest| (true, rest));
        let parts = glob.split('/').map(Part::parse).collect();
        Some(Pattern {
            negated,
            dir_only,
            anchored,
            parts,
        })
    }

    fn matches(&self, path: &[&str], is_dir: bool) -> bool {
        (is_dir || !self.dir_only) && match_parts(&self.parts, path, self.anchored)
    }
}

impl Part {
    fn parse(text: &str) -> Part {
        match text {
            "**" => Part::AnyDepth,
            "*" => Part::Star,
            _ => Part::Glob(compile(text)),
        }
    }
}

/// Matches `parts` against the end of `path`, right to left, as gcloud's `Glob._MatchesHelper`
/// does.
fn match_parts(parts: &[Part], path: &[&str], anchored: bool) -> bool {
    let mut matcher = PartsMatcher {
        parts,
        path,
        any_depth: HashMap::new(),
    };
    matcher.matches(parts.len(), Some(path.len()), anchored)
}

/// One pattern's match against one path, in which each `**` tries every depth: what a `**` gave
/// for a depth is remembered, since without that memory each further `**` would try the ones
/// before it again (a line of 500 `**/` took 20 s against a three-level path; the fuzzer found it).
struct PartsMatcher<'a> {
    parts: &'a [Part],
    path: &'a [&'a str],
    /// By (parts left, depth, anchored): the answer of the `**` last among those parts.
    any_depth: HashMap<(usize, usize, bool), bool>,
}

impl PartsMatcher<'_> {
    /// Whether the first `parts` parts match the path's first `depth` components; `None` is
    /// "above the root": reached after the root itself was consumed.
    fn matches(&mut self, parts: usize, depth: Option<usize>, anchored: bool) -> bool {
        let Some(rest) = parts.checked_sub(1) else {
            return !anchored || depth == Some(0);
        };
        let Some(depth) = depth else {
            return false;
        };
        // Like Python's `os.path.split`, the root splits into an empty name and nothing above it.
        let (parent, name) = match depth.checked_sub(1) {
            Some(parent) => (Some(parent), self.path[parent]),
            None => (None, ""),
        };
        match &self.parts[rest] {
            Part::AnyDepth => {
                if let Some(&known) = self.any_depth.get(&(parts, depth, anchored)) {
                    return known;
                }
                let matched = (0..=depth).any(|len| self.matches(rest, Some(len), true));
                self.any_depth.insert((parts, depth, anchored), matched);
                matched
            }
            Part::Star => {
                // `*/bar` matches `foo/bar` but not `a/foo/bar`. (gcloud tests the parent's
                // string length `> 1`, which lets a one-letter parent through; that slip is not
                // reproduced.)
                let spans_components = rest == 0 && !anchored && parent.is_some_and(|p| p > 0);
                !spans_components && self.matches(rest, parent, anchored)
            }
            Part::Glob(tokens) => fnmatch(tokens, name) && self.matches(rest, parent, anchored),
        }
    }
}

/// One element of an `fnmatch` pattern.
#[derive(PartialEq)]
enum Token {
    Char(char),
    AnyChar,
    Star,
    /// `[...]`; single characters are stored as one-character ranges.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl Token {
    fn matches(&self, c: char) -> bool {
        match self {
            Token::Char(expected) => *expected == c,
            Token::AnyChar | Token::Star => true,
            Token::Class { negated, ranges } => {
                ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated
            }
        }
    }
}

/// Compiles one path component's pattern the way Python's `fnmatch.translate` reads it.
fn compile(pattern: &str) -> Vec<Token> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        let token = match c {
            '*' if tokens.last() == Some(&Token::Star) => continue,
            '*' => Token::Star,
            '?' => Token::AnyChar,
            '[' => match compile_class(&chars[i..]) {
                Some((class, len)) => {
                    i += len;
                    class
                }
                None => Token::Char('['),
            },
            _ => Token::Char(c),
        };
        tokens.push(token);
    }
    tokens
}

/// Compiles the class after a `[`, returning it and how many characters it used; `None` if it is
/// not closed.
fn compile_class(chars: &[char]) -> Option<(Token, usize)> {
    let negated = chars.first() == Some(&'!');
    let start = usize::from(negated);
    // A `]` right after `[` or `[!` is a member, not the end.
    let end = start + 1 + chars.get(start + 1..)?.iter().position(|&c| c == ']')?;
    let members = &chars[start..end];
    let mut ranges = Vec::new();
    let mut k = 0;
    while k < members.len() {
        if k + 2 < members.len() && members[k + 1] == '-' {
            // A reversed range such as `z-a` matches nothing, as in Python.
            ranges.push((members[k], members[k + 2]));
            k += 3;
        } else {
            ranges.push((members[k], members[k]));
            k += 1;
        }
    }
    Some((Token::Class { negated, ranges }, end + 1))
}

/// Whether `name` matches `tokens` entirely; a `*` backtracks only to the latest star, which is
/// enough for single-character tokens and keeps this linear-ish on hostile patterns.
fn fnmatch(tokens: &[Token], name: &str) -> bool {
    let name: Vec<char> = name.chars().collect();
    let (mut t, mut n) = (0, 0);
    let mut resume: Option<(usize, usize)> = None;
    while n < name.len() {
        match tokens.get(t) {
            Some(Token::Star) => {
                resume = Some((t + 1, n));
                t += 1;
            }
            Some(token) if token.matches(name[n]) => {
                t += 1;
                n += 1;
            }
            _ => match resume {
                Some((after_star, from)) => {
                    resume = Some((after_star, from + 1));
                    t = after_star;
                    n = from + 1;
                }
                None => return false,
            },
        }
    }
    tokens[t..].iter().all(|token| *token == Token::Star)
}

/// Drops trailing spaces that are not escaped; a backslash and the character after it count as one
/// unit.
fn trim_unescaped_trailing_spaces(line: &str) -> &str {
    let mut end = 0;
    let mut chars = line.char_indices();
    while let Some((i, c)) = chars.next() {
        if c == '\\' {
            end = chars
                .next()
                .map_or(line.len(), |(j, escaped)| j + escaped.len_utf8());
        } else if c != ' ' {
            end = i + c.len_utf8();
        }
    }
    &line[..end]
}

/// gcloud's unescaping: `\x` becomes `x` for any `x` but a backslash, then each `\\` becomes `\`.
fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match chars.peek() {
            Some(&next) if c == '\\' && next != '\\' => {
                out.push(next);
                chars.next();
            }
            _ => out.push(c),
        }
    }
    out.replace("\\\\", "\\")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (pattern line, path, is_dir, matches): gcloud's documented behaviour, mostly from its own
    /// glob tests.
    const CASES: &[(&str, &str, bool, bool)] = &[
        ("foo", "foo", false, true),
        ("foo", "bar/foo", false, true),
        ("foo", "foo/bar", false, false),
        ("foo", "foobar", false, false),
        // A slash in the middle does not anchor: gcloud differs from git here.
        ("bar/baz", "foo/bar/baz", false, true),
        ("bar/baz", "foo/baz", false, false),
        ("foo/ba[rz]", "foo/baz", false, true),
        ("foo/ba[rz]", "foo/bad", false, false),
        ("/foo/bar", "foo/bar", false, true),
        ("/bar/baz", "foo/bar/baz", false, false),
        ("/*", "foo", false, true),
        ("*/bar", "foo/bar", false, true),
        ("*/bar", "a/foo/bar", false, false),
        ("foo/", "foo", true, true),
        ("foo/", "foo", false, false),
        ("foo/bar/", "foo/bar", true, true),
        ("**/", "foo/bar", false, false),
        ("**/", "foo/bar", true, true),
        ("**/bar", "bar", false, true),
        ("**/bar", "foo/bar", false, true),
        ("**/bar/", "bar", false, false),
        ("/**", "foo/bar", false, true),
        ("foo/**", "foo", false, true),
        ("foo/**", "foo/bar", false, true),
        ("foo/**", "baz/foo/bar", false, false),
        ("foo/**/bar", "foo/baz/bar", false, true),
        ("foo/**/bar", "foo/bar", false, true),
        ("foo/**/", "baz/foo/bar", true, false),
        ("foo*baz", "foobarbaz", false, true),
        ("foo*baz", "foobaz", false, true),
        ("foo/*baz", "foo/bar/baz", false, false),
        ("foo**", "foo-", false, true),
        ("**bar", "-bar-", false, false),
        ("foo?baz", "foo-baz", false, true),
        ("foo?baz", "foo--baz", false, false),
        ("foo-[A-C]", "foo-C", false, true),
        ("foo-[A-C]", "foo-D", false, false),
        ("foo-[!ab]", "foo-a", false, false),
        ("foo-[!ab]", "foo-c", false, true),
        ("foo[*]*bar", "foo*baz-bar", false, true),
        ("foo[*]*bar", "foobaz-bar", false, false),
        ("foo[[]", "foo[", false, true),
        ("foo[", "foo[", false, true),
        ("foo[", "foox", false, false),
        ("foo]", "foo]", false, true),
        ("[]a]", "]", false, true),
        ("[z-a]", "m", false, false),
        ("\\#foo", "#foo", false, true),
        ("foo\\#bar", "foo#bar", false, true),
        ("\\!foo", "!foo", false, true),
        // The escape is gone before globbing, so `\*` is a wildcard.
        ("a\\*", "abc", false, true),
        ("foo ", "foo", false, true),
        ("foo ", "foo ", false, false),
        ("foo\\ ", "foo ", false, true),
        (" foo", " foo", false, true),
        (" foo", "foo", false, false),
        ("foo\t", "foo\t", false, true),
        ("foo/ ", "foo", true, false),
    ];

    #[test]
    fn patterns_match_like_gcloud() {
        for &(line, path, is_dir, expected) in CASES {
            let pattern = Pattern::parse(line);
            let components: Vec<&str> = path.split('/').collect();
            let matched = pattern.is_some_and(|p| p.matches(&components, is_dir));
            assert_eq!(
                matched, expected,
                "pattern {line:?} on {path:?} (dir: {is_dir})"
            );
        }
    }

    #[test]
    fn skips_lines_gcloud_skips() {
        for line in ["", "   ", "!", "/", "foo\\", "foo\\\\\\"] {
            assert!(Pattern::parse(line).is_none(), "{line:?} should be skipped");
        }
        assert!(Pattern::parse("foo\\\\").is_some());
    }

    #[test]
    fn last_matching_pattern_wins_with_any_line_ends() {
        let rules = Rules::parse(
            "*.log\r\n!keep.log\rkeep.log/\n",
            Path::new("x"),
            Path::new("."),
            false,
        );
        let rules = rules.expect("no includes to fail");
        assert!(rules.is_ignored("a.log", false));
        assert!(!rules.is_ignored("keep.log", false));
        assert!(rules.is_ignored("keep.log", true));
        assert!(!rules.is_ignored("a.txt", false));
    }

    /// Many `**` in one line (found by the fuzzer: 20 s for one line of 500 before they were
    /// remembered) match as one does.
    #[test]
    fn any_depth_backtracking_stays_fast() {
        let line = format!("j/{}x", "**/".repeat(500));
        let pattern = Pattern::parse(&line).unwrap();
        assert!(!pattern.matches(&["a", "b", "c"], false));
        assert!(pattern.matches(&["j", "a", "b", "x"], false));
        assert!(pattern.matches(&["j", "x"], false));
        // The parts before a `**` are anchored to the root.
        assert!(!pattern.matches(&["a", "j", "b", "x"], false));
    }

    #[test]
    fn star_backtracking_stays_fast() {
        let tokens = compile("*a*a*a*a*a*a*a*a*b");
        assert!(!fnmatch(&tokens, &"a".repeat(200)));
    }
}

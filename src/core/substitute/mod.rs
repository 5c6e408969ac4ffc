//! Substitution engine (spec §4): built-in names, key rules, the template scanner behind both
//! [`references`] and [`expand`], and dependency-ordered resolution of dynamic values.
//!
//! Scanning follows cloud-build-local (spec §4.3): `$$` is a literal `$`, `$KEY` takes the longest
//! `[A-Z_][A-Z0-9_]*` run, `${KEY}` must close right after the key, and any other `$` stays literal.
//! With dynamic substitutions a braced reference may carry a bash operator (see `bash.rs`).
//!
//! Decisions on points the spec leaves open (§4.6, §13.1):
//! * Dynamic values are expanded like templates: `$$` becomes `$` (as drone/envsubst does) and a
//!   bare `$KEY` expands anywhere in the value, not only at its start as in cloud-build-local.
//! * In dynamic mode a `${KEY` that is not followed by `}` or a known operator is an error instead of
//!   literal text; `${` followed by something other than a key (`${foo}`, `${1}`) stays literal.
//! * A resolved value longer than 4000 bytes (the service's value limit) is rejected, as
//!   cloud-build-local rejects it.

mod bash;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;

/// Substitution values by key.
pub type Values = BTreeMap<String, String>;

/// Every built-in substitution name Cloud Build defines (spec §4.1).
pub const BUILT_INS: &[&str] = &[
    "PROJECT_ID",
    "BUILD_ID",
    "PROJECT_NUMBER",
    "LOCATION",
    "TRIGGER_NAME",
    "COMMIT_SHA",
    "REVISION_ID",
    "SHORT_SHA",
    "REPO_NAME",
    "REPO_FULL_NAME",
    "BRANCH_NAME",
    "TAG_NAME",
    "REF_NAME",
    "TRIGGER_BUILD_CONFIG_PATH",
    "SERVICE_ACCOUNT_EMAIL",
    "SERVICE_ACCOUNT",
];

/// Longest value a substitution may resolve to (spec §2.3).
const MAX_VALUE_BYTES: usize = 4000;
/// Longest text one field may expand to. Cloud Build's own field limits are far below it (an arg
/// is at most 10,000 characters); it is here so that a short template (`$_A$_A…`, `${_A//?/$_A}`)
/// cannot make the expansion itself exhaust memory.
pub const MAX_FIELD_BYTES: usize = 1 << 20;
/// Deepest nesting of `${…}` inside operator arguments; bounds the parser's recursion.
const MAX_DEPTH: usize = 32;

/// Built-ins a manual build may override with `--substitutions`: all but `PROJECT_ID` and `BUILD_ID`.
pub fn is_overridable_built_in(key: &str) -> bool {
    is_built_in(key) && key != "PROJECT_ID" && key != "BUILD_ID"
}

pub fn is_built_in(key: &str) -> bool {
    BUILT_INS.contains(&key)
}

/// `^_[A-Z0-9_]+$`
pub fn is_user_key(key: &str) -> bool {
    key.strip_prefix('_').is_some_and(|rest| {
        !rest.is_empty()
            && rest
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    })
}

/// A reference found in a template: the key, and the byte range of the whole reference
/// (`$KEY`, `${KEY}`, or in dynamic mode `${KEY<op>}`) in the template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub key: String,
    pub span: Range<usize>,
}

/// All references in a template, in order of their start. In dynamic mode this includes the keys
/// used inside operator arguments; a malformed `${…}` is skipped like literal text.
pub fn references(template: &str, dynamic: bool) -> Vec<Reference> {
    fn walk(pieces: &[Piece<'_>], out: &mut Vec<Reference>) {
        for piece in pieces {
            if let Piece::Ref(r) = piece {
                out.push(Reference {
                    key: r.key.to_owned(),
                    span: r.span.clone(),
                });
                for word in r.op.iter().flat_map(bash::Op::words) {
                    walk(word, out);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(&Scanner::new(template, dynamic).template(), &mut out);
    out
}

/// Expands a template in a single pass: `$$` → `$`, references → their value or `""` when the key
/// is not in `values`; inserted values are not scanned again. Dynamic mode adds bash operators and
/// fails on malformed operator syntax; both modes fail when the text passes [`MAX_FIELD_BYTES`].
pub fn expand(template: &str, values: &Values, dynamic: bool) -> Result<String, ExpandError> {
    let budget = bash::Budget::new();
    eval(&Scanner::new(template, dynamic).template(), values, &budget)
}

/// Resolves user values that refer to other substitutions (dynamic mode only; otherwise `user` is
/// merged over `built_ins` unchanged). Built-in values are taken verbatim; each user value is
/// expanded after the user values it refers to. Returns built-ins plus resolved user values.
pub fn resolve_values(
    user: &Values,
    built_ins: &Values,
    dynamic: bool,
) -> Result<Values, ResolveError> {
    let mut resolved = built_ins.clone();
    if !dynamic {
        resolved.extend(user.iter().map(|(k, v)| (k.clone(), v.clone())));
        return Ok(resolved);
    }
    // The user keys each value refers to, in order of first use.
    let deps: BTreeMap<&str, Vec<&str>> = user
        .iter()
        .map(|(key, value)| {
            let mut keys: Vec<&str> = Vec::new();
            for r in references(value, true) {
                if let Some((dep, _)) = user.get_key_value(&r.key)
                    && !keys.contains(&dep.as_str())
                {
                    keys.push(dep);
                }
            }
            (key.as_str(), keys)
        })
        .collect();
    let mut done: BTreeSet<&str> = BTreeSet::new();
    for root in user.keys() {
        // Iterative depth-first walk; `path` holds the keys being resolved and their next dependency.
        let mut path: Vec<(&str, usize)> = vec![(root, 0)];
        while let Some((key, next)) = path.last_mut() {
            let key = *key;
            if done.contains(&key) {
                path.pop();
            } else if let Some(&dep) = deps.get(key).and_then(|d| d.get(*next)) {
                *next += 1;
                if let Some(at) = path.iter().position(|(k, _)| *k == dep) {
                    let cycle = path[at..].iter().map(|(k, _)| (*k).to_owned()).collect();
                    return Err(ResolveError::Cycle(cycle));
                }
                path.push((dep, 0));
            } else {
                let template = user.get(key).map_or("", String::as_str);
                let value =
                    expand(template, &resolved, true).map_err(|error| ResolveError::Expand {
                        key: key.to_owned(),
                        error,
                    })?;
                if value.len() > MAX_VALUE_BYTES {
                    return Err(ResolveError::TooLong {
                        key: key.to_owned(),
                        len: value.len(),
                    });
                }
                resolved.insert(key.to_owned(), value);
                done.insert(key);
                path.pop();
            }
        }
    }
    Ok(resolved)
}

/// Malformed dynamic syntax, or a replacement over the size cap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpandError {
    /// Byte offset in the template where the problem was found.
    pub offset: usize,
    pub message: String,
}

impl ExpandError {
    fn new(offset: usize, message: impl Into<String>) -> Self {
        ExpandError {
            offset,
            message: message.into(),
        }
    }
}

impl fmt::Display for ExpandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (at byte {})", self.message, self.offset)
    }
}

impl std::error::Error for ExpandError {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolveError {
    /// Values that refer to each other in a loop, in the order they depend on each other.
    Cycle(Vec<String>),
    /// The value of `key` is not a valid template.
    Expand { key: String, error: ExpandError },
    /// The value of `key` resolves to more than 4000 bytes.
    TooLong { key: String, len: usize },
}

impl fmt::Display for ResolveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResolveError::Cycle(keys) => {
                let chain: Vec<&str> = keys
                    .iter()
                    .chain(keys.first())
                    .map(String::as_str)
                    .collect();
                write!(f, "cycle in substitutions: {}", chain.join(" -> "))
            }
            ResolveError::Expand { key, error } => {
                write!(f, "invalid value for substitution {key}: {error}")
            }
            ResolveError::TooLong { key, len } => write!(
                f,
                "substitution {key} expands to {len} bytes, over the {MAX_VALUE_BYTES}-byte limit"
            ),
        }
    }
}

impl std::error::Error for ResolveError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ResolveError::Expand { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// A scanned template or operator argument.
type Word<'a> = Vec<Piece<'a>>;

#[derive(Debug)]
enum Piece<'a> {
    Text(&'a str),
    Ref(Ref<'a>),
    /// A `$` starting malformed dynamic syntax: literal text for `references`, an error for `expand`.
    Bad(ExpandError),
}

#[derive(Debug)]
struct Ref<'a> {
    key: &'a str,
    span: Range<usize>,
    /// `None` for a plain `$KEY` or `${KEY}`.
    op: Option<bash::Op<'a>>,
}

/// How an operator argument treats `\\`, `\/` and `\}` (drone/envsubst escapes `\\` and `\/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Escapes {
    /// Top level: a backslash is ordinary text.
    None,
    /// Glob patterns: keep the backslash so the matcher reads the next character literally.
    Keep,
    /// Other arguments: drop the backslash, keep the next character.
    Strip,
}

struct Scanner<'a> {
    src: &'a str,
    pos: usize,
    dynamic: bool,
    depth: usize,
}

impl<'a> Scanner<'a> {
    fn new(src: &'a str, dynamic: bool) -> Self {
        Scanner {
            src,
            pos: 0,
            dynamic,
            depth: 0,
        }
    }

    /// The whole template; a malformed reference becomes `Bad` and scanning resumes after its `$`.
    fn template(mut self) -> Word<'a> {
        let mut pieces = Vec::new();
        while self.pos < self.src.len() {
            let start = self.pos;
            match self.piece(b"", Escapes::None) {
                Ok(piece) => pieces.push(piece),
                Err(error) => {
                    pieces.push(Piece::Bad(error));
                    self.pos = start + 1;
                    self.depth = 0;
                }
            }
        }
        pieces
    }

    /// An operator argument, up to (not including) one of `stops` or the end of the input.
    fn word(&mut self, stops: &[u8], escapes: Escapes) -> Result<Word<'a>, ExpandError> {
        let mut pieces = Vec::new();
        while self.peek().is_some_and(|b| !stops.contains(&b)) {
            pieces.push(self.piece(stops, escapes)?);
        }
        Ok(pieces)
    }

    /// One piece starting at `pos`, which is before the end and not at a stop byte.
    fn piece(&mut self, stops: &[u8], escapes: Escapes) -> Result<Piece<'a>, ExpandError> {
        let start = self.pos;
        let bytes = self.src.as_bytes();
        match (bytes[start], bytes.get(start + 1)) {
            (b'$', Some(b'$')) => {
                self.pos += 2;
                Ok(Piece::Text("$"))
            }
            (b'$', _) => Ok(match self.reference()? {
                Some(r) => Piece::Ref(r),
                None => {
                    self.pos = start + 1;
                    Piece::Text("$")
                }
            }),
            (b'\\', Some(b'\\' | b'/' | b'}')) if escapes != Escapes::None => {
                self.pos += 2;
                let from = if escapes == Escapes::Keep {
                    start
                } else {
                    start + 1
                };
                Ok(Piece::Text(&self.src[from..start + 2]))
            }
            _ => {
                // Specials are ASCII, so the next one is always on a char boundary.
                let special = |b: &u8| {
                    *b == b'$' || stops.contains(b) || (*b == b'\\' && escapes != Escapes::None)
                };
                self.pos = bytes[start + 1..]
                    .iter()
                    .position(special)
                    .map_or(bytes.len(), |i| start + 1 + i);
                Ok(Piece::Text(&self.src[start..self.pos]))
            }
        }
    }

    /// The reference starting at the `$` at `pos`, `None` if that `$` is literal text.
    fn reference(&mut self) -> Result<Option<Ref<'a>>, ExpandError> {
        let start = self.pos;
        if let Some(key) = self.key_at(start + 1) {
            self.pos = start + 1 + key.len();
            return Ok(Some(Ref {
                key,
                span: start..self.pos,
                op: None,
            }));
        }
        if self.byte(start + 1) != Some(b'{') {
            return Ok(None);
        }
        let length_of = self.dynamic && self.byte(start + 2) == Some(b'#');
        let key_start = start + 2 + usize::from(length_of);
        let Some(key) = self.key_at(key_start) else {
            return Ok(None);
        };
        self.pos = key_start + key.len();
        let op = if length_of {
            Some(bash::Op::Length)
        } else if self.dynamic {
            self.depth += 1;
            if self.depth > MAX_DEPTH {
                return Err(ExpandError::new(
                    start,
                    format!("`${{…}}` nested more than {MAX_DEPTH} levels deep"),
                ));
            }
            let op = bash::Op::parse(self, key)?;
            self.depth -= 1;
            op
        } else if self.peek() == Some(b'}') {
            None
        } else {
            return Ok(None);
        };
        match self.peek() {
            Some(b'}') => {
                self.pos += 1;
                Ok(Some(Ref {
                    key,
                    span: start..self.pos,
                    op,
                }))
            }
            None => Err(ExpandError::new(
                start,
                format!("unterminated `${{{key}`: missing `}}`"),
            )),
            Some(_) => Err(ExpandError::new(
                self.pos,
                format!(
                    "expected `}}` to close `${{{key}` but found `{}`",
                    self.char_at(self.pos)
                ),
            )),
        }
    }

    /// The key (`[A-Z_][A-Z0-9_]*`, longest run) starting at byte `at`.
    fn key_at(&self, at: usize) -> Option<&'a str> {
        let rest = self.src.as_bytes().get(at..)?;
        let first = rest.first()?;
        if !(first.is_ascii_uppercase() || *first == b'_') {
            return None;
        }
        let len = rest
            .iter()
            .position(|b| !(b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'_'))
            .unwrap_or(rest.len());
        Some(&self.src[at..at + len])
    }

    /// The character at byte `at`, for error messages.
    fn char_at(&self, at: usize) -> char {
        self.src
            .get(at..)
            .and_then(|s| s.chars().next())
            .unwrap_or_default()
    }

    fn byte(&self, at: usize) -> Option<u8> {
        self.src.as_bytes().get(at).copied()
    }

    fn peek(&self) -> Option<u8> {
        self.byte(self.pos)
    }

    /// Consumes `b` if it is next.
    fn eat(&mut self, b: u8) -> bool {
        let found = self.peek() == Some(b);
        self.pos += usize::from(found);
        found
    }
}

fn eval(
    pieces: &[Piece<'_>],
    values: &Values,
    budget: &bash::Budget,
) -> Result<String, ExpandError> {
    let mut out = String::new();
    for piece in pieces {
        match piece {
            Piece::Text(text) => out.push_str(text),
            Piece::Bad(error) => return Err(error.clone()),
            Piece::Ref(r) => {
                let value = values.get(r.key).map(String::as_str);
                match &r.op {
                    None => out.push_str(value.unwrap_or_default()),
                    Some(op) => {
                        let word = |w: &Word<'_>| eval(w, values, budget);
                        out.push_str(&op.apply(value, r.span.start, &word, budget)?);
                    }
                }
                // Only references grow the text past the template's own length.
                if out.len() > MAX_FIELD_BYTES {
                    return Err(ExpandError::new(
                        r.span.start,
                        format!("expands to more than {MAX_FIELD_BYTES} bytes"),
                    ));
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn values(pairs: &[(&str, &str)]) -> Values {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn key_classes() {
        // (user key, built-in, overridable built-in), spec §4.1–4.2.
        let check = |key: &str, expected: (bool, bool, bool)| {
            let got = (
                is_user_key(key),
                is_built_in(key),
                is_overridable_built_in(key),
            );
            assert_eq!(got, expected, "{key}");
        };
        for key in ["_1VARIABLE", "__", "_A", "_HEAD_BRANCH", "_PR_NUMBER"] {
            check(key, (true, false, false));
        }
        for key in [
            "Variable", "VAR-1", "VARIABLE", "_", "_foo", "_A-B", "", "_É",
        ] {
            check(key, (false, false, false));
        }
        for key in ["PROJECT_ID", "BUILD_ID"] {
            check(key, (false, true, false));
        }
        for key in BUILT_INS
            .iter()
            .filter(|k| !matches!(**k, "PROJECT_ID" | "BUILD_ID"))
        {
            check(key, (false, true, true));
        }
        assert_eq!(BUILT_INS.len(), 16);
    }

    #[test]
    fn scanning_matches_spec_examples() {
        // Spec §4.3, without dynamic substitutions.
        let v = values(&[
            ("_FOO", "foo"),
            ("_VAR", "var"),
            ("_VAR_FOO", "varfoo"),
            ("BRANCH_NAME_", "b_"),
            ("COMMIT_SHA", "sha"),
            ("BAR", "bar"),
            ("_REF", "$_FOO ${_VAR}"),
        ]);
        let check = |template: &str, expected: &str| {
            assert_eq!(
                expand(template, &v, false).as_deref(),
                Ok(expected),
                "{template}"
            );
        };
        check("$$_FOO", "$_FOO");
        check("$$$_FOO", "$foo");
        check("$$$$_VAR", "$$_VAR");
        check("$${_VAR}_FOO", "${_VAR}_FOO");
        check("$_VAR_FOO", "varfoo");
        check("$_VARfoo", "varfoo");
        check("${_VAR}_FOO", "var_FOO");
        check("$BRANCH_NAME_$COMMIT_SHA", "b_sha");
        check("$BAR}FOO", "bar}FOO");
        check("${_VAR", "${_VAR");
        check(
            "$foo ${foo} $1 $@ $- ${} ${ _VAR} $",
            "$foo ${foo} $1 $@ $- ${} ${ _VAR} $",
        );
        check(
            "${_VAR:-x} ${_VAR,,} ${#_VAR}",
            "${_VAR:-x} ${_VAR,,} ${#_VAR}",
        );
        check("[$_UNSET|${_UNSET}]", "[|]");
        check("$_VAR$_FOO-${_VAR}}", "varfoo-var}");
        check("é$_VAR→$$ü", "évar→$ü");
        // Inserted values are not scanned again.
        check("$_REF", "$_FOO ${_VAR}");
        assert_eq!(expand("$_REF", &v, true).as_deref(), Ok("$_FOO ${_VAR}"));
    }

    #[test]
    fn references_in_order() {
        let check = |template: &str, dynamic: bool, expected: &[(&str, Range<usize>)]| {
            let got: Vec<(String, Range<usize>)> = references(template, dynamic)
                .into_iter()
                .map(|r| (r.key, r.span))
                .collect();
            let expected: Vec<(String, Range<usize>)> = expected
                .iter()
                .map(|(k, s)| (k.to_string(), s.clone()))
                .collect();
            assert_eq!(got, expected, "{template} (dynamic: {dynamic})");
        };
        check(
            "$_A ${_B} $$_C $${_D} $e",
            false,
            &[("_A", 0..3), ("_B", 4..9)],
        );
        check("${_V:-x}", false, &[]);
        check("${_V:-x}", true, &[("_V", 0..8)]);
        check("${_V:-${_X}}", true, &[("_V", 0..12), ("_X", 6..11)]);
        check(
            "${_V//$_P/${_R^^}}",
            true,
            &[("_V", 0..18), ("_P", 6..9), ("_R", 10..17)],
        );
        check(
            "${#_V}-${BUILD_ID:0:8}",
            true,
            &[("_V", 0..6), ("BUILD_ID", 7..22)],
        );
        check(
            "${_V:$_N:${_L}}",
            true,
            &[("_V", 0..15), ("_N", 5..8), ("_L", 9..14)],
        );
        // A malformed reference is skipped; references inside and after it are still found.
        check("${_V:-x $_B", true, &[("_B", 8..11)]);
        check("$_A ${_V:} ${_B}", true, &[("_A", 0..3), ("_B", 11..16)]);
    }

    #[test]
    fn malformed_dynamic_syntax_is_an_error() {
        let check = |template: &str, offset: usize, message: &str| {
            let err = expand(template, &Values::new(), true).expect_err(template);
            assert_eq!(err.offset, offset, "{template}: {err}");
            assert!(err.to_string().contains(message), "{template}: {err}");
            assert!(
                expand(template, &Values::new(), false).is_ok(),
                "{template}"
            );
        };
        check("${_V:", 0, "unterminated `${_V`: missing `}` (at byte 0)");
        check("x ${_V", 2, "unterminated `${_V`");
        check("${_V:-abc", 0, "unterminated");
        check("${_A:-${_B:-${_C}", 6, "unterminated `${_B`");
        check("${_V:}", 4, "missing substring offset");
        check("${_V:a}", 0, "substring offset `a` is not an integer");
        check("${_V:1:2x}", 0, "substring length `2x` is not an integer");
        check("${_V@Q}", 4, "unsupported operator `@` in `${_V…}`");
        check("${_Vé}", 4, "unsupported operator `é`");
        check("${_V:?msg}", 4, "not supported");
        check("${_V?}", 4, "not supported");
        check("${_V^^x}", 6, "expected `}` to close `${_V` but found `x`");
        check("${#_V:-1}", 5, "expected `}`");
        let deep = format!("{}x{}", "${_A:-".repeat(40), "}".repeat(40));
        check(&deep, 32 * 6, "nested more than 32 levels deep");
        let big = values(&[("_A", &"x".repeat(1000))]);
        let err = expand("${_A//x/${_A//x/${_A}}}", &big, true).expect_err("too big");
        assert!(err.message.contains("expands to more than"), "{err}");
    }

    #[test]
    fn a_field_expands_to_at_most_a_mebibyte_in_either_mode() {
        let big = values(&[("_A", &"x".repeat(4000))]);
        for dynamic in [false, true] {
            let template = "$_A".repeat(300);
            let err = expand(&template, &big, dynamic).expect_err("too big");
            assert!(err.message.contains("more than 1048576 bytes"), "{err}");
            assert_eq!(err.offset, 3 * 262, "{err}");
            assert!(expand(&"$_A".repeat(262), &big, dynamic).is_ok());
        }
    }

    #[test]
    fn resolves_dynamic_values() {
        let built_ins = values(&[
            ("BUILD_ID", "0123abcd-ef"),
            ("PROJECT_ID", "proj"),
            ("BRANCH_NAME", "feature/xtpo"),
        ]);
        let check = |user: &[(&str, &str)], expected: Result<&[(&str, &str)], ResolveError>| {
            let got = resolve_values(&values(user), &built_ins, true);
            match (got, expected) {
                (Ok(got), Ok(expected)) => {
                    assert!(built_ins.iter().all(|(k, _)| got.contains_key(k)));
                    for (k, v) in expected {
                        assert_eq!(got.get(*k).map(String::as_str), Some(*v), "{k} in {user:?}");
                    }
                }
                (got, expected) => assert_eq!(got.map(|_| ()), expected.map(|_| ()), "{user:?}"),
            }
        };
        let cycle = |keys: &[&str]| {
            Err(ResolveError::Cycle(
                keys.iter().map(|k| k.to_string()).collect(),
            ))
        };
        check(
            &[("_VM", "vm-${_SHORT}"), ("_SHORT", "${BUILD_ID:0:8}")],
            Ok(&[("_SHORT", "0123abcd"), ("_VM", "vm-0123abcd")]),
        );
        check(
            &[("_IMAGE", "gcr.io/${PROJECT_ID}/test-image")],
            Ok(&[("_IMAGE", "gcr.io/proj/test-image")]),
        );
        // cloud-build-local's "default values" case.
        check(
            &[
                ("_MOON", "${UNDEFINED_VALUE:-${_EARTH}}"),
                ("_EARTH", "${_VENUS,}"),
                ("_VENUS", "${BRANCH_NAME^^}"),
            ],
            Ok(&[
                ("_MOON", "fEATURE/XTPO"),
                ("_EARTH", "fEATURE/XTPO"),
                ("_VENUS", "FEATURE/XTPO"),
            ]),
        );
        check(
            &[("_SAFE", "${BRANCH_NAME//\\//-}"), ("_A", "$$HOME-$_SAFE")],
            Ok(&[("_A", "$HOME-feature-xtpo")]),
        );
        // A user value overrides the built-in it shadows, also for the values that refer to it.
        check(
            &[("BRANCH_NAME", "dev"), ("_B", "b-$BRANCH_NAME")],
            Ok(&[("BRANCH_NAME", "dev"), ("_B", "b-dev")]),
        );
        check(&[("_A", "${_A^^}")], cycle(&["_A"]));
        check(
            &[("_A", "${_X:-${_B}}"), ("_B", "$_A"), ("_OK", "ok")],
            cycle(&["_A", "_B"]),
        );
        check(
            &[("_A", "$_B"), ("_B", "$_C"), ("_C", "x$_A")],
            cycle(&["_A", "_B", "_C"]),
        );
        check(
            &[("_X", "${_V:")],
            Err(ResolveError::Expand {
                key: "_X".into(),
                error: ExpandError::new(0, "unterminated `${_V`: missing `}`"),
            }),
        );
        let long = "x".repeat(3000);
        check(
            &[("_A", &long), ("_B", "$_A$_A")],
            Err(ResolveError::TooLong {
                key: "_B".into(),
                len: 6000,
            }),
        );
        assert_eq!(
            ResolveError::Cycle(vec!["_A".into(), "_B".into()]).to_string(),
            "cycle in substitutions: _A -> _B -> _A"
        );
    }

    #[test]
    fn static_resolution_merges_unchanged() {
        let user = values(&[("_A", "${BUILD_ID:0:2}"), ("BRANCH_NAME", "dev")]);
        let built_ins = values(&[("BUILD_ID", "abc"), ("BRANCH_NAME", "main")]);
        let expected = values(&[
            ("_A", "${BUILD_ID:0:2}"),
            ("BRANCH_NAME", "dev"),
            ("BUILD_ID", "abc"),
        ]);
        assert_eq!(resolve_values(&user, &built_ins, false), Ok(expected));
    }

    /// Arbitrary text, or text made of the scanner's special tokens.
    fn text() -> impl Strategy<Value = String> {
        let tokens = prop::sample::select(vec![
            "$", "$$", "${", "${#", "}", "_V", "_X", "A", "b", ":", " -", "-", "=", "+", "?", "#",
            "%", "/", "^", ",", "\\", "*", "[", "]", "!", "(", ")", "0", "2", "é", "𝄞",
        ]);
        prop_oneof![
            any::<String>(),
            prop::collection::vec(tokens, 0..24).prop_map(|t| t.concat()),
        ]
    }

    fn value_map() -> impl Strategy<Value = Values> {
        let key = prop::sample::select(vec!["_V", "_X", "A"]).prop_map(String::from);
        prop::collection::btree_map(key, text(), 0..3)
    }

    proptest! {
        #[test]
        fn never_panics(template in text(), values in value_map()) {
            for dynamic in [false, true] {
                let expanded = expand(&template, &values, dynamic);
                prop_assert!(dynamic || expanded.is_ok());
                for r in references(&template, dynamic) {
                    let text = template.get(r.span.clone()).unwrap_or_default();
                    prop_assert!(text.starts_with('$') && text.contains(&r.key), "{r:?}");
                }
            }
        }

        #[test]
        fn resolution_never_panics(user in value_map(), built_ins in value_map()) {
            let _ = resolve_values(&user, &built_ins, true);
        }

        #[test]
        fn text_without_dollar_is_unchanged(text in text()) {
            let text = text.replace('$', "");
            for dynamic in [false, true] {
                prop_assert_eq!(expand(&text, &Values::new(), dynamic), Ok(text.clone()));
            }
        }

        #[test]
        fn doubled_dollars_give_back_the_text(text in text(), values in value_map()) {
            for dynamic in [false, true] {
                prop_assert_eq!(expand(&text.replace('$', "$$"), &values, dynamic), Ok(text.clone()));
            }
        }
    }
}

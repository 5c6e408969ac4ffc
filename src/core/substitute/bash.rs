//! Bash parameter-expansion operators for dynamic substitutions (spec §4.6, ecosystem C.6): their
//! grammar after `${KEY`, their evaluation, and the glob matcher behind `#`, `%` and `/`.
//!
//! Semantics follow bash where bash and drone/envsubst differ, with these choices:
//! * `/` patterns are globs (`*`, `?`, `[...]`, `[!...]`, `\x`), as in bash. drone matches them as
//!   literal substrings; a pattern without glob characters matches at exactly one length, so taking
//!   the leftmost match gives the same result both ways. No `[[:class:]]`, and `&` in the
//!   replacement is plain text (bash 5.2's `patsub_replacement` is not copied).
//! * `:offset:length` counts characters, not bytes, so slicing never splits a UTF-8 sequence. An
//!   offset further back than the start gives `""` (bash; drone clamps to 0), and a negative length
//!   that ends before the offset gives `""` (bash fails). Offsets are integers, optionally in
//!   parentheses; anything else is an error.
//! * `^`/`,` map each character to its single-character upper or lower case and leave characters
//!   without one (`ß`) unchanged, as Go's `strings.ToUpper` does.
//! * In arguments `\\`, `\/` and `\}` stand for `\`, `/` and `}` (drone escapes the first two).
//! * `${v?msg}`, `${v:?msg}` and case patterns (`${v^^x}`) are rejected.
//! * A `/` replacement may produce at most a field's limit (1 MiB): replacements are the only
//!   operator that multiplies text, and nesting them (`${A//x/${A//x/$A}}`) would otherwise
//!   exhaust memory before the field's own check saw the result.

use std::cell::Cell;
use std::ops::Range;

use super::{Escapes, ExpandError, MAX_FIELD_BYTES, Scanner, Word};

/// How much glob matching one field's expansion may do, in the matcher's steps (a pattern's
/// character compiled, or a value's character matched against every state of a pattern). Real
/// patterns (`${TAG//./-}`, `${REF#*/}`) take hundreds; a pattern made by nested expansions may
/// be up to a field's limit long, and `//` matches it again after every replacement: without a
/// bound, one field of a 2 KB config took a second, and longer ones minutes (found by the
/// fuzzer). The bound still lets a 60-character pattern scan a value of the longest (4,000).
const MATCH_STEPS: usize = 250_000;

/// What is left of one field's matching ([`MATCH_STEPS`]), shared by its every operator.
pub(super) struct Budget(Cell<usize>);

impl Budget {
    pub(super) fn new() -> Self {
        Budget(Cell::new(MATCH_STEPS))
    }

    fn spend(&self, steps: usize) -> Result<(), Exhausted> {
        let left = self.0.get().checked_sub(steps).ok_or(Exhausted)?;
        self.0.set(left);
        Ok(())
    }
}

/// The field's matching budget ran out.
struct Exhausted;

impl Exhausted {
    fn at(self, at: usize) -> ExpandError {
        ExpandError::new(
            at,
            format!(
                "matching its pattern takes more than {MATCH_STEPS} steps: a pattern this long, \
                 matched this often, is not supported"
            ),
        )
    }
}

/// An operator following `${KEY`.
#[derive(Debug)]
pub(super) enum Op<'a> {
    /// `${#v}`
    Length,
    /// `${v^}`, `${v^^}`, `${v,}`, `${v,,}`
    Case { upper: bool, all: bool },
    /// `${v:offset}`, `${v:offset:length}`
    Substring {
        offset: Word<'a>,
        length: Option<Word<'a>>,
    },
    /// `${v#p}`, `${v##p}`, `${v%p}`, `${v%%p}`
    Trim {
        suffix: bool,
        longest: bool,
        pattern: Word<'a>,
    },
    /// `${v/p/r}`, `${v//p/r}`, `${v/#p/r}`, `${v/%p/r}`
    Replace {
        anchor: Anchor,
        pattern: Word<'a>,
        with: Word<'a>,
    },
    /// `${v-w}`, `${v=w}` (no assignment) and, with `alternate`, `${v+w}`; `colon` treats "" as unset.
    Default {
        colon: bool,
        alternate: bool,
        word: Word<'a>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Anchor {
    First,
    All,
    Prefix,
    Suffix,
}

impl<'a> Op<'a> {
    /// Parses the operator after `${KEY`, leaving the scanner on the closing `}`; `None` when
    /// there is no operator.
    pub(super) fn parse(sc: &mut Scanner<'a>, key: &str) -> Result<Option<Self>, ExpandError> {
        let at = sc.pos;
        let Some(c) = sc.peek().filter(|&c| c != b'}') else {
            return Ok(None);
        };
        sc.pos += 1;
        // `:` followed by one of these makes a default form (`${v:-w}`), not a substring.
        let (colon, c) = match (c, sc.peek()) {
            (b':', Some(d @ (b'-' | b'=' | b'+' | b'?'))) => {
                sc.pos += 1;
                (true, d)
            }
            _ => (false, c),
        };
        let op = match c {
            b'^' | b',' => Op::Case {
                upper: c == b'^',
                all: sc.eat(c),
            },
            b'-' | b'=' | b'+' => Op::Default {
                colon,
                alternate: c == b'+',
                word: sc.word(b"}", Escapes::Strip)?,
            },
            b':' => {
                let offset = sc.word(b":}", Escapes::Strip)?;
                if offset.is_empty() && sc.peek() == Some(b'}') {
                    return Err(ExpandError::new(
                        at,
                        format!("missing substring offset in `${{{key}:}}`"),
                    ));
                }
                let length = if sc.eat(b':') {
                    Some(sc.word(b"}", Escapes::Strip)?)
                } else {
                    None
                };
                Op::Substring { offset, length }
            }
            b'#' | b'%' => Op::Trim {
                suffix: c == b'%',
                longest: sc.eat(c),
                pattern: sc.word(b"}", Escapes::Keep)?,
            },
            b'/' => {
                let anchor = if sc.eat(b'/') {
                    Anchor::All
                } else if sc.eat(b'#') {
                    Anchor::Prefix
                } else if sc.eat(b'%') {
                    Anchor::Suffix
                } else {
                    Anchor::First
                };
                let pattern = sc.word(b"/}", Escapes::Keep)?;
                let with = if sc.eat(b'/') {
                    sc.word(b"}", Escapes::Strip)?
                } else {
                    Vec::new()
                };
                Op::Replace {
                    anchor,
                    pattern,
                    with,
                }
            }
            b'?' => {
                return Err(ExpandError::new(
                    at,
                    format!("`${{{key}?…}}` (fail if unset) is not supported"),
                ));
            }
            _ => {
                return Err(ExpandError::new(
                    at,
                    format!("unsupported operator `{}` in `${{{key}…}}`", sc.char_at(at)),
                ));
            }
        };
        Ok(Some(op))
    }

    /// The arguments that may hold nested references, in source order.
    pub(super) fn words(&self) -> Vec<&Word<'a>> {
        match self {
            Op::Length | Op::Case { .. } => Vec::new(),
            Op::Substring { offset, length } => std::iter::once(offset).chain(length).collect(),
            Op::Trim { pattern, .. } => vec![pattern],
            Op::Replace { pattern, with, .. } => vec![pattern, with],
            Op::Default { word, .. } => vec![word],
        }
    }

    /// Applies the operator to `value` (`None` when unset); `eval` expands an argument, `at` is
    /// the reference's offset for errors, and the matching of patterns spends from `budget`.
    pub(super) fn apply(
        &self,
        value: Option<&str>,
        at: usize,
        eval: &dyn Fn(&Word<'_>) -> Result<String, ExpandError>,
        budget: &Budget,
    ) -> Result<String, ExpandError> {
        let v = value.unwrap_or_default();
        let chars = || v.chars().collect::<Vec<_>>();
        let compiled = |word| {
            let text = eval(word)?;
            budget.spend(text.len()).map_err(|e| e.at(at))?;
            Ok::<_, ExpandError>(glob(&text))
        };
        Ok(match self {
            Op::Length => v.chars().count().to_string(),
            Op::Case { upper, all } => v
                .chars()
                .enumerate()
                .map(|(i, c)| if *all || i == 0 { case(c, *upper) } else { c })
                .collect(),
            Op::Substring { offset, length } => {
                let offset = integer(&eval(offset)?, at, "offset")?;
                let length = match length {
                    Some(length) => Some(integer(&eval(length)?, at, "length")?),
                    None => None,
                };
                substring(&chars(), offset, length)
            }
            Op::Trim {
                suffix,
                longest,
                pattern,
            } => {
                let s = chars();
                let rest = strip(&compiled(pattern)?, &s, *suffix, *longest, budget);
                let rest = rest.map_err(|e| e.at(at))?;
                rest.map_or_else(|| v.to_owned(), |rest| rest.iter().collect())
            }
            Op::Replace {
                anchor,
                pattern,
                with,
            } => {
                let (pattern, with) = (compiled(pattern)?, eval(with)?);
                replace(&chars(), &pattern, &with, *anchor, at, budget)?
            }
            Op::Default {
                colon,
                alternate,
                word,
            } => {
                let set = value.is_some_and(|v| !colon || !v.is_empty());
                if set == *alternate {
                    eval(word)?
                } else {
                    v.to_owned()
                }
            }
        })
    }
}

/// Single-character case mapping; characters whose mapping is longer stay as they are.
fn case(c: char, upper: bool) -> char {
    fn single(c: char, mut mapped: impl Iterator<Item = char>) -> char {
        match (mapped.next(), mapped.next()) {
            (Some(m), None) => m,
            _ => c,
        }
    }
    if upper {
        single(c, c.to_uppercase())
    } else {
        single(c, c.to_lowercase())
    }
}

/// Parses a substring offset or length: an integer, optionally in parentheses; "" counts as 0.
fn integer(text: &str, at: usize, what: &str) -> Result<i64, ExpandError> {
    let trimmed = text.trim();
    let inner = trimmed
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .map_or(trimmed, str::trim);
    if inner.is_empty() {
        return Ok(0);
    }
    inner
        .parse()
        .map_err(|_| ExpandError::new(at, format!("substring {what} `{text}` is not an integer")))
}

fn substring(s: &[char], offset: i64, length: Option<i64>) -> String {
    let n = i64::try_from(s.len()).unwrap_or(i64::MAX);
    let start = if offset < 0 { n + offset } else { offset };
    let end = match length {
        None => n,
        Some(len) if len >= 0 => start.saturating_add(len).min(n),
        Some(len) => n + len,
    };
    match (usize::try_from(start), usize::try_from(end)) {
        (Ok(start), Ok(end)) if start < end => s[start..end].iter().collect(),
        _ => String::new(),
    }
}

/// `s` with the match of `pattern` (the first, every one, or one at an end) replaced by `with`;
/// `at` is the reference's offset for errors.
fn replace(
    s: &[char],
    pattern: &[Tok],
    with: &str,
    anchor: Anchor,
    at: usize,
    budget: &Budget,
) -> Result<String, ExpandError> {
    let text = |chars: &[char]| chars.iter().collect::<String>();
    let exhausted = |e: Exhausted| e.at(at);
    Ok(match anchor {
        Anchor::Prefix => strip(pattern, s, false, true, budget)
            .map_err(exhausted)?
            .map_or_else(|| text(s), |rest| with.to_owned() + &text(rest)),
        Anchor::Suffix => strip(pattern, s, true, true, budget)
            .map_err(exhausted)?
            .map_or_else(|| text(s), |rest| text(rest) + with),
        // Bash leaves the value alone for an empty unanchored pattern.
        _ if pattern.is_empty() => text(s),
        Anchor::First | Anchor::All => {
            let mut out = String::new();
            let mut from = 0;
            while let Some(found) =
                find(pattern, &s[from..], false, true, budget).map_err(exhausted)?
            {
                let (start, end) = (from + found.start, from + found.end);
                out.extend(&s[from..start]);
                out.push_str(with);
                if out.len() > MAX_FIELD_BYTES {
                    return Err(ExpandError::new(
                        at,
                        format!("expands to more than {MAX_FIELD_BYTES} bytes"),
                    ));
                }
                // Only all-`*` patterns match "", and only once the rest is empty; still advance.
                from = if start == end {
                    out.extend(s.get(end));
                    end + 1
                } else {
                    end
                };
                if anchor == Anchor::First || from >= s.len() {
                    break;
                }
            }
            out.extend(s.get(from..).unwrap_or_default());
            out
        }
    })
}

/// One element of a compiled glob.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Char(char),
    Any,
    Star,
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl Tok {
    /// Whether this single-character token matches `c` (never true for `Star`).
    fn matches(&self, c: char) -> bool {
        match self {
            Tok::Char(x) => *x == c,
            Tok::Any => true,
            Tok::Star => false,
            Tok::Class { negated, ranges } => {
                ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c)) != *negated
            }
        }
    }
}

/// Compiles a bash glob; an unclosed `[` and a trailing `\` are literal, as in bash.
fn glob(pattern: &str) -> Vec<Tok> {
    let chars: Vec<char> = pattern.chars().collect();
    // Where a bracket expression was found to run off the pattern's end: a later `[` that
    // reaches such a place fails there instead of scanning on, so a pattern of many unclosed `[`
    // (the fuzzer's: minutes for one config) is read in linear time.
    let mut unclosed = vec![false; chars.len() + 1];
    let mut toks = Vec::new();
    let mut i = 0;
    while let Some(&c) = chars.get(i) {
        i += 1;
        toks.push(match c {
            '*' => Tok::Star,
            '?' => Tok::Any,
            '\\' if i < chars.len() => {
                i += 1;
                Tok::Char(chars[i - 1])
            }
            '[' => match class(&chars, i, &mut unclosed) {
                Some((tok, end)) => {
                    i = end;
                    tok
                }
                None => Tok::Char('['),
            },
            _ => Tok::Char(c),
        });
    }
    toks
}

/// Parses the bracket expression whose `[` is just before `chars[start]`: the token and the
/// index after its `]`, or `None` if it never closes (then its member boundaries join
/// `unclosed`).
fn class(chars: &[char], start: usize, unclosed: &mut [bool]) -> Option<(Tok, usize)> {
    let negated = matches!(chars.get(start), Some('!' | '^'));
    let first = start + usize::from(negated);
    let mut ranges = Vec::new();
    let mut passed = Vec::new();
    let end = members(chars, first, unclosed, &mut ranges, &mut passed);
    if end.is_none() {
        for i in passed {
            unclosed[i] = true;
        }
    }
    end.map(|end| (Tok::Class { negated, ranges }, end))
}

/// Reads a bracket expression's members from `first` into `ranges`: the index after its `]`,
/// or `None` at the pattern's end or at a boundary in `unclosed` (from there every scan fails
/// alike: what follows a boundary does not depend on where the scan began). `passed` gets the
/// boundaries read, all but `first`, where a `]` is a member.
fn members(
    chars: &[char],
    first: usize,
    unclosed: &[bool],
    ranges: &mut Vec<(char, char)>,
    passed: &mut Vec<usize>,
) -> Option<usize> {
    let mut i = first;
    loop {
        if i > first {
            if unclosed[i] {
                return None;
            }
            if chars.get(i) == Some(&']') {
                return Some(i + 1);
            }
            passed.push(i);
        }
        let lo = member(chars, &mut i)?;
        if chars.get(i) == Some(&'-') && chars.get(i + 1).is_some_and(|&c| c != ']') {
            i += 1;
            let hi = member(chars, &mut i)?;
            ranges.push((lo, hi));
        } else {
            ranges.push((lo, lo));
        }
    }
}

/// One possibly `\`-escaped member of a bracket expression.
fn member(chars: &[char], i: &mut usize) -> Option<char> {
    if chars.get(*i) == Some(&'\\') {
        *i += 1;
    }
    let c = *chars.get(*i)?;
    *i += 1;
    Some(c)
}

/// What is left of `s` after removing the match of `pattern` at its start (or its end).
fn strip<'s>(
    pattern: &[Tok],
    s: &'s [char],
    suffix: bool,
    longest: bool,
    budget: &Budget,
) -> Result<Option<&'s [char]>, Exhausted> {
    Ok(if suffix {
        // A glob reversed token by token matches exactly the reversed strings.
        let pattern: Vec<Tok> = pattern.iter().rev().cloned().collect();
        let reversed: Vec<char> = s.iter().rev().copied().collect();
        find(&pattern, &reversed, true, longest, budget)?.map(|m| &s[..s.len() - m.end])
    } else {
        find(pattern, s, true, longest, budget)?.map(|m| &s[m.end..])
    })
}

/// The leftmost match of `pattern` in `s` (only at 0 when `anchored`), longest or, for anchored
/// searches, shortest. Simulates the glob's automaton once over `s`, keeping for every state the
/// earliest start that reaches it, so the cost is O(len(s) * len(pattern)), spent from `budget`.
fn find(
    pattern: &[Tok],
    s: &[char],
    anchored: bool,
    longest: bool,
    budget: &Budget,
) -> Result<Option<Range<usize>>, Exhausted> {
    let m = pattern.len();
    let mut starts: Vec<Option<usize>> = vec![None; m + 1];
    let mut next = starts.clone();
    let mut best: Option<Range<usize>> = None;
    for pos in 0..=s.len() {
        budget.spend(m + 1)?;
        if best.is_none() && (pos == 0 || !anchored) {
            earliest(&mut starts[0], pos);
        }
        for j in 0..m {
            if let (Tok::Star, Some(start)) = (&pattern[j], starts[j]) {
                earliest(&mut starts[j + 1], start);
            }
        }
        if let Some(start) = starts[m] {
            best = Some(start..pos);
            if !longest {
                break;
            }
        }
        // Partial matches starting after the best one can no longer win.
        if let Some(found) = &best {
            for start in &mut starts {
                if start.is_some_and(|s| s > found.start) {
                    *start = None;
                }
            }
        }
        let idle = starts.iter().all(Option::is_none) && (anchored || best.is_some());
        let Some(&c) = s.get(pos).filter(|_| !idle) else {
            break;
        };
        next.fill(None);
        for (j, tok) in pattern.iter().enumerate() {
            if let Some(start) = starts[j] {
                if *tok == Tok::Star {
                    earliest(&mut next[j], start);
                } else if tok.matches(c) {
                    earliest(&mut next[j + 1], start);
                }
            }
        }
        std::mem::swap(&mut starts, &mut next);
    }
    Ok(best)
}

fn earliest(slot: &mut Option<usize>, start: usize) {
    *slot = Some(slot.map_or(start, |s| s.min(start)));
}

#[cfg(test)]
mod tests {
    use super::super::{Values, expand};

    /// Each case was checked against bash 5.2 unless a comment says why we differ.
    #[test]
    fn operators_follow_bash() {
        let values: Values = [
            ("_V", "Hello-World"),
            ("_E", ""),
            ("_N", "2"),
            ("_P", "path/to/file.tar.gz"),
            ("_U", "héllo wörld ß"),
            ("_B", "feature/my-thing"),
            ("_S", "a*b*"),
            ("BUILD_ID", "f2b3c4d5-1111-2222"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let check = |template: &str, expected: &str| {
            assert_eq!(
                expand(template, &values, true).as_deref(),
                Ok(expected),
                "{template}"
            );
        };
        // Plain, length and case.
        check(
            "${_V}|$_V|${_UNSET}|${#_V}|${#_E}|${#_UNSET}|${#_U}",
            "Hello-World|Hello-World||11|0|0|13",
        );
        check(
            "${_V^^}|${_V,,}|${_V,}|${_E^}|${_UNSET^^}",
            "HELLO-WORLD|hello-world|hello-World||",
        );
        check("${_U^}|${_U^^}", "Héllo wörld ß|HÉLLO WÖRLD ß");
        // Substrings, in characters.
        check(
            "${BUILD_ID:0:8}|${_V:6}|${_V: -5}|${_V:(-5)}|${_V: -5:2}",
            "f2b3c4d5|World|World|World|Wo",
        );
        check(
            "${_V:1:-1}|${_V:0:0}|${_V:20}|${_V:3:100}|${_V::5}",
            "ello-Worl|||lo-World|Hello",
        );
        check("${_V:$_N:2}|${_U:1:3}|${_UNSET:1}|${_E:0:3}", "ll|éll||");
        check("${_V: -20}|${_V:5:-10}", "|"); // bash: "" and an error
        // Trims.
        check(
            "${_P#*/}|${_P##*/}|${_P%.*}|${_P%%.*}",
            "to/file.tar.gz|file.tar.gz|path/to/file.tar|path/to/file",
        );
        check(
            "${_P#*}|${_P##*}|${_P%*}|${_P%%*}|${_P#}",
            "path/to/file.tar.gz||path/to/file.tar.gz||path/to/file.tar.gz",
        );
        check(
            "${_P#[pq]ath}|${_P#?}|${_P%.[!t]z}|${_P%nope}",
            "/to/file.tar.gz|ath/to/file.tar.gz|path/to/file.tar|path/to/file.tar.gz",
        );
        check(
            "${_P#$_E}|${_P#[}|${_V%[a-z]}|${_V#[]H]}",
            "path/to/file.tar.gz|path/to/file.tar.gz|Hello-Worl|ello-World",
        );
        // Replacements: leftmost, longest, glob; literal patterns as in drone/envsubst.
        check(
            "${_V/o/0}|${_V//o/0}|${_V//o}|${_V/o/}",
            "Hell0-World|Hell0-W0rld|Hell-Wrld|Hell-World",
        );
        check(
            "${_V/#Hello/Bye}|${_V/#World/x}|${_V/%World/There}|${_V/%Hello/x}",
            "Bye-World|Hello-World|Hello-There|Hello-World",
        );
        check(
            "${_V//[lo]/_}|${_V//?/.}|${_V/l*o/X}|${_V//*/x}",
            "He___-W_r_d|...........|HeXrld|x",
        );
        check(
            "${_B//\\//-}|${_B/\\/}|${_S//\\*/+}|${_S//*/+}",
            "feature-my-thing|featuremy-thing|a+b+|+",
        );
        check(
            "${_V///x}|${_V/#/>}|${_V/%/<}|${_E/*/x}|${_E//o/x}",
            "Hello-World|>Hello-World|Hello-World<|x|",
        );
        check(
            "${_V/o/&}|${_V//o/${_N}}|${_V/o/\\}}|${_V/o/\\\\}",
            "Hell&-World|Hell2-W2rld|Hell}-World|Hell\\-World",
        ); // bash 5.2: `&` is the match
        // Defaults and alternates; `=` forms do not assign.
        check(
            "${_UNSET-d}|${_E-d}|${_E:-d}|${_V:-d}|${_UNSET=d}|${_E:=d}|${_UNSET}",
            "d||d|Hello-World|d|d|",
        );
        check(
            "${_UNSET+a}|${_E+a}|${_E:+a}|${_V:+a}|${_UNSET:-}",
            "|a||a|",
        );
        check(
            "${_UNSET:-${_V}}|${_UNSET:-$_N-x}|${_UNSET:-${_X:-${_V,,}}}",
            "Hello-World|2-x|hello-world",
        );
        check(
            "${_UNSET:-a\\}b}|${_UNSET:-C:\\temp}|${_UNSET:-{a}}|${_V:-{a}}",
            "a}b|C:\\temp|{a}|Hello-World}",
        );
        check(
            "${_UNSET:-$$HOME}|a-${_V,,}-$$_X-${_N}",
            "$HOME|a-hello-world-$_X-2",
        );
    }

    /// A pattern made long by a nested expansion (4,000 classes here) costs its length at every
    /// character it is matched against: past the field's matching budget the expansion fails,
    /// naming why, instead of going on for seconds or minutes. Long values with short patterns
    /// stay far within it.
    #[test]
    fn matching_stops_at_the_fields_budget() {
        let values: Values = [("_A".to_owned(), "x".repeat(4000))].into_iter().collect();
        let started = std::time::Instant::now();
        let error = expand("${_A//${_A//x/[x]}/y}", &values, true).unwrap_err();
        assert!(error.message.contains("steps"), "{}", error.message);
        assert_eq!(error.offset, 0);
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        let replaced = expand("${_A//x/yz}${_A%%x*}${_A#*x}", &values, true).unwrap();
        assert_eq!(replaced.len(), 8000 + 3999);
    }

    /// A pattern of many `[` and no `]` (the fuzzer's: minutes before they were read in one pass)
    /// is literal brackets; one `]` after them still closes the first, as in bash.
    #[test]
    fn unclosed_brackets_are_literal_in_one_pass() {
        use super::{Tok, glob};
        let toks = glob(&"[".repeat(200_000));
        assert!(toks.iter().all(|t| *t == Tok::Char('[')));
        assert_eq!(toks.len(), 200_000);
        let toks = glob("[[[a]");
        assert_eq!(toks.len(), 1);
        assert!(matches!(toks[0], Tok::Class { negated: false, .. }));
        // Each `[` here would scan to the end, where the one `]` is escaped.
        let toks = glob(&format!("{}\\]", "[a".repeat(100_000)));
        assert_eq!(toks.len(), 200_001);
        assert_eq!(toks.last(), Some(&Tok::Char(']')));
        // A `]` first in a class is a member, not its end.
        let toks = glob("[]x]y");
        assert_eq!(toks.len(), 2);
        assert!(
            matches!(&toks[0], Tok::Class { ranges, .. } if ranges == &[(']', ']'), ('x', 'x')])
        );
    }

    #[test]
    fn glob_search() {
        use super::{find, glob};
        let check = |pattern: &str,
                     s: &str,
                     anchored: bool,
                     longest: bool,
                     expected: Option<std::ops::Range<usize>>| {
            let s: Vec<char> = s.chars().collect();
            let found = find(&glob(pattern), &s, anchored, longest, &super::Budget::new());
            assert_eq!(found.ok().flatten(), expected, "{pattern} in {s:?}");
        };
        check("b*", "abcb", false, true, Some(1..4));
        check("a*b", "xaab", false, true, Some(1..4));
        check("*b", "abab", true, false, Some(0..2));
        check("*b", "abab", true, true, Some(0..4));
        check("[!a]", "aab", false, true, Some(2..3));
        check("[a-c]x", "dcx", false, true, Some(1..3));
        check("\\*", "a*", false, true, Some(1..2));
        check("?", "", false, true, None);
        check("", "ab", true, true, Some(0..0));
    }
}

//! The images a Dockerfile builds from, so that they can be made local (through the aliases and
//! mirrors) before the engine builds it offline.
//!
//! Read as the engine's classic builder reads it: parser directives (`# escape=`), comments,
//! line continuations, case-insensitive instructions; `ARG`s before the first `FROM` (with
//! `--build-arg` values over their defaults) substituted in `FROM` (`$A`, `${A}`,
//! `${A:-default}`, `${A:+alternative}`); `FROM [--platform=…] IMAGE [AS NAME]`, where an earlier
//! stage's name and `scratch` are not images; `COPY --from=IMAGE` of an image that is not a
//! stage. The text is untrusted: it is bounded ([`LIMIT`]) and nothing here panics on it.

use std::collections::{BTreeMap, BTreeSet};

/// The largest Dockerfile read; the engine's own limit on a Dockerfile is larger, but one this
/// size is not a real one.
pub const LIMIT: usize = 1024 * 1024;

/// Why a Dockerfile's images could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    TooLarge,
    /// A `FROM` without an image.
    EmptyFrom {
        line: usize,
    },
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::TooLarge => write!(f, "the Dockerfile is larger than {LIMIT} bytes"),
            Error::EmptyFrom { line } => write!(f, "line {line}: FROM names no image"),
        }
    }
}

impl std::error::Error for Error {}

/// The images outside the Dockerfile that building it needs (each once, in order of first use):
/// `FROM` images that are not stages or `scratch`, and `COPY --from` images. `build_args` are
/// `--build-arg` values; only `ARG`s declared before the first `FROM` apply to `FROM` lines.
pub fn images(
    dockerfile: &str,
    build_args: &BTreeMap<String, String>,
) -> Result<Vec<String>, Error> {
    if dockerfile.len() > LIMIT {
        return Err(Error::TooLarge);
    }
    let mut meta: BTreeMap<String, String> = BTreeMap::new();
    let mut stages: BTreeSet<String> = BTreeSet::new();
    let mut images: Vec<String> = Vec::new();
    let mut seen_from = false;
    for (line, instruction) in instructions(dockerfile) {
        let (keyword, rest) = split_word(&instruction);
        match keyword.to_ascii_uppercase().as_str() {
            "ARG" if !seen_from => {
                for declaration in words(rest) {
                    let (name, default) = match declaration.split_once('=') {
                        Some((name, value)) => {
                            (name.to_string(), Some(expand(&unquote(value), &meta)))
                        }
                        None => (declaration.clone(), None),
                    };
                    let value = build_args.get(&name).cloned().or(default);
                    if let Some(value) = value {
                        meta.insert(name, value);
                    }
                }
            }
            "FROM" => {
                seen_from = true;
                let words: Vec<String> = words(rest)
                    .into_iter()
                    .filter(|w| !w.starts_with("--"))
                    .collect();
                let Some(image) = words.first() else {
                    return Err(Error::EmptyFrom { line });
                };
                let image = expand(image, &meta);
                if words.len() >= 3 && words[1].eq_ignore_ascii_case("as") {
                    // Recorded after the image is judged: `FROM base AS base` names an image.
                    let is_stage = stages.contains(&image.to_ascii_lowercase());
                    stages.insert(words[2].to_ascii_lowercase());
                    if is_stage {
                        continue;
                    }
                } else if stages.contains(&image.to_ascii_lowercase()) {
                    continue;
                }
                if !image.is_empty() && !image.eq_ignore_ascii_case("scratch") {
                    add(image, &mut images);
                }
            }
            "COPY" => {
                let from = words(rest)
                    .into_iter()
                    .take_while(|w| w.starts_with("--"))
                    .find_map(|w| w.strip_prefix("--from=").map(str::to_string));
                if let Some(from) = from {
                    let is_stage = stages.contains(&from.to_ascii_lowercase())
                        || from.bytes().all(|b| b.is_ascii_digit());
                    if !is_stage && !from.is_empty() {
                        add(from, &mut images);
                    }
                }
            }
            _ => {}
        }
    }
    Ok(images)
}

fn add(image: String, images: &mut Vec<String>) {
    if !images.contains(&image) {
        images.push(image);
    }
}

/// The Dockerfile's instructions, each on one logical line, with the number of its first line.
fn instructions(dockerfile: &str) -> Vec<(usize, String)> {
    let mut escape = '\\';
    let mut directives = true;
    let mut instructions = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (index, raw) in dockerfile.lines().enumerate() {
        let line = raw.trim();
        if directives {
            // Parser directives: `# key=value` lines at the very top.
            if let Some((key, value)) = line.strip_prefix('#').and_then(|d| d.split_once('=')) {
                if key.trim().eq_ignore_ascii_case("escape") {
                    escape = match value.trim() {
                        "`" => '`',
                        _ => '\\',
                    };
                }
                continue;
            }
            directives = false;
        }
        // Comments and empty lines, also inside a continued instruction.
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (text, continues) = match line.strip_suffix(escape) {
            Some(text) => (text, true),
            None => (line, false),
        };
        let entry = current.get_or_insert_with(|| (index + 1, String::new()));
        if !entry.1.is_empty() {
            entry.1.push(' ');
        }
        entry.1.push_str(text.trim());
        if !continues {
            instructions.extend(current.take());
        }
    }
    instructions.extend(current);
    instructions
}

/// The first word and the rest.
fn split_word(text: &str) -> (&str, &str) {
    let text = text.trim_start();
    match text.find(char::is_whitespace) {
        Some(end) => (&text[..end], text[end..].trim_start()),
        None => (text, ""),
    }
}

/// Whitespace-separated words; quotes group (`ARG A="x y"` is one word).
fn words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    for c in text.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => {
                quote = None;
                word.push(c);
            }
            (Some(_), c) => word.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                word.push(c);
            }
            (None, c) if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            (None, c) => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

fn unquote(value: &str) -> String {
    for quote in ['"', '\''] {
        if let Some(inner) = value
            .strip_prefix(quote)
            .and_then(|v| v.strip_suffix(quote))
        {
            return inner.to_string();
        }
    }
    value.to_string()
}

/// `$NAME`, `${NAME}`, `${NAME:-default}` and `${NAME:+alternative}` with `args`; an unknown
/// name is empty, as in the engine.
fn expand(text: &str, args: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        rest = &rest[dollar + 1..];
        if let Some(braced) = rest.strip_prefix('{') {
            let Some(end) = braced.find('}') else {
                out.push('$');
                continue;
            };
            let inner = &braced[..end];
            rest = &braced[end + 1..];
            let value = |name: &str| args.get(name).filter(|v| !v.is_empty());
            if let Some((name, default)) = inner.split_once(":-") {
                out.push_str(value(name).map_or(default, String::as_str));
            } else if let Some((name, alternative)) = inner.split_once(":+") {
                out.push_str(value(name).map_or("", |_| alternative));
            } else {
                out.push_str(args.get(inner).map_or("", String::as_str));
            }
        } else {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            if end == 0 {
                out.push('$');
                continue;
            }
            out.push_str(args.get(&rest[..end]).map_or("", String::as_str));
            rest = &rest[end..];
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(dockerfile: &str) -> Vec<String> {
        images(dockerfile, &BTreeMap::new()).unwrap()
    }

    #[test]
    fn stages_and_scratch_are_not_images() {
        let dockerfile = "\
# syntax=docker/dockerfile:1
FROM python:3.11-slim AS base
RUN pip install x
from --platform=$BUILDPLATFORM base as Test
FROM scratch
COPY --from=base /app /app
COPY --from=0 /a /a
COPY --from=nginx:1.25 /etc/nginx /etc/nginx
FROM test
FROM ubuntu:22.04
";
        assert_eq!(
            of(dockerfile),
            ["python:3.11-slim", "nginx:1.25", "ubuntu:22.04"]
        );
    }

    #[test]
    fn args_before_the_first_from_are_substituted_with_build_args_over_defaults() {
        let dockerfile = "\
ARG REGISTRY=gcr.io/p
ARG VERSION=\"3.11\" VARIANT
FROM ${REGISTRY}/base:${VERSION}${VARIANT:+-}${VARIANT}
FROM $REGISTRY/tool:${TAG:-1}
ARG LATE=x
FROM late-$LATE
";
        assert_eq!(
            of(dockerfile),
            ["gcr.io/p/base:3.11", "gcr.io/p/tool:1", "late-"]
        );
        let args = BTreeMap::from([
            ("VARIANT".to_string(), "slim".to_string()),
            ("REGISTRY".to_string(), "localhost:5000".to_string()),
            ("UNDECLARED".to_string(), "x".to_string()),
        ]);
        assert_eq!(
            images(dockerfile, &args).unwrap(),
            [
                "localhost:5000/base:3.11-slim",
                "localhost:5000/tool:1",
                "late-"
            ]
        );
    }

    #[test]
    fn continuations_comments_and_the_escape_directive() {
        assert_eq!(
            of("FROM \\\n  # a comment\n  alpine:3 \\\n  AS a\nFROM a\n"),
            ["alpine:3"]
        );
        assert_eq!(of("# escape=`\nFROM busybox `\n AS b\n"), ["busybox"]);
    }

    #[test]
    fn malformed_input_is_an_error_or_nothing_never_a_panic() {
        assert_eq!(
            images("FROM\n", &BTreeMap::new()),
            Err(Error::EmptyFrom { line: 1 })
        );
        assert_eq!(of("FROM ${UNCLOSED\n"), ["${UNCLOSED"]);
        assert_eq!(of("FROM é$\u{2028}\n"), ["é$"]);
        let large = "#".repeat(LIMIT + 1);
        assert_eq!(images(&large, &BTreeMap::new()), Err(Error::TooLarge));
    }

    proptest::proptest! {
        #[test]
        fn any_text_is_read_without_panicking(text in "(?s).{0,400}") {
            let _ = images(&text, &BTreeMap::new());
        }

        #[test]
        fn any_from_line_is_read_without_panicking(line in "FROM [ -~]{0,80}( AS [ -~]{0,10})?") {
            let _ = images(&line, &BTreeMap::from([("A".to_string(), "${A}".to_string())]));
        }
    }
}

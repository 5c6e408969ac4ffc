//! Globs over relative paths: a trigger's `includedFiles` and `ignoredFiles` (spec §9.3) and the
//! files of a build's `templates:`. Go's `path/filepath.Match` (`*` and `?` never match `/`,
//! `[a-z]`, `[^a-z]`, `\` escapes) extended with `**`, which matches across directories
//! (`**/README.md` includes the root's), and `{a,b}` alternation. Each glob is translated into an
//! anchored regular expression, so matching is linear.

use std::fmt;

use regex::Regex;

/// A compiled glob, matched against a whole repository-relative path such as `src/main.py`.
#[derive(Debug, Clone)]
pub struct Glob {
    text: String,
    regex: Regex,
}

impl Glob {
    pub fn new(text: &str) -> Result<Self, String> {
        let mut pattern = String::from("^");
        let mut chars = text.chars().peekable();
        let mut open_braces = 0;
        while let Some(c) = chars.next() {
            match c {
                '*' if chars.peek() == Some(&'*') => {
                    chars.next();
                    if chars.peek() == Some(&'/') {
                        chars.next();
                        pattern.push_str("(?:.*/)?");
                    } else {
                        pattern.push_str(".*");
                    }
                }
                '*' => pattern.push_str("[^/]*"),
                '?' => pattern.push_str("[^/]"),
                '[' => pattern.push_str(&class(&mut chars, text)?),
                '{' => {
                    open_braces += 1;
                    pattern.push_str("(?:");
                }
                ',' if open_braces > 0 => pattern.push('|'),
                '}' if open_braces > 0 => {
                    open_braces -= 1;
                    pattern.push(')');
                }
                '\\' => {
                    let escaped = chars
                        .next()
                        .ok_or_else(|| format!("glob {text:?} ends with a lone `\\`"))?;
                    pattern.push_str(&regex::escape(&escaped.to_string()));
                }
                c => pattern.push_str(&regex::escape(&c.to_string())),
            }
        }
        if open_braces > 0 {
            return Err(format!("glob {text:?} has an unclosed `{{`"));
        }
        pattern.push('$');
        let regex = Regex::new(&pattern).map_err(|e| format!("glob {text:?}: {e}"))?;
        Ok(Self {
            text: text.to_string(),
            regex,
        })
    }

    pub fn matches(&self, path: &str) -> bool {
        self.regex.is_match(path)
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A `[...]` class after its `[`, as a regex class that never matches `/`. Go negates with `^`.
fn class(chars: &mut std::iter::Peekable<std::str::Chars>, glob: &str) -> Result<String, String> {
    let unclosed = || format!("glob {glob:?} has an unclosed `[`");
    let mut class = String::from("[");
    if chars.peek() == Some(&'^') {
        chars.next();
        class.push('^');
    }
    let mut empty = true;
    loop {
        let c = match chars.next().ok_or_else(unclosed)? {
            ']' if !empty => break,
            '\\' => chars.next().ok_or_else(unclosed)?,
            c => c,
        };
        empty = false;
        if c == '-' && !class.ends_with(['[', '^']) && chars.peek() != Some(&']') {
            class.push('-');
        } else {
            class.push_str(&regex::escape(&c.to_string()));
        }
    }
    class.push(']');
    Ok(format!("[{class}&&[^/]]"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(glob: &str, path: &str) -> bool {
        Glob::new(glob).unwrap().matches(path)
    }

    #[test]
    fn star_stays_in_its_directory_and_double_star_crosses() {
        assert!(matches("src/*", "src/code.py"));
        assert!(!matches("src/*", "src/sub/code.py"));
        assert!(matches("src/**", "src/code.py"));
        assert!(matches("src/**", "src/sub/code.py"));
        assert!(matches("**/README.md", "README.md"));
        assert!(matches("**/README.md", "docs/deep/README.md"));
        assert!(!matches("**/README.md", "docs/README.md.bak"));
        assert!(matches("*.py", "setup.py"));
        assert!(!matches("*.py", "pkg/setup.py"));
        assert!(matches(
            "training-pipeline/trainer/**",
            "training-pipeline/trainer/train.py"
        ));
    }

    #[test]
    fn classes_alternation_and_escapes() {
        assert!(matches("file?.txt", "file1.txt"));
        assert!(!matches("file?.txt", "file/.txt"));
        assert!(matches("v[0-9].md", "v3.md"));
        assert!(!matches("v[^0-9].md", "v3.md"));
        assert!(matches("v[^0-9].md", "vx.md"));
        assert!(!matches("a[^x]b", "a/b"));
        assert!(matches("{src,lib}/**/*.rs", "lib/a/b.rs"));
        assert!(matches("{src,lib}/**/*.rs", "src/b.rs"));
        assert!(!matches("{src,lib}/**/*.rs", "test/b.rs"));
        assert!(matches(r"\*.md", "*.md"));
        assert!(!matches(r"\*.md", "a.md"));
        assert!(matches("a.b", "a.b"));
        assert!(!matches("a.b", "axb"));
        assert!(matches("a,b", "a,b"));
    }

    #[test]
    fn malformed_globs_are_refused() {
        for glob in ["src/[a-", "{a,b", "a\\", "[]"] {
            assert!(Glob::new(glob).is_err(), "{glob}");
        }
    }
}

//! Diagnostics: every problem found in a build config, with the field it concerns and where it
//! was written, rendered as `FILE:LINE:COL: FIELD.PATH: message`.
//!
//! Checks collect diagnostics instead of stopping at the first problem, so a user fixes a config
//! in one round. A diagnostic may be created knowing only its field path (validation and
//! substitution work on the model, not the text); [`Diagnostics::locate`] then finds its line and
//! column in the source tree.

use std::fmt;

use crate::core::config::tree::{Node, Value};

/// A 1-based line and column in the source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Key(String),
    Index(usize),
}

/// Where a value sits in the config, e.g. `steps[2].waitFor[0]`. Keys are written with the
/// canonical (camelCase) spelling; locating also finds their snake_case spelling in the file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldPath(Vec<Segment>);

impl FieldPath {
    pub fn root() -> Self {
        Self::default()
    }

    pub fn key(&self, key: &str) -> Self {
        self.with(Segment::Key(key.to_string()))
    }

    pub fn index(&self, index: usize) -> Self {
        self.with(Segment::Index(index))
    }

    /// `child` as a path under this one.
    pub fn join(&self, child: &FieldPath) -> Self {
        Self(self.0.iter().chain(&child.0).cloned().collect())
    }

    fn with(&self, segment: Segment) -> Self {
        let mut segments = self.0.clone();
        segments.push(segment);
        Self(segments)
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Key(key) if i == 0 => write!(f, "{key}")?,
                Segment::Key(key) => write!(f, ".{key}")?,
                Segment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub path: FieldPath,
    pub pos: Option<Pos>,
    pub message: String,
}

impl Diagnostic {
    /// `FILE:LINE:COL: PATH: message`; warnings say so after the location.
    pub fn render(&self, file: &str) -> String {
        let mut out = file.to_string();
        if let Some(pos) = self.pos {
            out += &format!(":{}:{}", pos.line, pos.col);
        }
        out += ": ";
        if self.severity == Severity::Warning {
            out += "warning: ";
        }
        let path = self.path.to_string();
        if !path.is_empty() {
            out += &path;
            out += ": ";
        }
        out + &self.message
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics(Vec<Diagnostic>);

impl Diagnostics {
    pub fn error(&mut self, path: &FieldPath, message: impl Into<String>) {
        self.push(Severity::Error, path, None, message.into());
    }

    pub fn warning(&mut self, path: &FieldPath, message: impl Into<String>) {
        self.push(Severity::Warning, path, None, message.into());
    }

    pub fn error_at(&mut self, path: &FieldPath, pos: Pos, message: impl Into<String>) {
        self.push(Severity::Error, path, Some(pos), message.into());
    }

    fn push(&mut self, severity: Severity, path: &FieldPath, pos: Option<Pos>, message: String) {
        self.0.push(Diagnostic {
            severity,
            path: path.clone(),
            pos,
            message,
        });
    }

    pub fn has_errors(&self) -> bool {
        self.0.iter().any(|d| d.severity == Severity::Error)
    }

    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| d.severity == Severity::Error)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter()
    }

    pub fn extend(&mut self, other: Diagnostics) {
        self.0.extend(other.0);
    }

    /// The same diagnostics with their paths under `parent`: for a document embedded in another.
    pub fn under(mut self, parent: &FieldPath) -> Self {
        for diagnostic in &mut self.0 {
            diagnostic.path = parent.join(&diagnostic.path);
        }
        self
    }

    /// Gives every diagnostic without a position the position of its field in `root`, and sorts
    /// them by position so the output reads top to bottom.
    pub fn locate(&mut self, root: &Node) {
        for diagnostic in &mut self.0 {
            if diagnostic.pos.is_none() {
                diagnostic.pos = Some(position_of(root, &diagnostic.path));
            }
        }
        self.0.sort_by_key(|d| d.pos);
    }

    pub fn render(&self, file: &str) -> String {
        self.0.iter().map(|d| d.render(file) + "\n").collect()
    }
}

/// The position of the deepest node on `path` that exists. A scalar given where a list was
/// expected (`waitFor: a`) stands for its own first element.
fn position_of(root: &Node, path: &FieldPath) -> Pos {
    let mut node = root;
    for segment in &path.0 {
        let next = match (segment, &node.value) {
            (Segment::Key(key), Value::Map(_)) => {
                node.get(key).or_else(|| node.get(&snake_case(key)))
            }
            (Segment::Index(i), Value::Seq(items)) => items.get(*i),
            (Segment::Index(0), Value::Scalar(_)) => Some(node),
            _ => None,
        };
        match next {
            Some(next) => node = next,
            None => break,
        }
    }
    node.pos
}

/// `waitFor` → `wait_for`, the spelling gcloud also accepts.
pub fn snake_case(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 4);
    for c in camel.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::config::tree;

    #[test]
    fn renders_location_path_and_message() {
        let root = tree::parse("steps:\n- name: a\n  wait_for: [buld]\n").unwrap();
        let mut diagnostics = Diagnostics::default();
        let path = FieldPath::root()
            .key("steps")
            .index(0)
            .key("waitFor")
            .index(0);
        diagnostics.error(&path, "unknown step id \"buld\"");
        diagnostics.warning(&FieldPath::root(), "whole file");
        diagnostics.locate(&root);
        assert_eq!(
            diagnostics.render("cloudbuild.yaml"),
            "cloudbuild.yaml:1:1: warning: whole file\n\
             cloudbuild.yaml:3:14: steps[0].waitFor[0]: unknown step id \"buld\"\n"
        );
    }

    #[test]
    fn a_scalar_stands_for_its_first_element() {
        let root = tree::parse("waitFor: a\n").unwrap();
        let path = FieldPath::root().key("waitFor").index(0);
        assert_eq!(position_of(&root, &path), Pos { line: 1, col: 10 });
    }
}

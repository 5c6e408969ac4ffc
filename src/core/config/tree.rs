//! A YAML (or JSON) document as a tree of nodes that remember where they were written.
//!
//! Build configs come from repositories we do not control, so loading is bounded: the file size,
//! the nesting depth and the number of nodes after alias expansion all have limits, which turns
//! "billion laughs" alias bombs and deeply nested input into one clear error instead of memory
//! exhaustion. Aliases and YAML 1.1 merge keys (`<<: *defaults`) are resolved here, so the layers
//! above see plain mappings and sequences.

use std::collections::HashMap;

use granit_parser::{ErrorKind, Event, Parser, ScalarStyle, Span};

use crate::core::diag::Pos;

/// Largest config file accepted, in bytes. Cloud Build configs are a few kilobytes; the largest in
/// the corpus is far below this.
pub const MAX_FILE_BYTES: usize = 4 * 1024 * 1024;
/// Deepest nesting of mappings and sequences accepted.
pub const MAX_DEPTH: usize = 64;
/// Most nodes a document may expand to, counting every alias expansion.
pub const MAX_NODES: usize = 200_000;
/// Most bytes of scalar text a document may expand to, counting every alias expansion: an alias
/// of a 1 MiB scalar is one node but a megabyte, so nodes alone do not bound memory.
pub const MAX_EXPANDED_BYTES: usize = 2 * MAX_FILE_BYTES;

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Scalar(Scalar),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

/// A scalar keeps its source text: whether `1.10` is a number or a string is decided by the field
/// that receives it, not by the YAML resolver.
#[derive(Debug, Clone, PartialEq)]
pub struct Scalar {
    pub text: String,
    pub quoted: bool,
}

/// How much of the document's limits a node uses.
#[derive(Debug, Clone, Copy, Default)]
struct Size {
    nodes: usize,
    bytes: usize,
}

impl Size {
    const ONE: Size = Size { nodes: 1, bytes: 0 };

    fn add(self, other: Size) -> Size {
        Size {
            nodes: self.nodes + other.nodes,
            bytes: self.bytes + other.bytes,
        }
    }
}

/// Why a document could not be turned into a tree.
#[derive(Debug, Clone, PartialEq)]
pub struct TreeError {
    pub pos: Pos,
    pub message: String,
}

impl Node {
    pub fn scalar(&self) -> Option<&Scalar> {
        match &self.value {
            Value::Scalar(s) => Some(s),
            _ => None,
        }
    }

    /// The value under `key` of a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.entries()
            .find(|(k, _)| k.scalar().is_some_and(|s| s.text == key))
            .map(|(_, v)| v)
    }

    pub fn entries(&self) -> impl Iterator<Item = (&Node, &Node)> {
        let entries = match &self.value {
            Value::Map(entries) => entries.as_slice(),
            _ => &[],
        };
        entries.iter().map(|(k, v)| (k, v))
    }

    /// What kind of YAML value this is, for messages such as "expected a list, found a mapping".
    pub fn kind(&self) -> &'static str {
        match &self.value {
            Value::Null => "null",
            Value::Scalar(_) => "a scalar",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    /// What this node costs when an alias repeats it: its nodes and its bytes of scalar text.
    fn size(&self) -> Size {
        match &self.value {
            Value::Null => Size { nodes: 1, bytes: 0 },
            Value::Scalar(scalar) => Size {
                nodes: 1,
                bytes: scalar.text.len(),
            },
            Value::Seq(items) => items.iter().map(Node::size).fold(Size::ONE, Size::add),
            Value::Map(entries) => entries
                .iter()
                .map(|(k, v)| k.size().add(v.size()))
                .fold(Size::ONE, Size::add),
        }
    }
}

/// Parses one YAML document (JSON is YAML too). An empty document is an error: a config must be a
/// mapping.
///
/// The parser is as lenient as libyaml (which gcloud reads configs with) about the indentation of
/// flow collections, which real configs rely on. One more leniency is added by hand: a bare `-`
/// inside a flow sequence (`waitFor: [-]`, seen in real configs) is read as the string "-".
pub fn parse(text: &str) -> Result<Node, TreeError> {
    if text.len() > MAX_FILE_BYTES {
        return Err(TreeError {
            pos: Pos { line: 1, col: 1 },
            message: format!(
                "file is {} bytes; the limit is {MAX_FILE_BYTES} bytes",
                text.len()
            ),
        });
    }
    match build(text) {
        Err(LoadError::LoneDash(offset)) => {
            let quoted = format!("{}\"-\"{}", &text[..offset], &text[offset + 1..]);
            build(&quoted).map_err(LoadError::into_tree_error)
        }
        result => result.map_err(LoadError::into_tree_error),
    }
}

enum LoadError {
    /// A bare `-` in a flow collection, at this byte offset.
    LoneDash(usize),
    Other(TreeError),
}

impl LoadError {
    fn into_tree_error(self) -> TreeError {
        match self {
            LoadError::Other(e) => e,
            LoadError::LoneDash(_) => TreeError {
                pos: Pos { line: 1, col: 1 },
                message: "a bare `-` in a flow sequence could not be read".into(),
            },
        }
    }
}

fn build(text: &str) -> Result<Node, LoadError> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    while let Some(event) = parser.next_event() {
        let (event, span) = event.map_err(|e| {
            let marker = e.marker();
            match (e.kind(), marker.byte_offset()) {
                (ErrorKind::PlainScalarStartsWithDashFlowIndicator, Some(offset))
                    if text.as_bytes().get(offset) == Some(&b'-') =>
                {
                    LoadError::LoneDash(offset)
                }
                _ => LoadError::Other(TreeError {
                    pos: Pos {
                        line: marker.line(),
                        col: marker.col() + 1,
                    },
                    message: e.info(),
                }),
            }
        })?;
        builder.on_event(event, span).map_err(LoadError::Other)?;
    }
    builder.finish().map_err(LoadError::Other)
}

/// A mapping or sequence being filled.
enum Open {
    Seq {
        pos: Pos,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        pos: Pos,
        anchor: usize,
        entries: Vec<(Node, Node)>,
        key: Option<Node>,
    },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Open>,
    anchors: HashMap<usize, Node>,
    expanded: Size,
    documents: usize,
    root: Option<Node>,
}

impl Builder {
    fn on_event(&mut self, event: Event<'_>, span: Span) -> Result<(), TreeError> {
        let pos = Pos {
            line: span.start.line(),
            col: span.start.col() + 1,
        };
        match event {
            Event::DocumentStart(..) => {
                self.documents += 1;
                if self.documents > 1 {
                    return Err(TreeError {
                        pos,
                        message: "a build config holds one YAML document; found a second `---`"
                            .into(),
                    });
                }
            }
            Event::Scalar(text, style, anchor, _tag) => {
                let value = if style == ScalarStyle::Plain && is_null(&text) {
                    Value::Null
                } else {
                    Value::Scalar(Scalar {
                        text: text.into_owned(),
                        quoted: style != ScalarStyle::Plain,
                    })
                };
                let node = Node { pos, value };
                self.count(node.size(), pos)?;
                self.add(node, anchor);
            }
            Event::Alias(anchor) => {
                let Some(node) = self.anchors.get(&anchor) else {
                    return Err(TreeError {
                        pos,
                        message: "alias to an unknown anchor".into(),
                    });
                };
                // Counted before the copy is made: the limit is there to prevent that copy.
                let size = node.size();
                self.count(size, pos)?;
                let value = self.anchors[&anchor].value.clone();
                self.add(Node { pos, value }, 0);
            }
            Event::SequenceStart(_, anchor, _) | Event::MappingStart(_, anchor, _) => {
                if self.stack.len() >= MAX_DEPTH {
                    return Err(TreeError {
                        pos,
                        message: format!("nesting is deeper than {MAX_DEPTH} levels"),
                    });
                }
                self.count(Size::ONE, pos)?;
                self.stack.push(match event {
                    Event::SequenceStart(..) => Open::Seq {
                        pos,
                        anchor,
                        items: Vec::new(),
                    },
                    _ => Open::Map {
                        pos,
                        anchor,
                        entries: Vec::new(),
                        key: None,
                    },
                });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match self.stack.pop() {
                    Some(Open::Seq { pos, anchor, items }) => (
                        Node {
                            pos,
                            value: Value::Seq(items),
                        },
                        anchor,
                    ),
                    Some(Open::Map {
                        pos,
                        anchor,
                        entries,
                        ..
                    }) => (
                        Node {
                            pos,
                            value: Value::Map(merge_keys(entries)?),
                        },
                        anchor,
                    ),
                    None => {
                        return Err(TreeError {
                            pos,
                            message: "unbalanced YAML events".into(),
                        });
                    }
                };
                self.add(node, anchor);
            }
            _ => {}
        }
        Ok(())
    }

    /// Counts a node into the document's expanded size, refusing the document past a limit.
    fn count(&mut self, size: Size, pos: Pos) -> Result<(), TreeError> {
        self.expanded = self.expanded.add(size);
        let message = if self.expanded.nodes > MAX_NODES {
            format!("document expands to more than {MAX_NODES} nodes (an alias bomb?)")
        } else if self.expanded.bytes > MAX_EXPANDED_BYTES {
            format!(
                "document expands to more than {MAX_EXPANDED_BYTES} bytes of text (an alias bomb?)"
            )
        } else {
            return Ok(());
        };
        Err(TreeError { pos, message })
    }

    fn add(&mut self, node: Node, anchor: usize) {
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Open::Seq { items, .. }) => items.push(node),
            Some(Open::Map { entries, key, .. }) => match key.take() {
                None => *key = Some(node),
                Some(k) => entries.push((k, node)),
            },
        }
    }

    fn finish(self) -> Result<Node, TreeError> {
        self.root.ok_or(TreeError {
            pos: Pos { line: 1, col: 1 },
            message: "the file is empty; a build config is a mapping with at least `steps`".into(),
        })
    }
}

/// YAML core-schema null: `~`, `null` and the empty plain scalar.
fn is_null(text: &str) -> bool {
    matches!(text, "" | "~" | "null" | "Null" | "NULL")
}

/// Resolves YAML 1.1 merge keys: entries of `<<: *map` or `<<: [*a, *b]` are added unless the
/// mapping itself (or an earlier merged mapping) already has the key.
fn merge_keys(entries: Vec<(Node, Node)>) -> Result<Vec<(Node, Node)>, TreeError> {
    let is_merge = |k: &Node| k.scalar().is_some_and(|s| !s.quoted && s.text == "<<");
    if !entries.iter().any(|(k, _)| is_merge(k)) {
        return Ok(entries);
    }
    let (merges, mut own): (Vec<_>, Vec<_>) = entries.into_iter().partition(|(k, _)| is_merge(k));
    for (_, source) in merges {
        let sources = match source.value {
            Value::Seq(items) => items,
            _ => vec![source],
        };
        for source in sources {
            let Value::Map(merged) = source.value else {
                return Err(TreeError {
                    pos: source.pos,
                    message: "a merge key `<<` takes a mapping or a list of mappings".into(),
                });
            };
            for (k, v) in merged {
                let text = k.scalar().map(|s| s.text.clone());
                if !own
                    .iter()
                    .any(|(o, _)| o.scalar().map(|s| &s.text) == text.as_ref())
                {
                    own.push((k, v));
                }
            }
        }
    }
    Ok(own)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_at(node: &Node, key: &str) -> String {
        node.get(key)
            .and_then(Node::scalar)
            .map(|s| s.text.clone())
            .unwrap_or_default()
    }

    #[test]
    fn positions_are_one_based() {
        let root = parse("steps:\n  - name: ubuntu\n    args: [a]\n").unwrap();
        let step = match &root.get("steps").unwrap().value {
            Value::Seq(items) => items[0].clone(),
            _ => panic!(),
        };
        assert_eq!(step.get("name").unwrap().pos, Pos { line: 2, col: 11 });
        assert_eq!(step.get("args").unwrap().pos, Pos { line: 3, col: 11 });
    }

    #[test]
    fn merge_keys_and_aliases() {
        let root = parse("base: &b {a: 1, b: 2}\nuse:\n  <<: *b\n  b: 3\n").unwrap();
        let used = root.get("use").unwrap();
        assert_eq!(text_at(used, "a"), "1");
        assert_eq!(text_at(used, "b"), "3");
        let list = parse("x: &x {a: 1}\ny: &y {b: 2}\nz: {<<: [*x, *y]}\n").unwrap();
        assert_eq!(text_at(list.get("z").unwrap(), "b"), "2");
    }

    #[test]
    fn crlf_and_json() {
        let root = parse("steps:\r\n- name: a\r\n").unwrap();
        assert!(root.get("steps").is_some());
        let json = parse("{\"steps\": [{\"name\": \"a\"}],\n\t\"timeout\": \"5s\"}").unwrap();
        assert_eq!(text_at(&json, "timeout"), "5s");
    }

    #[test]
    fn scalars_keep_text_and_quoting() {
        let root = parse("a: 1.10\nb: '0755'\nc: ~\nd:\n").unwrap();
        assert_eq!(
            root.get("a").unwrap().scalar(),
            Some(&Scalar {
                text: "1.10".into(),
                quoted: false
            })
        );
        assert!(root.get("b").unwrap().scalar().unwrap().quoted);
        assert_eq!(root.get("c").unwrap().value, Value::Null);
        assert_eq!(root.get("d").unwrap().value, Value::Null);
    }

    #[test]
    fn bounded_input_is_refused() {
        let bomb = "a: &a [x,x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\n\
                    c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\n\
                    e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]\n";
        assert!(parse(bomb).unwrap_err().message.contains("alias bomb"));
        let deep = "[".repeat(100) + &"]".repeat(100);
        assert!(parse("waitFor: [-]\n").unwrap().get("waitFor").is_some());
        assert!(parse(&deep).unwrap_err().message.contains("nesting"));
        let huge = "#".repeat(MAX_FILE_BYTES + 1);
        assert!(parse(&huge).unwrap_err().message.contains("limit"));
        assert!(parse("").unwrap_err().message.contains("empty"));
        assert!(parse("a: 1\n---\nb: 2\n").is_err());
    }

    #[test]
    fn an_alias_of_a_long_scalar_counts_its_bytes() {
        // A 1 MiB scalar and eight aliases of it: few nodes, but the seventh alias (at column 23)
        // takes the text, keys included, past the 8 MiB limit.
        let text = format!(
            "a: &a {}\nb: [{}]\n",
            "x".repeat(1 << 20),
            ["*a"; 8].join(",")
        );
        let error = parse(&text).unwrap_err();
        assert!(error.message.contains("bytes of text"), "{error:?}");
        assert_eq!((error.pos.line, error.pos.col), (2, 23), "{error:?}");
        let seven = format!(
            "a: &a {}\nb: [{}]\n",
            "x".repeat(1 << 20),
            ["*a"; 6].join(",")
        );
        assert!(parse(&seven).is_ok());
    }
}

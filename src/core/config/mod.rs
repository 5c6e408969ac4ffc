//! Build configs: loading a `cloudbuild.yaml` or `.json` file into a [`BuildConfig`] with every
//! problem reported at its line and column.

pub mod decode;
pub mod duration;
pub mod model;
pub mod tree;
pub mod validate;

pub use model::BuildConfig;

use crate::core::diag::{Diagnostics, FieldPath};
use tree::Node;

/// A config file as read: the model, the source tree (to locate later diagnostics) and what
/// loading and validation found.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: BuildConfig,
    pub tree: Node,
    pub diagnostics: Diagnostics,
}

impl Loaded {
    /// Gives positions to diagnostics found after loading (substitution, planning) and adds them.
    pub fn add(&mut self, mut diagnostics: Diagnostics) {
        diagnostics.locate(&self.tree);
        self.diagnostics.extend(diagnostics);
    }
}

/// Parses, decodes and validates a config's bytes. `Err` holds the diagnostics when the bytes are
/// not a YAML or JSON document at all.
pub fn load(bytes: &[u8]) -> Result<Loaded, Diagnostics> {
    load_with(bytes, |_| {})
}

/// [`load`], with `adjust` applied to the decoded config before it is validated (a command-line
/// override such as `--timeout` must be judged as if the file said it).
pub fn load_with(
    bytes: &[u8],
    adjust: impl FnOnce(&mut BuildConfig),
) -> Result<Loaded, Diagnostics> {
    let mut diagnostics = Diagnostics::default();
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => {
            let prefix = &bytes[..e.valid_up_to()];
            let line = prefix.iter().filter(|&&b| b == b'\n').count() + 1;
            let col = prefix.len()
                - prefix
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .map_or(0, |i| i + 1)
                + 1;
            let pos = crate::core::diag::Pos { line, col };
            diagnostics.error_at(&FieldPath::root(), pos, "not a text file: invalid UTF-8");
            return Err(diagnostics);
        }
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let tree = match tree::parse(text) {
        Ok(tree) => tree,
        Err(e) => {
            diagnostics.error_at(&FieldPath::root(), e.pos, e.message);
            return Err(diagnostics);
        }
    };
    let mut config = decode::build_config(&tree, &mut diagnostics);
    adjust(&mut config);
    // A root that is not a mapping is one error; the rules about its (absent) fields add nothing.
    if matches!(tree.value, tree::Value::Map(_)) {
        validate::validate(&config, &mut diagnostics);
    }
    diagnostics.locate(&tree);
    Ok(Loaded {
        config,
        tree,
        diagnostics,
    })
}

/// Decodes and validates a build config written inside another file at `path` (a trigger's
/// inline `build`); its diagnostics go to `diagnostics` with their positions in that file.
pub fn embedded(node: &Node, path: &FieldPath, diagnostics: &mut Diagnostics) -> BuildConfig {
    let mut inner = Diagnostics::default();
    let config = decode::build_config(node, &mut inner);
    if matches!(node.value, tree::Value::Map(_)) {
        validate::validate(&config, &mut inner);
    }
    inner.locate(node);
    diagnostics.extend(inner.under(path));
    config
}

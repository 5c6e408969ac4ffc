//! The architecture's rules, checked on the parsed source: every module says what it owns, each
//! outside engine is reached from exactly one module, each module uses only the modules its rule
//! lists, no rule reaches up a layer (ARCHITECTURE.md), and no debugging leftovers ship.
//!
//! Paths are read with `syn`, not matched as text: `use` trees (nested braces, `self`, `super`,
//! `crate`, globs), paths in code, types and attributes (`crate::adapters::store::Error`,
//! `sqlx::query(…)`), and `a::b` sequences inside macro bodies (`tokio::select!`), all resolved to
//! the crate root.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use proc_macro2::{TokenStream, TokenTree};
use syn::visit::{self, Visit};

fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// Where a module sits: a module may use modules of its own layer and of those below.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Layer {
    /// Pure: values in, values out; no engine, no file but what a module's row says.
    Core,
    /// The outside world behind one module each: engines, files, the database, registries.
    Adapter,
    /// Builds from recipe to record: the command line's and the server's.
    Pipeline,
    /// What people and programs talk to: HTTP, the command line, the API's client.
    Edge,
}

use Layer::{Adapter, Core, Edge, Pipeline};

/// Every module (a file's module belongs to the longest one that contains it) and the other
/// modules it may use: ARCHITECTURE.md's module table. A module's layer is its folder.
const RULES: &[(&str, &[&str])] = &[
    // lib.rs declares the modules; main.rs calls `builder::edges::cli`, the library as an outside crate.
    ("", &[]),
    // The layers' roots declare their modules.
    ("core", &[]),
    ("adapters", &[]),
    ("edges", &[]),
    // Locating a field path in a config's tree.
    ("core::diag", &["core::config"]),
    (
        "core::config",
        &["core::diag", "core::image", "core::templates"],
    ),
    ("core::substitute", &[]),
    ("core::access", &[]),
    (
        "core::plan",
        &[
            "core::alias",
            "core::config",
            "core::diag",
            "core::glob",
            "core::image",
            "core::substitute",
            "core::templates",
        ],
    ),
    ("core::image", &[]),
    ("core::alias", &[]),
    ("core::dockerfile", &[]),
    ("core::build", &["core::substitute", "core::templates"]),
    ("core::glob", &[]),
    ("core::templates", &["core::config", "core::glob"]),
    ("core::kfp", &["core::templates"]),
    (
        "core::triggers",
        &[
            "core::config",
            "core::diag",
            "core::glob",
            "core::plan",
            "core::substitute",
            "core::webhooks",
        ],
    ),
    (
        "core::schedule",
        &["core::config", "core::diag", "core::triggers"],
    ),
    ("core::webhooks", &[]),
    // A build's status in GitHub's words.
    ("core::github", &["core::build"]),
    // The API's JSON is made of the core's words for a build's outcome, triggers, schedules and
    // values.
    (
        "core::wire",
        &[
            "core::build",
            "core::schedule",
            "core::substitute",
            "core::templates",
            "core::triggers",
        ],
    ),
    ("core::logs", &[]),
    // Notifier configs are read as trigger files are; their filters are over a build's status.
    (
        "core::notify",
        &[
            "core::build",
            "core::build_resource",
            "core::config",
            "core::diag",
            "core::triggers",
        ],
    ),
    ("core::retention", &[]),
    // Cloud Build's `Build` resource is made of the API's JSON of a build, its plan's words for
    // the workspace, and which substitutions are the user's.
    (
        "core::build_resource",
        &[
            "core::build",
            "core::plan",
            "core::substitute",
            "core::wire",
        ],
    ),
    // The seam re-exports its Docker backend, and `LogStream`, the logs' word for a stream.
    // `BuildSpec` carries the aliases the endpoint resolves images with.
    (
        "adapters::runtime",
        &["adapters::runtime::docker", "core::alias", "core::logs"],
    ),
    // Its own row, so that the executor, which may use `runtime`, cannot reach into it.
    // The endpoint resolves what steps pull and build from as step images are resolved.
    (
        "adapters::runtime::docker",
        &["adapters::runtime", "core::alias", "core::dockerfile"],
    ),
    ("adapters::source", &[]),
    // What it sends is the core's `Report`, made into GitHub's bodies there.
    ("adapters::github", &["core::github"]),
    // `Credentials` and `RegistryAuth`: what a backend pulls and pushes images with.
    (
        "adapters::registry",
        &["core::image", "adapters::runtime", "core::templates"],
    ),
    // `LogStream`, which stream a log line came from; the chunks a log is stored in.
    (
        "adapters::store",
        &[
            "core::build",
            "core::logs",
            "core::plan",
            "core::retention",
            "adapters::runtime",
            "core::schedule",
            "core::substitute",
            "core::templates",
            "core::triggers",
            "core::webhooks",
        ],
    ),
    ("adapters::secrets", &["core::plan"]),
    // What it sends is made by `core::notify`; HTTP bodies are signed as GitHub signs its own;
    // the secrets it sends with are looked up as builds' are, when it sends.
    (
        "adapters::notify",
        &["core::notify", "core::webhooks", "adapters::secrets"],
    ),
    (
        "pipeline::execute",
        &[
            "core::alias",
            "core::build",
            "core::image",
            "core::logs",
            "core::plan",
            "adapters::registry",
            "adapters::runtime",
            "core::templates",
        ],
    ),
    // The executor's protocol tests on a fake backend (a file, so checked): builds from configs.
    (
        "pipeline::execute::protocol",
        &[
            "core::alias",
            "core::build",
            "core::config",
            "pipeline::execute",
            "core::plan",
            "adapters::registry",
            "adapters::runtime",
        ],
    ),
    (
        "pipeline::submit",
        &[
            "pipeline::execute",
            "pipeline",
            "core::plan",
            "adapters::source",
            "core::substitute",
        ],
    ),
    (
        "pipeline",
        &[
            "core::alias",
            "core::build",
            "core::config",
            "core::diag",
            "pipeline::execute",
            "core::plan",
            "adapters::registry",
            "adapters::runtime",
            "adapters::secrets",
            "adapters::store",
            "core::substitute",
        ],
    ),
    (
        "pipeline::service",
        &[
            "adapters::github",
            "core::github",
            "core::alias",
            "core::build",
            "core::build_resource",
            "adapters::notify",
            "core::notify",
            "core::config",
            "core::diag",
            "pipeline::execute",
            "pipeline",
            "core::kfp",
            "core::plan",
            "adapters::registry",
            "core::retention",
            "adapters::runtime",
            "core::schedule",
            "adapters::secrets",
            "adapters::source",
            "adapters::store",
            "core::substitute",
            "core::templates",
            "core::triggers",
            "core::webhooks",
            "core::wire",
        ],
    ),
    // Not `store`: the service's answers only, in the API's wire types.
    (
        "edges::api",
        &[
            "core::access",
            "core::build",
            "core::kfp",
            "core::retention",
            "core::schedule",
            "core::templates",
            "pipeline::service",
            "core::substitute",
            "core::webhooks",
            "core::wire",
        ],
    ),
    (
        "edges::client",
        &["core::build", "core::substitute", "core::wire"],
    ),
    (
        "edges::cli",
        &[
            "core::access",
            "adapters::github",
            "adapters::notify",
            "core::alias",
            "edges::api",
            "core::build",
            "edges::client",
            "core::config",
            "core::diag",
            "pipeline::execute",
            "core::image",
            "pipeline",
            "core::plan",
            "adapters::registry",
            "core::retention",
            "adapters::runtime",
            "core::schedule",
            "adapters::secrets",
            "pipeline::service",
            "adapters::source",
            "adapters::store",
            "pipeline::submit",
            "core::substitute",
            "core::templates",
            "core::triggers",
            "core::webhooks",
            "core::wire",
        ],
    ),
    // The commands that go to a server know its API, not its store.
    (
        "edges::cli::remote",
        &[
            "core::build",
            "edges::cli",
            "edges::client",
            "adapters::source",
            "pipeline::submit",
            "core::triggers",
            "core::wire",
        ],
    ),
];

/// Uses that the architecture does not want and the code still has: (module, what it uses,
/// why, and what removes it). One that is no longer used fails the test, to be struck off.
const EXCEPTIONS: &[(&str, &str, &str)] = &[];

/// Outside crates that only one module may use; a crate listed more than once has several
/// owners, each with its reason.
const OWNERS: &[(&str, &str)] = &[
    ("bollard", "adapters::runtime::docker::engine"),
    ("sqlx", "adapters::store"),
    ("granit_parser", "core::config::tree"),
    ("hmac", "core::webhooks"),
    // Console sessions are MACed like deliveries, under a key of their own.
    ("hmac", "core::access"),
    ("axum", "edges::api"),
    ("maud", "edges::api::console"),
    ("hyper", "edges::client"),
    // Its one server-side type, a status line's reason phrase: the only text the kfp SDK shows
    // of a refusal.
    ("hyper", "edges::api::kfp"),
    ("hyper_util", "edges::client"),
    // A build's engine endpoint is an HTTP server and a client of the engine at once, and must
    // pass upgraded connections (attach, exec, BuildKit sessions) through as bytes: axum would
    // serve it but not pipe upgrades to a client, and bollard speaks the API, not raw HTTP.
    ("hyper", "adapters::runtime::docker::proxy"),
    ("hyper_util", "adapters::runtime::docker::proxy"),
    // A classic `docker build` is read off a step's connection by hand, its context relayed
    // without hyper: the head parser hyper uses, and a socket's shutdown from a shared handle.
    ("httparse", "adapters::runtime::docker::proxy"),
    ("socket2", "adapters::runtime::docker::proxy"),
    ("git2", "adapters::source::git"),
    ("oci_client", "adapters::registry"),
    ("reqwest", "adapters::registry"),
    // GitHub's REST API: plain JSON requests, on the HTTP client and TLS the tree already has.
    ("reqwest", "adapters::github"),
    ("jsonwebtoken", "adapters::github"),
    // Notifications to HTTP endpoints and Slack, on the same client; mail through SMTP.
    ("reqwest", "adapters::notify"),
    ("lettre", "adapters::notify"),
    ("chrono_tz", "core::schedule"),
    // Webhook triggers' CEL filters, compiled when a trigger loads and evaluated on its requests.
    ("cel", "core::triggers::webhook"),
    // Notifiers' CEL filters over a build: the webhook's filter, with the build for variables.
    ("cel", "core::notify"),
    ("tracing_subscriber", "edges::cli::serve"),
    // HTTPS for `builder serve`.
    ("tokio_rustls", "edges::api"),
    // Log chunks are compressed and read back in one place.
    ("zstd", "core::logs"),
];

/// What the pure core may not use: tasks, and the file system, network and processes.
const IMPURE: &[&[&str]] = &[
    &["tokio"],
    &["tokio_util"],
    &["std", "fs"],
    &["std", "net"],
    &["std", "process"],
];

/// Core modules that read one file, as their row in ARCHITECTURE.md says.
const READS: &[(&str, &str)] = &[("core::alias", "reads the alias table it is given")];

/// The rule a module belongs to: the longest rule that contains it.
fn rule_of(module: &[String]) -> Option<&'static (&'static str, &'static [&'static str])> {
    RULES
        .iter()
        .filter(|(name, _)| {
            let name: Vec<&str> = name.split("::").filter(|s| !s.is_empty()).collect();
            module.len() >= name.len() && module.iter().zip(&name).all(|(a, b)| a == b)
        })
        .max_by_key(|(name, _)| name.len())
}

/// A module's layer: the folder under `src/` it sits in; the crate root is an edge.
fn layer_of(name: &str) -> Layer {
    match name.split("::").next().unwrap() {
        "core" => Core,
        "adapters" => Adapter,
        "pipeline" => Pipeline,
        "edges" | "" => Edge,
        folder => panic!("{name}: src/{folder} is not a layer"),
    }
}

#[test]
fn every_rule_keeps_to_its_layer_and_below() {
    for (name, uses) in RULES {
        let layer = layer_of(name);
        for used in *uses {
            assert!(
                layer_of(used) <= layer,
                "{name} ({layer:?}) may use {used} ({:?}), a layer above",
                layer_of(used)
            );
        }
    }
}

#[test]
fn modules_follow_the_architecture() {
    let crates = crates();
    let mut problems = Vec::new();
    let mut excepted = BTreeSet::new();
    for file in sources(Path::new("src")) {
        let text = std::fs::read_to_string(&file).unwrap();
        let name = file.to_string_lossy().replace('\\', "/");
        if !text.starts_with("//!") {
            problems.push(format!(
                "{name}: does not start with a `//!` doc saying what it owns"
            ));
        }
        for leftover in ["dbg!(", "todo!(", "unimplemented!("] {
            if text.contains(leftover) {
                problems.push(format!("{name}: contains {leftover}"));
            }
        }
        // The one unsafe call (an allocator tunable, set before any thread exists) is main's.
        if text.contains("allow(unsafe_code)") && name != "src/main.rs" {
            problems.push(format!("{name}: allows unsafe code (only src/main.rs may)"));
        }
        let module = module_of(&file);
        let module_name = module.join("::");
        let Some((rule, uses)) = rule_of(&module) else {
            problems.push(format!("{name}: module {module_name} has no rule in RULES"));
            continue;
        };
        for (path, line) in paths_of(&file, &text, &crates) {
            let at = format!("{name}:{line}: {}", path.join("::"));
            if path[0] != "crate" {
                let owners: Vec<&str> = OWNERS
                    .iter()
                    .filter(|(krate, _)| *krate == path[0])
                    .map(|(_, owner)| *owner)
                    .collect();
                let owned = owners.iter().any(|owner| {
                    module_name == *owner || module_name.starts_with(&format!("{owner}::"))
                });
                if !owners.is_empty() && !owned {
                    let owners = owners.join(" and ");
                    problems.push(format!("{at}: only {owners} may use {}", path[0]));
                }
                let impure = IMPURE
                    .iter()
                    .any(|p| p.len() <= path.len() && p.iter().zip(&path).all(|(a, b)| a == b));
                if layer_of(rule) == Core && impure && !READS.iter().any(|(m, _)| m == rule) {
                    problems.push(format!("{at}: {rule} is in the pure core"));
                }
                continue;
            }
            let Some((used, _)) = rule_of(&path[1..]) else {
                problems.push(format!("{at}: names no module that has a rule"));
                continue;
            };
            let exception = EXCEPTIONS.iter().find(|(m, u, _)| m == rule && u == used);
            if used == rule || used.is_empty() || uses.contains(used) {
                continue;
            } else if let Some(exception) = exception {
                excepted.insert(exception.0.to_string() + "->" + exception.1);
            } else {
                problems.push(format!("{at}: {rule} may not use {used}"));
            }
        }
    }
    for (module, used, why) in EXCEPTIONS {
        if !excepted.contains(&format!("{module}->{used}")) {
            problems.push(format!(
                "{module} no longer uses {used}: strike the exception ({why})"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// A file's module under the crate root: `src/service/schedules.rs` is `service::schedules`,
/// `src/api/mod.rs` is `api`, `src/lib.rs` and `src/main.rs` the root itself.
fn module_of(file: &Path) -> Vec<String> {
    let relative = file.strip_prefix("src").unwrap().with_extension("");
    let mut module: Vec<String> = relative
        .iter()
        .map(|part| part.to_string_lossy().into_owned())
        .collect();
    if matches!(
        module.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        module.pop();
    }
    module
}

/// The outside crates a path may start with: the package's dependencies and the standard ones.
fn crates() -> BTreeSet<String> {
    let manifest = std::fs::read_to_string("Cargo.toml").unwrap();
    let dependencies = manifest
        .split("\n[dependencies]\n")
        .nth(1)
        .unwrap()
        .split("\n[")
        .next()
        .unwrap();
    dependencies
        .lines()
        .filter_map(|line| line.split_once('=').map(|(name, _)| name.trim()))
        .filter(|name| !name.is_empty() && !name.starts_with('#'))
        .map(|name| name.replace('-', "_"))
        .chain(["std", "core", "alloc"].map(String::from))
        .collect()
}

/// The paths one file names, each from the crate root (`crate`, then modules) or from an outside
/// crate (`sqlx`, …), with the line it is on.
struct Paths<'a> {
    crates: &'a BTreeSet<String>,
    /// The module being read: the file's, then the inline modules (`mod tests`) it is inside.
    module: Vec<String>,
    found: Vec<(Vec<String>, usize)>,
}

impl Paths<'_> {
    /// Records `segments` (as written) at `line`: resolved if they start at `crate`, `self` or
    /// `super`, kept if they start at an outside crate, dropped if they start at a local name.
    fn add(&mut self, segments: &[String], line: usize) {
        let Some(first) = segments.first() else {
            return;
        };
        let mut resolved = vec!["crate".to_string()];
        match first.as_str() {
            "crate" => resolved.extend(segments[1..].iter().cloned()),
            "self" | "super" => {
                let supers = segments.iter().take_while(|s| *s == "super").count();
                let skip = if first == "self" { 1 } else { supers };
                let depth = self.module.len().saturating_sub(supers);
                resolved.extend(self.module[..depth].iter().cloned());
                resolved.extend(segments[skip..].iter().cloned());
            }
            name if self.crates.contains(name) && segments.len() > 1 => {
                resolved = segments.to_vec();
            }
            _ => return,
        }
        self.found.push((resolved, line));
    }

    /// Every path of a `use` tree, braces expanded, `self` in braces meaning the prefix.
    fn add_use(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree, line: usize) {
        match tree {
            syn::UseTree::Path(path) => {
                prefix.push(path.ident.to_string());
                self.add_use(prefix, &path.tree, line);
                prefix.pop();
            }
            syn::UseTree::Name(name) => self.add_leaf(prefix, &name.ident, line),
            syn::UseTree::Rename(rename) => self.add_leaf(prefix, &rename.ident, line),
            syn::UseTree::Glob(_) => self.add(prefix, line),
            syn::UseTree::Group(group) => {
                for tree in &group.items {
                    self.add_use(prefix, tree, line);
                }
            }
        }
    }

    fn add_leaf(&mut self, prefix: &[String], ident: &syn::Ident, line: usize) {
        let mut path = prefix.to_vec();
        if ident != "self" || prefix.is_empty() {
            path.push(ident.to_string());
        }
        self.add(&path, line);
    }

    /// The `a::b::c` sequences of a macro's body, which `syn` leaves as tokens.
    fn add_tokens(&mut self, tokens: TokenStream) {
        let mut path: Vec<String> = Vec::new();
        let mut line = 0;
        let mut colons = 0;
        for token in tokens {
            match token {
                TokenTree::Ident(ident) if path.is_empty() || colons == 2 => {
                    if path.is_empty() {
                        line = ident.span().start().line;
                    }
                    path.push(ident.to_string());
                    colons = 0;
                }
                TokenTree::Punct(punct) if punct.as_char() == ':' && !path.is_empty() => {
                    colons += 1;
                }
                other => {
                    self.end_tokens(&mut path, line);
                    colons = 0;
                    if let TokenTree::Group(group) = other {
                        self.add_tokens(group.stream());
                    } else if let TokenTree::Ident(ident) = other {
                        line = ident.span().start().line;
                        path.push(ident.to_string());
                    }
                }
            }
        }
        self.end_tokens(&mut path, line);
    }

    fn end_tokens(&mut self, path: &mut Vec<String>, line: usize) {
        if path.len() > 1 {
            self.add(path, line);
        }
        path.clear();
    }
}

impl<'ast> Visit<'ast> for Paths<'_> {
    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        let line = item.use_token.span.start().line;
        self.add_use(&mut Vec::new(), &item.tree, line);
    }

    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        // Tests do not ship: they may use what they need to set up a case.
        let test = item.attrs.iter().any(|attr| {
            attr.path().is_ident("cfg")
                && attr
                    .parse_args::<syn::Ident>()
                    .is_ok_and(|cfg| cfg == "test")
        });
        if test {
            return;
        }
        self.module.push(item.ident.to_string());
        visit::visit_item_mod(self, item);
        self.module.pop();
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
        if let Some(first) = path.segments.first() {
            self.add(&segments, first.ident.span().start().line);
        }
        visit::visit_path(self, path);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        self.add_tokens(mac.tokens.clone());
        visit::visit_macro(self, mac);
    }
}

/// The paths `file` names.
fn paths_of(file: &Path, text: &str, crates: &BTreeSet<String>) -> Vec<(Vec<String>, usize)> {
    let syntax = syn::parse_file(text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let mut paths = Paths {
        crates,
        module: module_of(file),
        found: Vec::new(),
    };
    paths.visit_file(&syntax);
    paths.found
}

#[test]
fn paths_are_resolved_from_use_trees_code_and_macros() {
    let text = "use crate::{adapters::store::{self, Store}, core::build as b};\n\
                use super::super::super::core::plan::*;\n\
                mod tests { use super::Thing; }\n\
                fn f() { let e: crate::adapters::runtime::Error = sqlx::query(); tokio::select! { _ = crate::core::logs::mask() => {} } }\n";
    let crates = BTreeSet::from(["sqlx".to_string(), "tokio".to_string()]);
    let paths: BTreeSet<String> = paths_of(
        Path::new("src/pipeline/service/schedules.rs"),
        text,
        &crates,
    )
    .into_iter()
    .map(|(path, line)| format!("{line}: {}", path.join("::")))
    .collect();
    assert_eq!(
        paths,
        BTreeSet::from(
            [
                "1: crate::adapters::store",
                "1: crate::adapters::store::Store",
                "1: crate::core::build",
                "2: crate::core::plan",
                "3: crate::pipeline::service::schedules::Thing",
                "4: crate::adapters::runtime::Error",
                "4: sqlx::query",
                "4: tokio::select",
                "4: crate::core::logs::mask",
            ]
            .map(String::from)
        )
    );
}

//! Image aliases: which image runs for a step image name that a real config writes. Cloud Build
//! pulls `gcr.io/cloud-builders/docker` or `ubuntu` from the internet; here they map to local
//! builders, and whole registries can be mirrored (`gcr.io/*` → `localhost:5000/*`).
//!
//! A table has `aliases` (name or pattern → image) and `mirrors` (pattern → pattern). Patterns
//! use `*` for any text; a target's `*`s take what the pattern's last `*`s matched, in order
//! (`*-docker.pkg.dev/*` → `localhost:5000/*` keeps the path, drops the region). Names are
//! compared in their normal form (`ubuntu` is `ubuntu:latest`, `docker.io/library/` dropped).
//! An alias wins over a mirror; among matching entries the longest pattern wins. The shipped
//! table (`builders/aliases.yaml`) is the default; a user's file adds to it and overrides it.

use std::collections::BTreeMap;
use std::path::Path;

use regex::Regex;
use serde::{Deserialize, Serialize};

/// The table shipped with builder.
const DEFAULT_TABLE: &str = include_str!("../builders/aliases.yaml");

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    aliases: BTreeMap<String, String>,
    #[serde(default)]
    mirrors: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
struct Rule {
    pattern: String,
    matcher: Regex,
    target: String,
}

/// A loaded alias table. `Aliases::default()` maps nothing.
#[derive(Debug, Clone, Default)]
pub struct Aliases {
    aliases: Vec<Rule>,
    mirrors: Vec<Rule>,
}

/// How a written image name became the image that runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "via", content = "pattern")]
pub enum Via {
    Alias(String),
    Mirror(String),
    Written,
}

impl Aliases {
    /// The shipped table, with the user's file (if any) over it.
    pub fn load(user_file: Option<&Path>) -> Result<Aliases, String> {
        let mut table = parse(DEFAULT_TABLE, "the default alias table")?;
        if let Some(path) = user_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read the alias file {}: {e}", path.display()))?;
            let user = parse(&text, &path.display().to_string())?;
            table.aliases.extend(user.aliases);
            table.mirrors.extend(user.mirrors);
        }
        Ok(Aliases {
            aliases: rules(&table.aliases)?,
            mirrors: rules(&table.mirrors)?,
        })
    }

    /// The image to run for `written`, and how it was found.
    pub fn resolve(&self, written: &str) -> (String, Via) {
        let name = normal(written);
        if let Some((rule, image)) = best(&self.aliases, &name) {
            return (image, Via::Alias(rule.pattern.clone()));
        }
        if let Some((rule, image)) = best(&self.mirrors, &name) {
            return (image, Via::Mirror(rule.pattern.clone()));
        }
        (written.to_string(), Via::Written)
    }

    /// Where `image` is pushed: the image a registry mirror names for it, if one matches (the
    /// aliases are for running images, not for pushing them).
    pub fn mirror(&self, image: &str) -> Option<String> {
        best(&self.mirrors, &normal(image)).map(|(_, target)| target)
    }
}

fn parse(text: &str, what: &str) -> Result<File, String> {
    serde_saphyr::from_str(text).map_err(|e| format!("{what}: {e}"))
}

fn rules(entries: &BTreeMap<String, String>) -> Result<Vec<Rule>, String> {
    entries
        .iter()
        .map(|(pattern, target)| {
            let pattern = normal(pattern);
            let captures = pattern
                .split('*')
                .map(regex::escape)
                .collect::<Vec<_>>()
                .join("(.*)");
            let matcher = Regex::new(&format!("^{captures}$"))
                .map_err(|e| format!("alias {pattern:?}: {e}"))?;
            Ok(Rule {
                pattern,
                matcher,
                target: target.clone(),
            })
        })
        .collect()
}

/// The longest matching pattern's target, its `*`s filled with the pattern's last matches.
fn best<'a>(rules: &'a [Rule], name: &str) -> Option<(&'a Rule, String)> {
    let (rule, captures) = rules
        .iter()
        .filter_map(|rule| Some((rule, rule.matcher.captures(name)?)))
        .max_by_key(|(rule, _)| rule.pattern.len())?;
    let mut parts = rule.target.split('*');
    let mut image = parts.next().unwrap_or_default().to_string();
    let stars = rule.target.matches('*').count();
    let skipped = (captures.len() - 1).saturating_sub(stars);
    for (i, part) in parts.enumerate() {
        image += captures.get(skipped + i + 1).map_or("", |m| m.as_str());
        image += part;
    }
    Some((rule, image))
}

/// `ubuntu` → `ubuntu:latest`; `docker.io/library/ubuntu:22.04` → `ubuntu:22.04`. Patterns are
/// normalised alike, except that a pattern ending in `*` keeps it (it may stand for the tag).
fn normal(name: &str) -> String {
    let name = name
        .strip_prefix("docker.io/library/")
        .or_else(|| name.strip_prefix("docker.io/"))
        .unwrap_or(name);
    let last = name.rsplit('/').next().unwrap_or(name);
    if last.contains(':') || name.contains('@') || name.ends_with('*') {
        name.to_string()
    } else {
        format!("{name}:latest")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(yaml: &str) -> Aliases {
        let file = parse(yaml, "test").unwrap();
        Aliases {
            aliases: rules(&file.aliases).unwrap(),
            mirrors: rules(&file.mirrors).unwrap(),
        }
    }

    #[test]
    fn aliases_then_mirrors_then_as_written() {
        let aliases = table(
            "aliases:\n  ubuntu: builder/shell:latest\n  'python:3*': builder/python:latest\n  'gcr.io/cloud-builders/docker*': builder/docker:latest\n\
             mirrors:\n  'gcr.io/*': 'localhost:5000/*'\n  '*-docker.pkg.dev/*': 'localhost:5000/*'\n",
        );
        let check = |written: &str, image: &str, via: Via| {
            assert_eq!(
                aliases.resolve(written),
                (image.to_string(), via),
                "{written}"
            )
        };
        check(
            "ubuntu",
            "builder/shell:latest",
            Via::Alias("ubuntu:latest".into()),
        );
        check(
            "docker.io/library/ubuntu:latest",
            "builder/shell:latest",
            Via::Alias("ubuntu:latest".into()),
        );
        check("ubuntu:22.04", "ubuntu:22.04", Via::Written);
        check(
            "python:3.11-slim",
            "builder/python:latest",
            Via::Alias("python:3*".into()),
        );
        check(
            "gcr.io/cloud-builders/docker",
            "builder/docker:latest",
            Via::Alias("gcr.io/cloud-builders/docker*".into()),
        );
        check(
            "gcr.io/my-project/tool:1",
            "localhost:5000/my-project/tool:1",
            Via::Mirror("gcr.io/*".into()),
        );
        check(
            "us-docker.pkg.dev/p/r/img",
            "localhost:5000/p/r/img:latest",
            Via::Mirror("*-docker.pkg.dev/*".into()),
        );
        check("builder/busybox", "builder/busybox", Via::Written);
    }

    #[test]
    fn the_default_table_loads_and_a_user_file_overrides_it() {
        let defaults = Aliases::load(None).unwrap();
        assert_eq!(
            defaults.resolve("gcr.io/cloud-builders/docker").0,
            "builder/docker:latest"
        );
        let dir = tempfile::TempDir::new().unwrap();
        let file = dir.path().join("aliases.yaml");
        std::fs::write(
            &file,
            "aliases:\n  gcr.io/cloud-builders/docker: my/docker:1\n",
        )
        .unwrap();
        let user = Aliases::load(Some(&file)).unwrap();
        assert_eq!(
            user.resolve("gcr.io/cloud-builders/docker").0,
            "my/docker:1"
        );
        std::fs::write(&file, "alias: {}\n").unwrap();
        assert!(
            Aliases::load(Some(&file))
                .unwrap_err()
                .contains("aliases.yaml")
        );
    }
}

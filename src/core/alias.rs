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
const DEFAULT_TABLE: &str = include_str!("../../builders/aliases.yaml");

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    aliases: BTreeMap<String, Target>,
    #[serde(default)]
    mirrors: BTreeMap<String, String>,
}

/// What an alias maps a name to: an image, or an image with the version of the tool it has
/// (`{image: builder/python:latest, version: '3.11'}`), so that a step that asks for another
/// version (`python:3.12`) is told what it really runs.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
enum Target {
    Image(String),
    Versioned { image: String, version: String },
}

impl From<String> for Target {
    fn from(image: String) -> Self {
        Target::Image(image)
    }
}

#[derive(Debug, Clone)]
struct Rule {
    pattern: String,
    matcher: Regex,
    target: String,
    version: Option<String>,
}

/// A loaded alias table. `Aliases::default()` maps nothing.
#[derive(Debug, Clone, Default)]
pub struct Aliases {
    aliases: Vec<Rule>,
    mirrors: Vec<Rule>,
}

/// The image that runs for a written name, how it was found, and what the user should know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub image: String,
    pub via: Via,
    /// Set when the written name asks for a version other than the one the alias's image has.
    pub version_mismatch: Option<String>,
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
            aliases: rules(table.aliases)?,
            mirrors: rules(table.mirrors)?,
        })
    }

    /// The image to run for `written`, and how it was found.
    pub fn resolve(&self, written: &str) -> Resolved {
        let name = normal(written);
        if let Some((rule, image)) = best(&self.aliases, &name) {
            let version_mismatch = rule
                .version
                .as_deref()
                .and_then(|version| version_mismatch(written, &image, version));
            return Resolved {
                image,
                via: Via::Alias(rule.pattern.clone()),
                version_mismatch,
            };
        }
        let (image, via) = match best(&self.mirrors, &name) {
            Some((rule, image)) => (image, Via::Mirror(rule.pattern.clone())),
            None => (written.to_string(), Via::Written),
        };
        Resolved {
            image,
            via,
            version_mismatch: None,
        }
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

fn rules(entries: BTreeMap<String, impl Into<Target>>) -> Result<Vec<Rule>, String> {
    entries
        .into_iter()
        .map(|(pattern, target)| {
            let (target, version) = match target.into() {
                Target::Image(image) => (image, None),
                Target::Versioned { image, version } => (image, Some(version)),
            };
            let pattern = normal(&pattern);
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
                target,
                version,
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

/// Why `written` is not what `image` (of tool version `version`) runs, when the written tag
/// starts with another version: `python:3.12-slim` against 3.11. Versions agree when one is
/// the other's leading components (`3` and `3.11`, `3.11` and `3.11.4`); a tag without a
/// version (`latest`, `slim`) asks for none.
fn version_mismatch(written: &str, image: &str, version: &str) -> Option<String> {
    let tag = normal(written).rsplit_once(':')?.1.to_string();
    let asked: String = tag
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let asked = asked.trim_end_matches('.');
    let within = |short: &str, long: &str| {
        long == short
            || long
                .strip_prefix(short)
                .is_some_and(|rest| rest.starts_with('.'))
    };
    if asked.is_empty() || within(asked, version) || within(version, asked) {
        return None;
    }
    Some(format!(
        "{written:?} runs {image}, which has version {version}, not {asked}; to run {asked}, map \
         the name to an image of your own with an image alias (--aliases FILE or \
         BUILDER_ALIASES, over builders/aliases.yaml)"
    ))
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
            aliases: rules(file.aliases).unwrap(),
            mirrors: rules(file.mirrors).unwrap(),
        }
    }

    #[test]
    fn aliases_then_mirrors_then_as_written() {
        let aliases = table(
            "aliases:\n  ubuntu: builder/shell:latest\n  'python:3*': builder/python:latest\n  'gcr.io/cloud-builders/docker*': builder/docker:latest\n\
             mirrors:\n  'gcr.io/*': 'localhost:5000/*'\n  '*-docker.pkg.dev/*': 'localhost:5000/*'\n",
        );
        let check = |written: &str, image: &str, via: Via| {
            let resolved = aliases.resolve(written);
            assert_eq!(
                (resolved.image, resolved.via),
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
    fn a_versioned_alias_names_the_version_a_step_asks_for_and_does_not_get() {
        let aliases = table(
            "aliases:\n  'python:3*': {image: builder/python:latest, version: '3.11'}\n  python: builder/python:latest\n",
        );
        let mismatch = |written: &str| aliases.resolve(written).version_mismatch;
        for agreeing in [
            "python:3",
            "python:3.11",
            "python:3.11-slim",
            "python:3.11.4",
            "python",
        ] {
            assert_eq!(mismatch(agreeing), None, "{agreeing}");
        }
        let told = mismatch("python:3.12-slim").expect("3.12 is not 3.11");
        assert!(
            told.starts_with(
                r#""python:3.12-slim" runs builder/python:latest, which has version 3.11, not 3.12;"#
            ),
            "{told}"
        );
        assert!(mismatch("python:3.1").is_some(), "3.1 is not 3.11");
    }

    #[test]
    fn the_default_table_loads_and_a_user_file_overrides_it() {
        let defaults = Aliases::load(None).unwrap();
        assert_eq!(
            defaults.resolve("gcr.io/cloud-builders/docker").image,
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
            user.resolve("gcr.io/cloud-builders/docker").image,
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

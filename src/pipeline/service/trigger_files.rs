//! The service's triggers: the files of one directory (`--triggers DIR`, one trigger per file,
//! as `gcloud builds triggers export` writes them), read at start, and those created through the
//! API, kept in the store (see `resources`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use super::resources::Defined;
use super::{Failed, files};
use crate::adapters::store::{self, Store};
use crate::core::triggers::{self, Trigger};

/// The triggers of the files and of the store; reads see a consistent snapshot while they change.
pub type TriggerFiles = Defined<Trigger, Triggers>;

/// A snapshot of the triggers, cheap to take: every delivery is matched against one.
#[derive(Clone, Default)]
pub struct Triggers(Arc<Snapshot>);

#[derive(Default)]
struct Snapshot {
    entries: Vec<Trigger>,
    /// The entries of each GitHub repository (`owner/name` in lower case, as GitHub compares
    /// them): a delivery is matched against its repository's triggers only.
    by_repository: HashMap<String, Vec<usize>>,
}

impl From<Vec<Trigger>> for Triggers {
    fn from(entries: Vec<Trigger>) -> Self {
        let mut by_repository: HashMap<String, Vec<usize>> = HashMap::new();
        for (index, entry) in entries.iter().enumerate() {
            // A webhook trigger's repository is what it builds, not what fires it.
            if let Some(github) = &entry.github
                && entry.webhook.is_none()
            {
                let key = repository_key(&github.owner, &github.name);
                by_repository.entry(key).or_default().push(index);
            }
        }
        Self(Arc::new(Snapshot {
            entries,
            by_repository,
        }))
    }
}

impl Triggers {
    pub fn iter(&self) -> impl Iterator<Item = &Trigger> {
        self.0.entries.iter()
    }

    /// The triggers of GitHub repository `owner/name`, in file order, then the stored ones'.
    pub fn of_repository(&self, owner: &str, name: &str) -> impl Iterator<Item = &Trigger> {
        let indices = self.0.by_repository.get(&repository_key(owner, name));
        indices
            .into_iter()
            .flatten()
            .map(|&index| &self.0.entries[index])
    }

    pub fn len(&self) -> usize {
        self.0.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.entries.is_empty()
    }
}

fn repository_key(owner: &str, name: &str) -> String {
    format!("{owner}/{name}").to_ascii_lowercase()
}

impl TriggerFiles {
    /// Loads every trigger file (`*.yaml`, `*.yml`, `*.json`) of `dir`, creating it if missing.
    /// `Err` holds the problems of all the files that have any; `Ok` carries the warnings.
    pub fn load(dir: &Path) -> Result<(Self, String), String> {
        let (loaded, warnings) = files::load_dir(dir, triggers::load, |t: &Trigger| &t.name)?;
        Ok((Self::new(loaded), warnings))
    }

    /// Reads the triggers the store keeps again (see `resources`); whether they changed.
    pub async fn reread_stored(&self, store: &dyn Store) -> Result<bool, store::Error> {
        self.reread(store, triggers::load, false).await
    }

    pub fn get(&self, name: &str) -> Result<Trigger, Failed> {
        self.all()
            .iter()
            .find(|t| t.name == name)
            .cloned()
            .ok_or_else(|| Failed::NotFound(format!("no trigger {name:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repository_s_triggers_are_found_whatever_the_case_of_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let trigger = |file: &str, name: &str, repository: &str| {
            let (owner, repo) = repository.split_once('/').unwrap();
            let yaml = format!(
                "name: {name}\nfilename: cloudbuild.yaml\n\
                 github: {{owner: {owner}, name: {repo}, push: {{branch: main}}}}\n"
            );
            std::fs::write(dir.path().join(file), yaml).unwrap();
        };
        trigger("a.yaml", "app-main", "Acme/App");
        trigger("b.yaml", "other", "acme/other");
        trigger("c.yaml", "app-docs", "acme/app");
        let (files, _) = TriggerFiles::load(dir.path()).unwrap();
        let names = |owner, name| -> Vec<String> {
            let triggers = files.all();
            let found = triggers.of_repository(owner, name).map(|t| t.name.clone());
            found.collect()
        };
        assert_eq!(names("acme", "APP"), ["app-main", "app-docs"]);
        assert_eq!(names("acme", "other"), ["other"]);
        assert!(names("acme", "none").is_empty());
    }
}

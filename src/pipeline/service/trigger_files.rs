//! The service's triggers, kept as files in one directory (`--triggers DIR`), one trigger per
//! file, so that files written by `gcloud builds triggers export` and triggers created through the
//! API live side by side and survive restarts. The API writes whole files, each replaced
//! atomically (written beside it, then renamed).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use super::{Failed, files};
use crate::core::triggers::{self, Trigger};

/// The triggers in a directory; reads see a consistent snapshot while the API changes them.
pub struct TriggerFiles {
    dir: PathBuf,
    loaded: RwLock<Triggers>,
}

/// A snapshot of the triggers, cheap to take: every delivery is matched against one.
#[derive(Clone, Default)]
pub struct Triggers(Arc<Snapshot>);

#[derive(Default)]
struct Snapshot {
    entries: Vec<Entry>,
    /// The entries of each GitHub repository (`owner/name` in lower case, as GitHub compares
    /// them): a delivery is matched against its repository's triggers only.
    by_repository: HashMap<String, Vec<usize>>,
}

#[derive(Clone)]
struct Entry {
    file: PathBuf,
    trigger: Trigger,
}

impl Triggers {
    fn new(entries: Vec<Entry>) -> Self {
        let mut by_repository: HashMap<String, Vec<usize>> = HashMap::new();
        for (index, entry) in entries.iter().enumerate() {
            // A webhook trigger's repository is what it builds, not what fires it.
            if let Some(github) = &entry.trigger.github
                && entry.trigger.webhook.is_none()
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

    pub fn iter(&self) -> impl Iterator<Item = &Trigger> {
        self.0.entries.iter().map(|e| &e.trigger)
    }

    /// The triggers of GitHub repository `owner/name`, in file order.
    pub fn of_repository(&self, owner: &str, name: &str) -> impl Iterator<Item = &Trigger> {
        let indices = self.0.by_repository.get(&repository_key(owner, name));
        indices
            .into_iter()
            .flatten()
            .map(|&index| &self.0.entries[index].trigger)
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
        let entries = loaded
            .into_iter()
            .map(|(file, trigger)| Entry { file, trigger })
            .collect();
        let files = Self {
            dir: dir.to_path_buf(),
            loaded: RwLock::new(Triggers::new(entries)),
        };
        Ok((files, warnings))
    }

    /// The triggers as they are now.
    pub fn all(&self) -> Triggers {
        self.loaded.read().expect("triggers").clone()
    }

    pub fn get(&self, name: &str) -> Result<Trigger, Failed> {
        self.all()
            .iter()
            .find(|t| t.name == name)
            .cloned()
            .ok_or_else(|| Failed::NotFound(format!("no trigger {name:?}")))
    }

    /// Creates a trigger from a trigger file's bytes (YAML or JSON), or replaces the trigger
    /// `replacing` (which the file must still name). Returns it, with its rendered warnings.
    pub fn put(&self, bytes: &[u8], replacing: Option<&str>) -> Result<(Trigger, String), Failed> {
        let (trigger, warnings) = triggers::load(bytes)
            .map_err(|d| Failed::Invalid(d.render("trigger").trim_end().to_string()))?;
        let mut loaded = self.loaded.write().expect("triggers");
        let existing = loaded
            .0
            .entries
            .iter()
            .position(|e| e.trigger.name == trigger.name);
        let file = match (replacing, existing) {
            (None, None) => self.dir.join(format!("{}.yaml", trigger.name)),
            (None, Some(_)) => {
                return Err(Failed::Conflict(format!(
                    "trigger {:?} exists",
                    trigger.name
                )));
            }
            (Some(name), _) if name != trigger.name => {
                return Err(Failed::Invalid(format!(
                    "the file names trigger {:?}, not {name:?}",
                    trigger.name
                )));
            }
            (Some(name), None) => return Err(Failed::NotFound(format!("no trigger {name:?}"))),
            (Some(_), Some(index)) => loaded.0.entries[index].file.clone(),
        };
        files::write_atomically(&file, bytes)?;
        let mut entries = loaded.0.entries.clone();
        let entry = Entry {
            file,
            trigger: trigger.clone(),
        };
        match existing {
            Some(index) => entries[index] = entry,
            None => entries.push(entry),
        }
        *loaded = Triggers::new(entries);
        Ok((trigger, warnings.render("trigger")))
    }

    pub fn delete(&self, name: &str) -> Result<(), Failed> {
        let mut loaded = self.loaded.write().expect("triggers");
        let index = loaded
            .0
            .entries
            .iter()
            .position(|e| e.trigger.name == name)
            .ok_or_else(|| Failed::NotFound(format!("no trigger {name:?}")))?;
        let file = &loaded.0.entries[index].file;
        std::fs::remove_file(file).map_err(Failed::file(file))?;
        let mut entries = loaded.0.entries.clone();
        entries.remove(index);
        *loaded = Triggers::new(entries);
        Ok(())
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

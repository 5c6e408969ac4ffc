//! Triggers and schedules from two places: the operator's files (`--triggers DIR`,
//! `--schedules DIR`), read at start, and those created through the API, kept in the store so
//! that every server sharing it serves and fires the same ones. Each process reads the store's
//! again when it tells a change (PostgreSQL's NOTIFY, see [`Service::listen`]), after its own
//! writes, and on a poll that catches what was told while it was not listening.
//!
//! A name belongs to one place: the API refuses to change or delete what a file defines
//! (naming the file), and a stored resource whose name a file took since is left out, with a
//! warning, while the file stays.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use super::{Failed, Service, TICK};
use crate::adapters::store::{self, ResourceKind, ResourceWrite, Store};
use crate::core::diag::Diagnostics;
use crate::core::schedule::{self, Schedule};
use crate::core::triggers::Trigger;

/// How often the stored resources are read again while the store tells its changes: only for a
/// change told while the listening connection was made again. Without it, every [`TICK`].
const REREAD_HEARD: Duration = Duration::from_secs(30);

/// A kind of resource the API keeps.
pub trait Resource: Clone {
    const KIND: ResourceKind;
    fn name(&self) -> &str;
}

impl Resource for Trigger {
    const KIND: ResourceKind = ResourceKind::Trigger;
    fn name(&self) -> &str {
        &self.name
    }
}

impl Resource for Schedule {
    const KIND: ResourceKind = ResourceKind::Schedule;
    fn name(&self) -> &str {
        &self.name
    }
}

/// The resources of one kind: the files' and the store's, as a snapshot `S` that reads see
/// whole while they change.
pub struct Defined<T, S> {
    /// The operator's files, read at start, each with its resource.
    files: Vec<(PathBuf, T)>,
    /// The store's rows as last read (a read that finds the same changes nothing), locked while
    /// the store is read, so that an older read never replaces a newer one.
    stored: tokio::sync::Mutex<Vec<(String, Vec<u8>)>>,
    /// The files' resources in file order, then the store's in name order.
    loaded: RwLock<S>,
}

impl<T: Resource, S: Clone + From<Vec<T>>> Defined<T, S> {
    pub(super) fn new(files: Vec<(PathBuf, T)>) -> Self {
        let loaded = files.iter().map(|(_, resource)| resource.clone()).collect();
        Self {
            files,
            stored: Default::default(),
            loaded: RwLock::new(S::from(loaded)),
        }
    }

    /// The resources as they are now.
    pub fn all(&self) -> S {
        self.loaded.read().expect("resources").clone()
    }

    fn file_of(&self, name: &str) -> Option<&Path> {
        let mut files = self.files.iter();
        let (file, _) = files.find(|(_, resource)| resource.name() == name)?;
        Some(file)
    }

    /// Refuses to change `name` through the API when a file defines it: the file is the
    /// operator's, and the next start would read it again.
    fn check_not_a_file(&self, name: &str) -> Result<(), Failed> {
        match self.file_of(name) {
            Some(file) => Err(Failed::Conflict(format!(
                "{} {name:?} is defined by the file {}: change it there",
                T::KIND,
                file.display()
            ))),
            None => Ok(()),
        }
    }

    /// Reads the store's resources of this kind again, each with `load`, unless the store has
    /// the same as last time and `again` is false (what `load` checks them against changed);
    /// returns whether they were loaded. One that does not load (a schedule whose trigger was
    /// deleted meanwhile) is left out, logged.
    pub async fn reread(
        &self,
        store: &dyn Store,
        load: impl Fn(&[u8]) -> Result<(T, Diagnostics), Diagnostics>,
        again: bool,
    ) -> Result<bool, store::Error> {
        let mut stored = self.stored.lock().await;
        let rows = store.resources(T::KIND).await?;
        if *stored == rows && !again {
            return Ok(false);
        }
        let mut resources: Vec<T> = self.files.iter().map(|(_, r)| r.clone()).collect();
        for (name, body) in &rows {
            if let Some(file) = self.file_of(name) {
                let file = file.display();
                warn!(kind = %T::KIND, name, %file, "a file defines a stored resource's name: the file's is used");
                continue;
            }
            match load(body) {
                Ok((resource, _)) => resources.push(resource),
                Err(found) => {
                    let error = found.render(name);
                    error!(kind = %T::KIND, name, %error, "a stored resource does not load: left out");
                }
            }
        }
        *self.loaded.write().expect("resources") = S::from(resources);
        *stored = rows;
        Ok(true)
    }
}

impl<T: Resource, S: Clone + From<Vec<T>>> Default for Defined<T, S> {
    fn default() -> Self {
        Self::new(Vec::new())
    }
}

impl Service {
    /// Keeps `resource`, loaded from `bytes` as the API received them, in the store: a new one,
    /// or the one named `replacing`, which it must still name.
    pub(super) async fn put_resource<T: Resource, S: Clone + From<Vec<T>>>(
        &self,
        defined: &Defined<T, S>,
        resource: &T,
        bytes: &[u8],
        replacing: Option<&str>,
    ) -> Result<(), Failed> {
        let (kind, name) = (T::KIND, resource.name());
        if let Some(replacing) = replacing
            && replacing != name
        {
            return Err(Failed::Invalid(format!(
                "the file names {kind} {name:?}, not {replacing:?}"
            )));
        }
        defined.check_not_a_file(name)?;
        let write = match replacing {
            None => ResourceWrite::Create(bytes),
            Some(_) => ResourceWrite::Replace(bytes),
        };
        let written = self.store.write_resource(kind, name, write).await?;
        match (written, replacing) {
            (true, _) => Ok(self.reread_resources().await?),
            (false, None) => Err(Failed::Conflict(format!("{kind} {name:?} exists"))),
            (false, Some(_)) => Err(Failed::NotFound(format!("no {kind} {name:?}"))),
        }
    }

    /// Deletes the stored resource `name`.
    pub(super) async fn delete_resource<T: Resource, S: Clone + From<Vec<T>>>(
        &self,
        defined: &Defined<T, S>,
        name: &str,
    ) -> Result<(), Failed> {
        defined.check_not_a_file(name)?;
        let write = ResourceWrite::Delete;
        if !self.store.write_resource(T::KIND, name, write).await? {
            return Err(Failed::NotFound(format!("no {} {name:?}", T::KIND)));
        }
        Ok(self.reread_resources().await?)
    }

    /// Reads the triggers and schedules the store keeps again, the triggers first: a schedule
    /// must name one, so the schedules are loaded again whenever the triggers were.
    pub async fn reread_resources(&self) -> Result<(), store::Error> {
        let triggers_changed = self.triggers.reread_stored(&*self.store).await?;
        let triggers = self.triggers.all();
        let names: Vec<&str> = triggers.iter().map(|t| t.name.as_str()).collect();
        let load = |bytes: &[u8]| schedule::load(bytes, &names);
        self.schedules
            .reread(&*self.store, load, triggers_changed)
            .await?;
        Ok(())
    }

    /// Reads the stored triggers and schedules again whenever the store tells they changed, and
    /// on a poll, until `shutdown`. A failed read is tried again at the next.
    pub async fn run_resources(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let poll = if self.hearing.load(std::sync::atomic::Ordering::SeqCst) {
                REREAD_HEARD
            } else {
                TICK
            };
            tokio::select! {
                () = self.resources_changed.notified() => {}
                () = tokio::time::sleep(poll) => {}
                () = shutdown.cancelled() => break,
            }
            if let Err(e) = self.reread_resources().await {
                warn!(error = %e, "reading the stored triggers and schedules failed; trying again");
            }
        }
    }
}

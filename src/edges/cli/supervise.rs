//! The tasks that live as long as `builder serve`, watched by name: the first to end, fail or
//! panic while the server runs stops the server with a failure, instead of leaving it half-dead
//! (answering webhooks but running nothing). As in bors's process loop, nothing is restarted: a
//! task that ended has lost its state, and a supervisor outside (systemd, Docker's restart
//! policy) starts a whole server afresh.

use std::collections::HashMap;
use std::future::Future;

use tokio::task::{Id, JoinSet};

/// Tasks, each with its name.
#[derive(Default)]
pub(super) struct Supervisor {
    tasks: JoinSet<anyhow::Result<()>>,
    names: HashMap<Id, &'static str>,
}

impl Supervisor {
    /// Starts `task` as `name`.
    pub(super) fn spawn(
        &mut self,
        name: &'static str,
        task: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    ) {
        let handle = self.tasks.spawn(task);
        self.names.insert(handle.id(), name);
    }

    /// The next task to end: its name and how it ended, a panic as an error that carries its
    /// message. `None` once every task has ended.
    pub(super) async fn next(&mut self) -> Option<(&'static str, anyhow::Result<()>)> {
        let (id, ended) = match self.tasks.join_next_with_id().await? {
            Ok((id, ended)) => (id, ended),
            Err(e) => (e.id(), Err(e.into())),
        };
        Some((self.names.remove(&id).unwrap_or("unnamed"), ended))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tasks_are_named_by_how_they_end() {
        let mut tasks = Supervisor::default();
        tasks.spawn("fails", async { Err(anyhow::anyhow!("the store is gone")) });
        tasks.spawn("panics", async { panic!("boom") });
        tasks.spawn("returns", async { Ok(()) });
        let mut ended = HashMap::new();
        while let Some((name, result)) = tasks.next().await {
            ended.insert(name, result.map_err(|e| e.to_string()));
        }
        assert_eq!(ended["fails"], Err("the store is gone".into()));
        let panicked = ended["panics"].clone().unwrap_err();
        assert!(
            panicked.ends_with("panicked with message \"boom\""),
            "{panicked}"
        );
        assert_eq!(ended["returns"], Ok(()));
    }
}

//! Cancelling a running task whose NodeTask is deleted (issue #14, finding 7).
//!
//! The controller runs one reconcile per object at a time, so a deleted task's own watch event
//! waits behind its running reconcile and cannot stop it. A second watch on the same label
//! selector sees deletions (and deletion timestamps) as they happen and flips the running
//! task's [`Registration`]; the task then cancels its tools. A deletion the watch missed while
//! it was disconnected shows up at the next re-list: a running task the re-list does not list
//! is gone.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use ferry_api::NodeTask;
use futures::StreamExt;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use tokio::sync::watch;
use tracing::{info, warn};

/// The tasks running now, by uid.
#[derive(Debug, Default)]
pub(crate) struct Running(Mutex<Inner>);

#[derive(Debug, Default)]
struct Inner {
    /// Bumped at each re-list: a task registered after a re-list began may be missing from it.
    epoch: u64,
    tasks: HashMap<String, (u64, watch::Sender<bool>)>,
}

impl Running {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere while holding the lock leaves the map consistent (single inserts
        // and removes): keep using it.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers the task `uid` as running until the registration drops.
    pub(crate) fn register(self: &Arc<Self>, uid: &str) -> Registration {
        let (tx, rx) = watch::channel(false);
        let mut inner = self.lock();
        let epoch = inner.epoch;
        inner.tasks.insert(uid.to_string(), (epoch, tx));
        Registration {
            running: self.clone(),
            uid: uid.to_string(),
            deleted: rx,
        }
    }

    /// The task `uid` was deleted: its registration says so.
    pub(crate) fn deleted(&self, uid: &str) {
        if let Some((_, tx)) = self.lock().tasks.get(uid) {
            let _ = tx.send(true);
        }
    }

    fn begin_relist(&self) -> u64 {
        let mut inner = self.lock();
        inner.epoch += 1;
        inner.epoch
    }

    /// A re-list that began at `epoch` listed `seen`: a task registered before it and not
    /// listed was deleted meanwhile.
    fn end_relist(&self, epoch: u64, seen: &HashSet<String>) {
        for (uid, (registered, tx)) in self.lock().tasks.iter() {
            if *registered < epoch && !seen.contains(uid) {
                info!(uid = %uid, "a running task is gone from the re-list: cancelling it");
                let _ = tx.send(true);
            }
        }
    }
}

/// One running task's entry; dropping it unregisters the task.
#[derive(Debug)]
pub(crate) struct Registration {
    running: Arc<Running>,
    uid: String,
    deleted: watch::Receiver<bool>,
}

impl Registration {
    /// Resolves when the task's NodeTask is deleted (or marked for deletion).
    pub(crate) async fn deleted(&mut self) {
        if self.deleted.wait_for(|d| *d).await.is_err() {
            // The sender is dropped only with the registration itself: never here.
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.running.lock().tasks.remove(&self.uid);
    }
}

/// Watches this node's NodeTasks for deletions until `shutdown` turns true.
pub(crate) async fn watch_deletions(
    api: Api<NodeTask>,
    selector: String,
    running: Arc<Running>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut events = watcher(api, watcher::Config::default().labels(&selector))
        .default_backoff()
        .boxed();
    let mut relist: Option<(u64, HashSet<String>)> = None;
    loop {
        let event = tokio::select! {
            e = events.next() => e,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let Some(event) = event else { return };
        match event {
            Ok(watcher::Event::Init) => relist = Some((running.begin_relist(), HashSet::new())),
            Ok(watcher::Event::InitApply(task)) => {
                if let Some((_, seen)) = relist.as_mut() {
                    seen.insert(task.uid().unwrap_or_default());
                }
                if task.metadata.deletion_timestamp.is_some() {
                    running.deleted(&task.uid().unwrap_or_default());
                }
            }
            Ok(watcher::Event::InitDone) => {
                if let Some((epoch, seen)) = relist.take() {
                    running.end_relist(epoch, &seen);
                }
            }
            Ok(watcher::Event::Apply(task)) if task.metadata.deletion_timestamp.is_some() => {
                running.deleted(&task.uid().unwrap_or_default())
            }
            Ok(watcher::Event::Apply(_)) => {}
            Ok(watcher::Event::Delete(task)) => running.deleted(&task.uid().unwrap_or_default()),
            Err(e) => warn!(error = %e, "the NodeTask deletion watch failed; retrying"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_missing_from_a_relist_is_cancelled_unless_it_started_during_it() {
        let running = Arc::new(Running::default());
        let mut old = running.register("old");
        let epoch = running.begin_relist();
        let mut new = running.register("new");
        running.end_relist(epoch, &HashSet::new());
        tokio::time::timeout(std::time::Duration::from_secs(1), old.deleted())
            .await
            .expect("the task the re-list missed is cancelled");
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), new.deleted())
                .await
                .is_err(),
            "a task registered during the re-list was cancelled"
        );
        drop(new);
        assert_eq!(running.lock().tasks.len(), 1);
    }
}

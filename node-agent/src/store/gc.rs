//! Garbage collection: the policy (a TTL and a quota per store), one GC pass over a store, and
//! [`GcLoop`], the agent's periodic pass over all its stores.
//!
//! Images in use are never collected: those a caller names, those held by a task
//! ([`Store::hold`]) and those served a moment ago ([`Store::touch`]); see [`super::in_use`].

use std::collections::HashSet;
use std::fs;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use tokio::sync::watch;
use tracing::{info, warn};

use super::entries::Entry;
use super::error::{Result, io_err};
use super::in_use;
use super::paths::{QUARANTINE_DIR, partial_name};
use super::registry::Stores;
use super::root::Store;

/// When GC deletes images.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcPolicy {
    /// Delete images older than this.
    pub ttl: Option<SignedDuration>,
    /// Delete the oldest images while the store holds more than this.
    pub quota_bytes: Option<u64>,
}

impl GcPolicy {
    /// The policy of the agent's flags: a TTL in hours and a quota in GiB, 0 meaning none.
    pub fn from_hours_and_gib(ttl_hours: u64, quota_gib: u64) -> Self {
        GcPolicy {
            ttl: (ttl_hours > 0).then(|| SignedDuration::from_hours(ttl_hours as i64)),
            quota_bytes: (quota_gib > 0).then_some(quota_gib << 30),
        }
    }
}

/// What a GC run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Locations deleted, oldest first.
    pub deleted: Vec<String>,
    /// Bytes freed.
    pub freed_bytes: u64,
    /// Bytes left in the store.
    pub remaining_bytes: u64,
    /// Image directories whose manifest does not parse, moved to the store's
    /// [`QUARANTINE_DIR`] (a person decides what they are; GC deletes only what it can read).
    pub quarantined: Vec<String>,
}

impl Store {
    /// Garbage collection: deletes images (and partials) older than the TTL, then the oldest
    /// images until the store fits its quota. Images in `in_use`, held ([`Store::hold`]: being
    /// written or restored) or used within [`in_use::RECENT`] ([`Store::touch`]: served) are
    /// never deleted.
    pub fn gc(
        &self,
        policy: &GcPolicy,
        now: Timestamp,
        in_use: &HashSet<String>,
    ) -> Result<GcReport> {
        let scan = self.scan()?;
        let mut report = GcReport::default();
        for (location, error) in &scan.unreadable {
            if in_use.contains(location) {
                continue;
            }
            match self.quarantine(location) {
                Ok(to) => {
                    warn!(store = %self.root().display(), location = %location, error = %error, moved_to = %to, "unreadable image manifest: moved aside, not deleted");
                    report.quarantined.push(location.clone());
                }
                Err(e) => {
                    warn!(store = %self.root().display(), location = %location, error = %e, "could not move an unreadable image aside; left in place")
                }
            }
        }
        let mut entries = scan.entries;
        let mut in_use = in_use.clone();
        for e in &entries {
            if in_use::in_use(&self.image_dir(&e.location)?, in_use::RECENT) {
                in_use.insert(e.location.clone());
            }
        }
        let in_use = &in_use;
        entries.sort_by_key(|e| e.created_at);
        let mut kept = Vec::new();
        for entry in entries {
            let expired = policy.ttl.is_some_and(|ttl| entry.created_at + ttl < now);
            if expired && !in_use.contains(&entry.location) {
                self.delete_entry(&entry)?;
                report.deleted.push(entry.location);
                report.freed_bytes = report.freed_bytes.saturating_add(entry.bytes);
            } else {
                kept.push(entry);
            }
        }
        if let Some(quota) = policy.quota_bytes {
            let mut total = total_bytes(&kept);
            for entry in &kept {
                if total <= quota {
                    break;
                }
                if in_use.contains(&entry.location) {
                    continue;
                }
                self.delete_entry(entry)?;
                total = total.saturating_sub(entry.bytes);
                report.deleted.push(entry.location.clone());
                report.freed_bytes = report.freed_bytes.saturating_add(entry.bytes);
            }
            report.remaining_bytes = total;
        } else {
            report.remaining_bytes = total_bytes(&kept);
        }
        Ok(report)
    }

    /// Moves the image directory at `location` into the store's [`QUARANTINE_DIR`], under a
    /// new name (location and time), never replacing anything. Returns where it went.
    fn quarantine(&self, location: &str) -> Result<String> {
        let from = self.image_dir(location)?;
        let dir = self.root().join(QUARANTINE_DIR);
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err(format!("create {}", dir.display()))(e)),
        }
        let to = dir.join(format!(
            "{}@{}",
            location.replace('/', "_"),
            Timestamp::now().as_nanosecond()
        ));
        rustix::fs::renameat_with(
            rustix::fs::CWD,
            &from,
            rustix::fs::CWD,
            &to,
            rustix::fs::RenameFlags::NOREPLACE,
        )
        .map_err(|e| io_err(format!("move {} to {}", from.display(), to.display()))(e.into()))?;
        Ok(to.display().to_string())
    }

    fn delete_entry(&self, entry: &Entry) -> Result<()> {
        let dir = self.image_dir(&entry.location)?;
        let path = if entry.partial {
            partial_name(&dir)
        } else {
            dir
        };
        match fs::remove_dir_all(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(format!("remove {}", path.display()))(e)),
        }
    }
}

fn total_bytes(entries: &[Entry]) -> u64 {
    entries
        .iter()
        .fold(0u64, |sum, e| sum.saturating_add(e.bytes))
}

/// Hears each store's GC report, by the store's root (the agent's metrics).
pub type GcReporter = Arc<dyn Fn(&str, &GcReport) + Send + Sync>;
/// Runs after the stores in each round, on the same blocking thread, and reports its own
/// result: collection that depends on what the stores still hold (the containerd runtime's
/// checkpoint images), which belongs to a layer above the store.
pub type GcFollowUp = Arc<dyn Fn(&Stores) + Send + Sync>;

/// The agent's periodic GC: every `every`, each store with `policy` (the TTL, and the quota
/// for each store on its own), then the follow-up, until stopped.
pub struct GcLoop {
    /// The stores collected.
    pub stores: Stores,
    /// TTL and quota.
    pub policy: GcPolicy,
    /// The pause before each round.
    pub every: Duration,
    /// Told each store's report after a round.
    pub on_report: Option<GcReporter>,
    /// Runs after the stores in each round.
    pub follow_up: Option<GcFollowUp>,
}

impl GcLoop {
    /// Runs rounds until `stop` turns true (checked between rounds: a round runs to its end).
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.every) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
            let stores = self.stores.clone();
            let policy = self.policy.clone();
            let follow_up = self.follow_up.clone();
            // Partials of running pulls are younger than the TTL; quota GC only deletes
            // published images, oldest first. Each store has the TTL and its own quota.
            let done = tokio::task::spawn_blocking(move || {
                let reports: Vec<_> = stores
                    .all()
                    .map(|s| {
                        let root = s.root().display().to_string();
                        (root, s.gc(&policy, Timestamp::now(), &Default::default()))
                    })
                    .collect();
                if let Some(follow_up) = follow_up {
                    follow_up(&stores);
                }
                reports
            })
            .await;
            match done {
                Ok(reports) => {
                    for (store, report) in reports {
                        match report {
                            Ok(r) => {
                                if let Some(on_report) = &self.on_report {
                                    on_report(&store, &r);
                                }
                                if !r.deleted.is_empty() {
                                    info!(
                                        store,
                                        deleted = ?r.deleted,
                                        freed = r.freed_bytes,
                                        "image GC"
                                    )
                                }
                            }
                            Err(e) => warn!(store, error = %e, "image GC failed"),
                        }
                    }
                }
                Err(e) => warn!(error = %e, "image GC worker failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flags_policy_reads_zero_as_none() {
        assert_eq!(GcPolicy::from_hours_and_gib(0, 0), GcPolicy::default());
        assert_eq!(
            GcPolicy::from_hours_and_gib(72, 2),
            GcPolicy {
                ttl: Some(SignedDuration::from_hours(72)),
                quota_bytes: Some(2 << 30),
            }
        );
    }
}

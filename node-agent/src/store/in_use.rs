//! Images the agent is using, or used a moment ago, which GC must spare: an image being
//! written or restored (its task holds a [`Hold`]), or served to another node (every request
//! [`touch`]es it, and a pull's next request may come seconds after the last).
//!
//! Process-wide and keyed by the image's directory, because the worker opens a `Store` per
//! task while the transfer server and the GC loop keep their own, all on the same roots.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long after its last use an image still counts as in use.
pub const RECENT: Duration = Duration::from_secs(600);

#[derive(Debug)]
struct Use {
    holders: usize,
    last: Instant,
}

static REGISTRY: LazyLock<Mutex<HashMap<PathBuf, Use>>> = LazyLock::new(Default::default);

fn registry() -> MutexGuard<'static, HashMap<PathBuf, Use>> {
    // A panic while holding this lock cannot leave the map inconsistent (single inserts and
    // counter updates), so a poisoned lock is still usable.
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Marks an image in use until dropped.
#[derive(Debug)]
#[must_use = "the image counts as in use only while the Hold lives"]
pub struct Hold {
    dir: PathBuf,
}

impl Drop for Hold {
    fn drop(&mut self) {
        if let Some(u) = registry().get_mut(&self.dir) {
            u.holders = u.holders.saturating_sub(1);
            u.last = Instant::now();
        }
    }
}

/// Holds the image in `dir` (see [`Hold`]).
pub fn hold(dir: PathBuf) -> Hold {
    let mut r = registry();
    let u = r.entry(dir.clone()).or_insert(Use {
        holders: 0,
        last: Instant::now(),
    });
    u.holders += 1;
    u.last = Instant::now();
    Hold { dir }
}

/// Records a use of the image in `dir` now.
pub fn touch(dir: &Path) {
    let mut r = registry();
    match r.get_mut(dir) {
        Some(u) => u.last = Instant::now(),
        None => {
            r.insert(
                dir.to_path_buf(),
                Use {
                    holders: 0,
                    last: Instant::now(),
                },
            );
        }
    }
}

/// Whether the image in `dir` is held, or was used less than `recent` ago. Forgets images
/// neither held nor used within `recent`.
pub fn in_use(dir: &Path, recent: Duration) -> bool {
    let mut r = registry();
    r.retain(|_, u| u.holders > 0 || u.last.elapsed() < recent.max(RECENT));
    r.get(dir)
        .is_some_and(|u| u.holders > 0 || u.last.elapsed() < recent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hold_counts_until_dropped_and_a_use_for_a_while() {
        let dir = PathBuf::from("/nonexistent/ferry-in-use-test/a");
        assert!(!in_use(&dir, RECENT));
        let h1 = hold(dir.clone());
        let h2 = hold(dir.clone());
        assert!(in_use(&dir, Duration::ZERO));
        drop(h1);
        assert!(in_use(&dir, Duration::ZERO), "still held by h2");
        drop(h2);
        assert!(!in_use(&dir, Duration::ZERO), "released");
        assert!(in_use(&dir, RECENT), "used a moment ago");
        let other = PathBuf::from("/nonexistent/ferry-in-use-test/b");
        touch(&other);
        assert!(in_use(&other, RECENT));
        assert!(!in_use(&other, Duration::ZERO));
    }
}

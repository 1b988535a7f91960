//! The bound on device copies running at once (`FERRY_WORKERS`; 0 = no bound), shared by every
//! plan of a restore.

use std::sync::{Condvar, Mutex};

/// Bounds how many device copies run at once (`FERRY_WORKERS`; 0 = no bound).
pub struct Slots {
    limit: usize,
    busy: Mutex<usize>,
    freed: Condvar,
}

impl Slots {
    pub fn new(limit: usize) -> Self {
        Slots {
            limit,
            busy: Mutex::new(0),
            freed: Condvar::new(),
        }
    }

    /// Waits for a free slot; the slot is returned when the guard drops.
    pub fn acquire(&self) -> SlotGuard<'_> {
        if self.limit > 0
            && let Ok(mut busy) = self.busy.lock()
        {
            while *busy >= self.limit {
                match self.freed.wait(busy) {
                    Ok(b) => busy = b,
                    Err(_) => return SlotGuard(None),
                }
            }
            *busy += 1;
            return SlotGuard(Some(self));
        }
        SlotGuard(None)
    }
}

pub struct SlotGuard<'a>(Option<&'a Slots>);

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.0
            && let Ok(mut busy) = s.busy.lock()
        {
            *busy -= 1;
            s.freed.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use std::time::Duration;

    #[test]
    fn ferry_workers_bounds_concurrent_device_copies() {
        let slots = Slots::new(2);
        let now = AtomicUsize::new(0);
        let peak = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..6 {
                s.spawn(|| {
                    let _g = slots.acquire();
                    let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(n, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(30));
                    now.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        assert_eq!(peak.load(Ordering::SeqCst), 2);
        assert_eq!(*slots.busy.lock().unwrap(), 0);
    }

    #[test]
    fn zero_workers_means_no_bound() {
        let slots = Slots::new(0);
        let a = slots.acquire();
        let b = slots.acquire();
        let c = slots.acquire();
        assert!(a.0.is_none() && b.0.is_none() && c.0.is_none());
    }
}

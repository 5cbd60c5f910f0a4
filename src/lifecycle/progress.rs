//! Whether this node can make progress: a probe that needs a blocking-pool thread and the store's index
//! (what every fill, every stored read and every commit needs) must complete now and then. A node whose
//! probe has not completed for a while is alive to the kernel and still answers HTTP, but serves no fill:
//! `/health` and `/ready` say so, DNS stops handing it out, and a liveness probe restarts it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub struct Progress {
    started: Instant,
    /// Milliseconds after `started` of the last completed probe.
    last_ok_ms: AtomicU64,
    stalled_after: Duration,
}

impl Progress {
    /// `stalled_after`: how long without a completed probe counts as stuck.
    pub fn new(stalled_after: Duration) -> Self {
        Progress {
            started: Instant::now(),
            last_ok_ms: AtomicU64::new(0),
            stalled_after,
        }
    }

    /// The probe for a self-check every `interval`: five missed in a row (at least a second) is stuck.
    pub fn for_interval(interval: Duration) -> Self {
        Self::new((interval * 5).max(Duration::from_secs(1)))
    }

    pub fn stalled_after(&self) -> Duration {
        self.stalled_after
    }

    pub fn record_ok(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_ok_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// How long since the last completed probe, when that is longer than `stalled_after`.
    pub fn stalled(&self) -> Option<Duration> {
        let since = self.started.elapsed().saturating_sub(Duration::from_millis(
            self.last_ok_ms.load(Ordering::Relaxed),
        ));
        (since > self.stalled_after).then_some(since)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stuck_only_after_the_window_without_a_completed_probe() {
        let p = Progress::new(Duration::from_millis(50));
        assert_eq!(p.stalled(), None);
        std::thread::sleep(Duration::from_millis(80));
        assert!(p.stalled().is_some_and(|d| d >= Duration::from_millis(80)));
        p.record_ok();
        assert_eq!(p.stalled(), None);
        assert_eq!(
            Progress::for_interval(Duration::from_millis(10)).stalled_after(),
            Duration::from_secs(1)
        );
    }
}

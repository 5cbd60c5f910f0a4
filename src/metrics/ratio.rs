//! Hit ratio by kind over a sliding window (the last hour), from the monotonic request counters.
//!
//! A sampler worker records the counters every minute; a reader subtracts the oldest sample still inside
//! the window from the counters now. Counters only grow, so the difference is exactly the traffic of the
//! window, whatever happened in between, and the page needs no per-request bookkeeping. `Window` is the
//! pure part; `HitRatio` owns one and the clock it is measured against.

use super::{Metrics, RequestLabels, result};
use crate::lifecycle::Worker;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The hit ratio covers this much history…
const WINDOW: Duration = Duration::from_secs(3600);
/// …sampled this often.
const SAMPLE_EVERY: Duration = Duration::from_secs(60);

/// The kinds of `image_cache_requests_total`, in the order the page shows them.
pub const KINDS: [&str; 3] = ["file", "manifest", "blob"];

/// Per kind: requests answered from the store (`hit`, `stale`) and all requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub hits: [u64; 3],
    pub total: [u64; 3],
}

impl Counts {
    fn minus(&self, base: &Counts) -> Counts {
        let mut d = Counts::default();
        for i in 0..KINDS.len() {
            d.hits[i] = self.hits[i].saturating_sub(base.hits[i]);
            d.total[i] = self.total[i].saturating_sub(base.total[i]);
        }
        d
    }
}

#[derive(Debug)]
pub struct Window {
    span: u64,
    /// (seconds since start, counters then), oldest first.
    samples: VecDeque<(u64, Counts)>,
}

impl Window {
    pub fn new(span_secs: u64) -> Self {
        Window {
            span: span_secs,
            samples: VecDeque::new(),
        }
    }

    pub fn record(&mut self, now: u64, counts: Counts) {
        self.samples.push_back((now, counts));
        let oldest = now.saturating_sub(self.span);
        while self.samples.front().is_some_and(|(t, _)| *t < oldest) {
            self.samples.pop_front();
        }
    }

    /// The traffic since the oldest sample inside the window, and how many seconds that covers. Without
    /// any sample inside it (just started), everything counted so far, over `now` seconds.
    pub fn over(&self, now: u64, current: Counts) -> (Counts, u64) {
        let oldest = now.saturating_sub(self.span);
        match self.samples.iter().find(|(t, _)| *t >= oldest) {
            Some((t, base)) => (current.minus(base), now - t),
            None => (current, now.min(self.span)),
        }
    }
}

/// The request counters the hit ratio is computed from.
pub fn counts(metrics: &Metrics) -> Counts {
    let mut c = Counts::default();
    for (i, kind) in KINDS.iter().enumerate() {
        for r in [result::HIT, result::STALE, result::MISS, result::ERROR] {
            let n = metrics
                .requests
                .get_or_create(&RequestLabels { kind, result: r })
                .get();
            c.total[i] += n;
            if r == result::HIT || r == result::STALE {
                c.hits[i] += n;
            }
        }
    }
    c
}

/// The service's hit-ratio window, measured from when the service started.
pub struct HitRatio {
    started: Instant,
    window: Mutex<Window>,
}

impl Default for HitRatio {
    fn default() -> Self {
        let mut window = Window::new(WINDOW.as_secs());
        window.record(0, Counts::default());
        HitRatio {
            started: Instant::now(),
            window: Mutex::new(window),
        }
    }
}

impl HitRatio {
    pub fn uptime_secs(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    fn window(&self) -> std::sync::MutexGuard<'_, Window> {
        self.window.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The traffic of the window and the seconds it covers.
    pub fn over(&self, metrics: &Metrics) -> (Counts, u64) {
        let now = counts(metrics);
        self.window().over(self.uptime_secs(), now)
    }

    /// The sampler worker: records the counters every minute until shutdown.
    pub async fn sample(&self, metrics: Metrics, worker: Worker) {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = worker.shutdown().cancelled() => return,
            }
            worker.busy();
            let counts = counts(&metrics);
            self.window().record(self.uptime_secs(), counts);
            worker.finished::<&str>(Ok(()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(hits: u64, total: u64) -> Counts {
        Counts {
            hits: [hits, 0, hits * 2],
            total: [total, 0, total * 2],
        }
    }

    #[test]
    fn subtracts_the_oldest_sample_inside_the_window() {
        let mut w = Window::new(3600);
        // A sample a minute, one request (and one hit) a second.
        for t in (0..=3660).step_by(60) {
            w.record(t, c(t, t));
        }
        // At 3700 the window starts at 100: the sample at 120 is the base, the one at 60 is outside.
        let (d, secs) = w.over(3700, c(3700, 3700));
        assert_eq!(secs, 3580);
        assert_eq!(d.hits, [3580, 0, 7160]);
        assert_eq!(d.total, [3580, 0, 7160]);
    }

    #[test]
    fn before_any_sample_everything_counts_and_old_samples_are_dropped() {
        let w = Window::new(3600);
        assert_eq!(w.over(30, c(1, 2)), (c(1, 2), 30));
        let mut w = Window::new(100);
        for t in (0..1000).step_by(10) {
            w.record(t, c(t, t));
        }
        assert!(w.samples.len() <= 11);
        // A sample exactly at the edge of the window still counts as inside it.
        let (d, secs) = w.over(1090, c(1090, 1090));
        assert_eq!(secs, 100);
        assert_eq!(d.total[0], 100);
    }

    #[test]
    fn a_counter_reset_never_underflows() {
        let mut w = Window::new(3600);
        w.record(0, c(10, 10));
        let (d, _) = w.over(10, c(0, 0));
        assert_eq!(d, Counts::default());
    }
}

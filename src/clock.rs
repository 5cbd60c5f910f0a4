//! "Now", for everything that ages: the freshness of stored copies (`revalidate_after`, `tag_ttl`), fetch and
//! access times, negative answers (`negative_ttl`), a registry's back-off, the DNS zone's serial. One clock
//! per service, handed to the parts that read it, so a test moves one service's time forward
//! (`Clock::advance`) instead of sleeping, and other services in the same process keep theirs.
//!
//! Wall time (`now_millis`, `now_secs`) goes into rows and reports; the monotonic `instant` measures windows
//! that must not jump with the system clock. Both move together when a test advances the clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Default)]
pub struct Clock {
    /// Milliseconds added to the system's time (only tests add any).
    ahead_ms: Arc<AtomicU64>,
}

impl Clock {
    /// The system's clock.
    pub fn system() -> Self {
        Clock::default()
    }

    /// Milliseconds since the Unix epoch (0 if the system clock is before it).
    pub fn now_millis(&self) -> u64 {
        let system = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        system.saturating_add(self.ahead())
    }

    /// Seconds since the Unix epoch.
    pub fn now_secs(&self) -> u64 {
        self.now_millis() / 1000
    }

    /// A monotonic instant on this clock.
    pub fn instant(&self) -> Instant {
        Instant::now() + Duration::from_millis(self.ahead())
    }

    /// Moves this clock (and every clone of it) forward: what ages in the service ages by `by` at once.
    pub fn advance(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.ahead_ms.fetch_add(ms, Ordering::SeqCst);
    }

    fn ahead(&self) -> u64 {
        self.ahead_ms.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advancing_moves_every_clone_and_no_other_clock() {
        let clock = Clock::system();
        let clone = clock.clone();
        let other = Clock::system();
        let (wall, mono) = (clock.now_millis(), clock.instant());
        clone.advance(Duration::from_secs(90));
        assert!(clock.now_millis() >= wall + 90_000);
        assert!(clock.instant() >= mono + Duration::from_secs(90));
        assert!(clock.now_secs() >= wall / 1000 + 90);
        assert!(
            other.now_millis() < wall + 90_000,
            "another service's clock keeps its time"
        );
    }
}

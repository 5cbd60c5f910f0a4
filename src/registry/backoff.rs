//! Upstream rate limits. After a 429 the registry is left alone until its `Retry-After` has passed:
//! clients get the cached copy or `503` with the remaining wait, so neither the cache nor containerd
//! (which retries a 429 five times at once) spends more of the node's quota.

use crate::clock::Clock;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// When a 429 names no wait.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(30);
/// Longest wait honoured, whatever the registry says.
pub const MAX_WAIT: Duration = Duration::from_secs(3600);

#[derive(Default)]
pub struct Backoff {
    clock: Clock,
    until: Mutex<HashMap<String, Instant>>,
}

impl Backoff {
    pub fn new(clock: Clock) -> Self {
        Backoff {
            clock,
            until: Mutex::default(),
        }
    }

    /// The wait left for `registry`, if it is backed off.
    pub fn remaining(&self, registry: &str) -> Option<Duration> {
        let mut until = self.until.lock().unwrap_or_else(|p| p.into_inner());
        let now = self.clock.instant();
        match until.get(registry) {
            Some(t) if *t > now => Some(*t - now),
            Some(_) => {
                until.remove(registry);
                None
            }
            None => None,
        }
    }

    /// Records a 429 with its `Retry-After` header (if any); returns the wait chosen.
    pub fn rate_limited(&self, registry: &str, retry_after: Option<&str>) -> Duration {
        let wait = retry_after
            .and_then(|v| parse_retry_after(v, SystemTime::now()))
            .unwrap_or(DEFAULT_WAIT)
            .clamp(Duration::from_secs(1), MAX_WAIT);
        let mut until = self.until.lock().unwrap_or_else(|p| p.into_inner());
        let t = self.clock.instant() + wait;
        let entry = until.entry(registry.to_string()).or_insert(t);
        *entry = (*entry).max(t);
        wait
    }
}

/// `Retry-After` as delay-seconds or an HTTP date (RFC 9110 §10.2.3).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Whole seconds for a `Retry-After` answer, never 0.
pub fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(90))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(90));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }

    #[test]
    fn a_429_backs_off_only_that_registry() {
        let b = Backoff::default();
        assert!(b.remaining("docker.io").is_none());
        assert_eq!(
            b.rate_limited("docker.io", Some("60")),
            Duration::from_secs(60)
        );
        assert!(
            b.remaining("docker.io")
                .is_some_and(|d| d > Duration::from_secs(58))
        );
        assert!(b.remaining("ghcr.io").is_none());
        // Absurd waits are capped, missing ones defaulted.
        assert_eq!(b.rate_limited("quay.io", Some("99999999")), MAX_WAIT);
        assert_eq!(b.rate_limited("x", None), DEFAULT_WAIT);
    }
}

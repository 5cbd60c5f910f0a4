//! What the cache knows of each configured registry's standing with it: the pull budget it announced
//! last (`ratelimit`), and whether it rejected the cache's access to content the cache had been given
//! before (401/403 on a revalidation; the message says why, the token endpoint's refusal of the
//! configured account included). A 401 on a first pull is not counted: it is what registries answer
//! for a private or misspelled repository, and the client is told. The
//! registry front and the prefetch read it to spend a metered budget on live pulls first; the status
//! page, `GET /admin/status` and the metrics show it. Only registries of `registry.upstreams` are
//! tracked: a tenant naming unlisted registries cannot grow it.

use super::ratelimit::Reading;
use crate::clock::Clock;
use crate::config::Reserve;
use crate::metrics::Metrics;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

/// How long a reading is trusted without a newer one (or until the `ratelimit-reset` it named, if
/// sooner). Then the next revalidation asks again: a HEAD, which Docker Hub does not count.
pub const READING_TTL_MS: u64 = 10 * 60 * 1000;
/// The registry's message is kept to this many characters.
const MESSAGE_MAX: usize = 300;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Rejection {
    /// Milliseconds since the epoch of the last rejection.
    pub at_ms: u64,
    pub status: u16,
    /// What the registry said (its error message, or the challenge's `error`), for the operator.
    pub message: String,
    /// Rejections since the service started.
    pub count: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Budget {
    #[serde(flatten)]
    pub reading: Reading,
    /// When the registry sent it, in milliseconds since the epoch.
    pub seen_ms: u64,
    /// Requests kept for live pulls (`registry.ratelimit_reserve` of the limit).
    pub reserve: u64,
    /// Below the reserve: revalidations and prefetch wait.
    pub low: bool,
}

/// One registry as the status page and `GET /admin/status` show it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RegistryStanding {
    pub registry: String,
    /// The last rejection is newer than the last accepted answer.
    pub credentials_rejected: bool,
    pub last_rejection: Option<Rejection>,
    /// The last budget the registry announced, while it is trusted.
    pub budget: Option<Budget>,
}

/// Why a request that may wait is not sent now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deferral {
    pub registry: String,
    pub remaining: u64,
    pub reserve: u64,
    /// When the reading stops being trusted (the next revalidation asks again), ms since the epoch.
    pub until_ms: u64,
}

impl std::fmt::Display for Deferral {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} has {} pulls left, within the {} kept for live pulls (registry.ratelimit_reserve)",
            self.registry, self.remaining, self.reserve
        )
    }
}

#[derive(Default)]
struct Entry {
    budget: Option<(Reading, u64)>,
    rejection: Option<Rejection>,
    last_accepted_ms: u64,
}

pub struct RegistryHealth {
    clock: Clock,
    metrics: Metrics,
    reserve: Reserve,
    entries: Mutex<HashMap<String, Entry>>,
}

impl RegistryHealth {
    pub fn new<'a>(
        registries: impl IntoIterator<Item = &'a String>,
        reserve: Reserve,
        clock: Clock,
        metrics: Metrics,
    ) -> Self {
        let entries = registries
            .into_iter()
            .map(|r| {
                metrics.initialise_registry_health(r);
                (r.clone(), Entry::default())
            })
            .collect();
        RegistryHealth {
            clock,
            metrics,
            reserve,
            entries: Mutex::new(entries),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the budget from one answer of `registry` (any status, any request).
    pub fn observe<'a>(&self, registry: &str, header: impl Fn(&str) -> Option<&'a str>) {
        let Some(reading) = super::ratelimit::read(header) else {
            return;
        };
        let now = self.clock.now_millis();
        let mut entries = self.lock();
        let Some(entry) = entries.get_mut(registry) else {
            return;
        };
        entry.budget = Some((reading, now));
        drop(entries);
        self.metrics
            .registry_ratelimit(registry, reading.remaining, reading.limit);
    }

    /// A 2xx answer of `registry` to a request the cache authenticated (or needed no account for).
    pub fn accepted(&self, registry: &str) {
        let mut entries = self.lock();
        if let Some(entry) = entries.get_mut(registry)
            && entry.rejection.is_some()
        {
            entry.last_accepted_ms = self.clock.now_millis();
        }
    }

    /// `registry` refused the cache access it had (401/403), saying `message`.
    pub fn rejected(&self, registry: &str, status: u16, message: &str) {
        let now = self.clock.now_millis();
        let message: String = message
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(MESSAGE_MAX)
            .collect();
        {
            let mut entries = self.lock();
            let Some(entry) = entries.get_mut(registry) else {
                return;
            };
            let count = entry.rejection.as_ref().map_or(0, |r| r.count) + 1;
            entry.rejection = Some(Rejection {
                at_ms: now,
                status,
                message: message.clone(),
                count,
            });
        }
        tracing::error!(%registry, status, %message, "the registry rejected the cache's access; stored content keeps being served — check registry.credentials_file");
        self.metrics.upstream_auth_failure(registry);
    }

    /// `Ok` when a request that can wait (a revalidation, a prefetch) may spend `registry`'s budget now.
    pub fn spare(&self, registry: &str) -> Result<(), Deferral> {
        let now = self.clock.now_millis();
        let entries = self.lock();
        let Some((reading, seen)) = entries.get(registry).and_then(|e| e.budget) else {
            return Ok(());
        };
        let until_ms = trusted_until(&reading, seen);
        let reserve = self.reserve_of(&reading);
        if now >= until_ms || (reading.remaining > 0 && reading.remaining >= reserve) {
            return Ok(());
        }
        Err(Deferral {
            registry: registry.to_string(),
            remaining: reading.remaining,
            reserve,
            until_ms,
        })
    }

    /// The requests kept back of this reading: a share needs the limit, a count does not.
    fn reserve_of(&self, reading: &Reading) -> u64 {
        match (self.reserve, reading.limit) {
            (Reserve::Requests(n), _) => n,
            (share, Some(limit)) => share.of(limit),
            (Reserve::Percent(_), None) => 0,
        }
    }

    /// Every tracked registry, by name.
    pub fn standings(&self) -> Vec<RegistryStanding> {
        let now = self.clock.now_millis();
        let entries = self.lock();
        let sorted: BTreeMap<&String, &Entry> = entries.iter().collect();
        sorted
            .into_iter()
            .map(|(name, e)| RegistryStanding {
                registry: name.clone(),
                credentials_rejected: e
                    .rejection
                    .as_ref()
                    .is_some_and(|r| r.at_ms > e.last_accepted_ms),
                last_rejection: e.rejection.clone(),
                budget: e
                    .budget
                    .filter(|(r, seen)| now < trusted_until(r, *seen))
                    .map(|(reading, seen_ms)| {
                        let reserve = self.reserve_of(&reading);
                        Budget {
                            reading,
                            seen_ms,
                            reserve,
                            low: reading.remaining == 0 || reading.remaining < reserve,
                        }
                    }),
            })
            .collect()
    }
}

fn trusted_until(reading: &Reading, seen_ms: u64) -> u64 {
    let reset = reading
        .reset_secs
        .map_or(READING_TTL_MS, |s| s.saturating_mul(1000));
    seen_ms.saturating_add(reset.min(READING_TTL_MS))
}

/// The registry's own words from an error answer: the OCI `errors[].message` (with its code), a token
/// endpoint's `details` or `message`, else the text itself; `None` when there is nothing readable.
pub fn message_of(body: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        if let Some(first) = v.get("errors").and_then(|e| e.get(0)) {
            let code = first.get("code").and_then(|c| c.as_str()).unwrap_or("");
            let msg = first.get("message").and_then(|c| c.as_str()).unwrap_or("");
            let joined = format!("{code} {msg}").trim().to_string();
            if !joined.is_empty() {
                return Some(joined);
            }
        }
        for field in ["details", "message", "error_description", "error"] {
            if let Some(s) = v
                .get(field)
                .and_then(|s| s.as_str())
                .filter(|s| !s.is_empty())
            {
                return Some(s.to_string());
            }
        }
    }
    let line = text.lines().map(str::trim).find(|l| !l.is_empty())?;
    Some(line.chars().take(MESSAGE_MAX).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn health(reserve: Reserve) -> RegistryHealth {
        let names = ["docker.io".to_string()];
        RegistryHealth::new(&names, reserve, Clock::default(), Metrics::new())
    }

    fn answer(h: &RegistryHealth, registry: &str, limit: &'static str, remaining: &'static str) {
        h.observe(registry, |name| match name {
            "ratelimit-limit" => Some(limit),
            "ratelimit-remaining" => Some(remaining),
            _ => None,
        });
    }

    #[test]
    fn the_reserve_is_kept_for_live_pulls_while_the_reading_is_trusted() {
        let h = health(Reserve::Percent(20));
        assert!(
            h.spare("docker.io").is_ok(),
            "no reading: nothing to hold back"
        );
        answer(&h, "docker.io", "100;w=21600", "21;w=21600");
        assert!(h.spare("docker.io").is_ok());
        answer(&h, "docker.io", "100;w=21600", "19;w=21600");
        let d = h.spare("docker.io").unwrap_err();
        assert_eq!((d.remaining, d.reserve), (19, 20));
        assert!(d.to_string().contains("registry.ratelimit_reserve"), "{d}");
        h.clock.advance(Duration::from_millis(READING_TTL_MS));
        assert!(
            h.spare("docker.io").is_ok(),
            "an old reading is asked again"
        );
        assert!(h.standings()[0].budget.is_none());
    }

    #[test]
    fn zero_left_holds_back_even_without_a_limit_and_unlisted_registries_are_not_tracked() {
        let h = health(Reserve::Percent(20));
        h.observe("docker.io", |n| (n == "ratelimit-remaining").then_some("0"));
        assert!(h.spare("docker.io").is_err());
        answer(&h, "evil.example", "100", "0");
        assert!(h.spare("evil.example").is_ok());
        assert_eq!(h.standings().len(), 1);
        let h = health(Reserve::Requests(5));
        h.observe("docker.io", |n| (n == "ratelimit-remaining").then_some("4"));
        assert!(h.spare("docker.io").is_err(), "a count needs no limit");
    }

    #[test]
    fn a_rejection_stands_until_the_registry_accepts_again() {
        let h = health(Reserve::Percent(20));
        h.accepted("docker.io");
        assert!(!h.standings()[0].credentials_rejected);
        h.clock.advance(Duration::from_millis(5));
        h.rejected("docker.io", 401, "UNAUTHORIZED\nauthentication required");
        let s = &h.standings()[0];
        assert!(s.credentials_rejected);
        let r = s.last_rejection.as_ref().unwrap();
        assert_eq!((r.status, r.count), (401, 1));
        assert_eq!(r.message, "UNAUTHORIZED authentication required");
        h.clock.advance(Duration::from_millis(5));
        h.accepted("docker.io");
        let s = &h.standings()[0];
        assert!(!s.credentials_rejected);
        assert!(
            s.last_rejection.is_some(),
            "the last rejection stays visible"
        );
    }

    #[test]
    fn messages_from_registries_and_token_endpoints() {
        assert_eq!(
            message_of(
                br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#
            )
            .as_deref(),
            Some("UNAUTHORIZED authentication required")
        );
        assert_eq!(
            message_of(br#"{"details":"incorrect username or password"}"#).as_deref(),
            Some("incorrect username or password")
        );
        assert_eq!(message_of(b"\n  denied\nmore").as_deref(), Some("denied"));
        assert_eq!(message_of(b""), None);
    }
}

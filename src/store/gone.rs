//! What a failed revalidation does to a stored copy. The cache exists for the day the upstream is
//! unreachable, rate-limited, refuses the cache's account or has lost the object, so none of those
//! throws away what the partition holds: the copy is served stale. Only an upstream that says the object
//! is gone (404/410) is followed, and only once it has said so for the whole grace (`deleted_grace`,
//! 0 = at once), and never for a pinned key (sync, prefetch or operator): a pin is removed by an unpin
//! or an operator, not by a registry. Pure: the store applies the verdict.

use super::row::ObjectRow;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Serve the stored copy; nothing to record.
    Stale,
    /// Serve the stored copy, marked as deleted upstream since `since_ms`.
    Deleted { since_ms: u64 },
    /// Follow the upstream: remove the key.
    Drop,
}

/// Whether the upstream's status says the object is gone.
pub fn says_gone(status: Option<u16>) -> bool {
    matches!(status, Some(404 | 410))
}

/// The verdict for `row` after a revalidation failed with `status` (`None`: no answer at all) at `now_ms`.
pub fn after_failure(
    row: &ObjectRow,
    status: Option<u16>,
    now_ms: u64,
    grace: Duration,
) -> Verdict {
    if !says_gone(status) {
        return Verdict::Stale;
    }
    let since_ms = row.upstream_deleted_ms.unwrap_or(now_ms);
    if row.pinned || row.operator_pin {
        return Verdict::Deleted { since_ms };
    }
    let elapsed = Duration::from_millis(now_ms.saturating_sub(since_ms));
    if elapsed >= grace {
        Verdict::Drop
    } else {
        Verdict::Deleted { since_ms }
    }
}

/// Whether a removal decided on a row read before may still happen: the key may have been pinned since.
pub fn may_drop(row: &ObjectRow) -> bool {
    !row.pinned && !row.operator_pin
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);
    const T: u64 = 1_800_000_000_000;

    fn row(pinned: bool, operator: bool, deleted: Option<u64>) -> ObjectRow {
        ObjectRow {
            pinned,
            operator_pin: operator,
            upstream_deleted_ms: deleted,
            ..ObjectRow::sample(1, 10)
        }
    }

    #[test]
    fn no_failure_but_gone_touches_the_copy() {
        for status in [
            None,
            Some(401),
            Some(403),
            Some(429),
            Some(500),
            Some(502),
            Some(503),
        ] {
            assert_eq!(
                after_failure(&row(false, false, None), status, T, Duration::ZERO),
                Verdict::Stale,
                "{status:?}"
            );
        }
    }

    #[test]
    fn gone_is_followed_after_the_grace_counted_from_the_first_denial() {
        let fresh = row(false, false, None);
        assert_eq!(
            after_failure(&fresh, Some(404), T, 7 * DAY),
            Verdict::Deleted { since_ms: T }
        );
        let marked = row(false, false, Some(T));
        let six_days = T + 6 * DAY.as_millis() as u64;
        assert_eq!(
            after_failure(&marked, Some(410), six_days, 7 * DAY),
            Verdict::Deleted { since_ms: T }
        );
        let seven_days = T + 7 * DAY.as_millis() as u64;
        assert_eq!(
            after_failure(&marked, Some(404), seven_days, 7 * DAY),
            Verdict::Drop
        );
        assert_eq!(
            after_failure(&fresh, Some(404), T, Duration::ZERO),
            Verdict::Drop
        );
        // A clock set back never shortens the grace.
        assert_eq!(
            after_failure(&marked, Some(404), T - 1000, 7 * DAY),
            Verdict::Deleted { since_ms: T }
        );
    }

    #[test]
    fn a_pinned_copy_is_never_dropped_by_the_upstream() {
        let late = T + 365 * DAY.as_millis() as u64;
        for (pinned, operator) in [(true, false), (true, true), (false, true)] {
            let r = row(pinned, operator, Some(T));
            assert_eq!(
                after_failure(&r, Some(404), late, Duration::ZERO),
                Verdict::Deleted { since_ms: T }
            );
            assert!(!may_drop(&r));
        }
        assert!(may_drop(&row(false, false, Some(T))));
    }
}

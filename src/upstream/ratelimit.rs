//! A registry's announced pull budget, read from its answer headers. Docker Hub sends
//! `ratelimit-limit: 100;w=21600` and `ratelimit-remaining: 76;w=21600` (requests per window of `w`
//! seconds); the IETF drafts add `ratelimit-reset` (seconds until the window restarts) and allow a list
//! of quota policies (`10, 10;w=1, 50;w=60`: the first item is the one in force); GitHub and GitLab send
//! the same as `x-ratelimit-*`. Pure.

/// One reading of a registry's budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Reading {
    /// Requests the window allows, when announced.
    pub limit: Option<u64>,
    pub remaining: u64,
    /// The window's length in seconds (`;w=`), when announced.
    pub window_secs: Option<u64>,
    /// Seconds until the window restarts (`ratelimit-reset`), when announced.
    pub reset_secs: Option<u64>,
}

/// The reading in `header` (a lookup by lowercase name), if the answer carries one.
pub fn read<'a>(header: impl Fn(&str) -> Option<&'a str>) -> Option<Reading> {
    let pick = |name: &str| header(name).or_else(|| header(&format!("x-{name}")));
    let remaining = pick("ratelimit-remaining").and_then(policy)?;
    let limit = pick("ratelimit-limit").and_then(policy);
    let reset_secs = pick("ratelimit-reset").and_then(|v| v.trim().parse().ok());
    Some(Reading {
        limit: limit.map(|(n, _)| n),
        remaining: remaining.0,
        window_secs: remaining.1.or(limit.and_then(|(_, w)| w)),
        reset_secs,
    })
}

/// The policy in force of a header value: its count and window (`76;w=21600` → (76, Some(21600))).
fn policy(value: &str) -> Option<(u64, Option<u64>)> {
    let first = value.split(',').next()?;
    let mut parts = first.split(';');
    let count = parts.next()?.trim().parse().ok()?;
    let window = parts
        .filter_map(|p| p.trim().strip_prefix("w="))
        .find_map(|w| w.trim().parse().ok());
    Some((count, window))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(pairs: &[(&'static str, &'static str)]) -> Option<Reading> {
        read(|name| pairs.iter().find(|(n, _)| *n == name).map(|(_, v)| *v))
    }

    #[test]
    fn docker_hub_headers() {
        assert_eq!(
            from(&[
                ("ratelimit-limit", "100;w=21600"),
                ("ratelimit-remaining", "76;w=21600"),
                ("docker-ratelimit-source", "192.0.2.1"),
            ]),
            Some(Reading {
                limit: Some(100),
                remaining: 76,
                window_secs: Some(21600),
                reset_secs: None,
            })
        );
    }

    #[test]
    fn ietf_draft_and_x_prefixed_forms() {
        assert_eq!(
            from(&[
                ("ratelimit-limit", "10, 10;w=1, 50;w=60"),
                ("ratelimit-remaining", "3"),
                ("ratelimit-reset", "42"),
            ]),
            Some(Reading {
                limit: Some(10),
                remaining: 3,
                window_secs: None,
                reset_secs: Some(42),
            })
        );
        assert_eq!(
            from(&[
                ("x-ratelimit-limit", "5000"),
                ("x-ratelimit-remaining", "0")
            ])
            .map(|r| (r.limit, r.remaining)),
            Some((Some(5000), 0))
        );
    }

    #[test]
    fn nothing_or_nonsense_is_no_reading() {
        assert_eq!(from(&[]), None);
        assert_eq!(from(&[("ratelimit-limit", "100;w=21600")]), None);
        assert_eq!(from(&[("ratelimit-remaining", "lots")]), None);
        assert_eq!(from(&[("ratelimit-remaining", "-1")]), None);
        assert_eq!(
            from(&[("ratelimit-remaining", "7;w=x"), ("ratelimit-limit", "n/a")]),
            Some(Reading {
                limit: None,
                remaining: 7,
                window_secs: None,
                reset_secs: None,
            })
        );
    }
}

//! Which keys to evict. Pure: the store feeds it the index rows and acts on the answer.
//!
//! Least-recently-used by bytes down to a target, never a pinned key, never a key with a fill running.
//! A blob shared by several keys frees its bytes only when its last key goes.

use super::index::ObjectRow;
use std::collections::{HashMap, HashSet};

/// The target after eviction: 90% of the maximum, so eviction runs in batches, not on every fill.
pub(super) fn target_bytes(max_size: u64) -> u64 {
    max_size / 10 * 9
}

pub(super) struct EvictionPlan {
    pub keys: Vec<String>,
    pub freed: u64,
}

pub(super) fn plan(
    rows: &[(String, ObjectRow)],
    total: u64,
    target: u64,
    busy: &HashSet<String>,
) -> EvictionPlan {
    let mut plan = EvictionPlan {
        keys: Vec::new(),
        freed: 0,
    };
    if total <= target {
        return plan;
    }
    let mut refs: HashMap<_, u64> = HashMap::new();
    for (_, row) in rows {
        *refs.entry(row.digest).or_default() += 1;
    }
    let mut candidates: Vec<&(String, ObjectRow)> = rows
        .iter()
        .filter(|(k, r)| !r.pinned && !busy.contains(k))
        .collect();
    // Oldest access first; ties broken by key so the plan is deterministic.
    candidates.sort_by(|a, b| {
        a.1.last_access
            .cmp(&b.1.last_access)
            .then_with(|| a.0.cmp(&b.0))
    });
    for (key, row) in candidates {
        if total - plan.freed <= target {
            break;
        }
        plan.keys.push(key.clone());
        if let Some(n) = refs.get_mut(&row.digest) {
            *n -= 1;
            if *n == 0 {
                plan.freed += row.size;
            }
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(d: u8, size: u64, last_access: u64, pinned: bool) -> ObjectRow {
        ObjectRow {
            last_access,
            pinned,
            ..ObjectRow::sample(d, size)
        }
    }

    fn keys(p: &EvictionPlan) -> Vec<&str> {
        p.keys.iter().map(String::as_str).collect()
    }

    #[test]
    fn evicts_least_recently_used_until_target() {
        let rows = vec![
            ("a".to_string(), row(1, 40, 30, false)),
            ("b".to_string(), row(2, 40, 10, false)),
            ("c".to_string(), row(3, 40, 20, false)),
        ];
        let p = plan(&rows, 120, 80, &HashSet::new());
        assert_eq!(keys(&p), ["b"]);
        assert_eq!(p.freed, 40);
        let p = plan(&rows, 120, 40, &HashSet::new());
        assert_eq!(keys(&p), ["b", "c"]);
    }

    #[test]
    fn pins_and_busy_keys_are_never_evicted() {
        let rows = vec![
            ("pinned".to_string(), row(1, 50, 1, true)),
            ("busy".to_string(), row(2, 50, 2, false)),
            ("old".to_string(), row(3, 50, 3, false)),
        ];
        let busy = HashSet::from(["busy".to_string()]);
        let p = plan(&rows, 150, 0, &busy);
        assert_eq!(
            keys(&p),
            ["old"],
            "cannot go below what pins and fills hold"
        );
    }

    #[test]
    fn shared_blob_frees_only_with_its_last_key() {
        let rows = vec![
            ("x".to_string(), row(7, 100, 1, false)),
            ("y".to_string(), row(7, 100, 2, false)),
            ("z".to_string(), row(8, 100, 3, false)),
        ];
        let p = plan(&rows, 200, 100, &HashSet::new());
        assert_eq!(keys(&p), ["x", "y"]);
        assert_eq!(p.freed, 100);
    }

    #[test]
    fn nothing_to_do_under_target() {
        let rows = vec![("a".to_string(), row(1, 10, 1, false))];
        assert!(plan(&rows, 10, 90, &HashSet::new()).keys.is_empty());
        assert_eq!(target_bytes(1000), 900);
    }
}

//! A stored tag or referrers index whose revalidation failed: served stale through every kind of
//! registry trouble (`store::gone` decides, and follows a deletion only after `registry.deleted_grace`,
//! never for a pinned key). A 401/403 to content the registry gave the cache before is also the registry
//! rejecting the cache's access: recorded for the status page, the metrics and the alert.

use super::RegistryState;
use crate::store::{FillFailure, Hit, Key, SourceError};

/// The stored copy to serve after `failure`, if the store keeps one. `started_here`: this request began
/// the failed fill (requests that joined it do not record the same answer again).
pub(super) fn after_failure(
    state: &RegistryState,
    registry: &str,
    key: &Key,
    failure: &FillFailure,
    started_here: bool,
) -> Option<Hit> {
    let (status, message) = match failure {
        FillFailure::Upstream(SourceError::Status { status, message }) => {
            (Some(*status), message.as_str())
        }
        _ => (None, ""),
    };
    let hit = match state.store.after_failed_revalidation(
        key,
        status,
        state.config.deleted_grace.get(),
        state.config.tag_ttl.get(),
    ) {
        Ok(hit) => hit?,
        Err(e) => {
            tracing::error!(key = %key, error = %e, "cannot read the stored copy after a failed revalidation");
            return None;
        }
    };
    tracing::warn!(key = %key, %failure, "registry trouble; serving the stored copy");
    if started_here && let Some(s @ (401 | 403)) = status {
        state.health.rejected(registry, s, message);
    }
    Some(hit)
}

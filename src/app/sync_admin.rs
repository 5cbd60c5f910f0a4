//! The admin API's handle on the sync job (the HTTP front may not import `sync`), and the translation of
//! the job's reports into the view the API publishes, shared with the CLI so both print the same thing.

use crate::http::admin::view::{SkippedView, SyncItemView, SyncRunView};
use crate::http::admin::{SyncControl, SyncRunError};
use crate::lifecycle::RunStatus;
use crate::sync::planner::{Action, Kind, Plan};
use crate::sync::{self, Outcome, Report, Syncer};
use std::sync::Arc;

pub(super) struct SyncAdmin(pub Arc<Syncer>);

#[async_trait::async_trait]
impl SyncControl for SyncAdmin {
    fn status(&self) -> RunStatus<SyncRunView> {
        self.0.status().map(|r| run_view(&r))
    }

    fn start(&self, dry_run: bool) -> Result<u64, SyncRunError> {
        self.0.start(dry_run).map_err(run_error)
    }

    async fn run(&self, dry_run: bool) -> Result<SyncRunView, SyncRunError> {
        let report = self.0.run(dry_run, &sync::Quiet).await.map_err(run_error)?;
        Ok(run_view(&report))
    }
}

fn run_error(e: sync::SyncError) -> SyncRunError {
    match e {
        sync::SyncError::AlreadyRunning => SyncRunError::Busy,
        e => SyncRunError::Failed(e.to_string()),
    }
}

/// A finished (or dry) run as the API shows it.
pub fn run_view(report: &Report) -> SyncRunView {
    let mut view = plan_view(&report.plan, &report.outcomes);
    view.run = report.run;
    view.started_at = report.started_at;
    view.finished_at = report.finished_at;
    view.dry_run = report.dry_run;
    view.unpinned = report.unpinned;
    view
}

/// A plan, with whatever outcomes are known so far (none before the downloads).
pub fn plan_view(plan: &Plan, outcomes: &[Outcome]) -> SyncRunView {
    let items: Vec<SyncItemView> = plan
        .items
        .iter()
        .map(|i| {
            let outcome = outcomes.iter().find(|o| o.url == i.url);
            SyncItemView {
                name: i.name.clone(),
                kind: kind_name(i.kind).to_string(),
                url: i.url.clone(),
                size: i.size,
                action: match i.action {
                    Action::Keep => "keep",
                    Action::Download => "download",
                }
                .to_string(),
                ok: outcome.map(|o| o.ok),
                message: outcome.map(|o| o.message.clone()),
            }
        })
        .chain(plan.failed.iter().map(|f| SyncItemView {
            name: f.name.clone(),
            kind: kind_name(f.kind).to_string(),
            url: f.url.clone(),
            size: 0,
            action: "unavailable".to_string(),
            ok: Some(false),
            message: Some(f.reason.clone()),
        }))
        .collect();
    SyncRunView {
        run: 0,
        started_at: 0,
        finished_at: 0,
        dry_run: false,
        failed: items.iter().filter(|i| i.ok == Some(false)).count(),
        items,
        skipped: plan
            .skipped
            .iter()
            .map(|(name, reason)| SkippedView {
                name: name.clone(),
                reason: reason.clone(),
            })
            .collect(),
        total_bytes: plan.total_bytes(),
        download_bytes: plan.download_bytes(),
        over_budget: plan.over_budget.clone(),
        unpinned: 0,
    }
}

pub fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Image => "image",
        Kind::Kernel => "kernel",
        Kind::BootImage => "boot-image",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::planner::{Failed, Item};

    #[test]
    fn outcomes_are_matched_to_their_items() {
        let item = |name: &str, action| Item {
            kind: Kind::Image,
            name: name.into(),
            url: format!("http://i.test/{name}"),
            size: 10,
            md5: None,
            action,
        };
        let plan = Plan {
            items: vec![item("a", Action::Download), item("b", Action::Keep)],
            failed: vec![Failed {
                kind: Kind::Kernel,
                name: "v1".into(),
                url: "http://k.test/v1/kernel".into(),
                reason: "origin unreachable".into(),
            }],
            skipped: vec![("c".into(), "expired".into())],
            over_budget: None,
        };
        let report = Report {
            run: 4,
            started_at: 1,
            finished_at: 2,
            dry_run: false,
            plan,
            outcomes: vec![Outcome {
                name: "a".into(),
                url: "http://i.test/a".into(),
                ok: false,
                message: "origin answered 500".into(),
            }],
            unpinned: 3,
        };
        let v = run_view(&report);
        assert_eq!((v.run, v.failed, v.unpinned), (4, 2, 3));
        assert_eq!(v.items[2].action, "unavailable");
        assert_eq!(v.items[2].message.as_deref(), Some("origin unreachable"));
        assert_eq!(v.items[0].ok, Some(false));
        assert_eq!(v.items[0].action, "download");
        assert_eq!(v.items[1].ok, None);
        assert_eq!((v.download_bytes, v.total_bytes), (10, 20));
        assert_eq!(v.skipped[0].reason, "expired");
    }
}

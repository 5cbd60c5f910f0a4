//! `image-cache sync`: one metal-api sync run with a plan table and a bar per download; on the state dir
//! directly, or started on the running server through the admin API and followed there.

use super::admin_client::{self, AdminClient, Started, query};
use super::progress::{FillBars, FillProgress};
use super::store::{Opened, open};
use super::{ConfigArg, load_config};
use crate::app::AppError;
use crate::config;
use crate::http::admin::view::FillView;
use crate::metrics::Metrics;
use crate::sync::planner::{Action, Item, Kind, Plan};
use crate::sync::{Outcome, Report, Status, SyncError, Syncer, metal_api::ApiError};
use crate::upstream::{Method, NameResolver, Upstream};
use std::io::Write;
use std::time::Duration;

pub async fn sync(arg: &ConfigArg, dry_run: bool) -> Result<i32, AppError> {
    let (config, _) = load_config(arg)?;
    let metrics = Metrics::new();
    let store = match open(&config, metrics.clone()).await? {
        Opened::Store(store) => store,
        Opened::Locked => {
            let client = admin_client::connect(&config)?;
            eprintln!(
                "a server holds the store; starting the sync there ({})",
                client.base()
            );
            return via_server(&client, dry_run).await;
        }
    };
    let resolver = NameResolver::new(&config.dns).map_err(|e| {
        AppError::Config(config::ConfigError::new(
            "dns.upstreams",
            format!("cannot build a resolver: {e}"),
        ))
    })?;
    let upstream = Upstream::start(&config.upstream, resolver, metrics.clone(), 2)?;
    let syncer = Syncer::new(std::sync::Arc::new(config), store, upstream, metrics);
    let progress = TerminalProgress::default();
    let outcome = syncer.run(dry_run, &progress).await;
    progress.bars.clear();
    match outcome {
        Ok(report) => Ok(print_report(&report)),
        Err(SyncError::Api(
            e @ (ApiError::KeyFile { .. } | ApiError::EmptyKey(_) | ApiError::EmptyToken(_)),
        )) => Err(AppError::Config(config::ConfigError::new(
            "sync",
            e.to_string(),
        ))),
        Err(e) => {
            eprintln!("image-cache: sync failed, nothing was changed: {e}");
            Ok(1)
        }
    }
}

/// Starts the run on the server, draws its downloads from `GET /admin/fills` until `GET /admin/sync`
/// says that run finished, then prints its plan and outcome.
async fn via_server(client: &AdminClient, dry_run: bool) -> Result<i32, AppError> {
    let flag = dry_run.to_string();
    let started: Started = client
        .call(
            Method::Post,
            &format!("/admin/sync{}", query(&[("dry_run", &flag)])),
        )
        .await?;
    let bars = FillBars::default();
    let status = loop {
        let status: Status = client.call(Method::Get, "/admin/sync").await?;
        if status.finished >= started.run {
            break status;
        }
        let fills: Vec<FillView> = client.call(Method::Get, "/admin/fills").await?;
        let shown: Vec<FillProgress<'_>> = fills.iter().map(FillProgress::from).collect();
        bars.update(&shown);
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    bars.clear();
    match status.last {
        Some(report) if report.run == started.run => {
            print_plan(&report.plan);
            for o in &report.outcomes {
                print_outcome(o, &bars);
            }
            Ok(print_report(&report))
        }
        _ => {
            eprintln!(
                "image-cache: sync failed, nothing was changed: {}",
                status
                    .last_error
                    .as_deref()
                    .unwrap_or("the server kept no report")
            );
            Ok(1)
        }
    }
}

#[derive(Default)]
struct TerminalProgress {
    bars: FillBars,
}

impl crate::sync::Progress for TerminalProgress {
    fn planned(&self, plan: &Plan) {
        print_plan(plan);
    }
    fn started(&self, item: &Item) {
        if item.action == Action::Download {
            self.bars.println(&format!(
                "downloading {} ({}) from {}",
                item.name,
                crate::http::admin::fmt::bytes(item.size),
                item.url
            ));
        }
    }
    fn finished(&self, o: &Outcome) {
        print_outcome(o, &self.bars);
    }
    fn tick(&self, fills: &[crate::store::FillStatus]) {
        let shown: Vec<FillProgress<'_>> = fills.iter().map(FillProgress::from).collect();
        self.bars.update(&shown);
    }
}

fn print_outcome(o: &Outcome, bars: &FillBars) {
    let mark = if o.ok { "ok" } else { "FAILED" };
    bars.println(&format!("{mark:>6} {}: {}", o.name, o.message));
}

fn print_plan(plan: &Plan) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{:<28} {:<10} {:>14} {:<9} PATH",
        "ID", "KIND", "SIZE", "ACTION"
    );
    for i in &plan.items {
        let path = url::Url::parse(&i.url).map_or(i.url.clone(), |u| u.path().to_string());
        let kind = match i.kind {
            Kind::Image => "image",
            Kind::Kernel => "kernel",
            Kind::BootImage => "boot-image",
        };
        let action = match i.action {
            Action::Keep => "keep",
            Action::Download => "download",
        };
        let _ = writeln!(
            out,
            "{:<28} {kind:<10} {:>14} {action:<9} {path}",
            i.name, i.size
        );
    }
    for (name, why) in &plan.skipped {
        let _ = writeln!(
            out,
            "{name:<28} {:<10} {:>14} {:<9} ({why})",
            "-", "-", "skip"
        );
    }
    let _ = writeln!(
        out,
        "{} items, {} bytes; {} bytes to download",
        plan.items.len(),
        plan.total_bytes(),
        plan.download_bytes()
    );
    if let Some(why) = &plan.over_budget {
        let _ = writeln!(out, "warning: cannot get under cache.max_size: {why}");
    }
}

/// Prints the outcome; the exit code: 0 when every item is present, 1 otherwise.
fn print_report(report: &Report) -> i32 {
    if report.dry_run {
        println!("dry run: nothing changed");
        return 0;
    }
    let failed = report.failed();
    println!(
        "{} of {} items present, {failed} failed, {} keys unpinned",
        report.outcomes.len() - failed,
        report.outcomes.len(),
        report.unpinned
    );
    i32::from(failed > 0)
}

//! `image-cache sync`: one metal-api sync run with a plan table and a bar per download; on the state dir
//! directly, or started on the running server through the admin API and followed there.

use super::CliError;
use super::admin_client::{self, AdminClient, Started, query};
use super::progress::{FillBars, FillProgress};
use super::store::{Opened, open};
use super::{ConfigArg, load_config};
use crate::app::sync_admin::{plan_view, run_view};
use crate::config;
use crate::http::admin::view::SyncRunView;
use crate::lifecycle::{RunStatus, Workers};
use crate::metrics::Metrics;
use crate::sync::planner::{Action, Item, Plan};
use crate::sync::{Outcome, SyncError, Syncer, metal_api::ApiError};
use crate::upstream::guard::AddressRule;
use crate::upstream::{Method, NameResolver, Upstream};
use std::io::Write;

pub async fn sync(arg: &ConfigArg, dry_run: bool) -> Result<i32, CliError> {
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
        CliError::Config(config::ConfigError::new(
            "dns.upstreams",
            format!("cannot build a resolver: {e}"),
        ))
    })?;
    let upstream = Upstream::start(
        &config.upstream,
        resolver,
        metrics.clone(),
        2,
        AddressRule::of_subdomains(&config),
    )?;
    let workers = Workers::new(tokio_util::sync::CancellationToken::new());
    // No server runs, so no health is known of the other nodes: everything comes from the origin.
    let peers = crate::peers::Peers::new(&config.nodes);
    let syncer = Syncer::new(
        std::sync::Arc::new(config),
        store,
        upstream,
        peers,
        metrics,
        workers,
    );
    let progress = TerminalProgress::default();
    let outcome = syncer.run(dry_run, &progress).await;
    progress.bars.clear();
    match outcome {
        Ok(report) => Ok(print_report(&run_view(&report))),
        Err(SyncError::Api(
            e @ (ApiError::KeyFile { .. } | ApiError::EmptyKey(_) | ApiError::EmptyToken(_)),
        )) => Err(CliError::Config(config::ConfigError::new(
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
async fn via_server(client: &AdminClient, dry_run: bool) -> Result<i32, CliError> {
    let flag = dry_run.to_string();
    let started: Started = client
        .call(
            Method::Post,
            &format!("/admin/sync{}", query(&[("dry_run", &flag)])),
        )
        .await?;
    let bars = FillBars::default();
    let status: RunStatus<SyncRunView> =
        admin_client::follow(client, "/admin/sync", started.run, &bars).await?;
    match status.last {
        Some(report) if report.run == started.run => {
            print_plan(&report);
            for i in &report.items {
                if let (Some(ok), Some(message)) = (i.ok, &i.message) {
                    print_outcome(&i.name, ok, message, &bars);
                }
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
        print_plan(&plan_view(plan, &[]));
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
        print_outcome(&o.name, o.ok, &o.message, &self.bars);
    }
    fn tick(&self, fills: &[crate::store::FillStatus]) {
        let shown: Vec<FillProgress<'_>> = fills.iter().map(FillProgress::from).collect();
        self.bars.update(&shown);
    }
}

fn print_outcome(name: &str, ok: bool, message: &str, bars: &FillBars) {
    let mark = if ok { "ok" } else { "FAILED" };
    bars.println(&format!("{mark:>6} {name}: {message}"));
}

fn print_plan(plan: &SyncRunView) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{:<28} {:<10} {:>14} {:<9} PATH",
        "ID", "KIND", "SIZE", "ACTION"
    );
    for i in &plan.items {
        let path = url::Url::parse(&i.url).map_or(i.url.clone(), |u| u.path().to_string());
        let _ = writeln!(
            out,
            "{:<28} {:<10} {:>14} {:<9} {path}",
            i.name, i.kind, i.size, i.action
        );
    }
    for s in &plan.skipped {
        let _ = writeln!(
            out,
            "{:<28} {:<10} {:>14} {:<9} ({})",
            s.name, "-", "-", "skip", s.reason
        );
    }
    let _ = writeln!(
        out,
        "{} items, {} bytes; {} bytes to download",
        plan.items.len(),
        plan.total_bytes,
        plan.download_bytes
    );
    if let Some(why) = &plan.over_budget {
        let _ = writeln!(out, "warning: cannot get under cache.max_size: {why}");
    }
}

/// Prints the outcome; the exit code: 0 when every item is present, 1 otherwise.
fn print_report(report: &SyncRunView) -> i32 {
    if report.dry_run {
        println!("dry run: nothing changed");
        return 0;
    }
    let dealt = report.items.iter().filter(|i| i.ok.is_some()).count();
    println!(
        "{} of {dealt} items present, {} failed, {} keys unpinned",
        dealt - report.failed,
        report.failed,
        report.unpinned
    );
    i32::from(report.failed > 0)
}

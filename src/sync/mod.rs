//! Keeps the store in step with metal-api: list images and partitions, ask the origin about each URL
//! (size; `.md5` sidecar), plan (`planner.rs`, pure), then fill what is missing or changed through the
//! store's own fills (a client asking for the same file joins the same download), pin what the plan
//! keeps and unpin the rest so eviction can free it. Runs never overlap; a failed listing changes nothing;
//! one failed download does not stop the others.

mod executor;
pub mod hmac;
pub mod metal_api;
pub mod origin;
pub mod planner;
pub mod probe;
pub mod version;

use crate::config::Config;
use crate::lifecycle::{RunStatus, RunTicket, Runs, Worker, Workers};
use crate::metrics::{Metrics, ResultLabels, StateLabels};
use crate::peers::Peers;
use crate::store::{FilePath, Key, Store};
use crate::upstream::Upstream;
use executor::Executor;
use futures_util::StreamExt;
use metal_api::MetalApi;
use planner::{Action, Item, Kind, Plan, Policy, Remote};
use probe::Unprobed;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

/// Origin probes in flight at once (HEAD of each file, GET of each sidecar).
const PROBE_CONCURRENCY: usize = 8;
/// metal-image-cache-sync's heartbeat period and timeout towards metal-apiserver (v2).
const PING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(300);
const PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("a sync is already running")]
    AlreadyRunning,
    #[error(transparent)]
    Api(#[from] metal_api::ApiError),
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("stopped: the service is shutting down")]
    Stopped,
    #[error(
        "the origin could not be reached for any of the {items} listed items (e.g. {example}); nothing was changed"
    )]
    OriginUnreachable { items: usize, example: String },
}

/// What happened to one planned item.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Outcome {
    pub name: String,
    pub url: String,
    pub ok: bool,
    pub message: String,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Report {
    /// The run's number (see `RunStatus::started`); 0 in reports of older servers.
    #[serde(default)]
    pub run: u64,
    pub started_at: u64,
    pub finished_at: u64,
    pub dry_run: bool,
    pub plan: Plan,
    pub outcomes: Vec<Outcome>,
    pub unpinned: usize,
}

impl Report {
    pub fn failed(&self) -> usize {
        self.outcomes.iter().filter(|o| !o.ok).count()
    }
}

/// Tells the CLI (or nobody, in the server) what is going on.
pub trait Progress: Send + Sync {
    fn planned(&self, _plan: &Plan) {}
    fn started(&self, _item: &Item) {}
    fn finished(&self, _outcome: &Outcome) {}
    /// Every half second while downloads run: the store's fills in flight.
    fn tick(&self, _fills: &[crate::store::FillStatus]) {}
}

pub struct Quiet;
impl Progress for Quiet {}

pub struct Syncer {
    config: Arc<Config>,
    store: Store,
    upstream: Upstream,
    peers: Peers,
    metrics: Metrics,
    workers: Workers,
    runs: Arc<Runs<Report>>,
}

impl Syncer {
    pub fn new(
        config: Arc<Config>,
        store: Store,
        upstream: Upstream,
        peers: Peers,
        metrics: Metrics,
        workers: Workers,
    ) -> Arc<Self> {
        Arc::new(Syncer {
            config,
            store,
            upstream,
            peers,
            metrics,
            workers,
            runs: Arc::default(),
        })
    }

    pub fn status(&self) -> RunStatus<Report> {
        self.runs.status()
    }

    /// One run, waited for. `Err` only when nothing could be done (listing failed, already running,
    /// shutting down).
    pub async fn run(&self, dry_run: bool, progress: &dyn Progress) -> Result<Report, SyncError> {
        let ticket = self.runs.begin().map_err(|_| SyncError::AlreadyRunning)?;
        self.run_ticket(ticket, dry_run, progress).await
    }

    /// Starts a run as a named task and returns its number at once (the admin API's trigger and the
    /// schedule), or `AlreadyRunning`. Claiming the run here, not in the task, means the number returned
    /// is the run that will happen: a scheduled run cannot slip in between.
    pub fn start(self: &Arc<Self>, dry_run: bool) -> Result<u64, SyncError> {
        let ticket = self.runs.begin().map_err(|_| SyncError::AlreadyRunning)?;
        let run = ticket.run();
        let me = Arc::clone(self);
        self.workers
            .spawn_task(format!("sync run {run}"), async move {
                if let Err(e) = me.run_ticket(ticket, dry_run, &Quiet).await {
                    tracing::error!(error = %e, "sync failed; nothing was changed");
                }
            });
        Ok(run)
    }

    /// A scheduled run: after a random delay of up to `sync.jitter`, so the partition's nodes do not all
    /// ask metal-api (and fill) in the same second; a run still going by then makes this one skip.
    fn start_scheduled(self: &Arc<Self>, dry_run: bool) {
        let jitter = self.config.sync.jitter.get();
        let delay = if jitter.is_zero() {
            std::time::Duration::ZERO
        } else {
            jitter.mul_f64(rand::random::<f64>())
        };
        let me = Arc::clone(self);
        let stop = self.workers.shutdown_token();
        self.workers.spawn_task(
            format!("sync run (scheduled, starts after {}s)", delay.as_secs()),
            async move {
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = stop.cancelled() => return,
                }
                match me.run(dry_run, &Quiet).await {
                    Ok(report) => tracing::info!(
                        run = report.run,
                        failed = report.failed(),
                        "scheduled sync finished"
                    ),
                    Err(SyncError::AlreadyRunning) => {
                        tracing::info!("previous sync still running; skipping this tick");
                    }
                    Err(e) => tracing::error!(error = %e, "sync failed; nothing was changed"),
                }
            },
        );
    }

    /// Runs under `ticket` until done or until the service stops (then nothing more is started or
    /// re-pinned; fills already running are the store's to drain).
    async fn run_ticket(
        &self,
        ticket: RunTicket<Report>,
        dry_run: bool,
        progress: &dyn Progress,
    ) -> Result<Report, SyncError> {
        let stop = self.workers.shutdown_token();
        let result = tokio::select! {
            r = self.run_plan(dry_run, progress) => r,
            () = stop.cancelled() => Err(SyncError::Stopped),
        };
        let result = result.map(|r| Report {
            run: ticket.run(),
            ..r
        });
        let label = match &result {
            Ok(r) if r.failed() == 0 => "success",
            Ok(_) => "partial",
            Err(_) => "failure",
        };
        if !dry_run {
            self.metrics
                .sync_runs
                .get_or_create(&ResultLabels { result: label })
                .inc();
            if matches!(&result, Ok(r) if r.failed() == 0) {
                self.metrics
                    .sync_last_success
                    .set(self.store.clock().now_secs() as f64);
            }
        }
        ticket.finish(
            result
                .as_ref()
                .map(Report::clone)
                .map_err(|e| e.to_string()),
        );
        result
    }

    async fn run_plan(&self, dry_run: bool, progress: &dyn Progress) -> Result<Report, SyncError> {
        let started_at = self.store.clock().now_secs();
        let cfg = &self.config.sync;
        let api = MetalApi::new(cfg, self.upstream.clone())?;
        let images = api.images().await?;
        let boot = if cfg.kernels || cfg.boot_images {
            api.boot_configs().await?
        } else {
            Vec::new()
        };
        let policy = Policy {
            min_per_name: cfg.min_images_per_name as usize,
            max_per_name: cfg.max_images_per_name as usize,
            grace: cfg.expiration_grace_period.get(),
            excludes: cfg.excludes.clone(),
            max_size: self.config.cache.max_size.bytes(),
            kernels: cfg.kernels,
            boot_images: cfg.boot_images,
            now: SystemTime::now(),
        };
        let probes = planner::urls_to_probe(&images, &boot, &policy);
        let upstream = &self.upstream;
        let domains = &self.config.domains;
        let allow_http = cfg.allow_http_origins;
        let probed: Vec<(String, Result<Remote, Unprobed>)> =
            futures_util::stream::iter(probes.clone())
                .map(|(kind, listed)| async move {
                    let answer = match origin::download(&listed, domains, allow_http) {
                        Ok(d) => probe::remote(upstream, kind, &d.url).await,
                        Err(refused) => Err(Unprobed::Refused(refused.to_string())),
                    };
                    (listed, answer)
                })
                .buffer_unordered(PROBE_CONCURRENCY)
                .collect()
                .await;
        let mut remote = HashMap::new();
        let mut unavailable = HashMap::new();
        let mut unreachable = 0;
        for (listed, answer) in probed {
            match answer {
                Ok(r) => {
                    remote.insert(listed, r);
                }
                Err(Unprobed::Missing) => {}
                Err(Unprobed::Unreachable(why)) => {
                    unreachable += 1;
                    unavailable.insert(listed, why);
                }
                Err(Unprobed::Refused(why)) => {
                    unavailable.insert(listed, why);
                }
            }
        }
        if unreachable > 0 && unreachable == probes.len() {
            // Nothing could be asked: an outage, not an empty plan. Nothing is changed.
            let why = unavailable.values().next().cloned().unwrap_or_default();
            return Err(SyncError::OriginUnreachable {
                items: unreachable,
                example: why,
            });
        }
        let mut stored = HashMap::new();
        for (_, url) in &probes {
            let Some(key) = key_for(url) else {
                continue;
            };
            // A copy a client filled has no md5 yet: computed once here, so it can be kept.
            match self.store.ensure_md5(&key).await {
                Ok(Some(md5)) => {
                    stored.insert(url.clone(), Some(md5));
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(key = %key, error = %e, "cannot read a stored copy's md5; downloading it again");
                    stored.insert(url.clone(), None);
                }
            }
        }
        let plan = planner::plan(&images, &boot, &remote, &unavailable, &stored, &policy);
        if let Some(why) = &plan.over_budget {
            tracing::warn!(%why, "cannot reduce the image set any further; exceeding cache.max_size");
        }
        tracing::info!(
            items = plan.items.len(),
            download = plan
                .items
                .iter()
                .filter(|i| i.action == Action::Download)
                .count(),
            bytes = plan.download_bytes(),
            skipped = plan.skipped.len(),
            dry_run,
            "sync plan"
        );
        self.set_gauges(&plan, images.len());
        progress.planned(&plan);
        let mut report = Report {
            run: 0,
            started_at,
            finished_at: started_at,
            dry_run,
            plan: plan.clone(),
            outcomes: Vec::new(),
            unpinned: 0,
        };
        if dry_run {
            report.finished_at = self.store.clock().now_secs();
            return Ok(report);
        }
        let executor = Executor {
            store: &self.store,
            upstream: &self.upstream,
            peers: &self.peers,
            metrics: &self.metrics,
            domains: &self.config.domains,
            allow_http: cfg.allow_http_origins,
        };
        // What the plan keeps is pinned before anything is downloaded: the downloads must make room by
        // evicting what the plan drops, never what it keeps.
        executor.pin_planned(&plan)?;
        let concurrency = (cfg.concurrency as usize).max(1);
        let downloads = futures_util::stream::iter(plan.items.clone())
            .map(|item| {
                let executor = &executor;
                async move {
                    progress.started(&item);
                    let outcome = executor.realise(&item).await;
                    progress.finished(&outcome);
                    outcome
                }
            })
            .buffer_unordered(concurrency)
            .collect::<Vec<Outcome>>();
        let ticker = async {
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                progress.tick(&self.store.fills());
            }
        };
        report.outcomes = tokio::select! {
            outcomes = downloads => outcomes,
            () = ticker => Vec::new(),
        };
        report.outcomes.extend(plan.failed.iter().map(|f| Outcome {
            name: f.name.clone(),
            url: f.url.clone(),
            ok: false,
            message: f.reason.clone(),
        }));
        report.unpinned = executor.repin(&plan)?;
        report.finished_at = self.store.clock().now_secs();
        for o in report.outcomes.iter().filter(|o| !o.ok) {
            tracing::warn!(name = %o.name, url = %o.url, error = %o.message, "sync item failed");
        }
        Ok(report)
    }

    fn set_gauges(&self, plan: &Plan, listed: usize) {
        let images: Vec<&Item> = plan
            .items
            .iter()
            .filter(|i| i.kind == Kind::Image)
            .collect();
        let cached = images.iter().filter(|i| i.action == Action::Keep).count();
        let gauge = |state: &'static str, v: usize| {
            self.metrics
                .sync_images
                .get_or_create(&StateLabels { state })
                .set(v as i64);
        };
        gauge("cached", cached);
        gauge("missing", images.len() - cached);
        gauge("unsynced", listed.saturating_sub(images.len()));
    }

    /// v2: pings metal-apiserver at start and every `PING_INTERVAL` (2 s timeout each), until shutdown.
    async fn ping_loop(self: Arc<Self>, worker: Worker) {
        let started_at = SystemTime::now();
        let identifier = rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned();
        loop {
            worker.busy();
            let outcome = match MetalApi::new(&self.config.sync, self.upstream.clone()) {
                Ok(api) => {
                    let ping = api.ping(&identifier, started_at, PING_INTERVAL);
                    match tokio::time::timeout(PING_TIMEOUT, ping).await {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(e)) => Err(format!("metal-apiserver ping failed: {e}")),
                        Err(_) => Err("metal-apiserver ping timed out".to_string()),
                    }
                }
                Err(e) => Err(format!("cannot ping metal-apiserver: {e}")),
            };
            if let Err(e) = &outcome {
                tracing::warn!("{e}");
            }
            worker.finished(outcome);
            tokio::select! {
                _ = tokio::time::sleep(PING_INTERVAL) => {}
                _ = worker.shutdown().cancelled() => return,
            }
        }
    }

    /// The scheduler worker: a first run at start-up, then one on every tick of `sync.schedule` (UTC),
    /// until shutdown. Each run is a task of its own (`start`); a tick that finds a run still going skips.
    /// With v2 it also starts the metal-apiserver ping worker.
    pub async fn run_scheduled(self: Arc<Self>, worker: Worker) {
        if self.config.sync.api == crate::config::MetalApiVersion::V2 {
            let me = Arc::clone(&self);
            self.workers
                .spawn("metal-apiserver ping", move |w| me.ping_loop(w));
        }
        let dry_run = self.config.sync.dry_run;
        let tick = move |me: &Arc<Self>| me.start_scheduled(dry_run);
        tick(&self);
        let schedule = self.config.sync.schedule.clone();
        crate::lifecycle::schedule::on_schedule(worker, "sync", &schedule, &self, tick).await;
    }
}

/// `file:<host><path>` for an absolute http(s) URL.
pub fn key_for(url: &str) -> Option<Key> {
    let u = url::Url::parse(url).ok()?;
    let host = u.host_str()?.to_ascii_lowercase();
    let path = FilePath::from_request(u.path()).ok()?;
    Key::file(&host, &path).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(
            key_for("https://Images.Metal-Stack.io/metal-os/stable/debian/13/img.tar.lz4")
                .unwrap()
                .as_str(),
            "file:images.metal-stack.io/metal-os/stable/debian/13/img.tar.lz4"
        );
        assert!(key_for("https://images.test/a/../b").is_some_and(|k| !k.as_str().contains("..")));
        assert!(key_for("not a url").is_none());
    }
}

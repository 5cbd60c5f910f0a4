//! Keeps the store in step with metal-api: list images and partitions, ask the origin about each URL
//! (size; `.md5` sidecar), plan (`planner.rs`, pure), then fill what is missing or changed through the
//! store's own fills (a client asking for the same file joins the same download), pin what the plan
//! keeps and unpin the rest so eviction can free it. Runs never overlap; a failed listing changes nothing;
//! one failed download does not stop the others.

pub mod hmac;
pub mod metal_api;
pub mod planner;
pub mod version;

use crate::config::Config;
use crate::metrics::{Metrics, ResultLabels, StateLabels};
use crate::store::{
    Access, Expected, FilePath, FillSpec, Key, Phase, Plan as StorePlan, Store, now_secs,
};
use crate::upstream::{self, Upstream};
use futures_util::StreamExt;
use metal_api::MetalApi;
use planner::{Action, Item, Kind, Plan, Policy, Remote};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Origin probes in flight at once (HEAD of each file, GET of each sidecar).
const PROBE_CONCURRENCY: usize = 8;
/// metal-image-cache-sync's heartbeat period and timeout towards metal-apiserver (v2).
const PING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(300);
const PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// A `.md5` sidecar is a line of text; anything bigger is not one.
const MAX_SIDECAR: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("a sync is already running")]
    AlreadyRunning,
    #[error(transparent)]
    Api(#[from] metal_api::ApiError),
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
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
    /// The run's number (see `Status::started`); 0 in reports of older servers.
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

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Status {
    pub running: bool,
    /// Runs started since the service started; the number of the current or latest run.
    #[serde(default)]
    pub started: u64,
    /// The number of the latest run that ended, successfully or not: a client that started run `n` waits
    /// for `finished >= n`, then finds its report in `last` (when `last.run == n`) or its error in `last_error`.
    #[serde(default)]
    pub finished: u64,
    pub last: Option<Report>,
    pub last_error: Option<String>,
}

pub struct Syncer {
    config: Arc<Config>,
    store: Store,
    upstream: Upstream,
    metrics: Metrics,
    running: Arc<tokio::sync::Mutex<()>>,
    runs: std::sync::atomic::AtomicU64,
    /// Mirrors `running` for readers: peeking at the mutex could make a starting run look busy.
    busy: std::sync::atomic::AtomicBool,
    status: Mutex<Status>,
}

impl Syncer {
    pub fn new(
        config: Arc<Config>,
        store: Store,
        upstream: Upstream,
        metrics: Metrics,
    ) -> Arc<Self> {
        Arc::new(Syncer {
            config,
            store,
            upstream,
            metrics,
            running: Arc::new(tokio::sync::Mutex::new(())),
            runs: std::sync::atomic::AtomicU64::new(0),
            busy: std::sync::atomic::AtomicBool::new(false),
            status: Mutex::new(Status::default()),
        })
    }

    pub fn status(&self) -> Status {
        let mut s = self
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        s.running = self.busy.load(std::sync::atomic::Ordering::SeqCst);
        s
    }

    /// One run. `Err` only when nothing could be done (listing failed, already running).
    pub async fn run(&self, dry_run: bool, progress: &dyn Progress) -> Result<Report, SyncError> {
        let guard = Arc::clone(&self.running)
            .try_lock_owned()
            .map_err(|_| SyncError::AlreadyRunning)?;
        let run = self.begin();
        self.run_guarded(guard, run, dry_run, progress).await
    }

    /// Starts a run in the background and returns its number at once (the admin API's trigger), or
    /// `AlreadyRunning`. Claiming the lock here, not in the task, means the number returned is the run
    /// that will happen: a scheduled run cannot slip in between.
    pub fn start(self: &Arc<Self>, dry_run: bool) -> Result<u64, SyncError> {
        let guard = Arc::clone(&self.running)
            .try_lock_owned()
            .map_err(|_| SyncError::AlreadyRunning)?;
        let run = self.begin();
        let me = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(e) = me.run_guarded(guard, run, dry_run, &Quiet).await {
                tracing::error!(error = %e, "sync failed; nothing was changed");
            }
        });
        Ok(run)
    }

    fn begin(&self) -> u64 {
        self.busy.store(true, std::sync::atomic::Ordering::SeqCst);
        let run = self.runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .started = run;
        run
    }

    async fn run_guarded(
        &self,
        _guard: tokio::sync::OwnedMutexGuard<()>,
        run: u64,
        dry_run: bool,
        progress: &dyn Progress,
    ) -> Result<Report, SyncError> {
        let result = self
            .run_locked(dry_run, progress)
            .await
            .map(|r| Report { run, ..r });
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
        }
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        match &result {
            Ok(report) => {
                if !dry_run && report.failed() == 0 {
                    self.metrics.sync_last_success.set(now_secs() as f64);
                }
                status.last = Some(report.clone());
                status.last_error = None;
            }
            Err(e) => status.last_error = Some(e.to_string()),
        }
        status.finished = run;
        self.busy.store(false, std::sync::atomic::Ordering::SeqCst);
        result
    }

    async fn run_locked(
        &self,
        dry_run: bool,
        progress: &dyn Progress,
    ) -> Result<Report, SyncError> {
        let started_at = now_secs();
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
        let probed: Vec<(String, Option<Remote>)> = futures_util::stream::iter(probes.clone())
            .map(|(kind, url)| self.probe(kind, url))
            .buffer_unordered(PROBE_CONCURRENCY)
            .collect()
            .await;
        let remote: HashMap<String, Remote> = probed
            .into_iter()
            .filter_map(|(url, r)| r.map(|r| (url, r)))
            .collect();
        let mut stored = HashMap::new();
        for (_, url) in &probes {
            if let Some(key) = key_for(url)
                && let Some(row) = self.store.get(&key)?
            {
                stored.insert(url.clone(), row.md5);
            }
        }
        let plan = planner::plan(&images, &boot, &remote, &stored, &policy);
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
            report.finished_at = now_secs();
            return Ok(report);
        }
        let concurrency = (cfg.concurrency as usize).max(1);
        let downloads = futures_util::stream::iter(plan.items.clone())
            .map(|item| self.realise_reporting(item, progress))
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
        report.unpinned = self.repin(&plan)?;
        report.finished_at = now_secs();
        for o in report.outcomes.iter().filter(|o| !o.ok) {
            tracing::warn!(name = %o.name, url = %o.url, error = %o.message, "sync item failed");
        }
        Ok(report)
    }

    /// Size from a HEAD; md5 from the sidecar (not for kernels). `None`: the origin does not serve it.
    async fn probe(&self, kind: Kind, url: String) -> (String, Option<Remote>) {
        let r = self.probe_url(kind, &url).await;
        (url, r)
    }

    async fn probe_url(&self, kind: Kind, url: &str) -> Option<Remote> {
        let parsed = url::Url::parse(url).ok()?;
        let mut head = upstream::Request::get(parsed.clone(), "sync");
        head.method = upstream::Method::Head;
        let size = match self.upstream.send(head).await {
            Ok(r) if r.status == 200 => r.content_length().unwrap_or(0),
            Ok(r) if kind == Kind::Kernel => {
                tracing::warn!(%url, status = r.status, "kernel HEAD failed; size unknown");
                0
            }
            Err(e) if kind == Kind::Kernel => {
                tracing::warn!(%url, error = %e, "kernel HEAD failed; size unknown");
                0
            }
            Ok(r) => {
                tracing::warn!(%url, status = r.status, "not on the origin");
                return None;
            }
            Err(e) => {
                tracing::warn!(%url, error = %e, "origin unreachable");
                return None;
            }
        };
        let md5 = if kind == Kind::Kernel {
            None
        } else {
            self.sidecar_md5(&parsed).await
        };
        Some(Remote { size, md5 })
    }

    async fn sidecar_md5(&self, url: &url::Url) -> Option<String> {
        let sidecar = url::Url::parse(&format!("{url}.md5")).ok()?;
        let resp = self
            .upstream
            .send(upstream::Request::get(sidecar, "sync"))
            .await
            .ok()?;
        if resp.status != 200 {
            return None;
        }
        let body = upstream::read_body(resp.body, MAX_SIDECAR).await.ok()?;
        parse_md5(&String::from_utf8_lossy(&body))
    }

    async fn realise_reporting(&self, item: Item, progress: &dyn Progress) -> Outcome {
        progress.started(&item);
        let outcome = self.realise(&item).await;
        progress.finished(&outcome);
        outcome
    }

    /// Makes one planned item present: fill it (verified against its md5) when the plan says so, and its
    /// sidecar when it has one and the store lacks it.
    async fn realise(&self, item: &Item) -> Outcome {
        let outcome = |ok: bool, message: String| Outcome {
            name: item.name.clone(),
            url: item.url.clone(),
            ok,
            message,
        };
        let Some(key) = key_for(&item.url) else {
            return outcome(false, "URL cannot be a cache key".into());
        };
        if item.action == Action::Download {
            let expected = Expected {
                size: (item.size > 0).then_some(item.size),
                sha256: None,
                md5: item.md5.as_deref().and_then(md5_bytes),
            };
            if let Err(e) = self
                .fill(&key, &item.url, expected, item.md5.as_deref())
                .await
            {
                return outcome(false, e);
            }
        }
        if item.md5.is_some() {
            let sidecar_url = format!("{}.md5", item.url);
            if let Some(sidecar) = key_for(&sidecar_url) {
                let have = self.store.get(&sidecar).ok().flatten().is_some();
                if (!have || item.action == Action::Download)
                    && let Err(e) = self
                        .fill(&sidecar, &sidecar_url, Expected::default(), None)
                        .await
                {
                    return outcome(false, format!("sidecar: {e}"));
                }
            }
        }
        let verb = if item.action == Action::Download {
            "downloaded"
        } else {
            "kept"
        };
        outcome(true, verb.into())
    }

    /// Fills `key` from `url` and waits for the end. A client fill already running for the key is joined;
    /// its result is then checked against `md5` here (it was only length-checked).
    async fn fill(
        &self,
        key: &Key,
        url: &str,
        expected: Expected,
        md5: Option<&str>,
    ) -> Result<(), String> {
        let parsed = url::Url::parse(url).map_err(|e| e.to_string())?;
        let source = upstream::source::get_kind(self.upstream.clone(), parsed, "sync", None, None);
        let spec = FillSpec {
            expected,
            source,
            want_md5: true,
        };
        let access = self
            .store
            .access(key, move |_| StorePlan::Fill(spec))
            .map_err(|e| e.to_string())?;
        let Access::Fill { fill, .. } = access else {
            return Err("the store did not start a fill".into());
        };
        match fill.finished().await {
            Phase::Complete { row } => match md5 {
                Some(want) if row.md5.as_deref() != Some(want) => {
                    let _ = self.store.remove(&[key.as_str().to_string()]);
                    Err(format!(
                        "md5 mismatch: sidecar says {want}, content is {}",
                        row.md5.unwrap_or_default()
                    ))
                }
                _ => Ok(()),
            },
            Phase::Failed(f) => Err(f.to_string()),
            other => Err(format!("fill ended as {other:?}")),
        }
    }

    /// Pins every planned key that is stored now, with its sidecar (a failed re-download keeps the copy
    /// it would have replaced pinned); unpins every other pinned file key, so eviction may reclaim what
    /// metal-api no longer lists. Keys an operator pinned through the admin API stay pinned.
    fn repin(&self, plan: &Plan) -> Result<usize, SyncError> {
        let mut keep = HashSet::new();
        for item in &plan.items {
            let sidecar = item.md5.as_ref().map(|_| format!("{}.md5", item.url));
            for url in std::iter::once(&item.url).chain(sidecar.as_ref()) {
                if let Some(key) = key_for(url)
                    && self.store.set_pinned(&key, true)?
                {
                    keep.insert(key.as_str().to_string());
                }
            }
        }
        let mut unpinned = 0;
        let mut cursor: Option<String> = None;
        loop {
            let page = self.store.list("file:", cursor.as_deref(), 1000)?;
            let Some((last, _)) = page.last() else {
                break;
            };
            cursor = Some(last.clone());
            for (key, row) in &page {
                if row.pinned && !row.operator_pin && !keep.contains(key) {
                    if let Ok(k) = Key::parse(key) {
                        self.store.set_pinned(&k, false)?;
                    }
                    unpinned += 1;
                }
            }
            if page.len() < 1000 {
                break;
            }
        }
        Ok(unpinned)
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

    /// v2: pings metal-apiserver at start and every `PING_INTERVAL` (2 s timeout each), until `shutdown`.
    async fn ping_loop(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let started_at = SystemTime::now();
        let identifier = rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned();
        loop {
            match MetalApi::new(&self.config.sync, self.upstream.clone()) {
                Ok(api) => {
                    let ping = api.ping(&identifier, started_at, PING_INTERVAL);
                    match tokio::time::timeout(PING_TIMEOUT, ping).await {
                        Ok(Ok(())) => tracing::debug!("pinged metal-apiserver"),
                        Ok(Err(e)) => tracing::warn!(error = %e, "metal-apiserver ping failed"),
                        Err(_) => tracing::warn!("metal-apiserver ping timed out"),
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot ping metal-apiserver"),
            }
            tokio::select! {
                _ = tokio::time::sleep(PING_INTERVAL) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Runs at start-up, then on `sync.schedule` (UTC), until `shutdown`. With v2 it also pings
    /// metal-apiserver every 5 minutes.
    pub async fn run_scheduled(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        if self.config.sync.api == crate::config::MetalApiVersion::V2 {
            tokio::spawn(Arc::clone(&self).ping_loop(shutdown.clone()));
        }
        let dry_run = self.config.sync.dry_run;
        let first = Arc::clone(&self);
        if let Err(e) = first.run(dry_run, &Quiet).await {
            tracing::error!(error = %e, "sync failed; nothing was changed");
        }
        let spec = format!("0 {}", self.config.sync.schedule);
        let scheduler = match tokio_cron_scheduler::JobScheduler::new().await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the sync scheduler");
                return;
            }
        };
        let me = Arc::clone(&self);
        let job = tokio_cron_scheduler::Job::new_async(spec.as_str(), move |_, _| {
            let me = Arc::clone(&me);
            Box::pin(async move {
                match me.run(dry_run, &Quiet).await {
                    Ok(_) => {}
                    Err(SyncError::AlreadyRunning) => {
                        tracing::info!("previous sync still running; skipping this tick");
                    }
                    Err(e) => tracing::error!(error = %e, "sync failed; nothing was changed"),
                }
            })
        });
        let added = match job {
            Ok(job) => scheduler.add(job).await.map(|_| ()),
            Err(e) => Err(e),
        };
        if let Err(e) = added.and(scheduler.start().await) {
            tracing::error!(error = %e, schedule = %self.config.sync.schedule, "cannot schedule the sync");
            return;
        }
        shutdown.cancelled().await;
        let mut scheduler = scheduler;
        let _ = scheduler.shutdown().await;
    }
}

impl Status {
    /// The status page's view: when, what, and how each planned item ended.
    pub fn summary(&self) -> (String, Vec<Vec<String>>) {
        let mut line = match &self.last {
            None => "no sync has run yet".to_string(),
            Some(r) => format!(
                "last run finished {} (unix time){}: {} planned, {} bytes to download, {} failed, {} unpinned",
                r.finished_at,
                if r.dry_run { ", dry run" } else { "" },
                r.plan.items.len(),
                r.plan.download_bytes(),
                r.failed(),
                r.unpinned
            ),
        };
        if self.running {
            line.push_str("; a run is in progress");
        }
        if let Some(e) = &self.last_error {
            line.push_str(&format!("; the latest attempt failed: {e}"));
        }
        let rows = self
            .last
            .iter()
            .flat_map(|r| {
                r.plan.items.iter().map(|i| {
                    let outcome = r
                        .outcomes
                        .iter()
                        .find(|o| o.url == i.url)
                        .map_or_else(String::new, |o| o.message.clone());
                    vec![
                        i.name.clone(),
                        match i.kind {
                            Kind::Image => "image",
                            Kind::Kernel => "kernel",
                            Kind::BootImage => "boot-image",
                        }
                        .to_string(),
                        i.size.to_string(),
                        format!("{:?}", i.action).to_lowercase(),
                        outcome,
                    ]
                })
            })
            .collect();
        (line, rows)
    }
}

/// `file:<host><path>` for an absolute http(s) URL.
pub fn key_for(url: &str) -> Option<Key> {
    let u = url::Url::parse(url).ok()?;
    let host = u.host_str()?.to_ascii_lowercase();
    let path = FilePath::from_request(u.path()).ok()?;
    Key::file(&host, &path).ok()
}

/// The first whitespace-separated token of a `.md5` file, if it is 32 hex digits (lowercased).
pub fn parse_md5(text: &str) -> Option<String> {
    let token = text.split_whitespace().next()?;
    (token.len() == 32 && token.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| token.to_ascii_lowercase())
}

fn md5_bytes(hex_md5: &str) -> Option<[u8; 16]> {
    let v = hex::decode(hex_md5).ok()?;
    v.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecars_and_keys() {
        assert_eq!(
            parse_md5("D41D8CD98F00B204E9800998ECF8427E  img.tar.lz4\n").as_deref(),
            Some("d41d8cd98f00b204e9800998ecf8427e")
        );
        assert_eq!(parse_md5("not-an-md5 file"), None);
        assert_eq!(parse_md5(""), None);
        assert_eq!(
            key_for("https://Images.Metal-Stack.io/metal-os/stable/debian/13/img.tar.lz4")
                .unwrap()
                .as_str(),
            "file:images.metal-stack.io/metal-os/stable/debian/13/img.tar.lz4"
        );
        assert!(key_for("https://images.test/a/../b").is_some_and(|k| !k.as_str().contains("..")));
        assert!(key_for("not a url").is_none());
        assert_eq!(
            md5_bytes("d41d8cd98f00b204e9800998ecf8427e").map(|b| b[0]),
            Some(0xd4)
        );
    }
}

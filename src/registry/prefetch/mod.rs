//! Container image prefetch: before a scale-out or a planned internet outage, the images of
//! `registry.prefetch` (or the ones an operator names) are pulled into the store — index, the wanted
//! platforms' manifests, configs and layers — and pinned while they are listed.
//!
//! A prefetch pulls through this node's own `/v2/` front, like any runtime would: the same store keys,
//! the same verification, the same fills through the key's owner in a partition; so what a prefetch
//! stored is a hit for containerd, podman and Docker alike, and nothing here knows the registry protocol
//! beyond reading manifests (`manifest.rs`) and image references (`reference.rs`).

pub mod manifest;
pub mod reference;

use super::path::{self, OciDigest, Reference};
use crate::config::Config;
use crate::lifecycle::{Busy, RunStatus, RunTicket, Runs, Worker, Workers};
use crate::store::{Key, Store};
use crate::upstream::registry_health::RegistryHealth;
use crate::upstream::{self, Request, Upstream};
use futures_util::StreamExt;
use manifest::Document;
use reference::ImageRef;
use sha2::Digest;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// containerd refuses larger manifests; so does a prefetch.
const MANIFEST_MAX: usize = 4 * 1024 * 1024;
/// How long a fully read object may take to show up in the index (its commit follows its last byte).
const COMMIT_WAIT: Duration = Duration::from_secs(10);

/// One image of a run.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ImageOutcome {
    pub image: String,
    pub ok: bool,
    /// Not attempted: its registry's budget is down to `registry.ratelimit_reserve` (the reason is in
    /// `message`); the next run tries again. Not a failure.
    #[serde(default)]
    pub deferred: bool,
    pub message: String,
    pub manifests: usize,
    pub blobs: usize,
    pub bytes: u64,
}

/// A run's report.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Report {
    pub run: u64,
    pub started_at: u64,
    pub finished_at: u64,
    /// The configured list (pins follow it), or images an operator named (pinned until an operator
    /// unpins them; nothing unpinned).
    pub configured: bool,
    pub images: Vec<ImageOutcome>,
    /// Keys no longer listed, unpinned after a run of the configured list in which every image succeeded.
    pub unpinned: usize,
}

impl Report {
    pub fn failed(&self) -> usize {
        self.images.iter().filter(|i| !i.ok && !i.deferred).count()
    }

    pub fn deferred(&self) -> usize {
        self.images.iter().filter(|i| i.deferred).count()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PrefetchError {
    #[error("a prefetch is already running")]
    AlreadyRunning,
    #[error("{0}")]
    BadImage(String),
    #[error("the registry mirror is disabled (registry.enabled = false)")]
    Disabled,
}

pub struct Prefetcher {
    config: Arc<Config>,
    store: Store,
    upstream: Upstream,
    workers: Workers,
    /// This node's own HTTP front, where the images are pulled from.
    front: SocketAddr,
    runs: Arc<Runs<Report>>,
    /// Registries' budgets: a prefetch waits while one is below `registry.ratelimit_reserve`.
    health: Arc<RegistryHealth>,
}

impl Prefetcher {
    pub fn new(
        config: Arc<Config>,
        store: Store,
        upstream: Upstream,
        workers: Workers,
        front: SocketAddr,
        health: Arc<RegistryHealth>,
    ) -> Arc<Self> {
        Arc::new(Prefetcher {
            config,
            store,
            upstream,
            workers,
            front,
            runs: Arc::default(),
            health,
        })
    }

    pub fn status(&self) -> RunStatus<Report> {
        self.runs.status()
    }

    /// The images of a run: the ones named, else the configured list.
    fn images(&self, named: &[String]) -> Result<(Vec<ImageRef>, bool), PrefetchError> {
        if !self.config.registry.enabled {
            return Err(PrefetchError::Disabled);
        }
        let configured = named.is_empty();
        let list = if configured {
            &self.config.registry.prefetch
        } else {
            named
        };
        let refs = resolve(list, &self.config.registry.upstreams)
            .map_err(|(_, why)| PrefetchError::BadImage(why))?;
        Ok((refs, configured))
    }

    /// One run, waited for.
    pub async fn run(&self, named: &[String]) -> Result<Report, PrefetchError> {
        let (images, configured) = self.images(named)?;
        let ticket = self
            .runs
            .begin()
            .map_err(|Busy| PrefetchError::AlreadyRunning)?;
        Ok(self.run_ticket(ticket, images, configured).await)
    }

    /// Starts a run as a task and returns its number at once.
    pub fn start(self: &Arc<Self>, named: &[String]) -> Result<u64, PrefetchError> {
        let (images, configured) = self.images(named)?;
        let ticket = self
            .runs
            .begin()
            .map_err(|Busy| PrefetchError::AlreadyRunning)?;
        let run = ticket.run();
        let me = Arc::clone(self);
        self.workers
            .spawn_task(format!("prefetch run {run}"), async move {
                me.run_ticket(ticket, images, configured).await;
            });
        Ok(run)
    }

    async fn run_ticket(
        &self,
        ticket: RunTicket<Report>,
        images: Vec<ImageRef>,
        configured: bool,
    ) -> Report {
        let stop = self.workers.shutdown_token();
        let mut report = Report {
            run: ticket.run(),
            started_at: self.store.clock().now_secs(),
            finished_at: 0,
            configured,
            images: Vec::new(),
            unpinned: 0,
        };
        let mut keep = HashSet::new();
        let mut done = 0;
        for image in &images {
            if let Err(deferral) = self.health.spare(&image.registry) {
                // Nothing of it is asked for: the rest of the budget is for machines pulling now.
                tracing::warn!(image = %image, %deferral, "prefetch deferred");
                report.images.push(ImageOutcome {
                    image: image.to_string(),
                    ok: false,
                    deferred: true,
                    message: format!("deferred: {deferral}; the next run tries again"),
                    manifests: 0,
                    blobs: 0,
                    bytes: 0,
                });
                continue;
            }
            let mut pull = Pull {
                me: self,
                image,
                keys: Vec::new(),
                outcome: ImageOutcome {
                    image: image.to_string(),
                    ok: false,
                    deferred: false,
                    message: String::new(),
                    manifests: 0,
                    blobs: 0,
                    bytes: 0,
                },
                ticket: &ticket,
                done: &mut done,
                by_operator: !configured,
            };
            let result = tokio::select! {
                r = pull.image() => r,
                () = stop.cancelled() => Err("the service is stopping".to_string()),
            };
            let mut outcome = pull.outcome;
            match result {
                Ok(()) => {
                    outcome.ok = true;
                    outcome.message = format!(
                        "{} manifests, {} blobs ({} bytes) stored and pinned",
                        outcome.manifests, outcome.blobs, outcome.bytes
                    );
                }
                Err(e) => {
                    tracing::warn!(image = %image, error = %e, "prefetch failed");
                    outcome.message = e;
                }
            }
            keep.extend(pull.keys);
            report.images.push(outcome);
            if stop.is_cancelled() {
                break;
            }
        }
        if configured && report.failed() == 0 && report.deferred() == 0 && !stop.is_cancelled() {
            match self.unpin_unlisted(&keep) {
                Ok(n) => report.unpinned = n,
                Err(e) => {
                    tracing::error!(error = %e, "prefetch: cannot unpin what is no longer listed")
                }
            }
        }
        report.finished_at = self.store.clock().now_secs();
        tracing::info!(
            run = report.run,
            images = report.images.len(),
            failed = report.failed(),
            deferred = report.deferred(),
            unpinned = report.unpinned,
            "prefetch finished"
        );
        ticket.finish(Ok(report.clone()));
        report
    }

    /// Unpins every container object the prefetch pinned that this run did not list (an operator's pins
    /// stay): pinned while listed.
    fn unpin_unlisted(&self, keep: &HashSet<String>) -> Result<usize, crate::store::StoreError> {
        let mut unpinned = 0;
        let mut cursor: Option<String> = None;
        loop {
            let page = self.store.list("oci:", cursor.as_deref(), 1000)?;
            let Some((last, _)) = page.last() else {
                break;
            };
            cursor = Some(last.clone());
            for (key, row) in &page {
                if row.pinned
                    && !row.operator_pin
                    && !keep.contains(key)
                    && let Ok(k) = Key::parse(key)
                {
                    self.store.set_pinned(&k, false)?;
                    unpinned += 1;
                }
            }
        }
        Ok(unpinned)
    }

    /// The scheduler worker: a first run at start-up, then one on every tick of
    /// `registry.prefetch_schedule` (UTC), while `registry.prefetch` lists anything.
    pub async fn run_scheduled(self: Arc<Self>, worker: Worker) {
        let tick = |me: &Arc<Self>| match me.start(&[]) {
            Ok(run) => tracing::info!(run, "scheduled prefetch started"),
            Err(PrefetchError::AlreadyRunning) => {
                tracing::info!("previous prefetch still running; skipping this tick");
            }
            Err(e) => tracing::error!(error = %e, "prefetch not started"),
        };
        tick(&self);
        let schedule = self.config.registry.prefetch_schedule.clone();
        crate::lifecycle::schedule::on_schedule(worker, "prefetch", &schedule, &self, tick).await;
    }
}

/// Image references, each of a registry the mirror may dial; `Err` names the first bad one's index.
fn resolve(
    list: &[String],
    upstreams: &std::collections::BTreeMap<String, String>,
) -> Result<Vec<ImageRef>, (usize, String)> {
    list.iter()
        .enumerate()
        .map(|(i, text)| {
            let r = reference::parse(text).map_err(|e| (i, format!("{text}: {e}")))?;
            if !upstreams.contains_key(&r.registry) {
                return Err((
                    i,
                    format!(
                        "{text}: registry {} is not in registry.upstreams",
                        r.registry
                    ),
                ));
            }
            Ok(r)
        })
        .collect()
}

/// `registry.prefetch` as the service will read it; an error names the entry.
pub fn check(config: &Config) -> Result<(), crate::config::ConfigError> {
    resolve(&config.registry.prefetch, &config.registry.upstreams)
        .map(|_| ())
        .map_err(|(i, why)| crate::config::ConfigError::new(format!("registry.prefetch[{i}]"), why))
}

/// One image being pulled: the keys it stored, its counts, the run's progress.
struct Pull<'a> {
    me: &'a Prefetcher,
    image: &'a ImageRef,
    keys: Vec<String>,
    outcome: ImageOutcome,
    ticket: &'a RunTicket<Report>,
    done: &'a mut u64,
    /// Images an operator named are pinned like `store pin`: until unpinned, whatever the list says.
    by_operator: bool,
}

impl Pull<'_> {
    async fn image(&mut self) -> Result<(), String> {
        let (registry, name) = (&self.image.registry, &self.image.name);
        let (top, top_key) = match &self.image.reference {
            Reference::Tag(tag) => (tag.clone(), path::tag_key(registry, name, tag)),
            Reference::Digest(d) => (
                d.as_str().to_string(),
                path::manifest_key(registry, name, d),
            ),
        };
        let body = self.manifest(&top, &top_key).await?;
        if matches!(self.image.reference, Reference::Tag(_)) {
            // The tag's manifest is stored under its digest too (what a runtime fetches next).
            let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&body)));
            if let Some(d) = OciDigest::parse(&digest) {
                self.pin_if_stored(&path::manifest_key(registry, name, &d))
                    .await;
            }
        }
        let images = match manifest::parse(&body)? {
            Document::Index(entries) => {
                let wanted: Vec<_> = entries
                    .into_iter()
                    .filter(|e| {
                        manifest::wanted(
                            e.platform.as_deref(),
                            &self.me.config.registry.prefetch_platforms,
                        )
                    })
                    .collect();
                if wanted.is_empty() {
                    return Err("no manifest of registry.prefetch_platforms in the index".into());
                }
                let mut images = Vec::new();
                for entry in wanted {
                    let key = path::manifest_key(registry, name, &entry.digest);
                    let body = self.manifest(entry.digest.as_str(), &key).await?;
                    match manifest::parse(&body)? {
                        Document::Image { config, layers } => images.push((config, layers)),
                        Document::Index(_) => return Err("an index inside an index".into()),
                    }
                }
                images
            }
            Document::Image { config, layers } => vec![(config, layers)],
        };
        let mut blobs: Vec<(OciDigest, u64)> = Vec::new();
        for (config, layers) in images {
            for d in std::iter::once(config).chain(layers) {
                if !blobs.iter().any(|(b, _)| *b == d.digest) {
                    blobs.push((d.digest, d.size));
                }
            }
        }
        let total: u64 = blobs.iter().map(|(_, size)| size).sum();
        self.ticket.progress(*self.done, *self.done + total);
        for (digest, _) in &blobs {
            self.blob(digest).await?;
        }
        Ok(())
    }

    fn url(&self, endpoint: &str, reference: &str) -> Result<url::Url, String> {
        let mut url = url::Url::parse(&format!(
            "http://{}/v2/{}/{endpoint}/{reference}",
            self.me.front, self.image.name
        ))
        .map_err(|e| format!("cannot address this node's front: {e}"))?;
        url.query_pairs_mut()
            .append_pair("ns", &self.image.registry);
        Ok(url)
    }

    async fn get(&self, endpoint: &str, reference: &str) -> Result<upstream::Response, String> {
        let url = self.url(endpoint, reference)?;
        // Every manifest type, as the front itself asks the registry: the tag's index is what is stored.
        let accept = super::accept::MANIFEST_TYPES.join(", ");
        let request = Request::get(url, "prefetch").header("accept", accept);
        let resp = self
            .me
            .upstream
            .send(request)
            .await
            .map_err(|e| format!("{endpoint}/{reference}: {e}"))?;
        if resp.status != 200 {
            let body = upstream::read_body(resp.body, 4096)
                .await
                .unwrap_or_default();
            return Err(format!(
                "{endpoint}/{reference}: answered {}: {}",
                resp.status,
                String::from_utf8_lossy(&body).trim()
            ));
        }
        Ok(resp)
    }

    async fn manifest(&mut self, reference: &str, key: &str) -> Result<Vec<u8>, String> {
        let resp = self.get("manifests", reference).await?;
        let body = upstream::read_body(resp.body, MANIFEST_MAX)
            .await
            .map_err(|e| format!("manifests/{reference}: {e}"))?;
        self.pin(key).await?;
        self.outcome.manifests += 1;
        Ok(body)
    }

    async fn blob(&mut self, digest: &OciDigest) -> Result<(), String> {
        let resp = self.get("blobs", digest.as_str()).await?;
        let mut body = resp.body;
        let total = self.ticket_total();
        while let Some(chunk) = body.next().await {
            let n = chunk
                .map_err(|e| format!("blobs/{}: {e}", digest.as_str()))?
                .len() as u64;
            *self.done += n;
            self.outcome.bytes += n;
            self.ticket.progress(*self.done, total.max(*self.done));
        }
        let key = path::blob_key(&self.image.registry, &self.image.name, digest);
        self.pin(&key).await?;
        self.outcome.blobs += 1;
        Ok(())
    }

    fn ticket_total(&self) -> u64 {
        self.me.runs.status().total
    }

    /// Pins a key that is stored, or soon is; a key the front did not store is not an error.
    async fn pin_if_stored(&mut self, key: &str) {
        if let Ok(k) = Key::parse(key) {
            for _ in 0..50 {
                if let Ok(true) = self.set_pin(&k) {
                    self.keys.push(key.to_string());
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    fn set_pin(&self, key: &Key) -> Result<bool, crate::store::StoreError> {
        if self.by_operator {
            self.me.store.pin_by_operator(key, true)
        } else {
            self.me.store.set_pinned(key, true)
        }
    }

    /// Pins a key once its fill committed (the commit follows the last byte served).
    async fn pin(&mut self, key: &str) -> Result<(), String> {
        let key = Key::parse(key).map_err(|e| e.to_string())?;
        let deadline = tokio::time::Instant::now() + COMMIT_WAIT;
        loop {
            if self.set_pin(&key).map_err(|e| e.to_string())? {
                self.keys.push(key.as_str().to_string());
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "{key} was served but is not stored (too large for cache.max_size, or a sha512 object)"
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

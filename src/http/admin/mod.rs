//! Routes for operators on non-intercepted hosts (or only on `http.admin_listen`): `/health`
//! (metal-compatible), `/ready`, `/metrics`, the status page at `/` with its live fragment and assets,
//! and the JSON admin API under `/admin/` (bearer token when `http.admin_token_file` is set).
//!
//! The page and `/metrics` only read; everything that changes state is under `/admin/`.

pub mod access;
mod api;
pub mod auth;
pub mod fmt;
pub mod page;
pub mod query;
pub mod view;

use super::HttpState;
use crate::lifecycle::{RunStatus, Workers};
use crate::store::summary::Summary;
use crate::store::{Store, VerifyJob};
use crate::upstream::registry_health::RegistryHealth;
use actix_web::http::{Method, StatusCode, header};
use actix_web::{HttpRequest, HttpResponse};
use auth::AdminToken;
use std::sync::Arc;
use std::time::{Duration, Instant};
use view::{PrefetchRunView, SyncRunView};

/// The object lists scan the whole index; a page refreshed every 2 s by many viewers reuses one scan.
const SUMMARY_MAX_AGE: Duration = Duration::from_secs(10);
const SUMMARY_ENTRIES: usize = 10;

const SCRIPT: &str = include_str!("assets/status.js");
const STYLE: &str = include_str!("assets/style.css");

/// What the admin API needs from the sync job, which the HTTP front may not import (ARCHITECTURE.md, "Layers"): `app`
/// implements it over the real `Syncer` and translates its reports into the view the API publishes.
#[async_trait::async_trait]
pub trait SyncControl: Send + Sync {
    /// `GET /admin/sync`, and the page's sync block.
    fn status(&self) -> RunStatus<SyncRunView>;
    /// Starts a run in the background; its number, or `Busy`.
    fn start(&self, dry_run: bool) -> Result<u64, SyncRunError>;
    /// Runs and waits for the report.
    async fn run(&self, dry_run: bool) -> Result<SyncRunView, SyncRunError>;
}

#[derive(Debug, thiserror::Error)]
pub enum SyncRunError {
    #[error("a sync is already running")]
    Busy,
    #[error("{0}")]
    Failed(String),
}

/// What the admin API needs from the container image prefetch (a job of the registry front, which this
/// front may not import); `app` implements it.
#[async_trait::async_trait]
pub trait PrefetchControl: Send + Sync {
    /// `GET /admin/registry/prefetch`, and the page's prefetch block.
    fn status(&self) -> RunStatus<PrefetchRunView>;
    /// Starts a run of `images` (the configured list when empty); its number.
    fn start(&self, images: &[String]) -> Result<u64, PrefetchRunError>;
    /// Runs and waits for the report.
    async fn run(&self, images: &[String]) -> Result<PrefetchRunView, PrefetchRunError>;
}

#[derive(Debug, thiserror::Error)]
pub enum PrefetchRunError {
    #[error("a prefetch is already running")]
    Busy,
    /// An image reference or a registry the request named is refused.
    #[error("{0}")]
    Refused(String),
}

/// The admin routes' own state.
pub struct Admin {
    pub token: AdminToken,
    /// The names the admin surface answers for (`access.rs`).
    pub names: access::NodeNames,
    pub sync: Arc<dyn SyncControl>,
    pub prefetch: Arc<dyn PrefetchControl>,
    pub verify: VerifyJob,
    /// Listed on the status page and in `GET /admin/status`.
    pub workers: Workers,
    /// Each registry's budget and rejected accounts, for the status page and `GET /admin/status`.
    pub registries: Arc<RegistryHealth>,
    summary: tokio::sync::Mutex<Option<(Instant, Summary)>>,
}

impl Admin {
    pub fn new(
        token: AdminToken,
        names: access::NodeNames,
        sync: Arc<dyn SyncControl>,
        prefetch: Arc<dyn PrefetchControl>,
        verify: VerifyJob,
        workers: Workers,
        registries: Arc<RegistryHealth>,
    ) -> Self {
        Admin {
            token,
            names,
            sync,
            prefetch,
            verify,
            workers,
            registries,
            summary: tokio::sync::Mutex::new(None),
        }
    }

    /// The object lists, at most `SUMMARY_MAX_AGE` old. Concurrent callers wait for one scan.
    async fn summary(&self, store: &Store) -> Summary {
        let mut cached = self.summary.lock().await;
        if let Some((at, s)) = &*cached
            && at.elapsed() < SUMMARY_MAX_AGE
        {
            return s.clone();
        }
        let s = store.clone();
        match tokio::task::spawn_blocking(move || s.summary(SUMMARY_ENTRIES)).await {
            Ok(Ok(summary)) => {
                *cached = Some((Instant::now(), summary.clone()));
                summary
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "status page: cannot read the index");
                cached.as_ref().map(|(_, s)| s.clone()).unwrap_or_default()
            }
            Err(e) => {
                tracing::error!(error = %e, "status page: index scan failed");
                Summary::default()
            }
        }
    }

    /// After an admin action changed the store: the next page shows its effect, not a cached scan.
    async fn forget_summary(&self) {
        self.summary.lock().await.take();
    }
}

pub async fn handle(req: &HttpRequest, state: &HttpState) -> HttpResponse {
    let path = req.path();
    let api = path == "/admin" || path.starts_with("/admin/");
    if let Some(refusal) = refusal(req, state, api) {
        return refused(refusal);
    }
    if api {
        return api::handle(req, state).await;
    }
    let read_only = matches!(*req.method(), Method::GET | Method::HEAD);
    let known = matches!(
        path,
        "/health"
            | "/ready"
            | "/metrics"
            | "/"
            | "/status/live"
            | "/status/script.js"
            | "/status/style.css"
    );
    if known && !read_only {
        return HttpResponse::MethodNotAllowed()
            .insert_header((header::ALLOW, "GET, HEAD"))
            .body("method not allowed\n");
    }
    match path {
        "/health" => health(state),
        "/ready" => ready(state),
        "/metrics" => metrics(state),
        "/" => html(page::full(&view::gather(state).await)),
        "/status/live" => html(page::live(&view::gather(state).await)),
        "/status/script.js" => asset("text/javascript; charset=utf-8", SCRIPT),
        "/status/style.css" => asset("text/css; charset=utf-8", STYLE),
        _ => HttpResponse::NotFound().body("not found\n"),
    }
}

/// The access rules of `access.rs` applied to this request.
fn refusal(req: &HttpRequest, state: &HttpState, api: bool) -> Option<access::Refusal> {
    let header = |name: header::HeaderName| req.headers().get(name).and_then(|v| v.to_str().ok());
    let token = state.admin.token.is_set().then(|| {
        state.admin.token.allows(
            req.headers()
                .get(header::AUTHORIZATION)
                .map(|v| v.as_bytes()),
        )
    });
    let facts = access::Facts {
        // A Host that is not text names nothing.
        host: req
            .headers()
            .get(header::HOST)
            .map(|v| v.to_str().unwrap_or("\u{0}")),
        origin: header(header::ORIGIN),
        fetch_site: header(header::HeaderName::from_static("sec-fetch-site")),
        peer: req.peer_addr().map(|a| a.ip()),
        local: req.app_config().local_addr().ip(),
        probe: matches!(req.path(), "/health" | "/ready"),
        api,
        changes_state: !matches!(*req.method(), Method::GET | Method::HEAD),
        token,
    };
    let verdict = access::check(&facts, &state.admin.names);
    if let Some(r) = verdict {
        tracing::info!(
            refusal = ?r,
            path = req.path(),
            peer = ?facts.peer,
            host = ?facts.host,
            origin = ?facts.origin,
            "admin request refused"
        );
    }
    verdict
}

fn refused(r: access::Refusal) -> HttpResponse {
    let mut b = match r {
        access::Refusal::Token => {
            let mut b = HttpResponse::Unauthorized();
            b.insert_header((
                header::WWW_AUTHENTICATE,
                "Bearer realm=\"image-cache admin\"",
            ));
            b
        }
        access::Refusal::ForeignHost => HttpResponse::MisdirectedRequest(),
        access::Refusal::CrossSite | access::Refusal::LoopbackOnly => HttpResponse::Forbidden(),
    };
    b.insert_header((header::CACHE_CONTROL, "no-store"))
        .json(serde_json::json!({ "error": r.message() }))
}

/// This node's own health: store open and readable, front answering (it is, since this runs), and making
/// progress (the self-check's probe, which needs a blocking thread, completes).
fn health(state: &HttpState) -> HttpResponse {
    if let Some(since) = state.lifecycle.progress().stalled() {
        return HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body(format!(
                "UNHEALTHY: no progress for {}s (blocking work does not run: the pool is exhausted or \
                 the disk hangs)",
                since.as_secs()
            ));
    }
    match state.store.get(&state.health_probe_key) {
        Ok(_) => HttpResponse::Ok()
            .content_type("text/plain")
            .body("HEALTHY"),
        Err(e) => {
            tracing::error!(error = %e, "health check: store unreadable");
            HttpResponse::ServiceUnavailable()
                .content_type("text/plain")
                .body("UNHEALTHY: store unreadable")
        }
    }
}

fn ready(state: &HttpState) -> HttpResponse {
    if let Some(since) = state.lifecycle.progress().stalled() {
        return HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body(format!("NOT READY: no progress for {}s", since.as_secs()));
    }
    if state.lifecycle.is_ready() {
        HttpResponse::Ok().content_type("text/plain").body("READY")
    } else {
        HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body("NOT READY")
    }
}

fn metrics(state: &HttpState) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ))
        .body(state.metrics.encode())
}

/// The page's headers: nothing loads from anywhere but this server (air-gapped partitions have no CDN,
/// and a hostile key in a table can run nothing even if escaping failed), never framed, never cached.
fn html(body: String) -> HttpResponse {
    HttpResponse::build(StatusCode::OK)
        .content_type("text/html; charset=utf-8")
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(body)
}

fn asset(content_type: &'static str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::CACHE_CONTROL, "max-age=300"))
        .body(body)
}

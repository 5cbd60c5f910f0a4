//! Composition root: builds every component from the validated config, mounts the HTTP front on one actix
//! server, starts the workers, and tears everything down in order.

use crate::config::{Config, ConfigError};
use crate::dns::{Dns, DnsError};
use crate::http::{self, HttpState};
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use crate::passthrough::{self, Passthrough};
use crate::peers::Peers;
use crate::registry::RegistryState;
use crate::store::Store;
use crate::sync::{self, Syncer};
use crate::systemd;
use crate::upstream::{NameResolver, Upstream, oci_auth::OciAuth, tls::TlsSetupError};
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

/// How long shutdown waits for requests and fills in flight before discarding them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("cannot open the store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("cannot listen on {addr}: {source}{hint}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
        hint: &'static str,
    },
    #[error("{0}")]
    Dns(#[from] DnsError),
    #[error("{0}")]
    Passthrough(#[from] passthrough::BindError),
    #[error("HTTP server failed: {0}")]
    Server(std::io::Error),
    #[error("{0}")]
    Other(String),
}

impl AppError {
    /// 2 for anything the operator fixes in the config, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            AppError::Config(_) => 2,
            _ => 1,
        }
    }
}

impl From<TlsSetupError> for AppError {
    fn from(e: TlsSetupError) -> Self {
        AppError::Config(ConfigError::new("upstream.ca_file", e.to_string()))
    }
}

/// A started service. Tests drive it in-process; `serve` waits for a signal, then calls `shutdown`.
pub struct Running {
    pub http_addrs: Vec<SocketAddr>,
    pub admin_addrs: Vec<SocketAddr>,
    /// DNS listeners actually bound (UDP and TCP share each address), empty when DNS is off.
    pub dns_addrs: Vec<SocketAddr>,
    /// TLS passthrough listeners, empty when passthrough is off.
    pub passthrough_addrs: Vec<SocketAddr>,
    pub lifecycle: Lifecycle,
    pub store: Store,
    pub peers: Peers,
    dns: Option<Dns>,
    passthrough: Option<Passthrough>,
    server: actix_web::dev::ServerHandle,
    server_task: tokio::task::JoinHandle<std::io::Result<()>>,
    maintenance: tokio::task::JoinHandle<()>,
}

/// Per-server routing facts, computed once.
struct Routing {
    state: Arc<HttpState>,
    registry: Arc<RegistryState>,
    admin_addrs: Vec<SocketAddr>,
}

fn bind(addr: SocketAddr) -> Result<TcpListener, AppError> {
    crate::listen::tcp(addr).map_err(|source| AppError::Bind {
        addr,
        hint: crate::listen::hint(
            &source,
            " (ports below 1024 need root or CAP_NET_BIND_SERVICE; or choose a port above 1024)",
        ),
        source,
    })
}

pub async fn start(config: Config) -> Result<Running, AppError> {
    let config = Arc::new(config);
    let metrics = Metrics::new();
    let lifecycle = Lifecycle::new();

    let state_dir = config.state_dir.clone();
    let max_size = config.cache.max_size.bytes();
    let store_metrics = metrics.clone();
    let runtime = tokio::runtime::Handle::current();
    let (store, report) = tokio::task::spawn_blocking(move || {
        Store::open(&state_dir, max_size, store_metrics, runtime)
    })
    .await
    .map_err(|e| AppError::Other(format!("store open task failed: {e}")))??;
    tracing::info!(
        state_dir = %config.state_dir.display(),
        objects = store.object_count(),
        bytes = store.total_bytes(),
        tmp_removed = report.tmp_removed,
        rows_dropped = report.rows_dropped.len(),
        orphans_removed = report.orphan_blobs_removed,
        "store open"
    );

    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let resolver = NameResolver::new(&config.dns)
        .map_err(|e| ConfigError::new("dns.upstreams", format!("cannot build a resolver: {e}")))?;
    let upstream = Upstream::start(
        &config.upstream,
        resolver.clone(),
        metrics.clone(),
        cpus.min(4),
    )?;
    let peers = Peers::new(&config.nodes);
    let syncer = Syncer::new(
        Arc::clone(&config),
        store.clone(),
        upstream.clone(),
        metrics.clone(),
    );
    let token = match &config.http.admin_token_file {
        Some(path) => http::admin::auth::AdminToken::from_file(path)
            .map_err(|m| ConfigError::new("http.admin_token_file", m))?,
        None => http::admin::auth::AdminToken::none(),
    };
    let admin = http::admin::Admin::new(token, Arc::new(SyncAdmin(Arc::clone(&syncer))));
    let state = Arc::new(HttpState::new(
        Arc::clone(&config),
        store.clone(),
        upstream.clone(),
        metrics.clone(),
        lifecycle.clone(),
        peers.clone(),
        admin,
    ));

    let mut listeners = Vec::new();
    for addr in &config.http.listen {
        listeners.push(bind(*addr)?);
    }
    let mut admin_listeners = Vec::new();
    for addr in &config.http.admin_listen {
        admin_listeners.push(bind(*addr)?);
    }
    let local = |l: &TcpListener| l.local_addr().map_err(AppError::Server);
    let http_addrs = listeners.iter().map(local).collect::<Result<Vec<_>, _>>()?;
    let admin_addrs = admin_listeners
        .iter()
        .map(local)
        .collect::<Result<Vec<_>, _>>()?;

    let credentials = match &config.registry.credentials_file {
        Some(path) => crate::config::credentials::load(path, &config.registry.upstreams)
            .map_err(|m| ConfigError::new("registry.credentials_file", m))?,
        None => Default::default(),
    };
    let registry = Arc::new(RegistryState::new(
        config.registry.clone(),
        store.clone(),
        OciAuth::new(upstream.clone(), credentials, metrics.clone()),
        metrics.clone(),
    ));
    tokio::spawn(http::admin::sample_hit_ratio(
        Arc::clone(&state),
        lifecycle.shutdown_token(),
    ));
    let routing = web::Data::new(Routing {
        state,
        registry,
        admin_addrs: admin_addrs.clone(),
    });
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(routing.clone())
            .default_service(web::to(dispatch))
    })
    .workers(cpus.clamp(1, 8))
    .backlog(1024)
    .shutdown_timeout(SHUTDOWN_GRACE.as_secs())
    .disable_signals();
    for l in listeners.into_iter().chain(admin_listeners) {
        server = server.listen(l).map_err(AppError::Server)?;
    }
    let server = server.run();
    let handle = server.handle();
    let server_task = tokio::spawn(server);
    let maintenance = tokio::spawn(store.clone().run_maintenance(lifecycle.shutdown_token()));
    let dns = if config.dns.enabled {
        Some(
            Dns::start(
                &config,
                peers.clone(),
                resolver.clone(),
                metrics.clone(),
                cpus.clamp(1, 8),
            )
            .await?,
        )
    } else {
        None
    };
    let dns_addrs = dns
        .as_ref()
        .map(|d| d.udp_addrs.clone())
        .unwrap_or_default();
    let passthrough = if config.passthrough.enabled {
        Some(Passthrough::start(&config, resolver.clone()).await?)
    } else {
        None
    };
    let passthrough_addrs = passthrough
        .as_ref()
        .map(|p| p.addrs.clone())
        .unwrap_or_default();
    let interval = config.nodes.health_interval.get();
    tokio::spawn(peers.clone().run(
        upstream.clone(),
        interval,
        metrics.clone(),
        lifecycle.shutdown_token(),
    ));

    for a in &http_addrs {
        tracing::info!("listening http on {a}");
    }
    for a in &admin_addrs {
        tracing::info!("listening admin on {a}");
    }
    if config.http.admin_token_file.is_none() {
        let admin_on = if admin_addrs.is_empty() {
            &http_addrs
        } else {
            &admin_addrs
        };
        if let Some(open) = admin_on.iter().find(|a| !a.ip().is_loopback()) {
            tracing::warn!(
                "the admin API (/admin/…: remove, pin, gc, sync) answers anyone who reaches {open}; \
                 set http.admin_token_file, or http.admin_listen to a management address"
            );
        }
    }
    if config.sync.enabled {
        tokio::spawn(Arc::clone(&syncer).run_scheduled(lifecycle.shutdown_token()));
    }
    lifecycle.set_ready();
    peers.set_self_healthy(true);
    tokio::spawn(self_check(
        interval,
        store.clone(),
        lifecycle.clone(),
        peers.clone(),
    ));
    systemd::ready(&format!(
        "serving {} objects, {} bytes",
        store.object_count(),
        store.total_bytes()
    ));
    if let Some(every) = systemd::watchdog_interval() {
        tokio::spawn(watchdog(every, store.clone(), lifecycle.clone()));
    }
    Ok(Running {
        http_addrs,
        admin_addrs,
        dns_addrs,
        passthrough_addrs,
        lifecycle,
        store,
        peers,
        dns,
        passthrough,
        server: handle,
        server_task,
        maintenance,
    })
}

/// This node's own health, for DNS answers: the index answers and we are not shutting down. Internal on
/// purpose: asking our own /health over the network would test the loopback, not the service.
async fn self_check(every: Duration, store: Store, lifecycle: Lifecycle, peers: Peers) {
    let probe = crate::store::Key::health_probe();
    let shutdown = lifecycle.shutdown_token();
    while !lifecycle.is_shutting_down() {
        let s = store.clone();
        let p = probe.clone();
        let healthy = tokio::task::spawn_blocking(move || s.get(&p).is_ok())
            .await
            .unwrap_or(false);
        peers.set_self_healthy(healthy && lifecycle.is_ready() && !lifecycle.is_shutting_down());
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => {}
        }
    }
    peers.set_self_healthy(false);
}

/// Pets the systemd watchdog while the store answers; stops petting if it does not, so systemd restarts us.
async fn watchdog(every: Duration, store: Store, lifecycle: Lifecycle) {
    let probe = crate::store::Key::health_probe();
    while !lifecycle.is_shutting_down() {
        let s = store.clone();
        let p = probe.clone();
        let healthy = tokio::task::spawn_blocking(move || s.get(&p).is_ok())
            .await
            .unwrap_or(false);
        if healthy {
            systemd::watchdog();
            systemd::status(&format!(
                "{} objects, {} bytes, {} fills",
                store.object_count(),
                store.total_bytes(),
                store.fills().len()
            ));
        } else {
            tracing::error!("watchdog: store does not answer");
        }
        tokio::time::sleep(every).await;
    }
}

impl Running {
    /// Ordered teardown: stop accepting, let requests and fills finish (bounded), flush hit counts.
    pub async fn shutdown(self) {
        systemd::stopping();
        self.lifecycle.request_shutdown();
        self.peers.set_self_healthy(false);
        self.server.stop(true).await;
        if let Some(dns) = self.dns {
            dns.shutdown().await;
        }
        if let Some(p) = self.passthrough {
            p.shutdown().await;
        }
        let left = self.store.drain_fills(SHUTDOWN_GRACE).await;
        if left > 0 {
            tracing::warn!(fills = left, "discarding unfinished fills");
        }
        let _ = self.maintenance.await;
        match self.server_task.await {
            Ok(Err(e)) => tracing::error!(error = %e, "HTTP server ended with an error"),
            Err(e) => tracing::error!(error = %e, "HTTP server task failed"),
            Ok(Ok(())) => {}
        }
        tracing::info!("stopped");
    }
}

/// `serve`: start, wait for SIGTERM/SIGINT, stop.
pub async fn serve(config: Config) -> Result<(), AppError> {
    let running = start(config).await?;
    running.lifecycle.wait_for_signal().await;
    running.shutdown().await;
    Ok(())
}

/// Intercepted Host → file cache; `/v2/` → registry mirror; anything else → admin routes (on `http.admin_listen` only, if set).
async fn dispatch(req: HttpRequest, routing: web::Data<Routing>) -> HttpResponse {
    let state = &routing.state;
    let local = req.app_config().local_addr();
    let on_admin_listener = routing.admin_addrs.contains(&local);
    if on_admin_listener {
        return http::admin::handle(&req, state).await;
    }
    let host = req
        .headers()
        .get(actix_web::http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().host())
        .and_then(crate::config::vhost::normalize_host);
    if let Some(host) = host
        && let Some(domain) = crate::config::vhost::find(&state.config.domains, &host)
    {
        return http::files::handle(req.clone(), Arc::clone(state), domain, host).await;
    }
    if (req.path() == "/v2" || req.path().starts_with("/v2/")) && state.config.registry.enabled {
        return crate::registry::handler::handle(&req, &routing.registry).await;
    }
    if !routing.admin_addrs.is_empty() {
        return HttpResponse::NotFound().body("not found\n");
    }
    http::admin::handle(&req, state).await
}

/// The admin API's handle on the sync job (the HTTP front may not import `sync`).
struct SyncAdmin(Arc<Syncer>);

#[async_trait::async_trait]
impl http::admin::SyncControl for SyncAdmin {
    fn status(&self) -> serde_json::Value {
        serde_json::to_value(self.0.status()).unwrap_or_default()
    }

    fn section(&self) -> http::StatusSection {
        let (summary, rows) = self.0.status().summary();
        http::StatusSection {
            title: "metal-api sync".into(),
            summary,
            header: ["name", "kind", "size", "action", "outcome"]
                .map(String::from)
                .to_vec(),
            rows,
        }
    }

    fn start(&self, dry_run: bool) -> Result<u64, http::admin::SyncRunError> {
        self.0.start(dry_run).map_err(sync_error)
    }

    async fn run(&self, dry_run: bool) -> Result<serde_json::Value, http::admin::SyncRunError> {
        let report = self
            .0
            .run(dry_run, &sync::Quiet)
            .await
            .map_err(sync_error)?;
        Ok(serde_json::to_value(report).unwrap_or_default())
    }
}

fn sync_error(e: sync::SyncError) -> http::admin::SyncRunError {
    match e {
        sync::SyncError::AlreadyRunning => http::admin::SyncRunError::Busy,
        e => http::admin::SyncRunError::Failed(e.to_string()),
    }
}

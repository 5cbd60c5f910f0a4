//! Composition root: builds every component from the validated config, mounts the HTTP front on one actix
//! server, starts the named workers, and tears everything down in order within one deadline.

mod health;
pub mod prefetch_admin;
pub mod sync_admin;

use crate::config::{Config, ConfigError};
use crate::dns::{Dns, DnsError};
use crate::http::{self, HttpState};
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use crate::passthrough::{self, Passthrough};
use crate::peers::Peers;
use crate::registry::RegistryState;
use crate::store::Store;
use crate::sync::Syncer;
use crate::systemd;
use crate::upstream::guard::AddressRule;
use crate::upstream::registry_health::RegistryHealth;
use crate::upstream::{NameResolver, Upstream, oci_auth::OciAuth, tls::TlsSetupError};
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

/// How long shutdown waits, in all, for requests, fills and background work before discarding them.
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
    /// A blocking or background task ended without an answer (it panicked or was cancelled).
    #[error("{what} failed: {reason}")]
    Task { what: &'static str, reason: String },
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
    /// Keeps the outbound client's threads alive until fills are drained: they stop when the last
    /// handle goes, and the HTTP workers' handles go with the HTTP server, first.
    upstream: Upstream,
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
    let lifecycle = Lifecycle::with_check_interval(config.nodes.health_interval.get());

    let state_dir = config.state_dir.clone();
    let max_size = config.cache.max_size.bytes();
    let store_metrics = metrics.clone();
    let runtime = tokio::runtime::Handle::current();
    let (store, report) = tokio::task::spawn_blocking(move || {
        Store::open(&state_dir, max_size, store_metrics, runtime)
    })
    .await
    .map_err(|e| AppError::Task {
        what: "opening the store",
        reason: e.to_string(),
    })??;
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
        AddressRule::of_subdomains(&config),
    )?;
    let peers = Peers::new(&config.nodes);
    let workers = lifecycle.workers().clone();
    let syncer = Syncer::new(
        Arc::clone(&config),
        store.clone(),
        upstream.clone(),
        peers.clone(),
        metrics.clone(),
        workers.clone(),
    );
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

    let registry_health = Arc::new(RegistryHealth::new(
        config.registry.upstreams.keys(),
        config.registry.ratelimit_reserve,
        store.clock().clone(),
        metrics.clone(),
    ));
    let prefetcher = crate::registry::prefetch::Prefetcher::new(
        Arc::clone(&config),
        store.clone(),
        upstream.clone(),
        workers.clone(),
        own_front(&http_addrs),
        Arc::clone(&registry_health),
    );
    let token = match &config.http.admin_token_file {
        Some(path) => http::admin::auth::AdminToken::from_file(path)
            .map_err(|m| ConfigError::new("http.admin_token_file", m))?,
        None => http::admin::auth::AdminToken::none(),
    };
    let names = http::admin::access::NodeNames::new(
        config
            .http
            .listen
            .iter()
            .chain(&config.http.admin_listen)
            .map(|a| a.ip())
            .chain(config.nodes.self_addr),
        &config.http.admin_hosts,
    );
    let admin = http::admin::Admin::new(
        token,
        names,
        Arc::new(sync_admin::SyncAdmin(Arc::clone(&syncer))),
        Arc::new(prefetch_admin::PrefetchAdmin(Arc::clone(&prefetcher))),
        crate::store::VerifyJob::new(store.clone(), workers.clone()),
        workers.clone(),
        Arc::clone(&registry_health),
    );
    let state = Arc::new(HttpState::new(
        Arc::clone(&config),
        store.clone(),
        upstream.clone(),
        metrics.clone(),
        lifecycle.clone(),
        peers.clone(),
        admin,
    ));

    let credentials = match &config.registry.credentials_file {
        Some(path) => crate::config::credentials::load(path, &config.registry.upstreams)
            .map_err(|m| ConfigError::new("registry.credentials_file", m))?,
        None => Default::default(),
    };
    let registry = Arc::new(
        RegistryState::new(
            config.registry.clone(),
            store.clone(),
            OciAuth::new(
                upstream.clone(),
                credentials,
                &config.registry.upstreams,
                &config.registry.token_realms,
                metrics.clone(),
                Arc::clone(&registry_health),
            ),
            metrics.clone(),
            peers.clone(),
            upstream.clone(),
            registry_health,
        )
        .with_fill_limits(Arc::clone(&state.fill_limits)),
    );
    let (hit_ratio, sampled) = (Arc::clone(&metrics.hit_ratio), metrics.clone());
    workers.spawn("hit-ratio sampler", move |w| async move {
        hit_ratio.sample(sampled, w).await
    });
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
    let maintained = store.clone();
    workers.spawn("store maintenance", move |w| maintained.run_maintenance(w));
    let dns = if config.dns.enabled {
        let forwarding = NameResolver::for_forwarding(&config.dns).map_err(|e| {
            ConfigError::new("dns.upstreams", format!("cannot build a resolver: {e}"))
        })?;
        Some(
            Dns::start(
                &config,
                peers.clone(),
                forwarding,
                metrics.clone(),
                store.clock(),
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
        Some(Passthrough::start(&config, resolver.clone(), metrics.clone()).await?)
    } else {
        None
    };
    let passthrough_addrs = passthrough
        .as_ref()
        .map(|p| p.addrs.clone())
        .unwrap_or_default();
    let interval = config.nodes.health_interval.get();
    if peers.is_partition() {
        let (polled, client, peer_metrics) = (peers.clone(), upstream.clone(), metrics.clone());
        let names = resolver.clone();
        workers.spawn("peer health", move |w| {
            polled.run(client, names, interval, peer_metrics, w)
        });
    }

    for a in &http_addrs {
        tracing::info!("listening http on {a}");
    }
    for a in &admin_addrs {
        tracing::info!("listening admin on {a}");
    }
    if config.http.admin_token_file.is_none() {
        tracing::warn!("{}", crate::config::ADMIN_WITHOUT_TOKEN);
    }
    if config.sync.enabled {
        let scheduled = Arc::clone(&syncer);
        workers.spawn("sync scheduler", move |w| scheduled.run_scheduled(w));
    }
    if config.registry.enabled && !config.registry.prefetch.is_empty() {
        workers.spawn("prefetch scheduler", move |w| prefetcher.run_scheduled(w));
    }
    lifecycle.set_ready();
    peers.set_self_healthy(true);
    let (checked, checker_lifecycle, checked_peers) =
        (store.clone(), lifecycle.clone(), peers.clone());
    workers.spawn("self check", move |w| {
        health::self_check(interval, checked, checker_lifecycle, checked_peers, w)
    });
    systemd::ready(&format!(
        "serving {} objects, {} bytes",
        store.object_count(),
        store.total_bytes()
    ));
    if let Some(every) = systemd::watchdog_interval() {
        let (watched, watching) = (store.clone(), lifecycle.clone());
        workers.spawn("systemd watchdog", move |w| {
            health::watchdog(every, watched, watching, w)
        });
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
        upstream,
    })
}

impl Running {
    /// Ordered teardown within `SHUTDOWN_GRACE`: stop accepting, let requests, fills and background work
    /// finish, abort what is left, flush hit counts.
    pub async fn shutdown(self) {
        self.stop(SHUTDOWN_GRACE).await;
    }

    /// Teardown without draining: connections are closed and fills aborted at once (nothing half-done
    /// is stored). For a second signal, and for tests of a node that dies.
    pub async fn shutdown_now(self) {
        self.stop(Duration::ZERO).await;
    }

    async fn stop(self, grace: Duration) {
        let until = tokio::time::Instant::now() + grace;
        let left = || until.saturating_duration_since(tokio::time::Instant::now());
        systemd::stopping();
        self.lifecycle.request_shutdown();
        self.peers.set_self_healthy(false);
        if grace.is_zero() {
            self.server.stop(false).await;
        } else if tokio::time::timeout(left(), self.server.stop(true))
            .await
            .is_err()
        {
            tracing::warn!("requests still running at the deadline; closing their connections");
            self.server.stop(false).await;
        }
        if let Some(dns) = self.dns {
            dns.shutdown().await;
        }
        if let Some(p) = self.passthrough {
            p.shutdown().await;
        }
        let unfinished = self.store.drain_fills(left()).await;
        if unfinished > 0 {
            tracing::warn!(fills = unfinished, "discarded unfinished fills");
        }
        let aborted = self.lifecycle.workers().join(left()).await;
        if !aborted.is_empty() {
            tracing::warn!(workers = ?aborted, "background work still running at the deadline; aborted");
        }
        match self.server_task.await {
            Ok(Err(e)) => tracing::error!(error = %e, "HTTP server ended with an error"),
            Err(e) => tracing::error!(error = %e, "HTTP server task failed"),
            Ok(Ok(())) => {}
        }
        drop(self.upstream);
        // The index closes with the last store handle; connection tasks drop theirs just after the
        // server stopped: a moment for them, even after a zero grace, but never the whole grace.
        let moment = left().clamp(Duration::from_millis(200), Duration::from_secs(1));
        let others = self.store.wait_last_handle(moment).await;
        if others > 0 {
            tracing::warn!(
                handles = others,
                "the store is still held at the end of shutdown"
            );
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
        let answer = http::files::handle(req.clone(), Arc::clone(state), domain, host).await;
        return crate::serve::untrusted_content(answer);
    }
    if (req.path() == "/v2" || req.path().starts_with("/v2/")) && state.config.registry.enabled {
        let answer = crate::registry::handler::handle(&req, &routing.registry).await;
        return crate::serve::untrusted_content(answer);
    }
    if !routing.admin_addrs.is_empty() {
        return HttpResponse::NotFound().body("not found\n");
    }
    http::admin::handle(&req, state).await
}

/// Where this node's own jobs reach its HTTP front (the prefetch pulls through it): a loopback listener
/// if there is one, else the first, with a wildcard address replaced by the loopback of its family.
fn own_front(http: &[SocketAddr]) -> SocketAddr {
    let pick = http
        .iter()
        .find(|a| a.ip().is_loopback())
        .or_else(|| http.first())
        .copied()
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 80)));
    match pick.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, pick.port()))
        }
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, pick.port()))
        }
        _ => pick,
    }
}

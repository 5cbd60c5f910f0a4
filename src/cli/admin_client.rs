//! The CLI's client for a running server's admin API: where the server listens (from the same config),
//! the bearer token (from the same file), and JSON in and out. Used when the server holds the store.

use super::CliError;
use crate::config::{Config, ConfigError};
use crate::http::admin::auth::AdminToken;
use crate::upstream::guard::AddressRule;
use crate::upstream::{Method, Request, Upstream};
use serde::de::DeserializeOwned;

/// Why the CLI could not get an answer from the running server.
#[derive(Debug, thiserror::Error)]
pub enum AdminClientError {
    #[error("the store is locked and no http.listen is configured")]
    NoListener,
    #[error(
        "the store is locked by a server listening on an ephemeral port (http.listen …:0); \
         use the admin API on its actual address"
    )]
    EphemeralPort,
    #[error("bad admin URL {path}: {reason}")]
    BadUrl {
        path: String,
        reason: url::ParseError,
    },
    #[error(
        "the store is locked, so a server should be running, but {base} does not answer: {reason}"
    )]
    Unreachable {
        base: String,
        reason: crate::upstream::UpstreamError,
    },
    #[error("the answer of {path} broke off: {reason}")]
    Body {
        path: String,
        reason: crate::upstream::BodyError,
    },
    #[error("the server answered {status} to {path}: {message}{}", if *.status == 401 {
        " (set http.admin_token_file in the config this command reads to the server's token file)"
    } else {
        ""
    })]
    Refused {
        status: u16,
        path: String,
        message: String,
    },
    #[error("unreadable answer from {path}: {reason}")]
    Unreadable {
        path: String,
        reason: serde_json::Error,
    },
}

/// Admin answers are small JSON documents; a store listing page is the largest.
const ANSWER_MAX: usize = 64 << 20;

pub(super) struct AdminClient {
    base: String,
    token: Option<String>,
    upstream: Upstream,
}

impl AdminClient {
    /// The first `http.admin_listen` address, else the first `http.listen` one; a wildcard becomes loopback.
    pub(super) fn new(config: &Config, upstream: Upstream) -> Result<Self, CliError> {
        let addr = config
            .http
            .admin_listen
            .first()
            .or(config.http.listen.first())
            .ok_or(AdminClientError::NoListener)?;
        if addr.port() == 0 {
            return Err(AdminClientError::EphemeralPort.into());
        }
        let host = match addr.ip() {
            ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_string(),
            ip if ip.is_unspecified() => "[::1]".to_string(),
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
            ip => ip.to_string(),
        };
        let token = match &config.http.admin_token_file {
            Some(path) => {
                // Validated the way the server validates it, so both agree on what the token is.
                AdminToken::from_file(path)
                    .map_err(|m| ConfigError::new("http.admin_token_file", m))?;
                std::fs::read_to_string(path)
                    .map(|t| Some(t.trim().to_string()))
                    .map_err(|e| {
                        ConfigError::new("http.admin_token_file", format!("cannot read it: {e}"))
                    })?
            }
            None => None,
        };
        Ok(AdminClient {
            base: format!("http://{host}:{}", addr.port()),
            token,
            upstream,
        })
    }

    pub(super) fn base(&self) -> &str {
        &self.base
    }

    /// `path` with its query, e.g. `/admin/objects?limit=10`.
    pub(super) async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
    ) -> Result<T, AdminClientError> {
        let url = url::Url::parse(&format!("{}{path}", self.base)).map_err(|reason| {
            AdminClientError::BadUrl {
                path: path.to_string(),
                reason,
            }
        })?;
        let mut request = Request::get(url, "admin");
        request.method = method;
        request.follow_redirects = false;
        if let Some(t) = &self.token {
            request
                .headers
                .push(("authorization".into(), format!("Bearer {t}")));
        }
        let resp =
            self.upstream
                .send(request)
                .await
                .map_err(|reason| AdminClientError::Unreachable {
                    base: self.base.clone(),
                    reason,
                })?;
        let status = resp.status;
        let body = crate::upstream::read_body(resp.body, ANSWER_MAX)
            .await
            .map_err(|reason| AdminClientError::Body {
                path: path.to_string(),
                reason,
            })?;
        if !(200..300).contains(&status) {
            let message = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(String::from))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            return Err(AdminClientError::Refused {
                status,
                path: path.to_string(),
                message,
            });
        }
        serde_json::from_slice(&body).map_err(|reason| AdminClientError::Unreadable {
            path: path.to_string(),
            reason,
        })
    }
}

/// The 202 answer of a background job (`POST /admin/sync`, `POST /admin/store/verify`): its run number,
/// which the job's status reports as `finished` once that run is over.
#[derive(serde::Deserialize)]
pub(super) struct Started {
    pub run: u64,
}

/// Follows run `run` of the job whose status is at `path` (`/admin/sync`, `/admin/registry/prefetch`):
/// draws the server's fills on `bars` every half second until the status says that run finished.
pub(super) async fn follow<R: DeserializeOwned>(
    client: &AdminClient,
    path: &str,
    run: u64,
    bars: &super::progress::FillBars,
) -> Result<crate::lifecycle::RunStatus<R>, AdminClientError> {
    loop {
        let status: crate::lifecycle::RunStatus<R> = client.call(Method::Get, path).await?;
        if status.finished >= run {
            bars.clear();
            return Ok(status);
        }
        let fills: Vec<crate::http::admin::view::FillView> =
            client.call(Method::Get, "/admin/fills").await?;
        let shown: Vec<super::progress::FillProgress<'_>> = fills
            .iter()
            .map(super::progress::FillProgress::from)
            .collect();
        bars.update(&shown);
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// `?a=1&b=x` from pairs, values percent-encoded.
pub(super) fn query(pairs: &[(&str, &str)]) -> String {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    let q = s.finish();
    if q.is_empty() { q } else { format!("?{q}") }
}

/// A client on its own small outbound pool (the admin API is on loopback; the resolver is never asked).
pub(super) fn connect(config: &Config) -> Result<AdminClient, CliError> {
    let resolver = crate::upstream::NameResolver::new(&config.dns).map_err(|e| {
        CliError::Config(ConfigError::new(
            "dns.upstreams",
            format!("cannot build a resolver: {e}"),
        ))
    })?;
    let upstream = Upstream::start(
        &config.upstream,
        resolver,
        crate::metrics::Metrics::new(),
        1,
        AddressRule::of_subdomains(config),
    )?;
    AdminClient::new(config, upstream)
}

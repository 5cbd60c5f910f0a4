//! Registry authentication done by the cache itself: a request goes out with the token cached for its
//! repository (if any); a `401` with a Bearer challenge fetches a token from the challenge's realm —
//! anonymously, or with the account of `registry.credentials_file` — and the request is sent once more.
//! Tokens are cached per (registry, repository) until shortly before they expire. Client credentials are
//! never used: the cache's requests are its own.
//!
//! The account's credentials stay with their registry: they go only to a realm on the registry's own host
//! (or a host of `registry.token_realms`), over HTTPS — plain HTTP only when the registry itself is
//! configured as `http://` (a trusted network) — and never in answer to a 401 that came from anywhere but
//! the registry (a CDN it redirected to): such a challenge is not answered at all.

use super::challenge::{self, Challenge};
use super::registry_health::{self, RegistryHealth};
use super::token_cache::TokenCache;
use super::{Request, Response, Upstream, UpstreamError};
use crate::config::credentials::{Credential, RegistryCredentials};
use crate::metrics::Metrics;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Set on a registry's 401 that could not be answered because its token endpoint refused: the reason.
pub const TOKEN_ERROR_HEADER: &str = "x-image-cache-token-error";
/// A token answer larger than this is refused (they are a few KiB).
const TOKEN_BODY_LIMIT: usize = 64 * 1024;
/// `expires_in` when the token endpoint does not say (token spec: 60 s).
const DEFAULT_LIFETIME: u64 = 60;
/// Tokens are dropped this long before they expire, so none expires in flight.
const MARGIN: u64 = 10;
/// Longest a token or a Basic header is reused.
const MAX_LIFETIME: u64 = 3600;

pub struct OciAuth {
    upstream: Upstream,
    credentials: RegistryCredentials,
    /// Each registry's base URL (`registry.upstreams`).
    bases: HashMap<String, url::Url>,
    /// Token realm hosts besides the registries' own that may receive an account's credentials.
    realms: Vec<String>,
    /// `(registry, repository)` → the `Authorization` value that worked, and until when.
    cache: Mutex<TokenCache>,
    metrics: Metrics,
    /// Every answer's budget headers, accepted answers and rejected accounts go here.
    health: Arc<RegistryHealth>,
}

/// What one token request asks of a realm.
struct TokenRequest<'a> {
    realm: &'a str,
    service: Option<&'a str>,
    scope: &'a str,
    credential: Option<&'a Credential>,
    guard: Option<super::guard::DialGuard>,
}

#[derive(serde::Deserialize)]
struct TokenAnswer {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

impl OciAuth {
    pub fn new(
        upstream: Upstream,
        credentials: RegistryCredentials,
        bases: &std::collections::BTreeMap<String, String>,
        realms: &[String],
        metrics: Metrics,
        health: Arc<RegistryHealth>,
    ) -> Self {
        OciAuth {
            upstream,
            credentials,
            bases: bases
                .iter()
                .filter_map(|(k, v)| url::Url::parse(v).ok().map(|u| (k.clone(), u)))
                .collect(),
            realms: realms.iter().map(|r| r.to_ascii_lowercase()).collect(),
            cache: Mutex::new(TokenCache::default()),
            metrics,
            health,
        }
    }

    /// True when the cache holds an account for `registry` (its answers then need no client identity).
    pub fn has_credentials(&self, registry: &str) -> bool {
        self.credentials.contains_key(registry)
    }

    /// Sends `request` for `repository` on `registry`, answering one authentication challenge. The
    /// answer is whatever the registry said last: a second 401 is returned for the caller to relay.
    pub async fn send(
        &self,
        registry: &str,
        repository: &str,
        request: Request,
    ) -> Result<Response, UpstreamError> {
        let key = (registry.to_string(), repository.to_string());
        let cached = self.cached(&key);
        let first = match &cached {
            Some(auth) => request.clone().header("authorization", auth.clone()),
            None => request.clone(),
        };
        let resp = self.counted(registry, first).await?;
        if resp.status != 401 {
            return Ok(resp);
        }
        if cached.is_some() {
            self.keep(|cache| cache.remove(&key));
        }
        // An unlisted registry (a guarded request) is its own first URL's origin.
        let base = match (self.bases.get(registry), &request.guard) {
            (Some(b), _) => Some(b.clone()),
            (None, Some(_)) => Some(request.url.clone()),
            (None, None) => None,
        };
        if base.is_none_or(|b| !same_origin(&b, &resp.url)) {
            // A 401 from where the registry redirected to (a CDN): nothing of ours answers it.
            tracing::warn!(%registry, from = %resp.url, "a 401 from outside the registry; not answered");
            return Ok(resp);
        }
        let Some(found) = resp.header("www-authenticate").and_then(challenge::parse) else {
            return Ok(resp);
        };
        let credential = self.credentials.get(registry);
        let (auth, lifetime) = match found {
            Challenge::Basic => {
                match credential.filter(|_| self.may_receive(registry, &resp.url)) {
                    Some(c) => (basic(c), MAX_LIFETIME),
                    None => return Ok(resp),
                }
            }
            Challenge::Bearer {
                realm,
                service,
                scope,
            } => {
                let scope = scope.unwrap_or_else(|| format!("repository:{repository}:pull"));
                let credential = match (credential, url::Url::parse(&realm)) {
                    (Some(c), Ok(r)) if self.may_receive(registry, &r) => Some(c),
                    (Some(_), _) => {
                        tracing::warn!(
                            %registry, %realm,
                            "the token realm is not the registry's host (or registry.token_realms) over \
                             HTTPS: asking it anonymously, the account stays with the registry"
                        );
                        None
                    }
                    (None, _) => None,
                };
                let asked = TokenRequest {
                    realm: &realm,
                    service: service.as_deref(),
                    scope: &scope,
                    credential,
                    guard: request.guard.clone(),
                };
                match self.token(registry, asked).await {
                    Ok((token, lifetime)) => (format!("Bearer {token}"), lifetime),
                    Err(why) => {
                        tracing::warn!(%registry, %realm, %why, "no token from the registry's auth realm");
                        // The registry's 401 goes back; why it could not be answered goes with it, for
                        // the operator (`registry_health`), never to a client.
                        let mut resp = resp;
                        resp.headers.push((TOKEN_ERROR_HEADER.to_string(), why));
                        return Ok(resp);
                    }
                }
            }
        };
        let answer = self
            .counted(registry, request.header("authorization", auth.clone()))
            .await?;
        if answer.status != 401 && answer.status != 403 {
            let now = Instant::now();
            let until = now + Duration::from_secs(lifetime);
            self.keep(|cache| cache.insert(key, auth, until, now));
        }
        Ok(answer)
    }

    /// Whether the account of `registry` may be sent to `url`: the registry's own host or a listed
    /// realm host, over HTTPS, or over HTTP when the registry itself is configured as `http://`.
    fn may_receive(&self, registry: &str, url: &url::Url) -> bool {
        let Some(base) = self.bases.get(registry) else {
            return false;
        };
        let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
        let host_ok = Some(host.as_str())
            == base.host_str().map(str::to_ascii_lowercase).as_deref()
            || self.realms.contains(&host);
        let scheme_ok =
            url.scheme() == "https" || (url.scheme() == "http" && base.scheme() == "http");
        host_ok && scheme_ok
    }

    /// Changes the token cache and shows its size in the metrics.
    fn keep<T>(&self, change: impl FnOnce(&mut TokenCache) -> T) -> T {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let out = change(&mut cache);
        self.metrics.registry_tokens.set(cache.len() as i64);
        self.metrics.registry_token_bytes.set(cache.bytes() as i64);
        out
    }

    fn cached(&self, key: &(String, String)) -> Option<String> {
        self.keep(|cache| cache.get(key, Instant::now()))
    }

    async fn counted(&self, registry: &str, request: Request) -> Result<Response, UpstreamError> {
        let is_token = request.kind == "token";
        let result = self.upstream.send(request).await;
        let label = match &result {
            Ok(r) => r.status.to_string(),
            Err(UpstreamError::Timeout(_)) => "timeout".into(),
            Err(_) => "error".into(),
        };
        self.metrics.registry_upstream(registry, label);
        if let Ok(resp) = &result {
            self.health.observe(registry, |name| resp.header(name));
            // A token is given to anyone; only the registry serving content says the access works.
            if (200..300).contains(&resp.status) && !is_token {
                self.health.accepted(registry);
            }
        }
        result
    }

    /// GET `realm?service=…&scope=…` (Basic auth with the account, if any) → (token, seconds to keep it).
    /// The realm of an unlisted registry is dialled under the same guard as the registry itself.
    async fn token(
        &self,
        registry: &str,
        asked: TokenRequest<'_>,
    ) -> Result<(String, u64), String> {
        let TokenRequest {
            realm,
            service,
            scope,
            credential,
            guard,
        } = asked;
        let mut url = url::Url::parse(realm).map_err(|e| format!("realm `{realm}`: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("realm `{realm}` is not an HTTP URL"));
        }
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            q.append_pair("scope", scope);
        }
        let mut request = Request::get(url, "token");
        request.guard = guard;
        if let Some(c) = credential {
            request = request.header("authorization", basic(c));
        }
        let resp = self
            .counted(registry, request)
            .await
            .map_err(|e| e.to_string())?;
        if resp.status != 200 {
            let status = resp.status;
            let mut why = format!("token endpoint answered {status}");
            let body = super::read_body(resp.body, 4096).await.unwrap_or_default();
            if let Some(said) = registry_health::message_of(&body) {
                why = format!("{why}: {said}");
            }
            if matches!(status, 401 | 403) && credential.is_some() {
                why.push_str(" (the account of registry.credentials_file)");
            }
            return Err(why);
        }
        let body = super::read_body(resp.body, TOKEN_BODY_LIMIT)
            .await
            .map_err(|e| format!("token answer: {e}"))?;
        let answer: TokenAnswer =
            serde_json::from_slice(&body).map_err(|e| format!("token answer: {e}"))?;
        let token = answer
            .token
            .or(answer.access_token)
            .filter(|t| !t.is_empty() && !t.contains(['\r', '\n']))
            .ok_or("token answer has no token")?;
        let lifetime = answer
            .expires_in
            .unwrap_or(DEFAULT_LIFETIME)
            .min(MAX_LIFETIME)
            .saturating_sub(MARGIN)
            .max(1);
        Ok((token, lifetime))
    }
}

/// Same scheme, host and port.
fn same_origin(a: &url::Url, b: &url::Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str().map(str::to_ascii_lowercase) == b.host_str().map(str::to_ascii_lowercase)
        && a.port_or_known_default() == b.port_or_known_default()
}

fn basic(c: &Credential) -> String {
    use base64::Engine;
    let raw = format!("{}:{}", c.username, c.password);
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

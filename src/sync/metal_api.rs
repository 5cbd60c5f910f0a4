//! metal-api, as far as the sync needs it: the image list and the partitions' boot configuration.
//! v1: REST with metal-stack's HMAC headers (`hmac.rs`). v2: Connect unary calls with the JSON codec and a
//! bearer token from `sync.token_file`, refreshed (and written back, mode 0600) once three quarters of its
//! lifetime are gone, as metal-image-cache-sync does. The DTOs live here only; the rest of the sync sees
//! `planner::Image` and (kernel URL, initrd URL) pairs.

use super::hmac;
use super::planner::Image;
use crate::config::{MetalApiVersion, SyncConfig};
use crate::upstream::{self, Upstream};
use std::time::Duration;

/// Listings larger than this are refused (a metal-api lists hundreds of images, not megabytes of them).
const MAX_LISTING: usize = 32 * 1024 * 1024;
const ATTEMPTS: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot read {file}: {source} (sync.hmac_file / sync.token_file)")]
    KeyFile {
        file: String,
        source: std::io::Error,
    },
    #[error("{0} is empty: put the metal-api view HMAC key there")]
    EmptyKey(String),
    #[error(
        "HMAC key rejected by metal-api ({status} from {url}); check sync.hmac_file and sync.auth_type"
    )]
    Rejected { status: u16, url: String },
    #[error("metal-api {url} answered {status}")]
    Status { status: u16, url: String },
    #[error("metal-api {url} unreachable: {message}")]
    Unreachable { url: String, message: String },
    #[error("metal-api {url} sent an unreadable answer: {message}")]
    Decode { url: String, message: String },
    #[error("{0} is empty: put the metal-apiserver token there")]
    EmptyToken(String),
    #[error("token rejected by metal-apiserver ({status} from {url}); check sync.token_file")]
    TokenRejected { status: u16, url: String },
    #[error("cannot write the refreshed token to {file}: {message}")]
    TokenWrite { file: String, message: String },
}

#[derive(serde::Deserialize)]
struct ImageDto {
    id: String,
    #[serde(default)]
    url: Option<String>,
    #[serde(default, rename = "expirationDate")]
    expiration_date: Option<String>,
}

#[derive(serde::Deserialize)]
struct PartitionDto {
    #[serde(default)]
    bootconfig: Option<BootConfigDto>,
}

#[derive(serde::Deserialize)]
struct BootConfigDto {
    #[serde(default)]
    imageurl: Option<String>,
    #[serde(default)]
    kernelurl: Option<String>,
}

#[derive(serde::Deserialize)]
struct ImagesV2 {
    #[serde(default)]
    images: Vec<ImageV2>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ImageV2 {
    id: String,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    expires_at: Option<String>,
}

#[derive(serde::Deserialize)]
struct PartitionsV2 {
    #[serde(default)]
    partitions: Vec<PartitionV2>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct PartitionV2 {
    #[serde(default)]
    boot_configuration: Option<BootConfigV2>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct BootConfigV2 {
    #[serde(default)]
    image_url: Option<String>,
    #[serde(default)]
    kernel_url: Option<String>,
}

#[derive(serde::Deserialize)]
struct RefreshV2 {
    secret: String,
}

enum Auth {
    Hmac {
        key: Vec<u8>,
        auth_type: String,
    },
    Token {
        file: std::path::PathBuf,
        token: tokio::sync::Mutex<String>,
    },
}

pub struct MetalApi {
    upstream: Upstream,
    base: String,
    auth: Auth,
}

impl MetalApi {
    pub fn new(config: &SyncConfig, upstream: Upstream) -> Result<Self, ApiError> {
        let auth = match config.api {
            MetalApiVersion::V1 => Auth::Hmac {
                key: match &config.hmac_file {
                    Some(path) => {
                        let key = read_secret(path)?;
                        if key.is_empty() {
                            return Err(ApiError::EmptyKey(path.display().to_string()));
                        }
                        key.into_bytes()
                    }
                    None => Vec::new(),
                },
                auth_type: config.auth_type.clone(),
            },
            MetalApiVersion::V2 => {
                let Some(path) = &config.token_file else {
                    return Err(ApiError::EmptyToken("sync.token_file (not set)".into()));
                };
                let token = read_secret(path)?;
                if token.is_empty() {
                    return Err(ApiError::EmptyToken(path.display().to_string()));
                }
                Auth::Token {
                    file: path.clone(),
                    token: tokio::sync::Mutex::new(token),
                }
            }
        };
        Ok(MetalApi {
            upstream,
            base: config.url.trim_end_matches('/').to_string(),
            auth,
        })
    }

    pub async fn images(&self) -> Result<Vec<Image>, ApiError> {
        let parse = |s: Option<String>| s.and_then(|s| humantime::parse_rfc3339_weak(&s).ok());
        if matches!(self.auth, Auth::Token { .. }) {
            let list: ImagesV2 = self.connect("metalstack.api.v2.ImageService/List").await?;
            return Ok(list
                .images
                .into_iter()
                .map(|d| Image {
                    expires: parse(d.expires_at),
                    id: d.id,
                    url: d.url.unwrap_or_default(),
                })
                .collect());
        }
        let dtos: Vec<ImageDto> = self.call("/v1/image", None).await?;
        Ok(dtos
            .into_iter()
            .map(|d| Image {
                expires: parse(d.expiration_date),
                id: d.id,
                url: d.url.unwrap_or_default(),
            })
            .collect())
    }

    /// (kernel URL, initrd URL) of every partition with a boot configuration.
    pub async fn boot_configs(&self) -> Result<Vec<(Option<String>, Option<String>)>, ApiError> {
        if matches!(self.auth, Auth::Token { .. }) {
            let list: PartitionsV2 = self
                .connect("metalstack.api.v2.PartitionService/List")
                .await?;
            return Ok(list
                .partitions
                .into_iter()
                .filter_map(|p| p.boot_configuration)
                .map(|b| (b.kernel_url, b.image_url))
                .collect());
        }
        let dtos: Vec<PartitionDto> = self.call("/v1/partition", None).await?;
        Ok(dtos
            .into_iter()
            .filter_map(|p| p.bootconfig)
            .map(|b| (b.kernelurl, b.imageurl))
            .collect())
    }

    /// A Connect unary call with an empty request message, after refreshing an ageing token.
    async fn connect<T: serde::de::DeserializeOwned>(&self, method: &str) -> Result<T, ApiError> {
        self.refresh_if_due().await?;
        self.call(
            &format!("/{method}"),
            Some(bytes::Bytes::from_static(b"{}")),
        )
        .await
    }

    /// v2 only: tells metal-apiserver this cache is alive (`ComponentService/Ping`), as
    /// metal-image-cache-sync does every 5 minutes. A no-op for v1.
    pub async fn ping(
        &self,
        identifier: &str,
        started_at: std::time::SystemTime,
        interval: Duration,
    ) -> Result<(), ApiError> {
        if !matches!(self.auth, Auth::Token { .. }) {
            return Ok(());
        }
        self.refresh_if_due().await?;
        let body = serde_json::json!({
            "type": "COMPONENT_TYPE_METAL_IMAGE_CACHE_SYNC",
            "identifier": identifier,
            "startedAt": humantime::format_rfc3339_seconds(started_at).to_string(),
            "interval": format!("{}s", interval.as_secs()),
            "version": {"version": env!("CARGO_PKG_VERSION")},
        });
        let _: serde_json::Value = self
            .call(
                "/metalstack.infra.v2.ComponentService/Ping",
                Some(bytes::Bytes::from(body.to_string())),
            )
            .await?;
        Ok(())
    }

    /// Refreshes the v2 token once three quarters of its lifetime (from its unverified `iat`/`exp`
    /// claims) are gone, and writes the new one back to `sync.token_file`. A failed refresh of a token
    /// that is still valid only warns.
    async fn refresh_if_due(&self) -> Result<(), ApiError> {
        let Auth::Token { file, token } = &self.auth else {
            return Ok(());
        };
        let current = token.lock().await.clone();
        // The token's own times are real time, never a test's clock.
        let now = crate::clock::Clock::system().now_secs();
        let Some((iat, exp)) = jwt_times(&current) else {
            return Ok(());
        };
        if !refresh_due(iat, exp, now) {
            return Ok(());
        }
        let refreshed: Result<RefreshV2, ApiError> = self
            .call(
                "/metalstack.api.v2.TokenService/Refresh",
                Some(bytes::Bytes::from_static(b"{}")),
            )
            .await;
        match refreshed {
            Ok(r) if !r.secret.trim().is_empty() => {
                write_secret(file, r.secret.trim())?;
                *token.lock().await = r.secret.trim().to_string();
                tracing::info!(file = %file.display(), "metal-apiserver token refreshed");
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(e) if now < exp => {
                tracing::warn!(error = %e, "token refresh failed; the current token is still valid");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// GET (v1, `body = None`) or POST with a JSON body (v2), authenticated, retried on 5xx and
    /// unreachable with back-off; 4xx are final.
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: Option<bytes::Bytes>,
    ) -> Result<T, ApiError> {
        let url = format!("{}{path}", self.base);
        let parsed = url::Url::parse(&url).map_err(|e| ApiError::Unreachable {
            url: url.clone(),
            message: e.to_string(),
        })?;
        let mut last = None;
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_secs(1 << attempt)).await;
            }
            let mut request = match &body {
                Some(b) => upstream::Request::post_json(parsed.clone(), "metal-api", b.clone())
                    .header("connect-protocol-version", "1"),
                None => upstream::Request::get(parsed.clone(), "metal-api"),
            };
            match &self.auth {
                Auth::Hmac { key, auth_type } if !key.is_empty() => {
                    let signed =
                        hmac::sign(key, auth_type, "GET", &hmac::now_rfc3339(), &hmac::salt());
                    request = request
                        .header("authorization", signed.authorization)
                        .header("x-date", signed.x_date)
                        .header("x-data-salt", signed.x_data_salt);
                }
                Auth::Hmac { .. } => {}
                Auth::Token { token, .. } => {
                    let t = token.lock().await.clone();
                    request = request.header("authorization", format!("Bearer {t}"));
                }
            }
            request = request.header("accept", "application/json");
            match self.upstream.send(request).await {
                Ok(resp) if resp.status == 200 => {
                    let body = upstream::read_body(resp.body, MAX_LISTING)
                        .await
                        .map_err(|e| ApiError::Unreachable {
                            url: url.clone(),
                            message: e.to_string(),
                        })?;
                    return serde_json::from_slice(&body).map_err(|e| ApiError::Decode {
                        url: url.clone(),
                        message: e.to_string(),
                    });
                }
                Ok(resp) if resp.status == 401 || resp.status == 403 => {
                    return Err(match self.auth {
                        Auth::Hmac { .. } => ApiError::Rejected {
                            status: resp.status,
                            url,
                        },
                        Auth::Token { .. } => ApiError::TokenRejected {
                            status: resp.status,
                            url,
                        },
                    });
                }
                Ok(resp) if resp.status < 500 => {
                    return Err(ApiError::Status {
                        status: resp.status,
                        url,
                    });
                }
                Ok(resp) => {
                    last = Some(ApiError::Status {
                        status: resp.status,
                        url: url.clone(),
                    });
                }
                Err(e) => {
                    last = Some(ApiError::Unreachable {
                        url: url.clone(),
                        message: e.to_string(),
                    });
                }
            }
        }
        Err(last.unwrap_or(ApiError::Unreachable {
            url,
            message: "no attempt made".into(),
        }))
    }
}

fn read_secret(path: &std::path::Path) -> Result<String, ApiError> {
    let raw = std::fs::read(path).map_err(|source| ApiError::KeyFile {
        file: path.display().to_string(),
        source,
    })?;
    Ok(String::from_utf8_lossy(&raw).trim().to_string())
}

/// Replaces the token file atomically (a crash leaves the old or the new token), readable by us only.
fn write_secret(path: &std::path::Path, secret: &str) -> Result<(), ApiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |e: std::io::Error| ApiError::TokenWrite {
        file: path.display().to_string(),
        message: e.to_string(),
    };
    let tmp = path.with_extension("new");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(secret.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    // Not the store: the one file this rename touches is our own credential.
    #[allow(clippy::disallowed_methods)]
    let renamed = std::fs::rename(&tmp, path);
    renamed.map_err(err)
}

/// `(iat, exp)` of a JWT, read without verifying it (only to know when to refresh). `iat` defaults to
/// `exp` when absent, which makes any token past its end due.
pub fn jwt_times(jwt: &str) -> Option<(u64, u64)> {
    use base64::Engine as _;
    #[derive(serde::Deserialize)]
    struct Claims {
        exp: u64,
        #[serde(default)]
        iat: Option<u64>,
    }
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: Claims = serde_json::from_slice(&bytes).ok()?;
    Some((claims.iat.unwrap_or(claims.exp), claims.exp))
}

/// Due once three quarters of the lifetime are gone (remaining <= lifetime / 4).
pub fn refresh_due(iat: u64, exp: u64, now: u64) -> bool {
    let lifetime = exp.saturating_sub(iat);
    exp.saturating_sub(now) <= lifetime / 4
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: &str) -> String {
        use base64::Engine as _;
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!("{}.{}.sig", e.encode(r#"{"alg":"none"}"#), e.encode(claims))
    }

    #[test]
    fn token_refresh_is_due_at_three_quarters() {
        let t = jwt(r#"{"iat":1000,"exp":1400,"sub":"x"}"#);
        assert_eq!(jwt_times(&t), Some((1000, 1400)));
        assert!(!refresh_due(1000, 1400, 1299));
        assert!(refresh_due(1000, 1400, 1300));
        assert!(refresh_due(1000, 1400, 2000));
        assert_eq!(jwt_times("not.a-jwt"), None);
        assert_eq!(jwt_times(&jwt(r#"{"exp":5}"#)), Some((5, 5)));
    }
}

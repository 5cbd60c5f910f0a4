//! metal-api, as far as the sync needs it: the image list and the partitions' boot configuration.
//! v1: REST with metal-stack's HMAC headers (`hmac.rs`). The DTOs live here only; the rest of the sync
//! sees `planner::Image` and (kernel URL, initrd URL) pairs.

use super::hmac;
use super::planner::Image;
use crate::config::{MetalApiVersion, SyncConfig};
use crate::upstream::{self, Upstream, UpstreamError};
use futures_util::StreamExt;
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
    #[error("sync.api = \"v2\" is not implemented yet; use \"v1\" (REST + HMAC)")]
    V2NotImplemented,
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

pub struct MetalApi {
    upstream: Upstream,
    base: String,
    key: Vec<u8>,
    auth_type: String,
}

impl MetalApi {
    pub fn new(config: &SyncConfig, upstream: Upstream) -> Result<Self, ApiError> {
        if config.api == MetalApiVersion::V2 {
            return Err(ApiError::V2NotImplemented);
        }
        let key = match &config.hmac_file {
            Some(path) => {
                let raw = std::fs::read(path).map_err(|source| ApiError::KeyFile {
                    file: path.display().to_string(),
                    source,
                })?;
                let trimmed = String::from_utf8_lossy(&raw).trim().as_bytes().to_vec();
                if trimmed.is_empty() {
                    return Err(ApiError::EmptyKey(path.display().to_string()));
                }
                trimmed
            }
            None => Vec::new(),
        };
        Ok(MetalApi {
            upstream,
            base: config.url.trim_end_matches('/').to_string(),
            key,
            auth_type: config.auth_type.clone(),
        })
    }

    pub async fn images(&self) -> Result<Vec<Image>, ApiError> {
        let dtos: Vec<ImageDto> = self.get_json("/v1/image").await?;
        Ok(dtos
            .into_iter()
            .map(|d| Image {
                expires: d
                    .expiration_date
                    .as_deref()
                    .and_then(|s| humantime::parse_rfc3339_weak(s).ok()),
                id: d.id,
                url: d.url.unwrap_or_default(),
            })
            .collect())
    }

    /// (kernel URL, initrd URL) of every partition with a boot configuration.
    pub async fn boot_configs(&self) -> Result<Vec<(Option<String>, Option<String>)>, ApiError> {
        let dtos: Vec<PartitionDto> = self.get_json("/v1/partition").await?;
        Ok(dtos
            .into_iter()
            .filter_map(|p| p.bootconfig)
            .map(|b| (b.kernelurl, b.imageurl))
            .collect())
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, ApiError> {
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
            let mut request = upstream::Request::get(parsed.clone(), "metal-api");
            if !self.key.is_empty() {
                let signed = hmac::sign(
                    &self.key,
                    &self.auth_type,
                    "GET",
                    &hmac::now_rfc3339(),
                    &hmac::salt(),
                );
                request = request
                    .header("authorization", signed.authorization)
                    .header("x-date", signed.x_date)
                    .header("x-data-salt", signed.x_data_salt);
            }
            request = request.header("accept", "application/json");
            match self.upstream.send(request).await {
                Ok(resp) if resp.status == 200 => {
                    let body = read_body(resp.body, MAX_LISTING).await.map_err(|message| {
                        ApiError::Unreachable {
                            url: url.clone(),
                            message,
                        }
                    })?;
                    return serde_json::from_slice(&body).map_err(|e| ApiError::Decode {
                        url: url.clone(),
                        message: e.to_string(),
                    });
                }
                Ok(resp) if resp.status == 401 || resp.status == 403 => {
                    return Err(ApiError::Rejected {
                        status: resp.status,
                        url,
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
                        message: describe(&e),
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

fn describe(e: &UpstreamError) -> String {
    upstream::source::describe(e)
}

/// A whole (small) body, refused beyond `limit` bytes.
pub async fn read_body(mut body: upstream::Body, limit: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        if out.len() + chunk.len() > limit {
            return Err(format!("answer larger than {limit} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

//! A small OCI registry on 127.0.0.1 that behaves like Docker Hub where it matters to a cache: every
//! repository wants a bearer token from its own token endpoint (anonymous, or Basic for `private/*`),
//! tags answer by content negotiation, blobs redirect to a "CDN" on another port with a signed URL,
//! and faults can be injected per path. Every request is logged so tests can count upstream traffic.

use actix_web::http::header;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use futures_util::StreamExt;
use sha2::Digest as _;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub(crate) const INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const DOCKER_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub(crate) const RESOLVE_ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, */*";
pub(crate) const USER: &str = "puller";
pub(crate) const PASSWORD: &str = "s3cret";

#[derive(Clone, Debug)]
pub(crate) enum Fault {
    /// Answer this status (with `Retry-After` when given).
    Status(u16, Option<&'static str>),
    /// Send other bytes than the digest names.
    WrongBody,
    /// Claim `Content-Encoding: gzip`.
    Gzip,
    /// Omit `Docker-Content-Digest`.
    NoDigest,
    /// Send the first half, then wait this long before the rest.
    Slow(Duration),
    /// The CDN the blob redirects to answers 401 with a Basic challenge.
    CdnChallenge,
    /// Answer with this `Content-Type` (a hostile registry's `text/html`).
    ContentType(&'static str),
}

/// (repo, tag or digest) → (media type, bytes).
type Manifests = HashMap<(String, String), (String, Vec<u8>)>;

#[derive(Default)]
pub(crate) struct RegState {
    manifests: Mutex<Manifests>,
    blobs: Mutex<HashMap<String, Vec<u8>>>,
    /// Which repositories hold which blob digests.
    members: Mutex<HashSet<(String, String)>>,
    /// Requests answered 401 for want of a token.
    pub challenges: AtomicU64,
    /// Every request that carried the right token (and token requests): "METHOD path?query accept".
    pub log: Mutex<Vec<String>>,
    /// Every CDN request: "GET digest authorization-present".
    pub cdn_log: Mutex<Vec<String>>,
    pub tokens_issued: AtomicU64,
    pub faults: Mutex<HashMap<String, Fault>>,
    pub stopped: AtomicBool,
    /// When set, 401 challenges name this token realm instead of the registry's own.
    pub realm: Mutex<Option<String>>,
    /// (repo, subject digest) → descriptors of the artifacts that refer to it (the referrers API).
    pub referrers: Mutex<HashMap<(String, String), Vec<serde_json::Value>>>,
    /// When set, the referrers API is missing (404), as on registries before OCI distribution 1.1.
    pub no_referrers_api: AtomicBool,
    /// When set, a tag whose manifest type the request's `Accept` (all lines) does not admit is a 404
    /// MANIFEST_UNKNOWN, as registries that do not convert answer, instead of Docker Hub's fallback.
    pub strict_accept: AtomicBool,
    /// When set, every registry answer carries Docker Hub's budget headers: (limit, remaining).
    pub ratelimit: Mutex<Option<(u64, u64)>>,
    /// Plays an expired account: tokens for `private/*` stop working and the token endpoint refuses
    /// the account with Docker Hub's message.
    pub account_revoked: AtomicBool,
    /// Bytes added to every token (a token endpoint that hands out large ones).
    pub token_padding: std::sync::atomic::AtomicUsize,
    port: AtomicU64,
    cdn_port: AtomicU64,
}

pub(crate) struct Image {
    pub index: String,
    pub amd64: String,
    pub arm64: String,
    pub config: String,
    pub layers: Vec<String>,
}

pub(crate) struct FakeRegistry {
    pub state: Arc<RegState>,
    pub url: String,
    handles: Vec<actix_web::dev::ServerHandle>,
}

pub(crate) fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

impl FakeRegistry {
    pub(crate) async fn start() -> Self {
        let state = Arc::new(RegState::default());
        let (reg, reg_port, reg_handle) = serve(Arc::clone(&state), registry_route).await;
        let (cdn, cdn_port, cdn_handle) = serve(Arc::clone(&state), cdn_route).await;
        state.port.store(reg_port as u64, Ordering::SeqCst);
        state.cdn_port.store(cdn_port as u64, Ordering::SeqCst);
        tokio::spawn(reg);
        tokio::spawn(cdn);
        FakeRegistry {
            state,
            url: format!("http://127.0.0.1:{reg_port}"),
            handles: vec![reg_handle, cdn_handle],
        }
    }

    pub(crate) fn put_blob(&self, repo: &str, bytes: Vec<u8>) -> String {
        let d = digest(&bytes);
        self.state.blobs.lock().unwrap().insert(d.clone(), bytes);
        self.state
            .members
            .lock()
            .unwrap()
            .insert((repo.to_string(), d.clone()));
        d
    }

    pub(crate) fn put_manifest(
        &self,
        repo: &str,
        tag: Option<&str>,
        media: &str,
        bytes: Vec<u8>,
    ) -> String {
        let d = digest(&bytes);
        let mut m = self.state.manifests.lock().unwrap();
        m.insert((repo.into(), d.clone()), (media.into(), bytes.clone()));
        if let Some(t) = tag {
            m.insert((repo.into(), t.into()), (media.into(), bytes));
        }
        d
    }

    pub(crate) fn blob(&self, d: &str) -> Vec<u8> {
        self.state.blobs.lock().unwrap()[d].clone()
    }

    /// A two-platform image: an index, a manifest per platform sharing `layers`, one config each.
    pub(crate) fn push_image(&self, repo: &str, tag: &str, layers: &[Vec<u8>]) -> Image {
        let layer_digests: Vec<String> = layers
            .iter()
            .map(|l| self.put_blob(repo, l.clone()))
            .collect();
        let platform = |arch: &str| {
            let config = format!(
                r#"{{"architecture":"{arch}","os":"linux","rootfs":{{"type":"layers"}},"tag":"{tag}"}}"#
            );
            let config_digest = self.put_blob(repo, config.clone().into_bytes());
            let layer_descs: Vec<String> = layer_digests
                .iter()
                .zip(layers)
                .map(|(d, l)| format!(r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{d}","size":{}}}"#, l.len()))
                .collect();
            let manifest = format!(
                r#"{{"schemaVersion":2,"mediaType":"{MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},"layers":[{}]}}"#,
                config.len(),
                layer_descs.join(",")
            );
            let d = self.put_manifest(repo, None, MANIFEST, manifest.clone().into_bytes());
            (d, config_digest, manifest.len())
        };
        let (amd64, config, amd_len) = platform("amd64");
        let (arm64, _, arm_len) = platform("arm64");
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"{INDEX}","manifests":[{{"mediaType":"{MANIFEST}","digest":"{amd64}","size":{amd_len},"platform":{{"architecture":"amd64","os":"linux"}}}},{{"mediaType":"{MANIFEST}","digest":"{arm64}","size":{arm_len},"platform":{{"architecture":"arm64","os":"linux"}}}}]}}"#
        );
        let index = self.put_manifest(repo, Some(tag), INDEX, index.into_bytes());
        Image {
            index,
            amd64,
            arm64,
            config,
            layers: layer_digests,
        }
    }

    /// An artifact (`artifact_type`) that refers to `subject`: listed by the referrers API, and under the
    /// referrers tag schema (`sha256-<hex>`) for when the API is switched off.
    pub(crate) fn add_referrer(&self, repo: &str, subject: &str, artifact_type: &str) -> String {
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{MANIFEST}","artifactType":"{artifact_type}","config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2}},"layers":[],"subject":{{"mediaType":"{INDEX}","digest":"{subject}","size":1}}}}"#
        );
        let size = manifest.len();
        let digest = self.put_manifest(repo, None, MANIFEST, manifest.into_bytes());
        let descriptor = serde_json::json!({
            "mediaType": MANIFEST, "digest": digest, "size": size, "artifactType": artifact_type,
        });
        let list = {
            let mut all = self.state.referrers.lock().unwrap();
            let list = all
                .entry((repo.to_string(), subject.to_string()))
                .or_default();
            list.push(descriptor);
            list.clone()
        };
        let index = serde_json::json!({"schemaVersion": 2, "mediaType": INDEX, "manifests": list});
        let tag = subject.replacen(':', "-", 1);
        self.put_manifest(repo, Some(&tag), INDEX, serde_json::to_vec(&index).unwrap());
        digest
    }

    /// A docker `config.json` in `dir` holding the account of `private/*` under the name `registry`.
    pub(crate) fn credentials_file(
        &self,
        dir: &std::path::Path,
        registry: &str,
    ) -> std::path::PathBuf {
        use base64::Engine;
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
        let path = dir.join("auth.json");
        std::fs::write(
            &path,
            format!(r#"{{"auths":{{"{registry}":{{"auth":"{auth}"}}}}}}"#),
        )
        .unwrap();
        path
    }

    pub(crate) fn fault(&self, path: &str, f: Fault) {
        self.state.faults.lock().unwrap().insert(path.into(), f);
    }

    pub(crate) fn clear_faults(&self) {
        self.state.faults.lock().unwrap().clear();
    }

    /// Requests whose log line starts with `prefix` (e.g. `"GET /v2/a/blobs/"`).
    pub(crate) fn count(&self, prefix: &str) -> usize {
        self.state
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with(prefix))
            .count()
    }

    pub(crate) fn cdn_gets(&self, d: &str) -> usize {
        self.state
            .cdn_log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(d))
            .count()
    }

    /// Plays "the registry is gone": every later request gets its connection closed.
    pub(crate) async fn stop(&mut self) {
        self.state.stopped.store(true, Ordering::SeqCst);
        for h in self.handles.drain(..) {
            h.stop(false).await;
        }
    }
}

type Route = fn(HttpRequest, Arc<RegState>) -> HttpResponse;

async fn serve(
    state: Arc<RegState>,
    route: Route,
) -> (actix_web::dev::Server, u16, actix_web::dev::ServerHandle) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let data = web::Data::new(state);
    let server = HttpServer::new(move || {
        App::new().app_data(data.clone()).default_service(web::to(
            move |req: HttpRequest, s: web::Data<Arc<RegState>>| {
                let s: Arc<RegState> = Arc::clone(s.get_ref());
                async move { route(req, s) }
            },
        ))
    })
    .workers(2)
    .disable_signals()
    .shutdown_timeout(1)
    .listen(listener)
    .unwrap()
    .run();
    let handle = server.handle();
    (server, port, handle)
}

fn token_for(repo: &str, s: &RegState) -> String {
    let padding = s.token_padding.load(Ordering::SeqCst);
    format!("tok-{}{}", repo.replace('/', "."), "p".repeat(padding))
}

fn registry_route(req: HttpRequest, s: Arc<RegState>) -> HttpResponse {
    let mut resp = registry_answer(req, &s);
    if let Some((limit, remaining)) = *s.ratelimit.lock().unwrap() {
        let h = resp.headers_mut();
        let value = |v: String| header::HeaderValue::from_str(&v).unwrap();
        h.insert(
            header::HeaderName::from_static("ratelimit-limit"),
            value(format!("{limit};w=21600")),
        );
        h.insert(
            header::HeaderName::from_static("ratelimit-remaining"),
            value(format!("{remaining};w=21600")),
        );
    }
    resp
}

fn registry_answer(req: HttpRequest, s: &Arc<RegState>) -> HttpResponse {
    let s = Arc::clone(s);
    let accept = req
        .headers()
        .get_all(header::ACCEPT)
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(", ");
    let line = format!(
        "{} {}{} {accept}",
        req.method(),
        req.path(),
        if req.query_string().is_empty() {
            String::new()
        } else {
            format!("?{}", req.query_string())
        }
    );
    let path = req.path().to_string();
    if path == "/token" {
        s.log.lock().unwrap().push(line);
        return token(&req, &s);
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return HttpResponse::NotFound().finish();
    };
    let (repo, kind, reference) = if let Some((r, x)) = rest.rsplit_once("/manifests/") {
        (r.to_string(), "manifests", x.to_string())
    } else if let Some((r, x)) = rest.rsplit_once("/blobs/") {
        (r.to_string(), "blobs", x.to_string())
    } else if let Some(r) = rest.strip_suffix("/tags/list") {
        (r.to_string(), "tags", String::new())
    } else if let Some((r, x)) = rest.rsplit_once("/referrers/") {
        (r.to_string(), "referrers", x.to_string())
    } else {
        return HttpResponse::NotFound().finish();
    };
    let port = s.port.load(Ordering::SeqCst);
    let want = format!("Bearer {}", token_for(&repo, &s));
    let revoked = repo.starts_with("private/") && s.account_revoked.load(Ordering::SeqCst);
    let authorized = !revoked
        && req
            .headers()
            .get(header::AUTHORIZATION)
            .is_some_and(|v| v.as_bytes() == want.as_bytes());
    if !authorized {
        s.challenges.fetch_add(1, Ordering::SeqCst);
        let realm = s
            .realm
            .lock()
            .unwrap()
            .clone()
            .unwrap_or(format!("http://127.0.0.1:{port}/token"));
        return HttpResponse::Unauthorized()
            .insert_header((
                header::WWW_AUTHENTICATE,
                format!(r#"Bearer realm="{realm}",service="fake",scope="repository:{repo}:pull""#),
            ))
            .json(
                serde_json::json!({"errors":[{"code":"UNAUTHORIZED","message":"token required"}]}),
            );
    }
    s.log.lock().unwrap().push(line);
    let fault = s.faults.lock().unwrap().get(&path).cloned();
    if let Some(Fault::Status(code, retry)) = &fault {
        let mut b = HttpResponse::build(actix_web::http::StatusCode::from_u16(*code).unwrap());
        if let Some(r) = retry {
            b.insert_header((header::RETRY_AFTER, *r));
        }
        let code = match code {
            401 => "UNAUTHORIZED",
            403 => "DENIED",
            404 | 410 => "MANIFEST_UNKNOWN",
            429 => "TOOMANYREQUESTS",
            _ => "UNAVAILABLE",
        };
        return b.json(serde_json::json!({"errors":[{"code":code,"message":"injected"}]}));
    }
    match kind {
        "referrers" if s.no_referrers_api.load(Ordering::SeqCst) => HttpResponse::NotFound().json(
            serde_json::json!({"errors":[{"code":"UNSUPPORTED","message":"no referrers API"}]}),
        ),
        "referrers" => {
            let list = s
                .referrers
                .lock()
                .unwrap()
                .get(&(repo.clone(), reference.clone()))
                .cloned()
                .unwrap_or_default();
            HttpResponse::Ok().content_type(INDEX).json(
                serde_json::json!({"schemaVersion": 2, "mediaType": INDEX, "manifests": list}),
            )
        }
        "tags" => {
            let m = s.manifests.lock().unwrap();
            let mut tags: Vec<&String> = m
                .keys()
                .filter(|(r, t)| *r == repo && !t.starts_with("sha256:"))
                .map(|(_, t)| t)
                .collect();
            tags.sort();
            let body = serde_json::json!({"name": repo, "tags": tags}).to_string();
            match fault {
                Some(Fault::ContentType(t)) => HttpResponse::Ok().content_type(t).body(body),
                _ => HttpResponse::Ok()
                    .content_type("application/json")
                    .body(body),
            }
        }
        "manifests" => {
            let found = s
                .manifests
                .lock()
                .unwrap()
                .get(&(repo.clone(), reference.clone()))
                .cloned();
            let Some((mut media, mut bytes)) = found else {
                return HttpResponse::NotFound().json(serde_json::json!({"errors":[{"code":"MANIFEST_UNKNOWN","message":"no such manifest"}]}));
            };
            if s.strict_accept.load(Ordering::SeqCst)
                && !reference.starts_with("sha256:")
                && !accept.is_empty()
                && !accept.contains(&media)
                && !accept.contains("*/*")
            {
                return HttpResponse::NotFound().json(serde_json::json!({"errors":[{"code":"MANIFEST_UNKNOWN","message":"no manifest of an accepted type"}]}));
            }
            // Content negotiation by tag, as Docker Hub does: a client that does not accept an index
            // gets the amd64 manifest.
            if !reference.starts_with("sha256:")
                && media == INDEX
                && !accept.is_empty()
                && !accept.contains(INDEX)
                && !accept.contains("*/*")
            {
                let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                let d = v["manifests"][0]["digest"].as_str().unwrap().to_string();
                let (m2, b2) = s.manifests.lock().unwrap()[&(repo.clone(), d)].clone();
                media = m2;
                bytes = b2;
            }
            respond(&req, &media, bytes, fault)
        }
        _ => {
            let member = s
                .members
                .lock()
                .unwrap()
                .contains(&(repo.clone(), reference.clone()));
            if !member {
                return HttpResponse::NotFound().json(serde_json::json!({"errors":[{"code":"BLOB_UNKNOWN","message":"no such blob"}]}));
            }
            if req.method() == actix_web::http::Method::HEAD {
                let bytes = s.blobs.lock().unwrap()[&reference].clone();
                return respond(&req, "application/octet-stream", bytes, None);
            }
            let cdn = s.cdn_port.load(Ordering::SeqCst);
            let mut location = format!("http://127.0.0.1:{cdn}/data/{reference}?verify=123-sig");
            if let Some(f) = fault {
                let tag = match f {
                    Fault::WrongBody => "wrong",
                    Fault::Gzip => "gzip",
                    Fault::Slow(_) => "slow",
                    Fault::CdnChallenge => "challenge",
                    _ => "",
                };
                location.push_str("&fault=");
                location.push_str(tag);
            }
            HttpResponse::TemporaryRedirect()
                .insert_header((header::LOCATION, location))
                .finish()
        }
    }
}

fn token(req: &HttpRequest, s: &RegState) -> HttpResponse {
    let q: HashMap<String, String> = url::form_urlencoded::parse(req.query_string().as_bytes())
        .into_owned()
        .collect();
    let scope = q.get("scope").cloned().unwrap_or_default();
    let Some(repo) = scope
        .strip_prefix("repository:")
        .and_then(|r| r.strip_suffix(":pull"))
    else {
        return HttpResponse::BadRequest().finish();
    };
    if repo.starts_with("private/") && s.account_revoked.load(Ordering::SeqCst) {
        return HttpResponse::Unauthorized()
            .json(serde_json::json!({"details": "incorrect username or password"}));
    }
    if repo.starts_with("private/") {
        use base64::Engine;
        let want = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
        );
        let ok = req
            .headers()
            .get(header::AUTHORIZATION)
            .is_some_and(|v| v.as_bytes() == want.as_bytes());
        if !ok {
            return HttpResponse::Unauthorized().finish();
        }
    }
    s.tokens_issued.fetch_add(1, Ordering::SeqCst);
    HttpResponse::Ok().json(serde_json::json!({"token": token_for(repo, s), "expires_in": 300}))
}

fn cdn_route(req: HttpRequest, s: Arc<RegState>) -> HttpResponse {
    let d = req.path().trim_start_matches("/data/").to_string();
    let has_auth = req.headers().contains_key(header::AUTHORIZATION);
    s.cdn_log
        .lock()
        .unwrap()
        .push(format!("{} {d} auth={has_auth}", req.method()));
    if has_auth {
        return HttpResponse::BadRequest().body("the registry's token must not reach the CDN");
    }
    if !req.query_string().contains("verify=") {
        return HttpResponse::Forbidden().finish();
    }
    if req.query_string().contains("fault=challenge") {
        return HttpResponse::Unauthorized()
            .insert_header((header::WWW_AUTHENTICATE, r#"Basic realm="cdn""#))
            .finish();
    }
    let Some(bytes) = s.blobs.lock().unwrap().get(&d).cloned() else {
        return HttpResponse::NotFound().finish();
    };
    let fault = if req.query_string().contains("fault=wrong") {
        Some(Fault::WrongBody)
    } else if req.query_string().contains("fault=gzip") {
        Some(Fault::Gzip)
    } else if req.query_string().contains("fault=slow") {
        Some(Fault::Slow(Duration::from_millis(1500)))
    } else {
        None
    };
    respond(&req, "application/octet-stream", bytes, fault)
}

fn respond(req: &HttpRequest, media: &str, bytes: Vec<u8>, fault: Option<Fault>) -> HttpResponse {
    let d = digest(&bytes);
    let mut b = HttpResponse::Ok();
    match fault {
        Some(Fault::ContentType(t)) => b.insert_header((header::CONTENT_TYPE, t)),
        _ => b.insert_header((header::CONTENT_TYPE, media)),
    };
    if !matches!(fault, Some(Fault::NoDigest)) {
        b.insert_header(("docker-content-digest", d));
    }
    let bytes = match fault {
        Some(Fault::WrongBody) => {
            let mut x = bytes;
            if let Some(first) = x.first_mut() {
                *first ^= 0xff;
            }
            x
        }
        Some(Fault::Gzip) => {
            b.insert_header((header::CONTENT_ENCODING, "gzip"));
            bytes
        }
        _ => bytes,
    };
    let len = bytes.len() as u64;
    if req.method() == actix_web::http::Method::HEAD {
        return b.body(actix_web::body::SizedStream::new(
            len,
            futures_util::stream::empty::<Result<bytes::Bytes, std::io::Error>>(),
        ));
    }
    if let Some(Fault::Slow(pause)) = fault {
        let half = bytes.len() / 2;
        let first = bytes::Bytes::copy_from_slice(&bytes[..half]);
        let rest = bytes::Bytes::copy_from_slice(&bytes[half..]);
        let stream = futures_util::stream::iter([Ok::<_, std::io::Error>(first)]).chain(
            futures_util::stream::once(async move {
                tokio::time::sleep(pause).await;
                Ok(rest)
            }),
        );
        return b.no_chunking(len).streaming(stream);
    }
    b.body(bytes)
}

//! The JSON admin API, top to bottom: route, parse the query strictly, act, answer JSON. Store work
//! runs on the blocking pool. Errors are `{"error": "..."}` with a status that says whose fault it is.

use super::query::{self, ObjectsQuery};
use super::view::{self, ObjectView};
use super::{PrefetchRunError, SyncRunError};
use crate::http::HttpState;
use crate::store::{Key, Store, StoreError};
use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse};
use serde::Serialize;
use serde_json::json;

/// Rows a filtered listing may skip before it answers with what it has and a cursor to go on from.
const SCAN_BUDGET: usize = 100_000;

/// Every route and the methods it takes, for 405's `Allow` and the 404 message.
const ROUTES: &[(&str, &str)] = &[
    ("/admin/status", "GET"),
    ("/admin/objects", "GET, DELETE"),
    ("/admin/objects/pin", "POST, DELETE"),
    ("/admin/fills", "GET"),
    ("/admin/peers", "GET"),
    ("/admin/sync", "GET, POST"),
    ("/admin/registry/prefetch", "GET, POST"),
    ("/admin/store/gc", "POST"),
    ("/admin/store/verify", "GET, POST"),
];

/// Why the admin API refused or failed, with the status that says whose fault it is.
#[derive(Debug, thiserror::Error)]
pub(super) enum AdminError {
    /// A malformed, unknown or duplicated query parameter.
    #[error("{0}")]
    BadRequest(String),
    #[error("no such key")]
    NoSuchKey,
    #[error("no such admin route; see docs/operations.md, The admin API")]
    NoRoute,
    #[error("method not allowed")]
    Method { allow: &'static str },
    #[error("a {0} is already running")]
    Busy(&'static str),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// A job or blocking task ended without an answer.
    #[error("{0}")]
    Task(String),
    /// The sync could not list metal-api (or the like): the failure is upstream of us.
    #[error("{0}")]
    Upstream(String),
}

impl AdminError {
    pub(super) fn status(&self) -> StatusCode {
        match self {
            AdminError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AdminError::NoSuchKey | AdminError::NoRoute => StatusCode::NOT_FOUND,
            AdminError::Method { .. } => StatusCode::METHOD_NOT_ALLOWED,
            AdminError::Busy(_) => StatusCode::CONFLICT,
            AdminError::Store(_) | AdminError::Task(_) => StatusCode::INTERNAL_SERVER_ERROR,
            AdminError::Upstream(_) => StatusCode::BAD_GATEWAY,
        }
    }

    pub(super) fn response(&self) -> HttpResponse {
        if let AdminError::Store(e) = self {
            tracing::error!(error = %e, "admin API: store operation failed");
        }
        let mut b = HttpResponse::build(self.status());
        if let AdminError::Method { allow } = self {
            b.insert_header((header::ALLOW, *allow));
        }
        b.json(json!({ "error": self.to_string() }))
    }
}

type Answer = Result<HttpResponse, AdminError>;

pub(super) async fn handle(req: &HttpRequest, state: &HttpState) -> HttpResponse {
    let q = req.query_string();
    let post = req.method() == "POST";
    let answer = route(req, state, q, post)
        .await
        .unwrap_or_else(|e| e.response());
    if post || req.method() == "DELETE" {
        state.admin.forget_summary().await;
    }
    answer
}

async fn route(req: &HttpRequest, state: &HttpState, q: &str, post: bool) -> Answer {
    let bad = AdminError::BadRequest;
    match (req.method().as_str(), req.path()) {
        ("GET", "/admin/status") => {
            query::none(q).map_err(bad)?;
            Ok(json_ok(&view::gather(state).await))
        }
        ("GET", "/admin/objects") => list(&state.store, query::objects(q).map_err(bad)?).await,
        ("DELETE", "/admin/objects") => {
            remove(&state.store, parse_key(query::key(q).map_err(bad)?)?).await
        }
        ("POST" | "DELETE", "/admin/objects/pin") => {
            pin(&state.store, parse_key(query::key(q).map_err(bad)?)?, post).await
        }
        ("GET", "/admin/fills") => {
            query::none(q).map_err(bad)?;
            Ok(json_ok(&view::fills(state)))
        }
        ("GET", "/admin/peers") => {
            query::none(q).map_err(bad)?;
            let (node, peers) = view::peers(state);
            Ok(json_ok(&json!({ "node": node, "peers": peers })))
        }
        ("GET", "/admin/sync") => {
            query::none(q).map_err(bad)?;
            Ok(json_ok(&state.admin.sync.status()))
        }
        ("POST", "/admin/sync") => sync(state, query::run(q).map_err(bad)?).await,
        ("GET", "/admin/registry/prefetch") => {
            query::none(q).map_err(bad)?;
            Ok(json_ok(&state.admin.prefetch.status()))
        }
        ("POST", "/admin/registry/prefetch") => {
            prefetch(state, query::prefetch(q).map_err(bad)?).await
        }
        ("POST", "/admin/store/gc") => {
            query::none(q).map_err(bad)?;
            gc(&state.store).await
        }
        ("GET", "/admin/store/verify") => {
            query::none(q).map_err(bad)?;
            Ok(json_ok(&state.admin.verify.status()))
        }
        ("POST", "/admin/store/verify") => {
            let run = query::run(q).map_err(bad)?;
            if run.dry_run {
                return Err(AdminError::BadRequest("verify has no dry run".into()));
            }
            verify(state, run.wait).await
        }
        (_, path) => Err(match ROUTES.iter().find(|(p, _)| *p == path) {
            Some((_, allow)) => AdminError::Method { allow },
            None => AdminError::NoRoute,
        }),
    }
}

fn json_ok<T: Serialize>(v: &T) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(v)
}

fn parse_key(text: String) -> Result<Key, AdminError> {
    Key::parse(&text).map_err(|e| {
        AdminError::BadRequest(format!(
            "`key` is not a store key ({e}); copy it from GET /admin/objects"
        ))
    })
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, AdminError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AdminError::Task(format!("admin task failed: {e}")))?
        .map_err(AdminError::from)
}

/// `GET /admin/objects`: key order, `limit` per page, `next_cursor` to go on (null at the end).
async fn list(store: &Store, q: ObjectsQuery) -> Answer {
    let store = store.clone();
    let (objects, next_cursor) = blocking(move || {
        store.flush_access()?;
        let found = store.find(
            &q.prefix,
            q.cursor.as_deref(),
            q.pinned,
            q.limit,
            SCAN_BUDGET,
        )?;
        let objects: Vec<ObjectView> = found
            .rows
            .into_iter()
            .map(|(key, row)| ObjectView::new(key, row))
            .collect();
        Ok((objects, found.next_cursor))
    })
    .await?;
    Ok(json_ok(
        &json!({ "objects": objects, "next_cursor": next_cursor }),
    ))
}

async fn remove(store: &Store, key: Key) -> Answer {
    let s = store.clone();
    let k = key.as_str().to_string();
    if blocking(move || s.remove(&[k])).await? == 0 {
        return Err(AdminError::NoSuchKey);
    }
    tracing::info!(key = %key, "object removed through the admin API");
    Ok(json_ok(&json!({ "key": key.as_str(), "removed": true })))
}

async fn pin(store: &Store, key: Key, pinned: bool) -> Answer {
    let s = store.clone();
    let k = key.clone();
    if !blocking(move || s.pin_by_operator(&k, pinned)).await? {
        return Err(AdminError::NoSuchKey);
    }
    tracing::info!(key = %key, pinned, "pin changed through the admin API");
    Ok(json_ok(&json!({ "key": key.as_str(), "pinned": pinned })))
}

async fn gc(store: &Store) -> Answer {
    let s = store.clone();
    Ok(json_ok(&blocking(move || s.gc()).await?))
}

async fn verify(state: &HttpState, wait: bool) -> Answer {
    let (run, outcome) = state
        .admin
        .verify
        .start()
        .map_err(|_| AdminError::Busy("verify"))?;
    if !wait {
        return Ok(HttpResponse::Accepted().json(json!({ "started": true, "run": run })));
    }
    match outcome.await {
        Ok(Ok(report)) => Ok(json_ok(&report)),
        Ok(Err(e)) => Err(AdminError::Task(e)),
        Err(_) => Err(AdminError::Task(
            "the verify run ended without an outcome".into(),
        )),
    }
}

/// `POST /admin/sync[?dry_run][&wait]`: start a run (202 with its number), or run it and answer its
/// report; 409 while another run is going.
async fn sync(state: &HttpState, run: query::RunQuery) -> Answer {
    let failed = |e| match e {
        SyncRunError::Busy => AdminError::Busy("sync"),
        SyncRunError::Failed(e) => AdminError::Upstream(e),
    };
    if run.wait {
        let report = state.admin.sync.run(run.dry_run).await.map_err(failed)?;
        return Ok(json_ok(&report));
    }
    let n = state.admin.sync.start(run.dry_run).map_err(failed)?;
    Ok(HttpResponse::Accepted().json(json!({ "started": true, "run": n, "dry_run": run.dry_run })))
}

/// `POST /admin/registry/prefetch[?image=…][&wait]`: a run of the images named (the configured list
/// when none is), started (202 with its number) or waited for; 409 while another run is going.
async fn prefetch(state: &HttpState, q: query::PrefetchQuery) -> Answer {
    let failed = |e| match e {
        PrefetchRunError::Busy => AdminError::Busy("prefetch"),
        PrefetchRunError::Refused(e) => AdminError::BadRequest(e),
    };
    if q.wait {
        let report = state.admin.prefetch.run(&q.images).await.map_err(failed)?;
        return Ok(json_ok(&report));
    }
    let n = state.admin.prefetch.start(&q.images).map_err(failed)?;
    Ok(HttpResponse::Accepted().json(json!({ "started": true, "run": n })))
}

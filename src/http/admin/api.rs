//! The JSON admin API, top to bottom: route, parse the query strictly, act, answer JSON. Store work
//! runs on the blocking pool. Errors are `{"error": "..."}` with a status that says whose fault it is.

use super::SyncRunError;
use super::query::{self, ObjectsQuery};
use super::view::{self, ObjectView};
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
    ("/admin/store/gc", "POST"),
    ("/admin/store/verify", "GET, POST"),
];

pub async fn handle(req: &HttpRequest, state: &HttpState) -> HttpResponse {
    let q = req.query_string();
    let post = req.method() == "POST";
    let answer = route(req, state, q, post).await;
    if post || req.method() == "DELETE" {
        state.admin.forget_summary().await;
    }
    answer
}

async fn route(req: &HttpRequest, state: &HttpState, q: &str, post: bool) -> HttpResponse {
    match (req.method().as_str(), req.path()) {
        ("GET", "/admin/status") => match query::none(q) {
            Ok(()) => json_ok(&view::gather(state).await),
            Err(e) => bad(&e),
        },
        ("GET", "/admin/objects") => match query::objects(q) {
            Ok(q) => list(&state.store, q).await,
            Err(e) => bad(&e),
        },
        ("DELETE", "/admin/objects") => match query::key(q).and_then(parse_key) {
            Ok(key) => remove(&state.store, key).await,
            Err(e) => bad(&e),
        },
        ("POST" | "DELETE", "/admin/objects/pin") => match query::key(q).and_then(parse_key) {
            Ok(key) => pin(&state.store, key, post).await,
            Err(e) => bad(&e),
        },
        ("GET", "/admin/fills") => match query::none(q) {
            Ok(()) => json_ok(&view::fills(state)),
            Err(e) => bad(&e),
        },
        ("GET", "/admin/peers") => match query::none(q) {
            Ok(()) => {
                let (node, peers) = view::peers(state);
                json_ok(&json!({ "node": node, "peers": peers }))
            }
            Err(e) => bad(&e),
        },
        ("GET", "/admin/sync") => match query::none(q) {
            Ok(()) => json_ok(&state.admin.sync.status()),
            Err(e) => bad(&e),
        },
        ("POST", "/admin/sync") => match query::run(q) {
            Ok(run) => sync(state, run).await,
            Err(e) => bad(&e),
        },
        ("POST", "/admin/store/gc") => match query::none(q) {
            Ok(()) => gc(&state.store).await,
            Err(e) => bad(&e),
        },
        ("GET", "/admin/store/verify") => match query::none(q) {
            Ok(()) => json_ok(&state.admin.verify.status()),
            Err(e) => bad(&e),
        },
        ("POST", "/admin/store/verify") => match query::run(q) {
            Ok(run) if run.dry_run => bad("verify has no dry run"),
            Ok(run) => verify(state, run.wait).await,
            Err(e) => bad(&e),
        },
        (_, path) => match ROUTES.iter().find(|(p, _)| *p == path) {
            Some((_, allow)) => {
                let mut r = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
                r.headers_mut()
                    .insert(header::ALLOW, header::HeaderValue::from_static(allow));
                r
            }
            None => error(
                StatusCode::NOT_FOUND,
                "no such admin route; see the README's admin API section",
            ),
        },
    }
}

fn bad(message: &str) -> HttpResponse {
    error(StatusCode::BAD_REQUEST, message)
}

fn json_ok<T: Serialize>(v: &T) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(v)
}

fn error(status: StatusCode, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(json!({ "error": message }))
}

fn parse_key(text: String) -> Result<Key, String> {
    Key::parse(&text)
        .map_err(|e| format!("`key` is not a store key ({e}); copy it from GET /admin/objects"))
}

/// Store failures are ours, not the client's.
fn store_failed(e: &StoreError) -> HttpResponse {
    tracing::error!(error = %e, "admin API: store operation failed");
    error(StatusCode::INTERNAL_SERVER_ERROR, &format!("store: {e}"))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, HttpResponse> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(store_failed(&e)),
        Err(e) => Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("admin task failed: {e}"),
        )),
    }
}

/// `GET /admin/objects`: key order, `limit` per page, `next_cursor` to go on (null at the end).
async fn list(store: &Store, q: ObjectsQuery) -> HttpResponse {
    let store = store.clone();
    let page = blocking(move || {
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
    .await;
    match page {
        Ok((objects, next_cursor)) => {
            json_ok(&json!({ "objects": objects, "next_cursor": next_cursor }))
        }
        Err(r) => r,
    }
}

async fn remove(store: &Store, key: Key) -> HttpResponse {
    let s = store.clone();
    let k = key.as_str().to_string();
    match blocking(move || s.remove(&[k])).await {
        Ok(0) => error(StatusCode::NOT_FOUND, "no such key"),
        Ok(_) => {
            tracing::info!(key = %key, "object removed through the admin API");
            json_ok(&json!({ "key": key.as_str(), "removed": true }))
        }
        Err(r) => r,
    }
}

async fn pin(store: &Store, key: Key, pinned: bool) -> HttpResponse {
    let s = store.clone();
    let k = key.clone();
    match blocking(move || s.pin_by_operator(&k, pinned)).await {
        Ok(false) => error(StatusCode::NOT_FOUND, "no such key"),
        Ok(true) => {
            tracing::info!(key = %key, pinned, "pin changed through the admin API");
            json_ok(&json!({ "key": key.as_str(), "pinned": pinned }))
        }
        Err(r) => r,
    }
}

async fn gc(store: &Store) -> HttpResponse {
    let s = store.clone();
    match blocking(move || s.gc()).await {
        Ok(report) => json_ok(&report),
        Err(r) => r,
    }
}

async fn verify(state: &HttpState, wait: bool) -> HttpResponse {
    let (run, outcome) = match state.admin.verify.start() {
        Ok(started) => started,
        Err(crate::lifecycle::Busy) => {
            return error(StatusCode::CONFLICT, "a verify is already running");
        }
    };
    if !wait {
        return HttpResponse::Accepted().json(json!({ "started": true, "run": run }));
    }
    match outcome.await {
        Ok(Ok(report)) => json_ok(&report),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, &e),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the verify run ended without an outcome",
        ),
    }
}

/// `POST /admin/sync[?dry_run][&wait]`: start a run (202 with its number), or run it and answer its
/// report; 409 while another run is going.
async fn sync(state: &HttpState, run: query::RunQuery) -> HttpResponse {
    let busy = || error(StatusCode::CONFLICT, "a sync is already running");
    if run.wait {
        return match state.admin.sync.run(run.dry_run).await {
            Ok(report) => json_ok(&report),
            Err(SyncRunError::Busy) => busy(),
            Err(SyncRunError::Failed(e)) => error(StatusCode::BAD_GATEWAY, &e),
        };
    }
    match state.admin.sync.start(run.dry_run) {
        Ok(n) => HttpResponse::Accepted()
            .json(json!({ "started": true, "run": n, "dry_run": run.dry_run })),
        Err(SyncRunError::Busy) => busy(),
        Err(SyncRunError::Failed(e)) => error(StatusCode::BAD_GATEWAY, &e),
    }
}

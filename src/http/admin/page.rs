//! The status page as HTML. Pure: a `StatusView` in, markup out, every piece of text escaped.
//!
//! The page is complete without JavaScript; `status.js` only re-fetches the `#live` fragment (rendered
//! here too, by the same function) and swaps it in, so there is one renderer and one escaping rule.

use super::fmt::{bytes, duration, escape, percent, when};
use super::view::{FillView, StatusView};
use crate::lifecycle::{WorkerInfo, WorkerState};
use crate::store::summary::Entry;
use std::fmt::Write;

/// How often the script refreshes the live part, shown on the page so the reader knows.
pub const REFRESH_SECS: u64 = 2;

pub fn full(v: &StatusView) -> String {
    let node = v.node.address.as_deref().unwrap_or("this node");
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>image-cache · {node}</title><link rel=\"stylesheet\" href=\"/status/style.css\"></head>\
         <body><header><h1>image-cache</h1><p>version {version} · <span id=\"refresh\">this page refreshes \
         every {REFRESH_SECS}s with JavaScript; reload it otherwise</span></p></header>\
         <main id=\"live\" data-src=\"/status/live\" data-every=\"{every}\">{live}</main>\
         <footer><a href=\"/metrics\">metrics</a> · <a href=\"/admin/status\">JSON</a> · \
         <a href=\"/health\">health</a></footer>\
         <script src=\"/status/script.js\"></script></body></html>\n",
        node = escape(node),
        version = escape(v.version),
        every = REFRESH_SECS * 1000,
        live = live(v),
    )
}

/// The part that changes: everything below the header.
pub fn live(v: &StatusView) -> String {
    let mut h = String::with_capacity(8192);
    nodes(&mut h, v);
    store(&mut h, v);
    hit_ratio(&mut h, v);
    fills(&mut h, &v.fills);
    sync(&mut h, v);
    prefetch(&mut h, v);
    registries(&mut h, v);
    upstream_deleted(&mut h, v);
    objects(&mut h, "largest", "Largest objects", &v.objects.largest);
    objects(
        &mut h,
        "most-requested",
        "Most requested objects",
        &v.objects.most_requested,
    );
    workers(&mut h, &v.workers);
    h
}

fn nodes(h: &mut String, v: &StatusView) {
    let state = |up: bool| if up { "up" } else { "down" };
    let _ = write!(
        h,
        "<section id=\"nodes\"><h2>Nodes</h2><table><thead><tr><th>node</th><th>role</th><th>state</th>\
         <th title=\"fills of keys it owns: served by it / went to the origin / cut mid-way\">fills through it</th></tr>\
         </thead><tbody><tr class=\"{cls}\"><td>{addr}</td><td>this node, up {uptime}</td><td>{st}{ready}</td><td></td></tr>",
        cls = state(v.node.healthy),
        addr = escape(v.node.address.as_deref().unwrap_or("(nodes.self not set)")),
        uptime = duration(v.node.uptime_secs),
        st = state(v.node.healthy),
        ready = if v.node.ready { "" } else { ", not ready" },
    );
    for p in &v.peers {
        let _ = write!(
            h,
            "<tr class=\"{s}\"><td>{}</td><td>peer</td><td>{s}</td><td>{} served · {} fell back · {} broken</td></tr>",
            escape(&p.address),
            p.served,
            p.fallback,
            p.broken,
            s = state(p.up)
        );
    }
    h.push_str("</tbody></table></section>");
}

fn store(h: &mut String, v: &StatusView) {
    let s = &v.store;
    let _ = write!(
        h,
        "<section id=\"store\"><h2>Store</h2><p><meter id=\"store-usage\" min=\"0\" max=\"{max}\" \
         high=\"{high}\" value=\"{bytes}\"></meter> {used} of {maxh} ({pct}) · {objects} objects · \
         {pinned} pinned</p></section>",
        max = s.max_bytes,
        high = s.max_bytes / 10 * 9,
        bytes = s.bytes,
        used = bytes(s.bytes),
        maxh = bytes(s.max_bytes),
        pct = percent(s.bytes, s.max_bytes),
        objects = s.objects,
        pinned = bytes(s.pinned_bytes),
    );
}

fn hit_ratio(h: &mut String, v: &StatusView) {
    let _ = write!(
        h,
        "<section id=\"hit-ratio\"><h2>Hit ratio, last {}</h2><table><thead><tr><th>kind</th>\
         <th>from the store</th><th>requests</th><th>ratio</th></tr></thead><tbody>",
        duration(v.hit_ratio.window_secs)
    );
    for k in &v.hit_ratio.kinds {
        let _ = write!(
            h,
            "<tr data-kind=\"{kind}\"><td>{kind}s</td><td>{hits}</td><td>{req}</td><td>\
             <meter min=\"0\" max=\"{max}\" value=\"{hits}\"></meter> {pct}</td></tr>",
            kind = escape(k.kind),
            hits = k.hits,
            req = k.requests,
            max = k.requests.max(1),
            pct = percent(k.hits, k.requests),
        );
    }
    h.push_str("</tbody></table></section>");
}

fn fills(h: &mut String, fills: &[FillView]) {
    let _ = write!(
        h,
        "<section id=\"fills\"><h2>Fills in flight ({})</h2>",
        fills.len()
    );
    if fills.is_empty() {
        h.push_str("<p>None: every request is being answered from the store.</p></section>");
        return;
    }
    h.push_str(
        "<table><thead><tr><th>key</th><th>progress</th><th>bytes</th><th>rate</th><th>ETA</th>\
         <th>clients</th></tr></thead><tbody>",
    );
    for f in fills {
        let key = escape(&f.key);
        let bar = match f.total {
            Some(total) if total > 0 => format!(
                "<progress class=\"fill\" data-key=\"{key}\" max=\"{total}\" value=\"{}\"></progress> {}",
                f.written.min(total),
                percent(f.written, total)
            ),
            // Length unknown (or still connecting): an indeterminate bar.
            _ => format!("<progress class=\"fill\" data-key=\"{key}\"></progress>"),
        };
        let total = f.total.map_or("?".to_string(), bytes);
        let eta = f.eta_secs.map_or("–".to_string(), duration);
        let _ = write!(
            h,
            "<tr><td class=\"key\">{key}</td><td>{bar}</td><td>{} of {total}</td><td>{}/s</td>\
             <td>{eta}</td><td>{}</td></tr>",
            bytes(f.written),
            bytes(f.rate),
            f.readers
        );
    }
    h.push_str("</tbody></table></section>");
}

fn sync(h: &mut String, v: &StatusView) {
    let s = &v.sync;
    let mut line = match &s.last {
        None => "no sync has run yet".to_string(),
        Some(r) => format!(
            "last run {} finished {}{}: {} planned, {} to download, {} failed, {} unpinned",
            r.run,
            when(r.finished_at),
            if r.dry_run { " (dry run)" } else { "" },
            r.items.len(),
            bytes(r.download_bytes),
            r.failed,
            r.unpinned
        ),
    };
    if s.running {
        let _ = write!(line, "; run {} is in progress", s.started);
    }
    if let Some(e) = &s.last_error {
        let _ = write!(line, "; the latest attempt failed: {e}");
    }
    let _ = write!(
        h,
        "<section id=\"sync\"><h2>metal-api sync</h2><p>{}</p>",
        escape(&line)
    );
    if let Some(r) = s.last.as_ref().filter(|r| !r.items.is_empty()) {
        h.push_str(
            "<table><thead><tr><th>name</th><th>kind</th><th>size</th><th>action</th><th>outcome</th>\
             </tr></thead><tbody>",
        );
        for i in &r.items {
            let outcome = match (i.ok, &i.message) {
                (Some(false), Some(m)) => format!("failed: {m}"),
                (_, Some(m)) => m.clone(),
                (_, None) => String::new(),
            };
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&i.name),
                escape(&i.kind),
                bytes(i.size),
                escape(&i.action),
                escape(&outcome)
            );
        }
        h.push_str("</tbody></table>");
    }
    h.push_str("</section>");
}

fn prefetch(h: &mut String, v: &StatusView) {
    let s = &v.prefetch;
    let mut line = match &s.last {
        None if s.started == 0 => {
            "no container image prefetch has run (registry.prefetch)".to_string()
        }
        None => String::new(),
        Some(r) => format!(
            "last run {} finished {}: {} images, {} failed, {} deferred, {} unpinned",
            r.run,
            when(r.finished_at),
            r.images.len(),
            r.failed,
            r.deferred,
            r.unpinned
        ),
    };
    if s.running {
        let _ = write!(
            line,
            "; run {} is in progress ({} of {})",
            s.started,
            bytes(s.done),
            bytes(s.total)
        );
    }
    if let Some(e) = &s.last_error {
        let _ = write!(line, "; the latest attempt failed: {e}");
    }
    let _ = write!(
        h,
        "<section id=\"prefetch\"><h2>Container image prefetch</h2><p>{}</p>",
        escape(&line)
    );
    if let Some(r) = s.last.as_ref().filter(|r| !r.images.is_empty()) {
        h.push_str(
            "<table><thead><tr><th>image</th><th>manifests</th><th>blobs</th><th>size</th><th>outcome</th>\
             </tr></thead><tbody>",
        );
        for i in &r.images {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&i.image),
                i.manifests,
                i.blobs,
                bytes(i.bytes),
                escape(&if i.ok || i.deferred {
                    i.message.clone()
                } else {
                    format!("failed: {}", i.message)
                })
            );
        }
        h.push_str("</tbody></table>");
    }
    h.push_str("</section>");
}

/// Each configured registry's standing: whether it rejects the cache's account, and its pull budget.
fn registries(h: &mut String, v: &StatusView) {
    if v.registries.is_empty() {
        return;
    }
    h.push_str(
        "<section id=\"registries\"><h2>Registries</h2><table><thead><tr><th>registry</th>\
         <th>access</th><th>pull budget</th></tr></thead><tbody>",
    );
    for r in &v.registries {
        let rejection = r
            .last_rejection
            .as_ref()
            .map(|x| format!("{} at {}: {}", x.status, when(x.at_ms / 1000), x.message));
        let access = match (&rejection, r.credentials_rejected) {
            (Some(x), true) => format!("REJECTED (stored content is still served) — {x}"),
            (Some(x), false) => format!("accepted since; last rejected {x}"),
            (None, _) => "accepted".to_string(),
        };
        let budget = match &r.budget {
            None => "not announced".to_string(),
            Some(b) => {
                let mut t = match b.reading.limit {
                    Some(l) => format!("{} of {l} left", b.reading.remaining),
                    None => format!("{} left", b.reading.remaining),
                };
                if let Some(w) = b.reading.window_secs {
                    let _ = write!(t, " per {}", duration(w));
                }
                let _ = write!(t, ", seen {}", when(b.seen_ms / 1000));
                if b.low {
                    let _ = write!(
                        t,
                        "; within the reserve of {}: only live pulls of new content spend it, \
                         revalidations and prefetch wait",
                        b.reserve
                    );
                }
                t
            }
        };
        let low = r.budget.as_ref().is_some_and(|b| b.low);
        let _ = write!(
            h,
            "<tr class=\"{}\"><td>{}</td><td>{}</td><td>{}</td></tr>",
            if r.credentials_rejected || low {
                "down"
            } else {
                "up"
            },
            escape(&r.registry),
            escape(&access),
            escape(&budget)
        );
    }
    h.push_str("</tbody></table></section>");
}

/// Objects their upstream answered 404/410 for: still served through `deleted_grace`, then removed
/// unless pinned.
fn upstream_deleted(h: &mut String, v: &StatusView) {
    let o = &v.objects;
    if o.upstream_deleted_keys == 0 {
        return;
    }
    let _ = write!(
        h,
        "<section id=\"upstream-deleted\"><h2>Deleted upstream</h2><p>{} objects the upstream no longer \
         has are served through their grace (deleted_grace), then removed unless pinned; pin what must \
         stay.</p><table><thead><tr><th>key</th><th>deleted upstream since</th><th>pinned</th></tr>\
         </thead><tbody>",
        o.upstream_deleted_keys
    );
    for d in &o.upstream_deleted {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&d.key),
            when(d.since_ms / 1000),
            if d.pinned { "yes, kept" } else { "no" }
        );
    }
    h.push_str("</tbody></table></section>");
}

fn workers(h: &mut String, list: &[WorkerInfo]) {
    h.push_str(
        "<section id=\"workers\"><h2>Background work</h2><table><thead><tr><th>worker</th><th>state</th>\
         <th>since</th><th>runs</th><th>failures</th><th>last error</th></tr></thead><tbody>",
    );
    for w in list {
        let state = match w.state {
            WorkerState::Idle => "idle",
            WorkerState::Busy => "busy",
            WorkerState::Done => "ended",
            WorkerState::Failed => "failed",
        };
        let _ = write!(
            h,
            "<tr class=\"{state}\"><td>{}</td><td>{state}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&w.name),
            when(w.since),
            w.runs,
            w.failures,
            escape(w.last_error.as_deref().unwrap_or(""))
        );
    }
    h.push_str("</tbody></table></section>");
}

fn objects(h: &mut String, id: &str, title: &str, list: &[Entry]) {
    let _ = write!(h, "<section id=\"{id}\"><h2>{title}</h2>");
    if list.is_empty() {
        h.push_str("<p>None yet.</p></section>");
        return;
    }
    h.push_str(
        "<table class=\"objects\"><thead><tr><th>key</th><th>size</th><th>hits</th><th>last access</th>\
         <th>pinned</th></tr></thead><tbody>",
    );
    for e in list {
        let _ = write!(
            h,
            "<tr><td class=\"key\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&e.key),
            bytes(e.size),
            e.hits,
            when(e.last_access),
            if e.pinned { "yes" } else { "no" }
        );
    }
    h.push_str("</tbody></table></section>");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::admin::view::*;
    use crate::lifecycle::RunStatus;
    use crate::store::summary::{Deleted, Summary};
    use crate::upstream::ratelimit::Reading;
    use crate::upstream::registry_health::{Budget, RegistryStanding, Rejection};

    fn view(key: &str) -> StatusView {
        let entry = Entry {
            key: key.to_string(),
            size: 2048,
            hits: 3,
            last_access: 0,
            pinned: true,
        };
        StatusView {
            version: "0.1.0",
            node: NodeView {
                address: Some("10.0.0.1".into()),
                healthy: true,
                ready: true,
                uptime_secs: 61,
            },
            peers: vec![PeerView {
                address: "10.0.0.2".into(),
                up: false,
                served: 7,
                fallback: 2,
                broken: 1,
            }],
            store: StoreView {
                objects: 1,
                bytes: 2048,
                max_bytes: 4096,
                pinned_bytes: 2048,
            },
            hit_ratio: HitRatioView {
                window_secs: 3600,
                kinds: vec![KindRatio {
                    kind: "file",
                    hits: 1,
                    requests: 4,
                }],
            },
            fills: vec![FillView {
                key: key.to_string(),
                written: 500,
                total: Some(1000),
                readers: 2,
                elapsed_ms: 1000,
                rate: 500,
                eta_secs: Some(1),
            }],
            sync: RunStatus {
                running: true,
                started: 8,
                finished: 7,
                last: Some(SyncRunView {
                    run: 7,
                    started_at: 0,
                    finished_at: 0,
                    dry_run: false,
                    items: vec![SyncItemView {
                        name: key.to_string(),
                        kind: "image".into(),
                        url: format!("http://images.test/{key}"),
                        size: 4096,
                        action: "download".into(),
                        ok: Some(false),
                        message: Some(format!("md5 of {key} differs")),
                    }],
                    skipped: Vec::new(),
                    total_bytes: 4096,
                    download_bytes: 4096,
                    over_budget: None,
                    unpinned: 2,
                    failed: 1,
                }),
                last_error: Some(key.to_string()),
                ..RunStatus::default()
            },
            prefetch: RunStatus {
                last: Some(PrefetchRunView {
                    run: 2,
                    started_at: 0,
                    finished_at: 0,
                    configured: true,
                    images: vec![
                        PrefetchImageView {
                            image: format!("docker.io/library/{key}:1"),
                            ok: false,
                            deferred: false,
                            message: format!("manifests/{key}: answered 404"),
                            manifests: 1,
                            blobs: 0,
                            bytes: 0,
                        },
                        PrefetchImageView {
                            image: "docker.io/library/later:1".into(),
                            ok: false,
                            deferred: true,
                            message: "deferred: docker.io has 3 pulls left".into(),
                            manifests: 0,
                            blobs: 0,
                            bytes: 0,
                        },
                    ],
                    unpinned: 0,
                    failed: 1,
                    deferred: 1,
                }),
                ..RunStatus::default()
            },
            workers: vec![WorkerInfo {
                name: format!("sync run {key}"),
                state: WorkerState::Busy,
                runs: 3,
                failures: 1,
                last_error: Some(key.to_string()),
                since: 0,
            }],
            objects: Summary {
                largest: vec![entry.clone()],
                most_requested: vec![entry],
                pinned_bytes: 2048,
                pinned_keys: 1,
                upstream_deleted: vec![Deleted {
                    key: key.to_string(),
                    since_ms: 0,
                    pinned: true,
                }],
                upstream_deleted_keys: 4,
            },
            registries: vec![RegistryStanding {
                registry: "docker.io".into(),
                credentials_rejected: true,
                last_rejection: Some(Rejection {
                    at_ms: 0,
                    status: 401,
                    message: format!("UNAUTHORIZED {key}"),
                    count: 2,
                }),
                budget: Some(Budget {
                    reading: Reading {
                        limit: Some(100),
                        remaining: 3,
                        window_secs: Some(21600),
                        reset_secs: None,
                    },
                    seen_ms: 0,
                    reserve: 20,
                    low: true,
                }),
            }],
        }
    }

    #[test]
    fn every_part_is_rendered() {
        let html = full(&view("file:a.test/x.img"));
        for needle in [
            "<main id=\"live\"",
            "<meter id=\"store-usage\" min=\"0\" max=\"4096\"",
            "2.0 KiB of 4.0 KiB (50.0%)",
            "<progress class=\"fill\" data-key=\"file:a.test/x.img\" max=\"1000\" value=\"500\">",
            "500 B/s",
            "<td>files</td><td>1</td><td>4</td>",
            "25.0%",
            "<tr class=\"down\"><td>10.0.0.2</td><td>peer</td><td>down</td><td>7 served · 2 fell back · 1 broken</td></tr>",
            "this node, up 1m 1s",
            "<section id=\"largest\">",
            "<section id=\"most-requested\">",
            "<script src=\"/status/script.js\">",
            "Hit ratio, last 1h 0m",
            "last run 7 finished",
            "1 planned, 4.0 KiB to download, 1 failed, 2 unpinned; run 8 is in progress",
            "<td>image</td><td>4.0 KiB</td><td>download</td><td>failed: md5 of",
            "<section id=\"workers\">",
            "<td>busy</td>",
            "<tr class=\"down\"><td>docker.io</td><td>REJECTED (stored content is still served) — 401 at",
            "3 of 100 left per 6h 0m",
            "within the reserve of 20",
            "<section id=\"upstream-deleted\">",
            "4 objects the upstream no longer has",
            "yes, kept",
            "1 failed, 1 deferred, 0 unpinned",
            "<td>deferred: docker.io has 3 pulls left</td>",
        ] {
            assert!(html.contains(needle), "missing {needle}");
        }
        assert!(full(&view("k")).starts_with("<!doctype html>"));
        assert!(!live(&view("k")).contains("<html"));
    }

    #[test]
    fn hostile_keys_are_escaped_everywhere() {
        let evil = "file:a.test/<script>alert(1)</script>\"'&";
        let html = full(&view(evil));
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(!html.contains("data-key=\"file:a.test/<"));
        assert_eq!(html.matches("<script").count(), 1);
        assert!(
            !html.contains("<td>sync run file:a.test/<"),
            "worker names are escaped"
        );
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#39;&amp;"));
    }

    #[test]
    fn unknown_length_fill_gets_an_indeterminate_bar() {
        let mut v = view("k");
        v.fills[0].total = None;
        v.fills[0].eta_secs = None;
        let html = live(&v);
        assert!(html.contains("<progress class=\"fill\" data-key=\"k\"></progress>"));
        assert!(html.contains("500 B of ?"));
    }
}

//! Carrying out a plan: each item is filled through the store's own fills (a client asking for the same
//! file joins the same download), verified against its sidecar's md5, its sidecar stored next to it;
//! then what the plan keeps is pinned and every other sync pin released.

use super::origin::{self, Download};
use super::planner::{Action, Item, Plan};
use super::{Outcome, key_for};
use crate::config::DomainConfig;
use crate::metrics::Metrics;
use crate::peers::{Asker, PeerAsk, Peers};
use crate::store::{Access, Expected, FillSpec, Phase, Plan as StorePlan, Store};
use crate::upstream::{self, Upstream};
use std::collections::HashSet;

/// The store, the origins and the partition's nodes, as the executor uses them.
pub(super) struct Executor<'a> {
    pub store: &'a Store,
    pub upstream: &'a Upstream,
    pub peers: &'a Peers,
    pub metrics: &'a Metrics,
    pub domains: &'a [DomainConfig],
    pub allow_http: bool,
}

impl Executor<'_> {
    /// Makes one planned item present: fill it (verified against its md5) when the plan says so, and its
    /// sidecar when it has one and the store lacks it.
    pub(super) async fn realise(&self, item: &Item) -> Outcome {
        let outcome = |ok: bool, message: String| Outcome {
            name: item.name.clone(),
            url: item.url.clone(),
            ok,
            message,
        };
        let download = match origin::download(&item.url, self.domains, self.allow_http) {
            Ok(d) => d,
            Err(refused) => return outcome(false, refused.to_string()),
        };
        if item.action == Action::Download {
            let expected = Expected {
                size: (item.size > 0).then_some(item.size),
                sha256: None,
                md5: item.md5.as_deref().and_then(md5_bytes),
            };
            if let Err(e) = self.fill(&download, expected, item.md5.as_deref()).await {
                return outcome(false, e);
            }
        }
        if item.md5.is_some() {
            let sidecar_url = format!("{}.md5", item.url);
            let sidecar = match origin::download(&sidecar_url, self.domains, self.allow_http) {
                Ok(d) => d,
                Err(refused) => return outcome(false, format!("sidecar: {refused}")),
            };
            let have = self.store.get(&sidecar.key).ok().flatten().is_some();
            if (!have || item.action == Action::Download)
                && let Err(e) = self.fill(&sidecar, Expected::default(), None).await
            {
                return outcome(false, format!("sidecar: {e}"));
            }
        }
        let verb = if item.action == Action::Download {
            "downloaded"
        } else {
            "kept"
        };
        outcome(true, verb.into())
    }

    /// Fills a download and waits for the end: from the key's owner when another node owns it (so the
    /// partition downloads it once, however many nodes sync), else from the origin. A client fill
    /// already running for the key is joined; its result is then checked against `md5` here (it was
    /// only length-checked). What is stored by now and matches (a client's or a peer's fill since the
    /// plan was made) is kept and pinned, not downloaded again.
    async fn fill(
        &self,
        download: &Download,
        expected: Expected,
        md5: Option<&str>,
    ) -> Result<(), String> {
        let key = &download.key;
        let origin = upstream::source::get_kind(
            self.upstream.clone(),
            download.url.clone(),
            "sync",
            None,
            None,
        );
        // Through the key's owner like a client's miss (`peers::route`), when the URL is an intercepted
        // domain's: a file the sync and the machines both want is downloaded once per partition.
        let (source, peer_wait) = if download.intercepted {
            self.peers.source(
                self.upstream,
                self.metrics,
                Asker::Client,
                key.as_str(),
                origin,
                |peer, waiting| {
                    PeerAsk::file(
                        peer,
                        &download.host,
                        &download.path.to_url_path(),
                        None,
                        self.peers.timeout(),
                        waiting,
                    )
                },
            )
        } else {
            (origin, None)
        };
        // A copy a client stored since the plan was made carries no md5 yet: give it one to compare.
        if md5.is_some()
            && let Err(e) = self.store.ensure_md5(key).await
        {
            tracing::warn!(key = %key, error = %e, "cannot read a stored copy's md5");
        }
        let size = expected.size;
        let usable = |row: &crate::store::ObjectRow| match md5 {
            Some(want) => row.md5.as_deref() == Some(want),
            None => size.is_none_or(|size| size == row.size),
        };
        let spec = FillSpec {
            expected,
            source,
            want_md5: true,
            peer_wait,
            pin: true,
        };
        let access = self
            .store
            .access(key, move |row| match row {
                Some(row) if usable(row) => StorePlan::Skip,
                _ => StorePlan::Fill(spec),
            })
            .map_err(|e| e.to_string())?;
        let fill = match access {
            Access::Fill { fill, .. } => fill,
            Access::Skipped => return self.keep(key),
            _ => return Err("the store did not start a fill".into()),
        };
        match fill.finished().await {
            Phase::Complete { row } => match md5 {
                // A client's fill joined here computed no md5.
                Some(want) if row.md5.is_none() => match self.store.ensure_md5(key).await {
                    Ok(Some(got)) if got == want => self.keep(key),
                    Ok(got) => {
                        let _ = self.store.remove(&[key.as_str().to_string()]);
                        Err(format!(
                            "md5 mismatch: sidecar says {want}, content is {}",
                            got.unwrap_or_default()
                        ))
                    }
                    Err(e) => Err(e.to_string()),
                },
                Some(want) if row.md5.as_deref() != Some(want) => {
                    let _ = self.store.remove(&[key.as_str().to_string()]);
                    Err(format!(
                        "md5 mismatch: sidecar says {want}, content is {}",
                        row.md5.unwrap_or_default()
                    ))
                }
                // A client's fill joined here committed unpinned: pin it now.
                _ => self.keep(key),
            },
            Phase::Failed(f) => Err(f.to_string()),
            other => Err(format!("fill ended as {other:?}")),
        }
    }

    /// Pins a stored key, and makes sure it is still there (it could only be gone if it was evicted
    /// between its commit and now).
    fn keep(&self, key: &crate::store::Key) -> Result<(), String> {
        match self.store.set_pinned(key, true) {
            Ok(true) => Ok(()),
            Ok(false) => Err(
                "stored, then evicted at once: cache.max_size is too small for what the plan keeps"
                    .into(),
            ),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Pins every planned key that is stored now, with its sidecar — and the stored copies of what could
    /// not be asked about (origin down): they are kept, not given up. Returns the keys it pinned. Runs
    /// before the downloads (so what the plan keeps cannot be evicted to make room for them; the
    /// downloads themselves commit pinned) and again after them.
    pub(super) fn pin_planned(
        &self,
        plan: &Plan,
    ) -> Result<HashSet<String>, crate::store::StoreError> {
        let mut keep = HashSet::new();
        let listed = plan
            .items
            .iter()
            .map(|i| (&i.url, i.md5.is_some()))
            .chain(plan.failed.iter().map(|f| (&f.url, true)));
        for (url, with_sidecar) in listed {
            let sidecar = with_sidecar.then(|| format!("{url}.md5"));
            for url in std::iter::once(url).chain(sidecar.as_ref()) {
                if let Some(key) = key_for(url)
                    && self.store.set_pinned(&key, true)?
                {
                    keep.insert(key.as_str().to_string());
                }
            }
        }
        Ok(keep)
    }

    /// After the run: pins what the plan keeps, then unpins every other key the sync pinned, so
    /// eviction may reclaim what metal-api no longer lists. Keys an operator pinned stay pinned.
    pub(super) fn repin(&self, plan: &Plan) -> Result<usize, crate::store::StoreError> {
        let keep = self.pin_planned(plan)?;
        let mut unpinned = 0;
        let mut cursor: Option<String> = None;
        loop {
            let page = self.store.list("file:", cursor.as_deref(), 1000)?;
            let Some((last, _)) = page.last() else {
                break;
            };
            cursor = Some(last.clone());
            for (key, row) in &page {
                if row.pinned && !row.operator_pin && !keep.contains(key) {
                    if let Ok(k) = crate::store::Key::parse(key) {
                        self.store.set_pinned(&k, false)?;
                    }
                    unpinned += 1;
                }
            }
            if page.len() < 1000 {
                break;
            }
        }
        Ok(unpinned)
    }
}

fn md5_bytes(hex_md5: &str) -> Option<[u8; 16]> {
    let v = hex::decode(hex_md5).ok()?;
    v.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_text_to_bytes() {
        assert_eq!(
            md5_bytes("d41d8cd98f00b204e9800998ecf8427e").map(|b| b[0]),
            Some(0xd4)
        );
        assert_eq!(md5_bytes("d41d"), None);
        assert_eq!(md5_bytes("zz1d8cd98f00b204e9800998ecf8427e"), None);
    }
}

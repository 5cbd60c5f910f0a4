//! The store's API driven directly, with in-memory sources whose bytes, timing and failures the test
//! controls: coalescing, verification, aborted fills, eviction while a fill runs, pins.

use super::*;
use bytes::Bytes;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;

struct TestStore {
    store: Store,
    dir: tempfile::TempDir,
}

fn open(max_size: u64) -> TestStore {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(
        dir.path(),
        max_size,
        Metrics::new(),
        tokio::runtime::Handle::current(),
    )
    .unwrap();
    TestStore { store, dir }
}

impl TestStore {
    fn tmp_files(&self) -> usize {
        std::fs::read_dir(self.dir.path().join("tmp"))
            .unwrap()
            .count()
    }
}

fn key(name: &str) -> Key {
    Key::parse(&format!("file:files.test/{name}")).unwrap()
}

fn content(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
}

/// A source fed by the test through a channel: every item is a chunk or an error.
fn fed(
    length: Option<u64>,
    calls: Arc<AtomicUsize>,
) -> (mpsc::Sender<Result<Bytes, SourceError>>, SourceFuture) {
    let (tx, mut rx) = mpsc::channel::<Result<Bytes, SourceError>>(64);
    let source: SourceFuture = Box::pin(async move {
        calls.fetch_add(1, Ordering::SeqCst);
        let body: SourceBody = Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)));
        SourceOutcome::Body {
            meta: SourceMeta {
                content_length: length,
                ..SourceMeta::default()
            },
            body,
        }
    });
    (tx, source)
}

/// A source that answers at once with the whole body.
fn whole(data: Vec<u8>) -> SourceFuture {
    Box::pin(async move {
        let len = data.len() as u64;
        let body: SourceBody = Box::pin(futures_util::stream::iter([Ok(Bytes::from(data))]));
        SourceOutcome::Body {
            meta: SourceMeta {
                content_length: Some(len),
                ..SourceMeta::default()
            },
            body,
        }
    })
}

fn fill_plan(source: SourceFuture, expected: Expected) -> Plan {
    Plan::Fill(FillSpec {
        expected,
        source,
        want_md5: false,
        peer_wait: None,
        pin: false,
    })
}

async fn read_all(fill: &Arc<Fill>) -> Result<Vec<u8>, ReadError> {
    let mut r = fill.reader(0, None);
    let mut out = Vec::new();
    while let Some(chunk) = r.next_chunk().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

async fn store_whole(s: &Store, k: &Key, data: Vec<u8>) -> ObjectRow {
    let Access::Fill { fill, .. } = s
        .access(k, |_| fill_plan(whole(data), Expected::default()))
        .unwrap()
    else {
        panic!("expected a fill");
    };
    match fill.finished().await {
        Phase::Complete { row } => row,
        other => panic!("fill ended as {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_share_one_source_and_every_reader_gets_every_byte() {
    let t = open(1 << 30);
    let data = content(700_000, 1);
    let calls = Arc::new(AtomicUsize::new(0));
    let (tx, source) = fed(Some(data.len() as u64), Arc::clone(&calls));
    let k = key("shared.img");
    let Access::Fill {
        fill: first,
        coalesced: false,
    } = t
        .store
        .access(&k, |row| {
            assert!(row.is_none());
            fill_plan(source, Expected::default())
        })
        .unwrap()
    else {
        panic!("the first miss starts the fill");
    };
    // Ten more misses while the fill runs: each joins it, none asks for a source.
    let mut joined = Vec::new();
    for _ in 0..10 {
        match t
            .store
            .access(&k, |_| panic!("a running fill is joined, not re-planned"))
            .unwrap()
        {
            Access::Fill {
                fill,
                coalesced: true,
            } => joined.push(fill),
            _ => panic!("expected to join the running fill"),
        }
    }
    let readers: Vec<_> = std::iter::once(first)
        .chain(joined)
        .map(|f| tokio::spawn(async move { read_all(&f).await }))
        .collect();
    for chunk in data.chunks(50_000) {
        tx.send(Ok(Bytes::copy_from_slice(chunk))).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    drop(tx);
    for r in readers {
        assert_eq!(r.await.unwrap().unwrap(), data);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // Now a hit, served from the blob.
    settle(&t.store).await;
    let Access::Hit(hit) = t.store.access(&k, |_| Plan::Serve).unwrap() else {
        panic!("expected a hit after the fill");
    };
    assert_eq!(hit.row.size, data.len() as u64);
    assert_eq!(hit.row.digest.hex(), hex::encode(sha2_digest(&data)));
    assert_eq!(t.tmp_files(), 0);
}

/// Waits until no fill is in flight (a fill reports its end just before it leaves the in-flight map).
async fn settle(store: &Store) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !store.fills().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn sha2_digest(data: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(data).into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_fails_verification_is_never_stored_and_readers_never_see_its_end() {
    let t = open(1 << 30);
    let data = content(300_000, 2);
    let wrong = Digest::from_bytes([7; 32]);
    let k = key("wrong.img");
    let Access::Fill { fill, .. } = t
        .store
        .access(&k, |_| {
            fill_plan(
                whole(data.clone()),
                Expected {
                    sha256: Some(wrong),
                    ..Expected::default()
                },
            )
        })
        .unwrap()
    else {
        panic!("expected a fill");
    };
    let mut r = fill.reader(0, None);
    let mut delivered = 0usize;
    let error = loop {
        match r.next_chunk().await {
            Some(Ok(c)) => delivered += c.len(),
            Some(Err(e)) => break e,
            None => panic!("a reader of an unverified body must not see its end"),
        }
    };
    assert!(delivered < data.len(), "the last byte is held back");
    assert!(
        matches!(
            error,
            ReadError::Failed {
                failure: FillFailure::Integrity(_),
                ..
            }
        ),
        "{error}"
    );
    assert!(matches!(
        fill.finished().await,
        Phase::Failed(FillFailure::Integrity(_))
    ));
    assert!(t.store.get(&k).unwrap().is_none());
    assert_eq!(t.store.total_bytes(), 0);
    assert_eq!(t.tmp_files(), 0, "the temp file is removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_breaks_mid_body_aborts_readers_and_stores_nothing() {
    let t = open(1 << 30);
    let data = content(400_000, 3);
    let (tx, source) = fed(Some(data.len() as u64), Arc::default());
    let k = key("broken.img");
    let Access::Fill { fill, .. } = t
        .store
        .access(&k, |_| fill_plan(source, Expected::default()))
        .unwrap()
    else {
        panic!("expected a fill");
    };
    let reader = {
        let f = Arc::clone(&fill);
        tokio::spawn(async move { read_all(&f).await })
    };
    tx.send(Ok(Bytes::copy_from_slice(&data[..100_000])))
        .await
        .unwrap();
    tx.send(Err(SourceError::Reset("connection reset".into())))
        .await
        .unwrap();
    let got = reader.await.unwrap();
    assert!(
        matches!(
            &got,
            Err(ReadError::Failed {
                failure: FillFailure::Upstream(SourceError::Reset(_)),
                delivered_to
            }) if *delivered_to < 100_000
        ),
        "{got:?}"
    );
    assert!(t.store.get(&k).unwrap().is_none());
    assert_eq!(t.tmp_files(), 0);
    // The next miss starts a fresh fill, which succeeds.
    let row = store_whole(&t.store, &k, data.clone()).await;
    assert_eq!(row.size, data.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_spares_pins_and_the_key_being_filled() {
    let t = open(1_000_000);
    let pinned = key("pinned.img");
    let old = key("old.img");
    store_whole(&t.store, &pinned, content(300_000, 4)).await;
    store_whole(&t.store, &old, content(300_000, 5)).await;
    assert!(t.store.set_pinned(&pinned, true).unwrap());

    // A fill of a third key is running while eviction runs.
    let data = content(300_000, 6);
    let (tx, source) = fed(Some(data.len() as u64), Arc::default());
    let filling = key("filling.img");
    let Access::Fill { fill, .. } = t
        .store
        .access(&filling, |_| fill_plan(source, Expected::default()))
        .unwrap()
    else {
        panic!("expected a fill");
    };
    tx.send(Ok(Bytes::copy_from_slice(&data[..150_000])))
        .await
        .unwrap();
    let report = t.store.evict_to(0).unwrap();
    assert_eq!(report.evicted_keys, 1, "only the unpinned, idle key goes");
    assert!(t.store.get(&old).unwrap().is_none());
    assert!(t.store.get(&pinned).unwrap().is_some());

    tx.send(Ok(Bytes::copy_from_slice(&data[150_000..])))
        .await
        .unwrap();
    drop(tx);
    assert!(matches!(fill.finished().await, Phase::Complete { .. }));
    settle(&t.store).await;
    let Access::Hit(hit) = t.store.access(&filling, |_| Plan::Serve).unwrap() else {
        panic!("the filled key is stored");
    };
    assert_eq!(
        fs::read_at(&hit.file, 0, data.len()).unwrap(),
        data,
        "its blob is whole"
    );
    // A pin belongs to the key: new content under it stays pinned.
    store_whole(&t.store, &pinned, content(1000, 7)).await;
    assert!(t.store.get(&pinned).unwrap().unwrap().pinned);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_refuses_leaves_no_trace_and_no_running_fill() {
    let t = open(1 << 30);
    let k = key("refused.img");
    let Access::Fill { fill, .. } = t
        .store
        .access(&k, |_| {
            fill_plan(
                Box::pin(async {
                    SourceOutcome::Unavailable(SourceError::Status {
                        status: 404,
                        message: "not found".into(),
                    })
                }),
                Expected::default(),
            )
        })
        .unwrap()
    else {
        panic!("expected a fill");
    };
    assert!(matches!(
        fill.head().await,
        Phase::Failed(FillFailure::Upstream(SourceError::Status {
            status: 404,
            ..
        }))
    ));
    assert!(t.store.fills().is_empty());
    assert!(matches!(
        t.store.access(&k, |_| Plan::Skip).unwrap(),
        Access::Skipped
    ));
}

/// Whoever saw a fill end and asks again starts afresh: an ended fill is off the in-flight map before its
/// waiters learn the ending, so a request right after a failed fill is not answered with that failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_after_a_failed_fill_never_joins_it() {
    let t = open(1 << 30);
    for i in 0..300 {
        let k = key(&format!("refused-{i}.img"));
        let Access::Fill { fill, .. } = t
            .store
            .access(&k, |_| {
                fill_plan(
                    Box::pin(async {
                        SourceOutcome::Unavailable(SourceError::Refused("gzip".into()))
                    }),
                    Expected::default(),
                )
            })
            .unwrap()
        else {
            panic!("expected a fill");
        };
        assert!(matches!(fill.head().await, Phase::Failed(_)));
        let again = t.store.access(&k, |_| Plan::Skip).unwrap();
        assert!(
            matches!(again, Access::Skipped),
            "request {i} after the failure joined the ended fill"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eviction_unlinks_outside_the_lock_every_request_takes() {
    let t = open(1 << 30);
    for i in 0..6u8 {
        store_whole(&t.store, &key(&format!("old-{i}.img")), content(10_000, i)).await;
    }
    let kept = key("kept.img");
    store_whole(&t.store, &kept, content(10_000, 99)).await;
    assert!(t.store.set_pinned(&kept, true).unwrap());
    settle(&t.store).await;
    // Every unlink now takes 300 ms, as a multi-GB file's can on a busy disk.
    t.store.inner.fs.unlink_delay.store(300, Ordering::SeqCst);
    let store = t.store.clone();
    let gc = tokio::task::spawn_blocking(move || store.evict_to(0));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut slowest = Duration::ZERO;
    while !gc.is_finished() {
        let store = t.store.clone();
        let k = kept.clone();
        let took = tokio::task::spawn_blocking(move || {
            let t0 = std::time::Instant::now();
            assert!(matches!(
                store.access(&k, |_| Plan::Serve),
                Ok(Access::Hit(_))
            ));
            t0.elapsed()
        })
        .await
        .unwrap();
        slowest = slowest.max(took);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let report = gc.await.unwrap().unwrap();
    assert_eq!(report.evicted_keys, 6);
    assert!(
        slowest < Duration::from_millis(150),
        "a hit waited {slowest:?} on eviction's unlinks"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_set_after_eviction_read_the_rows_is_respected() {
    let t = open(1 << 30);
    let k = key("pinned-late.img");
    store_whole(&t.store, &k, content(5_000, 3)).await;
    settle(&t.store).await;
    // What eviction does: read the rows, decide, then remove; a pin arrives in between.
    let rows = t.store.inner.index.all_objects().unwrap();
    assert!(!rows[0].1.pinned);
    assert!(t.store.set_pinned(&k, true).unwrap());
    let removed = t
        .store
        .remove_rows(&[k.as_str().to_string()], |row| !row.pinned, true)
        .unwrap();
    assert_eq!(removed, 0);
    assert!(
        t.store.get(&k).unwrap().is_some(),
        "a pinned key was evicted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_index_commit_takes_back_the_published_blob() {
    let t = open(1 << 30);
    let k = key("no-room.img");
    t.store.inner.fail_commits.store(true, Ordering::SeqCst);
    let Access::Fill { fill, .. } = t
        .store
        .access(&k, |_| {
            fill_plan(whole(content(50_000, 8)), Expected::default())
        })
        .unwrap()
    else {
        panic!("expected a fill");
    };
    assert!(matches!(
        fill.finished().await,
        Phase::Failed(FillFailure::Storage(_))
    ));
    let blobs = walk(&t.dir.path().join("blobs"));
    assert!(blobs.is_empty(), "published blob left behind: {blobs:?}");
    assert_eq!(t.tmp_files(), 0);
    assert_eq!(t.store.total_bytes(), 0);
    t.store.inner.fail_commits.store(false, Ordering::SeqCst);
    settle(&t.store).await;
    store_whole(&t.store, &k, content(50_000, 8)).await;
    assert_eq!(walk(&t.dir.path().join("blobs")).len(), 1);
}

/// Every file below `dir`.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_that_ends_early_still_waits_for_verification() {
    let t = open(1 << 30);
    let data = content(300_000, 5);
    let (tx, source) = fed(Some(data.len() as u64), Arc::default());
    let k = key("range.img");
    let Access::Fill { fill, .. } = t
        .store
        .access(&k, |_| {
            fill_plan(
                source,
                Expected {
                    sha256: Some(Digest::from_bytes([1; 32])),
                    ..Expected::default()
                },
            )
        })
        .unwrap()
    else {
        panic!("expected a fill");
    };
    let reader = {
        let f = Arc::clone(&fill);
        tokio::spawn(async move {
            let mut r = f.reader(0, Some(100));
            let mut got = 0usize;
            while let Some(chunk) = r.next_chunk().await {
                got += chunk?.len();
            }
            Ok::<usize, ReadError>(got)
        })
    };
    tx.send(Ok(Bytes::copy_from_slice(&data))).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !reader.is_finished(),
        "the range's last byte waits for the end of the fill"
    );
    drop(tx);
    let got = reader.await.unwrap();
    assert!(
        matches!(
            got,
            Err(ReadError::Failed {
                failure: FillFailure::Integrity(_),
                delivered_to: 99
            })
        ),
        "{got:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_md5_is_computed_once_when_asked_and_never_for_a_corrupt_blob() {
    use md5::Digest as _;
    let t = open(1 << 30);
    let data = content(300_000, 9);
    let k = key("img.tar.lz4");
    let row = store_whole(&t.store, &k, data.clone()).await;
    settle(&t.store).await;
    assert_eq!(row.md5, None, "a fill that did not want one computes none");
    let want = hex::encode(md5::Md5::digest(&data));
    assert_eq!(t.store.ensure_md5(&k).await.unwrap(), Some(want.clone()));
    assert_eq!(
        t.store.get(&k).unwrap().unwrap().md5,
        Some(want.clone()),
        "recorded"
    );
    assert_eq!(t.store.ensure_md5(&key("absent")).await.unwrap(), None);

    // A second object whose blob is damaged on disk: an error, and no md5 recorded.
    let k2 = key("other.img");
    let row2 = store_whole(&t.store, &k2, content(200_000, 3)).await;
    settle(&t.store).await;
    let hex = row2.digest.hex();
    let blob = t.dir.path().join("blobs/sha256").join(&hex[..2]).join(&hex);
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[10] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    assert!(t.store.ensure_md5(&k2).await.is_err());
    assert_eq!(t.store.get(&k2).unwrap().unwrap().md5, None);
}

//! The admin API's handle on the container image prefetch (a job of the registry front, which the HTTP
//! front may not import), and the view of its reports that the API, the page and the CLI share.

use crate::http::admin::view::{PrefetchImageView, PrefetchRunView};
use crate::http::admin::{PrefetchControl, PrefetchRunError};
use crate::lifecycle::RunStatus;
use crate::registry::prefetch::{PrefetchError, Prefetcher, Report};
use std::sync::Arc;

pub(super) struct PrefetchAdmin(pub Arc<Prefetcher>);

#[async_trait::async_trait]
impl PrefetchControl for PrefetchAdmin {
    fn status(&self) -> RunStatus<PrefetchRunView> {
        self.0.status().map(|r| run_view(&r))
    }

    fn start(&self, images: &[String]) -> Result<u64, PrefetchRunError> {
        self.0.start(images).map_err(run_error)
    }

    async fn run(&self, images: &[String]) -> Result<PrefetchRunView, PrefetchRunError> {
        self.0
            .run(images)
            .await
            .map(|r| run_view(&r))
            .map_err(run_error)
    }
}

fn run_error(e: PrefetchError) -> PrefetchRunError {
    match e {
        PrefetchError::AlreadyRunning => PrefetchRunError::Busy,
        e => PrefetchRunError::Refused(e.to_string()),
    }
}

pub fn run_view(r: &Report) -> PrefetchRunView {
    PrefetchRunView {
        run: r.run,
        started_at: r.started_at,
        finished_at: r.finished_at,
        configured: r.configured,
        images: r
            .images
            .iter()
            .map(|i| PrefetchImageView {
                image: i.image.clone(),
                ok: i.ok,
                deferred: i.deferred,
                message: i.message.clone(),
                manifests: i.manifests,
                blobs: i.blobs,
                bytes: i.bytes,
            })
            .collect(),
        unpinned: r.unpinned,
        failed: r.failed(),
        deferred: r.deferred(),
    }
}

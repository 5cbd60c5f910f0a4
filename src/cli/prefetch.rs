//! `image-cache registry prefetch [IMAGE...]`: a container image prefetch on the running server (a
//! prefetch pulls through the server's own registry front, so it needs one), followed there with a bar
//! per download, then one line per image.

use super::CliError;
use super::admin_client::{self, AdminClient, Started, query};
use super::progress::FillBars;
use super::store::{Opened, open};
use super::{ConfigArg, load_config};
use crate::http::admin::view::PrefetchRunView;
use crate::lifecycle::RunStatus;
use crate::metrics::Metrics;
use crate::upstream::Method;

/// Exit 0 when every image is stored and pinned, 1 when one failed or no server runs, 2 on config errors.
pub async fn prefetch(arg: &ConfigArg, images: &[String]) -> Result<i32, CliError> {
    let (config, _) = load_config(arg)?;
    // Checked here for a clear message; the server checks them again against registry.upstreams.
    for image in images {
        crate::registry::prefetch::reference::parse(image).map_err(|reason| {
            CliError::BadImage {
                image: image.clone(),
                reason,
            }
        })?;
    }
    // The store's lock says whether a server runs; without one there is no front to pull through.
    if let Opened::Store(_) = open(&config, Metrics::new()).await? {
        eprintln!(
            "image-cache: no server holds the store at {}; a prefetch pulls through the running \
             server's registry front: start `image-cache serve` with this config first",
            config.state_dir.display()
        );
        return Ok(1);
    }
    let client = admin_client::connect(&config)?;
    eprintln!("starting the prefetch on the server ({})", client.base());
    via_server(&client, images).await
}

async fn via_server(client: &AdminClient, images: &[String]) -> Result<i32, CliError> {
    let pairs: Vec<(&str, &str)> = images.iter().map(|i| ("image", i.as_str())).collect();
    let started: Started = client
        .call(
            Method::Post,
            &format!("/admin/registry/prefetch{}", query(&pairs)),
        )
        .await?;
    let status: RunStatus<PrefetchRunView> = admin_client::follow(
        client,
        "/admin/registry/prefetch",
        started.run,
        &FillBars::default(),
    )
    .await?;
    match status.last {
        Some(report) if report.run == started.run => Ok(print_report(&report)),
        _ => {
            eprintln!(
                "image-cache: prefetch failed: {}",
                status
                    .last_error
                    .as_deref()
                    .unwrap_or("the server kept no report")
            );
            Ok(1)
        }
    }
}

/// One line per image, then the totals; the exit code: 0 when every image is stored and pinned.
fn print_report(report: &PrefetchRunView) -> i32 {
    for i in &report.images {
        let mark = match (i.ok, i.deferred) {
            (true, _) => "ok",
            (false, true) => "WAITS",
            (false, false) => "FAILED",
        };
        println!("{mark:>6} {}: {}", i.image, i.message);
    }
    println!(
        "{} of {} images stored and pinned, {} failed, {} deferred (rate limit), {} keys unpinned",
        report.images.len() - report.failed - report.deferred,
        report.images.len(),
        report.failed,
        report.deferred,
        report.unpinned
    );
    i32::from(report.failed > 0 || report.deferred > 0)
}

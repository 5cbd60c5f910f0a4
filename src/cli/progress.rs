//! Progress bars on the terminal (indicatif draws nothing when stderr is not one): one bar per download
//! in flight, and one for `store verify`.

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::collections::HashMap;
use std::sync::Mutex;

/// One bar per fill, created when a key appears and finished when it goes.
pub(super) struct FillBars {
    multi: MultiProgress,
    bars: Mutex<HashMap<String, ProgressBar>>,
}

/// A fill as the bars see it: key, bytes written, total when known.
pub(super) struct FillProgress<'a> {
    pub key: &'a str,
    pub written: u64,
    pub total: Option<u64>,
}

impl<'a> From<&'a crate::store::FillStatus> for FillProgress<'a> {
    fn from(f: &'a crate::store::FillStatus) -> Self {
        FillProgress {
            key: &f.key,
            written: f.written,
            total: f.total,
        }
    }
}

impl<'a> From<&'a crate::http::admin::view::FillView> for FillProgress<'a> {
    fn from(f: &'a crate::http::admin::view::FillView) -> Self {
        FillProgress {
            key: &f.key,
            written: f.written,
            total: f.total,
        }
    }
}

fn style(known_total: bool) -> ProgressStyle {
    let template = if known_total {
        "{prefix:30!} [{bar:30}] {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12} eta {eta}"
    } else {
        "{prefix:30!} {spinner} {bytes:>10} {bytes_per_sec:>12}"
    };
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

impl Default for FillBars {
    fn default() -> Self {
        FillBars {
            multi: MultiProgress::new(),
            bars: Mutex::new(HashMap::new()),
        }
    }
}

impl FillBars {
    pub(super) fn update(&self, fills: &[FillProgress<'_>]) {
        let mut bars = self.bars.lock().unwrap_or_else(|p| p.into_inner());
        for f in fills {
            let bar = bars.entry(f.key.to_string()).or_insert_with(|| {
                let bar = self.multi.add(ProgressBar::new(f.total.unwrap_or(0)));
                bar.set_style(style(f.total.is_some()));
                bar.set_prefix(f.key.rsplit('/').next().unwrap_or(f.key).to_string());
                bar
            });
            if let Some(total) = f.total {
                bar.set_length(total);
            }
            bar.set_position(f.written);
        }
        bars.retain(|key, bar| {
            let running = fills.iter().any(|f| f.key == key);
            if !running {
                bar.finish_and_clear();
            }
            running
        });
    }

    /// A line above the bars (plain on a non-terminal).
    pub(super) fn println(&self, line: &str) {
        if self.multi.println(line).is_err() || self.multi.is_hidden() {
            eprintln!("{line}");
        }
    }

    pub(super) fn clear(&self) {
        self.update(&[]);
    }
}

/// `store verify`'s bar: bytes re-hashed of the total.
pub(super) fn verify_bar() -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "verifying [{bar:40}] {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar
}

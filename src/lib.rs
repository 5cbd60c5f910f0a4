//! image-cache: DNS interceptor, PXE image cache and OCI pull-through mirror in one process.
//! Module layering: DESIGN.md §2 (leaves → core → fronts → wiring).

// layer 0
pub mod config;
pub mod lifecycle;
pub mod listen;
pub mod metrics;
pub mod systemd;
pub mod telemetry;
// layer 1
pub mod peers;
pub mod store;
pub mod upstream;
// layer 1b: HTTP answers from the store, shared by the two HTTP fronts
pub mod serve;
// layer 2
pub mod dns;
pub mod http;
pub mod passthrough;
pub mod registry;
pub mod sync;
// layer 3
pub mod app;
pub mod cli;
/// Fuzz targets over every parser of untrusted input (`examples/fuzz.rs` drives them).
#[doc(hidden)]
pub mod fuzz;

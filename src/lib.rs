//! image-cache: DNS interceptor, PXE image cache and OCI pull-through mirror in one process.
//! Module layering: ARCHITECTURE.md, "Layers" (leaves → core → fronts → wiring).

// layer 0
pub mod clock;
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
/// Fuzz targets over every parser of untrusted input (`fuzz/main.rs` drives them); compiled only with the
/// `fuzz` feature, never into the service.
#[cfg(feature = "fuzz")]
#[doc(hidden)]
pub mod fuzz;

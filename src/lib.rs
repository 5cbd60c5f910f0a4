//! image-cache: DNS interceptor, PXE image cache and OCI pull-through mirror in one process.
//! Module layering: DESIGN.md §2.

pub mod config;
pub mod metrics;
pub mod store;

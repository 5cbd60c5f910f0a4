//! The OCI pull-through mirror for containerd (issue 5). What is here so far: request paths, names,
//! references and `ns` (`path.rs`, pure), OCI error answers (`error.rs`), the `/v2/` front that refuses
//! what a mirror must refuse (`handler.rs`), and the `hosts.toml` that points containerd at the cache
//! (`hosts.rs`). Fetching and caching comes next; until then valid pulls get 404 and containerd falls
//! back to the registry.

pub mod error;
pub mod handler;
pub mod hosts;
pub mod path;

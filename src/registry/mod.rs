//! The OCI pull-through mirror for containerd (issue 5). What is here so far: the pure parts — request
//! paths, names, references and `ns` (`path.rs`) and the `hosts.toml` that points containerd at the cache
//! (`hosts.rs`). The request handler comes next; until then `/v2/` requests get a 404 from the admin
//! routes and containerd falls back to the registry.

pub mod hosts;
pub mod path;

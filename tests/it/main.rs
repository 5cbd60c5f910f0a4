//! Integration tests: the service started in-process (or as the real binary) against real servers on
//! loopback — an HTTPS origin with a test CA, an OCI registry with a token endpoint, a metal-api stub,
//! an upstream DNS server — and other nodes on 127.0.0.2/.3. One test binary, so the shared harness in
//! `common/` is compiled once and every helper is used somewhere.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed setup or assertion should panic loudly

mod common;

mod admin;
mod binary;
mod config;
mod contrib;
mod dns;
mod hostile;
mod http_cache;
mod layers;
mod lifecycle;
mod passthrough;
mod peers;
mod prefetch;
mod registry;
mod registry_pull;
mod sync;
mod upstream_trouble;
mod verified;

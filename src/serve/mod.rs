//! HTTP answers built from the store, shared by the two HTTP fronts (the file cache and the registry
//! mirror): a stored object with Range and conditionals, a fill followed as it grows, an upstream answer
//! relayed. The fronts decide *what* to answer; this module only knows how to put it on the wire, so the
//! two never import each other (ARCHITECTURE.md, "Layers").

pub mod body;
pub mod conditional;
pub mod fill_limits;
mod respond;

pub use respond::{
    content_headers, head_response, relay, serve_hit, stream_fill, unsatisfiable, untrusted_content,
};

/// Who sent a request, for the partition's routing rule (`peers::Peers::asker`).
pub fn asker(peers: &crate::peers::Peers, req: &actix_web::HttpRequest) -> crate::peers::Asker {
    peers.asker(
        req.headers()
            .get(crate::peers::PEER_HEADER)
            .map(|v| v.as_bytes()),
        req.peer_addr().map(|a| a.ip()),
    )
}

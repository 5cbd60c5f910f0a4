//! One query in, one answer out, for both transports: refuse, answer an intercepted name from the healthy
//! node set, or forward. `tcp` adapts this to hickory-server's `RequestHandler`; the UDP loop in `udp.rs`
//! calls it directly.

use super::forward::Forwarder;
use super::policy::{self, Decision, Policy};
use crate::config::AnswerOrder;
use crate::metrics::{Metrics, ResultLabels};
use crate::peers::{Healthy, Peers};
use hickory_proto::op::{Message, Query, ResponseCode};
use prometheus_client::metrics::counter::Counter;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};

pub(super) mod result {
    pub(crate) const INTERCEPTED: &str = "intercepted";
    pub(crate) const FORWARDED: &str = "forwarded";
    pub(crate) const REFUSED: &str = "refused";
    pub(crate) const ERROR: &str = "error";
}

pub(super) enum Outcome {
    Reply(Message),
    Forward(Query),
    Drop,
}

pub(super) struct Responder {
    pub policy: Policy,
    pub peers: Peers,
    pub forwarder: Forwarder,
    /// Counters by result, looked up once (the label map costs a lock per lookup).
    counters: [(&'static str, Counter); 4],
    rotation: AtomicUsize,
    order: AnswerOrder,
}

impl Responder {
    pub(super) fn new(
        policy: Policy,
        peers: Peers,
        forwarder: Forwarder,
        metrics: Metrics,
        order: AnswerOrder,
    ) -> Self {
        let counter = |result: &'static str| {
            let c = metrics
                .dns_queries
                .get_or_create(&ResultLabels { result })
                .clone();
            (result, c)
        };
        Responder {
            policy,
            peers,
            forwarder,
            counters: [
                counter(result::INTERCEPTED),
                counter(result::FORWARDED),
                counter(result::REFUSED),
                counter(result::ERROR),
            ],
            rotation: AtomicUsize::new(0),
            order,
        }
    }

    /// Where the node list starts for the next answer: one further on each call.
    pub(super) fn next_rotation(&self, healthy: &Healthy) -> usize {
        match policy::rotations(healthy.this.is_some(), healthy.peers.len(), self.order) {
            0 | 1 => 0,
            n => self.rotation.fetch_add(1, Ordering::Relaxed) % n,
        }
    }

    fn nodes(&self, healthy: &Healthy, rotation: usize) -> Vec<IpAddr> {
        policy::answer_nodes(healthy.this, &healthy.peers, self.order, rotation)
    }

    pub(super) fn respond(&self, src: SocketAddr, request: &Message) -> Outcome {
        let healthy = self.peers.healthy();
        let rotation = self.next_rotation(&healthy);
        self.respond_with(src, request, &healthy, rotation)
    }

    /// `respond` for a given node set and rotation (the UDP fast path keys its templates by them).
    pub(super) fn respond_with(
        &self,
        src: SocketAddr,
        request: &Message,
        healthy: &Healthy,
        rotation: usize,
    ) -> Outcome {
        let nodes = self.nodes(healthy, rotation);
        match self.policy.decide(src.ip(), request, &nodes) {
            Decision::Drop => Outcome::Drop,
            Decision::Error(code) => {
                self.count(if code == ResponseCode::Refused {
                    result::REFUSED
                } else {
                    result::ERROR
                });
                Outcome::Reply(policy::response_to(request, code))
            }
            Decision::Answer {
                answers,
                authorities,
            } => {
                self.count(result::INTERCEPTED);
                let mut response = policy::response_to(request, ResponseCode::NoError);
                response.metadata.authoritative = true;
                response.answers = answers;
                response.authorities = authorities;
                Outcome::Reply(response)
            }
            Decision::Forward(query) => Outcome::Forward(query),
        }
    }

    pub(super) async fn forward(&self, request: &Message, query: &Query) -> Message {
        match self.forwarder.answer(request, query).await {
            Ok(response) => {
                self.count(result::FORWARDED);
                response
            }
            Err((response, why)) => {
                self.count(result::ERROR);
                tracing::debug!(name = %query.name(), qtype = %query.query_type(), %why, "forwarding failed");
                response
            }
        }
    }

    pub(super) fn count(&self, result: &'static str) {
        if let Some((_, c)) = self.counters.iter().find(|(r, _)| *r == result) {
            c.inc();
        }
    }
}

/// hickory-server's side of TCP: the server frames, times out idle connections and refuses sources
/// outside `dns.allow` itself; this turns each request into our answer.
pub(super) struct TcpHandler(pub std::sync::Arc<Responder>);

#[async_trait::async_trait]
impl hickory_server::server::RequestHandler for TcpHandler {
    async fn handle_request<
        R: hickory_server::server::ResponseHandler,
        T: hickory_server::net::runtime::Time,
    >(
        &self,
        request: &hickory_server::server::Request,
        mut response_handle: R,
    ) -> hickory_server::server::ResponseInfo {
        use hickory_proto::op::{Header, HeaderCounts, MessageType, Metadata};
        use hickory_server::zone_handler::MessageResponseBuilder;
        let failed = |code: ResponseCode| {
            let mut metadata = Metadata::new(
                request.metadata.id,
                MessageType::Response,
                request.metadata.op_code,
            );
            metadata.response_code = code;
            hickory_server::server::ResponseInfo::from(Header {
                metadata,
                counts: HeaderCounts::default(),
            })
        };
        let Ok(message) = Message::from_vec(request.as_slice()) else {
            self.0.count(result::ERROR);
            return failed(ResponseCode::FormErr);
        };
        let response = match self.0.respond(request.src(), &message) {
            Outcome::Reply(r) => r,
            Outcome::Forward(query) => self.0.forward(&message, &query).await,
            Outcome::Drop => return failed(ResponseCode::Refused),
        };
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(edns) = &response.edns {
            builder.edns(edns);
        }
        let reply = builder.build(
            response.metadata,
            response.answers.iter(),
            response.authorities.iter(),
            std::iter::empty(),
            response.additionals.iter(),
        );
        match response_handle.send_response(reply).await {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(error = %e, "cannot send a DNS answer over TCP");
                failed(ResponseCode::ServFail)
            }
        }
    }
}

//! The UDP path, written for throughput: one receive loop per socket (several sockets per address with
//! SO_REUSEPORT, so every core takes a share), intercepted names answered inline from memory, and only
//! forwarded queries spawned as tasks (bounded; beyond the bound a query is dropped and the client
//! retries). hickory-server's generic UDP server spawns a task and crosses a channel for every packet,
//! which costs several times more per query.

use super::fastpath::{self, Question, Templates};
use super::handler::{Outcome, Responder, result};
use super::policy;
use crate::peers::Healthy;
use hickory_proto::op::{Header, Message, MessageType, ResponseCode};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::net::UdpSocket;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Largest datagram we read; anything longer is truncated by the kernel and then fails to parse.
const MAX_DATAGRAM: usize = 4096;
/// Forwarded answers on their way back to the loop's table; beyond this many a new one is not kept.
const LEARN_QUEUE: usize = 256;

/// A forwarded answer for the loop's table: the healthy-set generation it was asked under, the
/// question's key, the wire answer, when it was given.
type Learned = (u64, Vec<u8>, Vec<u8>, Instant);

pub(super) async fn serve(
    socket: Arc<UdpSocket>,
    responder: Arc<Responder>,
    forwards: Arc<Semaphore>,
    shutdown: CancellationToken,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut templates = Templates::default();
    // Forwarding tasks hand their answers back here, so the table stays the loop's own (no lock).
    let (learned_tx, mut learned_rx) = tokio::sync::mpsc::channel::<Learned>(LEARN_QUEUE);
    // This loop's view of the healthy nodes, refreshed only when it changes (a version check per packet
    // instead of a lock and a shared reference count).
    let mut watch = responder.peers.watch();
    let mut healthy = Arc::clone(&watch.borrow_and_update());
    loop {
        let (len, src) = tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    // ICMP errors from earlier sends surface here on Linux; they concern one client only.
                    tracing::debug!(error = %e, "udp receive");
                    continue;
                }
            },
            Some((generation, key, wire, at)) = learned_rx.recv() => {
                templates.learn(generation, key, wire, at);
                continue;
            }
            _ = shutdown.cancelled() => return,
        };
        if src.port() == 0 {
            continue;
        }
        if watch.has_changed().unwrap_or(false) {
            healthy = Arc::clone(&watch.borrow_and_update());
        }
        let now = Instant::now();
        match process(&buf[..len], src, &responder, &mut templates, &healthy, now) {
            Step::Nothing => {}
            Step::Send(bytes) => send(&socket, &bytes, src).await,
            Step::Forward(forward) => {
                let (request, query, key) = *forward;
                let Ok(permit) = Arc::clone(&forwards).try_acquire_owned() else {
                    responder.count(result::ERROR);
                    continue;
                };
                let socket = Arc::clone(&socket);
                let responder = Arc::clone(&responder);
                let learned = learned_tx.clone();
                let generation = templates.generation();
                tokio::spawn(async move {
                    let response = responder.forward(&request, &query).await;
                    if let Some(bytes) = encode(&request, &response) {
                        send(&socket, &bytes, src).await;
                        if let Some(key) = key {
                            let _ = learned.try_send((generation, key, bytes, Instant::now()));
                        }
                    }
                    drop(permit);
                });
            }
        }
    }
}

/// What one datagram calls for.
pub(super) enum Step {
    Nothing,
    Send(Vec<u8>),
    /// Ask the upstreams (a task of its own: it waits on the network); the key under which the answer
    /// may be replayed, for a plain query.
    Forward(Box<(Message, hickory_proto::op::Query, Option<Vec<u8>>)>),
}

/// Everything a datagram goes through without I/O: the replay of a plain query answered before (from an
/// allowed client, with the same healthy set; a forwarded answer while its TTLs last), parsing, FORMERR
/// for a broken body, the policy's answer. The fuzz harness drives this with arbitrary bytes.
pub(super) fn process(
    packet: &[u8],
    src: SocketAddr,
    responder: &Responder,
    templates: &mut Templates,
    healthy: &Healthy,
    now: Instant,
) -> Step {
    let plain = Question::parse(packet).filter(|_| responder.policy.allows(src.ip()));
    let rotation = responder.next_rotation(healthy);
    templates.sync(healthy.generation);
    let key = plain.as_ref().map(|q| q.key(rotation));
    if let (Some(q), Some(key)) = (&plain, &key)
        && let Some(bytes) = templates.get(key).and_then(|t| q.patch(t))
    {
        responder.count(result::INTERCEPTED);
        return Step::Send(bytes);
    }
    let forward_key = plain.as_ref().map(|q| q.key(fastpath::FORWARDED));
    if let (Some(q), Some(key)) = (&plain, &forward_key)
        && let Some(bytes) = templates.forwarded(key, now).and_then(|t| q.patch(&t))
    {
        responder.count(result::FORWARDED);
        return Step::Send(bytes);
    }
    let Ok(request) = Message::from_vec(packet) else {
        return formerr(packet, responder, src).map_or(Step::Nothing, Step::Send);
    };
    match responder.respond_with(src, &request, healthy, rotation) {
        Outcome::Drop => Step::Nothing,
        Outcome::Reply(response) => match encode(&request, &response) {
            Some(bytes) => {
                // Only intercepted answers are replayed: they depend on nothing but the key.
                if response.metadata.authoritative
                    && let Some(key) = key
                {
                    templates.insert(key, bytes.clone());
                }
                Step::Send(bytes)
            }
            None => Step::Nothing,
        },
        Outcome::Forward(query) => Step::Forward(Box::new((request, query, forward_key))),
    }
}

/// A readable header but a broken body gets FORMERR (from allowed clients only; never an amplifier).
fn formerr(packet: &[u8], responder: &Responder, src: SocketAddr) -> Option<Vec<u8>> {
    let header = Header::read(&mut BinDecoder::new(packet)).ok()?;
    if header.metadata.message_type != MessageType::Query || !responder.policy.allows(src.ip()) {
        return None;
    }
    responder.count(result::ERROR);
    let mut reply = Message::error_msg(
        header.metadata.id,
        header.metadata.op_code,
        ResponseCode::FormErr,
    );
    reply.metadata.recursion_available = true;
    reply.to_vec().ok()
}

/// The wire form, truncated (TC set, records dropped) when it exceeds what the client accepts over UDP.
fn encode(request: &Message, response: &Message) -> Option<Vec<u8>> {
    let bytes = response.to_vec().ok()?;
    if bytes.len() <= policy::udp_limit(request) {
        return Some(bytes);
    }
    response.truncate().to_vec().ok()
}

async fn send(socket: &UdpSocket, bytes: &[u8], to: SocketAddr) {
    match socket.try_send_to(bytes, to) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            if let Err(e) = socket.send_to(bytes, to).await {
                tracing::debug!(error = %e, %to, "udp send");
            }
        }
        Err(e) => tracing::debug!(error = %e, %to, "udp send"),
    }
}

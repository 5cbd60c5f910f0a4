//! DNS on loopback for tests: a query client (hickory's message types over plain sockets, so a test can
//! also send garbage or bind a chosen source address) and a small upstream resolver to forward to.

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SOA, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, UdpSocket};

pub(crate) fn query(name: &str, rtype: RecordType, edns: bool) -> Message {
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        m.set_edns(e);
    }
    m
}

/// One UDP exchange from `from` (any port); `None` on timeout.
pub(crate) async fn udp_from(from: &str, server: SocketAddr, msg: &Message) -> Option<Message> {
    let sock = UdpSocket::bind(format!("{from}:0")).await.unwrap();
    sock.send_to(&msg.to_vec().unwrap(), server).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let (n, _) = tokio::time::timeout(Duration::from_secs(8), sock.recv_from(&mut buf))
        .await
        .ok()?
        .ok()?;
    Some(Message::from_vec(&buf[..n]).unwrap())
}

pub(crate) async fn udp(server: SocketAddr, msg: &Message) -> Message {
    udp_from("127.0.0.1", server, msg)
        .await
        .expect("udp answer")
}

/// One TCP exchange from `from`; `None` when the server closes without answering.
pub(crate) async fn tcp_from(from: &str, server: SocketAddr, msg: &Message) -> Option<Message> {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let mut stream = sock.connect(server).await.unwrap();
    let bytes = msg.to_vec().unwrap();
    stream
        .write_all(&(bytes.len() as u16).to_be_bytes())
        .await
        .unwrap();
    stream.write_all(&bytes).await.unwrap();
    let read = async {
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).await.ok()?;
        let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
        stream.read_exact(&mut buf).await.ok()?;
        Some(Message::from_vec(&buf).unwrap())
    };
    tokio::time::timeout(Duration::from_secs(8), read)
        .await
        .ok()?
}

pub(crate) async fn tcp(server: SocketAddr, msg: &Message) -> Message {
    tcp_from("127.0.0.1", server, msg)
        .await
        .expect("tcp answer")
}

pub(crate) fn a_records(m: &Message) -> Vec<String> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.to_string()),
            RData::AAAA(a) => Some(a.to_string()),
            _ => None,
        })
        .collect()
}

/// An upstream resolver on 127.0.0.1 (UDP and TCP, same port):
/// - `forwarded.test.` A 192.0.2.1 (TTL 300)
/// - `big.test.` 30 TXT records of 100 bytes (too big for 512-byte UDP)
/// - `tcponly.test.` A 192.0.2.9, but over UDP always truncated (TC) so the asker must use TCP
///   (UDP answers larger than the asker's EDNS payload, or 512 bytes, are truncated too, as real servers do)
/// - `<anything>.loop.test.` A 127.0.0.1 (a name that leads inside)
/// - `<anything>.inside.test.` A 127.0.0.43 (inside, on an address of its own, so a test can listen on 443)
/// - anything else: NXDOMAIN with an SOA for `test.`
pub(crate) struct Upstream {
    pub addr: SocketAddr,
    counts: Arc<Mutex<HashMap<String, u64>>>,
}

impl Upstream {
    pub(crate) async fn start() -> Self {
        Self::start_with(false).await
    }

    /// A resolver that answers REFUSED to everything (a misconfigured or rate-limiting upstream).
    pub(crate) async fn start_refusing() -> Self {
        Self::start_with(true).await
    }

    async fn start_with(refuse: bool) -> Self {
        // The TCP port of the UDP socket's number may be some connection's local end: pick again.
        let (udp, addr, tcp) = loop {
            let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let addr = udp.local_addr().unwrap();
            if let Ok(tcp) = TcpListener::bind(addr).await {
                break (udp, addr, tcp);
            }
        };
        let counts = Arc::new(Mutex::new(HashMap::new()));
        let c = Arc::clone(&counts);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, src)) = udp.recv_from(&mut buf).await else {
                    return;
                };
                let Ok(q) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let mut r = answer(&q, &c, "udp", refuse);
                let limit = q
                    .edns
                    .as_ref()
                    .map_or(512, |e| usize::from(e.max_payload()));
                if r.queries[0].name().to_ascii() == "tcponly.test."
                    || r.to_vec().unwrap().len() > limit
                {
                    r = r.truncate();
                }
                let _ = udp.send_to(&r.to_vec().unwrap(), src).await;
            }
        });
        let c = Arc::clone(&counts);
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = tcp.accept().await else {
                    return;
                };
                let c = Arc::clone(&c);
                tokio::spawn(async move {
                    loop {
                        let mut len = [0u8; 2];
                        if s.read_exact(&mut len).await.is_err() {
                            return;
                        }
                        let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
                        if s.read_exact(&mut buf).await.is_err() {
                            return;
                        }
                        let Ok(q) = Message::from_vec(&buf) else {
                            return;
                        };
                        let bytes = answer(&q, &c, "tcp", refuse).to_vec().unwrap();
                        let _ = s.write_all(&(bytes.len() as u16).to_be_bytes()).await;
                        let _ = s.write_all(&bytes).await;
                    }
                });
            }
        });
        Upstream { addr, counts }
    }

    /// Queries seen for `name` over `proto` ("udp" or "tcp").
    pub(crate) fn count(&self, name: &str, proto: &str) -> u64 {
        *self
            .counts
            .lock()
            .unwrap()
            .get(&format!("{proto} {name}"))
            .unwrap_or(&0)
    }
}

fn answer(q: &Message, counts: &Mutex<HashMap<String, u64>>, proto: &str, refuse: bool) -> Message {
    let query = q.queries[0].clone();
    let name = query.name().to_ascii().to_lowercase();
    *counts
        .lock()
        .unwrap()
        .entry(format!("{proto} {name}"))
        .or_insert(0) += 1;
    let mut r = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
    r.metadata.recursion_desired = q.metadata.recursion_desired;
    r.metadata.recursion_available = true;
    r.add_query(query.clone());
    if let Some(e) = &q.edns {
        let mut edns = Edns::new();
        edns.set_max_payload(e.max_payload().max(512));
        r.set_edns(edns);
    }
    if refuse {
        r.metadata.response_code = ResponseCode::Refused;
        return r;
    }
    let owner = query.name().clone();
    match (name.as_str(), query.query_type()) {
        ("forwarded.test.", RecordType::A) => {
            r.add_answer(Record::from_rdata(
                owner,
                300,
                RData::A(A::new(192, 0, 2, 1)),
            ));
        }
        ("short.test.", RecordType::A) => {
            r.add_answer(Record::from_rdata(owner, 2, RData::A(A::new(192, 0, 2, 2))));
        }
        (n, RecordType::A) if n.ends_with(".loop.test.") => {
            r.add_answer(Record::from_rdata(
                owner,
                300,
                RData::A(A::new(127, 0, 0, 1)),
            ));
        }
        (n, RecordType::A) if n.ends_with(".inside.test.") => {
            r.add_answer(Record::from_rdata(
                owner,
                300,
                RData::A(A::new(127, 0, 0, 43)),
            ));
        }
        // A headless Service of three cache nodes (`nodes.peers_from`).
        ("nodes.partition.test.", RecordType::A) => {
            for i in 1..=3 {
                r.add_answer(Record::from_rdata(
                    owner.clone(),
                    5,
                    RData::A(A::new(127, 0, 0, i)),
                ));
            }
        }
        // Public-looking names of registries that lead inside: what `registry.open` must refuse.
        ("reg-loop.example.net.", RecordType::A) => {
            r.add_answer(Record::from_rdata(
                owner,
                300,
                RData::A(A::new(127, 0, 0, 1)),
            ));
        }
        ("reg-ula.example.net.", RecordType::AAAA) => {
            r.add_answer(Record::from_rdata(
                owner,
                300,
                RData::AAAA(AAAA::new(0xfd7a, 1, 2, 0, 0, 0, 0, 5)),
            ));
        }
        ("reg-loop.example.net." | "reg-ula.example.net.", _) => {}
        ("tcponly.test.", RecordType::A) => {
            r.add_answer(Record::from_rdata(
                owner,
                300,
                RData::A(A::new(192, 0, 2, 9)),
            ));
        }
        ("big.test.", RecordType::TXT) => {
            for i in 0..30 {
                let text = format!("{i:02}-{}", "x".repeat(97));
                r.add_answer(Record::from_rdata(
                    owner.clone(),
                    300,
                    RData::TXT(TXT::new(vec![text])),
                ));
            }
        }
        _ => {
            r.metadata.response_code = ResponseCode::NXDomain;
            let zone = Name::from_ascii("test.").unwrap();
            let soa = SOA::new(
                Name::from_ascii("ns.test.").unwrap(),
                Name::from_ascii("root.test.").unwrap(),
                1,
                3600,
                600,
                86400,
                60,
            );
            r.add_authority(Record::from_rdata(zone, 60, RData::SOA(soa)));
        }
    }
    r
}

//! What to do with one DNS query: refuse it, answer it for an intercepted name, or forward it. Pure: the
//! caller supplies the client address, the parsed query and the healthy nodes; no sockets, no clocks.
//!
//! Intercepted names are answered with this node's internal address first, then healthy peers (rotated by
//! the caller so load spreads), like a tiny authoritative zone per intercepted domain: A/AAAA from the node
//! set, SOA at the apex, NOERROR/NODATA with the SOA for every other type. With no healthy node the name
//! is forwarded, so machines reach the real store instead of a dead cache.

use crate::config::AnswerOrder;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use ipnet::IpNet;
use std::net::IpAddr;

/// Our UDP payload limit (the DNS flag day 2020 value), advertised in EDNS answers.
pub const EDNS_PAYLOAD: u16 = 1232;

#[derive(Debug, Clone)]
pub struct Zone {
    /// Lowercase, fully qualified.
    pub name: Name,
    pub include_subdomains: bool,
    soa: Record,
}

impl Zone {
    pub fn soa(&self) -> &Record {
        &self.soa
    }
}

#[derive(Debug, Clone)]
pub struct Policy {
    zones: Vec<Zone>,
    allow: Vec<IpNet>,
    ttl: u32,
}

/// The decision for one message.
#[derive(Debug, PartialEq)]
pub enum Decision {
    /// Not a query we answer at all (a response, or too broken to echo).
    Drop,
    /// Answer with this code and no records (REFUSED, FORMERR, NOTIMP).
    Error(ResponseCode),
    /// Answer for an intercepted name, authoritatively.
    Answer {
        answers: Vec<Record>,
        authorities: Vec<Record>,
    },
    /// Ask the upstream resolvers.
    Forward(Query),
}

#[derive(Debug, thiserror::Error)]
#[error("invalid domain name {name:?}: {reason}")]
pub struct ZoneError {
    name: String,
    reason: String,
}

impl Policy {
    /// `domains`: (name, include_subdomains). `serial`: the SOA serial (start time).
    pub fn new(
        domains: &[(String, bool)],
        allow: Vec<IpNet>,
        ttl: u32,
        serial: u32,
    ) -> Result<Self, ZoneError> {
        let mut zones = Vec::new();
        for (domain, include_subdomains) in domains {
            let err = |reason: String| ZoneError {
                name: domain.clone(),
                reason,
            };
            let name = Name::from_ascii(domain)
                .map_err(|e| err(e.to_string()))?
                .to_lowercase();
            let mut name = name;
            name.set_fqdn(true);
            let mname = Name::from_ascii("ns")
                .and_then(|n| n.append_domain(&name))
                .map_err(|e| err(e.to_string()))?;
            let rname = Name::from_ascii("hostmaster")
                .and_then(|n| n.append_domain(&name))
                .map_err(|e| err(e.to_string()))?;
            let soa = SOA::new(mname, rname, serial, 3600, 600, 86400, ttl);
            zones.push(Zone {
                soa: Record::from_rdata(name.clone(), ttl, RData::SOA(soa)),
                name,
                include_subdomains: *include_subdomains,
            });
        }
        Ok(Policy { zones, allow, ttl })
    }

    pub fn allows(&self, src: IpAddr) -> bool {
        let src = canonical(src);
        self.allow.iter().any(|net| net.contains(&src))
    }

    /// The intercepted zone `name` falls in, if any (the longest match wins).
    pub fn zone_for(&self, name: &Name) -> Option<&Zone> {
        self.zones
            .iter()
            .filter(|z| {
                if z.name == *name {
                    return true;
                }
                z.include_subdomains && z.name.zone_of(name)
            })
            .max_by_key(|z| z.name.num_labels())
    }

    /// `nodes`: healthy node addresses in answer order (this node first, peers rotated).
    pub fn decide(&self, src: IpAddr, request: &Message, nodes: &[IpAddr]) -> Decision {
        if request.metadata.message_type != MessageType::Query {
            return Decision::Drop;
        }
        if !self.allows(src) {
            return Decision::Error(ResponseCode::Refused);
        }
        if request.metadata.op_code != OpCode::Query {
            return Decision::Error(ResponseCode::NotImp);
        }
        let [query] = request.queries.as_slice() else {
            return Decision::Error(ResponseCode::FormErr);
        };
        let Some(zone) = self.zone_for(query.name()) else {
            return if query.query_class() == DNSClass::IN {
                Decision::Forward(query.clone())
            } else {
                Decision::Error(ResponseCode::Refused)
            };
        };
        if nodes.is_empty() {
            return Decision::Forward(query.clone());
        }
        let owner = query.name().clone();
        let address = |ip: &IpAddr| -> Option<Record> {
            let rdata = match (query.query_type(), ip) {
                (RecordType::A | RecordType::ANY, IpAddr::V4(v4)) => RData::A(A(*v4)),
                (RecordType::AAAA | RecordType::ANY, IpAddr::V6(v6)) => RData::AAAA(AAAA(*v6)),
                _ => return None,
            };
            Some(Record::from_rdata(owner.clone(), self.ttl, rdata))
        };
        let mut answers: Vec<Record> = match query.query_class() {
            DNSClass::IN => nodes.iter().filter_map(address).collect(),
            _ => Vec::new(),
        };
        let apex = zone.name == owner;
        if apex && matches!(query.query_type(), RecordType::SOA | RecordType::ANY) {
            answers.push(zone.soa.clone());
        }
        let authorities = if answers.is_empty() {
            vec![zone.soa.clone()]
        } else {
            Vec::new()
        };
        Decision::Answer {
            answers,
            authorities,
        }
    }
}

/// `::ffff:a.b.c.d` (a v4 client on a dual-stack socket) counts as `a.b.c.d` for the allow list.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// How many different first places answers for intercepted names rotate through.
pub fn rotations(this: bool, peers: usize, order: AnswerOrder) -> usize {
    match order {
        AnswerOrder::Rotate => usize::from(this) + peers,
        AnswerOrder::SelfFirst => peers,
    }
}

/// The healthy nodes in answer order: with `rotate`, every node (this one included) takes the first
/// place in turn; with `self-first`, this node leads and the peers rotate behind it.
pub fn answer_nodes(
    this: Option<IpAddr>,
    peers: &[IpAddr],
    order: AnswerOrder,
    rotation: usize,
) -> Vec<IpAddr> {
    let rotated = |list: &[IpAddr]| -> Vec<IpAddr> {
        if list.is_empty() {
            return Vec::new();
        }
        let start = rotation % list.len();
        list[start..]
            .iter()
            .chain(&list[..start])
            .copied()
            .collect()
    };
    match order {
        AnswerOrder::SelfFirst => this.into_iter().chain(rotated(peers)).collect(),
        AnswerOrder::Rotate => {
            let all: Vec<IpAddr> = this.into_iter().chain(peers.iter().copied()).collect();
            rotated(&all)
        }
    }
}

/// The response skeleton for `request`: id, opcode, RD and CD echoed, RA set, the question echoed, EDNS
/// answered with our payload size when the client sent EDNS.
pub fn response_to(request: &Message, code: ResponseCode) -> Message {
    let mut response = Message::response(request.metadata.id, request.metadata.op_code);
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.checking_disabled = request.metadata.checking_disabled;
    response.metadata.recursion_available = true;
    response.metadata.response_code = code;
    response.queries = request.queries.clone();
    if request.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        response.set_edns(edns);
    }
    response
}

/// The largest UDP answer this client accepts.
pub fn udp_limit(request: &Message) -> usize {
    match &request.edns {
        Some(edns) => usize::from(edns.max_payload().clamp(512, EDNS_PAYLOAD)),
        None => 512,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy::new(
            &[
                ("images.metal-stack.io".into(), false),
                ("github.com".into(), true),
            ],
            vec![
                "10.0.0.0/8".parse().unwrap(),
                "127.0.0.1/32".parse().unwrap(),
            ],
            30,
            1234,
        )
        .unwrap()
    }

    fn query(name: &str, rtype: RecordType) -> Message {
        let mut m = Message::query();
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
        m
    }

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn nodes() -> Vec<IpAddr> {
        vec![
            "10.0.0.1".parse().unwrap(),
            "fd00::1".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
        ]
    }

    fn answer(d: Decision) -> (Vec<Record>, Vec<Record>) {
        match d {
            Decision::Answer {
                answers,
                authorities,
            } => (answers, authorities),
            other => panic!("expected an answer, got {other:?}"),
        }
    }

    #[test]
    fn intercepted_a_and_aaaa_in_node_order() {
        let p = policy();
        let (a, auth) = answer(p.decide(
            LOCAL,
            &query("images.metal-stack.io.", RecordType::A),
            &nodes(),
        ));
        let ips: Vec<String> = a.iter().map(|r| r.data.to_string()).collect();
        assert_eq!(ips, ["10.0.0.1", "10.0.0.2"]);
        assert!(auth.is_empty());
        assert!(a.iter().all(|r| r.ttl == 30));
        let (aaaa, _) = answer(p.decide(
            LOCAL,
            &query("IMAGES.Metal-Stack.io.", RecordType::AAAA),
            &nodes(),
        ));
        assert_eq!(aaaa.len(), 1);
        assert_eq!(aaaa[0].data.to_string(), "fd00::1");
        // owner name as asked (case preserved, 0x20-style clients compare it)
        assert_eq!(aaaa[0].name.to_string(), "IMAGES.Metal-Stack.io.");
    }

    #[test]
    fn other_types_get_nodata_with_soa() {
        let p = policy();
        for t in [
            RecordType::MX,
            RecordType::TXT,
            RecordType::NS,
            RecordType::HTTPS,
        ] {
            let (a, auth) = answer(p.decide(LOCAL, &query("images.metal-stack.io.", t), &nodes()));
            assert!(a.is_empty(), "{t}");
            assert_eq!(auth.len(), 1);
            let RData::SOA(soa) = &auth[0].data else {
                panic!("not an SOA")
            };
            assert_eq!(soa.mname.to_string(), "ns.images.metal-stack.io.");
            assert_eq!(soa.rname.to_string(), "hostmaster.images.metal-stack.io.");
            assert_eq!(soa.serial, 1234);
            assert_eq!(soa.minimum, 30);
        }
        // AAAA asked but only v4 nodes healthy: NODATA, not NXDOMAIN
        let v4only: Vec<IpAddr> = vec!["10.0.0.1".parse().unwrap()];
        let (a, auth) = answer(p.decide(
            LOCAL,
            &query("images.metal-stack.io.", RecordType::AAAA),
            &v4only,
        ));
        assert!(a.is_empty() && auth.len() == 1);
        // SOA at the apex is an answer
        let (a, _) = answer(p.decide(
            LOCAL,
            &query("images.metal-stack.io.", RecordType::SOA),
            &nodes(),
        ));
        assert!(matches!(a[0].data, RData::SOA(_)));
    }

    #[test]
    fn subdomains_only_when_included() {
        let p = policy();
        assert!(matches!(
            p.decide(
                LOCAL,
                &query("objects.github.com.", RecordType::A),
                &nodes()
            ),
            Decision::Answer { .. }
        ));
        assert!(matches!(
            p.decide(
                LOCAL,
                &query("x.images.metal-stack.io.", RecordType::A),
                &nodes()
            ),
            Decision::Forward(_)
        ));
        assert!(matches!(
            p.decide(LOCAL, &query("notgithub.com.", RecordType::A), &nodes()),
            Decision::Forward(_)
        ));
        assert!(matches!(
            p.decide(LOCAL, &query("example.org.", RecordType::A), &nodes()),
            Decision::Forward(_)
        ));
    }

    #[test]
    fn no_healthy_node_forwards() {
        let p = policy();
        assert!(matches!(
            p.decide(LOCAL, &query("github.com.", RecordType::A), &[]),
            Decision::Forward(_)
        ));
    }

    #[test]
    fn refuses_outsiders_and_odd_messages() {
        let p = policy();
        let q = query("github.com.", RecordType::A);
        assert_eq!(
            p.decide("192.0.2.7".parse().unwrap(), &q, &nodes()),
            Decision::Error(ResponseCode::Refused)
        );
        assert!(p.allows("::ffff:10.1.2.3".parse().unwrap()));
        let mut two = q.clone();
        two.add_query(Query::query(
            Name::from_ascii("a.b.").unwrap(),
            RecordType::A,
        ));
        assert_eq!(
            p.decide(LOCAL, &two, &nodes()),
            Decision::Error(ResponseCode::FormErr)
        );
        let mut none = q.clone();
        none.queries.clear();
        assert_eq!(
            p.decide(LOCAL, &none, &nodes()),
            Decision::Error(ResponseCode::FormErr)
        );
        let mut update = q.clone();
        update.metadata.op_code = OpCode::Update;
        assert_eq!(
            p.decide(LOCAL, &update, &nodes()),
            Decision::Error(ResponseCode::NotImp)
        );
        let mut resp = q.clone();
        resp.metadata.message_type = MessageType::Response;
        assert_eq!(p.decide(LOCAL, &resp, &nodes()), Decision::Drop);
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn answer_order_rotates_every_node_or_keeps_this_node_first() {
        let this = Some(ip("10.0.0.1"));
        let peers = [ip("10.0.0.2"), ip("10.0.0.3")];
        let firsts = |order| {
            (0..rotations(true, 2, order))
                .map(|r| answer_nodes(this, &peers, order, r))
                .collect::<Vec<_>>()
        };
        let rotate = firsts(AnswerOrder::Rotate);
        assert_eq!(rotate.len(), 3);
        let leaders: Vec<IpAddr> = rotate.iter().map(|n| n[0]).collect();
        assert_eq!(leaders, [ip("10.0.0.1"), ip("10.0.0.2"), ip("10.0.0.3")]);
        assert!(rotate.iter().all(|n| n.len() == 3));
        let self_first = firsts(AnswerOrder::SelfFirst);
        assert_eq!(self_first.len(), 2);
        assert!(
            self_first
                .iter()
                .all(|n| n[0] == ip("10.0.0.1") && n.len() == 3)
        );
        assert_eq!(self_first[1][1], ip("10.0.0.3"));
        // This node unhealthy: only the peers, still rotating.
        assert_eq!(
            answer_nodes(None, &peers, AnswerOrder::Rotate, 1),
            [peers[1], peers[0]]
        );
        assert!(answer_nodes(None, &[], AnswerOrder::Rotate, 5).is_empty());
        assert_eq!(rotations(false, 0, AnswerOrder::Rotate), 0);
    }

    #[test]
    fn udp_limits() {
        let mut q = query("github.com.", RecordType::A);
        assert_eq!(udp_limit(&q), 512);
        let mut e = Edns::new();
        e.set_max_payload(4096);
        q.set_edns(e.clone());
        assert_eq!(udp_limit(&q), 1232);
        e.set_max_payload(100);
        q.set_edns(e);
        assert_eq!(udp_limit(&q), 512);
    }
}

//! Forwarded answers replayed from their wire form, their TTLs counting down. Pure.
//!
//! A forwarded answer is kept by the receive loop that forwarded it, as bytes plus where each record's
//! TTL sits; a later identical plain query gets a copy with its own ID and question spelling (as
//! `fastpath` does for intercepted names) and every TTL lowered by the seconds since the upstream
//! answered. It is kept only while its smallest TTL lasts, so no client is ever told a record lives
//! longer than the upstream said. Only complete answers qualify: NOERROR or NXDOMAIN, not truncated,
//! at least one record with a TTL. Errors, truncated answers and anything odd take the resolver path.

/// The RR type of EDNS's OPT pseudo-record, whose "TTL" holds flags, not a lifetime.
const OPT: u16 = 41;

/// A forwarded answer and where its TTLs are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Recorded {
    wire: Vec<u8>,
    ttl_offsets: Vec<usize>,
    min_ttl: u32,
}

impl Recorded {
    /// `None` unless `wire` is a complete NOERROR/NXDOMAIN answer with at least one record of TTL > 0.
    pub(super) fn new(wire: Vec<u8>) -> Option<Self> {
        if wire.len() < 12 {
            return None;
        }
        let flags = u16::from_be_bytes([wire[2], wire[3]]);
        let (qr, tc, rcode) = (flags & 0x8000 != 0, flags & 0x0200 != 0, flags & 0x000f);
        if !qr || tc || !(rcode == 0 || rcode == 3) {
            return None;
        }
        let count = |i: usize| usize::from(u16::from_be_bytes([wire[i], wire[i + 1]]));
        let (questions, records) = (count(4), count(6) + count(8) + count(10));
        let mut i = 12;
        for _ in 0..questions {
            i = skip_name(&wire, i)? + 4;
        }
        let mut ttl_offsets = Vec::with_capacity(records);
        let mut min_ttl = u32::MAX;
        for _ in 0..records {
            i = skip_name(&wire, i)?;
            let fixed = wire.get(i..i + 10)?;
            let rtype = u16::from_be_bytes([fixed[0], fixed[1]]);
            let ttl = u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]);
            let rdlen = usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
            if rtype != OPT {
                ttl_offsets.push(i + 4);
                min_ttl = min_ttl.min(ttl);
            }
            i += 10 + rdlen;
        }
        if i != wire.len() || ttl_offsets.is_empty() || min_ttl == 0 {
            return None;
        }
        Some(Recorded {
            wire,
            ttl_offsets,
            min_ttl,
        })
    }

    /// The answer as it stands `elapsed` seconds after the upstream gave it; `None` once a record expired.
    pub(super) fn at(&self, elapsed: u64) -> Option<Vec<u8>> {
        let elapsed = u32::try_from(elapsed).ok()?;
        if elapsed >= self.min_ttl {
            return None;
        }
        let mut out = self.wire.clone();
        for &at in &self.ttl_offsets {
            let ttl = u32::from_be_bytes([out[at], out[at + 1], out[at + 2], out[at + 3]]);
            out[at..at + 4].copy_from_slice(&(ttl - elapsed).to_be_bytes());
        }
        Some(out)
    }
}

/// The offset just past the name starting at `i` (labels, ending in a root label or a pointer).
fn skip_name(wire: &[u8], mut i: usize) -> Option<usize> {
    for _ in 0..128 {
        let len = *wire.get(i)?;
        match len {
            0 => return Some(i + 1),
            l if l & 0xc0 == 0xc0 => return wire.get(i + 1).map(|_| i + 2),
            l if l & 0xc0 == 0 => i += 1 + usize::from(l),
            _ => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Edns, Message, MessageType, Query, ResponseCode};
    use hickory_proto::rr::rdata::{A, SOA};
    use hickory_proto::rr::{Name, RData, Record, RecordType};

    fn answer(code: ResponseCode, ttls: &[u32], edns: bool) -> Message {
        let name = Name::from_ascii("deb.example.").unwrap();
        let mut m = Message::query();
        m.metadata.message_type = MessageType::Response;
        m.metadata.response_code = code;
        m.add_query(Query::query(name.clone(), RecordType::A));
        for (n, ttl) in ttls.iter().enumerate() {
            m.add_answer(Record::from_rdata(
                name.clone(),
                *ttl,
                RData::A(A::new(192, 0, 2, n as u8)),
            ));
        }
        if edns {
            let mut e = Edns::new();
            e.set_max_payload(1232);
            m.set_edns(e);
        }
        m
    }

    fn ttls(wire: &[u8]) -> Vec<u32> {
        let m = Message::from_vec(wire).unwrap();
        m.answers
            .iter()
            .chain(&m.authorities)
            .map(|r| r.ttl)
            .collect()
    }

    #[test]
    fn ttls_count_down_and_the_answer_expires_with_its_shortest_record() {
        let m = answer(ResponseCode::NoError, &[300, 60], true);
        let r = Recorded::new(m.to_vec().unwrap()).unwrap();
        assert_eq!(ttls(&r.at(0).unwrap()), [300, 60]);
        let later = r.at(59).unwrap();
        assert_eq!(ttls(&later), [241, 1]);
        let parsed = Message::from_vec(&later).unwrap();
        assert_eq!(
            parsed.edns.as_ref().map(|e| e.max_payload()),
            Some(1232),
            "the OPT record is left alone"
        );
        assert_eq!(r.at(60), None);
        assert_eq!(r.at(u64::MAX), None);
    }

    #[test]
    fn negative_answers_count_down_their_soa() {
        let mut m = answer(ResponseCode::NXDomain, &[], false);
        let zone = Name::from_ascii("example.").unwrap();
        let soa = SOA::new(zone.clone(), zone.clone(), 1, 3600, 600, 86400, 30);
        m.add_authority(Record::from_rdata(zone, 30, RData::SOA(soa)));
        let r = Recorded::new(m.to_vec().unwrap()).unwrap();
        assert_eq!(ttls(&r.at(10).unwrap()), [20]);
    }

    #[test]
    fn only_complete_answers_with_a_lifetime_are_kept() {
        for m in [
            answer(ResponseCode::ServFail, &[300], false),
            answer(ResponseCode::Refused, &[300], false),
            answer(ResponseCode::NoError, &[], true),
            answer(ResponseCode::NoError, &[300, 0], false),
        ] {
            assert_eq!(Recorded::new(m.to_vec().unwrap()), None, "{m:?}");
        }
        let mut truncated = answer(ResponseCode::NoError, &[300], false);
        truncated.metadata.truncation = true;
        assert_eq!(Recorded::new(truncated.to_vec().unwrap()), None);
        let mut query = answer(ResponseCode::NoError, &[300], false);
        query.metadata.message_type = MessageType::Query;
        assert_eq!(Recorded::new(query.to_vec().unwrap()), None);
        // Cut or padded wire forms are not answers.
        let wire = answer(ResponseCode::NoError, &[300], false)
            .to_vec()
            .unwrap();
        assert_eq!(Recorded::new(wire[..wire.len() - 1].to_vec()), None);
        let mut longer = wire.clone();
        longer.push(0);
        assert_eq!(Recorded::new(longer), None);
        for n in 0..wire.len() {
            let _ = Recorded::new(wire[..n].to_vec());
        }
    }
}

//! Answers to repeated intercepted queries, replayed from their wire form. Pure.
//!
//! Machines ask the same few intercepted names over and over; the answer only changes when the set of
//! healthy nodes does. So the first answer for a question is encoded the normal way and kept as bytes;
//! later identical questions get a copy with their own ID, and their own spelling of the name patched in
//! (0x20-randomising resolvers compare it). Only plain queries qualify: one question, no answer/authority
//! records, at most an OPT record without options. Anything else takes the normal path.

use super::replay::Recorded;
use hashbrown::HashMap;
use std::time::Instant;

/// Templates kept per receive loop before the table is emptied and rebuilt.
const MAX_ENTRIES: usize = 4096;

/// What makes two queries equivalent: flags we echo, the lowercased question, the OPT record, and the
/// rotation of the node list.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Question<'a> {
    packet: &'a [u8],
    /// End of QNAME+QTYPE+QCLASS (the question starts at 12).
    question_end: usize,
}

impl<'a> Question<'a> {
    /// `None` unless `packet` is a plain query (see the module doc).
    pub(super) fn parse(packet: &'a [u8]) -> Option<Self> {
        if packet.len() < 12 + 5 {
            return None;
        }
        let flags = u16::from_be_bytes([packet[2], packet[3]]);
        let qr = flags & 0x8000 != 0;
        let opcode = (flags >> 11) & 0xf;
        let count = |i: usize| u16::from_be_bytes([packet[i], packet[i + 1]]);
        if qr || opcode != 0 || count(4) != 1 || count(6) != 0 || count(8) != 0 || count(10) > 1 {
            return None;
        }
        // QNAME: plain labels (a query has no compression), then QTYPE and QCLASS.
        let mut i = 12;
        loop {
            let len = usize::from(*packet.get(i)?);
            if len == 0 {
                i += 1;
                break;
            }
            if len > 63 {
                return None;
            }
            i += 1 + len;
            if i - 12 > 255 {
                return None;
            }
        }
        let question_end = i + 4;
        if packet.len() < question_end {
            return None;
        }
        let rest = &packet[question_end..];
        let opt_ok = match count(10) {
            0 => rest.is_empty(),
            // root name, TYPE=OPT(41), CLASS=payload, TTL=ext-rcode/version/flags, RDLEN=0
            _ => rest.len() == 11 && rest[0] == 0 && rest[1..3] == [0, 41] && rest[9..11] == [0, 0],
        };
        opt_ok.then_some(Question {
            packet,
            question_end,
        })
    }

    /// The table key; `rotation` distinguishes the node orders handed out in turn.
    pub(super) fn key(&self, rotation: usize) -> Vec<u8> {
        let mut key = Vec::with_capacity(self.packet.len() + 4);
        // RD and CD are echoed into the answer.
        key.push(self.packet[2] & 0x01);
        key.push(self.packet[3] & 0x10);
        key.extend(
            self.packet[12..self.question_end]
                .iter()
                .map(u8::to_ascii_lowercase),
        );
        key.extend_from_slice(&self.packet[self.question_end..]);
        key.extend_from_slice(&(rotation as u32).to_be_bytes());
        key
    }

    /// `template` with this query's ID and question spelling.
    pub(super) fn patch(&self, template: &[u8]) -> Option<Vec<u8>> {
        if template.len() < self.question_end {
            return None;
        }
        let mut out = template.to_vec();
        out[..2].copy_from_slice(&self.packet[..2]);
        out[12..self.question_end].copy_from_slice(&self.packet[12..self.question_end]);
        Some(out)
    }
}

/// The rotation that keys forwarded answers (intercepted ones use the small numbers of their rotations).
pub(super) const FORWARDED: usize = u32::MAX as usize;

/// The table one receive loop keeps. Emptied whenever the healthy node set changes (that decides which
/// names are answered here and which are forwarded).
#[derive(Default)]
pub(super) struct Templates {
    generation: u64,
    entries: HashMap<Vec<u8>, Vec<u8>>,
    /// Forwarded answers and when the upstream gave them.
    forwarded: HashMap<Vec<u8>, (Instant, Recorded)>,
}

impl Templates {
    /// Forgets everything when `generation` (an identity of the healthy set) moved.
    pub(super) fn sync(&mut self, generation: u64) {
        if generation != self.generation {
            self.entries.clear();
            self.forwarded.clear();
            self.generation = generation;
        }
    }

    pub(super) fn generation(&self) -> u64 {
        self.generation
    }

    /// A forwarded answer as it stands `now` (its TTLs lowered by the whole seconds begun since it was
    /// given, so never overstated); expired ones are dropped.
    pub(super) fn forwarded(&mut self, key: &[u8], now: Instant) -> Option<Vec<u8>> {
        let (at, recorded) = self.forwarded.get(key)?;
        let elapsed = now.saturating_duration_since(*at);
        let secs = elapsed.as_secs() + u64::from(elapsed.subsec_nanos() > 0);
        let wire = recorded.at(secs);
        if wire.is_none() {
            self.forwarded.remove(key);
        }
        wire
    }

    /// Keeps a forwarded answer given at `at` while the healthy set was `generation`; one given under
    /// another set, or that is not a complete answer with a lifetime, is not kept.
    pub(super) fn learn(&mut self, generation: u64, key: Vec<u8>, wire: Vec<u8>, at: Instant) {
        if generation != self.generation {
            return;
        }
        let Some(recorded) = Recorded::new(wire) else {
            return;
        };
        if self.forwarded.len() >= MAX_ENTRIES {
            self.forwarded.clear();
        }
        self.forwarded.insert(key, (at, recorded));
    }

    pub(super) fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.entries.get(key).map(Vec::as_slice)
    }

    pub(super) fn insert(&mut self, key: Vec<u8>, answer: Vec<u8>) {
        if self.entries.len() >= MAX_ENTRIES {
            self.entries.clear();
        }
        self.entries.insert(key, answer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Edns, Message, OpCode, Query};
    use hickory_proto::rr::{Name, RecordType};

    fn wire(name: &str, edns: bool) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        if edns {
            let mut e = Edns::new();
            e.set_max_payload(1232);
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    #[test]
    fn plain_queries_qualify_and_share_a_key_across_case_and_id() {
        let a = wire("Images.Metal-Stack.io.", false);
        let b = wire("images.metal-stack.IO.", false);
        let (qa, qb) = (Question::parse(&a).unwrap(), Question::parse(&b).unwrap());
        assert_eq!(qa.key(0), qb.key(0));
        assert_ne!(qa.key(0), qa.key(1), "rotation is part of the key");
        let e = wire("images.metal-stack.io.", true);
        assert_ne!(
            Question::parse(&e).unwrap().key(0),
            qa.key(0),
            "EDNS is part of the key"
        );
    }

    #[test]
    fn patch_restores_id_and_spelling() {
        let first = wire("images.metal-stack.io.", false);
        // a fake "answer": the query bytes plus a tail
        let mut template = first.clone();
        template.extend_from_slice(&[1, 2, 3]);
        let second = wire("IMAGES.metal-stack.io.", false);
        let q = Question::parse(&second).unwrap();
        let out = q.patch(&template).unwrap();
        assert_eq!(&out[..2], &second[..2]);
        assert_eq!(&out[12..q.question_end], &second[12..q.question_end]);
        assert_eq!(&out[out.len() - 3..], &[1, 2, 3]);
    }

    #[test]
    fn anything_unusual_takes_the_normal_path() {
        let q = wire("github.com.", false);
        let mut response = q.clone();
        response[2] |= 0x80;
        assert!(Question::parse(&response).is_none(), "a response");
        let mut m = Message::from_vec(&q).unwrap();
        m.metadata.op_code = OpCode::Update;
        assert!(
            Question::parse(&m.to_vec().unwrap()).is_none(),
            "not a QUERY"
        );
        let mut two = Message::from_vec(&q).unwrap();
        two.add_query(Query::query(Name::from_ascii("a.").unwrap(), RecordType::A));
        assert!(
            Question::parse(&two.to_vec().unwrap()).is_none(),
            "two questions"
        );
        // EDNS with an option (a cookie, as dig sends) is not replayed
        let mut with_opt = wire("github.com.", true);
        with_opt.truncate(with_opt.len() - 2);
        with_opt.extend_from_slice(&[0, 12, 0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert!(Question::parse(&with_opt).is_none());
        for cut in 0..q.len() {
            assert!(Question::parse(&q[..cut]).is_none(), "cut at {cut}");
        }
        let mut trailing = q.clone();
        trailing.push(0);
        assert!(Question::parse(&trailing).is_none(), "trailing bytes");
        let mut compressed = q.clone();
        compressed[12] = 0xc0;
        assert!(
            Question::parse(&compressed).is_none(),
            "a pointer in the question"
        );
    }

    #[test]
    fn templates_are_bounded_and_forget_on_a_new_generation() {
        let mut t = Templates::default();
        t.sync(1);
        t.insert(vec![1], vec![9]);
        assert_eq!(t.get(&[1]), Some(&[9u8][..]));
        t.sync(1);
        assert!(t.get(&[1]).is_some());
        t.sync(2);
        assert!(t.get(&[1]).is_none());
        for i in 0..(MAX_ENTRIES + 1) {
            t.insert((i as u32).to_be_bytes().to_vec(), vec![]);
        }
        assert!(t.entries.len() <= MAX_ENTRIES);
    }
}

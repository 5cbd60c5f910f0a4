//! Which node of the partition owns a key: rendezvous (highest random weight) hashing of the key over the
//! healthy nodes. Every node computes the same owner from the same set without talking to the others;
//! when a node leaves or joins, only the keys it owned (or now owns) move. Pure.
//!
//! The weight of a node for a key is the first eight bytes of SHA-256(node address as text, NUL, key):
//! fixed and documented, because nodes of different versions must agree on it.

use sha2::{Digest, Sha256};
use std::net::IpAddr;

/// A node's weight for a key.
pub fn weight(node: IpAddr, key: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(node.to_string().as_bytes());
    h.update([0u8]);
    h.update(key.as_bytes());
    let d = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&d[..8]);
    u64::from_be_bytes(first)
}

/// The owner of `key` among `nodes` (highest weight; a tie, which needs a hash collision, goes to the
/// lower address). `None` when there is no node.
pub fn owner(key: &str, nodes: &[IpAddr]) -> Option<IpAddr> {
    nodes
        .iter()
        .copied()
        .max_by(|a, b| weight(*a, key).cmp(&weight(*b, key)).then_with(|| b.cmp(a)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn every_node_agrees_whatever_order_it_lists_the_nodes_in() {
        let a = [ip("10.0.0.1"), ip("10.0.0.2"), ip("10.0.0.3")];
        let b = [ip("10.0.0.3"), ip("10.0.0.1"), ip("10.0.0.2")];
        for i in 0..200 {
            let key = format!("file:images.test/img/{i}");
            assert_eq!(owner(&key, &a), owner(&key, &b));
        }
        assert_eq!(owner("k", &[]), None);
        assert_eq!(owner("k", &[ip("10.0.0.9")]), Some(ip("10.0.0.9")));
    }

    #[test]
    fn keys_spread_over_the_nodes_and_only_a_leaving_nodes_keys_move() {
        let three = [ip("10.0.0.1"), ip("10.0.0.2"), ip("10.0.0.3")];
        let two = [ip("10.0.0.1"), ip("10.0.0.2")];
        let mut per_node = [0usize; 3];
        for i in 0..3000 {
            let key = format!("oci:docker.io/library/x@blob:sha256:{i:064x}");
            let o = owner(&key, &three).unwrap();
            per_node[three.iter().position(|n| *n == o).unwrap()] += 1;
            if o != ip("10.0.0.3") {
                assert_eq!(owner(&key, &two), Some(o), "a key of a staying node moved");
            }
        }
        for n in per_node {
            assert!((800..1200).contains(&n), "uneven spread: {per_node:?}");
        }
    }

    #[test]
    fn the_weight_is_the_documented_hash() {
        // SHA-256("10.0.0.1\0k"), first eight bytes, big-endian: fixed across versions.
        let mut h = Sha256::new();
        h.update(b"10.0.0.1\0k");
        let d = h.finalize();
        assert_eq!(
            weight(ip("10.0.0.1"), "k"),
            u64::from_be_bytes(d[..8].try_into().unwrap())
        );
    }
}

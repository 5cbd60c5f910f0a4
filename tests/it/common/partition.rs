//! Several cache nodes on 127.0.0.1, .2, .3 … sharing one port (peers are reached on `nodes.peer_port`),
//! each knowing the others, with the rest of the config from the test.

use super::{Env, Service};
use image_cache::config::{Config, Span};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

pub(crate) fn node_ip(i: usize) -> IpAddr {
    format!("127.0.0.{}", i + 1).parse().unwrap()
}

/// A port free on the first `n` loopback addresses.
pub(crate) fn shared_port(n: usize) -> u16 {
    loop {
        let first = std::net::TcpListener::bind((node_ip(0), 0)).unwrap();
        let port = first.local_addr().unwrap().port();
        let others: Vec<_> = (1..n)
            .map(|i| std::net::TcpListener::bind((node_ip(i), port)))
            .collect();
        if others.iter().all(Result::is_ok) {
            return port;
        }
    }
}

pub(crate) struct Partition {
    pub nodes: Vec<Service>,
    pub port: u16,
}

impl Partition {
    /// Starts `n` nodes, configured by `configure(i, config)` after the partition's own settings, and
    /// waits until every node sees every other one up.
    pub(crate) async fn start(
        env: &Env,
        n: usize,
        configure: impl Fn(usize, &mut Config),
    ) -> Partition {
        let port = shared_port(n);
        let mut nodes = Vec::new();
        for i in 0..n {
            let mut c = env.config(image_cache::config::OnMiss::Fill);
            c.state_dir = env.dir.path().join(format!("node-{i}"));
            c.http.listen = vec![SocketAddr::new(node_ip(i), port)];
            c.nodes.self_addr = Some(node_ip(i));
            c.nodes.peers = (0..n).filter(|j| *j != i).map(node_ip).collect();
            c.nodes.peer_port = port;
            c.nodes.health_interval = Span(Duration::from_millis(100));
            configure(i, &mut c);
            nodes.push(env.start(c).await);
        }
        for node in &nodes {
            let mut watch = node.running.as_ref().unwrap().peers.watch();
            tokio::time::timeout(
                Duration::from_secs(10),
                watch.wait_for(|h| h.peers.len() == n - 1),
            )
            .await
            .expect("every peer comes up")
            .unwrap();
        }
        Partition { nodes, port }
    }

    /// Which node owns `key` when every node is healthy.
    pub(crate) fn owner_of(&self, key: &str) -> usize {
        let all: Vec<IpAddr> = (0..self.nodes.len()).map(node_ip).collect();
        let owner = image_cache::peers::owner::owner(key, &all).unwrap();
        all.iter().position(|ip| *ip == owner).unwrap()
    }

    /// `Service::metric_sum` over every node.
    pub(crate) async fn metric_sum(&self, family: &str, labels: &str) -> f64 {
        let mut sum = 0.0;
        for node in &self.nodes {
            sum += node.metric_sum(family, labels).await;
        }
        sum
    }

    pub(crate) async fn stop(self) {
        for node in self.nodes {
            node.stop().await;
        }
    }
}

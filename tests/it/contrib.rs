//! `contrib/`: the Grafana dashboard and the Prometheus alerts only name metrics the service exposes, so a
//! renamed metric cannot silently blank a panel or mute an alert. (`promtool check rules` and
//! `promtool test rules` run in tests/contrib.sh.)

use crate::common;

use common::Env;
use image_cache::config::OnMiss;
use std::collections::BTreeSet;

const DASHBOARD: &str = include_str!("../../contrib/grafana/image-cache.json");
const ALERTS: &str = include_str!("../../contrib/prometheus/alerts.yaml");

/// Every `image_cache_…` name in a text.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("image_cache_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

/// The names a Prometheus server sees from `/metrics`: sample names, and counters with `_total`.
fn exposed(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        if let Some(decl) = line.strip_prefix("# TYPE ") {
            let mut parts = decl.split(' ');
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap_or(""));
            names.insert(name.to_string());
            if kind == "counter" {
                names.insert(format!("{name}_total"));
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}

#[test]
fn dashboard_is_a_well_formed_grafana_dashboard() {
    let d: serde_json::Value = serde_json::from_str(DASHBOARD).expect("the dashboard is JSON");
    assert_eq!(d["uid"], "image-cache");
    assert!(d["schemaVersion"].as_u64().unwrap() >= 36);
    let vars: Vec<&str> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(vars, ["datasource", "instance"]);
    let panels = d["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    let mut queries = 0;
    for p in panels {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "duplicate id: {p}");
        let g = &p["gridPos"];
        assert!(
            g["x"].as_u64().unwrap() + g["w"].as_u64().unwrap() <= 24,
            "panel wider than the grid: {p}"
        );
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{} has no query", p["title"]);
        for t in targets {
            let expr = t["expr"].as_str().unwrap();
            assert!(expr.contains("image_cache_"), "{expr}");
            assert!(
                expr.contains("$instance"),
                "{} ignores the node picker",
                p["title"]
            );
            queries += 1;
        }
    }
    assert!(queries >= 20, "{queries} queries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alerts_only_use_exposed_metrics() {
    let env = Env::new().await;
    let mut config = env.config(OnMiss::Fill);
    // A peer and a registry nobody listens on, so their series exist too.
    let closed = common::unused_port("127.0.0.2");
    config.nodes.peers = vec!["127.0.0.2".parse().unwrap()];
    config.nodes.peer_port = closed;
    // And a registry that announces its pull budget, for the budget gauges.
    let metered = common::oci::FakeRegistry::start().await;
    metered.push_image("x", "1", &[b"layer".to_vec()]);
    *metered.state.ratelimit.lock().unwrap() = Some((100, 60));
    config.registry.upstreams = [
        (
            "fake.test".to_string(),
            format!("http://127.0.0.2:{closed}"),
        ),
        ("metered.test".to_string(), metered.url.clone()),
    ]
    .into();
    let svc = env.start(config).await;
    let r = svc
        .admin("/v2/x/manifests/1?ns=metered.test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = svc.get("/file/100/1").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = svc
        .admin("/v2/library/x/manifests/latest?ns=fake.test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let exposition = svc.text("/metrics").await;
    let have = exposed(&exposition);
    let used: BTreeSet<String> = metric_names(DASHBOARD)
        .into_iter()
        .chain(metric_names(ALERTS))
        .collect();
    assert!(used.len() >= 15, "{used:?}");
    let missing: Vec<&String> = used.iter().filter(|n| !have.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "not exposed by /metrics: {missing:?}\nexposed: {have:?}"
    );
    svc.stop().await;
}

//! `/metrics` as Prometheus scrapes it, read with a real exposition parser, and the separate
//! `--metrics-addr` listener.

mod common;

use common::*;
use serde_json::json;
use std::collections::BTreeSet;

fn parse(body: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))
        .expect("valid exposition")
}

fn value(scrape: &prometheus_parse::Scrape, name: &str, label: Option<(&str, &str)>) -> f64 {
    let sample = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
        .unwrap_or_else(|| panic!("no sample {name} {label:?}"));
    match sample.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => v,
        ref other => panic!("{name}: {other:?}"),
    }
}

#[tokio::test]
async fn the_exposition_parses_and_reports_live_figures() {
    let server = TestServer::start(peerjsd::Config::default()).await;
    let alice = PeerClient::open(&server, "alice").await;
    let mut bob = PeerClient::open(&server, "bob").await;
    alice.send(offer("bob", "dc"));
    bob.recv().await;
    alice.send_text("{broken");
    let mut refused = PeerClient::connect_url(&server.ws_url("key=bad&id=x&token=t"), "x").await;
    refused.closed().await;
    server
        .until("malformed counted", |s| {
            s.metrics.dropped(peerjsd::protocol::DropReason::Malformed) == 1
        })
        .await;

    // What Prometheus sends.
    let accept = "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let response = server.get("/metrics", &[accept]).await;
    assert_eq!(response.status, 200);
    let scrape = parse(&response.body);

    assert_eq!(value(&scrape, "peerjs_peers", None), 2.0);
    assert_eq!(value(&scrape, "peerjs_rooms", None), 1.0);
    assert_eq!(
        value(
            &scrape,
            "peerjs_messages_relayed_total",
            Some(("type", "OFFER"))
        ),
        1.0
    );
    assert_eq!(
        value(
            &scrape,
            "peerjs_messages_dropped_total",
            Some(("reason", "malformed"))
        ),
        1.0
    );
    assert_eq!(
        value(
            &scrape,
            "peerjs_connections_rejected_total",
            Some(("reason", "invalid_key"))
        ),
        1.0
    );
    assert_eq!(
        value(&scrape, "peerjs_connections_accepted_total", None),
        2.0
    );
    assert!(value(&scrape, "process_resident_memory_bytes", None) > 1e6);
    assert!(value(&scrape, "process_open_fds", None) >= 3.0);
    assert!(value(&scrape, "process_start_time_seconds", None) > 1.7e9);
    let latency = scrape
        .samples
        .iter()
        .find(|s| s.metric == "peerjs_relay_latency_seconds")
        .expect("histogram");
    match &latency.value {
        prometheus_parse::Value::Histogram(buckets) => {
            assert_eq!(buckets.last().map(|b| b.count), Some(1.0), "{buckets:?}")
        }
        other => panic!("{other:?}"),
    }

    // Names: prefixed (or standard process_*), units in names, labels from small fixed sets.
    let mut labels = BTreeSet::new();
    for sample in &scrape.samples {
        assert!(
            sample.metric.starts_with("peerjs_") || sample.metric.starts_with("process_"),
            "{}",
            sample.metric
        );
        for (key, _) in sample.labels.iter() {
            labels.insert(key.clone());
        }
    }
    assert_eq!(
        labels,
        BTreeSet::from(["outcome".to_owned(), "reason".to_owned(), "type".to_owned()]),
        "no per-peer or per-room labels"
    );
    assert!(response.body.contains("peerjs_offline_queue_bytes"));
    assert!(response.body.ends_with("# EOF\n"));
}

#[tokio::test]
async fn metrics_addr_serves_ops_only() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ops_addr = listener.local_addr().unwrap();
    let main = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let main_addr = main.local_addr().unwrap();
    let server = peerjsd::Server::new(peerjsd::Config::default())
        .unwrap()
        .with_metrics_listener(listener);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(main, async {
        let _ = stopped.await;
    }));
    let get = |addr, path: &str, accept: &str| {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
        );
        async move { http_raw(addr, &request).await }
    };
    let text = get(ops_addr, "/metrics", "text/plain").await;
    assert_eq!(text.status, 200);
    assert!(text.body.contains("peerjs_peers 0"));
    let health = get(ops_addr, "/health", "*/*").await;
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&health.body).unwrap()["status"],
        json!("ok")
    );
    // No signaling or REST on the ops port.
    assert_eq!(get(ops_addr, "/peerjs/id", "*/*").await.status, 404);
    let upgrade = upgrade_request("/peerjs?key=peerjs&id=a&token=t", "Connection: close\r\n");
    assert_eq!(http_raw(ops_addr, &upgrade).await.status, 404);
    assert_eq!(http_raw(main_addr, &upgrade).await.status, 101);
    assert_eq!(get(main_addr, "/peerjs/id", "*/*").await.status, 200);
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

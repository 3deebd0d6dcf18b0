//! Draining: sockets closed with 1001, health 503, and `run` returns within the bound even when
//! clients never answer.

mod common;

use common::*;
use std::time::{Duration, Instant};
use tower::ServiceExt;

#[tokio::test]
async fn shutdown_closes_every_socket_with_1001_and_returns() {
    let mut server = TestServer::with(|c| c.shutdown_timeout = Duration::from_secs(5)).await;
    let mut peers = Vec::new();
    for n in 0..10 {
        peers.push(PeerClient::open(&server, &format!("p{n}")).await);
    }
    let started = Instant::now();
    let done = server.begin_stop();
    for peer in &mut peers {
        let (code, reason) = peer.closed().await;
        assert_eq!((code, reason.as_str()), (1001, "going away"));
    }
    done.await.unwrap().expect("drained in time");
    assert!(started.elapsed() < Duration::from_secs(5));
    // The listener is closed.
    assert!(tokio::net::TcpStream::connect(server.addr).await.is_err());
}

#[tokio::test]
async fn shutdown_finishes_within_the_bound_when_clients_never_answer() {
    let mut server = TestServer::with(|c| c.shutdown_timeout = Duration::from_secs(4)).await;
    let frozen = PeerClient::open(&server, "frozen").await;
    frozen.freeze();
    let _idle_http = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let started = Instant::now();
    server
        .begin_stop()
        .await
        .unwrap()
        .expect("drained within the bound");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_drain_that_overruns_reports_it() {
    let mut server = TestServer::with(|c| c.shutdown_timeout = Duration::from_millis(300)).await;
    let frozen = PeerClient::open(&server, "frozen").await;
    frozen.freeze();
    let started = Instant::now();
    let result = server.begin_stop().await.unwrap();
    assert!(
        matches!(result, Err(peerjsd::RunError::DrainTimeout(..))),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn health_turns_503_while_draining() {
    let server = TestServer::start(peerjsd::Config::default()).await;
    let router = peerjsd::http::router(server.shared.clone());
    server
        .shared
        .draining
        .store(true, std::sync::atomic::Ordering::Release);
    let request = axum::http::Request::get("/health")
        .body(axum::body::Body::empty())
        .unwrap();
    let response = router.oneshot(request).await.unwrap();
    assert_eq!(response.status(), 503);
    let body = axum::body::to_bytes(response.into_body(), 1024)
        .await
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["status"], "draining");
}

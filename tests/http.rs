//! REST, ops endpoints, CORS and the upgrade handshake's HTTP answers (docs/PROTOCOL.md §1.2, §6).

mod common;

use common::*;
use peerjsd::config::RoomMode;
use serde_json::{Value, json};
use std::time::Duration;

const INFO: &str = r#"{"name":"PeerJS Server","description":"A server side element to broker connections between PeerJS clients.","website":"https://peerjs.com/"}"#;

#[tokio::test]
async fn info_is_served_at_the_path_with_and_without_slash() {
    let server = TestServer::with(|c| c.path = "/myapp/".into()).await;
    for path in ["/myapp", "/myapp/"] {
        let response = server.get(path, &[]).await;
        assert_eq!(response.status, 200, "{path}");
        assert_eq!(response.body, INFO);
        assert_eq!(
            response.header("content-type"),
            Some("application/json; charset=utf-8")
        );
    }
    assert_eq!(server.get("/", &[]).await.status, 404);
}

#[tokio::test]
async fn id_is_a_fresh_uuid_as_text_html_without_newline() {
    let server = TestServer::start(peerjsd::Config::default()).await;
    let a = server.get("/peerjs/id?ts=1234&version=1.5.5", &[]).await;
    let b = server.get("/anykey/id/", &[]).await;
    for response in [&a, &b] {
        assert_eq!(response.status, 200);
        assert_eq!(
            response.header("content-type"),
            Some("text/html; charset=utf-8")
        );
        assert_eq!(response.body.len(), 36);
        assert!(
            uuid::Uuid::parse_str(&response.body).is_ok(),
            "{}",
            response.body
        );
    }
    assert_ne!(a.body, b.body);
}

#[tokio::test]
async fn cors_reflects_any_origin_by_default() {
    let server = TestServer::start(peerjsd::Config::default()).await;
    let response = server
        .get("/peerjs/id", &["Origin: http://game.example"])
        .await;
    assert_eq!(
        response.header("access-control-allow-origin"),
        Some("http://game.example")
    );
    let response = server.get("/peerjs/id", &[]).await;
    assert_eq!(response.header("access-control-allow-origin"), None);
    let preflight = server
        .http("OPTIONS /peerjs/id HTTP/1.1\r\nHost: x\r\nConnection: close\r\nOrigin: http://a.example\r\n\
               Access-Control-Request-Method: GET\r\nAccess-Control-Request-Headers: x-custom\r\n\r\n")
        .await;
    assert_eq!(preflight.status, 204, "as the cors package answers");
    assert_eq!(
        preflight.header("access-control-allow-origin"),
        Some("http://a.example")
    );
    assert_eq!(
        preflight.header("access-control-allow-headers"),
        Some("x-custom")
    );
}

#[tokio::test]
async fn cors_allow_list_echoes_only_listed_origins_but_still_serves() {
    let server =
        TestServer::with(|c| c.cors = vec!["http://o1.example".into(), "http://o2.example".into()])
            .await;
    for origin in ["http://o1.example", "http://o2.example"] {
        let response = server
            .get("/peerjs/id", &[&format!("Origin: {origin}")])
            .await;
        assert_eq!(response.header("access-control-allow-origin"), Some(origin));
    }
    let response = server
        .get("/peerjs/id", &["Origin: http://evil.example"])
        .await;
    assert_eq!(response.status, 200);
    assert_eq!(response.header("access-control-allow-origin"), None);
}

#[tokio::test]
async fn peers_is_unauthorized_unless_discovery_is_on() {
    let server = TestServer::start(peerjsd::Config::default()).await;
    let response = server.get("/peerjs/peers", &[]).await;
    assert_eq!(
        (response.status, response.body.as_str()),
        (401, "Unauthorized")
    );

    let server = TestServer::with(|c| c.allow_discovery = true).await;
    assert_eq!(server.get("/peerjs/peers", &[]).await.body, "[]");
    let _c = PeerClient::open(&server, "charlie").await;
    let _a = PeerClient::open(&server, "alice").await;
    let _b = PeerClient::open(&server, "bob").await;
    let response = server.get("/peerjs/peers", &[]).await;
    assert_eq!(
        response.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(
        serde_json::from_str::<Value>(&response.body).unwrap(),
        json!(["charlie", "alice", "bob"])
    );
}

#[tokio::test]
async fn peers_in_room_mode_lists_one_room() {
    let server = TestServer::with(|c| {
        c.allow_discovery = true;
        c.rooms = RoomMode::Token;
        c.max_room_peers = 4;
    })
    .await;
    let _a = PeerClient::open_with_token(&server, "alice", "room1").await;
    let _b = PeerClient::open_with_token(&server, "bob", "room2").await;
    let response = server.get("/peerjs/peers?token=room1", &[]).await;
    assert_eq!(
        serde_json::from_str::<Value>(&response.body).unwrap(),
        json!(["alice"])
    );
    assert_eq!(server.get("/peerjs/peers?token=none", &[]).await.body, "[]");
    assert_eq!(server.get("/peerjs/peers", &[]).await.status, 400);
}

#[tokio::test]
async fn health_and_metrics_show_live_values() {
    let server = TestServer::start(peerjsd::Config::default()).await;
    let health: Value = serde_json::from_str(&server.get("/health", &[]).await.body).unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));
    assert!(health["timestamp"].as_u64().unwrap() > 1_700_000_000_000);

    let alice = PeerClient::open(&server, "alice").await;
    let mut bob = PeerClient::open(&server, "bob").await;
    alice.send(offer("bob", "dc"));
    bob.recv().await;
    let response = server.get("/metrics", &[]).await;
    let metrics: Value = serde_json::from_str(&response.body).unwrap();
    assert_eq!(metrics["status"], "ok");
    assert_eq!(metrics["metrics"]["activePeers"], 2);
    assert_eq!(metrics["metrics"]["activeRooms"], 1);
    assert!(metrics["metrics"]["messagesPerSecond"].is_number());
    assert!(metrics["metrics"]["errorRate"].is_number());

    let text = server
        .get("/metrics", &["Accept: text/plain;version=0.0.4"])
        .await;
    assert!(
        text.header("content-type")
            .unwrap()
            .starts_with("text/plain")
    );
    assert!(text.body.contains("peerjs_peers 2"), "{}", text.body);
    assert!(
        text.body
            .contains("peerjs_messages_relayed_total{type=\"OFFER\"} 1"),
        "{}",
        text.body
    );
    let open = server
        .get(
            "/metrics",
            &["Accept: application/openmetrics-text;version=1.0.0"],
        )
        .await;
    assert!(
        open.header("content-type")
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
}

#[tokio::test]
async fn the_websocket_path_is_matched_exactly_before_upgrade() {
    let server = TestServer::start(peerjsd::Config::default()).await;
    for path in ["/peerjs/", "/PEERJS", "/peerjs/x", "/other", "/", "/health"] {
        let response = server
            .http(&upgrade_request(
                &format!("{path}?key=peerjs&id=a&token=t"),
                "",
            ))
            .await;
        assert_eq!(
            (response.status, response.body.as_str()),
            (400, "Bad Request"),
            "{path}"
        );
        assert_eq!(response.header("connection"), Some("close"));
    }
    let ok = server
        .http(&upgrade_request("/peerjs?key=peerjs&id=a&token=t", ""))
        .await;
    assert_eq!(ok.status, 101);
    assert_eq!(
        ok.header("sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
}

#[tokio::test]
async fn handshake_errors_match_the_ws_library() {
    let server = TestServer::start(peerjsd::Config::default()).await;
    let post = upgrade_request("/peerjs", "").replacen("GET", "POST", 1);
    assert_eq!(server.http(&post).await.status, 405);
    let bad_key = upgrade_request("/peerjs", "").replace("dGhlIHNhbXBsZSBub25jZQ==", "short");
    assert_eq!(server.http(&bad_key).await.status, 400);
    let bad_version = upgrade_request("/peerjs", "").replace("Version: 13", "Version: 12");
    let response = server.http(&bad_version).await;
    assert_eq!(response.status, 400);
    assert_eq!(response.header("sec-websocket-version"), Some("13, 8"));
    let version_8 = upgrade_request("/peerjs?key=peerjs&id=v8&token=t", "")
        .replace("Version: 13", "Version: 8");
    assert_eq!(server.http(&version_8).await.status, 101);
    // A plain GET of the WebSocket path falls through to REST: 404, as Express answers.
    assert_eq!(server.get("/peerjs", &[]).await.status, 404);
}

#[tokio::test]
async fn a_connection_that_never_sends_a_request_is_dropped() {
    use tokio::io::AsyncReadExt;
    let server = TestServer::with(|c| c.handshake_timeout = Duration::from_millis(300)).await;
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut buf = [0u8; 512];
    let started = std::time::Instant::now();
    let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
        .await
        .expect("not dropped")
        .unwrap_or(0);
    // hyper may answer 408 before closing; either way the connection ends.
    if n > 0 {
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"));
    }
    assert!(started.elapsed() < Duration::from_secs(3));
}

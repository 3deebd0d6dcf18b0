//! Timer logic under paused tokio time: the alive deadline and the offline queue's expiry.
//!
//! Sessions run over in-memory duplex pipes, so the runtime is idle whenever everyone waits
//! and paused time jumps straight to the next deadline: the tests are exact and instant.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use peerjsd::protocol::ConnectParams;
use peerjsd::ws::read_ahead::ReadAhead;
use peerjsd::ws::session::{self, Origin};
use peerjsd::{Config, Shared};
use serde_json::{Value, json};
use tokio::io::DuplexStream;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

type Client = WebSocketStream<DuplexStream>;

fn shared(tweak: impl FnOnce(&mut Config)) -> Arc<Shared> {
    let mut config = Config::default();
    tweak(&mut config);
    Arc::new(Shared::new(config))
}

/// A session on an in-memory pipe; returns the client end after OPEN.
async fn open(shared: &Arc<Shared>, id: &str) -> Client {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let server_shared = Arc::clone(shared);
    let params = ConnectParams {
        id: id.into(),
        token: format!("token-{id}"),
        key: "peerjs".into(),
    };
    tokio::spawn(async move {
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let guard = server_shared.admit_ip(ip).expect("ip limit");
        session::run(
            ReadAhead::new(server_io),
            params,
            server_shared,
            Origin { ip, guard },
        )
        .await;
    });
    let mut client = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;
    assert_eq!(next(&mut client).await, Some(json!({"type": "OPEN"})));
    client
}

/// The next text frame as JSON; `None` once the server closed.
async fn next(client: &mut Client) -> Option<Value> {
    loop {
        match client.next().await? {
            Ok(Message::Text(text)) => return Some(serde_json::from_str(&text).expect("json")),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

/// [`next`], failing (in virtual time) instead of hanging if the server never closes.
async fn closed_within(client: &mut Client, limit: Duration) -> Option<Value> {
    tokio::time::timeout(limit, next(client))
        .await
        .expect("the server closed the socket in time")
}

async fn send(client: &mut Client, value: Value) {
    client
        .send(Message::text(value.to_string()))
        .await
        .expect("send");
}

#[tokio::test(start_paused = true)]
async fn a_silent_peer_is_closed_exactly_at_the_alive_timeout() {
    let shared = shared(|c| c.alive_timeout = Duration::from_secs(60));
    let started = Instant::now();
    let mut alice = open(&shared, "alice").await;
    assert_eq!(
        closed_within(&mut alice, Duration::from_secs(120)).await,
        None
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(60) && waited < Duration::from_secs(61),
        "{waited:?}"
    );
    assert_eq!(shared.peer_count(), 0, "its id is freed");
}

#[tokio::test(start_paused = true)]
async fn any_inbound_frame_keeps_a_peer_alive() {
    let shared = shared(|c| c.alive_timeout = Duration::from_secs(60));
    let mut alice = open(&shared, "alice").await;
    let mut bob = open(&shared, "bob").await;
    // 50 s apart, for 200 s: heartbeats, an offer and even an unknown type all count.
    for message in [
        json!({"type": "HEARTBEAT"}),
        json!({"type": "OFFER", "dst": "bob", "payload": 1}),
        json!({"type": "SOMETHING-NEW"}),
        json!({"type": "HEARTBEAT"}),
    ] {
        tokio::time::sleep(Duration::from_secs(50)).await;
        send(&mut alice, message).await;
        send(&mut bob, json!({"type": "HEARTBEAT"})).await;
    }
    assert_eq!(
        next(&mut bob).await.map(|v| v["src"].clone()),
        Some(json!("alice"))
    );
    assert_eq!(shared.peer_count(), 2, "both alive after 200 s");
    // Then silence: closed 60 s after the last frame, not earlier.
    let last = Instant::now();
    assert_eq!(
        closed_within(&mut alice, Duration::from_secs(120)).await,
        None
    );
    let waited = last.elapsed();
    assert!(
        waited >= Duration::from_secs(60) && waited < Duration::from_secs(61),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn queued_messages_expire_after_the_expire_timeout_from_the_first_message() {
    let shared = shared(|c| {
        c.expire_timeout = Duration::from_secs(5);
        c.alive_timeout = Duration::from_secs(3600);
    });
    let mut alice = open(&shared, "alice").await;
    let first = Instant::now();
    send(
        &mut alice,
        json!({"type": "OFFER", "dst": "ghost", "payload": 1}),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    send(
        &mut alice,
        json!({"type": "CANDIDATE", "dst": "ghost", "payload": 2}),
    )
    .await;
    // One EXPIRE for the pair, 5 s after the queue's first message (docs/PROTOCOL.md §4).
    assert_eq!(
        next(&mut alice).await,
        Some(json!({"type": "EXPIRE", "src": "ghost", "dst": "alice"}))
    );
    let waited = first.elapsed();
    assert!(
        waited >= Duration::from_secs(5) && waited < Duration::from_millis(5100),
        "{waited:?}"
    );
    assert_eq!(shared.metrics.queued_messages.get(), 0);
}

//! A cluster on NATS (SPEC §10): real nats-server processes in a 3-node NATS cluster, and
//! peerjsd nodes each connected to a different NATS server.

mod common;

use common::cluster::{NatsCluster, formed, node};
use common::{PeerClient, TestServer, offer, relayed};
use serde_json::json;

/// Three nodes in global mode, node i on NATS server i.
async fn three(nats: &NatsCluster) -> (TestServer, TestServer, TestServer) {
    let urls = nats.urls();
    let a = node(vec![urls[0].clone()], "a", |_| {}).await;
    let b = node(vec![urls[1].clone()], "b", |_| {}).await;
    let c = node(vec![urls[2].clone()], "c", |_| {}).await;
    formed(&[&a, &b, &c]).await;
    (a, b, c)
}

/// Waits until `server` sees `id` registered on another node.
async fn sees(server: &TestServer, room: &str, id: &str) {
    let (room, id) = (room.to_owned(), id.to_owned());
    server
        .until(&format!("{id} to be known elsewhere"), move |shared| {
            shared
                .rooms
                .remote
                .as_ref()
                .is_some_and(|r| r.locate(&room, &id).is_some())
        })
        .await;
}

#[tokio::test]
async fn global_mode_ids_are_unique_and_messages_cross_nodes_in_order() {
    let nats = NatsCluster::start(3).await;
    let (a, b, c) = three(&nats).await;
    let mut alice = PeerClient::open(&a, "alice").await;
    let mut bob = PeerClient::open(&b, "bob").await;
    // alice is taken on every node.
    let mut again = PeerClient::connect(&c, "alice", "other-token").await;
    assert_eq!(
        again.recv().await,
        json!({"type": "ID-TAKEN", "payload": {"msg": "ID is taken"}})
    );
    sees(&a, "", "bob").await;
    sees(&b, "", "alice").await;
    for n in 0..90 {
        alice.send(offer("bob", &format!("c{n}")));
    }
    for n in 0..90 {
        let got = bob.expect("OFFER").await;
        assert_eq!(
            got,
            relayed(&offer("bob", &format!("c{n}")), "alice"),
            "message {n}"
        );
    }
    bob.send(offer("alice", "back"));
    assert_eq!(alice.expect("OFFER").await["src"], "bob");
    drop((a, b, c));
}

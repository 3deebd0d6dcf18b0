//! Who may join (README: Who may join): signed join tokens, take-overs that need the right token,
//! server-issued ids, `/peers` under auth, and `peerjsd token`.
//!
//! Tokens here are signed by the test itself with HMAC-SHA256 over base64url JSON (not with
//! the crate the server verifies with), as any backend's JWT library would sign them.

mod common;

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use common::*;
use hmac::{Hmac, KeyInit, Mac};
use peerjsd::Config;
use peerjsd::auth::{MAX_TOKEN_LEN, Secret};
use peerjsd::config::{AuthConfig, RoomMode};
use peerjsd::protocol::{CloseReason, Rejection};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const BIN: &str = env!("CARGO_BIN_EXE_peerjsd");
const SECRET: &str = "this secret is 32 bytes or more!";
const OLD_SECRET: &str = "the previous secret, also 32+ b.";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A JWT with this header and these claims, signed with HMAC-SHA256 and `secret`.
fn jwt_with_header(header: &Value, claims: &Value, secret: &str) -> String {
    let signed = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(signed.as_bytes());
    format!("{signed}.{}", b64(&mac.finalize().into_bytes()))
}

/// An HS256 JWT.
fn jwt(claims: &Value, secret: &str) -> String {
    jwt_with_header(&json!({"alg": "HS256", "typ": "JWT"}), claims, secret)
}

/// A token for `sub`, valid for an hour; each one different (a `jti`), as a backend mints
/// them.
fn token_for(sub: &str) -> String {
    jwt(
        &json!({"sub": sub, "exp": now() + 3600, "jti": random_token()}),
        SECRET,
    )
}

/// A room-mode token for `sub` in `room`.
fn room_token(sub: &str, room: &str) -> String {
    jwt(
        &json!({"sub": sub, "room": room, "exp": now() + 3600, "jti": random_token()}),
        SECRET,
    )
}

fn with_auth(config: &mut Config) {
    config.auth = Some(AuthConfig {
        secrets: vec![Secret::new(SECRET.as_bytes())],
        issuer: None,
        audience: None,
    });
}

fn room_mode(config: &mut Config) {
    config.rooms = RoomMode::Token;
    config.max_room_peers = 4;
    config.announce_leave = true;
}

async fn auth_server() -> TestServer {
    TestServer::with(with_auth).await
}

/// Connects as `id` with `token` and expects ERROR `text`, then close 1008 with `reason`.
async fn refused(server: &TestServer, id: &str, token: &str, text: &str, why: Rejection) {
    let before = server.shared.metrics.rejected(why);
    let mut peer = PeerClient::connect(server, id, token).await;
    assert_eq!(
        peer.recv().await,
        json!({"type": "ERROR", "payload": {"msg": text}}),
        "{id} with {token}"
    );
    assert_eq!(peer.closed().await, (1008, why.as_str().to_owned()));
    assert_eq!(server.shared.metrics.rejected(why), before + 1, "{why:?}");
}

/// Bob sends alice an OFFER; alice (this client) must get it. Bob's token is valid by the
/// server's clock (which a test may have moved).
async fn reaches(server: &TestServer, alice: &mut PeerClient, bob: &str) {
    let at = server.shared.auth.as_ref().map_or(now(), |a| a.now());
    let token = jwt(&json!({"sub": bob, "exp": at + 60}), SECRET);
    let sender = PeerClient::open_with_token(server, bob, &token).await;
    sender.send(offer(&alice.id, "dc"));
    assert_eq!(alice.recv().await, relayed(&offer(&alice.id, "dc"), bob));
    sender.close();
}

#[tokio::test]
async fn a_token_signed_for_the_id_opens_and_relays() {
    let server = auth_server().await;
    let mut alice = PeerClient::open_with_token(&server, "alice", &token_for("alice")).await;
    reaches(&server, &mut alice, "bob").await;
    // A decimal NumericDate and an nbf in the past are fine too.
    let t = jwt(
        &json!({"sub": "carol", "exp": now() as f64 + 60.5, "nbf": now() - 10, "iat": now()}),
        SECRET,
    );
    PeerClient::open_with_token(&server, "carol", &t).await;
}

#[tokio::test]
async fn every_bad_token_gets_error_with_its_reason_and_1008() {
    let server = auth_server().await;
    let exp = now() + 3600;
    let claims = json!({"sub": "alice", "exp": exp});
    let good = jwt(&claims, SECRET);
    let (_, payload_and_sig) = good.split_once('.').unwrap();
    let header = |alg: &str| b64(json!({"alg": alg, "typ": "JWT"}).to_string().as_bytes());
    // The shortest token of at least `len` bytes (lengths step by 1 or 2 as the pad grows).
    let padded = |len: usize| {
        let mut pad = len * 3 / 4 - 150;
        loop {
            let t = jwt(
                &json!({"sub": "alice", "exp": exp, "pad": "x".repeat(pad)}),
                SECRET,
            );
            if t.len() >= len {
                return t;
            }
            pad += 1;
        }
    };
    let cases: Vec<(String, &str, Rejection)> = vec![
        // alg: none, unsigned and with the valid HS256 signature copied over.
        (
            format!(
                "{}.{}",
                header("none"),
                payload_and_sig.split('.').next().unwrap()
            ) + ".",
            "Invalid token: unsupported algorithm",
            Rejection::TokenAlgorithm,
        ),
        (
            format!("{}.{payload_and_sig}", header("none")),
            "Invalid token: unsupported algorithm",
            Rejection::TokenAlgorithm,
        ),
        (
            format!("{}.{payload_and_sig}", header("RS256")),
            "Invalid token: unsupported algorithm",
            Rejection::TokenAlgorithm,
        ),
        (
            jwt_with_header(&json!({"alg": "HS512"}), &claims, SECRET),
            "Invalid token: unsupported algorithm",
            Rejection::TokenAlgorithm,
        ),
        (
            jwt(&claims, "another secret, also 32 bytes long"),
            "Invalid token: bad signature",
            Rejection::TokenSignature,
        ),
        (
            token_for("bob"),
            "Invalid token: wrong id",
            Rejection::TokenWrongId,
        ),
        (
            jwt(&json!({"exp": exp}), SECRET),
            "Invalid token: wrong id",
            Rejection::TokenWrongId,
        ),
        (
            jwt(&json!({"sub": "alice"}), SECRET),
            "Invalid token: missing exp",
            Rejection::TokenMissingExp,
        ),
        (
            jwt(&json!({"sub": "alice", "exp": now() - 120}), SECRET),
            "Invalid token: expired",
            Rejection::TokenExpired,
        ),
        (
            jwt(
                &json!({"sub": "alice", "exp": exp, "nbf": now() + 600}),
                SECRET,
            ),
            "Invalid token: not yet valid",
            Rejection::TokenNotYetValid,
        ),
        // What a stock PeerJS client sends when the app passes no token.
        (
            random_token(),
            "Invalid token: malformed",
            Rejection::TokenMalformed,
        ),
        (
            jwt(&json!({"sub": "alice", "exp": "tomorrow"}), SECRET),
            "Invalid token: malformed",
            Rejection::TokenMalformed,
        ),
        (
            padded(MAX_TOKEN_LEN + 1),
            "Invalid token: too long",
            Rejection::TokenTooLong,
        ),
    ];
    for (token, text, why) in &cases {
        refused(&server, "alice", token, text, *why).await;
    }
    assert_eq!(server.shared.peer_count(), 0);
    // A token at the limit opens (its request head still takes the short path).
    let mut longest = padded(MAX_TOKEN_LEN - 1);
    if longest.len() > MAX_TOKEN_LEN {
        longest = padded(MAX_TOKEN_LEN - 3);
    }
    assert!(longest.len() >= MAX_TOKEN_LEN - 2 && longest.len() <= MAX_TOKEN_LEN);
    PeerClient::open_with_token(&server, "alice", &longest).await;
}

#[tokio::test]
async fn a_long_token_in_a_long_request_head_goes_through_hyper() {
    let server = auth_server().await;
    let token = jwt(
        &json!({"sub": "alice", "exp": now() + 60, "pad": "y".repeat(2500)}),
        SECRET,
    );
    let mut request = server
        .peer_url("alice", &token)
        .into_client_request()
        .unwrap();
    // Past the short path's 8 KiB head limit, within hyper's 64 KiB.
    request
        .headers_mut()
        .insert("cookie", format!("c={}", "z".repeat(9000)).parse().unwrap());
    let (mut ws, response) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 101);
    use futures_util::StreamExt;
    let frame = tokio::time::timeout(WAIT, ws.next()).await.unwrap();
    assert_eq!(
        frame.unwrap().unwrap().into_text().unwrap(),
        r#"{"type":"OPEN"}"#
    );
}

#[tokio::test]
async fn issuer_and_audience_must_match_when_configured() {
    let server = TestServer::with(|c| {
        c.auth = Some(AuthConfig {
            secrets: vec![Secret::new(SECRET.as_bytes())],
            issuer: Some("https://game.example".into()),
            audience: Some("peerjsd".into()),
        });
    })
    .await;
    let exp = now() + 60;
    let iss = "https://game.example";
    let cases = [
        (
            json!({"sub": "alice", "exp": exp, "aud": "peerjsd"}),
            "Invalid token: wrong issuer",
            Rejection::TokenWrongIssuer,
        ),
        (
            json!({"sub": "alice", "exp": exp, "iss": "https://evil.example", "aud": "peerjsd"}),
            "Invalid token: wrong issuer",
            Rejection::TokenWrongIssuer,
        ),
        (
            json!({"sub": "alice", "exp": exp, "iss": iss}),
            "Invalid token: wrong audience",
            Rejection::TokenWrongAudience,
        ),
        (
            json!({"sub": "alice", "exp": exp, "iss": iss, "aud": "other"}),
            "Invalid token: wrong audience",
            Rejection::TokenWrongAudience,
        ),
    ];
    for (claims, text, why) in cases {
        refused(&server, "alice", &jwt(&claims, SECRET), text, why).await;
    }
    let good = jwt(
        &json!({"sub": "alice", "exp": exp, "iss": iss, "aud": "peerjsd"}),
        SECRET,
    );
    PeerClient::open_with_token(&server, "alice", &good).await;
}

#[tokio::test]
async fn rotation_the_previous_secret_still_verifies() {
    // The new secret signs (first), the old one is still accepted.
    let server = TestServer::with(|c| {
        c.auth = Some(AuthConfig {
            secrets: vec![
                Secret::new(SECRET.as_bytes()),
                Secret::new(OLD_SECRET.as_bytes()),
            ],
            issuer: None,
            audience: None,
        });
    })
    .await;
    let exp = now() + 60;
    let by_old = jwt(&json!({"sub": "alice", "exp": exp}), OLD_SECRET);
    let by_new = jwt(&json!({"sub": "bob", "exp": exp}), SECRET);
    let mut alice = PeerClient::open_with_token(&server, "alice", &by_old).await;
    let bob = PeerClient::open_with_token(&server, "bob", &by_new).await;
    bob.send(offer("alice", "dc"));
    assert_eq!(alice.recv().await, relayed(&offer("alice", "dc"), "bob"));
    // What the server signs with (peerjsd token, below) is the new secret.
    let minted = server.shared.auth.as_ref().unwrap();
    let claims = minted.claims_for("carol", None, minted.now(), Duration::from_secs(60));
    let token = minted.mint(&claims).unwrap();
    let (signed, sig) = token.rsplit_once('.').unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(signed.as_bytes());
    assert_eq!(sig, b64(&mac.finalize().into_bytes()));
    // Once the old secret is dropped, its tokens are refused.
    let after = auth_server().await;
    refused(
        &after,
        "alice",
        &by_old,
        "Invalid token: bad signature",
        Rejection::TokenSignature,
    )
    .await;
}

#[tokio::test]
async fn the_same_token_reconnects_after_it_expired_while_the_id_is_registered() {
    let server = auth_server().await;
    let token = jwt(&json!({"sub": "alice", "exp": now() + 30}), SECRET);
    let mut old = PeerClient::open_with_token(&server, "alice", &token).await;
    // Two hours later, as far as the server is concerned.
    let auth = server.shared.auth.as_ref().unwrap();
    auth.advance_clock(Duration::from_secs(7200));
    // PeerJS's reconnect(): same id, same token. The registration is still there.
    let mut new = PeerClient::open_with_token(&server, "alice", &token).await;
    assert_eq!(old.closed().await, (1000, "replaced".to_owned()));
    reaches(&server, &mut new, "bob").await;
    // The same expired token gets nothing else: not another id...
    let bob_old = jwt(&json!({"sub": "carol", "exp": now() + 30}), SECRET);
    refused(
        &server,
        "carol",
        &bob_old,
        "Invalid token: expired",
        Rejection::TokenExpired,
    )
    .await;
    // ...and not the id once it is free.
    new.close();
    server.until("alice gone", |s| s.peer_count() == 0).await;
    refused(
        &server,
        "alice",
        &token,
        "Invalid token: expired",
        Rejection::TokenExpired,
    )
    .await;
    // A fresh token for the id works as ever.
    let fresh = jwt(&json!({"sub": "alice", "exp": auth.now() + 60}), SECRET);
    PeerClient::open_with_token(&server, "alice", &fresh).await;
}

#[tokio::test]
async fn an_expired_token_cannot_take_over_a_holder_with_another_token() {
    let server = TestServer::with(|c| {
        with_auth(c);
        c.probe_timeout = Duration::from_millis(300);
        c.alive_timeout = Duration::from_secs(600);
    })
    .await;
    let holder = PeerClient::open_with_token(&server, "alice", &token_for("alice")).await;
    holder.freeze();
    let stale = jwt(&json!({"sub": "alice", "exp": now() - 3600}), SECRET);
    refused(
        &server,
        "alice",
        &stale,
        "Invalid token: expired",
        Rejection::TokenExpired,
    )
    .await;
    assert_eq!(server.shared.metrics.closed(CloseReason::ProbeFailed), 0);
}

#[tokio::test]
async fn room_mode_the_room_comes_from_the_token_and_same_token_reconnects() {
    let server = TestServer::with(|c| {
        with_auth(c);
        room_mode(c);
        c.expire_timeout = Duration::from_millis(200);
    })
    .await;
    let a1 = room_token("p1", "room-a");
    let mut p1 = PeerClient::open_with_token(&server, "p1", &a1).await;
    let p2 = PeerClient::open_with_token(&server, "p2", &room_token("p2", "room-a")).await;
    // The same id in another room is another peer.
    let mut other = PeerClient::open_with_token(&server, "p1", &room_token("p1", "room-b")).await;
    p2.send(offer("p1", "dc"));
    assert_eq!(p1.recv().await, relayed(&offer("p1", "dc"), "p2"));
    other.send(offer("p2", "x"));
    assert_eq!(other.expect("EXPIRE").await["src"], "p2");
    // Room claims that name no room.
    let exp = now() + 60;
    for (claims, text, why) in [
        (
            json!({"sub": "p3", "exp": exp}),
            "Invalid token: missing room",
            Rejection::TokenMissingRoom,
        ),
        (
            json!({"sub": "p3", "exp": exp, "room": ""}),
            "Invalid token: missing room",
            Rejection::TokenMissingRoom,
        ),
        (
            json!({"sub": "p3", "exp": exp, "room": ["room-a"]}),
            "Invalid token: wrong room",
            Rejection::TokenWrongRoom,
        ),
        (
            json!({"sub": "p3", "exp": exp, "room": "r".repeat(65)}),
            "Invalid token: wrong room",
            Rejection::TokenWrongRoom,
        ),
    ] {
        refused(&server, "p3", &jwt(&claims, SECRET), text, why).await;
    }
    // A signed token is the peer's own: the same token again is PeerJS's reconnect(), as in
    // global mode (without auth, room mode answers ID-TAKEN here).
    server
        .shared
        .auth
        .as_ref()
        .unwrap()
        .advance_clock(Duration::from_secs(7200));
    let mut again = PeerClient::open_with_token(&server, "p1", &a1).await;
    assert_eq!(p1.closed().await, (1000, "replaced".to_owned()));
    p2.send(offer("p1", "dc2"));
    assert_eq!(again.recv().await, relayed(&offer("p1", "dc2"), "p2"));
}

#[tokio::test]
async fn a_token_for_another_id_never_takes_an_id_over() {
    for rooms in [false, true] {
        let server = TestServer::with(|c| {
            with_auth(c);
            if rooms {
                room_mode(c);
            }
            c.probe_timeout = Duration::from_millis(300);
            c.alive_timeout = Duration::from_secs(600);
        })
        .await;
        let token = |sub: &str| {
            if rooms {
                room_token(sub, "r")
            } else {
                token_for(sub)
            }
        };
        let mut live = PeerClient::open_with_token(&server, "alice", &token("alice")).await;
        // Another id's token, or no signed token at all.
        let intruders = |id: &'static str| {
            let server = &server;
            let other = token("mallory");
            async move {
                let wrong = "Invalid token: wrong id";
                refused(server, id, &other, wrong, Rejection::TokenWrongId).await;
                let malformed = "Invalid token: malformed";
                refused(
                    server,
                    id,
                    &random_token(),
                    malformed,
                    Rejection::TokenMalformed,
                )
                .await;
            }
        };
        intruders("alice").await;
        let sender = PeerClient::open_with_token(&server, "bob", &token("bob")).await;
        sender.send(offer("alice", "still"));
        assert_eq!(live.recv().await, relayed(&offer("alice", "still"), "bob"));

        // Stalled holder: it would fail the probe, but the intruder never gets that far.
        let stalled = PeerClient::open_with_token(&server, "carol", &token("carol")).await;
        stalled.freeze();
        intruders("carol").await;
        assert_eq!(server.shared.metrics.closed(CloseReason::ProbeFailed), 0);
        assert_eq!(server.shared.peer_count(), 3, "rooms: {rooms}");
        // A valid token for the id does take the stalled holder's place (the probe fails),
        // but not the live one's (the probe is answered).
        let mut heir = PeerClient::connect(&server, "carol", &token("carol")).await;
        assert_eq!(heir.recv().await, json!({"type": "OPEN"}));
        server
            .until("the stalled holder closed", |s| {
                s.metrics.closed(CloseReason::ProbeFailed) == 1
            })
            .await;
        let mut twin = PeerClient::connect(&server, "alice", &token("alice")).await;
        assert_eq!(
            twin.expect("ID-TAKEN").await["payload"]["msg"],
            "ID is taken"
        );
        assert_eq!(twin.closed().await.0, 1008);
    }
}

#[tokio::test]
async fn issued_ids_only_refuses_ids_the_server_did_not_mint() {
    let server = TestServer::with(|c| c.issued_ids_only = true).await;
    let id_url = format!("{}peerjs/id", server.shared.config.path);
    let minted = server.get(&id_url, &[]).await;
    assert_eq!(minted.status, 200);
    assert!(
        peerjsd::protocol::is_valid_id(&minted.body),
        "{}",
        minted.body
    );
    assert_eq!(minted.body.len(), peerjsd::issued_id::ISSUED_ID_LEN);
    // What `new Peer()` does: take the id, connect with it and a random token.
    let mut alice = PeerClient::open(&server, &minted.body).await;
    reaches_plain(&server, &mut alice).await;
    // A chosen id, someone else's id with a digit changed, and a v4 UUID are refused.
    let mut tampered = minted.body.clone().into_bytes();
    let last = tampered.len() - 1;
    tampered[last] = if tampered[last] == b'0' { b'1' } else { b'0' };
    let tampered = String::from_utf8(tampered).unwrap();
    for id in [
        "alice",
        tampered.as_str(),
        "0f8fad5b-d9cb-469f-a165-70867728950e",
    ] {
        refused(
            &server,
            id,
            &random_token(),
            "Invalid id: not issued by this server",
            Rejection::IdNotIssued,
        )
        .await;
    }
    // Another server with its own random key does not accept this one's ids.
    let other = TestServer::with(|c| c.issued_ids_only = true).await;
    refused(
        &other,
        &minted.body,
        &random_token(),
        "Invalid id: not issued by this server",
        Rejection::IdNotIssued,
    )
    .await;
}

async fn reaches_plain(server: &TestServer, alice: &mut PeerClient) {
    let id = server
        .get(&format!("{}peerjs/id", server.shared.config.path), &[])
        .await;
    let bob = PeerClient::open(server, &id.body).await;
    bob.send(offer(&alice.id, "dc"));
    assert_eq!(
        alice.recv().await,
        relayed(&offer(&alice.id, "dc"), &id.body)
    );
}

#[tokio::test]
async fn nodes_sharing_an_id_secret_accept_each_other_s_ids_and_auth_works_with_them() {
    let shared_secret = || vec![Secret::new("a shared id secret of 32+ bytes!".as_bytes())];
    let a = TestServer::with(|c| {
        c.issued_ids_only = true;
        c.id_secrets = shared_secret();
    })
    .await;
    let b = TestServer::with(|c| {
        c.issued_ids_only = true;
        c.id_secrets = shared_secret();
        with_auth(c);
    })
    .await;
    let id = a.get("/peerjs/id", &[]).await.body;
    PeerClient::open(&a, &id).await;
    // The backend flow with auth: get an id, sign a token for it, hand both to the browser.
    let mut on_b = PeerClient::open_with_token(&b, &id, &token_for(&id)).await;
    let bob = b.get("/peerjs/id", &[]).await.body;
    let sender = PeerClient::open_with_token(&b, &bob, &token_for(&bob)).await;
    sender.send(offer(&id, "dc"));
    assert_eq!(on_b.recv().await, relayed(&offer(&id, "dc"), &bob));
    // The id check comes first; a valid token for a chosen id does not help.
    refused(
        &b,
        "alice",
        &token_for("alice"),
        "Invalid id: not issued by this server",
        Rejection::IdNotIssued,
    )
    .await;
    // And with auth alone (no --id-secret), the auth secret keys the ids.
    let c = TestServer::with(|c| {
        c.issued_ids_only = true;
        with_auth(c);
    })
    .await;
    let d = TestServer::with(|c| {
        c.issued_ids_only = true;
        with_auth(c);
    })
    .await;
    let id = c.get("/peerjs/id", &[]).await.body;
    PeerClient::open_with_token(&d, &id, &token_for(&id)).await;
}

#[tokio::test]
async fn peers_stays_off_under_auth_unless_allowed_and_then_needs_a_token() {
    let off = auth_server().await;
    assert_eq!(off.get("/peerjs/peers", &[]).await.status, 401);
    let t = token_for("alice");
    let with_token = off.get(&format!("/peerjs/peers?token={t}"), &[]).await;
    assert_eq!(
        (with_token.status, with_token.body.as_str()),
        (401, "Unauthorized")
    );

    let global = TestServer::with(|c| {
        with_auth(c);
        c.allow_discovery = true;
    })
    .await;
    let _alice = PeerClient::open_with_token(&global, "alice", &t).await;
    let no_token = global.get("/peerjs/peers", &[]).await;
    assert_eq!(
        (no_token.status, no_token.body.as_str()),
        (401, "Invalid token: malformed")
    );
    let listed = global.get(&format!("/peerjs/peers?token={t}"), &[]).await;
    assert_eq!((listed.status, listed.body.as_str()), (200, r#"["alice"]"#));
    let bearer = format!("Authorization: Bearer {t}");
    assert_eq!(
        global.get("/peerjs/peers", &[&bearer]).await.body,
        r#"["alice"]"#
    );
    let expired = jwt(&json!({"sub": "x", "exp": now() - 600}), SECRET);
    let old = global
        .get(&format!("/peerjs/peers?token={expired}"), &[])
        .await;
    assert_eq!(
        (old.status, old.body.as_str()),
        (401, "Invalid token: expired")
    );

    // Room mode: the token's room is listed; a raw room name is not a token.
    let rooms = TestServer::with(|c| {
        with_auth(c);
        room_mode(c);
        c.allow_discovery = true;
    })
    .await;
    let _p1 = PeerClient::open_with_token(&rooms, "p1", &room_token("p1", "room-a")).await;
    let _q1 = PeerClient::open_with_token(&rooms, "q1", &room_token("q1", "room-b")).await;
    let list = |token: String| {
        let rooms = &rooms;
        async move {
            rooms
                .get(&format!("/peerjs/peers?token={token}"), &[])
                .await
        }
    };
    assert_eq!(list(room_token("anyone", "room-a")).await.body, r#"["p1"]"#);
    assert_eq!(list(room_token("anyone", "room-b")).await.body, r#"["q1"]"#);
    let raw = list("room-a".into()).await;
    assert_eq!(
        (raw.status, raw.body.as_str()),
        (401, "Invalid token: malformed")
    );
    let roomless = list(token_for("anyone")).await;
    assert_eq!(
        (roomless.status, roomless.body.as_str()),
        (401, "Invalid token: missing room")
    );
}

#[test]
fn peerjsd_token_prints_a_token_from_the_configured_secret() {
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut command = Command::new(BIN);
        command.args(args).env_remove("PEERJSD_AUTH_SECRET");
        for (k, v) in env {
            command.env(k, v);
        }
        let out = command.output().unwrap();
        (
            out.status.code(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let verifier = peerjsd::auth::TokenVerifier::new(&[Secret::new(SECRET.as_bytes())], None, None);
    let check = |token: &str, id: &str, room: bool| verifier.check(token.trim(), id, room, now());

    // From the flag.
    let (code, out, _) = run(&["token", "--sub", "alice", "--auth-secret", SECRET], &[]);
    assert_eq!(code, Some(0));
    assert_eq!(out.lines().count(), 1);
    let grant = check(&out, "alice", false).unwrap();
    assert!(!grant.expired);
    // From the environment, with a room and a TTL.
    let (code, out, _) = run(
        &["token", "--sub", "p1", "--room", "room-a", "--ttl", "5m"],
        &[("PEERJSD_AUTH_SECRET", SECRET), ("PEERJSD_ROOMS", "token")],
    );
    assert_eq!(code, Some(0));
    assert_eq!(
        check(&out, "p1", true).unwrap().room.as_deref(),
        Some("room-a")
    );
    let payload = out.trim().split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    let ttl = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
    assert_eq!(ttl, 300);
    // From the config file, secrets from a secrets file: the first line signs.
    let dir = std::env::temp_dir().join(format!("peerjsd-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secrets = dir.join("secrets");
    std::fs::write(&secrets, format!("{OLD_SECRET}\n{SECRET}\n")).unwrap();
    let file = dir.join("peerjsd.toml");
    std::fs::write(
        &file,
        format!(
            "auth-secret-file = \"{}\"\nauth-issuer = \"https://app\"\n",
            secrets.display()
        ),
    )
    .unwrap();
    let (code, out, err) = run(
        &["token", "--config", file.to_str().unwrap(), "--sub", "bob"],
        &[],
    );
    assert_eq!(code, Some(0), "{err}");
    let rotated = peerjsd::auth::TokenVerifier::new(
        &[Secret::new(OLD_SECRET.as_bytes())],
        Some("https://app"),
        None,
    );
    assert!(rotated.check(out.trim(), "bob", false, now()).is_ok());
    assert!(
        check(&out, "bob", false).is_err(),
        "signed with the first line only"
    );
    std::fs::remove_dir_all(&dir).unwrap();

    // Refusals: exit 2 with one line.
    for (args, needle) in [
        (vec!["token", "--sub", "alice"], "needs a secret"),
        (
            vec!["token", "--sub", "a--b", "--auth-secret", SECRET],
            "--sub",
        ),
        (
            vec![
                "token",
                "--rooms",
                "token",
                "--sub",
                "a",
                "--auth-secret",
                SECRET,
            ],
            "--room",
        ),
        (
            vec!["token", "--sub", "alice", "--auth-secret", "short"],
            "at least 32",
        ),
    ] {
        let (code, out, err) = run(&args, &[]);
        assert_eq!(code, Some(2), "{args:?}");
        assert!(out.is_empty());
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("short"), "a secret was echoed: {err}");
    }
}

#[tokio::test]
async fn tokens_are_never_logged() {
    use std::io::{BufRead, BufReader};
    /// Kills the server if the test fails before it is stopped.
    struct Guard(std::process::Child);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Command::new(BIN)
        .args([
            "--port",
            "0",
            "--host",
            "127.0.0.1",
            "--auth-secret",
            SECRET,
        ])
        .env("RUST_LOG", "debug")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut child = Guard(child);
    let first: Value = loop {
        let line: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        if line["message"] == "listening" {
            break line;
        }
    };
    assert_eq!(first["auth"], true, "{first}");
    let addr: std::net::SocketAddr = first["addr"].as_str().unwrap().parse().unwrap();
    let url =
        |id: &str, token: &str| format!("ws://{addr}/peerjs?key=peerjs&id={id}&token={token}");
    let good = token_for("alice");
    let bad = jwt(
        &json!({"sub": "alice", "exp": now() + 60}),
        "a forged secret that is 32 bytes!",
    );
    let mut alice = PeerClient::connect_url(&url("alice", &good), "alice").await;
    alice.expect("OPEN").await;
    let mut forged = PeerClient::connect_url(&url("alice", &bad), "alice").await;
    forged.expect("ERROR").await;
    Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    child.0.wait().unwrap();
    let logged: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(
        logged
            .iter()
            .any(|l| l.contains("peer refused") && l.contains("token_signature"))
    );
    for token in [&good, &bad] {
        for part in token.split('.') {
            assert!(
                logged.iter().all(|l| !l.contains(part)),
                "a token part was logged: {part}"
            );
        }
    }
}

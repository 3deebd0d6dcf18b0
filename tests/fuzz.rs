//! Property tests (run in CI): arbitrary frames and query strings fed to the parser and to live
//! sessions never panic, and every frame the server builds is valid JSON carrying the payload
//! byte-for-byte.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use peerjsd::json;
use peerjsd::protocol::{self, ConnectParams, Dst};
use peerjsd::ws::read_ahead::ReadAhead;
use peerjsd::ws::session::{self, Origin};
use peerjsd::{Config, Shared};
use proptest::prelude::*;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

/// What the server sent, read back.
#[derive(serde::Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type")]
    kind: String,
    src: String,
    dst: String,
    #[serde(borrow, rename = "payload")]
    _payload: Option<&'a serde_json::value::RawValue>,
}

/// Strings that look like PeerJS frames, half-broken ones, and noise.
fn frame_text() -> impl Strategy<Value = String> {
    let kind = prop_oneof![
        Just("OFFER"),
        Just("ANSWER"),
        Just("CANDIDATE"),
        Just("LEAVE"),
        Just("EXPIRE"),
        Just("HEARTBEAT"),
        Just("OPEN"),
        Just("x")
    ];
    let value = prop_oneof![
        Just("null".to_owned()),
        Just("1e400".to_owned()),
        Just("\"\\ud800\"".to_owned()),
        "[a-z0-9 _-]{0,8}".prop_map(|s| format!("\"{s}\"")),
        any::<i64>().prop_map(|n| n.to_string()),
        Just(
            "{\"sdp\":{\"type\":\"offer\",\"sdp\":\"v=0\\r\\n\"},\"connectionId\":\"dc\"}"
                .to_owned()
        ),
        Just("[[[[[[[[[[]]]]]]]]]]".to_owned()),
    ];
    prop_oneof![
        (kind, value.clone(), value)
            .prop_map(|(k, d, p)| format!(r#"{{"type":"{k}","dst":{d},"payload":{p}}}"#)),
        any::<String>(),
        "[{}\\[\\]\":,a-z0-9 \\\\]{0,40}",
    ]
}

/// JSON-ish text: a random value tree written with random spacing and token spellings (some
/// invalid), then maybe damaged by one byte edit — to exercise every branch of the scanner.
fn json_text() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_owned()),
        Just("true".to_owned()),
        Just("false".to_owned()),
        Just("nul".to_owned()),
        Just("-0".to_owned()),
        Just("01".to_owned()),
        Just("1.".to_owned()),
        Just("-1.5e-3".to_owned()),
        Just("2E+10".to_owned()),
        Just("1e400".to_owned()),
        Just(".5".to_owned()),
        Just(r#""plain""#.to_owned()),
        Just(r#""v=0\r\no=- 1 2 IN IP4\r\n""#.to_owned()),
        Just(r#""\u00e9\ud83d\ude00\/\b\f\t""#.to_owned()),
        Just(r#""\ud800""#.to_owned()),
        Just(r#""\x""#.to_owned()),
        Just("\"raw\u{1}ctl\"".to_owned()),
        Just("\"é 😀\"".to_owned()),
        Just("\"unterminated".to_owned()),
        "[a-z\\\\\"]{0,12}".prop_map(|s| format!("\"{s}\"")),
        // Long strings, so that escapes, ends and damage fall on every offset of the
        // scanner's 32-byte blocks.
        prop::collection::vec(
            prop::sample::select(
                &[
                    "a",
                    "bcdefgh",
                    "v=0 o=- 1 2 IN IP4 127.0.0.1",
                    r"\r\n",
                    r#"\""#,
                    r"\\",
                    r"\u00e9",
                    r"\ud83d\ude00",
                    "é",
                    "\u{1f}",
                    r"\x",
                    r"\u12",
                    "\"",
                ][..]
            ),
            0..40
        )
        .prop_map(|pieces| format!("\"{}\"", pieces.concat())),
    ];
    let value = leaf.prop_recursive(5, 48, 6, |inner| {
        let key = prop_oneof![
            Just("type"),
            Just("dst"),
            Just("payload"),
            Just(r"ty\u0070e"),
            Just("x")
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5)
                .prop_map(|items| format!("[{}]", items.join(","))),
            prop::collection::vec((key, inner), 0..5).prop_map(|members| {
                let body: Vec<String> = members
                    .iter()
                    .map(|(k, v)| format!("\"{k}\" : {v}"))
                    .collect();
                format!("{{ {} }}", body.join(" ,"))
            }),
        ]
    });
    let top = (
        value.clone(),
        prop_oneof![Just("OFFER"), Just("HEARTBEAT"), Just("x")],
    )
        .prop_map(|(payload, kind)| {
            format!(r#"{{"type":"{kind}","payload":{payload},"dst":"bob"}}"#)
        });
    let any_object = value.prop_map(|v| format!(r#"{{"dst":{v}, "type" : "OFFER"}}"#));
    (prop_oneof![top, any_object], any::<(u8, u16, u8)>()).prop_map(|(text, (op, at, byte))| {
        if op % 3 != 0 {
            return text;
        }
        let mut bytes = text.into_bytes();
        let at = usize::from(at) % bytes.len();
        match op % 9 {
            0 => bytes[at] = byte,
            3 => {
                bytes.remove(at);
            }
            _ => bytes.insert(at, byte),
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn parsing_never_panics_and_relayed_frames_are_valid_json(text in frame_text(), src in "[a-z]{1,8}") {
        if let Ok(frame) = protocol::parse_frame(&text)
            && let (Some(kind), Dst::Id(dst)) = (frame.kind, &frame.dst)
        {
            let out = protocol::relay_frame(kind, &src, dst, frame.payload);
            // Syntax check that accepts what JSON.parse accepts (1e400 included).
            let sent: Envelope = serde_json::from_str(&out).expect("server frame is JSON");
            prop_assert_eq!(sent.kind, kind.as_str());
            prop_assert_eq!(&sent.src, &src);
            prop_assert_eq!(&sent.dst, dst.as_ref());
            // Read back with the server's own parser (which keeps `null` payloads): same bytes.
            let again = protocol::parse_frame(&out).expect("round trip");
            prop_assert_eq!(again.payload, frame.payload, "payload bytes kept");
        }
    }

    #[test]
    fn the_fast_scanner_agrees_with_serde_json(text in prop_oneof![frame_text(), json_text()]) {
        // The oracle: serde_json with a borrowing visitor (last duplicate wins, payload raw).
        prop_assert_eq!(json::scan(&text), json::via_serde::scan(&text), "{:?}", text);
    }

    #[test]
    fn query_decoding_never_panics(query in any::<String>()) {
        let params = ConnectParams::from_query(&query);
        let _ = protocol::is_valid_id(&params.id);
    }
}

/// Runs one session over an in-memory pipe with this query, sends `frames`, and checks the
/// server is still serving an honest pair afterwards.
async fn session_survives(query: String, frames: Vec<(bool, Vec<u8>)>) {
    let shared = Arc::new(Shared::new(Config::default()));
    let connect = |params: ConnectParams| {
        let (client_io, server_io) = tokio::io::duplex(256 * 1024);
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
            let guard = shared.admit_ip(ip).expect("ip");
            session::run(
                ReadAhead::new(server_io),
                params,
                shared,
                Origin { ip, guard },
            )
            .await;
        });
        async move { WebSocketStream::from_raw_socket(client_io, Role::Client, None).await }
    };
    let honest = |id: &str| ConnectParams {
        id: id.into(),
        token: "t".into(),
        key: "peerjs".into(),
    };
    let mut fuzzed = connect(ConnectParams::from_query(&query)).await;
    let mut a = connect(honest("honest-a")).await;
    let mut b = connect(honest("honest-b")).await;
    for (binary, bytes) in frames {
        let message = if binary {
            Message::binary(bytes)
        } else {
            Message::text(String::from_utf8_lossy(&bytes).into_owned())
        };
        if fuzzed.send(message).await.is_err() {
            break;
        }
    }
    // Drain whatever the fuzzed socket gets, without blocking.
    let _ = tokio::time::timeout(Duration::from_millis(20), async {
        while fuzzed.next().await.is_some() {}
    })
    .await;
    // Skip OPEN on both, then a message from a to b arrives.
    let open = |m: Option<Result<Message, _>>| matches!(m, Some(Ok(Message::Text(t))) if t.as_str() == protocol::OPEN);
    assert!(open(a.next().await));
    assert!(open(b.next().await));
    a.send(Message::text(
        r#"{"type":"OFFER","dst":"honest-b","payload":"still here"}"#,
    ))
    .await
    .unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), b.next())
            .await
            .expect("honest message")
        {
            Some(Ok(Message::Text(t))) if t.contains("still here") => break,
            Some(Ok(_)) => continue,
            other => panic!("honest peer lost: {other:?}"),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_sessions_never_take_the_server_down(
        query in prop_oneof![
            Just("key=peerjs&id=fuzzer&token=t".to_owned()),
            "(key=peerjs&)?(id=[a-z%+ -]{0,6}&)?(token=[a-z]{0,3})?",
            any::<String>(),
        ],
        frames in prop::collection::vec((any::<bool>(), prop_oneof![frame_text().prop_map(String::into_bytes), prop::collection::vec(any::<u8>(), 0..64)]), 0..40),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(session_survives(query, frames));
    }
}

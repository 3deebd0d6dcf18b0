//! The PeerJS wire protocol: what clients send, what the server sends back.
//!
//! A leaf module with no I/O. Shapes and texts are exactly peerjs-server 1.0.2's
//! (docs/PROTOCOL.md §1–§4):
//!
//! * Inbound frames are JSON objects; only `type`, `dst` and `payload` matter. `src` is
//!   ignored (the server stamps its own), other fields are dropped, and the payload is kept
//!   as the raw bytes the client sent: it is never parsed into a value or re-serialised.
//! * Duplicate keys resolve like `JSON.parse`: the last one wins.
//! * Outbound frames are built by hand in the reference's key order `type, src, dst, payload`.
//!
//! The session decides what to do with a [`ClientFrame`]; this module only reads and writes.

use std::borrow::Cow;

use crate::json::{self, Scalar};

/// `{"type":"OPEN"}`: sent once when a socket is admitted.
pub const OPEN: &str = r#"{"type":"OPEN"}"#;

/// Admission error texts, byte-for-byte those of peerjs-server (and our own additions).
pub mod texts {
    /// A query parameter among `id`, `token`, `key` is missing or empty.
    pub const NO_ID_TOKEN_OR_KEY: &str = "No id, token, or key supplied to websocket server";
    /// `key` differs from the configured key.
    pub const INVALID_KEY: &str = "Invalid key provided";
    /// The id is held by a live peer.
    pub const ID_TAKEN: &str = "ID is taken";
    /// `--concurrent-limit` reached.
    pub const CONCURRENT_LIMIT: &str = "Server has reached its concurrent user limit";
    /// Room mode: `--max-room-peers` reached.
    pub const ROOM_FULL: &str = "Room is full";
    /// The peer stayed over its message rate limit.
    pub const RATE_LIMITED: &str = "Rate limit exceeded";
    /// The id is not one the PeerJS client itself would accept, or is too long.
    pub const INVALID_ID: &str =
        "Invalid id: use 1-64 letters or digits, optionally separated by single '-', '_' or ' '";
    /// The token is longer than the limit.
    pub const TOKEN_TOO_LONG: &str = "Invalid token: at most 64 characters";
    /// The key is longer than the limit.
    pub const KEY_TOO_LONG: &str = "Invalid key: at most 64 characters";
    /// `--issued-ids-only`: the id was not minted by `GET {path}{key}/id`.
    pub const ID_NOT_ISSUED: &str = "Invalid id: not issued by this server";
}

/// Longest id, token or key the server accepts (README: Configuration); with `--auth-secret` a token may
/// be longer (`auth::MAX_TOKEN_LEN`).
pub const MAX_NAME_LEN: usize = 64;

/// The message types the server dispatches on. Anything else is ignored (docs/PROTOCOL.md §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// Keep-alive from the client; never forwarded.
    Heartbeat,
    /// WebRTC offer, relayed or queued.
    Offer,
    /// WebRTC answer, relayed or queued.
    Answer,
    /// ICE candidate, relayed or queued.
    Candidate,
    /// Relayed if `dst` is connected; without `dst` the sender leaves.
    Leave,
    /// Relayed if `dst` is connected, never queued.
    Expire,
}

impl MessageType {
    /// Every type, for metrics registration.
    pub const ALL: [MessageType; 6] = [
        MessageType::Heartbeat,
        MessageType::Offer,
        MessageType::Answer,
        MessageType::Candidate,
        MessageType::Leave,
        MessageType::Expire,
    ];

    /// Exact, case-sensitive match as the reference's handler registry does.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "HEARTBEAT" => Self::Heartbeat,
            "OFFER" => Self::Offer,
            "ANSWER" => Self::Answer,
            "CANDIDATE" => Self::Candidate,
            "LEAVE" => Self::Leave,
            "EXPIRE" => Self::Expire,
            _ => return None,
        })
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Heartbeat => "HEARTBEAT",
            Self::Offer => "OFFER",
            Self::Answer => "ANSWER",
            Self::Candidate => "CANDIDATE",
            Self::Leave => "LEAVE",
            Self::Expire => "EXPIRE",
        }
    }

    /// Whether a message of this type to an offline peer waits in the queue (docs/PROTOCOL.md §4).
    pub fn is_queued_when_offline(self) -> bool {
        matches!(self, Self::Offer | Self::Answer | Self::Candidate)
    }

    /// Index for per-type metric arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// The `dst` field as it arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dst<'a> {
    /// Absent, `null` or the empty string: the reference treats all three as "no dst".
    Missing,
    /// A non-empty string.
    Id(Cow<'a, str>),
    /// A number, object, array or boolean: it can never name a connected peer.
    NotAString,
}

/// A parsed inbound frame. Borrows from the frame text; owns nothing it does not have to.
#[derive(Debug)]
pub struct ClientFrame<'a> {
    /// `None` when `type` is missing, not a string, or not one of the dispatched types.
    pub kind: Option<MessageType>,
    /// Where the message goes.
    pub dst: Dst<'a>,
    /// The payload's JSON text exactly as sent, if present.
    pub payload: Option<&'a str>,
}

/// Why an inbound text frame could not be used at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Not valid JSON.
    #[error("malformed JSON")]
    Malformed,
    /// Valid JSON that is not an object (`null`, a number, a string, an array).
    #[error("JSON that is not an object")]
    NotAnObject,
}

/// Parses one inbound text frame (see [`crate::json`] for the scanner; built with
/// `--features crate-json`, serde_json reads it instead).
pub fn parse_frame(text: &str) -> Result<ClientFrame<'_>, FrameError> {
    #[cfg(not(feature = "crate-json"))]
    let envelope = json::scan(text);
    #[cfg(feature = "crate-json")]
    let envelope = json::via_serde::scan(text);
    let envelope = envelope.map_err(|e| match e {
        json::ScanError::Invalid => FrameError::Malformed,
        json::ScanError::NotAnObject => FrameError::NotAnObject,
    })?;
    let kind = match envelope.kind {
        Some(Scalar::Str(kind)) => MessageType::parse(&kind),
        _ => None,
    };
    let dst = match envelope.dst {
        None | Some(Scalar::Null) => Dst::Missing,
        Some(Scalar::Str(dst)) if dst.is_empty() => Dst::Missing,
        Some(Scalar::Str(dst)) => Dst::Id(dst),
        Some(Scalar::Other) => Dst::NotAString,
    };
    Ok(ClientFrame {
        kind,
        dst,
        payload: envelope.payload,
    })
}

/// Appends `s` as a JSON string literal, escaped as `JSON.stringify` does.
pub fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    // Writing into a String cannot fail.
    let _ = json::write_escaped(out, s);
    out.push('"');
}

/// A relayed message: `{"type":T,"src":S,"dst":D[,"payload":P]}` with `P` byte-for-byte.
pub fn relay_frame(kind: MessageType, src: &str, dst: &str, payload: Option<&str>) -> String {
    relay_frame_locating_dst(kind, src, dst, payload).0
}

/// [`relay_frame`], plus where `dst` appears verbatim in it (when it needed no escaping), so
/// the router can read the destination from the frame instead of keeping its own copy.
pub fn relay_frame_locating_dst(
    kind: MessageType,
    src: &str,
    dst: &str,
    payload: Option<&str>,
) -> (String, Option<std::ops::Range<usize>>) {
    const TYPE: &str = r#"{"type":""#;
    const SRC: &str = r#"","src":"#;
    const DST: &str = r#","dst":"#;
    const PAYLOAD: &str = r#","payload":"#;
    // Exact unless an id needs escaping (`src` never does: it is a valid id). A frame whose
    // length is its capacity becomes `Bytes` without a second allocation.
    let quoted = |s: &str| s.len() + 2;
    let len = TYPE.len()
        + kind.as_str().len()
        + SRC.len()
        + quoted(src)
        + DST.len()
        + quoted(dst)
        + payload.map_or(0, |p| PAYLOAD.len() + p.len())
        + 1;
    let mut out = String::with_capacity(len);
    out.push_str(TYPE);
    out.push_str(kind.as_str());
    out.push_str(SRC);
    push_json_str(&mut out, src);
    out.push_str(DST);
    let quote = out.len();
    push_json_str(&mut out, dst);
    let verbatim = out.len() - quote == quoted(dst);
    let dst_at = verbatim.then(|| quote + 1..quote + 1 + dst.len());
    if let Some(payload) = payload {
        out.push_str(PAYLOAD);
        out.push_str(payload);
    }
    out.push('}');
    (out, dst_at)
}

/// `{"type":"EXPIRE","src":<unreachable>,"dst":<sender>}` (docs/PROTOCOL.md §4).
pub fn expire_frame(unreachable: &str, sender: &str) -> String {
    relay_frame(MessageType::Expire, unreachable, sender, None)
}

/// `{"type":"LEAVE","src":<leaver>,"dst":<member>}` (room mode announcements).
pub fn leave_frame(leaver: &str, member: &str) -> String {
    relay_frame(MessageType::Leave, leaver, member, None)
}

/// `{"type":"ERROR","payload":{"msg":<text>}}`.
pub fn error_frame(msg: &str) -> String {
    let mut out = String::with_capacity(40 + msg.len());
    out.push_str(r#"{"type":"ERROR","payload":{"msg":"#);
    push_json_str(&mut out, msg);
    out.push_str("}}");
    out
}

/// `{"type":"ID-TAKEN","payload":{"msg":"ID is taken"}}`.
pub fn id_taken_frame() -> String {
    format!(
        r#"{{"type":"ID-TAKEN","payload":{{"msg":"{}"}}}}"#,
        texts::ID_TAKEN
    )
}

/// The query parameters of the signaling URL, decoded as WHATWG `URLSearchParams` does
/// (percent-decoding, `+` as space, the last duplicate wins). Other parameters are ignored.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ConnectParams {
    /// The peer id the client asks for.
    pub id: String,
    /// The client's secret for reconnects; the room name in room mode.
    pub token: String,
    /// Must equal the configured key.
    pub key: String,
}

impl ConnectParams {
    /// Parses a raw query string (without the `?`).
    pub fn from_query(query: &str) -> Self {
        let mut params = Self::default();
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            let slot = match name.as_ref() {
                "id" => &mut params.id,
                "token" => &mut params.token,
                "key" => &mut params.key,
                _ => continue,
            };
            *slot = value.into_owned();
        }
        params
    }
}

/// Whether `id` is one the PeerJS client accepts (`lib/utils/validateId.ts`): alphanumerics,
/// optionally in groups joined by one `-`, `_` or space; and at most [`MAX_NAME_LEN`] bytes.
pub fn is_valid_id(id: &str) -> bool {
    if id.is_empty() || id.len() > MAX_NAME_LEN {
        return false;
    }
    let mut after_separator = true; // the first character must be alphanumeric
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() {
            after_separator = false;
        } else if matches!(b, b'-' | b'_' | b' ') && !after_separator {
            after_separator = true;
        } else {
            return false;
        }
    }
    !after_separator
}

// Why the server did what it did: the reasons it decides, tells clients (close codes) and
// counts (the metrics only label them).

label_enum! {
    /// Why an inbound message was not delivered.
    DropReason {
        /// Over the sender's rate limit.
        RateLimited => "rate_limited",
        /// Not JSON, not an object, or a `dst` that is not a string.
        Malformed => "malformed",
        /// A binary frame (the protocol is text only).
        Binary => "binary",
        /// Past `--max-message-size` (the socket is closed too).
        TooLarge => "too_large",
        /// The offline queue for the destination (or all queues) was full: EXPIRE sent at once.
        QueueOverflow => "queue_overflow",
        /// The server's outbound memory was over `--max-outbound-total` and the frame would
        /// have left its destination holding more than its share: refused, with EXPIRE to the
        /// sender; the destination is kept.
        OutboundPressure => "outbound_pressure",
        /// The sender, or the senders from its address, already hold their share of the
        /// offline queue (`--max-queue-per-sender`, `--max-queued-bytes-per-sender`,
        /// `--max-queued-bytes-per-ip`): EXPIRE sent at once.
        QueueShare => "queue_share",
        /// Waited in the offline queue until it expired: EXPIRE sent.
        Expired => "expired",
        /// The destination's outbound queue was full: the destination was closed.
        SlowReader => "slow_reader",
        /// LEAVE/EXPIRE to a peer that is not connected, or a message with no `dst`.
        Undeliverable => "undeliverable",
        /// For a peer on another node, while the cluster's bus is unreachable or its publish
        /// backlog is full: EXPIRE sent at once.
        ClusterUnreachable => "cluster_unreachable",
    }
}

label_enum! {
    /// Why a connection attempt was refused.
    Rejection {
        /// Not a valid WebSocket upgrade, or the wrong path.
        BadRequest => "bad_request",
        /// Origin not in the allow-list.
        Origin => "origin",
        /// Too many sockets from one IP.
        PerIp => "per_ip",
        /// `id`, `token` or `key` missing.
        MissingParams => "missing_params",
        /// Wrong key.
        InvalidKey => "invalid_key",
        /// Id, token or key of the wrong shape or length.
        InvalidName => "invalid_name",
        /// The id is held by a live peer.
        IdTaken => "id_taken",
        /// The room is full.
        RoomFull => "room_full",
        /// `--concurrent-limit` reached.
        ServerFull => "server_full",
        /// `--issued-ids-only`: an id `GET {path}{key}/id` did not mint.
        IdNotIssued => "id_not_issued",
        /// Signed token longer than the limit.
        TokenTooLong => "token_too_long",
        /// Not a JWT, or a claim of the wrong type.
        TokenMalformed => "token_malformed",
        /// A token algorithm other than HS256 (`none` included).
        TokenAlgorithm => "token_algorithm",
        /// A token signed with no configured secret.
        TokenSignature => "token_signature",
        /// A token without `exp`.
        TokenMissingExp => "token_missing_exp",
        /// A token past its `exp` that was not a same-token reconnect.
        TokenExpired => "token_expired",
        /// A token whose `nbf` is in the future.
        TokenNotYetValid => "token_not_yet_valid",
        /// A token whose `sub` is not the id asked for.
        TokenWrongId => "token_wrong_id",
        /// Room mode: a `room` claim that is not a room name.
        TokenWrongRoom => "token_wrong_room",
        /// Room mode: a token without a `room` claim.
        TokenMissingRoom => "token_missing_room",
        /// A token without the configured `iss`.
        TokenWrongIssuer => "token_wrong_issuer",
        /// A token without the configured `aud`.
        TokenWrongAudience => "token_wrong_audience",
        /// Past `--max-tcp-per-ip`: refused at accept with 429.
        TcpPerIp => "tcp_per_ip",
        /// Past `--max-handshakes-per-ip`: refused at accept with 429.
        HandshakesPerIp => "handshakes_per_ip",
        /// Still in its handshake, the oldest, when `--max-handshakes` was reached: dropped for a
        /// newer connection.
        HandshakeEvicted => "handshake_evicted",
        /// No TLS handshake or no whole first request head within `--handshake-timeout`.
        HandshakeTimeout => "handshake_timeout",
    }
}

label_enum! {
    /// Why an admitted peer's socket ended.
    CloseReason {
        /// The client closed or the connection dropped.
        ClientGone => "client_gone",
        /// Nothing received for `--alive-timeout`.
        AliveTimeout => "alive_timeout",
        /// The same id connected again and took over.
        Replaced => "replaced",
        /// A duplicate id's newcomer found this socket dead (no pong) and evicted it.
        ProbeFailed => "probe_failed",
        /// The client sent LEAVE without `dst`.
        Left => "left",
        /// Its outbound queue filled up.
        SlowReader => "slow_reader",
        /// Stayed over the rate limit.
        RateLimited => "rate_limited",
        /// Kept sending unusable frames.
        Malformed => "malformed",
        /// A message over `--max-message-size`.
        TooLarge => "too_large",
        /// A text frame that is not UTF-8 (close 1007).
        InvalidUtf8 => "invalid_utf8",
        /// Another WebSocket protocol violation (close 1002).
        ProtocolError => "protocol_error",
        /// The server is shutting down.
        Shutdown => "shutdown",
        /// The peer's room failed (its actor panicked); close 1011.
        RoomFailed => "room_failed",
        /// Its id was also registered on another node during a partition, and the other
        /// registration was earlier (the cluster's partition rule); close 1008.
        DuplicateId => "duplicate_id",
    }
}

impl CloseReason {
    /// The WebSocket close code a client sees for it (RFC 6455 §7.4).
    pub fn close_code(self) -> u16 {
        match self {
            CloseReason::ClientGone
            | CloseReason::AliveTimeout
            | CloseReason::Replaced
            | CloseReason::ProbeFailed
            | CloseReason::Left => 1000,
            CloseReason::Shutdown => 1001,
            CloseReason::ProtocolError => 1002,
            CloseReason::InvalidUtf8 => 1007,
            CloseReason::SlowReader
            | CloseReason::RateLimited
            | CloseReason::Malformed
            | CloseReason::DuplicateId => 1008,
            CloseReason::TooLarge => 1009,
            CloseReason::RoomFailed => 1011,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_peerjs_offer_and_keeps_the_payload_raw() {
        let text = r#"{"type":"OFFER","payload":{ "sdp" : {"type":"offer","sdp":"v=0\r\n"},"type":"data","connectionId":"dc_1"},"dst":"bob"}"#;
        let frame = parse_frame(text).unwrap();
        assert_eq!(frame.kind, Some(MessageType::Offer));
        assert_eq!(frame.dst, Dst::Id(Cow::Borrowed("bob")));
        assert_eq!(
            frame.payload.unwrap(),
            r#"{ "sdp" : {"type":"offer","sdp":"v=0\r\n"},"type":"data","connectionId":"dc_1"}"#
        );
    }

    #[test]
    fn last_duplicate_key_wins_like_json_parse() {
        let frame =
            parse_frame(r#"{"type":"HEARTBEAT","dst":"a","type":"ANSWER","dst":"b"}"#).unwrap();
        assert_eq!(frame.kind, Some(MessageType::Answer));
        assert_eq!(frame.dst, Dst::Id(Cow::Borrowed("b")));
    }

    #[test]
    fn escaped_keys_and_values_are_decoded() {
        let frame = parse_frame(r#"{"ty\u0070e":"CANDIDATE","dst":"b\u00f6b"}"#).unwrap();
        assert_eq!(frame.kind, Some(MessageType::Candidate));
        assert_eq!(frame.dst, Dst::Id(Cow::Owned("böb".into())));
    }

    #[test]
    fn odd_types_and_destinations() {
        let frame = parse_frame(r#"{"type":7,"dst":12,"src":"spoof"}"#).unwrap();
        assert_eq!(frame.kind, None);
        assert_eq!(frame.dst, Dst::NotAString);
        let frame = parse_frame(r#"{"type":"offer","dst":""}"#).unwrap();
        assert_eq!(frame.kind, None, "type match is case-sensitive");
        assert_eq!(frame.dst, Dst::Missing);
        let frame = parse_frame(r#"{"type":"LEAVE","dst":null}"#).unwrap();
        assert_eq!(frame.dst, Dst::Missing);
        assert!(frame.payload.is_none());
    }

    #[test]
    fn rejects_what_is_not_an_object() {
        for text in ["", "{", "nul", r#"{"type":"OFFER"} x"#, "{\"a\":1,}"] {
            assert_eq!(
                parse_frame(text).unwrap_err(),
                FrameError::Malformed,
                "{text}"
            );
        }
        for text in ["null", "1", "\"OFFER\"", "[1,{\"type\":\"OFFER\"}]", "true"] {
            assert_eq!(
                parse_frame(text).unwrap_err(),
                FrameError::NotAnObject,
                "{text}"
            );
        }
    }

    #[test]
    fn deep_nesting_never_overflows_the_stack() {
        let deep = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
        // The payload is skipped, not parsed: any depth passes through untouched.
        let text = format!(r#"{{"type":"OFFER","dst":"b","payload":{deep}}}"#);
        let frame = parse_frame(&text)
            .map_err(|e| e.to_string())
            .map(|f| f.payload.map(str::len));
        assert_eq!(frame, Ok(Some(deep.len())));
        // Ignored values are skipped too; whatever the verdict, nothing recurses 100,000 deep.
        for text in [format!(r#"{{"x":{deep}}}"#), format!(r#"{{"dst":{deep}}}"#)] {
            let _ = parse_frame(&text).map(|f| f.kind);
        }
        assert!(parse_frame(&deep).is_err());
    }

    #[test]
    fn server_frames_match_the_reference_bytes() {
        assert_eq!(OPEN, r#"{"type":"OPEN"}"#);
        assert_eq!(
            error_frame(texts::INVALID_KEY),
            r#"{"type":"ERROR","payload":{"msg":"Invalid key provided"}}"#
        );
        assert_eq!(
            id_taken_frame(),
            r#"{"type":"ID-TAKEN","payload":{"msg":"ID is taken"}}"#
        );
        assert_eq!(
            expire_frame("gone", "me"),
            r#"{"type":"EXPIRE","src":"gone","dst":"me"}"#
        );
        let payload = r#"{"x": [1, 2.50]}"#;
        assert_eq!(
            relay_frame(MessageType::Offer, "a\"b", "c\u{1}", Some(payload)),
            r#"{"type":"OFFER","src":"a\"b","dst":"c\u0001","payload":{"x": [1, 2.50]}}"#
        );
    }

    #[test]
    fn the_destination_is_located_in_the_frame_when_verbatim() {
        let (frame, at) = relay_frame_locating_dst(MessageType::Offer, "a", "bob", Some("1"));
        assert_eq!(at.map(|r| &frame[r]), Some("bob"));
        let (_, at) = relay_frame_locating_dst(MessageType::Offer, "a", "b\"ob", None);
        assert_eq!(at, None, "escaped ids are not verbatim");
        let (frame, at) = relay_frame_locating_dst(MessageType::Offer, "a\n", "é x", None);
        assert_eq!(at.map(|r| &frame[r]), Some("é x"));
    }

    #[test]
    fn relay_frames_are_allocated_at_their_exact_size() {
        // `Bytes::from` a String with spare capacity allocates a second block per message.
        for kind in [
            MessageType::Offer,
            MessageType::Candidate,
            MessageType::Leave,
        ] {
            for payload in [None, Some(r#"{"sdp":"v=0\r\n"}"#)] {
                let (frame, _) = relay_frame_locating_dst(kind, "alice", "bob-1", payload);
                assert_eq!(frame.capacity(), frame.len(), "{frame}");
            }
        }
    }

    #[test]
    fn json_strings_round_trip() {
        for s in ["plain", "quote\" back\\ nl\n tab\t \u{7f} é 😀 \u{0}\u{1f}"] {
            let mut out = String::new();
            push_json_str(&mut out, s);
            assert_eq!(serde_json::from_str::<String>(&out).unwrap(), s);
        }
    }

    #[test]
    fn query_decoding_is_urlsearchparams() {
        let p = ConnectParams::from_query("key=peerjs&id=first&token=t+1&id=E%20x&version=1.5.5");
        assert_eq!(p.id, "E x");
        assert_eq!(p.token, "t 1");
        assert_eq!(p.key, "peerjs");
        assert_eq!(
            ConnectParams::from_query("id=%FF"),
            ConnectParams {
                id: "\u{fffd}".into(),
                ..Default::default()
            }
        );
    }

    #[test]
    fn id_grammar_is_the_clients() {
        for ok in [
            "a",
            "A1",
            "a-b",
            "a_b c",
            "0f8fad5b-d9cb-469f-a165-70867728950e",
        ] {
            assert!(is_valid_id(ok), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "a--b",
            "a b_",
            "é",
            "a.b",
            "null\u{0}",
            &"x".repeat(65),
        ] {
            assert!(!is_valid_id(bad), "{bad}");
        }
        assert!(is_valid_id(&"x".repeat(64)));
    }
}

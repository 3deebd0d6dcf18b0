//! PeerJS-shaped signaling messages, as the peerjs 1.5.x browser client sends them.
//!
//! The client serialises `{type, payload, dst}` in that order (`lib/negotiator.ts`), with a
//! `payload` that the server must relay untouched. Each message built here carries a tag
//! `dc_<seq>_<send-time-ns>` in `payload.connectionId` (the client's own ids look like
//! `dc_` + 10 characters), so the receiver can check order, loss and one-way latency with no
//! field the real client would not send. The send time is nanoseconds since an epoch shared by
//! the whole load generator process (one process, one monotonic clock).
//!
//! Sizes, with a 6-character `dst`: OFFER ~560 bytes, ANSWER ~500, CANDIDATE ~300.

use std::fmt::Write as _;

/// The relayed message types the load generator sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Offer,
    Answer,
    Candidate,
}

/// A data-channel offer as Chrome writes it, trimmed to the lines a data channel needs, already
/// escaped for a JSON string (`\r\n` → `\\r\\n`).
const OFFER_SDP: &str = concat!(
    r"v=0\r\n",
    r"o=- 5098271236458329175 2 IN IP4 127.0.0.1\r\n",
    r"s=-\r\n",
    r"t=0 0\r\n",
    r"m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n",
    r"c=IN IP4 0.0.0.0\r\n",
    r"a=ice-ufrag:q9Gx\r\n",
    r"a=ice-pwd:Fh3jkU0dPw1nQx8rZs6vLm2T\r\n",
    r"a=fingerprint:sha-256 7B:3E:A1:0C:55:9D:E2:14:8F:60:B7:2A:C3:91:4D:EE:05:7A:B8:16:D9:33:6C:F0:42:8E:A5:1B:C7:69:D0:2F\r\n",
    r"a=setup:actpass\r\n",
    r"a=mid:0\r\n",
    r"a=sctp-port:5000\r\n",
);

/// The matching answer.
const ANSWER_SDP: &str = concat!(
    r"v=0\r\n",
    r"o=- 7741068296385012944 2 IN IP4 127.0.0.1\r\n",
    r"s=-\r\n",
    r"t=0 0\r\n",
    r"m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n",
    r"c=IN IP4 0.0.0.0\r\n",
    r"a=ice-ufrag:Zp4e\r\n",
    r"a=ice-pwd:m2Qk8LrW5yTx0cVb3nJh7sDg\r\n",
    r"a=fingerprint:sha-256 2C:91:5F:A0:37:E4:6B:D8:13:7E:C2:59:0A:F6:84:3D:B1:68:2E:97:45:DC:0F:73:A9:1C:E6:50:8B:34:F2:C7\r\n",
    r"a=setup:active\r\n",
    r"a=mid:0\r\n",
    r"a=sctp-port:5000\r\n",
);

/// A host candidate with an mDNS name, as current browsers gather first.
const CANDIDATE_LINE: &str = "candidate:1467250027 1 udp 2122260223 7f3b1c2a-5d1e-4c8b-9a6f-2e4d8c1b0a97.local 56143 typ host generation 0 ufrag q9Gx network-cost 999";

/// Appends the PeerJS message of `kind` to `dst`, tagged with `seq` and `ts_ns`, to `out`.
pub fn build(out: &mut String, kind: Kind, dst: &str, seq: u64, ts_ns: u64) {
    match kind {
        Kind::Offer => {
            out.push_str(r#"{"type":"OFFER","payload":{"sdp":{"type":"offer","sdp":""#);
            out.push_str(OFFER_SDP);
            out.push_str(r#""},"type":"data","connectionId":"#);
            push_tag(out, seq, ts_ns);
            out.push_str(r#","label":"#);
            push_tag(out, seq, ts_ns);
            out.push_str(r#","reliable":false,"serialization":"binary","metadata":null},"dst":""#);
        }
        Kind::Answer => {
            out.push_str(r#"{"type":"ANSWER","payload":{"sdp":{"type":"answer","sdp":""#);
            out.push_str(ANSWER_SDP);
            out.push_str(r#""},"type":"data","connectionId":"#);
            push_tag(out, seq, ts_ns);
            out.push_str(r#"},"dst":""#);
        }
        Kind::Candidate => {
            out.push_str(r#"{"type":"CANDIDATE","payload":{"candidate":{"candidate":""#);
            out.push_str(CANDIDATE_LINE);
            out.push_str(
                r#"","sdpMid":"0","sdpMLineIndex":0,"usernameFragment":"q9Gx"},"type":"data","connectionId":"#,
            );
            push_tag(out, seq, ts_ns);
            out.push_str(r#"},"dst":""#);
        }
    }
    out.push_str(dst);
    out.push_str("\"}");
}

/// Builds one message into a fresh `String`.
pub fn build_string(kind: Kind, dst: &str, seq: u64, ts_ns: u64) -> String {
    let mut s = String::with_capacity(640);
    build(&mut s, kind, dst, seq, ts_ns);
    s
}

fn push_tag(out: &mut String, seq: u64, ts_ns: u64) {
    // Writing into a String cannot fail.
    let _ = write!(out, "\"dc_{seq}_{ts_ns}\"");
}

/// What a received text frame turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// One of our tagged OFFER/ANSWER/CANDIDATE messages, relayed by the server.
    Relayed(Relayed<'a>),
    /// A server message with another envelope type (OPEN, LEAVE, EXPIRE, ERROR, ID-TAKEN…).
    Other(&'a str),
    /// Not something this harness sent or a PeerJS server generates.
    Malformed,
}

/// The parts of a relayed message the load generator checks.
#[derive(Debug, PartialEq, Eq)]
pub struct Relayed<'a> {
    pub kind: Kind,
    /// The `src` the server stamped: must be the sender's id.
    pub src: &'a str,
    pub seq: u64,
    pub ts_ns: u64,
}

/// Reads a frame relayed by any PeerJS server without a full JSON parse: the envelope `type`
/// is the first `"type":"…"` whose value starts with an upper-case letter (payload types are
/// lower-case), `src` is the server-stamped one (the client never sends `src`), and the tag
/// comes from `"connectionId":"dc_<seq>_<ts>"`. Field order does not matter.
pub fn scan(text: &str) -> Frame<'_> {
    let Some(kind) = envelope_type(text) else {
        return Frame::Malformed;
    };
    let kind = match kind {
        "OFFER" => Kind::Offer,
        "ANSWER" => Kind::Answer,
        "CANDIDATE" => Kind::Candidate,
        other => return Frame::Other(other),
    };
    let Some(src) = string_after(text, "\"src\":\"") else {
        return Frame::Malformed;
    };
    let Some(tag) = string_after(text, "\"connectionId\":\"dc_") else {
        return Frame::Malformed;
    };
    let Some((seq, ts)) = tag.split_once('_') else {
        return Frame::Malformed;
    };
    match (seq.parse(), ts.parse()) {
        (Ok(seq), Ok(ts_ns)) => Frame::Relayed(Relayed {
            kind,
            src,
            seq,
            ts_ns,
        }),
        _ => Frame::Malformed,
    }
}

fn envelope_type(text: &str) -> Option<&str> {
    let mut rest = text;
    loop {
        let at = rest.find("\"type\":\"")?;
        rest = &rest[at + 8..];
        let end = rest.find('"')?;
        let value = &rest[..end];
        if value.starts_with(|c: char| c.is_ascii_uppercase()) {
            return Some(value);
        }
        rest = &rest[end..];
    }
}

/// The string value (up to the next `"`) that follows the first occurrence of `key`.
fn string_after<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let at = text.find(key)? + key.len();
    let rest = &text[at..];
    let end = rest.find('"')?;
    Some(&rest[..end])
}

/// `{"type":"HEARTBEAT"}`, what the client sends every 5 s.
pub const HEARTBEAT: &str = r#"{"type":"HEARTBEAT"}"#;

#[cfg(test)]
mod tests {
    use super::*;

    /// What a server sends: the client's frame with `src` stamped; peerjs-server puts `src`
    /// after `type` and the payload before `dst`, others may order differently.
    fn relay(client_frame: &str, src: &str) -> String {
        let v: serde_json::Value = serde_json::from_str(client_frame).unwrap();
        format!(
            r#"{{"type":{},"src":"{src}","dst":{},"payload":{}}}"#,
            v["type"], v["dst"], v["payload"]
        )
    }

    #[test]
    fn messages_are_valid_json_of_realistic_size() {
        for (kind, lo, hi) in [
            (Kind::Offer, 540, 600),
            (Kind::Answer, 440, 540),
            (Kind::Candidate, 250, 340),
        ] {
            let s = build_string(kind, "b00042", 123_456, 98_765_432_100);
            let v: serde_json::Value = serde_json::from_str(&s).unwrap();
            assert_eq!(v["dst"], "b00042");
            assert!(v.get("src").is_none());
            assert!((lo..hi).contains(&s.len()), "{kind:?} is {} bytes", s.len());
            let cid = v["payload"]["connectionId"].as_str().unwrap();
            assert_eq!(cid, "dc_123456_98765432100");
        }
    }

    #[test]
    fn scan_round_trips_through_a_relay() {
        for kind in [Kind::Offer, Kind::Answer, Kind::Candidate] {
            let sent = build_string(kind, "peer-b", 7, 1_000_000_007);
            let got = relay(&sent, "peer-a");
            assert_eq!(
                scan(&got),
                Frame::Relayed(Relayed {
                    kind,
                    src: "peer-a",
                    seq: 7,
                    ts_ns: 1_000_000_007
                })
            );
        }
    }

    #[test]
    fn scan_sees_server_messages() {
        assert_eq!(scan(r#"{"type":"OPEN"}"#), Frame::Other("OPEN"));
        assert_eq!(
            scan(r#"{"type":"LEAVE","src":"a","dst":"b"}"#),
            Frame::Other("LEAVE")
        );
        assert_eq!(scan("nonsense"), Frame::Malformed);
        assert_eq!(
            scan(r#"{"payload":{"type":"data"},"type":"EXPIRE"}"#),
            Frame::Other("EXPIRE")
        );
    }
}

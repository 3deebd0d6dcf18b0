//! The same envelope read with serde_json: the reference the scanner is held to, and the
//! other side of the A/B that keeps it (`--features crate-json` parses frames with this;
//! `bench/ab.sh crate-json` measures the two in one run).
//!
//! It gives [`super::scan`]'s answer on every text, which is `JSON.parse`'s: a borrowing
//! visitor keeps the last duplicate key, the payload is a [`RawValue`] (the sender's bytes,
//! never parsed into values), and every value the server does not decode is skipped by
//! serde_json's iterative skipper (as `IgnoredAny` or a `RawValue`), so nesting of any
//! depth is accepted without recursion and numbers are never converted (`1e400` is valid
//! JSON, where serde_json would refuse to decode it into an `f64`).

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer as _, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::{Envelope, Scalar, ScanError};

/// [`super::scan`], by serde_json.
pub fn scan(text: &str) -> Result<Envelope<'_>, ScanError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let is_object = text
        .trim_start_matches([' ', '\t', '\n', '\r'])
        .starts_with('{');
    let envelope = if is_object {
        de.deserialize_map(EnvelopeVisitor)
    } else {
        de.deserialize_ignored_any(IgnoredAny)
            .map(|IgnoredAny| Envelope::default())
    };
    // Trailing text makes the whole frame invalid, as in JSON.parse.
    let envelope = envelope
        .and_then(|envelope| de.end().map(|()| envelope))
        .map_err(|_| ScanError::Invalid)?;
    if is_object {
        Ok(envelope)
    } else {
        Err(ScanError::NotAnObject)
    }
}

/// Reads the top-level object's members, keeping the fields the server uses.
struct EnvelopeVisitor;

impl<'de> Visitor<'de> for EnvelopeVisitor {
    type Value = Envelope<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Envelope<'de>, A::Error> {
        let mut envelope = Envelope::default();
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Type => envelope.kind = Some(scalar(map.next_value()?)?),
                Key::Dst => envelope.dst = Some(scalar(map.next_value()?)?),
                Key::Payload => envelope.payload = Some(map.next_value::<&RawValue>()?.get()),
                Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(envelope)
    }
}

/// A value of `type` or `dst`, taken raw (validated, numbers not converted) and then
/// classified: strings are decoded, borrowed when they have no escapes.
fn scalar<E: de::Error>(raw: &RawValue) -> Result<Scalar<'_>, E> {
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'"') if !text.contains('\\') => text
            .strip_prefix('"')
            .and_then(|s| s.strip_suffix('"'))
            .map(|s| Scalar::Str(Cow::Borrowed(s)))
            .ok_or_else(|| E::custom("a string without quotes")),
        Some(b'"') => serde_json::from_str::<String>(text)
            .map(|s| Scalar::Str(Cow::Owned(s)))
            .map_err(E::custom),
        Some(b'n') => Ok(Scalar::Null),
        _ => Ok(Scalar::Other),
    }
}

/// The keys the server looks at. Keys may contain escapes (`"ty\u0070e"`), so both the
/// borrowed and the decoded form are matched.
enum Key {
    Type,
    Dst,
    Payload,
    Other,
}

impl<'de> serde::Deserialize<'de> for Key {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E>(self, key: &str) -> Result<Key, E> {
                Ok(match key {
                    "type" => Key::Type,
                    "dst" => Key::Dst,
                    "payload" => Key::Payload,
                    _ => Key::Other,
                })
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_the_scanner_reads() {
        for text in [
            r#" {"type":"OFFER","payload":{"sdp":{"type":"offer","sdp":"v=0\r\n"},"n":[1,-2.5e3,true,null,{}]},"dst":"bob"} "#,
            r#"{"type":"HEARTBEAT","dst":"a","type":"ANSWER","dst":"b"}"#,
            r#"{"ty\u0070e":"CANDIDATE","dst":"b\u00f6b","payload":"\ud800"}"#,
            r#"{"type":1e400,"dst":-1e400,"payload":1e400}"#,
            r#"{"type":null,"dst":[{"a":{}}],"x":{"y":[true,false]}}"#,
            "{}",
            "null",
            "1e400",
            "[1,{\"type\":\"OFFER\"}]",
            "",
            "{\"a\":1,}",
            r#"{"dst":"\ud800"}"#,
            r#"{"\ud800":1}"#,
            "{\"a\":\"\x01\"}",
            r#"{"type":"OFFER"} x"#,
        ] {
            assert_eq!(scan(text), super::super::scan(text), "{text}");
        }
    }

    #[test]
    fn any_depth_without_recursion() {
        let deep = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
        let text = format!(r#"{{"type":"OFFER","x":{deep},"dst":{deep},"payload":{deep}}}"#);
        let envelope = scan(&text).map(|e| (e.dst, e.payload.map(str::len)));
        assert_eq!(envelope, Ok((Some(Scalar::Other), Some(deep.len()))));
        assert_eq!(scan(&deep), Err(ScanError::NotAnObject));
    }
}

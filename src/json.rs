//! A validating, allocation-free JSON scanner for the signaling envelope.
//!
//! Every relayed frame passes through here, and most of its bytes are the SDP text inside the
//! payload, a JSON string full of `\r\n` escapes. serde_json restarts its string scan at each
//! escape; this scanner skips string bodies eight bytes at a time (SWAR), treats escapes
//! inline, and keeps only what the server needs: `type`, `dst` and the payload's span. It
//! still validates the whole frame with the same strictness as `JSON.parse` (grammar, control
//! characters, escapes, nesting to any depth without recursion), so every frame the server
//! relays is valid JSON.

use std::borrow::Cow;

/// A scalar the server looks at (`type`, `dst`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scalar<'a> {
    /// A string, borrowed when it has no escapes.
    Str(Cow<'a, str>),
    /// `null`.
    Null,
    /// A number, boolean, object or array.
    Other,
}

/// The fields of a top-level object the server uses. Duplicate keys: the last one wins.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// The `type` value, if present.
    pub kind: Option<Scalar<'a>>,
    /// The `dst` value, if present.
    pub dst: Option<Scalar<'a>>,
    /// The `payload` value's exact text, if present.
    pub payload: Option<&'a str>,
}

/// Why a text is not an envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanError {
    /// Not valid JSON.
    Invalid,
    /// Valid JSON, but not an object.
    NotAnObject,
}

/// Scans `text`, which must be one JSON object (surrounding whitespace allowed).
pub fn scan(text: &str) -> Result<Envelope<'_>, ScanError> {
    let mut s = Scanner {
        text,
        b: text.as_bytes(),
        i: 0,
    };
    s.ws();
    if s.peek() != Some(b'{') {
        return match s.value().and_then(|()| s.end()) {
            Ok(()) => Err(ScanError::NotAnObject),
            Err(Invalid) => Err(ScanError::Invalid),
        };
    }
    s.object()
        .and_then(|envelope| s.end().map(|()| envelope))
        .map_err(|Invalid| ScanError::Invalid)
}

/// The one error inside the scanner; mapped to [`ScanError`] at the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Invalid;

type Scan<T> = Result<T, Invalid>;

/// Bytes that end a run of plain string content: `"`, `\` and control characters.
const fn string_stops() -> [bool; 256] {
    let mut table = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        table[i] = true;
        i += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
}
const STRING_STOP: [bool; 256] = string_stops();

/// Position of the first `"`, `\` or control byte in `bytes`, if any.
fn find_string_stop(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::MAX / 255; // 0x0101…01
    const HIGH: u64 = ONES << 7; // 0x8080…80
    let mut offset = 0;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let Ok(word) = <[u8; 8]>::try_from(chunk) else {
            break;
        };
        let v = u64::from_le_bytes(word);
        // A byte is flagged when it is < 0x20, == '"' or == '\\' (exact for bytes < 0x80;
        // bytes ≥ 0x80 never flag because `!v` clears their high bit).
        let control = v.wrapping_sub(ONES * 0x20);
        let quote = (v ^ (ONES * u64::from(b'"'))).wrapping_sub(ONES);
        let backslash = (v ^ (ONES * u64::from(b'\\'))).wrapping_sub(ONES);
        let hits = (control | quote | backslash) & !v & HIGH;
        if hits != 0 {
            // The lowest flagged byte is exact; a borrow can only mark bytes after it.
            return Some(offset + (hits.trailing_zeros() / 8) as usize);
        }
        offset += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&c| STRING_STOP[usize::from(c)])
        .map(|p| offset + p)
}

struct Scanner<'a> {
    text: &'a str,
    b: &'a [u8],
    i: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    fn expect(&mut self, byte: u8) -> Scan<()> {
        self.ws();
        if self.peek() == Some(byte) {
            self.i += 1;
            Ok(())
        } else {
            Err(Invalid)
        }
    }

    fn end(&mut self) -> Scan<()> {
        self.ws();
        if self.i == self.b.len() {
            Ok(())
        } else {
            Err(Invalid)
        }
    }

    /// The top-level object, keeping the fields we use.
    fn object(&mut self) -> Scan<Envelope<'a>> {
        let mut envelope = Envelope::default();
        self.expect(b'{')?;
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(envelope);
        }
        loop {
            self.ws();
            let key = self.string()?;
            self.expect(b':')?;
            self.ws();
            match self.key_name(key)? {
                Some(Key::Type) => envelope.kind = Some(self.scalar()?),
                Some(Key::Dst) => envelope.dst = Some(self.scalar()?),
                Some(Key::Payload) => {
                    let start = self.i;
                    self.value()?;
                    envelope.payload = self.text.get(start..self.i);
                }
                None => self.value()?,
            }
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(envelope);
                }
                _ => return Err(Invalid),
            }
        }
    }

    fn key_name(&self, key: StringSpan) -> Scan<Option<Key>> {
        let decoded = self.decode(key)?;
        Ok(match decoded.as_ref() {
            "type" => Some(Key::Type),
            "dst" => Some(Key::Dst),
            "payload" => Some(Key::Payload),
            _ => None,
        })
    }

    /// A value of `type` or `dst`: strings are decoded, anything else only validated.
    fn scalar(&mut self) -> Scan<Scalar<'a>> {
        match self.peek() {
            Some(b'"') => {
                let span = self.string()?;
                Ok(Scalar::Str(self.decode(span)?))
            }
            Some(b'n') => {
                self.literal(b"null")?;
                Ok(Scalar::Null)
            }
            _ => {
                self.value()?;
                Ok(Scalar::Other)
            }
        }
    }

    /// A string starting at the current `"`; returns its body's span.
    fn string(&mut self) -> Scan<StringSpan> {
        if self.peek() != Some(b'"') {
            return Err(Invalid);
        }
        self.i += 1;
        let start = self.i;
        let mut escaped = false;
        loop {
            let rest = self.b.get(self.i..).ok_or(Invalid)?;
            self.i += find_string_stop(rest).ok_or(Invalid)?;
            match self.peek() {
                Some(b'"') => {
                    let end = self.i;
                    self.i += 1;
                    return Ok(StringSpan {
                        start,
                        end,
                        escaped,
                    });
                }
                Some(b'\\') => {
                    escaped = true;
                    self.i += 1;
                    match self.peek() {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.i += 1,
                        Some(b'u') => {
                            let hex = self.b.get(self.i + 1..self.i + 5).ok_or(Invalid)?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return Err(Invalid);
                            }
                            self.i += 5;
                        }
                        _ => return Err(Invalid),
                    }
                }
                _ => return Err(Invalid), // a raw control character
            }
        }
    }

    /// A string body as text: borrowed, or unescaped (a lone surrogate is an error).
    fn decode(&self, span: StringSpan) -> Scan<Cow<'a, str>> {
        let raw = self.text.get(span.start..span.end).ok_or(Invalid)?;
        if !span.escaped {
            return Ok(Cow::Borrowed(raw));
        }
        // Rare (ids and types have no escapes in practice): let serde_json unescape.
        let quoted = self.text.get(span.start - 1..span.end + 1).ok_or(Invalid)?;
        serde_json::from_str::<String>(quoted)
            .map(Cow::Owned)
            .map_err(|_| Invalid)
    }

    fn literal(&mut self, word: &[u8]) -> Scan<()> {
        if self.b.get(self.i..self.i + word.len()) == Some(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(Invalid)
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
        self.i - start
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
    fn number(&mut self) -> Scan<()> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(Invalid),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return Err(Invalid);
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            if self.digits() == 0 {
                return Err(Invalid);
            }
        }
        Ok(())
    }

    /// Skips one value of any kind and depth, validating it, without recursion.
    fn value(&mut self) -> Scan<()> {
        let mut open = Nesting::default();
        loop {
            // A value starts here.
            self.ws();
            match self.peek().ok_or(Invalid)? {
                b'"' => {
                    self.string()?;
                }
                b'{' => {
                    self.i += 1;
                    self.ws();
                    if self.peek() == Some(b'}') {
                        self.i += 1;
                    } else {
                        open.push(true);
                        self.member_key()?;
                        continue;
                    }
                }
                b'[' => {
                    self.i += 1;
                    self.ws();
                    if self.peek() == Some(b']') {
                        self.i += 1;
                    } else {
                        open.push(false);
                        continue;
                    }
                }
                b't' => self.literal(b"true")?,
                b'f' => self.literal(b"false")?,
                b'n' => self.literal(b"null")?,
                b'-' | b'0'..=b'9' => self.number()?,
                _ => return Err(Invalid),
            }
            // After a value: close what ends here, then find the next value or finish.
            loop {
                let Some(in_object) = open.top() else {
                    return Ok(());
                };
                self.ws();
                match self.peek() {
                    Some(b',') => {
                        self.i += 1;
                        if in_object {
                            self.member_key()?;
                        }
                        break;
                    }
                    Some(b'}') if in_object => {
                        self.i += 1;
                        open.pop();
                    }
                    Some(b']') if !in_object => {
                        self.i += 1;
                        open.pop();
                    }
                    _ => return Err(Invalid),
                }
            }
        }
    }

    /// `"key":` inside an object being skipped.
    fn member_key(&mut self) -> Scan<()> {
        self.ws();
        self.string()?;
        self.expect(b':')
    }
}

#[derive(Clone, Copy)]
struct StringSpan {
    start: usize,
    end: usize,
    escaped: bool,
}

enum Key {
    Type,
    Dst,
    Payload,
}

/// A stack of "object or array" flags: the first 64 levels in a word, deeper ones on the
/// heap (only for pathological input).
#[derive(Default)]
struct Nesting {
    bits: u64,
    depth: usize,
    deep: Vec<bool>,
}

impl Nesting {
    fn push(&mut self, object: bool) {
        if self.depth < 64 {
            self.bits = (self.bits & !(1 << self.depth)) | (u64::from(object) << self.depth);
        } else {
            self.deep.push(object);
        }
        self.depth += 1;
    }

    fn pop(&mut self) {
        self.depth -= 1;
        if self.depth >= 64 {
            self.deep.pop();
        }
    }

    fn top(&self) -> Option<bool> {
        match self.depth {
            0 => None,
            d if d <= 64 => Some(self.bits & (1 << (d - 1)) != 0),
            _ => self.deep.last().copied(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_stops_in_every_position() {
        for len in 0..40 {
            for at in 0..len {
                for stop in [b'"', b'\\', 0x00, 0x1f] {
                    let mut bytes = vec![b'a'; len];
                    bytes[at] = stop;
                    assert_eq!(
                        find_string_stop(&bytes),
                        Some(at),
                        "len {len} at {at} stop {stop}"
                    );
                    // Non-ASCII and bytes just above the range never stop.
                    bytes[at] = 0xe9;
                    assert_eq!(find_string_stop(&bytes), None);
                    bytes[at] = 0x20;
                    assert_eq!(find_string_stop(&bytes), None);
                }
            }
        }
    }

    #[test]
    fn scans_a_peerjs_offer() {
        let text = r#" {"type":"OFFER","payload":{"sdp":{"type":"offer","sdp":"v=0\r\na=x\r\n"},"n":[1,-2.5e3,true,null,{}],"s":"\u00e9"},"dst":"bob"} "#;
        let e = scan(text).unwrap();
        assert_eq!(e.kind, Some(Scalar::Str(Cow::Borrowed("OFFER"))));
        assert_eq!(e.dst, Some(Scalar::Str(Cow::Borrowed("bob"))));
        assert_eq!(
            e.payload,
            Some(
                r#"{"sdp":{"type":"offer","sdp":"v=0\r\na=x\r\n"},"n":[1,-2.5e3,true,null,{}],"s":"\u00e9"}"#
            )
        );
    }

    #[test]
    fn rejects_what_json_parse_rejects() {
        for bad in [
            "",
            "{",
            "}",
            "{\"a\"}",
            "{\"a\":}",
            "{\"a\":1,}",
            "{,}",
            "[1,]",
            "{\"a\":01}",
            "{\"a\":1.}",
            "{\"a\":.5}",
            "{\"a\":1e}",
            "{\"a\":-}",
            "{\"a\":tru}",
            "{\"a\":\"\x01\"}",
            "{\"a\":\"\\x\"}",
            "{\"a\":\"\\u12G4\"}",
            "{\"a\":[}",
            "{\"a\":{]}",
            "{\"a\":1}x",
            "{\"a\":\"unterminated}",
            "{'a':1}",
            "{\"a\" 1}",
            "{\"a\":1 \"b\":2}",
            "{\"a\":[1 2]}",
            "NaN",
            "[",
        ] {
            assert_eq!(scan(bad), Err(ScanError::Invalid), "{bad:?}");
        }
        for not_object in [
            "null",
            "1",
            "\"x\"",
            "[1,{\"type\":\"OFFER\"}]",
            "true",
            " [ ] ",
        ] {
            assert_eq!(
                scan(not_object),
                Err(ScanError::NotAnObject),
                "{not_object:?}"
            );
        }
    }
}

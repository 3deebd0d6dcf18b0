//! A validating, allocation-free JSON scanner for the signaling envelope.
//!
//! Every relayed frame passes through here, and most of its bytes are the SDP text inside the
//! payload, a JSON string full of `\r\n` escapes. serde_json restarts its string scan at each
//! escape; this scanner classifies 32 bytes at a time with vector compares, steps over
//! escapes and from string to string with a bit scan, and keeps only what the server needs:
//! `type`, `dst` and the payload's span. It still validates the whole frame with the same
//! strictness as `JSON.parse` (grammar, control characters, escapes, nesting to any depth
//! without recursion), so every frame the server relays is valid JSON.
//!
//! [`via_serde`] reads the same envelope with serde_json: it is the oracle the property tests
//! hold this scanner to, and the variant `--features crate-json` builds for the A/B benchmark.
//!
//! It also holds the server's one JSON string escaper ([`write_escaped`]), used for the frames
//! the server writes and for log lines.

use std::borrow::Cow;
use std::fmt;

use wide::u8x16;

pub mod via_serde;

/// Writes `s` escaped for the inside of a JSON string literal, as `JSON.stringify` does
/// (`\"`, `\\`, `\n`, `\r`, `\t`, `\b`, `\f`, other control characters as `\u00XX`). Text
/// that needs no escaping (every valid id) is written in one piece.
pub fn write_escaped<W: fmt::Write + ?Sized>(out: &mut W, s: &str) -> fmt::Result {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let needs_escape = |b: u8| b < 0x20 || b == b'"' || b == b'\\';
    if !s.bytes().any(needs_escape) {
        return out.write_str(s);
    }
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        if !needs_escape(b) {
            continue;
        }
        // Every escaped byte is ASCII, so `i` is a char boundary.
        out.write_str(&s[start..i])?;
        match b {
            b'"' => out.write_str("\\\"")?,
            b'\\' => out.write_str("\\\\")?,
            b'\n' => out.write_str("\\n")?,
            b'\r' => out.write_str("\\r")?,
            b'\t' => out.write_str("\\t")?,
            0x08 => out.write_str("\\b")?,
            0x0c => out.write_str("\\f")?,
            _ => {
                out.write_str("\\u00")?;
                out.write_char(char::from(HEX[usize::from(b >> 4)]))?;
                out.write_char(char::from(HEX[usize::from(b & 0xf)]))?;
            }
        }
        start = i + 1;
    }
    out.write_str(&s[start..])
}

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
        block: usize::MAX,
        stops: 0,
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

/// Bytes scanned per step inside a string: one bit each in a `u32` mask.
const BLOCK: usize = u32::BITS as usize;

/// Bit `i` is set when `block[i]` ends a run of plain string content: `"`, `\` or a control
/// character. Four vector operations and a byte mask per 16 bytes (SSE2 on x86-64, NEON on
/// aarch64, through `wide`'s safe vector types; a scalar fallback elsewhere).
fn stop_mask(block: &[u8; BLOCK]) -> u32 {
    let (halves, _) = block.as_chunks::<16>();
    halves.iter().enumerate().fold(0, |mask, (i, half)| {
        let v = u8x16::new(*half);
        let quote = v.simd_eq(u8x16::splat(b'"'));
        let backslash = v.simd_eq(u8x16::splat(b'\\'));
        // c < 0x20 ⇔ max(c, 0x1f) == 0x1f
        let control = v.max(u8x16::splat(0x1f)).simd_eq(u8x16::splat(0x1f));
        mask | ((quote | backslash | control).to_bitmask() << (16 * i))
    })
}

/// The stop mask of the block of `bytes` starting at `at`. Past the end the block is padded
/// with NUL, a control character, so that a string running off the end stops there.
fn stops_at(bytes: &[u8], at: usize) -> u32 {
    let rest = bytes.get(at..).unwrap_or_default();
    match rest.first_chunk::<BLOCK>() {
        Some(block) => stop_mask(block),
        None => stops_in_tail(rest),
    }
}

/// [`stops_at`] for the last, short block: out of line, so the common path stays small.
#[cold]
#[inline(never)]
fn stops_in_tail(rest: &[u8]) -> u32 {
    let mut block = [0; BLOCK];
    block[..rest.len()].copy_from_slice(rest);
    stop_mask(&block)
}

struct Scanner<'a> {
    text: &'a str,
    b: &'a [u8],
    i: usize,
    /// Start of the block (a multiple of [`BLOCK`]) whose stop mask is in `stops`: the short
    /// strings of a frame (keys, ids, types) mostly share blocks, so each block is looked at
    /// once.
    block: usize,
    stops: u32,
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
    ///
    /// Works from the stop masks of whole blocks: an escape (SDP text has one every ~30 bytes)
    /// or the next string in the same block costs a shift and a bit scan, not another scan.
    #[inline(always)]
    fn string(&mut self) -> Scan<StringSpan> {
        if self.peek() != Some(b'"') {
            return Err(Invalid);
        }
        let start = self.i + 1;
        let mut escaped = false;
        let mut at = start;
        loop {
            let i = self.next_stop(at);
            match self.b.get(i) {
                Some(b'"') => {
                    self.i = i + 1;
                    return Ok(StringSpan {
                        start,
                        end: i,
                        escaped,
                    });
                }
                Some(b'\\') => {
                    escaped = true;
                    at = i + self.escape_len(i + 1)?;
                }
                _ => return Err(Invalid), // a raw control character, or the end
            }
        }
    }

    /// Position of the first stop byte at or after `from`, or the end of the text or past it
    /// (the padding stops there).
    #[inline(always)]
    fn next_stop(&mut self, from: usize) -> usize {
        let mut block = from - from % BLOCK;
        let mut skip = from - block;
        loop {
            if block != self.block {
                self.block = block;
                self.stops = stops_at(self.b, block);
            }
            let ahead = self.stops >> skip;
            if ahead != 0 {
                return block + skip + ahead.trailing_zeros() as usize;
            }
            block += BLOCK;
            skip = 0;
        }
    }

    /// Length of the escape whose letter is at `i` (just after its `\\`), backslash included.
    #[inline(always)]
    fn escape_len(&self, i: usize) -> Scan<usize> {
        match self.b.get(i) {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => Ok(2),
            _ => self.unicode_escape_len(i),
        }
    }

    /// [`Self::escape_len`] for `\\uXXXX`, out of line: SDP text escapes only line ends.
    #[inline(never)]
    fn unicode_escape_len(&self, i: usize) -> Scan<usize> {
        if self.b.get(i) != Some(&b'u') {
            return Err(Invalid);
        }
        let hex = self.b.get(i + 1..i + 5).ok_or(Invalid)?;
        if hex.iter().all(u8::is_ascii_hexdigit) {
            Ok(6)
        } else {
            Err(Invalid)
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
    fn masks_stops_in_every_position() {
        for at in 0..BLOCK {
            let mut block = [b'a'; BLOCK];
            for stop in [b'"', b'\\', 0x00, 0x1f] {
                block[at] = stop;
                assert_eq!(stop_mask(&block), 1 << at, "at {at} stop {stop}");
            }
            // Non-ASCII, space and DEL never stop.
            for plain in [0xe9, 0x20, 0x7f, 0xff] {
                block[at] = plain;
                assert_eq!(stop_mask(&block), 0, "at {at} byte {plain}");
            }
        }
    }

    /// Escapes and string ends at every offset around block boundaries, and strings cut short
    /// anywhere, so that no path through `string` is missed.
    #[test]
    fn strings_across_block_boundaries() {
        for lead in 0..2 * BLOCK + 2 {
            let pad = "x".repeat(lead); // not a hex digit: `\u00` + pad stays bad
            for escape in [r"\n", r#"\""#, r"\\", r"\u00e9", r#"\\\""#, ""] {
                let body = format!("{pad}{escape}{pad}{escape}z");
                let text = format!(r#"{{"payload":"{body}","dst":"x"}}"#);
                let e = scan(&text).unwrap_or_else(|_| panic!("{text}"));
                assert_eq!(e.payload, Some(format!("\"{body}\"").as_str()), "{text}");
                assert_eq!(e.dst, Some(Scalar::Str(Cow::Borrowed("x"))), "{text}");
                // Cut anywhere inside the payload string: never terminated.
                let (from, to) = (
                    r#"{"payload":""#.len(),
                    r#"{"payload":""#.len() + body.len(),
                );
                for cut in from..=to {
                    let short = &text[..cut];
                    assert_eq!(scan(short), Err(ScanError::Invalid), "{short}");
                }
            }
            for bad in ["\u{1}", r"\x", r"\u00g9", r"\u00", "\\"] {
                let text = format!(r#"{{"payload":"{pad}{bad}{pad}"}}"#);
                assert_eq!(scan(&text), Err(ScanError::Invalid), "{text}");
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

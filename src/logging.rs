//! Log output: JSON lines (default) or tracing's text format, filtered by `RUST_LOG`.
//!
//! The JSON lines are written by [`JsonLines`], a small formatter of our own: every connection
//! logs an open and a close line, and tracing-subscriber's JSON formatter (serde_json through
//! a UTF-8-revalidating adaptor) cost about a third of the server's CPU per connection. The
//! output has the same shape: `{"timestamp":…,"level":…,"message":…,<fields>…,"target":…}`.
//!
//! Formatted lines go to stdout through `sink`, which batches them on a thread of its own
//! (built with `--features appender-log`, through tracing-appender's non-blocking writer
//! instead, for the A/B benchmark).

use std::fmt::{self, Write as _};
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

use crate::config::LogFormat;

#[cfg(feature = "appender-log")]
pub mod appender;
#[cfg(not(feature = "appender-log"))]
pub mod sink;

#[cfg(feature = "appender-log")]
pub use appender::{Flush, dropped_total};
#[cfg(not(feature = "appender-log"))]
pub use sink::{Flush, dropped_total};

/// Installs the global subscriber: `format` on stdout through the batching `sink`, `RUST_LOG`
/// (default `info`) filtering. Keep the returned guard until exit: dropping it writes out the
/// last lines. Without a thread for the writer (it cannot be spawned), lines go straight to
/// stdout.
#[cfg(not(feature = "appender-log"))]
pub fn init(format: LogFormat) -> Option<Flush> {
    match sink::Sink::spawn(std::io::stdout(), sink::CAPACITY, sink::LINGER) {
        Ok((sink, flush)) => {
            install(format, sink);
            Some(flush)
        }
        Err(error) => {
            install(format, std::io::stdout);
            tracing::warn!(%error, "no thread for log output; writing it unbuffered");
            None
        }
    }
}

/// Installs the global subscriber: `format` on stdout through tracing-appender's
/// non-blocking writer, `RUST_LOG` (default `info`) filtering. Keep the returned guard until
/// exit: dropping it writes out the last lines.
#[cfg(feature = "appender-log")]
pub fn init(format: LogFormat) -> Option<Flush> {
    let (writer, flush) = appender::stdout();
    install(format, writer);
    Some(flush)
}

fn install<W>(format: LogFormat, writer: W)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Json => builder.event_format(JsonLines).init(),
        LogFormat::Text => builder.init(),
    }
}

/// One JSON object per event, fields flattened, no span context.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _: &FmtContext<'_, S, N>,
        mut out: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write_line(&mut out, SystemTime::now(), event)
    }
}

/// Writes `event` as one JSON line to `out`.
fn write_line(out: &mut impl fmt::Write, now: SystemTime, event: &Event<'_>) -> fmt::Result {
    out.write_str("{\"timestamp\":\"")?;
    write_timestamp(out, now)?;
    out.write_str("\",\"level\":\"")?;
    out.write_str(event.metadata().level().as_str())?;
    out.write_char('"')?;
    let mut fields = Fields {
        out,
        result: Ok(()),
    };
    event.record(&mut fields);
    fields.result?;
    out.write_str(",\"target\":")?;
    write_json_str(out, event.metadata().target())?;
    out.write_str("}\n")
}

/// Records each field as `,"name":value`.
struct Fields<'a, W> {
    out: &'a mut W,
    result: fmt::Result,
}

impl<W: fmt::Write> Fields<'_, W> {
    fn field(&mut self, field: &Field, value: impl FnOnce(&mut W) -> fmt::Result) {
        if self.result.is_ok() {
            self.result = (|| {
                self.out.write_char(',')?;
                write_json_str(self.out, field.name())?;
                self.out.write_char(':')?;
                value(self.out)
            })();
        }
    }
}

impl<W: fmt::Write> Visit for Fields<'_, W> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.field(field, |out| write_json_str(out, value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.field(field, |out| write_decimal(out, value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.field(field, |out| {
            if value < 0 {
                out.write_char('-')?;
            }
            write_decimal(out, value.unsigned_abs())
        });
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.field(field, |out| {
            out.write_str(if value { "true" } else { "false" })
        });
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if value.is_finite() {
            self.field(field, |out| write!(out, "{value}"));
        } else {
            self.field(field, |out| out.write_str("null"));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.field(field, |out| {
            out.write_char('"')?;
            write!(Escaping(out), "{value:?}")?;
            out.write_char('"')
        });
    }
}

/// Writes `s` as a JSON string literal.
fn write_json_str(out: &mut impl fmt::Write, s: &str) -> fmt::Result {
    out.write_char('"')?;
    Escaping(out).write_str(s)?;
    out.write_char('"')
}

/// Escapes what passes through it for the inside of a JSON string.
struct Escaping<'a, W>(&'a mut W);

impl<W: fmt::Write> fmt::Write for Escaping<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        crate::json::write_escaped(self.0, s)
    }
}

/// An IP address for a log field (`ip = %LogIp(ip)`): IPv4 is written in one piece, without
/// the formatting machinery `Ipv4Addr`'s `Display` goes through (a sixth of a log line's cost).
#[derive(Debug, Clone, Copy)]
pub struct LogIp(pub IpAddr);

impl fmt::Display for LogIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v4 = match self.0 {
            IpAddr::V4(v4) => v4,
            IpAddr::V6(v6) => return fmt::Display::fmt(&v6, f),
        };
        let mut text = [0u8; 15];
        let mut len = 0;
        for (i, octet) in v4.octets().into_iter().enumerate() {
            if i > 0 {
                text[len] = b'.';
                len += 1;
            }
            len += put_decimal(&mut text[len..], u64::from(octet));
        }
        write_ascii(f, &text[..len])
    }
}

/// Writes `n` in decimal.
fn write_decimal(out: &mut impl fmt::Write, n: u64) -> fmt::Result {
    let mut text = [0u8; 20];
    let len = put_decimal(&mut text, n);
    write_ascii(out, &text[..len])
}

/// Writes digits and punctuation put together in a byte buffer.
fn write_ascii(out: &mut impl fmt::Write, text: &[u8]) -> fmt::Result {
    out.write_str(std::str::from_utf8(text).map_err(|_| fmt::Error)?)
}

/// Puts `n` in decimal at the start of `buf` (which must be long enough) and returns its length.
fn put_decimal(buf: &mut [u8], n: u64) -> usize {
    let len = n.checked_ilog10().map_or(1, |log| log as usize + 1);
    put_digits(&mut buf[..len], n);
    len
}

/// Fills `buf` with the last `buf.len()` decimal digits of `n`, zero-padded.
fn put_digits(buf: &mut [u8], mut n: u64) {
    for digit in buf.iter_mut().rev() {
        *digit = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// RFC 3339 in UTC with microseconds, e.g. `2026-11-26T14:01:14.571341Z` (years 0–9999).
fn write_timestamp(out: &mut impl fmt::Write, now: SystemTime) -> fmt::Result {
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since_epoch.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut text = *b"0000-00-00T00:00:00.000000Z";
    for (range, value) in [
        (0..4, year.unsigned_abs()),
        (5..7, month.unsigned_abs()),
        (8..10, day.unsigned_abs()),
        (11..13, rem / 3_600),
        (14..16, rem % 3_600 / 60),
        (17..19, rem % 60),
        (20..26, u64::from(since_epoch.subsec_micros())),
    ] {
        put_digits(&mut text[range], value);
    }
    write_ascii(out, &text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    #[test]
    fn timestamps_are_rfc3339() {
        let mut s = String::new();
        write_timestamp(&mut s, UNIX_EPOCH).unwrap();
        assert_eq!(s, "1970-01-01T00:00:00.000000Z");
        for (secs, expected) in [
            (951_782_400, "2000-02-29T00:00:00.000000Z"),
            (1_795_701_674, "2026-11-26T14:01:14.000000Z"),
            (4_107_542_399, "2100-02-28T23:59:59.000000Z"),
        ] {
            s.clear();
            write_timestamp(&mut s, UNIX_EPOCH + Duration::from_secs(secs)).unwrap();
            assert_eq!(s, expected);
        }
        s.clear();
        write_timestamp(&mut s, UNIX_EPOCH + Duration::from_micros(1_500_001)).unwrap();
        assert_eq!(s, "1970-01-01T00:00:01.500001Z");
    }

    /// Captures the lines a subscriber with [`JsonLines`] writes.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_are_json_with_flattened_fields() {
        let capture = Capture::default();
        let writer = capture.clone();
        let subscriber = tracing_subscriber::fmt()
            .event_format(JsonLines)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let ip: std::net::IpAddr = "127.0.0.1".parse().unwrap();
            tracing::info!(peer = "a \"quoted\"\n id", ip = %ip, seconds = 3u64, tls = false, delta = -2i64, "peer open");
            tracing::warn!(error = ?"ctl\u{1}", "odd {}", 5);
            let v6: std::net::IpAddr = "2001:db8::1".parse().unwrap();
            tracing::info!(
                a = %LogIp([255, 0, 10, 9].into()),
                b = %LogIp(v6),
                min = i64::MIN,
                max = u64::MAX,
                zero = 0u64,
                text = "tab\t\u{1f}\\ é \u{7f}\r",
                "edge cases"
            );
        });
        let text = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3, "{text}");
        let open = &lines[0];
        assert_eq!(open["message"], "peer open");
        assert_eq!(open["level"], "INFO");
        assert_eq!(open["peer"], "a \"quoted\"\n id");
        assert_eq!(open["ip"], "127.0.0.1");
        assert_eq!(open["seconds"], 3);
        assert_eq!(open["tls"], false);
        assert_eq!(open["delta"], -2);
        assert!(open["target"].as_str().unwrap().starts_with("peerjsd"));
        assert!(open["timestamp"].as_str().unwrap().ends_with('Z'));
        assert_eq!(lines[1]["message"], "odd 5");
        assert_eq!(lines[1]["error"], "\"ctl\\u{1}\"");
        assert_eq!(lines[1]["level"], "WARN");
        let edge = &lines[2];
        assert_eq!(edge["a"], "255.0.10.9");
        assert_eq!(edge["b"], "2001:db8::1");
        assert_eq!(edge["min"], i64::MIN);
        assert_eq!(edge["max"], u64::MAX);
        assert_eq!(edge["zero"], 0);
        assert_eq!(edge["text"], "tab\t\u{1f}\\ é \u{7f}\r");
        // Control bytes as \u00XX, DEL and non-ASCII as they are.
        assert!(
            text.contains("\"text\":\"tab\\t\\u001f\\\\ é \u{7f}\\r\""),
            "{text}"
        );
    }
}

//! Where log lines go when built with `--features appender-log`: tracing-appender's
//! non-blocking writer, the other side of the A/B that keeps [`super`]'s own batching sink
//! (`bench/ab.sh appender-log`).
//!
//! Configured to keep the sink's promises as far as the crate allows: a bounded queue
//! ([`LINES`], in lines where the sink counts bytes) in lossy mode, so a stalled stdout drops
//! lines instead of blocking a runtime worker; the drops are counted
//! (`peerjs_log_lines_dropped_total`, from the writer's `ErrorCounter`); the worker writes
//! through a `BufWriter`, which it flushes each time the queue runs empty, so a burst goes out
//! in few `write`s. What differs: each line is copied into a `Vec` of its own and sent over a
//! channel, and the worker is woken for each line that finds it idle (no linger); no warning
//! line reports the drops; and at exit the guard waits 1 s for the queue to drain, but if the
//! queue is full it prints a message to stdout itself, which blocks on a stalled stdout.

use std::io::{BufWriter, Write};
use std::sync::OnceLock;

use tracing_appender::non_blocking::{ErrorCounter, NonBlocking, NonBlockingBuilder, WorkerGuard};

/// Lines the queue holds while stdout is stalled: about the sink's 1 MiB of ~150-byte lines.
pub const LINES: usize = 7_000;

/// Bytes the worker gathers before a `write` while it drains the queue.
const BUFFER: usize = 64 * 1024;

/// The drop counter of the process's stdout writer, set by [`stdout`].
static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Held by `main`: dropping it writes out what is queued (waiting at most about a second).
pub type Flush = WorkerGuard;

/// Log lines dropped so far because stdout could not keep up.
pub fn dropped_total() -> u64 {
    DROPPED
        .get()
        .map_or(0, |counter| counter.dropped_lines() as u64)
}

/// The process's log writer to stdout, whose drops [`dropped_total`] counts.
pub fn stdout() -> (NonBlocking, Flush) {
    let (writer, flush) = spawn(std::io::stdout(), LINES);
    let _ = DROPPED.set(writer.error_counter());
    (writer, flush)
}

/// Starts a writer thread for `out` holding up to `lines` lines. Panics (at start-up) if the
/// thread cannot be spawned.
fn spawn(out: impl Write + Send + 'static, lines: usize) -> (NonBlocking, Flush) {
    NonBlockingBuilder::default()
        .buffered_lines_limit(lines)
        .lossy(true)
        .thread_name("peerjsd-log")
        .finish(BufWriter::with_capacity(BUFFER, out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::sync::{Arc, Mutex};
    use std::thread;
    use std::time::{Duration, Instant};
    use tracing_subscriber::fmt::MakeWriter;

    /// An output that records what reaches it, and can be stalled.
    #[derive(Clone, Default)]
    struct Output {
        written: Arc<Mutex<Vec<u8>>>,
        gate: Arc<Mutex<()>>,
    }

    impl Write for Output {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let _open = self.gate.lock().unwrap();
            self.written.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn line(writer: &NonBlocking, text: &str) {
        writer.make_writer().write_all(text.as_bytes()).unwrap();
    }

    #[test]
    fn lines_arrive_in_order_and_all_are_flushed_at_exit() {
        let output = Output::default();
        let (writer, flush) = spawn(output.clone(), LINES);
        for i in 0..1000 {
            line(&writer, &format!("line {i}\n"));
        }
        drop(flush);
        let expected: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        let written = output.written.lock().unwrap().clone();
        assert_eq!(String::from_utf8(written).unwrap(), expected);
    }

    /// Waits until the writer has dropped a line: its worker is blocked on the stalled output
    /// and the queue is full of `probe` lines.
    fn fill_while_stalled(writer: &NonBlocking) {
        let counter = writer.error_counter();
        let deadline = Instant::now() + Duration::from_secs(10);
        while counter.dropped_lines() == 0 {
            assert!(Instant::now() < deadline, "nothing was ever dropped");
            line(writer, "probe\n");
            thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_stalled_output_drops_lines_and_counts_them() {
        let output = Output::default();
        let stall = output.gate.lock().unwrap();
        let (writer, flush) = spawn(output.clone(), 5);
        // The worker takes this line and blocks writing it (its `BufWriter` writes through
        // when flushed, which it does whenever the queue runs empty).
        line(&writer, "first line\n");
        fill_while_stalled(&writer);
        let before = writer.error_counter().dropped_lines();
        for _ in 0..10 {
            line(&writer, "dropped\n");
        }
        assert_eq!(writer.error_counter().dropped_lines(), before + 10);
        // Output moves again: what was queued is written, what was dropped is not.
        drop(stall);
        drop(flush);
        let written = String::from_utf8(output.written.lock().unwrap().clone()).unwrap();
        let mut lines = written.lines();
        assert_eq!(lines.next(), Some("first line"), "{written}");
        assert!(lines.all(|l| l == "probe"), "{written}");
    }

    #[test]
    fn the_exit_gives_up_on_a_stalled_output() {
        let output = Output::default();
        let _stall = output.gate.lock().unwrap();
        let (writer, flush) = spawn(output.clone(), LINES);
        line(&writer, "never written\n");
        let started = Instant::now();
        drop(flush);
        let waited = started.elapsed();
        // tracing-appender waits 1 s for the worker to finish (100 ms more to queue its
        // shutdown when the queue is full).
        assert!(waited >= Duration::from_millis(900), "{waited:?}");
        assert!(waited < Duration::from_secs(6), "{waited:?}");
        assert!(output.written.lock().unwrap().is_empty());
    }
}

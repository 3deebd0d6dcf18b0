//! Where log lines go: a bounded buffer that a thread of its own writes out in batches.
//!
//! Writing each line straight to stdout from the runtime costs a `write` syscall per line (two
//! per connection) and, worse, stalls the runtime whenever whoever reads stdout (journald, a
//! container log driver, a terminal) stops reading. So the runtime only appends each line to a buffer, under a lock held for one
//! `memcpy`. A writer thread wakes on the first line, waits [`LINGER`] for more to gather, then
//! writes them all with one call. If stdout stalls and the buffer reaches its capacity, new
//! lines are dropped and counted ([`dropped_total`], `peerjs_log_lines_dropped_total`), and a
//! warning with the count is logged once output moves again.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use tracing_subscriber::fmt::MakeWriter;

/// How long the writer lets lines gather after the first one, i.e. how late a line may appear.
pub const LINGER: Duration = Duration::from_millis(10);

/// Bytes of lines the buffer holds while the writer is busy or stdout is stalled (~7,000 lines).
pub const CAPACITY: usize = 1 << 20;

/// How long [`Flush`] waits at exit for the last lines to be written before giving up on a
/// stalled stdout.
const EXIT_WAIT: Duration = Duration::from_secs(2);

/// Lines dropped because the buffer was full, by every sink of the process.
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Log lines dropped so far because stdout could not keep up.
pub fn dropped_total() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// The [`MakeWriter`] handed to tracing-subscriber: each line it formats is one `write` here.
pub struct Sink {
    queue: Arc<LineQueue>,
}

/// Held by `main`: dropping it writes out what is buffered and stops the writer thread.
#[must_use = "dropping the guard stops log output"]
pub struct Flush {
    queue: Arc<LineQueue>,
    done: mpsc::Receiver<()>,
}

/// The lines waiting for the writer thread, shared by every producer and the writer.
struct LineQueue {
    state: Mutex<State>,
    wake: Condvar,
    capacity: usize,
}

#[derive(Default)]
struct State {
    lines: Vec<u8>,
    /// Dropped since the writer last reported it.
    dropped: u64,
    /// The writer waits on `wake` for the first line (producers notify only then).
    writer_parked: bool,
    closing: bool,
}

impl LineQueue {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A producer that panicked mid-append leaves at worst a torn line; keep logging.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Sink {
    /// Starts the writer thread, writing to `out` in batches every `linger` at most.
    pub fn spawn(
        out: impl Write + Send + 'static,
        capacity: usize,
        linger: Duration,
    ) -> io::Result<(Sink, Flush)> {
        let queue = Arc::new(LineQueue {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            capacity,
        });
        let (done_tx, done) = mpsc::channel();
        let writer = Arc::clone(&queue);
        thread::Builder::new()
            .name("peerjsd-log".into())
            .spawn(move || {
                write_out(&writer, out, linger);
                let _ = done_tx.send(());
            })?;
        let flush = Flush {
            queue: Arc::clone(&queue),
            done,
        };
        Ok((Sink { queue }, flush))
    }

    fn append(&self, line: &[u8]) {
        let mut state = self.queue.lock();
        if state.lines.len() + line.len() > self.queue.capacity {
            state.dropped += 1;
            DROPPED.fetch_add(1, Ordering::Relaxed);
            return;
        }
        state.lines.extend_from_slice(line);
        if state.writer_parked {
            state.writer_parked = false;
            drop(state);
            self.queue.wake.notify_one();
        }
    }
}

impl<'a> MakeWriter<'a> for Sink {
    type Writer = &'a Sink;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

impl Write for &Sink {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        self.append(line);
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The writer thread: wait for lines, let more gather, write them all, until closed and empty.
fn write_out(queue: &LineQueue, mut out: impl Write, linger: Duration) {
    let mut batch = Vec::new();
    loop {
        let mut state = queue.lock();
        while state.lines.is_empty() && state.dropped == 0 && !state.closing {
            state.writer_parked = true;
            state = queue
                .wake
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        state.writer_parked = false;
        // Let more lines gather; the exit cuts this short. Producers do not notify meanwhile.
        let deadline = Instant::now() + linger;
        while !state.closing {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            state = match queue.wake.wait_timeout(state, left) {
                Ok((state, _)) => state,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        std::mem::swap(&mut state.lines, &mut batch);
        let dropped = std::mem::take(&mut state.dropped);
        let closing = state.closing;
        drop(state);
        // A failed write (stdout closed) has nowhere to be reported; the lines are lost.
        let _ = out.write_all(&batch).and_then(|()| out.flush());
        if batch.capacity() > 64 * 1024 {
            batch = Vec::new(); // give a burst's memory back
        } else {
            batch.clear();
        }
        if dropped > 0 {
            // Goes through the subscriber into the buffer like any other line.
            tracing::warn!(lines = dropped, "log output stalled; lines were dropped");
        }
        if closing && queue.lock().lines.is_empty() {
            return;
        }
    }
}

impl Drop for Flush {
    fn drop(&mut self) {
        self.queue.lock().closing = true;
        self.queue.wake.notify_one();
        // Never hang the exit on a stalled stdout.
        let _ = self.done.recv_timeout(EXIT_WAIT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An output that records what reaches it, and can be slow or stalled.
    #[derive(Clone, Default)]
    struct Output {
        written: Arc<Mutex<Vec<Vec<u8>>>>,
        gate: Arc<Mutex<()>>,
        delay: Duration,
    }

    impl Write for Output {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let _open = self.gate.lock().unwrap();
            thread::sleep(self.delay);
            self.written.lock().unwrap().push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn line(sink: &Sink, text: &str) {
        let mut writer = sink.make_writer();
        writer.write_all(text.as_bytes()).unwrap();
    }

    #[test]
    fn lines_arrive_in_order_batched_and_all_are_flushed_at_exit() {
        // A slow output: the exit must wait for the write, not just start it.
        let output = Output {
            delay: Duration::from_millis(100),
            ..Output::default()
        };
        let (sink, flush) = Sink::spawn(output.clone(), CAPACITY, Duration::from_secs(60)).unwrap();
        for i in 0..1000 {
            line(&sink, &format!("line {i}\n"));
        }
        // The writer is lingering for a minute: nothing written yet; the exit flushes at once.
        assert!(output.written.lock().unwrap().is_empty());
        let started = Instant::now();
        drop(flush);
        assert!(started.elapsed() < EXIT_WAIT, "exit waited out the linger");
        let written = output.written.lock().unwrap();
        assert_eq!(written.len(), 1, "one write for the whole batch");
        let expected: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        assert_eq!(String::from_utf8(written.concat()).unwrap(), expected);
    }

    #[test]
    fn a_line_appears_within_the_linger() {
        let output = Output::default();
        let (sink, _flush) = Sink::spawn(output.clone(), CAPACITY, LINGER).unwrap();
        for round in 0..3 {
            let text = format!("round {round}\n");
            line(&sink, &text);
            let deadline = Instant::now() + Duration::from_secs(10);
            while !output
                .written
                .lock()
                .unwrap()
                .concat()
                .ends_with(text.as_bytes())
            {
                assert!(Instant::now() < deadline, "{text:?} never written");
                thread::sleep(Duration::from_millis(1));
            }
        }
    }

    #[test]
    fn a_stalled_output_drops_lines_instead_of_blocking_the_logger() {
        let output = Output::default();
        let stall = output.gate.lock().unwrap();
        let (sink, flush) = Sink::spawn(output.clone(), 100, Duration::from_millis(1)).unwrap();
        let before = dropped_total();
        // The first line is taken by the writer, which then blocks on the stalled output.
        line(&sink, "first line\n");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sink.queue.lock().lines.is_empty() {
            assert!(
                Instant::now() < deadline,
                "the writer never took the first line"
            );
            thread::sleep(Duration::from_millis(1));
        }
        // Lines of 20 bytes fill the 100-byte buffer at 5; the rest are dropped, at once.
        for i in 0..10 {
            line(&sink, &format!("line {i:<14}\n"));
        }
        assert_eq!(sink.queue.lock().dropped, 5);
        assert!(dropped_total() >= before + 5);
        drop(stall);
        drop(flush);
        let written = String::from_utf8(output.written.lock().unwrap().concat()).unwrap();
        let kept: Vec<&str> = written.lines().map(str::trim_end).collect();
        assert_eq!(
            kept,
            [
                "first line",
                "line 0",
                "line 1",
                "line 2",
                "line 3",
                "line 4"
            ]
        );
    }

    #[test]
    fn the_exit_gives_up_on_a_stalled_output() {
        let output = Output::default();
        let _stall = output.gate.lock().unwrap();
        let (sink, flush) =
            Sink::spawn(output.clone(), CAPACITY, Duration::from_millis(1)).unwrap();
        line(&sink, "never written\n");
        let started = Instant::now();
        drop(flush);
        let waited = started.elapsed();
        assert!(waited >= EXIT_WAIT, "{waited:?}");
        assert!(waited < EXIT_WAIT + Duration::from_secs(5), "{waited:?}");
        assert!(output.written.lock().unwrap().is_empty());
    }
}

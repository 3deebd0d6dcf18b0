//! The write deadline of the connections hyper serves (REST, the ops listener, a refused
//! upgrade, later requests on a kept-alive connection).
//!
//! hyper bounds reading: `header_read_timeout` (`--handshake-timeout`) ends a request head
//! that dribbles and a kept-alive connection that stays idle between requests, and a request
//! body no route reads makes hyper close the connection right after the answer (pinned by
//! `tests/connections.rs`). Nothing bounds writing: a client that pipelines requests and
//! never reads the answers leaves hyper waiting on a full socket forever, one descriptor
//! each. [`WriteDeadline`] wraps the socket hyper is given and turns a write that stays
//! pending for `--write-timeout`, with no byte taken, into an I/O error, which ends the
//! connection. A client that keeps taking bytes, however slowly, is never cut, and sending
//! cannot excuse not reading. A WebSocket upgraded through hyper leaves the wrapper behind:
//! sessions keep their own deadlines.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::metrics::Metrics;

/// A socket whose writes fail once one stalls for longer than the write timeout.
#[derive(Debug)]
pub struct WriteDeadline<S> {
    inner: S,
    timeout: Duration,
    /// When the current wait for the client to take bytes began, if a write is pending.
    waiting_since: Option<Instant>,
    /// Armed at `waiting_since + timeout`; allocated on the first stall only.
    timer: Option<Pin<Box<Sleep>>>,
    /// Set once the deadline passed: the connection is over.
    expired: bool,
    metrics: Arc<Metrics>,
}

impl<S> WriteDeadline<S> {
    /// Wraps `inner`: a write may wait `timeout` for the client to take a byte.
    pub fn new(inner: S, timeout: Duration, metrics: Arc<Metrics>) -> Self {
        WriteDeadline {
            inner,
            timeout,
            waiting_since: None,
            timer: None,
            expired: false,
            metrics,
        }
    }

    /// The socket, without the deadline (for a session after an upgrade).
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// What a write, flush or shutdown of the inner socket returned, with the deadline
    /// applied: progress restarts the clock, `Pending` fails once it has run out.
    fn apply<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.waiting_since = None;
            return polled;
        }
        let deadline = *self.waiting_since.get_or_insert_with(Instant::now) + self.timeout;
        let timer = match &mut self.timer {
            Some(timer) => {
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
                timer
            }
            None => self
                .timer
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.expired = true;
        self.metrics.http_write_timeouts.inc();
        Poll::Ready(Err(expired()))
    }

    fn check(&self) -> io::Result<()> {
        if self.expired { Err(expired()) } else { Ok(()) }
    }
}

fn expired() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "the client took no bytes for --write-timeout",
    )
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check()?;
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.check()?;
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.apply(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.check()?;
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.apply(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.check()?;
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.apply(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Even after the deadline: closing is what is wanted, and it is bounded the same way.
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.apply(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const TIMEOUT: Duration = Duration::from_secs(10);

    fn wrapped(
        capacity: usize,
    ) -> (
        tokio::io::DuplexStream,
        WriteDeadline<tokio::io::DuplexStream>,
        Arc<Metrics>,
    ) {
        let (client, server) = tokio::io::duplex(capacity);
        let metrics = Arc::new(Metrics::new());
        let io = WriteDeadline::new(server, TIMEOUT, Arc::clone(&metrics));
        (client, io, metrics)
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_nobody_takes_fails_after_the_timeout() {
        let (_client, mut io, metrics) = wrapped(64);
        let started = Instant::now();
        let error = io.write_all(&[7u8; 1024]).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), TIMEOUT);
        assert_eq!(metrics.http_write_timeouts.get(), 1);
        // It stays failed, and is counted once.
        assert!(io.write(b"x").await.is_err());
        assert!(io.read(&mut [0u8; 8]).await.is_err());
        assert_eq!(metrics.http_write_timeouts.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_that_keeps_taking_bytes_is_not_cut() {
        let (mut client, mut io, metrics) = wrapped(64);
        let reader = tokio::spawn(async move {
            let mut got = 0;
            let mut buf = [0u8; 64];
            while got < 4096 {
                // Well inside the timeout between reads, far past it in total.
                tokio::time::sleep(TIMEOUT - Duration::from_secs(1)).await;
                got += client.read(&mut buf).await.unwrap();
            }
            client
        });
        let started = Instant::now();
        io.write_all(&[1u8; 4096]).await.unwrap();
        assert!(started.elapsed() > TIMEOUT * 10);
        let _client = reader.await.unwrap();
        assert_eq!(metrics.http_write_timeouts.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn sending_does_not_excuse_not_reading() {
        let (mut client, io, metrics) = wrapped(64);
        // The client keeps sending a byte every second and never reads.
        let sender = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if client.write_all(b"x").await.is_err() {
                    return;
                }
            }
        });
        let (mut reader, mut writer) = tokio::io::split(io);
        let started = Instant::now();
        let mut read_buf = [0u8; 1];
        let out = [9u8; 1024];
        let error = loop {
            tokio::select! {
                read = reader.read(&mut read_buf) => if let Err(error) = read { break error },
                write = writer.write(&out) => if let Err(error) = write { break error },
            }
        };
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= TIMEOUT, "{:?}", started.elapsed());
        assert!(started.elapsed() < TIMEOUT * 2, "{:?}", started.elapsed());
        assert_eq!(metrics.http_write_timeouts.get(), 1);
        sender.abort();
    }
}

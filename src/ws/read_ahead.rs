//! Large socket reads without a large buffer per socket.
//!
//! tungstenite reads at most its read-buffer size per `read` call, and that buffer is
//! allocated for the socket's whole life. A small buffer (what an idle peer can afford)
//! means several `recv` calls per frame under load; a large one costs every idle peer its
//! size. [`ReadAhead`] gives both: it reads up to [`SCRATCH`] bytes into a per-thread
//! scratch buffer, hands the caller what fits, and keeps the rest in a spill buffer that
//! exists only until the caller has taken it. An idle socket holds no read-ahead memory.
//!
//! It also serves the WebSocket handshake ([`crate::ws::upgrade::read_head`]): the request
//! head is read into the spill and looked at in place, and the 101 answer waits in
//! [`ReadAhead::write_first`] to go out with the session's first frame, one segment for both.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read per `recv` at most: several signaling frames under load.
pub const SCRATCH: usize = 8 * 1024;

thread_local! {
    static SCRATCH_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH].into_boxed_slice());
}

/// A reader that reads ahead in [`SCRATCH`]-sized chunks; writes pass straight through.
#[derive(Debug)]
pub struct ReadAhead<S> {
    inner: S,
    /// Bytes read but not yet handed out; empty (and unallocated) between bursts.
    spill: Vec<u8>,
    /// How much of `spill` has been handed out.
    taken: usize,
    /// Bytes to write before anything else; empty (and unallocated) once written.
    unsent: Box<[u8]>,
    /// Bytes written so far (wrapping): a writer that saw the socket refuse bytes learns from
    /// it whether the socket has taken any since.
    written: u64,
}

impl<S> ReadAhead<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        ReadAhead {
            inner,
            spill: Vec::new(),
            taken: 0,
            unsent: Box::default(),
            written: 0,
        }
    }

    /// Bytes written to the socket so far (wrapping).
    pub fn written(&self) -> u64 {
        self.written
    }

    fn count_written(&mut self, polled: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        if let Poll::Ready(Ok(n)) = polled {
            self.written = self.written.wrapping_add(n as u64);
        }
        polled
    }

    /// Whether bytes already read from the socket are waiting here to be handed out: the
    /// session keeps decoding frames while there are, and otherwise goes back to waiting.
    pub fn has_buffered(&self) -> bool {
        !self.buffered().is_empty()
    }

    /// The bytes read from the socket and not yet handed out.
    pub fn buffered(&self) -> &[u8] {
        &self.spill[self.taken..]
    }

    /// Drops the first `n` of the [`buffered`](Self::buffered) bytes (all of them if fewer).
    pub fn consume(&mut self, n: usize) {
        self.taken = self.spill.len().min(self.taken + n);
        self.free_drained_spill();
    }

    /// Puts `bytes` (read from the socket by someone else) in front of the buffered bytes, to
    /// be handed out first.
    pub fn unread(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let mut spill = Vec::with_capacity(bytes.len() + self.buffered().len());
        spill.extend_from_slice(bytes);
        spill.extend_from_slice(self.buffered());
        self.spill = spill;
        self.taken = 0;
    }

    /// Queues `bytes` to be written before anything else: with the next write, in the same
    /// system call, or by the next flush.
    pub fn write_first(&mut self, bytes: Box<[u8]>) {
        debug_assert!(self.unsent.is_empty(), "one queued write at a time");
        self.unsent = bytes;
    }

    /// Reads once more from the socket into the buffered bytes, without handing anything out:
    /// for looking at a request head before deciding who reads it. `Ok(0)` is the end of the
    /// stream.
    pub async fn fill(&mut self) -> io::Result<usize>
    where
        S: AsyncRead + Unpin,
    {
        poll_fn(|cx| self.poll_fill(cx)).await
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>>
    where
        S: AsyncRead + Unpin,
    {
        SCRATCH_BUF.with_borrow_mut(|scratch| {
            let mut chunk = ReadBuf::new(&mut scratch[..]);
            ready!(Pin::new(&mut self.inner).poll_read(cx, &mut chunk))?;
            self.spill.extend_from_slice(chunk.filled());
            Poll::Ready(Ok(chunk.filled().len()))
        })
    }

    fn free_drained_spill(&mut self) {
        if self.taken == self.spill.len() {
            // Give the memory back: an idle socket holds none.
            self.spill = Vec::new();
            self.taken = 0;
        }
    }

    /// Hands out spilled bytes; true if there were any.
    fn take_spill(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        let rest = self.buffered();
        if rest.is_empty() {
            return false;
        }
        let n = rest.len().min(buf.remaining());
        buf.put_slice(&rest[..n]);
        self.taken += n;
        self.free_drained_spill();
        true
    }
}

impl<S: AsyncWrite + Unpin> ReadAhead<S> {
    /// Writes the [`write_first`](Self::write_first) bytes with `buf` behind them in one
    /// vectored write; returns how much of `buf` went too.
    fn poll_write_unsent(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        while !self.unsent.is_empty() {
            let parts = [IoSlice::new(&self.unsent), IoSlice::new(buf)];
            let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, &parts);
            let n = ready!(self.count_written(polled))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            if n >= self.unsent.len() {
                let of_buf = n - self.unsent.len();
                self.unsent = Box::default();
                return Poll::Ready(Ok(of_buf));
            }
            self.unsent = self.unsent[n..].into();
        }
        Poll::Ready(Ok(0))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if buf.remaining() == 0 || this.take_spill(buf) {
            return Poll::Ready(Ok(()));
        }
        if buf.remaining() >= SCRATCH {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        SCRATCH_BUF.with_borrow_mut(|scratch| {
            let mut chunk = ReadBuf::new(&mut scratch[..]);
            let polled = Pin::new(&mut this.inner).poll_read(cx, &mut chunk);
            if let Poll::Ready(Ok(())) = polled {
                let got = chunk.filled();
                let n = got.len().min(buf.remaining());
                buf.put_slice(&got[..n]);
                this.spill.extend_from_slice(&got[n..]);
            }
            polled
        })
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if !this.unsent.is_empty() {
            let n = ready!(this.poll_write_unsent(cx, buf))?;
            // A write of nothing would read as a closed socket: go on with `buf` alone.
            if n > 0 || buf.is_empty() {
                return Poll::Ready(Ok(n));
            }
        }
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.count_written(polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if !self.unsent.is_empty() {
            // Rare (only a socket's first write): the first buffer is a valid partial write.
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &**b);
            return self.poll_write(cx, first);
        }
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.count_written(polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_write_unsent(cx, &[]))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_write_unsent(cx, &[]))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn hands_out_a_large_read_in_small_pieces_and_frees_the_spill() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let sent: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        client.write_all(&sent).await.unwrap();
        let mut reader = ReadAhead::new(server);
        let mut got = Vec::new();
        let mut piece = [0u8; 512];
        let n = reader.read(&mut piece).await.unwrap();
        assert_eq!(n, 512);
        got.extend_from_slice(&piece[..n]);
        // The rest of the first read waits in the spill, not in the socket.
        assert_eq!(reader.spill.len() - reader.taken, sent.len() - 512);
        while got.len() < sent.len() {
            let n = reader.read(&mut piece).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&piece[..n]);
        }
        assert_eq!(got, sent);
        assert_eq!(reader.spill.capacity(), 0, "drained spill is freed");
    }

    #[tokio::test]
    async fn a_head_is_looked_at_in_place_then_consumed_or_left_to_read() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut reader = ReadAhead::new(server);
        client.write_all(b"GET / HT").await.unwrap();
        assert_eq!(reader.fill().await.unwrap(), 8);
        client.write_all(b"TP/1.1\r\n\r\nrest").await.unwrap();
        assert_eq!(reader.fill().await.unwrap(), 14);
        assert_eq!(reader.buffered(), b"GET / HTTP/1.1\r\n\r\nrest");
        reader.consume(18);
        assert_eq!(reader.buffered(), b"rest");
        // Bytes someone else read go back in front.
        reader.unread(b"more ");
        let mut got = [0u8; 9];
        reader.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"more rest");
        assert_eq!(reader.spill.capacity(), 0, "drained spill is freed");
        drop(client);
        assert_eq!(reader.fill().await.unwrap(), 0, "end of stream");
    }

    #[tokio::test]
    async fn the_first_write_carries_the_queued_bytes_in_front() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut wrapped = ReadAhead::new(server);
        wrapped.write_first(Box::from(&b"HTTP/1.1 101\r\n\r\n"[..]));
        wrapped.write_all(b"frame").await.unwrap();
        wrapped.write_all(b"+next").await.unwrap();
        let mut got = [0u8; 26];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"HTTP/1.1 101\r\n\r\nframe+next");
        // A flush alone sends them too.
        wrapped.write_first(Box::from(&b"alone"[..]));
        wrapped.flush().await.unwrap();
        let mut got = [0u8; 5];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"alone");
        assert!(wrapped.unsent.is_empty());
    }

    #[tokio::test]
    async fn queued_bytes_survive_a_write_that_takes_only_part_of_them() {
        // A pipe with room for 4 bytes: every write is partial.
        let (mut client, server) = tokio::io::duplex(4);
        let mut wrapped = ReadAhead::new(server);
        wrapped.write_first(Box::from(&b"0123456789"[..]));
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; 14];
            client.read_exact(&mut got).await.unwrap();
            got
        });
        wrapped.write_all(b"abcd").await.unwrap();
        assert_eq!(reader.await.unwrap(), b"0123456789abcd");
    }

    #[tokio::test]
    async fn reports_the_end_of_the_stream_and_passes_writes_through() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut wrapped = ReadAhead::new(server);
        wrapped.write_all(b"pong").await.unwrap();
        let mut echo = [0u8; 4];
        client.read_exact(&mut echo).await.unwrap();
        assert_eq!(&echo, b"pong");
        client.write_all(b"last").await.unwrap();
        drop(client);
        let mut rest = Vec::new();
        wrapped.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"last");
    }
}

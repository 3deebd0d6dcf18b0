//! Large socket reads without a large buffer per socket.
//!
//! tungstenite reads at most its read-buffer size per `read` call, and that buffer is
//! allocated for the socket's whole life. A small buffer (what an idle peer can afford)
//! means several `recv` calls per frame under load; a large one costs every idle peer its
//! size. [`ReadAhead`] gives both: it reads up to [`SCRATCH`] bytes into a per-thread
//! scratch buffer, hands the caller what fits, and keeps the rest in a spill buffer that
//! exists only until the caller has taken it. An idle socket holds no read-ahead memory.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

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
}

impl<S> ReadAhead<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self::with_buffered(inner, &[])
    }

    /// Wraps `inner`, handing out `buffered` (bytes already read from it) first.
    pub fn with_buffered(inner: S, buffered: &[u8]) -> Self {
        ReadAhead {
            inner,
            spill: buffered.to_vec(),
            taken: 0,
        }
    }

    /// Whether bytes already read from the socket are waiting here to be handed out: the
    /// session keeps decoding frames while there are, and otherwise goes back to waiting.
    pub fn has_buffered(&self) -> bool {
        self.taken < self.spill.len()
    }

    /// Hands out spilled bytes; true if there were any.
    fn take_spill(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        let rest = &self.spill[self.taken..];
        if rest.is_empty() {
            return false;
        }
        let n = rest.len().min(buf.remaining());
        buf.put_slice(&rest[..n]);
        self.taken += n;
        if self.taken == self.spill.len() {
            // Give the memory back: an idle socket holds none.
            self.spill = Vec::new();
            self.taken = 0;
        }
        true
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
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
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

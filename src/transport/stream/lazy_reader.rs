//! A buffered reader that holds no buffer while it waits. An idle XMPP
//! connection spends nearly all its life waiting for the next stanza; a
//! `tokio::io::BufReader` keeps its whole buffer through that wait, this one
//! gives it back and takes a new one when bytes arrive.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncBufRead, AsyncRead, ReadBuf};

pub struct LazyBufReader<R> {
    inner: R,
    /// Empty (no allocation) while waiting; `capacity` bytes long while
    /// data is being read out of it.
    buf: Vec<u8>,
    pos: usize,
    end: usize,
    capacity: usize,
}

impl<R> LazyBufReader<R> {
    pub fn with_capacity(capacity: usize, inner: R) -> Self {
        LazyBufReader {
            inner,
            buf: Vec::new(),
            pos: 0,
            end: 0,
            capacity: capacity.max(1),
        }
    }

    /// The transport; buffered, unread bytes are dropped.
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// Whether a buffer is held now (for tests).
    pub fn holds_buffer(&self) -> bool {
        self.buf.capacity() > 0
    }
}

impl<R: AsyncRead + Unpin> AsyncBufRead for LazyBufReader<R> {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        if this.pos >= this.end {
            if this.buf.is_empty() {
                this.buf = vec![0; this.capacity];
            }
            let mut rb = ReadBuf::new(&mut this.buf);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Pending => {
                    // Nothing to read: wait without a buffer.
                    this.buf = Vec::new();
                    this.pos = 0;
                    this.end = 0;
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    this.end = rb.filled().len();
                    this.pos = 0;
                }
            }
        }
        Poll::Ready(Ok(&this.buf[this.pos..this.end]))
    }

    fn consume(self: Pin<&mut Self>, amt: usize) {
        let this = self.get_mut();
        this.pos = (this.pos + amt).min(this.end);
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for LazyBufReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos >= this.end {
            // Nothing buffered: read straight into the caller's buffer.
            return Pin::new(&mut this.inner).poll_read(cx, out);
        }
        let n = (this.end - this.pos).min(out.remaining());
        out.put_slice(&this.buf[this.pos..this.pos + n]);
        this.pos += n;
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn gives_the_buffer_back_while_waiting() {
        let (mut a, b) = tokio::io::duplex(64);
        let mut r = LazyBufReader::with_capacity(16, b);
        a.write_all(b"hello world, more than sixteen\n")
            .await
            .expect("write");
        let mut line = String::new();
        r.read_line(&mut line).await.expect("read");
        assert_eq!(line, "hello world, more than sixteen\n");
        // Now nothing is pending: a poll leaves no buffer behind.
        let waker = futures_task_noop();
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut r).poll_fill_buf(&mut cx).is_pending());
        assert!(!r.holds_buffer());
        a.write_all(b"again\n").await.expect("write");
        line.clear();
        r.read_line(&mut line).await.expect("read");
        assert_eq!(line, "again\n");
        drop(a);
        line.clear();
        assert_eq!(r.read_line(&mut line).await.expect("eof"), 0);
    }

    fn futures_task_noop() -> std::task::Waker {
        std::task::Waker::noop().clone()
    }
}

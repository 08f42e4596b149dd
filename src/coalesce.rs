//! A connection wrapper that turns each HTTP/2 flush into one write.
//!
//! h2 copies a DATA frame into its write buffer only when the payload is
//! small: under 256 bytes on a socket that supports vectored writes, under
//! 1024 on one that does not. A larger payload is written straight from its
//! own buffer, and h2 flushes before it buffers anything else. On a plain
//! `TcpStream` that made a heartbeat reply (two tokens, ~290 bytes) cost two
//! `writev` calls (the reply, then its trailers) where a health check's
//! whole response shares one with its neighbours, and it made every
//! snapshot over 256 bytes one `writev` per watcher (strace: 101 100 writes
//! for 100 000 deliveries). Each write to loopback also pays for the
//! receiver's TCP processing, a few microseconds.
//!
//! [`Coalesced`] declares no vectored writes, so h2 copies payloads up to
//! 1 KiB into its buffer, and collects what h2 writes until h2 flushes: one
//! flush, one system call. Larger payloads still cost one write per flush.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, BufWriter, ReadBuf};
use tonic::transport::server::Connected;

/// Enough for h2's own buffer (16 KiB) plus one chained payload of that size;
/// a larger write goes straight through. Reserved per connection; its pages
/// become resident only as far as the largest flush reaches.
const CAPACITY: usize = 32 * 1024;

/// A connection whose writes are held until flushed (see the module doc).
pub struct Coalesced<T> {
    io: BufWriter<T>,
}

impl<T: AsyncWrite> Coalesced<T> {
    /// Wraps `io`.
    pub fn new(io: T) -> Self {
        Self {
            io: BufWriter::with_capacity(CAPACITY, io),
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for Coalesced<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesced<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    /// False on purpose: it raises h2's copy threshold to 1 KiB.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

impl<T: Connected + AsyncWrite> Connected for Coalesced<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.get_ref().connect_info()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    /// A sink that records each write it receives, as a socket would see
    /// its system calls.
    #[derive(Default)]
    struct Writes(Vec<Vec<u8>>);

    impl AsyncWrite for Writes {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.0.push(buf.to_vec());
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn one_flush_is_one_write_and_large_writes_go_straight_through() {
        let mut conn = Coalesced::new(Writes::default());
        assert!(!conn.is_write_vectored(), "h2 must see a non-vectored io");
        conn.write_all(b"frame head").await.unwrap();
        conn.write_all(&[7; 2000]).await.unwrap();
        conn.write_all(b"trailers").await.unwrap();
        assert!(
            conn.io.get_ref().0.is_empty(),
            "nothing written before the flush"
        );
        conn.flush().await.unwrap();
        assert_eq!(conn.io.get_ref().0.len(), 1);
        assert_eq!(conn.io.get_ref().0[0].len(), 10 + 2000 + 8);

        conn.write_all(&[1; CAPACITY]).await.unwrap();
        assert_eq!(
            conn.io.get_ref().0.len(),
            2,
            "a write of the capacity is not copied"
        );
        conn.shutdown().await.unwrap();
    }
}

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
//! flush, one system call.
//!
//! On an HTTP/2 connection it also holds a flush over to the connection
//! task's next poll ("corking"): when a change reaches many watch streams of
//! one connection, each stream's task queues its frame and wakes the
//! connection task, which would otherwise flush once per larger frame. The
//! first flush with data answers Ready without writing and wakes the task
//! (it goes to the back of the run queue, behind the streams still to run);
//! the writes happen at the first flush after h2 has read from the socket
//! again, which h2 does at the start of every poll of the connection
//! (`h2::proto::Connection::poll`: read until Pending, then
//! `poll_complete`, which always ends in a flush). Shutdown writes what is
//! held. HTTP/1.1 connections are never corked.

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
    /// Known from the first bytes read: the HTTP/2 client preface.
    http2: Option<bool>,
    /// A flush was answered without writing; the task has been woken.
    corked: bool,
    /// `poll_read` was called since the cork: a new poll of the task.
    read_since_cork: bool,
    /// Flushes answered without writing since the cork.
    held_flushes: u32,
}

/// Flushes held in a row at most, whatever h2 does: a held write is never
/// more than this many flushes, or wake-ups of the task, away.
const MAX_HELD_FLUSHES: u32 = 256;

/// How every HTTP/2 connection starts (RFC 9113 §3.4).
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

impl<T: AsyncWrite> Coalesced<T> {
    /// Wraps `io`.
    pub fn new(io: T) -> Self {
        Self {
            io: BufWriter::with_capacity(CAPACITY, io),
            http2: None,
            corked: false,
            read_since_cork: false,
            held_flushes: 0,
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for Coalesced<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.read_since_cork = true;
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if self.http2.is_none() && buf.filled().len() > before {
            let first = &buf.filled()[before..];
            let n = first.len().min(HTTP2_PREFACE.len());
            self.http2 = Some(first[..n] == HTTP2_PREFACE[..n]);
        }
        polled
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
        if self.http2 == Some(true) && !self.io.buffer().is_empty() {
            if !self.corked {
                self.corked = true;
                self.read_since_cork = false;
                self.held_flushes = 0;
                cx.waker().wake_by_ref();
                return Poll::Ready(Ok(()));
            }
            if !self.read_since_cork && self.held_flushes < MAX_HELD_FLUSHES {
                // Most likely the same poll of the task: keep holding. The
                // wake is a no-op then; it guarantees another poll if h2
                // ever flushes without reading, and the bound caps that.
                self.held_flushes += 1;
                cx.waker().wake_by_ref();
                return Poll::Ready(Ok(()));
            }
        }
        self.corked = false;
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
    /// its system calls, and reads back `input` once.
    #[derive(Default)]
    struct Writes(Vec<Vec<u8>>, Vec<u8>);

    impl AsyncRead for Writes {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let input = std::mem::take(&mut self.1);
            buf.put_slice(&input);
            Poll::Ready(Ok(()))
        }
    }

    /// Activity wake-ups.
    #[derive(Default)]
    struct Wakes(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Wakes {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    fn flush_now(conn: &mut Coalesced<Writes>, wakes: &std::sync::Arc<Wakes>) {
        let waker = std::task::Waker::from(wakes.clone());
        let polled = Pin::new(conn).poll_flush(&mut Context::from_waker(&waker));
        assert!(matches!(polled, Poll::Ready(Ok(()))));
    }

    fn read_now(conn: &mut Coalesced<Writes>) {
        let waker = std::task::Waker::from(std::sync::Arc::new(Wakes::default()));
        let mut bytes = [0u8; 64];
        let mut buf = ReadBuf::new(&mut bytes);
        let polled = Pin::new(conn).poll_read(&mut Context::from_waker(&waker), &mut buf);
        assert!(matches!(polled, Poll::Ready(Ok(()))));
    }

    #[tokio::test]
    async fn http2_flushes_are_held_until_the_connection_task_reads_again() {
        let wakes = std::sync::Arc::new(Wakes::default());
        let mut conn = Coalesced::new(Writes(
            Vec::new(),
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
        ));
        read_now(&mut conn);
        conn.write_all(b"frame 1;").await.unwrap();
        flush_now(&mut conn, &wakes);
        assert!(conn.io.get_ref().0.is_empty(), "the first flush is held");
        assert_eq!(
            wakes.0.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "and the task woken"
        );
        conn.write_all(b"frame 2;").await.unwrap();
        flush_now(&mut conn, &wakes);
        assert!(conn.io.get_ref().0.is_empty(), "still the same poll: held");
        read_now(&mut conn); // the task's next poll starts with a read
        conn.write_all(b"frame 3").await.unwrap();
        flush_now(&mut conn, &wakes);
        assert_eq!(
            conn.io.get_ref().0,
            vec![b"frame 1;frame 2;frame 3".to_vec()]
        );
        // Flushes without reads are held a bounded number of times, each
        // waking the task, then written.
        conn.write_all(b"ping").await.unwrap();
        let before = wakes.0.load(std::sync::atomic::Ordering::SeqCst);
        for _ in 0..=MAX_HELD_FLUSHES {
            flush_now(&mut conn, &wakes);
            assert_eq!(conn.io.get_ref().0.len(), 1, "held");
        }
        let woken = wakes.0.load(std::sync::atomic::Ordering::SeqCst) - before;
        assert_eq!(woken as u32, MAX_HELD_FLUSHES + 1);
        flush_now(&mut conn, &wakes);
        assert_eq!(conn.io.get_ref().0.last().unwrap(), b"ping");
        // Held data is written at shutdown.
        conn.write_all(b"goaway").await.unwrap();
        flush_now(&mut conn, &wakes);
        conn.shutdown().await.unwrap();
        assert_eq!(conn.io.get_ref().0.last().unwrap(), b"goaway");
    }

    #[tokio::test]
    async fn http1_flushes_are_never_held() {
        let wakes = std::sync::Arc::new(Wakes::default());
        let mut conn = Coalesced::new(Writes(
            Vec::new(),
            b"POST /v1/disconnect HTTP/1.1\r\n".to_vec(),
        ));
        read_now(&mut conn);
        conn.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
            .await
            .unwrap();
        flush_now(&mut conn, &wakes);
        assert_eq!(conn.io.get_ref().0.len(), 1);
        assert_eq!(wakes.0.load(std::sync::atomic::Ordering::SeqCst), 0);
    }

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

//! Accepted plaintext connections (TLS ones come from [`crate::tls`]).

use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::coalesce::Coalesced;

/// Accepted plaintext connections, with TCP_NODELAY set: tonic sets it only
/// on listeners it binds itself, and without it a reply written in two
/// parts waits ~40 ms for the peer's delayed ACK (Nagle). Each is
/// [`Coalesced`]: one write per HTTP/2 flush. Accept errors (out of file
/// descriptors) are logged and retried after a pause instead of ending the
/// server.
pub fn plain(
    listener: TcpListener,
    cancel: CancellationToken,
) -> ReceiverStream<std::io::Result<Coalesced<TcpStream>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = cancel.cancelled() => return,
            };
            match accepted {
                Ok((tcp, _)) => {
                    let _ = tcp.set_nodelay(true);
                    if tx.send(Ok(Coalesced::new(tcp))).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
    ReceiverStream::new(rx)
}

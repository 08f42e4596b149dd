//! One layer around every call: a `tracing` span and a closing log event
//! with method, peer, status code and duration, and the per-call metrics.
//!
//! It sits inside the grpc-web translation, so grpc-web calls look like
//! gRPC here and their status is read from the trailers. The outcome is
//! recorded when the response body ends (or is dropped), so a WatchRoom
//! stream counts once, for its whole life. A client that went away (its
//! request body failed: a reset stream, a closed connection; or it dropped
//! the response) is `CANCELLED`, whatever status the server was left to
//! write. Nothing from the request body or headers is logged, so no token
//! or JWT ever reaches the logs.
//!
//! One answer is corrected on its way out: tonic refuses a message over
//! `--max-request-bytes` with OUT_OF_RANGE, which the presence API never
//! answers otherwise; the gRPC status spec says RESOURCE_EXHAUSTED for a
//! message larger than the configured limit, so that is what the caller
//! gets.
//!
//! Log levels (target `presenced::rpc`): the closing event is `debug` (so
//! `RUST_LOG=info,presenced::rpc=debug` is an access log and the default
//! `info` costs nothing per call), `warn` for server-side failures.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Buf;
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use prost::Message;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::Code;
use tower::{Layer, Service};
use tracing::Instrument;

use crate::metrics::RpcMetrics;

/// The layer; see the module doc.
#[derive(Clone)]
pub struct TelemetryLayer {
    metrics: RpcMetrics,
    shutting_down: CancellationToken,
}

impl TelemetryLayer {
    /// Records into `metrics`; an UNAVAILABLE once `shutting_down` is
    /// cancelled is a rejection, before that a store error.
    pub fn new(metrics: RpcMetrics, shutting_down: CancellationToken) -> Self {
        Self {
            metrics,
            shutting_down,
        }
    }
}

impl<S> Layer<S> for TelemetryLayer {
    type Service = Telemetry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Telemetry {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`TelemetryLayer`] makes.
#[derive(Clone)]
pub struct Telemetry<S> {
    inner: S,
    layer: TelemetryLayer,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Telemetry<S>
where
    S: Service<Request<Watched<ReqBody>>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Body + Unpin,
    ReqBody: Body,
    ReqBody::Data: Buf,
{
    type Response = Response<Recorded<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let (service, method) = classify(request.uri().path());
        let ext = request.extensions();
        let peer = ext
            .get::<TcpConnectInfo>()
            .and_then(TcpConnectInfo::remote_addr)
            .or_else(|| {
                ext.get::<TlsConnectInfo<TcpConnectInfo>>()
                    .and_then(|info| info.get_ref().remote_addr())
            });
        let labels = [("service", service), ("method", method)];
        self.layer.metrics.started.get_or_create(&labels).inc();
        let span = tracing::debug_span!(
            target: "presenced::rpc",
            "rpc",
            service,
            method,
            peer = %Peer(peer),
            code = tracing::field::Empty,
            duration_ms = tracing::field::Empty,
        );
        let gone = Arc::new(AtomicBool::new(false));
        let record = Record {
            span: span.clone(),
            layer: self.layer.clone(),
            service,
            method,
            peer,
            started: Instant::now(),
            client_gone: gone.clone(),
        };
        let framing = (service != BEACON.0).then(Framing::default);
        let client_gone = gone.clone();
        let request = request.map(|body| Watched {
            body,
            gone,
            framing,
        });
        let future = self.inner.call(request).instrument(span);
        Box::pin(async move {
            let mut response = future.await?;
            let code = if service == BEACON.0 {
                Some(crate::grpc::grpc_code(response.status()))
            } else {
                let code = grpc_code(response.headers());
                let rewrite = match code {
                    Some(Code::OutOfRange) => Some(Code::ResourceExhausted),
                    // tonic's "Unexpected EOF" for a request cut off.
                    Some(Code::Internal) if client_gone.load(Ordering::Relaxed) => {
                        Some(Code::Cancelled)
                    }
                    _ => None,
                };
                if let Some(new) = rewrite {
                    let value = http::HeaderValue::from(new as i32);
                    response.headers_mut().insert("grpc-status", value);
                }
                rewrite.or(code)
            };
            Ok(response.map(|body| Recorded {
                body,
                record: Some(record),
                code,
            }))
        })
    }
}

/// A request body that notes when the client went away: the body failed
/// (a reset stream, a dropped connection), or, for gRPC, it ended inside a
/// message (hyper ends the body quietly when a client resets its stream
/// with NO_ERROR or CANCEL, and tonic would call the cut-off message an
/// INTERNAL error).
pub struct Watched<B> {
    body: B,
    gone: Arc<AtomicBool>,
    /// gRPC length-prefixed framing, when the body carries it.
    framing: Option<Framing>,
}

/// Where a gRPC request body is in its messages: header bytes seen of
/// the next message, and body bytes still to come of the current one.
#[derive(Default)]
struct Framing {
    header: [u8; 5],
    have: usize,
    left: u64,
}

impl Framing {
    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.left > 0 {
                let take = data.len().min(self.left as usize);
                self.left -= take as u64;
                data = &data[take..];
                continue;
            }
            let take = data.len().min(5 - self.have);
            self.header[self.have..self.have + take].copy_from_slice(&data[..take]);
            self.have += take;
            data = &data[take..];
            if self.have == 5 {
                self.have = 0;
                self.left = u64::from(u32::from_be_bytes(
                    self.header[1..5].try_into().expect("4 bytes"),
                ));
            }
        }
    }

    fn mid_message(&self) -> bool {
        self.have > 0 || self.left > 0
    }
}

impl<B: Body + Unpin> Body for Watched<B>
where
    B::Data: Buf,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Err(_))) => this.gone.store(true, Ordering::Relaxed),
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(framing), Some(data)) = (&mut this.framing, frame.data_ref()) {
                    framing.feed(data.chunk());
                }
            }
            Poll::Ready(None) => {
                if this.framing.as_ref().is_some_and(Framing::mid_message) {
                    this.gone.store(true, Ordering::Relaxed);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A response body that records the call's outcome when it ends.
pub struct Recorded<B> {
    body: B,
    record: Option<Record>,
    /// The status, once known (response headers or trailers).
    code: Option<Code>,
}

struct Record {
    /// The call's span; gets `code` and `duration_ms` when it ends.
    span: tracing::Span,
    layer: TelemetryLayer,
    service: &'static str,
    method: &'static str,
    peer: Option<SocketAddr>,
    started: Instant,
    /// The request body failed: the client went away.
    client_gone: Arc<AtomicBool>,
}

impl<B: Body + Unpin> Body for Recorded<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_code) {
                    this.code = Some(code);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                this.code.get_or_insert(Code::Internal);
                this.finish();
            }
            Poll::Ready(None) => this.finish(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl<B> Recorded<B> {
    fn finish(&mut self) {
        let Some(record) = self.record.take() else {
            return;
        };
        // A body dropped before its status was sent: the client went away.
        let code = self.code.unwrap_or(Code::Cancelled);
        record.finish(code);
    }
}

impl<B> Drop for Recorded<B> {
    fn drop(&mut self) {
        self.finish();
    }
}

impl Record {
    fn finish(self, code: Code) {
        let code = if self.client_gone.load(Ordering::Relaxed) {
            Code::Cancelled
        } else {
            code
        };
        let elapsed = self.started.elapsed();
        let metrics = &self.layer.metrics;
        let name = code_name(code);
        let labels = [("service", self.service), ("method", self.method)];
        metrics
            .handled
            .get_or_create(&[labels[0], labels[1], ("code", name)])
            .inc();
        metrics
            .duration
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
        let server_fault = match code {
            Code::Internal | Code::Unknown | Code::DataLoss => true,
            Code::Unavailable => !self.layer.shutting_down.is_cancelled(),
            _ => false,
        };
        if server_fault {
            metrics.store_errors.inc();
        } else if let Some(reason) = rejection(code, self.layer.shutting_down.is_cancelled()) {
            metrics.rejected.get_or_create(&[("reason", reason)]).inc();
        }
        let duration_ms = elapsed.as_secs_f64() * 1000.0;
        self.span.record("code", name);
        self.span.record("duration_ms", duration_ms);
        let peer = Peer(self.peer);
        if server_fault {
            tracing::warn!(target: "presenced::rpc", service = self.service, method = self.method, %peer, code = name, duration_ms, "call failed");
        } else {
            tracing::debug!(target: "presenced::rpc", service = self.service, method = self.method, %peer, code = name, duration_ms, "call finished");
        }
    }
}

/// The `reason` label of a call refused for a client-side reason.
fn rejection(code: Code, shutting_down: bool) -> Option<&'static str> {
    Some(match code {
        Code::InvalidArgument => "invalid_argument",
        Code::FailedPrecondition => "failed_precondition",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::Unauthenticated => "unauthenticated",
        Code::ResourceExhausted => "resource_exhausted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Unavailable if shutting_down => "shutting_down",
        _ => return None,
    })
}

/// A peer address for logs (`-` when unknown).
struct Peer(Option<SocketAddr>);

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(addr) => addr.fmt(f),
            None => f.write_str("-"),
        }
    }
}

fn grpc_code(headers: &HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?;
    Some(Code::from_bytes(value.as_bytes()))
}

/// The canonical name of a code (`OK`, `INVALID_ARGUMENT`, ...).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The beacon route's labels.
const BEACON: (&str, &str) = ("http", "/v1/disconnect");
/// Labels of paths that name no known method (kept to one series, so
/// random paths cannot grow the metrics without bound).
const UNKNOWN: (&str, &str) = ("unknown", "unknown");

/// `(service, method)` labels of a request path: the methods of every
/// service on the port, read once from their descriptor sets.
fn classify(path: &str) -> (&'static str, &'static str) {
    static KNOWN: OnceLock<HashMap<String, (&'static str, &'static str)>> = OnceLock::new();
    if path == "/v1/disconnect" {
        return BEACON;
    }
    let known = KNOWN.get_or_init(|| {
        let mut known = HashMap::new();
        for set in [
            crate::grpc::pb::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ] {
            let Ok(set) = prost_types::FileDescriptorSet::decode(set) else {
                continue;
            };
            for file in set.file {
                for service in &file.service {
                    let full = format!("{}.{}", file.package(), service.name());
                    let service_label: &'static str = Box::leak(full.clone().into_boxed_str());
                    for method in &service.method {
                        let method_label: &'static str =
                            Box::leak(method.name().to_owned().into_boxed_str());
                        known.insert(
                            format!("/{full}/{}", method.name()),
                            (service_label, method_label),
                        );
                    }
                }
            }
        }
        known
    });
    known.get(path).copied().unwrap_or(UNKNOWN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_bounded_labels() {
        assert_eq!(
            classify("/presence.v1.PresenceService/Heartbeat"),
            ("presence.v1.PresenceService", "Heartbeat")
        );
        assert_eq!(
            classify("/grpc.health.v1.Health/Check"),
            ("grpc.health.v1.Health", "Check")
        );
        assert_eq!(classify("/v1/disconnect"), BEACON);
        assert_eq!(classify("/presence.v1.PresenceService/Nope"), UNKNOWN);
        assert_eq!(classify("/random"), UNKNOWN);
    }
}

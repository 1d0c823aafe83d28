//! The listeners: accept, (TLS) handshake, serve HTTP/1.1 or HTTP/2, drain on shutdown. The
//! webhook port serves over TLS (HTTP/2 by ALPN), the admin port plain HTTP/1.1; both with the
//! same watchdog and budget, under their own [`Limits`].
//!
//! axum's `serve` has no TLS and no per-connection limits, so connections are driven by
//! hyper-util directly, with every limit explicit:
//! - `TCP_NODELAY` on every socket (small responses otherwise wait on Nagle's algorithm);
//! - a cap on open connections, process-wide and per peer address ([`budget`]), a TLS
//!   handshake timeout, and a short deadline for a new connection's first request;
//! - an idle timeout longer than the API server's own (so it is always the client that closes
//!   an idle keep-alive connection, never the server while the client writes into it), and a
//!   separate, shorter header-read timeout once a request has started. hyper's own
//!   header-read timeout also runs while a connection is idle, which would tie the two
//!   together, so it is off and a per-connection watchdog does all three;
//! - request bodies counted against the memory budget as they arrive; a request that does not
//!   fit is answered `503` with `Retry-After` (before its body is read when it declares its
//!   length);
//! - HTTP/2 stream, header and flow-control limits, and small HTTP/1.1 read buffers, so what a
//!   connection holds outside the budget stays small.
//!
//! On shutdown every connection is closed gracefully (HTTP/1.1: once idle; HTTP/2: GOAWAY)
//! and in-flight requests finish, up to the drain timeout. hyper-util's [`GracefulShutdown`]
//! does that bookkeeping: it watches every connection from the moment it is accepted (a
//! handshake still under way at shutdown is waited for too), signals them, and resolves once
//! the last one has closed.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use hyper::body::{Frame, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::webhook::budget::{self, Budget, Refusal};
use crate::webhook::handler::MAX_BODY_BYTES;

/// Every limit of a listener. [`Limits::webhook`] is what `serve` uses on its TLS port,
/// [`Limits::admin`] on the admin port; tests shrink them.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Time allowed to complete the TLS handshake.
    pub handshake_timeout: Duration,
    /// Time allowed from the end of the handshake (plain HTTP: the accept) to a new
    /// connection's first complete request headers.
    pub first_request_timeout: Duration,
    /// Time allowed between the first byte of a request and its complete headers (HTTP/1.1).
    pub header_read_timeout: Duration,
    /// A keep-alive connection with no request for this long is closed.
    pub idle_timeout: Duration,
    /// Open connections at most; further clients wait in the accept backlog.
    pub max_connections: usize,
    /// Largest request body; a declared `Content-Length` above it is answered 413 at once.
    pub max_body_bytes: usize,
}

/// Slow or stalled clients cannot hold a TLS handshake longer than this; the API server
/// completes one in milliseconds.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The API server sends its request as soon as the handshake is done; a connection that sends
/// none within this is a client holding a slot, closed before it counts for long.
pub const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// A request's headers must arrive within this once it has started: the API server sends a
/// request at once; only a stalled or hostile client is slower.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Longer than the idle timeout of the API server's webhook client (Go's `http.Transport`,
/// 90 s), so the API server always closes idle connections first. A server that closes an idle
/// connection races the client writing the next request into it: a failed webhook call, and,
/// under `failurePolicy: Ignore`, a Pod created without its secrets. It applies only to
/// connections that have served a request: a new one has [`FIRST_REQUEST_TIMEOUT`].
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// The API server keeps a small pool per webhook; even a large control plane stays far below
/// this, while it bounds the memory and file descriptors clients can take (each connection
/// holds TLS state and buffers, tens of KiB). One peer address may hold at most
/// [`budget::PEER_MAX_CONNECTIONS`] of them.
pub const MAX_CONNECTIONS: usize = 1024;
/// HTTP/2 streams per connection: the API server's Go client assumes 100 until it has read
/// our settings and opens another connection beyond them, so 100 never makes it wait, and a
/// connection's requests stay within one peer's budget.
pub const H2_MAX_CONCURRENT_STREAMS: u32 = 100;
/// HTTP/2 request headers: an AdmissionReview request carries a handful of small headers.
pub const H2_MAX_HEADER_LIST_BYTES: u32 = 64 * 1024;
/// HTTP/2 flow control: what a client may send before we read, per stream and per
/// connection. This is what a connection can make us hold outside the budget (hyper returns
/// window credit only as the body is read), so it is kept small: a 7 MiB body still arrives,
/// in more window updates.
pub const H2_STREAM_WINDOW_BYTES: u32 = 128 * 1024;
pub const H2_CONNECTION_WINDOW_BYTES: u32 = 256 * 1024;
/// HTTP/1.1: at most this many request headers (hyper's default, stated on purpose).
pub const H1_MAX_HEADERS: usize = 100;
/// HTTP/1.1: hyper's read buffer per connection grows to at most this (its default is
/// ~400 KiB); request headers must fit in it, body bytes pass through it into the budget.
pub const H1_MAX_BUFFER_BYTES: usize = 64 * 1024;
/// Socket reads under TLS go through a buffer of this size (one TLS record's worth).
pub const READ_BUFFER_BYTES: usize = 16 * 1024;
/// A refused request is told to come back after this many seconds.
pub const RETRY_AFTER_SECONDS: u64 = 1;

/// The admin port (`/livez`, `/readyz`, `/metrics`): probes and scrapes are a few GETs a
/// second from the kubelet and Prometheus.
pub const ADMIN_MAX_CONNECTIONS: usize = 256;
/// Per peer on the admin port: the kubelet's probes and a scraper need a handful; 200
/// half-open connections from one address leave room for everyone else.
pub const ADMIN_PEER_MAX_CONNECTIONS: usize = 32;
/// Requests in flight on the admin port (all GETs without a body).
pub const ADMIN_MAX_REQUESTS: usize = 64;
pub const ADMIN_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Longer than Prometheus' and the kubelet's keep-alive reuse, shorter than the webhook's.
pub const ADMIN_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

// The limits' relations, checked when building.
const _: () = assert!(H2_STREAM_WINDOW_BYTES <= H2_CONNECTION_WINDOW_BYTES);
const _: () = assert!(HEADER_READ_TIMEOUT.as_secs() < IDLE_TIMEOUT.as_secs());
const _: () = assert!(FIRST_REQUEST_TIMEOUT.as_secs() < IDLE_TIMEOUT.as_secs());
const _: () = assert!(budget::PEER_MAX_CONNECTIONS <= MAX_CONNECTIONS / 2);
const _: () = assert!(ADMIN_PEER_MAX_CONNECTIONS * 4 <= ADMIN_MAX_CONNECTIONS);
const _: () = assert!(H1_MAX_BUFFER_BYTES >= 8192); // hyper's minimum

impl Limits {
    /// The webhook's TLS port.
    pub fn webhook() -> Self {
        Self {
            handshake_timeout: HANDSHAKE_TIMEOUT,
            first_request_timeout: FIRST_REQUEST_TIMEOUT,
            header_read_timeout: HEADER_READ_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
            max_connections: MAX_CONNECTIONS,
            max_body_bytes: MAX_BODY_BYTES,
        }
    }

    /// The admin port: no request bodies, shorter timeouts.
    pub fn admin() -> Self {
        Self {
            handshake_timeout: HANDSHAKE_TIMEOUT,
            first_request_timeout: FIRST_REQUEST_TIMEOUT,
            header_read_timeout: ADMIN_HEADER_READ_TIMEOUT,
            idle_timeout: ADMIN_IDLE_TIMEOUT,
            max_connections: ADMIN_MAX_CONNECTIONS,
            max_body_bytes: 0,
        }
    }
}

/// TLS (the webhook port) or plain HTTP/1.1 (the admin port).
#[derive(Clone)]
pub enum Transport {
    Tls(TlsAcceptor),
    Plain,
}

/// How the drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Every connection closed before the deadline.
    Clean,
    /// The deadline passed with connections still open; they are dropped.
    TimedOut,
}

/// What a connection is doing, for its watchdog.
const IDLE: u8 = 0;
const READING_HEAD: u8 = 1;
const BUSY: u8 = 2;
/// Connected, no request yet: the first-request deadline runs.
const NEW: u8 = 3;

/// Shared between a connection's IO, its service and its watchdog.
struct Activity {
    phase: AtomicU8,
    in_flight: AtomicUsize,
    /// Milliseconds since `epoch` when `phase` last changed.
    since: AtomicU64,
    epoch: Instant,
    /// HTTP/1.1: bytes arriving on an idle connection start a request (HTTP/2 connections
    /// also carry pings and settings, so only the idle timeout applies to them).
    http1: OnceLock<bool>,
    /// Wakes the watchdog when a request starts arriving: its deadline just got shorter.
    head_started: Notify,
}

impl Activity {
    fn new() -> Self {
        Self {
            phase: AtomicU8::new(NEW),
            in_flight: AtomicUsize::new(0),
            since: AtomicU64::new(0),
            epoch: Instant::now(),
            http1: OnceLock::new(),
            head_started: Notify::new(),
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn set(&self, phase: u8) {
        self.since.store(self.now(), Ordering::Release);
        self.phase.store(phase, Ordering::Release);
    }

    fn read_bytes(&self) {
        if *self.http1.get().unwrap_or(&false)
            && self
                .phase
                .compare_exchange(IDLE, READING_HEAD, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.since.store(self.now(), Ordering::Release);
            self.head_started.notify_one();
        }
    }

    fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.set(BUSY);
    }

    fn request_finished(&self) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.set(IDLE);
        }
    }

    /// What the watchdog must do now, or when to look again.
    fn check(&self, limits: &Limits) -> Check {
        let elapsed = Duration::from_millis(
            self.now()
                .saturating_sub(self.since.load(Ordering::Acquire)),
        );
        let (limit, expired) = match self.phase.load(Ordering::Acquire) {
            NEW => (limits.first_request_timeout, Check::NoFirstRequest),
            IDLE => (limits.idle_timeout, Check::IdleTooLong),
            READING_HEAD => (limits.header_read_timeout, Check::HeadersTooSlow),
            _ => return Check::Later(limits.header_read_timeout),
        };
        match limit.checked_sub(elapsed) {
            Some(left) if !left.is_zero() => Check::Later(left),
            _ => expired,
        }
    }
}

enum Check {
    Later(Duration),
    NoFirstRequest,
    IdleTooLong,
    HeadersTooSlow,
}

/// The TLS stream, reporting reads to the connection's [`Activity`].
struct Watched<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.read_bytes();
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The router, reporting each request's start and end to the connection's [`Activity`] and
/// charging its body to the connection's peer in the [`Budget`].
#[derive(Clone)]
struct Tracked {
    router: Router,
    activity: Arc<Activity>,
    peer: Arc<budget::Peer>,
    max_body_bytes: usize,
}

impl hyper::service::Service<hyper::Request<hyper::body::Incoming>> for Tracked {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn call(&self, request: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        self.activity.request_started();
        let done = Finished(self.activity.clone());
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        // Refused before a byte of the body is read: the client learns at once, and hyper
        // closes an HTTP/1.1 connection whose body was not read.
        if let Some(length) = declared.filter(|&n| n > self.max_body_bytes) {
            let response = if self.max_body_bytes == 0 {
                refused(Refusal::BodyNotAccepted)
            } else {
                too_large(length, self.max_body_bytes)
            };
            return Box::pin(async move { Ok(response) });
        }
        let slot = match self.peer.start_request(declared) {
            Ok(slot) => Arc::new(slot),
            Err(refusal) => return Box::pin(async move { Ok(refused(refusal)) }),
        };
        let router = self.router.clone();
        Box::pin(async move {
            let request = request.map(|body| {
                axum::body::Body::new(Metered {
                    inner: body,
                    slot: slot.clone(),
                    seen: 0,
                })
            });
            let response = router.oneshot(request).await;
            drop((slot, done));
            response
        })
    }
}

/// `503` with `Retry-After`: the request did not fit the budget.
fn refused(refusal: Refusal) -> axum::response::Response {
    let status = match refusal {
        Refusal::BodyNotAccepted => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    let mut response = (status, format!("{refusal}\n")).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
    }
    response
}

fn too_large(length: usize, limit: usize) -> axum::response::Response {
    (
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body of {length} bytes exceeds {limit} bytes\n"),
    )
        .into_response()
}

/// A request body that charges each frame to its request's budget slot as it arrives; a frame
/// that does not fit ends the body with the [`Refusal`] as its error.
struct Metered {
    inner: hyper::body::Incoming,
    slot: Arc<budget::Request>,
    seen: usize,
}

impl hyper::body::Body for Metered {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        if let Some(data) = frame.data_ref() {
            let n = data.len();
            if let Err(refusal) = self.slot.received(self.seen, n) {
                return Poll::Ready(Some(Err(refusal.into())));
            }
            self.seen += n;
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Marks the request finished when dropped, also if the client goes away mid-request.
struct Finished(Arc<Activity>);

impl Drop for Finished {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

/// Serves `router` on `listener` until `stop` resolves, then drains for at most
/// `drain_timeout`. Connections and request bodies are held to `limits` and `budget`.
pub async fn serve(
    listener: TcpListener,
    transport: Transport,
    router: Router,
    stop: impl Future<Output = ()>,
    drain_timeout: Duration,
    limits: Limits,
    budget: Arc<Budget>,
) -> Drained {
    let builder = Arc::new(match transport {
        Transport::Tls(_) => http_builder(auto::Builder::new(TokioExecutor::new())),
        Transport::Plain => http_builder(auto::Builder::new(TokioExecutor::new())).http1_only(),
    });
    let limits = Arc::new(limits);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    tokio::pin!(stop);

    loop {
        // At the cap, wait for a connection to close before accepting the next.
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut stop => break,
        };
        let (tcp, address) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        // One address holding its maximum: closed before any TLS state is allocated.
        let peer = match budget.connect(address.ip()) {
            Ok(peer) => Arc::new(peer),
            Err(refusal) => {
                tracing::debug!(peer = %address, %refusal, "connection refused");
                continue;
            }
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        // Watched from here on: the drain waits for this connection until it is closed, also
        // while its handshake is still under way.
        let watcher = graceful.watcher();
        let (transport, builder, limits) = (transport.clone(), builder.clone(), limits.clone());
        let router = router.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let connection = Connection {
                builder,
                limits,
                router,
                peer,
            };
            match transport {
                Transport::Plain => connection.serve(tcp, true, watcher).await,
                Transport::Tls(acceptor) => {
                    // rustls reads a record's header, then its body: through a buffer that is
                    // one read syscall per request instead of two or more.
                    let tcp = tokio::io::BufReader::with_capacity(READ_BUFFER_BYTES, tcp);
                    let handshake = acceptor.accept(tcp);
                    match tokio::time::timeout(connection.limits.handshake_timeout, handshake).await
                    {
                        Ok(Ok(stream)) => {
                            let http1 = stream.get_ref().1.alpn_protocol() != Some(b"h2");
                            connection.serve(stream, http1, watcher).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(peer = %address, error = %e, "TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(peer = %address, "TLS handshake timed out"),
                    }
                }
            }
        });
    }

    drop(listener);
    tracing::info!(connections = graceful.count(), "draining connections");
    match tokio::time::timeout(drain_timeout, graceful.shutdown()).await {
        Ok(()) => Drained::Clean,
        Err(_) => {
            tracing::warn!("drain deadline passed; closing remaining connections");
            Drained::TimedOut
        }
    }
}

/// HTTP/1.1 and HTTP/2 settings shared by both ports.
fn http_builder(mut builder: auto::Builder<TokioExecutor>) -> auto::Builder<TokioExecutor> {
    builder
        .http1()
        .timer(TokioTimer::new())
        // The watchdog times idle connections and slow headers separately (module docs).
        .header_read_timeout(None)
        .max_headers(H1_MAX_HEADERS)
        .max_buf_size(H1_MAX_BUFFER_BYTES)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
        .max_header_list_size(H2_MAX_HEADER_LIST_BYTES)
        .initial_stream_window_size(H2_STREAM_WINDOW_BYTES)
        .initial_connection_window_size(H2_CONNECTION_WINDOW_BYTES)
        .keep_alive_interval(Duration::from_secs(30));
    builder
}

/// One accepted connection, ready to serve HTTP once its transport is up.
struct Connection {
    builder: Arc<auto::Builder<TokioExecutor>>,
    limits: Arc<Limits>,
    router: Router,
    peer: Arc<budget::Peer>,
}

impl Connection {
    /// Serves requests on `io` under the watchdog until the client closes, a deadline passes,
    /// or the drain closes it.
    async fn serve<IO>(self, io: IO, http1: bool, watcher: hyper_util::server::graceful::Watcher)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let address = self.peer.address();
        let activity = Arc::new(Activity::new());
        let _ = activity.http1.set(http1);
        activity.set(NEW);
        let io = Watched {
            inner: io,
            activity: activity.clone(),
        };
        let service = Tracked {
            router: self.router,
            activity: activity.clone(),
            peer: self.peer,
            max_body_bytes: self.limits.max_body_bytes,
        };
        // At shutdown the watcher closes the connection gracefully; dropping the future
        // closes it at once.
        let builder = self.builder;
        let connection = watcher.watch(builder.serve_connection(TokioIo::new(io), service));
        tokio::pin!(connection);
        loop {
            let wait = match activity.check(&self.limits) {
                Check::Later(wait) => wait,
                // Nothing in flight (HTTP/1.1: not even a request's first byte), so closing
                // at once loses nothing, as a graceful close of an idle connection would.
                Check::IdleTooLong => {
                    tracing::debug!(peer = %address, "idle connection closed");
                    return;
                }
                Check::NoFirstRequest => {
                    tracing::debug!(peer = %address, "no request in time on a new connection; closing");
                    return;
                }
                Check::HeadersTooSlow => {
                    tracing::debug!(peer = %address, "request headers not received in time; closing");
                    return;
                }
            };
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(peer = %address, error = %e, "connection ended with an error");
                    }
                    return;
                }
                () = tokio::time::sleep(wait) => {}
                () = activity.head_started.notified() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio_rustls::TlsConnector;

    struct TestServer {
        addr: std::net::SocketAddr,
        connector: TlsConnector,
        stop: crate::shutdown::Trigger,
        task: tokio::task::JoinHandle<Drained>,
        /// Notified when a request reaches `/slow` (which then takes 30 s).
        slow_started: Arc<Notify>,
    }

    async fn server(limits: Limits) -> TestServer {
        server_with(limits, unlimited()).await
    }

    fn unlimited() -> Arc<Budget> {
        Budget::new(
            budget::BudgetLimits::for_body_budget(64 * 1024 * 1024),
            Box::new(|_| {}),
        )
    }

    async fn server_with(limits: Limits, budget: Arc<Budget>) -> TestServer {
        let provider = crate::webhook::tls::provider();
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(vec!["localhost".into()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let pair = crate::webhook::tls::pair_from_pem(
            std::path::Path::new("cert"),
            cert.pem().as_bytes(),
            std::path::Path::new("key"),
            key.serialize_pem().as_bytes(),
        )
        .expect("pair");
        let resolver = crate::webhook::tls::ReloadingResolver::new(&pair);
        let tls = Arc::new(crate::webhook::tls::server_config(resolver, None).expect("tls"));
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der().clone()).expect("root");
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = vec![b"http/1.1".to_vec()];
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let slow_started = Arc::new(Notify::new());
        let started = slow_started.clone();
        let router = Router::new()
            .route("/", axum::routing::post(|| async { "ok" }))
            .route(
                "/read",
                axum::routing::post(|body: axum::body::Body| async move {
                    match crate::webhook::handler::read_body(body).await {
                        Ok(bytes) => (StatusCode::OK, bytes.len().to_string()).into_response(),
                        Err(answer) => (answer.status, answer.body).into_response(),
                    }
                }),
            )
            .route(
                "/slow",
                axum::routing::post(move || async move {
                    started.notify_one();
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    "late"
                }),
            );
        let stop = crate::shutdown::Trigger::default();
        let task = tokio::spawn(serve(
            listener,
            Transport::Tls(TlsAcceptor::from(tls)),
            router,
            stop.wait(),
            Duration::from_secs(2),
            limits,
            budget,
        ));
        TestServer {
            addr,
            connector: TlsConnector::from(Arc::new(client)),
            stop,
            task,
            slow_started,
        }
    }

    type Client = tokio_rustls::client::TlsStream<TcpStream>;

    async fn connect(server: &TestServer) -> std::io::Result<Client> {
        connect_from(server, "127.0.0.1").await
    }

    /// Connects from a loopback address of its own: another peer to the budget.
    async fn connect_from(server: &TestServer, local: &str) -> std::io::Result<Client> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(std::net::SocketAddr::new(
            local.parse().expect("address"),
            0,
        ))?;
        let tcp = socket.connect(server.addr).await?;
        let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
        server.connector.connect(name, tcp).await
    }

    const REQUEST: &[u8] = b"POST / HTTP/1.1\r\nhost: localhost\r\ncontent-length: 0\r\n\r\n";

    /// Sends one request; Ok(true) if a 200 came back.
    async fn request(client: &mut Client) -> std::io::Result<bool> {
        client.write_all(REQUEST).await?;
        let mut buf = vec![0u8; 1024];
        let n = client.read(&mut buf).await?;
        Ok(buf[..n].starts_with(b"HTTP/1.1 200"))
    }

    /// True once the server has closed the connection (EOF or reset).
    async fn closed_within(client: &mut Client, within: Duration) -> bool {
        let mut buf = [0u8; 64];
        matches!(
            tokio::time::timeout(within, client.read(&mut buf)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    fn small() -> Limits {
        Limits {
            handshake_timeout: Duration::from_millis(500),
            first_request_timeout: Duration::from_millis(800),
            header_read_timeout: Duration::from_millis(200),
            idle_timeout: Duration::from_millis(1200),
            max_connections: 2,
            max_body_bytes: MAX_BODY_BYTES,
        }
    }

    #[tokio::test]
    async fn idle_connections_outlive_the_header_read_timeout() {
        let server = server(small()).await;
        let mut client = connect(&server).await.expect("connect");
        assert!(request(&mut client).await.expect("first request"));
        // Idle for longer than the header-read timeout: still open, reused.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(
            request(&mut client)
                .await
                .expect("second request on the idle connection")
        );
        // Idle past the idle timeout: the server closes it.
        let started = Instant::now();
        assert!(closed_within(&mut client, Duration::from_secs(3)).await);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(1000),
            "closed after {waited:?}, before the idle timeout"
        );
        server.stop.fire();
        assert_eq!(server.task.await.expect("server"), Drained::Clean);
    }

    #[tokio::test]
    async fn a_request_whose_headers_stall_is_cut_off() {
        let server = server(small()).await;
        let mut client = connect(&server).await.expect("connect");
        client
            .write_all(b"POST / HTTP/1.1\r\nhost: localhost\r\n")
            .await
            .expect("write");
        let started = Instant::now();
        assert!(closed_within(&mut client, Duration::from_secs(2)).await);
        assert!(
            started.elapsed() < Duration::from_millis(1000),
            "cut off by the idle timeout instead"
        );
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_wait_for_a_free_slot() {
        let server = server(small()).await;
        let mut first = connect(&server).await.expect("first");
        let mut second = connect(&server).await.expect("second");
        assert!(request(&mut first).await.expect("first request"));
        assert!(request(&mut second).await.expect("second request"));
        // The third TCP connection is queued in the backlog; its handshake cannot finish.
        let third = tokio::time::timeout(Duration::from_millis(400), connect(&server)).await;
        assert!(
            third.is_err(),
            "a third connection was served beyond the cap"
        );
        drop(first);
        let mut third = tokio::time::timeout(Duration::from_secs(2), connect(&server))
            .await
            .expect("served once a slot is free")
            .expect("connect");
        assert!(request(&mut third).await.expect("third request"));
    }

    #[tokio::test]
    async fn drain_closes_idle_connections_and_ends_clean() {
        let server = server(Limits::webhook()).await;
        let mut client = connect(&server).await.expect("connect");
        assert!(request(&mut client).await.expect("request"));
        server.stop.fire();
        assert!(closed_within(&mut client, Duration::from_secs(2)).await);
        assert_eq!(server.task.await.expect("server"), Drained::Clean);
    }

    #[tokio::test]
    async fn a_request_outlasting_the_drain_timeout_ends_it_timed_out() {
        let server = server(Limits::webhook()).await;
        let mut idle = connect(&server).await.expect("connect");
        assert!(request(&mut idle).await.expect("request"));
        let mut busy = connect(&server).await.expect("connect");
        busy.write_all(b"POST /slow HTTP/1.1\r\nhost: localhost\r\ncontent-length: 0\r\n\r\n")
            .await
            .expect("write");
        tokio::time::timeout(Duration::from_secs(2), server.slow_started.notified())
            .await
            .expect("the slow request reached its handler");
        let started = Instant::now();
        server.stop.fire();
        // The idle connection is closed at once; the busy one holds the drain to its timeout.
        assert!(closed_within(&mut idle, Duration::from_secs(1)).await);
        assert_eq!(server.task.await.expect("server"), Drained::TimedOut);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(1900) && waited < Duration::from_secs(10),
            "drain ended after {waited:?}, not at the 2 s timeout"
        );
    }

    #[tokio::test]
    async fn oversized_headers_are_refused_on_both_protocols() {
        let server = server(Limits::webhook()).await;
        // HTTP/1.1: more than H1_MAX_HEADERS headers.
        let mut client = connect(&server).await.expect("connect");
        let mut head = String::from("POST / HTTP/1.1\r\nhost: localhost\r\ncontent-length: 0\r\n");
        for i in 0..=H1_MAX_HEADERS {
            head.push_str(&format!("x-h{i}: v\r\n"));
        }
        head.push_str("\r\n");
        client.write_all(head.as_bytes()).await.expect("write");
        let mut buf = vec![0u8; 256];
        let n = client.read(&mut buf).await.expect("read");
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 431"),
            "{}",
            String::from_utf8_lossy(&buf[..n])
        );

        // HTTP/2: a header list over H2_MAX_HEADER_LIST_BYTES, while a normal request works.
        let tcp = TcpStream::connect(server.addr).await.expect("tcp");
        let mut config = (**server.connector.config()).clone();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let connector = TlsConnector::from(Arc::new(config));
        let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
        let tls = connector.connect(name, tcp).await.expect("tls");
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .expect("h2 handshake");
        tokio::spawn(conn);
        let request = |big: bool| {
            let mut builder = hyper::Request::post("https://localhost/");
            if big {
                builder = builder.header("x-big", "x".repeat(H2_MAX_HEADER_LIST_BYTES as usize));
            }
            builder
                .body(http_body_util::Empty::<axum::body::Bytes>::new())
                .expect("request")
        };
        let ok = send
            .send_request(request(false))
            .await
            .expect("normal request");
        assert_eq!(ok.status(), 200);
        match send.send_request(request(true)).await {
            Ok(response) => assert_eq!(response.status(), 431),
            Err(e) => assert!(!e.is_canceled(), "refused: {e}"),
        }
    }

    /// The status line and headers of the response to `head` (sent without a body).
    async fn head_response(client: &mut Client, head: &str) -> String {
        client.write_all(head.as_bytes()).await.expect("write");
        let mut buf = vec![0u8; 2048];
        let n = tokio::time::timeout(Duration::from_secs(2), client.read(&mut buf))
            .await
            .expect("answered at once")
            .expect("read");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    fn tiny_budget(peer_connections: usize) -> Arc<Budget> {
        Budget::new(
            budget::BudgetLimits {
                bytes: 96 * 1024,
                requests: 8,
                peer_bytes: 64 * 1024,
                peer_requests: 4,
                peer_connections,
            },
            Box::new(|_| {}),
        )
    }

    #[tokio::test]
    async fn a_new_connection_must_send_its_first_request_in_time() {
        let server = server(small()).await;
        let mut silent = connect(&server).await.expect("connect");
        let started = Instant::now();
        assert!(closed_within(&mut silent, Duration::from_secs(3)).await);
        let waited = started.elapsed();
        // The first-request deadline (800 ms), not the idle timeout (1200 ms).
        assert!(
            waited >= Duration::from_millis(700) && waited < Duration::from_millis(1150),
            "closed after {waited:?}"
        );
        // A connection that served a request gets the idle timeout from then on.
        let mut served = connect(&server).await.expect("connect");
        assert!(request(&mut served).await.expect("request"));
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert!(
            request(&mut served)
                .await
                .expect("still open after 900 ms idle")
        );
    }

    #[tokio::test]
    async fn one_address_cannot_take_every_connection() {
        let limits = Limits {
            max_connections: 8,
            ..small()
        };
        let server = server_with(limits, tiny_budget(2)).await;
        let mut flood = Vec::new();
        for _ in 0..2 {
            let mut client = connect_from(&server, "127.0.0.2").await.expect("flood");
            assert!(request(&mut client).await.expect("flood request"));
            flood.push(client);
        }
        // A third from the same address is closed before its handshake completes...
        let third = connect_from(&server, "127.0.0.2").await;
        assert!(
            third.is_err(),
            "a third connection from one address was served"
        );
        // ...while another address is served as usual.
        let mut other = connect_from(&server, "127.0.0.1")
            .await
            .expect("other peer");
        assert!(request(&mut other).await.expect("other request"));
        // Once one closes, the address may connect again.
        drop(flood.pop());
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut again = connect_from(&server, "127.0.0.2").await.expect("again");
        assert!(request(&mut again).await.expect("again request"));
    }

    #[tokio::test]
    async fn a_declared_body_beyond_the_budget_is_refused_before_it_is_read() {
        let server = server_with(small(), tiny_budget(4)).await;
        let mut client = connect(&server).await.expect("connect");
        // 65 KiB declared against a 64 KiB share: answered at once, no body sent at all.
        let response = head_response(
            &mut client,
            "POST /read HTTP/1.1\r\nhost: localhost\r\ncontent-length: 66560\r\n\r\n",
        )
        .await;
        assert!(response.starts_with("HTTP/1.1 503"), "{response}");
        assert!(response.contains("retry-after: 1"), "{response}");
        // Beyond the largest body at all: 413, also before the body.
        let mut client = connect(&server).await.expect("connect");
        let response = head_response(
            &mut client,
            &format!(
                "POST /read HTTP/1.1\r\nhost: localhost\r\ncontent-length: {}\r\n\r\n",
                MAX_BODY_BYTES + 1
            ),
        )
        .await;
        assert!(response.starts_with("HTTP/1.1 413"), "{response}");
        // Within the share it is served.
        let mut client = connect(&server).await.expect("connect");
        let body = vec![b'x'; 60 * 1024];
        client
            .write_all(b"POST /read HTTP/1.1\r\nhost: localhost\r\ncontent-length: 61440\r\n\r\n")
            .await
            .expect("head");
        client.write_all(&body).await.expect("body");
        let mut buf = vec![0u8; 1024];
        let n = client.read(&mut buf).await.expect("read");
        let response = String::from_utf8_lossy(&buf[..n]);
        assert!(
            response.starts_with("HTTP/1.1 200") && response.ends_with("61440"),
            "{response}"
        );
    }

    #[tokio::test]
    async fn a_chunked_body_is_charged_as_it_arrives_and_cut_off_past_the_share() {
        let server = server_with(small(), tiny_budget(4)).await;
        let mut client = connect(&server).await.expect("connect");
        client
            .write_all(
                b"POST /read HTTP/1.1\r\nhost: localhost\r\ntransfer-encoding: chunked\r\n\r\n",
            )
            .await
            .expect("head");
        // 16 KiB chunks, trickled: the fifth passes the 64 KiB share.
        let chunk = format!("4000\r\n{}\r\n", "y".repeat(16 * 1024));
        let mut answered = String::new();
        for _ in 0..8 {
            if client.write_all(chunk.as_bytes()).await.is_err() {
                break;
            }
            let mut buf = vec![0u8; 1024];
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(100), client.read(&mut buf)).await
            {
                answered = String::from_utf8_lossy(&buf[..n]).into_owned();
                break;
            }
        }
        assert!(answered.starts_with("HTTP/1.1 503"), "{answered:?}");
        assert!(
            answered.contains("share of the request memory budget"),
            "{answered}"
        );
    }

    #[tokio::test]
    async fn large_bodies_still_arrive_over_http2_with_small_windows() {
        let server = server(Limits::webhook()).await;
        let tcp = TcpStream::connect(server.addr).await.expect("tcp");
        let mut config = (**server.connector.config()).clone();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let connector = TlsConnector::from(Arc::new(config));
        let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
        let tls = connector.connect(name, tcp).await.expect("tls");
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .expect("h2 handshake");
        tokio::spawn(conn);
        let body = vec![b'z'; 5 * 1024 * 1024];
        let request = hyper::Request::post("https://localhost/read")
            .body(http_body_util::Full::new(Bytes::from(body)))
            .expect("request");
        let response = send.send_request(request).await.expect("response");
        assert_eq!(response.status(), 200);
        let text = http_body_util::BodyExt::collect(response.into_body())
            .await
            .expect("body")
            .to_bytes();
        assert_eq!(&text[..], (5 * 1024 * 1024).to_string().as_bytes());
    }

    #[test]
    fn limits_are_ordered_as_the_module_docs_say() {
        let limits = Limits::webhook();
        // Longer than the API server's idle timeout (Go http.Transport: 90 s).
        assert!(limits.idle_timeout > Duration::from_secs(90));
        assert!(limits.header_read_timeout < limits.idle_timeout);
    }
}

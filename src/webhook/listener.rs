//! The TLS listener: accept, handshake, serve HTTP/1.1 or HTTP/2 by ALPN, drain on shutdown.
//!
//! axum's `serve` has no TLS, so connections are driven by hyper-util directly, with every
//! limit explicit ([`Limits`]):
//! - `TCP_NODELAY` on every socket (small responses otherwise wait on Nagle's algorithm);
//! - a cap on open connections, a TLS handshake timeout;
//! - an idle timeout longer than the API server's own (so it is always the client that closes
//!   an idle keep-alive connection, never the server while the client writes into it), and a
//!   separate, shorter header-read timeout once a request has started. hyper's own
//!   header-read timeout also runs while a connection is idle, which would tie the two
//!   together, so it is off and a per-connection watchdog does both;
//! - HTTP/2 stream, header and flow-control limits.
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
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

/// Every limit of the listener. [`Limits::default`] is what `serve` uses; tests shrink them.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Time allowed to complete the TLS handshake.
    pub handshake_timeout: Duration,
    /// Time allowed between the first byte of a request and its complete headers (HTTP/1.1).
    pub header_read_timeout: Duration,
    /// A keep-alive connection with no request for this long is closed.
    pub idle_timeout: Duration,
    /// Open connections at most; further clients wait in the accept backlog.
    pub max_connections: usize,
}

/// Slow or stalled clients cannot hold a TLS handshake longer than this; the API server
/// completes one in milliseconds.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A request's headers must arrive within this once it has started: the API server sends a
/// request at once; only a stalled or hostile client is slower.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Longer than the idle timeout of the API server's webhook client (Go's `http.Transport`,
/// 90 s), so the API server always closes idle connections first. A server that closes an idle
/// connection races the client writing the next request into it: a failed webhook call, and,
/// under `failurePolicy: Ignore`, a Pod created without its secrets.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// The API server keeps a small pool per webhook; even a large control plane stays far below
/// this, while it bounds the memory and file descriptors clients can take (each connection
/// holds TLS state and buffers, tens of KiB).
pub const MAX_CONNECTIONS: usize = 1024;
/// HTTP/2 streams per connection: one admission is one stream; more would only queue.
pub const H2_MAX_CONCURRENT_STREAMS: u32 = 128;
/// HTTP/2 request headers: an AdmissionReview request carries a handful of small headers.
pub const H2_MAX_HEADER_LIST_BYTES: u32 = 64 * 1024;
/// HTTP/2 flow control: what a client may send before we read, per stream and per
/// connection, so one connection cannot make us buffer more than a few request bodies.
pub const H2_STREAM_WINDOW_BYTES: u32 = 1024 * 1024;
pub const H2_CONNECTION_WINDOW_BYTES: u32 = 8 * 1024 * 1024;
/// HTTP/1.1: at most this many request headers (hyper's default, stated on purpose).
pub const H1_MAX_HEADERS: usize = 100;
/// Socket reads under TLS go through a buffer of this size (one TLS record's worth).
pub const READ_BUFFER_BYTES: usize = 16 * 1024;

// The limits' relations, checked when building: one request body fits the connection's
// flow-control window, and a stream's window fits the connection's.
const _: () = assert!(H2_STREAM_WINDOW_BYTES <= H2_CONNECTION_WINDOW_BYTES);
const _: () =
    assert!(H2_CONNECTION_WINDOW_BYTES as usize >= crate::webhook::handler::MAX_BODY_BYTES);
const _: () = assert!(HEADER_READ_TIMEOUT.as_secs() < IDLE_TIMEOUT.as_secs());

impl Default for Limits {
    fn default() -> Self {
        Self {
            handshake_timeout: HANDSHAKE_TIMEOUT,
            header_read_timeout: HEADER_READ_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
            max_connections: MAX_CONNECTIONS,
        }
    }
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
            phase: AtomicU8::new(IDLE),
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
        let limit = match self.phase.load(Ordering::Acquire) {
            IDLE => limits.idle_timeout,
            READING_HEAD => limits.header_read_timeout,
            _ => return Check::Later(limits.header_read_timeout),
        };
        match limit.checked_sub(elapsed) {
            Some(left) if !left.is_zero() => Check::Later(left),
            _ if self.phase.load(Ordering::Acquire) == IDLE => Check::IdleTooLong,
            _ => Check::HeadersTooSlow,
        }
    }
}

enum Check {
    Later(Duration),
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

/// The router, reporting each request's start and end to the connection's [`Activity`].
#[derive(Clone)]
struct Tracked {
    router: Router,
    activity: Arc<Activity>,
}

impl hyper::service::Service<hyper::Request<hyper::body::Incoming>> for Tracked {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn call(&self, request: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        self.activity.request_started();
        let done = Finished(self.activity.clone());
        let router = self.router.clone();
        Box::pin(async move {
            let response = router.oneshot(request.map(axum::body::Body::new)).await;
            drop(done);
            response
        })
    }
}

/// Marks the request finished when dropped, also if the client goes away mid-request.
struct Finished(Arc<Activity>);

impl Drop for Finished {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

/// Serves `router` over TLS on `listener` until `stop` resolves, then drains for at most
/// `drain_timeout`.
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    stop: impl Future<Output = ()>,
    drain_timeout: Duration,
    limits: Limits,
) -> Drained {
    let acceptor = TlsAcceptor::from(tls);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // The watchdog times idle connections and slow headers separately (module docs).
        .header_read_timeout(None)
        .max_headers(H1_MAX_HEADERS)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
        .max_header_list_size(H2_MAX_HEADER_LIST_BYTES)
        .initial_stream_window_size(H2_STREAM_WINDOW_BYTES)
        .initial_connection_window_size(H2_CONNECTION_WINDOW_BYTES)
        .keep_alive_interval(Duration::from_secs(30));
    let builder = Arc::new(builder);
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
        let (tcp, peer) = tokio::select! {
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
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        // Watched from here on: the drain waits for this connection until it is closed, also
        // while its handshake is still under way.
        let watcher = graceful.watcher();
        let (acceptor, builder, limits) = (acceptor.clone(), builder.clone(), limits.clone());
        let router = router.clone();
        tokio::spawn(async move {
            let _permit = permit;
            // rustls reads a record's header, then its body: through a buffer that is one read
            // syscall per request instead of two or more (3.1 -> 2.1 syscalls per review).
            let tcp = tokio::io::BufReader::with_capacity(READ_BUFFER_BYTES, tcp);
            let stream =
                match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
            let activity = Arc::new(Activity::new());
            let http1 = stream.get_ref().1.alpn_protocol() != Some(b"h2");
            let _ = activity.http1.set(http1);
            activity.set(IDLE);
            let io = Watched {
                inner: stream,
                activity: activity.clone(),
            };
            let service = Tracked {
                router,
                activity: activity.clone(),
            };
            // At shutdown the watcher closes the connection gracefully; dropping the future
            // closes it at once.
            let connection = watcher.watch(builder.serve_connection(TokioIo::new(io), service));
            tokio::pin!(connection);
            loop {
                let wait = match activity.check(&limits) {
                    Check::Later(wait) => wait,
                    // Nothing in flight (HTTP/1.1: not even a request's first byte), so closing
                    // at once loses nothing, as a graceful close of an idle connection would.
                    Check::IdleTooLong => {
                        tracing::debug!(%peer, "idle connection closed");
                        return;
                    }
                    Check::HeadersTooSlow => {
                        tracing::debug!(%peer, "request headers not received in time; closing");
                        return;
                    }
                };
                tokio::select! {
                    result = connection.as_mut() => {
                        if let Err(e) = result {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                        return;
                    }
                    () = tokio::time::sleep(wait) => {}
                    () = activity.head_started.notified() => {}
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
        let tls = Arc::new(crate::webhook::tls::server_config(resolver).expect("tls"));
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
                "/slow",
                axum::routing::post(move || async move {
                    started.notify_one();
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    "late"
                }),
            );
        let stop = crate::shutdown::Trigger::default();
        let task = tokio::spawn(serve_tls(
            listener,
            tls,
            router,
            stop.wait(),
            Duration::from_secs(2),
            limits,
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
        let tcp = TcpStream::connect(server.addr).await?;
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
            header_read_timeout: Duration::from_millis(200),
            idle_timeout: Duration::from_millis(1200),
            max_connections: 2,
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
        let server = server(Limits::default()).await;
        let mut client = connect(&server).await.expect("connect");
        assert!(request(&mut client).await.expect("request"));
        server.stop.fire();
        assert!(closed_within(&mut client, Duration::from_secs(2)).await);
        assert_eq!(server.task.await.expect("server"), Drained::Clean);
    }

    #[tokio::test]
    async fn a_request_outlasting_the_drain_timeout_ends_it_timed_out() {
        let server = server(Limits::default()).await;
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
        let server = server(Limits::default()).await;
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

    #[test]
    fn limits_are_ordered_as_the_module_docs_say() {
        let limits = Limits::default();
        // Longer than the API server's idle timeout (Go http.Transport: 90 s).
        assert!(limits.idle_timeout > Duration::from_secs(90));
        assert!(limits.header_read_timeout < limits.idle_timeout);
    }
}

//! The server over real sockets: TLS with ALPN (HTTP/1.1 and HTTP/2), certificate and config
//! reload under live traffic, startup errors, admin endpoints and the shutdown sequence.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Reply, fixture};
use pullsecret_injector::cli::{ClusterArgs, ServeArgs};
use pullsecret_injector::shutdown::Trigger;
use pullsecret_injector::webhook::{self, StartupError};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

const CONFIG: &str = "rules:\n  - registry: docker.io\n    secrets: [dockerhub]\n";

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "test CA");
        let key = KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("CA");
        Self { cert, key }
    }

    /// A serving certificate for localhost/127.0.0.1: (cert PEM, key PEM).
    fn leaf(&self, expired: bool) -> (String, String) {
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .expect("params");
        if expired {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.cert, &self.key).expect("leaf");
        (cert.pem(), key.serialize_pem())
    }

    fn connector(&self, alpn: &[u8]) -> TlsConnector {
        self.connector_with_client_cert(alpn, None)
    }

    /// Trusting this CA as the server's; presenting `client` (cert PEM, key PEM) if given.
    fn connector_with_client_cert(
        &self,
        alpn: &[u8],
        client: Option<(String, String)>,
    ) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.der().clone()).expect("root");
        let provider = pullsecret_injector::webhook::tls::provider();
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots);
        let mut config = match client {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    vec![CertificateDer::from_pem_slice(cert.as_bytes()).expect("cert")],
                    rustls_pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key"),
                )
                .expect("client auth"),
        };
        config.alpn_protocols = vec![alpn.to_vec()];
        TlsConnector::from(Arc::new(config))
    }

    /// A client certificate (what the API server presents from its WebhookAdmission
    /// kubeconfig): (cert PEM, key PEM).
    fn client_leaf(&self) -> (String, String) {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver-webhook-client");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.cert, &self.key).expect("leaf");
        (cert.pem(), key.serialize_pem())
    }
}

fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

/// Polls `check` every 20 ms until it returns `Ok`, and returns that value; panics naming
/// `what` and the last thing `check` saw (its `Err`) if `timeout` passes first.
async fn eventually<T>(
    timeout: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let started = Instant::now();
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) if started.elapsed() >= timeout => {
                panic!("{what}: not within {timeout:?}; last seen: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// The value of one series (`name{labels}`, exactly as exposed) in a Prometheus text body.
fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Waits until the admin port's `series` reads `want`.
async fn await_metric(admin: SocketAddr, series: &str, want: f64) {
    eventually(
        Duration::from_secs(5),
        &format!("{series} == {want}"),
        async || {
            let (_, body) = admin_get(admin, "/metrics")
                .await
                .ok_or("/metrics unreachable")?;
            match metric_value(&body, series) {
                Some(value) if value == want => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
}

/// Writes a file the way Kubernetes updates a mounted volume: a new file renamed into place.
fn write_atomically(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// Writes a new `..data` generation and swaps the `..data` symlink to it in one rename, the
/// way the kubelet updates Secret and ConfigMap volumes.
fn kubelet_swap(server: &Server, generation: &str, cert: &str, key: &str) {
    let dir = server.path(generation);
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("tls.crt"), cert).expect("write");
    std::fs::write(dir.join("tls.key"), key).expect("write");
    let tmp = server.path("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(generation, &tmp).expect("symlink");
    std::fs::rename(&tmp, server.path("..data")).expect("swap ..data");
}

struct Server {
    dir: tempfile::TempDir,
    addr: SocketAddr,
    admin: SocketAddr,
    first_signal: Trigger,
    second_signal: Trigger,
    task: tokio::task::JoinHandle<Result<(), StartupError>>,
}

impl Server {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn args(dir: &Path, addr: SocketAddr, admin: SocketAddr) -> ServeArgs {
    ServeArgs {
        config: dir.join("config.yaml"),
        listen: addr,
        tls_cert: dir.join("tls.crt"),
        tls_key: dir.join("tls.key"),
        admin_listen: admin,
        standalone: true,
        cluster: ClusterArgs {
            kubeconfig: None,
            namespace: Some("pullsecret-injector".into()),
        },
        shutdown_delay: Duration::from_millis(600),
        drain_timeout: Duration::from_secs(5),
        reload_interval: Duration::from_millis(100),
        client_ca: None,
        memory_budget: None,
    }
}

async fn start(ca: &Ca) -> Server {
    start_with(ca, None).await
}

/// With `client_ca` (PEM): `--client-ca`.
async fn start_with(ca: &Ca, client_ca: Option<&str>) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = ca.leaf(false);
    std::fs::write(dir.path().join("tls.crt"), cert).expect("write");
    std::fs::write(dir.path().join("tls.key"), key).expect("write");
    std::fs::write(dir.path().join("config.yaml"), CONFIG).expect("write");
    let mut args = args(dir.path(), free_port(), free_port());
    if let Some(pem) = client_ca {
        std::fs::write(dir.path().join("client-ca.crt"), pem).expect("write");
        args.client_ca = Some(dir.path().join("client-ca.crt"));
    }
    let (addr, admin) = (args.listen, args.admin_listen);
    let (first_signal, second_signal) = (Trigger::default(), Trigger::default());
    let signals = {
        let triggers = [first_signal.clone(), second_signal.clone()];
        let mut calls = 0;
        move || {
            let trigger = triggers[calls.min(1)].clone();
            calls += 1;
            trigger.wait()
        }
    };
    let task = tokio::spawn(webhook::run(args, signals));
    eventually(
        Duration::from_secs(10),
        "the server ready (/readyz 200)",
        async || match admin_get(admin, "/readyz").await {
            Some((200, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    Server {
        dir,
        addr,
        admin,
        first_signal,
        second_signal,
        task,
    }
}

/// A plain HTTP/1.1 GET on the admin port: (status, body).
async fn admin_get(admin: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(admin).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let status = response.get(9..12)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// A TLS connection with a hyper client on it, HTTP/1.1 or HTTP/2 by ALPN.
enum Client {
    H1(hyper::client::conn::http1::SendRequest<String>),
    H2(hyper::client::conn::http2::SendRequest<String>),
}

struct Connection {
    client: Client,
    alpn: Option<Vec<u8>>,
    peer_certificate: Vec<u8>,
}

async fn connect(ca: &Ca, addr: SocketAddr, alpn: &[u8]) -> Result<Connection, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = rustls_pki_types::ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let tls: TlsStream<TcpStream> = ca
        .connector(alpn)
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (_, session) = tls.get_ref();
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    let peer_certificate = session
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .unwrap_or_default();
    let io = hyper_util::rt::TokioIo::new(tls);
    let client = if alpn.as_deref() == Some(b"h2") {
        let (sender, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        Client::H2(sender)
    } else {
        let (sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        Client::H1(sender)
    };
    Ok(Connection {
        client,
        alpn,
        peer_certificate,
    })
}

impl Connection {
    async fn post(&mut self, path: &str, body: &[u8]) -> Result<(u16, Vec<u8>), String> {
        let request = hyper::Request::post(format!("https://localhost{path}"))
            .header("content-type", "application/json")
            .body(String::from_utf8_lossy(body).into_owned())
            .map_err(|e| e.to_string())?;
        let response = match &mut self.client {
            Client::H1(sender) => {
                sender.ready().await.map_err(|e| e.to_string())?;
                sender.send_request(request).await
            }
            Client::H2(sender) => {
                sender.ready().await.map_err(|e| e.to_string())?;
                sender.send_request(request).await
            }
        }
        .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let bytes = http_body_util::BodyExt::collect(response.into_body())
            .await
            .map_err(|e| e.to_string())?;
        Ok((status, bytes.to_bytes().to_vec()))
    }
}

fn leaf_der(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .expect("pem")
        .to_vec()
}

#[tokio::test]
async fn serves_http1_and_http2_by_alpn_with_keep_alive() {
    let ca = Ca::new();
    let server = start(&ca).await;
    for alpn in [&b"http/1.1"[..], b"h2"] {
        let mut conn = connect(&ca, server.addr, alpn).await.expect("connect");
        assert_eq!(conn.alpn.as_deref(), Some(alpn));
        for _ in 0..3 {
            let (status, body) = conn
                .post("/mutate", &fixture("pod-create.json"))
                .await
                .expect("request");
            assert_eq!(status, 200);
            let reply = Reply::parse(&body);
            assert_eq!(reply.response()["allowed"], true);
            assert!(reply.patch.is_some(), "dockerhub rule applies to nginx");
        }
    }
    let (status, body) = admin_get(server.admin, "/metrics").await.expect("metrics");
    assert_eq!(status, 200);
    assert!(
        body.contains(
            r#"pullsecret_injector_admissions_total{endpoint="mutate",outcome="patched"} 6"#
        ),
        "{body}"
    );
    assert!(
        body.contains("pullsecret_injector_certificate_expiry_timestamp_seconds"),
        "{body}"
    );
    assert_eq!(
        admin_get(server.admin, "/livez").await.map(|r| r.0),
        Some(200)
    );
}

#[tokio::test]
async fn certificate_rotates_under_load_with_zero_failed_requests() {
    let ca = Ca::new();
    let server = start(&ca).await;
    let original_pem = std::fs::read_to_string(server.path("tls.crt")).expect("read");
    let original = leaf_der(&original_pem);
    // Lay the files out as the kubelet does for a mounted Secret: tls.crt -> ..data/tls.crt,
    // ..data -> a timestamped directory, swapped atomically on update.
    let key_pem = std::fs::read_to_string(server.path("tls.key")).expect("read");
    kubelet_swap(&server, "v1", &original_pem, &key_pem);
    for name in ["tls.crt", "tls.key"] {
        std::fs::remove_file(server.path(name)).expect("remove");
        std::os::unix::fs::symlink(format!("..data/{name}"), server.path(name)).expect("symlink");
    }
    let ca = Arc::new(ca);
    let stop = Arc::new(AtomicBool::new(false));
    // Per client (HTTP/1.1, HTTP/2): rounds done, each a fresh connection (a new handshake)
    // and 5 keep-alive requests on it.
    let rounds: Arc<[AtomicUsize; 2]> = Arc::default();
    let failed = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for (i, alpn) in [&b"http/1.1"[..], b"h2"].into_iter().enumerate() {
        let (ca, stop, rounds, failed, addr) = (
            ca.clone(),
            stop.clone(),
            rounds.clone(),
            failed.clone(),
            server.addr,
        );
        clients.push(tokio::spawn(async move {
            let body = fixture("pod-create.json");
            while !stop.load(Ordering::Relaxed) {
                let result = async {
                    let mut conn = connect(&ca, addr, alpn).await?;
                    for _ in 0..5 {
                        let (status, _) = conn.post("/mutate", &body).await?;
                        if status != 200 {
                            return Err(format!("status {status}"));
                        }
                    }
                    Ok::<_, String>(())
                }
                .await;
                rounds[i].fetch_add(1, Ordering::Relaxed);
                if let Err(e) = result {
                    eprintln!("request failed: {e}");
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let done = |rounds: &[AtomicUsize; 2]| rounds.each_ref().map(|r| r.load(Ordering::Relaxed));
    // Both clients under way before the swap, so it lands in the middle of their traffic.
    eventually(
        Duration::from_secs(10),
        "2 rounds by each client before the rotation",
        async || {
            let now = done(&rounds);
            if now.iter().all(|&n| n >= 2) {
                Ok(())
            } else {
                Err(format!("rounds {now:?}"))
            }
        },
    )
    .await;

    let (cert, key) = ca.leaf(false);
    kubelet_swap(&server, "v2", &cert, &key);
    let rotated = leaf_der(&cert);
    assert_ne!(rotated, original);
    eventually(
        Duration::from_secs(10),
        "the new certificate served",
        async || {
            let conn = connect(&ca, server.addr, b"http/1.1").await?;
            if conn.peer_certificate == rotated {
                Ok(())
            } else {
                Err("the old certificate".to_string())
            }
        },
    )
    .await;
    // Both clients go on past the swap: 2 more rounds each, so at least one whole round (a
    // handshake with the new certificate, 5 requests) started after it was served.
    let at_rotation = done(&rounds);
    eventually(
        Duration::from_secs(10),
        "2 rounds by each client after the new certificate was served",
        async || {
            let now = done(&rounds);
            if (0..2).all(|i| now[i] >= at_rotation[i] + 2) {
                Ok(())
            } else {
                Err(format!("rounds {now:?}, {at_rotation:?} at the rotation"))
            }
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.expect("client task");
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "failed rounds during rotation (of {:?})",
        done(&rounds)
    );
    // One reload: the first swap (v1) left the bytes unchanged, the second changed both files.
    await_metric(
        server.admin,
        r#"pullsecret_injector_certificate_reloads_total{result="success"}"#,
        1.0,
    )
    .await;
}

#[tokio::test]
async fn broken_certificate_is_rejected_and_the_old_one_keeps_serving() {
    let ca = Ca::new();
    let server = start(&ca).await;
    let original = leaf_der(&std::fs::read_to_string(server.path("tls.crt")).expect("read"));
    // A key that belongs to another certificate, then garbage in the certificate file.
    let (_, other_key) = ca.leaf(false);
    let failures = r#"pullsecret_injector_certificate_reloads_total{result="failure"}"#;
    write_atomically(&server.path("tls.key"), &other_key);
    await_metric(server.admin, failures, 1.0).await;
    write_atomically(
        &server.path("tls.crt"),
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    );
    await_metric(server.admin, failures, 2.0).await;

    let mut conn = connect(&ca, server.addr, b"h2")
        .await
        .expect("still serving");
    assert_eq!(conn.peer_certificate, original);
    assert_eq!(
        conn.post("/mutate", &fixture("pod-create.json"))
            .await
            .expect("request")
            .0,
        200
    );
    let (_, metrics) = admin_get(server.admin, "/metrics").await.expect("metrics");
    assert_eq!(
        metric_value(
            &metrics,
            r#"pullsecret_injector_certificate_reloads_total{result="success"}"#
        ),
        Some(0.0),
        "{metrics}"
    );
}

#[tokio::test]
async fn config_reloads_and_a_broken_file_keeps_the_last_good_one() {
    let ca = Ca::new();
    let server = start(&ca).await;
    let body = fixture("pod-create.json");
    let injected = |reply: &Reply| {
        reply.response()["auditAnnotations"]["injected-secrets"]
            .as_str()
            .map(String::from)
    };
    let mut conn = connect(&ca, server.addr, b"http/1.1")
        .await
        .expect("connect");
    let (_, answer) = conn.post("/mutate", &body).await.expect("request");
    assert_eq!(
        injected(&Reply::parse(&answer)).as_deref(),
        Some("dockerhub")
    );

    let config = format!("{CONFIG}  - registry: ghcr.io/acme\n    secrets: [ghcr-acme]\n");
    write_atomically(&server.path("config.yaml"), &config);
    eventually(
        Duration::from_secs(5),
        "the new configuration applied (injected ghcr-acme,dockerhub)",
        async || {
            let (_, answer) = conn.post("/mutate", &body).await?;
            match injected(&Reply::parse(&answer)) {
                Some(s) if s == "ghcr-acme,dockerhub" => Ok(()),
                other => Err(format!("injected {other:?}")),
            }
        },
    )
    .await;

    write_atomically(
        &server.path("config.yaml"),
        "rules:\n  - registry: '*.io:x'\n    secrets: [x]\n",
    );
    await_metric(
        server.admin,
        r#"pullsecret_injector_config_reloads_total{result="failure"}"#,
        1.0,
    )
    .await;
    let (_, answer) = conn.post("/mutate", &body).await.expect("request");
    assert_eq!(
        injected(&Reply::parse(&answer)).as_deref(),
        Some("ghcr-acme,dockerhub"),
        "last good config serves"
    );
    let (_, metrics) = admin_get(server.admin, "/metrics").await.expect("metrics");
    assert_eq!(
        metric_value(
            &metrics,
            r#"pullsecret_injector_config_reloads_total{result="success"}"#
        ),
        Some(1.0),
        "{metrics}"
    );
}

/// Reads an HTTP/1.1 response with Content-Length from a raw stream.
async fn read_response(stream: &mut TlsStream<TcpStream>) -> Result<(u16, Vec<u8>), String> {
    read_response_with_head(stream)
        .await
        .map(|(status, _, body)| (status, body))
}

/// Status, lowercased head, body.
async fn read_response_with_head(
    stream: &mut TlsStream<TcpStream>,
) -> Result<(u16, String, Vec<u8>), String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
                return Ok((status, head, buf[end + 4..end + 4 + length].to_vec()));
            }
        }
        let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn raw_connect(ca: &Ca, addr: SocketAddr) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.expect("tcp");
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    ca.connector(b"http/1.1")
        .connect(name, tcp)
        .await
        .expect("tls")
}

/// Waits until the first signal is taken: `/readyz` answers 503 "shutting down".
async fn not_ready(admin: SocketAddr) {
    eventually(
        Duration::from_secs(5),
        "/readyz 503 \"shutting down\" after the first signal",
        async || match admin_get(admin, "/readyz").await {
            Some((503, reason)) if reason.trim() == "shutting down" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await
}

#[tokio::test]
async fn sigterm_reports_not_ready_closes_idle_connections_and_drains_in_flight() {
    let ca = Ca::new();
    let server = start(&ca).await;
    let body = fixture("pod-create.json");

    // An idle keep-alive connection that has served one request.
    let mut idle = raw_connect(&ca, server.addr).await;
    let request = format!(
        "POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    idle.write_all(request.as_bytes()).await.expect("write");
    idle.write_all(&body).await.expect("write");
    let (status, head, _) = read_response_with_head(&mut idle).await.expect("response");
    assert_eq!(status, 200);
    assert!(!head.contains("connection: close"), "{head}");

    // An in-flight request: headers and half the body sent before the signal.
    let mut in_flight = raw_connect(&ca, server.addr).await;
    in_flight
        .write_all(request.as_bytes())
        .await
        .expect("write");
    in_flight
        .write_all(&body[..body.len() / 2])
        .await
        .expect("write");
    in_flight.flush().await.expect("flush");

    server.first_signal.fire();
    not_ready(server.admin).await;
    // Still answering during the shutdown delay, on new connections too.
    let mut late = connect(&ca, server.addr, b"h2")
        .await
        .expect("still accepting during the delay");
    assert_eq!(late.post("/mutate", &body).await.expect("request").0, 200);
    // HTTP/1.1 answers during the delay ask the client to close the connection, so it never
    // writes a request into a connection the server is about to close.
    let mut late_h1 = raw_connect(&ca, server.addr).await;
    late_h1.write_all(request.as_bytes()).await.expect("write");
    late_h1.write_all(&body).await.expect("write");
    let (status, head, _) = read_response_with_head(&mut late_h1)
        .await
        .expect("response during the delay");
    assert_eq!(status, 200);
    assert!(head.contains("connection: close"), "{head}");

    // After the delay the idle connection is closed by the server.
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(3), idle.read(&mut byte)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "idle keep-alive connection not closed: {closed:?}"
    );
    // New connections are refused once draining.
    assert!(
        TcpStream::connect(server.addr).await.is_err(),
        "listener should be closed"
    );

    // The in-flight request completes.
    in_flight
        .write_all(&body[body.len() / 2..])
        .await
        .expect("write rest");
    let (status, answer) = read_response(&mut in_flight)
        .await
        .expect("in-flight answered");
    assert_eq!(status, 200);
    assert!(Reply::parse(&answer).patch.is_some());
    drop(in_flight);

    let result = tokio::time::timeout(Duration::from_secs(5), server.task)
        .await
        .expect("exits")
        .expect("task");
    assert!(result.is_ok(), "{result:?}");
    let _ = server.second_signal;
    let _ = server.dir;
}

#[tokio::test]
async fn second_signal_forces_exit() {
    let ca = Ca::new();
    let server = start(&ca).await;
    server.first_signal.fire();
    // The second signal must come during the shutdown the first one started.
    not_ready(server.admin).await;
    server.second_signal.fire();
    let result = tokio::time::timeout(Duration::from_secs(2), server.task)
        .await
        .expect("exits")
        .expect("task");
    assert!(matches!(result, Err(StartupError::Forced)), "{result:?}");
}

/// One admission over a connection made by `connector`: the status, or the error that ended
/// the handshake or the request.
async fn admit_with(connector: TlsConnector, addr: SocketAddr) -> Result<u16, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = rustls_pki_types::ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let body = fixture("pod-create.json");
    let head = format!(
        "POST /mutate HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    // TLS 1.3: the client's side of the handshake ends before the server has checked the
    // client certificate, so a refusal shows on the first write or read.
    tls.write_all(head.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    tls.write_all(&body)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let (status, _) = read_response(&mut tls).await?;
    Ok(status)
}

#[tokio::test]
async fn with_a_client_ca_only_its_clients_complete_the_handshake() {
    let ca = Ca::new();
    let api_server_ca = Ca::new();
    let server = start_with(&ca, Some(&api_server_ca.cert.pem())).await;
    // The API server's client certificate: served, and an Authorization header (KEP-6060's
    // bearer tokens, not checked yet) changes nothing.
    let client = ca.connector_with_client_cert(b"http/1.1", Some(api_server_ca.client_leaf()));
    assert_eq!(admit_with(client, server.addr).await, Ok(200));
    let client = ca.connector_with_client_cert(b"h2", Some(api_server_ca.client_leaf()));
    let tcp = TcpStream::connect(server.addr).await.expect("tcp");
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    let tls = client.connect(name, tcp).await.expect("h2 handshake");
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .expect("h2");
    tokio::spawn(conn);
    let request = hyper::Request::post("https://localhost/mutate")
        .header("authorization", "Bearer not-checked")
        .body(String::from_utf8_lossy(&fixture("pod-create.json")).into_owned())
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    assert_eq!(response.status(), 200);

    // No certificate, or one from another CA: no request is ever answered.
    let refused = [
        ("no client certificate", ca.connector(b"http/1.1")),
        (
            "a certificate of another CA",
            ca.connector_with_client_cert(b"http/1.1", Some(Ca::new().client_leaf())),
        ),
    ];
    for (what, connector) in refused {
        let result = admit_with(connector, server.addr).await;
        assert!(result.is_err(), "{what}: answered {result:?}");
    }
    // The process is unharmed and counted every admission it answered: exactly two.
    let (_, metrics) = admin_get(server.admin, "/metrics").await.expect("metrics");
    let answered: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("pullsecret_injector_admissions_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(answered, 2.0, "{metrics}");
}

#[tokio::test]
async fn startup_errors_name_the_flag() {
    let ca = Ca::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (cert, key) = ca.leaf(false);
    let (_, other_key) = ca.leaf(false);
    let (expired_cert, expired_key) = ca.leaf(true);
    std::fs::write(d.join("config.yaml"), CONFIG).expect("write");
    let cases: Vec<(&str, Option<&str>, Option<&str>, &str)> = vec![
        ("missing cert", None, Some(&key), "--tls-cert"),
        ("missing key", Some(&cert), None, "--tls-key"),
        (
            "key of another cert",
            Some(&cert),
            Some(&other_key),
            "do not belong together",
        ),
        (
            "expired",
            Some(&expired_cert),
            Some(&expired_key),
            "expired",
        ),
        (
            "not a certificate",
            Some("hello"),
            Some(&key),
            "no PEM certificate found",
        ),
        ("not a key", Some(&cert), Some("hello"), "--tls-key"),
    ];
    for (what, cert, key, want) in cases {
        let _ = std::fs::remove_file(d.join("tls.crt"));
        let _ = std::fs::remove_file(d.join("tls.key"));
        if let Some(cert) = cert {
            std::fs::write(d.join("tls.crt"), cert).expect("write");
        }
        if let Some(key) = key {
            std::fs::write(d.join("tls.key"), key).expect("write");
        }
        let result = webhook::run(args(d, free_port(), free_port()), || {
            std::future::pending::<()>()
        })
        .await;
        let message = result.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains(want), "{what}: {message:?}");
    }
    std::fs::write(d.join("tls.crt"), &cert).expect("write");
    std::fs::write(d.join("tls.key"), &key).expect("write");
    std::fs::write(d.join("config.yaml"), "mode: sometimes\n").expect("write");
    let result = webhook::run(args(d, free_port(), free_port()), || {
        std::future::pending::<()>()
    })
    .await;
    let message = result.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        message.contains("--config") && message.contains("mode: 'sometimes'"),
        "{message}"
    );
    std::fs::write(d.join("config.yaml"), CONFIG).expect("write");
    std::fs::write(d.join("not-a-ca.pem"), "hello").expect("write");
    for (file, want) in [
        ("missing.pem", "--client-ca"),
        ("not-a-ca.pem", "no PEM certificate found"),
    ] {
        let mut args = args(d, free_port(), free_port());
        args.client_ca = Some(d.join(file));
        let result = webhook::run(args, std::future::pending::<()>).await;
        let message = result.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            message.contains("--client-ca") && message.contains(want),
            "{file}: {message}"
        );
    }
}

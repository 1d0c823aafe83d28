//! The server as a library: `Server::start` / `Running::shutdown` without signals, and the
//! admin listener served on its own, as another subcommand would.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use pullsecret_injector::cli::{Cli, Command, ServeArgs};
use pullsecret_injector::shutdown::Trigger;
use pullsecret_injector::webhook::{Drained, Server, StartupError, admin};
use rcgen::{CertificateParams, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A certificate for localhost in a tempdir, and a client that trusts it.
struct Setup {
    dir: tempfile::TempDir,
    connector: TlsConnector,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = KeyPair::generate().expect("key");
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    std::fs::write(dir.path().join("tls.crt"), cert.pem()).expect("write");
    std::fs::write(dir.path().join("tls.key"), key.serialize_pem()).expect("write");
    std::fs::copy(
        common::fixture_path("config.yaml"),
        dir.path().join("config.yaml"),
    )
    .expect("copy config");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).expect("root");
    let mut client =
        rustls::ClientConfig::builder_with_provider(pullsecret_injector::webhook::tls::provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    Setup {
        dir,
        connector: TlsConnector::from(Arc::new(client)),
    }
}

/// `serve` arguments as the command line gives them: both listeners on port 0, standalone.
fn args(setup: &Setup, shutdown_delay: &str) -> ServeArgs {
    let path = |name: &str| setup.dir.path().join(name).display().to_string();
    let cli = Cli::try_parse_from([
        "pullsecret-injector".to_string(),
        "serve".into(),
        "--standalone".into(),
        "--config".into(),
        path("config.yaml"),
        "--tls-cert".into(),
        path("tls.crt"),
        "--tls-key".into(),
        path("tls.key"),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--admin-listen".into(),
        "127.0.0.1:0".into(),
        "--shutdown-delay".into(),
        shutdown_delay.into(),
        "--drain-timeout".into(),
        "5s".into(),
    ])
    .expect("serve arguments");
    match cli.command {
        Command::Serve(args) => args,
        _ => panic!("not the serve command"),
    }
}

/// A plain HTTP/1.1 GET: (status, body), or None if the connection fails.
async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let status = response.get(9..12)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    Some((status, body))
}

async fn connect(setup: &Setup, addr: SocketAddr) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    setup.connector.connect(name, tcp).await
}

/// Posts the pod-create fixture; (status line, head lowercased).
async fn review(client: &mut TlsStream<TcpStream>) -> std::io::Result<(String, String)> {
    let body = common::fixture("pod-create.json");
    let head = format!(
        "POST /mutate HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    client.write_all(head.as_bytes()).await?;
    client.write_all(&body).await?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut read = 0;
    loop {
        let n = client.read(&mut buf[read..]).await?;
        if n == 0 {
            break;
        }
        read += n;
        let text = String::from_utf8_lossy(&buf[..read]).to_string();
        if let Some((head, rest)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|line| {
                    line.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_string)
                })
                .and_then(|n| n.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if rest.len() >= length {
                let status = head.lines().next().unwrap_or_default().to_string();
                return Ok((status, head.to_ascii_lowercase()));
            }
        }
    }
    Err(std::io::Error::other(
        "connection closed before a whole response",
    ))
}

/// Polls `condition` every 10 ms for at most `within`.
async fn eventually<F: Future<Output = bool>>(
    within: Duration,
    mut condition: impl FnMut() -> F,
) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if condition().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test]
async fn start_serves_on_the_ports_chosen_and_shutdown_drains() {
    let setup = setup();
    let running = Server::start(args(&setup, "400ms")).await.expect("start");
    let (webhook, admin) = (running.webhook_addr(), running.admin_addr());
    assert_ne!(webhook.port(), 0);
    assert_ne!(admin.port(), 0);
    assert!(running.readiness().is_ready());
    assert_eq!(get(admin, "/readyz").await, Some((200, "ok\n".into())));

    let mut client = connect(&setup, webhook).await.expect("connect");
    let (status, head) = review(&mut client).await.expect("review");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(!head.contains("connection: close"), "{head}");

    let shutdown = tokio::spawn(running.shutdown());
    // Not ready at once, but still answering during the delay, asking clients to go away.
    assert!(
        eventually(Duration::from_secs(2), || async {
            get(admin, "/readyz").await == Some((503, "shutting down\n".into()))
        })
        .await
    );
    let (status, head) = review(&mut client).await.expect("review during the delay");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(head.contains("connection: close"), "{head}");

    assert_eq!(shutdown.await.expect("shutdown"), Drained::Clean);
    assert!(
        TcpStream::connect(webhook).await.is_err(),
        "webhook still accepting"
    );
    assert!(
        TcpStream::connect(admin).await.is_err(),
        "admin still accepting"
    );
}

#[tokio::test]
async fn a_server_can_be_started_again_on_the_same_ports_after_shutdown() {
    let setup = setup();
    let first = Server::start(args(&setup, "0s")).await.expect("start");
    let (webhook, admin) = (first.webhook_addr(), first.admin_addr());
    assert_eq!(first.shutdown().await, Drained::Clean);

    let mut again = args(&setup, "0s");
    again.listen = webhook;
    again.admin_listen = admin;
    let second = Server::start(again).await.expect("start again");
    let mut client = connect(&setup, second.webhook_addr())
        .await
        .expect("connect");
    assert_eq!(
        review(&mut client).await.expect("review").0,
        "HTTP/1.1 200 OK"
    );
    drop(client);
    assert_eq!(second.shutdown().await, Drained::Clean);
}

#[tokio::test]
async fn start_fails_with_the_flag_of_a_port_in_use() {
    let setup = setup();
    let taken = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let mut args = args(&setup, "0s");
    args.admin_listen = taken.local_addr().expect("addr");
    match Server::start(args).await {
        Err(error @ StartupError::Bind { .. }) => {
            assert!(
                error.to_string().starts_with("--admin-listen 127.0.0.1:"),
                "{error}"
            )
        }
        Err(other) => panic!("unexpected error: {other}"),
        Ok(_) => panic!("started on a port in use"),
    }
}

#[tokio::test]
async fn the_admin_listener_serves_on_its_own_until_stopped() {
    // A standalone app is ready but for TLS, as a subcommand without a TLS listener starts.
    let app = common::app();
    let readiness = app.readiness.clone();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = Trigger::default();
    let task = admin::serve(listener, app, stop.wait());

    assert_eq!(get(addr, "/livez").await, Some((200, "ok\n".into())));
    assert_eq!(
        get(addr, "/readyz").await,
        Some((503, "TLS certificate not loaded\n".into()))
    );
    readiness.set_tls_loaded();
    assert_eq!(get(addr, "/readyz").await, Some((200, "ok\n".into())));
    let (status, body) = get(addr, "/metrics").await.expect("metrics");
    assert_eq!(status, 200);
    assert!(body.ends_with("# EOF\n"), "{body}");
    // Standalone: the build and the admission series; none that only the cluster side moves.
    let build = format!(
        "pullsecret_injector_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    assert!(body.contains(&build), "{body}");
    assert!(
        body.contains("pullsecret_injector_admissions_total"),
        "{body}"
    );
    for cluster_only in [
        "last_sync_timestamp_seconds",
        "sync_conflicts",
        "secrets_synced",
        "sync_failures",
        "source_secret_errors",
        "watch_",
        "leader",
        "repairs",
        "rule_credential_mismatch",
    ] {
        assert!(
            !body.contains(&format!("pullsecret_injector_{cluster_only}")),
            "{cluster_only} in standalone metrics: {body}"
        );
    }

    stop.fire();
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("admin listener stopped")
        .expect("admin task");
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn the_admin_port_answers_probes_while_one_address_holds_200_idle_connections() {
    let app = common::app();
    app.readiness.set_tls_loaded();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = Trigger::default();
    let task = admin::serve(listener, app, stop.wait());
    // 200 connections from 127.0.0.2 that never send a byte.
    let mut half_open = Vec::new();
    for _ in 0..200 {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.2:0".parse().expect("addr"))
            .expect("bind");
        if let Ok(stream) = socket.connect(addr).await {
            half_open.push(stream);
        }
    }
    // The kubelet's probe, from another address, is answered at once, every time.
    for _ in 0..5 {
        let started = std::time::Instant::now();
        assert_eq!(get(addr, "/readyz").await, Some((200, "ok\n".into())));
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "a probe took {:?}",
            started.elapsed()
        );
    }
    // Refusals are counted: the connections past the address's share were closed at accept.
    let (_, body) = get(addr, "/metrics").await.expect("metrics");
    let refused = body
        .lines()
        .find(|l| {
            l.starts_with(
                "pullsecret_injector_requests_refused_total{listener=\"admin\",reason=\"peer_connections\"}",
            )
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
    assert!(
        refused.is_some_and(|n| n >= 100.0),
        "refused connections: {refused:?}"
    );
    // A request body is refused on the admin port.
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"POST /readyz HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\n\r\nhello")
        .await
        .expect("write");
    let mut buf = vec![0u8; 256];
    let n = stream.read(&mut buf).await.expect("read");
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 413"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    drop(half_open);
    stop.fire();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("admin listener stopped")
        .expect("admin task");
}

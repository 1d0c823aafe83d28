//! The credential probe's client.
//!
//! Always run: a registry double on loopback (plain HTTP, so the key is written `http://`)
//! answering each challenge kind, its errors, and a redirect.
//!
//! Against the real distribution registry (`docker-registry`), started by
//! `tests/probe/run.sh`: `#[ignore]`d, run with `--ignored` and these variables set:
//!
//! - `PROBE_REGISTRY`: `host:port` of the registry (TLS; its CA in `SSL_CERT_FILE`).
//! - `PROBE_USERNAME`, `PROBE_PASSWORD`: the credential the probe presents.
//! - `PROBE_EXPECT`: `accepted` or `rejected`.
//! - Token auth only (`PROBE_TOKEN_LISTEN` set): this test serves the registry's token realm
//!   itself on that address (TLS with `PROBE_TLS_CERT`/`PROBE_TLS_KEY`), issuing ES256 JWTs
//!   signed with `PROBE_TOKEN_KEY` (PKCS#8) whose certificate `PROBE_TOKEN_CERT` is the
//!   registry's `rootcertbundle` and travels in the JWT's `x5c` header, for
//!   `PROBE_TOKEN_ISSUER`/`PROBE_TOKEN_SERVICE`, to the one user
//!   `PROBE_TOKEN_USERNAME`/`PROBE_TOKEN_PASSWORD` (anything else: 401).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use pullsecret_injector::core::dockercfg::SourceSecret;
use pullsecret_injector::core::probe::{Outcome, targets};
use pullsecret_injector::probe::{Prober, system_roots};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} must be set (see tests/probe/run.sh)"))
}

fn source_secret(registry: &str, username: &str, password: &str) -> SourceSecret {
    let b64 = base64::engine::general_purpose::STANDARD;
    let auth = b64.encode(format!("{username}:{password}"));
    let config = serde_json::json!({"auths": {registry: {"auth": auth}}});
    SourceSecret::from_body(
        "probe-test",
        &serde_json::json!({
            "type": "kubernetes.io/dockerconfigjson",
            "data": {".dockerconfigjson": b64.encode(config.to_string())},
        }),
    )
}

/// How the double answers `/v2/` and `/token`.
#[derive(Clone, Copy)]
enum Double {
    Basic,
    Bearer,
    /// Bearer whose token endpoint answers JSON without a token.
    BearerNoToken,
    Open,
    ServerError,
    Redirect,
    NoChallenge401,
}

const GOOD: &str = "alice:s3cret";

async fn start_double(kind: Double) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let base = format!("http://{addr}");
    let realm = format!("{base}/token");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let realm = realm.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let response = double_answer(kind, &realm, &request);
                    async move { Ok::<_, std::convert::Infallible>(response) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    base
}

fn double_answer(kind: Double, realm: &str, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let auth = request
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let basic_ok = auth == format!("Basic {}", b64.encode(GOOD));
    let reply = |status: u16, headers: &[(&str, String)], body: &str| {
        let mut builder = Response::builder().status(status);
        for (k, v) in headers {
            builder = builder.header(*k, v);
        }
        builder
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("response")
    };
    let challenge = |value: String| [("www-authenticate", value)];
    match (kind, request.uri().path()) {
        (Double::Basic, "/v2/") if basic_ok => reply(200, &[], "{}"),
        (Double::Basic, "/v2/") => reply(401, &challenge(r#"Basic realm="double""#.into()), ""),
        (Double::Bearer | Double::BearerNoToken, "/v2/") if auth == "Bearer tok-123" => {
            reply(200, &[], "{}")
        }
        (Double::Bearer | Double::BearerNoToken, "/v2/") => reply(
            401,
            &challenge(format!(
                r#"Bearer realm="{realm}",service="double",scope="registry:catalog:*""#
            )),
            "",
        ),
        (Double::Bearer, "/token") if basic_ok => reply(200, &[], r#"{"token":"tok-123"}"#),
        (Double::BearerNoToken, "/token") if basic_ok => reply(200, &[], r#"{"expires_in":60}"#),
        (Double::Bearer | Double::BearerNoToken, "/token") => reply(401, &[], "{}"),
        (Double::Open, _) => reply(200, &[], "{}"),
        (Double::ServerError, _) => reply(503, &[], ""),
        (Double::Redirect, _) => reply(307, &[("location", "http://127.0.0.1:1/v2/".into())], ""),
        (Double::NoChallenge401, _) => reply(401, &[], ""),
        _ => reply(404, &[], ""),
    }
}

#[tokio::test]
async fn the_client_follows_each_challenge_and_names_what_went_wrong() {
    use pullsecret_injector::core::probe::Inconclusive;
    let prober = Prober::new(rustls::RootCertStore::empty()).expect("prober");
    let cases = [
        (Double::Basic, GOOD, Outcome::Accepted),
        (Double::Basic, "alice:wrong", Outcome::Rejected),
        (Double::Bearer, GOOD, Outcome::Accepted),
        (Double::Bearer, "alice:wrong", Outcome::Rejected),
        (
            Double::BearerNoToken,
            GOOD,
            Outcome::Inconclusive(Inconclusive::BadTokenResponse),
        ),
        (
            Double::Open,
            GOOD,
            Outcome::Inconclusive(Inconclusive::NoChallenge),
        ),
        (
            Double::ServerError,
            GOOD,
            Outcome::Inconclusive(Inconclusive::ServerError),
        ),
        (
            Double::Redirect,
            GOOD,
            Outcome::Inconclusive(Inconclusive::UnexpectedStatus),
        ),
        (
            Double::NoChallenge401,
            GOOD,
            Outcome::Inconclusive(Inconclusive::BadChallenge),
        ),
    ];
    for (kind, credential, want) in cases {
        let base = start_double(kind).await;
        let (username, password) = credential.split_once(':').expect("pair");
        let (found, _) = targets(&source_secret(&base, username, password));
        assert_eq!(found.len(), 1);
        assert!(found[0].plain_http, "{base}");
        assert_eq!(
            prober.probe(&found[0]).await,
            want,
            "{credential} at {base}"
        );
    }
    // Nothing listening: a transport error, not a rejection.
    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = closed.local_addr().expect("addr");
    drop(closed);
    let (found, _) = targets(&source_secret(&format!("http://{addr}"), "alice", "s3cret"));
    assert_eq!(
        prober.probe(&found[0]).await,
        Outcome::Inconclusive(Inconclusive::Transport)
    );
    // A key without http:// is asked over HTTPS, never in plain text: the double speaks plain
    // HTTP, so the TLS handshake fails (a transport error) and no credential crosses in clear.
    let base = start_double(Double::Basic).await;
    let (found, _) = targets(&source_secret(
        base.trim_start_matches("http://"),
        "alice",
        "s3cret",
    ));
    assert!(!found[0].plain_http);
    assert_eq!(
        prober.probe(&found[0]).await,
        Outcome::Inconclusive(Inconclusive::Transport)
    );
}

#[tokio::test]
#[ignore = "needs a running registry: tests/probe/run.sh"]
async fn registry_answers_the_credential_as_expected() {
    let registry = env("PROBE_REGISTRY");
    let expected = match env("PROBE_EXPECT").as_str() {
        "accepted" => Outcome::Accepted,
        "rejected" => Outcome::Rejected,
        other => panic!("PROBE_EXPECT={other}: expected accepted or rejected"),
    };
    let token_requests = Arc::new(AtomicUsize::new(0));
    if let Ok(listen) = std::env::var("PROBE_TOKEN_LISTEN") {
        start_token_server(&listen, token_requests.clone()).await;
    }
    let secret = source_secret(&registry, &env("PROBE_USERNAME"), &env("PROBE_PASSWORD"));
    let (found, skipped) = targets(&secret);
    assert!(skipped.is_empty(), "{skipped:?}");
    assert_eq!(found.len(), 1, "{found:?}");
    let prober = Prober::new(system_roots().expect("roots")).expect("prober");
    let outcome = prober.probe(&found[0]).await;
    assert_eq!(outcome, expected, "probe of {registry}");
    if std::env::var("PROBE_TOKEN_LISTEN").is_ok() {
        // The Bearer challenge was followed: the token realm was asked exactly once.
        assert_eq!(token_requests.load(Ordering::SeqCst), 1, "token requests");
    }
}

struct TokenIssuer {
    key: EcdsaKeyPair,
    cert_der: Vec<u8>,
    issuer: String,
    service: String,
    basic: String,
    requests: Arc<AtomicUsize>,
}

impl TokenIssuer {
    fn jwt(&self, subject: &str) -> String {
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let std = base64::engine::general_purpose::STANDARD;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let header =
            serde_json::json!({"typ": "JWT", "alg": "ES256", "x5c": [std.encode(&self.cert_der)]});
        let claims = serde_json::json!({
            "iss": self.issuer, "sub": subject, "aud": self.service,
            "exp": now + 300, "nbf": now - 10, "iat": now, "jti": format!("probe-{now}"),
            "access": [],
        });
        let signing_input = format!(
            "{}.{}",
            url.encode(header.to_string()),
            url.encode(claims.to_string())
        );
        let signature = self
            .key
            .sign(&SystemRandom::new(), signing_input.as_bytes())
            .expect("sign");
        format!("{signing_input}.{}", url.encode(signature.as_ref()))
    }

    fn answer(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let query = request.uri().query().unwrap_or_default();
        let authorization = request
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let service_ok = query
            .split('&')
            .any(|p| p == format!("service={}", self.service));
        let (status, body) = if !service_ok {
            (
                StatusCode::BAD_REQUEST,
                r#"{"error":"service"}"#.to_string(),
            )
        } else if authorization == Some(self.basic.as_str()) {
            let subject = env("PROBE_TOKEN_USERNAME");
            (
                StatusCode::OK,
                serde_json::json!({"token": self.jwt(&subject), "expires_in": 300}).to_string(),
            )
        } else {
            (
                StatusCode::UNAUTHORIZED,
                r#"{"error":"unauthorized"}"#.to_string(),
            )
        };
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .expect("response")
    }
}

async fn start_token_server(listen: &str, requests: Arc<AtomicUsize>) {
    let key_pem = std::fs::read(env("PROBE_TOKEN_KEY")).expect("PROBE_TOKEN_KEY");
    let pkcs8 = PrivatePkcs8KeyDer::from_pem_slice(&key_pem).expect("PKCS#8 key");
    let key = EcdsaKeyPair::from_pkcs8(
        &ECDSA_P256_SHA256_FIXED_SIGNING,
        pkcs8.secret_pkcs8_der(),
        &SystemRandom::new(),
    )
    .expect("P-256 key");
    let cert_pem = std::fs::read(env("PROBE_TOKEN_CERT")).expect("PROBE_TOKEN_CERT");
    let cert_der = CertificateDer::from_pem_slice(&cert_pem)
        .expect("signing cert")
        .to_vec();
    let b64 = base64::engine::general_purpose::STANDARD;
    let basic = format!(
        "Basic {}",
        b64.encode(format!(
            "{}:{}",
            env("PROBE_TOKEN_USERNAME"),
            env("PROBE_TOKEN_PASSWORD")
        ))
    );
    let issuer = Arc::new(TokenIssuer {
        key,
        cert_der,
        issuer: env("PROBE_TOKEN_ISSUER"),
        service: env("PROBE_TOKEN_SERVICE"),
        basic,
        requests,
    });

    let tls_chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(env("PROBE_TLS_CERT"))
            .expect("PROBE_TLS_CERT")
            .collect::<Result<_, _>>()
            .expect("TLS chain");
    let tls_key = PrivateKeyDer::from_pem_file(env("PROBE_TLS_KEY")).expect("PROBE_TLS_KEY");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(tls_chain, tls_key)
        .expect("TLS config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = TcpListener::bind(listen).await.expect("token listen");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let issuer = issuer.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let response = issuer.answer(&request);
                    async move { Ok::<_, std::convert::Infallible>(response) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

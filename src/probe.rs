//! The credential probe's HTTP client (`credentialProbe: true`, run by `controller`): asks one
//! registry whether it accepts one credential, the way [`crate::core::probe`] decides, pulling
//! nothing (`GET /v2/`, and the token endpoint a Bearer challenge names).
//!
//! - HTTPS is verified against the system roots (the platform store, plus the usual Linux
//!   bundle files) and the bundle `SSL_CERT_FILE` names; plain HTTP only for a key written
//!   with `http://` (the token realm may be `http://` only when the registry itself is).
//! - Every request has its own timeout ([`REQUEST_TIMEOUT`]); a token answer is read up to
//!   [`MAX_TOKEN_BODY`]; redirects are not followed (a redirect is inconclusive).
//! - Credentials never reach a log or an error: failures are [`Outcome`]s whose reasons are
//!   stable labels; only status codes and host names are logged.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::header::{AUTHORIZATION, HeaderValue, USER_AGENT, WWW_AUTHENTICATE};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::core::probe::{self, Inconclusive, Next, Outcome, Target};

/// One request's limit, connection included. Registries answer `/v2/` in milliseconds; 10 s
/// tolerates a slow token service without letting one dead host hold the probe loop.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// TCP connect limit (inside [`REQUEST_TIMEOUT`]): an unreachable host fails fast.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A token answer is a JWT or an opaque string in a small JSON object; 64 KiB is far above
/// any registry's and bounds what a hostile endpoint can make us hold.
pub const MAX_TOKEN_BODY: usize = 64 * 1024;

/// System bundle files read besides the platform store (Debian/Ubuntu/Alpine, RHEL/Fedora,
/// openSUSE), because `rustls-native-certs` reads only `SSL_CERT_FILE` when it is set.
const SYSTEM_BUNDLES: [&str; 3] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
];

#[derive(Debug, thiserror::Error)]
pub enum ProbeSetupError {
    #[error("no trusted root certificates: neither the system store nor SSL_CERT_FILE had one")]
    NoRoots,
    #[error("TLS client configuration: {0}")]
    Tls(String),
}

/// The system roots plus `SSL_CERT_FILE`'s certificates. Unreadable or unparsable
/// certificates are skipped (counted in the log line), as curl and Go skip them.
pub fn system_roots() -> Result<RootCertStore, ProbeSetupError> {
    let mut roots = RootCertStore::empty();
    let mut found: Vec<CertificateDer<'static>> = rustls_native_certs::load_native_certs().certs;
    let mut files: Vec<std::path::PathBuf> = SYSTEM_BUNDLES.iter().map(Into::into).collect();
    if let Some(file) = std::env::var_os("SSL_CERT_FILE") {
        files.push(file.into());
    }
    for file in files {
        if let Ok(pem) = std::fs::read(&file) {
            found.extend(CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok));
        }
    }
    let (added, ignored) = roots.add_parsable_certificates(found);
    tracing::debug!(added, ignored, "credential probe: trusted roots loaded");
    if roots.is_empty() {
        return Err(ProbeSetupError::NoRoots);
    }
    Ok(roots)
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// Asks registries about credentials. Cheap to clone; connections are pooled.
#[derive(Clone)]
pub struct Prober {
    client: HttpsClient,
}

impl Prober {
    /// A client trusting `roots` (normally [`system_roots`]).
    pub fn new(roots: RootCertStore) -> Result<Self, ProbeSetupError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ProbeSetupError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(Self { client })
    }

    /// The whole conversation for one target: anonymous `/v2/`, then Basic or the token flow.
    pub async fn probe(&self, target: &Target) -> Outcome {
        let v2 = target.v2_url();
        let anonymous = match self.get(&v2, None, target.plain_http).await {
            Ok(answer) => answer,
            Err(reason) => return Outcome::Inconclusive(reason),
        };
        let challenges: Vec<&str> = anonymous
            .headers
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        match probe::after_anonymous(anonymous.status, &challenges) {
            Next::Done(outcome) => outcome,
            Next::Basic => {
                let basic = target.credential.basic_header();
                match self.get(&v2, Some(&basic), target.plain_http).await {
                    Ok(answer) => probe::after_credential(answer.status),
                    Err(reason) => Outcome::Inconclusive(reason),
                }
            }
            Next::Token { url } => {
                let basic = target.credential.basic_header();
                let answer = match self.get(&url, Some(&basic), target.plain_http).await {
                    Ok(answer) => answer,
                    Err(reason) => return Outcome::Inconclusive(reason),
                };
                let outcome = probe::after_credential(answer.status);
                if outcome != Outcome::Accepted {
                    return outcome;
                }
                let Some(token) = probe::token_from_json(&answer.body) else {
                    return Outcome::Inconclusive(Inconclusive::BadTokenResponse);
                };
                let bearer = format!("Bearer {token}");
                match self.get(&v2, Some(&bearer), target.plain_http).await {
                    Ok(answer) => probe::after_credential(answer.status),
                    Err(reason) => Outcome::Inconclusive(reason),
                }
            }
        }
    }

    /// One GET with its timeout; the body is read up to [`MAX_TOKEN_BODY`]. `plain_http_allowed`:
    /// an `http://` URL is refused unless the key itself was written with `http://`.
    async fn get(
        &self,
        url: &str,
        authorization: Option<&str>,
        plain_http_allowed: bool,
    ) -> Result<Answer, Inconclusive> {
        if url.starts_with("http://") && !plain_http_allowed {
            return Err(Inconclusive::BadChallenge);
        }
        let uri: hyper::Uri = url.parse().map_err(|_| Inconclusive::BadChallenge)?;
        let mut request = hyper::Request::get(uri);
        if let Some(value) = authorization {
            let mut value = HeaderValue::from_str(value).map_err(|_| Inconclusive::BadChallenge)?;
            value.set_sensitive(true);
            request = request.header(AUTHORIZATION, value);
        }
        request = request.header(
            USER_AGENT,
            concat!(
                "pullsecret-injector/",
                env!("CARGO_PKG_VERSION"),
                " credential-probe"
            ),
        );
        let request = request
            .body(Empty::<Bytes>::new())
            .map_err(|_| Inconclusive::BadChallenge)?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|_| Inconclusive::Transport)?;
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let body = Limited::new(response.into_body(), MAX_TOKEN_BODY)
                .collect()
                .await
                .map(|b| b.to_bytes())
                // An oversized or broken body: only the token request reads it.
                .unwrap_or_default();
            Ok::<_, Inconclusive>(Answer {
                status,
                headers,
                body,
            })
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
            Ok(result) => result,
            Err(_) => Err(Inconclusive::Timeout),
        }
    }
}

struct Answer {
    status: u16,
    headers: hyper::HeaderMap,
    body: Bytes,
}

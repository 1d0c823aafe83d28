//! Serving certificate: loading, validation, and the resolver that lets a reload swap the
//! certificate under live connections.
//!
//! A new pair replaces the served one only if the certificate parses, the key parses and
//! matches it, and the certificate has not expired; otherwise the old pair keeps serving.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_cert::der::Decode;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("--tls-cert {}: cannot read: {source}", path.display())]
    ReadCert {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--tls-key {}: cannot read: {source}", path.display())]
    ReadKey {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--tls-cert {}: no PEM certificate found", path.display())]
    NoCertificate { path: PathBuf },
    #[error("--tls-cert {}: the certificate cannot be parsed: {reason}", path.display())]
    BadCertificate { path: PathBuf, reason: String },
    #[error("--tls-key {}: no usable PEM private key found: {reason}", path.display())]
    BadKey { path: PathBuf, reason: String },
    #[error("--tls-cert {} and --tls-key {} do not belong together: {reason}", cert.display(), key.display())]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("--tls-cert {}: the certificate expired at Unix time {not_after}", path.display())]
    Expired { path: PathBuf, not_after: i64 },
    #[error("--client-ca {}: cannot read: {source}", path.display())]
    ReadClientCa {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--client-ca {}: {reason}", path.display())]
    BadClientCa { path: PathBuf, reason: String },
}

/// A validated certificate and key, with the certificate's expiry.
#[derive(Debug, Clone)]
pub struct LoadedPair {
    pub certified: Arc<CertifiedKey>,
    /// notAfter of the leaf certificate, Unix seconds.
    pub not_after: i64,
}

/// Reads and validates the pair from disk; also returns the bytes read (certificate, key), the
/// baseline for reloads.
pub fn load_pair(
    cert_path: &Path,
    key_path: &Path,
) -> Result<(LoadedPair, Vec<Vec<u8>>), TlsError> {
    let cert = std::fs::read(cert_path).map_err(|source| TlsError::ReadCert {
        path: cert_path.into(),
        source,
    })?;
    let key = std::fs::read(key_path).map_err(|source| TlsError::ReadKey {
        path: key_path.into(),
        source,
    })?;
    let pair = pair_from_pem(cert_path, &cert, key_path, &key)?;
    Ok((pair, vec![cert, key]))
}

/// Validates a PEM pair; the paths are only used in messages.
pub fn pair_from_pem(
    cert_path: &Path,
    cert_pem: &[u8],
    key_path: &Path,
    key_pem: &[u8],
) -> Result<LoadedPair, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::BadCertificate {
            path: cert_path.into(),
            reason: e.to_string(),
        })?;
    let leaf = chain.first().ok_or_else(|| TlsError::NoCertificate {
        path: cert_path.into(),
    })?;
    let not_after = not_after(leaf).map_err(|e| TlsError::BadCertificate {
        path: cert_path.into(),
        reason: e.to_string(),
    })?;
    if not_after < crate::metrics::unix_now() {
        return Err(TlsError::Expired {
            path: cert_path.into(),
            not_after,
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::BadKey {
        path: key_path.into(),
        reason: e.to_string(),
    })?;
    let provider = provider();
    let signing_key =
        provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| TlsError::BadKey {
                path: key_path.into(),
                reason: e.to_string(),
            })?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified.keys_match().map_err(|e| TlsError::Mismatch {
        cert: cert_path.into(),
        key: key_path.into(),
        reason: e.to_string(),
    })?;
    Ok(LoadedPair {
        certified: Arc::new(certified),
        not_after,
    })
}

/// notAfter of a DER certificate, Unix seconds. The whole certificate is decoded (RFC 5280
/// profile), so a malformed one is refused here rather than at the first handshake. Times
/// before 1970 cannot be represented and count as malformed.
fn not_after(der: &[u8]) -> Result<i64, x509_cert::der::Error> {
    let certificate = x509_cert::Certificate::from_der(der)?;
    let not_after = certificate
        .tbs_certificate()
        .validity()
        .not_after
        .to_unix_duration();
    // DER times end in 9999, far inside i64 seconds.
    Ok(i64::try_from(not_after.as_secs()).unwrap_or(i64::MAX))
}

/// The process-wide crypto provider (ring), installed once by `main` and by tests.
pub fn provider() -> Arc<CryptoProvider> {
    match CryptoProvider::get_default() {
        Some(provider) => provider.clone(),
        None => {
            // Losing the race to another installer is fine: both install ring.
            let _ = rustls::crypto::ring::default_provider().install_default();
            CryptoProvider::get_default()
                .cloned()
                .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
        }
    }
}

/// Serves whichever pair was loaded last.
#[derive(Debug)]
pub struct ReloadingResolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ReloadingResolver {
    pub fn new(pair: &LoadedPair) -> Arc<Self> {
        Arc::new(Self {
            current: RwLock::new(pair.certified.clone()),
        })
    }

    pub fn replace(&self, pair: &LoadedPair) {
        // A poisoned lock only means a panic elsewhere while swapping an Arc; the value is intact.
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = pair.certified.clone();
    }
}

impl ResolvesServerCert for ReloadingResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

/// `--client-ca`: a verifier that accepts only client certificates signed by one of the PEM
/// CA certificates in `path` (the API server's, from its `WebhookAdmission` kubeconfig).
/// Read once at startup: the chart rolls the Pods when the CA changes.
pub fn client_verifier(path: &Path) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::ReadClientCa {
        path: path.into(),
        source,
    })?;
    let bad = |reason: String| TlsError::BadClientCa {
        path: path.into(),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| bad(format!("not PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| bad(format!("not a usable CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(bad("no PEM certificate found".into()));
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| bad(e.to_string()))
}

/// TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`; with `client_verifier`, a handshake completes
/// only for a client presenting a certificate it accepts (no request byte is read otherwise).
pub fn server_config(
    resolver: Arc<ReloadingResolver>,
    client_verifier: Option<Arc<dyn ClientCertVerifier>>,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match client_verifier {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair};

    /// (cert PEM, key PEM) of a self-signed certificate valid until `not_after`, if given.
    fn pem(not_after: Option<(i32, u8, u8)>) -> (String, String) {
        let mut params = CertificateParams::new(vec!["localhost".into()]).expect("params");
        if let Some((year, month, day)) = not_after {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(year, month, day);
        }
        let key = KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        (cert.pem(), key.serialize_pem())
    }

    fn pair(cert: &str, key: &str) -> Result<LoadedPair, TlsError> {
        pair_from_pem(
            Path::new("tls.crt"),
            cert.as_bytes(),
            Path::new("tls.key"),
            key.as_bytes(),
        )
    }

    #[test]
    fn not_after_is_read_as_unix_seconds() {
        // GeneralizedTime (from 2050 on) and UTCTime (before) both decode.
        for ((year, month, day), expected) in [
            ((2100, 1, 1), 4_102_444_800),
            ((2049, 12, 31), 2_524_521_600),
        ] {
            let (cert, key) = pem(Some((year, month, day)));
            let loaded = pair(&cert, &key).expect("valid pair");
            assert_eq!(loaded.not_after, expected, "{year}-{month}-{day}");
        }
    }

    #[test]
    fn an_expired_certificate_is_refused_with_its_expiry() {
        let (cert, key) = pem(Some((2001, 1, 1)));
        match pair(&cert, &key) {
            Err(TlsError::Expired { not_after, .. }) => assert_eq!(not_after, 978_307_200),
            other => panic!("expected Expired, got {other:?}"),
        }
    }

    #[test]
    fn a_certificate_that_does_not_decode_is_refused() {
        let (_, key) = pem(None);
        // Valid PEM, but the DER inside is not a certificate.
        let garbage = "-----BEGIN CERTIFICATE-----\nMAMCAQE=\n-----END CERTIFICATE-----\n";
        let error = pair(garbage, &key).expect_err("garbage accepted");
        assert!(
            matches!(error, TlsError::BadCertificate { .. }),
            "{error:?}"
        );
        assert!(
            error
                .to_string()
                .starts_with("--tls-cert tls.crt: the certificate cannot be parsed: "),
            "{error}"
        );
        // A certificate cut short.
        let (cert, key) = pem(None);
        let der = CertificateDer::from_pem_slice(cert.as_bytes()).expect("der");
        assert!(not_after(&der[..der.len() - 10]).is_err());
        assert!(pair(&cert, &key).is_ok());
    }

    #[test]
    fn a_file_without_a_certificate_is_refused() {
        let (_, key) = pem(None);
        assert!(matches!(
            pair("no PEM here\n", &key),
            Err(TlsError::NoCertificate { .. })
        ));
    }
}

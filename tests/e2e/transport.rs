//! Issue 8.4: the transport never drops a call the API server makes. The API server keeps
//! idle webhook connections for 90 s (Go's transport); the injector keeps them longer, so it
//! is always the API server that closes one. A Pod created after the API server's connection
//! sat idle 35 s (past the old 30 s server timeout) and after 95 s (past the client's own)
//! is injected, with no failed webhook call (the harness checks the API server's log after
//! every scenario). This installation serves no other scenario, so its connections really are
//! idle: its injector's `admissions_total` does not move during either idle period, and moves
//! with each Pod.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};

use crate::api::pod;
use crate::harness::{Label, Sc};

const ADMISSIONS: &str = "pullsecret_injector_admissions_total";

/// Admission requests this installation's injectors have answered (every endpoint and
/// outcome; counted before the answer is sent).
async fn admissions(sc: &Sc) -> Result<f64> {
    let mut total = 0.0;
    for injector in &sc.inst.injectors {
        total += injector.metric(ADMISSIONS).await?;
    }
    Ok(total)
}

pub async fn idle_connections(sc: Sc) -> Result<()> {
    let ns = sc.ns(Label::Enabled, &["dockerhub"]).await?;
    let mut last = Instant::now();
    let create = |sc: Sc, ns: String| async move {
        let created = sc
            .create_pod(&ns, &pod("idle").image("nginx").generate().build())
            .await?;
        ensure!(
            created.secrets() == ["dockerhub"],
            "got {:?}",
            created.secrets()
        );
        Ok::<_, anyhow::Error>(())
    };
    create(sc.clone(), ns.clone()).await?;
    for idle in [Duration::from_secs(35), Duration::from_secs(95)] {
        let before = admissions(&sc).await?;
        // Holding the connection idle is the scenario itself, not a wait for something.
        tokio::time::sleep(idle.saturating_sub(last.elapsed())).await;
        let after_idle = admissions(&sc).await?;
        ensure!(
            after_idle == before,
            "not idle: the injector answered {} admission(s) during the {idle:?}",
            after_idle - before
        );
        create(sc.clone(), ns.clone()).await?;
        let now = admissions(&sc).await?;
        ensure!(
            now > before,
            "the Pod was injected, but admissions_total stayed {before}: not by this installation's injector"
        );
        sc.note(format!("injected after {:?} idle", last.elapsed()));
        last = Instant::now();
    }
    Ok(())
}

/// Issue 15.5: with `--client-ca` (the chart's `webhook.clientCA`), the API server, which
/// presents the client certificate of its admission configuration's WebhookAdmission
/// kubeconfig, is served: a Pod is injected. A client without that certificate never completes
/// the handshake, so nothing it sends is read: it gets no answer, and the injector logs the
/// refused handshake.
pub async fn client_certificates(sc: Sc) -> Result<()> {
    let injector = &sc.inst.injectors[0];
    ensure!(
        injector.args.iter().any(|a| a == "--client-ca"),
        "this installation's injector runs without --client-ca: {:?}",
        injector.args
    );
    let ns = sc.ns(Label::Enabled, &["dockerhub"]).await?;
    let log_offset = crate::harness::file_len(&injector.log);
    let before = admissions(&sc).await?;
    let created = sc
        .create_pod(&ns, &pod("client-cert").image("nginx").build())
        .await?;
    ensure!(
        created.secrets() == ["dockerhub"],
        "through the API server's client certificate: got {:?}",
        created.secrets()
    );
    let after_pod = admissions(&sc).await?;
    ensure!(
        after_pod > before,
        "the Pod was not admitted by this injector"
    );

    // A direct client trusting the serving CA but presenting no certificate.
    let result = direct_review(&sc, injector.port).await;
    ensure!(
        result.is_err(),
        "a client without a certificate was answered: {result:?}"
    );
    sc.note(format!(
        "direct client refused: {}",
        result.err().map(|e| e.to_string()).unwrap_or_default()
    ));
    // Other scenarios share this injector, so its admission count may move meanwhile; its log
    // says why this handshake ended.
    crate::harness::eventually(
        Duration::from_secs(5),
        "the refused handshake in the injector's log",
        || {
            let log = injector.log_since(log_offset);
            async move {
                ensure!(
                    log.contains("TLS handshake failed")
                        && log.contains("peer sent no certificates"),
                    "not logged yet"
                );
                Ok(())
            }
        },
    )
    .await?;
    Ok(())
}

/// POSTs an AdmissionReview to the injector directly, without a client certificate.
async fn direct_review(sc: &Sc, port: u16) -> Result<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(&sc.suite.tls.ca_pem[..]) {
        roots.add(cert?)?;
    }
    let config =
        rustls::ClientConfig::builder_with_provider(pullsecret_injector::webhook::tls::provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1")?;
    let mut tls = connector.connect(name, tcp).await?;
    let body = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"direct","kind":{"group":"","version":"v1","kind":"Pod"},"operation":"CREATE","namespace":"default","object":{"metadata":{"name":"direct"},"spec":{"containers":[{"name":"c","image":"nginx"}]}}}}"#;
    let head = format!(
        "POST /mutate HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await?;
    tls.write_all(body).await?;
    let mut response = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut response)).await??;
    let text = String::from_utf8_lossy(&response[..n]);
    text.get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no HTTP response ({n} bytes)"))
}

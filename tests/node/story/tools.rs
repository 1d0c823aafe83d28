//! The commands users type (helm, kubectl, skopeo, the injector's own CLI), run as processes,
//! and the two ways the host talks to a Pod directly over the bridge: plain HTTP (the admin
//! port: metrics) and TLS (the webhook port: which certificate it serves).

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{Env, path_str};

/// Output of a finished command.
pub struct Output {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `program args...` to completion (stdin closed, or `stdin` fed).
pub async fn run(program: &str, args: &[&str], stdin: Option<String>) -> Result<Output> {
    let mut command = Command::new(program);
    command
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    let shown = format!("{program} {}", args.join(" "));
    let output = tokio::task::spawn_blocking(move || -> std::io::Result<std::process::Output> {
        let mut child = command.spawn()?;
        if let Some(input) = stdin {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("piped stdin")
                .write_all(input.as_bytes())?;
        }
        child.wait_with_output()
    })
    .await?
    .with_context(|| format!("running {shown}"))?;
    Ok(Output {
        ok: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// Like [`run`], failing with the end of stderr unless the command succeeded; its stdout.
pub async fn run_ok(program: &str, args: &[&str]) -> Result<String> {
    let out = run(program, args, None).await?;
    if !out.ok {
        bail!(
            "{program} {} failed: {}",
            redact(&args.join(" ")),
            tail(&out.stderr, 8)
        );
    }
    Ok(out.stdout)
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join(" / ")
}

/// Passwords on command lines are not repeated in error messages.
fn redact(args: &str) -> String {
    args.split(' ')
        .map(|a| {
            if a.starts_with("--docker-password=") {
                "--docker-password=***"
            } else {
                a
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `kubectl --kubeconfig ADMIN ARGS...`: its stdout.
pub async fn kubectl(env: &Env, args: &[&str]) -> Result<String> {
    let mut all = vec![
        "--kubeconfig",
        path_str(&env.kubeconfig)?,
        "--request-timeout=30s",
    ];
    all.extend_from_slice(args);
    run_ok("kubectl", &all).await
}

/// `helm --kubeconfig ADMIN ARGS...` (the HELM_*_HOME variables of tests/chart/tools.sh are
/// inherited): the whole output.
pub async fn helm(env: &Env, args: &[&str]) -> Result<Output> {
    let mut all = vec!["--kubeconfig", path_str(&env.kubeconfig)?];
    all.extend_from_slice(args);
    run(path_str(&env.helm)?, &all, None).await
}

/// `kubectl create secret docker-registry NAME -n NS --docker-server=SERVER ...` with the
/// registry's user and password: what the README tells users to type.
pub async fn create_docker_registry_secret(
    env: &Env,
    ns: &str,
    name: &str,
    server: &str,
) -> Result<()> {
    let server = format!("--docker-server={server}");
    let user = format!("--docker-username={}", env.reg_user);
    let pass = format!("--docker-password={}", env.reg_pass);
    kubectl(
        env,
        &[
            "create",
            "secret",
            "docker-registry",
            name,
            "-n",
            ns,
            &server,
            &user,
            &pass,
        ],
    )
    .await?;
    Ok(())
}

/// Pushes the app image (images.sh's OCI layout) to `repository:1` in the private registry.
pub async fn push_app(env: &Env, repository: &str) -> Result<String> {
    let reference = format!("{}/{repository}:1", env.registry);
    let source = format!("oci:{}:1", path_str(&env.dir.join("images/app"))?);
    let certs = path_str(&env.dir.join("registry/certs"))?.to_string();
    let creds = format!("{}:{}", env.reg_user, env.reg_pass);
    let dest = format!("docker://{reference}");
    run_ok(
        "skopeo",
        &[
            "copy",
            "-q",
            "--dest-cert-dir",
            &certs,
            "--dest-creds",
            &creds,
            &source,
            &dest,
        ],
    )
    .await?;
    Ok(reference)
}

/// The manifest digest of an image in the private registry.
pub async fn digest(env: &Env, reference: &str) -> Result<String> {
    let certs = path_str(&env.dir.join("registry/certs"))?.to_string();
    let creds = format!("{}:{}", env.reg_user, env.reg_pass);
    let image = format!("docker://{reference}");
    let out = run_ok(
        "skopeo",
        &[
            "inspect",
            "--cert-dir",
            &certs,
            "--creds",
            &creds,
            "--format",
            "{{.Digest}}",
            &image,
        ],
    )
    .await?;
    Ok(out.trim().to_string())
}

/// A minimal HTTP/1.0 GET (no chunking to undo): status and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        anyhow::Ok(String::from_utf8_lossy(&response).into_owned())
    };
    let response = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| anyhow!("GET http://{addr}{path}: no answer within 5 s"))??;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("no HTTP status in {:?}", response.lines().next()))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// The certificate a TLS server at `addr` presents for `server_name`, verified against
/// `ca_pem` (as the API server does with the webhook's caBundle): its DER.
pub async fn served_certificate(
    addr: SocketAddr,
    server_name: &str,
    ca_pem: &[u8],
) -> Result<Vec<u8>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.context("CA PEM")?)?;
    }
    let config =
        rustls::ClientConfig::builder_with_provider(pullsecret_injector::webhook::tls::provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from(server_name.to_string())?;
    let handshake = async {
        let tcp = TcpStream::connect(addr).await?;
        let tls = connector.connect(name, tcp).await?;
        let (_, session) = tls.get_ref();
        let cert = session
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or_else(|| anyhow!("no peer certificate"))?
            .to_vec();
        anyhow::Ok(cert)
    };
    tokio::time::timeout(Duration::from_secs(5), handshake)
        .await
        .map_err(|_| anyhow!("TLS handshake with {addr}: no answer within 5 s"))?
        .with_context(|| format!("TLS handshake with {addr} as {server_name}"))
}

/// The DER of the first certificate in a PEM text.
pub fn first_der(pem: &[u8]) -> Result<Vec<u8>> {
    Ok(CertificateDer::pem_slice_iter(pem)
        .next()
        .ok_or_else(|| anyhow!("no certificate in the PEM"))??
        .to_vec())
}

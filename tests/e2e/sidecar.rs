//! A second mutating webhook, served from the test process, so the API server reinvokes the
//! injector: it adds a container `e2e-sidecar` (image [`SIDECAR_IMAGE`]) to every Pod that
//! lacks one, as a service mesh injector would. Its configuration's name sorts after every
//! installation's, so it runs after the injector; the injector's `reinvocationPolicy:
//! IfNeeded` then makes the API server call the injector again. It serves the namespaces
//! labelled `e2e.pullsecret-injector.io/sidecar=true`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::ObjectMeta;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};

use crate::harness::{SIDECAR_LABEL, Suite};

pub const SIDECAR_IMAGE: &str = "ghcr.io/acme/sidecar:1";
pub const SIDECAR_CONTAINER: &str = "e2e-sidecar";
pub const CONFIGURATION: &str = "zz-e2e-sidecar";

/// Starts the server and registers its webhook configuration.
pub async fn start(suite: &Suite) -> Result<()> {
    let certs = CertificateDer::pem_file_iter(&suite.tls.cert)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(&suite.tls.key)?;
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let port = suite.env.port_base + 99;
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .with_context(|| format!("sidecar webhook: cannot listen on 127.0.0.1:{port}"))?;
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(
                        hyper_util::rt::TokioIo::new(tls),
                        hyper::service::service_fn(handle),
                    )
                    .await;
            });
        }
    });

    let configuration = MutatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some(CONFIGURATION.into()),
            ..Default::default()
        },
        webhooks: Some(vec![MutatingWebhook {
            name: "sidecar.e2e.test".into(),
            admission_review_versions: vec!["v1".into()],
            side_effects: "None".into(),
            failure_policy: Some("Fail".into()),
            timeout_seconds: Some(5),
            reinvocation_policy: Some("Never".into()),
            client_config: WebhookClientConfig {
                url: Some(format!("https://127.0.0.1:{port}/add-sidecar")),
                ca_bundle: Some(ByteString(suite.tls.ca_pem.clone())),
                service: None,
            },
            rules: Some(vec![RuleWithOperations {
                api_groups: Some(vec!["".into()]),
                api_versions: Some(vec!["v1".into()]),
                operations: Some(vec!["CREATE".into()]),
                resources: Some(vec!["pods".into()]),
                scope: None,
            }]),
            namespace_selector: Some(LabelSelector {
                match_labels: Some([(SIDECAR_LABEL.to_string(), "true".to_string())].into()),
                ..Default::default()
            }),
            ..Default::default()
        }]),
    };
    crate::install::apply(&suite.admin, &configuration).await
}

async fn handle(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => return Ok(status(400)),
    };
    let Ok(review) = serde_json::from_slice::<Value>(&body) else {
        return Ok(status(400));
    };
    let request = &review["request"];
    let has_sidecar = request["object"]["spec"]["containers"]
        .as_array()
        .is_some_and(|cs| cs.iter().any(|c| c["name"] == SIDECAR_CONTAINER));
    let mut response = json!({"uid": request["uid"], "allowed": true});
    if !has_sidecar {
        let patch = json!([{"op": "add", "path": "/spec/containers/-",
                            "value": {"name": SIDECAR_CONTAINER, "image": SIDECAR_IMAGE}}]);
        response["patchType"] = json!("JSONPatch");
        response["patch"] =
            json!(base64::engine::general_purpose::STANDARD.encode(patch.to_string()));
    }
    let answer = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": response,
    });
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(answer.to_string())))
        .unwrap_or_else(|_| status(500)))
}

fn status(code: u16) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = hyper::StatusCode::from_u16(code).unwrap_or_default();
    response
}

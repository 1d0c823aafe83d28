//! Talking to the API server: clients, typed objects the scenarios build, Pod creation with
//! the warnings the API server returns (what kubectl prints as `Warning:`), the audit log
//! (the webhook's `auditAnnotations`), access reviews and the injectors' metrics.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use base64::Engine;
use http_body_util::BodyExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{Container, LocalObjectReference, Pod, PodSpec, Secret};
use kube::Resource;
use kube::api::{Api, ObjectMeta, PostParams};
use pullsecret_injector::core::names::DOCKER_CONFIG_JSON;
use serde_json::Value;

use crate::harness::{Suite, eventually, read_from};

/// A client from a kubeconfig file.
pub async fn client_from(path: &Path) -> Result<kube::Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(path)
        .with_context(|| format!("reading {}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .with_context(|| format!("kubeconfig {}", path.display()))?;
    Ok(kube::Client::try_from(config)?)
}

/// A registry credential: what a docker config Secret holds.
#[derive(Debug, Clone)]
pub struct Cred {
    pub registry: String,
    pub user: String,
    pub password: String,
}

impl Cred {
    pub fn new(registry: &str, password: &str) -> Self {
        Self {
            registry: registry.into(),
            user: "e2e".into(),
            password: password.into(),
        }
    }

    /// The credentials the standard Secrets of the scenarios hold.
    pub fn standard(secret: &str) -> Result<Self> {
        match secret {
            "dockerhub" => Ok(Self::new("https://index.docker.io/v1/", "hub-e2e-pass")),
            "ghcr-acme" => Ok(Self::new("ghcr.io", "ghcr-e2e-pass")),
            other => bail!("no standard credential for a Secret named {other}"),
        }
    }

    fn auth(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", self.user, self.password))
    }

    /// The `.dockerconfigjson` payload.
    pub fn payload(&self) -> Vec<u8> {
        serde_json::json!({"auths": {&self.registry: {"auth": self.auth()}}})
            .to_string()
            .into_bytes()
    }

    /// Strings that would give the credential away.
    pub fn material(&self) -> Vec<String> {
        vec![
            self.password.clone(),
            self.auth(),
            base64::engine::general_purpose::STANDARD.encode(self.payload()),
        ]
    }

    /// A `kubernetes.io/dockerconfigjson` Secret holding it.
    pub fn secret(&self, name: &str, namespace: &str) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(namespace.into()),
                ..Default::default()
            },
            type_: Some(DOCKER_CONFIG_JSON.into()),
            data: Some(BTreeMap::from([(
                ".dockerconfigjson".to_string(),
                ByteString(self.payload()),
            )])),
            ..Default::default()
        }
    }
}

impl Suite {
    pub fn remember_cred(&self, cred: &Cred) {
        self.journal.remember_secret(cred.material());
    }
}

/// A Pod under construction: `pod("web").image("nginx").build()`.
pub struct PodBuilder(Pod);

pub fn pod(name: &str) -> PodBuilder {
    PodBuilder(Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(PodSpec::default()),
        ..Default::default()
    })
}

impl PodBuilder {
    fn spec(&mut self) -> &mut PodSpec {
        self.0.spec.get_or_insert_with(Default::default)
    }

    /// A container `cN` with this image.
    pub fn image(mut self, image: &str) -> Self {
        let spec = self.spec();
        let name = format!("c{}", spec.containers.len());
        spec.containers.push(Container {
            name,
            image: Some(image.into()),
            ..Default::default()
        });
        self
    }

    /// An initContainer `iN` with this image.
    pub fn init(mut self, image: &str) -> Self {
        let init = self.spec().init_containers.get_or_insert_with(Vec::new);
        let name = format!("i{}", init.len());
        init.push(Container {
            name,
            image: Some(image.into()),
            ..Default::default()
        });
        self
    }

    /// An `imagePullSecrets` entry the Pod already lists.
    pub fn secret(mut self, name: &str) -> Self {
        self.spec()
            .image_pull_secrets
            .get_or_insert_with(Vec::new)
            .push(LocalObjectReference { name: name.into() });
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.0
            .metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(key.into(), value.into());
        self
    }

    /// Use the name as `metadata.generateName`, as controllers do.
    pub fn generate(mut self) -> Self {
        self.0.metadata.generate_name = self.0.metadata.name.take();
        self
    }

    pub fn build(self) -> Pod {
        self.0
    }
}

/// The names in a Pod's `imagePullSecrets` (an empty name stays `""`).
pub fn pull_secrets(pod: &Pod) -> Vec<String> {
    pod.spec
        .as_ref()
        .and_then(|s| s.image_pull_secrets.as_ref())
        .map(|list| list.iter().map(|r| r.name.clone()).collect())
        .unwrap_or_default()
}

pub fn container_names(pod: &Pod) -> Vec<String> {
    pod.spec
        .as_ref()
        .map(|s| s.containers.iter().map(|c| c.name.clone()).collect())
        .unwrap_or_default()
}

/// A created (or dry-run) Pod as the API server returned it, and its warnings.
#[derive(Debug)]
pub struct Created {
    pub pod: Pod,
    /// The `Warning` headers of the response: what kubectl prints as `Warning: ...`.
    pub warnings: Vec<String>,
}

impl Created {
    pub fn name(&self) -> &str {
        self.pod.metadata.name.as_deref().unwrap_or_default()
    }

    pub fn secrets(&self) -> Vec<String> {
        pull_secrets(&self.pod)
    }

    pub fn warned(&self, needle: &str) -> bool {
        self.warnings.iter().any(|w| w.contains(needle))
    }
}

/// Creates a Pod with a raw request, so the response's `Warning` headers can be read (the
/// typed `Api::create` drops them). `dry_run`: server-side dry run, nothing is stored.
pub async fn create_pod(
    client: &kube::Client,
    namespace: &str,
    pod: &Pod,
    dry_run: bool,
) -> Result<Created> {
    let params = PostParams {
        dry_run,
        ..Default::default()
    };
    let request = kube::core::Request::new(Pod::url_path(&(), Some(namespace)))
        .create(&params, serde_json::to_vec(pod)?)?;
    let response = client
        .send(request.map(kube::client::Body::from))
        .await
        .with_context(|| format!("POST Pod in {namespace}"))?;
    let status = response.status();
    let warnings = response
        .headers()
        .get_all("warning")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(parse_warning)
        .collect();
    let body = response.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        let message = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["message"].as_str().map(String::from))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        bail!(
            "creating Pod {} in {namespace}: HTTP {status}: {message}",
            pod.metadata
                .name
                .as_deref()
                .or(pod.metadata.generate_name.as_deref())
                .unwrap_or("?")
        );
    }
    Ok(Created {
        pod: serde_json::from_slice(&body).context("decoding the created Pod")?,
        warnings,
    })
}

/// `299 - "text"` (RFC 7234, as the API server writes it) to `text`.
pub fn parse_warning(header: &str) -> String {
    let mut parts = header.splitn(3, ' ');
    let (_code, _agent, text) = (parts.next(), parts.next(), parts.next().unwrap_or(header));
    let text = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(text);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A stored Pod's `imagePullSecrets`, read back from the API server.
pub async fn stored_secrets(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<Vec<String>> {
    let pod = Api::<Pod>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .with_context(|| format!("reading Pod {namespace}/{name}"))?;
    Ok(pull_secrets(&pod))
}

/// The annotations of the API server's audit event for the creation of Pod `namespace/name`
/// (the webhooks' `auditAnnotations` among them), written after `offset` in the audit log.
pub async fn audit_annotations(
    suite: &Suite,
    offset: u64,
    namespace: &str,
    name: &str,
) -> Result<BTreeMap<String, String>> {
    let path = suite.env.audit_log();
    let (annotations, _) = eventually(Duration::from_secs(5), "the Pod's audit event", || {
        let text = read_from(&path, offset);
        async move {
            for line in text.lines().rev() {
                let Ok(event) = serde_json::from_str::<Value>(line) else {
                    continue;
                };
                let object = &event["objectRef"];
                if event["verb"] == "create"
                    && event["stage"] == "ResponseComplete"
                    && object["resource"] == "pods"
                    && object["namespace"] == namespace
                    && object["name"] == name
                {
                    let annotations = event["annotations"]
                        .as_object()
                        .map(|m| {
                            m.iter()
                                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().into()))
                                .collect()
                        })
                        .unwrap_or_default();
                    return Ok(annotations);
                }
            }
            Err(anyhow!(
                "no audit event for the creation of Pod {namespace}/{name} yet"
            ))
        }
    })
    .await?;
    Ok(annotations)
}

/// The annotations whose key starts with `prefix` (e.g. `inject.pullsecret-injector.io/`).
pub fn with_prefix(
    annotations: &BTreeMap<String, String>,
    prefix: &str,
) -> BTreeMap<String, String> {
    annotations
        .iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// One `kubectl auth can-i` question.
#[derive(Debug, Clone)]
pub struct Can {
    pub verb: &'static str,
    pub group: &'static str,
    pub resource: &'static str,
    /// `None`: all namespaces (`-A`), or a cluster-scoped resource.
    pub namespace: Option<String>,
    pub name: Option<String>,
}

pub fn can(verb: &'static str, resource: &'static str, namespace: Option<&str>) -> Can {
    let (group, resource) = match resource.split_once('.') {
        Some((resource, group)) => (group, resource),
        None => ("", resource),
    };
    Can {
        verb,
        group,
        resource,
        namespace: namespace.map(String::from),
        name: None,
    }
}

impl Can {
    pub fn named(mut self, name: &str) -> Self {
        self.name = Some(name.into());
        self
    }

    pub fn describe(&self) -> String {
        let resource = if self.group.is_empty() {
            self.resource.to_string()
        } else {
            format!("{}.{}", self.resource, self.group)
        };
        let name = self
            .name
            .as_deref()
            .map(|n| format!("/{n}"))
            .unwrap_or_default();
        let scope = match &self.namespace {
            Some(ns) => format!("-n {ns}"),
            None => "-A".into(),
        };
        format!("can-i {} {resource}{name} {scope}", self.verb)
    }
}

/// Asks the API server, as the client's own identity, whether it may do `can`
/// (a SelfSubjectAccessReview: what `kubectl auth can-i` sends).
pub async fn can_i(client: &kube::Client, can: &Can) -> Result<bool> {
    let review = SelfSubjectAccessReview {
        metadata: ObjectMeta::default(),
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(can.verb.into()),
                group: Some(can.group.into()),
                resource: Some(can.resource.into()),
                namespace: can.namespace.clone(),
                name: can.name.clone(),
                ..Default::default()
            }),
            ..Default::default()
        },
        status: None,
    };
    let answer = Api::<SelfSubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .with_context(|| can.describe())?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

/// Prometheus text: the sum of the samples of `name` (every label set), or of exactly the
/// sample `name{labels}` when `name` carries labels. 0 when absent.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let matches = if name.contains('{') {
                series == name
            } else {
                series == name || series.strip_prefix(name)?.starts_with('{')
            };
            matches.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_are_unquoted() {
        assert_eq!(
            parse_warning(r#"299 - "pullsecret-injector (audit): would add \"x\"""#),
            r#"pullsecret-injector (audit): would add "x""#
        );
    }

    #[test]
    fn metrics_are_summed_or_picked() {
        let text = "# HELP a b\na_total{kind=\"x\"} 2\na_total{kind=\"y\"} 3\nab 7\n";
        assert_eq!(metric(text, "a_total"), 5.0);
        assert_eq!(metric(text, "a_total{kind=\"y\"}"), 3.0);
        assert_eq!(metric(text, "ab"), 7.0);
        assert_eq!(metric(text, "zz"), 0.0);
    }
}

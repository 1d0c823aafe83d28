//! The credential probe's driver (`credentialProbe: true`, `controller` only, the Lease holder
//! only so that replicas do not multiply the requests registries see): every source Secret's
//! concrete registry hosts ([`core::probe::targets`]), probed when new or changed and then on
//! [`core::probe::Schedule`]'s clock, at most [`MAX_PROBES_PER_MINUTE`] a minute.
//!
//! Results go to `pullsecret_injector_credential_accepted{secret,registry}` (1 or 0; an
//! inconclusive probe leaves the last conclusive value, and the series goes with its target),
//! `pullsecret_injector_credential_probes_total{outcome}`, and the
//! `pullsecret-injector/probe` annotation on the source Secret (`rejected <registry> <time>`),
//! which the webhook's source watch reads to warn at admission. Logs name the Secret, the
//! registry and the outcome; never a credential.
//!
//! [`core::probe::targets`]: crate::core::probe::targets
//! [`core::probe::Schedule`]: crate::core::probe::Schedule

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use tokio::sync::Notify;

use super::index::Index;
use super::lease::Leadership;
use super::sources::Source;
use crate::core::names::PROBE_ANNOTATION;
use crate::core::probe::{self, MAX_PROBES_PER_MINUTE, Outcome, Schedule, Target, TargetKey};
use crate::metrics::{CredentialLabels, Metrics, OutcomeLabels};
use crate::probe::Prober;
use crate::shutdown::Trigger;

/// The longest the loop sleeps without looking at the sources and the Lease again.
const IDLE_POLL: Duration = Duration::from_secs(30);

pub(super) struct ProbeLoop {
    pub client: kube::Client,
    pub own_namespace: String,
    pub sources: Arc<Index<Source>>,
    pub metrics: Arc<Metrics>,
    /// Notified on every source change: new and changed credentials are probed at once.
    pub changed: Arc<Notify>,
    pub prober: Prober,
}

impl ProbeLoop {
    pub(super) async fn run(self, mut leadership: Leadership, stop: Trigger) {
        let mut schedule = Schedule::default();
        // Targets rejected at their last conclusive probe, with the time first seen rejected.
        let mut rejected: BTreeMap<TargetKey, String> = BTreeMap::new();
        // Targets with a conclusive answer in this process: a source's annotation is only
        // rewritten once all its targets have one (a restart does not clear it first).
        let mut concluded: BTreeSet<TargetKey> = BTreeSet::new();
        let spacing = Duration::from_secs(60) / MAX_PROBES_PER_MINUTE;
        let stopped = stop.wait();
        tokio::pin!(stopped);
        loop {
            if !leadership.is_open() {
                // Another replica probes now: this one's answers would only grow stale (and
                // keep an alert firing after the new leader found the credential renewed).
                self.metrics.credential_accepted.clear();
                schedule = Schedule::default();
                rejected.clear();
                concluded.clear();
            }
            tokio::select! {
                () = leadership.until_leader() => {}
                () = &mut stopped => return,
            }
            let targets = self.targets();
            let current: Vec<(TargetKey, u64)> = targets
                .iter()
                .map(|(key, target)| (key.clone(), probe::fingerprint(target)))
                .collect();
            for gone in schedule.follow(&current, Instant::now()) {
                self.metrics.credential_accepted.remove(&labels(&gone));
                rejected.remove(&gone);
                concluded.remove(&gone);
            }
            for key in schedule.due(Instant::now()) {
                if stop.is_fired() || !leadership.is_open() {
                    break;
                }
                let Some(target) = targets.get(&key) else {
                    continue;
                };
                let outcome = self.prober.probe(target).await;
                self.record(&key, outcome, &mut rejected);
                if !matches!(outcome, Outcome::Inconclusive(_)) {
                    concluded.insert(key.clone());
                }
                schedule.record(&key, outcome, Instant::now());
                tokio::select! {
                    () = tokio::time::sleep(spacing) => {}
                    () = &mut stopped => return,
                }
            }
            if leadership.is_open() {
                self.publish(&targets, &concluded, &rejected).await;
            }
            let wait = schedule
                .next_due()
                .map_or(IDLE_POLL, |due| {
                    due.saturating_duration_since(Instant::now())
                })
                .min(IDLE_POLL);
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.changed.notified() => {}
                () = &mut stopped => return,
            }
        }
    }

    /// Every concrete host of every docker config source, keyed by `(secret, registry)`.
    fn targets(&self) -> BTreeMap<TargetKey, Target> {
        let mut out = BTreeMap::new();
        self.sources.for_each(|_, _, source| {
            if !source.is_pull_credential() {
                return;
            }
            let (found, _skipped) = probe::targets(&source.secret);
            for target in found {
                out.insert((target.secret.clone(), target.registry.clone()), target);
            }
        });
        out
    }

    fn record(
        &self,
        key: &TargetKey,
        outcome: Outcome,
        rejected: &mut BTreeMap<TargetKey, String>,
    ) {
        let (secret, registry) = key;
        let label = match outcome {
            Outcome::Accepted => "accepted",
            Outcome::Rejected => "rejected",
            Outcome::Inconclusive(reason) => reason.as_str(),
        };
        self.metrics
            .credential_probes
            .get_or_create(&OutcomeLabels { outcome: label })
            .inc();
        match outcome {
            Outcome::Accepted => {
                self.metrics
                    .credential_accepted
                    .get_or_create(&labels(key))
                    .set(1);
                if rejected.remove(key).is_some() {
                    tracing::info!(
                        secret,
                        registry,
                        "credential probe: the registry accepts the credential again"
                    );
                } else {
                    tracing::debug!(secret, registry, "credential probe: accepted");
                }
            }
            Outcome::Rejected => {
                self.metrics
                    .credential_accepted
                    .get_or_create(&labels(key))
                    .set(0);
                if !rejected.contains_key(key) {
                    let now = k8s_openapi::jiff::Timestamp::now();
                    let at = k8s_openapi::jiff::Timestamp::from_second(now.as_second())
                        .unwrap_or(now)
                        .to_string();
                    rejected.insert(key.clone(), at);
                    tracing::warn!(
                        secret,
                        registry,
                        "credential probe: the registry rejected the credential (401/403): Pods pulling from it with this Secret will fail"
                    );
                }
            }
            Outcome::Inconclusive(reason) => {
                tracing::info!(
                    secret,
                    registry,
                    reason = reason.as_str(),
                    "credential probe inconclusive; retried with backoff"
                );
            }
        }
    }

    /// Writes each source's `pullsecret-injector/probe` annotation where it differs from the
    /// rejections known (removed when there are none).
    async fn publish(
        &self,
        targets: &BTreeMap<TargetKey, Target>,
        concluded: &BTreeSet<TargetKey>,
        rejected: &BTreeMap<TargetKey, String>,
    ) {
        let mut current: Vec<(String, Option<String>)> = Vec::new();
        self.sources.for_each(|_, name, source| {
            current.push((name.to_string(), source.probe_annotation.clone()));
        });
        let changes = probe::annotation_updates(
            current.iter().map(|(n, a)| (n.as_str(), a.as_deref())),
            targets.keys(),
            concluded,
            rejected,
        );
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.own_namespace);
        for (name, value) in changes {
            let patch = serde_json::json!({"metadata": {"annotations": {PROBE_ANNOTATION: value}}});
            if let Err(error) = api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                // The error names the Secret and the API's status, never its data.
                tracing::warn!(secret = %name, %error, "credential probe: cannot annotate the source Secret; retried on the next pass");
            }
        }
    }
}

fn labels((secret, registry): &TargetKey) -> CredentialLabels {
    CredentialLabels {
        secret: secret.clone(),
        registry: registry.clone(),
    }
}

#[cfg(test)]
mod tests {
    //! One pass of the loop, for real over sockets: a loopback registry that accepts one
    //! password, a fake API server that records the annotation patches.

    use std::convert::Infallible;
    use std::sync::Mutex;

    use base64::Engine;
    use http_body_util::{BodyExt, Full};
    use hyper::body::{Bytes, Incoming};
    use hyper::{Request, Response};
    use tokio::net::TcpListener;

    use super::*;
    use crate::core::dockercfg::SourceSecret;
    use crate::core::names::DOCKER_CONFIG_JSON;

    const GOOD: &str = "alice:s3cret";

    async fn basic_registry() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(|request: Request<Incoming>| {
                        let want = format!(
                            "Basic {}",
                            base64::engine::general_purpose::STANDARD.encode(GOOD)
                        );
                        let ok = request
                            .headers()
                            .get(hyper::header::AUTHORIZATION)
                            .is_some_and(|v| v.as_bytes() == want.as_bytes());
                        let response = if ok {
                            Response::new(Full::new(Bytes::from_static(b"{}")))
                        } else {
                            let mut r = Response::new(Full::new(Bytes::new()));
                            *r.status_mut() = hyper::StatusCode::UNAUTHORIZED;
                            r.headers_mut().insert(
                                hyper::header::WWW_AUTHENTICATE,
                                hyper::header::HeaderValue::from_static("Basic realm=\"t\""),
                            );
                            r
                        };
                        async move { Ok::<_, Infallible>(response) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        format!("http://{addr}")
    }

    fn source(name: &str, registry: &str, credential: &str) -> Source {
        let b64 = base64::engine::general_purpose::STANDARD;
        let config = serde_json::json!({"auths": {registry: {"auth": b64.encode(credential)}}});
        Source {
            resource_version: "1".into(),
            secret: SourceSecret::from_body(
                name,
                &serde_json::json!({
                    "type": DOCKER_CONFIG_JSON,
                    "data": {".dockerconfigjson": b64.encode(config.to_string())},
                }),
            ),
            scope: Default::default(),
            scope_error: None,
            probe_annotation: None,
            expiry: Default::default(),
        }
    }

    #[tokio::test]
    async fn a_pass_sets_the_gauge_and_annotates_only_the_rejected_source() {
        let registry = basic_registry().await;
        let host = registry.trim_start_matches("http://").to_string();
        let patches: Arc<Mutex<Vec<(String, String, String)>>> = Arc::default();
        let recorded = patches.clone();
        let api = tower::service_fn(move |request: Request<kube::client::Body>| {
            let recorded = recorded.clone();
            async move {
                let method = request.method().to_string();
                let path = request.uri().path().to_string();
                let body = request
                    .into_body()
                    .collect()
                    .await
                    .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
                    .unwrap_or_default();
                if let Ok(mut all) = recorded.lock() {
                    all.push((method, path, body));
                }
                let secret = r#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"x"}}"#;
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(secret))))
            }
        });
        let client = kube::Client::new(api, "psi");
        let metrics = Arc::new(Metrics::default());
        let sources = Arc::new(Index::new("source_secrets", metrics.clone()));
        sources.start_list();
        sources.apply_listed("psi", "good", source("good", &registry, GOOD));
        sources.apply_listed("psi", "revoked", source("revoked", &registry, "alice:old"));
        sources.apply_listed(
            "psi",
            "ecr",
            source("ecr", "*.dkr.ecr.*.amazonaws.com", GOOD),
        );
        sources.finish_list();
        sources.health.resumed();
        let (renewed, renewals) = tokio::sync::watch::channel(Some(tokio::time::Instant::now()));
        let leadership = Leadership::new(renewals, vec![sources.clone()]);
        let probe_loop = ProbeLoop {
            client,
            own_namespace: "psi".into(),
            sources: sources.clone(),
            metrics: metrics.clone(),
            changed: Arc::new(Notify::new()),
            prober: Prober::new(rustls::RootCertStore::empty()).expect("prober"),
        };
        let stop = Trigger::default();
        let task = tokio::spawn(probe_loop.run(leadership, stop.clone()));
        let deadline = Instant::now() + Duration::from_secs(8);
        while patches.lock().map(|p| p.is_empty()).unwrap_or(true) && Instant::now() < deadline {
            let _ = renewed.send(Some(tokio::time::Instant::now()));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        stop.fire();
        let _ = task.await;

        let text = metrics.encode();
        let gauge = |secret: &str| {
            format!("credential_accepted{{secret=\"{secret}\",registry=\"{host}\"}}")
        };
        assert!(text.contains(&format!("{} 1", gauge("good"))), "{text}");
        assert!(text.contains(&format!("{} 0", gauge("revoked"))), "{text}");
        assert!(
            !text.contains("amazonaws"),
            "glob keys are never probed: {text}"
        );
        assert!(
            text.contains(r#"credential_probes_total{outcome="accepted"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"credential_probes_total{outcome="rejected"} 1"#),
            "{text}"
        );
        // One patch: the rejected source's annotation, nothing for the others; no credential.
        let patches = patches.lock().map(|p| p.clone()).unwrap_or_default();
        assert_eq!(patches.len(), 1, "{patches:?}");
        let (method, path, body) = &patches[0];
        assert_eq!(method, "PATCH");
        assert_eq!(path, "/api/v1/namespaces/psi/secrets/revoked");
        assert!(body.contains(&format!("rejected {host} ")), "{body}");
        assert!(body.contains(PROBE_ANNOTATION), "{body}");
        assert!(
            !body.contains("alice") && !body.contains("s3cret"),
            "{body}"
        );
    }
}

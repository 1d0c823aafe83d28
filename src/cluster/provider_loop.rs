//! `credentialProviders`' driver (`controller` only, the Lease holder only, so that replicas
//! neither multiply the calls a cloud's token endpoint sees nor overwrite each other): for
//! each provider, run its plugin for each of its images ([`crate::credential_plugin`]) and
//! write what came back into its Secret in the injector's namespace, in place.
//!
//! - The Secret is created (type `kubernetes.io/dockerconfigjson`, labelled a source) when
//!   missing, else merge-patched: its UID never changes, so sync updates its copies in place
//!   and the kubelet keeps matching them (KEP-2535 keys its cache by the Secret's UID).
//!   Labels and annotations the user set are kept; the label `pullsecret-injector/source=true`
//!   is added, so sync and the webhook's source watch read it like any source.
//! - It carries `pullsecret-injector/expires-at` (mint time + the shortest cache duration),
//!   `pullsecret-injector/issued-at`, the provider's name and its configuration fingerprint.
//!   A leader that starts (a restart, a failover) reads them and waits for the refresh point
//!   instead of minting again.
//! - Refreshed at half the lifetime; a failed pass is retried with backoff
//!   ([`core::credential_provider::retry_after`]) and the Secret keeps the last good
//!   credential, also past its expiry (never fewer credentials; the expiry alerts and the
//!   admission warnings say it is stale).
//!
//! [`core::credential_provider::retry_after`]: crate::core::credential_provider::retry_after

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use tokio::sync::Notify;

use super::lease::Leadership;
use crate::core::credential_provider::{self, Provider, Response};
use crate::core::expiry::{self, parse_time};
use crate::core::names::{
    CREDENTIAL_PROVIDER_ANNOTATION, CREDENTIAL_PROVIDER_CONFIG_ANNOTATION, DOCKER_CONFIG_JSON,
    EXPIRES_AT_ANNOTATION, ISSUED_AT_ANNOTATION, SOURCE_LABEL,
};
use crate::core::policy::PolicyStore;
use crate::credential_plugin::{self, PluginError};
use crate::metrics::{Metrics, ProviderLabels, ProviderRunLabels};
use crate::shutdown::Trigger;

/// The longest the loop sleeps without looking at the configuration and the Lease again, and
/// how often a provider's Secret is checked between refreshes.
pub(super) const IDLE_POLL: Duration = Duration::from_secs(30);

/// The data key of a dockerconfigjson Secret.
const DOCKER_CONFIG_KEY: &str = ".dockerconfigjson";

pub(super) struct ProviderLoop {
    pub client: kube::Client,
    pub own_namespace: String,
    pub policy: Arc<PolicyStore>,
    pub metrics: Arc<Metrics>,
    /// Notified on every configuration reload: a changed provider is refreshed at once.
    pub changed: Arc<Notify>,
    /// How often, between refreshes, each provider's Secret is looked at ([`IDLE_POLL`]).
    pub recheck: Duration,
}

/// What the loop knows of one provider while it leads.
struct State {
    fingerprint: String,
    /// Whether the Secret's annotations have been read since this replica leads.
    known: bool,
    next: Instant,
    failures: u32,
    /// The last credential's lifetime: paces the retries.
    lifetime: Duration,
    /// When the Secret was last looked at between refreshes.
    checked: Instant,
}

impl State {
    /// Due now, no failures, paced by the provider's default lifetime until an answer says.
    fn new(fingerprint: &str, provider: &Provider, known: bool) -> Self {
        Self {
            fingerprint: fingerprint.to_string(),
            known,
            next: Instant::now(),
            failures: 0,
            lifetime: provider.default_cache_duration,
            checked: Instant::now(),
        }
    }
}

/// The parts of the provider's Secret the loop reads (all `None` when it does not exist).
#[derive(Default)]
struct Current {
    kind: Option<String>,
    docker_config: Option<Vec<u8>>,
    provider: Option<String>,
    fingerprint: Option<String>,
    issued: Option<i64>,
    expires: Option<i64>,
}

impl ProviderLoop {
    pub(super) async fn run(self, mut leadership: Leadership, stop: Trigger) {
        let mut states: HashMap<String, State> = HashMap::new();
        let stopped = stop.wait();
        tokio::pin!(stopped);
        loop {
            if !leadership.is_open() {
                // Another replica writes now; on return this one reads the Secret again.
                states.clear();
            }
            tokio::select! {
                () = leadership.until_leader() => {}
                () = &mut stopped => return,
            }
            let config = self.policy.load().settings().credential_providers.clone();
            let names: Vec<&str> = config.providers.iter().map(|p| p.name.as_str()).collect();
            for gone in states
                .keys()
                .filter(|name| !names.contains(&name.as_str()))
                .cloned()
                .collect::<Vec<_>>()
            {
                states.remove(&gone);
                self.forget(&gone);
            }
            for provider in &config.providers {
                if stop.is_fired() || !leadership.is_open() {
                    break;
                }
                let fingerprint = provider.fingerprint();
                let state = states
                    .entry(provider.name.clone())
                    .or_insert_with(|| State::new(&fingerprint, provider, false));
                let _ = self
                    .metrics
                    .credential_provider_failing
                    .get_or_create(&provider_labels(provider));
                if state.fingerprint != fingerprint {
                    tracing::info!(
                        provider = %provider.name,
                        secret = %provider.secret,
                        "credential provider changed: refreshing its Secret now"
                    );
                    // Known: whatever the Secret holds was minted by the old configuration.
                    *state = State::new(&fingerprint, provider, true);
                }
                if !state.known {
                    self.resume(provider, &fingerprint, state).await;
                }
                if state.known
                    && state.next > Instant::now()
                    && state.checked.elapsed() >= self.recheck
                {
                    self.check_still_there(provider, &fingerprint, state).await;
                }
                if state.known && state.next <= Instant::now() {
                    self.refresh(&config.bin_dir, provider, &fingerprint, state)
                        .await;
                }
            }
            let wait = states
                .values()
                .map(|s| s.next.saturating_duration_since(Instant::now()))
                .min()
                .unwrap_or(IDLE_POLL)
                .min(IDLE_POLL)
                .min(self.recheck);
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.changed.notified() => {}
                () = &mut stopped => return,
            }
        }
    }

    /// A replica that just became the leader: the Secret says when it was minted and by
    /// which configuration; refresh at its half-life if it is ours and current, else now.
    async fn resume(&self, provider: &Provider, fingerprint: &str, state: &mut State) {
        match self.current(provider).await {
            Ok(current) => {
                state.known = true;
                state.next = Instant::now();
                if let (Some(name), Some(print), Some(issued), Some(expires)) = (
                    &current.provider,
                    &current.fingerprint,
                    current.issued,
                    current.expires,
                ) && name == &provider.name
                    && print == fingerprint
                    && expires > issued
                {
                    let lifetime = Duration::from_secs((expires - issued).unsigned_abs());
                    let due = issued
                        + i64::try_from(credential_provider::refresh_after(lifetime).as_secs())
                            .unwrap_or(i64::MAX / 2);
                    let wait = due.saturating_sub(now_unix()).max(0);
                    state.lifetime = lifetime;
                    state.next = Instant::now() + Duration::from_secs(wait.unsigned_abs());
                    tracing::info!(
                        provider = %provider.name,
                        secret = %provider.secret,
                        refresh_at = %expiry::rfc3339(due),
                        "credential provider: the Secret holds this provider's credential; refreshed at its half-life"
                    );
                }
            }
            Err(error) => {
                tracing::warn!(provider = %provider.name, secret = %provider.secret, %error, "credential provider: cannot read its Secret; retried");
                state.next = Instant::now() + credential_provider::RETRY_FIRST;
            }
        }
    }

    /// Between refreshes: a Secret someone deleted, or overwrote with another credential, is
    /// filled again now rather than at the next refresh (Pods would meanwhile get a Secret
    /// that is missing or not the provider's).
    async fn check_still_there(&self, provider: &Provider, fingerprint: &str, state: &mut State) {
        state.checked = Instant::now();
        let Ok(current) = self.current(provider).await else {
            return;
        };
        let ours = current.kind.is_some()
            && current.provider.as_deref() == Some(provider.name.as_str())
            && current.fingerprint.as_deref() == Some(fingerprint);
        if !ours {
            tracing::warn!(
                provider = %provider.name,
                secret = %provider.secret,
                "credential provider: its Secret is gone or no longer holds this provider's credential; filling it now"
            );
            state.next = Instant::now();
        }
    }

    /// One pass: every image asked, the answers written, the next pass scheduled.
    async fn refresh(
        &self,
        bin_dir: &std::path::Path,
        provider: &Provider,
        fingerprint: &str,
        state: &mut State,
    ) {
        let mut responses: Vec<Response> = Vec::new();
        let mut failure: Option<(String, PluginError)> = None;
        for image in &provider.images {
            match credential_plugin::run(bin_dir, provider, image).await {
                Ok(response) => responses.push(response),
                Err(error) => {
                    if failure.is_none() {
                        failure = Some((image.clone(), error));
                    }
                }
            }
        }
        let minted = credential_provider::merge(&responses, provider.default_cache_duration);
        let written = match &minted {
            Some(minted) => {
                self.write(provider, fingerprint, minted, failure.is_some())
                    .await
            }
            None => Ok(()),
        };
        let labels = provider_labels(provider);
        let outcome = match (&failure, &written) {
            (Some((image, error)), _) => {
                tracing::warn!(
                    provider = %provider.name,
                    secret = %provider.secret,
                    image = %image,
                    error = %error,
                    "credential provider failed; the Secret keeps its last good credential; retried with backoff"
                );
                error.outcome()
            }
            (None, Err(error)) => {
                tracing::warn!(provider = %provider.name, secret = %provider.secret, %error, "credential provider: cannot write its Secret; retried with backoff");
                "write_failed"
            }
            (None, Ok(())) => "success",
        };
        self.metrics
            .credential_provider_runs
            .get_or_create(&ProviderRunLabels {
                provider: provider.name.clone(),
                outcome,
            })
            .inc();
        state.checked = Instant::now();
        if let (Some(minted), Ok(())) = (&minted, &written) {
            state.lifetime = minted.lifetime;
            self.metrics
                .credential_provider_last_success
                .get_or_create(&labels)
                .set(now_unix());
        }
        if outcome == "success" {
            state.failures = 0;
            state.next = Instant::now() + credential_provider::refresh_after(state.lifetime);
            self.metrics
                .credential_provider_failing
                .get_or_create(&labels)
                .set(0);
        } else {
            state.failures = state.failures.saturating_add(1);
            state.next =
                Instant::now() + credential_provider::retry_after(state.failures, state.lifetime);
            self.metrics
                .credential_provider_failing
                .get_or_create(&labels)
                .set(1);
        }
    }

    async fn current(&self, provider: &Provider) -> Result<Current, kube::Error> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.own_namespace);
        let secret = api.get_opt(&provider.secret).await?;
        let Some(secret) = secret else {
            return Ok(Current::default());
        };
        let annotations = secret.metadata.annotations.unwrap_or_default();
        let get = |key: &str| annotations.get(key).cloned();
        Ok(Current {
            kind: Some(secret.type_.unwrap_or_else(|| "Opaque".into())),
            docker_config: secret
                .data
                .and_then(|mut data| data.remove(DOCKER_CONFIG_KEY))
                .map(|bytes| bytes.0),
            provider: get(CREDENTIAL_PROVIDER_ANNOTATION),
            fingerprint: get(CREDENTIAL_PROVIDER_CONFIG_ANNOTATION),
            issued: get(ISSUED_AT_ANNOTATION).as_deref().and_then(parse_time),
            expires: get(EXPIRES_AT_ANNOTATION).as_deref().and_then(parse_time),
        })
    }

    /// Writes `minted` into the provider's Secret: created when missing, patched in place
    /// otherwise. `partial`: some images failed, so their entries (and their expiry) stay.
    async fn write(
        &self,
        provider: &Provider,
        fingerprint: &str,
        minted: &credential_provider::Minted,
        partial: bool,
    ) -> Result<(), String> {
        let current = self
            .current(provider)
            .await
            .map_err(|e| format!("reading Secret {}: {e}", provider.secret))?;
        if let Some(kind) = &current.kind
            && kind != DOCKER_CONFIG_JSON
        {
            return Err(format!(
                "Secret {} is of type {kind}, not {DOCKER_CONFIG_JSON} (a type cannot change): not overwritten; delete it or name another secret",
                provider.secret
            ));
        }
        let issued = now_unix();
        let mut expires = issued + i64::try_from(minted.lifetime.as_secs()).unwrap_or(i64::MAX / 2);
        let config = if partial {
            if let Some(previous) = current.expires {
                expires = expires.min(previous);
            }
            credential_provider::merge_previous(current.docker_config.as_deref(), &minted.auth)
        } else {
            credential_provider::docker_config(&minted.auth)
        };
        let annotations: BTreeMap<&str, String> = [
            (EXPIRES_AT_ANNOTATION, expiry::rfc3339(expires)),
            (ISSUED_AT_ANNOTATION, expiry::rfc3339(issued)),
            (CREDENTIAL_PROVIDER_ANNOTATION, provider.name.clone()),
            (
                CREDENTIAL_PROVIDER_CONFIG_ANNOTATION,
                fingerprint.to_string(),
            ),
        ]
        .into_iter()
        .collect();
        let data = base64::engine::general_purpose::STANDARD.encode(&config);
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.own_namespace);
        let result = if current.kind.is_none() {
            let body = serde_json::json!({
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {
                    "name": provider.secret,
                    "namespace": self.own_namespace,
                    "labels": {SOURCE_LABEL: "true"},
                    "annotations": annotations,
                },
                "type": DOCKER_CONFIG_JSON,
                "data": {DOCKER_CONFIG_KEY: data},
            });
            let secret: Secret = serde_json::from_value(body).map_err(|e| e.to_string())?;
            api.create(&PostParams::default(), &secret)
                .await
                .map(|_| ())
        } else {
            let patch = serde_json::json!({
                "metadata": {
                    "labels": {SOURCE_LABEL: "true"},
                    "annotations": annotations,
                },
                "data": {DOCKER_CONFIG_KEY: data},
            });
            api.patch(
                &provider.secret,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .map(|_| ())
        };
        // The error names the Secret and the API's status, never its data.
        result.map_err(|e| format!("writing Secret {}: {e}", provider.secret))?;
        tracing::info!(
            provider = %provider.name,
            secret = %provider.secret,
            registries = minted.auth.len(),
            expires_at = %expiry::rfc3339(expires),
            refresh_in_seconds = credential_provider::refresh_after(minted.lifetime).as_secs(),
            "credential provider: Secret filled"
        );
        Ok(())
    }

    /// A provider removed from the configuration: its series go (its Secret stays, like any
    /// source an operator may still name).
    fn forget(&self, name: &str) {
        let labels = ProviderLabels {
            provider: name.to_string(),
        };
        self.metrics.credential_provider_failing.remove(&labels);
        self.metrics
            .credential_provider_last_success
            .remove(&labels);
    }
}

fn provider_labels(provider: &Provider) -> ProviderLabels {
    ProviderLabels {
        provider: provider.name.clone(),
    }
}

fn now_unix() -> i64 {
    k8s_openapi::jiff::Timestamp::now().as_second()
}

#[cfg(test)]
mod tests {
    //! Whole passes, for real: a shell script as the plugin, a fake API server holding the
    //! one Secret (GET, POST, merge PATCH) that records every request.

    use std::convert::Infallible;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Mutex;

    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;
    use hyper::{Request, Response as HttpResponse, StatusCode};
    use serde_json::{Value, json};

    use super::*;
    use crate::core::config::Config;
    use crate::core::credential_provider::{API_VERSIONS, CredentialProviders};

    const PLUGIN: &str = r#"#!/bin/sh
cat >/dev/null
if [ "$1" = fail ]; then echo "token endpoint said no" >&2; exit 1; fi
n=$(cat "$0.count" 2>/dev/null || echo 0); n=$((n+1)); echo "$n" >"$0.count"
printf '{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderResponse","cacheKeyType":"Registry","cacheDuration":"4m","auth":{"r.example":{"username":"bot","password":"pw-%s"}}}' "$n"
"#;

    #[derive(Default)]
    struct FakeApi {
        secret: Option<Value>,
        requests: Vec<String>,
    }

    fn fake_api(state: Arc<Mutex<FakeApi>>) -> kube::Client {
        let service = tower::service_fn(move |request: Request<kube::client::Body>| {
            let state = state.clone();
            async move {
                let method = request.method().to_string();
                let path = request.uri().path().to_string();
                let body = request
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
                state.requests.push(format!("{method} {path}"));
                let not_found = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "reason": "NotFound", "code": 404, "message": "not found"});
                let (status, reply) = match (method.as_str(), state.secret.clone()) {
                    ("GET", Some(secret)) => (StatusCode::OK, secret),
                    ("GET", None) | ("PATCH", None) => (StatusCode::NOT_FOUND, not_found),
                    ("POST", _) => {
                        let mut created: Value = serde_json::from_slice(&body).unwrap_or_default();
                        created["metadata"]["uid"] = json!("uid-1");
                        state.secret = Some(created.clone());
                        (StatusCode::CREATED, created)
                    }
                    ("PATCH", Some(mut secret)) => {
                        let patch: Value = serde_json::from_slice(&body).unwrap_or_default();
                        json_patch::merge(&mut secret, &patch);
                        state.secret = Some(secret.clone());
                        (StatusCode::OK, secret)
                    }
                    _ => (StatusCode::METHOD_NOT_ALLOWED, not_found),
                };
                let mut response = HttpResponse::new(Full::new(Bytes::from(reply.to_string())));
                *response.status_mut() = status;
                Ok::<_, Infallible>(response)
            }
        });
        kube::Client::new(service, "psi")
    }

    fn config(dir: &std::path::Path, args: &[&str]) -> Config {
        let mut config = Config::default();
        config.settings.credential_providers = CredentialProviders {
            bin_dir: dir.to_path_buf(),
            providers: vec![Provider {
                name: "test-plugin".into(),
                api_version: API_VERSIONS[0].into(),
                match_images: vec!["r.example".into()],
                default_cache_duration: Duration::from_secs(3600),
                args: args.iter().map(|a| a.to_string()).collect(),
                env: Vec::new(),
                secret: "minted".into(),
                images: vec!["r.example/app".into()],
            }],
        };
        config
    }

    fn password(secret: &Value) -> String {
        let b64 = base64::engine::general_purpose::STANDARD;
        let data = secret["data"][".dockerconfigjson"]
            .as_str()
            .unwrap_or_default();
        let config: Value = b64
            .decode(data)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        config["auths"]["r.example"]["password"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    async fn until(state: &Arc<Mutex<FakeApi>>, what: &str, done: impl Fn(&FakeApi) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if done(&state.lock().unwrap_or_else(|e| e.into_inner())) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("timed out waiting for {what}");
    }

    #[tokio::test]
    async fn creates_the_secret_then_refreshes_it_in_place_and_keeps_it_when_the_plugin_fails() {
        let dir = tempfile::tempdir().expect("tempdir");
        let plugin = dir.path().join("test-plugin");
        std::fs::write(&plugin, PLUGIN).expect("write plugin");
        std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).expect("chmod");

        let state: Arc<Mutex<FakeApi>> = Arc::default();
        let metrics = Arc::new(Metrics::default());
        let policy = Arc::new(PolicyStore::new(config(dir.path(), &[])));
        let changed = Arc::new(Notify::new());
        let provider_loop = ProviderLoop {
            client: fake_api(state.clone()),
            own_namespace: "psi".into(),
            policy: policy.clone(),
            metrics: metrics.clone(),
            changed: changed.clone(),
            recheck: IDLE_POLL,
        };
        let (renewed, renewals) = tokio::sync::watch::channel(Some(tokio::time::Instant::now()));
        let keep_leading = tokio::spawn(async move {
            loop {
                let _ = renewed.send(Some(tokio::time::Instant::now()));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let stop = Trigger::default();
        let task =
            tokio::spawn(provider_loop.run(Leadership::new(renewals, Vec::new()), stop.clone()));

        // 1. Missing: created, labelled a source, with the lifetime the plugin gave.
        until(&state, "the Secret to be created", |s| s.secret.is_some()).await;
        let created = state
            .lock()
            .map(|s| s.secret.clone())
            .ok()
            .flatten()
            .unwrap_or_default();
        assert_eq!(created["type"], DOCKER_CONFIG_JSON);
        assert_eq!(created["metadata"]["labels"][SOURCE_LABEL], "true");
        let annotations = &created["metadata"]["annotations"];
        assert_eq!(annotations[CREDENTIAL_PROVIDER_ANNOTATION], "test-plugin");
        let at = |key: &str| {
            annotations[key]
                .as_str()
                .and_then(parse_time)
                .unwrap_or_default()
        };
        assert_eq!(at(EXPIRES_AT_ANNOTATION) - at(ISSUED_AT_ANNOTATION), 240);
        assert_eq!(password(&created), "pw-1");

        // 2. The provider changes: refreshed at once, patched in place (same UID), what the
        // user added kept.
        if let Ok(mut s) = state.lock()
            && let Some(secret) = s.secret.as_mut()
        {
            secret["metadata"]["annotations"]["team"] = json!("a");
        }
        policy.set_config(config(dir.path(), &["--changed"]));
        changed.notify_one();
        until(&state, "the refresh", |s| {
            s.secret.as_ref().is_some_and(|v| password(v) == "pw-2")
        })
        .await;
        let refreshed = state
            .lock()
            .map(|s| s.secret.clone())
            .ok()
            .flatten()
            .unwrap_or_default();
        assert_eq!(refreshed["metadata"]["uid"], "uid-1");
        assert_eq!(refreshed["metadata"]["annotations"]["team"], "a");

        // 3. The plugin fails: the Secret keeps the last good credential, the gauge says so.
        policy.set_config(config(dir.path(), &["fail"]));
        changed.notify_one();
        let failing = || {
            metrics
                .encode()
                .contains(r#"credential_provider_failing{provider="test-plugin"} 1"#)
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !failing() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.fire();
        let _ = task.await;
        keep_leading.abort();

        let text = metrics.encode();
        assert!(failing(), "{text}");
        assert!(
            text.contains(
                r#"credential_provider_runs_total{provider="test-plugin",outcome="success"} 2"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"credential_provider_runs_total{provider="test-plugin",outcome="failed"} 1"#
            ),
            "{text}"
        );
        let kept = state
            .lock()
            .map(|s| s.secret.clone())
            .ok()
            .flatten()
            .unwrap_or_default();
        assert_eq!(password(&kept), "pw-2");
        let requests = state.lock().map(|s| s.requests.clone()).unwrap_or_default();
        assert_eq!(
            requests.iter().filter(|r| r.starts_with("POST")).count(),
            1,
            "{requests:?}"
        );
        assert!(!text.contains("pw-"), "no credential in the metrics");

        // 4. A new leader (a restart) with the configuration the Secret was minted by: it
        // reads the Secret and waits for the half-life instead of minting again.
        policy.set_config(config(dir.path(), &["--changed"]));
        let before = state.lock().map(|s| s.requests.len()).unwrap_or_default();
        let (renewed, renewals) = tokio::sync::watch::channel(Some(tokio::time::Instant::now()));
        let stop = Trigger::default();
        let restarted = ProviderLoop {
            client: fake_api(state.clone()),
            own_namespace: "psi".into(),
            policy: policy.clone(),
            metrics: metrics.clone(),
            changed: Arc::new(Notify::new()),
            recheck: Duration::from_millis(200),
        };
        let task = tokio::spawn(restarted.run(Leadership::new(renewals, Vec::new()), stop.clone()));
        until(&state, "the new leader's read", |s| {
            s.requests.len() > before
        })
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let requests = state.lock().map(|s| s.requests.clone()).unwrap_or_default();
        assert_eq!(
            requests[before..],
            ["GET /api/v1/namespaces/psi/secrets/minted".to_string()]
        );
        let calls =
            std::fs::read_to_string(dir.path().join("test-plugin.count")).unwrap_or_default();
        assert_eq!(calls.trim(), "2", "the plugin was not run again");

        // 5. Someone deletes the Secret between refreshes: filled again at the next check.
        if let Ok(mut s) = state.lock() {
            s.secret = None;
        }
        let keep = tokio::spawn(async move {
            loop {
                let _ = renewed.send(Some(tokio::time::Instant::now()));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        until(&state, "the Secret filled again", |s| {
            s.secret.as_ref().is_some_and(|v| password(v) == "pw-3")
        })
        .await;
        stop.fire();
        let _ = task.await;
        keep.abort();
    }
}

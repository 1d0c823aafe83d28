//! Cluster mode: what the injector learns from the Kubernetes API, kept in watch caches so
//! that admissions never wait on the API server.
//!
//! - Namespaces, metadata only: the `pullsecret-injector/inject` label of each namespace.
//! - Secrets cluster-wide, metadata only (`secretAwareness` or `sync`): which Secrets exist,
//!   and which are copies managed by the injector.
//! - Secrets in the injector's namespace, full (`discovery` or `sync`): discovery reads the
//!   docker config keys of those labelled `pullsecret-injector/source=true`; sync copies the
//!   ones rules name. They are read as untyped objects so one odd Secret is skipped, not fatal.
//!
//! Every watch retries with backoff when the API server goes away; the caches keep their last
//! state meanwhile, so admission goes on answering from it. Which watches run is decided at
//! start from `discovery`, `sync` and `secretAwareness` (they also decide the RBAC needed), so
//! changing those three keys takes a restart.

pub mod discovery;
pub mod sync;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, ApiResource, DynamicObject, PartialObjectMeta};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::Notify;

use crate::app::{ClusterView, Readiness};
use crate::cli::ClusterArgs;
use crate::decision::{NamespaceLabel, SecretIndex};
use crate::metrics::{KindLabels, Metrics};
use crate::policy::PolicyStore;
use crate::review::INJECT_LABEL;
use crate::shutdown::Trigger;

/// How often sync re-checks everything even without watch events.
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(60);
/// Annotation that can carry a whole Secret (data included) in plain text: never cached.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("--kubeconfig {}: {source}", path.display())]
    Kubeconfig {
        path: PathBuf,
        source: kube::config::KubeconfigError,
    },
    #[error(
        "cannot find Kubernetes credentials (in-cluster, $KUBECONFIG or ~/.kube/config): {0}; use --kubeconfig, or --standalone to run without the API"
    )]
    Infer(#[from] kube::config::InferConfigError),
    #[error("cannot build the Kubernetes client: {0}")]
    Client(#[from] kube::Error),
    #[error("cluster mode needs the injector's own namespace: set --namespace or POD_NAMESPACE")]
    NoNamespace,
}

/// A Kubernetes client from `--kubeconfig`, else in-cluster config or `$KUBECONFIG`.
pub async fn client(args: &ClusterArgs) -> Result<kube::Client, ClusterError> {
    let mut config = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(|source| {
                ClusterError::Kubeconfig {
                    path: path.clone(),
                    source,
                }
            })?;
            kube::Config::from_custom_kubeconfig(
                kubeconfig,
                &kube::config::KubeConfigOptions::default(),
            )
            .await
            .map_err(|source| ClusterError::Kubeconfig {
                path: path.clone(),
                source,
            })?
        }
        None => kube::Config::infer().await?,
    };
    // Fail fast on an unreachable API server; watches reconnect with backoff.
    config.connect_timeout = Some(Duration::from_secs(5));
    Ok(kube::Client::try_from(config)?)
}

/// Retry delays for the watches: 0.1 s doubling to 5 s, with jitter, reset after a minute of
/// success. kube's default starts at 0.8 s and grows to 30 s, which kept the caches several
/// seconds stale after a brief API server restart; 5 s still spares a struggling API server.
fn watch_backoff() -> kube::runtime::utils::ResetTimerBackoff<watcher::ExponentialBackoff> {
    let exponential = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times();
    kube::runtime::utils::ResetTimerBackoff::new(exponential.into(), Duration::from_secs(60))
}

/// Answers admissions from the watch caches.
pub struct ClusterCache {
    namespaces: Store<PartialObjectMeta<Namespace>>,
    secrets: Option<Store<PartialObjectMeta<Secret>>>,
    secrets_ready: Arc<AtomicBool>,
}

impl SecretIndex for ClusterCache {
    fn secret_exists(&self, namespace: &str, name: &str) -> Option<bool> {
        let store = self.secrets.as_ref()?;
        if !self.secrets_ready.load(Ordering::Acquire) {
            return None;
        }
        Some(store.get(&ObjectRef::new(name).within(namespace)).is_some())
    }
}

impl ClusterView for ClusterCache {
    fn namespace_label(&self, namespace: &str) -> NamespaceLabel {
        match self.namespaces.get(&ObjectRef::new(namespace)) {
            // Not in the cache (yet): the webhook's namespaceSelector already decided.
            None => NamespaceLabel::Unknown,
            Some(ns) => NamespaceLabel::from_value(label(&ns.metadata, INJECT_LABEL)),
        }
    }
}

fn label<'a>(meta: &'a kube::api::ObjectMeta, key: &str) -> Option<&'a str> {
    meta.labels.as_ref()?.get(key).map(String::as_str)
}

fn annotation<'a>(meta: &'a kube::api::ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

/// Starts the watches (and sync, if configured) and returns the view admissions read.
pub async fn start(
    args: &ClusterArgs,
    own_namespace: Option<String>,
    policy: Arc<PolicyStore>,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    stop: Trigger,
) -> Result<Arc<dyn ClusterView>, ClusterError> {
    let own_namespace = own_namespace.ok_or(ClusterError::NoNamespace)?;
    let client = client(args).await?;
    let config = policy.load().config.clone();
    let changed = Arc::new(Notify::new());

    let watch = Watch {
        client: &client,
        metrics: &metrics,
        changed: &changed,
        stop: &stop,
    };
    let namespaces =
        watch.metadata_cache::<Namespace>("namespaces", |meta| meta.annotations = None);
    let secrets_ready = Arc::new(AtomicBool::new(false));
    let secrets = (config.secret_awareness || config.sync).then(|| {
        watch.metadata_cache::<Secret>("secrets", |meta| {
            if let Some(annotations) = meta.annotations.as_mut() {
                annotations.remove(LAST_APPLIED);
            }
        })
    });

    let sources = Arc::new(Mutex::new(BTreeMap::<String, sync::Source>::new()));
    let (sources_listed_tx, mut sources_listed) = tokio::sync::watch::channel(false);
    let watch_sources = config.discovery || config.sync;
    if watch_sources {
        tokio::spawn(watch_sources_task(
            client.clone(),
            own_namespace.clone(),
            config.discovery,
            sources.clone(),
            policy.clone(),
            metrics.clone(),
            changed.clone(),
            sources_listed_tx,
            stop.clone(),
        ));
    }

    // Ready once every cache has its first full list. Only this task waits on the stores: a
    // store's readiness is a oneshot channel that wakes a single waiter; others wait on
    // `caches_ready`.
    let (caches_ready_tx, caches_ready) = tokio::sync::watch::channel(false);
    {
        let (namespaces, secrets, secrets_ready, readiness) = (
            namespaces.clone(),
            secrets.clone(),
            secrets_ready.clone(),
            readiness.clone(),
        );
        tokio::spawn(async move {
            let _ = namespaces.wait_until_ready().await;
            if let Some(secrets) = &secrets {
                let _ = secrets.wait_until_ready().await;
                secrets_ready.store(true, Ordering::Release);
            }
            if watch_sources {
                let _ = sources_listed.wait_for(|listed| *listed).await;
            }
            readiness.set_caches_synced();
            caches_ready_tx.send_replace(true);
            tracing::info!("Kubernetes caches synced; ready");
        });
    }

    if config.sync
        && let Some(secret_store) = secrets.clone()
    {
        let sync_loop = SyncLoop {
            client,
            own_namespace,
            policy,
            namespaces: namespaces.clone(),
            secrets: secret_store,
            sources,
            metrics,
            reported: HashSet::new(),
        };
        tokio::spawn(sync_loop.run(caches_ready, changed, stop));
    }
    Ok(Arc::new(ClusterCache {
        namespaces,
        secrets,
        secrets_ready,
    }))
}

/// What every watch needs.
struct Watch<'a> {
    client: &'a kube::Client,
    metrics: &'a Arc<Metrics>,
    changed: &'a Arc<Notify>,
    stop: &'a Trigger,
}

impl Watch<'_> {
    /// A cluster-wide, metadata-only cache of `K`, without `managedFields` and with whatever
    /// else `strip` removes, kept up to date by a background task.
    fn metadata_cache<K>(
        &self,
        kind: &'static str,
        strip: fn(&mut kube::api::ObjectMeta),
    ) -> Store<PartialObjectMeta<K>>
    where
        K: kube::Resource<DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug
            + Send
            + Sync
            + 'static,
    {
        let (store, writer) = reflector::store();
        let stream = watcher(
            Api::<PartialObjectMeta<K>>::all(self.client.clone()),
            watcher::Config::default(),
        )
        .backoff(watch_backoff())
        .modify(move |object: &mut PartialObjectMeta<K>| {
            object.metadata.managed_fields = None;
            strip(&mut object.metadata);
        });
        spawn_watch(
            kind,
            reflector::reflector(writer, stream),
            self.metrics,
            self.changed,
            self.stop,
        );
        store
    }
}

/// Drives a reflector stream: counts errors (the watcher retries with backoff) and wakes sync.
fn spawn_watch<S, K>(
    kind: &'static str,
    stream: S,
    metrics: &Arc<Metrics>,
    changed: &Arc<Notify>,
    stop: &Trigger,
) where
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    K: Send + 'static,
{
    let (metrics, changed, stopped) = (metrics.clone(), changed.clone(), stop.wait());
    tokio::spawn(async move {
        let events = stream.for_each(|event| {
            match event {
                Ok(_) => changed.notify_one(),
                Err(e) => {
                    metrics.watch_errors.get_or_create(&KindLabels { kind }).inc();
                    tracing::warn!(resource = kind, error = %e, "watch error; retrying with backoff");
                }
            }
            std::future::ready(())
        });
        tokio::select! {
            () = events => tracing::error!(resource = kind, "watch ended"),
            () = stopped => {}
        }
    });
}

/// Watches every Secret in the injector's namespace as untyped objects: the sources for sync
/// and, when labelled, for discovery.
#[allow(clippy::too_many_arguments)] // one task's wiring, called once
async fn watch_sources_task(
    client: kube::Client,
    own_namespace: String,
    discovery: bool,
    sources: Arc<Mutex<BTreeMap<String, sync::Source>>>,
    policy: Arc<PolicyStore>,
    metrics: Arc<Metrics>,
    changed: Arc<Notify>,
    listed: tokio::sync::watch::Sender<bool>,
    stop: Trigger,
) {
    let resource = ApiResource::erase::<Secret>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(client, &own_namespace, &resource);
    let mut stream = watcher(api, watcher::Config::default())
        .backoff(watch_backoff())
        .boxed();
    let mut objects: BTreeMap<String, DynamicObject> = BTreeMap::new();
    let mut pending: Option<BTreeMap<String, DynamicObject>> = None;
    let stopped = stop.wait();
    tokio::pin!(stopped);
    loop {
        let event = tokio::select! {
            event = stream.next() => match event {
                Some(event) => event,
                None => return,
            },
            () = &mut stopped => return,
        };
        let name_of = |o: &DynamicObject| o.metadata.name.clone().unwrap_or_default();
        match event {
            Err(e) => {
                metrics
                    .watch_errors
                    .get_or_create(&KindLabels {
                        kind: "source_secrets",
                    })
                    .inc();
                tracing::warn!(error = %e, "source Secret watch error; retrying with backoff");
                continue;
            }
            Ok(watcher::Event::Init) => {
                pending = Some(BTreeMap::new());
                continue;
            }
            Ok(watcher::Event::InitApply(o)) => {
                if let Some(p) = pending.as_mut() {
                    p.insert(name_of(&o), o);
                }
                continue;
            }
            Ok(watcher::Event::InitDone) => {
                objects = pending.take().unwrap_or_default();
                listed.send_replace(true);
            }
            Ok(watcher::Event::Apply(o)) => {
                objects.insert(name_of(&o), o);
            }
            Ok(watcher::Event::Delete(o)) => {
                objects.remove(&name_of(&o));
            }
        }
        let (current, rules) = read_sources(&objects, discovery, &metrics);
        *sources.lock().unwrap_or_else(|e| e.into_inner()) = current;
        if discovery {
            policy.set_discovered(rules);
        }
        changed.notify_one();
    }
}

/// Turns the Secrets of the injector's namespace into sync sources and discovered rules.
fn read_sources(
    objects: &BTreeMap<String, DynamicObject>,
    discovery: bool,
    metrics: &Metrics,
) -> (BTreeMap<String, sync::Source>, Vec<crate::rules::Rule>) {
    let mut sources = BTreeMap::new();
    let mut rules = Vec::new();
    for (name, object) in objects {
        let kind = object
            .data
            .get("type")
            .and_then(|v| v.as_str())
            .unwrap_or("Opaque")
            .to_string();
        let data = object
            .data
            .get("data")
            .and_then(|v| v.as_object())
            .cloned()
            .unwrap_or_default();
        if discovery && label(&object.metadata, discovery::SOURCE_LABEL) == Some("true") {
            let secret = discovery::SourceSecret {
                name: name.clone(),
                kind: kind.clone(),
                data: data.clone(),
            };
            let (found, errors) = discovery::rules_from(&secret);
            for error in errors {
                metrics
                    .source_secret_errors
                    .get_or_create(&KindLabels { kind: error.kind() })
                    .inc();
                tracing::warn!(error = %error, "source Secret skipped");
            }
            rules.extend(found);
        }
        let resource_version = object.metadata.resource_version.clone().unwrap_or_default();
        sources.insert(
            name.clone(),
            sync::Source {
                name: name.clone(),
                resource_version,
                kind,
                data,
            },
        );
    }
    (sources, rules)
}

/// Keeps Secret copies in step with sources and namespaces.
struct SyncLoop {
    client: kube::Client,
    own_namespace: String,
    policy: Arc<PolicyStore>,
    namespaces: Store<PartialObjectMeta<Namespace>>,
    secrets: Store<PartialObjectMeta<Secret>>,
    sources: Arc<Mutex<BTreeMap<String, sync::Source>>>,
    metrics: Arc<Metrics>,
    reported: HashSet<(String, String)>,
}

impl SyncLoop {
    async fn run(
        mut self,
        mut caches_ready: tokio::sync::watch::Receiver<bool>,
        changed: Arc<Notify>,
        stop: Trigger,
    ) {
        let stopped = stop.wait();
        tokio::pin!(stopped);
        tokio::select! {
            _ = caches_ready.wait_for(|ready| *ready) => {}
            () = &mut stopped => return,
        }
        loop {
            self.pass().await;
            tokio::select! {
                () = changed.notified() => {}
                () = tokio::time::sleep(RESYNC_INTERVAL) => {}
                () = &mut stopped => return,
            }
            // Let a burst of events settle into one pass.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn pass(&mut self) {
        let policy = self.policy.load();
        if !policy.config.sync {
            return;
        }
        let namespaces: Vec<(String, NamespaceLabel)> = self
            .namespaces
            .state()
            .iter()
            .filter(|ns| ns.metadata.deletion_timestamp.is_none())
            .filter_map(|ns| {
                let name = ns.metadata.name.clone()?;
                Some((
                    name,
                    NamespaceLabel::from_value(label(&ns.metadata, INJECT_LABEL)),
                ))
            })
            .collect();
        let sources = self
            .sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let names: HashSet<&str> = policy
            .rules
            .rules()
            .iter()
            .flat_map(|r| r.secrets.iter().map(String::as_str))
            .collect();
        let existing: Vec<sync::Existing> = self
            .secrets
            .state()
            .iter()
            .filter_map(|s| {
                let meta = &s.metadata;
                let (namespace, name) = (meta.namespace.clone()?, meta.name.clone()?);
                let managed = label(meta, sync::MANAGED_BY_LABEL) == Some(sync::MANAGED_BY);
                let managed_source = annotation(meta, sync::SOURCE_ANNOTATION)
                    .filter(|_| managed)
                    .map(String::from);
                if namespace == self.own_namespace
                    || (managed_source.is_none() && !names.contains(name.as_str()))
                {
                    return None;
                }
                let source_version =
                    annotation(meta, sync::SOURCE_VERSION_ANNOTATION).map(String::from);
                Some(sync::Existing {
                    namespace,
                    name,
                    managed_source,
                    source_version,
                })
            })
            .collect();
        let actions = sync::plan(&sync::Inputs {
            config: &policy.config,
            rules: &policy.rules,
            own_namespace: &self.own_namespace,
            namespaces: &namespaces,
            sources: &sources,
            existing: &existing,
        });
        let before = self.reported.len();
        let applied = sync::apply(
            &self.client,
            &self.own_namespace,
            &sources,
            &actions,
            &mut self.reported,
        )
        .await;
        self.metrics
            .sync_conflicts
            .inc_by((self.reported.len() - before) as u64);
        if applied.written > 0 {
            self.metrics
                .secrets_synced
                .get_or_create(&KindLabels { kind: "written" })
                .inc_by(applied.written as u64);
        }
        if applied.deleted > 0 {
            self.metrics
                .secrets_synced
                .get_or_create(&KindLabels { kind: "deleted" })
                .inc_by(applied.deleted as u64);
        }
        if applied.failed == 0 {
            self.metrics.mark_synced_now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use serde_json::json;

    fn secret(name: &str, labelled: bool, body: serde_json::Value) -> DynamicObject {
        let mut object = DynamicObject::new(name, &ApiResource::erase::<Secret>(&())).data(body);
        if labelled {
            object.metadata.labels =
                Some([(discovery::SOURCE_LABEL.to_string(), "true".to_string())].into());
        }
        object.metadata.resource_version = Some("1".into());
        object
    }

    #[test]
    fn odd_source_secrets_are_skipped_and_counted_not_fatal() {
        let config =
            base64::engine::general_purpose::STANDARD.encode(r#"{"auths":{"ghcr.io":{}}}"#);
        let objects: BTreeMap<String, DynamicObject> = [
            secret("good", true, json!({"type": discovery::DOCKER_CONFIG_JSON, "data": {".dockerconfigjson": config}})),
            secret("no-data", true, json!({"type": discovery::DOCKER_CONFIG_JSON})),
            secret("data-not-a-map", true, json!({"type": discovery::DOCKER_CONFIG_JSON, "data": "x"})),
            secret("no-type", true, json!({"data": {"a": "eA=="}})),
            secret("unlabelled", false, json!({"type": discovery::DOCKER_CONFIG_JSON, "data": {".dockerconfigjson": "!"}})),
        ]
        .into_iter()
        .map(|o| (o.metadata.name.clone().unwrap_or_default(), o))
        .collect();
        let metrics = Metrics::default();
        let (sources, rules) = read_sources(&objects, true, &metrics);
        assert_eq!(
            sources.len(),
            5,
            "every Secret stays a possible sync source"
        );
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].pattern.as_str(), "ghcr.io");
        let text = metrics.encode();
        assert!(
            text.contains(r#"source_secret_errors_total{kind="missing_data"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"source_secret_errors_total{kind="wrong_type"} 1"#),
            "{text}"
        );
    }
}

//! Cluster mode: what the injector learns from the Kubernetes API, kept in compact indexes so
//! that admissions never wait on the API server, and the one writer (sync) among replicas.
//!
//! - [`client`]: the client and the watches' backoff.
//! - [`index`]: the indexes and the [`ClusterFacts`](crate::core::facts::ClusterFacts) admission
//!   reads, each knowing whether it is fresh; [`watch`] feeds them.
//! - [`sources`]: labelled docker config Secrets of the injector's namespace (discovery, sync).
//! - [`sync`] (pure plan, apply), [`sync_loop`] (input assembly, driver), [`repair`] (Pods an
//!   outage let through), [`lease`] (one writer for both).
//!
//! Which watches run follows the configuration, also on reload: `secretAwareness` or `sync`
//! watch credential Secrets cluster-wide (metadata only, one server-side filtered watch per
//! docker config type), `discovery` or `sync` watch the labelled sources, `sync` runs the sync
//! loop and `repair` the repair loop, both on the replica holding the Lease. Namespaces
//! (metadata) are always watched.

pub mod client;
pub mod index;
pub mod lease;
pub mod repair;
pub mod sources;
pub mod sync;
pub mod sync_loop;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, ObjectMeta, PartialObjectMeta};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

pub use client::ClusterError;
use index::{ClusterIndex, Index, NamespaceEntry, SecretEntry, SecretIndexes};
use lease::Lease;
use repair::RepairLoop;
use sources::{Discovery, Source};
use sync_loop::SyncLoop;
use watch::{Running, Watches};

use crate::cli::ClusterArgs;
use crate::core::config::Settings;
use crate::core::facts::NamespaceLabel;
use crate::core::names::{
    DOCKER_CFG, DOCKER_CONFIG_JSON, INJECT_LABEL, MANAGED_BY, MANAGED_BY_LABEL, SOURCE_ANNOTATION,
    SOURCE_VERSION_ANNOTATION,
};
use crate::core::policy::{PolicyStore, Sources};
use crate::metrics::{Metrics, RuleLabels};
use crate::shutdown::Trigger;
use crate::webhook::state::Readiness;

/// What the cluster side needs from the process.
pub struct Wiring {
    pub args: ClusterArgs,
    pub own_namespace: Option<String>,
    /// The Lease's name (one per installation, in the injector's namespace).
    pub lease_name: String,
    pub policy: Arc<PolicyStore>,
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
    /// Notified after every successful config reload.
    pub settings_changed: Arc<Notify>,
    pub stop: Trigger,
}

/// The running cluster side: the facts admission reads, and a task to wait for at shutdown.
pub struct Cluster {
    pub facts: Arc<ClusterIndex>,
    pub task: JoinHandle<()>,
}

/// Connects, starts the watches the configuration asks for, and keeps them in step with it.
pub async fn start(wiring: Wiring) -> Result<Cluster, ClusterError> {
    let own_namespace = wiring
        .own_namespace
        .clone()
        .ok_or(ClusterError::NoNamespace)?;
    let client = client::client(&wiring.args).await?;
    let watches = Watches {
        changed: Arc::new(Notify::new()),
    };
    let namespaces = Arc::new(Index::new("namespaces", wiring.metrics.clone()));
    let running_namespaces = watches.start_metadata(
        Api::<Namespace>::all(client.clone()),
        None,
        namespaces.clone(),
        namespace_entry,
    );
    let facts = Arc::new(ClusterIndex {
        namespaces: namespaces.clone(),
        secrets: ArcSwapOption::empty(),
    });
    let mut supervisor = Supervisor {
        client,
        own_namespace,
        lease_name: wiring.lease_name,
        identity: identity(),
        policy: wiring.policy,
        reader: Discovery::new(wiring.metrics.clone()),
        metrics: wiring.metrics,
        facts: facts.clone(),
        watches,
        sources_changed: Arc::new(Notify::new()),
        uncovered: Default::default(),
        secrets: None,
        sources: None,
        lease: None,
        sync: None,
        repair: None,
        _namespaces: running_namespaces,
    };
    let settings = supervisor.policy.load().settings().clone();
    supervisor.apply(&settings);
    let task = tokio::spawn(supervisor.run(
        settings,
        wiring.readiness,
        wiring.settings_changed,
        wiring.stop,
    ));
    Ok(Cluster { facts, task })
}

/// Who this replica is in the Lease: the Pod's name when the chart passes it.
fn identity() -> String {
    std::env::var("POD_NAME")
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| format!("pullsecret-injector-{}", std::process::id()))
}

fn namespace_entry(namespace: &PartialObjectMeta<Namespace>) -> Option<NamespaceEntry> {
    let meta = &namespace.metadata;
    Some(NamespaceEntry {
        label: NamespaceLabel::from_value(label(meta, INJECT_LABEL)),
        terminating: meta.deletion_timestamp.is_some(),
    })
}

fn secret_entry(secret: &PartialObjectMeta<Secret>) -> Option<SecretEntry> {
    let meta = &secret.metadata;
    let managed = label(meta, MANAGED_BY_LABEL) == Some(MANAGED_BY);
    let mark = |key| {
        managed
            .then(|| meta.annotations.as_ref()?.get(key))
            .flatten()
            .map(|v| v.as_str().into())
    };
    Some(SecretEntry {
        managed_source: mark(SOURCE_ANNOTATION),
        source_version: mark(SOURCE_VERSION_ANNOTATION),
    })
}

fn label<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.labels.as_ref()?.get(key).map(String::as_str)
}

struct SecretWatches {
    indexes: Arc<SecretIndexes>,
    _running: Vec<Running>,
}

struct SourceWatch {
    index: Arc<Index<Source>>,
    _running: Running,
}

/// Owns the watches and the sync task, and starts or stops them as the settings change.
struct Supervisor {
    client: kube::Client,
    own_namespace: String,
    lease_name: String,
    identity: String,
    policy: Arc<PolicyStore>,
    metrics: Arc<Metrics>,
    facts: Arc<ClusterIndex>,
    /// Namespace and Secret events: wake sync.
    watches: Watches,
    /// Source events: recompute discovered rules, then wake sync.
    sources_changed: Arc<Notify>,
    /// Reads the sources into discovered rules and keyrings.
    reader: Discovery,
    /// The rules last found not covered by their Secrets' credentials.
    uncovered: std::collections::BTreeMap<String, bool>,
    secrets: Option<SecretWatches>,
    sources: Option<SourceWatch>,
    /// Held while sync or repair is on.
    lease: Option<Lease>,
    sync: Option<(Trigger, JoinHandle<()>)>,
    repair: Option<(Trigger, JoinHandle<()>)>,
    _namespaces: Running,
}

impl Supervisor {
    async fn run(
        mut self,
        mut settings: Settings,
        readiness: Arc<Readiness>,
        settings_changed: Arc<Notify>,
        stop: Trigger,
    ) {
        let stopped = stop.wait();
        tokio::pin!(stopped);
        let mut ready = false;
        let mut poll = tokio::time::interval(Duration::from_millis(50));
        loop {
            tokio::select! {
                () = settings_changed.notified() => {
                    let new = self.policy.load().settings().clone();
                    if new != settings {
                        self.log_changes(&settings, &new);
                        self.apply(&new);
                        settings = new;
                    } else {
                        // The rules may have changed: check them against the credentials.
                        self.report_coverage();
                    }
                }
                () = self.sources_changed.notified() => self.rediscover(),
                _ = poll.tick(), if !ready => {
                    if self.listed() {
                        ready = true;
                        readiness.set_caches_synced();
                        tracing::info!("Kubernetes caches synced; ready");
                    }
                }
                () = &mut stopped => break,
            }
        }
        self.stop_writers().await;
    }

    /// Every cache started so far has its first list.
    fn listed(&self) -> bool {
        self.facts.namespaces.health.is_listed()
            && self
                .secrets
                .as_ref()
                .is_none_or(|s| s.indexes.0.iter().all(|i| i.health.is_listed()))
            && self
                .sources
                .as_ref()
                .is_none_or(|s| s.index.health.is_listed())
    }

    fn log_changes(&self, old: &Settings, new: &Settings) {
        for (key, before, after) in [
            (
                "secretAwareness",
                old.secret_awareness,
                new.secret_awareness,
            ),
            ("discovery", old.discovery, new.discovery),
            ("sync", old.sync, new.sync),
            ("repair", old.repair, new.repair),
        ] {
            if before != after {
                tracing::info!(
                    key,
                    enabled = after,
                    "cluster feature {} on reload",
                    if after { "turned on" } else { "turned off" }
                );
            }
        }
    }

    /// Starts what `settings` needs and stops what it no longer needs.
    fn apply(&mut self, settings: &Settings) {
        let want_secrets = settings.secret_awareness || settings.sync;
        match (want_secrets, self.secrets.is_some()) {
            (true, false) => {
                let (indexes, running): (Vec<_>, Vec<_>) = [
                    ("secrets", DOCKER_CONFIG_JSON),
                    ("legacy_secrets", DOCKER_CFG),
                ]
                .into_iter()
                .map(|(kind, type_)| {
                    let index = Arc::new(Index::new(kind, self.metrics.clone()));
                    let running = self.watches.start_metadata(
                        Api::<Secret>::all(self.client.clone()),
                        Some(format!("type={type_}")),
                        index.clone(),
                        secret_entry,
                    );
                    (index, running)
                })
                .unzip();
                let indexes = Arc::new(SecretIndexes(indexes));
                self.facts.secrets.store(Some(indexes.clone()));
                self.secrets = Some(SecretWatches {
                    indexes,
                    _running: running,
                });
            }
            (false, true) => {
                // Its RBAC may be gone with the setting: stop trusting it at once.
                self.facts.secrets.store(None);
                self.secrets = None;
            }
            _ => {}
        }

        let want_sources = settings.discovery || settings.sync;
        match (want_sources, self.sources.is_some()) {
            (true, false) => {
                let watches = Watches {
                    changed: self.sources_changed.clone(),
                };
                let (index, running) =
                    sources::watch(&watches, &self.client, &self.own_namespace, &self.metrics);
                self.sources = Some(SourceWatch {
                    index,
                    _running: running,
                });
            }
            (false, true) => self.sources = None,
            _ => {}
        }
        self.rediscover();

        if (settings.sync || settings.repair) && self.lease.is_none() {
            self.lease = Some(Lease::contend(
                self.client.clone(),
                self.own_namespace.clone(),
                self.lease_name.clone(),
                self.identity.clone(),
                self.metrics.clone(),
            ));
        }
        match (settings.sync, self.sync.is_some()) {
            (true, false) => self.start_sync(),
            (false, true) => {
                if let Some((stop, _)) = self.sync.take() {
                    stop.fire();
                }
            }
            _ => {}
        }
        match (settings.repair, self.repair.is_some()) {
            (true, false) => self.start_repair(),
            (false, true) => {
                if let Some((stop, _)) = self.repair.take() {
                    stop.fire();
                }
            }
            _ => {}
        }
        if !settings.sync
            && !settings.repair
            && let Some(lease) = self.lease.take()
        {
            tokio::spawn(lease.release());
        }
    }

    /// Discovered rules from the sources (none when discovery is off).
    /// Discovered rules (none when discovery is off) and keyrings from the sources.
    fn rediscover(&mut self) {
        let discovery = self.policy.load().settings().discovery;
        let sources = match &self.sources {
            Some(sources) => self.reader.read(&sources.index, discovery),
            None => Sources::default(),
        };
        self.policy.set_sources(sources);
        self.report_coverage();
        self.watches.changed.notify_one();
    }

    /// For every rule whose Secrets the injector can read: would the kubelet use them for the
    /// rule's images? Exported as a gauge per rule; a newly uncovered rule is logged once.
    fn report_coverage(&mut self) {
        let policy = self.policy.load();
        let mut now = std::collections::BTreeMap::new();
        for rule in policy.rules().rules() {
            let Some(covered) = policy.serves(rule, |keyring| keyring.covers(&rule.pattern)) else {
                continue;
            };
            let pattern = rule.pattern.as_str().to_string();
            if !covered && self.uncovered.get(&pattern) != Some(&false) {
                tracing::warn!(rule = %pattern, secrets = ?rule.secrets, source = %rule.source,
                    "the kubelet would not use this rule's Secrets for its images: none of their docker config keys matches the rule's registry (check --docker-server)");
            }
            now.insert(pattern, covered);
        }
        for gone in self.uncovered.keys().filter(|k| !now.contains_key(*k)) {
            self.metrics
                .rule_credential_mismatch
                .remove(&RuleLabels { rule: gone.clone() });
        }
        for (rule, covered) in &now {
            self.metrics
                .rule_credential_mismatch
                .get_or_create(&RuleLabels { rule: rule.clone() })
                .set(i64::from(!covered));
        }
        self.uncovered = now;
    }

    fn start_sync(&mut self) {
        let (Some(secrets), Some(sources), Some(lease)) =
            (&self.secrets, &self.sources, &self.lease)
        else {
            return;
        };
        let leadership = lease.leadership();
        let sync_loop = SyncLoop {
            client: self.client.clone(),
            own_namespace: self.own_namespace.clone(),
            policy: self.policy.clone(),
            namespaces: self.facts.namespaces.clone(),
            sources: sources.index.clone(),
            secrets: secrets.indexes.clone(),
            metrics: self.metrics.clone(),
            changed: self.watches.changed.clone(),
        };
        let stop = Trigger::default();
        self.sync = Some((stop.clone(), tokio::spawn(sync_loop.run(leadership, stop))));
    }

    fn start_repair(&mut self) {
        let Some(lease) = &self.lease else {
            return;
        };
        let repair_loop = RepairLoop {
            client: self.client.clone(),
            own_namespace: self.own_namespace.clone(),
            identity: self.identity.clone(),
            policy: self.policy.clone(),
            facts: self.facts.clone(),
            metrics: self.metrics.clone(),
        };
        let stop = Trigger::default();
        self.repair = Some((
            stop.clone(),
            tokio::spawn(repair_loop.run(lease.leadership(), stop)),
        ));
    }

    /// At shutdown: stop the writers, then release the Lease before the process exits, so
    /// another replica takes over at once.
    async fn stop_writers(&mut self) {
        for (stop, task) in [self.sync.take(), self.repair.take()].into_iter().flatten() {
            stop.fire();
            let _ = task.await;
        }
        if let Some(lease) = self.lease.take() {
            lease.release().await;
        }
    }
}

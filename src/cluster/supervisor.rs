//! The supervisor of cluster mode: owns the watches, the Lease and the loops that write (sync,
//! repair), starts and stops them as the settings change on reload, reads the sources into
//! discovered rules and keyrings, and marks the process ready once every cache has listed.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::index::{ClusterIndex, Index, SecretIndexes};
use super::lease::Lease;
use super::repair::RepairLoop;
use super::secret_entry;
use super::sources::{self, Coverage, Discovery, Source};
use super::sync_loop::SyncLoop;
use super::watch::{Running, Watches};
use crate::core::config::Settings;
use crate::core::names::{DOCKER_CFG, DOCKER_CONFIG_JSON};
use crate::core::policy::{PolicyStore, Sources};
use crate::metrics::Metrics;
use crate::shutdown::Trigger;
use crate::webhook::state::Readiness;

pub(super) struct SecretWatches {
    indexes: Arc<SecretIndexes>,
    _running: Vec<Running>,
}

pub(super) struct SourceWatch {
    index: Arc<Index<Source>>,
    _running: Running,
}

/// Owns the watches and the sync task, and starts or stops them as the settings change.
pub(super) struct Supervisor {
    pub(super) client: kube::Client,
    pub(super) own_namespace: String,
    pub(super) lease_name: String,
    pub(super) identity: String,
    pub(super) policy: Arc<PolicyStore>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) facts: Arc<ClusterIndex>,
    /// Namespace and Secret events: wake sync.
    pub(super) watches: Watches,
    /// Source events: recompute discovered rules, then wake sync.
    pub(super) sources_changed: Arc<Notify>,
    /// Reads the sources into discovered rules and keyrings.
    pub(super) reader: Discovery,
    /// Which rules their Secrets' credentials cover, as last reported.
    pub(super) coverage: Coverage,
    pub(super) secrets: Option<SecretWatches>,
    pub(super) sources: Option<SourceWatch>,
    /// Held while sync or repair is on.
    pub(super) lease: Option<Lease>,
    pub(super) sync: Option<(Trigger, JoinHandle<()>)>,
    pub(super) repair: Option<(Trigger, JoinHandle<()>)>,
    pub(super) _namespaces: Running,
}

impl Supervisor {
    pub(super) async fn run(
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
                        self.coverage.report(&self.policy.load(), &self.metrics);
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
    pub(super) fn apply(&mut self, settings: &Settings) {
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

    /// Discovered rules (none when discovery is off) and keyrings from the sources.
    fn rediscover(&mut self) {
        let discovery = self.policy.load().settings().discovery;
        let sources = match &self.sources {
            Some(sources) => self.reader.read(&sources.index, discovery),
            None => Sources::default(),
        };
        self.policy.set_sources(sources);
        self.coverage.report(&self.policy.load(), &self.metrics);
        self.watches.changed.notify_one();
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

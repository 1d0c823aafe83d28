//! The supervisor of cluster mode: owns the watches and, in `controller`, the Lease and the
//! loops that write (sync, repair); starts and stops them as the settings change on reload
//! ([`wanted`] and [`steps`] decide which, purely), reads the sources into discovered rules and
//! keyrings, and marks the process ready once every cache has listed.
//!
//! | what runs | `serve` (the webhook) | `controller` (the writer) |
//! |---|---|---|
//! | namespaces (metadata) | always | always |
//! | credential Secrets (metadata, cluster-wide) | `secretAwareness` | `sync` |
//! | sources (the injector's namespace) | `discovery` or `sync` | `discovery` or `sync` |
//! | the Lease | never | `sync` or `repair` |
//! | sync / repair | never | `sync` / `repair` |
//! | sources, for the probe's annotation | `credentialProbe` | `credentialProbe` |
//! | the Lease and the credential probe | never | `credentialProbe` |
//! | sources, for the minted credentials' expiry | `credentialProviders` | `credentialProviders` |
//! | the Lease and the credential providers | never | `credentialProviders` |
//! | managed copies (whole, labelled `app.kubernetes.io/managed-by=pullsecret-injector`) | never | `sync` (with the sync loop) |

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::watcher;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::index::{ClusterIndex, Index, SecretIndexes};
use super::lease::{Fresh, KubeLease, Lease};
use super::probe_loop::ProbeLoop;
use super::provider_loop::ProviderLoop;
use super::repair::RepairLoop;
use super::secret_entry;
use super::sources::{self, Coverage, Discovery, Expiries, Source};
use super::sync_loop::SyncLoop;
use super::watch::{Running, Watches};
use crate::core::config::Settings;
use crate::core::names::{DOCKER_CFG, DOCKER_CONFIG_JSON, MANAGED_BY, MANAGED_BY_LABEL};
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

/// Which process the cluster side runs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// `serve`: admission's read-only caches.
    Webhook,
    /// `controller`: the writers, under the Lease `lease_name`, as `identity`.
    Controller {
        lease_name: String,
        identity: String,
    },
}

/// What should be running for one role and one set of settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Wanted {
    pub secrets: bool,
    pub sources: bool,
    pub lease: bool,
    pub sync: bool,
    pub repair: bool,
    pub probe: bool,
    pub providers: bool,
}

/// Pure: what `role` runs under `settings` (the table in the module docs).
pub fn wanted(role: &Role, settings: &Settings) -> Wanted {
    // The webhook reads the probe's verdicts from the sources' annotations.
    // The webhook also reads the minted credentials' expiry (`credentialProviders`).
    let providers = !settings.credential_providers.providers.is_empty();
    let sources = settings.discovery || settings.sync || settings.credential_probe || providers;
    match role {
        Role::Webhook => Wanted {
            secrets: settings.secret_awareness,
            sources,
            ..Wanted::default()
        },
        Role::Controller { .. } => Wanted {
            secrets: settings.sync,
            sources,
            lease: settings.sync || settings.repair || settings.credential_probe || providers,
            sync: settings.sync,
            repair: settings.repair,
            probe: settings.credential_probe,
            providers,
        },
    }
}

/// One change to what runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    StartSecrets,
    StartSources,
    Contend,
    StartSync,
    StartRepair,
    StartProbe,
    StartProviders,
    StopSync,
    StopRepair,
    StopProbe,
    StopProviders,
    Release,
    StopSources,
    StopSecrets,
}

/// Pure: the steps from `before` to `after`, in a safe order: the caches a writer reads start
/// before it, the writers stop before the Lease is released and before their caches go.
pub fn steps(before: Wanted, after: Wanted) -> Vec<Step> {
    let mut out = Vec::new();
    let starts = [
        (before.secrets, after.secrets, Step::StartSecrets),
        (before.sources, after.sources, Step::StartSources),
        (before.lease, after.lease, Step::Contend),
        (before.sync, after.sync, Step::StartSync),
        (before.repair, after.repair, Step::StartRepair),
        (before.probe, after.probe, Step::StartProbe),
        (before.providers, after.providers, Step::StartProviders),
    ];
    let stops = [
        (before.sync, after.sync, Step::StopSync),
        (before.repair, after.repair, Step::StopRepair),
        (before.probe, after.probe, Step::StopProbe),
        (before.providers, after.providers, Step::StopProviders),
        (before.lease, after.lease, Step::Release),
        (before.sources, after.sources, Step::StopSources),
        (before.secrets, after.secrets, Step::StopSecrets),
    ];
    out.extend(stops.iter().filter(|(b, a, _)| *b && !*a).map(|s| s.2));
    out.extend(starts.iter().filter(|(b, a, _)| !*b && *a).map(|s| s.2));
    out
}

/// Owns the watches and the writing tasks, and starts or stops them as the settings change.
pub(super) struct Supervisor {
    pub(super) role: Role,
    /// What runs now.
    pub(super) running: Wanted,
    pub(super) client: kube::Client,
    pub(super) own_namespace: String,
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
    pub(super) expiries: Expiries,
    pub(super) secrets: Option<SecretWatches>,
    pub(super) sources: Option<SourceWatch>,
    /// Contended for while sync or repair is on (controller only).
    pub(super) lease: Option<Lease>,
    pub(super) sync: Option<(Trigger, JoinHandle<()>)>,
    pub(super) repair: Option<(Trigger, JoinHandle<()>)>,
    pub(super) probe: Option<(Trigger, JoinHandle<()>)>,
    /// Source events: wake the credential probe (new and changed credentials at once).
    pub(super) probe_changed: Arc<Notify>,
    pub(super) providers: Option<(Trigger, JoinHandle<()>)>,
    /// Reloads: wake the credential providers (a changed provider refreshes at once).
    pub(super) providers_changed: Arc<Notify>,
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
                        // The rules may have changed: check them against the credentials, and
                        // let sync act on them now rather than at its next periodic pass.
                        self.coverage.report(&self.policy.load(), &self.metrics);
                        self.watches.changed.notify_one();
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
            (
                "credentialProbe",
                old.credential_probe,
                new.credential_probe,
            ),
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
        let after = wanted(&self.role, settings);
        for step in steps(self.running, after) {
            self.run_step(step);
        }
        self.running = after;
        self.rediscover();
        self.providers_changed.notify_one();
    }

    fn run_step(&mut self, step: Step) {
        match step {
            Step::StartSecrets => self.start_secrets(),
            Step::StopSecrets => {
                // Its RBAC may be gone with the setting: stop trusting it at once.
                self.facts.secrets.store(None);
                self.secrets = None;
            }
            Step::StartSources => {
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
            Step::StopSources => self.sources = None,
            Step::Contend => {
                if let Role::Controller {
                    lease_name,
                    identity,
                } = &self.role
                {
                    let api = KubeLease::new(self.client.clone(), &self.own_namespace, lease_name);
                    self.lease = Some(Lease::contend(api, identity.clone(), self.metrics.clone()));
                }
            }
            Step::Release => {
                if let Some(lease) = self.lease.take() {
                    tokio::spawn(lease.release());
                }
            }
            Step::StartSync => self.start_sync(),
            Step::StopSync => {
                if let Some((stop, _)) = self.sync.take() {
                    stop.fire();
                }
            }
            Step::StartRepair => self.start_repair(),
            Step::StartProbe => self.start_probe(),
            Step::StartProviders => self.start_providers(),
            Step::StopProviders => {
                if let Some((stop, _)) = self.providers.take() {
                    stop.fire();
                }
            }
            Step::StopProbe => {
                if let Some((stop, _)) = self.probe.take() {
                    stop.fire();
                }
            }
            Step::StopRepair => {
                if let Some((stop, _)) = self.repair.take() {
                    stop.fire();
                }
            }
        }
    }

    fn start_secrets(&mut self) {
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

    /// Discovered rules (none when discovery is off) and keyrings from the sources.
    fn rediscover(&mut self) {
        let discovery = self.policy.load().settings().discovery;
        let sources = match &self.sources {
            Some(sources) => self.reader.read(&sources.index, discovery),
            None => Sources::default(),
        };
        self.expiries.report(&sources, &self.metrics);
        self.policy.set_sources(sources);
        self.coverage.report(&self.policy.load(), &self.metrics);
        self.watches.changed.notify_one();
        self.probe_changed.notify_one();
    }

    fn start_probe(&mut self) {
        let (Some(lease), Some(sources)) = (&self.lease, &self.sources) else {
            return;
        };
        let prober = match crate::probe::system_roots().and_then(crate::probe::Prober::new) {
            Ok(prober) => prober,
            Err(error) => {
                tracing::error!(%error, "credentialProbe: cannot build the probe's TLS client; no probes until the next restart");
                return;
            }
        };
        let probe_loop = ProbeLoop {
            client: self.client.clone(),
            own_namespace: self.own_namespace.clone(),
            sources: sources.index.clone(),
            metrics: self.metrics.clone(),
            changed: self.probe_changed.clone(),
            prober,
        };
        let stop = Trigger::default();
        self.probe = Some((
            stop.clone(),
            tokio::spawn(probe_loop.run(lease.leadership(vec![sources.index.clone()]), stop)),
        ));
    }

    fn start_providers(&mut self) {
        let Some(lease) = &self.lease else {
            return;
        };
        let provider_loop = ProviderLoop {
            client: self.client.clone(),
            own_namespace: self.own_namespace.clone(),
            policy: self.policy.clone(),
            metrics: self.metrics.clone(),
            changed: self.providers_changed.clone(),
            recheck: super::provider_loop::IDLE_POLL,
        };
        let stop = Trigger::default();
        self.providers = Some((
            stop.clone(),
            tokio::spawn(provider_loop.run(lease.leadership(Vec::new()), stop)),
        ));
    }

    fn start_sync(&mut self) {
        let (
            Some(secrets),
            Some(sources),
            Some(lease),
            Role::Controller {
                lease_name,
                identity,
            },
        ) = (&self.secrets, &self.sources, &self.lease, &self.role)
        else {
            return;
        };
        // The copies sync manages, whole (a hash of their data is kept), selected by label.
        let copies = Arc::new(Index::new("secret_copies", self.metrics.clone()));
        let resource = ApiResource::erase::<Secret>(&());
        let copies_watch = self.watches.start(
            Api::<DynamicObject>::all_with(self.client.clone(), &resource),
            watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}")),
            copies.clone(),
            super::copies::entry,
        );
        // Sync writes only while every cache it plans from is listed and watching.
        let mut caches: Vec<Arc<dyn Fresh>> = vec![
            self.facts.namespaces.clone(),
            sources.index.clone(),
            copies.clone(),
        ];
        caches.extend(
            secrets
                .indexes
                .0
                .iter()
                .map(|i| i.clone() as Arc<dyn Fresh>),
        );
        let leadership = lease.leadership(caches);
        let sync_loop = SyncLoop {
            client: self.client.clone(),
            own_namespace: self.own_namespace.clone(),
            identity: identity.clone(),
            ledger_name: format!("{lease_name}-copies"),
            policy: self.policy.clone(),
            namespaces: self.facts.namespaces.clone(),
            sources: sources.index.clone(),
            secrets: secrets.indexes.clone(),
            copies,
            _copies_watch: copies_watch,
            metrics: self.metrics.clone(),
            changed: self.watches.changed.clone(),
        };
        let stop = Trigger::default();
        self.sync = Some((stop.clone(), tokio::spawn(sync_loop.run(leadership, stop))));
    }

    fn start_repair(&mut self) {
        let (Some(lease), Role::Controller { identity, .. }) = (&self.lease, &self.role) else {
            return;
        };
        let repair_loop = RepairLoop {
            client: self.client.clone(),
            own_namespace: self.own_namespace.clone(),
            identity: identity.clone(),
            policy: self.policy.clone(),
            facts: self.facts.clone(),
            metrics: self.metrics.clone(),
        };
        let stop = Trigger::default();
        self.repair = Some((
            stop.clone(),
            tokio::spawn(
                repair_loop.run(lease.leadership(vec![self.facts.namespaces.clone()]), stop),
            ),
        ));
    }

    /// At shutdown: stop the writers, then release the Lease before the process exits, so
    /// another replica takes over at once.
    async fn stop_writers(&mut self) {
        for (stop, task) in [
            self.sync.take(),
            self.repair.take(),
            self.probe.take(),
            self.providers.take(),
        ]
        .into_iter()
        .flatten()
        {
            stop.fire();
            let _ = task.await;
        }
        if let Some(lease) = self.lease.take() {
            lease.release().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(awareness: bool, discovery: bool, sync: bool, repair: bool) -> Settings {
        Settings {
            secret_awareness: awareness,
            discovery,
            sync,
            repair,
            ..Settings::default()
        }
    }

    fn one_provider() -> crate::core::credential_provider::CredentialProviders {
        crate::core::credential_provider::CredentialProviders {
            providers: vec![crate::core::credential_provider::Provider {
                name: "p".into(),
                api_version: crate::core::credential_provider::API_VERSIONS[0].into(),
                match_images: vec!["r.example".into()],
                default_cache_duration: Duration::from_secs(60),
                args: Vec::new(),
                env: Vec::new(),
                secret: "s".into(),
                images: vec!["r.example/a".into()],
            }],
            ..Default::default()
        }
    }

    fn controller() -> Role {
        Role::Controller {
            lease_name: "l".into(),
            identity: "i".into(),
        }
    }

    #[test]
    fn what_each_role_runs() {
        let w = |secrets, sources, lease, sync, repair| Wanted {
            secrets,
            sources,
            lease,
            sync,
            repair,
            probe: false,
            providers: false,
        };
        // (awareness, discovery, sync, repair) → (webhook, controller)
        let cases = [
            (
                (false, false, false, false),
                w(false, false, false, false, false),
                w(false, false, false, false, false),
            ),
            (
                (true, false, false, false),
                w(true, false, false, false, false),
                w(false, false, false, false, false),
            ),
            (
                (false, true, false, false),
                w(false, true, false, false, false),
                w(false, true, false, false, false),
            ),
            (
                (false, false, true, false),
                w(false, true, false, false, false),
                w(true, true, true, true, false),
            ),
            (
                (false, false, false, true),
                w(false, false, false, false, false),
                w(false, false, true, false, true),
            ),
            (
                (true, true, true, true),
                w(true, true, false, false, false),
                w(true, true, true, true, true),
            ),
        ];
        for ((a, d, s, r), webhook, ctl) in cases {
            let settings = settings(a, d, s, r);
            assert_eq!(
                wanted(&Role::Webhook, &settings),
                webhook,
                "webhook {settings:?}"
            );
            assert_eq!(
                wanted(&controller(), &settings),
                ctl,
                "controller {settings:?}"
            );
            // The webhook never writes, whatever the settings.
            assert!(!webhook.lease && !webhook.sync && !webhook.repair);
        }
        // credentialProbe: the controller probes under the Lease, reading the sources; the
        // webhook only reads the sources (the probe's annotation), never probes.
        let probe = Settings {
            credential_probe: true,
            ..Settings::default()
        };
        assert_eq!(
            wanted(&Role::Webhook, &probe),
            Wanted {
                sources: true,
                ..Wanted::default()
            }
        );
        assert_eq!(
            wanted(&controller(), &probe),
            Wanted {
                sources: true,
                lease: true,
                probe: true,
                ..Wanted::default()
            }
        );
        // credentialProviders: likewise; the webhook reads the minted Secrets' expiry.
        let providers = Settings {
            credential_providers: one_provider(),
            ..Settings::default()
        };
        assert_eq!(
            wanted(&Role::Webhook, &providers),
            Wanted {
                sources: true,
                ..Wanted::default()
            }
        );
        assert_eq!(
            wanted(&controller(), &providers),
            Wanted {
                sources: true,
                lease: true,
                providers: true,
                ..Wanted::default()
            }
        );
        assert_eq!(
            steps(Wanted::default(), wanted(&controller(), &providers)),
            [Step::StartSources, Step::Contend, Step::StartProviders]
        );
        assert_eq!(
            steps(wanted(&controller(), &providers), Wanted::default()),
            [Step::StopProviders, Step::Release, Step::StopSources]
        );
    }

    #[test]
    fn transitions_start_caches_before_writers_and_stop_writers_first() {
        use Step::*;
        let none = Wanted::default();
        let all = wanted(&controller(), &settings(true, true, true, true));
        let repair_only = wanted(&controller(), &settings(false, false, false, true));
        let sync_only = wanted(&controller(), &settings(false, false, true, false));
        let cases: [(Wanted, Wanted, Vec<Step>); 7] = [
            (none, none, vec![]),
            (all, all, vec![]),
            (
                none,
                all,
                vec![StartSecrets, StartSources, Contend, StartSync, StartRepair],
            ),
            (
                all,
                none,
                vec![StopSync, StopRepair, Release, StopSources, StopSecrets],
            ),
            // Sync off, repair stays: the Lease is kept, sync's caches go after sync.
            (all, repair_only, vec![StopSync, StopSources, StopSecrets]),
            // Repair off, sync on: the Lease is kept across the switch.
            (
                repair_only,
                sync_only,
                vec![StopRepair, StartSecrets, StartSources, StartSync],
            ),
            (
                sync_only,
                none,
                vec![StopSync, Release, StopSources, StopSecrets],
            ),
        ];
        for (before, after, want) in cases {
            assert_eq!(steps(before, after), want, "{before:?} → {after:?}");
        }
    }

    #[test]
    fn every_transition_between_settings_reaches_the_wanted_state() {
        // Apply the steps to a model of what runs and check it ends where `wanted` says, and
        // that no writer ever runs without the Lease and its caches.
        let all: Vec<Settings> = (0..64)
            .map(|b| Settings {
                credential_probe: b & 16 != 0,
                credential_providers: if b & 32 != 0 {
                    one_provider()
                } else {
                    Default::default()
                },
                ..settings(b & 1 != 0, b & 2 != 0, b & 4 != 0, b & 8 != 0)
            })
            .collect();
        for role in [Role::Webhook, controller()] {
            for from in &all {
                for to in &all {
                    let (before, after) = (wanted(&role, from), wanted(&role, to));
                    let mut state = before;
                    for step in steps(before, after) {
                        match step {
                            Step::StartSecrets => state.secrets = true,
                            Step::StopSecrets => state.secrets = false,
                            Step::StartSources => state.sources = true,
                            Step::StopSources => state.sources = false,
                            Step::Contend => state.lease = true,
                            Step::Release => state.lease = false,
                            Step::StartSync => state.sync = true,
                            Step::StopSync => state.sync = false,
                            Step::StartRepair => state.repair = true,
                            Step::StopRepair => state.repair = false,
                            Step::StartProbe => state.probe = true,
                            Step::StopProbe => state.probe = false,
                            Step::StartProviders => state.providers = true,
                            Step::StopProviders => state.providers = false,
                        }
                        assert!(!state.sync || (state.lease && state.secrets && state.sources));
                        assert!(!state.repair || state.lease);
                        assert!(!state.probe || (state.lease && state.sources));
                        assert!(!state.providers || state.lease);
                    }
                    assert_eq!(state, after, "{role:?}: {from:?} → {to:?}");
                }
            }
        }
    }
}

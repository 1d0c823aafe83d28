//! Cluster mode: what the injector learns from the Kubernetes API, kept in compact indexes so
//! that admissions never wait on the API server. Both processes read from here: `serve`
//! (the webhook, read-only caches) and `controller` (the writers: sync and repair under the
//! Lease); [`supervisor`] decides which watches and loops run in each.
//!
//! - [`client`]: the client and the watches' backoff.
//! - [`index`]: the indexes and the [`ClusterFacts`](crate::core::facts::ClusterFacts) admission
//!   reads, each knowing whether it is fresh; [`watch`] feeds them.
//! - [`sources`]: labelled docker config Secrets of the injector's namespace (discovery, sync).
//! - [`sync`] (pure plan, apply), [`sync_loop`] (input assembly, revocation, driver),
//!   [`copies`] (the copies sync manages, watched whole, a hash of their data kept),
//!   [`ledger`] (the UIDs of the copies sync created: what proves a copy is ours), [`repair`]
//!   (Pods an outage let through), [`lease`] (one writer for both, and the gate every write
//!   passes), [`probe_loop`] (the credential probe: does each registry accept its
//!   credential), [`provider_loop`] (credential-provider plugins keeping Secrets filled);
//!   these run only in `controller`.
//!
//! Which watches run follows the configuration and the process, also on reload (the table in
//! [`supervisor`]). Namespaces (metadata) are always watched.

pub mod client;
pub mod copies;
pub mod index;
pub mod lease;
pub mod ledger;
pub mod list;
mod probe_loop;
mod provider_loop;
pub mod repair;
mod repair_queue;
pub mod sources;
mod supervisor;
pub mod sync;
pub mod sync_loop;
pub mod watch;

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, ObjectMeta, PartialObjectMeta};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

pub use client::ClusterError;
use index::{ClusterIndex, Index, NamespaceEntry, SecretEntry};
use sources::{Coverage, Discovery, Expiries};
pub use supervisor::Role;
use supervisor::Supervisor;
use watch::Watches;

use crate::cli::ClusterArgs;
use crate::core::facts::NamespaceLabel;
use crate::core::names::{
    INJECT_LABEL, MANAGED_BY, MANAGED_BY_LABEL, SOURCE_ANNOTATION, SOURCE_VERSION_ANNOTATION,
};
use crate::core::policy::PolicyStore;
use crate::metrics::Metrics;
use crate::shutdown::Trigger;
use crate::webhook::state::Readiness;

/// What the cluster side needs from the process.
pub struct Wiring {
    pub args: ClusterArgs,
    pub own_namespace: Option<String>,
    /// `serve` (read-only caches) or `controller` (the writers and the Lease).
    pub role: Role,
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
        role: wiring.role,
        running: supervisor::Wanted::default(),
        client,
        own_namespace,
        policy: wiring.policy,
        reader: Discovery::new(wiring.metrics.clone()),
        metrics: wiring.metrics,
        facts: facts.clone(),
        watches,
        sources_changed: Arc::new(Notify::new()),
        coverage: Coverage::default(),
        expiries: Expiries::default(),
        secrets: None,
        sources: None,
        lease: None,
        sync: None,
        repair: None,
        probe: None,
        probe_changed: Arc::new(Notify::new()),
        providers: None,
        providers_changed: Arc::new(Notify::new()),
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

fn namespace_entry(namespace: &PartialObjectMeta<Namespace>) -> Option<NamespaceEntry> {
    let meta = &namespace.metadata;
    Some(NamespaceEntry {
        label: NamespaceLabel::from_value(label(meta, INJECT_LABEL)),
        terminating: meta.deletion_timestamp.is_some(),
        labels: Arc::new(meta.labels.clone().unwrap_or_default()),
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

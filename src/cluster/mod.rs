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
pub mod list;
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
use sources::{Coverage, Discovery};
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
        coverage: Coverage::default(),
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

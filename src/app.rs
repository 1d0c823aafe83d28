//! Shared state of a running injector and the two routers built from it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::decision::{NamespaceLabel, SecretIndex};
use crate::metrics::Metrics;
use crate::policy::PolicyStore;

/// What the injector knows about the cluster. Standalone mode knows nothing; cluster mode
/// answers from its watch caches.
pub trait ClusterView: SecretIndex + Send + Sync {
    fn namespace_label(&self, namespace: &str) -> NamespaceLabel;
}

/// No Kubernetes API: namespace selection is left to the webhook's namespaceSelector and
/// every matched secret is referenced.
pub struct Standalone;

impl SecretIndex for Standalone {
    fn secret_exists(&self, _: &str, _: &str) -> Option<bool> {
        None
    }
}

impl ClusterView for Standalone {
    fn namespace_label(&self, _: &str) -> NamespaceLabel {
        NamespaceLabel::Unknown
    }
}

/// Readiness: TLS loaded, caches synced (cluster mode), and not shutting down.
#[derive(Debug, Default)]
pub struct Readiness {
    tls_loaded: AtomicBool,
    caches_synced: AtomicBool,
    shutting_down: AtomicBool,
}

impl Readiness {
    pub fn set_tls_loaded(&self) {
        self.tls_loaded.store(true, Ordering::Release);
    }
    pub fn set_caches_synced(&self) {
        self.caches_synced.store(true, Ordering::Release);
    }
    pub fn set_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }
    pub fn is_ready(&self) -> bool {
        self.tls_loaded.load(Ordering::Acquire)
            && self.caches_synced.load(Ordering::Acquire)
            && !self.shutting_down.load(Ordering::Acquire)
    }
    /// Why not ready, for `/readyz`.
    pub fn reason(&self) -> &'static str {
        if self.shutting_down.load(Ordering::Acquire) {
            "shutting down"
        } else if !self.tls_loaded.load(Ordering::Acquire) {
            "TLS certificate not loaded"
        } else if !self.caches_synced.load(Ordering::Acquire) {
            "Kubernetes caches not synced"
        } else {
            "ok"
        }
    }
}

/// Everything a request handler needs.
pub struct App {
    pub policy: Arc<PolicyStore>,
    pub cluster: Arc<dyn ClusterView>,
    /// The injector's own namespace, never injected.
    pub own_namespace: Option<String>,
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
}

impl App {
    /// A standalone app over `policy`, ready except for TLS (tests mark it loaded).
    pub fn standalone(policy: PolicyStore, own_namespace: Option<String>) -> Self {
        let readiness = Readiness::default();
        readiness.set_caches_synced();
        Self {
            policy: Arc::new(policy),
            cluster: Arc::new(Standalone),
            own_namespace,
            metrics: Arc::new(Metrics::default()),
            readiness: Arc::new(readiness),
        }
    }
}

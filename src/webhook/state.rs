//! Shared state of a running injector: what every request handler reads.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::core::facts::{ClusterFacts, NothingKnown};
use crate::core::policy::PolicyStore;
use crate::metrics::Metrics;

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
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }
    pub fn is_ready(&self) -> bool {
        self.tls_loaded.load(Ordering::Acquire)
            && self.caches_synced.load(Ordering::Acquire)
            && !self.is_shutting_down()
    }
    /// Why not ready, for `/readyz`.
    pub fn reason(&self) -> &'static str {
        if self.is_shutting_down() {
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
    /// Namespace labels and Secrets, from the watch caches in cluster mode.
    pub facts: Arc<dyn ClusterFacts>,
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
            facts: Arc::new(NothingKnown),
            own_namespace,
            metrics: Arc::new(Metrics::standalone()),
            readiness: Arc::new(readiness),
        }
    }
}

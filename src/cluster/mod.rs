//! Cluster mode: namespace and Secret caches, discovery and sync.

use std::sync::Arc;

use crate::app::{ClusterView, Readiness};
use crate::cli::ClusterArgs;
use crate::metrics::Metrics;
use crate::policy::PolicyStore;
use crate::shutdown::Trigger;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster mode is not available in this build; use --standalone")]
    Unavailable,
}

pub async fn start(
    _args: &ClusterArgs,
    _own_namespace: Option<String>,
    _policy: Arc<PolicyStore>,
    _metrics: Arc<Metrics>,
    _readiness: Arc<Readiness>,
    _stop: Trigger,
) -> Result<Arc<dyn ClusterView>, ClusterError> {
    Err(ClusterError::Unavailable)
}

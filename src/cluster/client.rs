//! The Kubernetes client and the retry policy every watch shares.

use std::path::PathBuf;
use std::time::Duration;

use kube::runtime::watcher;

use crate::cli::ClusterArgs;

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
            let error = |source| ClusterError::Kubeconfig {
                path: path.clone(),
                source,
            };
            let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(error)?;
            kube::Config::from_custom_kubeconfig(
                kubeconfig,
                &kube::config::KubeConfigOptions::default(),
            )
            .await
            .map_err(error)?
        }
        None => kube::Config::infer().await?,
    };
    // Fail fast on an unreachable API server; watches reconnect with backoff.
    config.connect_timeout = Some(Duration::from_secs(5));
    // No client-level retries: kube's default retries 429/503/504 up to 15 times, for minutes,
    // which turns an eviction a PodDisruptionBudget refuses (429) into a call that never
    // returns. Every caller retries on its own terms (watch backoff, the next sync pass, the
    // Lease's backoff, repair's retry interval).
    config.default_retry = false;
    Ok(kube::Client::try_from(config)?)
}

/// Retry delays for the watches: 0.1 s doubling to 5 s, with jitter, reset after a minute of
/// success. kube's default starts at 0.8 s and grows to 30 s, which kept the caches several
/// seconds stale after a brief API server restart; 5 s still spares a struggling API server.
pub fn watch_backoff() -> kube::runtime::utils::ResetTimerBackoff<watcher::ExponentialBackoff> {
    let exponential = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times();
    kube::runtime::utils::ResetTimerBackoff::new(exponential.into(), Duration::from_secs(60))
}

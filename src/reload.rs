//! Hot reload of files by polling and comparing bytes.
//!
//! Kubernetes updates mounted ConfigMaps and Secrets by swapping a `..data` symlink, which
//! inotify-style watches on the file miss; reading the files every interval and comparing
//! their contents catches every kind of update, costs a few small reads, and needs no crate.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config;
use crate::metrics::Metrics;
use crate::policy::PolicyStore;
use crate::tls::{self, ReloadingResolver};

/// Calls `on_change` with the files' contents whenever any of them differs from the last read
/// (the first read is the baseline). Unreadable files are retried at the next tick.
pub async fn poll_files<F>(paths: Vec<PathBuf>, interval: Duration, mut on_change: F)
where
    F: FnMut(&[Vec<u8>]) + Send,
{
    let mut last = read_all(&paths).await;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(current) = read_all(&paths).await else {
            continue;
        };
        if last.as_ref() != Some(&current) {
            on_change(&current);
            // Remember what was seen even if it was rejected, so a broken file is reported once
            // and a later fix (or the second half of a non-atomic update) is picked up.
            last = Some(current);
        }
    }
}

async fn read_all(paths: &[PathBuf]) -> Option<Vec<Vec<u8>>> {
    let mut contents = Vec::with_capacity(paths.len());
    for path in paths {
        match tokio::fs::read(path).await {
            Ok(bytes) => contents.push(bytes),
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "cannot read watched file");
                return None;
            }
        }
    }
    Some(contents)
}

/// Reloads the serving certificate when `--tls-cert` or `--tls-key` change.
pub async fn watch_certificate(
    cert: PathBuf,
    key: PathBuf,
    interval: Duration,
    resolver: Arc<ReloadingResolver>,
    metrics: Arc<Metrics>,
) {
    let paths = vec![cert.clone(), key.clone()];
    poll_files(paths, interval, |files| match tls::pair_from_pem(&cert, &files[0], &key, &files[1]) {
        Ok(pair) => {
            resolver.replace(&pair);
            metrics.certificate_expiry.set(pair.not_after);
            Metrics::reload(&metrics.certificate_reloads, true);
            tracing::info!(not_after = pair.not_after, "serving certificate reloaded");
        }
        Err(e) => {
            Metrics::reload(&metrics.certificate_reloads, false);
            tracing::error!(error = %e, "new certificate rejected; still serving the previous one");
        }
    })
    .await;
}

/// Reloads the configuration file when it changes.
pub async fn watch_config(
    path: PathBuf,
    interval: Duration,
    store: Arc<PolicyStore>,
    metrics: Arc<Metrics>,
) {
    let paths = vec![path.clone()];
    poll_files(paths, interval, |files| match config::from_bytes(&path, &files[0]) {
        Ok(config) => {
            let rules = config.rules.rules().len();
            store.set_config(config);
            Metrics::reload(&metrics.config_reloads, true);
            tracing::info!(path = %path.display(), rules, "configuration reloaded");
        }
        Err(e) => {
            Metrics::reload(&metrics.config_reloads, false);
            tracing::error!(error = %e, "new configuration rejected; still serving the previous one");
        }
    })
    .await;
}

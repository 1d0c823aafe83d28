//! Hot reload of files by polling and comparing bytes.
//!
//! Kubernetes updates mounted ConfigMaps and Secrets by swapping a `..data` symlink, which
//! inotify-style watches on the file miss; reading the files every interval and comparing
//! their contents catches every kind of update, costs a few small reads, and needs no crate.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::core::config;
use crate::core::policy::PolicyStore;
use crate::metrics::Metrics;
use crate::webhook::tls::{self, ReloadingResolver};

/// Calls `on_change` with the files' contents whenever any of them differs from the last read.
/// `baseline` is what the caller loaded at startup, so a change made between that load and
/// the first poll is still seen. Unreadable files are retried at the next tick.
pub async fn poll_files<F>(
    paths: Vec<PathBuf>,
    baseline: Vec<Vec<u8>>,
    interval: Duration,
    mut on_change: F,
) where
    F: FnMut(&[Vec<u8>]) + Send,
{
    let mut last = Some(baseline);
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

/// Reloads the serving certificate when `--tls-cert` or `--tls-key` change from `baseline`
/// (the certificate and key bytes loaded at startup).
pub async fn watch_certificate(
    cert: PathBuf,
    key: PathBuf,
    baseline: Vec<Vec<u8>>,
    interval: Duration,
    resolver: Arc<ReloadingResolver>,
    metrics: Arc<Metrics>,
) {
    let paths = vec![cert.clone(), key.clone()];
    poll_files(paths, baseline, interval, |files| match tls::pair_from_pem(
        &cert, &files[0], &key, &files[1],
    ) {
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

/// Reloads the configuration file when it changes from `baseline` (the bytes loaded at
/// startup), and tells `changed` (the cluster side starts or stops watches to match).
pub async fn watch_config(
    path: PathBuf,
    baseline: Vec<u8>,
    interval: Duration,
    store: Arc<PolicyStore>,
    metrics: Arc<Metrics>,
    changed: Arc<Notify>,
) {
    let paths = vec![path.clone()];
    poll_files(paths, vec![baseline], interval, |files| match config::from_bytes(&path, &files[0]) {
        Ok(config) => {
            let rules = config.rules.len();
            store.set_config(config);
            Metrics::reload(&metrics.config_reloads, true);
            tracing::info!(path = %path.display(), rules, "configuration reloaded");
            changed.notify_one();
        }
        Err(e) => {
            Metrics::reload(&metrics.config_reloads, false);
            tracing::error!(error = %e, "new configuration rejected; still serving the previous one");
        }
    })
    .await;
}

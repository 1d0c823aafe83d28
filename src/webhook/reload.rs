//! Hot reload of files by polling and comparing bytes.
//!
//! Kubernetes updates mounted ConfigMaps and Secrets by swapping a `..data` symlink, which
//! inotify-style watches on the file miss; reading the files every interval and comparing
//! their contents catches every kind of update, costs a few small reads, and needs no crate.
//!
//! `serve --standalone` knows no namespace labels, so a configuration whose rules use a
//! `namespaceSelector` is refused there, at start and at each reload ([`check_standalone`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::core::config::{self, Config, ConfigError, FieldError};
use crate::core::policy::PolicyStore;
use crate::core::rules::RuleSource;
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

/// A configuration `serve --standalone` can honour: namespace labels are unknown there, so a
/// rule with a `namespaceSelector` (which would never match) is an error naming its field;
/// names and globs work.
pub fn check_standalone(path: &Path, config: Config) -> Result<Config, ConfigError> {
    let errors: Vec<FieldError> = config
        .rules
        .iter()
        .filter(|rule| rule.scope.has_selector())
        .filter_map(|rule| match rule.source {
            RuleSource::Config { index } => Some(FieldError {
                path: format!("rules[{index}].namespaceSelector"),
                message: "needs namespace labels, which --standalone does not have; use namespaces: [...]".into(),
            }),
            RuleSource::Discovered { .. } => None,
        })
        .collect();
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError::Invalid {
            path: path.into(),
            errors,
        })
    }
}

/// Reloads the configuration file when it changes from `baseline` (the bytes loaded at
/// startup), and tells `changed` (the cluster side starts or stops watches to match). With
/// `standalone`, a new file that fails [`check_standalone`] is rejected like an invalid one
/// (the last good configuration keeps serving).
pub async fn watch_config(
    path: PathBuf,
    baseline: Vec<u8>,
    interval: Duration,
    store: Arc<PolicyStore>,
    metrics: Arc<Metrics>,
    changed: Arc<Notify>,
    standalone: bool,
) {
    let paths = vec![path.clone()];
    let parse = |bytes: &[u8]| {
        let config = config::from_bytes(&path, bytes)?;
        if standalone {
            check_standalone(&path, config)
        } else {
            Ok(config)
        }
    };
    // What the last good file said, to log what a reload changes.
    let mut current = config::from_bytes(&path, &baseline).ok();
    poll_files(paths, vec![baseline], interval, |files| match parse(&files[0]) {
        Ok(config) => {
            let rules = config.rules.len();
            let what = match &current {
                Some(old) => {
                    let changes = config::changes(old, &config);
                    if changes.is_empty() {
                        "nothing that matters (comments, formatting)".to_string()
                    } else {
                        changes.join("; ")
                    }
                }
                None => "the startup file was not readable".to_string(),
            };
            current = Some(config.clone());
            store.set_config(config);
            Metrics::reload(&metrics.config_reloads, true);
            tracing::info!(path = %path.display(), rules, changed = %what, "configuration reloaded");
            changed.notify_one();
        }
        Err(e) => {
            Metrics::reload(&metrics.config_reloads, false);
            tracing::error!(error = %e, "new configuration rejected; still serving the previous one");
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standalone_refuses_selectors_and_keeps_names() {
        let path = Path::new("config.yaml");
        let yaml = r#"
rules:
  - registry: ghcr.io/acme/team-a
    secrets: [team-a-pull]
    namespaces: [team-a, "team-a-*"]
  - registry: ghcr.io/acme/team-b
    secrets: [team-b-pull]
    namespaceSelector:
      matchLabels: {team: b}
"#;
        let config = config::from_bytes(path, yaml.as_bytes()).expect("valid in cluster mode");
        let err = check_standalone(path, config)
            .expect_err("a selector needs labels")
            .to_string();
        assert!(
            err.contains("rules[1].namespaceSelector: needs namespace labels, which --standalone does not have; use namespaces: [...]"),
            "{err}"
        );
        assert!(!err.contains("rules[0]"), "{err}");
        let names_only = yaml
            .split("  - registry: ghcr.io/acme/team-b")
            .next()
            .unwrap_or("");
        let config = config::from_bytes(path, names_only.as_bytes()).expect("valid");
        assert!(check_standalone(path, config).is_ok());
    }

    #[tokio::test]
    async fn a_standalone_reload_to_a_selector_is_rejected() {
        let dir = std::env::temp_dir().join(format!("psi-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("config.yaml");
        let good = b"rules:\n  - registry: ghcr.io\n    secrets: [a]\n    namespaces: [team-a]\n";
        std::fs::write(&path, good).expect("write");
        let config = config::from_bytes(&path, good).expect("valid");
        let store = Arc::new(PolicyStore::new(config));
        let metrics = Arc::new(Metrics::default());
        let task = tokio::spawn(watch_config(
            path.clone(),
            good.to_vec(),
            Duration::from_millis(10),
            store.clone(),
            metrics.clone(),
            Arc::new(Notify::new()),
            true,
        ));
        let bad = b"rules:\n  - registry: quay.io\n    secrets: [b]\n    namespaceSelector: {matchLabels: {team: b}}\n";
        std::fs::write(&path, bad).expect("write");
        for _ in 0..500 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if metrics
                .encode()
                .contains(r#"config_reloads_total{result="failure"} 1"#)
            {
                break;
            }
        }
        task.abort();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            metrics
                .encode()
                .contains(r#"config_reloads_total{result="failure"} 1"#),
            "{}",
            metrics.encode()
        );
        let policy = store.load();
        assert_eq!(policy.rules().rules()[0].pattern.as_str(), "ghcr.io");
    }
}

//! `check-config`: validate a configuration file, reporting every error at once; with
//! `-f SECRETS`, also check each rule against the docker config Secrets it names, as the
//! kubelet would match their keys (exit 1 when a rule's Secrets would not be used), and each
//! source Secret's scope annotations (exit 1 when one cannot be parsed: that source would serve
//! no namespace).
//!
//! With `requireScope: true`, every rule, and every source Secret given with `-f`, that declares
//! no scope is reported as serving nowhere: a warning, not an error (exit 0 unless something
//! else is wrong), because that is what `requireScope` is for, and a file that turns it on
//! before the scopes are written is valid.

use std::fmt::Write;

use crate::cli::CheckConfigArgs;
use crate::commands::{
    ManifestError, docker_config_secrets, is_source, read_documents, secret_documents, source_scope,
};
use crate::core::config::{self, ConfigError};
use crate::core::dockercfg;
use crate::core::policy::{Policy, Sources};

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("error: {0}")]
    Manifest(#[from] ManifestError),
    #[error("{0}")]
    Credentials(String),
}

/// The report for a valid file, or the error listing every problem.
pub fn run(args: &CheckConfigArgs) -> Result<String, CheckError> {
    let config = config::load(&args.config)?;
    let mut out = format!(
        "{}: valid ({} rules)\n",
        args.config.display(),
        config.rules.len()
    );
    let require_scope = config.settings.require_scope;
    let mut warnings: Vec<String> = Vec::new();
    if require_scope {
        for (index, rule) in config.rules.iter().enumerate() {
            if !rule.scope.is_declared() {
                warnings.push(format!(
                    "rules[{index}] ({}): no namespaces or namespaceSelector; with requireScope it serves no namespace",
                    rule.pattern
                ));
            }
        }
    }
    let warn = |out: &mut String, warnings: &[String]| {
        for w in warnings {
            let _ = writeln!(out, "warning: {w}");
        }
    };
    if args.secrets.is_empty() {
        warn(&mut out, &warnings);
        return Ok(out);
    }
    let mut sources = Sources::default();
    let mut problems: Vec<String> = Vec::new();
    for path in &args.secrets {
        let docs = read_documents(path)?;
        for secret in secret_documents(&docs).into_iter().filter(|s| is_source(s)) {
            let name = secret
                .pointer("/metadata/name")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("<unnamed>");
            match source_scope(secret) {
                Err(e) => problems.push(format!(
                    "source Secret {name}: {e}; it would serve no namespace"
                )),
                Ok(scope) if require_scope && !scope.is_declared() => warnings.push(format!(
                    "source Secret {name}: no {} or {} annotation; with requireScope it serves no namespace",
                    crate::core::names::NAMESPACES_ANNOTATION,
                    crate::core::names::NAMESPACE_SELECTOR_ANNOTATION
                )),
                Ok(_) => {}
            }
        }
        for secret in docker_config_secrets(&docs) {
            match dockercfg::keyring_of(&secret) {
                Ok(keyring) => {
                    sources.keyrings.insert(secret.name.clone(), keyring);
                }
                Err(e) => {
                    problems.push(e.to_string());
                }
            }
        }
    }
    let policy = Policy::merged(&config, &sources);
    let mut checked = 0;
    for (index, rule) in config.rules.iter().enumerate() {
        let Some(covered) = policy.serves(rule, |keyring| keyring.covers(&rule.pattern)) else {
            continue;
        };
        checked += 1;
        if !covered {
            // Offline, the file is the user's own: naming its keys is what helps here.
            let keys: Vec<&str> = rule
                .secrets
                .iter()
                .filter_map(|s| sources.keyrings.get(s))
                .flat_map(|k| k.keys().iter().map(String::as_str))
                .collect();
            problems.push(format!(
                "rules[{index}] ({}): the kubelet would not use Secret {} for this rule's images: its docker config keys ({}) do not match the registry",
                rule.pattern,
                rule.secrets.join(", "),
                keys.join(", ")
            ));
        }
    }
    if problems.is_empty() {
        let _ = writeln!(
            out,
            "{checked} rule(s) checked against {} Secret(s): the kubelet would use them",
            sources.keyrings.len()
        );
        warn(&mut out, &warnings);
        Ok(out)
    } else {
        let mut report = format!(
            "{} problem(s):\n  {}",
            problems.len(),
            problems.join("\n  ")
        );
        for w in &warnings {
            let _ = write!(report, "\nwarning: {w}");
        }
        Err(CheckError::Credentials(report))
    }
}

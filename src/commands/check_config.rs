//! `check-config`: validate a configuration file, reporting every error at once; with
//! `-f SECRETS`, also check each rule against the docker config Secrets it names, as the
//! kubelet would match their keys (exit 1 when a rule's Secrets would not be used).

use std::fmt::Write;

use crate::cli::CheckConfigArgs;
use crate::commands::{ManifestError, docker_config_secrets, read_documents};
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
    if args.secrets.is_empty() {
        return Ok(out);
    }
    let mut sources = Sources::default();
    let mut problems: Vec<String> = Vec::new();
    for path in &args.secrets {
        for secret in docker_config_secrets(&read_documents(path)?) {
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
        Ok(out)
    } else {
        Err(CheckError::Credentials(format!(
            "{} credential problem(s):\n  {}",
            problems.len(),
            problems.join("\n  ")
        )))
    }
}

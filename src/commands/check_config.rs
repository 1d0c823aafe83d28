//! `check-config`: validate a configuration file, reporting every error at once; with
//! `-f FILE...`, also check each rule against the docker config Secrets it names, as the
//! kubelet would match their keys, and each source Secret's scope annotations.
//!
//! What each rule's Secrets serve, of the images the rule matches:
//! - all of them: fine;
//! - some of them (partial coverage): fine and shown with what serves them. A glob rule such as
//!   `*.dkr.ecr.*.amazonaws.com` with a Secret for one account is the usual cloud setup;
//! - none of them: an error (exit 1), the kubelet would pull those images without credentials.
//!
//! Also errors: a rule naming a Secret that is not a docker config Secret (the kubelet ignores
//! it as a pull secret), a Secret whose docker config cannot be read, a source Secret's scope
//! annotation that cannot be parsed (that source would serve no namespace), and files holding
//! no Secret at all. Warnings (exit code unchanged): documents that are not Secrets, Secrets no
//! rule names, an empty rule set, rules that can never win, and, with `requireScope: true`,
//! rules and sources that declare no scope (that is what `requireScope` is for, and a file
//! that turns it on before the scopes are written is valid).
//!
//! Each docker config Secret's expiry, when known ([`crate::core::expiry`]), is shown as
//! `expires at ...` or `expired at ...`; an expired one, or one expiring within the hour, and an
//! expiry annotation that is not a time are warnings.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde_json::Value;

use crate::cli::CheckConfigArgs;
use crate::commands::{
    ManifestError, Output, is_source, non_secret_documents, read_all, secret_documents,
    source_scope,
};
use crate::core::config::{self, ConfigError};
use crate::core::coverage::{self, Coverage};
use crate::core::dockercfg::{self, SourceSecret};
use crate::core::expiry::{self, Expiry, Status};
use crate::core::keyring::Keyring;
use crate::core::names::{DOCKER_CFG, DOCKER_CONFIG_JSON};
use crate::core::policy::{Policy, Sources};
use crate::core::scope::Scope;

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Manifest(#[from] ManifestError),
    /// The file is valid but what the Secrets say is wrong: the report so far, and each problem.
    #[error("{} problem(s):\n  {}", problems.len(), problems.join("\n  "))]
    Problems {
        output: Output,
        problems: Vec<String>,
    },
}

impl CheckError {
    /// What was found before the problems (printed before the error).
    pub fn output(&self) -> Option<&Output> {
        match self {
            CheckError::Problems { output, .. } => Some(output),
            _ => None,
        }
    }
}

/// A Secret found in `-f`, with the file it came from.
struct Found<'a> {
    file: &'a str,
    kind: String,
    keyring: Option<Keyring>,
    expiry: Option<Expiry>,
}

/// The report for a valid file, or the error listing every problem.
pub fn run(args: &CheckConfigArgs) -> Result<Output, CheckError> {
    let config = config::load(&args.config)?;
    let mut output = Output {
        report: format!(
            "{}: valid ({} rules)\n",
            args.config.display(),
            config.rules.len()
        ),
        warnings: Vec::new(),
    };
    let require_scope = config.settings.require_scope;
    if require_scope {
        for (index, rule) in config.rules.iter().enumerate() {
            if !rule.scope.is_declared() {
                output.warnings.push(format!(
                    "rules[{index}] ({}): no namespaces or namespaceSelector; with requireScope it serves no namespace",
                    rule.pattern
                ));
            }
        }
    }
    if args.files.is_empty() {
        output
            .warnings
            .splice(0..0, Policy::from_config(&config).warnings());
        return Ok(output);
    }
    let docs = read_all(&args.files)?;
    let mut problems: Vec<String> = Vec::new();
    let mut secrets: BTreeMap<String, Found<'_>> = BTreeMap::new();
    let mut sources = Sources::default();
    for (file, doc) in &docs {
        let doc = std::slice::from_ref(doc);
        for other in non_secret_documents(doc) {
            output
                .warnings
                .push(format!("{file}: {other} is not a Secret; ignored"));
        }
        for secret in secret_documents(doc) {
            let Some(source) = SourceSecret::from_json(secret) else {
                output
                    .warnings
                    .push(format!("{file}: a Secret without a name; ignored"));
                continue;
            };
            if is_source(secret) {
                let scope = check_source_scope(
                    secret,
                    &source.name,
                    require_scope,
                    &mut problems,
                    &mut output,
                );
                sources.scopes.insert(source.name.clone(), scope);
            }
            let keyring = match source.kind.as_str() {
                DOCKER_CONFIG_JSON | DOCKER_CFG => match dockercfg::keyring_of(&source) {
                    Ok(keyring) => Some(keyring),
                    Err(e) => {
                        problems.push(format!("{file}: {e}"));
                        None
                    }
                },
                _ => None,
            };
            if let Some(keyring) = &keyring {
                sources
                    .keyrings
                    .insert(source.name.clone(), keyring.clone());
            }
            let reading = if is_docker_config(&source.kind) {
                expiry::read_json(secret, &source)
            } else {
                expiry::Reading::default()
            };
            for problem in &reading.problems {
                output
                    .warnings
                    .push(format!("{file}: Secret {}: {problem}", source.name));
            }
            secrets.insert(
                source.name.clone(),
                Found {
                    file,
                    kind: source.kind.clone(),
                    keyring,
                    expiry: reading.expiry,
                },
            );
        }
    }
    if secrets.is_empty() {
        problems.push(format!(
            "no Secret in {}: nothing to check the rules against",
            args.files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    // The sources' scopes play no part in what the kubelet does with them, but whether a rule
    // can never win is judged with them.
    output
        .warnings
        .splice(0..0, Policy::merged(&config, &sources).warnings());
    let mut checked = 0;
    for (index, rule) in config.rules.iter().enumerate() {
        let name = format!("rules[{index}] ({})", rule.pattern);
        let mut keyrings: Vec<(&str, &Keyring)> = Vec::new();
        for secret in &rule.secrets {
            match secrets.get(secret) {
                None => {
                    let _ = writeln!(
                        output.report,
                        "{name}: Secret {secret} is not in the files given; not checked"
                    );
                }
                Some(Found {
                    file,
                    kind,
                    keyring: None,
                    ..
                }) if !is_docker_config(kind) => {
                    problems.push(format!(
                        "{name}: Secret {secret} ({file}) is of type {kind}: the kubelet uses only {DOCKER_CONFIG_JSON} (or {DOCKER_CFG}) Secrets as pull secrets"
                    ));
                }
                // Unreadable: reported above.
                Some(Found { keyring: None, .. }) => {}
                Some(Found {
                    keyring: Some(keyring),
                    ..
                }) => keyrings.push((secret, keyring)),
            }
        }
        if keyrings.is_empty() {
            continue;
        }
        checked += 1;
        let named: Vec<&str> = keyrings.iter().map(|(s, _)| *s).collect();
        match coverage::of(&rule.pattern, keyrings.iter().copied()) {
            Coverage::Full => {
                let _ = writeln!(
                    output.report,
                    "{name}: the kubelet would use Secret {} for all of its images",
                    named.join(", ")
                );
            }
            Coverage::Partial { served_by } => {
                let _ = writeln!(
                    output.report,
                    "{name}: partial coverage: the kubelet would use {} for the rule's images under {}; its other images get no credential from {}",
                    served_by
                        .iter()
                        .map(|k| format!("Secret {}", k.secret))
                        .collect::<std::collections::BTreeSet<_>>()
                        .into_iter()
                        .collect::<Vec<_>>()
                        .join(", "),
                    served_by
                        .iter()
                        .map(|k| k.key.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    if named.len() == 1 { "it" } else { "them" }
                );
            }
            Coverage::None => {
                // Offline, the file is the user's own: naming its keys is what helps here.
                let keys: Vec<&str> = keyrings
                    .iter()
                    .flat_map(|(_, k)| k.keys().iter().map(String::as_str))
                    .collect();
                problems.push(format!(
                    "{name}: the kubelet would not use Secret {} for any of this rule's images: its docker config keys ({}) do not match the registry",
                    named.join(", "),
                    keys.join(", ")
                ));
            }
        }
    }
    let now = crate::metrics::unix_now();
    for (secret, found) in &secrets {
        if let Some(expiry) = &found.expiry {
            let _ = writeln!(output.report, "Secret {secret}: {}", expiry.describe(now));
            match expiry.status(now) {
                Status::Valid => {}
                Status::ExpiresSoon => output.warnings.push(format!(
                    "Secret {secret} ({}) expires within the hour: renew it, or pulls with it fail from {}",
                    found.file,
                    expiry.rfc3339()
                )),
                Status::Expired => output.warnings.push(format!(
                    "Secret {secret} ({}) has expired: pulls with it fail until it is renewed",
                    found.file
                )),
            }
        }
        let named = config.rules.iter().any(|r| r.secrets.contains(secret));
        let discovered = config.settings.discovery
            && is_docker_config(&found.kind)
            && docs.iter().any(|(_, d)| {
                secret_documents(std::slice::from_ref(d))
                    .iter()
                    .any(|s| is_source(s) && name_of(s) == Some(secret))
            });
        if !named && !discovered {
            output.warnings.push(format!(
                "Secret {secret} ({}) is not named by any rule{}",
                found.file,
                if is_docker_config(&found.kind) {
                    ""
                } else {
                    " (nor is it a docker config Secret)"
                }
            ));
        }
    }
    if problems.is_empty() {
        let _ = writeln!(
            output.report,
            "{checked} rule(s) checked against {} docker config Secret(s): the kubelet would use each rule's Secrets (for part of its images where said)",
            sources.keyrings.len()
        );
        Ok(output)
    } else {
        Err(CheckError::Problems { output, problems })
    }
}

fn is_docker_config(kind: &str) -> bool {
    matches!(kind, DOCKER_CONFIG_JSON | DOCKER_CFG)
}

fn name_of(secret: &Value) -> Option<&str> {
    secret.pointer("/metadata/name").and_then(Value::as_str)
}

/// A source Secret's scope from its annotations: unparsable is a problem (and nowhere),
/// undeclared under `requireScope` a warning.
fn check_source_scope(
    secret: &Value,
    name: &str,
    require_scope: bool,
    problems: &mut Vec<String>,
    output: &mut Output,
) -> Scope {
    match source_scope(secret) {
        Err(e) => {
            problems.push(format!(
                "source Secret {name}: {e}; it would serve no namespace"
            ));
            Scope::nowhere()
        }
        Ok(scope) => {
            if require_scope && !scope.is_declared() {
                output.warnings.push(format!(
                    "source Secret {name}: no {} or {} annotation; with requireScope it serves no namespace",
                    crate::core::names::NAMESPACES_ANNOTATION,
                    crate::core::names::NAMESPACE_SELECTOR_ANNOTATION
                ));
            }
            scope
        }
    }
}

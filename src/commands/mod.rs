//! The subcommands other than `serve` (which is [`crate::webhook::run`]). Each renders the
//! core's [`Verdict`](crate::core::verdict::Verdict); none decides anything of its own.
//!
//! - [`check_config`]: validate a configuration file.
//! - [`explain`]: offline, what the webhook would do to the Pods in a file.
//! - [`audit`]: against a live cluster, what it would do to the Pods that exist.

pub mod audit;
pub mod check_config;
pub mod explain;

use std::path::Path;

use serde_json::Value;

use crate::core::config::Settings;
use crate::core::dockercfg::SourceSecret;
use crate::core::names::{
    DOCKER_CFG, DOCKER_CONFIG_JSON, NAMESPACE_SELECTOR_ANNOTATION, NAMESPACES_ANNOTATION,
    SOURCE_LABEL,
};
use crate::core::rules::Rule;
use crate::core::scope::Scope;

/// What a command prints: its report on stdout, and warnings (each printed as
/// `warning: ...` on stderr; they never change the exit code).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Output {
    pub report: String,
    pub warnings: Vec<String>,
}

/// A manifest file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not valid YAML or JSON: {message}")]
    Parse { path: String, message: String },
}

/// Reads a YAML or JSON file (multi-document allowed; `-` for stdin) into documents.
pub fn read_documents(path: &Path) -> Result<Vec<Value>, ManifestError> {
    let shown = path.display().to_string();
    let read = if shown == "-" {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(path)
    };
    let text = read.map_err(|source| ManifestError::Read {
        path: shown.clone(),
        source,
    })?;
    parse_documents(&shown, &text)
}

/// The documents of every file in `paths`, each with the file it came from.
pub fn read_all(paths: &[std::path::PathBuf]) -> Result<Vec<(String, Value)>, ManifestError> {
    let mut out = Vec::new();
    for path in paths {
        let shown = path.display().to_string();
        out.extend(
            read_documents(path)?
                .into_iter()
                .map(|d| (shown.clone(), d)),
        );
    }
    Ok(out)
}

pub fn parse_documents(name: &str, text: &str) -> Result<Vec<Value>, ManifestError> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| ManifestError::Parse {
        path: name.to_string(),
        message: crate::core::config::yaml_message(&e.to_string()),
    })?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

/// The docker config Secrets among `docs` (descending into Lists), as `kubectl create secret
/// docker-registry --dry-run=client -o yaml` writes them, each with its document (for its
/// annotations).
pub fn docker_config_secrets(docs: &[Value]) -> Vec<(&Value, SourceSecret)> {
    let mut out = Vec::new();
    for doc in docs {
        match doc.get("kind").and_then(Value::as_str) {
            Some("List" | "SecretList") => {
                let items = doc.get("items").and_then(Value::as_array);
                out.extend(docker_config_secrets(items.map_or(&[][..], Vec::as_slice)));
            }
            Some("Secret") => {
                if let Some(secret) = SourceSecret::from_json(doc)
                    && matches!(secret.kind.as_str(), DOCKER_CONFIG_JSON | DOCKER_CFG)
                {
                    out.push((doc, secret));
                }
            }
            _ => {}
        }
    }
    out
}

/// The kinds of the documents among `docs` (descending into Lists) that are not Secrets, as
/// `Kind name`, for commands that read Secrets only.
pub fn non_secret_documents(docs: &[Value]) -> Vec<String> {
    let mut out = Vec::new();
    for doc in docs {
        let kind = doc.get("kind").and_then(Value::as_str);
        match kind {
            Some("List" | "SecretList") => {
                let items = doc.get("items").and_then(Value::as_array);
                out.extend(non_secret_documents(items.map_or(&[][..], Vec::as_slice)));
            }
            Some("Secret") => {}
            _ => {
                let name = doc
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("<unnamed>");
                out.push(format!("{} {name}", kind.unwrap_or("object without kind")));
            }
        }
    }
    out
}

/// Every Secret among `docs` (descending into Lists), as JSON.
pub fn secret_documents(docs: &[Value]) -> Vec<&Value> {
    let mut out = Vec::new();
    for doc in docs {
        match doc.get("kind").and_then(Value::as_str) {
            Some("List" | "SecretList") => {
                let items = doc.get("items").and_then(Value::as_array);
                out.extend(secret_documents(items.map_or(&[][..], Vec::as_slice)));
            }
            Some("Secret") => out.push(doc),
            _ => {}
        }
    }
    out
}

/// Whether a Secret (as JSON) is labelled `pullsecret-injector/source=true`.
pub fn is_source(secret: &Value) -> bool {
    secret
        .pointer("/metadata/labels")
        .and_then(|labels| labels.get(SOURCE_LABEL))
        .and_then(Value::as_str)
        == Some("true")
}

/// A source Secret's scope, from its annotations (`pullsecret-injector/namespaces`,
/// `pullsecret-injector/namespace-selector`); the error names the annotation. The caller
/// serves nowhere on an error, as the injector does.
pub fn source_scope(secret: &Value) -> Result<Scope, String> {
    let annotation = |key: &str| {
        secret
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(key))
            .and_then(Value::as_str)
    };
    Scope::from_annotations(
        annotation(NAMESPACES_ANNOTATION),
        annotation(NAMESPACE_SELECTOR_ANNOTATION),
    )
}

/// The scope a rule is enforced with: its own, or nowhere when `requireScope` is on and it
/// declares none.
pub fn effective_scope(rule: &Rule, settings: &Settings) -> Scope {
    rule.scope.enforced(settings.require_scope)
}

/// A rule's scope for people: [`Scope::describe`], saying why when `requireScope` made it
/// nowhere.
pub fn describe_scope(rule: &Rule, settings: &Settings) -> String {
    effective_scope(rule, settings).describe()
}

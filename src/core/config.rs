//! The configuration file: loading, validation with field paths, and the validated [`Config`].
//!
//! The YAML is first read into a generic tree and then checked field by field, so that
//! `check-config` can report every error at once (a typed serde pass stops at the first).

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::core::rules::{RegistryPattern, Rule, RuleSource};

/// Namespaces excluded when the file does not say otherwise.
pub const DEFAULT_EXCLUDED_NAMESPACES: [&str; 3] =
    ["kube-system", "kube-public", "kube-node-lease"];

/// `enforce` patches Pods; `audit` only reports (then `/mutate` behaves like `/audit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Enforce,
    Audit,
}

impl Mode {
    /// The name used in the file, in logs and in `explain`/`audit` output.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        }
    }
}

/// Which namespaces are in scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    /// Only namespaces labelled `pullsecret-injector/inject=enabled` (or `=audit`).
    OptIn,
    /// Every namespace except excluded ones and those labelled `=disabled`.
    All,
}

/// A validated configuration file: the settings and the file's own rules. Decisions never
/// read `rules` from here: they read the [`Policy`](crate::core::policy::Policy), which
/// merges them with discovered rules.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub settings: Settings,
    /// `rules[]` of the file, in order.
    pub rules: Vec<Rule>,
}

/// Every key of the file except `rules`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub mode: Mode,
    pub selection: Selection,
    pub exclude: Vec<String>,
    pub discovery: bool,
    pub sync: bool,
    /// Cluster mode: watch Secret metadata to warn when a referenced Secret is not in the
    /// Pod's namespace.
    pub secret_awareness: bool,
    /// Cluster mode: evict Pods admitted without their secrets and stuck pulling when a
    /// ReplicaSet, StatefulSet or DaemonSet recreates them; report the others (the Lease
    /// holder only; `cluster/repair.rs`).
    pub repair: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            mode: Mode::Enforce,
            selection: Selection::OptIn,
            exclude: DEFAULT_EXCLUDED_NAMESPACES.map(String::from).to_vec(),
            discovery: false,
            sync: false,
            // Off, as in the chart: the grant it needs (list/watch Secrets cluster-wide)
            // cannot be limited to metadata, and it only ever adds warnings.
            secret_awareness: false,
            repair: false,
        }
    }
}

/// One problem in the file, located by its field path (e.g. `rules[2].registry`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {} is not valid YAML: {message}", path.display())]
    Yaml { path: PathBuf, message: String },
    #[error("config file {} has {} error(s):\n  {}", path.display(), errors.len(),
        errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "))]
    Invalid {
        path: PathBuf,
        errors: Vec<FieldError>,
    },
}

impl ConfigError {
    /// Stable label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ConfigError::Read { .. } => "read",
            ConfigError::Yaml { .. } => "yaml",
            ConfigError::Invalid { .. } => "invalid",
        }
    }
}

/// Reads and validates a configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    load_with_bytes(path).map(|(config, _)| config)
}

/// [`load`], also returning the bytes read (the baseline for reloads).
pub fn load_with_bytes(path: &Path) -> Result<(Config, Vec<u8>), ConfigError> {
    let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
        path: path.into(),
        source,
    })?;
    Ok((from_bytes(path, &bytes)?, bytes))
}

/// Validates configuration file contents; `path` is only used in messages.
pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Config, ConfigError> {
    let text = std::str::from_utf8(bytes).map_err(|e| ConfigError::Yaml {
        path: path.into(),
        message: format!("not UTF-8: {e}"),
    })?;
    let tree: Value = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_saphyr::from_str(text).map_err(|e| ConfigError::Yaml {
            path: path.into(),
            message: e.to_string(),
        })?
    };
    validate(&tree).map_err(|errors| ConfigError::Invalid {
        path: path.into(),
        errors,
    })
}

/// Checks the whole tree, collecting every error rather than stopping at the first.
pub fn validate(tree: &Value) -> Result<Config, Vec<FieldError>> {
    let mut v = Validator::default();
    let mut config = Config::default();
    let empty = Map::new();
    let root = match tree {
        Value::Null => &empty,
        Value::Object(map) => map,
        other => {
            v.error(
                "",
                format!("expected a mapping at the top level, found {}", kind(other)),
            );
            &empty
        }
    };
    v.unknown_keys(
        "",
        root,
        &[
            "mode",
            "namespaces",
            "rules",
            "discovery",
            "sync",
            "secretAwareness",
            "repair",
        ],
    );

    if let Some(mode) = root.get("mode") {
        match mode.as_str() {
            Some("enforce") => config.settings.mode = Mode::Enforce,
            Some("audit") => config.settings.mode = Mode::Audit,
            _ => v.error(
                "mode",
                format!("{} is not one of: enforce, audit", show(mode)),
            ),
        }
    }
    if let Some(namespaces) = root.get("namespaces") {
        v.namespaces(namespaces, &mut config.settings);
    }
    if let Some(rules) = root.get("rules") {
        config.rules = v.rules(rules);
    }
    for (key, slot) in [
        ("discovery", &mut config.settings.discovery),
        ("sync", &mut config.settings.sync),
        ("secretAwareness", &mut config.settings.secret_awareness),
        ("repair", &mut config.settings.repair),
    ] {
        if let Some(value) = root.get(key) {
            match value.as_bool() {
                Some(b) => *slot = b,
                None => v.error(
                    key,
                    format!("expected true or false, found {}", show(value)),
                ),
            }
        }
    }
    if v.errors.is_empty() {
        Ok(config)
    } else {
        Err(v.errors)
    }
}

#[derive(Default)]
struct Validator {
    errors: Vec<FieldError>,
}

impl Validator {
    fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }

    fn unknown_keys(&mut self, path: &str, map: &Map<String, Value>, known: &[&str]) {
        for key in map.keys().filter(|k| !known.contains(&k.as_str())) {
            let at = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            self.error(
                at,
                format!("unknown field; expected one of: {}", known.join(", ")),
            );
        }
    }

    fn namespaces(&mut self, value: &Value, settings: &mut Settings) {
        let Some(map) = value.as_object() else {
            return self.error(
                "namespaces",
                format!("expected a mapping, found {}", kind(value)),
            );
        };
        self.unknown_keys("namespaces", map, &["selection", "exclude"]);
        if let Some(selection) = map.get("selection") {
            match selection.as_str() {
                Some("opt-in") => settings.selection = Selection::OptIn,
                Some("all") => settings.selection = Selection::All,
                _ => self.error(
                    "namespaces.selection",
                    format!("{} is not one of: opt-in, all", show(selection)),
                ),
            }
        }
        if let Some(exclude) = map.get("exclude") {
            settings.exclude = self.names(
                "namespaces.exclude",
                exclude,
                is_dns1123_label,
                "namespace name",
            );
        }
    }

    fn rules(&mut self, value: &Value) -> Vec<Rule> {
        let Some(items) = value.as_array() else {
            self.error("rules", format!("expected a list, found {}", kind(value)));
            return Vec::new();
        };
        let mut rules = Vec::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            let path = format!("rules[{index}]");
            let Some(map) = item.as_object() else {
                self.error(&path, format!("expected a mapping, found {}", kind(item)));
                continue;
            };
            self.unknown_keys(&path, map, &["registry", "secrets", "pullPolicy"]);
            let pattern = match map.get("registry") {
                None => {
                    self.error(format!("{path}.registry"), "is required");
                    None
                }
                Some(Value::String(raw)) => match RegistryPattern::parse(raw) {
                    Ok(pattern) => Some(pattern),
                    Err(e) => {
                        self.error(
                            format!("{path}.registry"),
                            format!("'{raw}' is not a valid registry pattern: {e}"),
                        );
                        None
                    }
                },
                Some(other) => {
                    self.error(
                        format!("{path}.registry"),
                        format!("expected a string, found {}", kind(other)),
                    );
                    None
                }
            };
            let secrets = match map.get("secrets") {
                None => {
                    self.error(format!("{path}.secrets"), "is required");
                    Vec::new()
                }
                Some(value) => {
                    let names = self.names(
                        &format!("{path}.secrets"),
                        value,
                        is_dns1123_subdomain,
                        "Secret name",
                    );
                    if names.is_empty() && value.as_array().is_some_and(Vec::is_empty) {
                        self.error(format!("{path}.secrets"), "must name at least one Secret");
                    }
                    names
                }
            };
            let pull_policy_always = match map.get("pullPolicy") {
                None => false,
                Some(Value::String(s)) if s == "Always" => true,
                Some(other) => {
                    self.error(
                        format!("{path}.pullPolicy"),
                        format!("{} is not supported; the only value is Always", show(other)),
                    );
                    false
                }
            };
            if let Some(pattern) = pattern {
                rules.push(Rule {
                    pattern,
                    secrets,
                    pull_policy_always,
                    source: RuleSource::Config { index },
                    scope: Default::default(),
                });
            }
        }
        rules
    }

    /// A list of distinct names, each checked by `valid`.
    fn names(
        &mut self,
        path: &str,
        value: &Value,
        valid: fn(&str) -> bool,
        what: &str,
    ) -> Vec<String> {
        let Some(items) = value.as_array() else {
            self.error(path, format!("expected a list, found {}", kind(value)));
            return Vec::new();
        };
        let mut names: Vec<String> = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            match item.as_str() {
                Some(name) if valid(name) => {
                    if !names.iter().any(|n| n == name) {
                        names.push(name.to_string());
                    }
                }
                Some(name) => self.error(
                    format!("{path}[{i}]"),
                    format!("'{name}' is not a valid {what}"),
                ),
                None => self.error(
                    format!("{path}[{i}]"),
                    format!("expected a string, found {}", kind(item)),
                ),
            }
        }
        names
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

fn show(value: &Value) -> String {
    match value {
        Value::String(s) => format!("'{s}'"),
        other => kind(other).to_string(),
    }
}

/// Namespace names: RFC 1123 labels.
pub fn is_dns1123_label(name: &str) -> bool {
    name.len() <= 63
        && crate::core::image::is_domain_component(name)
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Secret names: RFC 1123 subdomains.
pub fn is_dns1123_subdomain(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(is_dns1123_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(yaml: &str) -> Vec<String> {
        match from_bytes(Path::new("test.yaml"), yaml.as_bytes()) {
            Ok(_) => Vec::new(),
            Err(ConfigError::Invalid { errors, .. }) => {
                errors.iter().map(ToString::to_string).collect()
            }
            Err(other) => vec![other.to_string()],
        }
    }

    #[test]
    fn spec_example_is_valid() {
        let yaml = r#"
mode: enforce
namespaces:
  selection: opt-in
  exclude: [kube-system, kube-public, kube-node-lease]
rules:
  - registry: docker.io
    secrets: [dockerhub]
  - registry: "*.dkr.ecr.*.amazonaws.com"
    secrets: [ecr]
  - registry: ghcr.io/acme
    secrets: [ghcr-acme]
    pullPolicy: Always
discovery: false
sync: false
"#;
        let config = from_bytes(Path::new("c.yaml"), yaml.as_bytes()).expect("valid");
        assert_eq!(config.settings.mode, Mode::Enforce);
        assert_eq!(config.settings.selection, Selection::OptIn);
        assert_eq!(config.rules.len(), 3);
        assert!(config.rules[2].pull_policy_always);
        assert!(!config.settings.secret_awareness);
    }

    #[test]
    fn empty_file_gives_defaults() {
        let config = from_bytes(Path::new("c.yaml"), b"\n").expect("valid");
        assert_eq!(config.settings.exclude, DEFAULT_EXCLUDED_NAMESPACES);
        assert!(config.rules.is_empty());
    }

    #[test]
    fn reports_every_error_with_its_path() {
        let yaml = r#"
mode: dryrun
namespaces:
  selection: some
  exclude: [Kube_System, 7]
  extra: 1
rules:
  - registry: docker.io
    secrets: [dockerhub]
  - registry: ghcr.io
  - registry: "*.io:x"
    secrets: [ok, Not_OK]
    pullPolicy: IfNotPresent
  - "just a string"
  - secrets: []
sync: "yes"
typo: true
"#;
        let got = errors(yaml);
        let want = [
            "typo: unknown field; expected one of: mode, namespaces, rules, discovery, sync, secretAwareness, repair",
            "mode: 'dryrun' is not one of: enforce, audit",
            "namespaces.extra: unknown field; expected one of: selection, exclude",
            "namespaces.selection: 'some' is not one of: opt-in, all",
            "namespaces.exclude[0]: 'Kube_System' is not a valid namespace name",
            "namespaces.exclude[1]: expected a string, found a number",
            "rules[1].secrets: is required",
            "rules[2].registry: '*.io:x' is not a valid registry pattern: port 'x' must be a number from 1 to 65535",
            "rules[2].secrets[1]: 'Not_OK' is not a valid Secret name",
            "rules[2].pullPolicy: 'IfNotPresent' is not supported; the only value is Always",
            "rules[3]: expected a mapping, found a string",
            "rules[4].registry: is required",
            "rules[4].secrets: must name at least one Secret",
            "sync: expected true or false, found 'yes'",
        ];
        for line in want {
            assert!(
                got.iter().any(|g| g == line),
                "missing {line:?} in {got:#?}"
            );
        }
        assert_eq!(got.len(), want.len(), "{got:#?}");
    }

    #[test]
    fn broken_yaml_and_missing_files_are_clear() {
        let err = from_bytes(Path::new("c.yaml"), b"rules: [unclosed").expect_err("invalid");
        assert!(matches!(err, ConfigError::Yaml { .. }), "{err}");
        let err = load(Path::new("/nonexistent/config.yaml")).expect_err("missing");
        assert!(
            err.to_string().contains("/nonexistent/config.yaml"),
            "{err}"
        );
        assert_eq!(
            errors("- a\n- b\n"),
            ["expected a mapping at the top level, found a list"]
        );
    }
}

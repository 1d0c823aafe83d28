//! The configuration file: loading, validation with field paths, and the validated [`Config`].
//!
//! The YAML is first read into a generic tree and then checked field by field, so that
//! `check-config` can report every error at once (a typed serde pass stops at the first).

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::core::credential_provider::{self, CredentialProviders, Provider};
use crate::core::rules::{RegistryPattern, Rule, RuleSource};
use crate::core::scope::{NamePattern, Operator, Requirement, Scope, Selector, check_requirement};

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
    /// `false`: the Pod label `pullsecret-injector/inject=disabled|audit` is ignored (only
    /// namespace labels opt out).
    pub pod_opt_out: bool,
    /// `true`: a rule or source Secret that declares no namespace scope serves no namespace.
    pub require_scope: bool,
    /// `controller`: ask each concrete registry host a source Secret's credentials serve
    /// whether it accepts them (`cluster/probe.rs`; the Lease holder only).
    pub credential_probe: bool,
    /// Sync: a copy in a namespace that left its credential's scope (or whose source is gone)
    /// is deleted after this long, even if a Pod still names it.
    pub revoke_after: std::time::Duration,
    /// `controller`: the kubelet credential-provider plugins that keep source Secrets filled
    /// (`cluster/provider_loop.rs`; the Lease holder only). Empty: off.
    pub credential_providers: CredentialProviders,
}

/// `revokeAfter` when the file does not say.
pub const DEFAULT_REVOKE_AFTER: std::time::Duration = std::time::Duration::from_secs(600);

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
            pod_opt_out: true,
            require_scope: false,
            credential_probe: false,
            revoke_after: DEFAULT_REVOKE_AFTER,
            credential_providers: CredentialProviders::default(),
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
            message: yaml_message(&e.to_string()),
        })?
    };
    validate(&tree).map_err(|errors| ConfigError::Invalid {
        path: path.into(),
        errors,
    })
}

/// What differs between two configurations, for the reload log line: each setting that
/// changed (`mode: enforce -> audit`), and the rules (count, patterns added, removed or whose
/// secrets, scope or pull policy changed). Empty when nothing that matters changed (a
/// comment, the order of keys).
pub fn changes(old: &Config, new: &Config) -> Vec<String> {
    let (a, b) = (&old.settings, &new.settings);
    let mut out = Vec::new();
    let mut differ = |key: &str, before: String, after: String| {
        if before != after {
            out.push(format!("{key}: {before} -> {after}"));
        }
    };
    let selection = |s: Selection| match s {
        Selection::OptIn => "opt-in".to_string(),
        Selection::All => "all".to_string(),
    };
    differ("mode", a.mode.as_str().into(), b.mode.as_str().into());
    differ(
        "namespaces.selection",
        selection(a.selection),
        selection(b.selection),
    );
    differ(
        "namespaces.exclude",
        format!("[{}]", a.exclude.join(", ")),
        format!("[{}]", b.exclude.join(", ")),
    );
    for (key, before, after) in [
        ("discovery", a.discovery, b.discovery),
        ("sync", a.sync, b.sync),
        ("secretAwareness", a.secret_awareness, b.secret_awareness),
        ("repair", a.repair, b.repair),
        ("podOptOut", a.pod_opt_out, b.pod_opt_out),
        ("requireScope", a.require_scope, b.require_scope),
        ("credentialProbe", a.credential_probe, b.credential_probe),
    ] {
        differ(key, before.to_string(), after.to_string());
    }
    differ(
        "revokeAfter",
        format!("{:?}", a.revoke_after),
        format!("{:?}", b.revoke_after),
    );
    let providers = |p: &CredentialProviders| {
        let names: Vec<String> = p
            .providers
            .iter()
            .map(|p| format!("{} -> {} ({})", p.name, p.secret, p.fingerprint()))
            .collect();
        format!("{} [{}]", p.bin_dir.display(), names.join(", "))
    };
    differ(
        "credentialProviders",
        providers(&a.credential_providers),
        providers(&b.credential_providers),
    );
    // Rules by pattern; a rule "changed" when its secrets, scope or pull policy did.
    let what = |rule: &Rule| {
        (
            rule.secrets.clone(),
            rule.scope.describe(),
            rule.pull_policy_always,
        )
    };
    let find = |rules: &[Rule], pattern: &str| {
        rules
            .iter()
            .find(|r| r.pattern.as_str() == pattern)
            .map(what)
    };
    let patterns =
        |rules: &[Rule]| -> Vec<String> { rules.iter().map(|r| r.pattern.to_string()).collect() };
    let added: Vec<String> = patterns(&new.rules)
        .into_iter()
        .filter(|p| find(&old.rules, p).is_none())
        .collect();
    let removed: Vec<String> = patterns(&old.rules)
        .into_iter()
        .filter(|p| find(&new.rules, p).is_none())
        .collect();
    let changed: Vec<String> = new
        .rules
        .iter()
        .filter(|r| find(&old.rules, r.pattern.as_str()).is_some_and(|w| w != what(r)))
        .map(|r| r.pattern.to_string())
        .collect();
    let order_changed =
        added.is_empty() && removed.is_empty() && patterns(&old.rules) != patterns(&new.rules);
    if !added.is_empty() || !removed.is_empty() || !changed.is_empty() || order_changed {
        let mut parts = Vec::new();
        for (label, list) in [
            ("added", &added),
            ("removed", &removed),
            ("changed", &changed),
        ] {
            if !list.is_empty() {
                parts.push(format!("{label} {}", list.join(", ")));
            }
        }
        if order_changed {
            parts.push("reordered".into());
        }
        out.push(format!(
            "rules: {} -> {} ({})",
            old.rules.len(),
            new.rules.len(),
            parts.join("; ")
        ));
    }
    out
}

/// A YAML parser's error for people: the location and the cause (`line 2 column 1:
/// duplicate mapping key: mode`), without what only the parser's own API explains: its name
/// for the input (`<input>`; callers name the file), the source excerpt it draws, and advice
/// on its options (`set DuplicateKeyPolicy in Options`).
pub fn yaml_message(message: &str) -> String {
    let first = message.lines().next().unwrap_or(message).trim();
    let first = first.strip_prefix("error:").unwrap_or(first).trim();
    let hint = [", set ", "; set "]
        .iter()
        .filter_map(|sep| first.find(sep))
        .min()
        .filter(|at| first[*at..].contains("Options") || first[*at..].contains("Policy"));
    match hint {
        Some(at) => first[..at].to_string(),
        None => first.to_string(),
    }
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
            "podOptOut",
            "requireScope",
            "revokeAfter",
            "credentialProbe",
            "credentialProviders",
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
        ("podOptOut", &mut config.settings.pod_opt_out),
        ("requireScope", &mut config.settings.require_scope),
        ("credentialProbe", &mut config.settings.credential_probe),
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
    if let Some(value) = root.get("revokeAfter") {
        match value.as_str().map(crate::cli::parse_duration) {
            Some(Ok(d)) if !d.is_zero() => config.settings.revoke_after = d,
            Some(Ok(_)) => v.error("revokeAfter", "must be longer than 0s"),
            Some(Err(e)) => v.error("revokeAfter", e),
            None => v.error(
                "revokeAfter",
                format!("expected a duration such as 10m, found {}", show(value)),
            ),
        }
    }
    if let Some(value) = root.get("credentialProviders") {
        config.settings.credential_providers = v.credential_providers(value);
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
            self.unknown_keys(
                &path,
                map,
                &[
                    "registry",
                    "secrets",
                    "pullPolicy",
                    "namespaces",
                    "namespaceSelector",
                ],
            );
            let scope = self.scope(&path, map);
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
                    scope,
                });
            }
        }
        rules
    }

    /// A rule's `namespaces` (names or globs) and `namespaceSelector` (a LabelSelector).
    fn scope(&mut self, path: &str, map: &Map<String, Value>) -> Scope {
        let names = map.get("namespaces").map(|value| {
            let path = format!("{path}.namespaces");
            let Some(items) = value.as_array() else {
                self.error(&path, format!("expected a list, found {}", kind(value)));
                return Vec::new();
            };
            if items.is_empty() {
                self.error(
                    &path,
                    "must name at least one namespace (omit it for every namespace)",
                );
            }
            let mut names = Vec::new();
            for (i, item) in items.iter().enumerate() {
                match item.as_str().map(NamePattern::parse) {
                    Some(Ok(name)) => names.push(name),
                    Some(Err(e)) => self.error(format!("{path}[{i}]"), e),
                    None => self.error(
                        format!("{path}[{i}]"),
                        format!("expected a string, found {}", kind(item)),
                    ),
                }
            }
            names
        });
        let selector = map
            .get("namespaceSelector")
            .map(|value| self.selector(&format!("{path}.namespaceSelector"), value));
        Scope::new(names, selector)
    }

    /// A standard LabelSelector: `matchLabels` and `matchExpressions` (In, NotIn, Exists,
    /// DoesNotExist).
    fn selector(&mut self, path: &str, value: &Value) -> Selector {
        let mut selector = Selector::default();
        let Some(map) = value.as_object() else {
            self.error(path, format!("expected a mapping, found {}", kind(value)));
            return selector;
        };
        self.unknown_keys(path, map, &["matchLabels", "matchExpressions"]);
        if let Some(labels) = map.get("matchLabels") {
            match labels.as_object() {
                Some(labels) => {
                    for (key, value) in labels {
                        let requirement = Requirement {
                            key: key.clone(),
                            operator: Operator::In(vec![
                                value.as_str().unwrap_or("\0").to_string(),
                            ]),
                        };
                        match (value.as_str(), check_requirement(&requirement)) {
                            (Some(_), Ok(())) => selector.requirements.push(requirement),
                            (None, _) => self.error(
                                format!("{path}.matchLabels.{key}"),
                                format!("expected a string, found {}", kind(value)),
                            ),
                            (_, Err(e)) => self.error(format!("{path}.matchLabels.{key}"), e),
                        }
                    }
                }
                None => self.error(
                    format!("{path}.matchLabels"),
                    format!("expected a mapping, found {}", kind(labels)),
                ),
            }
        }
        if let Some(expressions) = map.get("matchExpressions") {
            let Some(items) = expressions.as_array() else {
                self.error(
                    format!("{path}.matchExpressions"),
                    format!("expected a list, found {}", kind(expressions)),
                );
                return selector;
            };
            for (i, item) in items.iter().enumerate() {
                let at = format!("{path}.matchExpressions[{i}]");
                let Some(expr) = item.as_object() else {
                    self.error(&at, format!("expected a mapping, found {}", kind(item)));
                    continue;
                };
                self.unknown_keys(&at, expr, &["key", "operator", "values"]);
                let key = expr.get("key").and_then(Value::as_str).unwrap_or_default();
                let values: Vec<String> = match expr.get("values") {
                    None => Vec::new(),
                    Some(Value::Array(values)) if values.iter().all(Value::is_string) => values
                        .iter()
                        .filter_map(|v| v.as_str().map(String::from))
                        .collect(),
                    Some(other) => {
                        self.error(
                            format!("{at}.values"),
                            format!("expected a list of strings, found {}", show(other)),
                        );
                        continue;
                    }
                };
                let operator = match expr.get("operator").and_then(Value::as_str) {
                    Some("In") => Operator::In(values.clone()),
                    Some("NotIn") => Operator::NotIn(values.clone()),
                    Some("Exists") => Operator::Exists,
                    Some("DoesNotExist") => Operator::DoesNotExist,
                    _ => {
                        self.error(
                            format!("{at}.operator"),
                            "must be one of: In, NotIn, Exists, DoesNotExist",
                        );
                        continue;
                    }
                };
                if matches!(operator, Operator::Exists | Operator::DoesNotExist)
                    && !values.is_empty()
                {
                    self.error(
                        format!("{at}.values"),
                        "must be empty for Exists and DoesNotExist",
                    );
                    continue;
                }
                let requirement = Requirement {
                    key: key.to_string(),
                    operator,
                };
                match check_requirement(&requirement) {
                    Ok(()) => selector.requirements.push(requirement),
                    Err(e) => self.error(&at, e),
                }
            }
        }
        selector
    }

    /// `credentialProviders:`: `binDir` and the kubelet's `providers[]` fields, plus `secret`
    /// and `images`, each checked as the kubelet would and against the others.
    fn credential_providers(&mut self, value: &Value) -> CredentialProviders {
        const PATH: &str = "credentialProviders";
        let mut out = CredentialProviders::default();
        let Some(map) = value.as_object() else {
            self.error(PATH, format!("expected a mapping, found {}", kind(value)));
            return out;
        };
        self.unknown_keys(PATH, map, &["binDir", "providers"]);
        if let Some(dir) = map.get("binDir") {
            match dir.as_str() {
                Some(d) if d.starts_with('/') => out.bin_dir = d.into(),
                _ => self.error(
                    "credentialProviders.binDir",
                    format!("expected an absolute path, found {}", show(dir)),
                ),
            }
        }
        let Some(items) = map.get("providers") else {
            return out;
        };
        let Some(items) = items.as_array() else {
            self.error(
                "credentialProviders.providers",
                format!("expected a list, found {}", kind(items)),
            );
            return out;
        };
        for (i, item) in items.iter().enumerate() {
            let path = format!("credentialProviders.providers[{i}]");
            if let Some(provider) = self.provider(&path, item) {
                if out.providers.iter().any(|p| p.name == provider.name) {
                    self.error(
                        format!("{path}.name"),
                        format!(
                            "'{}' is already a provider's name (the kubelet's rule: one entry per plugin; list several images under one)",
                            provider.name
                        ),
                    );
                } else if out.providers.iter().any(|p| p.secret == provider.secret) {
                    self.error(
                        format!("{path}.secret"),
                        format!(
                            "Secret '{}' is already kept filled by another provider; two would overwrite each other",
                            provider.secret
                        ),
                    );
                } else {
                    out.providers.push(provider);
                }
            }
        }
        out
    }

    fn provider(&mut self, path: &str, value: &Value) -> Option<Provider> {
        let Some(map) = value.as_object() else {
            self.error(path, format!("expected a mapping, found {}", kind(value)));
            return None;
        };
        self.unknown_keys(
            path,
            map,
            &[
                "name",
                "apiVersion",
                "matchImages",
                "defaultCacheDuration",
                "args",
                "env",
                "secret",
                "images",
            ],
        );
        let errors_before = self.errors.len();
        let string = |v: &mut Self, key: &str| -> Option<String> {
            match map.get(key) {
                Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
                Some(other) => {
                    v.error(
                        format!("{path}.{key}"),
                        format!("expected a non-empty string, found {}", show(other)),
                    );
                    None
                }
                None => {
                    v.error(format!("{path}.{key}"), "is required");
                    None
                }
            }
        };
        let name = string(self, "name");
        if let Some(name) = &name
            && (name.contains('/') || name == "." || name == "..")
        {
            self.error(
                format!("{path}.name"),
                format!("'{name}' must be a file name in binDir, without '/'"),
            );
        }
        let api_version = string(self, "apiVersion");
        if let Some(version) = &api_version
            && !credential_provider::API_VERSIONS.contains(&version.as_str())
        {
            self.error(
                format!("{path}.apiVersion"),
                format!(
                    "'{version}' is not one of: {}",
                    credential_provider::API_VERSIONS.join(", ")
                ),
            );
        }
        let duration = string(self, "defaultCacheDuration");
        let default_cache_duration =
            duration.and_then(|text| match credential_provider::parse_go_duration(&text) {
                Some(d) if !d.is_zero() => Some(d),
                _ => {
                    self.error(
                        format!("{path}.defaultCacheDuration"),
                        format!("'{text}' is not a duration longer than 0 such as 12h or 30m"),
                    );
                    None
                }
            });
        let secret = string(self, "secret");
        if let Some(secret) = &secret
            && !is_dns1123_subdomain(secret)
        {
            self.error(
                format!("{path}.secret"),
                format!("'{secret}' is not a valid Secret name"),
            );
        }
        let match_images = self.strings(&format!("{path}.matchImages"), map.get("matchImages"));
        let patterns: Vec<RegistryPattern> = match_images
            .iter()
            .enumerate()
            .filter_map(|(i, raw)| match RegistryPattern::parse(raw) {
                Ok(p) => Some(p),
                Err(e) => {
                    self.error(format!("{path}.matchImages[{i}]"), e.to_string());
                    None
                }
            })
            .collect();
        let images = self.strings(&format!("{path}.images"), map.get("images"));
        for (i, image) in images.iter().enumerate() {
            match crate::core::image::parse(image) {
                Err(e) => self.error(format!("{path}.images[{i}]"), e.to_string()),
                Ok(parsed) if patterns.len() == match_images.len() => {
                    if !patterns.iter().any(|p| p.matches(&parsed)) {
                        self.error(
                            format!("{path}.images[{i}]"),
                            format!(
                                "'{image}' matches none of matchImages: the kubelet would never ask this plugin for it"
                            ),
                        );
                    }
                }
                Ok(_) => {}
            }
        }
        let args = match map.get("args") {
            None => Vec::new(),
            Some(value) => self.strings_allow_empty(&format!("{path}.args"), value),
        };
        let env = self.env(&format!("{path}.env"), map.get("env"));
        if self.errors.len() > errors_before {
            return None;
        }
        Some(Provider {
            name: name?,
            api_version: api_version?,
            match_images,
            default_cache_duration: default_cache_duration?,
            args,
            env,
            secret: secret?,
            images,
        })
    }

    /// A required, non-empty list of non-empty strings.
    fn strings(&mut self, path: &str, value: Option<&Value>) -> Vec<String> {
        let Some(value) = value else {
            self.error(path, "is required");
            return Vec::new();
        };
        let out = self.strings_allow_empty(path, value);
        if out.is_empty() && value.as_array().is_some_and(Vec::is_empty) {
            self.error(path, "must list at least one");
        }
        out
    }

    fn strings_allow_empty(&mut self, path: &str, value: &Value) -> Vec<String> {
        let Some(items) = value.as_array() else {
            self.error(path, format!("expected a list, found {}", kind(value)));
            return Vec::new();
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            match item.as_str() {
                Some(s) if !s.trim().is_empty() => out.push(s.to_string()),
                _ => self.error(
                    format!("{path}[{i}]"),
                    format!("expected a non-empty string, found {}", show(item)),
                ),
            }
        }
        out
    }

    /// `env: [{name, value}]`, as in the kubelet's `providers[].env`.
    fn env(&mut self, path: &str, value: Option<&Value>) -> Vec<(String, String)> {
        let Some(value) = value else {
            return Vec::new();
        };
        let Some(items) = value.as_array() else {
            self.error(path, format!("expected a list, found {}", kind(value)));
            return Vec::new();
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let at = format!("{path}[{i}]");
            let Some(entry) = item.as_object() else {
                self.error(
                    at,
                    format!(
                        "expected a mapping with name and value, found {}",
                        kind(item)
                    ),
                );
                continue;
            };
            self.unknown_keys(&at, entry, &["name", "value"]);
            let name = entry
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if name.is_empty() || name.contains('=') || name.contains('\0') {
                self.error(
                    format!("{at}.name"),
                    "expected a variable name (non-empty, no '=')",
                );
                continue;
            }
            match entry.get("value") {
                Some(Value::String(v)) => out.push((name.to_string(), v.clone())),
                // A value is not quoted: env values may be keys.
                Some(other) => self.error(
                    format!("{at}.value"),
                    format!("expected a string, found {}", kind(other)),
                ),
                None => out.push((name.to_string(), String::new())),
            }
        }
        out
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

    #[test]
    fn changes_name_each_setting_and_rule_that_changed() {
        let load = |text: &str| from_bytes(Path::new("c.yaml"), text.as_bytes()).expect(text);
        let old = load(
            "rules:\n  - registry: docker.io\n    secrets: [hub]\n  - registry: ghcr.io\n    secrets: [gh]\n",
        );
        let cases = [
            (
                "rules:\n  - registry: docker.io\n    secrets: [hub]\n  - registry: ghcr.io\n    secrets: [gh]\n# a comment\n",
                vec![],
            ),
            (
                "mode: audit\nsync: true\nrevokeAfter: 5m\nrules:\n  - registry: docker.io\n    secrets: [hub]\n  - registry: ghcr.io\n    secrets: [gh]\n",
                vec![
                    "mode: enforce -> audit",
                    "sync: false -> true",
                    "revokeAfter: 600s -> 300s",
                ],
            ),
            (
                "namespaces: {selection: all, exclude: [x]}\nrules:\n  - registry: docker.io\n    secrets: [hub2]\n  - registry: quay.io\n    secrets: [q]\n",
                vec![
                    "namespaces.selection: opt-in -> all",
                    "namespaces.exclude: [kube-system, kube-public, kube-node-lease] -> [x]",
                    "rules: 2 -> 2 (added quay.io; removed ghcr.io; changed docker.io)",
                ],
            ),
            (
                "rules:\n  - registry: ghcr.io\n    secrets: [gh]\n  - registry: docker.io\n    secrets: [hub]\n",
                vec!["rules: 2 -> 2 (reordered)"],
            ),
            (
                "rules: []\n",
                vec!["rules: 2 -> 0 (removed docker.io, ghcr.io)"],
            ),
        ];
        for (text, want) in cases {
            assert_eq!(changes(&old, &load(text)), want, "{text}");
        }
    }

    #[test]
    fn yaml_errors_name_the_file_and_the_key_without_parser_advice() {
        let path = Path::new("/etc/psi/config.yaml");
        let cases = [
            (
                "mode: enforce\nmode: audit\n",
                "config file /etc/psi/config.yaml is not valid YAML: line 2 column 1: duplicate mapping key: mode",
            ),
            (
                "a: [\n",
                "config file /etc/psi/config.yaml is not valid YAML: line 1 column 4: unclosed bracket '['",
            ),
        ];
        for (text, want) in cases {
            let got = from_bytes(path, text.as_bytes())
                .err()
                .map(|e| e.to_string());
            assert_eq!(got.as_deref(), Some(want), "{text:?}");
        }
    }

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
    fn rule_scope_and_tenancy_settings() {
        let config = validate(
            &serde_saphyr::from_str::<Value>(
                r#"
podOptOut: false
requireScope: true
revokeAfter: 1h
credentialProbe: true
rules:
  - registry: ghcr.io/acme/team-a
    secrets: [team-a-pull]
    namespaces: [team-a, "team-a-*"]
    namespaceSelector:
      matchLabels: {team: a}
      matchExpressions:
        - {key: tier, operator: In, values: [gold, silver]}
        - {key: frozen, operator: DoesNotExist}
  - registry: docker.io
    secrets: [hub]
"#,
            )
            .expect("yaml"),
        )
        .expect("valid");
        assert!(!config.settings.pod_opt_out);
        assert!(config.settings.require_scope);
        assert!(config.settings.credential_probe);
        assert_eq!(
            config.settings.revoke_after,
            std::time::Duration::from_secs(3600)
        );
        let scope = &config.rules[0].scope;
        assert_eq!(
            scope.describe(),
            "namespaces team-a,team-a-* and labels team=a,tier in (gold,silver),!frozen"
        );
        let labels = |pairs: &[(&str, &str)]| -> std::collections::BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(scope.allows(
            "team-a-dev",
            Some(&labels(&[("team", "a"), ("tier", "gold")]))
        ));
        assert!(!scope.allows(
            "team-a",
            Some(&labels(&[("team", "a"), ("tier", "bronze")]))
        ));
        assert!(!scope.allows("team-b", Some(&labels(&[("team", "a"), ("tier", "gold")]))));
        assert!(!config.rules[1].scope.is_declared());
        let defaults = validate(&Value::Null).expect("empty");
        assert!(defaults.settings.pod_opt_out && !defaults.settings.require_scope);
        assert!(!defaults.settings.credential_probe);
        assert_eq!(defaults.settings.revoke_after, DEFAULT_REVOKE_AFTER);
    }

    #[test]
    fn scope_errors_name_the_field() {
        let got = errors(
            r#"
revokeAfter: soon
podOptOut: "no"
credentialProbe: 1
rules:
  - registry: ghcr.io
    secrets: [a]
    namespaces: [Team_A, 3]
    namespaceSelector:
      matchLabels: {"bad key!": a}
      matchExpressions:
        - {key: tier, operator: Near, values: [a]}
        - {key: tier, operator: In}
        - {key: tier, operator: Exists, values: [a]}
      other: 1
  - registry: quay.io
    secrets: [b]
    namespaces: []
"#,
        );
        for want in [
            "revokeAfter: ",
            "podOptOut: expected true or false",
            "credentialProbe: expected true or false",
            "rules[0].namespaces[0]: \"Team_A\" is not a namespace name or glob",
            "rules[0].namespaces[1]: expected a string",
            "rules[0].namespaceSelector.matchLabels.bad key!: ",
            "rules[0].namespaceSelector.matchExpressions[0].operator: must be one of",
            "rules[0].namespaceSelector.matchExpressions[1]: tier: In and NotIn need values",
            "rules[0].namespaceSelector.matchExpressions[2].values: must be empty",
            "rules[0].namespaceSelector.other: unknown field",
            "rules[1].namespaces: must name at least one namespace",
        ] {
            assert!(
                got.iter().any(|e| e.starts_with(want)),
                "missing {want:?} in {got:#?}"
            );
        }
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
            "typo: unknown field; expected one of: mode, namespaces, rules, discovery, sync, secretAwareness, repair, podOptOut, requireScope, revokeAfter, credentialProbe, credentialProviders",
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
    fn credential_providers_are_read_and_checked_like_the_kubelet_would() {
        let config = from_bytes(
            Path::new("c.yaml"),
            br#"
credentialProviders:
  providers:
    - name: ecr-credential-provider
      apiVersion: credentialprovider.kubelet.k8s.io/v1
      matchImages: ["*.dkr.ecr.*.amazonaws.com"]
      defaultCacheDuration: 12h0m0s
      args: [get-credentials]
      env: [{name: AWS_REGION, value: us-east-1}]
      secret: ecr
      images: ["123456789012.dkr.ecr.us-east-1.amazonaws.com/app"]
"#,
        )
        .expect("valid");
        let providers = &config.settings.credential_providers;
        assert_eq!(
            providers.bin_dir,
            Path::new(crate::core::credential_provider::DEFAULT_BIN_DIR)
        );
        let ecr = &providers.providers[0];
        assert_eq!(
            ecr.default_cache_duration,
            std::time::Duration::from_secs(43_200)
        );
        assert_eq!(
            ecr.env,
            [("AWS_REGION".to_string(), "us-east-1".to_string())]
        );
        assert_eq!(ecr.args, ["get-credentials"]);

        let got = errors(
            r#"
credentialProviders:
  binDir: relative/dir
  plugins: []
  providers:
    - name: ../escape
      apiVersion: credentialprovider.kubelet.k8s.io/v2
      matchImages: ["*.dkr.ecr.*.amazonaws.com"]
      defaultCacheDuration: 12 hours
      env: [{name: "A=B", value: x}, {name: KEY, value: 7}]
      secret: Not_A_Name
      images: ["quay.io/app", "UPPER/Case:x:y"]
    - name: ok
      apiVersion: credentialprovider.kubelet.k8s.io/v1
      matchImages: []
      defaultCacheDuration: 0s
      secret: s
    - name: one
      apiVersion: credentialprovider.kubelet.k8s.io/v1
      matchImages: [r.example]
      defaultCacheDuration: 1h
      secret: shared
      images: [r.example/a]
    - name: one
      apiVersion: credentialprovider.kubelet.k8s.io/v1
      matchImages: [r.example]
      defaultCacheDuration: 1h
      secret: other
      images: [r.example/b]
    - name: two
      apiVersion: credentialprovider.kubelet.k8s.io/v1
      matchImages: [r.example]
      defaultCacheDuration: 1h
      secret: shared
      images: [r.example/b]
"#,
        );
        let p = "credentialProviders.providers";
        let want = [
            "credentialProviders.plugins: unknown field; expected one of: binDir, providers"
                .to_string(),
            "credentialProviders.binDir: expected an absolute path, found 'relative/dir'".into(),
            format!("{p}[0].name: '../escape' must be a file name in binDir, without '/'"),
            format!(
                "{p}[0].apiVersion: 'credentialprovider.kubelet.k8s.io/v2' is not one of: credentialprovider.kubelet.k8s.io/v1, credentialprovider.kubelet.k8s.io/v1beta1, credentialprovider.kubelet.k8s.io/v1alpha1"
            ),
            format!(
                "{p}[0].defaultCacheDuration: '12 hours' is not a duration longer than 0 such as 12h or 30m"
            ),
            format!("{p}[0].secret: 'Not_A_Name' is not a valid Secret name"),
            format!(
                "{p}[0].images[0]: 'quay.io/app' matches none of matchImages: the kubelet would never ask this plugin for it"
            ),
            format!(
                "{p}[0].images[1]: {}",
                crate::core::image::parse("UPPER/Case:x:y")
                    .map(|_| ())
                    .unwrap_err()
            ),
            format!("{p}[0].env[0].name: expected a variable name (non-empty, no '=')"),
            format!("{p}[0].env[1].value: expected a string, found a number"),
            format!(
                "{p}[1].defaultCacheDuration: '0s' is not a duration longer than 0 such as 12h or 30m"
            ),
            format!("{p}[1].matchImages: must list at least one"),
            format!("{p}[1].images: is required"),
            format!(
                "{p}[3].name: 'one' is already a provider's name (the kubelet's rule: one entry per plugin; list several images under one)"
            ),
            format!(
                "{p}[4].secret: Secret 'shared' is already kept filled by another provider; two would overwrite each other"
            ),
        ];
        for line in &want {
            assert!(
                got.iter().any(|g| g == line),
                "missing {line:?} in {got:#?}"
            );
        }
        assert_eq!(got.len(), want.len(), "{got:#?}");
        // Env values are never quoted: they may be keys.
        assert!(!got.iter().any(|g| g.contains("x\"")));
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

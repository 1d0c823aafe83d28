//! Registry patterns and rules: which secrets serve which images.
//!
//! A pattern is `host[:port][/path-prefix]` and matches like the kubelet matches docker
//! config keys, with one deliberate difference:
//! - the host is compared label by label, each label may be a glob (`*.example.com` matches
//!   `a.example.com`, not `example.com` nor `a.b.example.com`), case-insensitively;
//! - the port must be equal (no port matches only images without a port);
//! - the path is a prefix of the image's repository path on whole segments, so `ghcr.io/acme`
//!   matches `ghcr.io/acme/api` but not `ghcr.io/acme-evil/api` (the kubelet compares plain
//!   string prefixes; we do not, on purpose).
//!
//! Among matching rules the most specific wins: an exact host before a glob, then the longer
//! path; ties go to the earlier rule.
//!
//! Scope (issue 14): a rule serves only the namespaces its [`Scope`] allows, and each of its
//! secrets only where that Secret's own source scope (its annotations, when it is a source
//! Secret the injector knows) allows too. A rule that cannot hand any of its secrets to a
//! namespace does not match there, so the next most specific rule in scope may
//! ([`RuleSet::best_match`]). Every caller (admission, `explain`, `audit`, repair, sync) asks
//! the same [`RuleSet`], so they all get the same answer.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::core::facts::Labels;
use crate::core::image::{self, DOCKER_HUB, ImageRef};
use crate::core::keyring;
use crate::core::scope::Scope;

/// Where a rule came from, for explanations and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleSource {
    /// `rules[index]` of the configuration file.
    Config { index: usize },
    /// An `auths` key of a source Secret in the injector's namespace (discovery).
    Discovered { secret: String },
}

impl fmt::Display for RuleSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleSource::Config { index } => write!(f, "config rules[{index}]"),
            RuleSource::Discovered { secret } => write!(f, "discovered from Secret {secret}"),
        }
    }
}

/// One rule: images matching `pattern` get `secrets`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub pattern: RegistryPattern,
    pub secrets: Vec<String>,
    /// Also set `imagePullPolicy: Always` on matching containers.
    pub pull_policy_always: bool,
    pub source: RuleSource,
    /// The namespaces this rule serves (issue 14); everywhere unless declared. A discovered
    /// rule carries its source Secret's scope.
    pub scope: Scope,
}

/// Rules in priority order (earlier wins ties), with the scopes of the source Secrets they
/// name; shared by every admission. Built once per change ([`crate::core::policy::Policy`]).
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    rules: Arc<[Rule]>,
    /// By Secret name, the scope of each known source Secret (from its annotations). A secret
    /// not here (not a source, or sources not read yet) is limited by its rules' scopes alone.
    source_scopes: Arc<HashMap<String, Scope>>,
    /// Whether any scope has a label selector: only then are namespace labels looked up.
    needs_labels: bool,
}

impl RuleSet {
    /// Rules limited by their own scopes only.
    pub fn new(rules: Vec<Rule>) -> Self {
        Self::with_source_scopes(rules, HashMap::new())
    }

    /// Rules whose secrets are further limited by the scopes of the source Secrets
    /// (`source_scopes`, by Secret name).
    pub fn with_source_scopes(rules: Vec<Rule>, source_scopes: HashMap<String, Scope>) -> Self {
        let needs_labels = rules.iter().any(|r| r.scope.has_selector())
            || source_scopes.values().any(Scope::has_selector);
        Self {
            rules: rules.into(),
            source_scopes: Arc::new(source_scopes),
            needs_labels,
        }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Whether any scope needs namespace labels (a selector); when not, callers may pass
    /// `None` without asking the cluster.
    pub fn needs_labels(&self) -> bool {
        self.needs_labels
    }

    /// The most specific rule matching `image` that serves `namespace` (with `labels`, `None`
    /// when unknown: then no selector matches): exact host before glob, then longer path, then
    /// the earlier rule. A rule out of scope is skipped, so the next most specific rule in
    /// scope wins. Allocation-free.
    pub fn best_match(
        &self,
        image: &ImageRef<'_>,
        namespace: &str,
        labels: Option<&Labels>,
    ) -> Option<&Rule> {
        let mut best: Option<(&Rule, Specificity)> = None;
        for rule in self.rules.iter() {
            if !rule.pattern.matches(image) {
                continue;
            }
            let specificity = rule.pattern.specificity();
            // Strictly greater only: ties keep the earlier rule. Scope is checked last, only
            // for a rule that would win.
            if best.as_ref().is_none_or(|(_, s)| specificity > *s)
                && self.in_scope(rule, namespace, labels)
            {
                best = Some((rule, specificity));
            }
        }
        best.map(|(rule, _)| rule)
    }

    /// Whether `rule` serves `namespace`: its own scope allows it and at least one of its
    /// secrets may go there ([`Self::secret_allowed`]).
    pub fn in_scope(&self, rule: &Rule, namespace: &str, labels: Option<&Labels>) -> bool {
        rule.scope.allows(namespace, labels)
            && rule
                .secrets
                .iter()
                .any(|s| self.secret_allowed(s, namespace, labels))
    }

    /// Whether the Secret `secret` may reach `namespace` as far as its source's scope goes
    /// (true for a Secret that is not a known source). Rule scopes are checked by
    /// [`Self::in_scope`].
    pub fn secret_allowed(&self, secret: &str, namespace: &str, labels: Option<&Labels>) -> bool {
        if self.source_scopes.is_empty() {
            return true;
        }
        self.source_scopes
            .get(secret)
            .is_none_or(|scope| scope.allows(namespace, labels))
    }

    /// The rules that can never win, each with the earlier rule that always wins instead
    /// (indexes into [`Self::rules`]): the same registry as the matcher compares them (host
    /// case, `index.docker.io` as `docker.io`, a trailing `/`), after a rule that serves every
    /// namespace with every one of its Secrets. An earlier rule with a scope leaves the later
    /// one the other namespaces, so it is not reported.
    pub fn never_winning(&self) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        for (later, rule) in self.rules.iter().enumerate() {
            let same = self.rules[..later].iter().position(|earlier| {
                earlier.pattern.canonical() == rule.pattern.canonical()
                    && !earlier.scope.is_declared()
                    && earlier.secrets.iter().all(|s| {
                        self.source_scopes
                            .get(s)
                            .is_none_or(|scope| !scope.is_declared())
                    })
            });
            if let Some(earlier) = same {
                out.push((later, earlier));
            }
        }
        out
    }

    /// The secrets of `rule` (a rule [`Self::best_match`] returned for `namespace`) that may
    /// go to `namespace`, in the rule's order: each only where its own source scope allows.
    pub fn secrets_for<'r, 'n>(
        &'n self,
        rule: &'r Rule,
        namespace: &'n str,
        labels: Option<&'n Labels>,
    ) -> impl Iterator<Item = &'r str> + 'n
    where
        'r: 'n,
    {
        rule.secrets
            .iter()
            .map(String::as_str)
            .filter(move |s| self.secret_allowed(s, namespace, labels))
    }
}

/// Ordering key for "most specific": exact hosts outrank globs, then longer paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Specificity {
    exact_host: bool,
    path_segments: usize,
}

/// A parsed `host[:port][/path-prefix]` pattern.
#[derive(Debug, Clone)]
pub struct RegistryPattern {
    /// The pattern as written, for messages and metric labels.
    raw: String,
    labels: Vec<LabelPattern>,
    /// The host when every label is exact (most patterns): one comparison instead of a label
    /// by label walk.
    exact_host: Option<String>,
    /// For a host with globs: its exact trailing labels with the dot before them
    /// (`.amazonaws.com` of `*.dkr.ecr.*.amazonaws.com`), which a matching host must end with.
    exact_suffix: String,
    port: Option<String>,
    path: Vec<String>,
}

impl PartialEq for RegistryPattern {
    fn eq(&self, other: &Self) -> bool {
        self.raw == other.raw
    }
}
impl Eq for RegistryPattern {}

#[derive(Debug, Clone)]
enum LabelPattern {
    Exact(String),
    Glob(glob::Pattern),
}

impl LabelPattern {
    fn as_str(&self) -> &str {
        match self {
            LabelPattern::Exact(label) => label,
            LabelPattern::Glob(glob) => glob.as_str(),
        }
    }

    fn matches(&self, label: &str) -> bool {
        match self {
            LabelPattern::Exact(want) => want.eq_ignore_ascii_case(label),
            // Globs are compiled from lowercased text; image hosts are lowercased by the parser.
            LabelPattern::Glob(glob) => glob.matches(label),
        }
    }
}

/// The one difference between a pattern and an image it nearly matches
/// ([`RegistryPattern::near_miss`]); its text completes "rule X does not match: ...".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NearMiss {
    Port {
        rule: Option<String>,
        image: Option<String>,
    },
    /// 1-based segment of the repository path.
    PathSegment {
        index: usize,
        rule: String,
        image: Option<String>,
    },
    /// 1-based label of the host, from the left.
    HostLabel {
        index: usize,
        rule: String,
        image: String,
    },
}

impl std::fmt::Display for NearMiss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let port = |p: &Option<String>| {
            p.as_ref()
                .map_or("no port".to_string(), |p| format!("port {p}"))
        };
        match self {
            NearMiss::Port { rule, image } => write!(
                f,
                "the port differs: the rule has {}, the image {} (ports must be equal)",
                port(rule),
                port(image)
            ),
            NearMiss::PathSegment {
                index,
                rule,
                image: None,
            } => write!(
                f,
                "path segment {index}: the rule needs '{rule}', the image's path ends before it"
            ),
            NearMiss::PathSegment {
                index,
                rule,
                image: Some(image),
            } => write!(
                f,
                "path segment {index}: the rule needs '{rule}', the image has '{image}' (paths match whole segments, not prefixes)"
            ),
            NearMiss::HostLabel { index, rule, image } => write!(
                f,
                "host label {index}: the rule has '{rule}', the image '{image}'"
            ),
        }
    }
}

/// Why a pattern was rejected; the text completes "'X' is not a valid registry pattern: ...".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("it is empty")]
    Empty,
    #[error("drop the scheme ({0}://); patterns are host[:port][/path]")]
    Scheme(String),
    #[error("host label '{0}' is not a DNS label or glob")]
    HostLabel(String),
    #[error("port '{0}' must be a number from 1 to 65535")]
    Port(String),
    #[error("path segment '{0}' is not a valid repository path component")]
    PathSegment(String),
}

impl RegistryPattern {
    /// Parses a pattern from the configuration file: `host[:port][/path-prefix]`.
    pub fn parse(raw: &str) -> Result<Self, PatternError> {
        let text = raw.trim();
        if text.is_empty() {
            return Err(PatternError::Empty);
        }
        if let Some((scheme, _)) = text.split_once("://") {
            return Err(PatternError::Scheme(scheme.to_string()));
        }
        let text = text.trim_end_matches('/');
        let (domain, path) = match text.split_once('/') {
            Some((domain, path)) => (domain, Some(path)),
            None => (text, None),
        };
        let (host, port) = split_port(domain);
        let host = host.to_ascii_lowercase();
        let host = match port {
            None => normalise_docker_hub(&host),
            Some(_) => &host,
        };
        let labels = host
            .split('.')
            .map(parse_label)
            .collect::<Result<Vec<_>, _>>()?;
        let port = match port {
            Some(port) if port.parse::<u16>().is_ok_and(|p| p > 0) => Some(port.to_string()),
            Some(port) => return Err(PatternError::Port(port.to_string())),
            None => None,
        };
        let path = match path {
            Some(path) => path
                .split('/')
                .map(|segment| {
                    if image::is_path_component(segment) {
                        Ok(segment.to_string())
                    } else {
                        Err(PatternError::PathSegment(segment.to_string()))
                    }
                })
                .collect::<Result<Vec<_>, _>>()?,
            None => Vec::new(),
        };
        let exact = |l: &LabelPattern| matches!(l, LabelPattern::Exact(_));
        let exact_host = labels.iter().all(exact).then(|| join_labels(&labels));
        let trailing = labels.iter().rev().take_while(|l| exact(l)).count();
        let exact_suffix = match trailing {
            0 => String::new(),
            n => format!(".{}", join_labels(&labels[labels.len() - n..])),
        };
        Ok(Self {
            raw: raw.trim().to_string(),
            labels,
            exact_host,
            exact_suffix,
            port,
            path,
        })
    }

    /// Parses an `auths` key of a docker config Secret as the kubelet reads it: the scheme
    /// dropped, a leading `/v1/` or `/v2/` path segment dropped (`https://index.docker.io/v1/`
    /// is `index.docker.io`, i.e. `docker.io`; `https://ghcr.io/v2/acme` is `ghcr.io/acme`).
    pub fn from_docker_config_key(key: &str) -> Result<Self, PatternError> {
        match keyring::stored_key(key.trim()) {
            Some(stored) => Self::parse(&stored),
            None => Err(PatternError::HostLabel(key.trim().to_string())),
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The pattern as the matcher reads it (host lowercase, `index.docker.io` as `docker.io`,
    /// no trailing `/`): two patterns with the same canonical form match the same images.
    pub fn canonical(&self) -> String {
        let mut out = join_labels(&self.labels);
        if let Some(port) = &self.port {
            out.push(':');
            out.push_str(port);
        }
        for segment in &self.path {
            out.push('/');
            out.push_str(segment);
        }
        out
    }

    /// The host's labels (lowercase), each with whether it is a glob.
    pub(crate) fn host_labels(&self) -> impl Iterator<Item = (&str, bool)> {
        self.labels
            .iter()
            .map(|l| (l.as_str(), matches!(l, LabelPattern::Glob(_))))
    }

    pub(crate) fn port(&self) -> Option<&str> {
        self.port.as_deref()
    }

    /// The path prefix, as whole segments.
    pub(crate) fn path(&self) -> &[String] {
        &self.path
    }

    pub fn matches(&self, image: &ImageRef<'_>) -> bool {
        if self.port.as_deref() != image.port {
            return false;
        }
        // Label by label, exact labels ignoring ASCII case; for an all-exact host that is the
        // same as comparing the whole host, and a host with globs must end with the exact
        // labels it ends with.
        if let Some(host) = &self.exact_host {
            if !host.eq_ignore_ascii_case(&image.host) {
                return false;
            }
        } else {
            let suffix = self.exact_suffix.as_bytes();
            let host = image.host.as_bytes();
            if host.len() < suffix.len()
                || !host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            {
                return false;
            }
            let mut host_labels = image.host.split('.');
            for pattern in &self.labels {
                match host_labels.next() {
                    Some(label) if pattern.matches(label) => {}
                    _ => return false,
                }
            }
            if host_labels.next().is_some() {
                return false;
            }
        }
        let mut segments = image.path_segments();
        self.path
            .iter()
            .all(|want| segments.next() == Some(want.as_str()))
    }

    /// When this pattern nearly matches `image`, the one thing that differs: the host matches
    /// but the port or a path segment does not, or the port matches and exactly one host label
    /// of three or more differs. (Case never makes a miss: hosts compare ignoring case, paths are lowercase.)
    /// `None` when it matches, or differs in more than that.
    pub fn near_miss(&self, image: &ImageRef<'_>) -> Option<NearMiss> {
        if self.matches(image) {
            return None;
        }
        let host_labels: Vec<&str> = image.host.split('.').collect();
        let differing: Vec<usize> = if host_labels.len() == self.labels.len() {
            (0..self.labels.len())
                .filter(|&i| !self.labels[i].matches(host_labels[i]))
                .collect()
        } else {
            return None;
        };
        if differing.is_empty() {
            if self.port.as_deref() != image.port {
                return Some(NearMiss::Port {
                    rule: self.port.clone(),
                    image: image.port.map(str::to_string),
                });
            }
            let mut segments = image.path_segments();
            for (index, want) in self.path.iter().enumerate() {
                let got = segments.next().filter(|s| !s.is_empty());
                if got != Some(want.as_str()) {
                    return Some(NearMiss::PathSegment {
                        index: index + 1,
                        rule: want.clone(),
                        image: got.map(str::to_string),
                    });
                }
            }
            return None;
        }
        // One label off among at least three (two agree): `eu.gcr.io` for `us.gcr.io`, not
        // `quay.io` for `ghcr.io`.
        match differing.as_slice() {
            [index] if self.port.as_deref() == image.port && host_labels.len() >= 3 => {
                Some(NearMiss::HostLabel {
                    index: index + 1,
                    rule: self.labels[*index].as_str().to_string(),
                    image: host_labels[*index].to_string(),
                })
            }
            _ => None,
        }
    }

    fn specificity(&self) -> Specificity {
        Specificity {
            exact_host: self
                .labels
                .iter()
                .all(|l| matches!(l, LabelPattern::Exact(_))),
            path_segments: self.path.len(),
        }
    }
}

impl fmt::Display for RegistryPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

fn join_labels(labels: &[LabelPattern]) -> String {
    labels
        .iter()
        .map(LabelPattern::as_str)
        .collect::<Vec<_>>()
        .join(".")
}

/// `host:port`, leaving bracketed IPv6 literals intact.
fn split_port(domain: &str) -> (&str, Option<&str>) {
    if domain.starts_with('[') {
        return match domain.find("]:") {
            Some(end) => (&domain[..=end], Some(&domain[end + 2..])),
            None => (domain, None),
        };
    }
    match domain.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (domain, None),
    }
}

/// `index.docker.io` (without a port) is Docker Hub's legacy name: distribution (and so every
/// image reference) treats it as `docker.io`. Other Docker Hub hosts (`registry-1.docker.io`)
/// are just hosts, as in the kubelet's keyring.
fn normalise_docker_hub(host: &str) -> &str {
    match host {
        "index.docker.io" => DOCKER_HUB,
        other => other,
    }
}

fn parse_label(label: &str) -> Result<LabelPattern, PatternError> {
    let bad = || PatternError::HostLabel(label.to_string());
    if label.starts_with('[') && label.ends_with(']') {
        // An IPv6 literal is a single label; compare it as written.
        return label[1..label.len() - 1]
            .parse::<std::net::Ipv6Addr>()
            .map(|_| LabelPattern::Exact(label.to_string()))
            .map_err(|_| bad());
    }
    if label.contains(['*', '?', '[']) {
        let allowed = |c: char| c.is_ascii_alphanumeric() || "-*?[]!^".contains(c);
        if !label.chars().all(allowed) {
            return Err(bad());
        }
        return glob::Pattern::new(label)
            .map(LabelPattern::Glob)
            .map_err(|_| bad());
    }
    if image::is_domain_component(label) {
        Ok(LabelPattern::Exact(label.to_string()))
    } else {
        Err(bad())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(pattern: &str, secret: &str, index: usize) -> Rule {
        Rule {
            pattern: RegistryPattern::parse(pattern).expect(pattern),
            secrets: vec![secret.to_string()],
            pull_policy_always: false,
            source: RuleSource::Config { index },
            scope: Default::default(),
        }
    }

    fn matches(pattern: &str, image_ref: &str) -> bool {
        let pattern = RegistryPattern::parse(pattern).expect(pattern);
        let image = image::parse(image_ref).expect(image_ref);
        pattern.matches(&image)
    }

    #[test]
    fn pattern_matching_table() {
        let cases = [
            // (pattern, image, matches)
            ("docker.io", "nginx", true),
            ("docker.io", "acme/app:1", true),
            ("docker.io", "docker.io/acme/app", true),
            ("index.docker.io", "nginx", true),
            ("index.docker.io/acme", "docker.io/acme/app", true),
            // With a port it is a host like any other.
            ("index.docker.io:5000", "index.docker.io:5000/app", true),
            ("docker.io:5000", "index.docker.io:5000/app", false),
            ("index.docker.io:5000", "docker.io:5000/app", false),
            // Any case of the host, even where distribution keeps the path as written.
            ("docker.io", "DOCKER.IO/nginx", true),
            // Only index.docker.io is docker.io; other Docker Hub hosts are hosts of their own.
            ("registry-1.docker.io", "acme/app", false),
            ("docker.io", "registry-1.docker.io/acme/app", false),
            (
                "registry-1.docker.io",
                "registry-1.docker.io/acme/app",
                true,
            ),
            ("registry.hub.docker.com", "nginx", false),
            ("docker.io/acme", "acme/app", true),
            ("docker.io/acme", "acme-evil/app", false),
            ("docker.io/library", "nginx", true),
            ("ghcr.io/acme", "ghcr.io/acme/api", true),
            ("ghcr.io/acme", "ghcr.io/acme/team/api", true),
            ("ghcr.io/acme", "ghcr.io/acme-evil/api", false),
            ("ghcr.io/acme/api", "ghcr.io/acme/api:v1", true),
            ("ghcr.io/acme/api", "ghcr.io/acme/api2", false),
            ("ghcr.io/acme/team", "ghcr.io/acme/api", false),
            ("ghcr.io", "docker.io/acme/api", false),
            ("GHCR.io", "ghcr.io/x/y", true),
            ("ghcr.io", "GHCR.IO/x/y", true),
            ("*.example.com", "a.example.com/app", true),
            ("*.example.com", "example.com/app", false),
            ("*.example.com", "a.b.example.com/app", false),
            (
                "*.dkr.ecr.*.amazonaws.com",
                "123456789012.dkr.ecr.eu-west-1.amazonaws.com/api",
                true,
            ),
            (
                "*.dkr.ecr.*.amazonaws.com",
                "123456789012.dkr.ecr.amazonaws.com/api",
                false,
            ),
            ("reg?.example.com", "reg1.example.com/app", true),
            ("reg[0-9].example.com", "regx.example.com/app", false),
            ("localhost:5000", "localhost:5000/app", true),
            ("localhost:5000", "localhost/app", false),
            ("localhost", "localhost:5000/app", false),
            ("localhost", "localhost/app", true),
            ("10.0.0.1:5000", "10.0.0.1:5000/app", true),
            ("[::1]:5000", "[::1]:5000/app", true),
            ("[::1]:5000", "[::1]/app", false),
            ("registry.example.com/", "registry.example.com/app", true),
        ];
        for (pattern, image, want) in cases {
            assert_eq!(matches(pattern, image), want, "{pattern} vs {image}");
        }
    }

    #[test]
    fn most_specific_rule_wins_and_ties_go_to_the_earlier() {
        let set = RuleSet::new(vec![
            rule("*.example.com", "glob", 0),
            rule("registry.example.com", "exact", 1),
            rule("registry.example.com/team", "team", 2),
            rule("registry.example.com/team", "team-later", 3),
            rule("*.example.com/team/deep", "glob-deep", 4),
        ]);
        let cases = [
            ("other.example.com/app", Some("glob")),
            ("registry.example.com/app", Some("exact")),
            ("registry.example.com/team/app", Some("team")),
            // An exact host outranks a glob even with a longer path.
            ("registry.example.com/team/deep/app", Some("team")),
            ("other.example.com/team/deep/app", Some("glob-deep")),
            ("ghcr.io/app", None),
        ];
        for (image_ref, want) in cases {
            let image = image::parse(image_ref).expect(image_ref);
            let got = set
                .best_match(&image, "team-a", None)
                .map(|r| r.secrets[0].as_str());
            assert_eq!(got, want, "{image_ref}");
        }
    }

    #[test]
    fn best_match_skips_rules_out_of_scope() {
        let scoped = |pattern: &str, secret: &str, index: usize, names: &str| Rule {
            scope: Scope::from_annotations(Some(names), None).expect(names),
            ..rule(pattern, secret, index)
        };
        let labelled = |pattern: &str, secret: &str, index: usize, selector: &str| Rule {
            scope: Scope::from_annotations(None, Some(selector)).expect(selector),
            ..rule(pattern, secret, index)
        };
        let set = RuleSet::with_source_scopes(
            vec![
                rule("ghcr.io", "host", 0),
                scoped("ghcr.io/acme", "acme-a", 1, "team-a"),
                scoped("ghcr.io/acme", "acme-b", 2, "team-b"),
                labelled("ghcr.io/acme/deep", "deep", 3, "team=a"),
                rule("quay.io", "src", 4),
            ],
            HashMap::from([(
                "src".to_string(),
                Scope::from_annotations(Some("team-b"), None).expect("scope"),
            )]),
        );
        assert!(set.needs_labels());
        let team_a = Labels::from([("team".to_string(), "a".to_string())]);
        // (image, namespace, labels, winner)
        let cases = [
            ("ghcr.io/acme/x", "team-a", None, Some("acme-a")),
            // A tie between two rules: the earlier one in scope wins.
            ("ghcr.io/acme/x", "team-b", None, Some("acme-b")),
            ("ghcr.io/acme/x", "team-c", None, Some("host")),
            ("ghcr.io/acme/deep/x", "team-a", Some(&team_a), Some("deep")),
            ("ghcr.io/acme/deep/x", "team-a", None, Some("acme-a")),
            ("ghcr.io/acme/deep/x", "team-c", Some(&team_a), Some("deep")),
            ("quay.io/x", "team-b", None, Some("src")),
            ("quay.io/x", "team-a", None, None),
        ];
        for (image_ref, namespace, labels, want) in cases {
            let image = image::parse(image_ref).expect(image_ref);
            let got = set
                .best_match(&image, namespace, labels)
                .map(|r| r.secrets[0].as_str());
            assert_eq!(got, want, "{image_ref} in {namespace} {labels:?}");
        }
        assert!(!RuleSet::new(vec![rule("ghcr.io", "a", 0)]).needs_labels());
        let src = &set.rules()[4];
        assert_eq!(
            set.secrets_for(src, "team-b", None).collect::<Vec<_>>(),
            ["src"]
        );
        assert_eq!(set.secrets_for(src, "team-a", None).count(), 0);
    }

    #[test]
    fn rules_that_can_never_win() {
        let scoped = |pattern: &str, secret: &str, index: usize| Rule {
            scope: Scope::from_annotations(Some("team-a"), None).expect("scope"),
            ..rule(pattern, secret, index)
        };
        let set = RuleSet::with_source_scopes(
            vec![
                rule("docker.io", "hub", 0),
                rule("DOCKER.IO", "hub-2", 1),
                rule("index.docker.io/", "hub-3", 2),
                scoped("ghcr.io/acme", "a", 3),
                rule("ghcr.io/acme", "b", 4),
                rule("quay.io", "scoped-source", 5),
                rule("quay.io", "c", 6),
                rule("*.example.com", "d", 7),
                rule("*.EXAMPLE.com", "e", 8),
                rule("a.example.com", "f", 9),
            ],
            HashMap::from([(
                "scoped-source".to_string(),
                Scope::from_annotations(Some("team-b"), None).expect("scope"),
            )]),
        );
        // An earlier rule with a scope (its own or its Secret's) leaves the later one the
        // other namespaces; a glob does not hide an exact host.
        assert_eq!(set.never_winning(), [(1, 0), (2, 0), (8, 7)]);
    }

    #[test]
    fn rejects_bad_patterns() {
        let cases = [
            ("", PatternError::Empty),
            ("   ", PatternError::Empty),
            ("https://ghcr.io", PatternError::Scheme("https".into())),
            ("*.io:x", PatternError::Port("x".into())),
            ("ghcr.io:0", PatternError::Port("0".into())),
            ("ghcr.io:70000", PatternError::Port("70000".into())),
            ("ghcr..io", PatternError::HostLabel(String::new())),
            ("gh_cr.io", PatternError::HostLabel("gh_cr".into())),
            ("ghcr.io/Acme", PatternError::PathSegment("Acme".into())),
            ("ghcr.io//acme", PatternError::PathSegment(String::new())),
            ("*.ex%ample.com", PatternError::HostLabel("ex%ample".into())),
            ("[nothex]:5000", PatternError::HostLabel("[nothex]".into())),
        ];
        for (input, want) in cases {
            assert_eq!(RegistryPattern::parse(input).err(), Some(want), "{input:?}");
        }
    }

    #[test]
    fn near_misses_name_the_one_difference() {
        // (rule, image, the reason's text, or None for a match or more than one difference)
        let table: &[(&str, &str, Option<&str>)] = &[
            (
                "ghcr.io/acme",
                "ghcr.io/acme-evil/report",
                Some(
                    "path segment 1: the rule needs 'acme', the image has 'acme-evil' (paths match whole segments, not prefixes)",
                ),
            ),
            (
                "ghcr.io/acme/team",
                "ghcr.io/acme",
                Some("path segment 2: the rule needs 'team', the image's path ends before it"),
            ),
            // Case never makes a miss: hosts compare ignoring case, and paths are lowercase in
            // both (a pattern or image with capitals in its path is refused when parsed).
            ("GHCR.io/acme", "ghcr.io/acme/app", None),
            (
                "registry.internal.example.com:5000",
                "registry.internal.example.com/team/app",
                Some(
                    "the port differs: the rule has port 5000, the image no port (ports must be equal)",
                ),
            ),
            (
                "registry.local",
                "registry.local:5000/app",
                Some(
                    "the port differs: the rule has no port, the image port 5000 (ports must be equal)",
                ),
            ),
            (
                "eu.gcr.io",
                "us.gcr.io/p/app",
                Some("host label 1: the rule has 'eu', the image 'us'"),
            ),
            (
                "*.dkr.ecr.eu-west-1.amazonaws.com",
                "1.dkr.ecr.us-east-1.amazonaws.com/app",
                Some("host label 4: the rule has 'eu-west-1', the image 'us-east-1'"),
            ),
            ("ghcr.io/acme", "ghcr.io/acme/app", None),
            ("quay.io", "ghcr.io/acme/app", None),
            ("a.example.com:5000", "b.example.com/app", None),
            ("example.com", "registry.example.com/app", None),
        ];
        for (rule, image_ref, want) in table {
            let pattern = RegistryPattern::parse(rule).expect(rule);
            let image = image::parse(image_ref).expect(image_ref);
            let got = pattern.near_miss(&image).map(|m| m.to_string());
            assert_eq!(got.as_deref(), *want, "{rule} vs {image_ref}");
        }
    }

    #[test]
    fn docker_config_keys_normalise() {
        let cases = [
            ("https://index.docker.io/v1/", "nginx", true),
            ("https://index.docker.io/v1/", "ghcr.io/a/b", false),
            ("index.docker.io", "acme/app", true),
            ("https://ghcr.io", "ghcr.io/acme/api", true),
            (
                "http://registry.local:5000/v2/",
                "registry.local:5000/app",
                true,
            ),
            ("registry.local:5000", "registry.local/app", false),
            ("ghcr.io/acme", "ghcr.io/acme/api", true),
            ("ghcr.io/acme", "ghcr.io/acme-evil/api", false),
            ("https://ghcr.io/v2/acme", "ghcr.io/acme/api", true),
            ("https://ghcr.io/v2/acme", "ghcr.io/v2/acme/api", false),
        ];
        for (key, image_ref, want) in cases {
            let pattern = RegistryPattern::from_docker_config_key(key).expect(key);
            let image = image::parse(image_ref).expect(image_ref);
            assert_eq!(pattern.matches(&image), want, "{key} vs {image_ref}");
        }
        assert!(RegistryPattern::from_docker_config_key("not a registry!").is_err());
    }
}

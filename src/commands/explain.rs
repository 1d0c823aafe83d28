//! `explain`: what the injector would do to the Pods and pod templates in a file, offline.
//!
//! The same decision code as the webhook runs on each Pod (or on the Pod a workload's template
//! would create). Offline, existing Secrets are unknown, and namespace labels are known only
//! from `Namespace` objects in the input or `--namespace-labels`: a namespace without either
//! has its selection taken as granted (as in standalone mode) except for excluded namespaces,
//! and no rule with a `namespaceSelector` serves it (said once, as an assumption).
//!
//! Each rule is shown with its scope; an image whose most specific rule does not serve the
//! namespace says so ("rule X matches the image but does not serve namespace N").

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use crate::cli::{ExplainArgs, ExplainFormat};
use crate::commands::{
    ManifestError, Output, describe_scope, docker_config_secrets, effective_scope, read_all,
};
use crate::core::config::{self, ConfigError};
use crate::core::decision::{Context, ImageOutcome};
use crate::core::dockercfg;
use crate::core::expiry::{self, Expiry, Status};
use crate::core::facts::{ClusterFacts, Labels, NamespaceCache, NamespaceLabel, SecretPresence};
use crate::core::image::ImageRef;
use crate::core::names::INJECT_LABEL;
use crate::core::policy::Policy;
use crate::core::policy::Sources;
use crate::core::review::Pod;
use crate::core::rules::{NearMiss, Rule, RuleSet};
use crate::core::scope::Scope;
use crate::core::verdict::{self, Outcome};

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("--config: {0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
}

/// One Pod (or pod template) found in the input.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub kind: String,
    pub name: String,
    pub namespace: String,
    /// `{metadata, spec}` of the Pod that would be admitted.
    #[serde(skip)]
    pub pod: Value,
}

/// The explanation of one target, in the shape `-o json` prints.
#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    pub kind: String,
    pub name: String,
    pub namespace: String,
    /// `patched`, `audited`, `unchanged` or `skipped`.
    pub outcome: &'static str,
    /// Why the Pod would be left alone, if it would.
    pub skipped: Option<&'static str>,
    pub mode: Option<&'static str>,
    pub images: Vec<ImageReport>,
    /// Secrets that would be added, in order.
    pub add: Vec<String>,
    pub warnings: Vec<String>,
    /// The JSON Patch sent for each such Pod (none in audit mode or when nothing changes).
    pub patch: Option<Value>,
    /// Things worth knowing that are not problems.
    pub notes: Vec<String>,
    /// The rules' secrets the Pod lists itself: nothing to add for them.
    pub already_listed: Vec<String>,
    /// A workload's pod template: the patch is what each of its Pods gets at CREATE, not a
    /// patch to the workload.
    pub pod_template: bool,
    /// The expiries of the Secrets in `add` whose expiry is known (Secrets in the input).
    pub expiries: Vec<SecretExpiry>,
}

/// When a Secret's credential expires, as `explain -o json` and `audit` show it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SecretExpiry {
    pub secret: String,
    /// RFC 3339, UTC.
    pub expires_at: String,
    /// `valid`, `expiresSoon` (within the hour) or `expired`.
    pub status: &'static str,
    /// Where it was read: `annotation NAME` or `JWT exp in FIELD of KEY`.
    pub from: String,
}

impl SecretExpiry {
    pub fn of(secret: &str, expiry: &Expiry, now: i64) -> Self {
        Self {
            secret: secret.to_string(),
            expires_at: expiry.rfc3339(),
            status: match expiry.status(now) {
                Status::Valid => "valid",
                Status::ExpiresSoon => "expiresSoon",
                Status::Expired => "expired",
            },
            from: expiry.origin.to_string(),
        }
    }
}

/// Where a rule forces `imagePullPolicy: Always`: why that is rarely needed now.
pub const PULL_POLICY_NOTE: &str = "rule {rule} sets imagePullPolicy: Always. Since Kubernetes 1.35 the kubelet checks the credentials of cached private images itself (KubeletEnsureSecretPulledImages, on by default), so Always is needed only on older clusters or to catch revoked credentials at every start";

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ImageReport {
    /// `initContainers`, `containers` or `volumes`.
    pub list: &'static str,
    /// Container or volume name.
    pub name: String,
    pub image: String,
    pub registry: Option<String>,
    pub repository: Option<String>,
    pub rule: Option<String>,
    pub rule_source: Option<String>,
    pub secrets: Vec<String>,
    pub set_pull_policy_always: bool,
    pub error: Option<String>,
    /// The namespaces the matched rule serves ([`Scope::describe`]).
    pub scope: Option<String>,
    /// The pull policy the Pod sets itself where the rule's `pullPolicy: Always` overrides it
    /// (`IfNotPresent`, `Never`).
    pub overrides_pull_policy: Option<String>,
    /// The most specific rule matching the image, when it does not serve the namespace (then
    /// a less specific rule in scope, or none, serves the image).
    pub out_of_scope: Option<OutOfScope>,
    /// When no rule matches: the rule that nearly does, and the one thing that differs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nearest: Option<Nearest>,
}

/// A rule that nearly matches an image no rule matches ([`RegistryPattern::near_miss`]).
#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Nearest {
    pub rule: String,
    pub reason: String,
}

/// The rule nearest to `image`: one whose host matches (a port or path segment differs) before
/// one a host label away; the first in the file among equals.
fn nearest_rule(rules: &[Rule], image: &crate::core::image::ImageRef<'_>) -> Option<Nearest> {
    let misses = rules
        .iter()
        .filter_map(|rule| Some((rule, rule.pattern.near_miss(image)?)));
    let (rule, reason) = misses.min_by_key(|(_, miss)| match miss {
        NearMiss::HostLabel { .. } => 1,
        _ => 0,
    })?;
    Some(Nearest {
        rule: rule.pattern.to_string(),
        reason: reason.to_string(),
    })
}

/// A rule that matches an image but does not serve the Pod's namespace.
#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OutOfScope {
    pub rule: String,
    pub rule_source: String,
    pub secrets: Vec<String>,
    pub scope: String,
}

/// The label the API server sets on every namespace (1.21+), which selectors may use.
pub const NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// What `explain` knows about namespaces: the labels of the `Namespace` objects in its input,
/// else those of `--namespace-labels`; nothing about Secrets.
#[derive(Debug, Default)]
pub struct ExplainFacts {
    /// From `Namespace` objects in the input.
    pub namespaces: BTreeMap<String, Arc<Labels>>,
    /// `--namespace-labels`, for every other namespace.
    pub default: Option<Labels>,
}

impl ExplainFacts {
    /// Whether a namespace's labels are known.
    pub fn knows(&self, namespace: &str) -> bool {
        self.namespaces.contains_key(namespace) || self.default.is_some()
    }
}

impl ClusterFacts for ExplainFacts {
    /// A `Namespace` object's inject label decides; `--namespace-labels` decides only when it
    /// sets the label; otherwise unknown (the webhook's namespaceSelector has decided).
    fn namespace_label(&self, namespace: &str) -> NamespaceLabel {
        if let Some(labels) = self.namespaces.get(namespace) {
            return NamespaceLabel::from_value(labels.get(INJECT_LABEL).map(String::as_str));
        }
        match self.default.as_ref().and_then(|l| l.get(INJECT_LABEL)) {
            Some(value) => NamespaceLabel::from_value(Some(value)),
            None => NamespaceLabel::Unknown,
        }
    }
    fn secret_presence(&self, _: &str, _: &str) -> SecretPresence {
        SecretPresence::Unknown
    }
    fn namespace_cache(&self) -> NamespaceCache {
        NamespaceCache::NotListed
    }
    /// With `kubernetes.io/metadata.name`, which the API server sets on every namespace.
    fn namespace_labels(&self, namespace: &str) -> Option<Arc<Labels>> {
        if let Some(labels) = self.namespaces.get(namespace) {
            return Some(labels.clone());
        }
        let mut labels = self.default.clone()?;
        labels.insert(NAME_LABEL.into(), namespace.into());
        Some(Arc::new(labels))
    }
}

/// The labels of every `Namespace` object in `docs` (descending into Lists), with
/// `kubernetes.io/metadata.name` as the API server sets it.
pub fn find_namespaces(docs: &[Value]) -> BTreeMap<String, Arc<Labels>> {
    fn walk(doc: &Value, out: &mut BTreeMap<String, Arc<Labels>>) {
        match doc.get("kind").and_then(Value::as_str) {
            Some("List" | "NamespaceList") => {
                for item in doc
                    .get("items")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    walk(item, out);
                }
            }
            Some("Namespace") => {
                let Some(name) = doc.pointer("/metadata/name").and_then(Value::as_str) else {
                    return;
                };
                let mut labels: Labels = doc
                    .pointer("/metadata/labels")
                    .and_then(Value::as_object)
                    .into_iter()
                    .flatten()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect();
                labels.insert(NAME_LABEL.into(), name.into());
                out.insert(name.to_string(), Arc::new(labels));
            }
            _ => {}
        }
    }
    let mut out = BTreeMap::new();
    for doc in docs {
        walk(doc, &mut out);
    }
    out
}

/// The rules with their scope set aside: which rule would win if scope did not count.
pub struct Unscoped {
    rules: RuleSet,
}

impl Unscoped {
    pub fn new(policy: &Policy) -> Self {
        let rules = policy
            .rules()
            .rules()
            .iter()
            .cloned()
            .map(|mut rule| {
                rule.scope = Scope::everywhere();
                rule
            })
            .collect();
        Self {
            rules: RuleSet::new(rules),
        }
    }

    /// The most specific rule of `policy` matching `image`, whatever its scope.
    pub fn best<'p>(&self, policy: &'p Policy, image: &ImageRef<'_>) -> Option<&'p Rule> {
        // Every scope here is everywhere: the namespace and labels play no part.
        let best = self.rules.best_match(image, "", None)?;
        let index = self
            .rules
            .rules()
            .iter()
            .position(|r| std::ptr::eq(r, best))?;
        policy.rules().rules().get(index)
    }
}

/// `explain`: prints the explanation of every Pod and pod template in `-f`.
pub fn run(args: &ExplainArgs) -> Result<Output, ExplainError> {
    let config = config::load(&args.config)?;
    let docs: Vec<Value> = read_all(&args.files)?.into_iter().map(|(_, d)| d).collect();
    let (targets, mut notes) = find_targets(&docs, &args.target_namespace);
    let facts = ExplainFacts {
        namespaces: find_namespaces(&docs),
        default: args.namespace_labels.clone(),
    };
    // Docker config Secrets in the same input: their keys are checked as the kubelet would,
    // and their expiries judged now.
    let now = crate::metrics::unix_now();
    let mut sources = Sources::default();
    for (doc, secret) in docker_config_secrets(&docs) {
        let reading = expiry::read_json(doc, &secret);
        for problem in &reading.problems {
            notes.push(format!("Secret {}: {problem}", secret.name));
        }
        if let Some(expiry) = reading.expiry {
            notes.push(format!("Secret {}: {}", secret.name, expiry.describe(now)));
            sources.expiries.insert(secret.name.clone(), expiry);
        }
        // The controller's credential probe wrote its verdict on the Secret (a Secret read
        // back with kubectl get -o yaml): its Pods get the warning admission would give.
        if let Some((registries, line)) = crate::core::probe::rejections_json(doc) {
            notes.push(format!("Secret {}: {line}", secret.name));
            sources.rejected.insert(secret.name.clone(), registries);
        }
        match dockercfg::keyring_of(&secret) {
            Ok(keyring) => {
                notes.push(format!(
                    "Secret {}: its docker config keys are checked against the images its rules serve",
                    secret.name
                ));
                sources.keyrings.insert(secret.name.clone(), keyring);
            }
            Err(e) => notes.push(e.to_string()),
        }
    }
    let policy = Policy::merged(&config, &sources);
    notes.extend(offline_note(&targets, &facts));
    notes.extend(unknown_labels_note(&targets, &policy, &facts));
    let unscoped = Unscoped::new(&policy);
    let explanations: Vec<_> = targets
        .iter()
        .map(|t| explain(t, &policy, &facts, &unscoped, now))
        .collect();
    let report = match args.output {
        ExplainFormat::Text => render_text(&explanations, &notes),
        ExplainFormat::Json => {
            // Serialising plain strings, lists and JSON values cannot fail.
            let mut json = serde_json::to_string_pretty(&explanations).unwrap_or_default();
            json.push('\n');
            json
        }
    };
    Ok(Output {
        report,
        warnings: policy.warnings(),
    })
}

/// Finds every Pod and pod template, descending into Lists. Returns targets and notes about
/// objects that have no pod template.
pub fn find_targets(docs: &[Value], default_namespace: &str) -> (Vec<Target>, Vec<String>) {
    let mut targets = Vec::new();
    let mut notes = Vec::new();
    for doc in docs {
        collect(doc, default_namespace, &mut targets, &mut notes);
    }
    (targets, notes)
}

fn collect(
    object: &Value,
    default_namespace: &str,
    targets: &mut Vec<Target>,
    notes: &mut Vec<String>,
) {
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or("");
    let metadata = object.get("metadata");
    let name = metadata
        .and_then(|m| m.get("name").or_else(|| m.get("generateName")))
        .and_then(Value::as_str)
        .unwrap_or("<unnamed>")
        .to_string();
    let namespace = metadata
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .unwrap_or(default_namespace)
        .to_string();
    let template = match kind {
        "List" | "PodList" | "DeploymentList" => {
            for item in object
                .get("items")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                collect(item, default_namespace, targets, notes);
            }
            return;
        }
        "Pod" => Some(object.clone()),
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "Job"
        | "ReplicationController" => object.pointer("/spec/template").cloned(),
        "CronJob" => object.pointer("/spec/jobTemplate/spec/template").cloned(),
        "PodTemplate" => object.get("template").cloned(),
        // Namespaces give their labels (`find_namespaces`).
        "Secret" | "Namespace" => return,
        _ => {
            notes.push(format!(
                "ignored {} {name}: no pod template",
                if kind.is_empty() {
                    "object without kind"
                } else {
                    kind
                }
            ));
            return;
        }
    };
    match template {
        Some(pod) => targets.push(Target {
            kind: kind.to_string(),
            name,
            namespace,
            pod,
        }),
        None => notes.push(format!("ignored {kind} {name}: no pod template found")),
    }
}

/// What `explain` cannot know offline, said once: a namespace it has no labels for is taken as
/// selected (unless excluded), as the webhook's namespaceSelector would have let the Pod
/// through; whether Secrets exist is unknown.
pub fn offline_note(targets: &[Target], facts: &ExplainFacts) -> Option<String> {
    let unknown: BTreeSet<&str> = targets
        .iter()
        .map(|t| t.namespace.as_str())
        .filter(|ns| !facts.knows(ns))
        .collect();
    (!unknown.is_empty()).then(|| {
        format!(
            "assumed (offline): namespace(s) {} are opted in unless excluded (no Namespace object in the input, no --namespace-labels), and no cluster facts are known (which Secrets exist)",
            unknown.into_iter().collect::<Vec<_>>().join(", ")
        )
    })
}

/// The assumption `explain` makes, said once: namespaces whose labels it does not know are
/// not served by rules with a `namespaceSelector` (as the injector does while its cache has not
/// seen a namespace).
pub fn unknown_labels_note(
    targets: &[Target],
    policy: &Policy,
    facts: &ExplainFacts,
) -> Option<String> {
    let selectors: Vec<&str> = policy
        .rules()
        .rules()
        .iter()
        .filter(|r| effective_scope(r, policy.settings()).has_selector())
        .map(|r| r.pattern.as_str())
        .collect();
    let unknown: BTreeSet<&str> = targets
        .iter()
        .map(|t| t.namespace.as_str())
        .filter(|ns| !facts.knows(ns))
        .collect();
    if selectors.is_empty() || unknown.is_empty() {
        return None;
    }
    Some(format!(
        "assumed: the labels of namespace(s) {} are unknown (no Namespace object in the input, no --namespace-labels), so the rules with a namespaceSelector ({}) do not serve them",
        unknown.into_iter().collect::<Vec<_>>().join(", "),
        selectors.join(", ")
    ))
}

/// Runs the webhook's decision on one target, with the namespace labels `facts` knows and no
/// knowledge of Secrets.
pub fn explain(
    target: &Target,
    policy: &Policy,
    facts: &ExplainFacts,
    unscoped: &Unscoped,
    now: i64,
) -> Explanation {
    let mut out = Explanation {
        kind: target.kind.clone(),
        name: target.name.clone(),
        namespace: target.namespace.clone(),
        outcome: "skipped",
        skipped: None,
        mode: None,
        images: Vec::new(),
        add: Vec::new(),
        warnings: Vec::new(),
        patch: None,
        notes: Vec::new(),
        already_listed: Vec::new(),
        pod_template: target.kind != "Pod",
        expiries: Vec::new(),
    };
    // Round-trip through text so the webhook's borrowed Pod decoder is what reads it.
    let text = target.pod.to_string();
    let pod: Pod<'_> = match serde_json::from_str(&text) {
        Ok(pod) => pod,
        Err(e) => {
            out.skipped = Some("the Pod cannot be read");
            out.warnings.push(format!("not a valid Pod: {e}"));
            return out;
        }
    };
    let ctx = Context::new(policy, facts).now(now);
    let verdict = verdict::for_pod(&pod, &target.namespace, &ctx);
    let labels = facts.namespace_labels(&target.namespace);
    let serves = |rule: &Rule| {
        effective_scope(rule, policy.settings()).allows(&target.namespace, labels.as_deref())
    };
    let out_of_scope = |rule: &Rule| OutOfScope {
        rule: rule.pattern.to_string(),
        rule_source: rule.source.to_string(),
        secrets: rule.secrets.clone(),
        scope: describe_scope(rule, policy.settings()),
    };
    out.outcome = verdict.outcome.as_str();
    if let Outcome::Skipped(reason) = verdict.outcome {
        out.skipped = Some(reason.as_str());
        return out;
    }
    out.mode = verdict.mode.map(|m| m.as_str());
    out.images = verdict
        .images
        .iter()
        .map(|finding| {
            let mut report = ImageReport {
                list: finding.source.json_field(),
                name: finding.name.to_string(),
                image: finding.image.to_string(),
                registry: None,
                repository: None,
                rule: None,
                rule_source: None,
                secrets: Vec::new(),
                set_pull_policy_always: finding.set_pull_policy_always,
                error: None,
                scope: None,
                out_of_scope: None,
                overrides_pull_policy: None,
                nearest: None,
            };
            match &finding.outcome {
                ImageOutcome::NoImage => report.error = Some("no image".into()),
                ImageOutcome::Invalid(e) => report.error = Some(e.to_string()),
                ImageOutcome::NoRule(image) => {
                    report.registry = Some(image.registry());
                    report.repository = Some(image.path.to_string());
                    report.out_of_scope = unscoped
                        .best(policy, image)
                        .filter(|best| !serves(best))
                        .map(out_of_scope);
                    if report.out_of_scope.is_none() {
                        report.nearest = nearest_rule(policy.rules().rules(), image);
                    }
                }
                ImageOutcome::Matched { image, rule } => {
                    report.registry = Some(image.registry());
                    report.repository = Some(image.path.to_string());
                    report.rule = Some(rule.pattern.to_string());
                    report.rule_source = Some(rule.source.to_string());
                    report.secrets = rule.secrets.clone();
                    report.scope = Some(describe_scope(rule, policy.settings()));
                    // The most specific rule, whatever its scope: when it is not the one that
                    // serves the image, it is out of scope here. (Written against the scope
                    // itself, so it also tells when a decision ignored scope.)
                    report.out_of_scope = unscoped
                        .best(policy, image)
                        .filter(|best| !serves(best))
                        .map(out_of_scope);
                }
            }
            if finding.set_pull_policy_always {
                report.overrides_pull_policy =
                    own_pull_policy(&target.pod, report.list, &report.name)
                        .filter(|policy| *policy != "Always")
                        .map(str::to_string);
            }
            report
        })
        .collect();
    for finding in &verdict.images {
        if let ImageOutcome::Matched { rule, .. } = &finding.outcome {
            let note = PULL_POLICY_NOTE.replace("{rule}", rule.pattern.as_str());
            if rule.pull_policy_always && !out.notes.contains(&note) {
                out.notes.push(note);
            }
        }
    }
    out.add = verdict.secrets.iter().map(|s| s.name.to_string()).collect();
    out.expiries = verdict
        .secrets
        .iter()
        .filter_map(|s| Some(SecretExpiry::of(s.name, s.expiry?, now)))
        .collect();
    let listed: BTreeSet<&str> = target
        .pod
        .pointer("/spec/imagePullSecrets")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.get("name").and_then(Value::as_str))
        .collect();
    let mut matched: Vec<String> = Vec::new();
    for secret in out.images.iter().flat_map(|i| &i.secrets) {
        if listed.contains(secret.as_str()) && !matched.contains(secret) {
            matched.push(secret.clone());
        }
    }
    out.already_listed = matched;
    out.warnings = verdict.warnings.iter().map(ToString::to_string).collect();
    out.patch = verdict
        .patch
        .as_ref()
        .and_then(|p| serde_json::to_value(p).ok());
    out
}

/// The pull policy a container (`imagePullPolicy`) or image volume (`image.pullPolicy`) of
/// `pod` sets itself.
fn own_pull_policy<'p>(pod: &'p Value, list: &str, name: &str) -> Option<&'p str> {
    let item = pod
        .pointer(&format!("/spec/{list}"))?
        .as_array()?
        .iter()
        .find(|item| item.get("name").and_then(Value::as_str) == Some(name))?;
    let field = if list == "volumes" {
        "/image/pullPolicy"
    } else {
        "/imagePullPolicy"
    };
    item.pointer(field)?.as_str()
}

/// The `-o text` rendering, for people.
pub fn render_text(explanations: &[Explanation], notes: &[String]) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    for e in explanations {
        let what = if e.pod_template {
            " (pod template: the patch below is what each of its Pods gets at creation; the workload itself is not changed)".to_string()
        } else {
            String::new()
        };
        let _ = writeln!(s, "{} {}/{}{what}", e.kind, e.namespace, e.name);
        if let Some(reason) = e.skipped {
            let _ = writeln!(s, "  left alone: {reason}");
            for w in &e.warnings {
                let _ = writeln!(s, "  warning: {w}");
            }
            s.push('\n');
            continue;
        }
        for c in &e.images {
            let kind = match c.list {
                "initContainers" => "initContainer",
                "volumes" => "image volume",
                _ => "container",
            };
            let _ = write!(s, "  {kind} {}: {}", c.name, c.image);
            match (&c.error, &c.registry, &c.rule) {
                (Some(err), _, _) => {
                    let _ = writeln!(s, "\n    not matched: {err}");
                }
                (None, Some(registry), None) => {
                    let _ = writeln!(
                        s,
                        "\n    registry {registry}, repository {}: {}",
                        c.repository.as_deref().unwrap_or(""),
                        if c.out_of_scope.is_some() {
                            "no rule serves this namespace".to_string()
                        } else if let Some(near) = &c.nearest {
                            format!(
                                "no rule matches; nearest: rule {}: {}",
                                near.rule, near.reason
                            )
                        } else {
                            "no rule matches".to_string()
                        }
                    );
                }
                (None, Some(registry), Some(rule)) => {
                    let _ = writeln!(
                        s,
                        "\n    registry {registry}, repository {}\n    rule {rule} ({}) -> secrets {}{}",
                        c.repository.as_deref().unwrap_or(""),
                        c.rule_source.as_deref().unwrap_or(""),
                        c.secrets.join(", "),
                        match (c.set_pull_policy_always, c.list) {
                            (false, _) => String::new(),
                            // An image volume's field is pullPolicy.
                            (true, list) => format!(
                                "; {} {}-> Always{}",
                                if list == "volumes" {
                                    "pullPolicy"
                                } else {
                                    "imagePullPolicy"
                                },
                                c.overrides_pull_policy
                                    .as_deref()
                                    .map(|p| format!("{p} "))
                                    .unwrap_or_default(),
                                if c.overrides_pull_policy.is_some() {
                                    " (the rule's pullPolicy: Always overrides the Pod's)"
                                } else {
                                    ""
                                }
                            ),
                        },
                    );
                    if let Some(scope) = &c.scope {
                        let _ = writeln!(s, "      scope: {scope}");
                    }
                }
                _ => s.push('\n'),
            }
            if let Some(o) = &c.out_of_scope {
                let _ = writeln!(
                    s,
                    "    rule {} ({}) matches the image but does not serve namespace {} (scope: {})",
                    o.rule, o.rule_source, e.namespace, o.scope
                );
            }
        }
        let verb = if e.mode == Some("audit") {
            "would add (audit mode)"
        } else {
            "adds"
        };
        let listed = if e.already_listed.is_empty() {
            String::new()
        } else {
            format!(
                " ({} already listed by the Pod)",
                e.already_listed.join(", ")
            )
        };
        if e.add.is_empty() {
            let _ = writeln!(s, "  imagePullSecrets: nothing to add{listed}");
        } else {
            let _ = writeln!(s, "  imagePullSecrets: {verb} {}{listed}", e.add.join(", "));
        }
        for w in &e.warnings {
            let _ = writeln!(s, "  warning: {w}");
        }
        if let Some(patch) = &e.patch {
            let _ = writeln!(s, "  JSON Patch: {patch}");
        }
        for note in &e.notes {
            let _ = writeln!(s, "  note: {note}");
        }
        s.push('\n');
    }
    for note in notes {
        let _ = writeln!(s, "note: {note}");
    }
    if explanations.is_empty() {
        s.push_str("no Pods or pod templates found\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::parse_documents;

    #[test]
    fn finds_pods_templates_and_lists() {
        let yaml = r#"
apiVersion: v1
kind: Pod
metadata: {name: p, namespace: team-a}
spec: {containers: [{name: c, image: nginx}]}
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: cj}
spec: {jobTemplate: {spec: {template: {spec: {containers: [{name: c, image: ghcr.io/acme/x}]}}}}}
---
{"apiVersion": "v1", "kind": "List", "items": [
  {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
   "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "quay.io/a/b"}]}}}},
  {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}}]}
"#;
        let docs = parse_documents("test", yaml).expect("parses");
        let (targets, notes) = find_targets(&docs, "default");
        let found: Vec<(String, String, String)> = targets
            .iter()
            .map(|t| (t.kind.clone(), t.namespace.clone(), t.name.clone()))
            .collect();
        assert_eq!(
            found,
            [
                ("Pod".into(), "team-a".into(), "p".into()),
                ("CronJob".into(), "default".into(), "cj".into()),
                ("Deployment".into(), "default".into(), "d".into()),
            ]
        );
        assert_eq!(notes, ["ignored Service s: no pod template"]);
    }
}

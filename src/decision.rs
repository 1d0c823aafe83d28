//! The decision: given a Pod and what is known about its namespace, which secrets to add, why,
//! and in which mode. Pure and synchronous, so every branch is covered by table tests.
//!
//! Order of checks: request kind and operation, mirror Pod, Pod opt-out label, the namespace
//! (excluded by name, the injector's own, selection mode and its label), then one rule per
//! container (initContainers first), then the secrets the Pod does not already list.

use crate::config::{Config, Mode, Selection};
use crate::image::{self, ImageError, ImageRef};
use crate::review::Pod;
use crate::rules::{Rule, RuleSet};

/// Which endpoint received the review.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/mutate`: honours the configured mode.
    Mutate,
    /// `/audit`: never patches.
    Audit,
}

impl Endpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Mutate => "mutate",
            Endpoint::Audit => "audit",
        }
    }
}

/// The namespace's `pullsecret-injector/inject` label, as far as the injector knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamespaceLabel {
    /// Standalone mode, or a namespace not (yet) in the cache: the webhook's namespaceSelector,
    /// evaluated by the API server, has already decided.
    Unknown,
    Unlabelled,
    Enabled,
    Audit,
    Disabled,
    /// Any other value: not an opt-in, not an opt-out.
    Other,
}

impl NamespaceLabel {
    pub fn from_value(value: Option<&str>) -> Self {
        match value {
            None => NamespaceLabel::Unlabelled,
            Some("enabled") => NamespaceLabel::Enabled,
            Some("audit") => NamespaceLabel::Audit,
            Some("disabled") => NamespaceLabel::Disabled,
            Some(_) => NamespaceLabel::Other,
        }
    }
}

/// What the injector knows about Secrets in namespaces (cluster mode); standalone knows nothing.
pub trait SecretIndex {
    /// `Some(exists)` when known, `None` when the injector cannot tell.
    fn secret_exists(&self, namespace: &str, name: &str) -> Option<bool>;
}

/// Knows nothing: every secret may exist.
pub struct NoSecretIndex;

impl SecretIndex for NoSecretIndex {
    fn secret_exists(&self, _: &str, _: &str) -> Option<bool> {
        None
    }
}

/// Everything the decision reads besides the Pod.
pub struct Context<'a> {
    pub config: &'a Config,
    /// The configuration's rules plus discovered ones.
    pub rules: &'a RuleSet,
    pub endpoint: Endpoint,
    /// The injector's own namespace, always excluded.
    pub own_namespace: Option<&'a str>,
    pub namespace: &'a str,
    pub namespace_label: NamespaceLabel,
    pub secrets: &'a dyn SecretIndex,
}

/// Why a review was answered without looking at images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    NotAPod,
    NotCreate,
    NoPodObject,
    MirrorPod,
    PodOptedOut,
    NamespaceExcluded,
    OwnNamespace,
    NamespaceNotSelected,
    NamespaceDisabled,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::NotAPod => "not a Pod",
            SkipReason::NotCreate => "not a CREATE",
            SkipReason::NoPodObject => "no Pod object in the request",
            SkipReason::MirrorPod => "mirror Pod",
            SkipReason::PodOptedOut => "Pod labelled pullsecret-injector/inject=disabled",
            SkipReason::NamespaceExcluded => "namespace excluded by configuration",
            SkipReason::OwnNamespace => "the injector's own namespace",
            SkipReason::NamespaceNotSelected => {
                "namespace not labelled pullsecret-injector/inject=enabled"
            }
            SkipReason::NamespaceDisabled => {
                "namespace labelled pullsecret-injector/inject=disabled"
            }
        }
    }
}

/// Whether the container is in `initContainers` or `containers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerList {
    Init,
    Main,
}

impl ContainerList {
    pub fn json_field(self) -> &'static str {
        match self {
            ContainerList::Init => "initContainers",
            ContainerList::Main => "containers",
        }
    }
}

/// What happened to one container's image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageOutcome<'a> {
    NoImage,
    Invalid(ImageError),
    NoRule(ImageRef<'a>),
    Matched { image: ImageRef<'a>, rule: &'a Rule },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerFinding<'a> {
    pub list: ContainerList,
    pub index: usize,
    pub name: &'a str,
    pub image: &'a str,
    pub outcome: ImageOutcome<'a>,
    /// This container's imagePullPolicy will be set to Always.
    pub set_pull_policy_always: bool,
}

/// A secret to add, the rule that chose it and the images that need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretToAdd<'a> {
    pub name: &'a str,
    pub rule: &'a Rule,
    pub images: Vec<&'a str>,
}

/// The decision for a Pod in scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan<'a> {
    pub mode: Mode,
    pub containers: Vec<ContainerFinding<'a>>,
    /// Secrets to append, in the order containers first need them.
    pub add: Vec<SecretToAdd<'a>>,
    /// Matched secrets known not to exist in the namespace (not referenced; sync off).
    pub missing: Vec<SecretToAdd<'a>>,
    /// Whether the Pod already has an `imagePullSecrets` list (append) or not (create).
    pub has_pull_secret_list: bool,
    /// How many entries that list has.
    pub existing_pull_secrets: usize,
}

impl Plan<'_> {
    /// True when enforcing would change the Pod.
    pub fn changes_pod(&self) -> bool {
        !self.add.is_empty() || self.containers.iter().any(|c| c.set_pull_policy_always)
    }

    /// Human-readable warnings for the API client (kubectl prints them).
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        for c in &self.containers {
            if let ImageOutcome::Invalid(e) = &c.outcome {
                warnings.push(format!(
                    "pullsecret-injector: container {} image {:?} not matched: {e}",
                    c.name, c.image
                ));
            }
        }
        if self.mode == Mode::Audit {
            for s in &self.add {
                warnings.push(format!(
                    "pullsecret-injector (audit): would add imagePullSecret {} for {} (rule {})",
                    s.name,
                    s.images.join(", "),
                    s.rule.pattern
                ));
            }
            for c in self.containers.iter().filter(|c| c.set_pull_policy_always) {
                warnings.push(format!(
                    "pullsecret-injector (audit): would set imagePullPolicy Always on container {}",
                    c.name
                ));
            }
        }
        for s in &self.missing {
            warnings.push(format!(
                "pullsecret-injector: Secret {} (rule {}) does not exist in this namespace; not referenced",
                s.name, s.rule.pattern
            ));
        }
        warnings
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<'a> {
    Skip(SkipReason),
    Plan(Plan<'a>),
}

/// Decides for a review: request kind/operation first, then the Pod.
pub fn decide_request<'a>(
    kind_group: &str,
    kind: &str,
    operation: &str,
    pod: Option<&'a Pod<'a>>,
    ctx: &Context<'a>,
) -> Decision<'a> {
    if !kind_group.is_empty() || kind != "Pod" {
        return Decision::Skip(SkipReason::NotAPod);
    }
    if operation != "CREATE" {
        return Decision::Skip(SkipReason::NotCreate);
    }
    match pod {
        Some(pod) => decide(pod, ctx),
        None => Decision::Skip(SkipReason::NoPodObject),
    }
}

/// Decides for a Pod being created.
pub fn decide<'a>(pod: &'a Pod<'a>, ctx: &Context<'a>) -> Decision<'a> {
    let mode = match scope(pod, ctx) {
        Ok(mode) => mode,
        Err(reason) => return Decision::Skip(reason),
    };
    let Some(spec) = &pod.spec else {
        return Decision::Plan(Plan {
            mode,
            containers: Vec::new(),
            add: Vec::new(),
            missing: Vec::new(),
            has_pull_secret_list: false,
            existing_pull_secrets: 0,
        });
    };

    let existing = spec.image_pull_secrets.as_deref().unwrap_or_default();
    let already_listed = |name: &str| existing.iter().any(|r| r.name.as_deref() == Some(name));
    let sync = ctx.config.sync;

    let mut containers = Vec::with_capacity(spec.init_containers.len() + spec.containers.len());
    let mut add: Vec<SecretToAdd<'a>> = Vec::new();
    let mut missing: Vec<SecretToAdd<'a>> = Vec::new();
    let lists = [
        (ContainerList::Init, &spec.init_containers),
        (ContainerList::Main, &spec.containers),
    ];
    for (list, items) in lists {
        for (index, container) in items.iter().enumerate() {
            let image_text = container.image.as_deref().unwrap_or("");
            let outcome = match container.image.as_deref() {
                None | Some("") => ImageOutcome::NoImage,
                Some(text) => match image::parse(text) {
                    Err(e) => ImageOutcome::Invalid(e),
                    Ok(image) => match ctx.rules.best_match(&image) {
                        Some(rule) => ImageOutcome::Matched { image, rule },
                        None => ImageOutcome::NoRule(image),
                    },
                },
            };
            let mut set_pull_policy_always = false;
            if let ImageOutcome::Matched { rule, .. } = &outcome {
                set_pull_policy_always = rule.pull_policy_always
                    && container.image_pull_policy.as_deref() != Some("Always");
                for secret in &rule.secrets {
                    let secret = secret.as_str();
                    if already_listed(secret) {
                        continue;
                    }
                    let known_missing =
                        !sync && ctx.secrets.secret_exists(ctx.namespace, secret) == Some(false);
                    let bucket = if known_missing {
                        &mut missing
                    } else {
                        &mut add
                    };
                    match bucket.iter_mut().find(|s| s.name == secret) {
                        Some(entry) => {
                            if !entry.images.contains(&image_text) {
                                entry.images.push(image_text);
                            }
                        }
                        None => bucket.push(SecretToAdd {
                            name: secret,
                            rule,
                            images: vec![image_text],
                        }),
                    }
                }
            }
            containers.push(ContainerFinding {
                list,
                index,
                name: &container.name,
                image: image_text,
                outcome,
                set_pull_policy_always,
            });
        }
    }
    Decision::Plan(Plan {
        mode,
        containers,
        add,
        missing,
        has_pull_secret_list: spec.image_pull_secrets.is_some(),
        existing_pull_secrets: existing.len(),
    })
}

/// Whether the Pod is in scope, and in which mode.
fn scope(pod: &Pod<'_>, ctx: &Context<'_>) -> Result<Mode, SkipReason> {
    if pod.metadata.annotations.mirror.is_some() {
        return Err(SkipReason::MirrorPod);
    }
    let pod_label = pod.metadata.labels.inject.as_deref();
    if pod_label == Some("disabled") {
        return Err(SkipReason::PodOptedOut);
    }
    let mode = namespace_mode(
        ctx.config,
        ctx.own_namespace,
        ctx.namespace,
        ctx.namespace_label,
    )?;
    let audit =
        mode == Mode::Audit || pod_label == Some("audit") || ctx.endpoint == Endpoint::Audit;
    Ok(if audit { Mode::Audit } else { Mode::Enforce })
}

/// Whether a namespace is in scope, and in which mode (before Pod labels and the endpoint).
/// Secret sync uses the same answer to choose the namespaces that get copies.
pub fn namespace_mode(
    config: &Config,
    own_namespace: Option<&str>,
    namespace: &str,
    label: NamespaceLabel,
) -> Result<Mode, SkipReason> {
    if own_namespace == Some(namespace) {
        return Err(SkipReason::OwnNamespace);
    }
    if config.exclude.iter().any(|n| n == namespace) {
        return Err(SkipReason::NamespaceExcluded);
    }
    let namespace_audit = match (config.selection, label) {
        (_, NamespaceLabel::Disabled) => return Err(SkipReason::NamespaceDisabled),
        (_, NamespaceLabel::Audit) => true,
        (Selection::OptIn, NamespaceLabel::Unlabelled | NamespaceLabel::Other) => {
            return Err(SkipReason::NamespaceNotSelected);
        }
        _ => false,
    };
    Ok(if namespace_audit || config.mode == Mode::Audit {
        Mode::Audit
    } else {
        Mode::Enforce
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::review::{Container, LocalObjectReference, PodSpec};
    use crate::rules::{RegistryPattern, RuleSource};
    use std::borrow::Cow;
    use std::collections::HashMap;

    fn rules() -> RuleSet {
        let rule = |index, pattern: &str, secrets: &[&str], always| Rule {
            pattern: RegistryPattern::parse(pattern).expect(pattern),
            secrets: secrets.iter().map(|s| s.to_string()).collect(),
            pull_policy_always: always,
            source: RuleSource::Config { index },
        };
        RuleSet::new(vec![
            rule(0, "docker.io", &["dockerhub"], false),
            rule(1, "ghcr.io/acme", &["ghcr-acme"], true),
            rule(
                2,
                "*.dkr.ecr.*.amazonaws.com",
                &["ecr", "ecr-backup"],
                false,
            ),
        ])
    }

    fn pod(
        init: &[&'static str],
        main: &[&'static str],
        existing: Option<&[&'static str]>,
    ) -> Pod<'static> {
        let container = |i: usize, image: &&'static str| Container {
            name: Cow::Owned(format!("c{i}")),
            image: Some(Cow::Borrowed(*image)),
            image_pull_policy: None,
        };
        Pod {
            spec: Some(PodSpec {
                init_containers: init
                    .iter()
                    .enumerate()
                    .map(|(i, s)| container(i, s))
                    .collect(),
                containers: main
                    .iter()
                    .enumerate()
                    .map(|(i, s)| container(i, s))
                    .collect(),
                image_pull_secrets: existing.map(|names| {
                    names
                        .iter()
                        .map(|n| LocalObjectReference {
                            name: Some(Cow::Borrowed(*n)),
                        })
                        .collect()
                }),
            }),
            ..Pod::default()
        }
    }

    struct Known(HashMap<&'static str, bool>);
    impl SecretIndex for Known {
        fn secret_exists(&self, _: &str, name: &str) -> Option<bool> {
            Some(self.0.get(name).copied().unwrap_or(false))
        }
    }

    fn added<'a>(decision: &Decision<'a>) -> Vec<&'a str> {
        match decision {
            Decision::Plan(plan) => plan.add.iter().map(|s| s.name).collect(),
            Decision::Skip(reason) => panic!("skipped: {reason:?}"),
        }
    }

    #[test]
    fn adds_missing_secrets_in_container_order() {
        let config = Config::default();
        let rules = rules();
        let ctx = Context {
            config: &config,
            rules: &rules,
            endpoint: Endpoint::Mutate,
            own_namespace: Some("pullsecret-injector"),
            namespace: "team-a",
            namespace_label: NamespaceLabel::Enabled,
            secrets: &NoSecretIndex,
        };
        let cases: Vec<(Pod<'static>, Vec<&str>)> = vec![
            (pod(&[], &["nginx"], None), vec!["dockerhub"]),
            (
                pod(&["ghcr.io/acme/init"], &["nginx", "ghcr.io/acme/api"], None),
                vec!["ghcr-acme", "dockerhub"],
            ),
            (pod(&[], &["nginx"], Some(&["dockerhub"])), vec![]),
            (
                pod(
                    &[],
                    &["nginx", "ghcr.io/acme/x"],
                    Some(&["own", "dockerhub"]),
                ),
                vec!["ghcr-acme"],
            ),
            (
                pod(&[], &["1.dkr.ecr.us-east-1.amazonaws.com/a"], None),
                vec!["ecr", "ecr-backup"],
            ),
            (pod(&[], &["quay.io/x/y", "ghcr.io/other/z"], None), vec![]),
            (
                pod(&[], &["nginx", "redis", "nginx"], None),
                vec!["dockerhub"],
            ),
            (pod(&[], &["NOT VALID", "nginx"], None), vec!["dockerhub"]),
            (pod(&[], &[], None), vec![]),
        ];
        for (pod, want) in &cases {
            assert_eq!(added(&decide(pod, &ctx)), *want, "{pod:?}");
        }
    }

    #[test]
    fn scope_table() {
        use NamespaceLabel as L;
        let rules = rules();
        let opt_in = Config::default();
        let all = Config {
            selection: Selection::All,
            ..Config::default()
        };
        let audit_mode = Config {
            mode: Mode::Audit,
            ..Config::default()
        };
        let p = pod(&[], &["nginx"], None);
        let mut opted_out = pod(&[], &["nginx"], None);
        opted_out.metadata.labels.inject = Some(Cow::Borrowed("disabled"));
        let mut pod_audit = pod(&[], &["nginx"], None);
        pod_audit.metadata.labels.inject = Some(Cow::Borrowed("audit"));
        let mut mirror = pod(&[], &["nginx"], None);
        mirror.metadata.annotations.mirror = Some(Cow::Borrowed("abc"));

        type Want = Result<Mode, SkipReason>;
        let cases: Vec<(&Config, &Pod<'_>, Endpoint, &str, NamespaceLabel, Want)> = vec![
            (
                &opt_in,
                &p,
                Endpoint::Mutate,
                "team-a",
                L::Enabled,
                Ok(Mode::Enforce),
            ),
            (
                &opt_in,
                &p,
                Endpoint::Mutate,
                "team-a",
                L::Unknown,
                Ok(Mode::Enforce),
            ),
            (
                &opt_in,
                &p,
                Endpoint::Mutate,
                "team-a",
                L::Unlabelled,
                Err(SkipReason::NamespaceNotSelected),
            ),
            (
                &opt_in,
                &p,
                Endpoint::Mutate,
                "team-a",
                L::Other,
                Err(SkipReason::NamespaceNotSelected),
            ),
            (
                &opt_in,
                &p,
                Endpoint::Mutate,
                "team-a",
                L::Audit,
                Ok(Mode::Audit),
            ),
            (
                &opt_in,
                &p,
                Endpoint::Mutate,
                "team-a",
                L::Disabled,
                Err(SkipReason::NamespaceDisabled),
            ),
            (
                &opt_in,
                &p,
                Endpoint::Audit,
                "team-a",
                L::Enabled,
                Ok(Mode::Audit),
            ),
            (
                &opt_in,
                &p,
                Endpoint::Mutate,
                "kube-system",
                L::Enabled,
                Err(SkipReason::NamespaceExcluded),
            ),
            (
                &opt_in,
                &p,
                Endpoint::Mutate,
                "pullsecret-injector",
                L::Enabled,
                Err(SkipReason::OwnNamespace),
            ),
            (
                &opt_in,
                &opted_out,
                Endpoint::Mutate,
                "team-a",
                L::Enabled,
                Err(SkipReason::PodOptedOut),
            ),
            (
                &opt_in,
                &mirror,
                Endpoint::Mutate,
                "team-a",
                L::Enabled,
                Err(SkipReason::MirrorPod),
            ),
            (
                &opt_in,
                &pod_audit,
                Endpoint::Mutate,
                "team-a",
                L::Enabled,
                Ok(Mode::Audit),
            ),
            (
                &all,
                &p,
                Endpoint::Mutate,
                "team-a",
                L::Unlabelled,
                Ok(Mode::Enforce),
            ),
            (
                &all,
                &p,
                Endpoint::Mutate,
                "team-a",
                L::Other,
                Ok(Mode::Enforce),
            ),
            (
                &all,
                &p,
                Endpoint::Mutate,
                "team-a",
                L::Disabled,
                Err(SkipReason::NamespaceDisabled),
            ),
            (
                &all,
                &p,
                Endpoint::Mutate,
                "team-a",
                L::Audit,
                Ok(Mode::Audit),
            ),
            (
                &all,
                &p,
                Endpoint::Mutate,
                "kube-public",
                L::Unlabelled,
                Err(SkipReason::NamespaceExcluded),
            ),
            (
                &audit_mode,
                &p,
                Endpoint::Mutate,
                "team-a",
                L::Enabled,
                Ok(Mode::Audit),
            ),
        ];
        for (config, pod, endpoint, namespace, namespace_label, want) in cases {
            let ctx = Context {
                config,
                rules: &rules,
                endpoint,
                own_namespace: Some("pullsecret-injector"),
                namespace,
                namespace_label,
                secrets: &NoSecretIndex,
            };
            let got = match decide(pod, &ctx) {
                Decision::Plan(plan) => Ok(plan.mode),
                Decision::Skip(reason) => Err(reason),
            };
            assert_eq!(
                got, want,
                "{namespace} {namespace_label:?} {endpoint:?} {:?}",
                config.selection
            );
        }
    }

    #[test]
    fn request_kind_and_operation_gate() {
        let config = Config::default();
        let rules = rules();
        let ctx = Context {
            config: &config,
            rules: &rules,
            endpoint: Endpoint::Mutate,
            own_namespace: None,
            namespace: "a",
            namespace_label: NamespaceLabel::Unknown,
            secrets: &NoSecretIndex,
        };
        let p = pod(&[], &["nginx"], None);
        assert_eq!(
            decide_request("", "Secret", "CREATE", None, &ctx),
            Decision::Skip(SkipReason::NotAPod)
        );
        assert_eq!(
            decide_request("apps", "Pod", "CREATE", Some(&p), &ctx),
            Decision::Skip(SkipReason::NotAPod)
        );
        assert_eq!(
            decide_request("", "Pod", "UPDATE", Some(&p), &ctx),
            Decision::Skip(SkipReason::NotCreate)
        );
        assert_eq!(
            decide_request("", "Pod", "CREATE", None, &ctx),
            Decision::Skip(SkipReason::NoPodObject)
        );
        assert_eq!(
            added(&decide_request("", "Pod", "CREATE", Some(&p), &ctx)),
            ["dockerhub"]
        );
    }

    #[test]
    fn missing_secrets_are_not_referenced_unless_sync() {
        let rules = rules();
        let known = Known(HashMap::from([("dockerhub", true)]));
        let p = pod(&[], &["nginx", "ghcr.io/acme/api"], None);
        for (sync, want_add, want_missing) in [
            (false, vec!["dockerhub"], vec!["ghcr-acme"]),
            (true, vec!["dockerhub", "ghcr-acme"], vec![]),
        ] {
            let config = Config {
                sync,
                ..Config::default()
            };
            let ctx = Context {
                config: &config,
                rules: &rules,
                endpoint: Endpoint::Mutate,
                own_namespace: None,
                namespace: "team-a",
                namespace_label: NamespaceLabel::Enabled,
                secrets: &known,
            };
            let Decision::Plan(plan) = decide(&p, &ctx) else {
                panic!("skipped")
            };
            assert_eq!(
                plan.add.iter().map(|s| s.name).collect::<Vec<_>>(),
                want_add
            );
            assert_eq!(
                plan.missing.iter().map(|s| s.name).collect::<Vec<_>>(),
                want_missing
            );
            assert_eq!(
                plan.warnings().iter().any(|w| w.contains("does not exist")),
                !sync
            );
        }
    }

    #[test]
    fn pull_policy_always_only_when_not_already_always() {
        let config = Config::default();
        let rules = rules();
        let ctx = Context {
            config: &config,
            rules: &rules,
            endpoint: Endpoint::Mutate,
            own_namespace: None,
            namespace: "team-a",
            namespace_label: NamespaceLabel::Enabled,
            secrets: &NoSecretIndex,
        };
        let mut p = pod(
            &[],
            &["ghcr.io/acme/api", "ghcr.io/acme/web", "nginx"],
            None,
        );
        if let Some(spec) = p.spec.as_mut() {
            spec.containers[1].image_pull_policy = Some(Cow::Borrowed("Always"));
        }
        let Decision::Plan(plan) = decide(&p, &ctx) else {
            panic!("skipped")
        };
        let flags: Vec<bool> = plan
            .containers
            .iter()
            .map(|c| c.set_pull_policy_always)
            .collect();
        assert_eq!(flags, [true, false, false]);
    }
}

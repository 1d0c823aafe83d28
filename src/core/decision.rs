//! The decision: given a Pod and what is known about its namespace, which secrets it needs,
//! why, and in which mode. Pure and synchronous, so every branch is covered by table tests.
//!
//! Order of checks: request kind and operation ([`gate`]), mirror Pod, Pod opt-out label, the
//! namespace (excluded by name, the injector's own, selection mode and its label), then one
//! rule per image (initContainers, containers, then image volumes: the order the kubelet
//! pulls them in), then the secrets the Pod does not already list. [`crate::core::verdict`]
//! turns the result into the answer.

use crate::core::config::{Mode, Selection, Settings};
use crate::core::facts::{ClusterFacts, NamespaceLabel, SecretPresence};
use crate::core::image::{self, ImageError, ImageRef};
use crate::core::names::{INJECT_AUDIT, INJECT_DISABLED};
use crate::core::policy::Policy;
use crate::core::review::Pod;
use crate::core::rules::Rule;

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

/// Everything the decision reads besides the Pod. Built with [`Context::new`] only.
#[derive(Clone, Copy)]
pub struct Context<'a> {
    pub policy: &'a Policy,
    pub facts: &'a dyn ClusterFacts,
    pub endpoint: Endpoint,
    /// The injector's own namespace, always excluded.
    pub own_namespace: Option<&'a str>,
}

impl<'a> Context<'a> {
    /// A context for `/mutate` with no own namespace; see [`Self::endpoint`] and
    /// [`Self::own_namespace`].
    pub fn new(policy: &'a Policy, facts: &'a dyn ClusterFacts) -> Self {
        Self {
            policy,
            facts,
            endpoint: Endpoint::Mutate,
            own_namespace: None,
        }
    }

    pub fn endpoint(self, endpoint: Endpoint) -> Self {
        Self { endpoint, ..self }
    }

    pub fn own_namespace(self, own_namespace: Option<&'a str>) -> Self {
        Self {
            own_namespace,
            ..self
        }
    }
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

/// Where in the Pod spec an image comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageSource {
    InitContainer,
    Container,
    /// `spec.volumes[].image.reference`.
    Volume,
}

impl ImageSource {
    /// The list in `spec` that holds it.
    pub fn json_field(self) -> &'static str {
        match self {
            ImageSource::InitContainer => "initContainers",
            ImageSource::Container => "containers",
            ImageSource::Volume => "volumes",
        }
    }

    /// How a person names it: `container` (init or not) or `volume`.
    pub fn noun(self) -> &'static str {
        match self {
            ImageSource::InitContainer | ImageSource::Container => "container",
            ImageSource::Volume => "volume",
        }
    }
}

/// What happened to one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageOutcome<'a> {
    NoImage,
    Invalid(ImageError),
    NoRule(ImageRef<'a>),
    Matched { image: ImageRef<'a>, rule: &'a Rule },
}

/// One image of the Pod and what the decision made of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFinding<'a> {
    pub source: ImageSource,
    /// Index in its list (for patch paths).
    pub index: usize,
    /// Container or volume name.
    pub name: &'a str,
    pub image: &'a str,
    /// `imagePullPolicy` (containers) or `pullPolicy` (image volumes), as in the spec.
    pub pull_policy: Option<&'a str>,
    pub outcome: ImageOutcome<'a>,
    /// Its pull policy will be set to Always (the rule says so and it is not Always yet).
    pub set_pull_policy_always: bool,
    /// Whether the kubelet would use one of the rule's Secrets for this image, when the
    /// injector can read them all (its namespace's sources); `None` when it cannot tell.
    pub credential_used: Option<bool>,
}

/// A secret the Pod needs and does not list, the rule that chose it, the images that need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretToAdd<'a> {
    pub name: &'a str,
    pub rule: &'a Rule,
    pub images: Vec<&'a str>,
    /// Whether the injector has seen it in the Pod's namespace. It is added regardless: a
    /// reference to a Secret created a moment later still serves the Pod, a missing one never.
    pub presence: SecretPresence,
}

/// The decision for a Pod in scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan<'a> {
    pub mode: Mode,
    pub images: Vec<ImageFinding<'a>>,
    /// Secrets to append, in the order the images first need them.
    pub secrets: Vec<SecretToAdd<'a>>,
    /// Whether the Pod already has an `imagePullSecrets` list (append) or not (create).
    pub has_pull_secret_list: bool,
    /// How many entries that list has.
    pub existing_pull_secrets: usize,
}

impl Plan<'_> {
    /// True when enforcing would change the Pod.
    pub fn changes_pod(&self) -> bool {
        !self.secrets.is_empty() || self.images.iter().any(|i| i.set_pull_policy_always)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<'a> {
    Skip(SkipReason),
    Plan(Plan<'a>),
}

/// Only Pod CREATE is acted on: a Pod's spec (and its imagePullSecrets) is immutable later.
pub fn gate(kind_group: &str, kind: &str, operation: &str) -> Result<(), SkipReason> {
    if !kind_group.is_empty() || kind != "Pod" {
        return Err(SkipReason::NotAPod);
    }
    if operation != "CREATE" {
        return Err(SkipReason::NotCreate);
    }
    Ok(())
}

/// `kubectl debug`: an UPDATE of the `pods/ephemeralcontainers` subresource (the object is a
/// Pod since Kubernetes 1.22, an `EphemeralContainers` object before).
pub fn is_debug(kind_group: &str, kind: &str, operation: &str, sub_resource: &str) -> bool {
    kind_group.is_empty()
        && matches!(kind, "Pod" | "EphemeralContainers")
        && operation == "UPDATE"
        && sub_resource == "ephemeralcontainers"
}

/// A debug container whose image needs a Secret the Pod does not list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebugFinding<'a> {
    pub name: &'a str,
    pub image: &'a str,
    pub rule: &'a Rule,
    pub secrets: Vec<&'a str>,
    /// False when the request does not carry the Pod's imagePullSecrets (the pre-1.22
    /// `EphemeralContainers` object): the secrets may already be there.
    pub pod_secrets_known: bool,
}

/// The new ephemeral containers (not in `old`) whose images need Secrets the Pod lacks. The
/// Pod's imagePullSecrets can no longer change, so this is only ever reported.
pub fn decide_debug<'a>(
    pod: &'a Pod<'a>,
    old: Option<&'a Pod<'a>>,
    namespace: &str,
    ctx: &Context<'a>,
) -> Result<Vec<DebugFinding<'a>>, SkipReason> {
    scope(pod, namespace, ctx)?;
    let existing: Vec<&str> = old
        .map(|o| o.ephemeral().iter().map(|c| &*c.name).collect())
        .unwrap_or_default();
    let listed = pod.spec.as_ref().map(|spec| {
        spec.image_pull_secrets
            .iter()
            .flatten()
            .filter_map(|r| r.name.as_deref())
            .collect::<Vec<&str>>()
    });
    let mut findings = Vec::new();
    for container in pod.ephemeral() {
        if existing.contains(&&*container.name) {
            continue;
        }
        let Some(text) = container.image.as_deref() else {
            continue;
        };
        let Ok(image) = image::parse(text) else {
            continue;
        };
        let Some(rule) = ctx.policy.rules().best_match(&image) else {
            continue;
        };
        let secrets: Vec<&str> = rule
            .secrets
            .iter()
            .map(String::as_str)
            .filter(|s| listed.as_ref().is_none_or(|listed| !listed.contains(s)))
            .collect();
        if !secrets.is_empty() {
            findings.push(DebugFinding {
                name: &container.name,
                image: text,
                rule,
                secrets,
                pod_secrets_known: listed.is_some(),
            });
        }
    }
    Ok(findings)
}

/// Decides for a Pod being created in `namespace`.
pub fn decide<'a>(pod: &'a Pod<'a>, namespace: &str, ctx: &Context<'a>) -> Decision<'a> {
    let mode = match scope(pod, namespace, ctx) {
        Ok(mode) => mode,
        Err(reason) => return Decision::Skip(reason),
    };
    let mut plan = Plan {
        mode,
        images: Vec::new(),
        secrets: Vec::new(),
        has_pull_secret_list: false,
        existing_pull_secrets: 0,
    };
    let Some(spec) = &pod.spec else {
        return Decision::Plan(plan);
    };
    let existing = spec.image_pull_secrets.as_deref().unwrap_or_default();
    plan.has_pull_secret_list = spec.image_pull_secrets.is_some();
    plan.existing_pull_secrets = existing.len();
    let already_listed = |name: &str| existing.iter().any(|r| r.name.as_deref() == Some(name));

    let containers = [
        (ImageSource::InitContainer, &spec.init_containers),
        (ImageSource::Container, &spec.containers),
    ];
    let images = containers
        .into_iter()
        .flat_map(|(source, list)| {
            list.iter().enumerate().map(move |(index, c)| {
                let policy = c.image_pull_policy.as_deref();
                (source, index, &*c.name, c.image.as_deref(), policy)
            })
        })
        .chain(spec.volumes.iter().enumerate().filter_map(|(index, v)| {
            let image = v.image.as_ref()?;
            Some((
                ImageSource::Volume,
                index,
                &*v.name,
                image.reference.as_deref(),
                image.pull_policy.as_deref(),
            ))
        }));
    plan.images
        .reserve(spec.init_containers.len() + spec.containers.len());
    for (source, index, name, image_text, pull_policy) in images {
        let outcome = match image_text {
            None | Some("") => ImageOutcome::NoImage,
            Some(text) => match image::parse(text) {
                Err(e) => ImageOutcome::Invalid(e),
                Ok(image) => match ctx.policy.rules().best_match(&image) {
                    Some(rule) => ImageOutcome::Matched { image, rule },
                    None => ImageOutcome::NoRule(image),
                },
            },
        };
        let image_text = image_text.unwrap_or("");
        let mut set_pull_policy_always = false;
        let mut credential_used = None;
        if let ImageOutcome::Matched { image, rule } = &outcome {
            if ctx.policy.knows_credentials() {
                let name = image.kubelet_name();
                credential_used = ctx.policy.serves(rule, |keyring| keyring.serves(&name));
            }
            set_pull_policy_always = rule.pull_policy_always && pull_policy != Some("Always");
            for secret in rule.secrets.iter().map(String::as_str) {
                if already_listed(secret) {
                    continue;
                }
                match plan.secrets.iter_mut().find(|s| s.name == secret) {
                    Some(entry) => {
                        if !entry.images.contains(&image_text) {
                            entry.images.push(image_text);
                        }
                    }
                    None => plan.secrets.push(SecretToAdd {
                        name: secret,
                        rule,
                        images: vec![image_text],
                        presence: ctx.facts.secret_presence(namespace, secret),
                    }),
                }
            }
        }
        plan.images.push(ImageFinding {
            source,
            index,
            name,
            image: image_text,
            pull_policy,
            outcome,
            set_pull_policy_always,
            credential_used,
        });
    }
    Decision::Plan(plan)
}

/// Whether the Pod is in scope, and in which mode.
fn scope(pod: &Pod<'_>, namespace: &str, ctx: &Context<'_>) -> Result<Mode, SkipReason> {
    if pod.metadata.annotations.mirror.is_some() {
        return Err(SkipReason::MirrorPod);
    }
    let pod_label = pod.metadata.labels.inject.as_deref();
    if pod_label == Some(INJECT_DISABLED) {
        return Err(SkipReason::PodOptedOut);
    }
    let label = ctx.facts.namespace_label(namespace);
    let mode = namespace_mode(ctx.policy.settings(), ctx.own_namespace, namespace, label)?;
    let audit =
        mode == Mode::Audit || pod_label == Some(INJECT_AUDIT) || ctx.endpoint == Endpoint::Audit;
    Ok(if audit { Mode::Audit } else { Mode::Enforce })
}

/// Whether a namespace is in scope, and in which mode (before Pod labels and the endpoint).
/// Secret sync uses the same answer to choose the namespaces that get copies.
pub fn namespace_mode(
    settings: &Settings,
    own_namespace: Option<&str>,
    namespace: &str,
    label: NamespaceLabel,
) -> Result<Mode, SkipReason> {
    if own_namespace == Some(namespace) {
        return Err(SkipReason::OwnNamespace);
    }
    if settings.exclude.iter().any(|n| n == namespace) {
        return Err(SkipReason::NamespaceExcluded);
    }
    let namespace_audit = match (settings.selection, label) {
        (_, NamespaceLabel::Disabled) => return Err(SkipReason::NamespaceDisabled),
        (_, NamespaceLabel::Audit) => true,
        (Selection::OptIn, NamespaceLabel::Unlabelled | NamespaceLabel::Other) => {
            return Err(SkipReason::NamespaceNotSelected);
        }
        _ => false,
    };
    Ok(if namespace_audit || settings.mode == Mode::Audit {
        Mode::Audit
    } else {
        Mode::Enforce
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::core::config::Config;
    use crate::core::facts::{NamespaceCache, NothingKnown};
    use crate::core::review::{Container, LocalObjectReference, PodSpec};
    use crate::core::rules::{RegistryPattern, RuleSource};
    use std::borrow::Cow;
    use std::collections::HashMap;

    /// The rules most core tests use.
    pub(crate) fn policy_with(settings: Settings) -> Policy {
        let rule = |index, pattern: &str, secrets: &[&str], always| Rule {
            pattern: RegistryPattern::parse(pattern).expect(pattern),
            secrets: secrets.iter().map(|s| s.to_string()).collect(),
            pull_policy_always: always,
            source: RuleSource::Config { index },
            scope: Default::default(),
        };
        Policy::from_config(&Config {
            settings,
            rules: vec![
                rule(0, "docker.io", &["dockerhub"], false),
                rule(1, "ghcr.io/acme", &["ghcr-acme"], true),
                rule(
                    2,
                    "*.dkr.ecr.*.amazonaws.com",
                    &["ecr", "ecr-backup"],
                    false,
                ),
            ],
        })
    }

    pub(crate) fn policy() -> Policy {
        policy_with(Settings::default())
    }

    pub(crate) fn pod(
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
                ..PodSpec::default()
            }),
            ..Pod::default()
        }
    }

    /// Namespace labels and Secrets by name, as a fresh cache would know them.
    pub(crate) struct Known {
        pub labels: HashMap<&'static str, NamespaceLabel>,
        pub secrets: Option<Vec<&'static str>>,
    }

    impl ClusterFacts for Known {
        fn namespace_label(&self, namespace: &str) -> NamespaceLabel {
            self.labels
                .get(namespace)
                .copied()
                .unwrap_or(NamespaceLabel::Unknown)
        }
        fn secret_presence(&self, _: &str, name: &str) -> SecretPresence {
            match &self.secrets {
                None => SecretPresence::Unknown,
                Some(names) if names.contains(&name) => SecretPresence::Seen,
                Some(_) => SecretPresence::NotSeen,
            }
        }
        fn namespace_cache(&self) -> NamespaceCache {
            NamespaceCache::Fresh
        }
    }

    pub(crate) fn labelled(namespace: &'static str, label: NamespaceLabel) -> Known {
        Known {
            labels: HashMap::from([(namespace, label)]),
            secrets: None,
        }
    }

    fn added<'a>(decision: &Decision<'a>) -> Vec<&'a str> {
        match decision {
            Decision::Plan(plan) => plan.secrets.iter().map(|s| s.name).collect(),
            Decision::Skip(reason) => panic!("skipped: {reason:?}"),
        }
    }

    #[test]
    fn adds_missing_secrets_in_image_order() {
        let policy = policy();
        let facts = labelled("team-a", NamespaceLabel::Enabled);
        let ctx = Context::new(&policy, &facts).own_namespace(Some("pullsecret-injector"));
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
            assert_eq!(added(&decide(pod, "team-a", &ctx)), *want, "{pod:?}");
        }
    }

    #[test]
    fn image_volumes_count_after_containers() {
        let policy = policy();
        let json = r#"{"spec":{
            "containers":[{"name":"app","image":"nginx"}],
            "volumes":[{"name":"cfg","configMap":{"name":"x"}},
                       {"name":"model","image":{"reference":"ghcr.io/acme/model:1","pullPolicy":"IfNotPresent"}},
                       {"name":"empty","image":{}}]}}"#;
        let pod: Pod<'_> = serde_json::from_str(json).expect("pod");
        let ctx = Context::new(&policy, &NothingKnown);
        let Decision::Plan(plan) = decide(&pod, "team-a", &ctx) else {
            panic!("skipped")
        };
        let images: Vec<(ImageSource, usize, &str)> = plan
            .images
            .iter()
            .map(|i| (i.source, i.index, i.name))
            .collect();
        assert_eq!(
            images,
            [
                (ImageSource::Container, 0, "app"),
                (ImageSource::Volume, 1, "model"),
                (ImageSource::Volume, 2, "empty"),
            ]
        );
        assert_eq!(plan.images[2].outcome, ImageOutcome::NoImage);
        assert!(plan.images[1].set_pull_policy_always);
        assert_eq!(
            plan.secrets.iter().map(|s| s.name).collect::<Vec<_>>(),
            ["dockerhub", "ghcr-acme"]
        );
    }

    #[test]
    fn scope_table() {
        use NamespaceLabel as L;
        let opt_in = policy();
        let all = policy_with(Settings {
            selection: Selection::All,
            ..Settings::default()
        });
        let audit_mode = policy_with(Settings {
            mode: Mode::Audit,
            ..Settings::default()
        });
        let p = pod(&[], &["nginx"], None);
        let mut opted_out = pod(&[], &["nginx"], None);
        opted_out.metadata.labels.inject = Some(Cow::Borrowed("disabled"));
        let mut pod_audit = pod(&[], &["nginx"], None);
        pod_audit.metadata.labels.inject = Some(Cow::Borrowed("audit"));
        let mut mirror = pod(&[], &["nginx"], None);
        mirror.metadata.annotations.mirror = Some(Cow::Borrowed("abc"));

        type Want = Result<Mode, SkipReason>;
        use Endpoint::{Audit as A, Mutate as M};
        use SkipReason as S;
        let cases: Vec<(&Policy, &Pod<'_>, Endpoint, &'static str, L, Want)> = vec![
            (&opt_in, &p, M, "team-a", L::Enabled, Ok(Mode::Enforce)),
            (&opt_in, &p, M, "team-a", L::Unknown, Ok(Mode::Enforce)),
            (
                &opt_in,
                &p,
                M,
                "team-a",
                L::Unlabelled,
                Err(S::NamespaceNotSelected),
            ),
            (
                &opt_in,
                &p,
                M,
                "team-a",
                L::Other,
                Err(S::NamespaceNotSelected),
            ),
            (&opt_in, &p, M, "team-a", L::Audit, Ok(Mode::Audit)),
            (
                &opt_in,
                &p,
                M,
                "team-a",
                L::Disabled,
                Err(S::NamespaceDisabled),
            ),
            (&opt_in, &p, A, "team-a", L::Enabled, Ok(Mode::Audit)),
            (
                &opt_in,
                &p,
                M,
                "kube-system",
                L::Enabled,
                Err(S::NamespaceExcluded),
            ),
            (
                &opt_in,
                &p,
                M,
                "pullsecret-injector",
                L::Enabled,
                Err(S::OwnNamespace),
            ),
            (
                &opt_in,
                &opted_out,
                M,
                "team-a",
                L::Enabled,
                Err(S::PodOptedOut),
            ),
            (&opt_in, &mirror, M, "team-a", L::Enabled, Err(S::MirrorPod)),
            (
                &opt_in,
                &pod_audit,
                M,
                "team-a",
                L::Enabled,
                Ok(Mode::Audit),
            ),
            (&all, &p, M, "team-a", L::Unlabelled, Ok(Mode::Enforce)),
            (&all, &p, M, "team-a", L::Other, Ok(Mode::Enforce)),
            (
                &all,
                &p,
                M,
                "team-a",
                L::Disabled,
                Err(S::NamespaceDisabled),
            ),
            (&all, &p, M, "team-a", L::Audit, Ok(Mode::Audit)),
            (
                &all,
                &p,
                M,
                "kube-public",
                L::Unlabelled,
                Err(S::NamespaceExcluded),
            ),
            (&audit_mode, &p, M, "team-a", L::Enabled, Ok(Mode::Audit)),
        ];
        for (policy, pod, endpoint, namespace, label, want) in cases {
            let facts = labelled(namespace, label);
            let ctx = Context::new(policy, &facts)
                .endpoint(endpoint)
                .own_namespace(Some("pullsecret-injector"));
            let got = match decide(pod, namespace, &ctx) {
                Decision::Plan(plan) => Ok(plan.mode),
                Decision::Skip(reason) => Err(reason),
            };
            assert_eq!(got, want, "{namespace} {label:?} {endpoint:?}");
        }
    }

    #[test]
    fn request_kind_and_operation_gate() {
        assert_eq!(gate("", "Secret", "CREATE"), Err(SkipReason::NotAPod));
        assert_eq!(gate("apps", "Pod", "CREATE"), Err(SkipReason::NotAPod));
        assert_eq!(gate("", "Pod", "UPDATE"), Err(SkipReason::NotCreate));
        assert_eq!(gate("", "Pod", "CREATE"), Ok(()));
    }

    #[test]
    fn debug_containers_needing_a_secret_the_pod_lacks_are_found() {
        let policy = policy();
        let facts = labelled("team-a", NamespaceLabel::Enabled);
        let ctx = Context::new(&policy, &facts);
        // 1.22+: a Pod with spec (its imagePullSecrets) and the new ephemeral container.
        let pod: Pod<'_> = serde_json::from_str(r#"{"metadata":{"name":"web"},"spec":{
            "containers":[{"name":"app","image":"nginx"}],"imagePullSecrets":[{"name":"dockerhub"}],
            "ephemeralContainers":[{"name":"old","image":"ghcr.io/acme/old"},
              {"name":"debugger","image":"ghcr.io/acme/debug:1"},{"name":"hub","image":"busybox"}]}}"#).expect("pod");
        let old: Pod<'_> = serde_json::from_str(r#"{"spec":{"containers":[],"ephemeralContainers":[{"name":"old","image":"ghcr.io/acme/old"}]}}"#).expect("old");
        let found = decide_debug(&pod, Some(&old), "team-a", &ctx).expect("in scope");
        let got: Vec<(&str, Vec<&str>, bool)> = found
            .iter()
            .map(|f| (f.name, f.secrets.clone(), f.pod_secrets_known))
            .collect();
        assert_eq!(got, [("debugger", vec!["ghcr-acme"], true)]);
        // 1.16-1.21: an EphemeralContainers object, no spec: the Pod's secrets are unknown.
        let legacy: Pod<'_> = serde_json::from_str(
            r#"{"kind":"EphemeralContainers","metadata":{"name":"web"},
            "ephemeralContainers":[{"name":"hub","image":"busybox"}]}"#,
        )
        .expect("legacy");
        let found = decide_debug(&legacy, None, "team-a", &ctx).expect("in scope");
        assert_eq!(found.len(), 1);
        assert_eq!(
            (found[0].secrets.clone(), found[0].pod_secrets_known),
            (vec!["dockerhub"], false)
        );
        // Out of scope: nothing.
        let off = labelled("team-a", NamespaceLabel::Disabled);
        assert!(decide_debug(&pod, Some(&old), "team-a", &Context::new(&policy, &off)).is_err());
        assert!(is_debug("", "Pod", "UPDATE", "ephemeralcontainers"));
        assert!(is_debug(
            "",
            "EphemeralContainers",
            "UPDATE",
            "ephemeralcontainers"
        ));
        assert!(!is_debug("", "Pod", "UPDATE", ""));
        assert!(!is_debug("", "Pod", "CREATE", "ephemeralcontainers"));
    }

    #[test]
    fn secrets_not_seen_are_still_added_with_their_presence() {
        let policy = policy();
        let p = pod(&[], &["nginx", "ghcr.io/acme/api"], None);
        let fresh = Known {
            labels: HashMap::new(),
            secrets: Some(vec!["dockerhub"]),
        };
        let unknown = Known {
            labels: HashMap::new(),
            secrets: None,
        };
        for (facts, want) in [
            (&fresh, [SecretPresence::Seen, SecretPresence::NotSeen]),
            (&unknown, [SecretPresence::Unknown, SecretPresence::Unknown]),
        ] {
            let ctx = Context::new(&policy, facts);
            let Decision::Plan(plan) = decide(&p, "team-a", &ctx) else {
                panic!("skipped")
            };
            let got: Vec<(&str, SecretPresence)> =
                plan.secrets.iter().map(|s| (s.name, s.presence)).collect();
            assert_eq!(got, [("dockerhub", want[0]), ("ghcr-acme", want[1])]);
        }
    }

    #[test]
    fn pull_policy_always_only_when_not_already_always() {
        let policy = policy();
        let ctx = Context::new(&policy, &NothingKnown);
        let mut p = pod(
            &[],
            &["ghcr.io/acme/api", "ghcr.io/acme/web", "nginx"],
            None,
        );
        if let Some(spec) = p.spec.as_mut() {
            spec.containers[1].image_pull_policy = Some(Cow::Borrowed("Always"));
        }
        let Decision::Plan(plan) = decide(&p, "team-a", &ctx) else {
            panic!("skipped")
        };
        let flags: Vec<bool> = plan
            .images
            .iter()
            .map(|c| c.set_pull_policy_always)
            .collect();
        assert_eq!(flags, [true, false, false]);
    }
}

//! The decision: given a Pod and what is known about its namespace, which secrets it needs,
//! why, and in which mode. Pure and synchronous, so every branch is covered by table tests.
//!
//! Order of checks: request kind and operation ([`gate`]), mirror Pod, Pod opt-out label
//! (unless `podOptOut: false`), the namespace (excluded by name, the injector's own, selection
//! mode and its label), then one rule per image (initContainers, containers, then image
//! volumes: the order the kubelet pulls them in) among the rules whose scope serves the
//! namespace (with its labels from [`ClusterFacts::namespace_labels`]; see
//! [`crate::core::rules::RuleSet::best_match`]), then each of the rule's secrets that may go to
//! the namespace and the Pod does not already list. [`crate::core::verdict`] turns the result
//! into the answer.

use crate::core::config::{Mode, Selection, Settings};
use crate::core::expiry::Expiry;
use crate::core::facts::{ClusterFacts, Labels, NamespaceLabel, SecretPresence};
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
    /// The time, Unix seconds, against which credential expiries are judged; `None` (the
    /// default: core reads no clock) judges none. See [`Self::now`].
    pub now: Option<i64>,
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
            now: None,
        }
    }

    /// Judge credential expiries at `now` (Unix seconds): an expired or soon-expiring Secret
    /// is still added, with a warning.
    pub fn now(self, now: i64) -> Self {
        Self {
            now: Some(now),
            ..self
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
    /// The rule's Secrets whose credential this image's registry rejected at the controller's
    /// last probe (`credentialProbe`): still referenced, and warned about.
    pub credential_rejected: Vec<&'a str>,
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
    /// When its credential stops working, if it is a source whose expiry is known. It is
    /// added whatever the expiry: a rotated credential serves the Pod from the next pull on.
    pub expiry: Option<&'a Expiry>,
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
    /// [`Context::now`]: the time expiries are judged at.
    pub now: Option<i64>,
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
    let labels = namespace_labels(namespace, ctx);
    let labels = labels.as_deref();
    let rules = ctx.policy.rules();
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
        let Some(rule) = rules.best_match(&image, namespace, labels) else {
            continue;
        };
        let secrets: Vec<&str> = rules
            .secrets_for(rule, namespace, labels)
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
        now: ctx.now,
    };
    let Some(spec) = &pod.spec else {
        return Decision::Plan(plan);
    };
    let existing = spec.image_pull_secrets.as_deref().unwrap_or_default();
    plan.has_pull_secret_list = spec.image_pull_secrets.is_some();
    plan.existing_pull_secrets = existing.len();
    let already_listed = |name: &str| existing.iter().any(|r| r.name.as_deref() == Some(name));
    let labels = namespace_labels(namespace, ctx);
    let labels = labels.as_deref();
    let rules = ctx.policy.rules();

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
                Ok(image) => match rules.best_match(&image, namespace, labels) {
                    Some(rule) => ImageOutcome::Matched { image, rule },
                    None => ImageOutcome::NoRule(image),
                },
            },
        };
        let image_text = image_text.unwrap_or("");
        let mut set_pull_policy_always = false;
        let mut credential_used = None;
        let mut credential_rejected = Vec::new();
        if let ImageOutcome::Matched { image, rule } = &outcome {
            credential_rejected = ctx.policy.rejected_secrets(rule, &image.registry());
            if ctx.policy.knows_credentials() {
                let name = image.kubelet_name();
                credential_used = ctx.policy.serves(rule, |keyring| keyring.serves(&name));
            }
            set_pull_policy_always = rule.pull_policy_always && pull_policy != Some("Always");
            for secret in rules.secrets_for(rule, namespace, labels) {
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
                        expiry: ctx.policy.expiry(secret),
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
            credential_rejected,
        });
    }
    Decision::Plan(plan)
}

/// The namespace's labels, looked up only when a scope has a selector (`None`: unknown, and
/// then no selector matches).
fn namespace_labels(namespace: &str, ctx: &Context<'_>) -> Option<std::sync::Arc<Labels>> {
    if ctx.policy.rules().needs_labels() {
        ctx.facts.namespace_labels(namespace)
    } else {
        None
    }
}

/// Whether the Pod is in scope, and in which mode.
fn scope(pod: &Pod<'_>, namespace: &str, ctx: &Context<'_>) -> Result<Mode, SkipReason> {
    if pod.metadata.annotations.mirror.is_some() {
        return Err(SkipReason::MirrorPod);
    }
    // `podOptOut: false`: the Pod's label (which any Pod creator sets) is ignored; only the
    // namespace's opts out.
    let pod_label = if ctx.policy.settings().pod_opt_out {
        pod.metadata.labels.inject.as_deref()
    } else {
        None
    };
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

    /// Every namespace opted in; labels as listed (a namespace not listed: labels unknown).
    struct Tenants(HashMap<&'static str, Labels>);

    impl ClusterFacts for Tenants {
        fn namespace_label(&self, _: &str) -> NamespaceLabel {
            NamespaceLabel::Enabled
        }
        fn secret_presence(&self, _: &str, _: &str) -> SecretPresence {
            SecretPresence::Unknown
        }
        fn namespace_cache(&self) -> NamespaceCache {
            NamespaceCache::Fresh
        }
        fn namespace_labels(&self, namespace: &str) -> Option<std::sync::Arc<Labels>> {
            self.0.get(namespace).cloned().map(std::sync::Arc::new)
        }
    }

    fn tenants() -> Tenants {
        let labels = |pairs: &[(&str, &str)]| -> Labels {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        Tenants(HashMap::from([
            ("team-a", labels(&[("team", "a")])),
            ("team-a-dev", labels(&[("team", "a")])),
            ("team-b", labels(&[("team", "b")])),
            ("labelled-b", labels(&[("team", "b")])),
            ("team-c", labels(&[("team", "c"), ("tier", "gold")])),
            ("team-c2", labels(&[("tier", "silver")])),
            ("gold", labels(&[("tier", "gold")])),
            ("team-d", labels(&[])),
        ]))
    }

    /// Rules with every kind of scope, source Secrets with scopes, one discovered rule.
    fn tenancy_policy(settings: Settings) -> Policy {
        use crate::core::scope::Scope;
        let scope = |names: Option<&str>, selector: Option<&str>| {
            Scope::from_annotations(names, selector).expect("scope")
        };
        let rule = |index, pattern: &str, secrets: &[&str], scope: Scope| Rule {
            pattern: RegistryPattern::parse(pattern).expect(pattern),
            secrets: secrets.iter().map(|s| s.to_string()).collect(),
            pull_policy_always: false,
            source: RuleSource::Config { index },
            scope,
        };
        let config = Config {
            settings,
            rules: vec![
                rule(0, "ghcr.io/acme", &["acme-shared"], Scope::everywhere()),
                rule(
                    1,
                    "ghcr.io/acme/team-a",
                    &["team-a-pull"],
                    scope(Some("team-a,team-a-*"), None),
                ),
                rule(
                    2,
                    "ghcr.io/acme/team-b",
                    &["team-b-pull"],
                    scope(None, Some("team=b")),
                ),
                rule(
                    3,
                    "ghcr.io/acme/team-c",
                    &["team-c-pull"],
                    scope(Some("team-c*"), Some("tier in (gold)")),
                ),
                // Two secrets, each a source with its own scope.
                rule(
                    4,
                    "quay.io/acme",
                    &["quay-a", "quay-b"],
                    Scope::everywhere(),
                ),
                // The rule allows team-a and team-b, its source only team-b.
                rule(
                    5,
                    "registry.example.com",
                    &["scoped-src"],
                    scope(Some("team-a,team-b"), None),
                ),
                // A source that declares no scope.
                rule(
                    6,
                    "zot.example.com",
                    &["open-src"],
                    scope(Some("team-a"), None),
                ),
            ],
        };
        let disc_scope = scope(Some("team-d"), None);
        let discovered = Rule {
            pattern: RegistryPattern::parse("docker.io").expect("pattern"),
            secrets: vec!["disc".into()],
            pull_policy_always: false,
            source: RuleSource::Discovered {
                secret: "disc".into(),
            },
            scope: disc_scope.clone(),
        };
        let sources = crate::core::policy::Sources {
            rules: vec![discovered],
            keyrings: HashMap::new(),
            expiries: HashMap::new(),
            scopes: HashMap::from([
                ("quay-a".to_string(), scope(Some("team-a"), None)),
                ("quay-b".to_string(), scope(None, Some("team=b"))),
                ("scoped-src".to_string(), scope(Some("team-b"), None)),
                ("open-src".to_string(), Scope::everywhere()),
                ("disc".to_string(), disc_scope),
            ]),
            rejected: HashMap::new(),
        };
        Policy::merged(&config, &sources)
    }

    /// The secrets added for one image in one namespace.
    fn secrets_in(policy: &Policy, namespace: &'static str, image: &'static str) -> Vec<String> {
        let facts = tenants();
        let ctx = Context::new(policy, &facts);
        let p = pod(&[], &[image], None);
        added(&decide(&p, namespace, &ctx))
            .into_iter()
            .map(String::from)
            .collect()
    }

    #[test]
    fn rules_out_of_scope_do_not_match_and_the_next_in_scope_wins() {
        let policy = tenancy_policy(Settings::default());
        let team_a = "ghcr.io/acme/team-a/app:1";
        let team_b = "ghcr.io/acme/team-b/app:1";
        let team_c = "ghcr.io/acme/team-c/app:1";
        // (namespace, image, secrets added)
        let cases: &[(&'static str, &'static str, &[&str])] = &[
            // Names and globs.
            ("team-a", team_a, &["team-a-pull"]),
            ("team-a-dev", team_a, &["team-a-pull"]),
            // team-b names team-a's image: not team-a's secret, the shared one in scope.
            ("team-b", team_a, &["acme-shared"]),
            ("unknown", team_a, &["acme-shared"]),
            // A selector: by labels, whatever the name.
            ("team-b", team_b, &["team-b-pull"]),
            ("labelled-b", team_b, &["team-b-pull"]),
            ("team-a", team_b, &["acme-shared"]),
            // Labels unknown: a selector never matches.
            ("unknown", team_b, &["acme-shared"]),
            // Both: the name and the labels must match.
            ("team-c", team_c, &["team-c-pull"]),
            ("team-c2", team_c, &["acme-shared"]),
            ("gold", team_c, &["acme-shared"]),
            // Other images of the shared prefix are unaffected.
            ("team-b", "ghcr.io/acme/other/app", &["acme-shared"]),
            // A rule with two secrets: each only where its source's scope allows it.
            ("team-a", "quay.io/acme/app", &["quay-a"]),
            ("team-b", "quay.io/acme/app", &["quay-b"]),
            // Neither may go there: the rule is out of scope, and no other rule matches.
            ("team-c", "quay.io/acme/app", &[]),
            ("unknown", "quay.io/acme/app", &[]),
            // Rule scope AND source scope: the rule allows team-a and team-b, the source
            // only team-b.
            ("team-b", "registry.example.com/app", &["scoped-src"]),
            ("team-a", "registry.example.com/app", &[]),
            ("team-c", "registry.example.com/app", &[]),
            // A source without a scope limits nothing (requireScope off).
            ("team-a", "zot.example.com/app", &["open-src"]),
            ("team-b", "zot.example.com/app", &[]),
            // A discovered rule carries its source's scope.
            ("team-d", "nginx", &["disc"]),
            ("team-a", "nginx", &[]),
        ];
        for (namespace, image, want) in cases {
            assert_eq!(
                secrets_in(&policy, namespace, image),
                *want,
                "{image} in {namespace}"
            );
        }
        // The image of a rule out of scope is reported as matching no rule.
        let facts = tenants();
        let ctx = Context::new(&policy, &facts);
        let p = pod(&[], &["quay.io/acme/app"], None);
        let Decision::Plan(plan) = decide(&p, "team-c", &ctx) else {
            panic!("skipped")
        };
        assert!(matches!(plan.images[0].outcome, ImageOutcome::NoRule(_)));
        // kubectl debug asks the same question.
        let debug: Pod<'_> = serde_json::from_str(
            r#"{"spec":{"containers":[],"ephemeralContainers":[
                {"name":"a","image":"ghcr.io/acme/team-a/debug"},
                {"name":"q","image":"quay.io/acme/debug"}]}}"#,
        )
        .expect("pod");
        let found = decide_debug(&debug, None, "team-b", &ctx).expect("in scope");
        let got: Vec<(&str, Vec<&str>)> =
            found.iter().map(|f| (f.name, f.secrets.clone())).collect();
        assert_eq!(got, [("a", vec!["acme-shared"]), ("q", vec!["quay-b"])]);
    }

    #[test]
    fn require_scope_makes_undeclared_rules_and_sources_serve_nowhere() {
        let policy = tenancy_policy(Settings {
            require_scope: true,
            ..Settings::default()
        });
        let cases: &[(&'static str, &'static str, &[&str])] = &[
            // Declared rules keep serving.
            ("team-a", "ghcr.io/acme/team-a/app", &["team-a-pull"]),
            ("team-b", "ghcr.io/acme/team-b/app", &["team-b-pull"]),
            ("team-b", "registry.example.com/app", &["scoped-src"]),
            ("team-d", "nginx", &["disc"]),
            // The shared rule declares none: nowhere, so team-b gets nothing for team-a's image.
            ("team-b", "ghcr.io/acme/team-a/app", &[]),
            ("team-a", "ghcr.io/acme/other", &[]),
            // An undeclared rule whose sources are scoped: still nowhere.
            ("team-a", "quay.io/acme/app", &[]),
            // A declared rule naming a source that declares none: nowhere.
            ("team-a", "zot.example.com/app", &[]),
        ];
        for (namespace, image, want) in cases {
            assert_eq!(
                secrets_in(&policy, namespace, image),
                *want,
                "{image} in {namespace}"
            );
        }
        assert_eq!(
            policy.unscoped(),
            [
                "config rules[0] (ghcr.io/acme)",
                "config rules[4] (quay.io/acme)",
                "source Secret open-src",
            ]
        );
        assert!(tenancy_policy(Settings::default()).unscoped().is_empty());
    }

    #[test]
    fn pod_opt_out_false_ignores_the_pod_label() {
        use NamespaceLabel as L;
        let honoured = policy();
        let ignored = policy_with(Settings {
            pod_opt_out: false,
            ..Settings::default()
        });
        let labelled_pod = |value: &'static str| {
            let mut p = pod(&[], &["nginx"], None);
            p.metadata.labels.inject = Some(Cow::Borrowed(value));
            p
        };
        let (disabled, audit, plain) = (
            labelled_pod("disabled"),
            labelled_pod("audit"),
            pod(&[], &["nginx"], None),
        );
        type Want = Result<Mode, SkipReason>;
        // (policy, pod, namespace label, outcome)
        let cases: Vec<(&Policy, &Pod<'_>, L, Want)> = vec![
            (
                &honoured,
                &disabled,
                L::Enabled,
                Err(SkipReason::PodOptedOut),
            ),
            (&honoured, &audit, L::Enabled, Ok(Mode::Audit)),
            (&ignored, &disabled, L::Enabled, Ok(Mode::Enforce)),
            (&ignored, &audit, L::Enabled, Ok(Mode::Enforce)),
            (&ignored, &plain, L::Enabled, Ok(Mode::Enforce)),
            // The namespace's label still opts out, or into audit.
            (
                &ignored,
                &disabled,
                L::Disabled,
                Err(SkipReason::NamespaceDisabled),
            ),
            (&ignored, &plain, L::Audit, Ok(Mode::Audit)),
            (&ignored, &disabled, L::Audit, Ok(Mode::Audit)),
        ];
        for (i, (policy, pod, label, want)) in cases.into_iter().enumerate() {
            let facts = labelled("team-a", label);
            let ctx = Context::new(policy, &facts);
            let got = match decide(pod, "team-a", &ctx) {
                Decision::Plan(plan) => {
                    if plan.mode == Mode::Enforce {
                        assert_eq!(plan.secrets.len(), 1, "case {i}");
                    }
                    Ok(plan.mode)
                }
                Decision::Skip(reason) => Err(reason),
            };
            assert_eq!(got, want, "case {i}");
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

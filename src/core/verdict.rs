//! The complete answer to one review, decided once: outcome, patch, typed warnings, the audit
//! annotation and what was (or would be) injected. The webhook handler encodes it, `explain`
//! and `audit` print it, metrics count it; none of them decides anything of its own.

use std::fmt;

use json_patch::Patch;

use crate::core::config::Mode;
use crate::core::decision::{
    self, Context, Decision, ImageFinding, ImageOutcome, ImageSource, Plan, SecretToAdd, SkipReason,
};
use crate::core::expiry::{Expiry, Status};
use crate::core::facts::SecretPresence;
use crate::core::image::ImageError;
use crate::core::names::{ANNOTATION_INJECTED, ANNOTATION_WOULD_INJECT};
use crate::core::patch;
use crate::core::review::{AdmissionRequest, Pod};

/// How a review ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Out of scope (not a Pod CREATE, opted out, excluded namespace, ...).
    Skipped(SkipReason),
    /// In scope, nothing to change.
    Unchanged,
    /// A patch is returned.
    Patched,
    /// Audit: findings reported as warnings, no patch.
    Audited,
}

impl Outcome {
    /// Stable name, as in `explain -o json` and the `outcome` metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Skipped(_) => "skipped",
            Outcome::Unchanged => "unchanged",
            Outcome::Patched => "patched",
            Outcome::Audited => "audited",
        }
    }
}

/// A warning for the API client (kubectl prints them) and for `explain`/`audit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Warning<'a> {
    /// The image reference cannot be parsed: no secret for it.
    InvalidImage {
        source: ImageSource,
        name: &'a str,
        image: &'a str,
        error: ImageError,
    },
    /// Audit: this secret would be added.
    WouldAddSecret {
        secret: &'a str,
        rule: &'a str,
        images: Vec<&'a str>,
    },
    /// Audit: this pull policy would be set to Always.
    WouldSetPullPolicy { source: ImageSource, name: &'a str },
    /// Referenced, but not in the namespace as far as a fresh cache knows.
    SecretNotSeen { secret: &'a str, rule: &'a str },
    /// Referenced, but its credential has expired (`expired`) or expires within the hour
    /// ([`crate::core::expiry::SOON_SECONDS`]). Still added: never fewer secrets.
    CredentialExpiring {
        secret: &'a str,
        rule: &'a str,
        expiry: &'a Expiry,
        expired: bool,
    },
    /// `kubectl debug`: the debug image needs Secrets the Pod does not list (or may not).
    DebugImageNeedsSecret {
        name: &'a str,
        image: &'a str,
        rule: &'a str,
        secrets: Vec<&'a str>,
        pod_secrets_known: bool,
    },
    /// The kubelet would not use the rule's Secrets for this image: no docker config key of
    /// theirs matches it the way the kubelet matches keys (a wrong `--docker-server`).
    CredentialNotUsed {
        source: ImageSource,
        name: &'a str,
        image: &'a str,
        rule: &'a str,
        secrets: Vec<&'a str>,
    },
    /// `credentialProbe`: the image's registry rejected the credential of these Secrets at the
    /// controller's last probe. Still referenced (never fewer secrets): it may be renewed.
    CredentialRejected {
        source: ImageSource,
        name: &'a str,
        image: &'a str,
        secrets: Vec<&'a str>,
    },
}

impl Warning<'_> {
    /// Findings of audit mode (what enforcing would do), as opposed to problems.
    pub fn is_audit_finding(&self) -> bool {
        matches!(
            self,
            Warning::WouldAddSecret { .. } | Warning::WouldSetPullPolicy { .. }
        )
    }
}

impl fmt::Display for Warning<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Warning::InvalidImage {
                source,
                name,
                image,
                error,
            } => write!(
                f,
                "pullsecret-injector: {} {name} image {image:?} not matched: {error}",
                source.noun()
            ),
            Warning::WouldAddSecret {
                secret,
                rule,
                images,
            } => write!(
                f,
                "pullsecret-injector (audit): would add imagePullSecret {secret} for {} (rule {rule})",
                images.join(", ")
            ),
            Warning::WouldSetPullPolicy { source, name } => write!(
                f,
                "pullsecret-injector (audit): would set imagePullPolicy Always on {} {name}",
                source.noun()
            ),
            Warning::CredentialNotUsed {
                source,
                name,
                image,
                rule,
                secrets,
            } => write!(
                f,
                "pullsecret-injector: the kubelet would not use Secret {} (rule {rule}) for {} {name} image {image:?}: \
                 none of its docker config keys matches this registry (check the --docker-server it was created with)",
                secrets.join(", "),
                source.noun()
            ),
            Warning::DebugImageNeedsSecret {
                name,
                image,
                rule,
                secrets,
                pod_secrets_known: true,
            } => write!(
                f,
                "pullsecret-injector: debug container {name} image {image:?} needs imagePullSecret {} (rule {rule}), \
                 which this Pod does not list, and a Pod's imagePullSecrets cannot change: the pull will fail. \
                 Use kubectl debug --copy-to=NEW-POD (the copy is a new Pod and gets the secret) or a public image",
                secrets.join(", ")
            ),
            Warning::DebugImageNeedsSecret {
                name,
                image,
                rule,
                secrets,
                pod_secrets_known: false,
            } => write!(
                f,
                "pullsecret-injector: debug container {name} image {image:?} needs imagePullSecret {} (rule {rule}); \
                 it is pulled with the Pod's imagePullSecrets, which cannot change: if the Pod does not list it, \
                 use kubectl debug --copy-to=NEW-POD (the copy is a new Pod and gets the secret)",
                secrets.join(", ")
            ),
            Warning::CredentialRejected {
                source,
                name,
                image,
                secrets,
            } => write!(
                f,
                "pullsecret-injector: the registry of {} {name} image {image:?} rejected the credential in Secret {} \
                 at the last probe (401/403): the pull will fail until the Secret is renewed \
                 (its pullsecret-injector/probe annotation says since when)",
                source.noun(),
                secrets.join(", ")
            ),
            Warning::CredentialExpiring {
                secret,
                rule,
                expiry,
                expired: true,
            } => write!(
                f,
                "pullsecret-injector: Secret {secret} (rule {rule}) expired at {} ({}); referenced anyway: \
                 pulls fail until its credential is renewed, and the kubelet uses the renewed one at the next pull attempt",
                expiry.rfc3339(),
                expiry.origin
            ),
            Warning::CredentialExpiring {
                secret,
                rule,
                expiry,
                expired: false,
            } => write!(
                f,
                "pullsecret-injector: Secret {secret} (rule {rule}) expires at {} ({}), {}; \
                 referenced anyway: renew it before then or pulls will fail",
                expiry.rfc3339(),
                expiry.origin,
                if expiry.warn_seconds() < crate::core::expiry::SOON_SECONDS {
                    "two thirds into its lifetime and not renewed"
                } else {
                    "within the hour"
                }
            ),
            Warning::SecretNotSeen { secret, rule } => write!(
                f,
                "pullsecret-injector: Secret {secret} (rule {rule}) is not in this namespace yet; \
                 referenced anyway: the kubelet uses it as soon as it exists"
            ),
        }
    }
}

/// An `auditAnnotations` entry (the API server prefixes the key with the webhook name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Annotation {
    pub key: String,
    pub value: String,
}

/// The answer to one review.
#[derive(Debug, Clone)]
pub struct Verdict<'a> {
    pub outcome: Outcome,
    /// `None` when skipped.
    pub mode: Option<Mode>,
    pub images: Vec<ImageFinding<'a>>,
    /// Added to the Pod (enforce) or that would be (audit), in order.
    pub secrets: Vec<SecretToAdd<'a>>,
    pub patch: Option<Patch>,
    pub warnings: Vec<Warning<'a>>,
    pub annotation: Option<Annotation>,
}

impl Verdict<'_> {
    fn skipped(reason: SkipReason) -> Self {
        Self {
            outcome: Outcome::Skipped(reason),
            mode: None,
            images: Vec::new(),
            secrets: Vec::new(),
            patch: None,
            warnings: Vec::new(),
            annotation: None,
        }
    }
}

/// The verdict for an admission request.
pub fn for_request<'a>(request: &'a AdmissionRequest<'a>, ctx: &Context<'a>) -> Verdict<'a> {
    let kind = &request.kind;
    if decision::is_debug(
        &kind.group,
        &kind.kind,
        &request.operation,
        &request.sub_resource,
    ) {
        return match &request.object {
            Some(pod) => for_debug(
                pod,
                request.old_object.as_ref(),
                request_namespace(request),
                ctx,
            ),
            None => Verdict::skipped(SkipReason::NoPodObject),
        };
    }
    if let Err(reason) = decision::gate(&request.kind.group, &request.kind.kind, &request.operation)
    {
        return Verdict::skipped(reason);
    }
    match &request.object {
        Some(pod) => for_pod(pod, request_namespace(request), ctx),
        None => Verdict::skipped(SkipReason::NoPodObject),
    }
}

/// The request's namespace, or the Pod's when the request leaves it empty.
pub fn request_namespace<'a>(request: &'a AdmissionRequest<'a>) -> &'a str {
    match (
        &*request.namespace,
        request
            .object
            .as_ref()
            .and_then(|p| p.metadata.namespace.as_deref()),
    ) {
        ("", Some(namespace)) => namespace,
        (namespace, _) => namespace,
    }
}

/// The verdict for a Pod being created in `namespace`.
pub fn for_pod<'a>(pod: &'a Pod<'a>, namespace: &str, ctx: &Context<'a>) -> Verdict<'a> {
    match decision::decide(pod, namespace, ctx) {
        Decision::Skip(reason) => Verdict::skipped(reason),
        Decision::Plan(plan) => from_plan(plan),
    }
}

/// `kubectl debug`: never a patch (the Pod's imagePullSecrets are immutable), only warnings
/// for debug images that need a Secret the Pod lacks.
fn for_debug<'a>(
    pod: &'a Pod<'a>,
    old: Option<&'a Pod<'a>>,
    namespace: &str,
    ctx: &Context<'a>,
) -> Verdict<'a> {
    match decision::decide_debug(pod, old, namespace, ctx) {
        Err(reason) => Verdict::skipped(reason),
        Ok(findings) => Verdict {
            outcome: Outcome::Unchanged,
            mode: None,
            images: Vec::new(),
            secrets: Vec::new(),
            patch: None,
            warnings: findings
                .into_iter()
                .map(|f| Warning::DebugImageNeedsSecret {
                    name: f.name,
                    image: f.image,
                    rule: f.rule.pattern.as_str(),
                    secrets: f.secrets,
                    pod_secrets_known: f.pod_secrets_known,
                })
                .collect(),
            annotation: None,
        },
    }
}

fn from_plan(plan: Plan<'_>) -> Verdict<'_> {
    let enforce = plan.mode == Mode::Enforce;
    let mut warnings = Vec::new();
    for image in &plan.images {
        match &image.outcome {
            ImageOutcome::Invalid(error) => warnings.push(Warning::InvalidImage {
                source: image.source,
                name: image.name,
                image: image.image,
                error: error.clone(),
            }),
            ImageOutcome::Matched { rule, .. } if image.credential_used == Some(false) => {
                warnings.push(Warning::CredentialNotUsed {
                    source: image.source,
                    name: image.name,
                    image: image.image,
                    rule: rule.pattern.as_str(),
                    secrets: rule.secrets.iter().map(String::as_str).collect(),
                });
            }
            _ => {}
        }
        if !image.credential_rejected.is_empty() {
            warnings.push(Warning::CredentialRejected {
                source: image.source,
                name: image.name,
                image: image.image,
                secrets: image.credential_rejected.clone(),
            });
        }
    }
    if !enforce {
        for secret in &plan.secrets {
            warnings.push(Warning::WouldAddSecret {
                secret: secret.name,
                rule: secret.rule.pattern.as_str(),
                images: secret.images.clone(),
            });
        }
        for image in plan.images.iter().filter(|i| i.set_pull_policy_always) {
            warnings.push(Warning::WouldSetPullPolicy {
                source: image.source,
                name: image.name,
            });
        }
    }
    for secret in &plan.secrets {
        if secret.presence == SecretPresence::NotSeen {
            warnings.push(Warning::SecretNotSeen {
                secret: secret.name,
                rule: secret.rule.pattern.as_str(),
            });
        }
        if let (Some(expiry), Some(now)) = (secret.expiry, plan.now) {
            let expired = match expiry.status(now) {
                Status::Valid => None,
                Status::ExpiresSoon => Some(false),
                Status::Expired => Some(true),
            };
            if let Some(expired) = expired {
                warnings.push(Warning::CredentialExpiring {
                    secret: secret.name,
                    rule: secret.rule.pattern.as_str(),
                    expiry,
                    expired,
                });
            }
        }
    }

    let changes = plan.changes_pod();
    let patch = if enforce { patch::build(&plan) } else { None };
    let annotation = (changes && !plan.secrets.is_empty()).then(|| Annotation {
        key: annotation_key(&plan),
        value: plan
            .secrets
            .iter()
            .map(|s| s.name)
            .collect::<Vec<_>>()
            .join(","),
    });
    let outcome = match (changes, enforce) {
        (false, _) => Outcome::Unchanged,
        (true, true) => Outcome::Patched,
        (true, false) => Outcome::Audited,
    };
    Verdict {
        outcome,
        mode: Some(plan.mode),
        images: plan.images,
        secrets: plan.secrets,
        patch,
        warnings,
        annotation,
    }
}

/// Audit annotation key for this round. The API server refuses to overwrite an annotation
/// set in an earlier round of the same request (reinvocation), so each round's key must
/// differ when its value can: enforce mode counts the pull secrets the Pod already lists
/// (round 1 added some), audit mode the images it inspected (a later webhook added one).
fn annotation_key(plan: &Plan<'_>) -> String {
    match plan.mode {
        Mode::Enforce => match plan.existing_pull_secrets {
            0 => ANNOTATION_INJECTED.to_string(),
            n => format!("{ANNOTATION_INJECTED}-after-{n}"),
        },
        Mode::Audit => format!("{ANNOTATION_WOULD_INJECT}-for-{}-images", plan.images.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::config::Settings;
    use crate::core::decision::Endpoint;
    use crate::core::decision::tests::{Known, labelled, pod, policy, policy_with};
    use crate::core::facts::NamespaceLabel;
    use crate::core::policy::Policy;
    use std::collections::HashMap;

    /// One row: the verdict's outcome, mode, secrets, patch presence, annotation and warnings.
    struct Row {
        outcome: &'static str,
        mode: Option<Mode>,
        secrets: Vec<&'static str>,
        patched: bool,
        annotation: Option<(&'static str, &'static str)>,
        warnings: usize,
    }

    fn check(i: usize, got: &Verdict<'_>, want: &Row) {
        assert_eq!(got.outcome.as_str(), want.outcome, "case {i}");
        assert_eq!(got.mode, want.mode, "case {i}");
        let secrets: Vec<&str> = got.secrets.iter().map(|s| s.name).collect();
        assert_eq!(secrets, want.secrets, "case {i}");
        assert_eq!(got.patch.is_some(), want.patched, "case {i}");
        let annotation = got
            .annotation
            .as_ref()
            .map(|a| (a.key.as_str(), a.value.as_str()));
        assert_eq!(annotation, want.annotation, "case {i}");
        assert_eq!(
            got.warnings.len(),
            want.warnings,
            "case {i}: {:?}",
            got.warnings
        );
    }

    #[test]
    fn every_mode_endpoint_and_round() {
        let enforce = policy();
        let audit = policy_with(Settings {
            mode: Mode::Audit,
            ..Settings::default()
        });
        let first = pod(&["ghcr.io/acme/init"], &["nginx"], None);
        // Round 2 of a reinvocation: round 1 added both; a later webhook added a sidecar.
        let second_enforce = pod(
            &["ghcr.io/acme/init"],
            &["nginx", "1.dkr.ecr.us-east-1.amazonaws.com/sidecar"],
            Some(&["ghcr-acme", "dockerhub"]),
        );
        let second_audit = pod(
            &["ghcr.io/acme/init"],
            &["nginx", "1.dkr.ecr.us-east-1.amazonaws.com/sidecar"],
            None,
        );
        let done = pod(&[], &["nginx"], Some(&["dockerhub"]));
        let public = pod(&[], &["quay.io/a/b"], None);
        let facts = labelled("team-a", NamespaceLabel::Enabled);
        let audit_ns = labelled("team-a", NamespaceLabel::Audit);
        let off = labelled("team-a", NamespaceLabel::Unlabelled);
        use Endpoint::{Audit as A, Mutate as M};
        #[rustfmt::skip]
        let cases: Vec<(&Policy, &Known, Endpoint, &Pod<'_>, Row)> = vec![
            (&enforce, &facts, M, &first, Row { outcome: "patched", mode: Some(Mode::Enforce),
                secrets: vec!["ghcr-acme", "dockerhub"], patched: true,
                annotation: Some(("injected-secrets", "ghcr-acme,dockerhub")), warnings: 0 }),
            (&enforce, &facts, M, &second_enforce, Row { outcome: "patched", mode: Some(Mode::Enforce),
                secrets: vec!["ecr", "ecr-backup"], patched: true,
                annotation: Some(("injected-secrets-after-2", "ecr,ecr-backup")), warnings: 0 }),
            (&enforce, &facts, M, &done, Row { outcome: "unchanged", mode: Some(Mode::Enforce),
                secrets: vec![], patched: false, annotation: None, warnings: 0 }),
            (&enforce, &facts, M, &public, Row { outcome: "unchanged", mode: Some(Mode::Enforce),
                secrets: vec![], patched: false, annotation: None, warnings: 0 }),
            // /audit, an =audit namespace and mode: audit all report without a patch: two
            // secrets and the init container's pull policy.
            (&enforce, &facts, A, &first, Row { outcome: "audited", mode: Some(Mode::Audit),
                secrets: vec!["ghcr-acme", "dockerhub"], patched: false,
                annotation: Some(("would-inject-secrets-for-2-images", "ghcr-acme,dockerhub")), warnings: 3 }),
            (&enforce, &audit_ns, M, &first, Row { outcome: "audited", mode: Some(Mode::Audit),
                secrets: vec!["ghcr-acme", "dockerhub"], patched: false,
                annotation: Some(("would-inject-secrets-for-2-images", "ghcr-acme,dockerhub")), warnings: 3 }),
            (&audit, &facts, M, &first, Row { outcome: "audited", mode: Some(Mode::Audit),
                secrets: vec!["ghcr-acme", "dockerhub"], patched: false,
                annotation: Some(("would-inject-secrets-for-2-images", "ghcr-acme,dockerhub")), warnings: 3 }),
            // Audit round 2 sees one more image, so its key differs from round 1's.
            (&audit, &facts, M, &second_audit, Row { outcome: "audited", mode: Some(Mode::Audit),
                secrets: vec!["ghcr-acme", "dockerhub", "ecr", "ecr-backup"], patched: false,
                annotation: Some(("would-inject-secrets-for-3-images", "ghcr-acme,dockerhub,ecr,ecr-backup")),
                warnings: 5 }),
            (&enforce, &off, M, &first, Row { outcome: "skipped", mode: None,
                secrets: vec![], patched: false, annotation: None, warnings: 0 }),
        ];
        for (i, (policy, facts, endpoint, pod, want)) in cases.iter().enumerate() {
            let ctx = Context::new(policy, *facts).endpoint(*endpoint);
            check(i, &for_pod(pod, "team-a", &ctx), want);
        }
    }

    #[test]
    fn images_the_kubelet_would_not_pull_with_the_rule_secret_are_warned_about() {
        use crate::core::config::Config;
        use crate::core::keyring::Keyring;
        use crate::core::policy::Sources;
        use crate::core::rules::{RegistryPattern, Rule, RuleSource};
        let rule = |pattern: &str, secret: &str| Rule {
            pattern: RegistryPattern::parse(pattern).expect(pattern),
            secrets: vec![secret.into()],
            pull_policy_always: false,
            source: RuleSource::Config { index: 0 },
            scope: Default::default(),
        };
        let config = Config {
            rules: vec![
                rule("registry.example.com:5000", "wrong-port"),
                rule("ghcr.io/acme", "scoped"),
                rule("quay.io", "unknown"),
            ],
            ..Config::default()
        };
        let sources = Sources {
            rules: Vec::new(),
            keyrings: [
                (
                    "wrong-port".to_string(),
                    Keyring::new(["https://registry.example.com"]),
                ),
                ("scoped".to_string(), Keyring::new(["ghcr.io/acme/api"])),
            ]
            .into(),
            scopes: Default::default(),
            rejected: Default::default(),
            expiries: Default::default(),
        };
        let policy = Policy::merged(&config, &sources);
        let p = pod(
            &[],
            &[
                "registry.example.com:5000/app",
                "ghcr.io/acme/api:1",
                "ghcr.io/acme/web:1",
                "quay.io/x/y",
            ],
            None,
        );
        let verdict = for_pod(
            &p,
            "team-a",
            &Context::new(&policy, &crate::core::facts::NothingKnown),
        );
        let used: Vec<Option<bool>> = verdict.images.iter().map(|i| i.credential_used).collect();
        assert_eq!(used, [Some(false), Some(true), Some(false), None]);
        let text: Vec<String> = verdict.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "pullsecret-injector: the kubelet would not use Secret wrong-port (rule registry.example.com:5000) for container c0 image \"registry.example.com:5000/app\": none of its docker config keys matches this registry (check the --docker-server it was created with)",
                "pullsecret-injector: the kubelet would not use Secret scoped (rule ghcr.io/acme) for container c2 image \"ghcr.io/acme/web:1\": none of its docker config keys matches this registry (check the --docker-server it was created with)",
            ]
        );
        // Still injected: a reference costs nothing, and the warning says what to fix.
        assert_eq!(verdict.outcome, Outcome::Patched);
        // The rule as a whole: the scoped key covers only part of ghcr.io/acme, which is
        // partial coverage, not a mismatch.
        use crate::core::coverage::{Coverage, KeyOf};
        let covered: Vec<Option<Coverage>> = policy
            .rules()
            .rules()
            .iter()
            .map(|r| policy.coverage(r))
            .collect();
        let partial = Coverage::Partial {
            served_by: vec![KeyOf {
                secret: "scoped".into(),
                key: "ghcr.io/acme/api".into(),
            }],
        };
        assert_eq!(covered, [Some(Coverage::None), Some(partial), None]);
    }

    #[test]
    fn a_credential_the_registry_rejected_is_still_referenced_and_warned_about() {
        use crate::core::config::Config;
        use crate::core::policy::Sources;
        use crate::core::rules::{RegistryPattern, Rule, RuleSource};
        let rule = |pattern: &str, secret: &str| Rule {
            pattern: RegistryPattern::parse(pattern).expect(pattern),
            secrets: vec![secret.into()],
            pull_policy_always: false,
            source: RuleSource::Config { index: 0 },
            scope: Default::default(),
        };
        let config = Config {
            rules: vec![
                rule("registry.example.com:5000", "revoked"),
                rule("docker.io", "hub"),
                rule("ghcr.io", "fine"),
            ],
            ..Config::default()
        };
        let sources = Sources {
            // The probe annotation of `revoked` names its registry; `hub`'s names Docker Hub
            // by its docker config key; `fine`'s names another registry than the image's.
            rejected: [
                (
                    "revoked".to_string(),
                    vec!["registry.example.com:5000".to_string()],
                ),
                ("hub".to_string(), vec!["index.docker.io".to_string()]),
                ("fine".to_string(), vec!["quay.io".to_string()]),
            ]
            .into(),
            ..Sources::default()
        };
        let policy = Policy::merged(&config, &sources);
        let p = pod(
            &[],
            &["registry.example.com:5000/app", "nginx", "ghcr.io/acme/x"],
            None,
        );
        let verdict = for_pod(
            &p,
            "team-a",
            &Context::new(&policy, &crate::core::facts::NothingKnown),
        );
        let text: Vec<String> = verdict.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "pullsecret-injector: the registry of container c0 image \"registry.example.com:5000/app\" rejected the credential in Secret revoked at the last probe (401/403): the pull will fail until the Secret is renewed (its pullsecret-injector/probe annotation says since when)",
                "pullsecret-injector: the registry of container c1 image \"nginx\" rejected the credential in Secret hub at the last probe (401/403): the pull will fail until the Secret is renewed (its pullsecret-injector/probe annotation says since when)",
            ]
        );
        // Never fewer secrets: all three are still added.
        let added: Vec<&str> = verdict.secrets.iter().map(|s| s.name).collect();
        assert_eq!(added, ["revoked", "hub", "fine"]);
        assert_eq!(verdict.outcome, Outcome::Patched);
    }

    #[test]
    fn warnings_are_typed_and_render_for_people() {
        let policy = policy();
        let facts = Known {
            labels: HashMap::from([("team-a", NamespaceLabel::Enabled)]),
            secrets: Some(vec!["dockerhub"]),
        };
        let p = pod(&[], &["NGINX", "nginx", "ghcr.io/acme/api"], None);
        let ctx = Context::new(&policy, &facts).endpoint(Endpoint::Audit);
        let verdict = for_pod(&p, "team-a", &ctx);
        let text: Vec<String> = verdict.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "pullsecret-injector: container c0 image \"NGINX\" not matched: invalid reference format: repository name must be lowercase",
                "pullsecret-injector (audit): would add imagePullSecret dockerhub for nginx (rule docker.io)",
                "pullsecret-injector (audit): would add imagePullSecret ghcr-acme for ghcr.io/acme/api (rule ghcr.io/acme)",
                "pullsecret-injector (audit): would set imagePullPolicy Always on container c2",
                "pullsecret-injector: Secret ghcr-acme (rule ghcr.io/acme) is not in this namespace yet; referenced anyway: the kubelet uses it as soon as it exists",
            ]
        );
        let problems: Vec<bool> = verdict
            .warnings
            .iter()
            .map(Warning::is_audit_finding)
            .collect();
        assert_eq!(problems, [false, true, true, true, false]);
        // Enforce mode references the Secret that is not there yet, and says so.
        let verdict = for_pod(&p, "team-a", &Context::new(&policy, &facts));
        assert_eq!(verdict.outcome, Outcome::Patched);
        assert_eq!(
            verdict.secrets.iter().map(|s| s.name).collect::<Vec<_>>(),
            ["dockerhub", "ghcr-acme"]
        );
        assert!(matches!(
            verdict.warnings.last(),
            Some(Warning::SecretNotSeen {
                secret: "ghcr-acme",
                ..
            })
        ));
    }

    #[test]
    fn expired_and_soon_expiring_credentials_are_still_added_with_a_warning() {
        use crate::core::config::Config;
        use crate::core::expiry::{Origin, SOON_SECONDS};
        use crate::core::policy::Sources;
        let now = 1_796_612_400;
        let expiry = |at: i64| Expiry {
            at,
            origin: Origin::Annotation(crate::core::names::EXPIRES_AT_ANNOTATION),
            issued: None,
        };
        let config = Config {
            rules: policy().rules().rules().to_vec(),
            ..Config::default()
        };
        let p = pod(
            &[],
            &[
                "nginx",
                "ghcr.io/acme/api",
                "1.dkr.ecr.us-east-1.amazonaws.com/x",
            ],
            None,
        );
        // (dockerhub's, ghcr-acme's, ecr's expiry, clock, warnings as (secret, expired))
        #[rustfmt::skip]
        type Case = ([Option<i64>; 3], Option<i64>, Vec<(&'static str, bool)>);
        let cases: Vec<Case> = vec![
            (
                [Some(now - 1), Some(now + 60), Some(now + SOON_SECONDS + 1)],
                Some(now),
                vec![("dockerhub", true), ("ghcr-acme", false)],
            ),
            (
                [Some(now), None, Some(now + SOON_SECONDS)],
                Some(now),
                vec![("dockerhub", true), ("ecr", false)],
            ),
            // No clock (core's default): nothing is judged.
            ([Some(now - 1), Some(now + 60), None], None, vec![]),
            ([None, None, None], Some(now), vec![]),
        ];
        for (i, (ats, clock, want)) in cases.into_iter().enumerate() {
            let sources = Sources {
                expiries: ["dockerhub", "ghcr-acme", "ecr"]
                    .iter()
                    .zip(ats)
                    .filter_map(|(name, at)| Some((name.to_string(), expiry(at?))))
                    .collect(),
                ..Sources::default()
            };
            let policy = Policy::merged(&config, &sources);
            let mut ctx = Context::new(&policy, &crate::core::facts::NothingKnown);
            if let Some(clock) = clock {
                ctx = ctx.now(clock);
            }
            let verdict = for_pod(&p, "team-a", &ctx);
            // Never fewer secrets.
            assert_eq!(
                verdict.secrets.iter().map(|s| s.name).collect::<Vec<_>>(),
                ["dockerhub", "ghcr-acme", "ecr", "ecr-backup"],
                "case {i}"
            );
            assert_eq!(verdict.outcome, Outcome::Patched, "case {i}");
            let got: Vec<(&str, bool)> = verdict
                .warnings
                .iter()
                .filter_map(|w| match w {
                    Warning::CredentialExpiring {
                        secret, expired, ..
                    } => Some((*secret, *expired)),
                    _ => None,
                })
                .collect();
            assert_eq!(got, want, "case {i}");
        }
        let expired = Warning::CredentialExpiring {
            secret: "ecr",
            rule: "*.dkr.ecr.*.amazonaws.com",
            expiry: &expiry(now),
            expired: true,
        };
        assert_eq!(
            expired.to_string(),
            "pullsecret-injector: Secret ecr (rule *.dkr.ecr.*.amazonaws.com) expired at 2026-12-07T03:00:00Z \
             (annotation pullsecret-injector/expires-at); referenced anyway: pulls fail until its credential is renewed, \
             and the kubelet uses the renewed one at the next pull attempt"
        );
        assert!(!expired.is_audit_finding());
        let soon = Warning::CredentialExpiring {
            secret: "ecr",
            rule: "*.dkr.ecr.*.amazonaws.com",
            expiry: &expiry(now),
            expired: false,
        };
        assert!(
            soon.to_string().contains("expires at 2026-12-07T03:00:00Z"),
            "{soon}"
        );
        assert!(soon.to_string().contains("within the hour"), "{soon}");
        // A minted four-minute credential: warned about only in its last third.
        let minted = Expiry {
            issued: Some(now - 240),
            ..expiry(now)
        };
        let late = Warning::CredentialExpiring {
            secret: "ecr",
            rule: "*.dkr.ecr.*.amazonaws.com",
            expiry: &minted,
            expired: false,
        };
        assert!(
            late.to_string()
                .contains("two thirds into its lifetime and not renewed"),
            "{late}"
        );
        let sources = Sources {
            expiries: [("ecr".to_string(), minted.clone())].into_iter().collect(),
            ..Sources::default()
        };
        let policy = Policy::merged(&config, &sources);
        let warned = |clock: i64| {
            for_pod(
                &p,
                "team-a",
                &Context::new(&policy, &crate::core::facts::NothingKnown).now(clock),
            )
            .warnings
            .iter()
            .any(|w| matches!(w, Warning::CredentialExpiring { secret: "ecr", .. }))
        };
        // Expires at `now`, issued at now - 240: half-life (its refresh point) is quiet.
        assert!(!warned(now - 120));
        assert!(!warned(now - 81));
        assert!(warned(now - 80));
    }
}

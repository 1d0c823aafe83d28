//! Names users and other tools see: labels, annotations, Secret types, audit annotation keys.
//! One place, so the code, the chart's tests and the end-to-end suite cannot drift apart.

/// On namespaces and Pods: `enabled`, `audit` or `disabled`.
pub const INJECT_LABEL: &str = "pullsecret-injector/inject";
pub const INJECT_ENABLED: &str = "enabled";
pub const INJECT_AUDIT: &str = "audit";
pub const INJECT_DISABLED: &str = "disabled";

/// On docker config Secrets in the injector's namespace: `true` makes a Secret a source
/// (discovery reads its `auths` keys; sync copies it where rules need it).
pub const SOURCE_LABEL: &str = "pullsecret-injector/source";

/// Set by the kubelet on mirror Pods of static Pods (never mutated).
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// The two Secret types the kubelet reads pull credentials from.
pub const DOCKER_CONFIG_JSON: &str = "kubernetes.io/dockerconfigjson";
pub const DOCKER_CFG: &str = "kubernetes.io/dockercfg";

/// Marks on Secret copies written by sync.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "pullsecret-injector";
/// `<namespace>/<name>` of the source a copy was made from.
pub const SOURCE_ANNOTATION: &str = "pullsecret-injector/source";
/// The source's resourceVersion when the copy was written.
/// On a source Secret: the namespaces it may serve, comma-separated names or globs.
pub const NAMESPACES_ANNOTATION: &str = "pullsecret-injector/namespaces";
/// On a source Secret: a label selector (`kubectl -l` syntax) the namespaces it serves match.
pub const NAMESPACE_SELECTOR_ANNOTATION: &str = "pullsecret-injector/namespace-selector";
pub const SOURCE_VERSION_ANNOTATION: &str = "pullsecret-injector/source-version";
/// On a source Secret: when its credential stops working, RFC 3339 or Unix seconds.
pub const EXPIRES_AT_ANNOTATION: &str = "pullsecret-injector/expires-at";
/// On a source Secret: when its credential was issued (RFC 3339 or Unix seconds). With the
/// expiry it gives the lifetime, and so the warning threshold (a third of it, at most an
/// hour): a credential refreshed at half its life is never warned about.
pub const ISSUED_AT_ANNOTATION: &str = "pullsecret-injector/issued-at";
/// On a Secret `controller` keeps filled (`credentialProviders`): the provider's name.
pub const CREDENTIAL_PROVIDER_ANNOTATION: &str = "pullsecret-injector/credential-provider";
/// Next to it: the provider's configuration fingerprint when it minted the credential (a
/// changed provider refreshes at once).
pub const CREDENTIAL_PROVIDER_CONFIG_ANNOTATION: &str =
    "pullsecret-injector/credential-provider-config";
/// The annotation external-secrets' generator examples write on the Secrets they fill (ECR,
/// GCR, ACR, GitHub tokens): read when [`EXPIRES_AT_ANNOTATION`] is absent.
pub const EXTERNAL_SECRETS_EXPIRES_AT_ANNOTATION: &str = "expiresAt";

/// Audit annotation (the API server prefixes it with the webhook's name): the secrets added,
/// comma-separated. `-after-N` when the Pod already listed N pull secrets (a reinvocation).
pub const ANNOTATION_INJECTED: &str = "injected-secrets";
/// Audit mode: the secrets that would be added; `-for-K-images` names how many images the
/// round inspected, so a reinvocation that saw a new image records its own finding.
pub const ANNOTATION_WOULD_INJECT: &str = "would-inject-secrets";

/// On a source Secret, written by `controller` (`credentialProbe: true`): the registries that
/// rejected its credential at the last probe, `rejected <registry> <RFC 3339 time>` each,
/// separated by `; ` (absent while every registry accepts it). The webhook warns from it.
pub const PROBE_ANNOTATION: &str = "pullsecret-injector/probe";

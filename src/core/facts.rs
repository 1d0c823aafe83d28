//! What the decision may know about the cluster: namespace labels and which Secrets exist.
//!
//! One trait, two kinds of answer: cluster mode answers from its watch caches, everything else
//! (standalone mode, `explain`) knows nothing ([`NothingKnown`]). A cache that is stale or not
//! listed yet answers "unknown", never "absent": absence is only ever reported, never acted on.

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

/// Whether a Secret exists in a namespace, as far as the injector knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretPresence {
    /// In a fresh cache.
    Seen,
    /// Not in a cache that is listed and healthy. It may still be on its way (created in the
    /// same `kubectl apply` as the Pod), so it is referenced all the same, with a warning.
    NotSeen,
    /// No cache, or one that is not listed or not healthy.
    Unknown,
}

/// How far the namespace labels behind [`ClusterFacts::namespace_label`] can be trusted.
/// Admission reads them whatever the state (an unknown namespace is left to the webhook's
/// namespaceSelector); repair acts only on a [`Fresh`](NamespaceCache::Fresh) cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamespaceCache {
    /// No cache (standalone mode, `explain`), or its first list has not completed.
    NotListed,
    /// Listed, but the watch has failed since: a label may have changed meanwhile.
    Stale,
    /// Listed and healthy: a namespace it does not hold is one it has not seen yet.
    Fresh,
}

/// A namespace's labels, as scope selectors read them.
pub type Labels = std::collections::BTreeMap<String, String>;

/// The cluster as the decision sees it.
pub trait ClusterFacts: Send + Sync {
    fn namespace_label(&self, namespace: &str) -> NamespaceLabel;
    fn secret_presence(&self, namespace: &str, name: &str) -> SecretPresence;
    fn namespace_cache(&self) -> NamespaceCache;
    /// The namespace's labels; `None` when unknown (no cache, or a namespace it has not
    /// seen), and then no scope selector matches it.
    fn namespace_labels(&self, _namespace: &str) -> Option<std::sync::Arc<Labels>> {
        None
    }
}

/// Knows nothing: namespace selection is left to the webhook's namespaceSelector and every
/// Secret may exist.
pub struct NothingKnown;

impl ClusterFacts for NothingKnown {
    fn namespace_label(&self, _: &str) -> NamespaceLabel {
        NamespaceLabel::Unknown
    }
    fn secret_presence(&self, _: &str, _: &str) -> SecretPresence {
        SecretPresence::Unknown
    }
    fn namespace_cache(&self) -> NamespaceCache {
        NamespaceCache::NotListed
    }
}

//! Compact indexes of what the watches deliver, and the [`ClusterFacts`] admission reads.
//!
//! A watch delivers whole objects; an index keeps only what a decision needs, keyed by
//! namespace and name (a namespace's inject label; for a Secret, whether it exists and, for
//! copies, their source). Each index knows whether it is fresh: listed once, and confirmed
//! current by the API server since its last error (see [`super::watch`] for what confirms it).
//! A stale or unlisted index answers "unknown", never "absent".
//!
//! Indexes are filled through [`Index::apply`], [`Index::delete`] and a list cycle
//! ([`Index::start_list`], [`Index::apply_listed`], [`Index::finish_list`]), which tests drive
//! directly, without a cluster.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use arc_swap::ArcSwapOption;

use crate::core::facts::{ClusterFacts, Labels, NamespaceCache, NamespaceLabel, SecretPresence};
use crate::metrics::{KindLabels, Metrics, unix_now};

type Map<V> = HashMap<Box<str>, HashMap<Box<str>, V>>;

/// Whether a watch has listed, and whether its index is current as of a resourceVersion the
/// API server confirmed since the watch's last error (healthy); mirrored into the
/// `watch_healthy` and `watch_last_event_timestamp_seconds` gauges.
pub struct Health {
    kind: &'static str,
    listed: AtomicBool,
    healthy: AtomicBool,
    metrics: Arc<Metrics>,
}

impl Health {
    pub fn new(kind: &'static str, metrics: Arc<Metrics>) -> Self {
        metrics
            .watch_healthy
            .get_or_create(&KindLabels { kind })
            .set(0);
        Self {
            kind,
            listed: AtomicBool::new(false),
            healthy: AtomicBool::new(false),
            metrics,
        }
    }

    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// An event or a completed list arrived.
    fn alive(&self) {
        self.confirmed();
        self.metrics
            .watch_last_event
            .get_or_create(&KindLabels { kind: self.kind })
            .set(unix_now());
    }

    /// Healthy: the index is current as of a version the API server confirmed.
    fn confirmed(&self) {
        self.healthy.store(true, Ordering::Release);
        let labels = KindLabels { kind: self.kind };
        self.metrics.watch_healthy.get_or_create(&labels).set(1);
    }

    /// The API server accepted a watch from the resourceVersion the index is current at: it
    /// serves every change after that version, so nothing was missed. Healthy again, even if
    /// no event follows; not an event itself (the last-event time stays).
    pub fn resumed(&self) {
        self.confirmed();
    }

    /// A bookmark arrived: the index is current as of a later version the API server
    /// confirmed. Healthy again, and an event (the last-event time moves on).
    pub fn bookmark(&self) {
        self.alive();
    }

    /// The watch failed (or its version expired); it retries with backoff. Until the API server
    /// confirms the index current again (a list, an accepted watch, a bookmark or an event),
    /// absence in the index proves nothing.
    pub fn failed(&self) {
        self.healthy.store(false, Ordering::Release);
        let labels = KindLabels { kind: self.kind };
        self.metrics.watch_healthy.get_or_create(&labels).set(0);
        self.metrics.watch_errors.get_or_create(&labels).inc();
    }

    pub fn is_listed(&self) -> bool {
        self.listed.load(Ordering::Acquire)
    }

    /// Listed, and confirmed current (a list, an accepted watch, a bookmark or an event)
    /// since the last error.
    pub fn is_fresh(&self) -> bool {
        self.is_listed() && self.healthy.load(Ordering::Acquire)
    }
}

/// Objects of one watch by namespace and name (cluster-scoped kinds use the namespace `""`).
pub struct Index<V> {
    current: RwLock<Map<V>>,
    /// While a list is in progress: the objects listed so far, replacing `current` at the end.
    /// Lookups keep answering from `current` meanwhile.
    staging: Mutex<Option<Map<V>>>,
    pub health: Health,
}

impl<V> Index<V> {
    pub fn new(kind: &'static str, metrics: Arc<Metrics>) -> Self {
        Self {
            current: RwLock::new(HashMap::new()),
            staging: Mutex::new(None),
            health: Health::new(kind, metrics),
        }
    }

    /// Reads one entry.
    pub fn get<R>(&self, namespace: &str, name: &str, read: impl FnOnce(Option<&V>) -> R) -> R {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        read(current.get(namespace).and_then(|names| names.get(name)))
    }

    /// Visits every entry (sync's input assembly).
    pub fn for_each(&self, mut visit: impl FnMut(&str, &str, &V)) {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        for (namespace, names) in current.iter() {
            for (name, value) in names {
                visit(namespace, name, value);
            }
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        current.values().map(HashMap::len).sum()
    }

    /// An object was added or changed.
    pub fn apply(&self, namespace: &str, name: &str, value: V) {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        insert(&mut current, namespace, name, value);
        drop(current);
        self.health.alive();
    }

    pub fn delete(&self, namespace: &str, name: &str) {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        if let Some(names) = current.get_mut(namespace) {
            names.remove(name);
            if names.is_empty() {
                current.remove(namespace);
            }
        }
        drop(current);
        self.health.alive();
    }

    /// A (re)list begins.
    pub fn start_list(&self) {
        *self.staging.lock().unwrap_or_else(|e| e.into_inner()) = Some(HashMap::new());
    }

    /// An object of the list in progress (applied directly if no list is in progress).
    pub fn apply_listed(&self, namespace: &str, name: &str, value: V) {
        let mut staging = self.staging.lock().unwrap_or_else(|e| e.into_inner());
        match staging.as_mut() {
            Some(map) => insert(map, namespace, name, value),
            None => {
                drop(staging);
                self.apply(namespace, name, value);
            }
        }
    }

    /// The list is complete: it replaces what was known.
    pub fn finish_list(&self) {
        let listed = self
            .staging
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(map) = listed {
            *self.current.write().unwrap_or_else(|e| e.into_inner()) = map;
        }
        self.health.listed.store(true, Ordering::Release);
        self.health.alive();
    }
}

fn insert<V>(map: &mut Map<V>, namespace: &str, name: &str, value: V) {
    match map.get_mut(namespace) {
        Some(names) => {
            names.insert(name.into(), value);
        }
        None => {
            map.insert(namespace.into(), HashMap::from([(name.into(), value)]));
        }
    }
}

/// What the namespace index keeps of a namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceEntry {
    pub label: NamespaceLabel,
    /// Being deleted: sync writes nothing there.
    pub terminating: bool,
    /// All its labels, for the scope selectors of rules and sources (shared, not copied, by
    /// every reader).
    pub labels: Arc<Labels>,
}

/// What the Secret indexes keep of a Secret: nothing for most, the marks for sync's copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretEntry {
    /// `<namespace>/<name>` of the source, when the injector manages this Secret.
    pub managed_source: Option<Box<str>>,
    pub source_version: Option<Box<str>>,
}

/// The credential Secrets of the cluster: one index per docker config type, each fed by its own
/// server-side filtered watch.
pub struct SecretIndexes(pub Vec<Arc<Index<SecretEntry>>>);

impl SecretIndexes {
    pub fn presence(&self, namespace: &str, name: &str) -> SecretPresence {
        if self
            .0
            .iter()
            .any(|index| index.get(namespace, name, |entry| entry.is_some()))
        {
            SecretPresence::Seen
        } else if self.0.iter().all(|index| index.health.is_fresh()) {
            SecretPresence::NotSeen
        } else {
            SecretPresence::Unknown
        }
    }
}

/// What admission reads in cluster mode. The Secret indexes come and go with the
/// `secretAwareness` and `sync` settings.
pub struct ClusterIndex {
    pub namespaces: Arc<Index<NamespaceEntry>>,
    pub secrets: ArcSwapOption<SecretIndexes>,
}

impl ClusterFacts for ClusterIndex {
    fn namespace_label(&self, namespace: &str) -> NamespaceLabel {
        // Not in the index (created a moment ago): the webhook's namespaceSelector decided.
        self.namespaces.get("", namespace, |entry| {
            entry.map_or(NamespaceLabel::Unknown, |e| e.label)
        })
    }

    fn namespace_labels(&self, namespace: &str) -> Option<Arc<Labels>> {
        self.namespaces
            .get("", namespace, |entry| entry.map(|e| e.labels.clone()))
    }

    fn secret_presence(&self, namespace: &str, name: &str) -> SecretPresence {
        match &*self.secrets.load() {
            Some(indexes) => indexes.presence(namespace, name),
            None => SecretPresence::Unknown,
        }
    }

    fn namespace_cache(&self) -> NamespaceCache {
        let health = &self.namespaces.health;
        if !health.is_listed() {
            NamespaceCache::NotListed
        } else if health.is_fresh() {
            NamespaceCache::Fresh
        } else {
            NamespaceCache::Stale
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> SecretEntry {
        SecretEntry {
            managed_source: None,
            source_version: None,
        }
    }

    fn cluster(secret_indexes: usize) -> (ClusterIndex, Vec<Arc<Index<SecretEntry>>>) {
        let metrics = Arc::new(Metrics::default());
        let indexes: Vec<_> = (0..secret_indexes)
            .map(|_| Arc::new(Index::new("secrets", metrics.clone())))
            .collect();
        let cluster = ClusterIndex {
            namespaces: Arc::new(Index::new("namespaces", metrics)),
            secrets: ArcSwapOption::from_pointee(SecretIndexes(indexes.clone())),
        };
        (cluster, indexes)
    }

    #[test]
    fn presence_is_unknown_until_listed_and_while_unhealthy() {
        let (cluster, indexes) = cluster(2);
        let presence = || cluster.secret_presence("team-a", "regcred");
        assert_eq!(presence(), SecretPresence::Unknown, "nothing listed");
        indexes[0].start_list();
        indexes[0].apply_listed("team-a", "other", entry());
        indexes[0].finish_list();
        assert_eq!(presence(), SecretPresence::Unknown, "one of two listed");
        indexes[1].start_list();
        indexes[1].finish_list();
        assert_eq!(presence(), SecretPresence::NotSeen, "both fresh, absent");
        indexes[1].apply("team-a", "regcred", entry());
        assert_eq!(presence(), SecretPresence::Seen);
        indexes[1].delete("team-a", "regcred");
        assert_eq!(presence(), SecretPresence::NotSeen);
        indexes[0].health.failed();
        assert_eq!(presence(), SecretPresence::Unknown, "a failing watch");
        indexes[0].apply("team-b", "x", entry());
        assert_eq!(presence(), SecretPresence::NotSeen, "recovered");
        cluster.secrets.store(None);
        assert_eq!(presence(), SecretPresence::Unknown, "awareness turned off");
    }

    #[test]
    fn a_relist_replaces_the_index_only_when_complete() {
        let (cluster, indexes) = cluster(1);
        let index = &indexes[0];
        index.start_list();
        index.apply_listed("a", "old", entry());
        index.finish_list();
        index.start_list();
        index.apply_listed("a", "new", entry());
        // Mid-list, lookups still see the previous list.
        assert_eq!(cluster.secret_presence("a", "old"), SecretPresence::Seen);
        assert_eq!(cluster.secret_presence("a", "new"), SecretPresence::NotSeen);
        index.finish_list();
        assert_eq!(cluster.secret_presence("a", "old"), SecretPresence::NotSeen);
        assert_eq!(cluster.secret_presence("a", "new"), SecretPresence::Seen);
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn namespaces_not_in_the_index_are_unknown() {
        let (cluster, _) = cluster(0);
        let enabled = NamespaceEntry {
            label: NamespaceLabel::Enabled,
            terminating: false,
            labels: Arc::new(Labels::from([("team".to_string(), "a".to_string())])),
        };
        cluster.namespaces.apply("", "team-a", enabled);
        assert_eq!(cluster.namespace_label("team-a"), NamespaceLabel::Enabled);
        assert_eq!(cluster.namespace_label("new"), NamespaceLabel::Unknown);
        assert_eq!(
            cluster.namespace_labels("team-a").as_deref(),
            Some(&Labels::from([("team".to_string(), "a".to_string())]))
        );
        assert_eq!(cluster.namespace_labels("new"), None);
    }

    #[test]
    fn a_resumed_watch_or_a_bookmark_makes_a_failed_index_fresh_again() {
        let metrics = Arc::new(Metrics::default());
        let index: Index<()> = Index::new("namespaces", metrics.clone());
        let labels = KindLabels { kind: "namespaces" };
        let healthy = || metrics.watch_healthy.get_or_create(&labels).get();
        let last_event = || metrics.watch_last_event.get_or_create(&labels).get();
        index.health.resumed();
        assert!(!index.health.is_fresh(), "never listed");
        index.start_list();
        index.finish_list();
        metrics.watch_last_event.get_or_create(&labels).set(1);
        index.health.failed();
        assert!(!index.health.is_fresh());
        assert_eq!(healthy(), 0);
        index.health.resumed();
        assert!(index.health.is_fresh(), "resumed");
        assert_eq!(healthy(), 1);
        assert_eq!(last_event(), 1, "a resumed watch is not an event");
        index.health.failed();
        assert!(!index.health.is_fresh());
        index.health.bookmark();
        assert!(index.health.is_fresh(), "a bookmark");
        assert_eq!(healthy(), 1);
        assert!(last_event() > 1, "a bookmark is an event");
        assert!(index.health.is_listed());
    }

    #[test]
    fn the_namespace_cache_is_fresh_only_listed_and_healthy() {
        let (cluster, _) = cluster(0);
        let entry = NamespaceEntry {
            label: NamespaceLabel::Enabled,
            terminating: false,
            labels: Arc::default(),
        };
        // An event before the first list is not a list.
        cluster.namespaces.apply("", "team-a", entry.clone());
        assert_eq!(cluster.namespace_cache(), NamespaceCache::NotListed);
        cluster.namespaces.start_list();
        cluster.namespaces.apply_listed("", "team-a", entry.clone());
        assert_eq!(cluster.namespace_cache(), NamespaceCache::NotListed);
        cluster.namespaces.finish_list();
        assert_eq!(cluster.namespace_cache(), NamespaceCache::Fresh);
        cluster.namespaces.health.failed();
        assert_eq!(cluster.namespace_cache(), NamespaceCache::Stale);
        cluster.namespaces.apply("", "team-b", entry);
        assert_eq!(cluster.namespace_cache(), NamespaceCache::Fresh);
    }

    #[test]
    fn health_is_exported() {
        let metrics = Arc::new(Metrics::default());
        let index: Index<()> = Index::new("namespaces", metrics.clone());
        let text = metrics.encode();
        assert!(
            text.contains(r#"pullsecret_injector_watch_healthy{kind="namespaces"} 0"#),
            "{text}"
        );
        index.start_list();
        index.finish_list();
        let text = metrics.encode();
        assert!(
            text.contains(r#"pullsecret_injector_watch_healthy{kind="namespaces"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(
                "pullsecret_injector_watch_last_event_timestamp_seconds{kind=\"namespaces\"}"
            ),
            "{text}"
        );
        index.health.failed();
        let text = metrics.encode();
        assert!(
            text.contains(r#"pullsecret_injector_watch_errors_total{kind="namespaces"} 1"#),
            "{text}"
        );
    }
}

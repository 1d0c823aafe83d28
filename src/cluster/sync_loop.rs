//! Drives sync: while this replica holds the Lease, on every watch event (coalesced) and every
//! [`RESYNC_INTERVAL`], gather the inputs from the indexes ([`gather`], pure), read the copies
//! the ledger names that the copies watch does not hold (their label was stripped), plan
//! ([`sync::plan`], pure), hold the deletes that must wait ([`Revocations::overdue`],
//! [`keep_referenced`], pure), apply, and write the ledger's changes.
//!
//! **Revocation.** A copy whose credential may no longer be in its namespace (the namespace
//! left the scope, or the source is gone) is kept while Pods of its namespace name it, for at
//! most `revokeAfter` from the first pass that found it out of scope; then it is deleted
//! whether or not Pods name it. Each revocation is logged (namespace, Secret, why), counted
//! (`secrets_synced_total{kind="revoked"}`) and recorded as a `PullSecretRevoked` Event in
//! that namespace. The first-seen-out-of-scope instant is kept in this loop's memory only: a
//! restart, or another replica taking over, starts the clock again (a copy is then revoked at
//! most `revokeAfter` after the writer that revokes it first saw it out of scope). A copy back
//! in scope before then is kept, and its clock forgotten.
//!
//! **Ownership.** Only Secrets whose UID is in the [`ledger`] are
//! written or deleted. The ledger is read at the start of each term as the writer (created
//! when absent); when it is empty (first start with one: an upgrade), marked copies whose data
//! is exactly their source's are adopted (see [`sync::Action::Adopt`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ObjectReference, Pod, Secret};
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tokio::sync::Notify;

use crate::cluster::copies::{self, CopyEntry};
use crate::cluster::index::{Index, NamespaceEntry, SecretIndexes};
use crate::cluster::lease::Leadership;
use crate::cluster::ledger::{self, Change, Key, Ledger, LedgerStore};
use crate::cluster::sources::Source;
use crate::cluster::sync::{self, Action, Existing, Revoked};
use crate::cluster::watch::Running;
use crate::core::policy::PolicyStore;
use crate::core::rules::RuleSet;
use crate::metrics::{KindLabels, Metrics};
use crate::shutdown::Trigger;

/// How often sync re-checks everything even without watch events.
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(60);
/// Events within this window are handled by one pass.
const COALESCE: Duration = Duration::from_millis(50);
/// The Event reason of a revocation.
pub const REVOKED_REASON: &str = "PullSecretRevoked";

/// What [`sync::plan`] reads, gathered from the indexes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Gathered {
    /// Namespaces not being deleted, with their labels (for the scope selectors).
    pub namespaces: Vec<sync::Namespace>,
    pub sources: BTreeMap<String, Source>,
    pub existing: Vec<Existing>,
}

/// Reads the indexes into plan inputs: namespaces not being deleted, the sources, and the
/// Secrets outside the injector's namespace that matter: every Secret the copies watch holds
/// (it carries the injector's label), and of the other credential Secrets those at a name a
/// rule uses, those with the injector's marks, and those the ledger names.
pub fn gather(
    own_namespace: &str,
    rules: &RuleSet,
    ledger: &Ledger,
    namespaces: &Index<NamespaceEntry>,
    sources: &Index<Source>,
    secrets: &SecretIndexes,
    copies: &Index<CopyEntry>,
) -> Gathered {
    let mut out = Gathered::default();
    namespaces.for_each(|_, name, entry| {
        if !entry.terminating {
            out.namespaces.push(sync::Namespace {
                name: name.to_string(),
                label: entry.label,
                labels: entry.labels.clone(),
            });
        }
    });
    out.namespaces.sort_by(|a, b| a.name.cmp(&b.name));
    sources.for_each(|_, name, source| {
        out.sources.insert(name.to_string(), source.clone());
    });
    let named: HashSet<&str> = rules
        .rules()
        .iter()
        .flat_map(|r| r.secrets.iter().map(String::as_str))
        .collect();
    let mut existing: BTreeMap<Key, Option<CopyEntry>> = BTreeMap::new();
    copies.for_each(|namespace, name, entry| {
        if namespace != own_namespace {
            existing.insert((namespace.into(), name.into()), Some(entry.clone()));
        }
    });
    for index in &secrets.0 {
        index.for_each(|namespace, name, entry| {
            if namespace == own_namespace
                || (entry.managed_source.is_none()
                    && !named.contains(name)
                    && ledger.owner(namespace, name).is_none())
            {
                return;
            }
            existing
                .entry((namespace.into(), name.into()))
                .or_insert(None);
        });
    }
    out.existing = existing
        .into_iter()
        .map(|((namespace, name), copy)| Existing {
            namespace,
            name,
            copy,
        })
        .collect();
    out
}

/// The Secrets the ledger names that the copies watch does not hold (a label stripped, or
/// the watch behind): read one by one before planning.
pub fn to_read<'a>(existing: &'a [Existing], ledger: &Ledger) -> Vec<&'a Existing> {
    existing
        .iter()
        .filter(|e| e.copy.is_none() && ledger.owner(&e.namespace, &e.name).is_some())
        .collect()
}

/// When each copy that must be revoked was first found out of scope (in memory: a restart
/// starts the clock again).
#[derive(Debug, Default)]
pub struct Revocations {
    since: HashMap<Key, Instant>,
}

impl Revocations {
    /// Notes the revocations among `actions` as of `now`, forgets the copies no longer among
    /// them (back in scope, or gone), and returns those out of scope for `revoke_after` or
    /// longer: they are deleted whether or not Pods name them.
    pub fn overdue(
        &mut self,
        actions: &[Action],
        now: Instant,
        revoke_after: Duration,
    ) -> HashSet<Key> {
        let current: HashSet<Key> = actions
            .iter()
            .filter_map(Action::deletion)
            .filter(|(_, why)| why.revokes())
            .map(|(key, _)| key)
            .collect();
        self.since.retain(|key, _| current.contains(key));
        let mut overdue = HashSet::new();
        for key in current {
            let since = *self.since.entry(key.clone()).or_insert(now);
            if now.saturating_duration_since(since) >= revoke_after {
                overdue.insert(key);
            }
        }
        overdue
    }

    /// The earliest moment a copy still waiting becomes overdue (`None`: none waits), so the
    /// loop wakes for it rather than at its next periodic pass.
    pub fn next_due(&self, revoke_after: Duration) -> Option<Instant> {
        self.since.values().min().map(|since| *since + revoke_after)
    }

    /// When the copy was first found out of scope.
    pub fn since(&self, namespace: &str, name: &str) -> Option<Instant> {
        self.since
            .get(&(namespace.to_string(), name.to_string()))
            .copied()
    }
}

/// Drops the deletes of copies that a Pod of their namespace still names in its
/// `imagePullSecrets` (or whose namespace's Pods could not be listed: absent from
/// `referenced`), except the `overdue` revocations: deleting those would break the Pod's next
/// pull (a restart on another node). They are removed by a later pass, once no Pod needs them
/// or, for a revocation, once `revokeAfter` has passed. Returns what was kept.
pub fn keep_referenced(
    actions: &mut Vec<Action>,
    referenced: &HashMap<String, HashSet<String>>,
    overdue: &HashSet<Key>,
) -> Vec<Key> {
    let mut kept = Vec::new();
    actions.retain(|action| match action.deletion() {
        Some((key, _))
            if !overdue.contains(&key)
                && referenced
                    .get(&key.0)
                    .is_none_or(|names| names.contains(&key.1)) =>
        {
            kept.push(key);
            false
        }
        _ => true,
    });
    kept
}

/// The namespaces whose Pods must be listed: those with a delete that is not overdue.
pub fn namespaces_to_check(actions: &[Action], overdue: &HashSet<Key>) -> Vec<String> {
    let mut out: Vec<String> = actions
        .iter()
        .filter_map(Action::deletion)
        .filter(|(key, _)| !overdue.contains(key))
        .map(|(key, _)| key.0)
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The Event recorded in the namespace of a revoked copy.
pub fn revocation_event(revoked: &Revoked, own_namespace: &str, revoke_after: Duration) -> Event {
    Event {
        type_: EventType::Warning,
        reason: REVOKED_REASON.into(),
        note: Some(format!(
            "pullsecret-injector deleted its copy of {own_namespace}/{}: {} (revokeAfter {}s)",
            revoked.name,
            revoked.why.describe(),
            revoke_after.as_secs()
        )),
        action: "Revoke".into(),
        secondary: None,
    }
}

/// Everything a sync pass reads and writes.
pub struct SyncLoop {
    pub client: kube::Client,
    pub own_namespace: String,
    /// The controller's identity (the Events' reporting instance).
    pub identity: String,
    /// The ledger ConfigMap's name: `<lease-name>-copies`.
    pub ledger_name: String,
    pub policy: Arc<PolicyStore>,
    pub namespaces: Arc<Index<NamespaceEntry>>,
    pub sources: Arc<Index<Source>>,
    pub secrets: Arc<SecretIndexes>,
    /// The Secrets labelled as managed by the injector ([`copies`]), and their watch.
    pub copies: Arc<Index<CopyEntry>>,
    /// Dropping it (with the loop) ends the watch.
    pub _copies_watch: Running,
    pub metrics: Arc<Metrics>,
    pub changed: Arc<Notify>,
}

/// What a sync loop remembers between passes.
#[derive(Default)]
struct State {
    reported: HashSet<Key>,
    kept_reported: HashSet<Key>,
    revocations: Revocations,
    /// Read at the start of each term as the writer.
    ledger: Option<Ledger>,
    /// Ledger changes not yet written.
    pending: Vec<Change>,
    /// The ledger was empty when read: adopt the copies that are exactly their source's.
    adopt: bool,
}

impl SyncLoop {
    /// Runs passes while this replica holds the Lease, until `stop` fires.
    pub async fn run(self, mut leadership: Leadership, stop: Trigger) {
        tokio::select! {
            () = self.passes(&mut leadership) => {}
            () = stop.wait() => {}
        }
    }

    async fn passes(&self, leadership: &mut Leadership) {
        let recorder = Recorder::new(
            self.client.clone(),
            Reporter {
                controller: "pullsecret-injector".into(),
                instance: Some(self.identity.clone()),
            },
        );
        let store = LedgerStore::new(self.client.clone(), &self.own_namespace, &self.ledger_name);
        let mut state = State::default();
        loop {
            leadership.until_leader().await;
            if !self.ready() {
                tokio::select! {
                    () = self.changed.notified() => {}
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
                continue;
            }
            self.pass(leadership, &mut state, &store, &recorder).await;
            // The next periodic pass, or sooner when a revocation falls due.
            let revoke_after = self.policy.load().settings().revoke_after;
            let next = state
                .revocations
                .next_due(revoke_after)
                .map_or(RESYNC_INTERVAL, |due| {
                    due.saturating_duration_since(Instant::now())
                        .min(RESYNC_INTERVAL)
                });
            tokio::select! {
                () = self.changed.notified() => tokio::time::sleep(COALESCE).await,
                () = tokio::time::sleep(next) => {}
                () = leadership.until_lost() => {}
            }
            if !leadership.is_open() {
                // Another replica may write the ledger meanwhile: read it again next term.
                state.ledger = None;
            }
        }
    }

    /// Only a complete picture may lead to deletes or creates.
    fn ready(&self) -> bool {
        self.namespaces.health.is_listed()
            && self.sources.health.is_listed()
            && self.copies.health.is_listed()
            && self.secrets.0.iter().all(|i| i.health.is_listed())
    }

    async fn pass(
        &self,
        leadership: &Leadership,
        state: &mut State,
        store: &LedgerStore,
        recorder: &Recorder,
    ) {
        let mut ledger = match state.ledger.take() {
            Some(ledger) => ledger,
            None => match store.load().await {
                Ok((remote, _)) => {
                    let ledger = ledger::merged(remote, &state.pending);
                    state.adopt = ledger.is_empty();
                    tracing::info!(configmap = %store.name(), copies = ledger.len(), "read the ledger of copies");
                    ledger
                }
                Err(e) => {
                    tracing::warn!(configmap = %store.name(), error = %e, "cannot read the ledger of copies; sync waits");
                    self.metrics.sync_failures.inc();
                    return;
                }
            },
        };
        let policy = self.policy.load();
        let settings = policy.settings();
        let mut gathered = gather(
            &self.own_namespace,
            policy.rules(),
            &ledger,
            &self.namespaces,
            &self.sources,
            &self.secrets,
            &self.copies,
        );
        let mut gone = HashSet::new();
        let mut read = HashMap::new();
        for e in to_read(&gathered.existing, &ledger) {
            match self.read_copy(&e.namespace, &e.name).await {
                Ok(Some(copy)) => {
                    read.insert((e.namespace.clone(), e.name.clone()), copy);
                }
                Ok(None) => {
                    gone.insert((e.namespace.clone(), e.name.clone()));
                }
                // Left unread: the plan looks again next pass.
                Err(()) => {}
            }
        }
        gathered.existing.retain_mut(|e| {
            let key = (e.namespace.clone(), e.name.clone());
            if let Some(copy) = read.remove(&key) {
                e.copy = Some(copy);
            }
            !gone.contains(&key)
        });
        let mut actions = sync::plan(&sync::Inputs {
            settings,
            rules: policy.rules(),
            own_namespace: &self.own_namespace,
            namespaces: &gathered.namespaces,
            sources: &gathered.sources,
            existing: &gathered.existing,
            ledger: &ledger,
            adopt: state.adopt,
        });
        let overdue = state
            .revocations
            .overdue(&actions, Instant::now(), settings.revoke_after);
        let mut referenced = HashMap::new();
        for namespace in namespaces_to_check(&actions, &overdue) {
            if let Some(names) = self.pull_secrets_in_use(&namespace).await {
                referenced.insert(namespace, names);
            }
        }
        let revoking: HashMap<Key, sync::Why> =
            actions.iter().filter_map(Action::deletion).collect();
        for copy in keep_referenced(&mut actions, &referenced, &overdue) {
            if state.kept_reported.insert(copy.clone()) {
                match revoking.get(&copy) {
                    Some(why) if why.revokes() => {
                        tracing::warn!(namespace = %copy.0, secret = %copy.1, why = why.describe(), revoke_after = ?settings.revoke_after, "Secret copy out of scope, kept while existing Pods reference it, for at most revokeAfter");
                    }
                    _ => {
                        tracing::info!(namespace = %copy.0, secret = %copy.1, "Secret copy no longer needed by new Pods, kept while existing Pods reference it");
                    }
                }
            }
        }
        state.kept_reported.retain(|k| revoking.contains_key(k));
        let applied = sync::apply(
            &self.client,
            &self.own_namespace,
            &gathered.sources,
            &actions,
            &mut state.reported,
            &|| leadership.is_open(),
        )
        .await;

        for change in &applied.changes {
            ledger.apply(change);
            state.pending.push(change.clone());
        }
        let mut ledger_written = true;
        if !state.pending.is_empty() {
            match store.commit(&mut ledger, &state.pending).await {
                Ok(()) => state.pending.clear(),
                Err(e) => {
                    ledger_written = false;
                    tracing::warn!(configmap = %store.name(), error = %e, pending = state.pending.len(), "cannot write the ledger of copies; will retry");
                    self.metrics.sync_failures.inc();
                }
            }
        }
        if ledger_written && !applied.interrupted {
            state.adopt = false;
        }
        state.ledger = Some(ledger);

        for revoked in &applied.revoked {
            let since = state
                .revocations
                .since(&revoked.namespace, &revoked.name)
                .map(|t| t.elapsed().as_secs());
            tracing::warn!(
                namespace = %revoked.namespace,
                secret = %revoked.name,
                why = revoked.why.describe(),
                out_of_scope_for_secs = ?since,
                "revoked Secret copy"
            );
            let reference = ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Secret".into()),
                namespace: Some(revoked.namespace.clone()),
                name: Some(revoked.name.clone()),
                uid: Some(revoked.uid.clone()),
                ..ObjectReference::default()
            };
            let event = revocation_event(revoked, &self.own_namespace, settings.revoke_after);
            if let Err(e) = recorder.publish(&event, &reference).await {
                tracing::debug!(error = %e, "cannot record the revocation Event");
            }
        }
        self.metrics.sync_conflicts.inc_by(applied.conflicts as u64);
        self.metrics.sync_failures.inc_by(applied.failed as u64);
        for (kind, count) in [
            ("written", applied.written),
            ("deleted", applied.deleted),
            ("restored", applied.restored),
            ("revoked", applied.revoked.len()),
        ] {
            if count > 0 {
                self.metrics
                    .secrets_synced
                    .get_or_create(&KindLabels { kind })
                    .inc_by(count as u64);
            }
        }
        if applied.failed == 0 && !applied.interrupted && ledger_written {
            self.metrics.mark_synced_now();
        }
    }

    /// Reads one Secret the ledger names (`Ok(None)`: it is gone). Only a hash of its data is
    /// kept. A list by name rather than a get: the controller's verbs on Secrets stay list,
    /// watch, create, update and delete.
    async fn read_copy(&self, namespace: &str, name: &str) -> Result<Option<CopyEntry>, ()> {
        let resource = ApiResource::erase::<Secret>(&());
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), namespace, &resource);
        let by_name = ListParams::default().fields(&format!("metadata.name={name}"));
        match api.list(&by_name).await {
            Ok(list) => Ok(list.items.first().and_then(copies::entry)),
            Err(e) => {
                tracing::warn!(namespace, secret = name, error = %e, "cannot read a Secret the ledger names; looking again next pass");
                Err(())
            }
        }
    }

    /// The `imagePullSecrets` names of the Pods of `namespace` that have not finished; `None`
    /// when they cannot be listed (then nothing there is deleted, but an overdue revocation).
    async fn pull_secrets_in_use(&self, namespace: &str) -> Option<HashSet<String>> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        match api.list(&ListParams::default()).await {
            Ok(pods) => Some(
                pods.items
                    .iter()
                    .filter(|pod| {
                        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
                        !matches!(phase, Some("Succeeded" | "Failed"))
                    })
                    .filter_map(|pod| pod.spec.as_ref()?.image_pull_secrets.as_ref())
                    .flatten()
                    .filter_map(|r| Some(r.name.clone()).filter(|n| !n.is_empty()))
                    .collect(),
            ),
            Err(e) => {
                tracing::warn!(namespace, error = %e, "cannot list Pods to check which copies are in use; keeping them");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::index::SecretEntry;
    use crate::cluster::sync::Why;
    use crate::core::dockercfg::SourceSecret;
    use crate::core::facts::{Labels, NamespaceLabel};
    use crate::core::names::DOCKER_CONFIG_JSON;
    use crate::core::rules::{RegistryPattern, Rule, RuleSource};

    fn copy(uid: &str) -> CopyEntry {
        CopyEntry {
            uid: uid.into(),
            resource_version: "1".into(),
            labelled: true,
            source: Some("psi/regcred".into()),
            source_version: Some("2".into()),
            data_hash: 7,
        }
    }

    #[test]
    fn gathers_plan_inputs_from_indexes_filled_by_events() {
        let metrics = Arc::new(Metrics::default());
        let namespaces = Index::new("namespaces", metrics.clone());
        let team = Arc::new(Labels::from([("team".to_string(), "b".to_string())]));
        let entry = |label, terminating, labels: &Arc<Labels>| NamespaceEntry {
            label,
            terminating,
            labels: labels.clone(),
        };
        namespaces.start_list();
        namespaces.apply_listed("", "team-b", entry(NamespaceLabel::Enabled, false, &team));
        namespaces.apply_listed(
            "",
            "team-a",
            entry(NamespaceLabel::Unlabelled, false, &Arc::default()),
        );
        namespaces.apply_listed("", "gone", entry(NamespaceLabel::Enabled, true, &team));
        namespaces.finish_list();
        let sources = Index::new("source_secrets", metrics.clone());
        let source = Source {
            resource_version: "3".into(),
            secret: SourceSecret {
                name: "regcred".into(),
                kind: DOCKER_CONFIG_JSON.into(),
                data: Default::default(),
            },
            scope: Default::default(),
            scope_error: None,
            probe_annotation: None,
            expiry: Default::default(),
        };
        sources.apply("psi", "regcred", source.clone());
        let secrets = Index::new("secrets", metrics.clone());
        let plain = SecretEntry {
            managed_source: None,
            source_version: None,
        };
        let marked = SecretEntry {
            managed_source: Some("psi/regcred".into()),
            source_version: Some("2".into()),
        };
        secrets.apply("team-b", "regcred", marked.clone());
        secrets.apply("team-c", "renamed", marked);
        secrets.apply("team-a", "regcred", plain.clone());
        secrets.apply("team-a", "unrelated", plain.clone());
        secrets.apply("team-a", "stripped", plain.clone());
        secrets.apply("psi", "regcred", plain);
        let copies = Index::new("secret_copies", metrics);
        copies.apply("team-b", "regcred", copy("u1"));
        copies.apply("team-d", "labelled-only", copy("u2"));
        copies.apply("psi", "regcred", copy("u3"));
        let rules = RuleSet::new(vec![Rule {
            pattern: RegistryPattern::parse("docker.io").expect("valid"),
            secrets: vec!["regcred".into()],
            pull_policy_always: false,
            source: RuleSource::Config { index: 0 },
            scope: Default::default(),
        }]);
        let mut ledger = Ledger::default();
        ledger.apply(&Change::Record {
            namespace: "team-a".into(),
            name: "stripped".into(),
            uid: "u4".into(),
        });
        let got = gather(
            "psi",
            &rules,
            &ledger,
            &namespaces,
            &sources,
            &SecretIndexes(vec![Arc::new(secrets)]),
            &copies,
        );
        assert_eq!(
            got.namespaces,
            [
                sync::Namespace {
                    name: "team-a".into(),
                    label: NamespaceLabel::Unlabelled,
                    labels: Arc::default(),
                },
                sync::Namespace {
                    name: "team-b".into(),
                    label: NamespaceLabel::Enabled,
                    labels: team,
                },
            ]
        );
        assert_eq!(
            got.sources,
            BTreeMap::from([("regcred".to_string(), source)])
        );
        let existing = |namespace: &str, name: &str, copy: Option<CopyEntry>| Existing {
            namespace: namespace.into(),
            name: name.into(),
            copy,
        };
        assert_eq!(
            got.existing,
            [
                existing("team-a", "regcred", None),
                existing("team-a", "stripped", None),
                existing("team-b", "regcred", Some(copy("u1"))),
                existing("team-c", "renamed", None),
                existing("team-d", "labelled-only", Some(copy("u2"))),
            ]
        );
        // Only what the ledger names is read back.
        let read: Vec<_> = to_read(&got.existing, &ledger)
            .iter()
            .map(|e| (e.namespace.as_str(), e.name.as_str()))
            .collect();
        assert_eq!(read, [("team-a", "stripped")]);
    }

    fn delete(namespace: &str, why: Why) -> Action {
        Action::Delete {
            namespace: namespace.into(),
            name: "regcred".into(),
            uid: format!("uid-{namespace}"),
            why,
        }
    }

    fn key(namespace: &str) -> Key {
        (namespace.to_string(), "regcred".to_string())
    }

    #[test]
    fn copies_in_use_are_kept_unless_overdue() {
        let mut actions = vec![
            delete("a", Why::NotNeeded),
            delete("b", Why::NotNeeded),
            delete("c", Why::NotNeeded),
            delete("d", Why::OutOfScope),
            delete("e", Why::OutOfScope),
            delete("f", Why::SourceGone),
            Action::Create {
                namespace: "g".into(),
                source: "regcred".into(),
            },
        ];
        let referenced = HashMap::from([
            ("a".to_string(), HashSet::from(["regcred".to_string()])),
            ("b".to_string(), HashSet::from(["other".to_string()])),
            // c: Pods could not be listed, so it is absent here: kept.
            ("d".to_string(), HashSet::from(["regcred".to_string()])),
            ("e".to_string(), HashSet::from(["regcred".to_string()])),
            // f: not listed, but overdue: deleted anyway.
        ]);
        let overdue = HashSet::from([key("e"), key("f")]);
        assert_eq!(
            namespaces_to_check(&actions, &overdue),
            ["a", "b", "c", "d"]
        );
        let kept = keep_referenced(&mut actions, &referenced, &overdue);
        assert_eq!(kept, [key("a"), key("c"), key("d")]);
        assert_eq!(
            actions,
            [
                delete("b", Why::NotNeeded),
                delete("e", Why::OutOfScope),
                delete("f", Why::SourceGone),
                Action::Create {
                    namespace: "g".into(),
                    source: "regcred".into()
                }
            ]
        );
    }

    #[test]
    fn revocation_waits_revoke_after_from_the_first_pass_out_of_scope() {
        let after = Duration::from_secs(600);
        let t0 = Instant::now();
        let at = |secs| t0 + Duration::from_secs(secs);
        let mut revocations = Revocations::default();
        let out = vec![
            delete("a", Why::OutOfScope),
            delete("b", Why::SourceGone),
            delete("c", Why::NotNeeded),
        ];
        // (seconds since t0, the deletes this pass, overdue)
        let steps: Vec<(u64, Vec<Action>, Vec<Key>)> = vec![
            (0, out.clone(), vec![]),
            (599, out.clone(), vec![]),
            (600, out.clone(), vec![key("a"), key("b")]),
            // b back in scope: its clock is forgotten.
            (601, vec![delete("a", Why::OutOfScope)], vec![key("a")]),
            // b out again: a new clock.
            (700, out.clone(), vec![key("a")]),
            (1299, out.clone(), vec![key("a")]),
            (1300, out.clone(), vec![key("a"), key("b")]),
            // Nothing to revoke: every clock forgotten.
            (1301, vec![], vec![]),
            (1302, out.clone(), vec![]),
        ];
        for (secs, actions, want) in steps {
            let mut got: Vec<Key> = revocations
                .overdue(&actions, at(secs), after)
                .into_iter()
                .collect();
            got.sort();
            assert_eq!(got, want, "at {secs}s");
        }
        assert_eq!(revocations.since("a", "regcred"), Some(at(1302)));
        assert_eq!(revocations.since("c", "regcred"), None, "not a revocation");
        // The loop wakes when the oldest waiting copy falls due, not at its next periodic pass.
        assert_eq!(revocations.next_due(after), Some(at(1302) + after));
        assert_eq!(Revocations::default().next_due(after), None);
        // A clock that went backwards never makes a copy overdue early.
        let mut fresh = Revocations::default();
        assert!(fresh.overdue(&out, at(10), after).is_empty());
        assert!(fresh.overdue(&out, at(5), after).is_empty());
        // revokeAfter of zero is not accepted by the config, but would revoke at once.
        let mut immediate = Revocations::default();
        assert_eq!(immediate.overdue(&out, t0, Duration::ZERO).len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn revocation_with_paused_time_and_a_pod_naming_the_copy() {
        // The loop's sequence on a namespace whose Pods name the copy: kept while within
        // revokeAfter, deleted after it.
        let after = Duration::from_secs(600);
        let mut revocations = Revocations::default();
        let referenced = HashMap::from([("a".to_string(), HashSet::from(["regcred".to_string()]))]);
        let mut deleted_at = None;
        for pass in 0..20u64 {
            let mut actions = vec![delete("a", Why::OutOfScope)];
            let now = tokio::time::Instant::now().into_std();
            let overdue = revocations.overdue(&actions, now, after);
            keep_referenced(&mut actions, &referenced, &overdue);
            if !actions.is_empty() {
                deleted_at = Some(pass);
                break;
            }
            tokio::time::advance(RESYNC_INTERVAL).await;
        }
        assert_eq!(
            deleted_at,
            Some(10),
            "revoked at the first pass 10 minutes on"
        );
    }

    #[test]
    fn the_revocation_event_names_the_source_and_why() {
        let event = revocation_event(
            &Revoked {
                namespace: "team-b".into(),
                name: "regcred".into(),
                uid: "u1".into(),
                why: Why::OutOfScope,
            },
            "psi",
            Duration::from_secs(600),
        );
        assert_eq!(event.reason, REVOKED_REASON);
        assert_eq!(event.type_, EventType::Warning);
        assert_eq!(
            event.note.as_deref(),
            Some(
                "pullsecret-injector deleted its copy of psi/regcred: the namespace is outside the credential's scope (revokeAfter 600s)"
            )
        );
    }
}

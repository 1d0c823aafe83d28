//! Drives sync: while this replica holds the Lease, on every watch event (coalesced) and every
//! [`RESYNC_INTERVAL`], gather the inputs from the indexes ([`gather`], pure), plan
//! ([`sync::plan`], pure), keep copies that Pods still reference ([`keep_referenced`], pure),
//! and apply.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use tokio::sync::Notify;

use crate::cluster::index::{Index, NamespaceEntry, SecretIndexes};
use crate::cluster::lease::Leadership;
use crate::cluster::sources::Source;
use crate::cluster::sync::{self, Action, Existing};
use crate::core::facts::NamespaceLabel;
use crate::core::policy::PolicyStore;
use crate::core::rules::RuleSet;
use crate::metrics::{KindLabels, Metrics};
use crate::shutdown::Trigger;

/// How often sync re-checks everything even without watch events.
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(60);
/// Events within this window are handled by one pass.
const COALESCE: Duration = Duration::from_millis(50);

/// What [`sync::plan`] reads, gathered from the indexes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Gathered {
    pub namespaces: Vec<(String, NamespaceLabel)>,
    pub sources: BTreeMap<String, Source>,
    pub existing: Vec<Existing>,
}

/// Reads the indexes into plan inputs: namespaces not being deleted, the sources, and the
/// Secrets outside the injector's namespace that matter (copies we manage, or Secrets with a
/// name a rule uses, which may be someone else's).
pub fn gather(
    own_namespace: &str,
    rules: &RuleSet,
    namespaces: &Index<NamespaceEntry>,
    sources: &Index<Source>,
    secrets: &SecretIndexes,
) -> Gathered {
    let mut out = Gathered::default();
    namespaces.for_each(|_, name, entry| {
        if !entry.terminating {
            out.namespaces.push((name.to_string(), entry.label));
        }
    });
    out.namespaces.sort_by(|a, b| a.0.cmp(&b.0));
    sources.for_each(|_, name, source| {
        out.sources.insert(name.to_string(), source.clone());
    });
    let named: HashSet<&str> = rules
        .rules()
        .iter()
        .flat_map(|r| r.secrets.iter().map(String::as_str))
        .collect();
    for index in &secrets.0 {
        index.for_each(|namespace, name, entry| {
            if namespace == own_namespace
                || (entry.managed_source.is_none() && !named.contains(name))
            {
                return;
            }
            out.existing.push(Existing {
                namespace: namespace.to_string(),
                name: name.to_string(),
                managed_source: entry.managed_source.as_deref().map(String::from),
                source_version: entry.source_version.as_deref().map(String::from),
            });
        });
    }
    out.existing
        .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    out
}

/// Drops the deletes of copies that a Pod of their namespace still names in its
/// `imagePullSecrets`: deleting those would break the Pod's next pull (a restart on another
/// node). They are removed by a later pass, once no Pod needs them. Returns what was kept.
pub fn keep_referenced(
    actions: &mut Vec<Action>,
    referenced: &HashMap<String, HashSet<String>>,
) -> Vec<(String, String)> {
    let mut kept = Vec::new();
    actions.retain(|action| match action {
        Action::Delete { namespace, name }
            if referenced
                .get(namespace)
                .is_none_or(|names| names.contains(name)) =>
        {
            kept.push((namespace.clone(), name.clone()));
            false
        }
        _ => true,
    });
    kept
}

/// Everything a sync pass reads and writes.
pub struct SyncLoop {
    pub client: kube::Client,
    pub own_namespace: String,
    pub policy: Arc<PolicyStore>,
    pub namespaces: Arc<Index<NamespaceEntry>>,
    pub sources: Arc<Index<Source>>,
    pub secrets: Arc<SecretIndexes>,
    pub metrics: Arc<Metrics>,
    pub changed: Arc<Notify>,
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
        let mut reported = HashSet::new();
        let mut kept_reported = HashSet::new();
        loop {
            leadership.until_leader().await;
            if !self.ready() {
                tokio::select! {
                    () = self.changed.notified() => {}
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
                continue;
            }
            self.pass(leadership, &mut reported, &mut kept_reported)
                .await;
            tokio::select! {
                () = self.changed.notified() => tokio::time::sleep(COALESCE).await,
                () = tokio::time::sleep(RESYNC_INTERVAL) => {}
                () = leadership.until_lost() => {}
            }
        }
    }

    /// Only a complete picture may lead to deletes or creates.
    fn ready(&self) -> bool {
        self.namespaces.health.is_listed()
            && self.sources.health.is_listed()
            && self.secrets.0.iter().all(|i| i.health.is_listed())
    }

    async fn pass(
        &self,
        leadership: &Leadership,
        reported: &mut HashSet<(String, String)>,
        kept_reported: &mut HashSet<(String, String)>,
    ) {
        let policy = self.policy.load();
        let gathered = gather(
            &self.own_namespace,
            policy.rules(),
            &self.namespaces,
            &self.sources,
            &self.secrets,
        );
        let mut actions = sync::plan(&sync::Inputs {
            settings: policy.settings(),
            rules: policy.rules(),
            own_namespace: &self.own_namespace,
            namespaces: &gathered.namespaces,
            sources: &gathered.sources,
            existing: &gathered.existing,
        });
        let mut referenced = HashMap::new();
        for action in &actions {
            if let Action::Delete { namespace, .. } = action
                && !referenced.contains_key(namespace)
                && let Some(names) = self.pull_secrets_in_use(namespace).await
            {
                referenced.insert(namespace.clone(), names);
            }
        }
        for copy in keep_referenced(&mut actions, &referenced) {
            if kept_reported.insert(copy.clone()) {
                tracing::info!(namespace = %copy.0, secret = %copy.1, "Secret copy no longer needed by new Pods, kept while existing Pods reference it");
            }
        }
        let applied = sync::apply(
            &self.client,
            &self.own_namespace,
            &gathered.sources,
            &actions,
            reported,
            &|| leadership.is_open(),
        )
        .await;
        self.metrics.sync_conflicts.inc_by(applied.conflicts as u64);
        self.metrics.sync_failures.inc_by(applied.failed as u64);
        for (kind, count) in [("written", applied.written), ("deleted", applied.deleted)] {
            if count > 0 {
                self.metrics
                    .secrets_synced
                    .get_or_create(&KindLabels { kind })
                    .inc_by(count as u64);
            }
        }
        if applied.failed == 0 && !applied.interrupted {
            self.metrics.mark_synced_now();
        }
    }

    /// The `imagePullSecrets` names of the Pods of `namespace` that have not finished; `None`
    /// when they cannot be listed (then nothing there is deleted).
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
    use crate::core::dockercfg::SourceSecret;
    use crate::core::names::DOCKER_CONFIG_JSON;
    use crate::core::rules::{RegistryPattern, Rule, RuleSource};

    #[test]
    fn gathers_plan_inputs_from_indexes_filled_by_events() {
        let metrics = Arc::new(Metrics::default());
        let namespaces = Index::new("namespaces", metrics.clone());
        let entry = |label, terminating| NamespaceEntry {
            label,
            terminating,
            labels: Arc::default(),
        };
        namespaces.start_list();
        namespaces.apply_listed("", "team-b", entry(NamespaceLabel::Enabled, false));
        namespaces.apply_listed("", "team-a", entry(NamespaceLabel::Unlabelled, false));
        namespaces.apply_listed("", "gone", entry(NamespaceLabel::Enabled, true));
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
        };
        sources.apply("psi", "regcred", source.clone());
        let secrets = Index::new("secrets", metrics);
        let plain = SecretEntry {
            managed_source: None,
            source_version: None,
        };
        let copy = SecretEntry {
            managed_source: Some("psi/regcred".into()),
            source_version: Some("2".into()),
        };
        secrets.apply("team-b", "regcred", copy);
        secrets.apply("team-a", "regcred", plain.clone());
        secrets.apply("team-a", "unrelated", plain.clone());
        secrets.apply("psi", "regcred", plain);
        let rules = RuleSet::new(vec![Rule {
            pattern: RegistryPattern::parse("docker.io").expect("valid"),
            secrets: vec!["regcred".into()],
            pull_policy_always: false,
            source: RuleSource::Config { index: 0 },
            scope: Default::default(),
        }]);
        let got = gather(
            "psi",
            &rules,
            &namespaces,
            &sources,
            &SecretIndexes(vec![Arc::new(secrets)]),
        );
        assert_eq!(
            got.namespaces,
            [
                ("team-a".to_string(), NamespaceLabel::Unlabelled),
                ("team-b".to_string(), NamespaceLabel::Enabled),
            ]
        );
        assert_eq!(
            got.sources,
            BTreeMap::from([("regcred".to_string(), source)])
        );
        assert_eq!(
            got.existing,
            [
                Existing {
                    namespace: "team-a".into(),
                    name: "regcred".into(),
                    managed_source: None,
                    source_version: None,
                },
                Existing {
                    namespace: "team-b".into(),
                    name: "regcred".into(),
                    managed_source: Some("psi/regcred".into()),
                    source_version: Some("2".into()),
                },
            ]
        );
    }

    #[test]
    fn copies_in_use_are_kept() {
        let delete = |namespace: &str, name: &str| Action::Delete {
            namespace: namespace.into(),
            name: name.into(),
        };
        let mut actions = vec![
            delete("a", "regcred"),
            delete("b", "regcred"),
            delete("c", "regcred"),
            Action::Create {
                namespace: "d".into(),
                source: "regcred".into(),
            },
        ];
        let referenced = HashMap::from([
            ("a".to_string(), HashSet::from(["regcred".to_string()])),
            ("b".to_string(), HashSet::from(["other".to_string()])),
            // c: Pods could not be listed, so it is absent here: kept.
        ]);
        let kept = keep_referenced(&mut actions, &referenced);
        assert_eq!(
            kept,
            [
                ("a".to_string(), "regcred".to_string()),
                ("c".to_string(), "regcred".to_string())
            ]
        );
        assert_eq!(
            actions,
            [
                delete("b", "regcred"),
                Action::Create {
                    namespace: "d".into(),
                    source: "regcred".into()
                }
            ]
        );
    }
}

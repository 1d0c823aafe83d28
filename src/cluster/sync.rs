//! Sync: a copy of each referenced source Secret (a Secret in the injector's namespace named by
//! a rule) in every namespace where Pods are injected.
//!
//! [`plan`] is pure: from the namespaces, the sources and the Secrets that exist, it lists the
//! creates, updates, deletes and conflicts. [`apply`] carries a plan out. Copies are labelled
//! `app.kubernetes.io/managed-by=pullsecret-injector` and annotated with their source and the
//! source's resourceVersion, so an update is a comparison of two strings, not of credentials.
//! A Secret of the same name without those marks belongs to someone else: it is never
//! written or deleted, only reported as a conflict.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{Value, json};

use crate::config::{Config, Mode};
use crate::decision::{NamespaceLabel, namespace_mode};
use crate::rules::RuleSet;

pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "pullsecret-injector";
pub const SOURCE_ANNOTATION: &str = "pullsecret-injector/source";
pub const SOURCE_VERSION_ANNOTATION: &str = "pullsecret-injector/source-version";

/// A Secret in the injector's namespace, as sync needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub name: String,
    pub resource_version: String,
    pub kind: String,
    /// base64 values, as the API server sent them.
    pub data: serde_json::Map<String, Value>,
}

/// What is known of a Secret outside the injector's namespace (from metadata only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Existing {
    pub namespace: String,
    pub name: String,
    /// `namespace/name` of the source when the injector manages this Secret.
    pub managed_source: Option<String>,
    pub source_version: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Create {
        namespace: String,
        source: String,
    },
    Update {
        namespace: String,
        source: String,
    },
    Delete {
        namespace: String,
        name: String,
    },
    /// A Secret of that name exists and is not managed by the injector: left alone.
    Conflict {
        namespace: String,
        name: String,
    },
}

/// Everything [`plan`] reads.
pub struct Inputs<'a> {
    pub config: &'a Config,
    pub rules: &'a RuleSet,
    pub own_namespace: &'a str,
    pub namespaces: &'a [(String, NamespaceLabel)],
    pub sources: &'a BTreeMap<String, Source>,
    pub existing: &'a [Existing],
}

/// The actions that bring the cluster to the desired state.
pub fn plan(inputs: &Inputs<'_>) -> Vec<Action> {
    let own = inputs.own_namespace;
    // Sources: Secrets named by a rule that exist in the injector's namespace.
    let wanted: BTreeSet<&str> = inputs
        .rules
        .rules()
        .iter()
        .flat_map(|r| r.secrets.iter().map(String::as_str))
        .filter(|name| inputs.sources.contains_key(*name))
        .collect();
    // Targets: namespaces whose Pods are injected (not audit-only ones).
    let targets: BTreeSet<&str> = inputs
        .namespaces
        .iter()
        .filter(|(name, label)| {
            namespace_mode(inputs.config, Some(own), name, *label) == Ok(Mode::Enforce)
        })
        .map(|(name, _)| name.as_str())
        .collect();
    let existing: BTreeMap<(&str, &str), &Existing> = inputs
        .existing
        .iter()
        .map(|e| ((e.namespace.as_str(), e.name.as_str()), e))
        .collect();

    let mut actions = Vec::new();
    for namespace in &targets {
        for name in &wanted {
            let source = &inputs.sources[*name];
            let ours = format!("{own}/{name}");
            match existing.get(&(*namespace, *name)) {
                None => actions.push(Action::Create {
                    namespace: namespace.to_string(),
                    source: name.to_string(),
                }),
                Some(e) if e.managed_source.as_deref() == Some(ours.as_str()) => {
                    if e.source_version.as_deref() != Some(source.resource_version.as_str()) {
                        actions.push(Action::Update {
                            namespace: namespace.to_string(),
                            source: name.to_string(),
                        });
                    }
                }
                Some(_) => actions.push(Action::Conflict {
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                }),
            }
        }
    }
    let prefix = format!("{own}/");
    for e in inputs.existing {
        let Some(source) = e
            .managed_source
            .as_deref()
            .and_then(|s| s.strip_prefix(&prefix))
        else {
            continue;
        };
        let still_wanted =
            targets.contains(e.namespace.as_str()) && wanted.contains(source) && source == e.name;
        if !still_wanted && e.namespace != own {
            actions.push(Action::Delete {
                namespace: e.namespace.clone(),
                name: e.name.clone(),
            });
        }
    }
    actions
}

/// The copy of `source` for `namespace`, with the injector's marks.
pub fn copy_of(source: &Source, own_namespace: &str, namespace: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": source.name,
            "namespace": namespace,
            "labels": { MANAGED_BY_LABEL: MANAGED_BY },
            "annotations": {
                SOURCE_ANNOTATION: format!("{own_namespace}/{}", source.name),
                SOURCE_VERSION_ANNOTATION: source.resource_version,
            },
        },
        "type": source.kind,
        "data": source.data,
    })
}

/// Result of carrying out a plan.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub written: usize,
    pub deleted: usize,
    pub conflicts: usize,
    pub failed: usize,
}

/// Carries out `actions`. Errors are logged and counted; the next pass retries.
/// `reported` remembers conflicts already logged, so each is logged once.
pub async fn apply(
    client: &kube::Client,
    own_namespace: &str,
    sources: &BTreeMap<String, Source>,
    actions: &[Action],
    reported: &mut HashSet<(String, String)>,
) -> Applied {
    let mut result = Applied::default();
    for action in actions {
        let outcome: Result<(), kube::Error> = match action {
            Action::Create { namespace, source } | Action::Update { namespace, source } => {
                let Some(source) = sources.get(source) else {
                    continue;
                };
                let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
                match serde_json::from_value::<Secret>(copy_of(source, own_namespace, namespace)) {
                    Err(e) => {
                        tracing::warn!(secret = %source.name, error = %e, "source Secret cannot be copied");
                        result.failed += 1;
                        continue;
                    }
                    Ok(copy) if matches!(action, Action::Create { .. }) => {
                        match api.create(&PostParams::default(), &copy).await {
                            // Created meanwhile (our cache lags our own writes); the next pass
                            // compares versions.
                            Err(kube::Error::Api(status)) if status.code == 409 => continue,
                            other => other.map(|_| ()),
                        }
                    }
                    Ok(copy) => api
                        .replace(&source.name, &PostParams::default(), &copy)
                        .await
                        .map(|_| ()),
                }
            }
            Action::Delete { namespace, name } => {
                let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
                match api.delete(name, &DeleteParams::default()).await {
                    Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
                    other => other.map(|_| ()),
                }
            }
            Action::Conflict { namespace, name } => {
                result.conflicts += 1;
                if reported.insert((namespace.clone(), name.clone())) {
                    tracing::warn!(
                        namespace = %namespace,
                        secret = %name,
                        "a Secret with this name exists and is not managed by pullsecret-injector; not touching it"
                    );
                }
                continue;
            }
        };
        match outcome {
            Ok(()) => match action {
                Action::Delete { namespace, name } => {
                    tracing::info!(namespace = %namespace, secret = %name, "removed Secret copy");
                    result.deleted += 1;
                }
                Action::Create { namespace, source } | Action::Update { namespace, source } => {
                    tracing::info!(namespace = %namespace, secret = %source, "wrote Secret copy");
                    result.written += 1;
                }
                Action::Conflict { .. } => {}
            },
            Err(e) => {
                tracing::warn!(action = ?action, error = %e, "sync action failed; will retry");
                result.failed += 1;
            }
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Selection;
    use crate::rules::{RegistryPattern, Rule, RuleSource};

    fn rules(secrets: &[&str]) -> RuleSet {
        RuleSet::new(vec![Rule {
            pattern: RegistryPattern::parse("docker.io").expect("valid"),
            secrets: secrets.iter().map(|s| s.to_string()).collect(),
            pull_policy_always: false,
            source: RuleSource::Config { index: 0 },
        }])
    }

    fn source(name: &str, rv: &str) -> (String, Source) {
        (
            name.to_string(),
            Source {
                name: name.into(),
                resource_version: rv.into(),
                kind: "kubernetes.io/dockerconfigjson".into(),
                data: Default::default(),
            },
        )
    }

    fn plan_for(
        config: &Config,
        rules: &RuleSet,
        namespaces: &[(String, NamespaceLabel)],
        sources: &BTreeMap<String, Source>,
        existing: &[Existing],
    ) -> Vec<Action> {
        plan(&Inputs {
            config,
            rules,
            own_namespace: "psi",
            namespaces,
            sources,
            existing,
        })
    }

    fn existing(
        namespace: &str,
        name: &str,
        managed: Option<&str>,
        version: Option<&str>,
    ) -> Existing {
        Existing {
            namespace: namespace.into(),
            name: name.into(),
            managed_source: managed.map(String::from),
            source_version: version.map(String::from),
        }
    }

    #[test]
    fn plans_creates_updates_deletes_and_conflicts() {
        let config = Config::default();
        let rules = rules(&["regcred", "absent-source"]);
        let sources: BTreeMap<_, _> = [source("regcred", "7"), source("unreferenced", "1")].into();
        let namespaces = vec![
            ("new-ns".to_string(), NamespaceLabel::Enabled),
            ("current".to_string(), NamespaceLabel::Enabled),
            ("stale".to_string(), NamespaceLabel::Enabled),
            ("foreign".to_string(), NamespaceLabel::Enabled),
            ("left".to_string(), NamespaceLabel::Unlabelled),
            ("audit-only".to_string(), NamespaceLabel::Audit),
            ("kube-system".to_string(), NamespaceLabel::Enabled),
            ("psi".to_string(), NamespaceLabel::Enabled),
        ];
        let existing = vec![
            existing("current", "regcred", Some("psi/regcred"), Some("7")),
            existing("stale", "regcred", Some("psi/regcred"), Some("6")),
            existing("foreign", "regcred", None, None),
            existing("left", "regcred", Some("psi/regcred"), Some("7")),
            existing("current", "old-copy", Some("psi/old-copy"), Some("1")),
            existing("current", "someone-elses", Some("other-ns/x"), Some("1")),
        ];
        let mut got = plan_for(&config, &rules, &namespaces, &sources, &existing);
        got.sort_by_key(|a| format!("{a:?}"));
        let mut want = vec![
            Action::Create {
                namespace: "new-ns".into(),
                source: "regcred".into(),
            },
            Action::Update {
                namespace: "stale".into(),
                source: "regcred".into(),
            },
            Action::Conflict {
                namespace: "foreign".into(),
                name: "regcred".into(),
            },
            Action::Delete {
                namespace: "left".into(),
                name: "regcred".into(),
            },
            Action::Delete {
                namespace: "current".into(),
                name: "old-copy".into(),
            },
        ];
        want.sort_by_key(|a| format!("{a:?}"));
        assert_eq!(got, want);
    }

    #[test]
    fn all_mode_targets_every_namespace_but_excluded_and_disabled() {
        let config = Config {
            selection: Selection::All,
            ..Config::default()
        };
        let rules = rules(&["regcred"]);
        let sources: BTreeMap<_, _> = [source("regcred", "1")].into();
        let namespaces = vec![
            ("a".to_string(), NamespaceLabel::Unlabelled),
            ("b".to_string(), NamespaceLabel::Disabled),
            ("kube-public".to_string(), NamespaceLabel::Unlabelled),
        ];
        assert_eq!(
            plan_for(&config, &rules, &namespaces, &sources, &[]),
            [Action::Create {
                namespace: "a".into(),
                source: "regcred".into()
            }]
        );
    }

    #[test]
    fn a_removed_source_removes_its_copies() {
        let config = Config::default();
        let rules = rules(&["regcred"]);
        let sources = BTreeMap::new();
        let namespaces = vec![("a".to_string(), NamespaceLabel::Enabled)];
        let existing = vec![existing("a", "regcred", Some("psi/regcred"), Some("1"))];
        assert_eq!(
            plan_for(&config, &rules, &namespaces, &sources, &existing),
            [Action::Delete {
                namespace: "a".into(),
                name: "regcred".into()
            }]
        );
    }

    #[test]
    fn copies_carry_the_marks_and_the_data() {
        let (_, mut s) = source("regcred", "9");
        s.data
            .insert(".dockerconfigjson".into(), Value::from("e30="));
        let copy = copy_of(&s, "psi", "team-a");
        assert_eq!(copy["metadata"]["labels"][MANAGED_BY_LABEL], MANAGED_BY);
        assert_eq!(
            copy["metadata"]["annotations"][SOURCE_ANNOTATION],
            "psi/regcred"
        );
        assert_eq!(
            copy["metadata"]["annotations"][SOURCE_VERSION_ANNOTATION],
            "9"
        );
        assert_eq!(copy["data"][".dockerconfigjson"], "e30=");
        let typed: Secret = serde_json::from_value(copy).expect("a valid Secret");
        assert_eq!(
            typed.type_.as_deref(),
            Some("kubernetes.io/dockerconfigjson")
        );
    }
}

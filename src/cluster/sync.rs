//! Sync: a copy of each source Secret a rule names (a labelled docker config Secret of the
//! injector's namespace) in every namespace where Pods are injected.
//!
//! [`plan`] is pure: from the namespaces, the sources and the Secrets that exist, it lists the
//! creates, updates, deletes and conflicts. [`apply`] carries a plan out. Copies are labelled
//! `app.kubernetes.io/managed-by=pullsecret-injector` and annotated with their source and the
//! source's resourceVersion, so an update is a comparison of two strings, not of credentials.
//! An update replaces the copy in place (same UID: since Kubernetes 1.35 the kubelet keys the
//! credentials of cached images on the Secret's UID and content, so a recreated Secret would
//! force pulls from the registry). A Secret of the same name without those marks belongs to
//! someone else: it is never written or deleted, only reported as a conflict.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{Value, json};

use crate::cluster::sources::Source;
use crate::core::config::{Mode, Settings};
use crate::core::decision::namespace_mode;
use crate::core::facts::NamespaceLabel;
use crate::core::names::{
    MANAGED_BY, MANAGED_BY_LABEL, SOURCE_ANNOTATION, SOURCE_VERSION_ANNOTATION,
};
use crate::core::rules::RuleSet;

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
    pub settings: &'a Settings,
    pub rules: &'a RuleSet,
    pub own_namespace: &'a str,
    pub namespaces: &'a [(String, NamespaceLabel)],
    pub sources: &'a BTreeMap<String, Source>,
    pub existing: &'a [Existing],
}

/// The actions that bring the cluster to the desired state.
pub fn plan(inputs: &Inputs<'_>) -> Vec<Action> {
    let own = inputs.own_namespace;
    // Sources: docker config Secrets named by a rule, labelled in the injector's namespace.
    let wanted: BTreeSet<&str> = inputs
        .rules
        .rules()
        .iter()
        .flat_map(|r| r.secrets.iter().map(String::as_str))
        .filter(|name| {
            inputs
                .sources
                .get(*name)
                .is_some_and(Source::is_pull_credential)
        })
        .collect();
    // Targets: namespaces whose Pods are injected (not audit-only ones).
    let targets: BTreeSet<&str> = inputs
        .namespaces
        .iter()
        .filter(|(name, label)| {
            namespace_mode(inputs.settings, Some(own), name, *label) == Ok(Mode::Enforce)
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
    let secret = &source.secret;
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": secret.name,
            "namespace": namespace,
            "labels": { MANAGED_BY_LABEL: MANAGED_BY },
            "annotations": {
                SOURCE_ANNOTATION: format!("{own_namespace}/{}", secret.name),
                SOURCE_VERSION_ANNOTATION: source.resource_version,
            },
        },
        "type": secret.kind,
        "data": secret.data,
    })
}

/// Result of carrying out a plan.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub written: usize,
    pub deleted: usize,
    pub conflicts: usize,
    pub failed: usize,
    /// The writer gate closed during the pass (Lease not renewed, a cache went stale): the
    /// remaining actions were not carried out.
    pub interrupted: bool,
}

/// Carries out `actions` while `may_write` says so (checked before each write). Errors are
/// logged and counted; the next pass retries. `reported` remembers conflicts already logged,
/// so each is logged once.
pub async fn apply(
    client: &kube::Client,
    own_namespace: &str,
    sources: &BTreeMap<String, Source>,
    actions: &[Action],
    reported: &mut HashSet<(String, String)>,
    may_write: &(dyn Fn() -> bool + Sync),
) -> Applied {
    let mut result = Applied::default();
    for action in actions {
        if !matches!(action, Action::Conflict { .. }) && !may_write() {
            tracing::warn!(
                remaining = actions.len(),
                "sync stopped mid-pass: this replica no longer holds the Lease, or a cache is stale"
            );
            result.interrupted = true;
            break;
        }
        let outcome: Result<(), kube::Error> = match action {
            Action::Create { namespace, source } | Action::Update { namespace, source } => {
                let Some(source) = sources.get(source) else {
                    continue;
                };
                let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
                match serde_json::from_value::<Secret>(copy_of(source, own_namespace, namespace)) {
                    Err(e) => {
                        tracing::warn!(secret = %source.secret.name, error = %e, "source Secret cannot be copied");
                        result.failed += 1;
                        continue;
                    }
                    Ok(copy) if matches!(action, Action::Create { .. }) => {
                        match api.create(&PostParams::default(), &copy).await {
                            // A Secret of that name exists that the cache does not hold: one
                            // of another type (only docker config Secrets are watched), or our
                            // own copy, just written, that the watch has not delivered yet.
                            // Either way it is not ours to overwrite; the next pass knows more.
                            Err(kube::Error::Api(status)) if status.code == 409 => {
                                if reported.insert((namespace.clone(), source.secret.name.clone()))
                                {
                                    result.conflicts += 1;
                                    tracing::info!(namespace = %namespace, secret = %source.secret.name, "a Secret with this name already exists; not overwriting it");
                                }
                                continue;
                            }
                            other => other.map(|_| ()),
                        }
                    }
                    Ok(copy) => api
                        .replace(&source.secret.name, &PostParams::default(), &copy)
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
                if reported.insert((namespace.clone(), name.clone())) {
                    result.conflicts += 1;
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
    use crate::core::config::Selection;
    use crate::core::dockercfg::SourceSecret;
    use crate::core::names::DOCKER_CONFIG_JSON;
    use crate::core::rules::{RegistryPattern, Rule, RuleSource};

    fn rules(secrets: &[&str]) -> RuleSet {
        RuleSet::new(vec![Rule {
            pattern: RegistryPattern::parse("docker.io").expect("valid"),
            secrets: secrets.iter().map(|s| s.to_string()).collect(),
            pull_policy_always: false,
            source: RuleSource::Config { index: 0 },
            scope: Default::default(),
        }])
    }

    fn source_of_type(name: &str, rv: &str, kind: &str) -> (String, Source) {
        (
            name.to_string(),
            Source {
                resource_version: rv.into(),
                secret: SourceSecret {
                    name: name.into(),
                    kind: kind.into(),
                    data: Default::default(),
                },
                scope: Default::default(),
                scope_error: None,
            },
        )
    }

    fn source(name: &str, rv: &str) -> (String, Source) {
        source_of_type(name, rv, DOCKER_CONFIG_JSON)
    }

    fn plan_for(
        settings: &Settings,
        rules: &RuleSet,
        namespaces: &[(String, NamespaceLabel)],
        sources: &BTreeMap<String, Source>,
        existing: &[Existing],
    ) -> Vec<Action> {
        plan(&Inputs {
            settings,
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
        let settings = Settings::default();
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
        let mut got = plan_for(&settings, &rules, &namespaces, &sources, &existing);
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
        let settings = Settings {
            selection: Selection::All,
            ..Settings::default()
        };
        let rules = rules(&["regcred"]);
        let sources: BTreeMap<_, _> = [source("regcred", "1")].into();
        let namespaces = vec![
            ("a".to_string(), NamespaceLabel::Unlabelled),
            ("b".to_string(), NamespaceLabel::Disabled),
            ("kube-public".to_string(), NamespaceLabel::Unlabelled),
        ];
        assert_eq!(
            plan_for(&settings, &rules, &namespaces, &sources, &[]),
            [Action::Create {
                namespace: "a".into(),
                source: "regcred".into()
            }]
        );
    }

    #[test]
    fn a_removed_source_removes_its_copies() {
        let settings = Settings::default();
        let rules = rules(&["regcred"]);
        let sources = BTreeMap::new();
        let namespaces = vec![("a".to_string(), NamespaceLabel::Enabled)];
        let existing = vec![existing("a", "regcred", Some("psi/regcred"), Some("1"))];
        assert_eq!(
            plan_for(&settings, &rules, &namespaces, &sources, &existing),
            [Action::Delete {
                namespace: "a".into(),
                name: "regcred".into()
            }]
        );
    }

    #[test]
    fn only_docker_config_sources_are_copied() {
        let settings = Settings::default();
        let rules = rules(&["regcred", "webhook-tls"]);
        let sources: BTreeMap<_, _> = [
            source("regcred", "1"),
            source_of_type("webhook-tls", "1", "kubernetes.io/tls"),
        ]
        .into();
        let namespaces = vec![("a".to_string(), NamespaceLabel::Enabled)];
        assert_eq!(
            plan_for(&settings, &rules, &namespaces, &sources, &[]),
            [Action::Create {
                namespace: "a".into(),
                source: "regcred".into()
            }]
        );
    }

    #[test]
    fn copies_carry_the_marks_and_the_data() {
        let (_, mut s) = source("regcred", "9");
        s.secret
            .data
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

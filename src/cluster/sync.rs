//! Sync: a copy of each source Secret a rule names (a labelled docker config Secret of the
//! injector's namespace) in every injected namespace in the credential's scope.
//!
//! **What is copied where.** Source `S` is copied into namespace `N` when `N` is injected
//! (enforce mode, not excluded), `S`'s own scope (its annotations) allows `N` with `N`'s
//! labels, and at least one rule naming `S` has a scope allowing `N`. Under `requireScope`, a
//! rule or source that declares no scope serves nowhere. A copy holds only the source's docker
//! config key ([`copies::copy_data`]), labelled `app.kubernetes.io/managed-by=pullsecret-injector`
//! and annotated with its source and the source's resourceVersion.
//!
//! **What proves a copy is ours.** Its UID in the [ledger](crate::cluster::ledger), which
//! tenants cannot write; marks alone never do. Sync updates, restores and deletes only Secrets
//! whose UID the ledger records; any other Secret at a name it would use, whatever its marks,
//! is [`Action::Foreign`]: reported once, never written or deleted.
//!
//! **What is written.** An update replaces the copy in place (same UID: since Kubernetes 1.35
//! the kubelet keys the credentials of cached images on the Secret's UID and content, so a
//! recreated Secret would force pulls from the registry) with the copy's resourceVersion and
//! UID as preconditions; a delete carries the UID as a precondition. A Secret swapped in
//! between the read and the write is therefore never overwritten or deleted: the API server
//! answers 409, and the next pass looks again. A copy whose data, label or source annotation
//! a tenant changed is restored in place at the next pass.
//!
//! **When a copy goes.** A copy whose credential may no longer be there (the namespace left
//! the scope, no rule naming the source allows it, or the source is gone) is a
//! [`Why::OutOfScope`] / [`Why::SourceGone`] delete: the sync loop holds it while Pods name it,
//! for at most `revokeAfter`, then revokes it whether or not Pods name it. A copy that is only
//! no longer needed (the namespace is not injected any more, but the credential is allowed
//! there) is a [`Why::NotNeeded`] delete, held while Pods name it.
//!
//! [`plan`] is pure: from the namespaces, the sources, the Secrets that exist and the ledger,
//! it lists the actions. [`apply`] carries a plan out and reports the ledger changes.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use serde_json::{Value, json};

use crate::cluster::copies::{self, CopyEntry};
use crate::cluster::ledger::{Change, Ledger};
use crate::cluster::sources::Source;
use crate::core::config::{Mode, Settings};
use crate::core::decision::namespace_mode;
use crate::core::facts::{Labels, NamespaceLabel};
use crate::core::names::{
    MANAGED_BY, MANAGED_BY_LABEL, SOURCE_ANNOTATION, SOURCE_VERSION_ANNOTATION,
};
use crate::core::rules::RuleSet;

/// A namespace as sync reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    pub label: NamespaceLabel,
    pub labels: Arc<Labels>,
}

/// A Secret outside the injector's namespace at a name that matters to sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Existing {
    pub namespace: String,
    pub name: String,
    /// What is known of it beyond its name: from the copies watch (it carries the injector's
    /// label), or read because the ledger names it. `None`: a Secret without the label that the
    /// ledger does not name (or not read yet).
    pub copy: Option<CopyEntry>,
}

/// Why a copy is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Why {
    /// The namespace is outside the scope of the source, or of every rule naming it.
    OutOfScope,
    /// The source Secret is gone (or no longer a docker config Secret).
    SourceGone,
    /// The credential is allowed there, but the namespace is no longer injected.
    NotNeeded,
}

impl Why {
    /// A revocation: deleted within `revokeAfter` even if Pods name it.
    pub fn revokes(self) -> bool {
        matches!(self, Why::OutOfScope | Why::SourceGone)
    }

    pub fn describe(self) -> &'static str {
        match self {
            Why::OutOfScope => "the namespace is outside the credential's scope",
            Why::SourceGone => "the source Secret is gone",
            Why::NotNeeded => "the namespace is no longer injected",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Create {
        namespace: String,
        source: String,
    },
    /// Replace our copy in place: the source changed, or (`restore`) the copy was tampered
    /// with (data, label or source annotation). Preconditions: `uid` and `resource_version`.
    Update {
        namespace: String,
        source: String,
        uid: String,
        resource_version: String,
        restore: bool,
    },
    /// Delete our copy; precondition: `uid`.
    Delete {
        namespace: String,
        name: String,
        uid: String,
        why: Why,
    },
    /// A Secret the injector did not create (not in the ledger, whatever its marks) at a name
    /// sync uses, or carrying its marks: reported once, never touched.
    Foreign {
        namespace: String,
        name: String,
    },
    /// First start with a ledger (an upgrade): a Secret with the injector's marks whose data
    /// is exactly what the copy would hold is recorded as ours.
    Adopt {
        namespace: String,
        name: String,
        uid: String,
    },
    /// The ledger names a copy in a namespace that is gone: the entry is dropped.
    Forget {
        namespace: String,
        name: String,
        uid: String,
    },
}

impl Action {
    /// For a delete: the copy (namespace, name) and why it goes.
    pub fn deletion(&self) -> Option<((String, String), Why)> {
        match self {
            Action::Delete {
                namespace,
                name,
                why,
                ..
            } => Some(((namespace.clone(), name.clone()), *why)),
            _ => None,
        }
    }
}

/// Everything [`plan`] reads.
pub struct Inputs<'a> {
    pub settings: &'a Settings,
    pub rules: &'a RuleSet,
    pub own_namespace: &'a str,
    /// The namespaces not being deleted.
    pub namespaces: &'a [Namespace],
    pub sources: &'a BTreeMap<String, Source>,
    pub existing: &'a [Existing],
    pub ledger: &'a Ledger,
    /// The ledger was just created (first start with one): adopt the marked copies whose
    /// data is exactly their source's.
    pub adopt: bool,
}

/// Whether `source` may be in `namespace` (with `labels`): its own scope allows it, and so does
/// the scope of at least one rule naming it.
pub fn allowed(
    rules: &RuleSet,
    require_scope: bool,
    name: &str,
    source: &Source,
    namespace: &str,
    labels: &Labels,
) -> bool {
    source
        .scope
        .enforced(require_scope)
        .allows(namespace, Some(labels))
        && rules.rules().iter().any(|rule| {
            rule.secrets.iter().any(|s| s == name)
                && rule
                    .scope
                    .enforced(require_scope)
                    .allows(namespace, Some(labels))
        })
}

/// The actions that bring the cluster to the desired state.
pub fn plan(inputs: &Inputs<'_>) -> Vec<Action> {
    let own = inputs.own_namespace;
    let require = inputs.settings.require_scope;
    // Sources: docker config Secrets named by a rule, labelled in the injector's namespace.
    let wanted: BTreeMap<&str, &Source> = inputs
        .rules
        .rules()
        .iter()
        .flat_map(|r| r.secrets.iter().map(String::as_str))
        .filter_map(|name| {
            let source = inputs.sources.get(name)?;
            source.is_pull_credential().then_some((name, source))
        })
        .collect();
    let namespaces: BTreeMap<&str, &Namespace> = inputs
        .namespaces
        .iter()
        .map(|n| (n.name.as_str(), n))
        .collect();
    // Targets: namespaces whose Pods are injected (not audit-only ones).
    let enforced = |n: &Namespace| {
        n.name != own
            && namespace_mode(inputs.settings, Some(own), &n.name, n.label) == Ok(Mode::Enforce)
    };
    let may_have = |name: &str, source: &Source, n: &Namespace| {
        allowed(inputs.rules, require, name, source, &n.name, &n.labels)
    };
    let existing: BTreeMap<(&str, &str), &Existing> = inputs
        .existing
        .iter()
        .filter(|e| e.namespace != own)
        .map(|e| ((e.namespace.as_str(), e.name.as_str()), e))
        .collect();
    let desired_hash: BTreeMap<&str, u64> = wanted
        .iter()
        .map(|(name, s)| (*name, copies::data_hash(&copies::copy_data(&s.secret))))
        .collect();

    let mut actions = Vec::new();
    let mut foreign = BTreeSet::new();
    // Ours: the ledger's UID. Before that, on the first start with a ledger, adoption.
    let mut adopted = HashSet::new();
    for (&(namespace, name), e) in &existing {
        let Some(copy) = &e.copy else { continue };
        if inputs.adopt
            && inputs.ledger.owner(namespace, name).is_none()
            && copy.labelled
            && copy.source.as_deref() == Some(&format!("{own}/{name}"))
            && desired_hash.get(name) == Some(&copy.data_hash)
        {
            adopted.insert((namespace, name));
            actions.push(Action::Adopt {
                namespace: namespace.into(),
                name: name.into(),
                uid: copy.uid.clone(),
            });
        }
    }
    let ours = |namespace: &str, name: &str, copy: &CopyEntry| {
        inputs.ledger.owns(namespace, name, &copy.uid) || adopted.contains(&(namespace, name))
    };

    for (&(namespace, name), e) in &existing {
        if e.copy.is_none() && inputs.ledger.owner(namespace, name).is_some() {
            // The ledger names it but it could not be read: look again next pass.
            continue;
        }
        let Some(copy) = e.copy.as_ref().filter(|c| ours(namespace, name, c)) else {
            // Not ours. Reported when it carries the injector's marks (forged or left over)
            // or stands where a copy would go; never touched.
            let marked = e.copy.as_ref().is_some_and(|c| c.labelled);
            let in_the_way = wanted.get(name).is_some_and(|s| {
                namespaces
                    .get(namespace)
                    .is_some_and(|n| enforced(n) && may_have(name, s, n))
            });
            if marked || in_the_way {
                foreign.insert((namespace, name));
            }
            continue;
        };
        let delete = |why| Action::Delete {
            namespace: namespace.into(),
            name: name.into(),
            uid: copy.uid.clone(),
            why,
        };
        let Some(source) = inputs.sources.get(name).filter(|s| s.is_pull_credential()) else {
            actions.push(delete(Why::SourceGone));
            continue;
        };
        let Some(n) = namespaces.get(namespace) else {
            // Being deleted (or gone): its copies go with it.
            continue;
        };
        if !wanted.contains_key(name) || !may_have(name, source, n) {
            actions.push(delete(Why::OutOfScope));
        } else if !enforced(n) {
            actions.push(delete(Why::NotNeeded));
        } else {
            let tampered = !copy.labelled
                || copy.source.as_deref() != Some(&format!("{own}/{name}"))
                || (copy.source_version.as_deref() == Some(source.resource_version.as_str())
                    && desired_hash.get(name) != Some(&copy.data_hash));
            let changed = copy.source_version.as_deref() != Some(source.resource_version.as_str());
            if tampered || changed {
                actions.push(Action::Update {
                    namespace: namespace.into(),
                    source: name.into(),
                    uid: copy.uid.clone(),
                    resource_version: copy.resource_version.clone(),
                    restore: tampered,
                });
            }
        }
    }

    for n in inputs.namespaces.iter().filter(|n| enforced(n)) {
        for (name, source) in &wanted {
            if may_have(name, source, n) && !existing.contains_key(&(n.name.as_str(), *name)) {
                actions.push(Action::Create {
                    namespace: n.name.clone(),
                    source: name.to_string(),
                });
            }
        }
    }
    for (namespace, name) in foreign {
        actions.push(Action::Foreign {
            namespace: namespace.into(),
            name: name.into(),
        });
    }
    // Ledger entries of namespaces that are gone (their copies went with them).
    for ((namespace, name), uid) in inputs.ledger.entries() {
        if !namespaces.contains_key(namespace.as_str())
            && !existing.contains_key(&(namespace.as_str(), name.as_str()))
        {
            actions.push(Action::Forget {
                namespace: namespace.clone(),
                name: name.clone(),
                uid: uid.to_string(),
            });
        }
    }
    actions
}

/// The copy of `source` for `namespace`, with the injector's marks: the docker config key
/// only. `current` (uid, resourceVersion) makes it a replace with preconditions.
pub fn copy_of(
    source: &Source,
    own_namespace: &str,
    namespace: &str,
    current: Option<(&str, &str)>,
) -> Value {
    let secret = &source.secret;
    let mut copy = json!({
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
        "data": copies::copy_data(secret),
    });
    if let Some((uid, resource_version)) = current {
        copy["metadata"]["uid"] = Value::from(uid);
        copy["metadata"]["resourceVersion"] = Value::from(resource_version);
    }
    copy
}

/// Result of carrying out a plan.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Copies created, or updated after their source changed.
    pub written: usize,
    /// Copies restored in place after a tenant changed them.
    pub restored: usize,
    /// Copies deleted because they were no longer needed.
    pub deleted: usize,
    /// Copies revoked (deleted: out of scope, or the source is gone).
    pub revoked: Vec<Revoked>,
    /// Foreign Secrets newly reported, and writes refused by a precondition (409).
    pub conflicts: usize,
    pub failed: usize,
    /// What the ledger must record or forget.
    pub changes: Vec<Change>,
    /// The writer gate closed during the pass (Lease not renewed, a cache went stale): the
    /// remaining actions were not carried out.
    pub interrupted: bool,
}

/// A revoked copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub why: Why,
}

/// How a write the API server refused is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 409: a precondition failed (the Secret changed or was swapped) or the name is taken;
    /// the next pass looks again.
    Conflict,
    /// 404: already gone.
    Gone,
    Failed,
}

/// Classifies an API error of a sync write.
pub fn refusal(error: &kube::Error) -> Refusal {
    match error {
        kube::Error::Api(status) if status.code == 409 => Refusal::Conflict,
        kube::Error::Api(status) if status.code == 404 => Refusal::Gone,
        _ => Refusal::Failed,
    }
}

/// Carries out `actions` while `may_write` says so (checked before each write). Errors are
/// logged and counted; the next pass retries. `reported` remembers foreign Secrets already
/// logged, so each is logged once. Secret data is never logged.
pub async fn apply(
    client: &kube::Client,
    own_namespace: &str,
    sources: &BTreeMap<String, Source>,
    actions: &[Action],
    reported: &mut HashSet<(String, String)>,
    may_write: &(dyn Fn() -> bool + Sync),
) -> Applied {
    let mut result = Applied::default();
    for (done, action) in actions.iter().enumerate() {
        if let Action::Foreign { namespace, name } = action {
            if reported.insert((namespace.clone(), name.clone())) {
                result.conflicts += 1;
                tracing::warn!(
                    namespace = %namespace,
                    secret = %name,
                    "a Secret with this name exists that pullsecret-injector did not create (its UID is not in the ledger, whatever its marks); not touching it"
                );
            }
            continue;
        }
        if !may_write() {
            tracing::warn!(
                remaining = actions.len() - done,
                "sync stopped mid-pass: this replica no longer holds the Lease, or a cache is stale"
            );
            result.interrupted = true;
            break;
        }
        match action {
            Action::Foreign { .. } => {}
            Action::Adopt {
                namespace,
                name,
                uid,
            } => {
                tracing::info!(namespace = %namespace, secret = %name, "adopted an existing copy into the ledger (first start with one; its data is exactly its source's)");
                result.changes.push(Change::Record {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    uid: uid.clone(),
                });
            }
            Action::Forget {
                namespace,
                name,
                uid,
            } => result.changes.push(Change::Forget {
                namespace: namespace.clone(),
                name: name.clone(),
                uid: uid.clone(),
            }),
            Action::Create { namespace, source } => {
                let Some(source) = sources.get(source) else {
                    continue;
                };
                let Some(copy) = typed(source, own_namespace, namespace, None, &mut result) else {
                    continue;
                };
                let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
                match api.create(&PostParams::default(), &copy).await {
                    Ok(created) => {
                        let name = source.secret.name.clone();
                        match created.metadata.uid {
                            Some(uid) if !uid.is_empty() => {
                                result.changes.push(Change::Record {
                                    namespace: namespace.clone(),
                                    name: name.clone(),
                                    uid,
                                });
                            }
                            _ => {
                                tracing::warn!(namespace = %namespace, secret = %name, "the created copy has no UID; it cannot be recorded as ours");
                            }
                        }
                        tracing::info!(namespace = %namespace, secret = %name, "created Secret copy");
                        result.written += 1;
                    }
                    // A Secret of that name exists that the cache does not hold: one of
                    // another type (only docker config Secrets are watched), or our own copy,
                    // just written, that the watch has not delivered yet. Either way it is
                    // not overwritten; the next pass knows more.
                    Err(e) if refusal(&e) == Refusal::Conflict => {
                        if reported.insert((namespace.clone(), source.secret.name.clone())) {
                            result.conflicts += 1;
                            tracing::info!(namespace = %namespace, secret = %source.secret.name, "a Secret with this name already exists; not overwriting it");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(namespace = %namespace, secret = %source.secret.name, error = %e, "creating the Secret copy failed; will retry");
                        result.failed += 1;
                    }
                }
            }
            Action::Update {
                namespace,
                source,
                uid,
                resource_version,
                restore,
            } => {
                let Some(source) = sources.get(source) else {
                    continue;
                };
                let current = Some((uid.as_str(), resource_version.as_str()));
                let Some(copy) = typed(source, own_namespace, namespace, current, &mut result)
                else {
                    continue;
                };
                let name = &source.secret.name;
                let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
                match api.replace(name, &PostParams::default(), &copy).await {
                    Ok(_) if *restore => {
                        tracing::warn!(namespace = %namespace, secret = %name, "restored a Secret copy someone had changed (data, label or source annotation); same UID");
                        result.restored += 1;
                    }
                    Ok(_) => {
                        tracing::info!(namespace = %namespace, secret = %name, "updated Secret copy in place");
                        result.written += 1;
                    }
                    Err(e) => match refusal(&e) {
                        Refusal::Conflict => {
                            tracing::info!(namespace = %namespace, secret = %name, "the copy changed (or was replaced) since it was read; looking again next pass");
                            result.conflicts += 1;
                        }
                        // Gone: the next pass creates it again.
                        Refusal::Gone => {}
                        Refusal::Failed => {
                            tracing::warn!(namespace = %namespace, secret = %name, error = %e, "updating the Secret copy failed; will retry");
                            result.failed += 1;
                        }
                    },
                }
            }
            Action::Delete {
                namespace,
                name,
                uid,
                why,
            } => {
                let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
                let params = DeleteParams {
                    preconditions: Some(Preconditions {
                        uid: Some(uid.clone()),
                        resource_version: None,
                    }),
                    ..DeleteParams::default()
                };
                let forget = Change::Forget {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    uid: uid.clone(),
                };
                let outcome = match api.delete(name, &params).await {
                    Ok(_) => Ok(()),
                    Err(e) => Err((refusal(&e), e)),
                };
                match outcome {
                    Ok(()) | Err((Refusal::Gone, _)) => {
                        result.changes.push(forget);
                        if why.revokes() {
                            result.revoked.push(Revoked {
                                namespace: namespace.clone(),
                                name: name.clone(),
                                uid: uid.clone(),
                                why: *why,
                            });
                        } else {
                            tracing::info!(namespace = %namespace, secret = %name, why = why.describe(), "removed Secret copy");
                            result.deleted += 1;
                        }
                    }
                    Err((Refusal::Conflict, _)) => {
                        tracing::info!(namespace = %namespace, secret = %name, "the Secret at this name is not the copy that was read (another UID); not deleting it, looking again next pass");
                        result.conflicts += 1;
                    }
                    Err((_, e)) => {
                        tracing::warn!(namespace = %namespace, secret = %name, error = %e, "removing the Secret copy failed; will retry");
                        result.failed += 1;
                    }
                }
            }
        }
    }
    result
}

/// The copy as a typed Secret (counted as failed when the source cannot be copied).
fn typed(
    source: &Source,
    own_namespace: &str,
    namespace: &str,
    current: Option<(&str, &str)>,
    result: &mut Applied,
) -> Option<Secret> {
    match serde_json::from_value::<Secret>(copy_of(source, own_namespace, namespace, current)) {
        Ok(copy) => Some(copy),
        Err(e) => {
            tracing::warn!(secret = %source.secret.name, error = %e, "source Secret cannot be copied");
            result.failed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::config::Selection;
    use crate::core::dockercfg::SourceSecret;
    use crate::core::names::{DOCKER_CFG, DOCKER_CONFIG_JSON};
    use crate::core::rules::{RegistryPattern, Rule, RuleSource};
    use crate::core::scope::{NamePattern, Scope, Selector};

    const NONE: &str = "";

    /// (rule scope, source scope, requireScope, namespace, its labels, copied there)
    type ScopeCase = (
        Scope,
        Scope,
        bool,
        &'static str,
        &'static [(&'static str, &'static str)],
        bool,
    );
    /// (what, the Secret seen, the ledger's UID for it, the plan)
    type OwnershipCase = (
        &'static str,
        Option<CopyEntry>,
        Option<&'static str>,
        Vec<Action>,
    );

    /// A scope: `names` comma-separated ("" none), `selector` kubectl syntax ("" none).
    fn scope(names: &str, selector: &str) -> Scope {
        let names = (!names.is_empty()).then(|| {
            names
                .split(',')
                .map(|n| NamePattern::parse(n).expect("valid"))
                .collect()
        });
        let selector = (!selector.is_empty()).then(|| Selector::parse(selector).expect("valid"));
        Scope::new(names, selector)
    }

    fn rule(secrets: &[&str], scope: Scope) -> Rule {
        Rule {
            pattern: RegistryPattern::parse("docker.io").expect("valid"),
            secrets: secrets.iter().map(|s| s.to_string()).collect(),
            pull_policy_always: false,
            source: RuleSource::Config { index: 0 },
            scope,
        }
    }

    fn rules(secrets: &[&str]) -> RuleSet {
        RuleSet::new(vec![rule(secrets, Scope::everywhere())])
    }

    fn source_full(name: &str, rv: &str, kind: &str, scope: Scope) -> (String, Source) {
        let key = copies::docker_key(kind).unwrap_or(".dockerconfigjson");
        let mut data = serde_json::Map::new();
        data.insert(key.into(), Value::from(format!("{name}+e30=")));
        data.insert("extra".into(), Value::from("bm90"));
        (
            name.to_string(),
            Source {
                resource_version: rv.into(),
                secret: SourceSecret {
                    name: name.into(),
                    kind: kind.into(),
                    data,
                },
                scope,
                scope_error: None,
                probe_annotation: None,
                expiry: Default::default(),
            },
        )
    }

    fn source(name: &str, rv: &str) -> (String, Source) {
        source_full(name, rv, DOCKER_CONFIG_JSON, Scope::everywhere())
    }

    fn ns(name: &str, label: NamespaceLabel, labels: &[(&str, &str)]) -> Namespace {
        Namespace {
            name: name.into(),
            label,
            labels: Arc::new(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
        }
    }

    fn enabled(name: &str) -> Namespace {
        ns(name, NamespaceLabel::Enabled, &[])
    }

    /// The hash of what a copy of `source` holds.
    fn good_hash(source: &Source) -> u64 {
        copies::data_hash(&copies::copy_data(&source.secret))
    }

    /// A copy as the copies watch sees it: ours-looking marks, data of `source` at `version`.
    fn copy(uid: &str, version: &str, hash: u64) -> CopyEntry {
        CopyEntry {
            uid: uid.into(),
            resource_version: format!("rv-{uid}"),
            labelled: true,
            source: Some("psi/regcred".into()),
            source_version: Some(version.into()),
            data_hash: hash,
        }
    }

    fn existing(namespace: &str, name: &str, copy: Option<CopyEntry>) -> Existing {
        Existing {
            namespace: namespace.into(),
            name: name.into(),
            copy,
        }
    }

    fn ledger(entries: &[(&str, &str, &str)]) -> Ledger {
        let mut ledger = Ledger::default();
        for (namespace, name, uid) in entries {
            ledger.apply(&Change::Record {
                namespace: namespace.to_string(),
                name: name.to_string(),
                uid: uid.to_string(),
            });
        }
        ledger
    }

    struct Case {
        settings: Settings,
        rules: RuleSet,
        namespaces: Vec<Namespace>,
        sources: BTreeMap<String, Source>,
        existing: Vec<Existing>,
        ledger: Ledger,
        adopt: bool,
    }

    impl Default for Case {
        fn default() -> Self {
            Self {
                settings: Settings::default(),
                rules: rules(&["regcred"]),
                namespaces: vec![],
                sources: [source("regcred", "7")].into(),
                existing: vec![],
                ledger: Ledger::default(),
                adopt: false,
            }
        }
    }

    impl Case {
        fn plan(&self) -> Vec<Action> {
            let mut got = plan(&Inputs {
                settings: &self.settings,
                rules: &self.rules,
                own_namespace: "psi",
                namespaces: &self.namespaces,
                sources: &self.sources,
                existing: &self.existing,
                ledger: &self.ledger,
                adopt: self.adopt,
            });
            got.sort_by_key(|a| format!("{a:?}"));
            got
        }
    }

    fn create(namespace: &str) -> Action {
        Action::Create {
            namespace: namespace.into(),
            source: "regcred".into(),
        }
    }

    fn update(namespace: &str, uid: &str, restore: bool) -> Action {
        Action::Update {
            namespace: namespace.into(),
            source: "regcred".into(),
            uid: uid.into(),
            resource_version: format!("rv-{uid}"),
            restore,
        }
    }

    fn delete(namespace: &str, uid: &str, why: Why) -> Action {
        Action::Delete {
            namespace: namespace.into(),
            name: "regcred".into(),
            uid: uid.into(),
            why,
        }
    }

    fn foreign(namespace: &str) -> Action {
        Action::Foreign {
            namespace: namespace.into(),
            name: "regcred".into(),
        }
    }

    fn sorted(mut actions: Vec<Action>) -> Vec<Action> {
        actions.sort_by_key(|a| format!("{a:?}"));
        actions
    }

    #[test]
    fn copies_go_only_where_the_source_and_a_rule_naming_it_allow() {
        const TEAM_A: &[(&str, &str)] = &[("team", "a")];
        const TEAM_B: &[(&str, &str)] = &[("team", "b")];
        const NO_LABELS: &[(&str, &str)] = &[];
        // (rule scope, source scope, requireScope, namespace, its labels, copied there)
        let cases: Vec<ScopeCase> = vec![
            // No scope anywhere: every injected namespace (as before).
            (
                scope(NONE, NONE),
                scope(NONE, NONE),
                false,
                "team-a",
                TEAM_A,
                true,
            ),
            (
                scope(NONE, NONE),
                scope(NONE, NONE),
                false,
                "x",
                NO_LABELS,
                true,
            ),
            // requireScope: undeclared on either side serves nowhere.
            (
                scope(NONE, NONE),
                scope(NONE, NONE),
                true,
                "team-a",
                TEAM_A,
                false,
            ),
            (
                scope("team-a", NONE),
                scope(NONE, NONE),
                true,
                "team-a",
                TEAM_A,
                false,
            ),
            (
                scope(NONE, NONE),
                scope("team-a", NONE),
                true,
                "team-a",
                TEAM_A,
                false,
            ),
            (
                scope("team-a", NONE),
                scope("team-*", NONE),
                true,
                "team-a",
                TEAM_A,
                true,
            ),
            // Rule names and globs.
            (
                scope("team-a", NONE),
                scope(NONE, NONE),
                false,
                "team-a",
                TEAM_A,
                true,
            ),
            (
                scope("team-a", NONE),
                scope(NONE, NONE),
                false,
                "team-b",
                TEAM_B,
                false,
            ),
            (
                scope("team-*", NONE),
                scope(NONE, NONE),
                false,
                "team-b",
                TEAM_B,
                true,
            ),
            (
                scope("team-*", NONE),
                scope(NONE, NONE),
                false,
                "other",
                TEAM_A,
                false,
            ),
            // Rule selector: labels decide; no labels never match.
            (
                scope(NONE, "team=a"),
                scope(NONE, NONE),
                false,
                "anything",
                TEAM_A,
                true,
            ),
            (
                scope(NONE, "team=a"),
                scope(NONE, NONE),
                false,
                "anything",
                TEAM_B,
                false,
            ),
            (
                scope(NONE, "team=a"),
                scope(NONE, NONE),
                false,
                "anything",
                NO_LABELS,
                false,
            ),
            (
                scope(NONE, "team notin (b)"),
                scope(NONE, NONE),
                false,
                "x",
                NO_LABELS,
                true,
            ),
            (
                scope(NONE, "!team"),
                scope(NONE, NONE),
                false,
                "x",
                TEAM_A,
                false,
            ),
            // Both on a rule: both must match.
            (
                scope("team-a", "team=a"),
                scope(NONE, NONE),
                false,
                "team-a",
                TEAM_A,
                true,
            ),
            (
                scope("team-a", "team=a"),
                scope(NONE, NONE),
                false,
                "team-a",
                TEAM_B,
                false,
            ),
            (
                scope("team-a", "team=a"),
                scope(NONE, NONE),
                false,
                "team-b",
                TEAM_A,
                false,
            ),
            // The source's own scope narrows the rule's.
            (
                scope(NONE, NONE),
                scope("team-b", NONE),
                false,
                "team-a",
                TEAM_A,
                false,
            ),
            (
                scope(NONE, NONE),
                scope(NONE, "team=b"),
                false,
                "team-b",
                TEAM_B,
                true,
            ),
            (
                scope("team-*", NONE),
                scope(NONE, "team=b"),
                false,
                "team-a",
                TEAM_A,
                false,
            ),
            (
                scope(NONE, NONE),
                Scope::nowhere(),
                false,
                "team-a",
                TEAM_A,
                false,
            ),
            (
                Scope::nowhere(),
                scope(NONE, NONE),
                false,
                "team-a",
                TEAM_A,
                false,
            ),
        ];
        for (i, (rule_scope, source_scope, require, namespace, labels, copied)) in
            cases.into_iter().enumerate()
        {
            let case = Case {
                settings: Settings {
                    require_scope: require,
                    ..Settings::default()
                },
                rules: RuleSet::new(vec![rule(&["regcred"], rule_scope.clone())]),
                namespaces: vec![ns(namespace, NamespaceLabel::Enabled, labels)],
                sources: [source_full(
                    "regcred",
                    "7",
                    DOCKER_CONFIG_JSON,
                    source_scope.clone(),
                )]
                .into(),
                ..Case::default()
            };
            let want = if copied {
                vec![create(namespace)]
            } else {
                vec![]
            };
            assert_eq!(
                case.plan(),
                want,
                "case {i}: rule {} source {} require {require} in {namespace} {labels:?}",
                rule_scope.describe(),
                source_scope.describe()
            );
        }
    }

    #[test]
    fn one_rule_in_scope_naming_the_source_is_enough() {
        let case = Case {
            rules: RuleSet::new(vec![
                rule(&["regcred"], scope("team-a", NONE)),
                rule(&["regcred", "other"], scope("team-b", NONE)),
                // A rule in scope that does not name the source does not help.
                rule(&["other"], scope("team-c", NONE)),
            ]),
            namespaces: vec![enabled("team-a"), enabled("team-b"), enabled("team-c")],
            ..Case::default()
        };
        assert_eq!(case.plan(), [create("team-a"), create("team-b")]);
    }

    #[test]
    fn only_injected_namespaces_get_copies() {
        let all = Settings {
            selection: Selection::All,
            ..Settings::default()
        };
        let namespaces = vec![
            ns("a", NamespaceLabel::Unlabelled, &[]),
            ns("b", NamespaceLabel::Disabled, &[]),
            ns("c", NamespaceLabel::Audit, &[]),
            ns("kube-public", NamespaceLabel::Unlabelled, &[]),
            ns("psi", NamespaceLabel::Enabled, &[]),
            ns("d", NamespaceLabel::Enabled, &[]),
        ];
        let case = Case {
            settings: all,
            namespaces: namespaces.clone(),
            ..Case::default()
        };
        assert_eq!(case.plan(), [create("a"), create("d")]);
        let opt_in = Case {
            namespaces,
            ..Case::default()
        };
        assert_eq!(opt_in.plan(), [create("d")]);
    }

    #[test]
    fn only_docker_config_sources_are_copied() {
        let case = Case {
            rules: rules(&["regcred", "legacy", "webhook-tls"]),
            sources: [
                source("regcred", "1"),
                source_full("legacy", "1", DOCKER_CFG, Scope::everywhere()),
                source_full("webhook-tls", "1", "kubernetes.io/tls", Scope::everywhere()),
            ]
            .into(),
            namespaces: vec![enabled("a")],
            ..Case::default()
        };
        assert_eq!(
            case.plan(),
            [
                Action::Create {
                    namespace: "a".into(),
                    source: "legacy".into()
                },
                create("a"),
            ]
        );
    }

    #[test]
    fn ownership_is_the_ledger_uid_never_the_marks() {
        let (_, s) = source("regcred", "7");
        let good = good_hash(&s);
        let bad = good ^ 1;
        let stripped = CopyEntry {
            labelled: false,
            ..copy("u1", "7", good)
        };
        let annotation_changed = CopyEntry {
            source: Some("psi/other".into()),
            ..copy("u1", "7", good)
        };
        // (the Secret at team-a/regcred, the ledger's UID for it, the plan)
        let cases: Vec<OwnershipCase> = vec![
            ("absent, never created", None, None, vec![]),
            (
                "current copy",
                Some(copy("u1", "7", good)),
                Some("u1"),
                vec![],
            ),
            (
                "source changed",
                Some(copy("u1", "6", bad)),
                Some("u1"),
                vec![update("team-a", "u1", false)],
            ),
            (
                "data tampered",
                Some(copy("u1", "7", bad)),
                Some("u1"),
                vec![update("team-a", "u1", true)],
            ),
            (
                "label stripped (read back)",
                Some(stripped.clone()),
                Some("u1"),
                vec![update("team-a", "u1", true)],
            ),
            (
                "source annotation changed",
                Some(annotation_changed),
                Some("u1"),
                vec![update("team-a", "u1", true)],
            ),
            (
                "forged marks, not in the ledger",
                Some(copy("u9", "7", bad)),
                None,
                vec![foreign("team-a")],
            ),
            (
                "forged marks and exact data, not in the ledger",
                Some(copy("u9", "7", good)),
                None,
                vec![foreign("team-a")],
            ),
            (
                "swapped in (another UID than the ledger's)",
                Some(copy("u2", "6", bad)),
                Some("u1"),
                vec![foreign("team-a")],
            ),
            (
                "unmarked Secret at the name",
                Some(stripped.clone()),
                None,
                vec![foreign("team-a")],
            ),
            ("unmarked, unread", None, None, vec![foreign("team-a")]),
            (
                "the ledger names it, not read yet: wait",
                None,
                Some("u1"),
                vec![],
            ),
        ];
        for (what, observed, owner, want) in cases {
            let mut existing_secrets = vec![];
            if what != "absent, never created" {
                existing_secrets.push(existing("team-a", "regcred", observed));
            }
            let case = Case {
                namespaces: vec![enabled("team-a")],
                existing: existing_secrets,
                ledger: owner
                    .map_or_else(Ledger::default, |uid| ledger(&[("team-a", "regcred", uid)])),
                ..Case::default()
            };
            let want = if what == "absent, never created" {
                vec![create("team-a")]
            } else {
                want
            };
            assert_eq!(case.plan(), want, "{what}");
        }
    }

    #[test]
    fn forged_marks_are_never_acted_on_out_of_scope_either() {
        // Marked Secrets the injector did not create, where a copy would be deleted: only
        // reported, never deleted; a marked Secret under an unrelated name is reported too.
        let (_, s) = source("regcred", "7");
        let case = Case {
            rules: RuleSet::new(vec![rule(&["regcred"], scope("team-a", NONE))]),
            namespaces: vec![enabled("team-a"), enabled("team-b")],
            existing: vec![
                existing("team-a", "regcred", Some(copy("ours", "7", good_hash(&s)))),
                existing("team-b", "regcred", Some(copy("forged", "7", 0))),
                existing("team-b", "payroll-db", Some(copy("forged2", "1", 0))),
                // Unmarked, out of scope, not in the ledger: not our business at all.
                existing("team-b", "other", None),
            ],
            ledger: ledger(&[("team-a", "regcred", "ours")]),
            ..Case::default()
        };
        assert_eq!(
            case.plan(),
            sorted(vec![
                foreign("team-b"),
                Action::Foreign {
                    namespace: "team-b".into(),
                    name: "payroll-db".into()
                },
            ])
        );
    }

    #[test]
    fn copies_that_may_no_longer_be_there_are_revocations() {
        let (_, s) = source("regcred", "7");
        let good = good_hash(&s);
        let ours =
            |namespace: &str, uid: &str| existing(namespace, "regcred", Some(copy(uid, "7", good)));
        let case = Case {
            rules: RuleSet::new(vec![rule(&["regcred"], scope(NONE, "team"))]),
            namespaces: vec![
                ns("in", NamespaceLabel::Enabled, &[("team", "a")]),
                ns("left-scope", NamespaceLabel::Enabled, &[]),
                ns("not-injected", NamespaceLabel::Unlabelled, &[("team", "b")]),
                ns("audit", NamespaceLabel::Audit, &[("team", "b")]),
                ns("both", NamespaceLabel::Unlabelled, &[]),
            ],
            existing: vec![
                ours("in", "u1"),
                ours("left-scope", "u2"),
                ours("not-injected", "u3"),
                ours("audit", "u4"),
                ours("both", "u5"),
                // Its namespace is being deleted: it goes with it.
                ours("terminating", "u6"),
            ],
            ledger: ledger(&[
                ("in", "regcred", "u1"),
                ("left-scope", "regcred", "u2"),
                ("not-injected", "regcred", "u3"),
                ("audit", "regcred", "u4"),
                ("both", "regcred", "u5"),
                ("terminating", "regcred", "u6"),
            ]),
            ..Case::default()
        };
        assert_eq!(
            case.plan(),
            sorted(vec![
                delete("left-scope", "u2", Why::OutOfScope),
                delete("not-injected", "u3", Why::NotNeeded),
                delete("audit", "u4", Why::NotNeeded),
                delete("both", "u5", Why::OutOfScope),
            ])
        );
        // The source is gone, or no rule names it any more, or requireScope turned on.
        let gone = Case {
            sources: BTreeMap::new(),
            ..Case {
                namespaces: vec![enabled("a")],
                existing: vec![ours("a", "u1")],
                ledger: ledger(&[("a", "regcred", "u1")]),
                ..Case::default()
            }
        };
        assert_eq!(gone.plan(), [delete("a", "u1", Why::SourceGone)]);
        let unnamed = Case {
            rules: rules(&["other"]),
            ..Case {
                namespaces: vec![enabled("a")],
                existing: vec![ours("a", "u1")],
                ledger: ledger(&[("a", "regcred", "u1")]),
                ..Case::default()
            }
        };
        assert_eq!(unnamed.plan(), [delete("a", "u1", Why::OutOfScope)]);
        let required = Case {
            settings: Settings {
                require_scope: true,
                ..Settings::default()
            },
            namespaces: vec![enabled("a")],
            existing: vec![ours("a", "u1")],
            ledger: ledger(&[("a", "regcred", "u1")]),
            ..Case::default()
        };
        assert_eq!(required.plan(), [delete("a", "u1", Why::OutOfScope)]);
        assert!(Why::OutOfScope.revokes() && Why::SourceGone.revokes());
        assert!(!Why::NotNeeded.revokes());
    }

    #[test]
    fn adoption_on_an_empty_ledger_needs_the_marks_and_the_exact_data() {
        let (_, s) = source("regcred", "7");
        let good = good_hash(&s);
        let case = Case {
            namespaces: vec![enabled("a"), enabled("b"), enabled("c"), enabled("d")],
            existing: vec![
                existing("a", "regcred", Some(copy("ua", "6", good))),
                existing("b", "regcred", Some(copy("ub", "7", good ^ 1))),
                existing(
                    "c",
                    "regcred",
                    Some(CopyEntry {
                        labelled: false,
                        ..copy("uc", "7", good)
                    }),
                ),
                existing(
                    "d",
                    "regcred",
                    Some(CopyEntry {
                        source: Some("elsewhere/regcred".into()),
                        ..copy("ud", "7", good)
                    }),
                ),
            ],
            adopt: true,
            ..Case::default()
        };
        assert_eq!(
            case.plan(),
            sorted(vec![
                Action::Adopt {
                    namespace: "a".into(),
                    name: "regcred".into(),
                    uid: "ua".into()
                },
                // Adopted, then updated like any copy of ours (the source moved on).
                update("a", "ua", false),
                foreign("b"),
                foreign("c"),
                foreign("d"),
            ])
        );
        let no_adoption = Case {
            adopt: false,
            ..case
        };
        assert_eq!(
            no_adoption.plan(),
            sorted(vec![foreign("a"), foreign("b"), foreign("c"), foreign("d")])
        );
    }

    #[test]
    fn ledger_entries_of_namespaces_that_are_gone_are_forgotten() {
        let case = Case {
            namespaces: vec![enabled("a")],
            // a/regcred: our copy was deleted by someone: created again (a new UID replaces
            // the entry). gone/regcred: the namespace is gone.
            ledger: ledger(&[("a", "regcred", "u1"), ("gone", "regcred", "u2")]),
            ..Case::default()
        };
        assert_eq!(
            case.plan(),
            [
                create("a"),
                Action::Forget {
                    namespace: "gone".into(),
                    name: "regcred".into(),
                    uid: "u2".into()
                },
            ]
        );
    }

    #[test]
    fn copies_carry_the_marks_the_docker_key_only_and_the_preconditions() {
        let (_, s) = source("regcred", "9");
        let copy = copy_of(&s, "psi", "team-a", None);
        assert_eq!(copy["metadata"]["labels"][MANAGED_BY_LABEL], MANAGED_BY);
        assert_eq!(
            copy["metadata"]["annotations"][SOURCE_ANNOTATION],
            "psi/regcred"
        );
        assert_eq!(
            copy["metadata"]["annotations"][SOURCE_VERSION_ANNOTATION],
            "9"
        );
        assert_eq!(copy["data"], json!({".dockerconfigjson": "regcred+e30="}));
        assert!(copy["metadata"].get("uid").is_none());
        assert!(copy["metadata"].get("resourceVersion").is_none());
        let typed: Secret = serde_json::from_value(copy).expect("a valid Secret");
        assert_eq!(
            typed.type_.as_deref(),
            Some("kubernetes.io/dockerconfigjson")
        );
        let replace = copy_of(&s, "psi", "team-a", Some(("u1", "42")));
        assert_eq!(replace["metadata"]["uid"], "u1");
        assert_eq!(replace["metadata"]["resourceVersion"], "42");
        let (_, legacy) = source_full("old", "1", DOCKER_CFG, Scope::everywhere());
        assert_eq!(
            copy_of(&legacy, "psi", "a", None)["data"],
            json!({".dockercfg": "old+e30="})
        );
    }

    #[test]
    fn refusals_409_conflict_404_gone() {
        let status = |code| {
            kube::Error::Api(
                kube::core::Status::failure("x", "y")
                    .with_code(code)
                    .boxed(),
            )
        };
        assert_eq!(refusal(&status(409)), Refusal::Conflict);
        assert_eq!(refusal(&status(404)), Refusal::Gone);
        assert_eq!(refusal(&status(500)), Refusal::Failed);
        assert_eq!(refusal(&status(422)), Refusal::Failed);
    }
}

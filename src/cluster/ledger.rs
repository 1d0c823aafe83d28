//! The ledger of copies: which Secrets outside its namespace sync created, by UID.
//!
//! Marks on a Secret (the `app.kubernetes.io/managed-by` label, the source annotations) prove
//! nothing: anyone who may write Secrets in a namespace can put them on any Secret there. What
//! proves that a Secret is a copy the injector made is its UID in this ledger: a ConfigMap in
//! the injector's own namespace, named `<lease-name>-copies`, that tenants cannot write. Its
//! data maps `<namespace>.<name>` (a namespace name has no dot, so the first dot splits) to the
//! UID the API server gave the copy when sync created it. Sync updates, restores and deletes
//! only Secrets whose UID is recorded here; a Secret of the same name with another UID (a
//! Secret swapped in) is never touched.
//!
//! The ledger is read when this replica becomes the writer (created empty when absent) and
//! written after the creates and deletes of a pass, batched, with the ConfigMap's
//! resourceVersion as a precondition; on a conflict it is read again and the pass's changes
//! are merged onto what was read ([`merged`], pure). Changes that could not be written stay
//! pending in memory and are merged into the next write. A copy created by a replica that
//! stopped before writing the ledger is not recorded: it is reported as a Secret the injector
//! did not create, never touched (an administrator deletes it).
//!
//! A ConfigMap holds at most 1 MiB: about ten thousand copies.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ObjectMeta, PostParams};

use crate::core::names::{MANAGED_BY, MANAGED_BY_LABEL};

/// `(namespace, name)` of a copy.
pub type Key = (String, String);

/// The copies sync created: UID by namespace and name, with the ConfigMap's resourceVersion
/// it was read at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ledger {
    entries: BTreeMap<Key, String>,
    resource_version: Option<String>,
}

/// One change a pass made to the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A copy was created (or adopted) with this UID.
    Record {
        namespace: String,
        name: String,
        uid: String,
    },
    /// The copy with this UID is gone; only that UID's entry is removed.
    Forget {
        namespace: String,
        name: String,
        uid: String,
    },
}

impl Ledger {
    /// The ledger in a ConfigMap's data. Keys that do not name a namespace and a Secret are
    /// returned apart (and dropped at the next write).
    pub fn from_data(
        data: Option<&BTreeMap<String, String>>,
        resource_version: Option<String>,
    ) -> (Self, Vec<String>) {
        let mut entries = BTreeMap::new();
        let mut bad = Vec::new();
        for (key, uid) in data.into_iter().flatten() {
            match parse_key(key) {
                Some(k) if !uid.is_empty() => {
                    entries.insert(k, uid.clone());
                }
                _ => bad.push(key.clone()),
            }
        }
        (
            Self {
                entries,
                resource_version,
            },
            bad,
        )
    }

    /// The ConfigMap data of this ledger.
    pub fn to_data(&self) -> BTreeMap<String, String> {
        self.entries
            .iter()
            .map(|((namespace, name), uid)| (key(namespace, name), uid.clone()))
            .collect()
    }

    /// The UID of the copy sync created at `namespace/name`, if any.
    pub fn owner(&self, namespace: &str, name: &str) -> Option<&str> {
        self.entries
            .get(&(namespace.to_string(), name.to_string()))
            .map(String::as_str)
    }

    /// Whether the Secret `namespace/name` with `uid` is a copy sync created.
    pub fn owns(&self, namespace: &str, name: &str, uid: &str) -> bool {
        !uid.is_empty() && self.owner(namespace, name) == Some(uid)
    }

    pub fn entries(&self) -> impl Iterator<Item = (&Key, &str)> {
        self.entries.iter().map(|(k, v)| (k, v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn apply(&mut self, change: &Change) {
        match change {
            Change::Record {
                namespace,
                name,
                uid,
            } => {
                self.entries
                    .insert((namespace.clone(), name.clone()), uid.clone());
            }
            Change::Forget {
                namespace,
                name,
                uid,
            } => {
                let key = (namespace.clone(), name.clone());
                if self.entries.get(&key) == Some(uid) {
                    self.entries.remove(&key);
                }
            }
        }
    }
}

/// `remote` (just read) with `pending` applied in order: what to write after a conflict, or
/// after a new term began with changes not yet written. A `Forget` removes only the UID it
/// names, so it never drops an entry someone recorded since.
pub fn merged(mut remote: Ledger, pending: &[Change]) -> Ledger {
    for change in pending {
        remote.apply(change);
    }
    remote
}

/// The ledger key of a copy.
pub fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}.{name}")
}

fn parse_key(key: &str) -> Option<Key> {
    let (namespace, name) = key.split_once('.')?;
    (!namespace.is_empty() && !name.is_empty()).then(|| (namespace.into(), name.into()))
}

/// Where the ledger is kept: the ConfigMap `name` of the injector's namespace.
pub struct LedgerStore {
    api: Api<ConfigMap>,
    name: String,
}

/// How many times a write is tried against concurrent changes before the pass gives up (the
/// changes stay pending for the next pass).
const WRITE_ATTEMPTS: usize = 3;

impl LedgerStore {
    pub fn new(client: kube::Client, namespace: &str, name: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads the ledger, creating it empty when absent. `true` when this call created it.
    pub async fn load(&self) -> Result<(Ledger, bool), kube::Error> {
        if let Some(map) = self.api.get_opt(&self.name).await? {
            return Ok((self.read(&map), false));
        }
        let empty = ConfigMap {
            metadata: self.meta(None),
            ..ConfigMap::default()
        };
        match self.api.create(&PostParams::default(), &empty).await {
            Ok(map) => Ok((self.read(&map), true)),
            // Created meanwhile (another replica): read it.
            Err(kube::Error::Api(status)) if status.code == 409 => {
                let map = self.api.get(&self.name).await?;
                Ok((self.read(&map), false))
            }
            Err(e) => Err(e),
        }
    }

    fn read(&self, map: &ConfigMap) -> Ledger {
        let (ledger, bad) =
            Ledger::from_data(map.data.as_ref(), map.metadata.resource_version.clone());
        for key in bad {
            tracing::warn!(configmap = %self.name, key = %key, "ledger entry that names no copy; dropped at the next write");
        }
        ledger
    }

    fn meta(&self, resource_version: Option<String>) -> ObjectMeta {
        ObjectMeta {
            name: Some(self.name.clone()),
            labels: Some(BTreeMap::from([(
                MANAGED_BY_LABEL.to_string(),
                MANAGED_BY.to_string(),
            )])),
            resource_version,
            ..ObjectMeta::default()
        }
    }

    /// Writes `ledger` (which already holds `pending`) with its resourceVersion as a
    /// precondition. On a conflict (or if the ConfigMap went away) reads it again, merges
    /// `pending` onto it, and tries again. On success `ledger` is what was written.
    pub async fn commit(&self, ledger: &mut Ledger, pending: &[Change]) -> Result<(), String> {
        for _ in 0..WRITE_ATTEMPTS {
            let map = ConfigMap {
                metadata: self.meta(ledger.resource_version.clone()),
                data: Some(ledger.to_data()),
                ..ConfigMap::default()
            };
            match self
                .api
                .replace(&self.name, &PostParams::default(), &map)
                .await
            {
                Ok(written) => {
                    ledger.resource_version = written.metadata.resource_version;
                    return Ok(());
                }
                Err(kube::Error::Api(status)) if status.code == 409 || status.code == 404 => {
                    let (remote, _) = self.load().await.map_err(|e| e.to_string())?;
                    *ledger = merged(remote, pending);
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        Err(format!(
            "the ConfigMap kept changing ({WRITE_ATTEMPTS} attempts)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(namespace: &str, name: &str, uid: &str) -> Change {
        Change::Record {
            namespace: namespace.into(),
            name: name.into(),
            uid: uid.into(),
        }
    }

    fn forget(namespace: &str, name: &str, uid: &str) -> Change {
        Change::Forget {
            namespace: namespace.into(),
            name: name.into(),
            uid: uid.into(),
        }
    }

    #[test]
    fn reads_and_writes_namespace_dot_name_keys() {
        let data = BTreeMap::from([
            ("team-a.regcred".to_string(), "u1".to_string()),
            ("team-a.reg.v2".to_string(), "u2".to_string()),
            ("no-dot".to_string(), "u3".to_string()),
            (".x".to_string(), "u4".to_string()),
            ("team-b.empty-uid".to_string(), String::new()),
        ]);
        let (ledger, bad) = Ledger::from_data(Some(&data), Some("5".into()));
        assert_eq!(ledger.owner("team-a", "regcred"), Some("u1"));
        // A Secret name may hold dots; the namespace never does.
        assert_eq!(ledger.owner("team-a", "reg.v2"), Some("u2"));
        assert_eq!(ledger.len(), 2);
        assert_eq!(bad, [".x", "no-dot", "team-b.empty-uid"]);
        assert_eq!(
            ledger.to_data(),
            BTreeMap::from([
                ("team-a.reg.v2".to_string(), "u2".to_string()),
                ("team-a.regcred".to_string(), "u1".to_string()),
            ])
        );
        let (empty, bad) = Ledger::from_data(None, None);
        assert!(empty.is_empty() && bad.is_empty());
    }

    #[test]
    fn ownership_is_the_recorded_uid_only() {
        let mut ledger = Ledger::default();
        ledger.apply(&record("a", "regcred", "u1"));
        assert!(ledger.owns("a", "regcred", "u1"));
        assert!(!ledger.owns("a", "regcred", "u2"), "a swapped Secret");
        assert!(!ledger.owns("b", "regcred", "u1"), "another namespace");
        assert!(!ledger.owns("a", "other", "u1"));
        assert!(!ledger.owns("a", "regcred", ""));
        // Forgetting another UID leaves the entry.
        ledger.apply(&forget("a", "regcred", "u0"));
        assert!(ledger.owns("a", "regcred", "u1"));
        ledger.apply(&forget("a", "regcred", "u1"));
        assert!(ledger.is_empty());
    }

    #[test]
    fn a_conflict_merges_the_pending_changes_onto_what_was_read() {
        // Read at version 1: a/regcred u1, b/regcred u2.
        let (remote, _) = Ledger::from_data(
            Some(&BTreeMap::from([
                ("a.regcred".to_string(), "u1".to_string()),
                ("b.regcred".to_string(), "u2".to_string()),
                ("c.regcred".to_string(), "u9".to_string()),
            ])),
            Some("2".into()),
        );
        let pending = [
            record("d", "regcred", "u4"),
            forget("a", "regcred", "u1"),
            // Our view was older: c/regcred was recreated since (u9), forgetting u3 keeps u9.
            forget("c", "regcred", "u3"),
            record("b", "regcred", "u5"),
        ];
        let got = merged(remote, &pending);
        assert_eq!(got.resource_version.as_deref(), Some("2"));
        assert_eq!(
            got.to_data(),
            BTreeMap::from([
                ("b.regcred".to_string(), "u5".to_string()),
                ("c.regcred".to_string(), "u9".to_string()),
                ("d.regcred".to_string(), "u4".to_string()),
            ])
        );
    }
}

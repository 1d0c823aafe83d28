//! The copies as sync sees them: a full-object watch of the Secrets labelled
//! `app.kubernetes.io/managed-by=pullsecret-injector` (filtered by the API server), keeping of
//! each its UID, resourceVersion, marks and a keyed hash of its `data` — never the data itself.
//! Comparing that hash with the hash of what the copy should hold tells sync that a tenant
//! edited a copy (restored in place at the next pass).
//!
//! A copy whose labels a tenant stripped leaves this watch; sync still sees its name in the
//! credential Secret indexes and, when the ledger names it, reads it once ([`observe`]) to
//! learn whether it is still the copy it created (same UID) and restore it.
//!
//! What a copy holds: the source's docker config key only (`.dockerconfigjson` for
//! `kubernetes.io/dockerconfigjson`, `.dockercfg` for `kubernetes.io/dockercfg`), never the
//! source's other data keys ([`copy_data`]).

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::OnceLock;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::DynamicObject;
use serde_json::{Map, Value};

use crate::core::dockercfg::SourceSecret;
use crate::core::names::{
    DOCKER_CFG, DOCKER_CONFIG_JSON, MANAGED_BY, MANAGED_BY_LABEL, SOURCE_ANNOTATION,
    SOURCE_VERSION_ANNOTATION,
};

/// What sync keeps of a Secret that carries the injector's label (or that the ledger names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyEntry {
    pub uid: String,
    pub resource_version: String,
    /// Carries `app.kubernetes.io/managed-by=pullsecret-injector`.
    pub labelled: bool,
    /// The `pullsecret-injector/source` annotation.
    pub source: Option<String>,
    /// The `pullsecret-injector/source-version` annotation.
    pub source_version: Option<String>,
    /// [`data_hash`] of its `data`.
    pub data_hash: u64,
}

/// The index entry of a watched Secret (`None` without a UID).
pub fn entry(object: &DynamicObject) -> Option<CopyEntry> {
    observe(&object.metadata, &object.data)
}

/// What sync keeps of a Secret: its metadata and (body) its `data`, hashed.
pub fn observe(meta: &ObjectMeta, body: &Value) -> Option<CopyEntry> {
    let uid = meta.uid.clone().filter(|u| !u.is_empty())?;
    let annotation = |key: &str| meta.annotations.as_ref()?.get(key).cloned();
    let empty = Map::new();
    let data = body
        .get("data")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    Some(CopyEntry {
        uid,
        resource_version: meta.resource_version.clone().unwrap_or_default(),
        labelled: meta
            .labels
            .as_ref()
            .and_then(|l| l.get(MANAGED_BY_LABEL))
            .is_some_and(|v| v == MANAGED_BY),
        source: annotation(SOURCE_ANNOTATION),
        source_version: annotation(SOURCE_VERSION_ANNOTATION),
        data_hash: data_hash(data),
    })
}

/// The data key the kubelet reads for a docker config Secret type.
pub fn docker_key(kind: &str) -> Option<&'static str> {
    match kind {
        DOCKER_CONFIG_JSON => Some(".dockerconfigjson"),
        DOCKER_CFG => Some(".dockercfg"),
        _ => None,
    }
}

/// What a copy of `source` holds: its docker config key, nothing else.
pub fn copy_data(source: &SourceSecret) -> Map<String, Value> {
    let mut data = Map::new();
    if let Some(key) = docker_key(&source.kind)
        && let Some(value) = source.data.get(key)
    {
        data.insert(key.to_string(), value.clone());
    }
    data
}

/// A hash of a Secret's `data` (every key and value), keyed per process: equal data, equal
/// hash; it is compared in memory only, never exported.
pub fn data_hash(data: &Map<String, Value>) -> u64 {
    static KEYS: OnceLock<RandomState> = OnceLock::new();
    let mut hasher = KEYS.get_or_init(RandomState::new).build_hasher();
    let sorted: BTreeMap<&str, &Value> = data.iter().map(|(k, v)| (k.as_str(), v)).collect();
    for (key, value) in sorted {
        hasher.write(key.as_bytes());
        hasher.write_u8(0);
        match value {
            Value::String(s) => hasher.write(s.as_bytes()),
            other => hasher.write(other.to_string().as_bytes()),
        }
        hasher.write_u8(0xff);
    }
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn source(kind: &str, data: Value) -> SourceSecret {
        SourceSecret {
            name: "regcred".into(),
            kind: kind.into(),
            data: data.as_object().cloned().unwrap_or_default(),
        }
    }

    #[test]
    fn a_copy_holds_only_the_docker_config_key_of_its_type() {
        let cases = [
            (
                DOCKER_CONFIG_JSON,
                json!({".dockerconfigjson": "e30=", "extra": "c2VjcmV0", ".dockercfg": "e30="}),
                json!({".dockerconfigjson": "e30="}),
            ),
            (
                DOCKER_CFG,
                json!({".dockercfg": "e30=", ".dockerconfigjson": "e30=", "token": "dA=="}),
                json!({".dockercfg": "e30="}),
            ),
            (DOCKER_CONFIG_JSON, json!({"other": "e30="}), json!({})),
            ("Opaque", json!({".dockerconfigjson": "e30="}), json!({})),
        ];
        for (kind, data, want) in cases {
            assert_eq!(
                Value::Object(copy_data(&source(kind, data.clone()))),
                want,
                "{kind} {data}"
            );
        }
    }

    #[test]
    fn the_hash_tells_equal_data_from_edited_data() {
        let map = |v: Value| v.as_object().cloned().unwrap_or_default();
        let base = data_hash(&map(json!({".dockerconfigjson": "e30="})));
        assert_eq!(base, data_hash(&map(json!({".dockerconfigjson": "e30="}))));
        for edited in [
            json!({".dockerconfigjson": "e31="}),
            json!({".dockerconfigjson": "e30=", "extra": ""}),
            json!({}),
            json!({".dockercfg": "e30="}),
            // Key/value boundaries are not ambiguous.
            json!({".dockerconfigjsone30=": ""}),
        ] {
            assert_ne!(base, data_hash(&map(edited.clone())), "{edited}");
        }
    }

    #[test]
    fn observes_uid_version_marks_and_data() {
        let meta = ObjectMeta {
            uid: Some("u1".into()),
            resource_version: Some("42".into()),
            labels: Some(BTreeMap::from([(
                MANAGED_BY_LABEL.to_string(),
                MANAGED_BY.to_string(),
            )])),
            annotations: Some(BTreeMap::from([
                (SOURCE_ANNOTATION.to_string(), "psi/regcred".to_string()),
                (SOURCE_VERSION_ANNOTATION.to_string(), "7".to_string()),
            ])),
            ..ObjectMeta::default()
        };
        let body = json!({"type": DOCKER_CONFIG_JSON, "data": {".dockerconfigjson": "e30="}});
        let got = observe(&meta, &body).expect("has a UID");
        assert_eq!(
            got,
            CopyEntry {
                uid: "u1".into(),
                resource_version: "42".into(),
                labelled: true,
                source: Some("psi/regcred".into()),
                source_version: Some("7".into()),
                data_hash: data_hash(body["data"].as_object().expect("object")),
            }
        );
        let stripped = ObjectMeta {
            labels: None,
            annotations: None,
            ..meta.clone()
        };
        let got = observe(&stripped, &json!({})).expect("has a UID");
        assert!(!got.labelled && got.source.is_none());
        assert_eq!(got.data_hash, data_hash(&Map::new()));
        let no_uid = ObjectMeta { uid: None, ..meta };
        assert_eq!(observe(&no_uid, &body), None);
    }
}

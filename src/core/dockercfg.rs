//! Docker config Secrets (`kubernetes.io/dockerconfigjson` and the legacy
//! `kubernetes.io/dockercfg`): their registry keys, and the rules discovery derives from them.
//! Each key of the config's `auths` (or, for the legacy type, of the top-level object) becomes
//! a registry pattern served by that Secret, in the Secret's own namespace scope (its
//! `pullsecret-injector/namespaces` and `pullsecret-injector/namespace-selector` annotations,
//! read by the caller: [`rules_from_scoped`]).
//!
//! Pure: a Secret in, rules or a reason out. Credentials are decoded only to read the keys;
//! no value is ever kept, logged or put in an error message.

use base64::Engine;
use serde_json::Value;

use crate::core::keyring::Keyring;
use crate::core::names::{DOCKER_CFG, DOCKER_CONFIG_JSON};
use crate::core::rules::{RegistryPattern, Rule, RuleSource};
use crate::core::scope::Scope;

/// Why a source Secret (or one of its keys) was skipped. Never contains credential values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    #[error("Secret {secret}: type {kind:?} is not {DOCKER_CONFIG_JSON} or {DOCKER_CFG}")]
    WrongType { secret: String, kind: String },
    #[error("Secret {secret}: no {field} key in data")]
    MissingData { secret: String, field: &'static str },
    #[error("Secret {secret}: {field} is not base64-encoded JSON")]
    Unparsable { secret: String, field: &'static str },
    #[error("Secret {secret}: {field} has no auths object")]
    NoAuths { secret: String, field: &'static str },
    #[error("Secret {secret}: key {key:?} is not a registry: {reason}")]
    BadKey {
        secret: String,
        key: String,
        reason: String,
    },
    /// Its scope annotations cannot be parsed: it serves no namespace.
    #[error("Secret {secret}: {reason}; it serves no namespace until fixed")]
    BadScope { secret: String, reason: String },
    /// An expiry annotation that is not a time (annotations are not secret: its value may be
    /// quoted). The Secret still serves; its expiry is read from the next source.
    #[error("Secret {secret}: {reason}")]
    BadExpiry { secret: String, reason: String },
}

impl SourceError {
    /// Stable label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            SourceError::WrongType { .. } => "wrong_type",
            SourceError::MissingData { .. } => "missing_data",
            SourceError::Unparsable { .. } => "unparsable",
            SourceError::NoAuths { .. } => "no_auths",
            SourceError::BadKey { .. } => "bad_key",
            SourceError::BadScope { .. } => "bad_scope",
            SourceError::BadExpiry { .. } => "bad_expiry",
        }
    }
}

/// The parts of a Secret discovery reads (taken from the API object as JSON so that one
/// undecodable Secret cannot stop the watch).
#[derive(Clone, PartialEq, Eq)]
pub struct SourceSecret {
    pub name: String,
    pub kind: String,
    /// `data` as sent by the API server: base64 strings. Credential material: never in
    /// `Debug`, logs or errors.
    pub data: serde_json::Map<String, Value>,
}

/// Names the data keys only: a `{:?}` anywhere must not print a credential.
impl std::fmt::Debug for SourceSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceSecret")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("data_keys", &self.data.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// What a docker config key's userinfo is replaced with.
pub const REDACTED: &str = "REDACTED";

/// A docker config key with any userinfo (`https://user:password@host`, which some tools
/// write) replaced by [`REDACTED`], so the key can be logged and shown. The kubelet matches on
/// host and path only, so the redacted key serves exactly what the original does.
pub fn without_userinfo(key: &str) -> std::borrow::Cow<'_, str> {
    let scheme_end = key.find("://").map_or(0, |i| i + 3);
    let rest = &key[scheme_end..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    match authority.rfind('@') {
        Some(at) => std::borrow::Cow::Owned(format!(
            "{}{REDACTED}{}",
            &key[..scheme_end],
            &key[scheme_end + at..]
        )),
        None => std::borrow::Cow::Borrowed(key),
    }
}

/// The entries of a docker config Secret: its `auths` object (the top-level object for the
/// legacy type), keys as written. Credential material: for the callers that must read it
/// (expiry, the probe), never to be logged.
pub fn auths(secret: &SourceSecret) -> Result<serde_json::Map<String, Value>, SourceError> {
    let name = &secret.name;
    let field = match secret.kind.as_str() {
        DOCKER_CONFIG_JSON => ".dockerconfigjson",
        DOCKER_CFG => ".dockercfg",
        other => {
            return Err(SourceError::WrongType {
                secret: name.clone(),
                kind: other.to_string(),
            });
        }
    };
    let Some(encoded) = secret.data.get(field).and_then(Value::as_str) else {
        return Err(SourceError::MissingData {
            secret: name.clone(),
            field,
        });
    };
    let parsed = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok());
    let Some(mut config) = parsed else {
        return Err(SourceError::Unparsable {
            secret: name.clone(),
            field,
        });
    };
    let auths = if secret.kind == DOCKER_CONFIG_JSON {
        config.get_mut("auths").map(Value::take)
    } else {
        Some(config)
    };
    match auths {
        Some(Value::Object(auths)) => Ok(auths),
        _ => Err(SourceError::NoAuths {
            secret: name.clone(),
            field,
        }),
    }
}

/// The registry keys of a docker config Secret ([`auths`]), userinfo redacted
/// ([`without_userinfo`]). Only the keys are read; no value is kept.
pub fn config_keys(secret: &SourceSecret) -> Result<Vec<String>, SourceError> {
    Ok(auths(secret)?
        .keys()
        .map(|key| without_userinfo(key).into_owned())
        .collect())
}

/// The kubelet's keyring for a docker config Secret ([`config_keys`] read its way).
pub fn keyring_of(secret: &SourceSecret) -> Result<Keyring, SourceError> {
    let keys = config_keys(secret)?;
    Ok(Keyring::new(keys.iter().map(String::as_str)))
}

/// Rules from one source Secret, serving every namespace (no scope): for callers that do not
/// read the Secret's annotations. Prefer [`rules_from_scoped`].
pub fn rules_from(secret: &SourceSecret) -> (Vec<Rule>, Vec<SourceError>) {
    rules_from_scoped(secret, &Scope::everywhere())
}

/// Rules from one source Secret, each carrying `scope` (the Secret's own, from its
/// annotations; [`Scope::nowhere`] when they cannot be parsed). Bad keys are reported and
/// skipped; the others still count.
pub fn rules_from_scoped(secret: &SourceSecret, scope: &Scope) -> (Vec<Rule>, Vec<SourceError>) {
    let name = &secret.name;
    let keys = match config_keys(secret) {
        Ok(keys) => keys,
        Err(e) => return (Vec::new(), vec![e]),
    };
    let mut rules = Vec::with_capacity(keys.len());
    let mut errors = Vec::new();
    for key in keys {
        match RegistryPattern::from_docker_config_key(&key) {
            Ok(pattern) => rules.push(Rule {
                pattern,
                secrets: vec![name.clone()],
                pull_policy_always: false,
                source: RuleSource::Discovered {
                    secret: name.clone(),
                },
                scope: scope.clone(),
            }),
            Err(e) => errors.push(SourceError::BadKey {
                secret: name.clone(),
                key,
                reason: e.to_string(),
            }),
        }
    }
    (rules, errors)
}

impl SourceSecret {
    /// A Secret read as JSON (as the API returns it, or as `kubectl create secret
    /// docker-registry --dry-run=client -o yaml` writes it); `None` unless it has a name.
    pub fn from_json(object: &Value) -> Option<Self> {
        let name = object.pointer("/metadata/name")?.as_str()?;
        Some(Self::from_body(name, object))
    }

    /// `name` with the `type` and `data` of `body` (a Secret without its metadata will do, as
    /// kube's `DynamicObject::data` holds it). A missing type is `Opaque`, as in the API.
    pub fn from_body(name: &str, body: &Value) -> Self {
        let kind = body.get("type").and_then(Value::as_str).unwrap_or("Opaque");
        let data = body
            .get("data")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        Self {
            name: name.to_string(),
            kind: kind.to_string(),
            data,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::image;
    use serde_json::json;

    fn secret(name: &str, kind: &str, field: &str, config: &Value) -> SourceSecret {
        let encoded = base64::engine::general_purpose::STANDARD.encode(config.to_string());
        SourceSecret {
            name: name.into(),
            kind: kind.into(),
            data: json!({ field: encoded })
                .as_object()
                .cloned()
                .unwrap_or_default(),
        }
    }

    fn patterns(secret: &SourceSecret) -> Vec<String> {
        rules_from(secret)
            .0
            .iter()
            .map(|r| r.pattern.as_str().to_string())
            .collect()
    }

    #[test]
    fn userinfo_in_keys_is_redacted_and_never_printed() {
        let table = [
            (
                "https://robot:s3cret@ghcr.io/acme",
                "https://REDACTED@ghcr.io/acme",
            ),
            (
                "robot:s3cret@registry.local:5000",
                "REDACTED@registry.local:5000",
            ),
            ("http://u@h.example.com", "http://REDACTED@h.example.com"),
            // An @ in the path is not userinfo.
            ("ghcr.io/acme/a@b", "ghcr.io/acme/a@b"),
            ("https://index.docker.io/v1/", "https://index.docker.io/v1/"),
        ];
        for (key, want) in table {
            assert_eq!(without_userinfo(key), want, "{key}");
        }
        let config = json!({"auths": {
            "https://robot:s3cret@ghcr.io/acme": {"password": "s3cret"},
            "robot:s3cret@bad host": {},
        }});
        let s = secret("marker", DOCKER_CONFIG_JSON, ".dockerconfigjson", &config);
        let (rules, errors) = rules_from(&s);
        // The redacted key serves the same images: the kubelet matches host and path only.
        let image = image::parse("ghcr.io/acme/app").expect("valid");
        assert!(rules.iter().any(|r| r.pattern.matches(&image)));
        assert_eq!(errors.len(), 1, "{errors:?}");
        let printed = format!("{errors:?} {} {s:?} {rules:?}", errors[0]);
        assert!(!printed.contains("s3cret"), "{printed}");
        // Debug names the data keys, never their values.
        let debug = format!("{s:?}");
        assert!(debug.contains(".dockerconfigjson"), "{debug}");
        assert!(
            !debug.contains(&base64::engine::general_purpose::STANDARD.encode(config.to_string()))
        );
    }

    #[test]
    fn keys_become_patterns() {
        let config = json!({"auths": {
            "https://index.docker.io/v1/": {"auth": "dTpw"},
            "ghcr.io": {"username": "u", "password": "p"},
            "registry.local:5000": {},
        }});
        let s = secret("regcred", DOCKER_CONFIG_JSON, ".dockerconfigjson", &config);
        let (rules, errors) = rules_from(&s);
        assert!(errors.is_empty(), "{errors:?}");
        let nginx = image::parse("nginx").expect("valid");
        assert!(
            rules.iter().any(|r| r.pattern.matches(&nginx)),
            "the Docker Hub key serves nginx"
        );
        assert_eq!(rules.len(), 3);
        assert!(rules.iter().all(|r| r.secrets == ["regcred"]));
    }

    #[test]
    fn discovered_rules_carry_the_source_scope() {
        let config = json!({"auths": {"ghcr.io/acme/team-a": {}, "quay.io": {}}});
        let s = secret(
            "team-a-pull",
            DOCKER_CONFIG_JSON,
            ".dockerconfigjson",
            &config,
        );
        let scope = Scope::from_annotations(Some("team-a, team-a-*"), None).expect("scope");
        let (rules, errors) = rules_from_scoped(&s, &scope);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(rules.len(), 2);
        assert!(rules.iter().all(|r| r.scope == scope));
        assert!(rules.iter().all(|r| r.scope.allows("team-a-dev", None)));
        assert!(rules.iter().all(|r| !r.scope.allows("team-b", None)));
        // Unparsable annotations: the caller passes nowhere, and so does every rule.
        let (rules, _) = rules_from_scoped(&s, &Scope::nowhere());
        assert!(rules.iter().all(|r| !r.scope.allows("team-a", None)));
        // Without a scope: everywhere, undeclared.
        assert!(rules_from(&s).0.iter().all(|r| !r.scope.is_declared()));
        let bad = SourceError::BadScope {
            secret: "team-a-pull".into(),
            reason: "pullsecret-injector/namespaces: \"Team_A\" is not a namespace name".into(),
        };
        assert_eq!(bad.kind(), "bad_scope");
        assert!(bad.to_string().contains("serves no namespace"), "{bad}");
    }

    #[test]
    fn legacy_dockercfg_has_no_auths_wrapper() {
        let s = secret(
            "old",
            DOCKER_CFG,
            ".dockercfg",
            &json!({"quay.io": {"auth": "x"}}),
        );
        assert_eq!(patterns(&s), ["quay.io"]);
    }

    #[test]
    fn broken_sources_are_reported_by_name_without_values() {
        let good_and_bad = secret(
            "mixed",
            DOCKER_CONFIG_JSON,
            ".dockerconfigjson",
            &json!({"auths": {"ghcr.io": {}, "not a registry!": {"password": "hunter2"}}}),
        );
        let (rules, errors) = rules_from(&good_and_bad);
        assert_eq!(rules.len(), 1);
        assert_eq!(errors.len(), 1);
        let message = errors[0].to_string();
        assert!(
            message.contains("mixed") && message.contains("not a registry!"),
            "{message}"
        );
        assert!(!message.contains("hunter2"));

        let opaque = SourceSecret {
            name: "o".into(),
            kind: "Opaque".into(),
            data: Default::default(),
        };
        assert_eq!(rules_from(&opaque).1[0].kind(), "wrong_type");
        let missing = SourceSecret {
            name: "m".into(),
            kind: DOCKER_CONFIG_JSON.into(),
            data: Default::default(),
        };
        assert_eq!(rules_from(&missing).1[0].kind(), "missing_data");
        let garbage = SourceSecret {
            name: "g".into(),
            kind: DOCKER_CONFIG_JSON.into(),
            data: json!({".dockerconfigjson": "!!!"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        };
        assert_eq!(rules_from(&garbage).1[0].kind(), "unparsable");
        let no_auths = secret(
            "n",
            DOCKER_CONFIG_JSON,
            ".dockerconfigjson",
            &json!({"credsStore": "x"}),
        );
        assert_eq!(rules_from(&no_auths).1[0].kind(), "no_auths");
    }
}

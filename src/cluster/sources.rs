//! Source Secrets: the Secrets of the injector's namespace labelled
//! `pullsecret-injector/source=true`. Discovery turns their docker config keys into rules;
//! sync copies them where rules need them.
//!
//! The watch selects by label on the server, so the namespace's other Secrets (the webhook's
//! own TLS key among them) are never read, let alone held or copied. Objects are read untyped,
//! so one odd Secret is skipped and counted instead of stopping the watch.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::watcher;

use crate::cluster::index::Index;
use crate::cluster::watch::{Running, Watches};
use crate::core::coverage::Coverage as RuleCoverage;
use crate::core::dockercfg::{self, SourceError, SourceSecret};
use crate::core::expiry;
use crate::core::names::{
    DOCKER_CFG, DOCKER_CONFIG_JSON, NAMESPACE_SELECTOR_ANNOTATION, NAMESPACES_ANNOTATION,
    PROBE_ANNOTATION, SOURCE_LABEL,
};
use crate::core::policy::{Policy, Sources};
use crate::core::scope::Scope;
use crate::metrics::{KindLabels, Metrics, RuleLabels, SecretLabels};

/// A source Secret as sync and discovery need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub resource_version: String,
    pub secret: SourceSecret,
    /// The namespaces it may serve, from its annotations (`pullsecret-injector/namespaces`,
    /// `pullsecret-injector/namespace-selector`); everywhere when it declares none.
    pub scope: Scope,
    /// Why its scope annotations could not be parsed; then `scope` is nowhere.
    pub scope_error: Option<String>,
    /// `pullsecret-injector/probe`: the registries that rejected its credential, as the
    /// controller's probe last wrote them (`credentialProbe`).
    pub probe_annotation: Option<String>,
    /// When its credential stops working, if its annotations or tokens say
    /// ([`crate::core::expiry`]), and the expiry annotations that could not be parsed.
    pub expiry: expiry::Reading,
}

impl Source {
    /// Only docker config Secrets are pull credentials; anything else is never copied.
    pub fn is_pull_credential(&self) -> bool {
        matches!(self.secret.kind.as_str(), DOCKER_CONFIG_JSON | DOCKER_CFG)
    }
}

/// Watches the labelled Secrets of `own_namespace` into a new index.
pub fn watch(
    watches: &Watches,
    client: &kube::Client,
    own_namespace: &str,
    metrics: &Arc<Metrics>,
) -> (Arc<Index<Source>>, Running) {
    let index = Arc::new(Index::new("source_secrets", metrics.clone()));
    let resource = ApiResource::erase::<Secret>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), own_namespace, &resource);
    let config = watcher::Config::default().labels(&format!("{SOURCE_LABEL}=true"));
    let running = watches.start(api, config, index.clone(), entry);
    (index, running)
}

fn entry(object: &DynamicObject) -> Option<Source> {
    let name = object.metadata.name.as_deref()?;
    let annotation = |key: &str| {
        object
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .map(String::as_str)
    };
    // The safe side is nowhere: a scope that cannot be read serves no namespace.
    let (scope, scope_error) = match Scope::from_annotations(
        annotation(NAMESPACES_ANNOTATION),
        annotation(NAMESPACE_SELECTOR_ANNOTATION),
    ) {
        Ok(scope) => (scope, None),
        Err(e) => (Scope::nowhere(), Some(e)),
    };
    let secret = SourceSecret::from_body(name, &object.data);
    // Read once per version, here: the index keeps the expiry, not a second copy of tokens.
    let expiry = expiry::read(annotation, &secret);
    Some(Source {
        resource_version: object.metadata.resource_version.clone().unwrap_or_default(),
        secret,
        scope,
        scope_error,
        probe_annotation: annotation(PROBE_ANNOTATION).map(str::to_string),
        expiry,
    })
}

/// Reads the index into what the policy needs from sources (discovered rules, when discovery
/// is on, each in its source's scope; the keyring and the scope of every source), reporting
/// each unusable source once per version: a logged warning and
/// `pullsecret_injector_source_secret_errors_total{kind}` (`bad_scope` for scope annotations
/// that cannot be parsed: that source then serves no namespace).
pub struct Discovery {
    reported: HashSet<(String, String)>,
    metrics: Arc<Metrics>,
}

impl Discovery {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            reported: HashSet::new(),
            metrics,
        }
    }

    /// Rules in name order (so the merged rule list is stable), and keyrings and scopes by
    /// name.
    pub fn read(&mut self, sources: &Index<Source>, discovery: bool) -> Sources {
        let mut found: Vec<(String, &'static str, Source)> = Vec::new();
        sources.for_each(|_, name, source| found.push((name.to_string(), "", source.clone())));
        found.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out = Sources::default();
        for (name, _, source) in found {
            let (rules, mut errors) = if discovery {
                dockercfg::rules_from_scoped(&source.secret, &source.scope)
            } else {
                (
                    Vec::new(),
                    dockercfg::config_keys(&source.secret)
                        .err()
                        .into_iter()
                        .collect(),
                )
            };
            // Reported whether or not discovery is on: static rules naming this Secret are
            // limited by its scope too.
            if let Some(reason) = &source.scope_error {
                errors.push(SourceError::BadScope {
                    secret: name.clone(),
                    reason: reason.clone(),
                });
            }
            errors.extend(
                source
                    .expiry
                    .problems
                    .iter()
                    .map(|problem| SourceError::BadExpiry {
                        secret: name.clone(),
                        reason: problem.to_string(),
                    }),
            );
            if let Ok(keyring) = dockercfg::keyring_of(&source.secret) {
                out.keyrings.insert(name.clone(), keyring);
            }
            if let Some(annotation) = &source.probe_annotation {
                let registries: Vec<String> = crate::core::probe::rejected_registries(annotation)
                    .into_iter()
                    .map(str::to_string)
                    .collect();
                if !registries.is_empty() {
                    out.rejected.insert(name.clone(), registries);
                }
            }
            // Only pull credentials expire as far as Pods are concerned.
            if let Some(expiry) = source
                .expiry
                .expiry
                .as_ref()
                .filter(|_| source.is_pull_credential())
            {
                out.expiries.insert(name.clone(), expiry.clone());
            }
            out.scopes.insert(name.clone(), source.scope);
            if !errors.is_empty() && self.reported.insert((name, source.resource_version)) {
                for error in &errors {
                    self.metrics
                        .source_secret_errors
                        .get_or_create(&KindLabels { kind: error.kind() })
                        .inc();
                    tracing::warn!(error = %error, "source Secret (or one of its keys) skipped");
                }
            }
            out.rules.extend(rules);
        }
        out
    }
}

/// The credential check of the rules, reported: for every rule whose Secrets the injector can
/// read, would the kubelet use them for the rule's images? The gauge is 1 only when it would
/// use them for none (a mismatch); a glob rule whose Secrets serve some of its images (one
/// ECR account of `*.dkr.ecr.*.amazonaws.com`) is partial coverage, the normal case, logged
/// at info and not a mismatch. Each change of a rule's answer is logged once.
#[derive(Default)]
pub struct Coverage {
    last: BTreeMap<String, RuleCoverage>,
}

impl Coverage {
    pub fn report(&mut self, policy: &Policy, metrics: &Metrics) {
        let mut now = BTreeMap::new();
        for rule in policy.rules().rules() {
            let Some(coverage) = policy.coverage(rule) else {
                continue;
            };
            let pattern = rule.pattern.as_str().to_string();
            if self.last.get(&pattern) != Some(&coverage) {
                match &coverage {
                    RuleCoverage::None => {
                        tracing::warn!(rule = %pattern, secrets = ?rule.secrets, source = %rule.source,
                        "the kubelet would not use this rule's Secrets for any of its images: none of their docker config keys matches the rule's registry (check --docker-server)")
                    }
                    RuleCoverage::Partial { served_by } => {
                        tracing::info!(rule = %pattern, secrets = ?rule.secrets, source = %rule.source,
                        served_by = %served_by.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
                        "partial coverage: this rule's Secrets serve some of its images (the registries their keys name); images elsewhere get a warning at admission")
                    }
                    RuleCoverage::Full => {}
                }
            }
            now.insert(pattern, coverage);
        }
        for gone in self.last.keys().filter(|k| !now.contains_key(*k)) {
            metrics
                .rule_credential_mismatch
                .remove(&RuleLabels { rule: gone.clone() });
        }
        for (rule, coverage) in &now {
            metrics
                .rule_credential_mismatch
                .get_or_create(&RuleLabels { rule: rule.clone() })
                .set(i64::from(*coverage == RuleCoverage::None));
        }
        self.last = now;
    }
}

/// `pullsecret_injector_credential_expiry_timestamp_seconds{secret}` and
/// `..._issued_timestamp_seconds{secret}`: one series per source Secret whose expiry (and
/// issue time) is known; a series goes when its Secret does, or no longer has one, or
/// sources are no longer read.
#[derive(Default)]
pub struct Expiries {
    exported: BTreeSet<String>,
    issued: BTreeSet<String>,
}

impl Expiries {
    pub fn report(&mut self, sources: &Sources, metrics: &Metrics) {
        let now: BTreeSet<String> = sources.expiries.keys().cloned().collect();
        let issued: BTreeSet<String> = sources
            .expiries
            .iter()
            .filter(|(_, e)| e.issued.is_some())
            .map(|(name, _)| name.clone())
            .collect();
        let labels = |secret: &String| SecretLabels {
            secret: secret.clone(),
        };
        for gone in self.exported.difference(&now) {
            metrics.credential_expiry.remove(&labels(gone));
        }
        for gone in self.issued.difference(&issued) {
            metrics.credential_issued.remove(&labels(gone));
        }
        for (secret, expiry) in &sources.expiries {
            metrics
                .credential_expiry
                .get_or_create(&labels(secret))
                .set(expiry.at);
            if let Some(at) = expiry.issued {
                metrics
                    .credential_issued
                    .get_or_create(&labels(secret))
                    .set(at);
            }
        }
        self.exported = now;
        self.issued = issued;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use serde_json::json;

    fn secret(name: &str, body: serde_json::Value) -> DynamicObject {
        let mut object = DynamicObject::new(name, &ApiResource::erase::<Secret>(&())).data(body);
        object.metadata.resource_version = Some("1".into());
        object
    }

    /// A docker config source for ghcr.io with `annotations`, at `version`.
    fn annotated(name: &str, annotations: &[(&str, &str)], version: &str) -> DynamicObject {
        let config =
            base64::engine::general_purpose::STANDARD.encode(r#"{"auths":{"ghcr.io":{}}}"#);
        let body = json!({"type": DOCKER_CONFIG_JSON, "data": {".dockerconfigjson": config}});
        let mut object = secret(name, body);
        object.metadata.resource_version = Some(version.into());
        object.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        object
    }

    #[test]
    fn odd_source_secrets_are_skipped_and_counted_once() {
        let config =
            base64::engine::general_purpose::STANDARD.encode(r#"{"auths":{"ghcr.io":{}}}"#);
        let metrics = Arc::new(Metrics::default());
        let index = Index::new("source_secrets", metrics.clone());
        index.start_list();
        for object in [
            secret(
                "good",
                json!({"type": DOCKER_CONFIG_JSON, "data": {".dockerconfigjson": config}}),
            ),
            secret("no-data", json!({"type": DOCKER_CONFIG_JSON})),
            secret(
                "data-not-a-map",
                json!({"type": DOCKER_CONFIG_JSON, "data": "x"}),
            ),
            secret("no-type", json!({"data": {"a": "eA=="}})),
        ] {
            let value = entry(&object).expect("named");
            index.apply_listed("psi", object.metadata.name.as_deref().unwrap_or(""), value);
        }
        index.finish_list();
        let mut discovery = Discovery::new(metrics.clone());
        let read = discovery.read(&index, true);
        assert_eq!(read.rules.len(), 1);
        assert_eq!(read.rules[0].pattern.as_str(), "ghcr.io");
        assert_eq!(read.keyrings.keys().collect::<Vec<_>>(), ["good"]);
        assert!(read.keyrings["good"].serves("ghcr.io/acme/api"));
        // A second pass over the same versions reports nothing new; without discovery the
        // keyrings stay and the rules go.
        let read = discovery.read(&index, false);
        assert!(read.rules.is_empty());
        assert_eq!(read.keyrings.len(), 1);
        let text = metrics.encode();
        assert!(
            text.contains(r#"source_secret_errors_total{kind="missing_data"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"source_secret_errors_total{kind="wrong_type"} 1"#),
            "{text}"
        );
        let good = index.get("psi", "good", |s| s.cloned()).expect("indexed");
        assert!(good.is_pull_credential());
        let opaque = index
            .get("psi", "no-type", |s| s.cloned())
            .expect("indexed");
        assert!(!opaque.is_pull_credential());
    }

    #[test]
    fn discovered_rules_carry_their_source_scope_and_a_bad_scope_is_reported_once() {
        let metrics = Arc::new(Metrics::default());
        let index = Index::new("source_secrets", metrics.clone());
        let fill = |version: &str| {
            index.start_list();
            for object in [
                annotated(
                    "team-a",
                    &[(NAMESPACES_ANNOTATION, "team-a,team-a-*")],
                    version,
                ),
                annotated(
                    "labelled",
                    &[(NAMESPACE_SELECTOR_ANNOTATION, "team in (a,b)")],
                    version,
                ),
                annotated(
                    "broken",
                    &[(NAMESPACE_SELECTOR_ANNOTATION, "team in (a")],
                    version,
                ),
                annotated("open", &[], version),
            ] {
                let value = entry(&object).expect("named");
                index.apply_listed("psi", object.metadata.name.as_deref().unwrap_or(""), value);
            }
            index.finish_list();
        };
        fill("1");
        let mut discovery = Discovery::new(metrics.clone());
        let read = discovery.read(&index, true);
        let team = |t: &str| crate::core::facts::Labels::from([("team".into(), t.into())]);
        // (source, namespace, labels, allowed)
        let cases = [
            ("team-a", "team-a", None, true),
            ("team-a", "team-a-dev", None, true),
            ("team-a", "team-b", None, false),
            ("labelled", "x", Some(team("b")), true),
            ("labelled", "x", Some(team("c")), false),
            ("labelled", "x", None, false),
            ("broken", "team-a", Some(team("a")), false),
            ("open", "anywhere", None, true),
        ];
        for (source, namespace, labels, want) in cases {
            let rule = read
                .rules
                .iter()
                .find(|r| r.secrets == [source])
                .expect(source);
            assert_eq!(
                rule.scope.allows(namespace, labels.as_ref()),
                want,
                "rule of {source} in {namespace}"
            );
            assert_eq!(
                read.scopes[source].allows(namespace, labels.as_ref()),
                want,
                "scope of {source} in {namespace}"
            );
        }
        // Without discovery the scopes stay (static rules naming a source are limited too),
        // and the bad scope is not reported again for the same version.
        let read = discovery.read(&index, false);
        assert!(read.rules.is_empty());
        assert!(read.scopes["broken"].is_nowhere());
        let bad = r#"source_secret_errors_total{kind="bad_scope"} 1"#;
        assert!(metrics.encode().contains(bad), "{}", metrics.encode());
        // A new version of the Secret is reported again.
        fill("2");
        discovery.read(&index, true);
        let bad = r#"source_secret_errors_total{kind="bad_scope"} 2"#;
        assert!(metrics.encode().contains(bad), "{}", metrics.encode());
    }

    #[test]
    fn the_probe_annotation_becomes_the_rejected_registries() {
        let config =
            base64::engine::general_purpose::STANDARD.encode(r#"{"auths":{"ghcr.io":{}}}"#);
        let body = json!({"type": DOCKER_CONFIG_JSON, "data": {".dockerconfigjson": config}});
        let metrics = Arc::new(Metrics::default());
        let index = Index::new("source_secrets", metrics.clone());
        index.start_list();
        for (name, annotation) in [
            (
                "rejected",
                Some(
                    "rejected ghcr.io 2026-12-07T03:00:00Z; rejected quay.io 2026-12-07T03:00:01Z",
                ),
            ),
            ("garbled", Some("accepted")),
            ("plain", None),
        ] {
            let mut object = secret(name, body.clone());
            object.metadata.annotations =
                annotation.map(|a| [(PROBE_ANNOTATION.to_string(), a.to_string())].into());
            if let Some(source) = entry(&object) {
                index.apply_listed("psi", name, source);
            }
        }
        index.finish_list();
        let read = Discovery::new(metrics).read(&index, true);
        assert_eq!(
            read.rejected,
            [(
                "rejected".to_string(),
                vec!["ghcr.io".to_string(), "quay.io".to_string()]
            )]
            .into()
        );
    }

    #[test]
    fn the_mismatch_gauge_is_for_rules_their_secrets_serve_no_image_of() {
        let config = crate::core::config::from_bytes(
            std::path::Path::new("config.yaml"),
            br#"
rules:
  - registry: "*.dkr.ecr.*.amazonaws.com"
    secrets: [ecr]
  - registry: ghcr.io/acme
    secrets: [ghcr]
  - registry: quay.io
    secrets: [quay]
  - registry: docker.io
    secrets: [unknown]
"#,
        )
        .expect("valid");
        let keyring = |key: &str| crate::core::keyring::Keyring::new([key]);
        let sources = Sources {
            keyrings: [
                ("ecr", "123456789012.dkr.ecr.eu-west-1.amazonaws.com"),
                ("ghcr", "https://ghcr.io"),
                ("quay", "quay.io:5000"),
            ]
            .into_iter()
            .map(|(name, key)| (name.to_string(), keyring(key)))
            .collect(),
            ..Sources::default()
        };
        let metrics = Metrics::default();
        Coverage::default().report(&Policy::merged(&config, &sources), &metrics);
        let text = metrics.encode();
        // (rule, gauge): partial coverage and full coverage are 0, a mismatch 1, and a rule
        // whose Secret is unknown has no series.
        for (rule, want) in [
            ("*.dkr.ecr.*.amazonaws.com", Some(0)),
            ("ghcr.io/acme", Some(0)),
            ("quay.io", Some(1)),
            ("docker.io", None),
        ] {
            let line = format!("rule_credential_mismatch{{rule=\"{rule}\"}}");
            let got = text
                .lines()
                .find(|l| l.contains(&line))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<i64>().ok());
            assert_eq!(got, want, "{rule}: {text}");
        }
    }

    #[test]
    fn the_expiry_gauge_follows_the_sources_and_a_bad_annotation_is_counted() {
        use crate::core::names::{EXPIRES_AT_ANNOTATION, EXTERNAL_SECRETS_EXPIRES_AT_ANNOTATION};
        let metrics = Arc::new(Metrics::default());
        let index = Index::new("source_secrets", metrics.clone());
        let put = |object: DynamicObject| {
            let value = entry(&object).expect("named");
            index.apply("psi", object.metadata.name.as_deref().unwrap_or(""), value);
        };
        index.start_list();
        index.finish_list();
        put(annotated(
            "ecr",
            &[(EXPIRES_AT_ANNOTATION, "2026-12-07T05:00:00+02:00")],
            "1",
        ));
        put(annotated(
            "gh",
            &[(EXTERNAL_SECRETS_EXPIRES_AT_ANNOTATION, "1796616000")],
            "1",
        ));
        put(annotated("bad", &[(EXPIRES_AT_ANNOTATION, "someday")], "1"));
        put(annotated("plain", &[], "1"));
        let mut opaque = secret("opaque", json!({"type": "Opaque", "data": {"a": "eA=="}}));
        opaque.metadata.annotations =
            Some([(EXPIRES_AT_ANNOTATION.to_string(), "1796612400".to_string())].into());
        put(opaque);
        let mut discovery = Discovery::new(metrics.clone());
        let mut expiries = Expiries::default();
        let gauge = |secret: &str| {
            let line = format!("credential_expiry_timestamp_seconds{{secret=\"{secret}\"}} ");
            metrics.encode().lines().find_map(|l| {
                l.strip_prefix(&format!("pullsecret_injector_{line}"))
                    .map(str::to_string)
            })
        };
        let read = discovery.read(&index, true);
        expiries.report(&read, &metrics);
        // (secret, gauge)
        for (secret, want) in [
            ("ecr", Some("1796612400")),
            ("gh", Some("1796616000")),
            ("bad", None),
            ("plain", None),
            // Not a pull credential: its expiry concerns no Pod.
            ("opaque", None),
        ] {
            assert_eq!(
                gauge(secret).as_deref(),
                want,
                "{secret}: {}",
                metrics.encode()
            );
        }
        // The bad annotation: counted once per version, the Secret still serves.
        assert!(read.keyrings.contains_key("bad"));
        let counted = r#"source_secret_errors_total{kind="bad_expiry"} 1"#;
        assert!(metrics.encode().contains(counted), "{}", metrics.encode());
        // A Secret deleted, another rotated without an expiry: their series go.
        index.delete("psi", "ecr");
        put(annotated("gh", &[], "2"));
        put(annotated(
            "plain",
            &[(EXPIRES_AT_ANNOTATION, "1796620000")],
            "2",
        ));
        let read = discovery.read(&index, true);
        expiries.report(&read, &metrics);
        assert_eq!(gauge("ecr"), None);
        assert_eq!(gauge("gh"), None);
        assert_eq!(gauge("plain").as_deref(), Some("1796620000"));
        assert!(metrics.encode().contains(counted), "{}", metrics.encode());
        // Sources no longer read at all: nothing left.
        expiries.report(&Sources::default(), &metrics);
        assert_eq!(gauge("plain"), None);
    }
}

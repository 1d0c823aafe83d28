//! `audit`: against a live cluster, for each existing Pod, the secrets the injector would add
//! and whether each exists in the Pod's namespace. The report to read before turning
//! injection on.
//!
//! It runs the webhook's own decision on every Pod as if it were being created now, with the
//! namespace labels read from the API, and looks the secrets up separately, so a secret that
//! sync would create is still listed (and shown as missing today).
//!
//! Scope: it lists the namespaces each rule serves (a discovered source's scope comes from its
//! annotations; one that cannot be parsed serves nowhere and is reported), and flags Pods that
//! hold an out-of-scope reference: an `imagePullSecrets` entry naming a Secret that only rules
//! which do not serve the Pod's namespace name.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::api::{Api, ListParams, PartialObjectMeta};
use serde::Serialize;

use crate::cli::{AuditArgs, AuditFormat};
use crate::cluster::{self, ClusterError};
use crate::commands::explain::SecretExpiry;
use crate::commands::{describe_scope, effective_scope, source_scope};
use crate::core::config::{self, ConfigError};
use crate::core::decision::{Context, ImageOutcome};
use crate::core::dockercfg::{self, SourceSecret};
use crate::core::expiry::{self, Status};
use crate::core::facts::{ClusterFacts, Labels, NamespaceCache, NamespaceLabel, SecretPresence};
use crate::core::names::{INJECT_LABEL, SOURCE_LABEL};
use crate::core::policy::{Policy, Sources};
use crate::core::repair::{self, PodState};
use crate::core::review;
use crate::core::rules::Rule;
use crate::core::scope::Scope;
use crate::core::verdict::{self, Outcome};

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("--config: {0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("cannot list {what}: {source}")]
    List {
        what: &'static str,
        source: kube::Error,
    },
    #[error("cannot read a Pod the API returned: {0}")]
    Decode(#[from] serde_json::Error),
}

/// One Pod in the report.
#[derive(Debug, Serialize, PartialEq)]
pub struct PodReport {
    pub namespace: String,
    pub pod: String,
    /// Why the injector would leave this Pod alone, if it would.
    pub skipped: Option<&'static str>,
    /// `enforce` or `audit` (namespace labelled `=audit`, or audit mode).
    pub mode: Option<&'static str>,
    pub secrets: Vec<SecretReport>,
    /// `evict` or `report` when the Pod was admitted without these secrets and is stuck
    /// pulling: what `repair: true` does with it.
    pub repair: Option<&'static str>,
    /// A running Pod's private images that run from the node's cache: pulled with
    /// `IfNotPresent`/`Never` while the Pod lacks the secret they need. They break when a
    /// node pulls again (a new node, image garbage collection) or, since Kubernetes 1.35,
    /// when the kubelet verifies cached credentials. The report to read before upgrading.
    #[serde(rename = "cacheRisk")]
    pub cache_risk: Vec<CacheRisk>,
    /// Problems (invalid images and the like), not audit findings.
    pub warnings: Vec<String>,
    /// `imagePullSecrets` entries naming a Secret that only rules out of scope for the Pod's
    /// namespace name: a credential this namespace should not hold (a sync copy is revoked
    /// after `revokeAfter`).
    #[serde(rename = "outOfScope")]
    pub out_of_scope: Vec<OutOfScopeRef>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct OutOfScopeRef {
    pub secret: String,
    /// Each rule naming the Secret, with its scope.
    pub rules: Vec<RuleScope>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RuleScope {
    pub rule: String,
    pub source: String,
    pub secrets: Vec<String>,
    pub scope: String,
}

impl RuleScope {
    pub fn of(rule: &Rule, policy: &Policy) -> Self {
        Self {
            rule: rule.pattern.to_string(),
            source: rule.source.to_string(),
            secrets: rule.secrets.clone(),
            scope: describe_scope(rule, policy.settings()),
        }
    }
}

#[derive(Debug, Serialize, PartialEq)]
pub struct CacheRisk {
    pub container: String,
    pub image: String,
    #[serde(rename = "pullPolicy")]
    pub pull_policy: String,
    pub missing: Vec<String>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct SecretReport {
    pub name: String,
    pub exists: bool,
    pub rule: String,
    /// The namespaces the rule serves.
    pub scope: String,
    pub images: Vec<String>,
    /// When its credential expires, for a source Secret whose expiry is known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiry: Option<SecretExpiry>,
}

/// What the API returned: namespace labels and the Secrets that exist. Complete lists, so
/// absence here is absence in the cluster (at the time of the list).
pub struct Listed {
    pub labels: BTreeMap<String, NamespaceLabel>,
    /// Every namespace's labels, as scope selectors read them.
    pub namespace_labels: BTreeMap<String, Arc<Labels>>,
    pub secrets: BTreeSet<(String, String)>,
}

impl ClusterFacts for Listed {
    fn namespace_label(&self, namespace: &str) -> NamespaceLabel {
        self.labels
            .get(namespace)
            .copied()
            .unwrap_or(NamespaceLabel::Unlabelled)
    }
    fn secret_presence(&self, namespace: &str, name: &str) -> SecretPresence {
        if self
            .secrets
            .contains(&(namespace.to_string(), name.to_string()))
        {
            SecretPresence::Seen
        } else {
            SecretPresence::NotSeen
        }
    }
    /// A complete list, just taken.
    fn namespace_cache(&self) -> NamespaceCache {
        NamespaceCache::Fresh
    }
    fn namespace_labels(&self, namespace: &str) -> Option<Arc<Labels>> {
        self.namespace_labels.get(namespace).cloned()
    }
}

/// `audit`: the report, rendered as `-o` asks.
pub async fn run(args: AuditArgs) -> Result<String, AuditError> {
    let config = config::load(&args.config)?;
    let cluster_args = args.cluster();
    let injector_namespace = cluster_args.own_namespace();
    let client = cluster::client::client(&cluster_args).await?;
    let list = |what| move |source| AuditError::List { what, source };

    let now = crate::metrics::unix_now();
    let mut sources = Sources::default();
    let mut source_problems = Vec::new();
    // `source Secret X: expires at ...`, for the table's header.
    let mut source_expiries = Vec::new();
    // The sources matter to discovery and sync, and carry what the credential probe and the
    // providers learnt (rejections, minted credentials' expiry).
    if (config.settings.discovery
        || config.settings.sync
        || config.settings.credential_probe
        || !config.settings.credential_providers.providers.is_empty())
        && let Some(ns) = &injector_namespace
    {
        let api: Api<Secret> = Api::namespaced(client.clone(), ns);
        let labelled = api
            .list(&ListParams::default().labels(&format!("{SOURCE_LABEL}=true")))
            .await
            .map_err(list("source Secrets"))?;
        for secret in labelled {
            let json = serde_json::to_value(&secret)?;
            if let Some(source) = SourceSecret::from_json(&json) {
                if let Ok(keyring) = dockercfg::keyring_of(&source) {
                    sources.keyrings.insert(source.name.clone(), keyring);
                }
                let reading = expiry::read_json(&json, &source);
                for problem in &reading.problems {
                    source_problems.push(format!("source Secret {}: {problem}", source.name));
                }
                if let Some(expiry) = reading.expiry {
                    let line = format!("source Secret {}: {}", source.name, expiry.describe(now));
                    if expiry.status(now) == Status::Valid {
                        source_expiries.push(line);
                    } else {
                        source_problems.push(line);
                    }
                    sources.expiries.insert(source.name.clone(), expiry);
                }
                if let Some((registries, line)) = crate::core::probe::rejections_json(&json) {
                    source_problems.push(format!("source Secret {}: {line}", source.name));
                    sources.rejected.insert(source.name.clone(), registries);
                }
                // The safe side is nowhere: a scope that cannot be read serves no namespace.
                let scope = source_scope(&json).unwrap_or_else(|e| {
                    source_problems.push(format!(
                        "source Secret {}: {e}; it serves no namespace",
                        source.name
                    ));
                    Scope::nowhere()
                });
                if config.settings.discovery {
                    let (mut found, errors) = dockercfg::rules_from(&source);
                    for rule in &mut found {
                        rule.scope = scope.clone();
                    }
                    sources.rules.extend(found);
                    for e in errors {
                        eprintln!("warning: {e}");
                    }
                }
            }
        }
    }
    let policy = Policy::merged(&config, &sources);

    let namespaces: Api<PartialObjectMeta<Namespace>> = Api::all(client.clone());
    let mut labels: BTreeMap<String, NamespaceLabel> = BTreeMap::new();
    let mut namespace_labels: BTreeMap<String, Arc<Labels>> = BTreeMap::new();
    for ns in namespaces
        .list(&ListParams::default())
        .await
        .map_err(list("namespaces"))?
    {
        let Some(name) = ns.metadata.name.clone() else {
            continue;
        };
        let all: Labels = ns.metadata.labels.clone().unwrap_or_default();
        let label = all.get(INJECT_LABEL).map(String::as_str);
        labels.insert(name.clone(), NamespaceLabel::from_value(label));
        namespace_labels.insert(name, Arc::new(all));
    }

    let scope = if args.all_namespaces {
        None
    } else {
        Some(
            args.target_namespace
                .clone()
                .unwrap_or_else(|| client.default_namespace().to_string()),
        )
    };
    let pods: Api<Pod> = match &scope {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let secrets: Api<PartialObjectMeta<Secret>> = match &scope {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let existing: BTreeSet<(String, String)> = secrets
        .list(&ListParams::default())
        .await
        .map_err(list("Secrets"))?
        .into_iter()
        .filter_map(|s| Some((s.metadata.namespace.clone()?, s.metadata.name.clone()?)))
        .collect();
    let listed = Listed {
        labels,
        namespace_labels,
        secrets: existing,
    };

    let mut reports = Vec::new();
    for pod in pods
        .list(&ListParams::default())
        .await
        .map_err(list("Pods"))?
    {
        let json = serde_json::to_string(&pod)?;
        reports.push(report(
            &json,
            &policy,
            &listed,
            injector_namespace.as_deref(),
            now,
        )?);
    }
    Ok(match args.output {
        AuditFormat::Json => {
            // The JSON stays a list of Pods; a source's unreadable scope goes to stderr.
            for problem in &source_problems {
                eprintln!("warning: {problem}");
            }
            let mut json = serde_json::to_string_pretty(&reports)?;
            json.push('\n');
            json
        }
        AuditFormat::Table => {
            let mut out = render_rules(&policy, &source_expiries, &source_problems);
            out.push_str(&render_table(&reports));
            out
        }
    })
}

/// The webhook's verdict for one existing Pod, as if it were created now (`pod_json` is the
/// Pod as the API returned it).
pub fn report(
    pod_json: &str,
    policy: &Policy,
    facts: &dyn ClusterFacts,
    injector_namespace: Option<&str>,
    now: i64,
) -> Result<PodReport, AuditError> {
    let pod: review::Pod<'_> = serde_json::from_str(pod_json)?;
    let state: PodState<'_> = serde_json::from_str(pod_json)?;
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let ctx = Context::new(policy, facts)
        .own_namespace(injector_namespace)
        .now(now);
    let verdict = verdict::for_pod(&pod, namespace, &ctx);
    let repair = repair::assess(&verdict, &state).map(|a| a.action.as_str());
    let running = state
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|phase| phase == "Running");
    let missing: Vec<&str> = verdict.secrets.iter().map(|s| s.name).collect();
    let out_of_scope = out_of_scope(&pod, namespace, policy, facts);
    let cache_risk = verdict
        .images
        .iter()
        .filter(|_| running)
        .filter_map(|finding| {
            let ImageOutcome::Matched { rule, .. } = &finding.outcome else {
                return None;
            };
            let policy = finding.pull_policy.unwrap_or("IfNotPresent");
            let lacking: Vec<String> = rule
                .secrets
                .iter()
                .filter(|s| missing.contains(&s.as_str()))
                .cloned()
                .collect();
            (matches!(policy, "IfNotPresent" | "Never") && !lacking.is_empty()).then(|| CacheRisk {
                container: finding.name.to_string(),
                image: finding.image.to_string(),
                pull_policy: policy.to_string(),
                missing: lacking,
            })
        })
        .collect();
    Ok(PodReport {
        namespace: namespace.to_string(),
        pod: pod.metadata.name.as_deref().unwrap_or("").to_string(),
        skipped: match verdict.outcome {
            Outcome::Skipped(reason) => Some(reason.as_str()),
            _ => None,
        },
        mode: verdict.mode.map(|m| m.as_str()),
        secrets: verdict
            .secrets
            .iter()
            .map(|s| SecretReport {
                name: s.name.to_string(),
                exists: s.presence == SecretPresence::Seen,
                rule: s.rule.pattern.to_string(),
                scope: describe_scope(s.rule, policy.settings()),
                images: s.images.iter().map(|i| i.to_string()).collect(),
                expiry: s.expiry.map(|e| SecretExpiry::of(s.name, e, now)),
            })
            .collect(),
        repair,
        cache_risk,
        // The report lists findings itself; warnings are the problems. Presence and expiry
        // are in `secrets` (and expiry once per source in the header), not once per Pod.
        warnings: verdict
            .warnings
            .iter()
            .filter(|w| {
                !w.is_audit_finding()
                    && !matches!(
                        w,
                        verdict::Warning::SecretNotSeen { .. }
                            | verdict::Warning::CredentialExpiring { .. }
                    )
            })
            .map(ToString::to_string)
            .collect(),
        out_of_scope,
    })
}

/// The Pod's `imagePullSecrets` entries that name a Secret only rules out of scope for its
/// namespace name (a Secret no rule names is not the injector's and is not judged).
pub fn out_of_scope(
    pod: &review::Pod<'_>,
    namespace: &str,
    policy: &Policy,
    facts: &dyn ClusterFacts,
) -> Vec<OutOfScopeRef> {
    let labels = facts.namespace_labels(namespace);
    let entries = pod
        .spec
        .as_ref()
        .and_then(|spec| spec.image_pull_secrets.as_deref())
        .unwrap_or_default();
    let mut out: Vec<OutOfScopeRef> = Vec::new();
    for name in entries.iter().filter_map(|e| e.name.as_deref()) {
        if name.is_empty() || out.iter().any(|o| o.secret == name) {
            continue;
        }
        let naming: Vec<&Rule> = policy
            .rules()
            .rules()
            .iter()
            .filter(|r| r.secrets.iter().any(|s| s == name))
            .collect();
        let served = naming
            .iter()
            .any(|r| effective_scope(r, policy.settings()).allows(namespace, labels.as_deref()));
        if !naming.is_empty() && !served {
            out.push(OutOfScopeRef {
                secret: name.to_string(),
                rules: naming.iter().map(|r| RuleScope::of(r, policy)).collect(),
            });
        }
    }
    out
}

/// Rows as columns padded to their widest cell, two spaces apart, one line each.
fn aligned<const N: usize>(rows: &[[String; N]]) -> String {
    let widths: Vec<usize> = (0..N)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// The rules and the namespaces each serves, the sources' expiries (`notes`), then the
/// sources' problems (unreadable scope, expired or expiring credential) as warnings.
pub fn render_rules(policy: &Policy, notes: &[String], source_problems: &[String]) -> String {
    let mut rows = vec![[
        "RULE".to_string(),
        "FROM".into(),
        "SECRETS".into(),
        "SCOPE".into(),
    ]];
    for rule in policy.rules().rules() {
        let r = RuleScope::of(rule, policy);
        rows.push([r.rule, r.source, r.secrets.join(","), r.scope]);
    }
    let mut out = aligned(&rows);
    for note in notes {
        out.push_str(note);
        out.push('\n');
    }
    for problem in source_problems {
        out.push_str("warning: ");
        out.push_str(problem);
        out.push('\n');
    }
    out.push('\n');
    out
}

pub fn render_table(reports: &[PodReport]) -> String {
    let mut rows = vec![[
        "NAMESPACE".to_string(),
        "POD".into(),
        "WOULD ADD".into(),
        "EXISTS".into(),
        "RULE".into(),
        "REPAIR".into(),
    ]];
    for r in reports {
        let repair = r.repair.unwrap_or("-").to_string();
        if let Some(reason) = r.skipped {
            rows.push([
                r.namespace.clone(),
                r.pod.clone(),
                format!("- ({reason})"),
                "-".into(),
                "-".into(),
                repair.clone(),
            ]);
        } else if r.secrets.is_empty() {
            rows.push([
                r.namespace.clone(),
                r.pod.clone(),
                "- (nothing to add)".into(),
                "-".into(),
                "-".into(),
                repair.clone(),
            ]);
        }
        for s in &r.secrets {
            let exists = if s.exists { "yes" } else { "NO" };
            let name = if r.mode == Some("audit") {
                format!("{} (audit)", s.name)
            } else {
                s.name.clone()
            };
            rows.push([
                r.namespace.clone(),
                r.pod.clone(),
                name,
                exists.into(),
                s.rule.clone(),
                repair.clone(),
            ]);
        }
    }
    let mut out = aligned(&rows);
    let risks: Vec<String> = reports
        .iter()
        .flat_map(|r| {
            r.cache_risk.iter().map(move |c| {
                format!(
                    "{}/{} container {} image {} ({}): runs from the node's cache without {}",
                    r.namespace,
                    r.pod,
                    c.container,
                    c.image,
                    c.pull_policy,
                    c.missing.join(", ")
                )
            })
        })
        .collect();
    let out_of_scope: Vec<String> = reports
        .iter()
        .flat_map(|r| {
            r.out_of_scope.iter().map(move |o| {
                let rules: Vec<String> = o
                    .rules
                    .iter()
                    .map(|rule| format!("rule {} ({})", rule.rule, rule.scope))
                    .collect();
                format!(
                    "{}/{} lists Secret {}, which only {} name",
                    r.namespace,
                    r.pod,
                    o.secret,
                    rules.join(", ")
                )
            })
        })
        .collect();
    if !out_of_scope.is_empty() {
        out.push_str("\nOut-of-scope references: these Pods name a credential whose rules do not serve their\nnamespace (the injector no longer adds it there; a sync copy is revoked after revokeAfter):\n");
        for line in out_of_scope {
            out.push_str("  ");
            out.push_str(&line);
            out.push('\n');
        }
    }
    if !risks.is_empty() {
        out.push_str("\nRunning from the node's image cache without the secret their registry needs; they fail\nwhen a node pulls again (a new node, image garbage collection, or Kubernetes 1.35+\nverifying cached credentials):\n");
        for risk in risks {
            out.push_str("  ");
            out.push_str(&risk);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_secrets_and_whether_they_exist() {
        let config = config::from_bytes(
            std::path::Path::new("t"),
            b"rules:\n  - registry: docker.io\n    secrets: [dockerhub]\n  - registry: ghcr.io\n    secrets: [ghcr]\n",
        )
        .expect("valid");
        let policy = Policy::from_config(&config);
        let listed = Listed {
            labels: [("team-a".to_string(), NamespaceLabel::Enabled)].into(),
            namespace_labels: BTreeMap::new(),
            secrets: [("team-a".to_string(), "dockerhub".to_string())].into(),
        };
        let pod = |ns: &str| {
            format!(
                r#"{{"metadata":{{"name":"web","namespace":"{ns}"}},"spec":{{"containers":[{{"name":"a","image":"nginx"}},{{"name":"b","image":"ghcr.io/x/y"}},{{"name":"c","image":"UPPER"}}]}}}}"#
            )
        };
        let r = report(&pod("team-a"), &policy, &listed, Some("psi"), 0).expect("report");
        assert_eq!(
            r,
            PodReport {
                namespace: "team-a".into(),
                pod: "web".into(),
                skipped: None,
                mode: Some("enforce"),
                secrets: vec![
                    SecretReport {
                        name: "dockerhub".into(),
                        exists: true,
                        rule: "docker.io".into(),
                        scope: "everywhere".into(),
                        images: vec!["nginx".into()],
                        expiry: None,
                    },
                    SecretReport {
                        name: "ghcr".into(),
                        exists: false,
                        rule: "ghcr.io".into(),
                        scope: "everywhere".into(),
                        images: vec!["ghcr.io/x/y".into()],
                        expiry: None,
                    },
                ],
                repair: None,
                cache_risk: vec![],
                warnings: vec![
                    "pullsecret-injector: container c image \"UPPER\" not matched: invalid reference format: repository name must be lowercase".into()
                ],
                out_of_scope: vec![],
            }
        );
        let table = render_table(std::slice::from_ref(&r));
        assert!(
            table.contains("team-a     web  ghcr       NO      ghcr.io"),
            "{table}"
        );

        // Running from the cache: IfNotPresent, and the Pod lacks the secret its image needs.
        let running = r#"{"metadata":{"name":"old","namespace":"team-a"},"spec":{"containers":[
            {"name":"a","image":"ghcr.io/x/y","imagePullPolicy":"IfNotPresent"},
            {"name":"b","image":"nginx","imagePullPolicy":"Always"}]},"status":{"phase":"Running"}}"#;
        let r = report(running, &policy, &listed, Some("psi"), 0).expect("report");
        assert_eq!(
            r.cache_risk,
            [CacheRisk {
                container: "a".into(),
                image: "ghcr.io/x/y".into(),
                pull_policy: "IfNotPresent".into(),
                missing: vec!["ghcr".into()],
            }]
        );
        assert!(
            render_table(&[r]).contains("team-a/old container a image ghcr.io/x/y (IfNotPresent): runs from the node's cache without ghcr"),
        );

        let skipped = report(&pod("team-b"), &policy, &listed, Some("psi"), 0).expect("report");
        assert_eq!(
            skipped.skipped,
            Some("namespace not labelled pullsecret-injector/inject=enabled")
        );
    }

    #[test]
    fn rule_scopes_and_out_of_scope_references() {
        let config = config::from_bytes(
            std::path::Path::new("t"),
            br#"
namespaces: {selection: all}
rules:
  - registry: ghcr.io/acme/team-a
    secrets: [team-a-pull]
    namespaces: [team-a]
  - registry: ghcr.io/acme/team-b
    secrets: [team-b-pull]
    namespaceSelector: {matchLabels: {team: b}}
  - registry: docker.io
    secrets: [dockerhub]
"#,
        )
        .expect("valid");
        let policy = Policy::from_config(&config);
        let labels = |team: &str| Arc::new(Labels::from([("team".into(), team.into())]));
        let listed = Listed {
            labels: BTreeMap::new(),
            namespace_labels: [
                ("team-a".to_string(), labels("a")),
                ("team-b".to_string(), labels("b")),
            ]
            .into(),
            secrets: BTreeSet::new(),
        };
        let pod = |ns: &str| {
            format!(
                r#"{{"metadata":{{"name":"web","namespace":"{ns}"}},"spec":{{"imagePullSecrets":[{{"name":"team-a-pull"}},{{"name":"team-b-pull"}},{{"name":"own"}},{{"name":"dockerhub"}}],"containers":[{{"name":"a","image":"nginx"}}]}}}}"#
            )
        };
        // team-a holds team-b's credential; team-b holds team-a's; a namespace whose labels
        // are unknown (not listed) is served by no selector.
        let names = |ns: &str| -> Vec<String> {
            let r = report(&pod(ns), &policy, &listed, Some("psi"), 0).expect("report");
            r.out_of_scope.into_iter().map(|o| o.secret).collect()
        };
        assert_eq!(names("team-a"), ["team-b-pull"]);
        assert_eq!(names("team-b"), ["team-a-pull"]);
        assert_eq!(names("team-c"), ["team-a-pull", "team-b-pull"]);

        let r = report(&pod("team-a"), &policy, &listed, Some("psi"), 0).expect("report");
        assert_eq!(
            r.out_of_scope[0].rules,
            [RuleScope {
                rule: "ghcr.io/acme/team-b".into(),
                source: "config rules[1]".into(),
                secrets: vec!["team-b-pull".into()],
                scope: "labels team=b".into(),
            }]
        );
        let table = render_table(&[r]);
        assert!(
            table.contains("team-a/web lists Secret team-b-pull, which only rule ghcr.io/acme/team-b (labels team=b) name"),
            "{table}"
        );
        let rules = render_rules(&policy, &[], &["source Secret x: bad".into()]);
        assert!(
            rules.contains("ghcr.io/acme/team-a  config rules[0]  team-a-pull  namespaces team-a"),
            "{rules}"
        );
        assert!(rules.contains("warning: source Secret x: bad"), "{rules}");

        // requireScope: the rule without a scope serves nowhere, and says why.
        let config = config::from_bytes(
            std::path::Path::new("t"),
            b"requireScope: true\nrules:\n  - registry: docker.io\n    secrets: [dockerhub]\n",
        )
        .expect("valid");
        let policy = Policy::from_config(&config);
        let r = report(&pod("team-a"), &policy, &listed, Some("psi"), 0).expect("report");
        assert_eq!(r.out_of_scope[0].secret, "dockerhub");
        assert_eq!(
            r.out_of_scope[0].rules[0].scope,
            "nowhere (requireScope: no scope declared)"
        );
    }

    #[test]
    fn source_expiries_are_reported_per_secret_and_in_the_header() {
        use crate::core::expiry::{Expiry, Origin};
        let config = config::from_bytes(
            std::path::Path::new("t"),
            b"rules:\n  - registry: docker.io\n    secrets: [dockerhub]\n  - registry: ghcr.io\n    secrets: [ghcr]\n",
        )
        .expect("valid");
        let now = 1_796_612_400;
        let sources = Sources {
            expiries: [(
                "ghcr".to_string(),
                Expiry {
                    at: now - 60,
                    origin: Origin::Annotation(crate::core::names::EXPIRES_AT_ANNOTATION),
                    issued: None,
                },
            )]
            .into(),
            ..Sources::default()
        };
        let policy = Policy::merged(&config, &sources);
        let listed = Listed {
            labels: [("team-a".to_string(), NamespaceLabel::Enabled)].into(),
            namespace_labels: BTreeMap::new(),
            secrets: BTreeSet::new(),
        };
        let pod = r#"{"metadata":{"name":"p","namespace":"team-a"},"spec":{"containers":[{"name":"a","image":"nginx"},{"name":"b","image":"ghcr.io/acme/b"}]}}"#;
        let r = report(pod, &policy, &listed, Some("psi"), now).expect("report");
        // Both still added; only the source with a known expiry carries one.
        let got: Vec<(&str, Option<&str>)> = r
            .secrets
            .iter()
            .map(|s| (s.name.as_str(), s.expiry.as_ref().map(|e| e.status)))
            .collect();
        assert_eq!(got, [("dockerhub", None), ("ghcr", Some("expired"))]);
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        let json = serde_json::to_value(&r.secrets).expect("json");
        assert_eq!(json[1]["expiry"]["expiresAt"], "2026-12-07T02:59:00Z");
        assert!(json[0].get("expiry").is_none(), "{json}");
        let header = render_rules(
            &policy,
            &["source Secret hub: expires at X".into()],
            &["source Secret ghcr: expired at Y".into()],
        );
        assert!(
            header.contains(
                "source Secret hub: expires at X\nwarning: source Secret ghcr: expired at Y\n"
            ),
            "{header}"
        );
    }
}

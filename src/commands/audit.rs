//! `audit`: against a live cluster, for each existing Pod, the secrets the injector would add
//! and whether each exists in the Pod's namespace. The report to read before turning
//! injection on.
//!
//! It runs the webhook's own decision on every Pod as if it were being created now, with the
//! namespace labels read from the API, and looks the secrets up separately, so a secret that
//! sync would create is still listed (and shown as missing today).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::api::{Api, ListParams, PartialObjectMeta};
use serde::Serialize;

use crate::cli::{AuditArgs, AuditFormat};
use crate::cluster::{self, ClusterError};
use crate::core::config::{self, ConfigError};
use crate::core::decision::{Context, ImageOutcome};
use crate::core::dockercfg::{self, SourceSecret};
use crate::core::facts::{ClusterFacts, NamespaceCache, NamespaceLabel, SecretPresence};
use crate::core::names::{INJECT_LABEL, SOURCE_LABEL};
use crate::core::policy::{Policy, Sources};
use crate::core::repair::{self, PodState};
use crate::core::review;
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
    pub images: Vec<String>,
}

/// What the API returned: namespace labels and the Secrets that exist. Complete lists, so
/// absence here is absence in the cluster (at the time of the list).
pub struct Listed {
    pub labels: BTreeMap<String, NamespaceLabel>,
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
}

/// `audit`: the report, rendered as `-o` asks.
pub async fn run(args: AuditArgs) -> Result<String, AuditError> {
    let config = config::load(&args.config)?;
    let injector_namespace = args.cluster.own_namespace();
    let client = cluster::client::client(&args.cluster).await?;
    let list = |what| move |source| AuditError::List { what, source };

    let mut sources = Sources::default();
    if (config.settings.discovery || config.settings.sync)
        && let Some(ns) = &injector_namespace
    {
        let api: Api<Secret> = Api::namespaced(client.clone(), ns);
        let labelled = api
            .list(&ListParams::default().labels(&format!("{SOURCE_LABEL}=true")))
            .await
            .map_err(list("source Secrets"))?;
        for secret in labelled {
            if let Some(source) = SourceSecret::from_json(&serde_json::to_value(&secret)?) {
                if let Ok(keyring) = dockercfg::keyring_of(&source) {
                    sources.keyrings.insert(source.name.clone(), keyring);
                }
                if config.settings.discovery {
                    let (found, errors) = dockercfg::rules_from(&source);
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
    let labels: BTreeMap<String, NamespaceLabel> = namespaces
        .list(&ListParams::default())
        .await
        .map_err(list("namespaces"))?
        .into_iter()
        .filter_map(|ns| {
            let label = ns
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(INJECT_LABEL))
                .map(String::as_str);
            Some((ns.metadata.name.clone()?, NamespaceLabel::from_value(label)))
        })
        .collect();

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
        )?);
    }
    Ok(match args.output {
        AuditFormat::Json => {
            let mut json = serde_json::to_string_pretty(&reports)?;
            json.push('\n');
            json
        }
        AuditFormat::Table => render_table(&reports),
    })
}

/// The webhook's verdict for one existing Pod, as if it were created now (`pod_json` is the
/// Pod as the API returned it).
pub fn report(
    pod_json: &str,
    policy: &Policy,
    facts: &dyn ClusterFacts,
    injector_namespace: Option<&str>,
) -> Result<PodReport, AuditError> {
    let pod: review::Pod<'_> = serde_json::from_str(pod_json)?;
    let state: PodState<'_> = serde_json::from_str(pod_json)?;
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let ctx = Context::new(policy, facts).own_namespace(injector_namespace);
    let verdict = verdict::for_pod(&pod, namespace, &ctx);
    let repair = repair::assess(&verdict, &state).map(|a| a.action.as_str());
    let running = state
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|phase| phase == "Running");
    let missing: Vec<&str> = verdict.secrets.iter().map(|s| s.name).collect();
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
                images: s.images.iter().map(|i| i.to_string()).collect(),
            })
            .collect(),
        repair,
        cache_risk,
        // The report lists findings itself; warnings are the problems.
        warnings: verdict
            .warnings
            .iter()
            .filter(|w| {
                !w.is_audit_finding() && !matches!(w, verdict::Warning::SecretNotSeen { .. })
            })
            .map(ToString::to_string)
            .collect(),
    })
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
    let widths: Vec<usize> = (0..6)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
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
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
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
            secrets: [("team-a".to_string(), "dockerhub".to_string())].into(),
        };
        let pod = |ns: &str| {
            format!(
                r#"{{"metadata":{{"name":"web","namespace":"{ns}"}},"spec":{{"containers":[{{"name":"a","image":"nginx"}},{{"name":"b","image":"ghcr.io/x/y"}},{{"name":"c","image":"UPPER"}}]}}}}"#
            )
        };
        let r = report(&pod("team-a"), &policy, &listed, Some("psi")).expect("report");
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
                        images: vec!["nginx".into()],
                    },
                    SecretReport {
                        name: "ghcr".into(),
                        exists: false,
                        rule: "ghcr.io".into(),
                        images: vec!["ghcr.io/x/y".into()],
                    },
                ],
                repair: None,
                cache_risk: vec![],
                warnings: vec![
                    "pullsecret-injector: container c image \"UPPER\" not matched: invalid reference format: repository name must be lowercase".into()
                ],
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
        let r = report(running, &policy, &listed, Some("psi")).expect("report");
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

        let skipped = report(&pod("team-b"), &policy, &listed, Some("psi")).expect("report");
        assert_eq!(
            skipped.skipped,
            Some("namespace not labelled pullsecret-injector/inject=enabled")
        );
    }
}

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

use crate::cli::{AuditArgs, AuditFormat, ClusterArgs};
use crate::cluster::{self, ClusterError, discovery};
use crate::config::{self, ConfigError};
use crate::decision::{self, Context, Decision, Endpoint, NamespaceLabel, NoSecretIndex};
use crate::review::{self, INJECT_LABEL};
use crate::rules::RuleSet;

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
    #[error("cannot write the report: {0}")]
    Output(#[from] serde_json::Error),
}

/// One Pod in the report.
#[derive(Debug, Serialize)]
pub struct PodReport {
    pub namespace: String,
    pub pod: String,
    /// Why the injector would leave this Pod alone, if it would.
    pub skipped: Option<&'static str>,
    /// `enforce` or `audit` (namespace labelled `=audit`, or audit mode).
    pub mode: Option<&'static str>,
    pub secrets: Vec<SecretReport>,
    pub warnings: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct SecretReport {
    pub name: String,
    pub exists: bool,
    pub rule: String,
    pub images: Vec<String>,
}

pub async fn run(args: AuditArgs) -> Result<(), AuditError> {
    let mut config = config::load(&args.config)?;
    let cluster_args = ClusterArgs {
        kubeconfig: args.kubeconfig.clone(),
        namespace: args.injector_namespace.clone(),
    };
    let injector_namespace = cluster_args.own_namespace();
    let client = cluster::client(&cluster_args).await?;
    let list = |what| move |source| AuditError::List { what, source };

    let mut rules = config.rules.rules().to_vec();
    if config.discovery
        && let Some(ns) = &injector_namespace
    {
        let api: Api<Secret> = Api::namespaced(client.clone(), ns);
        let sources = api
            .list(&ListParams::default().labels(&format!("{}=true", discovery::SOURCE_LABEL)))
            .await
            .map_err(list("source Secrets"))?;
        for secret in sources {
            let json = serde_json::to_value(&secret)?;
            if let Some(source) = discovery::source_from_json(&json) {
                let (found, errors) = discovery::rules_from(&source);
                rules.extend(found);
                for e in errors {
                    eprintln!("warning: {e}");
                }
            }
        }
    }
    let rules = RuleSet::new(rules);
    // Report every matched secret, and whether it exists, rather than hiding missing ones.
    config.sync = true;

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
            args.namespace
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

    let mut reports = Vec::new();
    for pod in pods
        .list(&ListParams::default())
        .await
        .map_err(list("Pods"))?
    {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let label = labels
            .get(&namespace)
            .copied()
            .unwrap_or(NamespaceLabel::Unlabelled);
        let json = serde_json::to_string(&pod)?;
        reports.push(report(
            &json,
            &namespace,
            label,
            &config,
            &rules,
            injector_namespace.as_deref(),
            &existing,
        )?);
    }
    match args.output {
        AuditFormat::Json => println!("{}", serde_json::to_string_pretty(&reports)?),
        AuditFormat::Table => print!("{}", render_table(&reports)),
    }
    Ok(())
}

/// The decision for one existing Pod (`pod_json` is the Pod as the API returned it).
pub fn report(
    pod_json: &str,
    namespace: &str,
    label: NamespaceLabel,
    config: &config::Config,
    rules: &RuleSet,
    injector_namespace: Option<&str>,
    existing: &BTreeSet<(String, String)>,
) -> Result<PodReport, AuditError> {
    let pod: review::Pod<'_> = serde_json::from_str(pod_json)?;
    let mut out = PodReport {
        namespace: namespace.to_string(),
        pod: pod.metadata.name.as_deref().unwrap_or("").to_string(),
        skipped: None,
        mode: None,
        secrets: Vec::new(),
        warnings: Vec::new(),
    };
    let ctx = Context {
        config,
        rules,
        endpoint: Endpoint::Mutate,
        own_namespace: injector_namespace,
        namespace,
        namespace_label: label,
        secrets: &NoSecretIndex,
    };
    match decision::decide(&pod, &ctx) {
        Decision::Skip(reason) => out.skipped = Some(reason.as_str()),
        Decision::Plan(plan) => {
            out.mode = Some(if plan.mode == config::Mode::Enforce {
                "enforce"
            } else {
                "audit"
            });
            out.warnings = plan
                .warnings()
                .into_iter()
                .filter(|w| !w.contains("(audit)"))
                .collect();
            out.secrets = plan
                .add
                .iter()
                .map(|s| SecretReport {
                    name: s.name.to_string(),
                    exists: existing.contains(&(namespace.to_string(), s.name.to_string())),
                    rule: s.rule.pattern.to_string(),
                    images: s.images.iter().map(|i| i.to_string()).collect(),
                })
                .collect();
        }
    }
    Ok(out)
}

pub fn render_table(reports: &[PodReport]) -> String {
    let mut rows = vec![[
        "NAMESPACE".to_string(),
        "POD".into(),
        "WOULD ADD".into(),
        "EXISTS".into(),
        "RULE".into(),
    ]];
    for r in reports {
        if let Some(reason) = r.skipped {
            rows.push([
                r.namespace.clone(),
                r.pod.clone(),
                format!("- ({reason})"),
                "-".into(),
                "-".into(),
            ]);
        } else if r.secrets.is_empty() {
            rows.push([
                r.namespace.clone(),
                r.pod.clone(),
                "- (nothing to add)".into(),
                "-".into(),
                "-".into(),
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
            ]);
        }
    }
    let widths: Vec<usize> = (0..5)
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
        let mut config = config;
        config.sync = true;
        let existing: BTreeSet<(String, String)> =
            [("team-a".to_string(), "dockerhub".to_string())].into();
        let pod = r#"{"metadata":{"name":"web","namespace":"team-a"},"spec":{"containers":[{"name":"a","image":"nginx"},{"name":"b","image":"ghcr.io/x/y"}]}}"#;
        let rules = config.rules.clone();
        let r = report(
            pod,
            "team-a",
            NamespaceLabel::Enabled,
            &config,
            &rules,
            Some("psi"),
            &existing,
        )
        .expect("report");
        let got: Vec<(&str, bool)> = r
            .secrets
            .iter()
            .map(|s| (s.name.as_str(), s.exists))
            .collect();
        assert_eq!(got, [("dockerhub", true), ("ghcr", false)]);
        let table = render_table(&[r]);
        assert!(
            table.contains("team-a     web  ghcr       NO      ghcr.io"),
            "{table}"
        );

        let skipped = report(
            pod,
            "team-b",
            NamespaceLabel::Unlabelled,
            &config,
            &rules,
            Some("psi"),
            &existing,
        )
        .expect("report");
        assert_eq!(
            skipped.skipped,
            Some("namespace not labelled pullsecret-injector/inject=enabled")
        );
    }
}

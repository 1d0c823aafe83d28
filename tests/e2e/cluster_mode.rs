//! Cluster mode with secret awareness: the missing-Secret warning (and what counts as there),
//! Secrets and Pods created back to back (issue 8.2), and the two user-facing JSON formats,
//! `audit -o json` against the live cluster and `explain -o json`, pinned exactly.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, ensure};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{Namespace, Pod, PodTemplateSpec, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use pullsecret_injector::core::names::{
    DOCKER_CFG, INJECT_AUDIT, INJECT_DISABLED, INJECT_ENABLED, INJECT_LABEL,
};
use serde_json::{Value, json};

use crate::api::{Cred, pod, pull_secrets};
use crate::harness::{Label, Sc, eventually, path_str};
use crate::process::run_binary;

const NOT_YET: &str = "is not in this namespace yet";

fn not_yet(secret: &str, rule: &str) -> String {
    format!(
        "pullsecret-injector: Secret {secret} (rule {rule}) is not in this namespace yet; referenced anyway: the kubelet uses it as soon as it exists"
    )
}

/// A Secret that is not a docker config (Opaque, or the legacy dockercfg type).
fn other_secret(name: &str, namespace: &str, type_: &str, key: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            ..Default::default()
        },
        type_: Some(type_.into()),
        data: Some(BTreeMap::from([(
            key.to_string(),
            ByteString(b"{}".to_vec()),
        )])),
        ..Default::default()
    }
}

/// Secret awareness: a matched Secret missing from the namespace is still referenced (the
/// safe side) with a warning; once it exists the warning goes. An Opaque Secret of that name
/// does not count; a legacy `kubernetes.io/dockercfg` one does.
pub async fn secret_awareness(sc: Sc) -> Result<()> {
    let both = pod("web").image("nginx").image("ghcr.io/acme/app").build();
    let ns = sc.ns(Label::Enabled, &["dockerhub"]).await?;
    let web = sc.create_pod(&ns, &both).await?;
    crate::basic::expect_stored(&sc, &ns, "web", &["dockerhub", "ghcr-acme"]).await?;
    let want = vec![not_yet("ghcr-acme", "ghcr.io/acme")];
    ensure!(
        web.warnings == want,
        "warnings {:?}, want {want:?}",
        web.warnings
    );

    sc.put_cred(&ns, "ghcr-acme", &Cred::standard("ghcr-acme")?, &[])
        .await?;
    let (_, took) = eventually(Duration::from_secs(5), "the new Secret is seen", || {
        let (sc, ns, both) = (&sc, &ns, &both);
        async move {
            let created = sc.dry_run(ns, both).await?;
            ensure!(
                created.secrets() == ["dockerhub", "ghcr-acme"],
                "secrets {:?}",
                created.secrets()
            );
            ensure!(
                created.warnings.is_empty(),
                "warnings {:?}",
                created.warnings
            );
            Ok(())
        }
    })
    .await?;
    sc.note(format!(
        "a Secret created in the namespace was seen after {took:?}"
    ));

    // Created before a docker config Secret: once that one is seen, the watch has passed
    // the first one too.
    for (type_, key, counts) in [
        ("Opaque", ".dockerconfigjson", false),
        (DOCKER_CFG, ".dockercfg", true),
    ] {
        let ns = sc.ns(Label::Enabled, &[]).await?;
        sc.create_secret(&ns, &other_secret("ghcr-acme", &ns, type_, key))
            .await?;
        sc.put_cred(&ns, "dockerhub", &Cred::standard("dockerhub")?, &[])
            .await?;
        let want: Vec<String> = if counts {
            vec![]
        } else {
            vec![not_yet("ghcr-acme", "ghcr.io/acme")]
        };
        eventually(
            Duration::from_secs(5),
            &format!("a {type_} Secret named ghcr-acme"),
            || {
                let (sc, ns, both, want) = (&sc, &ns, &both, &want);
                async move {
                    let created = sc.dry_run(ns, both).await?;
                    ensure!(
                        created.secrets() == ["dockerhub", "ghcr-acme"],
                        "secrets {:?}",
                        created.secrets()
                    );
                    ensure!(
                        created.warnings == *want,
                        "warnings {:?}, want {want:?}",
                        created.warnings
                    );
                    Ok(())
                }
            },
        )
        .await?;
    }
    Ok(())
}

fn deployment(name: &str, image: &str) -> Deployment {
    let labels = BTreeMap::from([("app".to_string(), name.to_string())]);
    Deployment {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(1),
            selector: LabelSelector {
                match_labels: Some(labels.clone()),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: pod(name).image(image).build().spec,
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Issue 8.2: a Secret and a Pod created back to back, nothing between them (as `kubectl
/// apply -f` of a List holding the Secret and then a Deployment), 20 times in a row in fresh
/// namespaces: every Pod references the Secret, whether the webhook's cache had it yet or
/// not. Twice: Deployments turned into Pods by kube-controller-manager, and bare Pods created
/// right after the Secret (the tightest race).
pub async fn applied_together(sc: Sc) -> Result<()> {
    ensure!(
        sc.suite.env.controller_manager,
        "kube-controller-manager is not running (tests/e2e/kube-up.sh --controller-manager; run.sh starts it)"
    );
    const ROUNDS: usize = 20;
    let cred = Cred::standard("dockerhub")?;
    let started = Instant::now();
    let mut with_deployments = Vec::new();
    for _ in 0..ROUNDS {
        let ns = sc.ns(Label::Enabled, &[]).await?;
        sc.put_cred(&ns, "dockerhub", &cred, &[]).await?;
        Api::<Deployment>::namespaced(sc.admin(), &ns)
            .create(&PostParams::default(), &deployment("web", "nginx"))
            .await
            .context("creating the Deployment")?;
        with_deployments.push(ns);
    }
    let mut warned = 0;
    for _ in 0..ROUNDS {
        let ns = sc.ns(Label::Enabled, &[]).await?;
        sc.put_cred(&ns, "dockerhub", &cred, &[]).await?;
        let created = sc
            .create_pod(&ns, &pod("web").image("nginx").build())
            .await?;
        ensure!(
            created.secrets() == ["dockerhub"],
            "bare Pod in {ns}: imagePullSecrets {:?}",
            created.secrets()
        );
        if created.warned(NOT_YET) {
            warned += 1;
        }
    }
    for ns in &with_deployments {
        let sc = &sc;
        let (pod, _) = eventually(
            Duration::from_secs(60),
            "the ReplicaSet's Pod",
            || async move {
                let pods = Api::<Pod>::namespaced(sc.admin(), ns)
                    .list(&ListParams::default())
                    .await?;
                match pods.items.as_slice() {
                    [pod] => Ok(pod.clone()),
                    other => Err(anyhow!("{ns}: {} Pods", other.len())),
                }
            },
        )
        .await?;
        let name = pod.metadata.name.clone().unwrap_or_default();
        ensure!(
            pull_secrets(&pod) == ["dockerhub"],
            "Pod {ns}/{name} (created by the ReplicaSet controller): imagePullSecrets {:?}",
            pull_secrets(&pod)
        );
    }
    sc.note(format!(
        "{ROUNDS} Deployments and {ROUNDS} bare Pods, each right after its Secret, all reference it ({:?}); {warned} of the {ROUNDS} bare Pods were admitted before the Secret reached the webhook's cache (referenced anyway, with the warning)",
        started.elapsed()
    ));
    Ok(())
}

/// `audit -o json` against the live cluster: the whole output for one namespace, and the
/// entries of two namespaces in `-A`, compared as whole objects.
pub async fn audit_cli(sc: Sc) -> Result<()> {
    let inst = sc.inst.clone();
    // Pods created before the namespace opted in (the webhook left them alone).
    let ns = sc.ns(Label::None, &["dockerhub"]).await?;
    for p in [
        pod("legacy")
            .image("nginx")
            .image("ghcr.io/acme/app")
            .build(),
        pod("bad").image("UPPER").build(),
        pod("optout")
            .image("nginx")
            .label(INJECT_LABEL, INJECT_DISABLED)
            .build(),
    ] {
        sc.create_pod(&ns, &p).await?;
    }
    crate::basic::expect_stored(&sc, &ns, "legacy", &[]).await?;
    Api::<Namespace>::all(sc.admin())
        .patch(
            &ns,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {INJECT_LABEL: INJECT_ENABLED}}})),
        )
        .await?;
    let audit_ns = sc.ns(Label::Audit, &["dockerhub"]).await?;
    sc.create_pod(&audit_ns, &pod("web").image("nginx").build())
        .await?;

    let kubeconfig = path_str(&sc.suite.env.kubeconfig)?.to_string();
    let config = path_str(&inst.config_path)?.to_string();
    let run = |extra: Vec<String>| {
        let mut args: Vec<String> = [
            "audit",
            "--kubeconfig",
            &kubeconfig,
            "--config",
            &config,
            "--injector-namespace",
            &inst.ns,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra);
        let bin = sc.suite.env.bin.clone();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (status, out, err) = run_binary(&bin, &args).await?;
            ensure!(
                status.success(),
                "pullsecret-injector {} failed ({status}): {err}",
                args.join(" ")
            );
            Ok::<_, anyhow::Error>(out)
        }
    };
    let legacy = json!({
        "namespace": ns, "pod": "legacy", "skipped": null, "mode": "enforce",
        "secrets": [
            {"name": "dockerhub", "exists": true, "rule": "docker.io", "scope": "everywhere", "images": ["nginx"]},
            {"name": "ghcr-acme", "exists": false, "rule": "ghcr.io/acme", "scope": "everywhere", "images": ["ghcr.io/acme/app"]},
        ],
        "repair": null,
        "cacheRisk": [], "outOfScope": [],
        "warnings": [],
    });
    let want = json!([
        {
            "namespace": ns, "pod": "bad", "skipped": null, "mode": "enforce", "secrets": [], "repair": null, "cacheRisk": [], "outOfScope": [],
            "warnings": ["pullsecret-injector: container c0 image \"UPPER\" not matched: invalid reference format: repository name must be lowercase"],
        },
        legacy,
        {
            "namespace": ns, "pod": "optout", "skipped": "Pod labelled pullsecret-injector/inject=disabled",
            "mode": null, "secrets": [], "repair": null, "cacheRisk": [], "outOfScope": [], "warnings": [],
        },
    ]);
    let out = run(vec!["-n".into(), ns.clone(), "-o".into(), "json".into()]).await?;
    let got: Value =
        serde_json::from_str(&out).with_context(|| format!("audit -o json is not JSON: {out}"))?;
    ensure!(
        got == want,
        "audit -n {ns} -o json:\n{got:#}\nwant:\n{want:#}"
    );

    let out = run(vec!["-A".into(), "-o".into(), "json".into()]).await?;
    let all: Value = serde_json::from_str(&out).with_context(|| {
        format!(
            "audit -A -o json is not JSON: {}",
            &out[..out.len().min(300)]
        )
    })?;
    let ours: Vec<&Value> = all
        .as_array()
        .ok_or_else(|| anyhow!("audit -A -o json is not a list"))?
        .iter()
        .filter(|e| e["namespace"] == ns.as_str() || e["namespace"] == audit_ns.as_str())
        .collect();
    let audited = json!({
        "namespace": audit_ns, "pod": "web", "skipped": null, "mode": INJECT_AUDIT,
        "secrets": [{"name": "dockerhub", "exists": true, "rule": "docker.io", "scope": "everywhere", "images": ["nginx"]}],
        "repair": null,
        "cacheRisk": [], "outOfScope": [],
        "warnings": [],
    });
    let want_all: Vec<&Value> = want
        .as_array()
        .into_iter()
        .flatten()
        .chain([&audited])
        .collect();
    let mut ours_sorted = ours.clone();
    ours_sorted.sort_by_key(|e| (e["namespace"].to_string(), e["pod"].to_string()));
    let mut want_sorted = want_all.clone();
    want_sorted.sort_by_key(|e| (e["namespace"].to_string(), e["pod"].to_string()));
    ensure!(
        ours_sorted == want_sorted,
        "audit -A -o json, entries of {ns} and {audit_ns}:\n{ours_sorted:#?}\nwant:\n{want_sorted:#?}"
    );

    // The table is for people: its rows, not its spacing.
    let table = run(vec!["-n".into(), ns.clone()]).await?;
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    let want_row = [ns.as_str(), "legacy", "ghcr-acme", "NO", "ghcr.io/acme"];
    ensure!(
        rows.iter().any(|r| r.starts_with(&want_row)),
        "audit -n {ns} (table) has no row starting {want_row:?}:\n{table}"
    );
    // First each rule and the namespaces it serves (issue 14), then the Pods.
    ensure!(
        rows.first()
            .is_some_and(|r| r.starts_with(&["RULE", "FROM", "SECRETS", "SCOPE"]))
            && rows
                .iter()
                .any(|r| r == &["docker.io", "config", "rules[0]", "dockerhub", "everywhere"]),
        "audit rules table: {table}"
    );
    ensure!(
        rows.iter()
            .any(|r| r.starts_with(&["NAMESPACE", "POD", "WOULD", "ADD", "EXISTS", "RULE"])),
        "audit table header: {table}"
    );
    Ok(())
}

/// `explain -o json` (offline) on Pods and a workload, compared as a whole.
pub async fn explain_json(sc: Sc) -> Result<()> {
    let inst = sc.inst.clone();
    let input = inst.dir.join("explain-input.yaml");
    std::fs::write(
        &input,
        r#"apiVersion: v1
kind: Pod
metadata: {name: web, namespace: team-a}
spec:
  initContainers: [{name: init, image: "ghcr.io/acme/init:1"}]
  containers:
    - {name: app, image: nginx}
    - {name: bad, image: UPPER}
    - {name: public, image: quay.io/prometheus/busybox}
---
apiVersion: v1
kind: Pod
metadata: {name: audited, namespace: team-a, labels: {pullsecret-injector/inject: audit}}
spec: {containers: [{name: app, image: nginx}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: sys, namespace: kube-system}
spec: {template: {spec: {containers: [{name: c, image: nginx}]}}}
"#,
    )?;
    let (status, out, err) = run_binary(
        &sc.suite.env.bin,
        &[
            "explain",
            "--config",
            path_str(&inst.config_path)?,
            "-f",
            path_str(&input)?,
            "-o",
            "json",
        ],
    )
    .await?;
    ensure!(status.success(), "explain failed ({status}): {err}");
    let got: Value = serde_json::from_str(&out)
        .with_context(|| format!("explain -o json is not JSON: {out}"))?;
    let image = |list: &str,
                 name: &str,
                 image: &str,
                 registry: Value,
                 repository: Value,
                 rule: Value,
                 source: Value,
                 secrets: Value,
                 error: Value| {
        // No rule here declares a scope: a matched rule serves everywhere (issue 14).
        let scope = if rule.is_null() {
            Value::Null
        } else {
            json!("everywhere")
        };
        json!({
            "list": list, "name": name, "image": image, "registry": registry, "repository": repository,
            "rule": rule, "ruleSource": source, "secrets": secrets, "setPullPolicyAlways": false, "error": error,
            "scope": scope, "outOfScope": null, "overridesPullPolicy": null,
        })
    };
    let nginx = |list: &str, name: &str| {
        image(
            list,
            name,
            "nginx",
            json!("docker.io"),
            json!("library/nginx"),
            json!("docker.io"),
            json!("config rules[0]"),
            json!(["dockerhub"]),
            Value::Null,
        )
    };
    let want = json!([
        {
            "kind": "Pod", "name": "web", "namespace": "team-a", "outcome": "patched", "skipped": null, "mode": "enforce",
            "images": [
                image("initContainers", "init", "ghcr.io/acme/init:1", json!("ghcr.io"), json!("acme/init"), json!("ghcr.io/acme"), json!("config rules[1]"), json!(["ghcr-acme"]), Value::Null),
                nginx("containers", "app"),
                image("containers", "bad", "UPPER", Value::Null, Value::Null, Value::Null, Value::Null, json!([]), json!("invalid reference format: repository name must be lowercase")),
                image("containers", "public", "quay.io/prometheus/busybox", json!("quay.io"), json!("prometheus/busybox"), Value::Null, Value::Null, json!([]), Value::Null),
            ],
            "add": ["ghcr-acme", "dockerhub"],
            "warnings": ["pullsecret-injector: container bad image \"UPPER\" not matched: invalid reference format: repository name must be lowercase"],
            "patch": [{"op": "add", "path": "/spec/imagePullSecrets", "value": [{"name": "ghcr-acme"}, {"name": "dockerhub"}]}],
            "notes": [], "alreadyListed": [], "expiries": [], "podTemplate": false,
        },
        {
            "kind": "Pod", "name": "audited", "namespace": "team-a", "outcome": "audited", "skipped": null, "mode": "audit",
            "images": [nginx("containers", "app")],
            "add": ["dockerhub"],
            "warnings": ["pullsecret-injector (audit): would add imagePullSecret dockerhub for nginx (rule docker.io)"],
            "patch": null,
            "notes": [], "alreadyListed": [], "expiries": [], "podTemplate": false,
        },
        {
            "kind": "Deployment", "name": "sys", "namespace": "kube-system", "outcome": "skipped",
            "skipped": "namespace excluded by configuration", "mode": null, "images": [], "add": [], "warnings": [], "patch": null,
            "notes": [], "alreadyListed": [], "expiries": [], "podTemplate": true,
        },
    ]);
    ensure!(got == want, "explain -o json:\n{got:#}\nwant:\n{want:#}");
    Ok(())
}

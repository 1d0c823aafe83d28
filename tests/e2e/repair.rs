//! Issue 8.5, repair: Pods admitted while no injector answered (failurePolicy Ignore) and
//! stuck pulling are evicted (controller-owned) or reported (bare); a PodDisruptionBudget that
//! forbids the eviction of a Running one is respected. Issue 9.3, `kubectl debug`: an ephemeral container whose
//! image needs a Secret gets a warning, never a change.
//!
//! No kubelet runs here, so the Pods' container statuses are written through the status
//! subresource, as the kubelet would after a failed pull.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use serde_json::{Value, json};

use crate::api::{parse_warning, pod, pull_secrets};
use crate::basic::STD;
use crate::harness::{Label, Sc, eventually, path_str};
use crate::process::run_binary;

/// A ReplicaSet of `replicas` Pods running `image`, its Pods labelled `app=NAME`.
fn replica_set(name: &str, image: &str) -> Result<ReplicaSet> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": name},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
          "template": {"metadata": {"labels": {"app": name}},
            "spec": {"containers": [{"name": "app", "image": image}]}}},
    }))?)
}

async fn pods_of(sc: &Sc, ns: &str, app: &str) -> Result<Vec<Pod>> {
    Ok(Api::<Pod>::namespaced(sc.admin(), ns)
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await?
        .items)
}

/// Writes what the kubelet reports after a failed pull: the container waiting in
/// ImagePullBackOff with the registry's 401. `Pending`: it never started; `Running`: it ran
/// from the node's cache and must pull again after a restart.
async fn stuck_pulling(sc: &Sc, ns: &str, name: &str, image: &str, phase: &str) -> Result<()> {
    let restarts = if phase == "Running" { 1 } else { 0 };
    let status = json!({"status": {"phase": phase, "containerStatuses": [{
        "name": "app", "image": image, "imageID": "", "ready": false, "restartCount": restarts,
        "state": {"waiting": {"reason": "ImagePullBackOff",
            "message": format!("Back-off pulling image \"{image}\": 401 Unauthorized")}}}]}});
    Api::<Pod>::namespaced(sc.admin(), ns)
        .patch_status(name, &PatchParams::default(), &Patch::Merge(status))
        .await
        .with_context(|| format!("writing the status of {ns}/{name}"))?;
    Ok(())
}

fn count(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

pub async fn outage(sc: Sc) -> Result<()> {
    let inst = sc.inst.clone();
    let ns = sc.ns(Label::Enabled, STD).await?;
    let injector = &inst.injectors[0];
    if sc.suite.env.failure_policy != "Ignore" {
        // With Fail nothing is admitted while the injector is down: there is nothing to repair.
        sc.note("failurePolicy Fail: no Pod gets through an outage; repair has nothing to do");
        return Ok(());
    }
    injector.stop(Duration::from_secs(5)).await?;
    {
        let inst = inst.clone();
        sc.defer(async move {
            if !inst.injectors[0].running() {
                let _ = inst.injectors[0].start().await;
            }
        });
    }
    // Created during the outage: a ReplicaSet's Pod, a Pod guarded by a PDB, a bare Pod.
    let rs = Api::<ReplicaSet>::namespaced(sc.admin(), &ns);
    for name in ["web", "guarded"] {
        rs.create(&PostParams::default(), &replica_set(name, "nginx")?)
            .await?;
    }
    let pdb = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "policy",
        "v1beta1",
        "PodDisruptionBudget",
    ));
    let guard: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "policy/v1beta1", "kind": "PodDisruptionBudget",
        "metadata": {"name": "guarded"},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "guarded"}}},
    }))?;
    Api::<DynamicObject>::namespaced_with(sc.admin(), &ns, &pdb)
        .create(&PostParams::default(), &guard)
        .await?;
    sc.create_pod(
        &ns,
        &pod("bare").image("nginx").label("app", "bare").build(),
    )
    .await?;
    let (pods, _) = eventually(
        Duration::from_secs(20),
        "the controller creates the ReplicaSets' Pods",
        || async {
            let (web, guarded) = (
                pods_of(&sc, &ns, "web").await?,
                pods_of(&sc, &ns, "guarded").await?,
            );
            ensure!(
                web.len() == 1 && guarded.len() == 1,
                "{} and {} Pods",
                web.len(),
                guarded.len()
            );
            Ok((web[0].clone(), guarded[0].clone()))
        },
    )
    .await?;
    let (web, guarded) = pods;
    let names = [
        web.metadata.name.clone().unwrap_or_default(),
        guarded.metadata.name.clone().unwrap_or_default(),
        "bare".to_string(),
    ];
    for (p, name) in [(&web, &names[0]), (&guarded, &names[1])] {
        ensure!(
            pull_secrets(p).is_empty(),
            "{name} was admitted with {:?} while the injector was down",
            pull_secrets(p)
        );
    }
    // The API server applies a PodDisruptionBudget to Running Pods only (a Pending Pod serves
    // nothing): the guarded one is Running, its container waiting to pull again.
    stuck_pulling(&sc, &ns, &names[0], "nginx", "Pending").await?;
    stuck_pulling(&sc, &ns, &names[1], "nginx", "Running").await?;
    stuck_pulling(&sc, &ns, &names[2], "nginx", "Pending").await?;

    // The report to read: audit marks the candidates.
    let kubeconfig = path_str(&sc.suite.env.kubeconfig)?.to_string();
    let config = path_str(&inst.config_path)?.to_string();
    let (status, out, err) = run_binary(
        &sc.suite.env.bin,
        &[
            "audit",
            "--kubeconfig",
            &kubeconfig,
            "--config",
            &config,
            "--injector-namespace",
            &inst.ns,
            "-n",
            &ns,
            "-o",
            "json",
        ],
    )
    .await?;
    ensure!(status.success(), "audit failed: {err}");
    let report: Value = serde_json::from_str(&out)?;
    let repair_of = |name: &str| {
        report
            .as_array()
            .and_then(|pods| pods.iter().find(|p| p["pod"] == name))
            .map(|p| p["repair"].clone())
            .unwrap_or(Value::Null)
    };
    for (name, want) in [
        (&names[0], "evict"),
        (&names[1], "evict"),
        (&names[2], "report"),
    ] {
        ensure!(
            repair_of(name) == want,
            "audit: {name} repair {}, want {want}",
            repair_of(name)
        );
    }

    injector.start().await?;
    // The ReplicaSet's Pod is evicted and replaced through the webhook: with its secret.
    let (replacement, took) = eventually(
        Duration::from_secs(30),
        "the stuck ReplicaSet Pod is evicted and its replacement injected",
        || async {
            let web_pods = pods_of(&sc, &ns, "web").await?;
            ensure!(
                web_pods
                    .iter()
                    .all(|p| p.metadata.name.as_deref() != Some(names[0].as_str())),
                "{} still there",
                names[0]
            );
            ensure!(web_pods.len() == 1, "{} Pods of web", web_pods.len());
            Ok(web_pods[0].clone())
        },
    )
    .await?;
    ensure!(
        pull_secrets(&replacement) == ["dockerhub"],
        "the replacement has {:?}",
        pull_secrets(&replacement)
    );
    sc.note(format!(
        "stuck Pod replaced, with its secret, {took:?} after the injector came back"
    ));
    // The bare Pod is reported (metric, Event) and left alone; the PDB holds the guarded one.
    let (_, _) = eventually(
        Duration::from_secs(20),
        "bare reported, guarded blocked",
        || async {
            let metrics = inst.controller()?.metrics().await?;
            let reported = count(
                &metrics,
                r#"pullsecret_injector_repairs_total{outcome="reported"} "#,
            );
            let blocked = count(
                &metrics,
                r#"pullsecret_injector_repairs_total{outcome="blocked"} "#,
            );
            let evicted = count(
                &metrics,
                r#"pullsecret_injector_repairs_total{outcome="evicted"} "#,
            );
            ensure!(
                reported == 1.0 && blocked >= 1.0 && evicted == 1.0,
                "evicted {evicted}, reported {reported}, blocked {blocked}"
            );
            Ok(())
        },
    )
    .await?;
    let remaining = Api::<Pod>::namespaced(sc.admin(), &ns);
    for name in [&names[1], &names[2]] {
        ensure!(
            remaining.get_opt(name).await?.is_some(),
            "{name} was removed (a PDB or the lack of a controller must keep it)"
        );
    }
    let events = Api::<Event>::namespaced(sc.admin(), &ns)
        .list(&ListParams::default())
        .await?
        .items;
    for (name, action) in [(&names[0], "Evicted"), (&names[2], "Reported")] {
        ensure!(
            events
                .iter()
                .any(|e| e.reason.as_deref() == Some("PullSecretRepair")
                    && e.action.as_deref() == Some(action)
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name.as_str())),
            "no PullSecretRepair {action} Event for {name}"
        );
    }
    Ok(())
}

/// `kubectl debug` on a 1.20 API server (EphemeralContainers alpha, the feature gate on): an
/// UPDATE of `pods/ephemeralcontainers` carrying an `EphemeralContainers` object.
pub async fn debug_container(sc: Sc) -> Result<()> {
    let ns = sc.ns(Label::Enabled, STD).await?;
    let created = sc
        .create_pod(&ns, &pod("web").image("nginx").build())
        .await?;
    ensure!(
        created.secrets() == ["dockerhub"],
        "web got {:?}",
        created.secrets()
    );
    let path = format!("/api/v1/namespaces/{ns}/pods/web/ephemeralcontainers");
    let client = sc.admin();
    let current: Value = client
        .request(axum::http::Request::get(&path).body(Vec::new())?)
        .await
        .context("GET the Pod's ephemeralcontainers")?;
    let mut object = current.clone();
    object["ephemeralContainers"] = json!([{
        "name": "debugger", "image": "ghcr.io/acme/toolbox:1", "imagePullPolicy": "IfNotPresent",
        "terminationMessagePolicy": "File", "stdin": true, "tty": true,
    }]);
    let request = axum::http::Request::put(&path)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&object)?)?;
    let response = client.send(request.map(kube::client::Body::from)).await?;
    let status = response.status();
    let warnings: Vec<String> = response
        .headers()
        .get_all("warning")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(parse_warning)
        .collect();
    if !status.is_success() {
        bail!("PUT ephemeralcontainers: HTTP {status}");
    }
    ensure!(
        warnings.iter().any(|w| w.contains(
            "debug container debugger image \"ghcr.io/acme/toolbox:1\" needs imagePullSecret ghcr-acme (rule ghcr.io/acme)"
        ) && w.contains("kubectl debug --copy-to")),
        "warnings: {warnings:?}"
    );
    // Never a change: the stored Pod keeps its pull secrets, and gained the debug container.
    let stored = Api::<Pod>::namespaced(sc.admin(), &ns).get("web").await?;
    ensure!(
        pull_secrets(&stored) == ["dockerhub"],
        "stored {:?}",
        pull_secrets(&stored)
    );
    let debugged = stored
        .spec
        .and_then(|s| s.ephemeral_containers)
        .is_some_and(|e| e.iter().any(|c| c.name == "debugger"));
    ensure!(debugged, "the ephemeral container was not added");
    sc.note(format!("kubectl printed: {}", warnings.join(" | ")));
    Ok(())
}

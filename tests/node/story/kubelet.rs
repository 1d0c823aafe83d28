//! What the kubelet reports: Pod phases, container states and Events, and the objects the
//! story creates (app Pods and Deployments pulling from the private registry).

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Pod, ServiceAccount};
use kube::api::{Api, ListParams};
use serde_json::json;

use crate::harness::eventually;

/// Pulls can hit the Node authorizer race (tests/node/README.md: 10 to 15 s more) on a
/// machine that is also building: generous.
pub const PULL_TIMEOUT: Duration = Duration::from_secs(120);

/// How a Pod stands, from its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Phase Running and every container running.
    Running,
    /// A container waiting with this reason (ContainerCreating, ErrImagePull, ImagePullBackOff).
    Waiting(String),
    /// Anything else: the phase (Pending before the kubelet reports).
    Other(String),
}

impl State {
    pub fn pull_failed(&self) -> bool {
        matches!(self, State::Waiting(r) if r == "ErrImagePull" || r == "ImagePullBackOff")
    }
}

pub fn state(pod: &Pod) -> State {
    let status = pod.status.clone().unwrap_or_default();
    let statuses = status.container_statuses.unwrap_or_default();
    if let Some(reason) = statuses
        .iter()
        .find_map(|s| s.state.as_ref()?.waiting.as_ref()?.reason.clone())
    {
        return State::Waiting(reason);
    }
    let phase = status.phase.unwrap_or_default();
    if phase == "Running"
        && !statuses.is_empty()
        && statuses
            .iter()
            .all(|s| s.state.as_ref().is_some_and(|st| st.running.is_some()))
    {
        return State::Running;
    }
    State::Other(if phase.is_empty() {
        "none".into()
    } else {
        phase
    })
}

pub fn name(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_default()
}

/// Ready condition True.
pub fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

pub fn restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|c| c.iter().map(|s| s.restart_count).sum())
        .unwrap_or(0)
}

/// Waits until the Pod is Running; the time it took. A Pod whose pull failed is given the
/// whole timeout (the kubelet retries after its back-off), but its last state and Events are
/// in the error.
pub async fn await_running(
    client: &kube::Client,
    ns: &str,
    pod: &str,
    timeout: Duration,
) -> Result<Duration> {
    let api = Api::<Pod>::namespaced(client.clone(), ns);
    let started = Instant::now();
    let mut last = State::Other("none".into());
    while started.elapsed() < timeout {
        if let Some(p) = api.get_opt(pod).await? {
            last = state(&p);
            if last == State::Running {
                return Ok(started.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!(
        "Pod {ns}/{pod} not Running within {timeout:?} (last {last:?}); events: {}",
        events_text(client, ns, pod).await
    )
}

/// Waits until a container of the Pod is in ErrImagePull or ImagePullBackOff; the reason and
/// the time it took. Fails at once if the Pod runs.
pub async fn await_pull_failure(
    client: &kube::Client,
    ns: &str,
    pod: &str,
    timeout: Duration,
) -> Result<(String, Duration)> {
    let api = Api::<Pod>::namespaced(client.clone(), ns);
    let (reason, took) = eventually(timeout, &format!("Pod {ns}/{pod} failing to pull"), || {
        let api = api.clone();
        async move {
            let p = api.get(pod).await?;
            match state(&p) {
                State::Waiting(r) if r == "ErrImagePull" || r == "ImagePullBackOff" => Ok(Ok(r)),
                State::Running => Ok(Err(anyhow!("Pod {ns}/{pod} is Running"))),
                other => bail!("state {other:?}"),
            }
        }
    })
    .await?;
    Ok((reason?, took))
}

/// The Pod's Events (`reason: message`), oldest first.
pub async fn events(client: &kube::Client, ns: &str, pod: &str) -> Result<Vec<(String, String)>> {
    let list = Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default().fields(&format!("involvedObject.name={pod}")))
        .await?;
    let mut items = list.items;
    items.sort_by_key(|e| e.first_timestamp.clone().map(|t| t.0));
    Ok(items
        .into_iter()
        .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
        .collect())
}

async fn events_text(client: &kube::Client, ns: &str, pod: &str) -> String {
    match events(client, ns, pod).await {
        Ok(list) => list
            .iter()
            .map(|(r, m)| format!("{r}: {m}"))
            .collect::<Vec<_>>()
            .join(" | "),
        Err(e) => format!("(events unreadable: {e:#})"),
    }
}

/// Waits for an Event of the Pod whose message contains `needle`; that message.
pub async fn await_event(
    client: &kube::Client,
    ns: &str,
    pod: &str,
    reason: &str,
    needle: &str,
) -> Result<String> {
    let (message, _) = eventually(
        Duration::from_secs(60),
        &format!("a {reason} Event of {ns}/{pod} containing {needle:?}"),
        || async {
            let list = events(client, ns, pod).await?;
            let found = list
                .iter()
                .find(|(r, m)| r == reason && m.contains(needle))
                .map(|(_, m)| m.clone());
            found.ok_or_else(|| {
                anyhow!(
                    "events so far: {}",
                    list.iter()
                        .map(|(r, m)| format!("{r}: {m}"))
                        .collect::<Vec<_>>()
                        .join(" | ")
                )
            })
        },
    )
    .await?;
    Ok(message)
}

/// The kubelet's `Failed` Event of a pull refused by the registry, shortened to the part
/// that names the registry's answer.
pub async fn await_401(client: &kube::Client, ns: &str, pod: &str) -> Result<String> {
    let message = await_event(client, ns, pod, "Failed", "401 Unauthorized").await?;
    Ok(message
        .find("pulling from host")
        .map(|i| format!("...{}", &message[i..]))
        .unwrap_or(message))
}

/// The kubelet logs `Unable to retrieve pull secret NS/NAME for NS/POD ...` when it could
/// not read a Pod's pull Secret (the Node authorizer race) and pulls without it.
pub fn kubelet_lost_secret(kubelet_log: &str, ns: &str, pod: &str) -> bool {
    kubelet_log.lines().any(|l| {
        l.contains("Unable to retrieve pull secret") && l.contains(&format!(" for {ns}/{pod} "))
    })
}

/// An app Pod: one container `app` with `image`, the given pull policy and exactly the
/// listed `imagePullSecrets`; no service account token, no cluster DNS (there is none).
pub fn app_pod(name: &str, image: &str, policy: &str, secrets: &[&str]) -> Result<Pod> {
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "story"}},
        "spec": app_spec(image, policy, secrets),
    });
    if name.ends_with('-') {
        pod["metadata"]["generateName"] = pod["metadata"]["name"].take();
    }
    Ok(serde_json::from_value(pod)?)
}

fn app_spec(image: &str, policy: &str, secrets: &[&str]) -> serde_json::Value {
    let mut spec = json!({
        "terminationGracePeriodSeconds": 1,
        "automountServiceAccountToken": false,
        "dnsPolicy": "Default",
        "containers": [{"name": "app", "image": image, "imagePullPolicy": policy,
            "ports": [{"containerPort": 8080}]}],
    });
    if !secrets.is_empty() {
        spec["imagePullSecrets"] = json!(
            secrets
                .iter()
                .map(|s| json!({"name": s}))
                .collect::<Vec<_>>()
        );
    }
    spec
}

/// A Deployment of `replicas` app Pods labelled `app=NAME`.
pub fn deployment(
    name: &str,
    image: &str,
    replicas: i32,
    policy: &str,
    secrets: &[&str],
) -> Result<Deployment> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": app_spec(image, policy, secrets)},
        },
    }))?)
}

/// The Pods labelled `app=NAME` (a Deployment's), without those being deleted.
pub async fn pods_of(client: &kube::Client, ns: &str, app: &str) -> Result<Vec<Pod>> {
    Ok(Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await?
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect())
}

/// Waits until the Deployment's Pods are exactly `replicas`, none of them in `except`; them.
pub async fn await_pods_of(
    client: &kube::Client,
    ns: &str,
    app: &str,
    replicas: usize,
    except: &[String],
) -> Result<Vec<Pod>> {
    let (pods, _) = eventually(
        Duration::from_secs(60),
        &format!("{replicas} new Pod(s) of {ns}/{app}"),
        || async {
            let pods = pods_of(client, ns, app).await?;
            let fresh: Vec<Pod> = pods
                .into_iter()
                .filter(|p| !except.contains(&name(p)))
                .collect();
            ensure!(fresh.len() == replicas, "{} Pod(s)", fresh.len());
            Ok(fresh)
        },
    )
    .await?;
    Ok(pods)
}

/// Waits for the namespace's default ServiceAccount (and its token Secret: Pods mount it).
pub async fn await_service_account(client: &kube::Client, ns: &str) -> Result<()> {
    let api = Api::<ServiceAccount>::namespaced(client.clone(), ns);
    eventually(
        Duration::from_secs(60),
        &format!("ServiceAccount default in {ns}"),
        || async {
            let sa = api.get("default").await?;
            ensure!(
                sa.secrets.is_some_and(|s| !s.is_empty()),
                "no token Secret yet"
            );
            Ok(())
        },
    )
    .await
    .map(|_| ())
    .with_context(|| format!("namespace {ns}"))
}

/// The first container's `imagePullPolicy` of a Pod.
pub fn pull_policy(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image_pull_policy.clone())
        .unwrap_or_default()
}

pub fn pod_ip(pod: &Pod) -> Option<String> {
    pod.status.as_ref()?.pod_ip.clone()
}

//! The chart installed as the README tells it: `helm install` in cluster mode, `tls.source=helm`,
//! discovery and sync on, two replicas, the injector's image from the private registry with the
//! chart's own `imagePullSecrets`. Installed once, by the story or by the first scenario that
//! needs it; `helm uninstall` (the last scenario) forgets it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

use crate::harness::{Env, Suite, eventually, path_str, secs};
use crate::kubelet;
use crate::tools::{self, http_get};

/// Release name = namespace = the chart's fullname (Service, ServiceAccount, ConfigMap,
/// Deployment, Lease, MutatingWebhookConfiguration).
pub const NAMESPACE: &str = "pullsecret-injector";
pub const RELEASE: &str = "pullsecret-injector";
pub const FULLNAME: &str = "pullsecret-injector";
pub const TLS_SECRET: &str = "pullsecret-injector-tls";
/// The injector's own pull credential (chart value `imagePullSecrets`); not a source.
pub const OWN_PULL_SECRET: &str = "injector-pull";
/// The name the API server verifies the serving certificate for (`<svc>.<ns>.svc`).
pub const SERVICE_DNS: &str = "pullsecret-injector.pullsecret-injector.svc";
pub const SELECTOR: &str = "app.kubernetes.io/name=pullsecret-injector";
/// The controller Deployment (`controller`: sync, repair, the Lease), when a writing feature
/// is on, and its Pods.
pub const CONTROLLER: &str = "pullsecret-injector-controller";
pub const CONTROLLER_SELECTOR: &str = "app.kubernetes.io/name=pullsecret-injector-controller";

pub struct Installation {
    /// The values of the last install or upgrade (JSON is YAML).
    pub values: Mutex<Value>,
    /// `helm install` took, and the Pods were Running and Ready this long after it returned.
    pub helm_took: Duration,
    pub ready_after: Duration,
    /// Found installed (by an earlier test process), not installed by this one.
    pub adopted: bool,
}

/// An injector Pod as the kubelet reports it.
#[derive(Debug, Clone)]
pub struct InjectorPod {
    pub name: String,
    pub uid: String,
    pub ip: Option<String>,
    pub ready: bool,
    pub restarts: i32,
    pub state: kubelet::State,
    pub image_id: String,
    pub container_id: String,
}

impl InjectorPod {
    pub fn admin(&self) -> Result<SocketAddr> {
        Ok(format!(
            "{}:8080",
            self.ip
                .as_deref()
                .ok_or_else(|| anyhow!("{} has no IP", self.name))?
        )
        .parse()?)
    }

    pub fn webhook(&self) -> Result<SocketAddr> {
        Ok(format!(
            "{}:8443",
            self.ip
                .as_deref()
                .ok_or_else(|| anyhow!("{} has no IP", self.name))?
        )
        .parse()?)
    }

    /// GET /metrics on the admin port, from the host over the bridge.
    pub async fn metrics(&self) -> Result<String> {
        match http_get(self.admin()?, "/metrics").await? {
            (200, body) => Ok(body),
            (status, body) => bail!("{}: /metrics answered {status}: {body}", self.name),
        }
    }

    pub async fn metric(&self, series: &str) -> Result<f64> {
        Ok(crate::api::metric(&self.metrics().await?, series))
    }
}

static INSTALL: OnceCell<Result<Arc<Installation>, String>> = OnceCell::const_new();
static CURRENT: Mutex<Option<Arc<Installation>>> = Mutex::new(None);

/// The installation, installed on first use.
pub async fn installation(suite: &'static Suite) -> Result<Arc<Installation>> {
    let installed = INSTALL
        .get_or_init(|| async { install(suite).await.map_err(|e| format!("{e:#}")) })
        .await
        .clone()
        .map_err(|e| anyhow!("the chart could not be installed: {e}"))?;
    current().ok_or_else(|| anyhow!("the chart was uninstalled by an earlier scenario"))?;
    Ok(installed)
}

/// Whether `installation` has run (and succeeded) yet.
pub fn installed() -> bool {
    INSTALL.get().is_some()
}

/// The installation while it is installed.
pub fn current() -> Option<Arc<Installation>> {
    CURRENT.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// After `helm uninstall`.
pub fn forget() {
    *CURRENT.lock().unwrap_or_else(|e| e.into_inner()) = None;
}

/// The chart values of the story.
fn values(env: &Env) -> Value {
    let (repository, tag) = env
        .image
        .rsplit_once(':')
        .unwrap_or((env.image.as_str(), "latest"));
    json!({
        "replicaCount": 2,
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Always"},
        "imagePullSecrets": [{"name": OWN_PULL_SECRET}],
        "standalone": false,
        "tls": {"source": "helm"},
        "config": {
            "discovery": true,
            "sync": true,
            // The credential check (forms.rs): one rule per --docker-server form.
            "rules": crate::forms::rules(env),
        },
    })
}

async fn install(suite: &'static Suite) -> Result<Arc<Installation>> {
    let env = &suite.env;
    // Left by an earlier test process (a filtered run on a cluster kept with NODE_KEEP=1):
    // adopted as it is.
    if tools::helm(env, &["status", RELEASE, "-n", NAMESPACE])
        .await?
        .ok
    {
        let out = tools::helm(
            env,
            &["get", "values", RELEASE, "-n", NAMESPACE, "-o", "json"],
        )
        .await?;
        ensure!(out.ok, "helm get values: {}", out.stderr.trim());
        let installation = Arc::new(Installation {
            values: Mutex::new(serde_json::from_str(&out.stdout)?),
            helm_took: Duration::ZERO,
            ready_after: Duration::ZERO,
            adopted: true,
        });
        await_ready(&suite.admin, 2, &[]).await?;
        *CURRENT.lock().unwrap_or_else(|e| e.into_inner()) = Some(installation.clone());
        return Ok(installation);
    }
    tools::kubectl(env, &["create", "namespace", NAMESPACE]).await?;
    kubelet::await_service_account(&suite.admin, NAMESPACE).await?;
    tools::create_docker_registry_secret(env, NAMESPACE, OWN_PULL_SECRET, &env.registry).await?;
    let values = values(env);
    let file = write_values(env, "install", &values)?;
    let started = Instant::now();
    let out = tools::helm(
        env,
        &[
            "install",
            RELEASE,
            path_str(&env.chart)?,
            "-n",
            NAMESPACE,
            "-f",
            path_str(&file)?,
        ],
    )
    .await?;
    std::fs::write(
        env.run.join("helm-install.out"),
        format!("{}{}", out.stdout, out.stderr),
    )?;
    ensure!(out.ok, "helm install failed: {}", out.stderr.trim());
    let helm_took = started.elapsed();
    let started = Instant::now();
    await_ready(&suite.admin, 2, &[]).await?;
    let installation = Arc::new(Installation {
        values: Mutex::new(values),
        helm_took,
        ready_after: started.elapsed(),
        adopted: false,
    });
    *CURRENT.lock().unwrap_or_else(|e| e.into_inner()) = Some(installation.clone());
    Ok(installation)
}

pub fn write_values(env: &Env, tag: &str, values: &Value) -> Result<PathBuf> {
    let file = env.run.join(format!("values-{tag}.yaml"));
    std::fs::write(&file, serde_json::to_string_pretty(values)?)?;
    Ok(file)
}

/// The injector Pods (not being deleted), as the kubelet reports them.
pub async fn pods(client: &kube::Client) -> Result<Vec<InjectorPod>> {
    pods_selected(client, SELECTOR).await
}

/// The controller's Pods (none when no writing feature is on).
pub async fn controller_pods(client: &kube::Client) -> Result<Vec<InjectorPod>> {
    pods_selected(client, CONTROLLER_SELECTOR).await
}

/// Injector Pods (not being deleted) whose labels match `selector`, in the release namespace.
pub async fn pods_selected(client: &kube::Client, selector: &str) -> Result<Vec<InjectorPod>> {
    let list = Api::<Pod>::namespaced(client.clone(), NAMESPACE)
        .list(&ListParams::default().labels(selector))
        .await?;
    Ok(list
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            let status = p
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|c| c.first());
            InjectorPod {
                name: kubelet::name(p),
                uid: p.metadata.uid.clone().unwrap_or_default(),
                ip: kubelet::pod_ip(p),
                ready: kubelet::ready(p),
                restarts: kubelet::restarts(p),
                state: kubelet::state(p),
                image_id: status.map(|s| s.image_id.clone()).unwrap_or_default(),
                container_id: status
                    .and_then(|s| s.container_id.clone())
                    .unwrap_or_default(),
            }
        })
        .collect())
}

/// Waits until exactly `replicas` injector Pods (none of them in `except`) are Running and
/// Ready; stops at once on a restart or a state that will not heal.
pub async fn await_ready(
    client: &kube::Client,
    replicas: usize,
    except: &[String],
) -> Result<Vec<InjectorPod>> {
    await_ready_selected(client, SELECTOR, replicas, except).await
}

/// `await_ready` for the Pods `selector` matches (another release, or webhook and controller
/// Pods together).
pub async fn await_ready_selected(
    client: &kube::Client,
    selector: &str,
    replicas: usize,
    except: &[String],
) -> Result<Vec<InjectorPod>> {
    let started = Instant::now();
    let mut last = Vec::new();
    while started.elapsed() < Duration::from_secs(180) {
        let all = pods_selected(client, selector).await?;
        for p in &all {
            let hopeless = matches!(&p.state, kubelet::State::Waiting(r)
                if ["CrashLoopBackOff", "CreateContainerConfigError", "InvalidImageName"].contains(&r.as_str()));
            if p.restarts > 0 || hopeless {
                bail!(
                    "injector Pod {} is {:?} with {} restart(s): {}",
                    p.name,
                    p.state,
                    p.restarts,
                    container_log_tail(&p.name, 8)
                );
            }
        }
        let fresh: Vec<InjectorPod> = all
            .into_iter()
            .filter(|p| !except.contains(&p.name))
            .collect();
        if fresh.len() == replicas
            && fresh
                .iter()
                .all(|p| p.ready && p.state == kubelet::State::Running)
        {
            return Ok(fresh);
        }
        last = fresh;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!(
        "not {replicas} injector Pod(s) ({selector}) Running and Ready within 180 s: {:?}",
        last.iter()
            .map(|p| format!("{} {:?} ready={}", p.name, p.state, p.ready))
            .collect::<Vec<_>>()
    )
}

/// The last lines of an injector container's log files on the host (/var/log/pods), every
/// run of the container included.
pub fn container_log_tail(pod: &str, lines: usize) -> String {
    let mut out = Vec::new();
    let prefix = format!("{NAMESPACE}_{pod}_");
    for dir in std::fs::read_dir("/var/log/pods")
        .into_iter()
        .flatten()
        .flatten()
    {
        if !dir.file_name().to_string_lossy().starts_with(&prefix) {
            continue;
        }
        for file in walk(&dir.path()) {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            for line in &all[all.len().saturating_sub(lines)..] {
                out.push(format!("{}: {line}", file.display()));
            }
        }
    }
    if out.is_empty() {
        "(no log on the host)".into()
    } else {
        out.join("\n")
    }
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

impl Installation {
    pub async fn pods(&self, client: &kube::Client) -> Result<Vec<InjectorPod>> {
        pods(client).await
    }

    pub fn values(&self) -> Value {
        self.values
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// `helm upgrade RELEASE CHART -f VALUES [extra...]`: the output; the values are kept on
    /// success.
    pub async fn upgrade(
        &self,
        env: &Env,
        tag: &str,
        values: &Value,
        extra: &[&str],
    ) -> Result<tools::Output> {
        let file = write_values(env, tag, values)?;
        let mut args = vec![
            "upgrade",
            RELEASE,
            path_str(&env.chart)?,
            "-n",
            NAMESPACE,
            "-f",
            path_str(&file)?,
        ];
        args.extend_from_slice(extra);
        let out = tools::helm(env, &args).await?;
        std::fs::write(
            env.run.join(format!("helm-upgrade-{tag}.out")),
            format!("{}{}", out.stdout, out.stderr),
        )?;
        if out.ok {
            *self.values.lock().unwrap_or_else(|e| e.into_inner()) = values.clone();
        }
        Ok(out)
    }
}

/// Injector Pods (terminating ones too: they answer through --shutdown-delay) whose container
/// has not stopped yet, by name; `only`: just these names.
pub async fn still_serving(client: &kube::Client, only: Option<&[String]>) -> Result<Vec<String>> {
    let list = Api::<Pod>::namespaced(client.clone(), NAMESPACE)
        .list(&ListParams::default().labels(SELECTOR))
        .await?;
    Ok(list
        .items
        .iter()
        .filter(|p| only.is_none_or(|names| names.contains(&kubelet::name(p))))
        .filter(|p| {
            let statuses = p
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.clone())
                .unwrap_or_default();
            !statuses
                .iter()
                .all(|c| c.state.as_ref().is_some_and(|st| st.terminated.is_some()))
                || statuses.is_empty()
        })
        .map(kubelet::name)
        .collect())
}

/// Per injector Pod, the value of a metric series (to compare before and after).
pub async fn metric_by_pod(client: &kube::Client, series: &str) -> Result<Vec<(String, f64)>> {
    let mut out = Vec::new();
    for p in pods(client).await? {
        let value = p
            .metric(series)
            .await
            .with_context(|| format!("metrics of {}", p.name))?;
        out.push((p.name.clone(), value));
    }
    Ok(out)
}

/// Waits until `series` grew past `before` on each of those Pods; per Pod, when (since
/// `since`).
pub async fn await_metric_grew(
    client: &kube::Client,
    series: &str,
    before: &[(String, f64)],
    since: Instant,
    timeout: Duration,
) -> Result<Vec<(String, Duration)>> {
    let seen: Mutex<Vec<(String, Duration)>> = Mutex::new(Vec::new());
    let done = |name: &str| {
        seen.lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|(n, _)| n == name)
    };
    eventually(
        timeout,
        &format!("{series} grows on every injector"),
        || async {
            let now = pods(client).await?;
            for (name, was) in before {
                if done(name) {
                    continue;
                }
                let pod = now
                    .iter()
                    .find(|p| &p.name == name)
                    .ok_or_else(|| anyhow!("{name} is gone"))?;
                if pod.metric(series).await? > *was {
                    seen.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((name.clone(), since.elapsed()));
                }
            }
            let n = seen.lock().unwrap_or_else(|e| e.into_inner()).len();
            ensure!(n == before.len(), "grown on {n}/{} Pods", before.len());
            Ok(())
        },
    )
    .await?;
    Ok(seen.into_inner().unwrap_or_else(|e| e.into_inner()))
}

pub fn describe_times(times: &[(String, Duration)]) -> String {
    times
        .iter()
        .map(|(n, d)| format!("{n} {}", secs(*d)))
        .collect::<Vec<_>>()
        .join(", ")
}

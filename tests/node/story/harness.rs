//! The suite's frame: what `tests/node/run.sh` passes in, the one runtime, the scenario runner
//! (steps printed as they finish, cleanups, the checks every scenario gets, PASS/FAIL lines).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};
use pullsecret_injector::core::names::INJECT_LABEL;
use tokio::sync::OnceCell;

use crate::journal::Journal;
pub use crate::journal::{RT, path_str};

/// What `tests/node/run.sh` passes in (`NODE_*`), with the defaults of `tests/node/lib.sh`.
pub struct Env {
    /// up.sh's directory: admin.kubeconfig, apiserver.log, kubelet.log, audit.log, registry/,
    /// images/ (`NODE_DIR`, default /tmp/psi-node).
    pub dir: PathBuf,
    /// This run's files: chart values, helm output, the report (`NODE_RUN`, default DIR/story).
    pub run: PathBuf,
    /// Admin kubeconfig (`NODE_KUBECONFIG`, default DIR/admin.kubeconfig).
    pub kubeconfig: PathBuf,
    /// The injector's image in the private registry, as injector-image.sh pushed it
    /// (`NODE_IMAGE`, `127.0.0.1:5000/private/pullsecret-injector:TAG`).
    pub image: String,
    /// A second image of the same binary (another tag, one more label, so another digest),
    /// the Helm upgrade and rollback scenario's new version (`NODE_IMAGE_NEXT`).
    pub image_next: Option<String>,
    /// The static binary the image holds (`NODE_BIN`): `check-config` runs it offline.
    pub bin: PathBuf,
    /// Helm (`NODE_HELM`; tests/chart/tools.sh installs one).
    pub helm: PathBuf,
    /// The chart (`NODE_CHART`, default charts/pullsecret-injector).
    pub chart: PathBuf,
    /// `host:port` of the private registry (`NODE_REGISTRY`, default 127.0.0.1:5000).
    pub registry: String,
    /// The registry's user and password (DIR/registry/creds).
    pub reg_user: String,
    pub reg_pass: String,
    /// Deployments applied per variant in the latency scenario (`NODE_LATENCY_RUNS`, 5).
    pub latency_runs: usize,
    /// The node's address on the Pod bridge (`NODE_IP`, default 10.244.0.1): Pods reach
    /// services the tests run on the host there.
    pub node_ip: String,
    /// A Prometheus server binary (`NODE_PROMETHEUS`; default `.tools/bin/prometheus`, which
    /// tests/node/deps.sh unpacks from Debian's package, else `prometheus` on PATH).
    pub prometheus: PathBuf,
    /// The repository (scripts run from it).
    pub root: PathBuf,
}

impl Env {
    fn from_env() -> Result<Self> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let dir = PathBuf::from(var("NODE_DIR").unwrap_or_else(|| "/tmp/psi-node".into()));
        let image = var("NODE_IMAGE").ok_or_else(|| {
            anyhow!("NODE_IMAGE is not set: run these tests through tests/node/run.sh")
        })?;
        let bin = PathBuf::from(
            var("NODE_BIN").ok_or_else(|| anyhow!("NODE_BIN (the static binary) is not set"))?,
        );
        let helm = PathBuf::from(var("NODE_HELM").ok_or_else(|| anyhow!("NODE_HELM is not set"))?);
        let creds = std::fs::read_to_string(dir.join("registry/creds"))
            .with_context(|| format!("{}/registry/creds (registry-up.sh)", dir.display()))?;
        let (user, pass) = creds
            .trim()
            .split_once(':')
            .ok_or_else(|| anyhow!("registry/creds is not USER:PASS"))?;
        Ok(Self {
            run: var("NODE_RUN").map_or_else(|| dir.join("story"), PathBuf::from),
            kubeconfig: var("NODE_KUBECONFIG")
                .map_or_else(|| dir.join("admin.kubeconfig"), PathBuf::from),
            image,
            image_next: var("NODE_IMAGE_NEXT"),
            bin,
            helm,
            chart: var("NODE_CHART")
                .map_or_else(|| root.join("charts/pullsecret-injector"), PathBuf::from),
            registry: var("NODE_REGISTRY").unwrap_or_else(|| "127.0.0.1:5000".into()),
            reg_user: user.to_string(),
            reg_pass: pass.to_string(),
            latency_runs: var("NODE_LATENCY_RUNS")
                .map(|v| v.parse())
                .transpose()
                .context("NODE_LATENCY_RUNS")?
                .unwrap_or(5),
            node_ip: var("NODE_IP").unwrap_or_else(|| "10.244.0.1".into()),
            prometheus: var("NODE_PROMETHEUS").map_or_else(
                || {
                    let unpacked = root.join(".tools/bin/prometheus");
                    if unpacked.exists() {
                        unpacked
                    } else {
                        PathBuf::from("prometheus")
                    }
                },
                PathBuf::from,
            ),
            root,
            dir,
        })
    }

    pub fn apiserver_log(&self) -> PathBuf {
        self.dir.join("apiserver.log")
    }

    pub fn audit_log(&self) -> PathBuf {
        self.dir.join("audit.log")
    }

    pub fn kubelet_log(&self) -> PathBuf {
        self.dir.join("kubelet.log")
    }

    /// The app image every story Pod runs: busybox httpd, pushed by registry-up.sh.
    pub fn app(&self) -> String {
        format!("{}/private/app:1", self.registry)
    }
}

/// Shared by every scenario of the process.
pub struct Suite {
    pub env: Env,
    /// cluster-admin.
    pub admin: kube::Client,
    /// The report, the clock, and the passwords and payloads no injector log may contain.
    pub journal: Journal,
}

static SUITE: OnceCell<Result<Suite, String>> = OnceCell::const_new();

pub async fn suite() -> Result<&'static Suite> {
    SUITE
        .get_or_init(|| async { Suite::new().await.map_err(|e| format!("{e:#}")) })
        .await
        .as_ref()
        .map_err(|e| anyhow!("suite setup failed: {e}"))
}

impl Suite {
    async fn new() -> Result<Self> {
        pullsecret_injector::webhook::tls::provider();
        let env = Env::from_env()?;
        std::fs::create_dir_all(&env.run)?;
        let admin = crate::api::client_from(&env.kubeconfig).await?;
        let suite = Self {
            journal: Journal::open(&env.run.join("report.txt"))?,
            admin,
            env,
        };
        let auth = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("{}:{}", suite.env.reg_user, suite.env.reg_pass),
        );
        suite
            .journal
            .remember_secret([suite.env.reg_pass.clone(), auth]);
        Ok(suite)
    }
}

type Deferred = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What a scenario body works with. Cheap to clone.
#[derive(Clone)]
pub struct Sc(Arc<ScInner>);

pub struct ScInner {
    pub suite: &'static Suite,
    pub id: &'static str,
    namespaces: Mutex<Vec<String>>,
    /// Notes made during the running step: printed under its PASS/FAIL line.
    pending: Mutex<Option<Vec<String>>>,
    deferred: Mutex<Vec<Deferred>>,
    /// The scenario stops the injector or breaks its certificate on purpose: failed webhook
    /// calls are expected.
    expect_failed_calls: Mutex<bool>,
    /// Byte offset of the API server log when the scenario started.
    pub apiserver_offset: u64,
}

impl std::ops::Deref for Sc {
    type Target = ScInner;
    fn deref(&self) -> &ScInner {
        &self.0
    }
}

impl Sc {
    pub fn admin(&self) -> kube::Client {
        self.suite.admin.clone()
    }

    pub fn env(&self) -> &'static Env {
        &self.suite.env
    }

    /// A note (measurements, findings), printed under the line of the step that makes it.
    pub fn note(&self, text: impl Into<String>) {
        let text = text.into();
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        match pending.as_mut() {
            Some(notes) => notes.push(text),
            None => self.suite.journal.report(&format!("     ({text})\n")),
        }
    }

    pub fn expect_failed_calls(&self) {
        *self
            .expect_failed_calls
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = true;
    }

    /// One step of the story: runs `body`, prints `PASS id what (time)` or `FAIL ...` at once,
    /// and passes its result on (a failed step ends the scenario).
    pub async fn step<T>(
        &self,
        id: &str,
        what: impl Into<String>,
        body: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let what = what.into();
        *self.pending.lock().unwrap_or_else(|e| e.into_inner()) = Some(Vec::new());
        let started = Instant::now();
        let result = body.await;
        let took = started.elapsed().as_secs_f64();
        let mut text = match &result {
            Ok(_) => format!("  PASS {id} {what} ({took:.1} s)\n"),
            Err(e) => format!("  FAIL {id} {what} ({took:.1} s): {e:#}\n"),
        };
        let notes = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or_default();
        for note in notes {
            text.push_str(&format!("     ({note})\n"));
        }
        self.suite.journal.report(&text);
        result.with_context(|| format!("step {id}: {what}"))
    }

    /// Runs after the scenario, pass or fail, before its namespaces are deleted.
    pub fn defer(&self, cleanup: impl Future<Output = ()> + Send + 'static) {
        self.deferred
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::pin(cleanup));
    }

    /// A fresh namespace (deleted afterwards), labelled `pullsecret-injector/inject=enabled`
    /// when `enabled`, with its default ServiceAccount (Pods need it: ServiceAccount admission).
    pub async fn ns(&self, name: &str, enabled: bool) -> Result<String> {
        let name = format!("{}-{name}", self.id.split('_').next().unwrap_or("s"));
        self.namespaces
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(name.clone());
        let mut namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        if enabled {
            namespace.metadata.labels = Some(
                [(INJECT_LABEL.to_string(), "enabled".to_string())]
                    .into_iter()
                    .collect(),
            );
        }
        Api::<Namespace>::all(self.admin())
            .create(&PostParams::default(), &namespace)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        crate::kubelet::await_service_account(&self.admin(), &name).await?;
        Ok(name)
    }
}

/// Runs one scenario: `body`, its cleanups, its namespaces deleted (Pods forced first: kubelet
/// 1.20 takes 20 s or more to finish a graceful delete of a Pod stuck pulling), then the
/// checks every scenario gets: no failed call to the webhook unless the scenario expects them,
/// no injector container restarted, no secret material in the injectors' logs. Prints PASS
/// or FAIL with the time and notes, and fails the test on FAIL.
pub fn run<F, Fut>(id: &'static str, what: &'static str, body: F)
where
    F: FnOnce(Sc) -> Fut,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let result = RT.block_on(async move {
        let suite = suite().await?;
        let sc = Sc(Arc::new(ScInner {
            suite,
            id,
            namespaces: Mutex::new(Vec::new()),
            pending: Mutex::new(None),
            deferred: Mutex::new(Vec::new()),
            expect_failed_calls: Mutex::new(false),
            apiserver_offset: file_len(&suite.env.apiserver_log()),
        }));
        suite.journal.report(&format!("=== {id}: {what} (at {})\n", suite.journal.clock()));
        let started = Instant::now();
        let outcome = tokio::spawn(body(sc.clone())).await;
        let elapsed = started.elapsed();
        let mut failure = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("{e:#}")),
            Err(e) if e.is_panic() => Some(format!("panicked: {}", panic_message(e))),
            Err(e) => Some(format!("aborted: {e}")),
        };
        let deferred: Vec<Deferred> =
            std::mem::take(&mut *sc.deferred.lock().unwrap_or_else(|e| e.into_inner()));
        for cleanup in deferred.into_iter().rev() {
            cleanup.await;
        }
        let namespaces = sc.namespaces.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for ns in namespaces {
            delete_namespace(&suite.admin, &ns).await;
        }
        let mut problems = Vec::new();
        if !*sc
            .expect_failed_calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
        {
            let calls = failed_webhook_calls(suite, sc.apiserver_offset);
            if !calls.is_empty() {
                problems.push(format!(
                    "the API server logged {} failed call(s) to the webhook (failurePolicy Ignore: Pods admitted without their secrets); first: {}",
                    calls.len(),
                    calls[0]
                ));
            }
        }
        if let Some(installation) = crate::install::current() {
            match installation.pods(&suite.admin).await {
                Ok(pods) => {
                    for p in pods.iter().filter(|p| p.restarts > 0) {
                        problems.push(format!(
                            "injector Pod {} restarted {} time(s)",
                            p.name, p.restarts
                        ));
                    }
                }
                Err(e) => problems.push(format!("listing the injector Pods: {e:#}")),
            }
        }
        if let Some(leak) = secret_material_in_logs(suite) {
            problems.push(leak);
        }
        if !problems.is_empty() {
            let problems = problems.join("; ");
            failure = Some(match failure {
                Some(f) => format!("{f}; {problems}"),
                None => problems,
            });
        }
        let mut text = format!(
            "{} {id}: {what} ({:.1} s, at {})\n",
            if failure.is_some() { "FAIL" } else { "PASS" },
            elapsed.as_secs_f64(),
            suite.journal.clock()
        );
        if let Some(reason) = &failure {
            text.push_str(&format!("     reason: {reason}\n"));
        }
        suite.journal.report(&text);
        match failure {
            Some(reason) => Err(anyhow!("{id}: {reason}")),
            None => Ok(()),
        }
    });
    if let Err(e) = result {
        panic!("{e:#}");
    }
}

/// Force-deletes the namespace's Pods, then the namespace (in the background).
pub async fn delete_namespace(client: &kube::Client, ns: &str) {
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    let _ = pods
        .delete_collection(&force(), &ListParams::default())
        .await;
    let _ = Api::<Namespace>::all(client.clone())
        .delete(ns, &DeleteParams::background())
        .await;
}

/// `kubectl delete --grace-period=0 --force`.
pub fn force() -> DeleteParams {
    DeleteParams {
        grace_period_seconds: Some(0),
        ..DeleteParams::background()
    }
}

fn panic_message(e: tokio::task::JoinError) -> String {
    let payload = e.into_panic();
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(no message)".into())
}

pub fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The part of a file written after `offset` (lossy UTF-8).
pub fn read_from(path: &Path, offset: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let mut text = Vec::new();
    if let Ok(mut file) = std::fs::File::open(path) {
        let _ = file.seek(SeekFrom::Start(offset));
        let _ = file.read_to_end(&mut text);
    }
    String::from_utf8_lossy(&text).into_owned()
}

/// API server log lines since `offset` about a failed call to one of the chart's webhooks
/// (`Failed calling webhook, failing open inject.pullsecret-injector.io: ...`).
pub fn failed_webhook_calls(suite: &Suite, offset: u64) -> Vec<String> {
    read_from(&suite.env.apiserver_log(), offset)
        .lines()
        .filter(|line| {
            line.contains("ailed calling webhook") && line.contains("pullsecret-injector.io")
        })
        .map(|line| line.chars().take(400).collect())
        .collect()
}

/// The injector containers' logs as the kubelet wrote them (every run, every Pod of the
/// release, also those already deleted: /var/log/pods keeps them while the Pod exists).
fn secret_material_in_logs(suite: &Suite) -> Option<String> {
    let material = suite.journal.secret_material();
    let mut found = Vec::new();
    let Ok(dirs) = std::fs::read_dir("/var/log/pods") else {
        return None;
    };
    for dir in dirs.flatten() {
        let name = dir.file_name().to_string_lossy().into_owned();
        if !name.starts_with(&format!("{}_", crate::install::NAMESPACE)) {
            continue;
        }
        let Ok(containers) = std::fs::read_dir(dir.path()) else {
            continue;
        };
        for container in containers.flatten() {
            let Ok(files) = std::fs::read_dir(container.path()) else {
                continue;
            };
            for file in files.flatten() {
                let text = std::fs::read_to_string(file.path()).unwrap_or_default();
                for value in &material {
                    if text.contains(value.as_str()) {
                        found.push(format!("{value:?} in {}", file.path().display()));
                    }
                }
            }
        }
    }
    (!found.is_empty()).then(|| format!("secret material in an injector log: {}", found.join(", ")))
}

/// Retries `check` every 200 ms until it returns `Ok` or `timeout` passes; returns the value
/// and how long it took, or the last error.
pub async fn eventually<T, F, Fut>(
    timeout: Duration,
    what: &str,
    mut check: F,
) -> Result<(T, Duration)>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let started = Instant::now();
    loop {
        match check().await {
            Ok(value) => return Ok((value, started.elapsed())),
            Err(e) if started.elapsed() >= timeout => {
                bail!("{what}: not within {timeout:?}: {e:#}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Checks that `check` keeps returning `Ok` for `period`, every 200 ms (something must not
/// happen: the period is the scenario's, not a wait).
pub async fn stays<F, Fut>(period: Duration, what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let started = Instant::now();
    while started.elapsed() < period {
        check()
            .await
            .with_context(|| format!("{what} (after {:?})", started.elapsed()))?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// Seconds with one decimal, for notes.
pub fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

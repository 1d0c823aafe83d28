//! The suite's frame: environment, the one runtime, the shared installations, the locks that
//! keep disruptive scenarios away from the others, and the scenario runner (namespaces,
//! cleanup, the checks every scenario gets, PASS/FAIL reports).

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use pullsecret_injector::core::names::INJECT_LABEL;
use tokio::sync::{OnceCell, RwLock};

use crate::api::{self, Cred};
use crate::install::{Inst, Installation};

use crate::journal::Journal;
pub use crate::journal::{RT, path_str};

/// Every namespace the suite creates carries this label; each installation's webhook only
/// selects namespaces labelled with its own name, so installations never see each other's Pods.
pub const INSTALLATION_LABEL: &str = "e2e.pullsecret-injector.io/installation";
/// Namespaces where the second webhook (the sidecar, for reinvocation) is active.
pub const SIDECAR_LABEL: &str = "e2e.pullsecret-injector.io/sidecar";

/// What `tests/e2e/run.sh` passes in.
pub struct Env {
    /// kube-up.sh's directory: admin.kubeconfig, apiserver.log, audit.log (`E2E_DIR`).
    pub dir: PathBuf,
    /// This run's files: configs, renders, logs, pid files (`E2E_RUN`, default `E2E_DIR/run`).
    pub run: PathBuf,
    /// Admin kubeconfig (`E2E_KUBECONFIG`, default `E2E_DIR/admin.kubeconfig`).
    pub kubeconfig: PathBuf,
    /// The injector binary (`E2E_BIN`).
    pub bin: PathBuf,
    pub root: PathBuf,
    /// `webhook.failurePolicy` rendered by the chart (`E2E_FAILURE_POLICY`: Ignore or Fail).
    pub failure_policy: String,
    /// The injectors' `--log-level` (`E2E_LOG_LEVEL`).
    pub log_level: String,
    /// First port of the range the injectors and the sidecar webhook use (`E2E_PORT_BASE`).
    pub port_base: u16,
    /// kube-controller-manager runs (`E2E_CONTROLLER_MANAGER=1`).
    pub controller_manager: bool,
}

impl Env {
    fn from_env() -> Result<Self> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let dir = PathBuf::from(var("E2E_DIR").ok_or_else(|| {
            anyhow!("E2E_DIR is not set: run these tests through tests/e2e/run.sh")
        })?);
        let bin = PathBuf::from(
            var("E2E_BIN").ok_or_else(|| anyhow!("E2E_BIN (the injector binary) is not set"))?,
        );
        let failure_policy = var("E2E_FAILURE_POLICY").unwrap_or_else(|| "Ignore".into());
        if failure_policy != "Ignore" && failure_policy != "Fail" {
            bail!("E2E_FAILURE_POLICY must be Ignore or Fail, not {failure_policy}");
        }
        Ok(Self {
            run: var("E2E_RUN").map_or_else(|| dir.join("run"), PathBuf::from),
            kubeconfig: var("E2E_KUBECONFIG")
                .map_or_else(|| dir.join("admin.kubeconfig"), PathBuf::from),
            dir,
            bin,
            root: PathBuf::from(env!("CARGO_MANIFEST_DIR")),
            failure_policy,
            log_level: var("E2E_LOG_LEVEL")
                .unwrap_or_else(|| "info,pullsecret_injector=debug".into()),
            port_base: var("E2E_PORT_BASE")
                .map(|p| p.parse())
                .transpose()
                .context("E2E_PORT_BASE")?
                .unwrap_or(27400),
            controller_manager: var("E2E_CONTROLLER_MANAGER").as_deref() == Some("1"),
        })
    }

    pub fn apiserver_log(&self) -> PathBuf {
        self.dir.join("apiserver.log")
    }

    pub fn audit_log(&self) -> PathBuf {
        self.dir.join("audit.log")
    }
}

/// Shared by every scenario of the process.
pub struct Suite {
    pub env: Env,
    /// cluster-admin.
    pub admin: kube::Client,
    /// The serving certificate of every injector and of the sidecar webhook.
    pub tls: Tls,
    /// Ordinary scenarios hold it for reading; a scenario that restarts the API server holds
    /// it for writing.
    pub api_lock: RwLock<()>,
    /// Serialises the scenarios that label `kube-system` for their installation.
    pub kube_system: tokio::sync::Mutex<()>,
    installations: Vec<OnceCell<Result<Arc<Installation>, String>>>,
    /// The report, the clock, and the passwords and payloads no injector log may contain.
    pub journal: Journal,
}

pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca_pem: Vec<u8>,
}

static SUITE: OnceCell<Result<Suite, String>> = OnceCell::const_new();
static START_ALL: Once = Once::new();

/// The suite, set up on first use; every installation starts setting up in the background.
pub async fn suite() -> Result<&'static Suite> {
    let suite = SUITE
        .get_or_init(|| async { Suite::new().await.map_err(|e| format!("{e:#}")) })
        .await
        .as_ref()
        .map_err(|e| anyhow!("suite setup failed: {e}"))?;
    START_ALL.call_once(|| {
        for inst in Inst::ALL {
            tokio::spawn(async move {
                let _ = suite.installation(inst).await;
            });
        }
    });
    Ok(suite)
}

impl Suite {
    async fn new() -> Result<Self> {
        pullsecret_injector::webhook::tls::provider();
        let env = Env::from_env()?;
        std::fs::create_dir_all(env.run.join("pids"))?;
        let admin = api::client_from(&env.kubeconfig).await?;
        let tls_dir = env.run.join("tls");
        if !tls_dir.join("tls.key").exists() {
            crate::process::run_script(
                &env.root.join("certs/make-certs.sh"),
                &["--out", path_str(&tls_dir)?, "--days", "2"],
                &[],
            )
            .await?;
        }
        let tls = Tls {
            cert: tls_dir.join("tls.crt"),
            key: tls_dir.join("tls.key"),
            ca_pem: std::fs::read(tls_dir.join("ca.crt"))?,
        };
        let journal = Journal::open(&env.run.join("report.txt"))?;
        let suite = Self {
            installations: Inst::ALL.iter().map(|_| OnceCell::new()).collect(),
            env,
            admin,
            tls,
            api_lock: RwLock::new(()),
            kube_system: tokio::sync::Mutex::new(()),
            journal,
        };
        crate::sidecar::start(&suite).await?;
        Ok(suite)
    }

    /// An installation, set up once (concurrent callers wait for the first).
    pub async fn installation(&'static self, inst: Inst) -> Result<Arc<Installation>> {
        self.installations[inst as usize]
            .get_or_init(|| async move {
                let started = Instant::now();
                let result = Installation::setup(self, inst).await;
                self.journal.report(&match &result {
                    Ok(_) => format!(
                        "SETUP [{}] ready in {} ms (at {})\n",
                        inst.name(),
                        started.elapsed().as_millis(),
                        self.journal.clock()
                    ),
                    Err(e) => format!("FAIL [{}] setup: {e:#}\n", inst.name()),
                });
                result.map(Arc::new).map_err(|e| format!("{e:#}"))
            })
            .await
            .clone()
            .map_err(|e| anyhow!("installation {} could not be set up: {e}", inst.name()))
    }
}

/// How a scenario gets along with the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Runs alongside everything else.
    Shared,
    /// Changes its installation's configuration or webhook: alone within its installation.
    OwnsInstallation,
    /// Stops its installation's injector on purpose: alone within its installation, and
    /// failed webhook calls to it are expected.
    StopsInjector,
    /// Restarts the API server: alone in the whole suite; failed calls are expected.
    StopsApiServer,
}

type Deferred = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What a scenario body works with. Cheap to clone.
#[derive(Clone)]
pub struct Sc(Arc<ScInner>);

pub struct ScInner {
    pub suite: &'static Suite,
    pub inst: Arc<Installation>,
    pub id: &'static str,
    namespaces: Mutex<Vec<String>>,
    notes: Mutex<Vec<String>>,
    deferred: Mutex<Vec<Deferred>>,
    /// Byte offset of the audit log when the scenario started.
    pub audit_offset: u64,
}

impl std::ops::Deref for Sc {
    type Target = ScInner;
    fn deref(&self) -> &ScInner {
        &self.0
    }
}

/// A namespace's `pullsecret-injector/inject` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Label {
    None,
    Enabled,
    Audit,
    Disabled,
}

impl Label {
    fn value(self) -> Option<&'static str> {
        use pullsecret_injector::core::names::{INJECT_AUDIT, INJECT_DISABLED, INJECT_ENABLED};
        match self {
            Label::None => None,
            Label::Enabled => Some(INJECT_ENABLED),
            Label::Audit => Some(INJECT_AUDIT),
            Label::Disabled => Some(INJECT_DISABLED),
        }
    }
}

impl Sc {
    pub fn admin(&self) -> kube::Client {
        self.suite.admin.clone()
    }

    /// A note printed under the scenario's result line (measurements).
    pub fn note(&self, text: impl Into<String>) {
        self.notes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(text.into());
    }

    /// Runs after the scenario, pass or fail, before its namespaces are deleted.
    pub fn defer(&self, cleanup: impl Future<Output = ()> + Send + 'static) {
        self.deferred
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::pin(cleanup));
    }

    /// A fresh namespace of this scenario (deleted afterwards), labelled for its installation,
    /// with `label` and `extra` labels, holding the standard credential Secrets named in
    /// `secrets` (`dockerhub`, `ghcr-acme`).
    pub async fn ns_with(
        &self,
        label: Label,
        secrets: &[&str],
        extra: &[(&str, &str)],
    ) -> Result<String> {
        self.ns_of(&self.inst.clone(), label, secrets, extra).await
    }

    /// Like [`Self::ns_with`], for another installation (scenarios that check several).
    pub async fn ns_of(
        &self,
        inst: &Installation,
        label: Label,
        secrets: &[&str],
        extra: &[(&str, &str)],
    ) -> Result<String> {
        let name = {
            let mut namespaces = self.namespaces.lock().unwrap_or_else(|e| e.into_inner());
            let mut name = format!("e2e-{}-{}-{}", inst.name, self.id, namespaces.len() + 1);
            name.truncate(63);
            let name = name.trim_end_matches('-').to_string();
            namespaces.push(name.clone());
            name
        };
        let mut labels = BTreeMap::from([(INSTALLATION_LABEL.to_string(), inst.name.to_string())]);
        if let Some(value) = label.value() {
            labels.insert(INJECT_LABEL.to_string(), value.to_string());
        }
        for (k, v) in extra {
            labels.insert(k.to_string(), v.to_string());
        }
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(labels),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(self.admin())
            .create(&PostParams::default(), &namespace)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        for secret in secrets {
            self.put_cred(&name, secret, &Cred::standard(secret)?, &[])
                .await?;
        }
        if inst.inst == Inst::Cluster && !secrets.is_empty() {
            self.wait_seen(&name, secrets).await?;
        }
        Ok(name)
    }

    /// Secret awareness: waits until the injector's cache holds the standard Secrets of a new
    /// namespace, so a scenario's Pods get exact answers (a Pod created right after its Secret
    /// is answered with a "not in this namespace yet" warning: `applied_together` covers that).
    async fn wait_seen(&self, namespace: &str, secrets: &[&str]) -> Result<()> {
        let probe = api::pod("seen")
            .image("nginx")
            .image("ghcr.io/acme/app")
            .build();
        eventually(
            Duration::from_secs(10),
            "the injector sees the namespace's Secrets",
            || {
                let probe = &probe;
                async move {
                    let created = self.dry_run(namespace, probe).await?;
                    for secret in secrets {
                        ensure!(
                            !created.warned(&format!("Secret {secret} (")),
                            "warnings {:?}",
                            created.warnings
                        );
                    }
                    Ok(())
                }
            },
        )
        .await?;
        Ok(())
    }

    /// Creates a docker config Secret holding `cred` (its material is remembered: it must
    /// never show up in a log), with extra labels.
    pub async fn put_cred(
        &self,
        namespace: &str,
        name: &str,
        cred: &Cred,
        labels: &[(&str, &str)],
    ) -> Result<Secret> {
        self.suite.remember_cred(cred);
        let mut secret = cred.secret(name, namespace);
        if !labels.is_empty() {
            secret.metadata.labels = Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            );
        }
        self.create_secret(namespace, &secret).await
    }

    pub async fn ns(&self, label: Label, secrets: &[&str]) -> Result<String> {
        self.ns_with(label, secrets, &[]).await
    }

    pub async fn create_secret(&self, namespace: &str, secret: &Secret) -> Result<Secret> {
        Api::<Secret>::namespaced(self.admin(), namespace)
            .create(&PostParams::default(), secret)
            .await
            .with_context(|| {
                format!(
                    "creating Secret {namespace}/{}",
                    secret.metadata.name.as_deref().unwrap_or("?")
                )
            })
    }

    /// The Pod, stored and read back.
    pub async fn create_pod(
        &self,
        namespace: &str,
        pod: &k8s_openapi::api::core::v1::Pod,
    ) -> Result<api::Created> {
        api::create_pod(&self.admin(), namespace, pod, false).await
    }

    /// The Pod a server-side dry run returns (nothing stored). The name becomes a
    /// `generateName`, so a dry run never collides with a stored Pod of the same name.
    pub async fn dry_run(
        &self,
        namespace: &str,
        pod: &k8s_openapi::api::core::v1::Pod,
    ) -> Result<api::Created> {
        let mut pod = pod.clone();
        if let Some(name) = pod.metadata.name.take() {
            pod.metadata.generate_name = Some(format!("{name}-dry-"));
        }
        api::create_pod(&self.admin(), namespace, &pod, true).await
    }
}

/// Runs one scenario: takes the locks its kind needs, runs `body` (a panic counts as a
/// failure), runs its cleanups, deletes its namespaces, then applies the checks every scenario
/// gets (no failed webhook call to its installation unless it stops something on purpose, no
/// secret material in its injectors' logs), prints PASS or FAIL and fails the test on FAIL.
pub fn run<F, Fut>(inst: Inst, id: &'static str, what: &'static str, kind: Kind, body: F)
where
    F: FnOnce(Sc) -> Fut,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let result = RT.block_on(async move {
        let suite = suite().await?;
        // The API server restart takes its lock before the installations are ready (setup
        // needs no lock), so it runs first, while nothing else has started, instead of
        // waiting for a long scenario and holding up every other one meanwhile.
        let _api = match kind {
            Kind::StopsApiServer => {
                let guard = ApiGuard::Write(suite.api_lock.write().await);
                // No installation may be half set up while the API server is away.
                for other in Inst::ALL {
                    let _ = suite.installation(other).await;
                }
                guard
            }
            _ => {
                suite.installation(inst).await?;
                ApiGuard::Read(suite.api_lock.read().await)
            }
        };
        let installation = suite.installation(inst).await?;
        let _own = match kind {
            Kind::Shared => Some(OwnGuard::Read(installation.lock.read().await)),
            Kind::OwnsInstallation | Kind::StopsInjector => {
                Some(OwnGuard::Write(installation.lock.write().await))
            }
            Kind::StopsApiServer => None,
        };
        let apiserver_offset = file_len(&suite.env.apiserver_log());
        let log_offsets: Vec<u64> = installation.processes().map(|i| i.log_len()).collect();
        let sc = Sc(Arc::new(ScInner {
            suite,
            inst: installation.clone(),
            id,
            namespaces: Mutex::new(Vec::new()),
            notes: Mutex::new(Vec::new()),
            deferred: Mutex::new(Vec::new()),
            audit_offset: file_len(&suite.env.audit_log()),
        }));
        let started = Instant::now();
        let from = suite.journal.clock();
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
            let _ = Api::<Namespace>::all(suite.admin.clone())
                .delete(&ns, &DeleteParams::background())
                .await;
        }
        let expect_failures = matches!(kind, Kind::StopsInjector | Kind::StopsApiServer);
        if !expect_failures {
            let calls = failed_webhook_calls(suite, &installation, apiserver_offset);
            if !calls.is_empty() {
                let problem = format!(
                    "the API server logged {} line(s) about failed calls to this installation's injector (with failurePolicy Ignore, a Pod created without its secrets); last: {}",
                    calls.len(),
                    calls.last().map(String::as_str).unwrap_or_default()
                );
                failure = Some(match failure {
                    Some(f) => format!("{f}; {problem}"),
                    None => problem,
                });
            }
        }
        if let Some(leak) = secret_material_in_logs(suite, &installation) {
            failure = Some(match failure {
                Some(f) => format!("{f}; {leak}"),
                None => leak,
            });
        }

        let notes = sc.notes.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut text = format!(
            "{} [{}] {id}: {what} ({} ms, {from}..{})\n",
            if failure.is_some() { "FAIL" } else { "PASS" },
            installation.name,
            elapsed.as_millis(),
            suite.journal.clock()
        );
        if let Some(reason) = &failure {
            text.push_str(&format!("     reason: {reason}\n"));
        }
        for note in &notes {
            text.push_str(&format!("     ({note})\n"));
        }
        if failure.is_some() {
            for (injector, offset) in installation.processes().zip(&log_offsets) {
                let lines = injector.log_since(*offset);
                let tail: Vec<&str> = lines.lines().rev().take(60).collect();
                text.push_str(&format!(
                    "     --- {} log during the scenario (last {} lines):\n",
                    injector.identity,
                    tail.len()
                ));
                for line in tail.into_iter().rev() {
                    text.push_str(&format!("     | {line}\n"));
                }
            }
        }
        suite.journal.report(&text);
        match failure {
            Some(reason) => Err(anyhow!("[{}] {id}: {reason}", installation.name)),
            None => Ok(()),
        }
    });
    if let Err(e) = result {
        panic!("{e:#}");
    }
}

/// A held lock, released when dropped.
#[allow(dead_code)] // held for its Drop only
enum ApiGuard<'a> {
    Read(tokio::sync::RwLockReadGuard<'a, ()>),
    Write(tokio::sync::RwLockWriteGuard<'a, ()>),
}

#[allow(dead_code)] // held for its Drop only
enum OwnGuard<'a> {
    Read(tokio::sync::RwLockReadGuard<'a, ()>),
    Write(tokio::sync::RwLockWriteGuard<'a, ()>),
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

/// API server log lines since `offset` about a failed call to one of the installation's
/// injectors (recognised by its webhook URL's port).
pub fn failed_webhook_calls(suite: &Suite, inst: &Installation, offset: u64) -> Vec<String> {
    let ports: Vec<String> = inst
        .injectors
        .iter()
        .map(|i| format!("127.0.0.1:{}/", i.port))
        .collect();
    read_from(&suite.env.apiserver_log(), offset)
        .lines()
        .filter(|line| {
            line.contains("failed calling webhook") && ports.iter().any(|p| line.contains(p))
        })
        .map(|line| line.chars().take(400).collect())
        .collect()
}

fn secret_material_in_logs(suite: &Suite, inst: &Installation) -> Option<String> {
    let material = suite.journal.secret_material();
    let mut found = Vec::new();
    for injector in inst.processes() {
        let log = injector.log_since(0);
        for value in &material {
            if log.contains(value.as_str()) {
                found.push(format!("{value:?} in {}", injector.log.display()));
            }
        }
    }
    (!found.is_empty())
        .then(|| format!("secret material in the injector log: {}", found.join(", ")))
}

/// Retries `check` every 100 ms until it returns `Ok` or `timeout` passes; returns the value
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
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Checks that `check` keeps returning `Ok` for `period` (something must not happen).
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

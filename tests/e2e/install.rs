//! Installations: the chart rendered with its own release name and namespace, its RBAC applied
//! and used under its own service account identity (a TokenRequest token), its own injector
//! process(es) and ports, and its own webhook configuration, pointed at those processes and
//! restricted to namespaces labelled `e2e.pullsecret-injector.io/installation=<name>`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, ensure};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
use kube::Resource;
use kube::api::{Api, ApiResource, DynamicObject, ObjectMeta, Patch, PatchParams, PostParams};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::RwLock;

use crate::api::{self, pod};
use crate::harness::{INSTALLATION_LABEL, Suite, eventually, path_str};
use crate::process::{Injector, run_script};

/// The field manager of everything the suite applies.
pub const MANAGER: &str = "pullsecret-injector-e2e";

/// The installations of the suite, one per feature set (and the two-replica one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inst {
    /// `--standalone`, static rules.
    Standalone,
    /// Cluster mode with secret awareness; no discovery, no sync.
    Cluster,
    /// Discovery only.
    Discovery,
    /// Discovery and sync.
    Sync,
    /// RBAC for every feature; the config file switches them at runtime.
    Reload,
    /// Sync with two processes contending for one Lease.
    Ha,
    /// Repair (under the Lease) and the kubectl debug webhook entry; static rules.
    Repair,
    /// Standalone, used by one scenario only: its connections must sit idle.
    Idle,
    /// Two tenants with crossed scopes; discovery and sync (issue 14).
    Tenancy,
}

impl Inst {
    pub const ALL: [Inst; 9] = [
        Inst::Standalone,
        Inst::Cluster,
        Inst::Discovery,
        Inst::Sync,
        Inst::Reload,
        Inst::Ha,
        Inst::Repair,
        Inst::Idle,
        Inst::Tenancy,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Inst::Standalone => "standalone",
            Inst::Cluster => "cluster",
            Inst::Discovery => "discovery",
            Inst::Sync => "sync",
            Inst::Reload => "reload",
            Inst::Ha => "ha",
            Inst::Repair => "repair",
            Inst::Idle => "idle",
            Inst::Tenancy => "tenancy",
        }
    }

    fn processes(self) -> u16 {
        if self == Inst::Ha { 2 } else { 1 }
    }

    /// Whether a writing feature is on in the chart values, so the chart runs `controller`.
    pub fn writes(self) -> bool {
        matches!(
            self,
            Inst::Sync | Inst::Reload | Inst::Ha | Inst::Repair | Inst::Tenancy
        )
    }

    pub fn standalone(self) -> bool {
        matches!(self, Inst::Standalone | Inst::Idle)
    }
}

/// `sync` runs its processes at `trace`, every crate (the secret-leak scenario reads those
/// logs); the others at the suite's level.
fn log_level(suite: &Suite, inst: Inst) -> &str {
    if inst == Inst::Sync {
        "trace"
    } else {
        &suite.env.log_level
    }
}

/// kube-up.sh's CA of the client certificate the API server presents to webhooks.
pub const CLIENT_CA: &str = "webhook-client-ca.crt";

/// The args of the chart's webhook (`serve`) Deployment.
fn rendered_args(rendered: &Rendered) -> Vec<String> {
    rendered
        .of_kind("Deployment")
        .flat_map(|d| {
            d["spec"]["template"]["spec"]["containers"]
                .as_array()
                .cloned()
        })
        .flatten()
        .filter_map(|c| serde_json::from_value::<Vec<String>>(c["args"].clone()).ok())
        .find(|args| args.first().map(String::as_str) == Some("serve"))
        .unwrap_or_default()
}

/// The static rules of the generic scenarios.
pub fn standard_rules() -> Value {
    json!([
        {"registry": "docker.io", "secrets": ["dockerhub"]},
        {"registry": "ghcr.io/acme", "secrets": ["ghcr-acme"]},
    ])
}

/// Namespace selection for a render: `opt-in`, or `all` with extra exclusions.
pub enum Selection {
    OptIn,
    All { exclude: Vec<String> },
}

/// A render of the chart (tests/chart/render.sh) for one installation.
pub struct Rendered {
    pub dir: PathBuf,
    pub docs: Vec<Value>,
    /// The ConfigMap's `config.yaml`.
    pub config: String,
}

impl Rendered {
    pub fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.docs.iter().filter(move |d| d["kind"] == kind)
    }

    pub fn webhook(&self) -> Result<MutatingWebhookConfiguration> {
        let doc = self
            .of_kind("MutatingWebhookConfiguration")
            .next()
            .ok_or_else(|| anyhow!("no MutatingWebhookConfiguration in {}", self.dir.display()))?;
        Ok(serde_json::from_value(doc.clone())?)
    }
}

pub struct Installation {
    pub inst: Inst,
    pub name: &'static str,
    /// Release namespace: the injector's own namespace.
    pub ns: String,
    /// The chart's fullname: ServiceAccount, ClusterRole, webhook configuration, Lease.
    pub fullname: String,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub base: Rendered,
    /// `serve` processes: the webhook, read-only.
    pub injectors: Vec<Injector>,
    /// `controller` processes (sync, repair, the Lease), when a writing feature is on. In `ha`
    /// two, each under a ServiceAccount of its own (the chart's, and a second one bound to the
    /// same rules), so one can lose its right to update Leases.
    pub controllers: Vec<Injector>,
    /// The controllers' ServiceAccounts and identities (TokenRequests for them), in order.
    pub controller_accounts: Vec<String>,
    pub controller_identities: Vec<kube::Client>,
    /// Read by ordinary scenarios, written by those that change or stop the installation.
    pub lock: RwLock<()>,
    /// The installation's own identity (`system:serviceaccount:<ns>:<fullname>`), from a
    /// TokenRequest for the chart's ServiceAccount.
    pub identity: kube::Client,
    /// Enabled namespace of this installation where setup checks the webhook is called.
    pub probe_ns: String,
    suite: &'static Suite,
}

impl Installation {
    pub async fn setup(suite: &'static Suite, inst: Inst) -> Result<Self> {
        let name = inst.name();
        let ns = format!("psi-{name}");
        let fullname = format!("{ns}-pullsecret-injector");
        let dir = suite.env.run.join(name);
        std::fs::create_dir_all(&dir)?;
        let admin = suite.admin.clone();
        let apiserver_offset = crate::harness::file_len(&suite.env.apiserver_log());

        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(ns.clone()),
                labels: Some(BTreeMap::from([(INSTALLATION_LABEL.into(), name.into())])),
                ..Default::default()
            },
            ..Default::default()
        };
        apply(&admin, &namespace).await?;

        let base = render(
            suite,
            inst,
            &ns,
            &values(suite, inst, &Selection::OptIn, &fullname),
            "base",
            None,
        )
        .await?;
        for doc in &base.docs {
            match doc["kind"].as_str().unwrap_or_default() {
                "ServiceAccount" => apply_doc::<ServiceAccount>(&admin, doc).await?,
                "ClusterRole" => apply_doc::<ClusterRole>(&admin, doc).await?,
                "ClusterRoleBinding" => apply_doc::<ClusterRoleBinding>(&admin, doc).await?,
                "Role" => apply_doc::<Role>(&admin, doc).await?,
                "RoleBinding" => apply_doc::<RoleBinding>(&admin, doc).await?,
                "Secret" => {
                    // The webhook's own TLS Secret (tls.source=helm): in the injector's
                    // namespace like in a real installation; sync must never copy it.
                    let secret: Secret = serde_json::from_value(doc.clone())?;
                    if let Some(key) = secret.data.as_ref().and_then(|d| d.get("tls.key")) {
                        suite.journal.remember_secret([base64::Engine::encode(
                            &base64::engine::general_purpose::STANDARD,
                            &key.0,
                        )]);
                    }
                    apply(&admin, &secret).await?;
                }
                _ => {}
            }
        }

        // The chart's ServiceAccount, with a token as a Pod would get (TokenRequest).
        let kubeconfig = dir.join("injector.kubeconfig");
        let identity = service_account_client(suite, &ns, &fullname, &kubeconfig).await?;

        // The controller: its own ServiceAccount, rendered by the chart iff a writing feature
        // is on.
        let controller_sa = format!("{fullname}-controller");
        let rendered_controller = base
            .of_kind("Deployment")
            .any(|d| d["metadata"]["name"] == controller_sa.as_str());
        ensure!(
            rendered_controller == inst.writes(),
            "the chart renders a controller Deployment: {rendered_controller}, want {}",
            inst.writes()
        );
        let mut controller_accounts = Vec::new();
        if inst.writes() {
            controller_accounts.push(controller_sa.clone());
            if inst == Inst::Ha {
                let second = format!("{fullname}-controller-b");
                split_lease_rights(&admin, &base, &ns, &controller_sa, &second).await?;
                controller_accounts.push(second);
            }
        }
        let mut controller_kubeconfigs = Vec::new();
        let mut controller_identities = Vec::new();
        for (k, account) in controller_accounts.iter().enumerate() {
            let path = dir.join(format!("controller-{k}.kubeconfig"));
            controller_identities.push(service_account_client(suite, &ns, account, &path).await?);
            controller_kubeconfigs.push(path);
        }

        let config_path = dir.join("config.yaml");
        let config = match inst {
            // Starts with every cluster feature off; the scenario switches them.
            Inst::Reload => with_features(
                &without_credential_features(&base.config),
                false,
                false,
                false,
            )?,
            _ => base.config.clone(),
        };
        write_atomically(&config_path, &config)?;

        let index = Inst::ALL.iter().position(|i| *i == inst).unwrap_or(0) as u16;
        let mut injectors = Vec::new();
        for k in 0..inst.processes() {
            let port = suite.env.port_base + 10 * index + 2 * k;
            let identity_name = format!("{fullname}-{k}");
            let mut args: Vec<String> = [
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--admin-listen",
                &format!("127.0.0.1:{}", port + 1),
                "--tls-cert",
                path_str(&suite.tls.cert)?,
                "--tls-key",
                path_str(&suite.tls.key)?,
                "--config",
                path_str(&config_path)?,
                "--namespace",
                &ns,
                "--reload-interval",
                "200ms",
                "--shutdown-delay",
                "0s",
                "--drain-timeout",
                "2s",
                "--log-level",
                log_level(suite, inst),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            // The chart renders --client-ca (a file in the Pod) iff webhook.clientCA is set; here
            // the same CA is the file kube-up.sh wrote.
            if rendered_args(&base).iter().any(|a| a == "--client-ca") {
                let ca = suite.env.dir.join(CLIENT_CA);
                args.extend(["--client-ca".into(), path_str(&ca)?.to_string()]);
            }
            if inst.standalone() {
                args.push("--standalone".into());
            } else {
                args.extend(["--kubeconfig".into(), path_str(&kubeconfig)?.to_string()]);
            }
            injectors.push(Injector::new(
                identity_name.clone(),
                port,
                port + 1,
                dir.join(format!("injector-{k}.log")),
                suite
                    .env
                    .run
                    .join("pids")
                    .join(format!("{identity_name}.pid")),
                suite.env.bin.clone(),
                args,
            ));
        }
        let mut controllers = Vec::new();
        for (k, kubeconfig) in controller_kubeconfigs.iter().enumerate() {
            let port = suite.env.port_base + 10 * index + 4 + k as u16;
            let identity_name = format!("{fullname}-controller-{k}");
            let args: Vec<String> = [
                "controller",
                "--admin-listen",
                &format!("127.0.0.1:{port}"),
                "--config",
                path_str(&config_path)?,
                "--namespace",
                &ns,
                "--reload-interval",
                "200ms",
                "--log-level",
                log_level(suite, inst),
                "--lease-name",
                &fullname,
                "--kubeconfig",
                path_str(kubeconfig)?,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            controllers.push(Injector::new(
                identity_name.clone(),
                0,
                port,
                dir.join(format!("controller-{k}.log")),
                suite
                    .env
                    .run
                    .join("pids")
                    .join(format!("{identity_name}.pid")),
                suite.env.bin.clone(),
                args,
            ));
        }
        futures_util::future::try_join_all(
            injectors.iter().chain(&controllers).map(Injector::start),
        )
        .await?;

        let installation = Self {
            inst,
            name,
            probe_ns: format!("e2e-{name}-probe"),
            ns,
            fullname,
            dir,
            config_path,
            base,
            injectors,
            controllers,
            controller_accounts,
            controller_identities,
            lock: RwLock::new(()),
            identity,
            suite,
        };
        installation.apply_webhook(&installation.base).await?;
        installation.create_probe_namespace().await?;
        installation.wait_webhook_called().await?;
        let failed = crate::harness::failed_webhook_calls(suite, &installation, apiserver_offset);
        ensure!(
            failed.is_empty(),
            "the API server logged failed calls to the injector during setup: {failed:?}"
        );
        Ok(installation)
    }

    pub fn admin(&self) -> kube::Client {
        self.suite.admin.clone()
    }

    /// Every process of the installation: the webhooks, then the controllers.
    pub fn processes(&self) -> impl Iterator<Item = &Injector> {
        self.injectors.iter().chain(&self.controllers)
    }

    /// The controller that writes when there is one (single-controller installations).
    pub fn controller(&self) -> Result<&Injector> {
        self.controllers
            .first()
            .ok_or_else(|| anyhow!("installation {} runs no controller", self.name))
    }

    /// `system:serviceaccount:<ns>:<fullname>`.
    pub fn user(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.ns, self.fullname)
    }

    /// Chart values for this installation.
    pub fn values(&self, selection: &Selection) -> Value {
        values(self.suite, self.inst, selection, &self.fullname)
    }

    /// Renders the chart with `values` into `dir/chart-<tag>`.
    pub async fn render(
        &self,
        values: &Value,
        tag: &str,
        kube_version: Option<&str>,
    ) -> Result<Rendered> {
        render(self.suite, self.inst, &self.ns, values, tag, kube_version).await
    }

    /// Applies a rendered webhook configuration, pointed at injector 0 on loopback (with the
    /// suite's CA) and restricted to this installation's namespaces.
    pub async fn apply_webhook(&self, rendered: &Rendered) -> Result<()> {
        let mut config = rendered.webhook()?;
        if let Some(annotations) = config.metadata.annotations.as_mut() {
            annotations.remove("cert-manager.io/inject-ca-from");
        }
        let port = self.injectors[0].port;
        for hook in config.webhooks.iter_mut().flatten() {
            let path = hook
                .client_config
                .service
                .as_ref()
                .and_then(|s| s.path.clone())
                .unwrap_or_else(|| "/".into());
            hook.client_config = WebhookClientConfig {
                url: Some(format!("https://127.0.0.1:{port}{path}")),
                ca_bundle: Some(ByteString(self.suite.tls.ca_pem.clone())),
                service: None,
            };
            hook.namespace_selector
                .get_or_insert_with(Default::default)
                .match_expressions
                .get_or_insert_with(Vec::new)
                .push(LabelSelectorRequirement {
                    key: INSTALLATION_LABEL.into(),
                    operator: "In".into(),
                    values: Some(vec![self.name.into()]),
                });
        }
        apply(&self.admin(), &config).await
    }

    /// The config file as the injectors read it now.
    pub fn config(&self) -> Result<String> {
        Ok(std::fs::read_to_string(&self.config_path)?)
    }

    /// Writes a new config file and waits until every injector reloaded it
    /// (`config_reloads_total{result="success"}` moved).
    pub async fn reload(&self, config: &str) -> Result<Duration> {
        const RELOADS: &str = r#"pullsecret_injector_config_reloads_total{result="success"}"#;
        let mut before = Vec::new();
        for injector in self.injectors.iter().filter(|i| i.running()) {
            before.push((injector, injector.metric(RELOADS).await?));
        }
        write_atomically(&self.config_path, config)?;
        let (_, took) = eventually(Duration::from_secs(5), "config reload", || {
            let before = &before;
            async move {
                for (injector, count) in before {
                    let now = injector.metric(RELOADS).await?;
                    ensure!(
                        now > *count,
                        "{}: config_reloads_total{{result=\"success\"}} still {now}",
                        injector.identity
                    );
                }
                Ok(())
            }
        })
        .await?;
        Ok(took)
    }

    async fn create_probe_namespace(&self) -> Result<()> {
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(self.probe_ns.clone()),
                labels: Some(BTreeMap::from([
                    (INSTALLATION_LABEL.into(), self.name.into()),
                    (
                        pullsecret_injector::core::names::INJECT_LABEL.into(),
                        pullsecret_injector::core::names::INJECT_ENABLED.into(),
                    ),
                ])),
                ..Default::default()
            },
            ..Default::default()
        };
        apply(&self.admin(), &namespace).await
    }

    /// A dry-run Pod in the probe namespace reaches injector 0: the API server has picked up
    /// the webhook configuration and can call it.
    pub async fn wait_webhook_called(&self) -> Result<()> {
        const ADMISSIONS: &str = "pullsecret_injector_admissions_total";
        let injector = &self.injectors[0];
        let before = injector.metric(ADMISSIONS).await?;
        let probe = pod("probe").image("busybox").build();
        eventually(
            Duration::from_secs(15),
            "the API server calls the injector",
            || {
                let probe = &probe;
                async move {
                    api::create_pod(&self.admin(), &self.probe_ns, probe, true).await?;
                    let now = injector.metric(ADMISSIONS).await?;
                    ensure!(now > before, "admissions_total stayed {before}");
                    Ok(())
                }
            },
        )
        .await?;
        Ok(())
    }
}

/// Chart values (JSON is YAML) for an installation.
fn values(suite: &Suite, inst: Inst, selection: &Selection, fullname: &str) -> Value {
    let namespaces = match selection {
        Selection::OptIn => json!({"selection": "opt-in", "exclude": ["kube-public"]}),
        Selection::All { exclude } => {
            let mut all = vec!["kube-public".to_string()];
            all.extend(exclude.iter().cloned());
            json!({"selection": "all", "exclude": all})
        }
    };
    let config = match inst {
        Inst::Standalone | Inst::Cluster | Inst::Idle => json!({
            "discovery": false,
            "sync": false,
            "secretAwareness": inst == Inst::Cluster,
            "rules": standard_rules(),
        }),
        Inst::Repair => json!({
            "discovery": false,
            "sync": false,
            "secretAwareness": false,
            "repair": true,
            "rules": standard_rules(),
        }),
        Inst::Discovery => {
            json!({"discovery": true, "sync": false, "secretAwareness": false, "rules": []})
        }
        Inst::Sync => {
            json!({"discovery": true, "sync": true, "secretAwareness": false, "rules": []})
        }
        Inst::Reload => json!({
            "discovery": true,
            "sync": true,
            "secretAwareness": true,
            // Rendered for their RBAC; the scenarios switch them on (credentials.rs).
            "credentialProbe": true,
            "credentialProviders": {"providers": [{
                "name": "test-plugin",
                "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
                "matchImages": ["minted.example.com"],
                "defaultCacheDuration": "1h",
                "secret": crate::credentials::MINTED,
                "images": ["minted.example.com/app"],
            }]},
            "rules": [
                {"registry": "sync.example.com", "secrets": ["reload-sync"]},
                {"registry": "aware.example.com", "secrets": ["reload-missing"]},
            ],
        }),
        Inst::Tenancy => json!({
            "discovery": true,
            "sync": true,
            "secretAwareness": false,
            "requireScope": false,
            "revokeAfter": "3s",
            "rules": crate::tenancy::rules(),
        }),
        Inst::Ha => json!({
            "discovery": false,
            "sync": true,
            "secretAwareness": false,
            "rules": [
                {"registry": "ha.example.com", "secrets": ["ha-cred"]},
                // A rule naming the webhook's own TLS Secret: it must never be copied.
                {"registry": "quay.io/acme", "secrets": [format!("{fullname}-tls")]},
            ],
        }),
    };
    let mut config = config;
    config["namespaces"] = namespaces;
    let mut values = json!({
        // The chart has no default image (these tests run the binary, not the Deployment).
        "image": {"repository": "registry.example.com/platform/pullsecret-injector"},
        "webhook": {"failurePolicy": suite.env.failure_policy, "timeoutSeconds": 5},
        "config": config,
    });
    if inst.standalone() {
        values["standalone"] = json!(true);
    }
    if inst == Inst::Standalone {
        // Only the API server's client certificate (kube-up.sh's admission configuration)
        // completes the handshake: every standalone scenario runs through it.
        values["webhook"]["clientCA"] =
            json!(std::fs::read_to_string(suite.env.dir.join(CLIENT_CA)).unwrap_or_default());
    }
    if inst == Inst::Ha {
        values["replicaCount"] = json!(2);
    }
    if inst == Inst::Reload {
        // The image the chart copies the plugins from (unused here: the processes run on
        // this machine and the scenario's config points binDir at a directory of its own).
        values["credentialProviders"] = json!({
            "image": {"repository": "registry.example.com/platform/credential-providers", "tag": "1"},
        });
    }
    if inst == Inst::Repair {
        values["webhook"]["debugContainers"] = json!({"enabled": true});
    }
    values
}

async fn render(
    suite: &Suite,
    inst: Inst,
    ns: &str,
    values: &Value,
    tag: &str,
    kube_version: Option<&str>,
) -> Result<Rendered> {
    let dir = suite.env.run.join(inst.name()).join(format!("chart-{tag}"));
    std::fs::create_dir_all(&dir)?;
    let values_file = dir.join("values.yaml");
    std::fs::write(&values_file, serde_json::to_string_pretty(values)?)?;
    run_script(
        &suite.env.root.join("tests/chart/render.sh"),
        &[
            "-n",
            ns,
            "-r",
            ns,
            "-k",
            kube_version.unwrap_or("1.20.2"),
            path_str(&values_file)?,
            path_str(&dir)?,
        ],
        &[],
    )
    .await
    .with_context(|| format!("rendering the chart for {}", inst.name()))?;
    let all = std::fs::read_to_string(dir.join("all.yaml"))?;
    let docs: Vec<Value> = serde_saphyr::from_multiple(&all)
        .map_err(|e| anyhow!("{}: {e}", dir.join("all.yaml").display()))?;
    let docs: Vec<Value> = docs.into_iter().filter(|d| !d.is_null()).collect();
    let config = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["data"]["config.yaml"].is_string())
        .and_then(|d| d["data"]["config.yaml"].as_str())
        .ok_or_else(|| anyhow!("no ConfigMap with config.yaml in the render"))?
        .to_string();
    Ok(Rendered { dir, docs, config })
}

/// The config with the three cluster feature keys set as given.
pub fn with_features(config: &str, discovery: bool, sync: bool, awareness: bool) -> Result<String> {
    let mut seen = [false; 3];
    let lines: Vec<String> = config
        .lines()
        .map(|line| {
            for (i, (key, on)) in [
                ("discovery", discovery),
                ("sync", sync),
                ("secretAwareness", awareness),
            ]
            .iter()
            .enumerate()
            {
                if line.starts_with(&format!("{key}:")) {
                    seen[i] = true;
                    return format!("{key}: {on}");
                }
            }
            line.to_string()
        })
        .collect();
    ensure!(
        seen.iter().all(|s| *s),
        "the rendered config lacks a feature key:\n{config}"
    );
    Ok(lines.join("\n") + "\n")
}

/// The config without `credentialProbe` and the `credentialProviders` block: the Reload
/// installation's chart values turn them on for their RBAC, its scenarios switch them.
pub fn without_credential_features(config: &str) -> String {
    let mut out = String::new();
    let mut skipping = false;
    for line in config.lines() {
        let top_level = !line.starts_with([' ', '-']) && !line.is_empty();
        if top_level {
            skipping =
                line.starts_with("credentialProviders:") || line.starts_with("credentialProbe:");
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Replaces a file by rename, as the kubelet updates a ConfigMap volume.
pub fn write_atomically(path: &std::path::Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// A TokenRequest for the ServiceAccount `account` of `ns`, as a Pod would get, written into a
/// kubeconfig at `path`; the client that uses it.
async fn service_account_client(
    suite: &Suite,
    ns: &str,
    account: &str,
    path: &std::path::Path,
) -> Result<kube::Client> {
    let request = TokenRequest {
        metadata: ObjectMeta::default(),
        spec: TokenRequestSpec {
            audiences: Vec::new(),
            expiration_seconds: Some(4 * 3600),
            bound_object_ref: None,
        },
        status: None,
    };
    let token: TokenRequest = Api::<ServiceAccount>::namespaced(suite.admin.clone(), ns)
        .create_subresource("token", account, &PostParams::default(), &request)
        .await
        .with_context(|| format!("TokenRequest for ServiceAccount {ns}/{account}"))?;
    let token = token
        .status
        .ok_or_else(|| anyhow!("TokenRequest answered without a token"))?
        .token;
    write_kubeconfig(suite, path, &format!("{ns}-{account}"), &token)?;
    api::client_from(path).await
}

/// The name of the RoleBinding that gives `account` its Lease rights (see
/// [`split_lease_rights`]); deleting it takes them away.
pub fn lease_binding(account: &str) -> String {
    format!("{account}-e2e-lease")
}

/// For two controllers under two ServiceAccounts (`first`, the chart's, and `second`): the
/// chart's controller rules, bound to each, with the Lease rules (`coordination.k8s.io`) in a
/// Role and RoleBinding of their own per account, so a scenario can take one account's right
/// to update Leases away and nothing else. The chart's own RoleBinding for `first` is
/// replaced by these.
async fn split_lease_rights(
    admin: &kube::Client,
    base: &Rendered,
    ns: &str,
    first: &str,
    second: &str,
) -> Result<()> {
    let binds = |doc: &&Value| {
        doc["subjects"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["name"] == first))
    };
    let cluster_binding = base
        .of_kind("ClusterRoleBinding")
        .find(binds)
        .ok_or_else(|| anyhow!("no ClusterRoleBinding for {first}"))?;
    let role_binding = base
        .of_kind("RoleBinding")
        .find(binds)
        .ok_or_else(|| anyhow!("no RoleBinding for {first}"))?;
    let role_name = role_binding["roleRef"]["name"].clone();
    let role = base
        .of_kind("Role")
        .find(|r| r["metadata"]["name"] == role_name)
        .ok_or_else(|| anyhow!("no Role {role_name}"))?;
    let rules = role["rules"].as_array().cloned().unwrap_or_default();
    let (lease_rules, other_rules): (Vec<Value>, Vec<Value>) = rules
        .into_iter()
        .partition(|r| r["apiGroups"][0] == "coordination.k8s.io");
    ensure!(
        !lease_rules.is_empty(),
        "the controller Role has no Lease rules"
    );

    apply_doc::<ServiceAccount>(
        admin,
        &json!({"apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": second, "namespace": ns}}),
    )
    .await?;
    let mut second_cluster = cluster_binding.clone();
    second_cluster["metadata"] = json!({"name": format!("{second}-e2e")});
    second_cluster["subjects"] =
        json!([{"kind": "ServiceAccount", "name": second, "namespace": ns}]);
    apply_doc::<ClusterRoleBinding>(admin, &second_cluster).await?;
    Api::<RoleBinding>::namespaced(admin.clone(), ns)
        .delete(
            role_binding["metadata"]["name"]
                .as_str()
                .unwrap_or_default(),
            &Default::default(),
        )
        .await
        .context("removing the chart's controller RoleBinding (replaced by split ones)")?;
    for account in [first, second] {
        for (suffix, rules) in [("e2e-lease", &lease_rules), ("e2e-sources", &other_rules)] {
            let name = format!("{account}-{suffix}");
            apply_doc::<Role>(
                admin,
                &json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                        "metadata": {"name": name, "namespace": ns}, "rules": rules}),
            )
            .await?;
            apply_doc::<RoleBinding>(
                admin,
                &json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                        "metadata": {"name": name, "namespace": ns},
                        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                        "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": ns}]}),
            )
            .await?;
        }
    }
    Ok(())
}

fn write_kubeconfig(suite: &Suite, path: &std::path::Path, user: &str, token: &str) -> Result<()> {
    let admin = kube::config::Kubeconfig::read_from(&suite.env.kubeconfig)?;
    let cluster = admin
        .clusters
        .first()
        .and_then(|c| c.cluster.clone())
        .ok_or_else(|| anyhow!("no cluster in {}", suite.env.kubeconfig.display()))?;
    let server = cluster
        .server
        .ok_or_else(|| anyhow!("no server in the admin kubeconfig"))?;
    let ca = cluster
        .certificate_authority
        .ok_or_else(|| anyhow!("no certificate-authority in the admin kubeconfig"))?;
    let text = serde_json::to_string_pretty(&json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": {"server": server, "certificate-authority": ca}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": user, "namespace": "default"}}],
        "current-context": "e2e",
    }))?;
    std::fs::write(path, text)?;
    Ok(())
}

async fn apply_doc<K>(client: &kube::Client, doc: &Value) -> Result<()>
where
    K: Resource<DynamicType = ()> + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let object: K = serde_json::from_value(doc.clone()).with_context(|| {
        format!(
            "the chart's {} is not a valid {}",
            doc["metadata"]["name"],
            K::kind(&())
        )
    })?;
    apply(client, &object).await
}

/// Server-side apply (create or update) of a typed object, namespaced or not.
pub async fn apply<K>(client: &kube::Client, object: &K) -> Result<()>
where
    K: Resource<DynamicType = ()> + Serialize + std::fmt::Debug,
{
    let meta = object.meta();
    let name = meta
        .name
        .clone()
        .ok_or_else(|| anyhow!("object without a name"))?;
    let resource = ApiResource::erase::<K>(&());
    let api: Api<DynamicObject> = match &meta.namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    };
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
    .with_context(|| format!("applying {} {name}", K::kind(&())))?;
    Ok(())
}

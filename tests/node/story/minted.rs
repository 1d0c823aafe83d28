//! Issue 17.4 on the real node: credentials minted by a kubelet credential-provider exec plugin
//! (`config.credentialProviders`, run by the controller) keep Pods pulling, and when the
//! plugin fails, admission warns and the expiry alert fires before the credential expires.
//!
//! The plugin is the test's own, psi-mint (tests/node/mint-provider.c, static, shipped to the
//! controller in an image through the chart's `credentialProviders.image`, copied by its init
//! container); it asks the test's mint service (mint.rs, on the node's bridge address), which
//! mints a fresh user and password per call that the registry accepts for 250 s only (added
//! to and removed from its htpasswd file) and answers `cacheDuration: 4m0s`. The controller
//! writes it into the source Secret `minted` and refreshes it at half its lifetime (2 min); the
//! webhook warns when less than a third of the lifetime is left (80 s), and the chart's
//! `PullsecretInjectorCredentialExpiringSoon` (`for: 1m`) fires 20 s before the expiry. A real
//! Prometheus (prometheus.rs) evaluates the chart's rules against the injector Pods' metrics.
//!
//! The timeline, from the first controller mint at t0: refresh at t0+2:00 (then the test makes
//! the plugin fail), the refresh due at t0+4:00 fails, the first password removed at t0+4:10
//! (Pods still pull, with the second), warnings from t0+4:40, the alert fires at about
//! t0+5:41, the second password expires at t0+6:00 and is removed at t0+6:10: a Pod created
//! then fails with the registry's 401, as announced. About 6.5 minutes in all.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use pullsecret_injector::core::names::{NAMESPACE_SELECTOR_ANNOTATION, SOURCE_LABEL};
use serde_json::{Value, json};

use crate::api::create_pod;
use crate::harness::{Env, Sc, eventually, file_len, path_str, read_from, secs};
use crate::install::{self, CONTROLLER, CONTROLLER_SELECTOR, FULLNAME, NAMESPACE, RELEASE};
use crate::kubelet::{self, PULL_TIMEOUT};
use crate::mint::{Mint, MintService};
use crate::prometheus::{self, Prometheus, Target};
use crate::tools;

/// The plugin's executable name (the provider's `name`).
const PROVIDER: &str = "psi-mint";
/// The source Secret the controller keeps filled.
const MINTED: &str = "minted";
/// The repository the app image is pushed to for this scenario, and the rule for it.
const REPOSITORY: &str = "minted/app";
/// What every answer of the mint service says, and how long the registry accepts a password.
const CACHE: Duration = Duration::from_secs(240);
const CACHE_GO: &str = "4m0s";
const LIFE: Duration = Duration::from_secs(250);
/// The webhook's and the alert's threshold for a credential with a known issue time:
/// a third of its lifetime.
const THRESHOLD: f64 = 80.0;
/// The mint service listens on the node's bridge address; Prometheus on the host only. Below
/// the kernel's ephemeral port range (32768-60999).
const MINT_PORT: u16 = 29091;
const PROMETHEUS_PORT: u16 = 29090;
/// Namespaces labelled so are the credential's scope (the source's namespace-selector).
const SCOPE: &str = "node.pullsecret-injector.io/minted";
const ALERT: &str = "PullsecretInjectorCredentialExpiringSoon";
const PLUGIN_ENV: &str = "PSI_MINT_ADDR";
const PLUGIN_ARGS: &str = "get-credentials";

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

fn now() -> f64 {
    unix(SystemTime::now())
}

fn rfc3339(value: &str) -> Result<f64> {
    let ts: k8s_openapi::jiff::Timestamp = value
        .parse()
        .with_context(|| format!("{value:?} is not RFC 3339"))?;
    Ok(ts.as_millisecond() as f64 / 1000.0)
}

/// A docker config Secret as the test sees it: identity, the credential for the registry (the
/// password is never printed: no Debug), and the controller's annotations.
#[derive(Clone)]
struct Cred {
    uid: String,
    data: Vec<u8>,
    user: String,
    password: String,
    issued: Option<f64>,
    expires: Option<f64>,
    provider: Option<String>,
}

impl Cred {
    fn read(secret: &Secret, registry: &str) -> Result<Self> {
        let data = secret
            .data
            .as_ref()
            .and_then(|d| d.get(".dockerconfigjson"))
            .map(|b| b.0.clone())
            .unwrap_or_default();
        let config: Value = serde_json::from_slice(&data).unwrap_or(Value::Null);
        let entry = &config["auths"][registry];
        let annotations = secret.metadata.annotations.clone().unwrap_or_default();
        let time = |key: &str| annotations.get(key).map(|v| rfc3339(v)).transpose();
        Ok(Self {
            uid: secret.metadata.uid.clone().unwrap_or_default(),
            user: entry["username"].as_str().unwrap_or_default().to_string(),
            password: entry["password"].as_str().unwrap_or_default().to_string(),
            data,
            issued: time("pullsecret-injector/issued-at")?,
            expires: time("pullsecret-injector/expires-at")?,
            provider: annotations
                .get("pullsecret-injector/credential-provider")
                .cloned(),
        })
    }

    fn lifetime(&self) -> Option<f64> {
        Some(self.expires? - self.issued?)
    }
}

async fn read_cred(client: &kube::Client, ns: &str, name: &str, registry: &str) -> Result<Cred> {
    let secret = Api::<Secret>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .with_context(|| format!("Secret {ns}/{name}"))?;
    Cred::read(&secret, registry)
}

/// `GET https://REGISTRY/v2/` with a user and password (given to curl on stdin, never on a
/// command line): the HTTP status.
async fn registry_status(env: &Env, user: &str, password: &str) -> Result<u16> {
    let ca = env.dir.join("registry/ca.crt");
    let url = format!("https://{}/v2/", env.registry);
    let out = tools::run(
        "curl",
        &[
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
            "--cacert",
            path_str(&ca)?,
            "-K",
            "-",
            &url,
        ],
        Some(format!("user = \"{user}:{password}\"\n")),
    )
    .await?;
    out.stdout
        .trim()
        .parse()
        .with_context(|| format!("curl {url}: {:?} {}", out.stdout, out.stderr.trim()))
}

fn registry_log(env: &Env) -> PathBuf {
    env.dir.join("registry/registry.log")
}

/// Manifest requests of `repository` the registry authorised since `offset` of its log
/// (`msg="authorized request"`; distribution 2.8 names the user only on failed requests).
fn manifests_authorised(env: &Env, offset: u64, repository: &str) -> usize {
    let needle = format!("http.request.uri=/v2/{repository}/manifests/");
    read_from(&registry_log(env), offset)
        .lines()
        .filter(|l| l.contains("msg=\"authorized request\"") && l.contains(&needle))
        .count()
}

/// Users the registry refused since `offset` (`error authenticating user \"X\"`: a known
/// user with a wrong password, or one no longer in htpasswd).
fn refused_users(env: &Env, offset: u64) -> Vec<String> {
    let mut users: Vec<String> = read_from(&registry_log(env), offset)
        .lines()
        .filter_map(|l| {
            const REFUSED: &str = "error authenticating user \\\"";
            let rest = &l[l.find(REFUSED)? + REFUSED.len()..];
            Some(rest.split("\\\"").next()?.to_string())
        })
        .collect();
    users.dedup();
    users
}

/// The users in the registry's htpasswd file now.
fn htpasswd_users(env: &Env) -> Result<Vec<String>> {
    Ok(std::fs::read_to_string(env.dir.join("registry/htpasswd"))?
        .lines()
        .filter_map(|l| l.split_once(':').map(|(u, _)| u.to_string()))
        .collect())
}

/// A Pod's pull of the scenario's image as the registry saw it: it accepted manifest
/// requests, refused no credential, and its htpasswd held only the story's own user and
/// `user`; the Pod's only pull secret (`minted`) holds `user`, so that is what the kubelet sent.
fn pulled_with(env: &Env, offset: u64, user: &str) -> Result<String> {
    let users = htpasswd_users(env)?;
    ensure!(
        users == [env.reg_user.clone(), user.to_string()],
        "the registry's htpasswd holds {users:?}"
    );
    let refused = refused_users(env, offset);
    ensure!(
        refused.is_empty(),
        "the registry refused {refused:?} during the pull"
    );
    let accepted = manifests_authorised(env, offset, REPOSITORY);
    ensure!(
        accepted > 0,
        "no authorised manifest request of {REPOSITORY} in the registry's log"
    );
    Ok(format!(
        "{accepted} manifest request(s) authorised, none refused, htpasswd users {users:?}"
    ))
}

/// The sum of the samples of `name` whose labels include all of `labels` (any order).
fn metric_with(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Some(rest) = series.strip_prefix(name) else {
            continue;
        };
        if !(rest.is_empty() || rest.starts_with('{')) {
            continue;
        }
        if labels
            .iter()
            .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
            && let Ok(v) = value.parse::<f64>()
        {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// Per controller Pod, a metric's value (None: no such series).
async fn controller_metric(
    client: &kube::Client,
    name: &str,
    labels: &[(&str, &str)],
) -> Result<Vec<(String, Option<f64>)>> {
    let mut out = Vec::new();
    for p in install::controller_pods(client).await? {
        out.push((
            p.name.clone(),
            metric_with(&p.metrics().await?, name, labels),
        ));
    }
    Ok(out)
}

/// A dry-run Pod with the scenario's image in `ns`: its secrets and the warnings about the
/// minted Secret's expiry.
async fn dry_run(
    client: &kube::Client,
    ns: &str,
    image: &str,
) -> Result<(Vec<String>, Vec<String>)> {
    let created = create_pod(
        client,
        ns,
        &kubelet::app_pod("probe-", image, "Always", &[])?,
        true,
    )
    .await?;
    let warnings = created
        .warnings
        .iter()
        .filter(|w| w.contains(&format!("Secret {MINTED} ")) && w.contains("expire"))
        .cloned()
        .collect();
    Ok((created.secrets(), warnings))
}

/// The mint the controller's plugin call made whose user the Secret now holds.
fn mint_of(mints: &[Mint], user: &str) -> Result<Mint> {
    mints
        .iter()
        .find(|m| m.user == user)
        .cloned()
        .ok_or_else(|| {
            anyhow!("the Secret holds user {user:?}, which the mint service never minted")
        })
}

pub async fn minted_credentials(sc: Sc) -> Result<()> {
    let env = sc.env();
    let client = sc.admin();
    let inst = install::installation(sc.suite).await?;
    let registry = env.registry.clone();
    let image = format!("{registry}/{REPOSITORY}:1");
    let dir = env.run.join("minted");
    std::fs::create_dir_all(&dir)?;
    let secrets = Api::<Secret>::namespaced(client.clone(), NAMESPACE);

    // --- The test's provider: image, mint service, app image.
    let bind: SocketAddr = format!("{}:{MINT_PORT}", env.node_ip).parse()?;
    let mint = Arc::new(
        MintService::start(
            bind,
            &env.dir.join("registry/htpasswd"),
            &registry,
            LIFE,
            CACHE_GO,
            &sc.suite.journal,
        )
        .await?,
    );
    {
        let mint = mint.clone();
        sc.defer(async move { mint.stop().await });
    }
    let plugin = env.dir.join("images/providers/psi-mint");
    let provider_image = sc
        .step("7.1", format!("the test's credential provider: {PROVIDER} (tests/node/mint-provider.c, static) in an image with busybox's cp (tests/node/provider-image.sh), pushed to the private registry; the mint service on {bind}; the app image pushed as {image}"), async {
            let script = env.root.join("tests/node/provider-image.sh");
            // The same DIR and registry port as this run (tests/node/lib.sh's defaults otherwise).
            let dir_var = format!("DIR={}", path_str(&env.dir)?);
            let port_var = format!("REG_PORT={}", registry.rsplit_once(':').map_or("5000", |(_, p)| p));
            let out = tools::run("env", &[&dir_var, &port_var, path_str(&script)?], None).await?;
            ensure!(out.ok, "provider-image.sh: {}", out.stderr.trim());
            let reference = out.stdout.trim().to_string();
            tools::push_app(env, REPOSITORY).await?;
            sc.note(format!("{reference}; {}", out.stderr.trim()));
            Ok(reference)
        })
        .await?;
    sc.step("7.1", format!("run on the host as the controller runs it (environment cleared but {PLUGIN_ENV}, request on stdin), the plugin answers a CredentialProviderResponse for {registry} (cacheKeyType Registry, cacheDuration {CACHE_GO}); the registry accepts the minted user at once (GET /v2/ 200) and refuses it (401) once the service took it out of htpasswd: distribution re-reads htpasswd when the file changes"), async {
        mint.set_life(Duration::from_secs(2));
        let request = json!({"apiVersion": "credentialprovider.kubelet.k8s.io/v1", "kind": "CredentialProviderRequest", "image": image});
        let addr = format!("{PLUGIN_ENV}={bind}");
        let out = tools::run("env", &["-i", &addr, path_str(&plugin)?, PLUGIN_ARGS], Some(request.to_string())).await;
        mint.set_life(LIFE);
        let out = out?;
        ensure!(out.ok, "the plugin failed: {}", out.stderr.trim());
        let response: Value = serde_json::from_str(&out.stdout).context("the plugin's stdout is not JSON")?;
        ensure!(
            response["kind"] == "CredentialProviderResponse"
                && response["apiVersion"] == "credentialprovider.kubelet.k8s.io/v1"
                && response["cacheKeyType"] == "Registry"
                && response["cacheDuration"] == CACHE_GO,
            "response kind {}, apiVersion {}, cacheKeyType {}, cacheDuration {}",
            response["kind"], response["apiVersion"], response["cacheKeyType"], response["cacheDuration"]
        );
        let auth = &response["auth"][&registry];
        let (user, password) = (auth["username"].as_str().unwrap_or_default(), auth["password"].as_str().unwrap_or_default());
        let minted = mint.mints();
        ensure!(minted.len() == 1 && minted[0].user == user && minted[0].password == password, "the answer is not the service's mint");
        ensure!(minted[0].args == PLUGIN_ARGS && minted[0].env == PLUGIN_ENV, "the plugin passed args {:?}, environment {:?}", minted[0].args, minted[0].env);
        let accepted = registry_status(env, user, password).await?;
        ensure!(accepted == 200, "GET /v2/ as the new {user}: {accepted}");
        let (_, removed) = eventually(Duration::from_secs(10), "the service removing it", || async {
            ensure!(mint.mints()[0].removed.is_some(), "not removed yet");
            Ok(())
        })
        .await?;
        let offset = file_len(&registry_log(env));
        let refused = registry_status(env, user, password).await?;
        ensure!(refused == 401, "GET /v2/ as {user} after its removal: {refused}");
        let (logged, _) = eventually(Duration::from_secs(5), "the refusal in the registry's log", || async {
            let users = refused_users(env, offset);
            ensure!(users == [user.to_string()], "refused {users:?}");
            Ok(users)
        })
        .await?;
        sc.note(format!("{user}: 200 at once; removed {} later; then 401 (registry log: error authenticating user {logged:?})", secs(removed)));
        Ok(())
    })
    .await?;

    // --- The provider configured: helm upgrade; the controller fills `minted`.
    let before_values = inst.values();
    let mut values = before_values.clone();
    let (repository, tag) = provider_image
        .rsplit_once(':')
        .ok_or_else(|| anyhow!("{provider_image}: no tag"))?;
    values["credentialProviders"] = json!({
        "source": "initContainer",
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Always"},
    });
    values["config"]["credentialProviders"] = json!({
        "providers": [{
            "name": PROVIDER,
            "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
            "matchImages": [registry],
            "defaultCacheDuration": "1m",
            "args": [PLUGIN_ARGS],
            "env": [{"name": PLUGIN_ENV, "value": bind.to_string()}],
            "secret": MINTED,
            "images": [format!("{registry}/{REPOSITORY}")],
        }],
    });
    let rule = format!("{registry}/minted");
    values["config"]["rules"]
        .as_array_mut()
        .context("config.rules")?
        .push(json!({"registry": rule, "secrets": [MINTED]}));
    {
        let (client, inst, sc2) = (client.clone(), inst.clone(), sc.clone());
        sc.defer(async move {
            // The story's installation as it was: no provider, no rule for minted.
            let started = Instant::now();
            let reverted = inst
                .upgrade(
                    env,
                    "minted-revert",
                    &before_values,
                    &["--wait", "--timeout", "180s"],
                )
                .await;
            let deleted = Api::<Secret>::namespaced(client, NAMESPACE)
                .delete(MINTED, &DeleteParams::default())
                .await;
            sc2.note(match (reverted, deleted) {
                (Err(e), _) => format!("afterwards: helm upgrade back FAILED: {e:#}"),
                (Ok(out), _) if !out.ok => format!(
                    "afterwards: helm upgrade back to the story's values FAILED: {}",
                    out.stderr.trim()
                ),
                (Ok(_), Err(e)) => format!("afterwards: deleting Secret {MINTED} FAILED: {e:#}"),
                (Ok(_), Ok(_)) => format!(
                    "afterwards: helm upgrade --wait back to the story's values in {}, Secret {MINTED} deleted",
                    secs(started.elapsed())
                ),
            });
        });
    }
    if secrets.get_opt(MINTED).await?.is_some() {
        secrets.delete(MINTED, &DeleteParams::default()).await?;
        eventually(
            Duration::from_secs(30),
            "the old minted Secret gone",
            || async {
                ensure!(secrets.get_opt(MINTED).await?.is_none(), "still there");
                Ok(())
            },
        )
        .await?;
    }
    let old_controllers: Vec<String> = install::controller_pods(&client)
        .await?
        .into_iter()
        .map(|p| p.name)
        .collect();
    let controllers = values["controller"]["replicaCount"].as_u64().unwrap_or(2) as usize;
    let upgraded = Instant::now();
    let first = sc
        .step("7.2", format!("Secret {MINTED} made by hand, empty (kubernetes.io/dockerconfigjson, {{\"auths\":{{}}}}), scoped to namespaces labelled {SCOPE}=true (annotation {NAMESPACE_SELECTOR_ANNOTATION}); helm upgrade: config.credentialProviders ({PROVIDER}: matchImages [{registry}], args [{PLUGIN_ARGS}], env {PLUGIN_ENV} only, secret {MINTED}, images [{registry}/{REPOSITORY}]), credentialProviders.image (source initContainer), a rule {rule} -> [{MINTED}]: the controller Pods roll and the Lease holder fills {MINTED} in place (same UID, the scope annotation kept, labelled {SOURCE_LABEL}=true) with the credential minted for {registry}, annotated issued-at, expires-at 240 s later and credential-provider {PROVIDER}; the plugin got the image, its argument and no other environment"), async {
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(MINTED.into()),
                    annotations: Some([(NAMESPACE_SELECTOR_ANNOTATION.to_string(), format!("{SCOPE}=true"))].into()),
                    ..Default::default()
                },
                type_: Some("kubernetes.io/dockerconfigjson".into()),
                data: Some(BTreeMap::from([(".dockerconfigjson".to_string(), ByteString(br#"{"auths":{}}"#.to_vec()))])),
                ..Default::default()
            };
            let made = secrets.create(&PostParams::default(), &secret).await?;
            let uid = made.metadata.uid.clone().unwrap_or_default();
            let out = inst.upgrade(env, "minted", &values, &[]).await?;
            ensure!(out.ok, "helm upgrade failed: {}", out.stderr.trim());
            let took = upgraded.elapsed();
            let pods = install::await_ready_selected(&client, CONTROLLER_SELECTOR, controllers, &old_controllers).await?;
            let ready = upgraded.elapsed();
            let (cred, _) = eventually(Duration::from_secs(90), &format!("{MINTED} filled by the controller"), || async {
                let cred = read_cred(&client, NAMESPACE, MINTED, &registry).await?;
                ensure!(!cred.user.is_empty() && cred.provider.as_deref() == Some(PROVIDER), "user {:?}, provider {:?}", cred.user, cred.provider);
                Ok(cred)
            })
            .await?;
            let filled = upgraded.elapsed();
            ensure!(cred.uid == uid, "{MINTED} was replaced: uid {uid} -> {}", cred.uid);
            let meta = secrets.get(MINTED).await?.metadata;
            let label = meta.labels.unwrap_or_default().get(SOURCE_LABEL).cloned();
            let scope = meta.annotations.unwrap_or_default().get(NAMESPACE_SELECTOR_ANNOTATION).cloned();
            ensure!(label.as_deref() == Some("true") && scope == Some(format!("{SCOPE}=true")), "{MINTED}: label {SOURCE_LABEL} {label:?}, annotation {NAMESPACE_SELECTOR_ANNOTATION} {scope:?}");
            let minted = mint_of(&mint.mints(), &cred.user)?;
            ensure!(cred.password == minted.password, "{MINTED} holds another password than {} was minted with", cred.user);
            let (issued, lifetime) = (cred.issued.context("no issued-at")?, cred.lifetime().context("no expires-at")?);
            ensure!((lifetime - CACHE.as_secs_f64()).abs() <= 1.0, "expires-at - issued-at = {lifetime} s, want {}", CACHE.as_secs());
            ensure!((issued - unix(minted.at)).abs() <= 5.0, "issued-at {issued} is not the mint time {}", unix(minted.at));
            ensure!(minted.image == format!("{registry}/{REPOSITORY}") && minted.args == PLUGIN_ARGS && minted.env == PLUGIN_ENV, "the plugin passed image {:?}, args {:?}, environment {:?}", minted.image, minted.args, minted.env);
            ensure!(mint.bad_requests().is_empty(), "malformed requests: {:?}", mint.bad_requests());
            sc.note(format!("helm upgrade returned in {}; {} new controller Pods Ready {} after it started; {MINTED} holds {} {} after it started (lifetime {lifetime:.0} s); the plugin passed args {:?}, environment names {:?}", secs(took), pods.len(), secs(ready), cred.user, secs(filled), minted.args, minted.env));
            Ok(cred)
        })
        .await?;
    let t0 = first.issued.unwrap_or_else(now);

    // --- Prometheus with the chart's rules.
    let prom = sc
        .step("7.3", format!("a real Prometheus ({}) scraping the webhook and controller Pods' /metrics every {} with the ServiceMonitor's labels, evaluating every {} the chart's own alert rules (the PrometheusRule helm template renders from the release's values with metrics.prometheusRule.enabled=true): every target up, no {ALERT} for {MINTED}", env.prometheus.display(), prometheus::SCRAPE_INTERVAL, prometheus::EVALUATION_INTERVAL), async {
            let rules = prometheus::chart_rules(env, RELEASE, NAMESPACE, &values, &dir).await?;
            let mut targets = Vec::new();
            for (job, pods) in [(FULLNAME, install::pods(&client).await?), (CONTROLLER, install::controller_pods(&client).await?)] {
                for p in pods {
                    targets.push(Target { job: job.to_string(), namespace: NAMESPACE.to_string(), pod: p.name.clone(), addr: p.admin()? });
                }
            }
            let listen: SocketAddr = format!("127.0.0.1:{PROMETHEUS_PORT}").parse()?;
            let prom = Prometheus::start(&env.prometheus, &dir.join("prometheus"), listen, &targets, &rules).await?;
            let up = prom.await_targets_up(targets.len()).await?;
            let alerts = prom.query(&format!("ALERTS{{alertname=\"{ALERT}\",secret=\"{MINTED}\"}}")).await?;
            ensure!(alerts.is_empty(), "{ALERT} already: {alerts:?}");
            sc.note(format!("{} groups, {} rules; {up} targets up", prom.groups, prom.rules));
            Ok(Arc::new(prom))
        })
        .await?;
    {
        let prom = prom.clone();
        sc.defer(async move { prom.stop() });
    }

    // --- Sync's copy; a Pod pulls with the first minted credential.
    let ns = sc.ns("minted", true).await?;
    tools::kubectl(env, &["label", "namespace", &ns, &format!("{SCOPE}=true")]).await?;
    let copy = sc
        .step("7.4", format!("sync copies {MINTED} into {ns} (labelled {SCOPE}=true); a Pod ({image}, imagePullPolicy Always) is stored with [{MINTED}] only, pulls and runs; the registry accepted the pull, refusing no credential, while htpasswd held only {} and the story's own user", first.user), async {
            let (copy, took) = eventually(Duration::from_secs(60), &format!("the copy of {MINTED} in {ns}"), || async {
                let copy = read_cred(&client, &ns, MINTED, &registry).await?;
                ensure!(copy.user == first.user, "the copy holds {:?}", copy.user);
                Ok(copy)
            })
            .await?;
            eventually(Duration::from_secs(30), &format!("the rule {rule} in the webhook"), || async {
                let (secrets, _) = dry_run(&client, &ns, &image).await?;
                ensure!(secrets == [MINTED], "a dry run got {secrets:?}");
                Ok(())
            })
            .await?;
            let offset = file_len(&registry_log(env));
            let pod = create_pod(&client, &ns, &kubelet::app_pod("first", &image, "Always", &[])?, false).await?;
            ensure!(pod.secrets() == [MINTED], "stored with {:?}", pod.secrets());
            let running = kubelet::await_running(&client, &ns, "first", PULL_TIMEOUT).await?;
            let users = pulled_with(env, offset, &first.user)?;
            sc.note(format!("copy {} after the namespace was made; first Running {} after it was created; registry: {users}", secs(took), secs(running)));
            Ok(copy)
        })
        .await?;

    // --- The refresh at half the lifetime.
    let second = sc
        .step("7.5", format!("at half the lifetime the controller runs the plugin again: {MINTED} updated in place (same UID) with a new user and password, issued-at and expires-at moved; the copy in {ns} updated in place (same UID, new data); then the test makes the mint service answer 500"), async {
            let wait = Duration::from_secs_f64((t0 + CACHE.as_secs_f64() / 2.0 + 60.0 - now()).max(10.0));
            let (cred, _) = eventually(wait, &format!("{MINTED} refreshed"), || async {
                let cred = read_cred(&client, NAMESPACE, MINTED, &registry).await?;
                ensure!(cred.user != first.user, "still {}", first.user);
                Ok(cred)
            })
            .await?;
            mint.set_failing(true);
            ensure!(cred.uid == first.uid, "{MINTED} was replaced: uid {} -> {}", first.uid, cred.uid);
            let minted = mint_of(&mint.mints(), &cred.user)?;
            ensure!(cred.password == minted.password && cred.password != first.password, "{MINTED} does not hold the new password");
            let (issued, lifetime) = (cred.issued.context("no issued-at")?, cred.lifetime().context("no expires-at")?);
            let after = issued - t0;
            ensure!((after - CACHE.as_secs_f64() / 2.0).abs() <= 15.0, "refreshed {after:.0} s after the first mint, want about {} s", CACHE.as_secs() / 2);
            ensure!((lifetime - CACHE.as_secs_f64()).abs() <= 1.0, "lifetime {lifetime} s");
            let (new_copy, took) = eventually(Duration::from_secs(30), &format!("the copy in {ns} refreshed"), || async {
                let c = read_cred(&client, &ns, MINTED, &registry).await?;
                ensure!(c.user == cred.user, "the copy holds {:?}", c.user);
                Ok(c)
            })
            .await?;
            ensure!(new_copy.uid == copy.uid, "the copy was replaced: uid {} -> {}", copy.uid, new_copy.uid);
            ensure!(new_copy.data != copy.data && new_copy.password == cred.password, "the copy's data did not change");
            sc.note(format!("{} -> {} {after:.1} s after the first mint (half of {lifetime:.0} s); the copy (uid {}) followed {} later", first.user, cred.user, copy.uid, secs(took)));
            Ok(cred)
        })
        .await?;
    let expires = second.expires.context("no expires-at")?;

    // --- The first password expired: Pods still pull, with the second.
    sc.step("7.6", format!("{} expired: the mint service took it out of htpasswd {} s after minting it and the registry refuses it (401); a dry run gets no expiry warning ({} has more than lifetime/3 left) and no {ALERT} is pending or firing; a Pod created now in {ns} is stored with [{MINTED}], pulls (Always) and runs: the registry accepted it, refusing no credential, while htpasswd held only {} and the story's own user", first.user, LIFE.as_secs(), second.user, second.user), async {
        let wait = Duration::from_secs_f64((t0 + LIFE.as_secs_f64() + 30.0 - now()).max(10.0));
        eventually(wait, &format!("{} removed from htpasswd", first.user), || async {
            let m = mint_of(&mint.mints(), &first.user)?;
            ensure!(m.removed.is_some(), "not yet");
            Ok(())
        })
        .await?;
        let old = registry_status(env, &first.user, &first.password).await?;
        ensure!(old == 401, "GET /v2/ as {}: {old}", first.user);
        let (got, warnings) = dry_run(&client, &ns, &image).await?;
        let left = expires - now();
        ensure!(got == [MINTED] && warnings.is_empty(), "a dry run with {left:.0} s left: {got:?}, warnings {warnings:?}");
        let alerts = prom.query(&format!("ALERTS{{alertname=\"{ALERT}\",secret=\"{MINTED}\"}}")).await?;
        ensure!(alerts.is_empty(), "{ALERT} with {left:.0} s left: {alerts:?}");
        let offset = file_len(&registry_log(env));
        let pod = create_pod(&client, &ns, &kubelet::app_pod("after-expiry", &image, "Always", &[])?, false).await?;
        ensure!(pod.secrets() == [MINTED], "stored with {:?}", pod.secrets());
        let running = kubelet::await_running(&client, &ns, "after-expiry", PULL_TIMEOUT).await?;
        let users = pulled_with(env, offset, &second.user)?;
        let copy_now = read_cred(&client, &ns, MINTED, &registry).await?;
        ensure!(copy_now.uid == copy.uid, "the copy was replaced");
        sc.note(format!("{} removed {:.0} s after the first mint; {left:.0} s left on {}: no warning, no alert; after-expiry Running {} after it was created, registry: {users}", first.user, now() - t0, second.user, secs(running)));
        Ok(())
    })
    .await?;

    // --- The plugin fails.
    sc.step("7.7", format!("the refresh due at half of {}'s lifetime fails (the mint service answers 500): pullsecret_injector_credential_provider_failing{{provider=\"{PROVIDER}\"}} is 1 and runs_total{{outcome=\"failed\"}} counts it on the Lease holder; {MINTED} keeps {} and its expires-at", second.user, second.user), async {
        let due = second.issued.unwrap_or(t0) + CACHE.as_secs_f64() / 2.0;
        let wait = Duration::from_secs_f64((due + 60.0 - now()).max(10.0));
        let (holder, _) = eventually(wait, "a failed plugin run", || async {
            ensure!(!mint.refused().is_empty(), "no request refused yet");
            let failing = controller_metric(&client, "pullsecret_injector_credential_provider_failing", &[("provider", PROVIDER)]).await?;
            let holder = failing.iter().find(|(_, v)| *v == Some(1.0)).map(|(n, _)| n.clone());
            holder.ok_or_else(|| anyhow!("failing gauge per controller Pod: {failing:?}"))
        })
        .await?;
        let failed = controller_metric(&client, "pullsecret_injector_credential_provider_runs_total", &[("provider", PROVIDER), ("outcome", "failed")]).await?;
        let on_holder = failed.iter().find(|(n, _)| *n == holder).and_then(|(_, v)| *v).unwrap_or_default();
        ensure!(on_holder >= 1.0, "runs_total{{outcome=\"failed\"}} per controller Pod: {failed:?}");
        let cred = read_cred(&client, NAMESPACE, MINTED, &registry).await?;
        ensure!(cred.user == second.user && cred.data == second.data && cred.expires == second.expires, "{MINTED} now holds {:?}, expires {:?}", cred.user, cred.expires);
        let refused: Vec<String> = mint.refused().iter().map(|t| format!("{:+.1} s", unix(*t) - due)).collect();
        sc.note(format!("{holder}: failing 1, {on_holder} failed run(s); the mint service refused requests at {} from when the refresh was due (issued-at + lifetime/2)", refused.join(", ")));
        Ok(())
    })
    .await?;

    sc.step("7.8", format!("admission warns before the credential expires: dry-run Pods every second; the first warning about {MINTED} comes when less than lifetime/3 ({THRESHOLD:.0} s) is left, and the Pod still gets [{MINTED}]"), async {
        loop {
            let left = expires - now();
            ensure!(left > 0.0, "no warning before {MINTED} expired");
            let (got, warnings) = dry_run(&client, &ns, &image).await?;
            ensure!(got == [MINTED], "a dry run got {got:?}");
            if let Some(w) = warnings.first() {
                ensure!(left <= THRESHOLD + 1.0, "warned with {left:.1} s left, before the threshold: {w}");
                ensure!(left >= THRESHOLD - 15.0, "first warning only {left:.1} s before the expiry");
                sc.note(format!("first warning {left:.1} s before expires-at: {w}"));
                return Ok(());
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
    .await?;

    sc.step("7.9", format!("the chart's {ALERT} fires in Prometheus before the credential expires (for: 1m after less than lifetime/3 is left), and Prometheus has pullsecret_injector_credential_provider_failing{{provider=\"{PROVIDER}\"}} = 1 then"), async {
        let query = format!("ALERTS{{alertname=\"{ALERT}\",alertstate=\"firing\",secret=\"{MINTED}\"}}");
        loop {
            let left = expires - now();
            if left <= 0.0 {
                let pending = prom.query(&format!("ALERTS_FOR_STATE{{alertname=\"{ALERT}\",secret=\"{MINTED}\"}}")).await.unwrap_or_default();
                bail!("{ALERT} did not fire before {MINTED} expired (active since: {:?}); Prometheus log: {}", pending.iter().map(|s| expires - s.value).collect::<Vec<_>>(), prom.log_tail(5));
            }
            let firing = prom.query(&query).await?;
            if !firing.is_empty() {
                let active = prom.query(&format!("ALERTS_FOR_STATE{{alertname=\"{ALERT}\",secret=\"{MINTED}\"}}")).await?;
                let since = active.first().map(|s| expires - s.value);
                let failing = prom.query(&format!("max(pullsecret_injector_credential_provider_failing{{provider=\"{PROVIDER}\"}})")).await?;
                ensure!(failing.first().map(|s| s.value) == Some(1.0), "credential_provider_failing in Prometheus: {failing:?}");
                sc.note(format!("firing {left:.1} s before expires-at (pending since {} s before it); labels {:?}", since.map_or("?".into(), |s| format!("{s:.1}")), firing[0].labels));
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await?;

    sc.step("7.10", format!("as announced: {} expires and the registry refuses it once the service took it out of htpasswd; {MINTED} still holds it (the last good credential is kept), a dry run warns that it expired, and a Pod created now fails with the registry's 401 (its log: {} refused)", second.user, second.user), async {
        let wait = Duration::from_secs_f64((second.issued.unwrap_or(t0) + LIFE.as_secs_f64() + 30.0 - now()).max(10.0));
        eventually(wait, &format!("{} removed from htpasswd", second.user), || async {
            ensure!(mint_of(&mint.mints(), &second.user)?.removed.is_some(), "not yet");
            Ok(())
        })
        .await?;
        let status = registry_status(env, &second.user, &second.password).await?;
        ensure!(status == 401, "GET /v2/ as {}: {status}", second.user);
        let cred = read_cred(&client, NAMESPACE, MINTED, &registry).await?;
        ensure!(cred.user == second.user, "{MINTED} now holds {:?}", cred.user);
        let (got, warnings) = dry_run(&client, &ns, &image).await?;
        ensure!(got == [MINTED] && warnings.iter().any(|w| w.contains("expired")), "a dry run after the expiry: {got:?}, warnings {warnings:?}");
        let offset = file_len(&registry_log(env));
        let pod = create_pod(&client, &ns, &kubelet::app_pod("after-failure", &image, "Always", &[])?, false).await?;
        ensure!(pod.secrets() == [MINTED], "stored with {:?}", pod.secrets());
        let (reason, took) = kubelet::await_pull_failure(&client, &ns, "after-failure", PULL_TIMEOUT).await?;
        let event = kubelet::await_401(&client, &ns, "after-failure").await?;
        let (refused, _) = eventually(Duration::from_secs(40), "the registry's refusal in its log", || async {
            let users = refused_users(env, offset);
            ensure!(users.contains(&second.user), "refused {users:?}");
            Ok(users)
        })
        .await?;
        sc.note(format!("after-failure: {reason} {} after it was created; kubelet event: {event}; the registry refused {refused:?}", secs(took)));
        Ok(())
    })
    .await?;
    Ok(())
}

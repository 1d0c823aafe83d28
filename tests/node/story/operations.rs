//! Issue 10.4, operations on the running installation, with Pods created throughout
//! (churn.rs): `helm upgrade` of the config, the serving certificate rotated through its
//! Secret (the documented way, and by writing a new one into it), a ConfigMap edit, an outage
//! repaired, `helm uninstall`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Endpoints, Pod, Secret};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{Api, ListParams, PostParams};
use pullsecret_injector::core::names::{INJECT_LABEL, MANAGED_BY, MANAGED_BY_LABEL};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use serde_json::json;

use crate::api::{create_pod, pull_secrets};
use crate::churn::Churn;
use crate::harness::{Sc, eventually, failed_webhook_calls, file_len, secs, stays};
use crate::install::{
    self, FULLNAME, InjectorPod, Installation, NAMESPACE, SERVICE_DNS, TLS_SECRET,
    await_metric_grew, describe_times, metric_by_pod,
};
use crate::kubelet::{self, PULL_TIMEOUT};
use crate::story::REGCRED;
use crate::tools::{self, first_der, kubectl, served_certificate};

const CONFIG_RELOADS: &str = r#"pullsecret_injector_config_reloads_total{result="success"}"#;
const CERT_RELOADS: &str = r#"pullsecret_injector_certificate_reloads_total{result="success"}"#;

/// The story's source Secret exists (the story scenario made it; a scenario run alone makes
/// it here).
async fn ensure_regcred(sc: &Sc) -> Result<()> {
    let secrets = Api::<Secret>::namespaced(sc.admin(), NAMESPACE);
    if secrets.get_opt(REGCRED).await?.is_none() {
        let env = sc.env();
        tools::create_docker_registry_secret(env, NAMESPACE, REGCRED, &env.registry).await?;
        kubectl(
            env,
            &[
                "label",
                "secret",
                REGCRED,
                "-n",
                NAMESPACE,
                &format!("{}=true", pullsecret_injector::core::names::SOURCE_LABEL),
            ],
        )
        .await?;
    }
    Ok(())
}

/// An injected namespace holding sync's copy of regcred.
pub async fn injected_ns(sc: &Sc, name: &str) -> Result<String> {
    ensure_regcred(sc).await?;
    let ns = sc.ns(name, true).await?;
    let secrets = Api::<Secret>::namespaced(sc.admin(), &ns);
    eventually(
        Duration::from_secs(60),
        &format!("regcred copied into {ns}"),
        || async {
            secrets.get(REGCRED).await?;
            Ok(())
        },
    )
    .await?;
    Ok(ns)
}

/// Injector Pods' identities, to prove nothing restarted or rolled.
fn identities(pods: &[InjectorPod]) -> Vec<(String, String, i32)> {
    let mut ids: Vec<_> = pods
        .iter()
        .map(|p| (p.name.clone(), p.uid.clone(), p.restarts))
        .collect();
    ids.sort();
    ids
}

/// The end of an operation: every Pod `churn` created meanwhile got regcred and is Running
/// (step `id`), and no injector Pod was restarted or replaced.
async fn churn_complete(
    sc: &Sc,
    id: &str,
    what: &str,
    churn: Churn,
    before: &[(String, String, i32)],
) -> Result<()> {
    sc.step(id, what, async {
        let summary = churn.finish(&sc.admin()).await?;
        sc.note(summary.describe());
        ensure!(summary.missed.is_empty(), "missed: {:?}", summary.missed);
        Ok(())
    })
    .await?;
    same_pods(sc, id, before).await
}

async fn same_pods(sc: &Sc, id: &str, before: &[(String, String, i32)]) -> Result<()> {
    sc.step(
        id,
        "no injector Pod restarted or replaced (same UIDs, same restartCount)",
        async {
            let now = identities(&install::pods(&sc.admin()).await?);
            ensure!(now == before, "before {before:?}, now {now:?}");
            Ok(())
        },
    )
    .await
}

/// A dry-run Pod with `image` (IfNotPresent): `n` answers in a row (the API server picks an
/// endpoint per call, so both replicas answer) show `want(secrets, imagePullPolicy)`.
async fn dry_run_shows(
    client: &kube::Client,
    ns: &str,
    image: &str,
    n: usize,
    want: impl Fn(&[String], &str) -> bool,
) -> Result<()> {
    let pod = kubelet::app_pod("probe-", image, "IfNotPresent", &[])?;
    for _ in 0..n {
        let created = create_pod(client, ns, &pod, true).await?;
        let policy = kubelet::pull_policy(&created.pod);
        ensure!(
            want(&created.secrets(), &policy),
            "dry run: {:?}, imagePullPolicy {policy}",
            created.secrets()
        );
    }
    Ok(())
}

pub async fn helm_upgrade(sc: Sc) -> Result<()> {
    let env = sc.env();
    let client = sc.admin();
    let inst = install::installation(sc.suite).await?;
    let app = env.app();
    let ops = injected_ns(&sc, "ops").await?;
    ensure!(
        inst.values()["config"]["repair"] != json!(true),
        "repair is already on (run order?)"
    );

    // A Deployment stuck before its namespace was labelled: labelling it changes nothing for
    // the existing Pod while repair is off.
    let late = sc.ns("late", false).await?;
    let stuck = sc
        .step("4.1", "before: Deployment late stuck in an unlabelled namespace, then the namespace labelled: with repair off its Pod stays stuck", async {
            Api::<Deployment>::namespaced(client.clone(), &late)
                .create(&PostParams::default(), &kubelet::deployment("late", &app, 1, "Always", &[])?)
                .await?;
            let pod = kubelet::await_pods_of(&client, &late, "late", 1, &[]).await?.remove(0);
            let name = kubelet::name(&pod);
            kubelet::await_pull_failure(&client, &late, &name, PULL_TIMEOUT).await?;
            kubectl(env, &["label", "namespace", &late, &format!("{INJECT_LABEL}=enabled")]).await?;
            let secrets = Api::<Secret>::namespaced(client.clone(), &late);
            eventually(Duration::from_secs(60), "regcred copied", || async { secrets.get(REGCRED).await.map(|_| ()).map_err(Into::into) }).await?;
            // Nothing may happen to the stuck Pod: watched for 3 s once the copy is there.
            stays(Duration::from_secs(3), "the stuck Pod left alone with repair off", || async {
                let pods = kubelet::pods_of(&client, &late, "late").await?;
                ensure!(pods.len() == 1 && kubelet::name(&pods[0]) == name && kubelet::state(&pods[0]).pull_failed(), "the stuck Pod changed: {:?}", pods.iter().map(|p| (kubelet::name(p), kubelet::state(p))).collect::<Vec<_>>());
                Ok(())
            })
            .await?;
            Ok(name)
        })
        .await?;

    let pods = install::pods(&client).await?;
    let before = identities(&pods);
    let generation = Api::<Deployment>::namespaced(client.clone(), NAMESPACE)
        .get(FULLNAME)
        .await?
        .metadata
        .generation;
    let reloads = metric_by_pod(&client, CONFIG_RELOADS).await?;
    let mut values = inst.values();
    values["config"]["repair"] = json!(true);
    let rule = format!("{}/ops", env.registry);
    values["config"]["rules"]
        .as_array_mut()
        .context("config.rules")?
        .push(json!({"registry": rule, "secrets": [REGCRED], "pullPolicy": "Always"}));
    let churn = Churn::start(&client, &ops, &app, REGCRED)?;
    let upgraded = Instant::now();
    sc.step("4.2", format!("helm upgrade -f values.yaml (config.repair: true, a rule {rule} with pullPolicy: Always): the Deployment is unchanged (no rollout)"), async {
        let out = inst.upgrade(env, "upgrade", &values, &[]).await?;
        ensure!(out.ok, "helm upgrade failed: {}", out.stderr.trim());
        let now = Api::<Deployment>::namespaced(client.clone(), NAMESPACE).get(FULLNAME).await?.metadata.generation;
        ensure!(now == generation, "Deployment generation {generation:?} -> {now:?}");
        sc.note(format!("helm upgrade returned in {}", secs(upgraded.elapsed())));
        Ok(())
    })
    .await?;
    sc.step("4.3", "the kubelet rewrites the mounted config.yaml; both injectors reload it (config_reloads_total{result=\"success\"} grows)", async {
        let times = await_metric_grew(&client, CONFIG_RELOADS, &reloads, upgraded, Duration::from_secs(150)).await?;
        sc.note(format!("reloaded after helm upgrade started: {}", describe_times(&times)));
        Ok(())
    })
    .await?;
    sc.step("4.4", format!("the new rule answers: a Pod with {rule}/app:1 and IfNotPresent gets imagePullPolicy Always and [regcred], 6 dry runs in a row"), async {
        let image = format!("{rule}/app:1");
        let (_, _) = eventually(Duration::from_secs(30), "the new rule", || {
            dry_run_shows(&client, &ops, &image, 6, |s, p| s == [REGCRED] && p == "Always")
        })
        .await?;
        sc.note(format!("new behaviour {} after helm upgrade started", secs(upgraded.elapsed())));
        Ok(())
    })
    .await?;
    sc.step("4.5", "repair, turned on at runtime: the stuck Pod of late is evicted (PullSecretRepair Event), its replacement has [regcred] and is Running", async {
        let event = kubelet::await_event(&client, &late, &stuck, "PullSecretRepair", "").await?;
        let evicted = upgraded.elapsed();
        let pod = kubelet::await_pods_of(&client, &late, "late", 1, std::slice::from_ref(&stuck)).await?.remove(0);
        let name = kubelet::name(&pod);
        ensure!(pull_secrets(&pod) == [REGCRED], "{name} stored with {:?}", pull_secrets(&pod));
        kubelet::await_running(&client, &late, &name, PULL_TIMEOUT).await?;
        sc.note(format!("evicted {} after helm upgrade started ({event}); {name} Running {}", secs(evicted), secs(upgraded.elapsed())));
        Ok(())
    })
    .await?;
    churn_complete(
        &sc,
        "4.6",
        "every Pod created during the upgrade got regcred and is Running",
        churn,
        &before,
    )
    .await
}

/// The rotation values.yaml documents for tls.source=helm: delete the TLS Secret, helm
/// upgrade. The CA, kept in its own Secret, signs a new serving certificate; the caBundle does
/// not change, so the old Pods, still serving the old certificate while the rollout replaces
/// them (checksum/tls), stay trusted: no call fails. (Before the CA had a Secret of its own,
/// this made a new CA and 3 to 23 of about 60 admissions failed in the rollout window.)
pub async fn documented_rotation(sc: Sc) -> Result<()> {
    let env = sc.env();
    let client = sc.admin();
    let inst = install::installation(sc.suite).await?;
    let ns = injected_ns(&sc, "rotate").await?;
    let old_pods = install::pods(&client).await?;
    let old: Vec<String> = old_pods.iter().map(|p| p.name.clone()).collect();
    let old_ca = ca_bundle(&client).await?;
    // What made admissions fail before the fix, looked for directly: an old Pod, still one of
    // the Service's Endpoints, serving a certificate the caBundle does not verify (the window
    // can be shorter than the churn's 200 ms between admissions).
    let mut untrusted: Option<String> = None;
    let offset = file_len(&env.apiserver_log());
    let churn = Churn::start(&client, &ns, &env.app(), REGCRED)?;
    churn
        .await_more(
            10,
            "10 admissions (2 Pods, 8 dry runs) answered before the rotation",
        )
        .await?;
    let started = Instant::now();
    let old_secret = tls_secret(&client).await?;
    sc.step("4.7", format!("kubectl delete secret {TLS_SECRET}; helm upgrade: the same CA (its own Secret) signs a new certificate, the caBundle stays, the Pods roll (checksum/tls) to 2 new Ready ones serving the new certificate"), async {
        kubectl(env, &["delete", "secret", TLS_SECRET, "-n", NAMESPACE]).await?;
        let out = inst.upgrade(env, "rotate", &inst.values(), &[]).await?;
        ensure!(out.ok, "helm upgrade failed: {}", out.stderr.trim());
        let ca = ca_bundle(&client).await?;
        ensure!(ca == old_ca, "the caBundle changed: Pods still serving the old certificate would be rejected");
        ensure!(
            tls_secret(&client).await?["tls.crt"] != old_secret["tls.crt"],
            "the serving certificate did not change"
        );
        let probing = Instant::now();
        while untrusted.is_none() && probing.elapsed() < Duration::from_secs(5) {
            let endpoints = Api::<Endpoints>::namespaced(client.clone(), NAMESPACE).get(FULLNAME).await?;
            let ips: Vec<String> = endpoints.subsets.iter().flatten().flat_map(|s| s.addresses.iter().flatten().map(|a| a.ip.clone())).collect();
            for p in old_pods.iter().filter(|p| p.ip.as_ref().is_some_and(|ip| ips.contains(ip))) {
                if let Err(e) = served_certificate(p.webhook()?, SERVICE_DNS, &ca).await {
                    // Not a refused connection (a stopping Pod): a rejected certificate.
                    let e = format!("{e:#}");
                    if e.contains("invalid peer certificate") {
                        untrusted = Some(format!("{} (an Endpoint {} after helm upgrade returned): {e}", p.name, secs(probing.elapsed())));
                        break;
                    }
                }
            }
            // Sampling the Endpoints for 5 s after helm upgrade returns, not a wait.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let pods = install::await_ready(&client, 2, &old).await?;
        let secret = tls_secret(&client).await?;
        for p in &pods {
            let served = served_certificate(p.webhook()?, SERVICE_DNS, &ca).await?;
            ensure!(served == first_der(&secret["tls.crt"])?, "{} serves another certificate", p.name);
        }
        eventually(Duration::from_secs(60), "the old Pods' containers stopped", || async {
            let serving = install::still_serving(&client, Some(&old)).await?;
            ensure!(serving.is_empty(), "still {serving:?}");
            Ok(())
        })
        .await?;
        sc.note(format!("rolled in {}", secs(started.elapsed())));
        Ok(())
    })
    .await?;
    churn
        .await_more(
            10,
            "10 admissions (2 Pods, 8 dry runs) answered after the roll",
        )
        .await?;
    let summary = churn.finish(&client).await;
    let calls = failed_webhook_calls(sc.suite, offset);
    sc.step("4.7", "admissions during the rotation (Pods created throughout, dry runs every 200 ms): none may fail, and no old Pod still in the Endpoints serves a certificate the caBundle rejects", async {
        let summary = summary?;
        sc.note(summary.describe());
        let failed = summary.missed.len() + calls.len();
        if let Some(pod) = &untrusted {
            sc.note(format!("old Pod serving a certificate the caBundle rejects: {pod}"));
        }
        if failed > 0 {
            let (first, last) = summary.window().unwrap_or_default();
            bail!(
                "{} admissions without regcred or refused, from {first:.1} s to {last:.1} s of the churn; the API server logged {} failed call(s), first: {}",
                summary.missed.len(),
                calls.len(),
                calls.first().map(String::as_str).unwrap_or("-")
            );
        }
        ensure!(untrusted.is_none(), "an old Pod still in the Endpoints served a certificate the caBundle rejects");
        Ok(())
    })
    .await
}

/// The webhook configuration's caBundle (PEM).
async fn ca_bundle(client: &kube::Client) -> Result<Vec<u8>> {
    let config = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .get(FULLNAME)
        .await?;
    config
        .webhooks
        .iter()
        .flatten()
        .next()
        .and_then(|h| h.client_config.ca_bundle.clone())
        .map(|b| b.0)
        .ok_or_else(|| anyhow!("no caBundle"))
}

async fn set_ca_bundle(client: &kube::Client, pem: &[u8]) -> Result<()> {
    let api = Api::<MutatingWebhookConfiguration>::all(client.clone());
    let mut config = api.get(FULLNAME).await?;
    for hook in config.webhooks.iter_mut().flatten() {
        hook.client_config.ca_bundle = Some(ByteString(pem.to_vec()));
    }
    api.replace(FULLNAME, &PostParams::default(), &config)
        .await?;
    Ok(())
}

async fn tls_secret(client: &kube::Client) -> Result<BTreeMap<String, Vec<u8>>> {
    let secret = Api::<Secret>::namespaced(client.clone(), NAMESPACE)
        .get(TLS_SECRET)
        .await?;
    Ok(secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect())
}

/// A new CA and a serving certificate for the Service's names: (CA PEM, cert PEM, key PEM).
fn new_certificate() -> Result<(String, String, String)> {
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "pullsecret-injector-ca-rotated");
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;
    let names = [
        FULLNAME.to_string(),
        format!("{FULLNAME}.{NAMESPACE}"),
        SERVICE_DNS.to_string(),
        format!("{SERVICE_DNS}.cluster.local"),
    ];
    let mut leaf = CertificateParams::new(names.to_vec())?;
    leaf.distinguished_name
        .push(DnType::CommonName, SERVICE_DNS);
    let key = KeyPair::generate()?;
    let cert = leaf.signed_by(&key, &ca_cert, &ca_key)?;
    Ok((ca_cert.pem(), cert.pem(), key.serialize_pem()))
}

/// A new certificate written into the TLS Secret (another CA: the caBundle carries both
/// while the files are swapped). The kubelet rewrites the projected volume, the binary
/// reloads the pair; nothing restarts.
pub async fn certificate_rotation(sc: Sc) -> Result<()> {
    let env = sc.env();
    let client = sc.admin();
    install::installation(sc.suite).await?;
    let ns = injected_ns(&sc, "hot").await?;
    let pods = install::pods(&client).await?;
    let before = identities(&pods);
    let reloads = metric_by_pod(&client, CERT_RELOADS).await?;
    let (ca, cert, key) = new_certificate()?;
    let old_ca = ca_bundle(&client).await?;
    let churn = Churn::start(&client, &ns, &env.app(), REGCRED)?;
    sc.step(
        "4.8",
        "caBundle = old CA + new CA (the webhook configuration edited)",
        async {
            let mut bundle = old_ca.clone();
            if !bundle.ends_with(b"\n") {
                bundle.push(b'\n');
            }
            bundle.extend_from_slice(ca.as_bytes());
            set_ca_bundle(&client, &bundle).await?;
            // Calls keep working while the API server switches to the new bundle.
            dry_run_shows(&client, &ns, &env.app(), 5, |s, _| s == [REGCRED]).await
        },
    )
    .await?;
    let written = Instant::now();
    sc.step("4.9", format!("tls.crt, tls.key, ca.crt of {TLS_SECRET} replaced: each injector serves the new certificate (TLS from the host, verified with the new CA as {SERVICE_DNS}), certificate_reloads_total grows"), async {
        let api = Api::<Secret>::namespaced(client.clone(), NAMESPACE);
        let mut secret = api.get(TLS_SECRET).await?;
        let data = secret.data.get_or_insert_with(Default::default);
        data.insert("tls.crt".into(), ByteString(cert.clone().into_bytes()));
        data.insert("tls.key".into(), ByteString(key.clone().into_bytes()));
        data.insert("ca.crt".into(), ByteString(ca.clone().into_bytes()));
        api.replace(TLS_SECRET, &PostParams::default(), &secret).await?;
        let want = first_der(cert.as_bytes())?;
        let seen: std::sync::Mutex<Vec<(String, Duration)>> = Default::default();
        eventually(Duration::from_secs(150), "every injector serving the new certificate", || async {
            for p in &pods {
                if seen.lock().unwrap_or_else(|e| e.into_inner()).iter().any(|(n, _)| n == &p.name) {
                    continue;
                }
                // Verified with the new CA only: the old certificate fails the handshake.
                let served = served_certificate(p.webhook()?, SERVICE_DNS, ca.as_bytes()).await.ok();
                if served.as_ref() == Some(&want) {
                    seen.lock().unwrap_or_else(|e| e.into_inner()).push((p.name.clone(), written.elapsed()));
                }
            }
            let n = seen.lock().unwrap_or_else(|e| e.into_inner()).len();
            ensure!(n == pods.len(), "{n}/{} serve it", pods.len());
            Ok(())
        })
        .await?;
        let seen = seen.into_inner().unwrap_or_else(|e| e.into_inner());
        sc.note(format!("served after the Secret was written: {}", describe_times(&seen)));
        await_metric_grew(&client, CERT_RELOADS, &reloads, written, Duration::from_secs(30)).await?;
        Ok(())
    })
    .await?;
    sc.step(
        "4.10",
        "caBundle = new CA only: calls keep working",
        async {
            set_ca_bundle(&client, ca.as_bytes()).await?;
            let app = env.app();
            // When the API server's webhook client takes the new bundle is not visible from
            // outside (no metric, no Event): calls are checked throughout a period that
            // covers the switch, not once after a guessed delay.
            stays(
                Duration::from_secs(3),
                "dry runs get regcred with caBundle = new CA",
                || dry_run_shows(&client, &ns, &app, 1, |s, _| s == [REGCRED]),
            )
            .await
        },
    )
    .await?;
    churn_complete(
        &sc,
        "4.11",
        "every Pod created during the rotation got regcred and is Running",
        churn,
        &before,
    )
    .await
}

pub async fn configmap_edit(sc: Sc) -> Result<()> {
    let env = sc.env();
    let client = sc.admin();
    let inst = install::installation(sc.suite).await?;
    let ns = injected_ns(&sc, "edit").await?;
    let before = identities(&install::pods(&client).await?);
    let reloads = metric_by_pod(&client, CONFIG_RELOADS).await?;
    let rule = format!("{}/edited", env.registry);
    let churn = Churn::start(&client, &ns, &env.app(), REGCRED)?;
    let edited = Instant::now();
    sc.step("4.12", format!("kubectl patch configmap {FULLNAME} (a rule {rule} with pullPolicy: Always): both injectors reload it"), async {
        let current = kubectl(env, &["get", "configmap", FULLNAME, "-n", NAMESPACE, "-o", "jsonpath={.data.config\\.yaml}"]).await?;
        ensure!(current.contains("\nrules:\n"), "unexpected config.yaml: {current}");
        let config = current.replacen("\nrules:\n", &format!("\nrules:\n  - registry: \"{rule}\"\n    secrets: [\"{REGCRED}\"]\n    pullPolicy: Always\n"), 1);
        let patch = json!({"data": {"config.yaml": config}}).to_string();
        kubectl(env, &["patch", "configmap", FULLNAME, "-n", NAMESPACE, "--type", "merge", "-p", &patch]).await?;
        let times = await_metric_grew(&client, CONFIG_RELOADS, &reloads, edited, Duration::from_secs(150)).await?;
        sc.note(format!("reloaded after the edit: {}", describe_times(&times)));
        Ok(())
    })
    .await?;
    sc.step(
        "4.13",
        format!(
            "the edited rule answers: {rule}/app:1 with IfNotPresent gets Always and [regcred]"
        ),
        async {
            let image = format!("{rule}/app:1");
            eventually(Duration::from_secs(30), "the edited rule", || {
                dry_run_shows(&client, &ns, &image, 6, |s, p| {
                    s == [REGCRED] && p == "Always"
                })
            })
            .await?;
            sc.note(format!(
                "new behaviour {} after the edit",
                secs(edited.elapsed())
            ));
            Ok(())
        },
    )
    .await?;
    churn_complete(
        &sc,
        "4.14",
        "every Pod created meanwhile got regcred and is Running",
        churn,
        &before,
    )
    .await?;
    sc.step("4.15", "the next helm upgrade takes the chart's config back (Helm 4 applies server-side: a field another manager changed conflicts)", async {
        let out = inst.upgrade(env, "after-edit", &inst.values(), &[]).await?;
        if !out.ok {
            ensure!(out.stderr.contains("conflict"), "helm upgrade failed: {}", out.stderr.trim());
            sc.note(format!("FINDING (docs): helm upgrade after kubectl edit fails: {}", out.stderr.lines().last().unwrap_or_default().trim()));
            let out = inst.upgrade(env, "after-edit-force", &inst.values(), &["--force-conflicts"]).await?;
            ensure!(out.ok, "helm upgrade --force-conflicts failed: {}", out.stderr.trim());
            sc.note("helm upgrade --force-conflicts succeeded");
        }
        let cm = kubectl(env, &["get", "configmap", FULLNAME, "-n", NAMESPACE, "-o", "jsonpath={.data.config\\.yaml}"]).await?;
        ensure!(!cm.contains(&rule), "the edited rule is still in the ConfigMap");
        Ok(())
    })
    .await
}

pub async fn outage(sc: Sc) -> Result<()> {
    let env = sc.env();
    let client = sc.admin();
    let inst = install::installation(sc.suite).await?;
    let app = env.app();
    sc.expect_failed_calls();
    if inst.values()["config"]["repair"] != json!(true) {
        // Run alone: turn repair on first, and wait for it to reach the injectors.
        let reloads = metric_by_pod(&client, CONFIG_RELOADS).await?;
        let mut values = inst.values();
        values["config"]["repair"] = json!(true);
        let out = inst
            .upgrade(env, "repair", &values, &["--force-conflicts"])
            .await?;
        ensure!(out.ok, "helm upgrade failed: {}", out.stderr.trim());
        await_metric_grew(
            &client,
            CONFIG_RELOADS,
            &reloads,
            Instant::now(),
            Duration::from_secs(150),
        )
        .await?;
    }
    let ns = injected_ns(&sc, "outage").await?;
    let webhook = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .get(FULLNAME)
        .await?;
    let policy = webhook
        .webhooks
        .iter()
        .flatten()
        .next()
        .and_then(|h| h.failure_policy.clone())
        .unwrap_or_default();
    ensure!(
        policy == "Ignore",
        "failurePolicy {policy}: nothing would be admitted during the outage"
    );
    {
        // Whatever happens, the injector comes back for the scenarios after this one.
        let (env, client) = (sc.env(), client.clone());
        sc.defer(async move {
            if install::pods(&client).await.is_ok_and(|p| p.is_empty()) {
                let _ = scale_installation(env, 2).await;
                let _ = install::await_ready(&client, 2, &[]).await;
            }
        });
    }
    sc.step("4.16", "kubectl scale deployment pullsecret-injector pullsecret-injector-controller --replicas=0 (failurePolicy Ignore): every injector container stopped, no Endpoints", async {
        scale_installation(env, 0).await?;
        let (_, took) = eventually(Duration::from_secs(90), "no injector Pod", || async {
            let left = install::still_serving(&client, None).await?;
            ensure!(left.is_empty(), "{left:?} still running");
            let endpoints = Api::<Endpoints>::namespaced(client.clone(), NAMESPACE).get(FULLNAME).await?;
            let addresses = endpoints.subsets.iter().flatten().flat_map(|s| s.addresses.iter().flatten()).count();
            ensure!(addresses == 0, "{addresses} endpoint addresses");
            Ok(())
        })
        .await?;
        sc.note(format!("gone in {}", secs(took)));
        Ok(())
    })
    .await?;
    let mut stuck = Vec::new();
    sc.step("4.17", "meanwhile Deployments outage-a, outage-b (1 replica each) and a bare Pod: admitted without imagePullSecrets, stuck in ErrImagePull/ImagePullBackOff with the 401", async {
        let deployments = Api::<Deployment>::namespaced(client.clone(), &ns);
        for name in ["outage-a", "outage-b"] {
            deployments.create(&PostParams::default(), &kubelet::deployment(name, &app, 1, "Always", &[])?).await?;
        }
        let bare = create_pod(&client, &ns, &kubelet::app_pod("outage-bare", &app, "Always", &[])?, false).await?;
        ensure!(bare.secrets().is_empty(), "the bare Pod got {:?}", bare.secrets());
        for name in ["outage-a", "outage-b"] {
            let pod = kubelet::await_pods_of(&client, &ns, name, 1, &[]).await?.remove(0);
            ensure!(pull_secrets(&pod).is_empty(), "{} got {:?}", kubelet::name(&pod), pull_secrets(&pod));
            stuck.push((name, kubelet::name(&pod)));
        }
        for (_, pod) in stuck.iter().map(|(a, p)| (*a, p.clone())).chain([("bare", "outage-bare".to_string())]) {
            kubelet::await_pull_failure(&client, &ns, &pod, PULL_TIMEOUT).await?;
            kubelet::await_401(&client, &ns, &pod).await?;
        }
        Ok(())
    })
    .await?;
    let back = Instant::now();
    let back_offset = file_len(&env.apiserver_log());
    sc.step(
        "4.18",
        "kubectl scale --replicas=2: both injectors Running and Ready, the controller back",
        async {
            scale_installation(env, 2).await?;
            install::await_ready(&client, 2, &[]).await?;
            sc.note(format!("Ready {} after the scale-up", secs(back.elapsed())));
            Ok(())
        },
    )
    .await?;
    sc.step("4.19", "repair evicts both stuck Deployment Pods (PullSecretRepair Events); each Deployment ends with a Pod that has [regcred] and is Running", async {
        let histories = futures_util::future::try_join_all(stuck.iter().map(|(app_name, old)| {
            let (client, ns) = (client.clone(), ns.clone());
            async move {
                kubelet::await_event(&client, &ns, old, "PullSecretRepair", "").await?;
                // Every replacement seen: (name, imagePullSecrets, created after the scale-up).
                let mut history: Vec<(String, Vec<String>, Duration)> = Vec::new();
                loop {
                    let pods = kubelet::pods_of(&client, &ns, app_name).await?;
                    for p in &pods {
                        let name = kubelet::name(p);
                        if &name != old && !history.iter().any(|(n, _, _)| n == &name) {
                            history.push((name, pull_secrets(p), back.elapsed()));
                        }
                    }
                    if pods.len() == 1 && pull_secrets(&pods[0]) == [REGCRED] && kubelet::state(&pods[0]) == kubelet::State::Running {
                        return anyhow::Ok((*app_name, history, back.elapsed()));
                    }
                    ensure!(back.elapsed() < Duration::from_secs(180), "{app_name}: no Running Pod with regcred after {}; replacements {history:?}", secs(back.elapsed()));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }))
        .await?;
        for (app_name, history, done) in &histories {
            let missed: Vec<String> = history
                .iter()
                .filter(|(_, s, _)| s.as_slice() != [REGCRED])
                .map(|(n, s, at)| format!("{n} created {} after the scale-up with {s:?}", secs(*at)))
                .collect();
            // Repair waits after taking the Lease until the API server reaches the injectors,
            // so the first replacement already gets its secret.
            if !missed.is_empty() {
                let calls = failed_webhook_calls(sc.suite, back_offset);
                bail!(
                    "{app_name}: evicted before the API server could reach an injector: {}; the API server logged {} failed call(s) after the scale-up, last: {}; Running with regcred {} after the scale-up",
                    missed.join(", "),
                    calls.len(),
                    calls.last().map(String::as_str).unwrap_or("-"),
                    secs(*done)
                );
            } else {
                sc.note(format!("{app_name}: replacement Running with regcred {} after the scale-up", secs(*done)));
            }
        }
        Ok(())
    })
    .await?;
    sc.step("4.20", "the bare Pod is reported (PullSecretRepair Event, repairs_total{outcome=\"reported\"}), not evicted", async {
        let event = kubelet::await_event(&client, &ns, "outage-bare", "PullSecretRepair", "").await?;
        let bare = Api::<Pod>::namespaced(client.clone(), &ns).get("outage-bare").await?;
        ensure!(bare.metadata.deletion_timestamp.is_none(), "the bare Pod is being deleted");
        let mut evicted = 0.0;
        let mut reported = 0.0;
        // Repair runs in the controller's Pods.
        for p in install::controller_pods(&client).await? {
            let text = p.metrics().await?;
            evicted += crate::api::metric(&text, r#"pullsecret_injector_repairs_total{outcome="evicted"}"#);
            reported += crate::api::metric(&text, r#"pullsecret_injector_repairs_total{outcome="reported"}"#);
        }
        ensure!(evicted >= 2.0 && reported >= 1.0, "repairs_total: evicted {evicted}, reported {reported}");
        sc.note(format!("{event}; repairs_total evicted {evicted}, reported {reported}"));
        Ok(())
    })
    .await?;
    Ok(())
}

/// Scales the whole installation, the webhook and the controller (sync, repair), to
/// `replicas`. The outage scenario takes both down: with the controller up while no webhook
/// answers, repair would evict a stuck Pod whose replacement is admitted without its secrets
/// again, and then back off per controller until the webhook is back.
async fn scale_installation(env: &crate::harness::Env, replicas: u32) -> Result<()> {
    let replicas = format!("--replicas={replicas}");
    kubectl(
        env,
        &[
            "scale",
            "deployment",
            FULLNAME,
            install::CONTROLLER,
            "-n",
            NAMESPACE,
            &replicas,
        ],
    )
    .await?;
    Ok(())
}

pub async fn uninstall(sc: Sc) -> Result<()> {
    let env = sc.env();
    let client = sc.admin();
    let _inst: std::sync::Arc<Installation> = install::installation(sc.suite).await?;
    let ns = injected_ns(&sc, "after").await?;
    sc.step("4.21", "helm uninstall --wait: no MutatingWebhookConfiguration, ClusterRole, ClusterRoleBinding or Deployment of the release left", async {
        let started = Instant::now();
        let out = tools::helm(env, &["uninstall", install::RELEASE, "-n", NAMESPACE, "--wait", "--timeout", "120s"]).await?;
        ensure!(out.ok, "helm uninstall failed: {}", out.stderr.trim());
        install::forget();
        let selector = format!("app.kubernetes.io/instance={}", install::RELEASE);
        let lp = ListParams::default().labels(&selector);
        let hooks = Api::<MutatingWebhookConfiguration>::all(client.clone()).list(&ListParams::default()).await?;
        let ours: Vec<String> = hooks.items.iter().filter_map(|h| h.metadata.name.clone()).filter(|n| n.contains("pullsecret-injector")).collect();
        ensure!(ours.is_empty(), "left: {ours:?}");
        let roles = Api::<ClusterRole>::all(client.clone()).list(&lp).await?.items.len();
        let bindings = Api::<ClusterRoleBinding>::all(client.clone()).list(&lp).await?.items.len();
        ensure!(roles == 0 && bindings == 0, "{roles} ClusterRoles, {bindings} ClusterRoleBindings left");
        let deployment = Api::<Deployment>::namespaced(client.clone(), NAMESPACE).get_opt(FULLNAME).await?;
        ensure!(deployment.is_none(), "the Deployment is still there");
        sc.note(format!("helm uninstall returned in {}", secs(started.elapsed())));
        Ok(())
    })
    .await?;
    sc.step("4.22", "Pod creation keeps working in the labelled namespace: a Pod listing the copy regcred sync left is created, unchanged, and Running", async {
        let created = create_pod(&client, &ns, &kubelet::app_pod("after", &env.app(), "Always", &[REGCRED])?, false).await?;
        ensure!(created.secrets() == [REGCRED] && created.warnings.is_empty(), "{:?} {:?}", created.secrets(), created.warnings);
        kubelet::await_running(&client, &ns, "after", PULL_TIMEOUT).await?;
        let copies = Api::<Secret>::all(client.clone()).list(&ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"))).await?.items.len();
        sc.note(format!("{copies} copies labelled {MANAGED_BY_LABEL}={MANAGED_BY} stay, as docs/install.md says (kubectl delete secret -A -l ... removes them)"));
        let leases = kubectl(env, &["get", "leases", "-n", NAMESPACE, "-o", "name"]).await.unwrap_or_default();
        if !leases.trim().is_empty() {
            sc.note(format!("left in {NAMESPACE}: {}", leases.split_whitespace().collect::<Vec<_>>().join(", ")));
        }
        Ok(())
    })
    .await?;
    Ok(())
}

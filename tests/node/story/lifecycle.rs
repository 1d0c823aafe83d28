//! Issue 18.2, the Helm lifecycle of a release on the real node, with Pods created throughout
//! (churn.rs: a Pod a second that must pull the private image with its secret, a dry run
//! every 200 ms): `helm install`, `helm upgrade` to a new injector image (a second tag of the
//! same binary, another digest: both Deployments roll), `helm rollback` to the previous
//! revision (they roll back), `helm uninstall` (no webhook configuration, no injector Pod).
//!
//! A release of its own, `lifecycle`, so every object is `lifecycle-pullsecret-injector`:
//! the commands docs/install.md gives for a release not named `pullsecret-injector` are the
//! ones run here. It runs after s9_uninstall, in the story's release namespace (the source
//! `regcred` and the injector's own pull Secret are there): one webhook at a time, since two
//! releases would both add the secret and hide each other's gaps.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use serde_json::{Value, json};

use crate::api::create_pod;
use crate::churn::Churn;
use crate::harness::{Env, Sc, eventually, path_str, secs};
use crate::install::{self, InjectorPod, NAMESPACE, OWN_PULL_SECRET};
use crate::kubelet;
use crate::operations::injected_ns;
use crate::story::REGCRED;
use crate::tools::{self, kubectl};

pub const RELEASE: &str = "lifecycle";
/// `<release>-<chart>`: the Deployment, Service, webhook configuration, ConfigMap.
const FULLNAME: &str = "lifecycle-pullsecret-injector";
/// Every Pod of the release, the webhook's and the controller's.
const INSTANCE: &str = "app.kubernetes.io/instance=lifecycle";
/// 2 webhook replicas + 2 controller replicas (sync is on).
const PODS: usize = 4;

/// The release's values: the story's image from the private registry with the chart's own
/// `imagePullSecrets`, tls.source=helm, discovery and sync.
fn values(env: &Env) -> Result<Value> {
    let (repository, tag) = split(&env.image)?;
    Ok(json!({
        "replicaCount": 2,
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Always"},
        "imagePullSecrets": [{"name": OWN_PULL_SECRET}],
        "tls": {"source": "helm"},
        "config": {"discovery": true, "sync": true},
    }))
}

fn split(image: &str) -> Result<(&str, &str)> {
    image
        .rsplit_once(':')
        .filter(|(repo, _)| !repo.is_empty())
        .ok_or_else(|| anyhow!("{image}: not REPOSITORY:TAG"))
}

async fn helm(env: &Env, args: &[&str], tag: &str) -> Result<Duration> {
    let started = Instant::now();
    let out = tools::helm(env, args).await?;
    std::fs::write(
        env.run.join(format!("helm-lifecycle-{tag}.out")),
        format!("{}{}", out.stdout, out.stderr),
    )?;
    ensure!(
        out.ok,
        "helm {} failed: {}",
        args.join(" "),
        out.stderr.trim()
    );
    Ok(started.elapsed())
}

/// The release's Pods, the digest each runs, and the image both Deployments name.
async fn runs(
    client: &kube::Client,
    pods: &[InjectorPod],
    image: &str,
    digest: &str,
) -> Result<()> {
    for p in pods {
        ensure!(
            p.image_id.ends_with(&format!("@{digest}")),
            "{} runs {}, want ...@{digest}",
            p.name,
            p.image_id
        );
    }
    let deployments = Api::<Deployment>::namespaced(client.clone(), NAMESPACE)
        .list(&ListParams::default().labels(INSTANCE))
        .await?;
    ensure!(
        deployments.items.len() == 2,
        "{} Deployments of the release",
        deployments.items.len()
    );
    for d in &deployments.items {
        let named: Vec<String> = d
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .map(|s| {
                s.containers
                    .iter()
                    .filter_map(|c| c.image.clone())
                    .collect()
            })
            .unwrap_or_default();
        ensure!(
            named == [image],
            "Deployment {} names {named:?}, want {image}",
            d.metadata.name.clone().unwrap_or_default()
        );
    }
    Ok(())
}

/// Until every container of the Pods in `old` has stopped (the kubelet may keep the objects).
async fn await_stopped(client: &kube::Client, old: &[String]) -> Result<Duration> {
    let (_, took) = eventually(
        Duration::from_secs(120),
        "the old injector Pods' containers stopped",
        || async {
            let list = Api::<Pod>::namespaced(client.clone(), NAMESPACE)
                .list(&ListParams::default().labels(INSTANCE))
                .await?;
            let running: Vec<String> = list
                .items
                .iter()
                .filter(|p| old.contains(&kubelet::name(p)))
                .filter(|p| {
                    let statuses = p
                        .status
                        .as_ref()
                        .and_then(|s| s.container_statuses.clone())
                        .unwrap_or_default();
                    statuses.is_empty()
                        || !statuses
                            .iter()
                            .all(|c| c.state.as_ref().is_some_and(|st| st.terminated.is_some()))
                })
                .map(kubelet::name)
                .collect();
            ensure!(running.is_empty(), "still running: {running:?}");
            Ok(())
        },
    )
    .await?;
    Ok(took)
}

/// What the lifecycle must not change: the caBundle, the serving certificate, the copy of
/// regcred sync made (its uid).
async fn kept(client: &kube::Client, ns: &str) -> Result<(Vec<u8>, Vec<u8>, String)> {
    let hook = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .get(FULLNAME)
        .await?;
    let bundle = hook
        .webhooks
        .iter()
        .flatten()
        .next()
        .and_then(|h| h.client_config.ca_bundle.clone())
        .ok_or_else(|| anyhow!("{FULLNAME}: no caBundle"))?
        .0;
    let tls = Api::<Secret>::namespaced(client.clone(), NAMESPACE)
        .get(&format!("{FULLNAME}-tls"))
        .await?
        .data
        .unwrap_or_default()
        .remove("tls.crt")
        .ok_or_else(|| anyhow!("{FULLNAME}-tls has no tls.crt"))?
        .0;
    let copy = Api::<Secret>::namespaced(client.clone(), ns)
        .get(REGCRED)
        .await?
        .metadata
        .uid
        .unwrap_or_default();
    Ok((bundle, tls, copy))
}

/// The namespace and the injector's own pull Secret, when the story did not make them.
async fn prepare(sc: &Sc) -> Result<()> {
    let env = sc.env();
    let client = sc.admin();
    if Api::<Namespace>::all(client.clone())
        .get_opt(NAMESPACE)
        .await?
        .is_none()
    {
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(NAMESPACE.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await?;
        kubelet::await_service_account(&client, NAMESPACE).await?;
    }
    if Api::<Secret>::namespaced(client.clone(), NAMESPACE)
        .get_opt(OWN_PULL_SECRET)
        .await?
        .is_none()
    {
        tools::create_docker_registry_secret(env, NAMESPACE, OWN_PULL_SECRET, &env.registry)
            .await?;
    }
    Ok(())
}

/// One roll of the release (upgrade or rollback) with Pods created throughout: `helm ARGS`
/// runs once 10 admissions were answered; then the new Pods must run `image` (`digest`), the
/// old ones stop, 10 more admissions are answered, and every Pod the churn made must have
/// regcred and run. The caBundle, the serving certificate and sync's copy stay.
#[allow(clippy::too_many_arguments)]
async fn roll(
    sc: &Sc,
    id: &str,
    what: &str,
    ns: &str,
    args: &[&str],
    tag: &str,
    image: &str,
    digest: &str,
) -> Result<()> {
    let env = sc.env();
    let client = sc.admin();
    let before = kept(&client, ns).await?;
    let old: Vec<String> = install::pods_selected(&client, INSTANCE)
        .await?
        .into_iter()
        .map(|p| p.name)
        .collect();
    let churn = Churn::start(&client, ns, &env.app(), REGCRED)?;
    churn
        .await_more(
            10,
            "10 admissions (2 Pods, 8 dry runs) answered before helm",
        )
        .await?;
    let rolled = sc
        .step(id, what, async {
            let took = helm(env, args, tag).await?;
            let started = Instant::now();
            let pods = install::await_ready_selected(&client, INSTANCE, PODS, &old).await?;
            let ready = started.elapsed();
            runs(&client, &pods, image, digest).await?;
            let stopped = await_stopped(&client, &old).await?;
            sc.note(format!(
                "helm --wait returned in {}; {} new Pods Running and Ready {} later, running ...@{}; the {} old ones' containers stopped {} after that",
                secs(took),
                pods.len(),
                secs(ready),
                &digest[..19.min(digest.len())],
                old.len(),
                secs(stopped)
            ));
            Ok(())
        })
        .await;
    let more = churn
        .await_more(
            10,
            "10 admissions (2 Pods, 8 dry runs) answered after the roll",
        )
        .await;
    let summary = churn.finish(&client).await;
    rolled?;
    more?;
    sc.step(id, "every Pod created meanwhile (1/s) and every dry run (5/s) got regcred, and every Pod is Running; the caBundle, the serving certificate and sync's copy of regcred are unchanged", async {
        let summary = summary?;
        sc.note(summary.describe());
        ensure!(summary.missed.is_empty(), "missed: {:?}", summary.missed);
        let after = kept(&client, ns).await?;
        ensure!(after.0 == before.0, "the caBundle changed");
        ensure!(after.1 == before.1, "the serving certificate changed");
        ensure!(after.2 == before.2, "sync's copy of {REGCRED} in {ns} was replaced (uid {} -> {})", before.2, after.2);
        Ok(())
    })
    .await
}

/// `helm history` as (revision, status, description), oldest first.
async fn history(env: &Env) -> Result<Vec<(i64, String, String)>> {
    let out = tools::helm(env, &["history", RELEASE, "-n", NAMESPACE, "-o", "json"]).await?;
    ensure!(out.ok, "helm history: {}", out.stderr.trim());
    let entries: Vec<Value> = serde_json::from_str(&out.stdout).context("helm history -o json")?;
    Ok(entries
        .iter()
        .map(|e| {
            (
                e["revision"].as_i64().unwrap_or_default(),
                e["status"].as_str().unwrap_or_default().to_string(),
                e["description"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect())
}

pub async fn helm_lifecycle(sc: Sc) -> Result<()> {
    let env = sc.env();
    let client = sc.admin();
    let next = env.image_next.clone().ok_or_else(|| {
        anyhow!("NODE_IMAGE_NEXT is not set: run these tests through tests/node/run.sh")
    })?;
    let (repository, next_tag) = split(&next)?;
    ensure!(
        repository == split(&env.image)?.0 && next != env.image,
        "NODE_IMAGE_NEXT {next}: want another tag of {}",
        env.image
    );
    if install::current().is_some()
        || tools::helm(env, &["status", install::RELEASE, "-n", NAMESPACE])
            .await?
            .ok
    {
        bail!(
            "the story's release {} is installed: this scenario runs after s9_uninstall (two webhooks would both add the secret)",
            install::RELEASE
        );
    }
    let digest = tools::digest(env, &env.image).await?;
    let next_digest = tools::digest(env, &next).await?;
    ensure!(
        digest != next_digest,
        "{next} has the digest of {}: the Deployment would roll to the same image",
        env.image
    );
    prepare(&sc).await?;
    {
        // Whatever happens, no webhook of this release is left for anything after it.
        sc.defer(async move {
            if tools::helm(env, &["status", RELEASE, "-n", NAMESPACE])
                .await
                .is_ok_and(|o| o.ok)
            {
                let _ = tools::helm(
                    env,
                    &[
                        "uninstall",
                        RELEASE,
                        "-n",
                        NAMESPACE,
                        "--wait",
                        "--timeout",
                        "120s",
                    ],
                )
                .await;
            }
        });
    }
    let values = install::write_values(env, "lifecycle", &values(env)?)?;
    let values = path_str(&values)?.to_string();
    let chart = path_str(&env.chart)?.to_string();

    sc.step("9.1", format!("helm install {RELEASE} CHART -n {NAMESPACE} -f values.yaml --wait (image {}, tls.source=helm, discovery + sync): the webhook and controller Pods (2 + 2) Running and Ready, running the pushed digest; MutatingWebhookConfiguration {FULLNAME}", env.image), async {
        let took = helm(env, &["install", RELEASE, &chart, "-n", NAMESPACE, "-f", &values, "--wait", "--timeout", "180s"], "install").await?;
        let started = Instant::now();
        let pods = install::await_ready_selected(&client, INSTANCE, PODS, &[]).await?;
        runs(&client, &pods, &env.image, &digest).await?;
        let hook = Api::<MutatingWebhookConfiguration>::all(client.clone()).get(FULLNAME).await?;
        let service = hook.webhooks.iter().flatten().filter_map(|h| h.client_config.service.as_ref()).map(|s| s.name.clone()).collect::<Vec<_>>();
        ensure!(!service.is_empty() && service.iter().all(|s| s == FULLNAME), "the webhook calls {service:?}");
        sc.note(format!("helm install --wait returned in {}, all {PODS} Ready {} later", secs(took), secs(started.elapsed())));
        Ok(())
    })
    .await?;
    let ns = injected_ns(&sc, "lifecycle").await?;

    let set_tag = format!("image.tag={next_tag}");
    roll(
        &sc,
        "9.2",
        &format!("helm upgrade {RELEASE} CHART -n {NAMESPACE} -f values.yaml --set {set_tag} --wait (the same values file, one change): both Deployments roll to {next}"),
        &ns,
        &["upgrade", RELEASE, &chart, "-n", NAMESPACE, "-f", &values, "--set", &set_tag, "--wait", "--timeout", "180s"],
        "upgrade",
        &next,
        &next_digest,
    )
    .await?;
    roll(
        &sc,
        "9.3",
        &format!("helm rollback {RELEASE} -n {NAMESPACE} --wait (to the previous revision): both Deployments roll back to {}", env.image),
        &ns,
        &["rollback", RELEASE, "-n", NAMESPACE, "--wait", "--timeout", "180s"],
        "rollback",
        &env.image,
        &digest,
    )
    .await?;
    sc.step(
        "9.3",
        "helm history: revision 3 is deployed, a rollback to revision 1",
        async {
            let h = history(env).await?;
            let last = h.last().ok_or_else(|| anyhow!("no history"))?;
            ensure!(
                h.len() == 3
                    && last.0 == 3
                    && last.1 == "deployed"
                    && last.2.contains("Rollback to 1"),
                "helm history: {h:?}"
            );
            sc.note(format!("{h:?}"));
            Ok(())
        },
    )
    .await?;

    sc.step("9.4", format!("helm uninstall {RELEASE} -n {NAMESPACE} --wait: no MutatingWebhookConfiguration {FULLNAME} (nor any of the release), no Pod of the release left, its CA and TLS Secrets gone; a new Pod in the labelled namespace is admitted unchanged (no webhook); sync's copy of {REGCRED} stays"), async {
        let took = helm(env, &["uninstall", RELEASE, "-n", NAMESPACE, "--wait", "--timeout", "120s"], "uninstall").await?;
        let hooks = Api::<MutatingWebhookConfiguration>::all(client.clone()).list(&ListParams::default()).await?;
        let left: Vec<String> = hooks
            .items
            .iter()
            .filter(|h| {
                h.metadata.name.as_deref() == Some(FULLNAME)
                    || h.metadata.labels.as_ref().and_then(|l| l.get("app.kubernetes.io/instance")).map(String::as_str) == Some(RELEASE)
            })
            .map(|h| h.metadata.name.clone().unwrap_or_default())
            .collect();
        ensure!(left.is_empty(), "webhook configurations left: {left:?}");
        let pods = Api::<Pod>::namespaced(client.clone(), NAMESPACE);
        let (_, gone) = eventually(Duration::from_secs(120), "no Pod of the release", || async {
            // Terminating ones included: the objects themselves must go.
            let left: Vec<String> = pods.list(&ListParams::default().labels(INSTANCE)).await?.items.iter().map(kubelet::name).collect();
            ensure!(left.is_empty(), "left: {left:?}");
            Ok(())
        })
        .await?;
        let secrets = Api::<Secret>::namespaced(client.clone(), NAMESPACE);
        for name in [format!("{FULLNAME}-ca"), format!("{FULLNAME}-tls")] {
            ensure!(secrets.get_opt(&name).await?.is_none(), "Secret {name} is still there");
        }
        let probe = kubelet::app_pod("after-lifecycle", &env.app(), "IfNotPresent", &[])?;
        let created = create_pod(&client, &ns, &probe, true).await?;
        ensure!(created.secrets().is_empty() && created.warnings.is_empty(), "a dry-run Pod got {:?}, warnings {:?}", created.secrets(), created.warnings);
        let copy = Api::<Secret>::namespaced(client.clone(), &ns).get_opt(REGCRED).await?;
        ensure!(copy.is_some(), "sync's copy of {REGCRED} in {ns} is gone");
        let leftovers = kubectl(env, &["get", "secrets,configmaps,leases", "-n", NAMESPACE, "-o", "name"]).await.unwrap_or_default();
        let ours: Vec<&str> = leftovers.split_whitespace().filter(|n| n.contains(FULLNAME)).collect();
        sc.note(format!("helm uninstall --wait returned in {}; no Pod object of the release {} later; left in {NAMESPACE}: {ours:?}", secs(took), secs(gone)));
        Ok(())
    })
    .await
}

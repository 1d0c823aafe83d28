//! Issue 10.3, the story as the README tells it: a private image fails with the registry's
//! 401; `helm install`; one `kubectl create secret docker-registry`, one source label, one
//! namespace label; the next Pods of the same, unedited Deployment pull and run.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, ensure};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Endpoints, Secret};
use kube::api::{Api, PostParams};
use pullsecret_injector::core::names::{INJECT_LABEL, SOURCE_LABEL};
use serde_json::Value;

use crate::api::{pull_secrets, with_prefix};
use crate::harness::{Sc, eventually, secs};
use crate::install::{self, FULLNAME, NAMESPACE};
use crate::kubelet::{self, PULL_TIMEOUT};
use crate::tools::{self, http_get, kubectl};

/// The README's credential: created once, in the injector's namespace.
pub const REGCRED: &str = "regcred";

pub async fn story(sc: Sc) -> Result<()> {
    let env = sc.env();
    let client = sc.admin();
    let app = env.app();

    // 3.1 The problem.
    let shop = sc.ns("shop", false).await?;
    let stuck = sc
        .step(
            "3.1",
            format!("Deployment web ({app}, imagePullPolicy Always, no imagePullSecrets): its Pod ends in ErrImagePull/ImagePullBackOff with the registry's 401"),
            async {
                Api::<Deployment>::namespaced(client.clone(), &shop)
                    .create(&PostParams::default(), &kubelet::deployment("web", &app, 1, "Always", &[])?)
                    .await?;
                let pod = kubelet::await_pods_of(&client, &shop, "web", 1, &[]).await?.remove(0);
                let name = kubelet::name(&pod);
                let (reason, took) = kubelet::await_pull_failure(&client, &shop, &name, PULL_TIMEOUT).await?;
                let event = kubelet::await_401(&client, &shop, &name).await?;
                sc.note(format!("{name}: {reason} {} after it was created; kubelet event: {event}", secs(took)));
                Ok(name)
            },
        )
        .await?;

    // 3.2 helm install.
    let fresh = !install::installed();
    let inst = sc
        .step("3.2", "helm install of the chart (cluster mode, tls.source=helm, discovery + sync, 2 replicas, image and imagePullSecrets of its own from the private registry): both Pods Running and Ready", async {
            let inst = install::installation(sc.suite).await?;
            if fresh && !inst.adopted {
                sc.note(format!(
                    "helm install returned in {}, both Pods Running and Ready {} later",
                    secs(inst.helm_took),
                    secs(inst.ready_after)
                ));
            } else {
                sc.note("installed earlier by another scenario");
            }
            Ok(inst)
        })
        .await?;
    let _ = inst;
    let pods = install::pods(&client).await?;
    sc.step(
        "3.2",
        format!(
            "both run {} as pushed, pulled with the chart's imagePullSecrets",
            env.image
        ),
        async {
            let digest = tools::digest(env, &env.image).await?;
            for p in &pods {
                ensure!(
                    p.image_id.ends_with(&format!("@{digest}")),
                    "{} runs {}, pushed {digest}",
                    p.name,
                    p.image_id
                );
            }
            sc.note(format!("imageID ...@{}", &digest[..19.min(digest.len())]));
            Ok(())
        },
    )
    .await?;
    sc.step("3.2", "the injector process runs as uid 65532 on a read-only root filesystem (seen from the host)", async {
        for p in &pods {
            let (pid, uid, root) = host_process(&p.container_id)?;
            ensure!(uid == "65532" && root.starts_with("ro"), "{}: pid {pid} uid {uid}, / mounted {root}", p.name);
            sc.note(format!("{}: host pid {pid}, uid {uid}, / {}", p.name, root.split(',').next().unwrap_or_default()));
        }
        Ok(())
    })
    .await?;
    sc.step(
        "3.2",
        "the webhook is called through its Service, whose Endpoints are both Pods' port 8443",
        async {
            let config = Api::<MutatingWebhookConfiguration>::all(client.clone())
                .get(FULLNAME)
                .await?;
            for hook in config.webhooks.iter().flatten() {
                let service = hook
                    .client_config
                    .service
                    .as_ref()
                    .ok_or_else(|| anyhow!("{}: no service", hook.name))?;
                ensure!(
                    hook.client_config.url.is_none()
                        && service.name == FULLNAME
                        && service.namespace == NAMESPACE,
                    "{}: clientConfig {:?}",
                    hook.name,
                    hook.client_config
                );
            }
            let (_, took) = eventually(
                Duration::from_secs(30),
                "Endpoints list both Pods",
                || async {
                    let endpoints = Api::<Endpoints>::namespaced(client.clone(), NAMESPACE)
                        .get(FULLNAME)
                        .await?;
                    let mut ips: Vec<String> = endpoints
                        .subsets
                        .iter()
                        .flatten()
                        .filter(|s| s.ports.iter().flatten().any(|p| p.port == 8443))
                        .flat_map(|s| s.addresses.iter().flatten().map(|a| a.ip.clone()))
                        .collect();
                    ips.sort();
                    let mut want: Vec<String> = pods.iter().filter_map(|p| p.ip.clone()).collect();
                    want.sort();
                    ensure!(ips == want, "endpoints {ips:?}, Pods {want:?}");
                    Ok(())
                },
            )
            .await?;
            let _ = took;
            Ok(())
        },
    )
    .await?;

    // 3.3 One Secret, one source label, one namespace label.
    sc.step("3.3", format!("kubectl create secret docker-registry {REGCRED} -n {NAMESPACE} --docker-server={}, kubectl label secret ... {SOURCE_LABEL}=true, kubectl label namespace {shop} {INJECT_LABEL}=enabled: sync copies {REGCRED} into {shop}", env.registry), async {
        tools::create_docker_registry_secret(env, NAMESPACE, REGCRED, &env.registry).await?;
        kubectl(env, &["label", "secret", REGCRED, "-n", NAMESPACE, &format!("{SOURCE_LABEL}=true")]).await?;
        let labelled = Instant::now();
        kubectl(env, &["label", "namespace", &shop, &format!("{INJECT_LABEL}=enabled")]).await?;
        let secrets = Api::<Secret>::namespaced(client.clone(), &shop);
        let (_, took) = eventually(Duration::from_secs(60), "the copy", || async {
            secrets.get(REGCRED).await?;
            Ok(())
        })
        .await?;
        let _ = took;
        sc.note(format!("copy in {shop} {} after the namespace label", secs(labelled.elapsed())));
        Ok(())
    })
    .await?;

    // 3.4 The next Pod of the same Deployment runs.
    let restarted = Instant::now();
    let audit_offset = crate::harness::file_len(&env.audit_log());
    let next = sc
        .step("3.4", "kubectl rollout restart deployment/web: its new Pod is stored with [regcred], the template still lists no imagePullSecrets", async {
            kubectl(env, &["rollout", "restart", "deployment/web", "-n", &shop]).await?;
            let pod = kubelet::await_pods_of(&client, &shop, "web", 1, std::slice::from_ref(&stuck)).await?.remove(0);
            let name = kubelet::name(&pod);
            ensure!(pull_secrets(&pod) == [REGCRED], "{name} stored with {:?}", pull_secrets(&pod));
            let deployment = Api::<Deployment>::namespaced(client.clone(), &shop).get("web").await?;
            let template = deployment.spec.and_then(|s| s.template.spec).context("template")?;
            ensure!(template.image_pull_secrets.is_none_or(|s| s.is_empty()), "the template lists imagePullSecrets");
            Ok(name)
        })
        .await?;
    sc.step("3.4", "the API server's audit event: inject.pullsecret-injector.io mutated it, injected-secrets=regcred", async {
        let annotations = created_pod_audit(&sc, audit_offset, &shop).await?;
        let ours = with_prefix(&annotations, "inject.pullsecret-injector.io/");
        ensure!(ours.get("inject.pullsecret-injector.io/injected-secrets").map(String::as_str) == Some(REGCRED), "annotations {annotations:?}");
        let mutated = annotations.values().any(|v| v.contains("\"webhook\":\"inject.pullsecret-injector.io\"") && v.contains("\"mutated\":true"));
        ensure!(mutated, "no mutation record of the webhook in {annotations:?}");
        Ok(())
    })
    .await?;
    sc.step(
        "3.4",
        format!("and the kubelet pulled {app} with it: Running, answering on its Pod IP"),
        async {
            let took = kubelet::await_running(&client, &shop, &next, PULL_TIMEOUT).await?;
            let pulled =
                kubelet::await_event(&client, &shop, &next, "Pulled", "Successfully pulled image")
                    .await?;
            let pod = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client.clone(), &shop)
                .get(&next)
                .await?;
            let ip = kubelet::pod_ip(&pod).context("no Pod IP")?;
            let (status, body) = http_get(format!("{ip}:8080").parse()?, "/").await?;
            ensure!(
                status == 200 && body.trim() == "hello from private/app:1",
                "GET http://{ip}:8080/: {status} {body:?}"
            );
            sc.note(format!(
                "{next} Running {} after it was created, {} after rollout restart; {pulled}",
                secs(took),
                secs(restarted.elapsed())
            ));
            Ok(())
        },
    )
    .await?;
    sc.step(
        "3.4",
        "the stuck Pod is removed with its old ReplicaSet",
        async {
            let pods = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client.clone(), &shop);
            eventually(Duration::from_secs(60), "the stuck Pod deleted", || async {
                if let Some(p) = pods.get_opt(&stuck).await? {
                    ensure!(
                        p.metadata.deletion_timestamp.is_some(),
                        "{stuck} still there"
                    );
                }
                Ok(())
            })
            .await?;
            Ok(())
        },
    )
    .await?;

    // 3.5 Unlabelled namespaces are left alone.
    let elsewhere = sc.ns("elsewhere", false).await?;
    sc.step("3.5", format!("in the unlabelled namespace {elsewhere}: no copy of regcred, a Pod stored without imagePullSecrets fails with the 401"), async {
        let created = crate::api::create_pod(&client, &elsewhere, &kubelet::app_pod("app", &app, "Always", &[])?, false).await?;
        ensure!(created.secrets().is_empty(), "stored with {:?}", created.secrets());
        let (reason, _) = kubelet::await_pull_failure(&client, &elsewhere, "app", PULL_TIMEOUT).await?;
        kubelet::await_401(&client, &elsewhere, "app").await?;
        let copy = Api::<Secret>::namespaced(client.clone(), &elsewhere).get_opt(REGCRED).await?;
        ensure!(copy.is_none(), "regcred was copied into {elsewhere}");
        sc.note(format!("app: {reason}"));
        Ok(())
    })
    .await?;
    Ok(())
}

/// The host process of a container (containerd://ID): pid, uid, and the options of its root
/// mount. Found by the container ID in its cgroup path (cgroupfs: .../pod<uid>/<id>).
fn host_process(container_id: &str) -> Result<(String, String, String)> {
    let id = container_id.trim_start_matches("containerd://");
    anyhow::ensure!(!id.is_empty(), "no container ID");
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let cgroup = std::fs::read_to_string(entry.path().join("cgroup")).unwrap_or_default();
        if !cgroup.lines().any(|l| l.ends_with(&format!("/{id}"))) {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if !String::from_utf8_lossy(&cmdline).starts_with("/pullsecret-injector") {
            continue;
        }
        let status = std::fs::read_to_string(entry.path().join("status"))?;
        let uid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|v| v.split_whitespace().next())
            .unwrap_or_default()
            .to_string();
        let mounts = std::fs::read_to_string(entry.path().join("mountinfo"))?;
        let root = mounts
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                (f.get(4) == Some(&"/")).then(|| f.get(5).unwrap_or(&"").to_string())
            })
            .unwrap_or_default();
        return Ok((pid, uid, root));
    }
    Err(anyhow!("no host process of container {id}"))
}

/// The annotations of the API server's audit event for the one Pod created in `ns` after
/// `offset` (a controller's Pod: generateName, so the event names no Pod).
async fn created_pod_audit(sc: &Sc, offset: u64, ns: &str) -> Result<BTreeMap<String, String>> {
    let path = sc.env().audit_log();
    let (annotations, _) = eventually(Duration::from_secs(10), "the Pod's audit event", || async {
        let text = crate::harness::read_from(&path, offset);
        let creates: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| {
                e["verb"] == "create"
                    && e["stage"] == "ResponseComplete"
                    && e["objectRef"]["resource"] == "pods"
                    && e["objectRef"]["namespace"] == ns
                    && e["objectRef"]["subresource"].is_null()
                    && e["responseStatus"]["code"] == 201
            })
            .collect();
        ensure!(
            creates.len() == 1,
            "{} Pod creations in {ns} audited",
            creates.len()
        );
        Ok(creates[0]["annotations"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default())
    })
    .await?;
    Ok(annotations)
}

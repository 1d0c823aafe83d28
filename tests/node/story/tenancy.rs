//! Issue 14 on the real node: with sync on, a credential scoped to tenant A reaches A's Pods
//! only. Tenant A's Pod pulls its private image and runs; tenant B's Pod naming the same image
//! gets no credential and stays in ErrImagePull/ImagePullBackOff with the registry's 401.
//!
//! For the scenario, every source the story made so far (`regcred`, the `--docker-server`
//! forms' `regcred-form-*`; with discovery on each is a rule for its registry) is scoped away
//! from tenant namespaces (annotation `pullsecret-injector/namespace-selector: !TENANT`), and
//! a new source `tenant-a-pull` for the same registry serves namespaces labelled `TENANT=a`.
//! All are put back as they were at the end.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams};
use pullsecret_injector::core::names::{NAMESPACE_SELECTOR_ANNOTATION, SOURCE_LABEL};
use serde_json::json;

use crate::api::{create_pod, pull_secrets};
use crate::harness::{Sc, eventually, secs, stays};
use crate::install::{self, NAMESPACE};
use crate::kubelet::{self, PULL_TIMEOUT};
use crate::story::REGCRED;
use crate::tools::{self, kubectl};

const TENANT: &str = "node.pullsecret-injector.io/tenant";
const TENANT_A_PULL: &str = "tenant-a-pull";

pub async fn tenants(sc: Sc) -> Result<()> {
    let env = sc.env();
    let client = sc.admin();
    let app = env.app();
    install::installation(sc.suite).await?;
    let team_a = sc.ns("team-a", true).await?;
    let team_b = sc.ns("team-b", true).await?;
    let namespaces = Api::<Namespace>::all(client.clone());
    for (ns, tenant) in [(&team_a, "a"), (&team_b, "b")] {
        namespaces
            .patch(
                ns,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {TENANT: tenant}}})),
            )
            .await?;
    }
    let sources = Api::<Secret>::namespaced(client.clone(), NAMESPACE);
    let scope = |value: Option<String>| json!({"metadata": {"annotations": {NAMESPACE_SELECTOR_ANNOTATION: value}}});
    // Every source the story made so far (regcred, the --docker-server forms' regcred-form-*)
    // is discovered as a rule for its registry, everywhere: scoped away from tenants here.
    let existing: Vec<String> = sources
        .list(&ListParams::default().labels(&format!("{SOURCE_LABEL}=true")))
        .await?
        .items
        .into_iter()
        .filter_map(|s| s.metadata.name)
        .collect();
    ensure!(
        existing.iter().any(|n| n == REGCRED),
        "no {REGCRED} source among {existing:?}"
    );
    {
        let (sources, existing) = (sources.clone(), existing.clone());
        sc.defer(async move {
            for name in &existing {
                let _ = sources
                    .patch(name, &PatchParams::default(), &Patch::Merge(scope(None)))
                    .await;
            }
            let _ = sources.delete(TENANT_A_PULL, &Default::default()).await;
        });
    }

    sc.step("6.1", format!("scope the credentials: the {} sources so far ({REGCRED}, regcred-form-*) serve namespaces without {TENANT}; a new source {TENANT_A_PULL} (same registry) serves {TENANT}=a", existing.len()), async {
        for name in &existing {
            sources
                .patch(name, &PatchParams::default(), &Patch::Merge(scope(Some(format!("!{TENANT}")))))
                .await?;
        }
        tools::create_docker_registry_secret(env, NAMESPACE, TENANT_A_PULL, &env.registry).await?;
        kubectl(env, &["annotate", "secret", TENANT_A_PULL, "-n", NAMESPACE, &format!("{NAMESPACE_SELECTOR_ANNOTATION}={TENANT}=a")]).await?;
        kubectl(env, &["label", "secret", TENANT_A_PULL, "-n", NAMESPACE, &format!("{SOURCE_LABEL}=true")]).await?;
        let started = Instant::now();
        let (_, took) = eventually(Duration::from_secs(30), "the copy of tenant-a-pull in team-a", || async {
            Api::<Secret>::namespaced(client.clone(), &team_a).get(TENANT_A_PULL).await?;
            Ok(())
        })
        .await?;
        sc.note(format!("copy in {team_a} {} after the source was labelled", secs(took.min(started.elapsed()))));
        Ok(())
    })
    .await?;

    sc.step(
        "6.2",
        format!("tenant A's Pod ({app}) is stored with [{TENANT_A_PULL}], pulls and runs"),
        async {
            let (created, _) = eventually(
                Duration::from_secs(20),
                "admission serves team-a its credential",
                || async {
                    let dry = create_pod(
                        &client,
                        &team_a,
                        &kubelet::app_pod("a-app", &app, "Always", &[])?,
                        true,
                    )
                    .await?;
                    ensure!(
                        dry.secrets() == [TENANT_A_PULL],
                        "dry run got {:?}",
                        dry.secrets()
                    );
                    Ok(dry)
                },
            )
            .await?;
            drop(created);
            let pod = create_pod(
                &client,
                &team_a,
                &kubelet::app_pod("a-app", &app, "Always", &[])?,
                false,
            )
            .await?;
            ensure!(
                pod.secrets() == [TENANT_A_PULL],
                "a-app stored with {:?}",
                pod.secrets()
            );
            let took = kubelet::await_running(&client, &team_a, "a-app", PULL_TIMEOUT).await?;
            sc.note(format!("a-app Running {took:?} after it was created"));
            Ok(())
        },
    )
    .await?;

    sc.step("6.3", format!("tenant B's Pod naming A's image gets no credential, no copy of {TENANT_A_PULL} or {REGCRED} is in {team_b}, and it stays in ErrImagePull/ImagePullBackOff with the registry's 401"), async {
        let pod = create_pod(&client, &team_b, &kubelet::app_pod("b-app", &app, "Always", &[])?, false).await?;
        ensure!(pod.secrets().is_empty(), "b-app stored with {:?}", pod.secrets());
        let (reason, took) = kubelet::await_pull_failure(&client, &team_b, "b-app", PULL_TIMEOUT).await?;
        let event = kubelet::await_401(&client, &team_b, "b-app").await?;
        let b_secrets = Api::<Secret>::namespaced(client.clone(), &team_b);
        stays(Duration::from_secs(3), "no credential copied into team-b", || async {
            for name in [TENANT_A_PULL, REGCRED] {
                ensure!(b_secrets.get_opt(name).await?.is_none(), "{team_b}/{name} exists");
            }
            let stored = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client.clone(), &team_b).get("b-app").await?;
            ensure!(pull_secrets(&stored).is_empty(), "b-app now lists {:?}", pull_secrets(&stored));
            Ok(())
        })
        .await?;
        sc.note(format!("b-app: {reason} {} after it was created; kubelet event: {event}", secs(took)));
        Ok(())
    })
    .await?;
    Ok(())
}

//! The API server restarted (etcd kept) under three installations at once: the injectors
//! survive, `/readyz` is sampled throughout, injection works again, and the watches recover
//! (cluster: a Secret created afterwards is seen; sync: a namespace created afterwards gets
//! its copy). Alone in the suite: it holds the API lock for writing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams};

use crate::api::{Cred, pod};
use crate::harness::{Label, Sc, eventually, path_str};
use crate::install::{Inst, Installation};
use crate::process::run_script;
use crate::sync::{copy_of, create_source};

pub async fn apiserver_restart(sc: Sc) -> Result<()> {
    let suite = sc.suite;
    let standalone = suite.installation(Inst::Standalone).await?;
    let cluster = suite.installation(Inst::Cluster).await?;
    let sync = sc.inst.clone();
    create_source(
        &sc,
        "restart-cred",
        &Cred::new("restart.example.com", "pass-before-restart"),
    )
    .await?;
    let installations: [&Arc<Installation>; 3] = [&standalone, &cluster, &sync];
    let pids: Vec<Option<u32>> = installations.iter().map(|i| i.injectors[0].pid()).collect();

    // /readyz of each injector every 100 ms while the API server is away.
    let sampling = Arc::new(AtomicBool::new(true));
    let mut samplers = Vec::new();
    for inst in installations {
        let (inst, sampling) = (Arc::clone(inst), sampling.clone());
        samplers.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            while sampling.load(Ordering::Relaxed) {
                let ready = matches!(inst.injectors[0].get("/readyz").await, Ok((200, _)));
                samples.push(ready);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            samples
        }));
    }
    let t0 = Instant::now();
    let restarted = run_script(
        &suite.env.root.join("tests/e2e/kube-up.sh"),
        &["--apiserver-only"],
        &[("DIR", path_str(&suite.env.dir)?)],
    )
    .await;
    let back = Instant::now();
    sc.note(format!("API server down and back in {:?}", back - t0));
    let result = async {
        restarted?;
        for (inst, pid) in installations.iter().zip(&pids) {
            let injector = &inst.injectors[0];
            ensure!(
                injector.running() && injector.pid() == *pid,
                "{} died while the API server restarted",
                injector.identity
            );
            let livez = injector.get("/livez").await?;
            ensure!(livez.0 == 200, "{}: /livez {livez:?}", injector.identity);
        }
        for inst in installations {
            let injector = &inst.injectors[0];
            let (_, took) = eventually(
                Duration::from_secs(20),
                "/readyz after the restart",
                || async {
                    let (status, body) = injector.get("/readyz").await?;
                    ensure!(
                        status == 200,
                        "{}: /readyz {status} {body}",
                        injector.identity
                    );
                    Ok(())
                },
            )
            .await?;
            sc.note(format!(
                "{}: ready {took:?} after the API server",
                injector.identity
            ));
        }
        Ok(())
    }
    .await;
    sampling.store(false, Ordering::Relaxed);
    for (inst, sampler) in installations.iter().zip(samplers) {
        let samples = sampler.await.unwrap_or_default();
        let not_ready = samples.iter().filter(|ready| !**ready).count();
        sc.note(format!(
            "{} /readyz: {not_ready} not-ready samples of {} (100 ms apart)",
            inst.injectors[0].identity,
            samples.len()
        ));
    }
    result?;
    // The suite's own client reconnects too.
    eventually(
        Duration::from_secs(10),
        "the admin client reaches the API server",
        || async {
            Api::<Namespace>::all(sc.admin())
                .list(&ListParams::default().limit(1))
                .await?;
            Ok(())
        },
    )
    .await?;

    let nginx = pod("web").image("nginx").build();
    for inst in [&standalone, &cluster] {
        let ns = sc
            .ns_of(inst, Label::Enabled, &["dockerhub", "ghcr-acme"], &[])
            .await?;
        let (_, took) = eventually(
            Duration::from_secs(10),
            "injection after the restart",
            || {
                let (sc, ns, nginx) = (&sc, &ns, &nginx);
                async move {
                    let got = sc.dry_run(ns, nginx).await?.secrets();
                    ensure!(got == ["dockerhub"], "got {got:?}");
                    Ok(())
                }
            },
        )
        .await?;
        sc.note(format!(
            "{}: injecting {took:?} after the restart",
            inst.name
        ));
        sc.create_pod(&ns, &nginx).await?;
        crate::basic::expect_stored(&sc, &ns, "web", &["dockerhub"]).await?;
    }

    // Every watch of the cluster-mode injectors reports healthy again.
    for inst in [&cluster, &sync] {
        let injector = &inst.injectors[0];
        let (_, took) = eventually(Duration::from_secs(20), "the watches recover", || async {
            let metrics = injector.metrics().await?;
            let unhealthy: Vec<&str> = metrics
                .lines()
                .filter(|l| {
                    l.starts_with("pullsecret_injector_watch_healthy{") && l.ends_with(" 0")
                })
                .collect();
            ensure!(unhealthy.is_empty(), "{}: {unhealthy:?}", injector.identity);
            Ok(())
        })
        .await?;
        sc.note(format!(
            "{}: every watch healthy {took:?} after the restart",
            injector.identity
        ));
    }

    // Cluster: the Secret index is trusted again (a missing Secret is warned about), and a
    // Secret created after the restart is seen.
    let ns = sc
        .ns_of(&cluster, Label::Enabled, &["dockerhub"], &[])
        .await?;
    let both = pod("web").image("nginx").image("ghcr.io/acme/app").build();
    eventually(
        Duration::from_secs(20),
        "a missing Secret is warned about again",
        || {
            let (sc, ns, both) = (&sc, &ns, &both);
            async move {
                let created = sc.dry_run(ns, both).await?;
                ensure!(
                    created.warned(
                        "Secret ghcr-acme (rule ghcr.io/acme) is not in this namespace yet"
                    ),
                    "warnings {:?}",
                    created.warnings
                );
                Ok(())
            }
        },
    )
    .await?;
    let t = Instant::now();
    sc.put_cred(&ns, "ghcr-acme", &Cred::standard("ghcr-acme")?, &[])
        .await?;
    eventually(
        Duration::from_secs(20),
        "a Secret created after the restart is seen",
        || {
            let (sc, ns, both) = (&sc, &ns, &both);
            async move {
                let created = sc.dry_run(ns, both).await?;
                ensure!(
                    created.warnings.is_empty(),
                    "warnings {:?}",
                    created.warnings
                );
                Ok(())
            }
        },
    )
    .await?;
    sc.note(format!(
        "cluster: Secret watch caught up {:?} after the Secret was created",
        t.elapsed()
    ));

    // Sync: the namespace and Secret watches recovered.
    let ns = sc.ns(Label::Enabled, &[]).await?;
    let (_, took) = eventually(
        Duration::from_secs(20),
        "a namespace created after the restart gets its copy",
        || copy_of(&sc, &ns, "restart-cred"),
    )
    .await?;
    sc.note(format!(
        "sync: copy appeared {took:?} after the namespace was created"
    ));
    sc.create_pod(&ns, &pod("web").image("restart.example.com/app").build())
        .await?;
    crate::basic::expect_stored(&sc, &ns, "web", &["restart-cred"]).await?;
    Ok(())
}

//! Issue 8.1: `discovery`, `sync` and `secretAwareness` switched on and off by rewriting the
//! injector's config file (the RBAC of every feature is in place), each direction observed by
//! what the injector does.

use std::time::Duration;

use anyhow::{Result, ensure};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use pullsecret_injector::core::names::SOURCE_VERSION_ANNOTATION;

use crate::api::{Cred, pod};
use crate::harness::{Label, Sc, eventually, stays};
use crate::install::with_features;
use crate::sync::{copy_of, create_source, no_copy, rotate};

const LEADER: &str = "pullsecret_injector_leader";

pub async fn features_at_runtime(sc: Sc) -> Result<()> {
    let inst = sc.inst.clone();
    let base = crate::install::without_credential_features(&inst.base.config);
    let config = |discovery, sync, awareness| with_features(&base, discovery, sync, awareness);
    let off = config(false, false, false)?;
    // The Lease and sync live in the controller.
    let controller = inst.controller()?;
    let x = sc.ns(Label::Enabled, &[]).await?;
    create_source(
        &sc,
        "reload-disc",
        &Cred::new("disc.example.com", "reload-disc-pass"),
    )
    .await?;
    create_source(
        &sc,
        "reload-sync",
        &Cred::new("sync.example.com", "reload-sync-pass-1"),
    )
    .await?;

    // discovery
    let disc = pod("disc").image("disc.example.com/app").build();
    let injects = |want: &'static [&'static str], what: &'static str| {
        let (sc, x, disc) = (&sc, &x, &disc);
        async move {
            eventually(Duration::from_secs(10), what, || async move {
                let got = sc.dry_run(x, disc).await?.secrets();
                ensure!(
                    got == want,
                    "disc.example.com/app got {got:?}, want {want:?}"
                );
                Ok(())
            })
            .await
            .map(|(_, took)| took)
        }
    };
    injects(&[], "discovery off: a labelled source is no rule").await?;
    inst.reload(&config(true, false, false)?).await?;
    let took = injects(
        &["reload-disc"],
        "discovery turned on: the discovered rule injects",
    )
    .await?;
    sc.note(format!(
        "discovery on: rule active {took:?} after the reload"
    ));
    inst.reload(&off).await?;
    let took = injects(&[], "discovery turned off: the discovered rule is gone").await?;
    sc.note(format!(
        "discovery off: rule gone {took:?} after the reload"
    ));

    // sync
    stays(Duration::from_secs(1), "sync off: no copy", || {
        no_copy(&sc, &x, "reload-sync")
    })
    .await?;
    inst.reload(&config(false, true, false)?).await?;
    let (_, took) = eventually(
        Duration::from_secs(15),
        "sync turned on: copies appear",
        || copy_of(&sc, &x, "reload-sync"),
    )
    .await?;
    sc.note(format!("sync on: copy written {took:?} after the reload"));
    ensure!(
        controller.metric(LEADER).await? == 1.0,
        "sync on, yet not holding the Lease"
    );
    inst.reload(&off).await?;
    let (_, took) = eventually(
        Duration::from_secs(5),
        "sync turned off: the Lease is released",
        || async {
            let leader = controller.metric(LEADER).await?;
            ensure!(leader == 0.0, "{LEADER} {leader}");
            Ok(())
        },
    )
    .await?;
    sc.note(format!(
        "sync off: Lease released {took:?} after the reload"
    ));
    let version = |s: Option<Secret>| {
        s.and_then(|s| s.metadata.annotations)
            .and_then(|a| a.get(SOURCE_VERSION_ANNOTATION).cloned())
    };
    let copy_version = version(
        Api::<Secret>::namespaced(sc.admin(), &x)
            .get_opt("reload-sync")
            .await?,
    );
    let y = sc.ns(Label::Enabled, &[]).await?;
    rotate(
        &sc,
        &inst.ns,
        "reload-sync",
        &Cred::new("sync.example.com", "reload-sync-pass-2"),
    )
    .await?;
    stays(
        Duration::from_secs(3),
        "sync off: no more copies are written",
        || async {
            no_copy(&sc, &y, "reload-sync").await?;
            let now = version(
                Api::<Secret>::namespaced(sc.admin(), &x)
                    .get_opt("reload-sync")
                    .await?,
            );
            ensure!(
                now == copy_version,
                "the copy in {x} was rewritten: {copy_version:?} -> {now:?}"
            );
            Ok(())
        },
    )
    .await?;

    // secretAwareness
    let aware = pod("aware").image("aware.example.com/app").build();
    let warns = |expected: bool, what: &'static str| {
        let (sc, x, aware) = (&sc, &x, &aware);
        async move {
            eventually(Duration::from_secs(10), what, || async move {
                let created = sc.dry_run(x, aware).await?;
                ensure!(
                    created.secrets() == ["reload-missing"],
                    "secrets {:?}",
                    created.secrets()
                );
                let warned = created.warned(
                    "Secret reload-missing (rule aware.example.com) is not in this namespace yet",
                );
                ensure!(warned == expected, "warnings {:?}", created.warnings);
                Ok(())
            })
            .await
            .map(|(_, took)| took)
        }
    };
    warns(false, "awareness off: no warning about a missing Secret").await?;
    inst.reload(&config(false, false, true)?).await?;
    let took = warns(
        true,
        "awareness turned on: the missing Secret is warned about",
    )
    .await?;
    sc.note(format!("awareness on: warning {took:?} after the reload"));
    inst.reload(&off).await?;
    let took = warns(false, "awareness turned off: no warning").await?;
    sc.note(format!(
        "awareness off: warning gone {took:?} after the reload"
    ));
    Ok(())
}

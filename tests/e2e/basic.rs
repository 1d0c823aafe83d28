//! Scenarios every admission installation (standalone and cluster mode) passes: opt-in, audit
//! namespaces, opt-out Pods, existing entries and reinvocation (enforce and audit),
//! generateName, dry run; and the two that change or stop the installation: `selection: all`
//! (config hot reload) and failurePolicy with the injector stopped.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use pullsecret_injector::core::names::{
    ANNOTATION_INJECTED, ANNOTATION_WOULD_INJECT, INJECT_DISABLED, INJECT_LABEL,
};
use serde_json::json;

use crate::api::{audit_annotations, container_names, pod, stored_secrets, with_prefix};
use crate::harness::{INSTALLATION_LABEL, Label, SIDECAR_LABEL, Sc, eventually};
use crate::install::Selection;
use crate::sidecar::SIDECAR_CONTAINER;

/// The chart's webhook names (the API server prefixes audit annotation keys with them).
pub const INJECT_HOOK: &str = "inject.pullsecret-injector.io";
pub const AUDIT_HOOK: &str = "audit.pullsecret-injector.io";

pub const STD: &[&str] = &["dockerhub", "ghcr-acme"];

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn annotations(pairs: &[(String, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.clone(), v.to_string()))
        .collect()
}

pub async fn expect_stored(sc: &Sc, ns: &str, name: &str, want: &[&str]) -> Result<()> {
    let got = stored_secrets(&sc.admin(), ns, name).await?;
    ensure!(
        got == strings(want),
        "Pod {ns}/{name}: imagePullSecrets {got:?}, want {want:?}"
    );
    Ok(())
}

/// a. An enabled namespace is injected (with the audit annotation), public images and
/// unlabelled namespaces are not.
pub async fn opt_in(sc: Sc) -> Result<()> {
    let ns = sc.ns(Label::Enabled, STD).await?;
    let web = sc
        .create_pod(
            &ns,
            &pod("web")
                .image("nginx")
                .image("ghcr.io/acme/app:1.0")
                .build(),
        )
        .await?;
    expect_stored(&sc, &ns, "web", &["dockerhub", "ghcr-acme"]).await?;
    ensure!(
        web.warnings.is_empty(),
        "unexpected warnings: {:?}",
        web.warnings
    );
    let recorded = with_prefix(
        &audit_annotations(sc.suite, sc.audit_offset, &ns, "web").await?,
        &format!("{INJECT_HOOK}/"),
    );
    let want = annotations(&[(
        format!("{INJECT_HOOK}/{ANNOTATION_INJECTED}"),
        "dockerhub,ghcr-acme",
    )]);
    ensure!(
        recorded == want,
        "audit annotations {recorded:?}, want {want:?}"
    );

    sc.create_pod(
        &ns,
        &pod("public").image("quay.io/prometheus/busybox").build(),
    )
    .await?;
    expect_stored(&sc, &ns, "public", &[]).await?;

    let plain = sc.ns(Label::None, STD).await?;
    let web = sc
        .create_pod(&plain, &pod("web").image("nginx").build())
        .await?;
    expect_stored(&sc, &plain, "web", &[]).await?;
    ensure!(
        web.warnings.is_empty(),
        "unexpected warnings: {:?}",
        web.warnings
    );
    Ok(())
}

/// c. An `=audit` namespace: the exact warnings (what kubectl prints), the Pod unchanged, the
/// `/audit` webhook's annotation.
pub async fn audit_namespace(sc: Sc) -> Result<()> {
    let ns = sc.ns(Label::Audit, STD).await?;
    let web = sc
        .create_pod(
            &ns,
            &pod("web")
                .image("nginx")
                .init("ghcr.io/acme/init:1")
                .build(),
        )
        .await?;
    expect_stored(&sc, &ns, "web", &[]).await?;
    let want = strings(&[
        "pullsecret-injector (audit): would add imagePullSecret ghcr-acme for ghcr.io/acme/init:1 (rule ghcr.io/acme)",
        "pullsecret-injector (audit): would add imagePullSecret dockerhub for nginx (rule docker.io)",
    ]);
    ensure!(
        web.warnings == want,
        "warnings {:?}, want {want:?}",
        web.warnings
    );
    let recorded = audit_annotations(sc.suite, sc.audit_offset, &ns, "web").await?;
    let ours: BTreeMap<_, _> = recorded
        .into_iter()
        .filter(|(k, _)| k.starts_with(INJECT_HOOK) || k.starts_with(AUDIT_HOOK))
        .collect();
    let want = annotations(&[(
        format!("{AUDIT_HOOK}/{ANNOTATION_WOULD_INJECT}-for-2-images"),
        "ghcr-acme,dockerhub",
    )]);
    ensure!(ours == want, "audit annotations {ours:?}, want {want:?}");
    sc.note(format!("kubectl would print: {}", web.warnings.join(" | ")));
    Ok(())
}

/// d. A Pod labelled `pullsecret-injector/inject=disabled` is left alone, without a word.
pub async fn pod_opt_out(sc: Sc) -> Result<()> {
    for label in [Label::Enabled, Label::Audit] {
        let ns = sc.ns(label, STD).await?;
        let web = sc
            .create_pod(
                &ns,
                &pod("web")
                    .image("nginx")
                    .label(INJECT_LABEL, INJECT_DISABLED)
                    .build(),
            )
            .await?;
        expect_stored(&sc, &ns, "web", &[]).await?;
        ensure!(
            web.warnings.is_empty(),
            "{label:?} namespace: warnings {:?}",
            web.warnings
        );
    }
    Ok(())
}

/// Waits until the sidecar webhook adds its container in `ns`.
async fn sidecar_active(sc: &Sc, ns: &str) -> Result<Duration> {
    let probe = pod("probe").image("nginx").build();
    let (_, took) = eventually(
        Duration::from_secs(10),
        "the sidecar webhook is called",
        || {
            let probe = &probe;
            async move {
                let created = sc.dry_run(ns, probe).await?;
                let names = container_names(&created.pod);
                ensure!(names == ["c0", SIDECAR_CONTAINER], "containers {names:?}");
                Ok(())
            }
        },
    )
    .await?;
    Ok(took)
}

/// e. Existing entries are kept in order (an empty name too), new ones appended, none
/// duplicated, initContainers first; on reinvocation (a later webhook adds a container) the
/// second round adds the new secret and both rounds are on record.
pub async fn existing_and_reinvocation(sc: Sc) -> Result<()> {
    let ns = sc.ns(Label::Enabled, STD).await?;
    let mixed = pod("mixed")
        .image("nginx")
        .image("ghcr.io/acme/app")
        .secret("mine")
        .secret("")
        .secret("other")
        .build();
    sc.create_pod(&ns, &mixed).await?;
    expect_stored(
        &sc,
        &ns,
        "mixed",
        &["mine", "", "other", "dockerhub", "ghcr-acme"],
    )
    .await?;
    let already = pod("already")
        .image("nginx")
        .image("ghcr.io/acme/app")
        .secret("ghcr-acme")
        .build();
    sc.create_pod(&ns, &already).await?;
    expect_stored(&sc, &ns, "already", &["ghcr-acme", "dockerhub"]).await?;
    sc.create_pod(
        &ns,
        &pod("order")
            .image("nginx")
            .init("ghcr.io/acme/init")
            .build(),
    )
    .await?;
    expect_stored(&sc, &ns, "order", &["ghcr-acme", "dockerhub"]).await?;

    let ns = sc
        .ns_with(Label::Enabled, STD, &[(SIDECAR_LABEL, "true")])
        .await?;
    sidecar_active(&sc, &ns).await?;
    sc.create_pod(&ns, &pod("sidecar").image("nginx").build())
        .await?;
    let stored = Api::<Pod>::namespaced(sc.admin(), &ns)
        .get("sidecar")
        .await?;
    let names = container_names(&stored);
    ensure!(
        names == ["c0", SIDECAR_CONTAINER],
        "containers {names:?}: the sidecar webhook did not run"
    );
    expect_stored(&sc, &ns, "sidecar", &["dockerhub", "ghcr-acme"]).await?;
    let all = audit_annotations(sc.suite, sc.audit_offset, &ns, "sidecar").await?;
    ensure!(
        all.keys()
            .any(|k| k.starts_with("mutation.webhook.admission.k8s.io/round_1")),
        "the audit event shows no second round (reinvocation) of webhooks: {all:?}"
    );
    let recorded = with_prefix(&all, &format!("{INJECT_HOOK}/"));
    let want = annotations(&[
        (format!("{INJECT_HOOK}/{ANNOTATION_INJECTED}"), "dockerhub"),
        (
            format!("{INJECT_HOOK}/{ANNOTATION_INJECTED}-after-1"),
            "ghcr-acme",
        ),
    ]);
    ensure!(
        recorded == want,
        "both rounds must be recorded: {recorded:?}, want {want:?}"
    );
    sc.note(format!(
        "audit annotations after reinvocation: {recorded:?}"
    ));
    Ok(())
}

/// e2 (issue 8.7). Audit-mode reinvocation: both rounds' findings are recorded, each under
/// its own `would-inject-secrets-for-K-images` key.
pub async fn audit_reinvocation(sc: Sc) -> Result<()> {
    let ns = sc
        .ns_with(Label::Audit, STD, &[(SIDECAR_LABEL, "true")])
        .await?;
    sidecar_active(&sc, &ns).await?;
    let web = sc
        .create_pod(&ns, &pod("web").image("nginx").build())
        .await?;
    let stored = Api::<Pod>::namespaced(sc.admin(), &ns).get("web").await?;
    ensure!(
        container_names(&stored) == ["c0", SIDECAR_CONTAINER],
        "the sidecar webhook did not run: {:?}",
        container_names(&stored)
    );
    expect_stored(&sc, &ns, "web", &[]).await?;
    let all = audit_annotations(sc.suite, sc.audit_offset, &ns, "web").await?;
    ensure!(
        all.keys()
            .any(|k| k.starts_with("mutation.webhook.admission.k8s.io/round_1")),
        "no reinvocation round in the audit event: {all:?}"
    );
    let recorded = with_prefix(&all, &format!("{AUDIT_HOOK}/"));
    let want = annotations(&[
        (
            format!("{AUDIT_HOOK}/{ANNOTATION_WOULD_INJECT}-for-1-images"),
            "dockerhub",
        ),
        (
            format!("{AUDIT_HOOK}/{ANNOTATION_WOULD_INJECT}-for-2-images"),
            "dockerhub,ghcr-acme",
        ),
    ]);
    ensure!(
        recorded == want,
        "audit annotations {recorded:?}, want {want:?}"
    );
    ensure!(
        web.warned("would add imagePullSecret ghcr-acme for ghcr.io/acme/sidecar:1"),
        "no warning for the second round's finding: {:?}",
        web.warnings
    );
    sc.note(format!("audit annotations: {recorded:?}"));
    Ok(())
}

/// f. A Pod named by `metadata.generateName`, as controllers create them.
pub async fn generate_name(sc: Sc) -> Result<()> {
    let ns = sc.ns(Label::Enabled, STD).await?;
    let created = sc
        .create_pod(&ns, &pod("web-").generate().image("nginx").build())
        .await?;
    let name = created.name().to_string();
    ensure!(
        name.starts_with("web-") && name.len() > 4,
        "generated name {name:?}"
    );
    expect_stored(&sc, &ns, &name, &["dockerhub"]).await
}

/// g. A server-side dry run returns the injected Pod and stores nothing.
pub async fn dry_run(sc: Sc) -> Result<()> {
    let ns = sc.ns(Label::Enabled, STD).await?;
    let created = sc.dry_run(&ns, &pod("web").image("nginx").build()).await?;
    ensure!(
        created.secrets() == ["dockerhub"],
        "dry-run Pod imagePullSecrets {:?}",
        created.secrets()
    );
    let pods = Api::<Pod>::namespaced(sc.admin(), &ns)
        .list(&ListParams::default())
        .await?;
    ensure!(
        pods.items.is_empty(),
        "Pods exist after a dry run: {:?}",
        pods.items.len()
    );
    Ok(())
}

/// b. `selection: all` with exclusions, rendered by the chart and hot-reloaded: an unlabelled
/// namespace is injected; excluded, `=disabled`, `kube-system` and the injector's own
/// namespace are not; `=audit` gets warnings only. Back to opt-in afterwards.
pub async fn selection_all(sc: Sc) -> Result<()> {
    let inst = sc.inst.clone();
    let plain = sc.ns(Label::None, STD).await?;
    let excluded = sc.ns(Label::None, STD).await?;
    let disabled = sc.ns(Label::Disabled, STD).await?;
    let audit = sc.ns(Label::Audit, STD).await?;
    // The chart refuses selection=all below 1.21 (no kubernetes.io/metadata.name label to
    // exclude namespaces by name in the webhook): rendered as 1.21, so on this 1.20 API server
    // the name exclusions are enforced by the injector's own configuration alone.
    let values = inst.values(&Selection::All {
        exclude: vec![excluded.clone()],
    });
    let all = inst
        .render(&values, "selection-all", Some("1.21.0"))
        .await?;
    {
        let inst = inst.clone();
        sc.defer(async move {
            let _ = restore_opt_in(&inst).await;
        });
    }
    let took = inst.reload(&all.config).await?;
    inst.apply_webhook(&all).await?;
    let nginx = pod("probe").image("nginx").build();
    let (_, effect) = eventually(
        Duration::from_secs(10),
        "an unlabelled namespace is injected",
        || {
            let (sc, nginx, plain) = (&sc, &nginx, &plain);
            async move {
                let got = sc.dry_run(plain, nginx).await?.secrets();
                ensure!(got == ["dockerhub"], "dry run got {got:?}");
                Ok(())
            }
        },
    )
    .await?;
    sc.note(format!(
        "config reloaded in {took:?}; selection: all took effect after {effect:?}"
    ));
    let web = pod("web").image("nginx").build();
    sc.create_pod(&plain, &web).await?;
    expect_stored(&sc, &plain, "web", &["dockerhub"]).await?;
    for ns in [&excluded, &disabled] {
        let created = sc.create_pod(ns, &web).await?;
        expect_stored(&sc, ns, "web", &[]).await?;
        ensure!(
            created.warnings.is_empty(),
            "{ns}: warnings {:?}",
            created.warnings
        );
    }
    let created = sc.create_pod(&audit, &web).await?;
    expect_stored(&sc, &audit, "web", &[]).await?;
    ensure!(
        created.warned("dockerhub"),
        "no audit warning naming dockerhub: {:?}",
        created.warnings
    );

    // kube-system (excluded by default) and the injector's own namespace: the webhook of this
    // installation is called for them (labelled for it), and only the injector's own checks
    // keep them out.
    let pod_name = format!("e2e-{}-web", inst.name);
    {
        let _one_at_a_time = sc.suite.kube_system.lock().await;
        let namespaces: Api<Namespace> = Api::all(sc.admin());
        let label = |value: Option<&str>| {
            Patch::Merge(json!({"metadata": {"labels": {INSTALLATION_LABEL: value}}}))
        };
        namespaces
            .patch(
                "kube-system",
                &PatchParams::default(),
                &label(Some(inst.name)),
            )
            .await?;
        let result = async {
            let created = sc
                .create_pod("kube-system", &pod(&pod_name).image("nginx").build())
                .await?;
            let _ = Api::<Pod>::namespaced(sc.admin(), "kube-system")
                .delete(&pod_name, &DeleteParams::default())
                .await;
            ensure!(
                created.secrets().is_empty(),
                "kube-system Pod got {:?}",
                created.secrets()
            );
            Ok(())
        }
        .await;
        namespaces
            .patch("kube-system", &PatchParams::default(), &label(None))
            .await?;
        result?;
    }
    let created = sc
        .create_pod(&inst.ns, &pod(&pod_name).image("nginx").build())
        .await?;
    let _ = Api::<Pod>::namespaced(sc.admin(), &inst.ns)
        .delete(&pod_name, &DeleteParams::default())
        .await;
    ensure!(
        created.secrets().is_empty(),
        "a Pod in the injector's own namespace got {:?}",
        created.secrets()
    );

    restore_opt_in(&inst).await?;
    eventually(Duration::from_secs(10), "back to opt-in", || {
        let (sc, nginx, plain) = (&sc, &nginx, &plain);
        async move {
            let got = sc.dry_run(plain, nginx).await?.secrets();
            ensure!(
                got.is_empty(),
                "an unlabelled namespace still injected: {got:?}"
            );
            Ok(())
        }
    })
    .await?;
    Ok(())
}

async fn restore_opt_in(inst: &crate::install::Installation) -> Result<()> {
    if inst.config()? != inst.base.config {
        inst.reload(&inst.base.config).await?;
    }
    inst.apply_webhook(&inst.base).await
}

/// h. failurePolicy with the injector stopped (SIGTERM, exit 0 within 5 s): `Ignore` admits
/// the Pod unchanged, `Fail` refuses it. Restarted, the injector injects again.
pub async fn failure_policy(sc: Sc) -> Result<()> {
    let inst = sc.inst.clone();
    let ns = sc.ns(Label::Enabled, STD).await?;
    inst.injectors[0].stop(Duration::from_secs(5)).await?;
    {
        let inst = inst.clone();
        sc.defer(async move {
            if !inst.injectors[0].running() {
                let _ = inst.injectors[0].start().await;
            }
        });
    }
    let started = Instant::now();
    let web = pod("web").image("nginx").build();
    if sc.suite.env.failure_policy == "Ignore" {
        sc.create_pod(&ns, &web).await?;
        sc.note(format!(
            "Pod admitted without the webhook in {:?}",
            started.elapsed()
        ));
        expect_stored(&sc, &ns, "web", &[]).await?;
    } else {
        match sc.create_pod(&ns, &web).await {
            Ok(_) => bail!("failurePolicy Fail: a Pod was admitted while the injector was down"),
            Err(e) if format!("{e:#}").contains("failed calling webhook") => {}
            Err(e) => bail!("unexpected refusal: {e:#}"),
        }
    }
    inst.injectors[0].start().await?;
    let (_, took) = eventually(
        Duration::from_secs(10),
        "injected again after the restart",
        || {
            let (sc, ns, web) = (&sc, &ns, &web);
            async move {
                let got = sc.dry_run(ns, web).await?.secrets();
                ensure!(got == ["dockerhub"], "dry run got {got:?}");
                Ok(())
            }
        },
    )
    .await?;
    sc.note(format!("injecting again {took:?} after the restart"));
    Ok(())
}

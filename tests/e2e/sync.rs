//! Source Secrets of the injector's namespace: discovery (a labelled Secret becomes a rule),
//! sync (copies created, replaced in place, kept while a Pod uses them, removed, someone
//! else's Secret never touched), and sync with two replicas and a Lease (issue 8.3).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use base64::Engine;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use pullsecret_injector::core::names::{
    DOCKER_CONFIG_JSON, INJECT_ENABLED, INJECT_LABEL, MANAGED_BY, MANAGED_BY_LABEL,
    SOURCE_ANNOTATION, SOURCE_LABEL, SOURCE_VERSION_ANNOTATION,
};
use serde_json::json;

use crate::api::{Cred, pod};
use crate::harness::{Label, Sc, eventually, stays};
use crate::install::lease_binding;
use crate::process::Injector;

/// A labelled source credential in the installation's namespace, deleted after the scenario.
pub async fn create_source(sc: &Sc, name: &str, cred: &Cred) -> Result<Secret> {
    let own = sc.inst.ns.clone();
    let secret = sc
        .put_cred(&own, name, cred, &[(SOURCE_LABEL, "true")])
        .await?;
    let (admin, name) = (sc.admin(), name.to_string());
    sc.defer(async move {
        let _ = Api::<Secret>::namespaced(admin, &own)
            .delete(&name, &DeleteParams::default())
            .await;
    });
    Ok(secret)
}

/// Replaces the credential a Secret holds (a rotation).
pub async fn rotate(sc: &Sc, namespace: &str, name: &str, cred: &Cred) -> Result<()> {
    sc.suite.remember_cred(cred);
    let payload = base64::engine::general_purpose::STANDARD.encode(cred.payload());
    Api::<Secret>::namespaced(sc.admin(), namespace)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {".dockerconfigjson": payload}})),
        )
        .await
        .with_context(|| format!("rotating {namespace}/{name}"))?;
    Ok(())
}

async fn label_namespace(sc: &Sc, namespace: &str, key: &str, value: Option<&str>) -> Result<()> {
    Api::<Namespace>::all(sc.admin())
        .patch(
            namespace,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {key: value}}})),
        )
        .await
        .with_context(|| format!("labelling namespace {namespace}"))?;
    Ok(())
}

async fn get_secret(sc: &Sc, namespace: &str, name: &str) -> Result<Option<Secret>> {
    Ok(Api::<Secret>::namespaced(sc.admin(), namespace)
        .get_opt(name)
        .await?)
}

/// `namespace` holds a copy of the source `own/name`: marks, type and data. Returns it.
pub async fn copy_of(sc: &Sc, namespace: &str, name: &str) -> Result<Secret> {
    let own = &sc.inst.ns;
    let source = get_secret(sc, own, name)
        .await?
        .ok_or_else(|| anyhow!("no source {own}/{name}"))?;
    let copy = get_secret(sc, namespace, name)
        .await?
        .ok_or_else(|| anyhow!("no Secret {namespace}/{name}"))?;
    let meta = &copy.metadata;
    let label = meta.labels.as_ref().and_then(|l| l.get(MANAGED_BY_LABEL));
    let annotation = |key| meta.annotations.as_ref().and_then(|a| a.get(key)).cloned();
    ensure!(
        label.map(String::as_str) == Some(MANAGED_BY),
        "{namespace}/{name}: label {MANAGED_BY_LABEL}={label:?}"
    );
    ensure!(
        annotation(SOURCE_ANNOTATION) == Some(format!("{own}/{name}")),
        "{namespace}/{name}: annotation {SOURCE_ANNOTATION}={:?}",
        annotation(SOURCE_ANNOTATION)
    );
    ensure!(
        annotation(SOURCE_VERSION_ANNOTATION) == source.metadata.resource_version,
        "{namespace}/{name}: {SOURCE_VERSION_ANNOTATION}={:?}, source is at {:?}",
        annotation(SOURCE_VERSION_ANNOTATION),
        source.metadata.resource_version
    );
    ensure!(
        copy.type_.as_deref() == Some(DOCKER_CONFIG_JSON),
        "{namespace}/{name}: type {:?}",
        copy.type_
    );
    ensure!(
        copy.data == source.data,
        "{namespace}/{name}: data differs from the source's"
    );
    Ok(copy)
}

pub async fn no_copy(sc: &Sc, namespace: &str, name: &str) -> Result<()> {
    match get_secret(sc, namespace, name).await? {
        None => Ok(()),
        Some(_) => bail!("{namespace}/{name} exists"),
    }
}

fn uid(secret: &Secret) -> String {
    secret.metadata.uid.clone().unwrap_or_default()
}

/// Waits until every namespace holds a current copy; returns their UIDs.
async fn copies(
    sc: &Sc,
    namespaces: &[&str],
    name: &str,
    timeout: Duration,
    what: &str,
) -> Result<(BTreeMap<String, String>, Duration)> {
    eventually(timeout, what, || async move {
        let mut uids = BTreeMap::new();
        for ns in namespaces {
            uids.insert(ns.to_string(), uid(&copy_of(sc, ns, name).await?));
        }
        Ok(uids)
    })
    .await
}

/// Discovery: a labelled docker config Secret in the injector's namespace becomes a rule for
/// each of its registries; removing the label removes the rule.
pub async fn discovery(sc: Sc) -> Result<()> {
    let ns = sc.ns(Label::Enabled, &[]).await?;
    create_source(
        &sc,
        "regcred",
        &Cred::new("https://index.docker.io/v1/", "pass-discovery"),
    )
    .await?;
    let nginx = pod("web").image("nginx").build();
    let (_, took) = eventually(
        Duration::from_secs(5),
        "the discovered rule injects",
        || {
            let (sc, ns, nginx) = (&sc, &ns, &nginx);
            async move {
                let got = sc.dry_run(ns, nginx).await?.secrets();
                ensure!(got == ["regcred"], "nginx got {got:?}");
                Ok(())
            }
        },
    )
    .await?;
    sc.note(format!("discovered after {took:?}"));
    sc.create_pod(&ns, &nginx).await?;
    crate::basic::expect_stored(&sc, &ns, "web", &["regcred"]).await?;
    sc.create_pod(&ns, &pod("other").image("ghcr.io/acme/app").build())
        .await?;
    crate::basic::expect_stored(&sc, &ns, "other", &[]).await?;
    Api::<Secret>::namespaced(sc.admin(), &sc.inst.ns)
        .patch(
            "regcred",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {SOURCE_LABEL: null}}})),
        )
        .await?;
    let (_, took) = eventually(
        Duration::from_secs(5),
        "the rule goes with the label",
        || {
            let (sc, ns, nginx) = (&sc, &ns, &nginx);
            async move {
                let got = sc.dry_run(ns, nginx).await?.secrets();
                ensure!(got.is_empty(), "nginx still got {got:?}");
                Ok(())
            }
        },
    )
    .await?;
    sc.note(format!("rule removed {took:?} after the label"));
    Ok(())
}

/// Sync: copies in every enabled namespace (not elsewhere), replaced in place on rotation
/// (same UID), removed when the namespace leaves scope or the source goes, but kept while a
/// Pod of the namespace lists it; a Secret of the same name that the injector does not manage
/// is never touched and counted as a conflict.
pub async fn sync(sc: Sc) -> Result<()> {
    let inst = sc.inst.clone();
    let a = sc.ns(Label::Enabled, &[]).await?;
    let b = sc.ns(Label::Enabled, &[]).await?;
    let n = sc.ns(Label::None, &[]).await?;
    let c = sc.ns(Label::Enabled, &[]).await?;
    let mine = sc
        .put_cred(
            &c,
            "regcred",
            &Cred::new("example.org", "mine-e2e-pass"),
            &[],
        )
        .await?;
    let conflicts = "pullsecret_injector_sync_conflicts_total";
    let c0 = inst.controller()?.metric(conflicts).await?;

    create_source(
        &sc,
        "regcred",
        &Cred::new("https://index.docker.io/v1/", "pass-sync-1"),
    )
    .await?;
    let (_, took) = copies(
        &sc,
        &[&a, &b],
        "regcred",
        Duration::from_secs(5),
        "copies in the enabled namespaces",
    )
    .await?;
    sc.note(format!("copies in enabled namespaces after {took:?}"));
    no_copy(&sc, &n, "regcred")
        .await
        .context("an unlabelled namespace got a copy")?;
    sc.create_pod(&a, &pod("web").image("nginx").build())
        .await?;
    crate::basic::expect_stored(&sc, &a, "web", &["regcred"]).await?;

    label_namespace(&sc, &n, INJECT_LABEL, Some(INJECT_ENABLED)).await?;
    let (_, took) = copies(
        &sc,
        &[&n],
        "regcred",
        Duration::from_secs(5),
        "a copy in a newly labelled namespace",
    )
    .await?;
    sc.note(format!(
        "newly labelled namespace got its copy after {took:?}"
    ));

    let (before, _) = copies(
        &sc,
        &[&a, &b, &n],
        "regcred",
        Duration::from_secs(5),
        "copies",
    )
    .await?;
    rotate(
        &sc,
        &inst.ns,
        "regcred",
        &Cred::new("https://index.docker.io/v1/", "pass-sync-2"),
    )
    .await?;
    let (after, took) = copies(
        &sc,
        &[&a, &b, &n],
        "regcred",
        Duration::from_secs(5),
        "the rotation reaches every copy",
    )
    .await?;
    ensure!(
        before == after,
        "copies were recreated, not replaced in place: UIDs {before:?} -> {after:?}"
    );
    sc.note(format!(
        "rotation reached every copy after {took:?}, UIDs unchanged"
    ));

    eventually(
        Duration::from_secs(5),
        "sync_conflicts_total increases",
        || {
            let inst = &inst;
            async move {
                let now = inst.controller()?.metric(conflicts).await?;
                ensure!(now > c0, "still {now}");
                Ok(())
            }
        },
    )
    .await?;
    let theirs = get_secret(&sc, &c, "regcred")
        .await?
        .ok_or_else(|| anyhow!("{c}/regcred is gone"))?;
    ensure!(
        theirs.data == mine.data,
        "the unmanaged Secret {c}/regcred was overwritten"
    );
    ensure!(
        theirs
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(MANAGED_BY_LABEL))
            .is_none(),
        "the unmanaged Secret {c}/regcred got the managed-by label"
    );

    label_namespace(&sc, &b, INJECT_LABEL, None).await?;
    let (_, took) = eventually(
        Duration::from_secs(5),
        "the copy leaves an unlabelled namespace",
        || no_copy(&sc, &b, "regcred"),
    )
    .await?;
    sc.note(format!(
        "copy removed from an unlabelled namespace after {took:?}"
    ));

    Api::<Secret>::namespaced(sc.admin(), &inst.ns)
        .delete("regcred", &DeleteParams::default())
        .await?;
    let (_, took) = eventually(Duration::from_secs(5), "copies go with the source", || {
        no_copy(&sc, &n, "regcred")
    })
    .await?;
    sc.note(format!("copies removed {took:?} after the source"));
    stays(
        Duration::from_secs(1),
        "a copy a Pod still lists is kept",
        || async {
            get_secret(&sc, &a, "regcred")
                .await?
                .map(|_| ())
                .ok_or_else(|| anyhow!("{a}/regcred was deleted although Pod web lists it"))
        },
    )
    .await?;
    Api::<Pod>::namespaced(sc.admin(), &a)
        .delete("web", &DeleteParams::default())
        .await?;
    // Pods are not watched: any event makes the next pass.
    label_namespace(&sc, &a, "e2e.pullsecret-injector.io/poke", Some("1")).await?;
    let (_, took) = eventually(
        Duration::from_secs(5),
        "the copy goes once no Pod lists it",
        || no_copy(&sc, &a, "regcred"),
    )
    .await?;
    sc.note(format!(
        "kept while Pod web listed it; removed {took:?} after the Pod"
    ));
    let theirs = get_secret(&sc, &c, "regcred")
        .await?
        .ok_or_else(|| anyhow!("{c}/regcred was deleted"))?;
    ensure!(
        theirs.data == mine.data,
        "the unmanaged Secret {c}/regcred changed when the source was deleted"
    );
    Ok(())
}

async fn leader_state(injectors: &[Injector]) -> Result<Vec<f64>> {
    let mut states = Vec::new();
    for injector in injectors.iter().filter(|i| i.running()) {
        states.push(injector.metric("pullsecret_injector_leader").await?);
    }
    Ok(states)
}

async fn holder(sc: &Sc) -> Result<Option<String>> {
    let lease = Api::<Lease>::namespaced(sc.admin(), &sc.inst.ns)
        .get_opt(&sc.inst.fullname)
        .await?;
    Ok(lease.and_then(|l| l.spec).and_then(|s| s.holder_identity))
}

/// Waits until exactly one running controller holds the Lease (metric and holderIdentity).
async fn one_leader(sc: &Sc, timeout: Duration) -> Result<(usize, Duration)> {
    let inst = sc.inst.clone();
    eventually(timeout, "exactly one replica holds the Lease", || {
        let inst = &inst;
        async move {
            let mut leaders = Vec::new();
            for (i, injector) in inst
                .controllers
                .iter()
                .enumerate()
                .filter(|(_, i)| i.running())
            {
                let value = injector.metric("pullsecret_injector_leader").await?;
                ensure!(
                    value == 0.0 || value == 1.0,
                    "{}: leader {value}",
                    injector.identity
                );
                if value == 1.0 {
                    leaders.push(i);
                }
            }
            let [leader] = leaders[..] else {
                bail!(
                    "leaders: {leaders:?} ({:?})",
                    leader_state(&inst.controllers).await?
                );
            };
            let held = holder(sc).await?;
            let identity = &inst.controllers[leader].identity;
            ensure!(
                held.as_deref() == Some(identity.as_str()),
                "Lease holderIdentity {held:?}, leader by metric {identity}"
            );
            Ok(leader)
        }
    })
    .await
}

/// Secrets of this name anywhere but the injector's namespace.
async fn copies_elsewhere(sc: &Sc, name: &str) -> Result<Vec<String>> {
    let secrets = Api::<Secret>::all(sc.admin())
        .list(&ListParams::default().fields(&format!("metadata.name={name}")))
        .await?;
    Ok(secrets
        .items
        .iter()
        .filter_map(|s| s.metadata.namespace.clone())
        .filter(|ns| *ns != sc.inst.ns)
        .collect())
}

/// Issue 8.3: two injector processes of one installation with sync on. Exactly one holds the
/// Lease and writes; killing it (SIGKILL: no release) hands sync to the other within about
/// 15 s (measured); a rotated source reaches every copy with its UID unchanged, before and
/// after the failover; the installation's TLS Secret is never copied, although a rule names
/// it and it carries the source label.
pub async fn two_replicas(sc: Sc) -> Result<()> {
    let inst = sc.inst.clone();
    let tls = format!("{}-tls", inst.fullname);
    Api::<Secret>::namespaced(sc.admin(), &inst.ns)
        .patch(
            &tls,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {SOURCE_LABEL: "true"}}})),
        )
        .await
        .context("labelling the TLS Secret as a source")?;
    let ha = |pass: &str| Cred::new("ha.example.com", pass);
    create_source(&sc, "ha-cred", &ha("ha-pass-1")).await?;

    let (leader, took) = one_leader(&sc, Duration::from_secs(20)).await?;
    sc.note(format!("one writer: {} (Lease holderIdentity and pullsecret_injector_leader 1; the other 0), after {took:?}", inst.controllers[leader].identity));

    let a = sc.ns(Label::Enabled, &[]).await?;
    let b = sc.ns(Label::Enabled, &[]).await?;
    let targets = [inst.probe_ns.as_str(), a.as_str(), b.as_str()];
    let (before, took) =
        copies(&sc, &targets, "ha-cred", Duration::from_secs(10), "copies").await?;
    sc.note(format!("copies after {took:?}"));
    rotate(&sc, &inst.ns, "ha-cred", &ha("ha-pass-2")).await?;
    let (after, took) = copies(
        &sc,
        &targets,
        "ha-cred",
        Duration::from_secs(10),
        "the rotation reaches every copy",
    )
    .await?;
    ensure!(
        before == after,
        "copies recreated, not replaced in place: {before:?} -> {after:?}"
    );
    sc.note(format!(
        "rotation reached every copy after {took:?}, UIDs unchanged"
    ));
    let elsewhere = copies_elsewhere(&sc, &tls).await?;
    ensure!(
        elsewhere.is_empty(),
        "the TLS Secret {tls} was copied to {elsewhere:?}"
    );
    let refused = inst.controllers[leader]
        .metric(r#"pullsecret_injector_source_secret_errors_total{kind="wrong_type"}"#)
        .await?;

    // Failover: the holder dies without releasing the Lease.
    let killed = &inst.controllers[leader];
    killed.kill()?;
    let t0 = Instant::now();
    let c = sc.ns(Label::Enabled, &[]).await?;
    let (_, _) = copies(
        &sc,
        &[&c],
        "ha-cred",
        Duration::from_secs(40),
        "the other replica takes over sync",
    )
    .await?;
    let failover = t0.elapsed();
    sc.note(format!(
        "failover: {failover:?} from SIGKILL of {} to the copy in a new namespace",
        killed.identity
    ));
    let (survivor, _) = one_leader(&sc, Duration::from_secs(5)).await?;
    ensure!(survivor != leader, "the killed replica is still the leader");
    ensure!(
        failover <= Duration::from_secs(20),
        "failover took {failover:?} (Lease 15 s)"
    );

    let mut targets = targets.to_vec();
    targets.push(&c);
    let (before, _) = copies(&sc, &targets, "ha-cred", Duration::from_secs(5), "copies").await?;
    rotate(&sc, &inst.ns, "ha-cred", &ha("ha-pass-3")).await?;
    let (after, took) = copies(
        &sc,
        &targets,
        "ha-cred",
        Duration::from_secs(10),
        "the new writer's rotation",
    )
    .await?;
    ensure!(
        before == after,
        "copies recreated by the new writer: {before:?} -> {after:?}"
    );
    sc.note(format!(
        "after failover, rotation reached every copy after {took:?}, UIDs unchanged"
    ));
    let elsewhere = copies_elsewhere(&sc, &tls).await?;
    ensure!(
        elsewhere.is_empty(),
        "the TLS Secret {tls} was copied to {elsewhere:?}"
    );
    // Refused, and said so: a rule names a Secret that is not a docker config.
    let refused_now = inst.controllers[survivor]
        .metric(r#"pullsecret_injector_source_secret_errors_total{kind="wrong_type"}"#)
        .await?;
    ensure!(
        refused >= 1.0 && refused_now >= 1.0,
        "the TLS Secret named by a rule was not counted as refused: source_secret_errors_total{{kind=\"wrong_type\"}} {refused} (first writer), {refused_now} (second)"
    );
    Ok(())
}

/// Issue 16.2: two controllers under two ServiceAccounts. The leader's right to update Leases
/// is taken away (its RoleBinding for Leases deleted; everything else it may do stays):
/// within the Lease duration it reports `pullsecret_injector_leader 0`, the other takes over,
/// and a rotated source still reaches every copy. The old leader writes nothing after it
/// lost the right (its log has no "wrote Secret copy" from then on).
pub async fn lease_revoked(sc: Sc) -> Result<()> {
    let inst = sc.inst.clone();
    // A scenario before may have killed one: both controllers run from here on.
    for controller in &inst.controllers {
        if !controller.running() {
            controller.start().await?;
        }
    }
    let ha = |pass: &str| Cred::new("ha.example.com", pass);
    create_source(&sc, "ha-cred", &ha("ha-revoke-1")).await?;
    let (leader, _) = one_leader(&sc, Duration::from_secs(30)).await?;
    let a = sc.ns(Label::Enabled, &[]).await?;
    let targets = [inst.probe_ns.as_str(), a.as_str()];
    let (before, _) = copies(&sc, &targets, "ha-cred", Duration::from_secs(10), "copies").await?;

    let account = &inst.controller_accounts[leader];
    let binding = lease_binding(account);
    let bindings = Api::<RoleBinding>::namespaced(sc.admin(), &inst.ns);
    let saved = bindings.get(&binding).await?;
    {
        let (bindings, mut saved) = (bindings.clone(), saved.clone());
        saved.metadata.resource_version = None;
        saved.metadata.uid = None;
        sc.defer(async move {
            let _ = bindings.create(&Default::default(), &saved).await;
        });
    }
    let old = &inst.controllers[leader];
    let log_from = old.log_len();
    bindings.delete(&binding, &DeleteParams::default()).await?;
    let revoked = Instant::now();
    let (_, took) = eventually(
        Duration::from_secs(20),
        "the leader that lost its right to update Leases reports leader 0",
        || async {
            let value = old.metric("pullsecret_injector_leader").await?;
            ensure!(value == 0.0, "{}: leader {value}", old.identity);
            Ok(())
        },
    )
    .await?;
    ensure!(
        took <= Duration::from_secs(15),
        "leader 0 only {took:?} after the right was taken away (Lease 15 s)"
    );
    let (new, _) = one_leader(&sc, Duration::from_secs(30)).await?;
    ensure!(
        new != leader,
        "the replica without Lease rights is still the leader"
    );
    let takeover = revoked.elapsed();
    rotate(&sc, &inst.ns, "ha-cred", &ha("ha-revoke-2")).await?;
    let (after, took) = copies(
        &sc,
        &targets,
        "ha-cred",
        Duration::from_secs(10),
        "the new writer's rotation reaches every copy",
    )
    .await?;
    ensure!(before == after, "copies recreated: {before:?} -> {after:?}");
    // The API server's authorizer may let a renewal or two through right after the binding is
    // deleted; while a renewal succeeded the replica rightly holds the Lease. What must never
    // happen: a write after it stopped writing, or once the new holder took over.
    let old_log = old.log_since(log_from);
    let is_write = |l: &&str| l.contains("wrote Secret copy") || l.contains("removed Secret copy");
    let old_lines: Vec<&str> = old_log.lines().collect();
    let stopped_at = old_lines
        .iter()
        .rposition(|l| l.contains("stopped writing"))
        .ok_or_else(|| anyhow!("{} never logged that it stopped writing", old.identity))?;
    let late: Vec<&str> = old_lines[stopped_at..]
        .iter()
        .copied()
        .filter(|l| is_write(l))
        .collect();
    ensure!(
        late.is_empty(),
        "{} wrote after it stopped writing: {late:?}",
        old.identity
    );
    let stamp = |l: &str| l.split_whitespace().next().unwrap_or_default().to_string();
    let last_old_write = old_lines
        .iter()
        .copied()
        .filter(|l| is_write(l))
        .map(stamp)
        .max();
    let took_over = inst.controllers[new]
        .log_since(0)
        .lines()
        .filter(|l| l.contains("Lease held"))
        .map(stamp)
        .max()
        .ok_or_else(|| anyhow!("the new holder never logged taking the Lease"))?;
    if let Some(last) = &last_old_write {
        ensure!(
            *last < took_over,
            "{} wrote at {last}, after the new holder took the Lease at {took_over}",
            old.identity
        );
    }
    sc.note(format!(
        "{} stopped writing (leader 0) {took:?} after losing Lease rights; {} took over {takeover:?} after; the rotation reached every copy in place",
        old.identity, inst.controllers[new].identity
    ));
    bindings
        .create(&Default::default(), &{
            let mut saved = saved;
            saved.metadata.resource_version = None;
            saved.metadata.uid = None;
            saved
        })
        .await?;
    Ok(())
}

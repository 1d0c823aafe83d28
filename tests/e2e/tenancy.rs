//! Issue 14: every credential only where it is allowed. Two tenants with crossed scopes on
//! one installation with discovery and sync (installation `tenancy`, `revokeAfter: 3s`):
//!
//! - rules: `ghcr.io/acme/team-a → team-a-pull` for namespaces labelled `tenant=a`,
//!   `ghcr.io/acme/team-b → team-b-pull` for `tenant=b`, `ghcr.io/acme → acme-shared` for the
//!   names `e2e-tenancy-*`, `quay.io/acme → quay-shared` with no scope;
//! - every source declares its scope by annotation (with discovery on, each source is also a
//!   rule for its own registries): `team-a-pull` `tenant=a`, `team-b-pull` `tenant=b`,
//!   `acme-shared` the names `e2e-tenancy-*`, `disc-a` (`disc.example.com`) `tenant=a`, and
//!   `disc-bad` (`bad.example.com`) an annotation that does not parse.
//!
//! Then `requireScope: true` (the unscoped rule serves nowhere) and `podOptOut: false` (the
//! chart renders no objectSelector; a Pod labelled inject=disabled is injected).
//!
//! A watcher runs for the whole scenario and fails it if a copy is ever created in a
//! namespace outside its scope (checked against the namespace's labels when the copy
//! appears), not only at the end.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Result, anyhow, ensure};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use pullsecret_injector::core::names::{
    INJECT_LABEL, MANAGED_BY, MANAGED_BY_LABEL, NAMESPACE_SELECTOR_ANNOTATION,
    NAMESPACES_ANNOTATION, SOURCE_ANNOTATION, SOURCE_LABEL,
};
use serde_json::json;

use crate::api::{Cred, pod};
use crate::harness::{Label, Sc, eventually, stays};
use crate::install::Selection;
use crate::sync::copy_of;

/// The namespace label the tenants' scopes select on.
pub const TENANT: &str = "e2e.pullsecret-injector.io/tenant";

/// The chart values' rules of the `tenancy` installation.
pub fn rules() -> serde_json::Value {
    json!([
        {"registry": "ghcr.io/acme/team-a", "secrets": ["team-a-pull"],
         "namespaceSelector": {"matchLabels": {TENANT: "a"}}},
        {"registry": "ghcr.io/acme/team-b", "secrets": ["team-b-pull"],
         "namespaceSelector": {"matchExpressions": [{"key": TENANT, "operator": "In", "values": ["b"]}]}},
        {"registry": "ghcr.io/acme", "secrets": ["acme-shared"], "namespaces": ["e2e-tenancy-*"]},
        {"registry": "quay.io/acme", "secrets": ["quay-shared"]},
    ])
}

/// Which tenant label a copy of `secret` needs (`None`: any namespace named e2e-tenancy-*).
fn required_tenant(secret: &str) -> Option<&'static str> {
    match secret {
        "team-a-pull" | "disc-a" => Some("a"),
        "team-b-pull" => Some("b"),
        _ => None,
    }
}

/// Watches the copies sync creates and records every one that appears out of its scope.
fn watch_copies(sc: &Sc, forged: (String, String)) -> Arc<Mutex<Vec<String>>> {
    let violations = Arc::new(Mutex::new(Vec::new()));
    let admin = sc.admin();
    let own = sc.inst.ns.clone();
    let found = violations.clone();
    let task = tokio::spawn(async move {
        let secrets = Api::<Secret>::all(admin.clone());
        let namespaces = Api::<Namespace>::all(admin);
        let config = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
        let mut stream = watcher(secrets, config).applied_objects().boxed();
        while let Some(event) = stream.next().await {
            let Ok(secret) = event else { continue };
            let ns = secret.metadata.namespace.clone().unwrap_or_default();
            let name = secret.metadata.name.clone().unwrap_or_default();
            // Other installations sync credentials of their own: only this scenario's count.
            let ours = [
                "team-a-pull",
                "team-b-pull",
                "acme-shared",
                "disc-a",
                "disc-bad",
            ];
            if ns == own || (ns.clone(), name.clone()) == forged || !ours.contains(&name.as_str()) {
                continue;
            }
            let labels = match namespaces.get_opt(&ns).await {
                Ok(Some(n)) => n.metadata.labels.unwrap_or_default(),
                _ => BTreeMap::new(),
            };
            let allowed = match (name.as_str(), required_tenant(&name)) {
                ("disc-bad", _) => false,
                (_, Some(tenant)) => labels.get(TENANT).map(String::as_str) == Some(tenant),
                (_, None) => ns.starts_with("e2e-tenancy-"),
            };
            if !allowed {
                found
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(format!("{ns}/{name} (namespace labels {labels:?})"));
            }
        }
    });
    sc.defer(async move { task.abort() });
    violations
}

async fn dry_run_secrets(
    sc: &Sc,
    ns: &str,
    image: &str,
    labels: &[(&str, &str)],
) -> Result<Vec<String>> {
    let mut p = pod("probe").image(image);
    for (k, v) in labels {
        p = p.label(k, v);
    }
    Ok(sc.dry_run(ns, &p.build()).await?.secrets())
}

async fn absent(sc: &Sc, ns: &str, name: &str) -> Result<()> {
    let found = Api::<Secret>::namespaced(sc.admin(), ns)
        .get_opt(name)
        .await?;
    ensure!(found.is_none(), "{ns}/{name} exists");
    Ok(())
}

/// A source Secret created with its scope annotation already on it, deleted at the end.
async fn scoped_source(sc: &Sc, name: &str, cred: &Cred, key: &str, scope: &str) -> Result<()> {
    sc.suite.remember_cred(cred);
    let own = sc.inst.ns.clone();
    let mut secret = cred.secret(name, &own);
    secret.metadata.labels = Some(BTreeMap::from([(
        SOURCE_LABEL.to_string(),
        "true".to_string(),
    )]));
    secret.metadata.annotations = Some(BTreeMap::from([(key.to_string(), scope.to_string())]));
    sc.create_secret(&own, &secret).await?;
    let (admin, name) = (sc.admin(), name.to_string());
    sc.defer(async move {
        let _ = Api::<Secret>::namespaced(admin, &own)
            .delete(&name, &Default::default())
            .await;
    });
    Ok(())
}

pub async fn crossed_scopes(sc: Sc) -> Result<()> {
    let inst = sc.inst.clone();
    let a = sc.ns_with(Label::Enabled, &[], &[(TENANT, "a")]).await?;
    let b = sc.ns_with(Label::Enabled, &[], &[(TENANT, "b")]).await?;
    let c = sc.ns(Label::Enabled, &[]).await?;
    // A Secret in b that claims to be team-a's copy (the marks sync puts on its copies): the
    // injector did not create it, so it never acts on it.
    let forged_cred = Cred::new("ghcr.io", "forged-e2e-pass");
    let violations = watch_copies(&sc, (b.clone(), "team-a-pull".into()));
    let forged = sc
        .put_cred(
            &b,
            "team-a-pull",
            &forged_cred,
            &[(MANAGED_BY_LABEL, MANAGED_BY)],
        )
        .await?;
    Api::<Secret>::namespaced(sc.admin(), &b)
        .patch(
            "team-a-pull",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {
                SOURCE_ANNOTATION: format!("{}/team-a-pull", inst.ns)}}})),
        )
        .await?;

    // With discovery on, every source is also a rule for its own registries, so each source
    // declares its scope, from its creation on (a source labelled before it is annotated
    // would be copied everywhere meanwhile, and the watcher would catch it).
    let tenant_a = format!("{TENANT}=a");
    let tenant_b = format!("{TENANT}=b");
    let unparsable = format!("{TENANT} in (a");
    for (name, registry, key, scope) in [
        (
            "team-a-pull",
            "ghcr.io",
            NAMESPACE_SELECTOR_ANNOTATION,
            tenant_a.as_str(),
        ),
        (
            "team-b-pull",
            "ghcr.io",
            NAMESPACE_SELECTOR_ANNOTATION,
            tenant_b.as_str(),
        ),
        (
            "acme-shared",
            "ghcr.io",
            NAMESPACES_ANNOTATION,
            "e2e-tenancy-*",
        ),
        (
            "disc-a",
            "disc.example.com",
            NAMESPACE_SELECTOR_ANNOTATION,
            tenant_a.as_str(),
        ),
        // Does not parse: serves no namespace.
        (
            "disc-bad",
            "bad.example.com",
            NAMESPACE_SELECTOR_ANNOTATION,
            unparsable.as_str(),
        ),
    ] {
        let cred = Cred::new(registry, &format!("{name}-e2e-pass"));
        scoped_source(&sc, name, &cred, key, scope).await?;
    }

    // Copies inside the scopes only.
    let (_, took) = eventually(
        Duration::from_secs(15),
        "copies inside their scopes",
        || async {
            for (ns, name) in [
                (&a, "team-a-pull"),
                (&a, "acme-shared"),
                (&a, "disc-a"),
                (&b, "team-b-pull"),
                (&b, "acme-shared"),
                (&c, "acme-shared"),
            ] {
                copy_of(&sc, ns, name).await?;
            }
            Ok(())
        },
    )
    .await?;
    sc.note(format!("copies in scope after {took:?}"));
    for (ns, name) in [
        (&a, "team-b-pull"),
        (&b, "disc-a"),
        (&c, "team-a-pull"),
        (&c, "team-b-pull"),
        (&c, "disc-a"),
        (&a, "disc-bad"),
        (&b, "disc-bad"),
    ] {
        absent(&sc, ns, name).await?;
    }

    // Admission: team-b's Pod naming team-a's image gets the shared credential, not team-a's.
    let team_a_image = "ghcr.io/acme/team-a/app:1";
    for (ns, image, want) in [
        (&a, team_a_image, vec!["team-a-pull"]),
        (&b, team_a_image, vec!["acme-shared"]),
        (&c, team_a_image, vec!["acme-shared"]),
        (&b, "ghcr.io/acme/team-b/app:1", vec!["team-b-pull"]),
        (&a, "disc.example.com/app:1", vec!["disc-a"]),
        (&b, "disc.example.com/app:1", vec![]),
        (&a, "bad.example.com/app:1", vec![]),
        (&a, "quay.io/acme/app:1", vec!["quay-shared"]),
    ] {
        let got = dry_run_secrets(&sc, ns, image, &[]).await?;
        ensure!(got == want, "{ns}: {image} got {got:?}, want {want:?}");
    }

    // Tampered data is restored in place.
    let before = copy_of(&sc, &a, "team-a-pull").await?;
    Api::<Secret>::namespaced(sc.admin(), &a)
        .patch(
            "team-a-pull",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {".dockerconfigjson": base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                br#"{"auths":{"ghcr.io":{"auth":"dGVuYW50OnRhbXBlcmVk"}}}"#)}})),
        )
        .await?;
    let (_, took) = eventually(
        Duration::from_secs(70),
        "tampered copy restored",
        || async {
            let now = copy_of(&sc, &a, "team-a-pull").await?;
            ensure!(now.data == before.data, "data still differs");
            ensure!(
                now.metadata.uid == before.metadata.uid,
                "recreated, not restored in place"
            );
            Ok(())
        },
    )
    .await?;
    sc.note(format!("tampered data restored in place after {took:?}"));

    // The forged copy is never touched.
    let keep = forged.clone();
    stays(
        Duration::from_secs(3),
        "the forged Secret in b untouched",
        || async {
            let now = Api::<Secret>::namespaced(sc.admin(), &b)
                .get_opt("team-a-pull")
                .await?
                .ok_or_else(|| anyhow!("the forged Secret was deleted"))?;
            ensure!(now.data == keep.data, "the forged Secret's data changed");
            ensure!(
                now.metadata.uid == keep.metadata.uid,
                "the forged Secret was replaced"
            );
            Ok(())
        },
    )
    .await?;

    // A namespace that gains the label gets the copy; losing it revokes the copy within
    // revokeAfter (3 s) although a Pod still names it.
    let namespaces = Api::<Namespace>::all(sc.admin());
    let label = |value: Option<&str>| json!({"metadata": {"labels": {TENANT: value}}});
    namespaces
        .patch(&c, &PatchParams::default(), &Patch::Merge(label(Some("a"))))
        .await?;
    eventually(Duration::from_secs(10), "copy after the label", || {
        copy_of(&sc, &c, "team-a-pull")
    })
    .await?;
    let (_, _) = eventually(
        Duration::from_secs(10),
        "admission sees the label",
        || async {
            let got = dry_run_secrets(&sc, &c, team_a_image, &[]).await?;
            ensure!(got == ["team-a-pull"], "got {got:?}");
            Ok(())
        },
    )
    .await?;
    let user = sc
        .create_pod(&c, &pod("user").image(team_a_image).build())
        .await?;
    ensure!(
        user.secrets() == ["team-a-pull"],
        "the Pod got {:?}",
        user.secrets()
    );
    namespaces
        .patch(&c, &PatchParams::default(), &Patch::Merge(label(None)))
        .await?;
    let (_, took) = eventually(
        Duration::from_secs(20),
        "copy revoked though a Pod names it",
        || absent(&sc, &c, "team-a-pull"),
    )
    .await?;
    ensure!(
        took >= Duration::from_secs(2),
        "revoked after {took:?}, before revokeAfter (3 s)"
    );
    sc.note(format!(
        "revoked {took:?} after the label went (revokeAfter 3 s), with a Pod naming it"
    ));

    // requireScope: the unscoped rule serves nowhere.
    let base = inst.base.config.clone();
    let scoped = base.replacen("requireScope: false", "requireScope: true", 1);
    ensure!(
        scoped != base,
        "the rendered config has no requireScope: false to switch"
    );
    inst.reload(&scoped).await?;
    eventually(
        Duration::from_secs(10),
        "requireScope: quay-shared serves nowhere",
        || async {
            let got = dry_run_secrets(&sc, &a, "quay.io/acme/app:1", &[]).await?;
            ensure!(got.is_empty(), "got {got:?}");
            Ok(())
        },
    )
    .await?;
    let got = dry_run_secrets(&sc, &a, team_a_image, &[]).await?;
    ensure!(
        got == ["team-a-pull"],
        "scoped rule under requireScope: {got:?}"
    );
    inst.reload(&base).await?;

    // podOptOut: a Pod labelled inject=disabled is left alone by default (the chart's
    // objectSelector keeps it from the webhook); with podOptOut: false, rendered by the chart
    // (no objectSelector) and reloaded, it gets its secrets.
    let opted_out = [(INJECT_LABEL, "disabled")];
    let got = dry_run_secrets(&sc, &a, team_a_image, &opted_out).await?;
    ensure!(
        got.is_empty(),
        "an opted-out Pod got {got:?} with podOptOut: true"
    );
    let mut values = inst.values(&Selection::OptIn);
    values["config"]["podOptOut"] = json!(false);
    let no_opt_out = inst.render(&values, "no-pod-opt-out", None).await?;
    let webhook = no_opt_out.webhook()?;
    ensure!(
        webhook
            .webhooks
            .iter()
            .flatten()
            .all(|w| w.object_selector.is_none()),
        "podOptOut: false still renders an objectSelector"
    );
    {
        let inst = inst.clone();
        sc.defer(async move {
            let _ = inst.reload(&inst.base.config).await;
            let _ = inst.apply_webhook(&inst.base).await;
        });
    }
    inst.reload(&no_opt_out.config).await?;
    inst.apply_webhook(&no_opt_out).await?;
    let (_, took) = eventually(
        Duration::from_secs(10),
        "podOptOut: false injects an opted-out Pod",
        || async {
            let got = dry_run_secrets(&sc, &a, team_a_image, &opted_out).await?;
            ensure!(got == ["team-a-pull"], "got {got:?}");
            Ok(())
        },
    )
    .await?;
    sc.note(format!(
        "podOptOut: false: the labelled Pod injected {took:?} after the reload"
    ));
    inst.reload(&inst.base.config).await?;
    inst.apply_webhook(&inst.base).await?;

    let found = violations.lock().unwrap_or_else(|e| e.into_inner()).clone();
    ensure!(
        found.is_empty(),
        "copies appeared outside their scope: {found:?}"
    );
    Ok(())
}

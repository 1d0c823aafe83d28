//! Issue 17 on the real API server, through the chart's RBAC: `credentialProviders` (a shell
//! script as the kubelet plugin keeps a source Secret filled, refreshed in place, its copy
//! following; a failing plugin keeps the last good credential while the controller's gauge,
//! then admission, say it is stale) and `credentialProbe`'s annotation (a registry in the
//! test rejects, then accepts, a source's credential; the webhook warns, then stops).
//!
//! Both switch the features on by reloading the Reload installation's config (its chart
//! values turn them on, so the RBAC is rendered; its starting config leaves them off).

use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, ensure};
use base64::Engine;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams};
use pullsecret_injector::core::names::{
    CREDENTIAL_PROVIDER_ANNOTATION, DOCKER_CONFIG_JSON, EXPIRES_AT_ANNOTATION,
    ISSUED_AT_ANNOTATION, PROBE_ANNOTATION, SOURCE_LABEL,
};
use serde_json::json;
use tokio::net::TcpListener;

use crate::api::{Cred, pod};
use crate::harness::{Label, Sc, eventually, path_str};
use crate::install::{with_features, without_credential_features};
use crate::process::run_binary;
use crate::sync::{copy_of, create_source, rotate};

/// The provider's Secret the Reload installation's chart values name (its RBAC names it).
pub const MINTED: &str = "reload-minted";

const PLUGIN: &str = r#"#!/bin/sh
cat >/dev/null
if [ -e fail ]; then echo "mint service unavailable" >&2; exit 1; fi
n=$(cat count 2>/dev/null || echo 0); n=$((n+1)); echo "$n" >count
printf '{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderResponse","cacheKeyType":"Registry","cacheDuration":"30s","auth":{"minted.example.com":{"username":"bot","password":"e2e-minted-pass-%s"}}}' "$n"
"#;

const FAILING: &str = r#"pullsecret_injector_credential_provider_failing{provider="test-plugin"}"#;

fn password(secret: &Secret) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(".dockerconfigjson")?;
    let config: serde_json::Value = serde_json::from_slice(&bytes.0).ok()?;
    config["auths"]["minted.example.com"]["password"]
        .as_str()
        .map(str::to_string)
}

pub async fn providers(sc: Sc) -> Result<()> {
    let inst = sc.inst.clone();
    let controller = inst.controller()?;
    let plugins = inst.dir.join("plugins");
    std::fs::create_dir_all(&plugins)?;
    let _ = std::fs::remove_file(plugins.join("fail"));
    let _ = std::fs::remove_file(plugins.join("count"));
    let plugin = plugins.join("test-plugin");
    std::fs::write(&plugin, PLUGIN)?;
    std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755))?;
    // What the plugin mints must appear in no log line (the journal checks at the end).
    sc.suite
        .journal
        .remember_secret((1..=20).map(|n| format!("e2e-minted-pass-{n}\"")));

    let base = without_credential_features(&inst.base.config);
    let providers = json!({
        "binDir": plugins.to_str().ok_or_else(|| anyhow!("plugin dir"))?,
        "providers": [{
            "name": "test-plugin",
            "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
            "matchImages": ["minted.example.com"],
            "defaultCacheDuration": "1h",
            "secret": MINTED,
            "images": ["minted.example.com/app"],
        }],
    });
    // Discovery turns the minted Secret's key into a rule; sync copies it.
    let config = format!(
        "{}credentialProviders: {providers}\n",
        with_features(&base, true, true, false)?
    );
    let x = sc.ns(Label::Enabled, &[]).await?;
    let own = inst.ns.clone();
    let api: Api<Secret> = Api::namespaced(sc.admin(), &own);
    {
        let (api, x, admin) = (api.clone(), x.clone(), sc.admin());
        let off = with_features(&base, false, false, false)?;
        let inst = inst.clone();
        sc.defer(async move {
            let _ = inst.reload(&off).await;
            let _ = api.delete(MINTED, &DeleteParams::default()).await;
            let _ = Api::<Secret>::namespaced(admin, &x)
                .delete(MINTED, &DeleteParams::default())
                .await;
        });
    }
    inst.reload(&config).await?;

    // 1. The controller creates the Secret: a labelled dockerconfigjson source with the
    // lifetime the plugin gave.
    let (created, took) = eventually(Duration::from_secs(20), "the minted Secret", || {
        let api = api.clone();
        async move {
            api.get_opt(MINTED)
                .await?
                .ok_or_else(|| anyhow!("no Secret {MINTED} yet"))
        }
    })
    .await?;
    sc.note(format!("minted Secret created {took:?} after the reload"));
    let meta = &created.metadata;
    let annotation = |key: &str| {
        meta.annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .cloned()
            .unwrap_or_default()
    };
    ensure!(created.type_.as_deref() == Some(DOCKER_CONFIG_JSON));
    ensure!(
        meta.labels
            .as_ref()
            .and_then(|l| l.get(SOURCE_LABEL))
            .map(String::as_str)
            == Some("true"),
        "labels {:?}",
        meta.labels
    );
    ensure!(annotation(CREDENTIAL_PROVIDER_ANNOTATION) == "test-plugin");
    let at = |key: &str| {
        pullsecret_injector::core::expiry::parse_time(&annotation(key))
            .ok_or_else(|| anyhow!("annotation {key}: {:?}", annotation(key)))
    };
    ensure!(
        at(EXPIRES_AT_ANNOTATION)? - at(ISSUED_AT_ANNOTATION)? == 30,
        "expires-at {} issued-at {}",
        annotation(EXPIRES_AT_ANNOTATION),
        annotation(ISSUED_AT_ANNOTATION)
    );
    let uid = created.metadata.uid.clone().unwrap_or_default();
    let first = password(&created).ok_or_else(|| anyhow!("no minted.example.com entry"))?;

    // 2. Sync copies it, discovery makes it a rule: a Pod gets it, with no warning.
    let pod_spec = pod("minted").image("minted.example.com/app").build();
    let copy = eventually(Duration::from_secs(20), "the copy in x", || {
        let (sc, x) = (&sc, &x);
        async move { copy_of(sc, x, MINTED).await }
    })
    .await?
    .0;
    let copy_uid = copy.metadata.uid.clone().unwrap_or_default();
    eventually(
        Duration::from_secs(10),
        "injection of the minted Secret",
        || {
            let (sc, x, pod_spec) = (&sc, &x, &pod_spec);
            async move {
                let created = sc.dry_run(x, pod_spec).await?;
                ensure!(created.secrets() == [MINTED], "got {:?}", created.secrets());
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

    // 3. Refreshed at half its life (15 s), in place; the copy follows, in place.
    let (refreshed, took) = eventually(Duration::from_secs(30), "a refresh", || {
        let (api, first) = (api.clone(), first.clone());
        async move {
            let secret = api.get(MINTED).await?;
            ensure!(
                password(&secret).is_some_and(|p| p != first),
                "not refreshed yet"
            );
            Ok(secret)
        }
    })
    .await?;
    sc.note(format!("refreshed {took:?} after the first check"));
    ensure!(
        refreshed.metadata.uid.as_deref() == Some(uid.as_str()),
        "the source's UID changed: {:?} -> {:?}",
        uid,
        refreshed.metadata.uid
    );
    let copy = eventually(Duration::from_secs(20), "the copy to follow", || {
        let (sc, x, refreshed) = (&sc, &x, &refreshed);
        async move {
            let copy = copy_of(sc, x, MINTED).await?;
            ensure!(copy.data == refreshed.data, "copy not updated yet");
            Ok(copy)
        }
    })
    .await?
    .0;
    ensure!(
        copy.metadata.uid.as_deref() == Some(copy_uid.as_str()),
        "the copy was replaced, not updated in place"
    );

    // 4. The plugin fails: the gauge says so, the last good credential stays, and admission
    // warns in the credential's last third, then once it has expired; never fewer secrets.
    std::fs::write(plugins.join("fail"), "")?;
    eventually(Duration::from_secs(40), "the failing gauge", || async {
        let failing = controller.metric(FAILING).await?;
        ensure!(failing == 1.0, "{FAILING} = {failing}");
        Ok(())
    })
    .await?;
    let kept = api.get(MINTED).await?;
    let warns = |needle: &'static str| {
        let (sc, x, pod_spec) = (&sc, &x, &pod_spec);
        async move {
            let created = sc.dry_run(x, pod_spec).await?;
            ensure!(created.secrets() == [MINTED], "got {:?}", created.secrets());
            ensure!(
                created.warned(needle),
                "no warning with {needle:?}: {:?}",
                created.warnings
            );
            Ok(())
        }
    };
    let (_, took) = eventually(Duration::from_secs(40), "the late-refresh warning", || {
        warns("two thirds into its lifetime and not renewed")
    })
    .await?;
    sc.note(format!("late-refresh warning {took:?} after the gauge"));
    eventually(Duration::from_secs(30), "the expired warning", || {
        warns("expired at")
    })
    .await?;
    let still = api.get(MINTED).await?;
    ensure!(
        still.data == kept.data,
        "the Secret's credential changed while the plugin failed"
    );

    // 5. The plugin recovers: a new credential, the gauge back to 0, no warning.
    std::fs::remove_file(plugins.join("fail"))?;
    eventually(Duration::from_secs(40), "recovery", || {
        let (api, kept, sc, x, pod_spec) = (api.clone(), &kept, &sc, &x, &pod_spec);
        async move {
            let failing = controller.metric(FAILING).await?;
            ensure!(failing == 0.0, "{FAILING} = {failing}");
            ensure!(api.get(MINTED).await?.data != kept.data, "not refreshed");
            let created = sc.dry_run(x, pod_spec).await?;
            ensure!(
                created.warnings.is_empty(),
                "warnings {:?}",
                created.warnings
            );
            Ok(())
        }
    })
    .await?;
    let runs = controller.metrics().await?;
    ensure!(
        !runs.contains("e2e-minted-pass"),
        "a minted password is in the metrics"
    );
    Ok(())
}

/// A registry's `/v2/` that accepts exactly `e2e:right-pass` (Basic) on a loopback port.
async fn basic_registry() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|request: Request<Incoming>| {
                    let want = format!(
                        "Basic {}",
                        base64::engine::general_purpose::STANDARD.encode("e2e:right-pass")
                    );
                    let ok = request
                        .headers()
                        .get(hyper::header::AUTHORIZATION)
                        .is_some_and(|v| v.as_bytes() == want.as_bytes());
                    let mut response = Response::new(Full::new(Bytes::from_static(b"{}")));
                    if !ok {
                        *response.status_mut() = hyper::StatusCode::UNAUTHORIZED;
                        response.headers_mut().insert(
                            hyper::header::WWW_AUTHENTICATE,
                            hyper::header::HeaderValue::from_static("Basic realm=\"e2e\""),
                        );
                    }
                    async move { Ok::<_, Infallible>(response) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(port)
}

pub async fn probe(sc: Sc) -> Result<()> {
    let inst = sc.inst.clone();
    let port = basic_registry().await?;
    let registry = format!("127.0.0.1:{port}");
    let base = without_credential_features(&inst.base.config);
    let x = sc.ns(Label::Enabled, &[]).await?;
    // `http://`: the probe speaks plain HTTP only to keys that say so.
    let key = format!("http://{registry}");
    let wrong = Cred::new(&key, "wrong-pass");
    sc.suite.remember_cred(&wrong);
    create_source(&sc, "reload-probed", &wrong).await?;
    {
        let off = with_features(&base, false, false, false)?;
        let inst = inst.clone();
        sc.defer(async move {
            let _ = inst.reload(&off).await;
        });
    }
    inst.reload(&format!(
        "{}credentialProbe: true\n",
        with_features(&base, true, false, false)?
    ))
    .await?;
    let api: Api<Secret> = Api::namespaced(sc.admin(), &inst.ns);
    let annotation = || {
        let api = api.clone();
        async move {
            let secret = api.get("reload-probed").await?;
            Ok::<_, anyhow::Error>(
                secret
                    .metadata
                    .annotations
                    .and_then(|a| a.get(PROBE_ANNOTATION).cloned()),
            )
        }
    };
    // 1. Rejected: the controller annotates the source (through the chart's RBAC).
    let (value, took) = eventually(Duration::from_secs(30), "the probe annotation", || async {
        annotation()
            .await?
            .ok_or_else(|| anyhow!("no {PROBE_ANNOTATION} yet"))
    })
    .await?;
    sc.note(format!("annotated {took:?} after the reload: {value}"));
    ensure!(
        value.starts_with(&format!("rejected {registry} ")),
        "{PROBE_ANNOTATION}: {value:?}"
    );
    let pod_spec = pod("probed").image(&format!("{registry}/app")).build();
    eventually(Duration::from_secs(10), "the rejection warning", || {
        let (sc, x, pod_spec) = (&sc, &x, &pod_spec);
        async move {
            let created = sc.dry_run(x, pod_spec).await?;
            ensure!(
                created.secrets() == ["reload-probed"],
                "got {:?}",
                created.secrets()
            );
            ensure!(
                created.warned("rejected the credential in Secret reload-probed"),
                "warnings {:?}",
                created.warnings
            );
            Ok(())
        }
    })
    .await?;

    // `audit` reads the same annotation: the source's line (the Pod itself got its Secret:
    // nothing to add).
    sc.create_pod(&x, &pod_spec).await?;
    let kubeconfig = path_str(&sc.suite.env.kubeconfig)?.to_string();
    let config = path_str(&inst.config_path)?.to_string();
    let (status, out, err) = run_binary(
        &sc.suite.env.bin,
        &[
            "audit",
            "--kubeconfig",
            &kubeconfig,
            "--config",
            &config,
            "--injector-namespace",
            &inst.ns,
            "-n",
            &x,
        ],
    )
    .await?;
    ensure!(status.success(), "audit failed: {err}");
    let report = format!("{out}{err}");
    let needle = format!(
        "source Secret reload-probed: rejected by its registry at the credential probe (rejected {registry} "
    );
    ensure!(
        report.contains(&needle),
        "audit lacks {needle:?}:\n{report}"
    );

    // 2. Renewed: probed at once, accepted, the annotation removed, no warning.
    let right = Cred::new(&key, "right-pass");
    rotate(&sc, &inst.ns, "reload-probed", &right).await?;
    eventually(
        Duration::from_secs(30),
        "the annotation removed",
        || async {
            let value = annotation().await?;
            ensure!(value.is_none(), "{PROBE_ANNOTATION}: {value:?}");
            Ok(())
        },
    )
    .await?;
    eventually(Duration::from_secs(10), "no warning", || {
        let (sc, x, pod_spec) = (&sc, &x, &pod_spec);
        async move {
            let created = sc.dry_run(x, pod_spec).await?;
            ensure!(
                created.secrets() == ["reload-probed"],
                "got {:?}",
                created.secrets()
            );
            ensure!(
                created.warnings.is_empty(),
                "warnings {:?}",
                created.warnings
            );
            Ok(())
        }
    })
    .await
    .context("after the renewal")?;
    let accepted = inst
        .controller()?
        .metric(&format!(
            r#"pullsecret_injector_credential_accepted{{secret="reload-probed",registry="{registry}"}}"#
        ))
        .await?;
    ensure!(accepted == 1.0, "credential_accepted = {accepted}");
    Ok(())
}

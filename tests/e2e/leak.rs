//! Issue 15.7: secret material never leaks. On the `sync` installation, whose webhook and
//! controller log at `trace` for every crate, a credential carrying a marker string (in its
//! password, and in the userinfo of its docker config key, `https://robot:MARKER@host`) goes
//! through discovery, sync, admission and the offline credential check, and a second source
//! Secret whose key does not parse carries the marker in that key's userinfo and its auth. The marker must appear
//! in no log line (the harness checks every process's log after the scenario, and so does
//! this), no Event, no metric and no warning, while the credential does its job.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Result, ensure};
use base64::Engine;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Event, Secret};
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta};
use pullsecret_injector::core::names::{DOCKER_CONFIG_JSON, SOURCE_LABEL};

use crate::api::{Cred, pod};
use crate::harness::{Label, Sc, eventually};
use crate::process::run_binary;

const MARKER: &str = "psi-MARKER-d41d8c";

pub async fn marker(sc: Sc) -> Result<()> {
    sc.suite.journal.remember_secret([MARKER.to_string()]);
    let registry = format!("https://robot:{MARKER}@marker.example.com");
    let cred = Cred::new(&registry, &format!("{MARKER}-password"));
    let source = crate::sync::create_source(&sc, "marker-cred", &cred).await?;
    // A source whose key does not parse (whitespace in the host; the API server checks only
    // that the payload is JSON), the marker in the key's userinfo and in its credential.
    let broken = Secret {
        metadata: ObjectMeta {
            name: Some("marker-broken".into()),
            namespace: Some(sc.inst.ns.clone()),
            labels: Some(BTreeMap::from([(SOURCE_LABEL.into(), "true".into())])),
            ..Default::default()
        },
        type_: Some(DOCKER_CONFIG_JSON.into()),
        data: Some(BTreeMap::from([(
            ".dockerconfigjson".into(),
            ByteString(
                format!(r#"{{"auths": {{"robot:{MARKER}@bad host": {{"auth": "{MARKER}"}}}}}}"#)
                    .into_bytes(),
            ),
        )])),
        ..Default::default()
    };
    sc.create_secret(&sc.inst.ns, &broken).await?;
    let (admin, own) = (sc.admin(), sc.inst.ns.clone());
    sc.defer(async move {
        let _ = Api::<Secret>::namespaced(admin, &own)
            .delete("marker-broken", &DeleteParams::default())
            .await;
    });

    // Discovery: the redacted key still serves its host; admission injects it.
    let ns = sc.ns(Label::Enabled, &[]).await?;
    let app = pod("app").image("marker.example.com/team/app:1").build();
    eventually(
        Duration::from_secs(10),
        "the discovered rule injects",
        || {
            let (sc, ns, app) = (&sc, &ns, &app);
            async move {
                let got = sc.dry_run(ns, app).await?.secrets();
                ensure!(got == ["marker-cred"], "got {got:?}");
                Ok(())
            }
        },
    )
    .await?;
    let created = sc.create_pod(&ns, &app).await?;
    ensure!(
        created.secrets() == ["marker-cred"],
        "{:?}",
        created.secrets()
    );
    let mut seen = created.warnings.join("\n");
    // Sync: the copy arrives, byte for byte.
    let (copy, _) = eventually(Duration::from_secs(10), "sync's copy", || {
        let (sc, ns) = (&sc, &ns);
        async move { crate::sync::copy_of(sc, ns, "marker-cred").await }
    })
    .await?;
    ensure!(
        copy.data == source.data,
        "the copy's data differs from its source"
    );

    // The credential check, offline, at trace: the Secret file through check-config -f.
    let file = sc.inst.dir.join("marker-secret.json");
    let manifest = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "marker-cred"},
        "type": DOCKER_CONFIG_JSON,
        "data": {".dockerconfigjson": base64::engine::general_purpose::STANDARD.encode(cred.payload())},
    });
    std::fs::write(&file, serde_json::to_vec(&manifest)?)?;
    let config = sc.inst.config_path.to_string_lossy().into_owned();
    let path = file.to_string_lossy().into_owned();
    let (_, stdout, stderr) = run_binary(
        &sc.suite.env.bin,
        &[
            "check-config",
            "--config",
            &config,
            "-f",
            &path,
            "--log-level",
            "trace",
        ],
    )
    .await?;
    seen.push_str(&stdout);
    seen.push_str(&stderr);

    // Every Event in the cluster, and both processes' metrics and logs.
    for event in Api::<Event>::all(sc.admin())
        .list(&ListParams::default())
        .await?
    {
        seen.push_str(&serde_json::to_string(&event)?);
    }
    let mut traced = false;
    for process in sc.inst.processes() {
        seen.push_str(&process.metrics().await?);
        let log = process.log_since(0);
        traced |= log.contains("TRACE");
        seen.push_str(&log);
    }
    ensure!(
        traced,
        "no TRACE line in the installation's logs: not run at trace level"
    );
    ensure!(
        !seen.contains(MARKER),
        "the marker appears: {}",
        seen.lines()
            .filter(|l| l.contains(MARKER))
            .take(3)
            .collect::<Vec<_>>()
            .join(" | ")
    );
    // The broken source was seen and refused (else this proved nothing about a failed parse).
    let unparsable = sc
        .inst
        .controllers
        .iter()
        .chain(&sc.inst.injectors)
        .map(|p| p.log_since(0))
        .any(|log| log.contains("marker-broken"));
    ensure!(
        unparsable,
        "no process reported the broken source marker-broken"
    );
    sc.note(format!(
        "{} bytes of logs, Events, metrics and output checked",
        seen.len()
    ));
    Ok(())
}

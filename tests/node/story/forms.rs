//! Issue 10.3, the `--docker-server` forms users type, and the injector's credential check
//! against the kubelet's verdict. Each form gets its own source Secret
//! (`kubectl create secret docker-registry regcred-form-SLUG --docker-server=FORM`, labelled),
//! its own config rule `REGISTRY/forms/SLUG` naming it, and its own copy of the app image at
//! `REGISTRY/forms/SLUG/app:1`; one Pod per form in an injected namespace gets exactly that
//! Secret. The injector predicts (gauge, admission warning, `check-config`) and the kubelet
//! decides (Running, or the registry's 401 with the Secret in hand).
//!
//! Why a rule per form and not one rule `REGISTRY` naming the Secret: every usable form is also
//! discovered as a rule `REGISTRY`, tying with the story's `regcred` (ties go to the first
//! Secret by name; `regcred-form-*` sort after `regcred`, so the story's Pods keep `regcred`).

use std::time::Duration;

use anyhow::{Result, anyhow, ensure};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use pullsecret_injector::core::names::SOURCE_LABEL;
use serde_json::{Value, json};

use crate::harness::{Env, Sc, eventually, path_str, read_from, secs};
use crate::install::{self, NAMESPACE};
use crate::kubelet::{self, PULL_TIMEOUT};
use crate::tools::{self, kubectl};

pub struct Form {
    pub slug: &'static str,
    /// What the user passes as `--docker-server`.
    pub server: String,
    /// The README's table: does the kubelet use it for `REGISTRY/forms/SLUG/app`?
    pub used: bool,
}

impl Form {
    pub fn secret(&self) -> String {
        format!("regcred-form-{}", self.slug)
    }

    pub fn rule(&self, env: &Env) -> String {
        format!("{}/forms/{}", env.registry, self.slug)
    }

    pub fn image(&self, env: &Env) -> String {
        format!("{}/app:1", self.rule(env))
    }
}

pub fn forms(env: &Env) -> Vec<Form> {
    let reg = &env.registry;
    let (host, port) = reg.rsplit_once(':').unwrap_or((reg.as_str(), "5000"));
    let form = |slug, server: String, used| Form { slug, server, used };
    vec![
        form("host-port", reg.clone(), true),
        form("https", format!("https://{reg}"), true),
        form("https-v1", format!("https://{reg}/v1/"), true),
        form("http", format!("http://{reg}"), true),
        form("http-v2", format!("http://{reg}/v2/"), true),
        // The kubelet compares a key's path as a string prefix of the image's.
        form("path", format!("{reg}/forms"), true),
        form("localhost", format!("localhost:{port}"), false),
        form("no-port", host.to_string(), false),
        form("other-path", format!("{reg}/other"), false),
    ]
}

/// The chart's `config.rules` for the forms.
pub fn rules(env: &Env) -> Vec<Value> {
    forms(env)
        .iter()
        .map(|f| json!({"registry": f.rule(env), "secrets": [f.secret()]}))
        .collect()
}

fn list(forms: &[&Form]) -> String {
    forms
        .iter()
        .map(|f| f.server.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

pub async fn docker_server_forms(sc: Sc) -> Result<()> {
    let env = sc.env();
    let client = sc.admin();
    install::installation(sc.suite).await?;
    let forms = forms(env);
    let used: Vec<&Form> = forms.iter().filter(|f| f.used).collect();
    let unused: Vec<&Form> = forms.iter().filter(|f| !f.used).collect();
    let ns = sc.ns("forms", true).await?;
    futures_util::future::try_join_all(
        forms
            .iter()
            .map(|f| async move { tools::push_app(env, &format!("forms/{}/app", f.slug)).await }),
    )
    .await?;

    sc.step("3.6", format!("kubectl create secret docker-registry regcred-form-* --docker-server=each form, labelled {SOURCE_LABEL}=true; sync copies all {} into {ns}", forms.len()), async {
        futures_util::future::try_join_all(forms.iter().map(|f| async move {
            tools::create_docker_registry_secret(env, NAMESPACE, &f.secret(), &f.server).await?;
            kubectl(env, &["label", "secret", &f.secret(), "-n", NAMESPACE, &format!("{SOURCE_LABEL}=true")]).await
        }))
        .await?;
        let secrets = Api::<Secret>::namespaced(client.clone(), &ns);
        let (_, took) = eventually(Duration::from_secs(60), "every copy", || async {
            for f in &forms {
                secrets.get(&f.secret()).await.map_err(|e| anyhow!("{}: {e}", f.secret()))?;
            }
            Ok(())
        })
        .await?;
        sc.note(format!("copies complete {}", secs(took)));
        Ok(())
    })
    .await?;

    sc.step(
        "3.6",
        format!(
            "offline, check-config -f (the Secret as kubectl wrote it) exits 1 exactly for [{}]",
            list(&unused)
        ),
        async {
            let config = env.run.join("forms-config.yaml");
            let cm = kubectl(
                env,
                &[
                    "get",
                    "configmap",
                    install::FULLNAME,
                    "-n",
                    NAMESPACE,
                    "-o",
                    "jsonpath={.data.config\\.yaml}",
                ],
            )
            .await?;
            std::fs::write(&config, cm)?;
            let mut wrong = Vec::new();
            for f in &forms {
                let file = env.run.join(format!("{}.yaml", f.secret()));
                std::fs::write(
                    &file,
                    kubectl(
                        env,
                        &["get", "secret", &f.secret(), "-n", NAMESPACE, "-o", "yaml"],
                    )
                    .await?,
                )?;
                let out = tools::run(
                    path_str(&env.bin)?,
                    &[
                        "check-config",
                        "--config",
                        path_str(&config)?,
                        "-f",
                        path_str(&file)?,
                    ],
                    None,
                )
                .await?;
                if out.ok != f.used {
                    wrong.push(format!(
                        "{} ({}): exit {}: {}{}",
                        f.server,
                        f.secret(),
                        if out.ok { 0 } else { 1 },
                        out.stdout.trim(),
                        out.stderr.trim()
                    ));
                }
            }
            ensure!(
                wrong.is_empty(),
                "check-config disagrees: {}",
                wrong.join(" | ")
            );
            Ok(())
        },
    )
    .await?;

    sc.step("3.7", format!("pullsecret_injector_rule_credential_mismatch{{rule}} on both injectors (GET PodIP:8080/metrics from the host): 1 for [{}], 0 for [{}]", list(&unused), list(&used)), async {
        let (_, took) = eventually(Duration::from_secs(30), "the gauges", || async {
            for p in install::pods(&client).await? {
                let text = p.metrics().await?;
                for f in &forms {
                    let series = format!("pullsecret_injector_rule_credential_mismatch{{rule=\"{}\"}}", f.rule(env));
                    let got = crate::api::metric(&text, &series);
                    let want = if f.used { 0.0 } else { 1.0 };
                    ensure!(got == want, "{}: {series} = {got}, want {want}", p.name);
                }
            }
            Ok(())
        })
        .await?;
        let _ = took;
        Ok(())
    })
    .await?;

    let pods = sc
        .step("3.7", format!("a Pod per form in {ns} (no imagePullSecrets, imagePullPolicy Always): each stored with its form's Secret; the admission warning `the kubelet would not use Secret ...` exactly for [{}]", list(&unused)), async {
            let created = futures_util::future::try_join_all(forms.iter().map(|f| {
                let client = client.clone();
                let ns = ns.clone();
                async move {
                    let pod = kubelet::app_pod(&format!("form-{}", f.slug), &f.image(env), "Always", &[])?;
                    crate::api::create_pod(&client, &ns, &pod, false).await
                }
            }))
            .await?;
            let mut wrong = Vec::new();
            for (f, c) in forms.iter().zip(&created) {
                let needle = format!("the kubelet would not use Secret {} (rule {})", f.secret(), f.rule(env));
                if c.secrets() != [f.secret()] {
                    wrong.push(format!("{} stored with {:?}", c.name(), c.secrets()));
                }
                if c.warned(&needle) == f.used {
                    wrong.push(format!("{} ({}): warnings {:?}", c.name(), f.server, c.warnings));
                }
            }
            ensure!(wrong.is_empty(), "{}", wrong.join(" | "));
            if let Some(c) = created.iter().zip(&forms).find(|(_, f)| !f.used).map(|(c, _)| c) {
                sc.note(format!("kubectl prints: Warning: {}", c.warnings.join(" | ")));
            }
            Ok(created.into_iter().map(|c| c.name().to_string()).collect::<Vec<_>>())
        })
        .await?;

    sc.step(
        "3.8",
        format!("the kubelet agrees: Running for [{}]", list(&used)),
        async {
            let took = futures_util::future::try_join_all(
                forms
                    .iter()
                    .zip(&pods)
                    .filter(|(f, _)| f.used)
                    .map(|(_, p)| {
                        let client = client.clone();
                        let ns = ns.clone();
                        async move { kubelet::await_running(&client, &ns, p, PULL_TIMEOUT).await }
                    }),
            )
            .await?;
            let max = took.iter().max().copied().unwrap_or_default();
            sc.note(format!("slowest Running {} after creation", secs(max)));
            Ok(())
        },
    )
    .await?;

    sc.step("3.8", format!("and for [{}]: ErrImagePull with the registry's 401 although the kubelet had the Secret (no `Unable to retrieve pull secret` in its log)", list(&unused)), async {
        for (f, pod) in forms.iter().zip(&pods).filter(|(f, _)| !f.used) {
            let mut name = pod.clone();
            for attempt in 1..=2 {
                kubelet::await_pull_failure(&client, &ns, &name, PULL_TIMEOUT).await?;
                kubelet::await_401(&client, &ns, &name).await?;
                let log = read_from(&env.kubelet_log(), 0);
                if !kubelet::kubelet_lost_secret(&log, &ns, &name) {
                    break;
                }
                // The Node authorizer race: the kubelet pulled without the Secret, so this 401
                // proves nothing. Once more with a new Pod.
                ensure!(attempt == 1, "{name}: the kubelet could not read its pull Secret twice");
                sc.note(format!("{name}: the kubelet could not read its Secret (Node authorizer race); retried"));
                name = format!("{pod}-again");
                let again = kubelet::app_pod(&name, &f.image(env), "Always", &[])?;
                crate::api::create_pod(&client, &ns, &again, false).await?;
            }
        }
        Ok(())
    })
    .await?;
    Ok(())
}

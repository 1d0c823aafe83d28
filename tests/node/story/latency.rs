//! Issue 10.5, latency as users feel it: from the apply of a 3-replica Deployment (private
//! image, imagePullPolicy Always: every Pod pulls, with its credential) to all its Pods Running,
//! with the injector (namespace labelled, the Secret injected and copied by sync) and without
//! (an unlabelled namespace whose Pods list the Secret themselves). Runs alternate between the
//! two; the table goes to DIR/story/latency.md and into the notes.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};

use crate::harness::{Sc, eventually, force, read_from};
use crate::install;
use crate::kubelet::{self, PULL_TIMEOUT, State};
use crate::operations::injected_ns;
use crate::story::REGCRED;
use crate::tools;

const REPLICAS: usize = 3;
const POLICY: &str = "Always";

struct Run {
    /// All Pods created (admitted: the webhook answered for each).
    created: Duration,
    /// All Pods Running.
    running: Duration,
    /// The kubelet could not read a pull Secret in time (Node authorizer race) for a Pod.
    race: bool,
}

pub async fn latency(sc: Sc) -> Result<()> {
    let env = sc.env();
    install::installation(sc.suite).await?;
    let injected = injected_ns(&sc, "lat-injected").await?;
    let own = sc.ns("lat-own", false).await?;
    tools::create_docker_registry_secret(env, &own, REGCRED, &env.registry).await?;
    let runs = env.latency_runs;
    let before = admission_times(&sc.admin()).await?;
    let mut with = Vec::new();
    let mut without = Vec::new();
    sc.step("5.1", format!("{runs} runs each, alternating: apply a Deployment of {REPLICAS} Pods ({}, imagePullPolicy {POLICY}) until all are Running, with the injector and with the Secret listed in the manifest", env.app()), async {
        for i in 0..runs {
            let order = if i % 2 == 0 { [true, false] } else { [false, true] };
            for injector in order {
                let (ns, secrets): (&str, &[&str]) = if injector { (&injected, &[]) } else { (&own, &[REGCRED]) };
                let run = once(&sc, ns, &format!("lat-{i}"), secrets).await?;
                if injector { with.push(run) } else { without.push(run) }
            }
        }
        Ok(())
    })
    .await?;
    let after = admission_times(&sc.admin()).await?;
    let mut table = table(&with, &without);
    let mean = |sum: f64, count: f64| {
        if count > 0.0 {
            1000.0 * sum / count
        } else {
            0.0
        }
    };
    table.push_str(&format!(
        "\nPer admission, over the {} webhook calls of the injected runs: {:.1} ms in the injector (pullsecret_injector_admission_duration_seconds), {:.1} ms as the API server saw it, TLS and network included (apiserver_admission_webhook_admission_duration_seconds).\n",
        after.apiserver_count - before.apiserver_count,
        mean(after.injector_sum - before.injector_sum, after.injector_count - before.injector_count),
        mean(after.apiserver_sum - before.apiserver_sum, after.apiserver_count - before.apiserver_count),
    ));
    for line in table.lines() {
        sc.note(line.to_string());
    }
    std::fs::write(env.run.join("latency.md"), &table)?;
    Ok(())
}

/// One Deployment applied (server-side apply, what `kubectl apply --server-side` sends),
/// timed to all Pods created and to all Running, then deleted with its Pods.
async fn once(sc: &Sc, ns: &str, name: &str, secrets: &[&str]) -> Result<Run> {
    let client = sc.admin();
    let env = sc.env();
    let deployments = Api::<Deployment>::namespaced(client.clone(), ns);
    let deployment = kubelet::deployment(name, &env.app(), REPLICAS as i32, POLICY, secrets)?;
    let started = Instant::now();
    deployments
        .patch(
            name,
            &PatchParams::apply("kubectl").force(),
            &Patch::Apply(&deployment),
        )
        .await?;
    let mut created = None;
    let running = loop {
        let pods = kubelet::pods_of(&client, ns, name).await?;
        if pods.len() >= REPLICAS && created.is_none() {
            created = Some(started.elapsed());
        }
        if pods.len() == REPLICAS && pods.iter().all(|p| kubelet::state(p) == State::Running) {
            break started.elapsed();
        }
        ensure!(
            started.elapsed() < PULL_TIMEOUT,
            "{ns}/{name}: not all Running within {PULL_TIMEOUT:?}: {:?}",
            pods.iter()
                .map(|p| (kubelet::name(p), kubelet::state(p)))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let pods = kubelet::pods_of(&client, ns, name).await?;
    for p in &pods {
        ensure!(
            crate::api::pull_secrets(p) == [REGCRED],
            "{} has {:?}",
            kubelet::name(p),
            crate::api::pull_secrets(p)
        );
    }
    let log = read_from(&env.kubelet_log(), 0);
    let race = pods
        .iter()
        .any(|p| kubelet::kubelet_lost_secret(&log, ns, &kubelet::name(p)));
    // Gone before the next run: the Deployment, its ReplicaSet (which would recreate them) and
    // its Pods, forced (their graceful deletion would overlap the next run).
    deployments
        .delete(name, &DeleteParams::background())
        .await?;
    let pod_api = Api::<Pod>::namespaced(client.clone(), ns);
    let replica_sets = Api::<ReplicaSet>::namespaced(client.clone(), ns);
    let selector = ListParams::default().labels(&format!("app={name}"));
    eventually(
        Duration::from_secs(60),
        "the Deployment's Pods gone",
        || async {
            // Only once the ReplicaSet is gone: before, it would recreate what is deleted.
            let sets = replica_sets.list(&selector).await?.items.len();
            if sets == 0 {
                let _ = pod_api.delete_collection(&force(), &selector).await;
            }
            let left = pod_api.list(&selector).await?.items.len();
            ensure!(
                sets == 0 && left == 0,
                "{sets} ReplicaSets, {left} Pods left"
            );
            Ok(())
        },
    )
    .await?;
    Ok(Run {
        created: created.unwrap_or(running),
        running,
        race,
    })
}

fn stats(values: &mut [f64]) -> (f64, f64, f64) {
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    let median = if n == 0 {
        0.0
    } else if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    };
    (
        median,
        values.first().copied().unwrap_or(0.0),
        values.last().copied().unwrap_or(0.0),
    )
}

fn table(with: &[Run], without: &[Run]) -> String {
    let mut out = String::from(
        "| | runs | all Pods created: median (min - max) | all Pods Running: median (min - max) | each run, s |\n|---|---|---|---|---|\n",
    );
    for (label, runs) in [
        ("with the injector (injected, sync's copy)", with),
        ("without (imagePullSecrets in the manifest)", without),
    ] {
        let mut created: Vec<f64> = runs.iter().map(|r| r.created.as_secs_f64()).collect();
        let mut running: Vec<f64> = runs.iter().map(|r| r.running.as_secs_f64()).collect();
        let each = runs
            .iter()
            .map(|r| {
                format!(
                    "{:.2}{}",
                    r.running.as_secs_f64(),
                    if r.race { "*" } else { "" }
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let (cm, cl, ch) = stats(&mut created);
        let (rm, rl, rh) = stats(&mut running);
        out.push_str(&format!(
            "| {label} | {} | {cm:.2} s ({cl:.2} - {ch:.2}) | {rm:.2} s ({rl:.2} - {rh:.2}) | {each} |\n",
            runs.len()
        ));
    }
    if with.iter().chain(without).any(|r| r.race) {
        out.push_str("\n\\* the kubelet could not read a Pod's pull Secret in time (Node authorizer race), pulled without it and retried after its back-off.\n");
    }
    out
}

/// Admission time so far: the injectors' own histogram (every Pod) and the API server's
/// histogram of its calls to the inject webhook (sum, count).
#[derive(Default)]
struct AdmissionTimes {
    injector_sum: f64,
    injector_count: f64,
    apiserver_sum: f64,
    apiserver_count: f64,
}

async fn admission_times(client: &kube::Client) -> Result<AdmissionTimes> {
    let mut times = AdmissionTimes::default();
    for p in install::pods(client).await? {
        let text = p.metrics().await?;
        times.injector_sum += sum_of(
            &text,
            "pullsecret_injector_admission_duration_seconds_sum",
            "endpoint=\"mutate\"",
        );
        times.injector_count += sum_of(
            &text,
            "pullsecret_injector_admission_duration_seconds_count",
            "endpoint=\"mutate\"",
        );
    }
    let text = client
        .request_text(axum::http::Request::get("/metrics").body(Vec::new())?)
        .await?;
    let hook = "name=\"inject.pullsecret-injector.io\"";
    times.apiserver_sum = sum_of(
        &text,
        "apiserver_admission_webhook_admission_duration_seconds_sum",
        hook,
    );
    times.apiserver_count = sum_of(
        &text,
        "apiserver_admission_webhook_admission_duration_seconds_count",
        hook,
    );
    Ok(times)
}

/// Prometheus text: the sum of the samples of `name` whose labels contain `label`.
fn sum_of(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

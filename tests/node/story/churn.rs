//! Pods created throughout an operation: one real Pod a second (it must get `regcred` and
//! run: the kubelet pulls with it) and a server-side dry run every 200 ms in between (the same
//! admission, nothing stored), so a short window of failed webhook calls is seen too.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use tokio::task::JoinHandle;

use crate::api::create_pod;
use crate::harness::{eventually, force, secs};
use crate::kubelet::{self, PULL_TIMEOUT};

const LABEL: &str = "story-churn";

/// One admission: a real Pod (`name`) or a dry run.
#[derive(Debug, Clone)]
pub struct Made {
    pub at: Duration,
    pub name: Option<String>,
    pub secrets: Vec<String>,
    pub error: Option<String>,
}

pub struct Churn {
    ns: String,
    secret: String,
    stop: Arc<AtomicBool>,
    /// Admissions answered so far (or refused), real and dry runs.
    answered: Arc<AtomicUsize>,
    task: JoinHandle<Vec<Made>>,
    started: Instant,
}

/// What happened during the operation.
pub struct Summary {
    pub pods: usize,
    pub dry_runs: usize,
    /// Admissions that did not get the secret, or failed: `(seconds since start, what)`.
    pub missed: Vec<(f64, String)>,
    pub slowest_running: Duration,
}

impl Summary {
    pub fn describe(&self) -> String {
        format!(
            "{} Pods created (1/s) and {} dry runs (5/s); {} without regcred or refused; slowest Pod Running {} after creation",
            self.pods,
            self.dry_runs,
            self.missed.len(),
            secs(self.slowest_running)
        )
    }

    /// The span of the misses (first to last), when there were any.
    pub fn window(&self) -> Option<(f64, f64)> {
        let first = self.missed.first()?.0;
        let last = self.missed.last()?.0;
        Some((first, last))
    }
}

impl Churn {
    pub fn start(client: &kube::Client, ns: &str, image: &str, secret: &str) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let mut pod = kubelet::app_pod("churn-", image, "Always", &[])?;
        pod.metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert("app".into(), LABEL.into());
        let task = {
            let (client, ns, stop, answered) = (
                client.clone(),
                ns.to_string(),
                stop.clone(),
                answered.clone(),
            );
            tokio::spawn(async move {
                let mut made = Vec::new();
                let mut tick = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let real = tick.is_multiple_of(5);
                    tick += 1;
                    let at = started.elapsed();
                    let (name, secrets, error) = match create_pod(&client, &ns, &pod, !real).await {
                        Ok(c) => (real.then(|| c.name().to_string()), c.secrets(), None),
                        Err(e) => (None, Vec::new(), Some(format!("{e:#}"))),
                    };
                    made.push(Made {
                        at,
                        name: if real { name } else { None },
                        secrets,
                        error,
                    });
                    answered.fetch_add(1, Ordering::SeqCst);
                    let next = Duration::from_millis(200 * tick);
                    if let Some(wait) = next.checked_sub(started.elapsed()) {
                        // Pacing the load (one admission every 200 ms), not a wait.
                        tokio::time::sleep(wait).await;
                    }
                }
                made
            })
        };
        Ok(Self {
            ns: ns.to_string(),
            secret: secret.to_string(),
            stop,
            answered,
            task,
            started,
        })
    }

    /// Waits until `n` more admissions than now have been answered (a stuck API server or
    /// churn fails after a minute): the operation has traffic on both sides of a moment.
    pub async fn await_more(&self, n: usize, what: &str) -> Result<()> {
        let from = self.answered.load(Ordering::SeqCst);
        eventually(Duration::from_secs(60), what, || async {
            let now = self.answered.load(Ordering::SeqCst) - from;
            ensure!(now >= n, "{now} of {n} admissions answered");
            Ok(())
        })
        .await?;
        Ok(())
    }

    /// Stops creating, waits until every real Pod that got the secret is Running, deletes them.
    pub async fn finish(self, client: &kube::Client) -> Result<Summary> {
        self.stop.store(true, Ordering::SeqCst);
        let made = self.task.await?;
        let mut missed = Vec::new();
        let mut pods = Vec::new();
        for m in &made {
            let what = m.name.clone().unwrap_or_else(|| "dry run".into());
            if let Some(e) = &m.error {
                missed.push((m.at.as_secs_f64(), format!("{what}: {e}")));
            } else if m.secrets != [self.secret.clone()] {
                missed.push((
                    m.at.as_secs_f64(),
                    format!("{what} stored with {:?}", m.secrets),
                ));
            } else if let Some(name) = &m.name {
                pods.push((name.clone(), m.at));
            }
        }
        let dry_runs = made.iter().filter(|m| m.name.is_none()).count();
        let real = made.len() - dry_runs;
        let started = self.started;
        let took = futures_util::future::join_all(pods.iter().map(|(name, at)| {
            let (client, ns) = (client.clone(), self.ns.clone());
            async move {
                kubelet::await_running(&client, &ns, name, PULL_TIMEOUT).await?;
                // From its creation, not from now.
                anyhow::Ok(started.elapsed().saturating_sub(*at))
            }
        }))
        .await;
        let mut slowest = Duration::ZERO;
        let mut not_running = Vec::new();
        for ((name, _), t) in pods.iter().zip(took) {
            match t {
                Ok(t) => slowest = slowest.max(t),
                Err(e) => not_running.push(format!("{name}: {e:#}")),
            }
        }
        let _ = Api::<Pod>::namespaced(client.clone(), &self.ns)
            .delete_collection(
                &force(),
                &ListParams::default().labels(&format!("app={LABEL}")),
            )
            .await;
        ensure!(
            not_running.is_empty(),
            "{} of {} injected Pods created during the operation are not Running: {}",
            not_running.len(),
            pods.len(),
            not_running.join(" | ")
        );
        Ok(Summary {
            pods: real,
            dry_runs,
            missed,
            slowest_running: slowest,
        })
    }
}

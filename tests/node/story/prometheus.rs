//! A real Prometheus for s7_minted_credentials: Debian's `prometheus` binary (tests/node/deps.sh
//! unpacks it into .tools/bin; `NODE_PROMETHEUS`), scraping the injector Pods' admin port
//! (`PodIP:8080/metrics`, from the host over the bridge) with the labels the chart's
//! ServiceMonitor gives (`job` = the Service, `namespace`, `pod`), and evaluating the chart's
//! own alert rules: the `spec.groups` of the PrometheusRule `helm template` renders from the
//! release's values with `metrics.prometheusRule.enabled=true`. Short intervals (scrape 2 s,
//! rule evaluation 1 s) so an alert's `for:` is the only wait. Queried through its HTTP API.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, ensure};
use serde_json::{Value, json};

use crate::harness::{Env, eventually, path_str};
use crate::tools::{self, http_get};

pub const SCRAPE_INTERVAL: &str = "2s";
pub const EVALUATION_INTERVAL: &str = "1s";

/// A scrape target: one Pod's admin port.
pub struct Target {
    /// The Service the chart's ServiceMonitor would scrape it through: the `job` label.
    pub job: String,
    pub namespace: String,
    pub pod: String,
    pub addr: SocketAddr,
}

/// One sample of an instant query's vector.
#[derive(Debug, Clone)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

pub struct Prometheus {
    child: Mutex<Option<Child>>,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    /// How many groups and rules the rule file holds.
    pub groups: usize,
    pub rules: usize,
}

/// The chart's PrometheusRule for the release's `values`, rendered by `helm template` with
/// `metrics.prometheusRule.enabled=true`: its `spec.groups`, as a Prometheus rule file.
pub async fn chart_rules(
    env: &Env,
    release: &str,
    namespace: &str,
    values: &Value,
    dir: &Path,
) -> Result<Value> {
    let file = dir.join("values.json");
    std::fs::write(&file, serde_json::to_string_pretty(values)?)?;
    let out = tools::helm(
        env,
        &[
            "template",
            release,
            path_str(&env.chart)?,
            "-n",
            namespace,
            "-f",
            path_str(&file)?,
            "--set",
            "metrics.prometheusRule.enabled=true",
            "--show-only",
            "templates/prometheusrule.yaml",
        ],
    )
    .await?;
    ensure!(out.ok, "helm template: {}", out.stderr.trim());
    std::fs::write(dir.join("prometheusrule.yaml"), &out.stdout)?;
    let rule: Value =
        serde_saphyr::from_str(&out.stdout).context("the rendered PrometheusRule is not YAML")?;
    ensure!(
        rule["kind"] == "PrometheusRule",
        "helm template rendered a {} (want PrometheusRule)",
        rule["kind"]
    );
    let groups = rule["spec"]["groups"].clone();
    ensure!(
        groups.as_array().is_some_and(|g| !g.is_empty()),
        "the PrometheusRule has no spec.groups"
    );
    Ok(json!({ "groups": groups }))
}

impl Prometheus {
    /// Starts it in `dir` (emptied first) on `listen`, scraping `targets`, with the rule file
    /// `rules` (`{"groups": [...]}`); returns once it is ready.
    pub async fn start(
        bin: &Path,
        dir: &Path,
        listen: SocketAddr,
        targets: &[Target],
        rules: &Value,
    ) -> Result<Self> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir)?;
        let rule_file = dir.join("rules.json");
        std::fs::write(&rule_file, serde_json::to_string_pretty(rules)?)?;
        let groups = rules["groups"].as_array().map_or(0, Vec::len);
        let rule_count = rules["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|g| g["rules"].as_array().map_or(0, Vec::len))
            .sum();
        let mut jobs: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
        for t in targets {
            jobs.entry(&t.job).or_default().push(json!({
                "targets": [t.addr.to_string()],
                "labels": {"namespace": t.namespace, "pod": t.pod},
            }));
        }
        let config = json!({
            "global": {
                "scrape_interval": SCRAPE_INTERVAL,
                "scrape_timeout": "1s",
                "evaluation_interval": EVALUATION_INTERVAL,
            },
            "rule_files": [path_str(&rule_file)?],
            "scrape_configs": jobs.into_iter().map(|(job, statics)| json!({
                "job_name": job,
                "metrics_path": "/metrics",
                "static_configs": statics,
            })).collect::<Vec<_>>(),
        });
        let config_file = dir.join("prometheus.json");
        std::fs::write(&config_file, serde_json::to_string_pretty(&config)?)?;
        let log = std::fs::File::create(dir.join("prometheus.log"))?;
        let child = Command::new(bin)
            .arg(format!("--config.file={}", path_str(&config_file)?))
            .arg(format!(
                "--storage.tsdb.path={}",
                path_str(&dir.join("data"))?
            ))
            .arg(format!("--web.listen-address={listen}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        // For tests/node/down.sh, should this process die before stopping it.
        std::fs::write(dir.join("prometheus.pid"), child.id().to_string())?;
        let prometheus = Self {
            child: Mutex::new(Some(child)),
            addr: listen,
            dir: dir.to_path_buf(),
            groups,
            rules: rule_count,
        };
        let ready = eventually(Duration::from_secs(30), "Prometheus ready", || async {
            prometheus.exited()?;
            let (status, body) = http_get(listen, "/-/ready").await?;
            ensure!(status == 200, "/-/ready: {status} {}", body.trim());
            Ok(())
        })
        .await;
        if let Err(e) = ready {
            prometheus.stop();
            return Err(e.context(format!("log: {}", prometheus.log_tail(10))));
        }
        Ok(prometheus)
    }

    fn exited(&self) -> Result<()> {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = child.as_mut()
            && let Some(status) = c.try_wait()?
        {
            *child = None;
            return Err(anyhow!("Prometheus exited: {status}"));
        }
        Ok(())
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join(" / ")
    }

    /// An instant query (`/api/v1/query`): the samples of its vector.
    pub async fn query(&self, promql: &str) -> Result<Vec<Sample>> {
        let path = format!("/api/v1/query?query={}", encode(promql));
        let (status, body) = http_get(self.addr, &path).await?;
        ensure!(
            status == 200,
            "query {promql}: HTTP {status}: {}",
            body.trim()
        );
        let answer: Value = serde_json::from_str(&body)
            .with_context(|| format!("query {promql}: not JSON: {body}"))?;
        ensure!(answer["status"] == "success", "query {promql}: {}", answer);
        ensure!(
            answer["data"]["resultType"] == "vector",
            "query {promql}: a {} (want a vector)",
            answer["data"]["resultType"]
        );
        Ok(answer["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| Sample {
                labels: r["metric"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                            .collect()
                    })
                    .unwrap_or_default(),
                value: r["value"][1]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(f64::NAN),
            })
            .collect())
    }

    /// Until every target's `up` is 1: the number of targets.
    pub async fn await_targets_up(&self, want: usize) -> Result<usize> {
        let (n, _) = eventually(
            Duration::from_secs(30),
            "every target scraped (up == 1)",
            || async {
                self.exited()?;
                let up = self.query("up").await?;
                let down: Vec<String> = up
                    .iter()
                    .filter(|s| s.value != 1.0)
                    .map(|s| {
                        format!(
                            "{} {}",
                            s.labels.get("job").cloned().unwrap_or_default(),
                            s.labels.get("instance").cloned().unwrap_or_default()
                        )
                    })
                    .collect();
                ensure!(
                    up.len() == want && down.is_empty(),
                    "{} of {want} targets, down: {down:?}",
                    up.len()
                );
                Ok(up.len())
            },
        )
        .await?;
        Ok(n)
    }

    /// Kills it (SIGKILL: its data is thrown away) and waits for it.
    pub fn stop(&self) {
        if let Some(mut child) = self.child.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Percent-encoding of a query string value (RFC 3986 unreserved characters stay).
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

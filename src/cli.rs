//! Command line: subcommands and flags. Every flag can also be set through the environment as
//! `PULLSECRET_INJECTOR_<FLAG>` (e.g. `PULLSECRET_INJECTOR_TLS_CERT`), one variable per
//! meaning, and each flag means one thing wherever it appears, as in kubectl:
//! - `-n`/`--namespace` in the commands that look at Pods (`explain`, `audit`) is the
//!   namespace of those Pods (`PULLSECRET_INJECTOR_TARGET_NAMESPACE`), with `-A` for all;
//! - the injector's own namespace is `--namespace` of `serve` and `controller` (the contract's
//!   name; also `--injector-namespace`) and `--injector-namespace` of `audit`
//!   (`PULLSECRET_INJECTOR_NAMESPACE`);
//! - `-f`/`--filename` is manifest files to read, repeatable, several after one `-f`, or
//!   comma-separated (`PULLSECRET_INJECTOR_FILENAME`);
//! - each command's `-o` has its own variable because their formats differ.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::core::names::MANAGED_BY;
use crate::telemetry::LogFormat;

pub const DEFAULT_CONFIG: &str = "/etc/pullsecret-injector/config.yaml";

#[derive(Debug, Parser)]
#[command(
    name = "pullsecret-injector",
    version,
    about = "Adds the right imagePullSecrets to Pods, by image registry"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log line format.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "plain",
        env = "PULLSECRET_INJECTOR_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
    /// Log filter in RUST_LOG syntax, e.g. `info` or `info,pullsecret_injector=debug`.
    #[arg(
        long,
        global = true,
        default_value = "info",
        env = "PULLSECRET_INJECTOR_LOG_LEVEL"
    )]
    pub log_level: String,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the webhook (TLS) and the admin listener (plain HTTP). Reads only.
    Serve(ServeArgs),
    /// Run the writer: sync, repair and the Lease; admin listener only, no webhook.
    Controller(ControllerArgs),
    /// Validate a configuration file: exit 0, or exit 1 listing every error.
    CheckConfig(CheckConfigArgs),
    /// Offline: show what the injector would do to the Pods and pod templates in a file.
    Explain(ExplainArgs),
    /// Against a live cluster: for each existing Pod, the secrets that would be added.
    Audit(AuditArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Configuration file (YAML): mode, namespaces, rules and the cluster features.
    #[arg(long, default_value = DEFAULT_CONFIG, env = "PULLSECRET_INJECTOR_CONFIG")]
    pub config: PathBuf,
    /// TLS listener for /mutate and /audit.
    #[arg(
        long,
        default_value = "0.0.0.0:8443",
        env = "PULLSECRET_INJECTOR_LISTEN"
    )]
    pub listen: SocketAddr,
    /// PEM certificate chain, reloaded when it changes.
    #[arg(long, env = "PULLSECRET_INJECTOR_TLS_CERT")]
    pub tls_cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1), reloaded when it changes.
    #[arg(long, env = "PULLSECRET_INJECTOR_TLS_KEY")]
    pub tls_key: PathBuf,
    /// Plain-HTTP listener for /livez, /readyz and /metrics.
    #[arg(
        long,
        default_value = "0.0.0.0:8080",
        env = "PULLSECRET_INJECTOR_ADMIN_LISTEN"
    )]
    pub admin_listen: SocketAddr,
    /// No Kubernetes API at all: static rules only.
    #[arg(long, env = "PULLSECRET_INJECTOR_STANDALONE")]
    pub standalone: bool,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// After SIGTERM, keep answering (while reporting not ready) for this long.
    #[arg(long, default_value = "5s", value_parser = parse_duration, env = "PULLSECRET_INJECTOR_SHUTDOWN_DELAY")]
    pub shutdown_delay: Duration,
    /// Then wait at most this long for in-flight requests.
    #[arg(long, default_value = "10s", value_parser = parse_duration, env = "PULLSECRET_INJECTOR_DRAIN_TIMEOUT")]
    pub drain_timeout: Duration,
    /// How often the config, certificate and key files are checked for changes.
    #[arg(long, default_value = "2s", value_parser = parse_duration, env = "PULLSECRET_INJECTOR_RELOAD_INTERVAL")]
    pub reload_interval: Duration,
    /// Only clients presenting a certificate signed by a CA in this PEM file complete the TLS
    /// handshake (the API server, configured through its WebhookAdmission kubeconfig).
    /// Read at startup.
    #[arg(long, value_name = "PATH", env = "PULLSECRET_INJECTOR_CLIENT_CA")]
    pub client_ca: Option<PathBuf>,
    /// Request bodies buffered at once, all clients together (e.g. 32Mi); one client address
    /// gets a quarter. Default: a quarter of the container's memory limit (cgroup), or 256Mi
    /// without one.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, env = "PULLSECRET_INJECTOR_MEMORY_BUDGET")]
    pub memory_budget: Option<usize>,
}

#[derive(Debug, Args)]
pub struct ControllerArgs {
    /// Configuration file (YAML): mode, namespaces, rules and the cluster features.
    #[arg(long, default_value = DEFAULT_CONFIG, env = "PULLSECRET_INJECTOR_CONFIG")]
    pub config: PathBuf,
    /// Plain-HTTP listener for /livez, /readyz and /metrics (the controller has no other).
    #[arg(
        long,
        default_value = "0.0.0.0:8080",
        env = "PULLSECRET_INJECTOR_ADMIN_LISTEN"
    )]
    pub admin_listen: SocketAddr,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// How often the config file is checked for changes.
    #[arg(long, default_value = "2s", value_parser = parse_duration, env = "PULLSECRET_INJECTOR_RELOAD_INTERVAL")]
    pub reload_interval: Duration,
    /// Name of the Lease (in the injector's namespace) that picks the one replica that writes
    /// (sync, repair). One per installation. The replica's identity in it is $POD_NAME, else
    /// the hostname.
    #[arg(long, default_value = MANAGED_BY, env = "PULLSECRET_INJECTOR_LEASE_NAME")]
    pub lease_name: String,
}

/// How to reach the Kubernetes API.
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// Kubeconfig file; otherwise in-cluster config or $KUBECONFIG.
    #[arg(long, env = "PULLSECRET_INJECTOR_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// The injector's own namespace (never injected; source Secrets live here).
    /// Defaults to $POD_NAMESPACE.
    #[arg(
        long,
        visible_alias = "injector-namespace",
        env = "PULLSECRET_INJECTOR_NAMESPACE"
    )]
    pub namespace: Option<String>,
}

impl ClusterArgs {
    /// `--namespace`, else `$POD_NAMESPACE`.
    pub fn own_namespace(&self) -> Option<String> {
        self.namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .filter(|ns| !ns.is_empty())
    }
}

#[derive(Debug, Args)]
pub struct CheckConfigArgs {
    /// Configuration file (YAML): mode, namespaces, rules and the cluster features.
    #[arg(long, default_value = DEFAULT_CONFIG, env = "PULLSECRET_INJECTOR_CONFIG")]
    pub config: PathBuf,
    /// Secret manifests (YAML or JSON, e.g. from `kubectl create secret docker-registry
    /// --dry-run=client -o yaml`; `-` for stdin): check each rule against the Secrets it
    /// names, as the kubelet matches their keys. Several files: `-f a.yaml -f b.yaml`,
    /// `-f a.yaml b.yaml` or `-f a.yaml,b.yaml`. (`--secrets` is the old name.)
    #[arg(
        short = 'f',
        long = "filename",
        visible_alias = "secrets",
        num_args = 1..,
        value_delimiter = ',',
        env = "PULLSECRET_INJECTOR_FILENAME"
    )]
    pub files: Vec<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExplainFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// Configuration file (YAML): mode, namespaces, rules and the cluster features.
    #[arg(long, default_value = DEFAULT_CONFIG, env = "PULLSECRET_INJECTOR_CONFIG")]
    pub config: PathBuf,
    /// YAML or JSON files with Pods, workloads, Lists, and optionally the docker config
    /// Secrets and Namespaces they use (multi-document allowed); `-` for stdin. Several
    /// files: `-f a.yaml -f b.yaml`, `-f a.yaml b.yaml` or `-f a.yaml,b.yaml`.
    #[arg(
        short = 'f',
        long = "filename",
        required = true,
        num_args = 1..,
        value_delimiter = ',',
        env = "PULLSECRET_INJECTOR_FILENAME"
    )]
    pub files: Vec<PathBuf>,
    /// Namespace of the objects that do not name one, as `kubectl apply -n` would create
    /// them. (`--target-namespace` is the old name.)
    #[arg(
        short = 'n',
        long = "namespace",
        visible_alias = "target-namespace",
        default_value = "default",
        env = "PULLSECRET_INJECTOR_TARGET_NAMESPACE"
    )]
    pub target_namespace: String,
    /// Labels (`k=v[,k=v]`) of every namespace the input has no `Namespace` object for, as
    /// rules' `namespaceSelector`s read them. Without this flag or a `Namespace` object a
    /// namespace's labels are unknown, and no selector serves it. A
    /// `pullsecret-injector/inject` label given here also decides namespace selection.
    #[arg(long, value_parser = parse_labels, env = "PULLSECRET_INJECTOR_NAMESPACE_LABELS")]
    pub namespace_labels: Option<BTreeMap<String, String>>,
    /// Output format: `text` for people, `json` for scripts (stable field names; new fields
    /// may be added).
    #[arg(
        short = 'o',
        long,
        value_enum,
        default_value = "text",
        env = "PULLSECRET_INJECTOR_EXPLAIN_OUTPUT"
    )]
    pub output: ExplainFormat,
}

/// `k=v[,k=v]`: namespace labels, each key and value checked as Kubernetes checks them. An
/// empty string is a namespace without labels.
pub fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("{pair:?} is not key=value"))?;
        let (key, value) = (key.trim(), value.trim());
        if !crate::core::scope::is_label_key(key) {
            return Err(format!("{key:?} is not a valid label key"));
        }
        if !crate::core::scope::is_label_value(value) {
            return Err(format!("{value:?} is not a valid label value"));
        }
        labels.insert(key.to_string(), value.to_string());
    }
    Ok(labels)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuditFormat {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Configuration file (YAML): mode, namespaces, rules and the cluster features.
    #[arg(long, default_value = DEFAULT_CONFIG, env = "PULLSECRET_INJECTOR_CONFIG")]
    pub config: PathBuf,
    /// Only Pods in this namespace, as in kubectl (default: the kubeconfig context's
    /// namespace). (`--target-namespace` is the old name.)
    #[arg(
        short = 'n',
        long = "namespace",
        visible_alias = "target-namespace",
        conflicts_with = "all_namespaces",
        env = "PULLSECRET_INJECTOR_TARGET_NAMESPACE"
    )]
    pub target_namespace: Option<String>,
    /// Pods in every namespace.
    #[arg(short = 'A', long, env = "PULLSECRET_INJECTOR_ALL_NAMESPACES")]
    pub all_namespaces: bool,
    /// Output format: `table` for people, `json` (a list of Pods) for scripts.
    #[arg(
        short = 'o',
        long,
        value_enum,
        default_value = "table",
        env = "PULLSECRET_INJECTOR_AUDIT_OUTPUT"
    )]
    pub output: AuditFormat,
    /// Kubeconfig file; otherwise in-cluster config or $KUBECONFIG.
    #[arg(long, env = "PULLSECRET_INJECTOR_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// The injector's own namespace, where its source Secrets live (and which it never
    /// injects). Defaults to $POD_NAMESPACE. (`-n`/`--namespace` selects the Pods.)
    #[arg(
        id = "namespace",
        long = "injector-namespace",
        value_name = "INJECTOR_NAMESPACE",
        env = "PULLSECRET_INJECTOR_NAMESPACE"
    )]
    pub injector_namespace: Option<String>,
}

impl AuditArgs {
    /// How to reach the cluster, as the commands that run in it take it.
    pub fn cluster(&self) -> ClusterArgs {
        ClusterArgs {
            kubeconfig: self.kubeconfig.clone(),
            namespace: self.injector_namespace.clone(),
        }
    }
}

/// `5`, `5s`, `500ms`, `1m` or `1h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 5s or 500ms"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?}; use ms, s, m or h"
            ));
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

/// A byte size: a number with an optional Kubernetes quantity suffix (`Ki`, `Mi`, `Gi`, `k`,
/// `M`, `G`), as in a container's memory limit.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: usize = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size like 64Mi or 33554432"))?;
    let multiplier: usize = match unit {
        "" => 1,
        "k" => 1000,
        "M" => 1000 * 1000,
        "G" => 1000 * 1000 * 1000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?}; use Ki, Mi, Gi, k, M or G"
            ));
        }
    };
    value
        .checked_mul(multiplier)
        .ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn sizes_parse_like_kubernetes_quantities() {
        let table: &[(&str, Result<usize, &str>)] = &[
            ("33554432", Ok(33_554_432)),
            ("32Mi", Ok(32 << 20)),
            ("1Gi", Ok(1 << 30)),
            ("512Ki", Ok(512 << 10)),
            ("64M", Ok(64_000_000)),
            (" 2k ", Ok(2000)),
            ("32MiB", Err("unknown unit \"MiB\"")),
            ("Mi", Err("not a size")),
            ("-1Mi", Err("not a size")),
            ("99999999999999999999Gi", Err("not a size")),
        ];
        for (text, want) in table {
            match (parse_size(text), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, *want, "{text}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{text}: {got}"),
                (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_share_one_env_var_per_meaning() {
        use std::collections::BTreeMap;
        // Every variable names one meaning: all flags that read it have the same name, and the
        // output flags (whose formats differ per command) share none.
        let mut uses: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        for command in Cli::command().get_subcommands() {
            for arg in command.get_arguments() {
                if let Some(env) = arg.get_env() {
                    uses.entry(env.to_string_lossy().to_string())
                        .or_default()
                        .push((arg.get_id().to_string(), command.get_name().to_string()));
                }
            }
        }
        for (env, flags) in &uses {
            assert!(
                flags.iter().all(|(flag, _)| *flag == flags[0].0),
                "{env} is read by different flags: {flags:?}"
            );
            assert!(
                flags[0].0 != "output" || flags.len() == 1,
                "{env} is shared by several -o flags: {flags:?}"
            );
        }
        assert_eq!(uses["PULLSECRET_INJECTOR_EXPLAIN_OUTPUT"].len(), 1);
        assert_eq!(uses["PULLSECRET_INJECTOR_AUDIT_OUTPUT"].len(), 1);
        let namespace: Vec<&str> = uses["PULLSECRET_INJECTOR_NAMESPACE"]
            .iter()
            .map(|(_, command)| command.as_str())
            .collect();
        assert_eq!(namespace, ["serve", "controller", "audit"]);
        let files: Vec<&str> = uses["PULLSECRET_INJECTOR_FILENAME"]
            .iter()
            .map(|(_, command)| command.as_str())
            .collect();
        assert_eq!(files, ["check-config", "explain"]);
    }

    #[test]
    fn every_flag_has_help_text() {
        for command in Cli::command().get_subcommands() {
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                assert!(
                    arg.get_help().is_some(),
                    "{} --{id} has no help text",
                    command.get_name()
                );
            }
        }
    }

    #[test]
    fn flags_mean_what_kubectl_means() {
        let parse = |args: &[&str]| Cli::try_parse_from(args.iter().copied());
        let audit = |args: &[&str]| match parse(args).map(|cli| cli.command) {
            Ok(Command::Audit(a)) => (a.target_namespace, a.all_namespaces, a.injector_namespace),
            other => panic!("{args:?}: {other:?}"),
        };
        // (arguments, Pods' namespace, all namespaces, the injector's namespace)
        type Case<'a> = (&'a [&'a str], Option<&'a str>, bool, Option<&'a str>);
        let cases: [Case<'_>; 5] = [
            (&["p", "audit", "-n", "team-a"], Some("team-a"), false, None),
            (
                &["p", "audit", "--namespace", "team-a"],
                Some("team-a"),
                false,
                None,
            ),
            (
                &["p", "audit", "--target-namespace", "team-a"],
                Some("team-a"),
                false,
                None,
            ),
            (&["p", "audit", "-A"], None, true, None),
            (
                &["p", "audit", "-n", "team-a", "--injector-namespace", "psi"],
                Some("team-a"),
                false,
                Some("psi"),
            ),
        ];
        for (args, namespace, all, own) in cases {
            let (got_ns, got_all, got_own) = audit(args);
            assert_eq!(got_ns.as_deref(), namespace, "{args:?}");
            assert_eq!(got_all, all, "{args:?}");
            assert_eq!(got_own.as_deref(), own, "{args:?}");
        }
        assert!(parse(&["p", "audit", "-n", "a", "-A"]).is_err());
        // -f takes several files, in every spelling kubectl accepts.
        for args in [
            &["p", "check-config", "-f", "a.yaml", "-f", "b.yaml"][..],
            &["p", "check-config", "-f", "a.yaml", "b.yaml"],
            &["p", "check-config", "-f", "a.yaml,b.yaml"],
            &[
                "p",
                "check-config",
                "--secrets",
                "a.yaml",
                "--filename",
                "b.yaml",
            ],
        ] {
            match parse(args).map(|cli| cli.command) {
                Ok(Command::CheckConfig(c)) => {
                    assert_eq!(
                        c.files,
                        [PathBuf::from("a.yaml"), "b.yaml".into()],
                        "{args:?}"
                    )
                }
                other => panic!("{args:?}: {other:?}"),
            }
        }
        match parse(&["p", "explain", "-f", "a.yaml", "b.yaml", "-n", "team-a"]).map(|c| c.command)
        {
            Ok(Command::Explain(e)) => {
                assert_eq!(e.files.len(), 2);
                assert_eq!(e.target_namespace, "team-a");
            }
            other => panic!("{other:?}"),
        }
        // serve keeps the contract's --namespace for its own namespace.
        match parse(&[
            "p",
            "serve",
            "--tls-cert",
            "c",
            "--tls-key",
            "k",
            "--namespace",
            "psi",
        ])
        .map(|c| c.command)
        {
            Ok(Command::Serve(s)) => assert_eq!(s.cluster.namespace.as_deref(), Some("psi")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("soon").is_err());
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("5d").is_err());
    }

    #[test]
    fn namespace_labels() {
        let labels = parse_labels("team=a, example.com/tier=gold,empty=").expect("valid");
        assert_eq!(labels["team"], "a");
        assert_eq!(labels["example.com/tier"], "gold");
        assert_eq!(labels["empty"], "");
        assert_eq!(parse_labels(""), Ok(BTreeMap::new()));
        for bad in ["team", "Team Name=a", "team=a b", "=a"] {
            assert!(parse_labels(bad).is_err(), "{bad:?} accepted");
        }
    }
}

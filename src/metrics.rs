//! Prometheus metrics, all prefixed `pullsecret_injector_`. Labels come from bounded sets only
//! (endpoints, outcomes, results, rule patterns from the configuration or source Secrets),
//! never Pod or namespace names.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::core::decision::Endpoint;
use crate::core::policy::Policy;
use crate::core::verdict::{Outcome, Verdict};

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)] // label values are written as-is
pub enum EndpointLabel {
    mutate,
    audit,
}

impl From<Endpoint> for EndpointLabel {
    fn from(endpoint: Endpoint) -> Self {
        match endpoint {
            Endpoint::Mutate => EndpointLabel::mutate,
            Endpoint::Audit => EndpointLabel::audit,
        }
    }
}

/// How an admission ended: the verdict's [`Outcome`], or what happened before there was one.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum AdmissionOutcome {
    /// A patch was returned.
    patched,
    /// Audit mode: findings reported as warnings, no patch.
    audited,
    /// In scope, nothing to change.
    unchanged,
    /// Out of scope (not a Pod, not CREATE, opted out, excluded namespace, ...).
    skipped,
    /// Not an AdmissionReview: answered with HTTP 4xx.
    rejected,
    /// The decision panicked; answered `allowed: true` without a patch.
    failed,
}

impl From<Outcome> for AdmissionOutcome {
    fn from(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Patched => AdmissionOutcome::patched,
            Outcome::Audited => AdmissionOutcome::audited,
            Outcome::Unchanged => AdmissionOutcome::unchanged,
            Outcome::Skipped(_) => AdmissionOutcome::skipped,
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdmissionLabels {
    pub endpoint: EndpointLabel,
    pub outcome: AdmissionOutcome,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: EndpointLabel,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabels {
    /// The registry pattern of the rule, as written.
    pub rule: String,
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum ReloadResult {
    success,
    failure,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    pub result: ReloadResult,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// A stable, bounded label such as a resource kind or an error kind.
    pub kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// A stable, bounded outcome name.
    pub outcome: &'static str,
}

/// A request or connection a listener refused to protect its memory or its other clients.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    /// `webhook` or `admin`.
    pub listener: &'static str,
    /// [`crate::webhook::budget::Refusal`]'s name.
    pub reason: &'static str,
}

/// One credential at one registry (`credentialProbe`): the source Secret's name and the
/// `host[:port]` of a docker config key (both from the injector's namespace: bounded).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CredentialLabels {
    pub secret: String,
    pub registry: String,
}

/// A source Secret of the injector's namespace, by name: bounded by the sources an operator
/// labels there.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SecretLabels {
    pub secret: String,
}

/// One credential-provider plugin (`credentialProviders`), by its configured name: bounded by
/// the configuration file.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    pub provider: String,
}

/// A plugin run's outcome.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderRunLabels {
    pub provider: String,
    /// `success`, `not_found`, `timeout`, `failed`, `bad_response`, `write_failed`.
    pub outcome: &'static str,
}

/// The version label of `build_info`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    pub version: &'static str,
}

/// Every metric the injector exports. A `--standalone` webhook exports only what it can
/// produce ([`Metrics::standalone`]): a series of sync, watches, the Lease or repair that
/// could never move would only look broken.
pub struct Metrics {
    registry: Registry,
    /// `pullsecret_injector_build_info{version}`: always 1.
    pub build_info: Family<VersionLabels, Gauge>,
    pub admissions: Family<AdmissionLabels, Counter>,
    pub admission_duration: Family<EndpointLabels, Histogram, fn() -> Histogram>,
    pub requests_refused: Family<RefusedLabels, Counter>,
    pub secrets_injected: Family<RuleLabels, Counter>,
    pub audit_findings: Family<RuleLabels, Counter>,
    pub config_reloads: Family<ReloadLabels, Counter>,
    pub certificate_reloads: Family<ReloadLabels, Counter>,
    pub certificate_expiry: Gauge,
    // Cluster mode.
    pub last_sync_timestamp: Gauge,
    pub sync_conflicts: Counter,
    pub secrets_synced: Family<KindLabels, Counter>,
    pub source_secret_errors: Family<KindLabels, Counter>,
    pub watch_errors: Family<KindLabels, Counter>,
    pub watch_healthy: Family<KindLabels, Gauge>,
    pub watch_last_event: Family<KindLabels, Gauge>,
    pub sync_failures: Counter,
    pub leader: Gauge,
    pub repairs: Family<OutcomeLabels, Counter>,
    pub rule_credential_mismatch: Family<RuleLabels, Gauge>,
    /// When each source Secret's credential expires (Unix seconds), for those whose expiry is
    /// known ([`crate::core::expiry`]).
    pub credential_expiry: Family<SecretLabels, Gauge>,
    /// When each source Secret's credential was issued (Unix seconds), for those whose issue
    /// time is known (the `pullsecret-injector/issued-at` annotation, a JWT `iat`).
    pub credential_issued: Family<SecretLabels, Gauge>,
    /// `credentialProviders`: plugin runs (one per pass over a provider's images) by outcome.
    pub credential_provider_runs: Family<ProviderRunLabels, Counter>,
    /// `credentialProviders`: 1 while the provider's last pass failed, 0 after a success.
    pub credential_provider_failing: Family<ProviderLabels, Gauge>,
    /// `credentialProviders`: when the provider last filled its Secret (Unix seconds).
    pub credential_provider_last_success: Family<ProviderLabels, Gauge>,
    /// `requireScope: true`: rules and source Secrets that declare no scope (serving nowhere).
    pub rules_without_scope: Gauge,
    /// `credentialProbe`: 1 when the registry accepted the credential, 0 when it rejected it;
    /// absent until a probe was conclusive (errors leave the last conclusive answer).
    pub credential_accepted: Family<CredentialLabels, Gauge>,
    /// `credentialProbe`: probes by outcome (`accepted`, `rejected`, or why neither).
    pub credential_probes: Family<OutcomeLabels, Counter>,
}

fn duration_histogram() -> Histogram {
    // 25 µs .. 23 s: admissions take microseconds; the upper buckets reach the API server's
    // largest webhook timeout (30 s), so latency near any timeout is visible.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        25e-6, 2.5, 16,
    ))
}

impl Default for Metrics {
    /// Every series: cluster mode (`serve` with the Kubernetes API, `controller`).
    fn default() -> Self {
        Self::new(true)
    }
}

impl Metrics {
    /// The series a `--standalone` webhook can move: admissions, reloads, the certificate,
    /// `rules_without_scope` and `build_info`; none of sync, watches, the Lease, repair or
    /// source Secrets.
    pub fn standalone() -> Self {
        Self::new(false)
    }

    fn new(cluster: bool) -> Self {
        let mut registry = Registry::with_prefix("pullsecret_injector");
        let metrics = Self {
            build_info: Family::default(),
            admissions: Family::default(),
            admission_duration: Family::new_with_constructor(
                duration_histogram as fn() -> Histogram,
            ),
            requests_refused: Family::default(),
            secrets_injected: Family::default(),
            audit_findings: Family::default(),
            config_reloads: Family::default(),
            certificate_reloads: Family::default(),
            certificate_expiry: Gauge::default(),
            last_sync_timestamp: Gauge::default(),
            sync_conflicts: Counter::default(),
            secrets_synced: Family::default(),
            source_secret_errors: Family::default(),
            watch_errors: Family::default(),
            watch_healthy: Family::default(),
            watch_last_event: Family::default(),
            sync_failures: Counter::default(),
            leader: Gauge::default(),
            repairs: Family::default(),
            rule_credential_mismatch: Family::default(),
            credential_expiry: Family::default(),
            credential_issued: Family::default(),
            credential_provider_runs: Family::default(),
            credential_provider_failing: Family::default(),
            credential_provider_last_success: Family::default(),
            rules_without_scope: Gauge::default(),
            credential_accepted: Family::default(),
            credential_probes: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "admissions",
            "Admission reviews answered, by endpoint and outcome",
            metrics.admissions.clone(),
        );
        registry.register(
            "admission_duration_seconds",
            "Time to answer an admission review, from request to response",
            metrics.admission_duration.clone(),
        );
        registry.register(
            "requests_refused",
            "Requests and connections refused to keep within the memory budget or a peer's share, by listener and reason",
            metrics.requests_refused.clone(),
        );
        registry.register(
            "secrets_injected",
            "imagePullSecrets entries added to Pods, by rule",
            metrics.secrets_injected.clone(),
        );
        registry.register(
            "audit_findings",
            "imagePullSecrets entries audit mode would have added, by rule",
            metrics.audit_findings.clone(),
        );
        registry.register(
            "config_reloads",
            "Configuration file reloads, by result",
            metrics.config_reloads.clone(),
        );
        registry.register(
            "certificate_reloads",
            "TLS certificate reloads, by result",
            metrics.certificate_reloads.clone(),
        );
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "Expiry (notAfter) of the serving certificate, Unix seconds",
            metrics.certificate_expiry.clone(),
        );
        registry.register(
            "rules_without_scope",
            "With requireScope: true, the rules and source Secrets that declare no namespace scope and so serve no namespace (0 otherwise)",
            metrics.rules_without_scope.clone(),
        );
        registry.register(
            "build_info",
            "1, labelled with the version of the running binary",
            metrics.build_info.clone(),
        );
        metrics
            .build_info
            .get_or_create(&VersionLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        if cluster {
            registry.register(
                "last_sync_timestamp_seconds",
                "Time of the last successful Secret sync pass, Unix seconds",
                metrics.last_sync_timestamp.clone(),
            );
            registry.register(
                "sync_conflicts",
                "Secrets not written because a Secret of that name exists and is not managed by the injector",
                metrics.sync_conflicts.clone(),
            );
            registry.register(
                "secrets_synced",
                "Secret copies written or removed, by action",
                metrics.secrets_synced.clone(),
            );
            registry.register(
                "source_secret_errors",
                "Source Secrets skipped because they could not be used, by reason",
                metrics.source_secret_errors.clone(),
            );
            registry.register(
                "watch_errors",
                "Kubernetes watch errors, by resource",
                metrics.watch_errors.clone(),
            );
            registry.register(
                "sync_failures",
                "Sync actions (writing or removing a Secret copy) that failed; retried on the next pass",
                metrics.sync_failures.clone(),
            );
            registry.register(
                "leader",
                "1 while this replica holds the Lease that makes it the one writer (sync, repair)",
                metrics.leader.clone(),
            );
            registry.register(
                "repairs",
                "Pods admitted without their secrets and stuck pulling: evicted, reported (a Job's, another controller's or a bare Pod), skipped (no longer a candidate at its turn, namespace unknown, already gone or replaced), blocked (a PodDisruptionBudget), failed",
                metrics.repairs.clone(),
            );
            registry.register(
                "rule_credential_mismatch",
                "1 for a rule whose Secrets (readable sources) hold no docker config key the kubelet would use for the rule's images, 0 when they do",
                metrics.rule_credential_mismatch.clone(),
            );
            registry.register(
                "credential_expiry_timestamp_seconds",
                "When a source Secret's credential expires (Unix seconds), from its pullsecret-injector/expires-at or expiresAt annotation or a JWT exp in its docker config; no series when unknown",
                metrics.credential_expiry.clone(),
            );
            registry.register(
                "credential_issued_timestamp_seconds",
                "When a source Secret's credential was issued (Unix seconds), from its pullsecret-injector/issued-at annotation or a JWT iat; with the expiry it sets the warning threshold (a third of the lifetime, at most an hour); no series when unknown",
                metrics.credential_issued.clone(),
            );
            registry.register(
                "credential_provider_runs",
                "credentialProviders: passes over a provider's images, by outcome: success, not_found, timeout, failed, bad_response, write_failed",
                metrics.credential_provider_runs.clone(),
            );
            registry.register(
                "credential_provider_failing",
                "credentialProviders: 1 while the provider's last pass failed (its Secret keeps the last good credential), 0 after a success",
                metrics.credential_provider_failing.clone(),
            );
            registry.register(
                "credential_provider_last_success_timestamp_seconds",
                "credentialProviders: when the provider last filled its Secret, Unix seconds",
                metrics.credential_provider_last_success.clone(),
            );
            registry.register(
                "watch_healthy",
                "1 while the watch is listed and streaming, 0 after an error until it recovers",
                metrics.watch_healthy.clone(),
            );
            registry.register(
                "credential_accepted",
                "credentialProbe: 1 when the registry accepted the source Secret's credential at its last conclusive probe, 0 when it answered 401 or 403 to it; absent before any conclusive probe",
                metrics.credential_accepted.clone(),
            );
            registry.register(
                "credential_probes",
                "credentialProbe: probes by outcome: accepted, rejected, or why neither (timeout, transport, server_error, unexpected_status, no_challenge, bad_challenge, bad_token_response)",
                metrics.credential_probes.clone(),
            );
            registry.register(
                "watch_last_event_timestamp_seconds",
                "Time of the last event (or completed list) the watch delivered, Unix seconds",
                metrics.watch_last_event.clone(),
            );
        }
        // Series of rare events exist from the start at 0, so the first event is an increase
        // an alert can see (a series that appears at 1 has no increase()).
        for endpoint in [EndpointLabel::mutate, EndpointLabel::audit] {
            for outcome in [AdmissionOutcome::rejected, AdmissionOutcome::failed] {
                let _ = metrics
                    .admissions
                    .get_or_create(&AdmissionLabels { endpoint, outcome });
            }
        }
        for result in [ReloadResult::success, ReloadResult::failure] {
            let _ = metrics
                .config_reloads
                .get_or_create(&ReloadLabels { result });
            let _ = metrics
                .certificate_reloads
                .get_or_create(&ReloadLabels { result });
        }
        // A source whose scope annotations cannot be parsed serves nowhere: alertable at once.
        let _ = metrics
            .source_secret_errors
            .get_or_create(&KindLabels { kind: "bad_scope" });
        // Sync's rare events: a copy restored after tampering, a copy revoked.
        for kind in ["restored", "revoked"] {
            let _ = metrics.secrets_synced.get_or_create(&KindLabels { kind });
        }
        for outcome in ["evicted", "reported", "blocked", "failed"] {
            let _ = metrics.repairs.get_or_create(&OutcomeLabels { outcome });
        }
        Self {
            registry,
            ..metrics
        }
    }

    /// Counts a listener's refusals in `requests_refused`; its series exist from then on at 0,
    /// so the first refusal is an increase an alert sees.
    pub fn refusals(&self, listener: &'static str) -> crate::webhook::budget::OnRefusal {
        use crate::webhook::budget::Refusal;
        let family = self.requests_refused.clone();
        for refusal in [
            Refusal::Memory,
            Refusal::PeerMemory,
            Refusal::Requests,
            Refusal::PeerRequests,
            Refusal::PeerConnections,
        ] {
            let _ = family.get_or_create(&RefusedLabels {
                listener,
                reason: refusal.as_str(),
            });
        }
        Box::new(move |refusal| {
            family
                .get_or_create(&RefusedLabels {
                    listener,
                    reason: refusal.as_str(),
                })
                .inc();
        })
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn record_admission(&self, endpoint: Endpoint, outcome: AdmissionOutcome, seconds: f64) {
        let endpoint = EndpointLabel::from(endpoint);
        self.admissions
            .get_or_create(&AdmissionLabels { endpoint, outcome })
            .inc();
        self.admission_duration
            .get_or_create(&EndpointLabels { endpoint })
            .observe(seconds);
    }

    /// Counts the secrets a verdict injected (enforce) or found (audit), by rule.
    pub fn record_verdict(&self, verdict: &Verdict<'_>) {
        let family = match verdict.outcome {
            Outcome::Patched => &self.secrets_injected,
            Outcome::Audited => &self.audit_findings,
            Outcome::Unchanged | Outcome::Skipped(_) => return,
        };
        for secret in &verdict.secrets {
            family
                .get_or_create(&RuleLabels {
                    rule: secret.rule.pattern.as_str().to_string(),
                })
                .inc();
        }
    }

    pub fn reload(family: &Family<ReloadLabels, Counter>, ok: bool) {
        let result = if ok {
            ReloadResult::success
        } else {
            ReloadResult::failure
        };
        family.get_or_create(&ReloadLabels { result }).inc();
    }

    pub fn mark_synced_now(&self) {
        self.last_sync_timestamp.set(unix_now());
    }

    /// An observer for [`crate::core::policy::PolicyStore::observe`]: sets
    /// `rules_without_scope` from [`Policy::unscoped`] at every new policy, and logs each rule
    /// or source Secret once when it starts serving nowhere for want of a scope (not at every
    /// rebuild).
    pub fn unscoped_reporter(self: &Arc<Self>) -> impl Fn(&Policy) + Send + Sync + 'static {
        let metrics = self.clone();
        let reported = Mutex::new(BTreeSet::<String>::new());
        move |policy: &Policy| {
            let now: BTreeSet<String> = policy.unscoped().iter().cloned().collect();
            let mut reported = reported.lock().unwrap_or_else(|e| e.into_inner());
            for what in now.difference(&reported) {
                tracing::warn!(%what, "requireScope: it declares no namespace scope, so it serves no namespace");
            }
            metrics
                .rules_without_scope
                .set(i64::try_from(now.len()).unwrap_or(i64::MAX));
            *reported = now;
        }
    }
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_prefixed_names() {
        let metrics = Metrics::default();
        metrics.record_admission(Endpoint::Mutate, AdmissionOutcome::patched, 0.0001);
        Metrics::reload(&metrics.config_reloads, false);
        let text = metrics.encode();
        assert!(
            text.contains(
                r#"pullsecret_injector_admissions_total{endpoint="mutate",outcome="patched"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"pullsecret_injector_config_reloads_total{result="failure"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("pullsecret_injector_admission_duration_seconds_bucket"),
            "{text}"
        );
        assert!(
            text.contains(r#"pullsecret_injector_source_secret_errors_total{kind="bad_scope"} 0"#),
            "{text}"
        );
    }

    #[test]
    fn unscoped_rules_are_counted() {
        use crate::core::config::{Config, Settings};
        use crate::core::policy::{PolicyStore, Sources};
        use crate::core::rules::{RegistryPattern, Rule, RuleSource};
        use crate::core::scope::Scope;
        let rule = |index, scope: Scope| Rule {
            pattern: RegistryPattern::parse("ghcr.io").expect("pattern"),
            secrets: vec!["s".into()],
            pull_policy_always: false,
            source: RuleSource::Config { index },
            scope,
        };
        let config = |require_scope| Config {
            settings: Settings {
                require_scope,
                ..Settings::default()
            },
            rules: vec![
                rule(0, Scope::everywhere()),
                rule(1, Scope::from_annotations(Some("a"), None).expect("scope")),
            ],
        };
        let metrics = Arc::new(Metrics::default());
        let store = PolicyStore::new(config(true));
        store.observe(metrics.unscoped_reporter());
        let gauge = |n: i64| format!("pullsecret_injector_rules_without_scope {n}\n");
        assert!(metrics.encode().contains(&gauge(1)), "{}", metrics.encode());
        store.set_sources(Sources {
            scopes: [("s".to_string(), Scope::everywhere())].into(),
            ..Sources::default()
        });
        assert!(metrics.encode().contains(&gauge(2)), "{}", metrics.encode());
        store.set_config(config(false));
        assert!(metrics.encode().contains(&gauge(0)), "{}", metrics.encode());
    }

    #[test]
    fn cluster_series_exist_only_in_cluster_mode_and_build_info_in_both() {
        let build = format!(
            "pullsecret_injector_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        let cluster = Metrics::default().encode();
        let standalone = Metrics::standalone().encode();
        for text in [&cluster, &standalone] {
            assert!(text.contains(&build), "{text}");
        }
        for series in [
            "pullsecret_injector_leader",
            "pullsecret_injector_repairs_total",
        ] {
            assert!(cluster.contains(series), "{series}: {cluster}");
            assert!(!standalone.contains(series), "{series}: {standalone}");
        }
    }
}

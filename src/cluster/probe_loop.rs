//! The credential probe's driver (`credentialProbe: true`, `controller` only, the Lease holder
//! only so that replicas do not multiply the requests registries see): every source Secret's
//! concrete registry hosts ([`core::probe::targets`]), probed when new or changed and then on
//! [`core::probe::Schedule`]'s clock, at most [`MAX_PROBES_PER_MINUTE`] a minute.
//!
//! Results go to `pullsecret_injector_credential_accepted{secret,registry}` (1 or 0; an
//! inconclusive probe leaves the last conclusive value, and the series goes with its target),
//! `pullsecret_injector_credential_probes_total{outcome}`, and the
//! `pullsecret-injector/probe` annotation on the source Secret (`rejected <registry> <time>`),
//! which the webhook's source watch reads to warn at admission. Logs name the Secret, the
//! registry and the outcome; never a credential.
//!
//! [`core::probe::targets`]: crate::core::probe::targets
//! [`core::probe::Schedule`]: crate::core::probe::Schedule

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use tokio::sync::Notify;

use super::index::Index;
use super::lease::Leadership;
use super::sources::Source;
use crate::core::names::PROBE_ANNOTATION;
use crate::core::probe::{self, MAX_PROBES_PER_MINUTE, Outcome, Schedule, Target, TargetKey};
use crate::metrics::{CredentialLabels, Metrics, OutcomeLabels};
use crate::probe::Prober;
use crate::shutdown::Trigger;

/// The longest the loop sleeps without looking at the sources and the Lease again.
const IDLE_POLL: Duration = Duration::from_secs(30);

pub(super) struct ProbeLoop {
    pub client: kube::Client,
    pub own_namespace: String,
    pub sources: Arc<Index<Source>>,
    pub metrics: Arc<Metrics>,
    /// Notified on every source change: new and changed credentials are probed at once.
    pub changed: Arc<Notify>,
    pub prober: Prober,
}

impl ProbeLoop {
    pub(super) async fn run(self, mut leadership: Leadership, stop: Trigger) {
        let mut schedule = Schedule::default();
        // Targets rejected at their last conclusive probe, with the time first seen rejected.
        let mut rejected: BTreeMap<TargetKey, String> = BTreeMap::new();
        // Targets with a conclusive answer in this process: a source's annotation is only
        // rewritten once all its targets have one (a restart does not clear it first).
        let mut concluded: BTreeSet<TargetKey> = BTreeSet::new();
        let spacing = Duration::from_secs(60) / MAX_PROBES_PER_MINUTE;
        let stopped = stop.wait();
        tokio::pin!(stopped);
        loop {
            if !leadership.is_open() {
                // Another replica probes now: this one's answers would only grow stale (and
                // keep an alert firing after the new leader found the credential renewed).
                self.metrics.credential_accepted.clear();
                schedule = Schedule::default();
                rejected.clear();
                concluded.clear();
            }
            tokio::select! {
                () = leadership.until_leader() => {}
                () = &mut stopped => return,
            }
            let targets = self.targets();
            let current: Vec<(TargetKey, u64)> = targets
                .iter()
                .map(|(key, target)| (key.clone(), probe::fingerprint(target)))
                .collect();
            for gone in schedule.follow(&current, Instant::now()) {
                self.metrics.credential_accepted.remove(&labels(&gone));
                rejected.remove(&gone);
                concluded.remove(&gone);
            }
            for key in schedule.due(Instant::now()) {
                if stop.is_fired() || !leadership.is_open() {
                    break;
                }
                let Some(target) = targets.get(&key) else {
                    continue;
                };
                let outcome = self.prober.probe(target).await;
                self.record(&key, outcome, &mut rejected);
                if !matches!(outcome, Outcome::Inconclusive(_)) {
                    concluded.insert(key.clone());
                }
                schedule.record(&key, outcome, Instant::now());
                tokio::select! {
                    () = tokio::time::sleep(spacing) => {}
                    () = &mut stopped => return,
                }
            }
            if leadership.is_open() {
                self.publish(&targets, &concluded, &rejected).await;
            }
            let wait = schedule
                .next_due()
                .map_or(IDLE_POLL, |due| {
                    due.saturating_duration_since(Instant::now())
                })
                .min(IDLE_POLL);
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.changed.notified() => {}
                () = &mut stopped => return,
            }
        }
    }

    /// Every concrete host of every docker config source, keyed by `(secret, registry)`.
    fn targets(&self) -> BTreeMap<TargetKey, Target> {
        let mut out = BTreeMap::new();
        self.sources.for_each(|_, _, source| {
            if !source.is_pull_credential() {
                return;
            }
            let (found, _skipped) = probe::targets(&source.secret);
            for target in found {
                out.insert((target.secret.clone(), target.registry.clone()), target);
            }
        });
        out
    }

    fn record(
        &self,
        key: &TargetKey,
        outcome: Outcome,
        rejected: &mut BTreeMap<TargetKey, String>,
    ) {
        let (secret, registry) = key;
        let label = match outcome {
            Outcome::Accepted => "accepted",
            Outcome::Rejected => "rejected",
            Outcome::Inconclusive(reason) => reason.as_str(),
        };
        self.metrics
            .credential_probes
            .get_or_create(&OutcomeLabels { outcome: label })
            .inc();
        match outcome {
            Outcome::Accepted => {
                self.metrics
                    .credential_accepted
                    .get_or_create(&labels(key))
                    .set(1);
                if rejected.remove(key).is_some() {
                    tracing::info!(
                        secret,
                        registry,
                        "credential probe: the registry accepts the credential again"
                    );
                } else {
                    tracing::debug!(secret, registry, "credential probe: accepted");
                }
            }
            Outcome::Rejected => {
                self.metrics
                    .credential_accepted
                    .get_or_create(&labels(key))
                    .set(0);
                if !rejected.contains_key(key) {
                    let now = k8s_openapi::jiff::Timestamp::now();
                    let at = k8s_openapi::jiff::Timestamp::from_second(now.as_second())
                        .unwrap_or(now)
                        .to_string();
                    rejected.insert(key.clone(), at);
                    tracing::warn!(
                        secret,
                        registry,
                        "credential probe: the registry rejected the credential (401/403): Pods pulling from it with this Secret will fail"
                    );
                }
            }
            Outcome::Inconclusive(reason) => {
                tracing::info!(
                    secret,
                    registry,
                    reason = reason.as_str(),
                    "credential probe inconclusive; retried with backoff"
                );
            }
        }
    }

    /// Writes each source's `pullsecret-injector/probe` annotation where it differs from the
    /// rejections known (removed when there are none).
    async fn publish(
        &self,
        targets: &BTreeMap<TargetKey, Target>,
        concluded: &BTreeSet<TargetKey>,
        rejected: &BTreeMap<TargetKey, String>,
    ) {
        let mut current: Vec<(String, Option<String>)> = Vec::new();
        self.sources.for_each(|_, name, source| {
            current.push((name.to_string(), source.probe_annotation.clone()));
        });
        let changes = probe::annotation_updates(
            current.iter().map(|(n, a)| (n.as_str(), a.as_deref())),
            targets.keys(),
            concluded,
            rejected,
        );
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.own_namespace);
        for (name, value) in changes {
            let patch = serde_json::json!({"metadata": {"annotations": {PROBE_ANNOTATION: value}}});
            if let Err(error) = api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                // The error names the Secret and the API's status, never its data.
                tracing::warn!(secret = %name, %error, "credential probe: cannot annotate the source Secret; retried on the next pass");
            }
        }
    }
}

fn labels((secret, registry): &TargetKey) -> CredentialLabels {
    CredentialLabels {
        secret: secret.clone(),
        registry: registry.clone(),
    }
}

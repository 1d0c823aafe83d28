//! Repair (`repair: true`): while this replica holds the Lease, watch Pods that have not
//! finished and replace the ones an outage let through without their secrets and that are now
//! stuck pulling ([`core::repair`] decides which): Pending ones that never started, and
//! Running ones whose container must pull again (a restart after the image left the node).
//!
//! Controller-owned Pods are evicted through the Eviction API, so PodDisruptionBudgets hold
//! (the API server applies them to Running Pods; a Pending Pod serves nothing and is let go),
//! at most one every [`EVICTION_INTERVAL`], and none for [`WARMUP`] after this replica takes
//! the Lease (a replica that just became ready is not yet among the webhook's endpoints, and a
//! Pod replaced then would be admitted without its secrets again). A controller whose
//! replacement Pod is itself stuck without its secrets (the webhook is still unreachable) waits
//! [`OWNER_BACKOFF`](super::repair_queue::OWNER_BACKOFF), doubling up to ten minutes, before its next eviction, so an
//! unreachable webhook never turns repair into a loop. Bare Pods are reported once. Each
//! repair is logged, counted (`repairs_total{outcome}`) and recorded as an Event on the Pod.
//!
//! [`core::repair`]: crate::core::repair

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, EvictParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};

use crate::cluster::client::watch_backoff;
use crate::cluster::lease::Leadership;
use crate::cluster::repair_queue::{Candidate, State};
use crate::core::decision::Context;
use crate::core::facts::ClusterFacts;
use crate::core::policy::PolicyStore;
use crate::core::repair::{self, Action, PodState};
use crate::core::review;
use crate::core::verdict;
use crate::metrics::{KindLabels, Metrics};
use crate::shutdown::Trigger;

/// At most one eviction this often: an outage may leave hundreds of stuck Pods, and
/// replacing them all at once would be a self-inflicted stampede.
pub const EVICTION_INTERVAL: Duration = Duration::from_secs(1);
/// No eviction this long after taking the Lease: the readiness probe (5 s in the chart), the
/// endpoints controller and the API server's own resolver take a few seconds to send it calls.
pub const WARMUP: Duration = Duration::from_secs(15);
/// Stuck Pods found but not yet evicted are looked at again this often (a PDB that blocked an
/// eviction, a cooldown that ran out).
const RETRY_INTERVAL: Duration = Duration::from_secs(5);

pub struct RepairLoop {
    pub client: kube::Client,
    pub own_namespace: String,
    pub identity: String,
    pub policy: Arc<PolicyStore>,
    pub facts: Arc<dyn ClusterFacts>,
    pub metrics: Arc<Metrics>,
}

impl RepairLoop {
    /// Repairs while this replica holds the Lease, until `stop` fires.
    pub async fn run(self, mut leadership: Leadership, stop: Trigger) {
        let stopped = stop.wait();
        tokio::pin!(stopped);
        let recorder = Recorder::new(
            self.client.clone(),
            Reporter {
                controller: "pullsecret-injector".into(),
                instance: Some(self.identity.clone()),
            },
        );
        let mut state = State::default();
        loop {
            tokio::select! {
                () = leadership.until_leader() => {}
                () = &mut stopped => return,
            }
            state.not_before = Instant::now() + WARMUP;
            tracing::info!(warmup = ?WARMUP, "repair: watching Pods for ones stuck without their secrets");
            tokio::select! {
                () = self.watch(&recorder, &mut state) => {}
                () = leadership.until_lost() => {}
                () = &mut stopped => return,
            }
        }
    }

    /// Watches unfinished Pods and repairs candidates at a bounded rate. Only candidates are
    /// kept; every other Pod is looked at as it passes and dropped.
    async fn watch(&self, recorder: &Recorder, state: &mut State) {
        let api: Api<Pod> = Api::all(self.client.clone());
        let config =
            watcher::Config::default().fields("status.phase!=Succeeded,status.phase!=Failed");
        let stream = watcher(api, config).backoff(watch_backoff()).boxed();
        let mut stream = stream;
        let mut ticker = tokio::time::interval(EVICTION_INTERVAL);
        let mut retry = tokio::time::interval(RETRY_INTERVAL);
        loop {
            tokio::select! {
                event = stream.next() => match event {
                    Some(Ok(event)) => self.on_event(event, state),
                    Some(Err(e)) => {
                        self.metrics.watch_errors.get_or_create(&KindLabels { kind: "pods" }).inc();
                        tracing::warn!(resource = "pods", error = %e, "watch error; retrying with backoff");
                    }
                    None => return,
                },
                _ = ticker.tick() => self.repair_one(recorder, state).await,
                _ = retry.tick() => state.requeue(),
            }
        }
    }

    fn on_event(&self, event: watcher::Event<Pod>, state: &mut State) {
        match event {
            watcher::Event::Init => state.listing = Some(HashMap::new()),
            watcher::Event::InitApply(pod) => {
                let found = self.assess(&pod);
                let key = uid(&pod);
                if let (Some(listing), Some(candidate)) = (state.listing.as_mut(), found) {
                    listing.insert(key, candidate);
                }
            }
            watcher::Event::InitDone => {
                state.candidates = state.listing.take().unwrap_or_default();
                tracing::debug!(candidates = state.candidates.len(), "repair: Pods listed");
                state.requeue();
            }
            watcher::Event::Apply(pod) => match self.assess(&pod) {
                Some(candidate) => {
                    tracing::debug!(namespace = %candidate.namespace, pod = %candidate.name, action = candidate.action.as_str(), "repair candidate");
                    if let Some((owner, uid)) = &candidate.owner
                        && let Some(backoff) = state.backoff.get(uid)
                        && backoff.announce()
                    {
                        tracing::warn!(namespace = %candidate.namespace, owner = %owner, retry_in = ?backoff.wait,
                            "the replacement of an evicted Pod was also admitted without its secrets: the API server does not reach the webhook yet; retrying later");
                    }
                    let key = uid(&pod);
                    if !state.candidates.contains_key(&key) {
                        state.queue.push(key.clone());
                    }
                    state.candidates.insert(key, candidate);
                }
                None => {
                    state.candidates.remove(&uid(&pod));
                }
            },
            watcher::Event::Delete(pod) => {
                state.candidates.remove(&uid(&pod));
            }
        }
    }

    /// The pure decision, on the Pod as the API returned it.
    fn assess(&self, pod: &Pod) -> Option<Candidate> {
        let json = serde_json::to_string(pod).ok()?;
        let view: review::Pod<'_> = serde_json::from_str(&json).ok()?;
        let pod_state: PodState<'_> = serde_json::from_str(&json).ok()?;
        let namespace = pod.namespace().unwrap_or_default();
        let policy = self.policy.load();
        let ctx = Context::new(&policy, self.facts.as_ref())
            .own_namespace(Some(self.own_namespace.as_str()));
        let verdict = verdict::for_pod(&view, &namespace, &ctx);
        let assessment = repair::assess(&verdict, &pod_state)?;
        Some(Candidate {
            namespace,
            name: pod.name_any(),
            action: assessment.action,
            missing: assessment.missing.iter().map(|s| s.to_string()).collect(),
            owner: assessment
                .owner
                .map(|(owner, uid)| (owner, uid.to_string())),
        })
    }

    /// Repairs the next queued candidate whose owner is not backing off.
    async fn repair_one(&self, recorder: &Recorder, state: &mut State) {
        if Instant::now() < state.not_before {
            return;
        }
        let Some((key, candidate)) = state.next() else {
            return;
        };
        tracing::debug!(namespace = %candidate.namespace, pod = %candidate.name, action = candidate.action.as_str(), "repairing");
        let reference = object_reference(&candidate);
        match candidate.action {
            Action::Report => {
                state.done.insert(key);
                self.count("reported");
                tracing::warn!(namespace = %candidate.namespace, pod = %candidate.name, missing = ?candidate.missing,
                    "Pod was admitted without its imagePullSecrets and cannot pull; it has no controller: recreate it");
                self.record(recorder, &reference, EventType::Warning, "Reported", format!(
                    "admitted without imagePullSecrets {} (the webhook was unreachable, or the namespace was not selected yet); stuck pulling; no controller to recreate it: delete and recreate this Pod",
                    candidate.missing.join(", "))).await;
            }
            Action::Evict => {
                let api: Api<Pod> = Api::namespaced(self.client.clone(), &candidate.namespace);
                match api.evict(&candidate.name, &EvictParams::default()).await {
                    Ok(_) => {
                        state.done.insert(key);
                        let owner = candidate.owner.as_ref().map_or("", |o| o.0.as_str());
                        if let Some((_, owner_uid)) = &candidate.owner {
                            state.evicted(owner_uid);
                        }
                        self.count("evicted");
                        tracing::info!(namespace = %candidate.namespace, pod = %candidate.name, owner = %owner,
                            missing = ?candidate.missing, "evicted a Pod admitted without its imagePullSecrets; its controller recreates it");
                        self.record(recorder, &reference, EventType::Normal, "Evicted", format!(
                            "evicted: admitted without imagePullSecrets {} (the webhook was unreachable, or the namespace was not selected yet), and stuck pulling; the replacement gets them",
                            candidate.missing.join(", "))).await;
                    }
                    // A PodDisruptionBudget forbids it now: try again later.
                    Err(kube::Error::Api(status)) if status.code == 429 => {
                        self.count("blocked");
                        tracing::info!(namespace = %candidate.namespace, pod = %candidate.name, "eviction blocked by a PodDisruptionBudget; retrying later");
                    }
                    Err(kube::Error::Api(status)) if status.code == 404 => {
                        state.done.insert(key);
                    }
                    Err(e) => {
                        self.count("failed");
                        tracing::warn!(namespace = %candidate.namespace, pod = %candidate.name, error = %e, "eviction failed; retrying later");
                    }
                }
            }
        }
    }

    fn count(&self, outcome: &'static str) {
        self.metrics
            .repairs
            .get_or_create(&crate::metrics::OutcomeLabels { outcome })
            .inc();
    }

    async fn record(
        &self,
        recorder: &Recorder,
        reference: &k8s_openapi::api::core::v1::ObjectReference,
        type_: EventType,
        action: &str,
        note: String,
    ) {
        let event = Event {
            type_,
            reason: "PullSecretRepair".into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&event, reference).await {
            tracing::debug!(error = %e, "cannot record the repair Event");
        }
    }
}

fn uid(pod: &Pod) -> String {
    pod.meta().uid.clone().unwrap_or_else(|| pod.name_any())
}

fn object_reference(candidate: &Candidate) -> k8s_openapi::api::core::v1::ObjectReference {
    k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        namespace: Some(candidate.namespace.clone()),
        name: Some(candidate.name.clone()),
        ..Default::default()
    }
}

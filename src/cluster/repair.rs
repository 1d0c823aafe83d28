//! Repair (`repair: true`): while this replica holds the Lease, watch Pods that have not
//! finished and replace the ones an outage let through without their secrets and that are now
//! stuck pulling ([`core::repair`] decides which): Pending ones that never started, and
//! Running ones whose container must pull again (a restart after the image left the node).
//!
//! What is done with such a Pod, and why:
//!
//! - **evicted**: Pods whose controller is an `apps/v1` ReplicaSet, StatefulSet or DaemonSet,
//!   which recreate them at once and at no cost, through the webhook. The eviction goes
//!   through the Eviction API, so PodDisruptionBudgets hold (the API server applies them to
//!   Running Pods; a Pending Pod serves nothing and is let go), and names the Pod's UID as a
//!   precondition: a StatefulSet's replacement has the same name, and must never be evicted
//!   for its predecessor (a `409 Conflict` means "already replaced": skipped, not an error).
//! - **reported** once (log, Event, `repairs_total{outcome="reported"}`): a Job's Pod (an
//!   eviction counts against the Job's `backoffLimit`), a Pod of any other controller, and a
//!   bare Pod: a person decides.
//! - **skipped**: a Pod that is no longer a candidate when its turn comes (see below), or
//!   already gone or replaced.
//!
//! Repair never acts on a guess. Admission may treat a namespace it has not seen yet as the
//! webhook's namespaceSelector decided (availability first); repair does nothing at all while
//! the namespace cache has not listed or is not fresh (the candidates wait), and treats a
//! namespace the cache does not hold as not selected (skipped). And because the policy, the
//! namespace labels and the Pod may all change between the watch event and the Pod's turn,
//! each candidate is assessed again right before it is evicted or reported: against the policy
//! and facts of that moment, on the Pod as the watch last delivered it (kept with the
//! candidate; a fresh GET would need the `get pods` verb, and the UID precondition already
//! guarantees that only that very Pod can be evicted).
//!
//! Pacing: at most one eviction every [`EVICTION_INTERVAL`], and none for [`WARMUP`] after
//! this replica takes the Lease (a replica that just became ready is not yet among the
//! webhook's endpoints, and a Pod replaced then would be admitted without its secrets again).
//! A controller whose replacement Pod is itself stuck without its secrets (the webhook is
//! still unreachable) waits [`OWNER_BACKOFF`](super::repair_queue::OWNER_BACKOFF), doubling up
//! to ten minutes, before its next eviction, so an unreachable webhook never turns repair into
//! a loop. Each repair is logged, counted (`repairs_total{outcome}`) and, when evicted or
//! reported, recorded as an Event on the Pod.
//!
//! The decisions are pure ([`step`], [`settle`], [`decide`], [`record`]) and tested per cache
//! state and API answer without a cluster; [`RepairLoop`] only calls the API.
//!
//! [`core::repair`]: crate::core::repair

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};

use crate::cluster::client::watch_backoff;
use crate::cluster::lease::Leadership;
use crate::cluster::repair_queue::{Candidate, State};
use crate::core::decision::Context;
use crate::core::facts::{ClusterFacts, NamespaceCache, NamespaceLabel};
use crate::core::policy::{Policy, PolicyStore};
use crate::core::repair::{self, Action, PodState, Unrecreated};
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
/// eviction, a cooldown that ran out, a namespace cache that was not fresh).
const RETRY_INTERVAL: Duration = Duration::from_secs(5);

/// What to do with a candidate when its turn comes, decided before any call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The namespace cache has not listed, or is not fresh: nothing is done on a guess. The
    /// candidate stays and is looked at again.
    Wait(NamespaceCache),
    /// Not (or no longer) a candidate: dropped, no call.
    Skip(Skipped),
    /// Report it (a person decides).
    Report {
        why: Unrecreated,
        missing: Vec<String>,
        owner: Option<String>,
    },
    /// Evict it, its UID as a precondition.
    Evict {
        missing: Vec<String>,
        /// `kind/name` and uid of its controller.
        owner: (String, String),
    },
}

/// Why a candidate was dropped without an eviction or a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skipped {
    /// The namespace is not in a fresh namespace cache (created a moment ago, or gone): repair
    /// treats a namespace it does not know as not selected.
    NamespaceUnknown,
    /// Assessed again at its turn, against the current policy and namespace labels, it no
    /// longer needs repair (a rule removed, the namespace opted out or set to audit, ...).
    NoLongerMatching,
    /// The eviction found no Pod of that name (404).
    Gone,
    /// The Pod of that name has another UID (409, the precondition failed): already replaced.
    Replaced,
}

impl Skipped {
    fn as_str(self) -> &'static str {
        match self {
            Skipped::NamespaceUnknown => "namespace not in the namespace cache",
            Skipped::NoLongerMatching => "no longer needs repair",
            Skipped::Gone => "already gone",
            Skipped::Replaced => "already replaced",
        }
    }
}

/// How a candidate's turn ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Evicted,
    Reported,
    Skipped(Skipped),
    /// Still a candidate; looked at again later.
    Retry(Retry),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// The namespace cache is not listed or not fresh.
    Waiting,
    /// A PodDisruptionBudget forbids the eviction now (429).
    Blocked,
    /// Any other error.
    Failed,
}

impl Outcome {
    /// The `repairs_total` label; `None` for a wait, which is not a repair attempt.
    pub fn label(self) -> Option<&'static str> {
        match self {
            Outcome::Evicted => Some("evicted"),
            Outcome::Reported => Some("reported"),
            Outcome::Skipped(_) => Some("skipped"),
            Outcome::Retry(Retry::Waiting) => None,
            Outcome::Retry(Retry::Blocked) => Some("blocked"),
            Outcome::Retry(Retry::Failed) => Some("failed"),
        }
    }
}

/// The candidate assessed again, now: the namespace cache must be listed and fresh, the
/// namespace known, and the Pod (as last delivered) still in need of repair under the current
/// policy and labels.
pub fn step(
    candidate: &Candidate,
    policy: &Policy,
    facts: &dyn ClusterFacts,
    own_namespace: &str,
) -> Step {
    match facts.namespace_cache() {
        NamespaceCache::Fresh => {}
        unsure => return Step::Wait(unsure),
    }
    if facts.namespace_label(&candidate.namespace) == NamespaceLabel::Unknown {
        return Step::Skip(Skipped::NamespaceUnknown);
    }
    let json: &str = &candidate.pod;
    let (Ok(view), Ok(state)) = (
        serde_json::from_str::<review::Pod<'_>>(json),
        serde_json::from_str::<PodState<'_>>(json),
    ) else {
        return Step::Skip(Skipped::NoLongerMatching);
    };
    let ctx = Context::new(policy, facts).own_namespace(Some(own_namespace));
    let verdict = verdict::for_pod(&view, &candidate.namespace, &ctx);
    let Some(assessment) = repair::assess(&verdict, &state) else {
        return Step::Skip(Skipped::NoLongerMatching);
    };
    let missing = assessment.missing.iter().map(|s| s.to_string()).collect();
    let owner = assessment
        .owner
        .map(|(owner, uid)| (owner, uid.to_string()));
    match (assessment.action, owner) {
        (Action::Evict, Some(owner)) => Step::Evict { missing, owner },
        // Evict always has a controller; without one, a report is the safe answer.
        (Action::Evict, None) => Step::Report {
            why: Unrecreated::Bare,
            missing,
            owner: None,
        },
        (Action::Report(why), owner) => Step::Report {
            why,
            missing,
            owner: owner.map(|(owner, _)| owner),
        },
    }
}

/// What an eviction's answer means.
pub fn settle(answer: &Result<(), kube::Error>) -> Outcome {
    match answer {
        Ok(()) => Outcome::Evicted,
        Err(kube::Error::Api(status)) => match status.code {
            404 => Outcome::Skipped(Skipped::Gone),
            409 => Outcome::Skipped(Skipped::Replaced),
            429 => Outcome::Retry(Retry::Blocked),
            _ => Outcome::Retry(Retry::Failed),
        },
        Err(_) => Outcome::Retry(Retry::Failed),
    }
}

/// The whole decision for a candidate's turn: [`step`], then, for an eviction only, the call
/// (`evict`, given the Pod's UID) and what its answer means. Returns the step, the outcome,
/// and the error of a failed call (for the log).
pub async fn decide<F, Fut>(step: Step, evict: F) -> (Step, Outcome, Option<kube::Error>)
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<(), kube::Error>>,
{
    let outcome = match &step {
        Step::Wait(_) => Outcome::Retry(Retry::Waiting),
        Step::Skip(why) => Outcome::Skipped(*why),
        Step::Report { .. } => Outcome::Reported,
        Step::Evict { .. } => {
            let answer = evict().await;
            let outcome = settle(&answer);
            return (step, outcome, answer.err());
        }
    };
    (step, outcome, None)
}

/// The queue after a candidate's turn: evicted or reported Pods are done (an eviction starts
/// its controller's backoff); skipped ones are dropped (a later watch event brings a Pod back
/// if it needs repair again); retried ones stay.
pub fn record(state: &mut State, key: &str, step: &Step, outcome: Outcome) {
    match outcome {
        Outcome::Evicted => {
            state.done.insert(key.to_string());
            if let Step::Evict {
                owner: (_, owner_uid),
                ..
            } = step
            {
                state.evicted(owner_uid);
            }
        }
        Outcome::Reported => {
            state.done.insert(key.to_string());
        }
        Outcome::Skipped(_) => {
            state.candidates.remove(key);
        }
        Outcome::Retry(_) => {}
    }
}

/// The Eviction body, with the Pod's UID as a precondition. Written by hand: kube 5's
/// `Api::evict` sends its `delete_options` under the key `delete_options`, which the API
/// server does not know (it reads `deleteOptions`) and drops, precondition and all. No
/// `apiVersion` and `kind`: the API server fills in the version it serves (`policy/v1beta1`
/// before Kubernetes 1.22, `policy/v1` since).
pub fn eviction_body(namespace: &str, name: &str, uid: &str) -> serde_json::Value {
    serde_json::json!({
        "metadata": {"name": name, "namespace": namespace},
        "deleteOptions": {"preconditions": {"uid": uid}},
    })
}

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

    /// The watch-time shortlist, on the Pod as the API returned it. Generous on purpose (an
    /// unknown namespace counts as the webhook's selector decided, as in admission): nothing
    /// is done before [`step`] assesses the candidate again at its turn. A Pod without a UID
    /// (never one from the API server) is not kept: it could not be evicted safely.
    fn assess(&self, pod: &Pod) -> Option<Candidate> {
        let pod_uid = pod.meta().uid.clone()?;
        let json = serde_json::to_string(pod).ok()?;
        let namespace = pod.namespace().unwrap_or_default();
        let (action, owner) = {
            let view: review::Pod<'_> = serde_json::from_str(&json).ok()?;
            let pod_state: PodState<'_> = serde_json::from_str(&json).ok()?;
            let policy = self.policy.load();
            let ctx = Context::new(&policy, self.facts.as_ref())
                .own_namespace(Some(self.own_namespace.as_str()));
            let verdict = verdict::for_pod(&view, &namespace, &ctx);
            let assessment = repair::assess(&verdict, &pod_state)?;
            (
                assessment.action,
                assessment
                    .owner
                    .map(|(owner, uid)| (owner, uid.to_string())),
            )
        };
        Some(Candidate {
            namespace,
            name: pod.name_any(),
            uid: pod_uid,
            pod: Arc::from(json),
            action,
            owner,
        })
    }

    /// Takes the next queued candidates whose owners are not backing off: skips cost no call
    /// and are passed over in the same tick; a report or an eviction ends it, and so does a
    /// namespace cache that cannot be trusted yet.
    async fn repair_one(&self, recorder: &Recorder, state: &mut State) {
        if Instant::now() < state.not_before {
            return;
        }
        while let Some((key, candidate)) = state.next() {
            let policy = self.policy.load();
            let next = step(
                &candidate,
                &policy,
                self.facts.as_ref(),
                &self.own_namespace,
            );
            let (next, outcome, error) = decide(next, || self.evict(&candidate)).await;
            record(state, &key, &next, outcome);
            if let Some(outcome) = outcome.label() {
                self.count(outcome);
            }
            self.tell(recorder, &candidate, &next, outcome, error).await;
            if !matches!(outcome, Outcome::Skipped(_)) {
                return;
            }
        }
    }

    /// The eviction, with the Pod's UID as a precondition.
    async fn evict(&self, candidate: &Candidate) -> Result<(), kube::Error> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &candidate.namespace);
        let body = eviction_body(&candidate.namespace, &candidate.name, &candidate.uid);
        api.create_subresource::<_, kube::core::Status>(
            "eviction",
            &candidate.name,
            &PostParams::default(),
            &body,
        )
        .await
        .map(|_| ())
    }

    /// Logs a turn and records the Event of an eviction or a report.
    async fn tell(
        &self,
        recorder: &Recorder,
        candidate: &Candidate,
        step: &Step,
        outcome: Outcome,
        error: Option<kube::Error>,
    ) {
        let (namespace, pod) = (&candidate.namespace, &candidate.name);
        let reference = object_reference(candidate);
        match (outcome, step) {
            (Outcome::Evicted, Step::Evict { missing, owner }) => {
                tracing::info!(namespace = %namespace, pod = %pod, owner = %owner.0, missing = ?missing,
                    "evicted a Pod admitted without its imagePullSecrets; its controller recreates it");
                self.record(recorder, &reference, EventType::Normal, "Evicted", format!(
                    "evicted: admitted without imagePullSecrets {} (the webhook was unreachable, or the namespace was not selected yet), and stuck pulling; {} recreates it with them",
                    missing.join(", "), owner.0)).await;
            }
            (
                Outcome::Reported,
                Step::Report {
                    why,
                    missing,
                    owner,
                },
            ) => {
                let owner = owner.as_deref().unwrap_or("");
                tracing::warn!(namespace = %namespace, pod = %pod, owner = %owner, missing = ?missing,
                    "Pod was admitted without its imagePullSecrets and cannot pull; {}", why.advice());
                self.record(recorder, &reference, EventType::Warning, "Reported", format!(
                    "admitted without imagePullSecrets {} (the webhook was unreachable, or the namespace was not selected yet); stuck pulling; {}",
                    missing.join(", "), why.advice())).await;
            }
            (Outcome::Skipped(why @ (Skipped::NamespaceUnknown | Skipped::Replaced)), _) => {
                tracing::info!(namespace = %namespace, pod = %pod, uid = %candidate.uid, "repair skipped: {}", why.as_str());
            }
            (Outcome::Skipped(why), _) => {
                tracing::debug!(namespace = %namespace, pod = %pod, uid = %candidate.uid, "repair skipped: {}", why.as_str());
            }
            (Outcome::Retry(Retry::Waiting), Step::Wait(cache)) => {
                tracing::debug!(namespace = %namespace, pod = %pod, cache = ?cache,
                    "repair waits: the namespace cache is not listed or not fresh");
            }
            (Outcome::Retry(Retry::Blocked), _) => {
                tracing::info!(namespace = %namespace, pod = %pod, "eviction blocked by a PodDisruptionBudget; retrying later");
            }
            (Outcome::Retry(_), _) => {
                let error = error.map(|e| e.to_string()).unwrap_or_default();
                tracing::warn!(namespace = %namespace, pod = %pod, error = %error, "eviction failed; retrying later");
            }
            (Outcome::Evicted | Outcome::Reported, _) => {}
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
        uid: Some(candidate.uid.clone()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::collections::HashMap;

    use futures_util::FutureExt;
    use kube::core::Status;

    use super::*;
    use crate::core::config::{Selection, Settings};
    use crate::core::decision::tests::{policy, policy_with};
    use crate::core::facts::SecretPresence;

    /// Namespace labels behind a namespace cache in a given state.
    struct Facts {
        cache: NamespaceCache,
        labels: HashMap<&'static str, NamespaceLabel>,
    }

    impl ClusterFacts for Facts {
        fn namespace_label(&self, namespace: &str) -> NamespaceLabel {
            self.labels
                .get(namespace)
                .copied()
                .unwrap_or(NamespaceLabel::Unknown)
        }
        fn secret_presence(&self, _: &str, _: &str) -> SecretPresence {
            SecretPresence::Unknown
        }
        fn namespace_cache(&self) -> NamespaceCache {
            self.cache
        }
    }

    /// A Pod of `team-a` stuck pulling `nginx` (needs `dockerhub`), owned by `owner`
    /// (`apiVersion`, `kind`), or bare.
    fn candidate(owner: Option<(&str, &str)>) -> Candidate {
        let owners = owner.map_or(String::new(), |(api_version, kind)| {
            format!(
                r#"{{"apiVersion":"{api_version}","kind":"{kind}","name":"web","uid":"owner-1","controller":true}}"#
            )
        });
        let json = format!(
            r#"{{"metadata":{{"name":"web-0","namespace":"team-a","uid":"pod-1","ownerReferences":[{owners}]}},
            "spec":{{"containers":[{{"name":"app","image":"nginx"}}]}},
            "status":{{"phase":"Pending","containerStatuses":[{{"name":"app","state":{{"waiting":{{"reason":"ImagePullBackOff"}}}}}}]}}}}"#
        );
        Candidate {
            namespace: "team-a".into(),
            name: "web-0".into(),
            uid: "pod-1".into(),
            pod: Arc::from(json),
            // What the watch found; the turn assesses again.
            action: Action::Evict,
            owner: owner.map(|(_, kind)| (format!("{kind}/web"), "owner-1".to_string())),
        }
    }

    fn api_error(code: u16) -> Result<(), kube::Error> {
        Err(kube::Error::Api(
            Status::failure("refused", "Refused")
                .with_code(code)
                .boxed(),
        ))
    }

    /// Where a candidate is after its turn.
    #[derive(Debug, PartialEq, Eq)]
    enum After {
        /// Done: not tried again.
        Done,
        /// Dropped: back only if a watch event finds it again.
        Dropped,
        /// Still queued for a later turn.
        Kept,
    }

    /// One turn of the loop for the candidate, with `answer` as the eviction's answer:
    /// the outcome, whether the eviction was called, where the candidate is left, and
    /// whether its controller now backs off.
    fn turn(
        candidate: Candidate,
        policy: &Policy,
        facts: &Facts,
        answer: fn() -> Result<(), kube::Error>,
    ) -> (Outcome, bool, After, bool) {
        let mut state = State::default();
        state.candidates.insert(candidate.uid.clone(), candidate);
        state.requeue();
        let (key, candidate) = state.next().expect("queued");
        let called = Cell::new(false);
        let decided = decide(
            step(&candidate, policy, facts, "pullsecret-injector"),
            || {
                called.set(true);
                std::future::ready(answer())
            },
        )
        .now_or_never();
        let (step, outcome, _) = decided.expect("a fake eviction never waits");
        record(&mut state, &key, &step, outcome);
        let after = if state.done.contains(&key) {
            After::Done
        } else if state.candidates.contains_key(&key) {
            After::Kept
        } else {
            After::Dropped
        };
        (
            outcome,
            called.get(),
            after,
            state.backoff.contains_key("owner-1"),
        )
    }

    /// The loop's decision per cache state, re-assessment and API answer. No cluster: the
    /// eviction is a fake returning the answer the row gives.
    #[test]
    fn decisions_per_cache_state_reassessment_and_answer() {
        use NamespaceCache::{Fresh, NotListed, Stale};
        use NamespaceLabel::{Audit, Disabled, Enabled, Unlabelled};
        let opt_in = policy();
        let all = policy_with(Settings {
            selection: Selection::All,
            ..Settings::default()
        });
        let excluded = policy_with(Settings {
            exclude: vec!["team-a".into()],
            ..Settings::default()
        });
        let rs = Some(("apps/v1", "ReplicaSet"));
        let sts = Some(("apps/v1", "StatefulSet"));
        let job = Some(("batch/v1", "Job"));
        let custom = Some(("apps.kruise.io/v1alpha1", "CloneSet"));
        let ok: fn() -> Result<(), kube::Error> = || Ok(());
        // Where no eviction is expected: if one happens anyway, the row's `called` and outcome
        // columns fail, naming the row.
        let unused = ok;
        let transport: fn() -> Result<(), kube::Error> =
            || Err(kube::Error::LinesCodecMaxLineLengthExceeded);
        use After::{Done, Dropped, Kept};
        use Outcome::{Evicted, Reported, Retry as Again, Skipped as Skip};
        type Row<'a> = (
            &'a str,
            NamespaceCache,
            Option<NamespaceLabel>,
            &'a Policy,
            Option<(&'a str, &'a str)>,
            fn() -> Result<(), kube::Error>,
            (Outcome, bool, After, bool),
        );
        const W: Outcome = Again(Retry::Waiting);
        const NS: Outcome = Skip(Skipped::NamespaceUnknown);
        const NO: Outcome = Skip(Skipped::NoLongerMatching);
        #[rustfmt::skip]
        let rows: Vec<Row<'_>> = vec![
            // The namespace cache decides whether anything is done at all.
            ("not listed", NotListed, Some(Enabled), &opt_in, rs, unused, (W, false, Kept, false)),
            ("not listed, namespace unknown", NotListed, None, &opt_in, rs, unused, (W, false, Kept, false)),
            ("not fresh", Stale, Some(Enabled), &opt_in, rs, unused, (W, false, Kept, false)),
            ("not fresh, bare", Stale, Some(Enabled), &opt_in, None, unused, (W, false, Kept, false)),
            // A namespace a fresh cache does not hold is not selected, in either mode.
            ("namespace unknown", Fresh, None, &opt_in, rs, unused, (NS, false, Dropped, false)),
            ("namespace unknown, selection all", Fresh, None, &all, rs, unused, (NS, false, Dropped, false)),
            ("namespace unknown, bare: no report either", Fresh, None, &all, None, unused, (NS, false, Dropped, false)),
            // Assessed again at its turn: what changed since the watch event counts.
            ("namespace opted out since", Fresh, Some(Disabled), &opt_in, rs, unused, (NO, false, Dropped, false)),
            ("namespace unlabelled since", Fresh, Some(Unlabelled), &opt_in, rs, unused, (NO, false, Dropped, false)),
            ("namespace set to audit since", Fresh, Some(Audit), &opt_in, rs, unused, (NO, false, Dropped, false)),
            ("namespace excluded by a reload", Fresh, Some(Enabled), &excluded, rs, unused, (NO, false, Dropped, false)),
            ("job's namespace opted out since", Fresh, Some(Disabled), &opt_in, job, unused, (NO, false, Dropped, false)),
            ("unlabelled, selection all", Fresh, Some(Unlabelled), &all, rs, ok, (Evicted, true, Done, true)),
            // Listed, fresh, selected: the controller decides, then the API's answer.
            ("evicted", Fresh, Some(Enabled), &opt_in, rs, ok, (Evicted, true, Done, true)),
            ("StatefulSet evicted", Fresh, Some(Enabled), &opt_in, sts, ok, (Evicted, true, Done, true)),
            ("Job: reported", Fresh, Some(Enabled), &opt_in, job, unused, (Reported, false, Done, false)),
            ("custom controller: reported", Fresh, Some(Enabled), &opt_in, custom, unused, (Reported, false, Done, false)),
            ("bare: reported", Fresh, Some(Enabled), &opt_in, None, unused, (Reported, false, Done, false)),
            ("404: gone", Fresh, Some(Enabled), &opt_in, rs, || api_error(404), (Skip(Skipped::Gone), true, Dropped, false)),
            ("409: already replaced", Fresh, Some(Enabled), &opt_in, sts, || api_error(409), (Skip(Skipped::Replaced), true, Dropped, false)),
            ("429: a PodDisruptionBudget", Fresh, Some(Enabled), &opt_in, rs, || api_error(429), (Again(Retry::Blocked), true, Kept, false)),
            ("500: ambiguous PodDisruptionBudgets", Fresh, Some(Enabled), &opt_in, rs, || api_error(500), (Again(Retry::Failed), true, Kept, false)),
            ("403: forbidden", Fresh, Some(Enabled), &opt_in, rs, || api_error(403), (Again(Retry::Failed), true, Kept, false)),
            ("no answer", Fresh, Some(Enabled), &opt_in, rs, transport, (Again(Retry::Failed), true, Kept, false)),
        ];
        for (case, cache, label, policy, owner, answer, want) in rows {
            let facts = Facts {
                cache,
                labels: label.map(|l| ("team-a", l)).into_iter().collect(),
            };
            assert_eq!(
                turn(candidate(owner), policy, &facts, answer),
                want,
                "{case}"
            );
        }
    }

    #[test]
    fn outcomes_count_under_their_labels_and_waits_do_not_count() {
        let cases = [
            (Outcome::Evicted, Some("evicted")),
            (Outcome::Reported, Some("reported")),
            (Outcome::Skipped(Skipped::Replaced), Some("skipped")),
            (Outcome::Skipped(Skipped::NamespaceUnknown), Some("skipped")),
            (Outcome::Retry(Retry::Blocked), Some("blocked")),
            (Outcome::Retry(Retry::Failed), Some("failed")),
            (Outcome::Retry(Retry::Waiting), None),
        ];
        for (outcome, label) in cases {
            assert_eq!(outcome.label(), label, "{outcome:?}");
        }
    }

    /// The step names what the Event and the log need: a Job's Pod is reported with the
    /// reason, a ReplicaSet's evicted with its controller (whose backoff it starts).
    #[test]
    fn steps_carry_the_reason_and_the_controller() {
        let facts = Facts {
            cache: NamespaceCache::Fresh,
            labels: HashMap::from([("team-a", NamespaceLabel::Enabled)]),
        };
        let policy = policy();
        assert_eq!(
            step(
                &candidate(Some(("batch/v1", "Job"))),
                &policy,
                &facts,
                "psi"
            ),
            Step::Report {
                why: Unrecreated::Job,
                missing: vec!["dockerhub".into()],
                owner: Some("Job/web".into()),
            }
        );
        assert_eq!(
            step(
                &candidate(Some(("apps/v1", "ReplicaSet"))),
                &policy,
                &facts,
                "psi"
            ),
            Step::Evict {
                missing: vec!["dockerhub".into()],
                owner: ("ReplicaSet/web".into(), "owner-1".into()),
            }
        );
    }

    /// The eviction names the Pod's UID, where the API server reads it; kube's own `evict`
    /// does not (its body says `delete_options`), which is why the body is written here. If
    /// this canary fails, kube has fixed it and `Api::evict` may be used again.
    #[test]
    fn evictions_carry_the_pod_uid_as_a_precondition() {
        let body = eviction_body("team-a", "web-0", "pod-1");
        assert_eq!(
            body,
            serde_json::json!({
                "metadata": {"name": "web-0", "namespace": "team-a"},
                "deleteOptions": {"preconditions": {"uid": "pod-1"}},
            })
        );
        let params = kube::api::EvictParams {
            delete_options: Some(kube::api::DeleteParams {
                preconditions: Some(kube::api::Preconditions {
                    uid: Some("pod-1".into()),
                    resource_version: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let request = kube::core::Request::new("/api/v1/namespaces/team-a/pods")
            .evict("web-0", &params)
            .expect("request");
        let sent: serde_json::Value = serde_json::from_slice(request.body()).expect("json");
        assert!(
            sent.get("deleteOptions").is_none(),
            "kube sends deleteOptions now: {sent}"
        );
        assert!(sent.get("delete_options").is_some(), "{sent}");
        // Ours goes to the same place, the same way: `pods/eviction` create, as the chart grants.
        let ours = kube::core::Request::new("/api/v1/namespaces/team-a/pods")
            .create_subresource(
                "eviction",
                "web-0",
                &PostParams::default(),
                serde_json::to_vec(&body).expect("json"),
            )
            .expect("request");
        assert_eq!(
            (ours.method(), ours.uri()),
            (request.method(), request.uri())
        );
    }
}

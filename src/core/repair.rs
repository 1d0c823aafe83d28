//! Which existing Pods need repair: admitted without the secrets the injector would have
//! added (the webhook could not be reached, and `failurePolicy: Ignore` let them through),
//! and now stuck pulling an image. Their `imagePullSecrets` can never change, so the only fix
//! is a new Pod, and what repair may do about it depends on who would make that new Pod:
//!
//! - **evicted**: Pods whose controller (the ownerReference with `controller: true`) is an
//!   `apps/v1` ReplicaSet, StatefulSet or DaemonSet. These recreate an evicted Pod at once, at
//!   no cost to the workload, and the replacement goes through the webhook.
//! - **reported** (log, Event, metric; a person decides): a Job's Pod (an eviction counts as a
//!   failed attempt against the Job's `backoffLimit`, and a CronJob's Job is no different),
//!   a Pod of any other controller (custom controllers, or a ReplicaSet of another API
//!   version: repair does not know what an eviction costs them), and a bare Pod (nothing
//!   would recreate it).
//! - **left alone**: everything else: not stuck pulling, being deleted, out of scope or
//!   audit-only, or already holding every secret the injector would add (a wrong
//!   credential, which a new Pod would not fix).
//!
//! Pure: the Pod's verdict (as if it were created now) and its state in, an assessment out.
//! The verdict is only as good as the facts it was made with; the repair loop
//! (`cluster/repair.rs`) acts only on facts it trusts, and assesses each Pod again right
//! before it acts.

use serde::Deserialize;
use std::borrow::Cow;

use crate::core::verdict::{Outcome, Verdict};

/// The container waiting reasons of a failed pull, as the kubelet reports them.
pub const PULL_FAILURES: [&str; 2] = ["ErrImagePull", "ImagePullBackOff"];

/// The parts of an existing Pod that say whether it is stuck, and who owns it.
#[derive(Debug, Default, Deserialize)]
pub struct PodState<'a> {
    #[serde(borrow, default)]
    pub metadata: StateMeta<'a>,
    #[serde(borrow, default)]
    pub status: Option<PodStatus<'a>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct StateMeta<'a> {
    #[serde(borrow, default, rename = "deletionTimestamp")]
    pub deletion_timestamp: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "ownerReferences")]
    pub owner_references: Vec<OwnerReference<'a>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct OwnerReference<'a> {
    #[serde(borrow, default, rename = "apiVersion")]
    pub api_version: Cow<'a, str>,
    #[serde(borrow, default)]
    pub kind: Cow<'a, str>,
    #[serde(borrow, default)]
    pub name: Cow<'a, str>,
    #[serde(borrow, default)]
    pub uid: Cow<'a, str>,
    #[serde(default)]
    pub controller: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
pub struct PodStatus<'a> {
    #[serde(borrow, default)]
    pub phase: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "initContainerStatuses")]
    pub init_container_statuses: Vec<ContainerStatus<'a>>,
    #[serde(borrow, default, rename = "containerStatuses")]
    pub container_statuses: Vec<ContainerStatus<'a>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct ContainerStatus<'a> {
    #[serde(borrow, default)]
    pub name: Cow<'a, str>,
    #[serde(borrow, default)]
    pub state: Option<ContainerState<'a>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct ContainerState<'a> {
    #[serde(borrow, default)]
    pub waiting: Option<Waiting<'a>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Waiting<'a> {
    #[serde(borrow, default)]
    pub reason: Option<Cow<'a, str>>,
}

/// The controllers (`apps/v1` kinds) whose Pods repair evicts: each recreates an evicted Pod
/// at once, with no penalty (a StatefulSet's replacement keeps the name, which is why an
/// eviction names the Pod's UID as a precondition).
pub const RECREATING_CONTROLLERS: [&str; 3] = ["ReplicaSet", "StatefulSet", "DaemonSet"];

/// What repair does with a Pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Owned by a controller in [`RECREATING_CONTROLLERS`]: evict it (PodDisruptionBudgets
    /// apply) and let it be recreated.
    Evict,
    /// Report it; a person decides, for the reason given.
    Report(Unrecreated),
}

/// Why a stuck Pod is reported, not evicted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unrecreated {
    /// No controller: nothing would recreate it.
    Bare,
    /// A Job's Pod: an eviction counts against the Job's `backoffLimit`.
    Job,
    /// Another controller: repair does not know what an eviction costs it.
    OtherController,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Evict => "evict",
            Action::Report(_) => "report",
        }
    }

    /// Evicted only when the controller is one that recreates Pods without penalty.
    pub fn for_owners(owners: &[OwnerReference<'_>]) -> Action {
        match owners.iter().find(|o| o.controller == Some(true)) {
            None => Action::Report(Unrecreated::Bare),
            Some(o) if o.api_version == "apps/v1" && RECREATING_CONTROLLERS.contains(&&*o.kind) => {
                Action::Evict
            }
            Some(o) if o.api_version == "batch/v1" && o.kind == "Job" => {
                Action::Report(Unrecreated::Job)
            }
            Some(_) => Action::Report(Unrecreated::OtherController),
        }
    }
}

impl Unrecreated {
    /// What a person should do, for the log and the Event.
    pub fn advice(self) -> &'static str {
        match self {
            Unrecreated::Bare => {
                "it has no controller to recreate it: delete and recreate this Pod"
            }
            Unrecreated::Job => {
                "it belongs to a Job, which would count an eviction against its backoffLimit: delete this Pod if the Job can spare the attempt, or run the Job again"
            }
            Unrecreated::OtherController => {
                "its controller is not a ReplicaSet, StatefulSet or DaemonSet (apps/v1), so repair does not evict it: recreate it through its controller"
            }
        }
    }
}

/// A Pod that needs repair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assessment<'a> {
    pub action: Action,
    /// The secrets the injector would have added.
    pub missing: Vec<&'a str>,
    /// The containers waiting on a failed pull.
    pub failing: Vec<&'a str>,
    /// The controller (`kind/name`, uid), when there is one, whatever its kind.
    pub owner: Option<(String, &'a str)>,
}

/// Whether the Pod needs repair: not being deleted, at least one container waiting on a failed
/// pull, and the injector would now add a secret the Pod lacks (in enforce mode; audit-only
/// namespaces are never repaired). A Pod that has its secrets and still fails to pull has
/// another problem (a wrong credential) that a new Pod would not fix, so it is left alone.
/// The action follows the controller ([`Action::for_owners`]).
pub fn assess<'a>(verdict: &Verdict<'a>, state: &'a PodState<'a>) -> Option<Assessment<'a>> {
    if state.metadata.deletion_timestamp.is_some() || verdict.outcome != Outcome::Patched {
        return None;
    }
    let missing: Vec<&str> = verdict.secrets.iter().map(|s| s.name).collect();
    if missing.is_empty() {
        return None;
    }
    let status = state.status.as_ref()?;
    let failing: Vec<&str> = status
        .init_container_statuses
        .iter()
        .chain(&status.container_statuses)
        .filter(|c| {
            c.state
                .as_ref()
                .and_then(|s| s.waiting.as_ref())
                .and_then(|w| w.reason.as_deref())
                .is_some_and(|reason| PULL_FAILURES.contains(&reason))
        })
        .map(|c| &*c.name)
        .collect();
    if failing.is_empty() {
        return None;
    }
    let owner = state
        .metadata
        .owner_references
        .iter()
        .find(|o| o.controller == Some(true))
        .map(|o| (format!("{}/{}", o.kind, o.name), &*o.uid));
    Some(Assessment {
        action: Action::for_owners(&state.metadata.owner_references),
        missing,
        failing,
        owner,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::decision::Context;
    use crate::core::decision::tests::{labelled, policy};
    use crate::core::facts::NamespaceLabel;
    use crate::core::review::Pod;
    use crate::core::verdict::for_pod;

    /// A Pod of `team-a` with an `app` container (`nginx`, needs `dockerhub`) and a `side`
    /// container, its ownerReferences, metadata extras, spec extras and container statuses.
    fn pod_json(owners: &str, meta: &str, spec: &str, status: &str) -> String {
        format!(
            r#"{{"metadata":{{"ownerReferences":[{owners}],{meta}"name":"web-5d9-x","namespace":"team-a","uid":"pod-1"}},
            "spec":{{"initContainers":[{{"name":"init","image":"nginx"}}],
              "containers":[{{"name":"app","image":"nginx"}},{{"name":"side","image":"quay.io/a/b"}}]{spec}}},
            {status}}}"#
        )
    }

    fn assess_json(json: &str, label: NamespaceLabel) -> Option<(Action, Vec<String>)> {
        let policy = policy();
        let facts = labelled("team-a", label);
        let pod: Pod<'_> = serde_json::from_str(json).expect("pod");
        let state: PodState<'_> = serde_json::from_str(json).expect("state");
        let verdict = for_pod(&pod, "team-a", &Context::new(&policy, &facts));
        assess(&verdict, &state).map(|a| {
            assert_eq!(a.missing, ["dockerhub"], "{json}");
            (a.action, a.failing.iter().map(|s| s.to_string()).collect())
        })
    }

    fn owner(api_version: &str, kind: &str, controller: &str) -> String {
        format!(
            r#"{{"apiVersion":"{api_version}","kind":"{kind}","name":"x","uid":"o-1"{controller}}}"#
        )
    }

    /// Owner kinds × Pod states × verdicts: a Pod is repaired only when the verdict would add
    /// a secret it lacks and it is stuck pulling; then its controller decides evict or report.
    #[test]
    fn owner_kinds_times_pod_states_times_verdicts() {
        use NamespaceLabel::{Audit, Disabled, Enabled, Unlabelled};
        use Unrecreated::{Bare, Job, OtherController};
        let ctl = r#","controller":true"#;
        let (evict, bare, other) = (
            Action::Evict,
            Action::Report(Bare),
            Action::Report(OtherController),
        );
        let statefulset_and_configmap = format!(
            "{},{}",
            owner("v1", "ConfigMap", ""),
            owner("apps/v1", "StatefulSet", ctl)
        );
        #[rustfmt::skip]
        let owners: Vec<(&str, String, Action)> = vec![
            ("none", String::new(), bare),
            // An owner that is not the controller does not recreate the Pod.
            ("not the controller", owner("apps/v1", "ReplicaSet", r#","controller":false"#), bare),
            ("controller unset", owner("apps/v1", "ReplicaSet", ""), bare),
            ("ReplicaSet", owner("apps/v1", "ReplicaSet", ctl), evict),
            ("StatefulSet", owner("apps/v1", "StatefulSet", ctl), evict),
            ("DaemonSet", owner("apps/v1", "DaemonSet", ctl), evict),
            ("controller and another owner", statefulset_and_configmap, evict),
            // A Job (a CronJob's too) counts an eviction against its backoffLimit.
            ("Job", owner("batch/v1", "Job", ctl), Action::Report(Job)),
            // Controllers repair does not know the cost of an eviction for.
            ("ReplicaSet of another API version", owner("extensions/v1beta1", "ReplicaSet", ctl), other),
            ("a custom Job", owner("example.com/v1", "Job", ctl), other),
            ("a custom controller", owner("apps.kruise.io/v1alpha1", "CloneSet", ctl), other),
            ("ReplicationController", owner("v1", "ReplicationController", ctl), other),
            ("Node", owner("v1", "Node", ctl), other),
        ];
        let waiting = |container: &str, reason: &str| {
            format!(
                r#"{{"name":"{container}","state":{{"waiting":{{"reason":"{reason}","message":"401 Unauthorized"}}}}}}"#
            )
        };
        let running =
            |container: &str| format!(r#"{{"name":"{container}","state":{{"running":{{}}}}}}"#);
        let statuses = |phase: &str, init: &str, main: &str| {
            format!(
                r#""status":{{"phase":"{phase}","initContainerStatuses":[{init}],"containerStatuses":[{main}]}}"#
            )
        };
        let deleting = r#""deletionTimestamp":"2026-01-01T00:00:00Z","#;
        let (backoff, err_pull) = (
            waiting("app", "ImagePullBackOff"),
            waiting("app", "ErrImagePull"),
        );
        let (init_backoff, initializing) = (
            waiting("init", "ImagePullBackOff"),
            waiting("app", "PodInitializing"),
        );
        let crash = waiting("app", "CrashLoopBackOff");
        let sidecar_up = format!("{backoff},{}", running("side"));
        let restarted = format!("{},{backoff}", running("side"));
        // (state, metadata extras, status, the containers failing a pull if stuck)
        #[rustfmt::skip]
        let states: Vec<(&str, &str, String, Option<Vec<&str>>)> = vec![
            ("ImagePullBackOff", "", statuses("Pending", "", &sidecar_up), Some(vec!["app"])),
            ("ErrImagePull", "", statuses("Pending", "", &err_pull), Some(vec!["app"])),
            ("init container", "", statuses("Pending", &init_backoff, &initializing), Some(vec!["init"])),
            ("Running, pulling again after a restart", "", statuses("Running", "", &restarted), Some(vec!["app"])),
            ("CrashLoopBackOff", "", statuses("Running", "", &crash), None),
            ("running", "", statuses("Running", "", &running("app")), None),
            ("no status", "", r#""status":{}"#.to_string(), None),
            ("status absent", "", r#""kind":"Pod""#.to_string(), None),
            ("being deleted", deleting, statuses("Pending", "", &backoff), None),
        ];
        let with_secret = r#","imagePullSecrets":[{"name":"dockerhub"}]"#;
        // (verdict, namespace label, spec extras, would the injector add a secret now)
        let verdicts = [
            ("patched", Enabled, "", true),
            ("unchanged: has its secret", Enabled, with_secret, false),
            ("audited", Audit, "", false),
            ("skipped: not selected", Unlabelled, "", false),
            ("skipped: disabled", Disabled, "", false),
        ];
        let mut cases = 0;
        for (owner_case, owners_json, action) in &owners {
            for (state_case, meta, status, failing) in &states {
                for (verdict_case, label, spec, patched) in &verdicts {
                    let json = pod_json(owners_json, meta, spec, status);
                    let want = match (patched, failing) {
                        (true, Some(failing)) => Some((
                            *action,
                            failing.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                        )),
                        _ => None,
                    };
                    assert_eq!(
                        assess_json(&json, *label),
                        want,
                        "owner {owner_case}, state {state_case}, verdict {verdict_case}"
                    );
                    cases += 1;
                }
            }
        }
        assert_eq!(cases, 13 * 9 * 5);
    }

    #[test]
    fn only_apps_v1_recreating_controllers_are_evicted() {
        let parse = |json: &str| -> Action {
            let state: PodState<'_> = serde_json::from_str(json).expect("state");
            Action::for_owners(&state.metadata.owner_references)
        };
        let meta = |owners: &str| format!(r#"{{"metadata":{{"ownerReferences":[{owners}]}}}}"#);
        assert_eq!(
            parse(&meta(&owner(
                "apps/v1",
                "DaemonSet",
                r#","controller":true"#
            ))),
            Action::Evict
        );
        // A CronJob's Pods belong to a Job: reported, never evicted.
        assert_eq!(
            parse(&meta(&owner("batch/v1", "Job", r#","controller":true"#))),
            Action::Report(Unrecreated::Job)
        );
        assert_eq!(
            parse(r#"{"metadata":{}}"#),
            Action::Report(Unrecreated::Bare)
        );
        assert_eq!(Action::Report(Unrecreated::Job).as_str(), "report");
        assert!(Unrecreated::Job.advice().contains("backoffLimit"));
    }
}

//! Which existing Pods need repair: admitted without the secrets the injector would have
//! added (the webhook could not be reached, and `failurePolicy: Ignore` let them through),
//! and now stuck pulling an image. Their `imagePullSecrets` can never change, so the only fix
//! is a new Pod: one owned by a controller is evicted (its controller recreates it, through
//! the webhook); a bare Pod is only reported, since nothing would recreate it.
//!
//! Pure: the Pod's verdict (as if it were created now) and its state in, an assessment out.

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

/// What repair does with a Pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Owned by a controller: evict it (PodDisruptionBudgets apply) and let it be recreated.
    Evict,
    /// A bare Pod: report it; a person must recreate it.
    Report,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Evict => "evict",
            Action::Report => "report",
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
    /// The controller (`kind/name`, uid), when there is one.
    pub owner: Option<(String, &'a str)>,
}

/// Whether the Pod needs repair: not being deleted, at least one container waiting on a failed
/// pull, and the injector would now add a secret the Pod lacks (in enforce mode; audit-only
/// namespaces are never repaired). A Pod that has its secrets and still fails to pull has
/// another problem (a wrong credential) that a new Pod would not fix, so it is left alone.
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
        action: if owner.is_some() {
            Action::Evict
        } else {
            Action::Report
        },
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

    fn pod_json(secrets: &str, reason: &str, owned: bool, deleting: bool) -> String {
        let owner = if owned {
            r#""ownerReferences":[{"apiVersion":"apps/v1","kind":"ReplicaSet","name":"web-5d9","uid":"rs-1","controller":true}],"#
        } else {
            r#""ownerReferences":[{"apiVersion":"v1","kind":"ConfigMap","name":"x","uid":"cm-1"}],"#
        };
        let deletion = if deleting {
            r#""deletionTimestamp":"2026-01-01T00:00:00Z","#
        } else {
            ""
        };
        format!(
            r#"{{"metadata":{{{owner}{deletion}"name":"web-5d9-x","namespace":"team-a"}},
            "spec":{{"containers":[{{"name":"app","image":"nginx"}},{{"name":"side","image":"quay.io/a/b"}}]{secrets}}},
            "status":{{"phase":"Pending","containerStatuses":[
              {{"name":"app","state":{{"waiting":{{"reason":"{reason}","message":"401 Unauthorized"}}}}}},
              {{"name":"side","state":{{"running":{{}}}}}}]}}}}"#
        )
    }

    fn assess_json(
        json: &str,
        label: NamespaceLabel,
    ) -> Option<(Action, Vec<String>, Vec<String>)> {
        let policy = policy();
        let facts = labelled("team-a", label);
        let pod: Pod<'_> = serde_json::from_str(json).expect("pod");
        let state: PodState<'_> = serde_json::from_str(json).expect("state");
        let verdict = for_pod(&pod, "team-a", &Context::new(&policy, &facts));
        assess(&verdict, &state).map(|a| {
            (
                a.action,
                a.missing.iter().map(|s| s.to_string()).collect(),
                a.failing.iter().map(|s| s.to_string()).collect(),
            )
        })
    }

    #[test]
    fn stuck_pods_without_their_secrets_are_repaired_and_others_are_not() {
        use NamespaceLabel::{Audit, Enabled, Unlabelled};
        let evict = Some((
            Action::Evict,
            vec!["dockerhub".to_string()],
            vec!["app".to_string()],
        ));
        let report = Some((
            Action::Report,
            vec!["dockerhub".to_string()],
            vec!["app".to_string()],
        ));
        let with_secret = r#","imagePullSecrets":[{"name":"dockerhub"}]"#;
        let cases = [
            (
                pod_json("", "ImagePullBackOff", true, false),
                Enabled,
                evict.clone(),
            ),
            (pod_json("", "ErrImagePull", true, false), Enabled, evict),
            (
                pod_json("", "ImagePullBackOff", false, false),
                Enabled,
                report,
            ),
            // Has the secret and still fails: a new Pod would fail the same way.
            (
                pod_json(with_secret, "ImagePullBackOff", true, false),
                Enabled,
                None,
            ),
            // Not stuck on a pull.
            (pod_json("", "CrashLoopBackOff", true, false), Enabled, None),
            // Being deleted already.
            (pod_json("", "ImagePullBackOff", true, true), Enabled, None),
            // Out of scope, or audit only: the injector would not have changed it.
            (
                pod_json("", "ImagePullBackOff", true, false),
                Unlabelled,
                None,
            ),
            (pod_json("", "ImagePullBackOff", true, false), Audit, None),
        ];
        for (i, (json, label, want)) in cases.iter().enumerate() {
            assert_eq!(&assess_json(json, *label), want, "case {i}");
        }
    }
}

//! The chart's RBAC for each feature set, asked as each of the installation's own service
//! accounts (SelfSubjectAccessReviews with their tokens: what `kubectl auth can-i` sends), and
//! one real request each must be refused.
//!
//! Two identities (issue 16.1): the webhook's (`serve`: it answers the network, so it only
//! ever reads) and, when a writing feature is on, the controller's (sync, repair, the Lease).

use anyhow::{Result, bail};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, ListParams};

use crate::api::{Can, can, can_i};
use crate::harness::Sc;
use crate::install::Inst;

/// Verbs no webhook identity may ever have, whatever the features.
fn never_for_the_webhook(own: Option<&str>, lease: &str) -> Vec<Can> {
    let default = Some("default");
    vec![
        can("create", "secrets", default),
        can("update", "secrets", default),
        can("delete", "secrets", default),
        can("patch", "secrets", default),
        can("create", "secrets", own),
        can("list", "pods", None),
        can("watch", "pods", None),
        can("create", "pods/eviction", default),
        can("create", "events.events.k8s.io", default),
        can("create", "leases.coordination.k8s.io", own),
        can("get", "leases.coordination.k8s.io", own).named(lease),
        can("patch", "leases.coordination.k8s.io", own).named(lease),
    ]
}

/// Verbs no identity of the installation may have.
fn never(own: Option<&str>) -> Vec<Can> {
    let default = Some("default");
    vec![
        can("create", "pods", default),
        can(
            "patch",
            "mutatingwebhookconfigurations.admissionregistration.k8s.io",
            None,
        ),
        can("create", "rolebindings.rbac.authorization.k8s.io", own),
        can("get", "configmaps", own),
        can("get", "secrets", own),
        can("get", "secrets", default),
        can("patch", "secrets", default),
    ]
}

pub async fn chart_rbac(sc: Sc) -> Result<()> {
    let inst = sc.inst.clone();
    let own = Some(inst.ns.as_str());
    let default = Some("default");
    let lease = inst.fullname.as_str();
    let sync = matches!(
        inst.inst,
        Inst::Sync | Inst::Reload | Inst::Ha | Inst::Tenancy
    );
    let repair = inst.inst == Inst::Repair;
    let awareness = matches!(inst.inst, Inst::Cluster | Inst::Reload);
    let sources = matches!(
        inst.inst,
        Inst::Discovery | Inst::Sync | Inst::Reload | Inst::Ha | Inst::Tenancy
    );

    // The webhook: reads only.
    let mut yes: Vec<Can> = Vec::new();
    let mut no = never(own);
    no.extend(never_for_the_webhook(own, lease));
    if inst.inst.standalone() {
        no.extend([
            can("list", "namespaces", None),
            can("list", "secrets", None),
            can("list", "secrets", own),
        ]);
    } else {
        yes.extend([
            can("list", "namespaces", None),
            can("watch", "namespaces", None),
        ]);
        let cluster_secrets = [can("list", "secrets", None), can("watch", "secrets", None)];
        if awareness {
            yes.extend(cluster_secrets);
        } else {
            no.extend(cluster_secrets);
        }
        let own_secrets = [can("list", "secrets", own), can("watch", "secrets", own)];
        if sources || awareness {
            yes.extend(own_secrets);
        } else {
            no.extend(own_secrets);
        }
    }
    let mut wrong = check(&inst.identity, &yes, &no).await?;
    let mut asked = yes.len() + no.len();

    // A real request as the webhook's identity, not only the review.
    match Api::<Secret>::namespaced(inst.identity.clone(), &inst.probe_ns)
        .get("anything")
        .await
    {
        Err(kube::Error::Api(status)) if status.code == 403 => {}
        other => wrong.push(format!(
            "GET a Secret in {} as {}: {other:?}, want 403",
            inst.probe_ns,
            inst.user()
        )),
    }
    if inst.inst.standalone() {
        match Api::<Namespace>::all(inst.identity.clone())
            .list(&ListParams::default())
            .await
        {
            Err(kube::Error::Api(status)) if status.code == 403 => {}
            other => wrong.push(format!(
                "list namespaces as {}: {:?}, want 403",
                inst.user(),
                other.map(|l| l.items.len())
            )),
        }
    }

    // The controller: the writing verbs of its features, nothing else.
    if inst.controller_identities.is_empty() == inst.inst.writes() {
        wrong.push(format!(
            "controller identities: {}, writing features: {}",
            inst.controller_identities.len(),
            inst.inst.writes()
        ));
    }
    for (identity, account) in inst
        .controller_identities
        .iter()
        .zip(&inst.controller_accounts)
    {
        let mut yes = vec![
            can("list", "namespaces", None),
            can("watch", "namespaces", None),
            can("create", "leases.coordination.k8s.io", own),
            can("get", "leases.coordination.k8s.io", own).named(lease),
            can("patch", "leases.coordination.k8s.io", own).named(lease),
        ];
        let mut no = never(own);
        no.extend([
            can("get", "leases.coordination.k8s.io", own).named("someone-elses"),
            can("patch", "leases.coordination.k8s.io", own).named("someone-elses"),
            can("delete", "leases.coordination.k8s.io", own).named(lease),
            can("create", "leases.coordination.k8s.io", default),
            can("get", "pods", default),
            can("delete", "pods", default),
            can("patch", "pods", default),
        ]);
        let sync_verbs = [
            can("list", "secrets", own),
            can("list", "secrets", None),
            can("watch", "secrets", None),
            can("create", "secrets", default),
            can("update", "secrets", default),
            can("delete", "secrets", default),
        ];
        let ledger = format!("{lease}-copies");
        // Sync's ownership ledger (issue 14): one ConfigMap in the injector's namespace.
        let ledger_verbs = [
            can("create", "configmaps", own),
            can("get", "configmaps", own).named(&ledger),
            can("update", "configmaps", own).named(&ledger),
        ];
        let repair_verbs = [
            can("watch", "pods", None),
            can("create", "pods/eviction", default),
        ];
        // Events: repair's on Pods, sync's revocations (issue 14).
        let event_verbs = [
            can("create", "events.events.k8s.io", default),
            can("patch", "events.events.k8s.io", default),
        ];
        if sync || repair {
            yes.extend(event_verbs);
        } else {
            no.extend(event_verbs);
        }
        if sync {
            yes.extend(ledger_verbs);
            no.push(can("update", "configmaps", own).named("someone-elses"));
        } else {
            no.extend(ledger_verbs);
        }
        // Sync lists Pods (a copy a Pod still names is kept); repair watches them.
        let list_pods = can("list", "pods", None);
        if sync || repair {
            yes.push(list_pods);
        } else {
            no.push(list_pods);
        }
        if sync {
            yes.extend(sync_verbs);
        } else {
            no.extend(sync_verbs);
        }
        if repair {
            yes.extend(repair_verbs);
        } else {
            no.extend(repair_verbs);
        }
        // credentialProviders (Reload): its Secret created, read and written by name, no
        // other Secret read; credentialProbe (Reload): the sources' annotation (patch).
        let minted = crate::credentials::MINTED;
        let provider_verbs = [
            can("create", "secrets", own),
            can("get", "secrets", own).named(minted),
            can("patch", "secrets", own).named(minted),
            can("update", "secrets", own).named(minted),
        ];
        if inst.inst == Inst::Reload {
            yes.extend(provider_verbs);
            yes.push(can("patch", "secrets", own));
            no.push(can("get", "secrets", own).named("someone-elses"));
        } else {
            no.push(can("get", "secrets", own).named(minted));
        }
        asked += yes.len() + no.len();
        for problem in check(identity, &yes, &no).await? {
            wrong.push(format!("{account}: {problem}"));
        }
    }
    sc.note(format!(
        "{asked} questions asked as {} and {} controller identities",
        inst.user(),
        inst.controller_identities.len()
    ));
    if !wrong.is_empty() {
        bail!("{}", wrong.join("; "));
    }
    Ok(())
}

/// The questions whose answer as `identity` is not the one wanted.
async fn check(identity: &kube::Client, yes: &[Can], no: &[Can]) -> Result<Vec<String>> {
    let mut wrong = Vec::new();
    for (want, list) in [(true, yes), (false, no)] {
        for question in list {
            let got = can_i(identity, question).await?;
            if got != want {
                wrong.push(format!(
                    "{}: {}, want {}",
                    question.describe(),
                    yn(got),
                    yn(want)
                ));
            }
        }
    }
    Ok(wrong)
}

fn yn(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

//! The chart's RBAC for each feature set, asked as the installation's own service account
//! (SelfSubjectAccessReviews with its token: what `kubectl auth can-i` sends), and one real
//! request it must be refused.

use anyhow::{Result, bail};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, ListParams};

use crate::api::{Can, can, can_i};
use crate::harness::Sc;
use crate::install::Inst;

pub async fn chart_rbac(sc: Sc) -> Result<()> {
    let inst = sc.inst.clone();
    let own = Some(inst.ns.as_str());
    let default = Some("default");
    let mut yes: Vec<Can> = Vec::new();
    let mut no: Vec<Can> = vec![
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
    ];
    let sync = matches!(inst.inst, Inst::Sync | Inst::Reload | Inst::Ha);
    match inst.inst {
        Inst::Standalone => {
            no.extend([
                can("list", "namespaces", None),
                can("list", "secrets", None),
                can("list", "secrets", own),
            ]);
        }
        Inst::Cluster => {
            yes.extend([
                can("list", "namespaces", None),
                can("watch", "namespaces", None),
                can("list", "secrets", None),
                can("watch", "secrets", None),
            ]);
            no.extend([
                can("create", "secrets", default),
                can("delete", "secrets", default),
                can("list", "pods", None),
                can("create", "leases.coordination.k8s.io", own),
            ]);
        }
        Inst::Discovery => {
            yes.extend([
                can("list", "namespaces", None),
                can("watch", "namespaces", None),
                can("list", "secrets", own),
                can("watch", "secrets", own),
            ]);
            no.extend([
                can("list", "secrets", None),
                can("create", "secrets", default),
                can("create", "secrets", own),
                can("create", "leases.coordination.k8s.io", own),
            ]);
        }
        Inst::Sync | Inst::Reload | Inst::Ha => {}
        Inst::Repair => {
            let lease = inst.fullname.as_str();
            yes.extend([
                can("list", "namespaces", None),
                can("list", "pods", None),
                can("watch", "pods", None),
                can("create", "pods/eviction", default),
                can("create", "events.events.k8s.io", default),
                can("patch", "events.events.k8s.io", default),
                can("create", "leases.coordination.k8s.io", own),
                can("get", "leases.coordination.k8s.io", own).named(lease),
                can("patch", "leases.coordination.k8s.io", own).named(lease),
            ]);
            no.extend([
                can("delete", "pods", default),
                can("patch", "pods", default),
                can("list", "secrets", None),
                can("create", "secrets", default),
            ]);
        }
        Inst::Idle => {
            no.extend([can("list", "namespaces", None)]);
        }
    }
    if sync {
        let lease = inst.fullname.as_str();
        yes.extend([
            can("list", "namespaces", None),
            can("list", "secrets", own),
            can("list", "secrets", None),
            can("watch", "secrets", None),
            can("create", "secrets", default),
            can("update", "secrets", default),
            can("delete", "secrets", default),
            can("list", "pods", None),
            can("create", "leases.coordination.k8s.io", own),
            can("get", "leases.coordination.k8s.io", own).named(lease),
            can("patch", "leases.coordination.k8s.io", own).named(lease),
        ]);
        no.extend([
            can("watch", "pods", None),
            can("get", "pods", default),
            can("get", "leases.coordination.k8s.io", own).named("someone-elses"),
            can("patch", "leases.coordination.k8s.io", own).named("someone-elses"),
            can("delete", "leases.coordination.k8s.io", own).named(lease),
            can("create", "leases.coordination.k8s.io", default),
        ]);
    }
    let mut wrong = Vec::new();
    for (want, list) in [(true, &yes), (false, &no)] {
        for question in list {
            let got = can_i(&inst.identity, question).await?;
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
    // A real request as the installation's identity, not only the review.
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
    if inst.inst == Inst::Standalone {
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
    sc.note(format!(
        "{} allowed and {} denied as {}",
        yes.len(),
        no.len(),
        inst.user()
    ));
    if !wrong.is_empty() {
        bail!("{}", wrong.join("; "));
    }
    Ok(())
}

fn yn(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

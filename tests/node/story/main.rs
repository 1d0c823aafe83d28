//! The user's story on a real one-node Kubernetes 1.20 (tests/node/README.md): kubelet,
//! containerd, an authenticated registry, the chart's own image. Every test is ignored by
//! default; `tests/node/run.sh` starts the node and the registry, pushes the injector's image
//! and runs `cargo test --test node -- --ignored --test-threads 1`.
//!
//! The scenarios run one at a time, in name order, on one installation of the chart: the
//! story installs it (or the first scenario that needs it), the last one uninstalls it. Each
//! step is asserted from what the kubelet reports (Pod phase, container states, Events) and
//! printed as it finishes. The scenario list below is the suite's index.

#[allow(dead_code)]
#[path = "../../e2e/api.rs"]
mod api;
mod churn;
mod forms;
mod harness;
mod install;
#[path = "../../e2e/journal.rs"]
mod journal;
mod kubelet;
mod latency;
mod lifecycle;
mod mint;
mod minted;
mod operations;
mod prometheus;
mod story;
mod tenancy;
mod tools;

/// One `#[test]` per scenario; names sort in story order.
macro_rules! scenario {
    ($test:ident, $what:literal, $body:path) => {
        #[test]
        #[ignore = "needs the one-node cluster: tests/node/run.sh"]
        fn $test() {
            harness::run(stringify!($test), $what, $body);
        }
    };
}

// Issue 10.3: the README's story.
scenario!(
    s3a_story,
    "a private image fails with the 401; helm install; one Secret, one source label, one namespace label; the next Pod runs",
    story::story
);
scenario!(
    s3b_docker_server_forms,
    "each --docker-server form users type: the injector's credential check and the kubelet agree",
    forms::docker_server_forms
);

// Issue 10.4: operations, with Pods created throughout.
scenario!(
    s4a_helm_upgrade,
    "helm upgrade adds a rule and turns repair on: reaches the running injectors without a restart",
    operations::helm_upgrade
);
scenario!(
    s4b_documented_rotation,
    "the documented certificate rotation (delete the TLS Secret, helm upgrade)",
    operations::documented_rotation
);
scenario!(
    s4c_certificate_rotation,
    "a new certificate written into the TLS Secret: served without a restart",
    operations::certificate_rotation
);
scenario!(
    s4d_configmap_edit,
    "kubectl patch of the ConfigMap reaches the running injectors",
    operations::configmap_edit
);
scenario!(
    s4e_outage,
    "injector scaled to 0: Pods stuck in ImagePullBackOff; back with repair: replaced and Running",
    operations::outage
);

// Issue 10.5: what users wait.
scenario!(
    s5_latency,
    "kubectl apply of a 3-replica Deployment to all Pods Running, with and without the injector",
    latency::latency
);

// Issue 14: tenants.
scenario!(
    s6_tenants,
    "a credential scoped to tenant A: A's Pod pulls and runs, B's Pod naming A's image stays in ImagePullBackOff with the 401",
    tenancy::tenants
);

// Issue 17.4: credentials minted by a credential-provider plugin.
scenario!(
    s7_minted_credentials,
    "a credential-provider plugin mints a password the registry accepts for 250 s: Pods keep pulling after the first expired; with the plugin failing, admission warns and the expiry alert fires before it expires",
    minted::minted_credentials
);

// Last: nothing is left behind.
scenario!(
    s9_uninstall,
    "helm uninstall leaves no webhook behind; Pod creation keeps working",
    operations::uninstall
);

// Issue 18.2: a release's whole Helm lifecycle, after the story's release is gone.
scenario!(
    s9b_helm_lifecycle,
    "helm install, upgrade to a new image, rollback, uninstall: Pods created throughout all get their secret and run; no webhook left",
    lifecycle::helm_lifecycle
);

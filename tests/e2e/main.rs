//! End-to-end scenarios against a real kube-apiserver (tests/e2e/README.md). Every test is
//! ignored by default; `tests/e2e/run.sh` starts etcd and the API server and runs
//! `cargo test --test e2e -- --ignored`.
//!
//! Each installation (the chart rendered for one feature set, its own namespace, service
//! account, injector process(es) and webhook configuration) is set up once, on first use;
//! scenarios run in parallel in namespaces of their own. The scenario list below is the
//! suite's index.

mod api;
mod basic;
mod cluster_mode;
mod credentials;
mod harness;
mod install;
mod journal;
mod leak;
mod process;
mod rbac;
mod reload;
mod repair;
mod restart;
mod sidecar;
mod sync;
mod tenancy;
mod transport;

use harness::{Kind, run};
use install::Inst;

/// One `#[test]` per scenario and installation.
macro_rules! scenario {
    ($test:ident, $inst:expr, $id:literal, $what:literal, $kind:expr, $body:path) => {
        #[test]
        #[ignore = "needs a real API server: tests/e2e/run.sh"]
        fn $test() {
            run($inst, $id, $what, $kind, $body);
        }
    };
}

use Inst::{Cluster, Discovery, Ha, Idle, Reload, Repair, Standalone, Sync, Tenancy};
use Kind::{OwnsInstallation, Shared, StopsApiServer, StopsInjector};

// Standalone (`--standalone`, static rules).
scenario!(
    standalone_a_opt_in,
    Standalone,
    "a-opt-in",
    "opt-in: enabled namespace injected, unlabelled not",
    Shared,
    basic::opt_in
);
scenario!(
    standalone_b_selection_all,
    Standalone,
    "b-selection-all",
    "selection: all with exclusions, =disabled and =audit namespaces (hot reload)",
    OwnsInstallation,
    basic::selection_all
);
scenario!(
    standalone_c_audit_namespace,
    Standalone,
    "c-audit-ns",
    "=audit namespace: exact warnings, Pod unchanged",
    Shared,
    basic::audit_namespace
);
scenario!(
    standalone_d_pod_opt_out,
    Standalone,
    "d-pod-opt-out",
    "Pod labelled inject=disabled unchanged",
    Shared,
    basic::pod_opt_out
);
scenario!(
    standalone_e_existing_reinvocation,
    Standalone,
    "e-existing",
    "existing secrets kept in order, appended, no duplicates on reinvocation",
    Shared,
    basic::existing_and_reinvocation
);
scenario!(
    standalone_e2_audit_reinvocation,
    Standalone,
    "e2-audit-reinv",
    "audit-mode reinvocation: both rounds recorded (issue 8.7)",
    Shared,
    basic::audit_reinvocation
);
scenario!(
    standalone_f_generate_name,
    Standalone,
    "f-generate-name",
    "generateName Pods injected",
    Shared,
    basic::generate_name
);
scenario!(
    standalone_g_dry_run,
    Standalone,
    "g-dry-run",
    "server-side dry run returns the injected Pod, stores nothing",
    Shared,
    basic::dry_run
);
scenario!(
    standalone_h_failure_policy,
    Standalone,
    "h-failure-policy",
    "failurePolicy with the injector stopped, then restarted",
    StopsInjector,
    basic::failure_policy
);
scenario!(
    standalone_client_cert,
    Standalone,
    "client-cert",
    "--client-ca: the API server's client certificate is served, a direct client is refused",
    Shared,
    transport::client_certificates
);
scenario!(
    standalone_rbac,
    Standalone,
    "rbac",
    "chart RBAC: nothing at all (SelfSubjectAccessReview as the service account)",
    Shared,
    rbac::chart_rbac
);
scenario!(
    standalone_explain_json,
    Standalone,
    "explain-json",
    "explain -o json, exact",
    Shared,
    cluster_mode::explain_json
);

// Cluster mode with secretAwareness.
scenario!(
    cluster_a_opt_in,
    Cluster,
    "a-opt-in",
    "opt-in: enabled namespace injected, unlabelled not",
    Shared,
    basic::opt_in
);
scenario!(
    cluster_b_selection_all,
    Cluster,
    "b-selection-all",
    "selection: all with exclusions, =disabled and =audit namespaces (hot reload)",
    OwnsInstallation,
    basic::selection_all
);
scenario!(
    cluster_c_audit_namespace,
    Cluster,
    "c-audit-ns",
    "=audit namespace: exact warnings, Pod unchanged",
    Shared,
    basic::audit_namespace
);
scenario!(
    cluster_d_pod_opt_out,
    Cluster,
    "d-pod-opt-out",
    "Pod labelled inject=disabled unchanged",
    Shared,
    basic::pod_opt_out
);
scenario!(
    cluster_e_existing_reinvocation,
    Cluster,
    "e-existing",
    "existing secrets kept in order, appended, no duplicates on reinvocation",
    Shared,
    basic::existing_and_reinvocation
);
scenario!(
    cluster_e2_audit_reinvocation,
    Cluster,
    "e2-audit-reinv",
    "audit-mode reinvocation: both rounds recorded (issue 8.7)",
    Shared,
    basic::audit_reinvocation
);
scenario!(
    cluster_f_generate_name,
    Cluster,
    "f-generate-name",
    "generateName Pods injected",
    Shared,
    basic::generate_name
);
scenario!(
    cluster_g_dry_run,
    Cluster,
    "g-dry-run",
    "server-side dry run returns the injected Pod, stores nothing",
    Shared,
    basic::dry_run
);
scenario!(
    cluster_h_failure_policy,
    Cluster,
    "h-failure-policy",
    "failurePolicy with the injector stopped, then restarted",
    StopsInjector,
    basic::failure_policy
);
scenario!(
    cluster_secret_awareness,
    Cluster,
    "secret-awareness",
    "a missing Secret is referenced anyway, with a warning; Opaque does not count, dockercfg does",
    Shared,
    cluster_mode::secret_awareness
);
scenario!(
    cluster_applied_together,
    Cluster,
    "applied-together",
    "Secret and Pod back to back, 20 times (Deployments and bare Pods): all reference it (issue 8.2)",
    Shared,
    cluster_mode::applied_together
);
scenario!(
    cluster_audit_cli,
    Cluster,
    "audit-cli",
    "audit -o json against the cluster, exact",
    Shared,
    cluster_mode::audit_cli
);
scenario!(
    cluster_rbac,
    Cluster,
    "rbac",
    "chart RBAC for secretAwareness",
    Shared,
    rbac::chart_rbac
);

// Discovery.
scenario!(
    discovery_rules,
    Discovery,
    "discovery",
    "labelled source Secret becomes a rule, and stops being one",
    Shared,
    sync::discovery
);
scenario!(
    discovery_rbac,
    Discovery,
    "rbac",
    "chart RBAC for discovery",
    Shared,
    rbac::chart_rbac
);

// Sync (and discovery).
scenario!(
    sync_secret_leak,
    Sync,
    "secret-leak",
    "a marked credential through discovery, sync, admission and check-config at trace: in no log, Event, metric or warning",
    Shared,
    leak::marker
);
scenario!(
    sync_copies,
    Sync,
    "sync",
    "copies created, replaced in place, kept while used, removed; unmanaged Secret never touched",
    Shared,
    sync::sync
);
scenario!(
    sync_rbac,
    Sync,
    "rbac",
    "chart RBAC for sync",
    Shared,
    rbac::chart_rbac
);

// Every feature switched at runtime.
scenario!(
    reload_features,
    Reload,
    "features",
    "discovery, sync, secretAwareness on and off by config reload (issue 8.1)",
    OwnsInstallation,
    reload::features_at_runtime
);
scenario!(
    reload_credential_providers,
    Reload,
    "providers",
    "credentialProviders: a plugin's credential written in place, refreshed, copied; a failing plugin keeps it and is warned about (issue 17)",
    OwnsInstallation,
    credentials::providers
);
scenario!(
    reload_credential_probe,
    Reload,
    "probe",
    "credentialProbe: a rejected credential annotated through the chart's RBAC and warned about, the annotation gone once renewed (issue 17)",
    OwnsInstallation,
    credentials::probe
);
scenario!(
    reload_rbac,
    Reload,
    "rbac",
    "chart RBAC for every feature",
    Shared,
    rbac::chart_rbac
);

// Two replicas, one Lease.
scenario!(
    ha_two_replicas,
    Ha,
    "two-replicas",
    "one writer, failover after SIGKILL, rotation in place, TLS Secret never copied (issue 8.3)",
    OwnsInstallation,
    sync::two_replicas
);
// Two tenants, crossed scopes (issue 14).
scenario!(
    tenancy_crossed_scopes,
    Tenancy,
    "crossed-scopes",
    "two tenants: copies and patches only inside each credential's scope (watched throughout), revocation with a Pod naming the copy, tampered copy restored, forged copy untouched, requireScope",
    OwnsInstallation,
    tenancy::crossed_scopes
);
scenario!(
    tenancy_rbac,
    Tenancy,
    "rbac",
    "chart RBAC for sync with scopes",
    Shared,
    rbac::chart_rbac
);
scenario!(
    ha_lease_revoked,
    Ha,
    "lease-revoked",
    "two controllers, two ServiceAccounts: the leader loses its right to update Leases, stops writing, the other takes over (issue 16.2)",
    OwnsInstallation,
    sync::lease_revoked
);
scenario!(
    ha_rbac,
    Ha,
    "rbac",
    "chart RBAC for sync with a Lease",
    Shared,
    rbac::chart_rbac
);

// The API server restarted under standalone, cluster and sync.
scenario!(
    apiserver_restart,
    Sync,
    "restart",
    "API server restart (etcd kept): injectors survive, injection and watches recover",
    StopsApiServer,
    restart::apiserver_restart
);

// Repair under the Lease, and the kubectl debug webhook entry.
scenario!(
    repair_outage,
    Repair,
    "outage",
    "Pods let through by an outage: ReplicaSet Pod evicted and replaced, bare one reported, PDB respected (issue 8.5)",
    StopsInjector,
    repair::outage
);
scenario!(
    repair_debug_container,
    Repair,
    "debug",
    "kubectl debug: a warning for a debug image that needs a Secret, no change (issue 9.3)",
    Shared,
    repair::debug_container
);
scenario!(
    repair_rbac,
    Repair,
    "rbac",
    "chart RBAC for repair (SelfSubjectAccessReview as the service account)",
    Shared,
    rbac::chart_rbac
);

// Idle keep-alive connections (its own installation: nothing else talks to it).
scenario!(
    idle_connections,
    Idle,
    "idle",
    "a Pod after the API server's connection sat idle 35 s and 95 s: injected, no failed call (issue 8.4)",
    Shared,
    transport::idle_connections
);

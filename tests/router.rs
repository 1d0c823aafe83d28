//! Router-level tests: captured AdmissionReview fixtures through the real axum router.

mod common;

use std::sync::Arc;

use axum::http::StatusCode;
use common::{Reply, app, fixture, fixture as fixture_bytes, fixture_path, post};
use pullsecret_injector::core::config;
use pullsecret_injector::core::facts::{
    ClusterFacts, Labels, NamespaceCache, NamespaceLabel, SecretPresence,
};
use pullsecret_injector::core::policy::PolicyStore;
use pullsecret_injector::webhook::state::App;
use serde_json::json;

/// (fixture, endpoint, expected patch or None, expected warning fragments)
#[tokio::test]
async fn fixtures_get_the_expected_answers() {
    let add_list = json!([
        {"op": "add", "path": "/spec/imagePullSecrets", "value": [{"name": "ghcr-acme"}, {"name": "dockerhub"}]},
        {"op": "add", "path": "/spec/initContainers/0/imagePullPolicy", "value": "Always"},
        {"op": "add", "path": "/spec/containers/0/imagePullPolicy", "value": "Always"},
    ]);
    let append = json!([
        {"op": "add", "path": "/spec/imagePullSecrets/-", "value": {"name": "ghcr-acme"}},
        {"op": "add", "path": "/spec/initContainers/0/imagePullPolicy", "value": "Always"},
        {"op": "add", "path": "/spec/containers/0/imagePullPolicy", "value": "Always"},
    ]);
    let cases: Vec<(&str, &str, Option<serde_json::Value>, Vec<&str>)> = vec![
        ("pod-create.json", "/mutate", Some(add_list.clone()), vec![]),
        ("pod-create-v1beta1.json", "/mutate", Some(add_list), vec![]),
        ("pod-existing-secrets.json", "/mutate", Some(append), vec![]),
        ("pod-already-injected.json", "/mutate", None, vec![]),
        ("pod-update.json", "/mutate", None, vec![]),
        ("pod-opted-out.json", "/mutate", None, vec![]),
        ("pod-mirror.json", "/mutate", None, vec![]),
        ("pod-kube-system.json", "/mutate", None, vec![]),
        ("secret-create.json", "/mutate", None, vec![]),
        ("deployment-create.json", "/mutate", None, vec![]),
        ("pod-no-containers.json", "/mutate", None, vec![]),
        (
            "pod-unreadable-spec.json",
            "/mutate",
            None,
            vec!["Pod not inspected"],
        ),
        (
            "pod-bad-images.json",
            "/mutate",
            Some(
                json!([{"op": "add", "path": "/spec/imagePullSecrets", "value": [{"name": "dockerhub"}]}]),
            ),
            vec![
                "container upper image \"NGINX\"",
                "container garbage image \"::::\"",
            ],
        ),
        // Kubernetes 1.36: OCI image volumes are pulled with the Pod's secrets; they come after
        // the containers, and pullPolicy: Always reaches the volume's own pullPolicy.
        (
            "pod-image-volume-v136.json",
            "/mutate",
            Some(json!([
                {"op": "add", "path": "/spec/imagePullSecrets", "value": [{"name": "ghcr-acme"}, {"name": "ecr"}]},
                {"op": "add", "path": "/spec/volumes/1/image/pullPolicy", "value": "Always"},
            ])),
            vec![],
        ),
        // Kubernetes 1.33: a native sidecar is an initContainer with restartPolicy: Always.
        (
            "pod-native-sidecar-v133.json",
            "/mutate",
            Some(json!([
                {"op": "add", "path": "/spec/imagePullSecrets", "value": [{"name": "internal-registry"}, {"name": "dockerhub"}]},
            ])),
            vec![],
        ),
        // kubectl debug: never a patch; a warning when the debug image needs a Secret the Pod
        // lacks (1.36: the Pod is in the request; 1.20: only its ephemeral containers are).
        (
            "pod-debug-v136.json",
            "/mutate",
            None,
            vec![
                "debug container debugger-4xk2t image \"ghcr.io/acme/toolbox:1\" needs imagePullSecret ghcr-acme (rule ghcr.io/acme), which this Pod does not list",
            ],
        ),
        (
            "pod-debug-v120.json",
            "/mutate",
            None,
            vec![
                "debug container debugger image \"ghcr.io/acme/toolbox:1\" needs imagePullSecret ghcr-acme (rule ghcr.io/acme); it is pulled with the Pod's imagePullSecrets",
            ],
        ),
        (
            "pod-create.json",
            "/audit",
            None,
            vec![
                "would add imagePullSecret ghcr-acme for ghcr.io/acme/migrate:1.4, ghcr.io/acme/api:2.1.0 (rule ghcr.io/acme)",
                "would add imagePullSecret dockerhub for nginx:1.27 (rule docker.io)",
                "would set imagePullPolicy Always on container migrate",
                "would set imagePullPolicy Always on container api",
            ],
        ),
    ];
    for (name, path, want_patch, want_warnings) in cases {
        let body = fixture(name);
        let (status, bytes) = post(app(), path, body.clone()).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{name}: {}",
            String::from_utf8_lossy(&bytes)
        );
        let reply = Reply::parse(&bytes);
        let request: serde_json::Value = serde_json::from_slice(&body).expect("fixture");
        assert_eq!(reply.review["apiVersion"], request["apiVersion"], "{name}");
        assert_eq!(reply.review["kind"], "AdmissionReview", "{name}");
        assert_eq!(
            reply.response()["uid"],
            request["request"]["uid"],
            "{name}: uid echoed"
        );
        assert_eq!(reply.response()["allowed"], true, "{name}");
        assert_eq!(reply.patch, want_patch, "{name} {path}");
        if want_patch.is_some() {
            assert_eq!(reply.response()["patchType"], "JSONPatch", "{name}");
        } else {
            assert!(reply.response().get("patchType").is_none(), "{name}");
        }
        let warnings = reply.warnings();
        for fragment in &want_warnings {
            assert!(
                warnings.iter().any(|w| w.contains(fragment)),
                "{name}: no warning with {fragment:?} in {warnings:?}"
            );
        }
        assert_eq!(warnings.len(), want_warnings.len(), "{name}: {warnings:?}");
    }
}

#[tokio::test]
async fn audit_annotations_record_what_was_done() {
    let (_, bytes) = post(app(), "/mutate", fixture("pod-create.json")).await;
    let reply = Reply::parse(&bytes);
    assert_eq!(
        reply.response()["auditAnnotations"],
        json!({"injected-secrets": "ghcr-acme,dockerhub"})
    );
    let (_, bytes) = post(app(), "/audit", fixture("pod-create.json")).await;
    let reply = Reply::parse(&bytes);
    assert_eq!(
        reply.response()["auditAnnotations"],
        json!({"would-inject-secrets-for-4-images": "ghcr-acme,dockerhub"})
    );
}

#[tokio::test]
async fn patched_pod_gets_no_second_patch() {
    let body = fixture("pod-create.json");
    let (_, bytes) = post(app(), "/mutate", body.clone()).await;
    let patch: json_patch::Patch =
        serde_json::from_value(Reply::parse(&bytes).patch.expect("patch")).expect("patch");
    let mut review: serde_json::Value = serde_json::from_slice(&body).expect("json");
    json_patch::patch(&mut review["request"]["object"], &patch).expect("patch applies to the Pod");
    let (_, bytes) = post(app(), "/mutate", serde_json::to_vec(&review).expect("json")).await;
    assert_eq!(
        Reply::parse(&bytes).patch,
        None,
        "reinvocation must not patch again"
    );
}

#[tokio::test]
async fn bodies_that_are_not_admission_reviews_get_4xx() {
    let cases = [
        ("malformed.json", "body is not an AdmissionReview"),
        ("no-request.json", "AdmissionReview has no request"),
        ("wrong-kind.json", "expected kind AdmissionReview"),
        ("no-uid.json", "missing field `uid`"),
    ];
    for (name, reason) in cases {
        let (status, bytes) = post(app(), "/mutate", fixture(name)).await;
        let text = String::from_utf8_lossy(&bytes);
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name}: {text}");
        assert!(text.contains(reason), "{name}: {text}");
    }
    let (status, _) = post(app(), "/mutate", "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, bytes) = post(
        app(),
        "/mutate",
        r#"{"apiVersion":"admission.k8s.io/v2","kind":"AdmissionReview","request":{"uid":"x"}}"#,
    )
    .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "{}",
        String::from_utf8_lossy(&bytes)
    );
}

#[tokio::test]
async fn oversized_bodies_get_413_and_large_ones_are_accepted() {
    // A legitimate 3 MiB review (the API server's request limit) is answered.
    let mut review: serde_json::Value =
        serde_json::from_slice(&fixture("pod-create.json")).expect("json");
    review["request"]["object"]["metadata"]["annotations"] =
        json!({"big": "x".repeat(3 * 1024 * 1024)});
    let (status, bytes) = post(app(), "/mutate", serde_json::to_vec(&review).expect("json")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(Reply::parse(&bytes).patch.is_some());

    let huge = vec![b' '; pullsecret_injector::webhook::handler::MAX_BODY_BYTES + 1];
    let (status, bytes) = post(app(), "/mutate", huge).await;
    assert_eq!(
        status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        String::from_utf8_lossy(&bytes)
    );
}

#[tokio::test]
async fn only_post_is_routed() {
    use tower::ServiceExt;
    let request = axum::http::Request::get("/mutate")
        .body(axum::body::Body::empty())
        .expect("request");
    let response = pullsecret_injector::webhook::handler::router(app())
        .oneshot(request)
        .await
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn metrics_count_outcomes_and_injected_secrets() {
    let app = app();
    post(app.clone(), "/mutate", fixture("pod-create.json")).await;
    post(app.clone(), "/mutate", fixture("pod-update.json")).await;
    post(app.clone(), "/audit", fixture("pod-create.json")).await;
    post(app.clone(), "/mutate", fixture("malformed.json")).await;
    let text = app.metrics.encode();
    for line in [
        r#"pullsecret_injector_admissions_total{endpoint="mutate",outcome="patched"} 1"#,
        r#"pullsecret_injector_admissions_total{endpoint="mutate",outcome="skipped"} 1"#,
        r#"pullsecret_injector_admissions_total{endpoint="mutate",outcome="rejected"} 1"#,
        r#"pullsecret_injector_admissions_total{endpoint="audit",outcome="audited"} 1"#,
        r#"pullsecret_injector_secrets_injected_total{rule="ghcr.io/acme"} 1"#,
        r#"pullsecret_injector_secrets_injected_total{rule="docker.io"} 1"#,
        r#"pullsecret_injector_audit_findings_total{rule="docker.io"} 1"#,
        r#"pullsecret_injector_admission_duration_seconds_count{endpoint="mutate"} 3"#,
    ] {
        assert!(text.contains(line), "missing {line}\n{text}");
    }
}

/// Cluster facts for two tenants: namespace labels as the namespace watch knows them.
struct Tenants;

impl ClusterFacts for Tenants {
    fn namespace_label(&self, _: &str) -> NamespaceLabel {
        NamespaceLabel::Unlabelled
    }
    fn secret_presence(&self, _: &str, _: &str) -> SecretPresence {
        SecretPresence::Unknown
    }
    fn namespace_cache(&self) -> NamespaceCache {
        NamespaceCache::Fresh
    }
    fn namespace_labels(&self, namespace: &str) -> Option<Arc<Labels>> {
        let team = match namespace {
            "team-a" => "a",
            "team-b" => "b",
            _ => return None,
        };
        Some(Arc::new([("team".to_string(), team.to_string())].into()))
    }
}

/// The tenants configuration (`config-tenants.yaml`); with the namespace labels of
/// [`Tenants`], or knowing none (as `serve --standalone`).
fn tenants_app(labels_known: bool) -> Arc<App> {
    let config = config::load(&fixture_path("config-tenants.yaml")).expect("valid");
    let mut app = App::standalone(PolicyStore::new(config), Some("pullsecret-injector".into()));
    if labels_known {
        app.facts = Arc::new(Tenants);
    }
    Arc::new(app)
}

/// Issue 14: a Pod in team-b naming team-a's image never gets team-a's secret; one in team-a
/// does. Out of scope, the next most specific rule in scope serves the image.
#[tokio::test]
async fn each_tenant_gets_only_the_credentials_in_its_scope() {
    let added = |names: &[&str]| {
        let value: Vec<_> = names.iter().map(|n| json!({ "name": n })).collect();
        json!([{"op": "add", "path": "/spec/imagePullSecrets", "value": value}])
    };
    let cases = [
        ("pod-tenant-a.json", added(&["team-a-pull", "dockerhub"])),
        (
            "pod-tenant-b-names-a.json",
            added(&["acme-public", "dockerhub"]),
        ),
        // podOptOut: false: the Pod's own opt-out label is ignored.
        (
            "pod-tenant-b-opted-out.json",
            added(&["acme-public", "dockerhub"]),
        ),
    ];
    for (name, want) in cases {
        for path in ["/mutate", "/audit"] {
            let (status, bytes) = post(tenants_app(true), path, fixture(name)).await;
            assert_eq!(status, StatusCode::OK, "{name}");
            let reply = Reply::parse(&bytes);
            let text = String::from_utf8_lossy(&bytes);
            let want = (path == "/mutate").then_some(&want);
            assert_eq!(reply.patch.as_ref(), want, "{name} {path}");
            if name != "pod-tenant-a.json" {
                assert!(!text.contains("team-a-pull"), "{name} {path}: {text}");
            }
        }
    }
    // Namespace labels unknown: selector rules do not match; only the rules by name and the
    // unscoped ones serve.
    let (_, bytes) = post(
        tenants_app(false),
        "/mutate",
        fixture("pod-tenant-b-names-a.json"),
    )
    .await;
    assert_eq!(Reply::parse(&bytes).patch, Some(added(&["dockerhub"])));
}

/// A writer the test reads back: the log lines of one admission.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn the_debug_line_of_each_admission_carries_mode_and_outcome() {
    // (fixture, endpoint, the fields the admission's debug line must carry)
    let cases = [
        (
            "pod-create.json",
            "/mutate",
            ["mode=enforce", "outcome=patched"],
        ),
        (
            "pod-create.json",
            "/audit",
            ["mode=audit", "outcome=audited"],
        ),
        (
            "deployment-create.json",
            "/mutate",
            ["mode=enforce", "outcome=skipped"],
        ),
    ];
    for (fixture, path, fields) in cases {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        tracing::subscriber::with_default(subscriber, || {
            runtime.block_on(post(app(), path, fixture_bytes(fixture)));
        });
        let text = String::from_utf8_lossy(&captured.0.lock().expect("log")).to_string();
        let line = text
            .lines()
            .find(|l| l.contains("admission") && l.contains("DEBUG") && l.contains("uid="))
            .unwrap_or_else(|| panic!("{fixture} {path}: no debug line in {text}"));
        for field in fields {
            assert!(
                line.contains(field),
                "{fixture} {path}: {field} missing in {line}"
            );
        }
    }
}

/// Issue 17: a source whose credential has expired, or expires within the hour, is still
/// added, and the review's warnings say so; one with a day left is not warned about. The
/// handler judges expiries by the clock (core reads none).
#[tokio::test]
async fn expired_and_expiring_sources_are_added_with_a_warning() {
    use pullsecret_injector::core::expiry::{Expiry, Origin};
    use pullsecret_injector::core::policy::Sources;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let expiry = |at: i64| Expiry {
        at,
        origin: Origin::Annotation("pullsecret-injector/expires-at"),
        issued: None,
    };
    // (ghcr-acme's expiry, dockerhub's, warnings naming a Secret)
    let cases = [
        (
            now - 600,
            now + 86_400,
            vec!["Secret ghcr-acme (rule ghcr.io/acme) expired at"],
        ),
        (
            now + 86_400,
            now + 1200,
            vec!["Secret dockerhub (rule docker.io) expires at"],
        ),
        (now + 86_400, now + 86_400, vec![]),
    ];
    for (i, (ghcr, hub, want)) in cases.into_iter().enumerate() {
        let app = app();
        app.policy.set_sources(Sources {
            expiries: [
                ("ghcr-acme".to_string(), expiry(ghcr)),
                ("dockerhub".to_string(), expiry(hub)),
            ]
            .into(),
            ..Sources::default()
        });
        let (status, bytes) = post(app, "/mutate", fixture("pod-create.json")).await;
        assert_eq!(status, StatusCode::OK, "case {i}");
        let reply = Reply::parse(&bytes);
        // Never fewer secrets.
        assert_eq!(
            reply.patch.as_ref().map(|p| p[0]["value"].clone()),
            Some(json!([{"name": "ghcr-acme"}, {"name": "dockerhub"}])),
            "case {i}"
        );
        let warnings: Vec<String> = reply.review["response"]["warnings"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|w| w.as_str().map(str::to_string))
            .collect();
        assert_eq!(warnings.len(), want.len(), "case {i}: {warnings:?}");
        for (got, want) in warnings.iter().zip(&want) {
            assert!(got.contains(want), "case {i}: {got:?} lacks {want:?}");
        }
    }
}

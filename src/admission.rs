//! The `/mutate` and `/audit` handlers: read the body, answer the review, record metrics.
//!
//! [`answer`] is the whole synchronous path from request bytes to response bytes (decode,
//! decide, build the patch, encode); the async handlers around it only read the body under a
//! size and time limit. Every review that carries a uid gets `allowed: true`; only a body that
//! is not an AdmissionReview at all gets an HTTP 4xx.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::app::App;
use crate::config::Mode;
use crate::decision::{self, Context, Decision, Endpoint};
use crate::metrics::{Outcome, RuleLabels};
use crate::patch;
use crate::review::{self, AdmissionResponse, AdmissionReview, LooseReview};

/// Largest request body accepted. etcd stores objects of up to 1.5 MiB, and an AdmissionReview
/// may carry the object and, for updates, the old object, plus JSON escaping; 7 MiB (the
/// figure controller-runtime uses) leaves room for any Pod the API server can send, while
/// bounding what one request can make us buffer.
pub const MAX_BODY_BYTES: usize = 7 * 1024 * 1024;
/// A client that has not sent its whole body by then is cut off (the API server's own webhook
/// timeout is at most 30 s, and it sends the body at once).
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A finished answer: HTTP status, body, and the outcome for metrics.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Vec<u8>,
    pub outcome: Outcome,
}

impl Answer {
    fn rejected(status: StatusCode, reason: impl Into<String>) -> Self {
        let mut body = reason.into().into_bytes();
        body.push(b'\n');
        Self {
            status,
            body,
            outcome: Outcome::rejected,
        }
    }
}

pub async fn mutate(State(app): State<Arc<App>>, request: Request) -> Response {
    handle(&app, Endpoint::Mutate, request).await
}

pub async fn audit(State(app): State<Arc<App>>, request: Request) -> Response {
    handle(&app, Endpoint::Audit, request).await
}

async fn handle(app: &App, endpoint: Endpoint, request: Request) -> Response {
    let started = Instant::now();
    // A debug-level span: at info, formatting five fields per admission into the span would
    // cost more than the decision; events that matter at info carry their own uid.
    let span = tracing::debug_span!(
        "admission",
        endpoint = endpoint.as_str(),
        uid = tracing::field::Empty,
        namespace = tracing::field::Empty,
        pod = tracing::field::Empty,
        mode = tracing::field::Empty,
        outcome = tracing::field::Empty,
    );
    let answer = match read_body(request.into_body()).await {
        Ok(body) => span.in_scope(|| answer(app, endpoint, &body)),
        Err(rejection) => rejection,
    };
    if answer.status != StatusCode::OK {
        span.record("outcome", format_args!("{:?}", answer.outcome));
        let reason = String::from_utf8_lossy(&answer.body);
        span.in_scope(|| {
            tracing::warn!(
                status = answer.status.as_u16(),
                reason = reason.trim(),
                "request rejected"
            )
        });
    }
    app.metrics
        .record_admission(endpoint, answer.outcome, started.elapsed().as_secs_f64());
    let content_type = if answer.status == StatusCode::OK {
        "application/json"
    } else {
        "text/plain; charset=utf-8"
    };
    (
        answer.status,
        [(header::CONTENT_TYPE, content_type)],
        answer.body,
    )
        .into_response()
}

async fn read_body(body: Body) -> Result<axum::body::Bytes, Answer> {
    match tokio::time::timeout(
        BODY_READ_TIMEOUT,
        axum::body::to_bytes(body, MAX_BODY_BYTES),
    )
    .await
    {
        Err(_) => Err(Answer::rejected(
            StatusCode::REQUEST_TIMEOUT,
            "request body not received in time",
        )),
        Ok(Err(e)) if is_length_limit(&e) => Err(Answer::rejected(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body exceeds {MAX_BODY_BYTES} bytes"),
        )),
        Ok(Err(e)) => Err(Answer::rejected(
            StatusCode::BAD_REQUEST,
            format!("cannot read request body: {e}"),
        )),
        Ok(Ok(bytes)) => Ok(bytes),
    }
}

fn is_length_limit(error: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// Answers one AdmissionReview body: the complete synchronous decision path.
pub fn answer(app: &App, endpoint: Endpoint, body: &[u8]) -> Answer {
    // JSON is UTF-8. Checking the whole body once up front is cheaper than serde_json checking
    // every string it reads (about 15% of the decode on a typical review).
    let text = match std::str::from_utf8(body) {
        Ok(text) => text,
        Err(e) => {
            return Answer::rejected(
                StatusCode::BAD_REQUEST,
                format!("body is not an AdmissionReview: not UTF-8: {e}"),
            );
        }
    };
    let review: AdmissionReview<'_> = match serde_json::from_str(text) {
        Ok(review) => review,
        Err(e) => return answer_unreadable_object(text, e),
    };
    let api_version =
        match envelope_api_version(review.api_version.as_deref(), review.kind.as_deref()) {
            Ok(v) => v,
            Err(reason) => return Answer::rejected(StatusCode::BAD_REQUEST, reason),
        };
    let Some(request) = &review.request else {
        return Answer::rejected(StatusCode::BAD_REQUEST, "AdmissionReview has no request");
    };

    let pod = request.object.as_ref();
    let namespace: &str = match (
        &*request.namespace,
        pod.and_then(|p| p.metadata.namespace.as_deref()),
    ) {
        ("", Some(ns)) => ns,
        (ns, _) => ns,
    };
    let span = tracing::Span::current();
    span.record("uid", &*request.uid);
    span.record("namespace", namespace);
    if let Some(name) = pod.and_then(|p| {
        p.metadata
            .name
            .as_deref()
            .or(p.metadata.generate_name.as_deref())
    }) {
        span.record("pod", name);
    }

    let policy = app.policy.load();
    let ctx = Context {
        config: &policy.config,
        rules: &policy.rules,
        endpoint,
        own_namespace: app.own_namespace.as_deref(),
        namespace,
        namespace_label: app.cluster.namespace_label(namespace),
        secrets: app.cluster.as_ref(),
    };
    let decision = decision::decide_request(
        &request.kind.group,
        &request.kind.kind,
        &request.operation,
        pod,
        &ctx,
    );
    let mut response = AdmissionResponse::allow(&request.uid);
    let outcome = match &decision {
        Decision::Skip(reason) => {
            tracing::debug!(reason = reason.as_str(), "skipped");
            Outcome::skipped
        }
        Decision::Plan(plan) => {
            let enforce = plan.mode == Mode::Enforce;
            span.record("mode", if enforce { "enforce" } else { "audit" });
            response.warnings = plan.warnings();
            let patch = if enforce { patch::build(plan) } else { None };
            if let Some(patch) = &patch {
                // Serialising typed patch operations cannot fail.
                response = response.with_patch(&serde_json::to_vec(patch).unwrap_or_default());
            }
            let changes = patch.is_some() || (!enforce && plan.changes_pod());
            if changes && !plan.add.is_empty() {
                let (key, counter) = if enforce {
                    ("injected-secrets", &app.metrics.secrets_injected)
                } else {
                    ("would-inject-secrets", &app.metrics.audit_findings)
                };
                let names = plan
                    .add
                    .iter()
                    .map(|s| s.name)
                    .collect::<Vec<_>>()
                    .join(",");
                // Debug: at thousands of Pods a second an info line costs more than the
                // decision; metrics and audit annotations carry the record.
                tracing::debug!(secrets = %names, "imagePullSecrets {}", if enforce { "injected" } else { "would be injected" });
                response
                    .audit_annotations
                    .insert(annotation_key(key, plan), names);
                for secret in &plan.add {
                    counter
                        .get_or_create(&RuleLabels {
                            rule: secret.rule.pattern.as_str().to_string(),
                        })
                        .inc();
                }
            }
            match (changes, enforce) {
                (false, _) => Outcome::unchanged,
                (true, true) => Outcome::patched,
                (true, false) => Outcome::audited,
            }
        }
    };
    span.record("outcome", format_args!("{outcome:?}"));
    Answer {
        status: StatusCode::OK,
        body: review::encode_response(api_version, &response),
        outcome,
    }
}

/// Audit annotation key for this round. The API server refuses to overwrite an annotation
/// set in an earlier round of the same request (reinvocation), so a round that finds the Pod
/// already listing N pull secrets writes `<base>-after-N` instead of `<base>`.
fn annotation_key(base: &str, plan: &crate::decision::Plan<'_>) -> String {
    match plan.existing_pull_secrets {
        0 => base.to_string(),
        n => format!("{base}-after-{n}"),
    }
}

/// The envelope must be an AdmissionReview of a version we speak; returns the version to echo.
fn envelope_api_version<'a>(
    api_version: Option<&'a str>,
    kind: Option<&str>,
) -> Result<&'a str, String> {
    if let Some(kind) = kind
        && kind != review::KIND
    {
        return Err(format!("expected kind AdmissionReview, got {kind:?}"));
    }
    match api_version {
        None => Ok(review::API_VERSION_V1),
        Some(v @ (review::API_VERSION_V1 | review::API_VERSION_V1BETA1)) => Ok(v),
        Some(other) => Err(format!(
            "unsupported apiVersion {other:?}; expected admission.k8s.io/v1"
        )),
    }
}

/// The typed decode failed. If the envelope still carries a request uid, answer it (allowed,
/// no patch, a warning); otherwise the body is not an AdmissionReview.
fn answer_unreadable_object(body: &str, error: serde_json::Error) -> Answer {
    let loose: LooseReview<'_> = match serde_json::from_str(body) {
        Ok(loose) => loose,
        Err(e) => {
            return Answer::rejected(
                StatusCode::BAD_REQUEST,
                format!("body is not an AdmissionReview: {}", redacted(&e)),
            );
        }
    };
    let api_version =
        match envelope_api_version(loose.api_version.as_deref(), loose.kind.as_deref()) {
            Ok(v) => v,
            Err(reason) => return Answer::rejected(StatusCode::BAD_REQUEST, reason),
        };
    let Some(request) = loose.request else {
        return Answer::rejected(StatusCode::BAD_REQUEST, "AdmissionReview has no request");
    };
    let span = tracing::Span::current();
    span.record("uid", &*request.uid);
    span.record("namespace", &*request.namespace);
    let mut response = AdmissionResponse::allow(&request.uid);
    let is_pod_create = request.kind.group.is_empty()
        && request.kind.kind == "Pod"
        && request.operation == "CREATE";
    if is_pod_create {
        tracing::warn!(
            uid = &*request.uid,
            namespace = &*request.namespace,
            error = %redacted(&error),
            "Pod object could not be read; allowed unchanged"
        );
        response.warnings.push(format!(
            "pullsecret-injector: Pod not inspected: {}",
            redacted(&error)
        ));
    }
    Answer {
        status: StatusCode::OK,
        body: review::encode_response(api_version, &response),
        outcome: Outcome::skipped,
    }
}

/// A decode error without the input it quotes: serde_json repeats offending string values
/// (`invalid type: string "..."`), which could be anything a client sent, so quoted text is
/// elided before the message is logged or returned. Line and column stay.
pub fn redacted(error: &serde_json::Error) -> String {
    let mut out = String::new();
    let (mut quoted, mut escaped) = (false, false);
    for c in error.to_string().chars() {
        if quoted {
            match (c, escaped) {
                (_, true) => escaped = false,
                ('\\', false) => escaped = true,
                ('"', false) => {
                    out.push_str("...\"");
                    quoted = false;
                }
                _ => {}
            }
        } else {
            out.push(c);
            quoted = c == '"';
        }
        if out.len() >= 200 {
            break;
        }
    }
    out
}

/// `/mutate` and `/audit`, POST only.
pub fn router(app: Arc<App>) -> axum::Router {
    axum::Router::new()
        .route("/mutate", axum::routing::post(mutate))
        .route("/audit", axum::routing::post(audit))
        .with_state(app)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_errors_do_not_repeat_the_input() {
        let error =
            serde_json::from_str::<Vec<u32>>(r#"["hunter\"2 secret"]"#).expect_err("a type error");
        let text = redacted(&error);
        assert!(
            !text.contains("hunter") && !text.contains("secret"),
            "{text}"
        );
        assert!(
            text.contains("invalid type: string \"...\"") && text.contains("line 1"),
            "{text}"
        );
        let error = serde_json::from_str::<serde_json::Value>("{").expect_err("EOF");
        assert_eq!(redacted(&error), error.to_string());
    }
}

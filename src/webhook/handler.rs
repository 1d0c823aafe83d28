//! The `/mutate` and `/audit` handlers: read the body, answer the review, record metrics.
//!
//! [`answer`] is the whole synchronous path from request bytes to response bytes: decode
//! ([`review`]), decide ([`verdict::for_request`]), encode. The async handlers around it only
//! read the body under a size and time limit. Every review that carries a uid gets
//! `allowed: true`, even if the decision panics; only a body that is not an AdmissionReview at
//! all gets an HTTP 4xx.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::core::decision::{Context, Endpoint};
use crate::core::review::{self, AdmissionResponse, AdmissionReview, LooseReview};
use crate::core::verdict::{self, Outcome};
use crate::metrics::AdmissionOutcome;
use crate::webhook::budget::Refusal;
use crate::webhook::state::App;

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
    pub outcome: AdmissionOutcome,
}

impl Answer {
    fn rejected(status: StatusCode, reason: impl Into<String>) -> Self {
        let mut body = reason.into().into_bytes();
        body.push(b'\n');
        Self {
            status,
            body,
            outcome: AdmissionOutcome::rejected,
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
        Ok(body) => span.in_scope(|| guarded(&body, |body| answer(app, endpoint, body))),
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
    let retry = answer.status == StatusCode::SERVICE_UNAVAILABLE;
    let content_type = if answer.status == StatusCode::OK {
        "application/json"
    } else {
        "text/plain; charset=utf-8"
    };
    let mut response = (
        answer.status,
        [(header::CONTENT_TYPE, content_type)],
        answer.body,
    )
        .into_response();
    // Shutting down: ask the client to close this connection after the answer, so it never
    // sends another request on a connection we are about to close (HTTP/1.1 has no other
    // race-free way; hyper ignores the header on HTTP/2, which has GOAWAY).
    if app.readiness.is_shutting_down() {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if retry {
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(crate::webhook::listener::RETRY_AFTER_SECONDS),
        );
    }
    response
}

pub(crate) async fn read_body(body: Body) -> Result<axum::body::Bytes, Answer> {
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
        // The listener charged the body to the memory budget and it did not fit (counted
        // there); the client is told to retry.
        Ok(Err(e)) => Err(match source_of::<Refusal>(&e) {
            Some(refusal) => Answer::rejected(StatusCode::SERVICE_UNAVAILABLE, refusal.to_string()),
            None => Answer::rejected(
                StatusCode::BAD_REQUEST,
                format!("cannot read request body: {e}"),
            ),
        }),
        Ok(Ok(bytes)) => Ok(bytes),
    }
}

fn is_length_limit(error: &axum::Error) -> bool {
    source_of::<http_body_util::LengthLimitError>(error).is_some()
}

/// The first error of type `E` in `error`'s source chain.
fn source_of<E: std::error::Error + 'static>(error: &axum::Error) -> Option<&E> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(found) = e.downcast_ref::<E>() {
            return Some(found);
        }
        source = e.source();
    }
    None
}

/// Runs `answer` on `body`; if it panics, the review is still answered `allowed: true` with
/// its uid (when the body has one), so a bug can never block a Pod or, under
/// `failurePolicy: Ignore`, silently drop the call.
pub fn guarded(body: &[u8], answer: impl FnOnce(&[u8]) -> Answer) -> Answer {
    match catch_unwind(AssertUnwindSafe(|| answer(body))) {
        Ok(answer) => answer,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            let loose = std::str::from_utf8(body)
                .ok()
                .and_then(|text| serde_json::from_str::<LooseReview<'_>>(text).ok());
            let api_version = loose
                .as_ref()
                .and_then(|l| envelope_api_version(l.api_version.as_deref(), None).ok())
                .unwrap_or(review::API_VERSION_V1);
            let Some(request) = loose.as_ref().and_then(|l| l.request.as_ref()) else {
                tracing::error!(panic = %message, "admission failed (panic) on a body without a uid");
                return Answer::rejected(StatusCode::BAD_REQUEST, "internal error");
            };
            tracing::error!(uid = &*request.uid, panic = %message, "admission failed (panic); allowed unchanged");
            let mut response = AdmissionResponse::allow(&request.uid);
            response
                .warnings
                .push("pullsecret-injector: internal error; Pod admitted unchanged".into());
            Answer {
                status: StatusCode::OK,
                body: review::encode_response(api_version, &response),
                outcome: AdmissionOutcome::failed,
            }
        }
    }
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

    let span = tracing::Span::current();
    span.record("uid", &*request.uid);
    span.record("namespace", verdict::request_namespace(request));
    if let Some(name) = request.object.as_ref().and_then(|p| {
        p.metadata
            .name
            .as_deref()
            .or(p.metadata.generate_name.as_deref())
    }) {
        span.record("pod", name);
    }

    let policy = app.policy.load();
    let ctx = Context::new(&policy, app.facts.as_ref())
        .endpoint(endpoint)
        .own_namespace(app.own_namespace.as_deref())
        .now(crate::metrics::unix_now());
    let verdict = verdict::for_request(request, &ctx);
    app.metrics.record_verdict(&verdict);

    let mut response = AdmissionResponse::allow(&request.uid);
    response.warnings = verdict.warnings.iter().map(ToString::to_string).collect();
    if let Some(patch) = &verdict.patch {
        // Serialising typed patch operations cannot fail. A few operations: one allocation.
        let mut json = Vec::with_capacity(256);
        let _ = serde_json::to_writer(&mut json, patch);
        response = response.with_patch(&json);
    }
    if let Some(annotation) = &verdict.annotation {
        response
            .audit_annotations
            .insert(annotation.key.clone(), annotation.value.clone());
    }
    // Mode and outcome are recorded before the line below, so it carries them (a span's fields
    // show in the events that come after they are recorded). A skipped Pod is in the
    // configuration's mode; audit and enforce Pods in the mode decided for them.
    let mode = verdict.mode.unwrap_or(policy.settings().mode);
    span.record("mode", tracing::field::display(mode.as_str()));
    let outcome = AdmissionOutcome::from(verdict.outcome);
    span.record("outcome", format_args!("{outcome:?}"));
    // One debug line per admission. Debug: at thousands of Pods a second an info line costs
    // more than the decision; metrics and audit annotations carry the record.
    match (verdict.outcome, &verdict.annotation) {
        (Outcome::Skipped(reason), _) => {
            tracing::debug!(reason = reason.as_str(), "admission skipped")
        }
        (_, Some(annotation)) => {
            tracing::debug!(secrets = %annotation.value, key = %annotation.key, "imagePullSecrets decided")
        }
        (_, None) => tracing::debug!("admission decided: nothing to add"),
    }
    Answer {
        status: StatusCode::OK,
        body: review::encode_response(api_version, &response),
        outcome,
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
        outcome: AdmissionOutcome::skipped,
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

    #[test]
    fn a_panic_is_answered_allowed_with_the_uid() {
        let body = br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"u-42","kind":{"group":"","version":"v1","kind":"Pod"},"operation":"CREATE"}}"#;
        let answer = guarded(body, |_| panic!("boom"));
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.outcome, AdmissionOutcome::failed);
        let json: serde_json::Value = serde_json::from_slice(&answer.body).expect("json");
        assert_eq!(json["apiVersion"], "admission.k8s.io/v1beta1");
        assert_eq!(json["response"]["uid"], "u-42");
        assert_eq!(json["response"]["allowed"], true);
        assert!(json["response"].get("patch").is_none());
        assert_eq!(
            json["response"]["warnings"][0],
            "pullsecret-injector: internal error; Pod admitted unchanged"
        );
        // Without a uid there is nothing to answer: a 400, never a hang or a crash.
        let answer = guarded(b"not json", |_| panic!("boom"));
        assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    }
}

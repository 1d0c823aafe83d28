//! Helpers shared by the integration tests.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine;
use pullsecret_injector::core::config;
use pullsecret_injector::core::policy::PolicyStore;
use pullsecret_injector::webhook::handler;
use pullsecret_injector::webhook::state::App;
use serde_json::Value;
use tower::ServiceExt;

pub fn fixture_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixture_path(name)).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

/// A standalone app with the fixture configuration.
pub fn app() -> Arc<App> {
    let config = config::load(&fixture_path("config.yaml")).expect("fixture config is valid");
    Arc::new(App::standalone(
        PolicyStore::new(config),
        Some("pullsecret-injector".into()),
    ))
}

/// Sends `body` to `path` through the real router, without a socket.
pub async fn post(app: Arc<App>, path: &str, body: impl Into<Body>) -> (StatusCode, Vec<u8>) {
    let request = Request::post(path)
        .header("content-type", "application/json")
        .body(body.into())
        .expect("request");
    let response = handler::router(app)
        .oneshot(request)
        .await
        .expect("infallible");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    (status, bytes.to_vec())
}

/// The `response` object of an AdmissionReview answer, with the patch decoded.
pub struct Reply {
    pub review: Value,
    pub patch: Option<Value>,
}

impl Reply {
    pub fn parse(bytes: &[u8]) -> Self {
        let review: Value = serde_json::from_slice(bytes).expect("answer is JSON");
        let patch = review["response"]["patch"].as_str().map(|b64| {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .expect("patch is base64");
            serde_json::from_slice(&raw).expect("patch is JSON")
        });
        Self { review, patch }
    }

    pub fn response(&self) -> &Value {
        &self.review["response"]
    }

    pub fn warnings(&self) -> Vec<String> {
        self.response()["warnings"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|w| w.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }
}

//! The plain-HTTP admin listener: `/livez`, `/readyz`, `/metrics`, for any long-running
//! subcommand: [`serve`] runs a [`router`] until a stop future resolves.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::webhook::state::App;

/// `/livez` (always ok), `/readyz` (200, or 503 with the reason, from `app.readiness`),
/// `/metrics` (OpenMetrics, from `app.metrics`).
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(app)
}

/// Serves `router` on `listener` (plain HTTP) until `stop` resolves and open requests have
/// finished; a failure is logged.
pub fn serve(
    listener: TcpListener,
    router: Router,
    stop: impl Future<Output = ()> + Send + 'static,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::error!(error = %e, "admin listener failed");
        }
    })
}

async fn readyz(State(app): State<Arc<App>>) -> impl IntoResponse {
    let status = if app.readiness.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, format!("{}\n", app.readiness.reason()))
}

async fn metrics(State(app): State<Arc<App>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.encode(),
    )
}

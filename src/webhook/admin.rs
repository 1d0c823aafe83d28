//! The plain-HTTP admin listener: `/livez`, `/readyz`, `/metrics`, for any long-running
//! subcommand: [`serve`] runs the [`router`] until a stop future resolves, under the
//! listener's admin limits (timeouts, a connection cap per peer, no request bodies), so the
//! kubelet's probes are answered whatever other clients do to the port.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::webhook::budget::{Budget, BudgetLimits};
use crate::webhook::listener::{self, Drained, Limits, Transport};
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

/// A scrape or probe in flight at shutdown gets this long to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Serves the [`router`] of `app` on `listener` (plain HTTP/1.1) until `stop` resolves and
/// open requests have finished.
pub fn serve(
    listener: TcpListener,
    app: Arc<App>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> JoinHandle<()> {
    let budget = Budget::new(
        BudgetLimits::bodiless(
            listener::ADMIN_MAX_REQUESTS,
            listener::ADMIN_PEER_MAX_CONNECTIONS,
        ),
        app.metrics.refusals("admin"),
    );
    let router = router(app);
    tokio::spawn(async move {
        let drained = listener::serve(
            listener,
            Transport::Plain,
            router,
            stop,
            DRAIN_TIMEOUT,
            Limits::admin(),
            budget,
        )
        .await;
        if drained == Drained::TimedOut {
            tracing::debug!("admin listener closed with requests in flight");
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

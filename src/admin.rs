//! The plain-HTTP admin port shared by `serve` and `provisioner`: `/livez`, `/readyz`,
//! `/readyz/<component>` and `/metrics`. It reports what its owner hands it; it decides nothing.

use std::{future::Future, sync::Arc};

use axum::{
    Router,
    extract::{Path, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// A readiness check: `None` when ready, else why not.
pub type ReadyCheck = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// What the admin handlers read.
#[derive(Clone)]
pub struct AdminState {
    /// All metrics of the process.
    pub registry: Arc<Registry>,
    /// Decides `/readyz` (the component the Service routes to).
    pub ready: ReadyCheck,
    /// Further components, each at `/readyz/<name>` (not part of `/readyz`).
    pub components: Vec<(&'static str, ReadyCheck)>,
}

impl AdminState {
    /// `/readyz` answered by `ready`, no further components.
    pub fn new(
        registry: Arc<Registry>,
        ready: impl Fn() -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        AdminState {
            registry,
            ready: Arc::new(ready),
            components: Vec::new(),
        }
    }
}

/// Serves the admin routes on `listener` until `stop` resolves.
pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(stop)
        .await
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/readyz/{component}", get(component))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "not found: try /livez, /readyz or /metrics\n",
            )
        })
        .with_state(state)
}

fn answer(check: &ReadyCheck) -> Response {
    match check() {
        None => (StatusCode::OK, "ok\n".to_string()).into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

async fn readyz(State(state): State<AdminState>) -> Response {
    answer(&state.ready)
}

async fn component(State(state): State<AdminState>, Path(name): Path<String>) -> Response {
    match state.components.iter().find(|(n, _)| *n == name) {
        Some((_, check)) => answer(check),
        None => (StatusCode::NOT_FOUND, format!("no component {name:?}\n")).into_response(),
    }
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        crate::metrics::render(&state.registry),
    )
}

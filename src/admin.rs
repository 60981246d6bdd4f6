//! The plain-HTTP admin port shared by `serve` and `provisioner`: `/livez`, `/readyz`,
//! `/readyz/<component>` and `/metrics`. It reports what its owner hands it; it decides nothing.

use std::{future::Future, sync::Arc, time::Duration};

use axum::{
    Router,
    extract::{Path, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
    service::TowerToHyperService,
};
use prometheus_client::registry::Registry;
use tokio::{net::TcpListener, sync::watch};

use crate::server::conns::{self, ConnLimits, ConnState, Slots};

/// A readiness (or liveness) check: `None` when ready, else why not.
pub type ReadyCheck = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// What the admin handlers read.
#[derive(Clone)]
pub struct AdminState {
    /// All metrics of the process.
    pub registry: Arc<Registry>,
    /// Decides `/readyz` (the component the Service routes to).
    pub ready: ReadyCheck,
    /// Decides `/livez` (always live unless the owner says otherwise).
    pub live: ReadyCheck,
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
            live: Arc::new(|| None),
            components: Vec::new(),
        }
    }

    /// `/livez` answered by `live` (503 with its reason when it returns one).
    pub fn with_liveness(
        mut self,
        live: impl Fn() -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.live = Arc::new(live);
        self
    }
}

/// Limits of the admin port's connections.
#[derive(Debug, Clone, Copy)]
pub struct AdminLimits {
    /// Header and idle timeouts, as on the webhook.
    pub conn: ConnLimits,
    /// Most connections open at once.
    pub max_connections: usize,
}

impl Default for AdminLimits {
    /// The webhook's default timeouts (10 s for headers, 90 s idle) and 32 connections.
    fn default() -> Self {
        AdminLimits {
            conn: ConnLimits {
                header_timeout: Duration::from_secs(10),
                idle_timeout: Duration::from_secs(90),
            },
            max_connections: crate::cli::DEFAULT_ADMIN_MAX_CONNECTIONS,
        }
    }
}

/// Serves the admin routes on `listener` until `stop` resolves, within `limits`: a silent
/// client is cut at the header timeout, an idle one at the idle timeout, and when every slot
/// is taken a new client takes the longest idle one's, so probes get through.
pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    limits: AdminLimits,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let service = TowerToHyperService::new(router(state));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.conn.header_timeout)
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    let (stopped, _) = watch::channel(false);
    let mut connections = Slots::new(limits.max_connections);
    let mut recheck = tokio::time::interval(Duration::from_millis(50));
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            Some(()) = connections.join_next(), if !connections.is_empty() => {}
            _ = recheck.tick(), if connections.full() => {}
            accepted = listener.accept(), if connections.can_accept() => {
                let (stream, peer) = match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        tracing::warn!(error = %e, "Admin accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (builder, service, stop) =
                    (builder.clone(), service.clone(), stopped.subscribe());
                connections.spawn(|conn| {
                    serve_connection(stream, peer, builder, service, conn, limits.conn, stop)
                });
            }
        }
    }
    drop(listener);
    stopped.send_replace(true);
    let drained = tokio::time::timeout(Duration::from_secs(2), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        connections.abort_all();
    }
    Ok(())
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    builder: auto::Builder<TokioExecutor>,
    service: TowerToHyperService<Router>,
    conn: Arc<ConnState>,
    limits: ConnLimits,
    mut stop: watch::Receiver<bool>,
) {
    let tracker = conn.clone();
    let service = hyper::service::service_fn(move |request| {
        let in_flight = tracker.request();
        let call = hyper::service::Service::call(&service, request);
        async move {
            let response = call.await;
            drop(in_flight);
            response
        }
    });
    let served = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(served);
    let ended = conns::drive(
        served.as_mut(),
        |c| c.graceful_shutdown(),
        &conn,
        limits,
        &mut stop,
    )
    .await;
    if let Err(e) = ended {
        tracing::debug!(%peer, reason = ?e, "Admin connection closed");
    }
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/livez", get(livez))
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

async fn livez(State(state): State<AdminState>) -> Response {
    match (state.live)() {
        None => (StatusCode::OK, "ok\n".to_string()).into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not live: {why}\n"),
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

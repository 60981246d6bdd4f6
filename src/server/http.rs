//! The webhook's HTTP surface: `POST /mutate` and nothing else. Turns HTTP into engine calls and
//! back; every bad request gets a status and a one-line reason, never a panic.

use std::{sync::Arc, time::Instant};

use arc_swap::ArcSwap;
use axum::{
    Router,
    body::{Body, Bytes},
    extract::{Request, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::{
    admission::{self, ReviewError, Target},
    audit::{AuditRecord, AuditSender},
    metrics::{RequestLabels, WebhookMetrics},
    policy::Policy,
};

/// What request handlers share.
#[derive(Debug)]
pub struct WebhookState {
    /// The live policy (swapped on reload).
    pub policy: Arc<ArcSwap<Policy>>,
    /// Where audit lines go.
    pub audit: AuditSender,
    /// Metrics.
    pub metrics: WebhookMetrics,
    /// Body limit in bytes.
    pub max_body: usize,
}

/// The router of the webhook port.
pub fn router(state: Arc<WebhookState>) -> Router {
    Router::new()
        .route(
            "/mutate",
            post(mutate).fallback(|| async {
                plain(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "only POST is allowed on /mutate",
                )
            }),
        )
        .fallback(|| async {
            plain(
                StatusCode::NOT_FOUND,
                "not found: the webhook path is POST /mutate",
            )
        })
        .with_state(state)
}

fn plain(status: StatusCode, message: &str) -> Response {
    let mut body = String::with_capacity(message.len() + 1);
    body.push_str(message);
    body.push('\n');
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        body,
    )
        .into_response()
}

async fn mutate(State(state): State<Arc<WebhookState>>, request: Request) -> Response {
    let json = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        });
    if !json {
        state.metrics.error("unsupported_media_type");
        return plain(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json",
        );
    }
    let too_large = || {
        state.metrics.error("too_large");
        plain(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("body larger than --max-body ({} bytes)", state.max_body),
        )
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > state.max_body as u64) {
        return too_large();
    }
    let body = match Limited::new(request.into_body(), state.max_body)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => return too_large(),
        Err(e) => {
            state.metrics.error("body_read");
            return plain(
                StatusCode::BAD_REQUEST,
                &format!("cannot read the body: {e}"),
            );
        }
    };
    if body.is_empty() {
        state.metrics.error("empty_body");
        return plain(
            StatusCode::BAD_REQUEST,
            "empty body: expected an AdmissionReview",
        );
    }
    answer(&state, &body)
}

/// Decides one review body and records it (audit line, metrics).
fn answer(state: &WebhookState, body: &Bytes) -> Response {
    let started = Instant::now();
    let policy = state.policy.load();
    let reviewed = match admission::review(body, &policy) {
        Ok(reviewed) => reviewed,
        Err(e) => {
            let reason = match e {
                ReviewError::Malformed(_) => "malformed_json",
                ReviewError::NotAReview(_) => "not_a_review",
            };
            state.metrics.error(reason);
            return plain(StatusCode::BAD_REQUEST, &e.to_string());
        }
    };
    let elapsed = started.elapsed();
    let request = &reviewed.request;
    let decision = &reviewed.decision;
    let kind = Target::metric_label(Target::of(
        &request.kind.group,
        &request.kind.version,
        &request.kind.kind,
    ));
    state
        .metrics
        .requests
        .get_or_create(&RequestLabels {
            kind,
            operation: request.operation.as_str(),
            decision: decision.outcome.as_str(),
        })
        .inc();
    state.metrics.duration.observe(elapsed.as_secs_f64());
    let record = AuditRecord::new(request, decision, jiff::Timestamp::now(), elapsed);
    state.audit.send(record.to_line());
    tracing::debug!(
        uid = %request.uid,
        kind = %request.kind.kind,
        decision = decision.outcome.as_str(),
        reason = %decision.reason,
        "Reviewed"
    );
    if let Some(denied) = &decision.denied {
        tracing::warn!(uid = %request.uid, message = %denied, "Denied");
    }
    let Ok(response) = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(reviewed.response))
    else {
        return plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot build the response",
        );
    };
    response
}

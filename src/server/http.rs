//! The webhook's HTTP surface: `POST /mutate` and nothing else. Turns HTTP into engine calls and
//! back; every bad request gets a status and a one-line reason, never a panic.

use std::{
    convert::Infallible,
    fmt::Display,
    sync::Arc,
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};

use crate::{
    admission::{self, ReviewError, Target},
    audit::{AuditRecord, AuditSender},
    metrics::WebhookMetrics,
    policy::Policy,
};

/// What request handlers share.
#[derive(Debug)]
pub struct WebhookState {
    /// The live policy (swapped on reload).
    pub policy: Arc<ArcSwap<Policy>>,
    pub audit: AuditSender,
    pub metrics: WebhookMetrics,
    /// Body limit in bytes.
    pub max_body: usize,
    /// Deadline for reading a body.
    pub body_timeout: Duration,
}

/// A response of the webhook port.
pub type WebhookResponse = Response<Full<Bytes>>;

/// The webhook port's hyper service: `POST /mutate`; 405 (with `Allow: POST`) for any other
/// method there, 404 for every other path.
///
/// A plain `service_fn` rather than an axum `Router`: with one route there is nothing to
/// route, and the router's per-request boxing and layers cost about 3% of a review.
pub fn service(
    state: Arc<WebhookState>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = WebhookResponse,
    Error = Infallible,
    Future = impl Future<Output = Result<WebhookResponse, Infallible>> + Send,
> + Clone {
    let service = move |request: Request<Incoming>| {
        let state = state.clone();
        async move { Ok(handle(&state, request).await) }
    };
    hyper::service::service_fn(service)
}

/// Answers one request of the webhook port, whatever carries its body (hyper's `Incoming` when
/// served, any body in tests).
pub async fn handle<B>(state: &WebhookState, request: Request<B>) -> WebhookResponse
where
    B: Body<Data = Bytes, Error: Display>,
{
    match refusal(&request) {
        Some(refused) => refused,
        None => mutate(state, request).await,
    }
}

/// 404 off `/mutate`, 405 there for any method but POST; `None` for `POST /mutate`.
fn refusal<B>(request: &Request<B>) -> Option<WebhookResponse> {
    let mut response = if request.uri().path() != "/mutate" {
        plain(
            StatusCode::NOT_FOUND,
            "not found: the webhook path is POST /mutate",
        )
    } else if request.method() != Method::POST {
        let mut response = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "only POST is allowed on /mutate",
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        response
    } else {
        return None;
    };
    if request.method() == Method::HEAD {
        // The headers of the GET answer, no body (HTTP/2 treats a body here as an error).
        let length = response.body().size_hint().exact().unwrap_or(0);
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        *response.body_mut() = Full::new(Bytes::new());
    }
    Some(response)
}

fn plain(status: StatusCode, message: &str) -> WebhookResponse {
    let mut body = String::with_capacity(message.len() + 1);
    body.push_str(message);
    body.push('\n');
    with_type(status, "text/plain; charset=utf-8", body.into())
}

fn with_type(status: StatusCode, content_type: &'static str, body: Bytes) -> WebhookResponse {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

async fn mutate<B>(state: &WebhookState, request: Request<B>) -> WebhookResponse
where
    B: Body<Data = Bytes, Error: Display>,
{
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
    // A client that stalls mid-body must not hold a handler (and its memory) forever.
    let read = tokio::time::timeout(
        state.body_timeout,
        read_body(request.into_body(), state.max_body),
    );
    let Ok(body) = read.await else {
        state.metrics.error("body_timeout");
        return plain(
            StatusCode::REQUEST_TIMEOUT,
            "the body did not arrive in time",
        );
    };
    let body = match body {
        Ok(body) => body,
        Err(BodyError::TooLarge) => return too_large(),
        Err(BodyError::Read(e)) => {
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
    answer(state, &body)
}

enum BodyError<E> {
    TooLarge,
    Read(E),
}

/// How much of an oversized body is read and thrown away so the client sees the 413 (closing a
/// connection with unread bytes makes the kernel reset it, which can destroy the answer).
const DISCARD_LIMIT: usize = 64 * 1024 * 1024;
/// How long discarding may take.
const DISCARD_TIME: Duration = Duration::from_secs(10);

/// Reads the whole body, up to `max` bytes. A single-frame body is returned without copying.
async fn read_body<B: Body<Data = Bytes>>(
    body: B,
    max: usize,
) -> Result<Bytes, BodyError<B::Error>> {
    let mut body = std::pin::pin!(body);
    let declared = body.size_hint().exact().map(|n| n as usize);
    // The frames are kept until the end and then copied once into a buffer of the exact size:
    // growing one buffer while freeing the frames one by one made glibc's allocator shrink and
    // regrow its heap around every large review (~150 page faults and ~400 us of kernel time
    // per 1 MB review). A body of one frame (the usual small review) is returned as it is.
    let mut first: Option<Bytes> = None;
    let mut rest: Vec<Bytes> = Vec::new();
    let mut total = 0usize;
    let mut over = declared.is_some_and(|n| n > max);
    let discard_until = Instant::now() + DISCARD_TIME;
    loop {
        let frame = if over {
            match tokio::time::timeout_at(discard_until.into(), body.frame()).await {
                Ok(frame) => frame,
                Err(_) => return Err(BodyError::TooLarge),
            }
        } else {
            body.frame().await
        };
        let Some(frame) = frame else { break };
        let Ok(data) = frame.map_err(BodyError::Read)?.into_data() else {
            continue; // trailers
        };
        total += data.len();
        if total > max {
            over = true;
            first = None;
            rest = Vec::new();
        }
        if over {
            if total > DISCARD_LIMIT {
                return Err(BodyError::TooLarge);
            }
            continue;
        }
        match first {
            None => first = Some(data),
            Some(_) => rest.push(data),
        }
    }
    if over {
        return Err(BodyError::TooLarge);
    }
    Ok(match first {
        None => Bytes::new(),
        Some(only) if rest.is_empty() => only,
        Some(first) => {
            let mut buf = BytesMut::with_capacity(total);
            buf.extend_from_slice(&first);
            for frame in &rest {
                buf.extend_from_slice(frame);
            }
            buf.freeze()
        }
    })
}

/// Decides one review body and records it (audit line, metrics).
fn answer(state: &WebhookState, body: &Bytes) -> WebhookResponse {
    let started = Instant::now();
    let policy = state.policy.load();
    // The engine is total, but a bug must cost one request, not the connection and its audit.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        admission::review(body, &policy)
    }));
    let Ok(outcome) = outcome else {
        state.metrics.error("internal");
        tracing::error!(
            bytes = body.len(),
            "The admission engine panicked on a review"
        );
        return plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error while deciding the review",
        );
    };
    let reviewed = match outcome {
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
    let target = Target::of(
        &request.kind.group,
        &request.kind.version,
        &request.kind.kind,
    );
    state
        .metrics
        .reviewed(target, request.operation, decision.outcome());
    state.metrics.duration.observe(elapsed.as_secs_f64());
    let record = AuditRecord::new(request, decision, jiff::Timestamp::now(), elapsed);
    state.audit.record(&record);
    tracing::debug!(
        uid = %request.uid,
        kind = %request.kind.kind,
        decision = decision.outcome().as_str(),
        reason = %decision.reason(),
        "Reviewed"
    );
    if let Some(denied) = decision.denied() {
        tracing::warn!(uid = %request.uid, message = %denied, "Denied");
    }
    with_type(
        StatusCode::OK,
        "application/json",
        Bytes::from(reviewed.response),
    )
}

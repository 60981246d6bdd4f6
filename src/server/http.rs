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
use tokio::sync::{Semaphore, SemaphorePermit, TryAcquireError};

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
    /// Memory for the bodies of all requests in progress.
    pub body_budget: BodyBudget,
}

/// Memory for request bodies, shared by every connection: a request holds the bytes it
/// buffers until its answer is made. A request that cannot get its bytes within
/// [`BodyBudget::WAIT`] is answered 503.
#[derive(Debug)]
pub struct BodyBudget {
    bytes: Semaphore,
}

impl BodyBudget {
    /// How long a request waits for memory before it is refused.
    pub const WAIT: Duration = Duration::from_secs(1);

    /// A budget of `bytes`.
    pub fn new(bytes: usize) -> BodyBudget {
        BodyBudget {
            bytes: Semaphore::new(bytes.min(Semaphore::MAX_PERMITS)),
        }
    }
}

/// Bytes of the budget held by one request.
struct Held<'a> {
    budget: &'a BodyBudget,
    permit: Option<SemaphorePermit<'a>>,
    bytes: usize,
}

/// The budget had no room for a body within [`BodyBudget::WAIT`].
struct Overloaded;

impl<'a> Held<'a> {
    fn new(budget: &'a BodyBudget) -> Self {
        Held {
            budget,
            permit: None,
            bytes: 0,
        }
    }

    /// Holds at least `bytes` in all, waiting for them a bounded time.
    async fn grow_to(&mut self, bytes: usize) -> Result<(), Overloaded> {
        if bytes <= self.bytes {
            return Ok(());
        }
        let more = u32::try_from(bytes - self.bytes).map_err(|_| Overloaded)?;
        let semaphore = &self.budget.bytes;
        let permit = match semaphore.try_acquire_many(more) {
            Ok(permit) => permit,
            Err(TryAcquireError::NoPermits) => {
                match tokio::time::timeout(BodyBudget::WAIT, semaphore.acquire_many(more)).await {
                    Ok(Ok(permit)) => permit,
                    Ok(Err(_)) | Err(_) => return Err(Overloaded),
                }
            }
            Err(TryAcquireError::Closed) => return Err(Overloaded),
        };
        match &mut self.permit {
            Some(held) => held.merge(permit),
            None => self.permit = Some(permit),
        }
        self.bytes = bytes;
        Ok(())
    }
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
        Some(refused) => {
            drain(state, request.into_body()).await;
            refused
        }
        None => mutate(state, request).await,
    }
}

/// Reads and discards the body of a request answered without it, up to `--max-body` bytes
/// and `--body-timeout`. Over HTTP/2, a stream whose body is still arriving when the answer is
/// sent gets reset, and some clients then lose the answer; a body read to its end ends the
/// stream normally. Nothing is kept, so this costs no memory.
async fn drain<B: Body<Data = Bytes>>(state: &WebhookState, body: B) {
    if body.is_end_stream() {
        return;
    }
    let deadline = Instant::now() + state.body_timeout;
    let _ = discard(std::pin::pin!(body), 0, state.max_body, deadline).await;
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
        drain(state, request.into_body()).await;
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
        read_body(request.into_body(), state.max_body, &state.body_budget),
    );
    let Ok(body) = read.await else {
        state.metrics.error("body_timeout");
        return plain(
            StatusCode::REQUEST_TIMEOUT,
            "the body did not arrive in time",
        );
    };
    // The budget stays held until the answer is made: the decoded review is about the body's
    // size again.
    let (body, _held) = match body {
        Ok(body) => body,
        Err(BodyError::TooLarge) => return too_large(),
        Err(BodyError::Overloaded) => {
            state.metrics.error("overloaded");
            return plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many request bodies in memory at once; retry",
            );
        }
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
    Overloaded,
    Read(E),
}

/// How much of an oversized body is read and thrown away so the client sees the 413 (closing a
/// connection with unread bytes makes the kernel reset it, which can destroy the answer).
const DISCARD_LIMIT: usize = 64 * 1024 * 1024;
/// How long discarding may take.
const DISCARD_TIME: Duration = Duration::from_secs(10);
/// The first size held for a body of unknown length that arrives in several frames; it then
/// doubles.
const FIRST_STEP: usize = 64 * 1024;

/// Frames of one body kept as they are before they are copied into one buffer as they come.
const FRAMES_KEPT: usize = 64;

/// Reads the whole body, up to `max` bytes, holding its size in `budget`. A body of one frame
/// (the usual small review) is returned as it is. The frames of a body of a few frames are kept
/// and copied once, at the end, into a buffer of the exact size: copying each into a growing
/// buffer while freeing them one by one made glibc's allocator shrink and regrow its heap
/// around every large review (~150 page faults and ~400 us of kernel time per 1 MB review).
/// Past [`FRAMES_KEPT`] frames (a body in tiny frames, each of which may hold on to a whole
/// read buffer), they are copied into one buffer as they arrive, allocated at the declared
/// length or doubled as needed, so they cost no more than their bytes.
async fn read_body<'a, B: Body<Data = Bytes>>(
    body: B,
    max: usize,
    budget: &'a BodyBudget,
) -> Result<(Bytes, Held<'a>), BodyError<B::Error>> {
    let mut body = std::pin::pin!(body);
    let declared = body
        .size_hint()
        .exact()
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    let too_large = |body, total| async move {
        let until = Instant::now() + DISCARD_TIME;
        match discard(body, total, DISCARD_LIMIT, until).await {
            Ok(()) | Err(BodyError::TooLarge) => Err(BodyError::TooLarge),
            Err(e) => Err(e),
        }
    };
    if declared.is_some_and(|n| n > max) {
        return too_large(body, 0).await;
    }
    let mut held = Held::new(budget);
    if let Some(declared) = declared {
        held.grow_to(declared)
            .await
            .map_err(|Overloaded| BodyError::Overloaded)?;
    }
    let mut first: Option<Bytes> = None;
    let mut kept: Vec<Bytes> = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(BodyError::Read)?.into_data() else {
            continue; // trailers
        };
        if data.is_empty() {
            continue;
        }
        total += data.len();
        if total > max {
            drop((first, kept, buf, held));
            return too_large(body, total).await;
        }
        if held.bytes < total {
            let step = if total == data.len() {
                total
            } else {
                total.max(held.bytes.saturating_mul(2)).max(FIRST_STEP)
            };
            held.grow_to(step.min(max))
                .await
                .map_err(|Overloaded| BodyError::Overloaded)?;
        }
        if buf.is_empty() {
            if first.is_none() {
                first = Some(data);
                continue;
            }
            if kept.len() < FRAMES_KEPT {
                kept.push(data);
                continue;
            }
            buf.reserve_exact(held.bytes);
            for frame in first.take().into_iter().chain(kept.drain(..)) {
                buf.extend_from_slice(&frame);
            }
        }
        if buf.capacity() < total {
            buf.reserve_exact(held.bytes - buf.len());
        }
        buf.extend_from_slice(&data);
    }
    let body = match first {
        _ if !buf.is_empty() => Bytes::from(buf),
        Some(only) if kept.is_empty() => only,
        Some(first) => {
            let mut whole = BytesMut::with_capacity(total);
            whole.extend_from_slice(&first);
            for frame in &kept {
                whole.extend_from_slice(frame);
            }
            whole.freeze()
        }
        None => Bytes::new(),
    };
    Ok((body, held))
}

/// Reads and throws away the rest of a body that already had `read` bytes, until it ends (Ok),
/// passes `limit` bytes or `until` passes (TooLarge), or fails.
async fn discard<B: Body<Data = Bytes>>(
    mut body: std::pin::Pin<&mut B>,
    mut read: usize,
    limit: usize,
    until: Instant,
) -> Result<(), BodyError<B::Error>> {
    loop {
        let frame = match tokio::time::timeout_at(until.into(), body.frame()).await {
            Ok(Some(frame)) => frame,
            Ok(None) => return Ok(()),
            Err(_) => return Err(BodyError::TooLarge),
        };
        if let Ok(data) = frame.map_err(BodyError::Read)?.into_data() {
            read += data.len();
            if read > limit {
                return Err(BodyError::TooLarge);
            }
        }
    }
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

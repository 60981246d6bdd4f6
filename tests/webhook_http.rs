//! The webhook's HTTP contract, in process: `server::http::handle` called directly with
//! in-memory bodies (whole, slow, erroring, endless), and once through hyper's HTTP/2 server
//! over an in-memory pipe. No TLS and no binary: tests/e2e.rs covers those.
#![allow(clippy::unwrap_used)]

mod common;

use std::{convert::Infallible, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use bytes::Bytes;
use futures::{StreamExt as _, stream};
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::{Body, Frame};
use hyper_util::rt::{TokioExecutor, TokioIo};
use kube_persist::{
    audit::{AuditLog, AuditTarget},
    metrics::{self, WebhookMetrics},
    policy::Policy,
    server::http::{BodyBudget, WebhookResponse, WebhookState, handle, service},
};
use prometheus_client::registry::Registry;
use serde_json::{Value, json};

const MAX_BODY: usize = 64 * 1024;
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
const BODY_MEMORY: usize = 2 * MAX_BODY;

/// A webhook state with a small body limit, its audit log in a temporary directory.
struct Webhook {
    state: Arc<WebhookState>,
    registry: Registry,
    audit: Option<AuditLog>,
    dir: tempfile::TempDir,
}

impl Webhook {
    fn new() -> Webhook {
        let dir = tempfile::tempdir().unwrap();
        let mut registry = Registry::default();
        let metrics = WebhookMetrics::register(&mut registry);
        let audit = AuditLog::open(
            AuditTarget::File(&dir.path().join("audit.log")),
            &metrics.audit_dropped,
        )
        .unwrap();
        let state = Arc::new(WebhookState {
            policy: Arc::new(ArcSwap::from_pointee(Policy::default())),
            audit: audit.sender(),
            metrics,
            max_body: MAX_BODY,
            body_timeout: BODY_TIMEOUT,
            body_budget: BodyBudget::new(BODY_MEMORY),
        });
        Webhook {
            state,
            registry,
            audit: Some(audit),
            dir,
        }
    }

    async fn call<B>(&self, request: Request<B>) -> (StatusCode, WebhookResponse)
    where
        B: Body<Data = Bytes, Error: std::fmt::Display>,
    {
        let response = handle(&self.state, request).await;
        (response.status(), response)
    }

    fn errors(&self, reason: &str) -> String {
        let text = metrics::render(&self.registry);
        let prefix = format!("kube_persist_admission_errors_total{{reason=\"{reason}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or("0")
            .to_owned()
    }

    /// The audit lines written so far (closes the log).
    fn audit(&mut self) -> Vec<Value> {
        self.audit.take().unwrap().close();
        std::fs::read_to_string(self.dir.path().join("audit.log"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// The one AdmissionReview body these tests send: a StatefulSet review with `uid`.
fn review(uid: &str) -> Bytes {
    let object = json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "busybox"}]}}}
    });
    serde_json::to_vec(&common::review_of(&object, "CREATE", uid))
        .unwrap()
        .into()
}

fn post<B>(content_type: Option<&str>, body: B) -> Request<B> {
    let mut request = Request::builder().method(Method::POST).uri("/mutate");
    if let Some(ct) = content_type {
        request = request.header(header::CONTENT_TYPE, ct);
    }
    request.body(body).unwrap()
}

fn json_post<B>(body: B) -> Request<B> {
    post(Some("application/json"), body)
}

async fn text(response: WebhookResponse) -> String {
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

/// A body of `chunks` frames of `size` bytes that does not declare its length.
fn streamed(
    chunks: usize,
    size: usize,
) -> StreamBody<impl futures::Stream<Item = Result<Frame<Bytes>, Infallible>>> {
    let chunk = Bytes::from(vec![b' '; size]);
    StreamBody::new(stream::iter(
        (0..chunks).map(move |_| Ok(Frame::data(chunk.clone()))),
    ))
}

#[tokio::test]
async fn a_review_is_answered_with_its_uid() {
    let mut webhook = Webhook::new();
    let (status, response) = webhook.call(json_post(Full::new(review("uid-1")))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
    let answer: Value = serde_json::from_str(&text(response).await).unwrap();
    assert_eq!(answer["kind"], "AdmissionReview");
    assert_eq!(answer["response"]["uid"], "uid-1");
    assert_eq!(answer["response"]["allowed"], true);
    // A charset parameter is fine, and a body in many frames is the same review.
    let (status, response) = webhook
        .call(post(
            Some("Application/JSON; charset=utf-8"),
            StreamBody::new(stream::iter(
                review("uid-2")
                    .chunks(100)
                    .map(|c| Ok::<_, Infallible>(Frame::data(Bytes::copy_from_slice(c))))
                    .collect::<Vec<_>>(),
            )),
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    let answer: Value = serde_json::from_str(&text(response).await).unwrap();
    assert_eq!(answer["response"]["uid"], "uid-2");
    let audit = webhook.audit();
    assert_eq!(audit.len(), 2, "one audit line per answered review");
    assert_eq!(audit[0]["uid"], "uid-1");
}

#[tokio::test]
async fn bodies_that_are_not_reviews_get_400() {
    let mut webhook = Webhook::new();
    let malformed = Bytes::from(common::fixture("reviews/x-malformed.json"));
    let cases: [(&str, Bytes, &str, &str); 5] = [
        ("malformed", malformed, "malformed JSON: ", ""),
        (
            "not a review",
            Bytes::from_static(br#"{"kind":"ConfigMap"}"#),
            "not an AdmissionReview: ",
            "",
        ),
        (
            "no request",
            Bytes::from_static(br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#),
            "not an AdmissionReview: ",
            "no request",
        ),
        (
            "array",
            Bytes::from_static(b"[]"),
            "not an AdmissionReview: ",
            "",
        ),
        (
            "empty",
            Bytes::new(),
            "empty body: expected an AdmissionReview\n",
            "",
        ),
    ];
    for (name, body, reason, detail) in &cases {
        let (status, response) = webhook.call(json_post(Full::new(body.clone()))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name}");
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/plain; charset=utf-8"
        );
        let text = text(response).await;
        assert!(
            text.starts_with(reason) && text.contains(detail),
            "{name}: {text:?}"
        );
        assert!(
            text.ends_with('\n') && text.lines().count() == 1,
            "{name}: {text:?}"
        );
    }
    assert_eq!(webhook.errors("malformed_json"), "1");
    assert_eq!(webhook.errors("not_a_review"), "3");
    assert_eq!(webhook.errors("empty_body"), "1");
    assert!(webhook.audit().is_empty(), "no audit line for a non-review");
}

#[tokio::test]
async fn a_body_that_fails_to_read_gets_400() {
    let webhook = Webhook::new();
    let body = StreamBody::new(stream::iter([
        Ok(Frame::data(Bytes::from_static(b"{\"kind\""))),
        Err(std::io::Error::other("connection reset")),
    ]));
    let (status, response) = webhook.call(json_post(body)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        text(response).await,
        "cannot read the body: connection reset\n"
    );
    assert_eq!(webhook.errors("body_read"), "1");
}

#[tokio::test]
async fn only_post_mutate_is_served() {
    let webhook = Webhook::new();
    let request = |method: Method, uri: &str| {
        Request::builder()
            .method(method)
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(review("uid")))
            .unwrap()
    };
    for (method, uri) in [(Method::POST, "/validate"), (Method::GET, "/")] {
        let (status, response) = webhook.call(request(method, uri)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}");
        assert_eq!(
            text(response).await,
            "not found: the webhook path is POST /mutate\n"
        );
    }
    let (status, response) = webhook.call(request(Method::GET, "/mutate")).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.headers()[header::ALLOW], "POST");
    assert_eq!(text(response).await, "only POST is allowed on /mutate\n");
    // HEAD: the GET answer's headers, no body.
    let (status, response) = webhook.call(request(Method::HEAD, "/mutate")).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.headers()[header::CONTENT_LENGTH], "32");
    assert_eq!(text(response).await, "");
}

#[tokio::test]
async fn a_body_that_is_not_json_gets_415() {
    let webhook = Webhook::new();
    for content_type in [Some("text/plain"), Some("application/jsonx"), None] {
        let (status, response) = webhook
            .call(post(content_type, Full::new(review("uid"))))
            .await;
        assert_eq!(
            status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{content_type:?}"
        );
        assert_eq!(
            text(response).await,
            "Content-Type must be application/json\n"
        );
    }
    assert_eq!(webhook.errors("unsupported_media_type"), "3");
}

#[tokio::test]
async fn a_body_over_max_body_gets_413_declared_or_not() {
    let webhook = Webhook::new();
    let message = format!("body larger than --max-body ({MAX_BODY} bytes)\n");
    // Declared: one frame whose length is known up front.
    let (status, response) = webhook
        .call(json_post(Full::new(Bytes::from(vec![b' '; MAX_BODY + 1]))))
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(text(response).await, message);
    // Undeclared: streamed frames that pass the limit part way.
    let (status, response) = webhook.call(json_post(streamed(65, 1024))).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(text(response).await, message);
    // Endless: read and thrown away up to a bound, then answered all the same.
    let chunk = Bytes::from(vec![b' '; 1 << 20]);
    let endless = StreamBody::new(stream::repeat_with(move || {
        Ok::<_, Infallible>(Frame::data(chunk.clone()))
    }));
    let (status, response) = webhook.call(json_post(endless)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(text(response).await, message);
    assert_eq!(webhook.errors("too_large"), "3");
    // Exactly at the limit is read (and then judged as JSON).
    let (status, _) = webhook.call(json_post(streamed(64, 1024))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test(start_paused = true)]
async fn a_body_slower_than_the_body_timeout_gets_408() {
    let webhook = Webhook::new();
    let stalled = StreamBody::new(
        stream::iter([Ok::<_, Infallible>(Frame::data(Bytes::from_static(
            b"{\"apiVersion\"",
        )))])
        .chain(stream::pending()),
    );
    let started = tokio::time::Instant::now();
    let (status, response) = webhook.call(json_post(stalled)).await;
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
    assert_eq!(text(response).await, "the body did not arrive in time\n");
    assert_eq!(started.elapsed(), BODY_TIMEOUT);
    assert_eq!(webhook.errors("body_timeout"), "1");
}

#[tokio::test]
async fn a_review_over_http2() {
    let webhook = Webhook::new();
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let service = service(webhook.state.clone());
    let server = tokio::spawn(
        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(server_io), service),
    );
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(client_io))
            .await
            .unwrap();
    tokio::spawn(conn);
    for uid in ["h2-1", "h2-2"] {
        let request = Request::builder()
            .method(Method::POST)
            .uri("http://webhook/mutate")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(review(uid)))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.version(), http::Version::HTTP_2);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let answer: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(answer["response"]["uid"], uid);
    }
    let request = Request::builder()
        .method(Method::GET)
        .uri("http://webhook/mutate")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    server.abort();
}

/// A body that declares its length (as the API server's do) and yields `inner`'s frames.
struct Declared<B> {
    inner: B,
    len: u64,
}

impl<B: Body + Unpin> Body for Declared<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.len)
    }
}

#[tokio::test(start_paused = true)]
async fn bodies_over_the_memory_budget_wait_then_get_503() {
    let webhook = Arc::new(Webhook::new());
    // Two bodies of the largest size that stall after their first bytes hold the whole budget
    // (BODY_MEMORY is twice MAX_BODY) until the body timeout.
    let stalled = || Declared {
        inner: StreamBody::new(
            stream::iter([Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"{")))])
                .chain(stream::pending()),
        ),
        len: MAX_BODY as u64,
    };
    let mut holders = tokio::task::JoinSet::new();
    for _ in 0..2 {
        let webhook = webhook.clone();
        let body = stalled();
        holders.spawn(async move { webhook.call(json_post(body)).await.0 });
    }
    tokio::task::yield_now().await;
    let started = tokio::time::Instant::now();
    let (status, response) = webhook.call(json_post(Full::new(review("late")))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(started.elapsed(), BodyBudget::WAIT);
    assert_eq!(
        text(response).await,
        "too many request bodies in memory at once; retry\n"
    );
    assert_eq!(webhook.errors("overloaded"), "1");
    // The holders end at the body timeout and give their memory back.
    while let Some(status) = holders.join_next().await {
        assert_eq!(status.unwrap(), StatusCode::REQUEST_TIMEOUT);
    }
    let (status, _) = webhook.call(json_post(Full::new(review("later")))).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_body_in_tiny_frames_is_one_review() {
    let webhook = Webhook::new();
    // Undeclared, one byte per frame: gathered into one buffer that grows as needed.
    let body = review("tiny");
    let frames: Vec<_> = body
        .iter()
        .map(|b| Ok::<_, Infallible>(Frame::data(Bytes::copy_from_slice(&[*b]))))
        .collect();
    let (status, response) = webhook
        .call(json_post(StreamBody::new(stream::iter(frames))))
        .await;
    assert_eq!(status, StatusCode::OK);
    let answer: Value = serde_json::from_str(&text(response).await).unwrap();
    assert_eq!(answer["response"]["uid"], "tiny");
}

#[tokio::test]
async fn an_early_answer_reads_a_bounded_part_of_the_body() {
    let webhook = Webhook::new();
    // An endless body to a wrong path: read up to --max-body, then answered all the same.
    let chunk = Bytes::from(vec![b' '; 4096]);
    let endless = StreamBody::new(stream::repeat_with(move || {
        Ok::<_, Infallible>(Frame::data(chunk.clone()))
    }));
    let request = Request::builder()
        .method(Method::POST)
        .uri("/validate")
        .body(endless)
        .unwrap();
    let (status, _) = webhook.call(request).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

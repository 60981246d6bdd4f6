//! Availability under hostile or broken clients, against the real binary on 127.0.0.1: request
//! bodies that together would exhaust memory (peak RSS of the server process, read from
//! /proc/PID/status), idle and slow connections that would hold every slot, the admin port, and
//! HTTP/2 answers sent before the body is read.
#![allow(clippy::unwrap_used)]

mod common;

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use common::{Proto, Webhook, review_of};
use http_body_util::{BodyExt as _, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde_json::json;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    task::JoinSet,
};
use tokio_rustls::{TlsConnector, client::TlsStream};

/// Peak resident memory the attacks may cause (the pod limit is 512 MiB).
const RSS_LIMIT_KIB: u64 = 128 * 1024;
/// Just under the default `--max-body` (8 MiB).
const ATTACK_BODY: usize = 8 * 1024 * 1024 - 1024;

/// The server's peak resident set (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A TLS connection to `addr` offering only `alpn`.
async fn tls(addr: SocketAddr, ca_pem: &str, alpn: &[u8]) -> TlsStream<TcpStream> {
    let config = Arc::new(common::client_config(ca_pem, &[alpn]));
    let tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    TlsConnector::from(config)
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap()
}

/// An HTTP/2 client over its own TLS connection; the connection task is returned to be stopped.
async fn h2_client(
    addr: SocketAddr,
    ca_pem: &str,
    ping_every: Option<Duration>,
) -> (
    hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    tokio::task::JoinHandle<Result<(), hyper::Error>>,
) {
    let io = TokioIo::new(tls(addr, ca_pem, b"h2").await);
    let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    builder.timer(TokioTimer::new());
    if let Some(every) = ping_every {
        builder
            .keep_alive_interval(every)
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true);
    }
    let (sender, conn) = builder.handshake(io).await.unwrap();
    (sender, tokio::spawn(conn))
}

fn post(path: &str, content_type: &str, body: Bytes) -> Request<Full<Bytes>> {
    Request::builder()
        .method(Method::POST)
        .uri(format!("https://localhost{path}"))
        .header("content-type", content_type)
        .body(Full::new(body))
        .unwrap()
}

/// A valid AdmissionReview of about `bytes` bytes (a StatefulSet with a large annotation).
fn big_review(bytes: usize, uid: &str) -> Vec<u8> {
    let object = json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "big", "namespace": "default", "annotations": {"blob": "x".repeat(bytes)}},
        "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "busybox"}]}}}
    });
    serde_json::to_vec(&review_of(&object, "CREATE", uid)).unwrap()
}

/// Reads until the peer closes (or `limit` passes): whether it closed, and what it sent.
async fn closed_within<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    limit: Duration,
) -> (bool, Vec<u8>) {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return (false, seen),
            Ok(Ok(0) | Err(_)) => return (true, seen),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

/// The status of an HTTP/1.1 response read to its end (or `None`).
fn h1_status(answer: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(answer.get(..12)?).ok()?;
    text.strip_prefix("HTTP/1.1 ")?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_http2_streams_of_big_bodies_stay_within_memory() {
    let dir = tempfile::tempdir().unwrap();
    let webhook = Webhook::start(dir.path(), &["--body-timeout", "120"]);
    let before = peak_rss_kib(webhook.child.id());
    let (sender, conn) = h2_client(webhook.addr, &webhook.ca_pem, None).await;
    let body = Bytes::from(vec![b' '; ATTACK_BODY]);
    let mut streams = JoinSet::new();
    for _ in 0..60 {
        let mut sender = sender.clone();
        let body = body.clone();
        streams.spawn(async move {
            sender.ready().await.map_err(|e| e.to_string())?;
            let response = sender
                .send_request(post("/mutate", "application/json", body))
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status();
            let _ = response.into_body().collect().await;
            Ok::<_, String>(status)
        });
    }
    let answered = tokio::time::timeout(Duration::from_secs(240), async {
        let mut statuses = Vec::new();
        while let Some(joined) = streams.join_next().await {
            statuses.push(joined.unwrap());
        }
        statuses
    })
    .await;
    streams.abort_all();
    conn.abort();
    let peak = peak_rss_kib(webhook.child.id());
    eprintln!("60 HTTP/2 streams of 8 MiB: peak RSS {before} KiB -> {peak} KiB");
    let statuses = answered.expect("every stream is answered in time");
    for status in &statuses {
        // Spaces are not a review (400); over the memory budget is 503; too slow is 408.
        let status = status.as_ref().unwrap();
        assert!(
            [
                StatusCode::BAD_REQUEST,
                StatusCode::SERVICE_UNAVAILABLE,
                StatusCode::REQUEST_TIMEOUT
            ]
            .contains(status),
            "{status}"
        );
    }
    assert!(
        peak < RSS_LIMIT_KIB,
        "peak RSS {peak} KiB over {RSS_LIMIT_KIB} KiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_http1_connections_of_big_bodies_stay_within_memory() {
    let dir = tempfile::tempdir().unwrap();
    let webhook = Webhook::start(dir.path(), &["--body-timeout", "120"]);
    let before = peak_rss_kib(webhook.child.id());
    let mut clients = JoinSet::new();
    for _ in 0..40 {
        let addr = webhook.addr;
        let ca = webhook.ca_pem.clone();
        clients.spawn(async move {
            let mut stream = tls(addr, &ca, b"http/1.1").await;
            let head = format!(
                "POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {ATTACK_BODY}\r\n\r\n"
            );
            stream.write_all(head.as_bytes()).await.ok()?;
            let chunk = vec![b' '; 64 * 1024];
            let mut sent = 0;
            while sent < ATTACK_BODY {
                let n = chunk.len().min(ATTACK_BODY - sent);
                // A server that answered early may stop reading: that ends the attack.
                if stream.write_all(&chunk[..n]).await.is_err() {
                    break;
                }
                sent += n;
            }
            let (_, answer) = closed_within(&mut stream, Duration::from_secs(180)).await;
            h1_status(&answer)
        });
    }
    let answered = tokio::time::timeout(Duration::from_secs(240), async {
        let mut statuses = Vec::new();
        while let Some(joined) = clients.join_next().await {
            statuses.push(joined.unwrap());
        }
        statuses
    })
    .await;
    clients.abort_all();
    let peak = peak_rss_kib(webhook.child.id());
    eprintln!("40 HTTP/1.1 connections of 8 MiB: peak RSS {before} KiB -> {peak} KiB");
    let statuses = answered.expect("every connection is answered in time");
    // Spaces are not a review (400); over the memory budget is 503; a body that could not
    // be sent in time (two cores shared with the client) is 408.
    assert!(
        statuses.iter().all(|s| matches!(s, Some(400 | 503 | 408))),
        "{statuses:?}"
    );
    assert!(
        peak < RSS_LIMIT_KIB,
        "peak RSS {peak} KiB over {RSS_LIMIT_KIB} KiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_review_in_one_byte_chunks_stays_within_memory() {
    let dir = tempfile::tempdir().unwrap();
    // About a minute on a quiet machine (debug build); the bounds leave room for a busy one.
    let webhook = Webhook::start(dir.path(), &["--body-timeout", "900"]);
    let before = peak_rss_kib(webhook.child.id());
    let review = big_review(ATTACK_BODY - 2048, "tiny-chunks");
    assert!(review.len() < ATTACK_BODY);
    // HTTP/1.1 chunked encoding, one byte per chunk: every byte is its own body frame.
    let mut wire = Vec::with_capacity(review.len() * 6 + 512);
    wire.extend_from_slice(
        b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    for byte in &review {
        wire.extend_from_slice(b"1\r\n");
        wire.push(*byte);
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b"0\r\n\r\n");
    let mut stream = tls(webhook.addr, &webhook.ca_pem, b"http/1.1").await;
    let started = Instant::now();
    let sent = tokio::time::timeout(Duration::from_secs(960), async {
        for part in wire.chunks(64 * 1024) {
            stream.write_all(part).await.unwrap();
        }
        closed_within(&mut stream, Duration::from_secs(120)).await.1
    })
    .await;
    let peak = peak_rss_kib(webhook.child.id());
    eprintln!(
        "an 8 MiB review in one-byte chunks: peak RSS {before} KiB -> {peak} KiB ({:?})",
        started.elapsed()
    );
    let answer = sent.expect("the review is answered in time");
    assert_eq!(
        h1_status(&answer),
        Some(200),
        "answer: {:?}",
        String::from_utf8_lossy(&answer[..answer.len().min(300)])
    );
    assert!(String::from_utf8_lossy(&answer).contains("\"tiny-chunks\""));
    assert!(
        peak < RSS_LIMIT_KIB,
        "peak RSS {peak} KiB over {RSS_LIMIT_KIB} KiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connection_without_streams_is_closed_despite_pings() {
    let dir = tempfile::tempdir().unwrap();
    let webhook = Webhook::start(
        dir.path(),
        &["--idle-timeout", "1", "--header-timeout", "1"],
    );
    // The client pings every 100 ms and the server answers: bytes move, but no request does.
    let (mut sender, conn) = h2_client(
        webhook.addr,
        &webhook.ca_pem,
        Some(Duration::from_millis(100)),
    )
    .await;
    let response = sender
        .send_request(post(
            "/mutate",
            "application/json",
            big_review(10, "idle").into(),
        ))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let started = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
    eprintln!(
        "idle HTTP/2 connection with pings closed after {:?}",
        started.elapsed()
    );
    assert!(ended.is_ok(), "the idle connection is still open after 5 s");
    assert!(started.elapsed() >= Duration::from_millis(900));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_after_the_handshake_is_cut_at_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let webhook = Webhook::start(
        dir.path(),
        &["--header-timeout", "1", "--idle-timeout", "30"],
    );
    for alpn in [&b"h2"[..], b"http/1.1"] {
        let mut stream = tls(webhook.addr, &webhook.ca_pem, alpn).await;
        let started = Instant::now();
        let (closed, _) = closed_within(&mut stream, Duration::from_secs(5)).await;
        eprintln!(
            "silent {} client: closed {closed} after {:?}",
            String::from_utf8_lossy(alpn),
            started.elapsed()
        );
        assert!(closed, "a silent client is still connected after 5 s");
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_http2_preface_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let webhook = Webhook::start(
        dir.path(),
        &["--header-timeout", "1", "--idle-timeout", "3"],
    );
    let mut stream = tls(webhook.addr, &webhook.ca_pem, b"h2").await;
    let started = Instant::now();
    let mut cut = false;
    // One byte of the 24-byte preface every 200 ms: 4.8 s to finish it.
    for byte in b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" {
        if stream.write_all(&[*byte]).await.is_err() || stream.flush().await.is_err() {
            cut = true;
            break;
        }
        let (closed, _) = closed_within(&mut stream, Duration::from_millis(200)).await;
        if closed {
            cut = true;
            break;
        }
    }
    eprintln!("trickled preface: cut {cut} after {:?}", started.elapsed());
    assert!(cut, "a preface trickled over 4.8 s was accepted");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_review_is_answered_when_idle_clients_hold_every_slot() {
    let dir = tempfile::tempdir().unwrap();
    let webhook = Webhook::start(
        dir.path(),
        &[
            "--max-connections",
            "8",
            "--header-timeout",
            "5",
            "--idle-timeout",
            "60",
        ],
    );
    let mut held = Vec::new();
    let mut h2 = Vec::new();
    // Three HTTP/2 clients that made one request and now only hold their connection...
    for _ in 0..3 {
        let (mut sender, conn) = h2_client(webhook.addr, &webhook.ca_pem, None).await;
        let response = sender
            .send_request(post(
                "/mutate",
                "application/json",
                big_review(10, "x").into(),
            ))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        h2.push((sender, conn));
    }
    // ... three that finished the handshake and say nothing, two that never start TLS.
    for _ in 0..3 {
        held.push(tls(webhook.addr, &webhook.ca_pem, b"h2").await);
    }
    let raw: Vec<TcpStream> = futures::future::join_all(
        (0..2).map(|_| async { TcpStream::connect(webhook.addr).await.unwrap() }),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let answered = tokio::time::timeout(Duration::from_secs(10), async {
        let mut client = webhook.client(Proto::H1).await;
        client.review(big_review(10, "legit")).await
    })
    .await;
    let took = started.elapsed();
    eprintln!("review with every slot held: answered after {took:?}");
    for (_, conn) in &h2 {
        conn.abort();
    }
    drop((held, raw, h2));
    let answer = answered.expect("answered within 10 s").unwrap();
    assert_eq!(answer["response"]["uid"], "legit");
    assert!(took < Duration::from_secs(1), "took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_port_cuts_silent_clients_and_caps_connections() {
    let dir = tempfile::tempdir().unwrap();
    let webhook = Webhook::start(
        dir.path(),
        &["--header-timeout", "1", "--idle-timeout", "2"],
    );
    let mut silent = Vec::new();
    for _ in 0..40 {
        silent.push(TcpStream::connect(webhook.admin).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The probes are still answered at once.
    let started = Instant::now();
    let (status, _) = tokio::time::timeout(Duration::from_secs(5), webhook.admin_get("/livez"))
        .await
        .expect("/livez answered within 5 s");
    let took = started.elapsed();
    assert_eq!(status, 200);
    // No more than the admin cap is kept open at once.
    let mut open = 0;
    for stream in &mut silent {
        if !closed_within(stream, Duration::from_millis(10)).await.0 {
            open += 1;
        }
    }
    // And the silent ones are cut at the header timeout.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut still_open = 0;
    for stream in &mut silent {
        if !closed_within(stream, Duration::from_millis(10)).await.0 {
            still_open += 1;
        }
    }
    eprintln!(
        "admin: /livez after {took:?}; {open} of 40 silent connections kept, {still_open} left after the header timeout"
    );
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert!(open <= 32, "{open} silent admin connections kept open");
    assert_eq!(
        still_open, 0,
        "silent admin connections outlive the header timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_answers_reach_http2_clients() {
    const REQUESTS: usize = 60;
    let dir = tempfile::tempdir().unwrap();
    let webhook = Webhook::start(dir.path(), &[]);
    let (sender, conn) = h2_client(webhook.addr, &webhook.ca_pem, None).await;
    // Larger than the stream window (1 MiB): the client is still sending when the answer comes.
    let body = Bytes::from(vec![b' '; 2 * 1024 * 1024]);
    // One request first, so the client knows the server's stream limit before the burst (a
    // client that opens more streams before the server's SETTINGS arrive gets the extra ones
    // refused; Go's client, the API server's, retries those).
    let mut warm_up = sender.clone();
    let response = warm_up
        .send_request(post(
            "/mutate",
            "application/json",
            big_review(10, "warm-up").into(),
        ))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let cases = [
        ("/validate", "application/json", StatusCode::NOT_FOUND),
        ("/mutate", "text/plain", StatusCode::UNSUPPORTED_MEDIA_TYPE),
    ];
    let mut requests = JoinSet::new();
    for i in 0..REQUESTS {
        let (path, content_type, expected) = cases[i % cases.len()];
        let mut sender = sender.clone();
        let body = body.clone();
        requests.spawn(async move {
            let request = post(path, content_type, body);
            let got = async {
                sender.ready().await?;
                let response = sender.send_request(request).await?;
                let status = response.status();
                response.into_body().collect().await?;
                Ok::<_, hyper::Error>(status)
            }
            .await;
            (expected, got.map_err(|e| format!("{e:?}")))
        });
    }
    let mut failed = Vec::new();
    let finished = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(joined) = requests.join_next().await {
            let (expected, got) = joined.unwrap();
            if got.as_ref() != Ok(&expected) {
                failed.push(format!("{expected}: {got:?}"));
            }
        }
    })
    .await;
    requests.abort_all();
    conn.abort();
    eprintln!(
        "early answers over HTTP/2: {} of {REQUESTS} failed",
        failed.len()
    );
    assert!(finished.is_ok(), "not every request finished in 60 s");
    assert!(
        failed.is_empty(),
        "{} of {REQUESTS} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
}

/// One HTTP/2 frame as read off the wire.
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

async fn read_frame<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<Frame> {
    let mut head = [0u8; 9];
    stream.read_exact(&mut head).await?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0; len];
    stream.read_exact(&mut payload).await?;
    Ok(Frame {
        kind: head[3],
        flags: head[4],
        stream: u32::from_be_bytes([head[5] & 0x7f, head[6], head[7], head[8]]),
        payload,
    })
}

/// An HPACK literal (not indexed) of the static table's name `index`, which must be < 15.
fn literal(index: u8, value: &str) -> Vec<u8> {
    let mut out = vec![index, u8::try_from(value.len()).unwrap()];
    out.extend_from_slice(value.as_bytes());
    out
}

/// One request of `body_len` bytes whose first frame goes out at once and the rest after
/// `pause`; returns every frame the server sent on the stream until it ended, and whether the
/// server reset the stream.
async fn early_answer(
    webhook: &Webhook,
    path: &str,
    body_len: usize,
    pause: Duration,
) -> (Vec<Frame>, Option<u32>) {
    let mut stream = tls(webhook.addr, &webhook.ca_pem, b"h2").await;
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    // :method POST, :scheme https (static table entries 3 and 7), then literals.
    let mut block = vec![0x83, 0x87];
    block.extend(literal(4, path)); // :path
    block.extend(literal(1, "localhost")); // :authority
    // content-type (31) and content-length (28) need a second index byte.
    block.extend([0x0f, 31 - 15, 16]);
    block.extend_from_slice(b"application/json");
    let length = body_len.to_string();
    block.extend([0x0f, 28 - 15, u8::try_from(length.len()).unwrap()]);
    block.extend_from_slice(length.as_bytes());
    out.extend(frame(HEADERS, END_HEADERS, 1, &block));
    // Within the initial 64 KiB windows: no flow control to follow.
    assert!(body_len <= 65_535);
    let body = vec![b' '; body_len];
    let (first, rest) = body.split_at(body_len.min(16_384));
    out.extend(frame(DATA, 0, 1, first));
    stream.write_all(&out).await.unwrap();
    tokio::time::sleep(pause).await;
    let mut rest_frames = Vec::new();
    let mut chunks = rest.chunks(16_384).peekable();
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none();
        rest_frames.extend(frame(DATA, if last { END_STREAM } else { 0 }, 1, chunk));
    }
    // A server that reset the stream may have closed the connection: that is its answer.
    let _ = stream.write_all(&rest_frames).await;
    let mut seen = Vec::new();
    let mut reset = None;
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(f) = read_frame(&mut stream).await {
            match f.kind {
                SETTINGS if f.flags & 0x1 == 0 => {
                    let _ = stream.write_all(&frame(SETTINGS, 0x1, 0, &[])).await;
                }
                RST_STREAM if f.stream == 1 => {
                    reset = Some(u32::from_be_bytes(f.payload[..4].try_into().unwrap()));
                    return;
                }
                GOAWAY => return,
                DATA | HEADERS if f.stream == 1 => {
                    let ended = f.flags & END_STREAM != 0;
                    seen.push(f);
                    if ended {
                        // A reset may follow the answer: look for it a little longer.
                        if let Ok(Ok(f)) = tokio::time::timeout(
                            Duration::from_millis(300),
                            read_frame(&mut stream),
                        )
                        .await
                            && f.kind == RST_STREAM
                            && f.stream == 1
                        {
                            reset = Some(u32::from_be_bytes(f.payload[..4].try_into().unwrap()));
                        }
                        return;
                    }
                }
                _ => {}
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no end of stream within 10 s");
    (seen, reset)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_http2_answer_ends_its_stream_without_a_reset() {
    let dir = tempfile::tempdir().unwrap();
    let webhook = Webhook::start(dir.path(), &[]);
    // The body is still arriving when the server knows its answer (404: wrong path).
    let (frames, reset) =
        early_answer(&webhook, "/validate", 60_000, Duration::from_millis(300)).await;
    let headers = frames
        .iter()
        .find(|f| f.kind == HEADERS)
        .expect("response headers");
    // :status 404 is entry 13 of the static table.
    assert_eq!(headers.payload.first(), Some(&0x8d), "not a 404");
    let body: Vec<u8> = frames
        .iter()
        .filter(|f| f.kind == DATA)
        .flat_map(|f| f.payload.clone())
        .collect();
    assert_eq!(
        String::from_utf8_lossy(&body),
        "not found: the webhook path is POST /mutate\n"
    );
    eprintln!("early 404 over HTTP/2: reset {reset:?}");
    assert_eq!(reset, None, "the stream was reset after its answer");
}

//! Certificate rotation under load and a graceful SIGTERM, against the real binary.
//!
//! Certificates live behind a `current` symlink that is swapped atomically, as the kubelet
//! updates a mounted Secret (`..data`).
#![allow(clippy::unwrap_used)]

mod common;

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use common::{Client, Proto, Webhook, fixture};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Writes a version directory `name` with `cert` and `key`, then points `current` at it.
fn publish(dir: &Path, name: &str, cert: &str, key: &str) {
    let version = dir.join(name);
    std::fs::create_dir_all(&version).unwrap();
    std::fs::write(version.join("tls.crt"), cert).unwrap();
    std::fs::write(version.join("tls.key"), key).unwrap();
    let tmp = dir.join("current.tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(name, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("current")).unwrap();
}

fn der(pem: &str) -> Vec<u8> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

const PER_CLIENT: usize = 700;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_load_loses_nothing_and_sigterm_drains() {
    common::install_crypto();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let first = kube_persist::certs::generate(&kube_persist::certs::dev_options()).unwrap();
    let second = kube_persist::certs::generate(&kube_persist::certs::dev_options()).unwrap();
    // The client trusts both CAs, as a caBundle does during a CA rollover.
    std::fs::write(
        dir.join("ca.crt"),
        format!("{}{}", first.ca_cert_pem, second.ca_cert_pem),
    )
    .unwrap();
    publish(dir, "v1", &first.cert_pem, &first.key_pem);
    // `Webhook::start` passes dir/tls.crt and dir/tls.key: make those follow `current`.
    std::os::unix::fs::symlink("current/tls.crt", dir.join("tls.crt")).unwrap();
    std::os::unix::fs::symlink("current/tls.key", dir.join("tls.key")).unwrap();
    let mut webhook = Webhook::start(dir, &["--shutdown-delay", "1"]);
    let body = bytes::Bytes::from(fixture("reviews/a-prometheus.json"));
    let uid = serde_json::from_slice::<Value>(&body).unwrap()["request"]["uid"].clone();

    // Keep-alive clients hammer the webhook while the certificate is swapped.
    let done = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for proto in [Proto::H1, Proto::H1, Proto::H2, Proto::H2] {
        let mut client = webhook.client(proto).await;
        let body = body.clone();
        let done = done.clone();
        let uid = uid.clone();
        clients.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            for _ in 0..PER_CLIENT {
                match tokio::time::timeout(Duration::from_secs(10), client.review(body.clone()))
                    .await
                {
                    Ok(Ok(answer)) if answer["response"]["uid"] == uid => {}
                    other => failures.push(format!("{other:?}")),
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            failures
        }));
    }
    while done.load(Ordering::Relaxed) < PER_CLIENT {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    publish(dir, "v2", &second.cert_pem, &second.key_pem);
    // New connections get the new certificate (bounded wait for the next poll).
    let mut rotated = false;
    for _ in 0..100 {
        let c = Client::connect(webhook.addr, &webhook.ca_pem, Proto::H1)
            .await
            .unwrap();
        if c.peer_cert == der(&second.cert_pem) {
            rotated = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        rotated,
        "the new certificate was not served: {}",
        webhook.stderr()
    );
    for client in clients {
        let failures = client.await.unwrap();
        assert!(
            failures.is_empty(),
            "{} failed: {:?}",
            failures.len(),
            &failures[..failures.len().min(3)]
        );
    }
    let total = 4 * PER_CLIENT;

    // A broken pair (key of another certificate) is refused; the good one keeps serving.
    publish(dir, "v3", &first.cert_pem, &second.key_pem);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !webhook.stderr().contains("New certificate rejected") {
        assert!(
            std::time::Instant::now() < deadline,
            "no rejection logged: {}",
            webhook.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut c = Client::connect(webhook.addr, &webhook.ca_pem, Proto::H2)
        .await
        .unwrap();
    assert_eq!(c.peer_cert, der(&second.cert_pem));
    assert_eq!(
        c.review(body.clone()).await.unwrap()["response"]["uid"],
        uid
    );
    let (_, metrics) = webhook.admin_get("/metrics").await;
    assert!(
        metrics.contains("kube_persist_reloads_total{what=\"certificate\",result=\"success\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("kube_persist_reloads_total{what=\"certificate\",result=\"failure\"} 1"),
        "{metrics}"
    );

    // SIGTERM with a request in flight: half its body is sent before the signal, the rest after.
    let config = Arc::new(common::client_config(&webhook.ca_pem, &[b"http/1.1"]));
    let tcp = tokio::net::TcpStream::connect(webhook.addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let head = format!(
        "POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let half = body.len() / 2;
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(&body[..half]).await.unwrap();
    tls.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let pid = webhook.child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    // During the shutdown delay readiness fails but new requests are still answered ...
    let mut unready = false;
    for _ in 0..40 {
        if webhook.admin_get("/readyz").await.0 == 503 {
            unready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(unready, "/readyz still ok after SIGTERM");
    let mut late = Client::connect(webhook.addr, &webhook.ca_pem, Proto::H1)
        .await
        .unwrap();
    assert_eq!(
        late.review(body.clone()).await.unwrap()["response"]["uid"],
        uid
    );
    // ... then new connections are refused while the old one drains.
    let mut refused = false;
    for _ in 0..250 {
        if tokio::net::TcpStream::connect(webhook.addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "the listener is still open after SIGTERM");
    tls.write_all(&body[half..]).await.unwrap();
    tls.flush().await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut answer))
        .await
        .expect("answer before the drain deadline")
        .unwrap_or_default();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(uid.as_str().unwrap()), "{answer}");
    let status = webhook.wait(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{}", webhook.stderr());

    // Every answered review is in the audit log, flushed before exit.
    let audited = webhook.audit().len();
    assert_eq!(audited, total + 1 + 1 + 1, "audit lines");
}

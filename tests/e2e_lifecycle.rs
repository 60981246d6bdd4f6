//! Certificate rotation under load and a graceful SIGTERM, against the real binary; and the
//! provisioner beside the webhook (`serve --provisioner`) or alone, with its own readiness.
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

/// A kubeconfig for an API server that is not there: the provisioner starts, its watches retry.
fn unreachable_kubeconfig(dir: &Path) -> String {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        "apiVersion: v1\nkind: Config\ncurrent-context: x\n\
         clusters: [{name: c, cluster: {server: \"https://127.0.0.1:1\"}}]\n\
         users: [{name: u, user: {token: t}}]\n\
         contexts: [{name: x, context: {cluster: c, user: u, namespace: default}}]\n",
    )
    .unwrap();
    path.display().to_string()
}

const PROVISIONER_FLAGS: [&str; 8] = [
    "--nfs-server",
    "nfs.example.internal",
    "--nfs-path",
    "/export",
    "--nfs-root",
    "not-mounted",
    "--enable-leader-election",
    "false",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_reports_the_provisioner_apart_and_stops_it() {
    let tmp = tempfile::tempdir().unwrap();
    let kubeconfig = unreachable_kubeconfig(tmp.path());
    let mut flags = vec!["--provisioner"];
    flags.extend(PROVISIONER_FLAGS);
    let mut webhook =
        Webhook::start_with_env(tmp.path(), &flags, &[("KUBECONFIG", kubeconfig.as_str())]);
    // The NFS root is not there: the provisioner is not ready, the webhook still is.
    let (status, body) = webhook.admin_get("/readyz/provisioner").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("not ready: "), "{body}");
    assert_eq!(
        webhook.admin_get("/readyz").await,
        (200, "ok\n".to_string())
    );
    assert_eq!(webhook.admin_get("/readyz/other").await.0, 404);
    let mut client = webhook.client(Proto::H1).await;
    let body = bytes::Bytes::from(fixture("reviews/a-prometheus.json"));
    assert_eq!(
        client.review(body).await.unwrap()["response"]["allowed"],
        true
    );
    // One registry: the webhook's and the provisioner's metrics side by side.
    let (_, metrics) = webhook.admin_get("/metrics").await;
    assert!(
        metrics.contains("kube_persist_admission_requests_total"),
        "{metrics}"
    );
    assert!(
        metrics.contains("kube_persist_provisioner_leader 1"),
        "{metrics}"
    );
    assert_eq!(webhook.terminate().code(), Some(0), "{}", webhook.stderr());
    assert!(
        webhook.stderr().contains("Provisioner stopped"),
        "{}",
        webhook.stderr()
    );
    assert_eq!(webhook.audit().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_provisioner_alone_serves_its_readiness_at_readyz() {
    let tmp = tempfile::tempdir().unwrap();
    let kubeconfig = unreachable_kubeconfig(tmp.path());
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut args = common::args(&["--log-format", "json", "provisioner"]);
    args.extend(common::args(&PROVISIONER_FLAGS));
    args.push(format!("--provisioner-admin-listen={admin}"));
    let (mut child, lines, rx) =
        common::spawn_with_env(&args, tmp.path(), &[("KUBECONFIG", kubeconfig.as_str())]);
    let log = || lines.lock().unwrap().join("\n");
    assert!(
        common::wait_for_line(&rx, Duration::from_secs(20), |v| {
            v["message"] == "Admin port listening (/livez, /readyz, /metrics)"
        })
        .is_some(),
        "{}",
        log()
    );
    let get = |path: &'static str| async move {
        let mut tcp = tokio::net::TcpStream::connect(admin).await.unwrap();
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        tcp.read_to_string(&mut answer).await.unwrap();
        answer
    };
    assert!(get("/livez").await.starts_with("HTTP/1.1 200"));
    let readyz = get("/readyz").await;
    assert!(readyz.starts_with("HTTP/1.1 503"), "{readyz}");
    assert!(readyz.contains("not ready: "), "{readyz}");
    assert!(get("/readyz/provisioner").await.starts_with("HTTP/1.1 404"));
    let metrics = get("/metrics").await;
    assert!(
        metrics.contains("kube_persist_provisioner_leader 1"),
        "{metrics}"
    );
    let pid = child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still running: {}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(0), "{}", log());
    assert!(log().contains("Provisioner stopped"), "{}", log());
}

/// In process: a part beside the webhook that fails (the provisioner, in `serve --provisioner`)
/// stops the webhook at once, skipping `--shutdown-delay`, and `serve` returns its error.
#[tokio::test]
async fn a_failed_part_stops_the_webhook_at_once() {
    common::install_crypto();
    let tmp = tempfile::tempdir().unwrap();
    let config = kube_persist::cli::ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        tls: kube_persist::cli::TlsSource::Dev {
            ca_dir: tmp.path().to_path_buf(),
        },
        client_ca: None,
        policy: None,
        max_body: 1 << 20,
        max_body_memory: 1 << 22,
        audit_log: Some(tmp.path().join("audit.log")),
        reload_interval: Duration::from_secs(1),
        header_timeout: Duration::from_secs(1),
        body_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(1),
        drain_timeout: Duration::from_secs(1),
        shutdown_delay: Duration::from_secs(3600),
        max_connections: 4,
        admin_max_connections: 4,
        provisioner: None,
    };
    let mut registry = prometheus_client::registry::Registry::default();
    let server = kube_persist::server::Server::bind(config, &mut registry)
        .await
        .unwrap();
    let ready = server.readiness();
    let stopping = server.stopping();
    assert_eq!(ready(), None);
    let failed = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        anyhow::anyhow!("the provisioner failed")
    };
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        server.run(std::future::pending(), failed),
    )
    .await
    .expect("stopped without waiting for the shutdown delay");
    assert_eq!(result.unwrap_err().to_string(), "the provisioner failed");
    assert_eq!(ready().as_deref(), Some("shutting down"));
    tokio::time::timeout(Duration::from_secs(1), stopping)
        .await
        .expect("the parts beside the webhook are told to stop");
}

//! End to end: the real binary on 127.0.0.1 over real TLS (rcgen certificates, a rustls client),
//! HTTP/1.1 and HTTP/2, real AdmissionReview JSON.

#![allow(clippy::unwrap_used)]

mod common;

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use common::{Client, Proto, Webhook, apply_patch, fixture, review_of};
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

fn prometheus_review() -> (Vec<u8>, Value) {
    let body = fixture("reviews/a-prometheus.json");
    let review: Value = serde_json::from_slice(&body).unwrap();
    (body, review)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_is_mutated_over_http1_and_http2() {
    let dir = tempfile::tempdir().unwrap();
    let mut webhook = Webhook::start(dir.path(), &[]);
    let (body, review) = prometheus_review();
    let object = &review["request"]["object"];
    for proto in [Proto::H1, Proto::H2] {
        let mut client = webhook.client(proto).await;
        let answer = client.review(body.clone()).await.unwrap();
        let response = &answer["response"];
        assert_eq!(answer["kind"], "AdmissionReview");
        assert_eq!(response["uid"], review["request"]["uid"]);
        assert_eq!(response["allowed"], true);
        assert_eq!(response["auditAnnotations"]["decision"], "mutated");
        let warnings = response["warnings"].as_array().unwrap();
        assert!(
            warnings[0]
                .as_str()
                .unwrap()
                .starts_with("kube-persist: added 100Gi volume")
        );
        let mutated = apply_patch(object, &answer);
        assert_eq!(
            mutated["spec"]["storage"]["volumeClaimTemplate"]["spec"]["storageClassName"],
            "prometheus-data-db"
        );
        common::crd::check(&mutated).unwrap();
        // The API server may reinvoke us with the result: no second patch.
        let again = client
            .review(serde_json::to_vec(&review_of(&mutated, "CREATE", "again")).unwrap())
            .await
            .unwrap();
        assert!(again["response"].get("patch").is_none(), "{again}");
        assert_eq!(again["response"]["uid"], "again");
    }
    assert_eq!(webhook.terminate().code(), Some(0));
    let audit = webhook.audit();
    assert_eq!(audit.len(), 4, "one audit line per review");
    let first = &audit[0];
    for field in [
        "ts",
        "uid",
        "decision",
        "reason",
        "group",
        "version",
        "kind",
        "namespace",
        "name",
        "operation",
        "user",
        "groups",
        "dryRun",
        "storageClass",
        "size",
        "source",
        "patch",
        "durationMicros",
    ] {
        assert!(
            first.get(field).is_some(),
            "audit field {field} missing: {first}"
        );
    }
    assert_eq!(first["decision"], "mutated");
    assert_eq!(first["user"], review["request"]["userInfo"]["username"]);
    assert_eq!(first["source"], "default");
    assert_eq!(first["patch"].as_array().unwrap().len(), 3);
    assert_eq!(audit[1]["decision"], "unchanged");
    let text = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
    assert!(
        !text.contains("managedFields"),
        "the audit log never holds objects"
    );
}

/// A body of `bytes` size that is still one valid AdmissionReview (a big ConfigMap-like object).
fn big_review(bytes: usize) -> Vec<u8> {
    let object = json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "big", "namespace": "default", "annotations": {"blob": "x".repeat(bytes)}},
        "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "busybox"}]}}}
    });
    serde_json::to_vec(&review_of(&object, "CREATE", "big")).unwrap()
}

fn one_line(body: &[u8]) -> &str {
    let text = std::str::from_utf8(body).unwrap();
    assert!(
        text.ends_with('\n') && text.trim_end().lines().count() == 1,
        "one line: {text:?}"
    );
    text.trim_end()
}

/// The statuses and messages of every bad request are pinned in process (tests/webhook_http.rs);
/// these go over real TLS, where an oversized body must still get its answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_status_and_a_one_line_reason() {
    let dir = tempfile::tempdir().unwrap();
    let mut webhook = Webhook::start(dir.path(), &[]);
    let (body, _) = prometheus_review();
    for proto in [Proto::H1, Proto::H2] {
        let mut c = webhook.client(proto).await;
        let json = Some("application/json");
        type Case<'a> = (
            &'a str,
            Method,
            &'a str,
            Option<&'a str>,
            Vec<u8>,
            StatusCode,
            &'a str,
        );
        let cases: Vec<Case> = vec![
            (
                "malformed",
                Method::POST,
                "/mutate",
                json,
                fixture("reviews/x-malformed.json"),
                StatusCode::BAD_REQUEST,
                "malformed JSON",
            ),
            (
                "GET",
                Method::GET,
                "/mutate",
                None,
                Vec::new(),
                StatusCode::METHOD_NOT_ALLOWED,
                "only POST",
            ),
            (
                "too large",
                Method::POST,
                "/mutate",
                json,
                big_review(9 << 20),
                StatusCode::PAYLOAD_TOO_LARGE,
                "--max-body",
            ),
        ];
        for (name, method, path, ct, payload, status, reason) in cases {
            let (got, answer) = c
                .send(method, path, ct, payload)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(got, status, "{name} over {proto:?}");
            let line = one_line(&answer);
            assert!(line.contains(reason), "{name}: {line}");
        }
        // charset parameter is fine; a 3 MiB review (above axum's 2 MB default) is accepted.
        let (status, _) = c
            .send(
                Method::POST,
                "/mutate",
                Some("application/json; charset=utf-8"),
                body.clone(),
            )
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK);
        let answer = c.review(big_review(3 << 20)).await.unwrap();
        assert_eq!(answer["response"]["uid"], "big");
    }
    // An invalid annotation: allowed unchanged, with a warning saying exactly what is wrong.
    let (_, mut review) = prometheus_review();
    review["request"]["object"]["metadata"]["annotations"] =
        json!({"kube-persist.io/size": "lots"});
    let mut c = webhook.client(Proto::H1).await;
    let answer = c
        .review(serde_json::to_vec(&review).unwrap())
        .await
        .unwrap();
    assert_eq!(answer["response"]["allowed"], true);
    assert!(answer["response"].get("patch").is_none());
    assert!(
        answer["response"]["warnings"][0]
            .as_str()
            .unwrap()
            .contains("kube-persist.io/size \"lots\"")
    );
    // Still healthy after all that, and the errors are counted.
    assert_eq!(webhook.admin_get("/livez").await.0, 200);
    let (_, metrics) = webhook.admin_get("/metrics").await;
    assert!(
        metrics.contains("kube_persist_admission_errors_total{reason=\"malformed_json\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("kube_persist_admission_errors_total{reason=\"too_large\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("decision=\"invalid\""), "{metrics}");
    assert_eq!(webhook.terminate().code(), Some(0));
    assert!(!webhook.stderr().contains("panicked"));
}

#[test]
fn an_invalid_policy_or_certificate_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    common::write_certs(dir.path());
    std::fs::write(dir.path().join("policy.yaml"), "size: 10Xi\n").unwrap();
    let run = |extra: &[&str]| {
        let mut args = common::args(&[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ]);
        args.extend(extra.iter().map(|s| s.to_string()));
        let out = std::process::Command::new(common::binary())
            .args(&args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stderr) = run(&[
        "--policy",
        "policy.yaml",
        "--tls-cert",
        "tls.crt",
        "--tls-key",
        "tls.key",
    ]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("policy field `size`"), "{stderr}");
    let (code, stderr) = run(&["--tls-cert", "ca.crt", "--tls-key", "tls.key"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("does not fit --tls-cert"), "{stderr}");
    let (code, stderr) = run(&["--tls-cert", "missing.crt", "--tls-key", "tls.key"]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("cannot read --tls-cert missing.crt"),
        "{stderr}"
    );
    let (code, stderr) = run(&["--tls-cert", "tls.crt"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("--tls-key"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dev_certificate_is_generated_when_none_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let args = common::args(&[
        "--log-format",
        "json",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    let (mut child, _lines, rx) = common::spawn(&args, dir.path());
    let listening = common::wait_for_line(&rx, Duration::from_secs(20), |v| {
        v["message"] == "Listening"
    })
    .unwrap();
    let ca = std::fs::read_to_string(dir.path().join("certs/dev/ca.crt")).unwrap();
    let addr = listening["webhook"].as_str().unwrap().parse().unwrap();
    let mut client = Client::connect(addr, &ca, Proto::H2).await.unwrap();
    let answer = client.review(prometheus_review().0).await.unwrap();
    assert_eq!(answer["response"]["allowed"], true);
    child.kill().unwrap();
    child.wait().unwrap();
}

fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_reloads_and_a_broken_one_keeps_the_old() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, "size: 20Gi\n").unwrap();
    let webhook = Webhook::start(dir.path(), &["--policy", policy.to_str().unwrap()]);
    let (body, _) = prometheus_review();
    let mut c = webhook.client(Proto::H1).await;
    let size = |answer: &Value| {
        answer["response"]["auditAnnotations"]["storage"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(
        size(&c.review(body.clone()).await.unwrap()),
        "prometheus-data-db/20Gi"
    );

    common::replace_file(dir.path(), "policy.yaml", "size: [not, a, size]\n");
    assert!(wait_until(Duration::from_secs(10), || webhook
        .stderr()
        .contains("Policy file rejected")));
    assert_eq!(
        size(&c.review(body.clone()).await.unwrap()),
        "prometheus-data-db/20Gi"
    );
    let (_, metrics) = webhook.admin_get("/metrics").await;
    assert!(
        metrics.contains("kube_persist_reloads_total{what=\"policy\",result=\"failure\"} 1"),
        "{metrics}"
    );

    common::replace_file(
        dir.path(),
        "policy.yaml",
        "size: 50Gi\nstorageClassName: fast\n",
    );
    let mut reloaded = false;
    for _ in 0..100 {
        if size(&c.review(body.clone()).await.unwrap()) == "fast/50Gi" {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(reloaded, "new policy not picked up: {}", webhook.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_gets_408_and_the_connection_cap_holds() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let webhook = Webhook::start(
        dir.path(),
        &["--body-timeout", "0.5", "--max-connections", "1"],
    );
    let config = std::sync::Arc::new(common::client_config(&webhook.ca_pem, &[b"http/1.1"]));
    let connect = || async {
        let tcp = tokio::net::TcpStream::connect(webhook.addr).await.unwrap();
        tokio_rustls::TlsConnector::from(config.clone())
            .connect(
                rustls::pki_types::ServerName::try_from("localhost").unwrap(),
                tcp,
            )
            .await
    };
    // The only allowed connection: a body that never finishes.
    let mut first = connect().await.unwrap();
    first
        .write_all(b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"apiVersion\"")
        .await
        .unwrap();
    // A second client is not served while the first holds the only slot.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), connect())
            .await
            .is_err(),
        "a second connection was served beyond --max-connections 1"
    );
    // The stalled body is cut off with a 408 well before any client-side limit.
    let started = Instant::now();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), first.read_to_end(&mut answer))
        .await
        .expect("the server answers a stalled body")
        .unwrap_or_default();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive in time"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(first);
    // With the slot free, the next client is served.
    let mut client = webhook.client(Proto::H1).await;
    assert_eq!(
        client.review(prometheus_review().0).await.unwrap()["response"]["allowed"],
        true
    );
}

/// The audit lines in `dir/audit.log`, as text.
fn audit_text(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("audit.log")).unwrap_or_default()
}

fn prlimit_fsize(pid: u32, limit: &str) {
    let status = Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--fsize={limit}")])
        .status()
        .expect("prlimit (util-linux) runs");
    assert!(status.success(), "prlimit --fsize={limit}");
}

async fn dropped_for_write_errors(webhook: &Webhook) -> u64 {
    let (_, metrics) = webhook.admin_get("/metrics").await;
    metrics
        .lines()
        .find(|l| l.starts_with("kube_persist_audit_records_dropped_total{reason=\"write_error\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

/// A full disk (here a file-size limit, which takes the part of a write that fits, as a full
/// disk does) drops and counts records, never blocks admission, and the next record after
/// space comes back starts on a line of its own instead of being glued onto the cut one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_drops_records_but_never_glues_one_onto_a_cut_line() {
    let dir = tempfile::tempdir().unwrap();
    // A write past the limit fails with EFBIG instead of raising SIGXFSZ.
    let launcher = ["bash", "-c", "trap '' XFSZ; exec \"$0\" \"$@\""];
    let webhook = Webhook::start_via(&launcher, dir.path(), &[], &[]);
    let pid = webhook.child.id();
    let (body, _) = prometheus_review();
    let mut c = webhook.client(Proto::H1).await;
    c.review(body.clone()).await.unwrap();
    assert!(wait_until(Duration::from_secs(5), || audit_text(
        dir.path()
    )
    .lines()
    .count()
        == 1));
    let full = audit_text(dir.path()).len() + 200;
    prlimit_fsize(pid, &format!("{full}:unlimited"));
    for _ in 0..3 {
        let answer = c.review(body.clone()).await.unwrap();
        assert_eq!(answer["response"]["allowed"], true);
    }
    let mut dropped = 0;
    for _ in 0..50 {
        dropped = dropped_for_write_errors(&webhook).await;
        if dropped == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(dropped, 3, "{}", webhook.stderr());
    assert_eq!(audit_text(dir.path()).len(), full, "the disk took what fit");

    prlimit_fsize(pid, "unlimited:unlimited");
    c.review(body.clone()).await.unwrap();
    assert!(wait_until(Duration::from_secs(5), || audit_text(
        dir.path()
    )
    .ends_with("}\n")
        && audit_text(dir.path()).len() > full + 10));
    let text = audit_text(dir.path());
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.len(),
        3,
        "first record, the cut one, the last: {text}"
    );
    for whole in [lines[0], lines[2]] {
        let record: Value = serde_json::from_str(whole).unwrap_or_else(|e| panic!("{e}: {whole}"));
        assert_eq!(record["decision"], "mutated");
    }
    assert_eq!(lines[1].len(), 200, "the cut line is alone on its line");
    assert_eq!(lines[1].matches("{\"ts\"").count(), 1, "{}", lines[1]);
}

/// SIGHUP opens the audit log again (logrotate's `create` with a `postrotate` signal) and does
/// not end the webhook.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_opens_the_audit_log_again_and_the_webhook_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let mut webhook = Webhook::start(dir.path(), &[]);
    let (body, _) = prometheus_review();
    let mut c = webhook.client(Proto::H1).await;
    c.review(body.clone()).await.unwrap();
    assert!(wait_until(Duration::from_secs(5), || audit_text(
        dir.path()
    )
    .lines()
    .count()
        == 1));
    std::fs::rename(dir.path().join("audit.log"), dir.path().join("audit.log.1")).unwrap();
    let status = Command::new("kill")
        .args(["-HUP", &webhook.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(
        wait_until(Duration::from_secs(5), || webhook
            .stderr()
            .contains("SIGHUP")),
        "{}",
        webhook.stderr()
    );
    let answer = c.review(body.clone()).await.unwrap();
    assert_eq!(answer["response"]["allowed"], true);
    assert!(wait_until(Duration::from_secs(5), || audit_text(
        dir.path()
    )
    .lines()
    .count()
        == 1));
    let rotated = std::fs::read_to_string(dir.path().join("audit.log.1")).unwrap();
    assert_eq!(rotated.lines().count(), 1);
    assert!(webhook.child.try_wait().unwrap().is_none(), "still running");
    assert!(webhook.terminate().success());
}

//! The whole provisioner (`Provisioner::run`: Lease, reflectors, both controllers, probe)
//! against a small fake API server that answers by path, with a temp directory as the mount.
//! The fake server refuses any request `rbac::API_ACCESS` does not cover.
// Helpers outside `#[test]` functions are test code too (clippy.toml allows unwrap in tests).
#![allow(clippy::unwrap_used)]

use std::{
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use http::{Method, Request, Response, StatusCode};
use kube::{Client, client::Body};
use kube_persist::{
    admin::{self, AdminState},
    provisioner::{Config, Provisioner, Readiness, Tuning, leader::LeaderTiming},
    rbac,
};
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tower::ServiceExt as _;
use tower_test::mock::{Handle, SendResponse};

const PV: &str = "pvc-7d3c1f0e-5b8a-4c2d-9e6f-0a1b2c3d4e5f";
const DIR: &str =
    "monitoring-prometheus-k8s-db-prometheus-k8s-0-pvc-7d3c1f0e-5b8a-4c2d-9e6f-0a1b2c3d4e5f";

fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/provisioner")
        .join(name);
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[derive(Default)]
struct State {
    lease: Option<Value>,
    lease_rv: u64,
    created_pvs: Vec<Value>,
    events: Vec<String>,
    /// Open watches: held so they stay open, like a real watch with no changes.
    watches: Vec<SendResponse<Response<Body>>>,
}

fn respond(send: SendResponse<Response<Body>>, status: StatusCode, body: &Value) {
    send.send_response(
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(body).unwrap()))
            .unwrap(),
    );
}

fn list(kind: &str, api_version: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion": api_version, "kind": kind, "metadata": {"resourceVersion": "100"}, "items": items})
}

fn rbac_check(method: &Method, path: &str, query: &str) {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (group, mut rest) = match segs[0] {
        "api" => ("", &segs[2..]),
        _ => (segs[1], &segs[3..]),
    };
    if rest[0] == "namespaces" && rest.len() >= 3 {
        rest = &rest[2..];
    }
    let verb = match *method {
        Method::GET if query.contains("watch=true") => "watch",
        Method::GET if rest.len() > 1 => "get",
        Method::GET => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        _ => "delete",
    };
    assert!(
        rbac::is_allowed(group, rest[0], verb),
        "{method} {path}?{query} not granted"
    );
}

async fn serve(mut handle: Handle<Request<Body>, Response<Body>>, state: Arc<Mutex<State>>) {
    while let Some((request, send)) = handle.next_request().await {
        let (parts, body) = request.into_parts();
        let bytes = body.collect_bytes().await.unwrap();
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        let path = parts.uri.path().to_owned();
        let query = parts.uri.query().unwrap_or_default().to_owned();
        rbac_check(&parts.method, &path, &query);
        let mut st = state.lock().unwrap();
        let watch = query.contains("watch=true");
        match (parts.method.clone(), path.as_str()) {
            (Method::GET, _) if watch => st.watches.push(send),
            (Method::GET, "/apis/storage.k8s.io/v1/storageclasses") => respond(
                send,
                StatusCode::OK,
                &list(
                    "StorageClassList",
                    "storage.k8s.io/v1",
                    vec![fixture("storageclass.json")],
                ),
            ),
            (Method::GET, "/api/v1/persistentvolumeclaims") => respond(
                send,
                StatusCode::OK,
                &list(
                    "PersistentVolumeClaimList",
                    "v1",
                    vec![fixture("pvc-prometheus.json")],
                ),
            ),
            (Method::GET, "/api/v1/persistentvolumes") => respond(
                send,
                StatusCode::OK,
                &list("PersistentVolumeList", "v1", vec![]),
            ),
            (Method::POST, "/api/v1/persistentvolumes") => {
                st.created_pvs.push(body.clone());
                respond(send, StatusCode::CREATED, &body);
            }
            (Method::POST | Method::PATCH, p)
                if p.starts_with("/apis/events.k8s.io/v1/namespaces/") =>
            {
                st.events
                    .push(body["reason"].as_str().unwrap_or_default().to_owned());
                respond(send, StatusCode::CREATED, &body);
            }
            (Method::GET, p) if p.ends_with("/leases/fuseim.pri-ifs") => match st.lease.clone() {
                Some(lease) => respond(send, StatusCode::OK, &lease),
                None => respond(
                    send,
                    StatusCode::NOT_FOUND,
                    &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}),
                ),
            },
            (Method::POST | Method::PUT, p) if p.contains("/namespaces/kube-persist/leases") => {
                st.lease_rv += 1;
                let mut lease = body.clone();
                lease["metadata"]["resourceVersion"] = json!(st.lease_rv.to_string());
                st.lease = Some(lease.clone());
                let status = if parts.method == Method::POST {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                };
                respond(send, status, &lease);
            }
            (m, p) => panic!("unexpected request {m} {p}?{query} {body}"),
        }
    }
}

fn config(root: &Path) -> Config {
    Config {
        provisioner_name: "fuseim.pri/ifs".into(),
        nfs_server: "nfs.example.internal".into(),
        nfs_path: "/srv/nfs/k8s".into(),
        nfs_root: root.to_path_buf(),
        enable_leader_election: true,
        lease_namespace: Some("kube-persist".into()),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
    }
}

fn tuning() -> Tuning {
    Tuning {
        probe_interval: Duration::from_millis(50),
        leader: LeaderTiming {
            retry_period: Duration::from_millis(100),
            ..LeaderTiming::default()
        },
        ..Tuning::default()
    }
}

/// The admin routes as `kube-persist provisioner` serves them.
fn admin_router(readiness: Readiness, registry: Arc<Registry>) -> axum::Router {
    admin::router(AdminState::new(registry, move || readiness.reason()))
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..200 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn provisions_a_pending_claim_end_to_end_and_releases_the_lease() {
    let root = tempfile::tempdir().unwrap();
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let state = Arc::new(Mutex::new(State::default()));
    tokio::spawn(serve(handle, Arc::clone(&state)));

    let mut registry = Registry::default();
    let provisioner =
        Provisioner::with_tuning(config(root.path()), client, &mut registry, tuning());
    let readiness = provisioner.readiness();
    let registry = Arc::new(registry);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(provisioner.run(async move {
        let _ = stopped.await;
    }));

    wait_for("readiness", || readiness.is_ready()).await;
    wait_for("the PV", || !state.lock().unwrap().created_pvs.is_empty()).await;
    wait_for("the success event", || {
        state
            .lock()
            .unwrap()
            .events
            .iter()
            .any(|e| e == "ProvisioningSucceeded")
    })
    .await;
    {
        let st = state.lock().unwrap();
        assert_eq!(st.created_pvs.len(), 1);
        assert_eq!(st.created_pvs[0]["metadata"]["name"], PV);
        assert_eq!(st.events[0], "Provisioning");
        let holder = &st.lease.as_ref().unwrap()["spec"]["holderIdentity"];
        assert!(holder.as_str().unwrap().contains('_'), "{holder}");
    }
    assert!(root.path().join(DIR).is_dir());

    // The admin routes.
    let router = admin_router(readiness.clone(), Arc::clone(&registry));
    let get = |uri: &str| {
        Request::builder()
            .uri(uri)
            .body(axum::body::Body::empty())
            .unwrap()
    };
    let r = router.clone().oneshot(get("/readyz")).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = router.clone().oneshot(get("/livez")).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = router.clone().oneshot(get("/metrics")).await.unwrap();
    let body = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
    let text = String::from_utf8(body.to_vec()).unwrap();
    assert!(
        text.contains("kube_persist_provisioner_operations_total{operation=\"provision\",result=\"success\"} 1"),
        "{text}"
    );
    assert!(text.contains("kube_persist_provisioner_leader 1"), "{text}");
    assert!(
        text.contains(&format!(
            "kube_persist_volume_requested_bytes{{pv=\"{PV}\"}} 107374182400"
        )),
        "{text}"
    );

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let st = state.lock().unwrap();
    let lease = st.lease.as_ref().unwrap();
    assert!(
        lease["spec"]
            .get("holderIdentity")
            .is_none_or(Value::is_null),
        "not released: {lease}"
    );
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
    assert!(out.contains("kube_persist_provisioner_leader 0"), "{out}");
}

#[tokio::test]
async fn readiness_fails_on_an_unusable_mount() {
    let base = tempfile::tempdir().unwrap();
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let state = Arc::new(Mutex::new(State::default()));
    tokio::spawn(serve(handle, Arc::clone(&state)));
    let mut registry = Registry::default();
    let provisioner = Provisioner::with_tuning(
        config(&base.path().join("not-mounted")),
        client,
        &mut registry,
        tuning(),
    );
    let readiness = provisioner.readiness();
    assert!(!readiness.is_ready(), "ready before any probe");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(provisioner.run(async move {
        let _ = stopped.await;
    }));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!readiness.is_ready());
    assert!(
        readiness.reason().unwrap().contains("not-mounted"),
        "{:?}",
        readiness.reason()
    );
    let router = admin_router(readiness, Arc::new(registry));
    let r = router
        .oneshot(
            Request::builder()
                .uri("/readyz")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

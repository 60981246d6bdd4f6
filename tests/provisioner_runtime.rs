//! The whole provisioner (`Provisioner::run`: leader locks, reflectors, both controllers, probe)
//! against a small fake API server that answers by path, with a temp directory as the mount.
//! The fake server refuses any request `rbac::API_ACCESS` does not cover, and answers 403 for
//! the resources a test forbids (as upstream's RBAC forbids Leases and events.k8s.io).
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
    provisioner::{Config, Liveness, Provisioner, Readiness, Tuning, leader::LeaderTiming},
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
    /// The Endpoints lock, as stored.
    endpoints: Option<Value>,
    endpoints_rv: u64,
    /// While set, another holder renews the Endpoints lock: each read shows a newer renewTime.
    renewing: Option<String>,
    renewals: i64,
    /// When the other holder last renewed.
    last_renewal: Option<std::time::Instant>,
    /// While set, another holder renews the Lease too (a replica holding both locks).
    renewing_lease: Option<String>,
    /// Resources answered with 403: `leases`, `endpoints`, `events.k8s.io`, `events`.
    forbidden: Vec<&'static str>,
    created_pvs: Vec<Value>,
    /// Reasons of events.k8s.io Events.
    events: Vec<String>,
    /// Reasons of core/v1 Events.
    core_events: Vec<String>,
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

const LEADER: &str = "control-plane.alpha.kubernetes.io/leader";

fn not_found() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404})
}

/// The record in the Endpoints lock's annotation.
fn endpoints_record(st: &State) -> Option<Value> {
    let text = st.endpoints.as_ref()?["metadata"]["annotations"][LEADER].as_str()?;
    serde_json::from_str(text).ok()
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
        let resource = if path.starts_with("/apis/events.k8s.io/") {
            "events.k8s.io"
        } else if path.contains("/leases") {
            "leases"
        } else if path.contains("/endpoints") {
            "endpoints"
        } else if path.starts_with("/api/v1/namespaces/") && path.contains("/events") {
            "events"
        } else {
            ""
        };
        if st.forbidden.contains(&resource) {
            respond(
                send,
                StatusCode::FORBIDDEN,
                &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                        "reason": "Forbidden", "code": 403,
                        "message": format!("{resource} is forbidden")}),
            );
            continue;
        }
        if let Some(holder) = st.renewing.clone() {
            st.renewals += 1;
            st.last_renewal = Some(std::time::Instant::now());
            let renewed = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(st.renewals);
            let seconds = if st.renewing_lease.is_some() { 2 } else { 1 };
            let Some(ep) = st.endpoints.as_mut() else {
                panic!("renewing an Endpoints lock that does not exist")
            };
            ep["metadata"]["annotations"][LEADER] = json!(
                json!({"holderIdentity": holder, "leaseDurationSeconds": seconds,
                       "acquireTime": "2026-03-01T10:00:00Z",
                       "renewTime": renewed.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
                       "leaderTransitions": 2})
                .to_string()
            );
        }
        if let Some(holder) = st.renewing_lease.clone() {
            st.renewals += 1;
            st.last_renewal = Some(std::time::Instant::now());
            let renewed = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(st.renewals);
            st.lease_rv += 1;
            st.lease = Some(json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": "fuseim.pri-ifs", "namespace": "kube-persist",
                             "resourceVersion": st.lease_rv.to_string()},
                "spec": {"holderIdentity": holder, "leaseDurationSeconds": 2,
                         "renewTime": renewed.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
                         "leaseTransitions": 0}
            }));
        }
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
            (Method::POST, p) if p.starts_with("/api/v1/namespaces/") && p.ends_with("/events") => {
                st.core_events
                    .push(body["reason"].as_str().unwrap_or_default().to_owned());
                respond(send, StatusCode::CREATED, &body);
            }
            (Method::GET, "/api/v1/namespaces/kube-persist/endpoints/fuseim.pri-ifs") => {
                match st.endpoints.clone() {
                    Some(ep) => respond(send, StatusCode::OK, &ep),
                    None => respond(send, StatusCode::NOT_FOUND, &not_found()),
                }
            }
            (Method::POST, "/api/v1/namespaces/kube-persist/endpoints")
            | (Method::PUT, "/api/v1/namespaces/kube-persist/endpoints/fuseim.pri-ifs") => {
                let stored_rv = st
                    .endpoints
                    .as_ref()
                    .map(|e| e["metadata"]["resourceVersion"].clone());
                if parts.method == Method::PUT
                    && stored_rv.as_ref() != Some(&body["metadata"]["resourceVersion"])
                {
                    respond(
                        send,
                        StatusCode::CONFLICT,
                        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409}),
                    );
                    continue;
                }
                st.endpoints_rv += 1;
                let mut ep = body.clone();
                ep["metadata"]["resourceVersion"] = json!(st.endpoints_rv.to_string());
                st.endpoints = Some(ep.clone());
                let status = if parts.method == Method::POST {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                };
                respond(send, status, &ep);
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

/// The admin routes with `/livez` answered by the provisioner's liveness.
fn admin_router_live(
    readiness: Readiness,
    liveness: Liveness,
    registry: Arc<Registry>,
) -> axum::Router {
    admin::router(
        AdminState::new(registry, move || readiness.reason())
            .with_liveness(move || liveness.reason()),
    )
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
        // Both locks it may write, under one identity.
        let record = endpoints_record(&st).unwrap();
        assert_eq!(&record["holderIdentity"], holder, "{record}");
        assert_eq!(record["leaseDurationSeconds"], 15);
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
    let record = endpoints_record(&st).unwrap();
    assert_eq!(record["holderIdentity"], "", "not released: {record}");
    assert_eq!(record["leaseDurationSeconds"], 1);
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
    let liveness = provisioner.liveness();
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
    let router = admin_router_live(readiness, liveness, Arc::new(registry));
    let get = |uri: &str| {
        Request::builder()
            .uri(uri)
            .body(axum::body::Body::empty())
            .unwrap()
    };
    let r = router.clone().oneshot(get("/readyz")).await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    // Unready for the mount, yet live: a restart would not bring the mount back.
    let r = router.oneshot(get("/livez")).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// A provisioner run against the fake API server, stopped on drop of `stop`.
struct Run {
    readiness: Readiness,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Run {
    fn start(root: &Path, state: &Arc<Mutex<State>>, tuning: Tuning) -> Run {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "default");
        tokio::spawn(serve(handle, Arc::clone(state)));
        let mut registry = Registry::default();
        let provisioner = Provisioner::with_tuning(config(root), client, &mut registry, tuning);
        let readiness = provisioner.readiness();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(provisioner.run(async move {
            let _ = stopped.await;
        }));
        Run {
            readiness,
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .unwrap()
            .unwrap()
    }
}

/// Short leader timings, for hand-overs within a test.
fn quick() -> Tuning {
    Tuning {
        probe_interval: Duration::from_millis(50),
        fs_timeout: Duration::from_millis(300),
        leader: LeaderTiming {
            lease_duration: Duration::from_secs(1),
            renew_deadline: Duration::from_millis(700),
            retry_period: Duration::from_millis(100),
            call_timeout: Duration::from_secs(2),
        },
        ..Tuning::default()
    }
}

/// Under nfs-subdir-external-provisioner's RBAC (no Leases, no events.k8s.io), the provisioner
/// elects on upstream's Endpoints lock, in client-go's record format, provisions, and publishes
/// core/v1 Events.
#[tokio::test]
async fn provisions_under_upstreams_rbac_on_the_endpoints_lock_with_core_events() {
    let root = tempfile::tempdir().unwrap();
    let state = Arc::new(Mutex::new(State {
        forbidden: vec!["leases", "events.k8s.io"],
        ..State::default()
    }));
    let run = Run::start(root.path(), &state, tuning());
    wait_for("the PV", || !state.lock().unwrap().created_pvs.is_empty()).await;
    wait_for("the success event", || {
        state
            .lock()
            .unwrap()
            .core_events
            .iter()
            .any(|e| e == "ProvisioningSucceeded")
    })
    .await;
    {
        let st = state.lock().unwrap();
        assert!(st.lease.is_none());
        assert!(st.events.is_empty());
        let ep = st.endpoints.as_ref().unwrap();
        assert_eq!(ep["metadata"]["name"], "fuseim.pri-ifs");
        let text = ep["metadata"]["annotations"][LEADER].as_str().unwrap();
        let record: Value = serde_json::from_str(text).unwrap();
        let keys: Vec<&String> = record.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            [
                "holderIdentity",
                "leaseDurationSeconds",
                "acquireTime",
                "renewTime",
                "leaderTransitions"
            ],
            "{text}"
        );
        let renew = record["renewTime"].as_str().unwrap();
        assert!(
            renew.len() == 20 && renew.ends_with('Z'),
            "whole seconds, UTC: {renew}"
        );
        renew.parse::<jiff::Timestamp>().unwrap();
    }
    assert!(root.path().join(DIR).is_dir());
    run.stop().await.unwrap();
}

/// With every lock forbidden, the provisioner stops with one error that names both and what to
/// grant, instead of running on and provisioning nothing.
#[tokio::test]
async fn no_permitted_lock_stops_with_one_clear_error() {
    let root = tempfile::tempdir().unwrap();
    let state = Arc::new(Mutex::new(State {
        forbidden: vec!["leases", "endpoints"],
        ..State::default()
    }));
    let run = Run::start(root.path(), &state, quick());
    let ended = tokio::time::timeout(Duration::from_secs(10), run.task)
        .await
        .expect("still running with no lock it may take")
        .unwrap();
    let err = format!("{:#}", ended.unwrap_err());
    assert!(err.contains("cannot elect a leader"), "{err}");
    assert!(err.contains("coordination.k8s.io leases"), "{err}");
    assert!(err.contains("core endpoints"), "{err}");
    assert!(err.contains("namespace kube-persist"), "{err}");
    assert!(state.lock().unwrap().created_pvs.is_empty());
}

/// A rolling swap from nfs-subdir-external-provisioner: its pod holds the Endpoints lock and
/// renews it. kube-persist (with both locks permitted) takes the free Lease but does not lead,
/// so it provisions nothing, until the old pod stops renewing and its record expires.
#[tokio::test]
async fn waits_for_an_old_holder_of_the_endpoints_lock_to_expire() {
    let root = tempfile::tempdir().unwrap();
    let old = "nfs-client-provisioner-5d8f_0b1c2d3e-aaaa-bbbb-cccc-0123456789ab";
    let state = Arc::new(Mutex::new(State {
        endpoints: Some(json!({
            "apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": "fuseim.pri-ifs", "namespace": "kube-persist",
                         "resourceVersion": "1", "annotations": {}}
        })),
        endpoints_rv: 1,
        renewing: Some(old.to_owned()),
        ..State::default()
    }));
    let run = Run::start(root.path(), &state, quick());
    wait_for("readiness", || run.readiness.is_ready()).await;
    wait_for("the Lease taken", || state.lock().unwrap().lease.is_some()).await;
    // Three lease durations of the old holder renewing: nothing happens.
    tokio::time::sleep(Duration::from_secs(3)).await;
    {
        let st = state.lock().unwrap();
        assert!(
            st.created_pvs.is_empty(),
            "provisioned beside the old leader"
        );
        assert_eq!(endpoints_record(&st).unwrap()["holderIdentity"], old);
    }
    state.lock().unwrap().renewing = None;
    let last_renewal = state.lock().unwrap().last_renewal.unwrap();
    for _ in 0..200 {
        if !state.lock().unwrap().created_pvs.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let took = last_renewal.elapsed();
    {
        let st = state.lock().unwrap();
        assert_eq!(
            st.created_pvs.len(),
            1,
            "never provisioned after the hand-over"
        );
        assert!(
            took >= Duration::from_secs(1),
            "provisioned {took:?} after the old holder's last renewal, within its lease duration"
        );
        let record = endpoints_record(&st).unwrap();
        assert_ne!(record["holderIdentity"], old);
        assert_eq!(record["leaderTransitions"], 3, "{record}");
        assert_eq!(
            record["holderIdentity"],
            st.lease.as_ref().unwrap()["spec"]["holderIdentity"]
        );
    }
    run.stop().await.unwrap();
}

/// A mount that hangs (the probe's write blocks, here on a FIFO nobody reads) gives leadership
/// up: both locks are released so a healthy replica can take over. When the mount answers
/// again the replica campaigns again and takes them back.
#[tokio::test]
async fn a_hung_mount_gives_leadership_up_until_it_answers_again() {
    let root = tempfile::tempdir().unwrap();
    let state = Arc::new(Mutex::new(State::default()));
    let run = Run::start(root.path(), &state, quick());
    let holder = |st: &State| -> Option<String> {
        st.lease.as_ref()?["spec"]["holderIdentity"]
            .as_str()
            .map(str::to_owned)
            .filter(|h| !h.is_empty())
    };
    wait_for("leadership", || holder(&state.lock().unwrap()).is_some()).await;
    let me = holder(&state.lock().unwrap()).unwrap();
    assert!(run.readiness.is_ready());

    // The probe writes `.kube-persist-probe-<identity>`: make that a FIFO, so its open hangs.
    let fifo = root.path().join(format!(".kube-persist-probe-{me}"));
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    wait_for("the locks released", || {
        let st = state.lock().unwrap();
        holder(&st).is_none() && endpoints_record(&st).unwrap()["holderIdentity"] == ""
    })
    .await;
    assert!(!run.readiness.is_ready());
    // It stays out while the mount hangs.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(holder(&state.lock().unwrap()).is_none());

    // The mount answers again: read the FIFO so the stuck writes finish and remove it.
    let reader = std::thread::spawn(move || {
        use std::io::Read as _;
        let mut f = std::fs::File::open(&fifo).unwrap();
        let mut sink = Vec::new();
        let _ = f.read_to_end(&mut sink);
    });
    wait_for("leadership again", || {
        holder(&state.lock().unwrap()).as_deref() == Some(me.as_str())
    })
    .await;
    assert!(run.readiness.is_ready());
    reader.join().unwrap();
    run.stop().await.unwrap();
}

/// Another replica holds both locks and dies: the standby, which stopped at the Lease each
/// round, has still been reading the Endpoints lock, so both expire for it together and it
/// takes over after one lease duration, not one per lock.
#[tokio::test]
async fn a_dead_holder_of_both_locks_is_replaced_after_one_lease_duration() {
    let root = tempfile::tempdir().unwrap();
    let peer = "kube-persist-7f9c_00000000deadbeef";
    let state = Arc::new(Mutex::new(State {
        endpoints: Some(json!({
            "apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": "fuseim.pri-ifs", "namespace": "kube-persist",
                         "resourceVersion": "1", "annotations": {}}
        })),
        endpoints_rv: 1,
        renewing: Some(peer.to_owned()),
        renewing_lease: Some(peer.to_owned()),
        ..State::default()
    }));
    let mut tuning = quick();
    tuning.leader.lease_duration = Duration::from_secs(2);
    tuning.leader.renew_deadline = Duration::from_millis(1400);
    let run = Run::start(root.path(), &state, tuning);
    wait_for("readiness", || run.readiness.is_ready()).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(state.lock().unwrap().created_pvs.is_empty());
    let last_renewal = {
        let mut st = state.lock().unwrap();
        st.renewing = None;
        st.renewing_lease = None;
        st.last_renewal.unwrap()
    };
    for _ in 0..400 {
        if !state.lock().unwrap().created_pvs.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let took = last_renewal.elapsed();
    assert_eq!(
        state.lock().unwrap().created_pvs.len(),
        1,
        "never took over"
    );
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_millis(3500),
        "took over {took:?} after the peer's last renewal (lease 2 s)"
    );
    run.stop().await.unwrap();
}

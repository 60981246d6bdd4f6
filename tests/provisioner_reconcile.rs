//! Reconcile tests without a cluster: a mocked API server (tower-test, the kube-rs
//! `ApiServerVerifier` pattern) asserts every request in order (method, path, body), answers as
//! the API server would (including 404 and 409), and refuses any request `rbac::API_ACCESS`
//! does not cover. A temp directory stands in for the NFS mount.
// Helpers outside `#[test]` functions are test code too (clippy.toml allows unwrap in tests).
#![allow(clippy::unwrap_used)]

use std::{
    collections::BTreeMap,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::Path,
    sync::Arc,
    time::Duration,
};

use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::{
    core::v1::{PersistentVolume, PersistentVolumeClaim},
    storage::v1::StorageClass,
};
use kube::{
    Client,
    client::Body,
    runtime::{
        reflector::{Lookup, store::Writer},
        watcher,
    },
};
use kube_persist::{
    provisioner::{
        Config,
        events::Publisher,
        leader::{LeaderHandle, LeaderTiming, LeaseElector},
        metrics::{Metrics, OpResult, Operation},
        reconcile::{self, Context, RetryBackoff},
        volume::VolumeRoot,
    },
    rbac,
};
use serde_json::{Value, json};
use tower_test::mock::{Handle, SendResponse};

const NAME: &str = "fuseim.pri/ifs";
const PV: &str = "pvc-7d3c1f0e-5b8a-4c2d-9e6f-0a1b2c3d4e5f";
const DIR: &str =
    "monitoring-prometheus-k8s-db-prometheus-k8s-0-pvc-7d3c1f0e-5b8a-4c2d-9e6f-0a1b2c3d4e5f";

// ----- the mock API server ----------------------------------------------------------------

type ApiHandle = Handle<Request<Body>, Response<Body>>;

/// Asserts the requests the code under test makes, one at a time.
struct Verifier {
    handle: ApiHandle,
}

/// One request received.
struct Call {
    method: Method,
    path: String,
    body: Value,
    send: SendResponse<Response<Body>>,
}

/// The RBAC verb, group and resource a request needs.
fn rbac_of(method: &Method, path: &str, query: &str) -> (String, String, &'static str) {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (group, mut rest) = match segs.first() {
        Some(&"api") => (String::new(), &segs[2..]),
        Some(&"apis") => (segs[1].to_owned(), &segs[3..]),
        _ => panic!("not an API path: {path}"),
    };
    if rest.first() == Some(&"namespaces") && rest.len() >= 3 {
        rest = &rest[2..];
    }
    let resource = rest[0].to_owned();
    let named = rest.len() > 1;
    let verb = match *method {
        Method::GET if query.split('&').any(|p| p == "watch=true") => "watch",
        Method::GET if named => "get",
        Method::GET => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if named => "delete",
        Method::DELETE => "deletecollection",
        _ => panic!("unexpected method {method}"),
    };
    (group, resource, verb)
}

impl Verifier {
    async fn next(&mut self) -> Call {
        let (request, send) =
            tokio::time::timeout(Duration::from_secs(5), self.handle.next_request())
                .await
                .expect("timed out waiting for a request")
                .expect("client dropped");
        let (parts, body) = request.into_parts();
        let bytes = body.collect_bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        let path = parts.uri.path().to_owned();
        let query = parts.uri.query().unwrap_or_default().to_owned();
        let (group, resource, verb) = rbac_of(&parts.method, &path, &query);
        assert!(!query.contains("dryRun"), "{path}?{query}");
        assert!(
            rbac::is_allowed(&group, &resource, verb),
            "request {} {path} needs `{verb}` on {group}/{resource}, which rbac::API_ACCESS does not grant",
            parts.method
        );
        Call {
            method: parts.method,
            path,
            body,
            send,
        }
    }

    async fn expect(&mut self, method: Method, path: &str) -> Call {
        let call = self.next().await;
        assert_eq!(
            (&call.method, call.path.as_str()),
            (&method, path),
            "body: {}",
            call.body
        );
        call
    }

    /// Expects an event about `regarding` with `reason`: a create, or, when the same event
    /// repeats within the recorder's window, a merge patch of its series. Answers like the API
    /// server and returns the event.
    async fn expect_event(&mut self, namespace: &str, reason: &str, regarding: &str) -> Value {
        let call = self.next().await;
        let events = format!("/apis/events.k8s.io/v1/namespaces/{namespace}/events");
        match call.method {
            Method::POST => assert_eq!(call.path, events, "{}", call.body),
            Method::PATCH => {
                assert!(
                    call.path.starts_with(&format!("{events}/")),
                    "{} {}",
                    call.path,
                    call.body
                );
                assert!(
                    call.body["series"]["count"].as_i64().unwrap() >= 2,
                    "{}",
                    call.body
                );
            }
            ref m => panic!("expected an event, got {m} {} {}", call.path, call.body),
        }
        let event = call.body.clone();
        assert_eq!(event["reason"], reason, "{event}");
        assert_eq!(event["regarding"]["name"], regarding, "{event}");
        assert_eq!(event["reportingController"], NAME, "{event}");
        assert_eq!(event["reportingInstance"], "test-pod", "{event}");
        let expected_type = if reason.contains("Failed") || reason == "VolumeDataKept" {
            "Warning"
        } else {
            "Normal"
        };
        assert_eq!(event["type"], expected_type, "{event}");
        let status = if call.method == Method::POST {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        call.respond(status, event.clone());
        event
    }

    /// Asserts nothing else is asked.
    async fn idle(&mut self) {
        if let Ok(Some((req, _))) =
            tokio::time::timeout(Duration::from_millis(200), self.handle.next_request()).await
        {
            panic!("unexpected request {} {}", req.method(), req.uri());
        }
    }
}

impl Call {
    fn respond(self, status: StatusCode, body: Value) {
        let response = Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap();
        self.send.send_response(response);
    }

    fn respond_status(self, code: u16, reason: &str, message: &str) {
        self.respond(
            StatusCode::from_u16(code).unwrap(),
            json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "message": message, "reason": reason, "code": code
            }),
        );
    }
}

fn mock() -> (Client, Verifier) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), Verifier { handle })
}

// ----- fixtures ---------------------------------------------------------------------------

fn fixture<T: serde::de::DeserializeOwned>(name: &str) -> T {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/provisioner")
        .join(name);
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

fn claim() -> PersistentVolumeClaim {
    fixture("pvc-prometheus.json")
}

fn class(params: &[(&str, &str)]) -> StorageClass {
    let mut c: StorageClass = fixture("storageclass.json");
    let map = c.parameters.get_or_insert_with(BTreeMap::new);
    for (k, v) in params {
        map.insert((*k).to_owned(), (*v).to_owned());
    }
    c
}

fn released() -> PersistentVolume {
    fixture("pv-released.json")
}

fn config(root: &Path) -> Config {
    Config {
        provisioner_name: NAME.into(),
        nfs_server: "nfs.example.internal".into(),
        nfs_path: "/srv/nfs/k8s".into(),
        nfs_root: root.to_path_buf(),
        enable_leader_election: true,
        lease_namespace: Some("kube-persist".into()),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
    }
}

fn store<K>(objects: Vec<K>) -> kube::runtime::reflector::Store<K>
where
    K: Lookup + Clone + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let mut writer = Writer::<K>::default();
    writer.apply_watcher_event(&watcher::Event::Init);
    for o in objects {
        writer.apply_watcher_event(&watcher::Event::InitApply(o));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    writer.as_reader()
}

fn context(
    client: &Client,
    root: &Path,
    classes: Vec<StorageClass>,
    volumes: Vec<PersistentVolume>,
    leader: LeaderHandle,
) -> Arc<Context> {
    Arc::new(Context {
        client: client.clone(),
        config: config(root),
        classes: store(classes),
        volumes: store(volumes),
        fs: VolumeRoot::new(root.to_path_buf(), Duration::from_secs(5), ".probe"),
        leader,
        metrics: Metrics::unregistered(),
        recorder: Publisher::new(client.clone(), reconcile::reporter(NAME, "test-pod")),
        backoff: RetryBackoff::default(),
        sync_timeout: Duration::from_secs(2),
        sync_gate: Default::default(),
    })
}

/// The PV as the API server returns it after create.
fn created(mut pv: Value) -> Value {
    pv["metadata"]["uid"] = json!("3e9a8b7c-6d5e-4f3a-8b2c-1d0e9f8a7b6c");
    pv["metadata"]["resourceVersion"] = json!("50000");
    pv["status"] = json!({"phase": "Pending"});
    pv
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

// ----- provisioning -----------------------------------------------------------------------

#[tokio::test]
async fn provision_creates_directory_then_pv() {
    let root = tempfile::tempdir().unwrap();
    let (client, mut api) = mock();
    let ctx = context(
        &client,
        root.path(),
        vec![class(&[])],
        vec![],
        LeaderHandle::always(),
    );
    let task = tokio::spawn(reconcile::reconcile_claim(Arc::new(claim()), ctx.clone()));

    let event = api
        .expect_event(
            "monitoring",
            "Provisioning",
            "prometheus-k8s-db-prometheus-k8s-0",
        )
        .await;
    assert_eq!(
        event["note"],
        "External provisioner is provisioning volume for claim \"monitoring/prometheus-k8s-db-prometheus-k8s-0\""
    );
    let call = api.expect(Method::POST, "/api/v1/persistentvolumes").await;
    let expected: Value = fixture("pv-expected.json");
    assert_eq!(call.body, expected);
    // The directory exists before the PV is created.
    assert!(root.path().join(DIR).is_dir());
    let body = created(call.body.clone());
    call.respond(StatusCode::CREATED, body);
    let event = api
        .expect_event(
            "monitoring",
            "ProvisioningSucceeded",
            "prometheus-k8s-db-prometheus-k8s-0",
        )
        .await;
    assert_eq!(
        event["note"],
        format!("Successfully provisioned volume {PV}")
    );

    task.await.unwrap().unwrap();
    api.idle().await;
    assert_eq!(mode_of(&root.path().join(DIR)), 0o777);
    assert_eq!(
        ctx.metrics
            .operations(Operation::Provision, OpResult::Success),
        1
    );
    assert_eq!(ctx.metrics.requested(PV), Some(100 << 30));
}

#[tokio::test]
async fn directory_gets_the_requested_mode_and_owner() {
    let root = tempfile::tempdir().unwrap();
    let (client, mut api) = mock();
    let params = [
        ("mode", "2750"),
        ("uid", "1234"),
        ("gid", "5678"),
        ("pathPattern", "${.PVC.namespace}/${.PVC.labels.prometheus}"),
    ];
    let ctx = context(
        &client,
        root.path(),
        vec![class(&params)],
        vec![],
        LeaderHandle::always(),
    );
    let task = tokio::spawn(reconcile::reconcile_claim(Arc::new(claim()), ctx));
    api.expect_event(
        "monitoring",
        "Provisioning",
        "prometheus-k8s-db-prometheus-k8s-0",
    )
    .await;
    let call = api.expect(Method::POST, "/api/v1/persistentvolumes").await;
    assert_eq!(
        call.body["spec"]["nfs"]["path"],
        "/srv/nfs/k8s/monitoring/k8s"
    );
    let body = created(call.body.clone());
    call.respond(StatusCode::CREATED, body);
    api.expect_event(
        "monitoring",
        "ProvisioningSucceeded",
        "prometheus-k8s-db-prometheus-k8s-0",
    )
    .await;
    task.await.unwrap().unwrap();

    let dir = root.path().join("monitoring/k8s");
    let meta = std::fs::metadata(&dir).unwrap();
    assert_eq!(mode_of(&dir), 0o2750);
    if nix_is_root() {
        assert_eq!((meta.uid(), meta.gid()), (1234, 5678));
    }
    // Only the leaf is chowned; the parent was created but left to us.
    assert!(root.path().join("monitoring").is_dir());
}

fn nix_is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

#[tokio::test]
async fn already_provisioned_makes_no_request() {
    let root = tempfile::tempdir().unwrap();
    let (client, mut api) = mock();
    let mut pv = released();
    pv.status = None;
    let ctx = context(
        &client,
        root.path(),
        vec![class(&[])],
        vec![pv],
        LeaderHandle::always(),
    );
    reconcile::reconcile_claim(Arc::new(claim()), ctx)
        .await
        .unwrap();
    api.idle().await;
    assert!(!root.path().join(DIR).exists());
}

#[tokio::test]
async fn restart_between_mkdir_and_pv_create_converges() {
    let root = tempfile::tempdir().unwrap();
    // A previous run created the directory (and the pod may even have written to it).
    std::fs::create_dir(root.path().join(DIR)).unwrap();
    std::fs::write(root.path().join(DIR).join("wal"), b"x").unwrap();
    let (client, mut api) = mock();
    // The cache has not seen the PV (or there is none yet): the create must be safe either way.
    let ctx = context(
        &client,
        root.path(),
        vec![class(&[])],
        vec![],
        LeaderHandle::always(),
    );

    let task = tokio::spawn(reconcile::reconcile_claim(Arc::new(claim()), ctx.clone()));
    api.expect_event(
        "monitoring",
        "Provisioning",
        "prometheus-k8s-db-prometheus-k8s-0",
    )
    .await;
    let call = api.expect(Method::POST, "/api/v1/persistentvolumes").await;
    assert_eq!(call.body["metadata"]["name"], PV);
    call.respond_status(
        409,
        "AlreadyExists",
        &format!("persistentvolumes \"{PV}\" already exists"),
    );
    api.expect_event(
        "monitoring",
        "ProvisioningSucceeded",
        "prometheus-k8s-db-prometheus-k8s-0",
    )
    .await;
    task.await.unwrap().unwrap();
    api.idle().await;
    assert!(root.path().join(DIR).join("wal").exists());
    assert_eq!(
        std::fs::read_dir(root.path()).unwrap().count(),
        1,
        "no second directory"
    );

    // Second restart, PV not yet in the cache, no 409 this time: same directory, same PV body.
    let task = tokio::spawn(reconcile::reconcile_claim(Arc::new(claim()), ctx));
    api.expect_event(
        "monitoring",
        "Provisioning",
        "prometheus-k8s-db-prometheus-k8s-0",
    )
    .await;
    let call = api.expect(Method::POST, "/api/v1/persistentvolumes").await;
    assert_eq!(call.body, fixture::<Value>("pv-expected.json"));
    let body = created(call.body.clone());
    call.respond(StatusCode::CREATED, body);
    api.expect_event(
        "monitoring",
        "ProvisioningSucceeded",
        "prometheus-k8s-db-prometheus-k8s-0",
    )
    .await;
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn rejected_pv_rolls_back_the_directory_we_created() {
    let root = tempfile::tempdir().unwrap();
    let (client, mut api) = mock();
    let ctx = context(
        &client,
        root.path(),
        vec![class(&[])],
        vec![],
        LeaderHandle::always(),
    );
    let task = tokio::spawn(reconcile::reconcile_claim(Arc::new(claim()), ctx.clone()));
    api.expect_event(
        "monitoring",
        "Provisioning",
        "prometheus-k8s-db-prometheus-k8s-0",
    )
    .await;
    api.expect(Method::POST, "/api/v1/persistentvolumes")
        .await
        .respond_status(
            422,
            "Invalid",
            "PersistentVolume is invalid: spec.capacity: Required value",
        );
    let event = api
        .expect_event(
            "monitoring",
            "ProvisioningFailed",
            "prometheus-k8s-db-prometheus-k8s-0",
        )
        .await;
    assert!(
        event["note"].as_str().unwrap().contains("spec.capacity"),
        "{event}"
    );
    let err = task.await.unwrap().unwrap_err();
    assert!(err.to_string().contains(PV), "{err}");
    assert!(!root.path().join(DIR).exists(), "directory left behind");
    assert_eq!(ctx.metrics.failures("api_error"), 1);
    // A transient failure keeps the directory for the retry.
    let task = tokio::spawn(reconcile::reconcile_claim(Arc::new(claim()), ctx));
    api.expect_event(
        "monitoring",
        "Provisioning",
        "prometheus-k8s-db-prometheus-k8s-0",
    )
    .await;
    api.expect(Method::POST, "/api/v1/persistentvolumes")
        .await
        .respond_status(500, "InternalError", "etcdserver: request timed out");
    api.expect_event(
        "monitoring",
        "ProvisioningFailed",
        "prometheus-k8s-db-prometheus-k8s-0",
    )
    .await;
    task.await.unwrap().unwrap_err();
    // Any failure takes back the directory made in the attempt: a claim deleted before the
    // retry leaves nothing behind, and the retry makes it again.
    assert!(!root.path().join(DIR).exists(), "directory left behind");
}

#[tokio::test]
async fn a_permanent_failure_is_reported_once_and_retried_slowly() {
    let root = tempfile::tempdir().unwrap();
    let (client, mut api) = mock();
    let mut pvc = claim();
    pvc.spec.as_mut().unwrap().volume_mode = Some("Block".into());
    let pvc = Arc::new(pvc);
    let ctx = context(
        &client,
        root.path(),
        vec![class(&[])],
        vec![],
        LeaderHandle::always(),
    );
    let task = tokio::spawn(reconcile::reconcile_claim(pvc.clone(), ctx.clone()));
    api.expect_event(
        "monitoring",
        "ProvisioningFailed",
        "prometheus-k8s-db-prometheus-k8s-0",
    )
    .await;
    let err = task.await.unwrap().unwrap_err();
    assert!(err.is_permanent(), "{err}");
    assert_eq!(
        reconcile::error_policy(pvc.clone(), &err, ctx.clone()),
        kube::runtime::controller::Action::requeue(RetryBackoff::SLOW_RETRY)
    );
    // The retry fails the same way: no second event.
    for _ in 0..3 {
        let again = reconcile::reconcile_claim(pvc.clone(), ctx.clone()).await;
        assert!(again.is_err());
        api.idle().await;
    }
    assert_eq!(ctx.metrics.failures("block_mode"), 4);
}

#[tokio::test]
async fn a_directory_with_data_and_no_volume_is_not_reused_under_a_pattern_that_mixes_namespaces() {
    let root = tempfile::tempdir().unwrap();
    // `monitoring-prometheus-k8s-db-prometheus-k8s-0` could be namespace `monitoring` or
    // `monitoring-prometheus` (claim `k8s-db-prometheus-k8s-0`): it may be another tenant's.
    let dir = "monitoring-prometheus-k8s-db-prometheus-k8s-0";
    volume_with_data(root.path(), dir);
    std::fs::set_permissions(
        root.path().join(dir),
        std::fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    let (client, mut api) = mock();
    let ctx = context(
        &client,
        root.path(),
        vec![class(&[("pathPattern", "${.PVC.namespace}-${.PVC.name}")])],
        vec![],
        LeaderHandle::always(),
    );
    let task = tokio::spawn(reconcile::reconcile_claim(Arc::new(claim()), ctx.clone()));
    api.expect_event(
        "monitoring",
        "Provisioning",
        "prometheus-k8s-db-prometheus-k8s-0",
    )
    .await;
    let event = api
        .expect_event(
            "monitoring",
            "ProvisioningFailed",
            "prometheus-k8s-db-prometheus-k8s-0",
        )
        .await;
    let note = event["note"].as_str().unwrap();
    assert!(note.contains("not empty") && note.contains(dir), "{note}");
    task.await.unwrap().unwrap_err();
    api.idle().await;
    assert_eq!(
        mode_of(&root.path().join(dir)),
        0o750,
        "its mode was changed"
    );
    assert!(root.path().join(dir).join("chunks/000001").exists());

    // Emptied on the server: provisioned into it.
    std::fs::remove_dir_all(root.path().join(dir).join("chunks")).unwrap();
    let task = tokio::spawn(reconcile::reconcile_claim(Arc::new(claim()), ctx));
    api.expect_event(
        "monitoring",
        "Provisioning",
        "prometheus-k8s-db-prometheus-k8s-0",
    )
    .await;
    let call = api.expect(Method::POST, "/api/v1/persistentvolumes").await;
    assert_eq!(
        call.body["spec"]["nfs"]["path"],
        format!("/srv/nfs/k8s/{dir}")
    );
    let pv = created(call.body.clone());
    call.respond(StatusCode::CREATED, pv);
    api.expect_event(
        "monitoring",
        "ProvisioningSucceeded",
        "prometheus-k8s-db-prometheus-k8s-0",
    )
    .await;
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_claim_deleted_before_its_volume_takes_its_empty_directory_back() {
    let root = tempfile::tempdir().unwrap();
    let (client, mut api) = mock();
    let ctx = context(
        &client,
        root.path(),
        vec![class(&[])],
        vec![],
        LeaderHandle::always(),
    );
    let mut deleting = claim();
    deleting.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            "2025-03-02T08:00:00Z".parse().unwrap(),
        ));
    // A restart between the directory and the PV left it empty.
    std::fs::create_dir(root.path().join(DIR)).unwrap();
    reconcile::reconcile_claim(Arc::new(deleting.clone()), ctx.clone())
        .await
        .unwrap();
    assert!(
        !root.path().join(DIR).exists(),
        "empty directory left behind"
    );
    // Someone put data in it: it stays.
    volume_with_data(root.path(), DIR);
    reconcile::reconcile_claim(Arc::new(deleting), ctx)
        .await
        .unwrap();
    assert!(root.path().join(DIR).join("chunks/000001").exists());
    api.idle().await;
}

#[tokio::test]
async fn unsupported_claims_fail_with_a_clear_event() {
    for (what, patch, message) in [
        (
            "selector",
            json!({"spec": {"selector": {"matchLabels": {"a": "b"}}}}),
            "claim Selector is not supported",
        ),
        (
            "block",
            json!({"spec": {"volumeMode": "Block"}}),
            "volumeMode Block is not supported",
        ),
        (
            "traversal",
            json!({"metadata": {"annotations": {"nfs.io/storage-path": "../../etc"}}}),
            "`..` may not appear",
        ),
    ] {
        let root = tempfile::tempdir().unwrap();
        let (client, mut api) = mock();
        let class = class(&[(
            "pathPattern",
            "${.PVC.namespace}/${.PVC.annotations.nfs.io/storage-path}",
        )]);
        let mut pvc = serde_json::to_value(claim()).unwrap();
        json_patch::merge(
            &mut pvc,
            &json!({"metadata": {"annotations": {"nfs.io/storage-path": "tsdb"}}}),
        );
        json_patch::merge(&mut pvc, &patch);
        let pvc: PersistentVolumeClaim = serde_json::from_value(pvc).unwrap();
        let ctx = context(
            &client,
            root.path(),
            vec![class],
            vec![],
            LeaderHandle::always(),
        );
        let task = tokio::spawn(reconcile::reconcile_claim(Arc::new(pvc), ctx.clone()));
        let event = api
            .expect_event(
                "monitoring",
                "ProvisioningFailed",
                "prometheus-k8s-db-prometheus-k8s-0",
            )
            .await;
        let note = event["note"].as_str().unwrap();
        assert!(note.contains(message), "{what}: {note}");
        assert!(note.contains("prometheus-data-db"), "{what}: {note}");
        task.await.unwrap().unwrap_err();
        api.idle().await;
        assert_eq!(
            std::fs::read_dir(root.path()).unwrap().count(),
            0,
            "{what}: touched the root"
        );
        assert_eq!(
            ctx.backoff.attempts("7d3c1f0e-5b8a-4c2d-9e6f-0a1b2c3d4e5f"),
            0
        );
        // The controller retries with exponential backoff.
        let err = reconcile::Error::NotSynced("test");
        let first = reconcile::error_policy(Arc::new(claim()), &err, ctx.clone());
        let second = reconcile::error_policy(Arc::new(claim()), &err, ctx.clone());
        assert_eq!(
            first,
            kube::runtime::controller::Action::requeue(Duration::from_secs(1))
        );
        assert_eq!(
            second,
            kube::runtime::controller::Action::requeue(Duration::from_secs(2))
        );
    }
}

#[tokio::test]
async fn claims_for_other_provisioners_are_ignored() {
    let root = tempfile::tempdir().unwrap();
    let (client, mut api) = mock();
    let mut pvc = claim();
    let ann = pvc.metadata.annotations.as_mut().unwrap();
    ann.insert(
        "volume.kubernetes.io/storage-provisioner".into(),
        "nfs.csi.k8s.io".into(),
    );
    let ctx = context(
        &client,
        root.path(),
        vec![class(&[])],
        vec![],
        LeaderHandle::always(),
    );
    reconcile::reconcile_claim(Arc::new(pvc), ctx)
        .await
        .unwrap();
    api.idle().await;
}

/// Right after a leader change the controllers start with empty caches, and every pending claim
/// is reconciled at once while they fill. All of them must go on when the caches are ready: a
/// reconcile left waiting until its sync timeout delayed the second of two claims by 30 s on a
/// real control plane. Tokio's clock is paused, so the sync timeout costs no real time.
#[tokio::test(start_paused = true)]
async fn concurrent_reconciles_all_wake_when_the_caches_fill() {
    let sync_timeout = Duration::from_secs(30);
    let root = tempfile::tempdir().unwrap();
    let (client, mut api) = mock();
    let mut classes = Writer::<StorageClass>::default();
    let mut volumes = Writer::<PersistentVolume>::default();
    let ctx = Arc::new(Context {
        client: client.clone(),
        config: config(root.path()),
        classes: classes.as_reader(),
        volumes: volumes.as_reader(),
        fs: VolumeRoot::new(root.path().to_path_buf(), Duration::from_secs(5), ".probe"),
        leader: LeaderHandle::always(),
        metrics: Metrics::unregistered(),
        recorder: Publisher::new(client.clone(), reconcile::reporter(NAME, "test-pod")),
        backoff: RetryBackoff::default(),
        sync_timeout,
        sync_gate: Default::default(),
    });
    // Claims of another provisioner: once the caches are ready they are skipped, with no call.
    let waiting: Vec<_> = (0..3)
        .map(|i| {
            let mut pvc = claim();
            pvc.metadata.name = Some(format!("claim-{i}"));
            let ann = pvc.metadata.annotations.as_mut().unwrap();
            ann.insert(
                "volume.kubernetes.io/storage-provisioner".into(),
                "nfs.csi.k8s.io".into(),
            );
            tokio::spawn(reconcile::reconcile_claim(Arc::new(pvc), Arc::clone(&ctx)))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let filled = tokio::time::Instant::now();
    classes.apply_watcher_event(&watcher::Event::Init);
    classes.apply_watcher_event(&watcher::Event::InitDone);
    volumes.apply_watcher_event(&watcher::Event::Init);
    volumes.apply_watcher_event(&watcher::Event::InitDone);
    for (i, task) in waiting.into_iter().enumerate() {
        let result = task.await.unwrap();
        assert!(result.is_ok(), "reconcile {i}: {result:?}");
        assert!(
            filled.elapsed() < sync_timeout / 2,
            "reconcile {i} woke only after {:?}, at its sync timeout",
            filled.elapsed()
        );
    }
    api.idle().await;
}

#[tokio::test]
async fn symlinks_out_of_the_root_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), root.path().join("monitoring")).unwrap();
    let (client, mut api) = mock();
    let ctx = context(
        &client,
        root.path(),
        vec![class(&[("pathPattern", "${.PVC.namespace}/${.PVC.name}")])],
        vec![],
        LeaderHandle::always(),
    );
    let task = tokio::spawn(reconcile::reconcile_claim(Arc::new(claim()), ctx));
    api.expect_event(
        "monitoring",
        "Provisioning",
        "prometheus-k8s-db-prometheus-k8s-0",
    )
    .await;
    let event = api
        .expect_event(
            "monitoring",
            "ProvisioningFailed",
            "prometheus-k8s-db-prometheus-k8s-0",
        )
        .await;
    assert!(
        event["note"].as_str().unwrap().contains("symbolic link"),
        "{event}"
    );
    task.await.unwrap().unwrap_err();
    api.idle().await;
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn missing_mount_fails_with_a_clear_event_and_readiness() {
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("persistentvolumes");
    let (client, mut api) = mock();
    let ctx = context(
        &client,
        &root,
        vec![class(&[])],
        vec![],
        LeaderHandle::always(),
    );
    assert!(ctx.fs.probe().await.is_err());
    assert!(!ctx.fs.health().is_healthy());
    let task = tokio::spawn(reconcile::reconcile_claim(Arc::new(claim()), ctx.clone()));
    api.expect_event(
        "monitoring",
        "Provisioning",
        "prometheus-k8s-db-prometheus-k8s-0",
    )
    .await;
    let event = api
        .expect_event(
            "monitoring",
            "ProvisioningFailed",
            "prometheus-k8s-db-prometheus-k8s-0",
        )
        .await;
    assert!(
        event["note"]
            .as_str()
            .unwrap()
            .contains("persistentvolumes"),
        "{event}"
    );
    task.await.unwrap().unwrap_err();
    api.idle().await;
    assert!(!root.exists(), "the mount point must not be created");
}

// ----- deletion ---------------------------------------------------------------------------

/// Expects the fresh read of the volume that comes before any data is touched, and answers
/// with `pv` (or 404 for `None`).
async fn expect_pv_read(api: &mut Verifier, name: &str, pv: Option<&PersistentVolume>) {
    let call = api
        .expect(Method::GET, &format!("/api/v1/persistentvolumes/{name}"))
        .await;
    match pv {
        Some(pv) => call.respond(StatusCode::OK, serde_json::to_value(pv).unwrap()),
        None => call.respond_status(
            404,
            "NotFound",
            &format!("persistentvolumes \"{name}\" not found"),
        ),
    }
}

async fn expect_pv_delete(api: &mut Verifier, answer: u16) {
    let call = api
        .expect(Method::DELETE, &format!("/api/v1/persistentvolumes/{PV}"))
        .await;
    assert_eq!(
        call.body["preconditions"],
        json!({"uid": "3e9a8b7c-6d5e-4f3a-8b2c-1d0e9f8a7b6c"}),
        "{}",
        call.body
    );
    match answer {
        200 => {
            let mut pv = serde_json::to_value(released()).unwrap();
            pv["metadata"]["deletionTimestamp"] = json!("2025-03-02T08:00:05Z");
            call.respond(StatusCode::OK, pv);
        }
        404 => call.respond_status(
            404,
            "NotFound",
            &format!("persistentvolumes \"{PV}\" not found"),
        ),
        other => call.respond_status(
            other,
            "Conflict",
            "Precondition failed: UID in precondition",
        ),
    }
}

fn volume_with_data(root: &Path, rel: &str) {
    std::fs::create_dir_all(root.join(rel).join("chunks")).unwrap();
    std::fs::write(root.join(rel).join("chunks/000001"), vec![7u8; 4096]).unwrap();
}

#[tokio::test]
async fn delete_archives_and_never_overwrites_an_archive() {
    let root = tempfile::tempdir().unwrap();
    volume_with_data(root.path(), DIR);
    // An archive of the same name from an earlier life of this claim.
    std::fs::create_dir(root.path().join(format!("archived-{DIR}"))).unwrap();
    std::fs::write(root.path().join(format!("archived-{DIR}/old")), b"old").unwrap();
    let (client, mut api) = mock();
    let ctx = context(
        &client,
        root.path(),
        vec![class(&[])],
        vec![released()],
        LeaderHandle::always(),
    );
    let task = tokio::spawn(reconcile::reconcile_volume(
        Arc::new(released()),
        ctx.clone(),
    ));
    expect_pv_read(&mut api, PV, Some(&released())).await;
    expect_pv_delete(&mut api, 200).await;
    task.await.unwrap().unwrap();
    api.idle().await;

    assert!(!root.path().join(DIR).exists());
    assert!(
        root.path().join(format!("archived-{DIR}/old")).exists(),
        "earlier archive overwritten"
    );
    let archives: Vec<String> = std::fs::read_dir(root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(&format!("archived-{DIR}-")))
        .collect();
    assert_eq!(archives.len(), 1, "{archives:?}");
    assert!(
        root.path()
            .join(&archives[0])
            .join("chunks/000001")
            .exists()
    );
    assert_eq!(
        ctx.metrics.operations(Operation::Delete, OpResult::Success),
        1
    );
}

#[tokio::test]
async fn delete_archives_nested_directories_in_place() {
    let root = tempfile::tempdir().unwrap();
    volume_with_data(root.path(), "monitoring/k8s");
    volume_with_data(root.path(), "monitoring/other");
    let mut pv = released();
    pv.spec.as_mut().unwrap().nfs.as_mut().unwrap().path = "/srv/nfs/k8s/monitoring/k8s".into();
    let (client, mut api) = mock();
    let ctx = context(
        &client,
        root.path(),
        vec![class(&[])],
        vec![pv.clone()],
        LeaderHandle::always(),
    );
    let pv_seen = pv.clone();
    let task = tokio::spawn(reconcile::reconcile_volume(Arc::new(pv), ctx));
    expect_pv_read(&mut api, PV, Some(&pv_seen)).await;
    expect_pv_delete(&mut api, 200).await;
    task.await.unwrap().unwrap();
    assert!(
        root.path()
            .join("monitoring/archived-k8s/chunks/000001")
            .exists()
    );
    assert!(root.path().join("monitoring/other/chunks/000001").exists());
    assert!(!root.path().join("archived-k8s").exists());
}

#[tokio::test]
async fn delete_with_on_delete_retain_keeps_the_directory() {
    let root = tempfile::tempdir().unwrap();
    volume_with_data(root.path(), DIR);
    let (client, mut api) = mock();
    let ctx = context(
        &client,
        root.path(),
        vec![class(&[("onDelete", "retain")])],
        vec![released()],
        LeaderHandle::always(),
    );
    let task = tokio::spawn(reconcile::reconcile_volume(Arc::new(released()), ctx));
    expect_pv_read(&mut api, PV, Some(&released())).await;
    expect_pv_delete(&mut api, 200).await;
    task.await.unwrap().unwrap();
    assert!(root.path().join(DIR).join("chunks/000001").exists());
    assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 1);
}

#[tokio::test]
async fn delete_with_on_delete_delete_removes_the_directory() {
    let root = tempfile::tempdir().unwrap();
    volume_with_data(root.path(), DIR);
    // A symlink inside the volume pointing out: removal must not follow it.
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("precious"), b"keep").unwrap();
    std::os::unix::fs::symlink(outside.path(), root.path().join(DIR).join("escape")).unwrap();
    let (client, mut api) = mock();
    let ctx = context(
        &client,
        root.path(),
        vec![class(&[("onDelete", "delete")])],
        vec![released()],
        LeaderHandle::always(),
    );
    let task = tokio::spawn(reconcile::reconcile_volume(Arc::new(released()), ctx));
    // The PV vanished meanwhile (someone else deleted it): 404 is success.
    expect_pv_read(&mut api, PV, Some(&released())).await;
    expect_pv_delete(&mut api, 404).await;
    task.await.unwrap().unwrap();
    assert!(!root.path().join(DIR).exists());
    assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
    assert!(outside.path().join("precious").exists());
}

#[tokio::test]
async fn delete_with_archive_on_delete_false_removes_the_directory() {
    let root = tempfile::tempdir().unwrap();
    volume_with_data(root.path(), DIR);
    let (client, mut api) = mock();
    let ctx = context(
        &client,
        root.path(),
        vec![class(&[("archiveOnDelete", "false")])],
        vec![released()],
        LeaderHandle::always(),
    );
    let task = tokio::spawn(reconcile::reconcile_volume(Arc::new(released()), ctx));
    expect_pv_read(&mut api, PV, Some(&released())).await;
    expect_pv_delete(&mut api, 200).await;
    task.await.unwrap().unwrap();
    assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn delete_with_missing_directory_still_deletes_the_pv() {
    let root = tempfile::tempdir().unwrap();
    let (client, mut api) = mock();
    let ctx = context(
        &client,
        root.path(),
        vec![class(&[])],
        vec![released()],
        LeaderHandle::always(),
    );
    // Restart after the archive, before the PV delete: the directory is already gone.
    let task = tokio::spawn(reconcile::reconcile_volume(
        Arc::new(released()),
        ctx.clone(),
    ));
    expect_pv_read(&mut api, PV, Some(&released())).await;
    // A 409: the precondition failed. Done only because a fresh read shows our PV gone.
    expect_pv_delete(&mut api, 409).await;
    expect_pv_read(&mut api, PV, None).await;
    task.await.unwrap().unwrap();
    api.idle().await;
    assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
    assert_eq!(
        ctx.metrics.operations(Operation::Delete, OpResult::Success),
        1
    );
}

#[tokio::test]
async fn bound_and_foreign_volumes_are_left_alone() {
    let root = tempfile::tempdir().unwrap();
    volume_with_data(root.path(), DIR);
    let (client, mut api) = mock();
    let mut bound = released();
    bound.status.as_mut().unwrap().phase = Some("Bound".into());
    let mut foreign = released();
    foreign.metadata.annotations.as_mut().unwrap().insert(
        "pv.kubernetes.io/provisioned-by".into(),
        "k8s-sigs.io/nfs-subdir-external-provisioner".into(),
    );
    let ctx = context(
        &client,
        root.path(),
        vec![class(&[])],
        vec![],
        LeaderHandle::always(),
    );
    reconcile::reconcile_volume(Arc::new(bound), ctx.clone())
        .await
        .unwrap();
    reconcile::reconcile_volume(Arc::new(foreign), ctx)
        .await
        .unwrap();
    api.idle().await;
    assert!(root.path().join(DIR).exists());
}

#[tokio::test]
async fn volumes_outside_the_export_are_never_touched() {
    let root = tempfile::tempdir().unwrap();
    volume_with_data(root.path(), "etc");
    let mut pv = released();
    pv.spec.as_mut().unwrap().nfs.as_mut().unwrap().path = "/srv/nfs/k8s/../../etc".into();
    let (client, mut api) = mock();
    let ctx = context(
        &client,
        root.path(),
        vec![class(&[("onDelete", "delete")])],
        vec![pv.clone()],
        LeaderHandle::always(),
    );
    let task = tokio::spawn(reconcile::reconcile_volume(Arc::new(pv), ctx));
    // PV events go to the default namespace (cluster-scoped object).
    let event = api.expect_event("default", "VolumeFailedDelete", PV).await;
    assert!(
        event["note"].as_str().unwrap().contains("NFS_PATH"),
        "{event}"
    );
    task.await.unwrap().unwrap_err();
    api.idle().await;
    assert!(root.path().join("etc/chunks/000001").exists());
}

#[tokio::test]
async fn deletion_reads_the_volume_afresh_and_stops_when_it_changed() {
    // The cache says Released; the API server says otherwise now.
    let mut rebound = released();
    rebound.status.as_mut().unwrap().phase = Some("Bound".into());
    let mut recreated = released();
    recreated.metadata.uid = Some("11111111-2222-3333-4444-555555555555".into());
    let mut retained = released();
    retained
        .spec
        .as_mut()
        .unwrap()
        .persistent_volume_reclaim_policy = Some("Retain".into());
    for (what, fresh) in [
        ("gone", None),
        ("bound again", Some(rebound)),
        ("another object of that name", Some(recreated)),
        ("reclaim policy now Retain", Some(retained)),
    ] {
        let root = tempfile::tempdir().unwrap();
        volume_with_data(root.path(), DIR);
        let (client, mut api) = mock();
        let ctx = context(
            &client,
            root.path(),
            vec![class(&[("onDelete", "delete")])],
            vec![released()],
            LeaderHandle::always(),
        );
        let task = tokio::spawn(reconcile::reconcile_volume(Arc::new(released()), ctx));
        expect_pv_read(&mut api, PV, fresh.as_ref()).await;
        task.await.unwrap().unwrap();
        api.idle().await;
        assert!(
            root.path().join(DIR).join("chunks/000001").exists(),
            "{what}: data removed"
        );
    }
}

#[tokio::test]
async fn a_409_on_delete_is_not_done_while_our_volume_is_still_there() {
    let root = tempfile::tempdir().unwrap();
    volume_with_data(root.path(), DIR);
    let (client, mut api) = mock();
    let ctx = context(
        &client,
        root.path(),
        vec![class(&[])],
        vec![released()],
        LeaderHandle::always(),
    );
    let task = tokio::spawn(reconcile::reconcile_volume(
        Arc::new(released()),
        ctx.clone(),
    ));
    expect_pv_read(&mut api, PV, Some(&released())).await;
    expect_pv_delete(&mut api, 409).await;
    expect_pv_read(&mut api, PV, Some(&released())).await;
    api.expect_event("default", "VolumeFailedDelete", PV).await;
    let err = task.await.unwrap().unwrap_err();
    assert!(
        err.to_string().contains("deleting PersistentVolume"),
        "{err}"
    );
    assert!(!err.is_permanent());
    assert_eq!(
        ctx.metrics.operations(Operation::Delete, OpResult::Success),
        0
    );
}

#[tokio::test]
async fn an_on_delete_spelled_differently_archives_as_upstream_does_and_says_so() {
    for (params, kept_as) in [
        (&[("onDelete", "Delete")][..], "archived"),
        (
            &[("onDelete", "Delete"), ("archiveOnDelete", "false")][..],
            "in place",
        ),
    ] {
        let root = tempfile::tempdir().unwrap();
        volume_with_data(root.path(), DIR);
        let (client, mut api) = mock();
        let ctx = context(
            &client,
            root.path(),
            vec![class(params)],
            vec![released()],
            LeaderHandle::always(),
        );
        let task = tokio::spawn(reconcile::reconcile_volume(Arc::new(released()), ctx));
        expect_pv_read(&mut api, PV, Some(&released())).await;
        let event = api.expect_event("default", "VolumeDataKept", PV).await;
        let note = event["note"].as_str().unwrap();
        assert!(
            note.contains("`Delete`") && note.contains("onDelete"),
            "{note}"
        );
        expect_pv_delete(&mut api, 200).await;
        task.await.unwrap().unwrap();
        let kept = match kept_as {
            "archived" => root.path().join(format!("archived-{DIR}")),
            _ => root.path().join(DIR),
        };
        assert!(kept.join("chunks/000001").exists(), "{params:?}: data gone");
    }
}

#[tokio::test]
async fn a_volume_whose_server_is_spelled_differently_is_still_cleaned_up() {
    let root = tempfile::tempdir().unwrap();
    volume_with_data(root.path(), DIR);
    let mut pv = released();
    pv.spec.as_mut().unwrap().nfs.as_mut().unwrap().server = "10.0.0.5".into();
    let (client, mut api) = mock();
    let ctx = context(
        &client,
        root.path(),
        vec![class(&[("onDelete", "delete")])],
        vec![pv.clone()],
        LeaderHandle::always(),
    );
    let task = tokio::spawn(reconcile::reconcile_volume(Arc::new(pv.clone()), ctx));
    expect_pv_read(&mut api, PV, Some(&pv)).await;
    expect_pv_delete(&mut api, 200).await;
    task.await.unwrap().unwrap();
    assert!(!root.path().join(DIR).exists());
}

#[tokio::test]
async fn usage_walk_can_be_turned_off_per_class() {
    let root = tempfile::tempdir().unwrap();
    volume_with_data(root.path(), DIR);
    let mut bound = released();
    bound.status.as_mut().unwrap().phase = Some("Bound".into());
    for (params, measured) in [(&[][..], 1), (&[("usageWalk", "false")][..], 0)] {
        let (client, _api) = mock();
        let ctx = context(
            &client,
            root.path(),
            vec![class(params)],
            vec![bound.clone()],
            LeaderHandle::always(),
        );
        let mut known = std::collections::HashSet::new();
        let got = reconcile::measure_volumes(
            &ctx,
            kube_persist::provisioner::volume::WalkLimits::default(),
            &mut known,
        )
        .await;
        assert_eq!(got.len(), measured, "{params:?}");
    }
}

// ----- leadership -------------------------------------------------------------------------

fn lease(holder: &str, renewed: jiff::Timestamp, rv: &str) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "fuseim.pri-ifs", "namespace": "kube-persist", "resourceVersion": rv},
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": 15,
            "acquireTime": "2025-03-01T00:00:00.000000Z",
            "renewTime": renewed.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
            "leaseTransitions": 3
        }
    })
}

const LEASE_PATH: &str =
    "/apis/coordination.k8s.io/v1/namespaces/kube-persist/leases/fuseim.pri-ifs";

#[tokio::test]
async fn a_lease_held_by_another_replica_means_no_provisioning() {
    let root = tempfile::tempdir().unwrap();
    let (client, mut api) = mock();
    let (mut elector, leader) = LeaseElector::new(
        client.clone(),
        "kube-persist",
        "fuseim.pri-ifs",
        "me",
        LeaderTiming::default(),
    );
    let round = tokio::spawn(async move { (elector.try_acquire_or_renew().await, elector) });
    api.expect(Method::GET, LEASE_PATH).await.respond(
        StatusCode::OK,
        lease("other_1", jiff::Timestamp::now(), "7"),
    );
    let (won, _elector) = round.await.unwrap();
    assert!(!won.unwrap());
    assert!(!leader.is_leader());

    let ctx = context(&client, root.path(), vec![class(&[])], vec![], leader);
    reconcile::reconcile_claim(Arc::new(claim()), ctx.clone())
        .await
        .unwrap();
    reconcile::reconcile_volume(Arc::new(released()), ctx)
        .await
        .unwrap();
    api.idle().await;
    assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn acquiring_a_free_lease_then_losing_it_stops_provisioning_at_once() {
    let root = tempfile::tempdir().unwrap();
    let (client, mut api) = mock();
    let (elector, leader) = LeaseElector::new(
        client.clone(),
        "kube-persist",
        "fuseim.pri-ifs",
        "me_1",
        LeaderTiming::default(),
    );
    let elector = Arc::new(tokio::sync::Mutex::new(elector));

    // No Lease yet: create it.
    let e = Arc::clone(&elector);
    let round = tokio::spawn(async move { e.lock().await.try_acquire_or_renew().await });
    api.expect(Method::GET, LEASE_PATH).await.respond_status(
        404,
        "NotFound",
        "leases.coordination.k8s.io \"fuseim.pri-ifs\" not found",
    );
    let call = api
        .expect(
            Method::POST,
            "/apis/coordination.k8s.io/v1/namespaces/kube-persist/leases",
        )
        .await;
    assert_eq!(call.body["spec"]["holderIdentity"], "me_1");
    assert_eq!(call.body["spec"]["leaseDurationSeconds"], 15);
    let mut body = call.body.clone();
    body["metadata"]["resourceVersion"] = json!("1");
    call.respond(StatusCode::CREATED, body);
    assert!(round.await.unwrap().unwrap());
    assert!(leader.is_leader());

    // Provisioning starts; while the first event is in flight, a renewal finds that another
    // replica holds the Lease now.
    let ctx = context(
        &client,
        root.path(),
        vec![class(&[])],
        vec![],
        leader.clone(),
    );
    let task = tokio::spawn(reconcile::reconcile_claim(Arc::new(claim()), ctx));
    let event_call = api
        .expect(
            Method::POST,
            "/apis/events.k8s.io/v1/namespaces/monitoring/events",
        )
        .await;
    assert_eq!(event_call.body["reason"], "Provisioning");
    let e = Arc::clone(&elector);
    let round = tokio::spawn(async move { e.lock().await.try_acquire_or_renew().await });
    api.expect(Method::GET, LEASE_PATH).await.respond(
        StatusCode::OK,
        lease("other_2", jiff::Timestamp::now(), "9"),
    );
    assert!(!round.await.unwrap().unwrap());
    assert!(!leader.is_leader());
    let body = event_call.body.clone();
    event_call.respond(StatusCode::CREATED, body);

    task.await.unwrap().unwrap();
    api.idle().await;
    assert!(
        !root.path().join(DIR).exists(),
        "directory created after losing the Lease"
    );
}

#[tokio::test]
async fn renewal_conflict_loses_the_lease_and_release_frees_it() {
    let (client, mut api) = mock();
    let (elector, leader) = LeaseElector::new(
        client.clone(),
        "kube-persist",
        "fuseim.pri-ifs",
        "me_1",
        LeaderTiming::default(),
    );
    let elector = Arc::new(tokio::sync::Mutex::new(elector));
    // An expired Lease (holder empty after a release) is taken over with an update.
    let e = Arc::clone(&elector);
    let round = tokio::spawn(async move { e.lock().await.try_acquire_or_renew().await });
    api.expect(Method::GET, LEASE_PATH)
        .await
        .respond(StatusCode::OK, lease("", jiff::Timestamp::now(), "20"));
    let call = api.expect(Method::PUT, LEASE_PATH).await;
    assert_eq!(call.body["metadata"]["resourceVersion"], "20");
    assert_eq!(call.body["spec"]["holderIdentity"], "me_1");
    assert_eq!(call.body["spec"]["leaseTransitions"], 4);
    let mut body = call.body.clone();
    body["metadata"]["resourceVersion"] = json!("21");
    call.respond(StatusCode::OK, body);
    assert!(round.await.unwrap().unwrap());
    assert!(leader.is_leader());

    // Renewal: we still hold it, but someone wrote in between (409): leadership ends now.
    let e = Arc::clone(&elector);
    let round = tokio::spawn(async move { e.lock().await.try_acquire_or_renew().await });
    api.expect(Method::GET, LEASE_PATH)
        .await
        .respond(StatusCode::OK, lease("me_1", jiff::Timestamp::now(), "21"));
    let call = api.expect(Method::PUT, LEASE_PATH).await;
    assert_eq!(
        call.body["spec"]["leaseTransitions"], 3,
        "renewal is not a transition"
    );
    call.respond_status(409, "Conflict", "the object has been modified");
    assert!(!round.await.unwrap().unwrap());
    assert!(!leader.is_leader());

    // Win it back, then release on shutdown: holder cleared.
    let e = Arc::clone(&elector);
    let round = tokio::spawn(async move { e.lock().await.try_acquire_or_renew().await });
    api.expect(Method::GET, LEASE_PATH)
        .await
        .respond(StatusCode::OK, lease("me_1", jiff::Timestamp::now(), "22"));
    let call = api.expect(Method::PUT, LEASE_PATH).await;
    let mut body = call.body.clone();
    body["metadata"]["resourceVersion"] = json!("23");
    call.respond(StatusCode::OK, body);
    assert!(round.await.unwrap().unwrap());
    let e = Arc::clone(&elector);
    let release = tokio::spawn(async move { e.lock().await.release().await });
    let call = api.expect(Method::PUT, LEASE_PATH).await;
    assert!(
        call.body["spec"]
            .get("holderIdentity")
            .is_none_or(Value::is_null),
        "{}",
        call.body
    );
    assert_eq!(call.body["metadata"]["resourceVersion"], "23");
    let body = call.body.clone();
    call.respond(StatusCode::OK, body);
    release.await.unwrap().unwrap();
    assert!(!leader.is_leader());
}

#[test]
fn rbac_table_is_exactly_what_the_provisioner_uses() {
    let provisioner: Vec<(&str, &str, Vec<&str>)> = rbac::API_ACCESS
        .iter()
        .filter(|a| a.used_by.starts_with("provisioner"))
        .map(|a| (a.group, a.resource, a.verbs.to_vec()))
        .collect();
    assert_eq!(
        provisioner,
        vec![
            (
                "",
                "persistentvolumes",
                vec!["create", "delete", "get", "list", "watch"]
            ),
            ("", "persistentvolumeclaims", vec!["list", "watch"]),
            ("storage.k8s.io", "storageclasses", vec!["list", "watch"]),
            ("events.k8s.io", "events", vec!["create", "patch"]),
            (
                "coordination.k8s.io",
                "leases",
                vec!["create", "get", "update"]
            ),
            ("", "events", vec!["create"]),
            ("", "endpoints", vec!["create", "get", "update"]),
        ]
    );
}

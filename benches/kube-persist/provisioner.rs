//! Provisioner benchmarks: the pure plans, a full provision + delete cycle against an in-process
//! mock API server (tower-test) with a temp directory as the mount, and the usage walk.
//!
//! `cargo bench -- provisioner`.

use std::{
    collections::{BTreeMap, HashMap},
    hint::black_box,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use criterion::{Criterion, Throughput};
use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::{
    core::v1::{PersistentVolume, PersistentVolumeClaim, PersistentVolumeStatus},
    storage::v1::StorageClass,
};
use kube::{
    Client,
    client::Body,
    runtime::{reflector::store::Writer, watcher},
};
use kube_persist::provisioner::{
    Config,
    events::Publisher,
    leader::LeaderHandle,
    metrics::Metrics,
    plan,
    reconcile::{self, Context, RetryBackoff},
    volume::{VolumeRoot, WalkLimits, walk_usage},
};

fn fixture<T: serde::de::DeserializeOwned>(name: &str) -> T {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/provisioner")
        .join(name);
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn config(root: &Path) -> Config {
    Config {
        provisioner_name: "fuseim.pri/ifs".into(),
        nfs_server: "nfs.example.internal".into(),
        nfs_path: "/srv/nfs/k8s".into(),
        nfs_root: root.to_path_buf(),
        enable_leader_election: false,
        lease_namespace: None,
        admin_listen: "127.0.0.1:0".parse().unwrap(),
    }
}

fn class(params: &[(&str, &str)]) -> StorageClass {
    let mut c: StorageClass = fixture("storageclass.json");
    let map = c.parameters.get_or_insert_with(BTreeMap::new);
    for (k, v) in params {
        map.insert((*k).to_owned(), (*v).to_owned());
    }
    c
}

pub fn bench_plan(c: &mut Criterion) {
    let cfg = config(Path::new("/persistentvolumes"));
    let claim: PersistentVolumeClaim = fixture("pvc-prometheus.json");
    let default_class = class(&[]);
    let pattern_class = class(&[(
        "pathPattern",
        "${.PVC.namespace}/${.PVC.labels.prometheus}/${.PVC.name}",
    )]);
    let released: PersistentVolume = fixture("pv-released.json");
    let mut group = c.benchmark_group("plan");
    group
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    group.throughput(Throughput::Elements(1));
    group.bench_function("provision_default_naming", |b| {
        b.iter(|| plan::plan_provision(black_box(&claim), Some(&default_class), &cfg, None, &[]))
    });
    group.bench_function("provision_path_pattern", |b| {
        b.iter(|| plan::plan_provision(black_box(&claim), Some(&pattern_class), &cfg, None, &[]))
    });
    group.bench_function("delete_archive", |b| {
        b.iter(|| {
            plan::plan_delete(
                black_box(&released),
                Some(&default_class),
                &cfg,
                &[],
                "20250102T030405Z",
            )
        })
    });
    group.finish();
}

fn store<K>(objects: Vec<K>) -> kube::runtime::reflector::Store<K>
where
    K: kube::runtime::reflector::Lookup + Clone + 'static,
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

/// Answers every request at once, like an idle API server: creates echo their body; a read of
/// a PV created here returns it as the cycle releases it (uid `uid`, phase `Released`), so
/// that the cleanup's fresh read goes ahead.
async fn api_server(
    mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>,
    requests: Arc<AtomicU64>,
) {
    let mut volumes: HashMap<String, serde_json::Value> = HashMap::new();
    while let Some((request, send)) = handle.next_request().await {
        requests.fetch_add(1, Ordering::Relaxed);
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let pv_name = path
            .strip_prefix("/api/v1/persistentvolumes/")
            .map(str::to_owned);
        let (status, body) = match (method, pv_name) {
            (Method::POST, _) => {
                if path == "/api/v1/persistentvolumes" {
                    let mut pv: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                    pv["metadata"]["uid"] = "uid".into();
                    pv["status"] = serde_json::json!({"phase": "Released"});
                    let name = pv["metadata"]["name"].as_str().unwrap().to_owned();
                    volumes.insert(name, pv);
                }
                (StatusCode::CREATED, bytes.to_vec())
            }
            (Method::GET, Some(name)) if volumes.contains_key(&name) => {
                (StatusCode::OK, serde_json::to_vec(&volumes[&name]).unwrap())
            }
            (Method::DELETE | Method::PATCH, name) => {
                if let Some(name) = name {
                    volumes.remove(&name);
                }
                (
                    StatusCode::OK,
                    br#"{"kind":"Status","apiVersion":"v1","status":"Success"}"#.to_vec(),
                )
            }
            _ => (
                StatusCode::NOT_FOUND,
                br#"{"kind":"Status","status":"Failure","code":404}"#.to_vec(),
            ),
        };
        send.send_response(
            Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Body::from(body))
                .unwrap(),
        );
    }
}

pub fn bench_cycle(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let root = tempfile::tempdir().unwrap();
    let requests = Arc::new(AtomicU64::new(0));
    let ctx = rt.block_on(async {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        tokio::spawn(api_server(handle, Arc::clone(&requests)));
        let client = Client::new(service, "default");
        Arc::new(Context {
            recorder: Publisher::new(
                client.clone(),
                reconcile::reporter("fuseim.pri/ifs", "bench"),
            ),
            client,
            config: config(root.path()),
            classes: store(vec![class(&[("onDelete", "delete")])]),
            volumes: store(Vec::<PersistentVolume>::new()),
            fs: VolumeRoot::new(root.path().to_path_buf(), Duration::from_secs(10), ".probe"),
            leader: LeaderHandle::always(),
            metrics: Metrics::unregistered(),
            backoff: RetryBackoff::default(),
            sync_timeout: Duration::from_secs(5),
            sync_gate: Default::default(),
        })
    });
    let template: PersistentVolumeClaim = fixture("pvc-prometheus.json");
    let counter = AtomicU64::new(0);
    let next_claim = || {
        let n = counter.fetch_add(1, Ordering::Relaxed);
        let mut claim = template.clone();
        claim.metadata.uid = Some(format!("00000000-0000-4000-8000-{n:012}"));
        claim.metadata.name = Some(format!("data-{n}"));
        claim
    };
    let mut group = c.benchmark_group("cycle");
    group
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(20);
    group.throughput(Throughput::Elements(1));
    group.bench_function("provision", |b| {
        b.iter_custom(|iters| {
            let claims: Vec<_> = (0..iters).map(|_| Arc::new(next_claim())).collect();
            let started = Instant::now();
            rt.block_on(async {
                for claim in claims {
                    reconcile::reconcile_claim(claim, Arc::clone(&ctx))
                        .await
                        .unwrap();
                }
            });
            started.elapsed()
        })
    });
    group.bench_function("provision_then_delete", |b| {
        b.iter_custom(|iters| {
            let claims: Vec<_> = (0..iters).map(|_| Arc::new(next_claim())).collect();
            let started = Instant::now();
            rt.block_on(async {
                for claim in claims {
                    let plan = match plan::plan_provision(
                        &claim,
                        ctx.classes.state().first().map(AsRef::as_ref),
                        &ctx.config,
                        None,
                        &[],
                    ) {
                        plan::ProvisionDecision::Provision(p) => p,
                        other => panic!("{other:?}"),
                    };
                    reconcile::reconcile_claim(claim, Arc::clone(&ctx))
                        .await
                        .unwrap();
                    let mut pv = plan.pv;
                    pv.metadata.uid = Some("uid".into());
                    pv.status = Some(PersistentVolumeStatus {
                        phase: Some("Released".into()),
                        ..PersistentVolumeStatus::default()
                    });
                    reconcile::reconcile_volume(Arc::new(pv), Arc::clone(&ctx))
                        .await
                        .unwrap();
                }
            });
            started.elapsed()
        })
    });
    group.finish();
    eprintln!(
        "mock API server answered {} requests",
        requests.load(Ordering::Relaxed)
    );
}

/// A volume of `dirs` x `files` files of `size` bytes.
fn make_tree(root: &Path, dirs: usize, files: usize, size: usize) {
    let data = vec![0x5au8; size];
    for d in 0..dirs {
        let dir = root.join(format!("chunks-{d:04}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..files {
            std::fs::write(dir.join(format!("{f:06}")), &data).unwrap();
        }
    }
}

pub fn bench_walk(c: &mut Criterion) {
    let small = tempfile::tempdir().unwrap();
    make_tree(small.path(), 100, 100, 4096); // 10k files, 40 MiB
    let big = tempfile::tempdir().unwrap();
    make_tree(big.path(), 4, 64, 4 << 20); // 256 files of 4 MiB: 1 GiB
    let usage = walk_usage(big.path(), WalkLimits::default());
    eprintln!("1 GiB tree: {usage:?}");
    let mut group = c.benchmark_group("walk");
    group
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(20);
    group.throughput(Throughput::Elements(10_000));
    group.bench_function("10k_files_4KiB", |b| {
        b.iter(|| walk_usage(black_box(small.path()), WalkLimits::default()))
    });
    group.throughput(Throughput::Elements(256));
    group.bench_function("1GiB_in_256_files", |b| {
        b.iter(|| walk_usage(black_box(big.path()), WalkLimits::default()))
    });
    group.finish();
}

//! `mutate` over a directory of 1,000 manifests (a kube-prometheus-like mix of target and
//! other kinds, one per file), in process, output discarded.
//!
//! ```sh
//! cargo bench -- mutate
//! # Only write the manifest set (e.g. to time the release binary with /usr/bin/time -v):
//! KUBE_PERSIST_BENCH_WRITE=/tmp/manifests KUBE_PERSIST_BENCH_COUNT=1000 cargo bench
//! ```

use std::{
    io,
    path::{Path, PathBuf},
};

use criterion::Criterion;
use kube_persist::{
    cli::OperationArg,
    commands::mutate::{self, Config},
    policy::Policy,
};

/// One manifest of the set, by position: every tenth object of each kind.
fn manifest(i: usize) -> String {
    let ns = format!("team-{}", i % 37);
    let labels = format!(
        "    app.kubernetes.io/name: app-{i}\n    app.kubernetes.io/part-of: bench\n    app.kubernetes.io/version: 1.{i}.0\n"
    );
    match i % 10 {
        0 => format!(
            "apiVersion: monitoring.coreos.com/v1\nkind: Prometheus\nmetadata:\n  name: p-{i}\n  namespace: {ns}\n  labels:\n{labels}spec:\n  replicas: 2\n  retention: 15d\n  serviceAccountName: prometheus\n  serviceMonitorSelector:\n    matchLabels:\n      team: t{i}\n  resources:\n    requests:\n      memory: 400Mi\n"
        ),
        1 => format!(
            "apiVersion: monitoring.coreos.com/v1\nkind: Alertmanager\nmetadata:\n  name: am-{i}\n  namespace: {ns}\n  labels:\n{labels}spec:\n  replicas: 3\n"
        ),
        2 | 3 => {
            let claims = if i % 10 == 3 {
                "  volumeClaimTemplates:\n  - metadata:\n      name: data\n    spec:\n      accessModes: [ReadWriteOnce]\n      resources:\n        requests:\n          storage: 10Gi\n"
            } else {
                ""
            };
            let volumes = if i % 10 == 2 {
                "      volumes:\n      - name: data\n        emptyDir: {}\n      - name: tmp\n        emptyDir: {}\n"
            } else {
                "      volumes:\n      - name: tmp\n        emptyDir: {}\n"
            };
            format!(
                "apiVersion: apps/v1\nkind: StatefulSet\nmetadata:\n  name: db-{i}\n  namespace: {ns}\n  labels:\n{labels}spec:\n  replicas: 3\n  serviceName: db-{i}\n  selector:\n    matchLabels:\n      app: db-{i}\n  template:\n    metadata:\n      labels:\n        app: db-{i}\n    spec:\n      containers:\n      - name: db\n        image: postgres:17\n        env:\n        - name: PGDATA\n          value: /data/pgdata\n        volumeMounts:\n        - name: data\n          mountPath: /data\n        - name: tmp\n          mountPath: /tmp\n{volumes}{claims}"
            )
        }
        4 => format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web-{i}\n  namespace: {ns}\n  labels:\n{labels}spec:\n  replicas: 2\n  selector:\n    matchLabels:\n      app: web-{i}\n  template:\n    metadata:\n      labels:\n        app: web-{i}\n    spec:\n      containers:\n      - name: web\n        image: nginx:1.27\n        ports:\n        - containerPort: 8080\n        resources:\n          requests:\n            cpu: 10m\n            memory: 32Mi\n"
        ),
        5 => format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: web-{i}\n  namespace: {ns}\n  labels:\n{labels}spec:\n  ports:\n  - name: http\n    port: 80\n    targetPort: 8080\n  selector:\n    app: web-{i}\n"
        ),
        8 => format!(
            "apiVersion: monitoring.coreos.com/v1\nkind: ServiceMonitor\nmetadata:\n  name: web-{i}\n  namespace: {ns}\n  labels:\n{labels}spec:\n  endpoints:\n  - interval: 30s\n    port: http\n  selector:\n    matchLabels:\n      app: web-{i}\n"
        ),
        _ => {
            let rules: String = (0..40)
                .map(|r| format!("    - alert: Rule{r}\n      expr: up{{job=\"web-{i}\"}} == 0\n      for: 5m\n"))
                .collect();
            format!(
                "# Alerting rules of web-{i}.\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: rules-{i}\n  namespace: {ns}\n  labels:\n{labels}data:\n  rules.yaml: |\n    groups:\n    - name: web\n      rules:\n{rules}"
            )
        }
    }
}

/// Writes `count` manifests under `dir`, 100 per subdirectory.
fn write_manifests(dir: &Path, count: usize) -> io::Result<()> {
    for i in 0..count {
        let sub = dir.join(format!("part-{:02}", i / 100));
        std::fs::create_dir_all(&sub)?;
        std::fs::write(sub.join(format!("m-{i:05}.yaml")), manifest(i))?;
    }
    Ok(())
}

fn config(dir: PathBuf) -> Config {
    Config {
        paths: vec![dir],
        policy: Policy::default(),
        output: None,
        operation: OperationArg::Create,
        check: false,
        namespace: "default".to_string(),
    }
}

fn count() -> usize {
    std::env::var("KUBE_PERSIST_BENCH_COUNT")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000)
}

/// With `KUBE_PERSIST_BENCH_WRITE=DIR`: writes the manifest set there and returns true.
pub fn write_only() -> bool {
    let Some(dir) = std::env::var_os("KUBE_PERSIST_BENCH_WRITE") else {
        return false;
    };
    let dir = PathBuf::from(dir);
    write_manifests(&dir, count()).expect("the manifest set is written");
    println!("{} manifests written under {}", count(), dir.display());
    true
}

pub fn mutate(c: &mut Criterion) {
    let count = count();
    let dir = tempfile::tempdir().expect("a temporary directory");
    write_manifests(dir.path(), count).expect("the manifest set is written");
    let config = config(dir.path().to_path_buf());
    let summary = mutate::execute(&config, io::sink(), io::sink()).expect("mutate runs");
    assert_eq!(summary.objects, count);
    assert_eq!(summary.errors, 0);

    let mut group = c.benchmark_group("mutate");
    group.sample_size(10);
    group.bench_function(format!("{count} manifests"), |b| {
        b.iter(|| mutate::execute(&config, io::sink(), io::sink()).expect("mutate runs"));
    });
    group.finish();
}

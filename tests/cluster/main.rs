//! The real-control-plane tier: kube-persist against etcd, kube-apiserver,
//! kube-controller-manager and the Prometheus Operator built from their pinned Go modules.
//!
//! Run it with `tests/cluster/run.sh [SCENARIO...]`: it builds (or reuses) the components and
//! the release binary, then runs this harness, which starts one cluster on 127.0.0.1, runs
//! the scenarios in order and stops everything. A failing scenario keeps the run directory
//! (every component's log, the API server's audit log, the NFS root) under `target/cluster/`.
#![allow(clippy::unwrap_used, missing_docs)]

mod harness;
mod scenarios;

use std::{
    panic::{AssertUnwindSafe, catch_unwind},
    process::ExitCode,
    time::Instant,
};

use harness::{Binaries, Cluster};

fn main() -> ExitCode {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let wanted: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let selected: Vec<&scenarios::Scenario> = scenarios::ALL
        .iter()
        .filter(|s| wanted.is_empty() || wanted.iter().any(|w| s.name.contains(w.as_str())))
        .collect();
    if selected.is_empty() {
        let names: Vec<&str> = scenarios::ALL.iter().map(|s| s.name).collect();
        eprintln!(
            "no scenario matches {wanted:?}; scenarios: {}",
            names.join(", ")
        );
        return ExitCode::FAILURE;
    }
    let bins = match Binaries::from_env() {
        Ok(bins) => bins,
        Err(e) => {
            eprintln!("cluster tests: {e}");
            return ExitCode::FAILURE;
        }
    };

    let started = Instant::now();
    let cluster = catch_unwind(AssertUnwindSafe(|| Cluster::start(bins)));
    let mut cluster = match cluster {
        Ok(cluster) => cluster,
        Err(_) => {
            // The panic message (which component, its log's last lines) is printed above;
            // the partially started cluster was dropped, which stopped its processes.
            eprintln!(
                "cluster tests: the control plane did not come up; logs under target/cluster/"
            );
            println!("cluster: 0 passed, {} failed", selected.len());
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "cluster up in {:.1} s ({})",
        started.elapsed().as_secs_f64(),
        cluster.dir.display()
    );

    let (mut passed, mut failed) = (0, Vec::new());
    for scenario in selected {
        let t = Instant::now();
        eprintln!("--- {}", scenario.name);
        let result = catch_unwind(AssertUnwindSafe(|| {
            (scenario.run)(&mut cluster);
            cluster.assert_running();
        }));
        match result {
            Ok(()) => {
                passed += 1;
                eprintln!("ok {} ({:.1} s)", scenario.name, t.elapsed().as_secs_f64());
            }
            Err(_) => {
                failed.push(scenario.name);
                eprintln!(
                    "FAILED {} ({:.1} s)",
                    scenario.name,
                    t.elapsed().as_secs_f64()
                );
                eprintln!("{}", cluster.tails());
            }
        }
    }

    let dir = cluster.dir.clone();
    drop(cluster);
    if failed.is_empty() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!(
            "failed: {}; logs kept in {}",
            failed.join(", "),
            dir.display()
        );
    }
    eprintln!("cluster tier took {:.1} s", started.elapsed().as_secs_f64());
    println!("cluster: {passed} passed, {} failed", failed.len());
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

//! The criterion benchmarks, in one binary: `cargo bench` runs them all, `cargo bench -- NAME`
//! those whose id contains NAME (`prometheus-5kb`, `sts-7kb`, `plan`, `cycle`, `walk`, `mutate`).
//! Benchmarks build without LTO (`[profile.bench]`); the load benchmark (`benches/load/`)
//! measures the shipped release build.
#![allow(missing_docs, clippy::unwrap_used)]

mod admission;
mod mutate;
mod provisioner;

fn main() {
    if mutate::write_only() {
        return;
    }
    let mut c = criterion::Criterion::default().configure_from_args();
    admission::review(&mut c);
    provisioner::bench_plan(&mut c);
    provisioner::bench_cycle(&mut c);
    provisioner::bench_walk(&mut c);
    mutate::mutate(&mut c);
    c.final_summary();
}

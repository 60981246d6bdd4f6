//! `admission::review` on the bench kit's StatefulSets: the 7 KB one and the 1.1 MB one
//! (`tests/fixtures/bench/`), next to what serde_json needs just to skip the same bytes
//! (the floor for a decoder that must read the whole body).
//!
//! `cargo bench --bench admission_sts` (add `-- --warm-up-time 1 --measurement-time 3` for a
//! quick run).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kube_persist::{admission, policy::Policy};
use serde::de::IgnoredAny;

const FIXTURES: [(&str, &[u8]); 2] = [
    (
        "sts-7kb",
        include_bytes!("../tests/fixtures/bench/b-sts-small.json"),
    ),
    (
        "sts-1mb",
        include_bytes!("../tests/fixtures/bench/c-sts-1mb.json"),
    ),
];

fn review(c: &mut Criterion) {
    let policy = Policy::default();
    for (name, body) in FIXTURES {
        // Fail loudly rather than time the wrong path.
        let reviewed = admission::review(body, &policy).expect("a valid review");
        assert_eq!(reviewed.decision.outcome, admission::Outcome::Mutated);

        let mut group = c.benchmark_group(name);
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function("review", |b| {
            b.iter(|| {
                let reviewed = admission::review(black_box(body), &policy).expect("valid");
                black_box(reviewed.response.len())
            })
        });
        group.bench_function("decode only", |b| {
            b.iter(|| {
                let (_, request) = admission::decode(black_box(body)).expect("valid");
                black_box(request.uid.len())
            })
        });
        group.bench_function("serde_json skip (floor)", |b| {
            b.iter(|| serde_json::from_slice::<IgnoredAny>(black_box(body)).expect("JSON"))
        });
        group.finish();
    }
}

criterion_group!(benches, review);
criterion_main!(benches);

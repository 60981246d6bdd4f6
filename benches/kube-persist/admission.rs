//! `admission::review` (decode -> decide -> encode) on the bench kit's AdmissionReviews: the
//! 5 KB Prometheus (`tests/fixtures/reviews/a-prometheus.json`), the 7 KB StatefulSet and the
//! 1.1 MB StatefulSet (`tests/fixtures/bench/`). For context, each fixture also gets
//! "decode only" (`admission::decode`), "review + audit line" (what the webhook handler adds
//! per request) and "serde_json skip (IgnoredAny)": what serde_json needs just to walk the same
//! bytes, the floor for any decoder that must read the whole body.
//!
//! `cargo bench -- review` (a few seconds per point; a filter such as `-- prometheus` picks
//! one fixture).

use std::{hint::black_box, time::Duration};

use criterion::{Criterion, Throughput};
use kube_persist::{admission, audit::AuditRecord, policy::Policy};
use serde::de::IgnoredAny;

const FIXTURES: [(&str, &[u8]); 3] = [
    (
        "prometheus-5kb",
        include_bytes!("../../tests/fixtures/reviews/a-prometheus.json"),
    ),
    (
        "sts-7kb",
        include_bytes!("../../tests/fixtures/bench/b-sts-small.json"),
    ),
    (
        "sts-1mb",
        include_bytes!("../../tests/fixtures/bench/c-sts-1mb.json"),
    ),
];

pub fn review(c: &mut Criterion) {
    let policy = Policy::default();
    for (name, body) in FIXTURES {
        // Fail loudly rather than time the wrong path: all three fixtures are mutated.
        let reviewed = admission::review(body, &policy).expect("a valid review");
        assert_eq!(reviewed.decision.outcome(), admission::Outcome::Mutated);

        let mut group = c.benchmark_group(name);
        group
            .throughput(Throughput::Bytes(body.len() as u64))
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3));
        if body.len() > 100_000 {
            group.sample_size(20);
        }
        group.bench_function("review", |b| {
            b.iter(|| {
                let reviewed = admission::review(black_box(body), &policy).expect("valid");
                black_box(reviewed.response.len())
            })
        });
        group.bench_function("review + audit line", |b| {
            let mut line = Vec::with_capacity(1024);
            b.iter(|| {
                let reviewed = admission::review(black_box(body), &policy).expect("valid");
                let record = AuditRecord::new(
                    &reviewed.request,
                    &reviewed.decision,
                    jiff::Timestamp::now(),
                    Duration::from_micros(10),
                );
                line.clear();
                record.write_line(&mut line).expect("serializes");
                black_box((reviewed.response.len(), line.len()))
            })
        });
        group.bench_function("decode only", |b| {
            b.iter(|| {
                let (_, request) = admission::decode(black_box(body)).expect("valid");
                black_box(request.uid.len())
            })
        });
        group.bench_function("serde_json skip (IgnoredAny)", |b| {
            b.iter(|| serde_json::from_slice::<IgnoredAny>(black_box(body)).expect("JSON"))
        });
        group.finish();
    }
}

//! Provisioner metrics (prometheus-client), registered into the process's shared registry.
//!
//! Exported names: `kube_persist_provisioner_operations_total{operation,result}`,
//! `kube_persist_provisioner_failures_total{reason}`,
//! `kube_persist_provisioner_duration_seconds{operation}`,
//! `kube_persist_provisioner_leader`, `kube_persist_volume_used_bytes{pv}`,
//! `kube_persist_volume_requested_bytes{pv}`, `kube_persist_volume_walk_incomplete{pv}`.

use std::time::Duration;

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// The operation a metric sample is about.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Operation {
    /// Creating a directory and a PV for a claim.
    Provision,
    /// Cleaning up a released PV.
    Delete,
}

/// How an operation ended.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum OpResult {
    Success,
    /// Failed (see `failures_total{reason}`).
    Failure,
}

impl EncodeLabelValue for Operation {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        let v = match self {
            Operation::Provision => "provision",
            Operation::Delete => "delete",
        };
        EncodeLabelValue::encode(&v, encoder)
    }
}

impl EncodeLabelValue for OpResult {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        let v = match self {
            OpResult::Success => "success",
            OpResult::Failure => "failure",
        };
        EncodeLabelValue::encode(&v, encoder)
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    operation: Operation,
    result: OpResult,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: Operation,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PvLabels {
    pv: String,
}

fn duration_histogram() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ])
}

/// All provisioner metrics; cheap to clone (handles to shared atomics).
#[derive(Debug, Clone)]
pub struct Metrics {
    operations: Family<OpLabels, Counter>,
    failures: Family<ReasonLabels, Counter>,
    duration: Family<OperationLabels, Histogram, fn() -> Histogram>,
    leader: Gauge,
    used_bytes: Family<PvLabels, Gauge>,
    requested_bytes: Family<PvLabels, Gauge>,
    walk_incomplete: Family<PvLabels, Gauge>,
}

impl Metrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = Metrics {
            operations: Family::default(),
            failures: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            leader: Gauge::default(),
            used_bytes: Family::default(),
            requested_bytes: Family::default(),
            walk_incomplete: Family::default(),
        };
        registry.register(
            "kube_persist_provisioner_operations",
            "Provision and delete operations by result",
            m.operations.clone(),
        );
        registry.register(
            "kube_persist_provisioner_failures",
            "Failed provisioner operations by reason",
            m.failures.clone(),
        );
        registry.register(
            "kube_persist_provisioner_duration_seconds",
            "Time from the start of a provision or delete operation to its end",
            m.duration.clone(),
        );
        registry.register(
            "kube_persist_provisioner_leader",
            "1 while this replica holds the provisioner Lease",
            m.leader.clone(),
        );
        registry.register(
            "kube_persist_volume_used_bytes",
            "Bytes allocated in a provisioned volume's directory (periodic bounded walk)",
            m.used_bytes.clone(),
        );
        registry.register(
            "kube_persist_volume_requested_bytes",
            "Capacity requested by the claim of a provisioned volume",
            m.requested_bytes.clone(),
        );
        registry.register(
            "kube_persist_volume_walk_incomplete",
            "1 when the last usage walk of a volume hit its bound (used bytes is a lower bound)",
            m.walk_incomplete.clone(),
        );
        m
    }

    /// Metrics registered nowhere (tests, benchmarks).
    pub fn unregistered() -> Self {
        Metrics::new(&mut Registry::default())
    }

    /// Records a finished operation.
    pub fn success(&self, operation: Operation, took: Duration) {
        self.operations
            .get_or_create(&OpLabels {
                operation,
                result: OpResult::Success,
            })
            .inc();
        self.duration
            .get_or_create(&OperationLabels { operation })
            .observe(took.as_secs_f64());
    }

    /// Records a failed operation; `took` is `None` when it failed before doing anything
    /// (a plan failure), so the latency histogram only sees real attempts.
    pub fn failure(&self, operation: Operation, reason: &str, took: Option<Duration>) {
        self.operations
            .get_or_create(&OpLabels {
                operation,
                result: OpResult::Failure,
            })
            .inc();
        self.failures
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
        if let Some(took) = took {
            self.duration
                .get_or_create(&OperationLabels { operation })
                .observe(took.as_secs_f64());
        }
    }

    /// Count of operations with this outcome so far.
    pub fn operations(&self, operation: Operation, result: OpResult) -> u64 {
        self.operations
            .get(&OpLabels { operation, result })
            .map_or(0, |c| c.get())
    }

    /// Count of failures with this reason so far.
    pub fn failures(&self, reason: &str) -> u64 {
        self.failures
            .get(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .map_or(0, |c| c.get())
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    pub fn set_requested(&self, pv: &str, bytes: u64) {
        self.requested_bytes
            .get_or_create(&PvLabels { pv: pv.to_owned() })
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// Sets a volume's used bytes from a walk.
    pub fn set_used(&self, pv: &str, bytes: u64, complete: bool) {
        let labels = PvLabels { pv: pv.to_owned() };
        self.used_bytes
            .get_or_create(&labels)
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        self.walk_incomplete
            .get_or_create(&labels)
            .set(i64::from(!complete));
    }

    /// A volume's used bytes, if measured.
    pub fn used(&self, pv: &str) -> Option<i64> {
        self.used_bytes
            .get(&PvLabels { pv: pv.to_owned() })
            .map(|g| g.get())
    }

    /// A volume's requested bytes, if known.
    pub fn requested(&self, pv: &str) -> Option<i64> {
        self.requested_bytes
            .get(&PvLabels { pv: pv.to_owned() })
            .map(|g| g.get())
    }

    /// Drops every per-volume series of `pv` (the volume is gone).
    pub fn forget_volume(&self, pv: &str) {
        let labels = PvLabels { pv: pv.to_owned() };
        self.used_bytes.remove(&labels);
        self.requested_bytes.remove(&labels);
        self.walk_incomplete.remove(&labels);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_exported_as_documented() {
        let mut registry = Registry::default();
        let m = Metrics::new(&mut registry);
        m.success(Operation::Provision, Duration::from_millis(3));
        m.failure(
            Operation::Delete,
            "mount_timeout",
            Some(Duration::from_millis(3)),
        );
        m.set_requested("pvc-1", 1024);
        m.set_used("pvc-1", 512, true);
        m.set_leader(true);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        for needle in [
            "kube_persist_provisioner_operations_total{operation=\"provision\",result=\"success\"} 1",
            "kube_persist_provisioner_failures_total{reason=\"mount_timeout\"} 1",
            "kube_persist_provisioner_duration_seconds_count{operation=\"delete\"} 1",
            "kube_persist_volume_used_bytes{pv=\"pvc-1\"} 512",
            "kube_persist_volume_requested_bytes{pv=\"pvc-1\"} 1024",
            "kube_persist_provisioner_leader 1",
        ] {
            assert!(out.contains(needle), "missing {needle} in\n{out}");
        }
        m.forget_volume("pvc-1");
        assert_eq!(m.used("pvc-1"), None);
    }
}

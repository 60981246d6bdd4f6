//! Webhook metrics (prometheus-client), served in the Prometheus text format on the admin port.
//! Counts what the server reports; decides nothing.

use std::sync::{Arc, OnceLock};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::admission::{CrKind, Operation, Outcome, Target};

/// Labels of an answered admission request.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Target kind, or `other`.
    pub kind: &'static str,
    /// CREATE, UPDATE, ...
    pub operation: &'static str,
    /// The decision (`mutated`, `unchanged`, ...).
    pub decision: &'static str,
}

/// Labels of a request refused at the HTTP level.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// `malformed_json`, `not_a_review`, `too_large`, `unsupported_media_type`, `body_read`,
    /// `body_timeout`, `empty_body`, `internal`, or `overloaded` (no room in the body memory
    /// budget in time).
    pub reason: &'static str,
}

/// Labels of a policy or certificate reload.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `policy` or `certificate`.
    pub what: &'static str,
    /// `success` or `failure`.
    pub result: &'static str,
}

/// Labels of audit records that were not written.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuditDropLabels {
    /// `queue_full` (the audit writer is behind a slow or stalled output) or `write_error`.
    pub reason: &'static str,
}

/// The webhook's metrics.
#[derive(Debug, Clone)]
pub struct WebhookMetrics {
    /// Answered reviews by kind, operation and decision (count them with
    /// [`WebhookMetrics::reviewed`]).
    pub requests: Family<RequestLabels, Counter>,
    /// The `requests` counter of every label set used so far, by [`slot`]: counting a review is
    /// then one atomic add, not a hash of three labels under the family's read lock.
    counters: Arc<[OnceLock<Counter>]>,
    /// Time from body received to response encoded.
    pub duration: Histogram,
    /// Requests refused before a decision.
    pub errors: Family<ErrorLabels, Counter>,
    /// Reloads of the policy and certificate files.
    pub reloads: Family<ReloadLabels, Counter>,
    /// Open webhook connections.
    pub connections: Gauge,
    /// Audit records dropped, by reason (the audit log counts them).
    pub audit_dropped: Family<AuditDropLabels, Counter>,
}

impl WebhookMetrics {
    /// Creates the metrics and registers them under `kube_persist_`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = WebhookMetrics {
            requests: Family::default(),
            counters: (0..SLOTS).map(|_| OnceLock::new()).collect(),
            // 25 us .. ~0.8 s
            duration: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.000_025, 2.0, 16,
            )),
            errors: Family::default(),
            reloads: Family::default(),
            connections: Gauge::default(),
            audit_dropped: Family::default(),
        };
        let registry = registry.sub_registry_with_prefix("kube_persist");
        registry.register(
            "admission_requests",
            "Admission reviews answered, by kind, operation and decision",
            metrics.requests.clone(),
        );
        registry.register(
            "admission_duration_seconds",
            "Time to decode, decide and encode one admission review",
            metrics.duration.clone(),
        );
        registry.register(
            "admission_errors",
            "Requests to /mutate refused before a decision, by reason",
            metrics.errors.clone(),
        );
        registry.register(
            "reloads",
            "Reloads of the policy and certificate files, by result",
            metrics.reloads.clone(),
        );
        registry.register(
            "webhook_connections",
            "Open webhook connections",
            metrics.connections.clone(),
        );
        registry.register(
            "audit_records_dropped",
            "Audit records not written, by reason: queue_full (the writer is behind a slow or stalled output) or write_error",
            metrics.audit_dropped.clone(),
        );
        metrics
    }

    /// Counts an answered review.
    pub fn reviewed(&self, target: Option<Target>, operation: Operation, outcome: Outcome) {
        let labels = || RequestLabels {
            kind: Target::metric_label(target),
            operation: operation.as_str(),
            decision: outcome.as_str(),
        };
        match self.counters.get(slot(target, operation, outcome)) {
            Some(counter) => counter
                .get_or_init(|| self.requests.get_or_create(&labels()).clone())
                .inc(),
            None => self.requests.get_or_create(&labels()).inc(),
        };
    }

    pub fn reload(&self, what: &'static str, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.reloads
            .get_or_create(&ReloadLabels { what, result })
            .inc();
    }

    /// Counts a refused request.
    pub fn error(&self, reason: &'static str) {
        self.errors.get_or_create(&ErrorLabels { reason }).inc();
    }
}

/// Kinds (`other` included), operations and outcomes a review can be counted under.
const KINDS: usize = 6;
const OPERATIONS: usize = 4;
const OUTCOMES: usize = 6;
const SLOTS: usize = KINDS * OPERATIONS * OUTCOMES;

/// The index of a label set in [`WebhookMetrics::counters`]. Every match is exhaustive, so a
/// new kind, operation or outcome fails to compile here instead of sharing another's slot; the
/// constants above are checked by the tests (out of range, the family is used directly).
fn slot(target: Option<Target>, operation: Operation, outcome: Outcome) -> usize {
    let kind = match target {
        Some(Target::Cr(CrKind::Prometheus)) => 0,
        Some(Target::Cr(CrKind::PrometheusAgent)) => 1,
        Some(Target::Cr(CrKind::Alertmanager)) => 2,
        Some(Target::Cr(CrKind::ThanosRuler)) => 3,
        Some(Target::StatefulSet) => 4,
        None => 5,
    };
    let operation = match operation {
        Operation::Create => 0,
        Operation::Update => 1,
        Operation::Delete => 2,
        Operation::Connect => 3,
    };
    let outcome = match outcome {
        Outcome::Mutated => 0,
        Outcome::Unchanged => 1,
        Outcome::Skipped => 2,
        Outcome::WouldMutate => 3,
        Outcome::Invalid => 4,
        Outcome::Error => 5,
    };
    (kind * OPERATIONS + operation) * OUTCOMES + outcome
}

/// Renders `registry` in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::error!(error = %e, "Cannot encode metrics");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TARGETS: [Option<Target>; KINDS] = [
        Some(Target::Cr(CrKind::Prometheus)),
        Some(Target::Cr(CrKind::PrometheusAgent)),
        Some(Target::Cr(CrKind::Alertmanager)),
        Some(Target::Cr(CrKind::ThanosRuler)),
        Some(Target::StatefulSet),
        None,
    ];
    const OPS: [Operation; OPERATIONS] = [
        Operation::Create,
        Operation::Update,
        Operation::Delete,
        Operation::Connect,
    ];
    const OUTS: [Outcome; OUTCOMES] = [
        Outcome::Mutated,
        Outcome::Unchanged,
        Outcome::Skipped,
        Outcome::WouldMutate,
        Outcome::Invalid,
        Outcome::Error,
    ];

    #[test]
    fn every_label_set_has_its_own_slot() {
        let mut used = [false; SLOTS];
        for target in TARGETS {
            for op in OPS {
                for outcome in OUTS {
                    let i = slot(target, op, outcome);
                    assert!(!used[i], "slot {i} twice");
                    used[i] = true;
                }
            }
        }
        assert!(used.iter().all(|u| *u));
    }

    #[test]
    fn reviews_are_counted_under_their_labels() {
        let mut registry = Registry::default();
        let metrics = WebhookMetrics::register(&mut registry);
        for _ in 0..3 {
            metrics.reviewed(
                Some(Target::StatefulSet),
                Operation::Create,
                Outcome::Mutated,
            );
        }
        metrics.reviewed(None, Operation::Delete, Outcome::Unchanged);
        // A clone (as each connection holds) counts into the same series.
        metrics
            .clone()
            .reviewed(None, Operation::Delete, Outcome::Unchanged);
        let text = render(&registry);
        let count = |labels: &str| {
            text.lines()
                .find(|l| {
                    l.starts_with("kube_persist_admission_requests_total{") && l.contains(labels)
                })
                .and_then(|l| l.rsplit(' ').next())
                .map(str::to_string)
        };
        assert_eq!(
            count(r#"kind="StatefulSet",operation="CREATE",decision="mutated""#).as_deref(),
            Some("3"),
            "{text}"
        );
        assert_eq!(
            count(r#"kind="other",operation="DELETE",decision="unchanged""#).as_deref(),
            Some("2"),
            "{text}"
        );
        assert_eq!(
            count(r#"decision="skipped""#),
            None,
            "only used label sets: {text}"
        );
    }
}

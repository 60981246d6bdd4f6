//! Webhook metrics (prometheus-client), served in the Prometheus text format on the admin port.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

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
    /// `malformed_json`, `not_a_review`, `too_large`, `unsupported_media_type`, `body_read`.
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

/// The webhook's metrics.
#[derive(Debug, Clone)]
pub struct WebhookMetrics {
    /// Answered reviews by kind, operation and decision.
    pub requests: Family<RequestLabels, Counter>,
    /// Time from body received to response encoded.
    pub duration: Histogram,
    /// Requests refused before a decision.
    pub errors: Family<ErrorLabels, Counter>,
    /// Reloads of the policy and certificate files.
    pub reloads: Family<ReloadLabels, Counter>,
    /// Open webhook connections.
    pub connections: Gauge,
}

impl WebhookMetrics {
    /// Creates the metrics and registers them under `kube_persist_`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = WebhookMetrics {
            requests: Family::default(),
            // 25 us .. ~0.8 s
            duration: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.000_025, 2.0, 16,
            )),
            errors: Family::default(),
            reloads: Family::default(),
            connections: Gauge::default(),
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
        metrics
    }

    /// Counts a reload.
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

/// Renders `registry` in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::error!(error = %e, "Cannot encode metrics");
    }
    out
}

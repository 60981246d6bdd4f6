//! Prometheus-Operator custom resources: `Prometheus`, `PrometheusAgent`, `Alertmanager` and
//! `ThanosRuler` all keep their data per `spec.storage`. Decides whether to add a
//! `volumeClaimTemplate` (and the protective extras the kind's CRD declares), and builds the
//! `add` operations. Never touches a CR that chose its storage.

use json_patch::{PatchOperation, jsonptr::PointerBuf};
use serde::{Deserialize, Serialize, de::IgnoredAny};
use serde_json::{Map, Value};

use super::{
    Change, Decision, Ident, Patch, Request, Verdict, gate,
    patch::{self, ClaimSpec},
    propose,
    view::{ObjectView, OldSpecView, Operation, SpecView},
};
use crate::{
    policy::{Mode, OnUpdate, Policy, RetentionPolicy, StorageSpec},
    quantity,
};

/// The four Prometheus-Operator kinds with `spec.storage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrKind {
    /// `monitoring.coreos.com/v1` Prometheus.
    Prometheus,
    /// `monitoring.coreos.com/v1alpha1` PrometheusAgent.
    PrometheusAgent,
    /// `monitoring.coreos.com/v1` Alertmanager.
    Alertmanager,
    /// `monitoring.coreos.com/v1` ThanosRuler.
    ThanosRuler,
}

impl CrKind {
    /// The kind at the versions the CRDs serve.
    pub fn of(version: &str, kind: &str) -> Option<CrKind> {
        match (version, kind) {
            ("v1", "Prometheus") => Some(CrKind::Prometheus),
            ("v1alpha1", "PrometheusAgent") => Some(CrKind::PrometheusAgent),
            ("v1", "Alertmanager") => Some(CrKind::Alertmanager),
            ("v1", "ThanosRuler") => Some(CrKind::ThanosRuler),
            _ => None,
        }
    }

    /// The kind's name.
    pub fn as_str(self) -> &'static str {
        match self {
            CrKind::Prometheus => "Prometheus",
            CrKind::PrometheusAgent => "PrometheusAgent",
            CrKind::Alertmanager => "Alertmanager",
            CrKind::ThanosRuler => "ThanosRuler",
        }
    }

    /// Whether the CRD declares `spec.persistentVolumeClaimRetentionPolicy` (ThanosRuler does
    /// not; the API server would silently prune it).
    pub fn has_pvc_retention_policy(self) -> bool {
        !matches!(self, CrKind::ThanosRuler)
    }

    /// Whether the CRD declares `spec.retentionSize` (only Prometheus).
    pub fn has_retention_size(self) -> bool {
        matches!(self, CrKind::Prometheus)
    }
}

/// `spec.storage`: which form it takes (any form is an explicit choice).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StorageView {
    /// `emptyDir`.
    #[serde(default)]
    pub empty_dir: Option<IgnoredAny>,
    /// `ephemeral`.
    #[serde(default)]
    pub ephemeral: Option<IgnoredAny>,
    /// `volumeClaimTemplate`.
    #[serde(default)]
    pub volume_claim_template: Option<IgnoredAny>,
}

impl StorageView {
    fn form(&self) -> &'static str {
        if self.volume_claim_template.is_some() {
            "volumeClaimTemplate"
        } else if self.ephemeral.is_some() {
            "ephemeral"
        } else if self.empty_dir.is_some() {
            "emptyDir"
        } else {
            "{}"
        }
    }
}

/// Decides for one CR of `kind`.
pub fn decide(
    req: &Request<'_>,
    object: &ObjectView<'_>,
    kind: CrKind,
    policy: &Policy,
) -> Decision {
    let ident = Ident::of(req);
    if !policy.targets.prometheus_operator {
        return Decision::skipped("policy targets.prometheusOperator is false");
    }
    let gate = match gate(&ident, object.metadata.as_ref(), policy, Vec::new()) {
        Ok(gate) => gate,
        Err(decision) => return decision,
    };
    let spec = object.spec.as_ref();
    if let Some(storage) = spec.and_then(|s| s.storage.as_ref()) {
        let form = storage.form();
        let d = Decision::unchanged(format!(
            "spec.storage is set ({form}): explicit choice respected"
        ));
        return if form == "emptyDir" {
            d.warn(format!(
                "kube-persist: {ident} keeps its data in emptyDir: it is lost when a pod restarts"
            ))
        } else {
            d
        };
    }
    if kind == CrKind::PrometheusAgent && spec.and_then(|s| s.mode.as_deref()) == Some("DaemonSet")
    {
        return Decision::skipped("PrometheusAgent in DaemonSet mode cannot have storage");
    }
    if req.operation == Operation::Update {
        let old_spec = req.old_object.as_ref().and_then(|o| o.spec.as_ref());
        if let (Some(old), Some(spec)) = (old_spec.filter(|o| o.storage.is_some()), spec) {
            return keep_old_storage(&ident, policy, old, spec);
        }
        if !(gate.adopt || policy.on_update == OnUpdate::Mutate) {
            return Decision::skipped(
                "UPDATE of an object without storage: adding it would restart every pod",
            )
            .warn(format!(
                "kube-persist: {ident} has no persistent storage; not added on UPDATE (restarts pods)"
            ))
            .warn(format!(
                "kube-persist: to add it, annotate {ident} with kube-persist.io/adopt=true"
            ));
        }
    }

    let storage = &gate.storage;
    let has = |f: fn(&SpecView<'_>) -> bool| spec.is_some_and(f);
    let retention_policy = policy.retention_policy == RetentionPolicy::Retain
        && kind.has_pvc_retention_policy()
        && !has(|s| s.persistent_volume_claim_retention_policy.is_some());
    let retention_size = (kind.has_retention_size()
        && policy.retention_size_ratio > 0.0
        && !has(|s| s.retention_size.is_some()))
    .then(|| {
        let limit = scaled(storage.size.bytes(), policy.retention_size_ratio);
        quantity::format_retention_size(limit)
    });
    let fields = [
        Some(("storage", storage_value(storage))),
        retention_policy.then(|| ("persistentVolumeClaimRetentionPolicy", retain_both())),
        retention_size.map(|size| ("retentionSize", Ok(Value::String(size)))),
    ];
    let fields = fields.into_iter().flatten();
    let patch = if spec.is_some() {
        fields
            .map(|(name, value)| patch::add(PointerBuf::from_tokens(["spec", name]), value?))
            .collect()
    } else {
        // No spec at all: one `add` of the whole object.
        fields
            .map(|(name, value)| Ok((name.to_string(), value?)))
            .collect::<Result<Map<_, _>, serde_json::Error>>()
            .and_then(|spec| Ok(vec![patch::add(PointerBuf::from_tokens(["spec"]), spec)?]))
    };
    let patch = match patch {
        Ok(operations) => Patch(operations),
        Err(e) => return Decision::error(format!("cannot build the patch: {e}")),
    };
    let what = format!("{} volume", storage.size.as_str());
    propose(&ident, policy, storage, patch, &what, "", gate.warnings)
}

/// `persistentVolumeClaimRetentionPolicy` keeping the claims on deletion and scale-down.
fn retain_both() -> Result<Value, serde_json::Error> {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct RetentionPolicy {
        when_deleted: &'static str,
        when_scaled: &'static str,
    }
    serde_json::to_value(RetentionPolicy {
        when_deleted: "Retain",
        when_scaled: "Retain",
    })
}

/// `spec.storage` with a claim template on `storage`.
fn storage_value(storage: &StorageSpec<'_>) -> Result<Value, serde_json::Error> {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Storage<'a> {
        volume_claim_template: Template<'a>,
    }
    #[derive(Serialize)]
    struct Template<'a> {
        spec: ClaimSpec<'a>,
    }
    serde_json::to_value(Storage {
        volume_claim_template: Template {
            spec: ClaimSpec::new(storage, &storage.size),
        },
    })
}

/// An UPDATE that drops `spec.storage` (e.g. server-side apply or `kubectl replace` of the
/// original manifest without it): removing storage would make the operator recreate the pods on
/// emptyDir, so the old storage is put back verbatim, with the `retentionSize` and
/// `persistentVolumeClaimRetentionPolicy` the same UPDATE dropped (those it sets are kept).
/// Setting `emptyDir` explicitly is the way to opt out.
fn keep_old_storage(
    ident: &Ident<'_>,
    policy: &Policy,
    old: &OldSpecView<'_>,
    new: &SpecView<'_>,
) -> Decision {
    let restored = [
        ("storage", old.storage),
        (
            "retentionSize",
            old.retention_size.filter(|_| new.retention_size.is_none()),
        ),
        (
            "persistentVolumeClaimRetentionPolicy",
            old.persistent_volume_claim_retention_policy
                .filter(|_| new.persistent_volume_claim_retention_policy.is_none()),
        ),
    ];
    // Copied verbatim: the API server sent them as JSON, so they are JSON.
    let patch = restored
        .into_iter()
        .filter_map(|(field, raw)| Some((field, raw?)))
        .map(|(field, raw)| {
            let value: Value = serde_json::from_str(raw.get())?;
            patch::add(PointerBuf::from_tokens(["spec", field]), value)
        })
        .collect::<Result<Vec<PatchOperation>, serde_json::Error>>();
    let patch = match patch {
        Ok(operations) => Patch(operations),
        Err(e) => return Decision::error(format!("cannot restore spec.storage: {e}")),
    };
    let (reason, warning, verdict): (_, _, fn(Change) -> Verdict) = match policy
        .mode_for(ident.namespace)
    {
        Mode::Enforce => (
            "restored spec.storage, which the UPDATE removed",
            format!(
                "kube-persist: kept the existing spec.storage of {ident} (this UPDATE removed it)"
            ),
            Verdict::Mutate,
        ),
        Mode::Audit => (
            "audit mode: would restore spec.storage, which the UPDATE removed",
            format!("kube-persist: audit mode, would keep the existing spec.storage of {ident}"),
            Verdict::WouldMutate,
        ),
    };
    Decision::of(verdict(Change {
        reason: reason.to_string(),
        patch,
        storage: None,
    }))
    .warn(warning)
}

/// `bytes * ratio`, rounded down, without going through floating point for large values.
fn scaled(bytes: u128, ratio: f64) -> u128 {
    let per_million = (ratio * 1_000_000.0).round() as u128;
    bytes / 1_000_000 * per_million + bytes % 1_000_000 * per_million / 1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ratio_scaling_rounds_down_exactly() {
        assert_eq!(scaled(100 << 30, 0.85), (100u128 << 30) * 85 / 100);
        assert_eq!(scaled(10, 0.5), 5);
        assert_eq!(scaled(1_000_001, 0.5), 500_000);
    }

    #[test]
    fn added_values_are_the_json_the_manifests_show() {
        let storage = StorageSpec {
            storage_class_name: "nfs".into(),
            size: std::borrow::Cow::Owned(crate::quantity::Quantity::parse("100Gi").unwrap()),
            access_modes: vec!["ReadWriteOnce".to_string()].into(),
            source: crate::policy::Source::Default,
        };
        assert_eq!(
            serde_json::to_string(&storage_value(&storage).unwrap()).unwrap(),
            r#"{"volumeClaimTemplate":{"spec":{"storageClassName":"nfs","accessModes":["ReadWriteOnce"],"resources":{"requests":{"storage":"100Gi"}}}}}"#
        );
        assert_eq!(
            retain_both().unwrap(),
            json!({ "whenDeleted": "Retain", "whenScaled": "Retain" })
        );
    }

    #[test]
    fn kinds_and_their_fields_follow_the_crds() {
        assert_eq!(CrKind::of("v1", "Prometheus"), Some(CrKind::Prometheus));
        assert_eq!(
            CrKind::of("v1alpha1", "PrometheusAgent"),
            Some(CrKind::PrometheusAgent)
        );
        assert_eq!(CrKind::of("v1", "PrometheusAgent"), None);
        assert_eq!(CrKind::of("v1", "ServiceMonitor"), None);
        assert!(!CrKind::ThanosRuler.has_pvc_retention_policy());
        assert!(CrKind::Alertmanager.has_pvc_retention_policy());
        assert!(!CrKind::PrometheusAgent.has_retention_size());
    }
}

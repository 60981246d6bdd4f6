//! Prometheus-Operator custom resources: `Prometheus`, `PrometheusAgent`, `Alertmanager` and
//! `ThanosRuler` all keep their data per `spec.storage`. Decides whether to add a
//! `volumeClaimTemplate` (and the protective extras the kind's CRD declares), and builds the
//! `add` operations. Never touches a CR that chose its storage.

use json_patch::jsonptr::{Pointer, PointerBuf};
use serde::{Deserialize, Serialize, de::IgnoredAny};

use super::{
    Change, Decision, Ident, Patch, Request, Verdict, gate,
    patch::{self, ClaimSpec},
    propose,
    view::{ObjectView, OldSpecView, Operation, SpecView},
};
use crate::{
    policy::{Mode, OnUpdate, Policy, RetentionPolicy},
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
    #[serde(default)]
    pub empty_dir: Option<IgnoredAny>,
    #[serde(default)]
    pub ephemeral: Option<IgnoredAny>,
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
    let additions = Additions {
        storage: Storage {
            volume_claim_template: Template {
                spec: ClaimSpec::new(storage, &storage.size),
            },
        },
        persistent_volume_claim_retention_policy: retention_policy.then_some(ClaimRetention {
            when_deleted: "Retain",
            when_scaled: "Retain",
        }),
        retention_size,
    };
    let patch = match add_to_spec(&additions, spec.is_some()) {
        Ok(patch) => patch,
        Err(e) => return Decision::error(format!("cannot build the patch: {e}")),
    };
    let what = [storage.size.as_str(), " volume"].concat();
    propose(&ident, policy, storage, patch, &what, "", gate.warnings)
}

/// The fields of `spec` a mutation adds, in the order they are added.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Additions<'a> {
    storage: Storage<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    persistent_volume_claim_retention_policy: Option<ClaimRetention>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retention_size: Option<String>,
}

/// `spec.storage`: a claim template on the policy's storage.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Storage<'a> {
    volume_claim_template: Template<'a>,
}

#[derive(Serialize)]
struct Template<'a> {
    spec: ClaimSpec<'a>,
}

/// `persistentVolumeClaimRetentionPolicy`: keep the claims on deletion and scale-down.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ClaimRetention {
    when_deleted: &'static str,
    when_scaled: &'static str,
}

/// A value the patch adds: the whole `spec`, or one of its fields.
#[derive(Serialize)]
#[serde(untagged)]
enum Added<'a> {
    Spec(&'a Additions<'a>),
    Storage(&'a Storage<'a>),
    RetentionPolicy(&'a ClaimRetention),
    RetentionSize(&'a str),
}

/// One `add` per field of `additions`, or a single `add` of the whole `spec` when the object has
/// none.
fn add_to_spec(additions: &Additions<'_>, has_spec: bool) -> Result<Patch, serde_json::Error> {
    if !has_spec {
        return Patch::new(&[patch::add(
            PointerBuf::from_tokens(["spec"]),
            Added::Spec(additions),
        )]);
    }
    let Additions {
        storage,
        persistent_volume_claim_retention_policy: retention_policy,
        retention_size,
    } = additions;
    // Checked when compiled: no escaping to do at run time.
    const STORAGE: &Pointer = Pointer::from_static("/spec/storage");
    const RETENTION_POLICY: &Pointer =
        Pointer::from_static("/spec/persistentVolumeClaimRetentionPolicy");
    const RETENTION_SIZE: &Pointer = Pointer::from_static("/spec/retentionSize");
    let mut ops = Vec::with_capacity(3);
    ops.push(patch::add(STORAGE.to_buf(), Added::Storage(storage)));
    if let Some(policy) = retention_policy {
        ops.push(patch::add(
            RETENTION_POLICY.to_buf(),
            Added::RetentionPolicy(policy),
        ));
    }
    if let Some(size) = retention_size {
        ops.push(patch::add(
            RETENTION_SIZE.to_buf(),
            Added::RetentionSize(size),
        ));
    }
    Patch::new(&ops)
}

/// An UPDATE that drops `spec.storage` (e.g. server-side apply or `kubectl replace` of the
/// original manifest without it): removing storage would make the operator recreate the pods on
/// emptyDir, so the old storage is put back as it was, with the `retentionSize` and
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
    // Copied as the API server sent them.
    let operations: Vec<_> = restored
        .into_iter()
        .filter_map(|(field, raw)| Some(patch::add(PointerBuf::from_tokens(["spec", field]), raw?)))
        .collect();
    let patch = match Patch::new(&operations) {
        Ok(patch) => patch,
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
    use crate::policy::StorageSpec;

    #[test]
    fn ratio_scaling_rounds_down_exactly() {
        assert_eq!(scaled(100 << 30, 0.85), (100u128 << 30) * 85 / 100);
        assert_eq!(scaled(10, 0.5), 5);
        assert_eq!(scaled(1_000_001, 0.5), 500_000);
    }

    #[test]
    fn additions_are_one_add_per_field_or_the_whole_spec() {
        let storage = StorageSpec {
            storage_class_name: "nfs".into(),
            size: std::borrow::Cow::Owned(crate::quantity::Quantity::parse("100Gi").unwrap()),
            access_modes: vec!["ReadWriteOnce".to_string()].into(),
            source: crate::policy::Source::Default,
        };
        let additions = Additions {
            storage: Storage {
                volume_claim_template: Template {
                    spec: ClaimSpec::new(&storage, &storage.size),
                },
            },
            persistent_volume_claim_retention_policy: Some(ClaimRetention {
                when_deleted: "Retain",
                when_scaled: "Retain",
            }),
            retention_size: None,
        };
        let claim = r#"{"volumeClaimTemplate":{"spec":{"storageClassName":"nfs","accessModes":["ReadWriteOnce"],"resources":{"requests":{"storage":"100Gi"}}}}}"#;
        let retain = r#"{"whenDeleted":"Retain","whenScaled":"Retain"}"#;
        assert_eq!(
            serde_json::to_string(&add_to_spec(&additions, true).unwrap()).unwrap(),
            format!(
                r#"[{{"op":"add","path":"/spec/storage","value":{claim}}},{{"op":"add","path":"/spec/persistentVolumeClaimRetentionPolicy","value":{retain}}}]"#
            )
        );
        assert_eq!(
            serde_json::to_string(&add_to_spec(&additions, false).unwrap()).unwrap(),
            format!(
                r#"[{{"op":"add","path":"/spec","value":{{"storage":{claim},"persistentVolumeClaimRetentionPolicy":{retain}}}}}]"#
            )
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

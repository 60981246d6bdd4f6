//! Whether a target object keeps its data on something that does not survive a pod restart.
//!
//! Facts about the object as written, not decisions: what the webhook would do about it always
//! comes from the engine ([`super::engine`]). `mutate --check` and `scan` combine the two: an
//! object is at risk when the engine would add storage, or when it lacks persistent storage and
//! the engine does not skip it (skipping is how an object, a namespace or the policy opts out).

use std::fmt;

use serde_json::Value;

use crate::{
    admission::{Outcome, Target},
    policy::Policy,
};

/// Where an object's data lives instead of a persistent volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gap {
    /// A custom resource without `spec.storage`: the operator uses an emptyDir.
    NoStorage,
    /// A custom resource with `spec.storage.emptyDir`, or `spec.storage: {}` (also an emptyDir).
    EmptyDir,
    /// A StatefulSet without `volumeClaimTemplates` whose containers mount these disk-backed
    /// emptyDir volumes.
    EmptyDirVolumes(Vec<String>),
}

impl fmt::Display for Gap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Gap::NoStorage => f.write_str("no spec.storage: data in an emptyDir"),
            Gap::EmptyDir => f.write_str("spec.storage is an emptyDir"),
            Gap::EmptyDirVolumes(names) => {
                write!(
                    f,
                    "no volumeClaimTemplates: data in emptyDir {}",
                    names.join(", ")
                )
            }
        }
    }
}

/// The gap of `object` (a `target`), if it has one. StatefulSet volumes whose names the policy
/// excludes (`statefulSets.excludeVolumeNames`, e.g. `tmp`) and `medium: Memory` volumes are
/// scratch space, not data.
pub fn of(target: Target, object: &Value, policy: &Policy) -> Option<Gap> {
    let spec = object.get("spec");
    match target {
        Target::Cr(_) => match spec.and_then(|s| s.get("storage")) {
            None | Some(Value::Null) => Some(Gap::NoStorage),
            Some(storage) => {
                let has = |field: &str| storage.get(field).is_some_and(|v| !v.is_null());
                (!has("volumeClaimTemplate") && !has("ephemeral")).then_some(Gap::EmptyDir)
            }
        },
        Target::StatefulSet => {
            let claims = spec
                .and_then(|s| s.get("volumeClaimTemplates"))
                .and_then(Value::as_array);
            if claims.is_some_and(|c| !c.is_empty()) {
                return None;
            }
            let pod = spec.and_then(|s| s.pointer("/template/spec"))?;
            let mounted = |name: &str| {
                ["containers", "initContainers"]
                    .iter()
                    .filter_map(|field| pod.get(*field).and_then(Value::as_array))
                    .flatten()
                    .filter_map(|c| c.get("volumeMounts").and_then(Value::as_array))
                    .flatten()
                    .any(|m| m.get("name").and_then(Value::as_str) == Some(name))
            };
            let names: Vec<String> = pod
                .get("volumes")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|v| {
                    let empty_dir = v.get("emptyDir")?;
                    let name = v.get("name")?.as_str()?;
                    let memory = empty_dir.get("medium").and_then(Value::as_str) == Some("Memory");
                    let data =
                        !memory && !policy.stateful_sets.is_excluded_volume(name) && mounted(name);
                    data.then(|| name.to_string())
                })
                .collect();
            (!names.is_empty()).then_some(Gap::EmptyDirVolumes(names))
        }
    }
}

/// Whether an object is at risk: the engine would add storage (`proposes`), or it has a `gap`
/// and the engine's CREATE decision (`create_outcome`) did not skip it.
pub fn at_risk(gap: Option<&Gap>, proposes: bool, create_outcome: Outcome) -> bool {
    proposes || (gap.is_some() && create_outcome != Outcome::Skipped)
}

/// `spec.replicas`, defaulting to 1 as the API server and the operator do.
pub fn replicas(object: &Value) -> i64 {
    object
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::CrKind;
    use serde_json::json;

    fn cr(spec: Value) -> Option<Gap> {
        of(
            Target::Cr(CrKind::Prometheus),
            &json!({"spec": spec}),
            &Policy::default(),
        )
    }

    fn sts(spec: Value) -> Option<Gap> {
        of(
            Target::StatefulSet,
            &json!({"spec": spec}),
            &Policy::default(),
        )
    }

    #[test]
    fn custom_resources_without_a_claim_or_ephemeral_volume_have_a_gap() {
        assert_eq!(cr(json!({})), Some(Gap::NoStorage));
        assert_eq!(cr(json!({"storage": null})), Some(Gap::NoStorage));
        assert_eq!(cr(json!({"storage": {}})), Some(Gap::EmptyDir));
        assert_eq!(
            cr(json!({"storage": {"emptyDir": {}}})),
            Some(Gap::EmptyDir)
        );
        assert_eq!(
            cr(json!({"storage": {"volumeClaimTemplate": {"spec": {}}}})),
            None
        );
        assert_eq!(cr(json!({"storage": {"ephemeral": {}}})), None);
        assert_eq!(
            of(
                Target::Cr(CrKind::Alertmanager),
                &json!({}),
                &Policy::default()
            ),
            Some(Gap::NoStorage)
        );
    }

    #[test]
    fn statefulsets_have_a_gap_for_mounted_disk_backed_data_empty_dirs() {
        let template = |volumes: Value| {
            json!({"template": {"spec": {
                "containers": [{"name": "db", "volumeMounts": [
                    {"name": "data", "mountPath": "/data"},
                    {"name": "tmp", "mountPath": "/tmp"},
                    {"name": "shm", "mountPath": "/dev/shm"}]}],
                "volumes": volumes}}})
        };
        let gap = sts(template(json!([
            {"name": "data", "emptyDir": {}},
            {"name": "tmp", "emptyDir": {}},
            {"name": "shm", "emptyDir": {"medium": "Memory"}},
            {"name": "unmounted", "emptyDir": {}},
            {"name": "config", "configMap": {"name": "c"}},
        ])));
        assert_eq!(gap, Some(Gap::EmptyDirVolumes(vec!["data".to_string()])));
        assert_eq!(
            gap.unwrap().to_string(),
            "no volumeClaimTemplates: data in emptyDir data"
        );
        assert_eq!(
            sts(template(json!([{"name": "tmp", "emptyDir": {}}]))),
            None
        );
        let mut with_claims = template(json!([{"name": "data", "emptyDir": {}}]));
        with_claims["volumeClaimTemplates"] = json!([{"metadata": {"name": "x"}}]);
        assert_eq!(sts(with_claims), None);
        assert_eq!(sts(json!({})), None);
    }

    #[test]
    fn skipped_objects_are_not_at_risk_but_proposals_always_are() {
        let gap = Some(Gap::NoStorage);
        assert!(at_risk(gap.as_ref(), false, Outcome::Unchanged));
        assert!(at_risk(gap.as_ref(), false, Outcome::Invalid));
        assert!(!at_risk(gap.as_ref(), false, Outcome::Skipped));
        assert!(at_risk(None, true, Outcome::Mutated));
        assert!(!at_risk(None, false, Outcome::Unchanged));
    }

    #[test]
    fn replicas_default_to_one() {
        assert_eq!(replicas(&json!({"spec": {"replicas": 3}})), 3);
        assert_eq!(replicas(&json!({"spec": {}})), 1);
    }
}

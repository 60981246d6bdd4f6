//! One object through the admission engine, exactly as the webhook sees it.
//!
//! `mutate` and `scan` never decide anything themselves: for each object they build the
//! AdmissionReview body the API server would send, call [`admission::review`] and apply the
//! returned patch with `json_patch`. This module builds that body and reads the answer; it holds
//! no policy rule.

use serde_json::Value;

use crate::{
    admission::{self, Decision, Ident, Operation, ReviewBody, Target, Verdict},
    cli::OperationArg,
    policy::Policy,
};

/// User name of the synthetic requests (it appears in the engine's audit fields).
pub const OFFLINE_USER: &str = "kube-persist-offline";

/// A few built-in cluster-scoped kinds, so that they are not shown in a namespace. Every target
/// kind is namespaced; for other kinds the namespace only affects how they are displayed.
const CLUSTER_SCOPED: &[&str] = &[
    "APIService",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "MutatingWebhookConfiguration",
    "Namespace",
    "Node",
    "PersistentVolume",
    "PriorityClass",
    "StorageClass",
    "ValidatingWebhookConfiguration",
];

/// `apiVersion` and `kind` of a manifest, split as the review's `kind` field wants them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeMeta {
    /// API group (`""` for the core group).
    pub group: String,
    pub version: String,
    pub kind: String,
}

impl TypeMeta {
    /// Reads `apiVersion` and `kind` of `object`; `None` when either is missing or not a string.
    pub fn of(object: &Value) -> Option<TypeMeta> {
        let api_version = object.get("apiVersion")?.as_str()?;
        let kind = object.get("kind")?.as_str()?;
        if api_version.is_empty() || kind.is_empty() {
            return None;
        }
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        Some(TypeMeta {
            group: group.to_string(),
            version: version.to_string(),
            kind: kind.to_string(),
        })
    }

    pub fn target(&self) -> Option<Target> {
        Target::of(&self.group, &self.version, &self.kind)
    }
}

/// What the engine answered for one object.
#[derive(Debug, Clone)]
pub struct Decided {
    /// `Kind namespace/name`, as the engine names the object in its warnings.
    pub ident: String,
    pub decision: Decision,
}

impl Decided {
    /// The patch the webhook returns: only when it mutates (not in audit mode).
    pub fn patch(&self) -> Option<&admission::Patch> {
        match &self.decision.verdict {
            Verdict::Mutate(change) => Some(&change.patch),
            _ => None,
        }
    }

    /// Whether the webhook changes, or in audit mode would change, the object.
    pub fn changes(&self) -> bool {
        self.decision.change().is_some()
    }
}

/// The engine refused the synthetic review: a bug in this module, never a property of the input.
#[derive(Debug, thiserror::Error)]
#[error("internal error: the admission engine rejected the synthetic review: {0}")]
pub struct SyntheticReviewError(#[from] admission::ReviewError);

/// Decides `object` (of type `meta`) as the webhook would for `operation`.
///
/// `uid` identifies the request (e.g. `offline-<file>-<index>`); `default_namespace` is used
/// when the object sets none, as `kubectl apply -n` would.
pub fn decide(
    object: &Value,
    meta: &TypeMeta,
    operation: OperationArg,
    uid: &str,
    default_namespace: &str,
    policy: &Policy,
) -> Result<Decided, SyntheticReviewError> {
    let body = review_body(object, meta, operation, uid, default_namespace);
    let reviewed = admission::review(&body, policy)?;
    let ident = Ident::of(&reviewed.request).to_string();
    Ok(Decided {
        ident,
        decision: reviewed.decision,
    })
}

/// The AdmissionReview body the API server would send for `object`.
pub fn review_body(
    object: &Value,
    meta: &TypeMeta,
    operation: OperationArg,
    uid: &str,
    default_namespace: &str,
) -> Vec<u8> {
    let body = ReviewBody::new(object)
        .kind(&meta.group, &meta.version, &meta.kind)
        .uid(uid)
        .user(OFFLINE_USER, &[]);
    let body = match object
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
    {
        Some(ns) if !ns.is_empty() => body,
        _ if CLUSTER_SCOPED.contains(&meta.kind.as_str()) => body.namespace(None),
        _ => body.namespace(Some(default_namespace)),
    };
    match operation {
        OperationArg::Create => body.to_vec(),
        OperationArg::Update => body
            .operation(Operation::Update)
            .old_object(object)
            .to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn type_meta_splits_group_and_version() {
        let t = TypeMeta::of(&json!({"apiVersion": "apps/v1", "kind": "StatefulSet"})).unwrap();
        assert_eq!((t.group.as_str(), t.version.as_str()), ("apps", "v1"));
        assert_eq!(t.target(), Some(Target::StatefulSet));
        let t = TypeMeta::of(&json!({"apiVersion": "v1", "kind": "ConfigMap"})).unwrap();
        assert_eq!((t.group.as_str(), t.version.as_str()), ("", "v1"));
        assert_eq!(t.target(), None);
        assert!(TypeMeta::of(&json!({"kind": "ConfigMap"})).is_none());
        assert!(TypeMeta::of(&json!({"apiVersion": 1, "kind": "ConfigMap"})).is_none());
    }

    #[test]
    fn the_body_is_an_admission_review_with_defaulted_namespace() {
        let object = json!({"apiVersion": "monitoring.coreos.com/v1", "kind": "Prometheus",
            "metadata": {"name": "k8s"}, "spec": {}});
        let meta = TypeMeta::of(&object).unwrap();
        let body = review_body(&object, &meta, OperationArg::Update, "offline-a-1", "team");
        let review: Value = serde_json::from_slice(&body).unwrap();
        let request = &review["request"];
        assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(request["uid"], "offline-a-1");
        assert_eq!(
            request["kind"],
            json!({"group": "monitoring.coreos.com", "version": "v1", "kind": "Prometheus"})
        );
        assert_eq!(request["namespace"], "team");
        assert_eq!(request["name"], "k8s");
        assert_eq!(request["operation"], "UPDATE");
        assert_eq!(request["userInfo"]["username"], OFFLINE_USER);
        assert_eq!(request["object"], object);
        assert_eq!(request["oldObject"], object);
    }

    #[test]
    fn cluster_scoped_kinds_get_no_namespace() {
        let object = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}});
        let meta = TypeMeta::of(&object).unwrap();
        let review: Value = serde_json::from_slice(&review_body(
            &object,
            &meta,
            OperationArg::Create,
            "u",
            "default",
        ))
        .unwrap();
        assert!(review["request"].get("namespace").is_none());
        assert!(review["request"].get("oldObject").is_none());
    }

    #[test]
    fn a_prometheus_without_storage_is_mutated_by_the_engine() {
        let object = json!({"apiVersion": "monitoring.coreos.com/v1", "kind": "Prometheus",
            "metadata": {"name": "k8s", "namespace": "monitoring"}, "spec": {"replicas": 2}});
        let meta = TypeMeta::of(&object).unwrap();
        let decided = decide(
            &object,
            &meta,
            OperationArg::Create,
            "u",
            "default",
            &Policy::default(),
        )
        .unwrap();
        assert_eq!(decided.ident, "Prometheus monitoring/k8s");
        assert_eq!(decided.decision.outcome(), admission::Outcome::Mutated);
        assert!(decided.changes());
        assert!(decided.patch().is_some());
    }
}

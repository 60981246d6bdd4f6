//! AdmissionReview request bodies, as the API server sends them: the one builder the offline
//! commands, the tests and the benchmarks use, so that they all ask the engine the same way the
//! webhook is asked. Only the fields the engine and the audit record read are written.

use serde::Serialize;
use serde_json::Value;

use super::Operation;

/// The uid of a body unless [`ReviewBody::uid`] sets one.
pub const DEFAULT_UID: &str = "705ab4f5-6393-11e8-b7cc-42010a800002";

/// An `admission.k8s.io/v1` AdmissionReview request for one object.
///
/// [`ReviewBody::new`] reads the kind from the object's `apiVersion` and `kind`, and the name
/// and namespace from its `metadata`; the other methods change one field each:
///
/// ```
/// use kube_persist::admission::{Operation, ReviewBody};
/// let object = serde_json::json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
///     "metadata": {"name": "db", "namespace": "team-a"}, "spec": {}});
/// let body = ReviewBody::new(&object)
///     .operation(Operation::Update)
///     .old_object(&object)
///     .user("alice", &["system:authenticated"])
///     .to_vec();
/// let review: serde_json::Value = serde_json::from_slice(&body).unwrap();
/// assert_eq!(review["request"]["kind"]["group"], "apps");
/// assert_eq!(review["request"]["namespace"], "team-a");
/// ```
#[derive(Debug, Clone)]
pub struct ReviewBody<'a> {
    object: &'a Value,
    old_object: Option<&'a Value>,
    operation: Operation,
    uid: &'a str,
    kind: [&'a str; 3],
    name: Option<&'a str>,
    namespace: Option<&'a str>,
    username: &'a str,
    groups: &'a [&'a str],
    dry_run: bool,
}

impl<'a> ReviewBody<'a> {
    /// A CREATE of `object` with uid [`DEFAULT_UID`], by a user without name or groups.
    pub fn new(object: &'a Value) -> Self {
        let text = |v: Option<&'a Value>| v.and_then(Value::as_str).filter(|s| !s.is_empty());
        let api_version = text(object.get("apiVersion")).unwrap_or("");
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let metadata = object.get("metadata");
        ReviewBody {
            object,
            old_object: None,
            operation: Operation::Create,
            uid: DEFAULT_UID,
            kind: [group, version, text(object.get("kind")).unwrap_or("")],
            name: text(metadata.and_then(|m| m.get("name"))),
            namespace: text(metadata.and_then(|m| m.get("namespace"))),
            username: "",
            groups: &[],
            dry_run: false,
        }
    }

    /// The operation (CREATE unless set).
    pub fn operation(self, operation: Operation) -> Self {
        ReviewBody { operation, ..self }
    }

    /// The object before an UPDATE.
    pub fn old_object(self, old_object: &'a Value) -> Self {
        ReviewBody {
            old_object: Some(old_object),
            ..self
        }
    }

    pub fn uid(self, uid: &'a str) -> Self {
        ReviewBody { uid, ..self }
    }

    /// Group, version and kind, instead of the object's own.
    pub fn kind(self, group: &'a str, version: &'a str, kind: &'a str) -> Self {
        ReviewBody {
            kind: [group, version, kind],
            ..self
        }
    }

    /// The request's namespace, instead of the object's; `None` leaves the field out, as for a
    /// cluster-scoped object.
    pub fn namespace(self, namespace: Option<&'a str>) -> Self {
        ReviewBody { namespace, ..self }
    }

    pub fn user(self, username: &'a str, groups: &'a [&'a str]) -> Self {
        ReviewBody {
            username,
            groups,
            ..self
        }
    }

    pub fn dry_run(self, dry_run: bool) -> Self {
        ReviewBody { dry_run, ..self }
    }

    /// The body as JSON bytes.
    pub fn to_vec(&self) -> Vec<u8> {
        let [group, version, kind] = self.kind;
        let review = ReviewIn {
            api_version: "admission.k8s.io/v1",
            kind: "AdmissionReview",
            request: RequestIn {
                uid: self.uid,
                kind: KindIn {
                    group,
                    version,
                    kind,
                },
                name: self.name,
                namespace: self.namespace,
                operation: self.operation.as_str(),
                user_info: UserIn {
                    username: self.username,
                    groups: self.groups,
                },
                object: self.object,
                old_object: self.old_object,
                dry_run: self.dry_run,
            },
        };
        // A `Value` and plain strings: serialization cannot fail.
        serde_json::to_vec(&review).unwrap_or_default()
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReviewIn<'a> {
    api_version: &'static str,
    kind: &'static str,
    request: RequestIn<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RequestIn<'a> {
    uid: &'a str,
    kind: KindIn<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<&'a str>,
    operation: &'static str,
    user_info: UserIn<'a>,
    object: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    old_object: Option<&'a Value>,
    dry_run: bool,
}

#[derive(Serialize)]
struct KindIn<'a> {
    group: &'a str,
    version: &'a str,
    kind: &'a str,
}

#[derive(Serialize)]
struct UserIn<'a> {
    username: &'a str,
    groups: &'a [&'a str],
}

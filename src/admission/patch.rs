//! JSON Patch (RFC 6902) operations: only `add` and `remove`, parents added before children,
//! pointers built from tokens by `jsonptr` (which escapes `/` and `~` in
//! names). Nothing here ever re-serializes the request object, so fields unknown to us cannot
//! turn into removals.
//!
//! The values the engine adds are typed: [`ClaimSpec`] is the one PersistentVolumeClaim spec
//! that both a Prometheus-Operator `volumeClaimTemplate` and a StatefulSet claim template carry.

use json_patch::jsonptr::PointerBuf;
use serde::Serialize;

use crate::{policy::StorageSpec, quantity::Quantity};

/// A JSON Patch, kept as the JSON array it serializes to: written once, from typed
/// [`Operation`]s, and copied into the response and the audit line (building, serializing twice
/// and dropping a `serde_json::Value` tree per review cost a fifth of a review's instructions).
#[derive(Debug, Clone)]
pub struct Patch(String);

/// One operation; `V` is the type of the values the patch adds (an enum of the engine's typed
/// values, or `&RawValue` for values copied from the request), so the whole patch is written in
/// one pass.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Operation<V> {
    /// `add` of `value` at `path`.
    Add { path: PointerBuf, value: V },
    /// `remove` of `path`.
    Remove { path: PointerBuf },
}

/// `add` of `value` at `path`.
pub fn add<V>(path: PointerBuf, value: V) -> Operation<V> {
    Operation::Add { path, value }
}

/// `remove` of `path`.
pub fn remove<V>(path: PointerBuf) -> Operation<V> {
    Operation::Remove { path }
}

impl Patch {
    /// The patch of `operations`, in order.
    pub fn new<V: Serialize>(operations: &[Operation<V>]) -> Result<Patch, serde_json::Error> {
        let mut json = Vec::with_capacity(512);
        crate::json::write(&mut json, operations)?;
        String::from_utf8(json)
            .map(Patch)
            .map_err(serde::ser::Error::custom)
    }

    /// The JSON array of the operations.
    pub fn json(&self) -> &str {
        &self.0
    }

    /// Whether the patch has no operation.
    pub fn is_empty(&self) -> bool {
        self.json() == "[]"
    }

    /// The operations as `json_patch` values, to apply them to a document with
    /// `json_patch::patch`.
    pub fn to_json_patch(&self) -> Result<json_patch::Patch, serde_json::Error> {
        serde_json::from_str(self.json())
    }
}

impl Serialize for Patch {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        crate::json::Raw(&self.0).serialize(serializer)
    }
}

impl PartialEq for Patch {
    fn eq(&self, other: &Self) -> bool {
        self.json() == other.json()
    }
}

/// The spec of a claim kube-persist adds: class, access modes and size, in the order the
/// manifests it writes show them.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ClaimSpec<'a> {
    storage_class_name: &'a str,
    access_modes: &'a [String],
    resources: Resources<'a>,
}

#[derive(Debug, Serialize)]
struct Resources<'a> {
    requests: Requests<'a>,
}

#[derive(Debug, Serialize)]
struct Requests<'a> {
    storage: &'a str,
}

impl<'a> ClaimSpec<'a> {
    /// A claim of `size` on the class and access modes of `storage`.
    pub(crate) fn new(storage: &'a StorageSpec<'_>, size: &'a Quantity) -> Self {
        ClaimSpec {
            storage_class_name: &storage.storage_class_name,
            access_modes: &storage.access_modes,
            resources: Resources {
                requests: Requests {
                    storage: size.as_str(),
                },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn operations_serialize_as_rfc6902_with_escaped_pointers() {
        let mut volume = PointerBuf::from_tokens(["spec", "volumes"]);
        volume.push_back(2);
        let patch = Patch::new(&[
            add(
                PointerBuf::from_tokens(["spec", "storage"]),
                json!({"a": 1}),
            ),
            remove(volume),
            add(PointerBuf::from_tokens(["x~/y", "-"]), json!("v")),
        ])
        .unwrap();
        assert_eq!(
            serde_json::to_value(&patch).unwrap(),
            json!([
                {"op": "add", "path": "/spec/storage", "value": {"a": 1}},
                {"op": "remove", "path": "/spec/volumes/2"},
                {"op": "add", "path": "/x~0~1y/-", "value": "v"}
            ])
        );
        let applied = patch.to_json_patch().unwrap();
        assert_eq!(
            serde_json::to_value(&applied).unwrap(),
            serde_json::to_value(&patch).unwrap()
        );
    }

    #[test]
    fn a_claim_spec_names_class_modes_and_size() {
        let storage = StorageSpec {
            storage_class_name: "nfs \"client\"".into(),
            size: std::borrow::Cow::Owned(Quantity::parse("100Gi").unwrap()),
            access_modes: vec!["ReadWriteOnce".to_string(), "ReadWriteMany".to_string()].into(),
            source: crate::policy::Source::Default,
        };
        let size = Quantity::parse("200Gi").unwrap();
        assert_eq!(
            serde_json::to_string(&ClaimSpec::new(&storage, &size)).unwrap(),
            r#"{"storageClassName":"nfs \"client\"","accessModes":["ReadWriteOnce","ReadWriteMany"],"resources":{"requests":{"storage":"200Gi"}}}"#
        );
    }
}

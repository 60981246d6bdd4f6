//! Helpers shared by the engine's unit tests.

use base64::Engine as _;
use serde_json::Value;

use json_patch::PatchOperation;

use super::Decision;

/// `add /path` / `remove /path` for each operation, in order.
pub(crate) fn paths(d: &Decision) -> Vec<String> {
    let patch = d.patch().map(|p| p.to_json_patch().unwrap());
    patch
        .iter()
        .flat_map(|p| &p.0)
        .map(|op| match op {
            PatchOperation::Add(a) => format!("add {}", a.path),
            PatchOperation::Remove(r) => format!("remove {}", r.path),
            other => format!("{other:?}"),
        })
        .collect()
}

/// Applies the response's patch to `object`, as the API server would.
pub(crate) fn apply(object: &Value, response: &Value) -> Value {
    let mut doc = object.clone();
    if let Some(p) = response["response"]["patch"].as_str() {
        let bytes = base64::engine::general_purpose::STANDARD.decode(p).unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
        json_patch::patch(&mut doc, &patch).unwrap();
    }
    doc
}

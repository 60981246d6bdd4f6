//! Helpers shared by the engine's unit tests.

use base64::Engine as _;
use serde_json::Value;

use super::{Decision, patch::Operation};

/// `add /path` / `remove /path` for each operation, in order.
pub(crate) fn paths(d: &Decision) -> Vec<String> {
    d.patch()
        .map_or(&[][..], |p| &p.0)
        .iter()
        .map(|op| match op {
            Operation::Add { path, .. } => format!("add {path}"),
            Operation::Remove { path } => format!("remove {path}"),
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

//! JSON Patch (RFC 6902) operations built by hand: only `add` and `remove`, pointers built from
//! tokens (so `/` and `~` in names are escaped), parents added before children. Nothing here
//! ever re-serializes the request object, so fields unknown to us cannot turn into removals.

use json_patch::{
    AddOperation, PatchOperation, RemoveOperation,
    jsonptr::{PointerBuf, Token},
};
use serde_json::Value;

/// A JSON pointer from unescaped tokens (`["spec", "storage"]` -> `/spec/storage`).
pub fn pointer<'t, I, T>(tokens: I) -> PointerBuf
where
    I: IntoIterator<Item = T>,
    T: Into<Token<'t>>,
{
    PointerBuf::from_tokens(tokens)
}

/// `add` of `value` at `path`.
pub fn add(path: PointerBuf, value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation { path, value })
}

/// `remove` of `path`.
pub fn remove(path: PointerBuf) -> PatchOperation {
    PatchOperation::Remove(RemoveOperation { path })
}

/// Serializes operations as the JSON array the API server expects.
pub fn to_json(ops: &[PatchOperation]) -> Vec<u8> {
    // Serializing plain enums of strings and `Value`s cannot fail.
    serde_json::to_vec(ops).unwrap_or_else(|_| b"[]".to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pointers_escape_slash_and_tilde() {
        assert_eq!(pointer(["spec", "storage"]).as_str(), "/spec/storage");
        assert_eq!(
            pointer(["metadata", "annotations", "kube-persist.io/x~y"]).as_str(),
            "/metadata/annotations/kube-persist.io~1x~0y"
        );
    }

    #[test]
    fn operations_serialize_as_rfc6902() {
        let ops = [
            add(pointer(["spec", "storage"]), json!({"a": 1})),
            remove(pointer(["spec", "template", "spec", "volumes", "2"])),
        ];
        let text: Value = serde_json::from_slice(&to_json(&ops)).unwrap();
        assert_eq!(
            text,
            json!([
                {"op": "add", "path": "/spec/storage", "value": {"a": 1}},
                {"op": "remove", "path": "/spec/template/spec/volumes/2"}
            ])
        );
    }
}

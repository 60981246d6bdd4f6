//! Compact JSON written straight into a byte buffer, for the two documents every admission
//! request produces: the AdmissionReview response and the audit line.
//!
//! The output is byte for byte what `serde_json::to_writer` writes for the same values (the
//! tests compare the two); the difference is cost. serde_json checks every byte of every string
//! against its escape table one at a time, which made string escaping the largest single item
//! of a review after parsing. Here a string is first checked as a whole (a branch-free loop the
//! compiler vectorizes) and, as nearly always (names, pointers, base64), copied as it is; only
//! strings that do need escaping go through serde_json.

use json_patch::{AddOperation, PatchOperation, RemoveOperation};
use serde_json::Value;

/// Appends `s` as a JSON string.
pub(crate) fn str(out: &mut Vec<u8>, s: &str) {
    if needs_no_escape(s.as_bytes()) {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Writing a string to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

/// Appends `a`, `sep` and `b` as one JSON string (`"a/b"`), without joining them first.
pub(crate) fn str_pair(out: &mut Vec<u8>, a: &str, sep: char, b: &str) {
    let mut buf = [0; 4];
    let sep = sep.encode_utf8(&mut buf);
    if needs_no_escape(a.as_bytes())
        && needs_no_escape(sep.as_bytes())
        && needs_no_escape(b.as_bytes())
    {
        out.reserve(a.len() + sep.len() + b.len() + 2);
        out.push(b'"');
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(sep.as_bytes());
        out.extend_from_slice(b.as_bytes());
        out.push(b'"');
    } else {
        str(out, &format!("{a}{sep}{b}"));
    }
}

/// Appends `n`.
pub(crate) fn uint(out: &mut Vec<u8>, n: u64) {
    // Writing to a Vec cannot fail.
    let _ = std::io::Write::write_fmt(out, format_args!("{n}"));
}

/// Whether serde_json would write `bytes` without escapes: no control character, `"` or `\`
/// (it escapes nothing else).
fn needs_no_escape(bytes: &[u8]) -> bool {
    // No early exit, so the loop vectorizes; strings here are short.
    bytes
        .iter()
        .fold(true, |ok, &b| ok & (b >= 0x20) & (b != b'"') & (b != b'\\'))
}

/// Appends `b` as `true` or `false`.
pub(crate) fn bool(out: &mut Vec<u8>, b: bool) {
    out.extend_from_slice(if b { b"true" } else { b"false" });
}

/// Appends `v`.
pub(crate) fn value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::String(s) => str(out, s),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                value(out, item);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            out.push(b'{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                str(out, k);
                out.push(b':');
                value(out, item);
            }
            out.push(b'}');
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {
            let _ = serde_json::to_writer(&mut *out, v);
        }
    }
}

/// Appends the operations as an RFC 6902 JSON Patch array (as `json_patch` serializes them).
pub(crate) fn patch(out: &mut Vec<u8>, ops: &[PatchOperation]) {
    out.push(b'[');
    for (i, op) in ops.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        match op {
            PatchOperation::Add(AddOperation { path, value: v }) => {
                out.extend_from_slice(br#"{"op":"add","path":"#);
                str(out, path.as_str());
                out.extend_from_slice(br#","value":"#);
                value(out, v);
                out.push(b'}');
            }
            PatchOperation::Remove(RemoveOperation { path }) => {
                out.extend_from_slice(br#"{"op":"remove","path":"#);
                str(out, path.as_str());
                out.push(b'}');
            }
            // The engine emits only `add` and `remove`.
            other => {
                let _ = serde_json::to_writer(&mut *out, other);
            }
        }
    }
    out.push(b']');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::patch::{add, pointer, remove};
    use serde_json::json;

    fn via<T: ?Sized>(f: fn(&mut Vec<u8>, &T), v: &T) -> String {
        let mut out = Vec::new();
        f(&mut out, v);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn strings_match_serde_json_escaping() {
        let cases = [
            "",
            "plain",
            "kube-persist.io/x~y",
            "quote \" and backslash \\",
            "tab\tnewline\ncr\r nul\0 bell\u{7} del\u{7f}",
            "unicode: é ✓ 🚀 \u{2028}",
            "</script>",
        ];
        for s in cases {
            assert_eq!(via(str, s), serde_json::to_string(s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn pairs_and_numbers_match_serde_json() {
        for (a, b) in [("nfs-client", "100Gi"), ("we\"ird", "1\n"), ("", "")] {
            let mut out = Vec::new();
            str_pair(&mut out, a, '/', b);
            assert_eq!(out, serde_json::to_vec(&format!("{a}/{b}")).unwrap());
        }
        for n in [0, 7, 1234, u64::MAX] {
            let mut out = Vec::new();
            uint(&mut out, n);
            assert_eq!(out, serde_json::to_vec(&n).unwrap());
        }
    }

    #[test]
    fn values_and_patches_match_serde_json() {
        let v = json!({
            "s": "x\"y", "n": 1, "neg": -2, "f": 0.5, "big": 18446744073709551615u64,
            "t": true, "f2": false, "z": null, "a": [1, "two", [], {}, {"k\n": [null]}],
            "nested": {"volumeClaimTemplate": {"spec": {"accessModes": ["ReadWriteOnce"]}}},
        });
        assert_eq!(via(value, &v), serde_json::to_string(&v).unwrap());
        let ops = vec![
            add(pointer(["spec", "storage"]), v.clone()),
            remove(pointer(["spec", "template", "spec", "volumes", "0"])),
            add(pointer(["metadata", "annotations", "a/b~c\"d"]), json!("v")),
            PatchOperation::Test(json_patch::TestOperation {
                path: pointer(["spec"]),
                value: json!(1),
            }),
        ];
        assert_eq!(
            via(patch, ops.as_slice()),
            serde_json::to_string(&ops).unwrap()
        );
        assert_eq!(via(patch, &[][..]), "[]");
    }
}

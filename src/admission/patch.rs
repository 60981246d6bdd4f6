//! JSON Patch (RFC 6902) built by hand: only `add` and `remove`, pointers written from tokens
//! (so `/` and `~` in names are escaped), parents added before children. Nothing here ever
//! re-serializes the request object, so fields unknown to us cannot turn into removals.
//!
//! A [`Patch`] is its own serialization: each operation is written as JSON the moment it is
//! added, values included, so a review builds no `serde_json::Value` tree for the storage it
//! adds and serializes nothing twice. The response (base64) and the audit line copy the same
//! bytes. [`Patch::operations`] parses them back for the offline CLI and the tests.

use std::fmt;

use json_patch::PatchOperation;
use serde::{Serialize, Serializer};
use serde_json::value::RawValue;

use super::json;

/// One reference token of a JSON pointer, unescaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token<'a> {
    /// An object member name.
    Key(&'a str),
    /// An array index.
    Index(usize),
    /// `-`: past the end of an array (append).
    End,
}

/// A JSON Patch: the operations, serialized as the JSON array the API server expects.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Patch {
    /// `[op,op,...]`, or empty when there is no operation.
    json: Vec<u8>,
    len: usize,
}

/// The patch without operations, to lend out.
pub static EMPTY: Patch = Patch {
    json: Vec::new(),
    len: 0,
};

impl Patch {
    /// An empty patch.
    pub fn new() -> Patch {
        Patch::default()
    }

    /// The number of operations.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there is no operation.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The operations as a JSON array (`[]` when there are none).
    pub fn as_json(&self) -> &[u8] {
        if self.json.is_empty() {
            b"[]"
        } else {
            &self.json
        }
    }

    /// Appends `remove` of `path`.
    pub fn remove(&mut self, path: &[Token<'_>]) {
        let out = self.begin();
        out.extend_from_slice(br#"{"op":"remove","path":"#);
        pointer(out, path);
        self.end();
    }

    /// Appends `add` at `path` of the JSON value that `value` writes (exactly one value,
    /// compact; see [`json`]).
    pub fn add(&mut self, path: &[Token<'_>], value: impl FnOnce(&mut Vec<u8>)) {
        let out = self.begin();
        out.extend_from_slice(br#"{"op":"add","path":"#);
        pointer(out, path);
        out.extend_from_slice(br#","value":"#);
        value(out);
        self.end();
    }

    /// The operations, parsed back (for applying them to a document).
    pub fn operations(&self) -> Result<Vec<PatchOperation>, serde_json::Error> {
        serde_json::from_slice(self.as_json())
    }

    /// Opens the next operation: `[` or `,` in place of the closing `]`.
    fn begin(&mut self) -> &mut Vec<u8> {
        match self.json.last_mut() {
            Some(close) => *close = b',',
            None => {
                self.json.reserve(1024);
                self.json.push(b'[');
            }
        }
        &mut self.json
    }

    /// Closes the operation just written.
    fn end(&mut self) {
        self.json.extend_from_slice(b"}]");
        self.len += 1;
    }
}

impl fmt::Debug for Patch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(self.as_json()))
    }
}

/// Serializes as the JSON array itself (the audit record's `patch` field).
impl Serialize for Patch {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let raw: &RawValue =
            serde_json::from_slice(self.as_json()).map_err(serde::ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

/// Appends the JSON string of the pointer made of `path`.
fn pointer(out: &mut Vec<u8>, path: &[Token<'_>]) {
    let plain = path.iter().all(|t| match t {
        Token::Key(key) => plain_key(key),
        Token::Index(_) | Token::End => true,
    });
    if !plain {
        json::str(out, &pointer_text(path));
        return;
    }
    out.push(b'"');
    for token in path {
        out.push(b'/');
        match *token {
            Token::Key(key) => out.extend_from_slice(key.as_bytes()),
            Token::Index(i) => json::uint(out, i as u64),
            Token::End => out.push(b'-'),
        }
    }
    out.push(b'"');
}

/// Whether `key` goes into a pointer, and the pointer into a JSON string, as it is: no `~` or
/// `/` (which RFC 6901 escapes) and nothing JSON escapes. One pass over the bytes, without
/// branches (names are short; this runs for every operation).
fn plain_key(key: &str) -> bool {
    key.bytes().fold(true, |ok, b| {
        ok & (b >= 0x20) & (b != b'"') & (b != b'\\') & (b != b'~') & (b != b'/')
    })
}

/// The pointer made of `path` (RFC 6901: `~` as `~0`, `/` as `~1`).
pub fn pointer_text(path: &[Token<'_>]) -> String {
    let mut text = String::new();
    for token in path {
        text.push('/');
        match *token {
            Token::Key(key) => text.push_str(&key.replace('~', "~0").replace('/', "~1")),
            Token::Index(i) => text.push_str(&i.to_string()),
            Token::End => text.push('-'),
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use json_patch::jsonptr::PointerBuf;
    use serde_json::json;

    #[test]
    fn pointers_escape_slash_and_tilde_like_jsonptr() {
        let cases: [&[Token<'_>]; 4] = [
            &[Token::Key("spec"), Token::Key("storage")],
            &[
                Token::Key("metadata"),
                Token::Key("annotations"),
                Token::Key("kube-persist.io/x~y"),
            ],
            &[Token::Key("containers"), Token::Index(12), Token::End],
            &[Token::Key("we\"ird\n"), Token::Key("")],
        ];
        for path in cases {
            let expected = PointerBuf::from_tokens(path.iter().map(|t| match *t {
                Token::Key(k) => json_patch::jsonptr::Token::new(k),
                Token::Index(i) => json_patch::jsonptr::Token::from(i),
                Token::End => json_patch::jsonptr::Token::new("-"),
            }));
            assert_eq!(pointer_text(path), expected.as_str());
            let mut out = Vec::new();
            pointer(&mut out, path);
            assert_eq!(out, serde_json::to_vec(expected.as_str()).unwrap());
        }
    }

    #[test]
    fn operations_serialize_as_rfc6902() {
        let mut patch = Patch::new();
        assert_eq!(patch.as_json(), b"[]");
        assert!(patch.operations().unwrap().is_empty());
        patch.add(&[Token::Key("spec"), Token::Key("storage")], |out| {
            out.extend_from_slice(br#"{"a":1}"#)
        });
        patch.remove(&[Token::Key("spec"), Token::Key("volumes"), Token::Index(2)]);
        patch.add(&[Token::Key("x~/y")], |out| json::str(out, "v"));
        assert_eq!(patch.len(), 3);
        let text: serde_json::Value = serde_json::from_slice(patch.as_json()).unwrap();
        assert_eq!(
            text,
            json!([
                {"op": "add", "path": "/spec/storage", "value": {"a": 1}},
                {"op": "remove", "path": "/spec/volumes/2"},
                {"op": "add", "path": "/x~0~1y", "value": "v"}
            ])
        );
        // What json_patch reads back serializes to the same bytes.
        let ops = patch.operations().unwrap();
        assert_eq!(serde_json::to_vec(&ops).unwrap(), patch.as_json());
        assert_eq!(serde_json::to_vec(&patch).unwrap(), patch.as_json());
    }
}

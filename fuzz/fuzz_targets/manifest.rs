//! The manifest reader of `kube-persist mutate`: a byte stream cut into documents, each parsed,
//! and a parsed value written back as YAML.
//!
//! The same bytes are read three ways: as a `.yaml` file, as a `.json` file and as standard
//! input (JSON when the first character is `{`, else YAML). Checked:
//! - YAML: the documents' texts, concatenated, are the input (nothing lost, nothing added)
//!   when every document is UTF-8; line numbers add up; non-empty documents are numbered 1, 2, ...;
//! - JSON: every document is one JSON value, in order, and an error ends the stream;
//! - a parsed document rendered with `to_yaml` parses back to the same value.
#![no_main]

use std::io::{self, BufRead};

use kube_persist::commands::manifest::{Documents, Format, parse_yaml, to_yaml};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    for name in ["in.yaml", "in.json", "<stdin>"] {
        read(name, data);
    }
});

fn read(name: &str, data: &[u8]) {
    let reader: Box<dyn BufRead> = Box::new(io::Cursor::new(data.to_vec()));
    let Ok(documents) = Documents::new(name.to_string(), reader) else {
        return;
    };
    let json = !name.ends_with(".yaml") && {
        let text = data.strip_prefix(b"\xef\xbb\xbf").unwrap_or(data);
        text.trim_ascii_start().starts_with(b"{")
    };
    let mut texts = String::new();
    let mut all_read = true;
    // Unknown after a document that could not be read.
    let mut line = Some(1);
    // The number the next non-empty document gets; a document that cannot be read takes one.
    let mut last_index = 0;
    let mut json_error = false;
    for document in documents {
        assert!(!json_error, "{name}: a document after a JSON error");
        let document = match document {
            Ok(document) => document,
            Err(_) => {
                all_read = false;
                json_error = json;
                line = None;
                continue;
            }
        };
        match document.format {
            Format::Yaml => {
                assert!(!json, "{name}: a YAML document in a JSON stream");
                if let Some(line) = &mut line {
                    assert_eq!(document.first_line, *line, "{name}: line numbers");
                    *line += document.text.matches('\n').count();
                }
            }
            Format::Json => {
                assert!(json, "{name}: a JSON document in a YAML stream");
                assert!(
                    !document.text.is_empty() && document.text.trim_start() == document.text,
                    "{name}: a JSON document starts at its value"
                );
                let value: Result<Value, _> = serde_json::from_str(&document.text);
                // One whole value: serde_json refuses trailing characters, but cannot hold
                // every number the span reader skips over.
                if let Err(e) = &value {
                    assert!(
                        !e.is_syntax() && !e.is_eof(),
                        "{name}: the span {:?} is not one JSON value: {e}",
                        document.text
                    );
                }
            }
        }
        if let Some(index) = document.index {
            if all_read {
                assert_eq!(
                    index,
                    last_index + 1,
                    "{name}: documents are numbered in order"
                );
            } else {
                assert!(
                    index > last_index,
                    "{name}: documents are numbered in order"
                );
            }
            last_index = index;
        }
        texts.push_str(&document.text);
        if let Ok(value) = document.parse() {
            check_yaml_round_trip(&value);
        }
    }
    if !json && all_read {
        assert_eq!(
            texts.as_bytes(),
            data,
            "{name}: nothing lost, nothing added"
        );
    }
}

/// `to_yaml` writes what `parse_yaml` reads back.
fn check_yaml_round_trip(value: &Value) {
    let text = match to_yaml(value) {
        Ok(text) => text,
        Err(e) => panic!("cannot render {value}: {e}"),
    };
    match parse_yaml(&text) {
        Ok(back) => assert!(
            same(&back, value),
            "YAML round trip changed the value\nbefore: {value}\nafter:  {back}\ntext:\n{text}"
        ),
        Err((line, e)) => panic!("the rendered YAML does not parse (line {line:?}): {e}\n{text}"),
    }
}

/// Equal values; floats compared by value (1.0 and 1 are written alike).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            x == y || (x.as_f64().is_some() && x.as_f64() == y.as_f64())
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((kx, vx), (ky, vy))| kx == ky && same(vx, vy))
        }
        _ => a == b,
    }
}

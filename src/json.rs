//! The JSON writer for the two lines written per review, the AdmissionReview response and the
//! audit record: serde's data model written to a `Vec<u8>`, byte for byte what serde_json
//! writes (the tests below hold it to that).
//!
//! Why it exists: serde_json escapes every string one byte at a time, and that loop alone was
//! 11,300 of 148,000 instructions per 5 KB review (callgrind, release build). Here a string is
//! checked in one pass and, when it needs no escaping (nearly always), copied whole; the rare
//! string that does is handed to serde_json.

use std::{fmt, io::Write as _};

use serde::{
    Serialize,
    ser::{self, Impossible},
};
use serde_json::Error;

/// Appends `value` as compact JSON to `out`.
pub fn write<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) -> Result<(), Error> {
    value.serialize(&mut Writer { out, raw: false })
}

/// The name serde_json's `RawValue` serializes under, as a struct of one field that holds its
/// JSON text. A change in serde_json breaks the tests below, not the output.
const RAW_VALUE: &str = "$serde_json::private::RawValue";

/// JSON text written as it is, here and by serde_json: the way serde_json's `RawValue`
/// serializes, without the parse that makes a `RawValue` (for text this writer wrote).
#[derive(Debug)]
pub struct Raw<'a>(pub &'a str);

impl Serialize for Raw<'_> {
    fn serialize<S: ser::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use ser::SerializeStruct as _;
        let mut raw = serializer.serialize_struct(RAW_VALUE, 1)?;
        raw.serialize_field(RAW_VALUE, self.0)?;
        raw.end()
    }
}

struct Writer<'a> {
    out: &'a mut Vec<u8>,
    /// Strings are written as they are (the text of a `RawValue`).
    raw: bool,
}

/// Whether `text` goes into a JSON string as it is: no control character, quote or backslash.
fn plain(text: &[u8]) -> bool {
    // Every byte looked at, without an early exit: the compiler makes this a vector loop
    // (fewer instructions than `any` on these strings, callgrind).
    text.iter().fold(true, |plain, &b| {
        plain & (b >= 0x20 && b != b'"' && b != b'\\')
    })
}

/// Appends `s` as a JSON string.
fn write_str(out: &mut Vec<u8>, s: &str) -> Result<(), Error> {
    if plain(s.as_bytes()) {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        Ok(())
    } else {
        serde_json::to_writer(out, s)
    }
}

/// Numbers are written by serde_json (itoa and ryu, the same text).
macro_rules! numbers {
    ($($method:ident: $t:ty),*) => {$(
        fn $method(self, v: $t) -> Result<(), Error> {
            serde_json::to_writer(&mut *self.out, &v)
        }
    )*};
}

impl<'s, 'w> ser::Serializer for &'s mut Writer<'w> {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Compound<'s, 'w>;
    type SerializeTuple = Compound<'s, 'w>;
    type SerializeTupleStruct = Compound<'s, 'w>;
    type SerializeStruct = Compound<'s, 'w>;
    type SerializeTupleVariant = Impossible<(), Error>;
    type SerializeMap = Compound<'s, 'w>;
    type SerializeStructVariant = Impossible<(), Error>;

    numbers!(
        serialize_i8: i8, serialize_i16: i16, serialize_i32: i32, serialize_i64: i64,
        serialize_i128: i128, serialize_u8: u8, serialize_u16: u16, serialize_u32: u32,
        serialize_u64: u64, serialize_u128: u128, serialize_f32: f32, serialize_f64: f64
    );

    fn serialize_bool(self, v: bool) -> Result<(), Error> {
        self.out
            .extend_from_slice(if v { b"true" } else { b"false" });
        Ok(())
    }

    fn serialize_char(self, v: char) -> Result<(), Error> {
        self.serialize_str(v.encode_utf8(&mut [0; 4]))
    }

    fn serialize_str(self, v: &str) -> Result<(), Error> {
        if self.raw {
            self.out.extend_from_slice(v.as_bytes());
            Ok(())
        } else {
            write_str(self.out, v)
        }
    }

    fn collect_str<T: fmt::Display + ?Sized>(self, value: &T) -> Result<(), Error> {
        // Formatted straight into the line (a timestamp, typically), then checked.
        let start = self.out.len();
        self.out.push(b'"');
        write!(self.out, "{value}").map_err(Error::io)?;
        if plain(&self.out[start + 1..]) {
            self.out.push(b'"');
            Ok(())
        } else {
            self.out.truncate(start);
            write_str(self.out, &value.to_string())
        }
    }

    fn serialize_bytes(self, v: &[u8]) -> Result<(), Error> {
        ser::Serializer::collect_seq(self, v)
    }

    fn serialize_none(self) -> Result<(), Error> {
        self.serialize_unit()
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Error> {
        value.serialize(self)
    }

    fn serialize_unit(self) -> Result<(), Error> {
        self.out.extend_from_slice(b"null");
        Ok(())
    }

    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), Error> {
        self.serialize_unit()
    }

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), Error> {
        self.serialize_str(variant)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        self.out.push(b'{');
        write_str(self.out, variant)?;
        self.out.push(b':');
        value.serialize(&mut *self)?;
        self.out.push(b'}');
        Ok(())
    }

    fn serialize_seq(self, _len: Option<usize>) -> Result<Compound<'s, 'w>, Error> {
        self.out.push(b'[');
        Ok(Compound::new(self, Some(b']')))
    }

    fn serialize_tuple(self, len: usize) -> Result<Compound<'s, 'w>, Error> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        len: usize,
    ) -> Result<Compound<'s, 'w>, Error> {
        self.serialize_seq(Some(len))
    }

    fn serialize_struct(self, name: &'static str, _len: usize) -> Result<Compound<'s, 'w>, Error> {
        if name == RAW_VALUE {
            return Ok(Compound::new(self, None));
        }
        self.out.push(b'{');
        Ok(Compound::new(self, Some(b'}')))
    }

    fn serialize_tuple_variant(
        self,
        name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Impossible<(), Error>, Error> {
        Err(unsupported(name, variant))
    }

    fn serialize_map(self, _len: Option<usize>) -> Result<Compound<'s, 'w>, Error> {
        self.out.push(b'{');
        Ok(Compound::new(self, Some(b'}')))
    }

    fn serialize_struct_variant(
        self,
        name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Impossible<(), Error>, Error> {
        Err(unsupported(name, variant))
    }
}

/// The records written here have no enum variants with fields.
fn unsupported(what: &str, variant: &str) -> Error {
    ser::Error::custom(format_args!(
        "the JSON writer does not write {what} {variant}"
    ))
}

/// An array, an object, or a `RawValue`, being written.
struct Compound<'s, 'w> {
    writer: &'s mut Writer<'w>,
    /// `]` or `}`; `None` for a `RawValue`, whose one field is its text.
    close: Option<u8>,
    first: bool,
}

impl<'s, 'w> Compound<'s, 'w> {
    fn new(writer: &'s mut Writer<'w>, close: Option<u8>) -> Self {
        Compound {
            writer,
            close,
            first: true,
        }
    }

    fn comma(&mut self) {
        if !std::mem::take(&mut self.first) {
            self.writer.out.push(b',');
        }
    }

    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.comma();
        value.serialize(&mut *self.writer)
    }

    fn field<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<(), Error> {
        if self.close.is_none() {
            self.writer.raw = true;
            let written = value.serialize(&mut *self.writer);
            self.writer.raw = false;
            return written;
        }
        self.comma();
        // Field names are the records' own, none of which needs escaping; not looked at
        // byte by byte here (they are half the strings of a line).
        debug_assert!(plain(key.as_bytes()), "field name {key:?} needs escaping");
        let out = &mut *self.writer.out;
        out.reserve(key.len() + 3);
        out.push(b'"');
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\":");
        value.serialize(&mut *self.writer)
    }

    fn close(self) -> Result<(), Error> {
        self.writer.out.extend(self.close);
        Ok(())
    }
}

impl ser::SerializeSeq for Compound<'_, '_> {
    type Ok = ();
    type Error = Error;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.element(value)
    }

    fn end(self) -> Result<(), Error> {
        self.close()
    }
}

impl ser::SerializeTuple for Compound<'_, '_> {
    type Ok = ();
    type Error = Error;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.element(value)
    }

    fn end(self) -> Result<(), Error> {
        self.close()
    }
}

impl ser::SerializeTupleStruct for Compound<'_, '_> {
    type Ok = ();
    type Error = Error;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.element(value)
    }

    fn end(self) -> Result<(), Error> {
        self.close()
    }
}

impl ser::SerializeMap for Compound<'_, '_> {
    type Ok = ();
    type Error = Error;

    /// Keys from data (maps are rare here): any key serde_json writes as a string.
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Error> {
        self.comma();
        match serde_json::to_value(key)? {
            serde_json::Value::String(key) => write_str(self.writer.out, &key)?,
            other => {
                return Err(ser::Error::custom(format_args!(
                    "a map key must be a string, not {other}"
                )));
            }
        }
        self.writer.out.push(b':');
        Ok(())
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        value.serialize(&mut *self.writer)
    }

    fn end(self) -> Result<(), Error> {
        self.close()
    }
}

impl ser::SerializeStruct for Compound<'_, '_> {
    type Ok = ();
    type Error = Error;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        self.field(key, value)
    }

    fn skip_field(&mut self, _key: &'static str) -> Result<(), Error> {
        Ok(())
    }

    fn end(self) -> Result<(), Error> {
        self.close()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::value::RawValue;

    #[derive(Serialize)]
    #[serde(rename_all = "lowercase")]
    enum Kind {
        Mutated,
        Skipped,
    }

    #[derive(Serialize)]
    struct Id(u64);

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Inner<'a> {
        text: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        skipped_when_none: Option<&'a str>,
        tuple: (bool, char),
    }

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Record<'a> {
        #[serde(rename = "renamed-text")]
        text: String,
        maybe: Option<String>,
        list: Vec<String>,
        kinds: [Kind; 2],
        id: Id,
        signed: i64,
        ratio: f64,
        flag: bool,
        unit: (),
        raw: &'a RawValue,
        written: Raw<'a>,
        inner: Inner<'a>,
        empty: Vec<Inner<'a>>,
        bytes: &'a [u8],
        #[serde(serialize_with = "as_display")]
        shown: &'a str,
    }

    fn as_display<S: ser::Serializer>(text: &&str, out: S) -> Result<S::Ok, S::Error> {
        out.collect_str(text)
    }

    fn record_json(text: &str, n: i64, ratio: f64) -> (Vec<u8>, Vec<u8>) {
        let raw = serde_json::value::to_raw_value(&[text, "x"]).unwrap();
        let mut written = Vec::new();
        write(&mut written, &[text, "x"]).unwrap();
        let written = String::from_utf8(written).unwrap();
        let record = Record {
            text: text.to_string(),
            maybe: (n % 2 == 0).then(|| text.repeat(2)),
            list: vec![text.to_string(), String::new(), "plain".to_string()],
            kinds: [Kind::Mutated, Kind::Skipped],
            id: Id(n.unsigned_abs()),
            signed: n,
            ratio,
            flag: n > 0,
            unit: (),
            raw: &raw,
            written: Raw(&written),
            inner: Inner {
                text,
                skipped_when_none: (n % 3 == 0).then_some(text),
                tuple: (true, text.chars().next().unwrap_or('"')),
            },
            empty: Vec::new(),
            bytes: text.as_bytes(),
            shown: text,
        };
        let mut ours = b"already there ".to_vec();
        write(&mut ours, &record).unwrap();
        let mut serde = b"already there ".to_vec();
        serde_json::to_writer(&mut serde, &record).unwrap();
        (ours, serde)
    }

    #[test]
    fn writes_what_serde_json_writes() {
        for text in [
            "",
            "plain ascii",
            "quote \" backslash \\ slash /",
            "control \u{1} \u{1f} tab\t newline\n",
            "unicode é ☃ 𝄞 \u{7f}",
        ] {
            let (ours, serde) = record_json(text, -42, 0.85);
            assert_eq!(
                String::from_utf8(ours).unwrap(),
                String::from_utf8(serde).unwrap()
            );
        }
    }

    proptest! {
        #[test]
        fn any_text_and_numbers_are_written_as_serde_json_writes_them(
            text in any::<String>(),
            n in any::<i64>(),
            ratio in any::<f64>(),
        ) {
            let (ours, serde) = record_json(&text, n, ratio);
            prop_assert_eq!(ours, serde);
        }
    }

    #[test]
    #[should_panic(expected = "needs escaping")]
    fn a_field_name_that_needs_escaping_is_caught_in_tests() {
        #[derive(Serialize)]
        struct Odd {
            #[serde(rename = "say \"hi\"")]
            text: &'static str,
        }
        let _ = write(&mut Vec::new(), &Odd { text: "hi" });
    }

    #[test]
    fn maps_with_string_keys_are_written_others_are_errors() {
        let value = serde_json::json!({"a \"b\"": [1, {"c": null}], "": "x\n"});
        let mut ours = Vec::new();
        write(&mut ours, &value).unwrap();
        assert_eq!(ours, serde_json::to_vec(&value).unwrap());

        let map = std::collections::BTreeMap::from([(1, 2)]);
        let error = write(&mut Vec::new(), &map).unwrap_err();
        assert!(error.to_string().contains("must be a string"), "{error}");
    }
}

//! Compact JSON written straight into a byte buffer, for what every admission request produces:
//! the JSON Patch, the AdmissionReview response and the audit line.
//!
//! The output is byte for byte what `serde_json::to_writer` writes for the same values (the
//! tests compare the two); the difference is cost. serde_json checks every byte of every string
//! against its escape table one at a time, which made string escaping the largest single item
//! of a review after parsing. Here a string is first checked as a whole (a branch-free loop the
//! compiler vectorizes) and, as nearly always (names, pointers, base64), copied as it is; only
//! strings that do need escaping go through serde_json.

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
pub(crate) fn uint(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
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

/// Appends `items` as a JSON array of strings.
pub(crate) fn str_array<S: AsRef<str>>(out: &mut Vec<u8>, items: &[S]) {
    out.push(b'[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        str(out, item.as_ref());
    }
    out.push(b']');
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn string_arrays_match_serde_json() {
        for items in [&[][..], &["ReadWriteOnce"][..], &["a\"b", "c"][..]] {
            assert_eq!(via(str_array, items), serde_json::to_string(items).unwrap());
        }
    }
}

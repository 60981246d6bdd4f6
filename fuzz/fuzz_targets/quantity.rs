//! Storage quantities: `Quantity::parse` / `parse_bytes` against an exact model, and the
//! round trips between bytes and text.
//!
//! The model reads the same grammar (optional sign, digits with at most one `.`, then nothing,
//! a binary suffix `Ki`..`Ei`, a decimal suffix `n`..`E`, or an exponent `e`/`E` with an
//! optional sign) and computes the value with big integers: a positive value is rounded up to
//! whole bytes and refused above 2^80, zero and negative values are refused.
//!
//! The parser's own limits are part of the model: more than 30 significant digits (leading
//! zeros included) are refused, and so is an exponent beyond `i32`.
#![no_main]

use std::sync::LazyLock;

use kube_persist::quantity::{Quantity, QuantityError, format_retention_size, parse_bytes};
use libfuzzer_sys::fuzz_target;
use num_bigint::BigUint;
use regex::Regex;

const MAX_BYTES: u128 = 1 << 80;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        check_parse(text);
    }
    // Any size a volume can have, from the raw bytes.
    let mut raw = [0u8; 16];
    let n = data.len().min(16);
    raw[..n].copy_from_slice(&data[..n]);
    let bytes = u128::from_le_bytes(raw) % MAX_BYTES + 1;
    check_bytes(bytes);
});

fn check_parse(text: &str) {
    let parsed = parse_bytes(text);
    let quantity = Quantity::parse(text);
    match (&parsed, &quantity) {
        (Ok(b), Ok(q)) => {
            assert_eq!(q.bytes(), *b);
            assert_eq!(q.as_str(), text, "the text is kept verbatim");
            assert_eq!(q.to_string(), text);
        }
        (Err(e), Err(f)) => assert_eq!(e, f),
        _ => panic!("parse_bytes {parsed:?} but Quantity::parse {quantity:?}"),
    }
    match model(text) {
        Expected::Syntax => assert!(
            matches!(parsed, Err(QuantityError::Syntax(_))),
            "{text:?}: expected a syntax error, got {parsed:?}"
        ),
        Expected::NotPositive => assert!(
            matches!(parsed, Err(QuantityError::NotPositive(_))),
            "{text:?}: expected not positive, got {parsed:?}"
        ),
        Expected::TooLarge => assert!(
            matches!(parsed, Err(QuantityError::TooLarge(_))),
            "{text:?}: expected too large, got {parsed:?}"
        ),
        Expected::Bytes(b) => assert_eq!(parsed, Ok(b), "{text:?}"),
    }
    if let Ok(b) = parsed {
        check_bytes(b);
    }
}

/// Round trips from a size in bytes: the integer and every exact suffix form parse back to
/// it, and the `retentionSize` text matches the CRD's pattern and reads back as at most the
/// size and within a hundredth of its unit.
fn check_bytes(bytes: u128) {
    assert_eq!(parse_bytes(&bytes.to_string()), Ok(bytes));
    for (suffix, unit) in UNITS {
        if bytes % unit == 0 {
            let text = format!("{}{suffix}", bytes / unit);
            assert_eq!(parse_bytes(&text), Ok(bytes), "{text}");
        }
    }
    let retention = format_retention_size(bytes);
    assert!(
        is_retention_size(&retention),
        "{retention:?} does not match the CRD pattern"
    );
    let quantity = retention.strip_suffix('B').expect("ends with B");
    let back = parse_bytes(quantity).unwrap_or_else(|e| panic!("{retention}: {e}"));
    assert!(back <= bytes, "{retention} is {back}, above {bytes}");
    let unit = UNITS
        .iter()
        .filter(|(s, _)| s.ends_with('i'))
        .map(|(_, u)| *u)
        .filter(|u| *u <= bytes)
        .max()
        .unwrap_or(1);
    assert!(
        bytes - back <= unit / 100 + 1,
        "{retention} is {back}, more than a hundredth of its unit below {bytes}"
    );
}

const UNITS: [(&str, u128); 12] = [
    ("Ki", 1 << 10),
    ("Mi", 1 << 20),
    ("Gi", 1 << 30),
    ("Ti", 1 << 40),
    ("Pi", 1 << 50),
    ("Ei", 1 << 60),
    ("k", 1_000),
    ("M", 1_000_000),
    ("G", 1_000_000_000),
    ("T", 1_000_000_000_000),
    ("P", 1_000_000_000_000_000),
    ("E", 1_000_000_000_000_000_000),
];

/// The CRD's `retentionSize` pattern `(^0|([0-9]*[.])?[0-9]+((K|M|G|T|E|P)i?)?B)$`, anchored
/// at both ends.
fn is_retention_size(text: &str) -> bool {
    static PATTERN: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"^(0|([0-9]*[.])?[0-9]+((K|M|G|T|E|P)i?)?B)$").expect("a valid pattern")
    });
    PATTERN.is_match(text)
}

#[derive(Debug)]
enum Expected {
    Bytes(u128),
    Syntax,
    NotPositive,
    TooLarge,
}

fn model(text: &str) -> Expected {
    let (negative, s) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(end);
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if frac.contains('.') || (int.is_empty() && frac.is_empty()) {
        return Expected::Syntax;
    }
    if int.len() + frac.len() > 30 {
        return Expected::TooLarge;
    }
    let (two, ten): (u32, i64) = match suffix {
        "" => (0, 0),
        "Ki" => (10, 0),
        "Mi" => (20, 0),
        "Gi" => (30, 0),
        "Ti" => (40, 0),
        "Pi" => (50, 0),
        "Ei" => (60, 0),
        "n" => (0, -9),
        "u" => (0, -6),
        "m" => (0, -3),
        "k" => (0, 3),
        "M" => (0, 6),
        "G" => (0, 9),
        "T" => (0, 12),
        "P" => (0, 15),
        "E" => (0, 18),
        exp if exp.starts_with(['e', 'E']) => {
            let e = &exp[1..];
            let (sign, digits) = match e.as_bytes().first() {
                Some(b'-') => (-1, &e[1..]),
                Some(b'+') => (1, &e[1..]),
                _ => (1, e),
            };
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Expected::Syntax;
            }
            // The parser reads the exponent as an `i32` and adds the decimals' count to it.
            let magnitude = digits.trim_start_matches('0');
            if magnitude.len() > 10 {
                return Expected::Syntax;
            }
            let Ok(exponent) = i32::try_from(sign * magnitude.parse::<i64>().unwrap_or(0)) else {
                return Expected::Syntax;
            };
            if exponent.checked_sub(frac.len() as i32).is_none() {
                return Expected::Syntax;
            }
            (0, i64::from(exponent))
        }
        _ => return Expected::Syntax,
    };
    let digits: String = [int, frac].concat();
    let mantissa = BigUint::parse_bytes(digits.as_bytes(), 10).unwrap_or_default();
    if negative || mantissa == BigUint::ZERO {
        return Expected::NotPositive;
    }
    let ten = ten - frac.len() as i64;
    // Far from one byte either way: no need for the exact value.
    if ten > 100 {
        return Expected::TooLarge;
    }
    if ten < -100 {
        return Expected::Bytes(1);
    }
    let mut numerator = mantissa << two;
    let mut denominator = BigUint::from(1u8);
    let power = BigUint::from(10u8).pow(ten.unsigned_abs() as u32);
    if ten >= 0 {
        numerator *= power;
    } else {
        denominator = power;
    }
    let value = (numerator + &denominator - 1u8) / &denominator;
    if value > BigUint::from(MAX_BYTES) {
        return Expected::TooLarge;
    }
    Expected::Bytes(u128::try_from(value).expect("at most 2^80"))
}

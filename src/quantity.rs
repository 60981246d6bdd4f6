//! Kubernetes resource quantities (`100Gi`, `500M`, `1.5Ti`, `1e9`) and the names the policy
//! validates (StorageClass names, access modes). Pure functions; no allocation on the hot path
//! beyond the values they return.

use std::fmt;

/// A storage size: the text as written (kept verbatim for the manifest) and its value in bytes
/// (rounded up, as the API server does for fractional bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quantity {
    text: String,
    bytes: u128,
}

/// Why a string is not a usable storage quantity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// Not in Kubernetes quantity syntax.
    #[error("`{0}` is not a Kubernetes quantity (e.g. 100Gi, 500M, 1.5Ti)")]
    Syntax(String),
    /// Zero or negative.
    #[error("`{0}` must be greater than zero")]
    NotPositive(String),
    /// Larger than any volume (over 2^80 bytes).
    #[error("`{0}` is too large")]
    TooLarge(String),
}

const MAX_BYTES: u128 = 1 << 80;

impl Quantity {
    /// Parses a positive storage quantity.
    pub fn parse(text: &str) -> Result<Self, QuantityError> {
        let bytes = parse_bytes(text)?;
        Ok(Quantity {
            text: text.to_string(),
            bytes,
        })
    }

    /// The quantity as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn bytes(&self) -> u128 {
        self.bytes
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Parses a positive quantity into bytes, rounding fractions of a byte up.
pub fn parse_bytes(text: &str) -> Result<u128, QuantityError> {
    let syntax = || QuantityError::Syntax(text.to_string());
    let (negative, s) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let number_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(number_end);
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    if (int_part.is_empty() && frac_part.is_empty()) || frac_part.contains('.') {
        return Err(syntax());
    }
    // Significant digits as an integer mantissa, scaled by 10^exp10 and 2^exp2.
    let digits = int_part.len() + frac_part.len();
    if digits > 30 {
        return Err(QuantityError::TooLarge(text.to_string()));
    }
    let mut mantissa: u128 = 0;
    for b in int_part.bytes().chain(frac_part.bytes()) {
        mantissa = mantissa * 10 + u128::from(b - b'0');
    }
    let mut exp10: i32 = -(frac_part.len() as i32);
    let mut exp2: u32 = 0;
    match suffix {
        "" => {}
        "Ki" => exp2 = 10,
        "Mi" => exp2 = 20,
        "Gi" => exp2 = 30,
        "Ti" => exp2 = 40,
        "Pi" => exp2 = 50,
        "Ei" => exp2 = 60,
        "n" => exp10 -= 9,
        "u" => exp10 -= 6,
        "m" => exp10 -= 3,
        "k" => exp10 += 3,
        "M" => exp10 += 6,
        "G" => exp10 += 9,
        "T" => exp10 += 12,
        "P" => exp10 += 15,
        "E" => exp10 += 18,
        exp if exp.starts_with(['e', 'E']) => {
            let e = &exp[1..];
            let e_digits = e.strip_prefix(['+', '-']).unwrap_or(e);
            if e_digits.is_empty() || !e_digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(syntax());
            }
            let value: i32 = e.parse().map_err(|_| syntax())?;
            exp10 = exp10.checked_add(value).ok_or_else(syntax)?;
        }
        _ => return Err(syntax()),
    }
    if mantissa == 0 || negative {
        return Err(QuantityError::NotPositive(text.to_string()));
    }
    let too_large = || QuantityError::TooLarge(text.to_string());
    let value = if exp10 >= 0 {
        let mut value = mantissa.checked_shl(exp2).ok_or_else(too_large)?;
        if value >> exp2 != mantissa {
            return Err(too_large());
        }
        for _ in 0..exp10 {
            value = value.checked_mul(10).ok_or_else(too_large)?;
            if value > MAX_BYTES {
                return Err(too_large());
            }
        }
        value
    } else {
        let Some(divisor) = 10u128.checked_pow(exp10.unsigned_abs()) else {
            // Only without a binary suffix (which comes with at most 30 decimals): the value
            // is below one byte; round up to one.
            return Ok(1);
        };
        // mantissa * 2^exp2 / divisor, rounded up, without forming the product, which can
        // pass u128 although the result is small (1.000000000000000000000Ei): the whole part
        // shifted, then the fraction's exp2 bits one by one.
        let (whole, mut rest) = (mantissa / divisor, mantissa % divisor);
        let shifted = whole.checked_shl(exp2).ok_or_else(too_large)?;
        if shifted >> exp2 != whole {
            return Err(too_large());
        }
        let mut fraction: u128 = 0;
        for _ in 0..exp2 {
            // rest < divisor <= 10^30 here, so doubling it cannot overflow.
            rest <<= 1;
            fraction <<= 1;
            if rest >= divisor {
                rest -= divisor;
                fraction |= 1;
            }
        }
        shifted + fraction + u128::from(rest != 0)
    };
    if value > MAX_BYTES {
        return Err(too_large());
    }
    Ok(value)
}

/// Formats `bytes` for Prometheus' `retentionSize` (CRD pattern
/// `(^0|([0-9]*[.])?[0-9]+((K|M|G|T|E|P)i?)?B)$`): the largest binary unit in which the value is
/// at least 1, with at most two decimals, rounded down so the limit stays below the volume.
pub fn format_retention_size(bytes: u128) -> String {
    const UNITS: [(&str, u32); 6] = [
        ("EiB", 60),
        ("PiB", 50),
        ("TiB", 40),
        ("GiB", 30),
        ("MiB", 20),
        ("KiB", 10),
    ];
    for (unit, shift) in UNITS {
        let scale = 1u128 << shift;
        if bytes >= scale {
            let hundredths = bytes * 100 / scale;
            let (whole, frac) = (hundredths / 100, hundredths % 100);
            return match frac {
                0 => format!("{whole}{unit}"),
                f if f % 10 == 0 => format!("{whole}.{}{unit}", f / 10),
                f => format!("{whole}.{f:02}{unit}"),
            };
        }
    }
    format!("{bytes}B")
}

/// Whether `name` is a valid StorageClass name (a DNS-1123 subdomain).
pub fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// The PersistentVolume access modes Kubernetes knows.
pub const ACCESS_MODES: [&str; 4] = [
    "ReadWriteOnce",
    "ReadOnlyMany",
    "ReadWriteMany",
    "ReadWriteOncePod",
];

pub fn is_access_mode(mode: &str) -> bool {
    ACCESS_MODES.contains(&mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_binary_decimal_and_exponent_forms() {
        let cases: &[(&str, u128)] = &[
            ("100Gi", 100 << 30),
            ("1.5Ti", 3 << 39),
            ("500M", 500_000_000),
            ("1G", 1_000_000_000),
            ("1e9", 1_000_000_000),
            ("2E3", 2000),
            ("+10Ki", 10 << 10),
            ("1", 1),
            ("0.5", 1),
            ("1500m", 2),
            (".5Ki", 512),
            ("1Ei", 1 << 60),
            ("1e-2147483648", 1),
            ("5e-50", 1),
            // Many decimals with a binary suffix: exact, rounded up, no overflow on the way.
            ("1.000000000000000000000Ei", 1 << 60),
            ("1.234567890123456789012Ei", 1_423_359_869_420_436_338),
            ("0.1Ki", 103),
        ];
        for (text, bytes) in cases {
            assert_eq!(parse_bytes(text), Ok(*bytes), "{text}");
        }
    }

    #[test]
    fn rejects_bad_syntax_zero_negative_and_huge() {
        for bad in [
            "", "Gi", "10GB", "10 Gi", "1.2.3Gi", "abc", "10gi", "1e", "1e+", "--1",
        ] {
            assert!(
                matches!(parse_bytes(bad), Err(QuantityError::Syntax(_))),
                "{bad}: {:?}",
                parse_bytes(bad)
            );
        }
        for zero in ["0", "0Gi", "-1Gi", "0.0"] {
            assert!(
                matches!(parse_bytes(zero), Err(QuantityError::NotPositive(_))),
                "{zero}"
            );
        }
        for huge in ["1e30", "100000000Ei", "1234567890123456789012345678901"] {
            assert!(
                matches!(parse_bytes(huge), Err(QuantityError::TooLarge(_))),
                "{huge}"
            );
        }
    }

    #[test]
    fn retention_size_uses_prometheus_units_and_rounds_down() {
        let pattern = regex::Regex::new(r"(^0|([0-9]*[.])?[0-9]+((K|M|G|T|E|P)i?)?B)$").unwrap();
        let cases: &[(u128, &str)] = &[
            ((100u128 << 30) * 85 / 100, "85GiB"),
            ((50u128 << 30) * 85 / 100, "42.5GiB"),
            ((1u128 << 30) * 85 / 100, "870.39MiB"),
            (1 << 40, "1TiB"),
            (512, "512B"),
            (1536, "1.5KiB"),
        ];
        for (bytes, text) in cases {
            let got = format_retention_size(*bytes);
            assert_eq!(got, *text);
            assert!(pattern.is_match(&got), "{got} must match the CRD pattern");
        }
    }

    #[test]
    fn storage_class_names_are_dns_subdomains() {
        for ok in ["prometheus-data-db", "nfs", "a.b-c", "x1"] {
            assert!(is_dns_subdomain(ok), "{ok}");
        }
        for bad in ["", "Upper", "-a", "a-", "a..b", "a_b", &"a".repeat(254)] {
            assert!(!is_dns_subdomain(bad), "{bad}");
        }
    }
}

//! Numbers as xl reads them: C `strtol` with base 0 (decimal, `0x` hex,
//! leading-zero octal), whole string, range-checked.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum IntError {
    Invalid,
    Range,
}

/// C `strtol(s, &end, 0)` requiring the whole string: optional leading
/// whitespace and sign, then `0x` hex, `0` octal or decimal.
pub(super) fn parse_c_long(s: &str) -> Result<i64, IntError> {
    let s = s.trim_start_matches([' ', '\t', '\n', '\x0b', '\x0c', '\r']);
    let (neg, s) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let (radix, digits) = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) if h.bytes().next().is_some_and(|b| b.is_ascii_hexdigit()) => (16, h),
        _ if s.len() > 1 && s.starts_with('0') => (8, &s[1..]),
        _ => (10, s),
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err(IntError::Invalid);
    }
    let magnitude = u128::from_str_radix(digits, radix).map_err(|_| IntError::Range)?;
    let v = if neg {
        -(magnitude as i128)
    } else {
        magnitude as i128
    };
    i64::try_from(v).map_err(|_| IntError::Range)
}

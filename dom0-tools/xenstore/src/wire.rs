//! Message framing: a 16-byte header `{type, req_id, tx_id, len}` (u32 LE)
//! followed by `len` <= 4096 payload bytes, and the payload helpers Xen's
//! handlers use (`onearg`, `get_strings`, `atoi`).

pub use xen_abi::xenstore::PAYLOAD_MAX;

/// Size of a message header.
pub const HEADER_LEN: usize = 16;

/// A message header (`struct xsd_sockmsg`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    pub kind: u32,
    pub req_id: u32,
    pub tx_id: u32,
    pub len: u32,
}

impl Header {
    pub fn parse(b: &[u8]) -> Header {
        let w = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Header {
            kind: w(0),
            req_id: w(4),
            tx_id: w(8),
            len: w(12),
        }
    }

    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0; HEADER_LEN];
        out[0..4].copy_from_slice(&self.kind.to_le_bytes());
        out[4..8].copy_from_slice(&self.req_id.to_le_bytes());
        out[8..12].copy_from_slice(&self.tx_id.to_le_bytes());
        out[12..16].copy_from_slice(&self.len.to_le_bytes());
        out
    }
}

/// A whole message: header and payload.
pub fn message(kind: u32, req_id: u32, tx_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(
        &Header {
            kind,
            req_id,
            tx_id,
            len: payload.len() as u32,
        }
        .to_bytes(),
    );
    out.extend_from_slice(payload);
    out
}

/// The payload's single argument: it must hold exactly one NUL, at the end.
pub fn onearg(payload: &[u8]) -> Option<&[u8]> {
    match payload.iter().position(|&c| c == 0) {
        Some(i) if i + 1 == payload.len() => Some(&payload[..i]),
        _ => None,
    }
}

/// The NUL-terminated strings at the start of a payload (anything after
/// the last NUL is not a string).
pub fn strings(payload: &[u8]) -> impl Iterator<Item = &[u8]> {
    let end = payload.iter().rposition(|&c| c == 0).map_or(0, |i| i + 1);
    payload[..end]
        .split(|&c| c == 0)
        .take(count_strings(payload))
}

/// Number of NULs (`xs_count_strings`).
pub fn count_strings(payload: &[u8]) -> usize {
    payload.iter().filter(|&&c| c == 0).count()
}

/// C's `atoi`: optional blanks and sign, then digits up to the first
/// non-digit; anything unparsable is 0. Wraps like a 32-bit int.
pub fn atoi(s: &[u8]) -> i32 {
    let mut i = 0;
    while i < s.len() && matches!(s[i], b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c) {
        i += 1;
    }
    let mut neg = false;
    if i < s.len() && (s[i] == b'+' || s[i] == b'-') {
        neg = s[i] == b'-';
        i += 1;
    }
    let mut v: i64 = 0;
    while i < s.len() && s[i].is_ascii_digit() {
        v = (v * 10 + (s[i] - b'0') as i64) & 0xffff_ffff_ffff;
        i += 1;
    }
    let v = if neg { v.wrapping_neg() } else { v };
    v as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let h = Header {
            kind: 11,
            req_id: 7,
            tx_id: 3,
            len: 9,
        };
        assert_eq!(Header::parse(&h.to_bytes()), h);
        let m = message(2, 1, 0, b"/a\0");
        assert_eq!(m.len(), 19);
        assert_eq!(Header::parse(&m).len, 3);
    }

    #[test]
    fn args() {
        assert_eq!(onearg(b"/a\0"), Some(&b"/a"[..]));
        assert_eq!(onearg(b"/a"), None);
        assert_eq!(onearg(b"/a\0b\0"), None);
        assert_eq!(onearg(b""), None);
        assert_eq!(onearg(b"\0"), Some(&b""[..]));
        let v: Vec<&[u8]> = strings(b"a\0bc\0tail").collect();
        assert_eq!(v, vec![&b"a"[..], b"bc"]);
        assert_eq!(strings(b"x").count(), 0);
        assert_eq!(count_strings(b"a\0\0b"), 2);
        assert_eq!(atoi(b"12x"), 12);
        assert_eq!(atoi(b" -3"), -3);
        assert_eq!(atoi(b"zz"), 0);
        assert_eq!(atoi(b"4294967295") as u32, 4294967295);
    }
}

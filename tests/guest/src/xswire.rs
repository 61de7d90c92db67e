//! The xenstore wire format, without the ring: message headers, a framer
//! that rebuilds whole messages from the byte stream, watch-event payloads
//! and the values a toolstack writes to `control/shutdown`.
//!
//! A message is a 16-byte header (`type`, `req_id`, `tx_id`, `len`, each a
//! little-endian u32) and `len` <= 4096 bytes of payload. The response ring
//! is only 1024 bytes, so a message may arrive in several pieces, and a
//! watch event may arrive between a request and its reply.

use xen_abi::xenstore::PAYLOAD_MAX;

/// Size of `struct xsd_sockmsg`.
pub const HEADER_LEN: usize = 16;

/// A message header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: u32,
    pub req_id: u32,
    pub tx_id: u32,
    pub len: u32,
}

impl Header {
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&self.kind.to_le_bytes());
        b[4..8].copy_from_slice(&self.req_id.to_le_bytes());
        b[8..12].copy_from_slice(&self.tx_id.to_le_bytes());
        b[12..16].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    pub fn from_bytes(b: &[u8; HEADER_LEN]) -> Self {
        let word = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Header {
            kind: word(0),
            req_id: word(4),
            tx_id: word(8),
            len: word(12),
        }
    }
}

/// The header of a request whose payload is `parts` concatenated, or
/// `None` if that payload is longer than a message may be.
pub fn request_header(kind: u32, req_id: u32, parts: &[&[u8]]) -> Option<Header> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    (len <= PAYLOAD_MAX).then_some(Header {
        kind,
        req_id,
        tx_id: 0,
        len: len as u32,
    })
}

/// The stream broke: a header announced more than [`PAYLOAD_MAX`] bytes.
/// Nothing after it can be trusted (message boundaries are lost).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooLong(pub u32);

/// Rebuilds messages from the byte stream of a response ring.
///
/// Feed it at most [`Framer::wanted`] bytes at a time (so it never takes a
/// byte of the next message); once [`Framer::complete`], read the message
/// and [`Framer::reset`] it.
pub struct Framer {
    buf: [u8; HEADER_LEN + PAYLOAD_MAX],
    have: usize,
}

impl Default for Framer {
    fn default() -> Self {
        Self::new()
    }
}

impl Framer {
    pub const fn new() -> Self {
        Framer {
            buf: [0; HEADER_LEN + PAYLOAD_MAX],
            have: 0,
        }
    }

    /// The header, once its 16 bytes are in.
    pub fn header(&self) -> Option<Header> {
        let h: &[u8; HEADER_LEN] = self.buf[..HEADER_LEN].try_into().ok()?;
        (self.have >= HEADER_LEN).then(|| Header::from_bytes(h))
    }

    /// Bytes still missing from the current message (0 once complete).
    pub fn wanted(&self) -> usize {
        match self.header() {
            None => HEADER_LEN - self.have,
            Some(h) => (HEADER_LEN + (h.len as usize).min(PAYLOAD_MAX)).saturating_sub(self.have),
        }
    }

    /// Take bytes of the current message from the front of `data`; returns
    /// how many were taken (never more than [`Framer::wanted`]).
    pub fn push(&mut self, data: &[u8]) -> Result<usize, TooLong> {
        let mut taken = 0;
        while taken < data.len() {
            if let Some(h) = self.header() {
                if h.len as usize > PAYLOAD_MAX {
                    return Err(TooLong(h.len));
                }
            }
            let n = self.wanted().min(data.len() - taken);
            if n == 0 {
                break;
            }
            self.buf[self.have..self.have + n].copy_from_slice(&data[taken..taken + n]);
            self.have += n;
            taken += n;
        }
        match self.header() {
            Some(h) if h.len as usize > PAYLOAD_MAX => Err(TooLong(h.len)),
            _ => Ok(taken),
        }
    }

    /// Whether a whole message (header and payload) is in.
    pub fn complete(&self) -> bool {
        self.header().is_some() && self.wanted() == 0
    }

    /// The payload received so far (all of it once complete).
    pub fn payload(&self) -> &[u8] {
        &self.buf[HEADER_LEN.min(self.have)..self.have]
    }

    /// Drop the current message and start on the next.
    pub fn reset(&mut self) {
        self.have = 0;
    }
}

/// `payload` without its trailing NULs (values and error names are sent
/// with or without a terminating NUL).
pub fn text(payload: &[u8]) -> &[u8] {
    let mut p = payload;
    while let [rest @ .., 0] = p {
        p = rest;
    }
    p
}

/// The `(path, token)` of an `XS_WATCH_EVENT` payload (`path\0token\0`).
pub fn watch_event(payload: &[u8]) -> Option<(&[u8], &[u8])> {
    let nul = payload.iter().position(|&b| b == 0)?;
    let path = &payload[..nul];
    let rest = &payload[nul + 1..];
    let token = match rest.iter().position(|&b| b == 0) {
        Some(end) => &rest[..end],
        None => rest,
    };
    Some((path, token))
}

/// What a value of `control/shutdown` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownRequest<'a> {
    /// Empty (or the node is missing): nothing to do.
    Nothing,
    /// "poweroff" or "halt".
    Poweroff,
    /// "reboot".
    Reboot,
    /// "crash".
    Crash,
    /// Anything else (the value, without trailing NULs).
    Unknown(&'a [u8]),
}

/// Classify a `control/shutdown` value the way Linux's manage.c does
/// (exact string match; "halt" is a poweroff).
pub fn shutdown_request(value: &[u8]) -> ShutdownRequest<'_> {
    match text(value) {
        b"" => ShutdownRequest::Nothing,
        b"poweroff" | b"halt" => ShutdownRequest::Poweroff,
        b"reboot" => ShutdownRequest::Reboot,
        b"crash" => ShutdownRequest::Crash,
        other => ShutdownRequest::Unknown(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u32, req_id: u32, payload: &[u8]) -> ([u8; HEADER_LEN], &[u8]) {
        let h = Header {
            kind,
            req_id,
            tx_id: 0,
            len: payload.len() as u32,
        };
        (h.to_bytes(), payload)
    }

    /// kind, req_id, payload buffer, payload length.
    type Msg = (u32, u32, [u8; 64], usize);

    /// Feed `stream` in pieces of `chunk` bytes; collect each complete
    /// message.
    fn frame_all(stream: &[u8], chunk: usize) -> ([Msg; 8], usize) {
        let mut out = [(0, 0, [0u8; 64], 0); 8];
        let mut n = 0;
        let mut f = Framer::new();
        let mut at = 0;
        while at < stream.len() {
            let piece = &stream[at..stream.len().min(at + chunk)];
            let mut used = 0;
            while used < piece.len() {
                let k = f.push(&piece[used..]).expect("framing");
                assert!(k > 0 || f.complete());
                used += k;
                if f.complete() {
                    let h = f.header().unwrap();
                    let p = f.payload();
                    out[n].0 = h.kind;
                    out[n].1 = h.req_id;
                    out[n].2[..p.len()].copy_from_slice(p);
                    out[n].3 = p.len();
                    n += 1;
                    f.reset();
                }
            }
            at += piece.len();
        }
        assert_eq!(f.wanted(), HEADER_LEN, "a partial message was left over");
        (out, n)
    }

    #[test]
    fn header_round_trip() {
        let h = Header {
            kind: 15,
            req_id: 0x01020304,
            tx_id: 7,
            len: 4096,
        };
        let b = h.to_bytes();
        assert_eq!(&b[4..8], &[4, 3, 2, 1]);
        assert_eq!(Header::from_bytes(&b), h);
        assert_eq!(
            request_header(11, 9, &[b"a\0", b"bc"]).map(|h| h.len),
            Some(4)
        );
        let big = [0u8; PAYLOAD_MAX + 1];
        assert_eq!(request_header(11, 9, &[&big]), None);
    }

    #[test]
    fn interleaved_messages_in_any_chunking() {
        // A reply, a watch event, an empty-payload reply, an error reply.
        let mut stream = [0u8; 256];
        let mut len = 0;
        for (kind, id, payload) in [
            (11u32, 1u32, &b"OK\0"[..]),
            (15, 0, &b"control/shutdown\0kxen-shutdown\0"[..]),
            (2, 2, &b""[..]),
            (16, 3, &b"ENOSYS\0"[..]),
        ] {
            let (h, p) = message(kind, id, payload);
            stream[len..len + HEADER_LEN].copy_from_slice(&h);
            len += HEADER_LEN;
            stream[len..len + p.len()].copy_from_slice(p);
            len += p.len();
        }
        for chunk in [1, 2, 3, 7, 16, 17, 64, 256] {
            let (msgs, n) = frame_all(&stream[..len], chunk);
            assert_eq!(n, 4, "chunk {chunk}");
            assert_eq!((msgs[0].0, msgs[0].1), (11, 1));
            assert_eq!(&msgs[0].2[..msgs[0].3], b"OK\0");
            assert_eq!(msgs[1].0, 15);
            let (path, token) = watch_event(&msgs[1].2[..msgs[1].3]).unwrap();
            assert_eq!(
                (path, token),
                (&b"control/shutdown"[..], &b"kxen-shutdown"[..])
            );
            assert_eq!((msgs[2].0, msgs[2].1, msgs[2].3), (2, 2, 0));
            assert_eq!(text(&msgs[3].2[..msgs[3].3]), b"ENOSYS");
        }
    }

    #[test]
    fn payload_larger_than_the_ring() {
        // 3000 bytes arrive in 1024-byte ring loads.
        let mut f = Framer::new();
        let h = Header {
            kind: 2,
            req_id: 5,
            tx_id: 0,
            len: 3000,
        }
        .to_bytes();
        assert_eq!(f.push(&h), Ok(HEADER_LEN));
        assert!(!f.complete());
        let body = [b'x'; 3000];
        let mut at = 0;
        while at < body.len() {
            let end = body.len().min(at + 1024);
            assert_eq!(f.push(&body[at..end]), Ok(end - at));
            at = end;
        }
        assert!(f.complete());
        assert_eq!(f.payload().len(), 3000);
        // Nothing more is taken once complete.
        assert_eq!(f.push(b"more"), Ok(0));
    }

    #[test]
    fn stops_at_the_message_boundary() {
        let (h, p) = message(11, 1, b"OK\0");
        let mut stream = [0u8; 32];
        stream[..16].copy_from_slice(&h);
        stream[16..19].copy_from_slice(p);
        stream[19] = 0xaa; // first byte of the next message
        let mut f = Framer::new();
        assert_eq!(f.push(&stream[..20]), Ok(19));
        assert!(f.complete());
    }

    #[test]
    fn oversized_header_is_an_error() {
        let h = Header {
            kind: 2,
            req_id: 1,
            tx_id: 0,
            len: PAYLOAD_MAX as u32 + 1,
        }
        .to_bytes();
        let mut f = Framer::new();
        assert_eq!(f.push(&h[..10]), Ok(10));
        assert_eq!(f.push(&h[10..]), Err(TooLong(PAYLOAD_MAX as u32 + 1)));
        f.reset();
        assert_eq!(f.wanted(), HEADER_LEN);
    }

    #[test]
    fn watch_event_payloads() {
        assert_eq!(
            watch_event(b"/local/domain/3/control/shutdown\0tok\0"),
            Some((&b"/local/domain/3/control/shutdown"[..], &b"tok"[..]))
        );
        // Without the final NUL, and with an empty token.
        assert_eq!(watch_event(b"p\0tok"), Some((&b"p"[..], &b"tok"[..])));
        assert_eq!(watch_event(b"p\0"), Some((&b"p"[..], &b""[..])));
        assert_eq!(watch_event(b"no separator"), None);
    }

    #[test]
    fn shutdown_values() {
        use ShutdownRequest::*;
        assert_eq!(shutdown_request(b""), Nothing);
        assert_eq!(shutdown_request(b"\0"), Nothing);
        assert_eq!(shutdown_request(b"poweroff"), Poweroff);
        assert_eq!(shutdown_request(b"poweroff\0"), Poweroff);
        assert_eq!(shutdown_request(b"halt"), Poweroff);
        assert_eq!(shutdown_request(b"reboot"), Reboot);
        assert_eq!(shutdown_request(b"crash"), Crash);
        assert_eq!(shutdown_request(b"suspend"), Unknown(b"suspend"));
        assert_eq!(shutdown_request(b"Poweroff"), Unknown(b"Poweroff"));
        assert_eq!(shutdown_request(b" reboot"), Unknown(b" reboot"));
    }
}

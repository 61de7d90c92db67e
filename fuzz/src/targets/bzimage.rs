//! A bzImage (or bare payload) as a kernel file supplies it: the setup
//! header's payload fields, format detection and each decompressor, with
//! the output capped far below the real limit so that the target stays
//! fast. Invariants: no panic, and output never above the cap.

use kxen_loader::pv::bzimage::{self, BzImageError, PayloadFormat};

/// Output cap for the fuzz run: big enough for the seeds.
const LIMIT: usize = 1 << 20;

/// One fuzz input; panics on any broken invariant. True when a decoder
/// ran (the format was recognised).
pub fn bzimage(data: &[u8]) -> bool {
    // The whole input as a bzImage, or else as a bare payload.
    let payload = bzimage::payload(data).unwrap_or(data);
    if PayloadFormat::detect(payload).is_err() {
        return false;
    }
    match bzimage::decompress(payload, LIMIT) {
        Ok(out) => assert!(out.len() <= LIMIT),
        Err(BzImageError::TooLarge { limit }) => assert_eq!(limit, LIMIT),
        Err(_) => {}
    }
    true
}

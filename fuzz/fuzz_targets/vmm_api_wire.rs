//! The `vmm_api_wire` fuzz target: kxen-vmm-api's parsers for control
//! request and reply lines, fed arbitrary bytes. Each must return a value
//! or an error, never panic; whatever parses must encode and parse back
//! to itself.
#![no_main]

use kxen_vmm_api::wire::{self, LineBuffer, MAX_REPLY_LINE};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(request) = wire::parse_request(data) {
        assert_eq!(
            wire::parse_request(&wire::encode(&request)).ok(),
            Some(request)
        );
    }
    if let Ok(reply) = wire::parse_reply(data) {
        assert_eq!(wire::parse_reply(&wire::encode(&reply)).ok(), Some(reply));
    }
    // The same bytes as a stream, cut into lines by the client's buffer.
    let mut lines = LineBuffer::new(MAX_REPLY_LINE);
    for chunk in data.chunks(7) {
        lines.push(chunk);
        while let Ok(Some(line)) = lines.next_line() {
            let _ = wire::parse_reply(&line);
        }
    }
});

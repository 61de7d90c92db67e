//! kxen-vmm-api's control-protocol parsers, as kxen-vmm reads a client's
//! request lines and as kxend and the backends read the VMM's replies.

use kxen_vmm_api::wire::{self, LineBuffer, WireError, MAX_REPLY_LINE};
use serde_json::error::Category;

/// Whether a parse got past the JSON syntax into the typed decoder: it
/// succeeded, or it refused a well-formed value of the wrong shape.
fn decoded<T>(result: &Result<T, WireError>) -> bool {
    match result {
        Ok(_) => true,
        Err(WireError::Json(e)) => e.classify() == Category::Data,
        Err(WireError::TooLong { .. }) => false,
    }
}

/// One fuzz input; panics on any broken invariant (a parsed message that
/// does not encode and parse back to itself). True when the input reached
/// the typed decoder as a request or a reply.
pub fn vmm_api_wire(data: &[u8]) -> bool {
    let request = wire::parse_request(data);
    let reply = wire::parse_reply(data);
    let reached = decoded(&request) || decoded(&reply);
    if let Ok(request) = request {
        assert_eq!(
            wire::parse_request(&wire::encode(&request)).ok(),
            Some(request)
        );
    }
    if let Ok(reply) = reply {
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
    reached
}

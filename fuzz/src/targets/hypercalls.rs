//! Arbitrary hypercall sequences against a domain over plain memory.

use std::sync::OnceLock;

/// One fuzz input; panics on any broken invariant. True when the input
/// held at least one whole hypercall.
pub fn hypercalls(data: &[u8]) -> bool {
    static DOMAIN: OnceLock<kxen_xen::Domain> = OnceLock::new();
    let domain = DOMAIN.get_or_init(|| kxen_xen::harness::domain().0);
    kxen_xen::harness::run_bytes(domain, data);
    data.len() >= 44
}

//! Arbitrary hypercall sequences against a domain over plain memory.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    static DOMAIN: OnceLock<kxen_xen::Domain> = OnceLock::new();
    let domain = DOMAIN.get_or_init(|| kxen_xen::harness::domain().0);
    kxen_xen::harness::run_bytes(domain, data);
});

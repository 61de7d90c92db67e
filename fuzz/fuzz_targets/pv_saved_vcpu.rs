//! The `pv_saved_vcpu` fuzz target. Its body is
//! [`kxen_fuzz::pv_saved_vcpu`], which `fuzz/tests/replay.rs` also runs
//! over a fixed corpus as an ordinary test.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    kxen_fuzz::pv_saved_vcpu(data);
});

//! The `bootloader_simple0` fuzz target. Its body is [`kxen_fuzz::bootloader_simple0`], which
//! `fuzz/tests/replay.rs` also runs over a fixed corpus as an ordinary test.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    kxen_fuzz::bootloader_simple0(data);
});

//! ELF note segments as a PVH kernel image supplies them.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = kxen_loader::elf32::find_pvh_entry(data);
});

//! kxen-pv's `vcpu_guest_context` parser (VCPUOP_initialise) and
//! `check_descriptor` (set_gdt, update_descriptor, the LDT), on
//! arbitrary guest bytes.
//!
//! Input: the context's bytes (padded with zeroes to its size; the
//! first 512 bytes of FPU state are skipped so the fuzzer's bytes land
//! on the fields), then every 8 bytes of the input are also checked as a
//! descriptor. Checked: no panic; an accepted context starts in kernel
//! mode at canonical addresses with only the arithmetic RFLAGS it may
//! set, and its trap handlers are canonical with RPL-3 selectors; an
//! accepted descriptor that is present and not a system descriptor has
//! DPL 3, an accepted call gate DPL 0.

use kxen_pv::context::{GuestContext, CONTEXT_SIZE};
use kxen_pv::descriptors::check_descriptor;
use kxen_pv::traps::is_canonical;

pub fn pv_context(data: &[u8]) -> bool {
    let mut bytes = vec![0u8; CONTEXT_SIZE];
    let take = data.len().min(CONTEXT_SIZE - 512);
    bytes[512..512 + take].copy_from_slice(&data[..take]);
    let mut reached = false;
    if let Ok(context) = GuestContext::parse(&bytes) {
        reached = true;
        assert!(context.state.kernel_mode);
        assert!(is_canonical(context.rip) && is_canonical(context.rsp));
        assert!(is_canonical(context.state.kernel_sp));
        assert_eq!(
            context.rflags & !0x0cd7,
            0,
            "only arithmetic flags and bit 1"
        );
        for vector in 0..=255u8 {
            if let Some(handler) = context.state.traps.handler(vector) {
                assert!(is_canonical(handler.address));
                assert_eq!(handler.cs & 3, 3);
            }
        }
    }
    for chunk in data.chunks_exact(8) {
        let desc = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
        if let Some(fixed) = check_descriptor(desc) {
            let present = fixed & (1 << 47) != 0;
            let system = fixed & (1 << 44) == 0;
            let dpl = (fixed >> 45) & 3;
            if present && !system {
                assert_eq!(dpl, 3, "code/data at DPL 3: {desc:#x} -> {fixed:#x}");
            }
            if present && system && (fixed >> 40) & 0xf == 0xc {
                assert_eq!(dpl, 0, "call gates at DPL 0");
            }
        }
    }
    reached
}

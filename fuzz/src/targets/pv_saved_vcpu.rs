//! kxen-pv's reader of a saved PV vCPU (X86_PV_VCPU_BASIC and
//! X86_PV_VCPU_EXTENDED records of a restore image), on arbitrary bytes.
//!
//! Input: the basic record's bytes after its 512 bytes of FPU state
//! (padded with zeroes to its size), then the extended record's 40.
//! Checked: no panic; an accepted vCPU is online with canonical
//! addresses, a kernel L4, a GDT within Xen's limit and an LDT within
//! 8192 entries; and writing it again reads back the same.

use kxen_pv::context::CONTEXT_SIZE;
use kxen_pv::saved::{SavedVcpu, EXTENDED_SIZE};
use kxen_pv::traps::is_canonical;

pub fn pv_saved_vcpu(data: &[u8]) -> bool {
    let mut basic = vec![0u8; CONTEXT_SIZE];
    let take = data.len().min(CONTEXT_SIZE - 512);
    basic[512..512 + take].copy_from_slice(&data[..take]);
    let rest = &data[take..];
    let mut extended = vec![0u8; EXTENDED_SIZE];
    let take = rest.len().min(EXTENDED_SIZE);
    extended[..take].copy_from_slice(&rest[..take]);
    let Ok(saved) = SavedVcpu::parse(&basic, &extended) else {
        return false;
    };
    let s = &saved.state;
    for address in [
        saved.regs.rip,
        saved.regs.rsp,
        s.kernel_sp,
        s.event_callback,
        s.failsafe_callback,
        s.syscall_callback,
        s.syscall32_callback,
        s.sysenter_callback,
        s.fs_base,
        s.gs_base_kernel,
        s.gs_base_user,
        saved.ldt_base,
    ] {
        assert!(is_canonical(address));
    }
    assert!(saved.kernel_l4.is_some());
    assert!(s.gdt_entries <= 14 * 512 && s.gdt_frames.len() <= 14);
    assert!(saved.ldt_entries <= 8192);
    let again = SavedVcpu::parse(&saved.encode_basic(), &saved.encode_extended(0));
    assert_eq!(again.as_ref(), Ok(&saved), "written and read back");
    true
}

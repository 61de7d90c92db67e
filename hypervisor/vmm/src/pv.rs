//! The classic PV machine on KVM, first slice: vCPU 0's entry state (long
//! mode, deprivileged at CPL3 on the builder's page tables), the hypercall
//! page, and the PV MMU hypercalls served from [`kxen_pv::PvMmu`].
//!
//! The PV semantics live in kxen-pv (KVM-free); this module only executes
//! them: it reads guest memory for the MMU, writes `done` counts back and
//! tells the vCPU what to load (a new CR3) before it resumes the guest.
//! Every hypercall argument is hostile: a bad one is Xen's error code,
//! never a panic.

use std::sync::Mutex;

use kvm_bindings::kvm_segment;
use tracing::{debug, info};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use xen_abi::errno::EFAULT;
use xen_abi::hypercall::STUB_COUNT;
use xen_abi::pv::{hypercall as pv_nr, MmuextOp, MMUEXT_NEW_BASEPTR, MMUEXT_PIN_L4_TABLE};

use kxen_loader::pv::PvBootState;
use kxen_pv::{Effects, Mfn, MmuMemory, PvMmu, PvMmuConfig};
use kxen_xen::guest::GuestAccess;
use kxen_xen::hypercall::Call;

use crate::error::VmError;

/// Xen's flat 64-bit kernel selectors (public/arch-x86/xen-x86_64.h): a
/// 64-bit PV kernel runs at CPL3 with these in CS and SS.
pub const FLAT_KERNEL_CS64: u16 = 0xe033;
pub const FLAT_KERNEL_SS64: u16 = 0xe02b;
/// FLAT_KERNEL_DS64 is the null selector on x86_64.
pub const FLAT_KERNEL_DS64: u16 = 0;

/// The PV hypercall transport. On PVM hosts an `out` at CPL3 raises #GP
/// in the guest (measured: the PV guest triple-faulted on the PVH
/// stubs' `out`), but a CPL3 write to a guest page backed by no memory
/// slot exits to kxen-vmm as KVM_EXIT_MMIO. So a PV domain's hypercall
/// stubs store the hypercall number to this guest-physical address, which
/// no memory slot or device covers, through a page the hypervisor maps in
/// one of its own L4 slots (256-271, which every L4 the guest pins or
/// loads receives and cannot change).
pub const PV_HYPERCALL_GPA: u64 = 0xfefe_0000;
/// The hypervisor L4 slot (the last of 256-271) that maps the hypercall
/// transport page, and that page's virtual address.
const HYPERCALL_L4_SLOT: usize = 271;
pub const PV_HYPERCALL_VA: u64 = 0xffff_0000_0000_0000 | ((HYPERCALL_L4_SLOT as u64) << 39);
/// The hypervisor's own page-table frames for that mapping (L3, L2, L1),
/// in the special pages window (outside the guest's RAM, so the PV MMU
/// never lets the guest map or use them).
const HV_TABLE_GFNS: [u64; 3] = [
    crate::memory::SPECIAL_BASE_GFN + crate::memory::SPECIAL_PV_TABLES,
    crate::memory::SPECIAL_BASE_GFN + crate::memory::SPECIAL_PV_TABLES + 1,
    crate::memory::SPECIAL_BASE_GFN + crate::memory::SPECIAL_PV_TABLES + 2,
];
const PTE_P_RW_U: u64 = 0x7;
const PTE_ACCESSED: u64 = 0x20;
const PTE_NX: u64 = 1 << 63;

/// Machine code of one PV hypercall stub: `mov $nr, %eax; movabs %eax,
/// PV_HYPERCALL_VA; ret`, padded with `int3`.
pub fn pv_hypercall_stub(nr: u32) -> [u8; xen_abi::hypercall::STUB_SIZE] {
    let mut stub = [0xcc_u8; xen_abi::hypercall::STUB_SIZE];
    stub[0] = 0xb8; // mov imm32, %eax
    stub[1..5].copy_from_slice(&nr.to_le_bytes());
    stub[5] = 0xa3; // mov %eax, moffs64
    stub[6..14].copy_from_slice(&PV_HYPERCALL_VA.to_le_bytes());
    stub[14] = 0xc3; // ret
    stub
}

/// Write the hypervisor's tables that map [`PV_HYPERCALL_VA`] to
/// [`PV_HYPERCALL_GPA`]; returns the L4 entry for [`HYPERCALL_L4_SLOT`].
fn write_hypervisor_tables(mem: &GuestMemoryMmap) -> Result<u64, PvSetupError> {
    let [l3, l2, l1] = HV_TABLE_GFNS;
    let zero = [0u8; xen_abi::PAGE_SIZE];
    for (table, next) in [
        (l3, (l2 << 12) | PTE_P_RW_U),
        (l2, (l1 << 12) | PTE_P_RW_U),
        (l1, PV_HYPERCALL_GPA | PTE_P_RW_U | PTE_NX),
    ] {
        mem.write_slice(&zero, GuestAddress(table << 12))
            .and_then(|()| mem.write_obj(next, GuestAddress(table << 12)))
            .map_err(|_| PvSetupError::HypervisorTables(table))?;
    }
    Ok((l3 << 12) | PTE_P_RW_U | PTE_ACCESSED)
}

/// `mmu_update`'s count bit a preempted batch's continuation sets; a
/// guest has no reason to set it, so it is stripped (kxen-pv README).
const MMU_UPDATE_PREEMPTED: u64 = xen_abi::pv::MMU_UPDATE_PREEMPTED as u64;

/// What a PV domain's vCPUs share beyond the Xen layer: its PV MMU.
pub struct PvMachine {
    pub mmu: Mutex<PvMmu>,
}

/// Why the PV machine could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum PvSetupError {
    #[error("PV MMU: {0}")]
    Config(#[from] kxen_pv::PvMmuConfigError),
    #[error("pinning the builder's L4 (frame {mfn:#x}): {error}")]
    PinBootTables { mfn: u64, error: kxen_pv::MmuError },
    #[error("loading the builder's L4 on vCPU 0: {0}")]
    LoadBootTables(kxen_pv::MmuError),
    #[error("the hypervisor's page table {0:#x} is not in guest memory")]
    HypervisorTables(u64),
    #[error("the hypercall page (frame {0:#x}) is not guest memory")]
    HypercallPage(u64),
}

/// The domain's frames as the PV MMU reads and writes them, and the
/// calling vCPU's view of guest-virtual memory for hypercall arguments.
struct GuestFrames<'a> {
    mem: &'a GuestMemoryMmap,
    /// None while building: no vCPU has run, nothing is read through one.
    guest: Option<&'a GuestAccess<'a>>,
}

impl GuestFrames<'_> {
    fn entry_addr(mfn: Mfn, index: usize) -> GuestAddress {
        GuestAddress((mfn << 12) + (index as u64) * 8)
    }
}

impl MmuMemory for GuestFrames<'_> {
    fn read_entry(&self, mfn: Mfn, index: usize) -> u64 {
        // kxen-pv passes only RAM frames below the domain's count, all
        // backed; an unreadable one reads as not present.
        self.mem
            .read_obj::<u64>(Self::entry_addr(mfn, index))
            .unwrap_or(0)
    }

    fn write_entry(&mut self, mfn: Mfn, index: usize, value: u64) {
        if self
            .mem
            .write_obj(value, Self::entry_addr(mfn, index))
            .is_err()
        {
            debug!(mfn, index, "PV MMU entry write outside guest memory");
        }
    }

    fn clear_frame(&mut self, mfn: Mfn) {
        let zero = [0u8; xen_abi::PAGE_SIZE];
        let _ = self.mem.write_slice(&zero, GuestAddress(mfn << 12));
    }

    fn copy_frame(&mut self, dst: Mfn, src: Mfn) {
        let mut page = [0u8; xen_abi::PAGE_SIZE];
        if self
            .mem
            .read_slice(&mut page, GuestAddress(src << 12))
            .is_ok()
        {
            let _ = self.mem.write_slice(&page, GuestAddress(dst << 12));
        }
    }

    fn read_guest_u64(&mut self, va: u64) -> Option<u64> {
        let mut word = [0u8; 8];
        self.guest?.read(va, &mut word).ok()?;
        Some(u64::from_le_bytes(word))
    }
}

impl PvMachine {
    /// The PV MMU of a domain of `nr_frames` frames, with the builder's
    /// L4 pinned and loaded as vCPU 0's kernel base pointer (what Xen's
    /// domain builder leaves: the bootstrap tables pinned, the L4 in CR3).
    pub fn new(
        mem: &GuestMemoryMmap,
        domid: u16,
        nr_frames: u64,
        nr_vcpus: u32,
        boot: &PvBootState,
    ) -> Result<PvMachine, PvSetupError> {
        let mut config = PvMmuConfig::new(domid, nr_frames, nr_vcpus as usize);
        config.hypervisor_l4_slots[HYPERCALL_L4_SLOT - 256] = write_hypervisor_tables(mem)?;
        let mut mmu = PvMmu::new(config)?;
        let mut frames = GuestFrames { mem, guest: None };
        let l4 = boot.cr3 >> 12;
        let pin = MmuextOp {
            cmd: MMUEXT_PIN_L4_TABLE,
            arg1: l4,
            ..Default::default()
        };
        mmu.mmuext_one(&mut frames, 0, pin)
            .result
            .map_err(|error| PvSetupError::PinBootTables { mfn: l4, error })?;
        let load = MmuextOp {
            cmd: MMUEXT_NEW_BASEPTR,
            arg1: l4,
            ..Default::default()
        };
        mmu.mmuext_one(&mut frames, 0, load)
            .result
            .map_err(PvSetupError::LoadBootTables)?;
        Ok(PvMachine {
            mmu: Mutex::new(mmu),
        })
    }

    /// Serve `call` if it is one of the PV MMU hypercalls: the return
    /// value and the effects the vCPU must apply. `None` for every other
    /// hypercall (kxen-xen's dispatch serves those).
    pub fn hypercall(
        &self,
        vcpu: u32,
        mem: &GuestMemoryMmap,
        guest: &GuestAccess<'_>,
        call: &Call,
    ) -> Option<(i64, Effects)> {
        let [a1, a2, a3, a4, _] = call.args;
        let mut frames = GuestFrames {
            mem,
            guest: Some(guest),
        };
        // A poisoned lock means a panic while holding it, which already
        // ends the domain; serve on rather than panic again.
        let mut mmu = self.mmu.lock().unwrap_or_else(|e| e.into_inner());
        let vcpu = vcpu as usize;
        let (ret, effects) = match call.nr {
            pv_nr::MMU_UPDATE | pv_nr::MMUEXT_OP => {
                let count = (a2 & !MMU_UPDATE_PREEMPTED) as u32;
                let foreigndom = a4 as u32;
                let outcome = if call.nr == pv_nr::MMU_UPDATE {
                    mmu.mmu_update(&mut frames, vcpu, a1, count, foreigndom)
                } else {
                    mmu.mmuext_op(&mut frames, vcpu, a1, count, foreigndom)
                };
                let mut ret = outcome.return_value();
                if let (Some(done), true) = (outcome.done, a3 != 0) {
                    if guest.write(a3, &done.to_le_bytes()).is_err() && ret == 0 {
                        ret = -EFAULT;
                    }
                }
                (ret, outcome.effects)
            }
            pv_nr::UPDATE_VA_MAPPING => {
                let outcome = mmu.update_va_mapping(&mut frames, vcpu, a1, a2, a3);
                (outcome.return_value(), outcome.effects)
            }
            pv_nr::UPDATE_VA_MAPPING_OTHERDOMAIN => {
                // kxen-vmm sees no other domain: every foreign id is
                // answered as one that does not exist (-ESRCH).
                let outcome = mmu.update_va_mapping_otherdomain(
                    &mut frames,
                    vcpu,
                    a1,
                    a2,
                    a3,
                    a4 as u16,
                    false,
                );
                (outcome.return_value(), outcome.effects)
            }
            _ => return None,
        };
        debug!(vcpu, nr = call.nr, ?call.args, ret, ?effects, "PV MMU hypercall");
        Some((ret, effects))
    }

    /// The L4 vCPU `vcpu` runs on in kernel mode, as a CR3 value.
    pub fn kernel_cr3(&self, vcpu: u32) -> Option<u64> {
        let mmu = self.mmu.lock().unwrap_or_else(|e| e.into_inner());
        mmu.vcpu(vcpu as usize)?.kernel_base.map(|mfn| mfn << 12)
    }
}

/// Fill the HYPERCALL_PAGE frame with kxen's 32-byte PV stubs
/// ([`pv_hypercall_stub`]: the number stored to the transport page).
pub fn fill_hypercall_page(mem: &GuestMemoryMmap, mfn: u64) -> Result<(), PvSetupError> {
    let mut page = vec![0xccu8; xen_abi::PAGE_SIZE];
    for nr in 0..STUB_COUNT {
        let stub = pv_hypercall_stub(nr as u32);
        page[nr * stub.len()..(nr + 1) * stub.len()].copy_from_slice(&stub);
    }
    let gpa = mfn
        .checked_mul(xen_abi::PAGE_SIZE as u64)
        .ok_or(PvSetupError::HypercallPage(mfn))?;
    mem.write_slice(&page, GuestAddress(gpa))
        .map_err(|_| PvSetupError::HypercallPage(mfn))?;
    info!(mfn, "PV hypercall page");
    Ok(())
}

fn pv_segment(selector: u16, kind: u8, long: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: kind,
        present: 1,
        dpl: 3,
        db: u8::from(!long),
        s: 1,
        l: u8::from(long),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Put vCPU 0 at the PV kernel's entry: long mode, paging on the
/// builder's L4, CPL3 with Xen's flat kernel selectors, RIP = ENTRY,
/// RSI = start_info, RSP = the boot stack's top, interrupts off (events
/// are masked in vcpu_info by the caller).
pub fn setup_pv_bsp(fd: &kvm_ioctls::VcpuFd, boot: &PvBootState) -> Result<(), VmError> {
    let mut sregs = fd.get_sregs()?;
    sregs.cs = pv_segment(FLAT_KERNEL_CS64, 0xb, true);
    sregs.ss = pv_segment(FLAT_KERNEL_SS64, 0x3, false);
    for seg in [&mut sregs.ds, &mut sregs.es, &mut sregs.fs, &mut sregs.gs] {
        *seg = kvm_segment {
            selector: FLAT_KERNEL_DS64,
            ..pv_segment(FLAT_KERNEL_DS64, 0x3, false)
        };
    }
    sregs.tr = kvm_segment {
        base: 0,
        limit: 0x67,
        selector: 0,
        type_: 0xb,
        present: 1,
        s: 0,
        ..Default::default()
    };
    sregs.cr0 = 0x8001_0033; // PG | WP | NE | ET | MP | PE
    sregs.cr3 = boot.cr3;
    sregs.cr4 = 0x6a0; // OSXMMEXCPT | OSFXSR | PGE | PAE
    sregs.efer = 0xd01; // NXE | LMA | LME | SCE
    fd.set_sregs(&sregs)?;
    let regs = kvm_bindings::kvm_regs {
        rip: boot.entry,
        rsi: boot.start_info_va,
        rsp: boot.stack_top,
        rflags: 0x2,
        ..Default::default()
    };
    fd.set_regs(&regs)?;
    Ok(())
}

//! kxen-pv's privileged-instruction emulation (`emulate`): a #GP(0) or a
//! #UD at arbitrary instruction bytes, with an arbitrary vCPU state.
//!
//! Input: a flags byte (bit 0 kernel mode, bit 1 a #UD rather than a
//! #GP, bits 2-3 the virtual IOPL, bit 4 the architectural_iopl assist,
//! bit 5 an AMD CPUID, bit 6 the guest's CR4.OSXSAVE, bit 7 a loaded
//! kernel L4), RIP (8 bytes), RAX, RCX, RDX, RBX (8 bytes each), then up
//! to 15 instruction bytes (fewer: the next byte is unreadable).
//! Checked: no panic; an emulated instruction moves RIP by exactly its
//! decoded length (7 for the forced CPUID, whose bytes must be there);
//! a page fault lies within the bytes' reach; user mode changes no
//! privileged state; a refusal changes nothing at all.

use iced_x86::{Decoder, DecoderOptions};
use kxen_pv::emulate::{
    emulate_invalid_op, emulate_privileged_op, GprIndex, Outcome, PrivilegedCpu, SegmentBase,
    VirtualCpu, FORCED_CPUID, FORCED_CPUID_LEN, FORCED_EMULATION_SIGNATURE, MAX_INSN_LEN,
};
use kxen_pv::{Mfn, MmuError};

/// Frames below this load as base pointers and hypercall pages.
const NR_FRAMES: Mfn = 0x400;

#[derive(Clone, PartialEq, Eq, Debug)]
struct FuzzCpu {
    gpr: [u64; 16],
    kernel: bool,
    amd: bool,
    virt: VirtualCpu,
    fs: u64,
    gs: u64,
    base: Option<Mfn>,
    hypercall_page: Option<Mfn>,
}

impl PrivilegedCpu for FuzzCpu {
    fn vcpu_id(&self) -> u32 {
        1
    }
    fn kernel_mode(&self) -> bool {
        self.kernel
    }
    fn gpr(&self, index: GprIndex) -> u64 {
        self.gpr[index]
    }
    fn set_gpr(&mut self, index: GprIndex, value: u64) {
        self.gpr[index] = value;
    }
    fn hardware_cr0(&self) -> u64 {
        0x8005_0033
    }
    fn hardware_cr4(&self) -> u64 {
        0x5_06e0
    }
    fn virtual_cpu(&mut self) -> &mut VirtualCpu {
        &mut self.virt
    }
    fn segment_base(&self, which: SegmentBase) -> u64 {
        match which {
            SegmentBase::Fs => self.fs,
            SegmentBase::Gs => self.gs,
        }
    }
    fn set_segment_base(&mut self, which: SegmentBase, base: u64) {
        match which {
            SegmentBase::Fs => self.fs = base,
            SegmentBase::Gs => self.gs = base,
        }
    }
    fn tsc(&mut self) -> u64 {
        0x1000
    }
    fn efer(&self) -> u64 {
        0xd01
    }
    fn cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4] {
        let vendor: &[u8; 12] = if self.amd {
            b"AuthenticAMD"
        } else {
            b"GenuineIntel"
        };
        let word =
            |i: usize| u32::from_le_bytes([vendor[i], vendor[i + 1], vendor[i + 2], vendor[i + 3]]);
        match leaf {
            0 => [0xd, word(0), word(8), word(4)],
            0x8000_0000 => [0x8000_0008, 0, 0, 0],
            _ => [leaf, subleaf, !leaf, !subleaf],
        }
    }
    fn max_machine_frame(&self) -> Mfn {
        NR_FRAMES - 1
    }
    fn kernel_base_pointer(&self) -> Option<Mfn> {
        self.base
    }
    fn load_kernel_base_pointer(&mut self, mfn: Mfn) -> Result<(), MmuError> {
        if mfn >= NR_FRAMES {
            return Err(MmuError::BadFrame { mfn });
        }
        self.base = Some(mfn);
        Ok(())
    }
    fn install_hypercall_page(&mut self, mfn: Mfn) -> bool {
        let ok = mfn < NR_FRAMES;
        if ok {
            self.hypercall_page = Some(mfn);
        }
        ok
    }
}

fn word(data: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    let tail = data.get(at..).unwrap_or(&[]);
    let have = tail.len().min(8);
    w[..have].copy_from_slice(&tail[..have]);
    u64::from_le_bytes(w)
}

/// One fuzz input; panics on any broken invariant. True when the
/// instruction was emulated.
pub fn pv_emulate(data: &[u8]) -> bool {
    let Some(&flags) = data.first() else {
        return false;
    };
    let rip = word(data, 1);
    let mut cpu = FuzzCpu {
        gpr: [0; 16],
        kernel: flags & 1 != 0,
        amd: flags & 0x20 != 0,
        virt: VirtualCpu::new(0x5_06e0),
        fs: 0x7000,
        gs: 0xffff_8000_0000_0000,
        base: (flags & 0x80 != 0).then_some(0x10),
        hypercall_page: None,
    };
    cpu.virt.iopl = (flags >> 2) & 3;
    cpu.virt.architectural_iopl = flags & 0x10 != 0;
    if flags & 0x40 != 0 {
        cpu.virt.cr4 |= 1 << 18;
    }
    for (i, reg) in [0usize, 1, 2, 3].into_iter().enumerate() {
        cpu.gpr[reg] = word(data, 9 + 8 * i);
    }
    let bytes = data.get(41..).unwrap_or(&[]);
    let bytes = &bytes[..bytes.len().min(MAX_INSN_LEN)];
    let before = cpu.clone();
    let invalid_op = flags & 2 != 0;
    let outcome = if invalid_op {
        emulate_invalid_op(&mut cpu, rip, bytes)
    } else {
        emulate_privileged_op(&mut cpu, rip, bytes)
    };
    match outcome {
        Outcome::Emulated { rip: next } => {
            let moved = next.wrapping_sub(rip);
            if invalid_op {
                assert_eq!(moved, FORCED_CPUID_LEN);
                let want = [FORCED_EMULATION_SIGNATURE.as_slice(), &FORCED_CPUID].concat();
                assert!(bytes.starts_with(&want), "forced CPUID without its bytes");
            } else {
                let mut decoder = Decoder::with_ip(64, bytes, rip, DecoderOptions::NONE);
                let insn = decoder.decode();
                assert!(!insn.is_invalid(), "emulated an undecodable instruction");
                assert_eq!(
                    moved,
                    insn.len() as u64,
                    "RIP moved by other than the length"
                );
            }
            if !cpu.kernel {
                assert_eq!(cpu.virt, before.virt, "user mode changed privileged state");
                assert_eq!(
                    (cpu.fs, cpu.gs, cpu.base),
                    (before.fs, before.gs, before.base)
                );
                assert_eq!(cpu.hypercall_page, None);
            }
            // Besides RAX, RCX, RDX and RBX only a mov-from-CR destination
            // may change; the base pointer only to a domain frame.
            let others = (4..16).filter(|&r| cpu.gpr[r] != before.gpr[r]).count();
            assert!(others <= 1, "emulation wrote {others} other registers");
            if let Some(base) = cpu.base {
                assert!(base < NR_FRAMES);
            }
            true
        }
        Outcome::BouncePageFault { address } => {
            let reach = address.wrapping_sub(rip);
            assert_eq!(
                reach,
                bytes.len() as u64,
                "#PF not at the first unreadable byte"
            );
            assert_eq!(cpu, before, "a bounce changed the vCPU");
            false
        }
        Outcome::BounceGp | Outcome::BounceUd => {
            assert_eq!(cpu, before, "a bounce changed the vCPU");
            if invalid_op {
                assert_ne!(outcome, Outcome::BounceGp, "CPUID faulting is never on");
            }
            false
        }
    }
}

//! System calls of unmodified HVM kernels on PVM hosts.
//!
//! On KVM's PVM backend guest ring 3 runs natively and guest ring 0 in the
//! instruction emulator. A `syscall` from guest user mode there loads RIP
//! from `MSR_LSTAR` but stays in ring 3 (CS 0x33), so fetching the kernel's
//! entry point faults and every process dies on its first system call.
//! Patched PVH kernels recognise that page fault themselves
//! (guest-kernel-patches/0002); a stock kernel cannot, so the VMM does it:
//!
//! * the guest's write of `MSR_LSTAR` exits to us (MSR filter); we perform
//!   it and then plant an `int3` on the first instruction of the guest's
//!   page-fault handler (IDT vector 14), remembering what it displaced;
//! * KVM's emulator cannot run `int3` in ring 0, so every page fault now
//!   stops in the VMM at that address. The guest may write over the
//!   breakpoint (Linux applies its `clac` alternative there after setting
//!   LSTAR); every emulation exit checks the byte and puts it back. If the fault's frame says user mode
//!   was fetching at `MSR_LSTAR`, the vCPU is put where a real `syscall`
//!   would have left it: CPL 0 at `MSR_LSTAR`, the user stack pointer,
//!   RFLAGS masked by `MSR_SYSCALL_MASK`, RCX (the return address, which
//!   the host's own `syscall` set) kept and R11 the user RFLAGS from the
//!   frame. Any other fault runs the displaced instruction and goes on
//!   into the handler.
//!
//! On VT-x/SVM hosts none of this is installed: `syscall` works there.

use std::sync::Mutex;

use tracing::{info, warn};

/// `MSR_LSTAR`: the 64-bit `syscall` entry point.
pub const MSR_LSTAR: u32 = 0xc000_0082;
/// `MSR_SYSCALL_MASK` (FMASK): RFLAGS bits `syscall` clears.
pub const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
/// The page-fault vector.
const PAGE_FAULT_VECTOR: u64 = 14;
const RFLAGS_RF: u64 = 1 << 16;
const RFLAGS_VM: u64 = 1 << 17;
const RFLAGS_FIXED: u64 = 1 << 1;
const RFLAGS_AC: u64 = 1 << 18;

/// Whether this host's KVM is the PVM backend (no hardware virtualisation
/// extensions), where user-mode `syscall` does not reach guest ring 0.
pub fn host_needs_bridge() -> bool {
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        return true;
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .unwrap_or_default();
    !flags.split_whitespace().any(|f| f == "vmx" || f == "svm")
}

/// The instruction an `int3` displaced, which the VMM runs in its place
/// on ordinary page faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Displaced {
    /// `endbr64` or a NOP: only RIP moves.
    Nop(u8),
    /// `clac`: RFLAGS.AC cleared.
    Clac,
}

impl Displaced {
    /// Classify the first bytes of a handler; `None` for anything the VMM
    /// would have to emulate for real (then nothing is planted).
    pub fn decode(bytes: &[u8]) -> Option<Displaced> {
        match bytes {
            [0xf3, 0x0f, 0x1e, 0xfa, ..] => Some(Displaced::Nop(4)), // endbr64
            [0x0f, 0x01, 0xca, ..] => Some(Displaced::Clac),
            [0x0f, 0x1f, 0x44, 0x00, 0x00, ..] => Some(Displaced::Nop(5)),
            [0x0f, 0x1f, 0x40, 0x00, ..] => Some(Displaced::Nop(4)),
            [0x0f, 0x1f, 0x00, ..] => Some(Displaced::Nop(3)),
            [0x66, 0x90, ..] => Some(Displaced::Nop(2)),
            [0x90, ..] => Some(Displaced::Nop(1)),
            _ => None,
        }
    }

    /// Run the displaced instruction on (rip, rflags).
    pub fn step(self, rip: u64, rflags: u64) -> (u64, u64) {
        match self {
            Displaced::Nop(len) => (rip.wrapping_add(u64::from(len)), rflags),
            Displaced::Clac => (rip.wrapping_add(3), rflags & !RFLAGS_AC),
        }
    }
}

/// Where the breakpoint sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Planted {
    /// Guest-virtual address of the page-fault handler.
    pub handler: u64,
    /// Its guest-physical address (where the `int3` byte was written).
    pub gpa: u64,
    /// The byte the `int3` replaced (the guest may rewrite it: Linux
    /// patches its `clac` alternative over the handler's first bytes after
    /// it set LSTAR, so the breakpoint is put back and this updated).
    pub original: u8,
}

/// The hardware frame a page fault pushed, from the handler's RSP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultFrame {
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

impl FaultFrame {
    pub const LEN: usize = 48;

    pub fn parse(raw: &[u8; Self::LEN]) -> FaultFrame {
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&raw[i * 8..i * 8 + 8]);
            u64::from_le_bytes(b)
        };
        FaultFrame {
            error_code: word(0),
            rip: word(1),
            cs: word(2),
            rflags: word(3),
            rsp: word(4),
            ss: word(5),
        }
    }

    /// A user-mode fetch at the syscall entry point: the PVM `syscall`.
    pub fn is_stranded_syscall(&self, lstar: u64) -> bool {
        self.cs & 3 == 3 && self.rip == lstar && lstar != 0
    }
}

/// Registers a real `syscall` from the frame's user context would leave:
/// `(rip, rsp, rflags, r11)`; RCX already holds the return address.
pub fn syscall_entry_state(frame: &FaultFrame, lstar: u64, fmask: u64) -> (u64, u64, u64, u64) {
    let user_flags = frame.rflags & !(RFLAGS_RF | RFLAGS_VM);
    let rflags = (user_flags & !fmask) | RFLAGS_FIXED;
    (lstar, frame.rsp, rflags, user_flags | RFLAGS_FIXED)
}

/// The IDT gate's handler offset from its 16 bytes.
pub fn gate_offset(gate: &[u8; 16]) -> u64 {
    u64::from(u16::from_le_bytes([gate[0], gate[1]]))
        | (u64::from(u16::from_le_bytes([gate[6], gate[7]])) << 16)
        | (u64::from(u32::from_le_bytes([gate[8], gate[9], gate[10], gate[11]])) << 32)
}

/// Offset of the page-fault gate in the IDT, if the limit covers it.
pub fn page_fault_gate(idt_limit: u16) -> Option<u64> {
    let offset = PAGE_FAULT_VECTOR * 16;
    (offset + 15 <= u64::from(idt_limit)).then_some(offset)
}

/// Per-domain state: where the breakpoint is, and how often it fired.
#[derive(Debug, Default)]
pub struct SyscallBridge {
    planted: Mutex<Option<Planted>>,
    pub bridged: std::sync::atomic::AtomicU64,
}

impl SyscallBridge {
    pub fn planted(&self) -> Option<Planted> {
        *self.planted.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The guest wrote over the breakpoint; `byte` is what is there now.
    pub fn overwritten(&self, byte: u8) {
        if let Some(p) = self
            .planted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            p.original = byte;
        }
    }

    /// The breakpoint a restored domain's source had planted (its `int3`
    /// came with the guest's memory).
    pub fn restore(&self, p: Planted) {
        info!(
            handler = p.handler,
            original = p.original,
            "syscall bridge: breakpoint restored"
        );
        *self.planted.lock().unwrap_or_else(|e| e.into_inner()) = Some(p);
    }

    /// Record a new breakpoint; false if one is already there.
    pub fn plant(&self, p: Planted) -> bool {
        let mut slot = self.planted.lock().unwrap_or_else(|e| e.into_inner());
        match *slot {
            Some(old) if old.handler == p.handler => false,
            Some(old) => {
                warn!(
                    old = old.handler,
                    new = p.handler,
                    "page-fault handler moved; the old breakpoint stays"
                );
                *slot = Some(p);
                true
            }
            None => {
                info!(
                    handler = p.handler,
                    original = p.original,
                    "syscall bridge: breakpoint on the page-fault handler"
                );
                *slot = Some(p);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_what_handlers_start_with() {
        assert_eq!(
            Displaced::decode(&[0xf3, 0x0f, 0x1e, 0xfa, 0x0f]),
            Some(Displaced::Nop(4))
        );
        assert_eq!(
            Displaced::decode(&[0x0f, 0x01, 0xca]),
            Some(Displaced::Clac)
        );
        assert_eq!(
            Displaced::decode(&[0x0f, 0x1f, 0x00, 0xe8]),
            Some(Displaced::Nop(3))
        );
        // push %rbp, call: not something to run in its place.
        assert_eq!(Displaced::decode(&[0x55]), None);
        assert_eq!(Displaced::decode(&[0xe8, 0, 0, 0, 0]), None);
        assert_eq!(Displaced::decode(&[]), None);
        assert_eq!(Displaced::Clac.step(0x10, 1 << 18 | 2), (0x13, 2));
        assert_eq!(Displaced::Nop(4).step(0x10, 0x46), (0x14, 0x46));
    }

    #[test]
    fn gate_offset_joins_three_fields() {
        let mut gate = [0u8; 16];
        gate[0..2].copy_from_slice(&0x1234u16.to_le_bytes());
        gate[6..8].copy_from_slice(&0x81c0u16.to_le_bytes());
        gate[8..12].copy_from_slice(&0xffff_ffffu32.to_le_bytes());
        assert_eq!(gate_offset(&gate), 0xffff_ffff_81c0_1234);
        assert_eq!(page_fault_gate(0xfff), Some(14 * 16));
        assert_eq!(page_fault_gate(14 * 16 + 14), None);
    }

    #[test]
    fn stranded_syscall_becomes_a_syscall_entry() {
        let lstar = 0xffff_ffff_81c0_0080;
        let mut raw = [0u8; FaultFrame::LEN];
        for (i, v) in [
            0x0fu64,
            lstar,
            0x33,
            0x246 | RFLAGS_RF,
            0x7ffc_0000_1000,
            0x2b,
        ]
        .iter()
        .enumerate()
        {
            raw[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        let frame = FaultFrame::parse(&raw);
        assert!(frame.is_stranded_syscall(lstar));
        // Linux's FMASK clears TF, DF, IF, IOPL, AC, NT.
        let fmask = 0x47700;
        let (rip, rsp, rflags, r11) = syscall_entry_state(&frame, lstar, fmask);
        assert_eq!(rip, lstar);
        assert_eq!(rsp, 0x7ffc_0000_1000);
        assert_eq!(rflags, 0x46);
        assert_eq!(r11, 0x246);
        // Kernel-mode faults there, or other user faults, are not syscalls.
        let kernel = FaultFrame { cs: 0x10, ..frame };
        assert!(!kernel.is_stranded_syscall(lstar));
        let elsewhere = FaultFrame {
            rip: 0x40_1000,
            ..frame
        };
        assert!(!elsewhere.is_stranded_syscall(lstar));
        assert!(!frame.is_stranded_syscall(0));
    }
}

//! Exceptions delivered Xen's way: the virtual trap table a PV kernel
//! registers with `set_trap_table`, the bounce frame an exception pushes
//! on the guest kernel's stack, and the `iret` hypercall that returns.
//!
//! Facts from Xen 4.17 (`public/xen.h`, `public/arch-x86/xen.h`,
//! `public/arch-x86/xen-x86_64.h`, `arch/x86/pv/callback.c`'s
//! `do_set_trap_table`, `arch/x86/x86_64/entry.S`'s `create_bounce_frame`,
//! `arch/x86/pv/iret.c`'s `do_iret`, with the later X86_EFLAGS_ALL/MBS
//! masking of the returned RFLAGS). Nothing here touches a CPU: the
//! executor reads guest memory for these functions, writes what they
//! return onto the guest stack and loads the registers they name.

use xen_abi::errno;

/// Vectors in the virtual IDT.
pub const NR_VECTORS: usize = 256;
/// Bytes of one `struct trap_info` in the 64-bit ABI: `u8 vector`,
/// `u8 flags`, `u16 cs`, 4 bytes of padding, `u64 address`.
pub const TRAP_INFO_SIZE: u64 = 16;
/// `TI_GET_DPL`: the privilege `int $n` needs to reach the handler.
pub const TI_DPL_MASK: u8 = 3;
/// `TI_GET_IF`: deliver with event upcalls masked (an interrupt gate).
pub const TI_MASK_EVENTS: u8 = 4;
/// `VGCF_in_syscall` in the iret frame's `flags`: return as from a
/// syscall, leaving RCX and R11 to the guest's current values.
pub const VGCF_IN_SYSCALL: u64 = 1 << 8;
/// Xen's 64-bit PV kernel selectors (RPL 3: the kernel runs in ring 3).
pub const FLAT_KERNEL_CS64: u16 = 0xe033;
pub const FLAT_KERNEL_SS64: u16 = 0xe02b;
/// Vectors for which the CPU (and so the bounce frame) carries an error
/// code: #DF, #TS, #NP, #SS, #GP, #PF, #AC, #CP, #VC (29) and #SX (30).
pub const fn has_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10..=14 | 17 | 21 | 29 | 30)
}

/// The page-fault vector and its error code's user-mode bit.
pub const VECTOR_PAGE_FAULT: u8 = 14;
pub const PFEC_USER_MODE: u32 = 1 << 2;

/// A walk of the trap table array stops here even without its
/// terminator. Xen keeps reading (preempting itself into a
/// continuation); kxen has no continuations, and a table holds at most
/// 256 distinct vectors, so a longer array is a guest error.
pub const MAX_TRAP_TABLE_ENTRIES: u64 = 16 * NR_VECTORS as u64;

pub(crate) const RFLAGS_TF: u64 = 1 << 8;
pub(crate) const RFLAGS_IF: u64 = 1 << 9;
const RFLAGS_IOPL: u64 = 3 << 12;
const RFLAGS_NT: u64 = 1 << 14;
const RFLAGS_RF: u64 = 1 << 16;
const RFLAGS_VM: u64 = 1 << 17;
const RFLAGS_AC: u64 = 1 << 18;
/// Bit 1 of RFLAGS, always set.
const RFLAGS_MBS: u64 = 1 << 1;
/// Every defined, guest-settable RFLAGS bit (Xen's X86_EFLAGS_ALL: CF PF
/// AF ZF SF TF IF DF OF IOPL NT RF VM AC VIF VIP ID). `iret` drops the
/// rest, so a hostile frame cannot ask for reserved bits.
const RFLAGS_ALL: u64 = 0x003f_7fd5;

/// Why a trap request was refused, or why the domain must crash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrapError {
    /// The trap table array could not be read (entries before it stay
    /// registered, as in Xen).
    #[error("reading the trap table at {va:#x} faulted")]
    GuestFault { va: u64 },
    #[error("trap handler address {address:#x} (vector {vector}) is not canonical")]
    NonCanonicalHandler { vector: u8, address: u64 },
    #[error("trap table has no terminator within {MAX_TRAP_TABLE_ENTRIES} entries")]
    TooManyEntries,
    /// An exception with no registered handler: Xen crashes the domain
    /// (`create_bounce_frame` on a null bounce address).
    #[error("no handler registered for vector {vector}")]
    NoHandler { vector: u8 },
    /// `iret` to user mode while the vCPU has no user L4: Xen crashes
    /// the domain.
    #[error("iret to user mode without user page tables")]
    UserModeWithoutUserTables,
}

impl TrapError {
    /// The errno a hypercall returns (negated) for this refusal; `None`
    /// where Xen crashes the domain instead.
    pub fn errno(&self) -> Option<i64> {
        match self {
            TrapError::GuestFault { .. } => Some(errno::EFAULT),
            TrapError::NonCanonicalHandler { .. } | TrapError::TooManyEntries => {
                Some(errno::EINVAL)
            }
            TrapError::NoHandler { .. } | TrapError::UserModeWithoutUserTables => None,
        }
    }
}

/// One registered handler (`struct trap_info` without its vector).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TrapInfo {
    pub flags: u8,
    /// The code selector, its RPL raised to the guest kernel's (3).
    pub cs: u16,
    /// The handler; 0 means none.
    pub address: u64,
}

impl TrapInfo {
    pub fn dpl(&self) -> u8 {
        self.flags & TI_DPL_MASK
    }

    /// An interrupt gate: delivery masks event upcalls.
    pub fn masks_events(&self) -> bool {
        self.flags & TI_MASK_EVENTS != 0
    }
}

/// A 48-bit canonical address, as Xen's `is_canonical_address`.
pub fn is_canonical(va: u64) -> bool {
    ((va as i64) << 16 >> 16) as u64 == va
}

/// A vCPU's virtual IDT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrapTable {
    entries: Vec<TrapInfo>,
}

impl Default for TrapTable {
    fn default() -> Self {
        TrapTable {
            entries: vec![TrapInfo::default(); NR_VECTORS],
        }
    }
}

impl TrapTable {
    /// The handler registered for `vector`, if any.
    pub fn handler(&self, vector: u8) -> Option<TrapInfo> {
        let info = self.entries[vector as usize];
        (info.address != 0).then_some(info)
    }

    /// The table as a `vcpu_guest_context`'s `trap_ctxt[256]` holds it:
    /// (flags, cs, address) per vector, zero where none is registered.
    pub fn context_entries(&self) -> Vec<(u8, u16, u64)> {
        self.entries
            .iter()
            .map(|e| {
                if e.address == 0 {
                    (0, 0, 0)
                } else {
                    (e.flags, e.cs, e.address)
                }
            })
            .collect()
    }

    /// Replace the whole table from a `vcpu_guest_context`'s
    /// `trap_ctxt[256]`, given as (flags, cs, address) per vector (Xen's
    /// arch_set_info_guest copies it as it is). A non-canonical handler
    /// is -EINVAL there, and nothing is replaced.
    pub fn from_context(entries: &[(u8, u16, u64)]) -> Result<TrapTable, TrapError> {
        let mut table = TrapTable::default();
        for (vector, &(flags, cs, address)) in entries.iter().enumerate().take(NR_VECTORS) {
            if address == 0 {
                continue;
            }
            if !is_canonical(address) {
                return Err(TrapError::NonCanonicalHandler {
                    vector: vector as u8,
                    address,
                });
            }
            table.entries[vector] = TrapInfo {
                flags,
                cs: if cs & 3 < 3 { cs | 3 } else { cs },
                address,
            };
        }
        Ok(table)
    }

    /// `HYPERVISOR_set_trap_table(traps)`: `read` gives the 8-byte word
    /// at a guest-virtual address (None when that faults). A null
    /// pointer clears the table. Entries are stored as they are read, so
    /// a refusal keeps those before it (as Xen's loop does).
    pub fn set_trap_table(
        &mut self,
        traps: u64,
        mut read: impl FnMut(u64) -> Option<u64>,
    ) -> Result<(), TrapError> {
        if traps == 0 {
            self.entries.fill(TrapInfo::default());
            return Ok(());
        }
        for index in 0..MAX_TRAP_TABLE_ENTRIES {
            let va = traps.wrapping_add(index * TRAP_INFO_SIZE);
            let head = read(va).ok_or(TrapError::GuestFault { va })?;
            let address_va = va.wrapping_add(8);
            let address = read(address_va).ok_or(TrapError::GuestFault { va: address_va })?;
            if address == 0 {
                return Ok(());
            }
            let vector = head as u8;
            if !is_canonical(address) {
                return Err(TrapError::NonCanonicalHandler { vector, address });
            }
            let mut cs = (head >> 16) as u16;
            // fixup_guest_code_selector: an RPL below the guest kernel's
            // (3 for a 64-bit PV kernel) is raised to it.
            if cs & 3 < 3 {
                cs |= 3;
            }
            self.entries[vector as usize] = TrapInfo {
                flags: (head >> 8) as u8,
                cs,
                address,
            };
        }
        Err(TrapError::TooManyEntries)
    }
}

/// The guest state an exception interrupted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Interrupted {
    pub rip: u64,
    pub cs: u16,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u16,
    pub rcx: u64,
    pub r11: u64,
    /// The vCPU was in guest kernel mode (else user mode).
    pub kernel_mode: bool,
}

/// What delivering an exception does: the words to write at
/// `frame_va` (lowest address first) and the state to resume in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bounce {
    pub frame_va: u64,
    pub frame: Vec<u64>,
    pub rip: u64,
    pub rsp: u64,
    pub rflags: u64,
    pub cs: u16,
    pub ss: u16,
    /// The vCPU's event upcall mask after delivery.
    pub upcall_mask: u8,
    /// The vCPU was in user mode and must switch to kernel mode (its
    /// kernel L4 and GS bases) before resuming.
    pub switch_to_kernel: bool,
}

impl Bounce {
    /// The frame as bytes, for one write to guest memory.
    pub fn frame_bytes(&self) -> Vec<u8> {
        self.frame.iter().flat_map(|w| w.to_le_bytes()).collect()
    }
}

/// Xen's `create_bounce_frame` for `vector`: from the registered
/// handler, the interrupted state, the error code (if the vector has
/// one) and the vCPU's current upcall mask. `kernel_sp` is the stack
/// `stack_switch` registered, used when the exception came from user
/// mode.
pub fn bounce(
    table: &TrapTable,
    vector: u8,
    error_code: Option<u32>,
    from: &Interrupted,
    upcall_mask: u8,
    kernel_sp: u64,
) -> Result<Bounce, TrapError> {
    let handler = table
        .handler(vector)
        .ok_or(TrapError::NoHandler { vector })?;
    // A #PF's user bit tells the guest which of its modes faulted (Xen's
    // pv_inject_event re-sets it): the PV kernel runs at CPL3 too, so the
    // hardware sets it for kernel faults as well.
    let error_code = match (vector, error_code) {
        (VECTOR_PAGE_FAULT, Some(code)) if from.kernel_mode => Some(code & !PFEC_USER_MODE),
        (VECTOR_PAGE_FAULT, Some(code)) => Some(code | PFEC_USER_MODE),
        _ => error_code,
    };
    let extra: Vec<u64> = error_code.map(u64::from).into_iter().collect();
    Ok(create_bounce_frame(
        handler.address,
        handler.masks_events(),
        &extra,
        from,
        upcall_mask,
        kernel_sp,
    ))
}

/// The bounce frame every delivery to the guest kernel shares (an
/// exception, a user-mode `syscall`, an event upcall, the failsafe
/// callback): pushed below the interrupted RSP (kernel mode) or
/// `kernel_sp` (user mode), aligned down to 16, from the lowest address
/// {RCX, R11, `extra`..., RIP, CS with the upcall mask in bits 32-39,
/// RFLAGS with IF = !mask, RSP, SS}. `extra` is an exception's error code
/// or the failsafe callback's data selectors. The target runs with
/// Xen's kernel CS/SS, and with events masked if `mask_events`.
pub fn create_bounce_frame(
    target: u64,
    mask_events: bool,
    extra: &[u64],
    from: &Interrupted,
    upcall_mask: u8,
    kernel_sp: u64,
) -> Bounce {
    let mut cs = from.cs;
    let top = if from.kernel_mode {
        // "Indicate kernel context to guest": RPL 0 in the saved CS.
        cs &= !3;
        from.rsp
    } else {
        kernel_sp
    } & !0xf;
    // The saved upcall mask rides in bits 32-39 of the CS slot; the
    // pushed RFLAGS.IF is its inverse (the real IF is the hypervisor's),
    // IOPL is the virtual one (0: no architectural_iopl assist here).
    let saved_cs = u64::from(cs) | (u64::from(upcall_mask) << 32);
    let mut pushed_rflags = from.rflags & !(RFLAGS_IF | RFLAGS_IOPL);
    if upcall_mask == 0 {
        pushed_rflags |= RFLAGS_IF;
    }
    let mut frame = vec![from.rcx, from.r11];
    frame.extend_from_slice(extra);
    frame.extend([
        from.rip,
        saved_cs,
        pushed_rflags,
        from.rsp,
        u64::from(from.ss),
    ]);
    let frame_va = top.wrapping_sub(8 * frame.len() as u64);
    Bounce {
        frame_va,
        frame,
        rip: target,
        rsp: frame_va,
        // As the architecture does on a trap (and AC: no alignment
        // checks in kernel mode). IF stays the hypervisor's.
        rflags: (from.rflags & !(RFLAGS_TF | RFLAGS_VM | RFLAGS_RF | RFLAGS_NT | RFLAGS_AC))
            | RFLAGS_MBS,
        cs: FLAT_KERNEL_CS64,
        ss: FLAT_KERNEL_SS64,
        upcall_mask: if mask_events { 1 } else { upcall_mask },
        switch_to_kernel: !from.kernel_mode,
    }
}

/// `struct iret_context`, read from the guest's RSP at the `iret`
/// hypercall: nine words, top of stack first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IretFrame {
    pub rax: u64,
    pub r11: u64,
    pub rcx: u64,
    pub flags: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

impl IretFrame {
    pub const WORDS: usize = 9;

    pub fn from_words(w: [u64; Self::WORDS]) -> IretFrame {
        IretFrame {
            rax: w[0],
            r11: w[1],
            rcx: w[2],
            flags: w[3],
            rip: w[4],
            cs: w[5],
            rflags: w[6],
            rsp: w[7],
            ss: w[8],
        }
    }
}

/// The state `iret` resumes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IretReturn {
    /// RAX: the hypercall's "return value" is the saved RAX.
    pub rax: u64,
    pub rip: u64,
    pub cs: u16,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u16,
    /// RCX and R11 to restore; `None` for a VGCF_in_syscall return.
    pub rcx_r11: Option<(u64, u64)>,
    /// The vCPU's event upcall mask, from the frame's RFLAGS.IF.
    pub upcall_mask: u8,
    /// The frame's CS has RPL 3: switch to user mode (user L4).
    pub switch_to_user: bool,
}

/// Xen's `do_iret` for a 64-bit PV vCPU. The executor crashes the domain
/// when the frame cannot be read or this returns an error.
pub fn iret(frame: &IretFrame, has_user_tables: bool) -> Result<IretReturn, TrapError> {
    let switch_to_user = frame.cs & 3 == 3;
    if switch_to_user && !has_user_tables {
        return Err(TrapError::UserModeWithoutUserTables);
    }
    Ok(IretReturn {
        rax: frame.rax,
        rip: frame.rip,
        // Guest privilege is forced: RPL 3.
        cs: (frame.cs | 3) as u16,
        rflags: (frame.rflags & RFLAGS_ALL & !(RFLAGS_IOPL | RFLAGS_VM)) | RFLAGS_IF | RFLAGS_MBS,
        rsp: frame.rsp,
        ss: (frame.ss | 3) as u16,
        rcx_r11: (frame.flags & VGCF_IN_SYSCALL == 0).then_some((frame.rcx, frame.r11)),
        upcall_mask: u8::from(frame.rflags & RFLAGS_IF == 0),
        switch_to_user,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn entry(vector: u8, flags: u8, cs: u16, address: u64) -> [u64; 2] {
        [
            u64::from(vector) | (u64::from(flags) << 8) | (u64::from(cs) << 16),
            address,
        ]
    }

    fn guest(base: u64, entries: &[[u64; 2]]) -> BTreeMap<u64, u64> {
        let mut mem = BTreeMap::new();
        for (i, [head, address]) in entries.iter().enumerate() {
            mem.insert(base + 16 * i as u64, *head);
            mem.insert(base + 16 * i as u64 + 8, *address);
        }
        mem
    }

    #[test]
    fn set_trap_table_stores_until_terminator() {
        let mem = guest(
            0x1000,
            &[
                entry(3, 3, 0xe033, 0xffff_ffff_8000_1000),
                entry(6, TI_MASK_EVENTS, 0xe030, 0xffff_ffff_8000_2000),
                entry(0, 0, 0, 0),
                entry(13, 0, 0xe033, 0xffff_ffff_8000_3000),
            ],
        );
        let mut table = TrapTable::default();
        table
            .set_trap_table(0x1000, |va| mem.get(&va).copied())
            .unwrap();
        let bp = table.handler(3).unwrap();
        assert_eq!((bp.dpl(), bp.masks_events(), bp.cs), (3, false, 0xe033));
        let ud = table.handler(6).unwrap();
        // RPL raised to the kernel's 3; DPL 0, events masked.
        assert_eq!((ud.dpl(), ud.masks_events(), ud.cs), (0, true, 0xe033));
        assert_eq!(table.handler(13), None, "after the terminator");
        // A null pointer clears everything.
        table.set_trap_table(0, |_| None).unwrap();
        assert_eq!(table.handler(3), None);
    }

    #[test]
    fn set_trap_table_refusals_keep_earlier_entries() {
        let mem = guest(
            0x1000,
            &[
                entry(3, 0, 0xe033, 0xffff_ffff_8000_1000),
                entry(6, 0, 0xe033, 0x0000_8000_0000_0000),
            ],
        );
        let mut table = TrapTable::default();
        let err = table
            .set_trap_table(0x1000, |va| mem.get(&va).copied())
            .unwrap_err();
        assert_eq!(
            err,
            TrapError::NonCanonicalHandler {
                vector: 6,
                address: 0x0000_8000_0000_0000
            }
        );
        assert_eq!(err.errno(), Some(errno::EINVAL));
        assert!(table.handler(3).is_some());
        assert_eq!(table.handler(6), None);
        // The array runs into unmapped memory: -EFAULT.
        let err = table
            .set_trap_table(0x1020, |va| mem.get(&va).copied())
            .unwrap_err();
        assert_eq!(err, TrapError::GuestFault { va: 0x1020 });
        assert_eq!(err.errno(), Some(errno::EFAULT));
        let err = table.set_trap_table(0xdead_0000, |_| None).unwrap_err();
        assert_eq!(err.errno(), Some(errno::EFAULT));
        // An endless array (every word readable, none 0) is bounded.
        let err = table.set_trap_table(0x1000, |_| Some(1)).unwrap_err();
        assert_eq!(err, TrapError::TooManyEntries);
    }

    #[test]
    fn canonical_addresses() {
        assert!(is_canonical(0x7fff_ffff_ffff));
        assert!(is_canonical(0xffff_8000_0000_0000));
        assert!(!is_canonical(0x8000_0000_0000));
        assert!(!is_canonical(0xfff0_0000_0000_0000));
    }

    fn table_with(vector: u8, flags: u8) -> TrapTable {
        let mem = guest(
            0x100,
            &[entry(vector, flags, 0xe033, 0xffff_ffff_8000_4000)],
        );
        let mut table = TrapTable::default();
        table
            .set_trap_table(0x100, |va| Some(mem.get(&va).copied().unwrap_or(0)))
            .unwrap();
        table
    }

    fn kernel_state() -> Interrupted {
        Interrupted {
            rip: 0xffff_ffff_8000_0100,
            cs: 0xe033,
            rflags: 0x2 | RFLAGS_TF | RFLAGS_AC | RFLAGS_IOPL,
            rsp: 0xffff_ffff_8001_0ff8,
            ss: 0xe02b,
            rcx: 0x1111,
            r11: 0x2222,
            kernel_mode: true,
        }
    }

    #[test]
    fn bounce_frame_from_kernel_mode_without_error_code() {
        let table = table_with(3, 3);
        let from = kernel_state();
        let b = bounce(&table, 3, None, &from, 0, 0).unwrap();
        // 16-byte aligned top, then 7 words below it.
        assert_eq!(b.frame_va, 0xffff_ffff_8001_0ff0 - 7 * 8);
        assert_eq!(
            b.frame,
            vec![
                0x1111,
                0x2222,
                from.rip,
                0xe030, // RPL cleared: kernel context; mask 0 in bits 32-39
                0x2 | RFLAGS_TF | RFLAGS_AC | RFLAGS_IF, // IF = !mask, IOPL 0
                from.rsp,
                0xe02b,
            ]
        );
        assert_eq!(b.rip, 0xffff_ffff_8000_4000);
        assert_eq!(b.rsp, b.frame_va);
        assert_eq!(b.rflags, 0x2 | RFLAGS_IOPL);
        assert_eq!((b.cs, b.ss), (FLAT_KERNEL_CS64, FLAT_KERNEL_SS64));
        assert_eq!(b.upcall_mask, 0, "a trap gate leaves the mask");
        assert!(!b.switch_to_kernel);
        assert_eq!(b.frame_bytes().len(), 56);
    }

    #[test]
    fn bounce_frame_with_error_code_and_masking_gate() {
        let table = table_with(13, TI_MASK_EVENTS);
        let from = kernel_state();
        let b = bounce(&table, 13, Some(0xe030), &from, 1, 0).unwrap();
        assert_eq!(b.frame.len(), 8);
        assert_eq!(b.frame[2], 0xe030, "error code after rcx, r11");
        assert_eq!(b.frame[3], from.rip);
        assert_eq!(b.frame[4], 0xe030 | (1 << 32), "saved mask in bits 32-39");
        assert_eq!(b.frame[5] & RFLAGS_IF, 0, "IF = !mask");
        assert_eq!(b.upcall_mask, 1);
        assert!(has_error_code(13) && has_error_code(14) && !has_error_code(3));
    }

    #[test]
    fn page_fault_user_bit_names_the_guest_mode() {
        let table = table_with(14, 0);
        // The kernel runs at CPL3: the hardware's code has U set.
        let b = bounce(&table, 14, Some(0x7), &kernel_state(), 0, 0).unwrap();
        assert_eq!(b.frame[2], 0x3, "kernel mode: P|W, no U");
        let user = Interrupted {
            kernel_mode: false,
            ..kernel_state()
        };
        let b = bounce(&table, 14, Some(0x4), &user, 0, 0xffff_ffff_8002_0000).unwrap();
        assert_eq!(b.frame[2], 0x4, "user mode keeps U");
        let b = bounce(&table, 14, Some(0x0), &user, 0, 0xffff_ffff_8002_0000).unwrap();
        assert_eq!(b.frame[2], 0x4, "user mode gets U");
        // Other vectors' codes are left alone.
        let table = table_with(13, 0);
        let b = bounce(&table, 13, Some(0x4), &kernel_state(), 0, 0).unwrap();
        assert_eq!(b.frame[2], 0x4);
    }

    #[test]
    fn bounce_from_user_mode_uses_kernel_stack() {
        let table = table_with(6, 0);
        let from = Interrupted {
            cs: 0xe033,
            rsp: 0x7fff_0000,
            kernel_mode: false,
            ..kernel_state()
        };
        let b = bounce(&table, 6, None, &from, 0, 0xffff_ffff_8002_0008).unwrap();
        assert_eq!(b.frame_va, 0xffff_ffff_8002_0000 - 56);
        assert_eq!(b.frame[3], 0xe033, "user CS keeps RPL 3");
        assert_eq!(b.frame[5], 0x7fff_0000);
        assert!(b.switch_to_kernel);
    }

    #[test]
    fn no_handler_crashes() {
        let table = table_with(3, 0);
        let err = bounce(&table, 6, None, &kernel_state(), 0, 0).unwrap_err();
        assert_eq!(err, TrapError::NoHandler { vector: 6 });
        assert_eq!(err.errno(), None);
    }

    #[test]
    fn iret_restores_the_frame() {
        let frame = IretFrame::from_words([
            7,
            0x2222,
            0x1111,
            0,
            0xffff_ffff_8000_0102,
            0xe030,
            0x2 | RFLAGS_IF | RFLAGS_IOPL | RFLAGS_VM,
            0xffff_ffff_8001_0ff8,
            0xe02b,
        ]);
        let r = iret(&frame, false).unwrap();
        assert_eq!(r.rax, 7);
        assert_eq!(r.rip, 0xffff_ffff_8000_0102);
        assert_eq!((r.cs, r.ss), (0xe033, 0xe02b));
        assert_eq!(r.rflags, 0x2 | RFLAGS_IF);
        assert_eq!(r.rcx_r11, Some((0x1111, 0x2222)));
        assert_eq!(r.upcall_mask, 0);
        assert!(!r.switch_to_user);
        // Reserved RFLAGS bits are dropped, bit 1 always set.
        let hostile = IretFrame {
            rflags: u64::MAX,
            ..frame
        };
        assert_eq!(
            iret(&hostile, false).unwrap().rflags,
            RFLAGS_ALL & !(RFLAGS_IOPL | RFLAGS_VM) | RFLAGS_MBS
        );
        // In-syscall return keeps RCX/R11; IF clear masks events.
        let r = iret(
            &IretFrame {
                flags: VGCF_IN_SYSCALL,
                rflags: 0x2,
                ..frame
            },
            false,
        )
        .unwrap();
        assert_eq!((r.rcx_r11, r.upcall_mask), (None, 1));
        // To user mode: needs user page tables.
        let user = IretFrame {
            cs: 0xe033,
            ..frame
        };
        assert_eq!(
            iret(&user, false).unwrap_err(),
            TrapError::UserModeWithoutUserTables
        );
        assert!(iret(&user, true).unwrap().switch_to_user);
    }
}

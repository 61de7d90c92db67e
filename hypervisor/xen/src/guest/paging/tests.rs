//! The walker against hand-built page tables, one case per rule.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::guest::GuestAccess;

const P: u64 = PRESENT;
const RW: u64 = WRITABLE;
const US: u64 = USER;
const PS: u64 = LARGE_PAGE;

const PML5: u64 = 0x1000;
const PML4: u64 = 0x2000;
const PDPT: u64 = 0x3000;
const PD: u64 = 0x4000;
const PT: u64 = 0x5000;
/// The 4 KiB page the tests map.
const PAGE: u64 = 0x10_0000;
/// A second page, for accesses that straddle two.
const PAGE2: u64 = 0x10_1000;

/// PML5 1, PML4 1, PDPT 2, PD 3, PT 4, offset 0x123.
const VA: u64 = (1 << 39) | (2 << 30) | (3 << 21) | (4 << 12) | 0x123;
/// The page after VA's (PT entry 5).
const VA_NEXT_PAGE: u64 = (1 << 39) | (2 << 30) | (3 << 21) | (5 << 12);

/// 4 MiB of RAM at 0 and 4 MiB at 8 MiB, with a hole between.
fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20), (GuestAddress(8 << 20), 4 << 20)])
        .expect("guest memory")
}

fn put64(mem: &GuestMemoryMmap, gpa: u64, v: u64) {
    mem.write_obj(v, GuestAddress(gpa)).expect("in RAM");
}

fn get64(mem: &GuestMemoryMmap, gpa: u64) -> u64 {
    mem.read_obj(GuestAddress(gpa)).expect("in RAM")
}

fn put32(mem: &GuestMemoryMmap, gpa: u64, v: u32) {
    mem.write_obj(v, GuestAddress(gpa)).expect("in RAM");
}

fn get32(mem: &GuestMemoryMmap, gpa: u64) -> u32 {
    mem.read_obj(GuestAddress(gpa)).expect("in RAM")
}

/// Long mode, 4 levels, WP on, NXE on, CPL 0, MAXPHYADDR 40.
fn long4() -> PagingRegs {
    PagingRegs {
        cr0: CR0_PG | CR0_WP | 1,
        cr3: PML4,
        cr4: CR4_PAE,
        efer: EFER_LMA | EFER_NXE | (1 << 8),
        cpl: 0,
        phys_addr_bits: 40,
    }
}

/// VA mapped to PAGE through 4 levels with every permission.
fn long4_tables() -> GuestMemoryMmap {
    let mem = memory();
    put64(&mem, PML4 + 8, PDPT | P | RW | US);
    put64(&mem, PDPT + 2 * 8, PD | P | RW | US);
    put64(&mem, PD + 3 * 8, PT | P | RW | US);
    put64(&mem, PT + 4 * 8, PAGE | P | RW | US);
    put64(&mem, PT + 5 * 8, PAGE2 | P | RW | US);
    mem
}

fn walk(
    mem: &GuestMemoryMmap,
    regs: PagingRegs,
    gva: u64,
    kind: AccessKind,
) -> Result<Translation, WalkError> {
    PageWalker::new(mem, regs).access(gva, kind)
}

fn gpa(
    mem: &GuestMemoryMmap,
    regs: PagingRegs,
    gva: u64,
    kind: AccessKind,
) -> Result<u64, WalkError> {
    walk(mem, regs, gva, kind).map(|t| t.gpa)
}

#[test]
fn long4_small_page_translates_with_all_rights() {
    let mem = long4_tables();
    let t = walk(&mem, long4(), VA, AccessKind::Read).unwrap();
    assert_eq!(t.gpa, PAGE + 0x123);
    assert_eq!(t.page_size, 4096);
    assert!(t.writable && t.user && t.executable);
}

#[test]
fn write_to_read_only_leaf_faults_for_supervisor_with_wp() {
    let mem = long4_tables();
    put64(&mem, PT + 4 * 8, PAGE | P | US);
    assert_eq!(gpa(&mem, long4(), VA, AccessKind::Read), Ok(PAGE + 0x123));
    assert_eq!(
        gpa(&mem, long4(), VA, AccessKind::Write),
        Err(WalkError::ReadOnly)
    );
    // CR0.WP clear: a supervisor write ignores R/W ...
    let no_wp = PagingRegs {
        cr0: long4().cr0 & !CR0_WP,
        ..long4()
    };
    assert_eq!(gpa(&mem, no_wp, VA, AccessKind::Write), Ok(PAGE + 0x123));
    // ... a user-mode write never does.
    let user_no_wp = PagingRegs { cpl: 3, ..no_wp };
    assert_eq!(
        gpa(&mem, user_no_wp, VA, AccessKind::Write),
        Err(WalkError::ReadOnly)
    );
}

#[test]
fn read_only_at_any_level_makes_the_page_read_only() {
    for (table_entry, value) in [
        (PML4 + 8, PDPT | P | US),
        (PDPT + 2 * 8, PD | P | US),
        (PD + 3 * 8, PT | P | US),
    ] {
        let mem = long4_tables();
        put64(&mem, table_entry, value);
        assert_eq!(
            gpa(&mem, long4(), VA, AccessKind::Write),
            Err(WalkError::ReadOnly),
            "R/W clear in the entry at {table_entry:#x}"
        );
        assert!(gpa(&mem, long4(), VA, AccessKind::Read).is_ok());
    }
}

#[test]
fn not_present_at_any_level_faults() {
    for (table_entry, level) in [
        (PML4 + 8, 4),
        (PDPT + 2 * 8, 3),
        (PD + 3 * 8, 2),
        (PT + 4 * 8, 1),
    ] {
        let mem = long4_tables();
        // Other bits set: a not-present entry's content means nothing.
        put64(&mem, table_entry, 0xdead_b000 | RW | US);
        assert_eq!(
            gpa(&mem, long4(), VA, AccessKind::Read),
            Err(WalkError::NotPresent {
                level,
                entry: 0xdead_b000 | RW | US
            })
        );
    }
}

#[test]
fn user_mode_access_to_supervisor_page_faults() {
    for (table_entry, value) in [
        (PML4 + 8, PDPT | P | RW),
        (PD + 3 * 8, PT | P | RW),
        (PT + 4 * 8, PAGE | P | RW),
    ] {
        let mem = long4_tables();
        put64(&mem, table_entry, value);
        let user = PagingRegs { cpl: 3, ..long4() };
        assert_eq!(
            gpa(&mem, user, VA, AccessKind::Read),
            Err(WalkError::SupervisorOnly)
        );
        assert_eq!(
            gpa(&mem, user, VA, AccessKind::Write),
            Err(WalkError::SupervisorOnly)
        );
        // The kernel reaches its own pages.
        assert_eq!(gpa(&mem, long4(), VA, AccessKind::Write), Ok(PAGE + 0x123));
        // And as_supervisor() makes the access a kernel one.
        assert_eq!(
            gpa(&mem, user.as_supervisor(), VA, AccessKind::Read),
            Ok(PAGE + 0x123)
        );
    }
}

#[test]
fn no_execute_refuses_fetches_only_when_efer_nxe() {
    let mem = long4_tables();
    put64(&mem, PD + 3 * 8, PT | P | RW | US | NO_EXECUTE);
    assert_eq!(
        gpa(&mem, long4(), VA, AccessKind::Fetch),
        Err(WalkError::NoExecute)
    );
    assert!(gpa(&mem, long4(), VA, AccessKind::Write).is_ok());
    let t = walk(&mem, long4(), VA, AccessKind::Read).unwrap();
    assert!(!t.executable);
    // Without EFER.NXE, bit 63 is reserved.
    let no_nxe = PagingRegs {
        efer: EFER_LMA,
        ..long4()
    };
    assert!(matches!(
        gpa(&mem, no_nxe, VA, AccessKind::Read),
        Err(WalkError::ReservedBit { level: 2, .. })
    ));
}

#[test]
fn non_canonical_addresses_fault_before_any_read() {
    // No tables at all: the walk must not even look.
    let mem = memory();
    for gva in [
        0x0000_8000_0000_0000,
        0xffff_7fff_ffff_f000,
        0x0100_0000_0000_0000,
    ] {
        assert_eq!(
            gpa(&mem, long4(), gva, AccessKind::Read),
            Err(WalkError::NonCanonical { gva })
        );
    }
    // With LA57, 0x0000_8000_0000_0000 is canonical (and then not mapped).
    let la57 = PagingRegs {
        cr4: CR4_PAE | CR4_LA57,
        cr3: PML5,
        ..long4()
    };
    assert!(matches!(
        gpa(&mem, la57, 0x0000_8000_0000_0000, AccessKind::Read),
        Err(WalkError::NotPresent { level: 5, .. })
    ));
    assert_eq!(
        gpa(&mem, la57, 0x0100_0000_0000_0000, AccessKind::Read),
        Err(WalkError::NonCanonical {
            gva: 0x0100_0000_0000_0000
        })
    );
}

#[test]
fn five_level_walk_uses_the_pml5() {
    let mem = long4_tables();
    let la57 = PagingRegs {
        cr4: CR4_PAE | CR4_LA57,
        cr3: PML5,
        ..long4()
    };
    // PML5 index 3 (bits 56:48) leads to the same PML4.
    let gva = (3u64 << 48) | VA;
    put64(&mem, PML5 + 3 * 8, PML4 | P | RW | US);
    assert_eq!(gpa(&mem, la57, gva, AccessKind::Write), Ok(PAGE + 0x123));
    // Its rights count too.
    put64(&mem, PML5 + 3 * 8, PML4 | P | US);
    assert_eq!(
        gpa(&mem, la57, gva, AccessKind::Write),
        Err(WalkError::ReadOnly)
    );
    // PS is reserved in a PML5 entry.
    put64(&mem, PML5 + 3 * 8, PML4 | P | RW | US | PS);
    assert!(matches!(
        gpa(&mem, la57, gva, AccessKind::Read),
        Err(WalkError::ReservedBit { level: 5, .. })
    ));
}

#[test]
fn large_pages_at_each_level() {
    let mem = long4_tables();
    // 2 MiB page at the PD.
    put64(&mem, PD + 3 * 8, (2 << 20) | P | RW | US | PS);
    let t = walk(&mem, long4(), VA, AccessKind::Read).unwrap();
    assert_eq!(
        (t.gpa, t.page_size),
        ((2 << 20) + (4 << 12) + 0x123, 2 << 20)
    );
    // The PAT bit (12) is allowed; bits 20:13 are reserved.
    put64(&mem, PD + 3 * 8, (2 << 20) | (1 << 12) | P | RW | US | PS);
    assert_eq!(
        gpa(&mem, long4(), VA, AccessKind::Read),
        Ok((2 << 20) + (4 << 12) + 0x123)
    );
    put64(&mem, PD + 3 * 8, (2 << 20) | (1 << 13) | P | RW | US | PS);
    assert!(matches!(
        gpa(&mem, long4(), VA, AccessKind::Read),
        Err(WalkError::ReservedBit { level: 2, .. })
    ));
    // 1 GiB page at the PDPT (its frame need not be RAM for the walk).
    put64(&mem, PDPT + 2 * 8, (1 << 30) | P | RW | US | PS);
    let t = walk(&mem, long4(), VA, AccessKind::Read).unwrap();
    assert_eq!(t.page_size, 1 << 30);
    assert_eq!(t.gpa, (1 << 30) | (VA & ((1 << 30) - 1)));
    put64(&mem, PDPT + 2 * 8, (1 << 30) | (1 << 21) | P | RW | US | PS);
    assert!(matches!(
        gpa(&mem, long4(), VA, AccessKind::Read),
        Err(WalkError::ReservedBit { level: 3, .. })
    ));
    // PS is reserved in a PML4 entry.
    put64(&mem, PML4 + 8, PDPT | P | RW | US | PS);
    assert!(matches!(
        gpa(&mem, long4(), VA, AccessKind::Read),
        Err(WalkError::ReservedBit { level: 4, .. })
    ));
}

#[test]
fn address_bits_beyond_maxphyaddr_are_reserved() {
    let mem = long4_tables();
    put64(&mem, PT + 4 * 8, PAGE | (1 << 45) | P | RW | US);
    assert!(matches!(
        gpa(&mem, long4(), VA, AccessKind::Read),
        Err(WalkError::ReservedBit { level: 1, .. })
    ));
    // A wider MAXPHYADDR makes it an address bit.
    let wide = PagingRegs {
        phys_addr_bits: 46,
        ..long4()
    };
    assert_eq!(
        gpa(&mem, wide, VA, AccessKind::Read),
        Ok(PAGE | (1 << 45) | 0x123)
    );
    // Bits 52-62 are ignored in long mode (available to software).
    put64(&mem, PT + 4 * 8, PAGE | (1 << 55) | P | RW | US);
    assert_eq!(gpa(&mem, long4(), VA, AccessKind::Read), Ok(PAGE + 0x123));
}

#[test]
fn table_pointers_outside_guest_memory_fault_without_reading() {
    // Past the end of RAM, in the hole between the two regions, and a
    // reserved (above MAXPHYADDR) pointer that is never followed.
    for pointer in [64 << 20, 5 << 20, 1 << 41] {
        let mem = long4_tables();
        put64(&mem, PDPT + 2 * 8, pointer | P | RW | US);
        let err = gpa(&mem, long4(), VA, AccessKind::Read).unwrap_err();
        if pointer >> 40 != 0 {
            assert!(
                matches!(err, WalkError::ReservedBit { level: 3, .. }),
                "{err}"
            );
        } else {
            assert_eq!(
                err,
                WalkError::OutsideGuestMemory {
                    level: 2,
                    gpa: pointer + 3 * 8
                }
            );
        }
    }
    // CR3 itself outside RAM.
    let mem = long4_tables();
    let regs = PagingRegs {
        cr3: 6 << 20,
        ..long4()
    };
    assert!(matches!(
        gpa(&mem, regs, VA, AccessKind::Read),
        Err(WalkError::OutsideGuestMemory { level: 4, .. })
    ));
    // A table in the second region works.
    put64(&mem, (8 << 20) + 3 * 8, PT | P | RW | US);
    put64(&mem, PDPT + 2 * 8, (8 << 20) | P | RW | US);
    assert_eq!(gpa(&mem, long4(), VA, AccessKind::Read), Ok(PAGE + 0x123));
}

#[test]
fn accessed_and_dirty_bits_follow_the_access() {
    let mem = long4_tables();
    let entries = [PML4 + 8, PDPT + 2 * 8, PD + 3 * 8, PT + 4 * 8];
    // A probe changes nothing.
    PageWalker::new(&mem, long4()).probe(VA).unwrap();
    assert!(entries
        .iter()
        .all(|&e| get64(&mem, e) & (ACCESSED | DIRTY) == 0));
    // A read sets A everywhere, D nowhere.
    gpa(&mem, long4(), VA, AccessKind::Read).unwrap();
    assert!(entries.iter().all(|&e| get64(&mem, e) & ACCESSED != 0));
    assert!(entries.iter().all(|&e| get64(&mem, e) & DIRTY == 0));
    // A write sets D on the leaf only.
    gpa(&mem, long4(), VA, AccessKind::Write).unwrap();
    assert_ne!(get64(&mem, PT + 4 * 8) & DIRTY, 0);
    assert!(entries[..3].iter().all(|&e| get64(&mem, e) & DIRTY == 0));
    // Nothing else changed.
    assert_eq!(
        get64(&mem, PT + 4 * 8),
        PAGE | P | RW | US | ACCESSED | DIRTY
    );
}

#[test]
fn refused_accesses_leave_the_tables_alone() {
    let mem = long4_tables();
    put64(&mem, PT + 4 * 8, PAGE | P | US);
    let before: Vec<u64> = (0..0x6000).step_by(8).map(|a| get64(&mem, a)).collect();
    assert_eq!(
        gpa(&mem, long4(), VA, AccessKind::Write),
        Err(WalkError::ReadOnly)
    );
    let user = PagingRegs { cpl: 3, ..long4() };
    put64(&mem, PD + 3 * 8, PT | P | RW);
    let before_user: Vec<u64> = (0..0x6000).step_by(8).map(|a| get64(&mem, a)).collect();
    assert_eq!(
        gpa(&mem, user, VA, AccessKind::Read),
        Err(WalkError::SupervisorOnly)
    );
    let after: Vec<u64> = (0..0x6000).step_by(8).map(|a| get64(&mem, a)).collect();
    assert_eq!(after, before_user);
    assert_ne!(before, before_user, "the test changed the PD entry");
}

#[test]
fn an_entry_changed_under_the_walk_is_not_marked() {
    let mem = long4_tables();
    let walker = PageWalker::new(&mem, long4());
    let mut used = UsedEntries::new();
    walker.walk(VA, &mut used).unwrap();
    // The guest turns the leaf into a not-present (swap) entry.
    put64(&mem, PT + 4 * 8, 0x1234_5000);
    assert!(!walker.mark_used(&used, true));
    assert_eq!(get64(&mem, PT + 4 * 8), 0x1234_5000);
    // A fresh access sees the new entry.
    assert!(matches!(
        walker.access(VA, AccessKind::Write),
        Err(WalkError::NotPresent { level: 1, .. })
    ));
}

fn pae() -> PagingRegs {
    PagingRegs {
        cr0: CR0_PG | CR0_WP | 1,
        cr3: PDPT + 0x20,
        cr4: CR4_PAE,
        efer: EFER_NXE,
        cpl: 0,
        phys_addr_bits: 40,
    }
}

#[test]
fn pae_walk_with_small_and_large_pages() {
    let mem = memory();
    // PDPTE 2 of the table at PDPT + 0x20 (CR3 is 32-byte aligned).
    let gva = (2u64 << 30) | (3 << 21) | (4 << 12) | 0x456;
    put64(&mem, PDPT + 0x20 + 2 * 8, PD | P);
    put64(&mem, PD + 3 * 8, PT | P | RW | US);
    put64(&mem, PT + 4 * 8, PAGE | P | RW | US);
    assert_eq!(gpa(&mem, pae(), gva, AccessKind::Write), Ok(PAGE + 0x456));
    // The PDPTE has no Accessed bit to set; the others do.
    assert_eq!(get64(&mem, PDPT + 0x20 + 2 * 8), PD | P);
    assert_ne!(get64(&mem, PT + 4 * 8) & DIRTY, 0);
    // Read-only leaf.
    put64(&mem, PT + 4 * 8, PAGE | P | US);
    assert_eq!(
        gpa(&mem, pae(), gva, AccessKind::Write),
        Err(WalkError::ReadOnly)
    );
    // A 2 MiB page.
    put64(&mem, PD + 3 * 8, (2 << 20) | P | RW | US | PS);
    assert_eq!(
        gpa(&mem, pae(), gva, AccessKind::Read),
        Ok((2 << 20) + (4 << 12) + 0x456)
    );
    // Reserved bits: R/W in a PDPTE; bit 52 below it (ignored in long mode).
    put64(&mem, PDPT + 0x20 + 2 * 8, PD | P | RW);
    assert!(matches!(
        gpa(&mem, pae(), gva, AccessKind::Read),
        Err(WalkError::ReservedBit { level: 3, .. })
    ));
    put64(&mem, PDPT + 0x20 + 2 * 8, PD | P);
    put64(&mem, PD + 3 * 8, (2 << 20) | (1 << 52) | P | RW | US | PS);
    assert!(matches!(
        gpa(&mem, pae(), gva, AccessKind::Read),
        Err(WalkError::ReservedBit { level: 2, .. })
    ));
    // Not-present PDPTE; an address past 4 GiB.
    put64(&mem, PDPT + 0x20 + 2 * 8, 0);
    assert!(matches!(
        gpa(&mem, pae(), gva, AccessKind::Read),
        Err(WalkError::NotPresent { level: 3, .. })
    ));
    assert_eq!(
        gpa(&mem, pae(), 1 << 32, AccessKind::Read),
        Err(WalkError::Beyond32Bits { gva: 1 << 32 })
    );
}

fn legacy32(pse: bool) -> PagingRegs {
    PagingRegs {
        cr0: CR0_PG | CR0_WP | 1,
        cr3: PD,
        cr4: if pse { CR4_PSE } else { 0 },
        efer: 0,
        cpl: 0,
        phys_addr_bits: 40,
    }
}

#[test]
fn legacy_32_bit_walk_small_pages() {
    let mem = memory();
    let gva = (5u64 << 22) | (7 << 12) | 0x89;
    put32(&mem, PD + 5 * 4, (PT | P | RW | US) as u32);
    put32(&mem, PT + 7 * 4, (PAGE | P | US) as u32);
    assert_eq!(
        gpa(&mem, legacy32(false), gva, AccessKind::Read),
        Ok(PAGE + 0x89)
    );
    assert_eq!(
        gpa(&mem, legacy32(false), gva, AccessKind::Write),
        Err(WalkError::ReadOnly)
    );
    // Accessed on both 4-byte entries, and the neighbours untouched.
    assert_eq!(
        get32(&mem, PD + 5 * 4),
        (PT | P | RW | US | ACCESSED) as u32
    );
    assert_eq!(get32(&mem, PT + 7 * 4), (PAGE | P | US | ACCESSED) as u32);
    assert_eq!(get32(&mem, PT + 8 * 4), 0);
    // Supervisor-only PDE from CPL 3.
    put32(&mem, PD + 5 * 4, (PT | P | RW) as u32);
    let user = PagingRegs {
        cpl: 3,
        ..legacy32(false)
    };
    assert_eq!(
        gpa(&mem, user, gva, AccessKind::Read),
        Err(WalkError::SupervisorOnly)
    );
    assert_eq!(
        gpa(&mem, legacy32(false), 1 << 32, AccessKind::Read),
        Err(WalkError::Beyond32Bits { gva: 1 << 32 })
    );
}

#[test]
fn legacy_32_bit_pse_pages() {
    let mem = memory();
    let gva = (5u64 << 22) | 0x12_3456;
    // A 4 MiB page at 8 MiB.
    put32(&mem, PD + 5 * 4, ((8 << 20) | P | RW | US | PS) as u32);
    let t = walk(&mem, legacy32(true), gva, AccessKind::Write).unwrap();
    assert_eq!((t.gpa, t.page_size), ((8 << 20) + 0x12_3456, 4 << 20));
    // PSE-36: entry bits 20:13 are physical bits 39:32.
    put32(
        &mem,
        PD + 5 * 4,
        ((8 << 20) | (3 << 13) | P | RW | US | PS) as u32,
    );
    assert_eq!(
        gpa(&mem, legacy32(true), gva, AccessKind::Read),
        Ok((3 << 32) | (8 << 20) | 0x12_3456)
    );
    // ... beyond a 33-bit MAXPHYADDR that is reserved; bit 21 always is.
    let narrow = PagingRegs {
        phys_addr_bits: 33,
        ..legacy32(true)
    };
    assert!(matches!(
        gpa(&mem, narrow, gva, AccessKind::Read),
        Err(WalkError::ReservedBit { level: 2, .. })
    ));
    put32(
        &mem,
        PD + 5 * 4,
        ((8 << 20) | (1 << 21) | P | RW | US | PS) as u32,
    );
    assert!(matches!(
        gpa(&mem, legacy32(true), gva, AccessKind::Read),
        Err(WalkError::ReservedBit { level: 2, .. })
    ));
    // Without CR4.PSE the PS bit is ignored: the entry points to a table.
    put32(&mem, PD + 5 * 4, (PT | P | RW | US | PS) as u32);
    put32(&mem, PT + 0x123 * 4, (PAGE | P | RW | US) as u32);
    assert_eq!(
        gpa(&mem, legacy32(false), gva, AccessKind::Read),
        Ok(PAGE + 0x456)
    );
}

#[test]
fn paging_off_is_the_identity() {
    let mem = memory();
    let regs = PagingRegs { cr0: 1, ..long4() };
    assert_eq!(
        gpa(&mem, regs, 0x1234_5678, AccessKind::Write),
        Ok(0x1234_5678)
    );
}

#[test]
fn vcpu_mmu_translate_reports_writability_without_marking() {
    let mem = long4_tables();
    put64(&mem, PT + 4 * 8, PAGE | P | US);
    let walker = PageWalker::new(&mem, long4());
    assert_eq!(VcpuMmu::translate(&walker, VA), Some((PAGE + 0x123, false)));
    assert_eq!(get64(&mem, PT + 4 * 8), PAGE | P | US);
    let user = PageWalker::new(&mem, PagingRegs { cpl: 3, ..long4() });
    put64(&mem, PD + 3 * 8, PT | P | RW);
    assert_eq!(VcpuMmu::translate(&user, VA), None);
}

#[test]
fn guest_access_refuses_a_read_only_page_and_writes_nothing() {
    let mem = long4_tables();
    mem.write_slice(&[0x5a; 4096], GuestAddress(PAGE)).unwrap();
    mem.write_slice(&[0x5a; 4096], GuestAddress(PAGE2)).unwrap();
    // The second page of a straddling write is read-only.
    put64(&mem, PT + 5 * 8, PAGE2 | P | US);
    let walker = PageWalker::new(&mem, long4());
    let g = GuestAccess {
        mem: &mem,
        mmu: &walker,
    };
    let start = VA_NEXT_PAGE - 8;
    assert_eq!(g.write(start, &[1u8; 16]), Err(Fault));
    let mut page = [0u8; 4096];
    mem.read_slice(&mut page, GuestAddress(PAGE)).unwrap();
    assert!(page.iter().all(|&b| b == 0x5a), "first page written");
    mem.read_slice(&mut page, GuestAddress(PAGE2)).unwrap();
    assert!(page.iter().all(|&b| b == 0x5a), "read-only page written");
    // Reading across works, and a not-present page fails a read.
    let mut buf = [0u8; 16];
    g.read(start, &mut buf).unwrap();
    put64(&mem, PT + 5 * 8, 0);
    assert_eq!(g.read(start, &mut buf), Err(Fault));
    // A writable mapping is written, and marked dirty.
    assert_eq!(g.write(VA, &[7u8; 8]), Ok(()));
    assert_eq!(
        mem.read_obj::<u64>(GuestAddress(PAGE + 0x123)).unwrap(),
        0x0707_0707_0707_0707
    );
    assert_ne!(get64(&mem, PT + 4 * 8) & DIRTY, 0);
}

/// A small deterministic generator for the robustness test.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn random_tables_never_panic_or_escape_guest_memory() {
    let mem = memory();
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for round in 0..64 {
        // Fill the first 32 KiB with entries that are often present and
        // point inside it, sometimes anywhere.
        for gpa in (0..0x8000).step_by(8) {
            let r = rng.next();
            let value = if r & 3 == 0 {
                r
            } else {
                (r & 0x7000) | (r >> 32 & 0x1ff) | P
            };
            put64(&mem, gpa, value);
        }
        for mode in 0..5 {
            let regs = PagingRegs {
                cr0: CR0_PG | if round & 1 == 0 { CR0_WP } else { 0 },
                cr3: rng.next() & 0x7fff,
                cr4: [0, CR4_PSE, CR4_PAE, CR4_PAE, CR4_PAE | CR4_LA57][mode],
                efer: [0, 0, EFER_NXE, EFER_LMA | EFER_NXE, EFER_LMA][mode],
                cpl: if round & 2 == 0 { 0 } else { 3 },
                phys_addr_bits: (rng.next() % 64) as u8,
            };
            for _ in 0..64 {
                let gva = rng.next();
                for kind in [AccessKind::Read, AccessKind::Write, AccessKind::Fetch] {
                    if let Ok(t) = walk(&mem, regs, gva, kind) {
                        assert!(t.page_size.is_power_of_two());
                        assert_eq!(t.gpa & (t.page_size - 1), gva & (t.page_size - 1));
                    }
                }
            }
        }
    }
}

#[test]
fn pae_no_execute_on_a_leaf_or_a_directory_refuses_fetches() {
    let mem = memory();
    let gva = (1u64 << 30) | (3 << 21) | (4 << 12) | 0x10;
    put64(&mem, PDPT + 0x20 + 8, PD | P);
    put64(&mem, PD + 3 * 8, PT | P | RW | US);
    put64(&mem, PT + 4 * 8, PAGE | P | RW | US | NO_EXECUTE);
    assert_eq!(
        gpa(&mem, pae(), gva, AccessKind::Fetch),
        Err(WalkError::NoExecute)
    );
    assert_eq!(gpa(&mem, pae(), gva, AccessKind::Write), Ok(PAGE + 0x10));
    // XD on the directory entry covers the whole 2 MiB below it.
    put64(&mem, PT + 4 * 8, PAGE | P | RW | US);
    put64(&mem, PD + 3 * 8, PT | P | RW | US | NO_EXECUTE);
    assert_eq!(
        gpa(&mem, pae(), gva, AccessKind::Fetch),
        Err(WalkError::NoExecute)
    );
    // And on a 2 MiB page.
    put64(&mem, PD + 3 * 8, (2 << 20) | P | RW | US | PS | NO_EXECUTE);
    assert_eq!(
        gpa(&mem, pae(), gva, AccessKind::Fetch),
        Err(WalkError::NoExecute)
    );
    // Without EFER.NXE bit 63 is reserved in PAE entries too.
    let no_nxe = PagingRegs { efer: 0, ..pae() };
    assert!(matches!(
        gpa(&mem, no_nxe, gva, AccessKind::Read),
        Err(WalkError::ReservedBit { .. })
    ));
}

//! kxen-xen's software page walk (the guest's own paging structures, read
//! from guest memory) with fuzzer-chosen control registers, CPL, address,
//! access kind and table contents. Invariants: a granted access is one the
//! CPU would grant; the walk changes nothing but Accessed and Dirty bits,
//! and nothing at all when it refuses; a grant's address does not move
//! when the same address is walked again.

use kxen_xen::guest::paging::{
    PageWalker, PagingRegs, CR0_PG, CR0_WP, CR4_LA57, CR4_PAE, CR4_PSE, EFER_LMA, EFER_NXE,
};
use kxen_xen::guest::AccessKind;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Low RAM holding the tables: 16 pages from 0.
const LOW: usize = 0x1_0000;
/// One more page above a hole, so entries can point past RAM or into it.
const HIGH: u64 = 0x10_0000;
const HEADER: usize = 12;

fn snapshot(mem: &GuestMemoryMmap) -> Vec<u8> {
    let mut all = vec![0u8; LOW + 0x1000];
    mem.read_slice(&mut all[..LOW], GuestAddress(0)).unwrap();
    mem.read_slice(&mut all[LOW..], GuestAddress(HIGH)).unwrap();
    all
}

/// One fuzz input; panics on any broken invariant. True when the access
/// was granted.
pub fn page_walk(data: &[u8]) -> bool {
    if data.len() < HEADER {
        return false;
    }
    let (head, tables) = data.split_at(HEADER);
    let mode = head[0];
    let regs = PagingRegs {
        cr0: if mode & 0x07 == 0 { 0 } else { CR0_PG } | if mode & 0x08 != 0 { CR0_WP } else { 0 },
        cr3: u64::from(head[1] & 0x0f) << 12 | u64::from(head[1] >> 4) << 5,
        cr4: match mode & 0x07 {
            2 => CR4_PAE,
            3 => CR4_PAE,
            4 => CR4_PAE | CR4_LA57,
            _ => 0,
        } | if mode & 0x10 != 0 { CR4_PSE } else { 0 },
        efer: if matches!(mode & 0x07, 3 | 4) {
            EFER_LMA
        } else {
            0
        } | if mode & 0x20 != 0 { EFER_NXE } else { 0 },
        cpl: if mode & 0x40 != 0 { 3 } else { 0 },
        phys_addr_bits: head[2],
    };
    let kind = match head[3] % 3 {
        0 => AccessKind::Read,
        1 => AccessKind::Write,
        _ => AccessKind::Fetch,
    };
    let gva = u64::from_le_bytes(head[4..12].try_into().unwrap());

    // Table words mostly point inside the 16 pages (so walks go deep);
    // a word with its top bit set keeps its raw address bits.
    let mut low = vec![0u8; LOW];
    for (word, src) in low.chunks_mut(8).zip(tables.chunks(8)) {
        let mut raw = [0u8; 8];
        raw[..src.len()].copy_from_slice(src);
        let mut v = u64::from_le_bytes(raw);
        if v >> 63 == 0 {
            v &= !0x000f_ffff_ffff_0000;
        }
        word.copy_from_slice(&v.to_le_bytes()[..word.len()]);
    }
    let mem: GuestMemoryMmap =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), LOW), (GuestAddress(HIGH), 0x1000)])
            .unwrap();
    mem.write_slice(&low, GuestAddress(0)).unwrap();

    let walker = PageWalker::new(&mem, regs);
    let before = snapshot(&mem);
    let probed = walker.probe(gva);
    assert_eq!(snapshot(&mem), before, "probe changed guest memory");
    let result = walker.access(gva, kind);
    let after = snapshot(&mem);

    // Only Accessed (bit 5) and Dirty (bit 6) of an entry's low byte may
    // change, and only from clear to set. (The slices compare whole first:
    // a byte loop over every input is slow in the debug-build replay.)
    if after != before {
        for (i, (b, a)) in before.iter().zip(&after).enumerate() {
            if b != a {
                assert!(
                    i % 4 == 0 && (a ^ b) & !0x60 == 0 && a & b == *b,
                    "byte {i:#x} changed from {b:#04x} to {a:#04x}"
                );
            }
        }
    }
    let Ok(t) = result else {
        // A refused access leaves nothing behind (an unstable walk may
        // have marked entries before giving up; there is no other thread
        // here to change them, so that never happens).
        assert_eq!(after, before, "a refused access changed guest memory");
        return false;
    };
    assert!(
        [1 << 12, 1 << 21, 1 << 22, 1 << 30].contains(&t.page_size),
        "page size {:#x}",
        t.page_size
    );
    assert_eq!(t.gpa & 0xfff, gva & 0xfff, "the page offset moved");
    if regs.cpl == 3 {
        assert!(t.user, "user-mode access granted on a supervisor page");
    }
    match kind {
        AccessKind::Write => assert!(
            t.writable || (regs.cpl < 3 && regs.cr0 & CR0_WP == 0),
            "write granted on a read-only page"
        ),
        AccessKind::Fetch => assert!(t.executable, "fetch granted from a no-execute page"),
        AccessKind::Read => {}
    }
    // The probe before the access saw the same page (A/D updates never
    // move an address), and so does one after it.
    let probed = probed.expect("access granted where the probe failed");
    assert_eq!(probed.gpa, t.gpa);
    assert_eq!(walker.probe(gva).map(|p| p.gpa), Ok(t.gpa));
    true
}

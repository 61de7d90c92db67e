//! kxen-pv's PV MMU driven by arbitrary operation sequences against a
//! small domain (18 frames, 2 vCPUs, two of them kept by the hypervisor):
//! raw guest stores into frames that no table holds, single `mmu_update`
//! requests, `mmuext_op`s, `update_va_mapping`, batches read from guest
//! memory, descriptor-page references.
//!
//! After every operation: the frame table matches a recount of all
//! references from tables, pins and base pointers (so no frame is both
//! mapped writable and held as a page table, nothing reserved is used,
//! every accepted entry is adjusted), and a refused single update leaves
//! its entry as it was.

use kxen_pv::{MemFrames, Mfn, MmuMemory, PvMmu, PvMmuConfig};
use xen_abi::pv::{MmuUpdate, MmuextOp, PTE_PRESENT};
use xen_abi::DOMID_SELF;

const NR_FRAMES: u64 = 18;
/// Frames named in the input range a little past the domain.
const FRAME_SPACE: u64 = NR_FRAMES + 2;
const RESERVED: [Mfn; 2] = [16, 17];
const DOMID: u16 = 3;
/// Guest-virtual page where batches and vCPU bitmaps are placed.
const ARGS: u64 = 0x40_0000;
/// Each operation is one fixed-size record.
const RECORD: usize = 12;
const ERRNOS: [i64; 9] = [1, 3, 13, 14, 16, 22, 38, 95, 0];

/// Decodes one record's fields.
struct Record<'a>(&'a [u8]);

impl Record<'_> {
    fn byte(&self, i: usize) -> u8 {
        self.0[i]
    }

    fn frame(&self, i: usize) -> Mfn {
        u64::from(self.0[i]) % FRAME_SPACE
    }

    fn raw(&self) -> u64 {
        u64::from_le_bytes(self.0[4..12].try_into().unwrap_or([0; 8]))
    }

    /// A page-table entry: mostly a small frame with fuzzed low flag bits
    /// (present more often than not), or the raw word as it is.
    fn entry(&self) -> u64 {
        let raw = self.raw();
        if self.byte(3) & 0x80 != 0 {
            return raw;
        }
        let mfn = u64::from(self.byte(2)) % FRAME_SPACE;
        let mut flags = raw & 0x1ff;
        if raw & 0x200 == 0 {
            flags |= PTE_PRESENT;
        }
        let high = raw & (0xfff << 52) & if raw & 0x400 != 0 { u64::MAX } else { 0 };
        (mfn << 12) | flags | high
    }

    /// A linear address: the L4 slot from byte 1 and the raw word's top
    /// bit, the L3, L2 and L1 indices from raw bits 40:32, 49:41 and 8:0.
    fn address(&self) -> u64 {
        let raw = self.raw();
        let l4 = (u64::from(self.byte(1)) * 2 + (raw >> 63)) % 512;
        let va = (l4 << 39)
            | ((raw >> 32) & 0x1ff) << 30
            | ((raw >> 41) & 0x1ff) << 21
            | (raw & 0x1ff) << 12;
        if l4 >= 256 {
            va | 0xffff_0000_0000_0000
        } else {
            va
        }
    }
}

fn check(mmu: &PvMmu, mem: &MemFrames, what: &str, errno: i64) {
    if let Err(broken) = mmu.check_invariants(mem) {
        panic!("after {what}: {broken}");
    }
    assert!(
        ERRNOS.contains(&errno),
        "after {what}: unexpected errno {errno}"
    );
}

/// One fuzz input; panics on any broken invariant. True when at least one
/// page-table operation (a pin, a base pointer, a table entry update)
/// succeeded, so validation ran.
pub fn pv_mmu(data: &[u8]) -> bool {
    let mut config = PvMmuConfig::new(DOMID, NR_FRAMES, 2);
    config.hypervisor_l4_slots[0] = (RESERVED[0] << 12) | PTE_PRESENT;
    let Ok(mut mmu) = PvMmu::new(config) else {
        unreachable!("a valid configuration");
    };
    for frame in RESERVED {
        mmu.reserve_frame(frame).expect("fresh frame");
    }
    let mut mem = MemFrames::new(NR_FRAMES as usize);
    let mut reached = false;
    for chunk in data.chunks_exact(RECORD) {
        let rec = Record(chunk);
        let vcpu = usize::from(rec.byte(0) >> 7);
        match rec.byte(0) & 0x7 {
            0 => {
                // A guest store: only into frames no table or descriptor
                // reference holds (those are never mapped writable).
                let frame = rec.frame(1);
                let writable = mmu.frame(frame).is_some_and(|f| {
                    !f.reserved
                        && matches!(f.held_type(), None | Some(kxen_pv::FrameType::Writable))
                });
                if writable {
                    mem.write_entry(frame, usize::from(rec.byte(3)) * 2 % 512, rec.entry());
                }
                check(&mmu, &mem, "a guest store", 0);
            }
            1 => {
                let table = rec.frame(1);
                let index = usize::from(rec.byte(3) & 0x7f) * 4 % 512;
                let cmd = u64::from(rec.byte(0) >> 3) & 0x7;
                let ptr = (table << 12) | (index as u64 * 8) | cmd;
                let before = mem.read_entry(table, index);
                let outcome = mmu.mmu_update_one(
                    &mut mem,
                    MmuUpdate {
                        ptr,
                        val: rec.entry(),
                    },
                );
                if outcome.result.is_err() && cmd != 1 {
                    assert_eq!(
                        mem.read_entry(table, index),
                        before,
                        "a refused update wrote"
                    );
                }
                let table_held = mmu.frame(table).and_then(|f| f.held_type()).is_some();
                reached |= outcome.result.is_ok() && table_held;
                check(&mmu, &mem, "mmu_update", -outcome.return_value());
            }
            2 | 3 => {
                let cmd = u32::from(rec.byte(1)) % 22;
                let arg1 = if rec.byte(3) & 1 == 0 {
                    rec.frame(2)
                } else {
                    rec.address()
                };
                let arg2 = match rec.byte(3) >> 1 & 3 {
                    0 => rec.frame(3),
                    1 => ARGS,
                    2 => rec.raw() & 0xffff,
                    _ => rec.raw(),
                };
                mem.poke_guest(ARGS, rec.raw());
                let outcome = mmu.mmuext_one(
                    &mut mem,
                    vcpu,
                    MmuextOp {
                        cmd,
                        pad: 0,
                        arg1,
                        arg2,
                    },
                );
                reached |= outcome.result.is_ok() && matches!(cmd, 0..=5 | 15);
                check(&mmu, &mem, "mmuext_op", -outcome.return_value());
            }
            4 => {
                let flags =
                    u64::from(rec.byte(3) & 0x7) | if rec.byte(3) & 8 != 0 { ARGS } else { 0 };
                mem.poke_guest(ARGS, u64::from(rec.byte(2)));
                let outcome =
                    mmu.update_va_mapping(&mut mem, vcpu, rec.address(), rec.entry(), flags);
                reached |= outcome.result.is_ok();
                check(&mmu, &mem, "update_va_mapping", -outcome.return_value());
            }
            5 => {
                // A batch of up to three requests from guest memory, the
                // later ones reusing this record's entry at other indices.
                let count = u32::from(rec.byte(3) % 4);
                for i in 0..u64::from(count) {
                    let ptr =
                        (rec.frame(1) << 12) | ((i * 8 + 8 * u64::from(rec.byte(3) >> 2)) & 0xff8);
                    mem.poke_guest(ARGS + 16 * i, ptr);
                    mem.poke_guest(ARGS + 16 * i + 8, rec.entry());
                }
                let foreigndom = if rec.byte(0) & 0x40 != 0 {
                    u32::from(rec.byte(2))
                } else {
                    u32::from(DOMID_SELF)
                };
                let outcome = mmu.mmu_update(&mut mem, vcpu, ARGS, count, foreigndom);
                if let Some(done) = outcome.done {
                    assert!(done <= count);
                    assert_eq!(outcome.result.is_ok(), done == count, "done vs result");
                }
                check(&mmu, &mem, "an mmu_update batch", -outcome.return_value());
            }
            6 => {
                let frame = rec.frame(1);
                if rec.byte(3) & 1 == 0 {
                    let errno = mmu
                        .get_segdesc(&mut mem, frame)
                        .err()
                        .map_or(0, |e| e.errno());
                    check(&mmu, &mem, "a descriptor reference", errno);
                } else {
                    mmu.put_segdesc(&mut mem, frame);
                    check(&mmu, &mem, "a descriptor release", 0);
                }
            }
            _ => {
                let domid = match rec.byte(3) & 3 {
                    0 => DOMID_SELF,
                    1 => DOMID,
                    _ => u16::from(rec.byte(2)),
                };
                let outcome = mmu.update_va_mapping_otherdomain(
                    &mut mem,
                    vcpu,
                    rec.address(),
                    rec.entry(),
                    0,
                    domid,
                    rec.byte(3) & 4 != 0,
                );
                check(
                    &mmu,
                    &mem,
                    "update_va_mapping_otherdomain",
                    -outcome.return_value(),
                );
            }
        }
    }
    reached
}

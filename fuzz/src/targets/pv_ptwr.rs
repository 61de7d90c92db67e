//! kxen-pv's writable-page-table emulation (`ptwr`): arbitrary
//! instruction bytes faulting on a page-table entry.
//!
//! Input: the entry's old value (8 bytes), the fault address's low 12
//! bits (2 bytes), RAX and the other register used (8 bytes each), then
//! up to 15 instruction bytes. Checked: no panic; an emulated write is
//! exactly one decoded instruction long, reaches no further than the
//! bytes given, writes only when it says so, loads at most one
//! register, and changes no byte of the entry outside the naturally
//! aligned access that faulted.

use iced_x86::{Decoder, DecoderOptions};
use kxen_pv::ptwr::{emulate_pt_write, Gprs};

const RIP: u64 = 0xffff_ffff_8100_0000;
const TABLE_VA: u64 = 0xffff_8880_0440_0000;

pub fn pv_ptwr(data: &[u8]) -> bool {
    if data.len() < 26 {
        return false;
    }
    let word = |at: usize| u64::from_le_bytes(data[at..at + 8].try_into().unwrap_or_default());
    let old = word(0);
    let offset = u64::from(u16::from_le_bytes([data[8], data[9]])) & 0xfff;
    let mut gprs: Gprs = [0; 16];
    gprs[0] = word(10);
    for (i, reg) in gprs.iter_mut().enumerate().skip(1) {
        *reg = word(18) ^ i as u64;
    }
    let insn = &data[26..data.len().min(26 + 15)];
    let fault = TABLE_VA + offset;
    let Ok(write) = emulate_pt_write(insn, RIP, fault, &gprs, old) else {
        return false;
    };
    let decoded = Decoder::with_ip(64, insn, RIP, DecoderOptions::NONE).decode();
    assert_eq!(write.len, decoded.len(), "one whole instruction");
    assert!(write.len <= insn.len());
    let size = decoded.memory_size().size() as u64;
    assert!(
        matches!(size, 1 | 2 | 4 | 8) && (fault & 7).is_multiple_of(size),
        "a naturally aligned access inside one entry"
    );
    if let Some(new) = write.new {
        let shift = (fault & 7) * 8;
        let accessed = if size == 8 {
            u64::MAX
        } else {
            ((1u64 << (size * 8)) - 1) << shift
        };
        assert_eq!(
            new & !accessed,
            old & !accessed,
            "bytes outside the access kept"
        );
    }
    if let Some((reg, _)) = write.load {
        assert!(reg < 16);
    }
    if write.zf == Some(false) {
        assert_eq!(write.new, None, "a failed cmpxchg writes nothing");
    }
    true
}

//! The memory the PV MMU reads and writes, as the executor provides it.

use std::collections::BTreeMap;

use crate::pte::{Mfn, ENTRIES};

/// Access to the domain's machine frames and to guest-virtual hypercall
/// arguments.
///
/// The MMU only ever passes frames below the domain's frame count that are
/// guest RAM (it checks first), and entry indices below 512, so the frame
/// accessors cannot fail: the executor backs every such frame.
pub trait MmuMemory {
    /// Entry `index` (0..512) of frame `mfn`, read as one 8-byte value.
    fn read_entry(&self, mfn: Mfn, index: usize) -> u64;
    /// Every entry of frame `mfn`, each read as one 8-byte value, for the
    /// loops over a whole table (validating one, releasing one). An
    /// executor that can reach the frame at once overrides the default,
    /// which reads the entries one by one.
    fn read_table(&self, mfn: Mfn) -> [u64; ENTRIES] {
        std::array::from_fn(|index| self.read_entry(mfn, index))
    }
    /// Write entry `index` of frame `mfn` as one 8-byte store.
    fn write_entry(&mut self, mfn: Mfn, index: usize, value: u64);
    /// Write entry `index` of the L1 table `mfn`, which held `old`. An
    /// executor whose CPU caches translations (KVM's shadow MMU) can drop
    /// just what `old` mapped, where a change at a higher level may have
    /// made whole subtrees stale.
    fn write_leaf_entry(&mut self, mfn: Mfn, index: usize, value: u64, _old: u64) {
        self.write_entry(mfn, index, value);
    }
    /// Zero frame `mfn`.
    fn clear_frame(&mut self, mfn: Mfn);
    /// Copy frame `src` over frame `dst`.
    fn copy_frame(&mut self, dst: Mfn, src: Mfn);
    /// Read 8 bytes at guest-virtual address `va` through the caller's
    /// page tables (hypercall argument arrays, vCPU bitmaps); `None` when
    /// that faults.
    fn read_guest_u64(&mut self, va: u64) -> Option<u64>;
    /// The M2P entry of `mfn` became `pfn`: update the guest-visible,
    /// read-only M2P table, wherever the executor keeps it.
    fn m2p_updated(&mut self, _mfn: Mfn, _pfn: u64) {}
}

/// Frames in a plain vector, and a sparse guest-virtual space for
/// hypercall arguments: for tests, fuzzing and an executor's experiments.
#[derive(Clone, Debug, Default)]
pub struct MemFrames {
    entries: Vec<u64>,
    guest: BTreeMap<u64, u64>,
}

impl MemFrames {
    /// `nr_frames` zeroed frames.
    pub fn new(nr_frames: usize) -> MemFrames {
        MemFrames {
            entries: vec![0; nr_frames * ENTRIES],
            guest: BTreeMap::new(),
        }
    }

    pub fn nr_frames(&self) -> usize {
        self.entries.len() / ENTRIES
    }

    /// Place `value` at guest-virtual `va` for [`MmuMemory::read_guest_u64`].
    pub fn poke_guest(&mut self, va: u64, value: u64) {
        self.guest.insert(va, value);
    }

    /// Place a sequence of 8-byte values at `va` upward.
    pub fn poke_guest_words(&mut self, va: u64, words: &[u64]) {
        for (i, &word) in words.iter().enumerate() {
            self.poke_guest(va.wrapping_add(8 * i as u64), word);
        }
    }

    fn slot(&self, mfn: Mfn, index: usize) -> Option<usize> {
        let frame = usize::try_from(mfn).ok()?;
        let at = frame.checked_mul(ENTRIES)?.checked_add(index)?;
        (index < ENTRIES && at < self.entries.len()).then_some(at)
    }
}

impl MmuMemory for MemFrames {
    fn read_entry(&self, mfn: Mfn, index: usize) -> u64 {
        self.slot(mfn, index).map_or(0, |at| self.entries[at])
    }

    fn write_entry(&mut self, mfn: Mfn, index: usize, value: u64) {
        if let Some(at) = self.slot(mfn, index) {
            self.entries[at] = value;
        }
    }

    fn clear_frame(&mut self, mfn: Mfn) {
        if let Some(at) = self.slot(mfn, 0) {
            self.entries[at..at + ENTRIES].fill(0);
        }
    }

    fn copy_frame(&mut self, dst: Mfn, src: Mfn) {
        if let (Some(to), Some(from)) = (self.slot(dst, 0), self.slot(src, 0)) {
            self.entries.copy_within(from..from + ENTRIES, to);
        }
    }

    fn read_guest_u64(&mut self, va: u64) -> Option<u64> {
        self.guest.get(&va).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_and_guest_words() {
        let mut mem = MemFrames::new(2);
        mem.write_entry(1, 511, 7);
        mem.write_entry(2, 0, 9); // outside: ignored
        mem.write_entry(0, 512, 9); // outside: ignored
        assert_eq!(mem.read_entry(1, 511), 7);
        assert_eq!(mem.read_entry(2, 0), 0);
        mem.copy_frame(0, 1);
        assert_eq!(mem.read_entry(0, 511), 7);
        mem.clear_frame(1);
        assert_eq!(mem.read_entry(1, 511), 0);
        mem.poke_guest_words(0x1000, &[1, 2]);
        assert_eq!(mem.read_guest_u64(0x1008), Some(2));
        assert_eq!(mem.read_guest_u64(0x1010), None);
        assert_eq!(mem.nr_frames(), 2);
    }
}

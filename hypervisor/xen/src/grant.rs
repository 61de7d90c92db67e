//! Grant table bookkeeping (v1 and v2).
//!
//! Frames hold the guest-written grant entries (`grant_entry_v1` or
//! `grant_entry_v2`, by the table's version). Each frame sits at the GFN
//! the guest chose with `XENMEM_add_to_physmap`; frames not placed yet are
//! given a default GFN in the reserved window when the guest asks for them
//! with `GNTTABOP_setup_table`.
//!
//! A v2 table also has status frames: one `u16` per entry, where the
//! `GTF_reading`/`GTF_writing` busy bits live (a v1 entry carries them in
//! its own flags). They exist only while the table is v2; kxen places each
//! at a default GFN after the grant window as soon as it exists (on the
//! switch to v2 and as the table grows), and the guest may move it with
//! `XENMAPSPACE_grant_table | XENMAPIDX_grant_table_status`.

use xen_abi::grant_table::{
    status_frames_for, GRANT_ENTRIES_PER_FRAME, GRANT_ENTRIES_PER_FRAME_V2, GRANT_ENTRY_V1_SIZE,
    GRANT_ENTRY_V2_SIZE, GRANT_STATUS_PER_FRAME,
};

/// Frames a domain may have (Xen's default max_grant_frames is 64).
pub const MAX_GRANT_FRAMES: u32 = 64;
/// Status frames a v2 table of [`MAX_GRANT_FRAMES`] has.
pub const MAX_STATUS_FRAMES: u32 = status_frames_for(MAX_GRANT_FRAMES);
/// Frames a table has from its creation on (Xen's INITIAL_NR_GRANT_FRAMES
/// on x86: grant_table_init grows the new table to it).
pub const INITIAL_GRANT_FRAMES: u32 = 1;

pub struct GrantTable {
    pub version: u32,
    /// GFN of each frame, for the frames placed so far.
    pub frames: Vec<Option<u64>>,
    /// GFN of each status frame (v2 only; all `None` in v1).
    pub status_frames: Vec<Option<u64>>,
}

impl Default for GrantTable {
    fn default() -> Self {
        GrantTable {
            version: 1,
            frames: vec![None; MAX_GRANT_FRAMES as usize],
            status_frames: vec![None; MAX_STATUS_FRAMES as usize],
        }
    }
}

/// Where one grant's words live, by guest-physical address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryLocation {
    /// The entry (its `flags | domid` word first).
    pub entry: u64,
    /// The v2 status word; `None` for a v1 entry (its flags hold the busy
    /// bits).
    pub status: Option<u64>,
}

impl GrantTable {
    /// Frames the table has, as Xen counts them: the initial frames, or
    /// one past the highest frame placed if the guest has grown it (Xen
    /// grows the table to the highest frame asked for and never shrinks
    /// it).
    pub fn nr_frames(&self) -> u32 {
        self.frames
            .iter()
            .rposition(|f| f.is_some())
            .map_or(0, |i| i as u32 + 1)
            .max(INITIAL_GRANT_FRAMES)
    }

    /// Status frames the table has (Xen's nr_status_frames): none in v1.
    pub fn nr_status_frames(&self) -> u32 {
        if self.version == 2 {
            status_frames_for(self.nr_frames())
        } else {
            0
        }
    }

    pub fn entries_per_frame(&self) -> u64 {
        if self.version == 2 {
            GRANT_ENTRIES_PER_FRAME_V2 as u64
        } else {
            GRANT_ENTRIES_PER_FRAME as u64
        }
    }

    fn entry_size(&self) -> u64 {
        if self.version == 2 {
            GRANT_ENTRY_V2_SIZE as u64
        } else {
            GRANT_ENTRY_V1_SIZE as u64
        }
    }

    /// Where `gref`'s entry (and, in v2, its status word) is; `None` if a
    /// frame holding it is not placed.
    pub fn locate(&self, gref: u64) -> Option<EntryLocation> {
        let per_frame = self.entries_per_frame();
        let frame = self
            .frames
            .get(usize::try_from(gref / per_frame).ok()?)
            .copied()
            .flatten()?;
        let entry = (frame << 12) + (gref % per_frame) * self.entry_size();
        let status = if self.version == 2 {
            let per_status = GRANT_STATUS_PER_FRAME as u64;
            let sframe = self
                .status_frames
                .get(usize::try_from(gref / per_status).ok()?)
                .copied()
                .flatten()?;
            Some((sframe << 12) + (gref % per_status) * 2)
        } else {
            None
        };
        Some(EntryLocation { entry, status })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_table_has_the_initial_frames_and_grows_to_the_highest_placed() {
        let mut t = GrantTable::default();
        assert_eq!(t.nr_frames(), INITIAL_GRANT_FRAMES);
        t.frames[0] = Some(0x1000);
        assert_eq!(t.nr_frames(), 1);
        t.frames[3] = Some(0x1003);
        assert_eq!(t.nr_frames(), 4);
    }

    #[test]
    fn v2_entries_are_16_bytes_with_a_status_word_each() {
        let mut t = GrantTable::default();
        t.frames[0] = Some(0x1000);
        t.frames[1] = Some(0x2000);
        assert_eq!(t.nr_status_frames(), 0);
        assert_eq!(
            t.locate(513),
            Some(EntryLocation {
                entry: (0x2000 << 12) + 8,
                status: None
            })
        );
        t.version = 2;
        // 2 frames of 256 entries need one status frame of 2048 words.
        assert_eq!(t.nr_status_frames(), 1);
        assert_eq!(MAX_STATUS_FRAMES, 8);
        // No status frame placed yet: the entry cannot be used.
        assert_eq!(t.locate(257), None);
        t.status_frames[0] = Some(0x3000);
        assert_eq!(
            t.locate(257),
            Some(EntryLocation {
                entry: (0x2000 << 12) + 16,
                status: Some((0x3000 << 12) + 257 * 2)
            })
        );
        // Reference 512 needs a third grant frame.
        assert_eq!(t.locate(512), None);
    }
}

//! Grant table bookkeeping (v1).
//!
//! Frames hold the guest-written `grant_entry_v1` array. Each frame sits at
//! the GFN the guest chose with `XENMEM_add_to_physmap`; frames not placed
//! yet are given a default GFN in the reserved window when the guest asks
//! for them with `GNTTABOP_setup_table`.

/// Frames a domain may have (Xen's default max_grant_frames is 64).
pub const MAX_GRANT_FRAMES: u32 = 64;
/// Frames a table has from its creation on (Xen's INITIAL_NR_GRANT_FRAMES
/// on x86: grant_table_init grows the new table to it).
pub const INITIAL_GRANT_FRAMES: u32 = 1;

pub struct GrantTable {
    pub version: u32,
    /// GFN of each frame, for the frames placed so far.
    pub frames: Vec<Option<u64>>,
}

impl Default for GrantTable {
    fn default() -> Self {
        GrantTable {
            version: 1,
            frames: vec![None; MAX_GRANT_FRAMES as usize],
        }
    }
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
}

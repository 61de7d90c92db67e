//! Grant table bookkeeping (v1).
//!
//! Frames hold the guest-written `grant_entry_v1` array. Each frame sits at
//! the GFN the guest chose with `XENMEM_add_to_physmap`; frames not placed
//! yet are given a default GFN in the reserved window when the guest asks
//! for them with `GNTTABOP_setup_table`.

/// Frames a domain may have (Xen's default max_grant_frames is 64).
pub const MAX_GRANT_FRAMES: u32 = 64;

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
    /// Frames in use: one past the highest frame placed.
    pub fn nr_frames(&self) -> u32 {
        self.frames
            .iter()
            .rposition(|f| f.is_some())
            .map_or(0, |i| i as u32 + 1)
    }
}

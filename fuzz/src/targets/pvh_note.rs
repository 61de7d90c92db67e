//! ELF note segments as a PVH kernel image supplies them.

/// One fuzz input; panics on any broken invariant. True when the input
/// held a PVH entry note.
pub fn pvh_note(data: &[u8]) -> bool {
    kxen_loader::elf32::find_pvh_entry(data).is_some()
}

//! A 4 KiB page's fingerprint, for live migration's final pass (issue 17).
//!
//! With the domain paused, kxend compares every page no dirty log named
//! with the fingerprint of what it sent, to find the pages kxen-vmm wrote
//! itself (a PV guest's page tables, through `mmu_update`). That pass is
//! downtime, and it reads all of a domain's memory, so this crate is on
//! its own: the workspace's debug builds, which the tests run, optimize
//! it (see `[profile.dev.package.kxen-pagehash]`).
//!
//! The hash runs four interleaved lanes of xor, odd multiply and rotate
//! over the page's little-endian u64 words. Each step is a bijection of
//! its lane, so two pages that differ in exactly one word always hash
//! differently: the single-entry updates a hypervisor makes to a page
//! table can never hide behind a collision. Other differences collide
//! with the odds of a 64-bit hash.

/// Bytes in a page.
pub const PAGE: usize = 4096;

const K: u64 = 0x9e37_79b9_7f4a_7c15;

/// The fingerprint of `page` (its first [`PAGE`] bytes; a shorter slice
/// is hashed as far as it has whole words).
pub fn page_hash(page: &[u8]) -> u64 {
    let mut lanes = [K, K.rotate_left(16), K.rotate_left(32), K.rotate_left(48)];
    let page = &page[..page.len().min(PAGE)];
    for group in page.chunks_exact(32) {
        for (lane, word) in lanes.iter_mut().zip(group.chunks_exact(8)) {
            let word = u64::from_le_bytes(word.try_into().unwrap_or([0; 8]));
            *lane = (*lane ^ word).wrapping_mul(K).rotate_left(29);
        }
    }
    lanes.iter().fold(0u64, |h, &l| {
        (h ^ l).wrapping_mul(0xff51_afd7_ed55_8ccd).rotate_left(31)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_changed_word_changes_the_hash() {
        let page = [7u8; PAGE];
        let base = page_hash(&page);
        for word in 0..PAGE / 8 {
            for bit in [0, 13, 63] {
                let mut changed = page;
                let mut w = u64::from_le_bytes(changed[word * 8..word * 8 + 8].try_into().unwrap());
                w ^= 1 << bit;
                changed[word * 8..word * 8 + 8].copy_from_slice(&w.to_le_bytes());
                assert_ne!(page_hash(&changed), base, "word {word} bit {bit}");
            }
        }
    }

    #[test]
    fn words_in_other_places_hash_differently() {
        // The same word moved to another slot (another lane, or later in
        // the same lane) is a different page.
        let mut a = [0u8; PAGE];
        let mut b = [0u8; PAGE];
        a[0] = 1;
        b[8] = 1;
        assert_ne!(page_hash(&a), page_hash(&b));
        b = [0u8; PAGE];
        b[32] = 1;
        assert_ne!(page_hash(&a), page_hash(&b));
        assert_ne!(page_hash(&[0; PAGE]), page_hash(&[0xff; PAGE]));
    }
}

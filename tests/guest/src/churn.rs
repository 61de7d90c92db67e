//! `mem churn <pages> <ms>`: a memory-dirtying load for live migration
//! tests. The guest rewrites `pages` pages of its own, pass after pass,
//! for `ms` milliseconds; before rewriting a page it checks that the page
//! still holds the previous pass's pattern, so a page a migration left
//! stale on the destination (an older pass's contents) is caught as soon
//! as the pass after the move reaches it. Answers
//! `mem churn ok passes=<n> crc=<8 hex>` (CRC-32 of the pages at the end)
//! or `mem churn FAIL <why>`.
//!
//! `mem zeroing <pages> <ms>` is the same load with every other pass of
//! each page all-zero (even pages in even passes, odd pages in odd ones):
//! pages go from data to zero and back while a migration copies them, and
//! a page the destination left holding data where the source zeroed it
//! (zero pages travel without contents) is caught the same way. Its
//! answers start `mem zeroing`.

use crate::{pages, println, time};
use kxen_testguest::crc32::Crc32;

const WORDS: usize = 512;

/// The word `word` of page `page` in pass `pass`: a splitmix64-style mix,
/// so every word of every page differs from pass to pass.
fn pattern(pass: u64, page: u64, word: u64) -> u64 {
    let mut z = pass
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(page << 12 | word);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Which load `run` makes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Load {
    /// Every page holds data in every pass.
    Churn,
    /// A page is all-zero in every other pass.
    Zeroing,
}

impl Load {
    fn name(self) -> &'static str {
        match self {
            Load::Churn => "mem churn",
            Load::Zeroing => "mem zeroing",
        }
    }

    /// The word `word` of page `page` in pass `pass` under this load.
    fn word(self, pass: u64, page: u64, word: u64) -> u64 {
        if self == Load::Zeroing && (pass + page).is_multiple_of(2) {
            0
        } else {
            pattern(pass, page, word)
        }
    }
}

/// Check that `words` hold pass `pass`'s contents of page `page`, then
/// (with `next`) write pass `next`'s. The first mismatch, if any.
fn check_and_write(
    load: Load,
    words: &mut [u64],
    page: u64,
    pass: u64,
    next: Option<u64>,
) -> Option<(usize, u64, u64)> {
    for (i, w) in words.iter_mut().enumerate() {
        // SAFETY: a plain u64 of our own page; volatile so each pass
        // really reads and writes memory.
        let got = unsafe { core::ptr::read_volatile(w) };
        let want = load.word(pass, page, i as u64);
        if got != want {
            return Some((i, got, want));
        }
        if let Some(next) = next {
            // SAFETY: as above.
            unsafe { core::ptr::write_volatile(w, load.word(next, page, i as u64)) };
        }
    }
    None
}

pub fn run(count: u64, ms: u64, load: Load) {
    let name = load.name();
    let Some(base) = pages::alloc_contig(count as usize) else {
        println!("{} FAIL no memory for {} pages", name, count);
        return;
    };
    // SAFETY: `count` fresh identity-mapped pages, ours until freed below;
    // u64-aligned (page aligned).
    let buf = unsafe { core::slice::from_raw_parts_mut(base as *mut u64, count as usize * WORDS) };
    for (page, words) in buf.chunks_exact_mut(WORDS).enumerate() {
        for (i, w) in words.iter_mut().enumerate() {
            *w = load.word(0, page as u64, i as u64);
        }
    }
    let end = time::now_ns().map(|n| n + ms * 1_000_000);
    let mut pass = 0u64;
    let mut failure = None;
    'passes: loop {
        for (page, words) in buf.chunks_exact_mut(WORDS).enumerate() {
            if let Some(bad) = check_and_write(load, words, page as u64, pass, Some(pass + 1)) {
                failure = Some((page, bad));
                break 'passes;
            }
        }
        pass += 1;
        match (end, time::now_ns()) {
            (Some(end), Some(now)) if now < end => {}
            _ => break,
        }
    }
    if failure.is_none() {
        for (page, words) in buf.chunks_exact_mut(WORDS).enumerate() {
            if let Some(bad) = check_and_write(load, words, page as u64, pass, None) {
                failure = Some((page, bad));
                break;
            }
        }
    }
    match failure {
        Some((page, (word, got, want))) => println!(
            "{} FAIL page {} word {} in pass {}: {:#x}, expected {:#x}",
            name,
            page,
            word,
            pass + 1,
            got,
            want
        ),
        None => {
            let mut crc = Crc32::new();
            for w in buf.iter() {
                crc.update(&w.to_le_bytes());
            }
            println!("{} ok passes={} crc={:08x}", name, pass, crc.value());
        }
    }
    for i in 0..count as usize {
        pages::free(base.wrapping_add(i * 4096));
    }
}

//! `mem churn <pages> <ms>`: a memory-dirtying load for live migration
//! tests. The guest rewrites `pages` pages of its own, pass after pass,
//! for `ms` milliseconds; before rewriting a page it checks that the page
//! still holds the previous pass's pattern, so a page a migration left
//! stale on the destination (an older pass's contents) is caught as soon
//! as the pass after the move reaches it. Answers
//! `mem churn ok passes=<n> crc=<8 hex>` (CRC-32 of the pages at the end)
//! or `mem churn FAIL <why>`.

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

/// Check that `words` hold pass `pass`'s pattern of page `page`, then
/// (with `next`) write pass `next`'s. The first mismatch, if any.
fn check_and_write(
    words: &mut [u64],
    page: u64,
    pass: u64,
    next: Option<u64>,
) -> Option<(usize, u64, u64)> {
    for (i, w) in words.iter_mut().enumerate() {
        // SAFETY: a plain u64 of our own page; volatile so each pass
        // really reads and writes memory.
        let got = unsafe { core::ptr::read_volatile(w) };
        let want = pattern(pass, page, i as u64);
        if got != want {
            return Some((i, got, want));
        }
        if let Some(next) = next {
            // SAFETY: as above.
            unsafe { core::ptr::write_volatile(w, pattern(next, page, i as u64)) };
        }
    }
    None
}

pub fn run(count: u64, ms: u64) {
    let Some(base) = pages::alloc_contig(count as usize) else {
        println!("mem churn FAIL no memory for {} pages", count);
        return;
    };
    // SAFETY: `count` fresh identity-mapped pages, ours until freed below;
    // u64-aligned (page aligned).
    let buf = unsafe { core::slice::from_raw_parts_mut(base as *mut u64, count as usize * WORDS) };
    for (page, words) in buf.chunks_exact_mut(WORDS).enumerate() {
        for (i, w) in words.iter_mut().enumerate() {
            *w = pattern(0, page as u64, i as u64);
        }
    }
    let end = time::now_ns().map(|n| n + ms * 1_000_000);
    let mut pass = 0u64;
    let mut failure = None;
    'passes: loop {
        for (page, words) in buf.chunks_exact_mut(WORDS).enumerate() {
            if let Some(bad) = check_and_write(words, page as u64, pass, Some(pass + 1)) {
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
            if let Some(bad) = check_and_write(words, page as u64, pass, None) {
                failure = Some((page, bad));
                break;
            }
        }
    }
    match failure {
        Some((page, (word, got, want))) => println!(
            "mem churn FAIL page {} word {} in pass {}: {:#x}, expected {:#x}",
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
            println!("mem churn ok passes={} crc={:08x}", pass, crc.value());
        }
    }
    for i in 0..count as usize {
        pages::free(base.wrapping_add(i * 4096));
    }
}

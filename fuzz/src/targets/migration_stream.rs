//! kxen-stream's readers over a hostile save image or migration stream:
//! the libxl layer, the libxc stream inside it (through checkpoints), page
//! contents and the HVM context blob, as a restore reads them before it
//! touches a domain.

use kxen_stream::hvm_context;
use kxen_stream::libxc::{LibxcReader, LibxcRecord};
use kxen_stream::libxl::{LibxlReader, LibxlRecord};
use kxen_stream::{Limits, ReadError, PAGE_SIZE};

/// Small caps, so that a mutated length or count hits them quickly and
/// a fuzzing run stays within a few MiB per input.
fn limits() -> Limits {
    Limits {
        max_buffered_length: 1 << 20,
        max_pfns_per_batch: 64,
        ..Limits::new(0xfffff)
    }
}

/// What a walk saw: records read and page bytes taken from the input.
#[derive(Default)]
struct Walk {
    records: usize,
    page_bytes: usize,
}

fn check_record_invariants(record: &LibxcRecord, limits: &Limits) {
    match record {
        LibxcRecord::PageData(entries) => {
            assert!(!entries.is_empty());
            assert!(entries.len() as u32 <= limits.max_pfns_per_batch);
            assert!(entries.iter().all(|entry| entry.pfn <= limits.max_pfn));
        }
        LibxcRecord::CheckpointDirtyPfnList(pfns) => {
            assert!(pfns.iter().all(|&pfn| pfn <= limits.max_pfn))
        }
        LibxcRecord::HvmContext(blob) => {
            if let Ok(context) = hvm_context::parse(blob) {
                let entry_bytes: usize = context.entries.iter().map(|e| 8 + e.data.len()).sum();
                // HEADER (8 + 24) and END (8) frame the entries.
                assert_eq!(entry_bytes + 40, blob.len());
            }
        }
        _ => {}
    }
}

/// Reads libxc records until END, a checkpoint, or an error; returns the
/// reader at the point it stopped.
fn walk_libxc<R: std::io::Read>(
    libxc: &mut LibxcReader<R>,
    walk: &mut Walk,
) -> Result<LibxcRecord, ReadError> {
    let limits = *libxc.limits();
    let mut page = [0u8; PAGE_SIZE];
    loop {
        let record = libxc.next_record()?;
        walk.records += 1;
        check_record_invariants(&record, &limits);
        if let LibxcRecord::PageData(entries) = &record {
            let with_contents = entries
                .iter()
                .filter(|entry| entry.page_type.has_contents())
                .count();
            assert_eq!(libxc.pages_pending() as usize, with_contents);
            // Read all but the last page: the next record must skip it.
            while libxc.pages_pending() > 1 {
                libxc.read_page(&mut page)?;
                walk.page_bytes += PAGE_SIZE;
            }
        }
        if matches!(record, LibxcRecord::End | LibxcRecord::Checkpoint) {
            return Ok(record);
        }
    }
}

fn walk_libxl(data: &[u8], walk: &mut Walk) -> Result<(), ReadError> {
    let mut libxl = LibxlReader::new(data, limits())?;
    loop {
        let record = libxl.next_record()?;
        walk.records += 1;
        match record {
            LibxlRecord::End => return Ok(()),
            LibxlRecord::LibxcContext | LibxlRecord::CheckpointEnd => {
                let mut libxc = libxl.into_libxc()?;
                let last = walk_libxc(&mut libxc, walk)?;
                libxl = match libxc.into_libxl() {
                    Ok(libxl) => libxl,
                    // A checkpoint in a stream with no libxl layer is the
                    // only way into_libxl may refuse after END/CHECKPOINT.
                    Err(error) => panic!("into_libxl after {last:?} refused: {error}"),
                };
            }
            _ => {}
        }
    }
}

/// One fuzz input; panics on a broken invariant. True when the input got
/// past the headers into the records, or parsed whole as an HVM context.
pub fn migration_stream(data: &[u8]) -> bool {
    let mut walk = Walk::default();
    let _ = walk_libxl(data, &mut walk);
    assert!(walk.page_bytes <= data.len());
    let libxl_records = walk.records;

    // The same bytes as a libxc stream of its own.
    let mut walk = Walk::default();
    if let Ok(mut libxc) = LibxcReader::new(data, limits()) {
        while let Ok(LibxcRecord::Checkpoint) = walk_libxc(&mut libxc, &mut walk) {}
    }
    assert!(walk.page_bytes <= data.len());

    // And as an HVM context blob on its own.
    let context_parsed = hvm_context::parse(data).is_ok();

    libxl_records >= 2 || walk.records >= 1 || context_parsed
}

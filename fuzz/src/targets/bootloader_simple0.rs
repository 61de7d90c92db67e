//! A bootloader's `simple0` answer as kxend reads it (the bootloader reads
//! a disk image the guest controls, so its answer is the guest's to shape).

use kxen_toolstack::bootloader::{parse_simple0, Simple0Error, MAX_ITEM, MAX_NOTES, MAX_OUTPUT};

/// The item `KEYWORD VALUE` for some whitespace run: whether `data` holds
/// one, as the parser must have read it from there.
fn holds_item(data: &[u8], keyword: &str, value: &str) -> bool {
    data.split(|&b| b == 0).any(|item| {
        item.strip_prefix(keyword.as_bytes())
            .and_then(|rest| rest.strip_suffix(value.as_bytes()))
            .is_some_and(|gap| !gap.is_empty() && gap.iter().all(u8::is_ascii_whitespace))
    })
}

/// One fuzz input; panics on any broken invariant. True when the answer
/// was accepted.
pub fn bootloader_simple0(data: &[u8]) -> bool {
    match parse_simple0(data) {
        Ok(choice) => {
            assert!(data.len() <= MAX_OUTPUT);
            assert!(choice.notes.len() <= MAX_NOTES);
            for (keyword, value, may_be_empty) in [
                ("kernel", Some(&choice.kernel), false),
                ("ramdisk", choice.ramdisk.as_ref(), false),
                ("args", choice.args.as_ref(), true),
            ] {
                let Some(value) = value else { continue };
                assert!(may_be_empty || !value.is_empty(), "{keyword} empty");
                assert!(!value.contains('\0'), "{keyword} holds a NUL");
                assert!(value.len() < MAX_ITEM, "{keyword} too long");
                assert!(
                    !value.starts_with(|c: char| c.is_ascii_whitespace()),
                    "{keyword} keeps leading whitespace"
                );
                assert!(
                    holds_item(data, keyword, value),
                    "{keyword} {value:?} is not an item of the input"
                );
            }
            true
        }
        Err(Simple0Error::TooLong) => {
            assert!(data.len() > MAX_OUTPUT);
            false
        }
        Err(_) => {
            assert!(data.len() <= MAX_OUTPUT);
            false
        }
    }
}

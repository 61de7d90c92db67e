//! A guest's PV console ring (`xencons_interface`) as Dom0 serves it:
//! kxend's console backend and kxen-run's standalone console both take
//! the guest's output and feed it input through these two functions, so
//! the checks on the guest-written indices live in one place.

use std::sync::atomic::{fence, Ordering};

use tracing::{debug, warn};
use xen_abi::console as ring;

use crate::foreign::ForeignPage;

/// Take what the guest wrote to its output ring since the last call.
/// Returns the bytes and whether the guest should be notified (space was
/// freed). Indices that claim more than the ring holds are the guest's
/// own corruption: the ring is resynchronised and nothing is read.
pub fn take_output(page: &ForeignPage) -> (Vec<u8>, bool) {
    let cons = page.load_u32(ring::OFFSET_OUT_CONS);
    let prod = page.load_u32(ring::OFFSET_OUT_PROD);
    let pending = prod.wrapping_sub(cons) as usize;
    if pending > ring::OUT_SIZE {
        warn!(cons, prod, "console ring indices corrupt; resynchronising");
        page.store_u32(ring::OFFSET_OUT_CONS, prod);
        return (Vec::new(), true);
    }
    if pending == 0 {
        return (Vec::new(), false);
    }
    let mut data = vec![0u8; pending];
    let start = cons as usize % ring::OUT_SIZE;
    let first = pending.min(ring::OUT_SIZE - start);
    page.read(ring::OFFSET_OUT + start, &mut data[..first]);
    page.read(ring::OFFSET_OUT, &mut data[first..]);
    page.store_u32(ring::OFFSET_OUT_CONS, prod);
    (data, true)
}

/// Put as much of `input` into the guest's input ring as it has room for;
/// returns how many bytes went in (the guest should be notified when that
/// is more than none). Corrupt indices take nothing: the guest sees no
/// input until it repairs them.
pub fn give_input(page: &ForeignPage, input: &[u8]) -> usize {
    if input.is_empty() {
        return 0;
    }
    let cons = page.load_u32(ring::OFFSET_IN_CONS);
    let prod = page.load_u32(ring::OFFSET_IN_PROD);
    let used = prod.wrapping_sub(cons) as usize;
    if used > ring::IN_SIZE {
        // Not warn!: the guest controls how often this is seen.
        debug!(cons, prod, "console input ring indices corrupt");
        return 0;
    }
    let n = (ring::IN_SIZE - used).min(input.len());
    for (i, &b) in input[..n].iter().enumerate() {
        let idx = (prod as usize + i) % ring::IN_SIZE;
        page.write(ring::OFFSET_IN + idx, &[b]);
    }
    if n > 0 {
        // The bytes before the index that publishes them.
        fence(Ordering::SeqCst);
        page.store_u32(ring::OFFSET_IN_PROD, prod.wrapping_add(n as u32));
    }
    n
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::foreign::{ForeignMemory, MemfdRegion};

    /// One guest page, the console ring, in a memfd.
    fn ring_page() -> ForeignPage {
        let fd = nix::sys::memfd::memfd_create(c"console-test", nix::sys::memfd::MFdFlags::empty())
            .unwrap();
        let file = std::fs::File::from(fd);
        file.set_len(4096).unwrap();
        let region = MemfdRegion {
            gpa: 0,
            len: 4096,
            offset: 0,
        };
        let mem = Arc::new(ForeignMemory::map(file.into(), 4096, vec![region]).unwrap());
        mem.page(0).unwrap()
    }

    #[test]
    fn output_that_wraps_is_taken_whole_and_in_order() {
        let page = ring_page();
        // The guest wrote "abcd" across the end of its 2 KiB output ring.
        let cons = ring::OUT_SIZE as u32 - 2;
        page.write(ring::OFFSET_OUT + ring::OUT_SIZE - 2, b"ab");
        page.write(ring::OFFSET_OUT, b"cd");
        page.store_u32(ring::OFFSET_OUT_CONS, cons);
        page.store_u32(ring::OFFSET_OUT_PROD, cons.wrapping_add(4));
        assert_eq!(take_output(&page), (b"abcd".to_vec(), true));
        assert_eq!(page.load_u32(ring::OFFSET_OUT_CONS), cons.wrapping_add(4));
        assert_eq!(take_output(&page), (Vec::new(), false));
    }

    #[test]
    fn corrupt_output_indices_read_nothing_and_resynchronise() {
        let page = ring_page();
        page.store_u32(ring::OFFSET_OUT_CONS, 0);
        page.store_u32(ring::OFFSET_OUT_PROD, ring::OUT_SIZE as u32 + 1);
        assert_eq!(take_output(&page), (Vec::new(), true));
        assert_eq!(
            page.load_u32(ring::OFFSET_OUT_CONS),
            ring::OUT_SIZE as u32 + 1
        );
    }

    #[test]
    fn input_fills_only_the_room_the_guest_left() {
        let page = ring_page();
        // The guest has consumed nothing of a ring that holds IN_SIZE - 3.
        let prod = ring::IN_SIZE as u32 - 3;
        page.store_u32(ring::OFFSET_IN_CONS, 0);
        page.store_u32(ring::OFFSET_IN_PROD, prod);
        assert_eq!(give_input(&page, b"xyzw"), 3);
        assert_eq!(page.load_u32(ring::OFFSET_IN_PROD), ring::IN_SIZE as u32);
        let mut tail = [0u8; 3];
        page.read(ring::OFFSET_IN + ring::IN_SIZE - 3, &mut tail);
        assert_eq!(&tail, b"xyz");
        assert_eq!(give_input(&page, b"w"), 0, "the ring is full");
    }

    #[test]
    fn corrupt_input_indices_take_nothing() {
        let page = ring_page();
        page.store_u32(ring::OFFSET_IN_CONS, 0);
        page.store_u32(ring::OFFSET_IN_PROD, ring::IN_SIZE as u32 + 7);
        assert_eq!(give_input(&page, b"abc"), 0);
        assert_eq!(
            page.load_u32(ring::OFFSET_IN_PROD),
            ring::IN_SIZE as u32 + 7
        );
    }
}

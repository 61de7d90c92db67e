//! kxen-vmm-api's image container (`save-state`/`load-state`), as kxend
//! and kxen-vmm parse it out of a hostile restore image.

use kxen_vmm_api::image::{self, MAX_IMAGE};

/// One fuzz input; panics on a broken invariant: an image that parses
/// must encode and parse back to itself, and its sections fit the input.
/// True when the input parsed.
pub fn vmm_image(data: &[u8]) -> bool {
    let Ok(parsed) = image::parse(data) else {
        return false;
    };
    assert!(data.len() <= MAX_IMAGE);
    let section_bytes =
        parsed.hvm_context.len() + parsed.hvm_params.len() * 16 + parsed.xen_state.len();
    assert!(section_bytes <= data.len());
    let again = image::parse(&image::encode(&parsed)).expect("an encoded image parses");
    assert_eq!(again, parsed);
    true
}

//! A domain's part of the store as it travels in a save image or a
//! migration stream (kxen-xenstore's `DomainImage`), parsed as kxend
//! parses it out of a hostile image, then brought onto a new domain.

use std::sync::Arc;

use kxen_xenstore::harness::Harness;
use kxen_xenstore::image::{DomainImage, MAX_NODES, MAX_WATCHES};
use kxen_xenstore::HeapPage;

/// One fuzz input; panics on a broken invariant: an image that parses
/// stays within its bounds, encodes and parses back to itself, and loads
/// onto a fresh domain leaving a sound store, at most once per node and
/// watch. True when the input parsed.
pub fn xenstore_image(data: &[u8]) -> bool {
    let Ok(image) = DomainImage::decode(data) else {
        return false;
    };
    assert!(image.nodes.len() <= MAX_NODES);
    assert!(image.watches.len() <= MAX_WATCHES);
    let again = DomainImage::decode(&image.encode()).expect("an encoded image parses");
    assert_eq!(again, image);
    let mut h = Harness::default();
    h.introduce(5, Arc::new(HeapPage::new()), Box::new(|| {}));
    if let Ok((nodes, watches)) = h.import_domain(5, &image) {
        assert!(nodes <= image.nodes.len());
        assert!(watches <= image.watches.len());
        // The restored ring connection is served: its partial request,
        // its queued output, its indices over the new page.
        h.kick(5);
        // A second load finds everything there already.
        assert_eq!(h.import_domain(5, &image), Ok((0, 0)));
    }
    assert_eq!(h.check(), 0, "the store is inconsistent after a load");
    true
}

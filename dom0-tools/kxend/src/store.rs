//! What kxend needs from xenstored, as a narrow interface.

use kxen_foreign::foreign::ForeignPage;

/// Dom0's view of the store.
pub trait StoreService: Send + Sync {
    /// Write `value` at `path` as Dom0, creating parents.
    fn write(&self, path: &str, value: &[u8]);
    fn mkdir(&self, path: &str);
    fn rm(&self, path: &str);
    /// Set permissions from xl's notation, owner first: e.g. ["n0", "r5"].
    fn set_perms(&self, path: &str, perms: &[String]);
    /// Start serving `domid`'s ring; `notify` raises the guest's event.
    /// `resume`: the guest was already served by a previous kxend, so its
    /// ring is taken as it is and its saved watches come back.
    fn introduce(
        &self,
        domid: u32,
        ring: ForeignPage,
        notify: Box<dyn Fn() + Send + Sync>,
        resume: bool,
    );
    /// The guest notified its xenstore event channel.
    fn kick(&self, domid: u32);
    /// Stop serving `domid` (fires @releaseDomain).
    fn release(&self, domid: u32);
    /// The store itself, for backends that read and watch device nodes.
    fn xenstored(&self) -> kxen_xenstore::Xenstored;
    /// Persist the store if it changed (kxend calls this after changes,
    /// and on exit).
    fn save(&self);
}

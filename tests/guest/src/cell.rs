//! A global for the guest's single ring-3 thread.
//!
//! The checks and service mode run on one vCPU in one ring-3 context; ring 0
//! never touches these values. So a static needs no lock, only a rule that
//! nobody holds two borrows at once, which [`Single::with`] enforces with a
//! flag (a nested borrow is a bug and panics instead of aliasing).

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

pub struct Single<T> {
    busy: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: only the one ring-3 thread uses a Single, and `with` refuses a
// second borrow while one is live, so no two `&mut T` ever coexist.
unsafe impl<T> Sync for Single<T> {}

impl<T> Single<T> {
    pub const fn new(value: T) -> Self {
        Single {
            busy: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    /// Run `f` with exclusive access to the value.
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        if self.busy.swap(true, Ordering::Acquire) {
            panic!("nested use of a guest global");
        }
        // SAFETY: `busy` was false, so no other borrow is live; it stays
        // true until `f` returns.
        let r = f(unsafe { &mut *self.value.get() });
        self.busy.store(false, Ordering::Release);
        r
    }
}

//! Dom0's end of an interdomain event channel.
//!
//! The guest's `EVTCHNOP_send` on its end makes kxen-vmm write `kick`, an
//! eventfd the backend polls directly. Dom0's notification raises the
//! guest's port: the pending bits are set in the guest's shared_info with
//! the same 2-level logic the hypervisor uses, and the target vCPU is
//! interrupted through a KVM irqfd, so no kxen-vmm thread wakes up.

use std::os::fd::{AsRawFd, BorrowedFd};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// How Dom0 raises the guest's end.
enum Notifier {
    /// A test peer: each notification is one eventfd write.
    Eventfd(EventFd),
}

/// One bound interdomain channel, Dom0's side.
pub struct Dom0Channel {
    guest_port: u32,
    dom0_port: u32,
    kick: EventFd,
    notifier: Notifier,
}

/// The guest side of a channel made by [`Dom0Channel::pair_for_tests`].
pub struct TestGuestEnd {
    /// Write to it to simulate the guest's EVTCHNOP_send.
    pub kick: EventFd,
    /// Readable once Dom0 notified.
    pub notified: EventFd,
}

impl TestGuestEnd {
    /// Notifications Dom0 sent since the last call.
    pub fn take_notifications(&self) -> u64 {
        self.notified.read().unwrap_or(0)
    }
}

impl Dom0Channel {
    /// A channel whose guest end is a pair of eventfds, for backend tests
    /// that run without a VMM.
    pub fn pair_for_tests(
        guest_port: u32,
        dom0_port: u32,
    ) -> std::io::Result<(Self, TestGuestEnd)> {
        let kick = EventFd::new(EFD_NONBLOCK)?;
        let notified = EventFd::new(EFD_NONBLOCK)?;
        let channel = Dom0Channel {
            guest_port,
            dom0_port,
            kick: kick.try_clone()?,
            notifier: Notifier::Eventfd(notified.try_clone()?),
        };
        Ok((channel, TestGuestEnd { kick, notified }))
    }

    /// The guest's port number.
    pub fn guest_port(&self) -> u32 {
        self.guest_port
    }

    /// Dom0's port number.
    pub fn dom0_port(&self) -> u32 {
        self.dom0_port
    }

    /// Readable (POLLIN) when the guest sent an event since the last
    /// [`Dom0Channel::ack`].
    pub fn kick_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the eventfd is owned by `self` and outlives the borrow.
        unsafe { BorrowedFd::borrow_raw(self.kick.as_raw_fd()) }
    }

    /// Consume pending kicks; true if there were any.
    pub fn ack(&self) -> bool {
        self.kick.read().is_ok()
    }

    /// Raise the guest's port.
    pub fn notify(&self) {
        match &self.notifier {
            Notifier::Eventfd(fd) => {
                let _ = fd.write(1);
            }
        }
    }
}

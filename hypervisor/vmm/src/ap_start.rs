//! Starting application processors through the ACPI multiprocessor wakeup
//! mailbox (see `kxen_loader::acpi`).
//!
//! The guest writes an APIC ID and a 64-bit entry point into the mailbox
//! and sets its command to WAKEUP; the "firmware" (this poller) hands the
//! entry point to that vCPU's thread, brings the vCPU online and clears the
//! command to acknowledge. The vCPU thread then puts its vCPU in long mode
//! on the identity-mapped AP page tables at the entry point. Polling is what
//! the mailbox protocol expects of firmware (the mailbox is plain RAM, so a
//! write to it makes no exit); it runs in the event loop on a 1 ms timerfd
//! only while some AP has not started, and stops for good after.

use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use kxen_loader::acpi::{MpWakeMailbox, MP_WAKE_COMMAND_WAKEUP, MP_WAKE_MAILBOX_GPA};
use kxen_xen::Domain;
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{Expiration, TimerFd, TimerSetTimeFlags};
use tracing::{info, warn};
use vm_memory::{Bytes, GuestAddress};

use crate::event_loop::{new_timer, watch};
use crate::memory::GuestMemory;

const POLL_PERIOD: Duration = Duration::from_millis(1);

/// Entry points handed from the mailbox poller to the vCPU threads.
pub struct ApStarter {
    pending: Mutex<Vec<Option<u64>>>,
}

impl ApStarter {
    pub fn new(vcpus: u32) -> Self {
        ApStarter {
            pending: Mutex::new(vec![None; vcpus as usize]),
        }
    }

    /// The entry point for `vcpu`, once; called by its thread before it
    /// first enters the guest.
    pub fn take(&self, vcpu: u32) -> Option<u64> {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(vcpu as usize)
            .and_then(Option::take)
    }

    fn all_started(&self, domain: &Domain) -> bool {
        let n = self.pending.lock().unwrap_or_else(|e| e.into_inner()).len() as u32;
        (1..n).all(|vcpu| domain.vcpu_initialised(vcpu))
    }

    /// Serve one mailbox command, if there is one.
    fn poll_once(&self, domain: &Domain, memory: &GuestMemory) {
        let mem = memory.snapshot();
        let mut raw = [0u8; MpWakeMailbox::SIZE];
        if mem
            .read_slice(&mut raw, GuestAddress(MP_WAKE_MAILBOX_GPA))
            .is_err()
        {
            return;
        }
        let mailbox = MpWakeMailbox::from_bytes(&raw);
        if mailbox.command == 0 {
            return;
        }
        let apic_id = mailbox.apic_id;
        let vector = mailbox.wakeup_vector;
        if mailbox.command != MP_WAKE_COMMAND_WAKEUP {
            warn!(
                command = mailbox.command,
                "unknown MP wakeup mailbox command"
            );
        } else if apic_id == 0 || domain.vcpu_initialised(apic_id) {
            warn!(apic_id, "MP wakeup for a vCPU that is already running");
        } else {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            match pending.get_mut(apic_id as usize) {
                Some(slot) => {
                    *slot = Some(vector);
                    drop(pending);
                    info!(
                        vcpu = apic_id,
                        vector, "AP woken through the MP wakeup mailbox"
                    );
                    domain.vcpu_started(apic_id);
                }
                None => warn!(apic_id, "MP wakeup for a vCPU this domain does not have"),
            }
        }
        // Acknowledge, as firmware does, whether or not the request made
        // sense: the guest waits for this and nothing else.
        let _ = mem.write_obj(0u16, GuestAddress(MP_WAKE_MAILBOX_GPA));
    }
}

/// The mailbox poller in the event loop: a periodic timerfd, removed once
/// every AP has started.
pub struct ApMailbox {
    starter: Arc<ApStarter>,
    domain: Arc<Domain>,
    memory: Arc<GuestMemory>,
    timer: TimerFd,
}

impl ApMailbox {
    pub fn new(
        starter: Arc<ApStarter>,
        domain: Arc<Domain>,
        memory: Arc<GuestMemory>,
    ) -> nix::Result<Self> {
        let timer = new_timer()?;
        let period = TimeSpec::from_duration(POLL_PERIOD);
        timer.set(Expiration::Interval(period), TimerSetTimeFlags::empty())?;
        Ok(ApMailbox {
            starter,
            domain,
            memory,
            timer,
        })
    }
}

impl MutEventSubscriber for ApMailbox {
    fn init(&mut self, ops: &mut EventOps) {
        watch(ops, &self.timer.as_fd(), 0, "the AP wakeup mailbox");
    }

    fn process(&mut self, _events: Events, ops: &mut EventOps) {
        let _ = self.timer.wait();
        if self.starter.all_started(&self.domain) {
            let _ = self.timer.unset();
            let _ = ops.remove(Events::new(&self.timer.as_fd(), EventSet::IN));
            info!("every AP has started: the mailbox poller stops");
            return;
        }
        self.starter.poll_once(&self.domain, &self.memory);
    }
}

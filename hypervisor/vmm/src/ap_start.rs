//! Starting application processors through the ACPI multiprocessor wakeup
//! mailbox (see `kxen_loader::acpi`).
//!
//! The guest writes an APIC ID and a 64-bit entry point into the mailbox
//! and sets its command to WAKEUP; the "firmware" (this poller) hands the
//! entry point to that vCPU's thread, brings the vCPU online and clears the
//! command to acknowledge. The vCPU thread then puts its vCPU in long mode
//! on the identity-mapped AP page tables at the entry point. Polling is what
//! the mailbox protocol expects of firmware; it runs only while some AP has
//! not started, at a 1 ms period.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kxen_loader::acpi::{MpWakeMailbox, MP_WAKE_COMMAND_WAKEUP, MP_WAKE_MAILBOX_GPA};
use tracing::{info, warn};
use vm_memory::{Bytes, GuestAddress};

use crate::vm::Runtime;

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

    fn all_started(&self, rt: &Runtime) -> bool {
        let n = self.pending.lock().unwrap_or_else(|e| e.into_inner()).len() as u32;
        (1..n).all(|vcpu| rt.domain.vcpu_initialised(vcpu))
    }

    /// Serve one mailbox command, if there is one.
    fn poll_once(&self, rt: &Runtime) {
        let mem = rt.memory.snapshot();
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
        } else if apic_id == 0 || rt.domain.vcpu_initialised(apic_id) {
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
                    rt.domain.vcpu_started(apic_id);
                }
                None => warn!(apic_id, "MP wakeup for a vCPU this domain does not have"),
            }
        }
        // Acknowledge, as firmware does, whether or not the request made
        // sense: the guest waits for this and nothing else.
        let _ = mem.write_obj(0u16, GuestAddress(MP_WAKE_MAILBOX_GPA));
    }

    /// The poller thread body: runs until every AP has started or the
    /// domain stops.
    pub fn run(self: Arc<Self>, rt: Arc<Runtime>) {
        while !rt.domain.is_stopping() && !self.all_started(&rt) {
            self.poll_once(&rt);
            std::thread::sleep(POLL_PERIOD);
        }
    }
}

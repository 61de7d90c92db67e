//! FIFO event channels (the ABI of Xen's public/event_channel.h): per-port
//! event words in guest-provided event array pages, and per-vCPU control
//! blocks holding one queue head per priority plus a READY bitmap.
//!
//! The hypervisor side keeps what the guest must not be able to corrupt:
//! where the pages are, each queue's tail, each port's priority and the
//! queue it was last linked on. Everything in guest memory is accessed with
//! atomic operations, since the guest changes the same words concurrently.

use std::sync::atomic::{AtomicU32, Ordering};

use tracing::warn;
use vm_memory::GuestMemoryMmap;
use xen_abi::errno::{EINVAL, ENOSPC};
use xen_abi::event_channel::*;

use crate::guest::atomic_u32;

const PENDING: u32 = 1 << EVTCHN_FIFO_PENDING;
const MASKED: u32 = 1 << EVTCHN_FIFO_MASKED;
const LINKED: u32 = 1 << EVTCHN_FIFO_LINKED;
const BUSY: u32 = 1 << EVTCHN_FIFO_BUSY;

/// How often linking onto a tail is retried once the tail word is marked
/// BUSY. The guest may only clear MASKED, PENDING or LINKED meanwhile (and
/// BUSY stops it unmasking), so a handful of tries always settle it.
const LINK_RETRIES: usize = 4;

#[derive(Clone, Copy, Debug)]
struct FifoPort {
    priority: u8,
    /// Raised while its event array page did not exist yet: delivered when
    /// the page is added.
    parked: bool,
    /// The queue (vCPU, priority) the port was last linked on.
    last_vcpu: u32,
    last_priority: u8,
}

impl Default for FifoPort {
    fn default() -> Self {
        FifoPort {
            priority: EVTCHN_FIFO_PRIORITY_DEFAULT as u8,
            parked: false,
            last_vcpu: 0,
            last_priority: EVTCHN_FIFO_PRIORITY_DEFAULT as u8,
        }
    }
}

/// The FIFO state of a domain that switched to the FIFO ABI.
pub struct FifoState {
    /// GPA of each vCPU's control block, once the guest registered it.
    control_blocks: Vec<Option<u64>>,
    /// GFN of each event array page, in port order.
    array_pages: Vec<u64>,
    /// Per vCPU and priority: the port last linked onto that queue (0: none).
    tails: Vec<[u32; EVTCHN_FIFO_MAX_QUEUES]>,
    ports: Vec<FifoPort>,
}

/// A domain's FIFO state as a save image carries it (issue 17): what
/// the hypervisor keeps beside the guest's control blocks and event
/// words, which travel in its memory.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FifoSnapshot {
    /// Each vCPU's control block GPA (None: not registered).
    pub control_blocks: Vec<Option<u64>>,
    /// The event array pages' GFNs, in port order.
    pub array_pages: Vec<u64>,
    /// Per vCPU, the port last linked onto each priority's queue.
    pub tails: Vec<[u32; EVTCHN_FIFO_MAX_QUEUES]>,
    /// The size of the per-port table.
    pub nr_ports: u32,
    /// The ports whose state differs from a new port's: (port, priority,
    /// parked, last vCPU, last priority).
    pub ports: Vec<(u32, u8, bool, u32, u8)>,
}

/// Why a FIFO snapshot was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FifoSnapshotError {
    #[error("{0} control blocks for a {1}-vCPU domain")]
    VcpuCount(usize, u32),
    #[error("no vCPU registered a control block")]
    NoControlBlock,
    #[error("vCPU {vcpu}'s control block at {gpa:#x} is not an aligned block in RAM")]
    ControlBlock { vcpu: u32, gpa: u64 },
    #[error("event array page {index} at GFN {gfn:#x} is not RAM, or past the ABI's pages")]
    ArrayPage { index: usize, gfn: u64 },
    #[error("{0} ports is more than FIFO addresses")]
    PortCount(u32),
    #[error("port {port}: {why}")]
    Port { port: u32, why: &'static str },
}

impl FifoState {
    /// The state as a save image carries it.
    pub fn snapshot(&self) -> FifoSnapshot {
        let default = FifoPort::default();
        FifoSnapshot {
            control_blocks: self.control_blocks.clone(),
            array_pages: self.array_pages.clone(),
            tails: self.tails.clone(),
            nr_ports: self.ports.len() as u32,
            ports: self
                .ports
                .iter()
                .enumerate()
                .filter(|(_, p)| {
                    (p.priority, p.parked, p.last_vcpu, p.last_priority)
                        != (
                            default.priority,
                            default.parked,
                            default.last_vcpu,
                            default.last_priority,
                        )
                })
                .map(|(port, p)| {
                    (
                        port as u32,
                        p.priority,
                        p.parked,
                        p.last_vcpu,
                        p.last_priority,
                    )
                })
                .collect(),
        }
    }

    /// The state of a saved domain (hostile: from a restore image) of
    /// `nr_vcpus` vCPUs, `is_ram` saying which GFNs are its RAM. Every
    /// field is checked as the hypercalls that set it check theirs.
    pub fn from_snapshot(
        snap: &FifoSnapshot,
        nr_vcpus: u32,
        is_ram: impl Fn(u64) -> bool,
    ) -> Result<FifoState, FifoSnapshotError> {
        let vcpus = nr_vcpus as usize;
        if snap.control_blocks.len() != vcpus || snap.tails.len() != vcpus {
            return Err(FifoSnapshotError::VcpuCount(
                snap.control_blocks.len().max(snap.tails.len()),
                nr_vcpus,
            ));
        }
        if snap.control_blocks.iter().all(Option::is_none) {
            return Err(FifoSnapshotError::NoControlBlock);
        }
        for (vcpu, gpa) in snap.control_blocks.iter().enumerate() {
            let Some(gpa) = *gpa else { continue };
            let offset = gpa & 0xfff;
            if !gpa.is_multiple_of(8)
                || offset > 4096 - u64::from(EVTCHN_FIFO_CONTROL_BLOCK_SIZE)
                || !is_ram(gpa >> 12)
            {
                return Err(FifoSnapshotError::ControlBlock {
                    vcpu: vcpu as u32,
                    gpa,
                });
            }
        }
        for (index, &gfn) in snap.array_pages.iter().enumerate() {
            if index as u32 >= EVTCHN_FIFO_MAX_ARRAY_PAGES || !is_ram(gfn) {
                return Err(FifoSnapshotError::ArrayPage { index, gfn });
            }
        }
        if snap.nr_ports > EVTCHN_FIFO_NR_CHANNELS {
            return Err(FifoSnapshotError::PortCount(snap.nr_ports));
        }
        let mut state = FifoState::new(nr_vcpus, snap.nr_ports);
        state.control_blocks = snap.control_blocks.clone();
        state.array_pages = snap.array_pages.clone();
        for tails in &snap.tails {
            if let Some(&port) = tails.iter().find(|&&p| p >= snap.nr_ports) {
                return Err(FifoSnapshotError::Port {
                    port,
                    why: "a queue's tail past the port table",
                });
            }
        }
        state.tails = snap.tails.clone();
        for &(port, priority, parked, last_vcpu, last_priority) in &snap.ports {
            let bad = |why| FifoSnapshotError::Port { port, why };
            let slot = state
                .ports
                .get_mut(port as usize)
                .ok_or(bad("past the port table"))?;
            if u32::from(priority) > EVTCHN_FIFO_PRIORITY_MIN
                || u32::from(last_priority) > EVTCHN_FIFO_PRIORITY_MIN
            {
                return Err(bad("a priority past the lowest"));
            }
            if last_vcpu >= nr_vcpus {
                return Err(bad("last linked on a vCPU the domain lacks"));
            }
            *slot = FifoPort {
                priority,
                parked,
                last_vcpu,
                last_priority,
            };
        }
        Ok(state)
    }

    /// FIFO state for `nr_vcpus` vCPUs and a port table of `nr_ports`.
    pub fn new(nr_vcpus: u32, nr_ports: u32) -> Self {
        FifoState {
            control_blocks: vec![None; nr_vcpus as usize],
            array_pages: Vec::new(),
            tails: vec![[0; EVTCHN_FIFO_MAX_QUEUES]; nr_vcpus as usize],
            ports: vec![FifoPort::default(); nr_ports as usize],
        }
    }

    /// Record `vcpu`'s control block at `gpa` (already checked to be
    /// guest RAM, 8-aligned and within one page). -EINVAL if it has one.
    pub fn set_control_block(&mut self, vcpu: u32, gpa: u64) -> Result<(), i64> {
        let slot = self.control_blocks.get_mut(vcpu as usize).ok_or(-EINVAL)?;
        if slot.is_some() {
            return Err(-EINVAL);
        }
        *slot = Some(gpa);
        Ok(())
    }

    /// Whether `vcpu` registered a control block.
    pub fn has_control_block(&self, vcpu: u32) -> bool {
        self.control_blocks
            .get(vcpu as usize)
            .is_some_and(|c| c.is_some())
    }

    /// Append an event array page at `gfn`; returns the ports it covers.
    /// -ENOSPC past the ABI's port space.
    pub fn add_array_page(&mut self, gfn: u64) -> Result<std::ops::Range<u32>, i64> {
        if self.array_pages.len() as u32 >= EVTCHN_FIFO_MAX_ARRAY_PAGES {
            return Err(-ENOSPC);
        }
        let first = self.array_pages.len() as u32 * EVTCHN_FIFO_WORDS_PER_PAGE;
        self.array_pages.push(gfn);
        Ok(first..first + EVTCHN_FIFO_WORDS_PER_PAGE)
    }

    /// Event array pages added so far.
    pub fn array_pages(&self) -> usize {
        self.array_pages.len()
    }

    /// Mark `port` as raised before its event word existed (the 2-level
    /// pending state carried over at the switch, or a send).
    pub fn park(&mut self, port: u32) {
        if let Some(p) = self.ports.get_mut(port as usize) {
            p.parked = true;
        }
    }

    /// Take the parked flag of `port`.
    pub fn take_parked(&mut self, port: u32) -> bool {
        self.ports
            .get_mut(port as usize)
            .is_some_and(|p| std::mem::take(&mut p.parked))
    }

    /// EVTCHNOP_set_priority on a valid port.
    pub fn set_priority(&mut self, port: u32, priority: u32) -> Result<(), i64> {
        if priority > EVTCHN_FIFO_PRIORITY_MIN {
            return Err(-EINVAL);
        }
        let p = self.ports.get_mut(port as usize).ok_or(-EINVAL)?;
        // Events already linked stay on their old queue; later ones use
        // the new one.
        p.priority = priority as u8;
        Ok(())
    }

    /// `port`'s event word, if its array page exists.
    fn word<'m>(&self, mem: &'m GuestMemoryMmap, port: u32) -> Option<&'m AtomicU32> {
        let gfn = *self
            .array_pages
            .get((port / EVTCHN_FIFO_WORDS_PER_PAGE) as usize)?;
        let offset = (port % EVTCHN_FIFO_WORDS_PER_PAGE) as u64 * 4;
        atomic_u32(mem, (gfn << 12) + offset)
    }

    /// Raise `port` towards `vcpu`: set PENDING and, unless the port is
    /// masked or already linked, link it at the tail of `vcpu`'s queue for
    /// its priority. True when the queue's READY bit went from 0 to 1, so
    /// the vCPU must be told (its `evtchn_upcall_pending`).
    pub fn set_pending(&mut self, mem: &GuestMemoryMmap, vcpu: u32, port: u32) -> bool {
        let Some(fifo_port) = self.ports.get(port as usize).copied() else {
            return false;
        };
        let Some(word) = self.word(mem, port) else {
            self.park(port);
            return false;
        };
        word.fetch_or(PENDING, Ordering::SeqCst);
        // Without a control block the guest cannot have unmasked anything
        // yet (Xen drops the link the same way); the PENDING bit stays.
        let Some(control) = self.control_blocks.get(vcpu as usize).copied().flatten() else {
            return false;
        };
        if word.load(Ordering::SeqCst) & MASKED != 0 {
            return false;
        }
        if word.fetch_or(LINKED, Ordering::SeqCst) & LINKED != 0 {
            return false;
        }
        let priority = fifo_port.priority as usize;
        // If the port was the tail of the queue it was last on, that queue
        // is empty now: forget the tail so a later link there cannot chain
        // onto a word that now belongs to another queue.
        let (old_vcpu, old_priority) = (
            fifo_port.last_vcpu as usize,
            fifo_port.last_priority as usize,
        );
        if let Some(tail) = self
            .tails
            .get_mut(old_vcpu)
            .and_then(|t| t.get_mut(old_priority))
        {
            if *tail == port {
                *tail = 0;
            }
        }
        let entry = &mut self.ports[port as usize];
        entry.last_vcpu = vcpu;
        entry.last_priority = priority as u8;

        let tail = self.tails[vcpu as usize][priority];
        let linked = tail != 0
            && self
                .word(mem, tail)
                .is_some_and(|tail_word| link_after(tail_word, port));
        if !linked {
            if let Some(head) = atomic_u32(
                mem,
                control + EVTCHN_FIFO_CONTROL_HEAD + 4 * priority as u64,
            ) {
                head.store(port, Ordering::SeqCst);
            }
        }
        self.tails[vcpu as usize][priority] = port;
        if linked {
            // The queue was not empty: the guest is still walking it.
            return false;
        }
        let bit = 1u32 << priority;
        atomic_u32(mem, control + EVTCHN_FIFO_CONTROL_READY)
            .is_some_and(|ready| ready.fetch_or(bit, Ordering::SeqCst) & bit == 0)
    }

    /// EVTCHNOP_unmask: clear MASKED and, if the port is pending, link it.
    /// True when `vcpu` must be told.
    pub fn unmask(&mut self, mem: &GuestMemoryMmap, vcpu: u32, port: u32) -> bool {
        let Some(word) = self.word(mem, port) else {
            return false;
        };
        word.fetch_and(!MASKED, Ordering::SeqCst);
        if word.load(Ordering::SeqCst) & PENDING == 0 {
            return false;
        }
        self.set_pending(mem, vcpu, port)
    }

    /// Whether `port`'s event word says it is pending.
    pub fn is_pending(&self, mem: &GuestMemoryMmap, port: u32) -> bool {
        self.word(mem, port)
            .is_some_and(|w| w.load(Ordering::SeqCst) & PENDING != 0)
    }

    /// A port is closed: clear PENDING (the guest unlinks non-pending
    /// events itself) and forget its priority and parked state.
    pub fn clear_port(&mut self, mem: &GuestMemoryMmap, port: u32) {
        if let Some(w) = self.word(mem, port) {
            w.fetch_and(!PENDING, Ordering::SeqCst);
        }
        if let Some(p) = self.ports.get_mut(port as usize) {
            p.priority = EVTCHN_FIFO_PRIORITY_DEFAULT as u8;
            p.parked = false;
        }
    }
}

/// Set the LINK field of `tail_word` to `port` if it is still LINKED.
/// False when it is not (the guest consumed it: the queue is empty).
fn link_after(tail_word: &AtomicU32, port: u32) -> bool {
    let try_link = |current: u32| -> Result<bool, u32> {
        if current & LINKED == 0 {
            return Ok(false);
        }
        let new = (current & !(BUSY | EVTCHN_FIFO_LINK_MASK)) | port;
        tail_word
            .compare_exchange(current, new, Ordering::SeqCst, Ordering::SeqCst)
            .map(|_| true)
    };
    if let Ok(linked) = try_link(tail_word.load(Ordering::SeqCst)) {
        return linked;
    }
    // Contended: mark the word BUSY so the guest holds off unmasking it,
    // then retry a bounded number of times.
    tail_word.fetch_or(BUSY, Ordering::SeqCst);
    let mut current = tail_word.load(Ordering::SeqCst);
    for _ in 0..LINK_RETRIES {
        match try_link(current) {
            Ok(true) => return true,
            Ok(false) => {
                tail_word.fetch_and(!BUSY, Ordering::SeqCst);
                return false;
            }
            Err(actual) => current = actual,
        }
    }
    warn!(
        port,
        "FIFO event not linked: its queue's tail kept changing"
    );
    tail_word.fetch_and(!BUSY, Ordering::SeqCst);
    true
}

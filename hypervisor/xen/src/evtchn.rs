//! Event channels: the per-domain port table and the 2-level pending logic.
//!
//! The 2-level functions operate on the shared_info and vcpu_info words in
//! guest memory with atomic bit operations, exactly as the guest does, so
//! any process mapping the domain's memory (the VMM or a Dom0 backend) can
//! raise an event with the same code.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use xen_abi::event_channel::*;

/// What a port is connected to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortState {
    /// Never allocated or closed.
    Free,
    /// Port 0: never handed out.
    Reserved,
    /// Allocated, waiting for `remote_dom` to bind it.
    Unbound {
        remote_dom: u16,
    },
    /// Connected to `remote_port` of `remote_dom`. For the domain itself
    /// (loopback) `remote_dom` is our own domid.
    Interdomain {
        remote_dom: u16,
        remote_port: u32,
    },
    Virq {
        virq: u32,
    },
    Ipi,
}

#[derive(Clone, Copy, Debug)]
pub struct Port {
    pub state: PortState,
    /// The vCPU whose vcpu_info is flagged when this port fires.
    pub notify_vcpu: u32,
}

/// Errors of the table operations, as Xen errnos.
pub type EvtchnResult<T> = Result<T, i64>;

/// The port table of one domain.
pub struct PortTable {
    ports: Vec<Port>,
    /// `virq_ports[vcpu][virq]`: the port a VIRQ is bound to.
    virq_ports: Vec<[u32; NR_VIRQS as usize]>,
}

impl PortTable {
    pub fn new(nr_vcpus: u32) -> Self {
        let mut ports = vec![
            Port {
                state: PortState::Free,
                notify_vcpu: 0,
            };
            NR_EVENT_CHANNELS_2L as usize
        ];
        ports[0].state = PortState::Reserved;
        PortTable {
            ports,
            virq_ports: vec![[0; NR_VIRQS as usize]; nr_vcpus as usize],
        }
    }

    fn nr_vcpus(&self) -> u32 {
        self.virq_ports.len() as u32
    }

    /// The port, if `port` is in range.
    pub fn get(&self, port: u32) -> EvtchnResult<&Port> {
        self.ports.get(port as usize).ok_or(-xen_abi::errno::EINVAL)
    }

    fn get_mut(&mut self, port: u32) -> EvtchnResult<&mut Port> {
        self.ports
            .get_mut(port as usize)
            .ok_or(-xen_abi::errno::EINVAL)
    }

    fn alloc(&mut self, state: PortState, notify_vcpu: u32) -> EvtchnResult<u32> {
        let port = self
            .ports
            .iter()
            .position(|p| p.state == PortState::Free)
            .ok_or(-xen_abi::errno::ENOSPC)?;
        self.ports[port] = Port { state, notify_vcpu };
        Ok(port as u32)
    }

    pub fn alloc_unbound(&mut self, remote_dom: u16) -> EvtchnResult<u32> {
        self.alloc(PortState::Unbound { remote_dom }, 0)
    }

    /// Bind a new local port to `remote_port` of this same domain
    /// (`self_domid`), which must be unbound and waiting for us.
    pub fn bind_loopback(&mut self, self_domid: u16, remote_port: u32) -> EvtchnResult<u32> {
        match self.get(remote_port)?.state {
            PortState::Unbound { remote_dom } if remote_dom == self_domid => {}
            _ => return Err(-xen_abi::errno::EINVAL),
        }
        let local = self.alloc(
            PortState::Interdomain {
                remote_dom: self_domid,
                remote_port,
            },
            0,
        )?;
        self.ports[remote_port as usize].state = PortState::Interdomain {
            remote_dom: self_domid,
            remote_port: local,
        };
        Ok(local)
    }

    /// Allocate a port connected to a port of another domain (Dom0's
    /// backends); the other side is bookkept by its owner.
    pub fn bind_remote(&mut self, remote_dom: u16, remote_port: u32) -> EvtchnResult<u32> {
        self.alloc(
            PortState::Interdomain {
                remote_dom,
                remote_port,
            },
            0,
        )
    }

    /// Connect an existing unbound port to a remote domain's port.
    pub fn connect_unbound(
        &mut self,
        port: u32,
        remote_dom: u16,
        remote_port: u32,
    ) -> EvtchnResult<()> {
        let entry = self.get_mut(port)?;
        match entry.state {
            PortState::Unbound { remote_dom: want } if want == remote_dom => {
                entry.state = PortState::Interdomain {
                    remote_dom,
                    remote_port,
                };
                Ok(())
            }
            _ => Err(-xen_abi::errno::EINVAL),
        }
    }

    pub fn bind_virq(&mut self, virq: u32, vcpu: u32) -> EvtchnResult<u32> {
        if virq >= NR_VIRQS {
            return Err(-xen_abi::errno::EINVAL);
        }
        // Xen checks "global VIRQs only on vCPU 0" before the vCPU exists.
        if !virq_is_per_vcpu(virq) && vcpu != 0 {
            return Err(-xen_abi::errno::EINVAL);
        }
        if vcpu >= self.nr_vcpus() {
            return Err(-xen_abi::errno::ENOENT);
        }
        if self.virq_ports[vcpu as usize][virq as usize] != 0 {
            return Err(-xen_abi::errno::EEXIST);
        }
        let port = self.alloc(PortState::Virq { virq }, vcpu)?;
        self.virq_ports[vcpu as usize][virq as usize] = port;
        Ok(port)
    }

    /// The port VIRQ `virq` of `vcpu` is bound to, if any. Global VIRQs
    /// are looked up on vCPU 0.
    pub fn virq_port(&self, virq: u32, vcpu: u32) -> Option<u32> {
        let vcpu = if virq_is_per_vcpu(virq) { vcpu } else { 0 };
        let port = *self.virq_ports.get(vcpu as usize)?.get(virq as usize)?;
        (port != 0).then_some(port)
    }

    pub fn bind_ipi(&mut self, vcpu: u32) -> EvtchnResult<u32> {
        if vcpu >= self.nr_vcpus() {
            return Err(-xen_abi::errno::ENOENT);
        }
        self.alloc(PortState::Ipi, vcpu)
    }

    pub fn bind_vcpu(&mut self, port: u32, vcpu: u32) -> EvtchnResult<()> {
        if vcpu >= self.nr_vcpus() {
            return Err(-xen_abi::errno::ENOENT);
        }
        let entry = self.get_mut(port)?;
        match entry.state {
            // Only global VIRQs and interdomain/unbound ports can move; IPIs
            // and per-vCPU VIRQs are tied to their vCPU.
            PortState::Virq { virq } if !virq_is_per_vcpu(virq) => {
                entry.notify_vcpu = vcpu;
                Ok(())
            }
            PortState::Unbound { .. } | PortState::Interdomain { .. } => {
                entry.notify_vcpu = vcpu;
                Ok(())
            }
            _ => Err(-xen_abi::errno::EINVAL),
        }
    }

    /// Close `port`. Returns the state it had, so the caller can tear down
    /// the remote end.
    pub fn close(&mut self, port: u32) -> EvtchnResult<PortState> {
        let entry = *self.get(port)?;
        match entry.state {
            PortState::Free | PortState::Reserved => return Err(-xen_abi::errno::EINVAL),
            PortState::Virq { virq } => {
                let vcpu = if virq_is_per_vcpu(virq) {
                    entry.notify_vcpu
                } else {
                    0
                };
                if let Some(slot) = self
                    .virq_ports
                    .get_mut(vcpu as usize)
                    .and_then(|v| v.get_mut(virq as usize))
                {
                    *slot = 0;
                }
            }
            _ => {}
        }
        self.ports[port as usize] = Port {
            state: PortState::Free,
            notify_vcpu: 0,
        };
        Ok(entry.state)
    }

    /// The remote end of a loopback channel went away: our end becomes
    /// unbound again, as Xen does.
    pub fn remote_closed(&mut self, port: u32, remote_dom: u16) {
        if let Some(entry) = self.ports.get_mut(port as usize) {
            if matches!(entry.state, PortState::Interdomain { .. }) {
                entry.state = PortState::Unbound { remote_dom };
            }
        }
    }

    /// Every port in use, with its state (for a save).
    pub fn entries(&self) -> impl Iterator<Item = (u32, Port)> + '_ {
        self.ports
            .iter()
            .enumerate()
            .filter(|(_, p)| !matches!(p.state, PortState::Free | PortState::Reserved))
            .map(|(i, p)| (i as u32, *p))
    }

    /// Put `entry` at `port` of a table being restored: the port must be in
    /// range and free, its vCPU must exist, and a VIRQ must be in range and
    /// not bound twice on its vCPU. Errors are -errno.
    pub fn restore_entry(&mut self, port: u32, entry: Port) -> EvtchnResult<()> {
        if entry.notify_vcpu >= self.nr_vcpus() {
            return Err(-xen_abi::errno::ENOENT);
        }
        if self.get(port)?.state != PortState::Free {
            return Err(-xen_abi::errno::EEXIST);
        }
        match entry.state {
            PortState::Free | PortState::Reserved => return Err(-xen_abi::errno::EINVAL),
            PortState::Virq { virq } => {
                if virq >= NR_VIRQS || (!virq_is_per_vcpu(virq) && entry.notify_vcpu != 0) {
                    return Err(-xen_abi::errno::EINVAL);
                }
                let slot = &mut self.virq_ports[entry.notify_vcpu as usize][virq as usize];
                if *slot != 0 {
                    return Err(-xen_abi::errno::EEXIST);
                }
                *slot = port;
            }
            _ => {}
        }
        self.ports[port as usize] = entry;
        Ok(())
    }

    /// All allocated ports (for reset).
    pub fn allocated(&self) -> impl Iterator<Item = u32> + '_ {
        self.ports
            .iter()
            .enumerate()
            .filter(|(_, p)| !matches!(p.state, PortState::Free | PortState::Reserved))
            .map(|(i, _)| i as u32)
    }

    /// Fill an `evtchn_status` for `port`.
    pub fn status(&self, port: u32, out: &mut Status) -> EvtchnResult<()> {
        let entry = self.get(port)?;
        out.vcpu = entry.notify_vcpu;
        out.u = [0; 2];
        out.status = match entry.state {
            PortState::Free | PortState::Reserved => EVTCHNSTAT_CLOSED,
            PortState::Unbound { remote_dom } => {
                out.u[0] = remote_dom as u32;
                EVTCHNSTAT_UNBOUND
            }
            PortState::Interdomain {
                remote_dom,
                remote_port,
            } => {
                out.u[0] = remote_dom as u32;
                out.u[1] = remote_port;
                EVTCHNSTAT_INTERDOMAIN
            }
            PortState::Virq { virq } => {
                out.u[0] = virq;
                EVTCHNSTAT_VIRQ
            }
            PortState::Ipi => EVTCHNSTAT_IPI,
        };
        Ok(())
    }
}

/// The words of one domain's shared_info that the 2-level ABI uses.
pub struct SharedInfoBits<'a> {
    pub pending: &'a [AtomicU64],
    pub mask: &'a [AtomicU64],
}

/// The event fields of one vcpu_info.
pub struct VcpuEventBits<'a> {
    pub upcall_pending: &'a AtomicU8,
    pub pending_sel: &'a AtomicU64,
}

fn word_bit(port: u32) -> (usize, u64) {
    ((port / 64) as usize, 1u64 << (port % 64))
}

/// Mark `port` pending. Returns true when the vCPU must get an upcall
/// (its `evtchn_upcall_pending` went from 0 to 1).
pub fn set_pending(si: &SharedInfoBits, vi: Option<&VcpuEventBits>, port: u32) -> bool {
    let (word, bit) = word_bit(port);
    let Some(pending) = si.pending.get(word) else {
        return false;
    };
    if pending.fetch_or(bit, Ordering::SeqCst) & bit != 0 {
        return false;
    }
    if si.mask[word].load(Ordering::SeqCst) & bit != 0 {
        return false;
    }
    match vi {
        Some(vi) => mark_vcpu_pending(vi, word),
        None => false,
    }
}

/// Flag selector word `word` in a vcpu_info; true if an upcall is needed.
pub fn mark_vcpu_pending(vi: &VcpuEventBits, word: usize) -> bool {
    let sel = 1u64 << word;
    if vi.pending_sel.fetch_or(sel, Ordering::SeqCst) & sel != 0 {
        return false;
    }
    vi.upcall_pending.swap(1, Ordering::SeqCst) == 0
}

/// Clear the mask of `port`; if it is pending, flag the vCPU again.
/// Returns true when an upcall is needed.
pub fn unmask(si: &SharedInfoBits, vi: Option<&VcpuEventBits>, port: u32) -> bool {
    let (word, bit) = word_bit(port);
    let Some(mask) = si.mask.get(word) else {
        return false;
    };
    mask.fetch_and(!bit, Ordering::SeqCst);
    if si.pending[word].load(Ordering::SeqCst) & bit == 0 {
        return false;
    }
    match vi {
        Some(vi) => mark_vcpu_pending(vi, word),
        None => false,
    }
}

/// Whether `port` is pending.
pub fn is_pending(si: &SharedInfoBits, port: u32) -> bool {
    let (word, bit) = word_bit(port);
    si.pending
        .get(word)
        .is_some_and(|w| w.load(Ordering::SeqCst) & bit != 0)
}

/// Clear the pending and mask bits of a port being closed or reset.
pub fn clear_port(si: &SharedInfoBits, port: u32) {
    let (word, bit) = word_bit(port);
    if let Some(w) = si.pending.get(word) {
        w.fetch_and(!bit, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits() -> (Vec<AtomicU64>, Vec<AtomicU64>, AtomicU8, AtomicU64) {
        (
            (0..64).map(|_| AtomicU64::new(0)).collect(),
            (0..64).map(|_| AtomicU64::new(0)).collect(),
            AtomicU8::new(0),
            AtomicU64::new(0),
        )
    }

    #[test]
    fn send_sets_pending_and_raises_once() {
        let (p, m, up, sel) = bits();
        let si = SharedInfoBits {
            pending: &p,
            mask: &m,
        };
        let vi = VcpuEventBits {
            upcall_pending: &up,
            pending_sel: &sel,
        };
        assert!(set_pending(&si, Some(&vi), 70));
        assert!(!set_pending(&si, Some(&vi), 70));
        assert!(!set_pending(&si, Some(&vi), 71));
        assert!(is_pending(&si, 70));
        assert_eq!(sel.load(Ordering::SeqCst), 1 << 1);
        assert_eq!(up.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn masked_port_raises_on_unmask() {
        let (p, m, up, sel) = bits();
        m[0].store(1 << 5, Ordering::SeqCst);
        let si = SharedInfoBits {
            pending: &p,
            mask: &m,
        };
        let vi = VcpuEventBits {
            upcall_pending: &up,
            pending_sel: &sel,
        };
        assert!(!set_pending(&si, Some(&vi), 5));
        assert_eq!(up.load(Ordering::SeqCst), 0);
        assert!(unmask(&si, Some(&vi), 5));
        assert_eq!(up.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn out_of_range_port_is_ignored() {
        let (p, m, _, _) = bits();
        let si = SharedInfoBits {
            pending: &p,
            mask: &m,
        };
        assert!(!set_pending(&si, None, 4096));
        assert!(!is_pending(&si, 1 << 30));
    }

    #[test]
    fn table_rules() {
        let mut t = PortTable::new(2);
        assert_eq!(t.close(0), Err(-xen_abi::errno::EINVAL));
        let timer = t.bind_virq(VIRQ_TIMER, 1).unwrap();
        assert_eq!(t.bind_virq(VIRQ_TIMER, 1), Err(-xen_abi::errno::EEXIST));
        assert_eq!(t.bind_virq(VIRQ_CONSOLE, 1), Err(-xen_abi::errno::EINVAL));
        assert_eq!(t.bind_virq(99, 0), Err(-xen_abi::errno::EINVAL));
        assert_eq!(t.bind_virq(VIRQ_TIMER, 5), Err(-xen_abi::errno::ENOENT));
        // evtchn_bind_virq: "global VIRQ on vCPU 0 only" comes before the
        // vCPU lookup, so a missing vCPU gets -EINVAL for a global VIRQ.
        let mut one = PortTable::new(1);
        assert_eq!(one.bind_virq(VIRQ_DOM_EXC, 1), Err(-xen_abi::errno::EINVAL));
        assert_eq!(one.bind_virq(VIRQ_TIMER, 1), Err(-xen_abi::errno::ENOENT));
        assert_eq!(one.bind_virq(NR_VIRQS, 1), Err(-xen_abi::errno::EINVAL));
        assert_eq!(t.virq_port(VIRQ_TIMER, 1), Some(timer));
        assert_eq!(t.bind_vcpu(timer, 0), Err(-xen_abi::errno::EINVAL));
        let a = t.alloc_unbound(3).unwrap();
        let b = t.bind_loopback(3, a).unwrap();
        let mut st = Status::default();
        t.status(a, &mut st).unwrap();
        assert_eq!((st.status, st.u[1]), (EVTCHNSTAT_INTERDOMAIN, b));
        t.close(timer).unwrap();
        assert_eq!(t.virq_port(VIRQ_TIMER, 1), None);
        t.status(timer, &mut st).unwrap();
        assert_eq!(st.status, EVTCHNSTAT_CLOSED);
    }
}

//! EVTCHNOP_* (Xen's common/event_channel.c `do_event_channel_op`):
//! allocating, binding, sending on and closing the domain's 2-level event
//! channel ports, including the interdomain link to Dom0.

use tracing::{info, trace};
use xen_abi::errno::*;
use xen_abi::event_channel::{self as ec, *};
use xen_abi::DOMID_SELF;

use crate::domain::{Domain, DomainState};
use crate::evtchn::PortState;
use crate::evtchn_fifo::FifoState;
use crate::guest::GuestAccess;

impl Domain {
    pub(super) fn event_channel_op(&self, g: &GuestAccess, cmd: u64, arg: u64) -> i64 {
        let own = self.cfg.domid;
        match cmd {
            EVTCHNOP_ALLOC_UNBOUND => {
                let mut req = read!(g, AllocUnbound, arg);
                if !self.is_self(req.dom) {
                    // Another domain's table: XSM denies Dom0's, others
                    // do not exist.
                    return if req.dom == 0 { -EPERM } else { -ESRCH };
                }
                let remote = if req.remote_dom == DOMID_SELF {
                    own
                } else {
                    req.remote_dom
                };
                let port = {
                    let mut st = self.lock();
                    match st.ports.alloc_unbound(remote) {
                        Ok(p) => {
                            self.publish_port(&st, p);
                            p
                        }
                        Err(e) => return e,
                    }
                };
                req.port = port;
                write!(g, arg, &req);
                0
            }
            EVTCHNOP_BIND_INTERDOMAIN => {
                let mut req = read!(g, BindInterdomain, arg);
                let port = if req.remote_dom == 0 && own != 0 {
                    match self.bind_to_dom0(req.remote_port) {
                        Ok(p) => p,
                        Err(e) => return e,
                    }
                } else if self.is_self(req.remote_dom) {
                    let mut st = self.lock();
                    match st.ports.bind_loopback(own, req.remote_port) {
                        Ok(p) => {
                            self.publish_port(&st, p);
                            self.publish_port(&st, req.remote_port);
                            p
                        }
                        Err(e) => return e,
                    }
                } else {
                    // No other domain is reachable from here.
                    return -ESRCH;
                };
                req.local_port = port;
                write!(g, arg, &req);
                0
            }
            EVTCHNOP_BIND_VIRQ => {
                let mut req = read!(g, BindVirq, arg);
                let mut st = self.lock();
                let port = match st.ports.bind_virq(req.virq, req.vcpu) {
                    Ok(p) => p,
                    Err(e) => return e,
                };
                self.publish_port(&st, port);
                drop(st);
                req.port = port;
                write!(g, arg, &req);
                0
            }
            EVTCHNOP_BIND_IPI => {
                let mut req = read!(g, BindIpi, arg);
                let mut st = self.lock();
                let port = match st.ports.bind_ipi(req.vcpu) {
                    Ok(p) => p,
                    Err(e) => return e,
                };
                self.publish_port(&st, port);
                drop(st);
                req.port = port;
                write!(g, arg, &req);
                0
            }
            // No physical IRQs in a PVH domU.
            EVTCHNOP_BIND_PIRQ => -EINVAL,
            EVTCHNOP_BIND_VCPU => {
                let req = read!(g, BindVcpu, arg);
                let st = &mut *self.lock();
                match st.ports.bind_vcpu(req.port, req.vcpu) {
                    Ok(()) => {
                        self.publish_port(st, req.port);
                        0
                    }
                    Err(e) => e,
                }
            }
            EVTCHNOP_CLOSE => {
                let req = read!(g, ec::PortArg, arg);
                let mut st = self.lock();
                self.close_port(&mut st, req.port)
            }
            EVTCHNOP_SEND => {
                let req = read!(g, ec::PortArg, arg);
                trace!(port = req.port, "EVTCHNOP_send");
                let st = self.lock();
                let Ok(entry) = st.ports.get(req.port) else {
                    return -EINVAL;
                };
                match entry.state {
                    PortState::Interdomain {
                        remote_dom,
                        remote_port,
                    } => {
                        if remote_dom == own {
                            self.send_local(&st, remote_port);
                        } else {
                            drop(st);
                            self.platform.notify_remote(remote_dom, remote_port);
                        }
                        0
                    }
                    PortState::Ipi => {
                        self.send_local(&st, req.port);
                        0
                    }
                    // Xen silently drops sends on unbound ports.
                    PortState::Unbound { .. } => 0,
                    _ => -EINVAL,
                }
            }
            EVTCHNOP_STATUS => {
                let mut req = read!(g, Status, arg);
                if !self.is_self(req.dom) {
                    return -ESRCH;
                }
                if let Err(e) = self.lock().ports.status(req.port, &mut req) {
                    return e;
                }
                write!(g, arg, &req);
                0
            }
            EVTCHNOP_UNMASK => {
                let req = read!(g, ec::PortArg, arg);
                let st = self.lock();
                if !st.ports.is_valid(req.port) {
                    return -EINVAL;
                }
                self.unmask_port(&st, req.port);
                0
            }
            EVTCHNOP_RESET => {
                let req = read!(g, Reset, arg);
                if !self.is_self(req.dom) {
                    return -ESRCH;
                }
                let mut st = self.lock();
                let ports: Vec<u32> = st.ports.allocated().collect();
                for port in ports {
                    let _ = self.close_port(&mut st, port);
                }
                // A reset domain starts over with the 2-level ABI, as in Xen.
                self.fifo_reset(&mut st);
                0
            }
            EVTCHNOP_INIT_CONTROL => {
                let mut req = read!(g, InitControl, arg);
                if let Err(e) = self.fifo_init_control(&req) {
                    return e;
                }
                req.link_bits = EVTCHN_FIFO_LINK_BITS;
                write!(g, arg, &req);
                0
            }
            EVTCHNOP_EXPAND_ARRAY => {
                let req = read!(g, ExpandArray, arg);
                match self.fifo_expand_array(req.array_gfn) {
                    Ok(()) => 0,
                    Err(e) => e,
                }
            }
            EVTCHNOP_SET_PRIORITY => {
                let req = read!(g, SetPriority, arg);
                let st = self.lock();
                if st.ports.get(req.port).is_err() {
                    return -EINVAL;
                }
                match self.fifo_lock().as_mut() {
                    // The 2-level ABI has no priorities.
                    None => -ENOSYS,
                    Some(fifo) => match fifo.set_priority(req.port, req.priority) {
                        Ok(()) => 0,
                        Err(e) => e,
                    },
                }
            }
            _ => -ENOSYS,
        }
    }

    fn close_port(&self, st: &mut DomainState, port: u32) -> i64 {
        let state = match st.ports.close(port) {
            Ok(s) => s,
            Err(e) => return e,
        };
        self.clear_port(st, port);
        self.publish_port(st, port);
        if let PortState::Interdomain {
            remote_dom,
            remote_port,
        } = state
        {
            if remote_dom == self.cfg.domid {
                st.ports.remote_closed(remote_port, remote_dom);
                self.publish_port(st, remote_port);
            } else {
                self.platform.remote_port_closed(remote_dom, remote_port);
            }
        }
        0
    }

    /// GPA of guest RAM frame `gfn`, if it is one the domain holds (an
    /// event array or control block page must be ordinary RAM).
    fn fifo_ram_page(&self, st: &DomainState, gfn: u64) -> Option<u64> {
        (gfn < self.cfg.max_ram_gfn() && self.cfg.is_ram(gfn) && !st.ballooned.contains(&gfn))
            .then_some(gfn << 12)
    }

    /// EVTCHNOP_init_control: register `req.vcpu`'s control block; the
    /// first one switches the domain to the FIFO ABI.
    fn fifo_init_control(&self, req: &InitControl) -> Result<(), i64> {
        if req.vcpu >= self.cfg.nr_vcpus {
            return Err(-ENOENT);
        }
        // The block must lie in one page and be 8-byte aligned.
        if req.offset > 4096 - EVTCHN_FIFO_CONTROL_BLOCK_SIZE || !req.offset.is_multiple_of(8) {
            return Err(-EINVAL);
        }
        let mut st = self.lock();
        let page = self.fifo_ram_page(&st, req.control_gfn).ok_or(-EINVAL)?;
        let control = page + req.offset as u64;
        let mut fifo = self.fifo_lock();
        if let Some(fifo) = fifo.as_mut() {
            return fifo.set_control_block(req.vcpu, control);
        }
        // The switch: Dom0 backends raising 2-level bits must hold off
        // (their retry sees the layout change) until they learn the ABI.
        self.platform.begin_event_layout_change();
        // FIFO addresses 131072 ports; max_evtchn_port may allow fewer.
        st.ports.set_abi_ports(EVTCHN_FIFO_NR_CHANNELS);
        let nr_ports = st.ports.limit().max(st.ports.len());
        let mut state = FifoState::new(self.cfg.nr_vcpus, nr_ports);
        state.set_control_block(req.vcpu, control)?;
        // Ports pending under the 2-level ABI are delivered once their
        // event array page exists.
        let allocated: Vec<u32> = st.ports.allocated().collect();
        for port in allocated {
            if self.port_is_pending_2l(&st, port) {
                state.park(port);
            }
        }
        *fifo = Some(state);
        drop(fifo);
        info!(domid = self.cfg.domid, "switched to FIFO event channels");
        self.platform.event_abi_changed(true);
        Ok(())
    }

    /// EVTCHNOP_expand_array: add an event array page and deliver the
    /// events raised for its ports while it was missing.
    fn fifo_expand_array(&self, gfn: u64) -> Result<(), i64> {
        let st = self.lock();
        let mut fifo = self.fifo_lock();
        let Some(state) = fifo.as_mut() else {
            return Err(-EOPNOTSUPP);
        };
        if state.array_pages() as u32 >= EVTCHN_FIFO_MAX_ARRAY_PAGES {
            return Err(-ENOSPC);
        }
        let page = self.fifo_ram_page(&st, gfn).ok_or(-EINVAL)?;
        let ports = state.add_array_page(page >> 12)?;
        let parked: Vec<u32> = ports.filter(|&p| state.take_parked(p)).collect();
        drop(fifo);
        for port in parked {
            if st
                .ports
                .get(port)
                .is_ok_and(|p| !matches!(p.state, PortState::Free | PortState::Reserved))
            {
                self.send_local(&st, port);
            }
        }
        Ok(())
    }

    /// Back to the 2-level ABI (EVTCHNOP_reset).
    fn fifo_reset(&self, st: &mut DomainState) {
        let was_fifo = self.fifo_lock().take().is_some();
        st.ports.set_abi_ports(st.shared_info_layout.nr_2l_ports());
        if was_fifo {
            self.platform.begin_event_layout_change();
            self.platform.event_abi_changed(false);
        }
    }

    /// EVTCHNOP_bind_interdomain to Dom0: connect a new port to a Dom0
    /// port that Dom0 allocated unbound for this domain.
    fn bind_to_dom0(&self, dom0_port: u32) -> Result<u32, i64> {
        let mut st = self.lock();
        let local = st.ports.bind_remote(0, dom0_port)?;
        if let Err(e) = self.platform.bind_dom0_unbound(dom0_port, local) {
            let _ = st.ports.close(local);
            return Err(e);
        }
        self.publish_port(&st, local);
        Ok(local)
    }
}

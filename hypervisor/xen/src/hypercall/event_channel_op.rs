//! EVTCHNOP_* (Xen's common/event_channel.c `do_event_channel_op`):
//! allocating, binding, sending on and closing the domain's 2-level event
//! channel ports, including the interdomain link to Dom0.

use tracing::trace;
use xen_abi::errno::*;
use xen_abi::event_channel::{self as ec, *};
use xen_abi::DOMID_SELF;

use crate::domain::{Domain, DomainState};
use crate::evtchn::PortState;
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
                if req.port >= NR_EVENT_CHANNELS_2L {
                    return -EINVAL;
                }
                let st = self.lock();
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
                0
            }
            // FIFO event channels are not offered: guests fall back to 2L.
            EVTCHNOP_INIT_CONTROL | EVTCHNOP_EXPAND_ARRAY | EVTCHNOP_SET_PRIORITY => -ENOSYS,
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

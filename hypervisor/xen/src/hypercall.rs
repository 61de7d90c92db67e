//! Hypercall dispatch and every sub-operation kxen serves.
//!
//! Semantics follow Xen 4.17 for an unprivileged PVH/HVM domU. Each handler
//! reads its argument struct from guest memory, validates every field, and
//! answers with Xen's error code. Comments name the Xen rule where a code
//! is not obvious.

use std::sync::atomic::Ordering;

use tracing::trace;
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryBackend};
use xen_abi::errno::*;
use xen_abi::event_channel::{self as ec, *};
use xen_abi::grant_table::*;
use xen_abi::hvm::*;
use xen_abi::hypercall::*;
use xen_abi::memory::*;
use xen_abi::sched::*;
use xen_abi::shared_info::{
    VcpuInfo, VCPU_INFO_PENDING_SEL, VCPU_INFO_SIZE, VCPU_INFO_UPCALL_PENDING,
};
use xen_abi::vcpu::*;
use xen_abi::version::*;
use xen_abi::{DOMID_SELF, PAGE_SIZE};

use crate::domain::{Domain, DomainState, OverlayFrame};
use crate::evtchn::PortState;
use crate::grant::MAX_GRANT_FRAMES;
use crate::guest::{GuestAccess, VcpuMmu};

/// One hypercall as the vCPU made it.
#[derive(Clone, Copy, Debug)]
pub struct Call {
    pub nr: u64,
    pub args: [u64; 5],
}

/// Highest extent order a domU may use in memory reservations (2 MiB).
const MAX_EXTENT_ORDER: u32 = 9;
/// Bit position of the continuation start in a memory_op command.
const MEMOP_EXTENT_SHIFT: u32 = 6;
/// Guest frame numbers above this are not valid guest-physical addresses.
const MAX_GFN: u64 = 1 << (46 - 12);
/// Largest console_io write served in one call.
const CONSOLE_IO_MAX: u64 = 64 * 1024;

const XEN_EXTRAVERSION: &[u8] = b".0-kxen";
const XEN_CAPABILITIES: &[u8] = b"hvm-3.0-x86_32 hvm-3.0-x86_32p hvm-3.0-x86_64";
const XEN_CHANGESET: &[u8] = concat!("kxen ", env!("CARGO_PKG_VERSION")).as_bytes();
/// What Xen writes in place of information XSM withholds, NUL included.
const XEN_DENY: &[u8; 9] = b"<denied>\0";
/// HYPERVISOR_VIRT_START for 64-bit guests.
const HYPERVISOR_VIRT_START: u64 = 0xffff_8000_0000_0000;

/// What a guest may do with an HVM parameter of its own domain
/// (Xen 4.17's hvm_allow_set_param / hvm_allow_get_param on x86).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ParamAccess {
    /// Readable and writable by the guest.
    GuestWritable,
    /// Readable by the guest, set by the toolstack only.
    GuestReadable,
    /// Neither: -EPERM.
    Hidden,
    /// Gone from the interface: -EINVAL both ways.
    Deprecated,
}

fn param_access(index: u32) -> ParamAccess {
    const VM86_TSS: u32 = 15;
    const ACPI_IOPORTS_LOCATION: u32 = 19;
    const VM_GENERATION_ID_ADDR: u32 = 34;
    const ALTP2M: u32 = 35;
    const X87_FIP_WIDTH: u32 = 36;
    const VM86_TSS_SIZED: u32 = 37;
    // PAE_ENABLED, DM_DOMAIN and the MEMORY_EVENT_* family.
    const DEPRECATED: [u32; 8] = [4, 13, 20, 21, 22, 23, 25, 30];
    match index {
        HVM_PARAM_CALLBACK_IRQ
        | VM86_TSS
        | VM86_TSS_SIZED
        | ACPI_IOPORTS_LOCATION
        | VM_GENERATION_ID_ADDR
        | HVM_PARAM_STORE_EVTCHN
        | HVM_PARAM_CONSOLE_EVTCHN
        | X87_FIP_WIDTH => ParamAccess::GuestWritable,
        HVM_PARAM_STORE_PFN | HVM_PARAM_CONSOLE_PFN | ALTP2M => ParamAccess::GuestReadable,
        i if DEPRECATED.contains(&i) => ParamAccess::Deprecated,
        _ => ParamAccess::Hidden,
    }
}

/// Copy `s` into a NUL-padded fixed-size buffer.
fn fixed<const N: usize>(s: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let n = s.len().min(N - 1);
    out[..n].copy_from_slice(&s[..n]);
    out
}

macro_rules! read {
    ($g:expr, $ty:ty, $gva:expr) => {
        match $g.read_obj::<$ty>($gva) {
            Ok(v) => v,
            Err(_) => return -EFAULT,
        }
    };
}

macro_rules! write {
    ($g:expr, $gva:expr, $value:expr) => {
        if $g.write_obj($gva, $value).is_err() {
            return -EFAULT;
        }
    };
}

impl Domain {
    /// Serve hypercall `call` made by `vcpu`, whose page tables `mmu` walks.
    /// Returns the value for RAX.
    pub fn hypercall(&self, vcpu: u32, mmu: &dyn VcpuMmu, call: Call) -> i64 {
        self.hypercalls.fetch_add(1, Ordering::Relaxed);
        let mem = self.mem.memory();
        let g = GuestAccess { mem: &mem, mmu };
        let [a1, a2, a3, _, _] = call.args;
        let ret = match call.nr {
            XEN_VERSION => self.xen_version(&g, a1, a2),
            CONSOLE_IO => self.console_io(&g, a1, a2, a3),
            SCHED_OP => self.sched_op(vcpu, &g, a1, a2),
            MEMORY_OP => self.memory_op(&g, a1, a2),
            HVM_OP => self.hvm_op(&g, a1, a2),
            VCPU_OP => self.vcpu_op(vcpu, &g, a1, a2, a3),
            SET_TIMER_OP => self.set_timer_op(vcpu, a1),
            EVENT_CHANNEL_OP => self.event_channel_op(&g, a1, a2),
            GRANT_TABLE_OP => self.grant_table_op(&g, a1, a2, a3),
            VM_ASSIST => self.vm_assist(a1, a2),
            // A PVH domU has no physical IRQs: Xen's hvm_physdev_op
            // answers -ENOSYS to every command without pirq support.
            PHYSDEV_OP => -ENOSYS,
            // Control-domain operations: XSM denies them to a domU.
            SYSCTL | DOMCTL => -EPERM,
            _ => -ENOSYS,
        };
        trace!(vcpu, nr = call.nr, ?call.args, ret, "hypercall");
        ret
    }

    fn is_self(&self, domid: u16) -> bool {
        domid == DOMID_SELF || domid == self.cfg.domid
    }

    // ---- xen_version ---------------------------------------------------------

    fn xen_version(&self, g: &GuestAccess, cmd: u64, arg: u64) -> i64 {
        match cmd {
            XENVER_VERSION => ((self.cfg.xen_major << 16) | self.cfg.xen_minor) as i64,
            XENVER_EXTRAVERSION => {
                write!(g, arg, &fixed::<EXTRAVERSION_LEN>(XEN_EXTRAVERSION));
                0
            }
            XENVER_COMPILE_INFO => {
                let info = CompileInfo {
                    compiler: fixed(b"rustc"),
                    compile_by: fixed(b"kxen"),
                    compile_domain: fixed(b"kxen.invalid"),
                    compile_date: fixed(concat!("kxen-", env!("CARGO_PKG_VERSION")).as_bytes()),
                };
                write!(g, arg, &info);
                0
            }
            XENVER_CAPABILITIES => {
                write!(g, arg, &fixed::<CAPABILITIES_LEN>(XEN_CAPABILITIES));
                0
            }
            XENVER_CHANGESET => {
                write!(g, arg, &fixed::<CHANGESET_LEN>(XEN_CHANGESET));
                0
            }
            XENVER_PLATFORM_PARAMETERS => {
                write!(
                    g,
                    arg,
                    &PlatformParameters {
                        virt_start: HYPERVISOR_VIRT_START
                    }
                );
                0
            }
            XENVER_GET_FEATURES => {
                let mut fi = read!(g, FeatureInfo, arg);
                if fi.submap_idx != 0 {
                    // Only submap 0 exists (XENFEAT_NR_SUBMAPS == 1).
                    return -EINVAL;
                }
                fi.submap = (1 << XENFEAT_AUTO_TRANSLATED_PHYSMAP)
                    | (1 << XENFEAT_HVM_CALLBACK_VECTOR)
                    | (1 << XENFEAT_HVM_SAFE_PVCLOCK)
                    | (1 << XENFEAT_LINUX_RSDP_UNRESTRICTED);
                write!(g, arg, &fi);
                0
            }
            // The page size is the return value; a buffer is a caller bug.
            XENVER_PAGESIZE if arg != 0 => -EINVAL,
            XENVER_PAGESIZE => PAGE_SIZE as i64,
            XENVER_GUEST_HANDLE => {
                write!(g, arg, &self.cfg.handle);
                0
            }
            // XSM_PRIV: only the control domain reads Xen's command line
            // and build id. A domU asking for the command line is still
            // answered 0, with the deny string in place of the text (Xen
            // 4.17 copies the string and its NUL, nothing more); the build
            // id is refused outright.
            XENVER_COMMANDLINE => {
                write!(g, arg, XEN_DENY);
                0
            }
            XENVER_BUILD_ID => -EPERM,
            _ => -ENOSYS,
        }
    }

    // ---- console_io ----------------------------------------------------------

    /// xsm_console_io (xsm/dummy.h) refuses a domain that is neither the
    /// console nor the control domain, -EPERM before the command is looked
    /// at, with one exception: a Xen built with CONFIG_VERBOSE_DEBUG (the
    /// default of debug builds) lets every domain write. kxen serves a domU
    /// as that build does, because the tree relies on the write: the PV
    /// test guest prints through it before it knows its console ring and
    /// after EVTCHNOP_reset has closed the ring's port, and the 32-bit test
    /// guests (tests/guest32) report only through it. Reading and every
    /// other command stay refused, as in every Xen build.
    fn console_io(&self, g: &GuestAccess, cmd: u64, count: u64, buf: u64) -> i64 {
        if cmd != CONSOLEIO_WRITE {
            return -EPERM;
        }
        let count = count & 0xffff_ffff;
        if count > CONSOLE_IO_MAX {
            return -E2BIG;
        }
        let mut data = vec![0u8; count as usize];
        if g.read(buf, &mut data).is_err() {
            return -EFAULT;
        }
        self.platform.console_write(&data);
        0
    }

    // ---- sched_op ----------------------------------------------------------------

    fn sched_op(&self, vcpu: u32, g: &GuestAccess, cmd: u64, arg: u64) -> i64 {
        match cmd {
            SCHEDOP_YIELD => {
                std::thread::yield_now();
                0
            }
            SCHEDOP_BLOCK => {
                let mut st = self.lock();
                self.enable_event_delivery(&st, vcpu);
                self.set_runstate(&mut st, vcpu, RUNSTATE_BLOCKED);
                // Dom0 backends raise events without us: they read this
                // flag after setting pending bits, we set it before the
                // first check (a Dekker-style handshake).
                self.platform.set_blocked(vcpu, true);
                let mut st = self.wait_until(st, None, |d, s| d.upcall_pending(s, vcpu));
                self.platform.set_blocked(vcpu, false);
                self.set_runstate(&mut st, vcpu, RUNSTATE_RUNNING);
                0
            }
            SCHEDOP_SHUTDOWN => {
                let sd = read!(g, Shutdown, arg);
                if sd.reason > SHUTDOWN_MAX {
                    return -EINVAL;
                }
                self.request_shutdown(sd.reason);
                0
            }
            SCHEDOP_SHUTDOWN_CODE => {
                let sd = read!(g, Shutdown, arg);
                if sd.reason > SHUTDOWN_MAX {
                    return -EINVAL;
                }
                self.lock().shutdown_code = Some(sd.reason);
                0
            }
            SCHEDOP_POLL => self.poll(vcpu, g, arg),
            // Shutting down other domains needs XSM_DM_PRIV.
            SCHEDOP_REMOTE_SHUTDOWN => -EPERM,
            _ => -ENOSYS,
        }
    }

    fn poll(&self, vcpu: u32, g: &GuestAccess, arg: u64) -> i64 {
        let req = read!(g, Poll, arg);
        if req.nr_ports > POLL_MAX_PORTS {
            return -EINVAL;
        }
        let mut ports = Vec::with_capacity(req.nr_ports as usize);
        for i in 0..req.nr_ports as u64 {
            let port: u32 = match g.read_elem(req.ports, i) {
                Ok(p) => p,
                Err(_) => return -EFAULT,
            };
            if port >= NR_EVENT_CHANNELS_2L {
                return -EINVAL;
            }
            ports.push(port);
        }
        let mut st = self.lock();
        if ports.iter().any(|&p| self.port_is_pending(&st, p)) {
            return 0;
        }
        let deadline = (req.timeout != 0).then_some(req.timeout);
        self.set_runstate(&mut st, vcpu, RUNSTATE_BLOCKED);
        self.platform.set_blocked(vcpu, true);
        let mut st = self.wait_until(st, deadline, |d, s| {
            ports.iter().any(|&p| d.port_is_pending(s, p))
        });
        self.platform.set_blocked(vcpu, false);
        self.set_runstate(&mut st, vcpu, RUNSTATE_RUNNING);
        0
    }

    // ---- memory_op ---------------------------------------------------------------

    fn memory_op(&self, g: &GuestAccess, cmd: u64, arg: u64) -> i64 {
        let start_extent = cmd >> MEMOP_EXTENT_SHIFT;
        match cmd & MEMOP_CMD_MASK {
            XENMEM_DECREASE_RESERVATION => self.decrease_reservation(g, arg, start_extent),
            XENMEM_POPULATE_PHYSMAP | XENMEM_INCREASE_RESERVATION => {
                self.populate_physmap(g, arg, start_extent)
            }
            XENMEM_MAXIMUM_RAM_PAGE => self.cfg.max_ram_gfn() as i64,
            XENMEM_CURRENT_RESERVATION | XENMEM_MAXIMUM_RESERVATION | XENMEM_MAXIMUM_GPFN => {
                let domid = read!(g, u16, arg);
                if !self.is_self(domid) {
                    return -ESRCH;
                }
                match cmd & MEMOP_CMD_MASK {
                    XENMEM_CURRENT_RESERVATION => {
                        (self.cfg.ram_pages() - self.lock().ballooned.len() as u64) as i64
                    }
                    XENMEM_MAXIMUM_RESERVATION => self.cfg.max_pages as i64,
                    _ => self.cfg.max_ram_gfn().saturating_sub(1) as i64,
                }
            }
            XENMEM_ADD_TO_PHYSMAP => {
                let xatp = read!(g, AddToPhysmap, arg);
                if !self.is_self(xatp.domid) {
                    return -ESRCH;
                }
                let mut st = self.lock();
                self.add_to_physmap(&mut st, xatp.space, xatp.idx, xatp.gpfn) as i64
            }
            XENMEM_ADD_TO_PHYSMAP_BATCH => self.add_to_physmap_batch(g, arg),
            XENMEM_MEMORY_MAP => {
                let mut map = read!(g, MemoryMap, arg);
                let n = (map.nr_entries as usize).min(self.cfg.memmap.len());
                for (i, entry) in self.cfg.memmap[..n].iter().enumerate() {
                    if g.write_elem(map.buffer, i as u64, entry).is_err() {
                        return -EFAULT;
                    }
                }
                map.nr_entries = n as u32;
                write!(g, arg, &map);
                0
            }
            // hvm_memory_op filters these out for HVM/PVH guests.
            XENMEM_MACHINE_MEMORY_MAP | XENMEM_MACHPHYS_MAPPING => -ENOSYS,
            XENMEM_REMOVE_FROM_PHYSMAP => {
                let domid = read!(g, u16, arg);
                let gpfn = read!(g, u64, arg + 8);
                if !self.is_self(domid) {
                    return -ESRCH;
                }
                self.remove_from_physmap(gpfn)
            }
            _ => -ENOSYS,
        }
    }

    /// Walk the extents of a `xen_memory_reservation` from `start`, giving
    /// `apply` each extent as a range of RAM GFNs. Like Xen, returns the
    /// number of extents done: a bad struct, list entry or extent stops
    /// the walk there.
    fn for_each_extent(
        &self,
        g: &GuestAccess,
        arg: u64,
        start: u64,
        mut apply: impl FnMut(&mut DomainState, std::ops::Range<u64>) -> bool,
    ) -> i64 {
        let Ok(res) = g.read_obj::<MemoryReservation>(arg) else {
            return start as i64;
        };
        if !self.is_self(res.domid) || res.extent_order > MAX_EXTENT_ORDER {
            return start as i64;
        }
        let pages = 1u64 << res.extent_order;
        let mut st = self.lock();
        for i in start..res.nr_extents {
            let Ok(gfn) = g.read_elem::<u64>(res.extent_start, i) else {
                return i as i64;
            };
            // The guest picks gfn: keep the range in bounds and all RAM.
            let Some(end) = gfn.checked_add(pages).filter(|&end| end <= MAX_GFN) else {
                return i as i64;
            };
            let extent = gfn..end;
            if gfn % pages != 0 || !extent.clone().all(|p| self.cfg.is_ram(p)) {
                return i as i64;
            }
            if !apply(&mut st, extent) {
                return i as i64;
            }
        }
        res.nr_extents as i64
    }

    /// Balloon out the extents listed by the guest.
    fn decrease_reservation(&self, g: &GuestAccess, arg: u64, start: u64) -> i64 {
        self.for_each_extent(g, arg, start, |st, extent| {
            if extent.clone().any(|p| st.ballooned.contains(&p)) {
                return false;
            }
            for p in extent {
                self.platform.discard_ram(p);
                st.ballooned.insert(p);
            }
            true
        })
    }

    /// Give ballooned RAM back, up to the domain's maximum.
    fn populate_physmap(&self, g: &GuestAccess, arg: u64, start: u64) -> i64 {
        self.for_each_extent(g, arg, start, |st, extent| {
            let populated = self.cfg.ram_pages() - st.ballooned.len() as u64;
            let new_pages = extent.clone().filter(|p| st.ballooned.contains(p)).count() as u64;
            if populated + new_pages > self.cfg.max_pages {
                return false;
            }
            for p in extent {
                st.ballooned.remove(&p);
            }
            true
        })
    }

    fn remove_from_physmap(&self, gpfn: u64) -> i64 {
        let mut st = self.lock();
        if st.shared_info_overlay && st.shared_info_gfn == gpfn {
            return -EBUSY;
        }
        if let Some(slot) = st.grants.frames.iter().position(|f| *f == Some(gpfn)) {
            if !self.cfg.is_ram(gpfn) {
                self.platform.unmap_overlay(gpfn);
            }
            st.grants.frames[slot] = None;
            self.publish_event_layout(&st);
            return 0;
        }
        if self.cfg.is_ram(gpfn) && !st.ballooned.contains(&gpfn) {
            self.platform.discard_ram(gpfn);
            st.ballooned.insert(gpfn);
            return 0;
        }
        -EINVAL
    }

    fn add_to_physmap_batch(&self, g: &GuestAccess, arg: u64) -> i64 {
        let batch = read!(g, AddToPhysmapBatch, arg);
        if !self.is_self(batch.domid) {
            return -ESRCH;
        }
        for i in 0..batch.size as u64 {
            let idx: u64 = match g.read_elem(batch.idxs, i) {
                Ok(v) => v,
                Err(_) => return -EFAULT,
            };
            let gpfn: u64 = match g.read_elem(batch.gpfns, i) {
                Ok(v) => v,
                Err(_) => return -EFAULT,
            };
            let rc = {
                let mut st = self.lock();
                self.add_to_physmap(&mut st, batch.space as u32, idx, gpfn)
            };
            if g.write_elem(batch.errs, i, &rc).is_err() {
                return -EFAULT;
            }
        }
        0
    }

    /// Place a Xen-owned frame at `gpfn`. Returns 0 or -errno.
    pub fn add_to_physmap(&self, st: &mut DomainState, space: u32, idx: u64, gpfn: u64) -> i32 {
        if gpfn >= MAX_GFN {
            return -EINVAL as i32;
        }
        match space {
            XENMAPSPACE_SHARED_INFO => {
                if idx != 0 {
                    return -EINVAL as i32;
                }
                self.place_shared_info(st, gpfn)
            }
            XENMAPSPACE_GRANT_TABLE => {
                // v1 tables have no status frames.
                if idx & XENMAPIDX_GRANT_TABLE_STATUS != 0 || idx >= MAX_GRANT_FRAMES as u64 {
                    return -EINVAL as i32;
                }
                self.place_grant_frame(st, idx as u32, gpfn)
            }
            // Moving guest RAM around and foreign mappings are not offered.
            _ => -ENOSYS as i32,
        }
    }

    /// Whether `gfn` already holds another Xen-owned frame.
    fn gfn_in_use(&self, st: &DomainState, gfn: u64, except: OverlayFrame) -> bool {
        if except != OverlayFrame::SharedInfo && st.shared_info_gfn == gfn {
            return true;
        }
        st.grants
            .frames
            .iter()
            .enumerate()
            .any(|(i, f)| *f == Some(gfn) && except != OverlayFrame::GrantTable(i as u32))
    }

    /// Move a frame's contents from `old` (if any) to `new`, mapping `new`
    /// as an overlay when it is not RAM and unmapping an old overlay.
    fn move_frame(&self, frame: OverlayFrame, old: Option<u64>, new: u64) -> i32 {
        let mut contents = vec![0u8; PAGE_SIZE];
        if let Some(old) = old {
            let _ = self
                .mem
                .memory()
                .read_slice(&mut contents, GuestAddress(old << 12));
        }
        if !self.cfg.is_ram(new) {
            if let Err(e) = self.platform.map_overlay(new, frame) {
                return e as i32;
            }
        }
        if self
            .mem
            .memory()
            .write_slice(&contents, GuestAddress(new << 12))
            .is_err()
        {
            return -EFAULT as i32;
        }
        if let Some(old) = old {
            if !self.cfg.is_ram(old) && old != new {
                self.platform.unmap_overlay(old);
            }
        }
        0
    }

    fn place_shared_info(&self, st: &mut DomainState, gpfn: u64) -> i32 {
        if st.shared_info_gfn == gpfn {
            return 0;
        }
        if self.gfn_in_use(st, gpfn, OverlayFrame::SharedInfo) {
            return -EBUSY as i32;
        }
        // The initial location is a special page, never an overlay to drop.
        let old = st.shared_info_gfn;
        self.platform.begin_event_layout_change();
        let rc = self.move_frame(OverlayFrame::SharedInfo, Some(old), gpfn);
        if rc != 0 {
            self.publish_event_layout(st);
            return rc;
        }
        st.shared_info_gfn = gpfn;
        self.publish_event_layout(st);
        st.shared_info_overlay = !self.cfg.is_ram(gpfn);
        self.write_wallclock(st);
        for vcpu in 0..self.cfg.nr_vcpus {
            self.update_vcpu_time(st, vcpu);
            self.recheck_upcall(st, vcpu);
        }
        0
    }

    fn place_grant_frame(&self, st: &mut DomainState, idx: u32, gpfn: u64) -> i32 {
        let old = st.grants.frames[idx as usize];
        if old == Some(gpfn) {
            return 0;
        }
        if self.gfn_in_use(st, gpfn, OverlayFrame::GrantTable(idx)) {
            return -EBUSY as i32;
        }
        let rc = self.move_frame(OverlayFrame::GrantTable(idx), old, gpfn);
        if rc == 0 {
            st.grants.frames[idx as usize] = Some(gpfn);
            self.publish_event_layout(st);
        }
        rc
    }

    // ---- hvm_op ----------------------------------------------------------------------

    fn hvm_op(&self, g: &GuestAccess, cmd: u64, arg: u64) -> i64 {
        match cmd {
            HVMOP_SET_PARAM | HVMOP_GET_PARAM => {
                let mut p = read!(g, HvmParam, arg);
                if !self.is_self(p.domid) {
                    return -ESRCH;
                }
                if p.index >= HVM_NR_PARAMS {
                    return -EINVAL;
                }
                let access = param_access(p.index);
                if access == ParamAccess::Deprecated {
                    return -EINVAL;
                }
                let mut st = self.lock();
                if cmd == HVMOP_GET_PARAM {
                    if access == ParamAccess::Hidden {
                        return -EPERM;
                    }
                    p.value = st.params[p.index as usize];
                    drop(st);
                    write!(g, arg, &p);
                    return 0;
                }
                if access != ParamAccess::GuestWritable {
                    return -EPERM;
                }
                st.params[p.index as usize] = p.value;
                if p.index == HVM_PARAM_CALLBACK_IRQ {
                    self.publish_upcall_vectors(&st);
                    for vcpu in 0..self.cfg.nr_vcpus {
                        self.recheck_upcall(&st, vcpu);
                    }
                }
                0
            }
            HVMOP_SET_EVTCHN_UPCALL_VECTOR => {
                let req = read!(g, EvtchnUpcallVector, arg);
                if req.vector < MIN_UPCALL_VECTOR {
                    return -EINVAL;
                }
                let mut st = self.lock();
                let Some(v) = st.vcpus.get_mut(req.vcpu as usize) else {
                    return -ENOENT;
                };
                v.upcall_vector = Some(req.vector);
                self.platform
                    .upcall_vector_changed(req.vcpu, Some(req.vector));
                self.recheck_upcall(&st, req.vcpu);
                0
            }
            HVMOP_GET_TIME => {
                write!(g, arg, &self.clock.now_ns());
                0
            }
            // kxen keeps no shadow page tables to drop.
            HVMOP_PAGETABLE_DYING => -ENOSYS,
            _ => -ENOSYS,
        }
    }

    // ---- vcpu_op -----------------------------------------------------------------------

    fn vcpu_op(&self, current: u32, g: &GuestAccess, cmd: u64, vcpuid: u64, arg: u64) -> i64 {
        if vcpuid >= self.cfg.nr_vcpus as u64 {
            return -ENOENT;
        }
        let target = vcpuid as u32;
        match cmd {
            VCPUOP_REGISTER_VCPU_INFO => {
                let req = read!(g, RegisterVcpuInfo, arg);
                self.register_vcpu_info(current, target, req)
            }
            VCPUOP_IS_UP => {
                let st = self.lock();
                let v = &st.vcpus[target as usize];
                (v.initialised && v.online) as i64
            }
            VCPUOP_UP => {
                let mut st = self.lock();
                let v = &mut st.vcpus[target as usize];
                // Xen: a vCPU must have been initialised before it can run.
                if !v.initialised {
                    return -EINVAL;
                }
                if !v.online {
                    self.set_online(&mut st, target, true);
                    self.set_runstate(&mut st, target, RUNSTATE_RUNNING);
                }
                0
            }
            VCPUOP_DOWN => {
                let mut st = self.lock();
                let others_up = st
                    .vcpus
                    .iter()
                    .enumerate()
                    .any(|(i, v)| i as u32 != target && v.online && v.initialised);
                if !others_up {
                    // Xen: taking the last vCPU down powers the domain off.
                    drop(st);
                    self.request_shutdown(SHUTDOWN_POWEROFF);
                    return 0;
                }
                if st.vcpus[target as usize].online {
                    self.set_online(&mut st, target, false);
                    self.set_runstate(&mut st, target, RUNSTATE_OFFLINE);
                    if target != current {
                        self.platform.kick_vcpu(target);
                    }
                }
                0
            }
            VCPUOP_SET_PERIODIC_TIMER => {
                let req = read!(g, SetPeriodicTimer, arg);
                if req.period_ns < MIN_PERIODIC_PERIOD_NS || req.period_ns > u32::MAX as u64 * 1000
                {
                    return -EINVAL;
                }
                let mut st = self.lock();
                let now = self.clock.now_ns();
                st.vcpus[target as usize].periodic = Some((now + req.period_ns, req.period_ns));
                self.timers_changed(&mut st);
                0
            }
            VCPUOP_STOP_PERIODIC_TIMER => {
                let mut st = self.lock();
                st.vcpus[target as usize].periodic = None;
                self.timers_changed(&mut st);
                0
            }
            VCPUOP_SET_SINGLESHOT_TIMER => {
                // Xen: only a vCPU's own singleshot timer can be set.
                if target != current {
                    return -EINVAL;
                }
                let req = read!(g, SetSingleshotTimer, arg);
                if req.flags & VCPU_SSHOTTMR_FUTURE != 0 && req.timeout_abs_ns < self.clock.now_ns()
                {
                    return -ETIME;
                }
                let mut st = self.lock();
                st.vcpus[target as usize].singleshot_deadline = Some(req.timeout_abs_ns);
                self.timers_changed(&mut st);
                0
            }
            VCPUOP_STOP_SINGLESHOT_TIMER => {
                if target != current {
                    return -EINVAL;
                }
                let mut st = self.lock();
                st.vcpus[target as usize].singleshot_deadline = None;
                self.timers_changed(&mut st);
                0
            }
            VCPUOP_REGISTER_RUNSTATE_MEMORY_AREA => {
                let area = read!(g, RegisterMemoryArea, arg);
                let gpa = match self.area_gpa(g, area.addr, core::mem::size_of::<RunstateInfo>()) {
                    Ok(gpa) => gpa,
                    Err(e) => return e,
                };
                let mut st = self.lock();
                st.vcpus[target as usize].runstate_gpa = gpa;
                if let Some(rs) = self.current_runstate(&st, target) {
                    st.vcpus[target as usize].runstate = rs;
                }
                self.publish_runstate(&st, target);
                0
            }
            VCPUOP_GET_RUNSTATE_INFO => {
                let rs = {
                    let st = self.lock();
                    self.current_runstate(&st, target).unwrap_or_default()
                };
                write!(g, arg, &rs);
                0
            }
            VCPUOP_REGISTER_VCPU_TIME_MEMORY_AREA => {
                let area = read!(g, RegisterMemoryArea, arg);
                let gpa = match self.area_gpa(
                    g,
                    area.addr,
                    core::mem::size_of::<xen_abi::shared_info::VcpuTimeInfo>(),
                ) {
                    Ok(gpa) => gpa,
                    Err(e) => return e,
                };
                let mut st = self.lock();
                st.vcpus[target as usize].time_area_gpa = gpa;
                self.update_vcpu_time(&st, target);
                0
            }
            // Only the hardware domain may learn physical CPU ids.
            VCPUOP_GET_PHYSID => -EINVAL,
            _ => -ENOSYS,
        }
    }

    /// Translate a registered area (runstate, time) once. Address 0
    /// unregisters. The area must not cross a page.
    fn area_gpa(&self, g: &GuestAccess, gva: u64, len: usize) -> Result<Option<u64>, i64> {
        if gva == 0 {
            return Ok(None);
        }
        if (gva as usize & (PAGE_SIZE - 1)) + len > PAGE_SIZE {
            return Err(-EINVAL);
        }
        match g.mmu.translate(gva) {
            Some((gpa, true)) if g.mem.get_slice(GuestAddress(gpa), len).is_ok() => Ok(Some(gpa)),
            _ => Err(-EFAULT),
        }
    }

    fn register_vcpu_info(&self, current: u32, target: u32, req: RegisterVcpuInfo) -> i64 {
        // map_vcpu_info checks the offset before anything else: the
        // struct must fit in the page and sit at its natural alignment
        // (8 bytes on x86-64), or -ENXIO.
        if req.offset as usize > PAGE_SIZE - VCPU_INFO_SIZE
            || !(req.offset as usize).is_multiple_of(std::mem::align_of::<VcpuInfo>())
        {
            return -ENXIO;
        }
        let mut st = self.lock();
        let v = &st.vcpus[target as usize];
        // Only once per vCPU, and only on yourself or an offline vCPU.
        if v.vcpu_info_gpa.is_some() || (target != current && v.online && v.initialised) {
            return -EINVAL;
        }
        let Some(gpa) = req
            .mfn
            .checked_mul(PAGE_SIZE as u64)
            .and_then(|base| base.checked_add(req.offset as u64))
        else {
            return -EINVAL;
        };
        let mem = self.mem.memory();
        if mem.get_slice(GuestAddress(gpa), VCPU_INFO_SIZE).is_err() {
            return -EINVAL;
        }
        // Carry the old contents over, then mark everything pending so the
        // guest rescans (as Xen does).
        let mut old = [0u8; VCPU_INFO_SIZE];
        self.platform.begin_event_layout_change();
        if let Some(old_gpa) = self.vcpu_info_gpa(&st, target) {
            let _ = mem.read_slice(&mut old, GuestAddress(old_gpa));
        }
        if mem.write_slice(&old, GuestAddress(gpa)).is_err() {
            self.publish_event_layout(&st);
            return -EINVAL;
        }
        let _ = mem.write_obj(u64::MAX, GuestAddress(gpa + VCPU_INFO_PENDING_SEL as u64));
        let _ = mem.write_obj(1u8, GuestAddress(gpa + VCPU_INFO_UPCALL_PENDING as u64));
        st.vcpus[target as usize].vcpu_info_gpa = Some(gpa);
        self.publish_event_layout(&st);
        self.update_vcpu_time(&st, target);
        self.raise_upcall(&st, target);
        0
    }

    fn set_timer_op(&self, vcpu: u32, timeout: u64) -> i64 {
        let mut st = self.lock();
        if let Some(v) = st.vcpus.get_mut(vcpu as usize) {
            v.singleshot_deadline = (timeout != 0).then_some(timeout);
        }
        self.timers_changed(&mut st);
        0
    }

    // ---- event_channel_op ----------------------------------------------------------

    fn event_channel_op(&self, g: &GuestAccess, cmd: u64, arg: u64) -> i64 {
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

    // ---- grant_table_op ------------------------------------------------------------

    fn grant_table_op(&self, g: &GuestAccess, cmd: u64, uop: u64, count: u64) -> i64 {
        // Xen takes the count as a signed int.
        if (count as i32) < 0 {
            return -EINVAL;
        }
        match cmd {
            GNTTABOP_QUERY_SIZE => {
                if count != 1 {
                    return -EINVAL;
                }
                let mut q = read!(g, QuerySize, uop);
                if self.is_self(q.dom) {
                    q.nr_frames = self.lock().grants.nr_frames();
                    q.max_nr_frames = MAX_GRANT_FRAMES;
                    q.status = GNTST_OKAY;
                } else if q.dom == 0 {
                    // Dom0 exists, and XSM_TARGET (xsm_grant_query_size)
                    // keeps a domU out of its table.
                    q.status = GNTST_PERMISSION_DENIED;
                } else {
                    // gnttab_query_size: no such domain.
                    q.status = GNTST_BAD_DOMAIN;
                }
                write!(g, uop, &q);
                0
            }
            GNTTABOP_SETUP_TABLE => {
                if count != 1 {
                    return -EINVAL;
                }
                let mut req = read!(g, SetupTable, uop);
                req.status = self.setup_table(g, &req);
                write!(g, uop, &req);
                0
            }
            GNTTABOP_SET_VERSION => {
                if count != 1 {
                    return -EINVAL;
                }
                let mut req = read!(g, SetVersion, uop);
                let rc = match req.version {
                    1 => 0,
                    // Behave as Xen built with max grant version 1.
                    2 => -ENOSYS,
                    _ => -EINVAL,
                };
                req.version = self.lock().grants.version;
                write!(g, uop, &req);
                rc
            }
            GNTTABOP_GET_VERSION => {
                if count != 1 {
                    return -EINVAL;
                }
                let mut req = read!(g, GetVersion, uop);
                if !self.is_self(req.dom) {
                    return -ESRCH;
                }
                req.version = self.lock().grants.version;
                write!(g, uop, &req);
                0
            }
            GNTTABOP_COPY => self.grant_copy(g, uop, count),
            _ => -ENOSYS,
        }
    }

    fn setup_table(&self, g: &GuestAccess, req: &SetupTable) -> i16 {
        if !self.is_self(req.dom) {
            return GNTST_BAD_DOMAIN;
        }
        if req.nr_frames > MAX_GRANT_FRAMES {
            return GNTST_GENERAL_ERROR;
        }
        let mut st = self.lock();
        for i in 0..req.nr_frames {
            let gfn = match st.grants.frames[i as usize] {
                Some(gfn) => gfn,
                None => {
                    let gfn = self.cfg.default_grant_gfn + i as u64;
                    if self.place_grant_frame(&mut st, i, gfn) != 0 {
                        return GNTST_GENERAL_ERROR;
                    }
                    gfn
                }
            };
            if g.write_elem(req.frame_list, i as u64, &gfn).is_err() {
                return GNTST_BAD_VIRT_ADDR;
            }
        }
        GNTST_OKAY
    }

    // ---- vm_assist -------------------------------------------------------------------

    fn vm_assist(&self, cmd: u64, kind: u64) -> i64 {
        if kind >= 64 || HVM_VM_ASSIST_MASK & (1 << kind) == 0 {
            return -EINVAL;
        }
        let mut st = self.lock();
        match cmd {
            VMASST_CMD_ENABLE => st.vm_assist |= 1 << kind,
            VMASST_CMD_DISABLE => st.vm_assist &= !(1 << kind),
            _ => return -ENOSYS,
        }
        0
    }
}

//! The VMM's writer of the event routing area (layout in
//! [`kxen_vmm_api::routing`]): pages at the end of the memfd that tell Dom0
//! backends where the guest's event words and grant frames are.

use std::fs::File;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

use kxen_vmm_api::routing::*;
use vm_memory::{FileOffset, MmapRegion};

pub struct RoutingArea {
    /// Our own shared mapping of the area; kept alive for `base`.
    map: MmapRegion,
}

impl RoutingArea {
    /// Map the area at `offset` of `memfd` and initialise its header.
    pub fn new(memfd: &File, offset: u64, nr_vcpus: u32) -> std::io::Result<Self> {
        let file = memfd.try_clone()?;
        let map = MmapRegion::from_file(FileOffset::new(file, offset), ROUTING_AREA_SIZE)
            .map_err(std::io::Error::other)?;
        let area = RoutingArea { map };
        area.u32_at(HDR_VERSION)
            .store(ROUTING_VERSION, Ordering::SeqCst);
        area.u32_at(HDR_NR_VCPUS).store(nr_vcpus, Ordering::SeqCst);
        area.u32_at(HDR_NR_PORTS).store(0, Ordering::SeqCst);
        area.u64_at(HDR_SHARED_INFO_OFFSET)
            .store(ROUTING_NO_OFFSET, Ordering::SeqCst);
        for v in 0..ROUTING_MAX_VCPUS {
            area.u64_at(vcpu_entry(v) + VCPU_INFO_OFFSET_FIELD)
                .store(ROUTING_NO_OFFSET, Ordering::SeqCst);
        }
        for i in 0..ROUTING_MAX_GRANT_FRAMES {
            area.u64_at(grant_frame_entry(i))
                .store(ROUTING_NO_OFFSET, Ordering::SeqCst);
        }
        // Readers check the magic last.
        area.u32_at(HDR_MAGIC)
            .store(ROUTING_MAGIC, Ordering::SeqCst);
        Ok(area)
    }

    fn u32_at(&self, off: usize) -> &AtomicU32 {
        assert!(off + 4 <= ROUTING_AREA_SIZE && off.is_multiple_of(4));
        // SAFETY: in bounds and aligned (page-aligned mapping, checked
        // offset); the memory is shared and only accessed atomically.
        unsafe { AtomicU32::from_ptr(self.map.as_ptr().add(off).cast()) }
    }

    fn u64_at(&self, off: usize) -> &AtomicU64 {
        assert!(off + 8 <= ROUTING_AREA_SIZE && off.is_multiple_of(8));
        // SAFETY: as in u32_at.
        unsafe { AtomicU64::from_ptr(self.map.as_ptr().add(off).cast()) }
    }

    /// Make the generation odd: a layout change is in progress.
    pub fn begin_change(&self) {
        let g = self.u32_at(HDR_GENERATION);
        if g.load(Ordering::SeqCst).is_multiple_of(2) {
            g.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Publish a new layout (memfd offsets) and end the change.
    pub fn publish_layout(
        &self,
        shared_info: Option<u64>,
        vcpu_infos: &[Option<u64>],
        grant_frames: &[Option<u64>],
        grant_version: u32,
        status_frames: &[Option<u64>],
        compat_shared_info: bool,
    ) {
        self.begin_change();
        let layout = if compat_shared_info {
            SHARED_INFO_COMPAT
        } else {
            SHARED_INFO_NATIVE
        };
        self.u32_at(HDR_SHARED_INFO_LAYOUT)
            .store(layout, Ordering::SeqCst);
        self.u64_at(HDR_SHARED_INFO_OFFSET)
            .store(shared_info.unwrap_or(ROUTING_NO_OFFSET), Ordering::SeqCst);
        for (v, off) in vcpu_infos.iter().take(ROUTING_MAX_VCPUS).enumerate() {
            self.u64_at(vcpu_entry(v) + VCPU_INFO_OFFSET_FIELD)
                .store(off.unwrap_or(ROUTING_NO_OFFSET), Ordering::SeqCst);
        }
        let mut nr = 0;
        for (i, off) in grant_frames
            .iter()
            .take(ROUTING_MAX_GRANT_FRAMES)
            .enumerate()
        {
            if off.is_some() {
                nr = i as u32 + 1;
            }
            self.u64_at(grant_frame_entry(i))
                .store(off.unwrap_or(ROUTING_NO_OFFSET), Ordering::SeqCst);
        }
        self.u32_at(HDR_NR_GRANT_FRAMES).store(nr, Ordering::SeqCst);
        let mut nr_status = 0;
        for i in 0..ROUTING_MAX_STATUS_FRAMES {
            let off = status_frames.get(i).copied().flatten();
            if off.is_some() {
                nr_status = i as u32 + 1;
            }
            self.u64_at(status_frame_entry(i))
                .store(off.unwrap_or(ROUTING_NO_OFFSET), Ordering::SeqCst);
        }
        self.u32_at(HDR_NR_STATUS_FRAMES)
            .store(nr_status, Ordering::SeqCst);
        self.u32_at(HDR_GRANT_VERSION)
            .store(grant_version, Ordering::SeqCst);
        self.u32_at(HDR_GENERATION).fetch_add(1, Ordering::SeqCst);
    }

    /// Publish the guest's event ABI (FIFO or 2-level) and end the layout
    /// change [`RoutingArea::begin_change`] started.
    pub fn set_event_abi(&self, fifo: bool) {
        self.begin_change();
        let abi = if fifo { EVENT_ABI_FIFO } else { EVENT_ABI_2L };
        self.u32_at(HDR_EVENT_ABI).store(abi, Ordering::SeqCst);
        self.u32_at(HDR_GENERATION).fetch_add(1, Ordering::SeqCst);
    }

    /// Take the ports Dom0 asked the VMM to raise (clearing their bits).
    pub fn take_raise_requests(&self) -> Vec<u32> {
        let mut ports = Vec::new();
        for word in 0..ROUTING_NR_PORTS / 64 {
            let request = self.u64_at(raise_request_word(word * 64));
            // Most words are clear: read before taking them.
            if request.load(Ordering::Relaxed) == 0 {
                continue;
            }
            let mut bits = request.swap(0, Ordering::SeqCst);
            while bits != 0 {
                let bit = bits.trailing_zeros();
                bits &= bits - 1;
                ports.push(word as u32 * 64 + bit);
            }
        }
        ports
    }

    pub fn set_port(&self, port: u32, notify_vcpu: u32, dom0_port: u32) {
        if (port as usize) < ROUTING_NR_PORTS {
            let e = port_entry(port as usize);
            self.u32_at(e + 4).store(notify_vcpu, Ordering::SeqCst);
            if dom0_port != 0 {
                // Before the binding is visible: a scan bounded by
                // nr_ports must reach it.
                self.u32_at(HDR_NR_PORTS)
                    .fetch_max(port + 1, Ordering::SeqCst);
            }
            self.u32_at(e).store(dom0_port, Ordering::SeqCst);
        }
    }

    /// Store the blocked flag, then fence so that the caller's following
    /// reads of the pending bits cannot pass the store.
    pub fn set_blocked(&self, vcpu: u32, blocked: bool) {
        if (vcpu as usize) < ROUTING_MAX_VCPUS {
            self.u32_at(vcpu_entry(vcpu as usize) + VCPU_BLOCKED_FIELD)
                .store(blocked as u32, Ordering::SeqCst);
            fence(Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn area() -> RoutingArea {
        let fd = nix::sys::memfd::memfd_create(
            c"kxen-routing-test",
            nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
        )
        .expect("memfd");
        let file = File::from(fd);
        file.set_len(ROUTING_AREA_SIZE as u64).expect("size");
        RoutingArea::new(&file, 0, 2).expect("area")
    }

    #[test]
    fn event_abi_switch_is_a_layout_change_and_requests_drain_once() {
        let area = area();
        let generation = area.u32_at(HDR_GENERATION).load(Ordering::SeqCst);
        area.begin_change();
        area.set_event_abi(true);
        assert_eq!(
            area.u32_at(HDR_EVENT_ABI).load(Ordering::SeqCst),
            EVENT_ABI_FIFO
        );
        // One completed change: even again, two steps on.
        assert_eq!(
            area.u32_at(HDR_GENERATION).load(Ordering::SeqCst),
            generation + 2
        );
        // What a backend does for guest ports 3, 70, 4095 and two FIFO
        // ports past the 2-level space, up to the last.
        let ports = [3usize, 70, 4095, 4200, ROUTING_NR_PORTS - 1];
        for port in ports {
            area.u64_at(raise_request_word(port))
                .fetch_or(1 << (port % 64), Ordering::SeqCst);
        }
        let taken: Vec<usize> = area
            .take_raise_requests()
            .into_iter()
            .map(|p| p as usize)
            .collect();
        assert_eq!(taken, ports);
        assert!(area.take_raise_requests().is_empty());
        area.set_event_abi(false);
        assert_eq!(
            area.u32_at(HDR_EVENT_ABI).load(Ordering::SeqCst),
            EVENT_ABI_2L
        );
    }
}

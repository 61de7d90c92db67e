//! A domain's virtio devices as kxend runs them: guest memory from the
//! VMM's memfd, one `virtio-attach` per device, one worker per device.

use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;

use kxen_foreign::domain::ForeignDomain;
use kxen_vmm_api::client::VirtioAttachFds;
use kxen_vmm_api::protocol::VirtioAttach;
use tracing::info;
use vmm_sys_util::eventfd::EventFd;

use crate::device::{spawn, DeviceFds, DeviceHandle, VirtioDevice};
use crate::error::VirtioError;
use crate::link::MAX_CONFIG;
use crate::memory::{guest_memory, GuestMem};

/// Most virtio slots a VMM has.
pub const MAX_SLOTS: u32 = 8;

/// The virtio devices of one domain.
pub struct VirtioDomain {
    domid: u16,
    domain: Arc<ForeignDomain>,
    mem: Arc<GuestMem>,
    devices: Vec<DeviceHandle>,
}

fn eventfd(fd: OwnedFd) -> EventFd {
    // SAFETY: kxen-vmm sends eventfds in these positions; we own the fd.
    unsafe { EventFd::from_raw_fd(fd.into_raw_fd()) }
}

/// Turn a virtio-attach reply's fds into a device's fds.
pub fn device_fds(fds: VirtioAttachFds) -> DeviceFds {
    DeviceFds {
        link: UnixStream::from(fds.link),
        call: eventfd(fds.call),
        error: eventfd(fds.error),
        kicks: fds.kicks.into_iter().map(eventfd).collect(),
    }
}

impl VirtioDomain {
    /// Reach domain `domid` through its VMM's control socket and map its RAM.
    pub fn connect(domid: u16, control: &Path) -> Result<VirtioDomain, VirtioError> {
        let domain = ForeignDomain::connect(domid, control)
            .map_err(|e| VirtioError::Control(e.to_string()))?;
        let mem = guest_memory(domain.memory.memfd(), domain.memory.regions())?;
        Ok(VirtioDomain {
            domid,
            domain,
            mem: Arc::new(mem),
            devices: Vec::new(),
        })
    }

    /// Plug `dev` into virtio slot `slot` and start serving it.
    pub fn attach(&mut self, slot: u32, dev: Box<dyn VirtioDevice>) -> Result<(), VirtioError> {
        if slot >= MAX_SLOTS {
            return Err(VirtioError::Attach(format!("slot {slot} out of range")));
        }
        let config = dev.config();
        if config.len() > MAX_CONFIG {
            return Err(VirtioError::Attach("config space too large".into()));
        }
        let queues = dev.num_queues();
        let attach = VirtioAttach {
            slot,
            device_id: dev.device_id(),
            device_features: dev.features(),
            config,
            queues: queues as u32,
        };
        let fds = self
            .domain
            .virtio_attach(attach)
            .map_err(|e| VirtioError::Attach(e.to_string()))?;
        let fds = device_fds(fds);
        let name = dev.name();
        let handle = spawn(dev, self.mem.clone(), fds)?;
        info!(domid = self.domid, slot, device = %name, "virtio device attached");
        self.devices.push(handle);
        Ok(())
    }

    /// Each device's quiesce switch (in slot order), for a save's final
    /// pass.
    pub fn quiesce_controls(&self) -> Vec<Arc<crate::device::QuiesceControl>> {
        self.devices.iter().map(|d| d.quiesce_control()).collect()
    }

    /// The names of the devices (in slot order).
    pub fn device_names(&self) -> Vec<String> {
        self.devices.iter().map(|d| d.name().to_string()).collect()
    }

    /// Stop every device: threads end, TAPs go away (after their hotplug
    /// script's offline run).
    pub fn teardown(&mut self) {
        for d in self.devices.drain(..).rev() {
            d.stop();
        }
    }
}

impl Drop for VirtioDomain {
    fn drop(&mut self) {
        self.teardown();
    }
}

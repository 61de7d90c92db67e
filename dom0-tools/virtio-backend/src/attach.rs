//! A domain's virtio devices as kxend runs them: guest memory from the
//! VMM's memfd, one `virtio-attach` per device, one worker per device.

use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;

use kxen_backends::domain::ForeignDomain;
use tracing::info;
use vmm_sys_util::eventfd::EventFd;

use crate::device::{spawn, DeviceFds, DeviceHandle, VirtioDevice};
use crate::error::VirtioError;
use crate::link::{attach_request, MAX_CONFIG};
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
pub fn device_fds(fds: Vec<OwnedFd>, queues: usize) -> Result<DeviceFds, VirtioError> {
    if fds.len() != 3 + queues {
        return Err(VirtioError::Attach(format!(
            "{} fds for {queues} queues",
            fds.len()
        )));
    }
    let mut fds = fds.into_iter();
    let mut next = || fds.next().expect("length checked");
    let link = UnixStream::from(next());
    let call = eventfd(next());
    let error = eventfd(next());
    let kicks = (0..queues).map(|_| eventfd(next())).collect();
    Ok(DeviceFds {
        link,
        call,
        error,
        kicks,
    })
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
        let line = attach_request(slot, dev.device_id(), dev.features(), &config, queues);
        let fds = self
            .domain
            .control_request(&line)
            .map_err(|e| VirtioError::Attach(e.to_string()))?;
        let fds = device_fds(fds, queues)?;
        let name = dev.name();
        let handle = spawn(dev, self.mem.clone(), fds)?;
        info!(domid = self.domid, slot, device = %name, "virtio device attached");
        self.devices.push(handle);
        Ok(())
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

//! The device backends kxend serves, built from xl's device specs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kxen_blkback::{BlkBackend, DevType, Disk, VbdSpec};
use kxen_foreign::xenbus::BackendDevice;
use kxen_toolstack::disk::DiskSpec;
use kxen_virtio_backend::{BlkConfig, BlkDevice, NetDevice, VirtioDevice};

use crate::devices::{BackendFactory, DeviceSpec};

/// Where kxend looks for hotplug scripts named without a path: the
/// `KXEN_SCRIPT_DIR` environment variable, the scripts shipped in the
/// source tree next to a development build, then /etc/kxen/scripts.
pub fn script_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KXEN_SCRIPT_DIR") {
        return dir.into();
    }
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../netback/scripts");
    if shipped.is_dir() {
        return shipped;
    }
    PathBuf::from("/etc/kxen/scripts")
}

/// A hotplug script as a path: xl's relative names (and libxl's default
/// /etc/xen/scripts/NAME, which belongs to a real Xen install) resolve in
/// kxen's script directory.
pub fn resolve_script(script: Option<&str>, default: &str) -> PathBuf {
    let name = script.unwrap_or(default);
    let name = name.strip_prefix("/etc/xen/scripts/").unwrap_or(name);
    if name.starts_with('/') {
        PathBuf::from(name)
    } else {
        script_dir().join(name)
    }
}

fn vbd_spec(disk: &DiskSpec) -> Result<VbdSpec, String> {
    let target = disk
        .target_path()
        .filter(|t| !t.is_empty())
        .ok_or("a disk needs a target (empty CD-ROM drives are not supported)")?;
    let mut spec = VbdSpec::new(target, !disk.readwrite);
    if disk.is_cdrom {
        spec.devtype = DevType::Cdrom;
    }
    if disk.discard == Some(false) {
        spec.discard = false;
    }
    Ok(spec)
}

fn blkback(disk: &DiskSpec) -> Result<Box<dyn BackendDevice>, String> {
    let spec = vbd_spec(disk)?;
    let backend = BlkBackend::new(spec).map_err(|e| e.to_string())?;
    Ok(Box::new(backend))
}

/// The factory kxend's xenbus plumbing calls for each new device.
pub fn factory() -> Arc<BackendFactory> {
    Arc::new(|domid, devid, spec| match spec {
        DeviceSpec::Disk(disk) => blkback(disk),
        DeviceSpec::Vif(vif) => crate::backends::netback(domid, devid, vif),
    })
}

/// netback's view of one vif: TAP `vif<domid>.<devid>` (or `vifname=`)
/// on the vif's bridge through its hotplug script.
fn vif_spec(
    domid: u32,
    devid: u32,
    vif: &kxen_toolstack::vif::VifSpec,
) -> Result<kxen_netback::VifSpec, String> {
    let mac = vif
        .mac
        .ok_or("the vif has no MAC (the toolstack fills one in)")?;
    let mut spec = kxen_netback::VifSpec::new(domid as u16, devid, mac.0);
    if let Some(bridge) = &vif.bridge {
        spec.bridge = bridge.clone();
    }
    spec.vifname = vif.vifname.clone();
    spec.script = Some(resolve_script(vif.script.as_deref(), "vif-bridge"));
    if let Some(mtu) = vif.mtu {
        spec.mtu = mtu;
    }
    Ok(spec)
}

/// netback for one PV vif.
pub fn netback(
    domid: u32,
    devid: u32,
    vif: &kxen_toolstack::vif::VifSpec,
) -> Result<Box<dyn BackendDevice>, String> {
    let mut spec = vif_spec(domid, devid, vif)?;
    spec.queues = kxen_netback::spec::MAX_QUEUES.min(4);
    let backend = kxen_netback::NetBackend::new(spec).map_err(|e| e.to_string())?;
    Ok(Box::new(backend))
}

/// An HVM domain's disk as a virtio-blk device, on blkback's Disk.
pub fn virtio_blk(disk: &DiskSpec) -> Result<Box<dyn VirtioDevice>, String> {
    let spec = vbd_spec(disk)?;
    let opened = Disk::open(&spec).map_err(|e| e.to_string())?;
    let cfg = BlkConfig {
        id: disk.vdev.clone(),
        discard: spec.discard,
    };
    Ok(Box::new(BlkDevice::new(disk.vdev.clone(), opened, cfg)))
}

/// An HVM domain's vif as a virtio-net device: the same TAP (named
/// `vif<domid>.<devid>`, as Xen names PV vifs; there is no emulated NIC
/// beside it, so no `-emu` suffix) and hotplug script as netback's.
pub fn virtio_net(
    domid: u32,
    devid: u32,
    vif: &kxen_toolstack::vif::VifSpec,
) -> Result<Box<dyn VirtioDevice>, String> {
    let spec = vif_spec(domid, devid, vif)?;
    let dev = NetDevice::new(spec).map_err(|e| e.to_string())?;
    Ok(Box::new(dev))
}

//! Xenbus backend plumbing: the frontend and backend nodes of each disk
//! and vif, the XenbusState handshake in both directions, hot plug and
//! teardown.
//!
//! Xenstore watch callbacks (which run inside the store's notification
//! path and must not block) only queue a step on kxend's domain pool (a
//! few threads shared by all domains: an idle domain owns none); the step
//! reads both `state` nodes
//! and moves the backend along, calling into the device backend
//! (blkback, netback) to publish, connect and disconnect. Detaching
//! follows libxl: the backend goes Closing with `online=0`, the frontend
//! answers Closed, and only then are the nodes removed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use kxen_foreign::domain::ForeignDomain;
use kxen_foreign::xenbus::{BackendDevice, DeviceContext};
use kxen_toolstack::disk::DiskSpec;
use kxen_toolstack::vif::VifSpec;
use kxen_toolstack::xl::{BlockInfo, NicInfo};
use kxen_xenstore::{WatchId, Xenstored};
use tracing::{debug, info, warn};

use crate::store::StoreService;

/// XenbusState values (io/xenbus.h).
pub mod state {
    pub const UNKNOWN: u32 = 0;
    pub const INITIALISING: u32 = 1;
    pub const INIT_WAIT: u32 = 2;
    pub const INITIALISED: u32 = 3;
    pub const CONNECTED: u32 = 4;
    pub const CLOSING: u32 = 5;
    pub const CLOSED: u32 = 6;
}

/// How long a detach waits for the frontend to close before it forces.
const DETACH_LIMIT: Duration = Duration::from_secs(10);

/// What a device is, as the toolstack gave it.
#[derive(Debug, Clone)]
pub enum DeviceSpec {
    Disk(DiskSpec),
    Vif(VifSpec),
}

impl DeviceSpec {
    pub fn kind(&self) -> &'static str {
        match self {
            DeviceSpec::Disk(_) => "vbd",
            DeviceSpec::Vif(_) => "vif",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("{0}")]
    Backend(String),
    #[error("device {0} already exists")]
    Exists(String),
    #[error("cannot reach the domain: {0}")]
    Domain(String),
    #[error("device {0} not connected")]
    NotFound(String),
}

/// Builds the backend for a device spec (blkback or netback).
pub type BackendFactory =
    dyn Fn(u32, u32, &DeviceSpec) -> Result<Box<dyn BackendDevice>, String> + Send + Sync;

struct Device {
    spec: DeviceSpec,
    ctx: DeviceContext,
    backend: Box<dyn BackendDevice>,
    watch: Option<WatchId>,
    /// The toolstack asked for removal; set with `online=0`.
    detaching: Option<Sender<()>>,
    connected: bool,
}

/// The devices of one domain.
pub struct DomainDevices {
    domid: u32,
    control: PathBuf,
    store: Xenstored,
    service: Arc<dyn StoreService>,
    factory: Arc<BackendFactory>,
    foreign: Mutex<Option<Arc<ForeignDomain>>>,
    devices: Arc<Mutex<BTreeMap<(&'static str, u32), Device>>>,
    /// An HVM domain's virtio devices' quiesce switches (their workers
    /// live in the daemon's virtio map), quiesced with the PV backends.
    virtio: Mutex<Vec<Arc<kxen_virtio_backend::QuiesceControl>>>,
    /// Ourselves, for the steps queued on the pool (a watch holding an
    /// `Arc` would keep the set alive through its own devices).
    me: Weak<DomainDevices>,
    /// Between a successful [`DomainDevices::quiesce`] and its
    /// [`DomainDevices::resume`]: a domain unpaused now must get its
    /// backends back first.
    quiesced: std::sync::atomic::AtomicBool,
}

impl DomainDevices {
    pub fn new(
        domid: u32,
        control: PathBuf,
        service: Arc<dyn StoreService>,
        factory: Arc<BackendFactory>,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| DomainDevices {
            domid,
            control,
            store: service.xenstored(),
            service,
            factory,
            foreign: Mutex::new(None),
            devices: Arc::new(Mutex::new(BTreeMap::new())),
            virtio: Mutex::new(Vec::new()),
            me: me.clone(),
            quiesced: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Queue one handshake step for (kind, devid) on the domain pool.
    fn state_changed(me: &Weak<Self>, kind: &'static str, devid: u32) {
        let me = me.clone();
        crate::reactor::DOMAINS.spawn(move || {
            if let Some(me) = me.upgrade() {
                me.step(kind, devid);
            }
        });
    }

    fn foreign(&self) -> Result<Arc<ForeignDomain>, DeviceError> {
        let mut slot = self.foreign.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = slot.as_ref() {
            return Ok(f.clone());
        }
        let f = ForeignDomain::connect(self.domid as u16, &self.control)
            .map_err(|e| DeviceError::Domain(e.to_string()))?;
        *slot = Some(f.clone());
        Ok(f)
    }

    /// A Dom0 port bound to the guest's suspend event channel (Xen's
    /// `device/suspend/event-channel`); closed when dropped.
    pub fn bind_suspend_channel(
        &self,
        guest_port: u32,
    ) -> Result<kxen_foreign::evtchn::Dom0Channel, DeviceError> {
        self.foreign()?
            .bind_interdomain(guest_port)
            .map_err(|e| DeviceError::Domain(e.to_string()))
    }

    fn paths(&self, kind: &str, devid: u32) -> (String, String) {
        (
            format!("/local/domain/{}/device/{kind}/{devid}", self.domid),
            format!("/local/domain/0/backend/{kind}/{}/{devid}", self.domid),
        )
    }

    /// The next free vif index.
    pub fn next_vif_devid(&self) -> u32 {
        let devices = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        (0..)
            .find(|i| !devices.contains_key(&("vif", *i)))
            .unwrap_or(0)
    }

    /// Create a device's nodes and its backend; the handshake then runs on
    /// the worker as the frontend moves.
    pub fn attach(&self, spec: DeviceSpec, devid: u32) -> Result<(), DeviceError> {
        let kind = spec.kind();
        if self
            .devices
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&(kind, devid))
        {
            return Err(DeviceError::Exists(format!("{kind}/{devid}")));
        }
        let domain = self.foreign()?;
        let mut backend = (self.factory)(self.domid, devid, &spec).map_err(DeviceError::Backend)?;
        let (fe, be) = self.paths(kind, devid);
        let ctx = DeviceContext {
            domain,
            store: self.store.clone(),
            frontend_domid: self.domid as u16,
            devid,
            frontend_path: fe.clone(),
            backend_path: be.clone(),
        };
        self.write_nodes(&spec, devid, &fe, &be);
        if let Err(e) = backend.publish(&ctx) {
            self.service.rm(&fe);
            self.service.rm(&be);
            return Err(DeviceError::Backend(e.to_string()));
        }
        self.service.write(
            &format!("{be}/state"),
            state::INIT_WAIT.to_string().as_bytes(),
        );
        self.install(spec, ctx, backend, false);
        info!(domid = self.domid, kind, devid, "device attached");
        Self::state_changed(&self.me, kind, devid);
        Ok(())
    }

    /// Register a device and watch its frontend's state for the worker.
    fn install(
        &self,
        spec: DeviceSpec,
        ctx: DeviceContext,
        backend: Box<dyn BackendDevice>,
        connected: bool,
    ) {
        let (kind, devid) = (spec.kind(), ctx.devid);
        let me = self.me.clone();
        let watch = self
            .store
            .watch(&format!("{}/state", ctx.frontend_path), move |_| {
                Self::state_changed(&me, kind, devid);
            })
            .map_err(|e| warn!(domid = self.domid, kind, devid, "watch: {e}"))
            .ok();
        self.devices
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                (kind, devid),
                Device {
                    spec,
                    ctx,
                    backend,
                    watch,
                    detaching: None,
                    connected,
                },
            );
    }

    /// Take over a device a previous kxend served (it died; the guest and
    /// the nodes live on). The backend is rebuilt from the nodes and, if
    /// the handshake had finished, reconnected to the rings where they
    /// stand: the VMM closed the dead kxend's channel ends, so the guest's
    /// ports are free to bind again.
    pub fn adopt(&self, kind: &'static str, devid: u32) -> Result<(), DeviceError> {
        let (fe, be) = self.paths(kind, devid);
        let node = |k: &str| -> String {
            self.store
                .read(&format!("{be}/{k}"))
                .ok()
                .and_then(|v| String::from_utf8(v).ok())
                .unwrap_or_default()
        };
        let spec = match kind {
            "vbd" => {
                let access = if node("mode") == "w" { "rw" } else { "ro" };
                let text = format!("target={}", node("params"));
                let devtype = if node("device-type") == "cdrom" {
                    ",devtype=cdrom"
                } else {
                    ""
                };
                DiskSpec::parse(&format!(
                    "format=raw,vdev={},access={access}{devtype},{text}",
                    node("dev")
                ))
                .map(DeviceSpec::Disk)
                .map_err(|e| DeviceError::Backend(e.to_string()))?
            }
            _ => {
                let mut tokens = vec![
                    format!("mac={}", node("mac")),
                    format!("bridge={}", node("bridge")),
                    format!("script={}", node("script")),
                ];
                if let Ok(mtu) = node("mtu").parse::<u32>() {
                    tokens.push(format!("mtu={mtu}"));
                }
                let (mut vif, _) = VifSpec::parse_tokens(tokens.iter().map(String::as_str))
                    .map_err(|e| DeviceError::Backend(e.to_string()))?;
                vif.devid = Some(devid);
                DeviceSpec::Vif(vif)
            }
        };
        let domain = self.foreign()?;
        let mut backend = (self.factory)(self.domid, devid, &spec).map_err(DeviceError::Backend)?;
        let ctx = DeviceContext {
            domain,
            store: self.store.clone(),
            frontend_domid: self.domid as u16,
            devid,
            frontend_path: fe.clone(),
            backend_path: be.clone(),
        };
        let be_state = self
            .read_u32(&format!("{be}/state"))
            .unwrap_or(state::UNKNOWN);
        let mut connected = false;
        if be_state == state::CONNECTED {
            match backend.connect(&ctx) {
                Ok(()) => connected = true,
                Err(e) => {
                    warn!(domid = self.domid, kind, devid, "reconnect failed: {e}");
                    self.service.write(
                        &format!("{be}/state"),
                        state::CLOSING.to_string().as_bytes(),
                    );
                }
            }
        }
        self.install(spec, ctx, backend, connected);
        info!(domid = self.domid, kind, devid, connected, "device adopted");
        Ok(())
    }

    /// The devices whose backend nodes exist for this domain.
    pub fn existing_nodes(&self) -> Vec<(&'static str, u32)> {
        let mut out = Vec::new();
        for kind in ["vbd", "vif"] {
            let dir = format!("/local/domain/0/backend/{kind}/{}", self.domid);
            for id in self.store.directory(&dir).unwrap_or_default() {
                if let Ok(devid) = id.parse() {
                    out.push((kind, devid));
                }
            }
        }
        out
    }

    /// libxl's node layout for one device (libxl_device.c, libxl_disk.c,
    /// libxl_nic.c): the backend directory is Dom0's and readable by the
    /// guest; the frontend directory is the guest's and readable by Dom0.
    fn write_nodes(&self, spec: &DeviceSpec, devid: u32, fe: &str, be: &str) {
        let s = &self.service;
        let d = self.domid;
        let mut back: Vec<(&str, String)> = vec![
            ("frontend", fe.to_string()),
            ("frontend-id", d.to_string()),
            ("online", "1".into()),
            ("state", state::INITIALISING.to_string()),
        ];
        let mut front: Vec<(&str, String)> = vec![
            ("backend", be.to_string()),
            ("backend-id", "0".into()),
            ("state", state::INITIALISING.to_string()),
        ];
        match spec {
            DeviceSpec::Disk(disk) => {
                let target = disk.target_path().unwrap_or("").to_string();
                let is_dev = std::fs::metadata(&target)
                    .map(|m| std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type()))
                    .unwrap_or(false);
                back.extend([
                    ("params", target.clone()),
                    ("type", if is_dev { "phy" } else { "file" }.into()),
                    ("mode", if disk.readwrite { "w" } else { "r" }.into()),
                    ("dev", disk.vdev.clone()),
                    ("removable", u8::from(disk.removable).to_string()),
                    ("bootable", "1".into()),
                    (
                        "device-type",
                        if disk.is_cdrom { "cdrom" } else { "disk" }.into(),
                    ),
                ]);
                front.extend([
                    ("virtual-device", devid.to_string()),
                    (
                        "device-type",
                        if disk.is_cdrom { "cdrom" } else { "disk" }.into(),
                    ),
                ]);
            }
            DeviceSpec::Vif(vif) => {
                let mac = vif.mac.map(|m| m.to_string()).unwrap_or_default();
                back.extend([
                    ("handle", devid.to_string()),
                    ("mac", mac.clone()),
                    ("bridge", vif.bridge.clone().unwrap_or_default()),
                    ("script", vif.script_path()),
                    ("type", "vif".into()),
                    ("mtu", vif.mtu.unwrap_or(1500).to_string()),
                ]);
                if let Some(ip) = &vif.ip {
                    back.push(("ip", ip.clone()));
                }
                front.extend([("handle", devid.to_string()), ("mac", mac)]);
            }
        }
        let dom0_owned = vec!["n0".to_string(), format!("r{d}")];
        let guest_owned = vec![format!("n{d}"), "r0".to_string()];
        s.mkdir(be);
        s.set_perms(be, &dom0_owned);
        for (k, v) in back {
            let path = format!("{be}/{k}");
            s.write(&path, v.as_bytes());
            s.set_perms(&path, &dom0_owned);
        }
        s.mkdir(fe);
        s.set_perms(fe, &guest_owned);
        for (k, v) in front {
            let path = format!("{fe}/{k}");
            s.write(&path, v.as_bytes());
            s.set_perms(&path, &guest_owned);
        }
    }

    /// Start removing a device: the backend goes Closing with `online=0`;
    /// the worker removes it once the frontend is Closed, or at once with
    /// `force` / after [`DETACH_LIMIT`].
    pub fn detach(&self, kind: &'static str, devid: u32, force: bool) -> Result<(), DeviceError> {
        let (tx, rx) = channel();
        {
            let mut devices = self.devices.lock().unwrap_or_else(|e| e.into_inner());
            let dev = devices
                .get_mut(&(kind, devid))
                .ok_or_else(|| DeviceError::NotFound(format!("{kind}/{devid}")))?;
            dev.detaching = Some(tx);
            let be = &dev.ctx.backend_path;
            self.service.write(&format!("{be}/online"), b"0");
            self.service.write(
                &format!("{be}/state"),
                state::CLOSING.to_string().as_bytes(),
            );
        }
        if !force {
            Self::state_changed(&self.me, kind, devid);
            match rx.recv_timeout(DETACH_LIMIT) {
                Ok(()) => return Ok(()),
                Err(_) => warn!(
                    domid = self.domid,
                    kind, devid, "frontend did not close; forcing removal"
                ),
            }
        }
        self.remove(kind, devid);
        Ok(())
    }

    /// Tear a device down and delete its nodes.
    fn remove(&self, kind: &'static str, devid: u32) {
        let dev = self
            .devices
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(kind, devid));
        if let Some(mut dev) = dev {
            if let Some(w) = dev.watch.take() {
                self.store.unwatch(w);
            }
            dev.backend.disconnect();
            self.service.rm(&dev.ctx.frontend_path);
            self.service.rm(&dev.ctx.backend_path);
            self.service.rm(&format!(
                "/local/domain/0/error/backend/{kind}/{}/{devid}",
                self.domid
            ));
            if let Some(done) = dev.detaching.take() {
                let _ = done.send(());
            }
            info!(domid = self.domid, kind, devid, "device removed");
        }
    }

    /// The domain is going away: disconnect and remove every device.
    pub fn teardown(&self) {
        let keys: Vec<(&'static str, u32)> = self
            .devices
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .copied()
            .collect();
        for (kind, devid) in keys {
            self.remove(kind, devid);
        }
        self.service
            .rm(&format!("/local/domain/0/backend/vbd/{}", self.domid));
        self.service
            .rm(&format!("/local/domain/0/backend/vif/{}", self.domid));
        *self.foreign.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn read_u32(&self, path: &str) -> Option<u32> {
        let v = self.store.read(path).ok()?;
        std::str::from_utf8(&v).ok()?.trim().parse().ok()
    }

    fn read_i32(&self, path: &str) -> i32 {
        self.read_u32(path).map(|v| v as i32).unwrap_or(-1)
    }

    /// One turn of the handshake for a device, from both state nodes.
    fn step(&self, kind: &'static str, devid: u32) {
        let mut remove = false;
        {
            let mut devices = self.devices.lock().unwrap_or_else(|e| e.into_inner());
            let Some(dev) = devices.get_mut(&(kind, devid)) else {
                return;
            };
            let fe_state = self
                .read_u32(&format!("{}/state", dev.ctx.frontend_path))
                .unwrap_or(state::UNKNOWN);
            let be_path = dev.ctx.backend_path.clone();
            let be_state = self
                .read_u32(&format!("{be_path}/state"))
                .unwrap_or(state::UNKNOWN);
            debug!(
                domid = self.domid,
                kind, devid, fe_state, be_state, "xenbus"
            );
            let set = |s: u32| {
                self.service
                    .write(&format!("{be_path}/state"), s.to_string().as_bytes())
            };
            match fe_state {
                state::INITIALISED | state::CONNECTED
                    if !dev.connected
                        && dev.detaching.is_none()
                        && be_state == state::INIT_WAIT =>
                {
                    let started = Instant::now();
                    match dev.backend.connect(&dev.ctx) {
                        Ok(()) => {
                            dev.connected = true;
                            set(state::CONNECTED);
                            info!(
                                domid = self.domid,
                                kind,
                                devid,
                                ms = started.elapsed().as_millis() as u64,
                                "device connected"
                            );
                        }
                        Err(e) => {
                            warn!(domid = self.domid, kind, devid, "connect failed: {e}");
                            let err = format!(
                                "/local/domain/0/error/backend/{kind}/{}/{devid}/error",
                                self.domid
                            );
                            self.service.write(&err, e.to_string().as_bytes());
                            dev.backend.disconnect();
                            set(state::CLOSING);
                        }
                    }
                }
                state::CLOSING => {
                    if dev.connected {
                        dev.backend.disconnect();
                        dev.connected = false;
                    }
                    if be_state != state::CLOSING && be_state != state::CLOSED {
                        set(state::CLOSING);
                    }
                }
                state::CLOSED | state::UNKNOWN => {
                    if dev.connected {
                        dev.backend.disconnect();
                        dev.connected = false;
                    }
                    if dev.detaching.is_some() {
                        remove = true;
                    } else if fe_state == state::CLOSED && be_state != state::CLOSED {
                        set(state::CLOSED);
                    }
                }
                // A frontend starting over (driver reload, kexec) after a
                // close: offer the device again.
                state::INITIALISING if be_state == state::CLOSED && dev.detaching.is_none() => {
                    if let Err(e) = dev.backend.publish(&dev.ctx) {
                        warn!(domid = self.domid, kind, devid, "publish: {e}");
                    }
                    set(state::INIT_WAIT);
                }
                _ => {}
            }
        }
        if remove {
            self.remove(kind, devid);
        }
    }

    /// `xl block-list` rows.
    pub fn block_list(&self) -> Vec<BlockInfo> {
        let devices = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        devices
            .values()
            .filter(|d| matches!(d.spec, DeviceSpec::Disk(_)))
            .map(|d| {
                let fe = &d.ctx.frontend_path;
                BlockInfo {
                    devid: d.ctx.devid,
                    backend_id: 0,
                    frontend_id: self.domid,
                    state: self.read_i32(&format!("{fe}/state")),
                    evtch: self.read_i32(&format!("{fe}/event-channel")),
                    rref: self
                        .read_i32(&format!("{fe}/ring-ref"))
                        .max(self.read_i32(&format!("{fe}/ring-ref0"))),
                    backend: d.ctx.backend_path.clone(),
                }
            })
            .collect()
    }

    /// `xl network-list` rows, with the backend's counters.
    pub fn network_list(&self) -> Vec<(NicInfo, BTreeMap<String, u64>)> {
        let devices = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        devices
            .values()
            .filter_map(|d| match &d.spec {
                DeviceSpec::Vif(vif) => Some((d, vif)),
                DeviceSpec::Disk(_) => None,
            })
            .map(|(d, vif)| {
                let fe = &d.ctx.frontend_path;
                let evtch = match self.read_i32(&format!("{fe}/event-channel")) {
                    -1 => self.read_i32(&format!("{fe}/event-channel-tx")),
                    p => p,
                };
                (
                    NicInfo {
                        devid: d.ctx.devid,
                        backend_id: 0,
                        mac: vif.mac.unwrap_or(kxen_toolstack::vif::MacAddr([0; 6])),
                        state: self.read_i32(&format!("{fe}/state")),
                        evtch,
                        rref_tx: self.read_i32(&format!("{fe}/tx-ring-ref")),
                        rref_rx: self.read_i32(&format!("{fe}/rx-ring-ref")),
                        backend: d.ctx.backend_path.clone(),
                    },
                    d.backend.stats(),
                )
            })
            .collect()
    }

    /// Stop every backend of the domain taking requests, and wait until
    /// `deadline` for those in flight to be answered (a migration's or a
    /// save's final pass: the paused domain's memory must stop changing).
    /// On failure, those already quiesced serve again.
    pub fn quiesce(&self, deadline: std::time::Instant) -> Result<(), DeviceError> {
        let mut devices = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        let mut failure = None;
        for ((kind, devid), d) in devices.iter_mut() {
            if let Err(e) = d.backend.quiesce(deadline) {
                failure = Some(DeviceError::Backend(format!("{kind} {devid}: {e}")));
                break;
            }
        }
        let virtio = self.virtio_controls();
        if failure.is_none() {
            for (slot, v) in virtio.iter().enumerate() {
                if let Err(e) = v.quiesce(deadline) {
                    failure = Some(DeviceError::Backend(format!("virtio slot {slot}: {e}")));
                    break;
                }
            }
        }
        if let Some(e) = failure {
            for d in devices.values_mut() {
                d.backend.resume();
            }
            for v in &virtio {
                v.resume();
            }
            return Err(e);
        }
        // The xenstore ring too: a reply written to it after its page
        // went into the image would be lost, and the connection's state
        // (a half-read request, queued replies) goes with the image.
        if let Err(e) = self.store.freeze_domain(self.domid) {
            debug!(domid = self.domid, "no xenstore ring to freeze: {e}");
        }
        self.quiesced
            .store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// The HVM domain's virtio devices, quiesced and resumed with the rest
    /// (replacing those of an earlier attach).
    pub fn set_virtio_controls(&self, controls: Vec<Arc<kxen_virtio_backend::QuiesceControl>>) {
        *self.virtio.lock().unwrap_or_else(|e| e.into_inner()) = controls;
    }

    fn virtio_controls(&self) -> Vec<Arc<kxen_virtio_backend::QuiesceControl>> {
        self.virtio
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Undo [`DomainDevices::quiesce`]: the backends serve again, requests
    /// posted meanwhile first.
    pub fn resume(&self) {
        let mut devices = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        for d in devices.values_mut() {
            d.backend.resume();
        }
        for v in self.virtio_controls() {
            v.resume();
        }
        if let Err(e) = self.store.thaw_domain(self.domid) {
            debug!(domid = self.domid, "no xenstore ring to thaw: {e}");
        }
        self.quiesced
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether the backends are quiesced (and not resumed since).
    pub fn is_quiesced(&self) -> bool {
        self.quiesced.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Counters of a block device (for `kxl block-list -l`).
    pub fn block_stats(&self) -> Vec<(u32, BTreeMap<String, u64>)> {
        let devices = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        devices
            .values()
            .filter(|d| matches!(d.spec, DeviceSpec::Disk(_)))
            .map(|d| (d.ctx.devid, d.backend.stats()))
            .collect()
    }
}

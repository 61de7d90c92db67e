//! The virtio-mmio transport, modern layout (Version 2), virtio 1.x §4.2.2.
//!
//! This is only the register model: feature negotiation, device status,
//! virtqueue configuration, interrupt status and the device configuration
//! space. Whoever serves the queues (kxend, over the VMM's link) is a
//! [`VirtioBackend`]: told when the driver sets DRIVER_OK (`activate`),
//! when it resets the device after that (`reset`), and of a QueueNotify
//! write that reached the VMM (`notify`).
//!
//! Rules enforced on the driver (a hostile one included):
//!
//! * control registers take aligned 32-bit accesses only; any other access
//!   reads as 0 and writes are dropped. The configuration space (from
//!   0x100) takes 1, 2, 4 and 8-byte accesses; bytes past its end read 0.
//! * status bits are set in order (ACKNOWLEDGE, DRIVER, FEATURES_OK,
//!   DRIVER_OK); a write that clears a bit is dropped (only 0, the reset,
//!   clears). FEATURES_OK sticks only if the acked features are a subset
//!   of the offered ones and include VIRTIO_F_VERSION_1.
//!   DEVICE_NEEDS_RESET belongs to the device.
//! * DriverFeatures is read-only once FEATURES_OK is set; the queue
//!   registers are read-only while DRIVER_OK is set and, for one queue,
//!   while its QueueReady is 1. QueueNum takes powers of two up to
//!   [`QUEUE_NUM_MAX`]. A QueueSel past the device's queues selects
//!   nothing: QueueNumMax and QueueReady read 0 and writes are dropped.
//!
//! The interrupt status lives in a [`VirtioInterrupt`] that other threads
//! (the VMM's interrupt thread) raise bits in without the device's lock.
//! Until a backend is attached the device reads as DeviceID 0, which the
//! specification tells drivers to ignore.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use tracing::{debug, trace};

use crate::bus::{BusDevice, PlatformRequest};

/// "virt", little-endian.
pub const MAGIC_VALUE: u32 = 0x7472_6976;
/// The modern (non-legacy) register layout.
pub const MMIO_VERSION: u32 = 2;
/// "KXEN", little-endian.
pub const VENDOR_ID: u32 = 0x4e45_584b;
/// Size of one device's register window.
pub const VIRTIO_MMIO_WINDOW: u64 = 0x1000;
/// Largest queue the device accepts.
pub const QUEUE_NUM_MAX: u16 = 256;
/// Most virtqueues one device has.
pub const MAX_QUEUES: usize = 8;
/// Longest configuration space accepted from a backend.
pub const MAX_CONFIG: usize = 256;
/// The modern-device feature bit, always offered and required.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Device status bits (virtio 1.x §2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 0x01;
    pub const DRIVER: u32 = 0x02;
    pub const DRIVER_OK: u32 = 0x04;
    pub const FEATURES_OK: u32 = 0x08;
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    pub const FAILED: u32 = 0x80;
}

/// InterruptStatus bits.
pub const INT_VRING: u32 = 1;
pub const INT_CONFIG: u32 = 2;

/// Register offsets (virtio 1.x §4.2.2).
pub mod reg {
    pub const MAGIC_VALUE: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const SHM_SEL: u64 = 0x0ac;
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    pub const SHM_BASE_LOW: u64 = 0x0b8;
    pub const SHM_BASE_HIGH: u64 = 0x0bc;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// The device types kxen serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceType {
    Net,
    Blk,
}

impl DeviceType {
    /// The virtio device ID.
    pub fn id(self) -> u32 {
        match self {
            DeviceType::Net => 1,
            DeviceType::Blk => 2,
        }
    }

    /// Size of the device type's configuration structure (virtio 1.2
    /// `virtio_net_config` through `supported_hash_types`, and
    /// `virtio_blk_config` through the zoned characteristics).
    pub fn config_size(self) -> usize {
        match self {
            DeviceType::Net => 24,
            DeviceType::Blk => 96,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DeviceType::Net => "net",
            DeviceType::Blk => "blk",
        }
    }
}

impl std::str::FromStr for DeviceType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "net" => Ok(DeviceType::Net),
            "blk" => Ok(DeviceType::Blk),
            _ => Err(format!("unknown virtio device {s:?} (blk or net)")),
        }
    }
}

/// One ready virtqueue, as handed to the backend on activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueConfig {
    pub index: u16,
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
}

/// Why a backend refused or could not take an activation.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct BackendError(pub String);

/// What the device asks of whoever serves its queues.
pub trait VirtioBackend: Send {
    /// The driver set DRIVER_OK with `features` acked and these queues
    /// ready. An error makes the device need a reset.
    fn activate(&mut self, features: u64, queues: &[QueueConfig]) -> Result<(), BackendError>;
    /// The driver reset the device after an activation: stop touching the
    /// queues before returning.
    fn reset(&mut self);
    /// A QueueNotify write for `queue` reached the device model.
    fn notify(&mut self, queue: u16);
    /// A restored device, running on the saved domain, gets this backend:
    /// serve the queues as `activate` would, from the saved positions
    /// (`indices[i]` is `queues[i]`'s), without the driver starting over.
    fn resume(
        &mut self,
        features: u64,
        queues: &[QueueConfig],
        indices: &[QueueIndices],
    ) -> Result<(), BackendError> {
        let _ = indices;
        self.activate(features, queues)
    }
}

/// Where a queue's device side stood when it was saved: the next avail
/// entry to take and the next used entry to fill. A quiesced backend has
/// answered every request it took, so both equal the used ring's index.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueIndices {
    pub next_avail: u16,
    pub next_used: u16,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AttachError {
    #[error("queues must be 1..={MAX_QUEUES}, not {0}")]
    Queues(usize),
    #[error("config is {0} bytes, more than {MAX_CONFIG}")]
    ConfigTooLong(usize),
}

/// The InterruptStatus register and the line it raises, shared with
/// threads that signal the driver without the device's lock.
pub struct VirtioInterrupt {
    status: AtomicU32,
    line: Box<dyn Fn() + Send + Sync>,
}

impl VirtioInterrupt {
    /// `line` pulses the device's interrupt (an irqfd write in the VMM).
    pub fn new(line: impl Fn() + Send + Sync + 'static) -> Self {
        VirtioInterrupt {
            status: AtomicU32::new(0),
            line: Box::new(line),
        }
    }

    /// Set `bits` in InterruptStatus and pulse the line.
    pub fn raise(&self, bits: u32) {
        self.status.fetch_or(bits, Ordering::SeqCst);
        (self.line)();
    }

    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
    }

    fn set(&self, bits: u32) {
        self.status.store(bits, Ordering::SeqCst);
    }
}

#[derive(Debug, Clone, Copy)]
struct Queue {
    num: u16,
    ready: bool,
    desc: u64,
    driver: u64,
    device: u64,
}

impl Default for Queue {
    fn default() -> Self {
        Queue {
            num: QUEUE_NUM_MAX,
            ready: false,
            desc: 0,
            driver: 0,
            device: 0,
        }
    }
}

fn set_low(v: &mut u64, low: u32) {
    *v = (*v & !0xffff_ffff) | u64::from(low);
}

fn set_high(v: &mut u64, high: u32) {
    *v = (*v & 0xffff_ffff) | (u64::from(high) << 32);
}

/// One virtio-mmio device.
pub struct VirtioMmio {
    kind: DeviceType,
    /// A backend has been attached once: the device ID shows.
    visible: bool,
    backend: Option<Box<dyn VirtioBackend>>,
    device_features: u64,
    config: Vec<u8>,
    config_generation: u32,
    num_queues: usize,
    queues: [Queue; MAX_QUEUES],
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    shm_sel: u32,
    /// Driver-set status bits (DEVICE_NEEDS_RESET kept apart).
    status: u32,
    needs_reset: bool,
    /// An activation went to the current backend since the last reset.
    activated: bool,
    /// Loaded from a saved domain that had the device running: the next
    /// attached backend resumes the queues from these positions.
    restored: Option<[QueueIndices; MAX_QUEUES]>,
    interrupt: Arc<VirtioInterrupt>,
}

/// One queue's saved registers and device-side positions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueState {
    pub num: u16,
    pub ready: bool,
    pub desc: u64,
    pub driver: u64,
    pub device: u64,
    pub indices: QueueIndices,
}

/// A virtio-mmio transport's saved registers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtioMmioState {
    /// The virtio device ID the slot serves (1 net, 2 blk).
    pub device_id: u8,
    pub visible: bool,
    pub device_features: u64,
    pub driver_features: u64,
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub queue_sel: u32,
    pub shm_sel: u32,
    /// Driver-set status bits (DEVICE_NEEDS_RESET apart).
    pub status: u32,
    pub needs_reset: bool,
    /// A backend had been activated (and not reset) when saved.
    pub activated: bool,
    pub interrupt_status: u32,
    pub config_generation: u32,
    pub num_queues: u8,
    pub queues: [QueueState; MAX_QUEUES],
}

const QUEUE_STATE_LEN: usize = 2 + 1 + 8 * 3 + 2 * 2;
const VIRTIO_MMIO_STATE_LEN: usize =
    1 + 1 + 8 + 8 + 4 * 5 + 1 + 1 + 4 + 4 + 1 + MAX_QUEUES * QUEUE_STATE_LEN;
const STATUS_BITS: u32 =
    status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK | status::FAILED;

impl VirtioMmioState {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(VIRTIO_MMIO_STATE_LEN);
        out.push(self.device_id);
        out.push(u8::from(self.visible));
        out.extend_from_slice(&self.device_features.to_le_bytes());
        out.extend_from_slice(&self.driver_features.to_le_bytes());
        for v in [
            self.device_features_sel,
            self.driver_features_sel,
            self.queue_sel,
            self.shm_sel,
            self.status,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.push(u8::from(self.needs_reset));
        out.push(u8::from(self.activated));
        out.extend_from_slice(&self.interrupt_status.to_le_bytes());
        out.extend_from_slice(&self.config_generation.to_le_bytes());
        out.push(self.num_queues);
        for q in &self.queues {
            out.extend_from_slice(&q.num.to_le_bytes());
            out.push(u8::from(q.ready));
            out.extend_from_slice(&q.desc.to_le_bytes());
            out.extend_from_slice(&q.driver.to_le_bytes());
            out.extend_from_slice(&q.device.to_le_bytes());
            out.extend_from_slice(&q.indices.next_avail.to_le_bytes());
            out.extend_from_slice(&q.indices.next_used.to_le_bytes());
        }
        out
    }

    /// Parse and check one transport's state (hostile input): the status
    /// bits in the order a driver can set them, features as negotiated,
    /// queue sizes the device accepts, nothing past the device's queues.
    pub fn decode(bytes: &[u8]) -> Result<Self, crate::state::DeviceStateError> {
        use crate::state::DeviceStateError;
        let bad = |why: String| DeviceStateError::field("virtio-mmio", why);
        let mut c = crate::state::exact("virtio-mmio", bytes, VIRTIO_MMIO_STATE_LEN)?;
        let device_id = c.u8();
        let visible = c.flag("virtio-mmio visible")?;
        let device_features = c.u64();
        let driver_features = c.u64();
        let device_features_sel = c.u32();
        let driver_features_sel = c.u32();
        let queue_sel = c.u32();
        let shm_sel = c.u32();
        let status = c.u32();
        let needs_reset = c.flag("virtio-mmio needs_reset")?;
        let activated = c.flag("virtio-mmio activated")?;
        let interrupt_status = c.u32();
        let config_generation = c.u32();
        let num_queues = c.u8();
        let mut queues = [QueueState::default(); MAX_QUEUES];
        for q in queues.iter_mut() {
            q.num = c.u16();
            q.ready = c.flag("virtio-mmio queue ready")?;
            q.desc = c.u64();
            q.driver = c.u64();
            q.device = c.u64();
            q.indices.next_avail = c.u16();
            q.indices.next_used = c.u16();
        }
        if !matches!(device_id, 1 | 2) {
            return Err(bad(format!("device ID {device_id}")));
        }
        if status & !STATUS_BITS != 0 {
            return Err(bad(format!("status {status:#x}")));
        }
        let has = |bit| status & bit != 0;
        if (has(status::DRIVER) && !has(status::ACKNOWLEDGE))
            || (has(status::FEATURES_OK) && !has(status::DRIVER))
            || (has(status::DRIVER_OK) && !has(status::FEATURES_OK))
        {
            return Err(bad(format!("status bits {status:#x} out of order")));
        }
        if has(status::FEATURES_OK)
            && (driver_features & !device_features != 0
                || driver_features & VIRTIO_F_VERSION_1 == 0)
        {
            return Err(bad(format!(
                "features {driver_features:#x} accepted of {device_features:#x}"
            )));
        }
        if device_features & VIRTIO_F_VERSION_1 == 0 {
            return Err(bad("VIRTIO_F_VERSION_1 not offered".into()));
        }
        if usize::from(num_queues) > MAX_QUEUES || (visible && num_queues == 0) {
            return Err(bad(format!("{num_queues} queues")));
        }
        if (activated || needs_reset) && !has(status::DRIVER_OK) {
            return Err(bad("activated or failed without DRIVER_OK".into()));
        }
        if activated && !visible {
            return Err(bad("activated without a backend".into()));
        }
        if interrupt_status & !(INT_VRING | INT_CONFIG) != 0 {
            return Err(bad(format!("interrupt status {interrupt_status:#x}")));
        }
        for (i, q) in queues.iter().enumerate() {
            if i >= usize::from(num_queues) {
                if *q != QueueState::default() {
                    return Err(bad(format!("queue {i} past the device's {num_queues}")));
                }
                continue;
            }
            if !q.num.is_power_of_two() || q.num > QUEUE_NUM_MAX {
                return Err(bad(format!("queue {i} size {}", q.num)));
            }
            if !q.ready && q.indices != QueueIndices::default() {
                return Err(bad(format!("queue {i} has positions but is not ready")));
            }
        }
        Ok(VirtioMmioState {
            device_id,
            visible,
            device_features,
            driver_features,
            device_features_sel,
            driver_features_sel,
            queue_sel,
            shm_sel,
            status,
            needs_reset,
            activated,
            interrupt_status,
            config_generation,
            num_queues,
            queues,
        })
    }
}

impl VirtioMmio {
    /// A device of type `kind` with no backend yet.
    pub fn new(kind: DeviceType, interrupt: Arc<VirtioInterrupt>) -> Self {
        VirtioMmio {
            kind,
            visible: false,
            backend: None,
            device_features: VIRTIO_F_VERSION_1,
            config: Vec::new(),
            config_generation: 0,
            num_queues: 0,
            queues: [Queue::default(); MAX_QUEUES],
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            shm_sel: 0,
            status: 0,
            needs_reset: false,
            activated: false,
            restored: None,
            interrupt,
        }
    }

    /// The transport's registers, for a save; the queue positions are the
    /// saver's to fill in (they live in guest memory and in the backend).
    pub fn save_state(&self) -> VirtioMmioState {
        let mut queues = [QueueState::default(); MAX_QUEUES];
        for (saved, q) in queues.iter_mut().zip(&self.queues).take(self.num_queues) {
            *saved = QueueState {
                num: q.num,
                ready: q.ready,
                desc: q.desc,
                driver: q.driver,
                device: q.device,
                indices: QueueIndices::default(),
            };
        }
        VirtioMmioState {
            device_id: self.kind.id() as u8,
            visible: self.visible,
            device_features: self.device_features,
            driver_features: self.driver_features,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            queue_sel: self.queue_sel,
            shm_sel: self.shm_sel,
            status: self.status,
            needs_reset: self.needs_reset,
            activated: self.activated && !self.needs_reset,
            interrupt_status: self.interrupt.status(),
            config_generation: self.config_generation,
            num_queues: self.num_queues as u8,
            queues,
        }
    }

    /// Take `state` (checked by [`VirtioMmioState::decode`]) into a device
    /// that has no backend yet. A device that was running waits for its
    /// backend: the next [`Self::attach`] resumes it where it was.
    pub fn load_state(
        &mut self,
        state: &VirtioMmioState,
    ) -> Result<(), crate::state::DeviceStateError> {
        use crate::state::DeviceStateError;
        if u32::from(state.device_id) != self.kind.id() {
            return Err(DeviceStateError::field(
                "virtio-mmio",
                format!(
                    "device ID {} in a virtio-{} slot",
                    state.device_id,
                    self.kind.name()
                ),
            ));
        }
        if self.backend.is_some() {
            return Err(DeviceStateError::field(
                "virtio-mmio",
                "the device already has a backend",
            ));
        }
        self.visible = state.visible;
        self.device_features = state.device_features;
        self.driver_features = state.driver_features;
        self.device_features_sel = state.device_features_sel;
        self.driver_features_sel = state.driver_features_sel;
        self.queue_sel = state.queue_sel;
        self.shm_sel = state.shm_sel;
        self.status = state.status;
        self.needs_reset = state.needs_reset;
        self.activated = false;
        self.config_generation = state.config_generation;
        self.num_queues = usize::from(state.num_queues).min(MAX_QUEUES);
        let mut indices = [QueueIndices::default(); MAX_QUEUES];
        for (i, q) in state.queues.iter().enumerate() {
            self.queues[i] = if i < self.num_queues {
                Queue {
                    num: q.num,
                    ready: q.ready,
                    desc: q.desc,
                    driver: q.driver,
                    device: q.device,
                }
            } else {
                Queue::default()
            };
            indices[i] = q.indices;
        }
        self.restored = state.activated.then_some(indices);
        self.interrupt.set(state.interrupt_status);
        Ok(())
    }

    pub fn kind(&self) -> DeviceType {
        self.kind
    }

    pub fn interrupt(&self) -> &Arc<VirtioInterrupt> {
        &self.interrupt
    }

    /// The Status register as the driver reads it.
    pub fn status(&self) -> u32 {
        self.status
            | if self.needs_reset {
                status::DEVICE_NEEDS_RESET
            } else {
                0
            }
    }

    /// The features the driver acked.
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    /// Attach (or replace) the backend with what it offers: feature bits
    /// (VIRTIO_F_VERSION_1 is added), the configuration space (cut to the
    /// device type's size) and the number of queues. A replaced backend is
    /// dropped without a reset; a driver that had the device running sees
    /// DEVICE_NEEDS_RESET.
    pub fn attach(
        &mut self,
        backend: Box<dyn VirtioBackend>,
        features: u64,
        config: &[u8],
        queues: usize,
    ) -> Result<(), AttachError> {
        if queues == 0 || queues > MAX_QUEUES {
            return Err(AttachError::Queues(queues));
        }
        if config.len() > MAX_CONFIG {
            return Err(AttachError::ConfigTooLong(config.len()));
        }
        let keep = config.len().min(self.kind.config_size());
        self.backend = Some(backend);
        let features = features | VIRTIO_F_VERSION_1;
        self.config = config[..keep].to_vec();
        self.activated = false;
        self.visible = true;
        if let Some(indices) = self.restored.take() {
            // The saved domain's driver has this device running: the
            // configuration (same disk, same MAC) keeps its generation.
            self.resume(features, queues, &indices);
            return Ok(());
        }
        self.device_features = features;
        self.config_generation = self.config_generation.wrapping_add(1);
        self.num_queues = queues;
        if self.status & status::DRIVER_OK != 0 {
            self.fail("backend replaced");
        }
        Ok(())
    }

    /// Hand a restored running device's queues to the new backend, from
    /// the saved positions. A backend that offers less than the driver
    /// took, or has other queues, cannot take over: the device needs a
    /// reset, as after any backend failure.
    fn resume(&mut self, features: u64, queues: usize, indices: &[QueueIndices; MAX_QUEUES]) {
        if self.driver_features & !features != 0 || queues != self.num_queues {
            self.device_features = features;
            self.num_queues = queues;
            self.fail("the new backend differs from the saved one");
            return;
        }
        self.device_features = features;
        let (configs, positions): (Vec<QueueConfig>, Vec<QueueIndices>) = self.queues
            [..self.num_queues]
            .iter()
            .zip(indices)
            .enumerate()
            .filter(|(_, (q, _))| q.ready)
            .map(|(i, (q, at))| {
                (
                    QueueConfig {
                        index: i as u16,
                        size: q.num,
                        desc: q.desc,
                        avail: q.driver,
                        used: q.device,
                    },
                    *at,
                )
            })
            .unzip();
        let result = match self.backend.as_mut() {
            Some(backend) => backend.resume(self.driver_features, &configs, &positions),
            None => Err(BackendError("no backend attached".into())),
        };
        match result {
            Ok(()) => {
                self.activated = true;
                // A completion the source signalled as it stopped may not
                // have reached the guest: have the driver look at its
                // rings (it finds nothing new if there was none).
                self.interrupt.raise(INT_VRING);
            }
            Err(e) => self.fail(&format!("resume failed: {e}")),
        }
    }

    /// The backend stopped serving (malformed queue, link closed): a
    /// running device needs a reset.
    pub fn backend_failed(&mut self, why: &str) {
        if self.status & status::DRIVER_OK != 0 {
            self.fail(why);
        }
    }

    /// Set DEVICE_NEEDS_RESET and tell the driver with a configuration
    /// change interrupt.
    fn fail(&mut self, why: &str) {
        if !self.needs_reset {
            debug!(
                device = self.kind.name(),
                "virtio device needs reset: {why}"
            );
            self.needs_reset = true;
            self.interrupt.raise(INT_CONFIG);
        }
    }

    /// The selected queue, if it exists.
    fn selected(&self) -> Option<usize> {
        let q = self.queue_sel as usize;
        (q < self.num_queues).then_some(q)
    }

    /// The selected queue, if the driver may configure it now.
    fn selected_writable(&mut self) -> Option<&mut Queue> {
        if self.status & status::DRIVER_OK != 0 {
            return None;
        }
        let q = self.selected()?;
        let queue = &mut self.queues[q];
        (!queue.ready).then_some(queue)
    }

    fn read_reg(&self, offset: u64) -> u32 {
        match offset {
            reg::MAGIC_VALUE => MAGIC_VALUE,
            reg::VERSION => MMIO_VERSION,
            reg::DEVICE_ID if self.visible => self.kind.id(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device_features as u32,
                1 => (self.device_features >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => self.selected().map_or(0, |_| u32::from(QUEUE_NUM_MAX)),
            reg::QUEUE_READY => self
                .selected()
                .map_or(0, |q| u32::from(self.queues[q].ready)),
            reg::INTERRUPT_STATUS => self.interrupt.status(),
            reg::STATUS => self.status(),
            // No shared memory regions: a length of -1 says so.
            reg::SHM_LEN_LOW | reg::SHM_LEN_HIGH | reg::SHM_BASE_LOW | reg::SHM_BASE_HIGH => {
                u32::MAX
            }
            reg::CONFIG_GENERATION => self.config_generation,
            // Write-only and unknown registers.
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = v,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            reg::DRIVER_FEATURES => {
                if self.status & status::FEATURES_OK != 0 {
                    debug!("virtio: DriverFeatures written after FEATURES_OK");
                    return;
                }
                match self.driver_features_sel {
                    0 => set_low(&mut self.driver_features, v),
                    1 => set_high(&mut self.driver_features, v),
                    // Feature bits past 63 are never offered.
                    _ => {}
                }
            }
            reg::QUEUE_SEL => self.queue_sel = v,
            reg::QUEUE_NUM => {
                let ok = v.is_power_of_two() && v <= u32::from(QUEUE_NUM_MAX);
                match self.selected_writable() {
                    Some(q) if ok => q.num = v as u16,
                    _ => debug!(v, "virtio: QueueNum write dropped"),
                }
            }
            reg::QUEUE_READY => {
                if v > 1 {
                    return;
                }
                if self.status & status::DRIVER_OK != 0 {
                    debug!("virtio: QueueReady written while DRIVER_OK");
                    return;
                }
                if let Some(q) = self.selected() {
                    self.queues[q].ready = v == 1;
                }
            }
            reg::QUEUE_NOTIFY => {
                let running = self.status & status::DRIVER_OK != 0 && !self.needs_reset;
                if running && self.activated && (v as usize) < self.num_queues {
                    if let Some(backend) = self.backend.as_mut() {
                        backend.notify(v as u16);
                    }
                } else {
                    trace!(v, "virtio: QueueNotify dropped");
                }
            }
            reg::INTERRUPT_ACK => self.interrupt.ack(v),
            reg::STATUS => self.write_status(v),
            reg::QUEUE_DESC_LOW
            | reg::QUEUE_DESC_HIGH
            | reg::QUEUE_DRIVER_LOW
            | reg::QUEUE_DRIVER_HIGH
            | reg::QUEUE_DEVICE_LOW
            | reg::QUEUE_DEVICE_HIGH => {
                let Some(q) = self.selected_writable() else {
                    debug!(offset, "virtio: queue address write dropped");
                    return;
                };
                match offset {
                    reg::QUEUE_DESC_LOW => set_low(&mut q.desc, v),
                    reg::QUEUE_DESC_HIGH => set_high(&mut q.desc, v),
                    reg::QUEUE_DRIVER_LOW => set_low(&mut q.driver, v),
                    reg::QUEUE_DRIVER_HIGH => set_high(&mut q.driver, v),
                    reg::QUEUE_DEVICE_LOW => set_low(&mut q.device, v),
                    _ => set_high(&mut q.device, v),
                }
            }
            reg::SHM_SEL => self.shm_sel = v,
            _ => trace!(
                offset,
                v,
                "virtio: write to a read-only or unknown register"
            ),
        }
    }

    fn features_acceptable(&self) -> bool {
        self.driver_features & !self.device_features == 0
            && self.driver_features & VIRTIO_F_VERSION_1 != 0
    }

    fn write_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        let v = v & !status::DEVICE_NEEDS_RESET;
        let old = self.status;
        if v & old != old {
            debug!(old, v, "virtio: driver tried to clear status bits");
            return;
        }
        let new = v & !old;
        let mut status = old;
        if new & status::FAILED != 0 {
            status |= status::FAILED;
        }
        if new & status::ACKNOWLEDGE != 0 {
            status |= status::ACKNOWLEDGE;
        }
        if new & status::DRIVER != 0 && status & status::ACKNOWLEDGE != 0 {
            status |= status::DRIVER;
        }
        if new & status::FEATURES_OK != 0 && status & status::DRIVER != 0 {
            if self.features_acceptable() {
                status |= status::FEATURES_OK;
            } else {
                debug!(
                    acked = self.driver_features,
                    offered = self.device_features,
                    "virtio: features refused"
                );
            }
        }
        self.status = status;
        if new & status::DRIVER_OK != 0
            && status & status::FEATURES_OK != 0
            && status & status::FAILED == 0
        {
            self.status |= status::DRIVER_OK;
            self.activate();
        }
    }

    fn activate(&mut self) {
        let queues: Vec<QueueConfig> = self.queues[..self.num_queues]
            .iter()
            .enumerate()
            .filter(|(_, q)| q.ready)
            .map(|(i, q)| QueueConfig {
                index: i as u16,
                size: q.num,
                desc: q.desc,
                avail: q.driver,
                used: q.device,
            })
            .collect();
        // Negotiated against an earlier backend's offer?
        let acceptable = self.features_acceptable();
        let result = match self.backend.as_mut() {
            Some(_) if !acceptable => {
                Err(BackendError("features not offered by this backend".into()))
            }
            Some(backend) => {
                self.activated = true;
                backend.activate(self.driver_features, &queues)
            }
            None => Err(BackendError("no backend attached".into())),
        };
        if let Err(e) = result {
            self.fail(&format!("activation failed: {e}"));
        }
    }

    /// The driver wrote 0 to Status: stop the backend if it was started,
    /// then return every register to its initial value.
    fn reset(&mut self) {
        if self.activated {
            if let Some(backend) = self.backend.as_mut() {
                backend.reset();
            }
        }
        self.activated = false;
        self.status = 0;
        self.needs_reset = false;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.shm_sel = 0;
        self.queues = [Queue::default(); MAX_QUEUES];
        self.restored = None;
        self.interrupt.clear();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|o| self.config.get(o))
                .copied()
                .unwrap_or(0);
        }
    }
}

impl BusDevice for VirtioMmio {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset >= reg::CONFIG {
            if matches!(data.len(), 1 | 2 | 4 | 8) {
                self.read_config(offset - reg::CONFIG, data);
            }
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            trace!(offset, len = data.len(), "virtio: odd register read");
            return;
        }
        data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<PlatformRequest> {
        if offset >= reg::CONFIG {
            // The configuration space is the backend's; none of the
            // fields kxen offers is writable.
            trace!(offset, "virtio: config write dropped");
            return None;
        }
        match <[u8; 4]>::try_from(data) {
            Ok(bytes) if offset.is_multiple_of(4) => {
                self.write_reg(offset, u32::from_le_bytes(bytes))
            }
            _ => trace!(offset, len = data.len(), "virtio: odd register write"),
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Call {
        Activate(u64, Vec<QueueConfig>),
        Resume(u64, Vec<QueueConfig>, Vec<QueueIndices>),
        Reset,
        Notify(u16),
    }

    #[derive(Clone, Default)]
    struct Fake {
        calls: Arc<Mutex<Vec<Call>>>,
        refuse: bool,
    }

    impl VirtioBackend for Fake {
        fn activate(&mut self, features: u64, queues: &[QueueConfig]) -> Result<(), BackendError> {
            self.calls
                .lock()
                .unwrap()
                .push(Call::Activate(features, queues.to_vec()));
            if self.refuse {
                Err(BackendError("refused".into()))
            } else {
                Ok(())
            }
        }
        fn reset(&mut self) {
            self.calls.lock().unwrap().push(Call::Reset);
        }
        fn resume(
            &mut self,
            features: u64,
            queues: &[QueueConfig],
            indices: &[QueueIndices],
        ) -> Result<(), BackendError> {
            self.calls.lock().unwrap().push(Call::Resume(
                features,
                queues.to_vec(),
                indices.to_vec(),
            ));
            if self.refuse {
                Err(BackendError("refused".into()))
            } else {
                Ok(())
            }
        }
        fn notify(&mut self, queue: u16) {
            self.calls.lock().unwrap().push(Call::Notify(queue));
        }
    }

    struct Rig {
        dev: VirtioMmio,
        fake: Fake,
        pulses: Arc<AtomicUsize>,
    }

    const BLK_SIZE_MAX: u64 = 1 << 1;

    fn rig_with(fake: Fake, queues: usize) -> Rig {
        let pulses = Arc::new(AtomicUsize::new(0));
        let p = pulses.clone();
        let irq = Arc::new(VirtioInterrupt::new(move || {
            p.fetch_add(1, Ordering::SeqCst);
        }));
        let mut dev = VirtioMmio::new(DeviceType::Blk, irq);
        let mut config = vec![0u8; 8];
        config[..8].copy_from_slice(&0x1000u64.to_le_bytes());
        dev.attach(Box::new(fake.clone()), BLK_SIZE_MAX, &config, queues)
            .unwrap();
        Rig { dev, fake, pulses }
    }

    fn rig() -> Rig {
        rig_with(Fake::default(), 2)
    }

    impl Rig {
        fn r(&mut self, offset: u64) -> u32 {
            let mut b = [0u8; 4];
            self.dev.read(offset, &mut b);
            u32::from_le_bytes(b)
        }
        fn w(&mut self, offset: u64, v: u32) {
            assert_eq!(self.dev.write(offset, &v.to_le_bytes()), None);
        }
        fn calls(&self) -> Vec<Call> {
            std::mem::take(&mut *self.fake.calls.lock().unwrap())
        }
        fn ack_features(&mut self, features: u64) {
            self.w(reg::DRIVER_FEATURES_SEL, 0);
            self.w(reg::DRIVER_FEATURES, features as u32);
            self.w(reg::DRIVER_FEATURES_SEL, 1);
            self.w(reg::DRIVER_FEATURES, (features >> 32) as u32);
        }
        fn setup_queue(&mut self, q: u32, num: u32, base: u64) {
            self.w(reg::QUEUE_SEL, q);
            self.w(reg::QUEUE_NUM, num);
            self.w(reg::QUEUE_DESC_LOW, base as u32);
            self.w(reg::QUEUE_DESC_HIGH, (base >> 32) as u32);
            self.w(reg::QUEUE_DRIVER_LOW, (base + 0x1000) as u32);
            self.w(reg::QUEUE_DRIVER_HIGH, ((base + 0x1000) >> 32) as u32);
            self.w(reg::QUEUE_DEVICE_LOW, (base + 0x2000) as u32);
            self.w(reg::QUEUE_DEVICE_HIGH, ((base + 0x2000) >> 32) as u32);
            self.w(reg::QUEUE_READY, 1);
        }
        /// The Linux driver's sequence up to DRIVER_OK.
        fn bring_up(&mut self) {
            self.w(reg::STATUS, 0);
            self.w(reg::STATUS, status::ACKNOWLEDGE);
            self.w(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
            self.ack_features(VIRTIO_F_VERSION_1 | BLK_SIZE_MAX);
            let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
            self.w(reg::STATUS, s);
            assert_eq!(self.r(reg::STATUS), s);
            self.setup_queue(0, 128, 0x1_0000_0000);
            self.setup_queue(1, 256, 0x20_0000);
            self.w(reg::STATUS, s | status::DRIVER_OK);
        }
    }

    #[test]
    fn identity_registers() {
        let mut rig = rig();
        assert_eq!(rig.r(reg::MAGIC_VALUE), MAGIC_VALUE);
        assert_eq!(rig.r(reg::VERSION), 2);
        assert_eq!(rig.r(reg::DEVICE_ID), 2);
        assert_eq!(rig.r(reg::VENDOR_ID), VENDOR_ID);
        assert_eq!(rig.r(reg::DEVICE_FEATURES), BLK_SIZE_MAX as u32);
        rig.w(reg::DEVICE_FEATURES_SEL, 1);
        assert_eq!(rig.r(reg::DEVICE_FEATURES), 1, "VERSION_1 is bit 32");
        rig.w(reg::DEVICE_FEATURES_SEL, 7);
        assert_eq!(rig.r(reg::DEVICE_FEATURES), 0);
        assert_eq!(rig.r(reg::QUEUE_NUM_MAX), 256);
        assert_eq!(rig.r(reg::SHM_LEN_LOW), u32::MAX);
        assert_eq!(rig.r(reg::CONFIG_GENERATION), 1);
    }

    #[test]
    fn hidden_until_a_backend_attaches() {
        let mut dev = VirtioMmio::new(DeviceType::Net, Arc::new(VirtioInterrupt::new(|| {})));
        let mut b = [0u8; 4];
        dev.read(reg::DEVICE_ID, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0);
        dev.read(reg::MAGIC_VALUE, &mut b);
        assert_eq!(u32::from_le_bytes(b), MAGIC_VALUE);
        dev.read(reg::QUEUE_NUM_MAX, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0, "no queues yet");
    }

    #[test]
    fn full_bring_up_activates_with_ready_queues() {
        let mut rig = rig();
        rig.bring_up();
        assert_eq!(
            rig.r(reg::STATUS),
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK
        );
        assert_eq!(
            rig.calls(),
            vec![Call::Activate(
                VIRTIO_F_VERSION_1 | BLK_SIZE_MAX,
                vec![
                    QueueConfig {
                        index: 0,
                        size: 128,
                        desc: 0x1_0000_0000,
                        avail: 0x1_0000_1000,
                        used: 0x1_0000_2000
                    },
                    QueueConfig {
                        index: 1,
                        size: 256,
                        desc: 0x20_0000,
                        avail: 0x20_1000,
                        used: 0x20_2000
                    },
                ]
            )]
        );
        rig.w(reg::QUEUE_NOTIFY, 1);
        rig.w(reg::QUEUE_NOTIFY, 2);
        rig.w(reg::QUEUE_NOTIFY, u32::MAX);
        assert_eq!(rig.calls(), vec![Call::Notify(1)]);
        // Reset tells the backend and clears everything.
        rig.w(reg::STATUS, 0);
        assert_eq!(rig.calls(), vec![Call::Reset]);
        assert_eq!(rig.r(reg::STATUS), 0);
        rig.w(reg::QUEUE_SEL, 0);
        assert_eq!(rig.r(reg::QUEUE_READY), 0);
        // A second reset has nothing to stop.
        rig.w(reg::STATUS, 0);
        assert_eq!(rig.calls(), vec![]);
    }

    #[test]
    fn unready_queues_are_not_activated() {
        let mut rig = rig();
        rig.w(reg::STATUS, status::ACKNOWLEDGE);
        rig.w(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        rig.ack_features(VIRTIO_F_VERSION_1);
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        rig.w(reg::STATUS, s);
        rig.setup_queue(1, 64, 0x4000);
        rig.w(reg::STATUS, s | status::DRIVER_OK);
        let calls = rig.calls();
        let Call::Activate(f, qs) = &calls[0] else {
            panic!("{calls:?}")
        };
        assert_eq!(*f, VIRTIO_F_VERSION_1);
        assert_eq!(qs.len(), 1);
        assert_eq!((qs[0].index, qs[0].size), (1, 64));
    }

    #[test]
    fn features_ok_needs_version_1_and_a_subset() {
        let mut rig = rig();
        let s = status::ACKNOWLEDGE | status::DRIVER;
        rig.w(reg::STATUS, status::ACKNOWLEDGE);
        rig.w(reg::STATUS, s);
        // Without VERSION_1.
        rig.ack_features(BLK_SIZE_MAX);
        rig.w(reg::STATUS, s | status::FEATURES_OK);
        assert_eq!(rig.r(reg::STATUS), s);
        // A bit not offered.
        rig.ack_features(VIRTIO_F_VERSION_1 | 1 << 5);
        rig.w(reg::STATUS, s | status::FEATURES_OK);
        assert_eq!(rig.r(reg::STATUS), s);
        // DRIVER_OK without FEATURES_OK does nothing.
        rig.w(reg::STATUS, s | status::DRIVER_OK);
        assert_eq!(rig.r(reg::STATUS), s);
        assert!(rig.calls().is_empty());
        rig.ack_features(VIRTIO_F_VERSION_1);
        rig.w(reg::STATUS, s | status::FEATURES_OK);
        assert_eq!(rig.r(reg::STATUS), s | status::FEATURES_OK);
        // Features are frozen now.
        rig.ack_features(VIRTIO_F_VERSION_1 | BLK_SIZE_MAX);
        assert_eq!(rig.dev.driver_features(), VIRTIO_F_VERSION_1);
        // Feature words past 1 are ignored.
        rig.w(reg::STATUS, 0);
        rig.w(reg::DRIVER_FEATURES_SEL, 2);
        rig.w(reg::DRIVER_FEATURES, u32::MAX);
        assert_eq!(rig.dev.driver_features(), 0);
    }

    #[test]
    fn status_bits_go_in_order_and_never_clear() {
        let mut rig = rig();
        rig.w(reg::STATUS, status::DRIVER);
        assert_eq!(rig.r(reg::STATUS), 0, "DRIVER before ACKNOWLEDGE");
        rig.w(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        assert_eq!(rig.r(reg::STATUS), status::ACKNOWLEDGE | status::DRIVER);
        rig.w(reg::STATUS, status::ACKNOWLEDGE);
        assert_eq!(
            rig.r(reg::STATUS),
            status::ACKNOWLEDGE | status::DRIVER,
            "clearing DRIVER is refused"
        );
        rig.w(
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::DEVICE_NEEDS_RESET,
        );
        assert_eq!(rig.r(reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
        rig.w(
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FAILED,
        );
        assert_ne!(rig.r(reg::STATUS) & status::FAILED, 0);
        rig.ack_features(VIRTIO_F_VERSION_1);
        rig.w(reg::STATUS, u32::MAX);
        assert_eq!(
            rig.r(reg::STATUS) & status::DRIVER_OK,
            0,
            "FAILED blocks it"
        );
        assert!(rig.calls().is_empty());
    }

    #[test]
    fn queue_registers_are_guarded() {
        let mut rig = rig();
        rig.w(reg::QUEUE_SEL, 0);
        for bad in [0, 3, 100, 512, u32::MAX] {
            rig.w(reg::QUEUE_NUM, bad);
        }
        rig.w(reg::QUEUE_NUM, 16);
        rig.w(reg::QUEUE_READY, 7);
        assert_eq!(rig.r(reg::QUEUE_READY), 0, "only 0 and 1");
        rig.w(reg::QUEUE_READY, 1);
        assert_eq!(rig.r(reg::QUEUE_READY), 1);
        // Ready queue: size and addresses are frozen.
        rig.w(reg::QUEUE_NUM, 32);
        rig.w(reg::QUEUE_DESC_LOW, 0x5000);
        // Out-of-range selector: nothing there.
        rig.w(reg::QUEUE_SEL, 2);
        assert_eq!(rig.r(reg::QUEUE_NUM_MAX), 0);
        rig.w(reg::QUEUE_READY, 1);
        assert_eq!(rig.r(reg::QUEUE_READY), 0);
        rig.w(reg::QUEUE_SEL, u32::MAX);
        rig.w(reg::QUEUE_NUM, 4);
        rig.w(reg::QUEUE_DESC_HIGH, 4);
        rig.w(reg::STATUS, status::ACKNOWLEDGE);
        rig.w(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        rig.ack_features(VIRTIO_F_VERSION_1);
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        rig.w(reg::STATUS, s);
        rig.w(reg::STATUS, s | status::DRIVER_OK);
        // While running, queue 1 cannot be set up.
        rig.setup_queue(1, 8, 0x8000);
        rig.w(reg::QUEUE_SEL, 0);
        rig.w(reg::QUEUE_READY, 0);
        assert_eq!(rig.r(reg::QUEUE_READY), 1);
        let calls = rig.calls();
        assert_eq!(
            calls,
            vec![Call::Activate(
                VIRTIO_F_VERSION_1,
                vec![QueueConfig {
                    index: 0,
                    size: 16,
                    desc: 0,
                    avail: 0,
                    used: 0
                }]
            )]
        );
    }

    #[test]
    fn refused_activation_needs_reset_and_interrupts() {
        let mut rig = rig_with(
            Fake {
                refuse: true,
                ..Default::default()
            },
            1,
        );
        rig.bring_up();
        assert_ne!(rig.r(reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
        assert_eq!(rig.r(reg::INTERRUPT_STATUS), INT_CONFIG);
        assert_eq!(rig.pulses.load(Ordering::SeqCst), 1);
        rig.w(reg::QUEUE_NOTIFY, 0);
        rig.w(reg::INTERRUPT_ACK, INT_CONFIG);
        assert_eq!(rig.r(reg::INTERRUPT_STATUS), 0);
        rig.w(reg::STATUS, 0);
        assert_eq!(rig.r(reg::STATUS), 0);
        // Reset is still sent: the backend may have started.
        let calls = rig.calls();
        assert!(matches!(calls[..], [Call::Activate(..), Call::Reset]));
    }

    #[test]
    fn backend_failure_and_replacement() {
        let mut rig = rig();
        rig.dev.backend_failed("not running");
        assert_eq!(rig.r(reg::STATUS), 0);
        rig.bring_up();
        rig.calls();
        rig.dev.interrupt().raise(INT_VRING);
        assert_eq!(rig.r(reg::INTERRUPT_STATUS), INT_VRING);
        rig.w(reg::INTERRUPT_ACK, INT_VRING | 0x100);
        rig.dev.backend_failed("malformed queue");
        rig.dev.backend_failed("twice");
        assert_ne!(rig.r(reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
        assert_eq!(rig.r(reg::INTERRUPT_STATUS), INT_CONFIG);
        assert_eq!(rig.pulses.load(Ordering::SeqCst), 2);
        rig.w(reg::STATUS, 0);
        assert_eq!(rig.calls(), vec![Call::Reset]);

        // Replacing a running backend: the old one gets no reset, the new
        // one none either (it never activated).
        rig.bring_up();
        rig.calls();
        let new = Fake::default();
        rig.dev
            .attach(Box::new(new.clone()), 0, &[1, 2, 3], 1)
            .unwrap();
        assert_ne!(rig.r(reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
        assert_eq!(rig.r(reg::CONFIG_GENERATION), 2);
        rig.w(reg::STATUS, 0);
        assert!(rig.calls().is_empty());
        assert!(new.calls.lock().unwrap().is_empty());
        assert_eq!(rig.r(reg::DEVICE_FEATURES), 0);
    }

    #[test]
    fn replacement_mid_negotiation_rechecks_features() {
        let mut rig = rig();
        rig.w(reg::STATUS, status::ACKNOWLEDGE);
        rig.w(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        rig.ack_features(VIRTIO_F_VERSION_1 | BLK_SIZE_MAX);
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        rig.w(reg::STATUS, s);
        let new = Fake::default();
        rig.dev.attach(Box::new(new.clone()), 0, &[], 1).unwrap();
        assert_eq!(rig.r(reg::STATUS), s, "not running: no reset needed");
        rig.w(reg::STATUS, s | status::DRIVER_OK);
        assert_ne!(rig.r(reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
        assert!(new.calls.lock().unwrap().is_empty());
        assert!(rig.calls().is_empty());
    }

    #[test]
    fn attach_validates() {
        let mut rig = rig();
        let fake = || Box::new(Fake::default());
        assert_eq!(
            rig.dev.attach(fake(), 0, &[], 0),
            Err(AttachError::Queues(0))
        );
        assert_eq!(
            rig.dev.attach(fake(), 0, &[], 9),
            Err(AttachError::Queues(9))
        );
        assert_eq!(
            rig.dev.attach(fake(), 0, &[0; 257], 1),
            Err(AttachError::ConfigTooLong(257))
        );
        // Cut to virtio_blk_config's size.
        let config: Vec<u8> = (0..=255).collect();
        rig.dev.attach(fake(), 0, &config, 1).unwrap();
        let mut b = [0u8; 1];
        rig.dev.read(reg::CONFIG + 95, &mut b);
        assert_eq!(b[0], 95);
        rig.dev.read(reg::CONFIG + 96, &mut b);
        assert_eq!(b[0], 0);
    }

    #[test]
    fn config_space_access_sizes() {
        let mut rig = rig();
        let mut b8 = [0xffu8; 8];
        rig.dev.read(reg::CONFIG, &mut b8);
        assert_eq!(u64::from_le_bytes(b8), 0x1000);
        let mut b2 = [0u8; 2];
        rig.dev.read(reg::CONFIG + 1, &mut b2);
        assert_eq!(u16::from_le_bytes(b2), 0x10);
        let mut b3 = [0xffu8; 3];
        rig.dev.read(reg::CONFIG, &mut b3);
        assert_eq!(b3, [0; 3], "3-byte access reads 0");
        let mut b4 = [0xffu8; 4];
        rig.dev.read(VIRTIO_MMIO_WINDOW - 4, &mut b4);
        assert_eq!(b4, [0; 4]);
        rig.dev.write(reg::CONFIG, &[0xaa]);
        rig.dev.read(reg::CONFIG, &mut b8);
        assert_eq!(u64::from_le_bytes(b8), 0x1000, "config is read-only");
    }

    #[test]
    fn odd_register_accesses_are_ignored() {
        let mut rig = rig();
        let mut b1 = [0xffu8; 1];
        rig.dev.read(reg::MAGIC_VALUE, &mut b1);
        assert_eq!(b1, [0]);
        let mut b4 = [0xffu8; 4];
        rig.dev.read(reg::MAGIC_VALUE + 2, &mut b4);
        assert_eq!(b4, [0; 4]);
        let mut b8 = [0xffu8; 8];
        rig.dev.read(reg::MAGIC_VALUE, &mut b8);
        assert_eq!(b8, [0; 8]);
        rig.dev.write(reg::STATUS, &[1]);
        rig.dev.write(reg::STATUS, &[1, 0, 0, 0, 0, 0, 0, 0]);
        rig.dev.write(reg::STATUS + 1, &[1, 0, 0, 0]);
        assert_eq!(rig.r(reg::STATUS), 0);
        // Read-only registers.
        rig.w(reg::MAGIC_VALUE, 0);
        rig.w(reg::DEVICE_ID, 9);
        rig.w(reg::INTERRUPT_STATUS, 3);
        rig.w(reg::CONFIG_GENERATION, 9);
        assert_eq!(rig.r(reg::MAGIC_VALUE), MAGIC_VALUE);
        assert_eq!(rig.r(reg::DEVICE_ID), 2);
        assert_eq!(rig.r(reg::CONFIG_GENERATION), 1);
        // Empty and huge buffers.
        rig.dev.read(0x200, &mut []);
        rig.dev.write(0x40, &[]);
        let mut big = [0xffu8; 64];
        rig.dev.read(0, &mut big);
        assert_eq!(big, [0; 64]);
        assert!(rig.calls().is_empty());
    }

    /// A tiny deterministic generator for the hostile-guest test.
    fn lcg(seed: &mut u64) -> u64 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *seed >> 33
    }

    #[test]
    fn random_access_storm_never_panics() {
        let mut rig = rig();
        let mut seed = 7;
        for _ in 0..200_000 {
            let offset = lcg(&mut seed) % (VIRTIO_MMIO_WINDOW + 8);
            let len = [0, 1, 2, 3, 4, 8][lcg(&mut seed) as usize % 6];
            let value = lcg(&mut seed) as u32 | (lcg(&mut seed) as u32) << 31;
            let offset = if lcg(&mut seed).is_multiple_of(2) {
                offset & !3 & 0xff
            } else {
                offset
            };
            let mut buf = [0u8; 8];
            if lcg(&mut seed).is_multiple_of(2) {
                rig.dev.read(offset, &mut buf[..len]);
            } else {
                buf[..4].copy_from_slice(&value.to_le_bytes());
                rig.dev.write(offset, &buf[..len]);
            }
            let s = rig.r(reg::STATUS);
            if s & status::DRIVER_OK != 0 {
                assert_ne!(s & status::FEATURES_OK, 0);
            }
        }
    }

    /// A fresh blk device as a restore makes it: no backend yet.
    fn unattached() -> (VirtioMmio, Arc<AtomicUsize>) {
        let pulses = Arc::new(AtomicUsize::new(0));
        let p = pulses.clone();
        let irq = Arc::new(VirtioInterrupt::new(move || {
            p.fetch_add(1, Ordering::SeqCst);
        }));
        (VirtioMmio::new(DeviceType::Blk, irq), pulses)
    }

    #[test]
    fn a_running_device_resumes_on_its_new_backend_from_the_saved_positions() {
        let mut rig = rig();
        rig.bring_up();
        rig.calls();
        let mut saved = rig.dev.save_state();
        assert!(saved.activated);
        saved.queues[0].indices = QueueIndices {
            next_avail: 7,
            next_used: 7,
        };
        let bytes = saved.encode();
        assert_eq!(VirtioMmioState::decode(&bytes).unwrap(), saved);

        let (mut dev, pulses) = unattached();
        dev.load_state(&saved).unwrap();
        let fake = Fake::default();
        let mut config = vec![0u8; 8];
        config[..8].copy_from_slice(&0x1000u64.to_le_bytes());
        dev.attach(Box::new(fake.clone()), BLK_SIZE_MAX, &config, 2)
            .unwrap();
        let calls = std::mem::take(&mut *fake.calls.lock().unwrap());
        let Call::Resume(features, queues, indices) = &calls[0] else {
            panic!("{calls:?}");
        };
        assert_eq!(*features, VIRTIO_F_VERSION_1 | BLK_SIZE_MAX);
        assert_eq!(queues.len(), 2);
        assert_eq!(queues[0].size, 128);
        assert_eq!(queues[0].desc, 0x1_0000_0000);
        assert_eq!(indices[0].next_avail, 7);
        assert_eq!(calls.len(), 1, "no reset, no fresh activation");
        assert_eq!(dev.status() & status::DEVICE_NEEDS_RESET, 0);
        assert_eq!(dev.status(), saved.status);
        assert!(pulses.load(Ordering::SeqCst) >= 1, "the driver looks again");
        // It serves: kicks reach the new backend.
        dev.write(reg::QUEUE_NOTIFY, &1u32.to_le_bytes());
        assert_eq!(fake.calls.lock().unwrap().last(), Some(&Call::Notify(1)));

        // A backend with fewer features than the driver took cannot.
        let (mut dev, _) = unattached();
        dev.load_state(&saved).unwrap();
        dev.attach(Box::new(Fake::default()), 0, &config, 2)
            .unwrap();
        assert_ne!(dev.status() & status::DEVICE_NEEDS_RESET, 0);
        // Nor one that refuses.
        let (mut dev, _) = unattached();
        dev.load_state(&saved).unwrap();
        let refusing = Fake {
            refuse: true,
            ..Fake::default()
        };
        dev.attach(Box::new(refusing), BLK_SIZE_MAX, &config, 2)
            .unwrap();
        assert_ne!(dev.status() & status::DEVICE_NEEDS_RESET, 0);
        // A net slot does not take a blk device's state.
        let mut net = VirtioMmio::new(DeviceType::Net, Arc::new(VirtioInterrupt::new(|| {})));
        assert!(net.load_state(&saved).is_err());
    }

    #[test]
    fn hostile_transport_states_are_refused() {
        let mut rig = rig();
        rig.bring_up();
        let good = rig.dev.save_state();
        let refused = |f: &dyn Fn(&mut VirtioMmioState)| {
            let mut s = good.clone();
            f(&mut s);
            VirtioMmioState::decode(&s.encode()).is_err()
        };
        assert!(refused(&|s| s.status = status::DRIVER_OK));
        assert!(refused(&|s| s.status |= 0x100));
        assert!(refused(&|s| s.driver_features |= 1 << 40));
        assert!(refused(&|s| s.num_queues = 9));
        assert!(refused(&|s| s.queues[0].num = 100));
        assert!(refused(&|s| s.queues[0].num = 512));
        assert!(refused(&|s| s.queues[5].desc = 1));
        assert!(refused(&|s| s.interrupt_status = 4));
        assert!(refused(&|s| s.device_id = 3));
        let bytes = good.encode();
        assert!(VirtioMmioState::decode(&bytes[1..]).is_err());
        let mut flag = bytes.clone();
        flag[1] = 2;
        assert!(VirtioMmioState::decode(&flag).is_err());
    }
}

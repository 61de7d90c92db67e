//! A hostile driver against kxen-vmm's virtio-mmio register model:
//! arbitrary reads and writes (any offset, size and value) mixed with
//! backend events (attach, refusal, failure, interrupts), checking the
//! transport's invariants after each step.

use std::sync::{Arc, Mutex};

use kxen_devices::virtio_mmio::{
    status, BackendError, DeviceType, QueueConfig, VirtioBackend, VirtioInterrupt, VirtioMmio,
    MAX_QUEUES, QUEUE_NUM_MAX, VIRTIO_F_VERSION_1, VIRTIO_MMIO_WINDOW,
};
use kxen_devices::BusDevice;

#[derive(Default)]
struct Seen {
    activations: usize,
    resets: usize,
    refuse: bool,
}

struct Fake {
    seen: Arc<Mutex<Seen>>,
    features: u64,
    queues: usize,
}

impl VirtioBackend for Fake {
    fn activate(&mut self, features: u64, queues: &[QueueConfig]) -> Result<(), BackendError> {
        assert_eq!(features & !(self.features | VIRTIO_F_VERSION_1), 0);
        assert_ne!(features & VIRTIO_F_VERSION_1, 0);
        for q in queues {
            assert!((q.index as usize) < self.queues);
            assert!(q.size.is_power_of_two() && q.size <= QUEUE_NUM_MAX);
        }
        let mut seen = self.seen.lock().unwrap();
        seen.activations += 1;
        if seen.refuse {
            Err(BackendError("refused".into()))
        } else {
            Ok(())
        }
    }
    fn reset(&mut self) {
        let mut seen = self.seen.lock().unwrap();
        seen.resets += 1;
        assert!(seen.resets <= seen.activations);
    }
    fn notify(&mut self, queue: u16) {
        assert!((queue as usize) < self.queues);
    }
}

fn take<const N: usize>(data: &mut &[u8]) -> Option<[u8; N]> {
    let (head, rest) = data.split_first_chunk::<N>()?;
    *data = rest;
    Some(*head)
}

/// One fuzz input; panics on any broken invariant. True when the input
/// drove the device to DRIVER_OK.
pub fn virtio_mmio_regs(data: &[u8]) -> bool {
    let mut data = data;
    let kind = match take::<1>(&mut data) {
        Some([k]) if k & 1 == 1 => DeviceType::Net,
        Some(_) => DeviceType::Blk,
        None => return false,
    };
    let irq = Arc::new(VirtioInterrupt::new(|| {}));
    let mut dev = VirtioMmio::new(kind, irq.clone());
    // The current backend's counters.
    let mut seen = Arc::new(Mutex::new(Seen::default()));
    let mut driver_ok = false;
    while let Some([op, a, b, c]) = take::<4>(&mut data) {
        let offset = u64::from(u16::from_le_bytes([a, b])) % (VIRTIO_MMIO_WINDOW + 1);
        match op % 16 {
            // Mostly aligned 32-bit register traffic.
            0..=5 => {
                let Some(v) = take::<4>(&mut data) else { break };
                dev.write(offset & 0xfc, &v);
            }
            6..=8 => {
                let mut buf = [0u8; 4];
                dev.read(offset & 0xfc, &mut buf);
            }
            // Any offset, any size up to 8 bytes.
            9 => {
                let mut buf = [0u8; 8];
                let len = usize::from(c % 9).min(VIRTIO_MMIO_WINDOW as usize - offset as usize);
                dev.read(offset, &mut buf[..len]);
            }
            10 => {
                let Some(v) = take::<8>(&mut data) else { break };
                let len = usize::from(c % 9).min(VIRTIO_MMIO_WINDOW as usize - offset as usize);
                dev.write(offset, &v[..len]);
            }
            // (Re)attach a backend.
            11 => {
                let Some(f) = take::<8>(&mut data) else { break };
                let features = u64::from_le_bytes(f);
                let queues = usize::from(c) % (MAX_QUEUES + 2);
                let config: Vec<u8> = (0..usize::from(a)).map(|i| i as u8).collect();
                let fresh = Arc::new(Mutex::new(Seen::default()));
                let fake = Fake {
                    seen: fresh.clone(),
                    features,
                    queues,
                };
                let ok = dev
                    .attach(Box::new(fake), features, &config, queues)
                    .is_ok();
                assert_eq!(ok, (1..=MAX_QUEUES).contains(&queues));
                if ok {
                    seen = fresh;
                }
            }
            12 => seen.lock().unwrap().refuse = c & 1 == 1,
            13 => dev.backend_failed("fuzz"),
            14 => irq.raise(u32::from(c & 3)),
            _ => {
                dev.write(0x70, &0u32.to_le_bytes());
            }
        }
        let s = dev.status();
        driver_ok |= s & status::DRIVER_OK != 0;
        if s & status::DRIVER_OK != 0 {
            assert_ne!(s & status::FEATURES_OK, 0);
        }
        if s & status::FEATURES_OK != 0 {
            assert_ne!(s & status::DRIVER, 0);
            assert_ne!(dev.driver_features() & VIRTIO_F_VERSION_1, 0);
        }
        if s & status::DRIVER != 0 {
            assert_ne!(s & status::ACKNOWLEDGE, 0);
        }
    }
    driver_ok
}

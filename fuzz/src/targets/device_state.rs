//! The HVM device models' state from a hostile restore image: the
//! device-state section kxen-vmm appends to its Xen state (UART, i8042,
//! ACPI PM, PCI configuration, virtio-mmio transports with their queue
//! positions), parsed and then loaded into fresh devices.

use std::sync::Arc;

use kxen_devices::acpi_pm::AcpiPm;
use kxen_devices::i8042::I8042;
use kxen_devices::pci::PciBus;
use kxen_devices::serial::Uart;
use kxen_devices::state::{encode, parse};
use kxen_devices::virtio_mmio::{
    reg, BackendError, DeviceType, QueueConfig, QueueIndices, VirtioBackend, VirtioInterrupt,
    VirtioMmio,
};
use kxen_devices::BusDevice;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// A backend that takes whatever it is given.
struct Accepting;

impl VirtioBackend for Accepting {
    fn activate(&mut self, _: u64, queues: &[QueueConfig]) -> Result<(), BackendError> {
        assert!(queues.len() <= kxen_devices::virtio_mmio::MAX_QUEUES);
        Ok(())
    }
    fn reset(&mut self) {}
    fn notify(&mut self, _: u16) {}
    fn resume(
        &mut self,
        _: u64,
        queues: &[QueueConfig],
        indices: &[QueueIndices],
    ) -> Result<(), BackendError> {
        assert_eq!(queues.len(), indices.len());
        for q in queues {
            assert!(q.size.is_power_of_two() && q.size <= 256, "{q:?}");
        }
        Ok(())
    }
}

/// One fuzz input; panics on a broken invariant: an accepted section
/// encodes back to a section that parses as the same state, and loading
/// it into fresh devices (then attaching a backend to each virtio slot
/// and reading every register) neither panics nor leaves a device with
/// state the parser would refuse. True when the section was accepted.
pub fn device_state(data: &[u8]) -> bool {
    let Ok(state) = parse(data) else {
        return false;
    };
    assert_eq!(parse(&encode(&state)).as_ref(), Ok(&state));

    if let Some(s) = &state.uart {
        let irq = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let mut uart = Uart::new(irq, Box::new(std::io::sink()));
        uart.load_state(s).expect("a parsed UART state loads");
        assert_eq!(uart.save_state(), *s);
        let mut b = [0u8; 1];
        for offset in 0..8 {
            uart.read(offset, &mut b);
        }
    }
    if let Some(s) = &state.i8042 {
        let mut kbd = I8042::new(None);
        kbd.load_state(s);
        assert_eq!(kbd.save_state(), *s);
        let mut b = [0u8; 1];
        kbd.read(0, &mut b);
        kbd.read(4, &mut b);
    }
    if let Some(s) = &state.acpi_pm {
        let mut pm = AcpiPm::new();
        pm.load_state(s);
        let again = pm.save_state();
        assert_eq!(
            (again.pm1_enable, again.pm1_control, again.gpe0_enable),
            (s.pm1_enable, s.pm1_control, s.gpe0_enable)
        );
    }
    if let Some(s) = &state.pci {
        let mut bus = PciBus::new();
        bus.add(2, kxen_devices::xen_platform::platform_function());
        if bus.load_state(s).is_ok() {
            assert_eq!(bus.save_state(), *s);
        }
    }
    for (_, s) in &state.virtio {
        for kind in [DeviceType::Blk, DeviceType::Net] {
            let mut dev = VirtioMmio::new(kind, Arc::new(VirtioInterrupt::new(|| {})));
            if dev.load_state(s).is_err() {
                assert_ne!(u32::from(s.device_id), kind.id());
                continue;
            }
            let queues = usize::from(s.num_queues).max(1);
            dev.attach(Box::new(Accepting), s.device_features, &[], queues)
                .expect("a backend attaches");
            let mut b = [0u8; 4];
            for offset in (0..0x100).step_by(4) {
                dev.read(offset, &mut b);
            }
            dev.write(reg::QUEUE_NOTIFY, &0u32.to_le_bytes());
            // What the device holds now is a state the parser takes.
            let saved = dev.save_state();
            let mut section = kxen_devices::state::DeviceState::default();
            section.virtio.push((0, saved));
            assert!(parse(&encode(&section)).is_ok(), "{:?}", section.virtio);
        }
    }
    true
}

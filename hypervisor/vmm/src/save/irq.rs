//! The interrupt wires ↔ Xen's PCI_IRQ, ISA_IRQ and PCI_LINK save records
//! (`struct hvm_hw_pci_irqs`, `hvm_hw_isa_irqs`, `hvm_hw_pci_link`).
//!
//! Xen keeps the level of every PCI INTx wire (32 devices × 4 pins) and
//! ISA IRQ wire, and the PCI-ISA bridge's four link routes, because its
//! device model raises and lowers those wires and the levels must survive
//! a restore. **KVM exposes no wire levels**: KVM_IRQ_LINE only writes a
//! level, the per-source levels KVM ORs into each GSI stay inside the
//! kernel, and KVM_GET_IRQCHIP's PIC `last_irr` and IOAPIC `irr` are
//! edge detectors and pending requests, not wires. What kxen saves is
//! nonetheless exact, not a guess: every kxen interrupt source is a pulse
//! with no wire held between injections. The UART, the i8042 and the
//! virtio transports raise their GSIs through plain irqfds (no resample
//! fd), which KVM asserts and deasserts in one step; the in-kernel PIT
//! does the same on IRQ 0; kxen drives no PCI INTx wire at all (the Xen
//! platform device advertises INTA, but kxen delivers the Xen upcall by
//! vector, and Xen itself lowers a callback INTx before saving it); and
//! kxen has no PCI-ISA bridge, so its links are unrouted. With the vCPUs
//! stopped every wire is low: the records are all zero, what Xen writes
//! for an idle guest whose firmware never routed a link.
//!
//! On load the checks Xen's `irq_check_link` makes are made (link padding
//! zero, every route an ISA IRQ below 16), ISA wires beyond IRQ 15 are
//! refused, and so is any asserted wire: kxen has no device that would
//! ever lower it again (a level-triggered line left high would storm the
//! guest), and on Xen such a wire belongs to a device-model device whose
//! state this image cannot hand to kxen's devices. An interrupt already
//! requested travels in the PIC's IRR and the IOAPIC's Remote IRR bits.
//! Link routes are accepted and returned; with no INTx ever raised they
//! route nothing.
use thiserror::Error;
use xen_abi::hvm_save::{HwIsaIrqs, HwPciIrqs, HwPciLink};

/// The ISA IRQs, and so the meaningful bits of the ISA_IRQ record.
pub const ISA_IRQS: u32 = 16;

/// What the three records say, once checked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IrqWires {
    /// The PCI-ISA bridge's link routes: an ISA IRQ, 0 for none.
    pub link_routes: [u8; 4],
}

/// IRQ wire records refused on load.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum IrqLoadError {
    #[error("PCI_LINK padding byte {index} is {value:#x}, not 0")]
    LinkPadding { index: usize, value: u8 },
    #[error("PCI_LINK link {link} routes to IRQ {route}, beyond the ISA IRQs")]
    LinkRoute { link: usize, route: u8 },
    #[error("ISA_IRQ sets bits beyond IRQ 15 ({0:#x})")]
    IsaBeyond16(u64),
    #[error("ISA IRQ {0} is asserted; kxen's devices pulse their lines and none would lower it")]
    IsaAsserted(u32),
    #[error("PCI device {device} INT{pin} is asserted; kxen drives no PCI INTx wire")]
    PciAsserted { device: u32, pin: char },
}

/// The three records for a kxen domain whose vCPUs are stopped (see the
/// module's comment for why they are all zero).
pub fn save_irq_records() -> (HwPciIrqs, HwIsaIrqs, HwPciLink) {
    (
        HwPciIrqs::default(),
        HwIsaIrqs::default(),
        HwPciLink::default(),
    )
}

/// The three records, checked.
pub fn load_irq_records(
    pci: &HwPciIrqs,
    isa: &HwIsaIrqs,
    link: &HwPciLink,
) -> Result<IrqWires, IrqLoadError> {
    for (index, &value) in link.pad0.iter().enumerate() {
        if value != 0 {
            return Err(IrqLoadError::LinkPadding { index, value });
        }
    }
    for (index, &route) in link.route.iter().enumerate() {
        if u32::from(route) >= ISA_IRQS {
            return Err(IrqLoadError::LinkRoute { link: index, route });
        }
    }
    if isa.wires >> ISA_IRQS != 0 {
        return Err(IrqLoadError::IsaBeyond16(isa.wires));
    }
    if isa.wires != 0 {
        return Err(IrqLoadError::IsaAsserted(isa.wires.trailing_zeros()));
    }
    for (word, &bits) in pci.wires.iter().enumerate() {
        if bits != 0 {
            // Bit dev * 4 + intx of the 128-bit bitmap.
            let wire = word as u32 * 64 + bits.trailing_zeros();
            let pin = char::from(b'A' + (wire % 4) as u8);
            return Err(IrqLoadError::PciAsserted {
                device: wire / 4,
                pin,
            });
        }
    }
    Ok(IrqWires {
        link_routes: link.route,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_domain_saves_zeros_and_loads_them() {
        let (pci, isa, link) = save_irq_records();
        assert_eq!(pci.wires, [0, 0]);
        assert_eq!(isa.wires, 0);
        assert_eq!((link.route, link.pad0), ([0; 4], [0; 4]));
        assert_eq!(load_irq_records(&pci, &isa, &link), Ok(IrqWires::default()));
    }

    #[test]
    fn routed_links_are_kept() {
        let (pci, isa, _) = save_irq_records();
        let link = HwPciLink {
            route: [5, 10, 11, 0],
            pad0: [0; 4],
        };
        assert_eq!(
            load_irq_records(&pci, &isa, &link),
            Ok(IrqWires {
                link_routes: [5, 10, 11, 0]
            })
        );
    }

    #[test]
    fn hostile_records_are_refused() {
        let (pci, isa, link) = save_irq_records();
        let bad_pad = HwPciLink {
            pad0: [0, 0, 7, 0],
            ..link
        };
        assert_eq!(
            load_irq_records(&pci, &isa, &bad_pad),
            Err(IrqLoadError::LinkPadding { index: 2, value: 7 })
        );
        for route in [16u8, 0x80, 0xff] {
            let bad_route = HwPciLink {
                route: [0, route, 0, 0],
                ..link
            };
            assert_eq!(
                load_irq_records(&pci, &isa, &bad_route),
                Err(IrqLoadError::LinkRoute { link: 1, route })
            );
        }
        for wires in [1 << 16, 1 << 63] {
            assert_eq!(
                load_irq_records(&pci, &HwIsaIrqs { wires }, &link),
                Err(IrqLoadError::IsaBeyond16(wires))
            );
        }
        assert_eq!(
            load_irq_records(&pci, &HwIsaIrqs { wires: 1 << 9 }, &link),
            Err(IrqLoadError::IsaAsserted(9))
        );
        // Device 3 INTB is bit 13; device 31 INTD is bit 127.
        assert_eq!(
            load_irq_records(
                &HwPciIrqs {
                    wires: [1 << 13, 0]
                },
                &isa,
                &link
            ),
            Err(IrqLoadError::PciAsserted {
                device: 3,
                pin: 'B'
            })
        );
        assert_eq!(
            load_irq_records(
                &HwPciIrqs {
                    wires: [0, 1 << 63]
                },
                &isa,
                &link
            ),
            Err(IrqLoadError::PciAsserted {
                device: 31,
                pin: 'D'
            })
        );
    }
}

//! ACPI tables for kxen domains: RSDP, XSDT, MADT, FADT and DSDT.
//!
//! They tell a guest how many vCPUs it has (MADT local APICs), how to start
//! them and how to power off and reset the domain:
//!
//! * **vCPU start.** APs are started through the MADT *multiprocessor
//!   wakeup* mailbox (ACPI 6.4, structure type 0x10) rather than INIT/SIPI.
//!   The AP is handed over already in 64-bit mode on identity-mapped page
//!   tables, so no real-mode code ever runs. That matters on PVM hosts,
//!   whose instruction emulator cannot run real mode, and Linux
//!   (`acpi_wakeup_cpu`) and other kernels use the mailbox unchanged.
//! * **Power.** For PVH domains the FADT declares a hardware-reduced
//!   platform whose sleep control register and reset register are I/O
//!   ports the VMM decodes; the DSDT's `_S5` object gives the soft-off
//!   sleep type.
//! * **HVM domains** get a PC-style FADT instead ([`Platform::Pc`]): PM1a
//!   event and control blocks (S5 through SLP_TYP/SLP_EN), an ACPI PM
//!   timer and SCI 9. A hardware-reduced platform has no legacy PIC and no
//!   PIT timer in Linux's eyes, and a stock kernel on an AMD host then has
//!   nothing to calibrate its TSC or local APIC timer against. The PM
//!   timer is that reference; the ports are Xen's HVM ones.
//! * **virtio-mmio devices** (HVM only) are declared in the DSDT as
//!   `\_SB.VRnn` with `_HID` "LNRO0005", the ID Linux's virtio_mmio driver
//!   binds through ACPI: a register window and one edge-triggered,
//!   active-high interrupt each ([`VirtioMmioDevice`]).
//!
//! Everything lives in the legacy BIOS area below 1 MiB, which the memory
//! map reserves, so the legacy RSDP scan finds the tables as well as the
//! PVH `rsdp_paddr`.

use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::{aml, fadt, rsdp::Rsdp, sdt::Sdt, xsdt::XSDT, Aml, AmlSink};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::LoaderError;

/// The reserved firmware window holding the tables, the AP page tables and
/// the wakeup mailbox.
pub const FIRMWARE_BASE: u64 = 0xe_0000;
pub const FIRMWARE_SIZE: u64 = 0x2_0000;
/// Where the RSDP sits (16-byte aligned, inside the legacy scan range).
pub const RSDP_GPA: u64 = 0xe_0000;
const XSDT_GPA: u64 = 0xe_0040;
const FADT_GPA: u64 = 0xe_0100;
const MADT_GPA: u64 = 0xe_0400;
/// After the MADT (at most about 2 KiB with 255 vCPUs), with room for
/// the virtio-mmio devices.
const DSDT_GPA: u64 = 0xe_1000;
/// PML4, PDPT and four PDs identity-mapping the first 4 GiB, for APs
/// started in long mode and for an HVM kernel's 64-bit entry.
pub const AP_PAGE_TABLES_GPA: u64 = 0xe_8000;
/// The multiprocessor wakeup mailbox (4 KiB aligned, 4 KiB long).
pub const MP_WAKE_MAILBOX_GPA: u64 = 0xe_f000;
/// Mailbox command: wake the AP named by `apic_id` at `wakeup_vector`.
pub const MP_WAKE_COMMAND_WAKEUP: u16 = 1;

/// Hardware-reduced sleep control register (8-bit I/O port).
pub const SLEEP_CONTROL_PORT: u16 = 0x600;
/// Hardware-reduced sleep status register (8-bit I/O port).
pub const SLEEP_STATUS_PORT: u16 = 0x601;
/// The reset register: the PC's reset control port, as on real chipsets.
pub const RESET_PORT: u16 = 0xcf9;
pub const RESET_VALUE: u8 = 0x06;
/// The sleep type `_S5` declares; SLP_TYP is bits 2..4 of the control
/// register and SLP_EN bit 5.
pub const SLEEP_TYPE_S5: u8 = 5;
const SLEEP_ENABLE: u8 = 1 << 5;

/// The PC platform's ACPI register blocks (Xen's HVM port layout).
pub const PM1A_EVT_PORT: u16 = 0x1f40;
pub const PM1A_CNT_PORT: u16 = 0x1f44;
pub const PM_TMR_PORT: u16 = 0x1f48;
pub const GPE0_PORT: u16 = 0x1f4c;
/// The SCI's ISA interrupt.
pub const SCI_IRQ: u16 = 9;

/// Which kind of ACPI platform the tables describe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    /// Hardware-reduced (PVH domains).
    HwReduced,
    /// Fixed-hardware PC (HVM domains): PM1a blocks, PM timer, SCI.
    Pc,
}

/// A virtio-mmio device for the DSDT: its register window and the GSI of
/// its interrupt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtioMmioDevice {
    pub base: u32,
    pub len: u32,
    pub gsi: u32,
}

/// The ACPI HID Linux's virtio_mmio driver matches.
pub const VIRTIO_MMIO_HID: &str = "LNRO0005";

/// Most virtio-mmio devices the DSDT names (`VR00`..`VRFF`).
const MAX_VIRTIO_DEVICES: usize = 256;

/// KVM's in-kernel IOAPIC.
const IOAPIC_GPA: u32 = 0xfec0_0000;
const LAPIC_GPA: u32 = 0xfee0_0000;

const OEM_ID: [u8; 6] = *b"KXEN  ";
/// The CMOS register holding the century.
const CMOS_CENTURY: u8 = 0x32;
const OEM_REVISION: u32 = 1;

/// What a write to the sleep control register asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SleepRequest {
    /// SLP_EN with the `_S5` type: power off.
    SoftOff,
    /// Any other sleep type: not supported, ignored.
    Unsupported(u8),
}

/// Decode a sleep control register write; `None` if SLP_EN is clear.
pub fn decode_sleep_control(value: u8) -> Option<SleepRequest> {
    if value & SLEEP_ENABLE == 0 {
        return None;
    }
    let kind = (value >> 2) & 0x7;
    Some(if kind == SLEEP_TYPE_S5 {
        SleepRequest::SoftOff
    } else {
        SleepRequest::Unsupported(kind)
    })
}

/// MADT multiprocessor wakeup structure (type 0x10).
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, IntoBytes, Immutable)]
struct MpWakeup {
    kind: u8,
    length: u8,
    mailbox_version: u16,
    reserved: u32,
    mailbox_address: u64,
}

/// MADT interrupt source override (type 2).
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, IntoBytes, Immutable)]
struct InterruptOverride {
    kind: u8,
    length: u8,
    bus: u8,
    source: u8,
    gsi: u32,
    flags: u16,
}

impl Aml for InterruptOverride {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(self.as_bytes());
    }
}

impl Aml for MpWakeup {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(self.as_bytes());
    }
}

/// The OS-written head of the wakeup mailbox.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct MpWakeMailbox {
    pub command: u16,
    pub reserved: u16,
    pub apic_id: u32,
    pub wakeup_vector: u64,
}

impl MpWakeMailbox {
    pub const SIZE: usize = 16;

    pub fn from_bytes(bytes: &[u8; Self::SIZE]) -> Self {
        Self::read_from_bytes(bytes).unwrap_or_default()
    }
}

fn to_bytes(table: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

fn table_id(name: &[u8; 4]) -> [u8; 8] {
    let mut id = *b"KXEN    ";
    id[4..].copy_from_slice(name);
    id
}

/// `\_SB` with one `VRnn` device per virtio-mmio window: `_HID`
/// "LNRO0005", `_UID` n, and `_CRS` with the window and its interrupt.
fn virtio_scope(devices: &[VirtioMmioDevice]) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut body = Vec::new();
    for (i, dev) in devices.iter().enumerate() {
        let hid = aml::Name::new("_HID".into(), &VIRTIO_MMIO_HID);
        let uid = aml::Name::new("_UID".into(), &(i as u32));
        let window = aml::Memory32Fixed::new(true, dev.base, dev.len);
        // Consumer, edge-triggered, active high, exclusive.
        let irq = aml::Interrupt::new(true, true, false, false, dev.gsi);
        let crs = aml::Name::new(
            "_CRS".into(),
            &aml::ResourceTemplate::new(vec![&window, &irq]),
        );
        let name = format!("VR{i:02X}");
        aml::Device::new(name.as_str().into(), vec![&hid, &uid, &crs]).to_aml_bytes(&mut body);
    }
    struct Raw(Vec<u8>);
    impl Aml for Raw {
        fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
            sink.vec(&self.0);
        }
    }
    let body = Raw(body);
    aml::Scope::new("\\_SB_".into(), vec![&body]).to_aml_bytes(&mut bytes);
    bytes
}

/// Build the tables for `vcpus` vCPUs (APIC IDs 0..vcpus) and, on the PC
/// platform, `virtio` devices. Returns `(gpa, bytes)` pairs.
pub fn build_tables(
    vcpus: u32,
    platform: Platform,
    virtio: &[VirtioMmioDevice],
) -> Result<Vec<(u64, Vec<u8>)>, LoaderError> {
    if vcpus == 0 || vcpus > 255 {
        return Err(LoaderError::NoRoom("ACPI MADT (1..=255 vCPUs)"));
    }
    if virtio.len() > MAX_VIRTIO_DEVICES {
        return Err(LoaderError::NoRoom("ACPI DSDT (virtio devices)"));
    }
    // DSDT: the soft-off sleep type and the virtio-mmio devices.
    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, table_id(b"DSDT"), OEM_REVISION);
    let s5 = aml::Name::new(
        "_S5_".into(),
        &aml::Package::new(vec![&SLEEP_TYPE_S5, &SLEEP_TYPE_S5, &aml::ZERO, &aml::ZERO]),
    );
    dsdt.append_slice(&to_bytes(&s5));
    if platform == Platform::Pc && !virtio.is_empty() {
        dsdt.append_slice(&virtio_scope(virtio));
    }

    let fadt = fadt::FADTBuilder::new(OEM_ID, table_id(b"FACP"), OEM_REVISION)
        .dsdt_64(DSDT_GPA)
        .flag(fadt::Flags::ResetRegSup)
        .flag(fadt::Flags::Headless);
    let port = |port: u16, bits: u8| {
        let size = match bits {
            8 => AccessSize::ByteAccess,
            16 => AccessSize::WordAccess,
            _ => AccessSize::DwordAccess,
        };
        GAS::new(AddressSpace::SystemIo, bits, 0, size, port.into())
    };
    let mut fadt = match platform {
        Platform::HwReduced => {
            let mut fadt = fadt.flag(fadt::Flags::HwReducedAcpi);
            fadt.sleep_control_reg = port(SLEEP_CONTROL_PORT, 8);
            fadt.sleep_status_reg = port(SLEEP_STATUS_PORT, 8);
            fadt
        }
        Platform::Pc => {
            // No SMI command port: ACPI mode is always on (SCI_EN reads 1).
            let mut fadt = fadt
                .flag(fadt::Flags::TmrValExt)
                .flag(fadt::Flags::Wbinvd)
                .flag(fadt::Flags::PwrButton)
                .flag(fadt::Flags::SlpButton);
            fadt.sci_int = SCI_IRQ.into();
            fadt.pm1a_evt_blk = u32::from(PM1A_EVT_PORT).into();
            fadt.pm1a_cnt_blk = u32::from(PM1A_CNT_PORT).into();
            fadt.pm_tmr_blk = u32::from(PM_TMR_PORT).into();
            fadt.gpe0_blk = u32::from(GPE0_PORT).into();
            fadt.pm1_evt_len = 4;
            fadt.pm1_cnt_len = 2;
            fadt.pm_tmr_len = 4;
            fadt.gpe0_blk_len = 4;
            fadt.x_pm1a_evt_blk = port(PM1A_EVT_PORT, 32);
            fadt.x_pm1a_cnt_blk = port(PM1A_CNT_PORT, 16);
            fadt.x_pm_tmr_blk = port(PM_TMR_PORT, 32);
            fadt.x_gpe0_blk = port(GPE0_PORT, 32);
            fadt.century = CMOS_CENTURY;
            fadt
        }
    };
    fadt.reset_reg = port(RESET_PORT, 8);
    fadt.reset_value = RESET_VALUE;
    let fadt = fadt.finalize();

    let mut madt = MADT::new(
        OEM_ID,
        table_id(b"APIC"),
        OEM_REVISION,
        LocalInterruptController::Address(LAPIC_GPA),
    );
    for id in 0..vcpus {
        madt.add_structure(ProcessorLocalApic::new(
            id as u8,
            id as u8,
            EnabledStatus::Enabled,
        ));
    }
    madt.add_structure(IoApic::new(0, IOAPIC_GPA, 0));
    if platform == Platform::Pc {
        // The SCI is level-triggered, active high, as on Xen and QEMU.
        madt.add_structure(InterruptOverride {
            kind: 2,
            length: 10,
            bus: 0,
            source: SCI_IRQ as u8,
            gsi: SCI_IRQ as u32,
            flags: 0xd,
        });
    }
    madt.add_structure(MpWakeup {
        kind: 0x10,
        length: 16,
        mailbox_version: 0,
        reserved: 0,
        mailbox_address: MP_WAKE_MAILBOX_GPA,
    });

    let mut xsdt = XSDT::new(OEM_ID, table_id(b"XSDT"), OEM_REVISION);
    xsdt.add_entry(FADT_GPA);
    xsdt.add_entry(MADT_GPA);

    let tables = vec![
        (RSDP_GPA, to_bytes(&Rsdp::new(OEM_ID, XSDT_GPA))),
        (XSDT_GPA, to_bytes(&xsdt)),
        (FADT_GPA, to_bytes(&fadt)),
        (DSDT_GPA, to_bytes(&dsdt)),
        (MADT_GPA, to_bytes(&madt)),
    ];
    // Each table must end before the next one starts.
    let mut sorted: Vec<(u64, usize)> = tables.iter().map(|(g, b)| (*g, b.len())).collect();
    sorted.sort();
    for pair in sorted.windows(2) {
        if pair[0].0 + pair[0].1 as u64 > pair[1].0 {
            return Err(LoaderError::NoRoom("ACPI tables"));
        }
    }
    if let Some(&(gpa, len)) = sorted.last() {
        if gpa + len as u64 > AP_PAGE_TABLES_GPA {
            return Err(LoaderError::NoRoom("ACPI tables"));
        }
    }
    Ok(tables)
}

/// Write the ACPI tables, the AP page tables and an empty wakeup mailbox
/// into guest memory. Returns the RSDP's address.
pub fn write(
    mem: &GuestMemoryMmap,
    vcpus: u32,
    platform: Platform,
    virtio: &[VirtioMmioDevice],
) -> Result<u64, LoaderError> {
    let put = |gpa: u64, bytes: &[u8]| {
        mem.write_slice(bytes, GuestAddress(gpa))
            .map_err(|_| LoaderError::GuestWrite(gpa))
    };
    for (gpa, bytes) in build_tables(vcpus, platform, virtio)? {
        put(gpa, &bytes)?;
    }
    put(AP_PAGE_TABLES_GPA, &ap_page_tables())?;
    put(MP_WAKE_MAILBOX_GPA, &[0u8; 4096])?;
    Ok(RSDP_GPA)
}

/// Pages of identity page tables at [`AP_PAGE_TABLES_GPA`].
pub const AP_PAGE_TABLE_PAGES: u64 = 6;

/// Six pages at [`AP_PAGE_TABLES_GPA`]: a PML4, a PDPT and four PDs of
/// 2 MiB pages covering the first 4 GiB (RAM, the firmware window and the
/// MMIO hole), identity mapped, writable, supervisor.
fn ap_page_tables() -> Vec<u8> {
    const PRESENT_RW: u64 = 0x3;
    const PAGE_SIZE_2M: u64 = 0x80;
    let mut pages = vec![0u64; AP_PAGE_TABLE_PAGES as usize * 512];
    pages[0] = (AP_PAGE_TABLES_GPA + 0x1000) | PRESENT_RW;
    for pd in 0..4u64 {
        pages[512 + pd as usize] = (AP_PAGE_TABLES_GPA + 0x2000 + pd * 0x1000) | PRESENT_RW;
    }
    for (i, entry) in pages[1024..].iter_mut().enumerate() {
        *entry = ((i as u64) << 21) | PRESENT_RW | PAGE_SIZE_2M;
    }
    pages.as_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checksum_ok(bytes: &[u8]) -> bool {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)) == 0
    }

    #[test]
    fn tables_have_valid_checksums_and_lengths() {
        let tables = build_tables(2, Platform::HwReduced, &[]).unwrap();
        for (gpa, bytes) in &tables {
            if *gpa == RSDP_GPA {
                assert_eq!(&bytes[..8], b"RSD PTR ");
                assert!(checksum_ok(&bytes[..20]));
                assert!(checksum_ok(&bytes[..36]));
                continue;
            }
            let len = u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as usize;
            assert_eq!(len, bytes.len(), "length of {:?}", &bytes[..4]);
            assert!(checksum_ok(bytes), "checksum of {:?}", &bytes[..4]);
        }
    }

    /// The type byte of each MADT entry, in order.
    fn madt_entry_types(madt: &[u8]) -> Vec<u8> {
        let mut kinds = Vec::new();
        let mut at = 44;
        while at < madt.len() {
            kinds.push(madt[at]);
            at += madt[at + 1] as usize;
        }
        kinds
    }

    #[test]
    fn madt_lists_every_vcpu_the_ioapic_and_the_mailbox() {
        let tables = build_tables(3, Platform::HwReduced, &[]).unwrap();
        let madt = &tables.iter().find(|(_, b)| &b[..4] == b"APIC").unwrap().1;
        let kinds = madt_entry_types(madt);
        assert_eq!(kinds, vec![0, 0, 0, 1, 0x10]);
        let mailbox = u64::from_le_bytes(madt[madt.len() - 8..].try_into().unwrap());
        assert_eq!(mailbox, MP_WAKE_MAILBOX_GPA);
    }

    #[test]
    fn pc_platform_has_pm_blocks_timer_and_sci_override() {
        let tables = build_tables(2, Platform::Pc, &[]).unwrap();
        for (gpa, bytes) in &tables {
            if *gpa != RSDP_GPA {
                assert!(checksum_ok(bytes), "checksum of {:?}", &bytes[..4]);
            }
        }
        let fadt = &tables.iter().find(|(_, b)| &b[..4] == b"FACP").unwrap().1;
        let u32_at = |o: usize| u32::from_le_bytes(fadt[o..o + 4].try_into().unwrap());
        assert_eq!(u32_at(112) & (1 << 20), 0, "not hardware-reduced");
        assert_ne!(u32_at(112) & (1 << 8), 0, "32-bit PM timer");
        assert_eq!(u32_at(76), PM_TMR_PORT as u32);
        assert_eq!(u32_at(56), PM1A_EVT_PORT as u32);
        assert_eq!(u32_at(64), PM1A_CNT_PORT as u32);
        assert_eq!(u16::from_le_bytes([fadt[46], fadt[47]]), SCI_IRQ);
        let madt = &tables.iter().find(|(_, b)| &b[..4] == b"APIC").unwrap().1;
        let kinds = madt_entry_types(madt);
        assert_eq!(kinds, vec![0, 0, 1, 2, 0x10]);
    }

    #[test]
    fn dsdt_declares_s5() {
        let tables = build_tables(1, Platform::HwReduced, &[]).unwrap();
        let dsdt = &tables.iter().find(|(_, b)| &b[..4] == b"DSDT").unwrap().1;
        assert!(dsdt.windows(4).any(|w| w == b"_S5_"));
    }

    /// Every `(base, len, gsi)` the DSDT's resource templates declare, in
    /// order, from Memory32Fixed (0x86) and Extended Interrupt (0x89)
    /// descriptors.
    fn virtio_resources(dsdt: &[u8]) -> Vec<(u32, u32, u32, u8)> {
        let u32_at = |o: usize| u32::from_le_bytes(dsdt[o..o + 4].try_into().unwrap());
        let mut found = Vec::new();
        for at in 0..dsdt.len().saturating_sub(21) {
            // Memory32Fixed, length 9, read-write; then the interrupt.
            if dsdt[at..at + 4] == [0x86, 9, 0, 1] && dsdt[at + 12..at + 15] == [0x89, 6, 0] {
                let flags = dsdt[at + 15];
                assert_eq!(dsdt[at + 16], 1, "one interrupt");
                found.push((u32_at(at + 4), u32_at(at + 8), u32_at(at + 17), flags));
            }
        }
        found
    }

    #[test]
    fn dsdt_declares_virtio_mmio_devices_on_pc_only() {
        let devices: Vec<VirtioMmioDevice> = (0..8)
            .map(|i| VirtioMmioDevice {
                base: 0xd000_0000 + i * 0x1000,
                len: 0x1000,
                gsi: 16 + i,
            })
            .collect();
        let tables = build_tables(255, Platform::Pc, &devices).unwrap();
        let dsdt = &tables.iter().find(|(_, b)| &b[..4] == b"DSDT").unwrap().1;
        assert!(checksum_ok(dsdt));
        let len = u32::from_le_bytes(dsdt[4..8].try_into().unwrap()) as usize;
        assert_eq!(len, dsdt.len());
        let hid = b"LNRO0005\0";
        assert_eq!(dsdt.windows(hid.len()).filter(|w| w == hid).count(), 8);
        assert!(dsdt.windows(4).any(|w| w == b"_SB_"));
        for i in 0..8 {
            let name = format!("VR{i:02X}");
            assert!(dsdt.windows(4).any(|w| w == name.as_bytes()), "{name}");
        }
        let found = virtio_resources(dsdt);
        // Consumer | edge; active high, exclusive.
        let want: Vec<_> = devices
            .iter()
            .map(|d| (d.base, d.len, d.gsi, 0b0011))
            .collect();
        assert_eq!(found, want);
        // The FADT points at the DSDT.
        let fadt = &tables.iter().find(|(_, b)| &b[..4] == b"FACP").unwrap().1;
        assert_eq!(
            u64::from_le_bytes(fadt[140..148].try_into().unwrap()),
            DSDT_GPA
        );

        let pvh = build_tables(1, Platform::HwReduced, &devices).unwrap();
        let dsdt = &pvh.iter().find(|(_, b)| &b[..4] == b"DSDT").unwrap().1;
        assert!(!dsdt.windows(8).any(|w| w == b"LNRO0005"));
        let plain = build_tables(1, Platform::Pc, &[]).unwrap();
        let dsdt = &plain.iter().find(|(_, b)| &b[..4] == b"DSDT").unwrap().1;
        assert!(!dsdt.windows(4).any(|w| w == b"_SB_"));
    }

    #[test]
    fn sleep_control_decoding() {
        assert_eq!(decode_sleep_control(0x34), Some(SleepRequest::SoftOff));
        assert_eq!(decode_sleep_control(0x14), None);
        assert_eq!(
            decode_sleep_control(0x2c),
            Some(SleepRequest::Unsupported(3))
        );
    }

    #[test]
    fn mailbox_head_parses() {
        let mut raw = [0u8; MpWakeMailbox::SIZE];
        raw[0] = 1;
        raw[4] = 3;
        raw[8..16].copy_from_slice(&0x9a2c0u64.to_le_bytes());
        let m = MpWakeMailbox::from_bytes(&raw);
        assert_eq!(
            (m.command, m.apic_id, m.wakeup_vector),
            (MP_WAKE_COMMAND_WAKEUP, 3, 0x9a2c0)
        );
    }

    #[test]
    fn vcpu_count_is_bounded() {
        assert!(build_tables(0, Platform::Pc, &[]).is_err());
        assert!(build_tables(256, Platform::Pc, &[]).is_err());
    }
}

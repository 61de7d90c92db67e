//! KVM's in-kernel PIC, IOAPIC and PIT ↔ Xen's PIC, IOAPIC and PIT save
//! records (`struct hvm_hw_vpic`, `hvm_hw_vioapic`, `hvm_hw_pit`).
//!
//! **PIC** (`kvm_pic_state` ↔ [`HwVpic`], instance 0 the master, 1 the
//! slave). `irr`, `imr`, `isr`, `irq_base`, `elcr` and the one-bit modes
//! (read-ISR select, poll, auto-EOI, rotate on auto-EOI, special fully
//! nested, special mask) are the same on both sides. Xen's 4-bit
//! `init_state` holds the initialisation step in bits 1:0 (0 done, 1..3
//! waiting for ICW2..ICW4), bit 2 "ICW4 expected" (KVM's `init4`) and
//! bit 3 "single mode, no ICW3". KVM has no single mode (it always waits
//! for ICW3), so a record in the middle of a single-mode initialisation is
//! refused. KVM's `last_irr` is its edge detector, the wire levels: Xen's
//! record has no wires (they are in ISA_IRQ), so on load it is `irr & elcr`
//! (a level-triggered pin's request is its wire; an edge-triggered wire is
//! taken as low, which is where kxen's in-kernel PIT leaves it after each
//! pulse). `elcr_mask` is the fixed 0xf8 / 0xde both sides use.
//! `int_output` (the INT line) is worked out on save from the registers,
//! as the 8259 would, and ignored on load: KVM recomputes it.
//!
//! **IOAPIC** (`kvm_ioapic_state` ↔ [`HwVioapic`]). Xen's record has 48
//! pins (`VIOAPIC_NUM_PINS`), KVM's IOAPIC 24: pins 24..47 are saved
//! masked and otherwise zero, as Xen resets them, and a record that has
//! one of them unmasked or with Remote IRR set is refused (KVM cannot
//! deliver it). Pins 0..23 are the architectural 64-bit RTEs on both
//! sides. KVM's `irr` (the pins' pending/level state) has no place in the
//! record: it is dropped on save and 0 on load; an in-flight level
//! interrupt still carries its Remote IRR bit in the RTE. KVM's IOAPIC
//! sits at the fixed 0xfec00000, so another base is refused, as is an ID
//! wider than the register's 4 bits.
//!
//! **PIT** (`kvm_pit_state2` ↔ [`HwPit`]). Each channel's fields are the
//! same on both sides except `count_load_time`, KVM's host-clock
//! timestamp of the last reload. Xen does not save it either: its load
//! restarts each channel's count at its reload value "now". KVM's
//! KVM_SET_PIT2 does the same (it reloads every channel's count and takes
//! the load time from the host's clock), so the timestamp is dropped on
//! save, 0 on load, and nothing host-relative ever travels. The speaker
//! gate's data bit is KVM's `KVM_PIT_FLAGS_SPEAKER_DATA_ON`. KVM's HPET
//! legacy-route flag has no place in the PIT record; kxen has no HPET, so
//! a PIT with it set is refused on save. On load, fields outside the
//! values the 8254's programming can produce are refused so that KVM's
//! emulation never starts in a state it cannot reach itself.
use kvm_bindings::{
    kvm_ioapic_state, kvm_pic_state, kvm_pit_channel_state, kvm_pit_state2,
    KVM_PIT_FLAGS_HPET_LEGACY, KVM_PIT_FLAGS_SPEAKER_DATA_ON,
};
use thiserror::Error;
use xen_abi::hvm_save::{
    HwPit, HwPitChannel, HwVioapic, HwVpic, VIOAPIC_NUM_PINS, VPIC_AUTO_EOI, VPIC_INIT_STATE_MASK,
    VPIC_IS_MASTER, VPIC_POLL, VPIC_PRIORITY_ADD_SHIFT, VPIC_READSEL_ISR, VPIC_ROTATE_ON_AUTO_EOI,
    VPIC_SPECIAL_FULLY_NESTED_MODE, VPIC_SPECIAL_MASK_MODE,
};

/// The pins KVM's IOAPIC has.
pub const KVM_IOAPIC_PINS: usize = 24;
/// Where KVM's IOAPIC is, and where Xen's is by default.
pub const IOAPIC_BASE_ADDRESS: u64 = 0xfec0_0000;
/// An RTE's mask bit.
pub const RTE_MASKED: u64 = 1 << 16;
/// An RTE's Remote IRR bit.
pub const RTE_REMOTE_IRR: u64 = 1 << 14;
/// The ELCR bits each PIC implements (IRQ 0, 1, 2 of the master and 8,
/// 13 of the slave are always edge-triggered).
pub const MASTER_ELCR_MASK: u8 = 0xf8;
pub const SLAVE_ELCR_MASK: u8 = 0xde;
/// The largest count a PIT channel holds (a programmed 0 means 65536).
pub const PIT_MAX_COUNT: u32 = 0x1_0000;
/// The mode KVM and Xen give a channel that was never programmed.
pub const PIT_MODE_UNPROGRAMMED: u8 = 0xff;

/// Platform state that Xen's records cannot express.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PlatformSaveError {
    #[error("PIC {chip}: {field} is {value:#x}, out of the 8259's range")]
    PicField {
        chip: usize,
        field: &'static str,
        value: u8,
    },
    #[error("the PIT routes through the HPET (legacy mode), which the PIT record cannot carry")]
    PitHpetLegacy,
}

/// A platform record refused on load.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PlatformLoadError {
    #[error("PIC record {instance}: {reason}")]
    Pic {
        instance: usize,
        reason: &'static str,
    },
    #[error("IOAPIC base address {0:#x}: KVM's IOAPIC is at {IOAPIC_BASE_ADDRESS:#x}")]
    IoapicBase(u64),
    #[error("IOAPIC ID {0:#x} is wider than 4 bits")]
    IoapicId(u32),
    #[error("IOAPIC pin {pin} is live ({rte:#x}) but KVM's IOAPIC has 24 pins")]
    IoapicPinBeyondKvm { pin: usize, rte: u64 },
    #[error("PIT record padding is {0:#x}, not 0")]
    PitPadding(u32),
    #[error("PIT speaker_data_on is {0}, not 0 or 1")]
    PitSpeaker(u32),
    #[error("PIT channel {channel}: {field} is {value:#x}, out of the 8254's range")]
    PitChannel {
        channel: usize,
        field: &'static str,
        value: u32,
    },
}

fn bit(value: u8, flag: u8) -> u8 {
    u8::from(value & flag != 0)
}

fn flag(set: u8, flag: u8) -> u8 {
    if set != 0 {
        flag
    } else {
        0
    }
}

/// Whether the 8259's INT output is asserted: a requested, unmasked IRQ
/// with a higher priority than every in-service one (special mask mode
/// lets lower ones through; special fully nested mode lets the master
/// see the slave's cascade input again while it is in service).
pub fn pic_int_output(pic: &kvm_pic_state, is_master: bool) -> bool {
    let rotate = |bits: u8| bits.rotate_right(u32::from(pic.priority_add & 7));
    let highest = |bits: u8| (bits != 0).then(|| bits.trailing_zeros());
    let Some(requested) = highest(rotate(pic.irr & !pic.imr)) else {
        return false;
    };
    let mut in_service = pic.isr;
    if pic.special_mask != 0 {
        in_service &= !pic.imr;
    }
    if is_master && pic.special_fully_nested_mode != 0 {
        in_service &= !(1 << 2);
    }
    match highest(rotate(in_service)) {
        Some(serving) => requested < serving,
        None => true,
    }
}

/// One of KVM's PICs (`chip` 0 the master, 1 the slave) as a PIC record.
pub fn save_pic(pic: &kvm_pic_state, chip: usize) -> Result<HwVpic, PlatformSaveError> {
    let out_of_range = |field, value| PlatformSaveError::PicField { chip, field, value };
    if pic.init_state > 3 {
        return Err(out_of_range("init_state", pic.init_state));
    }
    if pic.priority_add > 7 {
        return Err(out_of_range("priority_add", pic.priority_add));
    }
    let is_master = chip == 0;
    let init_state = pic.init_state | (u8::from(pic.init4 != 0) << 2);
    let mode_bits = flag(pic.read_reg_select, VPIC_READSEL_ISR)
        | flag(pic.poll, VPIC_POLL)
        | flag(pic.auto_eoi, VPIC_AUTO_EOI)
        | flag(pic.rotate_on_auto_eoi, VPIC_ROTATE_ON_AUTO_EOI)
        | flag(
            pic.special_fully_nested_mode,
            VPIC_SPECIAL_FULLY_NESTED_MODE,
        )
        | flag(pic.special_mask, VPIC_SPECIAL_MASK_MODE)
        | flag(u8::from(is_master), VPIC_IS_MASTER);
    Ok(HwVpic {
        irr: pic.irr,
        imr: pic.imr,
        isr: pic.isr,
        irq_base: pic.irq_base,
        init_and_priority: init_state | (pic.priority_add << VPIC_PRIORITY_ADD_SHIFT),
        mode_bits,
        elcr: pic.elcr,
        int_output: u8::from(pic_int_output(pic, is_master)),
    })
}

/// PIC record `instance` (0 the master, 1 the slave) as KVM's PIC.
pub fn load_pic(record: &HwVpic, instance: usize) -> Result<kvm_pic_state, PlatformLoadError> {
    let refuse = |reason| PlatformLoadError::Pic { instance, reason };
    let is_master = match instance {
        0 => true,
        1 => false,
        _ => return Err(refuse("there are two PICs, instances 0 and 1")),
    };
    if bit(record.mode_bits, VPIC_IS_MASTER) != u8::from(is_master) {
        return Err(refuse("is_master disagrees with the instance"));
    }
    if record.mode_bits & 0x80 != 0 {
        return Err(refuse("the mode byte's reserved bit 7 is set"));
    }
    let init_state = record.init_and_priority & VPIC_INIT_STATE_MASK;
    if init_state & 8 != 0 && init_state & 3 != 0 {
        return Err(refuse(
            "single-mode initialisation in progress; KVM's PIC always waits for ICW3",
        ));
    }
    if record.irq_base & 7 != 0 {
        return Err(refuse("irq_base's low 3 bits are set"));
    }
    let elcr_mask = if is_master {
        MASTER_ELCR_MASK
    } else {
        SLAVE_ELCR_MASK
    };
    if record.elcr & !elcr_mask != 0 {
        return Err(refuse("ELCR marks an always edge-triggered IRQ as level"));
    }
    if record.int_output > 1 {
        return Err(refuse("int_output is neither 0 nor 1"));
    }
    let priority_add = record.init_and_priority >> VPIC_PRIORITY_ADD_SHIFT;
    if priority_add > 7 {
        return Err(refuse("priority_add is beyond IRQ 7"));
    }
    Ok(kvm_pic_state {
        last_irr: record.irr & record.elcr,
        irr: record.irr,
        imr: record.imr,
        isr: record.isr,
        priority_add,
        irq_base: record.irq_base,
        read_reg_select: bit(record.mode_bits, VPIC_READSEL_ISR),
        poll: bit(record.mode_bits, VPIC_POLL),
        special_mask: bit(record.mode_bits, VPIC_SPECIAL_MASK_MODE),
        init_state: init_state & 3,
        auto_eoi: bit(record.mode_bits, VPIC_AUTO_EOI),
        rotate_on_auto_eoi: bit(record.mode_bits, VPIC_ROTATE_ON_AUTO_EOI),
        special_fully_nested_mode: bit(record.mode_bits, VPIC_SPECIAL_FULLY_NESTED_MODE),
        init4: (init_state >> 2) & 1,
        elcr: record.elcr,
        elcr_mask,
    })
}

/// KVM's IOAPIC as the IOAPIC record.
pub fn save_ioapic(ioapic: &kvm_ioapic_state) -> HwVioapic {
    let mut redirtbl = [RTE_MASKED; VIOAPIC_NUM_PINS];
    for (saved, entry) in redirtbl.iter_mut().zip(&ioapic.redirtbl) {
        // SAFETY: both views of the union are plain integers covering the
        // same 8 bytes; every bit pattern is a valid u64.
        *saved = unsafe { entry.bits };
    }
    HwVioapic {
        base_address: ioapic.base_address,
        ioregsel: ioapic.ioregsel,
        id: ioapic.id,
        redirtbl,
    }
}

/// The IOAPIC record as KVM's IOAPIC.
pub fn load_ioapic(record: &HwVioapic) -> Result<kvm_ioapic_state, PlatformLoadError> {
    if record.base_address != IOAPIC_BASE_ADDRESS {
        return Err(PlatformLoadError::IoapicBase(record.base_address));
    }
    if record.id > 0xf {
        return Err(PlatformLoadError::IoapicId(record.id));
    }
    for (pin, &rte) in record.redirtbl.iter().enumerate().skip(KVM_IOAPIC_PINS) {
        if rte & RTE_MASKED == 0 || rte & RTE_REMOTE_IRR != 0 {
            return Err(PlatformLoadError::IoapicPinBeyondKvm { pin, rte });
        }
    }
    let mut ioapic = kvm_ioapic_state {
        base_address: record.base_address,
        ioregsel: record.ioregsel,
        id: record.id,
        ..Default::default()
    };
    for (entry, &rte) in ioapic.redirtbl.iter_mut().zip(&record.redirtbl) {
        entry.bits = rte;
    }
    Ok(ioapic)
}

fn save_pit_channel(channel: &kvm_pit_channel_state) -> HwPitChannel {
    HwPitChannel {
        count: channel.count,
        latched_count: channel.latched_count,
        count_latched: channel.count_latched,
        status_latched: channel.status_latched,
        status: channel.status,
        read_state: channel.read_state,
        write_state: channel.write_state,
        write_latch: channel.write_latch,
        rw_mode: channel.rw_mode,
        mode: channel.mode,
        bcd: channel.bcd,
        gate: channel.gate,
    }
}

/// KVM's PIT as the PIT record.
pub fn save_pit(pit: &kvm_pit_state2) -> Result<HwPit, PlatformSaveError> {
    if pit.flags & KVM_PIT_FLAGS_HPET_LEGACY != 0 {
        return Err(PlatformSaveError::PitHpetLegacy);
    }
    Ok(HwPit {
        channels: pit.channels.each_ref().map(save_pit_channel),
        speaker_data_on: u32::from(pit.flags & KVM_PIT_FLAGS_SPEAKER_DATA_ON != 0),
        pad0: 0,
    })
}

fn load_pit_channel(
    index: usize,
    channel: &HwPitChannel,
) -> Result<kvm_pit_channel_state, PlatformLoadError> {
    let check = |field, value: u32, valid: bool| {
        if valid {
            Ok(())
        } else {
            Err(PlatformLoadError::PitChannel {
                channel: index,
                field,
                value,
            })
        }
    };
    check("count", channel.count, channel.count <= PIT_MAX_COUNT)?;
    // Read/write states: 0 (never programmed), LSB, MSB, word (LSB then
    // MSB) and word's second half.
    for (field, value) in [
        ("count_latched", channel.count_latched),
        ("read_state", channel.read_state),
        ("write_state", channel.write_state),
        ("rw_mode", channel.rw_mode),
    ] {
        check(field, value.into(), value <= 4)?;
    }
    check(
        "mode",
        channel.mode.into(),
        channel.mode <= 7 || channel.mode == PIT_MODE_UNPROGRAMMED,
    )?;
    for (field, value) in [
        ("status_latched", channel.status_latched),
        ("bcd", channel.bcd),
        ("gate", channel.gate),
    ] {
        check(field, value.into(), value <= 1)?;
    }
    Ok(kvm_pit_channel_state {
        count: channel.count,
        latched_count: channel.latched_count,
        count_latched: channel.count_latched,
        status_latched: channel.status_latched,
        status: channel.status,
        read_state: channel.read_state,
        write_state: channel.write_state,
        write_latch: channel.write_latch,
        rw_mode: channel.rw_mode,
        mode: channel.mode,
        bcd: channel.bcd,
        gate: channel.gate,
        // KVM_SET_PIT2 restarts every channel from the host's clock.
        count_load_time: 0,
    })
}

/// The PIT record as KVM's PIT.
pub fn load_pit(record: &HwPit) -> Result<kvm_pit_state2, PlatformLoadError> {
    if record.pad0 != 0 {
        return Err(PlatformLoadError::PitPadding(record.pad0));
    }
    if record.speaker_data_on > 1 {
        return Err(PlatformLoadError::PitSpeaker(record.speaker_data_on));
    }
    let mut pit = kvm_pit_state2::default();
    for (index, (channel, saved)) in pit.channels.iter_mut().zip(&record.channels).enumerate() {
        *channel = load_pit_channel(index, saved)?;
    }
    if record.speaker_data_on != 0 {
        pit.flags |= KVM_PIT_FLAGS_SPEAKER_DATA_ON;
    }
    Ok(pit)
}

//! The platform, XSAVE and MTRR records: round trips both ways, fields
//! packed by hand from Xen's definitions, and hostile records.
use kvm_bindings::{kvm_pic_state, kvm_pit_state2, kvm_xsave, KVM_PIT_FLAGS_SPEAKER_DATA_ON};
use xen_abi::hvm_save::{HwMtrr, HwPit, HwVioapic, HwVpic, VIOAPIC_NUM_PINS};
use zerocopy::IntoBytes;

use super::mtrr::{self, MtrrLoadError, MTRR_MSR_COUNT};
use super::platform::{self, PlatformLoadError, PlatformSaveError, RTE_MASKED};
use super::xsave::{self, XsaveLoadError, XsaveSaveError, XstateLayout};

fn busy_pic(master: bool) -> kvm_pic_state {
    kvm_pic_state {
        last_irr: 0x08 & if master { 0xf8 } else { 0xde },
        irr: 0x09,
        imr: 0xb8,
        isr: 0x02,
        priority_add: 3,
        irq_base: if master { 0x20 } else { 0x28 },
        read_reg_select: 1,
        poll: 0,
        special_mask: 1,
        init_state: 0,
        auto_eoi: 1,
        rotate_on_auto_eoi: 0,
        special_fully_nested_mode: u8::from(master),
        init4: 1,
        elcr: 0x08,
        elcr_mask: if master { 0xf8 } else { 0xde },
    }
}

#[test]
fn pic_round_trips_and_packs_xens_bit_fields() {
    for chip in 0..2 {
        let pic = busy_pic(chip == 0);
        let record = platform::save_pic(&pic, chip).unwrap();
        // init_state 0 | ICW4 expected (bit 2), priority_add 3 in the high
        // nibble; readsel (bit 0), auto-EOI (2), SFNM (4, master only),
        // special mask (5), is_master (6).
        assert_eq!(record.init_and_priority, 0x34);
        let sfnm_master = if chip == 0 { 0x50 } else { 0 };
        assert_eq!(record.mode_bits, 0x25 | sfnm_master);
        assert_eq!(platform::load_pic(&record, chip).unwrap(), pic);
    }
}

#[test]
fn pic_record_round_trips_through_kvm() {
    let record = HwVpic {
        irr: 0x81,
        imr: 0x7e,
        isr: 0,
        irq_base: 0x70,
        init_and_priority: 0x72,
        mode_bits: 0x0a,
        elcr: 0x80,
        int_output: 1,
    };
    let pic = platform::load_pic(&record, 1).unwrap();
    assert_eq!((pic.init_state, pic.init4, pic.priority_add), (2, 0, 7));
    assert_eq!(pic.last_irr, 0x80, "a level pin's request is its wire");
    assert_eq!(platform::save_pic(&pic, 1).unwrap(), record);
}

#[test]
fn pic_int_output_follows_priorities() {
    let mut pic = kvm_pic_state {
        irr: 1 << 4,
        ..Default::default()
    };
    assert!(platform::pic_int_output(&pic, true));
    pic.isr = 1 << 3;
    assert!(!platform::pic_int_output(&pic, true), "IRQ 3 outranks 4");
    pic.priority_add = 4;
    assert!(
        platform::pic_int_output(&pic, true),
        "rotated: 4 is now top"
    );
    pic.imr = 1 << 4;
    assert!(!platform::pic_int_output(&pic, true), "masked");
}

#[test]
fn hostile_pic_records_are_refused() {
    let good = platform::save_pic(&busy_pic(true), 0).unwrap();
    type Spoil = fn(&mut HwVpic);
    let cases: [(usize, Spoil); 7] = [
        (1, |_| {}),
        (2, |_| {}),
        (0, |r| r.mode_bits &= !0x40),
        (0, |r| r.mode_bits |= 0x80),
        (0, |r| r.init_and_priority = 0x0a),
        (0, |r| r.irq_base = 0x21),
        (0, |r| r.elcr = 0x01),
    ];
    for (instance, spoil) in cases {
        let mut record = good;
        spoil(&mut record);
        assert!(
            matches!(
                platform::load_pic(&record, instance),
                Err(PlatformLoadError::Pic { .. })
            ),
            "{record:?} as instance {instance}"
        );
    }
    let mut record = good;
    record.init_and_priority = 0x84;
    assert!(platform::load_pic(&record, 0).is_err(), "priority_add 8");
    let mut pic = busy_pic(true);
    pic.init_state = 4;
    assert!(matches!(
        platform::save_pic(&pic, 0),
        Err(PlatformSaveError::PicField { .. })
    ));
}

#[test]
fn ioapic_pads_to_48_pins_and_round_trips() {
    let mut ioapic = kvm_bindings::kvm_ioapic_state {
        base_address: platform::IOAPIC_BASE_ADDRESS,
        ioregsel: 0x12,
        id: 1,
        irr: 0x10,
        ..Default::default()
    };
    for (pin, entry) in ioapic.redirtbl.iter_mut().enumerate() {
        entry.bits =
            ((pin as u64) << 56) | (0x30 + pin as u64) | if pin % 3 == 0 { RTE_MASKED } else { 0 };
    }
    let record = platform::save_ioapic(&ioapic);
    assert!(record.redirtbl[24..].iter().all(|&rte| rte == RTE_MASKED));
    assert_eq!(record.redirtbl[5], 5 << 56 | 0x35);
    let loaded = platform::load_ioapic(&record).unwrap();
    assert_eq!(loaded.irr, 0, "pin state is not in Xen's record");
    assert_eq!(platform::save_ioapic(&loaded), record);
}

#[test]
fn hostile_ioapic_records_are_refused() {
    let good = HwVioapic {
        base_address: platform::IOAPIC_BASE_ADDRESS,
        ioregsel: 0,
        id: 0,
        redirtbl: [RTE_MASKED; VIOAPIC_NUM_PINS],
    };
    assert!(platform::load_ioapic(&good).is_ok());
    let mut record = good;
    record.base_address = 0xfec0_1000;
    assert!(matches!(
        platform::load_ioapic(&record),
        Err(PlatformLoadError::IoapicBase(_))
    ));
    record = good;
    record.id = 0x10;
    assert!(matches!(
        platform::load_ioapic(&record),
        Err(PlatformLoadError::IoapicId(0x10))
    ));
    record = good;
    record.redirtbl[40] = 0x31;
    assert!(matches!(
        platform::load_ioapic(&record),
        Err(PlatformLoadError::IoapicPinBeyondKvm { pin: 40, .. })
    ));
    record = good;
    record.redirtbl[24] = RTE_MASKED | platform::RTE_REMOTE_IRR;
    assert!(platform::load_ioapic(&record).is_err());
}

fn programmed_pit() -> kvm_pit_state2 {
    let mut pit = kvm_pit_state2::default();
    for (index, channel) in pit.channels.iter_mut().enumerate() {
        channel.count = 1193 * (index as u32 + 1);
        channel.latched_count = 0x1234;
        channel.count_latched = 3;
        channel.status_latched = 1;
        channel.status = 0x34;
        channel.read_state = 3;
        channel.write_state = 4;
        channel.write_latch = 0xa9;
        channel.rw_mode = 3;
        channel.mode = 2;
        channel.bcd = 0;
        channel.gate = u8::from(index != 2);
        channel.count_load_time = 123_456_789;
    }
    pit.channels[2].mode = platform::PIT_MODE_UNPROGRAMMED;
    pit.flags = KVM_PIT_FLAGS_SPEAKER_DATA_ON;
    pit
}

#[test]
fn pit_round_trips_without_the_host_clock() {
    let pit = programmed_pit();
    let record = platform::save_pit(&pit).unwrap();
    assert_eq!(record.speaker_data_on, 1);
    assert_eq!(record.channels[1].count, 2386);
    let loaded = platform::load_pit(&record).unwrap();
    let mut expected = pit;
    for channel in &mut expected.channels {
        channel.count_load_time = 0;
    }
    assert_eq!(loaded, expected);
    assert_eq!(platform::save_pit(&loaded).unwrap(), record);
}

#[test]
fn hostile_pit_records_are_refused() {
    let good = platform::save_pit(&programmed_pit()).unwrap();
    let cases: [fn(&mut HwPit); 9] = [
        |r| r.pad0 = 1,
        |r| r.speaker_data_on = 2,
        |r| r.channels[0].count = 0x1_0001,
        |r| r.channels[1].rw_mode = 5,
        |r| r.channels[2].read_state = 0xff,
        |r| r.channels[0].mode = 8,
        |r| r.channels[0].bcd = 2,
        |r| r.channels[1].gate = 7,
        |r| r.channels[2].count_latched = 9,
    ];
    for spoil in cases {
        let mut record = good;
        spoil(&mut record);
        assert!(platform::load_pit(&record).is_err(), "{record:?}");
    }
    let mut pit = programmed_pit();
    pit.flags |= kvm_bindings::KVM_PIT_FLAGS_HPET_LEGACY;
    assert_eq!(
        platform::save_pit(&pit),
        Err(PlatformSaveError::PitHpetLegacy)
    );
}

const KVM_MTRR_CAP: u64 = 0x508;

fn mtrr_msrs() -> mtrr::MtrrMsrs {
    let mut msrs = [0; MTRR_MSR_COUNT];
    msrs[0] = 0x0007_0406_0007_0106;
    msrs[1] = 0x8000_0000;
    msrs[2] = 0xf_8000_0800;
    msrs[3] = 0xc000_0001;
    msrs[4] = 0xf_c000_0800;
    for (index, fixed) in msrs[17..28].iter_mut().enumerate() {
        *fixed = 0x0606_0606_0505_0400 | [0, 1, 4, 5, 6][index % 5];
    }
    msrs[28] = KVM_MTRR_CAP;
    msrs[29] = 0xc06;
    msrs
}

#[test]
fn mtrr_round_trips_in_xens_field_order() {
    let msrs = mtrr_msrs();
    let record = mtrr::save(&msrs);
    assert_eq!(record.msr_pat_cr, msrs[0]);
    assert_eq!(record.msr_mtrr_var[1], 0xf_8000_0800, "PHYSMASK0");
    assert_eq!(record.msr_mtrr_fixed[0], msrs[17], "MTRRfix64K_00000");
    assert_eq!(record.msr_mtrr_def_type, 0xc06);
    assert_eq!(mtrr::load(&record, KVM_MTRR_CAP).unwrap(), msrs);
    assert_eq!(mtrr::mtrr_msr_indices()[2], 0x201);
    assert_eq!(mtrr::mtrr_msr_indices()[17], 0x250);
}

#[test]
fn hostile_mtrr_records_are_refused() {
    let good = mtrr::save(&mtrr_msrs());
    let cases: [fn(&mut HwMtrr); 6] = [
        |r| r.msr_pat_cr = 0x02,
        |r| r.msr_mtrr_def_type = 0x1006,
        |r| r.msr_mtrr_def_type = 0xc03,
        |r| r.msr_mtrr_fixed[4] = 0x07,
        |r| r.msr_mtrr_var[2] |= 0x100,
        |r| r.msr_mtrr_var[3] |= 0x1,
    ];
    for spoil in cases {
        let mut record = good;
        spoil(&mut record);
        assert!(mtrr::load(&record, KVM_MTRR_CAP).is_err(), "{record:?}");
    }
    assert!(matches!(
        mtrr::load(&good, 0x501),
        Err(MtrrLoadError::RangeBeyondCap(1, 1, 0x501))
    ));
}

/// x87, SSE, AVX: AVX's 256 bytes at 576, as on every Intel part.
fn avx_layout() -> XstateLayout {
    let mut components = [(0, 0); 64];
    components[2] = (576, 256);
    XstateLayout {
        supported_xcr0: 0b111,
        components,
    }
}

fn avx_xsave() -> kvm_xsave {
    let mut xsave = kvm_xsave::default();
    let bytes = xsave.region.as_mut_bytes();
    bytes[0..2].copy_from_slice(&0x37fu16.to_le_bytes());
    bytes[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
    bytes[160..176].fill(0x5a);
    bytes[512] = 0b111;
    bytes[600..640].fill(0xc3);
    xsave
}

#[test]
fn xsave_round_trips_with_the_area_xcr0_accum_needs() {
    let layout = avx_layout();
    let record = xsave::save(&avx_xsave(), 0b11, &layout).unwrap();
    assert_eq!(record.len(), 24 + 832);
    assert_eq!(&record[8..16], &3u64.to_le_bytes(), "xcr0");
    assert_eq!(&record[16..24], &7u64.to_le_bytes(), "xcr0 | xstate_bv");
    let (loaded, xcr0) = xsave::load(&record, &layout).unwrap();
    assert_eq!(xcr0, 0b11);
    assert_eq!(loaded.region, avx_xsave().region);
    assert_eq!(xsave::save(&loaded, xcr0, &layout).unwrap(), record);
    let mut padded = record.clone();
    padded.extend_from_slice(&[0; 64]);
    assert!(xsave::load(&padded, &layout).is_ok(), "trailing zeros");
}

#[test]
fn hostile_xsave_records_are_refused_without_panicking() {
    let layout = avx_layout();
    let good = xsave::save(&avx_xsave(), 0b111, &layout).unwrap();
    for length in 0..good.len() {
        assert!(xsave::load(&good[..length], &layout).is_err(), "{length}");
    }
    let spoil = |offset: usize, value: u64| {
        let mut record = good.clone();
        record[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
        xsave::load(&record, &layout)
    };
    assert!(matches!(
        spoil(8, 0b110),
        Err(XsaveLoadError::BadXcr0 { .. })
    ));
    assert!(matches!(
        spoil(8, 0b101),
        Err(XsaveLoadError::BadXcr0 { .. })
    ));
    assert!(matches!(
        spoil(16, 0b11),
        Err(XsaveLoadError::BadXcr0 { .. })
    ));
    assert!(matches!(
        spoil(16, 0b1110_0111),
        Err(XsaveLoadError::Unsupported(0b1110_0000))
    ));
    assert!(matches!(
        spoil(24 + 512, 0b1111),
        Err(XsaveLoadError::BadXstateBv(..))
    ));
    assert!(matches!(
        spoil(24 + 520, 1 << 63),
        Err(XsaveLoadError::Compacted(_))
    ));
    assert!(matches!(
        spoil(24 + 528, 1),
        Err(XsaveLoadError::HeaderReserved)
    ));
    let mut trailing = good.clone();
    trailing.extend_from_slice(&[0, 0, 1]);
    assert!(matches!(
        xsave::load(&trailing, &layout),
        Err(XsaveLoadError::TrailingData(_))
    ));
    let mut huge = layout.clone();
    huge.components[2] = (4000, 256);
    assert!(matches!(
        xsave::save(&avx_xsave(), 0b111, &huge),
        Err(XsaveSaveError::AreaTooLarge(..))
    ));
    huge.components[2] = (u32::MAX, u32::MAX);
    assert!(xsave::load(&good, &huge).is_err(), "no overflow");
}

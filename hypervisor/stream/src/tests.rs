//! Round trips, a byte-exact stream and hostile inputs.
use xen_abi::hvm_save::{self, HvmOneMsr, HwCpu, HwLapic, HwPit, HwRtc, SaveHeader};
use zerocopy::FromZeros;

use crate::hvm_context::{self, HvmContextBuilder};
use crate::libxc::{
    record_type as xc, CpuidLeaf, DomainHeader, GuestType, HvmParamEntry, LibxcReader, LibxcRecord,
    LibxcWriter, MsrEntry, Page, PageType, PfnEntry, PvVcpuKind, TscInfo, X86PvInfo,
};
use crate::libxl::{checkpoint_state, EmulatorId, LibxlReader, LibxlRecord, LibxlWriter};
use crate::{check_libxl_stream, Limits, ReadError, WriteError, PAGE_SIZE};

const HVM_DOMAIN: DomainHeader = DomainHeader {
    guest_type: GuestType::X86Hvm,
    xen_major: 4,
    xen_minor: 17,
};

/// Frames 0..=0xfffff: 4 GiB of guest physical space.
fn limits() -> Limits {
    Limits::for_guest_physical_size(4 << 30)
}

fn page(fill: u8) -> Box<[u8; PAGE_SIZE]> {
    Box::new([fill; PAGE_SIZE])
}

fn sample_hvm_context() -> Vec<u8> {
    let mut cpu = HwCpu::new_zeroed();
    cpu.rip = 0xfff0;
    cpu.cr0 = 0x10;
    cpu.cs_sel = 0xf000;
    cpu.cs_base = 0xffff_0000;
    cpu.cs_limit = 0xffff;
    cpu.cs_arbytes = 0x9b;
    cpu.flags = hvm_save::XEN_X86_FPU_INITIALISED;
    let mut builder = HvmContextBuilder::new(&SaveHeader {
        magic: hvm_save::HVM_FILE_MAGIC,
        version: hvm_save::HVM_FILE_VERSION,
        changeset: 0,
        cpuid: 0x000a_06a4,
        gtsc_khz: 2_000_000,
    });
    builder
        .push(hvm_save::HVM_SAVE_CODE_CPU, 0, &cpu)
        .push(
            hvm_save::HVM_SAVE_CODE_LAPIC,
            0,
            &HwLapic {
                apic_base_msr: 0xfee0_0900,
                ..Default::default()
            },
        )
        .push(hvm_save::HVM_SAVE_CODE_PIT, 0, &HwPit::default())
        .push(hvm_save::HVM_SAVE_CODE_RTC, 0, &HwRtc::default())
        .push_msrs(
            0,
            &[HvmOneMsr {
                index: 0xc000_0103,
                _rsvd: 0,
                val: 7,
            }],
        );
    builder.finish()
}

/// Every libxc record kind, written by the writer's methods.
fn write_every_libxc_record<W: std::io::Write>(writer: &mut LibxcWriter<W>) {
    let cpuid = [CpuidLeaf {
        leaf: 1,
        subleaf: u32::MAX,
        a: 2,
        b: 3,
        c: 4,
        d: 5,
    }];
    let msrs = [MsrEntry {
        index: 0xce,
        flags: 0,
        value: 1 << 31,
    }];
    writer.write_x86_cpuid_policy(&cpuid).unwrap();
    writer.write_x86_msr_policy(&msrs).unwrap();
    writer
        .write_x86_pv_info(&X86PvInfo {
            guest_width: 8,
            pt_levels: 4,
        })
        .unwrap();
    writer.write_static_data_end().unwrap();
    writer.write_x86_pv_p2m_frames(0, 511, &[0x10]).unwrap();
    let (a, b) = (page(0xa5), page(0x5a));
    writer
        .write_pages(&[
            Page {
                pfn: 1,
                page_type: PageType::NoTab,
                contents: Some(&a),
            },
            Page {
                pfn: 2,
                page_type: PageType::XTab,
                contents: None,
            },
            Page {
                pfn: 0xfffff,
                page_type: PageType::L4TabPinned,
                contents: Some(&b),
            },
        ])
        .unwrap();
    writer
        .write_x86_pv_vcpu(PvVcpuKind::Basic, 0, &[1, 2, 3])
        .unwrap();
    writer
        .write_x86_pv_vcpu(PvVcpuKind::Extended, 1, &[4; 9])
        .unwrap();
    writer.write_x86_pv_vcpu(PvVcpuKind::Xsave, 2, &[]).unwrap();
    writer
        .write_x86_pv_vcpu(PvVcpuKind::Msrs, 3, &[6; 16])
        .unwrap();
    writer.write_shared_info(&page(0x11)).unwrap();
    writer
        .write_tsc_info(&TscInfo {
            mode: 1,
            khz: 2_000_000,
            nsec: 123_456_789,
            incarnation: 2,
        })
        .unwrap();
    writer
        .write_hvm_params(&[HvmParamEntry {
            index: 1,
            value: 0xfeffc,
        }])
        .unwrap();
    writer.write_hvm_context(&sample_hvm_context()).unwrap();
    writer.write_verify().unwrap();
    writer.write_checkpoint_dirty_pfn_list(&[3, 4]).unwrap();
}

/// The records [`write_every_libxc_record`] writes, as read back.
fn expected_libxc_records() -> Vec<LibxcRecord> {
    vec![
        LibxcRecord::X86CpuidPolicy(vec![CpuidLeaf {
            leaf: 1,
            subleaf: u32::MAX,
            a: 2,
            b: 3,
            c: 4,
            d: 5,
        }]),
        LibxcRecord::X86MsrPolicy(vec![MsrEntry {
            index: 0xce,
            flags: 0,
            value: 1 << 31,
        }]),
        LibxcRecord::X86PvInfo(X86PvInfo {
            guest_width: 8,
            pt_levels: 4,
        }),
        LibxcRecord::StaticDataEnd,
        LibxcRecord::X86PvP2mFrames {
            start_pfn: 0,
            end_pfn: 511,
            frames: vec![0x10],
        },
        LibxcRecord::PageData(vec![
            PfnEntry {
                pfn: 1,
                page_type: PageType::NoTab,
            },
            PfnEntry {
                pfn: 2,
                page_type: PageType::XTab,
            },
            PfnEntry {
                pfn: 0xfffff,
                page_type: PageType::L4TabPinned,
            },
        ]),
        LibxcRecord::X86PvVcpu {
            kind: PvVcpuKind::Basic,
            vcpu_id: 0,
            context: vec![1, 2, 3],
        },
        LibxcRecord::X86PvVcpu {
            kind: PvVcpuKind::Extended,
            vcpu_id: 1,
            context: vec![4; 9],
        },
        LibxcRecord::X86PvVcpu {
            kind: PvVcpuKind::Xsave,
            vcpu_id: 2,
            context: vec![],
        },
        LibxcRecord::X86PvVcpu {
            kind: PvVcpuKind::Msrs,
            vcpu_id: 3,
            context: vec![6; 16],
        },
        LibxcRecord::SharedInfo(vec![0x11; PAGE_SIZE]),
        LibxcRecord::X86TscInfo(TscInfo {
            mode: 1,
            khz: 2_000_000,
            nsec: 123_456_789,
            incarnation: 2,
        }),
        LibxcRecord::HvmParams(vec![HvmParamEntry {
            index: 1,
            value: 0xfeffc,
        }]),
        LibxcRecord::HvmContext(sample_hvm_context()),
        LibxcRecord::Verify,
        LibxcRecord::CheckpointDirtyPfnList(vec![3, 4]),
    ]
}

#[test]
fn every_libxc_record_round_trips() {
    let mut writer = LibxcWriter::new(Vec::new(), &HVM_DOMAIN).unwrap();
    write_every_libxc_record(&mut writer);
    writer.write_checkpoint().unwrap();
    // The writer frames any record type it is given, obsolete ones too.
    writer.write_record(xc::TOOLSTACK, &[]).unwrap();
    let bytes = writer.finish().unwrap();
    assert_eq!(bytes.len() % 8, 0);

    let mut reader = LibxcReader::new(bytes.as_slice(), limits()).unwrap();
    assert_eq!(reader.version(), 3);
    assert_eq!(*reader.domain(), HVM_DOMAIN);
    for expected in expected_libxc_records() {
        let record = reader.next_record().unwrap();
        assert_eq!(record, expected);
        if let LibxcRecord::PageData(_) = record {
            let mut contents = [0u8; PAGE_SIZE];
            reader.read_page(&mut contents).unwrap();
            assert!(contents.iter().all(|&byte| byte == 0xa5));
            reader.read_page(&mut contents).unwrap();
            assert!(contents.iter().all(|&byte| byte == 0x5a));
            assert!(matches!(
                reader.read_page(&mut contents),
                Err(ReadError::NoPagePending)
            ));
        }
    }
    assert_eq!(reader.next_record().unwrap(), LibxcRecord::Checkpoint);
    // TOOLSTACK is obsolete: written only through write_record, refused.
    assert!(matches!(
        reader.next_record(),
        Err(ReadError::ObsoleteToolstackRecord)
    ));
}

#[test]
fn unread_pages_are_skipped_by_the_next_record() {
    let mut writer = LibxcWriter::new(Vec::new(), &HVM_DOMAIN).unwrap();
    writer.write_static_data_end().unwrap();
    let contents = page(1);
    writer
        .write_pages(&[Page {
            pfn: 9,
            page_type: PageType::NoTab,
            contents: Some(&contents),
        }])
        .unwrap();
    let bytes = writer.finish().unwrap();
    let mut reader = LibxcReader::new(bytes.as_slice(), limits()).unwrap();
    assert_eq!(reader.next_record().unwrap(), LibxcRecord::StaticDataEnd);
    assert!(matches!(
        reader.next_record().unwrap(),
        LibxcRecord::PageData(_)
    ));
    assert_eq!(reader.pages_pending(), 1);
    assert_eq!(reader.next_record().unwrap(), LibxcRecord::End);
    assert!(matches!(
        reader.next_record(),
        Err(ReadError::AfterEnd { layer: "libxc" })
    ));
}

#[test]
fn pages_are_batched_at_libxc_batch_size() {
    let contents = page(7);
    let pages: Vec<Page> = (0..2500)
        .map(|pfn| Page {
            pfn,
            page_type: PageType::NoTab,
            contents: Some(&contents),
        })
        .collect();
    let mut writer = LibxcWriter::new(Vec::new(), &HVM_DOMAIN).unwrap();
    writer.write_static_data_end().unwrap();
    writer.write_pages(&pages).unwrap();
    let bytes = writer.finish().unwrap();
    let mut reader = LibxcReader::new(bytes.as_slice(), limits()).unwrap();
    reader.next_record().unwrap();
    let mut sizes = Vec::new();
    while let LibxcRecord::PageData(entries) = reader.next_record().unwrap() {
        sizes.push(entries.len());
    }
    assert_eq!(sizes, [1024, 1024, 452]);
}

#[test]
fn writer_refuses_what_the_format_cannot_say() {
    let mut writer = LibxcWriter::new(Vec::new(), &HVM_DOMAIN).unwrap();
    let contents = page(0);
    let one = |pfn, page_type, contents| {
        [Page {
            pfn,
            page_type,
            contents,
        }]
    };
    assert!(matches!(
        writer.write_pages(&one(1, PageType::NoTab, Some(&contents))),
        Err(WriteError::OutOfOrder { .. })
    ));
    writer.write_static_data_end().unwrap();
    assert!(matches!(
        writer.write_static_data_end(),
        Err(WriteError::OutOfOrder { .. })
    ));
    assert!(matches!(
        writer.write_pages(&one(1 << 52, PageType::NoTab, Some(&contents))),
        Err(WriteError::PfnTooWide(_))
    ));
    assert!(matches!(
        writer.write_pages(&one(1, PageType::NoTab, None)),
        Err(WriteError::PageContents { .. })
    ));
    assert!(matches!(
        writer.write_pages(&one(1, PageType::XAlloc, Some(&contents))),
        Err(WriteError::PageContents { .. })
    ));
    assert!(matches!(
        writer.write_record(xc::HVM_CONTEXT, &vec![0; (128 << 20) + 1]),
        Err(WriteError::RecordTooLong { .. })
    ));
    let mut libxl = LibxlWriter::new(Vec::new()).unwrap();
    assert!(matches!(
        libxl.write_emulator_xenstore_data(EmulatorId::UNKNOWN, 0, &[("bad key", "v")]),
        Err(WriteError::BadXenstoreString { .. })
    ));
    assert!(matches!(
        libxl.write_checkpoint_end(),
        Err(WriteError::WrongLayer(_))
    ));
}

/// A libxl stream with every libxl record kind and a checkpoint: libxc
/// CHECKPOINT, libxl's records, CHECKPOINT_END, libxc continues to END.
fn checkpointed_libxl_stream() -> Vec<u8> {
    let libxl = LibxlWriter::new(Vec::new()).unwrap();
    let mut libxc = libxl.begin_libxc(&HVM_DOMAIN).unwrap();
    libxc.write_static_data_end().unwrap();
    let contents = page(0x42);
    libxc
        .write_pages(&[Page {
            pfn: 0x10,
            page_type: PageType::NoTab,
            contents: Some(&contents),
        }])
        .unwrap();
    libxc.write_hvm_context(&sample_hvm_context()).unwrap();
    let mut libxl = libxc.checkpoint_into_libxl().unwrap();
    libxl
        .write_emulator_xenstore_data(
            EmulatorId::QEMU_UPSTREAM,
            0,
            &[("physmap/1/size", "1000"), ("state", "running")],
        )
        .unwrap();
    libxl
        .write_emulator_context(EmulatorId(0x6b78_656e), 1, b"kxen state")
        .unwrap();
    libxl
        .write_checkpoint_state(checkpoint_state::SVM_READY)
        .unwrap();
    libxl.write_checkpoint_end().unwrap();
    let mut libxc = libxl.resume_libxc().unwrap();
    libxc
        .write_tsc_info(&TscInfo {
            mode: 0,
            khz: 1_000_000,
            nsec: 5,
            incarnation: 0,
        })
        .unwrap();
    let libxl = libxc.finish_into_libxl().unwrap();
    libxl.finish().unwrap()
}

#[test]
fn libxl_records_and_a_checkpoint_round_trip() {
    let bytes = checkpointed_libxl_stream();
    let mut libxl = LibxlReader::new(bytes.as_slice(), limits()).unwrap();
    assert!(!libxl.header().legacy_converted);
    assert_eq!(libxl.next_record().unwrap(), LibxlRecord::LibxcContext);
    assert!(matches!(libxl.next_record(), Err(ReadError::WrongLayer(_))));
    let mut libxc = libxl.into_libxc().unwrap();
    assert_eq!(libxc.next_record().unwrap(), LibxcRecord::StaticDataEnd);
    assert!(matches!(
        libxc.next_record().unwrap(),
        LibxcRecord::PageData(_)
    ));
    let mut contents = [0u8; PAGE_SIZE];
    libxc.read_page(&mut contents).unwrap();
    assert_eq!(contents, [0x42; PAGE_SIZE]);
    let LibxcRecord::HvmContext(blob) = libxc.next_record().unwrap() else {
        panic!("expected HVM_CONTEXT");
    };
    assert_eq!(blob, sample_hvm_context());
    assert_eq!(libxc.next_record().unwrap(), LibxcRecord::Checkpoint);
    assert!(matches!(libxc.next_record(), Err(ReadError::WrongLayer(_))));
    let mut libxl = libxc.into_libxl().unwrap();
    assert_eq!(
        libxl.next_record().unwrap(),
        LibxlRecord::EmulatorXenstoreData {
            emulator: EmulatorId::QEMU_UPSTREAM,
            index: 0,
            pairs: vec![
                ("physmap/1/size".into(), "1000".into()),
                ("state".into(), "running".into())
            ],
        }
    );
    assert_eq!(
        libxl.next_record().unwrap(),
        LibxlRecord::EmulatorContext {
            emulator: EmulatorId(0x6b78_656e),
            index: 1,
            context: b"kxen state".to_vec(),
        }
    );
    assert_eq!(
        libxl.next_record().unwrap(),
        LibxlRecord::CheckpointState(checkpoint_state::SVM_READY)
    );
    assert_eq!(libxl.next_record().unwrap(), LibxlRecord::CheckpointEnd);
    let mut libxc = libxl.into_libxc().unwrap();
    assert!(matches!(
        libxc.next_record().unwrap(),
        LibxcRecord::X86TscInfo(_)
    ));
    assert_eq!(libxc.next_record().unwrap(), LibxcRecord::End);
    let mut libxl = libxc.into_libxl().unwrap();
    assert_eq!(libxl.next_record().unwrap(), LibxlRecord::End);
    assert!(matches!(
        libxl.next_record(),
        Err(ReadError::AfterEnd { layer: "libxl" })
    ));

    let summary = check_libxl_stream(bytes.as_slice(), limits()).unwrap();
    assert_eq!(summary.checkpoints, 1);
    assert_eq!(summary.pages_with_contents, 1);
    assert_eq!(summary.hvm_context_entries, 5);
    assert_eq!(summary.libxc_version, 3);
}

// ---- byte-exact -------------------------------------------------------------

/// A stream written field by field from the specs' diagrams, independent of
/// the writer's code: the writer must produce exactly these octets, and
/// the reader must read them back.
#[test]
fn writer_matches_the_spec_byte_for_byte() {
    let mut expected: Vec<u8> = Vec::new();
    // libxl header (big-endian): "LibxlFmt", version 2, options 0.
    expected.extend_from_slice(b"LibxlFmt");
    expected.extend_from_slice(&[0, 0, 0, 2, 0, 0, 0, 0]);
    // LIBXC_CONTEXT: type 1, length 0.
    expected.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]);
    // Image header (big-endian): marker, "XENF", version 3, options 0,
    // reserved.
    expected.extend_from_slice(&[0xff; 8]);
    expected.extend_from_slice(b"XENF");
    expected.extend_from_slice(&[0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0]);
    // Domain header: type 2 (x86 HVM), page_shift 12, reserved, 4.17.
    expected.extend_from_slice(&[2, 0, 0, 0, 12, 0, 0, 0, 4, 0, 0, 0, 17, 0, 0, 0]);
    // STATIC_DATA_END: type 0x10, length 0.
    expected.extend_from_slice(&[0x10, 0, 0, 0, 0, 0, 0, 0]);
    // PAGE_DATA: type 1, length 8 + 2 * 8 + 4096 = 0x1018; count 2,
    // reserved; pfn 5 type NOTAB; pfn 7 type XTAB (0xf in bits 63:60);
    // one page of contents.
    expected.extend_from_slice(&[1, 0, 0, 0, 0x18, 0x10, 0, 0]);
    expected.extend_from_slice(&[2, 0, 0, 0, 0, 0, 0, 0]);
    expected.extend_from_slice(&[5, 0, 0, 0, 0, 0, 0, 0]);
    expected.extend_from_slice(&[7, 0, 0, 0, 0, 0, 0, 0xf0]);
    expected.extend_from_slice(&[0xab; PAGE_SIZE]);
    // X86_TSC_INFO: type 8, length 24; mode 1, khz 2000000 (0x1e8480),
    // nsec 0x0102030405060708, incarnation 3, reserved.
    expected.extend_from_slice(&[8, 0, 0, 0, 24, 0, 0, 0]);
    expected.extend_from_slice(&[1, 0, 0, 0, 0x80, 0x84, 0x1e, 0]);
    expected.extend_from_slice(&[8, 7, 6, 5, 4, 3, 2, 1]);
    expected.extend_from_slice(&[3, 0, 0, 0, 0, 0, 0, 0]);
    // HVM_PARAMS: type 0xa, length 24; count 1, reserved; index 1,
    // value 0xfeffc.
    expected.extend_from_slice(&[0xa, 0, 0, 0, 24, 0, 0, 0]);
    expected.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]);
    expected.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]);
    expected.extend_from_slice(&[0xfc, 0xef, 0x0f, 0, 0, 0, 0, 0]);
    // X86_PV_VCPU_BASIC with a 3-byte context: type 4, length 11, vcpu 1,
    // reserved, the context, 5 octets of padding.
    expected.extend_from_slice(&[4, 0, 0, 0, 11, 0, 0, 0]);
    expected.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]);
    expected.extend_from_slice(&[0xc1, 0xc2, 0xc3, 0, 0, 0, 0, 0]);
    // libxc END.
    expected.extend_from_slice(&[0; 8]);
    // EMULATOR_CONTEXT: type 3, length 8 + 5; emulator 2, index 0,
    // "hello", 3 octets of padding.
    expected.extend_from_slice(&[3, 0, 0, 0, 13, 0, 0, 0]);
    expected.extend_from_slice(&[2, 0, 0, 0, 0, 0, 0, 0]);
    expected.extend_from_slice(b"hello\0\0\0");
    // EMULATOR_XENSTORE_DATA: type 2, length 8 + 4; emulator 2, index 0,
    // "a\0b\0", 4 octets of padding.
    expected.extend_from_slice(&[2, 0, 0, 0, 12, 0, 0, 0]);
    expected.extend_from_slice(&[2, 0, 0, 0, 0, 0, 0, 0]);
    expected.extend_from_slice(b"a\0b\0\0\0\0\0");
    // libxl END.
    expected.extend_from_slice(&[0; 8]);

    let libxl = LibxlWriter::new(Vec::new()).unwrap();
    let mut libxc = libxl.begin_libxc(&HVM_DOMAIN).unwrap();
    libxc.write_static_data_end().unwrap();
    let contents = page(0xab);
    libxc
        .write_pages(&[
            Page {
                pfn: 5,
                page_type: PageType::NoTab,
                contents: Some(&contents),
            },
            Page {
                pfn: 7,
                page_type: PageType::XTab,
                contents: None,
            },
        ])
        .unwrap();
    libxc
        .write_tsc_info(&TscInfo {
            mode: 1,
            khz: 2_000_000,
            nsec: 0x0102_0304_0506_0708,
            incarnation: 3,
        })
        .unwrap();
    libxc
        .write_hvm_params(&[HvmParamEntry {
            index: 1,
            value: 0xfeffc,
        }])
        .unwrap();
    libxc
        .write_x86_pv_vcpu(PvVcpuKind::Basic, 1, &[0xc1, 0xc2, 0xc3])
        .unwrap();
    let mut libxl = libxc.finish_into_libxl().unwrap();
    libxl
        .write_emulator_context(EmulatorId::QEMU_UPSTREAM, 0, b"hello")
        .unwrap();
    libxl
        .write_emulator_xenstore_data(EmulatorId::QEMU_UPSTREAM, 0, &[("a", "b")])
        .unwrap();
    assert_eq!(libxl.bytes_written() + 8, expected.len() as u64);
    let written = libxl.finish().unwrap();
    assert_eq!(written.len(), expected.len());
    if let Some(at) = written.iter().zip(&expected).position(|(a, b)| a != b) {
        panic!("first difference at offset {at:#x}");
    }

    let summary = check_libxl_stream(expected.as_slice(), limits()).unwrap();
    assert_eq!(summary.pages_with_contents, 1);
    assert_eq!(summary.domain, Some(HVM_DOMAIN));
}

#[test]
fn hvm_context_matches_save_h_byte_for_byte() {
    let blob = HvmContextBuilder::new(&SaveHeader {
        magic: hvm_save::HVM_FILE_MAGIC,
        version: 1,
        changeset: 0,
        cpuid: 0x11223344,
        gtsc_khz: 1000,
    })
    .finish();
    let mut expected = vec![1, 0, 0, 0, 24, 0, 0, 0];
    expected.extend_from_slice(&[0x86, 0x12, 0x38, 0x54, 1, 0, 0, 0]);
    expected.extend_from_slice(&[0; 8]);
    expected.extend_from_slice(&[0x44, 0x33, 0x22, 0x11, 0xe8, 0x03, 0, 0]);
    expected.extend_from_slice(&[0; 8]);
    assert_eq!(blob, expected);
}

#[test]
fn hvm_context_parses_and_refuses_bad_entries() {
    let blob = sample_hvm_context();
    let context = hvm_context::parse(&blob).unwrap();
    assert_eq!(context.header.gtsc_khz, 2_000_000);
    let types: Vec<u16> = context.entries.iter().map(|e| e.typecode).collect();
    assert_eq!(types, [2, 5, 10, 11, 20]);
    let cpu: HwCpu = context.entries[0].read_as().unwrap();
    assert_eq!(cpu.rip, 0xfff0);
    assert!(context.entries[0].read_as::<HwLapic>().is_err());

    let bad = |blob: &[u8]| matches!(hvm_context::parse(blob), Err(ReadError::HvmContext(_)));
    // Cut anywhere: no END.
    for cut in 0..blob.len() {
        assert!(bad(&blob[..cut]), "cut at {cut}");
    }
    // Trailing bytes after END.
    let mut trailing = blob.clone();
    trailing.push(0);
    assert!(bad(&trailing));
    // A CPU entry one byte short: change its descriptor's length.
    let mut short = blob.clone();
    short[32 + 4] = short[32 + 4].wrapping_sub(1);
    assert!(bad(&short));
    // A length beyond the blob.
    let mut long = blob.clone();
    long[32 + 4..32 + 8].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(bad(&long));
    // Unknown typecode.
    let mut unknown = blob.clone();
    unknown[32] = 99;
    assert!(bad(&unknown));
    // Bad magic.
    let mut magic = blob.clone();
    magic[8] ^= 1;
    assert!(bad(&magic));
    // No HEADER first.
    assert!(bad(&blob[32..]));
}

// ---- hostile input ----------------------------------------------------------

fn assert_truncated(result: Result<crate::StreamSummary, ReadError>, cut: usize) {
    match result {
        Err(ReadError::Truncated { .. }) => {}
        other => panic!("cut at {cut}: expected a truncation error, got {other:?}"),
    }
}

#[test]
fn every_truncation_of_a_libxl_stream_is_an_error() {
    let bytes = checkpointed_libxl_stream();
    check_libxl_stream(bytes.as_slice(), limits()).unwrap();
    for cut in 0..bytes.len() {
        assert_truncated(check_libxl_stream(&bytes[..cut], limits()), cut);
    }
}

#[test]
fn every_truncation_of_a_libxc_stream_is_an_error() {
    let mut writer = LibxcWriter::new(Vec::new(), &HVM_DOMAIN).unwrap();
    write_every_libxc_record(&mut writer);
    let bytes = writer.finish().unwrap();
    let read_all = |bytes: &[u8]| -> Result<(), ReadError> {
        let mut reader = LibxcReader::new(bytes, limits())?;
        let mut page = [0u8; PAGE_SIZE];
        loop {
            match reader.next_record()? {
                LibxcRecord::End => return Ok(()),
                LibxcRecord::PageData(_) => {
                    while reader.pages_pending() > 0 {
                        reader.read_page(&mut page)?;
                    }
                }
                _ => {}
            }
        }
    };
    read_all(&bytes).unwrap();
    for cut in 0..bytes.len() {
        match read_all(&bytes[..cut]) {
            Err(ReadError::Truncated { .. }) => {}
            other => panic!("cut at {cut}: expected a truncation error, got {other:?}"),
        }
    }
}

/// A libxc stream: headers (version 3), STATIC_DATA_END, then `records`
/// as raw bytes.
fn libxc_stream_with(records: &[u8]) -> Vec<u8> {
    let mut writer = LibxcWriter::new(Vec::new(), &HVM_DOMAIN).unwrap();
    writer.write_static_data_end().unwrap();
    let mut bytes = writer.finish().unwrap();
    bytes.truncate(bytes.len() - 8); // drop END
    bytes.extend_from_slice(records);
    bytes
}

fn record(record_type: u32, body: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    crate::framing::write_record(&mut bytes, record_type, &[body]).unwrap();
    bytes
}

fn first_error(bytes: &[u8]) -> ReadError {
    let mut reader = match LibxcReader::new(bytes, limits()) {
        Ok(reader) => reader,
        Err(error) => return error,
    };
    let mut page = [0u8; PAGE_SIZE];
    loop {
        match reader.next_record() {
            Err(error) => return error,
            Ok(LibxcRecord::End) => panic!("stream read without error"),
            Ok(LibxcRecord::PageData(_)) => {
                while reader.pages_pending() > 0 {
                    if let Err(error) = reader.read_page(&mut page) {
                        return error;
                    }
                }
            }
            Ok(_) => {}
        }
    }
}

fn page_data(count: u32, pfns: &[u64], pages: usize) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&count.to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes());
    for pfn in pfns {
        body.extend_from_slice(&pfn.to_le_bytes());
    }
    body.resize(body.len() + pages * PAGE_SIZE, 0x33);
    record(xc::PAGE_DATA, &body)
}

#[test]
fn oversized_lengths_are_refused_before_reading() {
    // A record header claiming 4 GiB, and nothing after it.
    let mut header = Vec::new();
    header.extend_from_slice(&xc::HVM_CONTEXT.to_le_bytes());
    header.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        first_error(&libxc_stream_with(&header)),
        ReadError::RecordTooLong {
            length: u32::MAX,
            ..
        }
    ));
    // Under the record cap but over the buffered cap.
    let mut header = Vec::new();
    header.extend_from_slice(&xc::HVM_CONTEXT.to_le_bytes());
    header.extend_from_slice(&(100u32 << 20).to_le_bytes());
    assert!(matches!(
        first_error(&libxc_stream_with(&header)),
        ReadError::RecordTooLong { .. }
    ));
    // Within the caps but the input ends: truncation, not a 16 MiB buffer.
    let mut header = Vec::new();
    header.extend_from_slice(&xc::HVM_CONTEXT.to_le_bytes());
    header.extend_from_slice(&(16u32 << 20).to_le_bytes());
    assert!(matches!(
        first_error(&libxc_stream_with(&header)),
        ReadError::Truncated { .. }
    ));
}

#[test]
fn page_data_counts_pfns_and_types_are_checked() {
    // More pfns than a batch may hold.
    let mut body = Vec::new();
    body.extend_from_slice(&1025u32.to_le_bytes());
    body.extend_from_slice(&[0; 4]);
    assert!(matches!(
        first_error(&libxc_stream_with(&record(xc::PAGE_DATA, &body))),
        ReadError::TooManyPfns { count: 1025, .. }
    ));
    // A count the body cannot hold.
    assert!(matches!(
        first_error(&libxc_stream_with(&page_data(4, &[1], 0))),
        ReadError::MalformedRecord {
            record: "PAGE_DATA",
            ..
        }
    ));
    // Count 0.
    assert!(matches!(
        first_error(&libxc_stream_with(&page_data(0, &[], 0))),
        ReadError::MalformedRecord {
            record: "PAGE_DATA",
            ..
        }
    ));
    // A pfn beyond the domain.
    assert!(matches!(
        first_error(&libxc_stream_with(&page_data(1, &[0x10_0000], 1))),
        ReadError::PfnBeyondMax { pfn: 0x10_0000, .. }
    ));
    // A reserved page type.
    assert!(matches!(
        first_error(&libxc_stream_with(&page_data(1, &[5 << 60 | 1], 1))),
        ReadError::BadPageType { page_type: 5, .. }
    ));
    // Pages of contents missing or extra for the types.
    assert!(matches!(
        first_error(&libxc_stream_with(&page_data(1, &[1], 0))),
        ReadError::MalformedRecord {
            record: "PAGE_DATA",
            ..
        }
    ));
    assert!(matches!(
        first_error(&libxc_stream_with(&page_data(1, &[0xf << 60 | 1], 1))),
        ReadError::MalformedRecord {
            record: "PAGE_DATA",
            ..
        }
    ));
    // Before STATIC_DATA_END in a version 3 stream.
    let mut bytes = LibxcWriter::new(Vec::new(), &HVM_DOMAIN)
        .unwrap()
        .finish()
        .unwrap();
    bytes.truncate(bytes.len() - 8);
    bytes.extend_from_slice(&page_data(1, &[1], 1));
    assert!(matches!(
        first_error(&bytes),
        ReadError::BeforeStaticDataEnd {
            record: "PAGE_DATA"
        }
    ));
    // The other pfn lists are checked too.
    assert!(matches!(
        first_error(&libxc_stream_with(&record(
            xc::CHECKPOINT_DIRTY_PFN_LIST,
            &(1u64 << 40).to_le_bytes()
        ))),
        ReadError::PfnBeyondMax { .. }
    ));
}

#[test]
fn unknown_records_follow_the_optional_bit() {
    let mut records = record(0x8000_1234, b"skip me");
    records.extend_from_slice(&record(xc::END, &[]));
    let bytes = libxc_stream_with(&records);
    let mut reader = LibxcReader::new(bytes.as_slice(), limits()).unwrap();
    reader.next_record().unwrap();
    assert_eq!(
        reader.next_record().unwrap(),
        LibxcRecord::UnknownOptional {
            record_type: 0x8000_1234,
            body_length: 7
        }
    );
    assert_eq!(reader.next_record().unwrap(), LibxcRecord::End);

    assert!(matches!(
        first_error(&libxc_stream_with(&record(0x1234, b"no"))),
        ReadError::UnknownMandatoryRecord {
            record_type: 0x1234,
            ..
        }
    ));

    // The same for libxl.
    let mut bytes = LibxlWriter::new(Vec::new()).unwrap().finish().unwrap();
    bytes.truncate(bytes.len() - 8);
    let mut optional = bytes.clone();
    optional.extend_from_slice(&record(0x8000_0006, b"x"));
    optional.extend_from_slice(&record(0, &[]));
    let mut reader = LibxlReader::new(optional.as_slice(), limits()).unwrap();
    assert!(matches!(
        reader.next_record().unwrap(),
        LibxlRecord::UnknownOptional { .. }
    ));
    assert_eq!(reader.next_record().unwrap(), LibxlRecord::End);
    bytes.extend_from_slice(&record(6, &[]));
    let mut reader = LibxlReader::new(bytes.as_slice(), limits()).unwrap();
    assert!(matches!(
        reader.next_record(),
        Err(ReadError::UnknownMandatoryRecord { record_type: 6, .. })
    ));
}

#[test]
fn bad_headers_and_padding_are_refused() {
    let good = LibxcWriter::new(Vec::new(), &HVM_DOMAIN)
        .unwrap()
        .finish()
        .unwrap();
    let with = |offset: usize, value: u8| {
        let mut bytes = good.clone();
        bytes[offset] = value;
        bytes
    };
    assert!(matches!(
        first_error(&with(0, 0)),
        ReadError::BadImageMarker(_)
    ));
    assert!(matches!(
        first_error(&with(8, b'Y')),
        ReadError::BadImageId(_)
    ));
    assert!(matches!(
        first_error(&with(15, 4)),
        ReadError::UnsupportedLibxcVersion(4)
    ));
    assert!(matches!(
        first_error(&with(15, 1)),
        ReadError::UnsupportedLibxcVersion(1)
    ));
    assert!(matches!(first_error(&with(17, 1)), ReadError::BigEndian(_)));
    assert!(matches!(
        first_error(&with(24, 3)),
        ReadError::UnknownDomainType(3)
    ));
    assert!(matches!(
        first_error(&with(28, 13)),
        ReadError::BadPageShift(13)
    ));

    // Non-zero padding after an odd-length body.
    let mut padded = record(xc::X86_PV_VCPU_BASIC, &[0, 0, 0, 0, 0, 0, 0, 0, 1]);
    let last = padded.len() - 1;
    padded[last] = 1;
    assert!(matches!(
        first_error(&libxc_stream_with(&padded)),
        ReadError::BadPadding { .. }
    ));
    // A signalling record with a body.
    assert!(matches!(
        first_error(&libxc_stream_with(&record(xc::END, &[0; 8]))),
        ReadError::MalformedRecord { record: "END", .. }
    ));
    // Version-3 records in a version 2 stream.
    let mut v2 = with(15, 2);
    v2.truncate(v2.len() - 8);
    v2.extend_from_slice(&record(xc::STATIC_DATA_END, &[]));
    assert!(matches!(
        first_error(&v2),
        ReadError::RecordNeedsV3 { version: 2, .. }
    ));
    // A second STATIC_DATA_END.
    assert!(matches!(
        first_error(&libxc_stream_with(&record(xc::STATIC_DATA_END, &[]))),
        ReadError::DuplicateStaticDataEnd
    ));

    // libxl header.
    let libxl = LibxlWriter::new(Vec::new()).unwrap().finish().unwrap();
    let libxl_with = |offset: usize, value: u8| {
        let mut bytes = libxl.clone();
        bytes[offset] = value;
        LibxlReader::new(bytes.as_slice(), limits()).err()
    };
    assert!(matches!(
        libxl_with(0, b'X'),
        Some(ReadError::BadLibxlIdent(_))
    ));
    assert!(matches!(
        libxl_with(11, 3),
        Some(ReadError::UnsupportedLibxlVersion(3))
    ));
    assert!(matches!(libxl_with(15, 1), Some(ReadError::BigEndian(_))));
    assert!(
        libxl_with(15, 2).is_none(),
        "legacy-converted streams are read"
    );
}

#[test]
fn layers_cannot_be_crossed_out_of_turn() {
    let bytes = checkpointed_libxl_stream();
    let mut libxl = LibxlReader::new(bytes.as_slice(), limits()).unwrap();
    // No LIBXC_CONTEXT read yet.
    let Err(ReadError::WrongLayer(_)) = LibxlReader::new(bytes.as_slice(), limits())
        .unwrap()
        .into_libxc()
        .map(|_| ())
    else {
        panic!("into_libxc before LIBXC_CONTEXT");
    };
    libxl.next_record().unwrap();
    let mut libxc = libxl.into_libxc().unwrap();
    libxc.next_record().unwrap();
    assert!(matches!(
        libxc.into_libxl().map(|_| ()),
        Err(ReadError::WrongLayer(_))
    ));
    // A stand-alone libxc stream has no libxl layer to go to.
    let standalone = LibxcWriter::new(Vec::new(), &HVM_DOMAIN)
        .unwrap()
        .finish()
        .unwrap();
    let mut reader = LibxcReader::new(standalone.as_slice(), limits()).unwrap();
    reader.next_record().unwrap();
    assert!(matches!(
        reader.into_libxl().map(|_| ()),
        Err(ReadError::WrongLayer(_))
    ));
    // CHECKPOINT_END with no checkpoint.
    let mut stray = LibxlWriter::new(Vec::new()).unwrap().finish().unwrap();
    stray.truncate(stray.len() - 8);
    stray.extend_from_slice(&record(4, &[]));
    let mut reader = LibxlReader::new(stray.as_slice(), limits()).unwrap();
    assert!(matches!(
        reader.next_record(),
        Err(ReadError::MalformedRecord { .. })
    ));
}

#[test]
fn bad_xenstore_data_is_refused() {
    let bad = |data: &[u8]| {
        let mut body = vec![2, 0, 0, 0, 0, 0, 0, 0];
        body.extend_from_slice(data);
        let mut bytes = LibxlWriter::new(Vec::new()).unwrap().finish().unwrap();
        bytes.truncate(bytes.len() - 8);
        bytes.extend_from_slice(&record(2, &body));
        let mut reader = LibxlReader::new(bytes.as_slice(), limits()).unwrap();
        matches!(reader.next_record(), Err(ReadError::MalformedRecord { .. }))
    };
    assert!(bad(b"key\0value"), "not NUL-terminated");
    assert!(bad(b"key\0"), "odd number of strings");
    assert!(bad(b"bad key\0v\0"), "key characters");
    assert!(bad(b"k\0\xff\0"), "not UTF-8");
    assert!(!bad(&[]), "empty data is no pairs");
}

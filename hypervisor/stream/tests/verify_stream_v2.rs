//! The stream this crate writes, checked by Xen's own verifier: Debian's
//! `verify-stream-v2` from xen-utils-4.17 (installed for the tests by
//! examples/prereqs.sh). A missing verifier fails the test; it is never a
//! skip.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kxen_stream::hvm_context::HvmContextBuilder;
use kxen_stream::libxc::{
    CpuidLeaf, DomainHeader, GuestType, HvmParamEntry, Page, PageType, TscInfo,
};
use kxen_stream::libxl::{EmulatorId, LibxlWriter};
use kxen_stream::{check_libxl_stream, Limits, PAGE_SIZE};
use xen_abi::hvm_save::*;
use zerocopy::FromZeros;

const VERIFY_STREAM_V2: &str = "/usr/lib/xen-4.17/bin/verify-stream-v2";
/// Debian installs the verifier's `xen.migration` modules here, off
/// Python's path, and the script does not add it itself.
const XEN_PYTHON_PATH: &str = "/usr/lib/xen-4.17/lib/python";

/// A temporary file removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str) -> TempFile {
        TempFile(std::env::temp_dir().join(format!("kxen-stream-{}-{name}", std::process::id())))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn run_verifier(path: &Path) -> Output {
    assert!(
        Path::new(VERIFY_STREAM_V2).exists(),
        "{VERIFY_STREAM_V2} is missing: install Debian's xen-utils-4.17 \
         (examples/prereqs.sh does) to check kxen's streams with Xen's verifier"
    );
    Command::new(VERIFY_STREAM_V2)
        .args(["--format", "libxl", "--verbose", "--in"])
        .arg(path)
        .env("PYTHONPATH", XEN_PYTHON_PATH)
        .output()
        .expect("running verify-stream-v2")
}

/// A one-vCPU HVM guest's context: the save records kxen will write.
fn hvm_context() -> Vec<u8> {
    let mut cpu = HwCpu::new_zeroed();
    // Real-mode reset state, as a fresh vCPU has it.
    cpu.rip = 0xfff0;
    cpu.rflags = 2;
    cpu.cr0 = 0x6000_0010;
    cpu.rdx = 0x600;
    cpu.dr6 = 0xffff_0ff0;
    cpu.dr7 = 0x400;
    cpu.cs_sel = 0xf000;
    cpu.cs_base = 0xffff_0000;
    for limit in [
        &mut cpu.cs_limit,
        &mut cpu.ds_limit,
        &mut cpu.es_limit,
        &mut cpu.fs_limit,
        &mut cpu.gs_limit,
        &mut cpu.ss_limit,
        &mut cpu.idtr_limit,
        &mut cpu.gdtr_limit,
        &mut cpu.tr_limit,
        &mut cpu.ldtr_limit,
    ] {
        *limit = 0xffff;
    }
    cpu.cs_arbytes = 0x9b;
    for arbytes in [
        &mut cpu.ds_arbytes,
        &mut cpu.es_arbytes,
        &mut cpu.fs_arbytes,
        &mut cpu.gs_arbytes,
        &mut cpu.ss_arbytes,
    ] {
        *arbytes = 0x93;
    }
    cpu.tr_arbytes = 0x8b;
    cpu.ldtr_arbytes = 0x82;
    cpu.flags = XEN_X86_FPU_INITIALISED;

    let mut xsave = HwCpuXsave::new_zeroed();
    xsave.xcr0 = 3;
    xsave.xcr0_accum = 3;
    xsave.xstate_bv = 3;
    let mut xsave_entry = zerocopy::IntoBytes::as_bytes(&xsave).to_vec();
    // The AVX component (256 bytes at offset 576 of a standard-format
    // area), all zero.
    xsave_entry.resize(xsave_entry.len() + 256, 0);

    let mut builder = HvmContextBuilder::new(&SaveHeader {
        magic: HVM_FILE_MAGIC,
        version: HVM_FILE_VERSION,
        changeset: 0,
        cpuid: 0x000a_06a4,
        gtsc_khz: 2_000_000,
    });
    builder
        .push(HVM_SAVE_CODE_CPU, 0, &cpu)
        .push(
            HVM_SAVE_CODE_PIC,
            0,
            &HwVpic {
                irq_base: 0x08,
                mode_bits: VPIC_IS_MASTER,
                ..Default::default()
            },
        )
        .push(
            HVM_SAVE_CODE_PIC,
            1,
            &HwVpic {
                irq_base: 0x70,
                ..Default::default()
            },
        )
        .push(HVM_SAVE_CODE_IOAPIC, 0, &{
            let mut ioapic = HwVioapic::new_zeroed();
            ioapic.base_address = 0xfec0_0000;
            ioapic.redirtbl = [1 << 16; VIOAPIC_NUM_PINS];
            ioapic
        })
        .push(
            HVM_SAVE_CODE_LAPIC,
            0,
            &HwLapic {
                apic_base_msr: 0xfee0_0900,
                ..Default::default()
            },
        )
        .push(HVM_SAVE_CODE_LAPIC_REGS, 0, &HwLapicRegs::new_zeroed())
        .push(HVM_SAVE_CODE_PIT, 0, &HwPit::default())
        .push(HVM_SAVE_CODE_RTC, 0, &HwRtc::default())
        .push(HVM_SAVE_CODE_PMTIMER, 0, &HwPmtimer::default())
        .push(
            HVM_SAVE_CODE_MTRR,
            0,
            &HwMtrr {
                msr_pat_cr: 0x0007_0406_0007_0406,
                msr_mtrr_cap: 0x508,
                ..Default::default()
            },
        )
        .push(HVM_SAVE_CODE_TSC_ADJUST, 0, &HwTscAdjust::default())
        .push_bytes(HVM_SAVE_CODE_CPU_XSAVE, 0, &xsave_entry)
        .expect("an XSAVE entry fits");
    builder.finish()
}

/// A small but complete HVM save image: libxl header, the libxc stream
/// (headers, a CPUID policy, STATIC_DATA_END, pages, TSC info, params,
/// context, END), kxen's emulator context, libxl END.
fn write_hvm_image(path: &Path) -> u64 {
    let file = std::fs::File::create(path).expect("creating the image");
    let libxl = LibxlWriter::new(std::io::BufWriter::new(file)).unwrap();
    let mut libxc = libxl
        .begin_libxc(&DomainHeader {
            guest_type: GuestType::X86Hvm,
            xen_major: 4,
            xen_minor: 17,
        })
        .unwrap();
    libxc
        .write_x86_cpuid_policy(&[CpuidLeaf {
            leaf: 0,
            subleaf: u32::MAX,
            a: 0xd,
            b: 0x756e_6547,
            c: 0x6c65_746e,
            d: 0x4965_6e69,
        }])
        .unwrap();
    libxc.write_static_data_end().unwrap();
    let (zero, code, data) = (
        Box::new([0u8; PAGE_SIZE]),
        Box::new([0x90u8; PAGE_SIZE]),
        Box::new([0x5au8; PAGE_SIZE]),
    );
    libxc
        .write_pages(&[
            Page {
                pfn: 0,
                page_type: PageType::NoTab,
                contents: Some(&zero),
            },
            Page {
                pfn: 0x9f,
                page_type: PageType::NoTab,
                contents: Some(&code),
            },
            Page {
                pfn: 0xa0,
                page_type: PageType::XTab,
                contents: None,
            },
            Page {
                pfn: 0xfeffc,
                page_type: PageType::NoTab,
                contents: Some(&data),
            },
        ])
        .unwrap();
    libxc
        .write_tsc_info(&TscInfo {
            mode: 0,
            khz: 2_000_000,
            nsec: 1_000_000_000,
            incarnation: 0,
        })
        .unwrap();
    libxc
        .write_hvm_params(&[
            HvmParamEntry {
                index: u64::from(xen_abi::hvm::HVM_PARAM_STORE_PFN),
                value: 0xfeffc,
            },
            HvmParamEntry {
                index: u64::from(xen_abi::hvm::HVM_PARAM_STORE_EVTCHN),
                value: 1,
            },
        ])
        .unwrap();
    libxc.write_hvm_context(&hvm_context()).unwrap();
    let mut libxl = libxc.finish_into_libxl().unwrap();
    libxl
        .write_emulator_context(EmulatorId::UNKNOWN, 0, b"kxen device state")
        .unwrap();
    let written = libxl.bytes_written() + 8;
    let mut out = libxl.finish().unwrap();
    std::io::Write::flush(&mut out).unwrap();
    written
}

#[test]
fn verify_stream_v2_accepts_an_hvm_image() {
    let image = TempFile::new("hvm.img");
    let written = write_hvm_image(&image.0);
    assert_eq!(std::fs::metadata(&image.0).unwrap().len(), written);

    // kxen's own reader accepts it, with every record and save entry.
    let summary = check_libxl_stream(
        std::fs::File::open(&image.0).unwrap(),
        Limits::for_guest_physical_size(4 << 30),
    )
    .expect("kxen-stream reads its own image");
    assert_eq!(summary.pages_with_contents, 3);
    assert_eq!(summary.hvm_context_entries, 12);

    let output = run_verifier(&image.0);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!(
        "PYTHONPATH={XEN_PYTHON_PATH} {VERIFY_STREAM_V2} --format libxl --verbose --in {}\n\
         exit status: {}\n{stdout}{stderr}",
        image.0.display(),
        output.status
    );
    assert!(
        output.status.success(),
        "verify-stream-v2 refused the image ({}):\n{stdout}\n{stderr}",
        output.status
    );
    // The verbose summary names each layer's records, so the verifier
    // walked the whole image rather than stopping early.
    for line in [
        "Libxl Header: little endian",
        "Libxl Record: Libxc context",
        "Libxc Image Header: Version 3, little endian",
        "Domain Header: x86 HVM from Xen 4.17",
        "Libxc Record: x86 CPUID policy",
        "Libxc Record: Static data end",
        "Squashed 1 Page Data records together",
        "Libxc Record: TSC info",
        "Libxc Record: HVM params",
        "Libxc Record: HVM context",
        "Libxc Record: End",
        "Libxl Record: Emulator context",
        "Libxl Record: End",
    ] {
        assert!(stdout.contains(line), "no {line:?} in:\n{stdout}");
    }
}

/// The verifier does refuse: the same image with one padding byte set.
/// Without this the test above could pass against a verifier that
/// accepts anything.
#[test]
fn verify_stream_v2_refuses_a_corrupt_image() {
    let image = TempFile::new("corrupt.img");
    write_hvm_image(&image.0);
    let mut bytes = std::fs::read(&image.0).unwrap();
    // The last record before libxl END is EMULATOR_CONTEXT with a 25-byte
    // body: its last 7 bytes before END are padding.
    let padding_byte = bytes.len() - 8 - 1;
    bytes[padding_byte] = 0xff;
    std::fs::write(&image.0, &bytes).unwrap();

    assert!(
        check_libxl_stream(bytes.as_slice(), Limits::for_guest_physical_size(4 << 30)).is_err(),
        "kxen-stream accepted non-zero padding"
    );
    let output = run_verifier(&image.0);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("Padding containing non0 bytes"), "{stderr}");
}

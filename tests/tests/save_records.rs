//! A vCPU's state through real KVM, Xen's HVM save records and a libxl
//! migration stream that Debian's `verify-stream-v2` accepts, and back
//! onto a fresh vCPU (issue 17, item 6).
//!
//! The VM is made with raw kvm-ioctls, as bench/src/baseline.rs does: the
//! vCPUs never run, so it needs no memory and no kxen-vmm process.
use std::path::{Path, PathBuf};
use std::process::Command;

use kvm_bindings::{kvm_dtable, kvm_segment, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuFd};
use kxen_stream::hvm_context::{self, HvmContextBuilder};
use kxen_stream::libxc::{CpuidLeaf, DomainHeader, GuestType, LibxcRecord, TscInfo};
use kxen_stream::libxl::{LibxlReader, LibxlRecord, LibxlWriter};
use kxen_stream::Limits;
use kxen_vmm::save::cpu::{self, KvmVcpuState};
use kxen_vmm::save::kvm::{read_vcpu_state, write_vcpu_state};
use kxen_vmm::save::XenVcpuRecords;
use xen_abi::hvm_save::*;

const VERIFY_STREAM_V2: &str = "/usr/lib/xen-4.17/bin/verify-stream-v2";
/// Debian installs the verifier's Python modules off Python's path.
const XEN_PYTHON_PATH: &str = "/usr/lib/xen-4.17/lib/python";
/// How far the guest's TSC may move between writing it and reading it
/// back: it is a clock and runs while the test does (10 s at 5 GHz).
const TSC_SLACK: u64 = 50_000_000_000;

struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn segment(selector: u16, base: u64, limit: u32, type_: u8, code_or_data: bool) -> kvm_segment {
    kvm_segment {
        base,
        limit,
        selector,
        type_,
        present: 1,
        s: u8::from(code_or_data),
        g: u8::from(limit == u32::MAX),
        db: u8::from(code_or_data && type_ & 8 == 0),
        l: u8::from(code_or_data && type_ & 8 != 0),
        ..Default::default()
    }
}

fn set_lapic_register(state: &mut KvmVcpuState, offset: usize, value: u32) {
    for (index, byte) in value.to_le_bytes().into_iter().enumerate() {
        state.lapic.regs[offset + index] = byte as std::os::raw::c_char;
    }
}

/// A 64-bit kernel's state in the middle of delivering a page fault.
fn give_known_state(vcpu: &VcpuFd) {
    let mut state = read_vcpu_state(vcpu).expect("reading a fresh vCPU");
    let r = &mut state.regs;
    (r.rax, r.rbx, r.rcx, r.rdx) = (0x1111, 0x2222, 0x3333, 0x4444);
    (r.rsi, r.rdi, r.rsp, r.rbp) = (0x5555, 0x6666, 0xffff_c900_0000_7ff8, 0x8888);
    (r.r8, r.r15) = (0xdead_beef, u64::MAX);
    r.rip = 0xffff_ffff_8100_1234;
    r.rflags = 0x246;
    let s = &mut state.sregs;
    s.cs = segment(0x10, 0, u32::MAX, 0xb, true);
    s.ds = segment(0x18, 0, u32::MAX, 0x3, true);
    s.ss = s.ds;
    s.es = s.ds;
    s.fs = segment(0, 0x7f00_1234_5000, u32::MAX, 0x3, true);
    s.gs = segment(0, 0xffff_8880_0000_0000, u32::MAX, 0x3, true);
    s.tr = segment(0x40, 0xffff_fe00_0000_3000, 0x4087, 0xb, false);
    s.gdt = kvm_dtable {
        base: 0xffff_fe00_0000_1000,
        limit: 0x7f,
        padding: [0; 3],
    };
    s.idt = kvm_dtable {
        base: 0xffff_fe00_0000_0000,
        limit: 0xfff,
        padding: [0; 3],
    };
    (s.cr0, s.cr2, s.cr3, s.cr4) = (0x8005_0033, 0x7f00_dead_0000, 0x1234_5000, 0x6f0);
    s.efer = 0xd01;
    s.cr8 = 2;
    state.fpu.fcw = 0x27f;
    state.fpu.mxcsr = 0x1fa0;
    state.fpu.xmm[3] = [0xa5; 16];
    state.fpu.fpr[1][..10].fill(0x3c);
    state.debugregs.db = [0x1000, 0x2000, 0x3000, 0x4000];
    state.debugregs.dr7 = 0x403;
    state.msrs.star = 0x0023_0010_0000_0000;
    state.msrs.lstar = 0xffff_ffff_8100_2000;
    state.msrs.cstar = 0xffff_ffff_8100_3000;
    state.msrs.sfmask = 0x4_7700;
    state.msrs.kernel_gs_base = 0x7f00_0000_8000;
    (
        state.msrs.sysenter_cs,
        state.msrs.sysenter_esp,
        state.msrs.sysenter_eip,
    ) = (0x10, 0xffff_8800_0000_1000, 0xffff_ffff_8100_4000);
    state.msrs.tsc_aux = 5;
    state.msrs.tsc = 0x1234_5678_9abc;
    set_lapic_register(&mut state, 0x80, 0x20);
    set_lapic_register(&mut state, 0xf0, 0x1ff);
    set_lapic_register(&mut state, 0x3e0, 0x3);
    state.events = Default::default();
    state.events.exception.injected = 1;
    state.events.exception.nr = 14;
    state.events.exception.has_error_code = 1;
    state.events.exception.error_code = 2;
    write_vcpu_state(vcpu, &state).expect("setting the known state");
}

fn write_image(path: &Path, records: &XenVcpuRecords) {
    let mut builder = HvmContextBuilder::new(&SaveHeader {
        magic: HVM_FILE_MAGIC,
        version: HVM_FILE_VERSION,
        changeset: 0,
        cpuid: 0x000a_06a4,
        gtsc_khz: 2_000_000,
    });
    builder
        .push(HVM_SAVE_CODE_CPU, 0, &records.cpu)
        .push(HVM_SAVE_CODE_LAPIC, 0, &records.lapic)
        .push(HVM_SAVE_CODE_LAPIC_REGS, 0, &records.lapic_regs);
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
    libxc
        .write_tsc_info(&TscInfo {
            mode: 0,
            khz: 2_000_000,
            nsec: 0,
            incarnation: 0,
        })
        .unwrap();
    libxc.write_hvm_context(&builder.finish()).unwrap();
    let libxl = libxc.finish_into_libxl().unwrap();
    let mut out = libxl.finish().unwrap();
    std::io::Write::flush(&mut out).unwrap();
}

/// The image's HVM context, read back with kxen-stream's reader.
fn read_image(path: &Path) -> XenVcpuRecords {
    let file = std::io::BufReader::new(std::fs::File::open(path).unwrap());
    let mut libxl = LibxlReader::new(file, Limits::new(0)).expect("libxl header");
    assert!(matches!(
        libxl.next_record().unwrap(),
        LibxlRecord::LibxcContext
    ));
    let mut libxc = libxl.into_libxc().expect("libxc headers");
    let mut blob = None;
    loop {
        match libxc.next_record().expect("a libxc record") {
            LibxcRecord::HvmContext(body) => blob = Some(body),
            LibxcRecord::End => break,
            _ => {}
        }
    }
    let blob = blob.expect("an HVM_CONTEXT record");
    let context = hvm_context::parse(&blob).expect("a valid HVM context");
    let entry = |code| {
        let matching: Vec<_> = context
            .entries
            .iter()
            .filter(|entry| entry.typecode == code && entry.instance == 0)
            .collect();
        assert_eq!(matching.len(), 1, "save entries of type {code}");
        *matching[0]
    };
    XenVcpuRecords {
        cpu: entry(HVM_SAVE_CODE_CPU).read_as().unwrap(),
        lapic: entry(HVM_SAVE_CODE_LAPIC).read_as().unwrap(),
        lapic_regs: entry(HVM_SAVE_CODE_LAPIC_REGS).read_as().unwrap(),
    }
}

#[test]
fn vcpu_state_survives_a_verified_stream_onto_a_fresh_vcpu() {
    let kvm = Kvm::new().expect("opening /dev/kvm");
    let vm = kvm.create_vm().expect("creating a VM");
    vm.create_irq_chip()
        .expect("creating the in-kernel irqchip");
    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .expect("KVM's CPUID");
    let source = vm.create_vcpu(0).expect("vCPU 0");
    source.set_cpuid2(&cpuid).expect("vCPU 0's CPUID");
    give_known_state(&source);

    let original = read_vcpu_state(&source).expect("reading vCPU 0");
    assert_eq!(original.sregs.efer & 0x400, 0x400, "vCPU 0 is in long mode");
    assert_eq!(original.events.exception.nr, 14, "the #PF is pending");
    let records = cpu::save(&original).expect("vCPU 0 as save records");

    let image = TempFile(
        std::env::temp_dir().join(format!("kxen-save-records-{}.img", std::process::id())),
    );
    write_image(&image.0, &records);
    assert!(
        Path::new(VERIFY_STREAM_V2).exists(),
        "{VERIFY_STREAM_V2} is missing: install Debian's xen-utils-4.17"
    );
    let output = Command::new(VERIFY_STREAM_V2)
        .args(["--format", "libxl", "--verbose", "--in"])
        .arg(&image.0)
        .env("PYTHONPATH", XEN_PYTHON_PATH)
        .output()
        .expect("running verify-stream-v2");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "verify-stream-v2 refused the image ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(
        stdout.contains("Libxc Record: HVM context"),
        "the verifier did not reach the HVM context:\n{stdout}"
    );

    let read_back = read_image(&image.0);
    assert_eq!(read_back, records, "the records came back from the stream");
    let restored = cpu::load(&read_back).expect("loading the records");

    let target = vm.create_vcpu(1).expect("vCPU 1");
    target.set_cpuid2(&cpuid).expect("vCPU 1's CPUID");
    write_vcpu_state(&target, &restored).expect("setting vCPU 1");
    let mut landed = read_vcpu_state(&target).expect("reading vCPU 1");

    // The TSC is a clock: it moved on while the test ran.
    let tsc_moved = landed.msrs.tsc.wrapping_sub(original.msrs.tsc);
    assert!(
        tsc_moved < TSC_SLACK,
        "TSC {:#x} then {:#x}",
        original.msrs.tsc,
        landed.msrs.tsc
    );
    landed.msrs.tsc = original.msrs.tsc;
    // Fields Xen's records do not carry are the fresh vCPU's own; compare
    // the ones they do.
    assert_eq!(landed.regs, original.regs, "general registers");
    assert_eq!(landed.sregs, original.sregs, "special registers");
    assert_eq!(landed.fpu, original.fpu, "FPU");
    assert_eq!(landed.debugregs.db, original.debugregs.db);
    assert_eq!(landed.debugregs.dr6, original.debugregs.dr6);
    assert_eq!(landed.debugregs.dr7, original.debugregs.dr7);
    assert_eq!(landed.events.exception, original.events.exception);
    assert_eq!(
        landed.events.interrupt.injected,
        original.events.interrupt.injected
    );
    assert_eq!(landed.events.nmi.injected, original.events.nmi.injected);
    assert_eq!(landed.msrs, original.msrs, "MSRs");
    assert_eq!(landed.lapic, original.lapic, "LAPIC page");
    // And the whole translation agrees: vCPU 1 saves to the same records.
    let mut again = cpu::save(&landed).expect("vCPU 1 as save records");
    again.cpu.tsc = records.cpu.tsc;
    assert_eq!(again, records);
}

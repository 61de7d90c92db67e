//! A vCPU's state through real KVM, Xen's HVM save records and a libxl
//! migration stream that Debian's `verify-stream-v2` accepts, and back
//! onto a fresh vCPU (issue 17, item 6).
//!
//! The VM is made with raw kvm-ioctls, as bench/src/baseline.rs does: the
//! vCPUs never run, so it needs no memory and no kxen-vmm process.
use std::path::{Path, PathBuf};

use kvm_bindings::{
    kvm_dtable, kvm_pit_config, kvm_segment, KVM_MAX_CPUID_ENTRIES, KVM_PIT_FLAGS_SPEAKER_DATA_ON,
    KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use kxen_devices::bus::BusDevice;
use kxen_devices::cmos::Cmos;
use kxen_stream::hvm_context::{self, HvmContextBuilder};
use kxen_stream::libxc::{CpuidLeaf, DomainHeader, GuestType, LibxcRecord, TscInfo};
use kxen_stream::libxl::{LibxlReader, LibxlRecord, LibxlWriter};
use kxen_stream::Limits;
use kxen_tests::stream::verify_stream_v2;
use kxen_vmm::save::cpu::{self, KvmVcpuState};
use kxen_vmm::save::kvm::{
    read_mtrr_msrs, read_platform_state, read_vcpu_state, read_xsave, write_mtrr_msrs,
    write_platform_state, write_vcpu_state, write_xsave, KvmPlatformState,
};
use kxen_vmm::save::platform::{self, RTE_MASKED};
use kxen_vmm::save::xsave::{self, XstateLayout};
use kxen_vmm::save::XenVcpuRecords;
use kxen_vmm::save::{irq, mtrr, rtc};
use xen_abi::hvm_save::*;

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

fn context_builder() -> HvmContextBuilder {
    HvmContextBuilder::new(&SaveHeader {
        magic: HVM_FILE_MAGIC,
        version: HVM_FILE_VERSION,
        changeset: 0,
        cpuid: 0x000a_06a4,
        gtsc_khz: 2_000_000,
    })
}

fn write_image(path: &Path, records: &XenVcpuRecords) {
    let mut builder = context_builder();
    builder
        .push(HVM_SAVE_CODE_CPU, 0, &records.cpu)
        .push(HVM_SAVE_CODE_LAPIC, 0, &records.lapic)
        .push(HVM_SAVE_CODE_LAPIC_REGS, 0, &records.lapic_regs);
    write_context_image(path, &builder.finish());
}

fn write_context_image(path: &Path, context: &[u8]) {
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
    libxc.write_hvm_context(context).unwrap();
    let libxl = libxc.finish_into_libxl().unwrap();
    let mut out = libxl.finish().unwrap();
    std::io::Write::flush(&mut out).unwrap();
}

/// The image's HVM context blob, read back with kxen-stream's reader.
fn read_context_image(path: &Path) -> Vec<u8> {
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
    blob.expect("an HVM_CONTEXT record")
}

/// The one entry of `code` and `instance` in an HVM context.
fn entry<'a>(
    context: &hvm_context::HvmContext<'a>,
    code: u16,
    instance: u16,
) -> hvm_context::HvmContextEntry<'a> {
    let matching: Vec<_> = context
        .entries
        .iter()
        .filter(|entry| entry.typecode == code && entry.instance == instance)
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "save entries of type {code}, instance {instance}"
    );
    *matching[0]
}

/// The image's vCPU 0 records.
fn read_image(path: &Path) -> XenVcpuRecords {
    let blob = read_context_image(path);
    let context = hvm_context::parse(&blob).expect("a valid HVM context");
    let entry = |code| entry(&context, code, 0);
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
    verify_stream_v2(&image.0, "libxl", &["Libxc Record: HVM context"]);

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

/// A VM with the in-kernel irqchip and PIT kxen-vmm gives every domain.
fn platform_vm(kvm: &Kvm) -> VmFd {
    let vm = kvm.create_vm().expect("creating a VM");
    vm.create_irq_chip()
        .expect("creating the in-kernel irqchip");
    vm.create_pit2(kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    })
    .expect("creating the in-kernel PIT");
    vm
}

/// Non-default PICs, IOAPIC and PIT. PIT channels 1 and 2 are programmed
/// and channel 0 is not: channel 0 would raise IRQ 0 while the test reads
/// the state, so the PIC's and IOAPIC's requests would move under it.
fn give_known_platform_state(vm: &VmFd) {
    let mut state = read_platform_state(vm).expect("reading a fresh platform");
    let [master, slave] = &mut state.pics;
    (master.imr, master.irq_base, master.elcr, master.auto_eoi) = (0xb8, 0x20, 0x08, 1);
    (slave.imr, slave.irq_base, slave.elcr, slave.priority_add) = (0x3f, 0x28, 0x0c, 5);
    slave.read_reg_select = 1;
    let ioapic = &mut state.ioapic;
    ioapic.id = 2;
    ioapic.ioregsel = 0x18;
    // Pin 4 (the UART): edge, vector 0x34 to APIC 0; pin 9 (ACPI): level,
    // active low, vector 0x39 to APIC 1, masked.
    ioapic.redirtbl[4].bits = 0x34;
    ioapic.redirtbl[9].bits = (1 << 56) | RTE_MASKED | (1 << 15) | (1 << 13) | 0x39;
    for (channel, (count, mode)) in state.pit.channels[1..]
        .iter_mut()
        .zip([(0x1234, 3), (1193, 2)])
    {
        (channel.count, channel.mode, channel.rw_mode) = (count, mode, 3);
        (channel.read_state, channel.write_state) = (3, 4);
        channel.write_latch = 0x55;
        (channel.count_latched, channel.latched_count) = (3, 0x0abc);
    }
    state.pit.channels[2].gate = 1;
    state.pit.flags = KVM_PIT_FLAGS_SPEAKER_DATA_ON;
    write_platform_state(vm, &state).expect("setting the known platform");
}

/// PAT and MTRRs as a firmware leaves them: write-back below 2 GiB and
/// 3 GiB, uncached above; and a ymm register's upper half in the XSAVE
/// area when the vCPU has AVX.
fn give_known_mtrr_and_xsave(vcpu: &VcpuFd, layout: &XstateLayout) {
    let mut msrs = read_mtrr_msrs(vcpu).expect("reading the MTRRs");
    msrs[0] = 0x0007_0406_0007_0106;
    msrs[1] = 0x6;
    msrs[2] = 0xf_8000_0800;
    msrs[3] = 0x8000_0006;
    msrs[4] = 0xf_c000_0800;
    for (index, fixed) in msrs[17..28].iter_mut().enumerate() {
        *fixed = 0x0606_0606_0606_0600 | [0, 1, 4, 5, 6][index % 5];
    }
    msrs[29] = 0xc00;
    write_mtrr_msrs(vcpu, &msrs).expect("setting the MTRRs");

    let (mut area, mut xcr0) = read_xsave(vcpu).expect("reading the XSAVE area");
    fill_area(&mut area.region, 160 + 16 * 5, 16, 0x77);
    if layout.supported_xcr0 & xsave::YMM != 0 {
        xcr0 |= xsave::SSE | xsave::YMM;
        let (offset, _) = layout.components[2];
        fill_area(&mut area.region, offset as usize + 16 * 5, 16, 0x99);
        area.region[512 / 4] |= xsave::YMM as u32;
    }
    write_xsave(vcpu, &area, xcr0).expect("setting the XSAVE area");
}

/// Sets bytes `start..start + length` of an XSAVE area held as words.
fn fill_area(region: &mut [u32; 1024], start: usize, length: usize, value: u8) {
    for byte in start..start + length {
        let shift = (byte % 4) * 8;
        let word = &mut region[byte / 4];
        *word = (*word & !(0xff << shift)) | (u32::from(value) << shift);
    }
}

#[test]
fn platform_and_vcpu_records_survive_a_verified_stream_onto_a_fresh_vm() {
    let kvm = Kvm::new().expect("opening /dev/kvm");
    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .expect("KVM's CPUID");
    let layout = XstateLayout::from_cpuid(&cpuid);
    let source_vm = platform_vm(&kvm);
    let source = source_vm.create_vcpu(0).expect("source vCPU");
    source.set_cpuid2(&cpuid).expect("source vCPU's CPUID");
    give_known_state(&source);
    give_known_mtrr_and_xsave(&source, &layout);
    give_known_platform_state(&source_vm);

    let platform = read_platform_state(&source_vm).expect("reading the platform");
    let vcpu_state = read_vcpu_state(&source).expect("reading the vCPU");
    let (area, xcr0) = read_xsave(&source).expect("reading the XSAVE area");
    let mtrrs = read_mtrr_msrs(&source).expect("reading the MTRRs");
    assert_eq!(platform.ioapic.id, 2, "the known state took");
    assert_eq!(platform.pit.channels[1].count, 0x1234);
    assert_eq!(mtrrs[29], 0xc00);

    let vcpu_records = cpu::save(&vcpu_state).expect("vCPU records");
    let pics = [0, 1].map(|chip| platform::save_pic(&platform.pics[chip], chip).unwrap());
    let ioapic = platform::save_ioapic(&platform.ioapic);
    let pit = platform::save_pit(&platform.pit).expect("PIT record");
    let mtrr_record = mtrr::save(&mtrrs);
    let (pci_irqs, isa_irqs, pci_link) = irq::save_irq_records();
    // A guest that set its clock (binary mode, year 2031) and left the
    // index on register B, as kxen-vmm's CMOS on the port bus would hold it.
    let mut source_cmos = Cmos::new(256 << 20, 0);
    for (register, value) in [
        (0x0b, 0x86),
        (0x09, 31),
        (0x32, 20),
        (0x0b, 0x06),
        (0x8b, 0),
    ] {
        source_cmos.write(0, &[register]);
        if register != 0x8b {
            source_cmos.write(1, &[value]);
        }
    }
    let clock = source_cmos.save_clock();
    assert_ne!(clock.offset_secs, 0, "the guest's clock took");
    let rtc_record = rtc::save_rtc(&clock);
    let xsave_record = xsave::save(&area, xcr0, &layout).expect("CPU_XSAVE record");
    let mut builder = context_builder();
    builder
        .push(HVM_SAVE_CODE_CPU, 0, &vcpu_records.cpu)
        .push(HVM_SAVE_CODE_PIC, 0, &pics[0])
        .push(HVM_SAVE_CODE_PIC, 1, &pics[1])
        .push(HVM_SAVE_CODE_IOAPIC, 0, &ioapic)
        .push(HVM_SAVE_CODE_LAPIC, 0, &vcpu_records.lapic)
        .push(HVM_SAVE_CODE_LAPIC_REGS, 0, &vcpu_records.lapic_regs)
        .push(HVM_SAVE_CODE_PCI_IRQ, 0, &pci_irqs)
        .push(HVM_SAVE_CODE_ISA_IRQ, 0, &isa_irqs)
        .push(HVM_SAVE_CODE_PCI_LINK, 0, &pci_link)
        .push(HVM_SAVE_CODE_PIT, 0, &pit)
        .push(HVM_SAVE_CODE_RTC, 0, &rtc_record)
        .push(HVM_SAVE_CODE_MTRR, 0, &mtrr_record);
    builder
        .push_bytes(HVM_SAVE_CODE_CPU_XSAVE, 0, &xsave_record)
        .expect("the XSAVE entry");
    let image = TempFile(
        std::env::temp_dir().join(format!("kxen-save-platform-{}.img", std::process::id())),
    );
    write_context_image(&image.0, &builder.finish());
    verify_stream_v2(&image.0, "libxl", &["Libxc Record: HVM context"]);

    let blob = read_context_image(&image.0);
    let context = hvm_context::parse(&blob).expect("a valid HVM context");
    let codes: Vec<(u16, u16)> = context
        .entries
        .iter()
        .map(|entry| (entry.typecode, entry.instance))
        .collect();
    assert_eq!(
        codes,
        [
            (2, 0),
            (3, 0),
            (3, 1),
            (4, 0),
            (5, 0),
            (6, 0),
            (7, 0),
            (8, 0),
            (9, 0),
            (10, 0),
            (11, 0),
            (14, 0),
            (16, 0)
        ]
    );
    let read = |code, instance| entry(&context, code, instance);
    let target_vm = platform_vm(&kvm);
    let target = target_vm.create_vcpu(0).expect("target vCPU");
    target.set_cpuid2(&cpuid).expect("target vCPU's CPUID");
    let restored = cpu::load(&XenVcpuRecords {
        cpu: read(HVM_SAVE_CODE_CPU, 0).read_as().unwrap(),
        lapic: read(HVM_SAVE_CODE_LAPIC, 0).read_as().unwrap(),
        lapic_regs: read(HVM_SAVE_CODE_LAPIC_REGS, 0).read_as().unwrap(),
    })
    .expect("loading the vCPU records");
    write_vcpu_state(&target, &restored).expect("setting the vCPU");
    let (loaded_area, loaded_xcr0) =
        xsave::load(read(HVM_SAVE_CODE_CPU_XSAVE, 0).data, &layout).expect("loading CPU_XSAVE");
    write_xsave(&target, &loaded_area, loaded_xcr0).expect("setting the XSAVE area");
    let target_cap = read_mtrr_msrs(&target).expect("the target's MTRRcap")[28];
    let loaded_mtrrs = mtrr::load(&read(HVM_SAVE_CODE_MTRR, 0).read_as().unwrap(), target_cap)
        .expect("loading MTRR");
    write_mtrr_msrs(&target, &loaded_mtrrs).expect("setting the MTRRs");
    let mut loaded_platform = KvmPlatformState::default();
    for chip in 0..2 {
        let record = read(HVM_SAVE_CODE_PIC, chip as u16).read_as().unwrap();
        loaded_platform.pics[chip] = platform::load_pic(&record, chip).expect("loading a PIC");
    }
    loaded_platform.ioapic =
        platform::load_ioapic(&read(HVM_SAVE_CODE_IOAPIC, 0).read_as().unwrap())
            .expect("loading IOAPIC");
    loaded_platform.pit =
        platform::load_pit(&read(HVM_SAVE_CODE_PIT, 0).read_as().unwrap()).expect("loading PIT");
    write_platform_state(&target_vm, &loaded_platform).expect("setting the platform");
    let wires = irq::load_irq_records(
        &read(HVM_SAVE_CODE_PCI_IRQ, 0).read_as().unwrap(),
        &read(HVM_SAVE_CODE_ISA_IRQ, 0).read_as().unwrap(),
        &read(HVM_SAVE_CODE_PCI_LINK, 0).read_as().unwrap(),
    )
    .expect("loading the IRQ wire records");
    assert_eq!(wires, irq::IrqWires::default(), "no link routed");
    let mut target_cmos = Cmos::new(256 << 20, 0);
    target_cmos.load_clock(
        &rtc::load_rtc_entry(read(HVM_SAVE_CODE_RTC, 0).data).expect("loading the RTC record"),
    );
    // The index came along (port 0x71 reads register B) and the clock
    // reads the guest's year, not the host's.
    let mut register_b = [0u8];
    target_cmos.read(1, &mut register_b);
    assert_eq!(register_b[0], 0x06, "register B through the saved index");
    let landed_clock = target_cmos.save_clock();
    assert_eq!(landed_clock.registers[0x09], 31, "the guest's year");
    assert!(
        (landed_clock.offset_secs - clock.offset_secs).abs() <= 1,
        "clock offset {} became {}",
        clock.offset_secs,
        landed_clock.offset_secs
    );

    // Every carried field, read back from the target VM.
    let landed = read_platform_state(&target_vm).expect("reading the target platform");
    assert_eq!(landed.pics, platform.pics, "PICs");
    assert_eq!(platform::save_ioapic(&landed.ioapic), ioapic, "IOAPIC");
    assert_eq!(landed.ioapic.base_address, platform.ioapic.base_address);
    for (landed, original) in landed.pit.channels.iter().zip(&platform.pit.channels) {
        let mut original = *original;
        original.count_load_time = landed.count_load_time;
        assert_eq!(*landed, original, "PIT channel");
    }
    assert_eq!(landed.pit.flags, platform.pit.flags, "PIT flags");
    let (landed_area, landed_xcr0) = read_xsave(&target).expect("reading the target's XSAVE");
    assert_eq!(landed_xcr0, xcr0, "XCR0");
    assert_eq!(landed_area.region, area.region, "XSAVE area");
    assert_eq!(
        read_mtrr_msrs(&target).expect("target MTRRs"),
        mtrrs,
        "MTRRs"
    );
    let mut landed_vcpu = read_vcpu_state(&target).expect("reading the target vCPU");
    landed_vcpu.msrs.tsc = vcpu_state.msrs.tsc;
    assert_eq!(landed_vcpu.regs, vcpu_state.regs);
    assert_eq!(landed_vcpu.sregs, vcpu_state.sregs);
    assert_eq!(landed_vcpu.fpu, vcpu_state.fpu);
    assert_eq!(landed_vcpu.lapic, vcpu_state.lapic);
}

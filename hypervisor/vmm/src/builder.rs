//! Building a domain: KVM's VM, guest memory, the kernel, the Xen layer,
//! the devices and the vCPUs. What comes out ([`Vm`]) is the pieces the
//! threads share, each handed on to the service that uses it; running it
//! is [`crate::vm`]'s job.

use std::fs::File;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kvm_bindings::{kvm_enable_cap, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Cap, Kvm, MsrFilterDefaultAction, MsrFilterRange, MsrFilterRangeFlags};
use tracing::warn;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};
use xen_abi::cpuid::XEN_HYPERCALL_MSR;
use xen_abi::hvm::*;
use xen_abi::pvh::MemmapEntry;

use kxen_loader::start_info::{self, BootBlockLayout, Module};
use kxen_xen::{Domain, DomainConfig};

use crate::ap_start::ApStarter;
use crate::boot_cpu::{enable_local_apic, setup_linux64_bsp, setup_pvh_bsp, BspEntry};
use crate::config::{VmConfig, DOM0_CONSOLE_PORT, DOM0_XENSTORE_PORT, XEN_MAJOR, XEN_MINOR};
use crate::cpuid::{self, XenCpuidParams};
use crate::dom0::Dom0Ports;
use crate::error::VmError;
use crate::events::EventRouting;
use crate::exit::ExitLatch;
use crate::hvm::HvmDevices;
use crate::kick::{Kicker, Pauser};
use crate::memory::{self, GuestMemory};
use crate::platform::VmmPlatform;
use crate::syscall_bridge::{self, SyscallBridge};
use crate::vcpu::gate::GuestEntryGate;
use crate::vcpu::shared::VcpuShared;
use crate::vcpu::{kick_handler, Vcpu};

/// A built domain, not yet running.
pub struct Vm {
    pub domain: Arc<Domain>,
    pub memory: Arc<GuestMemory>,
    pub dom0: Arc<Dom0Ports>,
    pub events: Arc<EventRouting>,
    pub hvm: Option<Arc<HvmDevices>>,
    pub kicker: Arc<Kicker>,
    pub pauser: Arc<Pauser>,
    pub exit: Arc<ExitLatch>,
    pub ap_start: Arc<ApStarter>,
    /// The timer service's end of the platform's timer-change eventfd.
    pub timers_changed: EventFd,
    /// What the vCPU threads share (also: when the guest was entered).
    pub vcpu_shared: Arc<VcpuShared>,
    pub vcpus: Vec<Vcpu>,
    pub boot: BspEntry,
    pub max_memory_kib: u64,
}

fn domain_handle(domid: u16, name: &str) -> [u8; 16] {
    let mut handle = [0u8; 16];
    if let Ok(mut f) = File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut handle);
    }
    if handle == [0; 16] {
        handle[..2].copy_from_slice(&domid.to_le_bytes());
        for (i, b) in name.bytes().take(14).enumerate() {
            handle[2 + i] = b;
        }
    }
    // RFC 4122 version 4 layout.
    handle[6] = (handle[6] & 0x0f) | 0x40;
    handle[8] = (handle[8] & 0x3f) | 0x80;
    handle
}

/// Build the domain `cfg` describes. `started` is when the process began.
pub fn build(cfg: &VmConfig, started: Instant) -> Result<Vm, VmError> {
    let kvm = Kvm::new()?;
    for (cap, name) in [
        (Cap::Irqchip, "an in-kernel irqchip"),
        (Cap::X86UserSpaceMsr, "user-space MSR exits"),
        (Cap::SyncRegs, "synced registers"),
        (Cap::SignalMsi, "KVM_SIGNAL_MSI"),
    ] {
        if !kvm.check_extension(cap) {
            return Err(VmError::MissingCap(name));
        }
    }
    if cfg.vcpus == 0 || cfg.vcpus > 32 {
        return Err(VmError::Setup(format!("vcpus={} (1..=32)", cfg.vcpus)));
    }
    let vm = Arc::new(kvm.create_vm()?);
    // Needed on VT-x without unrestricted guest; harmless elsewhere.
    if let Err(e) = vm.set_tss_address(0xfffb_d000) {
        warn!("KVM_SET_TSS_ADDR: {e}");
    }
    vm.create_irq_chip()?;
    // KVM's PIT (speaker port included): Linux calibrates the TSC against
    // PIT channel 2 and, finding no PIT, spins on port 0x42 for seconds of
    // emulated time before giving up.
    vm.create_pit2(kvm_bindings::kvm_pit_config {
        flags: kvm_bindings::KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    })?;

    // The hypercall page MSR exits to us; every other MSR stays with KVM.
    // Installing the filter waits for an SRCU grace period in KVM (~15 ms
    // here), so it runs beside the rest of domain construction.
    let cap = kvm_enable_cap {
        cap: kvm_bindings::KVM_CAP_X86_USER_SPACE_MSR,
        args: [kvm_bindings::KVM_MSR_EXIT_REASON_FILTER as u64, 0, 0, 0],
        ..Default::default()
    };
    vm.enable_cap(&cap)?;
    // HVM guests on PVM hosts: their LSTAR write exits too, for the
    // syscall bridge.
    let syscall_bridge = (cfg.hvm.is_some() && syscall_bridge::host_needs_bridge())
        .then(|| Arc::new(SyscallBridge::default()));
    let filter_vm = vm.clone();
    let filter_lstar = syscall_bridge.is_some();
    let msr_filter = std::thread::Builder::new()
        .name("msr-filter".into())
        .spawn(move || {
            let deny = [0u8; 1];
            let mut ranges = vec![MsrFilterRange {
                flags: MsrFilterRangeFlags::WRITE,
                base: XEN_HYPERCALL_MSR,
                msr_count: 1,
                bitmap: &deny,
            }];
            if filter_lstar {
                ranges.push(MsrFilterRange {
                    flags: MsrFilterRangeFlags::WRITE,
                    base: syscall_bridge::MSR_LSTAR,
                    msr_count: 1,
                    bitmap: &deny,
                });
            }
            filter_vm.set_msr_filter(MsrFilterDefaultAction::ALLOW, &ranges)
        })
        .map_err(|e| VmError::Setup(format!("MSR filter thread: {e}")))?;

    let memory = Arc::new(GuestMemory::new(
        vm.clone(),
        cfg.memory_mib
            .checked_mul(1 << 20)
            .ok_or(VmError::Setup("memory size".into()))?,
    )?);

    // Load the kernel and the ramdisk.
    let snapshot = memory.snapshot();
    let mut kernel_file = File::open(&cfg.kernel).map_err(|e| VmError::Kernel {
        path: cfg.kernel.clone(),
        source: e.into(),
    })?;
    let memmap = memory.layout.memmap();
    let platform = match cfg.hvm {
        Some(_) => kxen_loader::acpi::Platform::Pc,
        None => kxen_loader::acpi::Platform::HwReduced,
    };
    let virtio_acpi = cfg
        .hvm
        .as_ref()
        .map(|h| crate::virtio::acpi_devices(&h.virtio))
        .unwrap_or_default();
    let rsdp = kxen_loader::acpi::write(&snapshot, cfg.vcpus, platform, &virtio_acpi)
        .map_err(VmError::Boot)?;
    let ramdisk = match &cfg.ramdisk {
        Some(path) => Some(std::fs::read(path).map_err(|source| VmError::Ramdisk {
            path: path.clone(),
            source,
        })?),
        None => None,
    };
    let low_end = memory.layout.ram[0].1;
    // A PV domain's memory is written once its event channels exist
    // (start_info names them); here the kernel is parsed and laid out.
    let mut pv_plan = None;
    let boot = if cfg.pv {
        let plan = plan_pv(cfg, low_end, ramdisk.as_ref().map_or(0, |r| r.len() as u64))?;
        let entry = BspEntry::Pv {
            entry: plan.layout.entry,
            start_info_va: plan.layout.va(plan.layout.start_info),
        };
        pv_plan = Some(plan);
        entry
    } else if cfg.hvm.is_some() {
        let inputs = kxen_loader::linux::LinuxBootInputs {
            cmdline: &cfg.cmdline,
            initrd: ramdisk.as_deref(),
            memmap: &memmap,
            initrd_limit: low_end,
            rsdp,
        };
        let linux =
            kxen_loader::linux::load(&snapshot, &mut kernel_file, &inputs).map_err(|source| {
                VmError::Kernel {
                    path: cfg.kernel.clone(),
                    source,
                }
            })?;
        BspEntry::Linux64 {
            entry: linux.entry,
            boot_params: linux.boot_params,
        }
    } else {
        let kernel = kxen_loader::load_pvh_elf(&snapshot, &mut kernel_file).map_err(|source| {
            VmError::Kernel {
                path: cfg.kernel.clone(),
                source,
            }
        })?;
        let mut modules = Vec::new();
        if let Some(data) = &ramdisk {
            let size = data.len() as u64;
            let addr = low_end
                .checked_sub(size)
                .map(|a| a & !0xfff)
                .filter(|&a| a >= kernel.end.max(0x10_0000))
                .ok_or(VmError::RamdiskTooLarge)?;
            snapshot
                .write_slice(data, GuestAddress(addr))
                .map_err(|_| VmError::RamdiskTooLarge)?;
            modules.push(Module { paddr: addr, size });
        }
        let pvh_memmap: Vec<MemmapEntry> = memmap
            .iter()
            .map(|e| MemmapEntry {
                addr: e.addr,
                size: e.size,
                kind: e.kind,
                reserved: 0,
            })
            .collect();
        let start_info = start_info::write(
            &snapshot,
            &BootBlockLayout::default(),
            &cfg.cmdline,
            &pvh_memmap,
            &modules,
            rsdp,
        )
        .map_err(VmError::Boot)?;
        BspEntry::Pvh {
            entry: kernel.entry,
            start_info,
        }
    };
    drop(snapshot);

    // vCPUs: created before the domain because the TSC rate comes from KVM.
    let mut vcpu_fds = Vec::new();
    for id in 0..cfg.vcpus {
        vcpu_fds.push(vm.create_vcpu(id as u64)?);
    }
    let tsc_khz = vcpu_fds[0].get_tsc_khz().unwrap_or_else(|e| {
        warn!("KVM_GET_TSC_KHZ: {e}; assuming 1 GHz");
        1_000_000
    });

    let kicker = Arc::new(Kicker::default());
    // A PV domain's rings are the builder's pages in its RAM (start_info
    // names them); PVH and HVM domains get the special pages.
    let (console_pfn, store_pfn) = match &pv_plan {
        Some(plan) => (plan.layout.console, plan.layout.xenstore),
        None => (
            memory::SPECIAL_BASE_GFN + memory::SPECIAL_CONSOLE,
            memory::SPECIAL_BASE_GFN + memory::SPECIAL_XENSTORE,
        ),
    };
    // Dom0 (kxend, kxen-run) learns the rings and both ends of their
    // ports through dom0-ports.
    let specs = [
        ("console", DOM0_CONSOLE_PORT, console_pfn),
        ("xenstore", DOM0_XENSTORE_PORT, store_pfn),
    ];
    let dom0_link =
        Arc::new(Dom0Ports::new(&specs).map_err(|e| VmError::Setup(format!("eventfd: {e}")))?);
    // Pausing and the domain's end close the same gate.
    let gate = Arc::new(GuestEntryGate::new(cfg.start_paused));
    let stop_gate = gate.clone();
    let exit = Arc::new(
        ExitLatch::new(cfg.domid, vec![Box::new(move || stop_gate.stop())])
            .map_err(|e| VmError::Setup(format!("eventfd: {e}")))?,
    );
    let timers_changed =
        EventFd::new(EFD_NONBLOCK).map_err(|e| VmError::Setup(format!("eventfd: {e}")))?;
    let events = Arc::new(
        EventRouting::new(vm.clone(), memory.clone(), cfg.vcpus)
            .map_err(|e| VmError::Setup(format!("event routing: {e}")))?,
    );
    let platform = VmmPlatform {
        domid: cfg.domid,
        memory: memory.clone(),
        nr_vcpus: cfg.vcpus,
        keep_suspended: cfg.control_socket.is_some(),
        kicker: kicker.clone(),
        dom0: dom0_link.clone(),
        events: events.clone(),
        exit: exit.clone(),
        gate: gate.clone(),
        timers_changed: timers_changed
            .try_clone()
            .map_err(|e| VmError::Setup(format!("eventfd: {e}")))?,
    };
    let ram_pages = memory.layout.ram_bytes >> 12;
    let domain_cfg = DomainConfig {
        domid: cfg.domid,
        name: cfg.name.clone(),
        nr_vcpus: cfg.vcpus,
        ram: memory.layout.ram.clone(),
        max_pages: (cfg.maxmem_mib.max(cfg.memory_mib) << 20 >> 12).max(ram_pages),
        memmap: memmap.clone(),
        initial_shared_info_gfn: memory::SPECIAL_BASE_GFN + memory::SPECIAL_SHARED_INFO,
        default_grant_gfn: memory::DEFAULT_GRANT_GFN,
        xen_major: XEN_MAJOR,
        xen_minor: XEN_MINOR,
        handle: domain_handle(cfg.domid, &cfg.name),
        max_evtchn_port: cfg.max_event_channels,
        pv_machphys_mapping: cfg.pv.then(|| {
            let (v_start, v_end, max_mfn) = kxen_pv::m2p::machphys_mapping();
            xen_abi::memory::MachphysMapping {
                v_start,
                v_end,
                max_mfn,
            }
        }),
    };
    let domain = Arc::new(Domain::new(
        domain_cfg,
        memory.atomic.clone(),
        Box::new(platform),
        tsc_khz,
    ));

    // Console and xenstore rings, bound to the Dom0 ends.
    let console_port = domain
        .bind_remote_port(0, DOM0_CONSOLE_PORT)
        .map_err(|e| VmError::Setup(format!("console port: {e}")))?;
    let store_port = domain
        .bind_remote_port(0, DOM0_XENSTORE_PORT)
        .map_err(|e| VmError::Setup(format!("xenstore port: {e}")))?;
    domain.set_param_privileged(HVM_PARAM_CONSOLE_PFN, console_pfn);
    domain.set_param_privileged(HVM_PARAM_CONSOLE_EVTCHN, console_port as u64);
    domain.set_param_privileged(HVM_PARAM_STORE_PFN, store_pfn);
    domain.set_param_privileged(HVM_PARAM_STORE_EVTCHN, store_port as u64);
    dom0_link.bound(DOM0_CONSOLE_PORT, console_port);
    dom0_link.bound(DOM0_XENSTORE_PORT, store_port);
    if cfg.pv {
        // A PV vCPU's events arrive as kxen-vmm's own vector, which the
        // hypervisor's IDT turns into an event upcall (crate::pv); the
        // guest never names a vector, and cannot (HVM_OP is refused).
        use xen_abi::hvm::{
            CALLBACK_VIA_TYPE_SHIFT, CALLBACK_VIA_TYPE_VECTOR, HVM_PARAM_CALLBACK_IRQ,
        };
        domain.set_param_privileged(
            HVM_PARAM_CALLBACK_IRQ,
            (CALLBACK_VIA_TYPE_VECTOR << CALLBACK_VIA_TYPE_SHIFT)
                | u64::from(crate::pv::PV_EVENT_VECTOR),
        );
        // shared_info is where the builder put it: its clock now.
        domain.publish_clock();
    }
    domain.publish_routing();

    let pv = match &pv_plan {
        Some(plan) => Some(build_pv(
            cfg,
            &memory,
            plan,
            ramdisk.as_deref().unwrap_or_default(),
            store_port,
            console_port,
        )?),
        None => None,
    };
    if let Some((machine, _)) = &pv {
        machine.attach_domain(domain.clone());
    }

    let hvm_devices = match &cfg.hvm {
        Some(hvm) => {
            let (low, high) = memory.layout.ram_split();
            Some(Arc::new(HvmDevices::build(&vm, hvm, low, high)?))
        }
        None => None,
    };

    let ap_start = Arc::new(ApStarter::new(cfg.vcpus));
    let perf = Arc::new(crate::perf::PerfCounters::new(cfg.vcpus));
    if let Some(stats) = crate::perf::KvmStats::open(&vm) {
        perf.add_kvm_stats(stats);
    }
    let shared = Arc::new(VcpuShared {
        domain: domain.clone(),
        memory: memory.clone(),
        ap_start: ap_start.clone(),
        hvm: hvm_devices.clone(),
        syscall_bridge: syscall_bridge.clone(),
        exit: exit.clone(),
        pv: pv.as_ref().map(|(machine, _)| machine.clone()),
        debug_console: crate::debug_port::DebugConsole::new(cfg.domid, cfg.hypervisor_log.clone()),
        gate: gate.clone(),
        started,
        entry: Mutex::new(None),
        perf: perf.clone(),
    });

    let supported = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)?;
    let mut vcpus = Vec::new();
    for (id, fd) in vcpu_fds.into_iter().enumerate() {
        let id = id as u32;
        let table = cpuid::build(
            &supported,
            &XenCpuidParams {
                domid: cfg.domid,
                vcpu: id,
                xen_major: XEN_MAJOR,
                xen_minor: XEN_MINOR,
                tsc_khz,
                // A stock HVM kernel that saw Xen would make hypercalls
                // with vmcall, which hangs on PVM hosts.
                xen_leaves: cfg.hvm.as_ref().is_none_or(|h| h.xen_platform_pci),
            },
        )
        .map_err(VmError::Cpuid)?;
        fd.set_cpuid2(&table)?;
        if id == 0 {
            match boot {
                BspEntry::Pvh { entry, start_info } => setup_pvh_bsp(&fd, entry, start_info)?,
                BspEntry::Linux64 { entry, boot_params } => {
                    setup_linux64_bsp(&fd, entry, boot_params)?
                }
                BspEntry::Pv { .. } => match &pv {
                    Some((_, state)) => crate::boot_cpu::setup_pv_bsp(&fd, state)?,
                    None => return Err(VmError::Setup("PV entry without a PV build".into())),
                },
            }
            enable_local_apic(&fd)?;
        }
        if let Some(stats) = crate::perf::KvmStats::open(&fd) {
            perf.add_kvm_stats(stats);
        }
        let vcpu = Vcpu::new(id, fd, shared.clone());
        domain.set_tsc_offset(id, vcpu.measure_tsc_offset());
        vcpus.push(vcpu);
    }

    msr_filter
        .join()
        .map_err(|_| VmError::Setup("MSR filter thread panicked".into()))??;
    register_signal_handler(SIGRTMIN(), kick_handler)
        .map_err(|e| VmError::Setup(format!("signal handler: {e}")))?;
    Ok(Vm {
        pauser: Arc::new(Pauser {
            gate,
            kicker: kicker.clone(),
            nr_vcpus: cfg.vcpus,
        }),
        domain,
        memory,
        dom0: dom0_link,
        events,
        hvm: hvm_devices,
        kicker,
        exit,
        ap_start,
        timers_changed,
        vcpu_shared: shared,
        vcpus,
        boot,
        max_memory_kib: cfg.maxmem_mib.max(cfg.memory_mib) * 1024,
    })
}

/// A PV kernel parsed and laid out, before its memory is written.
struct PvPlan {
    kernel: kxen_loader::pv::PvKernel,
    layout: kxen_loader::pv::PvLayout,
}

/// Parse the PV kernel (ELF or bzImage) and lay the domain out in its
/// low RAM (pfns `0..low_end/4096`, identity P2M).
fn plan_pv(cfg: &VmConfig, low_end: u64, initrd_len: u64) -> Result<PvPlan, VmError> {
    let image = std::fs::read(&cfg.kernel).map_err(|source| VmError::PvKernelRead {
        path: cfg.kernel.clone(),
        source,
    })?;
    let kernel =
        kxen_loader::pv::PvKernel::from_image(&image).map_err(|source| VmError::PvKernel {
            path: cfg.kernel.clone(),
            source,
        })?;
    let layout = kxen_loader::pv::PvLayout::compute(&kernel, low_end >> 12, initrd_len)?;
    Ok(PvPlan { kernel, layout })
}

/// Write the PV domain's memory (kernel, P2M, start_info with the ring
/// ports, bootstrap page tables), fill its hypercall page, set up its PV
/// MMU with the bootstrap L4 pinned and loaded, and mask events on
/// vCPU 0 (Xen's builder leaves upcall_mask = 1 in each vcpu_info).
fn build_pv(
    cfg: &VmConfig,
    memory: &GuestMemory,
    plan: &PvPlan,
    initrd: &[u8],
    store_port: u32,
    console_port: u32,
) -> Result<(Arc<crate::pv::PvMachine>, kxen_loader::pv::PvBootState), VmError> {
    // The read-only M2P's memory, before the snapshot the PV machine
    // writes it through (crate::pv_m2p).
    let m2p = crate::pv_m2p::layout(plan.layout.nr_pages)?;
    memory.map_pv_m2p(m2p.base_gfn(), m2p.total_pages())?;
    let snapshot = memory.snapshot();
    let shared_info_gpa = (memory::SPECIAL_BASE_GFN + memory::SPECIAL_SHARED_INFO) << 12;
    let params = kxen_loader::pv::StartInfoParams {
        shared_info_maddr: shared_info_gpa,
        store_evtchn: store_port,
        console_evtchn: console_port,
        cmdline: &cfg.cmdline,
        flags: 0,
    };
    let state = kxen_loader::pv::build(&*snapshot, &plan.layout, &plan.kernel, initrd, &params)?;
    if let Some(mfn) = state.hypercall_page_mfn {
        crate::pv::fill_hypercall_page(&snapshot, mfn)?;
    }
    let machine = crate::pv::PvMachine::new(
        &snapshot,
        cfg.domid,
        plan.layout.nr_pages,
        cfg.vcpus,
        &state,
        shared_info_gpa,
    )?;
    // vcpu_info of vCPU 0 sits at the start of shared_info; its second
    // byte is evtchn_upcall_mask.
    snapshot
        .write_obj(1u8, GuestAddress(shared_info_gpa + 1))
        .map_err(|e| VmError::Setup(format!("masking vCPU 0's events: {e}")))?;
    tracing::info!(
        entry = format_args!("{:#x}", state.entry),
        start_info = format_args!("{:#x}", state.start_info_va),
        cr3 = format_args!("{:#x}", state.cr3),
        hypercall_page = ?state.hypercall_page_mfn,
        "PV domain built"
    );
    Ok((Arc::new(machine), state))
}

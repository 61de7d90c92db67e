//! Build a domain on KVM and run it to its end.

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_enable_cap, kvm_msi, kvm_segment, kvm_sregs, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Cap, Kvm, MsrFilterDefaultAction, MsrFilterRange, MsrFilterRangeFlags, VmFd};
use nix::sys::signal::{SigSet, Signal};
use tracing::{error, info, warn};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};
use xen_abi::cpuid::XEN_HYPERCALL_MSR;
use xen_abi::hvm::*;
use xen_abi::pvh::MemmapEntry;

use kxen_loader::start_info::{self, BootBlockLayout, Module};
use kxen_xen::{Domain, DomainConfig};

use crate::ap_start::ApStarter;
use crate::cpuid::{self, XenCpuidParams};
use crate::dom0::Dom0Ports;
use crate::events::EventRouting;
use crate::hvm::{HvmConfig, HvmDevices};
use crate::memory::{self, GuestMemory};
use crate::platform::VmmPlatform;
use crate::syscall_bridge::{self, SyscallBridge};
use crate::vcpu::gate::GuestEntryGate;
use crate::vcpu::{kick_handler, Vcpu};
use kxen_vmm_api::protocol::DomainInfo;

pub const XEN_MAJOR: u32 = 4;
pub const XEN_MINOR: u32 = 17;
/// Dom0-side ports of the console and xenstore rings.
pub const DOM0_CONSOLE_PORT: u32 = 1;
pub const DOM0_XENSTORE_PORT: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("KVM: {0}")]
    Kvm(#[from] kvm_ioctls::Error),
    #[error("KVM lacks {0}")]
    MissingCap(&'static str),
    #[error("guest memory: {0}")]
    Memory(#[from] memory::MemoryError),
    #[error("kernel {path}: {source}")]
    Kernel {
        path: PathBuf,
        source: kxen_loader::LoaderError,
    },
    #[error("ramdisk {path}: {source}")]
    Ramdisk {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("ramdisk does not fit in guest RAM")]
    RamdiskTooLarge,
    #[error("boot block: {0}")]
    Boot(kxen_loader::LoaderError),
    #[error("CPUID table: {0:?}")]
    Cpuid(vmm_sys_util::fam::Error),
    #[error("{0}")]
    Setup(String),
}

/// How a domain ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainExit {
    /// The guest shut itself down with a SHUTDOWN_* reason.
    Shutdown(u32),
    /// The hypervisor ended the domain (triple fault, emulation failure...).
    Crashed(String),
    /// The VMM was told to destroy the domain (SIGTERM, SIGINT).
    Destroyed,
}

impl DomainExit {
    /// Process exit status: 0 poweroff, 2 reboot, 3 suspend, 4 guest crash,
    /// 5 watchdog, 6 soft reset, 7 ended by the hypervisor.
    pub fn exit_code(&self) -> i32 {
        match self {
            DomainExit::Shutdown(r) => match *r {
                xen_abi::sched::SHUTDOWN_POWEROFF => 0,
                xen_abi::sched::SHUTDOWN_REBOOT => 2,
                xen_abi::sched::SHUTDOWN_SUSPEND => 3,
                xen_abi::sched::SHUTDOWN_CRASH => 4,
                xen_abi::sched::SHUTDOWN_WATCHDOG => 5,
                _ => 6,
            },
            DomainExit::Crashed(_) => 7,
            DomainExit::Destroyed => 8,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            DomainExit::Shutdown(r) => format!(
                "shutdown: {}",
                match *r {
                    0 => "poweroff",
                    1 => "reboot",
                    2 => "suspend",
                    3 => "crash",
                    4 => "watchdog",
                    _ => "soft_reset",
                }
            ),
            DomainExit::Crashed(why) => format!("crashed: {why}"),
            DomainExit::Destroyed => "destroyed".into(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub ramdisk: Option<PathBuf>,
    pub cmdline: String,
    pub memory_mib: u64,
    pub maxmem_mib: u64,
    pub vcpus: u32,
    pub domid: u16,
    pub name: String,
    /// Build the domain paused (`xl create -p`).
    pub start_paused: bool,
    /// Serve the control protocol on this Unix socket.
    pub control_socket: Option<PathBuf>,
    /// Write "CODE REASON" here when the domain ends, for a toolstack that
    /// is not our parent (kxend after a restart).
    pub exit_file: Option<PathBuf>,
    /// An HVM domain (Linux boot protocol, emulated devices) rather than
    /// PVH.
    pub hvm: Option<HvmConfig>,
}

/// State shared by the vCPU threads, the services and the main thread.
pub struct Runtime {
    /// The console and xenstore rings' ends in Dom0.
    pub dom0: Arc<Dom0Ports>,
    /// Dom0's interdomain channels, irqfds and routing area.
    pub events: Arc<EventRouting>,
    pub vm: Arc<VmFd>,
    pub memory: Arc<GuestMemory>,
    pub domain: Arc<Domain>,
    pub kicker: Arc<Kicker>,
    exit: Mutex<Option<DomainExit>>,
    exit_cv: Condvar,
    started: Instant,
    entry: Mutex<Option<Duration>>,
    /// Pausing: keeps the vCPUs out of guest mode.
    gate: GuestEntryGate,
    /// AP entry points from the ACPI MP wakeup mailbox.
    pub ap_start: Arc<ApStarter>,
    max_memory_kib: u64,
    /// Emulated devices (HVM domains only).
    pub hvm: Option<Arc<HvmDevices>>,
    /// User-mode `syscall` for stock kernels (HVM domains on PVM hosts).
    pub syscall_bridge: Option<Arc<SyscallBridge>>,
}

impl Runtime {
    /// First caller decides how the domain ended; everyone is told to stop.
    pub fn request_exit(&self, why: DomainExit) {
        let mut exit = self.exit.lock().unwrap_or_else(|e| e.into_inner());
        if exit.is_none() {
            info!(domid = self.domain.domid(), "domain {}", why.describe());
            *exit = Some(why);
        }
        self.exit_cv.notify_all();
        drop(exit);
        self.domain.stop();
        self.gate.stop();
    }

    /// Stop every vCPU from running guest code; returns once none is in
    /// guest mode (or after a second, if one is stuck in the kernel).
    pub fn pause(&self) {
        self.gate.pause(|| {
            for vcpu in 0..self.domain.cfg.nr_vcpus {
                self.kicker.kick(vcpu);
            }
        });
    }

    pub fn unpause(&self) {
        self.gate.unpause();
    }

    pub fn is_paused(&self) -> bool {
        self.gate.is_paused()
    }

    /// Called by a vCPU about to enter the guest: registers it as in guest
    /// mode unless paused, in which case it waits. False if the domain ends.
    pub fn enter_guest(&self) -> bool {
        self.gate.enter()
    }

    pub fn leave_guest(&self) {
        self.gate.leave();
    }

    pub fn info(&self) -> DomainInfo {
        let cfg = &self.domain.cfg;
        let (online, blocked) = {
            let st = self.domain.lock();
            let up: Vec<_> = st
                .vcpus
                .iter()
                .filter(|v| v.online && v.initialised)
                .collect();
            let blocked = !up.is_empty()
                && up
                    .iter()
                    .all(|v| v.runstate.state == xen_abi::vcpu::RUNSTATE_BLOCKED);
            (up.len() as u32, blocked)
        };
        DomainInfo {
            blocked,
            vcpus_online: online,
            domid: cfg.domid,
            name: cfg.name.clone(),
            paused: self.is_paused(),
            vcpus: cfg.nr_vcpus,
            memory_kib: (cfg.ram_pages() - self.domain.lock().ballooned.len() as u64) * 4,
            max_memory_kib: self.max_memory_kib,
            hypercalls: self.domain.hypercalls.load(Ordering::Relaxed),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            pid: std::process::id(),
        }
    }

    pub fn note_guest_entry(&self) {
        let mut entry = self.entry.lock().unwrap_or_else(|e| e.into_inner());
        entry.get_or_insert_with(|| self.started.elapsed());
    }

    pub fn guest_entry_after(&self) -> Option<Duration> {
        *self.entry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Raise `vector` on `vcpu` through its LAPIC (APIC ID = vCPU id).
    pub fn inject_vector(&self, vcpu: u32, vector: u8) {
        tracing::trace!(vcpu, vector, "upcall MSI");
        let msi = kvm_msi {
            address_lo: 0xfee0_0000 | (vcpu << 12),
            address_hi: 0,
            data: vector as u32,
            ..Default::default()
        };
        if let Err(e) = self.vm.signal_msi(msi) {
            warn!(vcpu, vector, "KVM_SIGNAL_MSI failed: {e}");
        }
    }
}

/// Kicks vCPU threads out of KVM_RUN.
#[derive(Default)]
pub struct Kicker {
    threads: Mutex<Vec<Option<libc::pthread_t>>>,
}

impl Kicker {
    pub fn kick(&self, vcpu: u32) {
        let threads = self.threads.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(Some(tid)) = threads.get(vcpu as usize) {
            // SAFETY: `tid` names a live vCPU thread: entries are cleared
            // before the thread is joined. The signal's handler only sets a
            // flag.
            unsafe { libc::pthread_kill(*tid, SIGRTMIN()) };
        }
    }
}

fn flat_segment(selector: u16, kind: u8) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: kind,
        present: 1,
        dpl: 0,
        db: 1,
        s: 1,
        l: 0,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Load `code` into CS, flat data segments with `data_selector` into the
/// others, and a TSS descriptor at the selector after them (the guest
/// loads its own tables; these are the hidden parts KVM enters with).
fn load_flat_segments(sregs: &mut kvm_sregs, code: kvm_segment, data_selector: u16) {
    sregs.cs = code;
    for seg in [
        &mut sregs.ds,
        &mut sregs.es,
        &mut sregs.fs,
        &mut sregs.gs,
        &mut sregs.ss,
    ] {
        *seg = flat_segment(data_selector, 0x3);
    }
    sregs.tr = kvm_segment {
        base: 0,
        limit: 0x67,
        selector: data_selector + 8,
        type_: 0xb,
        present: 1,
        s: 0,
        ..Default::default()
    };
}

/// Put vCPU 0 at the PVH entry: 32-bit protected mode, paging off.
fn setup_pvh_bsp(fd: &kvm_ioctls::VcpuFd, entry: u64, start_info: u64) -> Result<(), VmError> {
    let mut sregs = fd.get_sregs()?;
    load_flat_segments(&mut sregs, flat_segment(0x10, 0xb), 0x18);
    sregs.cr0 = 0x11; // PE | ET
    sregs.cr4 = 0;
    sregs.efer = 0;
    fd.set_sregs(&sregs)?;
    let mut regs = fd.get_regs()?;
    regs.rip = entry;
    regs.rbx = start_info;
    regs.rflags = 0x2;
    fd.set_regs(&regs)?;
    Ok(())
}

/// Where vCPU 0 starts.
#[derive(Debug, Clone, Copy)]
enum BspEntry {
    /// PVH: 32-bit protected mode, EBX = hvm_start_info.
    Pvh { entry: u64, start_info: u64 },
    /// Linux's 64-bit boot protocol: long mode, RSI = zero page.
    Linux64 { entry: u64, boot_params: u64 },
}

impl BspEntry {
    fn entry(&self) -> u64 {
        match *self {
            BspEntry::Pvh { entry, .. } | BspEntry::Linux64 { entry, .. } => entry,
        }
    }
}

/// Put vCPU 0 at a Linux kernel's 64-bit entry: long mode on the identity
/// page tables, the boot GDT's `__BOOT_CS`/`__BOOT_DS`, RSI = zero page,
/// interrupts off.
fn setup_linux64_bsp(fd: &kvm_ioctls::VcpuFd, entry: u64, boot_params: u64) -> Result<(), VmError> {
    use kxen_loader::linux::{BOOT_CS, BOOT_DS, BOOT_GDT, BOOT_GDT_GPA, BOOT_STACK_TOP};
    let mut sregs = fd.get_sregs()?;
    let code64 = kvm_segment {
        l: 1,
        db: 0,
        ..flat_segment(BOOT_CS, 0xb)
    };
    load_flat_segments(&mut sregs, code64, BOOT_DS);
    sregs.gdt.base = BOOT_GDT_GPA;
    sregs.gdt.limit = (BOOT_GDT.len() * 8 - 1) as u16;
    identity_long_mode(&mut sregs);
    fd.set_sregs(&sregs)?;
    let regs = kvm_bindings::kvm_regs {
        rip: entry,
        rsi: boot_params,
        rsp: BOOT_STACK_TOP,
        rflags: 0x2,
        ..Default::default()
    };
    fd.set_regs(&regs)?;
    Ok(())
}

/// Long mode with paging on the loader's identity page tables: where both
/// a Linux 64-bit boot and an MP-wakeup AP start.
fn identity_long_mode(sregs: &mut kvm_sregs) {
    sregs.cr0 = 0x8000_0031; // PG | NE | ET | PE
    sregs.cr3 = kxen_loader::acpi::AP_PAGE_TABLES_GPA;
    sregs.cr4 = 0x20; // PAE
    sregs.efer = 0x500; // LME | LMA
}

/// Put an AP at the entry point the guest gave the MP wakeup mailbox:
/// 64-bit mode, paging on the identity-mapped AP page tables, as the ACPI
/// specification promises the OS. The AP loads its own GDT and IDT.
pub fn setup_long_mode_ap(fd: &kvm_ioctls::VcpuFd, entry: u64) -> Result<(), VmError> {
    let mut sregs = fd.get_sregs()?;
    let code64 = kvm_segment {
        l: 1,
        db: 0,
        ..flat_segment(0x08, 0xb)
    };
    load_flat_segments(&mut sregs, code64, 0x10);
    identity_long_mode(&mut sregs);
    fd.set_sregs(&sregs)?;
    let regs = kvm_bindings::kvm_regs {
        rip: entry,
        rflags: 0x2,
        ..Default::default()
    };
    fd.set_regs(&regs)?;
    fd.set_mp_state(kvm_bindings::kvm_mp_state {
        mp_state: kvm_bindings::KVM_MP_STATE_RUNNABLE,
    })?;
    enable_local_apic(fd)?;
    Ok(())
}

/// Offset of the spurious-interrupt vector register in the local APIC page.
const APIC_SVR: usize = 0xf0;
const APIC_SVR_ENABLE: u32 = 1 << 8;

/// Software-enable a vCPU's local APIC, as firmware leaves it. Xen guests
/// register their event upcall vector before their kernel sets the APIC up,
/// and a software-disabled APIC drops the fixed interrupts that carry it.
fn enable_local_apic(fd: &kvm_ioctls::VcpuFd) -> Result<(), VmError> {
    let mut lapic = fd.get_lapic()?;
    let mut svr = [0u8; 4];
    for (dst, src) in svr.iter_mut().zip(&lapic.regs[APIC_SVR..APIC_SVR + 4]) {
        *dst = *src as u8;
    }
    let value = u32::from_le_bytes(svr) | APIC_SVR_ENABLE | 0xff;
    for (dst, src) in lapic.regs[APIC_SVR..APIC_SVR + 4]
        .iter_mut()
        .zip(value.to_le_bytes())
    {
        *dst = src as _;
    }
    fd.set_lapic(&lapic)?;
    Ok(())
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

/// Build the domain and run it until it ends.
/// `started` is when the process began, for the start-to-entry figure.
pub fn run(cfg: VmConfig, started: Instant, report_timing: bool) -> Result<DomainExit, VmError> {
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
    let boot = if cfg.hvm.is_some() {
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
    let console_pfn = memory::SPECIAL_BASE_GFN + memory::SPECIAL_CONSOLE;
    let store_pfn = memory::SPECIAL_BASE_GFN + memory::SPECIAL_XENSTORE;
    // Dom0 (kxend, kxen-run) learns the rings and both ends of their
    // ports through dom0-ports.
    let specs = [
        ("console", DOM0_CONSOLE_PORT, console_pfn),
        ("xenstore", DOM0_XENSTORE_PORT, store_pfn),
    ];
    let dom0_link =
        Arc::new(Dom0Ports::new(&specs).map_err(|e| VmError::Setup(format!("eventfd: {e}")))?);
    let runtime_slot: Arc<Mutex<Option<std::sync::Weak<Runtime>>>> = Arc::new(Mutex::new(None));
    let events = Arc::new(
        EventRouting::new(vm.clone(), memory.clone(), cfg.vcpus)
            .map_err(|e| VmError::Setup(format!("event routing: {e}")))?,
    );
    let platform = VmmPlatform {
        domid: cfg.domid,
        memory: memory.clone(),
        kicker: kicker.clone(),
        dom0: dom0_link.clone(),
        events: events.clone(),
        runtime: runtime_slot.clone(),
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
    domain.publish_routing();

    let hvm_devices = match &cfg.hvm {
        Some(hvm) => {
            let (low, high) = memory.layout.ram_split();
            Some(Arc::new(HvmDevices::build(&vm, hvm, low, high)?))
        }
        None => None,
    };

    let rt = Arc::new(Runtime {
        vm: vm.clone(),
        memory: memory.clone(),
        domain: domain.clone(),
        kicker: kicker.clone(),
        exit: Mutex::new(None),
        exit_cv: Condvar::new(),
        started,
        entry: Mutex::new(None),
        dom0: dom0_link.clone(),
        events: events.clone(),
        gate: GuestEntryGate::new(cfg.start_paused),
        ap_start: Arc::new(ApStarter::new(cfg.vcpus)),
        max_memory_kib: cfg.maxmem_mib.max(cfg.memory_mib) * 1024,
        hvm: hvm_devices.clone(),
        syscall_bridge: syscall_bridge.clone(),
    });
    *runtime_slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::downgrade(&rt));

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
            }
            enable_local_apic(&fd)?;
        }
        let vcpu = Vcpu::new(id, fd, rt.clone());
        domain.set_tsc_offset(id, vcpu.measure_tsc_offset());
        vcpus.push(vcpu);
    }

    msr_filter
        .join()
        .map_err(|_| VmError::Setup("MSR filter thread panicked".into()))??;
    register_signal_handler(SIGRTMIN(), kick_handler)
        .map_err(|e| VmError::Setup(format!("signal handler: {e}")))?;
    // SIGTERM and SIGINT destroy the domain: every thread inherits the
    // blocked mask and one thread waits for them.
    let mut termination = SigSet::empty();
    termination.add(Signal::SIGTERM);
    termination.add(Signal::SIGINT);
    termination
        .thread_block()
        .map_err(|e| VmError::Setup(format!("signal mask: {e}")))?;
    let rt_signals = rt.clone();
    let _ = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            crate::seccomp::install(crate::seccomp::ThreadClass::Service);
            if let Ok(sig) = termination.wait() {
                info!(?sig, "destroying the domain");
                rt_signals.request_exit(DomainExit::Destroyed);
            }
        });

    let timer_domain = domain.clone();
    let timer = std::thread::Builder::new()
        .name("timers".into())
        .spawn(move || {
            crate::seccomp::install(crate::seccomp::ThreadClass::Service);
            timer_domain.run_timers()
        })
        .map_err(|e| VmError::Setup(format!("timer thread: {e}")))?;
    let ap_thread = if cfg.vcpus > 1 {
        let starter = rt.ap_start.clone();
        let rt_ap = rt.clone();
        Some(
            std::thread::Builder::new()
                .name("ap-wakeup".into())
                .spawn(move || {
                    crate::seccomp::install(crate::seccomp::ThreadClass::Service);
                    starter.run(rt_ap)
                })
                .map_err(|e| VmError::Setup(format!("AP wakeup thread: {e}")))?,
        )
    } else {
        None
    };
    let wake_thread = events
        .start(rt.clone())
        .map_err(|e| VmError::Setup(format!("event wake thread: {e}")))?;
    let dom0_thread = dom0_link
        .start(rt.clone())
        .map_err(|e| VmError::Setup(format!("Dom0 event thread: {e}")))?;

    let mut virtio_thread = None;
    if let Some(devices) = &hvm_devices {
        // Not joined: a blocking stdin read cannot be interrupted.
        let _ = devices.start_input();
        virtio_thread = devices.start_virtio()?;
    }

    let control = match &cfg.control_socket {
        Some(path) => Some(
            crate::control::serve(rt.clone(), path.clone())
                .map_err(|e| VmError::Setup(format!("control socket {}: {e}", path.display())))?,
        ),
        None => None,
    };

    let mut handles: Vec<JoinHandle<()>> = Vec::new();
    for vcpu in vcpus {
        let name = format!("vcpu{}", vcpu.id);
        let handle = std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                crate::seccomp::install(crate::seccomp::ThreadClass::Vcpu);
                vcpu.run()
            })
            .map_err(|e| VmError::Setup(format!("vCPU thread: {e}")))?;
        kicker
            .threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Some(handle.pthread_handle()));
        handles.push(handle);
    }
    // Every thread is running: the main thread only waits and cleans up.
    crate::seccomp::install(crate::seccomp::ThreadClass::Service);
    info!(
        domid = cfg.domid,
        name = %cfg.name,
        memory_mib = cfg.memory_mib,
        vcpus = cfg.vcpus,
        entry = boot.entry(),
        "domain built in {:?}",
        started.elapsed()
    );

    // Wait for the end, then stop every thread.
    let exit = {
        let mut exit = rt.exit.lock().unwrap_or_else(|e| e.into_inner());
        while exit.is_none() {
            exit = rt.exit_cv.wait(exit).unwrap_or_else(|e| e.into_inner());
        }
        exit.clone()
            .unwrap_or(DomainExit::Crashed("unknown".into()))
    };
    tracing::debug!("event state at exit: {}", domain.describe_event_state());
    domain.stop();
    dom0_link.stop();
    if let Some(devices) = &hvm_devices {
        devices.stop();
    }
    for (i, handle) in handles.into_iter().enumerate() {
        while !handle.is_finished() {
            kicker.kick(i as u32);
            std::thread::sleep(Duration::from_millis(1));
        }
        kicker.threads.lock().unwrap_or_else(|e| e.into_inner())[i] = None;
        if handle.join().is_err() {
            error!(vcpu = i, "vCPU thread panicked");
        }
    }
    let _ = timer.join();
    if let Some(t) = ap_thread {
        let _ = t.join();
    }
    if let Some(control) = control {
        let _ = control.join();
    }
    let _ = dom0_thread.join();
    let _ = wake_thread.join();
    if let Some(t) = virtio_thread {
        let _ = t.join();
    }
    if let Some(path) = &cfg.exit_file {
        let line = format!("{} {}\n", exit.exit_code(), exit.describe());
        if let Err(e) = std::fs::write(path, line) {
            warn!("exit file {}: {e}", path.display());
        }
    }
    if let Some(entry) = rt.guest_entry_after() {
        info!("guest entry {:?} after start", entry);
        if report_timing {
            eprintln!("kxen-vmm: guest-entry-us={}", entry.as_micros());
        }
    }
    Ok(exit)
}

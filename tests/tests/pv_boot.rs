//! The first slice of the classic PV machine: kxen-vmm builds a minimal
//! 64-bit PV kernel (`tests/guestpv/pv.S`) with the PV domain builder,
//! enters it deprivileged at CPL3 at 0xffffffff80000000, and serves its
//! hypercalls through the HYPERCALL_PAGE it fills. The guest prints a
//! verdict line per check on the hypervisor console (console_io) and
//! powers off.

use std::path::PathBuf;
use std::time::Duration;

use kxen_tests::{
    kxen_run, pv_test_kernel, pv_timing_line, run_with_limit, tsc_cycles_per_us, Finished,
};

/// The PV test kernel in a temp directory, with `defsyms` (`NAME=VALUE`)
/// selecting variants of it.
fn pv_guest(variant: &str, defsyms: &[&str]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kxen-gpv-{}-{variant}", std::process::id()));
    pv_test_kernel(&dir, defsyms)
}

fn boot_pv_guest(variant: &str, defsyms: &[&str]) -> Finished {
    let elf = pv_guest(variant, defsyms);
    run_with_limit(
        &kxen_run(),
        &[
            "--type",
            "pv",
            "--kernel",
            elf.to_str().expect("utf-8 path"),
            "--memory",
            "64",
            "--vcpus",
            "2",
            "--domid",
            "7",
            "--name",
            "pvguest",
        ],
        Duration::from_secs(60),
    )
}

/// The guest's console_io lines, without the hypervisor's `(d7) ` prefix.
fn guest_lines(run: &Finished) -> Vec<&str> {
    run.stderr
        .lines()
        .filter_map(|l| l.strip_prefix("(d7) kxen-pv-guest: "))
        .collect()
}

/// The PV kernel boots at CPL3 from the PV builder's state, reads a
/// start_info with Xen's magic in RSI, writes to the console with
/// console_io, has its mmuext_op served by the PV MMU (a local flush
/// succeeds, a pin of a frame beyond nr_pages is -EINVAL with nothing
/// done, NEW_BASEPTR to its own L4 reloads CR3 and to a writable frame
/// is -EINVAL, an unmapped op array -EFAULT, update_va_mapping in the
/// hypervisor's hole -EINVAL), gets -ENOSYS for an unknown hypercall,
/// remaps a spare VA between two frames with update_va_mapping (INVLPG,
/// TLB_FLUSH) and with mmu_update + mmuext_op INVLPG_LOCAL and reads the
/// new frame through it each time (KVM's shadow page tables must not keep
/// the old translation), has its privileged instructions (forced CPUID,
/// rdmsr/wrmsr, CR access, I/O) emulated or bounced as #GP as Xen does;
/// registers its callbacks, kernel stack and segment bases (with their
/// refusals), runs a multicall, takes an IPI and a timer event through
/// its event callback, gets the failsafe callback for an iret the CPU
/// would refuse, and runs a user process in its own L4 (syscalls, a
/// demand page fault, its death on touching the kernel or the hypercall
/// transport); brings up its second vCPU with VCPUOP_initialise and
/// exchanges IPIs with it; and powers off.
#[test]
fn pv_kernel_boots_at_cpl3_and_serves_hypercalls() {
    let run = boot_pv_guest("full", &[]);
    let t = run.transcript();
    let lines = guest_lines(&run);
    for check in [
        "PASS start_info magic",
        "hello from CPL3",
        "PASS mmuext_op TLB_FLUSH_LOCAL",
        "PASS mmuext_op PIN_L4_TABLE beyond nr_pages is -EINVAL",
        "PASS mmuext_op NEW_BASEPTR to our own L4",
        "PASS mmuext_op NEW_BASEPTR to a writable frame is -EINVAL",
        "PASS mmuext_op with an unmapped op array is -EFAULT",
        "PASS update_va_mapping in the hypervisor hole is -EINVAL",
        "PASS unknown hypercall is -ENOSYS",
        "PASS update_va_mapping INVLPG: V reads frame A",
        "PASS update_va_mapping INVLPG: V reads frame B after A",
        "PASS mmu_update + INVLPG_LOCAL: V reads frame A after B",
        "PASS mmu_update + INVLPG_LOCAL: V reads frame B after A",
        "PASS update_va_mapping TLB_FLUSH: V reads frame A after B",
        "PASS update_va_mapping TLB_FLUSH: V reads frame B after A",
        "PASS update_va_mapping unmaps V",
        "PASS update_va_mapping INVLPG: V reads frame A after the unmap",
        "PASS update_va_mapping loop: V reads frame A at its end",
        "PASS set_trap_table with an unmapped array is -EFAULT",
        "PASS set_trap_table with a non-canonical handler is -EINVAL",
        "PASS set_trap_table registers #BP #UD #GP",
        "PASS int3 bounced and iret back: RAX RCX R11 RSP kept",
        "PASS int3 frame: RIP after the int3",
        "PASS int3 frame: CS 0xe030 with upcall mask 1 in bits 32-39, IF clear, RSP",
        "PASS ud2 bounced: frame RIP at the ud2, handler stepped past it",
        "PASS out at CPL3 bounced as #GP: error code 0, RIP at the out",
        // The read-only M2P and its hole (tests/guestpv/m2p.S).
        "PASS set_trap_table adds #PF for the M2P checks",
        "PASS M2P checks: shared_info mapped for CR2",
        "PASS XENMEM_machphys_mapping: M2P at 0xffff808000000000-0xffff80c000000000, max_mfn 2^35-1",
        "PASS L4 slot of the M2P present and read-only in our L4",
        "PASS update_va_mapping of the M2P's table frame is -EPERM",
        "PASS M2P[start_info's frame] is its pfn",
        "PASS M2P[our L4's frame] is its pfn",
        "PASS M2P[nr_pages - 1] is its pfn",
        "PASS M2P: the last entry before the hole reads without a fault",
        "PASS M2P store: #PF with error code P|W, CR2 and RIP at the store",
        "PASS M2P store refused: the entry is unchanged",
        "PASS M2P hole: a load past the domain's entries is a not-present #PF, stepped over",
        "PASS M2P hole: a load of the area's last entry is a not-present #PF",
        "PASS MMU_MACHPHYS_UPDATE: M2P[frame A] reads the new pfn",
        "PASS MMU_MACHPHYS_UPDATE: M2P[frame A] reads its pfn again",
        "PASS MMU_MACHPHYS_UPDATE of a frame beyond nr_pages is -EINVAL, none done",
        "PASS set_trap_table: M2P #PF handler cleared, #BP #UD #GP again",
        // Privileged instructions emulated as Xen does (tests/guestpv/emulate.S).
        "PASS set_trap_table for the emulation checks",
        "PASS forced CPUID 0x40000000: XenVMMXenVMM, leaves up to 0x40000005",
        "PASS forced CPUID leaf 0 matches the native one",
        "PASS forced CPUID leaf 1: VMX hidden, HYPERVISOR set",
        "PASS wrmsr FS_BASE: rdmsr reads it back and %fs: reads through it",
        "PASS rdmsr EFER has LME|LMA, wrmsr of the same value is accepted",
        "PASS rdmsr of an unknown MSR bounces #GP(0)",
        "PASS wrmsr EFER with another value bounces #GP(0)",
        "PASS mov %cr0: PE and PG set, TS clear",
        "PASS mov to %cr0 sets TS, clts clears it",
        "PASS mov %cr4: PAE set",
        "PASS mov %cr3 is the loaded L4",
        "PASS mov to %cr3 of the loaded L4 is accepted",
        "PASS mov to %cr3 of a writable frame bounces #GP(0)",
        "PASS in $0x71 without I/O privileges bounces #GP(0)",
        "PASS out $0x80 without I/O privileges bounces #GP(0)",
        "PASS in (%dx) of 0xcfc without I/O privileges bounces #GP(0)",
        "PASS shared_info mapped with update_va_mapping; vCPU 0's upcall mask reads 1",
        "PASS set_callbacks(event, failsafe, syscall)",
        "PASS CALLBACKOP_register syscall and failsafe, masking events",
        "PASS CALLBACKOP_register with a non-canonical address is -EINVAL",
        "PASS CALLBACKOP_register of an unknown type is -ENOSYS",
        "PASS CALLBACKOP_unregister of the event callback is -EINVAL",
        "PASS callback_op with an unmapped argument is -EFAULT",
        "PASS stack_switch to the kernel stack",
        "PASS set_trap_table adds #PF",
        "PASS set_segment_base GS (kernel) and FS: %gs:8 and %fs:8 read through them",
        "PASS set_segment_base of an unknown register is -EINVAL",
        "PASS set_segment_base with a non-canonical base is -EINVAL",
        "PASS multicall: xen_version, update_va_mapping (V reads B), nested multicall -EINVAL",
        "PASS multicall with an unmapped array is -EFAULT",
        "PASS EVTCHNOP_bind_ipi and unmask",
        "PASS event upcall: EVTCHNOP_send to ourselves reaches the event callback on its return",
        "PASS VIRQ_TIMER + set_timer_op + SCHEDOP_block: block returns and the timer event is delivered",
        "PASS SCHEDOP_poll on the timer's port returns once it is pending",
        "PASS SCHEDOP_poll of more than 128 ports is -EINVAL",
        "PASS SCHEDOP_poll with an unmapped port array is -EFAULT",
        "PASS GNTTABOP_setup_table returns the grant frame",
        "PASS the grant frame maps with update_va_mapping",
        "PASS an entry written through that mapping is the one GNTTABOP_copy reads",
        "PASS iret to CS 0x1233 takes the failsafe callback with the refused frame",
        "PASS user L4 built with mmu_update, pinned, NEW_USER_BASEPTR, program copied",
        "PASS user mode: syscalls bounced to the syscall callback (CS 0xe033) and returned",
        "PASS user mode: page fault (error code 6) served on demand and retried",
        "PASS user mode cannot read kernel mappings: #PF (error code 4), process killed",
        "PASS user mode store to the hypercall transport: #PF (error code 7), process killed",
        "PASS user mode: every probe fault bounced and returned",
        "PASS event upcall loop: every send delivered",
        // A second vCPU (tests/guestpv/smp.S; the domain has two).
        "PASS VCPUOP_is_up of vCPU 1 before its start is 0",
        "PASS VCPUOP_initialise of a vCPU the domain lacks is -ENOENT",
        "PASS VCPUOP_up of an uninitialised vCPU is -EINVAL",
        "PASS VCPUOP_initialise with an unmapped context is -EFAULT",
        "PASS VCPUOP_initialise with a non-canonical RIP is -EINVAL",
        "PASS VCPUOP_initialise with a writable frame as its L4 is -EINVAL",
        "PASS VCPUOP_initialise of vCPU 1",
        "PASS VCPUOP_initialise of vCPU 1 again is -EEXIST",
        "PASS IPI channel to vCPU 1, VCPUOP_up, VCPUOP_is_up is 1",
        "PASS vCPU 1 runs its kernel entry",
        "PASS 2 vCPUs exchange IPIs through their event callbacks",
        "PASS VCPUOP_down of vCPU 1, VCPUOP_is_up is 0",
        // The guest's own GDT (tests/guestpv/gdt.S).
        "PASS set_gdt beyond Xen's reserved entries is -EINVAL",
        "PASS set_gdt with an unmapped frame list is -EFAULT",
        "PASS set_gdt of a frame mapped writable is -EINVAL",
        "PASS set_gdt of a frame holding a TSS descriptor is -EINVAL",
        "PASS set_gdt of a frame written with mmu_update",
        "PASS set_gdt fixed a DPL-0 code descriptor up to DPL 3",
        "PASS a GDT frame cannot be mapped writable (-EBUSY)",
        "PASS update_descriptor at a misaligned address is -EINVAL",
        "PASS update_descriptor of a TSS descriptor is -EINVAL",
        "PASS update_descriptor into a page table is -EINVAL",
        "PASS update_descriptor writes a data descriptor, DPL fixed up to 3",
        "PASS MMUEXT_SET_LDT of more than 8192 entries is -EINVAL",
        "PASS MMUEXT_SET_LDT at a misaligned base is -EINVAL",
        "PASS MMUEXT_SET_LDT loads an LDT page, its DPL-0 code fixed up to 3",
        "PASS a loaded LDT page cannot be mapped writable (-EBUSY)",
        "PASS MMUEXT_SET_LDT with no entries releases the page",
        "PASS an LDT page with a TSS descriptor is left out (not held)",
        "PASS user mode on the GDT's selectors 0x33/0x2b: syscall frame shows CS 0x33",
        "PASS set_gdt with no entries releases the frame: writable again",
        // What a stock kernel asks for at boot (tests/guestpv/misc.S).
        "PASS XENVER_get_features: PV MMU features, no translated physmap",
        "PASS vm_assist of a PV type (pae_extended_cr3)",
        "PASS vm_assist of an unknown type is -EINVAL",
        "PASS vcpu_info's clock is published from the start",
        "PASS PHYSDEVOP_set_iopl above 3 is -EINVAL",
        "PASS PHYSDEVOP_set_iopl(1): in reads ~0 and out is dropped, no #GP",
        "PASS set_debugreg(0) and get_debugreg(0) agree",
        "PASS set_debugreg to the hypervisor's range is -EPERM",
        "PASS get_debugreg(4) is -EINVAL",
        "PASS set_debugreg(7) with upper bits is -EINVAL",
        "PASS fpu_taskswitch sets and clears CR0.TS as mov %cr0 reads it",
        "PASS a direct write to an L1 entry is emulated (writable page tables)",
        "PASS a direct L1 write to a frame outside RAM gets the #PF, entry unchanged",
        "PASS VCPUOP_register_vcpu_info: events reach the callback at the new vcpu_info",
        "done, powering off",
    ] {
        assert!(lines.contains(&check), "missing {check:?}\n{t}");
    }
    let failed: Vec<_> = lines.iter().filter(|l| l.starts_with("FAIL")).collect();
    assert!(failed.is_empty(), "failed checks {failed:?}\n{t}");
    // The guest's own count agrees: every check it ran passed.
    let passed = lines.iter().filter(|l| l.starts_with("PASS ")).count();
    let summary = format!("summary: {passed:#018x} passed, 0x0000000000000000 failed");
    assert!(
        lines.contains(&summary.as_str()),
        "no {summary:?} line\n{t}"
    );

    // The guest runs at CPL3: whatever selector value `mov %cs` shows
    // (PVM shows its own 0x33 for Xen's 0xe033), its RPL is 3.
    let selectors = lines
        .iter()
        .find(|l| l.starts_with("cs="))
        .unwrap_or_else(|| panic!("no selector line\n{t}"));
    assert!(selectors.ends_with("cs.rpl=0x0000000000000003"), "{t}");
    eprintln!("PV kernel's own view of its selectors: {selectors}");

    // SCHEDOP_shutdown(poweroff) ends kxen-run with status 0.
    assert!(!run.timed_out, "{t}");
    assert_eq!(run.code, Some(0), "{t}");

    // The costs, printed (not asserted): the guest timed 1000
    // xen_version(0) calls and 500 update_va_mapping(UVMF_INVLPG) calls,
    // each of which makes kxen-vmm flush KVM's shadow MMU.
    let per_us = tsc_cycles_per_us();
    for (prefix, what) in [
        (
            "null hypercalls: ",
            "PV null hypercall (xen_version 0 through the hypercall page, CPL3 MMIO exit)",
        ),
        (
            "int3 bounce+iret round trips: ",
            "PV exception (int3 -> CPL0 exit stub -> bounce to the registered handler -> iret hypercall)",
        ),
        (
            "forced CPUID emulations: ",
            "PV forced-emulation CPUID (ud2 \"xen\" cpuid -> #UD exit stub -> emulated, leaf 0)",
        ),
        (
            "rdmsr FS_BASE emulations: ",
            "PV rdmsr (FS_BASE) -> #GP exit stub -> emulated",
        ),
        (
            "update_va_mapping INVLPG calls: ",
            "PV update_va_mapping with UVMF_INVLPG (a remap and a shadow MMU flush)",
        ),
        (
            "user syscall round trips: ",
            "PV user syscall (bounce to the syscall callback, iret with VGCF_in_syscall, two L4 switches)",
        ),
        (
            "user page fault round trips: ",
            "PV user page fault (bounce to the #PF handler, iret back to user mode)",
        ),
        (
            "event upcalls (send + callback + iret): ",
            "PV event upcall (EVTCHNOP_send to itself, event callback, iret)",
        ),
        (
            "NEW_BASEPTR calls: ",
            "PV CR3 switch (mmuext_op NEW_BASEPTR, with the shadow MMU flush it implies)",
        ),
    ] {
        let (calls, cycles) = pv_timing_line(&lines, prefix)
            .unwrap_or_else(|| panic!("no or unreadable {prefix:?} line\n{t}"));
        assert!(calls > 0, "{t}");
        eprintln!(
            "{what}: {calls} calls, mean {:.0} TSC cycles = {:.1} µs (TSC {per_us:.0} cycles/µs)",
            cycles as f64 / calls as f64,
            cycles as f64 / calls as f64 / per_us,
        );
    }
}

/// An exception with no handler in the trap table crashes the domain,
/// as Xen's create_bounce_frame does on a null bounce address: the
/// kernel registers #BP/#UD/#GP, then divides by zero (#DE, vector 0).
#[test]
fn pv_exception_without_handler_crashes_the_domain() {
    let run = boot_pv_guest("unhandled", &["UNHANDLED_TRAP=1"]);
    let t = run.transcript();
    let lines = guest_lines(&run);
    assert!(
        lines.contains(&"PASS set_trap_table registers #BP #UD #GP"),
        "{t}"
    );
    assert!(!run.timed_out, "{t}");
    assert_ne!(run.code, Some(0), "{t}");
    assert!(
        run.stderr.contains("exception 0 at rip 0xffffffff8")
            && run.stderr.contains("no handler registered for vector 0"),
        "{t}"
    );
    assert!(!lines.iter().any(|l| l.contains("after the #DE")), "{t}");
}

/// kxen-vmm refuses a PVH-only kernel for `--type pv` with the builder's
/// message naming `type = "pvh"`, and never starts it.
#[test]
fn pvh_kernel_is_refused_as_pv() {
    let elf = kxen_tests::guest32("smoke", "pv-refuse", |s| s);
    let run = run_with_limit(
        &kxen_tests::kxen_vmm(),
        &[
            "--type",
            "pv",
            "--kernel",
            elf.to_str().unwrap(),
            "--memory",
            "16",
        ],
        Duration::from_secs(60),
    );
    let t = run.transcript();
    assert_ne!(run.code, Some(0), "{t}");
    assert!(!run.stderr.contains("hello from"), "{t}");
    assert!(run.stderr.contains("PV kernel"), "{t}");
}

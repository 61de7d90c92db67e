//! vm_assist, physdev_op and the hostile checks.

use xen_abi::errno::{EFAULT, EINVAL, ENOSYS, EPERM};
use xen_abi::event_channel::{EVTCHNOP_STATUS, NR_EVENT_CHANNELS_2L};
use xen_abi::hvm::{HVMOP_GET_PARAM, HVM_NR_PARAMS};
use xen_abi::hypercall::*;
use xen_abi::memory::XENMEM_CURRENT_RESERVATION;
use xen_abi::version::XENVER_EXTRAVERSION;

use super::{neg, rc_is, Rc, R};
use crate::boot::RING3_OUT_GP;
use crate::hypercall::{hypercall3, hypercall5, op_raw, physdev_op, ring3_out58, vm_assist};
use crate::{bail, ensure, env, skip, xen};

pub fn vm_assist_runstate() -> R {
    // domain.c do_vm_assist: the one HVM assist -> 0.
    rc_is(
        "vm_assist(enable, runstate_update_flag)",
        vm_assist(VMASST_CMD_ENABLE, VMASST_TYPE_RUNSTATE_UPDATE_FLAG),
        0,
    )
}

pub fn vm_assist_invalid_type() -> R {
    // domain.c do_vm_assist: type not in the HVM valid mask -> -EINVAL.
    rc_is(
        "vm_assist(enable, writable_pagetables)",
        vm_assist(VMASST_CMD_ENABLE, VMASST_TYPE_WRITABLE_PAGETABLES),
        neg(EINVAL),
    )?;
    // type >= BITS_PER_LONG -> -EINVAL.
    rc_is(
        "vm_assist(enable, 64)",
        vm_assist(VMASST_CMD_ENABLE, 64),
        neg(EINVAL),
    )
}

pub fn vm_assist_unknown_cmd() -> R {
    // domain.c do_vm_assist: valid type, unknown cmd -> -ENOSYS.
    rc_is(
        "vm_assist(99, runstate_update_flag)",
        vm_assist(99, VMASST_TYPE_RUNSTATE_UPDATE_FLAG),
        neg(ENOSYS),
    )
}

pub fn physdev_enosys() -> R {
    // hvm/hypercall.c hvm_physdev_op: PIRQ ops need has_pirq (a PVH domU has
    // none) and everything else is not for HVM guests -> -ENOSYS.
    for (cmd, name) in [
        (PHYSDEVOP_EOI, "PHYSDEVOP_eoi"),
        (PHYSDEVOP_MAP_PIRQ, "PHYSDEVOP_map_pirq"),
        (PHYSDEVOP_UNMAP_PIRQ, "PHYSDEVOP_unmap_pirq"),
        (PHYSDEVOP_IRQ_STATUS_QUERY, "PHYSDEVOP_irq_status_query"),
        (PHYSDEVOP_GET_FREE_PIRQ, "PHYSDEVOP_get_free_pirq"),
        (PHYSDEVOP_SET_IOPL, "PHYSDEVOP_set_iopl"),
    ] {
        let mut buf = [0u64; 8];
        rc_is(name, physdev_op(cmd, &mut buf), neg(ENOSYS))?;
    }
    Ok(())
}

pub fn unknown_hypercall() -> R {
    for nr in [60u64, 127] {
        // SAFETY: no such hypercall; no memory arguments.
        let rc = unsafe { hypercall5(nr, 0, 0, 0, 0, 0) };
        // Unused hypercall table slots -> -ENOSYS.
        rc_is(
            if nr == 60 {
                "hypercall 60"
            } else {
                "hypercall 127"
            },
            rc,
            neg(ENOSYS),
        )?;
    }
    Ok(())
}

pub fn bad_pointers() -> R {
    const BAD: [(u64, &str); 4] = [
        (0xdead_0000_0000, "unmapped 0xdead00000000"),
        (0xffff_ffff_ffff_f000, "unmapped 0xfffffffffffff000"),
        (0x8000_0000_0000_0000, "non-canonical 0x8000000000000000"),
        (0x0000_8000_0000_0000, "non-canonical 0x800000000000"),
    ];
    for (p, what) in BAD {
        // copy_{to,from}_guest fail -> -EFAULT in every handler.
        for (hcall, cmd, name) in [
            (
                XEN_VERSION,
                XENVER_EXTRAVERSION,
                "xen_version(XENVER_extraversion)",
            ),
            (EVENT_CHANNEL_OP, EVTCHNOP_STATUS, "EVTCHNOP_status"),
            (HVM_OP, HVMOP_GET_PARAM, "HVMOP_get_param"),
            (
                MEMORY_OP,
                XENMEM_CURRENT_RESERVATION,
                "XENMEM_current_reservation",
            ),
        ] {
            let rc = op_raw(hcall, cmd, p);
            ensure!(
                rc == neg(EFAULT),
                "{} with {}: expected {}, got {}",
                name,
                what,
                Rc(neg(EFAULT)),
                Rc(rc)
            );
        }
    }
    Ok(())
}

pub fn length_overrun() -> R {
    let end = env::ram_end_below_4g();
    ensure!(end >= 1 << 20, "no RAM end below 4 GiB in the memory map");
    // Structures that start in RAM and run past its end: the copy fails
    // part-way -> -EFAULT.
    rc_is(
        "EVTCHNOP_status on a struct straddling the end of RAM",
        op_raw(EVENT_CHANNEL_OP, EVTCHNOP_STATUS, end - 8),
        neg(EFAULT),
    )?;
    rc_is(
        "HVMOP_get_param on a struct straddling the end of RAM",
        op_raw(HVM_OP, HVMOP_GET_PARAM, end - 8),
        neg(EFAULT),
    )?;
    // SAFETY: the hypervisor only reads the buffer; it starts 16 bytes
    // before the end of RAM and claims 64 bytes.
    let rc = unsafe { hypercall3(CONSOLE_IO, CONSOLEIO_WRITE, 64, end - 16) };
    rc_is(
        "console_io(write) running off the end of RAM",
        rc,
        neg(EFAULT),
    )?;
    // A 16-byte result written across the end of our 4 GiB identity map.
    rc_is(
        "xen_version(extraversion) across the 4 GiB edge of the page tables",
        op_raw(XEN_VERSION, XENVER_EXTRAVERSION, (1 << 32) - 8),
        neg(EFAULT),
    )
}

pub fn ring3_hypercall() -> R {
    // Xen refuses hypercalls from CPL > 0 (hvm/hypercall.c hvm_hypercall:
    // -EPERM in RAX, nothing else done); kxen-vmm checks SS.DPL likewise.
    // On PVM hosts ring 3 runs with IOPL 0 and the CPU refuses the port
    // write itself (#GP): the VMM's check is then out of reach, and the
    // check is skipped rather than passed.
    let mut refused_by_cpu = 0;
    for (rax, rdi, what) in [
        (XEN_VERSION, 0, "EAX=17 (xen_version)"),
        (
            SCHED_OP,
            xen_abi::sched::SCHEDOP_YIELD,
            "EAX=29 (sched_op yield)",
        ),
    ] {
        let got = ring3_out58(rax, rdi);
        if got == RING3_OUT_GP {
            refused_by_cpu += 1;
            continue;
        }
        ensure!(
            got as i64 == neg(EPERM),
            "out %eax,$0x58 at CPL 3 with {}: expected RAX {}, got {}",
            what,
            Rc(neg(EPERM)),
            Rc(got as i64)
        );
    }
    match refused_by_cpu {
        0 => Ok(()),
        2 => skip!("out at CPL 3 raised #GP (ring 3 runs with IOPL 0 on this host), so the VMM's CPL check cannot be reached"),
        _ => bail!("out at CPL 3 raised #GP for one hypercall and reached the VMM for the other"),
    }
}

pub fn out_of_range() -> R {
    for port in [NR_EVENT_CHANNELS_2L, 0x8000_0000, u32::MAX] {
        // event_channel.c: port_is_valid fails -> -EINVAL.
        rc_is("EVTCHNOP_send(out of range)", xen::send(port), neg(EINVAL))?;
        rc_is(
            "EVTCHNOP_close(out of range)",
            xen::close(port),
            neg(EINVAL),
        )?;
        rc_is(
            "EVTCHNOP_unmask(out of range)",
            xen::unmask(port),
            neg(EINVAL),
        )?;
        rc_is(
            "EVTCHNOP_status(out of range)",
            xen::status(port).err().unwrap_or(0),
            neg(EINVAL),
        )?;
    }
    for index in [HVM_NR_PARAMS, 0x1000, u32::MAX] {
        // hvm.c: index >= HVM_NR_PARAMS -> -EINVAL.
        rc_is(
            "HVMOP_get_param(out of range)",
            xen::get_param(index).err().unwrap_or(0),
            neg(EINVAL),
        )?;
        rc_is(
            "HVMOP_set_param(out of range)",
            xen::set_param(index, 0),
            neg(EINVAL),
        )?;
    }
    Ok(())
}

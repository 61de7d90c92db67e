//! CPUID leaves, the hypercall page, xen_version and console_io.

use xen_abi::cpuid::{
    XEN_CPUID_BASE, XEN_CPUID_SIGNATURE, XEN_HVM_CPUID_DOMID_PRESENT,
    XEN_HVM_CPUID_VCPU_ID_PRESENT, XEN_HYPERCALL_MSR,
};
use xen_abi::errno::{EFAULT, EINVAL, ENOSYS, EPERM};
use xen_abi::hypercall::{CONSOLE_IO, STUB_SIZE, XEN_VERSION};
use xen_abi::transport::{
    hypercall_stub, CPUID_KXEN_BASE, CPUID_KXEN_SIGNATURE, CPUID_KXEN_TRANSPORT, HYPERCALL_PORT,
    TRANSPORT_PORT_IO,
};
use xen_abi::version::*;

use super::{eq, neg, rc_is, R};
use crate::boot::HYPERCALL_PAGE;
use crate::hypercall::{
    console_io_read, console_io_write, cpuid, hypercall3, op, op_raw, xen_version_buf,
    xen_version_null,
};
use crate::{bail, ensure};

/// Unmapped (beyond our 4 GiB identity map) but canonical.
pub const BAD_PTR: u64 = 0xdead_0000_0000;

/// kxen reports Xen 4.17.
const XEN_VERSION_4_17: i64 = (4 << 16) | 17;

fn has_nul(buf: &[u8]) -> bool {
    buf.contains(&0)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

pub fn cpuid_xen_signature() -> R {
    let r = cpuid(XEN_CPUID_BASE, 0);
    eq(
        "leaf 0x40000000 EBX/ECX/EDX",
        [r[1], r[2], r[3]],
        XEN_CPUID_SIGNATURE,
    )?;
    ensure!(
        r[0] >= XEN_CPUID_BASE + 2,
        "leaf 0x40000000 EAX (max leaf): expected >= {:#x}, got {:#x}",
        XEN_CPUID_BASE + 2,
        r[0]
    );
    Ok(())
}

pub fn cpuid_xen_leaves() -> R {
    let max = cpuid(XEN_CPUID_BASE, 0)[0];
    let v = cpuid(XEN_CPUID_BASE + 1, 0);
    eq(
        "leaf 0x40000001 EAX (version)",
        v[0] as i64,
        XEN_VERSION_4_17,
    )?;
    let hc = cpuid(XEN_CPUID_BASE + 2, 0);
    ensure!(
        hc[0] >= 1,
        "leaf 0x40000002 EAX (hypercall pages): expected >= 1, got {}",
        hc[0]
    );
    eq(
        "leaf 0x40000002 EBX (hypercall MSR)",
        hc[1],
        XEN_HYPERCALL_MSR,
    )?;
    ensure!(
        max >= XEN_CPUID_BASE + 4,
        "leaf 0x40000000 EAX: expected >= {:#x} (leaf 4 carries the domid), got {:#x}",
        XEN_CPUID_BASE + 4,
        max
    );
    let l4 = cpuid(XEN_CPUID_BASE + 4, 0);
    ensure!(
        l4[0] & XEN_HVM_CPUID_DOMID_PRESENT != 0,
        "leaf 0x40000004 EAX {:#x}: DOMID_PRESENT missing",
        l4[0]
    );
    ensure!(
        l4[2] != 0 && l4[2] < 0x7ff0,
        "leaf 0x40000004 ECX (domid): expected a domU id, got {}",
        l4[2]
    );
    if l4[0] & XEN_HVM_CPUID_VCPU_ID_PRESENT != 0 {
        eq("leaf 0x40000004 EBX (vcpu id of vCPU 0)", l4[1], 0)?;
    }
    Ok(())
}

pub fn cpuid_kxen_leaves() -> R {
    let r = cpuid(CPUID_KXEN_BASE, 0);
    eq(
        "leaf 0x40000100 EBX/ECX/EDX",
        [r[1], r[2], r[3]],
        CPUID_KXEN_SIGNATURE,
    )?;
    ensure!(
        r[0] >= CPUID_KXEN_TRANSPORT,
        "leaf 0x40000100 EAX (max leaf): expected >= {:#x}, got {:#x}",
        CPUID_KXEN_TRANSPORT,
        r[0]
    );
    let t = cpuid(CPUID_KXEN_TRANSPORT, 0);
    eq("leaf 0x40000101 EAX (transport)", t[0], TRANSPORT_PORT_IO)?;
    eq("leaf 0x40000101 EBX (port)", t[1], HYPERCALL_PORT as u32)
}

pub fn cpuid_no_kvm_signature() -> R {
    // Linux scans 0x40000000..0x40010000 in steps of 0x100 for KVM; a KVM
    // signature anywhere there makes it use KVM paravirt features (which
    // hang on these hosts). Xen's own leaves must be at the first base.
    const KVM: [u32; 3] = [0x4b4d_564b, 0x564b_4d56, 0x0000_004d]; // "KVMKVMKVM\0\0\0"
    let mut base = XEN_CPUID_BASE;
    while base < XEN_CPUID_BASE + 0x1_0000 {
        let r = cpuid(base, 0);
        if [r[1], r[2], r[3]] == KVM {
            bail!("KVM signature at CPUID leaf {:#x}", base);
        }
        base += 0x100;
    }
    Ok(())
}

pub fn hypercall_page_contents() -> R {
    for nr in [0u32, 12, 17, 29, 32, 127] {
        let want = hypercall_stub(nr);
        let mut got = [0u8; STUB_SIZE];
        let base = HYPERCALL_PAGE.ptr();
        for (i, b) in got.iter_mut().enumerate() {
            // SAFETY: nr < 128, so the byte is inside the 4 KiB hypercall
            // page, which the VMM filled at boot and nobody writes since.
            *b = unsafe { base.add(nr as usize * STUB_SIZE + i).read_volatile() };
        }
        // The instruction part: mov $nr,%eax; out %eax,$0x58; ret.
        if got[..8] != want[..8] {
            bail!(
                "stub {}: expected {:02x?}, got {:02x?}",
                nr,
                &want[..8],
                &got[..8]
            );
        }
    }
    Ok(())
}

pub fn version() -> R {
    eq(
        "xen_version(XENVER_version)",
        xen_version_null(XENVER_VERSION),
        XEN_VERSION_4_17,
    )
}

fn string_op(cmd: u64, name: &str, buf: &mut [u8]) -> R {
    buf.fill(0xff);
    rc_is(name, xen_version_buf(cmd, buf), 0)?;
    ensure!(has_nul(buf), "{}: result is not NUL-terminated", name);
    Ok(())
}

pub fn extraversion() -> R {
    string_op(
        XENVER_EXTRAVERSION,
        "xen_version(XENVER_extraversion)",
        &mut [0u8; EXTRAVERSION_LEN],
    )
}

pub fn compile_info() -> R {
    let mut info = CompileInfo {
        compiler: [0xff; 64],
        compile_by: [0xff; 16],
        compile_domain: [0xff; 32],
        compile_date: [0xff; 32],
    };
    rc_is(
        "xen_version(XENVER_compile_info)",
        op(XEN_VERSION, XENVER_COMPILE_INFO, &mut info),
        0,
    )?;
    for (field, bytes) in [
        ("compiler", &info.compiler[..]),
        ("compile_by", &info.compile_by[..]),
        ("compile_domain", &info.compile_domain[..]),
        ("compile_date", &info.compile_date[..]),
    ] {
        ensure!(
            has_nul(bytes),
            "compile_info.{} is not NUL-terminated",
            field
        );
    }
    Ok(())
}

pub fn capabilities() -> R {
    let mut buf = [0xffu8; CAPABILITIES_LEN];
    string_op(
        XENVER_CAPABILITIES,
        "xen_version(XENVER_capabilities)",
        &mut buf,
    )?;
    ensure!(
        contains(&buf, b"hvm-3.0-x86_64"),
        "capabilities: expected to contain \"hvm-3.0-x86_64\""
    );
    Ok(())
}

pub fn changeset() -> R {
    string_op(
        XENVER_CHANGESET,
        "xen_version(XENVER_changeset)",
        &mut [0u8; CHANGESET_LEN],
    )
}

pub fn platform_parameters() -> R {
    // Xen 4.17 kernel.c: every 64-bit caller gets HYPERVISOR_VIRT_START
    // (public/arch-x86/xen-x86_64.h: 0xFFFF800000000000). Xen 4.18 and
    // later answer 0 to HVM guests; kxen reports 4.17.
    const XEN_4_17_VIRT_START: u64 = 0xffff_8000_0000_0000;
    let mut p = PlatformParameters {
        virt_start: 0x5a5a_5a5a_5a5a_5a5a,
    };
    rc_is(
        "xen_version(XENVER_platform_parameters)",
        op(XEN_VERSION, XENVER_PLATFORM_PARAMETERS, &mut p),
        0,
    )?;
    eq(
        "platform_parameters.virt_start",
        p.virt_start,
        XEN_4_17_VIRT_START,
    )
}

pub fn get_features() -> R {
    let mut fi = FeatureInfo {
        submap_idx: 0,
        submap: 0,
    };
    rc_is(
        "xen_version(XENVER_get_features, submap 0)",
        op(XEN_VERSION, XENVER_GET_FEATURES, &mut fi),
        0,
    )?;
    for (bit, name) in [
        (XENFEAT_AUTO_TRANSLATED_PHYSMAP, "auto_translated_physmap"),
        (XENFEAT_HVM_CALLBACK_VECTOR, "hvm_callback_vector"),
    ] {
        ensure!(
            fi.submap & (1 << bit) != 0,
            "submap 0 = {:#x}: XENFEAT_{} (bit {}) missing",
            fi.submap,
            name,
            bit
        );
    }
    let mut fi1 = FeatureInfo {
        submap_idx: 1,
        submap: 0,
    };
    // kernel.c: only submap_idx 0 exists; others are -EINVAL.
    rc_is(
        "xen_version(XENVER_get_features, submap 1)",
        op(XEN_VERSION, XENVER_GET_FEATURES, &mut fi1),
        neg(EINVAL),
    )
}

pub fn pagesize() -> R {
    eq(
        "xen_version(XENVER_pagesize, NULL)",
        xen_version_null(XENVER_PAGESIZE),
        4096,
    )?;
    // kernel.c: XENVER_pagesize with a non-NULL handle is -EINVAL.
    let mut buf = [0u8; 8];
    rc_is(
        "xen_version(XENVER_pagesize, non-NULL)",
        xen_version_buf(XENVER_PAGESIZE, &mut buf),
        neg(EINVAL),
    )
}

pub fn guest_handle() -> R {
    let mut buf = [0xffu8; DOMAIN_HANDLE_LEN];
    rc_is(
        "xen_version(XENVER_guest_handle)",
        xen_version_buf(XENVER_GUEST_HANDLE, &mut buf),
        0,
    )?;
    ensure!(
        buf != [0xff; DOMAIN_HANDLE_LEN],
        "guest_handle: the 16-byte handle was not written"
    );
    Ok(())
}

pub fn commandline_denied() -> R {
    let mut buf = [0xffu8; COMMANDLINE_LEN];
    let rc = xen_version_buf(XENVER_COMMANDLINE, &mut buf);
    // Xen 4.17 kernel.c: XSM denies a domU the command line (XSM_PRIV),
    // and the call still answers 0 with the deny string, "<denied>" and
    // its NUL, copied in place of the text; nothing after the NUL.
    const DENIED: &[u8] = b"<denied>\0";
    rc_is("xen_version(XENVER_commandline)", rc, 0)?;
    ensure!(
        buf.starts_with(DENIED),
        "xen_version(XENVER_commandline): expected \"<denied>\" and NUL, got {:?}",
        &buf[..DENIED.len()]
    );
    ensure!(
        buf[DENIED.len()..].iter().all(|&b| b == 0xff),
        "xen_version(XENVER_commandline) wrote past the deny string's NUL"
    );
    Ok(())
}

pub fn bad_pointer() -> R {
    // kernel.c: copy_to_guest/copy_from_guest failure is -EFAULT.
    rc_is(
        "xen_version(XENVER_extraversion, unmapped)",
        op_raw(XEN_VERSION, XENVER_EXTRAVERSION, BAD_PTR),
        neg(EFAULT),
    )?;
    rc_is(
        "xen_version(XENVER_get_features, unmapped)",
        op_raw(XEN_VERSION, XENVER_GET_FEATURES, BAD_PTR),
        neg(EFAULT),
    )?;
    rc_is(
        "xen_version(XENVER_capabilities, non-canonical)",
        op_raw(XEN_VERSION, XENVER_CAPABILITIES, 0x8000_0000_0000_0000),
        neg(EFAULT),
    )
}

pub fn unknown_subop() -> R {
    // kernel.c: default case is -ENOSYS.
    rc_is("xen_version(0x7fff)", xen_version_null(0x7fff), neg(ENOSYS))
}

pub fn console_write() -> R {
    rc_is(
        "console_io(CONSOLEIO_write)",
        console_io_write(b"kxen-testguest: console_io write check\n"),
        0,
    )
}

pub fn console_read() -> R {
    let mut buf = [0xa5u8; 64];
    // console.c do_console_io asks xsm_console_io first: XSM_PRIV for a
    // domU, -EPERM, in every Xen build (a debug build lets a domU write,
    // never read).
    rc_is(
        "console_io(CONSOLEIO_read, 64)",
        console_io_read(&mut buf),
        neg(EPERM),
    )?;
    ensure!(
        buf == [0xa5; 64],
        "console_io(CONSOLEIO_read) refused but wrote into the buffer"
    );
    Ok(())
}

pub fn console_bad_pointer() -> R {
    // console.c: guest_console_write's copy_from_guest failure is -EFAULT.
    // SAFETY: the buffer address is unmapped; the hypervisor only reads it.
    let rc = unsafe { hypercall3(CONSOLE_IO, xen_abi::hypercall::CONSOLEIO_WRITE, 16, BAD_PTR) };
    rc_is("console_io(CONSOLEIO_write, unmapped)", rc, neg(EFAULT))
}

pub fn console_unknown_cmd() -> R {
    // console.c: xsm_console_io refuses a domU before the command is
    // looked at (-EPERM), so the default case's -ENOSYS is out of reach.
    // SAFETY: no memory argument.
    let rc = unsafe { hypercall3(CONSOLE_IO, 99, 0, 0) };
    rc_is("console_io(99)", rc, neg(EPERM))
}

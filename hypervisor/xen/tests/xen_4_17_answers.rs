//! Answers where a domU can tell kxen from Xen 4.17 unless kxen gives
//! Xen's exact value: denied version information, vcpu_info placement,
//! console_io for a domU, and the grant table's size.

use kxen_xen::harness;
use xen_abi::errno::*;
use xen_abi::grant_table::*;
use xen_abi::hypercall::*;
use xen_abi::vcpu::{RegisterVcpuInfo, VCPUOP_REGISTER_VCPU_INFO};
use xen_abi::version::*;
use zerocopy::{FromBytes, IntoBytes};

/// Where the argument structs go.
const ARG: u64 = 0x1000;
/// A page the tests register vcpu_info in.
const VCPU_INFO_GFN: u64 = 0x20;

fn call(d: &kxen_xen::Domain, nr: u64, a1: u64, a2: u64, a3: u64) -> i64 {
    harness::hypercall(d, nr, [a1, a2, a3, 0, 0])
}

fn put(d: &kxen_xen::Domain, bytes: &[u8]) {
    assert!(harness::write_guest(d, ARG, bytes));
}

fn get<const N: usize>(d: &kxen_xen::Domain) -> [u8; N] {
    let mut buf = [0u8; N];
    assert!(harness::read_guest(d, ARG, &mut buf));
    buf
}

#[test]
fn commandline_is_the_deny_string_and_build_id_is_refused() {
    let (domain, _) = harness::domain();
    put(&domain, &[0xff; COMMANDLINE_LEN]);
    // kernel.c: denied by XSM, XENVER_commandline still answers 0 and
    // copies "<denied>" with its NUL, and nothing past it.
    assert_eq!(call(&domain, XEN_VERSION, XENVER_COMMANDLINE, ARG, 0), 0);
    let buf: [u8; COMMANDLINE_LEN] = get(&domain);
    assert_eq!(&buf[..9], b"<denied>\0");
    assert!(buf[9..].iter().all(|&b| b == 0xff), "wrote past the NUL");
    assert_eq!(call(&domain, XEN_VERSION, XENVER_BUILD_ID, ARG, 0), -EPERM);
}

fn register_vcpu_info(domain: &kxen_xen::Domain, offset: u32) -> i64 {
    let req = RegisterVcpuInfo {
        mfn: VCPU_INFO_GFN,
        offset,
        rsvd: 0,
    };
    put(domain, req.as_bytes());
    call(domain, VCPU_OP, VCPUOP_REGISTER_VCPU_INFO, 0, ARG)
}

#[test]
fn vcpu_info_offsets_are_checked_first_with_enxio() {
    let (domain, _) = harness::domain();
    // domain.c map_vcpu_info: offset > PAGE_SIZE - sizeof(vcpu_info) or
    // not 8-byte aligned -> -ENXIO.
    assert_eq!(register_vcpu_info(&domain, 4096 - 64 + 8), -ENXIO);
    assert_eq!(register_vcpu_info(&domain, 4), -ENXIO);
    // The last offset that fits is fine.
    assert_eq!(register_vcpu_info(&domain, 4096 - 64), 0);
    // Registered already: -EINVAL, but only once the offset passed.
    assert_eq!(register_vcpu_info(&domain, 0), -EINVAL);
    assert_eq!(register_vcpu_info(&domain, 4096 - 64 + 8), -ENXIO);
}

#[test]
fn console_io_lets_a_domu_write_and_nothing_else() {
    let (domain, platform) = harness::domain();
    put(&domain, b"hello\n");
    assert_eq!(call(&domain, CONSOLE_IO, CONSOLEIO_WRITE, 6, ARG), 0);
    assert_eq!(platform.console.lock().unwrap().as_slice(), b"hello\n");
    // xsm_console_io: XSM_PRIV for everything but a debug build's write,
    // before the command is looked at.
    put(&domain, &[0xa5; 16]);
    assert_eq!(call(&domain, CONSOLE_IO, CONSOLEIO_READ, 16, ARG), -EPERM);
    assert_eq!(get::<16>(&domain), [0xa5; 16], "a refused read wrote");
    assert_eq!(call(&domain, CONSOLE_IO, 99, 0, 0), -EPERM);
}

fn query_size(domain: &kxen_xen::Domain, dom: u16) -> QuerySize {
    let q = QuerySize {
        dom,
        nr_frames: 0xdead,
        max_nr_frames: 0xdead,
        status: 0x5a5a,
        ..Default::default()
    };
    put(domain, q.as_bytes());
    assert_eq!(call(domain, GRANT_TABLE_OP, GNTTABOP_QUERY_SIZE, ARG, 1), 0);
    let bytes: [u8; core::mem::size_of::<QuerySize>()] = get(domain);
    QuerySize::read_from_bytes(&bytes).unwrap()
}

#[test]
fn query_size_counts_the_initial_frame_and_xens_default_maximum() {
    let (domain, _) = harness::domain();
    // grant_table_init grows a new table to INITIAL_NR_GRANT_FRAMES (1 on
    // x86); max_grant_frames defaults to 64.
    let q = query_size(&domain, xen_abi::DOMID_SELF);
    assert_eq!(
        (q.status, q.nr_frames, q.max_nr_frames),
        (GNTST_OKAY, 1, 64)
    );
    assert_eq!(harness::place_grant_frame(&domain, 0x30), 0);
    assert_eq!(query_size(&domain, 1).nr_frames, 1);
    // Dom0 exists but XSM_TARGET refuses a domU; dom 5 does not exist.
    assert_eq!(query_size(&domain, 0).status, GNTST_PERMISSION_DENIED);
    assert_eq!(query_size(&domain, 5).status, GNTST_BAD_DOMAIN);
}

#[test]
fn capabilities_are_the_hypervisors_for_every_guest_type() {
    // common/kernel.c copies xen_cap_info, built once at boot
    // (x86/setup.c init_xen_cap_info): the same string whatever the
    // caller's type, NUL-padded to the whole 1024-byte buffer.
    for (domain, _) in [harness::domain(), harness::pv_domain()] {
        put(&domain, &[0xff; CAPABILITIES_LEN]);
        assert_eq!(call(&domain, XEN_VERSION, XENVER_CAPABILITIES, ARG, 0), 0);
        let buf: [u8; CAPABILITIES_LEN] = get(&domain);
        let caps = XEN_CAPABILITIES.as_bytes();
        assert_eq!(&buf[..caps.len()], caps);
        assert!(buf[caps.len()..].iter().all(|&b| b == 0));
        assert!(XEN_CAPABILITIES.starts_with("xen-3.0-x86_64 "));
        assert_eq!(
            call(&domain, XEN_VERSION, XENVER_CAPABILITIES, 1 << 63, 0),
            -EFAULT
        );
    }
}

#[test]
fn machphys_mapping_is_the_pv_m2p_area_and_enosys_for_hvm() {
    use xen_abi::memory::{MachphysMapping, XENMEM_MACHPHYS_MAPPING};
    // x86/mm.c arch_memory_op: a PV domU is told its M2P area and
    // MACH2PHYS_NR_ENTRIES - 1; hvm/hypercall.c refuses it to HVM/PVH.
    let (pv, _) = harness::pv_domain();
    put(&pv, &[0xff; 32]);
    assert_eq!(call(&pv, MEMORY_OP, XENMEM_MACHPHYS_MAPPING, ARG, 0), 0);
    let buf: [u8; 32] = get(&pv);
    let mapping = MachphysMapping::read_from_bytes(&buf[..24]).unwrap();
    assert_eq!(mapping, harness::PV_MACHPHYS_MAPPING);
    assert_eq!(mapping.max_mfn, (1 << 35) - 1);
    assert_eq!(buf[24..], [0xff; 8], "wrote past the struct");
    assert_eq!(
        call(&pv, MEMORY_OP, XENMEM_MACHPHYS_MAPPING, 1 << 63, 0),
        -EFAULT
    );
    let (hvm, _) = harness::domain();
    put(&hvm, &[0xff; 24]);
    assert_eq!(
        call(&hvm, MEMORY_OP, XENMEM_MACHPHYS_MAPPING, ARG, 0),
        -ENOSYS
    );
    assert_eq!(get::<24>(&hvm), [0xff; 24], "HVM's buffer untouched");
}

//! XENVER_* (Xen's common/kernel.c `do_xen_version`): the version, build
//! strings and feature bits a domU may read, with XSM's answers for the
//! privileged sub-commands.

use xen_abi::errno::*;
use xen_abi::version::*;
use xen_abi::PAGE_SIZE;

use crate::domain::Domain;
use crate::guest::GuestAccess;

const XEN_EXTRAVERSION: &[u8] = b".0-kxen";
const XEN_CHANGESET: &[u8] = concat!("kxen ", env!("CARGO_PKG_VERSION")).as_bytes();
/// What Xen writes in place of information XSM withholds, NUL included.
const XEN_DENY: &[u8; 9] = b"<denied>\0";
/// HYPERVISOR_VIRT_START for 64-bit guests.
const HYPERVISOR_VIRT_START: u64 = 0xffff_8000_0000_0000;

/// Copy `s` into a NUL-padded fixed-size buffer.
fn fixed<const N: usize>(s: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let n = s.len().min(N - 1);
    out[..n].copy_from_slice(&s[..n]);
    out
}

impl Domain {
    pub(super) fn xen_version(&self, g: &GuestAccess, cmd: u64, arg: u64) -> i64 {
        match cmd {
            XENVER_VERSION => ((self.cfg.xen_major << 16) | self.cfg.xen_minor) as i64,
            XENVER_EXTRAVERSION => {
                write!(g, arg, &fixed::<EXTRAVERSION_LEN>(XEN_EXTRAVERSION));
                0
            }
            XENVER_COMPILE_INFO => {
                let info = CompileInfo {
                    compiler: fixed(b"rustc"),
                    compile_by: fixed(b"kxen"),
                    compile_domain: fixed(b"kxen.invalid"),
                    compile_date: fixed(concat!("kxen-", env!("CARGO_PKG_VERSION")).as_bytes()),
                };
                write!(g, arg, &info);
                0
            }
            XENVER_CAPABILITIES => {
                // The hypervisor's, whatever the caller's type (as Xen).
                write!(
                    g,
                    arg,
                    &fixed::<CAPABILITIES_LEN>(XEN_CAPABILITIES.as_bytes())
                );
                0
            }
            XENVER_CHANGESET => {
                write!(g, arg, &fixed::<CHANGESET_LEN>(XEN_CHANGESET));
                0
            }
            XENVER_PLATFORM_PARAMETERS => {
                write!(
                    g,
                    arg,
                    &PlatformParameters {
                        virt_start: HYPERVISOR_VIRT_START
                    }
                );
                0
            }
            XENVER_GET_FEATURES => {
                let mut fi = read!(g, FeatureInfo, arg);
                if fi.submap_idx != 0 {
                    // Only submap 0 exists (XENFEAT_NR_SUBMAPS == 1).
                    return -EINVAL;
                }
                // Xen's common/kernel.c: a PV domain gets the PV MMU's
                // features (Linux refuses to boot as PV without
                // preserve_ad and map_avail_bits), HVM/PVH the callback
                // vector and a translated physmap.
                fi.submap = if self.cfg.pv_machphys_mapping.is_some() {
                    (1 << XENFEAT_MMU_PT_UPDATE_PRESERVE_AD)
                        | (1 << XENFEAT_HIGHMEM_ASSIST)
                        | (1 << XENFEAT_GNTTAB_MAP_AVAIL_BITS)
                        | (1 << XENFEAT_LINUX_RSDP_UNRESTRICTED)
                } else {
                    (1 << XENFEAT_AUTO_TRANSLATED_PHYSMAP)
                        | (1 << XENFEAT_HVM_CALLBACK_VECTOR)
                        | (1 << XENFEAT_HVM_SAFE_PVCLOCK)
                        | (1 << XENFEAT_LINUX_RSDP_UNRESTRICTED)
                };
                write!(g, arg, &fi);
                0
            }
            // The page size is the return value; a buffer is a caller bug.
            XENVER_PAGESIZE if arg != 0 => -EINVAL,
            XENVER_PAGESIZE => PAGE_SIZE as i64,
            XENVER_GUEST_HANDLE => {
                write!(g, arg, &self.cfg.handle);
                0
            }
            // XSM_PRIV: only the control domain reads Xen's command line
            // and build id. A domU asking for the command line is still
            // answered 0, with the deny string in place of the text (Xen
            // 4.17 copies the string and its NUL, nothing more); the build
            // id is refused outright.
            XENVER_COMMANDLINE => {
                write!(g, arg, XEN_DENY);
                0
            }
            XENVER_BUILD_ID => -EPERM,
            _ => -ENOSYS,
        }
    }
}

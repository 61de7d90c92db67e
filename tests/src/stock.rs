//! The stock Debian kernel as an HVM guest: the kernel of the installed
//! `linux-image-amd64`, unpatched, and a busybox initramfs that loads its
//! virtio modules from the same package.
//!
//! The kernel is booted as the vmlinux inside Debian's bzImage: on PVM
//! hosts the bzImage's own decompressor runs in emulated ring 0 for
//! minutes. Unpacking it here changes no byte of the kernel.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The command line for a stock kernel on a PVM host (README.md, "HVM
/// guests"). Needed: the emulator lacks XSAVE, POPCNT, CMPXCHG16B and the
/// SSSE3/SSE4 instructions of the kernel's SIMD crypto (blake2s in the
/// random pool runs `movd` to an XMM register on the way to init), and
/// CPUID cannot hide them. For speed under emulation: no watchdogs, no
/// crypto self-tests (one made loading the built-in X.509 certificate time
/// out after 60 s), no read-only remap of the kernel, and no background
/// check of ftrace's 40,000 records, which `late_initcall_sync` waits for
/// (it held the boot for more than 10 minutes).
pub const CMDLINE: &str = "console=ttyS0 clearcpuid=xsave,popcnt,cx16,ssse3,sse4_1,sse4_2 noxsave \
     mitigations=off nowatchdog cryptomgr.notests rodata=off \
     initcall_blacklist=ftrace_check_for_weak_functions";

/// The virtio modules the initramfs loads, dependencies first.
pub const MODULES: &[&str] = &[
    "kernel/drivers/virtio/virtio_ring.ko",
    "kernel/drivers/virtio/virtio.ko",
    "kernel/drivers/virtio/virtio_mmio.ko",
    "kernel/drivers/block/virtio_blk.ko",
    "kernel/net/core/failover.ko",
    "kernel/drivers/net/net_failover.ko",
    "kernel/drivers/net/virtio_net.ko",
];

/// The newest installed Debian amd64 kernel with its modules:
/// `(release, /boot/vmlinuz-RELEASE)`, or why there is none.
pub fn installed_kernel() -> Result<(String, PathBuf), String> {
    let mut found: Vec<String> = std::fs::read_dir("/boot")
        .map_err(|e| format!("/boot: {e}"))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("vmlinuz-"))
                .map(str::to_string)
        })
        .filter(|release| release.ends_with("-amd64"))
        .filter(|release| Path::new("/lib/modules").join(release).is_dir())
        .collect();
    // Debian's releases sort as versions; a plain sort is enough within
    // one series, and the newest comes last.
    found.sort_by(|a, b| compare_versions(a, b));
    let release = found
        .pop()
        .ok_or("no /boot/vmlinuz-*-amd64 with modules (apt-get install linux-image-amd64)")?;
    let image = PathBuf::from(format!("/boot/vmlinuz-{release}"));
    Ok((release, image))
}

/// Compare dotted/dashed version strings number by number.
fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    let parts = |s: &str| -> Vec<u64> {
        s.split(|c: char| !c.is_ascii_digit())
            .filter(|p| !p.is_empty())
            .map(|p| p.parse().unwrap_or(0))
            .collect()
    };
    parts(a).cmp(&parts(b))
}

/// Where the payload of a bzImage lies: (offset, length) in the file.
pub fn bzimage_payload(image: &[u8]) -> Result<(usize, usize), String> {
    let field = |at: usize, len: usize| {
        image
            .get(at..at + len)
            .ok_or_else(|| "bzImage too short".to_string())
    };
    if field(0x202, 4)? != b"HdrS" {
        return Err("not a bzImage (no HdrS)".into());
    }
    let setup_sects = match field(0x1f1, 1)?[0] {
        0 => 4,
        n => usize::from(n),
    };
    let u32_at = |at: usize| -> Result<usize, String> {
        let b = field(at, 4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let offset = (setup_sects + 1) * 512 + u32_at(0x248)?;
    let len = u32_at(0x24c)?;
    if offset.checked_add(len).is_none_or(|end| end > image.len()) {
        return Err("bzImage payload lies past the end of the file".into());
    }
    Ok((offset, len))
}

/// The vmlinux ELF inside a bzImage (an xz payload, as Debian builds
/// them), unpacked with xz(1).
pub fn unpack_vmlinux(image: &Path, out: &Path) -> Result<(), String> {
    let data = std::fs::read(image).map_err(|e| format!("{}: {e}", image.display()))?;
    let (offset, len) = bzimage_payload(&data)?;
    let payload = &data[offset..offset + len];
    if !payload.starts_with(b"\xfd7zXZ\0") {
        return Err(format!(
            "{}: payload is not xz (starts {:02x?})",
            image.display(),
            &payload[..payload.len().min(6)]
        ));
    }
    let tmp = out.with_extension("xz");
    std::fs::write(&tmp, payload).map_err(|e| format!("{}: {e}", tmp.display()))?;
    // The payload ends with the decompressed size after the xz stream.
    let unpacked = Command::new("xz")
        .args(["-dc", "--single-stream"])
        .arg(&tmp)
        .output()
        .map_err(|e| format!("xz: {e} (apt-get install xz-utils)"))?;
    let _ = std::fs::remove_file(&tmp);
    if !unpacked.status.success() || !unpacked.stdout.starts_with(b"\x7fELF") {
        return Err(format!(
            "xz could not unpack {}: {}",
            image.display(),
            String::from_utf8_lossy(&unpacked.stderr)
        ));
    }
    std::fs::write(out, &unpacked.stdout).map_err(|e| format!("{}: {e}", out.display()))
}

/// One file of an initramfs.
pub enum Entry {
    Dir,
    File {
        mode: u32,
        data: Vec<u8>,
    },
    Symlink(String),
    /// A character device (major, minor).
    CharDev(u32, u32),
}

/// An uncompressed newc cpio archive, the format the kernel unpacks as
/// an initramfs. Uncompressed because on PVM hosts the kernel's own
/// decompressors run in emulated ring 0.
pub fn cpio_newc<S: AsRef<str>>(entries: &[(S, Entry)]) -> Vec<u8> {
    fn pad4(out: &mut Vec<u8>) {
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
    }
    let mut out = Vec::new();
    let mut push = |ino: usize, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)| {
        let fields = [
            ino as u32,
            mode,
            0,
            0,
            if mode & 0o170000 == 0o040000 { 2 } else { 1 },
            0,
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        out.extend_from_slice(b"070701");
        for f in fields {
            out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        pad4(&mut out);
        out.extend_from_slice(data);
        pad4(&mut out);
    };
    for (i, (name, entry)) in entries.iter().enumerate() {
        let ino = i + 1;
        let name = name.as_ref();
        match entry {
            Entry::Dir => push(ino, name, 0o040755, &[], (0, 0)),
            Entry::File { mode, data } => push(ino, name, 0o100000 | mode, data, (0, 0)),
            Entry::Symlink(target) => push(ino, name, 0o120777, target.as_bytes(), (0, 0)),
            Entry::CharDev(major, minor) => push(ino, name, 0o020600, &[], (*major, *minor)),
        }
    }
    push(0, "TRAILER!!!", 0, &[], (0, 0));
    out
}

/// busybox init's table: a shell on COM1 and a clean power-off.
const INITTAB: &str = "\
::sysinit:/etc/init.d/rcS
ttyS0::respawn:/bin/sh
::shutdown:/bin/sync
";

/// Mounts the pseudo file systems, loads the virtio modules and says so.
/// The figures come from shell builtins, which start no process.
fn rcs(modules: &[String]) -> String {
    let mut s = String::from(
        "#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
read up idle < /proc/uptime
echo \"KXEN-INIT uptime=$up\"
",
    );
    for m in modules {
        s.push_str(&format!(
            "insmod /lib/modules/{m} || echo \"KXEN-INSMOD-FAILED {m}\"\n"
        ));
    }
    s.push_str(
        "read up idle < /proc/uptime
echo \"KXEN-MODULES uptime=$up\"
",
    );
    s
}

/// A busybox-static initramfs with the virtio modules of `release`.
pub fn initramfs(release: &str) -> Result<Vec<u8>, String> {
    busybox_initramfs(release, MODULES, |names| {
        vec![
            ("init".into(), Entry::Symlink("bin/busybox".into())),
            (
                "etc/inittab".into(),
                Entry::File {
                    mode: 0o644,
                    data: INITTAB.as_bytes().to_vec(),
                },
            ),
            (
                "etc/init.d/rcS".into(),
                Entry::File {
                    mode: 0o755,
                    data: rcs(names).into_bytes(),
                },
            ),
        ]
    })
}

/// busybox, its links, and `modules` of `release` under /lib/modules,
/// plus the entries `rest` makes from the modules' file names.
fn busybox_initramfs(
    release: &str,
    modules: &[&str],
    rest: impl FnOnce(&[String]) -> Vec<(String, Entry)>,
) -> Result<Vec<u8>, String> {
    let busybox = std::fs::read("/bin/busybox")
        .map_err(|e| format!("/bin/busybox: {e} (apt-get install busybox-static)"))?;
    if !crate::linux::is_static_elf(&busybox) {
        return Err("/bin/busybox is not static (apt-get install busybox-static)".into());
    }
    let links = crate::linux::busybox_links()?;
    let mut entries: Vec<(String, Entry)> = Vec::new();
    for dir in crate::linux::BUSYBOX_DIRS
        .iter()
        .chain(&["lib", "lib/modules", "newroot"])
    {
        entries.push((dir.to_string(), Entry::Dir));
    }
    entries.push(("dev/console".into(), Entry::CharDev(5, 1)));
    entries.push((
        "bin/busybox".into(),
        Entry::File {
            mode: 0o755,
            data: busybox,
        },
    ));
    for (path, target) in links {
        entries.push((path, Entry::Symlink(target)));
    }
    let mut names = Vec::new();
    for m in modules {
        let path = Path::new("/lib/modules").join(release).join(m);
        let data = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let name = Path::new(m)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        entries.push((
            format!("lib/modules/{name}"),
            Entry::File { mode: 0o644, data },
        ));
        names.push(name);
    }
    entries.extend(rest(&names));
    Ok(cpio_newc(&entries))
}

/// The Xen frontends and ext4 a PV guest needs to reach its root on
/// xvda, dependencies first.
pub const PV_MODULES: &[&str] = &[
    "kernel/lib/crc16.ko",
    "kernel/fs/mbcache.ko",
    "kernel/crypto/crc32c_generic.ko",
    "kernel/fs/jbd2/jbd2.ko",
    "kernel/fs/ext4/ext4.ko",
    "kernel/drivers/block/xen-blkfront.ko",
    "kernel/drivers/net/xen-netfront.ko",
];

/// The PV initramfs' /init: load the frontends and ext4 (as Debian's
/// initramfs would), wait for xvda with a deadline, and hand over to the
/// root file system's init with /dev moved along.
fn pv_init(modules: &[String]) -> String {
    let mut s = String::from(
        "#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
",
    );
    for m in modules {
        s.push_str(&format!(
            "insmod /lib/modules/{m} || echo \"KXEN-INSMOD-FAILED {m}\"\n"
        ));
    }
    s.push_str(
        "n=0
while [ ! -b /dev/xvda ] && [ $n -lt 600 ]; do n=$((n + 1)); usleep 100000; done
mount -t ext4 -o rw /dev/xvda /newroot || { echo KXEN-NO-ROOT; exec sh; }
mount --move /dev /newroot/dev
umount /sys /proc
exec switch_root /newroot /sbin/init
",
    );
    s
}

/// A busybox initramfs that mounts ext4 on xvda through xen-blkfront
/// and switches to it, with xen-netfront loaded for eth0.
pub fn pv_initramfs(release: &str) -> Result<Vec<u8>, String> {
    busybox_initramfs(release, PV_MODULES, |names| {
        vec![(
            "init".into(),
            Entry::File {
                mode: 0o755,
                data: pv_init(names).into_bytes(),
            },
        )]
    })
}

/// The stock kernel unpacked into `dir`, and its initramfs:
/// `(release, vmlinux, initramfs)`.
pub fn stock_guest(dir: &Path) -> Result<(String, PathBuf, PathBuf), String> {
    let (release, image) = installed_kernel()?;
    let vmlinux = dir.join(format!("vmlinux-{release}"));
    unpack_vmlinux(&image, &vmlinux)?;
    let initrd = dir.join("initramfs.cpio");
    std::fs::write(&initrd, initramfs(&release)?)
        .map_err(|e| format!("{}: {e}", initrd.display()))?;
    Ok((release, vmlinux, initrd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_layout() {
        let a = cpio_newc(&[
            ("d", Entry::Dir),
            (
                "d/f",
                Entry::File {
                    mode: 0o644,
                    data: b"hello".to_vec(),
                },
            ),
        ]);
        assert!(a.starts_with(b"070701"));
        assert_eq!(a.len() % 4, 0);
        // Header (110) + "d\0" padded to 112; then the file header.
        assert_eq!(&a[112..118], b"070701");
        assert!(a.windows(5).any(|w| w == b"hello"));
        assert!(a.windows(10).any(|w| w == b"TRAILER!!!"));
    }

    #[test]
    fn versions_sort_numerically() {
        let mut v = ["6.1.0-9-amd64", "6.1.0-56-amd64", "6.1.0-10-amd64"];
        v.sort_by(|a, b| compare_versions(a, b));
        assert_eq!(v, ["6.1.0-9-amd64", "6.1.0-10-amd64", "6.1.0-56-amd64"]);
    }

    #[test]
    fn payload_bounds_are_checked() {
        assert!(bzimage_payload(&[0u8; 100]).is_err());
        let mut img = vec![0u8; 0x1000];
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x1f1] = 1;
        img[0x24c..0x250].copy_from_slice(&0x10_0000u32.to_le_bytes());
        assert!(bzimage_payload(&img).is_err());
    }
}

//! The Linux x86 boot protocol's 64-bit entry, for HVM guests that know
//! nothing of Xen: a bzImage or a vmlinux ELF, the zero page
//! (`boot_params`) with the E820 map, the command line and the initrd.
//!
//! The vCPU starts in long mode at the kernel's 64-bit entry with RSI
//! pointing at the zero page, on identity-mapped page tables and a GDT
//! holding the boot protocol's `__BOOT_CS` (0x10) and `__BOOT_DS` (0x18).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::{BzImage, Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use xen_abi::memory::E820Entry;

use crate::LoaderError;

/// The zero page.
pub const BOOT_PARAMS_GPA: u64 = 0x7000;
/// Where the command line is copied.
pub const CMDLINE_GPA: u64 = 0x2_0000;
/// Longest command line we pass (the kernel's own limit is in the header).
pub const CMDLINE_MAX: usize = 4096;
/// The boot GDT, inside the reserved firmware window (after the identity
/// page tables, before the MP wakeup mailbox).
pub const BOOT_GDT_GPA: u64 =
    crate::acpi::AP_PAGE_TABLES_GPA + crate::acpi::AP_PAGE_TABLE_PAGES * 0x1000;
/// Selectors the boot protocol promises the 64-bit entry.
pub const BOOT_CS: u16 = 0x10;
pub const BOOT_DS: u16 = 0x18;
/// Initial stack, below the zero page in low RAM.
pub const BOOT_STACK_TOP: u64 = 0x6ff0;
/// Where a bzImage's protected-mode part goes (its `code32_start`).
const HIGH_MEMORY: u64 = 0x10_0000;

const HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const BOOT_FLAG: u16 = 0xaa55;
/// `type_of_loader`: an undefined boot loader.
const LOADER_UNDEFINED: u8 = 0xff;
/// `xloadflags` bit: the kernel has a 64-bit entry at +0x200.
const XLF_KERNEL_64: u16 = 1 << 0;
/// Offset of the 64-bit entry from the start of the protected-mode code.
const ENTRY_64_OFFSET: u64 = 0x200;
/// `loadflags` bit: protected-mode code loaded at 1 MiB.
const LOADED_HIGH: u8 = 1 << 0;
/// The boot protocol version that added `xloadflags` (2.12).
const VERSION_XLOADFLAGS: u16 = 0x020c;
/// Default `initrd_addr_max` for protocols before 2.03.
const OLD_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;
/// A vmlinux's physical alignment when the ELF says nothing else.
const VMLINUX_ALIGNMENT: u32 = 0x100_0000;

/// What the vCPU needs to enter the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinuxBoot {
    /// Physical address of the 64-bit entry point.
    pub entry: u64,
    /// Physical address of the zero page, for RSI.
    pub boot_params: u64,
    /// First byte past the kernel image.
    pub kernel_end: u64,
}

/// Which format an image is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    BzImage,
    Vmlinux,
}

/// Tell a bzImage from a vmlinux ELF by their magic numbers.
pub fn detect(image: &mut File) -> Result<ImageKind, LoaderError> {
    let mut head = [0u8; 0x206];
    image.seek(SeekFrom::Start(0))?;
    let n = read_up_to(image, &mut head)?;
    if n >= 4 && &head[..4] == b"\x7fELF" {
        return Ok(ImageKind::Vmlinux);
    }
    if n >= 0x206
        && u32::from_le_bytes([head[0x202], head[0x203], head[0x204], head[0x205]]) == HDR_MAGIC
    {
        return Ok(ImageKind::BzImage);
    }
    Err(LoaderError::BadImage(
        "neither a bzImage (no HdrS) nor an ELF vmlinux",
    ))
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match f.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

/// Everything the zero page describes besides the kernel.
pub struct LinuxBootInputs<'a> {
    pub cmdline: &'a str,
    pub initrd: Option<&'a [u8]>,
    /// The guest's memory map, for `e820_table`.
    pub memmap: &'a [E820Entry],
    /// The initrd must end below this address (end of low RAM).
    pub initrd_limit: u64,
    /// ACPI root pointer, 0 for none.
    pub rsdp: u64,
}

/// Load `image` and build its zero page, command line, initrd and boot GDT.
pub fn load(
    mem: &GuestMemoryMmap,
    image: &mut File,
    inputs: &LinuxBootInputs,
) -> Result<LinuxBoot, LoaderError> {
    let (entry, kernel_end, mut hdr) = match detect(image)? {
        ImageKind::BzImage => {
            image.seek(SeekFrom::Start(0))?;
            let result = BzImage::load(mem, None, image, Some(GuestAddress(HIGH_MEMORY)))?;
            let hdr = result
                .setup_header
                .ok_or(LoaderError::BadImage("bzImage without a setup header"))?;
            let (version, xloadflags, loadflags) = (hdr.version, hdr.xloadflags, hdr.loadflags);
            if version < VERSION_XLOADFLAGS || xloadflags & XLF_KERNEL_64 == 0 {
                return Err(LoaderError::BadImage(
                    "bzImage has no 64-bit entry (boot protocol 2.12+ with XLF_KERNEL_64)",
                ));
            }
            if loadflags & LOADED_HIGH == 0 {
                return Err(LoaderError::BadImage("zImage (not loaded high)"));
            }
            let load = result.kernel_load.0;
            (load + ENTRY_64_OFFSET, result.kernel_end, hdr)
        }
        ImageKind::Vmlinux => {
            image.seek(SeekFrom::Start(0))?;
            let result = Elf::load(mem, None, image, Some(GuestAddress(HIGH_MEMORY)))?;
            let hdr = setup_header {
                boot_flag: BOOT_FLAG,
                header: HDR_MAGIC,
                kernel_alignment: VMLINUX_ALIGNMENT,
                ..Default::default()
            };
            (result.kernel_load.0, result.kernel_end, hdr)
        }
    };

    // Command line: NUL-terminated, within the kernel's stated limit.
    let limit = match hdr.cmdline_size {
        0 => 255,
        n => (n as usize).min(CMDLINE_MAX - 1),
    };
    if inputs.cmdline.len() > limit {
        return Err(LoaderError::NoRoom("kernel command line"));
    }
    let mut cmdline = inputs.cmdline.as_bytes().to_vec();
    cmdline.push(0);
    mem.write_slice(&cmdline, GuestAddress(CMDLINE_GPA))
        .map_err(|_| LoaderError::GuestWrite(CMDLINE_GPA))?;

    hdr.type_of_loader = LOADER_UNDEFINED;
    hdr.cmd_line_ptr = CMDLINE_GPA as u32;
    hdr.cmdline_size = inputs.cmdline.len() as u32;

    if let Some(initrd) = inputs.initrd {
        let max = match hdr.initrd_addr_max {
            0 => OLD_INITRD_ADDR_MAX,
            n => n as u64,
        };
        let top = inputs.initrd_limit.min(max + 1);
        let addr = top
            .checked_sub(initrd.len() as u64)
            .map(|a| a & !0xfff)
            .filter(|&a| a >= kernel_end.max(HIGH_MEMORY))
            .ok_or(LoaderError::NoRoom("initrd"))?;
        mem.write_slice(initrd, GuestAddress(addr))
            .map_err(|_| LoaderError::GuestWrite(addr))?;
        hdr.ramdisk_image = addr as u32;
        hdr.ramdisk_size = initrd.len() as u32;
    }

    let mut params = boot_params {
        hdr,
        acpi_rsdp_addr: inputs.rsdp,
        ..Default::default()
    };
    if inputs.memmap.len() > params.e820_table.len() {
        return Err(LoaderError::NoRoom("E820 map"));
    }
    for (slot, e) in params.e820_table.iter_mut().zip(inputs.memmap) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    params.e820_entries = inputs.memmap.len() as u8;
    LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(
        &BootParams::new(&params, GuestAddress(BOOT_PARAMS_GPA)),
        mem,
    )
    .map_err(|_| LoaderError::GuestWrite(BOOT_PARAMS_GPA))?;

    mem.write_slice(&boot_gdt_bytes(), GuestAddress(BOOT_GDT_GPA))
        .map_err(|_| LoaderError::GuestWrite(BOOT_GDT_GPA))?;

    Ok(LinuxBoot {
        entry,
        boot_params: BOOT_PARAMS_GPA,
        kernel_end,
    })
}

/// Null, null, 64-bit code at 0x10, flat data at 0x18.
pub const BOOT_GDT: [u64; 4] = [0, 0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff];

fn boot_gdt_bytes() -> Vec<u8> {
    BOOT_GDT.iter().flat_map(|d| d.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn temp_image(bytes: &[u8]) -> File {
        let mut f = tempfile_in_tmp();
        f.write_all(bytes).unwrap();
        f
    }

    fn tempfile_in_tmp() -> File {
        let path = std::env::temp_dir().join(format!(
            "kxen-loader-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let _ = std::fs::remove_file(&path);
        f
    }

    fn minimal_bzimage(version: u16, xloadflags: u16) -> Vec<u8> {
        let mut img = vec![0u8; 5 * 512 + 4096];
        img[0x1f1] = 4; // setup_sects
        img[0x1fe..0x200].copy_from_slice(&BOOT_FLAG.to_le_bytes());
        img[0x202..0x206].copy_from_slice(&HDR_MAGIC.to_le_bytes());
        img[0x206..0x208].copy_from_slice(&version.to_le_bytes());
        img[0x211] = LOADED_HIGH;
        img[0x214..0x218].copy_from_slice(&(HIGH_MEMORY as u32).to_le_bytes());
        img[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
        img[0x236..0x238].copy_from_slice(&xloadflags.to_le_bytes());
        img[0x238..0x23c].copy_from_slice(&2048u32.to_le_bytes()); // cmdline_size
        img
    }

    fn guest() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap()
    }

    fn inputs<'a>(
        cmdline: &'a str,
        initrd: Option<&'a [u8]>,
        map: &'a [E820Entry],
    ) -> LinuxBootInputs<'a> {
        LinuxBootInputs {
            cmdline,
            initrd,
            memmap: map,
            initrd_limit: 16 << 20,
            rsdp: 0xe0000,
        }
    }

    fn map() -> Vec<E820Entry> {
        vec![
            E820Entry {
                addr: 0,
                size: 0x9f000,
                kind: 1,
            },
            E820Entry {
                addr: 0x100000,
                size: 15 << 20,
                kind: 1,
            },
        ]
    }

    #[test]
    fn bzimage_gets_64_bit_entry_zero_page_and_initrd() {
        let mem = guest();
        let mut f = temp_image(&minimal_bzimage(0x020f, XLF_KERNEL_64));
        let m = map();
        let boot = load(
            &mem,
            &mut f,
            &inputs("console=ttyS0", Some(&[7u8; 5000]), &m),
        )
        .unwrap();
        assert_eq!(boot.entry, HIGH_MEMORY + ENTRY_64_OFFSET);
        let params: boot_params = mem.read_obj(GuestAddress(BOOT_PARAMS_GPA)).unwrap();
        assert_eq!({ params.hdr.type_of_loader }, LOADER_UNDEFINED);
        assert_eq!({ params.hdr.cmd_line_ptr } as u64, CMDLINE_GPA);
        assert_eq!({ params.e820_entries }, 2);
        assert_eq!({ params.acpi_rsdp_addr }, 0xe0000);
        let rd = { params.hdr.ramdisk_image } as u64;
        assert_eq!({ params.hdr.ramdisk_size }, 5000);
        assert_eq!(rd & 0xfff, 0);
        assert!(rd + 5000 <= 16 << 20);
        let mut line = [0u8; 14];
        mem.read_slice(&mut line, GuestAddress(CMDLINE_GPA))
            .unwrap();
        assert_eq!(&line, b"console=ttyS0\0");
        let gdt: u64 = mem
            .read_obj(GuestAddress(BOOT_GDT_GPA + BOOT_CS as u64))
            .unwrap();
        assert_eq!(gdt, BOOT_GDT[2]);
    }

    #[test]
    fn bzimage_without_64_bit_entry_is_refused() {
        let mem = guest();
        let m = map();
        for (version, flags) in [(0x020b, XLF_KERNEL_64), (0x020f, 0)] {
            let mut f = temp_image(&minimal_bzimage(version, flags));
            assert!(matches!(
                load(&mem, &mut f, &inputs("", None, &m)),
                Err(LoaderError::BadImage(_))
            ));
        }
    }

    #[test]
    fn oversized_inputs_are_refused() {
        let mem = guest();
        let m = map();
        let long = "x".repeat(3000);
        let mut f = temp_image(&minimal_bzimage(0x020f, XLF_KERNEL_64));
        assert!(matches!(
            load(&mem, &mut f, &inputs(&long, None, &m)),
            Err(LoaderError::NoRoom(_))
        ));
        let huge = vec![0u8; 17 << 20];
        let mut f = temp_image(&minimal_bzimage(0x020f, XLF_KERNEL_64));
        assert!(matches!(
            load(&mem, &mut f, &inputs("", Some(&huge), &m)),
            Err(LoaderError::NoRoom(_))
        ));
    }

    #[test]
    fn boot_gdt_sits_between_page_tables_and_mailbox() {
        const { assert!(BOOT_GDT_GPA + 32 <= crate::acpi::MP_WAKE_MAILBOX_GPA) };
    }

    #[test]
    fn garbage_is_neither_format() {
        let mut f = temp_image(&[0x55u8; 1024]);
        assert!(matches!(detect(&mut f), Err(LoaderError::BadImage(_))));
    }
}

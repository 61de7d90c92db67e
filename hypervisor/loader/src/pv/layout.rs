//! The PV guest's initial virtual layout and the build step that writes it
//! into guest memory.
//!
//! Guest physical frames serve as Xen's machine frames with an identity P2M
//! (pfn == mfn), so a frame's machine address is its guest physical address.
//! The bootstrap mapping covers pfn 0 upward at VIRT_BASE:
//!
//! | pfns | contents |
//! |---|---|
//! | 0 .. kernel end | the kernel's segments, each at `p_paddr - PADDR_OFFSET` |
//! | then | the initrd, unless MOD_START_PFN lets it go after the mapping |
//! | then | the P2M list, one u64 MFN per pfn |
//! | then | start_info, the xenstore page, the console page |
//! | then | the bootstrap page tables, L4 first, mapped read-only |
//! | then | one page of boot stack |
//! | then | at least 512 KiB of slack; the mapping ends on a 4 MiB boundary |
//!
//! The P2M always lies inside the bootstrap mapping: the INIT_P2M note's
//! separate mapping is not built, so `first_p2m_pfn`/`nr_p2m_frames` are 0,
//! which Linux reads as "mfn_list is in the kernel mapping".

use std::ops::Range;

use vm_memory::{Bytes, GuestAddress, GuestMemory};
use xen_abi::pv as abi;
use zerocopy::IntoBytes;

use super::PvKernel;

const PAGE_SIZE: u64 = 4096;
const PAGE_SHIFT: u32 = 12;
/// Slack after the boot stack that Linux's early boot allocates from.
const SLACK_PAGES: u64 = (512 << 10) / PAGE_SIZE;
/// The bootstrap mapping ends on a 4 MiB boundary.
const MAPPING_ALIGN_PAGES: u64 = (4 << 20) / PAGE_SIZE;
/// Upper-level entries: present, writable, user (Xen sets USER on every
/// entry of a 64-bit PV guest, whose kernel runs in ring 3), accessed.
const TABLE_FLAGS: u64 = abi::PTE_PRESENT | abi::PTE_RW | abi::PTE_USER | abi::PTE_ACCESSED;
/// Leaf entries for ordinary pages; page-table pages lose PTE_RW.
const PAGE_FLAGS: u64 = TABLE_FLAGS | abi::PTE_DIRTY;
/// More guest pages than this (4 TiB) is a caller's bug or a hostile size.
const MAX_NR_PAGES: u64 = 1 << 30;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    #[error("VIRT_BASE {0:#x} is not page aligned")]
    UnalignedVirtBase(u64),
    #[error("the kernel has no loadable segments")]
    NoSegments,
    #[error("kernel segment at paddr {paddr:#x} (+{memsz:#x}) is below PADDR_OFFSET or overflows")]
    SegmentOutOfRange { paddr: u64, memsz: u64 },
    #[error("kernel segments at {first:#x} and {second:#x} overlap")]
    OverlappingSegments { first: u64, second: u64 },
    #[error("ENTRY {entry:#x} is outside the kernel image {start:#x}..{end:#x}")]
    EntryOutsideKernel { entry: u64, start: u64, end: u64 },
    #[error("HYPERCALL_PAGE {0:#x} is not a page inside the kernel image")]
    BadHypercallPage(u64),
    #[error(
        "the bootstrap mapping {start:#x}..{end:#x} is not canonical, wraps, or \
         touches the hypervisor's range"
    )]
    BadVirtualRange { start: u64, end: u64 },
    #[error("guest RAM of {have} pages is too small: the PV layout needs {needed}")]
    RamTooSmall { needed: u64, have: u64 },
    #[error("guest RAM of {0} pages is out of range")]
    BadRamSize(u64),
    #[error("initrd is {given} bytes but the layout was computed for {planned}")]
    InitrdSizeChanged { given: u64, planned: u64 },
    #[error("guest memory write failed at {0:#x}")]
    GuestWrite(u64),
    #[error("internal layout error: {0}")]
    Internal(&'static str),
}

/// One kernel segment, placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedSegment {
    /// Guest physical (and machine) address.
    pub paddr: u64,
    pub memsz: u64,
    /// The segment's bytes in the kernel's ELF image.
    pub file_range: Range<usize>,
}

/// Where everything of a new PV domain goes. Ranges are in pfns, which
/// equal mfns; the virtual address of pfn `p` is `virt_base + p * 4096`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PvLayout {
    pub virt_base: u64,
    pub nr_pages: u64,
    pub entry: u64,
    pub segments: Vec<PlacedSegment>,
    pub kernel: Range<u64>,
    /// The initrd's frames (empty when there is none).
    pub initrd: Range<u64>,
    pub initrd_len: u64,
    /// False when the initrd lies after the bootstrap mapping and
    /// start_info gives its PFN (SIF_MOD_START_PFN).
    pub initrd_mapped: bool,
    pub p2m: Range<u64>,
    pub start_info: u64,
    pub xenstore: u64,
    pub console: u64,
    /// The bootstrap page tables; the first is the L4.
    pub page_tables: Range<u64>,
    pub boot_stack: u64,
    /// Pages mapped from VIRT_BASE up: pfns `0..mapped_pages`.
    pub mapped_pages: u64,
    pub hypercall_page: Option<u64>,
}

/// Page-table pages needed to map `[start, end)` with 4 KiB pages.
fn tables_needed(start: u64, end: u64) -> u64 {
    let span = |shift: u32| ((end - 1) >> shift) - (start >> shift) + 1;
    1 + span(39) + span(30) + span(21)
}

fn pages(bytes: u64) -> Option<u64> {
    bytes.checked_add(PAGE_SIZE - 1).map(|b| b >> PAGE_SHIFT)
}

/// Whether `[start, end)` (end exclusive, non-empty) is canonical, does
/// not wrap and stays out of the hypervisor's range.
fn virtual_range_ok(start: u64, end: u64) -> bool {
    let last = end - 1;
    let lower_half = last < 0x0000_8000_0000_0000;
    let upper_half = start >= abi::HYPERVISOR_VIRT_END;
    start < end && (lower_half || upper_half)
}

impl PvLayout {
    pub fn va(&self, pfn: u64) -> u64 {
        self.virt_base + (pfn << PAGE_SHIFT)
    }

    /// Lay out a domain of `nr_pages` pages for `kernel` and an initrd of
    /// `initrd_len` bytes (0 for none).
    pub fn compute(
        kernel: &PvKernel,
        nr_pages: u64,
        initrd_len: u64,
    ) -> Result<PvLayout, LayoutError> {
        let notes = &kernel.notes;
        let virt_base = notes
            .virt_base
            .ok_or(LayoutError::Internal("no VIRT_BASE"))?;
        let entry = notes.entry.ok_or(LayoutError::Internal("no ENTRY"))?;
        if virt_base % PAGE_SIZE != 0 {
            return Err(LayoutError::UnalignedVirtBase(virt_base));
        }
        if nr_pages == 0 || nr_pages > MAX_NR_PAGES {
            return Err(LayoutError::BadRamSize(nr_pages));
        }

        let mut segments = Vec::with_capacity(kernel.segments.len());
        for seg in &kernel.segments {
            let out_of_range = LayoutError::SegmentOutOfRange {
                paddr: seg.paddr,
                memsz: seg.memsz,
            };
            let paddr = notes
                .pseudo_physical(seg.paddr)
                .ok_or(out_of_range.clone())?;
            if paddr
                .checked_add(seg.memsz)
                .is_none_or(|end| end > nr_pages << PAGE_SHIFT)
            {
                return Err(if paddr.checked_add(seg.memsz).is_none() {
                    out_of_range
                } else {
                    LayoutError::RamTooSmall {
                        needed: pages(paddr + seg.memsz).unwrap_or(u64::MAX),
                        have: nr_pages,
                    }
                });
            }
            segments.push(PlacedSegment {
                paddr,
                memsz: seg.memsz,
                file_range: seg.file_range(),
            });
        }
        segments.sort_by_key(|s| s.paddr);
        for pair in segments.windows(2) {
            if pair[0].paddr + pair[0].memsz > pair[1].paddr {
                return Err(LayoutError::OverlappingSegments {
                    first: pair[0].paddr,
                    second: pair[1].paddr,
                });
            }
        }
        let (Some(first), Some(last)) = (segments.first(), segments.last()) else {
            return Err(LayoutError::NoSegments);
        };
        // Both bounded by nr_pages above, so no overflow from here on.
        let kernel_pfns = first.paddr >> PAGE_SHIFT..pages(last.paddr + last.memsz).unwrap_or(0);

        let kernel_va = |pfn: u64| virt_base.checked_add(pfn << PAGE_SHIFT);
        let (kernel_start_va, kernel_end_va) =
            (kernel_va(kernel_pfns.start), kernel_va(kernel_pfns.end));
        let entry_ok = matches!((kernel_start_va, kernel_end_va), (Some(s), Some(e)) if (s..e).contains(&entry));
        if !entry_ok {
            return Err(LayoutError::EntryOutsideKernel {
                entry,
                start: kernel_start_va.unwrap_or(0),
                end: kernel_end_va.unwrap_or(u64::MAX),
            });
        }
        let hypercall_page = match notes.hypercall_page {
            None => None,
            Some(va) => {
                let pfn = va.wrapping_sub(virt_base) >> PAGE_SHIFT;
                if va % PAGE_SIZE != 0 || va < virt_base || !kernel_pfns.contains(&pfn) {
                    return Err(LayoutError::BadHypercallPage(va));
                }
                Some(pfn)
            }
        };

        let mut next = kernel_pfns.end;
        let mut take = |count: u64| {
            let start = next;
            next += count;
            start..next
        };
        let initrd_pages = pages(initrd_len).ok_or(LayoutError::BadRamSize(nr_pages))?;
        let initrd_mapped = !notes.mod_start_pfn;
        let mut initrd = if initrd_mapped {
            take(initrd_pages)
        } else {
            0..0
        };
        let p2m = take(pages(nr_pages * 8).unwrap_or(0));
        let start_info = take(1).start;
        let xenstore = take(1).start;
        let console = take(1).start;
        let tables_start = next;

        // The page tables map themselves, so their count depends on where
        // the mapping ends, which depends on their count: iterate to a
        // fixed point (two rounds in practice).
        let mut table_count = 1;
        let mut mapped_pages = 0;
        let mut settled = false;
        for _ in 0..8 {
            let stack = tables_start + table_count;
            mapped_pages = (stack + 1 + SLACK_PAGES).next_multiple_of(MAPPING_ALIGN_PAGES);
            let end_va = virt_base
                .checked_add(mapped_pages << PAGE_SHIFT)
                .filter(|&end| virtual_range_ok(virt_base, end))
                .ok_or(LayoutError::BadVirtualRange {
                    start: virt_base,
                    end: virt_base.wrapping_add(mapped_pages << PAGE_SHIFT),
                })?;
            let needed = tables_needed(virt_base, end_va);
            if needed == table_count {
                settled = true;
                break;
            }
            table_count = needed;
        }
        if !settled {
            return Err(LayoutError::Internal("page-table count does not settle"));
        }
        let page_tables = tables_start..tables_start + table_count;
        let boot_stack = page_tables.end;
        let mut needed = mapped_pages;
        if !initrd_mapped && initrd_pages > 0 {
            initrd = needed..needed + initrd_pages;
            needed += initrd_pages;
        }
        if needed > nr_pages {
            return Err(LayoutError::RamTooSmall {
                needed,
                have: nr_pages,
            });
        }
        let layout = PvLayout {
            virt_base,
            nr_pages,
            entry,
            segments,
            kernel: kernel_pfns,
            initrd,
            initrd_len,
            initrd_mapped,
            p2m,
            start_info,
            xenstore,
            console,
            page_tables,
            boot_stack,
            mapped_pages,
            hypercall_page,
        };
        tracing::debug!(?layout, "PV layout");
        Ok(layout)
    }
}

/// What start_info carries that the layout does not decide.
#[derive(Debug, Clone, Default)]
pub struct StartInfoParams<'a> {
    /// Machine address of the domain's shared_info page.
    pub shared_info_maddr: u64,
    pub store_evtchn: u32,
    pub console_evtchn: u32,
    /// The kernel command line; cut to 1023 bytes if longer.
    pub cmdline: &'a str,
    /// SIF_* flags to set besides SIF_MOD_START_PFN, which the layout sets.
    pub flags: u32,
}

/// The state the PV machine starts the domain's first vCPU from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PvBootState {
    /// RIP: the ENTRY note.
    pub entry: u64,
    /// RSI: start_info's virtual address.
    pub start_info_va: u64,
    /// RSP: the top of the boot stack.
    pub stack_top: u64,
    /// CR3: the machine (guest physical) address of the bootstrap L4.
    pub cr3: u64,
    /// The bootstrap page-table frames, L4 first: pinned as the guest's
    /// page tables (one L4, then its L3s, L2s and L1s in walk order).
    pub page_table_frames: Range<u64>,
    /// Frames of the xenstore and console rings, for the backends.
    pub xenstore_mfn: u64,
    pub console_mfn: u64,
    /// The frame of the HYPERCALL_PAGE note, for the PV machine to fill.
    pub hypercall_page_mfn: Option<u64>,
    /// The command line as start_info carries it (after any cut).
    pub cmdline_truncated: bool,
}

fn write<M: GuestMemory>(mem: &M, addr: u64, bytes: &[u8]) -> Result<(), LayoutError> {
    mem.write_slice(bytes, GuestAddress(addr))
        .map_err(|_| LayoutError::GuestWrite(addr))
}

fn zero<M: GuestMemory>(mem: &M, mut addr: u64, mut len: u64) -> Result<(), LayoutError> {
    static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
    while len > 0 {
        let n = len.min(ZEROS.len() as u64);
        write(mem, addr, &ZEROS[..n as usize])?;
        addr += n;
        len -= n;
    }
    Ok(())
}

/// The bootstrap page tables for `layout`, in frame order (L4 first).
fn page_tables(layout: &PvLayout) -> Result<Vec<[u64; abi::PT_ENTRIES]>, LayoutError> {
    let mut tables = vec![[0u64; abi::PT_ENTRIES]];
    let frame_of = |index: usize| layout.page_tables.start + index as u64;
    for pfn in 0..layout.mapped_pages {
        let va = layout.va(pfn);
        let mut table = 0usize;
        for shift in [39u32, 30, 21] {
            let slot = ((va >> shift) & 0x1ff) as usize;
            let entry = tables[table][slot];
            table = if entry & abi::PTE_PRESENT != 0 {
                let child = ((entry & abi::PTE_ADDR_MASK) >> PAGE_SHIFT) - layout.page_tables.start;
                child as usize
            } else {
                if tables.len() as u64 >= layout.page_tables.end - layout.page_tables.start {
                    return Err(LayoutError::Internal("more page tables than planned"));
                }
                tables.push([0; abi::PT_ENTRIES]);
                let child = tables.len() - 1;
                tables[table][slot] = (frame_of(child) << PAGE_SHIFT) | TABLE_FLAGS;
                child
            };
        }
        let flags = if layout.page_tables.contains(&pfn) {
            PAGE_FLAGS & !abi::PTE_RW
        } else {
            PAGE_FLAGS
        };
        tables[table][((va >> 12) & 0x1ff) as usize] = (pfn << PAGE_SHIFT) | flags;
    }
    if tables.len() as u64 != layout.page_tables.end - layout.page_tables.start {
        return Err(LayoutError::Internal("fewer page tables than planned"));
    }
    Ok(tables)
}

/// Write the domain's initial memory: kernel segments, initrd, P2M list,
/// start_info, the zeroed ring pages and stack, and the bootstrap page
/// tables. `initrd` must be the `initrd_len` bytes the layout was computed
/// for.
pub fn build<M: GuestMemory>(
    mem: &M,
    layout: &PvLayout,
    kernel: &PvKernel,
    initrd: &[u8],
    params: &StartInfoParams<'_>,
) -> Result<PvBootState, LayoutError> {
    if initrd.len() as u64 != layout.initrd_len {
        return Err(LayoutError::InitrdSizeChanged {
            given: initrd.len() as u64,
            planned: layout.initrd_len,
        });
    }
    let addr = |pfn: u64| pfn << PAGE_SHIFT;

    for seg in &layout.segments {
        let bytes = kernel
            .elf
            .get(seg.file_range.clone())
            .ok_or(LayoutError::Internal("segment outside the ELF image"))?;
        write(mem, seg.paddr, bytes)?;
        zero(
            mem,
            seg.paddr + bytes.len() as u64,
            seg.memsz - bytes.len() as u64,
        )?;
    }
    if !initrd.is_empty() {
        write(mem, addr(layout.initrd.start), initrd)?;
    }

    // Identity P2M, a page of entries at a time.
    let mut page = Vec::with_capacity(PAGE_SIZE as usize);
    for (index, first_pfn) in (0..layout.nr_pages).step_by(512).enumerate() {
        page.clear();
        for pfn in first_pfn..(first_pfn + 512).min(layout.nr_pages) {
            page.extend_from_slice(&pfn.to_le_bytes());
        }
        write(mem, addr(layout.p2m.start + index as u64), &page)?;
    }

    for pfn in [
        layout.start_info,
        layout.xenstore,
        layout.console,
        layout.boot_stack,
    ] {
        zero(mem, addr(pfn), PAGE_SIZE)?;
    }

    let mut info = abi::StartInfo::default();
    info.magic[..abi::START_INFO_MAGIC.len()].copy_from_slice(abi::START_INFO_MAGIC);
    info.nr_pages = layout.nr_pages;
    info.shared_info = params.shared_info_maddr;
    info.flags = params.flags;
    info.store_mfn = layout.xenstore;
    info.store_evtchn = params.store_evtchn;
    info.console_mfn = layout.console;
    info.console_evtchn = params.console_evtchn;
    info.pt_base = layout.va(layout.page_tables.start);
    info.nr_pt_frames = layout.page_tables.end - layout.page_tables.start;
    info.mfn_list = layout.va(layout.p2m.start);
    if layout.initrd_len > 0 {
        info.mod_len = layout.initrd_len;
        if layout.initrd_mapped {
            info.mod_start = layout.va(layout.initrd.start);
        } else {
            info.mod_start = layout.initrd.start;
            info.flags |= abi::SIF_MOD_START_PFN;
        }
    }
    let cmdline = params.cmdline.as_bytes();
    let kept = cmdline.len().min(abi::MAX_GUEST_CMDLINE - 1);
    info.cmd_line[..kept].copy_from_slice(&cmdline[..kept]);
    let cmdline_truncated = kept < cmdline.len();
    if cmdline_truncated {
        tracing::warn!(
            len = cmdline.len(),
            kept,
            "PV command line cut to fit start_info"
        );
    }
    write(mem, addr(layout.start_info), info.as_bytes())?;

    for (index, table) in page_tables(layout)?.iter().enumerate() {
        write(
            mem,
            addr(layout.page_tables.start + index as u64),
            table.as_bytes(),
        )?;
    }

    Ok(PvBootState {
        entry: layout.entry,
        start_info_va: layout.va(layout.start_info),
        stack_top: layout.va(layout.boot_stack + 1),
        cr3: addr(layout.page_tables.start),
        page_table_frames: layout.page_tables.clone(),
        xenstore_mfn: layout.xenstore,
        console_mfn: layout.console,
        hypercall_page_mfn: layout.hypercall_page,
        cmdline_truncated,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{LoadSegment, PvNotes};
    use super::*;
    use vm_memory::GuestMemoryMmap;
    use zerocopy::FromBytes;

    const VIRT_BASE: u64 = 0xffff_ffff_8000_0000;
    const MIB: u64 = 1 << 20;

    /// A kernel shaped like Linux's: text at 16 MiB, data after it, a
    /// per-CPU segment whose vaddr is 0 (placed by its paddr), and bss.
    fn kernel(mod_start_pfn: bool) -> PvKernel {
        let mut elf = Vec::new();
        let mut segments = Vec::new();
        for (paddr, filesz, memsz, fill) in [
            (16 * MIB, 0x3000, 0x3000, 0xaa),
            (16 * MIB + 0x3000, 0x800, 0x800, 0xbb),
            (16 * MIB + 0x4000, 0x1000, 0x5000, 0xcc),
        ] {
            let offset = elf.len() as u64;
            elf.extend(std::iter::repeat_n(fill, filesz as usize));
            let vaddr = if fill == 0xbb { 0 } else { VIRT_BASE + paddr };
            segments.push(LoadSegment {
                vaddr,
                paddr,
                offset,
                filesz,
                memsz,
            });
        }
        PvKernel {
            elf,
            segments,
            notes: PvNotes {
                guest_os: Some("linux".into()),
                virt_base: Some(VIRT_BASE),
                entry: Some(VIRT_BASE + 16 * MIB + 0x100),
                mod_start_pfn,
                ..PvNotes::default()
            },
        }
    }

    fn memory(pages: u64) -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), (pages << PAGE_SHIFT) as usize)]).unwrap()
    }

    fn read_u64(mem: &GuestMemoryMmap<()>, addr: u64) -> u64 {
        mem.read_obj(GuestAddress(addr)).unwrap()
    }

    /// Walk the guest's page tables from `cr3` as the MMU would: the mapped
    /// frame and the AND of every level's flags (NX is not used here).
    fn walk(mem: &GuestMemoryMmap<()>, cr3: u64, va: u64) -> Option<(u64, u64)> {
        let mut table = cr3;
        let mut flags = !0u64;
        for shift in [39u32, 30, 21, 12] {
            let entry = read_u64(mem, table + ((va >> shift) & 0x1ff) * 8);
            if entry & abi::PTE_PRESENT == 0 {
                return None;
            }
            assert_eq!(
                entry & abi::PTE_PSE,
                0,
                "no large pages in the bootstrap tables"
            );
            flags &= entry & 0xfff;
            table = entry & abi::PTE_ADDR_MASK;
        }
        Some((table >> PAGE_SHIFT, flags))
    }

    fn start_info(mem: &GuestMemoryMmap<()>, pfn: u64) -> abi::StartInfo {
        let mut bytes = vec![0u8; std::mem::size_of::<abi::StartInfo>()];
        mem.read_slice(&mut bytes, GuestAddress(pfn << PAGE_SHIFT))
            .unwrap();
        abi::StartInfo::read_from_bytes(&bytes).unwrap()
    }

    #[test]
    fn linux_shaped_build() {
        let kernel = kernel(false);
        let nr_pages = 64 * MIB / PAGE_SIZE;
        let initrd: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let layout = PvLayout::compute(&kernel, nr_pages, initrd.len() as u64).unwrap();
        let mem = memory(nr_pages);
        let params = StartInfoParams {
            shared_info_maddr: 0xfee0_0000,
            store_evtchn: 1,
            console_evtchn: 2,
            cmdline: "console=hvc0 root=/dev/xvda1",
            flags: 0,
        };
        let boot = build(&mem, &layout, &kernel, &initrd, &params).unwrap();

        // The layout follows the order of classic-pv.md, with no gaps.
        assert_eq!(layout.kernel, ((16 * MIB) >> 12)..(16 * MIB + 0x9000) >> 12);
        assert_eq!(layout.initrd.start, layout.kernel.end);
        assert_eq!(layout.p2m.start, layout.initrd.end);
        assert_eq!(layout.p2m.end - layout.p2m.start, nr_pages * 8 / PAGE_SIZE);
        assert_eq!(layout.start_info, layout.p2m.end);
        assert_eq!(layout.xenstore, layout.start_info + 1);
        assert_eq!(layout.console, layout.xenstore + 1);
        assert_eq!(layout.page_tables.start, layout.console + 1);
        assert_eq!(layout.boot_stack, layout.page_tables.end);
        assert!(layout.mapped_pages >= layout.boot_stack + 1 + SLACK_PAGES);
        assert_eq!(layout.mapped_pages % MAPPING_ALIGN_PAGES, 0);
        // One L4, one L3, one L2 and an L1 per 2 MiB mapped.
        assert_eq!(
            layout.page_tables.end - layout.page_tables.start,
            3 + layout.mapped_pages / 512
        );

        // Registers.
        assert_eq!(boot.entry, VIRT_BASE + 16 * MIB + 0x100);
        assert_eq!(boot.start_info_va, layout.va(layout.start_info));
        assert_eq!(boot.stack_top, layout.va(layout.boot_stack + 1));
        assert_eq!(boot.cr3, layout.page_tables.start << 12);
        assert_eq!(boot.page_table_frames, layout.page_tables);
        assert!(!boot.cmdline_truncated);

        // Every page of the range maps to its own frame, present, user and
        // writable, except the page tables, which are read-only.
        for pfn in 0..layout.mapped_pages {
            let (frame, flags) = walk(&mem, boot.cr3, layout.va(pfn))
                .unwrap_or_else(|| panic!("pfn {pfn:#x} not mapped"));
            assert_eq!(frame, pfn);
            assert_ne!(flags & abi::PTE_USER, 0);
            let writable = flags & abi::PTE_RW != 0;
            assert_eq!(writable, !layout.page_tables.contains(&pfn), "pfn {pfn:#x}");
        }
        // And nothing past it, nor below VIRT_BASE.
        assert_eq!(walk(&mem, boot.cr3, layout.va(layout.mapped_pages)), None);
        assert_eq!(walk(&mem, boot.cr3, VIRT_BASE - PAGE_SIZE), None);
        // The L4 leaves the hypervisor's slots empty.
        for slot in abi::HYPERVISOR_L4_SLOTS {
            assert_eq!(read_u64(&mem, boot.cr3 + slot as u64 * 8), 0);
        }

        // start_info.
        let info = start_info(&mem, layout.start_info);
        assert_eq!(&info.magic[..14], b"xen-3.0-x86_64");
        assert!(info.magic[14..].iter().all(|&b| b == 0));
        assert_eq!(info.nr_pages, nr_pages);
        assert_eq!(info.shared_info, 0xfee0_0000);
        assert_eq!(info.flags, 0);
        assert_eq!((info.store_mfn, info.store_evtchn), (layout.xenstore, 1));
        assert_eq!((info.console_mfn, info.console_evtchn), (layout.console, 2));
        assert_eq!(info.pt_base, layout.va(layout.page_tables.start));
        assert_eq!(
            info.nr_pt_frames,
            layout.page_tables.end - layout.page_tables.start
        );
        assert_eq!(info.mfn_list, layout.va(layout.p2m.start));
        assert_eq!(info.mod_start, layout.va(layout.initrd.start));
        assert_eq!(info.mod_len, initrd.len() as u64);
        assert_eq!((info.first_p2m_pfn, info.nr_p2m_frames), (0, 0));
        let cmdline = b"console=hvc0 root=/dev/xvda1";
        assert_eq!(&info.cmd_line[..cmdline.len()], cmdline);
        assert_eq!(info.cmd_line[cmdline.len()], 0);

        // Identity P2M.
        for pfn in (0..nr_pages).step_by(97).chain([nr_pages - 1]) {
            assert_eq!(read_u64(&mem, (layout.p2m.start << 12) + pfn * 8), pfn);
        }
        // Kernel bytes at their paddr (the vaddr-0 segment included), bss
        // zeroed, and the initrd.
        let byte = |addr: u64| -> u8 { mem.read_obj(GuestAddress(addr)).unwrap() };
        assert_eq!(byte(16 * MIB), 0xaa);
        assert_eq!(byte(16 * MIB + 0x3000), 0xbb);
        assert_eq!(byte(16 * MIB + 0x4fff), 0xcc);
        assert_eq!(byte(16 * MIB + 0x5000), 0);
        assert_eq!(byte(16 * MIB + 0x8fff), 0);
        let mut back = vec![0u8; initrd.len()];
        mem.read_slice(&mut back, GuestAddress(layout.initrd.start << 12))
            .unwrap();
        assert_eq!(back, initrd);
    }

    #[test]
    fn mod_start_pfn_puts_the_initrd_after_the_mapping() {
        let kernel = kernel(true);
        let nr_pages = 64 * MIB / PAGE_SIZE;
        let initrd = vec![0x5a; 3 * MIB as usize + 1];
        let layout = PvLayout::compute(&kernel, nr_pages, initrd.len() as u64).unwrap();
        assert!(!layout.initrd_mapped);
        assert_eq!(layout.initrd.start, layout.mapped_pages);
        assert_eq!(layout.initrd.end - layout.initrd.start, 769);
        assert_eq!(layout.p2m.start, layout.kernel.end);
        let mem = memory(nr_pages);
        let boot = build(&mem, &layout, &kernel, &initrd, &StartInfoParams::default()).unwrap();
        let info = start_info(&mem, layout.start_info);
        assert_eq!(info.flags, abi::SIF_MOD_START_PFN);
        assert_eq!(info.mod_start, layout.initrd.start);
        assert_eq!(info.mod_len, initrd.len() as u64);
        assert_eq!(walk(&mem, boot.cr3, layout.va(layout.initrd.start)), None);
        let last: u8 = mem
            .read_obj(GuestAddress(
                (layout.initrd.start << 12) + initrd.len() as u64 - 1,
            ))
            .unwrap();
        assert_eq!(last, 0x5a);
    }

    #[test]
    fn long_cmdline_is_cut_to_fit() {
        let kernel = kernel(false);
        let nr_pages = 32 * MIB / PAGE_SIZE;
        let layout = PvLayout::compute(&kernel, nr_pages, 0).unwrap();
        let mem = memory(nr_pages);
        let long = "x".repeat(5000);
        let params = StartInfoParams {
            cmdline: &long,
            ..StartInfoParams::default()
        };
        let boot = build(&mem, &layout, &kernel, &[], &params).unwrap();
        assert!(boot.cmdline_truncated);
        let info = start_info(&mem, layout.start_info);
        assert!(info.cmd_line[..1023].iter().all(|&b| b == b'x'));
        assert_eq!(info.cmd_line[1023], 0);
        assert_eq!((info.mod_start, info.mod_len), (0, 0));
        // The initrd must be the one the layout planned for.
        assert_eq!(
            build(&mem, &layout, &kernel, &[1], &params),
            Err(LayoutError::InitrdSizeChanged {
                given: 1,
                planned: 0
            })
        );
    }

    #[test]
    fn bad_inputs_are_errors() {
        let nr_pages = 64 * MIB / PAGE_SIZE;
        // RAM too small for the kernel, and for the layout after it.
        assert!(matches!(
            PvLayout::compute(&kernel(false), 16 * MIB / PAGE_SIZE, 0),
            Err(LayoutError::RamTooSmall { .. })
        ));
        assert!(matches!(
            PvLayout::compute(&kernel(false), (16 * MIB + 0x10000) / PAGE_SIZE, 0),
            Err(LayoutError::RamTooSmall { .. })
        ));
        assert!(matches!(
            PvLayout::compute(&kernel(false), nr_pages, 60 * MIB),
            Err(LayoutError::RamTooSmall { .. })
        ));
        assert_eq!(
            PvLayout::compute(&kernel(false), 0, 0),
            Err(LayoutError::BadRamSize(0))
        );
        // Overlapping segments.
        let mut k = kernel(false);
        k.segments[1].paddr -= 0x10;
        assert!(matches!(
            PvLayout::compute(&k, nr_pages, 0),
            Err(LayoutError::OverlappingSegments { .. })
        ));
        // A segment below PADDR_OFFSET, and one whose end overflows.
        let mut k = kernel(false);
        k.notes.paddr_offset = Some(32 * MIB);
        assert!(matches!(
            PvLayout::compute(&k, nr_pages, 0),
            Err(LayoutError::SegmentOutOfRange { .. })
        ));
        let mut k = kernel(false);
        k.segments[2].memsz = u64::MAX;
        assert!(matches!(
            PvLayout::compute(&k, nr_pages, 0),
            Err(LayoutError::SegmentOutOfRange { .. })
        ));
        // ENTRY outside the image.
        let mut k = kernel(false);
        k.notes.entry = Some(VIRT_BASE);
        assert!(matches!(
            PvLayout::compute(&k, nr_pages, 0),
            Err(LayoutError::EntryOutsideKernel { .. })
        ));
        // No segments at all.
        let mut k = kernel(false);
        k.segments.clear();
        assert_eq!(
            PvLayout::compute(&k, nr_pages, 0),
            Err(LayoutError::NoSegments)
        );
        // VIRT_BASE unaligned, in the hypervisor's range, or so high the
        // mapping wraps.
        let mut k = kernel(false);
        k.notes.virt_base = Some(VIRT_BASE + 1);
        assert!(matches!(
            PvLayout::compute(&k, nr_pages, 0),
            Err(LayoutError::UnalignedVirtBase(_))
        ));
        for base in [
            abi::HYPERVISOR_VIRT_START,
            0xffff_ffff_ff00_0000,
            0x0000_7fff_ff00_0000,
        ] {
            let mut k = kernel(false);
            k.notes.virt_base = Some(base);
            k.notes.entry = Some(base.wrapping_add(16 * MIB));
            assert!(
                matches!(
                    PvLayout::compute(&k, nr_pages, 0),
                    Err(LayoutError::BadVirtualRange { .. })
                        | Err(LayoutError::EntryOutsideKernel { .. })
                ),
                "{base:#x}"
            );
        }
        // A hypercall page outside the kernel image or not page aligned.
        for va in [VIRT_BASE, VIRT_BASE + 16 * MIB + 8] {
            let mut k = kernel(false);
            k.notes.hypercall_page = Some(va);
            assert_eq!(
                PvLayout::compute(&k, nr_pages, 0),
                Err(LayoutError::BadHypercallPage(va))
            );
        }
        let mut k = kernel(false);
        k.notes.hypercall_page = Some(VIRT_BASE + 16 * MIB + 0x1000);
        let layout = PvLayout::compute(&k, nr_pages, 0).unwrap();
        assert_eq!(layout.hypercall_page, Some(((16 * MIB) >> 12) + 1));
    }

    #[test]
    fn page_table_count_reaches_a_fixed_point_across_boundaries() {
        // Sizes that put the mapping end near 2 MiB / 1 GiB multiples.
        for mib in [20, 64, 1024, 1100, 4096] {
            let nr_pages = mib * MIB / PAGE_SIZE;
            let layout = PvLayout::compute(&kernel(false), nr_pages, 0).unwrap();
            let end = layout.va(layout.mapped_pages);
            assert_eq!(
                layout.page_tables.end - layout.page_tables.start,
                tables_needed(VIRT_BASE, end),
                "{mib} MiB"
            );
            assert!(page_tables(&layout).is_ok(), "{mib} MiB");
        }
    }
}

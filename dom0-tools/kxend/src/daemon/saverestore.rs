//! `kxl save` and `kxl restore` (issue 17): a paused domain written to a
//! file as xl writes one, and a domain made again from such a file.
//!
//! The file is xl's: its 32-byte header "Xen saved domain, xl format\n
//! \0 \r", byte-order marker 0x01020304, mandatory flags JSON | STREAMv2,
//! no optional flags, the length of the config, and the config (kxen's
//! parsed xl.cfg as JSON, where xl puts libxl's domain config), then
//! libxl's migration stream: LIBXC_CONTEXT; libxc's image and domain
//! headers (x86 HVM, which PVH is to Xen), STATIC_DATA_END, PAGE_DATA of
//! every RAM page and special page, X86_TSC_INFO, HVM_PARAMS, HVM_CONTEXT,
//! END; for a domain that was paused rather than suspended, libxl's
//! EMULATOR_CONTEXT (id 0, index 1) holding its part of xenstore (nodes,
//! permissions, watches; kxen-xenstore's `image` module); EMULATOR_CONTEXT
//! (id 0, index 0) holding kxen's Xen state; END. Debian's
//! `verify-stream-v2 --format xl` accepts it.
//!
//! A restore reads the file as hostile input: the header and config are
//! bounded, every record goes through kxen-stream's capped reader, every
//! page must land inside the new domain's memfd regions, and the VMM
//! checks its own state before it changes anything.

use std::os::unix::fs::FileExt;

use nix::fcntl::{fallocate, FallocateFlags};

use kxen_stream::libxc::{
    DomainHeader, GuestType, HvmParamEntry, LibxcRecord, Page, PageType, PvVcpuKind, TscInfo,
    X86PvInfo,
};
use kxen_stream::libxl::{EmulatorId, LibxlReader, LibxlRecord, LibxlWriter};
use kxen_stream::Limits;
use kxen_toolstack::savefile;
use kxen_vmm_api::image::{self, VmmImage};
use kxen_vmm_api::{MemfdRegion, VmmClient};
use kxen_xenstore::image::DomainImage;
use kxen_xenstore::Xenstored;

use super::lifecycle::Restored;
use super::suspend::Stopped;
use super::*;

const PAGE: usize = 4096;
/// Pages per PAGE_DATA record (libxc's batch).
const BATCH: usize = 1024;

pub(super) fn io_error(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

/// Guest page `pfn` as a PAGE_DATA entry: a page table of a PV domain
/// goes with its type (`table`) and contents; any other all-zero page as
/// XALLOC (allocate the frame, no contents), which costs the stream 8
/// bytes instead of 4 KiB; a receiver gives it a zero page. Most of an
/// idle guest's memory is zero.
pub(super) fn guest_page(pfn: u64, contents: &[u8; PAGE], table: Option<PageType>) -> Page<'_> {
    if let Some(page_type) = table {
        return Page {
            pfn,
            page_type,
            contents: Some(contents),
        };
    }
    if contents.iter().all(|&b| b == 0) {
        Page {
            pfn,
            page_type: PageType::XAlloc,
            contents: None,
        }
    } else {
        Page {
            pfn,
            page_type: PageType::NoTab,
            contents: Some(contents),
        }
    }
}

/// A classic PV domain's page tables by frame, as PAGE_DATA types (the
/// VMM's `pv-page-types`); empty for other domains.
#[derive(Debug, Default, Clone)]
pub(super) struct PageTypes(std::collections::HashMap<u64, PageType>);

impl PageTypes {
    /// From PAGE_DATA pfn entries; an entry whose type is not a table's
    /// is ignored.
    pub(super) fn from_entries(entries: &[u64]) -> Self {
        PageTypes(
            entries
                .iter()
                .filter_map(|&e| {
                    let t = PageType::from_bits((e >> 60) as u8)?;
                    is_table(t).then_some((e & ((1 << 52) - 1), t))
                })
                .collect(),
        )
    }

    /// The domain's tables now (nothing for a domain that is not PV).
    pub(super) fn of_domain(link: &mut VmmClient, pv: bool) -> Result<Self, String> {
        if !pv {
            return Ok(PageTypes::default());
        }
        let entries = link
            .pv_page_types()
            .map_err(|e| format!("the PV page tables: {e}"))?;
        Ok(PageTypes::from_entries(&entries))
    }

    pub(super) fn of(&self, pfn: u64) -> Option<PageType> {
        self.0.get(&pfn).copied()
    }

    /// The frames whose type differs between `self` and `other`.
    pub(super) fn differing(&self, other: &PageTypes) -> Vec<u64> {
        let mut out: Vec<u64> = self
            .0
            .iter()
            .filter(|(pfn, t)| other.of(**pfn) != Some(**t))
            .map(|(pfn, _)| *pfn)
            .chain(
                other
                    .0
                    .keys()
                    .filter(|pfn| self.of(**pfn).is_none())
                    .copied(),
            )
            .collect();
        out.sort_unstable();
        out
    }

    /// As PAGE_DATA pfn entries, in frame order.
    pub(super) fn entries(&self) -> Vec<u64> {
        let mut out: Vec<u64> = self
            .0
            .iter()
            .map(|(pfn, t)| pfn | u64::from(*t as u8) << 60)
            .collect();
        out.sort_unstable_by_key(|e| e & ((1 << 60) - 1));
        out
    }

    pub(super) fn set(&mut self, pfn: u64, t: Option<PageType>) {
        match t {
            Some(t) => {
                self.0.insert(pfn, t);
            }
            None => {
                self.0.remove(&pfn);
            }
        }
    }
}

/// A PV vCPU's basic and extended records as a stream gives them.
type PvVcpuParts = (Option<Vec<u8>>, Option<Vec<u8>>);

/// Whether the PV platform record was read into `vmm` already.
fn context_seen(vmm: &VmmImage) -> bool {
    !vmm.hvm_context.is_empty()
}

/// Whether a PAGE_DATA type is a page table's (pinned or not).
pub(super) fn is_table(t: PageType) -> bool {
    use PageType::*;
    matches!(
        t,
        L1Tab | L2Tab | L3Tab | L4Tab | L1TabPinned | L2TabPinned | L3TabPinned | L4TabPinned
    )
}

/// Every guest page Dom0 can see, with its contents, batch by batch.
fn write_memory<W: Write>(
    libxc: &mut kxen_stream::libxc::LibxcWriter<W>,
    memfd: &File,
    regions: &[MemfdRegion],
    types: &PageTypes,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<u64, String> {
    let pages_total: u64 = regions.iter().map(|r| r.len / PAGE as u64).sum();
    let mut buf = vec![0u8; BATCH * PAGE];
    let mut pages_written = 0;
    for r in regions {
        let pages = r.len / PAGE as u64;
        let mut done = 0;
        while done < pages {
            let count = (pages - done).min(BATCH as u64) as usize;
            let bytes = &mut buf[..count * PAGE];
            memfd
                .read_exact_at(bytes, r.offset + done * PAGE as u64)
                .map_err(|e| io_error("reading guest memory", e))?;
            let chunks: Vec<&[u8; PAGE]> = bytes
                .chunks_exact(PAGE)
                .map(|c| c.try_into().unwrap_or(&[0; PAGE]))
                .collect();
            let batch: Vec<Page<'_>> = chunks
                .iter()
                .enumerate()
                .map(|(i, contents)| {
                    let pfn = (r.gpa >> 12) + done + i as u64;
                    guest_page(pfn, contents, types.of(pfn))
                })
                .collect();
            libxc
                .write_pages(&batch)
                .map_err(|e| io_error("writing pages", e))?;
            done += count as u64;
            pages_written += count as u64;
            progress(pages_written, pages_total);
        }
    }
    Ok(pages_written)
}

/// Put guest page `pfn` of an incoming stream into the new domain's
/// memfd: `contents`, or a zero page for `None` (and for all-zero
/// contents). A zero page is a hole, which reads as zeroes and costs no
/// memory (and keeps a later live migration's final check short); it is
/// punched rather than skipped, since an earlier record may have filled
/// the page. A frame outside the domain's memory is refused.
fn store_page(
    memfd: &File,
    regions: &[MemfdRegion],
    pfn: u64,
    contents: Option<&[u8; PAGE]>,
) -> Result<(), String> {
    let offset = pfn
        .checked_mul(PAGE as u64)
        .and_then(|gpa| regions.iter().find_map(|r| r.offset_of_page(gpa)))
        .ok_or_else(|| format!("bad image: page {pfn:#x} is outside the domain's memory"))?;
    match contents {
        Some(page) if page.iter().any(|&b| b != 0) => memfd
            .write_all_at(page, offset)
            .map_err(|e| io_error("writing guest memory", e)),
        _ => fallocate(
            memfd,
            FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
            offset as i64,
            PAGE as i64,
        )
        .map(|_| ())
        .map_err(|e| io_error("clearing a guest page", e)),
    }
}

impl Daemon {
    /// `xl save`: write `domain` to `path`; then destroy it, or with
    /// `checkpoint` let it run on, or with `leave_paused` keep it paused.
    pub(super) fn save(
        self: &Arc<Self>,
        domain: &str,
        path: &str,
        checkpoint: bool,
        leave_paused: bool,
        config: Option<DomainConfig>,
    ) -> Reply {
        let Some(id) = self.resolve(domain) else {
            return Reply::unknown_domain(domain);
        };
        let Some(d) = self.live(id) else {
            return Reply::unknown_domain(domain);
        };
        let was_paused = d.paused.load(std::sync::atomic::Ordering::SeqCst);
        // A guest that offers Xen's suspend protocol suspends itself;
        // any other is paused.
        let stopped = match self.stop_for_image(&d) {
            Ok(stopped) => stopped,
            Err(e) => return Reply::error(format!("Failed to save domain {id}: {e}")),
        };
        // The backends still serve the paused domain's rings: a read they
        // complete after its page was written to the image would be lost.
        let devices = self.devices_of(id);
        let config = config.as_ref().unwrap_or(&d.record.config);
        let written = devices
            .quiesce(std::time::Instant::now() + super::precopy::QUIESCE_LIMIT)
            .map_err(|e| format!("quiescing the backends: {e}"))
            .and_then(|()| self.write_image(&d, config, path));
        let result = match written {
            Ok(pages) => {
                self.log(&format!(
                    "domain {id} ({}) saved to {path}: {pages} pages{}",
                    d.record.name,
                    if stopped == Stopped::Suspended {
                        ", suspended by the guest"
                    } else {
                        ""
                    }
                ));
                Ok(())
            }
            Err(e) => {
                let _ = std::fs::remove_file(path);
                Err(e)
            }
        };
        match result {
            Ok(()) if !checkpoint && !leave_paused => {
                if let Err(e) = d.destroy() {
                    return Reply::error(format!("saved, but destroying domain {id}: {e}"));
                }
                self.wait_gone(id, Duration::from_secs(10));
                Reply::ok()
            }
            Ok(()) => {
                devices.resume();
                match self.resume_after_image(&d, stopped, leave_paused || was_paused) {
                    Ok(()) => Reply::ok(),
                    Err(e) => Reply::error(format!("saved, but resuming domain {id}: {e}")),
                }
            }
            Err(e) => {
                // A failed save leaves the domain as it was.
                devices.resume();
                if let Err(resume) = self.resume_after_image(&d, stopped, was_paused) {
                    self.log(&format!(
                        "domain {id}: resuming after a failed save: {resume}"
                    ));
                }
                Reply::error(format!("Failed to save domain {id}: {e}"))
            }
        }
    }

    /// Write `d` to `path` as xl's savefile, with `config` in its header.
    fn write_image(&self, d: &Domain, config: &DomainConfig, path: &str) -> Result<u64, String> {
        let file = File::create(path).map_err(|e| io_error(path, preflight::describe_io(&e)))?;
        let out = std::io::BufWriter::new(file);
        let (pages, mut out) =
            write_stream(d, config, &self.store.xenstored(), out, &mut |_, _| {})
                .map_err(|e| format!("{path}: {e}"))?;
        out.flush().map_err(|e| io_error(path, e))?;
        out.get_ref().sync_all().map_err(|e| io_error(path, e))?;
        Ok(pages)
    }

    /// `xl restore [CFG] FILE`: make a domain from the file at `path`,
    /// with `config` in place of the one stored in the file if given (as
    /// in xl, the image must still fit it: its memory and vCPUs).
    pub(super) fn restore(
        self: &Arc<Self>,
        path: &str,
        paused: bool,
        config: Option<DomainConfig>,
    ) -> Reply {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) => {
                return Reply::error(format!(
                    "cannot open restore file {path}: {}",
                    preflight::describe_io(&e)
                ))
            }
        };
        let mut input = std::io::BufReader::new(file);
        let config = match savefile::read_header(&mut input) {
            Ok(stored) => config.unwrap_or(stored),
            Err(e) => return Reply::error(format!("{path}: {e}")),
        };
        let name = config.name.clone();
        // The stream is read once, by the loader, while the new VMM waits.
        let input = Mutex::new(Some(input));
        let load = |control: &Path| -> Result<Restored, String> {
            let input = input
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
                .ok_or("the image was already read")?;
            load_image(input, control).map_err(|e| format!("{path}: {e}"))
        };
        match self.create_with(config, paused, Some(&load)) {
            Ok(domid) => {
                self.log(&format!("domain {domid} ({name}) restored from {path}"));
                Reply {
                    domid: Some(domid),
                    ..Reply::ok()
                }
            }
            Err(e) => Reply::error(format!("domain {name}: {e}")),
        }
    }
}

/// How the page data of a stream is written: gets the libxc writer, the
/// VMM link, the guest memfd and its regions; returns the pages written.
/// The domain must be paused when it returns (the state is read next).
pub(super) type MemorySender<'a, W> = dyn FnMut(
        &mut kxen_stream::libxc::LibxcWriter<W>,
        &mut VmmClient,
        &kxen_vmm_api::client::GuestMemfd,
    ) -> Result<u64, String>
    + 'a;

/// Write the paused domain `d` to `out` as xl's savefile: the header with
/// `config`, then libxl's stream. `progress` hears (pages sent, pages in
/// all) after each batch. Returns the pages written and `out`.
pub(super) fn write_stream<W: Write>(
    d: &Domain,
    config: &DomainConfig,
    store: &Xenstored,
    out: W,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(u64, W), String> {
    let pv = config.domain_type == kxen_toolstack::config::DomainType::Pv;
    write_stream_with(d, config, store, out, &mut |libxc, link, guest| {
        let memfd = guest
            .memfd
            .try_clone()
            .map_err(|e| io_error("guest memfd", e))?;
        // The domain is paused: its page tables stay as they are now.
        let types = PageTypes::of_domain(link, pv)?;
        write_memory(libxc, &File::from(memfd), &guest.regions, &types, progress)
    })
}

/// [`write_stream`] with the page data written by `memory`, which may
/// send it while the domain runs (a live migration's pre-copy) as long as
/// the domain is paused when it returns. A domain that did not suspend
/// itself (it was paused) takes its part of `store` along: see
/// [`XENSTORE_INDEX`].
pub(super) fn write_stream_with<W: Write>(
    d: &Domain,
    config: &DomainConfig,
    store: &Xenstored,
    mut out: W,
    memory: &mut MemorySender<'_, W>,
) -> Result<(u64, W), String> {
    let mut link = VmmClient::connect(&d.record.control).map_err(|e| e.to_string())?;
    let guest = link.memfd().map_err(|e| e.to_string())?;
    savefile::write_header(&mut out, config).map_err(|e| e.to_string())?;
    let stream = |e: kxen_stream::WriteError| io_error("writing the stream", e);
    let pv = config.domain_type == kxen_toolstack::config::DomainType::Pv;
    let libxl = LibxlWriter::new(out).map_err(stream)?;
    let mut libxc = libxl
        .begin_libxc(&DomainHeader {
            guest_type: if pv {
                GuestType::X86Pv
            } else {
                GuestType::X86Hvm
            },
            xen_major: 4,
            xen_minor: 17,
        })
        .map_err(stream)?;
    if pv {
        libxc
            .write_x86_pv_info(&X86PvInfo {
                guest_width: 8,
                pt_levels: 4,
            })
            .map_err(stream)?;
    }
    libxc.write_static_data_end().map_err(stream)?;
    if pv {
        // kxen's P2M is the identity: the record gives the pfn range and
        // no frames of a guest p2m to rebuild it from.
        let max_pfn = frames_end(&guest.regions);
        let end = u32::try_from(max_pfn.saturating_sub(1)).unwrap_or(u32::MAX);
        libxc.write_x86_pv_p2m_frames(0, end, &[]).map_err(stream)?;
    }
    let pages = memory(&mut libxc, &mut link, &guest)?;
    // The domain is paused from here: its state matches the pages sent.
    // A guest that suspended itself reconnects to the store on resume, as
    // on Xen; one that was paused never learns it moved, so its nodes and
    // watches go with it.
    let suspended = d
        .info()
        .map_err(|e| format!("domain {}: {e}", d.record.domid))?
        .suspended;
    let xenstore = (!suspended).then(|| store.export_domain(d.record.domid).encode());
    let state = link.save_state().map_err(|e| e.to_string())?;
    let vmm = image::parse(&state).map_err(|e| e.to_string())?;
    libxc
        .write_tsc_info(&TscInfo {
            mode: vmm.tsc.mode,
            khz: vmm.tsc.khz,
            nsec: vmm.tsc.nsec,
            incarnation: vmm.tsc.incarnation,
        })
        .map_err(stream)?;
    if vmm.is_pv() != pv {
        return Err(format!(
            "the VMM's state is {}a PV domain's",
            if pv { "not " } else { "" }
        ));
    }
    let platform = if pv {
        // A PV domain's vCPUs in Xen's PV records; the KVM vCPU and
        // irqchip state under them is kxen's own (EMULATOR_CONTEXT).
        for v in &vmm.pv_vcpus {
            libxc
                .write_x86_pv_vcpu(PvVcpuKind::Basic, v.vcpu, &v.basic)
                .map_err(stream)?;
            libxc
                .write_x86_pv_vcpu(PvVcpuKind::Extended, v.vcpu, &v.extended)
                .map_err(stream)?;
        }
        Some(image::encode(&VmmImage {
            hvm_context: vmm.hvm_context.clone(),
            hvm_params: vmm.hvm_params.clone(),
            tsc: vmm.tsc,
            ..VmmImage::default()
        }))
    } else {
        let params: Vec<HvmParamEntry> = vmm
            .hvm_params
            .iter()
            .map(|&(index, value)| HvmParamEntry { index, value })
            .collect();
        libxc.write_hvm_params(&params).map_err(stream)?;
        libxc.write_hvm_context(&vmm.hvm_context).map_err(stream)?;
        None
    };
    let mut libxl = libxc.finish_into_libxl().map_err(stream)?;
    if let Some(platform) = &platform {
        libxl
            .write_emulator_context(EmulatorId::UNKNOWN, PV_PLATFORM_INDEX, platform)
            .map_err(stream)?;
    }
    if let Some(xenstore) = &xenstore {
        libxl
            .write_emulator_context(EmulatorId::UNKNOWN, XENSTORE_INDEX, xenstore)
            .map_err(stream)?;
    }
    // The VMM's state goes last, where its checks catch a damaged tail.
    libxl
        .write_emulator_context(EmulatorId::UNKNOWN, VMM_STATE_INDEX, &vmm.xen_state)
        .map_err(stream)?;
    let out = libxl.finish().map_err(stream)?;
    Ok((pages, out))
}

/// The frame after the last one the memfd regions cover.
fn frames_end(regions: &[MemfdRegion]) -> u64 {
    regions
        .iter()
        .filter_map(|r| r.gpa_end())
        .max()
        .unwrap_or(0)
        >> 12
}

/// How long a new VMM's control socket may take to accept.
const CONNECT_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The EMULATOR_CONTEXT record (emulator id 0) with kxen-vmm's Xen state.
const VMM_STATE_INDEX: u32 = 0;
/// The EMULATOR_CONTEXT record (emulator id 0) with the domain's part of
/// the store (kxen-xenstore's [`DomainImage`]) of a domain saved
/// transparently. libxl's EMULATOR_XENSTORE_DATA record cannot carry it:
/// its values are NUL-terminated strings, xenstore's may be any bytes, and
/// it has no room for permissions or watches.
const XENSTORE_INDEX: u32 = 1;
/// The EMULATOR_CONTEXT record (emulator id 0) with a classic PV
/// domain's KVM vCPU and platform state (in Xen's HVM save format) and
/// its params, as a VMM image container without the Xen state. Xen's PV
/// stream has no HVM_CONTEXT or HVM_PARAMS; kxen's PV vCPUs run on KVM,
/// which has this state beyond the PV records.
const PV_PLATFORM_INDEX: u32 = 2;

/// Read the libxl stream from `input` into the new VMM behind `control`.
/// Returns the domain's part of the store if the image carries it (a
/// domain saved transparently), for the caller to bring back once the new
/// domain is introduced, or that the guest had suspended itself.
pub(super) fn load_image(input: impl Read, control: &Path) -> Result<Restored, String> {
    // The socket's file appears at bind, a moment before the VMM listens
    // (CI once got ECONNREFUSED here): retry the connect, within a limit.
    let mut link = VmmClient::connect_within(control, CONNECT_LIMIT).map_err(|e| e.to_string())?;
    let guest = link.memfd().map_err(|e| e.to_string())?;
    let memfd = File::from(guest.memfd);
    let max_pfn = frames_end(&guest.regions);
    let bad = |e: kxen_stream::ReadError| format!("bad image: {e}");
    let mut libxl = LibxlReader::new(input, Limits::new(max_pfn)).map_err(bad)?;
    match libxl.next_record().map_err(bad)? {
        LibxlRecord::LibxcContext => {}
        other => return Err(format!("bad image: {other:?} where LIBXC_CONTEXT belongs")),
    }
    let mut libxc = libxl.into_libxc().map_err(bad)?;
    let pv = libxc.domain().guest_type == GuestType::X86Pv;
    let mut vmm = VmmImage::default();
    let (mut context, mut tsc, mut params) = (false, false, false);
    // A PV domain's: the last type each page came with, its vCPUs'
    // records (basic, extended) by vCPU.
    let mut types = PageTypes::default();
    let mut pv_vcpus: std::collections::BTreeMap<u32, PvVcpuParts> = Default::default();
    let mut pv_info = false;
    let mut page = [0u8; PAGE];
    loop {
        match libxc.next_record().map_err(bad)? {
            LibxcRecord::End => break,
            LibxcRecord::PageData(entries) => {
                for entry in entries {
                    if pv {
                        types.set(
                            entry.pfn,
                            is_table(entry.page_type).then_some(entry.page_type),
                        );
                    } else if is_table(entry.page_type) {
                        return Err("bad image: a page-table type in an HVM domain's page".into());
                    }
                    // XALLOC and XTAB carry no contents: the frame is a
                    // zero page here (kxen sends all-zero pages as XALLOC).
                    let zeroed = matches!(entry.page_type, PageType::XAlloc | PageType::XTab);
                    if entry.page_type.has_contents() {
                        libxc.read_page(&mut page).map_err(bad)?;
                        store_page(&memfd, &guest.regions, entry.pfn, Some(&page))?;
                    } else if zeroed {
                        store_page(&memfd, &guest.regions, entry.pfn, None)?;
                    }
                }
            }
            LibxcRecord::X86TscInfo(t) => {
                tsc = true;
                vmm.tsc = image::TscInfo {
                    mode: t.mode,
                    khz: t.khz,
                    nsec: t.nsec,
                    incarnation: t.incarnation,
                };
            }
            LibxcRecord::HvmParams(list) => {
                params = true;
                vmm.hvm_params = list.iter().map(|p| (p.index, p.value)).collect();
            }
            LibxcRecord::HvmContext(blob) if !pv => {
                context = true;
                vmm.hvm_context = blob;
            }
            LibxcRecord::X86PvInfo(info) if pv => {
                if (info.guest_width, info.pt_levels) != (8, 4) {
                    return Err(format!(
                        "bad image: a {}-bit PV guest with {} levels (kxen runs 64-bit, 4-level ones)",
                        info.guest_width * 8,
                        info.pt_levels
                    ));
                }
                pv_info = true;
            }
            LibxcRecord::X86PvP2mFrames { .. } if pv => {}
            LibxcRecord::X86PvVcpu {
                kind,
                vcpu_id,
                context,
            } if pv => {
                if pv_vcpus.len() >= image::MAX_PV_VCPUS && !pv_vcpus.contains_key(&vcpu_id) {
                    return Err("bad image: too many PV vCPUs".into());
                }
                let slot = pv_vcpus.entry(vcpu_id).or_default();
                let field = match kind {
                    PvVcpuKind::Basic => &mut slot.0,
                    PvVcpuKind::Extended => &mut slot.1,
                    other => {
                        return Err(format!(
                            "bad image: kxen does not read X86_PV_VCPU {other:?} records"
                        ))
                    }
                };
                if field.replace(context).is_some() {
                    return Err(format!("bad image: vCPU {vcpu_id}'s {kind:?} record twice"));
                }
            }
            LibxcRecord::StaticDataEnd
            | LibxcRecord::X86CpuidPolicy(_)
            | LibxcRecord::X86MsrPolicy(_)
            | LibxcRecord::Verify
            | LibxcRecord::UnknownOptional { .. } => {}
            other => return Err(format!("bad image: unexpected libxc record {other:?}")),
        }
    }
    if pv {
        if !(pv_info && tsc) {
            return Err("bad image: X86_PV_INFO or X86_TSC_INFO is missing".into());
        }
        for (vcpu, records) in pv_vcpus {
            let (Some(basic), Some(extended)) = records else {
                return Err(format!(
                    "bad image: vCPU {vcpu} lacks its basic or extended record"
                ));
            };
            vmm.pv_vcpus.push(image::PvVcpuRecords {
                vcpu,
                basic,
                extended,
            });
        }
        if vmm.pv_vcpus.is_empty() {
            return Err("bad image: a PV domain with no vCPU records".into());
        }
        vmm.pv_page_types = types.entries();
    } else if !(context && tsc && params) {
        return Err("bad image: HVM_CONTEXT, HVM_PARAMS or X86_TSC_INFO is missing".into());
    }
    let mut libxl = libxc.into_libxl().map_err(bad)?;
    let mut emulator = None;
    let mut xenstore = None;
    loop {
        match libxl.next_record().map_err(bad)? {
            LibxlRecord::End => break,
            LibxlRecord::EmulatorContext {
                index: VMM_STATE_INDEX,
                context,
                ..
            } if emulator.is_none() => emulator = Some(context),
            LibxlRecord::EmulatorContext {
                index: XENSTORE_INDEX,
                context,
                ..
            } if xenstore.is_none() => {
                xenstore =
                    Some(DomainImage::decode(&context).map_err(|e| format!("bad image: {e}"))?)
            }
            LibxlRecord::EmulatorContext {
                index: PV_PLATFORM_INDEX,
                context,
                ..
            } if pv && !context_seen(&vmm) => {
                let platform =
                    image::parse(&context).map_err(|e| format!("bad image: PV platform: {e}"))?;
                if platform.hvm_context.is_empty() {
                    return Err("bad image: PV platform: no vCPU state".into());
                }
                vmm.hvm_context = platform.hvm_context;
                vmm.hvm_params = platform.hvm_params;
            }
            LibxlRecord::EmulatorXenstoreData { .. } => {}
            other => return Err(format!("bad image: unexpected libxl record {other:?}")),
        }
    }
    vmm.xen_state = emulator.ok_or("bad image: no EMULATOR_CONTEXT with kxen's state")?;
    if pv && !context_seen(&vmm) {
        return Err("bad image: no EMULATOR_CONTEXT with the PV domain's vCPU state".into());
    }
    link.load_state(&image::encode(&vmm))
        .map_err(|e| e.to_string())?;
    // kxend writes the store record exactly for the domains it paused.
    Ok(xenstore.map_or(Restored::Suspended, Restored::Paused))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memfd(pages: u64) -> File {
        let fd =
            nix::sys::memfd::memfd_create(c"store-page-test", nix::sys::memfd::MFdFlags::empty())
                .expect("memfd_create");
        let file = File::from(fd);
        file.set_len(pages * PAGE as u64).unwrap();
        file
    }

    fn read(file: &File, offset: u64) -> [u8; PAGE] {
        let mut page = [0u8; PAGE];
        file.read_exact_at(&mut page, offset).unwrap();
        page
    }

    #[test]
    fn a_zero_page_after_data_clears_it_and_frees_it() {
        let file = memfd(8);
        // Guest frames 0x100..0x104 at memfd pages 4..8.
        let regions = [MemfdRegion {
            gpa: 0x100 << 12,
            len: 4 * PAGE as u64,
            offset: 4 * PAGE as u64,
        }];
        let data = [0x5au8; PAGE];
        store_page(&file, &regions, 0x102, Some(&data)).unwrap();
        assert_eq!(read(&file, 6 * PAGE as u64), data);
        // A later pass sends the frame as XALLOC (no contents): it must
        // read as zeroes again, and be a hole.
        store_page(&file, &regions, 0x102, None).unwrap();
        assert_eq!(read(&file, 6 * PAGE as u64), [0; PAGE]);
        let next_data = nix::unistd::lseek(&file, 0, nix::unistd::Whence::SeekData);
        assert_eq!(
            next_data,
            Err(nix::errno::Errno::ENXIO),
            "the page still holds memory"
        );
        // All-zero contents are stored as a hole as well.
        store_page(&file, &regions, 0x103, Some(&[0; PAGE])).unwrap();
        assert_eq!(
            nix::unistd::lseek(&file, 0, nix::unistd::Whence::SeekData),
            Err(nix::errno::Errno::ENXIO)
        );
    }

    #[test]
    fn frames_outside_the_domain_are_refused() {
        let file = memfd(4);
        let regions = [MemfdRegion {
            gpa: 0,
            len: 4 * PAGE as u64,
            offset: 0,
        }];
        for pfn in [4, 0x1000, u64::MAX >> 12, u64::MAX] {
            let err = store_page(&file, &regions, pfn, Some(&[1; PAGE])).unwrap_err();
            assert!(err.contains("outside the domain's memory"), "{err}");
            assert!(store_page(&file, &regions, pfn, None).is_err());
        }
        assert_eq!(file.metadata().unwrap().len(), 4 * PAGE as u64);
    }
}

#[cfg(test)]
mod page_type_tests {
    use super::*;

    #[test]
    fn page_types_read_back_and_differences_are_found() {
        let entries = [0x10 | 0xc << 60, 0x11 | 0x1 << 60, 0x12, 0x13 | 0xe << 60];
        let types = PageTypes::from_entries(&entries);
        assert_eq!(types.of(0x10), Some(PageType::L4TabPinned));
        assert_eq!(types.of(0x11), Some(PageType::L1Tab));
        assert_eq!(types.of(0x12), None, "an ordinary page is not a table");
        assert_eq!(types.of(0x13), None, "XALLOC is not a table");
        assert_eq!(types.entries(), vec![0x10 | 0xc << 60, 0x11 | 0x1 << 60]);
        let mut sent = types.clone();
        assert!(types.differing(&sent).is_empty());
        sent.set(0x10, Some(PageType::L4Tab));
        sent.set(0x11, None);
        sent.set(0x20, Some(PageType::L2Tab));
        assert_eq!(types.differing(&sent), vec![0x10, 0x11, 0x20]);
        // A table's page keeps its contents even when all zero.
        let zero = [0u8; PAGE];
        let page = guest_page(0x11, &zero, Some(PageType::L1Tab));
        assert!(page.contents.is_some());
        assert_eq!(guest_page(0x12, &zero, None).page_type, PageType::XAlloc);
    }
}

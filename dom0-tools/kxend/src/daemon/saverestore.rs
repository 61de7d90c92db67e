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
    DomainHeader, GuestType, HvmParamEntry, LibxcRecord, Page, PageType, TscInfo,
};
use kxen_stream::libxl::{EmulatorId, LibxlReader, LibxlRecord, LibxlWriter};
use kxen_stream::Limits;
use kxen_toolstack::savefile;
use kxen_vmm_api::image::{self, VmmImage};
use kxen_vmm_api::{MemfdRegion, VmmClient};
use kxen_xenstore::image::DomainImage;
use kxen_xenstore::Xenstored;

use super::suspend::Stopped;
use super::*;

const PAGE: usize = 4096;
/// Pages per PAGE_DATA record (libxc's batch).
const BATCH: usize = 1024;

pub(super) fn io_error(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

/// Guest page `pfn` as a PAGE_DATA entry: an all-zero page goes as
/// XALLOC (allocate the frame, no contents), which costs the stream 8
/// bytes instead of 4 KiB; a receiver gives it a zero page. Most of an
/// idle guest's memory is zero.
pub(super) fn guest_page(pfn: u64, contents: &[u8; PAGE]) -> Page<'_> {
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

/// Every guest page Dom0 can see, with its contents, batch by batch.
fn write_memory<W: Write>(
    libxc: &mut kxen_stream::libxc::LibxcWriter<W>,
    memfd: &File,
    regions: &[MemfdRegion],
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
                .map(|(i, contents)| guest_page((r.gpa >> 12) + done + i as u64, contents))
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
        let load = |control: &Path| -> Result<Option<DomainImage>, String> {
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
    write_stream_with(d, config, store, out, &mut |libxc, _, guest| {
        let memfd = guest
            .memfd
            .try_clone()
            .map_err(|e| io_error("guest memfd", e))?;
        write_memory(libxc, &File::from(memfd), &guest.regions, progress)
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
    let libxl = LibxlWriter::new(out).map_err(stream)?;
    let mut libxc = libxl
        .begin_libxc(&DomainHeader {
            guest_type: GuestType::X86Hvm,
            xen_major: 4,
            xen_minor: 17,
        })
        .map_err(stream)?;
    libxc.write_static_data_end().map_err(stream)?;
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
    let params: Vec<HvmParamEntry> = vmm
        .hvm_params
        .iter()
        .map(|&(index, value)| HvmParamEntry { index, value })
        .collect();
    libxc.write_hvm_params(&params).map_err(stream)?;
    libxc.write_hvm_context(&vmm.hvm_context).map_err(stream)?;
    let mut libxl = libxc.finish_into_libxl().map_err(stream)?;
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

/// Read the libxl stream from `input` into the new VMM behind `control`.
/// Returns the domain's part of the store if the image carries it (a
/// domain saved transparently), for the caller to bring back once the new
/// domain is introduced.
pub(super) fn load_image(input: impl Read, control: &Path) -> Result<Option<DomainImage>, String> {
    // The socket's file appears at bind, a moment before the VMM listens
    // (CI once got ECONNREFUSED here): retry the connect, within a limit.
    let mut link = VmmClient::connect_within(control, CONNECT_LIMIT).map_err(|e| e.to_string())?;
    let guest = link.memfd().map_err(|e| e.to_string())?;
    let memfd = File::from(guest.memfd);
    let max_pfn = guest
        .regions
        .iter()
        .filter_map(|r| r.gpa_end())
        .max()
        .unwrap_or(0)
        >> 12;
    let bad = |e: kxen_stream::ReadError| format!("bad image: {e}");
    let mut libxl = LibxlReader::new(input, Limits::new(max_pfn)).map_err(bad)?;
    match libxl.next_record().map_err(bad)? {
        LibxlRecord::LibxcContext => {}
        other => return Err(format!("bad image: {other:?} where LIBXC_CONTEXT belongs")),
    }
    let mut libxc = libxl.into_libxc().map_err(bad)?;
    if libxc.domain().guest_type != GuestType::X86Hvm {
        return Err("bad image: not an HVM/PVH domain".into());
    }
    let mut vmm = VmmImage::default();
    let (mut context, mut tsc, mut params) = (false, false, false);
    let mut page = [0u8; PAGE];
    loop {
        match libxc.next_record().map_err(bad)? {
            LibxcRecord::End => break,
            LibxcRecord::PageData(entries) => {
                for entry in entries {
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
            LibxcRecord::HvmContext(blob) => {
                context = true;
                vmm.hvm_context = blob;
            }
            LibxcRecord::StaticDataEnd
            | LibxcRecord::X86CpuidPolicy(_)
            | LibxcRecord::X86MsrPolicy(_)
            | LibxcRecord::Verify
            | LibxcRecord::UnknownOptional { .. } => {}
            other => return Err(format!("bad image: unexpected libxc record {other:?}")),
        }
    }
    if !(context && tsc && params) {
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
            LibxlRecord::EmulatorXenstoreData { .. } => {}
            other => return Err(format!("bad image: unexpected libxl record {other:?}")),
        }
    }
    vmm.xen_state = emulator.ok_or("bad image: no EMULATOR_CONTEXT with kxen's state")?;
    link.load_state(&image::encode(&vmm))
        .map_err(|e| e.to_string())?;
    Ok(xenstore)
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

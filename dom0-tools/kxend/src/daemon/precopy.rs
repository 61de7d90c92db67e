//! Live migration's memory: iterative pre-copy, as libxc's stream v2
//! does it (issue 17). While the domain runs, every page is sent
//! (PAGE_DATA records), then, pass after pass, the pages written since
//! the previous pass; once the passes stop paying (a bounded number of
//! them, the dirty set small, or no longer shrinking) the domain is
//! paused and the last pass sends what is left. The vCPU, platform and
//! Xen state follow (`saverestore::write_stream_with`).
//!
//! Three writers change guest memory, and a page any of them wrote after
//! it was sent is sent again:
//! * the guest: KVM's dirty log on the memfd slots (kxen-vmm's
//!   `dirty-log` requests);
//! * Dom0's backends, through the memfd: the log in `kxen_foreign::dirty`
//!   (pages written, and pages mapped writable through a grant, in every
//!   pass until unmapped);
//! * kxen-vmm itself, which writes guest pages from user space (event
//!   words, vcpu_info, runstate areas, hypercall results) where KVM's log
//!   does not see it. No log covers it, so the final pass, with the
//!   domain paused, compares every page no log named with a hash of what
//!   was sent and sends those that differ. That check also covers the
//!   order in which Dom0's atomics are marked (before their write).
//!
//! A page is read only after the logs naming it were taken, so a write
//! logged after a take is sent by a later pass, never lost.
//!
//! Dom0's backends serve the paused domain's rings too, so the final pass
//! first quiesces them (`quiesce`, the caller's): no new request is taken,
//! those in flight are answered with their pages written and logged, and
//! netback fills no RX buffer. Only then are the logs taken for the last
//! time. A failed migration resumes them, with the domain.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kxen_foreign::dirty::Dom0Dirty;
// A page's fingerprint, to find pages changed behind every log (its own
// crate, which debug builds optimize: it runs over every page while the
// domain is paused).
use kxen_pagehash::page_hash;
use kxen_stream::libxc::LibxcWriter;
use kxen_toolstack::protocol::MigrateProgress;
use kxen_vmm_api::client::GuestMemfd;
use kxen_vmm_api::{MemfdRegion, VmmClient};

use super::saverestore::{guest_page, io_error, PageTypes};

const PAGE: usize = 4096;
/// Pages per PAGE_DATA record (libxc's batch).
const BATCH: usize = 1024;
/// Live passes at most, the first (every page) included; then the domain
/// is paused for the last. libxc's default is 5.
pub(super) const MAX_LIVE_PASSES: u32 = 5;
/// A dirty set this small is sent with the domain paused (libxc: 50).
pub(super) const DIRTY_THRESHOLD: u64 = 50;
/// How long the paused domain's backends may take to answer the requests
/// they are serving (each is one synchronous disk I/O or one packet).
pub(super) const QUIESCE_LIMIT: Duration = Duration::from_secs(5);

/// What the pre-copy did.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct PreCopyReport {
    /// Passes, the final one included.
    pub passes: u32,
    /// Pages sent, over all passes.
    pub pages_sent: u64,
    /// Pages sent by the final (paused) pass.
    pub final_pages: u64,
    /// Of those, the pages no log named whose contents had changed.
    pub unlogged_pages: u64,
    /// When the domain was paused for the final pass.
    pub paused_at: Option<Instant>,
    /// How long the final pass took to find the pages changed behind
    /// the logs, and to send its pages (both are downtime).
    pub content_check: Duration,
    pub final_send: Duration,
    /// How long the backends took to quiesce (downtime too).
    pub quiesce: Duration,
}

/// A set of guest pages: a bitmap per memfd region, a bit per page.
struct PageSet(Vec<Vec<u64>>);

impl PageSet {
    fn words(region: &MemfdRegion) -> usize {
        (region.len / PAGE as u64).div_ceil(64) as usize
    }

    fn all(regions: &[MemfdRegion]) -> Self {
        PageSet(
            regions
                .iter()
                .map(|r| {
                    let pages = r.len / PAGE as u64;
                    let mut words = vec![u64::MAX; Self::words(r)];
                    if !pages.is_multiple_of(64) {
                        if let Some(last) = words.last_mut() {
                            *last = (1u64 << (pages % 64)) - 1;
                        }
                    }
                    words
                })
                .collect(),
        )
    }

    fn count(&self) -> u64 {
        self.0
            .iter()
            .flatten()
            .map(|w| u64::from(w.count_ones()))
            .sum()
    }

    fn contains(&self, region: usize, page: u64) -> bool {
        self.0
            .get(region)
            .and_then(|words| words.get((page / 64) as usize))
            .is_some_and(|w| w & (1 << (page % 64)) != 0)
    }

    fn insert(&mut self, region: usize, page: u64) {
        if let Some(w) = self
            .0
            .get_mut(region)
            .and_then(|words| words.get_mut((page / 64) as usize))
        {
            *w |= 1 << (page % 64);
        }
    }

    /// KVM's log, one bitmap per region (checked by the VMM client).
    fn union(&mut self, kvm: &[Vec<u64>]) {
        for (mine, theirs) in self.0.iter_mut().zip(kvm) {
            for (m, t) in mine.iter_mut().zip(theirs) {
                *m |= t;
            }
        }
    }

    /// Dom0's log, a bit per memfd page.
    fn merge_dom0(&mut self, regions: &[MemfdRegion], dom0: &[u64]) {
        for (index, r) in regions.iter().enumerate() {
            let first = r.offset / PAGE as u64;
            for page in 0..r.len / PAGE as u64 {
                let at = first + page;
                let hit = dom0
                    .get((at / 64) as usize)
                    .is_some_and(|w| w & (1 << (at % 64)) != 0);
                if hit {
                    self.insert(index, page);
                }
            }
        }
    }
}

struct Sender<'a, W: Write> {
    libxc: &'a mut LibxcWriter<W>,
    memfd: File,
    regions: &'a [MemfdRegion],
    /// The hash of each page as it was last sent.
    sent: Vec<Vec<u64>>,
    buf: Vec<u8>,
    /// A PV domain's page tables as last asked for, and the type each
    /// page went with: PAGE_DATA carries the types, and the receiver pins
    /// the tables the last one names. Empty for other domains.
    types: PageTypes,
    sent_types: PageTypes,
}

impl<W: Write> Sender<'_, W> {
    /// Send the pages of `set`, batch by batch; `progress` hears (sent,
    /// total) after each batch.
    fn send(&mut self, set: &PageSet, progress: &mut dyn FnMut(u64, u64)) -> Result<u64, String> {
        let total = set.count();
        let mut done = 0;
        let mut batch: Vec<(usize, u64)> = Vec::with_capacity(BATCH);
        for (index, r) in self.regions.iter().enumerate() {
            for page in 0..r.len / PAGE as u64 {
                if !set.contains(index, page) {
                    continue;
                }
                batch.push((index, page));
                if batch.len() == BATCH {
                    done += self.send_batch(&batch)?;
                    batch.clear();
                    progress(done, total);
                }
            }
        }
        if !batch.is_empty() {
            done += self.send_batch(&batch)?;
            progress(done, total);
        }
        Ok(done)
    }

    /// Read the pages of `batch` (runs of consecutive pages at once) and
    /// write them as one PAGE_DATA record.
    fn send_batch(&mut self, batch: &[(usize, u64)]) -> Result<u64, String> {
        let bytes = &mut self.buf[..batch.len() * PAGE];
        let mut at = 0;
        while at < batch.len() {
            let (index, first) = batch[at];
            let mut run = 1;
            while at + run < batch.len() && batch[at + run] == (index, first + run as u64) {
                run += 1;
            }
            let r = &self.regions[index];
            self.memfd
                .read_exact_at(
                    &mut bytes[at * PAGE..(at + run) * PAGE],
                    r.offset + first * PAGE as u64,
                )
                .map_err(|e| io_error("reading guest memory", e))?;
            at += run;
        }
        let mut pages = Vec::with_capacity(batch.len());
        for (&(index, page), contents) in batch.iter().zip(bytes.chunks_exact(PAGE)) {
            if let Some(slot) = self.sent[index].get_mut(page as usize) {
                *slot = page_hash(contents);
            }
            let contents: &[u8; PAGE] = contents
                .try_into()
                .map_err(|_| "a page that is not 4096 bytes".to_string())?;
            let pfn = (self.regions[index].gpa >> 12) + page;
            let table = self.types.of(pfn);
            self.sent_types.set(pfn, table);
            pages.push(guest_page(pfn, contents, table));
        }
        self.libxc
            .write_pages(&pages)
            .map_err(|e| io_error("writing pages", e))?;
        Ok(batch.len() as u64)
    }

    /// The pages outside `logged` whose contents differ from what was
    /// sent: written by a writer no log saw (kxen-vmm). It runs with the
    /// domain paused (downtime), so the memfd's holes, which read as
    /// zeroes, are compared without being read.
    fn unlogged_changes(&mut self, logged: &PageSet) -> Result<PageSet, String> {
        let zero_hash = page_hash(&[0; PAGE]);
        let mut changed = PageSet(
            self.regions
                .iter()
                .map(|r| vec![0; PageSet::words(r)])
                .collect(),
        );
        for (index, r) in self.regions.iter().enumerate() {
            let pages = r.len / PAGE as u64;
            let mut page = 0;
            while page < pages {
                let (data, run) = self.extent(r, page, pages)?;
                if !data {
                    for p in page..page + run {
                        if !logged.contains(index, p)
                            && self.sent[index].get(p as usize) != Some(&zero_hash)
                        {
                            changed.insert(index, p);
                        }
                    }
                    page += run;
                    continue;
                }
                let end = page + run;
                while page < end {
                    let count = (end - page).min(BATCH as u64) as usize;
                    let bytes = &mut self.buf[..count * PAGE];
                    self.memfd
                        .read_exact_at(bytes, r.offset + page * PAGE as u64)
                        .map_err(|e| io_error("reading guest memory", e))?;
                    for (i, contents) in bytes.chunks_exact(PAGE).enumerate() {
                        let p = page + i as u64;
                        if !logged.contains(index, p)
                            && self.sent[index].get(p as usize) != Some(&page_hash(contents))
                        {
                            changed.insert(index, p);
                        }
                    }
                    page += count as u64;
                }
            }
        }
        Ok(changed)
    }

    /// From page `page` of region `r` (of `pages`): whether the memfd
    /// holds data there or a hole, and for how many pages.
    fn extent(&self, r: &MemfdRegion, page: u64, pages: u64) -> Result<(bool, u64), String> {
        use nix::unistd::{lseek, Whence};
        let at = r.offset + page * PAGE as u64;
        let end = r.offset + pages * PAGE as u64;
        let at_i64 = i64::try_from(at).map_err(|_| "memfd offset out of range".to_string())?;
        // SEEK_DATA from inside a hole finds the next data (ENXIO: none up
        // to the end); from inside data it returns `at` itself.
        let data = match lseek(&self.memfd, at_i64, Whence::SeekData) {
            Ok(next) => (next as u64).min(end),
            Err(nix::errno::Errno::ENXIO) => end,
            Err(e) => return Err(io_error("finding the memfd's data", e)),
        };
        if data > at {
            return Ok((false, (data - at).div_ceil(PAGE as u64)));
        }
        let hole = match lseek(&self.memfd, at_i64, Whence::SeekHole) {
            Ok(next) => (next as u64).min(end),
            Err(e) => return Err(io_error("finding the memfd's holes", e)),
        };
        Ok((true, (hole.saturating_sub(at)).div_ceil(PAGE as u64).max(1)))
    }
}

/// Send the memory of the running domain by iterative pre-copy and leave
/// it stopped by `stop` (paused, or suspended by the guest itself), its
/// backends quiesced by `quiesce` (given a deadline) once it is. `progress` hears each batch. On an error the domain
/// may be paused or running, its backends quiesced or not; the caller
/// resumes both. KVM's dirty logging is off again when this returns.
pub(super) fn precopy<W: Write>(
    stop: &mut dyn FnMut() -> Result<(), String>,
    libxc: &mut LibxcWriter<W>,
    link: &mut VmmClient,
    guest: &GuestMemfd,
    pv: bool,
    quiesce: &mut dyn FnMut(Instant) -> Result<(), String>,
    progress: &mut dyn FnMut(MigrateProgress),
) -> Result<PreCopyReport, String> {
    let dom0 = kxen_foreign::dirty::for_memfd(&guest.memfd, guest.size)
        .map_err(|e| io_error("Dom0's dirty log", e))?;
    link.dirty_log_start()
        .map_err(|e| format!("starting KVM's dirty log: {e}"))?;
    let source = Source {
        guest,
        dom0: &dom0,
        pv,
    };
    let result = passes(stop, libxc, link, &source, quiesce, progress);
    let stopped = link.dirty_log_stop();
    let report = result?;
    stopped.map_err(|e| format!("stopping KVM's dirty log: {e}"))?;
    Ok(report)
}

/// The domain's memory as the passes read it: the memfd, Dom0's log of
/// its own writes, and whether its page tables go with types (PV).
struct Source<'a> {
    guest: &'a GuestMemfd,
    dom0: &'a Arc<Dom0Dirty>,
    pv: bool,
}

fn passes<W: Write>(
    stop: &mut dyn FnMut() -> Result<(), String>,
    libxc: &mut LibxcWriter<W>,
    link: &mut VmmClient,
    source: &Source<'_>,
    quiesce: &mut dyn FnMut(Instant) -> Result<(), String>,
    progress: &mut dyn FnMut(MigrateProgress),
) -> Result<PreCopyReport, String> {
    let (guest, dom0, pv) = (source.guest, source.dom0, source.pv);
    let regions = &guest.regions;
    let memfd = guest
        .memfd
        .try_clone()
        .map_err(|e| io_error("guest memfd", e))?;
    let mut sender = Sender {
        libxc,
        memfd: File::from(memfd),
        regions,
        sent: regions
            .iter()
            .map(|r| vec![0; (r.len / PAGE as u64) as usize])
            .collect(),
        buf: vec![0u8; BATCH * PAGE],
        types: PageTypes::default(),
        sent_types: PageTypes::default(),
    };
    let mut report = PreCopyReport::default();
    // Everything is sent first: older marks mean nothing.
    let _ = dom0.take();
    let mut set = PageSet::all(regions);
    let mut previous_dirty = u64::MAX;
    let mut dirty_rate = 0;
    loop {
        report.passes += 1;
        let iteration = report.passes;
        let started = Instant::now();
        sender.types = PageTypes::of_domain(link, pv)?;
        let sent = sender.send(&set, &mut |pages_sent, pages_total| {
            progress(MigrateProgress {
                pages_sent,
                pages_total,
                iteration,
                final_pass: false,
                dirty_rate,
            })
        })?;
        report.pages_sent += sent;
        // What was written while this pass ran (and since each page of it
        // was read).
        set = dirty_set(link, regions, dom0)?;
        let dirty = set.count();
        dirty_rate = (dirty as f64 / started.elapsed().as_secs_f64().max(1e-6)) as u64;
        tracing::info!(iteration, sent, dirty, dirty_rate, "pre-copy pass");
        if iteration >= MAX_LIVE_PASSES || dirty <= DIRTY_THRESHOLD || dirty >= previous_dirty {
            break;
        }
        previous_dirty = dirty;
    }

    // Stop and copy: what the last live pass left, what was written since,
    // and what changed behind every log.
    // Paused, or suspended by the guest itself (which keeps writing its
    // memory until it does: the log taken below has those pages too).
    stop()?;
    report.paused_at = Some(Instant::now());
    // The backends still serve the paused domain's rings: once quiesced,
    // every page they wrote is in the log taken next, and none changes
    // after the pass reads it.
    let quiesce_started = Instant::now();
    quiesce(quiesce_started + QUIESCE_LIMIT).map_err(|e| format!("quiescing the backends: {e}"))?;
    report.quiesce = quiesce_started.elapsed();
    report.passes += 1;
    let iteration = report.passes;
    let last = dirty_set(link, regions, dom0)?;
    set.union(&last.0);
    let check_started = Instant::now();
    let unlogged = sender.unlogged_changes(&set)?;
    report.content_check = check_started.elapsed();
    report.unlogged_pages = unlogged.count();
    let send_started = Instant::now();
    set.union(&unlogged.0);
    // A table pinned or unpinned since its page went (no write to the
    // page, so no log has it) goes again with its type as it is now.
    sender.types = PageTypes::of_domain(link, pv)?;
    for pfn in sender.types.differing(&sender.sent_types) {
        if let Some(index) = regions
            .iter()
            .position(|r| (r.gpa >> 12..(r.gpa + r.len) >> 12).contains(&pfn))
        {
            set.insert(index, pfn - (regions[index].gpa >> 12));
        }
    }
    let sent = sender.send(&set, &mut |pages_sent, pages_total| {
        progress(MigrateProgress {
            pages_sent,
            pages_total,
            iteration,
            final_pass: true,
            dirty_rate,
        })
    })?;
    if sent == 0 {
        // Still one frame, so the receiver's side sees the final pass.
        progress(MigrateProgress {
            pages_sent: 0,
            pages_total: 0,
            iteration,
            final_pass: true,
            dirty_rate,
        });
    }
    report.final_send = send_started.elapsed();
    report.pages_sent += sent;
    report.final_pages = sent;
    Ok(report)
}

/// KVM's log and Dom0's, taken (and cleared) together.
fn dirty_set(
    link: &mut VmmClient,
    regions: &[MemfdRegion],
    dom0: &Dom0Dirty,
) -> Result<PageSet, String> {
    let kvm = link
        .dirty_log(regions)
        .map_err(|e| format!("KVM's dirty log: {e}"))?;
    let mut set = PageSet(regions.iter().map(|r| vec![0; PageSet::words(r)]).collect());
    set.union(&kvm);
    set.merge_dom0(regions, &dom0.take());
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(gpa: u64, pages: u64, offset: u64) -> MemfdRegion {
        MemfdRegion {
            gpa,
            len: pages * PAGE as u64,
            offset,
        }
    }

    #[test]
    fn page_sets_cover_regions_exactly() {
        let regions = [region(0, 70, 0), region(0xfeff0000, 16, 70 * 4096)];
        let all = PageSet::all(&regions);
        assert_eq!(all.count(), 86);
        assert!(all.contains(0, 69) && !all.contains(0, 70) && all.contains(1, 15));
        // Dom0's bitmap is by memfd page: page 72 is the special window's 2.
        let mut set = PageSet(vec![vec![0; 2], vec![0; 1]]);
        set.merge_dom0(&regions, &[1 << 5, 1 << (72 - 64)]);
        assert!(set.contains(0, 5) && set.contains(1, 2));
        assert_eq!(set.count(), 2);
        set.union(&[vec![0, 1], vec![1]]);
        assert!(set.contains(0, 64) && set.contains(1, 0));
        assert_eq!(set.count(), 4);
    }

    /// The final pass finds a page written behind every log (as
    /// kxen-vmm writes event words) and only that one.
    #[test]
    fn pages_changed_behind_the_logs_are_found() {
        use kxen_stream::libxc::{DomainHeader, GuestType};
        use kxen_stream::libxl::LibxlWriter;
        let fd = nix::sys::memfd::memfd_create(c"precopy-test", nix::sys::memfd::MFdFlags::empty())
            .unwrap();
        let memfd = File::from(fd);
        memfd.set_len(80 * PAGE as u64).unwrap();
        let regions = [region(0, 70, 0), region(0xfeff0000, 10, 70 * 4096)];
        memfd.write_all_at(&[1; PAGE], 5 * PAGE as u64).unwrap();
        let mut libxc = LibxlWriter::new(Vec::new())
            .unwrap()
            .begin_libxc(&DomainHeader {
                guest_type: GuestType::X86Hvm,
                xen_major: 4,
                xen_minor: 17,
            })
            .unwrap();
        libxc.write_static_data_end().unwrap();
        let mut sender = Sender {
            libxc: &mut libxc,
            memfd: memfd.try_clone().unwrap(),
            regions: &regions,
            sent: regions
                .iter()
                .map(|r| vec![0; (r.len / PAGE as u64) as usize])
                .collect(),
            buf: vec![0u8; BATCH * PAGE],
            types: PageTypes::default(),
            sent_types: PageTypes::default(),
        };
        assert_eq!(
            sender
                .send(&PageSet::all(&regions), &mut |_, _| {})
                .unwrap(),
            80
        );
        let none = PageSet(vec![vec![0; 2], vec![0; 1]]);
        assert_eq!(sender.unlogged_changes(&none).unwrap().count(), 0);
        // Written behind the logs: one word of RAM page 5, one byte of
        // the special window's page 3.
        memfd.write_all_at(&[2; 8], 5 * PAGE as u64 + 64).unwrap();
        memfd.write_all_at(&[9], 73 * PAGE as u64 + 4095).unwrap();
        let changed = sender.unlogged_changes(&none).unwrap();
        assert_eq!(changed.count(), 2);
        assert!(changed.contains(0, 5) && changed.contains(1, 3));
        // A page a log names is sent anyway, so it is not reported.
        let mut logged = PageSet(vec![vec![0; 2], vec![0; 1]]);
        logged.insert(0, 5);
        let changed = sender.unlogged_changes(&logged).unwrap();
        assert_eq!(changed.count(), 1);
        // Once sent again, nothing is left.
        sender.send(&changed, &mut |_, _| {}).unwrap();
        sender.send(&logged, &mut |_, _| {}).unwrap();
        assert_eq!(sender.unlogged_changes(&none).unwrap().count(), 0);
    }
}

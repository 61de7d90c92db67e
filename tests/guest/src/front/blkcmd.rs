//! The `blk ...` console commands: verified I/O, checksummed reads and
//! writes for host-side checks, a benchmark and hostile requests.

use kxen_testguest::cmd::BenchKind;
use kxen_testguest::crc32::{fill_pattern, Crc32};
use xen_abi::io::blkif::{BLKIF_RSP_ERROR, BLKIF_RSP_OKAY};

use super::blk::{BlkDev, Forge, Op, BUF_PAGES, IO_MS};
use crate::checks::Fail;
use crate::time::now_ns;
use crate::{bail, ensure};

const SECTOR: usize = 512;

fn status_ok(what: &str, st: i16) -> Result<(), Fail> {
    ensure!(st == BLKIF_RSP_OKAY, "{}: status {}", what, st);
    Ok(())
}

fn check_range(dev: &BlkDev, sector: u64, count: u64) -> Result<(), Fail> {
    ensure!(
        count > 0 && sector.checked_add(count).is_some_and(|e| e <= dev.sectors),
        "sectors {}+{} outside the disk ({} sectors)",
        sector,
        count,
        dev.sectors
    );
    Ok(())
}

/// Sectors per chunk: what one request and the buffer area take.
fn chunk_sectors(dev: &BlkDev) -> u64 {
    (dev.max_sectors() as u64).min((BUF_PAGES * 8) as u64)
}

/// Write `count` sectors of the pattern for `seed` at `sector`; CRC-32 of
/// the bytes written, once every write was acknowledged.
pub fn write(dev: &mut BlkDev, sector: u64, count: u64, seed: u64) -> Result<u32, Fail> {
    check_range(dev, sector, count)?;
    let mut crc = Crc32::new();
    let mut done = 0;
    while done < count {
        let n = (count - done).min(chunk_sectors(dev));
        let bytes = n as usize * SECTOR;
        let buf = dev.buf_bytes(0, bytes);
        fill_pattern(buf, seed, sector + done);
        crc.update(buf);
        let st = dev.io(Op::Write, sector + done, 0, n as u32)?;
        status_ok("write", st)?;
        done += n;
    }
    Ok(crc.value())
}

/// Read `count` sectors at `sector`; CRC-32 of the bytes.
pub fn read(dev: &mut BlkDev, sector: u64, count: u64) -> Result<u32, Fail> {
    check_range(dev, sector, count)?;
    let mut crc = Crc32::new();
    let mut done = 0;
    while done < count {
        let n = (count - done).min(chunk_sectors(dev));
        let bytes = n as usize * SECTOR;
        // Poison first: a read that transfers nothing must not pass.
        dev.buf_bytes(0, bytes).fill(0xa5);
        let st = dev.io(Op::Read, sector + done, 0, n as u32)?;
        status_ok("read", st)?;
        crc.update(dev.buf_bytes(0, bytes));
        done += n;
    }
    Ok(crc.value())
}

/// Write the pattern, read it back, compare byte for byte.
fn verify_at(dev: &mut BlkDev, sector: u64, count: u64, seed: u64) -> Result<(), Fail> {
    let wrote = write(dev, sector, count, seed)?;
    let got = read(dev, sector, count)?;
    if got != wrote {
        bail!(
            "read back {} sectors at {}: crc {:08x}, wrote {:08x}",
            count,
            sector,
            got,
            wrote
        );
    }
    // The CRCs match; check the last chunk's bytes directly too.
    let last = (count - 1) / chunk_sectors(dev) * chunk_sectors(dev);
    let n = (count - last) as usize * SECTOR;
    let mut want = [0u8; SECTOR];
    for s in 0..(n / SECTOR) {
        fill_pattern(&mut want, seed, sector + last + s as u64);
        let got = &dev.buf_bytes(0, n)[s * SECTOR..(s + 1) * SECTOR];
        ensure!(
            got == want,
            "sector {} differs from what was written",
            sector + last + s as u64
        );
    }
    Ok(())
}

/// `blk check`: I/O at a few offsets (the last sector included), multi-page
/// requests, flush, barrier and discard as offered.
pub fn check(dev: &mut BlkDev) -> Result<(), Fail> {
    ensure!(
        dev.sectors >= 64,
        "disk too small ({} sectors)",
        dev.sectors
    );
    let big = chunk_sectors(dev).min(dev.sectors / 2).min(256);
    let spots = [
        (0, 1),
        (7, 3),
        (dev.sectors / 2, big),
        (dev.sectors - 1, 1),
        (dev.sectors - 9, 9),
    ];
    for (i, &(s, n)) in spots.iter().enumerate() {
        verify_at(dev, s, n, 0xc0ffee + i as u64)?;
    }
    if dev.features.flush {
        status_ok("flush", dev.io(Op::Flush, 0, 0, 0)?)?;
    }
    if dev.features.barrier {
        fill_pattern(dev.buf_bytes(0, 8 * SECTOR), 77, 16);
        status_ok("write barrier", dev.io(Op::Barrier, 16, 0, 8)?)?;
        let crc = read(dev, 16, 8)?;
        let mut c = Crc32::new();
        let mut want = [0u8; 8 * SECTOR];
        fill_pattern(&mut want, 77, 16);
        c.update(&want);
        ensure!(crc == c.value(), "barrier write did not land");
    }
    if dev.features.discard {
        let at = (dev.sectors / 4) & !7;
        write(dev, at, 64, 5)?;
        status_ok("discard", dev.io(Op::Discard, at, 0, 64)?)?;
        dev.buf_bytes(0, 64 * SECTOR).fill(0xa5);
        status_ok("read after discard", dev.io(Op::Read, at, 0, 64)?)?;
        ensure!(
            dev.buf_bytes(0, 64 * SECTOR).iter().all(|&b| b == 0),
            "discarded sectors {}..{} do not read as zeroes",
            at,
            at + 64
        );
    }
    Ok(())
}

/// Result of `blk bench`.
pub struct Bench {
    pub bytes: u64,
    pub ns: u64,
    pub reqs: u64,
    pub kicks: u64,
}

/// `blk bench`: keep `depth` requests of `req_kib` KiB in flight until
/// `amount` (MiB, or requests for randread) is done.
pub fn bench(
    dev: &mut BlkDev,
    kind: BenchKind,
    amount: u64,
    req_kib: u64,
    depth: u64,
) -> Result<Bench, Fail> {
    ensure!(
        req_kib >= 4 && req_kib.is_multiple_of(4),
        "request size must be a multiple of 4 KiB"
    );
    let req_pages = (req_kib / 4) as usize;
    let req_sect = req_kib * 2;
    ensure!(
        req_sect <= dev.max_sectors() as u64,
        "{} KiB requests exceed the device's {} KiB",
        req_kib,
        dev.max_sectors() / 2
    );
    ensure!(
        depth >= 1 && depth <= dev.queue_limit() as u64 && depth as usize * req_pages <= BUF_PAGES,
        "queue depth {} not in 1..={} (or buffers too small)",
        depth,
        dev.queue_limit()
    );
    ensure!(dev.sectors >= req_sect, "disk smaller than one request");
    let total = match kind {
        BenchKind::RandRead => amount,
        _ => amount * 1024 / req_kib,
    };
    ensure!(total > 0, "nothing to do");
    let span = dev.sectors / req_sect; // request-sized slots on the disk
    let op = if kind == BenchKind::SeqWrite {
        Op::Write
    } else {
        Op::Read
    };
    let (reqs0, kicks0) = (dev.reqs, dev.kicks);
    // Buffer region of each request id (ids are < depth while at most
    // `depth` are in flight, but map them anyway).
    let mut region_of = [usize::MAX; super::blk::MAX_INFLIGHT];
    let mut region_busy = [false; super::blk::MAX_INFLIGHT];
    let mut rng: u64 = 0x2545_f491_4f6c_dd1d;
    let (mut issued, mut finished, mut inflight) = (0u64, 0u64, 0u64);
    let start = now_ns().unwrap_or(0);
    while finished < total {
        let mut queued = false;
        while inflight < depth && issued < total {
            let slot = match kind {
                BenchKind::RandRead => {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng % span
                }
                _ => issued % span,
            };
            let r = region_busy[..depth as usize]
                .iter()
                .position(|b| !b)
                .ok_or_else(|| Fail::new(format_args!("no free buffer region")))?;
            let id = dev.queue(
                op,
                slot * req_sect,
                r * req_pages,
                req_sect as u32,
                Forge::None,
            )?;
            region_busy[r] = true;
            region_of[id] = r;
            issued += 1;
            inflight += 1;
            queued = true;
        }
        if queued {
            dev.kick();
        }
        let (id, st) = dev.wait_any(IO_MS)?;
        status_ok("bench request", st)?;
        if let Some(r) = region_of.get(id).copied().filter(|&r| r != usize::MAX) {
            region_busy[r] = false;
            region_of[id] = usize::MAX;
        }
        inflight -= 1;
        finished += 1;
    }
    let ns = now_ns().unwrap_or(start).saturating_sub(start).max(1);
    Ok(Bench {
        bytes: total * req_kib * 1024,
        ns,
        reqs: dev.reqs - reqs0,
        kicks: dev.kicks - kicks0,
    })
}

/// `blk hostile`: malformed requests must each be answered with an error,
/// and the device must work afterwards.
pub fn hostile(dev: &mut BlkDev) -> Result<(), Fail> {
    let n = dev.sectors;
    let mut cases: [(&str, Op, u64, u32, Forge); 10] = [
        ("read past the end", Op::Read, n - 4, 8, Forge::None),
        ("write past the end", Op::Write, n, 8, Forge::None),
        ("sector overflow", Op::Read, u64::MAX - 3, 8, Forge::None),
        ("forged grant ref", Op::Read, 0, 8, Forge::BadGref),
        (
            "read into read-only grant",
            Op::Read,
            0,
            8,
            Forge::ReadOnlyGrant,
        ),
        ("nr_segments 0", Op::Read, 0, 0, Forge::NoSegments),
        ("nr_segments 12", Op::Read, 0, 8, Forge::TooManySegments),
        (
            "first_sect > last_sect",
            Op::Read,
            0,
            8,
            Forge::BadSectRange,
        ),
        ("unknown operation", Op::Read, 0, 8, Forge::BadOp),
        (
            "too many indirect segments",
            Op::Read,
            0,
            8,
            Forge::TooManyIndirect,
        ),
    ];
    let nr = if dev.features.indirect > 0 { 10 } else { 9 };
    for (what, op, sector, nsect, forge) in cases.iter_mut().take(nr) {
        let st = dev
            .io_forged(*op, *sector, 0, *nsect, *forge)
            .map_err(|e| Fail::new(format_args!("{}: {}", what, e)))?;
        // An unknown operation may also be "unsupported" (-2).
        let ok = st == BLKIF_RSP_ERROR || (*forge == Forge::BadOp && st < 0);
        ensure!(ok, "{}: expected BLKIF_RSP_ERROR, got status {}", what, st);
    }
    verify_at(dev, 3, 5, 0xbad)
        .map_err(|e| Fail::new(format_args!("device broken after hostile requests: {}", e)))
}

/// A read completed while the LAPIC is software-disabled, as Linux's
/// suspend leaves it (`blk lapic-off <devid>`). Dom0's blkback raises the
/// completion's upcall through a KVM irqfd, which such a LAPIC drops;
/// the upcall must still come once the LAPIC is back on, or
/// `evtchn_upcall_pending` stays set and no later event raises another.
/// Nothing is printed while the LAPIC is off, so that no console event of
/// kxen-vmm's own (whose refusals it retries) stands in for the
/// backend's. Returns how long the upcall took after the LAPIC came back.
pub fn lapic_off(dev: &mut BlkDev) -> Result<u64, Fail> {
    use crate::boot::SVC_LAPIC_SVR;
    use crate::hypercall::service;
    use crate::time::Deadline;
    use crate::{events, xen};

    /// Spurious vector 0xff; bit 8 is the software enable.
    const SVR_OFF: u64 = 0xff;
    const SVR_ON: u64 = 0x1ff;
    const UPCALL_MS: u64 = 2_000;

    service(SVC_LAPIC_SVR, SVR_OFF);
    // From here the flag can only be set again by an event raised while
    // the LAPIC is off.
    events::drain();
    let before = events::upcalls();
    let queued = dev.queue(Op::Read, 0, 0, 8, super::blk::Forge::None);
    if queued.is_ok() {
        dev.kick();
    }
    // The completion marks the upcall pending (and its irqfd write is
    // dropped): wait for the flag, without blocking in the hypervisor.
    let mut d = Deadline::after_ms(IO_MS);
    let marked = queued.is_ok()
        && loop {
            if events::upcall_pending() {
                break true;
            }
            if d.expired() {
                break false;
            }
            xen::sched_yield();
        };
    service(SVC_LAPIC_SVR, SVR_ON);
    let back_on = now_ns().unwrap_or(0);
    let id = queued?;
    ensure!(
        marked,
        "the read's completion never set evtchn_upcall_pending"
    );
    let took = if events::wait_upcall(before, UPCALL_MS) {
        now_ns().unwrap_or(back_on).saturating_sub(back_on) / 1_000_000
    } else {
        bail!(
            "no upcall within {} ms of the LAPIC coming back on (evtchn_upcall_pending {})",
            UPCALL_MS,
            events::upcall_pending()
        );
    };
    let st = dev.wait(id, IO_MS)?;
    status_ok("read", st)?;
    Ok(took)
}

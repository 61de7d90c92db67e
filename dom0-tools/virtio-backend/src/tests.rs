//! The devices against real guest memory (a memfd mapped through
//! [`guest_memory`]), a real disk image and, for net, a real TAP in a
//! private network namespace. The driver side is written by hand on
//! virtio-queue's mock descriptor table (MockSplitQueue's own ring layout
//! lets the used ring overlap the avail ring past a few entries).

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kxen_blkback::{Disk, VbdSpec};
use kxen_vmm_api::MemfdRegion;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::DescriptorTable;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::blk::*;
use crate::device::{spawn, DeviceFds, Queues, VirtioDevice, F_RING_EVENT_IDX, F_VERSION_1};
use crate::error::Fault;
use crate::link::QueueSetup;
use crate::memory::{guest_memory, GuestMem};

pub(crate) const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
pub(crate) const F_INDIRECT: u16 = 4;

/// RAM: 8 MiB at 0, 8 MiB at 16 MiB (a hole between), in one memfd.
pub(crate) fn test_memory() -> GuestMem {
    let name = std::ffi::CString::new("kxen-virtio-test").unwrap();
    // SAFETY: memfd_create with a valid name; the fd is owned right away.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let file = std::fs::File::from(fd);
    file.set_len(16 << 20).unwrap();
    let regions = [
        MemfdRegion {
            gpa: 0,
            len: 8 << 20,
            offset: 0,
        },
        MemfdRegion {
            gpa: 16 << 20,
            len: 8 << 20,
            offset: 8 << 20,
        },
    ];
    guest_memory(file.as_fd(), &regions).unwrap()
}

/// The driver's side of one split queue.
pub(crate) struct Driver<'a> {
    mem: &'a GuestMem,
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
}

impl<'a> Driver<'a> {
    pub(crate) fn new(mem: &'a GuestMem, base: u64, size: u16) -> Driver<'a> {
        let desc = base;
        let avail = desc + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size) + 4095) & !4095;
        let end = used + 6 + 8 * u64::from(size);
        mem.write_slice(&vec![0u8; (end - base) as usize], GuestAddress(base))
            .unwrap();
        Driver {
            mem,
            size,
            desc,
            avail,
            used,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
        }
    }

    pub(crate) fn setup(&self, index: u32) -> QueueSetup {
        QueueSetup {
            index,
            size: self.size,
            desc: self.desc,
            avail: self.avail,
            used: self.used,
            next_avail: None,
            next_used: None,
        }
    }

    pub(crate) fn store(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let table = DescriptorTable::new(self.mem, GuestAddress(self.desc), self.size);
        table
            .store(
                i,
                RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next)),
            )
            .unwrap();
    }

    /// Add a chain of (addr, len, device-writable) buffers; returns its head.
    pub(crate) fn add(&mut self, bufs: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        for (k, &(addr, len, write)) in bufs.iter().enumerate() {
            let i = (head + k as u16) % self.size;
            let last = k + 1 == bufs.len();
            let mut flags = if write { F_WRITE } else { 0 };
            if !last {
                flags |= F_NEXT;
            }
            self.store(i, addr, len, flags, (i + 1) % self.size);
        }
        self.next_desc = (head + bufs.len() as u16) % self.size;
        self.publish(head);
        head
    }

    /// Make descriptor `head` available.
    pub(crate) fn publish(&mut self, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        self.mem
            .write_obj(head.to_le(), GuestAddress(self.avail + 4 + 2 * slot))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx.to_le(), GuestAddress(self.avail + 2))
            .unwrap();
    }

    /// Used entries (id, len) since the last call.
    pub(crate) fn used(&mut self) -> Vec<(u32, u32)> {
        let idx: u16 = self.mem.read_obj(GuestAddress(self.used + 2)).unwrap();
        let mut out = Vec::new();
        while self.used_seen != idx {
            let slot = u64::from(self.used_seen % self.size);
            let at = self.used + 4 + 8 * slot;
            let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
            let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
            out.push((id, len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }

    /// The driver's `used_event` (EVENT_IDX).
    pub(crate) fn set_used_event(&self, v: u16) {
        let at = self.avail + 4 + 2 * u64::from(self.size);
        self.mem.write_obj(v.to_le(), GuestAddress(at)).unwrap();
    }

    /// The device's `avail_event` (EVENT_IDX).
    pub(crate) fn avail_event(&self) -> u16 {
        let at = self.used + 4 + 8 * u64::from(self.size);
        self.mem.read_obj(GuestAddress(at)).unwrap()
    }
}

fn temp_path(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "kxen-virtio-{tag}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ))
}

/// A 1 MiB image whose byte i is (i / 512) as u8 ^ (i as u8).
fn image(tag: &str) -> PathBuf {
    let path = temp_path(tag);
    let data: Vec<u8> = (0..1usize << 20)
        .map(|i| ((i / 512) as u8) ^ (i as u8))
        .collect();
    std::fs::write(&path, data).unwrap();
    path
}

fn blk_device(path: &PathBuf, readonly: bool) -> BlkDevice {
    let disk = Disk::open(&VbdSpec::new(path, readonly)).unwrap();
    BlkDevice::new(
        "xvda",
        disk,
        BlkConfig {
            id: "kxen-test-disk".into(),
            discard: true,
        },
    )
}

fn header(mem: &GuestMem, at: u64, kind: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&kind.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&h, GuestAddress(at)).unwrap();
}

fn status(mem: &GuestMem, at: u64) -> u8 {
    mem.read_obj(GuestAddress(at)).unwrap()
}

const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const STATUS: u64 = 0x30_0000;
const QUEUE: u64 = 0x1000;

struct BlkRig {
    mem: GuestMem,
    path: PathBuf,
}

impl BlkRig {
    fn new(tag: &str) -> BlkRig {
        BlkRig {
            mem: test_memory(),
            path: image(tag),
        }
    }
}

impl Drop for BlkRig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn queues(mem: &GuestMem, d: &Driver, features: u64) -> Queues {
    Queues::new(features, &[d.setup(0)], 1, mem).unwrap()
}

#[test]
fn blk_features_and_config() {
    let rig = BlkRig::new("cfg");
    let dev = blk_device(&rig.path, false);
    let f = dev.features();
    for bit in [
        F_SEG_MAX,
        F_BLK_SIZE,
        F_FLUSH,
        F_DISCARD,
        F_RING_EVENT_IDX,
        F_VERSION_1,
    ] {
        assert_ne!(f & bit, 0, "{bit:#x}");
    }
    assert_eq!(f & F_RO, 0);
    let c = dev.config();
    assert_eq!(u64::from_le_bytes(c[0..8].try_into().unwrap()), 2048);
    assert_eq!(u32::from_le_bytes(c[12..16].try_into().unwrap()), SEG_MAX);
    assert_eq!(u32::from_le_bytes(c[20..24].try_into().unwrap()), 512);
    let ro = blk_device(&rig.path, true);
    assert_ne!(ro.features() & F_RO, 0);
    assert_eq!(ro.features() & F_DISCARD, 0);
}

#[test]
fn blk_read_write_flush_get_id() {
    let rig = BlkRig::new("rw");
    let mem = &rig.mem;
    let mut dev = blk_device(&rig.path, false);
    let mut d = Driver::new(mem, QUEUE, 16);
    let mut q = queues(mem, &d, F_VERSION_1);

    // Read sectors 3..11 into two buffers, the second crossing into the
    // upper RAM region's start is not possible (hole), so two pieces.
    header(mem, HDR, T_IN, 3);
    let h = d.add(&[
        (HDR, 16, false),
        (DATA, 1024, true),
        (DATA + 0x1000, 3072, true),
        (STATUS, 1, true),
    ]);
    dev.process(0, &mut q, mem).unwrap();
    assert_eq!(d.used(), vec![(u32::from(h), 4097)]);
    assert_eq!(status(mem, STATUS), S_OK);
    let file = std::fs::read(&rig.path).unwrap();
    let mut got = vec![0u8; 4096];
    mem.read_slice(&mut got[..1024], GuestAddress(DATA))
        .unwrap();
    mem.read_slice(&mut got[1024..], GuestAddress(DATA + 0x1000))
        .unwrap();
    assert_eq!(got, file[3 * 512..3 * 512 + 4096]);

    // Write two sectors at sector 100 from the upper region, header and
    // data in one descriptor, status in the last data descriptor's tail.
    let up = 16 << 20;
    header(mem, up, T_OUT, 100);
    mem.write_slice(&[0xa5u8; 1024], GuestAddress(up + 16))
        .unwrap();
    d.add(&[(up, 16 + 1024, false), (STATUS, 1, true)]);
    header(mem, HDR, T_FLUSH, 0);
    d.add(&[(HDR, 16, false), (STATUS + 1, 1, true)]);
    header(mem, HDR + 16, T_GET_ID, 0);
    d.add(&[
        (HDR + 16, 16, false),
        (DATA, 20, true),
        (STATUS + 2, 1, true),
    ]);
    dev.process(0, &mut q, mem).unwrap();
    let used = d.used();
    assert_eq!(used.iter().map(|u| u.1).collect::<Vec<_>>(), [1, 1, 21]);
    assert_eq!(status(mem, STATUS), S_OK);
    assert_eq!(status(mem, STATUS + 1), S_OK);
    assert_eq!(status(mem, STATUS + 2), S_OK);
    let file = std::fs::read(&rig.path).unwrap();
    assert!(file[100 * 512..102 * 512].iter().all(|&b| b == 0xa5));
    assert_eq!(file[102 * 512], 102u8);
    let mut id = [0u8; 20];
    mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id[..14], b"kxen-test-disk");
    assert!(id[14..].iter().all(|&b| b == 0));
}

#[test]
fn blk_discard_punches_a_hole() {
    let rig = BlkRig::new("discard");
    let mem = &rig.mem;
    let mut dev = blk_device(&rig.path, false);
    let mut d = Driver::new(mem, QUEUE, 16);
    let mut q = queues(mem, &d, F_VERSION_1);
    header(mem, HDR, T_DISCARD, 0);
    let mut range = [0u8; 16];
    range[0..8].copy_from_slice(&16u64.to_le_bytes());
    range[8..12].copy_from_slice(&16u32.to_le_bytes());
    mem.write_slice(&range, GuestAddress(DATA)).unwrap();
    d.add(&[(HDR, 16, false), (DATA, 16, false), (STATUS, 1, true)]);
    dev.process(0, &mut q, mem).unwrap();
    assert_eq!(status(mem, STATUS), S_OK);
    let file = std::fs::read(&rig.path).unwrap();
    assert!(file[16 * 512..32 * 512].iter().all(|&b| b == 0));
    assert_eq!(file[32 * 512 + 1], 32 ^ 1);
}

#[test]
fn blk_bad_requests_get_error_status() {
    let rig = BlkRig::new("bad");
    let mem = &rig.mem;
    let mut dev = blk_device(&rig.path, false);
    let mut d = Driver::new(mem, QUEUE, 64);
    let mut q = queues(mem, &d, F_VERSION_1);
    let cases: [(u32, u64, u32, bool, u8); 6] = [
        // Past the end of the disk.
        (T_IN, 2047, 1024, true, S_IOERR),
        (T_OUT, u64::MAX / 256, 512, false, S_IOERR),
        // Not a whole number of sectors.
        (T_IN, 0, 100, true, S_IOERR),
        // Data in the wrong direction.
        (T_OUT, 0, 512, true, S_IOERR),
        // Unknown request types.
        (99, 0, 512, true, S_UNSUPP),
        (13, 0, 0, true, S_UNSUPP),
    ];
    for (i, &(kind, sector, len, write, _)) in cases.iter().enumerate() {
        let h = HDR + 32 * i as u64;
        header(mem, h, kind, sector);
        let mut bufs = vec![(h, 16, false)];
        if len > 0 {
            bufs.push((DATA + 0x1000 * i as u64, len, write));
        }
        bufs.push((STATUS + i as u64, 1, true));
        d.add(&bufs);
    }
    dev.process(0, &mut q, mem).unwrap();
    assert_eq!(d.used().len(), cases.len());
    for (i, case) in cases.iter().enumerate() {
        assert_eq!(status(mem, STATUS + i as u64), case.4, "case {i}: {case:?}");
    }
    // A read-only disk refuses writes and discards.
    let mut ro = blk_device(&rig.path, true);
    let mut d = Driver::new(mem, QUEUE, 16);
    let mut q = queues(mem, &d, F_VERSION_1);
    header(mem, HDR, T_OUT, 0);
    d.add(&[(HDR, 16, false), (DATA, 512, false), (STATUS, 1, true)]);
    header(mem, HDR + 32, T_DISCARD, 0);
    d.add(&[
        (HDR + 32, 16, false),
        (DATA, 16, false),
        (STATUS + 1, 1, true),
    ]);
    ro.process(0, &mut q, mem).unwrap();
    assert_eq!(status(mem, STATUS), S_IOERR);
    assert_eq!(status(mem, STATUS + 1), S_UNSUPP);
    let file = std::fs::read(&rig.path).unwrap();
    assert_eq!(file[1], 1);
}

/// One hostile chain, built by `build`, must end in `want`.
fn hostile(build: impl FnOnce(&mut Driver), want: fn(&Fault) -> bool) {
    let rig = BlkRig::new("hostile");
    let mem = &rig.mem;
    let mut dev = blk_device(&rig.path, false);
    let mut d = Driver::new(mem, QUEUE, 16);
    let mut q = queues(mem, &d, F_VERSION_1 | F_RING_EVENT_IDX);
    header(mem, HDR, T_IN, 0);
    build(&mut d);
    let err = dev.process(0, &mut q, mem).unwrap_err();
    assert!(want(&err), "unexpected fault {err:?}");
}

#[test]
fn hostile_descriptor_loop() {
    hostile(
        |d| {
            d.store(0, HDR, 16, F_NEXT, 1);
            d.store(1, DATA, 512, F_NEXT | F_WRITE, 2);
            d.store(2, STATUS, 1, F_NEXT | F_WRITE, 1);
            d.publish(0);
        },
        |f| *f == Fault::Unterminated,
    );
    // A chain that points at itself.
    hostile(
        |d| {
            d.store(0, HDR, 16, F_NEXT, 0);
            d.publish(0);
        },
        |f| *f == Fault::Unterminated,
    );
}

#[test]
fn hostile_address_past_ram() {
    for addr in [8 << 20, (8 << 20) - 100, 24 << 20, u64::MAX - 10] {
        hostile(
            |d| {
                d.add(&[(HDR, 16, false), (addr, 512, true), (STATUS, 1, true)]);
            },
            |f| matches!(f, Fault::OutOfRam { .. }),
        );
    }
}

#[test]
fn hostile_huge_length() {
    hostile(
        |d| {
            d.add(&[(DATA, u32::MAX, true)]);
        },
        |f| matches!(f, Fault::OutOfRam { .. }),
    );
    hostile(
        |d| {
            d.add(&[(HDR, 16, false), (DATA, 1 << 31, true), (STATUS, 1, true)]);
        },
        |f| matches!(f, Fault::OutOfRam { .. }),
    );
    // Two descriptors adding up to more than 4 GiB: virtio-queue stops.
    hostile(
        |d| {
            d.add(&[
                (HDR, 16, false),
                (DATA, u32::MAX - 8, true),
                (STATUS, 100, true),
            ]);
        },
        |f| matches!(f, Fault::OutOfRam { .. } | Fault::Unterminated),
    );
}

#[test]
fn hostile_layouts() {
    // No status: every buffer device-readable.
    hostile(
        |d| {
            d.add(&[(HDR, 16, false), (DATA, 512, false)]);
        },
        |f| *f == Fault::NoStatus,
    );
    // The status descriptor is read-only (after writable data).
    hostile(
        |d| {
            d.add(&[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, false)]);
        },
        |f| *f == Fault::Order,
    );
    // The header is too short.
    hostile(
        |d| {
            d.add(&[(HDR, 8, false), (STATUS, 1, true)]);
        },
        |f| *f == Fault::ShortHeader(8),
    );
    // The head index is past the table.
    hostile(|d| d.publish(999), |f| *f == Fault::EmptyChain);
    // The driver claims more chains than the queue holds.
    hostile(
        |d| {
            for _ in 0..17 {
                d.publish(0);
            }
        },
        |f| matches!(f, Fault::Queue(_)),
    );
}

#[test]
fn hostile_indirect_tables() {
    const TABLE: u64 = 0x40_0000;
    let entry = |d: &Driver, i: u64, addr: u64, len: u32, flags: u16, next: u16| {
        let raw = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next));
        d.mem.write_obj(raw, GuestAddress(TABLE + 16 * i)).unwrap();
    };
    // A loop inside the table.
    hostile(
        |d| {
            entry(d, 0, HDR, 16, F_NEXT, 1);
            entry(d, 1, DATA, 512, F_NEXT | F_WRITE, 0);
            d.store(0, TABLE, 32, F_INDIRECT, 0);
            d.publish(0);
        },
        |f| *f == Fault::Unterminated,
    );
    // An indirect descriptor inside the table.
    hostile(
        |d| {
            entry(d, 0, HDR, 16, F_NEXT, 1);
            entry(d, 1, TABLE, 32, F_INDIRECT, 0);
            d.store(0, TABLE, 32, F_INDIRECT, 0);
            d.publish(0);
        },
        |f| *f == Fault::Unterminated,
    );
    // A next index past the table.
    hostile(
        |d| {
            entry(d, 0, HDR, 16, F_NEXT, 7);
            d.store(0, TABLE, 32, F_INDIRECT, 0);
            d.publish(0);
        },
        |f| *f == Fault::Unterminated,
    );
    // The table is outside RAM, or not a whole number of descriptors.
    hostile(
        |d| {
            d.store(0, 12 << 20, 32, F_INDIRECT, 0);
            d.publish(0);
        },
        |f| *f == Fault::EmptyChain,
    );
    hostile(
        |d| {
            d.store(0, TABLE, 33, F_INDIRECT, 0);
            d.publish(0);
        },
        |f| *f == Fault::EmptyChain,
    );
}

#[test]
fn blk_indirect_request_works() {
    let rig = BlkRig::new("indirect");
    let mem = &rig.mem;
    let mut dev = blk_device(&rig.path, false);
    let mut d = Driver::new(mem, QUEUE, 16);
    let mut q = queues(mem, &d, F_VERSION_1 | F_RING_EVENT_IDX);
    const TABLE: u64 = 0x40_0000;
    header(mem, HDR, T_IN, 1);
    for (i, (addr, len, flags)) in [
        (HDR, 16, F_NEXT),
        (DATA, 512, F_NEXT | F_WRITE),
        (STATUS, 1, F_WRITE),
    ]
    .into_iter()
    .enumerate()
    {
        let raw = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, i as u16 + 1));
        mem.write_obj(raw, GuestAddress(TABLE + 16 * i as u64))
            .unwrap();
    }
    d.store(0, TABLE, 48, F_INDIRECT, 0);
    d.publish(0);
    dev.process(0, &mut q, mem).unwrap();
    assert_eq!(d.used(), vec![(0, 513)]);
    assert_eq!(status(mem, STATUS), S_OK);
    let mut got = [0u8; 4];
    mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(got, [1, 0, 3, 2]);
}

#[test]
fn event_idx_suppresses_interrupts() {
    let rig = BlkRig::new("evidx");
    let mem = &rig.mem;
    let mut dev = blk_device(&rig.path, false);
    let mut d = Driver::new(mem, QUEUE, 16);
    let mut q = queues(mem, &d, F_VERSION_1 | F_RING_EVENT_IDX);
    header(mem, HDR, T_FLUSH, 0);
    // The driver wants an interrupt only after the third used entry.
    d.set_used_event(2);
    d.add(&[(HDR, 16, false), (STATUS, 1, true)]);
    dev.process(0, &mut q, mem).unwrap();
    assert!(!q.take_notify(mem).unwrap());
    d.add(&[(HDR, 16, false), (STATUS, 1, true)]);
    dev.process(0, &mut q, mem).unwrap();
    assert!(!q.take_notify(mem).unwrap());
    d.add(&[(HDR, 16, false), (STATUS, 1, true)]);
    dev.process(0, &mut q, mem).unwrap();
    assert!(q.take_notify(mem).unwrap());
    // The device asks to be kicked for the next chain.
    assert_eq!(d.avail_event(), 3);
    assert_eq!(d.used().len(), 3);
}

/// Wait until `fd` is readable, up to `ms`.
pub(crate) fn readable(fd: &impl AsRawFd, ms: u16) -> bool {
    // SAFETY: the fd stays open for the call (borrowed from `fd`).
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd.as_raw_fd()) };
    let mut p = [PollFd::new(fd, PollFlags::POLLIN)];
    poll(&mut p, PollTimeout::from(ms)).unwrap_or(0) > 0
}

struct Link {
    ours: BufReader<UnixStream>,
}

impl Link {
    fn send(&mut self, line: &str) -> serde_json::Value {
        let s = self.ours.get_mut();
        s.write_all(line.as_bytes()).unwrap();
        s.write_all(b"\n").unwrap();
        let mut reply = String::new();
        self.ours.read_line(&mut reply).unwrap();
        serde_json::from_str(&reply).unwrap()
    }
}

fn worker_fds(queues: usize) -> (DeviceFds, Link, Arc<EventFd>, Arc<EventFd>, Vec<EventFd>) {
    let (theirs, ours) = UnixStream::pair().unwrap();
    ours.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let call = EventFd::new(EFD_NONBLOCK).unwrap();
    let error = EventFd::new(EFD_NONBLOCK).unwrap();
    let kicks: Vec<EventFd> = (0..queues)
        .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
        .collect();
    let fds = DeviceFds {
        link: theirs,
        call: call.try_clone().unwrap(),
        error: error.try_clone().unwrap(),
        kicks: kicks.iter().map(|k| k.try_clone().unwrap()).collect(),
    };
    (
        fds,
        Link {
            ours: BufReader::new(ours),
        },
        Arc::new(call),
        Arc::new(error),
        kicks,
    )
}

fn activate_line(features: u64, d: &Driver) -> String {
    let s = d.setup(0);
    format!(
        r#"{{"event":"activate","features":{features},"queues":[{{"index":0,"size":{},"desc":{},"avail":{},"used":{}}}]}}"#,
        s.size, s.desc, s.avail, s.used
    )
}

#[test]
fn worker_serves_the_link_and_reports_faults() {
    let rig = BlkRig::new("worker");
    let mem = Arc::new(test_memory());
    let (fds, mut link, call, error, kicks) = worker_fds(1);
    let dev = blk_device(&rig.path, false);
    let handle = spawn(Box::new(dev), mem.clone(), fds).unwrap();
    let mut d = Driver::new(&mem, QUEUE, 16);

    // Unoffered features and rings outside RAM are refused.
    let r = link.send(&activate_line(1 << 40, &d));
    assert_eq!(r["ok"], false, "{r}");
    let bad =
        activate_line(F_VERSION_1, &d).replace(&format!("\"used\":{}", d.used), "\"used\":9437184");
    assert_eq!(link.send(&bad)["ok"], false);
    assert_eq!(link.send("{\"event\":\"bogus\"}")["ok"], false);

    // A request queued before DRIVER_OK is served on activate.
    header(&mem, HDR, T_IN, 2);
    d.add(&[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)]);
    let r = link.send(&activate_line(F_VERSION_1 | F_RING_EVENT_IDX, &d));
    assert_eq!(r["ok"], true, "{r}");
    assert!(readable(call.as_ref(), 5000), "no interrupt");
    call.read().unwrap();
    assert_eq!(d.used(), vec![(0, 513)]);

    // A kick serves a new request (the driver asks for its interrupt).
    d.set_used_event(1);
    header(&mem, HDR, T_FLUSH, 0);
    d.add(&[(HDR, 16, false), (STATUS, 1, true)]);
    kicks[0].write(1).unwrap();
    assert!(readable(call.as_ref(), 5000), "no interrupt");
    call.read().unwrap();
    assert_eq!(d.used().len(), 1);

    // A descriptor loop: the device stops and writes the error eventfd.
    d.store(5, HDR, 16, F_NEXT, 5);
    d.publish(5);
    kicks[0].write(1).unwrap();
    assert!(readable(error.as_ref(), 5000), "no device error");
    error.read().unwrap();
    // Further kicks are ignored until the driver resets, even with a good
    // request waiting behind the loop: a device that kept serving would
    // complete it (or fault on the loop again).
    const UNTOUCHED: u8 = 0xee;
    mem.write_obj(UNTOUCHED, GuestAddress(STATUS)).unwrap();
    header(&mem, HDR, T_GET_ID, 0);
    d.add(&[(HDR, 16, false), (DATA, 20, true), (STATUS, 1, true)]);
    kicks[0].write(1).unwrap();
    // The worker takes the kick off its eventfd before it looks at the
    // queues; once the kick is gone, a link message sent now is answered
    // only after that kick's turn of the loop is over.
    let deadline = Instant::now() + Duration::from_secs(5);
    while readable(&kicks[0], 0) {
        assert!(Instant::now() < deadline, "the worker never took the kick");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(link.send("{\"event\":\"bogus\"}")["ok"], false);
    assert_eq!(d.used(), vec![], "a failed device completed a request");
    assert_eq!(mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), UNTOUCHED);
    assert!(!readable(call.as_ref(), 0), "a failed device interrupted");
    assert!(!readable(error.as_ref(), 0), "the device faulted again");
    assert_eq!(link.send("{\"event\":\"reset\"}")["ok"], true);

    // After the reset the driver starts over on fresh rings.
    let mut d = Driver::new(&mem, QUEUE, 16);
    assert_eq!(link.send(&activate_line(F_VERSION_1, &d))["ok"], true);
    header(&mem, HDR, T_GET_ID, 0);
    d.add(&[(HDR, 16, false), (DATA, 20, true), (STATUS, 1, true)]);
    kicks[0].write(1).unwrap();
    assert!(readable(call.as_ref(), 5000));
    assert_eq!(d.used(), vec![(0, 21)]);
    assert!(handle.is_running());

    // The VMM going away ends the worker.
    drop(link);
    let deadline = Instant::now() + Duration::from_secs(5);
    while handle.is_running() {
        assert!(Instant::now() < deadline, "worker still running");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_quiesced_worker_takes_nothing_and_a_resumed_queue_goes_on_from_its_saved_positions() {
    let rig = BlkRig::new("quiesce");
    let mem = Arc::new(test_memory());
    let (fds, mut link, call, _error, kicks) = worker_fds(1);
    let handle = spawn(Box::new(blk_device(&rig.path, false)), mem.clone(), fds).unwrap();
    let mut d = Driver::new(&mem, QUEUE, 16);
    assert_eq!(link.send(&activate_line(F_VERSION_1, &d))["ok"], true);
    header(&mem, HDR, T_GET_ID, 0);
    d.add(&[(HDR, 16, false), (DATA, 20, true), (STATUS, 1, true)]);
    kicks[0].write(1).unwrap();
    assert!(readable(call.as_ref(), 5000));
    call.read().unwrap();
    assert_eq!(d.used(), vec![(0, 21)]);

    // Quiesced: a kicked request stays on the avail ring, untouched.
    let control = handle.quiesce_control();
    control
        .quiesce(Instant::now() + Duration::from_secs(5))
        .unwrap();
    header(&mem, HDR, T_FLUSH, 0);
    d.add(&[(HDR, 16, false), (STATUS, 1, true)]);
    kicks[0].write(1).unwrap();
    assert!(!readable(call.as_ref(), 300), "a quiesced device answered");
    assert_eq!(d.used(), vec![]);
    // Resumed: the request waiting is served first.
    control.resume();
    assert!(readable(call.as_ref(), 5000), "not served after resume");
    call.read().unwrap();
    assert_eq!(d.used(), vec![(3, 1)]);
    drop(handle);

    // A new worker (a migration's destination) resumes the running queue
    // where this one stopped: nothing answered twice (the first request's
    // buffer, marked, stays as it is), the next one served.
    const MARK: u8 = 0xee;
    mem.write_slice(&[MARK; 20], GuestAddress(DATA)).unwrap();
    let (fds, mut link, call, error, kicks) = worker_fds(1);
    let handle = spawn(Box::new(blk_device(&rig.path, false)), mem.clone(), fds).unwrap();
    let s = d.setup(0);
    let resume = format!(
        r#"{{"event":"activate","features":{F_VERSION_1},"queues":[{{"index":0,"size":{},"desc":{},"avail":{},"used":{},"next_avail":2,"next_used":2}}]}}"#,
        s.size, s.desc, s.avail, s.used
    );
    assert_eq!(link.send(&resume)["ok"], true);
    header(&mem, HDR, T_GET_ID, 0);
    d.add(&[
        (HDR, 16, false),
        (DATA + 0x1000, 20, true),
        (STATUS, 1, true),
    ]);
    kicks[0].write(1).unwrap();
    assert!(readable(call.as_ref(), 5000));
    assert_eq!(d.used(), vec![(5, 21)], "only the new request");
    let mut first = [0u8; 20];
    mem.read_slice(&mut first, GuestAddress(DATA)).unwrap();
    assert_eq!(first, [MARK; 20], "the first request was served again");
    let idx: u16 = mem.read_obj(GuestAddress(s.used + 2)).unwrap();
    assert_eq!(idx, 3);

    // A resumed activation the worker refuses is also an error eventfd
    // (the VMM did not wait for the answer).
    let bad = resume.replace(&format!("\"used\":{}", s.used), "\"used\":9437184");
    assert_eq!(link.send(&bad)["ok"], false);
    assert!(readable(error.as_ref(), 5000), "no error eventfd");
    drop(handle);
}

//! virtio-blk (device ID 2) over blkback's [`Disk`].
//!
//! A request is a chain of a 16-byte header (type, reserved, sector) in
//! device-readable buffers, then data, then one device-writable status
//! byte. Framing is free (VIRTIO_F_VERSION_1 implies ANY_LAYOUT), so
//! [`split_request`] treats the readable and the writable buffers as byte
//! streams: the first 16 readable bytes are the header, the last writable
//! byte is the status. The status is written last, after the data.

use kxen_blkback::Disk;
use tracing::{debug, warn};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};

use crate::chain::{self, iovecs, read_segs, split_at, total, write_segs, Chain, Seg};
use crate::device::{Queues, VirtioDevice, F_RING_EVENT_IDX, F_RING_INDIRECT_DESC, F_VERSION_1};
use crate::error::Fault;
use crate::memory::GuestMem;

pub const DEVICE_ID: u32 = 2;

pub const F_SEG_MAX: u64 = 1 << 2;
pub const F_RO: u64 = 1 << 5;
pub const F_BLK_SIZE: u64 = 1 << 6;
pub const F_FLUSH: u64 = 1 << 9;
pub const F_TOPOLOGY: u64 = 1 << 10;
pub const F_DISCARD: u64 = 1 << 13;

pub const T_IN: u32 = 0;
pub const T_OUT: u32 = 1;
pub const T_FLUSH: u32 = 4;
pub const T_GET_ID: u32 = 8;
pub const T_DISCARD: u32 = 11;

pub const S_OK: u8 = 0;
pub const S_IOERR: u8 = 1;
pub const S_UNSUPP: u8 = 2;

pub const HEADER_LEN: u64 = 16;
pub const SECTOR: u64 = 512;
/// Bytes of the device ID string (GET_ID).
pub const ID_LEN: usize = 20;
/// Data segments per request: the queue size less header and status.
pub const SEG_MAX: u32 = 254;
/// Ranges per discard request.
pub const MAX_DISCARD_SEG: u32 = 16;
/// Sectors per discard range (2 GiB).
pub const MAX_DISCARD_SECTORS: u32 = 1 << 22;
/// Bytes of `struct virtio_blk_config` we fill (through the discard fields).
pub const CONFIG_LEN: usize = 48;

/// Where a request's parts are in guest memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlkLayout {
    /// The 16 header bytes.
    pub header: Vec<Seg>,
    /// Device-readable bytes after the header (OUT data, discard ranges).
    pub out_data: Vec<Seg>,
    /// Device-writable bytes before the status (IN data, the ID).
    pub in_data: Vec<Seg>,
    /// The status byte.
    pub status: u64,
}

/// Split a chain into header, data and status. A chain with a short
/// header or no writable byte is malformed (the device faults).
pub fn split_request(chain: &Chain) -> Result<BlkLayout, Fault> {
    let readable = chain.readable();
    let writable = chain.writable();
    let rlen = total(&readable);
    if rlen < HEADER_LEN {
        return Err(Fault::ShortHeader(rlen as usize));
    }
    let wlen = total(&writable);
    if wlen == 0 {
        return Err(Fault::NoStatus);
    }
    let (header, out_data) = split_at(&readable, HEADER_LEN);
    let (in_data, _) = split_at(&writable, wlen - 1);
    // The status is the last writable byte. Zero-length descriptors hold
    // no byte (and their addresses are never checked): the first segment
    // after the split may be one of them, so look for the last real byte.
    let status = writable
        .iter()
        .rev()
        .find(|s| s.len > 0)
        .map(|s| s.addr.wrapping_add(u64::from(s.len) - 1))
        .ok_or(Fault::NoStatus)?;
    Ok(BlkLayout {
        header,
        out_data,
        in_data,
        status,
    })
}

/// The request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlkHeader {
    pub kind: u32,
    pub sector: u64,
}

impl BlkHeader {
    pub fn from_bytes(b: &[u8; 16]) -> BlkHeader {
        BlkHeader {
            kind: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            sector: u64::from_le_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]),
        }
    }
}

/// What a request asks for, checked against the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlkOp {
    Read {
        offset: u64,
        data: Vec<Seg>,
    },
    Write {
        offset: u64,
        data: Vec<Seg>,
    },
    Flush,
    GetId {
        data: Vec<Seg>,
    },
    /// (byte offset, byte length) ranges.
    Discard(Vec<(u64, u64)>),
    /// Answer with this status without touching the disk.
    Fail(u8),
}

/// Disk facts request decoding needs.
#[derive(Debug, Clone, Copy)]
pub struct DiskGeometry {
    /// 512-byte sectors.
    pub sectors: u64,
    pub readonly: bool,
    pub discard: bool,
}

fn in_range(geo: &DiskGeometry, sector: u64, bytes: u64) -> Option<u64> {
    let offset = sector.checked_mul(SECTOR)?;
    let end = offset.checked_add(bytes)?;
    (end <= geo.sectors.checked_mul(SECTOR)?).then_some(offset)
}

/// Decode a request. `ranges` are the discard range bytes (read from the
/// guest by the caller; ignored for other types).
pub fn decode(geo: &DiskGeometry, header: BlkHeader, layout: &BlkLayout, ranges: &[u8]) -> BlkOp {
    let out_len = total(&layout.out_data);
    let in_len = total(&layout.in_data);
    match header.kind {
        T_IN | T_OUT => {
            let write = header.kind == T_OUT;
            let (data, stray) = if write {
                (&layout.out_data, in_len)
            } else {
                (&layout.in_data, out_len)
            };
            let len = total(data);
            if stray != 0 || !len.is_multiple_of(SECTOR) || (write && geo.readonly) {
                return BlkOp::Fail(S_IOERR);
            }
            let Some(offset) = in_range(geo, header.sector, len) else {
                return BlkOp::Fail(S_IOERR);
            };
            let data = data.clone();
            if write {
                BlkOp::Write { offset, data }
            } else {
                BlkOp::Read { offset, data }
            }
        }
        T_FLUSH => BlkOp::Flush,
        T_GET_ID => BlkOp::GetId {
            data: layout.in_data.clone(),
        },
        T_DISCARD if geo.discard && !geo.readonly => {
            if out_len == 0
                || !out_len.is_multiple_of(16)
                || out_len / 16 > u64::from(MAX_DISCARD_SEG)
                || ranges.len() as u64 != out_len
            {
                return BlkOp::Fail(S_IOERR);
            }
            let mut out = Vec::new();
            for r in ranges.chunks_exact(16) {
                let sector = u64::from_le_bytes(r[0..8].try_into().unwrap_or_default());
                let count = u32::from_le_bytes(r[8..12].try_into().unwrap_or_default());
                let flags = u32::from_le_bytes(r[12..16].try_into().unwrap_or_default());
                if flags != 0 {
                    return BlkOp::Fail(S_UNSUPP);
                }
                if count > MAX_DISCARD_SECTORS {
                    return BlkOp::Fail(S_IOERR);
                }
                let len = u64::from(count) * SECTOR;
                let Some(offset) = in_range(geo, sector, len) else {
                    return BlkOp::Fail(S_IOERR);
                };
                out.push((offset, len));
            }
            BlkOp::Discard(out)
        }
        _ => BlkOp::Fail(S_UNSUPP),
    }
}

/// Read a chain's header and decode it: the pure part of serving a
/// request, shared with the fuzz target.
pub fn parse(
    mem: &GuestMem,
    geo: &DiskGeometry,
    chain: &Chain,
) -> Result<(BlkLayout, BlkOp), Fault> {
    let layout = split_request(chain)?;
    let mut hdr = [0u8; 16];
    read_segs(mem, &layout.header, &mut hdr)?;
    let header = BlkHeader::from_bytes(&hdr);
    let mut ranges = Vec::new();
    if header.kind == T_DISCARD {
        let n = total(&layout.out_data);
        if n <= u64::from(MAX_DISCARD_SEG) * 16 {
            ranges = vec![0u8; n as usize];
            read_segs(mem, &layout.out_data, &mut ranges)?;
        }
    }
    let op = decode(geo, header, &layout, &ranges);
    Ok((layout, op))
}

/// What the disk offers and how the guest sees it.
pub struct BlkConfig {
    /// GET_ID's answer (at most 20 bytes used).
    pub id: String,
    /// Offer discard (if writable).
    pub discard: bool,
}

pub struct BlkDevice {
    name: String,
    disk: Disk,
    id: [u8; ID_LEN],
    discard: bool,
}

impl BlkDevice {
    pub fn new(name: impl Into<String>, disk: Disk, cfg: BlkConfig) -> BlkDevice {
        let mut id = [0u8; ID_LEN];
        for (d, s) in id.iter_mut().zip(cfg.id.bytes()) {
            *d = s;
        }
        let discard = cfg.discard && !disk.readonly();
        BlkDevice {
            name: name.into(),
            disk,
            id,
            discard,
        }
    }

    fn geometry(&self) -> DiskGeometry {
        DiskGeometry {
            sectors: self.disk.sectors(),
            readonly: self.disk.readonly(),
            discard: self.discard,
        }
    }

    /// Serve one request; returns the bytes written to the guest (data
    /// and status).
    pub fn serve(&self, mem: &GuestMem, chain: &Chain) -> Result<u32, Fault> {
        let (layout, op) = parse(mem, &self.geometry(), chain)?;
        let (status, written) = self.execute(mem, op)?;
        mem.write_obj(status, GuestAddress(layout.status))
            .map_err(|_| Fault::OutOfRam {
                addr: layout.status,
                len: 1,
            })?;
        Ok(written.saturating_add(1))
    }

    fn execute(&self, mem: &GuestMem, op: BlkOp) -> Result<(u8, u32), Fault> {
        let io = |r: std::io::Result<()>, what: &str| match r {
            Ok(()) => S_OK,
            Err(e) => {
                warn!(device = %self.name, "{what}: {e}");
                S_IOERR
            }
        };
        Ok(match op {
            BlkOp::Fail(s) => {
                debug!(device = %self.name, status = s, "request refused");
                (s, 0)
            }
            BlkOp::Read { offset, data } => {
                let mut iov = iovecs(mem, &data)?;
                // SAFETY: the iovecs point into guest RAM mapped by `mem`,
                // which outlives the call; every range was checked to be
                // in RAM when the chain was walked.
                let r = unsafe { self.disk.read_vectored(&mut iov, offset) };
                let s = io(r, "read");
                (s, if s == S_OK { total(&data) as u32 } else { 0 })
            }
            BlkOp::Write { offset, data } => {
                let mut iov = iovecs(mem, &data)?;
                // SAFETY: as for reads; the disk only reads the buffers.
                let r = unsafe { self.disk.write_vectored(&mut iov, offset) };
                (io(r, "write"), 0)
            }
            BlkOp::Flush => (io(self.disk.flush(), "flush"), 0),
            BlkOp::GetId { data } => {
                let n = write_segs(mem, &data, &self.id)?;
                (S_OK, n as u32)
            }
            BlkOp::Discard(ranges) => {
                let mut s = S_OK;
                for (offset, len) in ranges {
                    s = io(self.disk.discard(offset, len), "discard");
                    if s != S_OK {
                        break;
                    }
                }
                (s, 0)
            }
        })
    }
}

impl VirtioDevice for BlkDevice {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn device_id(&self) -> u32 {
        DEVICE_ID
    }

    fn features(&self) -> u64 {
        let mut f = F_VERSION_1
            | F_RING_EVENT_IDX
            | F_RING_INDIRECT_DESC
            | F_SEG_MAX
            | F_BLK_SIZE
            | F_FLUSH
            | F_TOPOLOGY;
        if self.disk.readonly() {
            f |= F_RO;
        }
        if self.discard {
            f |= F_DISCARD;
        }
        f
    }

    fn config(&self) -> Vec<u8> {
        let logical = self.disk.logical_sector_size().max(512);
        let physical = self.disk.physical_sector_size().max(logical);
        let mut c = vec![0u8; CONFIG_LEN];
        c[0..8].copy_from_slice(&self.disk.sectors().to_le_bytes());
        // size_max (8) and geometry (16) stay 0: not offered.
        c[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        c[20..24].copy_from_slice(&logical.to_le_bytes());
        // Topology: physical_block_exp, alignment_offset, min_io_size,
        // opt_io_size (in logical blocks).
        c[24] = (physical / logical).trailing_zeros() as u8;
        c[26..28].copy_from_slice(&1u16.to_le_bytes());
        // writeback (32) is 0; num_queues (34) only with MQ.
        c[34..36].copy_from_slice(&1u16.to_le_bytes());
        if self.discard {
            let align = (self.disk.discard_granularity().max(512) / 512).max(1);
            c[36..40].copy_from_slice(&MAX_DISCARD_SECTORS.to_le_bytes());
            c[40..44].copy_from_slice(&MAX_DISCARD_SEG.to_le_bytes());
            c[44..48].copy_from_slice(&align.to_le_bytes());
        }
        c
    }

    fn num_queues(&self) -> usize {
        1
    }

    fn process(&mut self, index: usize, q: &mut Queues, mem: &GuestMem) -> Result<(), Fault> {
        if index != 0 {
            return Ok(());
        }
        loop {
            let Some(queue) = q.queue(0) else {
                return Ok(());
            };
            queue
                .disable_notification(mem)
                .map_err(|e| Fault::Queue(e.to_string()))?;
            while let Some(chain) = chain::pop(q.queue(0).expect("ready"), mem)? {
                let len = self.serve(mem, &chain)?;
                q.add_used(mem, 0, chain.head, len)?;
            }
            let queue = q.queue(0).expect("ready");
            if !queue
                .enable_notification(mem)
                .map_err(|e| Fault::Queue(e.to_string()))?
            {
                return Ok(());
            }
        }
    }
}

//! The backing store: a raw image file or a host block device.
//!
//! I/O goes straight between the disk and the guest's granted pages
//! (preadv/pwritev on iovecs that point into them). O_DIRECT is used where
//! the filesystem supports it; a request whose buffers O_DIRECT refuses
//! (EINVAL: alignment below the device's logical block size) is retried
//! through a second, buffered descriptor, so correctness never depends on
//! alignment.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};

use tracing::{info, warn};
use xen_abi::io::blkif::SECTOR_SIZE;

use crate::error::BlkError;
use crate::spec::VbdSpec;

/// `_IOR(0x12, 114, u64)`: a block device's size in bytes.
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
/// `_IO(0x12, 119)`: discard a byte range `[start, len]` of a block device.
const BLKDISCARD: libc::c_ulong = 0x1277;

pub struct Disk {
    /// O_DIRECT where possible.
    file: File,
    /// Buffered; for what O_DIRECT refuses. Same file, so `fdatasync` on
    /// either commits both.
    buffered: File,
    direct: bool,
    block_device: bool,
    readonly: bool,
    /// 512-byte sectors.
    sectors: u64,
    logical_sector: u32,
    physical_sector: u32,
    discard_granularity: u32,
}

impl Disk {
    pub fn open(spec: &VbdSpec) -> Result<Disk, BlkError> {
        let readonly = spec.effective_readonly();
        let path = &spec.path;
        let open = |direct: bool| {
            let mut o = OpenOptions::new();
            o.read(true).write(!readonly);
            if direct {
                o.custom_flags(libc::O_DIRECT);
            }
            o.open(path)
        };
        let err = |source| BlkError::Open {
            path: path.clone(),
            source,
        };
        let buffered = open(false).map_err(err)?;
        let (file, direct) = if spec.direct_io {
            match open(true) {
                Ok(f) => (f, true),
                Err(e) => {
                    info!(path = %path.display(), error = %e, "O_DIRECT refused, using the page cache");
                    (buffered.try_clone().map_err(err)?, false)
                }
            }
        } else {
            (buffered.try_clone().map_err(err)?, false)
        };
        let meta = buffered.metadata().map_err(err)?;
        let query = |source| BlkError::Query {
            path: path.clone(),
            source,
        };
        let block_device = meta.file_type().is_block_device();
        let (bytes, logical, physical, granularity) = if block_device {
            let bytes = ioctl_u64(&buffered, BLKGETSIZE64).map_err(query)?;
            let logical = ioctl_int(&buffered, libc::BLKSSZGET as libc::c_ulong).map_err(query)?;
            let physical =
                ioctl_int(&buffered, libc::BLKPBSZGET as libc::c_ulong).map_err(query)?;
            (bytes, logical, physical, physical)
        } else if meta.file_type().is_file() {
            let blk = u32::try_from(meta.blksize()).unwrap_or(4096).max(512);
            (meta.len(), SECTOR_SIZE as u32, SECTOR_SIZE as u32, blk)
        } else {
            return Err(BlkError::NotADisk(path.clone()));
        };
        Ok(Disk {
            file,
            buffered,
            direct,
            block_device,
            readonly,
            sectors: bytes / SECTOR_SIZE as u64,
            logical_sector: logical.max(SECTOR_SIZE as u32),
            physical_sector: physical.max(logical).max(SECTOR_SIZE as u32),
            discard_granularity: granularity,
        })
    }

    /// Size in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    pub fn logical_sector_size(&self) -> u32 {
        self.logical_sector
    }

    pub fn physical_sector_size(&self) -> u32 {
        self.physical_sector
    }

    pub fn discard_granularity(&self) -> u32 {
        self.discard_granularity
    }

    pub fn readonly(&self) -> bool {
        self.readonly
    }

    pub fn is_direct(&self) -> bool {
        self.direct
    }

    pub fn is_block_device(&self) -> bool {
        self.block_device
    }

    /// Read into `iov` from byte `offset`, all of it.
    ///
    /// # Safety
    /// Every iovec must describe memory writable for its whole length
    /// until this returns.
    pub unsafe fn read_vectored(&self, iov: &mut [libc::iovec], offset: u64) -> io::Result<()> {
        // SAFETY: forwarded from the caller.
        unsafe { self.transfer(iov, offset, false) }
    }

    /// Write `iov` at byte `offset`, all of it.
    ///
    /// # Safety
    /// Every iovec must describe readable memory until this returns.
    pub unsafe fn write_vectored(&self, iov: &mut [libc::iovec], offset: u64) -> io::Result<()> {
        if self.readonly {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        // SAFETY: forwarded from the caller.
        unsafe { self.transfer(iov, offset, true) }
    }

    /// # Safety
    /// As for read_vectored/write_vectored.
    unsafe fn transfer(&self, iov: &mut [libc::iovec], offset: u64, write: bool) -> io::Result<()> {
        // SAFETY: forwarded from the caller.
        match unsafe { transfer_all(&self.file, iov, offset, write) } {
            Err(e) if self.direct && e.raw_os_error() == Some(libc::EINVAL) => {
                // SAFETY: forwarded from the caller.
                unsafe { transfer_all(&self.buffered, iov, offset, write) }
            }
            other => other,
        }
    }

    /// Commit written data to stable storage.
    pub fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Drop the contents of `len` bytes at `offset`; the range reads back
    /// as zeroes on files (holes).
    pub fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        if self.readonly {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        if len == 0 {
            return Ok(());
        }
        let fd = self.buffered.as_raw_fd();
        if self.block_device {
            let range = [offset, len];
            // SAFETY: BLKDISCARD reads two u64s from the pointer, which
            // points at `range` for the duration of the call.
            let r = unsafe { libc::ioctl(fd, BLKDISCARD as _, range.as_ptr()) };
            return if r < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            };
        }
        let (off, len) = (
            i64::try_from(offset).map_err(io::Error::other)?,
            i64::try_from(len).map_err(io::Error::other)?,
        );
        // SAFETY: fallocate on an owned descriptor; no memory is passed.
        let r = unsafe {
            libc::fallocate(
                fd,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off,
                len,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            warn!(error = %e, "discard failed");
            return Err(e);
        }
        Ok(())
    }
}

/// preadv/pwritev until every byte moved, advancing `iov` past partial
/// transfers. A read that hits end-of-file is an error.
///
/// # Safety
/// Every iovec must describe memory valid for the transfer's direction.
unsafe fn transfer_all(
    file: &File,
    mut iov: &mut [libc::iovec],
    mut offset: u64,
    write: bool,
) -> io::Result<()> {
    // The kernel takes at most IOV_MAX (1024) iovecs per call.
    const IOV_MAX: usize = 1024;
    while !iov.is_empty() {
        let n = iov.len().min(IOV_MAX);
        let off = i64::try_from(offset).map_err(io::Error::other)?;
        // SAFETY: the iovecs are valid per the caller; the count is theirs.
        let r = unsafe {
            if write {
                libc::pwritev(file.as_raw_fd(), iov.as_ptr(), n as libc::c_int, off)
            } else {
                libc::preadv(file.as_raw_fd(), iov.as_ptr(), n as libc::c_int, off)
            }
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        let mut moved = r as usize;
        offset += moved as u64;
        while moved > 0 {
            let first = &mut iov[0];
            if moved >= first.iov_len {
                moved -= first.iov_len;
                iov = &mut iov[1..];
            } else {
                // SAFETY: advancing within the same buffer.
                first.iov_base = unsafe { first.iov_base.cast::<u8>().add(moved) }.cast();
                first.iov_len -= moved;
                moved = 0;
            }
        }
        // Drop fully consumed leading empty iovecs.
        while iov.first().is_some_and(|v| v.iov_len == 0) {
            iov = &mut iov[1..];
        }
    }
    Ok(())
}

fn ioctl_u64(f: &File, req: libc::c_ulong) -> io::Result<u64> {
    let mut v: u64 = 0;
    // SAFETY: the ioctl writes one u64 to a live local.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), req as _, &mut v as *mut u64) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v)
}

fn ioctl_int(f: &File, req: libc::c_ulong) -> io::Result<u32> {
    let mut v: libc::c_int = 0;
    // SAFETY: the ioctl writes one int to a live local.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), req as _, &mut v as *mut libc::c_int) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u32::try_from(v).unwrap_or(SECTOR_SIZE as u32))
}

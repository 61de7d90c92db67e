//! Guest descriptor chains, checked once and then treated as plain lists
//! of guest buffers.
//!
//! virtio-queue's `DescriptorChain` stops iterating, without saying why,
//! on a descriptor loop, a `next` index past the table, an unreadable
//! table, a nested indirect table or a chain over 4 GiB. [`walk`] turns
//! each of those into a [`Fault`] by noticing that the last descriptor it
//! got still had `NEXT` set, and checks that every buffer lies in guest RAM
//! and that device-writable buffers follow the readable ones.

use std::ops::Deref;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::error::Fault;
use crate::memory::GuestMem;

/// Most descriptors one chain may have (direct plus indirect).
pub const MAX_CHAIN: usize = 1024;

/// One guest buffer of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    /// Device-writable.
    pub write: bool,
}

/// A contiguous piece of guest memory (part of a descriptor).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seg {
    pub addr: u64,
    pub len: u32,
}

/// A descriptor chain taken off the available ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub head: u16,
    pub descs: Vec<Desc>,
}

impl Chain {
    /// The device-readable buffers (they come first).
    pub fn readable(&self) -> Vec<Seg> {
        self.descs
            .iter()
            .filter(|d| !d.write)
            .map(|d| Seg {
                addr: d.addr,
                len: d.len,
            })
            .collect()
    }

    /// The device-writable buffers.
    pub fn writable(&self) -> Vec<Seg> {
        self.descs
            .iter()
            .filter(|d| d.write)
            .map(|d| Seg {
                addr: d.addr,
                len: d.len,
            })
            .collect()
    }
}

/// Walk a chain, checking it as described in the module docs.
pub fn walk<M>(chain: DescriptorChain<M>, mem: &GuestMem) -> Result<Chain, Fault>
where
    M: Deref<Target = GuestMem>,
{
    let head = chain.head_index();
    let mut descs = Vec::new();
    let mut more = false;
    let mut seen_write = false;
    for d in chain {
        if descs.len() == MAX_CHAIN {
            return Err(Fault::TooLong(MAX_CHAIN));
        }
        let desc = Desc {
            addr: d.addr().0,
            len: d.len(),
            write: d.is_write_only(),
        };
        if desc.len > 0 && !GuestMemoryBackend::check_range(mem, d.addr(), desc.len as usize) {
            return Err(Fault::OutOfRam {
                addr: desc.addr,
                len: desc.len,
            });
        }
        if seen_write && !desc.write {
            return Err(Fault::Order);
        }
        seen_write |= desc.write;
        more = d.has_next();
        descs.push(desc);
    }
    if descs.is_empty() {
        return Err(Fault::EmptyChain);
    }
    if more {
        return Err(Fault::Unterminated);
    }
    Ok(Chain { head, descs })
}

/// Take the next available chain of `queue`, checked.
pub fn pop(queue: &mut Queue, mem: &GuestMem) -> Result<Option<Chain>, Fault> {
    let mut iter = queue.iter(mem).map_err(|e| Fault::Queue(e.to_string()))?;
    match iter.next() {
        Some(chain) => walk(chain, mem).map(Some),
        None => Ok(None),
    }
}

/// Total bytes of `segs`.
pub fn total(segs: &[Seg]) -> u64 {
    segs.iter().map(|s| u64::from(s.len)).sum()
}

/// Split `segs` after `n` bytes: (the first n bytes, the rest). The first
/// part is shorter than `n` if `segs` is.
pub fn split_at(segs: &[Seg], n: u64) -> (Vec<Seg>, Vec<Seg>) {
    let mut head = Vec::new();
    let mut tail = Vec::new();
    let mut left = n;
    for s in segs {
        if left == 0 {
            tail.push(*s);
        } else if u64::from(s.len) <= left {
            head.push(*s);
            left -= u64::from(s.len);
        } else {
            // left < s.len, so it fits in u32.
            let cut = left as u32;
            head.push(Seg {
                addr: s.addr,
                len: cut,
            });
            tail.push(Seg {
                addr: s.addr.wrapping_add(u64::from(cut)),
                len: s.len - cut,
            });
            left = 0;
        }
    }
    (head, tail)
}

/// Copy guest bytes from `segs` into `buf` (as many as both hold);
/// returns the count.
pub fn read_segs(mem: &GuestMem, segs: &[Seg], buf: &mut [u8]) -> Result<usize, Fault> {
    let mut done = 0;
    for s in segs {
        if done == buf.len() {
            break;
        }
        let n = (s.len as usize).min(buf.len() - done);
        mem.read_slice(&mut buf[done..done + n], GuestAddress(s.addr))
            .map_err(|_| Fault::OutOfRam {
                addr: s.addr,
                len: s.len,
            })?;
        done += n;
    }
    Ok(done)
}

/// Copy `data` into the guest buffers `segs` (as much as they hold);
/// returns the count.
pub fn write_segs(mem: &GuestMem, segs: &[Seg], data: &[u8]) -> Result<usize, Fault> {
    let mut done = 0;
    for s in segs {
        if done == data.len() {
            break;
        }
        let n = (s.len as usize).min(data.len() - done);
        mem.write_slice(&data[done..done + n], GuestAddress(s.addr))
            .map_err(|_| Fault::OutOfRam {
                addr: s.addr,
                len: s.len,
            })?;
        done += n;
    }
    Ok(done)
}

/// Host iovecs for `segs` (a segment may span guest regions, so one
/// segment can give several iovecs). The pointers stay valid as long as
/// `mem` lives.
pub fn iovecs(mem: &GuestMem, segs: &[Seg]) -> Result<Vec<libc::iovec>, Fault> {
    let mut out = Vec::with_capacity(segs.len());
    for s in segs {
        if s.len == 0 {
            continue;
        }
        let bad = || Fault::OutOfRam {
            addr: s.addr,
            len: s.len,
        };
        for slice in GuestMemoryBackend::get_slices(mem, GuestAddress(s.addr), s.len as usize) {
            let slice = slice.map_err(|_| bad())?;
            out.push(libc::iovec {
                iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                iov_len: slice.len(),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_segments() {
        let segs = [
            Seg {
                addr: 0x1000,
                len: 10,
            },
            Seg {
                addr: 0x2000,
                len: 20,
            },
        ];
        let (a, b) = split_at(&segs, 16);
        assert_eq!(
            a,
            vec![
                segs[0],
                Seg {
                    addr: 0x2000,
                    len: 6
                }
            ]
        );
        assert_eq!(
            b,
            vec![Seg {
                addr: 0x2006,
                len: 14
            }]
        );
        let (a, b) = split_at(&segs, 10);
        assert_eq!((a.len(), b.len()), (1, 1));
        let (a, b) = split_at(&segs, 100);
        assert_eq!((total(&a), b.len()), (30, 0));
        let (a, b) = split_at(&segs, 0);
        assert_eq!((a.len(), total(&b)), (0, 30));
    }
}

//! A minimal xenstore client on the shared ring (HVM params STORE_PFN and
//! STORE_EVTCHN).

use core::sync::atomic::{AtomicU32, Ordering};

use xen_abi::hvm::{HVM_PARAM_STORE_EVTCHN, HVM_PARAM_STORE_PFN};
use xen_abi::xenstore::{
    MessageHeader, OFFSET_REQ, OFFSET_REQ_CONS, OFFSET_REQ_PROD, OFFSET_RSP, OFFSET_RSP_CONS,
    OFFSET_RSP_PROD, PAYLOAD_MAX, RING_SIZE, XS_WATCH_EVENT,
};

use crate::time::Deadline;
use crate::{events, xen};

const HDR: usize = core::mem::size_of::<MessageHeader>();

static REQ_ID: AtomicU32 = AtomicU32::new(1);

pub struct Reply {
    pub kind: u32,
    pub len: usize,
    pub buf: [u8; PAYLOAD_MAX],
}

impl Reply {
    pub fn payload(&self) -> &[u8] {
        &self.buf[..self.len]
    }
    /// The payload without trailing NULs.
    pub fn text(&self) -> &[u8] {
        let mut p = self.payload();
        while let [rest @ .., 0] = p {
            p = rest;
        }
        p
    }
}

struct Ring {
    base: *mut u8,
    port: u32,
}

impl Ring {
    fn index(&self, off: usize) -> &'static AtomicU32 {
        // SAFETY: `base` is the identity-mapped xenstore page from
        // HVM_PARAM_STORE_PFN (page aligned, never unmapped); the indices
        // are shared with the server, hence atomics.
        unsafe { AtomicU32::from_ptr(self.base.add(off) as *mut u32) }
    }

    fn put(&self, bytes: &[u8], d: &mut Deadline) -> Result<(), &'static str> {
        let cons = self.index(OFFSET_REQ_CONS);
        let prod = self.index(OFFSET_REQ_PROD);
        for &b in bytes {
            let mut p = prod.load(Ordering::Relaxed);
            while p.wrapping_sub(cons.load(Ordering::Acquire)) >= RING_SIZE as u32 {
                prod.store(p, Ordering::Release);
                xen::send(self.port);
                if d.expired() {
                    return Err("timed out waiting for request ring space");
                }
                xen::sched_yield();
                p = prod.load(Ordering::Relaxed);
            }
            let idx = p as usize & (RING_SIZE - 1);
            // SAFETY: idx < RING_SIZE: a byte of the req array that the
            // server does not read until req_prod moves past it.
            unsafe { self.base.add(OFFSET_REQ + idx).write_volatile(b) };
            prod.store(p.wrapping_add(1), Ordering::Release);
        }
        Ok(())
    }

    fn available(&self) -> usize {
        let cons = self.index(OFFSET_RSP_CONS).load(Ordering::Relaxed);
        let prod = self.index(OFFSET_RSP_PROD).load(Ordering::Acquire);
        prod.wrapping_sub(cons) as usize
    }

    fn wait_for(&self, n: usize, d: &mut Deadline) -> Result<(), &'static str> {
        while self.available() < n {
            events::drain();
            if d.expired() {
                return Err("timed out waiting for a reply");
            }
            xen::sched_yield();
        }
        Ok(())
    }

    fn take(&self, out: &mut [u8]) {
        let cons = self.index(OFFSET_RSP_CONS);
        let mut c = cons.load(Ordering::Relaxed);
        for b in out.iter_mut() {
            let idx = c as usize & (RING_SIZE - 1);
            // SAFETY: idx < RING_SIZE: a byte of the rsp array between
            // rsp_cons and rsp_prod (checked by `wait_for`).
            *b = unsafe { self.base.add(OFFSET_RSP + idx).read_volatile() };
            c = c.wrapping_add(1);
        }
        cons.store(c, Ordering::Release);
    }

    fn skip(&self, mut n: usize) {
        let mut scratch = [0u8; 64];
        while n > 0 {
            let k = n.min(scratch.len());
            self.take(&mut scratch[..k]);
            n -= k;
        }
    }
}

fn ring() -> Result<Ring, &'static str> {
    let pfn = xen::get_param(HVM_PARAM_STORE_PFN).map_err(|_| "get_param(STORE_PFN) failed")?;
    let port =
        xen::get_param(HVM_PARAM_STORE_EVTCHN).map_err(|_| "get_param(STORE_EVTCHN) failed")?;
    if pfn == 0 || pfn >= 1 << 20 || port == 0 {
        return Err("no xenstore ring (STORE_PFN or STORE_EVTCHN is 0 or above 4 GiB)");
    }
    Ok(Ring {
        base: (pfn << 12) as *mut u8,
        port: port as u32,
    })
}

/// Send one request (payload = the parts, concatenated) and wait up to one
/// second for its reply; watch events are skipped.
pub fn request(kind: u32, parts: &[&[u8]], reply: &mut Reply) -> Result<(), &'static str> {
    let ring = ring()?;
    let len: usize = parts.iter().map(|p| p.len()).sum();
    if len > PAYLOAD_MAX {
        return Err("request too long");
    }
    let req_id = REQ_ID.fetch_add(1, Ordering::Relaxed);
    let hdr = MessageHeader {
        kind,
        req_id,
        tx_id: 0,
        len: len as u32,
    };
    let mut hdr_bytes = [0u8; HDR];
    hdr_bytes[0..4].copy_from_slice(&hdr.kind.to_le_bytes());
    hdr_bytes[4..8].copy_from_slice(&hdr.req_id.to_le_bytes());
    hdr_bytes[8..12].copy_from_slice(&hdr.tx_id.to_le_bytes());
    hdr_bytes[12..16].copy_from_slice(&hdr.len.to_le_bytes());

    let mut d = Deadline::after_ms(1_000);
    ring.put(&hdr_bytes, &mut d)?;
    for p in parts {
        ring.put(p, &mut d)?;
    }
    xen::send(ring.port);

    loop {
        ring.wait_for(HDR, &mut d)?;
        let mut h = [0u8; HDR];
        // Peek-free protocol: take the header, then the payload.
        ring.take(&mut h);
        let rkind = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let rid = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        let rlen = u32::from_le_bytes([h[12], h[13], h[14], h[15]]) as usize;
        if rlen > PAYLOAD_MAX {
            return Err("reply longer than XENSTORE_PAYLOAD_MAX");
        }
        ring.wait_for(rlen, &mut d)?;
        if rkind == XS_WATCH_EVENT || rid != req_id {
            ring.skip(rlen);
            xen::send(ring.port);
            continue;
        }
        ring.take(&mut reply.buf[..rlen]);
        xen::send(ring.port);
        reply.kind = rkind;
        reply.len = rlen;
        return Ok(());
    }
}

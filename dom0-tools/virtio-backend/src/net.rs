//! virtio-net (device ID 1) over netback's TAP device.
//!
//! Queue 0 receives (host → guest), queue 1 transmits. Every buffer
//! starts with a 12-byte `virtio_net_hdr_v1`; the TAP is told the same
//! length (`TUNSETVNETHDRSZ`), so frames cross it with the header in
//! place. No checksum or segmentation offload is offered, so the header
//! is all zeroes both ways (plus `num_buffers` on receive): the guest's
//! header is never passed to the host kernel.

use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::Arc;

use kxen_netback::script::{run_hotplug, Action};
use kxen_netback::tap::{Tap, TapQueue};
use kxen_netback::VifSpec;
use tracing::{debug, info, warn};
use virtio_queue::{QueueOwnedT, QueueT};

use crate::chain::{self, iovecs, split_at, total, write_segs, Chain, Seg};
use crate::device::{Queues, VirtioDevice, F_RING_EVENT_IDX, F_RING_INDIRECT_DESC, F_VERSION_1};
use crate::error::{Fault, VirtioError};
use crate::memory::GuestMem;

pub const DEVICE_ID: u32 = 1;

pub const F_MTU: u64 = 1 << 3;
pub const F_MAC: u64 = 1 << 5;
pub const F_MRG_RXBUF: u64 = 1 << 15;
pub const F_STATUS: u64 = 1 << 16;

/// `config.status`: the link is up.
pub const S_LINK_UP: u16 = 1;

/// `struct virtio_net_hdr_v1`.
pub const HDR_LEN: usize = 12;
/// Longest frame (without header) sent or received: 64 KiB of IP plus an
/// Ethernet header with a VLAN tag.
pub const MAX_FRAME: usize = 65535 + 18;
/// The most iovecs one writev(2) takes (Linux's IOV_MAX).
const TX_IOV_MAX: usize = 1024;

pub const RX: usize = 0;
pub const TX: usize = 1;
/// Bytes of `struct virtio_net_config` we fill (mac, status,
/// max_virtqueue_pairs, mtu).
pub const CONFIG_LEN: usize = 12;

/// A transmit chain: where the frame is (after the header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxPacket {
    pub frame: Vec<Seg>,
    pub len: u64,
}

/// Why a well-formed transmit chain is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxDrop {
    Empty,
    TooLong,
}

/// Split a transmit chain. Writable buffers or a header under 12 bytes
/// make it malformed; an empty or oversized frame is only dropped.
pub fn parse_tx(chain: &Chain) -> Result<Result<TxPacket, TxDrop>, Fault> {
    if chain.descs.iter().any(|d| d.write) {
        return Err(Fault::WritableTx);
    }
    let readable = chain.readable();
    let len = total(&readable);
    if len < HDR_LEN as u64 {
        return Err(Fault::ShortHeader(len as usize));
    }
    let (_, frame) = split_at(&readable, HDR_LEN as u64);
    let len = len - HDR_LEN as u64;
    Ok(if len == 0 {
        Err(TxDrop::Empty)
    } else if len > MAX_FRAME as u64 {
        Err(TxDrop::TooLong)
    } else {
        Ok(TxPacket { frame, len })
    })
}

/// The receive header the guest gets.
pub fn rx_header(num_buffers: u16) -> [u8; HDR_LEN] {
    let mut h = [0u8; HDR_LEN];
    h[10..12].copy_from_slice(&num_buffers.to_le_bytes());
    h
}

/// The MAC for a vif spec: the spec's, as the toolstack filled it in.
pub struct NetDevice {
    spec: VifSpec,
    tap: Option<Tap>,
    queue: Arc<TapQueue>,
    /// Buffer for one frame from the TAP, header first.
    rx_buf: Vec<u8>,
    /// Bytes of a frame read from the TAP and not yet delivered.
    rx_pending: Option<usize>,
    /// The guest has no receive buffers: stop reading the TAP until the
    /// receive queue is kicked.
    rx_starved: bool,
    mrg_rxbuf: bool,
    pub stats: NetStats,
}

/// Counters (frames).
#[derive(Debug, Default, Clone, Copy)]
pub struct NetStats {
    pub tx: u64,
    pub tx_dropped: u64,
    pub rx: u64,
    pub rx_dropped: u64,
}

impl NetDevice {
    /// Create the vif's TAP (`vif<domid>.<devid>` or `vifname=`) and run
    /// its hotplug script, as netback does for a PV vif.
    pub fn new(spec: VifSpec) -> Result<NetDevice, VirtioError> {
        spec.validate()?;
        let name = spec.vifname();
        let tap = Tap::create(&name, 1)?;
        tap.set_vnet_hdr_len(HDR_LEN)?;
        tap.set_offload(0)?;
        let queue = tap
            .queue(0)
            .ok_or_else(|| VirtioError::Attach("TAP without a queue".into()))?;
        if let Some(script) = &spec.script {
            run_hotplug(script, Action::Online, &spec, &name, &hotplug_path(&spec))?;
        }
        info!(vif = %name, mac = %spec.mac_string(), "virtio vif up");
        Ok(NetDevice {
            spec,
            tap: Some(tap),
            queue,
            rx_buf: vec![0u8; HDR_LEN + MAX_FRAME],
            rx_pending: None,
            rx_starved: false,
            mrg_rxbuf: false,
            stats: NetStats::default(),
        })
    }

    /// The host interface.
    pub fn tap_name(&self) -> String {
        self.spec.vifname()
    }

    fn transmit(&mut self, q: &mut Queues, mem: &GuestMem) -> Result<(), Fault> {
        loop {
            let Some(queue) = q.queue(TX) else {
                return Ok(());
            };
            queue
                .disable_notification(mem)
                .map_err(|e| Fault::Queue(e.to_string()))?;
            while let Some(c) = chain::pop(q.queue(TX).expect("ready"), mem)? {
                match parse_tx(&c)? {
                    Ok(pkt) => self.send(mem, &pkt)?,
                    Err(why) => {
                        debug!(vif = %self.tap_name(), ?why, "tx frame dropped");
                        self.stats.tx_dropped += 1;
                    }
                }
                q.add_used(mem, TX, c.head, 0)?;
            }
            if !q
                .queue(TX)
                .expect("ready")
                .enable_notification(mem)
                .map_err(|e| Fault::Queue(e.to_string()))?
            {
                return Ok(());
            }
        }
    }

    fn send(&mut self, mem: &GuestMem, pkt: &TxPacket) -> Result<(), Fault> {
        let hdr = [0u8; HDR_LEN];
        let mut iov = vec![libc::iovec {
            iov_base: hdr.as_ptr() as *mut libc::c_void,
            iov_len: HDR_LEN,
        }];
        iov.extend(iovecs(mem, &pkt.frame)?);
        // One writev is one frame: a chain the kernel cannot take in one
        // call (more than IOV_MAX pieces) is dropped, not sent truncated.
        if iov.len() > TX_IOV_MAX {
            debug!(vif = %self.tap_name(), pieces = iov.len(), "tx frame in too many pieces: dropped");
            self.stats.tx_dropped += 1;
            return Ok(());
        }
        let n = iov.len() as libc::c_int;
        // SAFETY: the iovecs point at `hdr` and at guest RAM mapped by
        // `mem`, both alive for the call; writev only reads them.
        let r = unsafe { libc::writev(self.queue.as_fd().as_raw_fd(), iov.as_ptr(), n) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            debug!(vif = %self.tap_name(), "tx to the TAP: {e}");
            self.stats.tx_dropped += 1;
        } else {
            self.stats.tx += 1;
        }
        Ok(())
    }

    /// Move frames from the TAP into the guest's receive buffers until
    /// either runs out.
    fn receive(&mut self, q: &mut Queues, mem: &GuestMem) -> Result<(), Fault> {
        if q.queue(RX).is_none() {
            return Ok(());
        }
        loop {
            let len = match self.rx_pending {
                Some(n) => n,
                None => match self.queue.read_packet(&mut self.rx_buf) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        warn!(vif = %self.tap_name(), "TAP read: {e}");
                        return Ok(());
                    }
                },
            };
            self.rx_pending = Some(len);
            if len <= HDR_LEN {
                self.rx_pending = None;
                continue;
            }
            match self.deliver(q, mem, len)? {
                None => {
                    self.rx_pending = None;
                    self.rx_starved = false;
                }
                // No room: ask for a kick when buffers come, unless more
                // came meanwhile.
                Some(seen) => {
                    if !q.notify_on_new(mem, RX, seen)? {
                        self.rx_starved = true;
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Deliver the frame in `rx_buf[..len]`. If the guest has too few
    /// buffers for it, nothing is consumed and the result is the avail
    /// index that was seen.
    fn deliver(
        &mut self,
        q: &mut Queues,
        mem: &GuestMem,
        len: usize,
    ) -> Result<Option<u16>, Fault> {
        let mut chains: Vec<(u16, Vec<Seg>, u64)> = Vec::new();
        let mut room = 0u64;
        let seen = q.avail_idx(mem, RX)?;
        let queue = q.queue(RX).expect("checked by the caller");
        while room < len as u64 {
            let Some(c) = chain::pop(queue, mem)? else {
                break;
            };
            if c.descs.iter().any(|d| !d.write) {
                return Err(Fault::Order);
            }
            let segs = c.writable();
            let cap = total(&segs);
            room += cap;
            chains.push((c.head, segs, cap));
            if !self.mrg_rxbuf || chains.len() == usize::from(u16::MAX) {
                break;
            }
        }
        if room < len as u64 {
            if !self.mrg_rxbuf && !chains.is_empty() {
                // One buffer must hold the frame: it never will.
                let (head, _, _) = chains[0];
                debug!(vif = %self.tap_name(), len, "rx frame larger than the buffer, dropped");
                self.stats.rx_dropped += 1;
                q.add_used(mem, RX, head, 0)?;
                return Ok(None);
            }
            for _ in 0..chains.len() {
                queue.go_to_previous_position();
            }
            return Ok(Some(seen));
        }
        let hdr = rx_header(chains.len() as u16);
        self.rx_buf[..HDR_LEN].copy_from_slice(&hdr);
        let mut off = 0usize;
        let mut used = Vec::with_capacity(chains.len());
        for (head, segs, cap) in &chains {
            let n = (*cap as usize).min(len - off);
            let written = write_segs(mem, segs, &self.rx_buf[off..off + n])?;
            off += written;
            used.push((*head, written as u32));
        }
        for (head, n) in used {
            q.add_used(mem, RX, head, n)?;
        }
        self.stats.rx += 1;
        Ok(None)
    }
}

/// The path the hotplug script sees as XENBUS_PATH (informational; a
/// virtio vif has no xenstore backend).
fn hotplug_path(spec: &VifSpec) -> String {
    format!("virtio/vif/{}/{}", spec.domid, spec.devid)
}

impl VirtioDevice for NetDevice {
    fn name(&self) -> String {
        self.spec.vifname()
    }

    fn device_id(&self) -> u32 {
        DEVICE_ID
    }

    fn features(&self) -> u64 {
        F_VERSION_1
            | F_RING_EVENT_IDX
            | F_RING_INDIRECT_DESC
            | F_MAC
            | F_STATUS
            | F_MRG_RXBUF
            | F_MTU
    }

    fn config(&self) -> Vec<u8> {
        let mut c = vec![0u8; CONFIG_LEN];
        c[0..6].copy_from_slice(&self.spec.mac);
        c[6..8].copy_from_slice(&S_LINK_UP.to_le_bytes());
        c[8..10].copy_from_slice(&1u16.to_le_bytes());
        let mtu = u16::try_from(self.spec.mtu).unwrap_or(u16::MAX);
        c[10..12].copy_from_slice(&mtu.to_le_bytes());
        c
    }

    fn num_queues(&self) -> usize {
        2
    }

    fn activate(&mut self, features: u64) -> Result<(), String> {
        self.mrg_rxbuf = features & F_MRG_RXBUF != 0;
        self.rx_pending = None;
        self.rx_starved = false;
        Ok(())
    }

    fn reset(&mut self) {
        self.rx_pending = None;
        self.rx_starved = false;
    }

    fn process(&mut self, index: usize, q: &mut Queues, mem: &GuestMem) -> Result<(), Fault> {
        match index {
            TX => self.transmit(q, mem),
            RX => {
                self.rx_starved = false;
                self.receive(q, mem)
            }
            _ => Ok(()),
        }
    }

    fn host_fd(&self) -> Option<RawFd> {
        (!self.rx_starved).then(|| self.queue.as_fd().as_raw_fd())
    }

    fn host_ready(&mut self, q: &mut Queues, mem: &GuestMem) -> Result<(), Fault> {
        self.receive(q, mem)
    }
}

impl Drop for NetDevice {
    fn drop(&mut self) {
        let name = self.spec.vifname();
        if let Some(script) = &self.spec.script {
            if let Err(e) = run_hotplug(
                script,
                Action::Offline,
                &self.spec,
                &name,
                &hotplug_path(&self.spec),
            ) {
                warn!("{e}");
            }
        }
        // The TAP goes away with its last fd.
        drop(self.tap.take());
        info!(vif = %name, "virtio vif down");
    }
}

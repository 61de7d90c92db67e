//! kxen-vmm's API: everything a process outside kxen-vmm needs to launch
//! and drive it, in one place, typed.
//!
//! * [`launch`]: the command line ([`LaunchArgs`], also kxen-vmm's clap
//!   parser);
//! * [`protocol`]: the control socket's requests and replies;
//! * [`wire`]: their framing (JSON lines, SCM_RIGHTS);
//! * [`client`]: the one client ([`VmmClient`]);
//! * [`memfd`], [`routing`]: the layouts Dom0 reads in the guest memfd.
//!   They are kxen's own, so they live here and not in `xen-abi`.
//!
//! # The control protocol
//!
//! `kxen-vmm --control-socket PATH` listens on a Unix stream socket. A
//! client sends one JSON object per line ([`Request`]); kxen-vmm answers
//! each with one JSON line ([`Reply`]), `{"ok":true,...}` or
//! `{"ok":false,"error":"..."}`, in order. File descriptors travel as
//! SCM_RIGHTS with the reply's bytes. Request lines are at most
//! [`wire::MAX_REQUEST_LINE`] bytes; a longer one is refused and the
//! connection closed. A malformed line gets an error reply; the domain
//! does not notice.
//!
//! | request | reply | descriptors |
//! |---|---|---|
//! | `{"op":"info"}` | `"info":{`[`DomainInfo`]`}` | |
//! | `{"op":"pause"}` | once no vCPU is in guest mode | |
//! | `{"op":"unpause"}` | | |
//! | `{"op":"destroy"}` | then the domain ends (exit status 8) | |
//! | `{"op":"memfd"}` | `"size":N,"regions":[`[`MemfdRegion`]`...]` | the guest memory memfd |
//! | `{"op":"dom0-ports"}` | `"ports":[`[`Dom0PortInfo`]`...]` (console, xenstore) | per port: to_dom0, from_dom0 eventfds |
//! | `{"op":"serial"}` | HVM with `--serial dom0` | Dom0's end of COM1 (stream socket) |
//! | `{"op":"events"}` | `"routing":{"offset":O,"size":S},"vcpus":N,"irqfd":B` | N per-vCPU irqfds, then the wake eventfd |
//! | `{"op":"evtchn-bind","guest_port":P}` | `"dom0_port":D` | the eventfd the guest's sends on P write |
//! | `{"op":"evtchn-alloc-unbound"}` | `"dom0_port":D`; the guest binds D with EVTCHNOP_bind_interdomain | its eventfd |
//! | `{"op":"evtchn-close","dom0_port":D}` | the guest's end becomes unbound | |
//! | `{"op":"save-state"}` | paused domain only: `"size":N` | a memfd holding N bytes of [`image`] |
//! | `{"op":"restore-buffer","len":N}` | | a memfd of N bytes (at most [`image::MAX_IMAGE`]) to write an [`image`] into |
//! | `{"op":"load-state"}` | paused, never run: loads the restore buffer's image, or says why not | |
//! | `{"op":"perf-counters"}` | `"perf_counters":{NAME:N...}`: exits by kind, time spent on them, hypercalls by number, KVM's vCPU statistics | |
//! | `{"op":"dirty-log-start"}` | KVM logs the guest's writes to RAM and the special pages | |
//! | `{"op":"dirty-log"}` | `"size":N`; the log is cleared | a memfd of N bytes: per memfd region, its dirty bitmap (u64 LE words) |
//! | `{"op":"dirty-log-stop"}` | | |
//! | `{"op":"virtio-attach",`[`VirtioAttach`]`}` | HVM with `--virtio`; replaces an earlier attach of the slot | link socket, call, error, then one kick eventfd per queue |
//!
//! Dom0 ports a connection opened and did not close are closed when it
//! ends. The virtio data plane's own link messages are described in
//! `hypervisor/vmm/virtio-protocol.md`.
//!
//! # The memfd
//!
//! Guest RAM, the special pages (console and xenstore rings, shared_info,
//! grant frames) and the event routing area ([`routing`]) all live in
//! one memfd; the `memfd` reply's regions say where each guest-physical
//! range is, and the `events` reply where the routing area is.
//!
//! [`LaunchArgs`]: launch::LaunchArgs
//! [`Request`]: protocol::Request
//! [`Reply`]: protocol::Reply
//! [`DomainInfo`]: protocol::DomainInfo
//! [`Dom0PortInfo`]: protocol::Dom0PortInfo
//! [`VirtioAttach`]: protocol::VirtioAttach
//! [`MemfdRegion`]: memfd::MemfdRegion
//! [`VmmClient`]: client::VmmClient

pub mod client;
pub mod image;
pub mod launch;
pub mod log;
pub mod memfd;
pub mod protocol;
pub mod routing;
pub mod wire;

pub use client::{ClientError, VmmClient};
pub use launch::LaunchArgs;
pub use memfd::MemfdRegion;
pub use protocol::{Reply, Request};

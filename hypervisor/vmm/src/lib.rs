//! kxen-vmm: one Xen domain on KVM.
//!
//! * [`memory`]: guest RAM in a memfd, special pages, overlay frames;
//! * [`cpuid`]: the Xen CPUID leaves;
//! * [`vcpu`]: the vCPU threads and exit decoding;
//! * [`config`], [`builder`]: what to build, and building it;
//! * [`vm`]: running a built domain to its end;
//! * [`event_loop`]: the one thread that serves everything but the vCPUs;
//! * [`exit`], [`kick`]: how a domain ends; kicking and pausing vCPUs;
//! * [`boot_cpu`]: the vCPUs' start state;
//! * [`hvm`]: the emulated devices of HVM domains;
//! * [`virtio`]: HVM virtio-mmio slots, served by kxend over a link;
//! * [`insn`]: decoding of the instructions the VMM emulates for PVM;
//! * [`platform`]: what the Xen layer ([`kxen_xen`]) asks of the VMM;
//! * [`syscall_bridge`]: user-mode `syscall` of stock HVM kernels on PVM hosts;
//! * [`control`]: the socket a toolstack drives the VMM through (the
//!   protocol is kxen-vmm-api's);
//! * [`dom0`]: the console and xenstore rings' ends in Dom0;
//! * [`seccomp`], [`peer`]: the per-thread system call filters and the
//!   control socket's peer check;
//! * [`save`]: a vCPU's state as Xen's HVM save records (migration);
//! * [`events`], [`routing`]: Dom0's interdomain channels, irqfds and the
//!   event routing area backends read.

pub mod ap_start;
pub mod boot_cpu;
pub mod builder;
pub mod config;
pub mod control;
pub mod cpuid;
pub mod debug_port;
pub mod dom0;
pub mod error;
pub mod event_loop;
pub mod events;
pub mod exit;
pub mod hvm;
pub mod insn;
pub mod kick;
pub mod memory;
pub mod peer;
pub mod perf;
pub mod platform;
pub mod pv;
pub mod pv_m2p;
pub mod routing;
pub mod save;
pub mod seccomp;
pub mod state;
pub mod syscall_bridge;
pub mod vcpu;
pub mod virtio;
pub mod vm;

//! Dom0's access to guest memory, shared by kxend's backends.
//!
//! * [`console`]: the PV console ring's guest-written indices, checked;
//! * [`foreign`]: a domain's memfd mapped into Dom0 ("foreign mapping");
//! * [`dirty`]: the log of Dom0's writes to it, for live migration;
//! * [`grant`]: grant references checked and pinned as Xen does before a
//!   backend may touch a granted frame;
//! * [`evtchn`]: Dom0's ends of interdomain event channels, raising guest
//!   ports through the routing area and irqfds kxen-vmm hands over;
//! * [`domain`]: a guest reached through its kxen-vmm's control socket;
//! * [`xenbus`]: the contract between kxend and a device backend;
//! * [`quiesce`]: backend I/O threads stopped between requests and
//!   started again, for a migration's final pass.

pub mod console;
pub mod dirty;
pub mod domain;
pub mod evtchn;
pub mod foreign;
pub mod grant;
pub mod quiesce;
pub mod xenbus;

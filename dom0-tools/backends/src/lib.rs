//! Dom0's access to guest memory, shared by kxend's backends.
//!
//! * [`foreign`]: a domain's memfd mapped into Dom0 ("foreign mapping");
//! * [`grant`]: grant references checked and pinned as Xen does before a
//!   backend may touch a granted frame.

pub mod domain;
pub mod evtchn;
pub mod foreign;
pub mod grant;
pub mod xenbus;

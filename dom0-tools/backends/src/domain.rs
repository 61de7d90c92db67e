//! A guest domain as Dom0's backends reach it: its memory (the memfd),
//! its grant table and its event channels, all obtained from the domain's
//! kxen-vmm over its control socket.

use std::sync::Arc;

use crate::foreign::ForeignMemory;

/// One DomU, seen from Dom0.
pub struct ForeignDomain {
    pub domid: u16,
    pub memory: Arc<ForeignMemory>,
}

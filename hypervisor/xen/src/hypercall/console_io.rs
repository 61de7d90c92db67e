//! CONSOLEIO_* (Xen's drivers/char/console.c `do_console_io`): the
//! emergency console a domU may write to, as a debug build of Xen allows.

use xen_abi::errno::*;
use xen_abi::hypercall::*;

use crate::domain::Domain;
use crate::guest::GuestAccess;

/// Largest console_io write served in one call.
const CONSOLE_IO_MAX: u64 = 64 * 1024;

impl Domain {
    /// xsm_console_io (xsm/dummy.h) refuses a domain that is neither the
    /// console nor the control domain, -EPERM before the command is looked
    /// at, with one exception: a Xen built with CONFIG_VERBOSE_DEBUG (the
    /// default of debug builds) lets every domain write. kxen serves a domU
    /// as that build does, because the tree relies on the write: the PV
    /// test guest prints through it before it knows its console ring and
    /// after EVTCHNOP_reset has closed the ring's port, and the 32-bit test
    /// guests (tests/guest32) report only through it. Reading and every
    /// other command stay refused, as in every Xen build.
    pub(super) fn console_io(&self, g: &GuestAccess, cmd: u64, count: u64, buf: u64) -> i64 {
        if cmd != CONSOLEIO_WRITE {
            return -EPERM;
        }
        let count = count & 0xffff_ffff;
        if count > CONSOLE_IO_MAX {
            return -E2BIG;
        }
        let mut data = vec![0u8; count as usize];
        if g.read(buf, &mut data).is_err() {
            return -EFAULT;
        }
        self.platform.console_write(&data);
        0
    }
}

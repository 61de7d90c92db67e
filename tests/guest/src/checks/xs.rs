//! Xenstore over the shared ring.

use core::fmt::Write;

use xen_abi::xenstore::{XS_ERROR, XS_GET_DOMAIN_PATH, XS_READ, XS_SET_TARGET};

use super::evtchn::my_domid;
use super::{eq, Fail, R};
use crate::xenstore::{request, Reply};
use crate::{bail, ensure};

/// A small formatting buffer.
struct Text {
    buf: [u8; 64],
    len: usize,
}

impl Text {
    fn new(args: core::fmt::Arguments) -> Self {
        let mut t = Text {
            buf: [0; 64],
            len: 0,
        };
        let _ = t.write_fmt(args);
        t
    }
    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Write for Text {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for &b in s.as_bytes() {
            if self.len < self.buf.len() {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
        Ok(())
    }
}

fn ask(kind: u32, parts: &[&[u8]], what: &str) -> Result<Reply, Fail> {
    let mut r = Reply::empty();
    if let Err(e) = request(kind, parts, &mut r) {
        bail!("{}: {}", what, e);
    }
    Ok(r)
}

/// Show a payload in a failure message.
fn shown(b: &[u8]) -> &str {
    core::str::from_utf8(b).unwrap_or("<non-UTF-8>")
}

pub fn read_domid() -> R {
    let me = my_domid()?;
    let r = ask(XS_READ, &[b"domid\0"], "XS_READ domid")?;
    ensure!(
        r.kind == XS_READ,
        "XS_READ domid: expected a READ reply, got type {} \"{}\"",
        r.kind,
        shown(r.text())
    );
    let want = Text::new(format_args!("{}", me));
    ensure!(
        r.text() == want.bytes(),
        "XS_READ domid: expected \"{}\" (CPUID leaf 0x40000004), got \"{}\"",
        me,
        shown(r.text())
    );
    Ok(())
}

pub fn read_missing() -> R {
    let r = ask(
        XS_READ,
        &[b"kxen-testguest/no/such/node\0"],
        "XS_READ missing node",
    )?;
    eq("reply type (XS_ERROR = 16)", r.kind, XS_ERROR)?;
    ensure!(
        r.text() == b"ENOENT",
        "XS_READ missing node: expected error \"ENOENT\", got \"{}\"",
        shown(r.text())
    );
    Ok(())
}

pub fn get_domain_path() -> R {
    let me = my_domid()?;
    let arg = Text::new(format_args!("{}\0", me));
    let r = ask(XS_GET_DOMAIN_PATH, &[arg.bytes()], "XS_GET_DOMAIN_PATH")?;
    eq("reply type", r.kind, XS_GET_DOMAIN_PATH)?;
    let want = Text::new(format_args!("/local/domain/{}", me));
    ensure!(
        r.text() == want.bytes(),
        "XS_GET_DOMAIN_PATH: expected \"/local/domain/{}\", got \"{}\"",
        me,
        shown(r.text())
    );
    Ok(())
}

pub fn unsupported_type() -> R {
    // XS_SET_TARGET is a privileged (dom0) request: an unprivileged guest
    // gets an XS_ERROR reply.
    let r = ask(XS_SET_TARGET, &[b"1\0", b"2\0"], "XS_SET_TARGET")?;
    ensure!(
        r.kind == XS_ERROR,
        "XS_SET_TARGET: expected an XS_ERROR reply, got type {} \"{}\"",
        r.kind,
        shown(r.text())
    );
    Ok(())
}

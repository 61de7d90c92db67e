//! xl.cfg's `bootloader`: the program that reads a PV guest's own disk
//! and says which kernel, initrd and arguments to boot (pygrub), run with
//! the command line libxl gives it, and its answer in libxl's `simple0`
//! format.
//!
//! libxl runs the bootloader as
//! `BOOTLOADER [--kernel=K] [--ramdisk=R] [--args=CMDLINE] [--quiet]
//! --output=FILE --output-format=simple0 --output-directory=DIR
//! [bootloader_args...] DISK`, where the bootloader copies the kernel and
//! initrd it picked into DIR and writes to FILE a list of NUL-terminated
//! items: `kernel PATH`, `ramdisk PATH`, `args ARGS`. A name without a
//! slash is looked up in Xen's private binary directory first, so
//! `bootloader = "pygrub"` finds Debian's `/usr/lib/xen-4.17/bin/pygrub`.
//!
//! The bootloader reads a disk image the guest controls, so its answer is
//! hostile input: [`parse_simple0`] bounds every item and the whole answer.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Where a bootloader named without a slash is looked for first (libxl's
/// private binary directory, as Debian's xen-utils-4.17 installs it).
pub const PRIVATE_BIN_DIR: &str = "/usr/lib/xen-4.17/bin";

/// The longest item libxl keeps from a bootloader's answer (it reads
/// items into a buffer of twice PATH_MAX and skips longer ones).
pub const MAX_ITEM: usize = 2 * 4096 - 1;

/// The most bytes of answer kxend reads: pygrub's is three items.
pub const MAX_OUTPUT: usize = 64 * 1024;

/// The most notes (skipped items) one answer keeps, so that a hostile
/// answer cannot fill kxend's log.
pub const MAX_NOTES: usize = 8;

/// The bootloader program for xl.cfg's `bootloader = NAME`: a path as
/// given; a bare name in `private_bin_dir` when it is there (libxl checks
/// with lstat), else the name itself, for a `PATH` lookup.
pub fn resolve_program(name: &str, private_bin_dir: &Path) -> PathBuf {
    if name.starts_with('/') {
        return PathBuf::from(name);
    }
    let candidate = private_bin_dir.join(name);
    if std::fs::symlink_metadata(&candidate).is_ok() {
        candidate
    } else {
        PathBuf::from(name)
    }
}

/// What the bootloader is told: the cfg's own kernel, ramdisk and command
/// line (pygrub appends the command line to the one it finds), where to
/// write, and the disk it reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation<'a> {
    pub kernel: Option<&'a str>,
    pub ramdisk: Option<&'a str>,
    pub cmdline: Option<&'a str>,
    /// Ask for no interaction (`--quiet`).
    pub quiet: bool,
    pub output: &'a Path,
    pub output_directory: &'a Path,
    /// xl.cfg's `bootloader_args`, in order.
    pub extra_args: &'a [String],
    pub disk: &'a str,
}

impl Invocation<'_> {
    /// The arguments after the program name, in libxl's order.
    pub fn args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        if let Some(kernel) = self.kernel {
            args.push(format!("--kernel={kernel}").into());
        }
        if let Some(ramdisk) = self.ramdisk {
            args.push(format!("--ramdisk={ramdisk}").into());
        }
        if let Some(cmdline) = self.cmdline.filter(|c| !c.is_empty()) {
            args.push(format!("--args={cmdline}").into());
        }
        if self.quiet {
            args.push("--quiet".into());
        }
        let mut output = OsString::from("--output=");
        output.push(self.output);
        args.push(output);
        args.push("--output-format=simple0".into());
        let mut directory = OsString::from("--output-directory=");
        directory.push(self.output_directory);
        args.push(directory);
        args.extend(self.extra_args.iter().map(OsString::from));
        args.push(self.disk.into());
        args
    }
}

/// What a bootloader chose: the copies it made of the kernel and initrd,
/// and the kernel's command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootChoice {
    pub kernel: String,
    pub ramdisk: Option<String>,
    pub args: Option<String>,
    /// Items skipped as libxl skips them (too long, or not one of the
    /// three), described for the log; at most [`MAX_NOTES`].
    pub notes: Vec<String>,
}

/// Why a bootloader's answer cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Simple0Error {
    #[error("its answer is over {MAX_OUTPUT} bytes")]
    TooLong,
    #[error("its answer names no kernel")]
    NoKernel,
    #[error("its answer's {keyword} item is not UTF-8")]
    NotUtf8 { keyword: &'static str },
    #[error("its answer's {keyword} item is empty")]
    Empty { keyword: &'static str },
}

/// `item`'s value when it is `KEYWORD`, at least one whitespace byte, then
/// the value (its leading whitespace dropped), as libxl reads them.
fn value_of<'a>(item: &'a [u8], keyword: &str) -> Option<&'a [u8]> {
    let rest = item.strip_prefix(keyword.as_bytes())?;
    if !rest.first().is_some_and(u8::is_ascii_whitespace) {
        return None;
    }
    let start = rest.iter().position(|b| !b.is_ascii_whitespace());
    Some(start.map_or(&[][..], |s| &rest[s..]))
}

/// A short, printable quote of a skipped item for the log.
fn quote(item: &[u8]) -> String {
    let shown: String = String::from_utf8_lossy(&item[..item.len().min(60)])
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if item.len() > 60 {
        format!("{shown}...")
    } else {
        shown
    }
}

/// Parse a bootloader's `simple0` answer: NUL-terminated items (the last
/// may lack its NUL), `kernel PATH`, `ramdisk PATH` and `args ARGS`; a
/// later item of the same kind replaces an earlier one. Empty items are
/// ignored; items longer than [`MAX_ITEM`] and unknown ones are skipped
/// with a note, as libxl skips them with a warning. A kernel is required.
pub fn parse_simple0(output: &[u8]) -> Result<BootChoice, Simple0Error> {
    if output.len() > MAX_OUTPUT {
        return Err(Simple0Error::TooLong);
    }
    let mut kernel = None;
    let mut choice = BootChoice::default();
    let note = |choice: &mut BootChoice, text: String| {
        if choice.notes.len() < MAX_NOTES {
            choice.notes.push(text);
        }
    };
    // A trailing NUL ends the last item rather than starting an empty one.
    let body = output.strip_suffix(b"\0").unwrap_or(output);
    for item in body.split(|&b| b == 0) {
        if item.is_empty() {
            continue;
        }
        if item.len() > MAX_ITEM {
            note(
                &mut choice,
                format!("skipped an item of {} bytes: `{}`", item.len(), quote(item)),
            );
            continue;
        }
        let text = |keyword: &'static str, value: &[u8]| -> Result<String, Simple0Error> {
            let value =
                std::str::from_utf8(value).map_err(|_| Simple0Error::NotUtf8 { keyword })?;
            Ok(value.to_string())
        };
        let path = |keyword: &'static str, value: &[u8]| -> Result<String, Simple0Error> {
            let value = text(keyword, value)?;
            if value.is_empty() {
                return Err(Simple0Error::Empty { keyword });
            }
            Ok(value)
        };
        if let Some(value) = value_of(item, "kernel") {
            kernel = Some(path("kernel", value)?);
        } else if let Some(value) = value_of(item, "ramdisk") {
            choice.ramdisk = Some(path("ramdisk", value)?);
        } else if let Some(value) = value_of(item, "args") {
            choice.args = Some(text("args", value)?);
        } else {
            note(&mut choice, format!("skipped `{}`", quote(item)));
        }
    }
    choice.kernel = kernel.ok_or(Simple0Error::NoKernel)?;
    Ok(choice)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pygrubs_answer() {
        let c = parse_simple0(
            b"kernel /d/boot_kernel.x1\0ramdisk /d/boot_ramdisk.y2\0args root=/dev/xvda console=hvc0 kxen.marker=1\0\0",
        )
        .unwrap();
        assert_eq!(c.kernel, "/d/boot_kernel.x1");
        assert_eq!(c.ramdisk.as_deref(), Some("/d/boot_ramdisk.y2"));
        assert_eq!(
            c.args.as_deref(),
            Some("root=/dev/xvda console=hvc0 kxen.marker=1")
        );
        assert!(c.notes.is_empty());
    }

    #[test]
    fn only_a_kernel_is_required() {
        let c = parse_simple0(b"kernel /k").unwrap();
        assert_eq!(c.kernel, "/k");
        assert_eq!((c.ramdisk, c.args), (None, None));
        assert_eq!(parse_simple0(b""), Err(Simple0Error::NoKernel));
        assert_eq!(
            parse_simple0(b"ramdisk /r\0args a\0"),
            Err(Simple0Error::NoKernel)
        );
    }

    #[test]
    fn keywords_need_whitespace_and_lose_leading_whitespace() {
        let c = parse_simple0(b"kernel\t  /k\0args    a  b \0").unwrap();
        assert_eq!(c.kernel, "/k");
        assert_eq!(c.args.as_deref(), Some("a  b "));
        // `kernelX` is not `kernel`; nor is a bare keyword.
        assert_eq!(parse_simple0(b"kernel/k\0"), Err(Simple0Error::NoKernel));
        assert_eq!(parse_simple0(b"kernel\0"), Err(Simple0Error::NoKernel));
        let c = parse_simple0(b"kernelX /a\0kernel /k\0").unwrap();
        assert_eq!(c.kernel, "/k");
        assert_eq!(c.notes, ["skipped `kernelX /a`"]);
        // An empty args item is no arguments; an empty path is refused.
        let c = parse_simple0(b"kernel /k\0args \0").unwrap();
        assert_eq!(c.args.as_deref(), Some(""));
        assert_eq!(
            parse_simple0(b"kernel  \0"),
            Err(Simple0Error::Empty { keyword: "kernel" })
        );
    }

    #[test]
    fn later_items_win_and_unknown_ones_are_noted() {
        let c = parse_simple0(b"kernel /a\0\0\0hello\x07 world\0kernel /b\0").unwrap();
        assert_eq!(c.kernel, "/b");
        assert_eq!(c.notes, ["skipped `hello? world`"]);
        let many = b"junk\0".repeat(100);
        let mut answer = many.clone();
        answer.extend_from_slice(b"kernel /k\0");
        assert_eq!(parse_simple0(&answer).unwrap().notes.len(), MAX_NOTES);
    }

    #[test]
    fn long_items_and_answers_are_bounded() {
        let mut long = b"kernel /".to_vec();
        long.resize(MAX_ITEM + 1, b'a');
        let mut answer = long.clone();
        answer.extend_from_slice(b"\0kernel /k\0");
        let c = parse_simple0(&answer).unwrap();
        assert_eq!(c.kernel, "/k");
        assert!(c.notes[0].starts_with("skipped an item of 8192 bytes"));
        long.truncate(MAX_ITEM);
        assert_eq!(parse_simple0(&long).unwrap().kernel.len(), MAX_ITEM - 7);
        let huge = vec![b'x'; MAX_OUTPUT + 1];
        assert_eq!(parse_simple0(&huge), Err(Simple0Error::TooLong));
        assert_eq!(
            parse_simple0(b"kernel /\xff\0"),
            Err(Simple0Error::NotUtf8 { keyword: "kernel" })
        );
    }

    #[test]
    fn arguments_in_libxls_order() {
        let extra = ["--entry=1".to_string()];
        let inv = Invocation {
            kernel: None,
            ramdisk: None,
            cmdline: Some("console=hvc0"),
            quiet: true,
            output: Path::new("/s/out"),
            output_directory: Path::new("/s/files"),
            extra_args: &extra,
            disk: "/img",
        };
        assert_eq!(
            inv.args(),
            [
                "--args=console=hvc0",
                "--quiet",
                "--output=/s/out",
                "--output-format=simple0",
                "--output-directory=/s/files",
                "--entry=1",
                "/img"
            ]
        );
        let inv = Invocation {
            kernel: Some("/boot/vmlinuz"),
            ramdisk: Some("/boot/initrd"),
            cmdline: Some(""),
            quiet: false,
            extra_args: &[],
            ..inv
        };
        assert_eq!(
            inv.args(),
            [
                "--kernel=/boot/vmlinuz",
                "--ramdisk=/boot/initrd",
                "--output=/s/out",
                "--output-format=simple0",
                "--output-directory=/s/files",
                "/img"
            ]
        );
    }

    #[test]
    fn bare_names_are_looked_for_in_the_private_bin_dir() {
        let dir = std::env::temp_dir().join(format!("kxen-blname-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("pygrub"), b"").unwrap();
        assert_eq!(resolve_program("pygrub", &dir), dir.join("pygrub"));
        assert_eq!(resolve_program("other", &dir), Path::new("other"));
        assert_eq!(
            resolve_program("/usr/bin/pygrub", &dir),
            Path::new("/usr/bin/pygrub")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

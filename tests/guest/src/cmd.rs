//! The device commands of service mode's console, parsed from one line.
//! Anything that is not a device command is left to the console's echo.

/// A `blk bench` pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchKind {
    SeqRead,
    SeqWrite,
    RandRead,
}

impl BenchKind {
    pub fn name(self) -> &'static str {
        match self {
            BenchKind::SeqRead => "seqread",
            BenchKind::SeqWrite => "seqwrite",
            BenchKind::RandRead => "randread",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// `blk list`: one line per block device.
    BlkList,
    /// `blk check <devid>`.
    BlkCheck { dev: u32 },
    /// `blk write <devid> <sector> <count> <seed>`.
    BlkWrite {
        dev: u32,
        sector: u64,
        count: u64,
        seed: u64,
    },
    /// `blk read <devid> <sector> <count>`.
    BlkRead { dev: u32, sector: u64, count: u64 },
    /// `blk bench <devid> <kind> <amount> <req-KiB> <queue-depth>`: amount
    /// is MiB for the sequential kinds and requests for randread.
    BlkBench {
        dev: u32,
        kind: BenchKind,
        amount: u64,
        req_kib: u64,
        depth: u64,
    },
    /// `blk hostile <devid>`.
    BlkHostile { dev: u32 },
    /// `blk lapic-off <devid>`: a read completed while the LAPIC is
    /// software-disabled must still bring its upcall once it is back on.
    BlkLapicOff { dev: u32 },
    /// `net ping <count>`.
    NetPing { count: u64 },
    /// `net bench tx <MiB>`.
    NetBenchTx { mib: u64 },
    /// `net hostile`.
    NetHostile,
    /// `net list`.
    NetList,
    /// `mem churn <pages> <ms>`: rewrite `pages` pages for `ms`
    /// milliseconds, checking each page's previous pattern before each
    /// rewrite (a live migration's test load).
    MemChurn { pages: u64, ms: u64 },
    /// `mem zeroing <pages> <ms>`: as `mem churn`, but every page is
    /// all-zero in every other pass (half of them in each), so pages go
    /// from data to zero and back (a live migration's zero-page load).
    MemZeroing { pages: u64, ms: u64 },
}

/// Most pages `mem churn` takes (64 MiB).
pub const MAX_CHURN_PAGES: u64 = 16384;
/// Longest `mem churn` run (10 minutes).
pub const MAX_CHURN_MS: u64 = 600_000;

/// Why a device command line was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage(pub &'static str);

/// A decimal number, or hexadecimal with `0x`.
pub fn parse_u64(s: &[u8]) -> Option<u64> {
    let (digits, radix) = match s {
        [b'0', b'x' | b'X', rest @ ..] => (rest, 16),
        _ => (s, 10),
    };
    if digits.is_empty() {
        return None;
    }
    let mut v: u64 = 0;
    for &d in digits {
        let x = (d as char).to_digit(radix)? as u64;
        v = v.checked_mul(radix as u64)?.checked_add(x)?;
    }
    Some(v)
}

/// Whether a console line that starts with `typed` may be a device command
/// (`blk ...`, `net ...`, `xs ...` or `mem ...`). Service mode does not echo such lines
/// character by character, so that the only console lines starting with
/// the command's words are the guest's answers.
pub fn may_be_device_command(typed: &[u8]) -> bool {
    [&b"blk "[..], &b"net "[..], &b"xs "[..], &b"mem "[..]]
        .iter()
        .any(|g| typed.starts_with(g) || (!typed.is_empty() && g.starts_with(typed)))
}

/// `Ok(None)`: not a device command; `Err`: a device command with bad
/// arguments.
pub fn parse(line: &[u8]) -> Result<Option<Command>, Usage> {
    let mut words = line
        .split(|&b| b == b' ' || b == b'\t')
        .filter(|w| !w.is_empty());
    let (Some(group), Some(verb)) = (words.next(), words.next()) else {
        return Ok(None);
    };
    let mut args = [&b""[..]; 6];
    let mut n = 0;
    for w in words {
        if n == args.len() {
            return Err(Usage("too many arguments"));
        }
        args[n] = w;
        n += 1;
    }
    let args = &args[..n];
    let num = |i: usize, what: &'static str| -> Result<u64, Usage> {
        args.get(i).and_then(|a| parse_u64(a)).ok_or(Usage(what))
    };
    let dev = |what| -> Result<u32, Usage> {
        let d = num(0, what)?;
        u32::try_from(d).map_err(|_| Usage(what))
    };
    let exact = |want: usize, usage: &'static str| {
        if args.len() == want {
            Ok(())
        } else {
            Err(Usage(usage))
        }
    };
    let cmd = match (group, verb) {
        (b"blk", b"list") => {
            exact(0, "usage: blk list")?;
            Command::BlkList
        }
        (b"blk", b"check") => {
            const U: &str = "usage: blk check <devid>";
            exact(1, U)?;
            Command::BlkCheck { dev: dev(U)? }
        }
        (b"blk", b"write") => {
            const U: &str = "usage: blk write <devid> <sector> <count> <seed>";
            exact(4, U)?;
            Command::BlkWrite {
                dev: dev(U)?,
                sector: num(1, U)?,
                count: num(2, U)?,
                seed: num(3, U)?,
            }
        }
        (b"blk", b"read") => {
            const U: &str = "usage: blk read <devid> <sector> <count>";
            exact(3, U)?;
            Command::BlkRead {
                dev: dev(U)?,
                sector: num(1, U)?,
                count: num(2, U)?,
            }
        }
        (b"blk", b"bench") => {
            const U: &str =
                "usage: blk bench <devid> seqread|seqwrite|randread <MiB|ops> <req-KiB> <queue-depth>";
            exact(5, U)?;
            let kind = match args[1] {
                b"seqread" => BenchKind::SeqRead,
                b"seqwrite" => BenchKind::SeqWrite,
                b"randread" => BenchKind::RandRead,
                _ => return Err(Usage(U)),
            };
            Command::BlkBench {
                dev: dev(U)?,
                kind,
                amount: num(2, U)?,
                req_kib: num(3, U)?,
                depth: num(4, U)?,
            }
        }
        (b"blk", b"hostile") => {
            const U: &str = "usage: blk hostile <devid>";
            exact(1, U)?;
            Command::BlkHostile { dev: dev(U)? }
        }
        (b"blk", b"lapic-off") => {
            const U: &str = "usage: blk lapic-off <devid>";
            exact(1, U)?;
            Command::BlkLapicOff { dev: dev(U)? }
        }
        (b"blk", _) => return Err(Usage("unknown blk command")),
        (b"net", b"ping") => {
            const U: &str = "usage: net ping <count>";
            exact(1, U)?;
            Command::NetPing { count: num(0, U)? }
        }
        (b"net", b"bench") => {
            const U: &str = "usage: net bench tx <MiB>";
            if args.len() != 2 || args[0] != b"tx" {
                return Err(Usage(U));
            }
            Command::NetBenchTx { mib: num(1, U)? }
        }
        (b"net", b"hostile") => {
            exact(0, "usage: net hostile")?;
            Command::NetHostile
        }
        (b"net", b"list") => {
            exact(0, "usage: net list")?;
            Command::NetList
        }
        (b"net", _) => return Err(Usage("unknown net command")),
        (b"mem", b"churn") => {
            const U: &str = "usage: mem churn <pages 1..16384> <ms 1..600000>";
            exact(2, U)?;
            let pages = num(0, U)?;
            let ms = num(1, U)?;
            if !(1..=MAX_CHURN_PAGES).contains(&pages) || !(1..=MAX_CHURN_MS).contains(&ms) {
                return Err(Usage(U));
            }
            Command::MemChurn { pages, ms }
        }
        (b"mem", b"zeroing") => {
            const U: &str = "usage: mem zeroing <pages 1..16384> <ms 1..600000>";
            exact(2, U)?;
            let pages = num(0, U)?;
            let ms = num(1, U)?;
            if !(1..=MAX_CHURN_PAGES).contains(&pages) || !(1..=MAX_CHURN_MS).contains(&ms) {
                return Err(Usage(U));
            }
            Command::MemZeroing { pages, ms }
        }
        (b"mem", _) => return Err(Usage("unknown mem command")),
        _ => return Ok(None),
    };
    Ok(Some(cmd))
}

/// A xenstore command: `xs read <path>` or `xs write <path> <value>`
/// (the value is the rest of the line; it may be empty).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XsCommand<'a> {
    Read(&'a [u8]),
    Write(&'a [u8], &'a [u8]),
}

/// `Ok(None)`: not an `xs` command.
pub fn parse_xs(line: &[u8]) -> Result<Option<XsCommand<'_>>, Usage> {
    let line = line.trim_ascii();
    let Some(rest) = line.strip_prefix(b"xs ") else {
        return Ok(None);
    };
    let rest = rest.trim_ascii_start();
    let (verb, rest) = split_word(rest);
    let (path, value) = split_word(rest);
    match verb {
        b"read" if !path.is_empty() && value.is_empty() => Ok(Some(XsCommand::Read(path))),
        b"write" if !path.is_empty() => Ok(Some(XsCommand::Write(path, value))),
        _ => Err(Usage("usage: xs read <path> | xs write <path> <value>")),
    }
}

/// The first blank-separated word and the rest (leading blanks removed).
fn split_word(s: &[u8]) -> (&[u8], &[u8]) {
    match s.iter().position(|&b| b == b' ' || b == b'\t') {
        Some(i) => (&s[..i], s[i..].trim_ascii_start()),
        None => (s, &[]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(parse_u64(b"51712"), Some(51712));
        assert_eq!(parse_u64(b"0x10"), Some(16));
        assert_eq!(parse_u64(b"0x"), None);
        assert_eq!(parse_u64(b"12a"), None);
        assert_eq!(parse_u64(b"99999999999999999999"), None);
    }

    #[test]
    fn xs_commands() {
        assert_eq!(parse_xs(b"hello"), Ok(None));
        assert_eq!(
            parse_xs(b"xs read device/vbd/1/state"),
            Ok(Some(XsCommand::Read(b"device/vbd/1/state")))
        );
        assert_eq!(
            parse_xs(b"xs write device/vbd/1/backend /local/domain/0/x y"),
            Ok(Some(XsCommand::Write(
                b"device/vbd/1/backend",
                b"/local/domain/0/x y"
            )))
        );
        assert_eq!(
            parse_xs(b"xs write a"),
            Ok(Some(XsCommand::Write(b"a", b"")))
        );
        assert!(parse_xs(b"xs read").is_err());
        assert!(parse_xs(b"xs frob a").is_err());
    }

    #[test]
    fn device_command_prefixes() {
        assert!(may_be_device_command(b"b"));
        assert!(may_be_device_command(b"blk"));
        assert!(may_be_device_command(b"blk check 1"));
        assert!(may_be_device_command(b"net p"));
        assert!(!may_be_device_command(b""));
        assert!(!may_be_device_command(b"blx"));
        assert!(!may_be_device_command(b"hello"));
        assert!(!may_be_device_command(b"blkx"));
        assert!(may_be_device_command(b"xs write a b"));
        assert!(may_be_device_command(b"mem churn 1 2"));
    }

    #[test]
    fn mem_churn_is_bounded() {
        assert_eq!(
            parse(b"mem churn 2048 0x1000"),
            Ok(Some(Command::MemChurn {
                pages: 2048,
                ms: 4096
            }))
        );
        assert!(parse(b"mem churn 0 10").is_err());
        assert!(parse(b"mem churn 16385 10").is_err());
        assert!(parse(b"mem churn 1 600001").is_err());
        assert!(parse(b"mem churn 1").is_err());
        assert_eq!(
            parse(b"mem zeroing 64 1000"),
            Ok(Some(Command::MemZeroing {
                pages: 64,
                ms: 1000
            }))
        );
        assert!(parse(b"mem zeroing 0 10").is_err());
        assert!(parse(b"mem zeroing 16385 10").is_err());
        assert!(parse(b"mem zeroing 1 600001").is_err());
        assert!(parse(b"mem zeroing 1").is_err());
        assert!(parse(b"mem other").is_err());
    }

    #[test]
    fn commands() {
        assert_eq!(parse(b"hello kxen"), Ok(None));
        assert_eq!(parse(b"poweroff"), Ok(None));
        assert_eq!(
            parse(b"blk check 51712"),
            Ok(Some(Command::BlkCheck { dev: 51712 }))
        );
        assert_eq!(
            parse(b"blk  write 51712 8 16 0x2a"),
            Ok(Some(Command::BlkWrite {
                dev: 51712,
                sector: 8,
                count: 16,
                seed: 42
            }))
        );
        assert_eq!(
            parse(b"blk bench 51712 randread 1000 4 8"),
            Ok(Some(Command::BlkBench {
                dev: 51712,
                kind: BenchKind::RandRead,
                amount: 1000,
                req_kib: 4,
                depth: 8
            }))
        );
        assert_eq!(
            parse(b"net ping 3"),
            Ok(Some(Command::NetPing { count: 3 }))
        );
        assert_eq!(
            parse(b"net bench tx 16"),
            Ok(Some(Command::NetBenchTx { mib: 16 }))
        );
        assert!(parse(b"blk write 51712 8").is_err());
        assert!(parse(b"blk bench 51712 sideways 1 4 1").is_err());
        assert!(parse(b"net bench rx 5").is_err());
        assert!(parse(b"blk check 99999999999").is_err());
        assert!(parse(b"blk frobnicate").is_err());
    }
}

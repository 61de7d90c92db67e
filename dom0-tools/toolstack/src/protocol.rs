//! Requests and replies between `kxl` and `kxend`.
//!
//! One JSON object per line on kxend's Unix socket (`$KXEN_RUN_DIR/kxend.sock`,
//! default /run/kxen). A `console` request that succeeds turns the
//! connection into a raw byte stream both ways.

use serde::{Deserialize, Serialize};

use crate::config::DomainConfig;
use crate::xl::{CreditParams, DomainInfo, VcpuInfo, XlInfo};

/// Default directories; both can be overridden so tests run isolated kxends.
pub const DEFAULT_RUN_DIR: &str = "/run/kxen";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/kxen";
pub const RUN_DIR_ENV: &str = "KXEN_RUN_DIR";
pub const STATE_DIR_ENV: &str = "KXEN_STATE_DIR";
pub const SOCKET_NAME: &str = "kxend.sock";

/// Where kxend's socket is.
pub fn socket_path() -> std::path::PathBuf {
    run_dir().join(SOCKET_NAME)
}

pub fn run_dir() -> std::path::PathBuf {
    std::env::var_os(RUN_DIR_ENV)
        .map(Into::into)
        .unwrap_or_else(|| DEFAULT_RUN_DIR.into())
}

pub fn state_dir() -> std::path::PathBuf {
    std::env::var_os(STATE_DIR_ENV)
        .map(Into::into)
        .unwrap_or_else(|| DEFAULT_STATE_DIR.into())
}

/// A domain named by id or by name, as xl accepts.
pub type DomainRef = String;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    Ping,
    /// Build and start a domain from a parsed xl.cfg (as JSON).
    Create {
        config: Box<DomainConfig>,
        config_path: String,
        paused: bool,
    },
    Destroy {
        domain: DomainRef,
    },
    Shutdown {
        domain: DomainRef,
    },
    Reboot {
        domain: DomainRef,
    },
    Pause {
        domain: DomainRef,
    },
    Unpause {
        domain: DomainRef,
    },
    /// Wait until the domain is gone (`shutdown -w`), or `timeout_s` passes.
    WaitGone {
        domain: DomainRef,
        timeout_s: u64,
    },
    List,
    Resolve {
        domain: DomainRef,
    },
    Info,
    Dmesg {
        clear: bool,
    },
    MemSet {
        domain: DomainRef,
        target_kib: u64,
    },
    /// Attach to the domain's console: after the reply, raw bytes.
    Console {
        domain: DomainRef,
        /// `pv` or `serial` (`xl console -t`); default: serial for HVM
        /// domains, pv for the others.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kind: Option<ConsoleKind>,
    },
    /// Hot-plug a disk (`xl block-attach`).
    BlockAttach {
        domain: DomainRef,
        disk: Box<crate::disk::DiskSpec>,
    },
    /// Unplug a disk by vdev or device number (`xl block-detach`).
    BlockDetach {
        domain: DomainRef,
        device: String,
        force: bool,
    },
    BlockList {
        domain: DomainRef,
    },
    /// Hot-plug a vif (`xl network-attach`).
    NetworkAttach {
        domain: DomainRef,
        vif: Box<crate::vif::VifSpec>,
    },
    /// Unplug a vif by index or MAC (`xl network-detach`).
    NetworkDetach {
        domain: DomainRef,
        device: String,
    },
    NetworkList {
        domain: DomainRef,
    },
    /// Change a domain's credit weight and cap (`xl sched-credit -d D -w W
    /// -c C`), as xl read them (`-1`: leave as it is). The new values are
    /// in the reply's domain entry.
    SchedCredit {
        domain: DomainRef,
        weight: Option<i64>,
        cap: Option<i64>,
    },
    /// `xl save [-c] [-p] DOMAIN FILE`: write the domain to `path` (kxend
    /// writes it); then destroy it unless `checkpoint` (runs on) or
    /// `leave_paused`.
    Save {
        domain: DomainRef,
        path: String,
        checkpoint: bool,
        leave_paused: bool,
        /// `xl save ... FILE CFG`: the config stored in the file instead
        /// of the domain's own.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        config: Option<Box<DomainConfig>>,
    },
    /// `xl restore [-p] FILE`: a new domain from the file at `path`.
    Restore {
        path: String,
        paused: bool,
        /// `xl restore CFG FILE`: the config the domain is made with
        /// instead of the one stored in the file.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        config: Option<Box<DomainConfig>>,
    },
    /// `xl migrate`'s sending end: after an ok reply the connection
    /// carries [`MigrateFrame`]s from kxend (the domain, paused, as xl's
    /// savefile header, `config` or the domain's own, and libxl's stream;
    /// progress; the outcome), then one [`MigrateVerdict`] line from kxl,
    /// answered with a reply line: `Go` destroys the domain (the
    /// destination runs it), `KeepPaused` leaves it paused, `Committing`
    /// is answered and followed by another verdict, anything else, or the
    /// connection closing before `Committing`, resumes it.
    MigrateSend {
        domain: DomainRef,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        config: Option<Box<DomainConfig>>,
    },
    /// `xl migrate-receive`'s end: after an ok reply kxl forwards the
    /// migration stream (xl's header and libxl's stream) raw; kxend builds
    /// the domain paused from it and answers with a [`Reply`] line (the
    /// domid, or why not), then reads one [`MigrateVerdict`] line: `Go`
    /// unpauses the domain (answered with a reply line), anything else,
    /// or the connection closing, destroys it.
    MigrateReceive,
    /// `xl vcpu-pin DOMAIN VCPU HARD [SOFT]`, the arguments as typed
    /// (kxend reads them as xl does, against the host's CPUs): HARD or
    /// SOFT `-` leaves that affinity as it is.
    VcpuPin {
        domain: DomainRef,
        vcpu: String,
        hard: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        soft: Option<String>,
    },
}

/// One device with its backend's counters, for the list commands.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeviceEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block: Option<crate::xl::BlockInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nic: Option<crate::xl::NicInfo>,
    pub stats: std::collections::BTreeMap<String, u64>,
}

/// kxl's word to kxend at the end of a migration, on either side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MigrateVerdict {
    /// Sender: the destination runs the domain, destroy ours. Receiver:
    /// the sender gave permission, unpause ours.
    Go,
    /// Receiver: the sender gave permission, but leave ours paused
    /// (`migrate-receive -p`).
    GoPaused,
    /// Sender: resume the domain. Receiver: destroy our copy.
    Abort,
    /// Sender: the handshake broke after the destination was told to
    /// start; which copy runs is unknown, so leave ours paused, its
    /// backends quiesced, until `unpause` or `destroy` (xl's "domain
    /// state is now undefined").
    KeepPaused,
    /// Sender, before it writes "go" to the destination: xl's point of no
    /// return. Answered with an ok reply; another verdict follows, and
    /// from here a closed connection means `KeepPaused`, not `Abort`
    /// (kxl may have died after the destination started the domain).
    Committing,
}

/// What kxend sends a `migrate-send` client: a tag byte, a little-endian
/// u32 length, that many bytes.
#[derive(Debug, Clone, PartialEq)]
pub enum MigrateFrame {
    /// Stream bytes, for kxl to pass on to the destination as they are.
    Data(Vec<u8>),
    /// How far the save is.
    Progress(MigrateProgress),
    /// The save's outcome; the last frame.
    Done(Box<Reply>),
}

/// A save's progress, in pages of guest memory. A live migration sends
/// memory in iterations (pre-copy): the first sends every page while the
/// domain runs, each next one the pages dirtied meanwhile, and the last
/// (`final_pass`) runs with the domain paused. `pages_sent` and
/// `pages_total` count within the iteration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrateProgress {
    pub pages_sent: u64,
    pub pages_total: u64,
    /// 1 for the first pass (0 from a sender that does not iterate).
    #[serde(default)]
    pub iteration: u32,
    /// The iteration runs with the domain paused (stop-and-copy).
    #[serde(default)]
    pub final_pass: bool,
    /// Pages dirtied per second while the previous iteration was sent
    /// (0 for the first).
    #[serde(default)]
    pub dirty_rate: u64,
}

/// The largest frame either end writes or reads.
pub const MAX_MIGRATE_FRAME: usize = 4 << 20;

/// Why a migration frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {0} bytes is over the limit")]
    TooLong(usize),
    #[error("unknown frame tag {0:#x}")]
    Tag(u8),
    #[error("bad frame body: {0}")]
    Json(#[from] serde_json::Error),
}

impl MigrateFrame {
    const DATA: u8 = b'D';
    const PROGRESS: u8 = b'P';
    const DONE: u8 = b'E';

    /// Write `body` as one frame of kind `tag` (data is written in
    /// pieces of at most [`MAX_MIGRATE_FRAME`]).
    fn put(out: &mut impl std::io::Write, tag: u8, body: &[u8]) -> std::io::Result<()> {
        let len = u32::try_from(body.len())
            .map_err(|_| std::io::Error::other("migration frame over 4 GiB"))?;
        let mut head = [0u8; 5];
        head[0] = tag;
        head[1..].copy_from_slice(&len.to_le_bytes());
        out.write_all(&head)?;
        out.write_all(body)
    }

    pub fn write_data(out: &mut impl std::io::Write, data: &[u8]) -> std::io::Result<()> {
        for chunk in data.chunks(MAX_MIGRATE_FRAME) {
            Self::put(out, Self::DATA, chunk)?;
        }
        Ok(())
    }

    pub fn write(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        match self {
            MigrateFrame::Data(data) => Self::write_data(out, data),
            MigrateFrame::Progress(p) => Self::put(out, Self::PROGRESS, &serde_json::to_vec(p)?),
            MigrateFrame::Done(reply) => Self::put(out, Self::DONE, &serde_json::to_vec(reply)?),
        }
    }

    pub fn read(input: &mut impl std::io::Read) -> Result<MigrateFrame, FrameError> {
        let mut head = [0u8; 5];
        input.read_exact(&mut head)?;
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if len > MAX_MIGRATE_FRAME {
            return Err(FrameError::TooLong(len));
        }
        let mut body = vec![0u8; len];
        input.read_exact(&mut body)?;
        Ok(match head[0] {
            Self::DATA => MigrateFrame::Data(body),
            Self::PROGRESS => MigrateFrame::Progress(serde_json::from_slice(&body)?),
            Self::DONE => MigrateFrame::Done(Box::new(serde_json::from_slice(&body)?)),
            tag => return Err(FrameError::Tag(tag)),
        })
    }
}

/// One domain as kxend reports it: xl's view plus what kxl needs on top.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DomainEntry {
    pub info: DomainInfo,
    /// The configuration it was created from (none for Domain-0).
    pub config: Option<DomainConfig>,
    pub max_memory_kib: u64,
    pub uptime_s: u64,
    /// Credit weight and cap (`xl sched-credit`); none for a domain that
    /// is not running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sched: Option<CreditParams>,
    /// Each vCPU as its host thread shows it (`xl vcpu-list`): the real
    /// affinity read back from the thread. None where kxend has no
    /// threads to look at (Domain-0, a domain that is not running).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<Vec<VcpuInfo>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domains: Option<Vec<DomainEntry>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<XlInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Set when the request named a domain kxend does not know (kxl prints
    /// xl's "invalid domain identifier" message for it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown_domain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<Vec<DeviceEntry>>,
    /// xl's messages for a refused `sched-credit`/`vcpu-pin`, one per
    /// line, for kxl to print on stderr as they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xl_messages: Option<Vec<String>>,
}

impl Reply {
    pub fn ok() -> Self {
        Reply {
            ok: true,
            ..Default::default()
        }
    }

    pub fn error(msg: impl Into<String>) -> Self {
        Reply {
            ok: false,
            error: Some(msg.into()),
            ..Default::default()
        }
    }

    pub fn unknown_domain(domain: &str) -> Self {
        Reply {
            unknown_domain: Some(domain.to_string()),
            ..Reply::error(format!("unknown domain {domain}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_as_tagged_json() {
        let r = Request::Shutdown {
            domain: "guest".into(),
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(text, r#"{"op":"shutdown","domain":"guest"}"#);
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), r);
        assert!(serde_json::from_str::<Request>(r#"{"op":"nope"}"#).is_err());
    }

    #[test]
    fn migrate_frames_round_trip_and_bound_their_length() {
        let frames = [
            MigrateFrame::Data(b"stream".to_vec()),
            MigrateFrame::Progress(MigrateProgress {
                pages_sent: 3,
                pages_total: 9,
                iteration: 2,
                final_pass: false,
                dirty_rate: 100,
            }),
            MigrateFrame::Done(Box::new(Reply::error("no"))),
        ];
        let mut bytes = Vec::new();
        for f in &frames {
            f.write(&mut bytes).unwrap();
        }
        let mut input = bytes.as_slice();
        for f in &frames {
            assert_eq!(&MigrateFrame::read(&mut input).unwrap(), f);
        }
        assert!(input.is_empty());
        let mut huge = vec![b'D'];
        huge.extend(u32::MAX.to_le_bytes());
        assert!(matches!(
            MigrateFrame::read(&mut huge.as_slice()),
            Err(FrameError::TooLong(_))
        ));
        assert!(matches!(
            MigrateFrame::read(&mut &b"X\0\0\0\0"[..]),
            Err(FrameError::Tag(b'X'))
        ));
    }
}

/// Which of a domain's consoles `xl console -t` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsoleKind {
    Pv,
    Serial,
}

//! `xl list` and `xl vm-list` (xl_info.c: list_domains,
//! list_domains_details, list_vm): the domain table, its long (JSON) form,
//! and the shutdown reasons and states it shows.

use serde::{Deserialize, Serialize};

use crate::config::Uuid;

/// Why a domain shut down (libxl_shutdown_reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShutdownReason {
    Poweroff,
    Reboot,
    Suspend,
    Crash,
    Watchdog,
    SoftReset,
    Unknown,
}

impl ShutdownReason {
    /// The numeric code (SHUTDOWN_* in Xen's sched.h; -1 for unknown).
    pub fn code(self) -> i32 {
        match self {
            ShutdownReason::Poweroff => 0,
            ShutdownReason::Reboot => 1,
            ShutdownReason::Suspend => 2,
            ShutdownReason::Crash => 3,
            ShutdownReason::Watchdog => 4,
            ShutdownReason::SoftReset => 5,
            ShutdownReason::Unknown => -1,
        }
    }

    pub fn from_code(code: i32) -> ShutdownReason {
        match code {
            0 => ShutdownReason::Poweroff,
            1 => ShutdownReason::Reboot,
            2 => ShutdownReason::Suspend,
            3 => ShutdownReason::Crash,
            4 => ShutdownReason::Watchdog,
            5 => ShutdownReason::SoftReset,
            _ => ShutdownReason::Unknown,
        }
    }

    /// The letter in the fifth state column of `xl list`: `-` poweroff,
    /// `r` reboot, `s` suspend, `c` crash, `w` watchdog, `S` soft reset,
    /// `?` anything else.
    pub fn letter(self) -> char {
        match self {
            ShutdownReason::Poweroff => '-',
            ShutdownReason::Reboot => 'r',
            ShutdownReason::Suspend => 's',
            ShutdownReason::Crash => 'c',
            ShutdownReason::Watchdog => 'w',
            ShutdownReason::SoftReset => 'S',
            ShutdownReason::Unknown => '?',
        }
    }
}

/// What `xl list` shows about one domain (libxl_dominfo).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainInfo {
    pub domid: u32,
    pub name: String,
    pub uuid: Uuid,
    /// Memory the domain has now, in KiB.
    pub current_memkb: u64,
    /// Memory claimed but not yet allocated, in KiB.
    #[serde(default)]
    pub outstanding_memkb: u64,
    /// Online vCPUs.
    pub vcpu_online: u32,
    /// A vCPU is running on a physical CPU.
    pub running: bool,
    /// All vCPUs are blocked (waiting for an event).
    pub blocked: bool,
    pub paused: bool,
    /// The domain has shut down (see `shutdown_reason`).
    pub shutdown: bool,
    /// The domain is being destroyed.
    pub dying: bool,
    /// Meaningful when `shutdown` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown_reason: Option<ShutdownReason>,
    /// CPU time used, in nanoseconds.
    pub cpu_time_ns: u64,
    /// XSM security label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssid_label: Option<String>,
    /// CPU pool name (`xl list -c`); Xen's default pool is `Pool-0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpupool: Option<String>,
}

impl DomainInfo {
    /// The six state letters: running, blocked, paused, shutdown, shutdown
    /// reason, dying; `-` where a flag is clear.
    pub fn state(&self) -> String {
        let reason = if self.shutdown {
            self.shutdown_reason.unwrap_or(ShutdownReason::Unknown)
        } else {
            ShutdownReason::Poweroff
        };
        let flag = |set: bool, c: char| if set { c } else { '-' };
        [
            flag(self.running, 'r'),
            flag(self.blocked, 'b'),
            flag(self.paused, 'p'),
            flag(self.shutdown, 's'),
            reason.letter(),
            flag(self.dying, 'd'),
        ]
        .iter()
        .collect()
    }

    /// The shutdown reason code `xl list -v` prints (0 when running).
    fn reason_code(&self) -> i32 {
        if self.shutdown {
            self.shutdown_reason
                .unwrap_or(ShutdownReason::Unknown)
                .code()
        } else {
            0
        }
    }
}

/// `xl list` options.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// `-v`: UUID, shutdown reason code and security label.
    pub verbose: bool,
    /// `-Z`: security label.
    pub context: bool,
    /// `-c`: CPU pool.
    pub cpupool: bool,
}

/// The header line of `xl list`.
pub fn list_header(opts: ListOptions) -> String {
    let mut s =
        String::from("Name                                        ID   Mem VCPUs\tState\tTime(s)");
    if opts.verbose {
        s.push_str("   UUID                            Reason-Code\tSecurity Label");
    }
    if opts.context && !opts.verbose {
        s.push_str("   Security Label");
    }
    if opts.cpupool {
        s.push_str("         Cpupool");
    }
    s.push('\n');
    s
}

/// C's `(float)ns / 1e9`: xl narrows the time to a float before dividing.
pub(super) fn seconds(ns: u64) -> f64 {
    f64::from(ns as f32) / 1e9
}

/// One line of `xl list`.
pub fn list_row(d: &DomainInfo, opts: ListOptions) -> String {
    let mut s = format!(
        "{:<40} {:>5} {:>5} {:>5}     {}  {:>8.1}",
        d.name,
        d.domid,
        (d.current_memkb + d.outstanding_memkb) / 1024,
        d.vcpu_online,
        d.state(),
        seconds(d.cpu_time_ns),
    );
    if opts.verbose {
        s.push_str(&format!(" {}", d.uuid));
        if d.shutdown {
            s.push_str(&format!(" {:>8x}", d.reason_code()));
        } else {
            s.push_str(&format!(" {:>8}", "-"));
        }
    }
    if opts.verbose || opts.context {
        s.push_str(&format!(" {:>16}", d.ssid_label.as_deref().unwrap_or("-")));
    }
    if opts.cpupool {
        s.push_str(&format!("{:>16}", d.cpupool.as_deref().unwrap_or("Pool-0")));
    }
    s.push('\n');
    s
}

/// The whole `xl list` output, domains in domid order (Domain-0 first).
pub fn list(domains: &[DomainInfo], opts: ListOptions) -> String {
    let mut sorted: Vec<&DomainInfo> = domains.iter().collect();
    sorted.sort_by_key(|d| d.domid);
    let mut s = list_header(opts);
    for d in sorted {
        s.push_str(&list_row(d, opts));
    }
    s
}

/// `xl vm-list` (xl_info.c: list_vm): header.
pub fn vm_list_header() -> String {
    "UUID                                  ID    name\n".to_string()
}

/// `xl vm-list`: one guest (Domain-0 is not listed).
pub fn vm_list_row(uuid: &Uuid, domid: u32, name: &str) -> String {
    format!("{uuid}  {domid}    {name:<30}\n")
}

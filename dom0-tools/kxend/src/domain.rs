//! One running domain: its kxen-vmm process and the Dom0 services
//! attached to it.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};
use vmm_sys_util::eventfd::EventFd;

use crate::console::ConsoleBackend;
use crate::reactor::{self, reactor, Next, Token};
use crate::store::StoreService;
use kxen_foreign::foreign::ForeignMemory;
use kxen_toolstack::config::DomainType;
use kxen_toolstack::protocol::ConsoleKind;
use kxen_vmm_api::protocol::DomainInfo;
use kxen_vmm_api::{ClientError, VmmClient};

/// What kxend persists about a domain, so a restarted kxend re-attaches.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DomainRecord {
    pub domid: u32,
    pub name: String,
    pub uuid: String,
    pub pid: u32,
    pub control: PathBuf,
    pub exit_file: PathBuf,
    pub console_log: PathBuf,
    /// The parsed xl.cfg.
    pub config: kxen_toolstack::config::DomainConfig,
    pub created: SystemTime,
    pub memory_kib: u64,
    pub max_memory_kib: u64,
    pub vcpus: u32,
    /// What `xl sched-credit` and `xl vcpu-pin` changed since creation.
    #[serde(default)]
    pub tuning: Tuning,
}

/// A domain's scheduler settings that only kxend keeps: its credit weight
/// and cap (applied to its cgroup) and its vCPUs' soft affinity (which
/// Linux has no use for). Hard affinity lives in the vCPU threads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tuning {
    pub sched: kxen_toolstack::xl::CreditParams,
    /// vCPU id to its soft affinity; a vCPU not here has every CPU.
    #[serde(default)]
    pub soft_affinity: std::collections::BTreeMap<u32, Vec<u32>>,
}

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("{0}")]
    Link(#[from] ClientError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("kxen-vmm sent {0}")]
    Protocol(String),
}

/// A ring the VMM hands to Dom0: the guest's frame and event channel.
#[derive(Debug, Clone, Copy, Default)]
pub struct RingInfo {
    pub pfn: u64,
    pub port: u32,
}

/// A live domain.
pub struct Domain {
    pub record: DomainRecord,
    pub console_ring: RingInfo,
    pub store_ring: RingInfo,
    link: Mutex<VmmClient>,
    pub console: Arc<ConsoleBackend>,
    /// An HVM domain's COM1.
    pub serial: Option<Arc<ConsoleBackend>>,
    pub paused: AtomicBool,
    /// Starts as the record's; kxend saves the record when it changes.
    pub tuning: Mutex<Tuning>,
    /// Kept open while the event loop watches it.
    _store_kick: Arc<EventFd>,
    store_token: Mutex<Option<Token>>,
}

fn eventfd(fd: OwnedFd) -> EventFd {
    // SAFETY: `fd` is an eventfd kxen-vmm sent us; we own it from here.
    unsafe {
        <EventFd as std::os::fd::FromRawFd>::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(fd))
    }
}

impl Domain {
    /// Connect to a running kxen-vmm and start its console and xenstore
    /// service. `resume`: a previous kxend served this domain.
    pub fn attach(
        record: DomainRecord,
        store: Arc<dyn StoreService>,
        limit: Duration,
        resume: bool,
    ) -> Result<Arc<Self>, AttachError> {
        let mut link = VmmClient::connect_within(&record.control, limit)?;
        let guest = link.memfd()?;
        let memory = Arc::new(ForeignMemory::map(guest.memfd, guest.size, guest.regions)?);
        let mut console = None;
        let mut xenstore = None;
        for port in link.dom0_ports()? {
            let pfn = port.info.pfn;
            let page = memory
                .page(pfn)
                .ok_or_else(|| AttachError::Protocol(format!("ring pfn {pfn:#x} not mapped")))?;
            let ring = RingInfo {
                pfn,
                port: port.info.local_port,
            };
            let ends = (page, eventfd(port.to_dom0), eventfd(port.from_dom0), ring);
            match port.info.name.as_str() {
                "console" => console = Some(ends),
                "xenstore" => xenstore = Some(ends),
                other => warn!(other, "unknown Dom0 port"),
            }
        }
        let (cpage, ckick, cnotify, cport) =
            console.ok_or_else(|| AttachError::Protocol("no console port".into()))?;
        let (spage, skick, snotify, sport) =
            xenstore.ok_or_else(|| AttachError::Protocol("no xenstore port".into()))?;
        let (console_ring, store_ring) = (cport, sport);
        let hvm = record.config.domain_type == DomainType::Hvm;
        // An HVM domain's main console is its serial line; its PV console
        // (for PVHVM guests) keeps a log of its own.
        let pv_log = if hvm {
            record
                .console_log
                .with_file_name(format!("guest-{}-pv.log", record.name))
        } else {
            record.console_log.clone()
        };
        let console = ConsoleBackend::new(cpage, ckick, cnotify, pv_log)?;
        console.start()?;
        let serial = if hvm {
            let line = link.serial()?;
            let serial = ConsoleBackend::new_line(line.into(), record.console_log.clone())?;
            serial.start()?;
            Some(serial)
        } else {
            None
        };

        let domid = record.domid;
        let snotify = Arc::new(snotify);
        let notify = snotify.clone();
        store.introduce(
            domid,
            spage,
            Box::new(move || {
                let _ = notify.write(1);
            }),
            resume,
        );
        // The guest's xenstore notifications, forwarded from the event
        // loop to xenstored's own service thread.
        let store_kick = Arc::new(skick);
        let kick = store_kick.clone();
        let on_kick = move |_| {
            if kick.read().is_ok() {
                store.kick(domid);
            }
            Next::Keep
        };
        let store_token = reactor().add(store_kick.as_raw_fd(), reactor::IN, Arc::new(on_kick))?;
        store_kick.write(1)?;
        let paused = link.info()?.paused;
        info!(domid, name = %record.name, "attached to kxen-vmm");
        Ok(Arc::new(Domain {
            tuning: Mutex::new(record.tuning.clone()),
            record,
            console_ring,
            store_ring,
            link: Mutex::new(link),
            console,
            serial,
            paused: AtomicBool::new(paused),
            _store_kick: store_kick,
            store_token: Mutex::new(Some(store_token)),
        }))
    }

    /// The console `xl console -t KIND` attaches to: by default the serial
    /// line of an HVM domain, else the PV console.
    pub fn console_for(&self, kind: Option<ConsoleKind>) -> Option<Arc<ConsoleBackend>> {
        match (kind, &self.serial) {
            (Some(ConsoleKind::Pv), _) | (None, None) => Some(self.console.clone()),
            (Some(ConsoleKind::Serial) | None, Some(serial)) => Some(serial.clone()),
            (Some(ConsoleKind::Serial), None) => None,
        }
    }

    /// Run `call` on the VMM's control connection.
    fn control<T>(
        &self,
        call: impl FnOnce(&mut VmmClient) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        call(&mut self.link.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The VMM's view of the domain.
    pub fn info(&self) -> Result<DomainInfo, ClientError> {
        self.control(VmmClient::info)
    }

    /// Tell the VMM to end the domain.
    pub fn destroy(&self) -> Result<(), ClientError> {
        self.control(VmmClient::destroy)
    }

    pub fn pause(&self) -> Result<(), ClientError> {
        self.control(VmmClient::pause)?;
        self.paused.store(true, Ordering::SeqCst);
        Ok(())
    }

    pub fn unpause(&self) -> Result<(), ClientError> {
        self.control(VmmClient::unpause)?;
        self.paused.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Stop the Dom0 services of a domain that is gone.
    pub fn detach(&self) {
        if let Some(token) = self
            .store_token
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            reactor().remove(token);
        }
        self.console.stop();
        if let Some(serial) = &self.serial {
            serial.stop();
        }
    }
}

/// Whether `pid` runs (exists and is not a zombie).
pub fn process_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state letter follows the parenthesised command name.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_some_and(|state| state != "Z" && state != "X")
}

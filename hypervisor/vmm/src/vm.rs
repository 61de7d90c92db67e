//! Run a built domain to its end: the vCPU threads, and on the calling
//! thread the event loop that serves everything else.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{error, info, warn};
use vmm_sys_util::signal::Killable;

use crate::ap_start::ApMailbox;
use crate::builder::{self, Vm};
use crate::control::{ControlHandles, ControlServer};
use crate::dom0::Dom0Notifications;
use crate::event_loop::{subscriber, DomainTimers, EventLoop, SignalWatch};
use crate::events::Dom0WakeRelay;
use crate::kick::Kicker;
use crate::virtio::VirtioInterrupts;

pub use crate::config::VmConfig;
pub use crate::error::VmError;
pub use crate::exit::DomainExit;

fn setup<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> VmError {
    move |e| VmError::Setup(format!("{what}: {e}"))
}

/// Build the domain and run it until it ends.
/// `started` is when the process began, for the start-to-entry figure.
pub fn run(cfg: VmConfig, started: Instant, report_timing: bool) -> Result<DomainExit, VmError> {
    // SIGTERM and SIGINT destroy the domain: every thread inherits the
    // blocked mask and the event loop reads them from a signalfd.
    SignalWatch::block_termination().map_err(setup("signal mask"))?;
    let vm = builder::build(&cfg, started)?;
    let Vm {
        domain,
        memory,
        dom0,
        events,
        hvm,
        kicker,
        pauser,
        exit,
        ap_start,
        timers_changed,
        vcpu_shared,
        vcpus,
        boot,
        max_memory_kib,
    } = vm;

    let mut event_loop = EventLoop::new(exit.clone()).map_err(setup("event loop"))?;
    event_loop.add(subscriber(
        SignalWatch::new(exit.clone()).map_err(setup("signalfd"))?,
    ));
    event_loop.add(subscriber(
        DomainTimers::new(domain.clone(), timers_changed).map_err(setup("timerfd"))?,
    ));
    if cfg.vcpus > 1 {
        event_loop.add(subscriber(
            ApMailbox::new(ap_start, domain.clone(), memory.clone())
                .map_err(setup("AP mailbox timerfd"))?,
        ));
    }
    event_loop.add(subscriber(
        crate::events::UpcallRetry::new(events.clone()).map_err(setup("upcall retry timerfd"))?,
    ));
    event_loop.add(subscriber(
        crate::events::StaleUpcallSweep::new(domain.clone(), pauser.gate.clone(), cfg.vcpus)
            .map_err(setup("stale upcall sweep timerfd"))?,
    ));
    event_loop.add(subscriber(Dom0WakeRelay {
        routing: events.clone(),
        domain: domain.clone(),
    }));
    event_loop.add(subscriber(Dom0Notifications {
        ports: dom0.clone(),
        domain: domain.clone(),
    }));
    if let Some(devices) = &hvm {
        if let Some(feeder) = devices.serial_input()? {
            event_loop.add(subscriber(feeder));
        }
        if let Some(virtio) = &devices.virtio {
            event_loop.add(subscriber(VirtioInterrupts(virtio.clone())));
        }
    }
    if let Some(path) = &cfg.control_socket {
        let handles = ControlHandles {
            domain: domain.clone(),
            memory: memory.clone(),
            dom0: dom0.clone(),
            events: events.clone(),
            hvm: hvm.clone(),
            pv: vcpu_shared.pv.clone(),
            exit: exit.clone(),
            pauser,
            started,
            max_memory_kib,
            restore_buffer: std::sync::Mutex::new(None),
            perf: vcpu_shared.perf.clone(),
            syscall_bridge: vcpu_shared.syscall_bridge.clone(),
        };
        let server = ControlServer::bind(handles, path.clone())
            .map_err(|e| VmError::Setup(format!("control socket {}: {e}", path.display())))?;
        event_loop.add(subscriber(server));
    }

    let mut handles: Vec<JoinHandle<()>> = Vec::new();
    // Each vCPU thread says when it is done, for the teardown.
    let (finished_tx, finished_rx) = mpsc::channel::<u32>();
    for vcpu in vcpus {
        let id = vcpu.id;
        let finished = finished_tx.clone();
        let handle = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || {
                crate::seccomp::install(crate::seccomp::ThreadClass::Vcpu);
                vcpu.run();
                let _ = finished.send(id);
            })
            .map_err(setup("vCPU thread"))?;
        kicker.register(id, handle.pthread_handle());
        handles.push(handle);
    }
    // Every thread is running: the main thread (the event loop) confines
    // itself too.
    crate::seccomp::install(crate::seccomp::ThreadClass::Service);
    info!(
        domid = cfg.domid,
        name = %cfg.name,
        memory_mib = cfg.memory_mib,
        vcpus = cfg.vcpus,
        entry = boot.entry(),
        "domain built in {:?}",
        started.elapsed()
    );

    // Serve until the domain's end is requested, then stop every thread.
    if let Err(e) = event_loop.run() {
        error!("event loop: {e}");
        exit.request_exit(DomainExit::Crashed(format!("event loop: {e}")));
    }
    let exit_reason = exit
        .reason()
        .unwrap_or(DomainExit::Crashed("unknown".into()));
    tracing::debug!("event state at exit: {}", domain.describe_event_state());
    domain.stop();
    if let Some(devices) = &hvm {
        devices.stop();
    }
    drop(finished_tx);
    stop_vcpus(handles, &kicker, &finished_rx);
    // The control socket goes with the loop's subscribers.
    drop(event_loop);
    if let Some(path) = &cfg.exit_file {
        let line = format!("{} {}\n", exit_reason.exit_code(), exit_reason.describe());
        if let Err(e) = std::fs::write(path, line) {
            warn!("exit file {}: {e}", path.display());
        }
    }
    if let Some(entry) = vcpu_shared.guest_entry_after() {
        info!("guest entry {:?} after start", entry);
        if report_timing {
            eprintln!("kxen-vmm: guest-entry-us={}", entry.as_micros());
        }
    }
    Ok(exit_reason)
}

/// How long the teardown waits for the vCPU threads before it kicks the
/// ones still running again. One kick is enough (see [`stop_vcpus`]); this
/// is a safety net that shows in the log if it is ever needed.
const STRAGGLER_REKICK: Duration = Duration::from_millis(100);

/// Get every vCPU thread out and join it. The domain is stopping already:
/// [`kxen_xen::Domain::stop`] released the vCPUs waiting inside the
/// hypervisor and the exit latch opened the guest entry gate for good, and
/// a vCPU checks `is_stopping` after every KVM_RUN. One kick per thread
/// ends a KVM_RUN in progress, and one about to start (the kick sets
/// immediate_exit). Each thread reports on `finished` as it ends.
fn stop_vcpus(handles: Vec<JoinHandle<()>>, kicker: &Kicker, finished: &mpsc::Receiver<u32>) {
    for vcpu in 0..handles.len() {
        kicker.kick(vcpu as u32);
    }
    let mut running = handles.len();
    while running > 0 {
        match finished.recv_timeout(STRAGGLER_REKICK) {
            Ok(_) => running -= 1,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                for (vcpu, handle) in handles.iter().enumerate() {
                    if !handle.is_finished() {
                        warn!(
                            vcpu,
                            "vCPU thread still running after its kick; kicking again"
                        );
                        kicker.kick(vcpu as u32);
                    }
                }
            }
            // Every thread has ended (one that panicked says nothing).
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    for (vcpu, handle) in handles.into_iter().enumerate() {
        kicker.forget(vcpu as u32);
        if handle.join().is_err() {
            error!(vcpu, "vCPU thread panicked");
        }
    }
}

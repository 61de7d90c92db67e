//! kxend's event loop and its small fixed worker pool.
//!
//! One thread waits in epoll on every descriptor kxend serves for its
//! domains: console notifications and lines, attached console clients,
//! VMM pidfds, the kxend.sock listener. Handlers that only move bytes run
//! on the loop; work that may block (a domain's death, a kxl request, a
//! xenbus handshake step that connects a backend) goes to a worker pool
//! whose size is fixed, so an idle domain owns no thread and kxend's
//! thread count does not grow with the number of domains.

use std::collections::{HashMap, VecDeque};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use tracing::warn;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

/// What a handler wants after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Keep the registration.
    Keep,
    /// Deregister (the handler is done with its descriptor).
    Remove,
}

/// Something the loop calls when its descriptor is ready. It runs on the
/// loop thread, so it must not block.
pub trait Handler: Send + Sync {
    fn ready(&self, events: u32) -> Next;
}

impl<F: Fn(u32) -> Next + Send + Sync> Handler for F {
    fn ready(&self, events: u32) -> Next {
        self(events)
    }
}

/// A registration, for [`Reactor::remove`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Token(u64);

/// A registered descriptor and what to call when it is ready.
type Registration = (RawFd, Arc<dyn Handler>);

pub struct Reactor {
    epoll: Epoll,
    handlers: Mutex<HashMap<u64, Registration>>,
    next: AtomicU64,
}

pub const IN: u32 = libc::EPOLLIN as u32;
pub const OUT: u32 = libc::EPOLLOUT as u32;
pub const EDGE: u32 = libc::EPOLLET as u32;
/// The peer closed both directions, or the descriptor failed.
pub const HANGUP: u32 = (libc::EPOLLHUP | libc::EPOLLERR) as u32;

impl Reactor {
    fn new() -> std::io::Result<Reactor> {
        Ok(Reactor {
            epoll: Epoll::new()?,
            handlers: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
        })
    }

    /// Call `handler` whenever `fd` has `events` (IN, OUT, EDGE...). The
    /// descriptor must stay open until [`Self::remove`] or the handler
    /// returns [`Next::Remove`].
    pub fn add(&self, fd: RawFd, events: u32, handler: Arc<dyn Handler>) -> std::io::Result<Token> {
        self.add_with(fd, events, |_| handler)
    }

    /// As [`Self::add`], for a handler that needs its own token (to
    /// deregister itself before it hands its descriptor on: a descriptor
    /// registered again meanwhile must not be deleted by a late removal).
    pub fn add_with(
        &self,
        fd: RawFd,
        events: u32,
        make: impl FnOnce(Token) -> Arc<dyn Handler>,
    ) -> std::io::Result<Token> {
        let token = self.next.fetch_add(1, Ordering::Relaxed);
        let handler = make(Token(token));
        self.handlers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token, (fd, handler));
        let event = EpollEvent::new(EventSet::from_bits_truncate(events), token);
        if let Err(e) = self.epoll.ctl(ControlOperation::Add, fd, event) {
            self.handlers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&token);
            return Err(e);
        }
        Ok(Token(token))
    }

    /// Stop calling a registration's handler. After this returns the
    /// handler may still be running once on the loop thread, never again.
    pub fn remove(&self, token: Token) {
        let removed = self
            .handlers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&token.0);
        if let Some((fd, _)) = removed {
            // A descriptor closed meanwhile only makes this fail, which
            // is harmless: closing it already deregistered it.
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        }
    }

    fn run(&self) {
        let mut events = vec![EpollEvent::default(); 64];
        loop {
            // No timeout: the loop sleeps until a descriptor is ready.
            let n = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) => {
                    if e.kind() != std::io::ErrorKind::Interrupted {
                        warn!("epoll_wait: {e}");
                    }
                    continue;
                }
            };
            for ev in &events[..n] {
                let (token, flags) = (ev.data(), ev.events());
                let handler = self
                    .handlers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&token)
                    .map(|(_, h)| h.clone());
                if let Some(handler) = handler {
                    if handler.ready(flags) == Next::Remove {
                        self.remove(Token(token));
                    }
                }
            }
        }
    }
}

/// kxend's one event loop, started on first use.
pub fn reactor() -> &'static Reactor {
    static REACTOR: OnceLock<&'static Reactor> = OnceLock::new();
    REACTOR.get_or_init(|| {
        let reactor: &'static Reactor = Box::leak(Box::new(
            Reactor::new().expect("kxend cannot create its epoll"),
        ));
        std::thread::Builder::new()
            .name("kxend-events".into())
            .spawn(move || reactor.run())
            .expect("kxend cannot start its event loop");
        reactor
    })
}

type Job = Box<dyn FnOnce() + Send>;

/// A fixed-size pool of worker threads, started as work arrives (up to
/// `max`) and then kept: parked on a condition variable, they cost nothing.
pub struct Pool {
    name: &'static str,
    max: usize,
    state: Mutex<PoolState>,
    ready: Condvar,
}

struct PoolState {
    queue: VecDeque<Job>,
    threads: usize,
    idle: usize,
}

impl Pool {
    pub const fn new(name: &'static str, max: usize) -> Pool {
        Pool {
            name,
            max,
            state: Mutex::new(PoolState {
                queue: VecDeque::new(),
                threads: 0,
                idle: 0,
            }),
            ready: Condvar::new(),
        }
    }

    /// Run `job` on a worker; it waits in line if all are busy.
    pub fn spawn(&'static self, job: impl FnOnce() + Send + 'static) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.queue.push_back(Box::new(job));
        if state.idle == 0 && state.threads < self.max {
            let started = std::thread::Builder::new()
                .name(self.name.into())
                .spawn(move || self.work());
            match started {
                Ok(_) => state.threads += 1,
                Err(e) => warn!(pool = self.name, "cannot start a worker: {e}"),
            }
        }
        drop(state);
        self.ready.notify_one();
    }

    fn work(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(job) = state.queue.pop_front() {
                drop(state);
                job();
                state = self.state.lock().unwrap_or_else(|e| e.into_inner());
                continue;
            }
            state.idle += 1;
            state = self.ready.wait(state).unwrap_or_else(|e| e.into_inner());
            state.idle -= 1;
        }
    }
}

/// kxl clients' requests (creates, waits for a domain to go). A request
/// may hold its worker for as long as it waits (`shutdown -w` on a guest
/// that ignores it), so the cap is well above the requests people run at
/// once: a `kxl list` must not queue behind a few such waits. Workers are
/// started only when all are busy and park when idle, so the count
/// follows concurrent requests, never the number of domains.
pub static CLIENTS: Pool = Pool::new("kxend-client", 64);
/// Domain lifecycle and device work: deaths, restarts, xenbus steps.
pub static DOMAINS: Pool = Pool::new("kxend-domain", 4);

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::sync::mpsc::channel;
    use std::time::Duration;
    use vmm_sys_util::eventfd::EventFd;

    #[test]
    fn handlers_run_on_readiness_and_stop_when_removed() {
        let fd = Arc::new(EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"));
        let (tx, rx) = channel();
        let tx = Mutex::new(tx);
        let reader = fd.clone();
        let token = reactor()
            .add(
                fd.as_raw_fd(),
                IN,
                Arc::new(move |_| {
                    let n = reader.read().unwrap_or(0);
                    let _ = tx.lock().expect("lock").send(n);
                    Next::Keep
                }),
            )
            .expect("add");
        fd.write(3).expect("write");
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(3));
        fd.write(4).expect("write");
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(4));
        reactor().remove(token);
        fd.write(5).expect("write");
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
    }

    #[test]
    fn pool_threads_are_bounded() {
        static POOL: Pool = Pool::new("test-pool", 2);
        let (tx, rx) = channel();
        for i in 0..20 {
            let tx = tx.clone();
            POOL.spawn(move || {
                let _ = tx.send(i);
            });
        }
        let mut got: Vec<i32> = (0..20)
            .map(|_| rx.recv_timeout(Duration::from_secs(5)).expect("job ran"))
            .collect();
        got.sort_unstable();
        assert_eq!(got, (0..20).collect::<Vec<_>>());
        assert!(POOL.state.lock().expect("lock").threads <= 2);
    }
}

//! The running daemon: one service thread with an epoll loop serving Unix
//! sockets and domain rings, and the API the embedder (kxend) uses.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::config::Config;
use crate::core::{Core, Effects, WatchCallback, EV_CONN, RING_BUDGET};
use crate::error::{Error, XsError};
use crate::path;
use crate::perms::Perms;
use crate::persist;
use crate::ring::SharedPage;
use crate::view::View;

const EV_WAKE: u64 = 0;
const EV_LISTENER: u64 = 1 << 56;
const ID_MASK: u64 = (1 << 56) - 1;
/// How often the loop looks at rings and timed-out events unprompted.
const HOUSEKEEPING: Duration = Duration::from_millis(500);

struct Listener {
    listener: UnixListener,
    path: PathBuf,
}

struct Inner {
    core: Mutex<Core>,
    listeners: Mutex<HashMap<u64, Listener>>,
    next_listener: Mutex<u64>,
    epoll: OwnedFd,
    wake: OwnedFd,
    kicks: Mutex<Vec<u32>>,
    stop: AtomicBool,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Signalled (with `core`) when the store has unsaved changes.
    changed: Condvar,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a live u64 to our eventfd.
        unsafe {
            libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8);
        }
    }
}

/// The xenstore daemon. Cheap to clone; all clones are the same daemon.
///
/// It runs one service thread (started by [`Xenstored::new`], stopped only
/// by [`Xenstored::shutdown`]) that serves Unix-socket clients and domain
/// rings. The embedder's own calls
/// ([`Xenstored::write`], [`Xenstored::introduce_domain`], ...) run in the
/// caller's thread under the same lock; watch callbacks and guest
/// notifications run after the lock is released.
#[derive(Clone)]
pub struct Xenstored {
    inner: Arc<Inner>,
}

/// A Unix socket the daemon listens on; see [`Xenstored::serve_unix`].
/// Dropping the handle keeps the socket served (until
/// [`Xenstored::shutdown`]); [`UnixServer::stop`] ends it.
#[must_use = "keep the handle to stop serving the socket later"]
pub struct UnixServer {
    id: u64,
    path: PathBuf,
    daemon: Xenstored,
}

impl UnixServer {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stop accepting, close this socket's clients and remove the socket
    /// file.
    pub fn stop(self) {
        let inner = &self.daemon.inner;
        let l = inner
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
        if let Some(l) = l {
            // SAFETY: deregistering a still-open fd from our epoll fd.
            unsafe {
                libc::epoll_ctl(
                    inner.epoll.as_raw_fd(),
                    libc::EPOLL_CTL_DEL,
                    l.listener.as_raw_fd(),
                    std::ptr::null_mut(),
                );
            }
            let _ = std::fs::remove_file(&l.path);
        }
        let mut core = inner.lock();
        for c in core.socket_conns_of(self.id) {
            core.close(c);
        }
    }
}

/// A callback watch; see [`Xenstored::watch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WatchId(u64);

/// Several store operations done atomically as Dom0; see
/// [`Xenstored::batch`].
pub struct Batch<'a> {
    core: &'a mut Core,
}

impl Batch<'_> {
    fn op<R>(
        &mut self,
        f: impl FnOnce(&mut View<'_>, &str) -> Result<R, XsError>,
        path: &str,
    ) -> Result<R, XsError> {
        let canon = path::canonicalize(&path::domain_path(0), path.as_bytes()).into_owned();
        let max = self.core.quotas.path_max;
        let name = path::valid_node(&canon, max)
            .ok_or(XsError::Inval)?
            .to_string();
        self.core.dom0_op(|v| f(v, &name))
    }

    /// Read a node's value.
    pub fn read(&mut self, path: &str) -> Result<Vec<u8>, XsError> {
        self.op(|v, n| v.read(n), path)
    }

    /// Write a value, creating the node and missing parents (which inherit
    /// their parent's permissions).
    pub fn write(&mut self, path: &str, value: &[u8]) -> Result<(), XsError> {
        self.op(|v, n| v.write(n, value), path)
    }

    /// Write a value and set the node's permissions in one step.
    pub fn write_with_perms(
        &mut self,
        path: &str,
        value: &[u8],
        perms: &Perms,
    ) -> Result<(), XsError> {
        self.op(
            |v, n| {
                v.write(n, value)?;
                v.set_perms(n, perms.clone())
            },
            path,
        )
    }

    /// Create a node (and parents) if missing.
    pub fn mkdir(&mut self, path: &str) -> Result<(), XsError> {
        self.op(|v, n| v.mkdir(n), path)
    }

    /// Remove a node and everything below it (fine if already gone, as
    /// long as its parent exists).
    pub fn rm(&mut self, path: &str) -> Result<(), XsError> {
        self.op(|v, n| v.rm(n), path)
    }

    /// The names of a node's children, in creation order.
    pub fn directory(&mut self, path: &str) -> Result<Vec<String>, XsError> {
        let raw = self.op(|v, n| v.directory(n), path)?;
        Ok(raw
            .split(|&c| c == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect())
    }

    /// A node's permissions.
    pub fn get_perms(&mut self, path: &str) -> Result<Perms, XsError> {
        self.op(|v, n| v.get_perms(n), path)
    }

    /// Set a node's permissions, or the special `@introduceDomain` /
    /// `@releaseDomain` watch permissions.
    pub fn set_perms(&mut self, path: &str, perms: &Perms) -> Result<(), XsError> {
        if path.starts_with('@') {
            return self.core.set_special_perms(path, perms.clone());
        }
        self.op(|v, n| v.set_perms(n, perms.clone()), path)
    }

    /// Whether a node exists.
    pub fn exists(&mut self, path: &str) -> bool {
        self.read(path).is_ok()
    }
}

impl Xenstored {
    /// Create the daemon (with the initial tree) and start its service
    /// thread.
    pub fn new(config: Config) -> Result<Xenstored, Error> {
        // SAFETY: plain syscalls creating new fds; ownership is taken at once.
        let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epoll < 0 {
            return Err(Error::io("epoll_create1", std::io::Error::last_os_error()));
        }
        // SAFETY: `epoll` is a fresh fd nobody else owns.
        let epoll = unsafe { OwnedFd::from_raw_fd(epoll) };
        // SAFETY: as above.
        let wake = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if wake < 0 {
            return Err(Error::io("eventfd", std::io::Error::last_os_error()));
        }
        // SAFETY: `wake` is a fresh fd nobody else owns.
        let wake = unsafe { OwnedFd::from_raw_fd(wake) };
        epoll_add(
            epoll.as_raw_fd(),
            wake.as_raw_fd(),
            libc::EPOLLIN as u32,
            EV_WAKE,
        )
        .map_err(|e| Error::io("epoll_ctl(eventfd)", e))?;
        let mut core = Core::new(config);
        core.epoll = Some(epoll.as_raw_fd());
        let inner = Arc::new(Inner {
            core: Mutex::new(core),
            listeners: Mutex::new(HashMap::new()),
            next_listener: Mutex::new(1),
            epoll,
            wake,
            kicks: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            thread: Mutex::new(None),
            changed: Condvar::new(),
        });
        let runner = inner.clone();
        let t = std::thread::Builder::new()
            .name("xenstored".into())
            .spawn(move || service_loop(&runner))
            .map_err(|e| Error::io("spawning the xenstored thread", e))?;
        *inner.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(t);
        Ok(Xenstored { inner })
    }

    /// Run `f` on the state, then push out what it queued and run the
    /// callbacks/notifications it caused with the lock released.
    fn with_core<R>(&self, f: impl FnOnce(&mut Core) -> R) -> R {
        let (r, fx, queued) = {
            let mut core = self.inner.lock();
            let r = f(&mut core);
            core.flush_dirty();
            if unsaved(&core) {
                self.inner.changed.notify_all();
            }
            (r, core.take_effects(), core.output_queued())
        };
        fx.run();
        if queued {
            // Output a guest has not room for yet: the service thread
            // keeps house until it is taken (it may sleep without a
            // timeout otherwise).
            self.inner.wake();
        }
        r
    }

    /// Listen for xenstore clients (libxenstore, the xenstore-* tools) on a
    /// Unix socket; they act as Dom0. A stale socket file is replaced.
    pub fn serve_unix(&self, path: impl AsRef<Path>) -> Result<UnixServer, Error> {
        if self.inner.stop.load(Ordering::Acquire) {
            return Err(Error::ShutDown);
        }
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        }
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)
            .map_err(|e| Error::io(format!("binding {}", path.display()), e))?;
        // Socket clients act as Dom0: the owner's alone, and each client's
        // credentials are checked as it connects (`accept_all`).
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::io(format!("setting the mode of {}", path.display()), e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::io("set_nonblocking", e))?;
        let id = {
            let mut n = self
                .inner
                .next_listener
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            *n += 1;
            *n
        };
        epoll_add(
            self.inner.epoll.as_raw_fd(),
            listener.as_raw_fd(),
            libc::EPOLLIN as u32,
            EV_LISTENER | id,
        )
        .map_err(|e| Error::io("epoll_ctl(listener)", e))?;
        self.inner
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                id,
                Listener {
                    listener,
                    path: path.clone(),
                },
            );
        info!(socket = %path.display(), "xenstored listening");
        Ok(UnixServer {
            id,
            path,
            daemon: self.clone(),
        })
    }

    /// Serve a domain's xenstore ring. `ring` is the guest's ring page,
    /// `notify` kicks the guest's xenstore event channel. The ring is reset
    /// to empty and connected (as Xen's `XS_INTRODUCE` does); a domain's
    /// first introduction fires `@introduceDomain`. Introducing an
    /// introduced domain again replaces its ring and drops its watches and
    /// transactions. Call [`Xenstored::ring_kick`] when the guest notifies.
    pub fn introduce_domain(
        &self,
        domid: u32,
        ring: Arc<dyn SharedPage>,
        notify: Box<dyn Fn() + Send + Sync>,
    ) {
        self.with_core(|c| c.introduce(domid, ring, Arc::from(notify)));
    }

    /// Serve again a domain this daemon's state file knew (the toolstack
    /// restarted while the guest ran): the ring is taken as it is, not
    /// reset, and the watches the guest had set are restored silently.
    pub fn resume_domain(
        &self,
        domid: u32,
        ring: Arc<dyn SharedPage>,
        notify: Box<dyn Fn() + Send + Sync>,
    ) {
        self.with_core(|c| c.resume_domain(domid, ring, Arc::from(notify)));
    }

    /// A domain's part of the store, for a save image or a migration:
    /// the nodes under its home and the watches set on its ring.
    pub fn export_domain(&self, domid: u32) -> crate::image::DomainImage {
        self.inner.lock().export_domain(domid)
    }

    /// Bring a saved [`crate::image::DomainImage`] back onto the
    /// introduced domain `domid`: its missing nodes are created (under the
    /// new home, the new domid in place of the old in permissions), its
    /// watches set on the ring, each firing once. Returns the nodes
    /// created and the watches set; `ENOENT` if `domid` is not introduced.
    pub fn import_domain(
        &self,
        domid: u32,
        image: &crate::image::DomainImage,
    ) -> Result<(usize, usize), XsError> {
        let imported = self.with_core(|c| c.import_domain(domid, image))?;
        // Requests the guest left on the ring (whole or the rest of the
        // partial one) are served now.
        self.ring_kick(domid);
        Ok(imported)
    }

    /// Hold a domain's ring still while its image is taken (see
    /// [`crate::image::RingImage`]): until [`Xenstored::thaw_domain`],
    /// nothing is read from or written to it. `ENOENT` if the domain is
    /// not introduced.
    pub fn freeze_domain(&self, domid: u32) -> Result<(), XsError> {
        self.with_core(|c| c.freeze_ring(domid, true))
    }

    /// Serve a frozen domain's ring again, catching up on what waited.
    pub fn thaw_domain(&self, domid: u32) -> Result<(), XsError> {
        self.with_core(|c| c.freeze_ring(domid, false))?;
        self.ring_kick(domid);
        Ok(())
    }

    /// The guest notified its xenstore event channel. Cheap and never
    /// blocks on the guest: the service thread does the work.
    pub fn ring_kick(&self, domid: u32) {
        self.inner
            .kicks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(domid);
        self.inner.wake();
    }

    /// Stop serving a domain: its watches and transactions go, the nodes
    /// it owns are removed, and `@releaseDomain` fires. `ENOENT` if it was
    /// not introduced.
    pub fn release_domain(&self, domid: u32) -> Result<(), XsError> {
        self.with_core(|c| c.release(domid))
    }

    /// The domain shut down or crashed: fires `@releaseDomain` once (again
    /// after Dom0 sends `XS_RESUME`).
    pub fn domain_shutdown(&self, domid: u32) {
        self.with_core(|c| c.domain_shutdown(domid));
    }

    /// Whether a domain's ring is being served.
    pub fn is_introduced(&self, domid: u32) -> bool {
        self.inner.lock().is_introduced(domid)
    }

    /// Run several operations as Dom0, atomically (nothing else runs in
    /// between). Watches fire as usual.
    pub fn batch<R>(&self, f: impl FnOnce(&mut Batch<'_>) -> R) -> R {
        self.with_core(|core| f(&mut Batch { core }))
    }

    /// Read a node's value (as Dom0). Relative paths are under
    /// `/local/domain/0`.
    pub fn read(&self, path: &str) -> Result<Vec<u8>, XsError> {
        self.batch(|b| b.read(path))
    }

    /// Write a node's value (as Dom0), creating it and missing parents.
    pub fn write(&self, path: &str, value: impl AsRef<[u8]>) -> Result<(), XsError> {
        self.batch(|b| b.write(path, value.as_ref()))
    }

    /// Write a value and set permissions in one step (as Dom0).
    pub fn write_with_perms(
        &self,
        path: &str,
        value: impl AsRef<[u8]>,
        perms: &Perms,
    ) -> Result<(), XsError> {
        self.batch(|b| b.write_with_perms(path, value.as_ref(), perms))
    }

    /// Create a node if missing (as Dom0).
    pub fn mkdir(&self, path: &str) -> Result<(), XsError> {
        self.batch(|b| b.mkdir(path))
    }

    /// Remove a node and its subtree (as Dom0).
    pub fn rm(&self, path: &str) -> Result<(), XsError> {
        self.batch(|b| b.rm(path))
    }

    /// A node's children, in creation order.
    pub fn directory(&self, path: &str) -> Result<Vec<String>, XsError> {
        self.batch(|b| b.directory(path))
    }

    /// A node's permissions.
    pub fn get_perms(&self, path: &str) -> Result<Perms, XsError> {
        self.batch(|b| b.get_perms(path))
    }

    /// Set a node's permissions (or `@introduceDomain`/`@releaseDomain`'s).
    pub fn set_perms(&self, path: &str, perms: &Perms) -> Result<(), XsError> {
        self.batch(|b| b.set_perms(path, perms))
    }

    /// Whether a node exists.
    pub fn exists(&self, path: &str) -> bool {
        self.batch(|b| b.exists(path))
    }

    /// Call `callback` with the changed path whenever `path` or anything
    /// below it changes (or, for `@introduceDomain`/`@releaseDomain`, when
    /// a domain comes or goes). Like any xenstore watch it fires once right
    /// away. Callbacks run in whatever thread made the change, with no
    /// lock held: they may call back into the daemon.
    pub fn watch(
        &self,
        path: &str,
        callback: impl Fn(&str) + Send + Sync + 'static,
    ) -> Result<WatchId, XsError> {
        let cb: WatchCallback = Arc::new(callback);
        self.with_core(|c| c.add_callback(path, cb)).map(WatchId)
    }

    /// Remove a callback watch; false if it did not exist.
    pub fn unwatch(&self, id: WatchId) -> bool {
        self.with_core(|c| c.remove_callback(id.0))
    }

    /// Write the whole store to `path` atomically (temporary file, fsync,
    /// rename). The store is copied under the lock, written outside it.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), Error> {
        let (data, gen, epoch) = {
            let core = self.inner.lock();
            (
                persist::encode(
                    &core.store,
                    &core.intro_perms,
                    &core.release_perms,
                    &core.domain_watches(),
                ),
                core.store.generation(),
                core.watch_epoch,
            )
        };
        persist::write_atomic(path.as_ref(), &data)?;
        let mut core = self.inner.lock();
        core.saved_generation = core.saved_generation.max(gen);
        core.saved_watch_epoch = core.saved_watch_epoch.max(epoch);
        Ok(())
    }

    /// Whether the store changed since it was created, loaded or saved.
    pub fn is_dirty(&self) -> bool {
        unsaved(&self.inner.lock())
    }

    /// Block until the store has changes not yet saved (at once if it has).
    pub fn wait_dirty(&self) {
        let core = self.inner.lock();
        let _core = self
            .inner
            .changed
            .wait_while(core, |core| !unsaved(core))
            .unwrap_or_else(|e| e.into_inner());
    }

    /// Replace the whole store with one saved by [`Xenstored::save`]. Meant
    /// for start-up; fires no watches.
    pub fn load(&self, path: impl AsRef<Path>) -> Result<(), Error> {
        let path = path.as_ref();
        let data =
            std::fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        let snap = persist::decode(&data).map_err(|reason| Error::BadState {
            path: path.to_path_buf(),
            reason,
        })?;
        let mut core = self.inner.lock();
        core.store = snap.store;
        core.intro_perms = snap.intro_perms;
        core.release_perms = snap.release_perms;
        core.restored_watches.clear();
        for w in snap.domain_watches {
            core.restored_watches.entry(w.domid).or_default().push(w);
        }
        core.saved_generation = core.store.generation();
        info!(state = %path.display(), nodes = core.store.len(), "store loaded");
        Ok(())
    }

    /// Stop the service thread, close every connection and remove the
    /// socket files. Idempotent.
    pub fn shutdown(&self) {
        self.inner.stop.store(true, Ordering::Release);
        self.inner.wake();
        let t = self
            .inner
            .thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(t) = t {
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
        let listeners: Vec<Listener> = self
            .inner
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(_, l)| l)
            .collect();
        for l in listeners {
            let _ = std::fs::remove_file(&l.path);
        }
        let mut core = self.inner.lock();
        for id in core.all_conns() {
            core.close(id);
        }
    }
}

fn epoll_add(epoll: i32, fd: i32, events: u32, token: u64) -> std::io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: token };
    // SAFETY: both fds are open and `ev` is a valid event struct.
    let rc = unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, fd, &mut ev) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Whether the store changed since it was created, loaded or saved.
fn unsaved(core: &Core) -> bool {
    core.store.generation() != core.saved_generation || core.watch_epoch != core.saved_watch_epoch
}

fn service_loop(inner: &Inner) {
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 64];
    let mut busy = false;
    // Housekeeping (expiring unread watch events, a pass over every ring
    // for a guest that took output without notifying) is only needed while
    // some connection has output queued; otherwise the thread sleeps until
    // a descriptor or a kick wakes it, so idle domains cost nothing.
    let mut output_queued = false;
    let mut last_housekeeping = Instant::now();
    debug!("xenstored service thread running");
    loop {
        let timeout = if busy {
            0
        } else if output_queued {
            HOUSEKEEPING.as_millis() as i32
        } else {
            -1
        };
        // SAFETY: `events` has room for `events.len()` entries.
        let n = unsafe {
            libc::epoll_wait(
                inner.epoll.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as i32,
                timeout,
            )
        };
        if inner.stop.load(Ordering::Acquire) {
            break;
        }
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                warn!(error = %e, "epoll_wait failed");
                std::thread::sleep(Duration::from_millis(10));
            }
            continue;
        }
        let ready: Vec<(u64, u32)> = events[..n as usize]
            .iter()
            .map(|e| (e.u64, e.events))
            .collect();
        let mut accepts = Vec::new();
        for &(token, _) in &ready {
            if token == EV_WAKE {
                let mut buf = [0u8; 8];
                // SAFETY: reading at most 8 bytes into a live buffer from
                // our non-blocking eventfd.
                unsafe {
                    libc::read(inner.wake.as_raw_fd(), buf.as_mut_ptr().cast(), 8);
                }
            } else if token & !ID_MASK == EV_LISTENER {
                accepts.extend(accept_all(inner, token & ID_MASK));
            }
        }
        let kicked: Vec<u32> =
            std::mem::take(&mut *inner.kicks.lock().unwrap_or_else(|e| e.into_inner()));
        let fx: Effects = {
            let mut core = inner.lock();
            for (stream, listener) in accepts {
                let id = core.add_socket(stream, listener);
                debug!(conn = id, "client connected");
            }
            for &(token, ev) in &ready {
                if token & !ID_MASK != EV_CONN {
                    continue;
                }
                let id = token & ID_MASK;
                if !core.conn_exists(id) {
                    continue;
                }
                let input = ev
                    & (libc::EPOLLIN | libc::EPOLLHUP | libc::EPOLLERR | libc::EPOLLRDHUP) as u32
                    != 0;
                if input && !core.socket_readable(id) {
                    core.close(id);
                    continue;
                }
                if ev & libc::EPOLLOUT as u32 != 0 {
                    core.flush(id);
                }
            }
            let mut rings: Vec<_> = std::mem::take(&mut core.ring_backlog);
            rings.extend(kicked.iter().filter_map(|&d| core.domain_conn(d)));
            let now = Instant::now();
            if now.duration_since(last_housekeeping) >= HOUSEKEEPING {
                last_housekeeping = now;
                core.expire_events(now);
                rings.extend(core.all_ring_conns());
            }
            rings.sort_unstable();
            rings.dedup();
            for id in rings {
                if core.service_ring(id, RING_BUDGET) {
                    core.ring_backlog.push(id);
                }
            }
            busy = !core.ring_backlog.is_empty();
            core.flush_dirty();
            output_queued = core.output_queued();
            if unsaved(&core) {
                inner.changed.notify_all();
            }
            core.take_effects()
        };
        fx.run();
    }
    debug!("xenstored service thread stopped");
}

/// Whether a socket client is root or runs as this process's own uid
/// (SO_PEERCRED: its credentials when it connected). Socket clients act as
/// Dom0, with every domain's store in reach.
fn peer_is_trusted(stream: &std::os::unix::net::UnixStream) -> bool {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    let own = nix::unistd::geteuid().as_raw();
    match getsockopt(stream, PeerCredentials) {
        Ok(cred) if cred.uid() == 0 || cred.uid() == own => true,
        Ok(cred) => {
            warn!(
                uid = cred.uid(),
                pid = cred.pid(),
                "xenstored: refused a socket client"
            );
            false
        }
        Err(e) => {
            warn!("xenstored: no peer credentials ({e}); refused a socket client");
            false
        }
    }
}

fn accept_all(inner: &Inner, id: u64) -> Vec<(std::os::unix::net::UnixStream, u64)> {
    let listeners = inner.listeners.lock().unwrap_or_else(|e| e.into_inner());
    let Some(l) = listeners.get(&id) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    loop {
        match l.listener.accept() {
            Ok((s, _)) => {
                if !peer_is_trusted(&s) {
                    continue;
                }
                if s.set_nonblocking(true).is_ok() {
                    out.push((s, id));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                if e.kind() != std::io::ErrorKind::WouldBlock {
                    warn!(error = %e, "accept failed");
                }
                break;
            }
        }
    }
    out
}

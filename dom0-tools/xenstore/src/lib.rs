//! xenstored for kxen: Xen's configuration database daemon as a library,
//! embedded by kxend and also run standalone as `kxen-xenstored`.
//!
//! It implements the xenstore protocol as Xen 4.17's C xenstored does —
//! paths, permissions and their inheritance, watches (with permission
//! filtering), transactions with per-node generation conflict checks,
//! quotas with Xen's defaults and errors, `DIRECTORY_PART`, domain
//! introduction and release — over Unix sockets (Dom0 tools through
//! libxenstore) and over guests' shared ring pages.
//!
//! # Embedding (kxend)
//!
//! ```no_run
//! use std::sync::Arc;
//! use kxen_xenstore::{Access, Config, Perm, Perms, Xenstored};
//!
//! # fn ring_page_of(_: u32) -> Arc<dyn kxen_xenstore::SharedPage> { unimplemented!() }
//! let xs = Xenstored::new(Config::default())?;
//! let _ = xs.load("/var/lib/kxen/xenstore.state"); // previous contents, if any
//! let socket = xs.serve_unix("/var/run/xenstored/socket")?;
//!
//! // A new domain: its home, readable by it, then its ring.
//! let perms = Perms::new(vec![Perm::new(0, Access::None), Perm::new(5, Access::Read)]).unwrap();
//! xs.write_with_perms("/local/domain/5", "", &perms)?;
//! xs.write("/local/domain/5/name", "guest")?;
//! xs.introduce_domain(5, ring_page_of(5), Box::new(|| { /* kick the guest's port */ }));
//! // ... and from the event-channel thread, whenever domain 5 notifies:
//! xs.ring_kick(5);
//!
//! // Notice backend state changes.
//! let id = xs.watch("/local/domain/0/backend", |path| println!("changed: {path}"))?;
//!
//! xs.save("/var/lib/kxen/xenstore.state")?;
//! xs.unwatch(id);
//! xs.release_domain(5)?;
//! socket.stop();
//! xs.shutdown();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

//!
//! # Where it differs from Xen's C xenstored
//!
//! * Permission entries naming a domain are honoured until that domain is
//!   released; then they are removed from every node (Xen instead asks the
//!   hypervisor whether a domain exists and ignores entries for dead or
//!   younger domains). Nodes a released domain owns are removed, as in Xen.
//! * Rings advertise the reconnection and error-reporting features
//!   (`server_features` = 3): a guest may reset its ring through
//!   `connection`, and a ring dropped for a protocol error says why in
//!   `error`.
//! * Memory accounting is reduced to the bytes queued towards a domain
//!   (watch events beyond the `memory` quota are dropped); Xen's write
//!   rate limiting, live update and the `logfile`/`memreport` control
//!   commands are not implemented.

mod config;
mod core;
mod error;
pub mod harness;
pub mod image;
mod ops;
pub mod path;
mod perms;
mod persist;
mod ring;
mod server;
mod store;
mod view;
mod watch;
pub mod wire;

pub use config::{Config, IntroduceHook, IntroduceRequest, Quotas, RingBinding};
pub use error::{Error, XsError};
pub use perms::{Access, Caller, Perm, Perms};
pub use ring::{HeapPage, SharedPage};
pub use server::{Batch, UnixServer, WatchId, Xenstored};

#[cfg(test)]
mod tests;

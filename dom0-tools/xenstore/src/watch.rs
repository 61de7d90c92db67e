//! Watches: which connection watches which path under which token, and the
//! events a change produces.
//!
//! A change of node N fires every watch on N or on an ancestor of N (a watch
//! on `/a` fires for `/a/b`); removing a subtree also fires the watches set
//! exactly on each removed node below its root. A watcher only hears of a
//! change if it can read the node or its parent (or could read it before a
//! permission change), as in Xen.

use std::collections::HashMap;

use crate::path;
use crate::perms::{Caller, Perms};
use crate::store::Store;

pub(crate) type ConnId = u64;

#[derive(Debug, Clone)]
struct Watch {
    conn: ConnId,
    token: Vec<u8>,
    /// Set with a relative path: events are reported relative too.
    relative: bool,
    seq: u64,
}

/// A watch that matched an event.
#[derive(Debug, Clone)]
pub(crate) struct Match {
    pub conn: ConnId,
    pub token: Vec<u8>,
    pub relative: bool,
    seq: u64,
}

/// All watches, indexed by watched path.
#[derive(Debug, Default)]
pub(crate) struct WatchIndex {
    by_path: HashMap<Vec<u8>, Vec<Watch>>,
    next_seq: u64,
    count: usize,
}

impl WatchIndex {
    pub fn add(&mut self, conn: ConnId, path: &[u8], token: &[u8], relative: bool) {
        self.next_seq += 1;
        self.count += 1;
        self.by_path.entry(path.to_vec()).or_default().push(Watch {
            conn,
            token: token.to_vec(),
            relative,
            seq: self.next_seq,
        });
    }

    /// Whether the watch was set with a relative path (None: no such watch).
    pub fn relative_of(&self, conn: ConnId, path: &[u8], token: &[u8]) -> Option<bool> {
        self.by_path
            .get(path)?
            .iter()
            .find(|w| w.conn == conn && w.token == token)
            .map(|w| w.relative)
    }

    pub fn contains(&self, conn: ConnId, path: &[u8], token: &[u8]) -> bool {
        self.by_path
            .get(path)
            .is_some_and(|v| v.iter().any(|w| w.conn == conn && w.token == token))
    }

    pub fn remove(&mut self, conn: ConnId, path: &[u8], token: &[u8]) -> bool {
        let Some(v) = self.by_path.get_mut(path) else {
            return false;
        };
        let Some(i) = v.iter().position(|w| w.conn == conn && w.token == token) else {
            return false;
        };
        v.remove(i);
        self.count -= 1;
        if v.is_empty() {
            self.by_path.remove(path);
        }
        true
    }

    /// Watches that see an event on `name`, in registration order.
    pub fn matching(&self, name: &[u8], exact: bool) -> Vec<Match> {
        let mut out = Vec::new();
        if self.count == 0 {
            return out;
        }
        let mut add = |p: &[u8]| {
            if let Some(v) = self.by_path.get(p) {
                out.extend(v.iter().map(|w| Match {
                    conn: w.conn,
                    token: w.token.clone(),
                    relative: w.relative,
                    seq: w.seq,
                }));
            }
        };
        if exact || name.first() == Some(&b'@') {
            add(name);
        } else {
            for p in path::self_and_ancestors(name) {
                add(p);
            }
        }
        out.sort_by_key(|m| m.seq);
        out
    }
}

/// One change to report, with what watchers are checked against.
#[derive(Debug, Clone)]
pub(crate) struct Fire {
    pub name: String,
    pub matches: Vec<Match>,
    /// The node's permissions; `None` if it no longer exists.
    node_perms: Option<Perms>,
    parent_perms: Option<Perms>,
    old_perms: Option<Perms>,
}

impl Fire {
    /// The event for a change of `name`, or `None` if nobody watches it.
    /// Permissions not given are looked up in `store` now.
    pub fn new(
        store: &Store,
        watches: &WatchIndex,
        name: &str,
        exact: bool,
        node_perms: Option<&Perms>,
        parent_perms: Option<&Perms>,
        old_perms: Option<&Perms>,
    ) -> Option<Fire> {
        let matches = watches.matching(name.as_bytes(), exact);
        if matches.is_empty() {
            return None;
        }
        let node_perms = node_perms
            .cloned()
            .or_else(|| store.get(name).map(|n| n.perms.clone()));
        let parent_perms = if node_perms.is_some() {
            parent_perms
                .cloned()
                .or_else(|| store.get(path::parent(name)).map(|n| n.perms.clone()))
        } else {
            None
        };
        Some(Fire {
            name: name.to_string(),
            matches,
            node_perms,
            parent_perms,
            old_perms: old_perms.cloned(),
        })
    }

    /// A special event (`@introduceDomain`, `@releaseDomain`).
    pub fn special(watches: &WatchIndex, name: &str) -> Option<Fire> {
        let matches = watches.matching(name.as_bytes(), true);
        if matches.is_empty() {
            return None;
        }
        Some(Fire {
            name: name.to_string(),
            matches,
            node_perms: None,
            parent_perms: None,
            old_perms: None,
        })
    }

    /// Whether `caller` may hear of this (non-special) change.
    pub fn permitted(&self, caller: &Caller) -> bool {
        if self.old_perms.as_ref().is_some_and(|p| caller.can_read(p)) {
            return true;
        }
        match &self.node_perms {
            None => false,
            Some(p) => {
                caller.can_read(p)
                    || self
                        .parent_perms
                        .as_ref()
                        .is_some_and(|p| caller.can_read(p))
            }
        }
    }
}

/// The path reported to a watcher: relative watches see paths relative to
/// the connection's home (`get_watch_path`).
pub(crate) fn event_path<'a>(name: &'a [u8], relative: bool, home: &str) -> &'a [u8] {
    if !relative {
        return name;
    }
    let rest = name.get(home.len()..).unwrap_or(b"");
    rest.strip_prefix(b"/").unwrap_or(rest)
}

//! A caller's view of the store: the store itself, or the store as seen
//! through one of the caller's transactions.
//!
//! Transactions work as in Xen's xenstored: the first time a transaction
//! touches a node it records the node's generation (or that it did not
//! exist) and from then on works on its own copy. Commit fails with `EAGAIN`
//! if any recorded node's generation changed meanwhile; otherwise the
//! modified copies replace (or delete) the real nodes and the watch events
//! the transaction queued fire.

use std::collections::HashMap;

use crate::config::Quotas;
use crate::error::XsError;
use crate::perms::{Caller, Perms};
use crate::store::{Node, Store};
use crate::watch::{Fire, WatchIndex};

/// What a transaction knows about one node.
#[derive(Debug, Clone)]
pub(crate) struct Accessed {
    pub name: String,
    /// Generation when first accessed; `None` if the node did not exist.
    pub orig_gen: Option<u64>,
    /// Permissions when first accessed (for watch permission checks).
    pub orig_perms: Option<Perms>,
    /// The transaction's copy; `None` if it does not exist in the
    /// transaction.
    pub local: Option<Node>,
    pub modified: bool,
    /// A watch event is due at commit; `Some(exact)`.
    pub fire: Option<bool>,
}

/// One open transaction.
#[derive(Debug, Clone)]
pub(crate) struct Transaction {
    pub id: u32,
    index: HashMap<String, usize>,
    pub accessed: Vec<Accessed>,
    /// Something went wrong that could not be undone: commit gives ENOMEM.
    pub fail: bool,
    pub node_created: bool,
    /// Opened before a save and known here only by its id (its changes
    /// stayed with the saving daemon): commit gives EAGAIN, so the guest
    /// starts it over as after a conflict.
    pub restarted: bool,
}

impl Transaction {
    pub fn new(id: u32) -> Transaction {
        Transaction {
            id,
            index: HashMap::new(),
            accessed: Vec::new(),
            fail: false,
            node_created: false,
            restarted: false,
        }
    }

    /// A transaction the domain opened before it was saved (see
    /// [`Transaction::restarted`]).
    pub fn restarted(id: u32) -> Transaction {
        Transaction {
            restarted: true,
            ..Transaction::new(id)
        }
    }

    fn find(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }
}

/// The store as one request sees it.
pub(crate) struct View<'a> {
    pub store: &'a mut Store,
    pub tx: Option<&'a mut Transaction>,
    pub caller: Caller,
    pub quotas: &'a Quotas,
    pub watches: &'a WatchIndex,
    pub fires: Vec<Fire>,
}

impl<'a> View<'a> {
    pub fn new(
        store: &'a mut Store,
        tx: Option<&'a mut Transaction>,
        caller: Caller,
        quotas: &'a Quotas,
        watches: &'a WatchIndex,
    ) -> View<'a> {
        View {
            store,
            tx,
            caller,
            quotas,
            watches,
            fires: Vec::new(),
        }
    }

    /// Record a node in the transaction (first access) and return its index.
    fn record(&mut self, name: &str) -> Result<usize, XsError> {
        let Some(tx) = self.tx.as_deref_mut() else {
            unreachable!("record without a transaction");
        };
        if let Some(i) = tx.find(name) {
            return Ok(i);
        }
        if tx.accessed.len() >= self.quotas.transaction_nodes && !self.caller.privileged {
            tx.fail = true;
            return Err(XsError::NoSpc);
        }
        let node = self.store.get(name).cloned();
        let i = tx.accessed.len();
        tx.accessed.push(Accessed {
            name: name.to_string(),
            orig_gen: node.as_ref().map(|n| n.generation),
            orig_perms: node.as_ref().map(|n| n.perms.clone()),
            local: node,
            modified: false,
            fire: None,
        });
        tx.index.insert(name.to_string(), i);
        Ok(i)
    }

    /// The node as this view sees it (no permission check).
    pub fn lookup(&mut self, name: &str) -> Result<Option<&Node>, XsError> {
        if self.tx.is_none() {
            return Ok(self.store.get(name));
        }
        let i = self.record(name)?;
        let tx = self.tx.as_deref().expect("transaction");
        Ok(tx.accessed[i].local.as_ref())
    }

    pub fn exists(&mut self, name: &str) -> Result<bool, XsError> {
        Ok(self.lookup(name)?.is_some())
    }

    /// The node for modification; bumps its generation.
    pub fn lookup_mut(&mut self, name: &str) -> Result<Option<&mut Node>, XsError> {
        let gen = self.store.next_generation();
        if self.tx.is_none() {
            return Ok(set_generation(self.store.get_mut(name), gen));
        }
        let i = self.record(name)?;
        let tx = self.tx.as_deref_mut().expect("transaction");
        let a = &mut tx.accessed[i];
        if a.local.is_some() {
            a.modified = true;
        }
        Ok(set_generation(a.local.as_mut(), gen))
    }

    /// Put a node that does not exist in this view.
    pub fn insert_new(&mut self, name: &str, mut node: Node) -> Result<(), XsError> {
        node.generation = self.store.next_generation();
        if self.tx.is_none() {
            self.store.insert(name.to_string(), node);
            return Ok(());
        }
        let i = self.record(name)?;
        let tx = self.tx.as_deref_mut().expect("transaction");
        tx.node_created = true;
        let a = &mut tx.accessed[i];
        a.local = Some(node);
        a.modified = true;
        Ok(())
    }

    /// Delete one node record (children and the parent's list are the
    /// caller's business).
    pub fn remove(&mut self, name: &str) -> Result<Option<Node>, XsError> {
        if self.tx.is_none() {
            self.store.next_generation();
            return Ok(self.store.remove(name));
        }
        let i = self.record(name)?;
        let tx = self.tx.as_deref_mut().expect("transaction");
        let a = &mut tx.accessed[i];
        a.modified = true;
        Ok(a.local.take())
    }

    /// Mark the transaction as doomed.
    pub fn fail_transaction(&mut self) {
        if let Some(tx) = self.tx.as_deref_mut() {
            tx.fail = true;
        }
    }

    pub fn in_transaction(&self) -> bool {
        self.tx.is_some()
    }

    /// A node changed: fire (or, in a transaction, queue) watch events.
    /// `node_perms`/`parent_perms` are the permissions to check watchers
    /// against when the node (or its parent) is no longer in the store.
    pub fn fire(
        &mut self,
        name: &str,
        exact: bool,
        node_perms: Option<&Perms>,
        parent_perms: Option<&Perms>,
        old_perms: Option<&Perms>,
    ) {
        if let Some(tx) = self.tx.as_deref_mut() {
            match tx.find(name) {
                None => tx.fail = true,
                Some(i) => {
                    let a = &mut tx.accessed[i];
                    a.fire = match a.fire {
                        None => Some(exact),
                        Some(e) => Some(e && exact),
                    };
                }
            }
            return;
        }
        if let Some(f) = Fire::new(
            self.store,
            self.watches,
            name,
            exact,
            node_perms,
            parent_perms,
            old_perms,
        ) {
            self.fires.push(f);
        }
    }
}

fn set_generation(node: Option<&mut Node>, gen: u64) -> Option<&mut Node> {
    let n = node?;
    n.generation = gen;
    Some(n)
}

/// Commit a transaction into the store: conflict check, quota check, apply,
/// and return the watch events to deliver.
pub(crate) fn commit(
    store: &mut Store,
    tx: Transaction,
    caller: Caller,
    quotas: &Quotas,
    watches: &WatchIndex,
) -> Result<Vec<Fire>, XsError> {
    if tx.fail {
        return Err(XsError::NoMem);
    }
    if tx.restarted {
        return Err(XsError::Again);
    }
    if tx.node_created && !caller.privileged {
        let mut delta: HashMap<u32, i64> = HashMap::new();
        for a in tx.accessed.iter().filter(|a| a.modified) {
            if let Some(p) = &a.orig_perms {
                *delta.entry(p.owner_id()).or_default() -= 1;
            }
            if let Some(n) = &a.local {
                *delta.entry(n.perms.owner_id()).or_default() += 1;
            }
        }
        for (domid, d) in delta {
            if d == 0 || domid == 0 {
                continue;
            }
            let cnt = (store.owned_by(domid) as i64 + d).max(0) as usize;
            if cnt >= quotas.nodes_per_domain {
                return Err(XsError::NoSpc);
            }
        }
    }
    for a in &tx.accessed {
        if store.generation_of(&a.name) != a.orig_gen {
            return Err(XsError::Again);
        }
    }
    let mut fires = Vec::new();
    for a in tx.accessed.into_iter().filter(|a| a.modified) {
        match a.local {
            Some(mut node) => {
                node.generation = store.next_generation();
                store.insert(a.name.clone(), node);
            }
            None => {
                if a.orig_gen.is_some() {
                    store.next_generation();
                    store.remove(&a.name);
                }
            }
        }
        if let Some(exact) = a.fire {
            if let Some(f) = Fire::new(
                store,
                watches,
                &a.name,
                exact,
                None,
                None,
                a.orig_perms.as_ref(),
            ) {
                fires.push(f);
            }
        }
    }
    Ok(fires)
}

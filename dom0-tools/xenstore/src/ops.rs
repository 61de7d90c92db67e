//! The node operations (read, write, mkdir, rm, permissions, directories)
//! on a [`View`], with Xen's permission, quota and error rules.

use crate::error::XsError;
use crate::path;
use crate::perms::{Perms, PERM_OWNER, PERM_READ, PERM_WRITE};
use crate::store::Node;
use crate::view::View;

impl View<'_> {
    /// Xen's `errno_from_parents`: do not reveal whether a node exists to
    /// a caller who may not see its nearest existing ancestor.
    fn errno_from_parents(&mut self, name: &str, err: XsError, perm: u8) -> XsError {
        let caller = self.caller;
        let mut cur = name;
        while cur != "/" {
            cur = path::parent(cur);
            match self.lookup(cur) {
                Err(e) => return e,
                Ok(Some(node)) => {
                    let access = caller.access(&node.perms);
                    return if access & perm != 0 {
                        err
                    } else {
                        XsError::Acces
                    };
                }
                Ok(None) => {}
            }
        }
        XsError::Acces
    }

    /// The node, if the caller has all of `perm` on it (`get_node`).
    pub fn get_node(&mut self, name: &str, perm: u8) -> Result<&Node, XsError> {
        let caller = self.caller;
        let err = match self.lookup(name)? {
            Some(node) if caller.access(&node.perms) & perm == perm => None,
            Some(_) => Some(XsError::Acces),
            None => Some(XsError::NoEnt),
        };
        match err {
            None => Ok(self.lookup(name)?.expect("node just seen")),
            Some(e) => Err(self.errno_from_parents(name, e, perm)),
        }
    }

    fn check_size(&mut self, size: usize) -> Result<(), XsError> {
        if !self.caller.privileged && size >= self.quotas.node_size {
            self.fail_transaction();
            return Err(XsError::NoSpc);
        }
        Ok(())
    }

    pub fn read(&mut self, name: &str) -> Result<Vec<u8>, XsError> {
        Ok(self.get_node(name, PERM_READ)?.value.clone())
    }

    pub fn directory(&mut self, name: &str) -> Result<Vec<u8>, XsError> {
        Ok(self.get_node(name, PERM_READ)?.children.clone())
    }

    pub fn get_perms(&mut self, name: &str) -> Result<Perms, XsError> {
        Ok(self.get_node(name, PERM_READ)?.perms.clone())
    }

    /// `XS_DIRECTORY_PART`: the node's generation, then the child list from
    /// byte offset `off`, as much as fits in a reply; the list's end is
    /// marked by an empty string.
    pub fn directory_part(&mut self, name: &str, off: usize) -> Result<Vec<u8>, XsError> {
        let node = self.get_node(name, PERM_READ)?;
        let mut out = node.generation.to_string().into_bytes();
        out.push(0);
        let genlen = out.len();
        let children = &node.children;
        if off >= children.len() {
            out.push(0);
            return Ok(out);
        }
        let maxlen = xen_abi::xenstore::PAYLOAD_MAX - genlen - 1;
        let mut len = 0;
        loop {
            let start = off + len;
            let strlen = children[start..]
                .iter()
                .position(|&c| c == 0)
                .unwrap_or(children.len() - start);
            if len + strlen >= maxlen {
                break;
            }
            len += strlen + 1;
            if off + len >= children.len() {
                break;
            }
        }
        let end = (off + len).min(children.len());
        out.extend_from_slice(&children[off..end]);
        if off + len >= children.len() {
            out.push(0);
        }
        Ok(out)
    }

    /// Create `name` and any missing parents. New nodes copy the nearest
    /// existing ancestor's permissions; an unprivileged creator becomes
    /// their owner. Returns the new node's permissions.
    fn create(&mut self, name: &str, value: &[u8]) -> Result<Perms, XsError> {
        // Walk up to the nearest existing ancestor.
        let mut missing = vec![name];
        let mut cur = name;
        let (top_parent, mut perms) = loop {
            let p = path::parent(cur);
            match self.lookup(p)? {
                Some(node) => break (p, node.perms.clone()),
                None if p == "/" => return Err(XsError::NoEnt),
                None => {
                    missing.push(p);
                    cur = p;
                }
            }
        };
        if !self.caller.privileged {
            perms.set_owner(self.caller.domid);
            let owned = self.store.owned_by(self.caller.domid);
            let needed = if self.in_transaction() {
                1
            } else {
                missing.len()
            };
            if owned + needed > self.quotas.nodes_per_domain {
                return Err(XsError::NoSpc);
            }
            // Each new node, and the existing parent with one more child.
            let base = 24 + 8 * perms.len();
            if base + value.len() >= self.quotas.node_size {
                return Err(XsError::NoSpc);
            }
            for w in missing.windows(2) {
                self.check_size(base + path::basename(w[0]).len() + 1)?;
            }
            let top = missing.last().expect("at least one");
            let psize = self
                .lookup(top_parent)?
                .map(|n| n.quota_size())
                .unwrap_or(0);
            self.check_size(psize + path::basename(top).len() + 1)?;
        }
        let top = *missing.last().expect("at least one");
        if let Some(p) = self.lookup_mut(top_parent)? {
            p.add_child(path::basename(top));
        }
        for (i, n) in missing.iter().enumerate().rev() {
            let mut node = Node::new(perms.clone());
            if i == 0 {
                node.value = value.to_vec();
            } else {
                node.add_child(path::basename(missing[i - 1]));
            }
            self.insert_new(n, node)?;
        }
        Ok(perms)
    }

    /// `XS_WRITE`.
    pub fn write(&mut self, name: &str, value: &[u8]) -> Result<(), XsError> {
        match self.get_node(name, PERM_WRITE) {
            Ok(node) => {
                let size = node.quota_size() - node.value.len() + value.len();
                self.check_size(size)?;
                let node = self.lookup_mut(name)?.expect("node exists");
                node.value.clear();
                node.value.extend_from_slice(value);
                let perms = node.perms.clone();
                self.fire(name, false, Some(&perms), None, None);
                Ok(())
            }
            Err(XsError::NoEnt) => {
                let perms = self.create(name, value)?;
                self.fire(name, false, Some(&perms), None, None);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// `XS_MKDIR`: create if missing; an existing node is left alone.
    pub fn mkdir(&mut self, name: &str) -> Result<(), XsError> {
        match self.get_node(name, PERM_WRITE) {
            Ok(_) => Ok(()),
            Err(XsError::NoEnt) => {
                let perms = self.create(name, b"")?;
                self.fire(name, false, Some(&perms), None, None);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// `XS_RM`: remove a node and everything below it. Removing a missing
    /// node is fine if its parent exists.
    pub fn rm(&mut self, name: &str) -> Result<(), XsError> {
        match self.get_node(name, PERM_WRITE) {
            Ok(_) => {}
            Err(XsError::NoEnt) => {
                return if self.exists(path::parent(name))? {
                    Ok(())
                } else {
                    Err(XsError::NoEnt)
                };
            }
            Err(e) => return Err(e),
        }
        if name == "/" {
            return Err(XsError::Inval);
        }
        self.rm_node(name)
    }

    /// Remove a subtree, children first, firing each removed node's exact
    /// watches (and the root's ordinary ones).
    pub fn rm_node(&mut self, name: &str) -> Result<(), XsError> {
        let parent = path::parent(name);
        if !self.exists(parent)? {
            return Err(XsError::Inval);
        }
        // Pre-order list of the subtree as this view sees it.
        let mut order = Vec::new();
        let mut stack = vec![name.to_string()];
        while let Some(n) = stack.pop() {
            let Some(node) = self.lookup(&n)? else {
                continue;
            };
            let kids: Vec<String> = node.child_names().map(|c| path::join(&n, c)).collect();
            stack.extend(kids.into_iter().rev());
            order.push(n);
        }
        for n in order.iter().rev() {
            let parent_perms = self.lookup(path::parent(n))?.map(|p| p.perms.clone());
            if let Some(node) = self.remove(n)? {
                let exact = n != name;
                self.fire(n, exact, Some(&node.perms), parent_perms.as_ref(), None);
            }
        }
        if let Some(p) = self.lookup_mut(parent)? {
            p.remove_child(path::basename(name));
        }
        Ok(())
    }

    /// `XS_SET_PERMS` on an ordinary node.
    pub fn set_perms(&mut self, name: &str, perms: Perms) -> Result<(), XsError> {
        let caller = self.caller;
        let node = self.get_node(name, PERM_WRITE | PERM_OWNER)?;
        if !caller.privileged && perms.owner_id() != node.perms.owner_id() {
            return Err(XsError::Perm);
        }
        let size = node.quota_size() - 8 * node.perms.len() + 8 * perms.len();
        self.check_size(size)?;
        let in_tx = self.in_transaction();
        let node = self.lookup_mut(name)?.expect("node exists");
        let old = std::mem::replace(&mut node.perms, perms.clone());
        if !in_tx {
            self.store.transfer_owner(old.owner_id(), perms.owner_id());
        }
        self.fire(name, false, Some(&perms), None, Some(&old));
        Ok(())
    }
}

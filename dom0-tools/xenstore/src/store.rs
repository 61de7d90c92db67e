//! The node database: every node by its full path, each with its value, its
//! permissions, the names of its children (NUL-terminated, in creation
//! order, exactly as `XS_DIRECTORY` returns them) and a generation count
//! that changes whenever the node does.

use std::collections::HashMap;

use crate::perms::{Access, Perms};

/// One node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub value: Vec<u8>,
    pub perms: Perms,
    /// Child names, each followed by a NUL.
    pub children: Vec<u8>,
    /// Generation count of the last change.
    pub generation: u64,
}

impl Node {
    pub fn new(perms: Perms) -> Node {
        Node {
            value: Vec::new(),
            perms,
            children: Vec::new(),
            generation: 0,
        }
    }

    /// Size as Xen accounts it against the node-size quota: its record
    /// header, 8 bytes per permission, the value and the child names.
    pub fn quota_size(&self) -> usize {
        24 + 8 * self.perms.len() + self.value.len() + self.children.len()
    }

    /// Append a child name.
    pub fn add_child(&mut self, name: &str) {
        self.children.extend_from_slice(name.as_bytes());
        self.children.push(0);
    }

    /// Remove a child name; false if it is not there.
    pub fn remove_child(&mut self, name: &str) -> bool {
        let mut off = 0;
        while off < self.children.len() {
            let len = self.children[off..]
                .iter()
                .position(|&c| c == 0)
                .unwrap_or(self.children.len() - off);
            if &self.children[off..off + len] == name.as_bytes() {
                let end = (off + len + 1).min(self.children.len());
                self.children.drain(off..end);
                return true;
            }
            off += len + 1;
        }
        false
    }

    /// The child names.
    pub fn child_names(&self) -> impl Iterator<Item = &str> {
        self.children
            .split(|&c| c == 0)
            .filter(|s| !s.is_empty())
            .map(|s| std::str::from_utf8(s).unwrap_or(""))
    }
}

/// The whole tree.
#[derive(Debug, Clone)]
pub struct Store {
    nodes: HashMap<String, Node>,
    /// Global generation counter; bumped by every change.
    generation: u64,
    /// Nodes owned by each domain (for the per-domain node quota).
    owned: HashMap<u32, usize>,
}

impl Default for Store {
    fn default() -> Self {
        Store::new()
    }
}

impl Store {
    /// A store with Xen's initial nodes (`/`, `/tool`, `/tool/xenstored`)
    /// plus `/local/domain`, all owned by Dom0 with no access for others.
    pub fn new() -> Store {
        let mut s = Store::empty();
        let perms = Perms::owner(0, Access::None);
        for name in ["/", "/tool", "/tool/xenstored", "/local", "/local/domain"] {
            s.create(name, Node::new(perms.clone()));
        }
        s
    }

    /// A store with nothing in it, not even `/` (for loading).
    pub(crate) fn empty() -> Store {
        Store {
            nodes: HashMap::new(),
            generation: 0,
            owned: HashMap::new(),
        }
    }

    /// Create a node whose parent exists, linking it into the parent.
    pub(crate) fn create(&mut self, name: &str, mut node: Node) {
        if name != "/" {
            let parent = crate::path::parent(name);
            let gen = self.next_generation();
            if let Some(p) = self.nodes.get_mut(parent) {
                p.add_child(crate::path::basename(name));
                p.generation = gen;
            }
        }
        node.generation = self.next_generation();
        self.insert(name.to_string(), node);
    }

    pub fn get(&self, name: &str) -> Option<&Node> {
        self.nodes.get(name)
    }

    pub(crate) fn get_mut(&mut self, name: &str) -> Option<&mut Node> {
        self.nodes.get_mut(name)
    }

    pub fn generation_of(&self, name: &str) -> Option<u64> {
        self.nodes.get(name).map(|n| n.generation)
    }

    /// Bump and return the global generation counter.
    pub(crate) fn next_generation(&mut self) -> u64 {
        self.generation += 1;
        self.generation
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub(crate) fn set_generation(&mut self, g: u64) {
        self.generation = g;
    }

    /// Insert or replace a node record, keeping the ownership counts.
    pub(crate) fn insert(&mut self, name: String, node: Node) {
        let owner = node.perms.owner_id();
        if let Some(old) = self.nodes.insert(name, node) {
            self.disown(old.perms.owner_id());
        }
        *self.owned.entry(owner).or_insert(0) += 1;
    }

    /// Remove a node record (not its children, not the parent's link).
    pub(crate) fn remove(&mut self, name: &str) -> Option<Node> {
        let old = self.nodes.remove(name)?;
        self.disown(old.perms.owner_id());
        Some(old)
    }

    fn disown(&mut self, domid: u32) {
        if let Some(n) = self.owned.get_mut(&domid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.owned.remove(&domid);
            }
        }
    }

    /// Move one node's ownership count from `old` to `new`.
    pub(crate) fn transfer_owner(&mut self, old: u32, new: u32) {
        if old != new {
            self.disown(old);
            *self.owned.entry(new).or_insert(0) += 1;
        }
    }

    /// Number of nodes owned by `domid`.
    pub fn owned_by(&self, domid: u32) -> usize {
        self.owned.get(&domid).copied().unwrap_or(0)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// `name` and everything below it, parents before children, children
    /// in creation order.
    pub fn subtree(&self, name: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![name.to_string()];
        while let Some(n) = stack.pop() {
            if let Some(node) = self.nodes.get(&n) {
                let kids: Vec<String> = node
                    .child_names()
                    .map(|c| crate::path::join(&n, c))
                    .collect();
                stack.extend(kids.into_iter().rev());
                out.push(n);
            }
        }
        out
    }

    /// Iterate over all nodes (no particular order).
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Node)> {
        self.nodes.iter()
    }
}

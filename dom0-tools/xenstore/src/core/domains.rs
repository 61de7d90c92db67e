//! Domains: introducing (and resuming) a domain's ring connection, its
//! saved watches, releasing it, and removing its nodes and permissions
//! from the store when it goes.

use std::sync::Arc;

use tracing::{info, warn};

use crate::error::XsError;
use crate::image::{DomainImage, ImageNode, ImageWatch, RingImage, MAX_PENDING_OUTPUT};
use crate::path;
use crate::perms::{Caller, Perms};
use crate::ring::{self, SharedPage};
use crate::view::View;
use crate::watch::ConnId;

use super::{Conn, Core, Domain, Kind, OutMsg, RingState};
use crate::view::Transaction;
use crate::wire::HEADER_LEN;
use xen_abi::xenstore as xs;

impl Core {
    /// Start (or restart) serving a domain's ring. The ring is reset to
    /// empty as Xen's `XS_INTRODUCE` does; the first introduction fires
    /// `@introduceDomain`.
    pub fn introduce(
        &mut self,
        domid: u32,
        page: Arc<dyn SharedPage>,
        notify: Arc<dyn Fn() + Send + Sync>,
    ) {
        let state = RingState::new(page.clone(), notify);
        let id = match self.domains.get(&domid) {
            Some(d) => {
                let id = d.conn;
                self.reset_conn_state(id);
                if let Some(c) = self.conns.get_mut(&id) {
                    c.kind = Kind::Ring(state);
                    c.ignored = false;
                }
                id
            }
            None => {
                let id = self.add_domain_conn(domid, state);
                if domid != 0 {
                    self.fire_special("@introduceDomain");
                }
                info!(domid, "domain introduced");
                id
            }
        };
        ring::reset(&*page);
        self.collect_notify(id);
    }

    /// Re-attach to a domain whose ring was served before this daemon
    /// started (a restarted toolstack): unlike `introduce`, the ring keeps
    /// its indices and contents, and the domain's saved watches come back
    /// without firing.
    pub fn resume_domain(
        &mut self,
        domid: u32,
        page: Arc<dyn SharedPage>,
        notify: Arc<dyn Fn() + Send + Sync>,
    ) {
        if self.domains.contains_key(&domid) {
            // Already served: only the ring binding changes.
            self.introduce_binding(domid, page, notify);
            return;
        }
        let id = self.add_domain_conn(domid, RingState::new(page, notify));
        for w in self.restored_watches.remove(&domid).unwrap_or_default() {
            if let Some(c) = self.conns.get_mut(&id) {
                c.watches.push((w.node.clone(), w.token.clone()));
            }
            self.watches.add(id, &w.node, &w.token, w.relative);
        }
        info!(domid, "domain resumed");
        self.collect_notify(id);
    }

    /// A new ring connection for `domid`, registered as its domain.
    fn add_domain_conn(&mut self, domid: u32, state: RingState) -> ConnId {
        let mut conn = Conn::new(
            Caller::domain(domid),
            path::domain_path(domid),
            Kind::Ring(state),
        );
        conn.domid = Some(domid);
        let id = self.new_conn(conn);
        self.domains.insert(
            domid,
            Domain {
                conn: id,
                shutdown: false,
            },
        );
        id
    }

    /// Replace the ring page and notifier of a served domain in place.
    fn introduce_binding(
        &mut self,
        domid: u32,
        page: Arc<dyn SharedPage>,
        notify: Arc<dyn Fn() + Send + Sync>,
    ) {
        let Some(id) = self.domains.get(&domid).map(|d| d.conn) else {
            return;
        };
        if let Some(Conn {
            kind: Kind::Ring(state),
            ..
        }) = self.conns.get_mut(&id)
        {
            state.page = page;
            state.notify = notify;
        }
        self.collect_notify(id);
    }

    /// The watches guests have set, for the state file.
    pub fn domain_watches(&self) -> Vec<crate::persist::DomainWatch> {
        let mut out = Vec::new();
        for (&domid, d) in &self.domains {
            let Some(c) = self.conns.get(&d.conn) else {
                continue;
            };
            for (node, token) in &c.watches {
                if let Some(relative) = self.watches.relative_of(d.conn, node, token) {
                    out.push(crate::persist::DomainWatch {
                        domid,
                        node: node.clone(),
                        token: token.clone(),
                        relative,
                    });
                }
            }
        }
        out
    }

    pub fn is_introduced(&self, domid: u32) -> bool {
        self.domains.contains_key(&domid)
    }

    /// Stop serving a domain: its connection goes, the nodes it owns are
    /// removed, its entries leave other nodes' permissions (so a later
    /// domain with the same id inherits nothing), and `@releaseDomain`
    /// fires.
    pub fn release(&mut self, domid: u32) -> Result<(), XsError> {
        let d = self.domains.remove(&domid).ok_or(XsError::NoEnt)?;
        self.close(d.conn);
        self.remove_domain_nodes(domid);
        for perms in [&mut self.intro_perms, &mut self.release_perms] {
            strip_domid(perms, domid, true);
        }
        info!(domid, "domain released");
        self.fire_special("@releaseDomain");
        Ok(())
    }

    /// The domain has shut down or crashed: `@releaseDomain` fires once
    /// (again only after `XS_RESUME`).
    pub fn domain_shutdown(&mut self, domid: u32) {
        if let Some(d) = self.domains.get_mut(&domid) {
            if !d.shutdown {
                d.shutdown = true;
                self.fire_special("@releaseDomain");
            }
        }
    }

    fn remove_domain_nodes(&mut self, domid: u32) {
        // Subtrees rooted at nodes the domain owns, outermost first.
        let mut roots = Vec::new();
        let mut stack = vec!["/".to_string()];
        while let Some(n) = stack.pop() {
            let Some(node) = self.store.get(&n) else {
                continue;
            };
            if n != "/" && node.perms.owner_id() == domid {
                roots.push(n);
                continue;
            }
            stack.extend(node.child_names().map(|c| path::join(&n, c)));
        }
        let mut view = View::new(
            &mut self.store,
            None,
            Caller::DOM0,
            &self.quotas,
            &self.watches,
        );
        for r in &roots {
            if let Err(e) = view.rm_node(r) {
                warn!(node = %r, error = %e, "could not remove a released domain's node");
            }
        }
        let fires = std::mem::take(&mut view.fires);
        drop(view);
        self.deliver(fires, None);
        // Strip the domain from the permissions of what remains.
        let names: Vec<String> = self
            .store
            .iter()
            .filter(|(_, n)| n.perms.as_slice()[1..].iter().any(|p| p.domid == domid))
            .map(|(k, _)| k.clone())
            .collect();
        for n in names {
            let gen = self.store.next_generation();
            if let Some(node) = self.store.get_mut(&n) {
                strip_domid(&mut node.perms, domid, false);
                node.generation = gen;
            }
        }
    }

    /// The ring connection of a domain.
    pub fn domain_conn(&self, domid: u32) -> Option<ConnId> {
        self.domains.get(&domid).map(|d| d.conn)
    }
}

/// Remove a domain from a permission list. An owner entry passes to Dom0
/// (`owner_to_dom0`) or stays (nodes it owns are removed separately).
fn strip_domid(perms: &mut Perms, domid: u32, owner_to_dom0: bool) {
    let v = perms.as_mut_vec();
    if owner_to_dom0 && v[0].domid == domid {
        v[0].domid = 0;
    }
    let owner = v[0];
    let mut rest: Vec<_> = v[1..]
        .iter()
        .copied()
        .filter(|p| p.domid != domid)
        .collect();
    v.clear();
    v.push(owner);
    v.append(&mut rest);
}

impl Core {
    /// A domain's part of the store for a save image: every node under
    /// its home (parents first; the home itself is the toolstack's to
    /// make) and the watches it set on its ring, relative ones kept
    /// relative to the home.
    pub fn export_domain(&self, domid: u32) -> DomainImage {
        let home = path::domain_path(domid);
        let prefix = format!("{home}/");
        let nodes = self
            .store
            .subtree(&home)
            .into_iter()
            .filter_map(|name| {
                let rel = name.strip_prefix(&prefix)?.to_string();
                let node = self.store.get(&name)?;
                Some(ImageNode {
                    path: rel,
                    perms: node.perms.clone(),
                    value: node.value.clone(),
                })
            })
            .collect();
        let mut watches = Vec::new();
        if let Some(c) = self
            .domains
            .get(&domid)
            .and_then(|d| self.conns.get(&d.conn))
        {
            let conn = self.domains[&domid].conn;
            for (node, token) in &c.watches {
                let relative = self.watches.relative_of(conn, node, token) == Some(true);
                let path = match node.strip_prefix(prefix.as_bytes()) {
                    Some(rel) if relative => rel.to_vec(),
                    _ => node.clone(),
                };
                watches.push(ImageWatch {
                    path,
                    token: token.clone(),
                });
            }
        }
        let ring = self
            .domains
            .get(&domid)
            .and_then(|d| self.conns.get(&d.conn))
            .and_then(ring_image);
        DomainImage {
            domid,
            nodes,
            watches,
            ring,
        }
    }

    /// Hold a domain's ring still (`frozen`) while its image is taken, or
    /// let it go again. Nothing is lost meanwhile: the guest's requests
    /// wait on the ring, replies and events in the queue. `ENOENT` if the
    /// domain is not introduced.
    pub fn freeze_ring(&mut self, domid: u32, frozen: bool) -> Result<(), XsError> {
        let id = self.domain_conn(domid).ok_or(XsError::NoEnt)?;
        if let Some(Conn {
            kind: Kind::Ring(r),
            ..
        }) = self.conns.get_mut(&id)
        {
            r.frozen = frozen;
        }
        if !frozen {
            self.flush_ring(id);
        }
        Ok(())
    }

    /// Put a saved ring connection back on the introduced domain's
    /// connection: the page's indices (its introduction reset them), the
    /// partial request, the queued output ahead of anything queued since,
    /// and the open transactions, which end with `EAGAIN`.
    fn import_ring(&mut self, conn: super::ConnId, saved: &RingImage) -> Result<(), XsError> {
        let Some(c) = self.conns.get_mut(&conn) else {
            return Err(XsError::Io);
        };
        let Kind::Ring(r) = &mut c.kind else {
            return Err(XsError::Inval);
        };
        r.page.store_u32(xs::OFFSET_REQ_CONS, saved.req_cons);
        r.page.store_u32(xs::OFFSET_REQ_PROD, saved.req_prod);
        r.page.store_u32(xs::OFFSET_RSP_CONS, saved.rsp_cons);
        r.page.store_u32(xs::OFFSET_RSP_PROD, saved.rsp_prod);
        // The decoder held the partial request under one header and an
        // incomplete body; it is taken up where the saving daemon was.
        let head = saved.partial_request.len().min(HEADER_LEN);
        r.hdr = [0; HEADER_LEN];
        r.hdr[..head].copy_from_slice(&saved.partial_request[..head]);
        r.hdr_have = head;
        r.body = saved.partial_request[head..].to_vec();
        r.need_notify = true;
        if !saved.pending_output.is_empty() {
            c.out_bytes += saved.pending_output.len();
            c.out.push_front(OutMsg {
                data: saved.pending_output.clone(),
                sent: 0,
                event: false,
                _tracker: None,
                deadline: None,
            });
        }
        for &id in &saved.transactions {
            if !c.transactions.iter().any(|t| t.id == id) {
                c.transactions.push(Transaction::restarted(id));
            }
        }
        if let Some(&last) = saved.transactions.iter().max() {
            c.next_tx_id = c.next_tx_id.max(last.wrapping_add(1));
        }
        self.dirty.push(conn);
        Ok(())
    }

    /// Bring a domain's saved part of the store back onto the introduced
    /// domain `domid`. A node that exists already stays as it is (the
    /// toolstack wrote it for the new domain); the others are created
    /// with their values, and the saved domain's entries in their
    /// permissions become `domid`'s. Absolute paths under the old home
    /// move to the new one. The watches are set on the domain's ring and
    /// each fires once, as a newly set watch does. Returns the nodes and
    /// watches restored.
    pub fn import_domain(
        &mut self,
        domid: u32,
        image: &DomainImage,
    ) -> Result<(usize, usize), XsError> {
        let conn = self.domain_conn(domid).ok_or(XsError::NoEnt)?;
        if let Some(saved) = &image.ring {
            self.import_ring(conn, saved)?;
        }
        let home = path::domain_path(domid);
        let old_prefix = format!("{}/", path::domain_path(image.domid));
        let mut created = 0;
        for n in &image.nodes {
            let name = format!("{home}/{}", n.path);
            let mut perms = n.perms.clone();
            for p in perms.as_mut_vec() {
                if p.domid == image.domid {
                    p.domid = domid;
                }
            }
            let made = self.dom0_op(|v| {
                if v.exists(&name)? {
                    return Ok(false);
                }
                v.write(&name, &n.value)?;
                v.set_perms(&name, perms)?;
                Ok(true)
            })?;
            created += made as usize;
        }
        let mut set = 0;
        for w in &image.watches {
            let raw = match w.path.strip_prefix(old_prefix.as_bytes()) {
                Some(rest) => [home.as_bytes(), b"/", rest].concat(),
                None => w.path.clone(),
            };
            let (node, relative) = self.watch_path(&home, &raw)?;
            if self.watches.contains(conn, &node, &w.token) {
                continue;
            }
            let Some(c) = self.conns.get_mut(&conn) else {
                return Err(XsError::Io);
            };
            c.watches.push((node.clone(), w.token.clone()));
            let ev = crate::watch::event_path(&node, relative, &c.home).to_vec();
            self.watches.add(conn, &node, &w.token, relative);
            self.watch_epoch += 1;
            self.queue_event(conn, &ev, &w.token, None);
            set += 1;
        }
        self.collect_notify(conn);
        info!(
            domid,
            from = image.domid,
            created,
            watches = set,
            "domain's store part restored"
        );
        Ok((created, set))
    }
}

/// A ring connection's state for an image (see [`RingImage`]); `None`
/// for any other connection. Queued output beyond what an image carries
/// loses whole watch events from its end (as the memory quota drops
/// them), never a reply.
fn ring_image(c: &Conn) -> Option<RingImage> {
    let Kind::Ring(r) = &c.kind else {
        return None;
    };
    let mut partial_request = r.hdr[..r.hdr_have].to_vec();
    if r.hdr_have == HEADER_LEN {
        partial_request.extend_from_slice(&r.body);
    }
    let mut pending_output = Vec::new();
    for m in &c.out {
        let rest = &m.data[m.sent..];
        if m.event && m.sent == 0 && pending_output.len() + rest.len() > MAX_PENDING_OUTPUT {
            warn!(
                domid = c.caller.domid,
                "watch event left out of the saved ring state: over its size limit"
            );
            continue;
        }
        pending_output.extend_from_slice(rest);
    }
    Some(RingImage {
        req_cons: r.page.load_u32(xs::OFFSET_REQ_CONS),
        req_prod: r.page.load_u32(xs::OFFSET_REQ_PROD),
        rsp_cons: r.page.load_u32(xs::OFFSET_RSP_CONS),
        rsp_prod: r.page.load_u32(xs::OFFSET_RSP_PROD),
        partial_request,
        pending_output,
        transactions: c.transactions.iter().map(|t| t.id).collect(),
    })
}

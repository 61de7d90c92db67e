//! Request dispatch: checking a request's privilege and transaction,
//! then serving node operations, watches, transactions and the domain
//! requests (XS_INTRODUCE, XS_RELEASE, XS_RESUME, XS_SET_TARGET...).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tracing::info;
use xen_abi::xenstore as xs;

use crate::config::IntroduceRequest;
use crate::error::XsError;
use crate::path;
use crate::perms::{Perms, PERM_OWNER, PERM_WRITE};
use crate::view::{self, Transaction, View};
use crate::watch::{event_path, ConnId};
use crate::wire::{self, Header};

use super::{Core, Kind, Reply, Tracker};

impl Core {
    fn tracker(&self, id: ConnId) -> Option<Arc<Tracker>> {
        let c = self.conns.get(&id)?;
        if !matches!(c.kind, Kind::Ring(_)) {
            return None;
        }
        c.outstanding.fetch_add(1, Ordering::AcqRel);
        Some(Arc::new(Tracker(c.outstanding.clone())))
    }

    /// Handle one request and queue its reply (in order).
    pub fn process(&mut self, id: ConnId, hdr: Header, payload: &[u8]) {
        if self.trace_io {
            info!(conn = id, kind = hdr.kind, req_id = hdr.req_id, tx_id = hdr.tx_id, payload = %String::from_utf8_lossy(payload), "xenstore request");
        }
        let tracker = self.tracker(id);
        match self.dispatch(id, &hdr, payload, tracker.as_ref()) {
            Ok(reply) => {
                self.queue_reply(id, &hdr, hdr.kind, &reply.payload, tracker);
                if let Some((p, t)) = reply.post_event {
                    self.queue_event(id, &p, &t, None);
                }
            }
            Err(e) => {
                let mut p = e.name().as_bytes().to_vec();
                p.push(0);
                self.queue_reply(id, &hdr, xs::XS_ERROR, &p, tracker);
            }
        }
    }

    fn dispatch(
        &mut self,
        id: ConnId,
        hdr: &Header,
        payload: &[u8],
        tracker: Option<&Arc<Tracker>>,
    ) -> Result<Reply, XsError> {
        let kind = hdr.kind;
        let privileged_only = matches!(
            kind,
            xs::XS_CONTROL
                | xs::XS_INTRODUCE
                | xs::XS_RELEASE
                | xs::XS_IS_DOMAIN_INTRODUCED
                | xs::XS_RESUME
                | xs::XS_SET_TARGET
        );
        if kind >= xs::XS_TYPE_COUNT || matches!(kind, xs::XS_WATCH_EVENT | xs::XS_ERROR | 20) {
            return Err(XsError::NoSys);
        }
        let c = self.conns.get(&id).ok_or(XsError::Io)?;
        let caller = c.caller;
        if privileged_only && !caller.privileged {
            return Err(XsError::Acces);
        }
        let tx_index = if kind == xs::XS_WATCH || kind == xs::XS_UNWATCH || hdr.tx_id == 0 {
            None
        } else {
            Some(
                c.transactions
                    .iter()
                    .position(|t| t.id == hdr.tx_id)
                    .ok_or(XsError::NoEnt)?,
            )
        };
        match kind {
            xs::XS_READ
            | xs::XS_DIRECTORY
            | xs::XS_DIRECTORY_PART
            | xs::XS_GET_PERMS
            | xs::XS_WRITE
            | xs::XS_MKDIR
            | xs::XS_RM
            | xs::XS_SET_PERMS => self.node_request(id, kind, tx_index, payload, tracker),
            xs::XS_WATCH => self.do_watch(id, payload),
            xs::XS_UNWATCH => self.do_unwatch(id, payload),
            xs::XS_TRANSACTION_START => {
                if tx_index.is_some() {
                    return Err(XsError::Busy);
                }
                self.transaction_start(id).map(|t| {
                    let mut p = t.to_string().into_bytes();
                    p.push(0);
                    Reply::data(p)
                })
            }
            xs::XS_TRANSACTION_END => self.do_transaction_end(id, tx_index, payload, tracker),
            xs::XS_INTRODUCE => self.do_introduce(payload),
            xs::XS_RELEASE => {
                let domid = onearg_domid(payload)?;
                self.release(domid)?;
                Ok(Reply::ok())
            }
            xs::XS_RESUME => {
                let domid = onearg_domid(payload)?;
                let d = self.domains.get_mut(&domid).ok_or(XsError::NoEnt)?;
                d.shutdown = false;
                Ok(Reply::ok())
            }
            xs::XS_GET_DOMAIN_PATH => {
                let arg = wire::onearg(payload).ok_or(XsError::Inval)?;
                let mut p = path::domain_path(wire::atoi(arg) as u32).into_bytes();
                p.push(0);
                Ok(Reply::data(p))
            }
            xs::XS_IS_DOMAIN_INTRODUCED => {
                let arg = wire::onearg(payload).ok_or(XsError::Inval)?;
                let domid = wire::atoi(arg) as u32;
                let yes = domid == xen_abi::DOMID_SELF as u32
                    || domid == 0
                    || self.domains.contains_key(&domid);
                Ok(Reply::data(if yes {
                    b"T\0".to_vec()
                } else {
                    b"F\0".to_vec()
                }))
            }
            xs::XS_SET_TARGET => {
                let v: Vec<&[u8]> = wire::strings(payload).take(2).collect();
                if v.len() < 2 {
                    return Err(XsError::Inval);
                }
                let domid = wire::atoi(v[0]) as u32;
                let tdomid = wire::atoi(v[1]) as u32;
                let conn = self.domains.get(&domid).ok_or(XsError::NoEnt)?.conn;
                if !self.domains.contains_key(&tdomid) {
                    return Err(XsError::NoEnt);
                }
                let c = self.conns.get_mut(&conn).ok_or(XsError::Inval)?;
                c.caller.target = Some(tdomid);
                Ok(Reply::ok())
            }
            xs::XS_RESET_WATCHES => {
                let c = self.conns.get_mut(&id).ok_or(XsError::Io)?;
                let watches = std::mem::take(&mut c.watches);
                self.watch_epoch += 1;
                c.transactions.clear();
                for (p, t) in watches {
                    self.watches.remove(id, &p, &t);
                }
                Ok(Reply::ok())
            }
            xs::XS_CONTROL => self.do_control(payload),
            _ => Err(XsError::NoSys),
        }
    }

    /// Run a node operation in the connection's view (its transaction, if
    /// the request names one), then deliver the watch events it fired.
    fn node_request(
        &mut self,
        id: ConnId,
        kind: u32,
        tx_index: Option<usize>,
        payload: &[u8],
        tracker: Option<&Arc<Tracker>>,
    ) -> Result<Reply, XsError> {
        let c = self.conns.get_mut(&id).ok_or(XsError::Io)?;
        let caller = c.caller;
        let home = c.home.clone();
        let mut tx = tx_index.map(|i| c.transactions.swap_remove(i));
        let special_perms = (self.intro_perms.clone(), self.release_perms.clone());
        let mut view = View::new(
            &mut self.store,
            tx.as_mut(),
            caller,
            &self.quotas,
            &self.watches,
        );
        let result = node_op(&mut view, &home, kind, payload, special_perms);
        let fires = std::mem::take(&mut view.fires);
        drop(view);
        if let Some(t) = tx {
            if let Some(c) = self.conns.get_mut(&id) {
                c.transactions.push(t);
            }
        }
        let cause = if caller.privileged { None } else { tracker };
        self.deliver(fires, cause);
        match result? {
            NodeResult::Reply(p) => Ok(Reply::data(p)),
            NodeResult::SpecialPerms(name, perms) => {
                if name == "@introduceDomain" {
                    self.intro_perms = perms;
                } else {
                    self.release_perms = perms;
                }
                Ok(Reply::ok())
            }
        }
    }

    fn do_watch(&mut self, id: ConnId, payload: &[u8]) -> Result<Reply, XsError> {
        if wire::count_strings(payload) != 2 {
            return Err(XsError::Inval);
        }
        let mut it = wire::strings(payload);
        let (raw, token) = (it.next().unwrap_or(b""), it.next().unwrap_or(b""));
        let c = self.conns.get(&id).ok_or(XsError::Io)?;
        let (node, relative) = self.watch_path(&c.home, raw)?;
        if self.watches.contains(id, &node, token) {
            return Err(XsError::Exist);
        }
        if !c.caller.privileged && c.watches.len() > self.quotas.watches_per_domain {
            return Err(XsError::TooBig);
        }
        let c = self.conns.get_mut(&id).ok_or(XsError::Io)?;
        c.watches.push((node.clone(), token.to_vec()));
        self.watches.add(id, &node, token, relative);
        self.watch_epoch += 1;
        let ev = event_path(&node, relative, &c.home).to_vec();
        Ok(Reply {
            payload: b"OK\0".to_vec(),
            post_event: Some((ev, token.to_vec())),
        })
    }

    /// Check and canonicalize a path to watch.
    pub(super) fn watch_path(&self, home: &str, raw: &[u8]) -> Result<(Vec<u8>, bool), XsError> {
        if raw.first() == Some(&b'@') {
            if raw.len() > xs::REL_PATH_MAX {
                return Err(XsError::Inval);
            }
            return Ok((raw.to_vec(), false));
        }
        let relative = raw.first() != Some(&b'/');
        let node = path::canonicalize(home, raw);
        if !path::is_valid_nodename(&node, self.quotas.path_max) {
            return Err(XsError::Inval);
        }
        Ok((node.into_owned(), relative))
    }

    fn do_unwatch(&mut self, id: ConnId, payload: &[u8]) -> Result<Reply, XsError> {
        if wire::count_strings(payload) != 2 {
            return Err(XsError::Inval);
        }
        let mut it = wire::strings(payload);
        let (raw, token) = (it.next().unwrap_or(b""), it.next().unwrap_or(b""));
        let c = self.conns.get_mut(&id).ok_or(XsError::Io)?;
        let node = path::canonicalize(&c.home, raw).into_owned();
        let Some(i) = c.watches.iter().position(|(p, t)| *p == node && t == token) else {
            return Err(XsError::NoEnt);
        };
        c.watches.remove(i);
        self.watches.remove(id, &node, token);
        self.watch_epoch += 1;
        Ok(Reply::ok())
    }

    fn transaction_start(&mut self, id: ConnId) -> Result<u32, XsError> {
        let max = self.quotas.transactions_per_domain;
        let c = self.conns.get_mut(&id).ok_or(XsError::Io)?;
        if !c.caller.privileged && c.transactions.len() > max {
            return Err(XsError::NoSpc);
        }
        self.store.next_generation();
        let tid = loop {
            let t = c.next_tx_id;
            c.next_tx_id = c.next_tx_id.wrapping_add(1);
            if t != 0 && !c.transactions.iter().any(|x| x.id == t) {
                break t;
            }
        };
        c.transactions.push(Transaction::new(tid));
        Ok(tid)
    }

    fn do_transaction_end(
        &mut self,
        id: ConnId,
        tx_index: Option<usize>,
        payload: &[u8],
        tracker: Option<&Arc<Tracker>>,
    ) -> Result<Reply, XsError> {
        let arg = wire::onearg(payload).ok_or(XsError::Inval)?;
        let commit = match arg {
            b"T" => true,
            b"F" => false,
            _ => return Err(XsError::Inval),
        };
        let i = tx_index.ok_or(XsError::NoEnt)?;
        let c = self.conns.get_mut(&id).ok_or(XsError::Io)?;
        let caller = c.caller;
        let tx = c.transactions.swap_remove(i);
        if commit {
            let fires = view::commit(&mut self.store, tx, caller, &self.quotas, &self.watches)?;
            let cause = if caller.privileged { None } else { tracker };
            self.deliver(fires, cause);
        }
        Ok(Reply::ok())
    }

    fn do_introduce(&mut self, payload: &[u8]) -> Result<Reply, XsError> {
        let v: Vec<&[u8]> = wire::strings(payload).take(3).collect();
        if v.len() < 3 {
            return Err(XsError::Inval);
        }
        let domid = wire::atoi(v[0]) as u32;
        let gfn = parse_i64(v[1]);
        let port = wire::atoi(v[2]);
        if port <= 0 || domid == 0 || domid >= xen_abi::DOMID_FIRST_RESERVED as u32 {
            return Err(XsError::Inval);
        }
        let hook = self.introduce_hook.clone().ok_or(XsError::NoSys)?;
        let (page, notify) = hook(IntroduceRequest {
            domid,
            gfn,
            port: port as u32,
        })?;
        self.introduce(domid, page, Arc::from(notify));
        Ok(Reply::ok())
    }
}

/// What a node request produced.
enum NodeResult {
    Reply(Vec<u8>),
    SpecialPerms(String, Perms),
}

/// Parse and run one node request in a view.
fn node_op(
    view: &mut View<'_>,
    home: &str,
    kind: u32,
    payload: &[u8],
    special: (Perms, Perms),
) -> Result<NodeResult, XsError> {
    let caller = view.caller;
    let name_of = |raw: &[u8]| -> Result<String, XsError> {
        let canon = path::canonicalize(home, raw);
        Ok(path::valid_node(&canon, view.quotas.path_max)
            .ok_or(XsError::Inval)?
            .to_string())
    };
    let one = || wire::onearg(payload).ok_or(XsError::Inval);
    let ok = || Ok(NodeResult::Reply(b"OK\0".to_vec()));
    match kind {
        xs::XS_READ => {
            let name = name_of(one()?)?;
            view.read(&name).map(NodeResult::Reply)
        }
        xs::XS_DIRECTORY => {
            let name = name_of(one()?)?;
            view.directory(&name).map(NodeResult::Reply)
        }
        xs::XS_GET_PERMS => {
            let name = name_of(one()?)?;
            view.get_perms(&name)
                .map(|p| NodeResult::Reply(p.to_wire()))
        }
        xs::XS_DIRECTORY_PART => {
            if wire::count_strings(payload) != 2 {
                return Err(XsError::Inval);
            }
            let mut it = wire::strings(payload);
            let name = name_of(it.next().unwrap_or(b""))?;
            let off = wire::atoi(it.next().unwrap_or(b""));
            view.directory_part(&name, off as u32 as usize)
                .map(NodeResult::Reply)
        }
        xs::XS_WRITE => {
            let Some(nul) = payload.iter().position(|&c| c == 0) else {
                return Err(XsError::Inval);
            };
            let name = name_of(&payload[..nul])?;
            view.write(&name, &payload[nul + 1..])?;
            ok()
        }
        xs::XS_MKDIR => {
            let name = name_of(one()?)?;
            view.mkdir(&name)?;
            ok()
        }
        xs::XS_RM => {
            let name = name_of(one()?)?;
            view.rm(&name)?;
            ok()
        }
        xs::XS_SET_PERMS => {
            let n = wire::count_strings(payload);
            if n < 2 {
                return Err(XsError::Inval);
            }
            if !caller.privileged && n - 1 > view.quotas.perms_per_node {
                return Err(XsError::NoSpc);
            }
            let nul = payload.iter().position(|&c| c == 0).unwrap_or(0);
            let perms = Perms::from_wire(&payload[nul + 1..])?;
            let raw = &payload[..nul];
            if raw.first() == Some(&b'@') {
                let name = String::from_utf8_lossy(raw).into_owned();
                let cur = match name.as_str() {
                    "@introduceDomain" => &special.0,
                    "@releaseDomain" => &special.1,
                    _ => return Err(XsError::Inval),
                };
                let need = PERM_WRITE | PERM_OWNER;
                if caller.access(cur) & need != need {
                    return Err(XsError::Acces);
                }
                return Ok(NodeResult::SpecialPerms(name, perms));
            }
            let name = name_of(raw)?;
            view.set_perms(&name, perms)?;
            ok()
        }
        _ => Err(XsError::NoSys),
    }
}

fn onearg_domid(payload: &[u8]) -> Result<u32, XsError> {
    let arg = wire::onearg(payload).ok_or(XsError::Inval)?;
    let domid = wire::atoi(arg) as u32;
    if domid == 0 {
        return Err(XsError::Inval);
    }
    Ok(domid)
}

fn parse_i64(s: &[u8]) -> i64 {
    std::str::from_utf8(s)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

//! Saving and loading the whole store (nodes, values, permissions, the
//! special watch permissions) in a small binary format. Connections,
//! watches and transactions are not saved.
//!
//! Layout (little endian): magic `KXENXS\0\x01`, global generation (u64),
//! the `@introduceDomain` and `@releaseDomain` permissions, node count
//! (u64), then each node in pre-order from `/` (children in creation
//! order): path (u32 length + bytes), generation (u64), permissions (u32
//! count, then u32 domid + u8 access each), value (u32 length + bytes);
//! finally `END\0`.

use std::path::Path;

use xen_abi::xenstore as xs;

use crate::error::Error;
use crate::path;
use crate::perms::{Access, Perm, Perms};
use crate::store::{Node, Store};

const MAGIC: &[u8; 8] = b"KXENXS\0\x02";
/// Version 1: nodes only (still read).
const MAGIC_V1: &[u8; 8] = b"KXENXS\0\x01";
const TRAILER: &[u8; 4] = b"END\0";

/// What a state file holds.
pub(crate) struct Snapshot {
    pub store: Store,
    pub intro_perms: Perms,
    pub release_perms: Perms,
    /// Watches guests had set on their rings, restored when a restarted
    /// toolstack re-attaches to them.
    pub domain_watches: Vec<DomainWatch>,
}

/// A guest's watch as saved: (domid, watched node, token, set relative).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DomainWatch {
    pub domid: u32,
    pub node: Vec<u8>,
    pub token: Vec<u8>,
    pub relative: bool,
}

fn put_perms(out: &mut Vec<u8>, p: &Perms) {
    out.extend_from_slice(&(p.len() as u32).to_le_bytes());
    for e in p.as_slice() {
        out.extend_from_slice(&e.domid.to_le_bytes());
        out.push(e.access.bits());
    }
}

/// Serialize a store.
pub(crate) fn encode(
    store: &Store,
    intro: &Perms,
    release: &Perms,
    domain_watches: &[DomainWatch],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 * store.len() + 64);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&store.generation().to_le_bytes());
    put_perms(&mut out, intro);
    put_perms(&mut out, release);
    let order = store.subtree("/");
    out.extend_from_slice(&(order.len() as u64).to_le_bytes());
    for name in &order {
        let node = store.get(name).expect("listed node exists");
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&node.generation.to_le_bytes());
        put_perms(&mut out, &node.perms);
        out.extend_from_slice(&(node.value.len() as u32).to_le_bytes());
        out.extend_from_slice(&node.value);
    }
    out.extend_from_slice(&(domain_watches.len() as u32).to_le_bytes());
    for w in domain_watches {
        out.extend_from_slice(&w.domid.to_le_bytes());
        out.extend_from_slice(&(w.node.len() as u32).to_le_bytes());
        out.extend_from_slice(&w.node);
        out.extend_from_slice(&(w.token.len() as u32).to_le_bytes());
        out.extend_from_slice(&w.token);
        out.push(w.relative as u8);
    }
    out.extend_from_slice(TRAILER);
    out
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let end = end.ok_or_else(|| format!("truncated at byte {}", self.pos))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        let mut a = [0; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn perms(&mut self) -> Result<Perms, String> {
        let n = self.u32()? as usize;
        if n == 0 || n > 4096 {
            return Err(format!("bad permission count {n}"));
        }
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            let domid = self.u32()?;
            let access = match self.take(1)?[0] {
                0 => Access::None,
                1 => Access::Read,
                2 => Access::Write,
                3 => Access::Both,
                a => return Err(format!("bad access value {a}")),
            };
            v.push(Perm::new(domid, access));
        }
        Ok(Perms::new(v).expect("non-empty"))
    }
}

/// Parse a state file's contents.
pub(crate) fn decode(data: &[u8]) -> Result<Snapshot, String> {
    let mut r = Reader { data, pos: 0 };
    let version = match r.take(8)? {
        m if m == MAGIC => 2,
        m if m == MAGIC_V1 => 1,
        _ => return Err("not a kxen xenstore state file".into()),
    };
    let generation = r.u64()?;
    let intro_perms = r.perms()?;
    let release_perms = r.perms()?;
    let count = r.u64()?;
    let mut store = Store::empty();
    let mut max_gen = generation;
    let mut gens = Vec::new();
    for i in 0..count {
        let len = r.u32()? as usize;
        let name = std::str::from_utf8(r.take(len)?)
            .map_err(|_| "node name is not UTF-8".to_string())?
            .to_string();
        if !path::is_valid_nodename(name.as_bytes(), usize::MAX / 2) {
            return Err(format!("invalid node name {name:?}"));
        }
        if i == 0 && name != "/" {
            return Err("the first node is not /".into());
        }
        let gen = r.u64()?;
        let perms = r.perms()?;
        let vlen = r.u32()? as usize;
        let value = r.take(vlen)?.to_vec();
        if store.get(&name).is_some() {
            return Err(format!("node {name} appears twice"));
        }
        if name != "/" && store.get(path::parent(&name)).is_none() {
            return Err(format!("node {name} comes before its parent"));
        }
        max_gen = max_gen.max(gen);
        let mut node = Node::new(perms);
        node.value = value;
        store.create(&name, node);
        gens.push((name, gen));
    }
    for (name, gen) in gens {
        if let Some(n) = store.get_mut(&name) {
            n.generation = gen;
        }
    }
    let mut domain_watches = Vec::new();
    if version >= 2 {
        let count = r.u32()?;
        for _ in 0..count {
            let domid = r.u32()?;
            let len = r.u32()? as usize;
            let node = r.take(len)?.to_vec();
            let len = r.u32()? as usize;
            let token = r.take(len)?.to_vec();
            let relative = match r.take(1)?[0] {
                0 => false,
                1 => true,
                b => return Err(format!("bad watch flag {b}")),
            };
            if node.len() > xs::ABS_PATH_MAX || token.len() > xs::PAYLOAD_MAX {
                return Err("oversized saved watch".into());
            }
            domain_watches.push(DomainWatch {
                domid,
                node,
                token,
                relative,
            });
        }
    }
    if r.take(4)? != TRAILER || r.pos != data.len() {
        return Err("trailing garbage or missing end marker".into());
    }
    if store.get("/").is_none() {
        return Err("no root node".into());
    }
    store.set_generation(max_gen.saturating_add(1));
    Ok(Snapshot {
        store,
        intro_perms,
        release_perms,
        domain_watches,
    })
}

/// Write `data` to `path` atomically: a temporary file beside it, synced,
/// then renamed over it.
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<(), Error> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path.file_name().ok_or_else(|| {
        Error::io(
            format!("state path {}", path.display()),
            std::io::ErrorKind::InvalidInput.into(),
        )
    })?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_data()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(format!("saving state to {}", path.display()), e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects() {
        let mut s = Store::new();
        let mut n = Node::new(Perms::owner(3, Access::Read));
        n.value = b"v\0\xff".to_vec();
        s.create("/local/domain/3", n);
        let intro = Perms::owner(0, Access::None);
        let rel = Perms::new(vec![Perm::new(0, Access::None), Perm::new(5, Access::Read)]).unwrap();
        let watches = vec![DomainWatch {
            domid: 3,
            node: b"/local/domain/3/control/shutdown".to_vec(),
            token: b"sd".to_vec(),
            relative: true,
        }];
        let data = encode(&s, &intro, &rel, &watches);
        let snap = decode(&data).unwrap();
        assert_eq!(snap.domain_watches, watches);
        assert_eq!(snap.store.len(), s.len());
        assert_eq!(snap.store.get("/local/domain/3").unwrap().value, b"v\0\xff");
        assert_eq!(snap.store.owned_by(3), 1);
        assert_eq!(snap.release_perms, rel);
        let kids: Vec<&str> = snap.store.get("/local").unwrap().child_names().collect();
        assert_eq!(kids, vec!["domain"]);
        // Every truncation is an error, never a panic.
        for cut in 0..data.len() {
            assert!(decode(&data[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = data.clone();
        bad.push(0);
        assert!(decode(&bad).is_err());
        // A version-1 file (no watch section) still loads.
        let mut v1 = encode(&s, &intro, &rel, &[]);
        v1[..8].copy_from_slice(MAGIC_V1);
        let tail = v1.len() - TRAILER.len() - 4;
        v1.drain(tail..tail + 4);
        assert!(decode(&v1).unwrap().domain_watches.is_empty());
    }
}

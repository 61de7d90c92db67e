//! A domain's part of the store as it travels in a save image or a
//! migration stream (issue 17): the nodes under its home
//! `/local/domain/<domid>` with their values and permissions, and the
//! watches the guest set on its ring. A guest saved without its
//! cooperation (paused, not suspended) never learns that it moved, so on
//! the new domain its own nodes must still be there and its watches must
//! still fire.
//!
//! Paths are stored relative to the home and the saved domain's id is
//! kept, so that the loader can put the nodes under the new domain's home
//! and hand the new domid the permissions the old one had.
//!
//! Layout (little endian): magic `KXENXSD\x01`; the saved domid (u32);
//! node count (u32), then each node, parents before children: relative
//! path (u16 length + bytes, non-empty), permissions (u8 count, then u32
//! domid + u8 access each), value (u16 length + bytes); watch count (u32),
//! then each watch: path as the guest gave it once canonicalized, relative
//! to the home when the guest set it relative (u16 length + bytes), token
//! (u16 length + bytes). Version 2 (magic `KXENXSD\x02`) then has the
//! ring connection's state, for a domain saved without its cooperation:
//! a presence byte (0 or 1), then the four ring indices (req_cons,
//! req_prod, rsp_cons, rsp_prod, u32 each), the request bytes taken off
//! the ring that do not yet make a whole message (u32 length + bytes),
//! the replies and watch events not yet on the ring (u32 length + bytes)
//! and the ids of the transactions open at the save (u32 count + u32
//! each). Version 1 images (no ring section) are still read. The decoder
//! treats the bytes as hostile: every count and length is bounded by
//! xenstore's own limits and nothing may follow the last field.

use xen_abi::xenstore as xs;

use crate::path;
use crate::perms::{Access, Perm, Perms};
use crate::wire::{Header, HEADER_LEN};

/// The version this daemon writes: with the ring connection's state.
const MAGIC: &[u8; 8] = b"KXENXSD\x02";
/// The first version: nodes and watches only.
const MAGIC_V1: &[u8; 8] = b"KXENXSD\x01";

/// Most nodes an image may carry: ten times Xen's default per-domain node
/// quota, since the home also holds the toolstack's nodes.
pub const MAX_NODES: usize = 10_000;
/// Most watches: eight times Xen's default per-domain watch quota.
pub const MAX_WATCHES: usize = 1024;
/// Most permission entries on one node (Dom0 is not held to the quota).
pub const MAX_PERMS: usize = 64;
/// Most bytes of replies and events waiting for room on the ring: the
/// daemon holds a guest connection's watch events to its memory quota
/// (2.5 MiB by default) and its replies to its outstanding requests.
pub const MAX_PENDING_OUTPUT: usize = 4 << 20;
/// Most open transactions: eight times Xen's default per-domain quota.
pub const MAX_TRANSACTIONS: usize = 1024;

/// One node of the domain's subtree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageNode {
    /// Below the home, without a leading '/': `data/kept`.
    pub path: String,
    pub perms: Perms,
    pub value: Vec<u8>,
}

/// One watch the guest set on its ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageWatch {
    /// Relative to the home (no leading '/') when the guest set it
    /// relative; absolute (or a special `@...` name) otherwise.
    pub path: Vec<u8>,
    pub token: Vec<u8>,
}

/// Where the domain's ring connection stood when it was saved: what the
/// guest cannot see and the ring page alone does not say. With it a guest
/// paused mid-request gets its reply on the new domain, as if nothing had
/// happened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RingImage {
    /// The ring page's indices as the daemon last left them (the page
    /// itself travels with the domain's memory; the new daemon's
    /// introduction resets them, and the import puts these back).
    pub req_cons: u32,
    pub req_prod: u32,
    pub rsp_cons: u32,
    pub rsp_prod: u32,
    /// Request bytes the daemon took off the ring that do not make a
    /// whole message yet: a header, or a header and part of its body.
    pub partial_request: Vec<u8>,
    /// Replies and watch events queued for the ring, in order, that did
    /// not fit on it yet.
    pub pending_output: Vec<u8>,
    /// Ids of the transactions open at the save. The new daemon knows
    /// them but not their changes: they end with `EAGAIN`, which makes
    /// the guest start them over, as after any conflict.
    pub transactions: Vec<u32>,
}

/// A domain's part of the store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DomainImage {
    /// The domid the image was taken from.
    pub domid: u32,
    pub nodes: Vec<ImageNode>,
    pub watches: Vec<ImageWatch>,
    /// The ring connection, when the domain had one being served.
    pub ring: Option<RingImage>,
}

/// Why an image was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    #[error("xenstore data: not kxen's xenstore image (bad magic)")]
    BadMagic,
    #[error("xenstore data: truncated at byte {0}")]
    Truncated(usize),
    #[error("xenstore data: {what} count {count} is over the limit of {limit}")]
    TooMany {
        what: &'static str,
        count: usize,
        limit: usize,
    },
    #[error("xenstore data: {what} of {len} bytes is over the limit of {limit}")]
    TooLong {
        what: &'static str,
        len: usize,
        limit: usize,
    },
    #[error("xenstore data: bad node path {0:?}")]
    BadPath(String),
    #[error("xenstore data: node {0:?} comes before its parent")]
    Orphan(String),
    #[error("xenstore data: node {0:?} appears twice")]
    Duplicate(String),
    #[error("xenstore data: bad watch path {0:?}")]
    BadWatch(String),
    #[error("xenstore data: a node has no permissions")]
    NoPerms,
    #[error("xenstore data: bad access value {0}")]
    BadAccess(u8),
    #[error("xenstore data: {0} bytes after the last field")]
    Trailing(usize),
    #[error("xenstore data: the {0} ring's indices claim more than a ring of data")]
    BadIndices(&'static str),
    #[error("xenstore data: the partial request is not a message's incomplete start")]
    BadPartial,
    #[error("xenstore data: transaction id {0} is 0 or appears twice")]
    BadTransaction(u32),
    #[error("xenstore data: ring presence byte {0}")]
    BadPresence(u8),
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u16).to_le_bytes());
    out.extend_from_slice(b);
}

impl DomainImage {
    /// The image as bytes. Lengths the store itself keeps within u16
    /// (paths, values, tokens) are written as they are.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 * self.nodes.len() + 64);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.domid.to_le_bytes());
        out.extend_from_slice(&(self.nodes.len() as u32).to_le_bytes());
        for n in &self.nodes {
            put_bytes(&mut out, n.path.as_bytes());
            out.push(n.perms.len() as u8);
            for p in n.perms.as_slice() {
                out.extend_from_slice(&p.domid.to_le_bytes());
                out.push(p.access.bits());
            }
            put_bytes(&mut out, &n.value);
        }
        out.extend_from_slice(&(self.watches.len() as u32).to_le_bytes());
        for w in &self.watches {
            put_bytes(&mut out, &w.path);
            put_bytes(&mut out, &w.token);
        }
        match &self.ring {
            None => out.push(0),
            Some(r) => {
                out.push(1);
                for i in [r.req_cons, r.req_prod, r.rsp_cons, r.rsp_prod] {
                    out.extend_from_slice(&i.to_le_bytes());
                }
                for b in [&r.partial_request, &r.pending_output] {
                    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
                    out.extend_from_slice(b);
                }
                out.extend_from_slice(&(r.transactions.len() as u32).to_le_bytes());
                for t in &r.transactions {
                    out.extend_from_slice(&t.to_le_bytes());
                }
            }
        }
        out
    }

    /// Parse an image from a stream: every bound checked, see the module
    /// documentation.
    pub fn decode(data: &[u8]) -> Result<DomainImage, ImageError> {
        let mut r = Reader { data, pos: 0 };
        let with_ring = match r.take(MAGIC.len())? {
            m if m == MAGIC => true,
            m if m == MAGIC_V1 => false,
            _ => return Err(ImageError::BadMagic),
        };
        let domid = r.u32()?;
        let count = r.count("node", MAX_NODES)?;
        let mut nodes: Vec<ImageNode> = Vec::with_capacity(count.min(1024));
        let mut seen = std::collections::HashSet::new();
        for _ in 0..count {
            let raw = r.bytes("node path", xs::REL_PATH_MAX)?;
            let path = relative_node(raw)
                .ok_or_else(|| ImageError::BadPath(String::from_utf8_lossy(raw).into_owned()))?;
            let parent = path.rfind('/').map(|i| &path[..i]);
            if parent.is_some_and(|p| !seen.contains(p)) {
                return Err(ImageError::Orphan(path));
            }
            let perm_count = r.take(1)?[0] as usize;
            if perm_count == 0 {
                return Err(ImageError::NoPerms);
            }
            if perm_count > MAX_PERMS {
                return Err(ImageError::TooMany {
                    what: "permission",
                    count: perm_count,
                    limit: MAX_PERMS,
                });
            }
            let mut list = Vec::with_capacity(perm_count);
            for _ in 0..perm_count {
                let domid = r.u32()?;
                let access = match r.take(1)?[0] {
                    0 => Access::None,
                    1 => Access::Read,
                    2 => Access::Write,
                    3 => Access::Both,
                    a => return Err(ImageError::BadAccess(a)),
                };
                list.push(Perm::new(domid, access));
            }
            let perms = Perms::new(list).ok_or(ImageError::NoPerms)?;
            let value = r.bytes("node value", xs::PAYLOAD_MAX)?.to_vec();
            if !seen.insert(path.clone()) {
                return Err(ImageError::Duplicate(path));
            }
            nodes.push(ImageNode { path, perms, value });
        }
        let count = r.count("watch", MAX_WATCHES)?;
        let mut watches = Vec::with_capacity(count.min(MAX_WATCHES));
        for _ in 0..count {
            let raw = r.bytes("watch path", xs::ABS_PATH_MAX)?;
            if !watch_path_is_valid(raw) {
                return Err(ImageError::BadWatch(
                    String::from_utf8_lossy(raw).into_owned(),
                ));
            }
            let token = r.bytes("watch token", xs::PAYLOAD_MAX)?;
            if token.contains(&0) {
                return Err(ImageError::BadWatch(
                    String::from_utf8_lossy(token).into_owned(),
                ));
            }
            watches.push(ImageWatch {
                path: raw.to_vec(),
                token: token.to_vec(),
            });
        }
        let ring = if with_ring {
            match r.take(1)?[0] {
                0 => None,
                1 => Some(RingImage::decode(&mut r)?),
                b => return Err(ImageError::BadPresence(b)),
            }
        } else {
            None
        };
        if r.pos != data.len() {
            return Err(ImageError::Trailing(data.len() - r.pos));
        }
        Ok(DomainImage {
            domid,
            nodes,
            watches,
            ring,
        })
    }
}

impl RingImage {
    fn decode(r: &mut Reader<'_>) -> Result<RingImage, ImageError> {
        let (req_cons, req_prod, rsp_cons, rsp_prod) = (r.u32()?, r.u32()?, r.u32()?, r.u32()?);
        // The page's indices are the guest's to change too, and the
        // daemon checks them at every use; these are checked as well so
        // that an image never says more than a ring holds.
        if req_prod.wrapping_sub(req_cons) as usize > xs::RING_SIZE {
            return Err(ImageError::BadIndices("request"));
        }
        if rsp_prod.wrapping_sub(rsp_cons) as usize > xs::RING_SIZE {
            return Err(ImageError::BadIndices("response"));
        }
        let partial_request = r
            .long_bytes("partial request", HEADER_LEN + xs::PAYLOAD_MAX)?
            .to_vec();
        if partial_request.len() >= HEADER_LEN {
            let len = Header::parse(&partial_request).len as usize;
            if len > xs::PAYLOAD_MAX || partial_request.len() >= HEADER_LEN + len {
                return Err(ImageError::BadPartial);
            }
        }
        let pending_output = r.long_bytes("pending output", MAX_PENDING_OUTPUT)?.to_vec();
        let count = r.count("transaction", MAX_TRANSACTIONS)?;
        let mut transactions = Vec::with_capacity(count);
        for _ in 0..count {
            let id = r.u32()?;
            if id == 0 || transactions.contains(&id) {
                return Err(ImageError::BadTransaction(id));
            }
            transactions.push(id);
        }
        Ok(RingImage {
            req_cons,
            req_prod,
            rsp_cons,
            rsp_prod,
            partial_request,
            pending_output,
            transactions,
        })
    }
}

/// A stored node path: non-empty, no leading or trailing '/', no empty
/// component, and a valid node name once under a home.
fn relative_node(raw: &[u8]) -> Option<String> {
    if raw.is_empty() || raw.first() == Some(&b'/') {
        return None;
    }
    let full = [b"/local/domain/0/".as_slice(), raw].concat();
    if !path::is_valid_nodename(&full, xs::REL_PATH_MAX) {
        return None;
    }
    String::from_utf8(raw.to_vec()).ok()
}

/// A stored watch path: a special name, an absolute node or one relative
/// to the home, as xenstore accepts them from a guest.
fn watch_path_is_valid(raw: &[u8]) -> bool {
    if raw.first() == Some(&b'@') {
        return raw.len() <= xs::REL_PATH_MAX && !raw.contains(&0);
    }
    if raw.first() == Some(&b'/') {
        return path::is_valid_nodename(raw, xs::REL_PATH_MAX);
    }
    relative_node(raw).is_some()
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ImageError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or(ImageError::Truncated(self.pos))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u32(&mut self) -> Result<u32, ImageError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn count(&mut self, what: &'static str, limit: usize) -> Result<usize, ImageError> {
        let count = self.u32()? as usize;
        if count > limit {
            return Err(ImageError::TooMany { what, count, limit });
        }
        Ok(count)
    }

    /// Bytes with a u32 length, at most `limit` of them.
    fn long_bytes(&mut self, what: &'static str, limit: usize) -> Result<&'a [u8], ImageError> {
        let len = self.u32()? as usize;
        if len > limit {
            return Err(ImageError::TooLong { what, len, limit });
        }
        self.take(len)
    }

    fn bytes(&mut self, what: &'static str, limit: usize) -> Result<&'a [u8], ImageError> {
        let b = self.take(2)?;
        let len = u16::from_le_bytes([b[0], b[1]]) as usize;
        if len > limit {
            return Err(ImageError::TooLong { what, len, limit });
        }
        self.take(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> DomainImage {
        DomainImage {
            domid: 7,
            nodes: vec![
                ImageNode {
                    path: "data".into(),
                    perms: Perms::owner(7, Access::None),
                    value: vec![],
                },
                ImageNode {
                    path: "data/kept".into(),
                    perms: Perms::new(vec![Perm::new(7, Access::None), Perm::new(0, Access::Read)])
                        .unwrap(),
                    value: b"v\0binary".to_vec(),
                },
            ],
            watches: vec![
                ImageWatch {
                    path: b"control/shutdown".to_vec(),
                    token: b"tok".to_vec(),
                },
                ImageWatch {
                    path: b"/local/domain/7/device".to_vec(),
                    token: b"t2".to_vec(),
                },
                ImageWatch {
                    path: b"@releaseDomain".to_vec(),
                    token: b"t3".to_vec(),
                },
            ],
            ring: Some(RingImage {
                req_cons: u32::MAX - 3,
                req_prod: 20,
                rsp_cons: 5,
                rsp_prod: 5 + 1024,
                partial_request: Header {
                    kind: xs::XS_WRITE,
                    req_id: 9,
                    tx_id: 0,
                    len: 40,
                }
                .to_bytes()
                .iter()
                .chain(b"data/x\0half")
                .copied()
                .collect(),
                pending_output: vec![0xab; 3000],
                transactions: vec![1, 7],
            }),
        }
    }

    #[test]
    fn round_trips() {
        let img = sample();
        assert_eq!(DomainImage::decode(&img.encode()), Ok(img));
        let empty = DomainImage::default();
        assert_eq!(DomainImage::decode(&empty.encode()), Ok(empty));
    }

    #[test]
    fn every_truncation_is_refused() {
        let bytes = sample().encode();
        for len in 0..bytes.len() {
            assert!(DomainImage::decode(&bytes[..len]).is_err(), "{len}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(DomainImage::decode(&longer), Err(ImageError::Trailing(1)));
    }

    fn with_node(path: &[u8], perms: &[(u32, u8)], value_len: u16) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&7u32.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
        put_bytes(&mut out, path);
        out.push(perms.len() as u8);
        for &(d, a) in perms {
            out.extend_from_slice(&d.to_le_bytes());
            out.push(a);
        }
        out.extend_from_slice(&value_len.to_le_bytes());
        out.extend(std::iter::repeat_n(b'x', value_len as usize));
        out.extend_from_slice(&0u32.to_le_bytes());
        out.push(0);
        out
    }

    #[test]
    fn hostile_nodes_are_refused() {
        assert!(DomainImage::decode(&with_node(b"data", &[(7, 3)], 4)).is_ok());
        for bad in [
            &b""[..],
            b"/data",
            b"data/",
            b"a//b",
            b"..",
            b"da ta",
            b"../../0/x",
        ] {
            assert!(
                DomainImage::decode(&with_node(bad, &[(7, 3)], 0)).is_err(),
                "{bad:?}"
            );
        }
        let deep = vec![b'a'; xs::REL_PATH_MAX + 1];
        assert!(DomainImage::decode(&with_node(&deep, &[(7, 3)], 0)).is_err());
        assert_eq!(
            DomainImage::decode(&with_node(b"data/x", &[(7, 3)], 0)),
            Err(ImageError::Orphan("data/x".into()))
        );
        assert_eq!(
            DomainImage::decode(&with_node(b"data", &[], 0)),
            Err(ImageError::NoPerms)
        );
        assert_eq!(
            DomainImage::decode(&with_node(b"data", &[(7, 4)], 0)),
            Err(ImageError::BadAccess(4))
        );
        let many: Vec<(u32, u8)> = (0..65).map(|d| (d, 1)).collect();
        assert!(matches!(
            DomainImage::decode(&with_node(b"data", &many, 0)),
            Err(ImageError::TooMany { .. })
        ));
        assert!(matches!(
            DomainImage::decode(&with_node(b"data", &[(7, 3)], 4097)),
            Err(ImageError::TooLong { .. })
        ));
    }

    #[test]
    fn hostile_counts_and_watches_are_refused() {
        let mut huge = MAGIC.to_vec();
        huge.extend_from_slice(&7u32.to_le_bytes());
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            DomainImage::decode(&huge),
            Err(ImageError::TooMany { what: "node", .. })
        ));
        let mut img = DomainImage::default();
        for bad in [&b""[..], b"//", b"/a/", b"a b", b"@x\0y"] {
            img.watches = vec![ImageWatch {
                path: bad.to_vec(),
                token: b"t".to_vec(),
            }];
            assert!(DomainImage::decode(&img.encode()).is_err(), "{bad:?}");
        }
        img.watches = vec![ImageWatch {
            path: b"data".to_vec(),
            token: b"t\0u".to_vec(),
        }];
        assert!(DomainImage::decode(&img.encode()).is_err());
        let mut bad_magic = DomainImage::default().encode();
        bad_magic[7] = 3;
        assert_eq!(DomainImage::decode(&bad_magic), Err(ImageError::BadMagic));
    }

    #[test]
    fn version_1_images_are_read_without_a_ring() {
        let mut img = sample();
        img.ring = None;
        let mut v1 = img.encode();
        v1.pop(); // the presence byte
        v1[7] = 1;
        assert_eq!(DomainImage::decode(&v1), Ok(img));
        v1.push(0);
        assert_eq!(DomainImage::decode(&v1), Err(ImageError::Trailing(1)));
    }

    #[test]
    fn hostile_ring_state_is_refused() {
        let refuse = |edit: &dyn Fn(&mut RingImage)| {
            let mut img = sample();
            edit(img.ring.as_mut().unwrap());
            DomainImage::decode(&img.encode()).unwrap_err()
        };
        assert_eq!(
            refuse(&|r| r.req_prod = r.req_cons.wrapping_add(1025)),
            ImageError::BadIndices("request")
        );
        assert_eq!(
            refuse(&|r| r.rsp_cons = r.rsp_prod.wrapping_add(1)),
            ImageError::BadIndices("response")
        );
        // A whole message is not a partial one; nor is a header that
        // announces more than a payload may hold.
        assert_eq!(
            refuse(&|r| r.partial_request.resize(HEADER_LEN + 40, b'x')),
            ImageError::BadPartial
        );
        assert_eq!(
            refuse(&|r| r.partial_request[12..16].copy_from_slice(&4097u32.to_le_bytes())),
            ImageError::BadPartial
        );
        assert!(matches!(
            refuse(&|r| r.partial_request = vec![0; HEADER_LEN + xs::PAYLOAD_MAX + 1]),
            ImageError::TooLong { .. }
        ));
        assert!(matches!(
            refuse(&|r| r.pending_output = vec![0; MAX_PENDING_OUTPUT + 1]),
            ImageError::TooLong { .. }
        ));
        assert_eq!(
            refuse(&|r| r.transactions = vec![3, 0]),
            ImageError::BadTransaction(0)
        );
        assert_eq!(
            refuse(&|r| r.transactions = vec![3, 3]),
            ImageError::BadTransaction(3)
        );
        let mut bytes = sample().encode();
        let at = bytes.len() - (4 + 2 * 4) - (4 + 3000) - (4 + HEADER_LEN + 11) - 16 - 1;
        assert_eq!(bytes[at], 1);
        bytes[at] = 2;
        assert_eq!(DomainImage::decode(&bytes), Err(ImageError::BadPresence(2)));
        let mut many = sample();
        many.ring.as_mut().unwrap().transactions = (1..=MAX_TRANSACTIONS as u32 + 1).collect();
        assert!(matches!(
            DomainImage::decode(&many.encode()),
            Err(ImageError::TooMany { .. })
        ));
    }
}

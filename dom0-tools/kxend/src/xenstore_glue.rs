//! kxend's xenstored: the kxen-xenstore library, served on
//! `$KXEN_RUN_DIR/xenstored.sock` for libxenstore clients (point
//! XENSTORED_PATH at it) and on every domain's ring, and persisted to
//! `$KXEN_STATE_DIR/xenstore.state` so its contents survive a restart.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use kxen_xenstore::{Access, Config, Perm, Perms, SharedPage, UnixServer, Xenstored};
use tracing::{debug, warn};

use crate::store::StoreService;
use kxen_foreign::foreign::ForeignPage;

/// A guest's xenstore ring page, mapped from its memfd.
struct Ring(ForeignPage);

impl SharedPage for Ring {
    fn load_u32(&self, off: usize) -> u32 {
        self.0.load_u32(off)
    }
    fn store_u32(&self, off: usize, v: u32) {
        self.0.store_u32(off, v)
    }
    fn read(&self, off: usize, buf: &mut [u8]) {
        self.0.read(off, buf)
    }
    fn write(&self, off: usize, data: &[u8]) {
        self.0.write(off, data)
    }
}

pub struct XenstoreGlue {
    xs: Xenstored,
    state: PathBuf,
    _socket: Mutex<Option<UnixServer>>,
}

/// Parse xl's permission notation ("n0", "r5", "b7"...).
fn perms(list: &[String]) -> Option<Perms> {
    let parsed: Option<Vec<Perm>> = list
        .iter()
        .map(|p| {
            let (letter, id) = p.split_at(1);
            let access = match letter {
                "n" => Access::None,
                "r" => Access::Read,
                "w" => Access::Write,
                "b" => Access::Both,
                _ => return None,
            };
            Some(Perm::new(id.parse().ok()?, access))
        })
        .collect();
    Perms::new(parsed?)
}

impl XenstoreGlue {
    pub fn start(state_dir: &Path, run_dir: &Path) -> Result<Arc<dyn StoreService>, String> {
        let xs = Xenstored::new(Config::default()).map_err(|e| e.to_string())?;
        let state = state_dir.join("xenstore.state");
        if state.exists() {
            if let Err(e) = xs.load(&state) {
                warn!("xenstore state {}: {e}; starting empty", state.display());
            }
        }
        let socket_path = run_dir.join("xenstored.sock");
        let _ = std::fs::remove_file(&socket_path);
        let socket = xs.serve_unix(&socket_path).map_err(|e| e.to_string())?;
        Ok(Arc::new(XenstoreGlue {
            xs,
            state,
            _socket: Mutex::new(Some(socket)),
        }))
    }
}

impl StoreService for XenstoreGlue {
    fn write(&self, path: &str, value: &[u8]) {
        if let Err(e) = self.xs.write(path, value) {
            warn!(path, "xenstore write: {e}");
        }
    }

    fn mkdir(&self, path: &str) {
        if let Err(e) = self.xs.mkdir(path) {
            warn!(path, "xenstore mkdir: {e}");
        }
    }

    fn rm(&self, path: &str) {
        if let Err(e) = self.xs.rm(path) {
            debug!(path, "xenstore rm: {e}");
        }
    }

    fn set_perms(&self, path: &str, list: &[String]) {
        match perms(list) {
            Some(p) => {
                if let Err(e) = self.xs.set_perms(path, &p) {
                    warn!(path, "xenstore set_perms: {e}");
                }
            }
            None => warn!(path, ?list, "bad permissions"),
        }
    }

    fn introduce(
        &self,
        domid: u32,
        ring: ForeignPage,
        notify: Box<dyn Fn() + Send + Sync>,
        resume: bool,
    ) {
        let ring = Arc::new(Ring(ring));
        if resume {
            self.xs.resume_domain(domid, ring, notify);
        } else {
            self.xs.introduce_domain(domid, ring, notify);
        }
    }

    fn kick(&self, domid: u32) {
        self.xs.ring_kick(domid);
    }

    fn release(&self, domid: u32) {
        if let Err(e) = self.xs.release_domain(domid) {
            debug!(domid, "xenstore release: {e}");
        }
    }

    fn xenstored(&self) -> Xenstored {
        self.xs.clone()
    }

    fn save(&self) {
        if self.xs.is_dirty() {
            if let Err(e) = self.xs.save(&self.state) {
                warn!("saving xenstore: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use kxen_xenstore::{Access, Perm, Perms};

    fn parse(list: &[&str]) -> Option<Perms> {
        let owned: Vec<String> = list.iter().map(|s| s.to_string()).collect();
        super::perms(&owned)
    }

    #[test]
    fn parses_xl_permission_notation() {
        // Every letter maps to its own access, and each entry keeps its
        // domid and its place (the first entry is the owner).
        assert_eq!(
            parse(&["n0", "r5", "w12", "b7"]),
            Perms::new(vec![
                Perm::new(0, Access::None),
                Perm::new(5, Access::Read),
                Perm::new(12, Access::Write),
                Perm::new(7, Access::Both),
            ])
        );
        assert_eq!(parse(&["n0", "r5"]).map(|p| p.owner_id()), Some(0));
        assert_eq!(parse(&["x0"]), None);
        assert_eq!(parse(&["r"]), None);
        assert_eq!(parse(&["r-1"]), None);
        assert_eq!(parse(&[]), None);
    }
}

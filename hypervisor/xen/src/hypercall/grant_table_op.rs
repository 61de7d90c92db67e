//! GNTTABOP_* (Xen's common/grant_table.c `do_grant_table_op`): the v1
//! grant table's size, setup and version; GNTTABOP_copy itself lives in
//! [`crate::gntcopy`].

use xen_abi::errno::*;
use xen_abi::grant_table::*;

use crate::domain::Domain;
use crate::grant::MAX_GRANT_FRAMES;
use crate::guest::GuestAccess;

impl Domain {
    pub(super) fn grant_table_op(&self, g: &GuestAccess, cmd: u64, uop: u64, count: u64) -> i64 {
        // Xen takes the count as a signed int.
        if (count as i32) < 0 {
            return -EINVAL;
        }
        match cmd {
            GNTTABOP_QUERY_SIZE => {
                if count != 1 {
                    return -EINVAL;
                }
                let mut q = read!(g, QuerySize, uop);
                if self.is_self(q.dom) {
                    q.nr_frames = self.lock().grants.nr_frames();
                    q.max_nr_frames = MAX_GRANT_FRAMES;
                    q.status = GNTST_OKAY;
                } else if q.dom == 0 {
                    // Dom0 exists, and XSM_TARGET (xsm_grant_query_size)
                    // keeps a domU out of its table.
                    q.status = GNTST_PERMISSION_DENIED;
                } else {
                    // gnttab_query_size: no such domain.
                    q.status = GNTST_BAD_DOMAIN;
                }
                write!(g, uop, &q);
                0
            }
            GNTTABOP_SETUP_TABLE => {
                if count != 1 {
                    return -EINVAL;
                }
                let mut req = read!(g, SetupTable, uop);
                req.status = self.setup_table(g, &req);
                write!(g, uop, &req);
                0
            }
            GNTTABOP_SET_VERSION => {
                if count != 1 {
                    return -EINVAL;
                }
                let mut req = read!(g, SetVersion, uop);
                let rc = match req.version {
                    1 => 0,
                    // Behave as Xen built with max grant version 1.
                    2 => -ENOSYS,
                    _ => -EINVAL,
                };
                req.version = self.lock().grants.version;
                write!(g, uop, &req);
                rc
            }
            GNTTABOP_GET_VERSION => {
                if count != 1 {
                    return -EINVAL;
                }
                let mut req = read!(g, GetVersion, uop);
                if !self.is_self(req.dom) {
                    return -ESRCH;
                }
                req.version = self.lock().grants.version;
                write!(g, uop, &req);
                0
            }
            GNTTABOP_COPY => self.grant_copy(g, uop, count),
            _ => -ENOSYS,
        }
    }

    fn setup_table(&self, g: &GuestAccess, req: &SetupTable) -> i16 {
        if !self.is_self(req.dom) {
            return GNTST_BAD_DOMAIN;
        }
        if req.nr_frames > MAX_GRANT_FRAMES {
            return GNTST_GENERAL_ERROR;
        }
        let mut st = self.lock();
        for i in 0..req.nr_frames {
            let gfn = match st.grants.frames[i as usize] {
                Some(gfn) => gfn,
                None => {
                    let gfn = self.cfg.default_grant_gfn + i as u64;
                    if self.place_grant_frame(&mut st, i, gfn) != 0 {
                        return GNTST_GENERAL_ERROR;
                    }
                    gfn
                }
            };
            if g.write_elem(req.frame_list, i as u64, &gfn).is_err() {
                return GNTST_BAD_VIRT_ADDR;
            }
        }
        GNTST_OKAY
    }
}

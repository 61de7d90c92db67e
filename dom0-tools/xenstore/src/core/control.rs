//! XS_CONTROL: the privileged commands (log, quota and quota-soft, per
//! domain quota use, store check) with the quota tables they print and set.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use tracing::{info, warn};
use xen_abi::xenstore as xs;

use crate::error::XsError;
use crate::path;
use crate::wire;

use super::{Core, Reply};

impl Core {
    pub(super) fn do_control(&mut self, payload: &[u8]) -> Result<Reply, XsError> {
        let args: Vec<String> = wire::strings(payload)
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect();
        let Some((cmd, rest)) = args.split_first() else {
            return Err(XsError::Inval);
        };
        let text = |s: String| {
            let mut p = s.into_bytes();
            p.push(0);
            Ok(Reply::data(p))
        };
        match cmd.as_str() {
            "check" => {
                if !rest.is_empty() {
                    return Err(XsError::Inval);
                }
                self.check_store();
                Ok(Reply::ok())
            }
            "log" => match rest {
                [on] if on == "on" => {
                    self.trace_io = true;
                    Ok(Reply::ok())
                }
                [off] if off == "off" => {
                    self.trace_io = false;
                    Ok(Reply::ok())
                }
                _ => Err(XsError::Inval),
            },
            "print" => {
                if rest.len() != 1 {
                    return Err(XsError::Inval);
                }
                info!(message = %rest[0], "xenstore-control print");
                Ok(Reply::ok())
            }
            "quota" => match rest {
                [] => text(self.quota_text(false)),
                [set, name, val] if set == "set" => self.quota_set(name, val, false),
                [domid] => text(self.domain_quota_text(wire::atoi(domid.as_bytes()) as u32)?),
                _ => Err(XsError::Inval),
            },
            "quota-soft" => match rest {
                [] => text(self.quota_text(true)),
                [set, name, val] if set == "set" => self.quota_set(name, val, true),
                _ => Err(XsError::Inval),
            },
            "help" => {
                if !rest.is_empty() {
                    return Err(XsError::Inval);
                }
                text(
                    "check\t\nlog\ton|off\nprint\t<string>\nquota\t[set <name> <val>|<domid>]\n\
                     quota-soft\t[set <name> <val>]\nhelp\t\n"
                        .to_string(),
                )
            }
            _ => Err(XsError::Inval),
        }
    }

    fn quota_table(&self, soft: bool) -> Vec<(&'static str, usize, &'static str)> {
        let q = &self.quotas;
        if soft {
            return vec![(
                "memory",
                q.memory_soft,
                "Total Xenstore memory per domain (warning level)",
            )];
        }
        vec![
            ("nodes", q.nodes_per_domain, "Nodes per domain"),
            ("watches", q.watches_per_domain, "Watches per domain"),
            (
                "transactions",
                q.transactions_per_domain,
                "Transactions per domain",
            ),
            (
                "outstanding",
                q.outstanding,
                "Outstanding requests per domain",
            ),
            (
                "transaction-nodes",
                q.transaction_nodes,
                "Max. number of accessed nodes per transaction",
            ),
            (
                "memory",
                q.memory,
                "Total Xenstore memory per domain (error level)",
            ),
            ("node-size", q.node_size, "Max. size of a node"),
            ("path-max", q.path_max, "Max. length of a node path"),
            (
                "permissions",
                q.perms_per_node,
                "Max. number of permissions per node",
            ),
        ]
    }

    fn quota_text(&self, soft: bool) -> String {
        let mut s = String::from("Quota settings:\n");
        for (name, val, descr) in self.quota_table(soft) {
            s.push_str(&format!("{name:<17}: {val:>8} {descr}\n"));
        }
        s
    }

    fn quota_set(&mut self, name: &str, val: &str, soft: bool) -> Result<Reply, XsError> {
        let v = wire::atoi(val.as_bytes());
        if v < 1 {
            return Err(XsError::Inval);
        }
        let v = v as usize;
        let q = &mut self.quotas;
        let slot = match (soft, name) {
            (true, "memory") => &mut q.memory_soft,
            (false, "nodes") => &mut q.nodes_per_domain,
            (false, "watches") => &mut q.watches_per_domain,
            (false, "transactions") => &mut q.transactions_per_domain,
            (false, "outstanding") => &mut q.outstanding,
            (false, "transaction-nodes") => &mut q.transaction_nodes,
            (false, "memory") => &mut q.memory,
            (false, "node-size") => &mut q.node_size,
            (false, "path-max") => {
                q.path_max = v.min(xs::REL_PATH_MAX);
                return Ok(Reply::ok());
            }
            (false, "permissions") => &mut q.perms_per_node,
            _ => return Err(XsError::Inval),
        };
        *slot = v;
        Ok(Reply::ok())
    }

    fn domain_quota_text(&self, domid: u32) -> Result<String, XsError> {
        let (watches, transactions, outstanding, memory) = if domid == 0 {
            (0, 0, 0, 0)
        } else {
            let d = self.domains.get(&domid).ok_or(XsError::NoEnt)?;
            let c = self.conns.get(&d.conn).ok_or(XsError::NoEnt)?;
            (
                c.watches.len(),
                c.transactions.len(),
                c.outstanding.load(Ordering::Acquire),
                c.out_bytes,
            )
        };
        let mut s = format!("Domain {domid}:\n");
        for (name, v) in [
            ("nodes", self.store.owned_by(domid)),
            ("watches", watches),
            ("transactions", transactions),
            ("outstanding", outstanding),
            ("memory", memory),
        ] {
            s.push_str(&format!("{name:<16}: {v:>8}\n"));
        }
        Ok(s)
    }

    /// Consistency check (`CONTROL check`): every listed child exists and
    /// every node is reachable. Problems are logged.
    pub fn check_store(&self) -> usize {
        let mut problems = 0;
        let reachable: HashSet<String> = self.store.subtree("/").into_iter().collect();
        for (name, node) in self.store.iter() {
            if !reachable.contains(name) {
                warn!(node = %name, "store check: unreachable node");
                problems += 1;
            }
            for c in node.child_names() {
                if self.store.get(&path::join(name, c)).is_none() {
                    warn!(node = %name, child = %c, "store check: missing child");
                    problems += 1;
                }
            }
        }
        problems
    }
}

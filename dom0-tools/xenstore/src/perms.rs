//! Node permissions: a list of `<letter><domid>` entries. The first entry
//! names the owner and gives the access of every domain not listed; the owner
//! itself (and any privileged caller) always has full access.

use std::fmt;

use crate::error::XsError;

/// Read access bit (`XS_PERM_READ`).
pub const PERM_READ: u8 = 1;
/// Write access bit (`XS_PERM_WRITE`).
pub const PERM_WRITE: u8 = 2;
/// Ownership bit (`XS_PERM_OWNER`): may change permissions.
pub const PERM_OWNER: u8 = 8;

/// The access an entry grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// `n`
    None,
    /// `r`
    Read,
    /// `w`
    Write,
    /// `b`
    Both,
}

impl Access {
    pub fn bits(self) -> u8 {
        match self {
            Access::None => 0,
            Access::Read => PERM_READ,
            Access::Write => PERM_WRITE,
            Access::Both => PERM_READ | PERM_WRITE,
        }
    }

    pub fn letter(self) -> char {
        match self {
            Access::None => 'n',
            Access::Read => 'r',
            Access::Write => 'w',
            Access::Both => 'b',
        }
    }

    fn from_letter(c: u8) -> Option<Access> {
        Some(match c {
            b'n' => Access::None,
            b'r' => Access::Read,
            b'w' => Access::Write,
            b'b' => Access::Both,
            _ => return None,
        })
    }
}

/// One permission entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Perm {
    pub domid: u32,
    pub access: Access,
}

impl Perm {
    pub const fn new(domid: u32, access: Access) -> Perm {
        Perm { domid, access }
    }

    /// Parse one entry as Xen does (`xs_strings_to_perms`): a letter, then
    /// a number in C `strtol` base-0 syntax filling the rest of the string.
    pub fn parse(s: &[u8]) -> Result<Perm, XsError> {
        let (&letter, num) = s.split_first().ok_or(XsError::Inval)?;
        let access = Access::from_letter(letter).ok_or(XsError::Inval)?;
        let value = strtol_whole(num).ok_or(XsError::Inval)?;
        Ok(Perm {
            domid: value as u32,
            access,
        })
    }
}

impl std::str::FromStr for Perm {
    type Err = XsError;

    /// `"r5"`, `"n0"`, ... (as `xenstore-chmod` takes them).
    fn from_str(s: &str) -> Result<Perm, XsError> {
        Perm::parse(s.as_bytes())
    }
}

impl fmt::Display for Perm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Xen prints the id with "%i".
        write!(f, "{}{}", self.access.letter(), self.domid as i32)
    }
}

/// Parse a number the way C's `strtol(s, &end, 0)` does and require that it
/// uses the whole (non-empty) string.
fn strtol_whole(s: &[u8]) -> Option<i64> {
    if s.is_empty() {
        return None;
    }
    let mut i = 0;
    while i < s.len() && matches!(s[i], b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c) {
        i += 1;
    }
    let mut neg = false;
    if i < s.len() && (s[i] == b'+' || s[i] == b'-') {
        neg = s[i] == b'-';
        i += 1;
    }
    let mut base = 10;
    if s.len() > i + 1
        && s[i] == b'0'
        && (s[i + 1] | 0x20) == b'x'
        && s.get(i + 2).is_some_and(|c| c.is_ascii_hexdigit())
    {
        base = 16;
        i += 2;
    } else if s.get(i) == Some(&b'0') {
        base = 8;
    }
    let start = i;
    let mut v: i64 = 0;
    while i < s.len() {
        let Some(d) = (s[i] as char).to_digit(base) else {
            break;
        };
        v = v.saturating_mul(base as i64).saturating_add(d as i64);
        i += 1;
    }
    if i == start || i != s.len() {
        return None;
    }
    Some(if neg { v.saturating_neg() } else { v })
}

/// A node's permission list; never empty.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Perms(Vec<Perm>);

impl Perms {
    /// A list; `None` if empty.
    pub fn new(list: Vec<Perm>) -> Option<Perms> {
        if list.is_empty() {
            None
        } else {
            Some(Perms(list))
        }
    }

    /// Owned by `domid`, with `access` for everyone else.
    pub fn owner(domid: u32, access: Access) -> Perms {
        Perms(vec![Perm::new(domid, access)])
    }

    pub fn as_slice(&self) -> &[Perm] {
        &self.0
    }

    pub(crate) fn as_mut_vec(&mut self) -> &mut Vec<Perm> {
        &mut self.0
    }

    pub fn owner_id(&self) -> u32 {
        self.0[0].domid
    }

    pub(crate) fn set_owner(&mut self, domid: u32) {
        self.0[0].domid = domid;
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// The wire form: each entry NUL-terminated.
    pub fn to_wire(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.0.len() * 4);
        for p in &self.0 {
            out.extend_from_slice(p.to_string().as_bytes());
            out.push(0);
        }
        out
    }

    /// Parse NUL-separated entries (each NUL-terminated).
    pub fn from_wire(strings: &[u8]) -> Result<Perms, XsError> {
        let mut list = Vec::new();
        let mut rest = strings;
        while let Some(nul) = rest.iter().position(|&c| c == 0) {
            list.push(Perm::parse(&rest[..nul])?);
            rest = &rest[nul + 1..];
        }
        Perms::new(list).ok_or(XsError::Inval)
    }
}

impl std::str::FromStr for Perms {
    type Err = XsError;

    /// Entries separated by spaces or commas: `"n0 r5"`, `"n0,r5"`.
    fn from_str(s: &str) -> Result<Perms, XsError> {
        let list = s
            .split([' ', ','])
            .filter(|e| !e.is_empty())
            .map(str::parse)
            .collect::<Result<Vec<Perm>, XsError>>()?;
        Perms::new(list).ok_or(XsError::Inval)
    }
}

impl fmt::Display for Perms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// Who is asking: the connection's domain and whether it bypasses checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub domid: u32,
    /// Dom0 (and Unix-socket clients): no permission checks, no quotas.
    pub privileged: bool,
    /// Set by `XS_SET_TARGET`: acts for this domain too.
    pub target: Option<u32>,
}

impl Caller {
    /// Dom0 / a Unix-socket tool.
    pub const DOM0: Caller = Caller {
        domid: 0,
        privileged: true,
        target: None,
    };

    /// An ordinary guest.
    pub fn domain(domid: u32) -> Caller {
        Caller {
            domid,
            privileged: domid == 0,
            target: None,
        }
    }

    fn is(&self, domid: u32) -> bool {
        self.domid == domid || self.target == Some(domid)
    }

    /// The access bits (`PERM_*`) this caller has on a node (`perm_for_conn`).
    pub fn access(&self, perms: &Perms) -> u8 {
        let all = PERM_READ | PERM_WRITE | PERM_OWNER;
        if self.privileged || self.is(perms.owner_id()) {
            return all;
        }
        for p in &perms.as_slice()[1..] {
            if self.is(p.domid) {
                return p.access.bits();
            }
        }
        perms.as_slice()[0].access.bits()
    }

    pub fn can_read(&self, perms: &Perms) -> bool {
        self.access(perms) & PERM_READ != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Perms {
        let mut w = Vec::new();
        for part in s.split(' ') {
            w.extend_from_slice(part.as_bytes());
            w.push(0);
        }
        Perms::from_wire(&w).unwrap()
    }

    #[test]
    fn parse_and_print() {
        assert_eq!(p("n0 r5 b0x10").to_string(), "n0 r5 b16");
        assert_eq!(p("w010").to_string(), "w8");
        assert_eq!(p("r-1").to_string(), "r-1");
        assert!(Perm::parse(b"r").is_err());
        assert!(Perm::parse(b"x1").is_err());
        assert!(Perm::parse(b"r1a").is_err());
        assert!(Perm::parse(b"").is_err());
        assert!(Perms::from_wire(b"").is_err());
        assert_eq!(p("b3").to_wire(), b"b3\0");
        assert_eq!("n0 r5,b6".parse::<Perms>().unwrap().to_string(), "n0 r5 b6");
        assert!("".parse::<Perms>().is_err());
        assert!("n0 q1".parse::<Perms>().is_err());
    }

    #[test]
    fn access_rules() {
        let perms = p("n5 r6 w7 b8");
        // Owner: everything, whatever its own letter says.
        assert_eq!(
            Caller::domain(5).access(&perms),
            PERM_READ | PERM_WRITE | PERM_OWNER
        );
        assert_eq!(Caller::domain(6).access(&perms), PERM_READ);
        assert_eq!(Caller::domain(7).access(&perms), PERM_WRITE);
        assert_eq!(Caller::domain(8).access(&perms), PERM_READ | PERM_WRITE);
        // Everyone else gets the owner entry's letter.
        assert_eq!(Caller::domain(9).access(&perms), 0);
        assert_eq!(Caller::domain(9).access(&p("r5")), PERM_READ);
        // Dom0 bypasses.
        assert_eq!(
            Caller::DOM0.access(&perms),
            PERM_READ | PERM_WRITE | PERM_OWNER
        );
        // A target acts as its target.
        let c = Caller {
            domid: 9,
            privileged: false,
            target: Some(6),
        };
        assert_eq!(c.access(&perms), PERM_READ);
        let c = Caller {
            domid: 9,
            privileged: false,
            target: Some(5),
        };
        assert_eq!(c.access(&perms), PERM_READ | PERM_WRITE | PERM_OWNER);
        // First matching entry wins.
        assert_eq!(Caller::domain(6).access(&p("n0 r6 w6")), PERM_READ);
    }
}

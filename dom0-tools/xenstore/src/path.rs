//! Path rules, as Xen's xenstored applies them: canonical paths start with
//! `/`, use only `[A-Za-z0-9-/_@]`, have no `//` and no trailing `/` (except
//! the root), and are at most `path_max` bytes past a domain's home
//! `/local/domain/<id>/`. Paths not starting with `/` or `@` are relative to
//! the caller's home.

use std::borrow::Cow;

/// The home of a domain, where its relative paths resolve.
pub fn domain_path(domid: u32) -> String {
    format!("/local/domain/{domid}")
}

/// Resolve `name` against `home` unless it is absolute or special (`@...`).
pub fn canonicalize<'a>(home: &str, name: &'a [u8]) -> Cow<'a, [u8]> {
    match name.first() {
        Some(b'/') | Some(b'@') => Cow::Borrowed(name),
        _ => {
            let mut v = Vec::with_capacity(home.len() + 1 + name.len());
            v.extend_from_slice(home.as_bytes());
            v.push(b'/');
            v.extend_from_slice(name);
            Cow::Owned(v)
        }
    }
}

fn valid_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'/' | b'_' | b'@')
}

/// Length of a `/local/domain/<id>/` prefix (as `sscanf("%5u/%n")` finds
/// it), or 0.
fn local_prefix_len(node: &[u8]) -> usize {
    const P: &[u8] = b"/local/domain/";
    let Some(rest) = node.strip_prefix(P) else {
        return 0;
    };
    let mut i = 0;
    if matches!(rest.first(), Some(b'+') | Some(b'-')) {
        i = 1;
    }
    let digits_start = i;
    while i < rest.len() && i < 5 && rest[i].is_ascii_digit() {
        i += 1;
    }
    if i == digits_start || rest.get(i) != Some(&b'/') {
        return 0;
    }
    P.len() + i + 1
}

/// Whether `node` is a valid canonical node name; on success it is ASCII.
pub fn is_valid_nodename(node: &[u8], path_max: usize) -> bool {
    if node.first() != Some(&b'/') {
        return false;
    }
    if node.len() > 1 && node.last() == Some(&b'/') {
        return false;
    }
    if node.windows(2).any(|w| w == b"//") {
        return false;
    }
    if node.len() > local_prefix_len(node) + path_max {
        return false;
    }
    node.iter().all(|&c| valid_char(c))
}

/// Validate a canonical name and return it as `&str`.
pub fn valid_node(node: &[u8], path_max: usize) -> Option<&str> {
    if is_valid_nodename(node, path_max) {
        std::str::from_utf8(node).ok()
    } else {
        None
    }
}

/// The parent of a node (`/` for top-level nodes and for `/` itself).
pub fn parent(node: &str) -> &str {
    match node[1.min(node.len())..].rfind('/') {
        Some(i) => &node[..i + 1],
        None => "/",
    }
}

/// The last component of a node name (empty for `/`).
pub fn basename(node: &str) -> &str {
    match node.rfind('/') {
        Some(i) => &node[i + 1..],
        None => node,
    }
}

/// The full name of `child` under `parent`.
pub fn join(parent: &str, child: &str) -> String {
    if parent == "/" {
        format!("/{child}")
    } else {
        format!("{parent}/{child}")
    }
}

/// Whether `child` is `parent` or below it (everything is below `/`).
pub fn is_child(child: &[u8], parent: &[u8]) -> bool {
    if parent == b"/" {
        return true;
    }
    child.starts_with(parent) && matches!(child.get(parent.len()), None | Some(b'/'))
}

/// `parent` followed by each ancestor of a canonical node, ending at `/`:
/// the watch paths whose watches see a change of `node`.
pub fn self_and_ancestors(node: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut next = Some(node);
    std::iter::from_fn(move || {
        let cur = next?;
        next = if cur == b"/" || cur.is_empty() {
            None
        } else {
            match cur[1..].iter().rposition(|&c| c == b'/') {
                Some(i) => Some(&cur[..i + 1]),
                None => Some(&b"/"[..]),
            }
        };
        Some(cur)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validity() {
        let max = 2048;
        assert!(is_valid_nodename(b"/", max));
        assert!(is_valid_nodename(b"/a/b-c_d@e/0", max));
        assert!(!is_valid_nodename(b"", max));
        assert!(!is_valid_nodename(b"a", max));
        assert!(!is_valid_nodename(b"/a/", max));
        assert!(!is_valid_nodename(b"/a//b", max));
        assert!(!is_valid_nodename(b"/a b", max));
        assert!(!is_valid_nodename(b"/a.b", max));
        assert!(!is_valid_nodename(b"/a\xffb", max));
        let long = format!("/{}", "x".repeat(2047));
        assert!(is_valid_nodename(long.as_bytes(), max));
        let long = format!("/{}", "x".repeat(2048));
        assert!(!is_valid_nodename(long.as_bytes(), max));
        // Below a domain's home the limit counts from the home.
        let long = format!("/local/domain/12345/{}", "x".repeat(2048));
        assert!(is_valid_nodename(long.as_bytes(), max));
        let long = format!("/local/domain/12345/{}", "x".repeat(2049));
        assert!(!is_valid_nodename(long.as_bytes(), max));
    }

    #[test]
    fn relations() {
        assert_eq!(parent("/a/b"), "/a");
        assert_eq!(parent("/a"), "/");
        assert_eq!(parent("/"), "/");
        assert_eq!(basename("/a/b"), "b");
        assert_eq!(join("/", "a"), "/a");
        assert_eq!(join("/a", "b"), "/a/b");
        assert!(is_child(b"/a/b", b"/a"));
        assert!(is_child(b"/a", b"/a"));
        assert!(!is_child(b"/ab", b"/a"));
        assert!(is_child(b"/ab", b"/"));
        let v: Vec<&[u8]> = self_and_ancestors(b"/a/b/c").collect();
        assert_eq!(v, vec![&b"/a/b/c"[..], b"/a/b", b"/a", b"/"]);
        assert_eq!(
            canonicalize("/local/domain/3", b"x/y").as_ref(),
            b"/local/domain/3/x/y"
        );
        assert_eq!(canonicalize("/local/domain/3", b"@x").as_ref(), b"@x");
    }
}

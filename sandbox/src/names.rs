//! Container ids and bundle directory names: `strata-<owner tag>-<n>`.
//!
//! The owner tag is the store's per-process tag, so a later strata can tell a crashed
//! process's containers (owner dead) from a live one's and remove exactly those. The same name
//! is used for the container id and its bundle directory.

use std::sync::atomic::{AtomicU64, Ordering};

pub const PREFIX: &str = "strata-";

/// One counter for the whole process: two sandboxes sharing an owner tag never hand out the
/// same id.
static NEXT: AtomicU64 = AtomicU64::new(0);

/// Keeps only what runc accepts in an id (`[A-Za-z0-9_.+-]`); anything else becomes `_`.
pub fn sanitise_tag(tag: &str) -> String {
    let clean: String = tag
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '+' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean.is_empty() {
        "_".to_owned()
    } else {
        clean
    }
}

/// A fresh name for a container owned by `tag` (already sanitised).
pub fn fresh(tag: &str) -> String {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{PREFIX}{tag}-{n}")
}

/// The owner tag in a name made by [`fresh`], or `None` for names strata did not make.
pub fn owner_of(name: &str) -> Option<&str> {
    let rest = name.strip_prefix(PREFIX)?;
    // The counter is last and all digits; the tag may itself contain '-'.
    let (tag, n) = rest.rsplit_once('-')?;
    if tag.is_empty() || n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let a = fresh("123.0abc");
        let b = fresh("123.0abc");
        assert_ne!(a, b);
        assert!(a.starts_with("strata-123.0abc-"));
        assert_eq!(owner_of(&a), Some("123.0abc"));
        assert_eq!(owner_of("strata-a-b-7"), Some("a-b"));
        assert_eq!(owner_of("strata--7"), None);
        assert_eq!(owner_of("strata-x-"), None);
        assert_eq!(owner_of("strata-x-1a"), None);
        assert_eq!(owner_of("other-x-1"), None);
    }

    #[test]
    fn sanitises() {
        assert_eq!(sanitise_tag("12.ab"), "12.ab");
        assert_eq!(sanitise_tag("a/b c:d"), "a_b_c_d");
        assert_eq!(sanitise_tag(""), "_");
    }
}

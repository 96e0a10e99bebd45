//! Cache names as path components, escaped injectively.
//!
//! `c-` followed by the name, where `[A-Za-z0-9._-]` is kept and every other byte becomes
//! `%` plus two lowercase hex digits. Unlike OBuilder's escaping (unpadded hex), two
//! different names never map to the same component, and no name (`..`, `a/b`) can leave
//! the cache folder.

use crate::StoreError;

/// Longest escaped component we produce; keeps room under NAME_MAX (255) for prefixes
/// such as a temporary copy's owner tag.
pub const MAX_ESCAPED_LEN: usize = 200;

pub fn escape(name: &str) -> Result<String, StoreError> {
    let mut out = String::with_capacity(name.len() + 2);
    out.push_str("c-");
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02x}"));
        }
    }
    if out.len() > MAX_ESCAPED_LEN {
        return Err(StoreError::InvalidCacheName {
            name: name.to_owned(),
            reason: format!(
                "cache name too long (escaped to {} bytes, at most {MAX_ESCAPED_LEN})",
                out.len()
            ),
        });
    }
    Ok(out)
}

/// The inverse of [`escape`], for listing caches. `None` for a component we did not make.
pub fn unescape(component: &str) -> Option<String> {
    let rest = component.strip_prefix("c-")?;
    let mut bytes = Vec::with_capacity(rest.len());
    let raw = rest.as_bytes();
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' {
            let hex = rest.get(i + 1..i + 3)?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            bytes.push(raw[i]);
            i += 1;
        }
    }
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors() {
        assert_eq!(escape("ok").unwrap(), "c-ok");
        assert_eq!(escape("").unwrap(), "c-");
        assert_eq!(escape("a/1").unwrap(), "c-a%2f1");
        assert_eq!(escape("..").unwrap(), "c-..");
        assert_eq!(escape("%20").unwrap(), "c-%2520");
        assert_eq!(escape("foo:bar").unwrap(), "c-foo%3abar");
        assert_eq!(escape("../x").unwrap(), "c-..%2fx");
    }

    #[test]
    fn injective_where_obuilder_is_not() {
        assert_ne!(escape("\t0").unwrap(), escape("\u{90}").unwrap());
    }

    #[test]
    fn round_trips() {
        for name in ["", "ok", "a/b", "../x", "é", "%", "c-x", "\t0"] {
            assert_eq!(unescape(&escape(name).unwrap()).as_deref(), Some(name));
        }
    }

    #[test]
    fn rejects_overlong_names() {
        assert!(escape(&"/".repeat(100)).is_err());
    }
}

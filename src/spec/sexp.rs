//! S-expressions as sexplib reads and prints them.
//!
//! [`Sexp`] is the plain value (what ids are computed from); the reader (`reader.rs`) adds a
//! [`Span`] to every node. [`Sexp::to_machine`] is byte-identical to sexplib's
//! `to_string_mach`, which OBuilder hashes for its step ids.

use std::fmt;

/// A position in a source file: byte offsets plus the 1-based line and column of `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Span {
    pub start: usize,
    pub end: usize,
    pub line: u32,
    pub col: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Sexp {
    Atom(String),
    List(Vec<Sexp>),
}

impl Sexp {
    pub fn atom(s: impl Into<String>) -> Sexp {
        Sexp::Atom(s.into())
    }

    pub fn list(items: impl IntoIterator<Item = Sexp>) -> Sexp {
        Sexp::List(items.into_iter().collect())
    }

    /// sexplib's machine format: no spaces after `(` or before `)`, one space only between
    /// two consecutive unquoted atoms.
    pub fn to_machine(&self) -> String {
        let mut out = String::new();
        self.write_machine(&mut out);
        out
    }

    fn write_machine(&self, out: &mut String) {
        match self {
            Sexp::Atom(a) => write_atom(a, out),
            Sexp::List(items) => {
                out.push('(');
                let mut previous_bare_atom = false;
                for item in items {
                    match item {
                        Sexp::Atom(a) => {
                            let quoted = must_quote(a);
                            if previous_bare_atom && !quoted {
                                out.push(' ');
                            }
                            write_atom(a, out);
                            previous_bare_atom = !quoted;
                        }
                        Sexp::List(_) => {
                            item.write_machine(out);
                            previous_bare_atom = false;
                        }
                    }
                }
                out.push(')');
            }
        }
    }
}

impl fmt::Display for Sexp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_machine())
    }
}

/// Whether sexplib quotes this atom when printing.
pub fn must_quote(atom: &str) -> bool {
    atom.is_empty()
        || atom.contains("#|")
        || atom.contains("|#")
        || atom
            .bytes()
            .any(|b| b <= 0x20 || b >= 0x7f || matches!(b, b'"' | b'(' | b')' | b';' | b'\\'))
}

/// Writes an atom bare, or quoted with OCaml's `String.escaped` rules.
pub fn write_atom(atom: &str, out: &mut String) {
    if !must_quote(atom) {
        out.push_str(atom);
        return;
    }
    out.push('"');
    for b in atom.bytes() {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\t' => out.push_str("\\t"),
            b'\r' => out.push_str("\\r"),
            0x08 => out.push_str("\\b"),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\{b:03}")),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Sexp {
        Sexp::atom(s)
    }

    #[test]
    fn machine_spacing() {
        let s = Sexp::list([a("cmd"), a("echo hi")]);
        assert_eq!(s.to_machine(), "(cmd\"echo hi\")");
        let s = Sexp::list([a("shell"), Sexp::list([a("/bin/sh"), a("-c")])]);
        assert_eq!(s.to_machine(), "(shell(/bin/sh -c))");
        assert_eq!(Sexp::list([a("network"), Sexp::list([])]).to_machine(), "(network())");
        assert_eq!(Sexp::list([a("\"x"), a("y")]).to_machine(), "(\"\\\"x\"y)");
    }

    #[test]
    fn quoting_rules() {
        for bare in ["#a", "a#", "|a", "a'b", "a,b", "/usr/bin"] {
            assert!(!must_quote(bare), "{bare}");
        }
        for quoted in ["", "a b", "a\"", "(", ")", ";", "\\", "#|", "|#", "é", "\x7f"] {
            assert!(must_quote(quoted), "{quoted:?}");
        }
        let mut out = String::new();
        write_atom("é\n\x01", &mut out);
        assert_eq!(out, "\"\\195\\169\\n\\001\"");
    }
}

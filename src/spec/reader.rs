//! A sexplib-compatible S-expression reader that keeps positions and comments.
//!
//! Lexical rules follow sexplib's lexer: blanks are space, tab, form feed, CR and LF; a bare
//! atom is a run of anything but blanks, `(`, `)`, `"` and `;`, and may not contain `#|` or
//! `|#`; quoted atoms decode `\n \t \b \r \\ \" \' \  \DDD \xHH` and backslash-newline (the
//! newline and the spaces and tabs after it are dropped); any other backslash is kept as
//! written, as sexplib does. Comments: `;` to the end of the line, nested `#| |#` blocks (a
//! quoted string inside one is skipped as a string), and `#;` before a datum.
//!
//! Comments are kept for `strata fmt`: each one is attached to a node, as *leading* (before it,
//! in the same list), *trailing* (starting on the line where the node ends) or *closing*
//! (after the last element of a list, before its `)`).
//!
//! Invariant: no input makes the reader panic or recurse without bound; lists and `#;` chains
//! nest at most [`MAX_DEPTH`] deep.

use std::path::Path;

use super::error::SpecError;
use super::sexp::{Sexp, Span};

/// How deep lists (and chains of `#;`) may nest. Real specs nest a handful of levels; the
/// limit keeps recursion (reading, parsing, dropping) far from the stack's end.
pub const MAX_DEPTH: usize = 200;

/// A comment as written in the source, with where it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comment {
    /// The exact source text: `; ...` (without the newline), `#| ... |#` or `#; DATUM`.
    pub text: String,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    Atom { value: String, quoted: bool },
    List(Vec<Node>),
}

/// An S-expression with its position and the comments around it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: NodeKind,
    pub span: Span,
    /// The line of the node's last character (1-based).
    pub end_line: u32,
    pub leading: Vec<Comment>,
    pub trailing: Vec<Comment>,
    /// Lists only: comments after the last element, before the `)`.
    pub closing: Vec<Comment>,
}

impl Node {
    pub fn atom(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Atom { value, .. } => Some(value),
            NodeKind::List(_) => None,
        }
    }

    pub fn list(&self) -> Option<&[Node]> {
        match &self.kind {
            NodeKind::List(items) => Some(items),
            NodeKind::Atom { .. } => None,
        }
    }

    /// The plain value, without positions or comments.
    pub fn to_sexp(&self) -> Sexp {
        match &self.kind {
            NodeKind::Atom { value, .. } => Sexp::Atom(value.clone()),
            NodeKind::List(items) => Sexp::List(items.iter().map(Node::to_sexp).collect()),
        }
    }

    /// Every comment inside this node (not its own leading and trailing ones), in source order.
    pub fn inner_comments(&self, out: &mut Vec<Comment>) {
        if let NodeKind::List(items) = &self.kind {
            for item in items {
                item.all_comments(out);
            }
        }
        out.extend(self.closing.iter().cloned());
    }

    /// Every comment attached to this node or inside it, in source order.
    pub fn all_comments(&self, out: &mut Vec<Comment>) {
        out.extend(self.leading.iter().cloned());
        self.inner_comments(out);
        out.extend(self.trailing.iter().cloned());
    }
}

/// A whole file: one S-expression and the comments before and after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    pub root: Node,
    /// Comments after the root on later lines (those on its last line are `root.trailing`).
    pub after: Vec<Comment>,
}

/// Reads exactly one S-expression from `text` (`file` names it in errors).
pub fn read_document(file: &Path, text: &str) -> Result<Document, SpecError> {
    let mut reader = Reader::new(file, text);
    let leading = reader.skip_trivia(0)?;
    if reader.at_end() {
        return Err(reader.error_at(
            Span {
                start: 0,
                end: 0,
                line: 1,
                col: 1,
            },
            "empty file: expected one S-expression",
        ));
    }
    let mut root = reader.read_datum(0)?;
    root.leading = leading;
    let after = reader.skip_trivia(0)?;
    if !reader.at_end() {
        let span = reader.here();
        return Err(reader.error_at(span, "more than one S-expression in file"));
    }
    let (trailing, after) = split_trailing(after, root.end_line);
    root.trailing = trailing;
    Ok(Document { root, after })
}

/// Reads exactly one S-expression and drops positions and comments.
pub fn read_sexp(file: &Path, text: &str) -> Result<Sexp, SpecError> {
    Ok(read_document(file, text)?.root.to_sexp())
}

/// Splits comments into those starting on `line` (a contiguous prefix) and the rest.
fn split_trailing(mut comments: Vec<Comment>, line: u32) -> (Vec<Comment>, Vec<Comment>) {
    let n = comments.iter().take_while(|c| c.span.line == line).count();
    let rest = comments.split_off(n);
    (comments, rest)
}

fn is_blank(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | 0x0c | b'\n' | b'\r')
}

/// Bytes that end a bare atom.
fn ends_bare_atom(b: u8) -> bool {
    is_blank(b) || matches!(b, b'(' | b')' | b'"' | b';')
}

struct Reader<'a> {
    file: &'a Path,
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
    line: u32,
    col: u32,
}

impl<'a> Reader<'a> {
    fn new(file: &'a Path, text: &'a str) -> Reader<'a> {
        Reader {
            file,
            text,
            bytes: text.as_bytes(),
            pos: 0,
            line: 1,
            col: 1,
        }
    }

    fn at_end(&self) -> bool {
        self.pos >= self.bytes.len()
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn peek_at(&self, offset: usize) -> Option<u8> {
        self.bytes.get(self.pos + offset).copied()
    }

    /// A zero-width span at the current position.
    fn here(&self) -> Span {
        Span {
            start: self.pos,
            end: self.pos,
            line: self.line,
            col: self.col,
        }
    }

    /// Advances one byte, keeping line and column (columns count characters, not bytes).
    fn bump(&mut self) {
        if let Some(b) = self.peek() {
            self.pos += 1;
            if b == b'\n' {
                self.line += 1;
                self.col = 1;
            } else if b & 0xc0 != 0x80 {
                self.col += 1;
            }
        }
    }

    fn error_at(&self, span: Span, message: impl Into<String>) -> SpecError {
        SpecError {
            file: self.file.to_path_buf(),
            span,
            message: message.into(),
        }
    }

    fn finish(&self, mut span: Span) -> Span {
        span.end = self.pos;
        span
    }

    /// The line of the last byte consumed.
    fn last_line(&self) -> u32 {
        if self.pos > 0 && self.bytes[self.pos - 1] == b'\n' {
            self.line - 1
        } else {
            self.line
        }
    }

    /// Skips blanks and collects comments up to the next datum, `)` or the end.
    fn skip_trivia(&mut self, depth: usize) -> Result<Vec<Comment>, SpecError> {
        let mut comments = Vec::new();
        loop {
            match self.peek() {
                Some(b) if is_blank(b) => self.bump(),
                Some(b';') => {
                    let start = self.here();
                    while let Some(b) = self.peek() {
                        if b == b'\n' || b == b'\r' {
                            break;
                        }
                        self.bump();
                    }
                    comments.push(self.comment(start));
                }
                Some(b'#') if self.peek_at(1) == Some(b'|') => {
                    let start = self.here();
                    self.block_comment()?;
                    comments.push(self.comment(start));
                }
                Some(b'#') if self.peek_at(1) == Some(b';') => {
                    let start = self.here();
                    if depth >= MAX_DEPTH {
                        return Err(self.error_at(start, format!("S-expression nested more than {MAX_DEPTH} deep")));
                    }
                    self.bump();
                    self.bump();
                    self.skip_trivia(depth + 1)?;
                    match self.peek() {
                        None | Some(b')') => {
                            return Err(self.error_at(start, "datum comment `#;` is not followed by an S-expression"))
                        }
                        _ => {
                            self.read_datum(depth + 1)?;
                        }
                    }
                    comments.push(self.comment(start));
                }
                Some(b'|') if self.peek_at(1) == Some(b'#') => {
                    return Err(self.error_at(self.here(), "illegal end of comment `|#` outside a block comment"));
                }
                _ => return Ok(comments),
            }
        }
    }

    fn comment(&self, start: Span) -> Comment {
        let span = self.finish(start);
        Comment {
            text: self.text[span.start..span.end].to_string(),
            span,
        }
    }

    /// Skips a `#| ... |#` block comment (nested ones and quoted strings inside included).
    fn block_comment(&mut self) -> Result<(), SpecError> {
        let mut open = vec![self.here()];
        self.bump();
        self.bump();
        while let Some(&start) = open.last() {
            match self.peek() {
                None => return Err(self.error_at(start, "unterminated block comment `#|`")),
                Some(b'#') if self.peek_at(1) == Some(b'|') => {
                    open.push(self.here());
                    self.bump();
                    self.bump();
                }
                Some(b'|') if self.peek_at(1) == Some(b'#') => {
                    open.pop();
                    self.bump();
                    self.bump();
                }
                Some(b'"') => {
                    self.quoted_string()?;
                }
                Some(_) => self.bump(),
            }
        }
        Ok(())
    }

    /// Reads one datum; the caller has skipped trivia and checked that one starts here.
    fn read_datum(&mut self, depth: usize) -> Result<Node, SpecError> {
        let start = self.here();
        match self.peek() {
            Some(b'(') => self.read_list(depth),
            Some(b')') => Err(self.error_at(start, "unbalanced parentheses: unexpected `)`")),
            Some(b'"') => {
                let value = self.quoted_string()?;
                Ok(self.leaf(start, NodeKind::Atom { value, quoted: true }))
            }
            Some(_) => {
                // A bare atom never contains a newline, so only the column moves.
                let rest = &self.bytes[self.pos..];
                let len = rest.iter().position(|&b| ends_bare_atom(b)).unwrap_or(rest.len());
                let chars = rest[..len].iter().filter(|&&b| b & 0xc0 != 0x80).count();
                self.pos += len;
                self.col = self.col.saturating_add(u32::try_from(chars).unwrap_or(u32::MAX));
                let value = &self.text[start.start..self.pos];
                if value.contains("#|") || value.contains("|#") {
                    return Err(self.error_at(self.finish(start), "comment tokens `#|` or `|#` in unquoted atom"));
                }
                Ok(self.leaf(
                    start,
                    NodeKind::Atom {
                        value: value.to_string(),
                        quoted: false,
                    },
                ))
            }
            None => Err(self.error_at(start, "unexpected end of file")),
        }
    }

    fn leaf(&self, start: Span, kind: NodeKind) -> Node {
        Node {
            kind,
            span: self.finish(start),
            end_line: self.last_line(),
            leading: Vec::new(),
            trailing: Vec::new(),
            closing: Vec::new(),
        }
    }

    fn read_list(&mut self, depth: usize) -> Result<Node, SpecError> {
        let open = self.here();
        if depth >= MAX_DEPTH {
            return Err(self.error_at(open, format!("S-expression nested more than {MAX_DEPTH} deep")));
        }
        self.bump();
        let mut items: Vec<Node> = Vec::new();
        loop {
            let mut comments = self.skip_trivia(depth + 1)?;
            if let Some(last) = items.last_mut() {
                let (trailing, rest) = split_trailing(comments, last.end_line);
                last.trailing = trailing;
                comments = rest;
            }
            match self.peek() {
                None => {
                    return Err(self.error_at(open, "unbalanced parentheses: this `(` is never closed"));
                }
                Some(b')') => {
                    self.bump();
                    let mut node = self.leaf(open, NodeKind::List(items));
                    node.closing = comments;
                    return Ok(node);
                }
                Some(_) => {
                    let mut item = self.read_datum(depth + 1)?;
                    item.leading = comments;
                    items.push(item);
                }
            }
        }
    }

    /// Reads a quoted atom starting at `"` and decodes its escapes.
    fn quoted_string(&mut self) -> Result<String, SpecError> {
        let start = self.here();
        self.bump();
        let mut out: Vec<u8> = Vec::new();
        loop {
            let Some(b) = self.peek() else {
                return Err(self.error_at(start, "unterminated string"));
            };
            match b {
                b'"' => {
                    self.bump();
                    break;
                }
                b'\\' => {
                    let escape = self.here();
                    self.bump();
                    self.escape(escape, &mut out)?;
                }
                b'\n' => {
                    out.push(b);
                    self.bump();
                }
                _ => {
                    // A run of plain bytes on one line: copy it at once.
                    let rest = &self.bytes[self.pos..];
                    let len = rest
                        .iter()
                        .position(|&b| matches!(b, b'"' | b'\\' | b'\n'))
                        .unwrap_or(rest.len());
                    let run = &rest[..len];
                    out.extend_from_slice(run);
                    let chars = run.iter().filter(|&&b| b & 0xc0 != 0x80).count();
                    self.pos += len;
                    self.col = self.col.saturating_add(u32::try_from(chars).unwrap_or(u32::MAX));
                }
            }
        }
        String::from_utf8(out)
            .map_err(|_| self.error_at(self.finish(start), "bad escape: the decoded string is not valid UTF-8"))
    }

    /// Decodes the escape after a backslash (already consumed; `escape` is its position).
    fn escape(&mut self, escape: Span, out: &mut Vec<u8>) -> Result<(), SpecError> {
        let Some(b) = self.peek() else {
            return Err(self.error_at(escape, "unterminated string"));
        };
        let simple = match b {
            b'n' => Some(b'\n'),
            b't' => Some(b'\t'),
            b'b' => Some(0x08),
            b'r' => Some(b'\r'),
            b'\\' | b'"' | b'\'' | b' ' => Some(b),
            _ => None,
        };
        if let Some(decoded) = simple {
            out.push(decoded);
            self.bump();
            return Ok(());
        }
        if b == b'\n' || (b == b'\r' && self.peek_at(1) == Some(b'\n')) {
            // Backslash-newline: the newline and the indentation after it are dropped.
            if b == b'\r' {
                self.bump();
            }
            self.bump();
            while matches!(self.peek(), Some(b' ' | b'\t')) {
                self.bump();
            }
            return Ok(());
        }
        let digits = |i: usize| self.peek_at(i).filter(u8::is_ascii_digit);
        if let (Some(d1), Some(d2), Some(d3)) = (digits(0), digits(1), digits(2)) {
            let value = u32::from(d1 - b'0') * 100 + u32::from(d2 - b'0') * 10 + u32::from(d3 - b'0');
            let Ok(byte) = u8::try_from(value) else {
                let mut span = escape;
                span.end = self.pos + 3;
                return Err(self.error_at(
                    span,
                    format!("bad escape `\\{value:03}`: decimal escapes go up to \\255"),
                ));
            };
            out.push(byte);
            for _ in 0..3 {
                self.bump();
            }
            return Ok(());
        }
        let hex = |i: usize| self.peek_at(i).filter(u8::is_ascii_hexdigit);
        if b == b'x' {
            if let (Some(h1), Some(h2)) = (hex(1), hex(2)) {
                let value = hex_value(h1) * 16 + hex_value(h2);
                out.push(value);
                for _ in 0..3 {
                    self.bump();
                }
                return Ok(());
            }
        }
        // Not an escape: sexplib keeps the backslash and reads on.
        out.push(b'\\');
        Ok(())
    }
}

fn hex_value(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<Sexp, String> {
        read_sexp(Path::new("t.spec"), text).map_err(|e| e.to_string())
    }

    fn atom(text: &str) -> String {
        match read(text).unwrap() {
            Sexp::Atom(a) => a,
            other => panic!("not an atom: {other:?}"),
        }
    }

    fn err(text: &str) -> String {
        read(text).unwrap_err()
    }

    #[test]
    fn bare_atoms_and_lists() {
        let s = read("(a (b c) () #a a# |a a'b a,b ## #)").unwrap();
        assert_eq!(s.to_machine(), "(a(b c)()#a a# |a a'b a,b ## #)");
        assert_eq!(atom("1.10"), "1.10");
        assert_eq!(atom("é"), "é");
        assert_eq!(atom("a\x0bb"), "a\x0bb");
    }

    #[test]
    fn every_escape() {
        assert_eq!(atom(r#""a\nb""#), "a\nb");
        assert_eq!(atom(r#""\t\b\r""#), "\t\u{8}\r");
        assert_eq!(atom(r#""\\ \" \' \ ""#), "\\ \" '  ");
        assert_eq!(atom(r#""\065\066\067""#), "ABC");
        assert_eq!(atom(r#""\x41\x4a\x6b""#), "AJk");
        assert_eq!(atom(r#""\195\169""#), "é");
        assert_eq!(atom(r#""\xc3\xa9""#), "é");
        assert_eq!(atom("\"a\\\n    \tb\""), "ab");
        assert_eq!(atom("\"a\\\r\n  b\""), "ab");
        assert_eq!(atom("\"a\nb\""), "a\nb");
        // Not escapes: kept as written, like sexplib.
        assert_eq!(atom(r#""\q \12x \xZZ""#), "\\q \\12x \\xZZ");
        assert_eq!(atom(r#""""#), "");
    }

    #[test]
    fn comments() {
        assert_eq!(read("; lead\n(a ; x\n b) ; after\n").unwrap().to_machine(), "(a b)");
        assert_eq!(
            read("(a #| block #| nested |# \"|#\" |# b)").unwrap().to_machine(),
            "(a b)"
        );
        assert_eq!(read("(a #; (ignored (x)) b #;c)").unwrap().to_machine(), "(a b)");
        assert_eq!(read("(a #; #; x y b)").unwrap().to_machine(), "(a b)");
        assert_eq!(read("(a;x\nb)").unwrap().to_machine(), "(a b)");
        assert_eq!(read("(a#;x b)\n c)").unwrap().to_machine(), "(a# c)");
    }

    #[test]
    fn comments_are_attached() {
        let doc = read_document(
            Path::new("t"),
            "; top\n(a ; after a\n ; before b\n b #| x |#\n ; closing\n) ; end\n; later\n",
        )
        .unwrap();
        assert_eq!(doc.root.leading[0].text, "; top");
        let items = doc.root.list().unwrap();
        assert_eq!(items[0].trailing[0].text, "; after a");
        assert_eq!(items[1].leading[0].text, "; before b");
        assert_eq!(items[1].trailing[0].text, "#| x |#");
        assert_eq!(doc.root.closing[0].text, "; closing");
        assert_eq!(doc.root.trailing[0].text, "; end");
        assert_eq!(doc.after[0].text, "; later");
    }

    #[test]
    fn spans() {
        let doc = read_document(Path::new("t"), "(a\n  (bé c) \"d\")").unwrap();
        let items = doc.root.list().unwrap();
        assert_eq!((items[1].span.line, items[1].span.col), (2, 3));
        let inner = items[1].list().unwrap();
        assert_eq!((inner[1].span.line, inner[1].span.col), (2, 7));
        assert_eq!(&"(a\n  (bé c) \"d\")"[items[2].span.start..items[2].span.end], "\"d\"");
        assert_eq!(items[2].span.col, 10);
    }

    #[test]
    fn errors_with_positions() {
        assert_eq!(
            err("(a\n (b)"),
            "t.spec:1:1: error: unbalanced parentheses: this `(` is never closed"
        );
        assert_eq!(err("(a))"), "t.spec:1:4: error: more than one S-expression in file");
        assert_eq!(err(")"), "t.spec:1:1: error: unbalanced parentheses: unexpected `)`");
        assert_eq!(err("(a)\n(b)"), "t.spec:2:1: error: more than one S-expression in file");
        assert_eq!(err(""), "t.spec:1:1: error: empty file: expected one S-expression");
        assert_eq!(
            err(" ; only a comment\n"),
            "t.spec:1:1: error: empty file: expected one S-expression"
        );
        assert_eq!(err("(a \"bc)"), "t.spec:1:4: error: unterminated string");
        assert_eq!(
            err("(a\n \"\\256\")"),
            "t.spec:2:3: error: bad escape `\\256`: decimal escapes go up to \\255"
        );
        assert_eq!(
            err("\"\\255\""),
            "t.spec:1:1: error: bad escape: the decoded string is not valid UTF-8"
        );
        assert_eq!(err("(a #| x"), "t.spec:1:4: error: unterminated block comment `#|`");
        assert_eq!(
            err("(a |# x)"),
            "t.spec:1:4: error: illegal end of comment `|#` outside a block comment"
        );
        assert_eq!(
            err("(a b#|c)"),
            "t.spec:1:4: error: comment tokens `#|` or `|#` in unquoted atom"
        );
        assert_eq!(
            err("(a #;)"),
            "t.spec:1:4: error: datum comment `#;` is not followed by an S-expression"
        );
        let deep = "(".repeat(10_000);
        assert!(err(&deep).contains("nested more than"));
    }
}

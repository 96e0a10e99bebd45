//! Writing specs back out.
//!
//! [`to_sexp`] is the canonical S-expression (OBuilder's printer: lowercase operations, inline
//! records, defaults omitted, `run` fields in the order cache, network, secrets, shell,
//! `buildkit_options` in OBuilder's doubly-nested form, a secret's target always written);
//! its machine form is what OBuilder-compatible ids hash.
//!
//! [`pretty`] is the readable layout of OBuilder's `Spec.pp`: one top-level item per line, the
//! closing parenthesis of the spec on its own line, `run` fields one per line aligned after
//! `(run `, `copy` fields on one line when they fit in 78 columns (else aligned like `run`),
//! `(build NAME` followed by the nested spec on the next line. Multi-line strings are written
//! with backslash-newline continuations, the way sexplib's human printer does. `strata fmt`
//! uses the same layout with comments ([`super::format`]).

use super::ast::{Copy, CopyFrom, Mount, Op, Run, Spec, User};
use super::sexp::{must_quote, Sexp};

/// Format's default margin, which OBuilder's pretty printer breaks `copy` fields at.
const MARGIN: usize = 78;

fn a(s: &str) -> Sexp {
    Sexp::Atom(s.to_string())
}

fn field(name: &str, values: impl IntoIterator<Item = Sexp>) -> Sexp {
    let mut items = vec![a(name)];
    items.extend(values);
    Sexp::List(items)
}

/// The canonical S-expression of a spec.
pub fn to_sexp(spec: &Spec) -> Sexp {
    Sexp::List(spec_items(spec))
}

/// The items of a spec list: stages, `(from IMAGE)`, operations.
pub fn spec_items(spec: &Spec) -> Vec<Sexp> {
    let mut items: Vec<Sexp> = spec
        .stages
        .iter()
        .map(|stage| Sexp::List(vec![a("build"), a(&stage.name), to_sexp(&stage.spec)]))
        .collect();
    items.push(field("from", [a(&spec.from)]));
    items.extend(spec.ops.iter().map(|item| op_to_sexp(&item.op)));
    items
}

/// The canonical S-expression of one operation.
pub fn op_to_sexp(op: &Op) -> Sexp {
    match op {
        Op::Comment(text) => field("comment", [a(text)]),
        Op::Workdir(path) => field("workdir", [a(path)]),
        Op::Shell(args) => field("shell", args.iter().map(|s| a(s))),
        Op::Run(run) => Sexp::List(std::iter::once(a("run")).chain(run_fields(run)).collect()),
        Op::Copy(copy) => Sexp::List(std::iter::once(a("copy")).chain(copy_fields(copy)).collect()),
        Op::User(User::Unix { uid, gid }) => Sexp::List(vec![
            a("user"),
            field("uid", [a(&uid.to_string())]),
            field("gid", [a(&gid.to_string())]),
        ]),
        Op::User(User::Name(name)) => Sexp::List(vec![a("user"), field("name", [a(name)])]),
        Op::Env(key, value) => field("env", [a(key), a(value)]),
    }
}

/// `run`'s fields in canonical order, empty ones omitted.
pub fn run_fields(run: &Run) -> Vec<Sexp> {
    let mut fields = Vec::new();
    if !run.cache.is_empty() {
        fields.push(field("cache", run.cache.iter().map(mount_to_sexp)));
    }
    if !run.network.is_empty() {
        fields.push(field("network", run.network.iter().map(|n| a(n))));
    }
    if !run.secrets.is_empty() {
        fields.push(field("secrets", run.secrets.iter().map(mount_to_sexp)));
    }
    fields.push(field("shell", [a(&run.shell)]));
    fields
}

fn mount_to_sexp(mount: &Mount) -> Sexp {
    let mut items = vec![a(&mount.id), field("target", [a(&mount.target)])];
    if !mount.buildkit_options.is_empty() {
        let pairs = mount.buildkit_options.iter().map(|(k, v)| Sexp::List(vec![a(k), a(v)]));
        items.push(field("buildkit_options", [Sexp::List(pairs.collect())]));
    }
    Sexp::List(items)
}

/// `copy`'s fields in canonical order, defaults omitted.
pub fn copy_fields(copy: &Copy) -> Vec<Sexp> {
    let mut fields = Vec::new();
    if let CopyFrom::Build(name) = &copy.from {
        fields.push(field("from", [field("build", [a(name)])]));
    }
    fields.push(field("src", copy.src.iter().map(|s| a(s))));
    fields.push(field("dst", [a(&copy.dst)]));
    if !copy.exclude.is_empty() {
        fields.push(field("exclude", copy.exclude.iter().map(|s| a(s))));
    }
    fields
}

/// The readable layout of a spec, ending with a newline.
pub fn pretty(spec: &Spec) -> String {
    let layout = Layout {
        before: Vec::new(),
        items: spec_items(spec).into_iter().map(Item::plain).collect(),
        closing: Vec::new(),
        trailing: None,
        after: Vec::new(),
    };
    layout.render()
}

/// A value on one line with human spacing, e.g. `(copy (src a b) (dst c))` (for messages).
pub fn one_line(sexp: &Sexp) -> String {
    let mut w = Writer::default();
    w.one_line(sexp, false);
    w.out
}

/// A file in the readable layout, with the comments to keep (see `format.rs`).
pub(crate) struct Layout {
    /// Comments before the opening parenthesis.
    pub before: Vec<String>,
    pub items: Vec<Item>,
    /// Comments on their own lines before the final `)`.
    pub closing: Vec<String>,
    /// A comment after the final `)` on its line.
    pub trailing: Option<String>,
    /// Comments on the lines after the spec.
    pub after: Vec<String>,
}

/// An item of a spec list, or a field of `run`/`copy`, with its comments.
pub(crate) struct Item {
    /// Comments on their own lines before the item.
    pub leading: Vec<String>,
    /// One comment after the item on its last line.
    pub trailing: Option<String>,
    pub body: Body,
}

pub(crate) enum Body {
    /// Written on one line (multi-line strings aside).
    Line(Sexp),
    /// `(run FIELD...)` (always one field per line) or `(copy FIELD...)` (one line if it fits).
    Fields {
        op: String,
        fields: Vec<Item>,
        always_vertical: bool,
    },
    /// `(build NAME` then, on the next lines, comments and the nested spec.
    Build {
        name: String,
        spec_leading: Vec<String>,
        items: Vec<Item>,
    },
}

impl Item {
    /// The layout of a canonical item, without comments.
    pub fn plain(sexp: Sexp) -> Item {
        Item {
            leading: Vec::new(),
            trailing: None,
            body: Body::of(sexp),
        }
    }
}

impl Body {
    pub fn of(sexp: Sexp) -> Body {
        if let Sexp::List(items) = &sexp {
            match items.as_slice() {
                [Sexp::Atom(build), Sexp::Atom(name), Sexp::List(nested)] if build == "build" => {
                    return Body::Build {
                        name: name.clone(),
                        spec_leading: Vec::new(),
                        items: nested.iter().cloned().map(Item::plain).collect(),
                    };
                }
                [Sexp::Atom(op), fields @ ..] if op == "run" || op == "copy" => {
                    return Body::Fields {
                        op: op.clone(),
                        fields: fields.iter().cloned().map(Item::plain).collect(),
                        always_vertical: op == "run",
                    };
                }
                _ => {}
            }
        }
        Body::Line(sexp)
    }
}

impl Layout {
    pub fn render(&self) -> String {
        let mut w = Writer::default();
        for comment in &self.before {
            w.text(comment);
            w.newline(0);
        }
        w.text("(");
        w.items(&self.items, 1);
        for comment in &self.closing {
            w.newline(1);
            w.text(comment);
        }
        w.newline(0);
        w.text(")");
        if let Some(comment) = &self.trailing {
            w.text(" ");
            w.text(comment);
        }
        for comment in &self.after {
            w.newline(0);
            w.text(comment);
        }
        w.text("\n");
        w.out
    }
}

/// Text with the current column tracked (in characters).
#[derive(Default)]
struct Writer {
    out: String,
    col: usize,
}

impl Writer {
    fn text(&mut self, s: &str) {
        self.out.push_str(s);
        match s.rfind('\n') {
            Some(i) => self.col = s[i + 1..].chars().count(),
            None => self.col += s.chars().count(),
        }
    }

    fn newline(&mut self, indent: usize) {
        self.out.push('\n');
        self.out.extend(std::iter::repeat_n(' ', indent));
        self.col = indent;
    }

    /// Items of a spec list, the first at the current position, the others at `indent`.
    /// The first item's leading comments must have been moved out by the caller.
    fn items(&mut self, items: &[Item], indent: usize) {
        for (index, item) in items.iter().enumerate() {
            if index > 0 {
                self.newline(indent);
                for comment in &item.leading {
                    self.text(comment);
                    self.newline(indent);
                }
            }
            self.item(item);
        }
    }

    fn trailing(&mut self, item: &Item) {
        if let Some(comment) = &item.trailing {
            self.text(" ");
            self.text(comment);
        }
    }

    fn item(&mut self, item: &Item) {
        match &item.body {
            Body::Line(sexp) => self.one_line(sexp, true),
            Body::Fields {
                op,
                fields,
                always_vertical,
            } => {
                self.text("(");
                self.text(op);
                self.text(" ");
                let column = self.col;
                let vertical = *always_vertical || !fits_on_line(fields, column);
                for (index, field) in fields.iter().enumerate() {
                    if index > 0 {
                        if vertical {
                            self.newline(column);
                            for comment in &field.leading {
                                self.text(comment);
                                self.newline(column);
                            }
                        } else {
                            self.text(" ");
                        }
                    }
                    // Writes the field's trailing comment too; the last field has none (its
                    // comment was moved after the item, since `)` closes on its line).
                    self.item(field);
                }
                self.text(")");
            }
            Body::Build {
                name,
                spec_leading,
                items,
            } => {
                self.text("(build ");
                let column = self.col;
                self.atom(name, true);
                self.newline(column);
                for comment in spec_leading {
                    self.text(comment);
                    self.newline(column);
                }
                self.text("(");
                self.items(items, column + 1);
                self.text("))");
            }
        }
        self.trailing(item);
    }

    fn one_line(&mut self, sexp: &Sexp, multiline: bool) {
        match sexp {
            Sexp::Atom(atom) => self.atom(atom, multiline),
            Sexp::List(items) => {
                self.text("(");
                for (index, item) in items.iter().enumerate() {
                    if index > 0 {
                        self.text(" ");
                    }
                    self.one_line(item, multiline);
                }
                self.text(")");
            }
        }
    }

    /// An atom, quoted when sexplib would quote it. With `multiline`, a string with inner
    /// newlines is split with backslash-newline continuations, each continuation line
    /// starting with `\n` one column left of the opening quote so that the text lines up.
    fn atom(&mut self, atom: &str, multiline: bool) {
        if !must_quote(atom) {
            self.text(atom);
            return;
        }
        // sexplib's rule: one line unless a newline comes before the last character.
        let inner_newline = atom.find('\n').is_some_and(|i| i + 1 != atom.len());
        let quote_column = self.col;
        let mut out = String::from("\"");
        if multiline && inner_newline {
            let indent = " ".repeat(quote_column.saturating_sub(1));
            for (index, line) in atom.split('\n').enumerate() {
                if index > 0 {
                    out.push_str("\\\n");
                    out.push_str(&indent);
                    out.push_str("\\n");
                }
                escape_into(line, &mut out);
            }
        } else {
            escape_into(atom, &mut out);
        }
        out.push('"');
        self.text(&out);
    }
}

/// Escapes for the readable form: like OCaml's `String.escaped`, but printable non-ASCII
/// characters stay as they are.
fn escape_into(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\u{8}' => out.push_str("\\b"),
            ' '..='~' => out.push(c),
            c if c.is_ascii() || c.is_control() => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("\\{b:03}"));
                }
            }
            c => out.push(c),
        }
    }
}

/// Whether `copy` fields fit on the current line: no comments, no line breaks, and the
/// fields end by the margin.
fn fits_on_line(fields: &[Item], column: usize) -> bool {
    let mut width = column;
    for (index, field) in fields.iter().enumerate() {
        let trailing_inside = index + 1 < fields.len() && field.trailing.is_some();
        if !field.leading.is_empty() || trailing_inside {
            return false;
        }
        let Body::Line(sexp) = &field.body else {
            return false;
        };
        let mut w = Writer::default();
        w.one_line(sexp, true);
        if w.out.contains('\n') {
            return false;
        }
        width += w.col + usize::from(index > 0);
    }
    width <= MARGIN
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::parse::parse_spec;
    use std::path::Path;

    fn parse(text: &str) -> Spec {
        parse_spec(Path::new("t.spec"), text).unwrap()
    }

    #[test]
    fn appendix_a_vector_7() {
        let spec = parse(
            r#"((build dev ((from ocaml/opam:debian) (workdir /src) (run (shell make))))
               (from debian:12)
               (comment "hello world")
               (shell /bin/sh -c)
               (env FOO "a b")
               (user (gid 1000) (uid 1000))
               (run (shell "echo hi")
                    (secrets (tok))
                    (network host)
                    (cache (opam (target /cache)) (other (target /x) (buildkit_options (sharing locked) (mode 0700)))))
               (copy (src /src/a /src/b) (exclude .git) (dst /usr/bin/) (from (build dev)))
               (copy (src x) (dst y) (from context) (exclude)))"#,
        );
        assert_eq!(
            to_sexp(&spec).to_machine(),
            r#"((build dev((from ocaml/opam:debian)(workdir /src)(run(shell make))))(from debian:12)(comment"hello world")(shell /bin/sh -c)(env FOO"a b")(user(uid 1000)(gid 1000))(run(cache(opam(target /cache))(other(target /x)(buildkit_options((sharing locked)(mode 0700)))))(network host)(secrets(tok(target /run/secrets/tok)))(shell"echo hi"))(copy(from(build dev))(src /src/a /src/b)(dst /usr/bin/)(exclude .git))(copy(src x)(dst y)))"#
        );
    }

    /// OBuilder's own pretty-printing test input: printing the parsed spec gives it back.
    #[test]
    fn obuilder_layout() {
        let text = r#"((build tools
        ((from base)
         (run (shell "make tools"))))
 (from base)
 (comment "A test comment")
 (workdir /src)
 (run (shell "a command"))
 (run (cache (a (target /data)) (b (target /srv)))
      (secrets (a (target /run/secrets/a)) (b (target /b)))
      (shell "a very very very very very very very very very very very very very very very long command"))
 (copy (src a b) (dst c/))
 (copy (src a b) (dst c/) (exclude .git _build))
 (copy (from (build tools)) (src binary) (dst /usr/local/bin/))
 (env DEBUG 1)
 (user (uid 1) (gid 2))
)
"#;
        assert_eq!(pretty(&parse(text)), text);
    }

    #[test]
    fn long_copy_breaks_and_multiline_strings() {
        let spec = parse(
            "((from a) (copy (src aaaaaaaaaaaaaaaaaaaaaaaaa bbbbbbbbbbbbbbbbbbbbbbbbbbbbb) (dst /cccccccccccccccccc/) (exclude .git)) (run (shell \"a &&\n  b\")))",
        );
        let text = pretty(&spec);
        assert_eq!(
            text,
            "((from a)\n (copy (src aaaaaaaaaaaaaaaaaaaaaaaaa bbbbbbbbbbbbbbbbbbbbbbbbbbbbb)\n       (dst /cccccccccccccccccc/)\n       (exclude .git))\n (run (shell \"a &&\\\n            \\n  b\"))\n)\n"
        );
        assert_eq!(to_sexp(&parse(&text)), to_sexp(&spec));
    }

    #[test]
    fn one_line_escapes() {
        let s = Sexp::List(vec![a("env"), a("K"), a("a \"b\"\né\u{1}")]);
        assert_eq!(one_line(&s), "(env K \"a \\\"b\\\"\\né\\001\")");
    }
}

//! Spanned S-expression -> typed [`Spec`], with every validation rule of the spec language.
//!
//! Every spec OBuilder accepts parses to the same meaning. On purpose, strata also accepts
//! `uid`/`gid` in either order, `(buildkit_options (K V) ...)` besides OBuilder's
//! `(buildkit_options ((K V) ...))`, a secret without `target` (it defaults to
//! `/run/secrets/ID`) and `(buildkit_options)`. What OBuilder reads but only fails when
//! building (an empty `(src)`, several sources without a trailing `/` on `dst`, a network other
//! than `host`) parses here too, so that `check`, `fmt` and `dockerfile` take every spec
//! OBuilder takes; `build` refuses those before running anything ([`crate::builder::guard`]).
//! Every error points at the offending node.

use std::path::Path;

use super::ast::{Copy, CopyFrom, Mount, Op, OpItem, Run, Spec, Stage, User};
use super::error::SpecError;
use super::reader::{read_document, Node};
use super::sexp::Span;

/// The operation names, in the order the documentation lists them.
pub const OPERATIONS: [&str; 7] = ["comment", "workdir", "shell", "run", "copy", "user", "env"];

/// Parses and validates the text of a spec file (`file` names it in errors).
pub fn parse_spec(file: &Path, text: &str) -> Result<Spec, SpecError> {
    let document = read_document(file, text)?;
    parse_node(file, &document.root)
}

/// Reads, parses and validates a spec file for building: besides [`parse_spec`]'s rules, it
/// refuses what a build cannot honour (see [`super::lint`]; `check` only warns about those).
pub fn load_spec(file: &Path) -> Result<Spec, SpecError> {
    let text = read_spec_file(file)?;
    let spec = parse_spec(file, &text)?;
    if let Some(problem) = super::lint::exclude_problems(file, &text).into_iter().next() {
        return Err(problem);
    }
    Ok(spec)
}

/// Reads a spec file as UTF-8 text; a file that is not UTF-8 is an error naming it.
pub fn read_spec_file(file: &Path) -> Result<String, SpecError> {
    let bytes = std::fs::read(file).map_err(|e| SpecError {
        file: file.to_path_buf(),
        span: Span {
            start: 0,
            end: 0,
            line: 1,
            col: 1,
        },
        message: format!("cannot read {}: {e}", file.display()),
    })?;
    decode_utf8(file, bytes)
}

/// Checks that a spec's bytes are UTF-8; the error points at the first bad byte.
pub fn decode_utf8(file: &Path, bytes: Vec<u8>) -> Result<String, SpecError> {
    String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        // The valid prefix is UTF-8, so lines and columns can be counted on it.
        let prefix = String::from_utf8_lossy(valid);
        let line = prefix.matches('\n').count() + 1;
        let col = prefix.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        SpecError {
            file: file.to_path_buf(),
            span: Span {
                start: valid.len(),
                end: valid.len() + 1,
                line: clamp(line),
                col: clamp(col),
            },
            message: format!("{} is not valid UTF-8", file.display()),
        }
    })
}

fn clamp(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Turns the root S-expression of a spec file into a validated [`Spec`].
pub fn parse_node(file: &Path, root: &Node) -> Result<Spec, SpecError> {
    Parser { file }.spec(root, &[])
}

struct Parser<'a> {
    file: &'a Path,
}

/// The fields of a record-like operation, `(op (name value...) ...)`.
struct Fields<'n> {
    entries: Vec<(&'n str, &'n Node, &'n [Node])>,
}

impl<'n> Fields<'n> {
    /// The field's whole node and its values.
    fn get(&self, name: &str) -> Option<(&'n Node, &'n [Node])> {
        self.entries
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, node, values)| (*node, *values))
    }
}

impl Parser<'_> {
    fn error(&self, span: Span, message: impl Into<String>) -> SpecError {
        SpecError {
            file: self.file.to_path_buf(),
            span,
            message: message.into(),
        }
    }

    fn err<T>(&self, node: &Node, message: impl Into<String>) -> Result<T, SpecError> {
        Err(self.error(node.span, message))
    }

    /// A spec list; `scope` holds the stage names visible from it (enclosing ones and
    /// earlier siblings of its own stage).
    fn spec(&self, node: &Node, scope: &[String]) -> Result<Spec, SpecError> {
        let Some(items) = node.list() else {
            return self.err(
                node,
                format!("a spec is a list ((from IMAGE) OP...), found {}", describe(node)),
            );
        };
        let mut visible = scope.to_vec();
        let mut stages = Vec::new();
        for (index, item) in items.iter().enumerate() {
            let fields = item.list().unwrap_or(&[]);
            match head(item) {
                Some("build") => {
                    let [_, name, child] = fields else {
                        return self.err(item, "build expects a name and a spec: (build NAME ((from IMAGE) ...))");
                    };
                    let name = self.atom(name, "a build's name")?;
                    let spec = self.spec(child, &visible)?;
                    visible.push(name.to_string());
                    stages.push(Stage {
                        name: name.to_string(),
                        span: item.span,
                        spec,
                    });
                }
                Some("from") => {
                    let [_, image] = fields else {
                        return self.err(
                            item,
                            format!("from expects exactly one image: (from IMAGE), found {}", describe(item)),
                        );
                    };
                    let from = self.atom(image, "the image of from")?.to_string();
                    let ops = items[index + 1..]
                        .iter()
                        .map(|op| {
                            Ok(OpItem {
                                op: self.op(op, &visible)?,
                                span: op.span,
                            })
                        })
                        .collect::<Result<Vec<_>, SpecError>>()?;
                    return Ok(Spec {
                        stages,
                        from,
                        from_span: item.span,
                        ops,
                    });
                }
                Some(name) if is_operation(name) => {
                    return self.err(
                        item,
                        format!(
                            "{} comes before (from IMAGE): operations must follow from",
                            describe(item)
                        ),
                    );
                }
                _ => {
                    return self.err(
                        item,
                        format!("expected (build NAME SPEC) or (from IMAGE), found {}", describe(item)),
                    )
                }
            }
        }
        self.err(node, "missing (from IMAGE)")
    }

    fn atom<'n>(&self, node: &'n Node, what: &str) -> Result<&'n str, SpecError> {
        node.atom()
            .ok_or_else(|| self.error(node.span, format!("{what} must be an atom, found {}", describe(node))))
    }

    fn atoms(&self, values: &[Node], what: &str) -> Result<Vec<String>, SpecError> {
        values.iter().map(|v| self.atom(v, what).map(str::to_string)).collect()
    }

    fn op(&self, node: &Node, scope: &[String]) -> Result<Op, SpecError> {
        let Some(items) = node.list() else {
            return self.err(
                node,
                format!("expected an operation like (run ...), found {}", describe(node)),
            );
        };
        let Some((name_node, args)) = items.split_first() else {
            return self.err(node, "empty operation (): expected (comment ...), (run ...), ...");
        };
        let Some(name) = name_node.atom() else {
            return self.err(
                name_node,
                format!("an operation starts with its name, found {}", describe(name_node)),
            );
        };
        match name {
            "comment" => Ok(Op::Comment(self.single(node, name, args)?)),
            "workdir" => Ok(Op::Workdir(self.single(node, name, args)?)),
            "shell" => Ok(Op::Shell(self.atoms(args, "an argument of shell")?)),
            "env" => match args {
                [key, value] => Ok(Op::Env(
                    self.atom(key, "the name of env")?.to_string(),
                    self.atom(value, "the value of env")?.to_string(),
                )),
                _ => self.err(
                    node,
                    format!(
                        "env expects a name and a value: (env NAME VALUE), found {} arguments",
                        args.len()
                    ),
                ),
            },
            "run" => Ok(Op::Run(self.run(node, args)?)),
            "copy" => Ok(Op::Copy(self.copy(node, args, scope)?)),
            "user" => Ok(Op::User(self.user(node, args)?)),
            "from" => self.err(node, "a second (from IMAGE): a spec has exactly one"),
            "build" => self.err(node, "(build ...) after (from IMAGE): stages must come before from"),
            other => {
                let lower = other.to_ascii_lowercase();
                if is_operation(&lower) {
                    self.err(
                        name_node,
                        format!("operation names are lowercase: write {lower}, not {other}"),
                    )
                } else {
                    self.err(
                        name_node,
                        format!(
                            "unknown operation \"{other}\"{}; expected one of {}",
                            hint(other, OPERATIONS.iter().copied()),
                            OPERATIONS.join(", ")
                        ),
                    )
                }
            }
        }
    }

    /// `(NAME VALUE)` with exactly one atom.
    fn single(&self, node: &Node, name: &str, args: &[Node]) -> Result<String, SpecError> {
        match args {
            [value] => Ok(self.atom(value, &format!("the argument of {name}"))?.to_string()),
            _ => self.err(
                node,
                format!("{name} expects exactly one argument, found {}", args.len()),
            ),
        }
    }

    fn fields<'n>(&self, op: &str, args: &'n [Node], allowed: &[&str]) -> Result<Fields<'n>, SpecError> {
        let mut fields = Fields { entries: Vec::new() };
        for field in args {
            let items = field.list().unwrap_or(&[]);
            let Some(name) = items.first().and_then(Node::atom) else {
                return self.err(
                    field,
                    format!(
                        "{op} fields are lists like ({} ...), found {}",
                        allowed[0],
                        describe(field)
                    ),
                );
            };
            if !allowed.contains(&name) {
                return self.err(
                    field,
                    format!(
                        "unknown field \"{name}\" in {op}{}; expected one of {}",
                        hint(name, allowed.iter().copied()),
                        allowed.join(", ")
                    ),
                );
            }
            if fields.get(name).is_some() {
                return self.err(field, format!("duplicate field \"{name}\" in {op}"));
            }
            fields.entries.push((name, field, &items[1..]));
        }
        Ok(fields)
    }

    /// A field with exactly one atom value.
    fn field_value(&self, op: &str, field: &Node, values: &[Node]) -> Result<String, SpecError> {
        let name = head(field).unwrap_or("field");
        match values {
            [value] => Ok(self.atom(value, &format!("the value of {name} in {op}"))?.to_string()),
            _ => self.err(
                field,
                format!("{name} in {op} expects exactly one value, found {}", values.len()),
            ),
        }
    }

    fn run(&self, node: &Node, args: &[Node]) -> Result<Run, SpecError> {
        let fields = self.fields("run", args, &["shell", "cache", "network", "secrets"])?;
        let Some((field, values)) = fields.get("shell") else {
            return self.err(node, "run is missing its (shell COMMAND) field");
        };
        let shell = self.field_value("run", field, values)?;
        let cache = match fields.get("cache") {
            Some((_, entries)) => entries
                .iter()
                .map(|e| self.mount(e, "cache"))
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        let secrets = match fields.get("secrets") {
            Some((_, entries)) => entries
                .iter()
                .map(|e| self.mount(e, "secret"))
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        // Any names, as OBuilder reads them; `build` refuses all but `host` (`builder::guard`).
        let network = match fields.get("network") {
            Some((_, values)) => self.atoms(values, "a network")?,
            None => Vec::new(),
        };
        Ok(Run {
            shell,
            cache,
            network,
            secrets,
        })
    }

    /// A cache or secret entry: `(ID (target PATH) [(buildkit_options ...)])`.
    fn mount(&self, node: &Node, kind: &str) -> Result<Mount, SpecError> {
        let items = node.list().unwrap_or(&[]);
        let Some((id, rest)) = items.split_first() else {
            return self.err(
                node,
                format!("a {kind} entry is (ID (target PATH)), found {}", describe(node)),
            );
        };
        let id = self.atom(id, &format!("a {kind} id"))?.to_string();
        let what = format!("{kind} \"{id}\"");
        let fields = self.fields(&what, rest, &["target", "buildkit_options"])?;
        let target = match fields.get("target") {
            Some((field, values)) => self.field_value(&what, field, values)?,
            None if kind == "secret" => format!("/run/secrets/{id}"),
            None => return self.err(node, format!("{what} is missing its (target PATH) field")),
        };
        let buildkit_options = match fields.get("buildkit_options") {
            Some((_, values)) => self.buildkit_options(values)?,
            None => Vec::new(),
        };
        Ok(Mount {
            id,
            target,
            buildkit_options,
        })
    }

    /// Both `((K V) ...)` (OBuilder's form) and `(K V) ...`.
    fn buildkit_options(&self, values: &[Node]) -> Result<Vec<(String, String)>, SpecError> {
        let pairs = match values {
            [single] if single.list().is_some_and(|l| l.iter().all(|p| p.list().is_some())) => {
                single.list().unwrap_or(&[])
            }
            _ => values,
        };
        pairs
            .iter()
            .map(|pair| match pair.list() {
                Some([key, value]) => Ok((
                    self.atom(key, "a buildkit option name")?.to_string(),
                    self.atom(value, "a buildkit option value")?.to_string(),
                )),
                _ => self.err(
                    pair,
                    format!("a buildkit option is a (KEY VALUE) pair, found {}", describe(pair)),
                ),
            })
            .collect()
    }

    fn copy(&self, node: &Node, args: &[Node], scope: &[String]) -> Result<Copy, SpecError> {
        let fields = self.fields("copy", args, &["src", "dst", "from", "exclude"])?;
        let from = match fields.get("from") {
            None => CopyFrom::Context,
            Some((field, values)) => {
                let [value] = values else {
                    return self.err(
                        field,
                        format!("from in copy expects exactly one value, found {}", values.len()),
                    );
                };
                self.copy_from(node, value, scope)?
            }
        };
        let Some((_, src_values)) = fields.get("src") else {
            return self.err(node, "copy is missing its (src PATH...) field");
        };
        // An empty `(src)`, or several sources into a `dst` without a trailing `/`, read as
        // OBuilder reads them; `build` refuses both (`builder::guard`), as OBuilder's build fails.
        let src = self.atoms(src_values, "a source of copy")?;
        let Some((dst_field, dst_values)) = fields.get("dst") else {
            return self.err(node, "copy is missing its (dst PATH) field");
        };
        let dst = self.field_value("copy", dst_field, dst_values)?;
        let exclude = match fields.get("exclude") {
            Some((_, values)) => self.atoms(values, "an exclude of copy")?,
            None => Vec::new(),
        };
        Ok(Copy {
            from,
            src,
            dst,
            exclude,
        })
    }

    fn copy_from(&self, copy: &Node, value: &Node, scope: &[String]) -> Result<CopyFrom, SpecError> {
        if value.atom() == Some("context") {
            return Ok(CopyFrom::Context);
        }
        let Some([keyword, name]) = value.list() else {
            return self.err(
                value,
                format!("copy's from is context or (build NAME), found {}", describe(value)),
            );
        };
        if keyword.atom() != Some("build") {
            return self.err(
                value,
                format!("copy's from is context or (build NAME), found {}", describe(value)),
            );
        }
        let name = self.atom(name, "a build's name")?;
        if scope.iter().any(|s| s == name) {
            return Ok(CopyFrom::Build(name.to_string()));
        }
        let mut message = format!("unknown build \"{name}\" in {}", describe(copy));
        let close = hint(name, scope.iter().map(String::as_str));
        if !close.is_empty() {
            message.push_str(&close);
        } else if scope.is_empty() {
            message.push_str("; no (build NAME SPEC) stage is visible here");
        } else {
            let names: Vec<String> = scope.iter().map(|s| format!("\"{s}\"")).collect();
            message.push_str(&format!("; builds visible here: {}", names.join(", ")));
        }
        self.err(value, message)
    }

    fn user(&self, node: &Node, args: &[Node]) -> Result<User, SpecError> {
        let fields = self.fields("user", args, &["uid", "gid", "name"])?;
        let uid = fields.get("uid");
        let gid = fields.get("gid");
        match (fields.get("name"), uid, gid) {
            (Some((field, values)), None, None) => Ok(User::Name(self.field_value("user", field, values)?)),
            (Some(_), _, _) => self.err(node, "user takes (uid N) (gid M) or (name NAME), not both"),
            (None, Some(uid), Some(gid)) => Ok(User::Unix {
                uid: self.id(uid, "uid")?,
                gid: self.id(gid, "gid")?,
            }),
            (None, Some(_), None) => self.err(node, "user is missing (gid N)"),
            (None, None, Some(_)) => self.err(node, "user is missing (uid N)"),
            (None, None, None) => self.err(node, "user needs (uid N) (gid M) or (name NAME)"),
        }
    }

    fn id(&self, (field, values): (&Node, &[Node]), name: &str) -> Result<u32, SpecError> {
        let text = self.field_value("user", field, values)?;
        parse_ocaml_uint(&text).ok_or_else(|| {
            self.error(
                values[0].span,
                format!("{name} must be a non-negative integer, found \"{text}\""),
            )
        })
    }
}

/// The atom at the head of a list, if any.
fn head(node: &Node) -> Option<&str> {
    node.list()?.first()?.atom()
}

fn is_operation(name: &str) -> bool {
    OPERATIONS.contains(&name)
}

/// A node as a short one-line S-expression for messages.
fn describe(node: &Node) -> String {
    let text = super::print::one_line(&node.to_sexp());
    if text.chars().count() > 80 {
        let cut: String = text.chars().take(76).collect();
        format!("{cut} ...")
    } else {
        text
    }
}

/// `; did you mean "X"?` when a candidate is within a small edit distance, else empty.
fn hint<'c>(name: &str, candidates: impl Iterator<Item = &'c str>) -> String {
    let limit = (name.chars().count() / 3).max(2);
    let best = candidates
        .map(|c| (edit_distance(name, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d);
    match best {
        Some((_, c)) => format!("; did you mean \"{c}\"?"),
        None => String::new(),
    }
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}

/// OCaml's `int_of_string` for non-negative values that fit a `u32`: decimal, `0x`, `0o`,
/// `0b` or `0u` prefixes, an optional `+`, and `_` anywhere after the first digit.
fn parse_ocaml_uint(text: &str) -> Option<u32> {
    let text = text.strip_prefix('+').unwrap_or(text);
    let (radix, digits) = match text.get(..2).map(str::to_ascii_lowercase).as_deref() {
        Some("0x") => (16, &text[2..]),
        Some("0o") => (8, &text[2..]),
        Some("0b") => (2, &text[2..]),
        Some("0u") => (10, &text[2..]),
        _ => (10, text),
    };
    if !digits.chars().next()?.is_digit(radix) {
        return None;
    }
    let mut value: u32 = 0;
    for c in digits.chars().filter(|c| *c != '_') {
        value = value.checked_mul(radix)?.checked_add(c.to_digit(radix)?)?;
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Spec, String> {
        parse_spec(Path::new("t.spec"), text).map_err(|e| e.to_string())
    }

    fn ops(text: &str) -> Vec<Op> {
        parse(text).unwrap().ops.into_iter().map(|o| o.op).collect()
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err()
    }

    #[test]
    fn every_operation() {
        let spec = parse(
            r#"((build tools ((from alpine) (run (shell "make"))))
                (from busybox)
                (comment "hi there")
                (workdir /src)
                (shell /bin/sh -c)
                (shell)
                (run (network host) (secrets (tok (target /t))) (cache (c (target /c) (buildkit_options ((sharing locked))))) (shell "ls"))
                (copy (from (build tools)) (src a b) (dst /x/) (exclude .git))
                (copy (from context) (src .) (dst /y) (exclude))
                (user (uid 1) (gid 2))
                (user (name bob))
                (env A "b c"))"#,
        )
        .unwrap();
        assert_eq!(spec.stages[0].name, "tools");
        assert_eq!(spec.stages[0].spec.from, "alpine");
        assert_eq!(spec.from, "busybox");
        let ops: Vec<Op> = spec.ops.into_iter().map(|o| o.op).collect();
        assert_eq!(ops[0], Op::Comment("hi there".into()));
        assert_eq!(ops[1], Op::Workdir("/src".into()));
        assert_eq!(ops[2], Op::Shell(vec!["/bin/sh".into(), "-c".into()]));
        assert_eq!(ops[3], Op::Shell(vec![]));
        assert_eq!(
            ops[4],
            Op::Run(Run {
                shell: "ls".into(),
                cache: vec![Mount {
                    id: "c".into(),
                    target: "/c".into(),
                    buildkit_options: vec![("sharing".into(), "locked".into())]
                }],
                network: vec!["host".into()],
                secrets: vec![Mount {
                    id: "tok".into(),
                    target: "/t".into(),
                    buildkit_options: vec![]
                }],
            })
        );
        assert_eq!(
            ops[5],
            Op::Copy(Copy {
                from: CopyFrom::Build("tools".into()),
                src: vec!["a".into(), "b".into()],
                dst: "/x/".into(),
                exclude: vec![".git".into()]
            })
        );
        assert_eq!(
            ops[6],
            Op::Copy(Copy {
                from: CopyFrom::Context,
                src: vec![".".into()],
                dst: "/y".into(),
                exclude: vec![]
            })
        );
        assert_eq!(ops[7], Op::User(User::Unix { uid: 1, gid: 2 }));
        assert_eq!(ops[8], Op::User(User::Name("bob".into())));
        assert_eq!(ops[9], Op::Env("A".into(), "b c".into()));
    }

    #[test]
    fn quirk_fixes() {
        assert_eq!(
            ops("((from a) (user (gid 2) (uid 1)))"),
            vec![Op::User(User::Unix { uid: 1, gid: 2 })]
        );
        let flat =
            ops("((from a) (run (cache (c (target /c) (buildkit_options (sharing locked) (mode 0700)))) (shell x)))");
        let nested =
            ops("((from a) (run (cache (c (target /c) (buildkit_options ((sharing locked) (mode 0700))))) (shell x)))");
        assert_eq!(flat, nested);
        let Op::Run(run) = &ops("((from a) (run (secrets (token)) (shell x)))")[0] else {
            panic!()
        };
        assert_eq!(run.secrets[0].target, "/run/secrets/token");
        let Op::Run(run) = &ops("((from a) (run (network) (cache) (shell x)))")[0] else {
            panic!()
        };
        assert!(run.network.is_empty() && run.cache.is_empty());
        assert_eq!(
            ops("((from a) (user (uid 0x10) (gid 1_000)))"),
            vec![Op::User(User::Unix { uid: 16, gid: 1000 })]
        );
    }

    #[test]
    fn scopes() {
        // A child sees earlier siblings and its enclosing scope.
        parse("((build a ((from x))) (build b ((from x) (copy (from (build a)) (src f) (dst g)))) (from x))").unwrap();
        parse("((build a ((from x))) (build b ((build c ((from x) (copy (from (build a)) (src f) (dst g)))) (from x))) (from x))")
            .unwrap();
        // A later sibling is not visible.
        assert!(
            err("((build b ((from x) (copy (from (build a)) (src f) (dst g)))) (build a ((from x))) (from x))")
                .contains("unknown build \"a\"")
        );
        // A build nested in a child is not visible outside it.
        assert_eq!(
            err("((build a ((build inner ((from x))) (from x)))\n (from x)\n (copy (from (build inner)) (src f) (dst g)))"),
            "t.spec:3:14: error: unknown build \"inner\" in (copy (from (build inner)) (src f) (dst g)); builds visible here: \"a\""
        );
    }

    #[test]
    fn rejections() {
        let cases: &[(&str, &str)] = &[
            ("((run (shell x)))", "1:2: error: (run (shell x)) comes before (from IMAGE): operations must follow from"),
            ("((comment x))", "1:2: error: (comment x) comes before (from IMAGE): operations must follow from"),
            ("((build a ((from x))))", "1:1: error: missing (from IMAGE)"),
            ("()", "1:1: error: missing (from IMAGE)"),
            ("foo", "1:1: error: a spec is a list ((from IMAGE) OP...), found foo"),
            ("((from a b))", "1:2: error: from expects exactly one image: (from IMAGE), found (from a b)"),
            ("((from (a)))", "1:8: error: the image of from must be an atom, found (a)"),
            ("((from a)\n (from b))", "2:2: error: a second (from IMAGE): a spec has exactly one"),
            ("((from a)\n (build b ((from x))))", "2:2: error: (build ...) after (from IMAGE): stages must come before from"),
            ("((from a)\n (frob x))", "2:3: error: unknown operation \"frob\"; expected one of comment, workdir, shell, run, copy, user, env"),
            ("((from a) (rnu (shell x)))", "1:12: error: unknown operation \"rnu\"; did you mean \"run\"?; expected one of comment, workdir, shell, run, copy, user, env"),
            ("((from a) (Run (shell x)))", "1:12: error: operation names are lowercase: write run, not Run"),
            ("((from a) (RUN (shell x)))", "1:12: error: operation names are lowercase: write run, not RUN"),
            ("((from a) (workdir))", "1:11: error: workdir expects exactly one argument, found 0"),
            ("((from a) (comment a b))", "1:11: error: comment expects exactly one argument, found 2"),
            ("((from a) (env A))", "1:11: error: env expects a name and a value: (env NAME VALUE), found 1 arguments"),
            ("((from a) (run))", "1:11: error: run is missing its (shell COMMAND) field"),
            ("((from a) (run (shell x) (shell y)))", "1:26: error: duplicate field \"shell\" in run"),
            ("((from a) (run (shell x) (bogus y)))", "1:26: error: unknown field \"bogus\" in run; expected one of shell, cache, network, secrets"),
            ("((from a) (run (shell x y)))", "1:16: error: shell in run expects exactly one value, found 2"),
            ("((from a) (run (shell x) (network (host))))", "1:35: error: a network must be an atom, found (host)"),
            ("((from a) (run (shell x) (cache (c))))", "1:33: error: cache \"c\" is missing its (target PATH) field"),
            ("((from a) (run (shell x) (cache (c (target /c) (buildkit_options (a b c))))))", "1:66: error: a buildkit option is a (KEY VALUE) pair, found (a b c)"),
            ("((from a) (copy (dst c)))", "1:11: error: copy is missing its (src PATH...) field"),
            ("((from a) (copy (src c)))", "1:11: error: copy is missing its (dst PATH) field"),
            ("((from a) (copy (src a) (dst b) (dst c)))", "1:33: error: duplicate field \"dst\" in copy"),
            ("((from a) (copy (from (build x)) (src a) (dst b)))", "1:23: error: unknown build \"x\" in (copy (from (build x)) (src a) (dst b)); no (build NAME SPEC) stage is visible here"),
            ("((from a) (copy (from elsewhere) (src a) (dst b)))", "1:23: error: copy's from is context or (build NAME), found elsewhere"),
            ("((from a) (user (uid x) (gid 1)))", "1:22: error: uid must be a non-negative integer, found \"x\""),
            ("((from a) (user (uid 1) (gid -1)))", "1:30: error: gid must be a non-negative integer, found \"-1\""),
            ("((from a) (user (uid 1)))", "1:11: error: user is missing (gid N)"),
            ("((from a) (user (uid 1) (gid 1) (name x)))", "1:11: error: user takes (uid N) (gid M) or (name NAME), not both"),
            ("((from a) run)", "1:11: error: expected an operation like (run ...), found run"),
            ("((from a) ())", "1:11: error: empty operation (): expected (comment ...), (run ...), ..."),
            ("((build x) (from a))", "1:2: error: build expects a name and a spec: (build NAME ((from IMAGE) ...))"),
        ];
        for (text, expected) in cases {
            assert_eq!(err(text), format!("t.spec:{expected}"), "for {text}");
        }
    }

    #[test]
    fn did_you_mean_a_stage() {
        assert_eq!(
            err("((build tools ((from a)))\n (from a)\n (copy (from (build tool)) (src x) (dst y)))"),
            "t.spec:3:14: error: unknown build \"tool\" in (copy (from (build tool)) (src x) (dst y)); did you mean \"tools\"?"
        );
    }

    #[test]
    fn not_utf8() {
        let e = decode_utf8(Path::new("bad.spec"), b"((from a)\n (comment \xff))".to_vec()).unwrap_err();
        assert_eq!(e.to_string(), "bad.spec:2:11: error: bad.spec is not valid UTF-8");
    }

    #[test]
    fn ocaml_ints() {
        assert_eq!(parse_ocaml_uint("0"), Some(0));
        assert_eq!(parse_ocaml_uint("+7"), Some(7));
        assert_eq!(parse_ocaml_uint("0b101"), Some(5));
        assert_eq!(parse_ocaml_uint("0o17"), Some(15));
        assert_eq!(parse_ocaml_uint("4294967295"), Some(u32::MAX));
        for bad in ["", "-1", "_1", "0x", "4294967296", "1a", "x"] {
            assert_eq!(parse_ocaml_uint(bad), None, "{bad}");
        }
    }
}

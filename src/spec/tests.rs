//! Cross-module tests of the spec language: examples, round trips, `fmt` with comments and
//! property tests of the reader and printers.

use std::path::{Path, PathBuf};

use proptest::prelude::*;

use super::ast::{Copy, CopyFrom, Mount, Op, OpItem, Run, Spec, Stage, User};
use super::format::format_source;
use super::parse::{load_spec, parse_spec};
use super::print::{pretty, to_sexp};
use super::reader::read_sexp;
use super::sexp::{Sexp, Span};

fn file() -> &'static Path {
    Path::new("t.spec")
}

fn examples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("spec-examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "spec"))
        .collect();
    files.sort();
    files
}

/// parse -> print -> parse gives the same canonical spec, through both printers and fmt.
fn assert_round_trip(text: &str) {
    let spec = parse_spec(file(), text).unwrap();
    let canonical = to_sexp(&spec);
    let machine = canonical.to_machine();
    assert_eq!(
        to_sexp(&parse_spec(file(), &machine).unwrap()),
        canonical,
        "machine form {machine}"
    );
    let readable = pretty(&spec);
    assert_eq!(
        to_sexp(&parse_spec(file(), &readable).unwrap()),
        canonical,
        "readable form {readable}"
    );
    let formatted = format_source(file(), text).unwrap();
    assert_eq!(
        to_sexp(&parse_spec(file(), &formatted).unwrap()),
        canonical,
        "fmt output {formatted}"
    );
    assert_eq!(
        format_source(file(), &formatted).unwrap(),
        formatted,
        "fmt is not idempotent"
    );
}

#[test]
fn examples_cover_every_operation_and_round_trip() {
    let files = examples();
    assert!(files.len() >= 6, "{files:?}");
    let mut seen = std::collections::BTreeSet::new();
    for path in &files {
        let spec = load_spec(path).unwrap();
        assert_eq!(spec.from, "busybox", "{}", path.display());
        let mut specs = vec![&spec];
        while let Some(s) = specs.pop() {
            specs.extend(s.stages.iter().map(|stage| &stage.spec));
            if !s.stages.is_empty() {
                seen.insert("build");
            }
            for item in &s.ops {
                let name = match &item.op {
                    Op::Comment(_) => "comment",
                    Op::Workdir(_) => "workdir",
                    Op::Shell(_) => "shell",
                    Op::Run(run) => {
                        if !run.cache.is_empty() {
                            seen.insert("cache");
                        }
                        if !run.secrets.is_empty() {
                            seen.insert("secrets");
                        }
                        "run"
                    }
                    Op::Copy(copy) => {
                        if !copy.exclude.is_empty() {
                            seen.insert("exclude");
                        }
                        if matches!(copy.from, CopyFrom::Build(_)) {
                            seen.insert("copy-from-build");
                        }
                        "copy"
                    }
                    Op::User(_) => "user",
                    Op::Env(..) => "env",
                };
                seen.insert(name);
            }
        }
        let text = std::fs::read_to_string(path).unwrap();
        assert_round_trip(&text);
        // The examples are kept in canonical layout.
        assert_eq!(
            format_source(path, &text).unwrap(),
            text,
            "{} is not fmt-clean",
            path.display()
        );
    }
    let expected = [
        "build",
        "cache",
        "comment",
        "copy",
        "copy-from-build",
        "env",
        "exclude",
        "run",
        "secrets",
        "shell",
        "user",
        "workdir",
    ];
    for op in expected {
        assert!(seen.contains(op), "no example uses {op}");
    }
}

#[test]
fn tricky_strings_round_trip() {
    for s in [
        "",
        " ",
        "a b",
        "\"quoted\"",
        "back\\slash",
        "tab\there",
        "line\nbreak",
        "two\n\nlines\n",
        "trailing newline\n",
        "\n",
        "  leading spaces\n  on both lines",
        "é ünïcødé 🦀",
        "#|not a comment|#",
        "; not a comment",
        "(parens)",
        "\u{1}\u{7f}",
        "\r\n",
    ] {
        let spec = Spec {
            stages: Vec::new(),
            from: s.to_string(),
            from_span: Span::default(),
            ops: [
                Op::Comment(s.into()),
                Op::Env(s.into(), s.into()),
                Op::Shell(vec![s.into(), s.into()]),
                Op::Run(Run {
                    shell: s.into(),
                    ..Run::default()
                }),
                Op::Copy(Copy {
                    from: CopyFrom::Context,
                    src: vec![s.into()],
                    dst: s.into(),
                    exclude: vec![s.into()],
                }),
            ]
            .into_iter()
            .map(|op| OpItem {
                op,
                span: Span::default(),
            })
            .collect(),
        };
        let canonical = to_sexp(&spec);
        assert_round_trip(&canonical.to_machine());
        assert_round_trip(&pretty(&spec));
        assert_eq!(
            to_sexp(&parse_spec(file(), &pretty(&spec)).unwrap()),
            canonical,
            "{s:?}"
        );
    }
}

const COMMENTED: &str = r#"; leading comment of the file
#| block
   comment |#
(; before from
 (from busybox) ; after from
 #; (run (shell "disabled"))
 ; about the run
 (run (shell "echo hi") ; after shell
      ; before cache
      (cache (c (target /c)) ; inside cache
             )
      (network) ; dropped field
      )
 (copy (dst /x/) ; dst
       (src a b))
 ; last words
 )
; after the spec
"#;

const COMMENTED_FORMATTED: &str = r#"; leading comment of the file
#| block
   comment |#
; before from
((from busybox) ; after from
 #; (run (shell "disabled"))
 ; about the run
 ; dropped field
 ; before cache
 ; inside cache
 (run (cache (c (target /c)))
      (shell "echo hi")) ; after shell
 (copy (src a b) (dst /x/)) ; dst
 ; last words
)
; after the spec
"#;

#[test]
fn fmt_keeps_comments_and_is_idempotent() {
    let formatted = format_source(file(), COMMENTED).unwrap();
    assert_eq!(formatted, COMMENTED_FORMATTED);
    assert_eq!(format_source(file(), &formatted).unwrap(), formatted);
    assert_eq!(
        to_sexp(&parse_spec(file(), COMMENTED).unwrap()),
        to_sexp(&parse_spec(file(), &formatted).unwrap())
    );
}

#[test]
fn fmt_keeps_comments_in_stages() {
    let text = "((build tools ; the tools\n  ((from busybox) ; base\n   (run (shell make)) ; build it\n   ; end of stage\n   ))\n (from busybox)\n (copy (from (build tools)) (src /t) (dst /t)))\n";
    let formatted = format_source(file(), text).unwrap();
    assert_eq!(
        formatted,
        "; the tools\n((build tools\n        ((from busybox) ; base\n         (run (shell make)))) ; build it\n ; end of stage\n (from busybox)\n (copy (from (build tools)) (src /t) (dst /t))\n)\n"
    );
    assert_eq!(format_source(file(), &formatted).unwrap(), formatted);
}

/// Forms OBuilder's parser accepts but that no strata build runs (it only fails them, if at
/// all, when building): `check`, `fmt` and `dockerfile` take them; `build` refuses them with
/// the position of the operation (`builder::guard`).
const OBUILDER_ONLY: &str = "((from base)
 (run (network \"nat\") (shell \"mkdir C:\\obuilder\"))
 (run (network nat host) (shell x))
 (copy (src a b) (dst c))
 (copy (src) (dst d))
 (user (name Zaphod))
 (copy (src a b) (dst c/)))";

#[test]
fn forms_obuilder_accepts_parse_and_round_trip() {
    let spec = parse_spec(file(), OBUILDER_ONLY).unwrap();
    let ops: Vec<&Op> = spec.ops.iter().map(|o| &o.op).collect();
    assert_eq!(
        ops[0],
        &Op::Run(Run {
            shell: "mkdir C:\\obuilder".into(),
            network: vec!["nat".into()],
            ..Run::default()
        })
    );
    let Op::Run(run) = ops[1] else { panic!("{:?}", ops[1]) };
    assert_eq!(run.network, ["nat", "host"]);
    let copy = |src: &[&str], dst: &str| {
        Op::Copy(Copy {
            from: CopyFrom::Context,
            src: src.iter().map(|s| s.to_string()).collect(),
            dst: dst.into(),
            exclude: Vec::new(),
        })
    };
    assert_eq!(ops[2], &copy(&["a", "b"], "c"));
    assert_eq!(ops[3], &copy(&[], "d"));
    assert_round_trip(OBUILDER_ONLY);
    assert_eq!(
        format_source(file(), OBUILDER_ONLY).unwrap(),
        "((from base)\n (run (network nat)\n      (shell \"mkdir C:\\\\obuilder\"))\n (run (network nat host)\n      (shell x))\n (copy (src a b) (dst c))\n (copy (src) (dst d))\n (user (name Zaphod))\n (copy (src a b) (dst c/))\n)\n"
    );
}

#[test]
fn forms_obuilder_accepts_convert_as_obuilder_does() {
    use super::dockerfile::{to_dockerfile, DockerfileOptions, Escape};
    let spec = parse_spec(file(), OBUILDER_ONLY).unwrap();
    let convert = |buildkit, escape| to_dockerfile(&spec, &DockerfileOptions { buildkit, escape }).unwrap();
    // The network is dropped; no `--chown` after a user given by name, on either escape.
    let body = "RUN mkdir C:\\obuilder\nRUN x\nCOPY a b c\nCOPY  d\nUSER Zaphod\nCOPY a b c/\n";
    assert_eq!(convert(false, Escape::Unix), format!("FROM base\n{body}"));
    assert_eq!(convert(true, Escape::Unix), format!("FROM base\n{body}"));
    assert_eq!(convert(false, Escape::Windows), format!("#escape=`\nFROM base\n{body}"));
}

#[test]
fn build_refuses_forms_obuilder_accepts_with_their_positions() {
    use crate::builder::guard::{build_findings, Policy};
    let spec = parse_spec(file(), OBUILDER_ONLY).unwrap();
    let errors: Vec<String> = build_findings(&spec, &Policy::default())
        .iter()
        .map(|f| f.error(file()).to_string())
        .collect();
    assert_eq!(
        errors,
        [
            "t.spec:2:2: error: unsupported network \"nat\": only (network host) is allowed; omit network for an isolated one",
            "t.spec:3:2: error: unsupported network \"nat\" \"host\": network takes at most one value, (network host); omit network for an isolated one",
            "t.spec:4:2: error: copying several sources needs a destination ending in \"/\", found \"c\"",
            "t.spec:5:2: error: (src) is empty: copy needs at least one source",
        ]
    );
    // In a stage too, in spec order with the other findings.
    let staged = "((build s ((from a)\n  (copy (src x y) (dst z))))\n (from a)\n (workdir /proc)\n (run (network bridge) (shell x)))";
    let spec = parse_spec(file(), staged).unwrap();
    let at: Vec<(u32, u32)> = build_findings(&spec, &Policy::default())
        .iter()
        .map(|f| (f.span.line, f.span.col))
        .collect();
    assert_eq!(at, [(2, 3), (4, 2), (5, 2)]);
}

// ---- property tests ----

fn any_atom() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9/._-]{1,10}",
        "[ -~]{0,12}",
        "[a-z \"\\\\\n\t()#|;é🦀\u{1}]{0,12}",
        any::<String>().prop_map(|s| s.chars().take(12).collect()),
    ]
}

fn any_sexp() -> impl Strategy<Value = Sexp> {
    let leaf = any_atom().prop_map(Sexp::Atom);
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop::collection::vec(inner, 0..6).prop_map(Sexp::List)
    })
}

fn any_mount() -> impl Strategy<Value = Mount> {
    (
        any_atom(),
        any_atom(),
        prop::collection::vec((any_atom(), any_atom()), 0..3),
    )
        .prop_map(|(id, target, buildkit_options)| Mount {
            id,
            target,
            buildkit_options,
        })
}

fn any_op(stages: Vec<String>) -> impl Strategy<Value = Op> {
    let from = if stages.is_empty() {
        Just(CopyFrom::Context).boxed()
    } else {
        prop_oneof![
            Just(CopyFrom::Context),
            prop::sample::select(stages).prop_map(CopyFrom::Build)
        ]
        .boxed()
    };
    prop_oneof![
        any_atom().prop_map(Op::Comment),
        any_atom().prop_map(Op::Workdir),
        prop::collection::vec(any_atom(), 0..4).prop_map(Op::Shell),
        (
            any_atom(),
            prop::collection::vec(any_mount(), 0..3),
            prop::collection::vec(any_atom(), 0..3),
            prop::collection::vec(any_mount(), 0..3)
        )
            .prop_map(|(shell, cache, network, secrets)| Op::Run(Run {
                shell,
                cache,
                network,
                secrets
            })),
        (
            from,
            prop::collection::vec(any_atom(), 0..4),
            any_atom(),
            prop::collection::vec(any_atom(), 0..3)
        )
            .prop_map(|(from, src, dst, exclude)| {
                Op::Copy(Copy {
                    from,
                    src,
                    dst,
                    exclude,
                })
            }),
        (any::<u32>(), any::<u32>()).prop_map(|(uid, gid)| Op::User(User::Unix { uid, gid })),
        any_atom().prop_map(|name| Op::User(User::Name(name))),
        (any_atom(), any_atom()).prop_map(|(k, v)| Op::Env(k, v)),
    ]
}

fn any_spec_with(depth: u32, scope: Vec<String>) -> BoxedStrategy<Spec> {
    let stage_count = if depth == 0 { 0..1usize } else { 0..3usize };
    let names = prop::collection::vec("[a-z]{1,6}", stage_count);
    (names, any_atom())
        .prop_flat_map(move |(names, from)| {
            let mut visible = scope.clone();
            let mut stage_strategies = Vec::new();
            for name in &names {
                stage_strategies.push(any_spec_with(depth.saturating_sub(1), visible.clone()));
                visible.push(name.clone());
            }
            let ops = prop::collection::vec(any_op(visible), 0..6);
            (Just(names), stage_strategies, Just(from), ops)
        })
        .prop_map(|(names, specs, from, ops)| Spec {
            stages: names
                .into_iter()
                .zip(specs)
                .map(|(name, spec)| Stage {
                    name,
                    span: Span::default(),
                    spec,
                })
                .collect(),
            from,
            from_span: Span::default(),
            ops: ops
                .into_iter()
                .map(|op| OpItem {
                    op,
                    span: Span::default(),
                })
                .collect(),
        })
        .boxed()
}

fn any_spec() -> BoxedStrategy<Spec> {
    any_spec_with(2, Vec::new())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn machine_form_reads_back(sexp in any_sexp()) {
        let printed = sexp.to_machine();
        prop_assert_eq!(read_sexp(file(), &printed).unwrap(), sexp);
    }

    #[test]
    fn reader_never_panics(text in any::<String>()) {
        let _ = read_sexp(file(), &text);
        let _ = parse_spec(file(), &text);
        let _ = format_source(file(), &text);
    }

    #[test]
    fn reader_never_panics_on_sexp_like_text(text in "[()\"\\\\;#| \n\tax0-9é]{0,64}") {
        let _ = read_sexp(file(), &text);
        let _ = format_source(file(), &text);
    }

    #[test]
    fn printers_round_trip(spec in any_spec()) {
        let canonical = to_sexp(&spec);
        let from_machine = parse_spec(file(), &canonical.to_machine()).unwrap();
        prop_assert_eq!(to_sexp(&from_machine), canonical.clone());
        let readable = pretty(&spec);
        let from_readable = parse_spec(file(), &readable).unwrap();
        prop_assert_eq!(to_sexp(&from_readable), canonical);
        prop_assert_eq!(format_source(file(), &readable).unwrap(), readable);
    }

    /// Comments inserted between and after lines survive `fmt`, which stays idempotent.
    #[test]
    fn fmt_with_comments_is_idempotent(spec in any_spec(), seeds in prop::collection::vec(0u8..4, 64)) {
        let readable = pretty(&spec);
        // Only safe where no string spans lines.
        if readable.contains("\\\n") {
            return Ok(());
        }
        let mut text = String::new();
        let mut inserted = 0;
        for (index, line) in readable.lines().enumerate() {
            text.push_str(line);
            match seeds[index % seeds.len()] {
                1 => { text.push_str(&format!(" ; trailing {index}")); inserted += 1; }
                2 => { text.push_str(&format!("\n; own line {index}")); inserted += 1; }
                3 => { text.push_str(&format!(" #| block {index} |#")); inserted += 1; }
                _ => {}
            }
            text.push('\n');
        }
        let formatted = format_source(file(), &text).unwrap();
        prop_assert_eq!(to_sexp(&parse_spec(file(), &formatted).unwrap()), to_sexp(&spec));
        let count = formatted.matches(" trailing ").count() + formatted.matches(" own line ").count()
            + formatted.matches("#| block ").count();
        prop_assert_eq!(count, inserted, "comments lost in\n{}\nfrom\n{}", formatted, text);
        prop_assert_eq!(format_source(file(), &formatted).unwrap(), formatted);
    }
}

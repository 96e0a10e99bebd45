//! The spec commands through the real binary: check, fmt, dockerfile, completions, man.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn strata(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    // A command that does not read stdin may exit before we write: ignore a broken pipe.
    let _ = input.write_all(stdin.unwrap_or("").as_bytes());
    drop(input);
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn examples() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("spec-examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "spec"))
        .collect();
    files.sort();
    files
}

#[test]
fn check_accepts_every_example() {
    let files = examples();
    let args: Vec<&str> = std::iter::once("check")
        .chain(files.iter().map(|p| p.to_str().unwrap()))
        .collect();
    let out = strata(&args, None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    for file in &files {
        assert!(stdout.contains(&format!("{}: ok\n", file.display())), "{stdout}");
    }
}

#[test]
fn check_reports_errors_with_positions_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.spec");
    std::fs::write(&bad, "((from busybox)\n (copy (from (build tool)) (src x) (dst y)))\n").unwrap();
    let good = dir.path().join("good.spec");
    std::fs::write(&good, "((from busybox))").unwrap();
    let out = strata(&["check", good.to_str().unwrap(), bad.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(text(&out.stdout), format!("{}: ok\n", good.display()));
    assert_eq!(
        text(&out.stderr),
        format!(
            "{}:2:14: error: unknown build \"tool\" in (copy (from (build tool)) (src x) (dst y)); no (build NAME SPEC) stage is visible here\n",
            bad.display()
        )
    );
    // Not UTF-8, a missing file, standard input.
    let binary = dir.path().join("binary.spec");
    std::fs::write(&binary, b"((from \xff))").unwrap();
    let out = strata(&["check", binary.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        format!("{0}:1:8: error: {0} is not valid UTF-8\n", binary.display())
    );
    let out = strata(&["check", "/nonexistent/x.spec"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).starts_with("/nonexistent/x.spec:1:1: error: cannot read"));
    let out = strata(&["check", "-"], Some("((from a) (RUN (shell x)))"));
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        "<stdin>:1:12: error: operation names are lowercase: write run, not RUN\n"
    );
}

#[test]
fn fmt_prints_the_canonical_layout_and_check_exits_1_when_it_differs() {
    let messy =
        "; keep me\n((from busybox) (run (shell \"echo hi\") (network host)) ; and me\n (user (gid 2) (uid 1)))";
    let out = strata(&["fmt", "-"], Some(messy));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let formatted = text(&out.stdout);
    assert_eq!(
        formatted,
        "; keep me\n((from busybox)\n (run (network host)\n      (shell \"echo hi\")) ; and me\n (user (uid 1) (gid 2))\n)\n"
    );
    let out = strata(&["fmt", "--check", "-"], Some(messy));
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert_eq!(text(&out.stderr).lines().count(), 1);
    let out = strata(&["fmt", "--check", "-"], Some(&formatted));
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout.is_empty() && out.stderr.is_empty());
    let out = strata(&["fmt", "-"], Some(&formatted));
    assert_eq!(text(&out.stdout), formatted);
    for file in examples() {
        let out = strata(&["fmt", "--check", file.to_str().unwrap()], None);
        assert_eq!(out.status.code(), Some(0), "{}: {}", file.display(), text(&out.stderr));
    }
    let out = strata(&["fmt", "-"], Some("((from a) (frob))"));
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).starts_with("<stdin>:1:12: error: unknown operation \"frob\""));
}

#[test]
fn dockerfile_plain_buildkit_and_windows() {
    let out = strata(&["dockerfile", "-f", "spec-examples/multi-stage.spec"], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "FROM busybox as tools\nWORKDIR /build\nRUN printf '#!/bin/sh\\necho tool says hi\\n' > tool && chmod +x tool\n\nFROM busybox\nCOPY --from=tools /build/tool /opt/tools/bin/tool\nRUN /opt/tools/bin/tool\n"
    );
    let spec = "((from base) (user (uid 1) (gid 2)) (run (secrets (tok)) (cache (c (target /c))) (shell \"a &&\n b\")) (copy (src x) (dst y)))";
    let out = strata(&["dockerfile", "-f", "-", "--buildkit"], Some(spec));
    assert_eq!(
        text(&out.stdout),
        "FROM base\nUSER 1:2\nRUN --mount=type=secret,id=tok,target=/run/secrets/tok,uid=1 --mount=type=cache,id=c,target=/c,uid=1 a && \\\n    b\nCOPY --chown=1:2 x y\n"
    );
    let out = strata(&["dockerfile", "-f", "-", "--escape", "windows"], Some(spec));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        text(&out.stdout),
        "#escape=`\nFROM base\nUSER 1:2\nRUN a && `\n    b\nCOPY --chown=1:2 x y\n"
    );
    let out = strata(
        &["dockerfile", "-f", "-", "--escape", "windows", "--buildkit"],
        Some("((from a) (run (cache (c (target /c))) (shell x)))"),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("needs a numeric user"),
        "{}",
        text(&out.stderr)
    );
    let out = strata(&["dockerfile", "-f", "-"], Some("((from a)"));
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        "<stdin>:1:1: error: unbalanced parentheses: this `(` is never closed\n"
    );
}

#[test]
fn completions_and_man_page() {
    let out = strata(&["completions", "bash"], None);
    assert_eq!(out.status.code(), Some(0));
    let script = text(&out.stdout);
    assert!(script.contains("strata") && script.contains("dockerfile"), "{script}");
    let out = strata(&["man"], None);
    assert_eq!(out.status.code(), Some(0));
    let page = text(&out.stdout);
    assert!(page.contains(".TH strata") && page.contains("check"), "{page}");
}

/// What OBuilder's parser accepts but strata cannot build (a network other than `host`,
/// several sources into a destination without a trailing `/`, an empty `(src)`): `check`
/// accepts it with warnings, `fmt` and `dockerfile` take it, `build` refuses it before
/// anything runs, each problem at its position (exit 2).
#[test]
fn obuilder_only_forms_check_and_convert_but_build_refuses_them() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("obuilder.spec");
    std::fs::write(
        &spec,
        "((from mcr.microsoft.com/windows/servercore:ltsc2022)\n (run (network \"nat\") (shell \"mkdir C:\\obuilder\"))\n (copy (src a b) (dst c))\n (copy (src) (dst d))\n (user (name Zaphod))\n (copy (src a b) (dst c/)))\n",
    )
    .unwrap();
    let path = spec.to_str().unwrap();
    let out = strata(&["check", path], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("{path}: ok\n"));
    assert_eq!(
        text(&out.stderr),
        format!(
            "{path}:2:2: warning: unsupported network \"nat\": only (network host) is allowed; omit network for an isolated one\n\
             {path}:3:2: warning: copying several sources needs a destination ending in \"/\", found \"c\"\n\
             {path}:4:2: warning: (src) is empty: copy needs at least one source\n"
        )
    );
    let out = strata(&["fmt", "--check", path], None);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let out = strata(&["fmt", path], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(" (run (network nat)\n"),
        "{}",
        text(&out.stdout)
    );
    let body = "FROM mcr.microsoft.com/windows/servercore:ltsc2022\nRUN mkdir C:\\obuilder\nCOPY a b c\nCOPY  d\nUSER Zaphod\nCOPY a b c/\n";
    for flags in [&[][..], &["--buildkit"][..]] {
        let args: Vec<&str> = ["dockerfile", "-f", path].iter().chain(flags).copied().collect();
        let out = strata(&args, None);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout), body);
    }
    let out = strata(&["dockerfile", "-f", path, "--escape", "windows"], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("#escape=`\n{body}"));
    // `build` stops at the spec: no store is opened, the context is not even looked at.
    let store = dir.path().join("store");
    let store_arg = format!("rsync:{}", store.display());
    let out = strata(
        &["--store", &store_arg, "build", "-f", path, "/nonexistent-context"],
        None,
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty());
    assert_eq!(
        text(&out.stderr),
        format!(
            "{path}:2:2: error: unsupported network \"nat\": only (network host) is allowed; omit network for an isolated one\n\
             {path}:3:2: error: copying several sources needs a destination ending in \"/\", found \"c\"\n\
             {path}:4:2: error: (src) is empty: copy needs at least one source\n"
        )
    );
    assert!(!store.exists());
}

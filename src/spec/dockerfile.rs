//! Spec -> Dockerfile, exactly as OBuilder's converter writes it.
//!
//! Each child build becomes a stage `FROM IMAGE as NAME` followed by a blank line (children
//! first, depth-first); the final stage is `FROM IMAGE`. Every stage starts as the root user
//! (`0:0`, or `ContainerAdministrator` with the Windows escape). `network` is dropped; caches
//! and secrets become `--mount` options only with BuildKit (secrets first); excludes are
//! dropped; `COPY --chown=UID:GID` only after a numeric non-root `(user (uid N) (gid M))`,
//! never after `(user (name NAME))`. A multi-line `run` is split into trimmed lines joined by
//! ` \` (or `` ` ``) and a newline plus four spaces. OBuilder crashes when a BuildKit mount
//! meets a user given by name; this returns [`DockerfileError::MountNeedsNumericUser`] instead.

use std::fmt::Write;

use super::ast::{Copy, CopyFrom, Mount, Op, Run, Spec, User};

/// The Dockerfile escape character (and the operating system style that goes with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Escape {
    /// `\`, root is `0:0`.
    #[default]
    Unix,
    /// `` ` `` with a leading `#escape=`` ` line, root is `ContainerAdministrator`.
    Windows,
}

impl Escape {
    fn char(self) -> char {
        match self {
            Escape::Unix => '\\',
            Escape::Windows => '`',
        }
    }

    fn root(self) -> User {
        match self {
            Escape::Unix => User::ROOT,
            Escape::Windows => User::Name("ContainerAdministrator".to_string()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerfileOptions {
    /// Write caches and secrets as BuildKit `RUN --mount=...` options.
    pub buildkit: bool,
    pub escape: Escape,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DockerfileError {
    #[error("a BuildKit {kind} mount \"{id}\" needs a numeric user, but the user is \"{user}\" (set (user (uid N) (gid M)) first)")]
    MountNeedsNumericUser {
        kind: &'static str,
        id: String,
        user: String,
    },
}

/// The Dockerfile for a spec.
pub fn to_dockerfile(spec: &Spec, options: &DockerfileOptions) -> Result<String, DockerfileError> {
    let mut out = String::new();
    if options.escape == Escape::Windows {
        out.push_str("#escape=`\n");
    }
    stage(&mut out, None, spec, options)?;
    Ok(out)
}

fn stage(
    out: &mut String,
    name: Option<&str>,
    spec: &Spec,
    options: &DockerfileOptions,
) -> Result<(), DockerfileError> {
    for child in &spec.stages {
        stage(out, Some(&child.name), &child.spec, options)?;
        out.push('\n');
    }
    out.push_str("FROM ");
    out.push_str(&spec.from);
    if let Some(name) = name {
        out.push_str(" as ");
        out.push_str(name);
    }
    out.push('\n');
    let mut user = options.escape.root();
    for item in &spec.ops {
        match &item.op {
            Op::Comment(text) => line(out, format_args!("# {text}")),
            Op::Workdir(path) => line(out, format_args!("WORKDIR {path}")),
            Op::Shell(args) => {
                let quoted: Vec<String> = args.iter().map(|a| format!("\"{a}\"")).collect();
                line(out, format_args!("SHELL [ {} ]", quoted.join(", ")));
            }
            Op::Run(run) => run_line(out, run, &user, options)?,
            Op::Copy(copy) => copy_line(out, copy, &user),
            Op::User(new_user) => {
                match new_user {
                    User::Unix { uid, gid } => line(out, format_args!("USER {uid}:{gid}")),
                    User::Name(name) => line(out, format_args!("USER {name}")),
                }
                user = new_user.clone();
            }
            Op::Env(key, value) => line(
                out,
                format_args!("ENV {key}=\"{}\"", escape_value(value, options.escape.char())),
            ),
        }
    }
    Ok(())
}

fn line(out: &mut String, args: std::fmt::Arguments<'_>) {
    // Writing to a String cannot fail.
    let _ = out.write_fmt(args);
    out.push('\n');
}

fn run_line(out: &mut String, run: &Run, user: &User, options: &DockerfileOptions) -> Result<(), DockerfileError> {
    out.push_str("RUN ");
    if options.buildkit {
        for secret in &run.secrets {
            mount(out, "secret", secret, user)?;
        }
        for cache in &run.cache {
            mount(out, "cache", cache, user)?;
        }
    }
    let separator = format!(" {}\n    ", options.escape.char());
    let lines: Vec<&str> = run.shell.split('\n').map(ocaml_trim).collect();
    out.push_str(&lines.join(&separator));
    out.push('\n');
    Ok(())
}

/// OCaml's `String.trim`: spaces, tabs, CR, LF and form feeds at both ends.
fn ocaml_trim(s: &str) -> &str {
    s.trim_matches(|c| matches!(c, ' ' | '\t' | '\r' | '\n' | '\x0c'))
}

fn mount(out: &mut String, kind: &'static str, mount: &Mount, user: &User) -> Result<(), DockerfileError> {
    let uid = match user {
        User::Unix { uid, .. } => uid,
        User::Name(name) => {
            return Err(DockerfileError::MountNeedsNumericUser {
                kind,
                id: mount.id.clone(),
                user: name.clone(),
            })
        }
    };
    let _ = write!(
        out,
        "--mount=type={kind},id={},target={},uid={uid}",
        mount.id, mount.target
    );
    for (key, value) in &mount.buildkit_options {
        let _ = write!(out, ",{key}={value}");
    }
    out.push(' ');
    Ok(())
}

fn copy_line(out: &mut String, copy: &Copy, user: &User) {
    out.push_str("COPY ");
    // As OBuilder: only a numeric user other than root is passed on; a user given by name
    // never is (on either escape).
    if let User::Unix { uid, gid } = user {
        if *user != User::ROOT {
            let _ = write!(out, "--chown={uid}:{gid} ");
        }
    }
    if let CopyFrom::Build(name) = &copy.from {
        let _ = write!(out, "--from={name} ");
    }
    out.push_str(&copy.src.join(" "));
    out.push(' ');
    out.push_str(&copy.dst);
    out.push('\n');
}

/// A `"` or the escape character gets the escape character before it.
fn escape_value(value: &str, escape: char) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if c == '"' || c == escape {
            out.push(escape);
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::parse::parse_spec;
    use std::path::Path;

    fn convert(text: &str, buildkit: bool, escape: Escape) -> Result<String, DockerfileError> {
        let spec = parse_spec(Path::new("t.spec"), text).unwrap();
        to_dockerfile(&spec, &DockerfileOptions { buildkit, escape })
    }

    const SPEC: &str = r#"((from base)
      (comment "A test comment")
      (workdir /src)
      (run (shell "command1"))
      (shell /bin/sh -c)
      (run (cache (a (target /data)) (b (target /srv)))
           (shell "command2 &&
                   command3"))
      (copy (src a b) (dst c/))
      (copy (src a b) (dst c/) (exclude .git _build))
      (env DEBUG 1)
      (user (uid 1) (gid 2))
      (copy (src a b) (dst c/)))"#;

    #[test]
    fn plain() {
        assert_eq!(
            convert(SPEC, false, Escape::Unix).unwrap(),
            "FROM base\n# A test comment\nWORKDIR /src\nRUN command1\nSHELL [ \"/bin/sh\", \"-c\" ]\nRUN command2 && \\\n    command3\nCOPY a b c/\nCOPY a b c/\nENV DEBUG=\"1\"\nUSER 1:2\nCOPY --chown=1:2 a b c/\n"
        );
    }

    #[test]
    fn buildkit() {
        assert_eq!(
            convert(SPEC, true, Escape::Unix).unwrap(),
            "FROM base\n# A test comment\nWORKDIR /src\nRUN command1\nSHELL [ \"/bin/sh\", \"-c\" ]\nRUN --mount=type=cache,id=a,target=/data,uid=0 --mount=type=cache,id=b,target=/srv,uid=0 command2 && \\\n    command3\nCOPY a b c/\nCOPY a b c/\nENV DEBUG=\"1\"\nUSER 1:2\nCOPY --chown=1:2 a b c/\n"
        );
        // The reference's verified example (§1.8).
        let text = "((from base) (run (secrets (tok (target /run/secrets/tok))) (cache (opam (target /cache)) (other (target /x) (buildkit_options ((sharing locked))))) (shell \"echo hi &&\n  true\")))";
        assert_eq!(
            convert(text, true, Escape::Unix).unwrap(),
            "FROM base\nRUN --mount=type=secret,id=tok,target=/run/secrets/tok,uid=0 --mount=type=cache,id=opam,target=/cache,uid=0 --mount=type=cache,id=other,target=/x,uid=0,sharing=locked echo hi && \\\n    true\n"
        );
    }

    #[test]
    fn multi_stage_and_secrets() {
        let text = r#"((build tools ((from base) (run (shell "make tools"))))
           (from base)
           (copy (from (build tools)) (src binary) (dst /usr/local/bin/))
           (run (network host) (secrets (a (target /secrets/a)) (b (target /secrets/b))) (shell "command1")))"#;
        assert_eq!(
            convert(text, false, Escape::Unix).unwrap(),
            "FROM base as tools\nRUN make tools\n\nFROM base\nCOPY --from=tools binary /usr/local/bin/\nRUN command1\n"
        );
        assert_eq!(
            convert(text, true, Escape::Unix).unwrap(),
            "FROM base as tools\nRUN make tools\n\nFROM base\nCOPY --from=tools binary /usr/local/bin/\nRUN --mount=type=secret,id=a,target=/secrets/a,uid=0 --mount=type=secret,id=b,target=/secrets/b,uid=0 command1\n"
        );
    }

    #[test]
    fn env_escaping() {
        let text = r#"((from base) (env FOO "a \"b\" \\c `d`"))"#;
        assert_eq!(
            convert(text, false, Escape::Unix).unwrap(),
            "FROM base\nENV FOO=\"a \\\"b\\\" \\\\c `d`\"\n"
        );
        assert_eq!(
            convert(text, false, Escape::Windows).unwrap(),
            "#escape=`\nFROM base\nENV FOO=\"a `\"b`\" \\c ``d``\"\n"
        );
    }

    #[test]
    fn windows() {
        let text = r#"((from mcr.microsoft.com/windows/servercore:ltsc2022)
           (run (shell "echo a &&
                        echo b"))
           (copy (src a) (dst b))
           (user (name bob))
           (copy (src a) (dst b))
           (user (uid 5) (gid 6))
           (copy (src a) (dst b)))"#;
        assert_eq!(
            convert(text, false, Escape::Windows).unwrap(),
            "#escape=`\nFROM mcr.microsoft.com/windows/servercore:ltsc2022\nRUN echo a && `\n    echo b\nCOPY a b\nUSER bob\nCOPY a b\nUSER 5:6\nCOPY --chown=5:6 a b\n"
        );
        // As OBuilder: `--chown` only for a numeric user, so never after a user given by name.
        assert_eq!(
            convert(
                "((from a) (user (name bob)) (copy (src a) (dst b)))",
                false,
                Escape::Unix
            )
            .unwrap(),
            "FROM a\nUSER bob\nCOPY a b\n"
        );
    }

    #[test]
    fn buildkit_mount_with_a_named_user_is_an_error() {
        let text = "((from a) (run (cache (c (target /c))) (shell x)))";
        assert_eq!(
            convert(text, true, Escape::Windows).unwrap_err().to_string(),
            "a BuildKit cache mount \"c\" needs a numeric user, but the user is \"ContainerAdministrator\" (set (user (uid N) (gid M)) first)"
        );
        // Without BuildKit the mount is dropped, so there is nothing to fail.
        assert!(convert(text, false, Escape::Windows).is_ok());
    }
}

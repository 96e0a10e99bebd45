//! OBuilder-compatible ids: SHA-256 of sexplib machine-format records (reference §2, Appendix A).
//!
//! Kept byte-identical on purpose, flaws included (secret values hashed, in reverse spec order;
//! no file modes). Do not "fix" anything here: that is what the `v1` scheme is for.

use sha2::{Digest, Sha256};
use strata_stores::StepId;

use super::manifest::{CopyOp, Manifest};
use super::RunKey;
use crate::spec::ast::User;
use crate::spec::sexp::{must_quote, write_atom, Sexp};

fn sha256_id(bytes: &[u8]) -> StepId {
    StepId::from_digest(Sha256::digest(bytes).as_slice())
}

fn atom(s: &str) -> Sexp {
    Sexp::atom(s)
}

fn field(name: &str, value: Sexp) -> Sexp {
    Sexp::list([atom(name), value])
}

pub(super) fn base_id(image: &str) -> StepId {
    sha256_id(image.as_bytes())
}

fn user_sexp(user: &User) -> Sexp {
    match user {
        User::Unix { uid, gid } => Sexp::list([
            field("uid", atom(&uid.to_string())),
            field("gid", atom(&gid.to_string())),
        ]),
        User::Name(name) => Sexp::list([field("name", atom(name))]),
    }
}

fn strings(items: &[String]) -> Sexp {
    Sexp::list(items.iter().map(|s| atom(s)))
}

/// sexplib's machine form of an atom given as bytes. Secret values may not be UTF-8; such an
/// atom always needs quoting (it has a byte >= 0x80), escaped with OCaml's `String.escaped`.
fn write_byte_atom(bytes: &[u8], out: &mut Vec<u8>) {
    if let Ok(s) = std::str::from_utf8(bytes) {
        let mut text = String::new();
        write_atom(s, &mut text);
        out.extend_from_slice(text.as_bytes());
        return;
    }
    out.push(b'"');
    for &b in bytes {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\r' => out.extend_from_slice(b"\\r"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x20..=0x7e => out.push(b),
            _ => out.extend_from_slice(format!("\\{b:03}").as_bytes()),
        }
    }
    out.push(b'"');
}

/// The exact bytes OBuilder hashes for a run step:
/// `((base P)(workdir W)(user U)(env((K V)…))(cmd C)(shell(…))(network(…))(mount_secrets(((value V)(target T))…)))`.
pub(super) fn run_record(key: &RunKey<'_>) -> Vec<u8> {
    let fields = [
        field("base", atom(key.parent.as_str())),
        field("workdir", atom(key.workdir)),
        field("user", user_sexp(key.user)),
        field(
            "env",
            Sexp::list(key.env.iter().map(|(k, v)| Sexp::list([atom(k), atom(v)]))),
        ),
        field("cmd", atom(key.cmd)),
        field("shell", strings(key.shell)),
        field("network", strings(key.network)),
    ];
    // Every field is a list, so the machine printer puts nothing between them: the record is
    // the concatenation of the fields inside one pair of parentheses.
    let mut out = b"(".to_vec();
    for f in &fields {
        out.extend_from_slice(f.to_machine().as_bytes());
    }
    // Secret values are bytes, so this field is written by hand with the same rules.
    out.extend_from_slice(b"(mount_secrets(");
    // OBuilder accumulates the secrets by prepending: reverse spec order.
    for secret in key.secrets.iter().rev() {
        out.extend_from_slice(b"((value");
        // One space between two bare atoms only.
        if std::str::from_utf8(secret.value).is_ok_and(|v| !must_quote(v)) {
            out.push(b' ');
        }
        write_byte_atom(secret.value, &mut out);
        out.extend_from_slice(b")");
        out.extend_from_slice(field("target", atom(secret.target)).to_machine().as_bytes());
        out.extend_from_slice(b")");
    }
    out.extend_from_slice(b")))");
    out
}

pub(super) fn run_id(key: &RunKey<'_>) -> StepId {
    sha256_id(&run_record(key))
}

fn manifest_sexp(m: &Manifest) -> Sexp {
    match m {
        Manifest::File { path, sha256, .. } => Sexp::list([atom("File"), Sexp::list([atom(path), atom(sha256)])]),
        Manifest::Symlink { path, target } => Sexp::list([atom("Symlink"), Sexp::list([atom(path), atom(target)])]),
        Manifest::Dir { path, children, .. } => Sexp::list([
            atom("Dir"),
            Sexp::list([atom(path), Sexp::list(children.iter().map(manifest_sexp))]),
        ]),
    }
}

/// `((base PARENT)(user USER)(op OP))` with OP `(Copy_items((M…) DST))` or `(Copy_item(M DST))`.
pub(super) fn copy_record(parent: &StepId, user: &User, op: &CopyOp) -> String {
    let op = match op {
        CopyOp::Items { items, dst_dir } => Sexp::list([
            atom("Copy_items"),
            Sexp::list([Sexp::list(items.iter().map(manifest_sexp)), atom(dst_dir)]),
        ]),
        CopyOp::Item { item, dst } => Sexp::list([atom("Copy_item"), Sexp::list([manifest_sexp(item), atom(dst)])]),
    };
    Sexp::list([
        field("base", atom(parent.as_str())),
        field("user", user_sexp(user)),
        field("op", op),
    ])
    .to_machine()
}

pub(super) fn copy_id(parent: &StepId, user: &User, op: &CopyOp) -> StepId {
    sha256_id(copy_record(parent, user, op).as_bytes())
}

#[cfg(test)]
mod tests {
    //! Appendix A of the reference: vectors verified against sexplib/ppx_sexp_conv v0.15.
    use super::*;
    use crate::key::SecretKey;

    fn id(s: &str) -> StepId {
        s.parse().unwrap()
    }

    const BUSYBOX: &str = "9d75f0d7c398df565d7ac04c6819b62d6d8f9560f5eb4672596ecd8f7e96ae91";

    #[test]
    fn vector_1_base() {
        assert_eq!(base_id("busybox"), id(BUSYBOX));
    }

    #[test]
    fn vector_2_run() {
        let parent = id(BUSYBOX);
        let env = vec![(
            "PATH".to_string(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
        )];
        let shell = vec!["/bin/sh".to_string(), "-c".to_string()];
        let key = RunKey {
            parent: &parent,
            workdir: "/",
            user: &User::ROOT,
            env: &env,
            cmd: "echo healthcheck",
            shell: &shell,
            network: &[],
            secrets: &[],
        };
        let want = "((base 9d75f0d7c398df565d7ac04c6819b62d6d8f9560f5eb4672596ecd8f7e96ae91)(workdir /)(user((uid 0)(gid 0)))(env((PATH /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)))(cmd\"echo healthcheck\")(shell(/bin/sh -c))(network())(mount_secrets()))";
        assert_eq!(String::from_utf8(run_record(&key)).unwrap(), want);
        assert_eq!(
            run_id(&key),
            id("849be1f0bfad511b4bb7fa02312079870a5dda1d6b57b57c90913b9482305987")
        );
    }

    #[test]
    fn run_with_host_network_secret_and_uid_1000() {
        let parent = id(BUSYBOX);
        let env = vec![("A".to_string(), String::new()), ("B".to_string(), "x y".to_string())];
        let shell = vec!["/bin/sh".to_string(), "-c".to_string()];
        let network = vec!["host".to_string()];
        let secrets = [SecretKey {
            id: "x",
            target: "/run/secrets/x",
            value: b"s3cr\"et\n",
        }];
        let user = User::Unix { uid: 1000, gid: 1000 };
        let key = RunKey {
            parent: &parent,
            workdir: "/",
            user: &user,
            env: &env,
            cmd: "true",
            shell: &shell,
            network: &network,
            secrets: &secrets,
        };
        let record = String::from_utf8(run_record(&key)).unwrap();
        assert!(
            record.contains("(user((uid 1000)(gid 1000)))(env((A\"\")(B\"x y\")))"),
            "{record}"
        );
        assert!(
            record.contains("(network(host))(mount_secrets(((value\"s3cr\\\"et\\n\")(target /run/secrets/x))))"),
            "{record}"
        );
    }

    #[test]
    fn secrets_in_reverse_spec_order_and_byte_values() {
        let parent = id(BUSYBOX);
        let secrets = [
            SecretKey {
                id: "a",
                target: "/a",
                value: b"one",
            },
            SecretKey {
                id: "b",
                target: "/b",
                value: b"\xff two",
            },
        ];
        let key = RunKey {
            parent: &parent,
            workdir: "/",
            user: &User::ROOT,
            env: &[],
            cmd: "c",
            shell: &[],
            network: &[],
            secrets: &secrets,
        };
        let record = run_record(&key);
        let tail = b"(mount_secrets(((value\"\\255 two\")(target /b))((value one)(target /a)))))";
        assert!(record.ends_with(tail), "{}", String::from_utf8_lossy(&record));
        assert!(record.windows(8).any(|w| w == b"(shell()"));
    }

    fn file(path: &str, hash: &str) -> Manifest {
        Manifest::File {
            path: path.into(),
            sha256: hash.into(),
            mode: 0o644,
        }
    }

    #[test]
    fn vector_3_copy_items() {
        let items = vec![
            file("a.txt", "deadbeef"),
            Manifest::Dir {
                path: "d".into(),
                mode: 0o755,
                children: vec![
                    Manifest::Symlink {
                        path: "d/l".into(),
                        target: "../a.txt".into(),
                    },
                    file("d/f g", "cafe"),
                ],
            },
        ];
        let op = CopyOp::new(items, "/src/".into()).unwrap();
        let parent = StepId::from_digest(&[0; 32]); // any id; the vector uses the atom `abc`
        let record = copy_record(&parent, &User::ROOT, &op).replace(parent.as_str(), "abc");
        let want = "((base abc)(user((uid 0)(gid 0)))(op(Copy_items(((File(a.txt deadbeef))(Dir(d((Symlink(d/l ../a.txt))(File(\"d/f g\"cafe))))))/src/))))";
        assert_eq!(record, want);
        assert_eq!(
            sha256_id(record.as_bytes()),
            id("c980b9b682e266f4ed65a3874166e3c53256acf60ba89733a9ef32a878666efe")
        );
    }

    #[test]
    fn vector_4_copy_item_file() {
        let op = CopyOp::new(vec![file("a.txt", "deadbeef")], "/dst".into()).unwrap();
        let parent = StepId::from_digest(&[0; 32]);
        let record = copy_record(&parent, &User::ROOT, &op).replace(parent.as_str(), "abc");
        assert_eq!(
            record,
            "((base abc)(user((uid 0)(gid 0)))(op(Copy_item((File(a.txt deadbeef))/dst))))"
        );
        // Pinned with `printf %s RECORD | sha256sum`.
        assert_eq!(
            sha256_id(record.as_bytes()),
            id("298a32ecd6588cf56e021bf3f4e5a583a24cd0b40f04f09e98e9c1aa48f2afe2")
        );
    }

    #[test]
    fn vector_5_copy_item_root() {
        let root = Manifest::Dir {
            path: String::new(),
            mode: 0o755,
            children: vec![file("a.txt", "deadbeef")],
        };
        let op = CopyOp::new(vec![root], "/dst".into()).unwrap();
        let parent = StepId::from_digest(&[0; 32]);
        let record = copy_record(&parent, &User::ROOT, &op).replace(parent.as_str(), "abc");
        assert_eq!(
            record,
            "((base abc)(user((uid 0)(gid 0)))(op(Copy_item((Dir(\"\"((File(a.txt deadbeef)))))/dst))))"
        );
        assert_eq!(
            sha256_id(record.as_bytes()),
            id("f7032859fa91f938f96f9be290cbd6037437363aa154058f54c917c8a1c10df0")
        );
    }

    #[test]
    fn vector_6_windows_user() {
        let user = User::Name("ContainerAdministrator".into());
        assert_eq!(
            field("user", user_sexp(&user)).to_machine(),
            "(user((name ContainerAdministrator)))"
        );
    }

    #[test]
    fn copy_id_hashes_the_record() {
        let parent = id(BUSYBOX);
        let op = CopyOp::new(vec![file("a", "00")], "/a".into()).unwrap();
        assert_eq!(
            copy_id(&parent, &User::ROOT, &op),
            sha256_id(copy_record(&parent, &User::ROOT, &op).as_bytes())
        );
    }
}

//! The `v1` id scheme: a versioned, canonical, unambiguous encoding hashed with SHA-256.
//!
//! Format (frozen: changing any byte changes every id, so a change needs a `v2`):
//! - every record starts with the domain tag `str("strata-v1")` then `str(KIND)`, KIND one of
//!   `base`, `run`, `copy`;
//! - `str(s)` = length as u64 big-endian, then the bytes; `u32(n)` = 4 bytes big-endian;
//!   `list(xs)` = count as u64 big-endian, then each element. Every value is self-delimiting, so
//!   no two different inputs share an encoding (unlike concatenating or quoting strings);
//! - variants are written as `str(TAG)` followed by their fields.
//!
//! Records:
//! - base: `str(image)` (the reference as written);
//! - run: `str(parent) user str(workdir) list(str(k) str(v)) str(cmd) list(str shell)
//!   list(str network) list(str(id) str(target))` — env in context order, secrets in spec order,
//!   secret values never hashed (rotating a token must not rebuild everything);
//! - copy: `str(parent) user op`, op = `str("items") list(manifest) str(dst_dir)` or
//!   `str("item") manifest str(dst)`;
//! - user = `str("unix") u32(uid) u32(gid)` or `str("name") str(name)`;
//! - manifest = `str("file") str(path) u32(mode) str(sha256 hex)` |
//!   `str("symlink") str(path) str(target)` | `str("dir") str(path) u32(mode) list(manifest)`,
//!   with mode the full `0o7777` permission bits.

use sha2::{Digest, Sha256};
use strata_stores::StepId;

use super::manifest::{CopyOp, Manifest};
use super::RunKey;
use crate::spec::ast::User;

const DOMAIN: &str = "strata-v1";

/// Feeds the canonical encoding straight into the hasher (large manifests are never buffered).
struct Encoder(Sha256);

impl Encoder {
    fn record(kind: &str) -> Encoder {
        let mut e = Encoder(Sha256::new());
        e.str(DOMAIN);
        e.str(kind);
        e
    }

    fn bytes(&mut self, b: &[u8]) {
        self.len(b.len());
        self.0.update(b);
    }

    fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }

    fn len(&mut self, n: usize) {
        self.0.update((n as u64).to_be_bytes());
    }

    fn u32(&mut self, n: u32) {
        self.0.update(n.to_be_bytes());
    }

    fn strs(&mut self, items: &[String]) {
        self.len(items.len());
        for s in items {
            self.str(s);
        }
    }

    fn user(&mut self, user: &User) {
        match user {
            User::Unix { uid, gid } => {
                self.str("unix");
                self.u32(*uid);
                self.u32(*gid);
            }
            User::Name(name) => {
                self.str("name");
                self.str(name);
            }
        }
    }

    fn manifest(&mut self, m: &Manifest) {
        match m {
            Manifest::File { path, sha256, mode } => {
                self.str("file");
                self.str(path);
                self.u32(*mode);
                self.str(sha256);
            }
            Manifest::Symlink { path, target } => {
                self.str("symlink");
                self.str(path);
                self.str(target);
            }
            Manifest::Dir { path, mode, children } => {
                self.str("dir");
                self.str(path);
                self.u32(*mode);
                self.len(children.len());
                for child in children {
                    self.manifest(child);
                }
            }
        }
    }

    fn finish(self) -> StepId {
        StepId::from_digest(self.0.finalize().as_slice())
    }
}

pub(super) fn base_id(image: &str) -> StepId {
    let mut e = Encoder::record("base");
    e.str(image);
    e.finish()
}

pub(super) fn run_id(key: &RunKey<'_>) -> StepId {
    let mut e = Encoder::record("run");
    e.str(key.parent.as_str());
    e.user(key.user);
    e.str(key.workdir);
    e.len(key.env.len());
    for (k, v) in key.env {
        e.str(k);
        e.str(v);
    }
    e.str(key.cmd);
    e.strs(key.shell);
    e.strs(key.network);
    e.len(key.secrets.len());
    for secret in key.secrets {
        e.str(secret.id);
        e.str(secret.target);
    }
    e.finish()
}

pub(super) fn copy_id(parent: &StepId, user: &User, op: &CopyOp) -> StepId {
    let mut e = Encoder::record("copy");
    e.str(parent.as_str());
    e.user(user);
    match op {
        CopyOp::Items { items, dst_dir } => {
            e.str("items");
            e.len(items.len());
            for item in items {
                e.manifest(item);
            }
            e.str(dst_dir);
        }
        CopyOp::Item { item, dst } => {
            e.str("item");
            e.manifest(item);
            e.str(dst);
        }
    }
    e.finish()
}

#[cfg(test)]
mod tests {
    //! Golden vectors: computed once and pinned. If one changes, the v1 format changed, which
    //! invalidates every existing v1 store: that needs a new scheme, not a new pin.
    use super::*;
    use crate::key::SecretKey;

    fn parent() -> StepId {
        base_id("busybox")
    }

    fn run_key_parts() -> (Vec<(String, String)>, Vec<String>, Vec<String>) {
        let env = vec![
            ("PATH".to_string(), "/usr/bin:/bin".to_string()),
            ("A".to_string(), "x y".to_string()),
        ];
        (env, vec!["/bin/sh".into(), "-c".into()], vec!["host".into()])
    }

    #[test]
    fn golden_base() {
        assert_eq!(
            base_id("busybox").as_str(),
            "cebcd6a42ac62aa6f0b3da7cf47eef5cabcdea09df6a98abb072226c92161311"
        );
    }

    #[test]
    fn golden_run_and_secret_values_not_hashed() {
        let parent = parent();
        let (env, shell, network) = run_key_parts();
        let user = User::Unix { uid: 1000, gid: 1000 };
        let secrets = [SecretKey {
            id: "tok",
            target: "/run/secrets/tok",
            value: b"one",
        }];
        let key = RunKey {
            parent: &parent,
            workdir: "/src",
            user: &user,
            env: &env,
            cmd: "make",
            shell: &shell,
            network: &network,
            secrets: &secrets,
        };
        assert_eq!(
            run_id(&key).as_str(),
            "11cbd90d596bf59d73310269da29ab5cdcea76e555dfbc1008cd2b2f7519eeb9"
        );
        let rotated = [SecretKey {
            value: b"two",
            ..secrets[0].clone()
        }];
        assert_eq!(
            run_id(&RunKey {
                secrets: &rotated,
                ..key.clone()
            }),
            run_id(&key)
        );
        let moved = [SecretKey {
            target: "/tok",
            ..secrets[0].clone()
        }];
        assert_ne!(
            run_id(&RunKey {
                secrets: &moved,
                ..key.clone()
            }),
            run_id(&key)
        );
        let reordered: Vec<_> = env.iter().rev().cloned().collect();
        assert_ne!(
            run_id(&RunKey {
                env: &reordered,
                ..key.clone()
            }),
            run_id(&key)
        );
    }

    #[test]
    fn encoding_is_unambiguous() {
        let parent = parent();
        let shell_a = vec!["a b".to_string()];
        let shell_b = vec!["a".to_string(), "b".to_string()];
        let key = RunKey {
            parent: &parent,
            workdir: "/",
            user: &User::ROOT,
            env: &[],
            cmd: "",
            shell: &shell_a,
            network: &[],
            secrets: &[],
        };
        assert_ne!(
            run_id(&key),
            run_id(&RunKey {
                shell: &shell_b,
                ..key.clone()
            })
        );
        // Moving bytes between neighbouring fields changes the id.
        assert_ne!(
            run_id(&RunKey {
                workdir: "/x",
                cmd: "",
                ..key.clone()
            }),
            run_id(&RunKey {
                workdir: "/",
                cmd: "x",
                ..key.clone()
            })
        );
    }

    fn tree(mode: u32) -> CopyOp {
        let items = vec![
            Manifest::File {
                path: "a.txt".into(),
                sha256: "ab".repeat(32),
                mode,
            },
            Manifest::Dir {
                path: "d".into(),
                mode: 0o755,
                children: vec![Manifest::Symlink {
                    path: "d/l".into(),
                    target: "../a.txt".into(),
                }],
            },
        ];
        CopyOp::new(items, "/src/".into()).unwrap()
    }

    #[test]
    fn golden_copy() {
        assert_eq!(
            copy_id(&parent(), &User::ROOT, &tree(0o644)).as_str(),
            "5d2e5109147de4122586419b034738914d0b92d7d5b065f7a03bfb6f6c1a44d4"
        );
        assert_ne!(
            copy_id(&parent(), &User::ROOT, &tree(0o644)),
            copy_id(&parent(), &User::ROOT, &tree(0o755))
        );
        let item = CopyOp::new(
            vec![Manifest::Dir {
                path: String::new(),
                mode: 0o755,
                children: vec![],
            }],
            "/dst".into(),
        );
        assert_eq!(
            copy_id(&parent(), &User::Name("bob".into()), &item.unwrap()).as_str(),
            "0fc0a48db1940590acde033b41df3f708a9ac9c255c18adc8cab526b7257252f"
        );
    }

    #[test]
    fn symlink_target_is_hashed() {
        let with_target = |t: &str| {
            let op = CopyOp::new(
                vec![Manifest::Symlink {
                    path: "l".into(),
                    target: t.into(),
                }],
                "/l".into(),
            )
            .unwrap();
            copy_id(&parent(), &User::ROOT, &op)
        };
        assert_ne!(with_target("a"), with_target("b"));
    }
}

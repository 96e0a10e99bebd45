//! Harness for end-to-end tests: the real `strata` binary against a real store (btrfs on a
//! loop device, ZFS on zfs-fuse, overlayfs, rsync), a real local registry holding a busybox
//! image made from `busybox-static`, and runc. Every fixture is torn down on drop.

#![allow(dead_code)]

pub mod debian;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use strata_testkit::ScriptFixture;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Btrfs,
    Zfs,
    Overlayfs,
    Rsync,
}

pub struct Env {
    pub store: String,
    pub registry: String,
    pub work: tempfile::TempDir,
    // Dropped after `work` is no longer needed: the store's fixture, then the registry.
    _store_fixture: Option<ScriptFixture>,
    _registry: ScriptFixture,
}

impl Env {
    pub fn new(backend: Backend) -> Env {
        Env::with_scheme(backend, None)
    }

    pub fn with_scheme(backend: Backend, scheme: Option<&str>) -> Env {
        Env::with_options(backend, scheme, &[])
    }

    /// `fixture_args` go to the store's fixture script after `create DIR`: a size for the
    /// loop filesystems (`btrfs-loop create DIR 256M`), `tmpfs` for an overlayfs or rsync
    /// store on a fresh tmpfs.
    pub fn with_options(backend: Backend, scheme: Option<&str>, fixture_args: &[&str]) -> Env {
        assert!(
            strata_testkit::is_root(),
            "end-to-end tests need root (real mounts, runc)"
        );
        let registry = ScriptFixture::create("registry", &[]).expect("registry fixture");
        let work = tempfile::Builder::new()
            .prefix("strata-e2e-")
            .tempdir()
            .expect("temp dir");
        let (store, fixture) = match backend {
            Backend::Btrfs => {
                let f = ScriptFixture::create("btrfs-loop", fixture_args).expect("btrfs fixture");
                (format!("btrfs:{}", f.output), Some(f))
            }
            Backend::Zfs => {
                let f = ScriptFixture::create("zfs-pool", &[]).expect("zfs fixture");
                let pool = f.output.split_whitespace().next().unwrap_or_default().to_owned();
                let mountpoint = f.output.split_whitespace().nth(1).map(PathBuf::from);
                let spec = match mountpoint.as_deref().and_then(Path::parent) {
                    Some(prefix) if prefix != Path::new("/") => format!("zfs:{}/{pool}", prefix.display()),
                    _ => format!("zfs:{pool}"),
                };
                (spec, Some(f))
            }
            // A directory whose fixture unmounts the store's overlays and read-only views
            // (deepest first) before removing it.
            Backend::Overlayfs | Backend::Rsync => {
                let f = ScriptFixture::create("overlay-dir", fixture_args).expect("store directory fixture");
                let kind = if backend == Backend::Overlayfs {
                    "overlayfs"
                } else {
                    "rsync"
                };
                (format!("{kind}:{}/store", f.output), Some(f))
            }
        };
        let env = Env {
            store,
            registry: registry.output.clone(),
            work,
            _store_fixture: fixture,
            _registry: registry,
        };
        if let Some(scheme) = scheme {
            let out = env.strata(&["ls", "--id-scheme", scheme]);
            assert!(out.status.success(), "creating the store: {}", stderr(&out));
        }
        env
    }

    /// Runs the binary with the store and the registry mirror set.
    pub fn strata(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("running strata")
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_strata"));
        cmd.args(args)
            .env("STRATA_STORE", &self.store)
            .env("STRATA_REGISTRY_MIRROR", format!("docker.io=http://{}", self.registry))
            .env_remove("STRATA_LOG");
        cmd
    }

    /// `strata build -f SPEC CONTEXT --progress plain` plus `extra` args.
    pub fn build(&self, spec: &Path, context: &Path, extra: &[&str]) -> Output {
        self.build_command(spec, context, extra)
            .output()
            .expect("running strata")
    }

    /// The command [`Env::build`] runs, to spawn it or change its environment first.
    pub fn build_command(&self, spec: &Path, context: &Path, extra: &[&str]) -> Command {
        let mut args = vec![
            "build",
            "-f",
            spec.to_str().expect("utf-8 path"),
            context.to_str().expect("utf-8 path"),
            "--progress",
            "plain",
        ];
        args.extend_from_slice(extra);
        self.command(&args)
    }

    /// Builds and asserts success; returns (final id, stderr).
    pub fn build_ok(&self, spec: &Path, context: &Path, extra: &[&str]) -> (String, String) {
        let out = self.build(spec, context, extra);
        assert!(
            out.status.success(),
            "build of {} failed ({}):\n{}",
            spec.display(),
            out.status,
            stderr(&out)
        );
        (final_id(&out), stderr(&out))
    }

    /// Writes a spec file into the work dir.
    pub fn spec(&self, name: &str, text: &str) -> PathBuf {
        let path = self.work.path().join(name);
        std::fs::write(&path, text).expect("writing spec");
        path
    }

    /// A fresh context directory in the work dir.
    pub fn context(&self, name: &str) -> PathBuf {
        let path = self.work.path().join(name);
        std::fs::create_dir_all(&path).expect("creating context");
        path
    }

    pub fn store_root(&self) -> PathBuf {
        let (_, rest) = self.store.split_once(':').expect("store spec");
        PathBuf::from(rest)
    }

    /// Asserts that nothing of the store is left behind: no process, container, cgroup,
    /// bundle or temporary mount (the independent check in `strata_testkit::leftovers`).
    pub fn assert_no_leftovers(&self) {
        let found = strata_testkit::leftovers::scan(&self.store_root());
        assert!(
            found.is_empty(),
            "left behind in {}:\n{}",
            self.store,
            found.iter().map(|l| l.to_string()).collect::<Vec<_>>().join("\n")
        );
    }

    pub fn verify_clean(&self) {
        let out = self.strata(&["verify"]);
        assert!(out.status.success(), "verify: {}\n{}", stdout(&out), stderr(&out));
    }
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The final id: the only line on stdout.
pub fn final_id(out: &Output) -> String {
    let text = stdout(out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "stdout must be exactly the final id, got {text:?}");
    assert_eq!(lines[0].len(), 64, "not an id: {:?}", lines[0]);
    lines[0].to_owned()
}

pub fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

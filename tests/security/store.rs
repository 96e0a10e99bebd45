//! Issue 15, item 1: nothing in a store is usable by another host user. Each attack below is
//! tried as `nobody` (`setpriv --reuid=65534 --regid=65534 --clear-groups`) through the real
//! binary, on every backend the machine has (overlayfs, btrfs, rsync, ZFS on zfs-fuse), with
//! every directory above the store opened to 0755 first, as `/var/lib` is: only the store's
//! own modes and mount flags stand between `nobody` and its contents.
//!
//! Before the fix (commit d726ff4), every test here failed on the overlayfs store (its
//! directories were 0755 and its views mounted without `nosuid,nodev`): `nobody` got
//! `euid=0(root)` from the step's setuid copy of `id`, read the host's `/dev/hwrng` through a
//! device node a step made, planted a file that the next build's step printed, read the database,
//! logs, `image.json` and lock files, and an `flock -x` it held on a lease file kept a build
//! waiting until the test killed it. `store_is_opaque_to_nobody` and
//! `nobody_cannot_read_or_lock_state` failed on every backend too (`state/` was 0755 and its
//! files 0644 everywhere).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::{stderr, stdout, Backend, Env};

/// The backends these attacks run on (each one's fixture works on these machines).
const BACKENDS: [Backend; 4] = [Backend::Overlayfs, Backend::Btrfs, Backend::Rsync, Backend::Zfs];

/// Runs `args` as `nobody` with no supplementary groups. Through a shell: `setpriv` keeps
/// root's capabilities until its own `execve`, so a path given to it directly is looked up
/// with `CAP_DAC_OVERRIDE` (it runs a setuid file in a 0700 directory); the shell, and
/// what it runs, have none.
fn as_nobody(args: &[&str]) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--",
        "/bin/sh",
        "-c",
        r#"exec "$@""#,
        "sh",
    ])
    .args(args)
    .current_dir("/");
    cmd
}

fn run_as_nobody(args: &[&str]) -> Output {
    as_nobody(args).output().expect("running setpriv")
}

/// Opens every directory above the store to 0755 (the fixtures' temporary directories are
/// 0700), so that the store's own modes are all that keeps `nobody` out.
fn open_parents(env: &Env) {
    let root = env.store_root();
    for dir in root.ancestors().skip(1) {
        if dir == Path::new("/") {
            break;
        }
        let mode = std::fs::metadata(dir).unwrap().mode();
        if mode & 0o001 == 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
}

/// A fresh store of `backend` whose parents `nobody` may traverse.
fn env(backend: Backend) -> Env {
    let env = Env::new(backend);
    open_parents(&env);
    env
}

/// Every path under `dir`, as root sees it.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        out.push(path.clone());
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            walk(&path, out);
        }
    }
}

fn store_paths(env: &Env) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    walk(&env.store_root(), &mut paths);
    paths
}

/// The committed item directories (`result/<id>`).
fn items(env: &Env) -> Vec<PathBuf> {
    let mut items: Vec<PathBuf> = std::fs::read_dir(env.store_root().join("result"))
        .expect("listing result/")
        .flatten()
        .map(|e| e.path())
        .collect();
    items.sort();
    items
}

/// `major:minor` of `/dev/hwrng` (the host's hardware random number generator, `0600 root` on
/// the host). A block device would be worse, but this machine's device policy refuses block
/// device opens even to root; the hwrng node opens for anyone who can reach it.
const HWRNG: (u32, u32) = (10, 183);

/// A spec whose step leaves a setuid-root copy of the host's `id` at `/sid`, a world-readable
/// node of the host's `/dev/hwrng` at `/hwrng` and a world-writable `/tmp`, then runs `more` ops.
fn attack_spec(more: &str) -> String {
    let (major, minor) = HWRNG;
    format!(
        r#"((from busybox)
 (copy (src sid) (dst /sid))
 (run (shell "chown 0:0 /sid && chmod 4755 /sid && mknod /hwrng c {major} {minor} && chmod 666 /hwrng && mkdir -p /tmp && chmod 1777 /tmp"))
 {more})"#
    )
}

/// Builds [`attack_spec`] (context `attack/`, spec `attack.spec`); returns the final id.
fn build_attack(env: &Env) -> String {
    let ctx = env.context("attack");
    std::fs::copy("/usr/bin/id", ctx.join("sid")).expect("copying id");
    let spec = env.spec("attack.spec", &attack_spec(""));
    env.build_ok(&spec, &ctx, &[]).0
}

/// A step's setuid-root binary gives `nobody` no root: the overlay's views are `nosuid` and
/// every store's result directory is 0700. Before the fix, on overlayfs: `euid=0(root)`.
#[test]
fn setuid_binary_made_by_a_step_gives_nobody_no_root() {
    for backend in BACKENDS {
        let env = env(backend);
        let id = build_attack(&env);
        let item = env.store_root().join("result").join(&id);
        // Through the item's rootfs, and on overlayfs also through its layer.
        for sid in [item.join("rootfs/sid"), item.join("diff/sid")] {
            if !sid.exists() {
                continue;
            }
            let meta = std::fs::metadata(&sid).unwrap();
            assert_eq!(
                meta.mode() & 0o7777,
                0o4755,
                "{backend:?}: the step made {}",
                sid.display()
            );
            let out = run_as_nobody(&[sid.to_str().unwrap()]);
            let said = stdout(&out);
            assert!(
                !said.contains("euid=0"),
                "{backend:?}: nobody ran {} and got root: {said}",
                sid.display()
            );
        }
        env.verify_clean();
    }
}

/// A device node a step made cannot be opened by `nobody` through the store (the overlay's
/// views are `nodev`, result directories 0700). Before the fix, on overlayfs, `nobody` read
/// the host's `/dev/hwrng` (root-only on the host) through a node the step made.
#[test]
fn device_node_made_by_a_step_cannot_be_opened_by_nobody() {
    for backend in BACKENDS {
        let env = env(backend);
        let id = build_attack(&env);
        let item = env.store_root().join("result").join(&id);
        for node in [item.join("rootfs/hwrng"), item.join("diff/hwrng")] {
            if std::fs::symlink_metadata(&node).is_err() {
                continue;
            }
            let out = run_as_nobody(&["dd", &format!("if={}", node.display()), "of=/dev/null", "count=1"]);
            assert!(
                !out.status.success(),
                "{backend:?}: nobody read the host's /dev/hwrng through {}: {}",
                node.display(),
                stderr(&out)
            );
        }
    }
}

/// `nobody` cannot plant a file in a layer (a world-writable `/tmp` in a result) for the next
/// build to see. Before the fix, on overlayfs, the next build's step printed the planted file.
#[test]
fn nobody_cannot_plant_files_for_the_next_build() {
    for backend in BACKENDS {
        let env = env(backend);
        build_attack(&env);
        let mut planted = 0;
        for item in items(&env) {
            for tmp in [item.join("diff/tmp"), item.join("rootfs/tmp")] {
                let target = tmp.join("planted");
                let out = run_as_nobody(&["sh", "-c", &format!("echo PLANTED-BY-NOBODY > {}", target.display())]);
                if out.status.success() {
                    planted += 1;
                }
            }
        }
        let ctx = env.work.path().join("attack");
        let spec = env.spec(
            "next.spec",
            &attack_spec(r#"(run (shell "cat /tmp/planted 2>/dev/null; echo looked"))"#),
        );
        let (_, log) = env.build_ok(&spec, &ctx, &[]);
        assert!(log.contains("looked"), "{log}");
        assert!(
            !log.contains("PLANTED-BY-NOBODY"),
            "{backend:?}: a build saw the file nobody planted:\n{log}"
        );
        assert_eq!(
            planted, 0,
            "{backend:?}: nobody wrote into {planted} result directories"
        );
    }
}

/// `nobody` sees nothing in the store: listing it as `nobody` finds no entry, and the
/// database, logs, `image.json`, `strata.json` and every lock file cannot be opened.
#[test]
fn store_is_opaque_to_nobody() {
    for backend in BACKENDS {
        let env = env(backend);
        build_attack(&env);
        let root = env.store_root();
        let out = run_as_nobody(&["find", root.to_str().unwrap(), "-mindepth", "1"]);
        let seen = stdout(&out);
        assert!(seen.trim().is_empty(), "{backend:?}: nobody lists the store:\n{seen}");
        let paths = store_paths(&env);
        let wanted = |p: &&PathBuf| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let s = p.to_string_lossy();
            name == "db.sqlite"
                || name == "log"
                || name == "image.json"
                || name == "strata.json"
                || name.ends_with(".lock")
                || (s.contains("/state/") && p.is_file())
        };
        let sensitive: Vec<&PathBuf> = paths.iter().filter(wanted).collect();
        assert!(
            sensitive.iter().any(|p| p.ends_with("db/db.sqlite")),
            "{backend:?}: no database among {sensitive:?}"
        );
        assert!(sensitive.iter().any(|p| p.ends_with("image.json")), "{backend:?}");
        let mut readable = Vec::new();
        for chunk in sensitive.chunks(200) {
            // One shell for many files: prints each path nobody can open.
            let mut args = vec![
                "sh",
                "-c",
                r#"for f in "$@"; do cat "$f" >/dev/null 2>&1 && echo "$f"; done; true"#,
                "sh",
            ];
            args.extend(chunk.iter().map(|p| p.to_str().unwrap()));
            readable.push(stdout(&run_as_nobody(&args)));
        }
        let readable = readable.concat();
        assert!(readable.trim().is_empty(), "{backend:?}: nobody reads:\n{readable}");
    }
}

/// Processes started by this test (`nobody` holding locks), killed by process group on drop.
struct Holders(Vec<std::process::Child>);

impl Drop for Holders {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = child.wait();
        }
    }
}

/// `nobody` cannot take any of strata's locks (leases, per-id build locks, cache locks): an
/// `flock -x` it held on a lease file used to keep the next build waiting forever (before the
/// fix it did on every backend; the rebuild below was killed after 90 s).
#[test]
fn nobody_cannot_read_or_lock_state() {
    for backend in BACKENDS {
        let env = env(backend);
        let id = build_attack(&env);
        let locks: Vec<PathBuf> = store_paths(&env)
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "lock") && p.is_file())
            .collect();
        assert!(
            locks.iter().any(|p| p.to_string_lossy().contains("/leases/")),
            "{backend:?}: no lease file among {locks:?}"
        );
        let mut holders = Holders(Vec::new());
        for lock in &locks {
            let child = as_nobody(&["flock", "-x", lock.to_str().unwrap(), "sleep", "600"])
                .process_group(0)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawning flock");
            holders.0.push(child);
        }
        std::thread::sleep(Duration::from_millis(500));
        let mut locked = Vec::new();
        for (child, lock) in holders.0.iter_mut().zip(&locks) {
            if child.try_wait().unwrap().is_none() {
                locked.push(lock.display().to_string());
            }
        }
        // The same build again: it leases every id of its chain.
        let ctx = env.work.path().join("attack");
        let mut build = env
            .build_command(&env.work.path().join("attack.spec"), &ctx, &[])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while build.try_wait().unwrap().is_none() && started.elapsed() < Duration::from_secs(90) {
            std::thread::sleep(Duration::from_millis(100));
        }
        let finished = build.try_wait().unwrap().is_some();
        if !finished {
            let _ = build.kill();
        }
        let out = build.wait_with_output().unwrap();
        drop(holders);
        assert!(locked.is_empty(), "{backend:?}: nobody holds {locked:#?}");
        assert!(finished, "{backend:?}: the rebuild hung behind nobody's locks");
        assert_eq!(stdout(&out).trim(), id, "{backend:?}: {}", stderr(&out));
    }
}

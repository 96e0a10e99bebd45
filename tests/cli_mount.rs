//! `strata mount ID DIR` and `strata umount DIR` on every store (issue 17 item 3): DIR shows
//! the item's full tree (its base's files too), read-only, `nosuid,nodev`; the store keeps no
//! view of its own mounted afterwards (overlayfs); `umount` takes it off. Items are made with
//! the store API directly: no container runtime or registry is needed.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use strata_stores::{Prepared, StepId, Store, StoreSpec};

fn id(n: u64) -> StepId {
    format!("{n:064x}").parse().unwrap()
}

fn strata(spec: &StoreSpec, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(args)
        .args(["--store", &spec.to_string()])
        .env_remove("STRATA_STORE")
        .env_remove("STRATA_LOG")
        .output()
        .expect("running strata")
}

fn build(store: &dyn Store, base: Option<&StepId>, id: &StepId, file: &str) {
    match store.prepare(base, id).unwrap() {
        Prepared::Exists(p) => panic!("{id} exists at {}", p.display()),
        Prepared::Pending(item) => {
            let rootfs = item.path().join("rootfs");
            if !rootfs.exists() {
                fs::create_dir(&rootfs).unwrap();
            }
            fs::write(rootfs.join(file), file).unwrap();
            item.commit().unwrap();
        }
    }
}

/// `(mount point, per-mount options)` of the mounts at or below `dir`.
fn mounts_under(dir: &Path) -> Vec<(PathBuf, String)> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            Some((PathBuf::from(fields.get(4)?), fields.get(5)?.to_string()))
        })
        .filter(|(p, _)| p.starts_with(dir))
        .collect()
}

fn check_mount_and_umount(spec: &StoreSpec) {
    let store = strata_stores::open(spec).unwrap();
    build(&*store, None, &id(1), "base-file");
    build(&*store, Some(&id(1)), &id(2), "child-file");
    let mounts_before = mounts_under(&spec.path()).len();
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("look");
    fs::create_dir(&target).unwrap();
    let t = target.to_str().unwrap();

    let out = strata(spec, &["mount", id(2).as_str(), t]);
    assert!(out.status.success(), "{spec}: {}", String::from_utf8_lossy(&out.stderr));
    let result = std::panic::catch_unwind(|| {
        assert_eq!(fs::read_to_string(target.join("base-file")).unwrap(), "base-file");
        assert_eq!(fs::read_to_string(target.join("child-file")).unwrap(), "child-file");
        let err = fs::write(target.join("new"), "x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{spec}: {err}");
        let here = mounts_under(&target);
        assert_eq!(here.len(), 1, "{spec}: {here:?}");
        let options: Vec<&str> = here[0].1.split(',').collect();
        for wanted in ["ro", "nosuid", "nodev"] {
            assert!(options.contains(&wanted), "{spec}: mounted {options:?}");
        }
        assert_eq!(
            mounts_under(&spec.path()).len(),
            mounts_before,
            "{spec}: the store's own view was released"
        );
    });
    let out = strata(spec, &["umount", t]);
    result.unwrap();
    assert!(out.status.success(), "{spec}: {}", String::from_utf8_lossy(&out.stderr));
    assert!(mounts_under(&target).is_empty());
    assert!(fs::read_dir(&target).unwrap().next().is_none());

    let again = strata(spec, &["umount", t]);
    assert_eq!(again.status.code(), Some(2), "not a mount point any more");
    let unknown = strata(spec, &["mount", id(9).as_str(), t]);
    assert_eq!(
        unknown.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&unknown.stderr)
    );
    assert!(mounts_under(&target).is_empty());
}

fn root() -> bool {
    if strata_testkit::is_root() {
        true
    } else {
        eprintln!("skipping: mounting needs root");
        false
    }
}

#[test]
fn mount_on_overlayfs() {
    if !root() {
        return;
    }
    let dir = strata_testkit::overlay::OverlayDir::plain().unwrap();
    check_mount_and_umount(&StoreSpec::Overlayfs(dir.path().join("store")));
}

#[test]
fn mount_on_btrfs() {
    if !root() {
        return;
    }
    let fs = strata_testkit::stores::LoopFilesystem::btrfs("256M").unwrap();
    check_mount_and_umount(&StoreSpec::Btrfs(fs.mount_point().join("store")));
}

#[test]
fn mount_on_xfs() {
    if !root() {
        return;
    }
    let fs = strata_testkit::stores::LoopFilesystem::xfs("320M").unwrap();
    check_mount_and_umount(&StoreSpec::Xfs(fs.mount_point().join("store")));
}

#[test]
fn mount_on_rsync() {
    if !root() {
        return;
    }
    let dir = strata_testkit::stores::PlainDirectory::create().unwrap();
    let spec: StoreSpec = format!("rsync:{}", dir.path().join("store").display()).parse().unwrap();
    check_mount_and_umount(&spec);
}

#[test]
fn mount_on_zfs() {
    if !root() {
        return;
    }
    let pool = match strata_testkit::zfs::ZfsPool::create(None) {
        Ok(pool) => pool,
        Err(e) => {
            eprintln!("skipping: no zfs pool: {e}");
            return;
        }
    };
    check_mount_and_umount(&pool.spec().parse().unwrap());
}

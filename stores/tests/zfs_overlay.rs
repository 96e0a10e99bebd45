//! Backend-specific tests of the ZFS (zfs-fuse) and overlayfs stores on real filesystems.
//! The shared contract is the conformance suite's; these pin what only these backends do:
//! read-only results without `.zfs/snapshot`, overlay whiteouts, views mounted on demand,
//! flattening of deep bases, mounts of dead builders removed at open.

use std::fs;
use std::path::Path;

use strata_stores::overlay::{mount, OverlayStore};
use strata_stores::{Prepared, StepId, Store, StoreSpec};
use strata_testkit::overlay::OverlayDir;
use strata_testkit::zfs::ZfsPool;

fn id(n: u64) -> StepId {
    format!("{n:064x}").parse().unwrap()
}

fn build(store: &dyn Store, base: Option<&StepId>, id: &StepId, f: impl FnOnce(&Path)) {
    match store.prepare(base, id).unwrap() {
        Prepared::Exists(p) => panic!("{id} exists at {}", p.display()),
        Prepared::Pending(item) => {
            let rootfs = item.path().join("rootfs");
            if !rootfs.exists() {
                fs::create_dir(&rootfs).unwrap();
            }
            f(item.path());
            item.commit().unwrap();
        }
    }
}

fn read(store: &dyn Store, id: &StepId, file: &str) -> Option<String> {
    let view = store.rootfs(id).unwrap();
    fs::read_to_string(view.path().join(file)).ok()
}

/// Results are read-only full trees; a deletion in a child hides the file there only.
fn results_read_only_with_deletions(store: &dyn Store) {
    let (a, b, c) = (id(1), id(2), id(3));
    build(store, None, &a, |p| fs::write(p.join("rootfs/base"), "base").unwrap());
    build(store, Some(&a), &b, |p| {
        fs::create_dir(p.join("rootfs/dir")).unwrap();
        fs::write(p.join("rootfs/dir/new"), "new").unwrap();
    });
    build(store, Some(&b), &c, |p| {
        fs::remove_file(p.join("rootfs/base")).unwrap();
        fs::remove_dir_all(p.join("rootfs/dir")).unwrap();
        fs::create_dir(p.join("rootfs/dir")).unwrap();
    });
    assert_eq!(read(store, &c, "base"), None);
    assert_eq!(read(store, &c, "dir/new"), None, "a recreated directory is opaque");
    assert_eq!(read(store, &b, "base").as_deref(), Some("base"));
    assert_eq!(read(store, &b, "dir/new").as_deref(), Some("new"));
    for item in [&a, &b, &c] {
        let view = store.rootfs(item).unwrap();
        assert!(
            fs::write(view.path().join("x"), "x").is_err(),
            "{item}: results must be read-only"
        );
    }
}

// ---------------------------------------------------------------- zfs

fn zfs_store(pool: &ZfsPool) -> Box<dyn Store> {
    let spec: StoreSpec = pool.spec().parse().unwrap();
    strata_stores::open(&spec).unwrap()
}

#[test]
fn zfs_results_are_read_only_datasets() {
    if !strata_testkit::is_root() {
        eprintln!("skipping: zfs-fuse needs root");
        return;
    }
    let pool = ZfsPool::create(None).unwrap();
    let store = zfs_store(&pool);
    results_read_only_with_deletions(store.as_ref());
    // (`zfs get readonly` on zfs-fuse then shows `off`, source `temporary`, for a mounted
    // dataset set `readonly=on`; the writes above failed all the same.)
}

#[test]
fn zfs_missing_pool_is_an_error_with_stderr() {
    let spec: StoreSpec = "zfs:strata-no-such-pool".parse().unwrap();
    let err = strata_stores::open(&spec).err().expect("no such pool");
    let text = err.to_string();
    assert!(text.contains("strata-no-such-pool"), "{text}");
}

// ---------------------------------------------------------------- overlayfs

fn overlay_spec(dir: &OverlayDir) -> StoreSpec {
    StoreSpec::Overlayfs(dir.path().join("store"))
}

fn skip_unless_root() -> bool {
    if strata_testkit::is_root() {
        false
    } else {
        eprintln!("skipping: overlay mounts need root");
        true
    }
}

#[test]
fn overlay_results_are_read_only_full_trees() {
    if skip_unless_root() {
        return;
    }
    let dir = OverlayDir::plain().unwrap();
    let store = strata_stores::open(&overlay_spec(&dir)).unwrap();
    results_read_only_with_deletions(store.as_ref());
    // The layer holds only the item's own changes; env and log live beside it.
    let item = store.result(&id(2)).unwrap().unwrap();
    assert!(item.join("diff/dir/new").exists());
    assert!(!item.join("diff/base").exists());
}

#[test]
fn overlay_on_tmpfs() {
    if skip_unless_root() {
        return;
    }
    let dir = OverlayDir::tmpfs().unwrap();
    let store = strata_stores::open(&overlay_spec(&dir)).unwrap();
    results_read_only_with_deletions(store.as_ref());
}

#[test]
fn overlay_views_are_mounted_on_demand() {
    if skip_unless_root() {
        return;
    }
    let dir = OverlayDir::plain().unwrap();
    let store = strata_stores::open(&overlay_spec(&dir)).unwrap();
    build(store.as_ref(), None, &id(1), |p| {
        fs::write(p.join("rootfs/a"), "a").unwrap()
    });
    build(store.as_ref(), Some(&id(1)), &id(2), |p| {
        fs::write(p.join("rootfs/b"), "b").unwrap()
    });
    // An idle store holds no mount (and after a reboot there is none): a view is mounted
    // for as long as it is held.
    assert!(mount::mounts_under(dir.path()).unwrap().is_empty());
    assert_eq!(read(store.as_ref(), &id(2), "a").as_deref(), Some("a"));
    assert_eq!(read(store.as_ref(), &id(2), "b").as_deref(), Some("b"));
    assert!(mount::mounts_under(dir.path()).unwrap().is_empty());
}

#[test]
fn overlay_flattens_deep_bases() {
    if skip_unless_root() {
        return;
    }
    let dir = OverlayDir::plain().unwrap();
    let store = OverlayStore::open(&overlay_spec(&dir), 8).unwrap();
    let mut parent = None;
    for n in 1..=20u64 {
        build(&store, parent.as_ref(), &id(n), |p| {
            fs::write(p.join(format!("rootfs/f{n}")), n.to_string()).unwrap();
            if n == 5 {
                fs::remove_file(p.join("rootfs/f1")).unwrap();
            }
        });
        parent = Some(id(n));
    }
    let top = store.rootfs(&id(20)).unwrap();
    for n in 2..=20u64 {
        assert_eq!(
            fs::read_to_string(top.path().join(format!("f{n}"))).unwrap(),
            n.to_string()
        );
    }
    assert!(!top.path().join("f1").exists(), "a deletion survives flattening");
    // Item 9 was built on an 8-layer base: it is a root layer holding the full tree.
    let flat = store.result(&id(9)).unwrap().unwrap();
    assert!(!flat.join("parent").exists());
    assert!(flat.join("diff/f2").exists());
}

#[test]
fn overlay_chain_deeper_than_the_mount_option_page() {
    if skip_unless_root() {
        return;
    }
    // Long layer paths: 80 of them are far beyond one page of `lowerdir=a:b:...`.
    let dir = OverlayDir::plain().unwrap();
    let deep = dir
        .path()
        .join("a-rather-long-directory-name-to-make-layer-paths-long".repeat(2));
    let store = strata_stores::open(&StoreSpec::Overlayfs(deep.join("store"))).unwrap();
    let mut parent = None;
    for n in 1..=80u64 {
        build(store.as_ref(), parent.as_ref(), &id(n), |p| {
            fs::write(p.join(format!("rootfs/f{n}")), "x").unwrap()
        });
        parent = Some(id(n));
    }
    let view = store.rootfs(&id(80)).unwrap();
    assert_eq!(fs::read_dir(view.path()).unwrap().count(), 80);
}

#[test]
fn overlay_mounts_of_dead_builders_are_removed_at_open() {
    if skip_unless_root() {
        return;
    }
    let dir = OverlayDir::plain().unwrap();
    let spec = overlay_spec(&dir);
    let dead = strata_stores::open(&spec).unwrap();
    build(dead.as_ref(), None, &id(1), |p| {
        fs::write(p.join("rootfs/a"), "a").unwrap()
    });
    let Prepared::Pending(item) = dead.prepare(Some(&id(1)), &id(2)).unwrap() else {
        panic!("not built yet");
    };
    let tmp = item.path().to_path_buf();
    assert!(mount::is_mount_point(&tmp.join("rootfs")).unwrap());
    std::mem::forget(item);
    drop(dead);
    let _store = strata_stores::open(&spec).unwrap();
    assert!(!tmp.exists(), "the dead build's temporary was removed");
    let tmp_dir = spec.path().join("result-tmp");
    assert!(mount::mounts_under(&tmp_dir).unwrap().is_empty());
}

//! Focused tests of the ZFS (zfs-fuse) and overlayfs backends on real filesystems. The shared
//! conformance suite covers the common contract; these pin backend-specific behaviour.

use std::fs;
use std::path::Path;

use strata_stores::{Prepared, StepId, Store, StoreError, StoreSpec};
use strata_testkit::zfs::ZfsPool;

fn id(n: u64) -> StepId {
    format!("{n:064x}").parse().unwrap()
}

fn build(store: &dyn Store, base: Option<&StepId>, id: &StepId, f: impl FnOnce(&Path)) -> std::path::PathBuf {
    match store.prepare(base, id).unwrap() {
        Prepared::Exists(p) => p,
        Prepared::Pending(item) => {
            let path = item.path().to_owned();
            fs::create_dir_all(path.join("rootfs")).unwrap();
            f(&path);
            item.commit().unwrap().path
        }
    }
}

fn read(store: &dyn Store, id: &StepId, file: &str) -> Option<String> {
    let view = store.rootfs(id).unwrap();
    fs::read_to_string(view.path().join(file)).ok()
}

fn exercise(store: &dyn Store) {
    let (a, b, c) = (id(1), id(2), id(3));
    assert!(store.result(&a).unwrap().is_none());
    build(store, None, &a, |p| {
        fs::write(p.join("rootfs/base"), "base").unwrap();
        fs::write(p.join("log"), "log a").unwrap();
    });
    assert!(store.result(&a).unwrap().is_some());
    build(store, Some(&a), &b, |p| {
        assert_eq!(fs::read_to_string(p.join("rootfs/base")).unwrap(), "base");
        fs::write(p.join("rootfs/base"), "changed").unwrap();
        fs::write(p.join("rootfs/new"), "new").unwrap();
    });
    assert_eq!(read(store, &a, "base").as_deref(), Some("base"));
    assert_eq!(read(store, &a, "new"), None);
    assert_eq!(read(store, &b, "base").as_deref(), Some("changed"));
    assert_eq!(read(store, &b, "new").as_deref(), Some("new"));
    // A deletion in a child hides the file in the child only.
    build(store, Some(&b), &c, |p| fs::remove_file(p.join("rootfs/new")).unwrap());
    assert_eq!(read(store, &c, "new"), None);
    assert_eq!(read(store, &b, "new").as_deref(), Some("new"));
    // A result is read-only.
    let view = store.rootfs(&b).unwrap();
    assert!(
        fs::write(view.path().join("x"), "x").is_err(),
        "results must be read-only"
    );
    drop(view);

    // A failed build records nothing.
    let d = id(4);
    match store.prepare(Some(&a), &d).unwrap() {
        Prepared::Pending(item) => {
            fs::write(item.path().join("rootfs/junk"), "j").unwrap();
            item.abort().unwrap();
        }
        Prepared::Exists(_) => panic!("not built yet"),
    }
    assert!(store.result(&d).unwrap().is_none());
    match store.prepare(Some(&a), &d).unwrap() {
        Prepared::Pending(item) => drop(item),
        Prepared::Exists(_) => panic!("not built yet"),
    }
    assert!(store.result(&d).unwrap().is_none());
    assert!(matches!(store.prepare(Some(&a), &a).unwrap(), Prepared::Exists(_)));

    let mut listed = store.list_results().unwrap();
    listed.sort();
    assert_eq!(listed, vec![a.clone(), b.clone(), c.clone()]);
    store.delete(&c).unwrap();
    assert!(store.result(&c).unwrap().is_none());
    store.complete_deletes().unwrap();
    let usage = store.disk_usage().unwrap();
    assert!(usage.total_bytes > 0 && usage.free_bytes <= usage.total_bytes);

    exercise_caches(store);
}

fn exercise_caches(store: &dyn Store) {
    use std::os::unix::fs::MetadataExt;
    let lease = store.cache("opam", 123, 456).unwrap();
    let meta = fs::metadata(lease.path()).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (123, 456));
    assert_eq!(fs::read_dir(lease.path()).unwrap().count(), 0);
    fs::write(lease.path().join("f"), "1").unwrap();
    lease.release().unwrap();
    // Two concurrent leases: the first released wins.
    let first = store.cache("opam", 0, 0).unwrap();
    let second = store.cache("opam", 0, 0).unwrap();
    assert_eq!(fs::read_to_string(first.path().join("f")).unwrap(), "1");
    fs::write(first.path().join("f"), "first").unwrap();
    fs::write(second.path().join("f"), "second").unwrap();
    first.release().unwrap();
    second.release().unwrap();
    let again = store.cache("opam", 0, 0).unwrap();
    assert_eq!(fs::read_to_string(again.path().join("f")).unwrap(), "first");
    assert!(matches!(store.delete_cache("opam"), Err(StoreError::Busy(_))));
    again.release().unwrap();
    for hostile in ["../x", "a/b", "%2e", ".."] {
        let lease = store.cache(hostile, 0, 0).unwrap();
        assert!(
            lease.path().starts_with(store.root()),
            "{hostile}: {}",
            lease.path().display()
        );
        fs::write(lease.path().join("h"), hostile).unwrap();
        lease.release().unwrap();
    }
    let mut caches = store.list_caches().unwrap();
    caches.sort();
    assert_eq!(caches, vec!["%2e", "..", "../x", "a/b", "opam"]);
    store.delete_cache("opam").unwrap();
    let fresh = store.cache("opam", 0, 0).unwrap();
    assert_eq!(fs::read_dir(fresh.path()).unwrap().count(), 0);
    fresh.release().unwrap();
}

fn chain(store: &dyn Store, depth: u64) {
    let mut parent: Option<StepId> = None;
    for n in 0..depth {
        let this = id(1000 + n);
        build(store, parent.as_ref(), &this, |p| {
            fs::write(p.join(format!("rootfs/f{n}")), n.to_string()).unwrap();
        });
        parent = Some(this);
    }
    let top = parent.unwrap();
    let view = store.rootfs(&top).unwrap();
    for n in 0..depth {
        assert_eq!(
            fs::read_to_string(view.path().join(format!("f{n}"))).unwrap(),
            n.to_string()
        );
    }
}

fn zfs_store(pool: &ZfsPool) -> Box<dyn Store> {
    let spec: StoreSpec = pool.spec().parse().unwrap();
    strata_stores::open(&spec).unwrap()
}

#[test]
fn zfs_contract() {
    if !strata_testkit::is_root() {
        eprintln!("skipping: zfs-fuse needs root");
        return;
    }
    let pool = ZfsPool::create(None).unwrap();
    let store = zfs_store(&pool);
    exercise(store.as_ref());
    chain(store.as_ref(), 30);
}

#[test]
fn zfs_leftovers_of_dead_owners_are_destroyed_at_open() {
    if !strata_testkit::is_root() {
        eprintln!("skipping: zfs-fuse needs root");
        return;
    }
    let pool = ZfsPool::create(None).unwrap();
    let store = zfs_store(&pool);
    drop(store);
    // A temporary named like one of a process that died.
    let ds = format!("{}/result-tmp/1.deadbeef--0-{}", pool.pool, id(9));
    assert!(std::process::Command::new("zfs")
        .args(["create", &ds])
        .status()
        .unwrap()
        .success());
    let store = zfs_store(&pool);
    let out = std::process::Command::new("zfs").args(["list", &ds]).output().unwrap();
    assert!(!out.status.success(), "leftover {ds} survived open");
    assert!(store.result(&id(9)).unwrap().is_none());
}

#[test]
fn zfs_missing_pool_is_an_error_with_stderr() {
    let spec: StoreSpec = "zfs:strata-no-such-pool".parse().unwrap();
    let err = strata_stores::open(&spec).err().expect("no such pool");
    let text = err.to_string();
    assert!(text.contains("strata-no-such-pool"), "{text}");
}

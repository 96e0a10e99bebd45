//! One conformance suite for every store backend, run on real filesystems.
//!
//! Each case is a plain function taking a [`support::BackendFixture`]; the `backend!` lines
//! at the bottom instantiate every case as a `#[test]` per backend (`btrfs::chain_of_200_clones`,
//! `rsync::chain_of_200_clones`, ...). A new backend is one fixture function in
//! `support/mod.rs` and one `backend!` line here.

mod support;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Barrier;
use std::time::Duration;

use strata_stores::{PendingItem, Prepared, StepId, Store, StoreError, StoreSpec};
use support::BackendFixture;

fn id(n: u64) -> StepId {
    format!("{n:064x}").parse().unwrap()
}

/// Prepares `id` (which must not exist yet), runs `fill` in its directory and commits.
fn build(store: &dyn Store, base: Option<&StepId>, id: &StepId, fill: impl FnOnce(&Path)) -> strata_stores::Committed {
    match store.prepare(base, id).unwrap() {
        Prepared::Exists(p) => panic!("{id} exists already at {}", p.display()),
        Prepared::Pending(pending) => {
            fill(pending.path());
            pending.commit().unwrap()
        }
    }
}

fn pending<'a>(store: &'a dyn Store, base: Option<&StepId>, id: &StepId) -> Box<dyn PendingItem + 'a> {
    match store.prepare(base, id).unwrap() {
        Prepared::Exists(p) => panic!("{id} exists already at {}", p.display()),
        Prepared::Pending(p) => p,
    }
}

fn write(dir: &Path, rel: &str, content: &str) {
    let path = dir.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, content).unwrap();
}

fn read(dir: &Path, rel: &str) -> Option<String> {
    fs::read_to_string(dir.join(rel)).ok()
}

/// A file of a committed item's full tree, read through a view (`result/<id>/rootfs` holds the
/// full tree only on some backends: on overlayfs it is a mount point while no view is held).
fn read_item(store: &dyn Store, id: &StepId, rel: &str) -> Option<String> {
    let view = store.rootfs(id).unwrap();
    read(view.path(), rel)
}

fn names(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .map(|r| {
            r.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------- cases

pub fn unknown_id_has_no_result(f: &BackendFixture) {
    let store = f.open();
    assert!(store.result(&id(1)).unwrap().is_none());
    assert!(store.list_results().unwrap().is_empty());
    assert!(store.rootfs(&id(1)).is_err());
    assert!(store.delete(&id(1)).is_ok(), "deleting an unknown id is a no-op");
    let usage = store.disk_usage().unwrap();
    assert!(
        usage.total_bytes > 0 && usage.free_bytes <= usage.total_bytes,
        "{usage:?}"
    );
}

pub fn build_without_base(f: &BackendFixture) {
    let store = f.open();
    let committed = build(&*store, None, &id(1), |dir| {
        write(dir, "rootfs/etc/hello", "hello");
        write(dir, "log", "a log\n");
    });
    let path = store.result(&id(1)).unwrap().expect("committed");
    assert_eq!(committed.path, path);
    assert!(committed.size_bytes >= 5, "size {}", committed.size_bytes);
    assert_eq!(read_item(&*store, &id(1), "etc/hello").as_deref(), Some("hello"));
    assert_eq!(read(&path, "log").as_deref(), Some("a log\n"));
    assert_eq!(store.list_results().unwrap(), vec![id(1)]);
    let view = store.rootfs(&id(1)).unwrap();
    assert_eq!(read(view.path(), "etc/hello").as_deref(), Some("hello"));
}

pub fn build_with_base(f: &BackendFixture) {
    let store = f.open();
    build(&*store, None, &id(1), |dir| write(dir, "rootfs/a", "from base"));
    build(&*store, Some(&id(1)), &id(2), |dir| {
        assert_eq!(
            read(dir, "rootfs/a").as_deref(),
            Some("from base"),
            "the clone has the base's files"
        );
        write(dir, "rootfs/b", "from child");
    });
    assert!(store.result(&id(2)).unwrap().is_some());
    assert_eq!(read_item(&*store, &id(2), "a").as_deref(), Some("from base"));
    assert_eq!(read_item(&*store, &id(2), "b").as_deref(), Some("from child"));
    assert_eq!(read_item(&*store, &id(1), "b"), None);
    assert!(matches!(
        store.prepare(Some(&id(9)), &id(3)),
        Err(StoreError::NotFound(_))
    ));
}

pub fn clone_is_copy_on_write_and_faithful(f: &BackendFixture) {
    let store = f.open();
    build(&*store, None, &id(1), |dir| {
        write(dir, "rootfs/keep", "original");
        write(dir, "rootfs/gone", "original");
        let tool = dir.join("rootfs/tool");
        fs::write(&tool, "#!/bin/sh\n").unwrap();
        std::os::unix::fs::chown(&tool, Some(1000), Some(1001)).unwrap();
        fs::set_permissions(&tool, fs::Permissions::from_mode(0o4755)).unwrap();
        std::os::unix::fs::symlink("tool", dir.join("rootfs/link")).unwrap();
        fs::hard_link(&tool, dir.join("rootfs/hard")).unwrap();
    });
    build(&*store, Some(&id(1)), &id(2), |dir| {
        let tool = fs::metadata(dir.join("rootfs/tool")).unwrap();
        assert_eq!((tool.uid(), tool.gid(), tool.mode() & 0o7777), (1000, 1001, 0o4755));
        assert_eq!(fs::read_link(dir.join("rootfs/link")).unwrap(), Path::new("tool"));
        assert_eq!(fs::metadata(dir.join("rootfs/hard")).unwrap().ino(), tool.ino());
        fs::write(dir.join("rootfs/keep"), "changed").unwrap();
        fs::remove_file(dir.join("rootfs/gone")).unwrap();
    });
    let base = store.rootfs(&id(1)).unwrap();
    assert_eq!(read(base.path(), "keep").as_deref(), Some("original"));
    assert_eq!(read(base.path(), "gone").as_deref(), Some("original"));
    let child = store.rootfs(&id(2)).unwrap();
    assert_eq!(read(child.path(), "keep").as_deref(), Some("changed"));
    assert_eq!(read(child.path(), "gone"), None);
}

pub fn failed_build_records_nothing(f: &BackendFixture) {
    let store = f.open();
    build(&*store, None, &id(1), |dir| write(dir, "rootfs/a", "a"));
    let p = pending(&*store, Some(&id(1)), &id(2));
    let tmp = p.path().to_path_buf();
    write(&tmp, "rootfs/b", "b");
    p.abort().unwrap();
    assert!(store.result(&id(2)).unwrap().is_none());
    assert!(!tmp.exists(), "aborted temporary {} removed", tmp.display());

    let p = pending(&*store, None, &id(3));
    let tmp = p.path().to_path_buf();
    drop(p);
    assert!(store.result(&id(3)).unwrap().is_none());
    assert!(!tmp.exists(), "dropped temporary {} removed", tmp.display());
    assert_eq!(store.list_results().unwrap(), vec![id(1)]);
    // The id can be built afterwards.
    build(&*store, Some(&id(1)), &id(2), |_| {});
}

pub fn delete_removes_the_item(f: &BackendFixture) {
    let store = f.open();
    build(&*store, None, &id(1), |dir| write(dir, "rootfs/a", "a"));
    build(&*store, Some(&id(1)), &id(2), |_| {});
    store.delete(&id(2)).unwrap();
    assert!(store.result(&id(2)).unwrap().is_none());
    store.delete(&id(2)).unwrap();
    store.delete(&id(1)).unwrap();
    assert!(store.list_results().unwrap().is_empty());
    store.complete_deletes().unwrap();
    build(&*store, None, &id(1), |dir| write(dir, "rootfs/a", "again"));
    assert_eq!(read_item(&*store, &id(1), "a").as_deref(), Some("again"));
}

pub fn prepare_of_an_id_committed_meanwhile_returns_exists(f: &BackendFixture) {
    let first = f.open();
    let second = f.open(); // another process, as far as the store can tell
    let p = pending(&*first, None, &id(1));
    write(p.path(), "rootfs/a", "first");
    std::thread::scope(|s| {
        let waiter = s.spawn(|| match second.prepare(None, &id(1)).unwrap() {
            Prepared::Exists(_) => read_item(&*second, &id(1), "a"),
            Prepared::Pending(_) => panic!("the second builder must wait and find the result"),
        });
        std::thread::sleep(Duration::from_millis(300));
        assert!(!waiter.is_finished(), "the second prepare waits for the per-id lock");
        p.commit().unwrap();
        assert_eq!(waiter.join().unwrap().as_deref(), Some("first"));
    });
}

pub fn two_threads_preparing_the_same_id_serialize(f: &BackendFixture) {
    let store = f.open();
    let inside = AtomicUsize::new(0);
    let built = AtomicUsize::new(0);
    let barrier = Barrier::new(4);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                barrier.wait();
                match store.prepare(None, &id(7)).unwrap() {
                    Prepared::Pending(p) => {
                        assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "one builder at a time");
                        std::thread::sleep(Duration::from_millis(100));
                        write(p.path(), "rootfs/x", "x");
                        inside.fetch_sub(1, Ordering::SeqCst);
                        p.commit().unwrap();
                        built.fetch_add(1, Ordering::SeqCst);
                    }
                    Prepared::Exists(_) => assert_eq!(read_item(&*store, &id(7), "x").as_deref(), Some("x")),
                }
            });
        }
    });
    assert_eq!(built.load(Ordering::SeqCst), 1);
}

pub fn new_cache_is_empty_and_owned(f: &BackendFixture) {
    let store = f.open();
    let lease = store.cache("opam", 123, 456).unwrap();
    let meta = fs::metadata(lease.path()).unwrap();
    assert!(meta.is_dir());
    assert_eq!((meta.uid(), meta.gid()), (123, 456));
    assert!(names(lease.path()).is_empty(), "a new cache is empty");
    lease.release().unwrap();
    assert_eq!(store.list_caches().unwrap(), vec!["opam".to_owned()]);
}

pub fn cache_write_release_reread(f: &BackendFixture) {
    let store = f.open();
    let lease = store.cache("c", 0, 0).unwrap();
    write(lease.path(), "sub/data", "v1");
    lease.release().unwrap();
    let other = f.open(); // another process sees the released version
    let lease = other.cache("c", 0, 0).unwrap();
    assert_eq!(read(lease.path(), "sub/data").as_deref(), Some("v1"));
    write(lease.path(), "sub/data", "v2");
    lease.release().unwrap();
    let lease = store.cache("c", 0, 0).unwrap();
    assert_eq!(read(lease.path(), "sub/data").as_deref(), Some("v2"));
    drop(lease); // dropped without release: discarded
    let lease = store.cache("c", 0, 0).unwrap();
    assert_eq!(read(lease.path(), "sub/data").as_deref(), Some("v2"));
    lease.release().unwrap();
}

pub fn concurrent_leases_first_release_wins(f: &BackendFixture) {
    let one = f.open();
    let two = f.open();
    let a = one.cache("c", 0, 0).unwrap();
    let b = two.cache("c", 0, 0).unwrap();
    assert_ne!(a.path(), b.path(), "private copies");
    write(a.path(), "who", "a");
    write(b.path(), "who", "b");
    assert_eq!(read(a.path(), "who").as_deref(), Some("a"));
    b.release().unwrap();
    a.release().unwrap();
    let lease = one.cache("c", 0, 0).unwrap();
    assert_eq!(
        read(lease.path(), "who").as_deref(),
        Some("b"),
        "the first released wins"
    );
    lease.release().unwrap();
    let leftovers = names(&f.spec.path().join("cache-tmp"));
    assert!(
        leftovers.is_empty() || !f.spec.path().join("cache-tmp").is_dir(),
        "{leftovers:?}"
    );
}

pub fn delete_cache_while_in_use(f: &BackendFixture) {
    let store = f.open();
    let lease = store.cache("c", 0, 0).unwrap();
    write(lease.path(), "x", "1");
    lease.release().unwrap();
    let lease = store.cache("c", 0, 0).unwrap();
    write(lease.path(), "x", "2");
    match store.delete_cache("c") {
        Ok(()) => {
            assert!(store.list_caches().unwrap().is_empty());
            lease.release().unwrap();
            let fresh = store.cache("c", 0, 0).unwrap();
            assert!(
                names(fresh.path()).is_empty(),
                "a lease taken before the delete is discarded"
            );
            fresh.release().unwrap();
        }
        Err(StoreError::Busy(name)) => {
            assert_eq!(name, "c");
            lease.release().unwrap();
            store.delete_cache("c").unwrap();
            assert!(store.list_caches().unwrap().is_empty());
            let fresh = store.cache("c", 0, 0).unwrap();
            assert!(names(fresh.path()).is_empty(), "deleted");
            fresh.release().unwrap();
        }
        Err(e) => panic!("delete_cache: {e}"),
    }
    store.delete_cache("c").unwrap();
    store.delete_cache("never-existed").unwrap();
    assert!(store.list_caches().unwrap().is_empty());
}

pub fn hostile_cache_names(f: &BackendFixture) {
    let store = f.open();
    let hostile = ["../x", "a/b", "..", ".", "", "é☃ünï", "a\0b", "-rf", "%2f", "c-x"];
    let root = f.spec.path();
    let before = names(&f.scratch);
    for (n, name) in hostile.iter().enumerate() {
        let lease = store
            .cache(name, 0, 0)
            .unwrap_or_else(|e| panic!("cache {name:?}: {e}"));
        assert!(
            lease.path().starts_with(&root),
            "{name:?} -> {}",
            lease.path().display()
        );
        write(lease.path(), "marker", &n.to_string());
        lease.release().unwrap();
    }
    let listed: BTreeSet<String> = store.list_caches().unwrap().into_iter().collect();
    let expected: BTreeSet<String> = hostile.iter().map(|s| s.to_string()).collect();
    assert_eq!(listed, expected, "every name is its own cache, listed unescaped");
    for (n, name) in hostile.iter().enumerate() {
        let lease = store.cache(name, 0, 0).unwrap();
        assert_eq!(
            read(lease.path(), "marker"),
            Some(n.to_string()),
            "{name:?} kept its own content"
        );
        lease.release().unwrap();
    }
    assert_eq!(names(&f.scratch), before, "nothing created next to the store");
    assert!(!root.join("x").exists() && !root.join("b").exists());
    let long = "x/".repeat(200);
    match store.cache(&long, 0, 0) {
        Err(StoreError::InvalidCacheName { .. }) => {}
        Err(e) => panic!("wrong error for a long name: {e}"),
        Ok(_) => panic!("a very long cache name must be refused"),
    }
    assert!(store.delete_cache(&long).is_err());
    for name in hostile {
        store.delete_cache(name).unwrap();
    }
    assert!(store.list_caches().unwrap().is_empty());
}

/// Set to a store spec, the test binary plays a builder that dies mid-build (see
/// [`dead_builder`]); unset, that test does nothing.
const DEAD_BUILDER_SPEC: &str = "STRATA_TEST_DEAD_BUILDER_SPEC";

/// A builder process killed mid-build: it leaves a pending item and a cache copy behind, and
/// the kernel closes its descriptors (so its owner and build locks go, and nothing keeps the
/// store's filesystem busy afterwards).
#[test]
fn dead_builder() {
    let Ok(spec) = std::env::var(DEAD_BUILDER_SPEC) else {
        return;
    };
    let store = strata_stores::open(&spec.parse().unwrap()).unwrap();
    let item = pending(&*store, None, &id(1));
    write(item.path(), "rootfs/partial", "x");
    let lease = store.cache("dead-cache", 0, 0).unwrap();
    println!("dead-item {}", item.path().display());
    println!("dead-lease {}", lease.path().display());
    std::io::Write::flush(&mut std::io::stdout()).unwrap();
    nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL).unwrap();
}

/// Runs [`dead_builder`] on `spec` in a child process; returns the item and cache copy it left.
fn run_dead_builder(spec: &StoreSpec) -> (PathBuf, PathBuf) {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "dead_builder", "--nocapture", "--test-threads=1"])
        .env(DEAD_BUILDER_SPEC, spec.to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let find = |tag: &str| {
        stdout
            .lines()
            .find_map(|l| l.split_once(tag).map(|(_, path)| path))
            .map(PathBuf::from)
            .unwrap_or_else(|| panic!("the dead builder printed no {tag:?} ({}): {stdout}", out.status))
    };
    (find("dead-item "), find("dead-lease "))
}

pub fn leftovers_cleaned_at_open(f: &BackendFixture) {
    let (dead_item_path, dead_lease_path) = run_dead_builder(&f.spec);
    assert!(dead_item_path.exists() && dead_lease_path.exists());

    // A live process with work in flight.
    let live = f.open();
    let live_item = pending(&*live, None, &id(2));
    write(live_item.path(), "rootfs/live", "y");
    let live_lease = live.cache("live-cache", 0, 0).unwrap();
    write(live_lease.path(), "data", "z");

    let reopened = f.open();
    assert!(!dead_item_path.exists(), "the dead build's temporary was removed");
    assert!(!dead_lease_path.exists(), "the dead cache copy was removed");
    assert!(live_item.path().exists(), "the live build's temporary survives");
    assert!(live_lease.path().exists(), "the live cache copy survives");

    live_item.commit().unwrap();
    live_lease.release().unwrap();
    assert_eq!(read_item(&*reopened, &id(2), "live").as_deref(), Some("y"));
    let lease = reopened.cache("live-cache", 0, 0).unwrap();
    assert_eq!(read(lease.path(), "data").as_deref(), Some("z"));
    lease.release().unwrap();
    assert!(reopened.result(&id(1)).unwrap().is_none());
}

pub fn chain_of_200_clones(f: &BackendFixture) {
    let store = f.open();
    let mut parent: Option<StepId> = None;
    for n in 1..=200u64 {
        let this = id(n);
        build(&*store, parent.as_ref(), &this, |dir| {
            write(dir, &format!("rootfs/steps/{n}"), &n.to_string());
        });
        parent = Some(this);
    }
    let last = store.rootfs(&id(200)).unwrap();
    let seen = names(&last.path().join("steps"));
    assert_eq!(seen.len(), 200);
    for n in 1..=200u64 {
        assert_eq!(read(last.path(), &format!("steps/{n}")), Some(n.to_string()));
    }
    let first = store.rootfs(&id(1)).unwrap();
    assert_eq!(names(&first.path().join("steps")).len(), 1);
}

pub fn reopen_keeps_results_and_caches(f: &BackendFixture) {
    {
        let store = f.open();
        build(&*store, None, &id(1), |dir| write(dir, "rootfs/a", "a"));
        let lease = store.cache("c", 0, 0).unwrap();
        write(lease.path(), "x", "kept");
        lease.release().unwrap();
    }
    let store = f.open();
    assert_eq!(store.list_results().unwrap(), vec![id(1)]);
    let lease = store.cache("c", 0, 0).unwrap();
    assert_eq!(read(lease.path(), "x").as_deref(), Some("kept"));
    lease.release().unwrap();
}

/// Mount points at or below `dir` with their per-mount options (`ro,nosuid,nodev,...`).
fn mounts_under(dir: &Path) -> Vec<(PathBuf, String)> {
    let unescape = |field: &str| field.replace("\\040", " ");
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            Some((PathBuf::from(unescape(fields.get(4)?)), fields.get(5)?.to_string()))
        })
        .filter(|(p, _)| p.starts_with(dir))
        .collect()
}

/// What a store must keep from other host users, checked after results, a clone, a pending
/// item and cache leases exist: the root and every directory at the top levels (the root's
/// entries and `state/`'s) are 0700 and owned by root, every file in `state/` strata wrote
/// itself (locks, generations, owners) is 0600, and every view of a result the store mounts
/// (on overlayfs `result/<id>/rootfs`) is `ro,nosuid,nodev`. Items themselves stay as the
/// step left them (setuid binaries and all): the private directories are what keeps them
/// from other users.
pub fn store_is_private(f: &BackendFixture) {
    let store = f.open();
    build(&*store, None, &id(1), |dir| {
        write(dir, "rootfs/etc/hello", "hello");
        let tmp = dir.join("rootfs/tmp");
        fs::create_dir(&tmp).unwrap();
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o1777)).unwrap();
        write(dir, "log", "log");
    });
    build(&*store, Some(&id(1)), &id(2), |dir| write(dir, "rootfs/b", "b"));
    let _view = store.rootfs(&id(2)).unwrap();
    let _pending = pending(&*store, Some(&id(2)), &id(3));
    let released = store.cache("c", 1000, 1000).unwrap();
    write(released.path(), "x", "x");
    released.release().unwrap();
    let _lease = store.cache("c", 1000, 1000).unwrap();

    let root = store.root().to_path_buf();
    let state = store.state_dir();
    let mut top: Vec<PathBuf> = vec![root.clone()];
    for dir in [&root, &state] {
        for entry in fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                top.push(entry.path());
            }
        }
    }
    for name in ["result", "result-tmp", "cache", "cache-tmp", "state"] {
        assert!(top.contains(&root.join(name)), "{name} missing from {top:?}");
    }
    for dir in &top {
        let meta = fs::metadata(dir).unwrap();
        assert_eq!(
            (meta.mode() & 0o7777, meta.uid()),
            (0o700, 0),
            "{} must be private (0700, root's)",
            dir.display()
        );
    }
    let mut files = 0;
    for dir in &top {
        if !dir.starts_with(&state) || !fs::symlink_metadata(dir).unwrap().is_dir() {
            continue;
        }
        for entry in fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            if meta.is_file() && (dir != &state || entry.file_name() != "db") {
                files += 1;
                assert_eq!(meta.mode() & 0o777, 0o600, "{} must be 0600", entry.path().display());
            }
        }
    }
    assert!(files >= 3, "expected lock and generation files in {}", state.display());

    let views: Vec<(PathBuf, String)> = mounts_under(&root.join("result"))
        .into_iter()
        .filter(|(p, _)| p.ends_with("rootfs"))
        .collect();
    if matches!(f.spec, StoreSpec::Overlayfs(_)) {
        assert_eq!(views.len(), 1, "overlay views: the one held, {views:?}");
    }
    for (view, options) in &views {
        let options: BTreeSet<&str> = options.split(',').collect();
        for wanted in ["ro", "nosuid", "nodev"] {
            assert!(
                options.contains(wanted),
                "view {} is mounted {options:?}, without {wanted}",
                view.display()
            );
        }
    }
    // A step's own rootfs (the writable overlay of a pending item) keeps setuid working.
    for (mount, options) in mounts_under(&root.join("result-tmp")) {
        assert!(
            !options.split(',').any(|o| o == "nosuid"),
            "{} is a step's rootfs: setuid must work there ({options})",
            mount.display()
        );
    }
}

/// A store an older strata made with 0755 directories and 0644 lock files is made private
/// when opened.
pub fn opening_tightens_an_old_store(f: &BackendFixture) {
    let store = f.open();
    build(&*store, None, &id(1), |dir| write(dir, "rootfs/a", "a"));
    let root = store.root().to_path_buf();
    let state = store.state_dir();
    let lock = state.join("locks").join(format!("{}.lock", id(1)));
    assert!(lock.is_file(), "{} missing", lock.display());
    drop(store);
    let loosen = |p: &Path, mode: u32| fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
    for dir in [&root, &root.join("result"), &root.join("cache"), &state] {
        loosen(dir, 0o755);
    }
    let store = f.open();
    for dir in [&root, &root.join("result"), &root.join("cache"), &state] {
        assert_eq!(fs::metadata(dir).unwrap().mode() & 0o7777, 0o700, "{}", dir.display());
    }
    assert_eq!(read_item(&*store, &id(1), "a").as_deref(), Some("a"));
}

// ---------------------------------------------------------------- instantiation

macro_rules! instantiate {
    ($fixture:path => $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                if let Some(fixture) = $fixture() {
                    crate::$case(&fixture);
                }
            }
        )*
    };
}

/// Every case, as a `#[test]` in module `$name`, on fixtures from `$fixture`.
macro_rules! backend {
    ($name:ident, $fixture:path) => {
        mod $name {
            instantiate!($fixture =>
                unknown_id_has_no_result,
                build_without_base,
                build_with_base,
                clone_is_copy_on_write_and_faithful,
                failed_build_records_nothing,
                delete_removes_the_item,
                prepare_of_an_id_committed_meanwhile_returns_exists,
                two_threads_preparing_the_same_id_serialize,
                new_cache_is_empty_and_owned,
                cache_write_release_reread,
                concurrent_leases_first_release_wins,
                delete_cache_while_in_use,
                hostile_cache_names,
                leftovers_cleaned_at_open,
                chain_of_200_clones,
                reopen_keeps_results_and_caches,
                store_is_private,
                opening_tightens_an_old_store,
            );
        }
    };
}

backend!(btrfs, crate::support::btrfs);
backend!(rsync, crate::support::rsync);
backend!(xfs, crate::support::xfs);
backend!(zfs, crate::support::zfs);
backend!(overlayfs, crate::support::overlayfs);

/// The overlayfs cases again with `mount(2)` instead of `lowerdir+` (how kernels before 6.8,
/// Debian 12's 6.1 among them, mount overlays), forced by `STRATA_OVERLAY_MOUNT=legacy` in a
/// child run of this binary.
#[test]
fn overlayfs_cases_with_legacy_mounts() {
    if std::env::var_os("STRATA_OVERLAY_MOUNT").is_some() || support::overlayfs().is_none() {
        return; // the child run itself, or no root
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["overlayfs::", "--test-threads=2"])
        .env("STRATA_OVERLAY_MOUNT", "legacy")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("test overlayfs::chain_of_200_clones ... ok"),
        "{}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------- opening errors

/// Opening a store on an unusable path is a clear error, never a panic.
mod open_errors {
    use super::*;

    fn open_err(spec: &str) -> StoreError {
        let spec: StoreSpec = spec.parse().unwrap();
        match strata_stores::open(&spec) {
            Ok(_) => panic!("{spec} opened"),
            Err(e) => e,
        }
    }

    #[test]
    fn path_under_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("file"), "x").unwrap();
        for kind in ["rsync", "xfs", "btrfs"] {
            let e = open_err(&format!("{kind}:{}/file/store", dir.path().display()));
            assert!(matches!(e, StoreError::Unsuitable { .. }), "{kind}: {e}");
            assert!(e.to_string().contains("file/store"), "{e}");
        }
    }

    #[test]
    fn unwritable_path() {
        for kind in ["rsync", "xfs", "btrfs"] {
            let e = open_err(&format!("{kind}:/proc/strata-store"));
            assert!(matches!(e, StoreError::Unsuitable { .. }), "{kind}: {e}");
        }
    }

    #[test]
    fn btrfs_on_another_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let e = open_err(&format!("btrfs:{}/store", dir.path().display()));
        assert!(e.to_string().contains("not on a btrfs filesystem"), "{e}");
    }
}

/// What only the copy stores promise: `xfs:` shares data by reflink where it can and still
/// works (by copying) where it cannot.
mod copy_stores {
    use super::*;

    fn big_base(store: &dyn Store) {
        build(store, None, &id(1), |dir| {
            fs::create_dir(dir.join("rootfs")).unwrap();
            let chunk: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
            let mut data = Vec::new();
            for _ in 0..64 {
                data.extend_from_slice(&chunk);
            }
            fs::write(dir.join("rootfs/big"), &data).unwrap();
        });
    }

    #[test]
    fn xfs_clones_share_file_data() {
        let Some(f) = support::xfs() else { return };
        let store = f.open();
        big_base(&*store);
        nix::unistd::sync();
        let before = store.disk_usage().unwrap().free_bytes;
        for n in 2..6 {
            build(&*store, Some(&id(1)), &id(n), |dir| write(dir, "rootfs/step", "x"));
        }
        nix::unistd::sync();
        let after = store.disk_usage().unwrap().free_bytes;
        let used = before.saturating_sub(after);
        assert!(
            used < 32 << 20,
            "4 clones of a 64 MiB file used {used} bytes: not reflinked"
        );
        let clone = store.result(&id(5)).unwrap().unwrap();
        assert_eq!(fs::metadata(clone.join("rootfs/big")).unwrap().len(), 64 << 20);
    }

    #[test]
    fn xfs_store_without_reflinks_falls_back_to_copies() {
        if !strata_testkit::is_root() {
            return;
        }
        // The host's ext4 cannot reflink.
        let dir = strata_testkit::stores::PlainDirectory::create().unwrap();
        let spec = StoreSpec::Xfs(dir.path().join("store"));
        let store = strata_stores::open(&spec).unwrap();
        big_base(&*store);
        build(&*store, Some(&id(1)), &id(2), |dir| write(dir, "rootfs/step", "x"));
        build(&*store, Some(&id(2)), &id(3), |_| {});
        let item = store.result(&id(3)).unwrap().unwrap();
        assert_eq!(fs::metadata(item.join("rootfs/big")).unwrap().len(), 64 << 20);
        assert_eq!(read(&item, "rootfs/step").as_deref(), Some("x"));
    }

    #[test]
    fn store_directories_are_private() {
        let Some(f) = support::rsync() else { return };
        let _store = f.open();
        for dir in ["result", "result-tmp", "cache", "cache-tmp"] {
            let mode = fs::metadata(f.spec.path().join(dir)).unwrap().mode() & 0o777;
            assert_eq!(mode, 0o700, "{dir}");
        }
    }
}

/// What only the btrfs store promises about recorded sizes.
mod btrfs_store {
    use super::*;

    #[test]
    fn size_counts_the_items_own_data_not_the_base() {
        let Some(f) = support::btrfs() else { return };
        let store = f.open();
        let base = build(&*store, None, &id(1), |dir| {
            fs::create_dir(dir.join("rootfs")).unwrap();
            fs::write(dir.join("rootfs/base"), vec![7u8; 4 << 20]).unwrap();
        });
        assert!(base.size_bytes >= 4 << 20, "base size {}", base.size_bytes);
        let child = build(&*store, Some(&id(1)), &id(2), |dir| {
            fs::write(dir.join("rootfs/child"), vec![9u8; 1 << 20]).unwrap();
        });
        assert!(
            (1 << 20..2 << 20).contains(&child.size_bytes),
            "child size {} should count its 1 MiB, not the 4 MiB base",
            child.size_bytes
        );
    }
}

//! Views of the overlayfs store (issue 17): an idle store holds no mounts, a view is mounted
//! while someone holds it (shared across processes, unmounted after the last user), leftover
//! views of dead processes go at open, and the `mount(2)` fallback for kernels before 6.8.
//!
//! Each test was written before its fix and failed on the store that kept one view per
//! result mounted for ever (`idle_store_holds_no_mounts`: 3 mounts left;
//! `rm_rf_of_an_idle_store_works`: EBUSY; `view_is_unmounted_after_its_last_user`: still
//! mounted; `leftover_view_of_a_dead_process_is_removed_at_open`: still mounted;
//! `legacy_mount_is_used_when_forced`: `lowerdir+` in the options).

use std::fs;
use std::path::{Path, PathBuf};

use strata_stores::overlay::{mount, OverlayStore};
use strata_stores::{Prepared, StepId, Store, StoreSpec};
use strata_testkit::overlay::OverlayDir;

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
            f(&rootfs);
            item.commit().unwrap();
        }
    }
}

fn spec(dir: &OverlayDir) -> StoreSpec {
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

/// A chain of three items, `1 <- 2 <- 3`, each adding one file.
fn chain(store: &dyn Store) {
    build(store, None, &id(1), |r| fs::write(r.join("a"), "a").unwrap());
    build(store, Some(&id(1)), &id(2), |r| fs::write(r.join("b"), "b").unwrap());
    build(store, Some(&id(2)), &id(3), |r| fs::write(r.join("c"), "c").unwrap());
}

fn mounts(dir: &Path) -> Vec<PathBuf> {
    mount::mounts_under(dir).unwrap()
}

#[test]
fn idle_store_holds_no_mounts() {
    if skip_unless_root() {
        return;
    }
    let dir = OverlayDir::plain().unwrap();
    let store = strata_stores::open(&spec(&dir)).unwrap();
    chain(store.as_ref());
    assert_eq!(mounts(dir.path()), Vec::<PathBuf>::new(), "after commits");
    for n in 1..=3 {
        let view = store.rootfs(&id(n)).unwrap();
        assert_eq!(fs::read_dir(view.path()).unwrap().count(), n as usize);
    }
    assert!(store.result(&id(3)).unwrap().is_some());
    assert_eq!(mounts(dir.path()), Vec::<PathBuf>::new(), "after views and result()");
    // On overlay, `result/<id>/rootfs` is an empty mount point while no view is held.
    let item = store.result(&id(3)).unwrap().unwrap();
    assert_eq!(fs::read_dir(item.join("rootfs")).unwrap().count(), 0);
}

#[test]
fn rm_rf_of_an_idle_store_works() {
    if skip_unless_root() {
        return;
    }
    let dir = OverlayDir::plain().unwrap();
    let root = spec(&dir).path();
    {
        let store = strata_stores::open(&spec(&dir)).unwrap();
        chain(store.as_ref());
        drop(store.rootfs(&id(3)).unwrap());
    }
    fs::remove_dir_all(&root).unwrap();
    assert!(!root.exists());
}

#[test]
fn view_is_unmounted_after_its_last_user() {
    if skip_unless_root() {
        return;
    }
    let dir = OverlayDir::plain().unwrap();
    let one = strata_stores::open(&spec(&dir)).unwrap();
    let two = strata_stores::open(&spec(&dir)).unwrap(); // another process, as far as locks go
    chain(one.as_ref());
    let first = one.rootfs(&id(3)).unwrap();
    let second = two.rootfs(&id(3)).unwrap();
    let third = one.rootfs(&id(3)).unwrap();
    assert_eq!(first.path(), second.path(), "users share one mount");
    assert_eq!(mounts(dir.path()).len(), 1);
    drop(first);
    drop(third);
    assert_eq!(
        fs::read_to_string(second.path().join("a")).unwrap(),
        "a",
        "still mounted for its last user"
    );
    // Opening the store (another process) leaves a live user's view alone.
    let _three = strata_stores::open(&spec(&dir)).unwrap();
    assert_eq!(fs::read_to_string(second.path().join("c")).unwrap(), "c");
    drop(second);
    assert_eq!(mounts(dir.path()), Vec::<PathBuf>::new());
}

/// Set to a store path, the test binary plays a process that holds a view and dies.
const DEAD_VIEWER: &str = "STRATA_TEST_DEAD_VIEWER_STORE";

#[test]
fn dead_viewer() {
    let Ok(path) = std::env::var(DEAD_VIEWER) else {
        return;
    };
    let store = strata_stores::open(&StoreSpec::Overlayfs(path.into())).unwrap();
    let view = store.rootfs(&id(3)).unwrap();
    println!("dead-view {}", view.path().display());
    std::io::Write::flush(&mut std::io::stdout()).unwrap();
    nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL).unwrap();
}

#[test]
fn leftover_view_of_a_dead_process_is_removed_at_open() {
    if skip_unless_root() {
        return;
    }
    let dir = OverlayDir::plain().unwrap();
    let spec = spec(&dir);
    chain(strata_stores::open(&spec).unwrap().as_ref());
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "dead_viewer", "--nocapture", "--test-threads=1"])
        .env(DEAD_VIEWER, spec.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let view = stdout
        .lines()
        .find_map(|l| l.split_once("dead-view ").map(|(_, p)| p))
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("the dead viewer printed nothing ({}): {stdout}", out.status));
    assert!(
        mount::is_mount_point(&view).unwrap(),
        "the dead process left its view mounted"
    );
    // As an older strata left every view: mounted, with no user.
    let item = spec.path().join("result").join(id(1).as_str());
    mount::bind_read_only(&item.join("diff"), &item.join("rootfs")).unwrap();
    assert_eq!(mounts(dir.path()).len(), 2);

    let store = strata_stores::open(&spec).unwrap();
    assert_eq!(
        mounts(dir.path()),
        Vec::<PathBuf>::new(),
        "leftover views removed at open"
    );
    let again = store.rootfs(&id(3)).unwrap();
    assert_eq!(fs::read_to_string(again.path().join("a")).unwrap(), "a");
}

#[test]
fn store_works_after_a_reboot() {
    if skip_unless_root() {
        return;
    }
    let dir = OverlayDir::plain().unwrap();
    let store = strata_stores::open(&spec(&dir)).unwrap();
    chain(store.as_ref());
    let view = store.rootfs(&id(3)).unwrap();
    // As a reboot does: every mount gone, under a view still held.
    mount::unmount_all_under(dir.path()).unwrap();
    drop(view);
    let store = strata_stores::open(&spec(&dir)).unwrap();
    let view = store.rootfs(&id(3)).unwrap();
    assert_eq!(fs::read_dir(view.path()).unwrap().count(), 3);
    build(store.as_ref(), Some(&id(3)), &id(4), |r| {
        assert_eq!(fs::read_to_string(r.join("a")).unwrap(), "a");
    });
}

#[test]
fn flattening_mounts_a_view_only_while_copying() {
    if skip_unless_root() {
        return;
    }
    let dir = OverlayDir::plain().unwrap();
    let store = OverlayStore::open(&spec(&dir), 3).unwrap();
    chain(&store);
    build(&store, Some(&id(3)), &id(4), |r| {
        assert_eq!(
            fs::read_dir(r).unwrap().count(),
            3,
            "the flattened copy has the full tree"
        );
    });
    let flat = store.result(&id(4)).unwrap().unwrap();
    assert!(!flat.join("parent").exists(), "a root layer");
    assert_eq!(mounts(dir.path()), Vec::<PathBuf>::new());
}

/// Set, the test binary checks that `STRATA_OVERLAY_MOUNT=legacy` mounts with `mount(2)`.
const LEGACY_CHILD: &str = "STRATA_TEST_LEGACY_CHILD";

#[test]
fn legacy_child() {
    if std::env::var(LEGACY_CHILD).is_err() {
        return;
    }
    let dir = OverlayDir::plain().unwrap();
    let store = strata_stores::open(&spec(&dir)).unwrap();
    chain(store.as_ref());
    let view = store.rootfs(&id(3)).unwrap();
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = info
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(view.path().to_str().unwrap()))
        .expect("the view is in mountinfo");
    assert!(line.contains("lowerdir="), "{line}");
    assert!(!line.contains("lowerdir+"), "mounted with the new API: {line}");
    assert_eq!(fs::read_dir(view.path()).unwrap().count(), 3);
    drop(view);
    let pending = store.prepare(Some(&id(3)), &id(4)).unwrap();
    let Prepared::Pending(pending) = pending else {
        panic!("exists")
    };
    assert_eq!(fs::read_to_string(pending.path().join("rootfs/a")).unwrap(), "a");
    fs::write(pending.path().join("rootfs/d"), "d").unwrap();
    pending.commit().unwrap();
    assert_eq!(fs::read_dir(store.rootfs(&id(4)).unwrap().path()).unwrap().count(), 4);
    println!("legacy-ok");
}

#[test]
fn legacy_mount_is_used_when_forced() {
    if skip_unless_root() {
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "legacy_child", "--nocapture", "--test-threads=1"])
        .env(LEGACY_CHILD, "1")
        .env("STRATA_OVERLAY_MOUNT", "legacy")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("legacy-ok"),
        "{}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Under `mount(2)` the option string must fit a page: a deep chain is flattened before its
/// lower layers overflow it (about 55 layers of `<id>/diff`).
#[test]
fn legacy_deep_chain_child() {
    if std::env::var(LEGACY_CHILD).is_err() {
        return;
    }
    let dir = OverlayDir::plain().unwrap();
    let store = strata_stores::open(&spec(&dir)).unwrap();
    let mut parent = None;
    for n in 1..=130u64 {
        build(store.as_ref(), parent.as_ref(), &id(n), |r| {
            fs::write(r.join(format!("f{n}")), n.to_string()).unwrap()
        });
        parent = Some(id(n));
    }
    let view = store.rootfs(&id(130)).unwrap();
    assert_eq!(fs::read_dir(view.path()).unwrap().count(), 130);
    assert_eq!(fs::read_to_string(view.path().join("f1")).unwrap(), "1");
    println!("legacy-ok");
}

#[test]
fn legacy_mount_flattens_before_the_page_limit() {
    if skip_unless_root() {
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "legacy_deep_chain_child", "--nocapture", "--test-threads=1"])
        .env(LEGACY_CHILD, "1")
        .env("STRATA_OVERLAY_MOUNT", "legacy")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("legacy-ok"),
        "{}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The mount method follows the kernel: `lowerdir+` from Linux 6.8, `mount(2)` before.
#[test]
fn mount_method_is_detected_from_the_kernel() {
    if std::env::var_os(mount::METHOD_ENV).is_some() {
        return; // forced
    }
    let release = nix::sys::utsname::uname()
        .unwrap()
        .release()
        .to_string_lossy()
        .into_owned();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    let expected = if version >= (6, 8) {
        mount::Method::New
    } else {
        mount::Method::Legacy
    };
    assert_eq!(mount::method(), expected, "kernel {release}");
}

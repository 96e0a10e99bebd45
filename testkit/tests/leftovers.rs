//! The leftover check must be able to fail: each test plants one kind of leftover in a
//! store-shaped temporary directory, asserts that [`scan`] reports exactly that kind, tears it
//! down and asserts that [`scan`] is then clean. Every planted thing is held by a guard whose
//! `Drop` removes it, so a failing assertion leaves nothing behind. Root only (real containers,
//! cgroups, mounts).

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use strata_testkit::leftovers::{read_mountinfo, scan, store_cgroup_dirs, Kind, Leftover};

macro_rules! require_root {
    () => {
        if !strata_testkit::is_root() {
            eprintln!("skipping: needs root (containers, cgroups, mounts)");
            return;
        }
    };
}

/// A store-shaped directory `R` with `state/sandbox/{runc,crun}`, `state/bundles`,
/// `result`, `result-tmp`, `cache-tmp` and a fresh store id. On drop, removes any
/// `strata/<store-id>` cgroups that are still there (children first), then the directory.
struct Store {
    root: PathBuf,
    id: String,
    _dir: tempfile::TempDir,
}

impl Store {
    fn new() -> Store {
        let dir = tempfile::Builder::new().prefix("strata-leftovers-").tempdir().unwrap();
        let root = fs::canonicalize(dir.path()).unwrap();
        for sub in [
            "state/sandbox/runc",
            "state/sandbox/crun",
            "state/bundles",
            "result",
            "result-tmp",
            "cache-tmp",
        ] {
            fs::create_dir_all(root.join(sub)).unwrap();
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        let id = format!("{:016x}", nanos ^ (u64::from(std::process::id()) << 40));
        fs::write(root.join("state/sandbox/store-id"), format!("{id}\n")).unwrap();
        Store { root, id, _dir: dir }
    }

    fn scan(&self) -> Vec<Leftover> {
        scan(&self.root)
    }

    /// Asserts that the scan finds something, and only leftovers of `kinds`, each at least once.
    fn assert_kinds(&self, kinds: &[Kind]) -> Vec<Leftover> {
        let found = self.scan();
        let got: BTreeSet<Kind> = found.iter().map(|l| l.kind).collect();
        let want: BTreeSet<Kind> = kinds.iter().copied().collect();
        assert_eq!(got, want, "scan of {} found {found:#?}", self.root.display());
        found
    }

    /// Asserts that the scan becomes clean within a few seconds (killed processes take a moment
    /// to be reaped and leave their cgroups).
    fn assert_clean(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found = self.scan();
            if found.is_empty() {
                return;
            }
            assert!(Instant::now() < deadline, "still found after teardown: {found:#?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        for dir in store_cgroup_dirs(&self.id) {
            remove_cgroup_tree(&dir);
            if let Some(parent) = dir.parent() {
                // Only if empty: another store's containers may live there too.
                let _ = fs::remove_dir(parent);
            }
        }
    }
}

/// Removes a cgroup directory and the ones below it, deepest first (cgroupfs allows only
/// `rmdir` of cgroups without children or processes).
fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.filter_map(Result::ok) {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&entry.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

/// A child process killed and reaped on drop.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A mount point unmounted on drop (lazily if busy).
struct MountGuard(PathBuf);

impl MountGuard {
    fn tmpfs(path: &Path) -> MountGuard {
        fs::create_dir_all(path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "strata-leftover-test"])
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success(), "mount tmpfs on {}", path.display());
        MountGuard(path.to_path_buf())
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        let ok = Command::new("umount").arg(&self.0).status().is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// A directory (a cgroup) removed on drop, with what was made below it first.
struct CgroupGuard(Vec<PathBuf>);

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        for dir in self.0.iter().rev() {
            let _ = fs::remove_dir(dir);
        }
    }
}

/// A minimal root filesystem: a static busybox with `sh` and `sleep` links.
fn busybox_rootfs(rootfs: &Path) {
    for dir in ["bin", "proc", "dev", "sys", "tmp", "etc"] {
        fs::create_dir_all(rootfs.join(dir)).unwrap();
    }
    fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("busybox-static at /bin/busybox");
    for applet in ["sh", "sleep"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
}

fn runtime_installed(runtime: &str) -> bool {
    Command::new(runtime)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A detached container, `delete --force`d on drop (through the same mount namespace trick it
/// was started with).
struct ContainerGuard {
    runtime: String,
    state: PathBuf,
    id: String,
    hide_unified: bool,
}

impl ContainerGuard {
    /// `RUNTIME --root STATE ARGS...`, when `hide_unified` in a private mount namespace without
    /// `/sys/fs/cgroup/unified` (crun on a hybrid cgroup host), as strata's shim does.
    fn command(runtime: &str, state: &Path, hide_unified: bool, args: &[&str]) -> Command {
        let mut cmd = if hide_unified {
            let mut c = Command::new("unshare");
            c.args(["-m", "--propagation", "slave", "sh", "-c"])
                .arg("umount -l /sys/fs/cgroup/unified 2>/dev/null; exec \"$@\"")
                .arg("sh")
                .arg(runtime);
            c
        } else {
            Command::new(runtime)
        };
        cmd.arg("--root").arg(state).args(args);
        cmd
    }

    fn runtime(&self, args: &[&str]) -> std::process::Output {
        ContainerGuard::command(&self.runtime, &self.state, self.hide_unified, args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        let _ = self.runtime(&["kill", &self.id, "KILL"]);
        let out = self.runtime(&["delete", "--force", &self.id]);
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            if !stderr.contains("not exist") && !stderr.contains("not found") {
                eprintln!("warning: {} delete --force {}: {stderr}", self.runtime, self.id);
            }
        }
    }
}

/// Starts `sleep 100` as a detached container of `runtime`, with the runtime's state under
/// `R/state/sandbox/<runtime>`, the rootfs under `R/result-tmp/<id>/rootfs` (as strata does)
/// and the cgroups path `strata/<store-id>/<id>`; the bundle lies outside the store, so that
/// only a container, its cgroups and its process are planted.
fn start_container(store: &Store, runtime: &str, bundle: &Path) -> ContainerGuard {
    let id = format!("strata-test-{}-{runtime}", std::process::id());
    let rootfs = store.root.join("result-tmp").join(&id).join("rootfs");
    busybox_rootfs(&rootfs);
    let spec = Command::new("runc").arg("spec").current_dir(bundle).output().unwrap();
    assert!(
        spec.status.success(),
        "runc spec: {}",
        String::from_utf8_lossy(&spec.stderr)
    );
    let config_path = bundle.join("config.json");
    let config = fs::read_to_string(&config_path).unwrap();
    let replace = |text: String, from: &str, to: &str| -> String {
        assert!(text.contains(from), "runc spec output has no {from:?}:\n{text}");
        text.replacen(from, to, 1)
    };
    let config = replace(config, "\"terminal\": true", "\"terminal\": false");
    let config = replace(config, "\"sh\"\n", "\"/bin/sleep\", \"100\"\n");
    let config = replace(
        config,
        "\"path\": \"rootfs\"",
        &format!("\"path\": {:?}", rootfs.to_str().unwrap()),
    );
    let config = replace(
        config,
        "\"linux\": {",
        &format!("\"linux\": {{\n\t\t\"cgroupsPath\": \"strata/{}/{id}\",", store.id),
    );
    fs::write(&config_path, config).unwrap();

    let state = store.root.join("state/sandbox").join(runtime);
    let modes: &[bool] = if runtime == "crun" { &[false, true] } else { &[false] };
    let mut errors = Vec::new();
    for &hide_unified in modes {
        let guard = ContainerGuard {
            runtime: runtime.to_owned(),
            state: state.clone(),
            id: id.clone(),
            hide_unified,
        };
        let log = bundle.join("run.log");
        // Not `output()`: the detached container inherits stdout and would hold a pipe open.
        let status = ContainerGuard::command(runtime, &state, hide_unified, &["run", "--detach", "--bundle"])
            .arg(bundle)
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .status()
            .unwrap();
        if status.success() {
            return guard;
        }
        errors.push(format!(
            "{runtime} run (hide unified cgroup: {hide_unified}): {status}: {}",
            fs::read_to_string(&log).unwrap_or_default()
        ));
        // `guard` drops here: whatever half-started is deleted before the next attempt.
    }
    panic!("cannot start a {runtime} container:\n{}", errors.join("\n"));
}

/// A real container under runc or crun plants a container, its cgroups and its process at
/// once; the process is found by its cgroup and by its root (device and inode: it reads as `/`
/// from outside the container's mount namespace).
fn container_is_reported(runtime: &str) {
    if !runtime_installed(runtime) || !runtime_installed("runc") {
        eprintln!("skipping: {runtime} (and runc for `runc spec`) needed");
        return;
    }
    let store = Store::new();
    let bundle = tempfile::tempdir().unwrap();
    let container = start_container(&store, runtime, bundle.path());
    let found = store.assert_kinds(&[Kind::Process, Kind::Container, Kind::Cgroup]);
    // The container's init may not have exec'd `sleep` yet: any of its processes will do.
    let processes: Vec<&Leftover> = found.iter().filter(|l| l.kind == Kind::Process).collect();
    assert!(
        processes
            .iter()
            .any(|l| l.detail.contains("in cgroup") && l.detail.contains("root is")),
        "no process found by cgroup and by root: {processes:#?}"
    );
    assert!(
        found
            .iter()
            .any(|l| l.kind == Kind::Container && l.detail.contains(&format!("listed by `{runtime}"))),
        "the runtime itself did not list the container: {found:#?}"
    );
    assert!(
        found
            .iter()
            .any(|l| l.kind == Kind::Cgroup && l.detail.contains(&format!("strata/{}/", store.id))),
        "{found:#?}"
    );
    drop(container);
    // The rootfs is only a directory, no leftover.
    store.assert_clean();
}

#[test]
fn runc_container_is_reported_as_container_cgroup_and_process() {
    require_root!();
    container_is_reported("runc");
}

#[test]
fn crun_container_is_reported_as_container_cgroup_and_process() {
    require_root!();
    container_is_reported("crun");
}

/// A state directory the runtime no longer lists (or a runtime that is not installed) is
/// still a container leftover.
#[test]
fn runtime_state_directory_alone_is_a_container() {
    require_root!();
    let store = Store::new();
    let ghost = store.root.join("state/sandbox/crun/strata-ghost-1");
    fs::create_dir_all(&ghost).unwrap();
    fs::write(ghost.join("leftover"), "x").unwrap();
    let found = store.assert_kinds(&[Kind::Container]);
    assert!(found.iter().any(|l| l.detail.contains("strata-ghost-1")), "{found:#?}");
    fs::remove_dir_all(&ghost).unwrap();
    store.assert_clean();
}

#[test]
fn bundle_directory_is_reported() {
    require_root!();
    let store = Store::new();
    let bundle = store.root.join("state/bundles/strata-1.a-1");
    fs::create_dir_all(&bundle).unwrap();
    fs::write(bundle.join("config.json"), "{}").unwrap();
    store.assert_kinds(&[Kind::Bundle]);
    fs::remove_dir_all(&bundle).unwrap();
    store.assert_clean();
}

/// This process's cgroup in the pids hierarchy, as a directory: `<mount point>/<own path>`.
fn own_pids_cgroup() -> PathBuf {
    let mounts = read_mountinfo();
    let own = fs::read_to_string("/proc/self/cgroup").unwrap();
    // cgroup v1: `N:pids:/path`; cgroup v2 only: `0::/path`.
    let v1 = own.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers.split(',').any(|c| c == "pids").then(|| path.to_owned())
    });
    let (mount, path) = match v1 {
        Some(path) => {
            let mount = mounts
                .iter()
                .find(|m| m.fstype == "cgroup" && m.super_options.split(',').any(|o| o == "pids"))
                .expect("a pids cgroup hierarchy");
            (mount.mount_point.clone(), path)
        }
        None => {
            let path = own.lines().find_map(|l| l.strip_prefix("0::")).unwrap().to_owned();
            let mount = mounts.iter().find(|m| m.fstype == "cgroup2").expect("a cgroup2 mount");
            (mount.mount_point.clone(), path)
        }
    };
    mount.join(path.trim_start_matches('/'))
}

#[test]
fn cgroup_alone_is_reported() {
    require_root!();
    let store = Store::new();
    let strata = own_pids_cgroup().join("strata");
    let parent = strata.join(&store.id);
    let child = parent.join("strata-x-1");
    let mut made = Vec::new();
    for dir in [&strata, &parent, &child] {
        if !dir.exists() {
            fs::create_dir(dir).unwrap();
            made.push(dir.clone());
        }
    }
    let guard = CgroupGuard(made);
    let found = store.assert_kinds(&[Kind::Cgroup]);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(found[0].detail.contains(child.to_str().unwrap()), "{found:#?}");
    drop(guard);
    store.assert_clean();
}

/// A cgroup of another store (another store id) is not this store's leftover.
#[test]
fn cgroup_of_another_store_is_not_reported() {
    require_root!();
    let store = Store::new();
    let other = own_pids_cgroup().join("strata").join("0123456789abcdef-other");
    let mut made = Vec::new();
    for dir in [
        other.parent().unwrap().to_path_buf(),
        other.clone(),
        other.join("strata-x-1"),
    ] {
        if !dir.exists() {
            fs::create_dir(&dir).unwrap();
            made.push(dir);
        }
    }
    let _guard = CgroupGuard(made);
    assert_eq!(store.scan(), vec![]);
}

fn sleep_in(dir: &Path) -> ChildGuard {
    ChildGuard(
        Command::new("sleep")
            .arg("100")
            .current_dir(dir)
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

#[test]
fn process_working_under_the_store_is_reported() {
    require_root!();
    let store = Store::new();
    let child = sleep_in(&store.root.join("result-tmp"));
    let found = store.assert_kinds(&[Kind::Process]);
    assert!(found[0].detail.contains(&format!("pid {}", child.0.id())), "{found:#?}");
    drop(child);
    store.assert_clean();
}

/// The step shim keeps its bundle directory as working directory after the directory is
/// removed; the kernel then shows the path with ` (deleted)`.
#[test]
fn process_in_a_deleted_directory_under_the_store_is_reported() {
    require_root!();
    let store = Store::new();
    let gone = store.root.join("result-tmp/strata-gone-1");
    fs::create_dir(&gone).unwrap();
    let child = sleep_in(&gone);
    fs::remove_dir(&gone).unwrap();
    let found = store.assert_kinds(&[Kind::Process]);
    assert!(found[0].detail.contains("strata-gone-1"), "{found:#?}");
    drop(child);
    store.assert_clean();
}

#[test]
fn chrooted_process_under_the_store_is_reported() {
    require_root!();
    let store = Store::new();
    let rootfs = store.root.join("result-tmp/x/rootfs");
    busybox_rootfs(&rootfs);
    let child = ChildGuard(
        Command::new("chroot")
            .arg(&rootfs)
            .args(["/bin/sleep", "100"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Until chroot has exec'd, the child is an ordinary process elsewhere.
    let deadline = Instant::now() + Duration::from_secs(5);
    while fs::read_link(format!("/proc/{}/root", child.0.id())).is_ok_and(|r| r == Path::new("/")) {
        assert!(Instant::now() < deadline, "chroot did not happen");
        std::thread::sleep(Duration::from_millis(20));
    }
    let found = store.assert_kinds(&[Kind::Process]);
    assert!(found[0].detail.contains("root is"), "{found:#?}");
    drop(child);
    store.assert_clean();
}

#[test]
fn mount_under_result_tmp_is_reported() {
    require_root!();
    let store = Store::new();
    let mount = MountGuard::tmpfs(&store.root.join("result-tmp/x"));
    let found = store.assert_kinds(&[Kind::Mount]);
    assert!(found[0].detail.contains("result-tmp/x"), "{found:#?}");
    drop(mount);
    store.assert_clean();
}

/// An overlayfs store keeps read-only views mounted under `R/result/<id>/rootfs`: not leftovers.
#[test]
fn read_only_view_under_result_is_not_reported() {
    require_root!();
    let store = Store::new();
    let _view = MountGuard::tmpfs(&store.root.join("result/abc/rootfs"));
    assert_eq!(store.scan(), vec![]);
}

/// The binary exits 1 and prints `KIND<TAB>detail` (or JSON) for a leftover, exits 0 with
/// `no leftovers in ROOT` when clean, and refuses a path that is not a store.
#[test]
fn binary_exit_codes_and_output() {
    require_root!();
    let store = Store::new();
    let bin = env!("CARGO_BIN_EXE_store-leftovers");
    let run = |args: &[&str]| Command::new(bin).args(args).arg(&store.root).output().unwrap();
    let clean = run(&[]);
    assert_eq!(clean.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&clean.stdout).trim(),
        format!("no leftovers in {}", store.root.display())
    );
    fs::create_dir(store.root.join("state/bundles/strata-1.a-2")).unwrap();
    let dirty = run(&[]);
    assert_eq!(dirty.status.code(), Some(1));
    let text = String::from_utf8_lossy(&dirty.stdout);
    assert!(text.starts_with("bundle\t"), "{text}");
    let json = run(&["--json"]);
    assert_eq!(json.status.code(), Some(1));
    let text = String::from_utf8_lossy(&json.stdout);
    assert!(text.starts_with("{\"kind\":\"bundle\",\"detail\":"), "{text}");
    fs::remove_dir(store.root.join("state/bundles/strata-1.a-2")).unwrap();
    let not_a_store = Command::new(bin).arg(store.root.join("result")).output().unwrap();
    assert_eq!(not_a_store.status.code(), Some(2));
}

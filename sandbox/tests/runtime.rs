//! The OCI sandbox against the real runtimes (runc and crun) on a busybox rootfs.
//!
//! Every test runs under both runtimes (`runc::*`, `crun::*`). They need root; without it
//! they print a notice and pass.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use strata_sandbox::{
    BindMount, Cancel, LogSink, Network, OciSandbox, OciSandboxOptions, Outcome, RunConfig, Sandbox, SandboxError,
    SecretMount,
};
use strata_testkit::sandbox::BusyboxRootfs;

#[derive(Default)]
struct Collect(Mutex<Vec<u8>>);

impl LogSink for Collect {
    fn write(&self, bytes: &[u8]) {
        self.0.lock().unwrap().extend_from_slice(bytes);
    }
}

impl Collect {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// A rootfs, a sandbox with its own state and bundle directories, and checks that nothing is
/// left behind.
struct Env {
    fixture: BusyboxRootfs,
    sandbox: OciSandbox,
    runtime: &'static str,
}

const OWNER: &str = "4242.test";

fn env(runtime: &'static str) -> Option<Env> {
    if !strata_testkit::is_root() {
        eprintln!("skipping: the sandbox tests need root");
        return None;
    }
    let fixture = BusyboxRootfs::create().unwrap();
    let mut options = OciSandboxOptions::new(
        fixture.dir().join("state/sandbox"),
        OWNER,
        fixture.dir().join("bundles"),
    );
    options.runtime = runtime.to_owned();
    let sandbox = OciSandbox::new(options).unwrap();
    sandbox.probe().unwrap();
    Some(Env {
        fixture,
        sandbox,
        runtime,
    })
}

fn sh(script: &str) -> RunConfig {
    let mut c = RunConfig::new(vec!["/bin/sh".into(), "-c".into(), script.into()]);
    c.env = vec![("PATH".into(), "/usr/sbin:/usr/bin:/sbin:/bin".into())];
    c.timeout = Some(Duration::from_secs(60));
    c
}

impl Env {
    fn rootfs(&self) -> &Path {
        self.fixture.rootfs()
    }

    fn run(&self, config: &RunConfig) -> (Outcome, String) {
        let log = Collect::default();
        let outcome = self
            .sandbox
            .run(config, self.rootfs(), &log, &Cancel::new())
            .unwrap_or_else(|e| panic!("{}: {e}\nlog:\n{}", self.runtime, log.text()));
        self.assert_clean();
        (outcome, log.text())
    }

    fn run_ok(&self, config: &RunConfig) -> String {
        let (outcome, text) = self.run(config);
        assert_eq!(outcome, Outcome::Exited(0), "{}: {text}", self.runtime);
        text
    }

    /// No container in the runtime's state, no bundle, no mount under the fixture.
    fn assert_clean(&self) {
        let out = Command::new(self.runtime)
            .arg("--root")
            .arg(self.sandbox.state_root())
            .args(["list", "-q"])
            .output()
            .unwrap();
        let listed = String::from_utf8_lossy(&out.stdout);
        assert!(listed.trim().is_empty(), "{}: containers left: {listed}", self.runtime);
        let bundles: Vec<_> = fs::read_dir(self.fixture.dir().join("bundles"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(bundles.is_empty(), "{}: bundles left: {bundles:?}", self.runtime);
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let dir = self.fixture.dir().to_string_lossy().into_owned();
        assert!(!mounts.contains(&dir), "{}: mounts left under {dir}", self.runtime);
    }
}

/// Processes whose command line contains `marker`.
fn processes_with(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(marker) && !cmdline.contains("cargo") {
                found.push(cmdline);
            }
        }
    }
    found
}

fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else { return hits };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            hits.extend(files_containing(&path, needle));
        } else if meta.is_file() {
            if let Ok(data) = fs::read(&path) {
                if data.windows(needle.len()).any(|w| w == needle) {
                    hits.push(path);
                }
            }
        }
    }
    hits
}

fn output_in_order(rt: &'static str) {
    let Some(env) = env(rt) else { return };
    let text = env.run_ok(&sh("for i in 1 2 3; do echo out$i; echo err$i >&2; done"));
    assert_eq!(text, "out1\nerr1\nout2\nerr2\nout3\nerr3\n");
}

fn exit_codes(rt: &'static str) {
    let Some(env) = env(rt) else { return };
    assert_eq!(env.run(&sh("exit 7")).0, Outcome::Exited(7));
    assert_eq!(env.run(&sh("true")).0, Outcome::Exited(0));
    // A process killed by a signal inside the step: the shell sees 128+N.
    assert!(env.run_ok(&sh("sh -c 'kill -9 $$'; echo $?")).ends_with("137\n"));
    // The step's own process killed by a signal (pid 1 ignores signals from inside its
    // namespace, so the memory limit's OOM kill does it).
    let mut c = sh("x=$(head -c 100m /dev/zero | tr '\\0' a); echo survived");
    c.limits.memory_bytes = Some(16 << 20);
    let (outcome, text) = env.run(&c);
    assert_eq!(outcome, Outcome::Signaled(9), "{text}");
}

fn env_cwd_user(rt: &'static str) {
    let Some(env) = env(rt) else { return };
    let mut c = sh("echo $FOO; pwd; id -u; id -g; hostname; ulimit -n; cat /etc/hosts");
    c.env.push(("FOO".into(), "bar baz".into()));
    c.cwd = "/tmp".into();
    c.uid = 1000;
    c.gid = 1000;
    let text = env.run_ok(&c);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        &lines[..6],
        ["bar baz", "/tmp", "1000", "1000", "strata", "1024"],
        "{text}"
    );
    assert!(lines[6].starts_with("127.0.0.1 localhost strata"), "{text}");
    // Root with Docker's capabilities: chown works; /etc/hosts and /sys are read-only.
    env.run_ok(&sh(
        "touch /tmp/f && chown 1000:1000 /tmp/f && ! (echo x >> /etc/hosts) 2>/dev/null && ! touch /sys/x 2>/dev/null",
    ));
}

fn network(rt: &'static str) {
    let Some(env) = env(rt) else { return };
    assert_eq!(env.run_ok(&sh("ls /sys/class/net")), "lo\n");
    assert!(
        env.run_ok(&sh("ip link")).contains("lo: <LOOPBACK,UP"),
        "loopback is up"
    );
    let mut host = sh("ls /sys/class/net; cat /etc/resolv.conf");
    host.network = Network::Host;
    let text = env.run_ok(&host);
    let mut host_ifaces: Vec<String> = fs::read_dir("/sys/class/net")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    host_ifaces.sort();
    for iface in &host_ifaces {
        assert!(text.lines().any(|l| l == iface), "{iface} missing in {text}");
    }
    let resolv = fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    assert!(text.contains(resolv.trim()), "host resolv.conf is bound");
}

fn proc_shows_only_the_step(rt: &'static str) {
    let Some(env) = env(rt) else { return };
    let text = env.run_ok(&sh("echo $$; ls /proc | grep -c '^[0-9]*$'"));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "1", "the step is pid 1 in its own pid namespace");
    let count: u32 = lines[1].parse().unwrap();
    assert!(count <= 4, "only the step's processes are visible: {count}");
}

fn cannot_write_outside_rootfs(rt: &'static str) {
    let Some(env) = env(rt) else { return };
    let name = format!("strata-escape-{rt}-{}", std::process::id());
    env.run_ok(&sh(&format!(
        "echo x > /../../{name} && echo y > /proc/../../../{name}2"
    )));
    assert!(env.rootfs().join(&name).exists(), "the write lands inside the rootfs");
    assert!(env.rootfs().join(format!("{name}2")).exists());
    assert!(!Path::new("/").join(&name).exists());
    assert!(!Path::new("/").join(format!("{name}2")).exists());
}

fn bind_mounts(rt: &'static str) {
    let Some(env) = env(rt) else { return };
    let cache = env.fixture.dir().join("cache");
    let tools = env.fixture.dir().join("tools");
    fs::create_dir_all(&cache).unwrap();
    fs::create_dir_all(&tools).unwrap();
    fs::write(tools.join("t"), "tool\n").unwrap();
    let mut c = sh("echo data > /var/cache/f && cat /tools/t && ! touch /tools/x 2>/dev/null");
    c.mounts = vec![
        BindMount {
            source: cache.clone(),
            target: "/var/cache".into(),
            readonly: false,
        },
        BindMount {
            source: tools.clone(),
            target: "/tools".into(),
            readonly: true,
        },
    ];
    c.uid = 0;
    assert_eq!(env.run_ok(&c), "tool\n");
    assert_eq!(fs::read_to_string(cache.join("f")).unwrap(), "data\n");
    assert!(!tools.join("x").exists());
}

fn secrets(rt: &'static str) {
    let Some(env) = env(rt) else { return };
    let value = format!("s3cret-{rt}-{}", std::process::id());
    let mut c = sh("cat /run/secrets/token; echo; cat /etc/api-key; echo; ! (echo x > /run/secrets/token) 2>/dev/null");
    c.uid = 1000;
    c.gid = 1000;
    c.secrets = vec![
        SecretMount {
            id: "token".into(),
            value: value.as_bytes().to_vec(),
            target: "/run/secrets/token".into(),
        },
        SecretMount {
            id: "key".into(),
            value: b"key-value".to_vec(),
            target: "/etc/api-key".into(),
        },
    ];
    let text = env.run_ok(&c);
    assert_eq!(text, format!("{value}\nkey-value\n"));
    assert!(!env.rootfs().join("run").exists(), "placeholder directories removed");
    assert!(!env.rootfs().join("etc/api-key").exists(), "placeholder file removed");
    assert!(env.rootfs().join("etc/passwd").exists());
    assert!(files_containing(env.rootfs(), value.as_bytes()).is_empty());
    assert!(files_containing(env.fixture.dir(), value.as_bytes()).is_empty());

    // A target directory the step writes into stays, with only the step's file in it.
    let mut c = sh("cat /run/secrets/token >/dev/null && echo mine > /run/secrets/other");
    c.secrets = vec![SecretMount {
        id: "token".into(),
        value: value.as_bytes().to_vec(),
        target: "/run/secrets/token".into(),
    }];
    env.run_ok(&c);
    let left: Vec<_> = fs::read_dir(env.rootfs().join("run/secrets"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["other"]);
}

fn stdin_at_eof(rt: &'static str) {
    let Some(env) = env(rt) else { return };
    let mut c = sh("cat; read x; echo done");
    c.timeout = Some(Duration::from_secs(20));
    let started = Instant::now();
    assert_eq!(env.run_ok(&c), "done\n");
    assert!(started.elapsed() < Duration::from_secs(15));
}

fn timeout_leaves_nothing(rt: &'static str) {
    let Some(env) = env(rt) else { return };
    let marker = format!(
        "{}",
        3000 + std::process::id() % 1000 + if rt == "crun" { 1000 } else { 0 }
    );
    let mut c = sh(&format!("echo started; sleep {marker}; echo never"));
    c.timeout = Some(Duration::from_millis(1500));
    let started = Instant::now();
    let (outcome, text) = env.run(&c);
    assert_eq!(outcome, Outcome::TimedOut);
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(text.starts_with("started\n") && !text.contains("never"), "{text}");
    assert!(text.contains("timed out"));
    assert!(processes_with(&format!("sleep {marker}")).is_empty());
}

fn cancel_leaves_nothing(rt: &'static str) {
    let Some(env) = env(rt) else { return };
    let marker = format!(
        "{}",
        5000 + std::process::id() % 1000 + if rt == "crun" { 1000 } else { 0 }
    );
    let c = sh(&format!("sleep {marker}"));
    let cancel = Cancel::new();
    let trigger = cancel.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(800));
        trigger.cancel();
    });
    let log = Collect::default();
    let started = Instant::now();
    let outcome = env.sandbox.run(&c, env.rootfs(), &log, &cancel).unwrap();
    t.join().unwrap();
    assert_eq!(outcome, Outcome::Cancelled);
    assert!(started.elapsed() < Duration::from_secs(20));
    env.assert_clean();
    assert!(processes_with(&format!("sleep {marker}")).is_empty());
    // Cancelled before it starts: nothing runs.
    assert_eq!(
        env.sandbox.run(&c, env.rootfs(), &log, &cancel).unwrap(),
        Outcome::Cancelled
    );
}

fn log_cap_kills_yes(rt: &'static str) {
    let Some(env) = env(rt) else { return };
    let mut c = sh("yes");
    c.log_limit = 100_000;
    let (outcome, text) = env.run(&c);
    assert_eq!(outcome, Outcome::LogLimitExceeded);
    assert!(text.len() <= 100_000 + 100);
    assert!(text.starts_with("y\ny\n"));
    assert!(text.ends_with("strata: log limit of 100000 bytes exceeded, step killed\n"));
}

fn fast_sync(rt: &'static str) {
    let Some(env) = env(rt) else { return };
    let script = "i=0; while [ $i -lt 1000 ]; do dd if=/dev/zero of=/tmp/f bs=4096 count=1 conv=fsync 2>/dev/null || exit 1; i=$((i+1)); done; grep Seccomp: /proc/self/status";
    // Without a filter at all (--seccomp unconfined), then with only the no-op sync rule.
    let mut slow = sh(script);
    slow.fast_sync = false;
    slow.seccomp = strata_sandbox::Seccomp::Unconfined;
    let mut fast = sh(script);
    fast.fast_sync = true;
    fast.seccomp = strata_sandbox::Seccomp::Unconfined;
    let t = Instant::now();
    let plain = env.run_ok(&slow);
    let slow_time = t.elapsed();
    let t = Instant::now();
    let filtered = env.run_ok(&fast);
    let fast_time = t.elapsed();
    assert!(plain.contains("Seccomp:\t0"), "{plain}");
    assert!(filtered.contains("Seccomp:\t2"), "the filter is installed: {filtered}");
    println!(
        "{rt}: 1000 x dd conv=fsync: {:.0} ms plain, {:.0} ms with fast_sync (ratio {:.2})",
        slow_time.as_secs_f64() * 1000.0,
        fast_time.as_secs_f64() * 1000.0,
        slow_time.as_secs_f64() / fast_time.as_secs_f64()
    );
}

fn limits(rt: &'static str) {
    let Some(env) = env(rt) else { return };
    // `tail` keeps the last "line" of endless zeros in memory. It volunteers as the OOM
    // killer's victim: left to choose on a loaded machine, the kernel once took the shell.
    let mut c =
        sh("head -c 300m /dev/zero | (echo 1000 > /proc/self/oom_score_adj; exec tail) > /dev/null; echo status $?");
    c.limits.memory_bytes = Some(64 << 20);
    assert!(
        env.run_ok(&c).contains("status 137"),
        "the allocating process is OOM-killed"
    );
    let c = sh("head -c 64m /dev/zero | tail > /dev/null; echo status $?");
    assert!(env.run_ok(&c).contains("status 0"), "and survives without the limit");
    let mut c = sh("i=0; while [ $i -lt 60 ]; do sleep 5 & i=$((i+1)); done; echo forked");
    c.limits.pids = Some(20);
    let (_, text) = env.run(&c);
    assert!(
        text.contains("can't fork") || text.contains("Resource temporarily unavailable"),
        "{text}"
    );
    let mut c = sh("cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null || echo no-cgroup-mount; true");
    c.limits.cpus = Some(0.5);
    env.run_ok(&c);
}

/// Reads the step's cgroup v1 limit files from the host while the step runs. The step has a
/// cgroup namespace (its `/proc/self/cgroup` says `/`), so the sink looks for the step's cgroup
/// below the store's (`.../strata/<store id>/<container>`) in each hierarchy the step names.
#[derive(Default)]
struct CgroupProbe {
    store_id: String,
    seen: Mutex<Vec<(String, String)>>,
    paths: Mutex<Vec<PathBuf>>,
}

/// The directory named `name` below `dir` (breadth first, a few levels deep).
fn find_dir(dir: &Path, name: &str, depth: usize) -> Option<PathBuf> {
    let children: Vec<PathBuf> = fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .map(|e| e.path())
        .collect();
    if let Some(found) = children.iter().find(|p| p.file_name().is_some_and(|n| n == name)) {
        return Some(found.clone());
    }
    if depth == 0 {
        return None;
    }
    children.iter().find_map(|c| find_dir(c, name, depth - 1))
}

impl LogSink for CgroupProbe {
    fn write(&self, bytes: &[u8]) {
        for line in String::from_utf8_lossy(bytes).lines() {
            // `N:controller[,controller]:/path`
            let mut parts = line.splitn(3, ':');
            let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            assert_eq!(path, "/", "the step sees its own cgroup as the root: {line}");
            let files: &[(&str, &str)] = &[
                ("memory", "memory.limit_in_bytes"),
                ("cpu", "cpu.cfs_quota_us"),
                ("pids", "pids.max"),
            ];
            for (controller, file) in files {
                if controllers.split(',').any(|c| c == *controller) {
                    let store = find_dir(&Path::new("/sys/fs/cgroup").join(controller), &self.store_id, 6);
                    let dir = store
                        .and_then(|s| fs::read_dir(s).ok())
                        .and_then(|mut d| d.find_map(|e| e.ok().filter(|e| e.path().is_dir()).map(|e| e.path())))
                        .unwrap_or_else(|| PathBuf::from("/no/cgroup/found"));
                    let value = fs::read_to_string(dir.join(file)).unwrap_or_else(|e| format!("unreadable: {e}"));
                    self.seen
                        .lock()
                        .unwrap()
                        .push((file.to_string(), value.trim().to_owned()));
                    self.paths.lock().unwrap().push(dir);
                }
            }
        }
    }
}

fn cgroup_limits_applied(rt: &'static str) {
    let Some(env) = env(rt) else { return };
    let mut c = sh("cat /proc/self/cgroup; sleep 0.5");
    c.limits.memory_bytes = Some(16 << 20);
    c.limits.cpus = Some(0.5);
    c.limits.pids = Some(20);
    let probe = CgroupProbe {
        store_id: strata_sandbox::runtime::store_id(&env.fixture.dir().join("state/sandbox")).unwrap(),
        ..CgroupProbe::default()
    };
    let outcome = env.sandbox.run(&c, env.rootfs(), &probe, &Cancel::new()).unwrap();
    assert_eq!(outcome, Outcome::Exited(0));
    let mut seen = probe.seen.lock().unwrap().clone();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("cpu.cfs_quota_us".to_owned(), "50000".to_owned()),
            ("memory.limit_in_bytes".to_owned(), (16u64 << 20).to_string()),
            ("pids.max".to_owned(), "20".to_owned()),
        ],
        "{rt}"
    );
    for dir in probe.paths.lock().unwrap().iter() {
        assert!(!dir.exists(), "{rt}: cgroup {} left behind", dir.display());
    }
    env.assert_clean();
}

/// A sink that panics: the container is still killed and removed, then the panic goes on.
struct PanickingSink;
impl LogSink for PanickingSink {
    fn write(&self, _: &[u8]) {
        panic!("sink exploded");
    }
}

fn panicking_sink_leaves_nothing(rt: &'static str) {
    let Some(env) = env(rt) else { return };
    let marker = format!(
        "{}",
        9000 + std::process::id() % 500 + if rt == "crun" { 500 } else { 0 }
    );
    let c = sh(&format!("echo hello; sleep {marker}"));
    let started = Instant::now();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        env.sandbox.run(&c, env.rootfs(), &PanickingSink, &Cancel::new())
    }));
    assert!(result.is_err(), "the sink's panic propagates");
    assert!(started.elapsed() < Duration::from_secs(20));
    env.assert_clean();
    assert!(processes_with(&format!("sleep {marker}")).is_empty());
}

fn runtime_refusal_is_an_error(rt: &'static str) {
    let Some(env) = env(rt) else { return };
    let mut c = sh("true");
    c.mounts = vec![BindMount {
        source: PathBuf::from("/nonexistent/strata-source"),
        target: "/x".into(),
        readonly: true,
    }];
    let err = env
        .sandbox
        .run(&c, env.rootfs(), &Collect::default(), &Cancel::new())
        .unwrap_err();
    match &err {
        SandboxError::Runtime { stderr, .. } => assert!(!stderr.is_empty()),
        other => panic!("{rt}: expected a runtime error, got {other:?}"),
    }
    assert!(err.to_string().contains("strata-source"), "{err}");
    env.assert_clean();
}

fn orphans_removed(rt: &'static str) {
    let Some(env) = env(rt) else { return };
    // What a crashed strata leaves: a running container and its bundle with a mounted tmpfs,
    // owned by a dead owner; plus a live owner's bundle that must stay.
    let dead = "strata-999.dead-0";
    let bundle = env.fixture.dir().join("bundles").join(dead);
    fs::create_dir_all(bundle.join("secrets")).unwrap();
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs"])
        .arg(bundle.join("secrets"))
        .status()
        .unwrap();
    assert!(status.success());
    fs::write(bundle.join("hosts"), "127.0.0.1 localhost\n").unwrap();
    let marker = if rt == "crun" { "sleep 7778" } else { "sleep 7777" };
    let config = sh(marker);
    let secrets: Vec<PathBuf> = Vec::new();
    let files = strata_sandbox::oci_config::BundleFiles {
        rootfs: &env.rootfs().canonicalize().unwrap(),
        hosts: &bundle.join("hosts"),
        resolv_conf: Path::new("/etc/resolv.conf"),
        secrets: &secrets,
        cgroups_path: None,
    };
    let spec =
        strata_sandbox::oci_config::build_spec(&config, &files, &strata_sandbox::host::HostFacts::detect()).unwrap();
    fs::write(
        bundle.join("config.json"),
        strata_sandbox::oci_config::to_json(&spec).unwrap(),
    )
    .unwrap();
    let root = env.sandbox.state_root().to_string_lossy().into_owned();
    let bundle_s = bundle.to_string_lossy().into_owned();
    let detached = format!("{rt} --root {root} run -d --bundle {bundle_s} {dead} </dev/null >/dev/null 2>&1");
    // crun needs the hybrid-cgroup workaround that the sandbox applies to its own calls.
    let script = if rt == "crun" {
        format!("umount -l /sys/fs/cgroup/unified 2>/dev/null; {detached}")
    } else {
        detached
    };
    let status = Command::new("unshare")
        .args(["-m", "--propagation", "slave", "sh", "-c", &script])
        .status()
        .unwrap();
    assert!(status.success(), "starting the orphan");
    let live = env.fixture.dir().join("bundles/strata-4242.test-77");
    fs::create_dir_all(&live).unwrap();

    let removed = env.sandbox.cleanup_orphans(&|tag| tag == OWNER).unwrap();
    assert_eq!(removed, [dead.to_owned()]);
    assert!(!bundle.exists());
    assert!(live.exists(), "a live owner's bundle stays");
    fs::remove_dir(&live).unwrap();
    env.assert_clean();
    std::thread::sleep(Duration::from_millis(200));
    assert!(processes_with(marker).is_empty());
}

/// The default seccomp profile is installed, refuses namespaces and mounts, makes `clone3`
/// fail with ENOSYS (busybox and glibc then use `clone`), and leaves an ordinary step alone;
/// with `fast_sync` it keeps the profile and adds the no-op sync rule.
fn default_seccomp_profile(rt: &'static str) {
    let Some(env) = env(rt) else { return };
    let script = "grep Seccomp: /proc/self/status; \
        unshare -U -r true 2>&1 && echo UNSHARE-WORKED; \
        unshare -m true 2>&1 && echo UNSHARE-M-WORKED; \
        mkdir -p /mnt/t && mount -t tmpfs t /mnt/t 2>&1 && echo MOUNT-WORKED; \
        echo hi > /tmp/f && sync && cat /tmp/f | wc -c; (sleep 0.1 & wait) && echo forked; \
        dd if=/dev/zero of=/tmp/g bs=4096 count=4 conv=fsync 2>/dev/null && echo dd-ok";
    for fast_sync in [false, true] {
        let mut c = sh(script);
        c.fast_sync = fast_sync;
        let text = env.run_ok(&c);
        assert!(text.contains("Seccomp:\t2"), "{rt}: {text}");
        for worked in ["UNSHARE-WORKED", "UNSHARE-M-WORKED", "MOUNT-WORKED"] {
            assert!(!text.contains(worked), "{rt}: {worked}: {text}");
        }
        assert!(text.contains("Operation not permitted"), "{rt}: {text}");
        assert!(text.contains("3\nforked\ndd-ok"), "{rt}: everyday calls work: {text}");
    }
}

macro_rules! under_runtime {
    ($runtime:ident) => {
        mod $runtime {
            const RT: &str = stringify!($runtime);
            #[test]
            fn output_in_order() {
                super::output_in_order(RT)
            }
            #[test]
            fn exit_codes() {
                super::exit_codes(RT)
            }
            #[test]
            fn env_cwd_user() {
                super::env_cwd_user(RT)
            }
            #[test]
            fn network() {
                super::network(RT)
            }
            #[test]
            fn proc_shows_only_the_step() {
                super::proc_shows_only_the_step(RT)
            }
            #[test]
            fn cannot_write_outside_rootfs() {
                super::cannot_write_outside_rootfs(RT)
            }
            #[test]
            fn bind_mounts() {
                super::bind_mounts(RT)
            }
            #[test]
            fn secrets() {
                super::secrets(RT)
            }
            #[test]
            fn stdin_at_eof() {
                super::stdin_at_eof(RT)
            }
            #[test]
            fn timeout_leaves_nothing() {
                super::timeout_leaves_nothing(RT)
            }
            #[test]
            fn cancel_leaves_nothing() {
                super::cancel_leaves_nothing(RT)
            }
            #[test]
            fn log_cap_kills_yes() {
                super::log_cap_kills_yes(RT)
            }
            #[test]
            fn fast_sync() {
                super::fast_sync(RT)
            }
            #[test]
            fn default_seccomp_profile() {
                super::default_seccomp_profile(RT)
            }
            #[test]
            fn limits() {
                super::limits(RT)
            }
            #[test]
            fn runtime_refusal_is_an_error() {
                super::runtime_refusal_is_an_error(RT)
            }
            #[test]
            fn cgroup_limits_applied() {
                super::cgroup_limits_applied(RT)
            }
            #[test]
            fn panicking_sink_leaves_nothing() {
                super::panicking_sink_leaves_nothing(RT)
            }
            #[test]
            fn orphans_removed() {
                super::orphans_removed(RT)
            }
        }
    };
}

under_runtime!(runc);
under_runtime!(crun);

#[test]
fn missing_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = OciSandboxOptions::new(dir.path().join("state"), OWNER, dir.path().join("bundles"));
    options.runtime = "/nonexistent/runc".into();
    let sandbox = OciSandbox::new(options).unwrap();
    let err = sandbox
        .run(&sh("true"), dir.path(), &Collect::default(), &Cancel::new())
        .unwrap_err();
    assert!(matches!(err, SandboxError::RuntimeMissing(_)), "{err}");
    assert!(err.to_string().contains("/nonexistent/runc"));
}

//! Every way a build stops ends its steps before strata exits (issue 13): SIGTERM, SIGINT to
//! the whole process group (as Ctrl-C does), SIGHUP, `--timeout`, `--step-timeout`, a failing
//! stage, and `kill -9` (the step dies with strata; the next command removes the rest). Each
//! interrupt lands while real work runs: a step, a copy writing, a pull, a commit.
//!
//! After each one: no process of the step (found by a marker in its command line), and nothing
//! of the store left (the independent leftover check in `strata_testkit::leftovers`, which its
//! own tests show able to find each kind), nothing committed for the interrupted step, and
//! `strata verify` clean.
//!
//! Before the fix, the SIGTERM, SIGINT and SIGHUP tests failed: strata exited 130 at once while
//! the shim and `sleep` ran on, reparented to init (the leftover check listed the process, its
//! cgroup, and the shim whose cwd is the bundle).

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use strata_testkit::ScriptFixture;

use common::{stderr, stdout, Backend, Env};

/// A build running in the background, its stderr collected line by line.
struct Running {
    child: Child,
    log: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    fn start(mut cmd: std::process::Command, own_group: bool) -> Running {
        if own_group {
            // As a shell starts a foreground job: its own process group, which Ctrl-C hits whole.
            cmd.process_group(0);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn strata");
        let log = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().expect("stderr");
        let sink = log.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        Running {
            child,
            log,
            reader: Some(reader),
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until stderr has a line containing `marker`.
    fn wait_for(&mut self, marker: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.log().lines().any(|l| l.contains(marker)) {
            assert!(
                Instant::now() < deadline,
                "no {marker:?} within {limit:?}:\n{}",
                self.log()
            );
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("strata exited ({status}) before {marker:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).expect("signal strata");
    }

    /// Ctrl-C: SIGINT to every process of the foreground job's group.
    fn signal_group(&self, signal: Signal) {
        kill(Pid::from_raw(-(self.child.id() as i32)), signal).expect("signal the process group");
    }

    /// Waits for strata to exit (killing it after `limit`): its status, stdout and stderr.
    fn finish(mut self, limit: Duration) -> (ExitStatus, String, String) {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("strata did not exit within {limit:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let mut out = String::new();
        if let Some(mut pipe) = self.child.stdout.take() {
            let _ = std::io::Read::read_to_string(&mut pipe, &mut out);
        }
        (status, out, self.log())
    }
}

/// Pids of the processes whose command line contains `needle`.
fn processes_with(needle: &str) -> Vec<i32> {
    let mut found = Vec::new();
    let me = std::process::id() as i32;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if text.contains(needle) {
            found.push(pid);
        }
    }
    found
}

/// The step's processes are gone (checked a little while: a killed process takes a moment).
fn assert_step_gone(marker: &str) {
    let deadline = Instant::now() + Duration::from_secs(3);
    while !processes_with(marker).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        processes_with(marker).is_empty(),
        "the step's processes ({marker}) outlived the build: {:?}",
        processes_with(marker)
    );
}

/// The ids recorded in the store.
fn recorded(env: &Env) -> Vec<String> {
    let out = env.strata(&["ls", "--json"]);
    assert!(out.status.success(), "ls: {}", stderr(&out));
    let rows: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("ls --json");
    rows.as_array()
        .expect("an array")
        .iter()
        .map(|r| r["op"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// A spec whose step prints a marker (computed in the shell, so the heading that shows the
/// command cannot match it) and then sleeps `secs` (a number unique to the test, to find it).
fn sleeping_spec(env: &Env, secs: u32) -> std::path::PathBuf {
    env.spec(
        "sleep.spec",
        &format!(r#"((from busybox) (run (shell "echo started-$((1000+{secs})); sleep {secs}")))"#),
    )
}

fn started(secs: u32) -> String {
    format!("started-{}", 1000 + secs)
}

/// Interrupts a running step with `how`; asserts the documented exit and nothing left.
fn interrupt_running_step(backend: Backend, runtime: &str, secs: u32, how: Interrupt) {
    let env = Env::new(backend);
    let ctx = env.context("ctx");
    // The base first, so that a `--timeout` is spent in the step, not in the pull.
    env.build_ok(&env.spec("base.spec", "((from busybox))"), &ctx, &[]);
    let spec = sleeping_spec(&env, secs);
    let mut extra = vec!["--runtime".to_owned(), runtime.to_owned()];
    match how {
        Interrupt::Timeout(limit) => extra.extend(["--timeout".to_owned(), format!("{limit}s")]),
        Interrupt::StepTimeout(limit) => extra.extend(["--step-timeout".to_owned(), format!("{limit}s")]),
        Interrupt::Signal(_) | Interrupt::GroupSigint => {}
    }
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let mut build = Running::start(env.build_command(&spec, &ctx, &extra), how == Interrupt::GroupSigint);
    build.wait_for(&started(secs), Duration::from_secs(120));
    match how {
        Interrupt::Signal(signal) => build.signal(signal),
        Interrupt::GroupSigint => build.signal_group(Signal::SIGINT),
        Interrupt::Timeout(_) | Interrupt::StepTimeout(_) => {}
    }
    let (status, out, log) = build.finish(Duration::from_secs(60));
    let expected = match how {
        Interrupt::Signal(_) | Interrupt::GroupSigint => 130,
        Interrupt::Timeout(_) | Interrupt::StepTimeout(_) => 1,
    };
    assert_eq!(status.code(), Some(expected), "{log}");
    assert_eq!(out, "", "no final id on an interrupted build");
    assert_step_gone(&format!("sleep {secs}"));
    env.assert_no_leftovers();
    assert_eq!(recorded(&env), ["(from busybox)"], "only the base is recorded");
    env.verify_clean();
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Interrupt {
    Signal(Signal),
    /// SIGINT to strata's whole process group (a terminal's Ctrl-C).
    GroupSigint,
    /// `--timeout N` seconds.
    Timeout(u32),
    /// `--step-timeout N` seconds.
    StepTimeout(u32),
}

#[test]
fn sigterm_left_the_step_running_on_btrfs() {
    interrupt_running_step(Backend::Btrfs, "runc", 1017, Interrupt::Signal(Signal::SIGTERM));
}

#[test]
fn sigterm_left_the_step_running_on_overlayfs() {
    interrupt_running_step(Backend::Overlayfs, "runc", 1018, Interrupt::Signal(Signal::SIGTERM));
}

#[test]
fn sigterm_left_the_step_running_under_crun() {
    interrupt_running_step(Backend::Overlayfs, "crun", 1019, Interrupt::Signal(Signal::SIGTERM));
}

#[test]
fn ctrl_c_to_the_process_group_left_the_step_running_on_btrfs() {
    interrupt_running_step(Backend::Btrfs, "runc", 1020, Interrupt::GroupSigint);
}

#[test]
fn ctrl_c_to_the_process_group_left_the_step_running_on_overlayfs() {
    interrupt_running_step(Backend::Overlayfs, "runc", 1021, Interrupt::GroupSigint);
}

/// SIGHUP (the terminal closed) killed strata outright: nothing stopped the step.
#[test]
fn sighup_left_the_step_running() {
    interrupt_running_step(Backend::Overlayfs, "runc", 1022, Interrupt::Signal(Signal::SIGHUP));
}

#[test]
fn timeout_left_the_step_running_on_btrfs() {
    interrupt_running_step(Backend::Btrfs, "runc", 1023, Interrupt::Timeout(3));
}

#[test]
fn timeout_left_the_step_running_on_overlayfs() {
    interrupt_running_step(Backend::Overlayfs, "runc", 1024, Interrupt::Timeout(3));
}

#[test]
fn step_timeout_left_the_step_running() {
    interrupt_running_step(Backend::Overlayfs, "runc", 1025, Interrupt::StepTimeout(2));
}

/// A stage that fails stops the others: before, the build waited for a sibling stage's
/// `sleep` to end (17 minutes here) before reporting the failure.
#[test]
fn failing_stage_left_the_other_stages_running() {
    let env = Env::new(Backend::Overlayfs);
    let ctx = env.context("ctx");
    let spec = env.spec(
        "stages.spec",
        r#"((build slow ((from busybox) (run (shell "echo started-$((1000+1026)); sleep 1026"))))
            (from busybox)
            (run (shell "echo failing-$((6*7)); sleep 2; exit 3")))"#,
    );
    let started_at = Instant::now();
    let mut build = Running::start(env.build_command(&spec, &ctx, &[]), false);
    build.wait_for(&started(1026), Duration::from_secs(120));
    let (status, _, log) = build.finish(Duration::from_secs(90));
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("exit status 3"),
        "the build reports the stage that failed:\n{log}"
    );
    assert!(
        started_at.elapsed() < Duration::from_secs(80),
        "the failing stage did not stop the other"
    );
    assert_step_gone("sleep 1026");
    env.assert_no_leftovers();
    env.verify_clean();
}

/// SIGTERM while a `copy` writes a large file: exit 130, the copy is not committed.
#[test]
fn sigterm_during_a_copy_commits_nothing() {
    let env = Env::new(Backend::Btrfs);
    let ctx = env.context("ctx");
    let big = std::fs::File::create(ctx.join("big")).unwrap();
    // 150 MB of real bytes: the copy (read, hashed, written) takes seconds in a debug build.
    let mut writer = std::io::BufWriter::new(big);
    let chunk: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    for _ in 0..150 {
        std::io::Write::write_all(&mut writer, &chunk).unwrap();
    }
    drop(writer);
    let spec = env.spec("copy.spec", "((from busybox) (copy (src big) (dst /big)))");
    let mut build = Running::start(env.build_command(&spec, &ctx, &["--progress", "json"]), false);
    build.wait_for(r#""text":"/: (copy"#, Duration::from_secs(120));
    std::thread::sleep(Duration::from_millis(300));
    build.signal(Signal::SIGTERM);
    let interrupted = Instant::now();
    let (status, _, log) = build.finish(Duration::from_secs(120));
    assert_eq!(status.code(), Some(130), "{log}");
    // The copy stops between chunks; before, the interrupt waited for the whole copy.
    assert!(
        interrupted.elapsed() < Duration::from_secs(30),
        "the copy went on for {:?} after the interrupt",
        interrupted.elapsed()
    );
    env.assert_no_leftovers();
    assert_eq!(recorded(&env), ["(from busybox)"], "the copy is not recorded");
    env.verify_clean();
}

/// SIGTERM while the base image is being pulled (a registry whose image has a 60 MB layer):
/// exit 130, nothing recorded, nothing left in `result-tmp`.
#[test]
fn sigterm_during_a_pull_commits_nothing() {
    let env = Env::new(Backend::Overlayfs);
    let big_registry = ScriptFixture::create("registry", &["60"]).expect("registry with a big layer");
    let ctx = env.context("ctx");
    let spec = env.spec("base.spec", "((from busybox))");
    let mut cmd = env.build_command(&spec, &ctx, &["--progress", "json"]);
    cmd.env(
        "STRATA_REGISTRY_MIRROR",
        format!("docker.io=http://{}", big_registry.output),
    );
    let mut build = Running::start(cmd, false);
    build.wait_for(r#""text":"(from busybox)""#, Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(200));
    build.signal(Signal::SIGTERM);
    let (status, _, log) = build.finish(Duration::from_secs(60));
    // The pull may just have finished: then the step is committed and the build succeeded.
    assert!(matches!(status.code(), Some(130 | 0)), "{log}");
    if status.code() == Some(130) {
        assert!(recorded(&env).is_empty(), "an interrupted pull is not recorded");
    }
    env.assert_no_leftovers();
    env.verify_clean();
}

/// SIGTERM as the step ends and its result is being committed: whichever wins, the store is
/// consistent and nothing is left; a committed result is complete.
#[test]
fn sigterm_racing_the_commit_leaves_a_consistent_store() {
    let env = Env::new(Backend::Btrfs);
    let ctx = env.context("ctx");
    for round in 0..3u32 {
        let spec = env.spec(
            "quick.spec",
            &format!(r#"((from busybox) (run (shell "echo started-$((1000+{round})); echo {round} > /x")))"#),
        );
        let mut build = Running::start(env.build_command(&spec, &ctx, &[]), false);
        build.wait_for(&started(round), Duration::from_secs(120));
        build.signal(Signal::SIGTERM);
        let (status, _, log) = build.finish(Duration::from_secs(60));
        assert!(matches!(status.code(), Some(130 | 0)), "{log}");
        env.assert_no_leftovers();
        env.verify_clean();
        // Whatever was committed is whole: a rebuild gives the same result.
        let (_, rebuilt) = env.build_ok(&spec, &ctx, &[]);
        assert!(!rebuilt.contains("error"), "{rebuilt}");
    }
}

/// `kill -9` of strata during a step: the step dies with it (before any other command runs);
/// `verify` then reports the container, its cgroup and bundle, `verify --repair` removes them.
#[test]
fn sigkill_left_the_step_running() {
    let env = Env::new(Backend::Btrfs);
    let ctx = env.context("ctx");
    let spec = sleeping_spec(&env, 1027);
    let mut build = Running::start(env.build_command(&spec, &ctx, &[]), false);
    build.wait_for(&started(1027), Duration::from_secs(120));
    build.signal(Signal::SIGKILL);
    let (status, _, _) = build.finish(Duration::from_secs(10));
    assert_eq!(status.code(), None, "killed");
    assert_step_gone("sleep 1027");

    let out = env.strata(&["verify", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let report: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("verify --json");
    let kinds: Vec<&str> = report["leftovers"]
        .as_array()
        .expect("leftovers")
        .iter()
        .filter_map(|l| l["kind"].as_str())
        .collect();
    for kind in ["container", "cgroup", "bundle"] {
        assert!(kinds.contains(&kind), "verify did not report the {kind}: {report}");
    }
    let out = env.strata(&["verify", "--repair"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    env.verify_clean();
    env.assert_no_leftovers();
}

/// A build waiting for a lease that someone holds exclusively (a prune deleting the id) did not
/// hear SIGTERM: it hung until the holder let go. Failed before the lease wait took the
/// build's cancel token: strata was still waiting when the test gave up after 20 s.
#[test]
fn sigterm_was_not_heard_while_waiting_for_a_lease() {
    let env = Env::new(Backend::Overlayfs);
    let ctx = env.context("ctx");
    let base = env.spec("base.spec", "((from busybox))");
    let (id, _) = env.build_ok(&base, &ctx, &[]);
    let lease = env.store_root().join("state/leases").join(format!("{id}.lock"));
    // Killed on drop, also when the test fails.
    struct Holder(Child);
    impl Drop for Holder {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let holder = Holder(
        std::process::Command::new("flock")
            .arg("-x")
            .arg(&lease)
            .args(["sleep", "120"])
            .spawn()
            .expect("flock"),
    );
    std::thread::sleep(Duration::from_millis(300));
    let mut build = Running::start(env.build_command(&base, &ctx, &[]), false);
    build.wait_for("(from busybox)", Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(500));
    build.signal(Signal::SIGTERM);
    let started = Instant::now();
    let (status, _, log) = build.finish(Duration::from_secs(20));
    drop(holder);
    assert_eq!(status.code(), Some(130), "{log}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the interrupt took {:?}",
        started.elapsed()
    );
    env.assert_no_leftovers();
    env.verify_clean();
}

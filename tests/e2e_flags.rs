//! Every documented `build` flag and maintenance command that had no end-to-end test
//! (issue 13, item 7), each checked by its real effect: what the step sees from inside, what
//! the host's cgroup files say, what the store holds afterwards, and the exit code the README
//! documents (0 ok, 1 step failed, 2 usage, 3 environment, 130 interrupted).
//!
//! A regression test is named after the bug it pins (`..._said_removed`, `..._was_refused`)
//! and says in its comment that it failed on the old code; the others are named after what
//! they check.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{count, stderr, stdout, Backend, Env};

/// Ids in the store, sorted.
fn ids(env: &Env) -> Vec<String> {
    let out = env.strata(&["ls", "--json"]);
    assert!(out.status.success(), "ls: {}", stderr(&out));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let mut ids: Vec<String> = rows.iter().map(|r| r["id"].as_str().unwrap().to_owned()).collect();
    ids.sort();
    ids
}

/// `cache ls --json`: (name, last used) pairs.
fn caches(env: &Env) -> Vec<(String, Option<i64>)> {
    let out = env.strata(&["cache", "ls", "--json"]);
    assert!(out.status.success(), "cache ls: {}", stderr(&out));
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("cache ls --json is not JSON ({e}): {}", stdout(&out)));
    list.iter()
        .map(|c| (c["name"].as_str().unwrap().to_owned(), c["used"].as_i64()))
        .collect()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn cache_names(env: &Env) -> Vec<String> {
    caches(env).into_iter().map(|(n, _)| n).collect()
}

fn json_of(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", stdout(out), stderr(out)))
}

/// A build with `--progress json` running in the background; its step output is read line by
/// line as it comes.
struct LiveBuild {
    child: Child,
    events: std::sync::mpsc::Receiver<serde_json::Value>,
    /// Step output seen so far, joined (output events split lines anywhere).
    output: String,
    started: Instant,
}

impl LiveBuild {
    fn spawn(env: &Env, spec: &Path, ctx: &Path, extra: &[&str]) -> LiveBuild {
        let mut args = vec!["--progress", "json"];
        args.extend_from_slice(extra);
        let mut child = env
            .build_command(spec, ctx, &args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning strata build");
        let err = child.stderr.take().unwrap();
        let (tx, events) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                // Errors at the end are plain text: keep them as a pseudo-event.
                let event =
                    serde_json::from_str(&line).unwrap_or_else(|_| serde_json::json!({"event": "text", "text": line}));
                if tx.send(event).is_err() {
                    break;
                }
            }
        });
        LiveBuild {
            child,
            events,
            output: String::new(),
            started: Instant::now(),
        }
    }

    /// Keeps the step's output and strata's own lines.
    fn record(&mut self, event: &serde_json::Value) {
        let text = event["text"].as_str().unwrap_or("");
        if event["event"] == "output" {
            self.output.push_str(text);
        } else if event["event"] == "text" {
            self.output.push_str(&format!("[strata] {text}\n"));
        }
    }

    /// Waits until a whole line of step output satisfies `pred`; returns it.
    fn wait_for_line(&mut self, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.output.lines().find(|l| pred(l)) {
                if self.output.contains(&format!("{line}\n")) {
                    return line.to_owned();
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(e) => self.record(&e),
                Err(_) => panic!("no {what} within {timeout:?}; output so far:\n{}", self.output),
            }
        }
    }

    /// Waits for exit; returns the exit code, everything the step printed plus strata's own
    /// text lines, and how long the build ran.
    fn finish(mut self) -> (Option<i32>, String, Duration) {
        let status = self.child.wait().expect("waiting for strata");
        let elapsed = self.started.elapsed();
        while let Ok(e) = self.events.recv_timeout(Duration::from_secs(5)) {
            self.record(&e);
        }
        (status.code(), std::mem::take(&mut self.output), elapsed)
    }
}

impl Drop for LiveBuild {
    /// A test that fails half-way stops its build the documented way (SIGTERM: strata ends
    /// the step) before the store's fixture is torn down.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = self.child.wait();
        }
    }
}

/// The value after `key=` on the first line of `text` that starts with it.
fn field<'a>(text: &'a str, key: &str) -> &'a str {
    let prefix = format!("{key}=");
    text.lines()
        .find_map(|l| l.trim().strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no {key}= in:\n{text}"))
        .trim()
}

/// The host's view of `/proc/PID/cgroup` of the process whose command line is `marker`.
/// Looked for until it appears: the step prints its line right after forking the marker,
/// which may not have exec'd yet (the test flaked on that race under load).
fn marker_cgroups(marker: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).replace('\0', " ").trim() == marker {
                if let Ok(text) = std::fs::read_to_string(entry.path().join("cgroup")) {
                    return text;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("no process {marker:?} on the host");
}

/// The host's copy of a file of the step's cgroup. `step_cgroups` is the step's
/// `/proc/PID/cgroup` as the host sees it; `v1` names the controller and file on a v1 hierarchy, `v2` the file on
/// the unified one. The first that exists is read.
fn host_cgroup_file(step_cgroups: &str, v1: (&str, &str), v2: &str) -> Option<(PathBuf, String)> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mut candidates = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mut right = right.split(' ');
        let (Some(fstype), _, Some(options)) = (right.next(), right.next(), right.next()) else {
            continue;
        };
        let Some(mount_point) = left.split(' ').nth(4) else {
            continue;
        };
        for l in step_cgroups.lines() {
            let mut parts = l.trim().splitn(3, ':');
            let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            let path = path.trim_start_matches('/');
            if fstype == "cgroup" && controllers.split(',').any(|c| c == v1.0) && options.split(',').any(|o| o == v1.0)
            {
                candidates.push(Path::new(mount_point).join(path).join(v1.1));
            }
            if fstype == "cgroup2" && controllers.is_empty() {
                candidates.push(Path::new(mount_point).join(path).join(v2));
            }
        }
    }
    candidates
        .into_iter()
        .find_map(|p| std::fs::read_to_string(&p).ok().map(|text| (p, text.trim().to_owned())))
}

/// `--memory`, `--cpus` and `--pids-limit` set the step's cgroup (read from the host while the
/// step runs) and are enforced inside it: a 100 MiB allocation is killed under `--memory 64M`,
/// two busy loops get at most about half a CPU under `--cpus 0.5`, forks fail past
/// `--pids-limit 20`. Without the flags the same step allocates and forks freely (up to the
/// default pids limit, 4096). The step has a cgroup namespace (its own `/proc/self/cgroup`
/// says `/`), so its cgroups are read from the host, through a marker process.
#[test]
fn cgroup_limits_reach_the_step() {
    let env = Env::new(Backend::Overlayfs);
    let ctx = env.context("ctx");
    // 1. A marker process (its cgroups are the step's; it lives until the step's end, so a
    // loaded host still finds it: it was killed after the busy loops, and the test flaked under
    // load), then 2 s of two busy loops (the test reads the host's cgroup files meanwhile),
    // then a 100 MiB buffer, then up to 40 background sleeps.
    let script = |tag: &str| {
        format!(
            r#"((from busybox)
 (run (shell "echo {tag}; sleep 7391 & m=$!; echo cgroups-done
  spin() {{ while :; do :; done; }}
  spin & a=$!; spin & b=$!
  echo wall-start=$(cut -d' ' -f1 /proc/uptime); sleep 2
  set -- $(cut -d' ' -f14,15 /proc/$a/stat) $(cut -d' ' -f14,15 /proc/$b/stat)
  echo wall-end=$(cut -d' ' -f1 /proc/uptime); kill $a $b; wait $a $b
  echo cpu-ticks=$(($1 + $2 + $3 + $4))
  dd if=/dev/zero of=/dev/null bs=100M count=1 2>/dev/null; echo dd-exit=$?
  (i=0; while [ $i -lt 40 ]; do sleep 20 & i=$((i + 1)); echo $i > /tmp/forks; done) 2>/dev/null
  read n < /tmp/forks; echo forks=$n; kill $m"))
 )"#
        )
    };
    let spec = env.spec("limits.spec", &script("limited"));
    let mut build = LiveBuild::spawn(
        &env,
        &spec,
        &ctx,
        &["--memory", "64M", "--cpus", "0.5", "--pids-limit", "20"],
    );
    build.wait_for_line("the step's cgroups", Duration::from_secs(60), |l| l == "cgroups-done");
    let cgroups = marker_cgroups("sleep 7391");
    let memory = host_cgroup_file(&cgroups, ("memory", "memory.limit_in_bytes"), "memory.max");
    let swap = host_cgroup_file(&cgroups, ("memory", "memory.memsw.limit_in_bytes"), "memory.swap.max");
    let quota = host_cgroup_file(&cgroups, ("cpu", "cpu.cfs_quota_us"), "cpu.max");
    let period = host_cgroup_file(&cgroups, ("cpu", "cpu.cfs_period_us"), "cpu.max");
    let pids = host_cgroup_file(&cgroups, ("pids", "pids.max"), "pids.max");
    let (code, log, _) = build.finish();
    assert_eq!(code, Some(0), "{log}");

    let (path, memory) = memory.unwrap_or_else(|| panic!("the step's memory cgroup is not on the host:\n{cgroups}"));
    assert_eq!(memory, "67108864", "{}", path.display());
    if let Some((path, swap)) = &swap {
        // v1: memory+swap equal to memory (when swap accounting is on); v2: no swap at all.
        assert!(swap == "67108864" || swap == "0", "{}: {swap}", path.display());
    }
    let (path, quota) = quota.unwrap_or_else(|| panic!("no cpu cgroup:\n{cgroups}"));
    let (_, period) = period.unwrap();
    if path.ends_with("cpu.max") {
        assert_eq!(quota, "50000 100000", "{}", path.display());
    } else {
        assert_eq!(
            (quota.as_str(), period.as_str()),
            ("50000", "100000"),
            "{}",
            path.display()
        );
    }
    let (path, pids) = pids.unwrap_or_else(|| panic!("no pids cgroup:\n{cgroups}"));
    assert_eq!(pids, "20", "{}", path.display());

    // Enforced: half a CPU over ~2 s is ~100 ticks (at 100 Hz), whatever the load.
    let wall: f64 = field(&log, "wall-end").parse::<f64>().unwrap() - field(&log, "wall-start").parse::<f64>().unwrap();
    let ticks: f64 = field(&log, "cpu-ticks").parse().unwrap();
    assert!(
        ticks > 0.0 && ticks <= 0.5 * wall * 100.0 * 1.3 + 10.0,
        "--cpus 0.5: two busy loops used {ticks} ticks in {wall:.2}s:\n{log}"
    );
    // (Unless the host swaps without accounting for it: then the buffer may go to swap.)
    let may_swap = swap.is_none() && std::fs::read_to_string("/proc/swaps").is_ok_and(|s| s.lines().count() > 1);
    if !may_swap {
        assert_eq!(
            field(&log, "dd-exit"),
            "137",
            "--memory 64M: a 100 MiB buffer must be killed:\n{log}"
        );
    }
    let forks: u32 = field(&log, "forks").parse().unwrap();
    assert!(
        (10..20).contains(&forks),
        "--pids-limit 20: {forks} forks of 40 worked:\n{log}"
    );

    // The same step without limits (a different echo, so not cached): no caps.
    let spec = env.spec("free.spec", &script("unlimited"));
    let mut build = LiveBuild::spawn(&env, &spec, &ctx, &[]);
    build.wait_for_line("the step's cgroups", Duration::from_secs(60), |l| l == "cgroups-done");
    let cgroups = marker_cgroups("sleep 7391");
    let pids = host_cgroup_file(&cgroups, ("pids", "pids.max"), "pids.max");
    let (code, log, _) = build.finish();
    assert_eq!(code, Some(0), "{log}");
    if let Some((path, pids)) = pids {
        assert_eq!(pids, "4096", "the default limit: {}", path.display());
    }
    assert_eq!(field(&log, "dd-exit"), "0", "{log}");
    assert_eq!(field(&log, "forks"), "40", "{log}");
    env.verify_clean();
}

/// `--step-timeout 3s`: a step that runs longer is killed, the build fails with exit 1 and a
/// message naming the timeout, and nothing is recorded for the step; a step within it passes.
#[test]
fn step_timeout_kills_the_step_with_exit_1() {
    let env = Env::new(Backend::Overlayfs);
    let ctx = env.context("ctx");
    let spec = env.spec(
        "slow.spec",
        r#"((from busybox) (run (shell "echo quick > /quick")) (run (shell "echo slow-$((6 * 7)); sleep 60; echo slow-$((6 * 8))")))"#,
    );
    let started = Instant::now();
    let out = env.build(&spec, &ctx, &["--step-timeout", "3s"]);
    let elapsed = started.elapsed();
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    // (The markers are computed, so the spec text in the headings does not contain them.)
    assert!(log.contains("slow-42") && !log.contains("slow-48"), "{log}");
    assert!(
        log.contains("timed out after 3s"),
        "the message names the timeout: {log}"
    );
    assert!(elapsed < Duration::from_secs(30), "the timeout took {elapsed:?}");
    assert_eq!(stdout(&out), "", "no final id on a failure");
    // The base and the quick step are kept; the slow one is not.
    assert_eq!(count(&log, "---> saved as"), 2, "{log}");
    assert_eq!(ids(&env).len(), 2);
    env.verify_clean();
}

/// `--timeout 5s` cancels the whole build (here during its second step, each step well within
/// the step timeout): exit 1, "build timed out after 5s", the step's result not recorded.
#[test]
fn timeout_cancels_the_build() {
    let env = Env::new(Backend::Overlayfs);
    let ctx = env.context("ctx");
    let spec = env.spec(
        "long.spec",
        r#"((from busybox) (run (shell "echo first > /first")) (run (shell "echo second-$((6 * 7)); sleep 60; echo second-$((6 * 8))")))"#,
    );
    env.build_ok(&env.spec("base.spec", "((from busybox))"), &ctx, &[]);
    let started = Instant::now();
    let out = env.build(&spec, &ctx, &["--timeout", "5s", "--step-timeout", "2m"]);
    let elapsed = started.elapsed();
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("build timed out after 5s"), "{log}");
    assert!(log.contains("second-42") && !log.contains("second-48"), "{log}");
    assert!(
        (Duration::from_secs(5)..Duration::from_secs(30)).contains(&elapsed),
        "the 5 s timeout took {elapsed:?}"
    );
    assert_eq!(stdout(&out), "", "no final id on a failure");
    assert_eq!(ids(&env).len(), 2, "base and first step only: {log}");
    env.verify_clean();
}

/// SIGTERM and SIGINT during a step: exit 130, the step's result is not recorded, and the store
/// verifies clean. (Leftover processes are checked by tests/e2e_processes.rs.)
#[test]
fn signals_interrupt_the_build_with_exit_130() {
    let env = Env::new(Backend::Overlayfs);
    let ctx = env.context("ctx");
    let base = env.spec("base.spec", "((from busybox))");
    env.build_ok(&base, &ctx, &[]);
    for signal in [nix::sys::signal::Signal::SIGTERM, nix::sys::signal::Signal::SIGINT] {
        let spec = env.spec(
            "sleepy.spec",
            &format!(r#"((from busybox) (run (shell "echo started-{signal}-$((6 * 7)); sleep 60; echo finished-$((6 * 8))")))"#),
        );
        let mut build = LiveBuild::spawn(&env, &spec, &ctx, &[]);
        build.wait_for_line("the step's start", Duration::from_secs(60), |l| {
            l == format!("started-{signal}-42")
        });
        let pid = nix::unistd::Pid::from_raw(build.child.id() as i32);
        nix::sys::signal::kill(pid, signal).unwrap();
        let (code, log, elapsed) = build.finish();
        assert_eq!(code, Some(130), "{signal}: {log}");
        assert!(!log.contains("finished-48"), "{signal}: {log}");
        assert!(elapsed < Duration::from_secs(40), "{signal}: took {elapsed:?}");
        assert_eq!(ids(&env).len(), 1, "{signal}: only the base is recorded");
    }
    env.verify_clean();
}

/// `--log-limit 1K`: a step printing more is killed at once (not left to finish its sleep),
/// the build fails with exit 1 and says the output passed 1024 bytes; a step printing less
/// passes.
#[test]
fn log_limit_kills_a_chatty_step() {
    let env = Env::new(Backend::Overlayfs);
    let ctx = env.context("ctx");
    let quiet = env.spec(
        "quiet.spec",
        r#"((from busybox) (run (shell "head -c 500 /dev/zero | tr '\\0' q; echo")))"#,
    );
    env.build_ok(&quiet, &ctx, &["--log-limit", "1K"]);
    let chatty = env.spec(
        "chatty.spec",
        r#"((from busybox) (run (shell "head -c 8000 /dev/zero | tr '\\0' x; echo; sleep 60; echo chatty-$((6 * 8))")))"#,
    );
    let started = Instant::now();
    let out = env.build(&chatty, &ctx, &["--log-limit", "1K"]);
    let elapsed = started.elapsed();
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("its output passed 1024 bytes"), "{log}");
    assert!(!log.contains("chatty-48"), "{log}");
    assert!(
        elapsed < Duration::from_secs(30),
        "the step was not killed: {elapsed:?}"
    );
    let longest = log.split(|c| c != 'x').map(str::len).max().unwrap_or(0);
    assert!(
        (1..=1024).contains(&longest),
        "{longest} bytes of output passed a 1024-byte limit:\n{log}"
    );
    // The base and the quiet step only.
    assert_eq!(ids(&env).len(), 2);
    env.verify_clean();
}

/// `--fast-sync`: the step runs under a seccomp filter (`Seccomp: 2` in its own status) that
/// makes the sync family succeed without doing anything; `sync` and `fsync` return 0 and the
/// build succeeds. Without it and with `--seccomp unconfined` there is no filter.
#[test]
fn fast_sync_filters_the_sync_calls() {
    let env = Env::new(Backend::Overlayfs);
    let ctx = env.context("ctx");
    let spec = |tag: &str| {
        env.spec(
            &format!("{tag}.spec"),
            &format!(
                r#"((from busybox) (run (shell "echo {tag}; echo seccomp=$(grep Seccomp: /proc/self/status | tr -dc 0-9); sync; echo sync-exit=$?; dd if=/dev/zero of=/f bs=4k count=8 conv=fsync 2>/dev/null; echo fsync-exit=$?")))"#
            ),
        )
    };
    let (_, log) = env.build_ok(&spec("fast"), &ctx, &["--fast-sync"]);
    assert_eq!(field(&log, "seccomp"), "2", "--fast-sync must install a filter:\n{log}");
    assert_eq!(field(&log, "sync-exit"), "0", "{log}");
    assert_eq!(field(&log, "fsync-exit"), "0", "{log}");
    // The default seccomp profile is a filter too; with it opted out and no --fast-sync, there
    // is none.
    let (_, log) = env.build_ok(&spec("default"), &ctx, &[]);
    assert_eq!(field(&log, "seccomp"), "2", "the default profile:\n{log}");
    let (_, log) = env.build_ok(&spec("slow"), &ctx, &["--seccomp", "unconfined"]);
    assert_eq!(field(&log, "seccomp"), "0", "no filter without --fast-sync:\n{log}");
    assert_eq!(field(&log, "sync-exit"), "0", "{log}");
    env.verify_clean();
}

/// `--sandbox-path HOST:TARGET` binds a host directory and a host file read-only: the step
/// reads both, cannot write them, and nothing of them lands in the result (a later step
/// without the flag does not see them). Malformed or missing paths are usage errors (exit 2).
#[test]
fn sandbox_path_is_read_only_and_not_recorded() {
    let env = Env::new(Backend::Overlayfs);
    let ctx = env.context("ctx");
    let host_dir = env.work.path().join("host-dir");
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::write(host_dir.join("data"), "from-the-host-dir\n").unwrap();
    let host_file = env.work.path().join("host-file");
    std::fs::write(&host_file, "from-the-host-file\n").unwrap();
    let dir_flag = format!("{}:/opt/host", host_dir.display());
    let file_flag = format!("{}:/etc/host-file", host_file.display());

    let first = r#"(run (shell "cat /opt/host/data /etc/host-file
  echo overwritten > /opt/host/data 2>/dev/null; echo write-dir=$?
  touch /opt/host/new 2>/dev/null; echo create=$?
  echo overwritten > /etc/host-file 2>/dev/null; echo write-file=$?"))"#;
    let spec = env.spec("paths.spec", &format!("((from busybox) {first})"));
    let (_, log) = env.build_ok(
        &spec,
        &ctx,
        &["--sandbox-path", &dir_flag, "--sandbox-path", &file_flag],
    );
    assert!(
        log.contains("from-the-host-dir") && log.contains("from-the-host-file"),
        "{log}"
    );
    assert_ne!(field(&log, "write-dir"), "0", "{log}");
    assert_ne!(field(&log, "create"), "0", "{log}");
    assert_ne!(field(&log, "write-file"), "0", "{log}");
    assert_eq!(
        std::fs::read_to_string(host_dir.join("data")).unwrap(),
        "from-the-host-dir\n"
    );
    assert_eq!(std::fs::read_to_string(&host_file).unwrap(), "from-the-host-file\n");
    assert!(!host_dir.join("new").exists());

    // The next step, from the cached first one and without the flag: nothing of the host.
    let spec = env.spec(
        "after.spec",
        &format!(
            r#"((from busybox) {first} (run (shell "! grep -rqs from-the-host /opt /etc && echo host-data-absent")))"#
        ),
    );
    let (_, log) = env.build_ok(&spec, &ctx, &[]);
    assert!(log.contains("using") && log.contains("host-data-absent"), "{log}");

    for bad in ["relative-target:opt", "/nonexistent/strata-e2e:/x", "no-colon"] {
        let out = env.build(&spec, &ctx, &["--sandbox-path", bad]);
        assert_eq!(out.status.code(), Some(2), "--sandbox-path {bad}: {}", stderr(&out));
        assert!(stderr(&out).contains("--sandbox-path"), "{}", stderr(&out));
    }
    env.verify_clean();
}

/// A TCP forwarder on every address of this machine to `target`; counts connections.
fn forwarder(target: String) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let seen = connections.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            seen.fetch_add(1, Ordering::SeqCst);
            let Ok(server) = TcpStream::connect(&target) else {
                continue;
            };
            let pipe = |mut from: TcpStream, mut to: TcpStream| {
                std::thread::spawn(move || {
                    let mut buf = [0u8; 65536];
                    while let Ok(n) = from.read(&mut buf) {
                        if n == 0 || to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = to.shutdown(std::net::Shutdown::Write);
                });
            };
            pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
            pipe(server, client);
        }
    });
    (port, connections)
}

/// A name of this machine that is not loopback by its text (so plain HTTP to it needs
/// `--insecure-registry`) and reaches a listener on every address at `port`: a non-loopback
/// IPv4 address of an interface, else the host name (often 127.0.1.1 in /etc/hosts).
fn non_loopback_name(port: u16) -> String {
    let ip = Command::new("ip").args(["-4", "-o", "addr", "show"]).output();
    let mut candidates: Vec<String> = ip
        .map(|o| stdout(&o))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().skip_while(|w| *w != "inet").nth(1))
        .filter_map(|a| a.split('/').next())
        .filter(|a| a.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| !ip.is_loopback()))
        .map(str::to_owned)
        .collect();
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let hostname = hostname.trim();
    if !hostname.is_empty() && !hostname.eq_ignore_ascii_case("localhost") {
        candidates.push(hostname.to_owned());
    }
    let reaches = |name: &str| {
        (name, port).to_socket_addrs().is_ok_and(|addrs| {
            addrs
                .into_iter()
                .any(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok())
        })
    };
    candidates
        .iter()
        .find(|c| reaches(c))
        .unwrap_or_else(|| panic!("no non-loopback name of this machine reaches port {port}: tried {candidates:?}"))
        .clone()
}

/// `--insecure-registry HOST:PORT` allows plain HTTP to that registry, which is not loopback
/// by name (this machine's own address or host name, reaching the test registry through a
/// forwarder on every address): without the flag a direct pull is tried over HTTPS and fails (exit 3), and a
/// plain-HTTP mirror there is refused before anything runs (exit 2); with the flag both pull;
/// the flag for another host does not help.
#[test]
fn insecure_registry_allows_plain_http_to_that_host_only() {
    let env = Env::new(Backend::Overlayfs);
    let ctx = env.context("ctx");
    let (port, connections) = forwarder(env.registry.clone());
    let host = format!("{}:{port}", non_loopback_name(port));

    let direct = env.spec(
        "direct.spec",
        &format!("((from {host}/library/busybox) (run (shell \"echo direct-pull-ok\")))"),
    );
    let out = env.build(&direct, &ctx, &[]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "HTTPS to a plain-HTTP registry: {}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains(&host),
        "the error names the registry: {}",
        stderr(&out)
    );
    let out = env.build(&direct, &ctx, &["--insecure-registry", "other.example:5000"]);
    assert_eq!(out.status.code(), Some(3), "another host's flag: {}", stderr(&out));
    assert!(ids(&env).is_empty(), "a failed pull recorded something");

    let before = connections.load(Ordering::SeqCst);
    let (_, log) = env.build_ok(&direct, &ctx, &["--insecure-registry", &host]);
    assert!(log.contains("direct-pull-ok"), "{log}");
    assert!(
        connections.load(Ordering::SeqCst) > before,
        "the pull did not go through {host}"
    );

    // A plain-HTTP mirror on that host.
    let mirrored = env.spec(
        "mirrored.spec",
        r#"((from busybox) (run (shell "echo mirror-pull-ok")))"#,
    );
    let mirror = format!("docker.io=http://{host}");
    let mut cmd = env.build_command(&mirrored, &ctx, &[]);
    let out = cmd.env("STRATA_REGISTRY_MIRROR", &mirror).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--insecure-registry"), "{}", stderr(&out));
    let before = connections.load(Ordering::SeqCst);
    let mut cmd = env.build_command(&mirrored, &ctx, &["--insecure-registry", &host]);
    let out = cmd.env("STRATA_REGISTRY_MIRROR", &mirror).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("mirror-pull-ok"), "{}", stderr(&out));
    assert!(
        connections.load(Ordering::SeqCst) > before,
        "the pull did not go through {host}"
    );
    env.verify_clean();
}

const CACHE_SPEC: &str = r#"((from busybox)
 (run (cache (downloads (target /var/cache/dl)) (build-tmp (target /tmp/b)))
      (shell "echo fetched >> /var/cache/dl/marker; touch /tmp/b/x; echo cache-lines=$(wc -l < /var/cache/dl/marker)")))"#;

/// `cache ls` lists the caches a build made with their last use; `cache rm NAME` removes one
/// (a later build finds it empty); `cache rm` of a cache that does not exist is an error.
///
/// Pins: `cache rm no-such-cache` printed "Removed cache no-such-cache" and exited 0 (it failed
/// here on the old code: exit 0, "Removed cache no-such-cache" on stdout).
#[test]
fn cache_rm_of_an_unknown_cache_said_removed() {
    let env = Env::new(Backend::Overlayfs);
    let ctx = env.context("ctx");
    assert!(caches(&env).is_empty());
    let spec = env.spec("cache.spec", CACHE_SPEC);
    let started = now_ms();
    let (_, log) = env.build_ok(&spec, &ctx, &[]);
    assert_eq!(field(&log, "cache-lines"), "1", "{log}");
    let listed = caches(&env);
    let mut names: Vec<&str> = listed.iter().map(|(n, _)| n.as_str()).collect();
    names.sort();
    assert_eq!(names, ["build-tmp", "downloads"], "{listed:?}");
    for (name, used) in &listed {
        let used = used.unwrap_or_else(|| panic!("{name}: no last use"));
        assert!(used >= started - 1000 && used <= now_ms(), "{name}: used {used}");
    }
    let out = env.strata(&["cache", "ls"]);
    assert!(
        stdout(&out).contains("downloads") && stdout(&out).contains("build-tmp"),
        "{}",
        stdout(&out)
    );

    let out = env.strata(&["cache", "rm", "no-such-cache"]);
    assert_eq!(out.status.code(), Some(2), "{}{}", stdout(&out), stderr(&out));
    assert!(!stdout(&out).contains("Removed"), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("no-such-cache"),
        "the error names the cache: {}",
        stderr(&out)
    );
    assert_eq!(cache_names(&env).len(), 2, "an unknown name removed something");

    let out = env.strata(&["cache", "rm", "downloads"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("Removed cache downloads"), "{}", stdout(&out));
    assert_eq!(cache_names(&env), ["build-tmp"]);
    // Not a cache name at all: the same error, not a store failure.
    let out = env.strata(&["cache", "rm", "../state"]);
    assert_eq!(out.status.code(), Some(2), "{}{}", stdout(&out), stderr(&out));
    assert!(env.store_root().join("state/db").is_dir());
    // Removing it again is the unknown case.
    let out = env.strata(&["cache", "rm", "downloads"]);
    assert_eq!(out.status.code(), Some(2), "{}{}", stdout(&out), stderr(&out));

    // The cache starts empty again: the step (forced to rerun by a new echo) sees one line.
    let spec = env.spec("cache2.spec", &CACHE_SPEC.replace("fetched", "fetched-again"));
    let (_, log) = env.build_ok(&spec, &ctx, &[]);
    assert_eq!(field(&log, "cache-lines"), "1", "{log}");
    env.verify_clean();
}

/// `prune --caches` removes the caches along with old items (reported in `--json`, gone from
/// `cache ls`); `prune` without `--caches` keeps them.
#[test]
fn prune_caches_removes_caches() {
    let env = Env::new(Backend::Overlayfs);
    let ctx = env.context("ctx");
    let spec = env.spec("cache.spec", CACHE_SPEC);
    env.build_ok(&spec, &ctx, &[]);
    assert_eq!(cache_names(&env).len(), 2);

    let out = env.strata(&["prune", "--older-than", "0s", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(json_of(&out)["caches_removed"], serde_json::json!([]));
    assert_eq!(cache_names(&env).len(), 2, "prune without --caches removed caches");
    assert!(ids(&env).is_empty());

    env.build_ok(&spec, &ctx, &[]);
    let out = env.strata(&["prune", "--older-than", "0s", "--caches", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = json_of(&out);
    let mut removed: Vec<&str> = report["caches_removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    removed.sort();
    assert_eq!(removed, ["build-tmp", "downloads"], "{report}");
    assert!(cache_names(&env).is_empty());
    assert!(ids(&env).is_empty());
    env.verify_clean();
}

/// `prune --caches` alone removes the caches and keeps every item.
///
/// Pins: `prune --caches` on its own was refused with "say what to prune" (exit 2) (it failed
/// here on the old code).
#[test]
fn prune_caches_alone_was_refused() {
    let env = Env::new(Backend::Overlayfs);
    let ctx = env.context("ctx");
    let spec = env.spec("cache.spec", CACHE_SPEC);
    env.build_ok(&spec, &ctx, &[]);
    let items = ids(&env);
    assert_eq!(items.len(), 2);
    let out = env.strata(&["prune", "--caches", "--json"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let report = json_of(&out);
    assert_eq!(report["removed"], serde_json::json!([]), "{report}");
    assert_eq!(report["caches_removed"].as_array().unwrap().len(), 2, "{report}");
    assert!(cache_names(&env).is_empty());
    assert_eq!(ids(&env), items, "prune --caches alone removed items");
    env.verify_clean();
}

/// `prune --caches --dry-run` lists the caches that would go (with the items that would), and
/// removes nothing.
///
/// Pins: the dry run said nothing of caches: they were only looked at when pruning for real,
/// so `caches_removed` was empty and no "Would remove cache" line was printed (it failed here
/// on the old code: `caches_removed` was `[]`).
#[test]
fn prune_caches_dry_run_listed_no_caches() {
    let env = Env::new(Backend::Overlayfs);
    let ctx = env.context("ctx");
    let spec = env.spec("cache.spec", CACHE_SPEC);
    env.build_ok(&spec, &ctx, &[]);
    let items = ids(&env);
    let mut names = cache_names(&env);
    names.sort();
    assert_eq!(names, ["build-tmp", "downloads"]);
    let sorted = |report: &serde_json::Value, key: &str| -> Vec<String> {
        let mut list: Vec<String> = report[key]
            .as_array()
            .unwrap_or_else(|| panic!("no {key}: {report}"))
            .iter()
            .map(|c| {
                c.as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| c["id"].as_str().unwrap().to_owned())
            })
            .collect();
        list.sort();
        list
    };

    // Caches alone.
    let out = env.strata(&["prune", "--caches", "--dry-run", "--json"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let report = json_of(&out);
    assert_eq!(report["dry_run"], true, "{report}");
    assert_eq!(sorted(&report, "caches_removed"), names, "{report}");
    assert_eq!(report["removed"], serde_json::json!([]), "{report}");
    let out = env.strata(&["prune", "--caches", "--dry-run"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    for name in &names {
        assert!(
            stdout(&out).contains(&format!("Would remove cache {name}")),
            "{}",
            stdout(&out)
        );
    }
    assert!(!stdout(&out).contains("Removed"), "{}", stdout(&out));

    // With the items.
    let out = env.strata(&["prune", "--older-than", "0s", "--caches", "--dry-run", "--json"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let report = json_of(&out);
    assert_eq!(sorted(&report, "caches_removed"), names, "{report}");
    assert_eq!(sorted(&report, "removed"), items, "{report}");

    // Nothing went.
    let mut after = cache_names(&env);
    after.sort();
    assert_eq!(after, names, "a dry run removed caches");
    assert_eq!(ids(&env), items, "a dry run removed items");
    let out = env.strata(&["prune", "--caches", "--json"]);
    assert_eq!(sorted(&json_of(&out), "caches_removed"), names);
    assert!(cache_names(&env).is_empty());
    env.verify_clean();
}

/// `prune --max-used SIZE` removes least-recently-used leaves until the items' recorded sizes
/// add up to at most SIZE, and no further; nothing when they already do.
#[test]
fn prune_max_used_stops_under_the_target() {
    let env = Env::new(Backend::Overlayfs);
    let ctx = env.context("ctx");
    // Four leaves of 4 MiB on one base, built (and so last used) in order.
    let mut leaves = Vec::new();
    for i in 0..4 {
        let spec = env.spec(
            &format!("leaf{i}.spec"),
            &format!(r#"((from busybox) (run (shell "head -c 4194304 /dev/urandom > /blob{i}")))"#),
        );
        leaves.push(env.build_ok(&spec, &ctx, &[]).0);
    }
    let du = |env: &Env| -> u64 {
        let out = env.strata(&["du", "--json"]);
        json_of(&out)["item_bytes"].as_u64().unwrap()
    };
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&env.strata(&["ls", "--json"]).stdout).unwrap();
    for leaf in &leaves {
        let row = rows.iter().find(|r| r["id"] == leaf.as_str()).unwrap();
        let size = row["size"].as_u64().unwrap();
        assert!(
            (4 << 20..6 << 20).contains(&size),
            "a 4 MiB leaf recorded as {size} bytes: {row}"
        );
    }
    let total = du(&env);

    // Already under: nothing goes.
    let out = env.strata(&["prune", "--max-used", &total.to_string(), "--json"]);
    let report = json_of(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(report["removed"], serde_json::json!([]), "{report}");

    // One and a half leaves over: exactly two leaves go, the oldest first.
    let target = total - 6 * (1 << 20);
    let out = env.strata(&["prune", "--max-used", &target.to_string(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = json_of(&out);
    let gone: Vec<&str> = report["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(gone, [leaves[0].as_str(), leaves[1].as_str()], "{report}");
    assert!(
        report["stopped"].as_str().unwrap().starts_with("target met"),
        "{report}"
    );
    let left = du(&env);
    assert!(left <= target, "items use {left} bytes, over the target {target}");
    assert_eq!(ids(&env).len(), 3);

    // A size suffix works too and a target below the base removes everything it can.
    let out = env.strata(&["prune", "--max-used", "1K", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(ids(&env).is_empty(), "{}", stdout(&out));
    env.verify_clean();
}

/// Deletes a store item behind strata's back, btrfs subvolumes included (deepest first).
fn remove_behind_strata(path: &Path) {
    let mut subvolumes = Vec::new();
    let mut stack = vec![path.to_owned()];
    while let Some(dir) = stack.pop() {
        let show = Command::new("btrfs")
            .args(["subvolume", "show"])
            .arg(&dir)
            .output()
            .unwrap();
        if show.status.success() {
            subvolumes.push(dir.clone());
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
        }
    }
    for sub in subvolumes.iter().rev() {
        let st = Command::new("btrfs")
            .args(["property", "set", "-ts"])
            .arg(sub)
            .args(["ro", "false"])
            .status()
            .unwrap();
        assert!(st.success(), "making {} writable", sub.display());
        let st = Command::new("btrfs")
            .args(["subvolume", "delete"])
            .arg(sub)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "deleting subvolume {}", sub.display());
    }
    if path.exists() {
        std::fs::remove_dir_all(path).unwrap();
    }
}

/// `verify --repair` on btrfs: an item deleted behind strata's back (its row goes, and its
/// descendants, whose chain is broken) and the row of another leaf deleted from the database
/// (its item is adopted back) are reported by `verify` (exit 1, naming the ids), fixed by
/// `verify --repair` (exit 0), and `verify` is clean after; the next build rebuilds only what
/// was lost.
#[test]
fn verify_repair_fixes_planted_problems() {
    let env = Env::new(Backend::Btrfs);
    let ctx = env.context("ctx");
    let chain = env.spec(
        "chain.spec",
        r#"((from busybox) (run (shell "echo one > /one")) (run (shell "echo two > /two")) (run (shell "echo three > /three")))"#,
    );
    let branch = env.spec(
        "branch.spec",
        r#"((from busybox) (run (shell "echo one > /one")) (run (shell "echo branch > /branch")))"#,
    );
    let (three, _) = env.build_ok(&chain, &ctx, &[]);
    let (branch_id, _) = env.build_ok(&branch, &ctx, &[]);
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&env.strata(&["ls", "--json"]).stdout).unwrap();
    assert_eq!(rows.len(), 5);
    let parent_of = |id: &str| -> String {
        rows.iter().find(|r| r["id"] == id).unwrap()["parent"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let two = parent_of(&three);
    let one = parent_of(&two);
    let base = parent_of(&one);
    assert_eq!(parent_of(&branch_id), one);

    // Plant: the item `two` vanishes from the store; the row of the branch's leaf vanishes
    // from the database.
    remove_behind_strata(&env.store_root().join("result").join(&two));
    let db = env.store_root().join("state/db/db.sqlite");
    let tables = Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); \
             print([r[0] for r in c.execute(\"select name from sqlite_master where type='table'\")])",
        ])
        .arg(&db)
        .output()
        .unwrap();
    assert!(tables.status.success(), "{}", stderr(&tables));
    let tables = stdout(&tables);
    let table = ["builds", "items", "results"]
        .into_iter()
        .find(|t| tables.contains(&format!("'{t}'")))
        .unwrap_or_else(|| panic!("which table holds the items? {tables}"));
    let st = Command::new("python3")
        .args([
            "-c",
            &format!(
                "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); \
                 n=c.execute('delete from {table} where id=?', (sys.argv[2],)).rowcount; c.commit(); \
                 sys.exit(0 if n == 1 else 1)"
            ),
        ])
        .arg(&db)
        .arg(&branch_id)
        .status()
        .unwrap();
    assert!(st.success(), "deleting the row of {branch_id}");

    // verify reports both (and repairs nothing: a second look sees the same).
    for _ in 0..2 {
        let out = env.strata(&["verify", "--json"]);
        assert_eq!(out.status.code(), Some(1), "{}{}", stdout(&out), stderr(&out));
        let report = json_of(&out);
        let problems = report["problems"].as_array().unwrap();
        let has = |kind: &str, id: &str| problems.iter().any(|p| p["kind"] == kind && p["id"] == id);
        assert!(has("row_without_result", &two), "{report}");
        assert!(has("result_without_row", &branch_id), "{report}");
        assert_eq!(report["repairs"], serde_json::json!([]), "{report}");
    }
    let out = env.strata(&["verify"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains(&format!("problem: {two}")), "{}", stdout(&out));
    assert!(
        stdout(&out).contains(&format!("problem: {branch_id}")),
        "{}",
        stdout(&out)
    );

    let out = env.strata(&["verify", "--repair"]);
    assert_eq!(out.status.code(), Some(0), "{}{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    assert!(text.contains(&format!("repaired: adopted {branch_id}")), "{text}");
    assert!(text.contains(&format!("removed {three}")), "{text}");
    assert!(!text.contains("still:"), "{text}");
    env.verify_clean();

    let mut expected = vec![base, one, branch_id.clone()];
    expected.sort();
    assert_eq!(ids(&env), expected, "two and three go, the adopted leaf stays");
    let (id, log) = env.build_ok(&chain, &ctx, &[]);
    assert_eq!(id, three, "the rebuild makes the same id");
    assert_eq!(
        count(&log, "---> saved as"),
        2,
        "only two and three are rebuilt:\n{log}"
    );
    let (id, log) = env.build_ok(&branch, &ctx, &[]);
    assert_eq!(id, branch_id);
    assert_eq!(count(&log, "---> saved as"), 0, "the adopted leaf is used:\n{log}");
    env.verify_clean();
}

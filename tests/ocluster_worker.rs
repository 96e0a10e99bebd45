//! `strata worker` against real, independent peers: a scheduler stand-in written in C++ on
//! Debian's libcapnp (EzRpcServer exporting the registration service under a name, as
//! OCaml's capnp-rpc does), compiled here with g++; stunnel in front of it with an
//! OpenSSL-made certificate shaped like OCluster's; OpenSSL computes the pinned fingerprint.
//! Needs root (btrfs loop stores, runc), capnproto, libcapnp-dev and stunnel4 (scripts/setup).

mod common;
#[path = "ocluster/mod.rs"]
mod ocluster;

use std::path::Path;
use std::time::Duration;

use common::{Backend, Env};
use ocluster::{build_scheduler, free_port, wait_for, Proc, Scheduler, Tls};

fn spawn_worker(env: &Env, cap: &Path, name: &str, capacity: u32, dir: &Path) -> Proc {
    spawn_worker_with(env, cap, name, capacity, dir, &[])
}

fn spawn_worker_with(env: &Env, cap: &Path, name: &str, capacity: u32, dir: &Path, extra: &[&str]) -> Proc {
    let state = dir.join(format!("state-{name}"));
    let capacity = capacity.to_string();
    let mut args = vec![
        "worker",
        "--connect",
        cap.to_str().unwrap(),
        "--name",
        name,
        "--capacity",
        &capacity,
        "--state-dir",
        state.to_str().unwrap(),
        "--reconnect-interval",
        "1s",
        "-v",
    ];
    args.extend_from_slice(extra);
    let mut cmd = env.command(&args);
    Proc::spawn(name, &mut cmd, &dir.join(format!("worker-{name}.log")))
}

/// Processes whose command line contains `needle`.
fn processes_with(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if text.contains(needle) && !text.contains("cargo") {
                found.push(format!("{}: {text}", entry.file_name().to_string_lossy()));
            }
        }
    }
    found
}

fn is_snapshot_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

#[test]
fn tls_register_pop_log_result_failure_cancel_metrics_and_wrong_fingerprint() {
    let env = Env::new(Backend::Btrfs);
    let dir = env.work.path();
    let exe = build_scheduler(dir);
    let mut sched = Scheduler::start(&exe, &dir.join("sched"), 0);
    sched.add_job(
        "ok",
        "secret tok s3cr3t-value\n",
        "((from busybox)\n (run (secrets (tok (target /run/secrets/tok))) (shell \"echo hello-from-job; cat /run/secrets/tok; echo\")))\n",
    );
    sched.add_job(
        "fail",
        "",
        "((from busybox) (run (shell \"echo about-to-fail; exit 3\")))\n",
    );
    sched.add_job(
        "cancel",
        "cancel-on cancel-me-now\n",
        "((from busybox) (run (shell \"echo cancel-me-now; exec sleep 4321\")))\n",
    );
    sched.add_job("docker", "kind docker\n", "FROM busybox\n");
    sched.add_job("custom", "kind my-kind\n", "");
    // The stand-in read its queue at start: restart it so it sees the jobs.
    sched.restart();
    let tls = Tls::start(dir, sched.port);

    // A wrong fingerprint: the handshake fails, nothing registers.
    let wrong = tls.cap_file(dir, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    let mut impostor = spawn_worker(&env, &wrong, "impostor", 2, dir);
    std::thread::sleep(Duration::from_secs(3));
    assert!(!sched.events().contains("register impostor"), "{}", sched.events());
    impostor.terminate(Duration::from_secs(10));
    let log = std::fs::read_to_string(dir.join("worker-impostor.log")).unwrap();
    assert!(log.contains("not the one in the .cap file"), "{log}");

    // The right one: register, pop, run.
    let cap = tls.cap_file(dir, &tls.fingerprint);
    let mut worker = spawn_worker(&env, &cap, "w1", 2, dir);
    let done = wait_for(Duration::from_secs(300), || {
        ["ok", "fail", "cancel", "docker", "custom"]
            .iter()
            .all(|j| sched.result(j).is_some())
            .then_some(())
    });
    let events = sched.events();
    assert!(
        done.is_some(),
        "events:\n{events}\nworker log:\n{}",
        std::fs::read_to_string(dir.join("worker-w1.log")).unwrap_or_default()
    );
    assert!(events.contains("register w1 2\n"), "{events}");
    assert!(!events.contains("badchunk"), "{events}");

    let ok = sched.result("ok").unwrap();
    let id = ok.trim().strip_prefix("ok ").unwrap_or_else(|| panic!("{ok}"));
    assert!(is_snapshot_id(id), "{ok}");
    let log = sched.log("ok");
    assert!(log.starts_with("Building on w1\n"), "{log}");
    assert!(log.contains("\x1b[01;34m/: (run"), "{log:?}");
    assert!(log.contains("hello-from-job\ns3cr3t-value\n"), "{log:?}");
    assert!(log.ends_with("Job succeeded\n"), "{log:?}");

    let fail = sched.result("fail").unwrap();
    assert!(
        fail.starts_with("error ") && fail.trim_end().ends_with("Build failed"),
        "{fail}"
    );
    let log = sched.log("fail");
    assert!(log.contains("about-to-fail\n"), "{log}");
    assert!(!log.ends_with("Job succeeded\n"), "{log}");

    let cancel = sched.result("cancel").unwrap();
    assert!(cancel.trim_end().ends_with("Build cancelled"), "{cancel}");
    assert!(
        sched.log("cancel").ends_with("Job cancelled\n"),
        "{}",
        sched.log("cancel")
    );
    assert!(events.contains("cancel cancel\n"), "{events}");
    let left = processes_with("sleep 4321");
    assert!(left.is_empty(), "the cancelled step still runs: {left:?}");

    for job in ["docker", "custom"] {
        let r = sched.result(job).unwrap();
        assert!(r.trim_end().ends_with("Build failed"), "{r}");
        assert!(sched.log(job).contains("only runs OBuilder jobs"), "{}", sched.log(job));
    }

    // Metrics: exact content type, and the text parses as Prometheus text.
    let metrics = std::fs::read_to_string(sched.out.join("metrics-w1.txt")).unwrap();
    let (content_type, text) = metrics.split_once('\n').unwrap();
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let value = |name: &str, label: Option<(&str, &str)>| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .map(|s| s.value.clone())
    };
    assert!(matches!(
        value("ocluster_worker_running_jobs", None),
        Some(prometheus_parse::Value::Gauge(_))
    ));
    assert!(matches!(
        value("strata_worker_steps_total", Some(("result", "run"))),
        Some(prometheus_parse::Value::Counter(n)) if n >= 2.0
    ));
    assert!(matches!(
        value("strata_worker_step_duration_seconds", None),
        Some(prometheus_parse::Value::Histogram(_))
    ));
    assert!(matches!(value("strata_store_free_bytes", None), Some(prometheus_parse::Value::Gauge(n)) if n > 0.0));
    let host = std::fs::read_to_string(sched.out.join("metrics-host-w1.txt")).unwrap();
    assert!(host.contains("no node exporter configured"), "{host}");
    let extra = std::fs::read_to_string(sched.out.join("additional-w1.txt")).unwrap();
    assert_eq!(extra, "notReported\n");

    // SIGTERM: a clean exit.
    let status = worker
        .terminate(Duration::from_secs(30))
        .expect("the worker exits on SIGTERM");
    assert!(status.success(), "{status:?}");
}

/// Per scheduler lifetime, the most jobs each worker had at once (assign .. done/requeue).
fn max_running(events: &str) -> std::collections::HashMap<String, usize> {
    use std::collections::HashMap;
    let mut running: HashMap<String, usize> = HashMap::new();
    let mut max: HashMap<String, usize> = HashMap::new();
    for line in events.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["listening", ..] => {
                running.clear();
            }
            ["assign", w, _] => {
                let n = running.entry(w.to_string()).or_default();
                *n += 1;
                let m = max.entry(w.to_string()).or_default();
                *m = (*m).max(*n);
            }
            // A job runs until its result call ends (also when that fails on a disconnect).
            ["result", w, _] => *running.entry(w.to_string()).or_default() -= 1,
            _ => {}
        }
    }
    max
}

#[test]
fn three_workers_share_thirty_jobs_across_a_scheduler_restart() {
    let envs: Vec<Env> = (0..3).map(|_| Env::new(Backend::Btrfs)).collect();
    let dir = envs[0].work.path();
    let exe = build_scheduler(dir);
    let mut sched = Scheduler::start(&exe, &dir.join("sched"), 0);
    for n in 0..30 {
        sched.add_job(
            &format!("job{n:02}"),
            "",
            &format!("((from busybox) (run (shell \"echo job-{n}-ran; sleep 1\")))\n"),
        );
    }
    sched.restart();
    let tls = Tls::start(dir, sched.port);
    let cap = tls.cap_file(dir, &tls.fingerprint);
    let mut workers: Vec<Proc> = envs
        .iter()
        .enumerate()
        .map(|(i, env)| spawn_worker(env, &cap, &format!("w{i}"), 2, dir))
        .collect();
    let done = |s: &Scheduler| (0..30).filter(|n| s.result(&format!("job{n:02}")).is_some()).count();
    // Kill the scheduler mid-queue and start it again on the same port.
    assert!(
        wait_for(Duration::from_secs(300), || (done(&sched) >= 8).then_some(())).is_some(),
        "{}",
        sched.events()
    );
    if let Some(mut p) = sched.proc.take() {
        p.kill();
    }
    sched.restart();
    let finished = wait_for(Duration::from_secs(600), || (done(&sched) == 30).then_some(()));
    let events = sched.events();
    assert!(finished.is_some(), "{events}");
    for n in 0..30 {
        let job = format!("job{n:02}");
        let result = sched.result(&job).unwrap();
        assert!(
            result.starts_with("ok ") && is_snapshot_id(result.trim()[3..].trim()),
            "{job}: {result}"
        );
        // A job whose first run finished just as the scheduler died is handed out again
        // after the restart; its step is then found in the cache rather than run twice.
        let log = sched.log(&job);
        let ran = log.contains(&format!("job-{n}-ran\n"));
        let cached = log.contains(&format!("job-{n}-ran; sleep 1")) && log.contains("from cache");
        assert!(ran || cached, "{job}: {log}");
        let completions = events
            .lines()
            .filter(|l| l.starts_with("done ") && l.ends_with(&format!(" {job}")))
            .count();
        assert_eq!(completions, 1, "{job} completed {completions} times:\n{events}");
    }
    for (worker, max) in max_running(&events) {
        assert!(max <= 2, "{worker} ran {max} jobs at once:\n{events}");
    }
    let served: std::collections::HashSet<&str> = events
        .lines()
        .filter_map(|l| l.strip_prefix("done "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    assert_eq!(served.len(), 3, "not every worker ran jobs:\n{events}");
    assert!(events.matches("listening").count() >= 3, "{events}");
    for w in &mut workers {
        let status = w
            .terminate(Duration::from_secs(30))
            .expect("the worker exits on SIGTERM");
        assert!(status.success(), "{status:?}");
    }
}

/// Runs git in `dir` (a fixed identity), asserts success, returns its trimmed stdout.
fn git(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "test")
        .env("GIT_AUTHOR_EMAIL", "test@example.org")
        .env("GIT_COMMITTER_NAME", "test")
        .env("GIT_COMMITTER_EMAIL", "test@example.org")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn commit_file(repo: &Path, file: &str, text: &str, message: &str) -> String {
    std::fs::write(repo.join(file), text).unwrap();
    git(repo, &["add", file]);
    git(repo, &["commit", "-q", "-m", message]);
    git(repo, &["rev-parse", "HEAD"])
}

fn store_ids(env: &Env) -> Vec<String> {
    let out = env.strata(&["ls", "--json"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    rows.iter().map(|r| r["id"].as_str().unwrap().to_owned()).collect()
}

#[test]
fn git_context_checks_out_the_listed_commit_and_merges_further_ones() {
    let env = Env::new(Backend::Btrfs);
    let dir = env.work.path();
    // A repository served by `git daemon` on loopback (the worker takes git/http/https URLs):
    // on main, A then B (B changes file.txt); on side, from A, C adds other.txt.
    let served = dir.join("served");
    let repo = served.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    let a = commit_file(&repo, "file.txt", "content-of-commit-A\n", "A");
    git(&repo, &["checkout", "-q", "-b", "side"]);
    let c = commit_file(&repo, "other.txt", "content-of-side-C\n", "C");
    git(&repo, &["checkout", "-q", "main"]);
    let b = commit_file(&repo, "file.txt", "content-of-commit-B\n", "B");
    let port = free_port();
    let _daemon = Proc::spawn(
        "git-daemon",
        std::process::Command::new("git")
            .arg("daemon")
            .arg("--reuseaddr")
            .arg("--export-all")
            .arg("--listen=127.0.0.1")
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", served.display()))
            .arg(&served),
        &dir.join("git-daemon.log"),
    );
    let url = format!("git://127.0.0.1:{port}/repo");
    wait_for(Duration::from_secs(10), || {
        std::process::Command::new("git")
            .args(["ls-remote", &url])
            .output()
            .ok()
            .filter(|o| o.status.success())
    })
    .expect("git daemon serves the repository");

    let exe = build_scheduler(dir);
    let mut sched = Scheduler::start(&exe, &dir.join("sched"), 0);
    sched.add_job(
        "first",
        &format!("repository {url}\ncommit {a}\n"),
        "((from busybox)\n (copy (src file.txt) (dst /f))\n (run (shell \"cat /f; ls /other.txt || echo no-other\")))\n",
    );
    sched.add_job(
        "merged",
        &format!("repository {url}\ncommit {b}\ncommit {c}\n"),
        "((from busybox)\n (copy (src file.txt) (dst /f))\n (copy (src other.txt) (dst /o))\n (run (shell \"cat /f /o\")))\n",
    );
    sched.restart();
    let tls = Tls::start(dir, sched.port);
    let cap = tls.cap_file(dir, &tls.fingerprint);
    let _worker = spawn_worker(&env, &cap, "g1", 1, dir);
    let done = wait_for(Duration::from_secs(300), || {
        ["first", "merged"]
            .iter()
            .all(|j| sched.result(j).is_some())
            .then_some(())
    });
    assert!(
        done.is_some(),
        "events:\n{}\nworker log:\n{}",
        sched.events(),
        std::fs::read_to_string(dir.join("worker-g1.log")).unwrap_or_default()
    );
    for job in ["first", "merged"] {
        let result = sched.result(job).unwrap();
        let id = result
            .trim()
            .strip_prefix("ok ")
            .unwrap_or_else(|| panic!("{job}: {result}\n{}", sched.log(job)));
        assert!(is_snapshot_id(id), "{job}: {result}");
        assert!(sched.log(job).ends_with("Job succeeded\n"), "{}", sched.log(job));
    }
    // The listed commit's file, not the branch tip's; nothing of the side branch.
    let log = sched.log("first");
    assert!(log.contains("content-of-commit-A\n"), "{log}");
    assert!(!log.contains("content-of-commit-B"), "{log}");
    assert!(log.contains("no-other\n"), "{log}");
    // B with C merged in: B's file.txt and C's other.txt.
    let log = sched.log("merged");
    assert!(log.contains("content-of-commit-B\ncontent-of-side-C\n"), "{log}");
    assert!(!log.contains("content-of-commit-A"), "{log}");
}

#[test]
fn prune_threshold_goes_inactive_prunes_the_store_and_comes_back() {
    let env = Env::new(Backend::Btrfs);
    let dir = env.work.path();
    // Items in the store before the worker starts.
    let spec = env.spec("seed.spec", "((from busybox) (run (shell \"echo seeded > /seed\")))\n");
    let (seed, _) = env.build_ok(&spec, &env.context("seed-ctx"), &[]);
    let before = store_ids(&env);
    assert!(before.contains(&seed), "{before:?}");

    let exe = build_scheduler(dir);
    let mut sched = Scheduler::start(&exe, &dir.join("sched"), 0);
    sched.add_job(
        "after-prune",
        "",
        "((from busybox) (run (shell \"echo ran-after-prune\")))\n",
    );
    sched.restart();
    let tls = Tls::start(dir, sched.port);
    let cap = tls.cap_file(dir, &tls.fingerprint);
    // No store is ever 100% free: the worker prunes before every pop.
    let _worker = spawn_worker_with(&env, &cap, "p1", 1, dir, &["--prune-threshold", "100"]);
    let worker_log = || std::fs::read_to_string(dir.join("worker-p1.log")).unwrap_or_default();
    // Before the first pop and again after the job: false then true, twice.
    let events = wait_for(Duration::from_secs(300), || {
        let events = sched.events();
        (events.matches("active p1 1\n").count() >= 2).then_some(events)
    })
    .unwrap_or_else(|| panic!("events:\n{}\nworker log:\n{}", sched.events(), worker_log()));
    // (The stand-in writes "done" after it read the log, which may be after the next prune began.)
    let lines: Vec<&str> = events
        .lines()
        .filter(|l| l.starts_with("active ") || l.starts_with("assign "))
        .collect();
    assert_eq!(
        lines.get(..5),
        Some(
            &[
                "active p1 0",
                "active p1 1",
                "assign p1 after-prune",
                "active p1 0",
                "active p1 1",
            ][..]
        ),
        "{events}"
    );
    assert!(
        wait_for(Duration::from_secs(30), || sched.result("after-prune")).is_some(),
        "{events}"
    );
    let result = sched.result("after-prune").unwrap();
    let id = result.trim().strip_prefix("ok ").unwrap_or_else(|| panic!("{result}"));
    assert!(is_snapshot_id(id), "{result}");
    assert!(sched.log("after-prune").contains("ran-after-prune\n"));
    // Both prunes emptied the store: the seeded items and the job's.
    let after = store_ids(&env);
    assert!(
        after.is_empty(),
        "left after the prunes: {after:?}\nworker log:\n{}",
        worker_log()
    );
    assert!(worker_log().contains("pruned"), "{}", worker_log());
}

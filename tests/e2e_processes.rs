//! Several strata processes on one store, and crashes: per-id locks, leases, repair.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{final_id, stderr, Backend, Env};

/// 4 processes building overlapping specs at once run each shared step exactly once.
fn overlapping_processes(backend: Backend) {
    let env = Env::new(backend);
    let ctx = env.context("ctx");
    std::fs::write(ctx.join("f"), "shared\n").unwrap();
    // Warm the base so the race is on the shared steps, not the fetch.
    let base = env.spec("base.spec", "((from busybox))");
    env.build_ok(&base, &ctx, &[]);
    let specs: Vec<_> = (0..4)
        .map(|i| {
            env.spec(
                &format!("p{i}.spec"),
                &format!(
                    r#"((from busybox)
 (copy (src f) (dst /f))
 (run (shell "sleep 1; echo shared-step"))
 (run (shell "echo branch-{b}"))
 (run (shell "echo leaf-{i}")))"#,
                    b = i % 2
                ),
            )
        })
        .collect();
    let children: Vec<_> = specs
        .iter()
        .map(|spec| {
            env.command(&[
                "build",
                "-f",
                spec.to_str().unwrap(),
                ctx.to_str().unwrap(),
                "--progress",
                "plain",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn strata")
        })
        .collect();
    let mut saved: Vec<String> = Vec::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        final_id(&out);
        saved.extend(
            stderr(&out)
                .lines()
                .filter_map(|l| l.split("---> saved as ").nth(1).map(str::to_owned)),
        );
    }
    let mut unique = saved.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(saved.len(), unique.len(), "a step was built twice: {saved:?}");
    // copy + shared run + 2 branches + 4 leaves.
    assert_eq!(unique.len(), 1 + 1 + 2 + 4, "{saved:?}");
    env.verify_clean();
}

#[test]
fn overlapping_processes_on_btrfs() {
    overlapping_processes(Backend::Btrfs);
}

#[test]
fn overlapping_processes_on_overlayfs() {
    overlapping_processes(Backend::Overlayfs);
}

/// `kill -9` of strata during a run step, then a rebuild: same id as a clean build, no
/// container left, verify clean.
#[test]
fn kill_during_run_then_rebuild() {
    let env = Env::new(Backend::Btrfs);
    let ctx = env.context("ctx");
    let spec = env.spec(
        "slow.spec",
        r#"((from busybox) (run (shell "sleep 3; echo done > /x")) (run (shell "cat /x")))"#,
    );
    let clean = Env::new(Backend::Overlayfs);
    let (expected, _) = clean.build_ok(&spec, &ctx, &[]);

    let base = env.spec("base.spec", "((from busybox))");
    env.build_ok(&base, &ctx, &[]);
    let mut child = env
        .command(&[
            "build",
            "-f",
            spec.to_str().unwrap(),
            ctx.to_str().unwrap(),
            "--progress",
            "plain",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    child.kill().unwrap();
    child.wait().unwrap();
    let (id, _) = env.build_ok(&spec, &ctx, &[]);
    assert_eq!(id, expected);
    env.verify_clean();
    let runc = std::process::Command::new("runc")
        .args(["--root"])
        .arg(env.store_root().join("state/sandbox"))
        .args(["list", "-q"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&runc.stdout).trim(),
        "",
        "containers left behind"
    );
}

/// A database locked by another process is waited for, not an error.
#[test]
fn locked_database_is_waited_for() {
    let env = Env::new(Backend::Overlayfs);
    let out = env.strata(&["ls"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let db = env.store_root().join("state/db/db.sqlite");
    let mut locker = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys,time; c=sqlite3.connect(sys.argv[1], isolation_level=None); \
             c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); time.sleep(2); c.execute('COMMIT')",
        ])
        .arg(&db)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(locker.stdout.take().unwrap()), &mut line).unwrap();
    assert_eq!(line.trim(), "locked");
    let started = Instant::now();
    let out = env.strata(&["ls", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "ls did not wait for the lock"
    );
    locker.wait().unwrap();
}

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
    env.assert_no_leftovers();
}

/// Two `strata prune --older-than 0s` processes released at the same moment (both block on
/// one pipe until the test closes its write end) while a build runs a step on the same store:
/// both prunes exit 0 and delete what is not in use, the build succeeds, `verify` is clean and
/// nothing is left behind.
fn two_prunes_released_together_during_a_build(backend: Backend) {
    use std::io::BufRead;

    let env = Env::new(backend);
    let ctx = env.context("ctx");
    // Six committed items in a chain for the prunes to delete.
    let chain = env.spec(
        "chain.spec",
        r#"((from busybox)
 (run (shell "echo 1 > /1")) (run (shell "echo 2 > /2")) (run (shell "echo 3 > /3"))
 (run (shell "echo 4 > /4")) (run (shell "echo 5 > /5")) (run (shell "echo 6 > /6")))"#,
    );
    let (chain_id, _) = env.build_ok(&chain, &ctx, &[]);
    let slow = env.spec(
        "slow.spec",
        r#"((from busybox) (run (shell "echo prune-race-started; sleep 3; echo done > /x")) (run (shell "cat /x")))"#,
    );
    let mut build = env
        .build_command(&slow, &ctx, &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let build_stderr = build.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        for line in std::io::BufReader::new(build_stderr).lines().map_while(Result::ok) {
            if line.contains("prune-race-started") {
                let _ = started_tx.send(());
            }
            text.push_str(&line);
            text.push('\n');
        }
        text
    });

    // The barrier: both prunes wait in `read` on the same pipe; closing the write end
    // releases them together.
    let (release_read, release_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let base = env.command(&[]);
    let prunes: Vec<_> = (0..2)
        .map(|_| {
            let mut cmd = std::process::Command::new("sh");
            cmd.args(["-c", "read -r _ || true; exec \"$@\"", "sh"])
                .arg(env!("CARGO_BIN_EXE_strata"))
                .args(["prune", "--older-than", "0s"]);
            for (key, value) in base.get_envs() {
                match value {
                    Some(value) => cmd.env(key, value),
                    None => cmd.env_remove(key),
                };
            }
            cmd.stdin(Stdio::from(release_read.try_clone().unwrap()))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    drop(release_read);
    let marker = started_rx.recv_timeout(Duration::from_secs(60));
    // Release the prunes even if the marker never came, so that nothing waits forever.
    drop(release_write);
    assert!(marker.is_ok(), "the build's step never started");
    for prune in prunes {
        let out = prune.wait_with_output().unwrap();
        assert!(out.status.success(), "prune failed ({}): {}", out.status, stderr(&out));
    }
    let status = build.wait().unwrap();
    let build_log = reader.join().unwrap();
    assert!(status.success(), "build failed ({status}):\n{build_log}");
    let ls = env.strata(&["ls"]);
    assert!(ls.status.success(), "{}", stderr(&ls));
    assert!(
        !common::stdout(&ls).contains(&chain_id),
        "the prunes left the unused chain: {}",
        common::stdout(&ls)
    );
    env.verify_clean();
    env.assert_no_leftovers();
}

#[test]
fn two_prunes_released_together_during_a_build_on_btrfs() {
    two_prunes_released_together_during_a_build(Backend::Btrfs);
}

#[test]
fn two_prunes_released_together_during_a_build_on_overlayfs() {
    two_prunes_released_together_during_a_build(Backend::Overlayfs);
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

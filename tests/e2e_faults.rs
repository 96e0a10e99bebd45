//! Faults, end to end through the binary: a full disk during a step, a runtime that crashes,
//! a store made read-only, a registry that answers 500. Each must fail with a clear message
//! and the documented exit code, never hang, and leave a store the next command can use.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::{stderr, stdout, Backend, Env};

/// A step that fills a small btrfs store fails with "No space left on device" (not a hang); after a prune the same store builds again and verifies clean.
#[test]
fn disk_full_during_a_step() {
    let env = Env::with_options(Backend::Btrfs, None, &["300M"]);
    let ctx = env.context("ctx");
    let fill = env.spec(
        "fill.spec",
        r#"((from busybox) (run (shell "echo filling; dd if=/dev/zero of=/big bs=1M count=2000; echo dd-exit=$?; exit 1")))"#,
    );
    let started = std::time::Instant::now();
    let out = env.build(&fill, &ctx, &[]);
    let log = stderr(&out);
    // 1 when only the step's command saw the full disk, 3 when strata could not write the
    // step's log either; the message says why in both cases.
    assert!(matches!(out.status.code(), Some(1 | 3)), "{log}");
    assert!(log.contains("No space left on device"), "{log}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(120),
        "the full disk took {:?}",
        started.elapsed()
    );

    let out = env.strata(&["prune", "--older-than", "0s"]);
    assert!(
        out.status.success(),
        "prune on a once-full store: {}{}",
        stdout(&out),
        stderr(&out)
    );
    let small = env.spec("small.spec", r#"((from busybox) (run (shell "echo after-full > /x")))"#);
    let (_, log) = env.build_ok(&small, &ctx, &[]);
    assert!(log.contains("---> saved as"), "{log}");
    env.verify_clean();
}

/// A runtime program that answers `--version` like a runc without CVE-2024-21626 (so the version
/// gate lets it through) but dies of SIGSEGV when asked to run a container: the build fails
/// with exit 3 naming the runtime, records nothing, and the next build with the real runtime
/// works.
#[test]
fn runtime_that_crashes() {
    let env = Env::new(Backend::Overlayfs);
    let ctx = env.context("ctx");
    let fake = env.work.path().join("runc-crashing");
    std::fs::write(
        &fake,
        "#!/bin/sh\n\
         case \" $* \" in\n\
         *' --version '*) echo 'runc version 1.1.12'; echo 'spec: 1.0.2-dev' ;;\n\
         *' run '*|*' create '*) echo 'runtime: about to crash' >&2; kill -SEGV $$ ;;\n\
         *' list '*) echo '[]' ;;\n\
         *) exit 0 ;;\n\
         esac\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let spec = env.spec("run.spec", r#"((from busybox) (run (shell "echo ran-$((40 + 2))")))"#);
    let out = env.build(&spec, &ctx, &["--runtime", fake.to_str().unwrap()]);
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{log}");
    assert!(log.contains("runc-crashing"), "the error names the runtime: {log}");
    assert!(!log.contains("ran-42"), "{log}");
    assert_eq!(
        common::count(&log, "---> saved as"),
        1,
        "only the base may be recorded:\n{log}"
    );

    let (_, log) = env.build_ok(&spec, &ctx, &[]);
    assert!(log.contains("ran-42"), "{log}");
    env.verify_clean();
}

/// A store whose filesystem is read-only: build exits 3 with the reason, healthcheck reports
/// unhealthy; once writable again the store works and verifies clean.
#[test]
fn store_made_read_only() {
    let env = Env::with_options(Backend::Overlayfs, None, &["tmpfs"]);
    let ctx = env.context("ctx");
    let spec = env.spec("one.spec", r#"((from busybox) (run (shell "echo one > /one")))"#);
    env.build_ok(&spec, &ctx, &[]);
    let fs = env.store_root().parent().unwrap().to_owned();
    let remount = |mode: &str| {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,{mode}")])
            .arg(&fs)
            .status()
            .unwrap();
        assert!(st.success(), "remount {mode}");
    };
    remount("ro");
    let two = env.spec("two.spec", r#"((from busybox) (run (shell "echo two > /two")))"#);
    let out = env.build(&two, &ctx, &[]);
    let log = stderr(&out);
    let health = env.strata(&["healthcheck"]);
    remount("rw");
    assert_eq!(out.status.code(), Some(3), "{log}");
    assert!(log.to_lowercase().contains("read-only"), "{log}");
    assert_eq!(health.status.code(), Some(1), "{}{}", stdout(&health), stderr(&health));
    assert!(
        stdout(&health).contains("unhealthy"),
        "{}{}",
        stdout(&health),
        stderr(&health)
    );

    let (_, log) = env.build_ok(&two, &ctx, &[]);
    assert!(log.contains("---> saved as"), "{log}");
    env.verify_clean();
}

/// A registry that answers every request with 500: exit 3 with the status in the message,
/// nothing recorded.
#[test]
fn registry_answering_500() {
    let env = Env::new(Backend::Overlayfs);
    let ctx = env.context("ctx");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            // Read the request head, then answer 500.
            while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                if line == "\r\n" {
                    break;
                }
                line.clear();
            }
            let body = "registry exploded";
            let _ = write!(
                stream,
                "HTTP/1.1 500 Internal Server Error\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let spec = env.spec("base.spec", "((from busybox))");
    let mut cmd = env.build_command(&spec, &ctx, &[]);
    cmd.env("STRATA_REGISTRY_MIRROR", format!("docker.io=http://{addr}"));
    let out = cmd.output().unwrap();
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{log}");
    assert!(log.contains("500"), "the status is named: {log}");
    let ls = env.strata(&["ls", "--json"]);
    assert_eq!(stdout(&ls).trim(), "[]", "a failed pull recorded something");
    env.verify_clean();
}

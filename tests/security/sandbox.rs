//! Issue 15, the sandbox's part: what a step may do to the host, tried as an attacker would,
//! through the real `strata` binary under the real runc and crun (root).
//!
//! Each test is named after the attack it stops. Those marked "failed before the fix" were run
//! against the binary of commit d726ff4 (before the defences) and failed there as their
//! comment says; the others pin a new operator flag or the absence of a regression.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{stderr, Backend, Env};

const RUNTIMES: [&str; 2] = ["runc", "crun"];

/// Builds `spec` under `runtime` and returns the build's stderr (step output included),
/// asserting success.
fn build_under(env: &Env, spec: &Path, runtime: &str, extra: &[&str]) -> String {
    let mut args = vec!["--runtime", runtime];
    args.extend_from_slice(extra);
    env.build_ok(spec, &env.context("ctx"), &args).1
}

/// The value of `KEY=VALUE` printed by a step.
fn printed<'a>(log: &'a str, key: &str) -> Option<&'a str> {
    log.lines()
        .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
        .next()
}

/// Whether a step printed exactly `line` (the step's heading echoes its command, so a plain
/// `contains` would find the command's own words).
fn has_line(log: &str, line: &str) -> bool {
    log.lines().any(|l| l.trim() == line)
}

/// Capability numbers (linux/capability.h).
const CAP_NET_BIND_SERVICE: u32 = 10;
const CAP_NET_RAW: u32 = 13;
const CAP_SYS_ADMIN: u32 = 21;

/// `(network host)` gave steps CAP_NET_RAW: `arping` on the host's interfaces worked. Failed
/// before the fix: CapEff had bit 13, and arping opened its packet socket.
#[test]
fn net_raw_gone_under_host_network() {
    let env = Env::new(Backend::Overlayfs);
    for rt in RUNTIMES {
        let spec = env.spec(
            &format!("raw-{rt}.spec"),
            &format!(
                r#"((from busybox)
                    (run (network host)
                         (shell "echo rt={rt}; echo capeff=$(grep CapEff /proc/self/status | cut -f2); \
                                 arping -c 1 -w 1 -I lo 127.0.0.1 2>&1; echo arping=$?")))"#
            ),
        );
        let log = build_under(&env, &spec, rt, &[]);
        let capeff = printed(&log, "capeff").unwrap_or_else(|| panic!("{rt}: no CapEff in {log}"));
        let caps = u64::from_str_radix(capeff, 16).unwrap();
        assert_eq!(caps & (1 << CAP_NET_RAW), 0, "{rt}: CAP_NET_RAW in CapEff {capeff}");
        assert_eq!(
            caps & (1 << CAP_NET_BIND_SERVICE),
            0,
            "{rt}: CAP_NET_BIND_SERVICE in {capeff}"
        );
        assert_eq!(caps & (1 << CAP_SYS_ADMIN), 0, "{rt}: CAP_SYS_ADMIN in {capeff}");
        assert_eq!(caps.count_ones(), 12, "{rt}: OBuilder's 12 capabilities, got {capeff}");
        assert_ne!(printed(&log, "arping"), Some("0"), "{rt}: arping worked:\n{log}");
        assert!(log.contains("Operation not permitted"), "{rt}: {log}");
    }
    env.assert_no_leftovers();
}

/// A step listened on the host's port 81 under `(network host)`. Failed before the fix: `nc`
/// bound the port and waited (timeout's 124), no "Permission denied".
#[test]
fn port_below_1024_cannot_be_bound() {
    let env = Env::new(Backend::Overlayfs);
    for rt in RUNTIMES {
        let spec = env.spec(
            &format!("bind-{rt}.spec"),
            &format!(
                r#"((from busybox)
                    (run (network host)
                         (shell "echo rt={rt}; timeout 1 nc -l -p 81 2>&1; echo low=$?; \
                                 timeout 1 nc -l -p 48181 2>&1; echo high=$?")))"#
            ),
        );
        let log = build_under(&env, &spec, rt, &[]);
        assert!(log.contains("Permission denied"), "{rt}: {log}");
        assert_eq!(printed(&log, "low"), Some("1"), "{rt}: port 81 was bound:\n{log}");
        // The control: an unprivileged port still binds (nc waits until timeout kills it: 143,
        // or 124 from a coreutils timeout).
        assert!(matches!(printed(&log, "high"), Some("143" | "124")), "{rt}: {log}");
    }
    env.assert_no_leftovers();
}

/// `unshare -U -r` then a tmpfs mount succeeded inside a step (Docker's default profile forbids
/// both). Failed before the fix: the user namespace was made (`USERNS`), the tmpfs mounted in
/// it (`MOUNTED`), and no filter was installed (`Seccomp: 0`).
#[test]
fn unshare_user_namespace_then_mount_refused() {
    let env = Env::new(Backend::Overlayfs);
    for rt in RUNTIMES {
        let spec = env.spec(
            &format!("unshare-{rt}.spec"),
            &format!(
                r#"((from busybox)
                    (run (shell "echo rt={rt}; mkdir -p /mnt/t; \
                                 unshare -U true 2>&1 && echo USERNS; \
                                 unshare -U -r -m sh -c 'mount -t tmpfs t /mnt/t && echo MOUNTED' 2>&1; \
                                 unshare -m -n -p -f true 2>&1 && echo UNSHARED; \
                                 mount -t tmpfs t /mnt/t 2>&1 && echo MOUNTED-AS-ROOT; \
                                 grep Seccomp: /proc/self/status; echo done")))"#
            ),
        );
        let log = build_under(&env, &spec, rt, &[]);
        for line in ["USERNS", "MOUNTED", "UNSHARED", "MOUNTED-AS-ROOT"] {
            assert!(!has_line(&log, line), "{rt}: {line}:\n{log}");
        }
        assert!(log.contains("Operation not permitted"), "{rt}: {log}");
        assert!(log.contains("Seccomp:\t2"), "{rt}: the filter is installed: {log}");
    }
    env.assert_no_leftovers();
}

/// The processes of a step, seen from the host: any process whose command line has `marker`.
fn processes_with(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(marker) {
                found.push(cmdline);
            }
        }
    }
    found
}

/// A fork bomb: with no default pids limit a step started 400 processes and could take the
/// host's pid space. Bounded here: 5000 background sleeps, with the default limit of 4096 the
/// shell fails to fork before that, and when the step ends every sleep dies with it. Failed
/// before the fix: all 5000 started.
#[test]
fn fork_bomb_stopped_by_default_pids_limit() {
    let env = Env::new(Backend::Overlayfs);
    for (rt, secs) in [("runc", 3141), ("crun", 3142)] {
        let spec = env.spec(
            &format!("bomb-{rt}.spec"),
            &format!(
                r#"((from busybox)
                    (run (shell "echo rt={rt}; \
                                 (i=0; while [ $i -lt 5000 ]; do sleep {secs} & i=$((i+1)); echo $i > /tmp/n; done) \
                                   > /dev/null 2> /tmp/err; \
                                 read n < /tmp/n; echo started=$n; while read l; do echo \"err: $l\"; done < /tmp/err")))"#
            ),
        );
        let out = env.build(&spec, &env.context("ctx"), &["--runtime", rt]);
        let log = stderr(&out);
        let started: u32 = printed(&log, "started")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{rt}: {log}"));
        assert!(started < 4096, "{rt}: {started} processes started:\n{log}");
        assert!(started > 1000, "{rt}: the limit is 4096, not lower: {started}\n{log}");
        assert!(log.contains("can't fork"), "{rt}: {log}");
        // Whatever the step's exit, nothing it started survives it.
        std::thread::sleep(std::time::Duration::from_millis(500));
        let left = processes_with(&format!("sleep {secs}"));
        assert!(left.is_empty(), "{rt}: {} sleeps left running", left.len());
    }
    env.assert_no_leftovers();
}

/// `--pids-limit 0` lifts the default limit. Failed before the fix: exit 3, "invalid pids
/// limit 0", after the base was pulled.
#[test]
fn pids_limit_zero_means_no_limit() {
    let env = Env::new(Backend::Overlayfs);
    let spec = env.spec(
        "many.spec",
        r#"((from busybox)
            (run (shell "(i=0; while [ $i -lt 4200 ]; do sleep 3143 & i=$((i+1)); echo $i > /tmp/n; done) \
                           > /dev/null 2> /tmp/err; \
                         read n < /tmp/n; echo started=$n")))"#,
    );
    let log = build_under(&env, &spec, "runc", &["--pids-limit", "0"]);
    assert_eq!(printed(&log, "started"), Some("4200"), "{log}");
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(processes_with("sleep 3143").is_empty());
    env.assert_no_leftovers();
}

/// An operator who forbids host networking: `--no-host-network` makes `build` refuse a spec
/// with `(network host)` before anything runs, exit 2, with the position of the step.
#[test]
fn no_host_network_refuses_with_position() {
    let env = Env::new(Backend::Overlayfs);
    let spec = env.spec(
        "net.spec",
        "((from busybox)\n (run (shell \"echo fine\"))\n  (run (network host) (shell \"echo RAN\")))\n",
    );
    let out = env.build(&spec, &env.context("ctx"), &["--no-host-network"]);
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{log}");
    assert!(
        log.contains(&format!("{}:3:3: error: (network host)", spec.display())),
        "{log}"
    );
    assert!(log.contains("--no-host-network"), "{log}");
    assert!(!log.contains("(from busybox)"), "nothing ran: {log}");
    // Without the flag the same spec builds.
    build_under(&env, &spec, "runc", &[]);
}

/// The same attack through a symlink an earlier step made: `(workdir /fds/7)` with `/fds ->
/// /proc/self/fd` passes the spec-level check. `build` resolves the workdir inside the rootfs
/// before the step runs and refuses it (exit 2), under both runtimes. Failed before the fix:
/// the spec went to the runtime, whose own (patched) check failed obscurely (exit 3, "mkdir
/// /fds/7: not a directory"); an unpatched runc would have started the step there.
#[test]
fn workdir_symlinked_into_proc_was_not_refused() {
    let env = Env::new(Backend::Overlayfs);
    for runtime in RUNTIMES {
        let spec = env.spec(
            "wd-link.spec",
            &format!(
                "((from busybox)\n (run (shell \"ln -s /proc/self/fd /fds-{runtime}\"))\n (workdir /fds-{runtime}/7)\n (run (shell \"echo RAN; pwd\")))\n"
            ),
        );
        let out = env.build(&spec, &env.context("ctx"), &["--runtime", runtime]);
        let log = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{runtime}: {log}");
        assert!(
            log.contains("resolves through the rootfs's symlinks to /proc"),
            "{runtime}: {log}"
        );
        assert!(!has_line(&log, "RAN"), "{runtime}: {log}");
    }
}

/// `(workdir /proc/self/fd/N)` is how CVE-2024-21626 reaches a host descriptor: `build` refuses
/// a workdir under /proc, /sys or /dev with its position (exit 2), `check` only warns. Failed
/// before the fix: the spec went to runc, which failed obscurely after the base was pulled
/// (exit 3, "mkdir /proc/self/fd/7: not a directory"), no position.
#[test]
fn workdir_under_proc_refused_with_position() {
    let env = Env::new(Backend::Overlayfs);
    let spec = env.spec(
        "wd.spec",
        "((from busybox)\n (workdir /proc)\n (workdir self/fd/7)\n (run (shell \"echo RAN; pwd\")))\n",
    );
    let out = env.build(&spec, &env.context("ctx"), &[]);
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{log}");
    assert!(
        log.contains(&format!("{}:2:2: error: workdir \"/proc\"", spec.display())),
        "{log}"
    );
    assert!(
        log.contains(&format!("{}:3:2: error: workdir \"/proc/self/fd/7\"", spec.display())),
        "{log}"
    );
    assert!(!has_line(&log, "RAN"), "{log}");
    for dir in ["/sys/fs/cgroup", "/dev/../dev/shm"] {
        let other = env.spec(
            "wd2.spec",
            &format!("((from busybox) (workdir {dir}) (run (shell \"echo RAN\")))"),
        );
        let out = env.build(&other, &env.context("ctx"), &[]);
        assert_eq!(out.status.code(), Some(2), "{dir}: {}", stderr(&out));
    }

    let check = env.strata(&["check", spec.to_str().unwrap()]);
    let warned = stderr(&check);
    assert_eq!(
        check.status.code(),
        Some(0),
        "check accepts what OBuilder accepts: {warned}"
    );
    assert!(
        warned.contains(&format!("{}:3:2: warning: workdir \"/proc/self/fd/7\"", spec.display())),
        "{warned}"
    );
}

/// A setuid-root program, like `sudo`, compiled static so that it runs in the busybox image.
fn setuid_probe(dir: &Path) -> PathBuf {
    let source = dir.join("probe.c");
    std::fs::write(
        &source,
        "#include <stdio.h>\n#include <unistd.h>\n\
         int main(void) { printf(\"uid=%d euid=%d\\n\", (int)getuid(), (int)geteuid()); return 0; }\n",
    )
    .unwrap();
    let binary = dir.join("sudo-probe");
    let st = Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(&binary)
        .arg(&source)
        .status()
        .expect("cc");
    assert!(st.success(), "compiling the setuid probe");
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
    binary
}

/// 14 of the 51 real specs run `sudo` as uid 1000: setuid must work inside steps, so
/// `noNewPrivileges` is off by default (as OBuilder and Docker), and `--no-new-privileges`
/// turns it on. Failed before the fix: the probe printed `euid=1000` (no_new_privs was set).
#[test]
fn setuid_works_inside_steps_for_uid_1000() {
    let env = Env::new(Backend::Overlayfs);
    let ctx = env.context("ctx");
    setuid_probe(&ctx);
    for rt in RUNTIMES {
        let spec = env.spec(
            &format!("suid-{rt}.spec"),
            &format!(
                r#"((from busybox)
                    (copy (src sudo-probe) (dst /usr/local/bin/sudo-probe))
                    (run (shell "chown 0:0 /usr/local/bin/sudo-probe && chmod 4755 /usr/local/bin/sudo-probe"))
                    (user (uid 1000) (gid 1000))
                    (run (shell "echo rt={rt}; echo id=$(id -u); grep NoNewPrivs /proc/self/status; /usr/local/bin/sudo-probe")))"#
            ),
        );
        let (_, log) = env.build_ok(&spec, &ctx, &["--runtime", rt]);
        assert_eq!(printed(&log, "id"), Some("1000"), "{rt}: {log}");
        assert!(log.contains("NoNewPrivs:\t0"), "{rt}: {log}");
        assert!(
            log.contains("uid=1000 euid=0"),
            "{rt}: setuid did not raise privileges:\n{log}"
        );

        // The operator's opt-in: no_new_privs set, setuid does nothing. (A different flag does
        // not change the step id, so the last step is made different.)
        let strict = env.spec(
            &format!("suid-strict-{rt}.spec"),
            &format!(
                r#"((from busybox)
                    (copy (src sudo-probe) (dst /usr/local/bin/sudo-probe))
                    (run (shell "chown 0:0 /usr/local/bin/sudo-probe && chmod 4755 /usr/local/bin/sudo-probe"))
                    (user (uid 1000) (gid 1000))
                    (run (shell "echo strict rt={rt}; grep NoNewPrivs /proc/self/status; /usr/local/bin/sudo-probe")))"#
            ),
        );
        let (_, log) = env.build_ok(&strict, &ctx, &["--runtime", rt, "--no-new-privileges"]);
        assert!(log.contains("NoNewPrivs:\t1"), "{rt}: {log}");
        assert!(log.contains("uid=1000 euid=1000"), "{rt}: {log}");
    }
    env.assert_no_leftovers();
}

/// No cgroup namespace: a step read the host's cgroup paths (strata's, the store's id).
/// Failed before the fix: `/proc/self/cgroup` named `/.../strata/<store id>/<container>`.
#[test]
fn cgroup_namespace_hides_the_host_hierarchy() {
    let env = Env::new(Backend::Overlayfs);
    for rt in RUNTIMES {
        let spec = env.spec(
            &format!("cg-{rt}.spec"),
            &format!(r#"((from busybox) (run (shell "echo rt={rt}; sed 's/^/cgroup:/' /proc/self/cgroup")))"#),
        );
        let log = build_under(&env, &spec, rt, &[]);
        let lines: Vec<&str> = log.lines().filter_map(|l| l.trim().strip_prefix("cgroup:")).collect();
        assert!(!lines.is_empty(), "{rt}: {log}");
        for line in lines {
            assert!(line.ends_with(":/"), "{rt}: the step sees a host path: {line}");
        }
    }
    env.assert_no_leftovers();
}

/// `--seccomp unconfined` is the operator's way out of the default profile.
#[test]
fn seccomp_unconfined_opts_out() {
    let env = Env::new(Backend::Overlayfs);
    let spec = env.spec(
        "unconfined.spec",
        r#"((from busybox) (run (shell "grep Seccomp: /proc/self/status")))"#,
    );
    let log = build_under(&env, &spec, "runc", &["--seccomp", "unconfined"]);
    assert!(log.contains("Seccomp:\t0"), "{log}");
    let spec = env.spec(
        "unconfined-fast.spec",
        r#"((from busybox) (run (shell "echo fast; grep Seccomp: /proc/self/status")))"#,
    );
    let log = build_under(&env, &spec, "crun", &["--seccomp", "unconfined", "--fast-sync"]);
    assert!(log.contains("Seccomp:\t2"), "the no-op sync rule stays: {log}");
    let out = env.build(&spec, &env.context("ctx"), &["--seccomp", "loose"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

/// The default profile does not break an ordinary build: archives, compression, checksums,
/// background jobs, sync under `--fast-sync` and without, a compiler-like fan-out of processes,
/// the loopback network, and `chroot` (which steps keep).
#[test]
fn realistic_steps_work_under_the_default_profile() {
    let env = Env::new(Backend::Overlayfs);
    for (rt, extra) in [
        ("runc", &[][..]),
        ("crun", &["--fast-sync"][..]),
        ("runc", &["--fast-sync"][..]),
    ] {
        let flags = extra.join(" ");
        let spec = env.spec(
            "work.spec",
            &format!(
                r#"((from busybox)
                    (workdir /src)
                    (run (shell "echo rt={rt} {flags}; mkdir -p a/b && seq 1 20000 > a/b/n && \
                                 tar czf /tmp/a.tgz a && mkdir /tmp/x && tar xzf /tmp/a.tgz -C /tmp/x && \
                                 sha256sum /tmp/x/a/b/n a/b/n | cut -d' ' -f1 | uniq | wc -l > /tmp/sums && \
                                 for i in 1 2 3 4 5 6 7 8; do (sort -rn a/b/n | head -n 1 > /tmp/out.$i) & done; wait && \
                                 cat /tmp/out.* | uniq && sync && dd if=/dev/zero of=/tmp/z bs=64k count=16 conv=fsync 2>/dev/null && \
                                 (nc -l -p 8080 > /tmp/got &) && sleep 0.3 && echo over-loopback | nc 127.0.0.1 8080; sleep 0.3; cat /tmp/got; \
                                 chroot / true && echo chroot-ok; echo sums=$(cat /tmp/sums)")))"#
            ),
        );
        let log = build_under(&env, &spec, rt, extra);
        assert!(log.contains("20000"), "{rt}: {log}");
        assert_eq!(printed(&log, "sums"), Some("1"), "{rt}: {log}");
        assert!(log.contains("over-loopback"), "{rt}: {log}");
        assert!(log.contains("chroot-ok"), "{rt}: {log}");
    }
    env.assert_no_leftovers();
}

/// Limits that cannot work are refused when the flags are read (exit 2), before a store is
/// opened or a step runs. Failed before the fix: `--cpus 0` reached the sandbox after the base
/// was pulled (exit 3, "invalid sandbox configuration").
#[test]
fn impossible_limits_refused_before_anything_runs() {
    let env = Env::new(Backend::Overlayfs);
    let spec = env.spec("one.spec", r#"((from busybox) (run (shell "echo RAN")))"#);
    for (flag, value, says) in [
        ("--cpus", "0", "cpu limit"),
        ("--cpus", "nan", "cpu limit"),
        ("--cpus=-1", "", "cpu limit"),
        ("--cpus", "inf", "cpu limit"),
        ("--memory", "0", "memory limit"),
        ("--memory", "1M", "minimum of 6M"),
        ("--step-timeout", "0s", "more than 0"),
        ("--timeout", "0s", "more than 0"),
        ("--log-limit", "0", "more than 0"),
        ("--pids-limit=-1", "", "-1"),
    ] {
        let args: Vec<&str> = [flag, value].into_iter().filter(|a| !a.is_empty()).collect();
        let out = env.build(&spec, &env.context("ctx"), &args);
        let log = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {log}");
        assert!(log.contains(says), "{flag} {value}: {log}");
        assert!(!log.contains("(from busybox)"), "{flag} {value}: nothing ran: {log}");
    }
    assert!(!env.store_root().exists(), "no store was even created");
    // The floor works under both runtimes: a step starts with 6M.
    for rt in RUNTIMES {
        let small = env.spec(
            &format!("small-{rt}.spec"),
            &format!(r#"((from busybox) (run (shell "echo small {rt}")))"#),
        );
        build_under(&env, &small, rt, &["--memory", "6M"]);
    }
}

/// A runc build vulnerable to CVE-2024-21626 is refused before the first step, exit 3, naming
/// the CVE; Debian 12's patched `1.1.5+ds1-1+deb12u1` (this host's runc) runs every other test
/// in this file. Failed before the fix: the version gate took any runc from 1.0.0.
#[test]
fn runc_vulnerable_to_cve_2024_21626_refused() {
    let env = Env::new(Backend::Overlayfs);
    let spec = env.spec("v.spec", r#"((from busybox) (run (shell "echo RAN")))"#);
    for (name, version) in [
        (
            "runc-upstream",
            "echo 'runc version 1.1.11'; echo 'commit: v1.1.11-0-g4bccb38c'",
        ),
        (
            "runc-debian",
            "echo 'runc version 1.1.5+ds1'; echo 'commit: 1.1.5+ds1-1'",
        ),
    ] {
        // Answers --version like the vulnerable build; would run the container with the real
        // runc if asked (so a missing gate shows as "RAN").
        let fake = env.work.path().join(name);
        std::fs::write(
            &fake,
            format!("#!/bin/sh\ncase \" $* \" in\n*' --version '*) {version} ;;\n*) exec runc \"$@\" ;;\nesac\n"),
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let out = env.build(&spec, &env.context("ctx"), &["--runtime", fake.to_str().unwrap()]);
        let log = stderr(&out);
        assert_eq!(out.status.code(), Some(3), "{name}: {log}");
        assert!(log.contains("CVE-2024-21626"), "{name}: {log}");
        assert!(!has_line(&log, "RAN"), "{name}: {log}");
    }
    env.assert_no_leftovers();
}

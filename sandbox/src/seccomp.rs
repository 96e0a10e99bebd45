//! The default seccomp filter of a step: the same policy as Docker's and podman's default
//! profile for a container without `CAP_SYS_ADMIN` (strata's steps never have it), written with
//! `oci-spec`.
//!
//! What it does, as Docker's:
//! - An allow-list: any syscall not named fails with `EPERM` (`defaultErrnoRet` 1). runc and
//!   crun answer `ENOSYS` instead for syscalls newer than every one the filter names, so new
//!   libc wrappers still fall back.
//! - Everything that needs `CAP_SYS_ADMIN` or another capability steps lack stays out: `mount`,
//!   `umount2`, `unshare`, `setns`, the new mount API, `bpf`, `perf_event_open`, `keyctl`,
//!   `add_key`, `kexec_load`, module loading, `reboot`, `swapon`, `settimeofday`...
//! - `clone` is allowed only without namespace flags (`CLONE_NEWNS`, `NEWUTS`, `NEWIPC`,
//!   `NEWUSER`, `NEWPID`, `NEWNET`, `NEWCGROUP`); `clone3` cannot be filtered by its flags (they
//!   are behind a pointer), so it fails with `ENOSYS` and glibc falls back to `clone`.
//! - `socket` is refused for `AF_VSOCK`; `personality` only takes the harmless personas.
//! - `io_uring_*` are refused (their operations bypass seccomp), as in Docker 25 (moby#46762),
//!   containerd 2 and podman.
//!
//! `--fast-sync` takes the sync family out of the allow-list and makes it return 0 instead.

use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompBuilder, LinuxSeccompOperator, LinuxSyscall,
    LinuxSyscallBuilder,
};

use crate::oci_config::{seccomp_architectures, SYNC_SYSCALLS};
use crate::SandboxError;

/// `EPERM`: what a refused syscall returns.
pub const EPERM: u32 = 1;
/// `ENOSYS`: what `clone3` returns, so that glibc falls back to `clone`.
pub const ENOSYS: u32 = 38;
/// `AF_VSOCK`: host-guest sockets, refused.
pub const AF_VSOCK: u64 = 40;
/// The namespace flags of `clone`: `CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC
/// | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET` (0x7E020000). A step may not make namespaces.
pub const CLONE_NAMESPACE_FLAGS: u64 =
    0x0002_0000 | 0x0200_0000 | 0x0400_0000 | 0x0800_0000 | 0x1000_0000 | 0x2000_0000 | 0x4000_0000;
/// The personas `personality` may set: `PER_LINUX`, `PER_LINUX32`, `UNAME26`,
/// `PER_LINUX32 | UNAME26`, and the query `0xffffffff`.
pub const PERSONAS: [u64; 5] = [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// Syscalls every step may make, on every architecture (names unknown to the runtime's
/// libseccomp, such as a 32-bit variant on a 64-bit-only host, are skipped by the runtime).
#[rustfmt::skip]
pub const ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "chroot",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_time64",
    "futex_waitv",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "process_vm_readv",
    "process_vm_writev",
    "pselect6",
    "pselect6_time64",
    "ptrace",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setuid32",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
];

/// Syscalls only some architectures have (keyed by Rust's `ARCH`).
fn arch_specific(arch: &str) -> &'static [&'static str] {
    match arch {
        "x86_64" | "x86" => &["arch_prctl", "modify_ldt"],
        "aarch64" | "arm" => &[
            "arm_fadvise64_64",
            "arm_sync_file_range",
            "sync_file_range2",
            "breakpoint",
            "cacheflush",
            "set_tls",
        ],
        "powerpc64" => &["sync_file_range2", "swapcontext"],
        "s390x" => &["s390_pci_mmio_read", "s390_pci_mmio_write", "s390_runtime_instr"],
        "riscv64" => &["riscv_flush_icache"],
        _ => &[],
    }
}

/// Syscalls that stay refused although a program may well try them: tests and docs name them.
pub const REFUSED_EXAMPLES: [&str; 12] = [
    "mount",
    "umount2",
    "unshare",
    "setns",
    "fsopen",
    "open_tree",
    "bpf",
    "perf_event_open",
    "keyctl",
    "add_key",
    "kexec_load",
    "io_uring_setup",
];

fn spec_error(e: oci_spec::OciSpecError) -> SandboxError {
    SandboxError::Config(format!("building the seccomp filter: {e}"))
}

fn rule(names: Vec<String>, action: LinuxSeccompAction) -> LinuxSyscallBuilder {
    LinuxSyscallBuilder::default().names(names).action(action)
}

fn arg(index: usize, value: u64, op: LinuxSeccompOperator) -> Result<oci_spec::runtime::LinuxSeccompArg, SandboxError> {
    LinuxSeccompArgBuilder::default()
        .index(index)
        .value(value)
        .op(op)
        .build()
        .map_err(spec_error)
}

/// The default filter for a host of architecture `arch` (Rust's `ARCH`); with `fast_sync`, the
/// sync family succeeds without syncing.
pub fn default_profile(arch: &str, fast_sync: bool) -> Result<LinuxSeccomp, SandboxError> {
    let allowed: Vec<String> = ALLOWED
        .iter()
        .chain(arch_specific(arch))
        .filter(|name| !(fast_sync && SYNC_SYSCALLS.contains(name)))
        .map(|s| (*s).to_owned())
        .collect();
    let mut syscalls: Vec<LinuxSyscall> = vec![rule(allowed, LinuxSeccompAction::ScmpActAllow)
        .build()
        .map_err(spec_error)?];
    if fast_sync {
        syscalls.push(fast_sync_rule()?);
    }
    // socket(2) for every family but AF_VSOCK.
    syscalls.push(
        rule(vec!["socket".to_owned()], LinuxSeccompAction::ScmpActAllow)
            .args(vec![arg(0, AF_VSOCK, LinuxSeccompOperator::ScmpCmpNe)?])
            .build()
            .map_err(spec_error)?,
    );
    for persona in PERSONAS {
        syscalls.push(
            rule(vec!["personality".to_owned()], LinuxSeccompAction::ScmpActAllow)
                .args(vec![arg(0, persona, LinuxSeccompOperator::ScmpCmpEq)?])
                .build()
                .map_err(spec_error)?,
        );
    }
    // clone(2) without namespace flags; s390 passes the flags second.
    let flags_index: usize = if arch == "s390x" { 1 } else { 0 };
    let no_namespaces = LinuxSeccompArgBuilder::default()
        .index(flags_index)
        .value(CLONE_NAMESPACE_FLAGS)
        .value_two(0u64)
        .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
        .build()
        .map_err(spec_error)?;
    syscalls.push(
        rule(vec!["clone".to_owned()], LinuxSeccompAction::ScmpActAllow)
            .args(vec![no_namespaces])
            .build()
            .map_err(spec_error)?,
    );
    syscalls.push(
        rule(vec!["clone3".to_owned()], LinuxSeccompAction::ScmpActErrno)
            .errno_ret(ENOSYS)
            .build()
            .map_err(spec_error)?,
    );
    let mut builder = LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActErrno)
        .default_errno_ret(EPERM)
        .syscalls(syscalls);
    if let Some(archs) = seccomp_architectures(arch) {
        builder = builder.architectures(archs);
    }
    builder.build().map_err(spec_error)
}

/// The sync family returns 0 without doing anything.
pub fn fast_sync_rule() -> Result<LinuxSyscall, SandboxError> {
    LinuxSyscallBuilder::default()
        .names(SYNC_SYSCALLS.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
        .action(LinuxSeccompAction::ScmpActErrno)
        .errno_ret(0u32)
        .build()
        .map_err(spec_error)
}

/// `--seccomp unconfined` with `--fast-sync`: allow everything, but make the sync family
/// return 0.
pub fn fast_sync_only(arch: &str) -> Result<LinuxSeccomp, SandboxError> {
    let mut builder = LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .syscalls(vec![fast_sync_rule()?]);
    if let Some(archs) = seccomp_architectures(arch) {
        builder = builder.architectures(archs);
    }
    builder.build().map_err(spec_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn json(arch: &str, fast_sync: bool) -> Value {
        serde_json::to_value(default_profile(arch, fast_sync).unwrap()).unwrap()
    }

    fn rules_for<'a>(v: &'a Value, name: &str) -> Vec<&'a Value> {
        v["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["names"].as_array().unwrap().iter().any(|n| n == name))
            .collect()
    }

    #[test]
    fn refuses_by_default_with_eperm() {
        let v = json("x86_64", false);
        assert_eq!(v["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(v["defaultErrnoRet"], 1);
        assert_eq!(
            v["architectures"],
            serde_json::json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"])
        );
        for name in REFUSED_EXAMPLES {
            assert!(rules_for(&v, name).is_empty(), "{name} must not be allowed");
        }
        for name in ["io_uring_enter", "io_uring_register", "reboot", "init_module", "swapon"] {
            assert!(rules_for(&v, name).is_empty(), "{name} must not be allowed");
        }
    }

    #[test]
    fn everyday_syscalls_are_allowed() {
        let v = json("x86_64", false);
        for name in [
            "read",
            "execve",
            "openat",
            "chown",
            "setuid",
            "chroot",
            "fsync",
            "arch_prctl",
            "ptrace",
        ] {
            let rules = rules_for(&v, name);
            assert_eq!(rules.len(), 1, "{name}");
            assert_eq!(rules[0]["action"], "SCMP_ACT_ALLOW", "{name}");
            assert!(rules[0].get("args").is_none(), "{name} is allowed unconditionally");
        }
        assert!(rules_for(&json("aarch64", false), "arch_prctl").is_empty());
        assert_eq!(rules_for(&json("aarch64", false), "set_tls").len(), 1);
    }

    #[test]
    fn clone_without_namespaces_and_clone3_enosys() {
        let v = json("x86_64", false);
        let clone = rules_for(&v, "clone");
        assert_eq!(clone.len(), 1);
        assert_eq!(
            clone[0]["args"],
            serde_json::json!([{"index": 0, "value": 2114060288u64, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}])
        );
        let clone3 = rules_for(&v, "clone3");
        assert_eq!(clone3.len(), 1);
        assert_eq!(clone3[0]["action"], "SCMP_ACT_ERRNO");
        assert_eq!(clone3[0]["errnoRet"], 38);
        assert_eq!(rules_for(&json("s390x", false), "clone")[0]["args"][0]["index"], 1);
    }

    #[test]
    fn socket_and_personality_are_conditional() {
        let v = json("x86_64", false);
        let socket = rules_for(&v, "socket");
        assert_eq!(socket.len(), 1);
        assert_eq!(socket[0]["args"][0]["op"], "SCMP_CMP_NE");
        assert_eq!(socket[0]["args"][0]["value"], 40);
        let personas: Vec<u64> = rules_for(&v, "personality")
            .iter()
            .map(|r| r["args"][0]["value"].as_u64().unwrap())
            .collect();
        assert_eq!(personas, PERSONAS);
    }

    #[test]
    fn fast_sync_turns_sync_into_a_successful_no_op() {
        let v = json("x86_64", true);
        for name in SYNC_SYSCALLS {
            let rules = rules_for(&v, name);
            assert_eq!(rules.len(), 1, "{name} appears once (libseccomp refuses two actions)");
            assert_eq!(rules[0]["action"], "SCMP_ACT_ERRNO", "{name}");
            assert_eq!(rules[0]["errnoRet"], 0, "{name}");
        }
        let only = serde_json::to_value(fast_sync_only("x86_64").unwrap()).unwrap();
        assert_eq!(only["defaultAction"], "SCMP_ACT_ALLOW");
        assert_eq!(only["syscalls"][0]["errnoRet"], 0);
    }

    #[test]
    fn no_name_twice() {
        for arch in ["x86_64", "aarch64", "s390x", "riscv64", "powerpc64"] {
            let mut names: Vec<&str> = ALLOWED.iter().chain(arch_specific(arch)).copied().collect();
            names.sort();
            let before = names.len();
            names.dedup();
            assert_eq!(before, names.len(), "{arch}");
        }
    }
}

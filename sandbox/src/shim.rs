//! A tiny in-process shim that starts `<runtime> run --detach` and waits for the container's
//! init process, as containerd's shim or conmon do.
//!
//! Why: in the foreground without a terminal, runc copies the container's stdout and stderr
//! through two pipes of its own, which loses their relative order. Detached, the container's
//! process inherits the runtime's stdio (our single output pipe) as is, but it is re-parented
//! when the runtime exits, so only a *child subreaper* can wait for it and read its exit status.
//! Making strata itself a subreaper would adopt every orphan of the whole process; instead a
//! forked child of ours is the subreaper, for one step.
//!
//! The shim is a `fork()` of this (multi-threaded) process that never calls `exec` itself, so it
//! may only make async-signal-safe calls: everything it needs (C strings, file descriptors) is
//! prepared before the fork, and it uses raw system calls only (no allocation, no locks).
//! It reports on a pipe, in fixed 12-byte records: `Started(pid)`, then `Ended(wait status)`,
//! or `RuntimeFailed(wait status)` when the runtime itself fails, or `Failed(stage, errno)`.

use std::ffi::{CString, OsString};
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

/// What the shim reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShimEvent {
    /// The container's init process runs with this pid.
    Started(i32),
    /// The init process ended with this raw wait status.
    Ended(i32),
    /// The runtime exited unsuccessfully (raw wait status): the step never ran.
    RuntimeFailed(i32),
    /// The shim could not do its job: `stage` (see [`Stage`]) failed with `errno`.
    Failed(i32, i32),
}

/// Where the shim failed, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Stage {
    ForkRuntime = 1,
    WaitRuntime = 2,
    ReadPidFile = 3,
    WaitInit = 4,
    EnterBundle = 5,
}

impl Stage {
    pub fn describe(code: i32) -> &'static str {
        match code {
            1 => "starting the runtime",
            2 => "waiting for the runtime",
            3 => "reading the runtime's pid file",
            4 => "waiting for the step's process",
            5 => "entering the bundle directory",
            _ => "unknown stage",
        }
    }
}

const KIND_STARTED: i32 = 1;
const KIND_ENDED: i32 = 2;
const KIND_RUNTIME_FAILED: i32 = 3;
const KIND_FAILED: i32 = 4;

/// Everything the runtime's process needs, prepared before the fork.
pub struct ShimCommand {
    program: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    pid_file: CString,
    /// The shim's working directory: the step's bundle, so that a shim outliving strata can
    /// be traced to its store (`/proc/PID/cwd`).
    cwd: CString,
    /// Detach `/sys/fs/cgroup/unified` in a private mount namespace first (crun on hybrid hosts).
    hide_unified_cgroup: bool,
}

fn cstring(bytes: &[u8], what: &str) -> std::io::Result<CString> {
    CString::new(bytes).map_err(|_| std::io::Error::other(format!("{what} contains a NUL byte")))
}

impl ShimCommand {
    pub fn new(
        program: &Path,
        args: &[OsString],
        pid_file: &Path,
        cwd: &Path,
        hide_unified_cgroup: bool,
    ) -> std::io::Result<ShimCommand> {
        let program = cstring(program.as_os_str().as_bytes(), "runtime path")?;
        let mut argv = vec![program.clone()];
        for a in args {
            argv.push(cstring(a.as_bytes(), "runtime argument")?);
        }
        let mut envp = Vec::new();
        for (k, v) in std::env::vars_os() {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            // A variable that cannot be passed is left out rather than failing the step.
            if let Ok(c) = CString::new(kv) {
                envp.push(c);
            }
        }
        Ok(ShimCommand {
            program,
            argv,
            envp,
            pid_file: cstring(pid_file.as_os_str().as_bytes(), "pid file path")?,
            cwd: cstring(cwd.as_os_str().as_bytes(), "bundle path")?,
            hide_unified_cgroup,
        })
    }
}

/// A running shim: read its events, then [`Shim::reap`] it.
pub struct Shim {
    pid: i32,
    events: File,
}

/// Forks the shim. `output` becomes the runtime's (and so the container's) stdout and stderr;
/// stdin is /dev/null. Consumes `output`: once this returns, only the shim's runtime and the
/// container hold the pipe's write end.
pub fn spawn(cmd: &ShimCommand, output: OwnedFd) -> std::io::Result<Shim> {
    let (events_read, events_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)?;
    let devnull = File::open("/dev/null")?; // close-on-exec, as std opens every file
    let argv: Vec<*const libc::c_char> = cmd
        .argv
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp: Vec<*const libc::c_char> = cmd
        .envp
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let root = c"/";
    let unified = c"/sys/fs/cgroup/unified";
    let child_args = ChildArgs {
        program: cmd.program.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        pid_file: cmd.pid_file.as_ptr(),
        cwd: cmd.cwd.as_ptr(),
        stdin: devnull.as_raw_fd(),
        output: output.as_raw_fd(),
        events: events_write.as_raw_fd(),
        events_read: events_read.as_raw_fd(),
        hide_unified_cgroup: cmd.hide_unified_cgroup,
        root: root.as_ptr(),
        unified: unified.as_ptr(),
    };
    // SAFETY: the child runs `shim_main`, which makes only async-signal-safe system calls on
    // memory prepared above (alive in the child's copy of the address space) and never returns.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: see above.
        unsafe { shim_main(&child_args) }
    }
    drop(events_write);
    drop(output);
    drop(devnull);
    Ok(Shim {
        pid,
        events: File::from(events_read),
    })
}

impl Shim {
    /// The shim's pid, which is also the id of the process group it shares with the runtime.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The next report, or `None` once the shim has exited.
    pub fn next_event(&mut self) -> std::io::Result<Option<ShimEvent>> {
        let mut buf = [0u8; 12];
        let mut got = 0;
        while got < buf.len() {
            match self.events.read(&mut buf[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => return Err(std::io::Error::other("truncated report from the sandbox shim")),
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let word = |i: usize| i32::from_ne_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
        let (kind, a, b) = (word(0), word(4), word(8));
        Ok(Some(match kind {
            KIND_STARTED => ShimEvent::Started(a),
            KIND_ENDED => ShimEvent::Ended(a),
            KIND_RUNTIME_FAILED => ShimEvent::RuntimeFailed(a),
            _ => ShimEvent::Failed(a, b),
        }))
    }

    /// Waits for the shim process itself to exit.
    pub fn reap(self) {
        loop {
            match waitpid(Pid::from_raw(self.pid), None) {
                Err(nix::errno::Errno::EINTR) => continue,
                Ok(WaitStatus::Exited(..)) | Ok(WaitStatus::Signaled(..)) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    }
}

/// Raw pointers into memory owned by [`spawn`]'s frame (copied into the child by fork).
struct ChildArgs {
    program: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    pid_file: *const libc::c_char,
    cwd: *const libc::c_char,
    stdin: RawFd,
    output: RawFd,
    events: RawFd,
    events_read: RawFd,
    hide_unified_cgroup: bool,
    root: *const libc::c_char,
    unified: *const libc::c_char,
}

/// Writes one report; failures are ignored (the parent then sees end-of-file and treats the
/// step as lost, killing the container).
unsafe fn report(fd: RawFd, kind: i32, a: i32, b: i32) {
    let mut buf = [0u8; 12];
    buf[0..4].copy_from_slice(&kind.to_ne_bytes());
    buf[4..8].copy_from_slice(&a.to_ne_bytes());
    buf[8..12].copy_from_slice(&b.to_ne_bytes());
    libc::write(fd, buf.as_ptr().cast(), buf.len());
}

unsafe fn errno() -> i32 {
    *libc::__errno_location()
}

/// The shim process. Never returns.
unsafe fn shim_main(args: &ChildArgs) -> ! {
    libc::close(args.events_read);
    // fork copied every descriptor of strata, including other steps' output pipes (close-on-exec
    // does not apply: the shim never execs). Holding one would keep that step's pipe open
    // until this step ends, so keep only what the shim needs.
    close_all_but(&mut [args.stdin, args.output, args.events]);
    // Out of the terminal's foreground process group: a Ctrl-C reaches strata, which then
    // stops the container; the shim must live until the container is gone. A Ctrl-C that
    // reached the group before `setpgid` is pending here (strata blocks these signals in every
    // thread): setting a signal to "ignore" discards it, then the default comes back.
    libc::setpgid(0, 0);
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
        libc::signal(signal, libc::SIG_IGN);
        libc::signal(signal, libc::SIG_DFL);
    }
    // Whatever strata blocked, the runtime starts with no signal blocked.
    let mut empty: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut empty);
    libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0);
    if libc::chdir(args.cwd) != 0 {
        report(args.events, KIND_FAILED, Stage::EnterBundle as i32, errno());
        libc::_exit(1);
    }

    let runtime = libc::fork();
    if runtime < 0 {
        report(args.events, KIND_FAILED, Stage::ForkRuntime as i32, errno());
        libc::_exit(1);
    }
    if runtime == 0 {
        run_runtime(args);
    }
    libc::close(args.output);
    libc::close(args.stdin);
    // A report to a strata that died must not kill the shim (SIGPIPE) before it has killed and
    // reaped the step. Set only now: the runtime, forked above, keeps the default.
    libc::signal(libc::SIGPIPE, libc::SIG_IGN);

    let mut status = 0;
    loop {
        let r = libc::waitpid(runtime, &mut status, 0);
        if r == runtime {
            break;
        }
        if errno() != libc::EINTR {
            report(args.events, KIND_FAILED, Stage::WaitRuntime as i32, errno());
            libc::_exit(1);
        }
    }
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        report(args.events, KIND_RUNTIME_FAILED, status, 0);
        reap_all_and_exit();
    }
    let init = match read_pid(args.pid_file) {
        Ok(pid) => pid,
        Err(e) => {
            report(args.events, KIND_FAILED, Stage::ReadPidFile as i32, e);
            reap_all_and_exit();
        }
    };
    report(args.events, KIND_STARTED, init, 0);
    // From here on the shim alone holds the step: should strata die (kill -9, a crash), the
    // read end of the events pipe closes and the step is killed (SIGKILL to the init of its
    // pid namespace ends every process in it); the next strata command deletes the stopped
    // container.
    wait_for_init(args.events, init);
    reap_all_and_exit();
}

/// Reaps everything adopted (the runtime's intermediate processes) until `init` ends, and
/// reports its status; kills `init` once nobody reads `events` any more (strata is gone).
unsafe fn wait_for_init(events: RawFd, init: i32) {
    let pidfd = libc::syscall(libc::SYS_pidfd_open, init, 0) as libc::c_int;
    let mut orphaned = false;
    let mut status = 0;
    loop {
        if pidfd >= 0 && !orphaned {
            // Readable pidfd: init exited. POLLERR on the write end of a pipe: no reader left.
            let mut fds = [
                libc::pollfd {
                    fd: pidfd,
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: events,
                    events: 0,
                    revents: 0,
                },
            ];
            if libc::poll(fds.as_mut_ptr(), 2, -1) < 0 {
                if errno() == libc::EINTR {
                    continue;
                }
                orphaned = true; // cannot watch any more: fall back to a plain wait
            } else if fds[1].revents & (libc::POLLERR | libc::POLLHUP) != 0 {
                libc::kill(init, libc::SIGKILL);
                orphaned = true;
            } else if fds[0].revents == 0 {
                continue;
            }
        }
        let r = libc::waitpid(-1, &mut status, 0);
        if r == init {
            report(events, KIND_ENDED, status, 0);
            break;
        }
        if r < 0 {
            let e = errno();
            if e == libc::EINTR {
                continue;
            }
            report(events, KIND_FAILED, Stage::WaitInit as i32, e);
            break;
        }
    }
    if pidfd >= 0 {
        libc::close(pidfd);
    }
}

/// The runtime process (a grandchild): stdio, optional mount namespace, exec. Never returns.
unsafe fn run_runtime(args: &ChildArgs) -> ! {
    libc::close(args.events);
    if libc::dup2(args.stdin, 0) < 0 || libc::dup2(args.output, 1) < 0 || libc::dup2(args.output, 2) < 0 {
        libc::_exit(126);
    }
    if args.hide_unified_cgroup {
        // A private (slave) mount namespace without the v2 hierarchy; the host is unchanged.
        if libc::unshare(libc::CLONE_NEWNS) != 0
            || libc::mount(
                std::ptr::null(),
                args.root,
                std::ptr::null(),
                libc::MS_REC | libc::MS_SLAVE,
                std::ptr::null(),
            ) != 0
        {
            libc::_exit(126);
        }
        libc::umount2(args.unified, libc::MNT_DETACH);
    }
    libc::execve(args.program, args.argv, args.envp);
    libc::_exit(127);
}

/// Closes every descriptor from 3 up except `keep` (sorted in place).
unsafe fn close_all_but(keep: &mut [RawFd; 3]) {
    keep.sort_unstable();
    let mut low: u32 = 3;
    for &fd in keep.iter() {
        let Ok(fd) = u32::try_from(fd) else { continue };
        if fd >= low {
            if fd > low {
                close_range(low, fd - 1);
            }
            low = fd + 1;
        }
    }
    close_range(low, u32::MAX);
}

/// close_range(2), with a loop for kernels older than 5.9.
unsafe fn close_range(first: u32, last: u32) {
    if libc::close_range(first, last, 0) == 0 {
        return;
    }
    let mut limit: libc::rlimit = std::mem::zeroed();
    let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
        limit.rlim_cur.min(1 << 20) as u32
    } else {
        1024
    };
    let mut fd = first;
    while fd <= last && fd < max {
        libc::close(fd as libc::c_int);
        fd += 1;
    }
}

/// Reaps every remaining child (non-blocking) and exits.
unsafe fn reap_all_and_exit() -> ! {
    let mut status = 0;
    while libc::waitpid(-1, &mut status, libc::WNOHANG) > 0 {}
    libc::_exit(0);
}

/// Reads a decimal pid from `path` with raw system calls; `Err(errno)` on failure.
unsafe fn read_pid(path: *const libc::c_char) -> Result<i32, i32> {
    let fd = libc::open(path, libc::O_RDONLY | libc::O_CLOEXEC);
    if fd < 0 {
        return Err(errno());
    }
    let mut buf = [0u8; 32];
    let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
    let read_errno = errno();
    libc::close(fd);
    if n <= 0 {
        return Err(if n < 0 { read_errno } else { libc::ENODATA });
    }
    let mut pid: i32 = 0;
    let mut digits = 0;
    for &b in &buf[..n as usize] {
        match b {
            b'0'..=b'9' if digits < 9 => {
                pid = pid * 10 + i32::from(b - b'0');
                digits += 1;
            }
            b'0'..=b'9' => return Err(libc::ERANGE),
            _ if digits > 0 => break,
            b' ' | b'\n' | b'\t' => {}
            _ => return Err(libc::EINVAL),
        }
    }
    if pid <= 0 {
        return Err(libc::EINVAL);
    }
    Ok(pid)
}

/// Decodes a raw wait status into (exit code) or (signal).
pub fn decode_status(status: i32) -> Result<i32, i32> {
    if libc::WIFSIGNALED(status) {
        Err(libc::WTERMSIG(status))
    } else {
        Ok(libc::WEXITSTATUS(status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `pid` still lives (a zombie counts as dead) once `deadline` passed, or earlier
    /// as soon as it died.
    fn alive_until(pid: i32, deadline: std::time::Instant) -> bool {
        let alive = || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "));
        while alive() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        alive()
    }

    #[test]
    fn statuses() {
        assert_eq!(decode_status(0), Ok(0));
        assert_eq!(decode_status(7 << 8), Ok(7));
        assert_eq!(decode_status(9), Err(9));
    }

    #[test]
    fn shim_runs_a_plain_program_and_reports() {
        // `sh` stands in for the runtime: it "detaches" a child that outlives it, writes the
        // child's pid to the pid file, and exits 0; the shim must adopt and wait for the child.
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let script = format!(
            "(sleep 0.2; echo from-child; exit 5) & echo $! > {}; echo from-runtime",
            pid_file.display()
        );
        let cmd = ShimCommand::new(
            Path::new("/bin/sh"),
            &["-c".into(), script.into()],
            &pid_file,
            dir.path(),
            false,
        )
        .unwrap();
        let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let mut shim = spawn(&cmd, write_end).unwrap();
        let started = shim.next_event().unwrap();
        assert!(matches!(started, Some(ShimEvent::Started(p)) if p > 0), "{started:?}");
        assert_eq!(shim.next_event().unwrap(), Some(ShimEvent::Ended(5 << 8)));
        assert_eq!(shim.next_event().unwrap(), None);
        shim.reap();
        let mut out = String::new();
        File::from(read_end).read_to_string(&mut out).unwrap();
        assert_eq!(out, "from-runtime\nfrom-child\n");
    }

    #[test]
    fn shim_does_not_hold_other_descriptors() {
        // A pipe open in strata while the shim forks (another step's output) must reach
        // end-of-file when strata closes it, even though this shim is still running.
        let (other_read, other_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let script = format!("sleep 1 & echo $! > {}", pid_file.display());
        let cmd = ShimCommand::new(
            Path::new("/bin/sh"),
            &["-c".into(), script.into()],
            &pid_file,
            dir.path(),
            false,
        )
        .unwrap();
        let (_read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let mut shim = spawn(&cmd, write_end).unwrap();
        assert!(matches!(shim.next_event().unwrap(), Some(ShimEvent::Started(_))));
        drop(other_write);
        let started = std::time::Instant::now();
        let mut buf = Vec::new();
        File::from(other_read).read_to_end(&mut buf).unwrap();
        assert!(
            started.elapsed() < std::time::Duration::from_millis(500),
            "the shim held the pipe"
        );
        assert!(matches!(shim.next_event().unwrap(), Some(ShimEvent::Ended(0))));
        shim.reap();
    }

    /// Issue 13: after a `kill -9` of strata the shim and the step ran on, reparented to init.
    /// Now the shim kills the step once nobody reads its reports. Failed on the old code: the
    /// "step" (a detached `sleep 30`) was still alive after 5 s.
    #[test]
    fn step_dies_when_strata_does() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let script = format!("sleep 30 & echo $! > {}", pid_file.display());
        let cmd = ShimCommand::new(
            Path::new("/bin/sh"),
            &["-c".into(), script.into()],
            &pid_file,
            dir.path(),
            false,
        )
        .unwrap();
        let (_read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let mut shim = spawn(&cmd, write_end).unwrap();
        let Some(ShimEvent::Started(step)) = shim.next_event().unwrap() else {
            panic!("the step did not start")
        };
        // What strata's death does to the shim: the read end of its report pipe closes.
        let Shim { pid, events } = shim;
        drop(events);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        assert!(!alive_until(step, deadline), "the step outlived strata");
        Shim {
            pid,
            events: File::open("/dev/null").unwrap(),
        }
        .reap();
    }

    /// strata killed while the runtime was still creating the container: the shim's first
    /// report goes to a closed pipe, and the shim must still kill the step once it started.
    /// (The shim ignores SIGPIPE itself; this passed before too, because the shim inherited
    /// the ignored SIGPIPE from Rust's runtime.)
    #[test]
    fn step_dies_when_strata_died_before_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let script = format!("sleep 0.5; sleep 31 & echo $! > {}", pid_file.display());
        let cmd = ShimCommand::new(
            Path::new("/bin/sh"),
            &["-c".into(), script.into()],
            &pid_file,
            dir.path(),
            false,
        )
        .unwrap();
        let (_read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let Shim { pid, events } = spawn(&cmd, write_end).unwrap();
        drop(events);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let step = loop {
            if let Some(step) = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|t| t.trim().parse::<i32>().ok())
            {
                break step;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the runtime never wrote its pid file"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let alive = alive_until(step, deadline);
        if alive {
            let _ = nix::sys::signal::kill(Pid::from_raw(step), nix::sys::signal::Signal::SIGKILL);
        }
        Shim {
            pid,
            events: File::open("/dev/null").unwrap(),
        }
        .reap();
        assert!(!alive, "the step outlived strata");
    }

    #[test]
    fn shim_reports_a_failing_runtime() {
        let dir = tempfile::tempdir().unwrap();
        let cmd = ShimCommand::new(
            Path::new("/bin/sh"),
            &["-c".into(), "exit 3".into()],
            &dir.path().join("pid"),
            dir.path(),
            false,
        )
        .unwrap();
        let (_read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let mut shim = spawn(&cmd, write_end).unwrap();
        assert_eq!(shim.next_event().unwrap(), Some(ShimEvent::RuntimeFailed(3 << 8)));
        assert_eq!(shim.next_event().unwrap(), None);
        shim.reap();
    }
}
